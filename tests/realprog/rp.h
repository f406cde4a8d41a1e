/* Shared helpers of the real-program guest tests (tests/realprog): each
 * program checks its own results, prints only deterministic lines (no
 * addresses, times or process ids) and ends with "OK <name>" or
 * "FAIL <name> ...". Built gcc -m32 -O2 -static; run by realprog_test.py. */
#ifndef RP_H
#define RP_H
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static const char *rp_name = "?";
static int rp_fails;

static inline void rp_start(const char *name) {
  rp_name = name;
  /* Line-buffered even if stdout is not a terminal, and flushed before fork. */
  setvbuf(stdout, NULL, _IOLBF, 0);
}

/* One failed check: printed at once; the first 20 only. */
static inline void rp_fail(const char *fmt, ...) {
  va_list ap;
  if (++rp_fails > 20) return;
  printf("FAIL %s: ", rp_name);
  va_start(ap, fmt);
  vprintf(fmt, ap);
  va_end(ap);
  putchar('\n');
  fflush(stdout);
}

#define CHECK(cond, ...) do { if (!(cond)) rp_fail(__VA_ARGS__); } while (0)

/* The last line; the exit status. */
static inline int rp_end(void) {
  if (rp_fails) {
    printf("FAIL %s (%d failed checks)\n", rp_name, rp_fails);
    return 1;
  }
  printf("OK %s\n", rp_name);
  return 0;
}

/* The numeric argument argv[1], or def. */
static inline long rp_arg(int argc, char **argv, long def) {
  return argc > 1 ? strtol(argv[1], 0, 0) : def;
}

/* A value that depends on every input bit (splitmix-style mixer). */
static inline uint32_t rp_mix(uint32_t a, uint32_t b, uint32_t c) {
  uint32_t h = a * 0x9E3779B1u ^ (b + 0x7F4A7C15u) * 0x85EBCA77u ^ (c + 0x165667B1u) * 0xC2B2AE3Du;
  h ^= h >> 15; h *= 0x2C1B3C6Du; h ^= h >> 12; h *= 0x297A2D39u; h ^= h >> 15;
  return h;
}

/* FNV-1a over words. */
static inline uint32_t rp_hash(const uint32_t *v, size_t n) {
  uint32_t h = 2166136261u;
  for (size_t i = 0; i < n; i++) h = (h ^ v[i]) * 16777619u;
  return h;
}

/* Probing whether an address can be read or written: a SIGSEGV or SIGBUS
 * during the probe jumps back. */
static sigjmp_buf rp_probe_jmp;
static volatile int rp_probing;
static volatile int rp_probe_sig;

static inline void rp_probe_handler(int sig) {
  if (!rp_probing) { static const char m[] = "unexpected fault outside a probe\n"; write(1, m, sizeof m - 1); _exit(3); }
  rp_probe_sig = sig;
  siglongjmp(rp_probe_jmp, 1);
}

static inline void rp_probe_install(void) {
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = rp_probe_handler;
  sigemptyset(&sa.sa_mask);
  sigaction(SIGSEGV, &sa, 0);
  sigaction(SIGBUS, &sa, 0);
}

/* 0 if the byte at p can be read, else the signal number. */
static inline int rp_probe_read(const volatile char *p) {
  rp_probe_sig = 0;
  if (sigsetjmp(rp_probe_jmp, 1) == 0) {
    rp_probing = 1;
    (void)*p;
  }
  rp_probing = 0;
  return rp_probe_sig;
}

/* 0 if the byte at p can be written (it is rewritten with its own value). */
static inline int rp_probe_write(volatile char *p) {
  rp_probe_sig = 0;
  if (sigsetjmp(rp_probe_jmp, 1) == 0) {
    rp_probing = 1;
    __asm__ volatile("addb $0, %0" : "+m"(*p));
  }
  rp_probing = 0;
  return rp_probe_sig;
}

#define PAGE 4096u
#endif
