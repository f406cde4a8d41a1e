// System instructions: flags and interrupt flag, port I/O, descriptor tables,
// control and debug registers, MSRs, CPUID, TSC, SYSENTER/SYSEXIT, segment
// register loads, LAR/LSL/VERR/VERW/ARPL, HLT.
#include "base/error.h"
#include "x86/cpuid.h"
#include "x86/paravirt.h"
#include "x86/sem/sem.h"

namespace popek::x86 {

// Bits POPF may change at all (the rest are fixed or handled separately).
static constexpr u32 kFlagsWritable = CF | PF | AF | ZF | SF | TF | IF | DF | OF | IOPL | NT | AC | ID;

void Cpu::write_eflags(u32 v, u32 size_mask) {
  u32 mask = kFlagsWritable & size_mask;
  if (s.pe() && !s.vm86()) {
    if (s.cpl > 0) mask &= ~IOPL;
    if (s.cpl > s.iopl()) mask &= ~IF;
  } else if (s.vm86()) {
    mask &= ~IOPL;
  }
  s.eflags = (s.eflags & ~mask) | (v & mask) | FLAGS_FIXED1;
  s.eflags &= ~RF;
}

void Cpu::check_io(u16 port, unsigned size) {
  if (!s.pe() || (!s.vm86() && s.cpl <= s.iopl())) return;
  // The TSS I/O permission bitmap decides.
  const Segment& tr = s.tr;
  if (!(tr.type() & 8) || tr.limit < 0x67) raise_fault(GP, 0);
  u32 map = sys_read(tr.base + 0x66, 2);
  u32 off = map + port / 8;
  if (off + 1 > tr.limit) raise_fault(GP, 0);
  u32 bits = sys_read(tr.base + off, 2);
  u32 want = ((1u << size) - 1) << (port & 7);
  if (bits & want) raise_fault(GP, 0);
}

namespace {

void h_cli(Cpu& c, const Insn&) {
  CpuState& s = c.s;
  if (s.pe() && (s.vm86() ? s.iopl() < 3 : s.cpl > s.iopl())) raise_fault(GP, 0);
  s.eflags &= ~IF;
}
void h_sti(Cpu& c, const Insn&) {
  CpuState& s = c.s;
  if (s.pe() && (s.vm86() ? s.iopl() < 3 : s.cpl > s.iopl())) raise_fault(GP, 0);
  if (!(s.eflags & IF)) s.intr_shadow = SHADOW_STI;
  s.eflags |= IF;
}
template <typename T> void h_pushf(Cpu& c, const Insn&) {
  if (c.s.vm86() && c.s.iopl() < 3) raise_fault(GP, 0);
  c.push<T>(T(c.s.eflags & ~(VM | RF)));
}
template <typename T> void h_popf(Cpu& c, const Insn&) {
  if (c.s.vm86() && c.s.iopl() < 3) raise_fault(GP, 0);
  T v = c.read<T>(SS, c.sp());
  c.write_eflags(v, sizeof(T) == 2 ? 0xFFFFu : 0xFFFFFFFFu);
  c.set_sp(c.sp_add(c.sp(), sizeof(T)));
}
void h_hlt(Cpu& c, const Insn&) {
  c.s.halted = true;
  c.stop = StopReason::halt;
}

// ---- port I/O ----
template <typename T> void h_in_I(Cpu& c, const Insn& i) {
  c.check_io(u16(i.imm & 0xFF), sizeof(T));
  c.set_reg<T>(EAX, T(c.plat.io_in(u16(i.imm & 0xFF), sizeof(T))));
}
template <typename T> void h_in_D(Cpu& c, const Insn&) {
  u16 port = u16(c.s.gpr[EDX]);
  c.check_io(port, sizeof(T));
  c.set_reg<T>(EAX, T(c.plat.io_in(port, sizeof(T))));
}
template <typename T> void h_out_I(Cpu& c, const Insn& i) {
  c.check_io(u16(i.imm & 0xFF), sizeof(T));
  c.plat.io_out(u16(i.imm & 0xFF), sizeof(T), c.reg<T>(EAX));
}
template <typename T> void h_out_D(Cpu& c, const Insn&) {
  u16 port = u16(c.s.gpr[EDX]);
  c.check_io(port, sizeof(T));
  c.plat.io_out(port, sizeof(T), c.reg<T>(EAX));
}

// ---- descriptor tables ----
void require_pm(Cpu& c) {
  if (!c.s.pe() || c.s.vm86()) raise_fault(UD);
}
template <bool Idt> void h_lgdt(Cpu& c, const Insn& i) {
  u32 off = c.ea(i);
  u16 limit = c.read<u16>(i.seg, off);
  u32 base = c.read<u32>(i.seg, off + 2);
  if (i.osize == 2) base &= 0xFFFFFF;
  TableReg& t = Idt ? c.s.idtr : c.s.gdtr;
  t.base = base;
  t.limit = limit;
}
template <bool Idt> void h_sgdt(Cpu& c, const Insn& i) {
  u32 off = c.ea(i);
  const TableReg& t = Idt ? c.s.idtr : c.s.gdtr;
  // Check both parts are writable before writing either.
  u32 la = c.linear(i.seg, off, 6, true);
  c.mem.probe_write(la, 6, c.user());
  c.write<u16>(i.seg, off, t.limit);
  c.write<u32>(i.seg, off + 2, t.base);
}
void store_sel(Cpu& c, const Insn& i, u16 v) {
  if (i.mem) c.write<u16>(i.seg, c.ea(i), v);
  else if (i.osize == 4) c.s.gpr[i.rm] = v;
  else c.set_reg<u16>(i.rm, v);
}
void h_sldt(Cpu& c, const Insn& i) { require_pm(c); store_sel(c, i, c.s.ldtr.sel); }
void h_str(Cpu& c, const Insn& i) { require_pm(c); store_sel(c, i, c.s.tr.sel); }
void h_lldt(Cpu& c, const Insn& i) {
  require_pm(c);
  u16 sel = c.read_rm<u16>(i);
  if ((sel & ~3) == 0) {
    null_seg(c.s.ldtr, sel);
    return;
  }
  Desc d;
  if ((sel & 4) || !read_desc(c, sel, &d)) raise_fault(GP, sel & 0xFFFC);
  if (d.s() || d.type() != T_LDT) raise_fault(GP, sel & 0xFFFC);
  if (!d.present()) raise_fault(NP, sel & 0xFFFC);
  c.s.ldtr = d.to_segment(sel);
}
void h_ltr(Cpu& c, const Insn& i) {
  require_pm(c);
  u16 sel = c.read_rm<u16>(i);
  if ((sel & ~3) == 0) raise_fault(GP, 0);
  Desc d;
  if ((sel & 4) || !read_desc(c, sel, &d)) raise_fault(GP, sel & 0xFFFC);
  if (d.s() || (d.type() != T_TSS32_AVAIL && d.type() != T_TSS16_AVAIL)) raise_fault(GP, sel & 0xFFFC);
  if (!d.present()) raise_fault(NP, sel & 0xFFFC);
  d.hi |= 0x200;
  write_desc_hi(c, sel, d.hi);
  c.s.tr = d.to_segment(sel);
}
void h_smsw(Cpu& c, const Insn& i) {
  if (i.mem) c.write<u16>(i.seg, c.ea(i), u16(c.s.cr0));
  else if (i.osize == 4) c.s.gpr[i.rm] = c.s.cr0;
  else c.set_reg<u16>(i.rm, u16(c.s.cr0));
}
void h_lmsw(Cpu& c, const Insn& i) {
  u16 v = c.read_rm<u16>(i);
  u32 cr0 = c.s.cr0;
  // LMSW can set PE but never clear it.
  cr0 = (cr0 & ~0xEu) | (v & 0xF) | (cr0 & CR0_PE);
  c.s.cr0 = cr0;
  c.stop = StopReason::mode_change;
}
void h_clts(Cpu& c, const Insn&) { c.s.cr0 &= ~CR0_TS; }
void h_invlpg(Cpu& c, const Insn& i) {
  // INVLPG takes the linear address without limit checks.
  c.mem.invlpg(c.s.seg[i.seg].base + c.ea(i));
}
void h_wbinvd(Cpu&, const Insn&) {}

// ---- control and debug registers ----
void h_mov_from_cr(Cpu& c, const Insn& i) {
  u32 v;
  switch (i.reg) {
    case 0: v = c.s.cr0; break;
    case 2: v = c.s.cr2; break;
    case 3: v = c.s.cr3; break;
    case 4: v = c.s.cr4; break;
    default: raise_fault(UD);
  }
  c.s.gpr[i.rm] = v;
}
void h_mov_to_cr(Cpu& c, const Insn& i) {
  u32 v = c.s.gpr[i.rm];
  CpuState& s = c.s;
  switch (i.reg) {
    case 0: {
      if ((v & CR0_PG) && !(v & CR0_PE)) raise_fault(GP, 0);
      if ((v & CR0_NW) && !(v & CR0_CD)) raise_fault(GP, 0);
      u32 old = s.cr0;
      s.cr0 = (v & 0xE005003Fu) | CR0_ET;
      if ((old ^ s.cr0) & (CR0_PG | CR0_WP | CR0_PE)) c.mem.flush_tlb(true);
      if ((old ^ s.cr0) & (CR0_PG | CR0_PE)) c.stop = StopReason::mode_change;
      break;
    }
    case 2: s.cr2 = v; break;
    case 3:
      s.cr3 = v & 0xFFFFF018u;
      c.mem.flush_tlb(false);
      break;
    case 4: {
      if (v & ~kCr4Supported) raise_fault(GP, 0);
      u32 old = s.cr4;
      s.cr4 = v;
      if ((old ^ v) & (CR4_PSE | CR4_PGE | CR4_PAE)) c.mem.flush_tlb(true);
      break;
    }
    default: raise_fault(UD);
  }
}
unsigned dr_index(Cpu& c, unsigned r) {
  if (r == 4 || r == 5) {
    if (c.s.cr4 & CR4_DE) raise_fault(UD);
    return r + 2;
  }
  return r;
}
void h_mov_from_dr(Cpu& c, const Insn& i) {
  if (c.s.dr[7] & 0x2000) { c.s.dr[6] |= 0x2000; raise_fault(DB); }
  c.s.gpr[i.rm] = c.s.dr[dr_index(c, i.reg)];
}
void h_mov_to_dr(Cpu& c, const Insn& i) {
  if (c.s.dr[7] & 0x2000) { c.s.dr[6] |= 0x2000; raise_fault(DB); }
  unsigned r = dr_index(c, i.reg);
  u32 v = c.s.gpr[i.rm];
  if (r == 6) v = (v & 0xE00F) | 0xFFFF0FF0u;
  if (r == 7) {
    v = (v & 0xFFFF2FFFu) | 0x400;
    if (v & 0xFF) throw Error("unimplemented: hardware breakpoints (guest enabled DR7 breakpoints)");
  }
  c.s.dr[r] = v;
}

// ---- MSRs, TSC, CPUID ----
void h_rdmsr(Cpu& c, const Insn&) {
  u64 v;
  const u32 index = c.s.gpr[ECX];
  if (pv::is_msr(index) && c.plat.paravirt()) v = pv::read_msr(c, index);
  else if (!read_msr(c.s, index, c.plat.tsc(), &v)) raise_fault(GP, 0);
  c.s.gpr[EAX] = u32(v);
  c.s.gpr[EDX] = u32(v >> 32);
}
void h_wrmsr(Cpu& c, const Insn&) {
  u64 v = u64(c.s.gpr[EDX]) << 32 | c.s.gpr[EAX];
  const u32 index = c.s.gpr[ECX];
  if (pv::is_msr(index) && c.plat.paravirt()) {
    pv::write_msr(c, index, v);
    return;
  }
  if (!write_msr(c.s, index, v, c.plat.tsc())) raise_fault(GP, 0);
  // A new TSC offset moves the guest TSC against the clock: kvm-clock's
  // structure must follow (KVM updates it on a TSC write too).
  if (index == 0x10 && (c.s.msr.kvm_system_time & 1) && c.plat.paravirt()) pv::update_clock(c);
}
// VMCALL / VMMCALL: KVM's hypercall when the paravirtual interface is on
// (either one on any vendor: the guest patches in VMCALL for GenuineIntel);
// otherwise what a CPU outside VMX/SVM does, #UD.
void h_hypercall(Cpu& c, const Insn&) {
  if (!c.plat.paravirt()) raise_fault(UD);
  pv::hypercall(c);
}
void h_rdtsc(Cpu& c, const Insn&) {
  if ((c.s.cr4 & CR4_TSD) && c.s.cpl != 0 && c.s.pe()) raise_fault(GP, 0);
  u64 t = c.plat.tsc() + c.s.msr.tsc_offset;
  c.s.gpr[EAX] = u32(t);
  c.s.gpr[EDX] = u32(t >> 32);
}
void h_rdpmc(Cpu& c, const Insn&) {
  if (!(c.s.cr4 & CR4_PCE) && c.s.cpl != 0 && c.s.pe()) raise_fault(GP, 0);
  if (c.s.gpr[ECX] > 1) raise_fault(GP, 0);
  c.s.gpr[EAX] = c.s.gpr[EDX] = 0;  // no performance counters are counting
}
void h_cpuid(Cpu& c, const Insn&) {
  CpuidResult r = cpuid(c.s.gpr[EAX], c.s.gpr[ECX], c.plat.paravirt());
  c.s.gpr[EAX] = r.eax;
  c.s.gpr[EBX] = r.ebx;
  c.s.gpr[ECX] = r.ecx;
  c.s.gpr[EDX] = r.edx;
}

// ---- SYSENTER / SYSEXIT: flat segments derived from SYSENTER_CS ----
Segment flat(u16 sel, bool code, unsigned dpl) {
  return Segment{sel, 0, 0xFFFFFFFFu, u16((code ? 0xCF9B : 0xCF93) | (dpl << 5))};
}
void h_sysenter(Cpu& c, const Insn&) {
  CpuState& s = c.s;
  if (!s.pe()) raise_fault(GP, 0);
  u16 cs = u16(s.msr.sysenter_cs);
  if ((cs & 0xFFFC) == 0) raise_fault(GP, 0);
  s.eflags &= ~(VM | IF | RF);
  s.seg[CS] = flat(cs & 0xFFFC, true, 0);
  s.seg[SS] = flat(u16((cs & 0xFFFC) + 8), false, 0);
  s.cpl = 0;
  s.gpr[ESP] = s.msr.sysenter_esp;
  c.next_eip = s.msr.sysenter_eip;
}
void h_sysexit(Cpu& c, const Insn&) {
  CpuState& s = c.s;
  u16 cs = u16(s.msr.sysenter_cs);
  if (!s.pe() || s.vm86() || s.cpl != 0 || (cs & 0xFFFC) == 0) raise_fault(GP, 0);
  s.seg[CS] = flat(u16((cs + 16) | 3), true, 3);
  s.seg[SS] = flat(u16((cs + 24) | 3), false, 3);
  s.cpl = 3;
  s.gpr[ESP] = s.gpr[ECX];
  c.next_eip = s.gpr[EDX];
}

// ---- segment registers ----
void h_mov_EwSw(Cpu& c, const Insn& i) {
  if (i.reg > GS) raise_fault(UD);
  u16 v = c.s.seg[i.reg].sel;
  if (i.mem) c.write<u16>(i.seg, c.ea(i), v);
  else if (i.osize == 4) c.s.gpr[i.rm] = v;
  else c.set_reg<u16>(i.rm, v);
}
void h_mov_SwEw(Cpu& c, const Insn& i) {
  if (i.reg > GS || i.reg == CS) raise_fault(UD);
  u16 v = c.read_rm<u16>(i);
  load_seg(c, i.reg, v);
  if (i.reg == SS) c.s.intr_shadow = SHADOW_MOV_SS;
}
template <unsigned Seg, typename T> void h_lxs(Cpu& c, const Insn& i) {
  u32 off = c.ea(i);
  T v = c.read<T>(i.seg, off);
  u16 sel = c.read<u16>(i.seg, off + sizeof(T));
  load_seg(c, Seg, sel);
  c.set_reg<T>(i.reg, v);
}

// LAR/LSL/VERR/VERW set ZF and never fault on the selector itself.
bool visible(Cpu& c, u16 sel, const Desc& d) {
  if (d.conforming()) return true;
  return d.dpl() >= c.s.cpl && d.dpl() >= (sel & 3);
}
template <bool Lsl, typename T> void h_lar(Cpu& c, const Insn& i) {
  require_pm(c);
  u16 sel = c.read_rm<u16>(i);
  Desc d;
  bool ok = (sel & ~3) && read_desc(c, sel, &d) && visible(c, sel, d);
  if (ok && !d.s()) {
    static const bool lar_ok[16] = {0, 1, 1, 1, 1, 1, 0, 0, 0, 1, 0, 1, 1, 0, 0, 0};
    static const bool lsl_ok[16] = {0, 1, 1, 1, 0, 0, 0, 0, 0, 1, 0, 1, 0, 0, 0, 0};
    ok = Lsl ? lsl_ok[d.type()] : lar_ok[d.type()];
  }
  if (!ok) {
    c.s.eflags &= ~ZF;
    return;
  }
  c.s.eflags |= ZF;
  u32 v = Lsl ? d.limit() : (d.hi & 0x00F0FF00u);
  c.set_reg<T>(i.reg, T(v));
}
template <bool W> void h_verr(Cpu& c, const Insn& i) {
  require_pm(c);
  u16 sel = c.read_rm<u16>(i);
  if (verify_segment(c, sel, W)) c.s.eflags |= ZF;
  else c.s.eflags &= ~ZF;
}
void h_arpl(Cpu& c, const Insn& i) {
  require_pm(c);
  u16 d = c.read_rm<u16>(i);
  u16 src = c.reg<u16>(i.reg);
  if ((d & 3) < (src & 3)) {
    c.write_rm<u16>(i, u16((d & ~3) | (src & 3)));
    c.s.eflags |= ZF;
  } else {
    c.s.eflags &= ~ZF;
  }
}

}  // namespace

bool verify_segment(Cpu& c, u16 sel, bool write) {
  Desc d;
  bool ok = (sel & ~3) && read_desc(c, sel, &d) && d.s() && visible(c, sel, d);
  if (ok) ok = write ? d.writable_data() : (!d.is_code() || d.readable_code());
  return ok;
}

void register_system(HandlerTable& t) {
  t.set1(Op::CLI, h_cli);
  t.set1(Op::STI, h_sti);
  t.set(Op::PUSHF, nullptr, h_pushf<u16>, h_pushf<u32>);
  t.set(Op::POPF, nullptr, h_popf<u16>, h_popf<u32>);
  t.set1(Op::HLT, h_hlt);
  t.set(Op::IN_ALIb, h_in_I<u8>, nullptr, nullptr);
  t.set(Op::IN_eAXIb, nullptr, h_in_I<u16>, h_in_I<u32>);
  t.set(Op::IN_ALDX, h_in_D<u8>, nullptr, nullptr);
  t.set(Op::IN_eAXDX, nullptr, h_in_D<u16>, h_in_D<u32>);
  t.set(Op::OUT_IbAL, h_out_I<u8>, nullptr, nullptr);
  t.set(Op::OUT_IbeAX, nullptr, h_out_I<u16>, h_out_I<u32>);
  t.set(Op::OUT_DXAL, h_out_D<u8>, nullptr, nullptr);
  t.set(Op::OUT_DXeAX, nullptr, h_out_D<u16>, h_out_D<u32>);
  t.set1(Op::LGDT, h_lgdt<false>);
  t.set1(Op::LIDT, h_lgdt<true>);
  t.set1(Op::SGDT, h_sgdt<false>);
  t.set1(Op::SIDT, h_sgdt<true>);
  t.set1(Op::SLDT, h_sldt);
  t.set1(Op::STR, h_str);
  t.set1(Op::LLDT, h_lldt);
  t.set1(Op::LTR, h_ltr);
  t.set1(Op::SMSW, h_smsw);
  t.set1(Op::LMSW, h_lmsw);
  t.set1(Op::CLTS, h_clts);
  t.set1(Op::INVLPG, h_invlpg);
  t.set1(Op::INVD, h_wbinvd);
  t.set1(Op::WBINVD, h_wbinvd);
  t.set1(Op::MOV_RdCd, h_mov_from_cr);
  t.set1(Op::MOV_CdRd, h_mov_to_cr);
  t.set1(Op::MOV_RdDd, h_mov_from_dr);
  t.set1(Op::MOV_DdRd, h_mov_to_dr);
  t.set1(Op::RDMSR, h_rdmsr);
  t.set1(Op::WRMSR, h_wrmsr);
  t.set1(Op::RDTSC, h_rdtsc);
  t.set1(Op::RDPMC, h_rdpmc);
  t.set1(Op::CPUID, h_cpuid);
  t.set1(Op::VMCALL, h_hypercall);
  t.set1(Op::VMMCALL, h_hypercall);
  t.set1(Op::SYSENTER, h_sysenter);
  t.set1(Op::SYSEXIT, h_sysexit);
  t.set1(Op::MOV_EwSw, h_mov_EwSw);
  t.set1(Op::MOV_SwEw, h_mov_SwEw);
  t.set(Op::LES, nullptr, h_lxs<ES, u16>, h_lxs<ES, u32>);
  t.set(Op::LDS, nullptr, h_lxs<DS, u16>, h_lxs<DS, u32>);
  t.set(Op::LSS, nullptr, h_lxs<SS, u16>, h_lxs<SS, u32>);
  t.set(Op::LFS, nullptr, h_lxs<FS, u16>, h_lxs<FS, u32>);
  t.set(Op::LGS, nullptr, h_lxs<GS, u16>, h_lxs<GS, u32>);
  t.set(Op::LAR, nullptr, h_lar<false, u16>, h_lar<false, u32>);
  t.set(Op::LSL, nullptr, h_lar<true, u16>, h_lar<true, u32>);
  t.set1(Op::VERR, h_verr<false>);
  t.set1(Op::VERW, h_verr<true>);
  t.set1(Op::ARPL, h_arpl);
}

}  // namespace popek::x86
