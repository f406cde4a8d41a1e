/* The harness of popek's in-guest C benchmarks (bench/cpu/cpubench.c,
 * bench/calls/callbench.c): timing, failure reports and the main loop over the
 * parts, with the output protocol bench/cpu/cpu.py parses:
 *   cpubench-begin scale=S
 *   cpubench-start NAME                 (set-up done, the timed loop starts)
 *   cpubench-part NAME ITERATIONS SECONDS
 *   cpubench-end ok
 * or `cpubench-FAIL NAME: reason` and exit status 1.
 * Included once, by the program's own source (built -m32 -static and -m64). */
#ifndef POPEK_BENCH_PARTBENCH_H
#define POPEK_BENCH_PARTBENCH_H
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static double now(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

static const char* g_part; /* part being checked, for fail() */

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

struct part {
  const char* name;
  void (*setup)(void); /* untimed, may be NULL */
  void (*run)(uint32_t iters);
  uint32_t base_iters; /* at --scale 1: about 0.2-0.5 s natively */
};

/* Parses --scale S, --parts a,b,... and --list (`usage` is the usage line
 * after the program's name), then runs the selected parts in order. */
static int partbench_main(int argc, char** argv, const char* prog, const char* usage,
                          const struct part* parts, int nparts) {
  double scale = 1.0;
  const char* only = NULL;
  for (int i = 1; i < argc; i++) {
    if (!strcmp(argv[i], "--scale") && i + 1 < argc) {
      scale = strtod(argv[++i], NULL);
    } else if (!strcmp(argv[i], "--parts") && i + 1 < argc) {
      only = argv[++i];
    } else if (!strcmp(argv[i], "--list")) {
      for (int p = 0; p < nparts; p++) printf("%s %u\n", parts[p].name, parts[p].base_iters);
      return 0;
    } else {
      fprintf(stderr, "usage: %s %s\n", prog, usage);
      return 2;
    }
  }
  if (!(scale > 0)) { fprintf(stderr, "%s: bad --scale\n", prog); return 2; }
  setvbuf(stdout, NULL, _IOLBF, 0);
  printf("cpubench-begin scale=%g\n", scale);
  for (int p = 0; p < nparts; p++) {
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
    if (pt->setup) pt->setup();
    printf("cpubench-start %s\n", pt->name); /* lets the host time the part too */
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
#endif
