/* The firmware nanobenchmarks (bench/nano/nano.asm) that exist in user mode
 * on the host, for the table's "native" column: the same loops (the empty
 * loop, CALL/RET, CPUID leaf 0, RDTSC; 10 per loop iteration as in nano.asm),
 * timed with clock_gettime(CLOCK_MONOTONIC). The rest need ring 0 or a kernel
 * of one's own; their native figures are the Linux-level ones (linuxnano.c).
 * Built `gcc -m64 -O2` by bench/nano/run.py. Prints, per benchmark:
 *   hostnano NAME OPS NANOSECONDS
 * Usage: hostnano [--scale S] */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static double now_ns(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (double)t.tv_sec * 1e9 + (double)t.tv_nsec;
}

#define REP10(x) x x x x x x x x x x

static void b_loop(uint32_t n) {
  __asm__ volatile("1: dec %0\n jnz 1b" : "+r"(n) : : "cc");
}
static void b_callret(uint32_t n) {
  __asm__ volatile(
      "jmp 2f\n"
      "3: ret\n"
      "2:\n"
      "1:\n" REP10("call 3b\n") "dec %0\n jnz 1b"
      : "+r"(n)
      :
      : "cc", "memory");
}
static void b_cpuid(uint32_t n) {
  for (uint32_t i = 0; i < n; i++) {
    uint32_t a, b, c, d;
    /* ten CPUIDs per iteration, as in the guest program */
#define ONE __asm__ volatile("cpuid" : "=a"(a), "=b"(b), "=c"(c), "=d"(d) : "a"(0), "c"(0));
    REP10(ONE)
#undef ONE
  }
}
static void b_rdtsc(uint32_t n) {
  for (uint32_t i = 0; i < n; i++) {
    uint32_t a, d;
#define ONE __asm__ volatile("rdtsc" : "=a"(a), "=d"(d));
    REP10(ONE)
#undef ONE
  }
}

int main(int argc, char** argv) {
  double scale = 1.0;
  for (int i = 1; i < argc; i++) {
    if (!strcmp(argv[i], "--scale") && i + 1 < argc) {
      scale = strtod(argv[++i], NULL);
    } else {
      fprintf(stderr, "usage: hostnano [--scale S]\n");
      return 2;
    }
  }
  if (!(scale > 0)) return 2;
  /* base iterations as in nano.asm (there: SCALE permille), times 10 here
   * because native is fast */
  struct {
    const char* name;
    void (*run)(uint32_t);
    uint32_t iters, per_iter;
  } b[] = {
      {"loop", b_loop, 10000000, 1},
      {"callret", b_callret, 200000, 10},
      {"cpuid", b_cpuid, 50000, 10},
      {"rdtsc", b_rdtsc, 100000, 10},
  };
  for (unsigned i = 0; i < sizeof b / sizeof b[0]; i++) {
    uint32_t n = (uint32_t)(b[i].iters * scale + 0.5);
    if (n < 1) n = 1;
    double t0 = now_ns();
    b[i].run(n);
    double t1 = now_ns();
    printf("hostnano %s %llu %.0f\n", b[i].name, (unsigned long long)n * b[i].per_iter, t1 - t0);
  }
  return 0;
}
