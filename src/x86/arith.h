// Arithmetic with exact x86 flags. The host is an x86-64 CPU that executes the
// same 8/16/32-bit arithmetic, so each primitive runs the very instruction on
// the host and takes the flags it produced (LAHF + SETO: no stack use, no red
// zone hazard). This is the one place that decides "undefined" flags: popek
// gives the guest what the host CPU computes, which is what current Intel/AMD
// CPUs do and what the binary translator (which runs guest arithmetic on host
// flags) produces too, so the engines agree by construction.
#pragma once
#include "base/types.h"
#include "x86/cpu_state.h"

namespace popek::x86::arith {

// Host flags captured as EFLAGS bits (SF ZF AF PF CF from LAHF, OF from SETO).
inline u32 host_flags(u16 ax) {
  return u32((ax >> 8) & (SF | ZF | AF | PF | CF)) | ((ax & 0xFF) ? OF : 0u);
}

#define POPEK_BINOP(fn, insn)                                                   \
  template <typename T>                                                        \
  inline T fn(T a, T b, u32& fl) {                                             \
    u16 ax;                                                                    \
    asm(insn " %[b], %[a]\n\tlahf\n\tseto %%al"                                \
        : [a] "+r"(a), "=&a"(ax)                                               \
        : [b] "r"(b)                                                           \
        : "cc");                                                               \
    fl = (fl & ~FLAGS_ARITH) | host_flags(ax);                                 \
    return a;                                                                  \
  }
POPEK_BINOP(add, "add")
POPEK_BINOP(sub, "sub")
POPEK_BINOP(and_, "and")
POPEK_BINOP(or_, "or")
POPEK_BINOP(xor_, "xor")
#undef POPEK_BINOP

// ADC/SBB take the guest's carry in.
#define POPEK_CARRYOP(fn, insn)                                                 \
  template <typename T>                                                        \
  inline T fn(T a, T b, u32& fl) {                                             \
    u16 ax;                                                                    \
    u32 cin = fl & CF;                                                         \
    asm("bt $0, %k[c]\n\t" insn " %[b], %[a]\n\tlahf\n\tseto %%al"             \
        : [a] "+r"(a), "=&a"(ax)                                               \
        : [b] "r"(b), [c] "r"(cin)                                             \
        : "cc");                                                               \
    fl = (fl & ~FLAGS_ARITH) | host_flags(ax);                                 \
    return a;                                                                  \
  }
POPEK_CARRYOP(adc, "adc")
POPEK_CARRYOP(sbb, "sbb")
#undef POPEK_CARRYOP

#define POPEK_UNOP(fn, insn, mask)                                              \
  template <typename T>                                                        \
  inline T fn(T a, u32& fl) {                                                  \
    u16 ax;                                                                    \
    asm(insn " %[a]\n\tlahf\n\tseto %%al" : [a] "+r"(a), "=&a"(ax) : : "cc");  \
    fl = (fl & ~(mask)) | (host_flags(ax) & (mask));                           \
    return a;                                                                  \
  }
POPEK_UNOP(inc, "inc", FLAGS_ARITH & ~CF)
POPEK_UNOP(dec, "dec", FLAGS_ARITH & ~CF)
POPEK_UNOP(neg, "neg", FLAGS_ARITH)
#undef POPEK_UNOP

// Shifts and rotates by a count already read from CL or the immediate (the
// host masks it exactly as the guest CPU does). A masked count of zero leaves
// the flags alone, as on hardware; rotates change only CF and OF.
#define POPEK_SHIFT(fn, insn, mask, pre)                                        \
  template <typename T>                                                        \
  inline T fn(T a, u8 count, u32& fl) {                                        \
    if ((count & 31) == 0) return a;                                           \
    u16 ax;                                                                    \
    u32 cin = fl & CF;                                                         \
    asm(pre insn " %%cl, %[a]\n\tlahf\n\tseto %%al"                            \
        : [a] "+r"(a), "=&a"(ax)                                               \
        : "c"(count), [c] "r"(cin)                                             \
        : "cc");                                                               \
    fl = (fl & ~(mask)) | (host_flags(ax) & (mask));                           \
    return a;                                                                  \
  }
POPEK_SHIFT(shl, "shl", FLAGS_ARITH, "")
POPEK_SHIFT(shr, "shr", FLAGS_ARITH, "")
POPEK_SHIFT(sar, "sar", FLAGS_ARITH, "")
POPEK_SHIFT(rol, "rol", CF | OF, "")
POPEK_SHIFT(ror, "ror", CF | OF, "")
POPEK_SHIFT(rcl_, "rcl", CF | OF, "bt $0, %k[c]\n\t")
POPEK_SHIFT(rcr_, "rcr", CF | OF, "bt $0, %k[c]\n\t")
// RCL/RCR of 8/16-bit operands rotate through 9/17 bits: a count that is a
// multiple of that leaves everything, OF included, as it was.
template <typename T>
inline T rcl(T a, u8 count, u32& fl) {
  if (sizeof(T) < 4 && (count & 31) % (sizeof(T) * 8 + 1) == 0) return a;
  return rcl_(a, count, fl);
}
template <typename T>
inline T rcr(T a, u8 count, u32& fl) {
  if (sizeof(T) < 4 && (count & 31) % (sizeof(T) * 8 + 1) == 0) return a;
  return rcr_(a, count, fl);
}
#undef POPEK_SHIFT

// SHLD/SHRD (16/32-bit only).
#define POPEK_DSHIFT(fn, insn)                                                  \
  template <typename T>                                                        \
  inline T fn(T a, T b, u8 count, u32& fl) {                                   \
    if ((count & 31) == 0) return a;                                           \
    u16 ax;                                                                    \
    asm(insn " %%cl, %[b], %[a]\n\tlahf\n\tseto %%al"                          \
        : [a] "+r"(a), "=&a"(ax)                                               \
        : [b] "r"(b), "c"(count)                                               \
        : "cc");                                                               \
    fl = (fl & ~FLAGS_ARITH) | host_flags(ax);                                 \
    return a;                                                                  \
  }
POPEK_DSHIFT(shld, "shld")
POPEK_DSHIFT(shrd, "shrd")
#undef POPEK_DSHIFT

// BT/BTS/BTR/BTC on a value with the bit offset already reduced modulo its size.
#define POPEK_BITOP(fn, insn)                                                   \
  template <typename T>                                                        \
  inline T fn(T a, T bitno, u32& fl) {                                         \
    u16 ax;                                                                    \
    asm(insn " %[b], %[a]\n\tlahf\n\tseto %%al"                                \
        : [a] "+r"(a), "=&a"(ax)                                               \
        : [b] "r"(bitno)                                                       \
        : "cc");                                                               \
    fl = (fl & ~FLAGS_ARITH) | host_flags(ax);                                 \
    return a;                                                                  \
  }
POPEK_BITOP(bt, "bt")
POPEK_BITOP(bts, "bts")
POPEK_BITOP(btr, "btr")
POPEK_BITOP(btc, "btc")
#undef POPEK_BITOP

// BSF/BSR: the destination keeps its old value for a zero source.
#define POPEK_BSCAN(fn, insn)                                                   \
  template <typename T>                                                        \
  inline T fn(T dst, T src, u32& fl) {                                         \
    u16 ax;                                                                    \
    asm(insn " %[s], %[d]\n\tlahf\n\tseto %%al"                                \
        : [d] "+r"(dst), "=&a"(ax)                                             \
        : [s] "r"(src)                                                         \
        : "cc");                                                               \
    fl = (fl & ~FLAGS_ARITH) | host_flags(ax);                                 \
    return dst;                                                                \
  }
POPEK_BSCAN(bsf, "bsf")
POPEK_BSCAN(bsr, "bsr")
#undef POPEK_BSCAN

// One-operand MUL/IMUL/DIV/IDIV: accumulator pair in/out as (hi:lo), the
// x86 register pair AH:AL, DX:AX or EDX:EAX. DIV/IDIV must be checked for #DE by
// the caller first (the host would trap).
#define POPEK_MULDIV(fn, insn)                                                   \
  template <typename T>                                                         \
  inline void fn(T& lo, T& hi, T b, u32& fl) {                                  \
    u64 rax, rdx = hi, out;                                                     \
    u16 ax;                                                                     \
    if constexpr (sizeof(T) == 1) {                                             \
      rax = u64(lo) | (u64(hi) << 8);                                           \
      asm(insn "b %b[b]\n\tmov %%rax, %[o]\n\tlahf\n\tseto %%al"                \
          : "+a"(rax), [o] "=&r"(out) : [b] "q"(b) : "cc");                     \
      lo = T(out);                                                              \
      hi = T(out >> 8);                                                         \
    } else if constexpr (sizeof(T) == 2) {                                      \
      rax = lo;                                                                 \
      asm(insn "w %w[b]\n\tmov %%rax, %[o]\n\tlahf\n\tseto %%al"                \
          : "+a"(rax), "+d"(rdx), [o] "=&r"(out) : [b] "r"(b) : "cc");          \
      lo = T(out);                                                              \
      hi = T(rdx);                                                              \
    } else {                                                                    \
      rax = lo;                                                                 \
      asm(insn "l %k[b]\n\tmov %%rax, %[o]\n\tlahf\n\tseto %%al"                \
          : "+a"(rax), "+d"(rdx), [o] "=&r"(out) : [b] "r"(b) : "cc");          \
      lo = T(out);                                                              \
      hi = T(rdx);                                                              \
    }                                                                           \
    ax = u16(rax);                                                              \
    fl = (fl & ~FLAGS_ARITH) | host_flags(ax);                                  \
  }
POPEK_MULDIV(mul1, "mul")
POPEK_MULDIV(imul1, "imul")
POPEK_MULDIV(div1, "div")
POPEK_MULDIV(idiv1, "idiv")
#undef POPEK_MULDIV

// Two/three-operand IMUL (16/32-bit).
template <typename T>
inline T imul2(T a, T b, u32& fl) {
  u16 ax;
  asm("imul %[b], %[a]\n\tlahf\n\tseto %%al" : [a] "+r"(a), "=&a"(ax) : [b] "r"(b) : "cc");
  fl = (fl & ~FLAGS_ARITH) | host_flags(ax);
  return a;
}

// XADD / CMPXCHG compare step use sub/add above; parity etc. come with them.

}  // namespace popek::x86::arith
