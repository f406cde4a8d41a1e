/* cpubench: CPU work for popek's in-guest benchmark (bench/cpu/run.sh).
 *
 * The same source is built `gcc -m32 -O2 -static` (run inside the i386 guest)
 * and `gcc -m64 -O2` (run natively on the host: the physical limit). Each part
 * is timed with clock_gettime(CLOCK_MONOTONIC) around its loop and checked
 * afterwards; a wrong result prints a FAIL line and exits 1, so a broken CPU
 * cannot give a fast wrong figure.
 *
 * Usage: cpubench [--scale S] [--parts a,b,...] [--list]
 *        cpubench --child          (the trivial mode the fork+exec part runs)
 * Output, one line each (machine-readable, whitespace-separated):
 *   cpubench-begin scale=S
 *   cpubench-start NAME                 (set-up done, the timed loop starts)
 *   cpubench-part NAME ITERATIONS SECONDS
 *   cpubench-end ok
 * or `cpubench-FAIL NAME: reason` and exit status 1.
 * All arithmetic is on 32-bit unsigned integers so that both builds do the
 * same work and reach the same results.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "../lib/partbench.h"

/* The compiler must assume memory changed: keeps loop bodies from being
 * hoisted or merged across iterations. */
#define BARRIER() __asm__ volatile("" ::: "memory")

static const char* g_self; /* path for exec */

/* A small LCG (Numerical Recipes constants) for reproducible data. */
static uint32_t g_seed;
static uint32_t rnd(void) {
  g_seed = g_seed * 1664525u + 1013904223u;
  return g_seed;
}

/* ---- sieve: primes below 2,000,000, whose count is known (148933) ---- */
enum { SIEVE_N = 2000000 };
static unsigned char sieve_flags[SIEVE_N];
static uint32_t sieve_once(void) {
  uint32_t count = 0;
  memset(sieve_flags, 1, sizeof sieve_flags);
  for (uint32_t i = 2; i < SIEVE_N; i++) {
    if (!sieve_flags[i]) continue;
    count++;
    if (i <= 1414) /* i * i < SIEVE_N */
      for (uint32_t j = i * i; j < SIEVE_N; j += i) sieve_flags[j] = 0;
  }
  return count;
}
static void part_sieve(uint32_t iters) {
  for (uint32_t it = 0; it < iters; it++) {
    BARRIER();
    uint32_t c = sieve_once();
    if (c != 148933) fail("iteration %u counted %u primes below %u, not 148933", it, c, SIEVE_N);
  }
}

/* ---- crc32: table-driven CRC-32 (IEEE, reflected) over 1 MiB ---- */
enum { CRC_LEN = 1 << 20 };
static uint32_t crc_table[256];
static unsigned char crc_buf[CRC_LEN];
static uint32_t crc_ref;
static uint32_t crc_bitwise(const unsigned char* p, uint32_t n) {
  uint32_t c = 0xFFFFFFFFu;
  for (uint32_t i = 0; i < n; i++) {
    c ^= p[i];
    for (int k = 0; k < 8; k++) c = (c >> 1) ^ (0xEDB88320u & (0u - (c & 1)));
  }
  return ~c;
}
static uint32_t crc_table_run(const unsigned char* p, uint32_t n) {
  uint32_t c = 0xFFFFFFFFu;
  for (uint32_t i = 0; i < n; i++) c = crc_table[(c ^ p[i]) & 0xFF] ^ (c >> 8);
  return ~c;
}
static void setup_crc(void) {
  for (uint32_t i = 0; i < 256; i++) {
    uint32_t c = i;
    for (int k = 0; k < 8; k++) c = (c >> 1) ^ (0xEDB88320u & (0u - (c & 1)));
    crc_table[i] = c;
  }
  g_seed = 12345;
  for (uint32_t i = 0; i < CRC_LEN; i++) crc_buf[i] = (unsigned char)(rnd() >> 24);
  if (crc_table_run((const unsigned char*)"123456789", 9) != 0xCBF43926u)
    fail("CRC-32 of \"123456789\" is not 0xCBF43926");
  crc_ref = crc_bitwise(crc_buf, CRC_LEN);
}
static void part_crc32(uint32_t iters) {
  for (uint32_t it = 0; it < iters; it++) {
    BARRIER();
    uint32_t c = crc_table_run(crc_buf, CRC_LEN);
    if (c != crc_ref) fail("iteration %u: table CRC %08x, bitwise CRC %08x", it, c, crc_ref);
  }
}

/* ---- qsort: a quicksort whose comparisons go through a function pointer ---- */
enum { SORT_N = 100000 };
static uint32_t sort_a[SORT_N];
static int cmp_u32(const void* a, const void* b) {
  uint32_t x = *(const uint32_t*)a, y = *(const uint32_t*)b;
  return (x > y) - (x < y);
}
/* noipa: the compiler may not specialise the sort for cmp_u32 and inline the
 * comparison; every comparison stays an indirect call, as in a libc qsort. */
