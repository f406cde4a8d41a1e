#include "engine/interp/interp.h"

#include <cstring>

#include "base/error.h"
#include "base/log.h"
#include "x86/disasm.h"
#include "x86/sem/sem.h"

namespace popek::engine {

using namespace popek::x86;

Interp::Interp(CpuState& s, mem::PhysMem& pm, Platform& plat)
    : s_(s), pm_(pm), mmu_(s, pm), cpu_(s, mmu_, plat), cache_(1u << kCacheBits),
      gens_(pm.ram_size() >> mem::kPageShift, 0) {
  pm_.add_watcher(this);
}

Interp::~Interp() { pm_.remove_watcher(this); }

void Interp::code_page_written(u64 ppn) {
  if (ppn < gens_.size()) gens_[ppn]++;
  st_.cache_invalidations++;
}

const Interp::Entry& Interp::fetch() {
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
  if (!spans) {
    pm_.mark_code(ppn);
    out.gen = gen(ppn);
  }
  return out;
}

void Interp::trace(const Entry& e) {
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

void Interp::run_insns(u64 end) {
  for (;;) {
    const Entry& e = fetch();
    if (POPEK_UNLIKELY(trace_ != nullptr)) trace(e);
    const Insn& i = e.insn;
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
    e.fn(cpu_, i);
    s_.eip = cpu_.next_eip;
    s_.icount++;
    if (POPEK_UNLIKELY(tf)) {
      // Single-step trap after the instruction.
      s_.dr[6] |= 0x4000;
      st_.exceptions++;
      deliver_escalating(cpu_, DB, EventKind::exception, false, 0, s_.eip);
    }
    if (POPEK_UNLIKELY(cpu_.stop != StopReason::none)) return;
    if (POPEK_UNLIKELY(s_.intr_line && (s_.eflags & IF) && !s_.intr_shadow)) return;
    if (POPEK_UNLIKELY(s_.nmi_pending)) return;
    if (s_.icount >= end) return;
  }
}

void Interp::take_fault(const Fault& f) {
  st_.exceptions++;
  if (trace_)
    std::fprintf(trace_, "popek: %s (error %#x) at %04x:%08x\n", vector_name(f.vector), f.error,
                 s_.seg[CS].sel, s_.eip);
  deliver_escalating(cpu_, f.vector, EventKind::exception, f.has_error, f.error, s_.eip);
}

Exit Interp::run(u64 budget) {
  const u64 end = s_.icount + budget;
  for (;;) {
    if (take_stop()) return Exit::stopped;
    if (s_.shutdown) return Exit::shutdown;
    try {
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
      if (s_.shutdown) return Exit::shutdown;
      if (s_.halted) return Exit::halt;
      if (s_.icount >= end) return Exit::budget;
      cpu_.stop = StopReason::none;
      run_insns(end);
      if (cpu_.stop == StopReason::shutdown) return Exit::shutdown;
      if (cpu_.stop == StopReason::halt) return Exit::halt;
    } catch (const Fault& f) {
      take_fault(f);
    } catch (const Unimplemented& u) {
      st_.unimplemented++;
      std::fprintf(trace_ ? trace_ : stderr, "popek: unimplemented instruction %s at %04x:%08x (#UD)\n",
                   u.what, s_.seg[CS].sel, s_.eip);
      take_fault(Fault{UD, false, 0});
    }
  }
}

std::vector<std::pair<std::string, u64>> Interp::stats() const {
  const mem::MmuStats& m = mmu_.stats();
  return {{"interp.insns", s_.icount},
          {"interp.decode_cache_hits", st_.cache_hits},
          {"interp.decode_cache_misses", st_.cache_misses},
          {"interp.decode_cache_invalidations", st_.cache_invalidations},
          {"interp.exceptions", st_.exceptions},
          {"interp.interrupts", st_.interrupts},
          {"interp.unimplemented", st_.unimplemented},
          {"mmu.tlb_misses", m.tlb_misses},
          {"mmu.page_walks", m.page_walks},
          {"mmu.page_faults", m.page_faults},
          {"mmu.tlb_flushes", m.flushes},
          {"mmu.slow_accesses", m.slow_accesses}};
}

}  // namespace popek::engine
