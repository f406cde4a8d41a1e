// Engine behaviour every engine must show, run on each of them (interp, bt
// with full blocks, one-instruction blocks, no chaining, and in lockstep).
#include <gtest/gtest.h>

#include <cstring>

#include "test_vm.h"

using namespace popek;
using namespace popek::x86;
using test::TestVm;

class EngineTest : public ::testing::TestWithParam<test::EngineKind> {};

TEST_P(EngineTest, SelfModifyingCodeSeesItsOwnStore) {
  TestVm vm(GetParam());
  // mov byte [0x1007], 0x42 ; mov al, 0x00 ; hlt   (the store patches the immediate)
  vm.code(0x1000, {0xC6, 0x05, 0x08, 0x10, 0x00, 0x00, 0x42, 0xB0, 0x00, 0xF4});
  vm.s.eip = 0x1000;
  EXPECT_EQ(vm.run(100), engine::Exit::halt);
  EXPECT_EQ(vm.s.gpr[EAX] & 0xFF, 0x42u);
}

TEST_P(EngineTest, StoreIntoALaterPartOfTheRunningLoop) {
  TestVm vm(GetParam());
  // A loop whose body rewrites its own `add eax, imm8` on the second pass:
  //   mov ecx, 3
  // top: add eax, 1          (83 C0 01 at 0x1005)
  //   mov byte [0x1007], 10
  //   dec ecx ; jnz top ; hlt
  vm.code(0x1000, {0xB9, 0x03, 0, 0, 0, 0x83, 0xC0, 0x01, 0xC6, 0x05, 0x07, 0x10, 0, 0, 10,
                   0x49, 0x75, 0xF3, 0xF4});
  vm.s.eip = 0x1000;
  vm.s.gpr[EAX] = 0;
  EXPECT_EQ(vm.run(1000), engine::Exit::halt);
  EXPECT_EQ(vm.s.gpr[EAX], 1u + 10 + 10);
}

TEST_P(EngineTest, CachedCodeIsDroppedWhenTheHostWritesIt) {
  if (GetParam().opt.lockstep) GTEST_SKIP() << "the test sets EIP between runs; lockstep's shadow cannot follow";
  TestVm vm(GetParam());
  vm.code(0x2000, {0xB0, 0x01, 0xF4});  // mov al, 1 ; hlt
  vm.s.eip = 0x2000;
  vm.run(10);
  EXPECT_EQ(vm.s.gpr[EAX] & 0xFF, 1u);
  vm.code(0x2000, {0xB0, 0x07, 0xF4});  // DMA-style rewrite
  vm.s.eip = 0x2000;
  vm.s.halted = false;
  vm.run(10);
  EXPECT_EQ(vm.s.gpr[EAX] & 0xFF, 7u);
}

// A device writes guest RAM through its own pointer and says so afterwards
// (PhysMem::device_wrote). With paging off bt keeps code pages read-only in
// the host mapping (its stores address RAM directly): the device's write
// faults once, goes on, and the code is dropped when the device tells.
TEST_P(EngineTest, CachedCodeIsDroppedWhenADeviceWritesItInPlace) {
  if (GetParam().opt.lockstep) GTEST_SKIP() << "the test sets EIP between runs; lockstep's shadow cannot follow";
  TestVm vm(GetParam());
  // mov al, 1 ; mov [0x3000], al ; hlt  (a data store next to the code's page)
  vm.code(0x2000, {0xB0, 0x01, 0xA2, 0x00, 0x30, 0x00, 0x00, 0xF4});
  vm.s.eip = 0x2000;
  vm.run(10);
  EXPECT_EQ(vm.s.gpr[EAX] & 0xFF, 1u);
  vm.pm.ram()[0x2001] = 7;  // the DMA
  vm.pm.device_wrote(0x2001, 1);
  vm.s.eip = 0x2000;
  vm.s.halted = false;
  vm.run(10);
  EXPECT_EQ(vm.s.gpr[EAX] & 0xFF, 7u);
  EXPECT_EQ(vm.rd32(0x3000) & 0xFF, 7u);
}

TEST_P(EngineTest, InterruptWaitsForTheStiShadow) {
  TestVm vm(GetParam());
  vm.set_gate(0x20, 0x4000);
  vm.code(0x4000, {0xE6, 0x80, 0xF4});  // out 0x80, al ; hlt
  // sti ; mov al, 5 ; mov al, 6 ; hlt
  vm.code(0x1000, {0xFB, 0xB0, 0x05, 0xB0, 0x06, 0xF4});
  vm.s.eip = 0x1000;
  vm.s.intr_line = true;
  vm.run(3);
  // The instruction after STI ran before the interrupt was taken.
  ASSERT_EQ(vm.plat.outs.size(), 1u);
  EXPECT_EQ(vm.plat.outs[0].second & 0xFF, 5u);
}

