// KVM's paravirtual interface (x86/paravirt.h): the CPUID leaves, the
// kvm-clock MSRs and the structures they fill in guest memory, and the
// hypercall instruction, with it on and off.
#include <gtest/gtest.h>

#include <cstring>
#include <vector>

#include "x86/cpu.h"
#include "x86/cpuid.h"
#include "x86/insn.h"
#include "x86/paravirt.h"
#include "snapshot/stream.h"

namespace popek::x86 {
namespace {

constexpr u32 kRam = 1u << 16;

class NoMem : public LinearMem {
 public:
  u32 read(u32, unsigned, bool) override { raise_fault(PF_V, 0); }
  void write(u32, unsigned, u32, bool) override { raise_fault(PF_V, 0); }
  u64 read64(u32, bool) override { raise_fault(PF_V, 0); }
  void write64(u32, u64, bool) override { raise_fault(PF_V, 0); }
  void probe_write(u32, unsigned, bool) override {}
  void flush_tlb(bool) override {}
  void invlpg(u32) override {}
};

class PvPlatform : public Platform {
 public:
  bool pv = true;
  u64 now = 5'000'000'000;  // clock time (= TSC before the guest's offset)
  u64 wall = 1'767'225'600'123'456'789ull;
  std::vector<u8> ram = std::vector<u8>(kRam);
  unsigned writes = 0;
  u32 io_in(u16, unsigned) override { return 0; }
  void io_out(u16, unsigned, u32) override {}
  u64 tsc() override { return now; }
  u8 intr_ack() override { return 0; }
  bool paravirt() override { return pv; }
  bool read_phys(u64 pa, void* dst, unsigned len) override {
    if (pa + len > kRam) return false;
    std::memcpy(dst, &ram[pa], len);
    return true;
  }
  bool write_phys(u64 pa, const void* src, unsigned len) override {
    if (pa + len > kRam) return false;
    std::memcpy(&ram[pa], src, len);
    writes++;
    return true;
  }
  u64 wall_clock_epoch_ns() override { return wall; }
};

struct Vm {
  CpuState s;
  NoMem mem;
  PvPlatform plat;
  Cpu cpu{s, mem, plat};
  Vm() {
    s.reset();
    s.cr0 = CR0_PE | CR0_ET;
    for (auto& sg : s.seg) sg = Segment{0x10, 0, 0xFFFFFFFF, 0xC093};
    s.seg[CS] = Segment{0x08, 0, 0xFFFFFFFF, 0xC09B};
  }
  void exec(std::vector<u8> v) {
    Insn i;
    ASSERT_EQ(decode(v.data(), unsigned(v.size()), true, &i), DecodeStatus::ok);
    ASSERT_EQ(i.len, v.size());
    handler_for(i)(cpu, i);
  }
  void wrmsr(u32 index, u64 v) {
    s.gpr[ECX] = index;
    s.gpr[EAX] = u32(v);
    s.gpr[EDX] = u32(v >> 32);
    exec({0x0F, 0x30});
  }
  u64 rdmsr(u32 index) {
    s.gpr[ECX] = index;
    exec({0x0F, 0x32});
    return u64(s.gpr[EDX]) << 32 | s.gpr[EAX];
  }
  CpuidResult cpuid(u32 leaf) {
    s.gpr[EAX] = leaf;
    s.gpr[ECX] = 0;
    exec({0x0F, 0xA2});
    return {s.gpr[EAX], s.gpr[EBX], s.gpr[ECX], s.gpr[EDX]};
  }
  template <typename T> T at(u32 pa) {
    T t;
    std::memcpy(&t, &plat.ram[pa], sizeof t);
    return t;
  }
};

bool faults(Vm& vm, std::vector<u8> code, u8 vector) {
  try {
    vm.exec(code);
  } catch (const Fault& f) {
    return f.vector == vector;
  }
  return false;
}

TEST(Paravirt, CpuidLeaves) {
  Vm vm;
  CpuidResult r = vm.cpuid(0x40000000);
  EXPECT_EQ(r.eax, 0x40000001u);
  char sig[13] = {};
  std::memcpy(sig, &r.ebx, 4);
  std::memcpy(sig + 4, &r.ecx, 4);
  std::memcpy(sig + 8, &r.edx, 4);
  EXPECT_EQ(0, std::memcmp(sig, "KVMKVMKVM\0\0\0", 12));
  r = vm.cpuid(0x40000001);
  EXPECT_EQ(r.eax, (1u << 0) | (1u << 1) | (1u << 3) | (1u << 24));
  EXPECT_EQ(r.edx, 0u);  // no hints (KVM_HINTS_REALTIME)
  EXPECT_TRUE(vm.cpuid(1).ecx & (1u << 31));  // hypervisor present
  EXPECT_EQ(vm.cpuid(1).edx, cpuid(1, 0).edx);
}

TEST(Paravirt, CpuidBeyondMaxLeafUnchanged) {
  // Other leaves keep answering like the highest basic leaf (Intel), with
  // and without paravirt: 0x40000002, Linux's probes at 0x40000100 steps.
  const CpuidResult leaf2 = cpuid(2, 0);
  for (u32 leaf : {3u, 0x40000002u, 0x40000100u, 0x40000200u, 0x4FFFFFFFu}) {
    for (bool pv : {false, true}) {
      CpuidResult r = cpuid(leaf, 0, pv);
      EXPECT_EQ(r.eax, leaf2.eax) << std::hex << leaf;
      EXPECT_EQ(r.edx, leaf2.edx) << std::hex << leaf;
    }
  }
  EXPECT_EQ(cpuid(0x80000000, 0, true).eax, 0u);
  // Off: the 0x40000000 range is as before, no hypervisor bit.
  Vm vm;
  vm.plat.pv = false;
  EXPECT_EQ(vm.cpuid(0x40000000).eax, leaf2.eax);
  EXPECT_EQ(vm.cpuid(0x40000000).ebx, leaf2.ebx);
  EXPECT_FALSE(vm.cpuid(1).ecx & (1u << 31));
}

TEST(Paravirt, SystemTimeStructure) {
  Vm vm;
  vm.s.msr.tsc_offset = u64(-1000);  // the guest wrote its TSC once
  std::memset(&vm.plat.ram[0x1000], 0xAA, 32);  // junk, odd version
  vm.wrmsr(pv::MSR_KVM_SYSTEM_TIME_NEW, 0x1000 | 1);
  EXPECT_EQ(vm.rdmsr(pv::MSR_KVM_SYSTEM_TIME_NEW), 0x1001u);
  auto t = vm.at<pv::PvclockVcpuTimeInfo>(0x1000);
  EXPECT_EQ(t.version % 2, 0u);
  EXPECT_NE(t.version, 0xAAAAAAAAu);
  EXPECT_EQ(t.system_time, 5'000'000'000u);
  EXPECT_EQ(t.tsc_timestamp, 5'000'000'000u - 1000);
  EXPECT_EQ(t.tsc_to_system_mul, 0x80000000u);
  EXPECT_EQ(t.tsc_shift, 1);
  EXPECT_EQ(t.flags, pv::PVCLOCK_TSC_STABLE_BIT);
  // The guest's formula gives the clock's time at any later TSC, exactly.
  for (u64 dt : {0ull, 1ull, 999'999'999ull, 3600'000'000'000ull})
    EXPECT_EQ(pv::pvclock_read(t, t.tsc_timestamp + dt), 5'000'000'000u + dt);
  // A TSC write moves the guest TSC: the structure follows, version moves on.
  const u32 v0 = t.version;
  vm.plat.now += 77;
  vm.wrmsr(0x10, 0);
  t = vm.at<pv::PvclockVcpuTimeInfo>(0x1000);
  EXPECT_EQ(t.version, v0 + 2);
  EXPECT_EQ(t.tsc_timestamp, 0u);
  EXPECT_EQ(t.system_time, 5'000'000'077u);
  // Off (bit 0 clear): nothing is written any more.
  const unsigned w = vm.plat.writes;
  vm.wrmsr(pv::MSR_KVM_SYSTEM_TIME_NEW, 0x1000);
  vm.wrmsr(0x10, 5);
  EXPECT_EQ(vm.plat.writes, w);
  // The old MSR works the same; an address outside RAM is ignored, no #GP.
  vm.wrmsr(pv::MSR_KVM_SYSTEM_TIME, 0x2000 | 1);
  EXPECT_EQ(vm.at<pv::PvclockVcpuTimeInfo>(0x2000).flags, pv::PVCLOCK_TSC_STABLE_BIT);
  vm.wrmsr(pv::MSR_KVM_SYSTEM_TIME_NEW, 0x7FFF0001ull);
  EXPECT_EQ(vm.rdmsr(pv::MSR_KVM_SYSTEM_TIME), 0x7FFF0001u);
}

TEST(Paravirt, WallClockStructure) {
  Vm vm;
  vm.wrmsr(pv::MSR_KVM_WALL_CLOCK_NEW, 0x3000);
  auto w = vm.at<pv::PvclockWallClock>(0x3000);
  EXPECT_EQ(w.version, 2u);
  EXPECT_EQ(w.sec, 1'767'225'600u);
  EXPECT_EQ(w.nsec, 123'456'789u);
  EXPECT_EQ(vm.rdmsr(pv::MSR_KVM_WALL_CLOCK_NEW), 0x3000u);
  vm.wrmsr(pv::MSR_KVM_WALL_CLOCK, 0x3000);
  EXPECT_EQ(vm.at<pv::PvclockWallClock>(0x3000).version, 4u);
}

TEST(Paravirt, MsrsAbsentWithoutParavirt) {
  Vm vm;
  vm.plat.pv = false;
  for (u32 index : {0x11u, 0x12u, 0x4b564d00u, 0x4b564d01u}) {
    vm.s.gpr[ECX] = index;
    EXPECT_TRUE(faults(vm, {0x0F, 0x32}, GP)) << std::hex << index;
    EXPECT_TRUE(faults(vm, {0x0F, 0x30}, GP)) << std::hex << index;
  }
  EXPECT_EQ(vm.plat.writes, 0u);
}

TEST(Paravirt, Hypercalls) {
  for (std::vector<u8> insn : {std::vector<u8>{0x0F, 0x01, 0xC1}, std::vector<u8>{0x0F, 0x01, 0xD9}}) {
    Vm vm;
    vm.s.gpr[EBX] = 0x1234;
    vm.s.gpr[EAX] = pv::KVM_HC_VAPIC_POLL_IRQ;
    vm.exec(insn);
    EXPECT_EQ(vm.s.gpr[EAX], 0u);
    EXPECT_EQ(vm.s.gpr[EBX], 0x1234u);
    for (u32 nr : {0u, 2u, 3u, 5u, 10u, 11u, 12u, 999u}) {
      vm.s.gpr[EAX] = nr;
      vm.exec(insn);
      EXPECT_EQ(i32(vm.s.gpr[EAX]), -1000) << nr;  // -KVM_ENOSYS
    }
    // KVM_HC_CLOCK_PAIRING: host wall clock and guest TSC at one instant.
    vm.s.gpr[EAX] = pv::KVM_HC_CLOCK_PAIRING;
    vm.s.gpr[EBX] = 0x4000;
    vm.s.gpr[ECX] = pv::KVM_CLOCK_PAIRING_WALLCLOCK;
    vm.exec(insn);
    EXPECT_EQ(vm.s.gpr[EAX], 0u);
    auto p = vm.at<pv::KvmClockPairing>(0x4000);
    EXPECT_EQ(p.sec, 1'767'225'605);
    EXPECT_EQ(p.nsec, 123'456'789);
    EXPECT_EQ(p.tsc, 5'000'000'000u);
    vm.s.gpr[EAX] = pv::KVM_HC_CLOCK_PAIRING;
    vm.s.gpr[ECX] = 1;
    vm.exec(insn);
    EXPECT_EQ(i32(vm.s.gpr[EAX]), -95);  // -KVM_EOPNOTSUPP
    vm.s.gpr[EAX] = pv::KVM_HC_CLOCK_PAIRING;
    vm.s.gpr[EBX] = kRam - 8;
    vm.s.gpr[ECX] = 0;
    vm.exec(insn);
    EXPECT_EQ(i32(vm.s.gpr[EAX]), -14);  // -KVM_EFAULT
    // From user mode: -KVM_EPERM, as KVM answers.
    vm.s.cpl = 3;
    vm.s.gpr[EAX] = pv::KVM_HC_VAPIC_POLL_IRQ;
    vm.exec(insn);
    EXPECT_EQ(i32(vm.s.gpr[EAX]), -1);
    // Off: #UD as before.
    vm.s.cpl = 0;
    vm.plat.pv = false;
    EXPECT_TRUE(faults(vm, insn, UD));
  }
}

TEST(Paravirt, MsrsSavedWithTheCpu) {
  CpuState s;
  s.reset();
  s.msr.kvm_system_time = 0x12345001;
  s.msr.kvm_wall_clock = 0x6000;
  snap::MemorySink sink;
  snap::StreamWriter w(sink);
  snap::SectionWriter sec;
  save_cpu_state(s, sec);
  w.section("cpu", kCpuStateVersion, sec);
  w.end();
  snap::MemorySource src(sink.bytes);
  snap::StreamReader r(src, "t");
  snap::Loader ld;
  CpuState back;
  ld.on("cpu", kCpuStateVersion, [&](const snap::Section& sct) { load_cpu_state(back, sct); });
  ld.run(r);
  EXPECT_EQ(back.msr.kvm_system_time, 0x12345001u);
  EXPECT_EQ(back.msr.kvm_wall_clock, 0x6000u);
}

}  // namespace
}  // namespace popek::x86
