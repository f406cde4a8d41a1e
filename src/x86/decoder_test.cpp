#include <gtest/gtest.h>

#include <Zydis/Zydis.h>

#include <random>

#include "x86/cpu.h"
#include "x86/cpuid.h"
#include "x86/disasm.h"
#include "x86/insn.h"

using namespace popek;
using namespace popek::x86;

TEST(Decoder, KnownEncodings) {
  struct Case {
    std::vector<u8> b;
    bool code32;
    Op op;
    unsigned len, osize;
  } cases[] = {
      {{0x01, 0xD8}, true, Op::ADD_EvGv, 2, 4},
      {{0x66, 0x01, 0xD8}, true, Op::ADD_EvGv, 3, 2},
      {{0x80, 0x04, 0x24, 0x05}, true, Op::ADD_EbIb, 4, 1},     // add byte [esp], 5
      {{0x81, 0x84, 0x88, 0x78, 0x56, 0x34, 0x12, 0xEF, 0xBE, 0xAD, 0xDE}, true, Op::ADD_EvIz, 11, 4},
      {{0x8B, 0x05, 1, 2, 3, 4}, true, Op::MOV_GvEv, 6, 4},     // mov eax, [disp32]
      {{0x8B, 0x46, 0x02}, false, Op::MOV_GvEv, 3, 2},          // mov ax, [bp+2]
      {{0x67, 0x8B, 0x06, 0x34, 0x12}, true, Op::MOV_GvEv, 5, 4},  // 16-bit addressing
      {{0x0F, 0x22, 0xC0}, true, Op::MOV_CdRd, 3, 4},
      {{0x0F, 0x01, 0x15, 1, 2, 3, 4}, true, Op::LGDT, 7, 4},
      {{0xEA, 1, 2, 3, 4, 0x08, 0x00}, true, Op::JMPF_Ap, 7, 4},
      {{0xC8, 0x10, 0x00, 0x01}, true, Op::ENTER, 4, 4},
      {{0xF3, 0xA5}, true, Op::MOVSV, 2, 4},
      {{0xD9, 0xE8}, true, Op::FLD1, 2, 4},
      {{0xDD, 0x5C, 0x24, 0x08}, true, Op::FSTP_M64, 4, 4},
      {{0x0F, 0xC7, 0x0F}, true, Op::CMPXCHG8B, 3, 4},
      {{0xF0, 0x0F, 0xB1, 0x0A}, true, Op::CMPXCHG_EvGv, 4, 4},
  };
  for (auto& c : cases) {
    Insn i;
    ASSERT_EQ(decode(c.b.data(), unsigned(c.b.size()), c.code32, &i), DecodeStatus::ok);
    EXPECT_EQ(i.op, c.op) << op_info(c.op).name;
    EXPECT_EQ(i.len, c.len) << op_info(c.op).name;
    EXPECT_EQ(i.osize, c.osize) << op_info(c.op).name;
  }
}

TEST(Decoder, SegmentsAndAddressing) {
  Insn i;
  const u8 b1[] = {0x8B, 0x04, 0x24};  // mov eax, [esp]: SS default
  ASSERT_EQ(decode(b1, 3, true, &i), DecodeStatus::ok);
  EXPECT_EQ(i.seg, SS);
  EXPECT_EQ(i.base, ESP);
  const u8 b2[] = {0x26, 0x8B, 0x45, 0x04};  // mov eax, es:[ebp+4]
  ASSERT_EQ(decode(b2, 4, true, &i), DecodeStatus::ok);
  EXPECT_EQ(i.seg, ES);
  EXPECT_EQ(i.disp, 4u);
  const u8 b3[] = {0x8B, 0x44, 0x8B, 0xFC};  // mov eax, [ebx+ecx*4-4]
  ASSERT_EQ(decode(b3, 4, true, &i), DecodeStatus::ok);
  EXPECT_EQ(i.base, EBX);
  EXPECT_EQ(i.index, ECX);
  EXPECT_EQ(i.scale, 2);
  EXPECT_EQ(i.disp, 0xFFFFFFFCu);
}