TEST_P(EngineTest, InvalidOpcodeRaisesUdAsAFault) {
  TestVm vm(GetParam());
  vm.code(0x1000, {0x0F, 0x0B});  // ud2
  vm.s.eip = 0x1000;
  vm.run(50);
  EXPECT_EQ(vm.vector_taken(), u32(UD));
  EXPECT_EQ(vm.rd32(test::kStackTop - 12), 0x1000u);  // EIP of the instruction
}

TEST_P(EngineTest, FaultInTheMiddleOfABlockIsPrecise) {
  TestVm vm(GetParam());
  // Paging with page 0x200000 not present. The block sets registers and flags,
  // then faults on a load; the handler must see everything before the load.
  const u32 pd = 0x10000, pt = 0x11000;
  u32 pde = pt | 3;
  vm.pm.write_bytes(pd, &pde, 4);
  for (u32 k = 0; k < 1024; k++) {
    u32 pte = (k << 12) | 3;
    if (k == 0x200) pte = 0;
    vm.pm.write_bytes(pt + k * 4, &pte, 4);
  }
  vm.s.cr3 = pd;
  vm.s.cr0 |= CR0_PG;
  // mov ebx, 7 ; add ebx, ebx (flags: 14, PF=0...) ; stc ; mov ecx, [0x200010] ; mov ebx, 1 ; hlt
  vm.code(0x1000, {0xBB, 7, 0, 0, 0, 0x01, 0xDB, 0xF9, 0x8B, 0x0D, 0x10, 0x00, 0x20, 0x00, 0xBB,
                   1, 0, 0, 0, 0xF4});
  vm.s.eip = 0x1000;
  vm.s.gpr[ECX] = 0x5555;
  vm.run(100);
  EXPECT_EQ(vm.vector_taken(), u32(PF_V));
  EXPECT_EQ(vm.s.cr2, 0x200010u);
  EXPECT_EQ(vm.s.gpr[EBX], 14u);
  EXPECT_EQ(vm.s.gpr[ECX], 0x5555u);
  // Frame: error code, EIP, CS, EFLAGS.
  EXPECT_EQ(vm.rd32(test::kStackTop - 12), 0x1008u);
  EXPECT_EQ(vm.rd32(test::kStackTop - 4) & (CF | ZF | SF | OF), u32(CF));
}

// A multiply (it leaves SF/ZF/AF/PF as they were, or as the CPU defines
// them) followed by an arithmetic instruction on memory that faults: the
// handler sees the flags after the multiply exactly as the interpreter has
// them (bt recomputes them on the slow path from the flags before it).
TEST_P(EngineTest, FlagsAfterAMultiplyReachAFaultAfterIt) {
  auto run = [](const test::EngineKind& k) {
    TestVm vm(k);
    const u32 pd = 0x10000, pt = 0x11000;
    u32 pde = pt | 3;
    vm.pm.write_bytes(pd, &pde, 4);
    for (u32 p = 0; p < 1024; p++) {
      u32 pte = p == 0x200 ? 0 : (p << 12) | 3;
      vm.pm.write_bytes(pt + p * 4, &pte, 4);
    }
    vm.s.cr3 = pd;
    vm.s.cr0 |= CR0_PG;
    // mov eax, 0x80000000 ; add eax, eax (ZF, CF, OF, PF) ; mov ecx, 3 ; jmp $+2
    // (a new block starts with the flags saved) ; imul ecx, ecx ;
    // add ecx, [0x200010] (#PF) ; hlt
    vm.code(0x1000, {0xB8, 0, 0, 0, 0x80, 0x01, 0xC0, 0xB9, 3, 0, 0, 0, 0xEB, 0x00, 0x0F, 0xAF,
                     0xC9, 0x03, 0x0D, 0x10, 0x00, 0x20, 0x00, 0xF4});
    vm.s.eip = 0x1000;
    // Twice: the second run is translated under tiered translation too.
    for (int round = 0; round < 2; round++) {
      vm.s.eip = 0x1000;
      vm.s.gpr[ESP] = test::kStackTop;
      vm.s.halted = false;
      vm.run(100);
    }
    EXPECT_EQ(vm.vector_taken(), u32(PF_V));
    EXPECT_EQ(vm.s.gpr[ECX], 9u);
    EXPECT_EQ(vm.rd32(test::kStackTop - 12), 0x1011u);
    return vm.rd32(test::kStackTop - 4) & (CF | PF | AF | ZF | SF | OF);
  };
  if (GetParam().opt.lockstep) GTEST_SKIP() << "the test sets EIP between runs; lockstep's shadow cannot follow";
  EXPECT_EQ(run(GetParam()), run(test::all_engines()[0]));
}

