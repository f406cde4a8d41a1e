/* Single-stepping with EFLAGS.TF as debuggers and tracers do it without
 * ptrace: a SIGTRAP handler records the EIP of every single-step trap through
 * known instruction sequences (inline assembly with a label per instruction)
 * and clears TF at the end label; the recorded sequence must be what a real
 * CPU reports:
 *  - basic: TF set by POPF traps first after the instruction that follows the
 *    POPF; then one trap per instruction, through a jump, a call/ret and a
 *    loop; si_code is TRAP_TRACE (the kernel reads DR6.BS).
 *  - rep: a REP string instruction traps after EACH iteration (the trap's EIP
 *    is the REP instruction itself until the count runs out): REP MOVSB and
 *    REP STOSL with ECX = 3 are each reported 3 times (once before, twice
 *    between iterations); REPE CMPSB stopping on a mismatch at the second
 *    byte twice; a REP with ECX = 0 once. The data moved is checked.
 *  - movss: MOV SS and POP SS hold the trap back over the next instruction:
 *    the instruction right after the SS load is never reported.
 * The same source builds for x86-64 (no POP SS there) so the expectations can
 * be checked on a real CPU: gcc -O2 tf.c && ./a.out */
#define _GNU_SOURCE
#include <signal.h>
#include <ucontext.h>
#include "rp.h"

#ifdef __i386__
#define SP "%esp"
#define REG(r) "%e" #r
#define SYM(s) s
#define SAVE "push %ebx\n push %esi\n push %edi\n push %ebp\n"
#define RESTORE "pop %ebp\n pop %edi\n pop %esi\n pop %ebx\n"
#define IP_REG REG_EIP
#else
#define SP "%rsp"
#define REG(r) "%r" #r
#define SYM(s) s "(%rip)"
#define SAVE "push %rbx\n push %rbp\n"
#define RESTORE "pop %rbp\n pop %rbx\n"
#define IP_REG REG_RIP
#endif
#define TF_ON "pushf\n orl $0x100, (" SP ")\n popf\n"
#define TF_OFF "pushf\n andl $~0x100, (" SP ")\n popf\n"
#define FUNC(name) ".globl " #name "\n .type " #name ", @function\n" #name ":\n"
#define L(name) ".globl " #name "\n" #name ":\n"

unsigned char src[64] = "abcdefghijklmnop", dst[64], cmpbuf[64] = "aXcdefgh";
unsigned int cmp_left, loop_ecx;

__asm__(".text\n"
        /* basic */
        FUNC(tf_basic) SAVE TF_ON
        "nop\n"
        L(tb0) "mov $5, %eax\n"
        L(tb1) "add $7, %eax\n"
        L(tb2) "jmp tb4\n"
        L(tb3) "nop\n"
        L(tb4) "call tb_sub\n"
        L(tb5) "mov $2, %ecx\n"
        L(tb6) "dec %ecx\n"
        L(tb7) "jnz tb6\n"
        L(tb8) "mov %ecx, " SYM("loop_ecx") "\n"
        L(tb_end) TF_OFF RESTORE "ret\n"
        L(tb_sub) "inc %eax\n"
        L(tb_sub1) "ret\n"
        /* rep */
        FUNC(tf_rep) SAVE "cld\n lea " SYM("src") ", " REG(si) "\n lea " SYM("dst") ", " REG(di) "\n" TF_ON
        "nop\n"
        L(tr0) "mov $3, %ecx\n"
        L(tr1) "rep movsb\n"
        L(tr2) "mov $3, %ecx\n"
        L(tr3) "mov $0x11223344, %eax\n"
        L(tr4) "rep stosl\n"
        L(tr5) "lea " SYM("src") ", " REG(si) "\n"
        L(tr6) "lea " SYM("cmpbuf") ", " REG(di) "\n"
        L(tr7) "mov $3, %ecx\n"
        L(tr8) "repe cmpsb\n"
        L(tr9) "mov %ecx, " SYM("cmp_left") "\n"
        L(tr10) "xor %ecx, %ecx\n"
        L(tr11) "rep movsb\n"
        L(tr12) "nop\n"
        L(tr_end) TF_OFF RESTORE "ret\n"
        /* movss */
        FUNC(tf_movss) SAVE TF_ON
        "nop\n"
        L(ts0) "mov %ss, %eax\n"
        L(ts1) "mov %eax, %ss\n"
        L(ts2) "mov $1, %ecx\n"
        L(ts3) "add $1, %ecx\n"
#ifdef __i386__
        L(ts4) "push %ss\n"
        L(ts5) "pop %ss\n"
        L(ts6) "add $1, %ecx\n"
        L(ts7) "add $1, %ecx\n"
#endif
        L(ts_end) TF_OFF RESTORE "ret\n");

extern const char tb0[], tb1[], tb2[], tb3[], tb4[], tb5[], tb6[], tb7[], tb8[], tb_end[], tb_sub[], tb_sub1[];
extern const char tr0[], tr1[], tr2[], tr3[], tr4[], tr5[], tr6[], tr7[], tr8[], tr9[], tr10[], tr11[], tr12[], tr_end[];
extern const char ts0[], ts1[], ts2[], ts3[], ts_end[];
#ifdef __i386__
extern const char ts4[], ts5[], ts6[], ts7[];
#endif
void tf_basic(void), tf_rep(void), tf_movss(void);

