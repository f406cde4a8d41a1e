// The dirty log (PhysMem::start_dirty_log / sync_dirty_log) catches every
// page a guest writes, under every engine variant and by every write path:
// paging off (bt's direct stores into the host mapping of RAM), paging on at
// CPL 0 (bt's inline stores through the soft TLB; interp's Mmu), paging on
// at CPL 3 (bt's user window, a second mapping of RAM), and devices
// (device_wrote / device_access). Pages written before the log started
// (writable TLB entries, writable window pages) and pages written in one
// pass must be caught again in the next.
#include <gtest/gtest.h>

#include <set>

#include "test_vm.h"
#include "x86/cpu_state.h"

namespace popek {
namespace {

using namespace x86;

constexpr u32 kCode = 0x1000, kData = 0x100000, kDataPages = 64;
constexpr u32 kPd = 0x10000, kPt = 0x11000;
constexpr u32 kTss = test::kGdt + 0x100, kKernelStack = 0x9F000;

struct DirtyLogTest : ::testing::TestWithParam<test::EngineKind> {};

// mode 0: paging off; 1: paging on, CPL 0; 2: paging on, CPL 3.
void setup(test::TestVm& vm, int mode) {
  vm.ring3_gdt(kTss, kKernelStack);
  u32 pde = kPt | 7;
  vm.pm.write_bytes(kPd, &pde, 4);
  for (u32 k = 0; k < 1024; k++) {
    u32 pte = (k << 12) | 7;  // identity, user, writable
    vm.pm.write_bytes(kPt + k * 4, &pte, 4);
  }
  // L: mov edx, [edi] ; mov [edi], eax ; add edi, ebx ; dec ecx ; jnz L ; hlt
  // (at CPL 3: #GP, whose handler halts). The read first: a TLB entry it
  // fills must not let the write through unseen.
  vm.code(kCode, {0x8B, 0x17, 0x89, 0x07, 0x01, 0xDF, 0x49, 0x75, 0xF7, 0xF4});
  CpuState& s = vm.s;
  vm.ring3_segments(kTss, mode == 2);
  s.cr3 = kPd;
  s.cr0 = CR0_PE | CR0_ET | (mode ? CR0_PG | CR0_WP : 0);
  s.eflags = FLAGS_FIXED1;
  s.intr_shadow = 0;
}

// Writes `value` to `count` pages from data page `first`, every `step`th.
void write_pages(test::TestVm& vm, int mode, u32 first, u32 step, u32 count, u32 value) {
  setup(vm, mode);
  CpuState& s = vm.s;
  s.eip = kCode;
  s.gpr[EDI] = kData + first * 4096 + 0x10;
  s.gpr[EBX] = step * 4096;
  s.gpr[ECX] = count;
  s.gpr[EAX] = value;
  s.gpr[ESP] = test::kStackTop;
  s.halted = false;
  // As a guest's context switch would: the TLB emptied, so that the read
  // fills the entry afresh.
  if (vm.eng) {
    if (auto* bt = dynamic_cast<engine::Bt*>(vm.eng.get())) bt->mmu().flush_tlb(true);
    else static_cast<engine::Interp&>(*vm.eng).mmu().flush_tlb(true);
  }
  for (int n = 0; n < 50 && !s.halted; n++) vm.run(1000);
  ASSERT_TRUE(s.halted);
  for (u32 i = 0; i < count; i++) ASSERT_EQ(vm.rd32(kData + (first + i * step) * 4096 + 0x10), value) << i;
}

std::set<u32> data_pages(const std::vector<u32>& dirty) {
  std::set<u32> out;
  for (u32 p : dirty)
    if (p >= kData / 4096 && p < kData / 4096 + kDataPages) out.insert(p - kData / 4096);
  return out;
}

std::set<u32> every(u32 first, u32 step, u32 count) {
  std::set<u32> out;
  for (u32 i = 0; i < count; i++) out.insert(first + i * step);
  return out;
}

TEST_P(DirtyLogTest, EveryWrittenPageIsCaught) {
  if (GetParam().opt.lockstep) GTEST_SKIP() << "the test sets registers between runs; lockstep's shadow cannot follow";
  for (int mode = 0; mode < 3; mode++) {
    SCOPED_TRACE("mode " + std::to_string(mode));
    test::EngineKind k = GetParam();
    k.opt.user_window_claim = 0;
    test::TestVm vm(k);
    // Warm: every data page written (writable TLB entries and window pages,
    // translated stores), before the log.
    write_pages(vm, mode, 0, 1, kDataPages, 1);
    write_pages(vm, mode, 0, 1, kDataPages, 2);
    vm.pm.start_dirty_log();
    write_pages(vm, mode, 0, 3, 21, 3);
    EXPECT_EQ(data_pages(vm.pm.sync_dirty_log()), every(0, 3, 21));
    // The next pass: pages written in the last one are watched again.
    write_pages(vm, mode, 1, 2, 32, 4);
    EXPECT_EQ(data_pages(vm.pm.sync_dirty_log()), every(1, 2, 32));
    write_pages(vm, mode, 0, 1, kDataPages, 5);
    EXPECT_EQ(data_pages(vm.pm.sync_dirty_log()), every(0, 1, kDataPages));
    // Nothing written: nothing dirty.
    EXPECT_EQ(data_pages(vm.pm.sync_dirty_log()), std::set<u32>{});
    // Devices: DMA told afterwards, and a pointer handed out.
    vm.pm.device_wrote(kData + 5 * 4096 + 100, 5000);  // pages 5 and 6
    vm.pm.device_access(kData + 40 * 4096, 1);
    EXPECT_EQ(data_pages(vm.pm.sync_dirty_log()), (std::set<u32>{5, 6, 40}));
    vm.pm.stop_dirty_log();
    write_pages(vm, mode, 0, 1, kDataPages, 6);  // the log off: writes go on as before
    EXPECT_FALSE(vm.pm.dirty_logging());
  }
}

INSTANTIATE_TEST_SUITE_P(Engines, DirtyLogTest, ::testing::ValuesIn(test::all_engines()),
                         [](const auto& info) { return info.param.name; });

}  // namespace
}  // namespace popek
