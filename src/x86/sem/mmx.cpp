// MMX semantics: the Pentium II's set (SDM vol. 1 ch. 9, vol. 2 "P..." pages).
//
// MM0..MM7 are the low 64 bits (the significand) of the physical x87
// registers R0..R7 -- not ST(i): the mapping ignores TOP. Writing an MMX
// register sets that register's sign and exponent (bits 64..79) to all ones.
// Every MMX instruction but EMMS sets TOP to 0 and every tag to "valid"; EMMS
// sets every tag to "empty". FpuState keeps the full tag word as FNSTENV
// shows it, which the hardware derives from the registers' contents for the
// non-empty ones (the x87 code and FLDENV keep the same rule), so "valid"
// here is the tag each register's contents give. FIP, FDP and FOP are left
// alone: MMX instructions are not x87 instructions.
//
// Faults, in the SDM's order: #UD with CR0.EM, #NM with CR0.TS, then a
// pending unmasked x87 exception as the x87's waiting instructions take it
// (#MF with CR0.NE, else FERR# and the instruction runs), then the memory
// operand's own faults. Nothing changes before the last fault is passed.
#include <cstring>
#include <limits>
#include <type_traits>

#include "x86/sem/sem.h"
#include "x86/sem/x87_host.h"

namespace popek::x86 {
namespace {

constexpr u16 kFswEs = 0x80;

u64 mm(const Cpu& c, unsigned r) {
  u64 v;
  std::memcpy(&v, &c.s.fpu.regs[r & 7], 8);
  return v;
}
void set_mm(Cpu& c, unsigned r, u64 v) {
  u8 b[10];
  std::memcpy(b, &v, 8);
  b[8] = b[9] = 0xFF;
  long double& dst = c.s.fpu.regs[r & 7];
  std::memset(&dst, 0, sizeof dst);
  std::memcpy(&dst, b, 10);
}

void prologue(Cpu& c) {
  if (c.s.cr0 & CR0_EM) raise_fault(UD);
  if (c.s.cr0 & CR0_TS) raise_fault(NM);
  if (c.s.fpu.fsw & kFswEs) {
    if (c.s.cr0 & CR0_NE) raise_fault(MF);
    c.plat.fpu_error();  // FERR# -> IRQ 13; the instruction then runs (IGNNE#)
  }
}

// The x87 side of any MMX instruction but EMMS: TOP = 0, all registers valid.
void enter_mmx(FpuState& f) {
  f.set_top(0);
  u16 ftw = 0;
  for (unsigned p = 0; p < 8; ++p) {
    u8 v[10];
    std::memcpy(v, &f.regs[p], 10);
    ftw |= u16(x87host::tag_of(v) << (2 * p));
  }
  f.ftw = ftw;
}

// The Q operand: an MMX register (ModRM.rm) or a 64-bit memory operand.
u64 read_q(Cpu& c, const Insn& i) {
  if (i.mem) return c.read<u64>(i.seg, c.ea(i));
  return mm(c, i.rm);
}

// ---- lanes ----------------------------------------------------------------

template <typename T>
constexpr unsigned lanes() { return 8 / sizeof(T); }
template <typename T>
T lane(u64 v, unsigned k) { return T(v >> (8 * sizeof(T) * k)); }
template <typename T>
u64 put_lane(u64 v, unsigned k, T x) {
  using U = std::make_unsigned_t<T>;
  const unsigned sh = 8 * sizeof(T) * k;
  const u64 m = u64(U(~U(0))) << sh;
  return (v & ~m) | ((u64(U(x)) << sh) & m);
}

template <typename T, typename F>
u64 map2(u64 a, u64 b, F f) {
  u64 r = 0;
  for (unsigned k = 0; k < lanes<T>(); ++k) r = put_lane<T>(r, k, T(f(lane<T>(a, k), lane<T>(b, k))));
  return r;
}

template <typename T>
T saturate(i64 v) {
  constexpr i64 lo = i64(std::numeric_limits<T>::min()), hi = i64(std::numeric_limits<T>::max());
  return T(v < lo ? lo : v > hi ? hi : v);
}

// ---- the operations, as functions of (destination, source) ----------------

enum class Kind : u8 {
  addb, addw, addd, addsb, addsw, addusb, addusw,
  subb, subw, subd, subsb, subsw, subusb, subusw,
  mullw, mulhw, maddwd,
  cmpeqb, cmpeqw, cmpeqd, cmpgtb, cmpgtw, cmpgtd,
  packsswb, packssdw, packuswb,
  unpcklbw, unpcklwd, unpckldq, unpckhbw, unpckhwd, unpckhdq,
  and_, andn, or_, xor_,
  sllw, slld, sllq, srlw, srld, srlq, sraw, srad,
};

template <typename T>
u64 shl_lanes(u64 a, u64 n) {
  if (n >= 8 * sizeof(T)) return 0;
  return map2<T>(a, 0, [&](T x, T) { return T(x << n); });
}
template <typename T>
u64 shr_lanes(u64 a, u64 n) {  // T unsigned: logical, signed: arithmetic
  if (n >= 8 * sizeof(T)) n = std::is_signed_v<T> ? 8 * sizeof(T) - 1 : 8 * sizeof(T);
  if (n == 8 * sizeof(T)) return 0;
  return map2<T>(a, 0, [&](T x, T) { return T(x >> n); });
}

template <typename T>
u64 pack(u64 a, u64 b) {  // T: the narrow lane type; inputs are twice as wide, signed
  using W = std::conditional_t<sizeof(T) == 1, i16, i32>;
  u64 r = 0;
  constexpr unsigned n = lanes<W>();
  for (unsigned k = 0; k < n; ++k) {
    r = put_lane<T>(r, k, saturate<T>(lane<W>(a, k)));
    r = put_lane<T>(r, k + n, saturate<T>(lane<W>(b, k)));
  }
  return r;
}

template <typename T>
u64 unpack(u64 a, u64 b, bool high) {
  u64 r = 0;
  constexpr unsigned n = lanes<T>() / 2;
  for (unsigned k = 0; k < n; ++k) {
    r = put_lane<T>(r, 2 * k, lane<T>(a, k + (high ? n : 0)));
    r = put_lane<T>(r, 2 * k + 1, lane<T>(b, k + (high ? n : 0)));
  }
  return r;
}

u64 compute(Kind k, u64 a, u64 b) {
  switch (k) {
    case Kind::addb: return map2<u8>(a, b, [](u8 x, u8 y) { return x + y; });
    case Kind::addw: return map2<u16>(a, b, [](u16 x, u16 y) { return x + y; });
    case Kind::addd: return map2<u32>(a, b, [](u32 x, u32 y) { return x + y; });
    case Kind::addsb: return map2<i8>(a, b, [](i8 x, i8 y) { return saturate<i8>(i64(x) + y); });
    case Kind::addsw: return map2<i16>(a, b, [](i16 x, i16 y) { return saturate<i16>(i64(x) + y); });
    case Kind::addusb: return map2<u8>(a, b, [](u8 x, u8 y) { return saturate<u8>(i64(x) + y); });
    case Kind::addusw: return map2<u16>(a, b, [](u16 x, u16 y) { return saturate<u16>(i64(x) + y); });
    case Kind::subb: return map2<u8>(a, b, [](u8 x, u8 y) { return x - y; });
    case Kind::subw: return map2<u16>(a, b, [](u16 x, u16 y) { return x - y; });
    case Kind::subd: return map2<u32>(a, b, [](u32 x, u32 y) { return x - y; });
    case Kind::subsb: return map2<i8>(a, b, [](i8 x, i8 y) { return saturate<i8>(i64(x) - y); });
    case Kind::subsw: return map2<i16>(a, b, [](i16 x, i16 y) { return saturate<i16>(i64(x) - y); });
    case Kind::subusb: return map2<u8>(a, b, [](u8 x, u8 y) { return saturate<u8>(i64(x) - y); });
    case Kind::subusw: return map2<u16>(a, b, [](u16 x, u16 y) { return saturate<u16>(i64(x) - y); });
    case Kind::mullw: return map2<i16>(a, b, [](i16 x, i16 y) { return i16(i32(x) * y); });
    case Kind::mulhw: return map2<i16>(a, b, [](i16 x, i16 y) { return i16((i32(x) * y) >> 16); });
    case Kind::maddwd: {
      u64 r = 0;
      for (unsigned d = 0; d < 2; ++d) {
        // (-32768)^2 * 2 wraps to 0x80000000, as the SDM says.
        const u32 s = u32(i32(lane<i16>(a, 2 * d)) * lane<i16>(b, 2 * d)) +
                      u32(i32(lane<i16>(a, 2 * d + 1)) * lane<i16>(b, 2 * d + 1));
        r = put_lane<u32>(r, d, s);
      }
      return r;
    }
    case Kind::cmpeqb: return map2<u8>(a, b, [](u8 x, u8 y) { return x == y ? 0xFF : 0; });
    case Kind::cmpeqw: return map2<u16>(a, b, [](u16 x, u16 y) { return x == y ? 0xFFFF : 0; });
    case Kind::cmpeqd: return map2<u32>(a, b, [](u32 x, u32 y) { return x == y ? ~0u : 0u; });
    case Kind::cmpgtb: return map2<i8>(a, b, [](i8 x, i8 y) { return x > y ? -1 : 0; });
    case Kind::cmpgtw: return map2<i16>(a, b, [](i16 x, i16 y) { return x > y ? -1 : 0; });
    case Kind::cmpgtd: return map2<i32>(a, b, [](i32 x, i32 y) { return x > y ? -1 : 0; });
    case Kind::packsswb: return pack<i8>(a, b);
    case Kind::packssdw: return pack<i16>(a, b);
    case Kind::packuswb: return pack<u8>(a, b);
    case Kind::unpcklbw: return unpack<u8>(a, b, false);
    case Kind::unpcklwd: return unpack<u16>(a, b, false);
    case Kind::unpckldq: return unpack<u32>(a, b, false);
    case Kind::unpckhbw: return unpack<u8>(a, b, true);
    case Kind::unpckhwd: return unpack<u16>(a, b, true);
    case Kind::unpckhdq: return unpack<u32>(a, b, true);
    case Kind::and_: return a & b;
    case Kind::andn: return ~a & b;
    case Kind::or_: return a | b;
    case Kind::xor_: return a ^ b;
    // Shifts: b is the count (the whole 64 bits, or the immediate).
    case Kind::sllw: return shl_lanes<u16>(a, b);
    case Kind::slld: return shl_lanes<u32>(a, b);
    case Kind::sllq: return b >= 64 ? 0 : a << b;
    case Kind::srlw: return shr_lanes<u16>(a, b);
    case Kind::srld: return shr_lanes<u32>(a, b);
    case Kind::srlq: return b >= 64 ? 0 : a >> b;
    case Kind::sraw: return shr_lanes<i16>(a, b);
    case Kind::srad: return shr_lanes<i32>(a, b);
  }
  return 0;
}

// ---- handlers ---------------------------------------------------------------

// op mm, mm/m64
template <Kind K>
void h_pq(Cpu& c, const Insn& i) {
  prologue(c);
  const u64 src = read_q(c, i);
  set_mm(c, i.reg, compute(K, mm(c, i.reg), src));
  enter_mmx(c.s.fpu);
}
// shift mm, imm8 (0F 71/72/73, register forms only)
template <Kind K>
void h_nqib(Cpu& c, const Insn& i) {
  prologue(c);
  set_mm(c, i.rm, compute(K, mm(c, i.rm), u8(i.imm)));
  enter_mmx(c.s.fpu);
}

void h_movd_load(Cpu& c, const Insn& i) {  // MOVD mm, r/m32: zero-extended
  prologue(c);
  const u32 v = c.read_rm<u32>(i);
  set_mm(c, i.reg, v);
  enter_mmx(c.s.fpu);
}
void h_movd_store(Cpu& c, const Insn& i) {  // MOVD r/m32, mm: the low doubleword
  prologue(c);
  c.write_rm<u32>(i, u32(mm(c, i.reg)));
  enter_mmx(c.s.fpu);
}
void h_movq_load(Cpu& c, const Insn& i) {  // MOVQ mm, mm/m64
  prologue(c);
  set_mm(c, i.reg, read_q(c, i));
  enter_mmx(c.s.fpu);
}
void h_movq_store(Cpu& c, const Insn& i) {  // MOVQ mm/m64, mm
  prologue(c);
  const u64 v = mm(c, i.reg);
  if (i.mem) c.write<u64>(i.seg, c.ea(i), v);
  else set_mm(c, i.rm, v);
  enter_mmx(c.s.fpu);
}
void h_emms(Cpu& c, const Insn&) {
  prologue(c);
  c.s.fpu.set_top(0);
  c.s.fpu.ftw = 0xFFFF;
}

}  // namespace

void register_mmx(HandlerTable& t) {
  using enum Kind;
  t.set1(Op::MOVD_PqEd, h_movd_load);
  t.set1(Op::MOVD_EdPq, h_movd_store);
  t.set1(Op::MOVQ_PqQq, h_movq_load);
  t.set1(Op::MOVQ_QqPq, h_movq_store);
  t.set1(Op::EMMS, h_emms);
  t.set1(Op::PADDB, h_pq<addb>);
  t.set1(Op::PADDW, h_pq<addw>);
  t.set1(Op::PADDD, h_pq<addd>);
  t.set1(Op::PADDSB, h_pq<addsb>);
  t.set1(Op::PADDSW, h_pq<addsw>);
  t.set1(Op::PADDUSB, h_pq<addusb>);
  t.set1(Op::PADDUSW, h_pq<addusw>);
  t.set1(Op::PSUBB, h_pq<subb>);
  t.set1(Op::PSUBW, h_pq<subw>);
  t.set1(Op::PSUBD, h_pq<subd>);
  t.set1(Op::PSUBSB, h_pq<subsb>);
  t.set1(Op::PSUBSW, h_pq<subsw>);
  t.set1(Op::PSUBUSB, h_pq<subusb>);
  t.set1(Op::PSUBUSW, h_pq<subusw>);
  t.set1(Op::PMULLW, h_pq<mullw>);
  t.set1(Op::PMULHW, h_pq<mulhw>);
  t.set1(Op::PMADDWD, h_pq<maddwd>);
  t.set1(Op::PCMPEQB, h_pq<cmpeqb>);
  t.set1(Op::PCMPEQW, h_pq<cmpeqw>);
  t.set1(Op::PCMPEQD, h_pq<cmpeqd>);
  t.set1(Op::PCMPGTB, h_pq<cmpgtb>);
  t.set1(Op::PCMPGTW, h_pq<cmpgtw>);
  t.set1(Op::PCMPGTD, h_pq<cmpgtd>);
  t.set1(Op::PACKSSWB, h_pq<packsswb>);
  t.set1(Op::PACKSSDW, h_pq<packssdw>);
  t.set1(Op::PACKUSWB, h_pq<packuswb>);
  t.set1(Op::PUNPCKLBW, h_pq<unpcklbw>);
  t.set1(Op::PUNPCKLWD, h_pq<unpcklwd>);
  t.set1(Op::PUNPCKLDQ, h_pq<unpckldq>);
  t.set1(Op::PUNPCKHBW, h_pq<unpckhbw>);
  t.set1(Op::PUNPCKHWD, h_pq<unpckhwd>);
  t.set1(Op::PUNPCKHDQ, h_pq<unpckhdq>);
  t.set1(Op::PAND, h_pq<and_>);
  t.set1(Op::PANDN, h_pq<andn>);
  t.set1(Op::POR, h_pq<or_>);
  t.set1(Op::PXOR, h_pq<xor_>);
  t.set1(Op::PSLLW, h_pq<sllw>);
  t.set1(Op::PSLLD, h_pq<slld>);
  t.set1(Op::PSLLQ, h_pq<sllq>);
  t.set1(Op::PSRLW, h_pq<srlw>);
  t.set1(Op::PSRLD, h_pq<srld>);
  t.set1(Op::PSRLQ, h_pq<srlq>);
  t.set1(Op::PSRAW, h_pq<sraw>);
  t.set1(Op::PSRAD, h_pq<srad>);
  t.set1(Op::PSLLW_NqIb, h_nqib<sllw>);
  t.set1(Op::PSLLD_NqIb, h_nqib<slld>);
  t.set1(Op::PSLLQ_NqIb, h_nqib<sllq>);
  t.set1(Op::PSRLW_NqIb, h_nqib<srlw>);
  t.set1(Op::PSRLD_NqIb, h_nqib<srld>);
  t.set1(Op::PSRLQ_NqIb, h_nqib<srlq>);
  t.set1(Op::PSRAW_NqIb, h_nqib<sraw>);
  t.set1(Op::PSRAD_NqIb, h_nqib<srad>);
}

}  // namespace popek::x86
