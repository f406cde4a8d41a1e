/* mprotect flips as garbage collectors, JITs and dirty-page trackers do them:
 * a region is written, made read-only (reads go on, the data stays), then
 * updated page by page in a scrambled order: every first write to a page
 * faults, and the SIGSEGV handler (checking the fault address, the page-fault
 * error code's write bit and trap number) makes that page writable again, so
 * the faulting instruction, a read-modify-write, restarts and completes
 * exactly once. Also PROT_NONE (a read faults and the handler grants read;
 * the write then faults again and gets write), every other page read-only,
 * and a whole-region flip back. Counts the faults and checks every word.
 * Argument: rounds (default 4). */
#define _GNU_SOURCE
#include <sys/mman.h>
#include <ucontext.h>
#include "rp.h"

static char *region;
static size_t npages;
static unsigned char *prot;  /* the protection the program gave each page */
static volatile unsigned read_faults, write_faults, bad;

static void die_in_handler(const char *m) {
  write(1, "FAIL mprot: ", 12);
  write(1, m, strlen(m));
  write(1, "\n", 1);
  _exit(2);
}

static void on_segv(int sig, siginfo_t *si, void *ctx) {
  ucontext_t *uc = ctx;
  char *a = si->si_addr;
  (void)sig;
  if (a < region || a >= region + npages * PAGE) die_in_handler("fault outside the region");
  if (si->si_code != SEGV_ACCERR) die_in_handler("si_code is not SEGV_ACCERR");
  int trapno = uc->uc_mcontext.gregs[REG_TRAPNO], err = uc->uc_mcontext.gregs[REG_ERR];
  if (trapno != 14) die_in_handler("trap number is not 14 (page fault)");
  if (!(err & 4)) die_in_handler("error code without the user bit");
  size_t pg = (size_t)(a - region) / PAGE;
  int is_write = err & 2;
  if (prot[pg] == PROT_NONE) {
    /* Either access to a PROT_NONE page: grant read (a write faults again). */
    if (is_write) write_faults++; else read_faults++;
    prot[pg] = PROT_READ;
  } else if (prot[pg] == PROT_READ) {
    if (!is_write) die_in_handler("read fault on a readable page");
    write_faults++;
    prot[pg] = PROT_READ | PROT_WRITE;
  } else {
    die_in_handler("fault on a read-write page");
  }
  if (mprotect(region + pg * PAGE, PAGE, prot[pg]) != 0) die_in_handler("mprotect in the handler failed");
}

static void protect_all(int p) {
  CHECK(mprotect(region, npages * PAGE, p) == 0, "mprotect of the region failed");
  memset(prot, p, npages);
}

static inline uint32_t val(size_t word, uint32_t gen) { return (uint32_t)word * 2654435761u + gen; }

int main(int argc, char **argv) {
  rp_start("mprot");
  long rounds = rp_arg(argc, argv, 4);
  npages = 384;
  const size_t words = npages * PAGE / 4, wpp = PAGE / 4;
  region = mmap(0, npages * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  prot = malloc(npages);
  if (region == MAP_FAILED || !prot) { printf("FAIL mprot: mmap failed\n"); return 1; }
  memset(prot, PROT_READ | PROT_WRITE, npages);
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_sigaction = on_segv;
  sa.sa_flags = SA_SIGINFO;
  sigemptyset(&sa.sa_mask);
  sigaction(SIGSEGV, &sa, 0);
  volatile uint32_t *v = (volatile uint32_t *)region;
  uint32_t gen = 0;
  for (size_t i = 0; i < words; i++) v[i] = val(i, gen);

  for (long r = 0; r < rounds; r++) {
    /* 1. Read-only: reads do not fault; then each page's first write does. */
    protect_all(PROT_READ);
    unsigned f0 = read_faults + write_faults;
    uint32_t sum = 0, expect = 0;
    for (size_t i = 0; i < words; i++) { sum += v[i]; expect += val(i, gen); }
    CHECK(sum == expect && read_faults + write_faults == f0, "round %ld: reading a read-only region went wrong", r);
    unsigned w0 = write_faults;
    for (size_t k = 0; k < npages; k++) {
      size_t pg = (k * 97 + r * 13) % npages;  /* 97 coprime with 384 */
      for (size_t j = 0; j < wpp; j += 61) v[pg * wpp + j] += 1;  /* faults on the first */
    }
    CHECK(write_faults - w0 == npages, "round %ld: %u write faults, expected %zu", r, write_faults - w0, npages);
    for (size_t i = 0; i < words; i++) {
      uint32_t e = val(i, gen) + (i % wpp % 61 == 0);
      if (v[i] != e) { rp_fail("round %ld: word %zu is %08x, expected %08x", r, i, v[i], e); break; }
    }
    gen++;
    for (size_t i = 0; i < words; i++) v[i] = val(i, gen);

    /* 2. PROT_NONE: a read faults (grant read), the write faults (grant write). */
    protect_all(PROT_NONE);
    unsigned r0 = read_faults;
    w0 = write_faults;
    for (size_t k = 0; k < npages; k++) {
      size_t pg = (k * 5 + r) % npages;
      uint32_t x = v[pg * wpp + 7];  /* read fault */
      v[pg * wpp + 8] = x ^ 0x5a5a5a5au;  /* write fault */
    }
    CHECK(read_faults - r0 == npages && write_faults - w0 == npages,
          "round %ld: PROT_NONE pass: %u read and %u write faults, expected %zu each", r,
          read_faults - r0, write_faults - w0, npages);
    for (size_t pg = 0; pg < npages; pg++) {
      size_t i = pg * wpp + 8;
      v[i] = val(i, gen);  /* no fault: the page is read-write now */
    }
    CHECK(write_faults - w0 == npages, "round %ld: a read-write page faulted", r);

    /* 3. Every other page read-only: a sweep faults on half of them. */
    for (size_t pg = r % 2; pg < npages; pg += 2) {
      mprotect(region + pg * PAGE, PAGE, PROT_READ);
      prot[pg] = PROT_READ;
    }
    w0 = write_faults;
    for (size_t i = 0; i < words; i += 64) v[i] = val(i, gen) + 1;
    CHECK(write_faults - w0 == npages / 2, "round %ld: alternate pages: %u write faults, expected %zu", r,
          write_faults - w0, npages / 2);
    size_t badw = 0;
    for (size_t i = 0; i < words; i++) badw += v[i] != val(i, gen) + (i % 64 == 0);
    CHECK(badw == 0, "round %ld: alternate pages: %zu words wrong", r, badw);
    for (size_t i = 0; i < words; i += 64) v[i] = val(i, gen);
    printf("round %ld: faults read %u write %u\n", r, read_faults, write_faults);
  }
  protect_all(PROT_READ | PROT_WRITE);
  printf("hash %08x\n", rp_hash((const uint32_t *)region, words));
  return rp_end();
}
