#include "x86/cpu_state.h"

#include "snapshot/stream.h"

namespace popek::x86 {

// A field added to CpuState must be saved and loaded here too (with a bump of
// kCpuStateVersion and a default for older streams): this fails until then.
static_assert(sizeof(CpuState) == 528, "CpuState changed: update save_cpu_state/load_cpu_state");

namespace {

const char* const kSegNames[6] = {"es", "cs", "ss", "ds", "fs", "gs"};

void put_seg(snap::SectionWriter& w, const std::string& n, const Segment& s) {
  w.u64v(n + ".sel", s.sel);
  w.u64v(n + ".base", s.base);
  w.u64v(n + ".limit", s.limit);
  w.u64v(n + ".attr", s.attr);
}

Segment get_seg(const snap::Section& r, const std::string& n) {
  Segment s;
  s.sel = u16(r.u64v(n + ".sel"));
  s.base = u32(r.u64v(n + ".base"));
  s.limit = u32(r.u64v(n + ".limit"));
  s.attr = u16(r.u64v(n + ".attr"));
  return s;
}

// x87 registers as their 80-bit images (the host long double's first 10 bytes).
constexpr usize kF80 = 10;

}  // namespace

void save_cpu_state(const CpuState& s, snap::SectionWriter& w) {
  w.array("gpr", s.gpr);
  w.u64v("eip", s.eip);
  w.u64v("eflags", s.eflags);
  for (unsigned i = 0; i < 6; i++) put_seg(w, kSegNames[i], s.seg[i]);
  put_seg(w, "ldtr", s.ldtr);
  put_seg(w, "tr", s.tr);
  w.u64v("gdtr.base", s.gdtr.base);
  w.u64v("gdtr.limit", s.gdtr.limit);
  w.u64v("idtr.base", s.idtr.base);
  w.u64v("idtr.limit", s.idtr.limit);
  w.u64v("cr0", s.cr0);
  w.u64v("cr2", s.cr2);
  w.u64v("cr3", s.cr3);
  w.u64v("cr4", s.cr4);
  w.array("dr", s.dr);
  w.u64v("cpl", s.cpl);
  // MSRs
  w.u64v("msr.sysenter_cs", s.msr.sysenter_cs);
  w.u64v("msr.sysenter_esp", s.msr.sysenter_esp);
  w.u64v("msr.sysenter_eip", s.msr.sysenter_eip);
  w.u64v("msr.tsc_offset", s.msr.tsc_offset);
  w.u64v("msr.apic_base", s.msr.apic_base);
  w.u64v("msr.misc_enable", s.msr.misc_enable);
  w.u64v("msr.pat", s.msr.pat);
  w.u64v("msr.mtrr_def_type", s.msr.mtrr_def_type);
  w.u64v("msr.bios_sign_id", s.msr.bios_sign_id);
  w.array("msr.perfctr", s.msr.perfctr);
  w.array("msr.evntsel", s.msr.evntsel);
  w.u64v("msr.kvm_system_time", s.msr.kvm_system_time);  // version 2
  w.u64v("msr.kvm_wall_clock", s.msr.kvm_wall_clock);
  // x87
  w.u64v("fpu.fcw", s.fpu.fcw);
  w.u64v("fpu.fsw", s.fpu.fsw);
  w.u64v("fpu.ftw", s.fpu.ftw);
  w.u64v("fpu.fop", s.fpu.fop);
  w.u64v("fpu.fip", s.fpu.fip);
  w.u64v("fpu.fdp", s.fpu.fdp);
  w.u64v("fpu.fcs", s.fpu.fcs);
  w.u64v("fpu.fds", s.fpu.fds);
  static_assert(sizeof(long double) >= kF80);
  u8 regs[8 * kF80];
  for (unsigned i = 0; i < 8; i++) std::memcpy(regs + i * kF80, &s.fpu.regs[i], kF80);
  w.array("fpu.regs", regs);
  // Events and execution status.
  w.u64v("halted", s.halted);
  w.u64v("shutdown", s.shutdown);
  w.u64v("intr_shadow", s.intr_shadow);
  w.u64v("intr_line", s.intr_line);
  w.u64v("nmi_pending", s.nmi_pending);
  w.u64v("nmi_blocked", s.nmi_blocked);
  w.u64v("a20", s.a20);
  w.u64v("icount", s.icount);
}

void load_cpu_state(CpuState& out, const snap::Section& r) {
  CpuState s;
  r.array("gpr", s.gpr);
  s.eip = u32(r.u64v("eip"));
  s.eflags = u32(r.u64v("eflags"));
  for (unsigned i = 0; i < 6; i++) s.seg[i] = get_seg(r, kSegNames[i]);
  s.ldtr = get_seg(r, "ldtr");
  s.tr = get_seg(r, "tr");
  s.gdtr = {u32(r.u64v("gdtr.base")), u16(r.u64v("gdtr.limit"))};
  s.idtr = {u32(r.u64v("idtr.base")), u16(r.u64v("idtr.limit"))};
  s.cr0 = u32(r.u64v("cr0"));
  s.cr2 = u32(r.u64v("cr2"));
  s.cr3 = u32(r.u64v("cr3"));
  s.cr4 = u32(r.u64v("cr4"));
  r.array("dr", s.dr);
  const u64 cpl = r.u64v("cpl");
  if (cpl > 3) r.fail("CPL " + std::to_string(cpl) + " is not 0 to 3");
  s.cpl = u8(cpl);
  s.msr.sysenter_cs = u32(r.u64v("msr.sysenter_cs"));
  s.msr.sysenter_esp = u32(r.u64v("msr.sysenter_esp"));
  s.msr.sysenter_eip = u32(r.u64v("msr.sysenter_eip"));
  s.msr.tsc_offset = r.u64v("msr.tsc_offset");
  s.msr.apic_base = r.u64v("msr.apic_base");
  s.msr.misc_enable = r.u64v("msr.misc_enable");
  s.msr.pat = r.u64v("msr.pat");
  s.msr.mtrr_def_type = r.u64v("msr.mtrr_def_type");
  s.msr.bios_sign_id = r.u64v("msr.bios_sign_id");
  r.array("msr.perfctr", s.msr.perfctr);
  r.array("msr.evntsel", s.msr.evntsel);
  if (r.version >= 2) {  // version 1 had no kvm-clock: off
    s.msr.kvm_system_time = r.u64v("msr.kvm_system_time");
    s.msr.kvm_wall_clock = r.u64v("msr.kvm_wall_clock");
  }
  s.fpu.fcw = u16(r.u64v("fpu.fcw"));
  s.fpu.fsw = u16(r.u64v("fpu.fsw"));
  s.fpu.ftw = u16(r.u64v("fpu.ftw"));
  s.fpu.fop = u16(r.u64v("fpu.fop"));
  s.fpu.fip = u32(r.u64v("fpu.fip"));
  s.fpu.fdp = u32(r.u64v("fpu.fdp"));
  s.fpu.fcs = u16(r.u64v("fpu.fcs"));
  s.fpu.fds = u16(r.u64v("fpu.fds"));
  auto regs = r.exact("fpu.regs", 8 * kF80);
  for (unsigned i = 0; i < 8; i++) {
    s.fpu.regs[i] = 0;
    std::memcpy(&s.fpu.regs[i], regs.data() + i * kF80, kF80);
  }
  s.halted = r.u64v("halted");
  s.shutdown = r.u64v("shutdown");
  s.intr_shadow = u8(r.u64v("intr_shadow") & (SHADOW_MOV_SS | SHADOW_STI));
  s.intr_line = r.u64v("intr_line");
  s.nmi_pending = r.u64v("nmi_pending");
  s.nmi_blocked = r.u64v("nmi_blocked");
  s.a20 = r.u64v("a20");
  s.icount = r.u64v("icount");
  r.check_all_read();
  out = s;
}

}  // namespace popek::x86