// The EFLAGS image of a fault-class exception has RF = 1 (SDM Vol. 3
// 17.3.1.1; the silicon does it: pm_fuzz_test); a trap's (INT3) has it as
// EFLAGS holds it, 0; IRET does not leave it set in EFLAGS.
TEST_P(EngineTest, FaultsPushRfTrapsDoNot) {
  TestVm vm(GetParam());
  // #UD handler at 0x4000: copy the pushed EFLAGS to [0x7100], skip the
  // UD2, IRET. Then INT3 (the default handler logs and halts).
  vm.set_gate(UD, 0x4000);
  vm.code(0x4000, {0x50, 0x8B, 0x44, 0x24, 0x0C, 0xA3, 0x00, 0x71, 0, 0,  // push eax ; mov eax, [esp+12] ; mov [0x7100], eax
                   0x83, 0x44, 0x24, 0x04, 0x02, 0x58, 0xCF});          // add dword [esp+4], 2 ; pop eax ; iret
  // gate 3 with DPL 0 is fine at CPL 0
  vm.code(0x1000, {0x0F, 0x0B, 0x9C, 0x8F, 0x05, 0x04, 0x71, 0, 0, 0xCC});  // ud2 ; pushf ; pop dword [0x7104] ; int3
  vm.s.eip = 0x1000;
  vm.run(100);
  EXPECT_EQ(vm.vector_taken(), u32(BP));
  EXPECT_EQ(vm.rd32(0x7100) & RF, u32(RF)) << "the #UD frame's EFLAGS";
  EXPECT_EQ(vm.rd32(0x7104) & RF, 0u) << "PUSHF after the IRET";
  EXPECT_EQ(vm.rd32(test::kStackTop - 4) & RF, 0u) << "the INT3 frame's EFLAGS";
  EXPECT_EQ(vm.s.eflags & RF, 0u);
}

TEST_P(EngineTest, SingleStepTrapsAfterEachInstruction) {
  TestVm vm(GetParam());
  // #DB handler: count in [0x7100], iret.
  vm.set_gate(1, 0x4000);
  vm.code(0x4000, {0xFF, 0x05, 0x00, 0x71, 0, 0, 0xCF});  // inc dword [0x7100] ; iret
  // pushf ; or dword [esp], 0x100 ; popf ; nop ; nop ; nop ;
  // pushf ; and dword [esp], ~0x100 ; popf ; hlt
  vm.code(0x1000, {0x9C, 0x81, 0x0C, 0x24, 0x00, 0x01, 0, 0, 0x9D, 0x90, 0x90, 0x90,
                   0x9C, 0x81, 0x24, 0x24, 0xFF, 0xFE, 0xFF, 0xFF, 0x9D, 0xF4});
  vm.s.eip = 0x1000;
  vm.run(200);
  // A trap after every instruction from the one after the first POPF through
  // the POPF that clears TF (TF is sampled before each instruction).
  EXPECT_EQ(vm.rd32(0x7100), 6u);
  EXPECT_EQ(vm.s.eip, 0x1016u);
  EXPECT_TRUE(vm.s.halted);
}

// A #DB handler that logs (saved EIP, ECX) pairs at 0x7104, counting at 0x7100.
static void log_single_steps(TestVm& vm) {
  vm.set_gate(1, 0x4000);
  // push eax ; push ebx ; mov eax, [0x7100] ; mov ebx, [esp + 8] ;
  // mov [0x7104 + eax * 8], ebx ; mov [0x7108 + eax * 8], ecx ;
  // inc dword [0x7100] ; pop ebx ; pop eax ; iret
  vm.code(0x4000, {0x50, 0x53, 0xA1, 0x00, 0x71, 0, 0, 0x8B, 0x5C, 0x24, 0x08, 0x89, 0x1C, 0xC5,
                   0x04, 0x71, 0, 0, 0x89, 0x0C, 0xC5, 0x08, 0x71, 0, 0, 0xFF, 0x05, 0x00, 0x71,
                   0, 0, 0x5B, 0x58, 0xCF});
}

TEST_P(EngineTest, SingleStepTrapsAfterEachRepIteration) {
  TestVm vm(GetParam());
  log_single_steps(vm);
  // pushf ; or dword [esp], 0x100 ; popf ; rep movsb (0x1009) ;
  // pushf ; and dword [esp], ~0x100 ; popf ; hlt
  vm.code(0x1000, {0x9C, 0x81, 0x0C, 0x24, 0x00, 0x01, 0, 0, 0x9D, 0xF3, 0xA4, 0x9C, 0x81, 0x24,
                   0x24, 0xFF, 0xFE, 0xFF, 0xFF, 0x9D, 0xF4});
  vm.s.eip = 0x1000;
  vm.s.gpr[ESI] = 0x20000;
  vm.s.gpr[EDI] = 0x30000;
  vm.s.gpr[ECX] = 3;
  vm.run(200);
  // Each iteration traps; EIP stays on the REP until the last one.
  const u32 want[][2] = {{0x1009, 2}, {0x1009, 1}, {0x100B, 0}, {0x100C, 0}, {0x1013, 0}, {0x1014, 0}};
  ASSERT_EQ(vm.rd32(0x7100), 6u);
  for (u32 k = 0; k < 6; k++) {
    EXPECT_EQ(vm.rd32(0x7104 + k * 8), want[k][0]) << k;
    EXPECT_EQ(vm.rd32(0x7108 + k * 8), want[k][1]) << k;
  }
  EXPECT_TRUE(vm.s.halted);
}

