// KVM's paravirtual guest ABI, as popek's software engines (interp, bt)
// provide it: the facts of Linux's Documentation/virt/kvm/x86/{cpuid,msr,
// hypercalls}.rst and the pvclock structures, plus the semantics that act on
// them (CPUID leaves, MSRs, VMCALL/VMMCALL). A stock Linux guest built with
// CONFIG_KVM_GUEST finds "KVMKVMKVM" at CPUID 0x40000000 and then uses
// kvm-clock instead of calibrating its TSC against the PIT.
//
// What popek provides: the CPUID leaves, kvm-clock (old and new MSRs, with
// PVCLOCK_TSC_STABLE_BIT: the TSC and the virtual clock are one time base),
// the no-op port-0x80 delay hint, and the hypercall instruction with
// KVM_HC_VAPIC_POLL_IRQ and KVM_HC_CLOCK_PAIRING. What it does not: steal
// time, PV EOI, async page faults, PV spinlocks/unhalt, PV TLB flush, PV IPIs,
// poll control (none of them is announced, so the guest does not use them).
// Whether the ABI is on is the board's choice (Platform::paravirt()).
#pragma once
#include "base/types.h"

namespace popek::x86 {
class Cpu;
class Platform;
struct CpuState;
struct CpuidResult;
}  // namespace popek::x86

namespace popek::x86::pv {

// ---- CPUID ----
inline constexpr u32 kCpuidSignature = 0x40000000;  // EAX: max leaf; EBX..EDX "KVMKVMKVM\0\0\0"
inline constexpr u32 kCpuidFeatures = 0x40000001;   // EAX: KVM_FEATURE_* bits; EDX: hints
inline constexpr u32 kSigEbx = 0x4b4d564b, kSigEcx = 0x564b4d56, kSigEdx = 0x0000004d;
// CPUID.1:ECX bit 31: "running under a hypervisor" (Linux looks for the
// signature only when it is set).
inline constexpr u32 kHypervisorBit = 1u << 31;

enum : u32 {
  KVM_FEATURE_CLOCKSOURCE = 1u << 0,   // kvm-clock through MSRs 0x11/0x12
  KVM_FEATURE_NOP_IO_DELAY = 1u << 1,  // port 0x80 delays are not needed
  KVM_FEATURE_CLOCKSOURCE2 = 1u << 3,  // kvm-clock through MSRs 0x4b564d00/01
  KVM_FEATURE_CLOCKSOURCE_STABLE_BIT = 1u << 24,  // PVCLOCK_TSC_STABLE_BIT may be trusted
};
inline constexpr u32 kFeatures = KVM_FEATURE_CLOCKSOURCE | KVM_FEATURE_NOP_IO_DELAY |
                                 KVM_FEATURE_CLOCKSOURCE2 | KVM_FEATURE_CLOCKSOURCE_STABLE_BIT;

// The leaves the paravirtual interface answers (false: not one of them).
bool cpuid(u32 leaf, CpuidResult* r);

// ---- MSRs ----
enum : u32 {
  MSR_KVM_WALL_CLOCK = 0x11, MSR_KVM_SYSTEM_TIME = 0x12,
  MSR_KVM_WALL_CLOCK_NEW = 0x4b564d00, MSR_KVM_SYSTEM_TIME_NEW = 0x4b564d01,
};
bool is_msr(u32 index);

// ---- pvclock structures (guest memory, little-endian, packed) ----
enum : u8 { PVCLOCK_TSC_STABLE_BIT = 1u << 0, PVCLOCK_GUEST_STOPPED = 1u << 1 };
struct PvclockVcpuTimeInfo {
  u32 version;  // odd while the VMM updates the structure
  u32 pad0;
  u64 tsc_timestamp;  // guest TSC at system_time
  u64 system_time;    // ns since the clock's zero
  u32 tsc_to_system_mul;
  i8 tsc_shift;
  u8 flags;
  u8 pad[2];
};
static_assert(sizeof(PvclockVcpuTimeInfo) == 32);
struct PvclockWallClock {
  u32 version;
  u32 sec;   // wall-clock time (since 1970, UTC) when system_time was 0
  u32 nsec;
};
static_assert(sizeof(PvclockWallClock) == 12);

// popek's TSC runs at 1 GHz on the clock's own time base: time = system_time
// + (tsc - tsc_timestamp) exactly, i.e. ((delta << 1) * 2^31) >> 32.
inline constexpr u32 kTscToSystemMul = 0x80000000u;
inline constexpr i8 kTscShift = 1;

// The time info for clock time `clock_ns` read at guest TSC `guest_tsc`.
PvclockVcpuTimeInfo time_info(u32 version, u64 clock_ns, u64 guest_tsc);
// What a guest computes from it at guest TSC `tsc` (pvclock's formula).
u64 pvclock_read(const PvclockVcpuTimeInfo& t, u64 tsc);
// The next even version after `old` (KVM's protocol: odd while updating).
inline u32 next_version(u32 old) { return ((old + 1) | 1) + 1; }

// ---- hypercalls: EAX = number, EBX, ECX, EDX, ESI = arguments; result in EAX ----
enum : u32 {
  KVM_HC_VAPIC_POLL_IRQ = 1, KVM_HC_MMU_OP = 2, KVM_HC_FEATURES = 3,
  KVM_HC_PPC_MAP_MAGIC_PAGE = 4, KVM_HC_KICK_CPU = 5, KVM_HC_MIPS_GET_CLOCK_FREQ = 6,
  KVM_HC_MIPS_EXIT_VM = 7, KVM_HC_MIPS_CONSOLE_OUTPUT = 8, KVM_HC_CLOCK_PAIRING = 9,
  KVM_HC_SEND_IPI = 10, KVM_HC_SCHED_YIELD = 11, KVM_HC_MAP_GPA_RANGE = 12,
};
enum : i32 {
  KVM_EPERM = 1, KVM_EFAULT = 14, KVM_EINVAL = 22, KVM_E2BIG = 7, KVM_EOPNOTSUPP = 95,
  KVM_ENOSYS = 1000,
};
inline constexpr u32 KVM_CLOCK_PAIRING_WALLCLOCK = 0;
struct KvmClockPairing {
  i64 sec, nsec;  // host wall-clock time
  u64 tsc;        // the guest TSC at that instant
  u32 flags;
  u32 pad[9];
};
static_assert(sizeof(KvmClockPairing) == 64);

// ---- semantics (act on the Cpu and its Platform; call only with
// Platform::paravirt() true) ----
// RDMSR/WRMSR of one of is_msr()'s indices.
u64 read_msr(const Cpu& c, u32 index);
void write_msr(Cpu& c, u32 index, u64 value);
// Rewrites the guest's pvclock structure if kvm-clock is on (after the guest
// TSC's offset changed).
void update_clock(Cpu& c);
// The same for a CpuState outside any Cpu (the kvm engine handing the
// guest to interp/bt: KVM's structure holds KVM's TSC scale, popek's own
// replaces it).
void update_clock(CpuState& s, Platform& plat);
// VMCALL / VMMCALL.
void hypercall(Cpu& c);

}  // namespace popek::x86::pv