struct label { const char *name; const char *at; };
#define LB(x) { #x, x }
static const struct label labels[] = {
  LB(tb0), LB(tb1), LB(tb2), LB(tb3), LB(tb4), LB(tb5), LB(tb6), LB(tb7), LB(tb8), LB(tb_end), LB(tb_sub), LB(tb_sub1),
  LB(tr0), LB(tr1), LB(tr2), LB(tr3), LB(tr4), LB(tr5), LB(tr6), LB(tr7), LB(tr8), LB(tr9), LB(tr10), LB(tr11),
  LB(tr12), LB(tr_end), LB(ts0), LB(ts1), LB(ts2), LB(ts3), LB(ts_end),
#ifdef __i386__
  LB(ts4), LB(ts5), LB(ts6), LB(ts7),
#endif
};

enum { MAXT = 200 };
static volatile uintptr_t trace[MAXT];
static volatile int ntrace, bad_code;
static const char *volatile stop_at;

static void on_trap(int sig, siginfo_t *si, void *ctx) {
  ucontext_t *uc = ctx;
  (void)sig;
  uintptr_t ip = uc->uc_mcontext.gregs[IP_REG];
  if (si->si_code != TRAP_TRACE) bad_code++;
  if (ntrace < MAXT) trace[ntrace++] = ip;
  if (ip == (uintptr_t)stop_at || ntrace >= MAXT) uc->uc_mcontext.gregs[REG_EFL] &= ~0x100;
}

static void name_of(uintptr_t ip, char *out, size_t n) {
  for (size_t i = 0; i < sizeof labels / sizeof labels[0]; i++)
    if ((uintptr_t)labels[i].at == ip) { snprintf(out, n, "%s", labels[i].name); return; }
  const struct label *best = 0;
  for (size_t i = 0; i < sizeof labels / sizeof labels[0]; i++)
    if ((uintptr_t)labels[i].at < ip && (!best || labels[i].at > best->at)) best = &labels[i];
  if (best && ip - (uintptr_t)best->at < 64) snprintf(out, n, "%s+%u", best->name, (unsigned)(ip - (uintptr_t)best->at));
  else snprintf(out, n, "?");
}

/* Runs fn single-stepped to `end`; compares the trap EIPs with want[]. */
static void run(const char *what, void (*fn)(void), const char *end, const char *const *want, int nwant) {
  ntrace = 0;
  bad_code = 0;
  stop_at = end;
  fn();
  int same = ntrace == nwant;
  for (int i = 0; same && i < nwant; i++) same = trace[i] == (uintptr_t)want[i];
  char line[2048], nm[40];
  if (!same) {
    int o = snprintf(line, sizeof line, "expected");
    for (int i = 0; i < nwant && o < 1900; i++) { name_of((uintptr_t)want[i], nm, sizeof nm); o += snprintf(line + o, sizeof line - o, " %s", nm); }
    rp_fail("%s: %s", what, line);
    o = snprintf(line, sizeof line, "got     ");
    for (int i = 0; i < ntrace && o < 1900; i++) { name_of(trace[i], nm, sizeof nm); o += snprintf(line + o, sizeof line - o, " %s", nm); }
    printf("  %s: %s\n", what, line);
  }
  CHECK(bad_code == 0, "%s: %d traps with si_code other than TRAP_TRACE", what, bad_code);
  printf("%s: %d single-step traps%s\n", what, ntrace, same ? ", as a real CPU" : "");
}

static int count(const char *at) {
  int n = 0;
  for (int i = 0; i < ntrace; i++) n += trace[i] == (uintptr_t)at;
  return n;
}

int main(void) {
  rp_start("tf");
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_sigaction = on_trap;
  sa.sa_flags = SA_SIGINFO;
  sigemptyset(&sa.sa_mask);
  sigaction(SIGTRAP, &sa, 0);

  static const char *const basic[] = {tb0, tb1, tb2, tb4, tb_sub, tb_sub1, tb5, tb6, tb7, tb6, tb7, tb8, tb_end};
  run("basic", tf_basic, tb_end, basic, sizeof basic / sizeof *basic);
  CHECK(loop_ecx == 0, "basic: loop ended with ecx %u", loop_ecx);

  static const char *const rep[] = {tr0, tr1, tr1, tr1, tr2, tr3, tr4, tr4, tr4, tr5, tr6, tr7, tr8, tr8, tr9,
                                    tr10, tr11, tr12, tr_end};
  run("rep", tf_rep, tr_end, rep, sizeof rep / sizeof *rep);
  printf("rep: rep movsb (ecx 3) reported %d times, rep stosl (ecx 3) %d, repe cmpsb (stops at 2) %d, "
         "rep movsb (ecx 0) %d\n", count(tr1), count(tr4), count(tr8), count(tr11));
  CHECK(memcmp(dst, "abc\x44\x33\x22\x11\x44\x33\x22\x11\x44\x33\x22\x11", 15) == 0 && dst[15] == 0,
        "rep: rep movsb/stosl moved the wrong bytes");
  CHECK(cmp_left == 1, "rep: repe cmpsb left ecx %u, expected 1", cmp_left);

#ifdef __i386__
  static const char *const movss[] = {ts0, ts1, ts3, ts4, ts5, ts7, ts_end};
#else
  static const char *const movss[] = {ts0, ts1, ts3, ts_end};
#endif
  run("movss", tf_movss, ts_end, movss, sizeof movss / sizeof *movss);
  printf("movss: the instruction after mov ss reported %d times\n", count(ts2));
#ifdef __i386__
  printf("movss: the instruction after pop ss reported %d times\n", count(ts6));
#endif
  return rp_end();
}