TEST_P(EngineTest, SingleStepTrapWaitsOneInstructionAfterAnSsLoad) {
  TestVm vm(GetParam());
  log_single_steps(vm);
  // pushf ; or dword [esp], 0x100 ; popf ; mov ss, eax ; inc ecx (0x100B) ;
  // push ss ; pop ss (0x100D) ; inc ecx ; pushf ; and dword [esp], ~0x100 ;
  // popf ; hlt
  vm.code(0x1000, {0x9C, 0x81, 0x0C, 0x24, 0x00, 0x01, 0, 0, 0x9D, 0x8E, 0xD0, 0x41, 0x16, 0x17,
                   0x41, 0x9C, 0x81, 0x24, 0x24, 0xFF, 0xFE, 0xFF, 0xFF, 0x9D, 0xF4});
  vm.s.eip = 0x1000;
  vm.s.gpr[EAX] = 0x10;
  vm.s.gpr[ECX] = 0;
  vm.run(200);
  // No trap reports the instruction after MOV SS or POP SS.
  const u32 want[][2] = {{0x100C, 1}, {0x100D, 1}, {0x100F, 2}, {0x1010, 2}, {0x1017, 2}, {0x1018, 2}};
  ASSERT_EQ(vm.rd32(0x7100), 6u);
  for (u32 k = 0; k < 6; k++) {
    EXPECT_EQ(vm.rd32(0x7104 + k * 8), want[k][0]) << k;
    EXPECT_EQ(vm.rd32(0x7108 + k * 8), want[k][1]) << k;
  }
  EXPECT_TRUE(vm.s.halted);
}

TEST_P(EngineTest, RepMovsCopiesAndLoopsTerminate) {
  TestVm vm(GetParam());
  std::vector<u8> src(300);
  for (unsigned k = 0; k < src.size(); k++) src[k] = u8(k * 7);
  vm.pm.write_bytes(0x20000, src.data(), src.size());
  // mov esi, 0x20000 ; mov edi, 0x30000 ; mov ecx, 300 ; rep movsb ; hlt
  vm.code(0x1000, {0xBE, 0, 0, 2, 0, 0xBF, 0, 0, 3, 0, 0xB9, 0x2C, 1, 0, 0, 0xF3, 0xA4, 0xF4});
  vm.s.eip = 0x1000;
  vm.run(10000);
  std::vector<u8> dst(300);
  vm.pm.read_bytes(0x30000, dst.data(), dst.size());
  EXPECT_EQ(dst, src);
  EXPECT_EQ(vm.s.gpr[ECX], 0u);
}

// REP MOVSD and REP STOSD over several pages, from offsets that make every
// chunk end at a different page boundary of source and destination, and one
// long enough to pass a yield point (ECX a multiple of 65536).
TEST_P(EngineTest, RepMovsAndStosOverManyPages) {
  TestVm vm(GetParam());
  std::vector<u8> src(5 * 4096);
  for (unsigned k = 0; k < src.size(); k++) src[k] = u8(k * 13 + (k >> 8));
  vm.pm.write_bytes(0x20ff0, src.data(), src.size());
  // mov esi, 0x20ff0 ; mov edi, 0x30a04 ; mov ecx, 5000 ; rep movsd ;
  // mov edi, 0x40002 ; mov eax, 0x11223344 ; mov ecx, 0x10010 ; rep stosd ; hlt
  vm.code(0x1000, {0xBE, 0xF0, 0x0F, 0x02, 0, 0xBF, 0x04, 0x0A, 0x03, 0, 0xB9, 0x88, 0x13, 0, 0, 0xF3,
                   0xA5, 0xBF, 0x02, 0, 0x04, 0, 0xB8, 0x44, 0x33, 0x22, 0x11, 0xB9, 0x10, 0, 1, 0,
                   0xF3, 0xAB, 0xF4});
  vm.s.eip = 0x1000;
  for (int k = 0; k < 100 && !vm.s.halted; k++) vm.run(10000);
  ASSERT_TRUE(vm.s.halted);
  std::vector<u8> dst(20000);
  vm.pm.read_bytes(0x30a04, dst.data(), dst.size());
  EXPECT_TRUE(std::equal(dst.begin(), dst.end(), src.begin()));
  EXPECT_EQ(vm.s.gpr[ESI], 0x20ff0u + 20000);
  EXPECT_EQ(vm.s.gpr[EDI], 0x40002u + 0x10010 * 4);
  EXPECT_EQ(vm.s.gpr[ECX], 0u);
  EXPECT_EQ(vm.rd32(0x40002), 0x11223344u);
  EXPECT_EQ(vm.rd32(0x40002 + 0x1000F * 4), 0x11223344u);
  EXPECT_EQ(vm.rd32(0x40002 + 0x10010 * 4), 0u);
}

