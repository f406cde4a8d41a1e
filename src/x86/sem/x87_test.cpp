// x87 semantics through the real decoder and handler binding.
//
// Oracle: every computational instruction is also executed natively on the
// host x87 unit, written here as Intel-syntax mnemonics (not popek's encodings)
// on the same register/stack/control state, all exceptions masked, and the
// whole resulting FPU state (status word, full tag word, the eight registers,
// the memory destination, EFLAGS for FCOMI/FCMOV) is compared.
// The rest (stack faults with unmasked IE, #NM, #MF/FERR#, FNSAVE/FRSTOR/
// FNSTENV/FLDENV images, instruction/data pointers, unmasked OE/UE) is checked
// against hand-derived SDM expectations.
#include <gtest/gtest.h>

#include <cstring>
#include <random>
#include <vector>

#include "x86/cpu.h"
#include "x86/insn.h"
#include "x86/sem/test_rig.h"

namespace popek::x86 {
namespace {

constexpr u32 kMemSize = 1u << 20;
constexpr u32 kBadPage = 0x80000;  // accesses to this page raise #PF

using FlatMem = test::FlatMem<kMemSize, kBadPage>;
using test::FakePlatform;

struct Machine {
  CpuState s;
  FlatMem mem;
  FakePlatform plat;
  Cpu cpu{s, mem, plat};
  explicit Machine(bool protected32 = true) {
    s.reset();
    if (protected32) {
      s.cr0 = CR0_PE | CR0_NE | CR0_ET;
      for (auto& sg : s.seg) sg = Segment{0x10, 0, 0xFFFFFFFF, 0xC093};
      s.seg[CS] = Segment{0x08, 0, 0xFFFFFFFF, 0xC09B};
    } else {
      s.cr0 = CR0_ET | CR0_NE;
      for (auto& sg : s.seg) sg = Segment{0x100, 0x1000, 0xFFFF, 0x93};
      s.seg[CS] = Segment{0x200, 0x2000, 0xFFFF, 0x9B};
    }
    s.eip = 0x1234;
    s.fpu = FpuState{};
  }
  // Decodes and executes one instruction; returns the decoded form.
  Insn exec(std::initializer_list<u8> bytes) {
    std::vector<u8> v(bytes);
    Insn i;
    EXPECT_EQ(decode(v.data(), unsigned(v.size()), s.code32(), &i), DecodeStatus::ok);
    EXPECT_EQ(i.len, v.size());
    handler_for(i)(cpu, i);
    return i;
  }
  // Expects the instruction to raise `vector` and leave the state unchanged.
  void expect_fault(std::initializer_list<u8> bytes, u8 vector) {
    const CpuState before = s;
    try {
      exec(bytes);
      ADD_FAILURE() << "no fault";
    } catch (const Fault& f) {
      EXPECT_EQ(f.vector, vector);
    }
    EXPECT_EQ(0, std::memcmp(&before.fpu, &s.fpu, sizeof before.fpu));
    EXPECT_EQ(before.eflags, s.eflags);
    EXPECT_EQ(before.gpr[EAX], s.gpr[EAX]);
  }
  unsigned top() const { return s.fpu.top(); }
  unsigned tag(unsigned i) const { return (s.fpu.ftw >> (2 * ((s.fpu.top() + i) & 7))) & 3; }
  long double st(unsigned i) const { return s.fpu.regs[(s.fpu.top() + i) & 7]; }
};

// ---- 80-bit values ---------------------------------------------------------------

struct V {
  u64 m;
  u16 se;
};
V v80(long double x) {
  V v;
  std::memcpy(&v.m, &x, 8);
  std::memcpy(&v.se, reinterpret_cast<const u8*>(&x) + 8, 2);
  return v;
}
long double ld(u64 m, u16 se) {
  long double x = 0;
  std::memcpy(&x, &m, 8);
  std::memcpy(reinterpret_cast<u8*>(&x) + 8, &se, 2);
  return x;
}
bool same80(long double a, long double b) { return std::memcmp(&a, &b, 10) == 0; }

std::string hex80(const u8* p) {
  char buf[32];
  u64 m;
  u16 e;
  std::memcpy(&m, p, 8);
  std::memcpy(&e, p + 8, 2);
  std::snprintf(buf, sizeof buf, "%04x:%016llx", e, (unsigned long long)m);
  return buf;
}

struct Rng {
  std::mt19937_64 g{12345};
  u64 operator()() { return g(); }
  unsigned below(unsigned n) { return unsigned(g() % n); }
};

long double rand80(Rng& r) {
  const u64 m = r();
  const u16 sgn = u16((r() & 1) << 15);
  switch (r.below(18)) {
    case 0: return ld(0, sgn);                                     // zero
    case 1: return ld(1ull << 63, sgn | 0x7FFF);                   // infinity
    case 2: return ld((3ull << 62) | (m >> 2), sgn | 0x7FFF);      // QNaN
    case 3: return ld((1ull << 63) | ((m >> 2) | 1), sgn | 0x7FFF);  // SNaN
    case 4: return ld(m >> 1, sgn);                                // denormal
    case 5: return ld(m | (1ull << 63), sgn);                      // pseudo-denormal
    case 6: return ld(m >> 1, u16(sgn | (1 + r.below(0x7FFE))));   // unnormal
    case 7: return ld(m >> 1, sgn | 0x7FFF);                       // pseudo-NaN/infinity
    case 8: return ld(m | (1ull << 63), u16(sgn | (1 + r.below(64))));           // tiny
    case 9: return ld(m | (1ull << 63), u16(sgn | (0x7FFE - r.below(64))));      // huge
    case 10: return (long double)(i64(r() % 2001) - 1000);                      // integer
    case 11: return ld((m | (1ull << 63)) & ~0xFFFFFFFFFFull, u16(sgn | (16383 - 20 + r.below(40))));  // float-exact
    case 12: return ld(m | (1ull << 63), u16(sgn | (16383 - 2 + r.below(4))));   // near 1
    case 13: return ld(m | (1ull << 63), u16(sgn | (16383 + 60 + r.below(8))));  // near 2^63
    case 14: return ld(0xC000000000000000ull, 0xFFFF);             // real indefinite
    default: return ld(m | (1ull << 63), u16(sgn | (16383 - 200 + r.below(400))));
  }
}

// ---- the native oracle -------------------------------------------------------------

struct alignas(16) Img {
  u8 b[108];
  u16 cw() const { u16 v; std::memcpy(&v, b, 2); return v; }
  u16 sw() const { u16 v; std::memcpy(&v, b + 4, 2); return v; }
  u16 tw() const { u16 v; std::memcpy(&v, b + 8, 2); return v; }
  const u8* st(unsigned i) const { return b + 28 + 10 * i; }
};

Img image_of(const FpuState& f) {
  Img h{};
  u32 w = 0xFFFF0000u | f.fcw;
  std::memcpy(h.b, &w, 4);
  w = 0xFFFF0000u | f.fsw;
  std::memcpy(h.b + 4, &w, 4);
  w = 0xFFFF0000u | f.ftw;
  std::memcpy(h.b + 8, &w, 4);
  for (unsigned i = 0; i < 8; ++i) std::memcpy(h.b + 28 + 10 * i, &f.regs[(f.top() + i) & 7], 10);
  return h;
}

// fl[0]: AH image (SF ZF AF PF CF) given to the instruction; fl[1]: AH after;
// fl[2]: OF after.
using NativeFn = void (*)(Img&, u8*, u8*);
#define CLOB "memory", "cc", "rax", "st", "st(1)", "st(2)", "st(3)", "st(4)", "st(5)", "st(6)", "st(7)"
#define NAT(code)                                                                        \
  +[](Img& h, u8* m, u8* fl) {                                                           \
    asm volatile("movzbl (%2), %%eax\n\tshll $8, %%eax\n\tsahf\n\tfrstor %0\n\t"                              \
                 ".intel_syntax noprefix\n\t" code "\n\t.att_syntax prefix\n\t"           \
                 "seto 2(%2)\n\tlahf\n\tshrl $8, %%eax\n\tmovb %%al, 1(%2)\n\tfnsave %0"                     \
                 : "+m"(h)                                                               \
                 : "S"(m), "D"(fl)                                                       \
                 : CLOB);                                                                \
  }

struct Case {
  std::vector<u8> guest;  // popek's input bytes (memory forms address [0x2000])
  NativeFn native;
  const char* text;
  u8 msize = 0;           // memory operand size
  bool store = false;
  bool bcd = false;
};

std::vector<u8> mem_form(u8 b0, u8 reg) { return {b0, u8((reg << 3) | 5), 0x00, 0x20, 0x00, 0x00}; }

#define R(b0, b1, text) Case{{b0, b1}, NAT(text), text}
#define ML(b0, reg, size, text) Case{mem_form(b0, reg), NAT(text), text, size}
#define MS(b0, reg, size, text) Case{mem_form(b0, reg), NAT(text), text, size, true}

std::vector<Case> reg_cases() {
  return {
      R(0xD8, 0xC0, "fadd st, st(0)"),     R(0xD8, 0xC3, "fadd st, st(3)"),
      R(0xD8, 0xC9, "fmul st, st(1)"),     R(0xD8, 0xD2, "fcom st(2)"),
      R(0xD8, 0xD9, "fcomp st(1)"),        R(0xD8, 0xE1, "fsub st, st(1)"),
      R(0xD8, 0xEA, "fsubr st, st(2)"),    R(0xD8, 0xF1, "fdiv st, st(1)"),
      R(0xD8, 0xFF, "fdivr st, st(7)"),    R(0xD9, 0xC1, "fld st(1)"),
      R(0xD9, 0xC7, "fld st(7)"),          R(0xD9, 0xC9, "fxch st(1)"),
      R(0xD9, 0xCD, "fxch st(5)"),         R(0xD9, 0xD0, "fnop"),
      R(0xD9, 0xDA, "fstp st(2)"),  // FSTP1 alias
      R(0xD9, 0xE0, "fchs"),               R(0xD9, 0xE1, "fabs"),
      R(0xD9, 0xE4, "ftst"),               R(0xD9, 0xE5, "fxam"),
      R(0xD9, 0xE8, "fld1"),               R(0xD9, 0xE9, "fldl2t"),
      R(0xD9, 0xEA, "fldl2e"),             R(0xD9, 0xEB, "fldpi"),
      R(0xD9, 0xEC, "fldlg2"),             R(0xD9, 0xED, "fldln2"),
      R(0xD9, 0xEE, "fldz"),               R(0xD9, 0xF0, "f2xm1"),
      R(0xD9, 0xF1, "fyl2x"),              R(0xD9, 0xF2, "fptan"),
      R(0xD9, 0xF3, "fpatan"),             R(0xD9, 0xF4, "fxtract"),
      R(0xD9, 0xF5, "fprem1"),             R(0xD9, 0xF6, "fdecstp"),
      R(0xD9, 0xF7, "fincstp"),            R(0xD9, 0xF8, "fprem"),
      R(0xD9, 0xF9, "fyl2xp1"),            R(0xD9, 0xFA, "fsqrt"),
      R(0xD9, 0xFB, "fsincos"),            R(0xD9, 0xFC, "frndint"),
      R(0xD9, 0xFD, "fscale"),             R(0xD9, 0xFE, "fsin"),
      R(0xD9, 0xFF, "fcos"),               R(0xDA, 0xC1, "fcmovb st, st(1)"),
      R(0xDA, 0xCA, "fcmove st, st(2)"),   R(0xDA, 0xD3, "fcmovbe st, st(3)"),
      R(0xDA, 0xDC, "fcmovu st, st(4)"),   R(0xDA, 0xE9, "fucompp"),
      R(0xDB, 0xC1, "fcmovnb st, st(1)"),  R(0xDB, 0xCA, "fcmovne st, st(2)"),
      R(0xDB, 0xD3, "fcmovnbe st, st(3)"), R(0xDB, 0xDC, "fcmovnu st, st(4)"),
      R(0xDB, 0xE9, "fucomi st, st(1)"),   R(0xDB, 0xF2, "fcomi st, st(2)"),
      R(0xDC, 0xC2, "fadd st(2), st"),     R(0xDC, 0xC9, "fmul st(1), st"),
      R(0xDC, 0xD1, "fcom st(1)"),  // FCOM2 alias
      R(0xDC, 0xDA, "fcomp st(2)"),  // FCOMP3 alias
      R(0xDC, 0xE1, "fsubr st(1), st"),    R(0xDC, 0xEA, "fsub st(2), st"),
      R(0xDC, 0xF3, "fdivr st(3), st"),    R(0xDC, 0xF9, "fdiv st(1), st"),
      R(0xDD, 0xC3, "ffree st(3)"),
      R(0xDD, 0xCA, "fxch st(2)"),  // FXCH4 alias
      R(0xDD, 0xD2, "fst st(2)"),          R(0xDD, 0xDB, "fstp st(3)"),
      R(0xDD, 0xD8, "fstp st(0)"),         R(0xDD, 0xE1, "fucom st(1)"),
      R(0xDD, 0xEA, "fucomp st(2)"),       R(0xDE, 0xC1, "faddp st(1), st"),
      R(0xDE, 0xCA, "fmulp st(2), st"),
      R(0xDE, 0xD1, "fcomp st(1)"),  // FCOMP5 alias
      R(0xDE, 0xD9, "fcompp"),             R(0xDE, 0xE1, "fsubrp st(1), st"),
      R(0xDE, 0xEA, "fsubp st(2), st"),    R(0xDE, 0xF1, "fdivrp st(1), st"),
      R(0xDE, 0xFB, "fdivp st(3), st"),    R(0xDF, 0xE9, "fucomip st, st(1)"),
      R(0xDF, 0xF2, "fcomip st, st(2)"),
  };
}

std::vector<Case> mem_cases() {
  std::vector<Case> v = {
      ML(0xD8, 0, 4, "fadd dword ptr [rsi]"),   ML(0xD8, 1, 4, "fmul dword ptr [rsi]"),
      ML(0xD8, 2, 4, "fcom dword ptr [rsi]"),   ML(0xD8, 3, 4, "fcomp dword ptr [rsi]"),
      ML(0xD8, 4, 4, "fsub dword ptr [rsi]"),   ML(0xD8, 5, 4, "fsubr dword ptr [rsi]"),
      ML(0xD8, 6, 4, "fdiv dword ptr [rsi]"),   ML(0xD8, 7, 4, "fdivr dword ptr [rsi]"),
      ML(0xDA, 0, 4, "fiadd dword ptr [rsi]"),  ML(0xDA, 1, 4, "fimul dword ptr [rsi]"),
      ML(0xDA, 2, 4, "ficom dword ptr [rsi]"),  ML(0xDA, 3, 4, "ficomp dword ptr [rsi]"),
      ML(0xDA, 4, 4, "fisub dword ptr [rsi]"),  ML(0xDA, 5, 4, "fisubr dword ptr [rsi]"),
      ML(0xDA, 6, 4, "fidiv dword ptr [rsi]"),  ML(0xDA, 7, 4, "fidivr dword ptr [rsi]"),
      ML(0xDC, 0, 8, "fadd qword ptr [rsi]"),   ML(0xDC, 1, 8, "fmul qword ptr [rsi]"),
      ML(0xDC, 2, 8, "fcom qword ptr [rsi]"),   ML(0xDC, 3, 8, "fcomp qword ptr [rsi]"),
      ML(0xDC, 4, 8, "fsub qword ptr [rsi]"),   ML(0xDC, 5, 8, "fsubr qword ptr [rsi]"),
      ML(0xDC, 6, 8, "fdiv qword ptr [rsi]"),   ML(0xDC, 7, 8, "fdivr qword ptr [rsi]"),
      ML(0xDE, 0, 2, "fiadd word ptr [rsi]"),   ML(0xDE, 1, 2, "fimul word ptr [rsi]"),
      ML(0xDE, 2, 2, "ficom word ptr [rsi]"),   ML(0xDE, 3, 2, "ficomp word ptr [rsi]"),
      ML(0xDE, 4, 2, "fisub word ptr [rsi]"),   ML(0xDE, 5, 2, "fisubr word ptr [rsi]"),
      ML(0xDE, 6, 2, "fidiv word ptr [rsi]"),   ML(0xDE, 7, 2, "fidivr word ptr [rsi]"),
      ML(0xD9, 0, 4, "fld dword ptr [rsi]"),    ML(0xDD, 0, 8, "fld qword ptr [rsi]"),
      ML(0xDB, 5, 10, "fld tbyte ptr [rsi]"),   ML(0xDF, 0, 2, "fild word ptr [rsi]"),
      ML(0xDB, 0, 4, "fild dword ptr [rsi]"),   ML(0xDF, 5, 8, "fild qword ptr [rsi]"),
      MS(0xD9, 2, 4, "fst dword ptr [rsi]"),    MS(0xD9, 3, 4, "fstp dword ptr [rsi]"),
      MS(0xDD, 2, 8, "fst qword ptr [rsi]"),    MS(0xDD, 3, 8, "fstp qword ptr [rsi]"),
      MS(0xDB, 7, 10, "fstp tbyte ptr [rsi]"),  MS(0xDF, 2, 2, "fist word ptr [rsi]"),
      MS(0xDF, 3, 2, "fistp word ptr [rsi]"),   MS(0xDB, 2, 4, "fist dword ptr [rsi]"),
      MS(0xDB, 3, 4, "fistp dword ptr [rsi]"),  MS(0xDF, 7, 8, "fistp qword ptr [rsi]"),
      MS(0xDF, 6, 10, "fbstp tbyte ptr [rsi]"),
  };
  Case bld = ML(0xDF, 4, 10, "fbld tbyte ptr [rsi]");
  bld.bcd = true;
  v.push_back(bld);
  return v;
}

// Random memory operand bytes biased toward interesting encodings.
void rand_mem(Rng& r, u8* p, unsigned size, bool bcd) {
  u64 x = r();
  if (bcd) {
    // Mostly valid packed BCD; sometimes digits A-F (undefined result, but the
    // hardware's answer is deterministic).
    for (unsigned k = 0; k < 9; ++k) {
      unsigned lo = r.below(10), h = r.below(10);
      if (r.below(20) == 0) lo = 10 + r.below(6);
      p[k] = u8(lo | (h << 4));
    }
    p[9] = u8((r() & 1) << 7);
    if (r.below(10) == 0) std::memset(p, 0, 9);
    return;
  }
  switch (r.below(6)) {
    case 0: x = 0; break;
    case 1:  // exponent all ones or zero
      if (size == 4) x = (x & 0x807FFFFFu) | ((r() & 1) ? 0x7F800000u : 0);
      if (size == 8) x = (x & 0x800FFFFFFFFFFFFFull) | ((r() & 1) ? 0x7FF0000000000000ull : 0);
      break;
    case 2: x >>= r.below(64); break;  // small magnitudes, denormals
    default: break;
  }
  std::memcpy(p, &x, size < 8 ? size : 8);
  if (size == 10) {
    long double v = rand80(r);
    std::memcpy(p, &v, 10);
  }
}

// A random FPU state: random PC/RC, random sticky flags, condition codes, TOP
// and empty registers; all exceptions masked, or (unmask) random masks with no
// unmasked flag already set (that would be a pending exception).
void rand_state(Rng& r, FpuState& f, bool unmask = false) {
  static constexpr u16 kPc[3] = {0x000, 0x200, 0x300};
  f.fcw = u16(0x107F | kPc[r.below(3)] | (r.below(4) << 10));
  f.fsw = u16((r() & 0x477F) | (r.below(8) << 11));
  if (unmask) {
    f.fcw = u16((f.fcw & ~0x3F) | (r() & 0x3F));
    f.fsw &= u16(~(~f.fcw & 0x3F));
    if (!(f.fcw & 1)) f.fsw &= u16(~0x40);
  }
  f.ftw = 0;
  for (unsigned p = 0; p < 8; ++p) {
    f.regs[p] = rand80(r);
    u8 raw[10];
    std::memcpy(raw, &f.regs[p], 10);
    unsigned t;
    const u16 e = v80(f.regs[p]).se & 0x7FFF;
    const u64 m = v80(f.regs[p]).m;
    if (e == 0x7FFF) t = 2;
    else if (e == 0) t = m ? 2 : 1;
    else t = (m >> 63) ? 0 : 2;
    if (r.below(6) == 0) t = 3;
    f.ftw |= u16(t << (2 * p));
  }
}

struct Diff {
  int fails = 0;
  void check(bool ok, const char* text, const std::string& what) {
    if (!ok && fails++ < 10) ADD_FAILURE() << text << ": " << what;
  }
};

void compare_state(Diff& d, const Case& c, const FpuState& g, const Img& h, const std::string& pre) {
  d.check(g.fsw == h.sw(), c.text, pre + "fsw popek " + std::to_string(g.fsw) + " host " + std::to_string(h.sw()));
  d.check(g.ftw == h.tw(), c.text, pre + "ftw popek " + std::to_string(g.ftw) + " host " + std::to_string(h.tw()));
  for (unsigned i = 0; i < 8; ++i) {
    u8 gv[10];
    std::memcpy(gv, &g.regs[(g.top() + i) & 7], 10);
    // Empty registers' contents are not architectural beyond what FNSAVE shows;
    // compare them too (both sides keep the old bits).
    d.check(std::memcmp(gv, h.st(i), 10) == 0, c.text,
            pre + "st" + std::to_string(i) + " popek " + hex80(gv) + " host " + hex80(h.st(i)));
  }
}

std::string describe(const FpuState& f) {
  std::string s = "cw=" + std::to_string(f.fcw) + " sw=" + std::to_string(f.fsw) + " tw=" + std::to_string(f.ftw) + " st:";
  for (unsigned i = 0; i < 3; ++i) {
    u8 v[10];
    std::memcpy(v, &f.regs[(f.top() + i) & 7], 10);
    s += " " + hex80(v);
  }
  return s + " | ";
}

constexpr int kIters = 400;

TEST(X87Oracle, RegisterForms) {
  Rng r;
  int total = 0, pending = 0;
  for (const Case& c : reg_cases()) {
    Diff d;
    for (int it = 0; it < 2 * kIters; ++it) {
      Machine m;
      rand_state(r, m.s.fpu, it >= kIters);
      m.s.eflags = FLAGS_FIXED1 | (u32(r()) & (CF | PF | ZF | SF | OF | AF));
      const FpuState pre = m.s.fpu;
      const u32 pre_eflags = m.s.eflags;
      Img h = image_of(pre);
      u8 fl[3] = {u8(m.s.eflags & 0xD5), 0, 0};
      c.native(h, nullptr, fl);
      std::vector<u8> bytes = c.guest;
      Insn i;
      ASSERT_EQ(decode(bytes.data(), unsigned(bytes.size()), true, &i), DecodeStatus::ok) << c.text;
      handler_for(i)(m.cpu, i);
      compare_state(d, c, m.s.fpu, h, describe(pre));
      pending += (m.s.fpu.fsw & 0x80) != 0;
      const bool fcomi = std::strstr(c.text, "fcomi") || std::strstr(c.text, "fucomi");
      const u32 want = fcomi ? ((fl[1] & 0xD5) | (fl[2] ? u32(OF) : 0u)) : (pre_eflags & FLAGS_ARITH);
      d.check((m.s.eflags & FLAGS_ARITH) == want, c.text, describe(pre) + "eflags");
      ++total;
    }
    EXPECT_EQ(d.fails, 0) << c.text;
  }
  EXPECT_GT(total, 60000);
  EXPECT_GT(pending, 5000);  // the unmasked pass does produce pending exceptions
}

TEST(X87Oracle, MemoryForms) {
  Rng r;
  for (const Case& c : mem_cases()) {
    Diff d;
    for (int it = 0; it < 2 * kIters; ++it) {
      Machine m;
      rand_state(r, m.s.fpu, it >= kIters);
      const FpuState pre = m.s.fpu;
      alignas(16) u8 buf[16] = {};
      rand_mem(r, buf, c.msize, c.bcd);
      std::memcpy(&m.mem.b[0x2000], buf, 16);
      Img h = image_of(pre);
      u8 fl[3] = {0x02, 0, 0};
      c.native(h, buf, fl);
      Insn i;
      ASSERT_EQ(decode(c.guest.data(), unsigned(c.guest.size()), true, &i), DecodeStatus::ok) << c.text;
      handler_for(i)(m.cpu, i);
      compare_state(d, c, m.s.fpu, h, describe(pre));
      d.check(std::memcmp(&m.mem.b[0x2000], buf, 16) == 0, c.text, describe(pre) + "memory");
      // FDP/FDS and FOP for a memory form.
      d.check(m.s.fpu.fdp == 0x2000 && m.s.fpu.fds == 0x10, c.text, "fdp/fds");
      d.check(m.s.fpu.fop == u16(((c.guest[0] & 7) << 8) | c.guest[1]), c.text, "fop");
    }
    EXPECT_EQ(d.fails, 0) << c.text;
  }
}

// The oracle must be able to fail: a wrong operand order is caught.
TEST(X87Oracle, DetectsAWrongEncoding) {
  Rng r;
  int diffs = 0;
  Case wrong = R(0xDC, 0xE1, "fsub st(1), st");  // popek runs FSUBR, the host FSUB
  for (int it = 0; it < 50; ++it) {
    Machine m;
    rand_state(r, m.s.fpu);
    m.s.fpu.ftw = 0;
    m.s.fpu.regs[m.top()] = 3.0L;
    m.s.fpu.regs[(m.top() + 1) & 7] = 1.0L;
    Img h = image_of(m.s.fpu);
    u8 fl[3] = {2, 0, 0};
    wrong.native(h, nullptr, fl);
    m.exec({0xDC, 0xE1});
    diffs += std::memcmp(&m.s.fpu.regs[(m.top() + 1) & 7], h.st(1), 10) != 0;
  }
  EXPECT_EQ(diffs, 50);
}

// ---- stack faults, tags, condition codes ----------------------------------------------

constexpr u16 IE = 1, ZE = 4, OE = 8, UE = 0x10, PE = 0x20, SFb = 0x40, ES = 0x80, C1 = 0x200,
              Bb = 0x8000;

TEST(X87, PushPopTagsAndTop) {
  Machine m;
  m.exec({0xD9, 0xE8});  // fld1
  EXPECT_EQ(m.top(), 7u);
  EXPECT_EQ(m.tag(0), 0u);
  m.exec({0xD9, 0xEE});  // fldz
  EXPECT_EQ(m.top(), 6u);
  EXPECT_EQ(m.tag(0), 1u);
  EXPECT_EQ(m.s.fpu.ftw, 0x1FFF);  // phys 6 zero (01), phys 7 valid (00)
  m.exec({0xDE, 0xC1});            // faddp -> 1.0
  EXPECT_EQ(m.top(), 7u);
  EXPECT_TRUE(same80(m.st(0), 1.0L));
  EXPECT_EQ(m.s.fpu.ftw, 0x3FFF);
  m.exec({0xDD, 0xD8});  // fstp st(0)
  EXPECT_EQ(m.s.fpu.ftw, 0xFFFF);
  EXPECT_EQ(m.top(), 0u);
}

TEST(X87, StackOverflowMaskedPushesIndefinite) {
  Machine m;
  for (int k = 0; k < 8; ++k) m.exec({0xD9, 0xE8});
  EXPECT_EQ(m.s.fpu.fsw & 0x7F, 0);
  m.exec({0xD9, 0xEB});  // fldpi onto a full stack
  EXPECT_EQ(m.s.fpu.fsw & (IE | SFb | C1), IE | SFb | C1);
  EXPECT_EQ(m.s.fpu.fsw & ES, 0);
  EXPECT_TRUE(same80(m.st(0), ld(0xC000000000000000ull, 0xFFFF)));
  EXPECT_EQ(m.tag(0), 2u);
}

TEST(X87, StackUnderflowMaskedAndUnmasked) {
  Machine m;
  m.exec({0xD9, 0xE8});                // fld1
  m.exec({0xD8, 0xC1});                // fadd st, st(1): st(1) empty
  EXPECT_EQ(m.s.fpu.fsw & (IE | SFb | C1), IE | SFb);  // C1 = 0: underflow
  EXPECT_TRUE(same80(m.st(0), ld(0xC000000000000000ull, 0xFFFF)));

  Machine u;
  u.s.fpu.fcw = 0x037E;  // IE unmasked
  u.exec({0xD9, 0xE8});
  const FpuState before = u.s.fpu;
  u.s.fpu.fsw |= C1;  // C1 must be cleared by the underflow
  u.exec({0xD8, 0xC1});
  EXPECT_EQ(u.s.fpu.fsw & (IE | SFb | C1 | ES | Bb), IE | SFb | ES | Bb);
  EXPECT_EQ(u.top(), before.top());
  EXPECT_TRUE(same80(u.st(0), 1.0L));  // destination unchanged
  EXPECT_EQ(u.s.fpu.ftw, before.ftw);
  EXPECT_EQ(u.s.fpu.fip, 0x1234u);
  EXPECT_EQ(u.s.fpu.fop, 0x0C1);
}

TEST(X87, UnmaskedOverflowOnPushLeavesStack) {
  Machine m;
  m.s.fpu.fcw = 0x037E;
  for (int k = 0; k < 8; ++k) m.exec({0xD9, 0xE8});
  const u16 tw = m.s.fpu.ftw;
  m.exec({0xD9, 0xEE});
  EXPECT_EQ(m.top(), 0u);
  EXPECT_EQ(m.s.fpu.ftw, tw);
  EXPECT_EQ(m.s.fpu.fsw & (IE | SFb | C1 | ES | Bb), IE | SFb | C1 | ES | Bb);
}

TEST(X87, FxamClasses) {
  struct {
    long double v;
    bool empty;
    u16 cc;  // C3 C2 C0 (C1 = sign)
  } cases[] = {
      {0, true, 0x4100},            // empty
      {1.5L, false, 0x0400},        // normal
      {0.0L, false, 0x4000},        // zero
      {ld(1ull << 63, 0x7FFF), false, 0x0500},          // infinity
      {ld(0xC000000000000001ull, 0x7FFF), false, 0x0100},  // NaN
      {ld(1, 0), false, 0x4400},    // denormal
      {ld(1, 0x4000), false, 0x0000},  // unnormal: unsupported
  };
  for (auto& k : cases) {
    for (u16 sign : {0, 1}) {
      Machine m;
      m.s.fpu.set_top(7);
      long double v = k.v;
      if (sign) v = ld(v80(v).m, u16(v80(v).se | 0x8000));
      m.s.fpu.regs[7] = v;
      m.s.fpu.ftw = k.empty ? 0xFFFF : u16(0x3FFF | (2u << 14));
      m.exec({0xD9, 0xE5});
      EXPECT_EQ(m.s.fpu.fsw & 0x4700, k.cc | (sign ? C1 : 0)) << std::hex << v80(k.v).se;
    }
  }
}

TEST(X87, FcomiSetsEflagsAndClearsOthers) {
  Machine m;
  m.s.eflags = FLAGS_FIXED1 | OF | SF | AF;
  m.exec({0xD9, 0xE8});  // 1
  m.exec({0xD9, 0xEE});  // 0, st1 = 1
  m.exec({0xDB, 0xF1});  // fcomi st, st(1): 0 < 1 -> CF
  EXPECT_EQ(m.s.eflags & FLAGS_ARITH, CF);
  m.exec({0xDF, 0xE9});  // fucomip st, st(1) + pop
  EXPECT_EQ(m.top(), 7u);
  m.exec({0xD9, 0xE8});  // 1, 1
  m.exec({0xDB, 0xE9});
  EXPECT_EQ(m.s.eflags & FLAGS_ARITH, ZF);
}

TEST(X87, FcmovUsesGuestFlags) {
  Machine m;
  m.exec({0xD9, 0xE8});  // st1 = 1
  m.exec({0xD9, 0xEE});  // st0 = 0
  m.s.eflags = FLAGS_FIXED1;
  m.exec({0xDA, 0xC1});  // fcmovb: CF=0, no move
  EXPECT_TRUE(same80(m.st(0), 0.0L));
  m.s.eflags = FLAGS_FIXED1 | CF;
  m.exec({0xDA, 0xC1});
  EXPECT_TRUE(same80(m.st(0), 1.0L));
  EXPECT_EQ(m.s.eflags, FLAGS_FIXED1 | CF);
}

// ---- #NM, #MF, FERR# ------------------------------------------------------------------

TEST(X87, DeviceNotAvailable) {
  Machine m;
  m.s.cr0 |= CR0_EM;
  m.expect_fault({0xD9, 0xE8}, NM);
  m.expect_fault({0xDB, 0xE3}, NM);  // fninit too
  m.exec({0x9B});                    // fwait ignores EM
  m.s.cr0 &= ~CR0_EM;
  m.s.cr0 |= CR0_TS;
  m.expect_fault({0xD9, 0xE8}, NM);
  m.expect_fault({0xDF, 0xE0}, NM);  // fnstsw ax
  m.exec({0x9B});                    // MP = 0: fwait runs
  m.s.cr0 |= CR0_MP;
  m.expect_fault({0x9B}, NM);
  m.s.cr0 &= ~CR0_TS;
  m.exec({0x9B});
  m.exec({0xD9, 0xE8});
  EXPECT_EQ(m.top(), 7u);
}

void make_pending_zero_divide(Machine& m) {
  m.s.fpu.fcw = 0x037B;  // ZE unmasked
  m.exec({0xD9, 0xE8});  // 1
  m.exec({0xD9, 0xEE});  // 0
  m.exec({0xD8, 0xF9});  // fdivr st, st(1): 1 / 0
  ASSERT_EQ(m.s.fpu.fsw & (ZE | ES | Bb), ZE | ES | Bb);
  ASSERT_TRUE(same80(m.st(0), 0.0L));  // destination unchanged
}

TEST(X87, PendingExceptionRaisesMfOnNextWaitingInstruction) {
  Machine m;
  make_pending_zero_divide(m);
  m.expect_fault({0xD9, 0xE8}, MF);  // fld1
  m.expect_fault({0x9B}, MF);        // fwait
  m.expect_fault({0xD9, 0x2D, 0, 0x20, 0, 0}, MF);  // fldcw is waiting
  m.exec({0xDF, 0xE0});              // fnstsw ax: non-waiting
  EXPECT_EQ(u16(m.s.gpr[EAX]), m.s.fpu.fsw);
  m.exec({0xD9, 0x3D, 0, 0x20, 0, 0});  // fnstcw: non-waiting
  m.exec({0xDB, 0xE2});              // fnclex
  EXPECT_EQ(m.s.fpu.fsw & 0x80FF, 0);
  m.exec({0x9B});
  m.exec({0xD9, 0xE8});
  EXPECT_EQ(m.plat.fpu_errors, 0);
}

TEST(X87, PendingExceptionWithNeClearUsesFerr) {
  Machine m;
  m.s.cr0 &= ~CR0_NE;
  make_pending_zero_divide(m);
  m.exec({0x9B});
  EXPECT_EQ(m.plat.fpu_errors, 1);
  m.exec({0xD9, 0xE8});  // runs (IGNNE#)
  EXPECT_EQ(m.plat.fpu_errors, 2);
  EXPECT_TRUE(same80(m.st(0), 1.0L));
  m.exec({0xDB, 0xE3});  // fninit: non-waiting, no FERR#
  EXPECT_EQ(m.plat.fpu_errors, 2);
  m.exec({0x9B});
  EXPECT_EQ(m.plat.fpu_errors, 2);
}

TEST(X87, FldcwUnmaskingASetFlagMakesItPending) {
  Machine m;
  m.exec({0xD9, 0xEE});
  m.exec({0xD9, 0xE8});
  m.exec({0xD8, 0xF1});  // 1/0 masked: +inf, ZE
  EXPECT_EQ(m.s.fpu.fsw & (ZE | ES), ZE);
  m.mem.b[0x2000] = 0x7B;
  m.mem.b[0x2001] = 0x03;
  m.exec({0xD9, 0x2D, 0, 0x20, 0, 0});  // fldcw 0x037B
  EXPECT_EQ(m.s.fpu.fsw & (ES | Bb), ES | Bb);
  m.expect_fault({0xD9, 0xE8}, MF);
  // FNSTENV masks everything, which clears ES again.
  m.exec({0xD9, 0x35, 0, 0x30, 0, 0});
  EXPECT_EQ(m.s.fpu.fcw, 0x037F);
  EXPECT_EQ(m.s.fpu.fsw & (ES | Bb), 0);
  u16 saved_sw;
  std::memcpy(&saved_sw, &m.mem.b[0x3004], 2);
  EXPECT_EQ(saved_sw & (ES | Bb | ZE), ES | Bb | ZE);
}

TEST(X87, FldcwReservedBits) {
  Machine m;
  m.mem.b[0x2000] = 0xFF;
  m.mem.b[0x2001] = 0xFF;
  m.exec({0xD9, 0x2D, 0, 0x20, 0, 0});
  EXPECT_EQ(m.s.fpu.fcw, 0x1F7F);
  m.mem.b[0x2000] = 0;
  m.mem.b[0x2001] = 0;
  m.exec({0xD9, 0x2D, 0, 0x20, 0, 0});
  EXPECT_EQ(m.s.fpu.fcw, 0x0040);
}

// ---- unmasked numeric exceptions ---------------------------------------------------------

TEST(X87, UnmaskedOverflowDeliversBiasAdjustedResult) {
  Machine m;
  m.s.fpu.fcw = 0x0377;  // OE unmasked
  const long double big = ld(1ull << 63, 16383 + 16000);
  m.s.fpu.set_top(6);
  m.s.fpu.regs[6] = big;
  m.s.fpu.regs[7] = big;
  m.s.fpu.ftw = 0x0FFF;
  m.exec({0xD8, 0xC9});  // fmul st, st(1): 2^32000 -> 2^(32000-24576)
  EXPECT_TRUE(same80(m.st(0), ld(1ull << 63, 16383 + 32000 - 24576)));
  EXPECT_EQ(m.s.fpu.fsw & (OE | PE | ES), OE | ES);
  // Same with masked OE: infinity, OE and PE.
  Machine k;
  k.s.fpu.set_top(6);
  k.s.fpu.regs[6] = big;
  k.s.fpu.regs[7] = big;
  k.s.fpu.ftw = 0x0FFF;
  k.exec({0xD8, 0xC9});
  EXPECT_TRUE(same80(k.st(0), ld(1ull << 63, 0x7FFF)));
  EXPECT_EQ(k.s.fpu.fsw & (OE | PE | ES), OE | PE);
}

TEST(X87, UnmaskedUnderflowDeliversBiasAdjustedResult) {
  Machine m;
  m.s.fpu.fcw = 0x036F;  // UE unmasked
  const long double tiny = ld(0xC000000000000000ull, 16383 - 16000);  // 1.5 * 2^-16000
  m.s.fpu.set_top(6);
  m.s.fpu.regs[6] = tiny;
  m.s.fpu.regs[7] = 2.0L;
  m.s.fpu.ftw = 0x0FFF;
  m.exec({0xDE, 0xF9});  // fdivp st(1), st: st1 = 2 / tiny = 1.33 * 2^16000, in range
  EXPECT_EQ(m.s.fpu.fsw & (UE | OE | ES), 0);
  Machine u;
  u.s.fpu.fcw = 0x036F;
  u.s.fpu.set_top(6);
  u.s.fpu.regs[6] = tiny;
  u.s.fpu.regs[7] = ld(1ull << 63, 16383 + 400);  // 2^400
  u.s.fpu.ftw = 0x0FFF;
  u.exec({0xDE, 0xF1});  // fdivrp st(1), st: st1 = st0 / st1 = 1.5 * 2^-16400
  EXPECT_EQ(u.top(), 7u);
  EXPECT_TRUE(same80(u.st(0), ld(0xC000000000000000ull, u16(16383 - 16400 + 24576))));
  EXPECT_EQ(u.s.fpu.fsw & (UE | PE | ES), UE | ES);
  // An exact denormal result still underflows when UE is unmasked.
  Machine e;
  e.s.fpu.fcw = 0x036F;
  e.s.fpu.set_top(6);
  e.s.fpu.regs[6] = ld(4, 0);  // denormal
  e.s.fpu.regs[7] = 0.0L;
  e.s.fpu.ftw = 0x6FFF;  // phys 6 special, phys 7 zero
  e.exec({0xD8, 0xC1});  // denormal + 0 = denormal, exact
  EXPECT_EQ(e.s.fpu.fsw & (UE | ES), UE | ES);
  EXPECT_TRUE(same80(e.st(0), ld(1ull << 63, 16383 - 16443 + 24576)));  // 2^-16443 * 2^24576
}

TEST(X87, UnmaskedOverflowOnStoreLeavesMemoryAndStack) {
  Machine m;
  m.s.fpu.fcw = 0x0377;
  m.s.fpu.set_top(7);
  m.s.fpu.regs[7] = ld(1ull << 63, 16383 + 200);
  m.s.fpu.ftw = 0x3FFF;
  std::memset(&m.mem.b[0x2000], 0xAB, 4);
  m.exec({0xD9, 0x1D, 0, 0x20, 0, 0});  // fstp dword [0x2000]
  EXPECT_EQ(m.mem.b[0x2000], 0xAB);
  EXPECT_EQ(m.top(), 7u);
  EXPECT_EQ(m.s.fpu.fsw & (OE | ES), OE | ES);
}

TEST(X87, UnmaskedInvalidOnFistLeavesMemory) {
  Machine m;
  m.s.fpu.fcw = 0x037E;
  m.s.fpu.set_top(7);
  m.s.fpu.regs[7] = ld(1ull << 63, 16383 + 40);  // 2^40 does not fit m32
  m.s.fpu.ftw = 0x3FFF;
  std::memset(&m.mem.b[0x2000], 0xAB, 4);
  m.exec({0xDB, 0x1D, 0, 0x20, 0, 0});  // fistp dword [0x2000]
  EXPECT_EQ(m.mem.b[0x2000], 0xAB);
  EXPECT_EQ(m.top(), 7u);
  EXPECT_EQ(m.s.fpu.fsw & (IE | ES), IE | ES);
  // Masked: the integer indefinite is stored and the stack popped.
  m.s.fpu.fcw = 0x037F;
  m.s.fpu.fsw = 0x3800;
  m.exec({0xDB, 0x1D, 0, 0x20, 0, 0});
  u32 v;
  std::memcpy(&v, &m.mem.b[0x2000], 4);
  EXPECT_EQ(v, 0x80000000u);
  EXPECT_EQ(m.top(), 0u);
}

// ---- faults leave everything as before ------------------------------------------------------

TEST(X87, PageFaultOnStoreLeavesStateAndMemory) {
  Machine m;
  m.exec({0xD9, 0xEB});  // fldpi
  const u32 addr = kBadPage - 6;  // 10-byte store straddles into the bad page
  std::memset(&m.mem.b[addr], 0xCD, 6);
  m.s.eip = 0x5555;
  m.expect_fault({0xDB, 0x3D, u8(addr), u8(addr >> 8), u8(addr >> 16), 0}, PF_V);
  EXPECT_EQ(m.mem.b[addr], 0xCD);
  EXPECT_EQ(m.s.fpu.fip, 0x1234u);  // pointers not updated either
  // FNSAVE straddling: nothing written, no reinitialisation.
  const u32 a2 = kBadPage - 50;
  m.expect_fault({0xDD, 0x35, u8(a2), u8(a2 >> 8), u8(a2 >> 16), 0}, PF_V);
  EXPECT_EQ(m.mem.b[a2], 0);
  EXPECT_EQ(m.top(), 7u);
  // Load from the bad page.
  m.expect_fault({0xD8, 0x05, 0, 0, 0x08, 0}, PF_V);
}

// ---- FNSAVE / FRSTOR / FNSTENV / FLDENV -------------------------------------------------------

void setup_rich_state(Machine& m) {
  m.s.eip = 0x00401234;
  m.exec({0xD9, 0xE8});                            // fld1
  m.s.eip = 0x00401240;
  m.exec({0xD9, 0xEB});                            // fldpi
  m.exec({0xD9, 0xEE});                            // fldz
  m.s.fpu.regs[(m.top() + 3) & 7] = ld(1, 0);      // an empty register with a denormal
  m.s.seg[DS].sel = 0x2B;
  *reinterpret_cast<float*>(&m.mem.b[0x2000]) = 2.5f;
  m.s.eip = 0x00401250;
  m.exec({0xD8, 0x05, 0, 0x20, 0, 0});             // fadd dword [0x2000]
  m.s.fpu.fcw = 0x0A7F;
  m.s.fpu.fsw |= PE;
}

TEST(X87, FnsaveProtected32Layout) {
  Machine m;
  setup_rich_state(m);
  const FpuState before = m.s.fpu;
  m.exec({0xDD, 0x35, 0, 0x30, 0, 0});  // fnsave [0x3000]
  const u8* b = &m.mem.b[0x3000];
  auto d32 = [&](unsigned o) { u32 v; std::memcpy(&v, b + o, 4); return v; };
  EXPECT_EQ(d32(0), 0xFFFF0A7Fu);
  EXPECT_EQ(d32(4), 0xFFFF0000u | before.fsw);
  EXPECT_EQ(before.fsw & 0x3800, 5u << 11);
  EXPECT_EQ(d32(8), 0xFFFF0000u | 0x03FFu);  // phys 5 (2.5), 6 (pi), 7 (1) valid
  EXPECT_EQ(d32(12), 0x00401250u);
  EXPECT_EQ(d32(16), 0x08u | (0x005u << 16));  // FCS, FOP = D8 05 -> 0x005
  EXPECT_EQ(d32(20), 0x2000u);
  EXPECT_EQ(d32(24), 0xFFFF002Bu);
  long double st0;
  std::memcpy(&st0, b + 28, 10);
  EXPECT_TRUE(same80(st0, 2.5L));
  long double st2;
  std::memcpy(&st2, b + 48, 10);
  EXPECT_TRUE(same80(st2, 1.0L));
  // Reinitialised.
  EXPECT_EQ(m.s.fpu.fcw, 0x037F);
  EXPECT_EQ(m.s.fpu.fsw, 0);
  EXPECT_EQ(m.s.fpu.ftw, 0xFFFF);
  // Round trip.
  m.exec({0xDD, 0x25, 0, 0x30, 0, 0});  // frstor [0x3000]
  EXPECT_EQ(0, std::memcmp(&before, &m.s.fpu, offsetof(FpuState, regs)));
  for (unsigned p = 0; p < 8; ++p) EXPECT_TRUE(same80(before.regs[p], m.s.fpu.regs[p]) || ((before.ftw >> (2 * p)) & 3) == 3);
}

TEST(X87, FnsaveMatchesHostImage) {
  // The 32-bit protected-mode image is what the host's FNSAVE writes in 64-bit
  // mode: compare the control/status/tag words and registers.
  Machine m;
  setup_rich_state(m);
  Img h = image_of(m.s.fpu);
  asm volatile("frstor %0\n\tfnsave %0" : "+m"(h) : : CLOB);
  m.exec({0xDD, 0x35, 0, 0x30, 0, 0});
  const u8* b = &m.mem.b[0x3000];
  EXPECT_EQ(0, std::memcmp(b, h.b, 12));       // FCW, FSW, FTW with reserved halves
  EXPECT_EQ(0, std::memcmp(b + 26, h.b + 26, 2));  // FDS's reserved half
  EXPECT_EQ(0, std::memcmp(b + 28, h.b + 28, 80));
}

TEST(X87, FnstenvFormats) {
  for (int mode = 0; mode < 4; ++mode) {  // bit0: 16-bit operand size, bit1: real mode
    const bool o16 = mode & 1, real = mode & 2;
    Machine m(!real);
    m.s.eip = 0x0123;
    m.exec({0xD9, 0xE8});  // fld1 -> FIP, FOP = 0x1E8
    const FpuState f = m.s.fpu;
    std::vector<u8> insn;
    if (o16) insn.push_back(0x66);
    if (real) { insn.insert(insn.end(), {0xD9, 0x36, 0x00, 0x30}); }  // [0x3000] (16-bit addressing)
    else { insn.insert(insn.end(), {0xD9, 0x35, 0x00, 0x30, 0, 0}); }
    // 0x66 flips the size in either mode: real mode default 16.
    const bool size32 = real ? o16 : !o16;
    Insn i;
    ASSERT_EQ(decode(insn.data(), unsigned(insn.size()), m.s.code32(), &i), DecodeStatus::ok);
    handler_for(i)(m.cpu, i);
    const u8* b = &m.mem.b[(real ? 0x1000 : 0) + 0x3000];
    auto w16 = [&](unsigned o) { u16 v; std::memcpy(&v, b + o, 2); return v; };
    auto d32 = [&](unsigned o) { u32 v; std::memcpy(&v, b + o, 4); return v; };
    const u32 ip_lin = real ? 0x2000u + 0x0123u : 0x0123u;
    SCOPED_TRACE(mode);
    if (size32) {
      EXPECT_EQ(d32(0), 0xFFFF037Fu);
      EXPECT_EQ(w16(4), f.fsw);
      EXPECT_EQ(w16(8), f.ftw);
      if (real) {
        EXPECT_EQ(w16(12), ip_lin & 0xFFFF);
        EXPECT_EQ(d32(16), ((ip_lin >> 16) << 12) | 0x1E8u);
      } else {
        EXPECT_EQ(d32(12), ip_lin);
        EXPECT_EQ(d32(16), 0x08u | (0x1E8u << 16));
      }
    } else {
      EXPECT_EQ(w16(0), 0x037F);
      EXPECT_EQ(w16(2), f.fsw);
      EXPECT_EQ(w16(4), f.ftw);
      EXPECT_EQ(w16(6), ip_lin & 0xFFFF);
      if (real) EXPECT_EQ(w16(8), ((ip_lin >> 16) << 12) | 0x1E8u);
      else EXPECT_EQ(w16(8), 0x08);
    }
    // FLDENV in the same mode and size reads it back.
    m.s.fpu.fcw = 0x0C7F;
    m.s.fpu.fip = 0;
    m.s.fpu.fop = 0;
    insn[o16 ? 2 : 1] = real ? 0x26 : 0x25;  // /4 fldenv
    ASSERT_EQ(decode(insn.data(), unsigned(insn.size()), m.s.code32(), &i), DecodeStatus::ok);
    handler_for(i)(m.cpu, i);
    EXPECT_EQ(m.s.fpu.fcw, 0x037F);
    EXPECT_EQ(m.s.fpu.fsw, f.fsw);
    EXPECT_EQ(m.s.fpu.ftw, f.ftw);
    if (real) {
      EXPECT_EQ((m.s.fpu.fcs << 4) + m.s.fpu.fip, ip_lin);
    } else {
      EXPECT_EQ(m.s.fpu.fip, ip_lin);
    }
    if (size32 || real) {
      EXPECT_EQ(m.s.fpu.fop, 0x1E8);
    }
  }
}

TEST(X87, FldenvRecomputesTagsAndPending) {
  Machine m;
  m.s.fpu.regs[0] = 0.0L;
  m.s.fpu.regs[1] = ld(1ull << 63, 0x7FFF);
  m.s.fpu.regs[2] = 3.0L;
  u8* b = &m.mem.b[0x2000];
  const u32 img[7] = {0xFFFF037Eu, 0xFFFF0001u, 0xFFFFFFC0u, 0, 0, 0, 0xFFFF0000u};
  std::memcpy(b, img, 28);  // tags: phys 0..2 "valid", others empty; IE set and unmasked
  m.exec({0xD9, 0x25, 0, 0x20, 0, 0});
  EXPECT_EQ(m.s.fpu.ftw, 0xFFC0 | 0x01 | (0x2 << 2) | (0x0 << 4));
  EXPECT_EQ(m.s.fpu.fsw, 0x0001 | ES | Bb);
  m.expect_fault({0xD9, 0xE8}, MF);
}

TEST(X87, FrstorReal16RoundTrip) {
  Machine m(false);
  m.s.eip = 0x0010;
  m.exec({0xD9, 0xEB});                 // fldpi
  m.exec({0xDE, 0x06, 0x00, 0x20});     // fiadd word [0x2000]
  const FpuState before = m.s.fpu;
  EXPECT_EQ(before.fdp, 0x2000u);
  EXPECT_EQ(before.fds, 0x100u);
  m.exec({0xDD, 0x36, 0x00, 0x30});     // fnsave [0x3000] (94 bytes)
  const u8* b = &m.mem.b[0x1000 + 0x3000];
  u16 w[7];
  std::memcpy(w, b, 14);
  EXPECT_EQ(w[5], u16(0x1000 + 0x2000));            // FDP linear 15..0
  EXPECT_EQ(w[6], u16(((0x3000u >> 16) & 0xF) << 12));
  EXPECT_EQ(w[3], u16(0x2000 + 0x0010));            // FIP linear
  EXPECT_EQ(w[4], 0x0006 | 0x600);                  // FOP DE 06 -> 0x606
  long double st0;
  std::memcpy(&st0, b + 14, 10);
  EXPECT_TRUE(same80(st0, before.regs[before.top()]));
  m.exec({0xDD, 0x26, 0x00, 0x30});     // frstor
  EXPECT_EQ(m.s.fpu.fsw, before.fsw);
  EXPECT_EQ(m.s.fpu.ftw, before.ftw);
  EXPECT_TRUE(same80(m.st(0), before.regs[before.top()]));
  EXPECT_EQ((u32(m.s.fpu.fds) << 4) + m.s.fpu.fdp, 0x3000u);
}

TEST(X87, PointersNotUpdatedByControlInstructions) {
  Machine m;
  m.exec({0xD9, 0xE8});
  EXPECT_EQ(m.s.fpu.fip, 0x1234u);
  EXPECT_EQ(m.s.fpu.fcs, 0x08);
  EXPECT_EQ(m.s.fpu.fop, 0x1E8);
  m.s.eip = 0x9999;
  m.exec({0xD9, 0x3D, 0, 0x20, 0, 0});  // fnstcw
  m.exec({0xD9, 0xF7});                 // fincstp
  m.exec({0xDD, 0xC1});                 // ffree
  m.exec({0xD9, 0xD0});                 // fnop
  EXPECT_EQ(m.s.fpu.fip, 0x1234u);
  EXPECT_EQ(m.s.fpu.fop, 0x1E8);
}

TEST(X87, FbldFbstpKnownValues) {
  Machine m;
  const u8 bcd[10] = {0x45, 0x23, 0x01, 0, 0, 0, 0, 0, 0, 0x80};  // -12345
  std::memcpy(&m.mem.b[0x2000], bcd, 10);
  m.exec({0xDF, 0x25, 0, 0x20, 0, 0});  // fbld
  EXPECT_TRUE(same80(m.st(0), -12345.0L));
  m.exec({0xDF, 0x35, 0, 0x30, 0, 0});  // fbstp
  EXPECT_EQ(0, std::memcmp(&m.mem.b[0x3000], bcd, 10));
  EXPECT_EQ(m.s.fpu.ftw, 0xFFFF);
}

TEST(X87, FfreepFreesAndPops) {
  Machine m;
  m.exec({0xD9, 0xE8});
  m.exec({0xD9, 0xE8});
  m.exec({0xDF, 0xC1});  // ffreep st(1)
  EXPECT_EQ(m.top(), 7u);
  EXPECT_EQ(m.s.fpu.ftw, 0xFFFF);
}

TEST(X87, EveryX87RowHasAHandler) {
  for (unsigned k = 0; k < kOpCount - 1; ++k) {
    const OpInfo& info = op_info(Op(k));
    if (!(info.attrs & FPU)) continue;
    for (unsigned sz = 0; sz < 3; ++sz) EXPECT_TRUE(has_handler(Op(k), sz)) << info.name;
  }
}

}  // namespace
}  // namespace popek::x86
