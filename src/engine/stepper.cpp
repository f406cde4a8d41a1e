#include "engine/stepper.h"

#include <cstring>
#include <string>

#include "base/error.h"
#include "base/log.h"
#include "x86/disasm.h"

namespace popek::engine {

using namespace popek::x86;

Stepper::Stepper(CpuState& s, mem::PhysMem& pm, mem::Mmu& mmu, Cpu& cpu)
    : s_(s), pm_(pm), mmu_(mmu), cpu_(cpu), cache_(1u << kCacheBits),
      gens_(pm.ram_size() >> mem::kPageShift, 0) {
  pm_.add_watcher(this);
}

Stepper::~Stepper() { pm_.remove_watcher(this); }

void Stepper::code_page_written(u64 ppn) {
  if (ppn < gens_.size()) gens_[ppn]++;
  st_.cache_invalidations++;
}

const Stepper::Entry& Stepper::fetch() {
  const Segment& cs = s_.seg[CS];
  const u32 eip = s_.eip;
  const u32 la = cs.base + eip;
  const bool user = s_.cpl == 3;
  u64 pa;
  const u8* p = mmu_.fetch(la, user, &pa);
  const u8 mode = cs.db() ? 1 : 0;
  Entry& e = cache_[(pa ^ (pa >> kCacheBits)) & ((1u << kCacheBits) - 1)];
  const u64 ppn = pa >> mem::kPageShift;
  if (POPEK_LIKELY(e.pa == pa && e.mode == mode && e.gen == gen(ppn))) {
    if (POPEK_UNLIKELY(eip > cs.limit || e.insn.len - 1u > cs.limit - eip)) raise_fault(GP, 0);
    st_.cache_hits++;
    return e;
  }
  st_.cache_misses++;
  if (!p) throw Error("instruction fetch from non-RAM physical address " + std::to_string(pa));
  u8 buf[16];
  unsigned avail = 4096 - (la & 0xFFF);
  if (avail > 15) avail = 15;
  std::memcpy(buf, p, avail);
  Insn insn;
  DecodeStatus st = decode(buf, avail, mode, &insn);
  bool spans = false;
  if (st == DecodeStatus::need_more) {
    // The instruction continues on the next page: translate it (may #PF).
    u64 pa2;
    const u8* p2 = mmu_.fetch(la + avail, user, &pa2);
    if (!p2) throw Error("instruction fetch from non-RAM physical address " + std::to_string(pa2));
    std::memcpy(buf + avail, p2, 15 - avail);
    st = decode(buf, 15, mode, &insn);
    spans = true;
  }
  if (st == DecodeStatus::too_long) raise_fault(GP, 0);
  if (eip > cs.limit || (st == DecodeStatus::ok && insn.len - 1u > cs.limit - eip)) raise_fault(GP, 0);
  if (st == DecodeStatus::invalid) {
    if (trace_ || log_enabled(LogLevel::debug))
      std::fprintf(trace_ ? trace_ : stderr, "popek: invalid opcode %02x %02x %02x at %04x:%08x (#UD)\n",
                   buf[0], buf[1], buf[2], cs.sel, eip);
    raise_fault(UD);
  }
  Entry& out = spans ? scratch_ : e;
  out.pa = spans ? ~0ull : pa;
  out.mode = mode;
  out.insn = insn;
  out.fn = handler_for(insn);
  out.early = nullptr;  // armed when it faults (take_fault)
  if (!spans) {
    pm_.mark_code(ppn);
    out.gen = gen(ppn);
  }
  return out;
}

void Stepper::trace(const Entry& e) {
  u8 bytes[16] = {};
  const u32 la = s_.seg[CS].base + s_.eip;
  for (unsigned k = 0; k < e.insn.len; k++) {
    u64 pa;
    if (mmu_.probe(la + k, &pa)) pm_.read_bytes(pa, &bytes[k], 1);
  }
  std::string text = disassemble(bytes, e.insn.len, s_.seg[CS].db(), s_.eip);
  std::fprintf(trace_, "%04x:%08x %-40s eax=%08x ebx=%08x ecx=%08x edx=%08x esi=%08x edi=%08x ebp=%08x esp=%08x fl=%08x\n",
               s_.seg[CS].sel, s_.eip, text.c_str(), s_.gpr[EAX], s_.gpr[EBX], s_.gpr[ECX],
               s_.gpr[EDX], s_.gpr[ESI], s_.gpr[EDI], s_.gpr[EBP], s_.gpr[ESP], s_.eflags);
}

bool Stepper::execute(const Insn& i, Handler fn, EarlyCheck early) {
  const u32 attrs = i.info().attrs;
  if (POPEK_UNLIKELY((attrs & PRV) && s_.cpl != 0)) raise_fault(GP, 0);
  if (POPEK_UNLIKELY((attrs & FPU) && (s_.cr0 & (CR0_EM | CR0_TS)))) {
    // #NM: EM for any x87 instruction; TS for x87, and for WAIT only with MP.
    if (i.op != Op::FWAIT || ((s_.cr0 & CR0_MP) && (s_.cr0 & CR0_TS))) raise_fault(NM);
  }
  const u32 next = s_.eip + i.len;
  cpu_.next_eip = s_.seg[CS].db() ? next : (next & 0xFFFF);
  const bool tf = s_.eflags & TF;
  s_.intr_shadow = 0;
  // A fault found early is delivered as the handler's would be (no C++ throw:
  // that costs microseconds of unwinding). The state is the handler's at its
  // fault: nothing has changed but what the check did as the handler would.
  if (early && early_faults_) {
    Fault f;
    if (POPEK_UNLIKELY(early(cpu_, i, &f))) {
      st_.early_faults++;
      take_fault(f);
      return false;
    }
  }
  fn(cpu_, i);
  s_.eip = cpu_.next_eip;
  s_.icount++;
  // Single-step trap after the instruction; an SS load holds it back until
  // the next instruction has run, whose own trap then reports both.
  if (POPEK_UNLIKELY(tf) && !(s_.intr_shadow & SHADOW_MOV_SS)) {
    s_.dr[6] |= 0x4000;
    st_.exceptions++;
    deliver_escalating(cpu_, DB, EventKind::exception, false, 0, s_.eip);
  }
  return true;
}

template <bool kOneBlock>
void Stepper::run(u64 end, u64 max) {
  for (u64 n = 0; n < max; n++) {
    current_ = nullptr;  // (a fault in the fetch is not the last instruction's)
    const Entry& e = fetch();
    current_ = const_cast<Entry*>(&e);
    if (POPEK_UNLIKELY(trace_ != nullptr)) trace(e);
    const u32 next = s_.eip + e.insn.len;
    const u32 cs = s_.seg[x86::CS].sel;
    // A fault leaves the loop as a raised one would (the engine's loop takes
    // pending events before the handler's first instruction).
    if (!execute(e.insn, e.fn, e.early)) return;
    if (POPEK_UNLIKELY(cpu_.stop != StopReason::none)) return;
    if (POPEK_UNLIKELY(s_.intr_line && (s_.eflags & IF) && !s_.intr_shadow)) return;
    if (POPEK_UNLIKELY(s_.nmi_pending)) return;
    if (s_.icount >= end) return;
    if (kOneBlock && (s_.eip != next || s_.seg[x86::CS].sel != cs)) return;
  }
}

void Stepper::run_insns(u64 end, u64 max) { run<false>(end, max); }
void Stepper::run_block(u64 end, u64 max) { run<true>(end, max); }

void Stepper::deliver_pending() {
  if (s_.nmi_pending && !s_.nmi_blocked) {
    s_.nmi_pending = false;
    s_.halted = false;
    deliver_escalating(cpu_, NMI_V, EventKind::nmi, false, 0, s_.eip);
  } else if (s_.intr_line && (s_.eflags & IF) && !s_.intr_shadow) {
    s_.halted = false;
    u8 vec = cpu_.plat.intr_ack();
    st_.interrupts++;
    deliver_escalating(cpu_, vec, EventKind::external, false, 0, s_.eip);
  }
}

void Stepper::take_fault(const Fault& f) {
  st_.exceptions++;

  if (trace_)
    std::fprintf(trace_, "popek: %s (error %#x) at %04x:%08x\n", vector_name(f.vector), f.error,
                 s_.seg[CS].sel, s_.eip);
  deliver_escalating(cpu_, f.vector, EventKind::exception, f.has_error, f.error, s_.eip);
}

void Stepper::arm_early() {
  if (current_ && !current_->early && early_faults_) current_->early = early_check_for(current_->insn);
  current_ = nullptr;
}

void Stepper::take_unimplemented(const Unimplemented& u) {
  st_.unimplemented++;
  std::fprintf(trace_ ? trace_ : stderr, "popek: unimplemented instruction %s at %04x:%08x (#UD)\n",
               u.what, s_.seg[CS].sel, s_.eip);
  take_fault(Fault{UD, false, 0});
}

void append_mmu_stats(const mem::Mmu& mmu, std::vector<std::pair<std::string, u64>>& out) {
  const mem::MmuStats& m = mmu.stats();
  out.insert(out.end(), {{"mmu.tlb_misses", m.tlb_misses},
                         {"mmu.page_walks", m.page_walks},
                         {"mmu.page_faults", m.page_faults},
                         {"mmu.tlb_flushes", m.flushes},
                         {"mmu.slow_accesses", m.slow_accesses},
                         {"mmu.window_maps", m.window_maps},
                         {"mmu.window_claims", m.window_claims},
                         {"mmu.window_checks", m.window_checks},
                         {"mmu.window_churn", m.window_churn},
                         {"mmu.window_releases", m.window_releases},
                         {"mmu.window_clears", m.window_clears},
                         {"mmu.window_evicted", m.window_evicted},
                         {"mmu.window_refills", m.window_refills},
                         {"mmu.window_refused", m.window_refused}});
}

}  // namespace popek::engine