// One REP MOVSD writes into 20 pages that hold translated code (as the
// kernel's memcpy does when it patches its own text): each copy goes the slow
// way, and that must not make the instruction a plain callout for good (bt's
// adaptive translation leaves REP string instructions inline).
TEST_P(EngineTest, RepMovsIntoCodePagesStaysInline) {
  TestVm vm(GetParam());
  for (u32 k = 0; k < 20; k++) vm.code(0x10000 + k * 0x1000, {0xC3});  // ret
  const u32 nops = 0x90909090;
  vm.pm.write_bytes(0x2000, &nops, 4);
  // mov ebx, 0x10000 ; l1: call ebx ; add ebx, 0x1000 ; cmp ebx, 0x24000 ; jne l1
  // mov ebx, 0x10100 ; l2: mov esi, 0x2000 ; mov edi, ebx ; mov ecx, 1 ; rep movsd
  // add ebx, 0x1000 ; cmp ebx, 0x24100 ; jne l2 ; hlt
  vm.code(0x1000, {0xBB, 0x00, 0x00, 0x01, 0x00, 0xFF, 0xD3, 0x81, 0xC3, 0x00, 0x10, 0x00, 0x00,
                   0x81, 0xFB, 0x00, 0x40, 0x02, 0x00, 0x75, 0xF0, 0xBB, 0x00, 0x01, 0x01, 0x00,
                   0xBE, 0x00, 0x20, 0x00, 0x00, 0x89, 0xDF, 0xB9, 0x01, 0x00, 0x00, 0x00, 0xF3,
                   0xA5, 0x81, 0xC3, 0x00, 0x10, 0x00, 0x00, 0x81, 0xFB, 0x00, 0x41, 0x02, 0x00,
                   0x75, 0xE4, 0xF4});
  vm.s.eip = 0x1000;
  for (int k = 0; k < 100 && !vm.s.halted; k++) vm.run(10000);
  ASSERT_TRUE(vm.s.halted);
  EXPECT_EQ(vm.s.eip, 0x1037u);
  for (u32 k = 0; k < 20; k++) EXPECT_EQ(vm.rd32(0x10100 + k * 0x1000), nops) << "page " << k;
  if (GetParam().bt) {
    for (const auto& [name, value] : vm.eng->stats()) {
      if (name == "bt.adaptive_retranslations") {
        EXPECT_EQ(value, 0u);
      }
    }
  }
}

TEST_P(EngineTest, RepneScasbFindsAByteAcrossAPage) {
  TestVm vm(GetParam());
  // A 5000-byte run of 'a' from 0x20F00 (crossing into the next page), then 0.
  std::vector<u8> str(5000, 'a');
  str.push_back(0);
  vm.pm.write_bytes(0x20F00, str.data(), str.size());
  // mov edi, 0x20F00 ; xor eax, eax ; mov ecx, -1 ; repne scasb ; hlt
  vm.code(0x1000, {0xBF, 0x00, 0x0F, 0x02, 0x00, 0x31, 0xC0, 0xB9, 0xFF, 0xFF, 0xFF, 0xFF,
                   0xF2, 0xAE, 0xF4});
  vm.s.eip = 0x1000;
  vm.run(100000);
  EXPECT_EQ(vm.s.gpr[EDI], 0x20F00u + 5001);
  EXPECT_EQ(vm.s.gpr[ECX], 0xFFFFFFFFu - 5001);
  EXPECT_TRUE(vm.s.eflags & ZF);
  // Not found within ECX: stops with ZF clear and ECX 0.
  vm.s.halted = false;
  if (GetParam().opt.lockstep) return;  // the test sets registers between runs
  vm.s.gpr[EDI] = 0x20F00;
  vm.s.gpr[ECX] = 300;
  vm.s.eip = 0x100C;
  vm.run(100000);
  EXPECT_EQ(vm.s.gpr[ECX], 0u);
  EXPECT_EQ(vm.s.gpr[EDI], 0x20F00u + 300);
  EXPECT_FALSE(vm.s.eflags & ZF);
}

// Identity paging of the test machine's 4 MiB (page directory 0x10000,
// page table 0x11000, both reachable at their own linear addresses).
static void identity_paging(TestVm& vm) {
  const u32 pd = 0x10000, pt = 0x11000;
  u32 pde = pt | 3;
  vm.pm.write_bytes(pd, &pde, 4);
  for (u32 p = 0; p < 1024; p++) {
    u32 pte = (p << 12) | 3;
    vm.pm.write_bytes(pt + p * 4, &pte, 4);
  }
  vm.s.cr3 = pd;
  vm.s.cr0 |= CR0_PG;
}

