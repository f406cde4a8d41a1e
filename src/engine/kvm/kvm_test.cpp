// The kvm engine: CpuState <-> KVM conversions (everywhere), the same round
// trip through a real vCPU, CPUID as the guest sees it, and small programs run
// on kvm and on interp to the same state (where /dev/kvm works; skipped with
// the reason otherwise).
#include <fcntl.h>
#include <linux/kvm.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cstring>
#include <algorithm>
#include <random>

#include <gtest/gtest.h>

#include "engine/interp/interp.h"
#include "engine/kvm/kvm.h"
#include "engine/kvm/kvm_state.h"
#include "x86/cpuid.h"
#include "x86/paravirt.h"

namespace popek::engine {
namespace {

using namespace popek::x86;

// Fields KVM holds, compared one by one so a failure names the field.
void expect_same(const CpuState& a, const CpuState& b, bool x87_pointers = true) {
  for (int i = 0; i < 8; i++) EXPECT_EQ(a.gpr[i], b.gpr[i]) << "gpr " << i;
  EXPECT_EQ(a.eip, b.eip);
  EXPECT_EQ(a.eflags, b.eflags);
  auto seg = [](const Segment& x, const Segment& y, const char* name) {
    EXPECT_EQ(x.sel, y.sel) << name;
    EXPECT_EQ(x.base, y.base) << name;
    EXPECT_EQ(x.limit, y.limit) << name;
    EXPECT_EQ(x.attr, y.attr) << name;
  };
  const char* names[6] = {"es", "cs", "ss", "ds", "fs", "gs"};
  for (int i = 0; i < 6; i++) seg(a.seg[i], b.seg[i], names[i]);
  seg(a.ldtr, b.ldtr, "ldtr");
  seg(a.tr, b.tr, "tr");
  EXPECT_EQ(a.gdtr.base, b.gdtr.base);
  EXPECT_EQ(a.gdtr.limit, b.gdtr.limit);
  EXPECT_EQ(a.idtr.base, b.idtr.base);
  EXPECT_EQ(a.idtr.limit, b.idtr.limit);
  EXPECT_EQ(a.cr0, b.cr0);
  EXPECT_EQ(a.cr2, b.cr2);
  EXPECT_EQ(a.cr3, b.cr3);
  EXPECT_EQ(a.cr4, b.cr4);
  EXPECT_EQ(a.cpl, b.cpl);
  EXPECT_EQ(a.fpu.fcw, b.fpu.fcw);
  EXPECT_EQ(a.fpu.fsw, b.fpu.fsw);
  EXPECT_EQ(a.fpu.ftw, b.fpu.ftw);
  if (x87_pointers) {
    EXPECT_EQ(a.fpu.fop, b.fpu.fop);
    EXPECT_EQ(a.fpu.fip, b.fpu.fip);
    EXPECT_EQ(a.fpu.fdp, b.fpu.fdp);
    EXPECT_EQ(a.fpu.fcs, b.fpu.fcs);
    EXPECT_EQ(a.fpu.fds, b.fpu.fds);
  }
  for (int i = 0; i < 8; i++)
    EXPECT_EQ(0, std::memcmp(&a.fpu.regs[i], &b.fpu.regs[i], 10)) << "st physical " << i;
  EXPECT_EQ(a.intr_shadow, b.intr_shadow);
  EXPECT_EQ(a.nmi_pending, b.nmi_pending);
  EXPECT_EQ(a.nmi_blocked, b.nmi_blocked);
  EXPECT_EQ(a.msr.sysenter_cs, b.msr.sysenter_cs);
  EXPECT_EQ(a.msr.sysenter_esp, b.msr.sysenter_esp);
  EXPECT_EQ(a.msr.sysenter_eip, b.msr.sysenter_eip);
}

Segment flat(u16 sel, u16 attr) { return Segment{sel, 0, 0xFFFFFFFF, attr}; }

// A few states a guest can be in: reset, flat protected mode at CPL 0 and 3,
// 16-bit protected mode, with an x87 stack in use.
std::vector<CpuState> sample_states() {
  std::vector<CpuState> v;
  CpuState r;
  r.reset();
  v.push_back(r);

  CpuState p;
  p.reset();
  p.cr0 = CR0_PE | CR0_ET | CR0_PG | CR0_WP | CR0_NE;
  p.cr3 = 0x12000;
  p.cr4 = CR4_PSE | CR4_PGE;
  p.cr2 = 0xDEADB000;
  p.seg[CS] = flat(0x08, 0xC09B);
  for (int s : {ES, SS, DS, FS, GS}) p.seg[s] = flat(0x10, 0xC093);
  p.seg[FS] = Segment{0, 0, 0, 0};  // null: unusable
  p.tr = Segment{0x28, 0x3000, 0x67, 0x8B};
  p.ldtr = Segment{0x30, 0x5000, 0xFF, 0x82};
  p.gdtr = {0x1000, 0xFF};
  p.idtr = {0x2000, 0x7FF};
  u32 g[8] = {1, 0x80000001, 0xFFFFFFFF, 0x12345678, 0x8FFF0, 0x9ABC, 0x55AA55AA, 7};
  std::memcpy(p.gpr, g, sizeof g);
  p.eip = 0xC0101234;
  p.eflags = FLAGS_FIXED1 | IF | CF | ZF | OF | DF;
  p.msr.sysenter_cs = 0x60;
  p.msr.sysenter_esp = 0xC1000000;
  p.msr.sysenter_eip = 0xC0100000;
  p.fpu.fcw = 0x037F;
  p.fpu.set_top(6);
  p.fpu.regs[6] = 1.5L;
  p.fpu.regs[7] = 0.0L;
  p.fpu.ftw = 0xFFFF & ~(3u << 12) & ~(3u << 14);
  p.fpu.ftw |= 1u << 14;  // physical 7 holds zero: tag 01
  p.fpu.fop = 0x1D9;
  p.fpu.fip = 0xC0105555;
  p.fpu.fdp = 0xC0206666;
  v.push_back(p);

  CpuState u = p;  // ring 3
  u.seg[CS] = flat(0x1B, 0xC0FB);
  u.seg[SS] = flat(0x23, 0xC0F3);
  u.seg[DS] = u.seg[ES] = u.seg[SS];
  u.cpl = 3;
  u.intr_shadow = SHADOW_STI;
  v.push_back(u);

  CpuState w;  // 16-bit protected mode, paging off, MOV SS shadow
  w.reset();
  w.cr0 = CR0_PE | CR0_ET;
  w.seg[CS] = Segment{0x08, 0x10000, 0xFFFF, 0x9B};
  w.seg[SS] = Segment{0x10, 0x20000, 0xFFFF, 0x93};
  w.seg[DS] = Segment{0x10, 0x20000, 0xFFFF, 0x93};
  w.seg[ES] = Segment{0, 0, 0, 0};
  w.seg[FS] = Segment{0, 0, 0, 0};
  w.seg[GS] = Segment{0, 0, 0, 0};
  w.tr = Segment{0x18, 0x3000, 0x67, 0x8B};
  w.eip = 0x1234;
  w.intr_shadow = SHADOW_MOV_SS;
  w.nmi_blocked = true;
  v.push_back(w);
  // The paged states again with paging off (for KVMs that refuse 32-bit
  // paging without PAE).
  for (CpuState x : {p, u}) {
    x.cr0 &= ~CR0_PG;
    v.push_back(x);
  }
  return v;
}

TEST(KvmState, ConversionRoundTrip) {
  for (const CpuState& s : sample_states()) {
    kvm::KvmState k = kvm::to_kvm(s);
    CpuState t;
    t.reset();
    t.cpl = 99;
    kvm::from_kvm(k, t);
    expect_same(s, t);
  }
}

TEST(KvmState, TagsFollowContents) {
  EXPECT_EQ(kvm::fpu_tag_of(1.0L), 0u);
  EXPECT_EQ(kvm::fpu_tag_of(0.0L), 1u);
  EXPECT_EQ(kvm::fpu_tag_of(-0.0L), 1u);
  EXPECT_EQ(kvm::fpu_tag_of(__builtin_infl()), 2u);
  EXPECT_EQ(kvm::fpu_tag_of(__builtin_nanl("")), 2u);
  EXPECT_EQ(kvm::fpu_tag_of(__LDBL_DENORM_MIN__), 2u);
}

// ---- with /dev/kvm ----

#define REQUIRE_KVM()                                                          \
  do {                                                                         \
    KvmProbe p_ = kvm_available();                                             \
    if (!p_.usable) GTEST_SKIP() << "kvm not usable here: " << p_.why;         \
  } while (0)

// The same states set into a real vCPU and read back.
TEST(KvmVcpu, StateRoundTrip) {
  REQUIRE_KVM();
  int sys = ::open("/dev/kvm", O_RDWR | O_CLOEXEC);
  ASSERT_GE(sys, 0);
  int vm = ::ioctl(sys, KVM_CREATE_VM, 0);
  ASSERT_GE(vm, 0);
  ::ioctl(vm, KVM_SET_TSS_ADDR, 0xFFFBD000ul);
  // Memory for the page tables the states point at (zero: nothing mapped).
  void* mem = ::mmap(nullptr, 1 << 20, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  ASSERT_NE(mem, MAP_FAILED);
  kvm_userspace_memory_region region{0, 0, 0, 1 << 20, reinterpret_cast<u64>(mem)};
  ASSERT_EQ(::ioctl(vm, KVM_SET_USER_MEMORY_REGION, &region), 0);
  int vcpu = ::ioctl(vm, KVM_CREATE_VCPU, 0);
  ASSERT_GE(vcpu, 0);
  for (const CpuState& s : sample_states()) {
    kvm::KvmState k = kvm::to_kvm(s);
    ASSERT_EQ(::ioctl(vcpu, KVM_SET_SREGS, &k.sregs), 0) << std::strerror(errno);
    ASSERT_EQ(::ioctl(vcpu, KVM_SET_REGS, &k.regs), 0);
    ASSERT_EQ(::ioctl(vcpu, KVM_SET_FPU, &k.fpu), 0);
    ASSERT_EQ(::ioctl(vcpu, KVM_SET_VCPU_EVENTS, &k.events), 0);
    alignas(kvm_msrs) u8 mbuf[sizeof(kvm_msrs) + 3 * sizeof(kvm_msr_entry)] = {};
    auto* mh = reinterpret_cast<kvm_msrs*>(mbuf);
    kvm_msr_entry* me = mh->entries;
    mh->nmsrs = 3;
    me[0] = {kvm::kMsrSysenterCs, 0, k.sysenter_cs};
    me[1] = {kvm::kMsrSysenterEsp, 0, k.sysenter_esp};
    me[2] = {kvm::kMsrSysenterEip, 0, k.sysenter_eip};
    const bool msrs = ::ioctl(vcpu, KVM_SET_MSRS, mh) == 3;
    if (!msrs) std::printf("note: KVM_SET_MSRS fails here (%s): SYSENTER MSRs not compared\n", std::strerror(errno));
    kvm::KvmState b;
    ASSERT_EQ(::ioctl(vcpu, KVM_GET_SREGS, &b.sregs), 0);
    ASSERT_EQ(::ioctl(vcpu, KVM_GET_REGS, &b.regs), 0);
    ASSERT_EQ(::ioctl(vcpu, KVM_GET_FPU, &b.fpu), 0);
    ASSERT_EQ(::ioctl(vcpu, KVM_GET_VCPU_EVENTS, &b.events), 0);
    if (msrs) {
      ASSERT_EQ(::ioctl(vcpu, KVM_GET_MSRS, mh), 3);
      b.sysenter_cs = u32(me[0].data);
      b.sysenter_esp = u32(me[1].data);
      b.sysenter_eip = u32(me[2].data);
    } else {
      b.sysenter_cs = k.sysenter_cs;
      b.sysenter_esp = k.sysenter_esp;
      b.sysenter_eip = k.sysenter_eip;
    }
    EXPECT_TRUE(kvm::event_in_flight(b.events).empty());
    CpuState t;
    t.reset();
    kvm::from_kvm(b, t);
    if ((s.cr0 & CR0_PG) && !(t.cr0 & CR0_PG)) {
      // kvm_pvm refuses 32-bit paging without PAE (a guest's MOV CR0 gets
      // #GP) and drops the bit here: a limit of that KVM, said, not hidden.
      std::printf("note: this KVM (%s) does not keep CR0.PG without PAE: state with paging skipped\n",
                  kvm_available().flavour.c_str());
      continue;
    }
    SCOPED_TRACE("state with cr0 " + std::to_string(s.cr0) + ", cpl " + std::to_string(s.cpl));
    expect_same(s, t);
  }
  ::close(vcpu);
  ::close(vm);
  ::close(sys);
  ::munmap(mem, 1 << 20);
}

// A board for small programs: records port writes, reads 0xFF..
struct TestPlatform : Platform {
  std::vector<std::pair<u16, u32>> outs;
  u32 io_in(u16, unsigned size) override { return size == 4 ? ~0u : (1u << (8 * size)) - 1; }
  void io_out(u16 port, unsigned, u32 v) override { outs.push_back({port, v}); }
  u64 tsc() override { return 0; }
  bool* line = nullptr;  // the INTR line, dropped by the acknowledge
  u8 intr_ack() override {
    if (line) *line = false;
    return 0x20;
  }
};

// Runs real-mode `code` (at 0x1000, CS base 0, SS:SP 0:0x8000) to HLT on an
// engine; returns the final state.
template <typename MakeEngine>
CpuState run_program(const std::vector<u8>& code, MakeEngine make, TestPlatform& plat,
                     std::vector<u8>* ram_out = nullptr) {
  mem::PhysMem pm(1 << 20);
  std::memcpy(pm.ram() + 0x1000, code.data(), code.size());
  CpuState s;
  s.reset();
  s.seg[CS] = Segment{0, 0, 0xFFFF, 0x9B};
  s.eip = 0x1000;
  s.gpr[ESP] = 0x8000;
  auto e = make(s, pm, plat);
  for (int i = 0; i < 1000 && !s.halted; i++) e->run(100000);
  EXPECT_TRUE(s.halted);
  if (ram_out) ram_out->assign(pm.ram(), pm.ram() + 0x10000);
  return s;
}

std::unique_ptr<Engine> make_kvm(CpuState& s, mem::PhysMem& pm, Platform& plat) {
  KvmOptions o;
  o.calibrate = false;
  return std::make_unique<Kvm>(s, pm, plat, o);
}
std::unique_ptr<Engine> make_interp(CpuState& s, mem::PhysMem& pm, Platform& plat) {
  return std::make_unique<Interp>(s, pm, plat);
}

// CPUID as the guest sees it on kvm is popek's model.
TEST(KvmEngine, CpuidIsPopeksModel) {
  REQUIRE_KVM();
  const u32 leaves[] = {0, 1, 2, 3, 0x40000000, 0x80000000, 0x80000001, 0x80000008, 0xC0000000};
  // For each leaf: mov eax, leaf; xor ecx, ecx; cpuid; out 0xE0..0xE3 with eax, ebx, ecx, edx.
  std::vector<u8> code;
  for (u32 l : leaves) {
    code.insert(code.end(), {0x66, 0xB8});
    for (int i = 0; i < 4; i++) code.push_back(u8(l >> (8 * i)));
    code.insert(code.end(), {0x66, 0x31, 0xC9, 0x0F, 0xA2,  // xor ecx, ecx; cpuid
                             0x66, 0xE7, 0xE0,              // out 0xE0, eax
                             0x66, 0x89, 0xD8, 0x66, 0xE7, 0xE1,  // mov eax, ebx; out
                             0x66, 0x89, 0xC8, 0x66, 0xE7, 0xE2,  // mov eax, ecx; out
                             0x66, 0x89, 0xD0, 0x66, 0xE7, 0xE3});  // mov eax, edx; out
  }
  code.push_back(0xF4);
  {
    mem::PhysMem pm(1 << 20);
    CpuState s;
    TestPlatform plat;
    KvmOptions o;
    o.calibrate = false;
    Kvm k(s, pm, plat, o);
    if (!k.cpuid_model_set()) GTEST_SKIP() << "this KVM refuses KVM_SET_CPUID2: the guest sees its CPUID";
  }
  TestPlatform plat;
  run_program(code, make_kvm, plat);
  ASSERT_EQ(plat.outs.size(), 4 * std::size(leaves));
  for (usize i = 0; i < std::size(leaves); i++) {
    CpuidResult r = cpuid(leaves[i], 0);
    SCOPED_TRACE("leaf " + std::to_string(leaves[i]));
    EXPECT_EQ(plat.outs[4 * i + 0].second, r.eax);
    EXPECT_EQ(plat.outs[4 * i + 1].second, r.ebx);
    EXPECT_EQ(plat.outs[4 * i + 2].second, r.ecx);
    EXPECT_EQ(plat.outs[4 * i + 3].second, r.edx);
  }
}

// With the paravirtual interface on, KVM provides it: the CPUID announces
// KVM's signature and the features popek's model and this KVM share (where
// KVM takes popek's CPUID), and kvm-clock's MSR reaches KVM, which fills in
// the structure; the MSR's value comes back into the CpuState where KVM's
// MSR ioctls work.
struct PvTestPlatform : TestPlatform {
  bool paravirt() override { return true; }
};

TEST(KvmEngine, ParavirtLeaves) {
  REQUIRE_KVM();
  mem::PhysMem pm(1 << 20);
  CpuState s;
  PvTestPlatform plat;
  KvmOptions o;
  o.calibrate = false;
  Kvm k(s, pm, plat, o);
  for (auto& [key, v] : k.stats())
    if (key == "kvm.msr_filter") {
      EXPECT_EQ(k.paravirt_msrs(), v != 0);  // with a filter, they pass it
    }
  if (!k.cpuid_model_set()) GTEST_SKIP() << "this KVM refuses KVM_SET_CPUID2: the guest sees its CPUID";
  EXPECT_EQ(k.pv_features() & ~pv::kFeatures, 0u);
  EXPECT_NE(k.pv_features() & pv::KVM_FEATURE_CLOCKSOURCE2, 0u) << "KVM without kvm-clock?";
  const u32 leaves[] = {1, pv::kCpuidSignature, pv::kCpuidFeatures};
  std::vector<u8> code;
  for (u32 l : leaves) {
    code.insert(code.end(), {0x66, 0xB8});
    for (int i = 0; i < 4; i++) code.push_back(u8(l >> (8 * i)));
    code.insert(code.end(), {0x66, 0x31, 0xC9, 0x0F, 0xA2, 0x66, 0xE7, 0xE0, 0x66, 0x89, 0xD8, 0x66, 0xE7, 0xE1,
                             0x66, 0x89, 0xC8, 0x66, 0xE7, 0xE2, 0x66, 0x89, 0xD0, 0x66, 0xE7, 0xE3});
  }
  code.push_back(0xF4);
  PvTestPlatform p2;
  run_program(code, make_kvm, p2);
  ASSERT_EQ(p2.outs.size(), 12u);
  EXPECT_EQ(p2.outs[2].second & pv::kHypervisorBit, pv::kHypervisorBit);
  EXPECT_EQ(p2.outs[4].second, pv::kCpuidFeatures);
  EXPECT_EQ(p2.outs[5].second, pv::kSigEbx);
  EXPECT_EQ(p2.outs[6].second, pv::kSigEcx);
  EXPECT_EQ(p2.outs[7].second, pv::kSigEdx);
  EXPECT_EQ(p2.outs[8].second, k.pv_features());
}

TEST(KvmEngine, ParavirtClockIsKvms) {
  REQUIRE_KVM();
  // mov ecx, MSR_KVM_SYSTEM_TIME_NEW; mov eax, 0x5001; xor edx, edx; wrmsr; hlt
  const std::vector<u8> code = {0x66, 0xB9, 0x01, 0x4D, 0x56, 0x4B, 0x66, 0xB8, 0x01, 0x50, 0x00, 0x00,
                                0x66, 0x31, 0xD2, 0x0F, 0x30, 0xF4};
  PvTestPlatform plat;
  std::vector<u8> ram;
  bool carried = false;
  CpuState s = run_program(code, [&](CpuState& st, mem::PhysMem& pm, Platform& pl) {
    auto e = make_kvm(st, pm, pl);
    carried = static_cast<Kvm&>(*e).paravirt_msrs() && static_cast<Kvm&>(*e).msr_ioctls();
    if (!static_cast<Kvm&>(*e).paravirt_msrs()) ADD_FAILURE() << "kvm-clock's MSRs do not reach KVM (no MSR filter?)";
    return e;
  }, plat, &ram);
  EXPECT_TRUE(s.halted);
  pv::PvclockVcpuTimeInfo t;
  std::memcpy(&t, ram.data() + 0x5000, sizeof t);
  EXPECT_NE(t.version, 0u) << "KVM wrote no pvclock structure";
  EXPECT_EQ(t.version & 1, 0u);
  EXPECT_NE(t.tsc_to_system_mul, 0u);
  if (carried) EXPECT_EQ(s.msr.kvm_system_time, 0x5001u);
  else std::printf("KVM_GET_MSRS refused here: the MSR's value stays KVM's (not checked)\n");
}

// The same program on kvm and interp: same registers, memory, port writes
// and x87 state (where KVM's emulator lacks an x87 instruction, popek
// executes it: the state still goes through KVM both ways).
TEST(KvmEngine, SameStateAsInterp) {
  REQUIRE_KVM();
  // Arithmetic, a loop, the stack, string stores, RDMSR of an MSR popek's
  // model has (MISC_ENABLE), an MMIO write and read, x87, then HLT.
  std::vector<u8> code = {
      0x66, 0xB8, 0x78, 0x56, 0x34, 0x12,  // mov eax, 0x12345678
      0x66, 0xBB, 0x01, 0x00, 0x00, 0x80,  // mov ebx, 0x80000001
      0x66, 0x01, 0xD8,                    // add eax, ebx
      0x66, 0xB9, 0x10, 0x00, 0x00, 0x00,  // mov ecx, 16
      0x66, 0x50,                          // l: push eax
      0x66, 0xD1, 0xC0,                    // rol eax, 1
      0xE2, 0xF9,                          // loop l
      0xBF, 0x00, 0x20,                    // mov di, 0x2000
      0xB9, 0x08, 0x00,                    // mov cx, 8
      0xFC, 0xF3, 0xAB,                    // cld; rep stosw
      0x66, 0xB9, 0xA0, 0x01, 0x00, 0x00,  // mov ecx, 0x1A0
      0x0F, 0x32,                          // rdmsr
      0xE6, 0x80,                          // out 0x80, al
      0xBA, 0x00, 0xA0,                    // mov dx, 0xA000
      0x8E, 0xC2,                          // mov es, dx
      0x26, 0xC6, 0x06, 0x10, 0x00, 0x55,  // mov byte [es:0x10], 0x55 (MMIO: the VGA hole)
      0x26, 0x8A, 0x16, 0x10, 0x00,        // mov dl, [es:0x10] (reads all ones)
      0xDB, 0xE3,                          // fninit
      0xD9, 0xE8,                          // fld1
      0xD9, 0xEB,                          // fldpi
      0xDE, 0xC1,                          // faddp
      0xD9, 0xEE,                          // fldz
      0xF4};
  TestPlatform pk, pi;
  std::vector<u8> mk, mi;
  CpuState k = run_program(code, make_kvm, pk, &mk);
  CpuState i = run_program(code, make_interp, pi, &mi);
  expect_same(k, i, false);
  EXPECT_EQ(pk.outs, pi.outs);
  EXPECT_TRUE(mk == mi);
}

// Arithmetic on kvm (KVM's execution: the host CPU, or KVM's emulator, whose
// ALU operations run on the host CPU) against popek's semantics on interp:
// results and EFLAGS of each operation for fixed pseudo-random operands and
// incoming flags. Flags the SDM leaves undefined are masked per operation.
TEST(KvmEngine, AluAgreesWithInterp) {
  REQUIRE_KVM();
  struct AluOp {
    const char* name;
    std::vector<u8> bytes;  // operands: EAX, EBX, CL (the count); result EAX (EDX)
    u32 undefined;          // EFLAGS bits the SDM leaves undefined (not compared)
  };
  const u32 kShiftUndef = OF | AF;  // OF for counts > 1, AF always
  const std::vector<AluOp> ops = {
      {"add", {0x66, 0x01, 0xD8}, 0},         {"adc", {0x66, 0x11, 0xD8}, 0},
      {"sub", {0x66, 0x29, 0xD8}, 0},         {"sbb", {0x66, 0x19, 0xD8}, 0},
      {"and", {0x66, 0x21, 0xD8}, AF},        {"or", {0x66, 0x09, 0xD8}, AF},
      {"xor", {0x66, 0x31, 0xD8}, AF},        {"cmp", {0x66, 0x39, 0xD8}, 0},
      {"add16", {0x01, 0xD8}, 0},             {"sub8", {0x28, 0xD8}, 0},
      {"neg", {0x66, 0xF7, 0xD8}, 0},         {"inc", {0x66, 0x40}, 0},
      {"dec", {0x66, 0x48}, 0},               {"shl", {0x66, 0xD3, 0xE0}, kShiftUndef},
      {"shr", {0x66, 0xD3, 0xE8}, kShiftUndef}, {"sar", {0x66, 0xD3, 0xF8}, kShiftUndef},
      {"rol", {0x66, 0xD3, 0xC0}, OF},        {"ror", {0x66, 0xD3, 0xC8}, OF},
      {"rcl", {0x66, 0xD3, 0xD0}, OF},        {"rcr", {0x66, 0xD3, 0xD8}, OF},
      {"shl16", {0xD3, 0xE0}, kShiftUndef},   {"rcr8", {0xD2, 0xD8}, OF},
      {"shld", {0x66, 0x0F, 0xA5, 0xD8}, kShiftUndef | CF},
      {"shrd", {0x66, 0x0F, 0xAD, 0xD8}, kShiftUndef | CF},
      {"shld16", {0x0F, 0xA5, 0xD8}, kShiftUndef | CF},
      {"imul", {0x66, 0x0F, 0xAF, 0xC3}, SF | ZF | AF | PF},
      {"mul", {0x66, 0xF7, 0xE3}, SF | ZF | AF | PF},
      {"bsf", {0x66, 0x0F, 0xBC, 0xC3}, CF | OF | SF | AF | PF},
      {"bsr", {0x66, 0x0F, 0xBD, 0xC3}, CF | OF | SF | AF | PF},
      {"bt", {0x66, 0x0F, 0xA3, 0xD8}, OF | SF | ZF | AF | PF},
      {"daa", {0x27}, OF},                    {"das", {0x2F}, OF},
      {"aaa", {0x37}, OF | SF | ZF | PF},     {"aas", {0x3F}, OF | SF | ZF | PF},
      {"aam", {0xD4, 0x0A}, OF | AF | CF},    {"aad", {0xD5, 0x0A}, OF | AF | CF},
  };
  std::mt19937 rng(21);
  const u32 specials[] = {0, 1, 0x7F, 0x80, 0xFF, 0x7FFF, 0x8000, 0xFFFF, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF};
  struct Case { unsigned op; u32 a, b, c, f; };
  std::vector<Case> cases;
  for (unsigned o = 0; o < ops.size(); o++)
    for (int k = 0; k < 24; k++) {
      auto pick = [&] { return k < 8 ? specials[rng() % std::size(specials)] : u32(rng()); };
      cases.push_back({o, pick(), pick(), u32(rng() % 40), u32(rng()) & (CF | PF | AF | ZF | SF | OF)});
    }
  // Real mode, results at 0x2000:DI (EAX, EDX, EFLAGS per case).
  std::vector<u8> code = {0xB8, 0x00, 0x20, 0x8E, 0xC0, 0x31, 0xFF};  // mov ax,0x2000; mov es,ax; xor di,di
  auto imm32 = [&](u8 op, u32 v) {
    code.insert(code.end(), {0x66, op});
    for (int i = 0; i < 4; i++) code.push_back(u8(v >> (8 * i)));
  };
  for (const Case& c : cases) {
    imm32(0x68, c.f | FLAGS_FIXED1);          // push dword flags
    code.insert(code.end(), {0x66, 0x9D});    // popfd
    imm32(0xB8, c.a);                         // mov eax, a
    imm32(0xBB, c.b);                         // mov ebx, b
    imm32(0xB9, c.c);                         // mov ecx, count
    imm32(0xBA, 0x5A5A5A5A);                  // mov edx, marker
    code.insert(code.end(), ops[c.op].bytes.begin(), ops[c.op].bytes.end());
    code.insert(code.end(), {0x66, 0x9C, 0x66, 0x59,     // pushfd; pop ecx
                             0x66, 0x26, 0x89, 0x05,     // mov [es:di], eax
                             0x66, 0x26, 0x89, 0x55, 0x04,  // mov [es:di+4], edx
                             0x66, 0x26, 0x89, 0x4D, 0x08,  // mov [es:di+8], ecx
                             0x83, 0xC7, 0x0C});            // add di, 12
  }
  code.push_back(0xF4);
  ASSERT_LT(code.size(), 0xEF00u);
  TestPlatform pk, pi;
  mem::PhysMem pmk(1 << 20), pmi(1 << 20);
  auto run_on = [&](mem::PhysMem& pm, TestPlatform& plat, auto make) {
    std::memcpy(pm.ram() + 0x1000, code.data(), code.size());
    CpuState s;
    s.reset();
    s.seg[CS] = Segment{0, 0, 0xFFFF, 0x9B};
    s.eip = 0x1000;
    s.gpr[ESP] = 0xFFF0;  // above the code
    auto e = make(s, pm, plat);
    for (int i = 0; i < 10000 && !s.halted; i++) e->run(1000000);
    EXPECT_TRUE(s.halted);
  };
  run_on(pmk, pk, make_kvm);
  run_on(pmi, pi, make_interp);
  // KVM's instruction emulator (what executes here on kvm_pvm) sets AAM's
  // and AAD's SF, ZF and PF from AX, not from AL as the SDM says (e.g. AAD
  // with AX = 0x00FF: AL = 0xFF, SF must be 1; it leaves 0): known, counted.
  const bool emulated = kvm_available().flavour == "kvm_pvm";
  int bad = 0, known = 0;
  for (usize i = 0; i < cases.size(); i++) {
    const Case& c = cases[i];
    u32 k[3], v[3];
    std::memcpy(k, pmk.ram() + 0x20000 + 12 * i, 12);
    std::memcpy(v, pmi.ram() + 0x20000 + 12 * i, 12);
    u32 mask = ~ops[c.op].undefined;
    if (emulated && std::strncmp(ops[c.op].name, "aa", 2) == 0 && ops[c.op].bytes[0] >= 0xD4) {
      if ((k[2] ^ v[2]) & mask & (SF | ZF | PF)) known++;
      mask &= ~(SF | ZF | PF);
    }
    // BSF/BSR with a zero source leave the destination undefined.
    const bool dest_undef = (ops[c.op].name[0] == 'b' && ops[c.op].name[1] == 's' && c.b == 0);
    if ((!dest_undef && k[0] != v[0]) || k[1] != v[1] || ((k[2] ^ v[2]) & mask & 0x8D5)) {
      if (++bad <= 20)
        ADD_FAILURE() << ops[c.op].name << " eax=" << std::hex << c.a << " ebx=" << c.b << " cl=" << c.c
                      << " flags=" << c.f << ": kvm eax=" << k[0] << " edx=" << k[1] << " fl=" << k[2]
                      << ", interp eax=" << v[0] << " edx=" << v[1] << " fl=" << v[2];
    }
  }
  std::printf("%zu operations compared, %d disagree (defined results and flags), %d known (AAM/AAD flags in "
              "KVM's emulator)\n", cases.size(), bad, known);
}

// A pending interrupt is injected when the guest enables interrupts.
TEST(KvmEngine, InjectsInterrupts) {
  REQUIRE_KVM();
  // IVT entry 0x20 -> 0:0x1100, whose handler writes port 0xE5 and IRETs;
  // the main code: sti; nop; out 0xE4; hlt.
  std::vector<u8> code(0x200, 0x90);
  const u8 main[] = {0xC7, 0x06, 0x80, 0x00, 0x00, 0x11,  // mov word [0x80], 0x1100
                     0xC7, 0x06, 0x82, 0x00, 0x00, 0x00,  // mov word [0x82], 0
                     0xFB, 0x90, 0xE6, 0xE4, 0xF4};
  std::memcpy(code.data(), main, sizeof main);
  const u8 handler[] = {0xE6, 0xE5, 0xCF};
  std::memcpy(code.data() + 0x100, handler, sizeof handler);
  TestPlatform plat;
  mem::PhysMem pm(1 << 20);
  std::memcpy(pm.ram() + 0x1000, code.data(), code.size());
  CpuState s;
  s.reset();
  s.seg[CS] = Segment{0, 0, 0xFFFF, 0x9B};
  s.eip = 0x1000;
  s.gpr[ESP] = 0x8000;
  s.intr_line = true;
  plat.line = &s.intr_line;
  auto e = make_kvm(s, pm, plat);
  for (int i = 0; i < 100 && !s.halted; i++) e->run(1000);
  ASSERT_EQ(plat.outs.size(), 2u);
  // The handler ran once (the acknowledge dropped the line). With an exact
  // interrupt window it runs as soon as STI's shadow ends, before the OUT to
  // 0xE4; kvm_pvm opens the window only at its next exit (the OUT), which
  // is late but allowed for an asynchronous event.
  EXPECT_EQ(1, std::count_if(plat.outs.begin(), plat.outs.end(), [](auto& o) { return o.first == 0xE5; }));
  if (kvm_available().flavour != "kvm_pvm") {
    EXPECT_EQ(plat.outs[0].first, 0xE5);
    EXPECT_EQ(plat.outs[1].first, 0xE4);
  }
}

}  // namespace
}  // namespace popek::engine
