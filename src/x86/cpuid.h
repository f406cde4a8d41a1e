// The CPU model popek presents: a Pentium II class CPU, as data.
#pragma once
#include "base/types.h"
#include "x86/cpu_state.h"

namespace popek::x86 {

struct CpuidResult {
  u32 eax, ebx, ecx, edx;
};
// `paravirt`: KVM's paravirtual interface is on (x86/paravirt.h): CPUID.1
// says "hypervisor present" and 0x40000000/0x40000001 hold KVM's leaves.
CpuidResult cpuid(u32 leaf, u32 subleaf, bool paravirt = false);

// CPUID.1:EDX bits popek sets.
enum : u32 {
  FEAT_FPU = 1u << 0, FEAT_VME = 1u << 1, FEAT_DE = 1u << 2, FEAT_PSE = 1u << 3,
  FEAT_TSC = 1u << 4, FEAT_MSR = 1u << 5, FEAT_PAE = 1u << 6, FEAT_CX8 = 1u << 8,
  FEAT_APIC = 1u << 9, FEAT_SEP = 1u << 11, FEAT_PGE = 1u << 13, FEAT_CMOV = 1u << 15,
  FEAT_MMX = 1u << 23, FEAT_FXSR = 1u << 24,
};
inline constexpr u32 kFeaturesEdx =
    FEAT_FPU | FEAT_DE | FEAT_PSE | FEAT_TSC | FEAT_MSR | FEAT_CX8 | FEAT_SEP | FEAT_PGE | FEAT_CMOV |
    FEAT_MMX;
// CR4 bits the model supports (the rest #GP when set).
inline constexpr u32 kCr4Supported = CR4_TSD | CR4_DE | CR4_PSE | CR4_PGE | CR4_PCE;

// MSR access; false means the MSR does not exist (#GP). `tsc` is the clock's
// TSC before the guest's offset.
bool read_msr(const CpuState& s, u32 index, u64 tsc, u64* value);
bool write_msr(CpuState& s, u32 index, u64 value, u64 tsc);

}  // namespace popek::x86
