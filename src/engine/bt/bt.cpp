#include "engine/bt/bt.h"

#include <xbyak/xbyak.h>

#include <algorithm>
#include <chrono>
#include <cerrno>
#include <cstring>
#include <string>

#include <signal.h>
#include <ucontext.h>
#include <unistd.h>

#include "base/error.h"
#include "engine/bt/block.h"
#include "engine/bt/code_cache.h"
#include "engine/bt/lockstep.h"
#include "engine/bt/translator.h"
#include "x86/disasm.h"

namespace popek::engine {

using namespace popek::x86;
using namespace popek::engine::bt;

namespace {

// Tiered translation: a block entry runs in the interpreter this many times
// before it is translated (a boot runs a third of its block entries once;
// 1-5 measured alike).

// The engine whose generated code runs on this thread (its direct accesses
// may fault into its slow paths).
thread_local Bt* t_running = nullptr;
struct sigaction g_old_segv;

void on_segv(int sig, siginfo_t* si, void* ctx) {
  auto* uc = static_cast<ucontext_t*>(ctx);
  if (Bt* bt = t_running) {
    if (uintptr_t to = bt->direct_fault(si->si_addr, uintptr_t(uc->uc_mcontext.gregs[REG_RIP]))) {
      uc->uc_mcontext.gregs[REG_RIP] = greg_t(to);
      return;
    }
  }
  // A host write (a device's DMA, told afterwards) to a code page protected
  // from the generated code's direct stores: writable again, the write goes on.
  if (si->si_code == SEGV_ACCERR && mem::PhysMem::host_write_fault(si->si_addr)) return;
  // Not a direct access: whoever handled SIGSEGV before (a sanitizer), else
  // the default action when the instruction faults again.
  if ((g_old_segv.sa_flags & SA_SIGINFO) && g_old_segv.sa_sigaction) {
    g_old_segv.sa_sigaction(sig, si, ctx);
  } else if (g_old_segv.sa_handler != SIG_DFL && g_old_segv.sa_handler != SIG_IGN) {
    g_old_segv.sa_handler(sig);
  } else {
    signal(SIGSEGV, SIG_DFL);
  }
}

void install_segv_handler() {
  static const bool done = [] {
    struct sigaction sa {};
    sa.sa_sigaction = on_segv;
    sa.sa_flags = SA_SIGINFO;
    sigemptyset(&sa.sa_mask);
    if (sigaction(SIGSEGV, &sa, &g_old_segv) != 0)
      throw Error(std::string("bt: cannot install the SIGSEGV handler: ") + std::strerror(errno));
    return true;
  }();
  (void)done;
}

struct Running {
  Bt* prev;
  explicit Running(Bt* b) : prev(t_running) { t_running = b; }
  ~Running() { t_running = prev; }
};

constexpr u64 kAdaptiveThreshold = 16;  // slow-path visits in a row, each within
constexpr u64 kAdaptiveWindow = 4096;    // this many guest instructions of the last
// A direct callout gets another chance at the inline path after this many
// calls (its page may have stopped being watched, e.g. code that was copied
// elsewhere; if not, it comes back after kAdaptiveThreshold slow hits).
constexpr u64 kAdaptiveRetry = 1u << 16;
// A frame-check leader whose span missed after its slow path this often,
// each within kFrameMissWindow instructions of the last:
// its block is translated again without frame checks (each miss sends the
// group's other accesses through host faults).
constexpr unsigned kFrameMissLimit = 8;
constexpr u32 kFrameMissWindow = 1u << 20;  // guest instructions between misses that count together

u64 callout_entry(Rt* rt, Site* site) { return rt->self->callout(site); }
u64 tsc_entry(Rt* rt, u32 unretired) { return rt->self->inline_tsc(unretired); }
u64 verw_entry(Rt* rt, Site* site) { return rt->self->inline_verw(site); }

// Rt::hf image of EFLAGS: the LAHF byte in bits 8..15, OF in bit 0.
u64 encode_hf(u32 eflags) { return (u64((eflags & 0xD5) | 2) << 8) | ((eflags & OF) ? 1 : 0); }
u32 merge_hf(u32 eflags, u64 hf) {
  return (eflags & ~u32(ARITH)) | u32((hf >> 8) & 0xD5) | ((hf & 1) ? u32(OF) : 0u);
}

constexpr int kGprOff = int(offsetof(CpuState, gpr));
constexpr int kEflagsOff = int(offsetof(CpuState, eflags));

struct StubGen : Xbyak::CodeGenerator {
  StubGen(u8* at, size_t max) : CodeGenerator(max, at) {}
  void load_regs(bool with_eax = true) {
    using namespace Xbyak::util;
    if (with_eax) mov(eax, dword[r15 + kGprOff + 0]);
    mov(ecx, dword[r15 + kGprOff + 4]);
    mov(edx, dword[r15 + kGprOff + 8]);
    mov(ebx, dword[r15 + kGprOff + 12]);
    mov(r12d, dword[r15 + kGprOff + 16]);
    mov(ebp, dword[r15 + kGprOff + 20]);
    mov(esi, dword[r15 + kGprOff + 24]);
    mov(edi, dword[r15 + kGprOff + 28]);
  }
  void store_regs() {
    using namespace Xbyak::util;
    mov(dword[r15 + kGprOff + 0], eax);
    mov(dword[r15 + kGprOff + 4], ecx);
    mov(dword[r15 + kGprOff + 8], edx);
    mov(dword[r15 + kGprOff + 12], ebx);
    mov(dword[r15 + kGprOff + 16], r12d);
    mov(dword[r15 + kGprOff + 20], ebp);
    mov(dword[r15 + kGprOff + 24], esi);
    mov(dword[r15 + kGprOff + 28], edi);
  }
};

}  // namespace

namespace bt {
const char* group_name(unsigned g) {
  static const char* const names[] = {"mov", "alu", "shift", "muldiv", "bit", "stack",
                                      "branch", "string", "x87", "system", "other", "mmx"};
  return g < G_COUNT ? names[g] : "?";
}

Group group_of(const Insn& i) {
  static Group table[kOpCount];
  static bool init = false;
  if (!init) {
    for (unsigned k = 0; k < kOpCount; k++) {
      const OpInfo& info = op_info(Op(k));
      const std::string n = info.name ? info.name : "";
      auto starts = [&](const char* p) { return n.rfind(p, 0) == 0; };
      Group g = G_OTHER;
      if (info.attrs & FPU) g = G_X87;
      else if (info.attrs & MMX) g = G_MMX;
      else if (info.attrs & STR) g = G_STRING;
      else if (info.attrs & (SEN | PRV | IOI)) g = G_SYSTEM;
      else if (info.attrs & CT) g = G_BRANCH;
      else if (starts("PUSH") || starts("POP") || starts("LEAVE") || starts("ENTER")) g = G_STACK;
      else if (starts("MOV") || starts("LEA") || starts("XCHG") || starts("CMOV") ||
               starts("BSWAP") || starts("CBW") || starts("CWD") || starts("LAHF") ||
               starts("SAHF") || starts("XLAT"))
        g = G_MOV;
      else if (starts("ROL") || starts("ROR") || starts("RCL") || starts("RCR") ||
               starts("SHL") || starts("SHR") || starts("SAL") || starts("SAR"))
        g = G_SHIFT;
      else if (starts("MUL") || starts("IMUL") || starts("DIV") || starts("IDIV") ||
               starts("AAM") || starts("AAD"))
        g = G_MULDIV;
      else if (starts("BT") || starts("BSF") || starts("BSR") || starts("SETCC")) g = G_BIT;
      else if (starts("ADD") || starts("OR") || starts("ADC") || starts("SBB") ||
               starts("AND") || starts("SUB") || starts("XOR") || starts("CMP") ||
               starts("TEST") || starts("INC") || starts("DEC") || starts("NEG") ||
               starts("NOT") || starts("XADD") || starts("DAA") || starts("DAS") ||
               starts("AAA") || starts("AAS") || starts("CLC") || starts("STC") ||
               starts("CMC"))
        g = G_ALU;
      table[k] = g;
    }
    init = true;
  }
  return table[unsigned(i.op)];
}
}  // namespace bt

const char* bt_groups_help() {
  return "mov, alu, shift, muldiv, bit, stack, branch, string, x87, system, other, mmx, all";
}

Bt::Bt(CpuState& s, mem::PhysMem& pm, Platform& plat, const BtOptions& opt, bool early_faults)
    : s_(s), pm_(pm),
      lockstep_(opt.lockstep ? std::make_unique<Lockstep>(s, pm, plat) : nullptr),
      mmu_(s, pm), cpu_(s, mmu_, lockstep_ ? lockstep_->recorder() : plat),
      step_(s, pm, mmu_, cpu_), opt_(opt), jc_(size_t(1) << kJcBits), dc_(size_t(1) << kJcBits) {
  if (!__builtin_cpu_supports("bmi2"))
    throw Error("the bt engine needs a host CPU with BMI2 (Intel Haswell, AMD Excavator or "
                "later); use --engine interp");
  if (opt_.block_insns == 0) throw Error("bt: block size must be at least 1 instruction");
  step_.set_early_faults(early_faults);
  // Instruction groups left to the interpreter.
  std::string g = opt_.interp_groups;
  size_t pos = 0;
  while (pos < g.size()) {
    size_t c = g.find(',', pos);
    std::string name = g.substr(pos, c == std::string::npos ? std::string::npos : c - pos);
    pos = c == std::string::npos ? g.size() : c + 1;
    if (name.empty()) continue;
    if (name == "all") {
      opt_.translate = false;
      continue;
    }
    unsigned k = 0;
    while (k < G_COUNT && name != group_name(k)) k++;
    if (k == G_COUNT)
      throw Error("bt: unknown instruction group '" + name + "' (known: " + bt_groups_help() + ")");
    interp_group_mask_ |= 1u << k;
  }
  static_assert(sizeof(Rt) <= mem::Mmu::kEngineArea, "Rt must fit the MMU's engine area");
  rt_ = new (mmu_.engine_area()) Rt();
  rt_->callout = &callout_entry;
  rt_->tsc = &tsc_entry;
  rt_->verw = &verw_entry;
  rt_->self = this;
  asm volatile("fnstcw %0" : "=m"(rt_->x87_host_cw));
  rt_->jc = jc_.data();
  // (With fastmem only: the mode key then tells paging on from off.)
  if (opt_.user_window && opt_.fastmem) {
    mmu_.enable_user_window();
    mmu_.set_window_cap(size_t(opt_.user_window_cap));
    uwin_ = true;
  }
  sync_direct_base();
  if (opt_.tiered) {
    if (opt_.cold_visits < 1 || opt_.cold_visits > 15)
      throw Error("bt: --bt-cold-visits must be 1 to 15 (--bt-no-tiered translates at the first visit)");
    seen_.assign(kSeenSize, 0);
  }
  if (opt_.fastmem || uwin_) install_segv_handler();
  const intptr_t tlb_off =
      reinterpret_cast<const char*>(mmu_.tlb(false)) - reinterpret_cast<const char*>(rt_);
  if (tlb_off < INT32_MIN + (1 << 16) || tlb_off > INT32_MAX - (1 << 16))
    throw Error("bt: internal error: TLB too far from the runtime block");
  cache_ = std::make_unique<CodeCache>(opt_.code_cache_mb << 20);
  tr_ = std::make_unique<Translator>(*this, *cache_, i32(tlb_off));
  emit_stubs();
  for (auto& e : jc_) e = JcEntry{0xFFFFFFFFu, 0xFFFFFFFFu, nullptr};
  jc_meta_.resize(jc_.size());
  htab_.assign(size_t(1) << 16, Bucket{});
  jc_pages_.resize(65536 / 64);
  flush_jc();
  mmu_.set_listener(this);
  pm_.add_watcher(this);
  if (opt_.perf_map) {
    const std::string path = "/tmp/perf-" + std::to_string(getpid()) + ".map";
    perf_map_ = std::fopen(path.c_str(), "w");
    if (!perf_map_) throw Error("bt: cannot write " + path + ": " + std::strerror(errno));
    std::fprintf(perf_map_, "%llx %zx bt_stubs\n", (unsigned long long)(uintptr_t)enter_,
                 cache_->used());
  }
  if (lockstep_) lockstep_->set_real_stats(&step_.stats());
}

Bt::~Bt() {
  try {
    pm_.set_code_write_protect(false);
  } catch (const Error&) {
    // RAM stays as it is: nothing of this engine runs on it any more.
  }
  pm_.remove_watcher(this);
  if (perf_map_) std::fclose(perf_map_);
}

void Bt::lockstep_resync() {
  // The state was set from outside: neither TLB may keep what it held.
  mmu_.flush_tlb(true);
  if (lockstep_) lockstep_->resync();
}

void Bt::switch_in() {
  mmu_.flush_tlb(true);
  if (lockstep_) lockstep_->adopt();
}

void Bt::switch_out() {
  if (pm_.code_write_protect()) {
    pm_.set_code_write_protect(false);
    st_.write_protect_switches++;
  }
}

void Bt::set_trace(std::FILE* out) {
  Engine::set_trace(out);
  step_.set_trace(out);
}

void Bt::emit_stubs() {
  using namespace Xbyak::util;
  StubGen g(cache_->cursor(), 4096);
  // enter(CpuState*, Rt*, code)
  const u8* enter = g.getCurr();
  g.push(rbx); g.push(rbp); g.push(r12); g.push(r13); g.push(r14); g.push(r15);
  // The slot above the entry RSP holds a value no return-stack frame's
  // (mode << 32 | EIP) can equal: a RET compares its target with it.
  g.sub(rsp, 24);
  g.mov(qword[rsp + 8], -1);
  g.mov(r15, rdi);
  g.mov(r14, rsi);
  g.mov(qword[r14 + int(offsetof(Rt, entry_rsp))], rsp);
  g.lea(r11, ptr[rsp - kRasBytes]);
  g.mov(qword[r14 + int(offsetof(Rt, ras_floor))], r11);
  g.mov(r13, qword[r14 + int(offsetof(Rt, direct_base))]);
  g.mov(r11, rdx);
  g.load_regs();
  g.jmp(r11);
  // exit_common: guest registers in host registers, flags in Rt::hf.
  g.align(16);
  const u8* exit_common = g.getCurr();
  g.store_regs();
  g.movzx(eax, byte[r14 + int(offsetof(Rt, hf)) + 1]);
  g.and_(eax, 0xD5);
  Xbyak::Label no_of, nostore;
  g.test(byte[r14 + int(offsetof(Rt, hf))], 1);
  g.jz(no_of);
  g.or_(eax, u32(OF));
  g.L(no_of);
  g.mov(ecx, dword[r15 + kEflagsOff]);
  g.and_(ecx, ~u32(ARITH));
  g.or_(ecx, eax);
  g.mov(dword[r15 + kEflagsOff], ecx);
  // exit_nostore: CpuState is already complete.
  g.L(nostore);
  const u8* exit_nostore = g.getCurr();
  g.mov(rax, qword[r14 + int(offsetof(Rt, reason))]);
  g.mov(rsp, qword[r14 + int(offsetof(Rt, entry_rsp))]);  // (return-stack frames dropped)
  g.add(rsp, 24);
  g.pop(r15); g.pop(r14); g.pop(r13); g.pop(r12); g.pop(rbp); g.pop(rbx);
  g.ret();
  // callout: r8 = Site*, called from a block (return address on the stack).
  g.align(16);
  const u8* callout = g.getCurr();
  g.mov(r11, rax);
  g.lahf();
  g.seto(al);
  g.mov(word[r14 + int(offsetof(Rt, hf))], ax);
  g.mov(rax, r11);
  // callout_nosave: the same where the host flags are not the guest's (Rt::hf is).
  const u8* callout_nosave = g.getCurr();
  g.lea(r11, ptr[rsp + 8]);
  g.mov(qword[r14 + int(offsetof(Rt, block_rsp))], r11);
  g.store_regs();
  g.mov(rdi, r14);
  g.mov(rsi, r8);
  g.sub(rsp, 8);
  g.call(qword[r14 + int(offsetof(Rt, callout))]);
  g.add(rsp, 8);
  g.mov(r13, qword[r14 + int(offsetof(Rt, direct_base))]);  // (a CR0 write may have turned paging on or off)
  // Returns 0: back into the block; 1: leave it; else the code of the block
  // to go on with (after a transfer or a change of mode the callout found).
  Xbyak::Label leave, go_on;
  g.cmp(rax, 1);
  g.je(leave);
  g.ja(go_on);
  g.load_regs(false);
  g.mov(ax, word[r14 + int(offsetof(Rt, hf))]);
  g.add(al, 0x7F);
  g.sahf();
  g.mov(eax, dword[r15 + kGprOff]);
  g.ret();
  g.L(go_on);
  g.mov(qword[r14 + int(offsetof(Rt, arg))], rax);
  g.load_regs();
  g.add(rsp, 8);  // the block's return address
  g.jmp(qword[r14 + int(offsetof(Rt, arg))]);  // flags are parked: a block starts so
  g.L(leave);
  g.add(rsp, 8);  // the block's return address
  g.jmp(nostore, Xbyak::CodeGenerator::T_NEAR);

  // tsc: called from a block (r8d = its instructions not yet retired);
  // keeps the guest registers the C++ call may clobber (ECX, ESI, EDI; EAX
  // and EDX are the result). The host flags are clobbered: the block parks
  // the guest's first.
  g.align(16);
  const u8* tsc = g.getCurr();
  g.push(rcx);
  g.push(rsi);
  g.push(rdi);
  g.mov(rdi, r14);
  g.mov(esi, r8d);
  g.call(qword[r14 + int(offsetof(Rt, tsc))]);
  g.pop(rdi);
  g.pop(rsi);
  g.pop(rcx);
  g.rorx(rdx, rax, 32);
  g.mov(edx, edx);
  g.mov(eax, eax);
  g.ret();

  // verw: called from a block (r8 = the VERW's Site): r9d = Rt::verw's answer;
  // keeps the guest registers the C++ call may clobber. Flags clobbered.
  g.align(16);
  const u8* verw = g.getCurr();
  g.push(rax);
  g.push(rcx);
  g.push(rdx);
  g.push(rsi);
  g.push(rdi);
  g.mov(rdi, r14);
  g.mov(rsi, r8);
  g.call(qword[r14 + int(offsetof(Rt, verw))]);
  g.mov(r9d, eax);
  g.pop(rdi);
  g.pop(rsi);
  g.pop(rdx);
  g.pop(rcx);
  g.pop(rax);
  g.ret();

  enter_ = reinterpret_cast<EnterFn>(const_cast<u8*>(cache_->to_rx(enter)));
  exit_common_ = cache_->to_rx(exit_common);
  exit_nostore_ = cache_->to_rx(exit_nostore);
  callout_stub_ = cache_->to_rx(callout);
  cache_->advance(g.getSize());
  cache_->set_reserved();
  tr_->set_stubs(Stubs{exit_common_, exit_nostore_, callout_stub_, cache_->to_rx(callout_nosave),
                       cache_->to_rx(tsc), cache_->to_rx(verw)});
}

// A segment the generated code may access without limit checks: limit 4 GiB,
// present, writable expand-up data (P, S, W set; code and expand-down clear).
static u32 flat_rw(const Segment& sg) {
  constexpr u16 kMask = 0x80 | 0x10 | 0x8 | 0x4 | 0x2, kFlat = 0x80 | 0x10 | 0x2;
  return u32(sg.limit == 0xFFFFFFFFu) & u32((sg.attr & kMask) == kFlat);
}

static u32 jc_slot(u32 eip) { return ((eip >> 12) ^ eip) & ((1u << kJcBits) - 1); }

u32 Bt::mode_key() const {
  // Called at every dispatch and many callouts. Branch-free: segment
  // registers alternate between flat and not on every system call (FS),
  // which a branch per segment mispredicts.
  u32 m = (s_.cpl & M_CPL) | (s_.seg[CS].limit == 0xFFFFFFFFu ? u32(M_CS_FLAT) : 0u) |
          (s_.seg[SS].db() ? u32(M_SS32) : 0u) | ((s_.eflags & DF) ? u32(M_DF) : 0u);
  auto seg = [&](unsigned k) {
    const Segment& sg = s_.seg[k];
    const u32 flat = flat_rw(sg);
    const u32 base0 = flat & u32(sg.base == 0);
    return (flat << (4 + 2 * k)) | (base0 << (5 + 2 * k));
  };
  static_assert(m_flat(DS) == 1u << (4 + 2 * DS) && m_base0(DS) == 1u << (5 + 2 * DS));
  // Not GS: the generated code reads Rt::gs_slow instead (sync_gs).
  const u32 nopg = u32(opt_.fastmem) & ~(s_.cr0 >> 31);
  const u32 uwin = s_.cpl == 3 && !nopg && mmu_.window_active() ? u32(M_UWIN) : 0u;
  return m | seg(ES) | seg(SS) | seg(DS) | seg(FS) | (nopg * M_NOPG) | uwin;
}

// The user window goes to an address space that has run
// BtOptions::user_window_claim instructions at CPL 3 without it (counted per CR3 in a few slots): a
// process that lives long enough to pay for its pages' host mappings, not
// each short one of a fork and exec (mem::Mmu: "the user window"). A space
// that gave the window up for churn waits 2^kStrikeShift times longer for
// each time it did (strikes), so a working set the window cannot hold does
// not pay for refilling it again and again.
Bt::SpaceUse* Bt::space_slot(u32 cr3) {
  SpaceUse* slot = nullptr;
  for (SpaceUse& u : space_use_) {
    if (u.cr3 == cr3) return &u;
    // Replaced: the least used slot, one without strikes if there is one.
    if (!slot || (u.strikes == 0 && slot->strikes != 0) ||
        ((u.strikes == 0) == (slot->strikes == 0) && u.insns < slot->insns))
      slot = &u;
  }
  *slot = SpaceUse{cr3, 0, 0};
  return slot;
}

void Bt::note_user_run(u64 n) {
  SpaceUse* slot = space_slot(s_.cr3 & ~0xFFFu);
  slot->insns += n;
  // (Even where the window is claimed at once, a space with strikes waits.)
  const u64 wait = slot->strikes ? std::max<u64>(opt_.user_window_claim, kStrikeBase)
                                       << std::min(slot->strikes * kStrikeShift, 30u)
                                 : opt_.user_window_claim;
  if (slot->insns >= wait) {
    slot->insns = 0;
    mmu_.claim_window();
  }
}

// The owner gives the window up when its flushes keep changing the
// window's pages (fork's copy-on-write makes every writable page read-only,
// and each is mapped again at its next write: a signal and two host calls),
// or when its working set is larger than the window (each clear at the cap
// throws its pages out, and each comes back through a fault): kWindowChurn
// pages changed or thrown out within fewer than kWindowChurnInsns of its
// instructions. It may claim it again later (note_user_run counts anew).
void Bt::note_window_run(u64 n) {
  uwin_insns_ += n;
  const mem::MmuStats& m = mmu_.stats();
  const u64 churn = m.window_churn + m.window_evicted;
  if (churn - uwin_churn_mark_ < kWindowChurn) return;
  if (uwin_insns_ < kWindowChurnInsns) {
    // (The window is active: the owner's space is the one loaded.)
    SpaceUse* slot = space_slot(s_.cr3 & ~0xFFFu);
    slot->strikes++;
    slot->insns = 0;
    st_.window_strikes++;
    mmu_.release_window();
  }
  uwin_churn_mark_ = churn;
  uwin_insns_ = 0;
}

void Bt::sync_direct_base() {
  rt_->direct_base = reinterpret_cast<u8*>(
      (uwin_ && (s_.cr0 & CR0_PG) ? mmu_.user_window_base() : reinterpret_cast<uintptr_t>(pm_.ram())) + kR13Bias);
}

uintptr_t Bt::direct_fault(const void* addr, uintptr_t pc) {
  const bool window = mmu_.in_user_window(addr);
  if ((!window && !pm_.in_direct_span(addr)) || direct_faults_.empty()) return 0;
  auto it = direct_faults_.upper_bound(pc);
  if (it == direct_faults_.begin()) return 0;
  --it;
  if (pc >= it->second.end) return 0;
  st_.direct_faults++;
  // An address that wrapped past 4 GiB (base + displacement) faults each time.
  fault_wrapped_ = reinterpret_cast<uintptr_t>(addr) >=
                   (window ? mmu_.user_window_base() : reinterpret_cast<uintptr_t>(pm_.ram())) + (u64(1) << 32);
  return it->second.slow;
}

void Bt::sync_gs() { rt_->gs_slow = !flat_rw(s_.seg[GS]); }

bool Bt::translatable() const {
  return opt_.translate && s_.pe() && !s_.vm86() && s_.seg[CS].db() && !(s_.eflags & TF) &&
         !s_.intr_shadow;
}

void Bt::flush_jc() {
  for (auto& list : jc_filled_) {
    for (u32 k : list) {
      jc_[k] = JcEntry{0xFFFFFFFFu, 0xFFFFFFFFu, nullptr};
      jc_meta_[k] = JcMeta{};
    }
    list.clear();
  }
  std::fill(jc_pages_.begin(), jc_pages_.end(), 0);
  st_.jc_flushes++;
}

void Bt::jc_fill(u32 k, u32 eip, u32 mode, Block* b, bool global) {
  // Listed by whether the page is global (a CR3 load looks at the others
  // only); an entry refilled with the other kind joins that list too, and
  // the old list forgets it when it next looks.
  if (!jc_[k].code || jc_meta_[k].global != global) jc_filled_[global].push_back(k);
  jc_[k] = JcEntry{eip, mode, b->code};
  jc_meta_[k] = JcMeta{b, eip >> 12, global};
  const u32 bit = jc_page_bit(eip >> 12);
  jc_pages_[bit >> 6] |= u64(1) << (bit & 63);
  st_.jc_fills++;
}

template <typename Drop>
void Bt::jc_drop_if(Drop drop, bool nonglobal_only) {
  for (unsigned g = 0; g < (nonglobal_only ? 1u : 2u); g++) {
    std::vector<u32>& list = jc_filled_[g];
    size_t n = 0;
    for (u32 k : list) {
      if (!jc_[k].code || jc_meta_[k].global != bool(g)) continue;  // not this list's any more
      if (drop(jc_meta_[k])) {
        jc_[k] = JcEntry{0xFFFFFFFFu, 0xFFFFFFFFu, nullptr};
        jc_meta_[k] = JcMeta{};
        st_.jc_drops++;
      } else {
        list[n++] = k;
      }
    }
    list.resize(n);
  }
}

void Bt::tlb_flushed(bool global) {
  if (global) {
    flush_jc();
    return;
  }
  // A CR3 load: entries on global pages stay, as their TLB entries do.
  jc_drop_if([](const JcMeta&) { return true; }, true);
}

void Bt::tlb_invlpg(u32 la) {
  const u32 page = la >> 12;
  const u32 bit = jc_page_bit(page);
  if (!(jc_pages_[bit >> 6] & (u64(1) << (bit & 63)))) return;
  jc_drop_if([page](const JcMeta& m) { return m.page == page; });
}

void Bt::flush_cache() {
  for (auto& d : dc_) d = DcEntry{};
  arena_.reset();
  std::fill(htab_.begin(), htab_.end(), Bucket{});
  hcount_ = 0;
  by_page_.clear();
  cache_->reset();
  direct_faults_.clear();
  flush_jc();
  st_.cache_flushes++;
}

Block* Bt::lookup(u64 pa, u32 cs_base, u32 eip, u32 mode) {
  st_.block_lookups++;
  const u64 key = pa | (u64(mode) << 32);
  // The bucket holds its first block's key: most lookups read no Block
  // (those are scattered over the heap; walking them missed the host's caches).
  const Bucket& bk = htab_[hash_slot(key, eip)];
  if (bk.head && bk.key == key && bk.eip == eip && bk.cs_base == cs_base) return bk.head;
  for (Block* b = bk.head ? bk.head->hnext : nullptr; b; b = b->hnext)
    if (b->key == key && b->cs_base == cs_base && b->eip == eip) return b;  // EIPs are baked into the code
  st_.block_lookup_misses++;
  return nullptr;
}

size_t Bt::hash_slot(u64 key, u32 eip) const {
  u64 h = (key ^ (u64(eip) << 20)) * 0x9E3779B97F4A7C15ull;
  return size_t(h >> 32) & (htab_.size() - 1);
}

void Bt::Bucket::set_head(Block* b) {
  head = b;
  if (b) {
    key = b->key;
    eip = b->eip;
    cs_base = b->cs_base;
  }
}

void Bt::hash_insert(Block* b) {
  if (hcount_ >= htab_.size()) {
    // Grow: twice the buckets, chains rebuilt.
    big_vector<Bucket> old(htab_.size() * 2);
    old.swap(htab_);
    for (const Bucket& o : old)
      for (Block* x = o.head; x;) {
        Block* next = x->hnext;
        Bucket& nb = htab_[hash_slot(x->key, x->eip)];
        x->hnext = nb.head;
        nb.set_head(x);
        x = next;
      }
  }
  Bucket& bk = htab_[hash_slot(b->key, b->eip)];
  b->hnext = bk.head;
  bk.set_head(b);
  hcount_++;
}

void Bt::hash_remove(Block* b) {
  Bucket& bk = htab_[hash_slot(b->key, b->eip)];
  if (bk.head == b) {
    bk.set_head(b->hnext);
    b->hnext = nullptr;
    hcount_--;
    return;
  }
  for (Block** p = bk.head ? &bk.head->hnext : nullptr; p && *p; p = &(*p)->hnext)
    if (*p == b) {
      *p = b->hnext;
      b->hnext = nullptr;
      hcount_--;
      return;
    }
}

Block* Bt::translate(u32 eip, u64 pa, u32 mode) {
  const mem::PhysMem::Page pg = pm_.page(pa & ~u64(0xFFF));
  if (!pg.host) return nullptr;
  auto t0 = std::chrono::steady_clock::now();
  // A full cache is flushed before the block is made: the flush frees
  // every block and site.
  if (cache_->free_bytes() < Translator::kMaxBlockCode) flush_cache();
  Block* b = new (arena_.alloc(sizeof(Block))) Block();
  b->pa = pa;
  b->key = pa | (u64(mode) << 32);
  b->cs_base = s_.seg[CS].base;
  b->mode = mode;
  b->eip = eip;
  // A first instruction that continues on the next page: its bytes come from
  // that page as mapped now (the fetch faults as the CPU's would).
  const u8* page2 = nullptr;
  const u32 off = u32(pa & 0xFFF);
  if (off > 4096 - 15) {
    Insn probe;
    if (decode(pg.host + off, 4096 - off, true, &probe) == DecodeStatus::need_more) {
      u64 pa2;
      page2 = mmu_.fetch(b->second_page_la(), s_.cpl == 3, &pa2);
      b->pa2 = pa2 & ~u64(0xFFF);
      if (page2) page2 -= pa2 & 0xFFF;
    }
  }
  if (!tr_->translate(*b, pg.host, opt_.block_insns, page2))
    throw Error("bt: internal error: the code cache filled up during a translation");
  st_.translate_ns += u64(std::chrono::duration_cast<std::chrono::nanoseconds>(
                              std::chrono::steady_clock::now() - t0).count());
  // n == 0: the first instruction cannot be translated here (it crosses the
  // page, or does not decode). The empty block is kept so that the next visit
  // goes straight to the interpreter instead of trying again.
  if (b->n > 0) st_.blocks_translated++;
  else st_.untranslatable++;
  if (trace_) {
    std::fprintf(trace_, "bt: translated %04x:%08x (pa %#llx) %u insns, %u bytes -> %u host bytes\n",
                 s_.seg[CS].sel, eip, (unsigned long long)pa, b->n, b->guest_bytes, b->code_size);
    for (unsigned off = 0, len = 0; off < b->code_size; off += len) {
      const std::string t = disassemble_host(b->code + off, b->code_size - off,
                                             u64(uintptr_t(b->code + off)), &len);
      std::fprintf(trace_, "bt:   %5x  %s\n", off, t.c_str());
    }
  }
  if (perf_map_ && b->n)
    std::fprintf(perf_map_, "%llx %x guest_%08x_cpl%u\n", (unsigned long long)(uintptr_t)b->code,
                 b->code_size, eip, mode & M_CPL);
  const u64 ppn = pa >> mem::kPageShift;
  pm_.mark_code(ppn);
  Block* p = b;
  hash_insert(p);
  by_page_[ppn].push_back(p);
  if (p->crosses) {
    pm_.mark_code(p->pa2 >> mem::kPageShift);
    by_page_[p->pa2 >> mem::kPageShift].push_back(p);
  }
  return p;
}

void Bt::patch_chain(Block* from, unsigned k, Block* to) {
  Block::Link& l = from->links[k];
  u8* slot = cache_->to_rw(from->code + l.slot);
  const i32 rel = to ? i32(to->code - (from->code + l.slot + 5)) : 0;
  std::memcpy(slot + 1, &rel, 4);
  if (l.jcc) {
    // The Jcc to the slot goes to the successor directly (back to the slot
    // when undone).
    const u8* target = to ? to->code : from->code + l.slot;
    const i32 jrel = i32(target - (from->code + l.jcc + 4));
    std::memcpy(cache_->to_rw(from->code + l.jcc), &jrel, 4);
  }
  l.to = to;
  if (to) {
    l.next_from = to->in_from;
    l.next_k = to->in_k;
    to->in_from = from;
    to->in_k = u8(k);
    st_.chains_patched++;
  }
}

void Bt::unlink(Block* b) {
  // (A link is patched only while unpatched, and unpatched only here: each
  // is on one list at most.)
  Block* from = b->in_from;
  unsigned k = b->in_k;
  while (from) {
    Block::Link& l = from->links[k];
    Block* const next = l.next_from;
    const unsigned next_k = l.next_k;
    l.next_from = nullptr;
    l.next_k = 0;
    if (l.to == b) {
      patch_chain(from, k, nullptr);
      st_.chains_undone++;
    }
    from = next;
    k = next_k;
  }
  b->in_from = nullptr;
  b->in_k = 0;
}

void Bt::invalidate(Block* b) {
  if (!b->valid) return;
  b->valid = false;
  st_.blocks_invalidated++;
  unlink(b);
  hash_remove(b);
}

void Bt::code_page_written(u64 ppn) {
  auto it = by_page_.find(ppn);
  if (it == by_page_.end()) return;
  for (Block* b : it->second) invalidate(b);
  by_page_.erase(it);
  jc_drop_if([](const JcMeta& m) { return !m.block->valid; });
}

u64 Bt::inline_verw(const Site* site) {
  st_.inline_verw++;
  try {
    // (An absolute operand: its address needs no guest register.)
    return x86::verify_segment(cpu_, cpu_.read_rm<u16>(site->insn), true) ? 1 : 0;
  } catch (const Fault&) {
    return 2;  // the slow path takes the fault as the instruction's
  }
}

u64 Bt::inline_tsc(u32 unretired) {
  st_.inline_tsc++;
  set_icount(unretired);
  return cpu_.plat.tsc() + s_.msr.tsc_offset;
}

Site* Bt::site_from_seed(SiteSeed& seed) {
  Site* s = new_site();
  const Block* b = seed.block;
  s->insn = seed.insn;
  s->fn = handler_for(seed.insn);
  s->early = early_check_for(seed.insn);
  s->block = seed.block;
  // (A block's instructions lie in one physical page, from b->pa on.)
  s->pa = b->pa + (seed.eip - b->eip);
  s->eip = seed.eip;
  s->idx = seed.idx;
  s->group = u8(group_of(seed.insn));
  s->slow_path = true;
  s->mode_check = seed.bits & SiteSeed::kModeCheck;
  s->addr = Site::Addr(seed.addr);
  s->seg = seed.seg;
  s->size = seed.size;
  s->write = seed.bits & SiteSeed::kWrite;
  s->phys = seed.bits & SiteSeed::kPhys;
  s->window = seed.bits & SiteSeed::kWindow;
  s->has_memo = seed.bits & SiteSeed::kHasMemo;
  s->memo = seed.memo;
  seed.site = s;
  st_.seeds_run++;
  return s;
}

u64 Bt::callout(Site* site) {
  site = site_of(site);
  st_.callouts++;
  st_.callouts_by_group[site->group]++;
  st_.callouts_by_op[unsigned(site->insn.op)]++;
  if (site->direct) st_.adaptive_direct_calls++;
  Block* b = site->block;
  s_.eflags = merge_hf(s_.eflags, rt_->hf);
  s_.eip = site->eip;
  set_icount(b->n - site->idx);
  bool exit = site->ends;
  cpu_.stop = StopReason::none;
  // Where the inline access would have gone (for the adaptive policy).
  u32 la = 0;
  if (site->slow_path) {
    st_.callouts_slow_mem++;
    site->hits++;
    switch (site->addr) {
      case Site::A_EA: la = cpu_.ea(site->insn); break;
      case Site::A_PUSH: la = s_.gpr[ESP] - 4; break;
      case Site::A_POP: la = s_.gpr[ESP]; break;
      case Site::A_MOFFS: la = site->insn.imm; break;
      case Site::A_ESI: la = s_.gpr[ESI]; break;
      case Site::A_EDI: la = s_.gpr[EDI]; break;
      case Site::A_EBP: la = s_.gpr[EBP]; break;
    }
    la += s_.seg[site->seg].base;
  }
  // Whether this slow path came from a direct access that wrapped (set by the
  // fault handler; consumed here whatever the callout decides).
  const bool wrapped = std::exchange(fault_wrapped_, false);
  // INVLPG of a page the block's code is not on may go on in the block (the
  // jump cache and the TLB follow it by themselves; see below).
  u32 inv_page = 1;  // not a page address
  if (site->insn.op == Op::INVLPG) inv_page = (cpu_.ea(site->insn) + s_.seg[site->insn.seg].base) & ~0xFFFu;
  bool faulted = false;  // an exception was delivered: the handler's code is next
  try {
    // A REP the generated code took to a yield point stops there, as the
    // semantics would have.
    if (site->rep_resume && rep_yield_point(s_.gpr[ECX])) {
      exit = true;
      s_.icount++;  // the generated code's chunk was the execution that yields
    } else if (!step_.execute(site->insn, site->fn, site->early)) {
      exit = true;  // a fault its early check found, delivered (as the catch below would)
      faulted = true;
    }
  } catch (const Fault& f) {
    exit = true;
    faulted = true;
    try {
      step_.take_fault(f);
    } catch (...) {
      pending_error_ = std::current_exception();
    }
  } catch (const Unimplemented& u) {
    exit = true;
    try {
      step_.take_unimplemented(u);
    } catch (...) {
      pending_error_ = std::current_exception();
    }
  } catch (...) {
    exit = true;
    pending_error_ = std::current_exception();
  }
  if (cpu_.stop != StopReason::none) exit = true;
  // A frame-check group's leader (Translator: frames_) that took its slow
  // path: the group's span for the accesses after it, or, when the span is
  // not on one page the TLB maps, the block ends after it. A block whose
  // span keeps failing is translated again without frame checks.
  if (site->frame_lead && !exit) {
    const u32 la = s_.gpr[site->frame_base] + u32(site->frame_lo);
    u64& addend = rt_->frame_addend[bt::frame_slot(site->frame_base)];
    if (const u8* h = mmu_.direct(la, site->frame_span, site->frame_write, s_.cpl == 3)) {
      addend = u64(reinterpret_cast<uintptr_t>(h)) - la;
    } else {
      // The block is left here (its followers would each take a host fault,
      // microseconds): the dispatcher goes on at the next instruction, in a
      // block whose own leader checks what is left of the span. The poison
      // (the inaccessible rest of PhysMem::kDirectSpan) only guards that.
      addend = u64(reinterpret_cast<uintptr_t>(pm_.ram())) + (u64(1) << 32);
      exit = true;
      st_.frame_misses++;
      // (Misses far apart — a stack that now and then straddles a page —
      // start the count afresh.)
      if (u32(s_.icount) - site->frame_miss_at > kFrameMissWindow) site->frame_misses = 0;
      site->frame_miss_at = u32(s_.icount);
      if (++site->frame_misses >= kFrameMissLimit) {
        no_frames_.insert(b->pa);
        invalidate(b);
        st_.frame_retranslations++;
      }
    }
  }
  // A user-window access that faulted although the TLB may hold its page
  // (the window dropped it at its cap): the window maps what the TLB holds
  // now, or every later access to the page would fault again.
  if (site->window && site->slow_path) mmu_.window_touch(la, site->size);
  if (site->insn.op == Op::MOV_SwEw && !exit && s_.cpl == 0) remember_seg_load(site->insn.reg);
  if (site->mode_check || site->ends || faulted) sync_gs();
  // Whether the block may be left for the next one directly: a transfer or a
  // change of mode that completed (an exception's delivery too), nothing else.
  bool go_on = !exit || site->ends || (faulted && opt_.fault_continue);
  // An instruction that did not finish (a REP yields in chunks, even from a
  // slow path) or that transferred control (not a slow path: those resume in
  // the block, indirect transfers included) continues from the dispatcher.
  if (s_.eip == site->eip) {
    exit = true;
    go_on = false;
  }
  if (s_.eip != site->eip + site->insn.len && !site->slow_path) exit = true;
  // Anything that changed what the translation assumed (a segment loaded by
  // LDS/LES/..., CPL, DF), flushed the TLB (the jump cache follows it), set TF
  // or an interrupt shadow, or made an interrupt deliverable ends the block.
  // An interrupt shadow (STI, MOV SS) with no interrupt request pending can
  // end here when the block goes on: only a callout can raise the request
  // during the next instruction, and the semantics clear the shadow first.
  if (s_.intr_shadow && !s_.intr_line && site->idx + 1u < b->n) s_.intr_shadow = 0;
  // (A slow path is an ordinary instruction: it changes no segment, CPL or DF.)
  // (Not with return-stack frames: a frame's code after its call chains to
  // the block at the return address as it was mapped then.)
  if (inv_page != 1 && !exit && mmu_.epoch() != entry_epoch_ && inv_page != ((b->cs_base + b->eip) & ~0xFFFu) &&
      rt_->block_rsp == rt_->entry_rsp &&
      !(b->crosses && inv_page == b->second_page_la())) {
    entry_epoch_ = mmu_.epoch();
    st_.invlpg_continues++;
  }
  if (mmu_.epoch() != entry_epoch_ || (s_.eflags & TF) || (s_.intr_shadow && !site->shadow_ok) ||
      step_.event_ready()) {
    exit = true;
    go_on = false;
  }
  if (!exit && site->mode_check && mode_key() != b->mode) exit = true;
  if (!b->valid) {
    if (!exit) st_.smc_exits++;
    exit = true;
    go_on = false;
  }
  // A memo whose misses come often: its site goes back to the plain check.
  if (site->has_memo && mmu_.memo_misses(site->memo) == 0) {
    st_.memo_batches++;
    u64& since = memo_batch_start(site->memo);
    if (!exit && s_.icount - since < kMemoWindow) {
      no_memo_.insert(site->pa);
      invalidate(b);
      st_.memo_retranslations++;
      exit = true;
    } else {
      mmu_.memo_misses(site->memo) = kMemoBatch;
      since = s_.icount;
    }
  }
  if (site->direct && !exit && ++site->hits >= kAdaptiveRetry) {
    direct_slow_.erase(site->pa);
    invalidate(b);
    st_.adaptive_retries++;
    exit = true;
  }
  // (Not a REP string instruction: its slow path already runs all of it in
  // one call, and a direct callout would only lose the inline path of the
  // many runs that would not need it — the kernel's memcpy patching its own
  // text at boot writes code pages from one REP MOVSD, and then every memcpy
  // of the next 65,536 went through callouts.)
  if (site->slow_path && !exit && opt_.adaptive && !site->insn.rep()) {
    // Would the inline lookup hit now? If not, the slow path is the normal
    // path for this instruction (MMIO, a watched page): translate it so.
    const mem::TlbEntry& e = mmu_.tlb(s_.cpl == 3)[(la >> 12) & (mem::Mmu::kTlbSize - 1)];
    const u32 last = la + site->size - 1;
    const u32 tag = site->write ? e.tag_write : e.tag_read;
    // An access across a page goes to the slow path either way: not counted.
    // Nor are misses far apart (a TLB refill now and then).
    const bool crosses = (la & 0xFFF) + site->size > 4096;
    // A direct access (paging off) stays slow where it faults again: not
    // RAM, a code page for a write, or an address that wrapped past 4 GiB.
    // (A user-window page below 64 KiB is never mapped at host 0: slow too.)
    const bool low = site->window && mmu_.user_window_zero() && la < mem::Mmu::kWindowLow;
    const bool stays_slow = site->phys ? pm_.direct_poisoned(la, site->write) || wrapped
                                       : (last - tag >= 4096 && !crosses) || low;
    if (stays_slow && s_.icount - site->last_slow > kAdaptiveWindow) site->persistent = 0;
    if (stays_slow) site->last_slow = s_.icount;
    if (stays_slow && ++site->persistent >= kAdaptiveThreshold) {
      direct_slow_.insert(site->pa);
      invalidate(b);
      st_.adaptive_retranslations++;
      exit = true;
    }
  }
  if (exit) {
    // The budget as the instructions really ran (the block's prologue counted
    // all of it; a fault retires nothing).
    rt_->budget = budget_start_ - i64(s_.icount - icount_base_);
    // Only the transfer or the change of mode ends the block: go on with the
    // next block here, as the dispatcher would, when it is at hand.
    if (go_on) {
      if (const u8* code = continue_at()) {
        if (faulted && user_run_end_ == ~u64(0)) user_run_end_ = s_.icount;
        rt_->hf = encode_hf(s_.eflags);
        sync_direct_base();
        st_.callout_continues++;
        return u64(reinterpret_cast<uintptr_t>(code));
      }
    }
    rt_->reason = kExitNormal;  // exit_nostore returns it: never a stale chain request
    st_.callout_exits++;
    return 1;
  }
  rt_->hf = encode_hf(s_.eflags);
  sync_direct_base();
  return 0;
}

// After a MOV to a data segment register at CPL 0: what the inline path of
// a later load of that selector compares and copies (see SegLoad).
void Bt::remember_seg_load(unsigned k) {
  if (k != ES && k != DS && k != FS && k != GS) return;
  const Segment& sg = s_.seg[k];
  if (sg.sel & 4) return;  // LDT
  u64 raw = 0;
  if (sg.sel & 0xFFFC) {
    const u8* d = mmu_.direct(s_.gdtr.base + (sg.sel & ~7u), 8, false, false);
    if (!d) return;
    std::memcpy(&raw, d, 8);
  }
  const u8 flat = u8(flat_rw(sg));
  SegLoad& e = rt_->seg_loads[(sg.sel >> 3) & (kSegLoads - 1)];
  e.sel = sg.sel;
  e.flat = u8(flat | (flat && sg.base == 0 ? 2 : 0));
  e.raw = raw;
  e.seg = sg;
  st_.seg_loads_cached++;
}

// The code of the block at CS:EIP in the current mode if the dispatcher would
// enter it now and it is translated, else null (the callout then leaves).
const u8* Bt::continue_at() {
  if (lockstep_ || trace_ || !opt_.chain || pending_error_ || cpu_.stop != StopReason::none ||
      stop_.load(std::memory_order_relaxed) || !translatable())
    return nullptr;
  const Segment& cs = s_.seg[CS];
  const u32 eip = s_.eip;
  if (cs.base != 0 || eip > cs.limit) return nullptr;
  u64 pa;
  if (!mmu_.fetch_hit(eip, s_.cpl == 3, &pa)) return nullptr;
  const u32 mode = mode_key();
  if (!(mode & M_CS_FLAT)) return nullptr;
  if ((mode & M_NOPG) && !pm_.code_write_protect()) return nullptr;  // the dispatcher turns it on
  // Not translated here: that could flush the cache under the caller.
  Block* b = cached_block(pa, 0, eip, mode, false);
  if (!b || b->crosses || b->n == 0) return nullptr;
  jc_note(eip, mode, b);
  return b->code;  // Rt::gs_slow: the callout synced it after anything that can change GS
}

// The block for (pa, CS base, EIP, mode) through the dispatcher's cache, else
// the hash table, else (`may_translate`) a new translation; null if none.
Block* Bt::cached_block(u64 pa, u32 cs_base, u32 eip, u32 mode, bool may_translate) {
  DcEntry& dc = dc_[jc_slot(eip)];
  if (dc.block && dc.pa == pa && dc.eip == eip && dc.mode == mode && dc.cs_base == cs_base &&
      dc.block->valid)
    return dc.block;
  Block* b = lookup(pa, cs_base, eip, mode);
  if (!b && may_translate) {
    if (opt_.tiered) {
      // Seen before? (A fingerprint of the key, in a slot chosen by it.)
      const u64 k = (pa * 0x9E3779B97F4A7C15ull) ^ (u64(mode) << 7) ^ (u64(cs_base) * 0xC2B2AE3D27D4EB4Full) ^ eip;
      const u64 fp = (k & ~u64(15)) | 16;  // never 0: a free entry is 0
      const size_t set = size_t(k >> 40) & (kSeenSize - 1) & ~size_t(1);
      u64* slot = &seen_[set];
      if ((*slot & ~u64(15)) != fp) {
        u64* other = &seen_[set + 1];
        if ((*other & ~u64(15)) == fp) slot = other;
        else {
          if ((*other & 15) < (*slot & 15)) slot = other;  // the colder one goes
          *slot = fp;
        }
      }
      if ((*slot & 15) < opt_.cold_visits) {
        ++*slot;
        cold_ = true;
        return nullptr;
      }
      *slot = 0;  // translated from now on: the entry is free
    }
    b = translate(eip, pa, mode);
  }
  if (b) dc = DcEntry{pa, eip, mode, cs_base, b};
  return b;
}

// The jump cache entry for EIP in `mode` names `b` from now on.
void Bt::jc_note(u32 eip, u32 mode, Block* b) {
  const u32 k = jc_slot(eip);
  const JcEntry& j = jc_[k];
  if (j.code != b->code || j.eip != eip || j.mode != mode)
    jc_fill(k, eip, mode, b, mmu_.exec_global(eip, s_.cpl == 3));
}

void Bt::interp_steps(u64 end, u64 max) {
  const u64 before = s_.icount;
  step_.run_insns(end, max);
  st_.interp_steps += s_.icount - before;
}

Exit Bt::run(u64 budget) {
  Exit e = run_dispatch(budget);
  if (lockstep_) lockstep_->sync_and_compare("at the end of a run");
  return e;
}

Exit Bt::run_dispatch(u64 budget) {
  const u64 end = s_.icount + budget;
  return step_.run_loop(end, [&] { return take_stop(); }, [&] {
    run_blocks(end);
    if (pending_error_) {  // an error inside a callout, carried past the generated code
      std::exception_ptr e = pending_error_;
      pending_error_ = nullptr;
      std::rethrow_exception(e);
    }
  });
}

// Runs blocks until the budget is used, the CPU stops, an event can be taken
// or a stop is requested. Faults raised here (instruction fetch) propagate.
Exit Bt::run_blocks(u64 end) {
  for (;;) {
    if (s_.icount >= end || step_.event_ready() || stop_.load(std::memory_order_relaxed))
      return Exit::budget;
    if (!translatable()) {
      interp_steps(end, 1);
      if (cpu_.stop != StopReason::none) return Exit::stopped;
      continue;
    }
    const Segment& cs = s_.seg[CS];
    const u32 eip = s_.eip;
    u64 pa;
    const u8* host = mmu_.fetch(cs.base + eip, s_.cpl == 3, &pa);
    if (!host || eip > cs.limit) {
      interp_steps(end, 1);  // raises the fault or the error the interpreter reports
      if (cpu_.stop != StopReason::none) return Exit::stopped;
      continue;
    }
    const u32 mode = mode_key();
    Block* b = cached_block(pa, cs.base, eip, mode, true);
    if (cold_) {
      // First visit: the interpreter runs this basic block.
      cold_ = false;
      st_.cold_blocks++;
      const u64 before = s_.icount;
      step_.run_block(end, opt_.block_insns);
      st_.interp_steps += s_.icount - before;
      if (cpu_.stop != StopReason::none) return Exit::stopped;
      continue;
    }
    if (b && b->crosses && b->n) {
      // Its second page must still be mapped where it was (this fetch also
      // fills the TLB entry the block checks at entry).
      u64 pa2;
      const u8* h2 = mmu_.fetch(b->second_page_la(), s_.cpl == 3, &pa2);
      if (!h2 || (pa2 & ~u64(0xFFF)) != b->pa2) {
        invalidate(b);
        continue;
      }
    }
    if (!b || b->n == 0 || (!(mode & M_CS_FLAT) && b->guest_bytes - 1 > cs.limit - eip)) {
      interp_steps(end, 1);
      if (cpu_.stop != StopReason::none) return Exit::stopped;
      continue;
    }
    const i64 remaining = i64(end - s_.icount);
    if (i64(b->n) > remaining) {
      interp_steps(end, u64(remaining));
      if (cpu_.stop != StopReason::none) return Exit::stopped;
      continue;
    }
    // Direct stores (paging off) rely on code pages being write-protected in
    // the host mapping; with paging on nothing needs it (and mprotect costs).
    if (opt_.fastmem && bool(mode & M_NOPG) != pm_.code_write_protect()) {
      pm_.set_code_write_protect(mode & M_NOPG);
      st_.write_protect_switches++;
    }
    if (opt_.chain && cs.base == 0) jc_note(eip, mode, b);
    if (lockstep_) lockstep_->before_block(eip);
    rt_->budget = remaining;
    budget_start_ = remaining;
    sync_direct_base();
    entry_epoch_ = mmu_.epoch();
    icount_base_ = s_.icount;
    user_run_end_ = ~u64(0);
    rt_->hf = encode_hf(s_.eflags);
    sync_gs();
    st_.block_entries++;
    if (trace_) std::fprintf(trace_, "bt: run %04x:%08x\n", cs.sel, eip);
    Running running(this);
    const u64 reason = enter_(&s_, rt_, b->code);
    set_icount(0);
    const u64 ran = std::min(s_.icount, user_run_end_) - icount_base_;
    if (uwin_ && (mode & (M_CPL | M_NOPG | M_UWIN)) == 3) note_user_run(ran);
    if (mode & M_UWIN) note_window_run(ran);
    if (pending_error_) return Exit::stopped;
    if (lockstep_) lockstep_->after_block();
    if (reason == kExitChain && opt_.chain) {
      st_.chain_requests++;
      static_assert(alignof(std::max_align_t) >= 8 && Block::kMaxLinks <= 8);
      Block* from = reinterpret_cast<Block*>(rt_->arg & ~u64(7));
      const unsigned k = unsigned(rt_->arg & 7);
      if (from->valid && !from->links[k].to && s_.eip == from->links[k].target_eip &&
          mode_key() == from->mode) {
        const u64 tpa = (from->pa & ~u64(0xFFF)) | (s_.eip & 0xFFF);
        Block* to = lookup(tpa, from->cs_base, s_.eip, from->mode);
        const u64 flushes = st_.cache_flushes;
        if (!to) to = translate(s_.eip, tpa, from->mode);
        if (to && to->n && st_.cache_flushes == flushes && to->valid) patch_chain(from, k, to);
      }
    }
    if (cpu_.stop != StopReason::none) return Exit::stopped;
  }
}

std::vector<std::pair<std::string, u64>> Bt::stats() const {
  const StepStats& ss = step_.stats();
  std::vector<std::pair<std::string, u64>> out = {
      {"bt.insns", s_.icount},
      {"bt.blocks_translated", st_.blocks_translated},
      {"bt.blocks_invalidated", st_.blocks_invalidated},
      {"bt.blocks_untranslatable", st_.untranslatable},
      {"bt.guest_insns_translated", st_.guest_insns_translated},
      {"bt.translated_native", st_.native_insns},
      {"bt.flag_restores_skipped", st_.flag_restores_skipped},
      {"bt.flag_recipes", st_.flag_recipes},
      {"bt.inline_divs", st_.inline_divs},
      {"bt.x87_inline_translated", st_.inline_x87},
      {"bt.x87_inline_runs", rt_->x87_runs},
      {"bt.x87_inline_reruns", rt_->x87_again},
      {"bt.x87_callouts", st_.callouts_by_group[G_X87]},
      {"bt.ras_calls", st_.ras_calls},
      {"bt.ras_rets", st_.ras_rets},
      {"bt.flag_parks", st_.flag_parks},
      {"bt.flag_free_checks", st_.flag_free_checks},
      {"bt.loop_flags", st_.loop_flags},
      {"bt.flag_lazy_recipes", st_.flag_lazy_recipes},
      {"bt.side_joins", st_.side_joins},
      {"bt.translated_callout", st_.callout_insns},
      {"bt.code_cache_bytes_used", cache_->used()},
      {"bt.record_bytes_used", arena_.bytes_used()},
      {"bt.sites", st_.sites},
      {"bt.site_seeds", st_.seeds},
      {"bt.site_seeds_run", st_.seeds_run},
      {"bt.code_cache_bytes", cache_->size()},
      {"bt.code_cache_flushes", st_.cache_flushes},
      {"bt.translate_us", st_.translate_ns / 1000},
      {"bt.block_entries_from_dispatcher", st_.block_entries},
      {"bt.block_lookups", st_.block_lookups},
      {"bt.block_lookup_misses", st_.block_lookup_misses},
      {"bt.chain_requests", st_.chain_requests},
      {"bt.chains_patched", st_.chains_patched},
      {"bt.chains_undone", st_.chains_undone},
      {"bt.jump_cache_fills", st_.jc_fills},
      {"bt.jump_cache_flushes", st_.jc_flushes},
      {"bt.jump_cache_drops", st_.jc_drops},
      {"bt.callouts", st_.callouts},
      {"bt.callouts_slow_memory", st_.callouts_slow_mem},
      {"bt.callout_exits", st_.callout_exits},
      {"bt.callout_continues", st_.callout_continues},
      {"bt.invlpg_continues", st_.invlpg_continues},
      {"bt.seg_loads_remembered", st_.seg_loads_cached},
      {"bt.smc_exits", st_.smc_exits},
      {"bt.direct_accesses", st_.direct_accesses},
      {"bt.direct_faults", st_.direct_faults},
      {"bt.window_strikes", st_.window_strikes},
      {"bt.inline_tsc", st_.inline_tsc},
      {"bt.inline_verw", st_.inline_verw},
      {"bt.memo_accesses", st_.memo_accesses},
      {"bt.memo_drops", mmu_.memo_drops()},
      {"bt.memo_batches", st_.memo_batches},
      {"bt.memo_retranslations", st_.memo_retranslations},
      {"bt.frame_leaders", st_.frame_leaders},
      {"bt.frame_followers", st_.frame_followers},
      {"bt.frame_misses", st_.frame_misses},
      {"bt.frame_retranslations", st_.frame_retranslations},
      {"bt.write_protect_switches", st_.write_protect_switches},
      {"bt.write_protect_calls", pm_.protect_calls()},
      {"bt.adaptive_retranslations", st_.adaptive_retranslations},
      {"bt.adaptive_direct_callouts", st_.adaptive_direct_calls},
      {"bt.adaptive_retries", st_.adaptive_retries},
      {"bt.interp_steps", st_.interp_steps},
      {"bt.cold_block_visits", st_.cold_blocks},
      {"bt.exceptions", ss.exceptions},
      {"bt.early_faults", ss.early_faults},
      {"bt.interrupts", ss.interrupts},
      {"bt.unimplemented", ss.unimplemented}};
  for (unsigned g = 0; g < G_COUNT; g++)
    out.emplace_back(std::string("bt.callouts.") + group_name(g), st_.callouts_by_group[g]);
  // The instructions called out most.
  std::vector<std::pair<u64, unsigned>> ops;
  for (unsigned k = 0; k < kOpCount; k++)
    if (st_.callouts_by_op[k]) ops.emplace_back(st_.callouts_by_op[k], k);
  std::sort(ops.rbegin(), ops.rend());
  for (size_t k = 0; k < ops.size() && k < 12; k++)
    out.emplace_back(std::string("bt.callouts.top.") + op_info(Op(ops[k].second)).name, ops[k].first);
  append_mmu_stats(mmu_, out);
  if (lockstep_) lockstep_->append_stats(out);
  return out;
}

}  // namespace popek::engine
