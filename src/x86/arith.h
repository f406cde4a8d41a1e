// Arithmetic with exact x86 flags. The host is an x86-64 CPU that executes the
// same 8/16/32-bit arithmetic, so each primitive loads the guest's arithmetic
// flags into the host, runs the very instruction, and takes all six flags it
// leaves (LAHF + SETO: no stack use, so no red-zone hazard). Flags the
// instruction defines come out right by construction; flags it leaves
// "unaffected" keep the guest's values; flags the SDM calls "undefined" are
// what this host CPU produces. This is the one place that decision is made, and
// the binary translator (which runs guest arithmetic on host flags) agrees with
// it by construction.
#pragma once
#include <array>
#include <utility>

#include "base/types.h"
#include "x86/cpu_state.h"

namespace popek::x86::arith {

// Host flags captured as EFLAGS bits (SF ZF AF PF CF from LAHF, OF from SETO).
inline u32 host_flags(u16 ax) {
  return u32((ax >> 8) & (SF | ZF | AF | PF | CF)) | ((ax & 0xFF) ? OF : 0u);
}
inline u8 of_in(u32 fl) { return (fl & OF) ? 1 : 0; }
inline u8 lo_in(u32 fl) { return u8((fl & 0xD5) | 2); }
inline u64 pre_in(u32 fl) { return (u64(lo_in(fl)) << 8) | of_in(fl); }
inline void merge(u32& fl, u16 ax) { fl = (fl & ~FLAGS_ARITH) | host_flags(ax); }

// Loads guest OF (an ADD of 0x7F that overflows exactly when OF is set) and
// SF ZF AF PF CF (SAHF, with RAX swapped out around it) into the host flags.
// `t` enters holding (SZAPC byte << 8) | OF.
#define POPEK_PRE "add $0x7f, %b[t]\n\txchg %%rax, %[t]\n\tsahf\n\txchg %%rax, %[t]\n\t"
#define POPEK_POST "\n\tlahf\n\tseto %%al"

// dst = dst OP src, two-operand forms (add adc sub sbb and or xor bt* bsf bsr imul).
#define POPEK_BINOP(fn, insn)                                                   \
  template <typename T>                                                        \
  inline T fn(T a, T b, u32& fl) {                                             \
    u16 ax;                                                                    \
    u64 t = pre_in(fl);                                                                     \
    asm(POPEK_PRE insn " %[b], %[a]" POPEK_POST                                \
        : [a] "+r"(a), "=&a"(ax), [t] "+&r"(t)                                 \
        : [b] "r"(b)                                             \
        : "cc");                                                               \
    merge(fl, ax);                                                             \
    return a;                                                                  \
  }
POPEK_BINOP(add, "add")
POPEK_BINOP(adc, "adc")
POPEK_BINOP(sub, "sub")
POPEK_BINOP(sbb, "sbb")
POPEK_BINOP(and_, "and")
POPEK_BINOP(or_, "or")
POPEK_BINOP(xor_, "xor")
// BT family: the bit offset already reduced modulo the operand size.
POPEK_BINOP(bt, "bt")
POPEK_BINOP(bts, "bts")
POPEK_BINOP(btr, "btr")
POPEK_BINOP(btc, "btc")
// BSF/BSR: pass the old destination as `a`; a zero source leaves it.
POPEK_BINOP(bsf, "bsf")
POPEK_BINOP(bsr, "bsr")
// Two/three-operand IMUL (16/32-bit).
POPEK_BINOP(imul2, "imul")
#undef POPEK_BINOP

#define POPEK_UNOP(fn, insn)                                                    \
  template <typename T>                                                        \
  inline T fn(T a, u32& fl) {                                                  \
    u16 ax;                                                                    \
    u64 t = pre_in(fl);                                                                     \
    asm(POPEK_PRE insn " %[a]" POPEK_POST                                      \
        : [a] "+r"(a), "=&a"(ax), [t] "+&r"(t)                                 \
        :                                                          \
        : "cc");                                                               \
    merge(fl, ax);                                                             \
    return a;                                                                  \
  }
POPEK_UNOP(inc, "inc")
POPEK_UNOP(dec, "dec")
POPEK_UNOP(neg, "neg")
#undef POPEK_UNOP

// Shifts and rotates by a count read from CL or an immediate; the host masks
// and reduces it exactly as the guest CPU does.
#define POPEK_SHIFT(fn, insn)                                                   \
  template <typename T>                                                        \
  inline T fn(T a, u8 count, u32& fl) {                                        \
    u16 ax;                                                                    \
    u64 t = pre_in(fl);                                                                     \
    asm(POPEK_PRE insn " %%cl, %[a]" POPEK_POST                                \
        : [a] "+r"(a), "=&a"(ax), [t] "+&r"(t)                                 \
        : "c"(count)                                             \
        : "cc");                                                               \
    merge(fl, ax);                                                             \
    return a;                                                                  \
  }                                                                            \
  template <typename T>                                                        \
  inline T fn##_m(T a, u8 count, u32& fl) {                                    \
    u16 ax;                                                                    \
    u64 t = pre_in(fl);                                                        \
    asm(POPEK_PRE insn "%z[a] %%cl, %[a]" POPEK_POST                           \
        : [a] "+m"(a), "=&a"(ax), [t] "+&r"(t)                                 \
        : "c"(count)                                                           \
        : "cc");                                                               \
    merge(fl, ax);                                                             \
    return a;                                                                  \
  }