// A load and a store run three times on one mapping (the third time bt's
// memo of the page answers them), then the page table maps the linear page
// elsewhere, followed by INVLPG, then by a CR3 load: each access sees the
// new page.
TEST_P(EngineTest, MemoryOperandsFollowInvlpgAndCr3Loads) {
  TestVm vm(GetParam());
  identity_paging(vm);
  const u32 val[3] = {0x11111111, 0x02222222, 0x00333333};
  for (u32 k = 0; k < 3; k++) vm.pm.write_bytes(0x200000 + k * 0x1000, &val[k], 4);
  //        mov esi, 0x200000 ; xor edi, edi ; mov ecx, 3
  // top:   mov edx, 3
  // inner: add edi, [esi] ; mov [esi+8], ecx ; dec edx ; jnz inner
  //        add dword [0x11800], 0x1000      (the PTE of 0x200000: the next page)
  //        cmp ecx, 2 ; je cr3
  //        invlpg [esi] ; jmp next
  // cr3:   mov eax, cr3 ; mov cr3, eax
  // next:  dec ecx ; jnz top ; hlt
  vm.code(0x1000, {0xBE, 0, 0, 0x20, 0, 0x31, 0xFF, 0xB9, 3, 0, 0, 0, 0xBA, 3, 0, 0, 0, 0x03, 0x3E,
                   0x89, 0x4E, 0x08, 0x4A, 0x75, 0xF8, 0x81, 0x05, 0x00, 0x18, 0x01, 0x00, 0x00, 0x10,
                   0x00, 0x00, 0x83, 0xF9, 0x02, 0x74, 0x05, 0x0F, 0x01, 0x3E, 0xEB, 0x06, 0x0F, 0x20,
                   0xD8, 0x0F, 0x22, 0xD8, 0x49, 0x75, 0xD6, 0xF4});
  vm.s.eip = 0x1000;
  EXPECT_EQ(vm.run(10000), engine::Exit::halt);
  EXPECT_EQ(vm.s.eip, 0x1037u);
  EXPECT_EQ(vm.s.gpr[EDI], 3 * (val[0] + val[1] + val[2]));
  for (u32 k = 0; k < 3; k++) EXPECT_EQ(vm.rd32(0x200008 + k * 0x1000), 3 - k) << "page " << k;
}

// A store runs three times into a page (bt's memo of it for writes then
// answers), then code on that page runs (and is translated: the page is
// watched from then on), then the same store rewrites that code. (Only the
// inner loop stores: a store elsewhere would rewrite the code first.)
TEST_P(EngineTest, StoresSeeAPageBecomeCode) {
  TestVm vm(GetParam());
  identity_paging(vm);
  //        xor edi, edi ; mov ecx, 3
  // top:   mov edx, 3 ; jmp inner
  // inner: mov [0x9001], ecx ; dec edx ; jnz inner
  //        call 0x9000 ; add edi, eax ; dec ecx ; jnz top ; hlt
  // 0x9000: mov eax, imm32 ; ret
  vm.code(0x1000, {0x31, 0xFF, 0xB9, 3, 0, 0, 0, 0xBA, 3, 0, 0, 0, 0xEB, 0x00, 0x89, 0x0D, 0x01,
                   0x90, 0, 0, 0x4A, 0x75, 0xF7, 0xE8, 0xE4, 0x7F, 0, 0, 0x01, 0xC7, 0x49, 0x75,
                   0xE6, 0xF4});
  vm.code(0x9000, {0xB8, 0, 0, 0, 0, 0xC3});
  vm.s.eip = 0x1000;
  EXPECT_EQ(vm.run(10000), engine::Exit::halt);
  EXPECT_EQ(vm.s.eip, 0x1022u);
  EXPECT_EQ(vm.s.gpr[EDI], 3u + 2 + 1);
}

// A load walks across the end of a page in steps of 2: the dword at 0xFFE
// of the page crosses into the next linear page, which maps to a physical
// page elsewhere (bt's memo of the first page must not serve it).
TEST_P(EngineTest, LoadsAcrossAPageEndReadBothPages) {
  TestVm vm(GetParam());
  identity_paging(vm);
  u32 pte = 0x205000 | 3;  // linear 0x201000 -> physical 0x205000
  vm.pm.write_bytes(0x11000 + 0x201 * 4, &pte, 4);
  const u8 a[8] = {1, 2, 3, 4, 5, 6, 7, 8}, b[8] = {0x10, 0x20, 0x30, 0x40, 0x50, 0x60, 0x70, 0x80};
  vm.pm.write_bytes(0x200FF8, a, 8);
  vm.pm.write_bytes(0x205000, b, 8);
  vm.pm.write_bytes(0x201000, std::vector<u8>(8, 0xEE).data(), 8);  // what a wrong read would see
  //       mov esi, 0x200FF8 ; xor edi, edi ; mov ecx, 6
  // top:  add edi, [esi] ; add esi, 2 ; dec ecx ; jnz top ; hlt
  vm.code(0x1000, {0xBE, 0xF8, 0x0F, 0x20, 0x00, 0x31, 0xFF, 0xB9, 6, 0, 0, 0, 0x03, 0x3E, 0x83,
                   0xC6, 0x02, 0x49, 0x75, 0xF8, 0xF4});
  vm.s.eip = 0x1000;
  EXPECT_EQ(vm.run(10000), engine::Exit::halt);
  EXPECT_EQ(vm.s.eip, 0x1015u);
  std::vector<u8> lin(a, a + 8);
  lin.insert(lin.end(), b, b + 8);
  u32 sum = 0;
  for (unsigned k = 0; k < 6; k++) {
    u32 v = 0;
    std::memcpy(&v, lin.data() + 2 * k, 4);
    sum += v;
  }
  EXPECT_EQ(vm.s.gpr[EDI], sum);
}

