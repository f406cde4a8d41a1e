/* callbench: division and call-heavy work for popek's in-guest benchmark
 * (bench/calls/run.sh; issue 19). Same protocol and build as bench/cpu's
 * cpubench.c (the output lines start with "cpubench-" so that bench/cpu/cpu.py
 * parses them): built `gcc -m32 -O2 -static` for the guest and `gcc -m64 -O2`
 * natively.
 *
 * Parts:
 *   div      a loop of unsigned and signed 32-bit `/` and `%` (DIV, IDIV)
 *   fib      recursive fib(27) (a call, two compares and a return per node)
 *   callret  a chain of small functions that are not inlined, called from a
 *            loop four deep (call/ret-heavy code with some work in each)
 * Usage: callbench [--scale S] [--parts a,b,...] [--list]
 */
#define _GNU_SOURCE
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define NOINLINE __attribute__((noinline, noclone))

static double now(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

static const char* g_part;
static void fail(const char* fmt, ...) __attribute__((format(printf, 1, 2), noreturn));
static void fail(const char* fmt, ...) {
  va_list ap;
  printf("cpubench-FAIL %s: ", g_part ? g_part : "?");
  va_start(ap, fmt);
  vprintf(fmt, ap);
  va_end(ap);
  printf("\n");
  fflush(stdout);
  exit(1);
}

/* Divisors and dividends the compiler cannot see: read through a volatile. */
static volatile uint32_t g_vol = 7;

static void part_div(uint32_t iters) {
  uint32_t sum_u = 0;
  int32_t sum_s = 0;
  uint32_t d0 = g_vol;
  for (uint32_t it = 0; it < iters; it++) {
    uint32_t a = 0x9E3779B9u * (it + 1);
    uint32_t d = d0;
    for (uint32_t k = 0; k < 1000; k++) {
      sum_u += a / d + a % d;                    /* DIV */
      int32_t sa = (int32_t)(a ^ 0x80000000u) >> 3;
      int32_t sd = (int32_t)(d & 0xFF) - 100;
      if (sd == 0) sd = 3;
      sum_s += sa / sd + sa % sd;                /* IDIV */
      a = a * 1664525u + 1013904223u;
      d = (d * 33u + (a >> 20)) % 1021u + 1u;    /* DIV again */
    }
  }
  /* The same sums in both builds (32-bit arithmetic): the check line lets
   * a reader compare them. */
  if (sum_u == 0 && sum_s == 0) fail("degenerate sums");
  printf("cpubench-check div %08x %08x\n", sum_u, (uint32_t)sum_s);
}

NOINLINE static uint32_t fib(uint32_t n) { return n < 2 ? n : fib(n - 1) + fib(n - 2); }

static void part_fib(uint32_t iters) {
  uint32_t s = 0;
  for (uint32_t it = 0; it < iters; it++) s += fib(27 + (g_vol & 0));
  if (s != 196418u * iters) fail("fib(27) x %u = %u", iters, s);
}

/* Four levels of small functions; each does a little work around its call. */
NOINLINE static uint32_t leaf(uint32_t x) { return x * 2654435761u + 1; }
NOINLINE static uint32_t lvl3(uint32_t x) { return leaf(x) ^ leaf(x + 1); }
NOINLINE static uint32_t lvl2(uint32_t x) { return lvl3(x) + (x >> 3); }
NOINLINE static uint32_t lvl1(uint32_t x) { return lvl2(x) - lvl3(x ^ 5); }

static void part_callret(uint32_t iters) {
  uint32_t s = 0;
  for (uint32_t it = 0; it < iters; it++)
    for (uint32_t k = 0; k < 1000; k++) s += lvl1(it * 1000 + k);
  if (s == 0) fail("degenerate sum");
  printf("cpubench-check callret %08x\n", s);
}

struct part {
  const char* name;
  void (*run)(uint32_t iters);
  uint32_t base_iters; /* at --scale 1: about 0.2-0.5 s natively */
};
static const struct part parts[] = {
    {"div", part_div, 10000},
    {"fib", part_fib, 120},
    {"callret", part_callret, 6000},
};
enum { NPARTS = sizeof parts / sizeof parts[0] };

int main(int argc, char** argv) {
  double scale = 1.0;
  const char* only = NULL;
  for (int i = 1; i < argc; i++) {
    if (!strcmp(argv[i], "--scale") && i + 1 < argc) {
      scale = strtod(argv[++i], NULL);
    } else if (!strcmp(argv[i], "--parts") && i + 1 < argc) {
      only = argv[++i];
    } else if (!strcmp(argv[i], "--list")) {
      for (int p = 0; p < NPARTS; p++) printf("%s %u\n", parts[p].name, parts[p].base_iters);
      return 0;
    } else {
      fprintf(stderr, "usage: callbench [--scale S] [--parts a,b,...] [--list]\n");
      return 2;
    }
  }
  if (!(scale > 0)) { fprintf(stderr, "callbench: bad --scale\n"); return 2; }
  setvbuf(stdout, NULL, _IOLBF, 0);
  printf("cpubench-begin scale=%g\n", scale);
  for (int p = 0; p < NPARTS; p++) {
    const struct part* pt = &parts[p];
    if (only) {
      size_t len = strlen(pt->name);
      const char* s = only;
      int hit = 0;
      while (*s) {
        const char* e = strchr(s, ',');
        size_t l = e ? (size_t)(e - s) : strlen(s);
        if (l == len && !strncmp(s, pt->name, len)) hit = 1;
        s += l + (e ? 1 : 0);
      }
      if (!hit) continue;
    }
    g_part = pt->name;
    printf("cpubench-start %s\n", pt->name);
    double d = pt->base_iters * scale + 0.5;
    uint32_t iters = d < 1 ? 1 : d > 4e9 ? 4000000000u : (uint32_t)d;
    double t0 = now();
    pt->run(iters);
    double t1 = now();
    printf("cpubench-part %s %u %.6f\n", pt->name, iters, t1 - t0);
  }
  printf("cpubench-end ok\n");
  return 0;
}
