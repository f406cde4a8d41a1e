// Runs one x87 instruction on the host's x87 unit (the same 80-bit FPU the
// guest sees), so rounding, precision control, NaN propagation, denormal and
// unsupported-encoding handling, FPREM's partial remainder, FXAM classes and the
// transcendental results are the hardware's own.
//
// The caller builds a host FNSAVE image (108-byte 32-bit protected-mode layout,
// which is what FNSAVE/FRSTOR use in 64-bit mode) from the guest state, runs the
// instruction between FRSTOR and FNSAVE, and reads the resulting image back.
// The image may unmask exceptions: an unmasked exception only becomes pending
// (FSW.ES), and nothing after the instruction is a waiting x87 instruction
// before FNSAVE, which does not wait and reinitialises the host FPU. The host's
// own control word is restored afterwards, so no host exception state survives
// the call. The caller must not load an image with ES already set.
#pragma once
#include <cstring>

#include "base/types.h"

namespace popek::x86::x87host {

struct Image {
  u32 cw, sw, tw, fip, fcs_fop, fdp, fds;
  u8 st[8][10];  // st(0) .. st(7)
};
static_assert(sizeof(Image) == 108);

struct Ctx {
  Image img;
  u64 flags_in = 0;   // EFLAGS CF/PF/ZF given to the host instruction (FCMOVcc)
  u64 flags_out = 0;  // host RFLAGS after the instruction (FCOMI family)
  alignas(16) u8 mem[16] = {};  // the memory operand, addressed as [rax]
};

// Executes the instruction `b0 b1` (b0 in D8..DF). For register forms b1 is the
// guest's ModRM (mod == 3); for memory forms b1 = reg << 3 and the operand is
// ctx.mem. The caller guarantees the encoding is a valid x87 instruction.
void exec(Ctx& ctx, u8 b0, u8 b1);

// Classification of an 80-bit value (bytes 0..7 significand, 8..9 sign/exponent).
inline u64 mant(const u8* p) { u64 m; std::memcpy(&m, p, 8); return m; }
inline u16 sexp(const u8* p) { u16 e; std::memcpy(&e, p + 8, 2); return e; }
// Tag of a non-empty register: 0 valid, 1 zero, 2 special (NaN, infinity,
// denormal, pseudo-denormal, unnormal and the other unsupported encodings).
inline unsigned tag_of(const u8* p) {
  const u16 e = sexp(p) & 0x7FFF;
  const u64 m = mant(p);
  if (e == 0x7FFF) return 2;
  if (e == 0) return m == 0 ? 1 : 2;
  return (m >> 63) ? 0 : 2;
}

}  // namespace popek::x86::x87host
