#include "x86/cpuid.h"

#include "x86/paravirt.h"

namespace popek::x86 {

CpuidResult cpuid(u32 leaf, u32, bool paravirt) {
  if (paravirt) {
    if (leaf == 1) return {0x00000652, 0, pv::kHypervisorBit, kFeaturesEdx};
    CpuidResult r;
    if (pv::cpuid(leaf, &r)) return r;
    // Every other leaf, 0x40000002.. and the 0x40000100 steps Linux probes
    // for other hypervisors included, answers as without paravirt.
  }
  switch (leaf) {
    case 0:  // max leaf 2, "GenuineIntel"
      return {2, 0x756E6547, 0x6C65746E, 0x49656E69};
    case 1:  // family 6, model 5, stepping 2 (Pentium II "Deschutes")
      return {0x00000652, 0, 0, kFeaturesEdx};
    case 2:  // cache descriptors: 16K L1 I/D, 512K L2, TLBs
      return {0x03020101, 0, 0, 0x0C040843};
    default:
      // Beyond the maximum leaf (including 0x80000000: no extended leaves),
      // Intel CPUs return the highest basic leaf's data; 0 tells Linux there
      // are no extended leaves, which is what a Pentium II reports.
      if (leaf >= 0x80000000u) return {0, 0, 0, 0};
      return {0x03020101, 0, 0, 0x0C040843};
  }
}

enum : u32 {
  MSR_TSC = 0x10, MSR_PLATFORM_ID = 0x17, MSR_APIC_BASE = 0x1B, MSR_BIOS_SIGN_ID = 0x8B,
  MSR_SYSENTER_CS = 0x174, MSR_SYSENTER_ESP = 0x175, MSR_SYSENTER_EIP = 0x176,
  MSR_MCG_CAP = 0x179, MSR_MISC_ENABLE = 0x1A0,
  // P6 performance counters: present and writable, but they do not count
  // (no event ever increments them; there is no local APIC for their interrupt).
  MSR_PERFCTR0 = 0xC1, MSR_PERFCTR1 = 0xC2, MSR_EVNTSEL0 = 0x186, MSR_EVNTSEL1 = 0x187,
};

bool read_msr(const CpuState& s, u32 index, u64 tsc, u64* v) {
  switch (index) {
    case MSR_TSC: *v = tsc + s.msr.tsc_offset; return true;
    case MSR_PLATFORM_ID: *v = 0; return true;
    case MSR_BIOS_SIGN_ID: *v = s.msr.bios_sign_id; return true;
    case MSR_SYSENTER_CS: *v = s.msr.sysenter_cs; return true;
    case MSR_SYSENTER_ESP: *v = s.msr.sysenter_esp; return true;
    case MSR_SYSENTER_EIP: *v = s.msr.sysenter_eip; return true;
    case MSR_MISC_ENABLE: *v = s.msr.misc_enable; return true;
    case MSR_PERFCTR0: case MSR_PERFCTR1: *v = s.msr.perfctr[index - MSR_PERFCTR0]; return true;
    case MSR_EVNTSEL0: case MSR_EVNTSEL1: *v = s.msr.evntsel[index - MSR_EVNTSEL0]; return true;
    default: return false;
  }
}

bool write_msr(CpuState& s, u32 index, u64 v, u64 tsc) {
  switch (index) {
    case MSR_TSC: s.msr.tsc_offset = v - tsc; return true;
    case MSR_BIOS_SIGN_ID: s.msr.bios_sign_id = v; return true;  // microcode probe
    case MSR_SYSENTER_CS: s.msr.sysenter_cs = u32(v & 0xFFFF); return true;
    case MSR_SYSENTER_ESP: s.msr.sysenter_esp = u32(v); return true;
    case MSR_SYSENTER_EIP: s.msr.sysenter_eip = u32(v); return true;
    case MSR_MISC_ENABLE: s.msr.misc_enable = v; return true;
    // P6 counters are 40 bits wide; a write sets the low 32 bits sign-extended.
    case MSR_PERFCTR0: case MSR_PERFCTR1:
      s.msr.perfctr[index - MSR_PERFCTR0] = u64(i64(i32(u32(v)))) & 0xFFFFFFFFFFull;
      return true;
    case MSR_EVNTSEL0: case MSR_EVNTSEL1: s.msr.evntsel[index - MSR_EVNTSEL0] = u32(v); return true;
    default: return false;
  }
}

}  // namespace popek::x86