// RDTSC in a loop and after it (bt: a thin call at CPL 0, not a callout):
// the time-stamp counter it reads follows the instruction count (the test
// platform's TSC is 10 per retired instruction) exactly as the interpreter's.
TEST_P(EngineTest, RdtscReadsTheTimeOfItsInstruction) {
  //       mov ecx, 5 ; xor esi, esi
  // top:  rdtsc ; add esi, eax ; dec ecx ; jnz top
  //       nop ; rdtsc ; hlt
  TestVm vm(GetParam());
  vm.code(0x1000, {0xB9, 5, 0, 0, 0, 0x31, 0xF6, 0x0F, 0x31, 0x01, 0xC6, 0x49, 0x75, 0xF9, 0x90, 0x0F,
                   0x31, 0xF4});
  vm.s.eip = 0x1000;
  EXPECT_EQ(vm.run(1000), engine::Exit::halt);
  // Before the k-th RDTSC in the loop: 2 + 4k instructions retired; the last
  // comes after 2 + 20 + 1.
  u32 sum = 0;
  for (u32 k = 0; k < 5; k++) sum += 12345 + 10 * (2 + 4 * k);
  EXPECT_EQ(vm.s.gpr[ESI], sum);
  EXPECT_EQ(vm.s.gpr[EAX], 12345u + 10 * 23);
  EXPECT_EQ(vm.s.gpr[EDX], 0u);
}

TEST_P(EngineTest, CallsReturnsAndIndirectJumps) {
  TestVm vm(GetParam());
  // 0x1000: mov eax, 0 ; mov ecx, 50
  // loop:   call f ; dec ecx ; jnz loop ; mov edx, 0x1100 ; jmp edx
  // f (0x1080): add eax, 3 ; ret
  // 0x1100: hlt
  vm.code(0x1000, {0xB8, 0, 0, 0, 0, 0xB9, 50, 0, 0, 0, 0xE8, 0x71, 0, 0, 0, 0x49, 0x75, 0xF8,
                   0xBA, 0, 0x11, 0, 0, 0xFF, 0xE2});
  vm.code(0x1080, {0x83, 0xC0, 0x03, 0xC3});
  vm.code(0x1100, {0xF4});
  vm.s.eip = 0x1000;
  vm.run(10000);
  EXPECT_EQ(vm.s.gpr[EAX], 150u);
  EXPECT_EQ(vm.s.eip, 0x1101u);
  EXPECT_EQ(vm.s.gpr[ESP], test::kStackTop);
}

// An MMX loop (GMP's lshift shape: quadword loads, shifts, OR of the carry,
// stores) with the loop's DEC before an MMX store and its JNZ after it: the
// flags live across the MMX instructions (bt runs them as callouts). Every
// engine must get the same memory, registers and x87 state.
TEST_P(EngineTest, MmxLoopMatchesOnEveryEngine) {
  TestVm vm(GetParam());
  constexpr u32 kSrc = 0x10000, kDst = 0x11000;
  constexpr unsigned kN = 16;
  u64 src[kN];
  u64 x = 0x9E3779B97F4A7C15ull;
  for (auto& v : src) {
    x ^= x << 13; x ^= x >> 7; x ^= x << 17;
    v = x;
  }
  vm.pm.write_bytes(kSrc, src, sizeof src);
  //       mov esi, kSrc ; mov edi, kDst ; mov ecx, kN ; pxor mm7, mm7
  // top:  movq mm0, [esi] ; movq mm1, mm0 ; psllq mm0, 3 ; psrlq mm1, 61
  //       por mm0, mm7 ; movq mm7, mm1 ; paddw mm0, [esi]
  //       add esi, 8 ; add edi, 8 ; dec ecx ; movq [edi-8], mm0 ; jnz top
  //       movd eax, mm7 ; emms ; hlt
  vm.code(0x1000, {0xBE, 0x00, 0x00, 0x01, 0x00, 0xBF, 0x00, 0x10, 0x01, 0x00, 0xB9, kN, 0, 0, 0,
                   0x0F, 0xEF, 0xFF,
                   0x0F, 0x6F, 0x06, 0x0F, 0x6F, 0xC8, 0x0F, 0x73, 0xF0, 0x03, 0x0F, 0x73, 0xD1, 0x3D,
                   0x0F, 0xEB, 0xC7, 0x0F, 0x6F, 0xF9, 0x0F, 0xFD, 0x06,
                   0x83, 0xC6, 0x08, 0x83, 0xC7, 0x08, 0x49, 0x0F, 0x7F, 0x47, 0xF8, 0x75, 0xDC,
                   0x0F, 0x7E, 0xF8, 0x0F, 0x77, 0xF4});
  vm.s.eip = 0x1000;
  vm.s.fpu.set_top(3);  // MMX sets TOP to 0
  EXPECT_EQ(vm.run(100000), engine::Exit::halt);
  EXPECT_EQ(vm.s.eip, 0x103Cu);
  u64 carry = 0;
  for (unsigned k = 0; k < kN; k++) {
    u64 r = (src[k] << 3) | carry;
    carry = src[k] >> 61;
    u64 sum = 0;  // paddw
    for (unsigned w = 0; w < 4; w++) sum |= u64(u16(u16(r >> (16 * w)) + u16(src[k] >> (16 * w)))) << (16 * w);
    u64 got = 0;
    vm.pm.read_bytes(kDst + 8 * k, &got, 8);
    EXPECT_EQ(got, sum) << k;
  }
  EXPECT_EQ(vm.s.gpr[EAX], u32(carry));
  EXPECT_EQ(vm.s.gpr[ECX], 0u);
  EXPECT_EQ(vm.s.fpu.top(), 0u);
  EXPECT_EQ(vm.s.fpu.ftw, 0xFFFF);  // EMMS
  u8 r7[10];
  std::memcpy(r7, &vm.s.fpu.regs[7], 10);
  u64 m7;
  std::memcpy(&m7, r7, 8);
  EXPECT_EQ(m7, carry);
  EXPECT_EQ(r7[8], 0xFF);
  EXPECT_EQ(r7[9], 0xFF);
}