POPEK_SHIFT(shl, "shl")
POPEK_SHIFT(shr, "shr")
POPEK_SHIFT(sar, "sar")
POPEK_SHIFT(rol, "rol")
POPEK_SHIFT(ror, "ror")
POPEK_SHIFT(rcl, "rcl")
POPEK_SHIFT(rcr, "rcr")
#undef POPEK_SHIFT

// The same by an immediate count, as the host's immediate form: it may leave
// the flags the SDM calls undefined otherwise than the CL form (on a Sapphire
// Rapids host, ROL r8, 25 keeps OF where ROL r8, CL with CL = 25 sets it),
// and the binary translator runs the guest's immediate form. `count` is
// masked to 5 bits, as the CPU masks it.
template <typename T, template <typename> class S, std::size_t... N>
constexpr auto imm_table(std::index_sequence<N...>) {
  return std::array<T (*)(T, u32&), sizeof...(N)>{&S<T>::template at<u8(N)>...};
}
template <typename T, template <typename> class S, std::size_t... N>
constexpr auto imm_table2(std::index_sequence<N...>) {
  return std::array<T (*)(T, T, u32&), sizeof...(N)>{&S<T>::template at<u8(N)>...};
}
#define POPEK_SHIFT_IMM(fn, insn)                                               \
  template <typename T>                                                        \
  struct fn##_i {                                                              \
    template <u8 N>                                                            \
    static T at(T a, u32& fl) {                                                \
      u16 ax;                                                                  \
      u64 t = pre_in(fl);                                                      \
      asm(POPEK_PRE insn " %[n], %[a]" POPEK_POST                              \
          : [a] "+r"(a), "=&a"(ax), [t] "+&r"(t)                               \
          : [n] "i"(N)                                                         \
          : "cc");                                                             \
      merge(fl, ax);                                                           \
      return a;                                                                \
    }                                                                          \
  };                                                                           \
  template <typename T>                                                        \
  struct fn##_im {                                                             \
    template <u8 N>                                                            \
    static T at(T a, u32& fl) {                                                \
      u16 ax;                                                                  \
      u64 t = pre_in(fl);                                                      \
      asm(POPEK_PRE insn "%z[a] %[n], %[a]" POPEK_POST                         \
          : [a] "+m"(a), "=&a"(ax), [t] "+&r"(t)                               \
          : [n] "i"(N)                                                         \
          : "cc");                                                             \
      merge(fl, ax);                                                           \
      return a;                                                                \
    }                                                                          \
  };                                                                           \
  template <typename T>                                                        \
  inline T fn##_imm(T a, u8 count, u32& fl, bool mem = false) {                \
    static constexpr auto tab = imm_table<T, fn##_i>(std::make_index_sequence<32>{}); \
    static constexpr auto tabm = imm_table<T, fn##_im>(std::make_index_sequence<32>{}); \
    return (mem ? tabm : tab)[count & 31](a, fl);                              \
  }
POPEK_SHIFT_IMM(shl, "shl")
POPEK_SHIFT_IMM(shr, "shr")
POPEK_SHIFT_IMM(sar, "sar")
POPEK_SHIFT_IMM(rol, "rol")
POPEK_SHIFT_IMM(ror, "ror")
POPEK_SHIFT_IMM(rcl, "rcl")
POPEK_SHIFT_IMM(rcr, "rcr")
#undef POPEK_SHIFT_IMM

