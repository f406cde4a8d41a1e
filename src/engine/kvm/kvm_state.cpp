#include "engine/kvm/kvm_state.h"

#include <cmath>
#include <cstdio>
#include <cstring>

namespace popek::engine::kvm {

using namespace popek::x86;

namespace {

kvm_segment seg_to_kvm(const Segment& g) {
  kvm_segment k{};
  k.base = g.base;
  k.limit = g.limit;
  k.selector = g.sel;
  k.type = g.attr & 0xF;
  k.s = (g.attr >> 4) & 1;
  k.dpl = (g.attr >> 5) & 3;
  k.present = (g.attr >> 7) & 1;
  k.avl = (g.attr >> 12) & 1;
  k.l = (g.attr >> 13) & 1;
  k.db = (g.attr >> 14) & 1;
  k.g = (g.attr >> 15) & 1;
  // popek's "unusable" is "not present" (a null selector loaded in
  // protected mode leaves attr 0).
  k.unusable = !k.present;
  return k;
}

Segment seg_from_kvm(const kvm_segment& k) {
  Segment g;
  g.sel = k.selector;
  g.base = u32(k.base);
  g.limit = k.limit;
  if (k.unusable) {
    g.attr = 0;
    return g;
  }
  g.attr = u16((k.type & 0xF) | (k.s & 1) << 4 | (k.dpl & 3) << 5 | (k.present & 1) << 7 |
               (k.avl & 1) << 12 | (k.l & 1) << 13 | (k.db & 1) << 14 | (k.g & 1) << 15);
  return g;
}

}  // namespace

unsigned fpu_tag_of(const long double& v) {
  u8 b[10];
  std::memcpy(b, &v, 10);
  const u16 se = u16(b[8] | b[9] << 8);
  const unsigned exp = se & 0x7FFF;
  u64 mant;
  std::memcpy(&mant, b, 8);
  if (exp == 0x7FFF) return 2;                 // infinity, NaN
  if (exp == 0) return mant == 0 ? 1 : 2;      // zero; denormal
  if (!(mant >> 63)) return 2;                 // unnormal: unsupported
  return 0;
}

KvmState to_kvm(const CpuState& s) {
  KvmState k;
  __u64* gp[8] = {&k.regs.rax, &k.regs.rcx, &k.regs.rdx, &k.regs.rbx,
                  &k.regs.rsp, &k.regs.rbp, &k.regs.rsi, &k.regs.rdi};
  for (int i = 0; i < 8; i++) *gp[i] = s.gpr[i];
  k.regs.rip = s.eip;
  k.regs.rflags = s.eflags;

  kvm_segment* sg[6] = {&k.sregs.es, &k.sregs.cs, &k.sregs.ss, &k.sregs.ds, &k.sregs.fs, &k.sregs.gs};
  for (int i = 0; i < 6; i++) *sg[i] = seg_to_kvm(s.seg[i]);
  // KVM (SVM and VMX alike) takes the CPL from SS.DPL; popek keeps it apart.
  // They agree in every state x86 can reach (real mode: 0, vm86: 3); the
  // engine checks before it runs.
  k.sregs.tr = seg_to_kvm(s.tr);
  k.sregs.ldt = seg_to_kvm(s.ldtr);
  k.sregs.gdt.base = s.gdtr.base;
  k.sregs.gdt.limit = s.gdtr.limit;
  k.sregs.idt.base = s.idtr.base;
  k.sregs.idt.limit = s.idtr.limit;
  k.sregs.cr0 = s.cr0;
  k.sregs.cr2 = s.cr2;
  k.sregs.cr3 = s.cr3;
  k.sregs.cr4 = s.cr4;
  k.sregs.cr8 = 0;
  k.sregs.efer = 0;
  k.sregs.apic_base = s.msr.apic_base & ~u64(0x800);  // see the header

  k.fpu.fcw = s.fpu.fcw;
  k.fpu.fsw = s.fpu.fsw;
  u8 ftwx = 0;
  for (unsigned p = 0; p < 8; p++)
    if (((s.fpu.ftw >> (2 * p)) & 3) != 3) ftwx |= u8(1u << p);
  k.fpu.ftwx = ftwx;
  k.fpu.last_opcode = s.fpu.fop;
  // The 32-bit FXSAVE layout: FIP, FCS at bytes 8..13, FDP, FDS at 16..21.
  k.fpu.last_ip = s.fpu.fip | u64(s.fpu.fcs) << 32;
  k.fpu.last_dp = s.fpu.fdp | u64(s.fpu.fds) << 32;
  // FXSAVE keeps ST(i), not physical registers.
  for (unsigned i = 0; i < 8; i++) std::memcpy(k.fpu.fpr[i], &s.fpu.regs[(s.fpu.top() + i) & 7], 10);
  k.fpu.mxcsr = 0x1F80;

  k.events.flags = KVM_VCPUEVENT_VALID_SHADOW | KVM_VCPUEVENT_VALID_NMI_PENDING;
  k.events.interrupt.shadow = s.intr_shadow & (SHADOW_MOV_SS | SHADOW_STI);
  k.events.nmi.pending = s.nmi_pending;
  k.events.nmi.masked = s.nmi_blocked;

  k.sysenter_cs = s.msr.sysenter_cs;
  k.sysenter_esp = s.msr.sysenter_esp;
  k.sysenter_eip = s.msr.sysenter_eip;
  return k;
}

void from_kvm(const KvmState& k, CpuState& s) {
  const __u64* gp[8] = {&k.regs.rax, &k.regs.rcx, &k.regs.rdx, &k.regs.rbx,
                      &k.regs.rsp, &k.regs.rbp, &k.regs.rsi, &k.regs.rdi};
  for (int i = 0; i < 8; i++) s.gpr[i] = u32(*gp[i]);
  s.eip = u32(k.regs.rip);
  s.eflags = u32(k.regs.rflags);

  const kvm_segment* sg[6] = {&k.sregs.es, &k.sregs.cs, &k.sregs.ss, &k.sregs.ds, &k.sregs.fs, &k.sregs.gs};
  for (int i = 0; i < 6; i++) s.seg[i] = seg_from_kvm(*sg[i]);
  s.tr = seg_from_kvm(k.sregs.tr);
  s.ldtr = seg_from_kvm(k.sregs.ldt);
  s.gdtr = {u32(k.sregs.gdt.base), k.sregs.gdt.limit};
  s.idtr = {u32(k.sregs.idt.base), k.sregs.idt.limit};
  s.cr0 = u32(k.sregs.cr0);
  s.cr2 = u32(k.sregs.cr2);
  s.cr3 = u32(k.sregs.cr3);
  s.cr4 = u32(k.sregs.cr4);
  // CPL: KVM reports it as SS.DPL (SVM keeps it in the VMCB, VMX in SS's
  // access rights); in real mode it is 0 whatever SS holds.
  s.cpl = (s.cr0 & CR0_PE) ? k.sregs.ss.dpl & 3 : 0;
  if ((s.cr0 & CR0_PE) && (s.eflags & VM)) s.cpl = 3;

  s.fpu.fcw = k.fpu.fcw;
  s.fpu.fsw = k.fpu.fsw;
  s.fpu.fop = k.fpu.last_opcode;
  s.fpu.fip = u32(k.fpu.last_ip);
  s.fpu.fcs = u16(k.fpu.last_ip >> 32);
  s.fpu.fdp = u32(k.fpu.last_dp);
  s.fpu.fds = u16(k.fpu.last_dp >> 32);
  const unsigned top = s.fpu.top();
  for (unsigned i = 0; i < 8; i++) std::memcpy(&s.fpu.regs[(top + i) & 7], k.fpu.fpr[i], 10);
  // The full tag word from FXSAVE's abridged one: what the contents say.
  u16 ftw = 0;
  for (unsigned p = 0; p < 8; p++) {
    const unsigned t = (k.fpu.ftwx >> p) & 1 ? fpu_tag_of(s.fpu.regs[p]) : 3;
    ftw |= u16(t << (2 * p));
  }
  s.fpu.ftw = ftw;

  s.intr_shadow = k.events.interrupt.shadow & (SHADOW_MOV_SS | SHADOW_STI);
  s.nmi_pending = k.events.nmi.pending;
  s.nmi_blocked = k.events.nmi.masked;

  s.msr.sysenter_cs = k.sysenter_cs;
  s.msr.sysenter_esp = k.sysenter_esp;
  s.msr.sysenter_eip = k.sysenter_eip;
}

std::string event_in_flight(const kvm_vcpu_events& e) {
  char buf[96];
  if (e.exception.injected || e.exception.pending) {
    std::snprintf(buf, sizeof buf, "exception %u (%s)", e.exception.nr,
                  e.exception.injected ? "injected" : "pending");
    return buf;
  }
  if (e.interrupt.injected) {
    std::snprintf(buf, sizeof buf, "%s interrupt %u", e.interrupt.soft ? "software" : "external",
                  e.interrupt.nr);
    return buf;
  }
  if (e.nmi.injected) return "NMI";
  return {};
}

}  // namespace popek::engine::kvm