// CR0.TS: an MMX instruction in the middle of a block raises #NM at its own
// EIP, with the instructions before it done.
TEST_P(EngineTest, MmxWithTsRaisesNm) {
  TestVm vm(GetParam());
  vm.s.cr0 |= CR0_TS;
  // mov ebx, 5 ; paddd mm0, mm1 ; mov ebx, 6 ; hlt
  vm.code(0x1000, {0xBB, 5, 0, 0, 0, 0x0F, 0xFE, 0xC1, 0xBB, 6, 0, 0, 0, 0xF4});
  vm.s.eip = 0x1000;
  vm.run(100);
  EXPECT_EQ(vm.vector_taken(), u32(NM));
  EXPECT_EQ(vm.rd32(test::kStackTop - 12), 0x1005u);
  EXPECT_EQ(vm.s.gpr[EBX], 5u);
}

// An MMX store that crosses into a not-present page faults before writing
// any of it (#PF, CR2 the first byte of the absent page); the instructions
// before it are done, the MMX register state is as it was.
TEST_P(EngineTest, MmxStoreAcrossIntoAnAbsentPageIsPrecise) {
  TestVm vm(GetParam());
  const u32 pd = 0x10000, pt = 0x11000;
  u32 pde = pt | 3;
  vm.pm.write_bytes(pd, &pde, 4);
  for (u32 k = 0; k < 1024; k++) {
    u32 pte = (k << 12) | 3;
    if (k == 0x200) pte = 0;
    vm.pm.write_bytes(pt + k * 4, &pte, 4);
  }
  vm.s.cr3 = pd;
  vm.s.cr0 |= CR0_PG;
  const u32 guard = 0xA5A5A5A5;
  vm.pm.write_bytes(0x1FFFFC, &guard, 4);
  // mov ebx, 0x1FFFFC ; mov eax, 0x12345678 ; movd mm3, eax ; add ebx, 0 ;
  // movq [ebx], mm3 ; mov ebx, 1 ; hlt
  vm.code(0x1000, {0xBB, 0xFC, 0xFF, 0x1F, 0x00, 0xB8, 0x78, 0x56, 0x34, 0x12, 0x0F, 0x6E, 0xD8,
                   0x83, 0xC3, 0x00, 0x0F, 0x7F, 0x1B, 0xBB, 1, 0, 0, 0, 0xF4});
  vm.s.eip = 0x1000;
  vm.run(100);
  EXPECT_EQ(vm.vector_taken(), u32(PF_V));
  EXPECT_EQ(vm.s.cr2, 0x200000u);
  EXPECT_EQ(vm.rd32(test::kStackTop - 12), 0x1010u);
  EXPECT_EQ(vm.s.gpr[EBX], 0x1FFFFCu);
  u32 after = 0;
  vm.pm.read_bytes(0x1FFFFC, &after, 4);
  EXPECT_EQ(after, guard);
  u64 m3 = 0;
  std::memcpy(&m3, &vm.s.fpu.regs[3], 8);
  EXPECT_EQ(m3, 0x12345678u);
}

INSTANTIATE_TEST_SUITE_P(Engines, EngineTest, ::testing::ValuesIn(test::all_engines()),
                         [](const auto& info) { return info.param.name; });
