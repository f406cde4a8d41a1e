// CpuState <-> the KVM register structures (kvm_regs, kvm_sregs, kvm_fpu,
// kvm_vcpu_events, MSR entries). Pure conversions: no ioctl, no /dev/kvm, so
// they are tested anywhere. The engine (kvm.cpp) moves the structures in and
// out of the vCPU.
#pragma once
#include <linux/kvm.h>

#include <string>

#include "base/types.h"
#include "x86/cpu_state.h"

namespace popek::engine::kvm {

// The MSRs KVM itself keeps for the guest (the rest go to popek's model
// through user-space MSR exits): SYSENTER_CS/ESP/EIP and the TSC.
inline constexpr u32 kMsrTsc = 0x10;
inline constexpr u32 kMsrSysenterCs = 0x174, kMsrSysenterEsp = 0x175, kMsrSysenterEip = 0x176;

struct KvmState {
  kvm_regs regs{};
  kvm_sregs sregs{};
  kvm_fpu fpu{};
  kvm_vcpu_events events{};
  u32 sysenter_cs = 0, sysenter_esp = 0, sysenter_eip = 0;
};

// CpuState -> KVM. `apic_base` is what KVM is given for the APIC base MSR:
// without the enable bit, since KVM derives CPUID.1:EDX.APIC from it and
// popek's CPU model has no APIC (CpuState::msr.apic_base stays popek's).
KvmState to_kvm(const x86::CpuState& s);
// KVM -> CpuState: the fields KVM holds (registers, segments with their
// caches, control and table registers, CPL, x87, SYSENTER MSRs, interrupt
// shadow, NMI state). Fields KVM does not hold (icount, intr_line, halted,
// shutdown, a20, popek-side MSRs, DR0-7) are left as they are.
void from_kvm(const KvmState& k, x86::CpuState& s);

// An event KVM has injected or queued but not yet delivered (an exception, an
// external interrupt, an NMI being injected): CpuState cannot say "half
// delivered", so the engine runs the vCPU on until there is none. Empty when
// there is none; otherwise says what it is.
std::string event_in_flight(const kvm_vcpu_events& e);

// The x87 tag of a register's contents (00 valid, 01 zero, 10 special).
unsigned fpu_tag_of(const long double& v);

}  // namespace popek::engine::kvm
