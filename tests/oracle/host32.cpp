#include "host32.h"

#include <asm/ldt.h>
#include <cpuid.h>
#include <setjmp.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/ucontext.h>
#include <unistd.h>

#include <cstdio>
#include <cstring>

namespace popek::oracle {

u64 LdtEntry::descriptor(u32 base) const {
  // Linux's fill_ldt: type = accessed | writable/readable << 1 | contents << 2.
  const u64 type = 1 | u64(!read_exec_only) << 1 | u64(contents) << 2;
  const u64 access = type | 0x10 | 0x60 | u64(!not_present) << 7;
  const u64 flags = u64(avl) | u64(seg_32bit) << 2 | u64(limit_in_pages) << 3;
  return (limit & 0xFFFF) | u64(base & 0xFFFFFF) << 16 | access << 40 | u64((limit >> 16) & 0xF) << 48 |
         flags << 52 | u64(base >> 24) << 56;
}

namespace {

// Layout of the mapping: the trampoline and its parameter block, then the
// areas (code, data, stack), each kAreaSize.
constexpr u32 kBlock = 0x800, kAreas = 0x10000, kMapSize = kAreas + 3 * kAreaSize;

sigjmp_buf g_jump;
Run32* g_out = nullptr;
u64 g_fsbase = 0, g_gsbase = 0;

// Runs first in the signal handler, before anything that touches
// thread-local storage (the 32-bit code may have loaded FS, whose base
// glibc's TLS is): takes the selectors, puts the 64-bit FS/GS bases back.
__attribute__((no_stack_protector)) void on_signal(int sig, siginfo_t*, void* ucv) {
  u16 ds, es, fs, gs;
  asm volatile("mov %%ds, %0; mov %%es, %1; mov %%fs, %2; mov %%gs, %3" : "=r"(ds), "=r"(es), "=r"(fs), "=r"(gs));
  const u64 zero = 0;
  asm volatile("mov %0, %%fs; wrfsbase %1" ::"r"(zero), "r"(g_fsbase));
  asm volatile("mov %0, %%gs; wrgsbase %1" ::"r"(zero), "r"(g_gsbase));
  const ucontext_t* uc = static_cast<const ucontext_t*>(ucv);
  const greg_t* g = uc->uc_mcontext.gregs;
  Run32& o = *g_out;
  const int regs[8] = {REG_RAX, REG_RCX, REG_RDX, REG_RBX, REG_RSP, REG_RBP, REG_RSI, REG_RDI};
  for (int i = 0; i < 8; i++) o.gpr[i] = u32(g[regs[i]]);
  o.eflags = u32(g[REG_EFL]);
  o.eip = u32(g[REG_RIP]);
  const u64 csgsfs = u64(g[REG_CSGSFS]);
  o.cs = u16(csgsfs);
  o.ss = (uc->uc_flags & 2 /* UC_SIGCONTEXT_SS */) ? u16(csgsfs >> 48) : 0;
  o.ds = ds;
  o.es = es;
  o.fs = fs;
  o.gs = gs;
  o.vector = sig == SIGALRM ? -2 : int(g[REG_TRAPNO]);
  o.error = u32(g[REG_ERR]);
  siglongjmp(g_jump, 1);
}

void put32(u8* p, u32 v) { std::memcpy(p, &v, 4); }

}  // namespace

std::string host_cpu() {
  unsigned a, b, c, d;
  char vendor[13] = {};
  __cpuid(0, a, b, c, d);
  std::memcpy(vendor, &b, 4);
  std::memcpy(vendor + 4, &d, 4);
  std::memcpy(vendor + 8, &c, 4);
  __cpuid(1, a, b, c, d);
  const unsigned family = ((a >> 8) & 0xF) + ((a >> 20) & 0xFF), model = ((a >> 4) & 0xF) | ((a >> 12) & 0xF0);
  return std::string(vendor) + " family " + std::to_string(family) + " model " + std::to_string(model) +
         " stepping " + std::to_string(a & 0xF);
}

Host32::Host32(const std::vector<LdtEntry>& ldt) {
  void* p = ::mmap(nullptr, kMapSize, PROT_READ | PROT_WRITE | PROT_EXEC, MAP_PRIVATE | MAP_ANONYMOUS | MAP_32BIT, -1, 0);
  if (p == MAP_FAILED) {
    why_ = "cannot map memory below 4 GiB";
    return;
  }
  base_ = static_cast<u8*>(p);
  for (unsigned i = 0; i < ldt.size(); i++) {
    const LdtEntry& e = ldt[i];
    user_desc d{};
    d.entry_number = i;
    d.base_addr = e.area == LdtEntry::none ? 0 : u32(reinterpret_cast<uintptr_t>(area(e.area)));
    d.limit = e.limit;
    d.seg_32bit = e.seg_32bit;
    d.contents = e.contents;
    d.read_exec_only = e.read_exec_only;
    d.limit_in_pages = e.limit_in_pages;
    d.seg_not_present = e.not_present;
    d.useable = e.avl;
    // (x86-64 returns modify_ldt's result as an unsigned int: an error is
    // a large positive number, errno unset.)
    const int rc = int(::syscall(SYS_modify_ldt, 1, &d, sizeof d));
    if (rc != 0) {
      why_ = "modify_ldt refused LDT entry " + std::to_string(i) + ": " + std::strerror(rc < 0 ? -rc : errno);
      return;
    }
  }
  // The LDT as Linux stored it must be what the popek side is given
  // (LdtEntry::descriptor): e.g. this kernel leaves AVL clear whatever
  // `useable` says.
  std::vector<u64> got(ldt.size(), 0);
  const int n = int(::syscall(SYS_modify_ldt, 0, got.data(), got.size() * 8));
  for (unsigned i = 0; i < ldt.size() && why_.empty(); i++) {
    const u32 base = ldt[i].area == LdtEntry::none ? 0 : u32(reinterpret_cast<uintptr_t>(area(ldt[i].area)));
    if (n < int(8 * (i + 1)) || got[i] != ldt[i].descriptor(base)) {
      char b[160];
      std::snprintf(b, sizeof b, "Linux stored LDT entry %u as %016llx, not %016llx", i, (unsigned long long)got[i],
                    (unsigned long long)ldt[i].descriptor(base));
      why_ = b;
    }
  }
  if (!why_.empty()) return;
  // The trampoline (64-bit): segment registers and GPRs from the block,
  // then IRETQ to CS:EIP with SS:ESP and EFLAGS.
  std::vector<u8> t;
  auto rd = [&](u8 modrm_reg, u32 off) {  // mov r32, [rax + off]
    t.insert(t.end(), {0x8B, u8(0x40 | modrm_reg << 3), u8(off)});
  };
  t.insert(t.end(), {0x48, 0xB8});
  const u64 blk = reinterpret_cast<uintptr_t>(base_) + kBlock;
  for (int i = 0; i < 8; i++) t.push_back(u8(blk >> (8 * i)));
  const u8 sregs[4][2] = {{48, 0xDB}, {52, 0xC3}, {56, 0xE3}, {60, 0xEB}};  // ds es fs gs
  for (auto& s : sregs) {
    rd(3, s[0]);
    t.insert(t.end(), {0x8E, s[1]});
  }
  for (u32 off : {44u, 16u, 32u, 40u, 36u}) {  // ss, esp, eflags, cs, eip
    rd(3, off);
    t.push_back(0x53);  // push rbx
  }
  for (auto [reg, off] : {std::pair{7, 28}, {6, 24}, {5, 20}, {2, 8}, {1, 4}, {3, 12}, {0, 0}}) rd(u8(reg), u32(off));
  t.insert(t.end(), {0x48, 0xCF});  // iretq
  std::memcpy(base_, t.data(), t.size());
}

Host32::~Host32() {
  if (base_) ::munmap(base_, kMapSize);
}

u8* Host32::area(LdtEntry::Area a) { return base_ + kAreas + u32(a) * kAreaSize; }

Run32 Host32::run(const Run32& in) {
  Run32 out;
  u8* b = base_ + kBlock;
  for (int i = 0; i < 8; i++) put32(b + 4 * i, in.gpr[i]);
  put32(b + 32, in.eflags);
  put32(b + 36, in.eip);
  put32(b + 40, in.cs);
  put32(b + 44, in.ss);
  put32(b + 48, in.ds);
  put32(b + 52, in.es);
  put32(b + 56, in.fs);
  put32(b + 60, in.gs);
  asm volatile("rdfsbase %0; rdgsbase %1" : "=r"(g_fsbase), "=r"(g_gsbase));
  static u8 altstack[64 * 1024];
  stack_t ss{}, old_ss{};
  ss.ss_sp = altstack;
  ss.ss_size = sizeof altstack;
  ::sigaltstack(&ss, &old_ss);
  struct sigaction sa{}, old[6];
  sa.sa_sigaction = on_signal;
  sa.sa_flags = SA_SIGINFO | SA_ONSTACK | SA_NODEFER;
  sigemptyset(&sa.sa_mask);
  const int sigs[6] = {SIGSEGV, SIGBUS, SIGILL, SIGFPE, SIGTRAP, SIGALRM};
  for (int i = 0; i < 6; i++) ::sigaction(sigs[i], &sa, &old[i]);
  g_out = &out;
  if (sigsetjmp(g_jump, 1) == 0) {
    ::alarm(5);  // (a sequence that never faults: vector -2)
    reinterpret_cast<void (*)()>(base_)();
  }
  ::alarm(0);
  const u16 zero = 0;
  asm volatile("mov %0, %%ds; mov %0, %%es" ::"r"(zero));
  for (int i = 0; i < 6; i++) ::sigaction(sigs[i], &old[i], nullptr);
  ::sigaltstack(&old_ss, nullptr);
  return out;
}

}  // namespace popek::oracle