TEST(Decoder, InvalidFormsAndLimits) {
  Insn i;
  const u8 lea_reg[] = {0x8D, 0xC0};
  EXPECT_EQ(decode(lea_reg, 2, true, &i), DecodeStatus::invalid);
  const u8 lock_reg[] = {0xF0, 0x01, 0xC0};
  EXPECT_EQ(decode(lock_reg, 3, true, &i), DecodeStatus::invalid);
  const u8 lock_mov[] = {0xF0, 0x89, 0x00};
  EXPECT_EQ(decode(lock_mov, 3, true, &i), DecodeStatus::invalid);
  const u8 ud[] = {0x0F, 0xFF};
  EXPECT_EQ(decode(ud, 2, true, &i), DecodeStatus::invalid);
  u8 prefixes[16];
  std::fill(prefixes, prefixes + 15, 0x66);
  prefixes[15] = 0x90;
  EXPECT_EQ(decode(prefixes, 15, true, &i), DecodeStatus::too_long);
  const u8 partial[] = {0x81, 0xC0, 0x01};
  EXPECT_EQ(decode(partial, 3, true, &i), DecodeStatus::need_more);
}

// Every table row has a handler at the operand sizes it can be decoded with.
TEST(Table, EveryRowHasHandlers) {
  std::vector<std::string> missing;
  for (unsigned k = 0; k < kOpCount - 1; k++) {
    const OpInfo& in = op_info(Op(k));
    if (in.attrs & B) {
      if (!has_handler(Op(k), 0)) missing.push_back(in.name);
    } else {
      if (!has_handler(Op(k), 1) || !has_handler(Op(k), 2)) missing.push_back(in.name);
    }
  }
  std::string list;
  for (auto& m : missing) list += m + " ";
  EXPECT_TRUE(missing.empty()) << "rows without handlers: " << list;
}

// Lengths agree with an independent decoder (Zydis) on random byte strings
// for every instruction both accept in 16- and 32-bit mode.
TEST(Decoder, LengthsAgreeWithZydis) {
  std::mt19937 rng(1234);
  ZydisDecoder z32, z16;
  ZydisDecoderInit(&z32, ZYDIS_MACHINE_MODE_LEGACY_32, ZYDIS_STACK_WIDTH_32);
  ZydisDecoderInit(&z16, ZYDIS_MACHINE_MODE_LEGACY_16, ZYDIS_STACK_WIDTH_16);
  unsigned compared = 0, mismatched = 0;
  for (int n = 0; n < 200000; n++) {
    u8 b[15];
    for (auto& x : b) x = u8(rng());
    bool code32 = n & 1;
    Insn i;
    if (decode(b, 15, code32, &i) != DecodeStatus::ok) continue;
    ZydisDecodedInstruction zi;
    if (!ZYAN_SUCCESS(ZydisDecoderDecodeInstruction(code32 ? &z32 : &z16, nullptr, b, 15, &zi)))
      continue;
    compared++;
    if (zi.length != i.len) {
      if (mismatched++ < 10)
        ADD_FAILURE() << op_info(i.op).name << " len " << int(i.len) << " zydis " << int(zi.length)
                      << " bytes " << std::hex << int(b[0]) << " " << int(b[1]) << " " << int(b[2]);
    }
  }
  EXPECT_GT(compared, 50000u);
  EXPECT_EQ(mismatched, 0u);
}

// EDX after reset holds the processor signature CPUID leaf 1 reports in EAX:
// one CPU model, whichever way the guest asks.
TEST(CpuModel, ResetEdxIsTheCpuidSignature) {
  x86::CpuState s;
  s.reset();
  EXPECT_EQ(s.gpr[x86::EDX], x86::cpuid(1, 0).eax);
}

