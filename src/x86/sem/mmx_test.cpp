// MMX: the x87 aliasing (SDM vol. 1 9.5), the CR0 and pending-exception
// faults, and precise memory faults. The arithmetic itself is checked against
// the host CPU by the oracle vectors (tools/oracle, group mmx).
#include <gtest/gtest.h>

#include <cstring>
#include <vector>

#include "x86/cpu.h"
#include "x86/cpuid.h"
#include "x86/insn.h"
#include "x86/sem/test_rig.h"

namespace popek::x86 {
namespace {

constexpr u32 kMemSize = 1u << 16;
constexpr u32 kBadPage = 0x8000;  // accesses to this page raise #PF

using FlatMem = test::FlatMem<kMemSize, kBadPage>;
using test::FakePlatform;

struct Machine {
  CpuState s;
  FlatMem mem;
  FakePlatform plat;
  Cpu cpu{s, mem, plat};
  Machine() {
    s.reset();
    s.cr0 = CR0_PE | CR0_NE | CR0_ET;
    for (auto& sg : s.seg) sg = Segment{0x10, 0, 0xFFFFFFFF, 0xC093};
    s.seg[CS] = Segment{0x08, 0, 0xFFFFFFFF, 0xC09B};
    s.fpu = FpuState{};
  }
  void exec(std::initializer_list<u8> bytes) {
    std::vector<u8> v(bytes);
    Insn i;
    ASSERT_EQ(decode(v.data(), unsigned(v.size()), true, &i), DecodeStatus::ok);
    ASSERT_EQ(i.len, v.size());
    handler_for(i)(cpu, i);
  }
  void expect_fault(std::initializer_list<u8> bytes, u8 vector) {
    const CpuState before = s;
    const std::vector<u8> mem_before = mem.b.copy();
    try {
      exec(bytes);
      ADD_FAILURE() << "no fault";
    } catch (const Fault& f) {
      EXPECT_EQ(f.vector, vector);
    }
    EXPECT_EQ(0, std::memcmp(&before.fpu, &s.fpu, sizeof before.fpu));
    EXPECT_EQ(0, std::memcmp(before.gpr, s.gpr, sizeof s.gpr));
    EXPECT_TRUE(mem_before == mem.b.copy());
  }
  // Physical register p: significand and sign/exponent.
  u64 mant(unsigned p) const {
    u64 m;
    std::memcpy(&m, &s.fpu.regs[p], 8);
    return m;
  }
  u16 sexp(unsigned p) const {
    u16 e;
    std::memcpy(&e, reinterpret_cast<const u8*>(&s.fpu.regs[p]) + 8, 2);
    return e;
  }
  void set_reg80(unsigned p, u64 m, u16 se) {
    std::memset(&s.fpu.regs[p], 0, sizeof s.fpu.regs[p]);
    std::memcpy(&s.fpu.regs[p], &m, 8);
    std::memcpy(reinterpret_cast<u8*>(&s.fpu.regs[p]) + 8, &se, 2);
  }
  u64 mem64(u32 a) const {
    u64 v;
    std::memcpy(&v, &mem.b[a], 8);
    return v;
  }
};

TEST(Mmx, CpuidReportsMmx) {
  EXPECT_TRUE(cpuid(1, 0).edx & (1u << 23));
  EXPECT_EQ(cpuid(1, 0).eax, 0x652u);
  EXPECT_FALSE(cpuid(1, 0).edx & (1u << 25));  // no SSE
}

// A write sets the register's sign/exponent to all ones; any MMX instruction
// sets TOP = 0 and makes every tag non-empty (as FNSTENV derives it from the
// contents); registers are physical, not relative to TOP.
TEST(Mmx, WriteAliasesPhysicalRegisterAndEntersMmxState) {
  Machine m;
  m.s.fpu.set_top(5);
  m.s.fpu.ftw = 0xFFFF;                 // all empty
  m.set_reg80(3, 0x8000000000000000ull, 0x3FFF);  // 1.0 in R3
  m.s.fpu.fsw |= 0x4100;                // C3, C0: left alone
  m.s.gpr[ECX] = 0xDEADBEEF;
  m.exec({0x0F, 0x6E, 0xD1});  // movd mm2, ecx
  EXPECT_EQ(m.mant(2), 0xDEADBEEFull);
  EXPECT_EQ(m.sexp(2), 0xFFFF);
  EXPECT_EQ(m.mant(3), 0x8000000000000000ull);  // untouched
  EXPECT_EQ(m.sexp(3), 0x3FFF);
  EXPECT_EQ(m.s.fpu.top(), 0u);
  EXPECT_EQ(m.s.fpu.fsw & 0x4700, 0x4100);
  // R2: exponent all ones -> special (10); R3: 1.0 -> valid (00); the rest 0.0 -> zero (01).
  u16 want = 0;
  for (unsigned p = 0; p < 8; ++p) want |= u16((p == 2 ? 2 : p == 3 ? 0 : 1) << (2 * p));
  EXPECT_EQ(m.s.fpu.ftw, want);
}

TEST(Mmx, ReadOnlyInstructionStillEntersMmxState) {
  Machine m;
  m.s.fpu.set_top(3);
  m.s.fpu.ftw = 0xFFFF;
  m.set_reg80(1, 0x1122334455667788ull, 0x1234);
  m.exec({0x0F, 0x7E, 0xC8});  // movd eax, mm1
  EXPECT_EQ(m.s.gpr[EAX], 0x55667788u);
  EXPECT_EQ(m.sexp(1), 0x1234);  // a read leaves the exponent alone
  EXPECT_EQ(m.s.fpu.top(), 0u);
  EXPECT_NE(m.s.fpu.ftw & 0xC, 0xCu);  // R1 no longer empty
}

TEST(Mmx, EmmsEmptiesTags) {
  Machine m;
  m.exec({0x0F, 0xEF, 0xC0});  // pxor mm0, mm0
  EXPECT_NE(m.s.fpu.ftw, 0xFFFF);
  m.s.fpu.set_top(6);
  m.exec({0x0F, 0x77});  // emms
  EXPECT_EQ(m.s.fpu.ftw, 0xFFFF);
  EXPECT_EQ(m.s.fpu.top(), 0u);
  EXPECT_EQ(m.mant(0), 0u);  // contents stay
  EXPECT_EQ(m.sexp(0), 0xFFFF);
}

// x87 after MMX: every register is in use, so a push overflows (masked:
// the indefinite); with ST(7) freed, FLD ST(1) reads R1 (TOP = 0) as the MMX
// write left it, sign/exponent 0xFFFF; FSTP m80 stores those raw 80 bits.
TEST(Mmx, X87LoadSeesMmxWrite) {
  Machine m;
  const u64 q = 0xC000000000001234ull;  // with sign/exponent all ones: a negative QNaN
  std::memcpy(&m.mem.b[0x100], &q, 8);
  m.exec({0x0F, 0x6F, 0x0D, 0x00, 0x01, 0x00, 0x00});  // movq mm1, [0x100]
  m.exec({0xD9, 0xE8});                                  // fld1: overflow
  EXPECT_EQ(m.s.fpu.fsw & 0x41, 0x41);                   // IE | SF
  EXPECT_EQ(m.mant(7), 0xC000000000000000ull);           // the indefinite in R7
  m.exec({0x0F, 0x77});                                  // emms
  m.exec({0x0F, 0x6F, 0x0D, 0x00, 0x01, 0x00, 0x00});  // movq mm1, [0x100]
  m.s.fpu.fsw &= ~0x7F;
  m.exec({0xDD, 0xC7});                                  // ffree st(7)
  m.exec({0xD9, 0xC1});                                  // fld st(1)
  EXPECT_EQ(m.s.fpu.top(), 7u);
  EXPECT_EQ(m.mant(7), q);
  EXPECT_EQ(m.sexp(7), 0xFFFF);
  EXPECT_EQ(m.s.fpu.fsw & 0x3F, 0);  // a register load of a QNaN raises nothing
  m.exec({0xDB, 0x3D, 0x00, 0x02, 0x00, 0x00});  // fstp tword [0x200]
  EXPECT_EQ(m.mem64(0x200), q);
  EXPECT_EQ(m.mem.b[0x208], 0xFF);
  EXPECT_EQ(m.mem.b[0x209], 0xFF);
}

// FNSAVE after MMX: the image holds R0..R7 in order (TOP = 0) with the MMX
// values, and the tag word derived from them; FRSTOR then MOVQ reads them back.
TEST(Mmx, FnsaveImageAndFrstorRoundTrip) {
  Machine m;
  for (unsigned r = 0; r < 8; ++r) {
    m.s.gpr[EAX] = 0x01010101u * (r + 1);
    m.exec({0x0F, 0x6E, u8(0xC0 | (r << 3))});  // movd mmr, eax
  }
  m.exec({0xDD, 0x35, 0x00, 0x03, 0x00, 0x00});  // fnsave [0x300]
  u16 sw, tw;
  std::memcpy(&sw, &m.mem.b[0x304], 2);
  std::memcpy(&tw, &m.mem.b[0x308], 2);
  EXPECT_EQ((sw >> 11) & 7, 0);
  EXPECT_EQ(tw, 0xAAAA);  // all special: exponent all ones
  for (unsigned r = 0; r < 8; ++r) {
    EXPECT_EQ(m.mem64(0x300 + 28 + 10 * r), 0x01010101ull * (r + 1)) << r;  // zero-extended
    EXPECT_EQ(m.mem.b[0x300 + 28 + 10 * r + 8], 0xFF);
    EXPECT_EQ(m.mem.b[0x300 + 28 + 10 * r + 9], 0xFF);
  }
  EXPECT_EQ(m.s.fpu.ftw, 0xFFFF);  // FNSAVE reinitialised
  m.exec({0xDD, 0x25, 0x00, 0x03, 0x00, 0x00});  // frstor [0x300]
  m.exec({0x0F, 0x7F, 0x3D, 0x00, 0x04, 0x00, 0x00});  // movq [0x400], mm7
  EXPECT_EQ(m.mem64(0x400), 0x08080808ull);
}

TEST(Mmx, Cr0EmIsUdAndTsIsNm) {
  Machine m;
  m.s.cr0 |= CR0_EM;
  m.expect_fault({0x0F, 0xFE, 0xC1}, UD);
  m.expect_fault({0x0F, 0x77}, UD);
  m.s.cr0 |= CR0_TS;
  m.expect_fault({0x0F, 0xFE, 0xC1}, UD);  // EM first
  m.s.cr0 &= ~CR0_EM;
  m.expect_fault({0x0F, 0xFE, 0xC1}, NM);
  m.expect_fault({0x0F, 0x77}, NM);
  m.expect_fault({0x0F, 0x6E, 0xC0}, NM);
}

TEST(Mmx, PendingX87ExceptionIsMfOrFerr) {
  Machine m;
  m.s.fpu.fcw = 0x037E;               // IE unmasked
  m.s.fpu.fsw = 0x0001 | 0x80 | 0x8000;  // IE, ES, B: pending
  m.expect_fault({0x0F, 0xFE, 0xC1}, MF);
  m.expect_fault({0x0F, 0x77}, MF);
  m.s.cr0 &= ~CR0_NE;  // FERR#: the instruction runs
  m.exec({0x0F, 0x77});
  EXPECT_EQ(m.plat.fpu_errors, 1);
  EXPECT_EQ(m.s.fpu.ftw, 0xFFFF);
}

TEST(Mmx, MemoryFaultsArePrecise) {
  Machine m;
  m.s.fpu.set_top(4);
  m.s.gpr[EBX] = kBadPage + 0x10;
  m.expect_fault({0x0F, 0x6F, 0x03}, PF_V);  // movq mm0, [ebx]
  m.expect_fault({0x0F, 0x7F, 0x03}, PF_V);  // movq [ebx], mm0
  m.expect_fault({0x0F, 0xFC, 0x0B}, PF_V);  // paddb mm1, [ebx]
  m.expect_fault({0x0F, 0x7E, 0x03}, PF_V);  // movd [ebx], mm0
  // A quadword that crosses into the bad page: nothing of it is written.
  m.s.gpr[EBX] = kBadPage - 4;
  m.expect_fault({0x0F, 0x7F, 0x03}, PF_V);
  // Beyond the segment limit: #GP(0), or #SS for an SS-relative operand.
  m.s.seg[DS].limit = 0xFFF;
  m.s.seg[SS].limit = 0xFFF;
  m.s.gpr[EBX] = 0xFFC;
  m.expect_fault({0x0F, 0x6F, 0x03}, GP);
  m.s.gpr[EBP] = 0xFFC;
  m.expect_fault({0x0F, 0x6F, 0x45, 0x00}, SS_V);
  // No alignment check: a misaligned quadword inside the limit is fine.
  m.s.gpr[EBX] = 0x101;
  m.exec({0x0F, 0x6F, 0x03});
}

TEST(Mmx, KnownResults) {
  Machine m;
  auto run2 = [&](std::initializer_list<u8> op, u64 a, u64 b) {
    std::memcpy(&m.mem.b[0x500], &a, 8);
    std::memcpy(&m.mem.b[0x508], &b, 8);
    m.exec({0x0F, 0x6F, 0x05, 0x00, 0x05, 0x00, 0x00});  // movq mm0, [0x500]
    m.exec({0x0F, 0x6F, 0x0D, 0x08, 0x05, 0x00, 0x00});  // movq mm1, [0x508]
    std::vector<u8> v(op);
    Insn i;
    EXPECT_EQ(decode(v.data(), unsigned(v.size()), true, &i), DecodeStatus::ok);
    handler_for(i)(m.cpu, i);
    return m.mant(0);
  };
  EXPECT_EQ(run2({0x0F, 0xEC, 0xC1}, 0x7F80FF0000000000ull, 0x0180FF0000000000ull),
            0x7F80FE0000000000ull);  // paddsb: 7F+01 saturates, 80+80 saturates, FF+FF = FE
  EXPECT_EQ(run2({0x0F, 0xD8, 0xC1}, 0x0010000000000000ull, 0x0120000000000000ull), 0u);  // psubusb
  EXPECT_EQ(run2({0x0F, 0xF5, 0xC1}, 0x8000800000000000ull, 0x8000800000000000ull),
            0x8000000000000000ull);  // pmaddwd: 2 * 2^30 wraps
  EXPECT_EQ(run2({0x0F, 0x63, 0xC1}, 0x0080FF7F7FFF8000ull, 0x0000000100020003ull),
            0x000102037F807F80ull);  // packsswb
  EXPECT_EQ(run2({0x0F, 0x67, 0xC1}, 0x0080FF7F7FFF8000ull, 0ull), 0x000000008000FF00ull);  // packuswb
  EXPECT_EQ(run2({0x0F, 0x68, 0xC1}, 0x8877665544332211ull, 0xFFEEDDCCBBAA9988ull),
            0xFF88EE77DD66CC55ull);  // punpckhbw
  EXPECT_EQ(run2({0x0F, 0xE1, 0xC1}, 0x8000400020001000ull, 40), 0xFFFF000000000000ull);  // psraw by 40
  EXPECT_EQ(run2({0x0F, 0xD3, 0xC1}, ~0ull, 64), 0u);  // psrlq by 64
  m.exec({0x0F, 0x72, 0xE0, 0x04});  // psrad mm0, 4 (mm0 = 0 now)
  EXPECT_EQ(m.mant(0), 0u);
}

}  // namespace
}  // namespace popek::x86
