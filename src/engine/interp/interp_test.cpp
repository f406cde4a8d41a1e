#include <gtest/gtest.h>

#include "engine/interp/interp.h"

using namespace popek;
using namespace popek::x86;

namespace {
struct Plat : Platform {
  std::vector<std::pair<u16, u32>> outs;
  bool intr = false;
  u32 io_in(u16, unsigned) override { return 0xFFFFFFFF; }
  void io_out(u16 p, unsigned, u32 v) override { outs.emplace_back(p, v); }
  u64 tsc() override { return 0; }
  u8 intr_ack() override { return 0x20; }
};

struct Vm {
  CpuState s;
  mem::PhysMem pm{4u << 20};
  Plat plat;
  engine::Interp interp{s, pm, plat};
  Vm() {
    s.cr0 = CR0_PE | CR0_ET;
    for (auto& sg : s.seg) sg = Segment{0x10, 0, 0xFFFFFFFF, 0xC093};
    s.seg[CS] = Segment{0x08, 0, 0xFFFFFFFF, 0xC09B};
    s.gpr[ESP] = 0x80000;
  }
  void code(u32 at, std::vector<u8> b) { pm.write_bytes(at, b.data(), b.size()); }
};
}  // namespace

TEST(Interp, SelfModifyingCodeSeesItsOwnStore) {
  Vm vm;
  // mov byte [0x1007], 0x42 ; mov al, 0x00 ; hlt   (the store patches the immediate)
  vm.code(0x1000, {0xC6, 0x05, 0x08, 0x10, 0x00, 0x00, 0x42, 0xB0, 0x00, 0xF4});
  vm.s.eip = 0x1000;
  EXPECT_EQ(vm.interp.run(100), engine::Exit::halt);
  EXPECT_EQ(vm.s.gpr[EAX] & 0xFF, 0x42u);
}

TEST(Interp, CachedDecodeIsDroppedWhenTheHostWritesCode) {
  Vm vm;
  vm.code(0x2000, {0xB0, 0x01, 0xF4});  // mov al, 1 ; hlt
  vm.s.eip = 0x2000;
  vm.interp.run(10);
  EXPECT_EQ(vm.s.gpr[EAX] & 0xFF, 1u);
  vm.code(0x2000, {0xB0, 0x07, 0xF4});  // DMA-style rewrite
  vm.s.eip = 0x2000;
  vm.s.halted = false;
  vm.interp.run(10);
  EXPECT_EQ(vm.s.gpr[EAX] & 0xFF, 7u);
  EXPECT_GE(vm.interp.istats().cache_invalidations, 1u);
}

TEST(Interp, InterruptWaitsForTheStiShadow) {
  Vm vm;
  // IDT at 0x3000 with vector 0x20 -> handler at 0x4000 (out 0x80, al ; hlt)
  u64 gate = (0x4000 & 0xFFFF) | (u64(0x08) << 16) | (u64(0x8E00) << 32);
  vm.pm.write_bytes(0x3000 + 0x20 * 8, &gate, 8);
  const u64 gdt[3] = {0, 0x00CF9B000000FFFFull, 0x00CF93000000FFFFull};
  vm.pm.write_bytes(0x5000, gdt, sizeof gdt);
  vm.s.gdtr = {0x5000, 0x17};
  vm.s.idtr = {0x3000, 0x7FF};
  vm.code(0x4000, {0xE6, 0x80, 0xF4});
  // sti ; mov al, 5 ; mov al, 6 ; hlt
  vm.code(0x1000, {0xFB, 0xB0, 0x05, 0xB0, 0x06, 0xF4});
  vm.s.eip = 0x1000;
  vm.s.intr_line = true;
  vm.interp.run(3);
  // The instruction after STI ran before the interrupt was taken.
  ASSERT_EQ(vm.plat.outs.size(), 1u);
  EXPECT_EQ(vm.plat.outs[0].second & 0xFF, 5u);
}

TEST(Interp, UnimplementedOrInvalidOpcodeRaisesUd) {
  Vm vm;
  const u64 gdt[3] = {0, 0x00CF9B000000FFFFull, 0x00CF93000000FFFFull};
  vm.pm.write_bytes(0x5000, gdt, sizeof gdt);
  vm.s.gdtr = {0x5000, 0x17};
  u64 gate = (0x4000 & 0xFFFF) | (u64(0x08) << 16) | (u64(0x8E00) << 32);
  vm.pm.write_bytes(0x3000 + 6 * 8, &gate, 8);
  vm.s.idtr = {0x3000, 0x7FF};
  vm.code(0x4000, {0xF4});
  vm.code(0x1000, {0x0F, 0x0B});  // ud2
  vm.s.eip = 0x1000;
  vm.interp.run(5);
  EXPECT_EQ(vm.s.eip, 0x4001u);
  u32 saved_eip;
  vm.pm.read_bytes(0x80000 - 12, &saved_eip, 4);
  EXPECT_EQ(saved_eip, 0x1000u);  // #UD is a fault: EIP of the instruction
}
