#include "host_exec.h"

#include <cpuid.h>
#include <setjmp.h>
#include <signal.h>
#include <sys/mman.h>

#include <cstdio>
#include <cstring>

namespace popek::oracle::host {
namespace {

// Layout shared with the assembly below.
struct alignas(64) ExecState {
  uint64_t gpr_in[8];      // 0
  uint64_t flags_in;       // 64
  uint64_t pad0[7];        // 72
  uint64_t gpr_out[8];     // 128
  uint64_t flags_out;      // 192
  uint64_t pad1[7];        // 200
  alignas(16) uint8_t fx_in[512];   // 256
  alignas(16) uint8_t fx_out[512];  // 768
};
static_assert(offsetof(ExecState, flags_in) == 64);
static_assert(offsetof(ExecState, gpr_out) == 128);
static_assert(offsetof(ExecState, flags_out) == 192);
static_assert(offsetof(ExecState, fx_in) == 256);
static_assert(offsetof(ExecState, fx_out) == 768);

}  // namespace
}  // namespace popek::oracle::host

// popek_oracle_enter(ExecState* rdi, const void* code rsi): loads the input
// state, jumps to the code page (instruction under test followed by "jmp r13"),
// stores the output state. The instruction under test cannot touch r13-r15
// (no REX prefix) nor rsp (never an operand).
asm(R"(
  .text
  .globl popek_oracle_enter
  .type popek_oracle_enter, @function
popek_oracle_enter:
  .intel_syntax noprefix
  push rbx
  push rbp
  push r12
  push r13
  push r14
  push r15
  mov r15, rdi
  mov r14, rsi
  lea r13, [rip + .Lpopek_oracle_back]
  fxrstor [r15 + 256]
  push qword ptr [r15 + 64]
  popfq
  mov rax, [r15 + 0]
  mov rcx, [r15 + 8]
  mov rdx, [r15 + 16]
  mov rbx, [r15 + 24]
  mov rbp, [r15 + 40]
  mov rsi, [r15 + 48]
  mov rdi, [r15 + 56]
  jmp r14
.Lpopek_oracle_back:
  mov [r15 + 128], rax
  mov [r15 + 136], rcx
  mov [r15 + 144], rdx
  mov [r15 + 152], rbx
  mov [r15 + 168], rbp
  mov [r15 + 176], rsi
  mov [r15 + 184], rdi
  pushfq
  pop qword ptr [r15 + 192]
  fxsave [r15 + 768]
  fninit
  cld
  pop r15
  pop r14
  pop r13
  pop r12
  pop rbp
  pop rbx
  ret
  .att_syntax prefix
  .size popek_oracle_enter, . - popek_oracle_enter
)");

extern "C" void popek_oracle_enter(void* state, const void* code);

