// Integer arithmetic, logic, shifts, multiply/divide, bit operations, BCD,
// flag instructions, SETcc/CMOVcc (SDM vol. 2; flags via x86/arith.h).
#include <limits>

#include "x86/arith.h"
#include "x86/sem/sem.h"

namespace popek::x86 {
namespace {

using namespace arith;

enum AluK { K_ADD, K_OR, K_ADC, K_SBB, K_AND, K_SUB, K_XOR, K_CMP };

template <AluK K, typename T>
inline T alu(T a, T b, u32& fl) {
  switch (K) {
    case K_ADD: return add(a, b, fl);
    case K_OR: return or_(a, b, fl);
    case K_ADC: return adc(a, b, fl);
    case K_SBB: return sbb(a, b, fl);
    case K_AND: return and_(a, b, fl);
    case K_SUB: return sub(a, b, fl);
    case K_XOR: return xor_(a, b, fl);
    case K_CMP: sub(a, b, fl); return a;
  }
  return a;
}

// E op= G / E op= imm
template <AluK K, typename T>
void alu_E(Cpu& c, const Insn& i, T b) {
  if (i.mem) {
    const u32 off = c.ea(i);
    T a = c.read<T>(i.seg, off);
    u32 fl = c.s.eflags;
    T r = alu<K>(a, b, fl);
    if (K != K_CMP) c.write<T>(i.seg, off, r);
    c.s.eflags = fl;
  } else {
    T a = c.reg<T>(i.rm);
    T r = alu<K>(a, b, c.s.eflags);
    if (K != K_CMP) c.set_reg<T>(i.rm, r);
  }
}
template <AluK K, typename T> void h_EG(Cpu& c, const Insn& i) { alu_E<K, T>(c, i, c.reg<T>(i.reg)); }
template <AluK K, typename T> void h_EI(Cpu& c, const Insn& i) { alu_E<K, T>(c, i, T(i.imm)); }
template <AluK K, typename T> void h_GE(Cpu& c, const Insn& i) {
  T b = c.read_rm<T>(i);
  T r = alu<K>(c.reg<T>(i.reg), b, c.s.eflags);
  if (K != K_CMP) c.set_reg<T>(i.reg, r);
}
template <AluK K, typename T> void h_AI(Cpu& c, const Insn& i) {
  T r = alu<K>(c.reg<T>(EAX), T(i.imm), c.s.eflags);
  if (K != K_CMP) c.set_reg<T>(EAX, r);
}

template <typename T> void h_test_EG(Cpu& c, const Insn& i) {
  T a = c.read_rm<T>(i);
  and_(a, c.reg<T>(i.reg), c.s.eflags);
}
template <typename T> void h_test_EI(Cpu& c, const Insn& i) {
  T a = c.read_rm<T>(i);
  and_(a, T(i.imm), c.s.eflags);
}
template <typename T> void h_test_AI(Cpu& c, const Insn& i) {
  and_(c.reg<T>(EAX), T(i.imm), c.s.eflags);
}

// Read-modify-write of the r/m operand with a unary function.
template <typename T, typename F>
inline void rmw(Cpu& c, const Insn& i, F f) {
  if (i.mem) {
    const u32 off = c.ea(i);
    T a = c.read<T>(i.seg, off);
    u32 fl = c.s.eflags;
    T r = f(a, fl);
    c.write<T>(i.seg, off, r);
    c.s.eflags = fl;
  } else {
    T r = f(c.reg<T>(i.rm), c.s.eflags);
    c.set_reg<T>(i.rm, r);
  }
}

template <typename T> void h_inc(Cpu& c, const Insn& i) { rmw<T>(c, i, [](T a, u32& f) { return inc(a, f); }); }
template <typename T> void h_dec(Cpu& c, const Insn& i) { rmw<T>(c, i, [](T a, u32& f) { return dec(a, f); }); }
template <typename T> void h_neg(Cpu& c, const Insn& i) { rmw<T>(c, i, [](T a, u32& f) { return neg(a, f); }); }
template <typename T> void h_not(Cpu& c, const Insn& i) { rmw<T>(c, i, [](T a, u32&) { return T(~a); }); }
template <typename T> void h_inc_r(Cpu& c, const Insn& i) {
  unsigned r = i.opcode & 7;
  c.set_reg<T>(r, inc(c.reg<T>(r), c.s.eflags));
}
template <typename T> void h_dec_r(Cpu& c, const Insn& i) {
  unsigned r = i.opcode & 7;
  c.set_reg<T>(r, dec(c.reg<T>(r), c.s.eflags));
}

// Group 2 shifts/rotates. Count source: 0 = imm8, 1 = constant 1, 2 = CL.
enum ShK { S_ROL, S_ROR, S_RCL, S_RCR, S_SHL, S_SHR, S_SAL, S_SAR };
// (By an immediate or by 1: the host's immediate form, whose undefined flags
// may differ from the CL form's; and on memory, as a memory operand, whose
// may differ from a register's: see arith.h.)
template <typename T>
inline T do_shift(unsigned k, T a, u8 n, bool imm, bool mem, u32& fl) {  // count 0 changes nothing (host preload)
  if (imm) {
    switch (k) {
      case S_ROL: return rol_imm(a, n, fl, mem);
      case S_ROR: return ror_imm(a, n, fl, mem);
      case S_RCL: return rcl_imm(a, n, fl, mem);
      case S_RCR: return rcr_imm(a, n, fl, mem);
      case S_SHL: case S_SAL: return shl_imm(a, n, fl, mem);
      case S_SHR: return shr_imm(a, n, fl, mem);
      default: return sar_imm(a, n, fl, mem);
    }
  }
  if (mem) {
    switch (k) {
      case S_ROL: return rol_m(a, n, fl);
      case S_ROR: return ror_m(a, n, fl);
      case S_RCL: return rcl_m(a, n, fl);
      case S_RCR: return rcr_m(a, n, fl);
      case S_SHL: case S_SAL: return shl_m(a, n, fl);
      case S_SHR: return shr_m(a, n, fl);
      default: return sar_m(a, n, fl);
    }
  }
  switch (k) {
    case S_ROL: return rol(a, n, fl);
    case S_ROR: return ror(a, n, fl);
    case S_RCL: return rcl(a, n, fl);
    case S_RCR: return rcr(a, n, fl);
    case S_SHL: case S_SAL: return shl(a, n, fl);
    case S_SHR: return shr(a, n, fl);
    default: return sar(a, n, fl);
  }
}
template <int Src, typename T> void h_shift(Cpu& c, const Insn& i) {
  u8 n = Src == 0 ? u8(i.imm) : Src == 1 ? 1 : u8(c.s.gpr[ECX]);
  unsigned k = i.reg;
  if ((n & 31) == 0) {
    // No flags change, but a memory operand is still read (and may fault).
    if (i.mem) c.read<T>(i.seg, c.ea(i));
    return;
  }
  rmw<T>(c, i, [&](T a, u32& f) { return do_shift<T>(k, a, n, Src != 2, i.mem, f); });
}

template <bool Left, bool Cl, typename T> void h_dshift(Cpu& c, const Insn& i) {
  u8 n = Cl ? u8(c.s.gpr[ECX]) : u8(i.imm);
  T b = c.reg<T>(i.reg);
  if ((n & 31) == 0) {
    if (i.mem) c.read<T>(i.seg, c.ea(i));
    return;
  }
  rmw<T>(c, i, [&](T a, u32& f) {
    if (!Cl) return Left ? shld_imm(a, b, n, f) : shrd_imm(a, b, n, f);
    return Left ? shld(a, b, n, f) : shrd(a, b, n, f);
  });
}

// MUL/IMUL/DIV/IDIV on the accumulator pair.
template <typename T> inline void acc_get(Cpu& c, T& lo, T& hi) {
  if constexpr (sizeof(T) == 1) { lo = u8(c.s.gpr[EAX]); hi = u8(c.s.gpr[EAX] >> 8); }
  else { lo = c.reg<T>(EAX); hi = c.reg<T>(EDX); }
}
template <typename T> inline void acc_set(Cpu& c, T lo, T hi) {
  if constexpr (sizeof(T) == 1) c.set_reg<u16>(EAX, u16(lo | (u16(hi) << 8)));
  else { c.set_reg<T>(EAX, lo); c.set_reg<T>(EDX, hi); }
}
template <typename T> void h_mul(Cpu& c, const Insn& i) {
  T b = c.read_rm<T>(i), lo, hi;
  acc_get(c, lo, hi);
  mul1(lo, hi, b, c.s.eflags);
  acc_set(c, lo, hi);
}
template <typename T> void h_imul1(Cpu& c, const Insn& i) {
  T b = c.read_rm<T>(i), lo, hi;
  acc_get(c, lo, hi);
  imul1(lo, hi, b, c.s.eflags);
  acc_set(c, lo, hi);
}
// Divide errors: a zero divisor or a quotient too large for the destination.
template <typename T> bool div_error(T lo, T hi, T b) { return b == 0 || hi >= b; }
template <typename T> bool idiv_error(T lo, T hi, T b) {
  using S = std::make_signed_t<T>;
  constexpr unsigned bits = sizeof(T) * 8;
  if (b == 0) return true;
  i64 dividend = i64((u64(hi) << bits | lo) << (64 - 2 * bits)) >> (64 - 2 * bits);
  i64 divisor = S(b);
  if (dividend == (i64(-1) << (2 * bits - 1)) && divisor == -1) return true;
  i64 q = dividend / divisor;
  return q > i64(std::numeric_limits<S>::max()) || q < i64(std::numeric_limits<S>::min());
}
template <typename T> void h_div(Cpu& c, const Insn& i) {
  T b = c.read_rm<T>(i), lo, hi;
  acc_get(c, lo, hi);
  if (div_error(lo, hi, b)) raise_fault(DE);
  div1(lo, hi, b, c.s.eflags);
  acc_set(c, lo, hi);
}
template <typename T> void h_idiv(Cpu& c, const Insn& i) {
  T b = c.read_rm<T>(i), lo, hi;
  acc_get(c, lo, hi);
  if (idiv_error(lo, hi, b)) raise_fault(DE);
  idiv1(lo, hi, b, c.s.eflags);
  acc_set(c, lo, hi);
}
// Their early checks (EarlyCheck): the operand as the handler reads it, where
// that needs no walk and has no effect.
template <typename T, bool (*Error)(T, T, T)> bool e_div(Cpu& c, const Insn& i, Fault* f) {
  T b, lo, hi;
  if (!c.peek_rm<T>(i, &b)) return false;
  acc_get(c, lo, hi);
  if (!Error(lo, hi, b)) return false;
  *f = Fault{DE, false, 0};
  return true;
}
template <typename T> bool e_divu(Cpu& c, const Insn& i, Fault* f) { return e_div<T, div_error<T>>(c, i, f); }
template <typename T> bool e_idiv(Cpu& c, const Insn& i, Fault* f) { return e_div<T, idiv_error<T>>(c, i, f); }
template <typename T> void h_imul_GvEv(Cpu& c, const Insn& i) {
  T b = c.read_rm<T>(i);
  c.set_reg<T>(i.reg, imul2(c.reg<T>(i.reg), b, c.s.eflags));
}
template <typename T> void h_imul_GvEvI(Cpu& c, const Insn& i) {
  T b = c.read_rm<T>(i);
  c.set_reg<T>(i.reg, imul2(b, T(i.imm), c.s.eflags));
}

// BT family. Register bit offsets on memory operands address beyond the operand.
enum BtK { B_BT, B_BTS, B_BTR, B_BTC };
template <BtK K, typename T> inline T bitop(T a, T n, u32& fl) {
  switch (K) {
    case B_BT: bt(a, n, fl); return a;
    case B_BTS: return bts(a, n, fl);
    case B_BTR: return btr(a, n, fl);
    default: return btc(a, n, fl);
  }
}
template <BtK K, typename T> void h_bt_G(Cpu& c, const Insn& i) {
  constexpr unsigned bits = sizeof(T) * 8;
  T n = c.reg<T>(i.reg);
  if (!i.mem) {
    T r = bitop<K>(c.reg<T>(i.rm), T(n & (bits - 1)), c.s.eflags);
    if (K != B_BT) c.set_reg<T>(i.rm, r);
    return;
  }
  using S = std::make_signed_t<T>;
  i32 disp = i32(S(n)) >> (sizeof(T) == 2 ? 4 : 5);
  u32 off = c.ea(i) + u32(disp) * sizeof(T);
  if (i.asize == 2) off &= 0xFFFF;
  T a = c.read<T>(i.seg, off);
  u32 fl = c.s.eflags;
  T r = bitop<K>(a, T(n & (bits - 1)), fl);
  if (K != B_BT) c.write<T>(i.seg, off, r);
  c.s.eflags = fl;
}
template <BtK K, typename T> void h_bt_I(Cpu& c, const Insn& i) {
  constexpr unsigned bits = sizeof(T) * 8;
  T n = T(i.imm & (bits - 1));
  if (K == B_BT) {
    T a = c.read_rm<T>(i);
    bt(a, n, c.s.eflags);
    return;
  }
  rmw<T>(c, i, [&](T a, u32& f) { return bitop<K>(a, n, f); });
}
template <bool Fwd, typename T> void h_bscan(Cpu& c, const Insn& i) {
  T src = c.read_rm<T>(i);
  T d = c.reg<T>(i.reg);
  c.set_reg<T>(i.reg, Fwd ? bsf(d, src, c.s.eflags) : bsr(d, src, c.s.eflags));
}

template <typename T> void h_xadd(Cpu& c, const Insn& i) {
  T src = c.reg<T>(i.reg);
  if (i.mem) {
    u32 off = c.ea(i);
    T d = c.read<T>(i.seg, off);
    u32 fl = c.s.eflags;
    T sum = add(d, src, fl);
    c.write<T>(i.seg, off, sum);
    c.s.eflags = fl;
    c.set_reg<T>(i.reg, d);
  } else {
    T d = c.reg<T>(i.rm);
    T sum = add(d, src, c.s.eflags);
    c.set_reg<T>(i.reg, d);
    c.set_reg<T>(i.rm, sum);
  }
}
template <typename T> void h_cmpxchg(Cpu& c, const Insn& i) {
  T acc = c.reg<T>(EAX);
  T src = c.reg<T>(i.reg);
  if (i.mem) {
    u32 off = c.ea(i);
    T d = c.read<T>(i.seg, off);
    u32 fl = c.s.eflags;
    sub(acc, d, fl);
    // The destination is written in either case (with its own value on failure).
    c.write<T>(i.seg, off, (fl & ZF) ? src : d);
    c.s.eflags = fl;
    if (!(fl & ZF)) c.set_reg<T>(EAX, d);
  } else {
    T d = c.reg<T>(i.rm);
    sub(acc, d, c.s.eflags);
    if (c.s.eflags & ZF) c.set_reg<T>(i.rm, src);
    else c.set_reg<T>(EAX, d);
  }
}
void h_cmpxchg8b(Cpu& c, const Insn& i) {
  u32 off = c.ea(i);
  u64 d = c.read<u64>(i.seg, off);
  u64 cmp = u64(c.s.gpr[EDX]) << 32 | c.s.gpr[EAX];
  if (d == cmp) {
    c.write<u64>(i.seg, off, u64(c.s.gpr[ECX]) << 32 | c.s.gpr[EBX]);
    c.s.eflags |= ZF;
  } else {
    c.write<u64>(i.seg, off, d);
    c.s.gpr[EAX] = u32(d);
    c.s.gpr[EDX] = u32(d >> 32);
    c.s.eflags &= ~ZF;
  }
}

// ---- BCD (no 64-bit host equivalent: SDM pseudo-code; undefined flags set
// from the result the way current CPUs do: SF/ZF/PF from AL, OF cleared) ----
inline u32 szp8(u8 v) {
  u32 f = 0;
  if (v == 0) f |= ZF;
  if (v & 0x80) f |= SF;
  if (!__builtin_parity(v)) f |= PF;
  return f;
}
void h_daa(Cpu& c, const Insn&) {
  u32& fl = c.s.eflags;
  u8 al = u8(c.s.gpr[EAX]), old_al = al;
  bool old_cf = fl & CF, cf = false, af = false;
  if ((al & 0xF) > 9 || (fl & AF)) {
    cf = old_cf || al > 0xF9;
    al = u8(al + 6);
    af = true;
  }
  if (old_al > 0x99 || old_cf) {
    al = u8(al + 0x60);
    cf = true;
  }
  c.set_reg8(0, al);
  fl = (fl & ~FLAGS_ARITH) | szp8(al) | (cf ? u32(CF) : 0u) | (af ? u32(AF) : 0u);
}
void h_das(Cpu& c, const Insn&) {
  u32& fl = c.s.eflags;
  u8 al = u8(c.s.gpr[EAX]), old_al = al;
  bool old_cf = fl & CF, cf = false, af = false;
  if ((al & 0xF) > 9 || (fl & AF)) {
    cf = old_cf || al < 6;
    al = u8(al - 6);
    af = true;
  }
  if (old_al > 0x99 || old_cf) {
    al = u8(al - 0x60);
    cf = true;
  }
  c.set_reg8(0, al);
  fl = (fl & ~FLAGS_ARITH) | szp8(al) | (cf ? u32(CF) : 0u) | (af ? u32(AF) : 0u);
}
void h_aaa(Cpu& c, const Insn&) {
  u32& fl = c.s.eflags;
  u16 ax = u16(c.s.gpr[EAX]);
  bool adj = (ax & 0xF) > 9 || (fl & AF);
  if (adj) ax = u16(ax + 0x106);
  ax &= 0xFF0F;
  c.set_reg<u16>(EAX, ax);
  fl = (fl & ~FLAGS_ARITH) | szp8(u8(ax)) | (adj ? (AF | CF) : 0);
}
void h_aas(Cpu& c, const Insn&) {
  u32& fl = c.s.eflags;
  u16 ax = u16(c.s.gpr[EAX]);
  bool adj = (ax & 0xF) > 9 || (fl & AF);
  if (adj) {
    ax = u16(ax - 6);
    ax = u16(ax - 0x100);
  }
  ax &= 0xFF0F;
  c.set_reg<u16>(EAX, ax);
  fl = (fl & ~FLAGS_ARITH) | szp8(u8(ax)) | (adj ? (AF | CF) : 0);
}
void h_aam(Cpu& c, const Insn& i) {
  u8 base = u8(i.imm);
  if (base == 0) raise_fault(DE);
  u8 al = u8(c.s.gpr[EAX]);
  u8 ah = al / base;
  al = al % base;
  c.set_reg<u16>(EAX, u16(al | (ah << 8)));
  c.s.eflags = (c.s.eflags & ~FLAGS_ARITH) | szp8(al);
}
void h_aad(Cpu& c, const Insn& i) {
  u8 al = u8(c.s.gpr[EAX]), ah = u8(c.s.gpr[EAX] >> 8);
  u32 fl = c.s.eflags;
  u8 r = arith::add<u8>(al, u8(ah * u8(i.imm)), fl);
  c.set_reg<u16>(EAX, r);
  c.s.eflags = fl;
}
void h_salc(Cpu& c, const Insn&) { c.set_reg8(0, (c.s.eflags & CF) ? 0xFF : 0); }

// ---- flags and conversions ----
void h_clc(Cpu& c, const Insn&) { c.s.eflags &= ~CF; }
void h_stc(Cpu& c, const Insn&) { c.s.eflags |= CF; }
void h_cmc(Cpu& c, const Insn&) { c.s.eflags ^= CF; }
void h_cld(Cpu& c, const Insn&) { c.s.eflags &= ~DF; }
void h_std(Cpu& c, const Insn&) { c.s.eflags |= DF; }
void h_lahf(Cpu& c, const Insn&) { c.set_reg8(4, u8((c.s.eflags & (SF | ZF | AF | PF | CF)) | 2)); }
void h_sahf(Cpu& c, const Insn&) {
  c.set_flags(SF | ZF | AF | PF | CF, u8(c.s.gpr[EAX] >> 8));
}
template <typename T> void h_cbw(Cpu& c, const Insn&) {
  if constexpr (sizeof(T) == 2) c.set_reg<u16>(EAX, u16(i16(i8(c.s.gpr[EAX]))));
  else c.s.gpr[EAX] = u32(i32(i16(c.s.gpr[EAX])));
}
template <typename T> void h_cwd(Cpu& c, const Insn&) {
  if constexpr (sizeof(T) == 2) c.set_reg<u16>(EDX, (c.s.gpr[EAX] & 0x8000) ? 0xFFFF : 0);
  else c.s.gpr[EDX] = (c.s.gpr[EAX] & 0x80000000u) ? 0xFFFFFFFFu : 0;
}
void h_setcc(Cpu& c, const Insn& i) { c.write_rm<u8>(i, c.cond(i.opcode & 15) ? 1 : 0); }
template <typename T> void h_cmov(Cpu& c, const Insn& i) {
  T v = c.read_rm<T>(i);  // the source is read (and may fault) whatever the condition
  if (c.cond(i.opcode & 15)) c.set_reg<T>(i.reg, v);
  else if constexpr (sizeof(T) == 4) c.set_reg<T>(i.reg, c.reg<T>(i.reg));
}
template <typename T> void h_bswap(Cpu& c, const Insn& i) {
  unsigned r = i.opcode & 7;
  if constexpr (sizeof(T) == 4) c.s.gpr[r] = __builtin_bswap32(c.s.gpr[r]);
  else c.set_reg<u16>(r, 0);  // BSWAP r16 is undefined; current CPUs give 0
}

}  // namespace

#define SIZES(f) f<u8>, f<u16>, f<u32>
#define ALU_ROWS(N, K)                                          \
  t.set(Op::N##_EbGb, h_EG<K, u8>, nullptr, nullptr);           \
  t.set(Op::N##_EvGv, nullptr, h_EG<K, u16>, h_EG<K, u32>);     \
  t.set(Op::N##_GbEb, h_GE<K, u8>, nullptr, nullptr);           \
  t.set(Op::N##_GvEv, nullptr, h_GE<K, u16>, h_GE<K, u32>);     \
  t.set(Op::N##_ALIb, h_AI<K, u8>, nullptr, nullptr);           \
  t.set(Op::N##_eAXIz, nullptr, h_AI<K, u16>, h_AI<K, u32>);    \
  t.set(Op::N##_EbIb, h_EI<K, u8>, nullptr, nullptr);           \
  t.set(Op::N##_EbIb82, h_EI<K, u8>, nullptr, nullptr);         \
  t.set(Op::N##_EvIz, nullptr, h_EI<K, u16>, h_EI<K, u32>);     \
  t.set(Op::N##_EvIb, nullptr, h_EI<K, u16>, h_EI<K, u32>);

#define SHIFT_ROWS(N)                                                        \
  t.set(Op::N##_EbIb, h_shift<0, u8>, nullptr, nullptr);                     \
  t.set(Op::N##_EvIb, nullptr, h_shift<0, u16>, h_shift<0, u32>);            \
  t.set(Op::N##_Eb1, h_shift<1, u8>, nullptr, nullptr);                      \
  t.set(Op::N##_Ev1, nullptr, h_shift<1, u16>, h_shift<1, u32>);             \
  t.set(Op::N##_EbCL, h_shift<2, u8>, nullptr, nullptr);                     \
  t.set(Op::N##_EvCL, nullptr, h_shift<2, u16>, h_shift<2, u32>);

void register_alu(HandlerTable& t) {
  ALU_ROWS(ADD, K_ADD)
  ALU_ROWS(OR, K_OR)
  ALU_ROWS(ADC, K_ADC)
  ALU_ROWS(SBB, K_SBB)
  ALU_ROWS(AND, K_AND)
  ALU_ROWS(SUB, K_SUB)
  ALU_ROWS(XOR, K_XOR)
  ALU_ROWS(CMP, K_CMP)
  SHIFT_ROWS(ROL) SHIFT_ROWS(ROR) SHIFT_ROWS(RCL) SHIFT_ROWS(RCR)
  SHIFT_ROWS(SHL) SHIFT_ROWS(SHR) SHIFT_ROWS(SAL) SHIFT_ROWS(SAR)
  t.set(Op::TEST_EbGb, SIZES(h_test_EG));
  t.set(Op::TEST_EvGv, SIZES(h_test_EG));
  t.set(Op::TEST_ALIb, SIZES(h_test_AI));
  t.set(Op::TEST_eAXIz, SIZES(h_test_AI));
  t.set(Op::TEST_EbIb, SIZES(h_test_EI));
  t.set(Op::TEST_EbIb1, SIZES(h_test_EI));
  t.set(Op::TEST_EvIz, SIZES(h_test_EI));
  t.set(Op::TEST_EvIz1, SIZES(h_test_EI));
  t.set(Op::INC_r, SIZES(h_inc_r));
  t.set(Op::DEC_r, SIZES(h_dec_r));
  t.set(Op::INC_Eb, SIZES(h_inc));
  t.set(Op::DEC_Eb, SIZES(h_dec));
  t.set(Op::INC_Ev, SIZES(h_inc));
  t.set(Op::DEC_Ev, SIZES(h_dec));
  t.set(Op::NOT_Eb, SIZES(h_not));
  t.set(Op::NOT_Ev, SIZES(h_not));
  t.set(Op::NEG_Eb, SIZES(h_neg));
  t.set(Op::NEG_Ev, SIZES(h_neg));
  t.set(Op::MUL_Eb, SIZES(h_mul));
  t.set(Op::MUL_Ev, SIZES(h_mul));
  t.set(Op::IMUL_Eb, SIZES(h_imul1));
  t.set(Op::IMUL_Ev, SIZES(h_imul1));
  t.set(Op::DIV_Eb, SIZES(h_div));
  t.set(Op::DIV_Ev, SIZES(h_div));
  t.set(Op::IDIV_Eb, SIZES(h_idiv));
  t.set(Op::IDIV_Ev, SIZES(h_idiv));
  t.set_early(Op::DIV_Eb, SIZES(e_divu));
  t.set_early(Op::DIV_Ev, SIZES(e_divu));
  t.set_early(Op::IDIV_Eb, SIZES(e_idiv));
  t.set_early(Op::IDIV_Ev, SIZES(e_idiv));
  t.set(Op::IMUL_GvEv, nullptr, h_imul_GvEv<u16>, h_imul_GvEv<u32>);
  t.set(Op::IMUL_GvEvIz, nullptr, h_imul_GvEvI<u16>, h_imul_GvEvI<u32>);
  t.set(Op::IMUL_GvEvIb, nullptr, h_imul_GvEvI<u16>, h_imul_GvEvI<u32>);
  t.set(Op::SHLD_EvGvIb, nullptr, h_dshift<true, false, u16>, h_dshift<true, false, u32>);
  t.set(Op::SHLD_EvGvCL, nullptr, h_dshift<true, true, u16>, h_dshift<true, true, u32>);
  t.set(Op::SHRD_EvGvIb, nullptr, h_dshift<false, false, u16>, h_dshift<false, false, u32>);
  t.set(Op::SHRD_EvGvCL, nullptr, h_dshift<false, true, u16>, h_dshift<false, true, u32>);
  t.set(Op::BT_EvGv, nullptr, h_bt_G<B_BT, u16>, h_bt_G<B_BT, u32>);
  t.set(Op::BTS_EvGv, nullptr, h_bt_G<B_BTS, u16>, h_bt_G<B_BTS, u32>);
  t.set(Op::BTR_EvGv, nullptr, h_bt_G<B_BTR, u16>, h_bt_G<B_BTR, u32>);
  t.set(Op::BTC_EvGv, nullptr, h_bt_G<B_BTC, u16>, h_bt_G<B_BTC, u32>);
  t.set(Op::BT_EvIb, nullptr, h_bt_I<B_BT, u16>, h_bt_I<B_BT, u32>);
  t.set(Op::BTS_EvIb, nullptr, h_bt_I<B_BTS, u16>, h_bt_I<B_BTS, u32>);
  t.set(Op::BTR_EvIb, nullptr, h_bt_I<B_BTR, u16>, h_bt_I<B_BTR, u32>);
  t.set(Op::BTC_EvIb, nullptr, h_bt_I<B_BTC, u16>, h_bt_I<B_BTC, u32>);
  t.set(Op::BSF, nullptr, h_bscan<true, u16>, h_bscan<true, u32>);
  t.set(Op::BSR, nullptr, h_bscan<false, u16>, h_bscan<false, u32>);
  t.set(Op::XADD_EbGb, SIZES(h_xadd));
  t.set(Op::XADD_EvGv, SIZES(h_xadd));
  t.set(Op::CMPXCHG_EbGb, SIZES(h_cmpxchg));
  t.set(Op::CMPXCHG_EvGv, SIZES(h_cmpxchg));
  t.set1(Op::CMPXCHG8B, h_cmpxchg8b);
  t.set1(Op::DAA, h_daa);
  t.set1(Op::DAS, h_das);
  t.set1(Op::AAA, h_aaa);
  t.set1(Op::AAS, h_aas);
  t.set1(Op::AAM, h_aam);
  t.set1(Op::AAD, h_aad);
  t.set1(Op::SALC, h_salc);
  t.set1(Op::CLC, h_clc);
  t.set1(Op::STC, h_stc);
  t.set1(Op::CMC, h_cmc);
  t.set1(Op::CLD, h_cld);
  t.set1(Op::STD, h_std);
  t.set1(Op::LAHF, h_lahf);
  t.set1(Op::SAHF, h_sahf);
  t.set(Op::CBW, nullptr, h_cbw<u16>, h_cbw<u32>);
  t.set(Op::CWD, nullptr, h_cwd<u16>, h_cwd<u32>);
  t.set1(Op::SETCC, h_setcc);
  t.set(Op::CMOVCC, nullptr, h_cmov<u16>, h_cmov<u32>);
  t.set(Op::BSWAP, nullptr, h_bswap<u16>, h_bswap<u32>);
}

}  // namespace popek::x86
