/* Linux-level nanobenchmarks (issue 22; after Adams & Agesen, ASPLOS 2006):
 * what the virtualization-sensitive operations cost a Linux process. Built
 * `gcc -m32 -O2 -static` for the guest and `gcc -m64 -O2` for the host
 * (native); run by bench/nano/run.py through bench/cpu/cpu.py's harness
 * (bench/lib/partbench.h's protocol: cpubench-part NAME ITERATIONS SECONDS).
 *
 *   getppid   the getppid() system call (glibc does not cache it)
 *   pgfault   a write to a fresh anonymous page: mmap a region, touch each
 *             page once (one demand-zero fault each), munmap; timed per page
 *             (the mmap/munmap pair is spread over 64 pages)
 *   sigfpe    an integer division by zero: SIGFPE delivered to a handler that
 *             steps over the 2-byte DIV in the saved context and returns
 *             (kernel entry, signal frame, sigreturn)
 *   forkwait  the paper's forkwait: fork(), the child _exit(0)s, the parent
 *             waitpid()s; 40,000 pairs at --scale 1
 *
 * Usage: linuxnano [--scale S] [--parts a,b] [--list] */
#define _GNU_SOURCE
#include <errno.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <ucontext.h>
#include <unistd.h>

#include "../lib/partbench.h"

/* ---- getppid ---- */
static void part_getppid(uint32_t iters) {
  pid_t want = getppid();
  uint32_t bad = 0;
  for (uint32_t it = 0; it < iters; it++) bad += getppid() != want;
  if (bad) fail("getppid() changed its answer %u times", bad);
}

/* ---- pgfault: demand-zero faults on fresh pages ---- */
#define PG_PER_MAP 64
static void part_pgfault(uint32_t iters) {
  const long page = sysconf(_SC_PAGESIZE);
  uint32_t done = 0;
  while (done < iters) {
    uint32_t n = iters - done < PG_PER_MAP ? iters - done : PG_PER_MAP;
    volatile char* p = mmap(NULL, (size_t)page * n, PROT_READ | PROT_WRITE,
                            MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) fail("mmap: %s", strerror(errno));
    for (uint32_t i = 0; i < n; i++) p[(size_t)i * page] = (char)i;
    for (uint32_t i = 0; i < n; i++)
      if (p[(size_t)i * page] != (char)i) fail("page %u lost its write", i);
    munmap((void*)p, (size_t)page * n);
    done += n;
  }
}

/* ---- sigfpe: #DE -> SIGFPE -> handler -> sigreturn ---- */
static volatile uint32_t g_fpe;
static void on_fpe(int sig, siginfo_t* si, void* ctx) {
  (void)sig;
  ucontext_t* uc = ctx;
  if (si->si_code != FPE_INTDIV) fail("SIGFPE with si_code %d, not FPE_INTDIV", si->si_code);
#if defined(__x86_64__)
  uc->uc_mcontext.gregs[REG_RIP] += 2; /* divl %ecx: F7 F1 */
#elif defined(__i386__)
  uc->uc_mcontext.gregs[REG_EIP] += 2;
#else
#error "x86 only"
#endif
  g_fpe++;
}
static void setup_sigfpe(void) {
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_sigaction = on_fpe;
  sa.sa_flags = SA_SIGINFO;
  sigemptyset(&sa.sa_mask);
  if (sigaction(SIGFPE, &sa, NULL)) fail("sigaction: %s", strerror(errno));
}
static void part_sigfpe(uint32_t iters) {
  g_fpe = 0;
  for (uint32_t it = 0; it < iters; it++) {
    uint32_t eax = 1, edx = 0, zero = 0;
    __asm__ volatile(".byte 0xf7, 0xf1" /* divl %ecx, exactly 2 bytes */
                     : "+a"(eax), "+d"(edx)
                     : "c"(zero)
                     : "cc", "memory");
  }
  if (g_fpe != iters) fail("%u SIGFPEs for %u divisions by zero", g_fpe, iters);
}

/* ---- forkwait ---- */
static void part_forkwait(uint32_t iters) {
  for (uint32_t it = 0; it < iters; it++) {
    pid_t pid = fork();
    if (pid < 0) fail("fork: %s", strerror(errno));
    if (pid == 0) _exit(0);
    int st;
    if (waitpid(pid, &st, 0) != pid) fail("waitpid: %s", strerror(errno));
    if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) fail("child status %#x", st);
  }
}

static const struct part parts[] = {
    {"getppid", NULL, part_getppid, 200000},
    {"pgfault", NULL, part_pgfault, 20000},
    {"sigfpe", setup_sigfpe, part_sigfpe, 20000},
    {"forkwait", NULL, part_forkwait, 40000},
};

int main(int argc, char** argv) {
  return partbench_main(argc, argv, "linuxnano", "[--scale S] [--parts a,b,...] [--list]", parts,
                        (int)(sizeof parts / sizeof parts[0]));
}