namespace popek::oracle::host {
namespace {

ExecState g_state;
uint8_t* g_code = nullptr;
uint8_t* g_data = nullptr;
sigjmp_buf g_jb;
volatile sig_atomic_t g_in_exec = 0;
volatile int g_signo = 0, g_sicode = 0;

void on_signal(int sig, siginfo_t* si, void*) {
  if (!g_in_exec) {
    signal(sig, SIG_DFL);
    raise(sig);
    return;
  }
  g_signo = sig;
  g_sicode = si->si_code;
  g_in_exec = 0;
  siglongjmp(g_jb, 1);
}

constexpr size_t kGuard = 64;

void put_fx(uint8_t* fx, const FpuState& s, bool has) {
  std::memset(fx, 0, 512);
  FpuState d;
  const FpuState& f = has ? s : d;
  std::memcpy(fx + 0, &f.fcw, 2);
  std::memcpy(fx + 2, &f.fsw, 2);
  uint8_t abridged = 0;
  for (int i = 0; i < 8; ++i)
    if (((f.ftw >> (2 * i)) & 3) != 3) abridged |= 1u << i;
  fx[4] = has ? abridged : 0;
  uint32_t mxcsr = 0x1F80;
  std::memcpy(fx + 24, &mxcsr, 4);
  for (int i = 0; i < 8; ++i) {
    std::memcpy(fx + 32 + 16 * i, &f.st[i].mant, 8);
    std::memcpy(fx + 40 + 16 * i, &f.st[i].se, 2);
  }
}

FpuState get_fx(const uint8_t* fx) {
  FpuState f;
  std::memcpy(&f.fcw, fx + 0, 2);
  std::memcpy(&f.fsw, fx + 2, 2);
  for (int i = 0; i < 8; ++i) {
    std::memcpy(&f.st[i].mant, fx + 32 + 16 * i, 8);
    std::memcpy(&f.st[i].se, fx + 40 + 16 * i, 2);
  }
  unsigned top = f.top();
  uint16_t ftw = 0;
  for (unsigned phys = 0; phys < 8; ++phys) {
    unsigned t = 3;
    if (fx[4] & (1u << phys)) t = tag_of(f.st[(phys - top) & 7]);
    ftw |= static_cast<uint16_t>(t << (2 * phys));
  }
  f.ftw = ftw;
  return f;
}

}  // namespace

unsigned tag_of(const Float80& f) {
  unsigned exp = f.se & 0x7FFF;
  if (exp == 0x7FFF) return 2;
  if (exp == 0) return f.mant == 0 ? 1 : 2;
  return (f.mant >> 63) ? 0 : 2;
}

bool init(std::string* err) {
  if (g_code) return true;
  void* d = mmap(reinterpret_cast<void*>(uintptr_t{kDataBase}), kDataSize, PROT_READ | PROT_WRITE,
                 MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0);
  if (d == MAP_FAILED || d != reinterpret_cast<void*>(uintptr_t{kDataBase})) {
    if (err) *err = "cannot map the data area at a fixed address below 4 GiB";
    if (d != MAP_FAILED) munmap(d, kDataSize);
    return false;
  }
  void* c = mmap(nullptr, 4096, PROT_READ | PROT_WRITE | PROT_EXEC, MAP_PRIVATE | MAP_ANONYMOUS,
                 -1, 0);
  if (c == MAP_FAILED) {
    if (err) *err = "cannot map an executable page";
    munmap(d, kDataSize);
    return false;
  }
  g_data = static_cast<uint8_t*>(d);
  g_code = static_cast<uint8_t*>(c);
  struct sigaction sa {};
  sa.sa_sigaction = on_signal;
  sa.sa_flags = SA_SIGINFO | SA_NODEFER;
  sigemptyset(&sa.sa_mask);
  for (int s : {SIGFPE, SIGSEGV, SIGBUS, SIGILL, SIGTRAP}) sigaction(s, &sa, nullptr);
  return true;
}

RunResult execute(Vector& v, uint8_t guard) {
  RunResult rr;
  if (!init()) {
    rr.signo = -1;
    return rr;
  }
  // Code page: instruction under test, then "jmp r13".
  std::memcpy(g_code, v.code.data(), v.code.size());
  static const uint8_t kBack[] = {0x41, 0xFF, 0xE5};
  std::memcpy(g_code + v.code.size(), kBack, sizeof kBack);

  v.in.eflags = (v.in.eflags & kRecordedFlags) | 2;
  v.in.gpr[kEsp] = 0;
  for (int i = 0; i < 8; ++i) g_state.gpr_in[i] = v.in.gpr[i];
  g_state.flags_in = v.in.eflags;
  put_fx(g_state.fx_in, v.fpu_in, v.has_fpu);

  uint32_t off = 0, len = 0;
  if (v.has_mem) {
    off = v.mem_addr - kDataBase;
    len = static_cast<uint32_t>(v.mem_in.size());
    if (v.mem_addr < kDataBase + kGuard || off + len + kGuard > kDataSize) {
      rr.signo = -2;
      return rr;
    }
    std::memset(g_data + off - kGuard, guard, kGuard);
    std::memcpy(g_data + off, v.mem_in.data(), len);
    std::memset(g_data + off + len, guard, kGuard);
  }

  g_signo = 0;
  g_sicode = 0;
  if (sigsetjmp(g_jb, 0) == 0) {
    g_in_exec = 1;
    popek_oracle_enter(&g_state, g_code);
    g_in_exec = 0;
  }
  rr.signo = g_signo;
  rr.si_code = g_sicode;

  v.fault = Fault::None;
  if (rr.signo == SIGFPE) {
    v.fault = (rr.si_code == FPE_INTDIV || rr.si_code == FPE_INTOVF) ? Fault::DE : Fault::MF;
    v.out = v.in;
    v.mem_out = v.mem_in;
    v.fpu_out = v.fpu_in;
    rr.signo = 0;
    return rr;
  }
  if (rr.signo) return rr;

  for (int i = 0; i < 8; ++i)
    v.out.gpr[i] = i == kEsp ? 0 : static_cast<uint32_t>(g_state.gpr_out[i]);
  v.out.eflags = static_cast<uint32_t>(g_state.flags_out) & kRecordedFlags;
  if (v.has_mem) {
    v.mem_out.assign(g_data + off, g_data + off + len);
    for (size_t i = 0; i < kGuard; ++i)
      if (g_data[off - kGuard + i] != guard || g_data[off + len + i] != guard) rr.signo = -3;
  }
  if (v.has_fpu) v.fpu_out = get_fx(g_state.fx_out);
  return rr;
}

std::string host_description() {
  unsigned a = 0, b = 0, c = 0, d = 0;
  char vendor[13] = {};
  __get_cpuid(0, &a, &b, &c, &d);
  std::memcpy(vendor, &b, 4);
  std::memcpy(vendor + 4, &d, 4);
  std::memcpy(vendor + 8, &c, 4);
  __get_cpuid(1, &a, &b, &c, &d);
  unsigned family = (a >> 8) & 0xF, model = (a >> 4) & 0xF, stepping = a & 0xF;
  if (family == 0xF) family += (a >> 20) & 0xFF;
  if (family >= 6) model |= ((a >> 16) & 0xF) << 4;
  char brand[49] = {};
  unsigned max_ext = __get_cpuid_max(0x80000000, nullptr);
  if (max_ext >= 0x80000004) {
    for (unsigned i = 0; i < 3; ++i) {
      __get_cpuid(0x80000002 + i, &a, &b, &c, &d);
      std::memcpy(brand + 16 * i, &a, 4);
      std::memcpy(brand + 16 * i + 4, &b, 4);
      std::memcpy(brand + 16 * i + 8, &c, 4);
      std::memcpy(brand + 16 * i + 12, &d, 4);
    }
  }
  std::string br(brand);
  while (!br.empty() && br.back() == ' ') br.pop_back();
  while (!br.empty() && br.front() == ' ') br.erase(br.begin());
  char buf[256];
  std::snprintf(buf, sizeof buf, "%s family=0x%x model=0x%x stepping=0x%x brand=%s", vendor, family,
                model, stepping, br.c_str());
  return buf;
}

}  // namespace popek::oracle::host
