#include "x86/paravirt.h"

#include <cstring>

#include "x86/cpu.h"
#include "x86/cpuid.h"

namespace popek::x86::pv {

bool cpuid(u32 leaf, CpuidResult* r) {
  switch (leaf) {
    case kCpuidSignature: *r = {kCpuidFeatures, kSigEbx, kSigEcx, kSigEdx}; return true;
    case kCpuidFeatures: *r = {kFeatures, 0, 0, 0}; return true;  // no hints (EDX)
    default: return false;
  }
}

bool is_msr(u32 index) {
  return index == MSR_KVM_WALL_CLOCK || index == MSR_KVM_SYSTEM_TIME ||
         index == MSR_KVM_WALL_CLOCK_NEW || index == MSR_KVM_SYSTEM_TIME_NEW;
}

PvclockVcpuTimeInfo time_info(u32 version, u64 clock_ns, u64 guest_tsc) {
  PvclockVcpuTimeInfo t{};
  t.version = version;
  t.tsc_timestamp = guest_tsc;
  t.system_time = clock_ns;
  t.tsc_to_system_mul = kTscToSystemMul;
  t.tsc_shift = kTscShift;
  t.flags = PVCLOCK_TSC_STABLE_BIT;
  return t;
}

u64 pvclock_read(const PvclockVcpuTimeInfo& t, u64 tsc) {
  u64 delta = tsc - t.tsc_timestamp;
  if (t.tsc_shift < 0) delta >>= -t.tsc_shift;
  else delta <<= t.tsc_shift;
  const u64 scaled = u64((unsigned __int128)delta * t.tsc_to_system_mul >> 32);
  return t.system_time + scaled;
}

namespace {

// KVM's guest-memory update protocol: the version goes odd, the data is
// written, the version goes even. The guest cannot run in between here (one
// vCPU, updates happen inside one instruction), but the protocol is what the
// guest checks, so the final version must differ from what it saw before.
void write_time_info(const CpuState& s, Platform& plat, u64 gpa) {
  u32 old = 0;
  if (!plat.read_phys(gpa, &old, 4)) return;  // not RAM: KVM ignores it too
  const u64 now = plat.tsc();
  PvclockVcpuTimeInfo t = time_info(next_version(old) - 1, now, now + s.msr.tsc_offset);
  if (!plat.write_phys(gpa, &t, sizeof t)) return;
  t.version++;
  plat.write_phys(gpa, &t.version, 4);
}

void write_wall_clock(Cpu& c, u64 gpa) {
  u32 old = 0;
  if (!c.plat.read_phys(gpa, &old, 4)) return;
  const u64 ns = c.plat.wall_clock_epoch_ns();
  PvclockWallClock w{next_version(old) - 1, u32(ns / 1000000000), u32(ns % 1000000000)};
  if (!c.plat.write_phys(gpa, &w, sizeof w)) return;
  w.version++;
  c.plat.write_phys(gpa, &w.version, 4);
}

}  // namespace

u64 read_msr(const Cpu& c, u32 index) {
  switch (index) {
    case MSR_KVM_SYSTEM_TIME: case MSR_KVM_SYSTEM_TIME_NEW: return c.s.msr.kvm_system_time;
    default: return c.s.msr.kvm_wall_clock;
  }
}

void write_msr(Cpu& c, u32 index, u64 v) {
  switch (index) {
    case MSR_KVM_SYSTEM_TIME: case MSR_KVM_SYSTEM_TIME_NEW:
      // Bit 0 enables; the structure's guest-physical address is the rest.
      c.s.msr.kvm_system_time = v;
      update_clock(c);
      return;
    default:
      // Writing the wall-clock MSR asks for the structure to be filled now.
      c.s.msr.kvm_wall_clock = v;
      write_wall_clock(c, v);
      return;
  }
}

void update_clock(Cpu& c) { update_clock(c.s, c.plat); }

void update_clock(CpuState& s, Platform& plat) {
  const u64 v = s.msr.kvm_system_time;
  if (v & 1) write_time_info(s, plat, v & ~u64(1));
}

void hypercall(Cpu& c) {
  CpuState& s = c.s;
  // 32-bit guest: number and arguments are the low halves (all of them here).
  const u32 nr = s.gpr[EAX], a0 = s.gpr[EBX], a1 = s.gpr[ECX];
  i32 ret = -KVM_ENOSYS;
  if (s.cpl != 0) {
    ret = -KVM_EPERM;
  } else {
    switch (nr) {
      case KVM_HC_VAPIC_POLL_IRQ:  // nothing to poll: interrupts are checked after every block
        ret = 0;
        break;
      case KVM_HC_CLOCK_PAIRING: {  // a0: guest-physical address, a1: clock type
        if (a1 != KVM_CLOCK_PAIRING_WALLCLOCK) {
          ret = -KVM_EOPNOTSUPP;
          break;
        }
        const u64 now = c.plat.tsc();
        const u64 wall = c.plat.wall_clock_epoch_ns() + now;
        KvmClockPairing p{};
        p.sec = i64(wall / 1000000000);
        p.nsec = i64(wall % 1000000000);
        p.tsc = now + s.msr.tsc_offset;
        ret = c.plat.write_phys(a0, &p, sizeof p) ? 0 : -KVM_EFAULT;
        break;
      }
      default: break;  // -KVM_ENOSYS, as KVM answers what it does not know
    }
  }
  s.gpr[EAX] = u32(ret);
}

}  // namespace popek::x86::pv