__attribute__((noipa)) static void quicksort(uint32_t* a, int32_t n,
                                             int (*cmp)(const void*, const void*)) {
  while (n > 16) {
    uint32_t* mid = a + n / 2;
    uint32_t* last = a + n - 1;
    /* median of three into a[0] */
    if (cmp(mid, a) < 0) { uint32_t t = *mid; *mid = *a; *a = t; }
    if (cmp(last, a) < 0) { uint32_t t = *last; *last = *a; *a = t; }
    if (cmp(last, mid) < 0) { uint32_t t = *last; *last = *mid; *mid = t; }
    uint32_t pivot = *mid;
    int32_t i = 0, j = n - 1;
    for (;;) {
      while (cmp(&a[i], &pivot) < 0) i++;
      while (cmp(&pivot, &a[j]) < 0) j--;
      if (i >= j) break;
      uint32_t t = a[i]; a[i] = a[j]; a[j] = t;
      i++; j--;
    }
    /* recurse on the smaller side, loop on the larger */
    if (j + 1 < n - j - 1) { quicksort(a, j + 1, cmp); a += j + 1; n -= j + 1; }
    else { quicksort(a + j + 1, n - j - 1, cmp); n = j + 1; }
  }
  for (int32_t i = 1; i < n; i++) {
    uint32_t v = a[i];
    int32_t k = i - 1;
    while (k >= 0 && cmp(&a[k], &v) > 0) { a[k + 1] = a[k]; k--; }
    a[k + 1] = v;
  }
}
static void part_qsort(uint32_t iters) {
  for (uint32_t it = 0; it < iters; it++) {
    g_seed = 777 + it;
    uint32_t sum = 0, xr = 0;
    for (uint32_t i = 0; i < SORT_N; i++) { sort_a[i] = rnd(); sum += sort_a[i]; xr ^= sort_a[i]; }
    BARRIER();
    quicksort(sort_a, SORT_N, cmp_u32);
    uint32_t sum2 = sort_a[0], xr2 = sort_a[0];
    for (uint32_t i = 1; i < SORT_N; i++) {
      if (sort_a[i - 1] > sort_a[i]) fail("iteration %u: out of order at %u", it, i);
      sum2 += sort_a[i];
      xr2 ^= sort_a[i];
    }
    if (sum2 != sum || xr2 != xr) fail("iteration %u: the sorted array lost elements", it);
  }
}

/* ---- matmul: 160x160 matrices of uint32, C = A*B (mod 2^32) ---- */
enum { MAT_N = 160 };
static uint32_t mat_a[MAT_N][MAT_N], mat_b[MAT_N][MAT_N], mat_c[MAT_N][MAT_N];
static void matmul_once(void) {
  for (int i = 0; i < MAT_N; i++) {
    for (int j = 0; j < MAT_N; j++) mat_c[i][j] = 0;
    for (int k = 0; k < MAT_N; k++) {
      uint32_t aik = mat_a[i][k];
      for (int j = 0; j < MAT_N; j++) mat_c[i][j] += aik * mat_b[k][j];
    }
  }
}
/* Freivalds' check: C x == A (B x) for a random x, exact mod 2^32. */
static void matmul_check(uint32_t it) {
  uint32_t x[MAT_N], bx[MAT_N];
  for (int i = 0; i < MAT_N; i++) x[i] = rnd() | 1;
  for (int i = 0; i < MAT_N; i++) {
    uint32_t s = 0;
    for (int j = 0; j < MAT_N; j++) s += mat_b[i][j] * x[j];
    bx[i] = s;
  }
  for (int i = 0; i < MAT_N; i++) {
    uint32_t cx = 0, abx = 0;
    for (int j = 0; j < MAT_N; j++) { cx += mat_c[i][j] * x[j]; abx += mat_a[i][j] * bx[j]; }
    if (cx != abx) fail("iteration %u: row %d of A*B is wrong", it, i);
  }
}
static void part_matmul(uint32_t iters) {
  for (uint32_t it = 0; it < iters; it++) {
    g_seed = 4242 + it;
    for (int i = 0; i < MAT_N; i++)
      for (int j = 0; j < MAT_N; j++) { mat_a[i][j] = rnd() >> 16; mat_b[i][j] = rnd() >> 16; }
    BARRIER();
    matmul_once();
    BARRIER();
    if (it == 0 || it + 1 == iters) matmul_check(it);
  }
}