// SHLD/SHRD (16/32-bit).
#define POPEK_DSHIFT(fn, insn)                                                  \
  template <typename T>                                                        \
  inline T fn(T a, T b, u8 count, u32& fl) {                                   \
    u16 ax;                                                                    \
    u64 t = pre_in(fl);                                                                     \
    asm(POPEK_PRE insn " %%cl, %[b], %[a]" POPEK_POST                          \
        : [a] "+r"(a), "=&a"(ax), [t] "+&r"(t)                                 \
        : [b] "r"(b), "c"(count)                                 \
        : "cc");                                                               \
    merge(fl, ax);                                                             \
    return a;                                                                  \
  }
POPEK_DSHIFT(shld, "shld")
POPEK_DSHIFT(shrd, "shrd")
#undef POPEK_DSHIFT

// SHLD/SHRD by an immediate count: the host's immediate form (see above).
#define POPEK_DSHIFT_IMM(fn, insn)                                              \
  template <typename T>                                                        \
  struct fn##_i {                                                              \
    template <u8 N>                                                            \
    static T at(T a, T b, u32& fl) {                                           \
      u16 ax;                                                                  \
      u64 t = pre_in(fl);                                                      \
      asm(POPEK_PRE insn " %[n], %[b], %[a]" POPEK_POST                        \
          : [a] "+r"(a), "=&a"(ax), [t] "+&r"(t)                               \
          : [b] "r"(b), [n] "i"(N)                                             \
          : "cc");                                                             \
      merge(fl, ax);                                                           \
      return a;                                                                \
    }                                                                          \
  };                                                                           \
  template <typename T>                                                        \
  inline T fn##_imm(T a, T b, u8 count, u32& fl) {                             \
    static constexpr auto tab = imm_table2<T, fn##_i>(std::make_index_sequence<32>{}); \
    return tab[count & 31](a, b, fl);                                          \
  }
POPEK_DSHIFT_IMM(shld, "shld")
POPEK_DSHIFT_IMM(shrd, "shrd")
#undef POPEK_DSHIFT_IMM

// One-operand MUL/IMUL/DIV/IDIV on the accumulator pair (hi:lo) = AH:AL,
// DX:AX or EDX:EAX. DIV/IDIV must be checked for #DE by the caller first (the
// host would trap).
#define POPEK_MULDIV(fn, insn)                                                   \
  template <typename T>                                                         \
  inline void fn(T& lo, T& hi, T b, u32& fl) {                                  \
    u64 rax, rdx = hi, out, t = pre_in(fl);                                                  \
    if constexpr (sizeof(T) == 1) {                                             \
      rax = u64(lo) | (u64(hi) << 8);                                           \
      asm(POPEK_PRE insn "b %b[b]\n\tmov %%rax, %[o]" POPEK_POST                \
          : "+a"(rax), [o] "=&r"(out), [t] "+&r"(t) : [b] "q"(b) : "cc"); \
      lo = T(out);                                                              \
      hi = T(out >> 8);                                                         \
    } else if constexpr (sizeof(T) == 2) {                                      \
      rax = lo;                                                                 \
      asm(POPEK_PRE insn "w %w[b]\n\tmov %%rax, %[o]" POPEK_POST                \
          : "+a"(rax), "+d"(rdx), [o] "=&r"(out), [t] "+&r"(t)                  \
          : [b] "r"(b) : "cc");                                   \
      lo = T(out);                                                              \
      hi = T(rdx);                                                              \
    } else {                                                                    \
      rax = lo;                                                                 \
      asm(POPEK_PRE insn "l %k[b]\n\tmov %%rax, %[o]" POPEK_POST                \
          : "+a"(rax), "+d"(rdx), [o] "=&r"(out), [t] "+&r"(t)                  \
          : [b] "r"(b) : "cc");                                   \
      lo = T(out);                                                              \
      hi = T(rdx);                                                              \
    }                                                                           \
    merge(fl, u16(rax));                                                        \
  }
POPEK_MULDIV(mul1, "mul")
POPEK_MULDIV(imul1, "imul")
POPEK_MULDIV(div1, "div")
POPEK_MULDIV(idiv1, "idiv")
#undef POPEK_MULDIV

#undef POPEK_PRE
#undef POPEK_POST

}  // namespace popek::x86::arith
