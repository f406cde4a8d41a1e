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
#include <stdint.h>

#include "../lib/partbench.h"

#define NOINLINE __attribute__((noinline, noclone))

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

static const struct part parts[] = {
    {"div", NULL, part_div, 10000},
    {"fib", NULL, part_fib, 120},
    {"callret", NULL, part_callret, 6000},
};
enum { NPARTS = sizeof parts / sizeof parts[0] };

int main(int argc, char** argv) {
  return partbench_main(argc, argv, "callbench", "[--scale S] [--parts a,b,...] [--list]", parts, NPARTS);
}