// MMX: the Pentium II's rows decode; SSE/SSE2 opcodes in the same map stay
// invalid (the model has no SSE); the shift-by-immediate groups have no
// memory forms; LOCK is #UD; a 66/F2/F3 prefix is ignored (no XMM forms).
TEST(Decoder, Mmx) {
  struct Case {
    std::vector<u8> b;
    Op op;
    unsigned len;
  } ok[] = {
      {{0x0F, 0x6E, 0xC1}, Op::MOVD_PqEd, 3},           // movd mm0, ecx
      {{0x0F, 0x7E, 0x0B}, Op::MOVD_EdPq, 3},           // movd [ebx], mm1
      {{0x0F, 0x6F, 0x44, 0x24, 0x08}, Op::MOVQ_PqQq, 5},
      {{0x0F, 0x7F, 0xCA}, Op::MOVQ_QqPq, 3},
      {{0x0F, 0xFE, 0xC1}, Op::PADDD, 3},
      {{0x0F, 0x71, 0xD0, 0x03}, Op::PSRLW_NqIb, 4},
      {{0x0F, 0x72, 0xE1, 0x1F}, Op::PSRAD_NqIb, 4},
      {{0x0F, 0x73, 0xF2, 0x40}, Op::PSLLQ_NqIb, 4},
      {{0x0F, 0x77}, Op::EMMS, 2},
      {{0x66, 0x0F, 0xFE, 0xC1}, Op::PADDD, 4},
      {{0xF3, 0x0F, 0x6F, 0xC1}, Op::MOVQ_PqQq, 4},
  };
  for (auto& c : ok) {
    Insn i;
    ASSERT_EQ(decode(c.b.data(), unsigned(c.b.size()), true, &i), DecodeStatus::ok) << op_info(c.op).name;
    EXPECT_EQ(i.op, c.op) << op_info(c.op).name;
    EXPECT_EQ(i.len, c.len) << op_info(c.op).name;
    EXPECT_TRUE(i.info().attrs & MMX) << op_info(c.op).name;
  }
  const std::vector<u8> bad[] = {
      {0x0F, 0x70, 0xC1, 0x00},  // pshufw (SSE)
      {0x0F, 0xD4, 0xC1},        // paddq (SSE2)
      {0x0F, 0xF4, 0xC1},        // pmuludq (SSE2)
      {0x0F, 0xFB, 0xC1},        // psubq (SSE2)
      {0x0F, 0xE7, 0x00},        // movntq (SSE)
      {0x0F, 0xD7, 0xC1},        // pmovmskb (SSE)
      {0x0F, 0x6C, 0xC1},        // punpcklqdq (SSE2)
      {0x0F, 0x73, 0xDA, 0x01},  // psrldq (66-only, SSE2)
      {0x0F, 0x71, 0x10, 0x01},  // psrlw m, imm8: no memory form
      {0x0F, 0x71, 0xC0, 0x01},  // 0F 71 /0
      {0xF0, 0x0F, 0xFE, 0x00},  // lock paddd
  };
  for (auto& b : bad) {
    Insn i;
    EXPECT_EQ(decode(b.data(), unsigned(b.size()), true, &i), DecodeStatus::invalid)
        << std::hex << int(b[0]) << " " << int(b[1]) << " " << int(b[2]);
  }
}

// --trace names MMX instructions.
TEST(Disasm, NamesMmx) {
  const u8 paddd[] = {0x0F, 0xFE, 0xC1};
  EXPECT_EQ(disassemble(paddd, 3, true, 0), "paddd mm0, mm1");
  const u8 psllq[] = {0x0F, 0x73, 0xF2, 0x05};
  EXPECT_EQ(disassemble(psllq, 4, true, 0), "psllq mm2, 0x05");
  const u8 movd[] = {0x0F, 0x7E, 0xC8};
  EXPECT_EQ(disassemble(movd, 3, true, 0), "movd eax, mm1");
  const u8 emms[] = {0x0F, 0x77};
  EXPECT_EQ(disassemble(emms, 2, true, 0), "emms");
}