/* ---- string: strlen, memcpy, strcmp, strchr over 4096 strings ---- */
enum { STR_COUNT = 4096, STR_MAX = 96 };
static char str_pool[STR_COUNT][STR_MAX + 1];
static char str_copy[STR_MAX + 1];
struct str_result { uint32_t len, found, less, equal; };
static struct str_result str_ref;
static void setup_string(void) {
  g_seed = 99;
  for (int i = 0; i < STR_COUNT; i++) {
    uint32_t n = rnd() % (STR_MAX + 1);
    /* shared prefixes make strcmp look past the first byte */
    uint32_t prefix = (i > 0 && (rnd() & 1)) ? rnd() % (n + 1) : 0;
    for (uint32_t k = 0; k < n; k++)
      str_pool[i][k] = (k < prefix && str_pool[i - 1][k]) ? str_pool[i - 1][k] : (char)('a' + rnd() % 26);
    str_pool[i][n] = 0;
  }
  /* the expected totals, by plain loops */
  struct str_result r = {0, 0, 0, 0};
  for (int i = 0; i < STR_COUNT; i++) {
    const unsigned char* s = (const unsigned char*)str_pool[i];
    const unsigned char* t = (const unsigned char*)str_pool[(i + 1) % STR_COUNT];
    uint32_t n = 0;
    while (s[n]) n++;
    r.len += n;
    for (uint32_t k = 0; k < n; k++) if (s[k] == 'q') { r.found += k + 1; break; }
    uint32_t k = 0;
    while (s[k] && s[k] == t[k]) k++;
    if (s[k] < t[k]) r.less++;
    else if (s[k] == t[k]) r.equal++;
  }
  str_ref = r;
}
static void part_string(uint32_t iters) {
  for (uint32_t it = 0; it < iters; it++) {
    struct str_result r = {0, 0, 0, 0};
    BARRIER();
    for (int i = 0; i < STR_COUNT; i++) {
      const char* s = str_pool[i];
      size_t n = strlen(s);
      r.len += (uint32_t)n;
      memcpy(str_copy, s, n + 1);
      BARRIER();
      if (strcmp(str_copy, s) != 0) fail("iteration %u: the copy of string %d differs", it, i);
      const char* q = strchr(str_copy, 'q');
      if (q) r.found += (uint32_t)(q - str_copy) + 1;
      int c = strcmp(s, str_pool[(i + 1) % STR_COUNT]);
      if (c < 0) r.less++;
      else if (c == 0) r.equal++;
    }
    if (r.len != str_ref.len || r.found != str_ref.found || r.less != str_ref.less ||
        r.equal != str_ref.equal)
      fail("iteration %u: totals %u/%u/%u/%u, expected %u/%u/%u/%u", it, r.len, r.found, r.less,
           r.equal, str_ref.len, str_ref.found, str_ref.less, str_ref.equal);
  }
}

/* ---- syscall: getppid() through the libc wrapper ---- */
static void part_syscall(uint32_t iters) {
  pid_t want = getppid();
  uint32_t bad = 0;
  for (uint32_t it = 0; it < iters; it++) bad += getppid() != want;
  if (bad) fail("getppid() changed its answer %u times", bad);
}

/* ---- forkexec: fork, exec this program in --child mode, waitpid ---- */
static void part_forkexec(uint32_t iters) {
  for (uint32_t it = 0; it < iters; it++) {
    pid_t pid = fork();
    if (pid < 0) fail("fork: %s", strerror(errno));
    if (pid == 0) {
      char* argv[] = {(char*)g_self, (char*)"--child", NULL};
      char* envp[] = {NULL};
      execve(g_self, argv, envp);
      _exit(99);
    }
    int st;
    if (waitpid(pid, &st, 0) != pid) fail("waitpid: %s", strerror(errno));
    if (!WIFEXITED(st) || WEXITSTATUS(st) != 7)
      fail("iteration %u: the child ended with status 0x%x, not exit(7) (exec of %s failed?)", it, st,
           g_self);
  }
}

static const struct part parts[] = {
    {"sieve", NULL, part_sieve, 80},
    {"crc32", setup_crc, part_crc32, 120},
    {"qsort", NULL, part_qsort, 35},
    {"matmul", NULL, part_matmul, 450},
    {"string", setup_string, part_string, 4000},
    {"syscall", NULL, part_syscall, 1000000},
    {"forkexec", NULL, part_forkexec, 150},
};
enum { NPARTS = sizeof parts / sizeof parts[0] };

int main(int argc, char** argv) {
  for (int i = 1; i < argc; i++)
    if (!strcmp(argv[i], "--child")) return 7;
  /* The fork+exec part runs this program again: find its own path. */
  static char self[4096];
  ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
  if (n > 0) { self[n] = 0; g_self = self; }
  else g_self = argv[0];
  return partbench_main(argc, argv, "cpubench", "[--scale S] [--parts a,b,...] [--list] | --child", parts, NPARTS);
}
