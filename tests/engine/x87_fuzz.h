// x87 instructions for the bt fuzzer (bt_fuzz_test.cpp: X87SequencesAgree...):
// the forms bt runs inline (loads and stores of every memory format,
// arithmetic in register and memory forms, FXCH, the FCOM/FUCOM/FCOMI
// families, FLDCW/FNSTCW/FNSTSW) and, less often, the ones it leaves to the
// semantics between them (FNINIT, FNCLEX, FFREE, FINCSTP/FDECSTP, FCMOVcc,
// FNSTENV/FLDENV, transcendental ones), on operands of every class: values
// from tables of special numbers (±0, denormals, quiet and signalling NaNs,
// infinities, unsupported 80-bit encodings, the extremes) and from random
// memory, which also faults (absent, read-only, code, crossing pages).
// The FPU state each sequence starts with is random too: TOP, which
// registers hold what, the control word (precision, rounding, now and then
// unmasked exceptions), sticky flags.
#pragma once
#include <cstring>
#include <random>
#include <vector>

#include "base/types.h"
#include "x86/cpu_state.h"
#include "x86/sem/x87_host.h"

namespace popek::test::x87fuzz {

// Tables in the data pages (absolute addresses: below kData + 0x12000).
constexpr u32 kTab80 = 0x100000 + 0x9000;  // 80-bit values, 10 bytes apart
constexpr u32 kTab64 = kTab80 + 0x200;     // doubles
constexpr u32 kTab32 = kTab80 + 0x300;     // floats
constexpr u32 kTabInt = kTab80 + 0x380;    // integers (read as 16, 32 or 64 bits)
constexpr u32 kTabCw = kTab80 + 0x400;     // control words
constexpr u32 kScratch = kTab80 + 0x800;   // stores go here (and anywhere else)

struct Raw80 {
  u64 m;
  u16 se;
};
inline const std::vector<Raw80>& values80() {
  static const std::vector<Raw80> v = {
      {0x8000000000000000ull, 0x3FFF},  // 1
      {0xC90FDAA22168C235ull, 0x4000},  // pi
      {0xAAAAAAAAAAAAAAABull, 0x3FFD},  // 1/3 (inexact everywhere)
      {0, 0},                           // +0
      {0, 0x8000},                      // -0
      {1, 0},                           // smallest denormal
      {0x7FFFFFFFFFFFFFFFull, 0x8000},  // largest negative denormal
      {0x8000000000000000ull, 0},       // pseudo-denormal
      {0x8000000000000000ull, 0x7FFF},  // +inf
      {0x8000000000000000ull, 0xFFFF},  // -inf
      {0xC000000000000000ull, 0x7FFF},  // QNaN
      {0xC000000000000001ull, 0xFFFF},  // -QNaN with payload
      {0xA000000000000000ull, 0x7FFF},  // SNaN
      {0x8000000000000001ull, 0xFFFF},  // -SNaN
      {0x4000000000000000ull, 0x4000},  // unnormal
      {0, 0x7FFF},                      // pseudo-infinity
      {0xFFFFFFFFFFFFFFFFull, 0x7FFE},  // largest
      {0x8000000000000000ull, 0x0001},  // smallest normal
      {0x8000000000000000ull, 0x43FE},  // 2^1023: doubles overflow past it
      {0x8000000000000000ull, 0x3C01},  // 2^-1022: doubles' smallest normal
      {0xFFFFFFFFFFFFFFFFull, 0x3F7E},  // near float's denormal range
      {0xDF0A1B2C3D4E5F60ull, 0xC01E},  // about -2^31
      {0x8000000000000000ull, 0x401E},  // 2^31: FIST m32 overflows
      {0xFFFFFFFFFFFF0800ull, 0x403D},  // about 2^62
      {0x9ABCDEF012345678ull, 0x3FF0},
      {0xF000000000000000ull, 0xC00A},  // -1920
      {0xB504F333F9DE6484ull, 0x3FFF},  // sqrt 2
      {0x8000000000000000ull, 0xBFFE},  // -0.5 (FRNDINT ties)
  };
  return v;
}
inline const std::vector<u64>& values64() {
  static const std::vector<u64> v = {
      0x3FF0000000000000ull, 0x400921FB54442D18ull, 0, 0x8000000000000000ull, 1, 0x800FFFFFFFFFFFFFull,
      0x7FF0000000000000ull, 0xFFF0000000000000ull, 0x7FF8000000000000ull, 0x7FF4000000000000ull,
      0xFFF0000000000001ull, 0x7FEFFFFFFFFFFFFFull, 0x0010000000000000ull, 0x3FD5555555555555ull,
      0xC1E0000000000000ull, 0x41E0000000000000ull, 0xBFE0000000000000ull, 0x4330000000000001ull,
  };
  return v;
}
inline const std::vector<u32>& values32() {
  static const std::vector<u32> v = {
      0x3F800000, 0x40490FDB, 0, 0x80000000u, 1, 0x807FFFFFu, 0x7F800000, 0xFF800000u,
      0x7FC00000, 0x7FA00000, 0xFF800001u, 0x7F7FFFFF, 0x00800000, 0x3EAAAAAB, 0xCF000000u, 0x4F000000,
  };
  return v;
}
inline const std::vector<u64>& integers() {
  static const std::vector<u64> v = {
      0, 1, ~u64(0), 0x7FFF, 0x8000, 0x7FFFFFFF, 0x80000000ull, 0x7FFFFFFFFFFFFFFFull,
      0x8000000000000000ull, 0x123456789ABCDEFull, 12345, 0xFFFFFFFFFFFF8000ull,
  };
  return v;
}
// Precision and rounding of every kind; mostly all exceptions masked, now
// and then one or more unmasked.
inline const std::vector<u16>& control_words() {
  static const std::vector<u16> v = {
      0x037F, 0x037F, 0x037F, 0x027F, 0x007F, 0x0F7F, 0x077F, 0x0B7F, 0x0C7F, 0x047F, 0x087F,
      0x037F, 0x027F, 0x0F7F, 0x037E, 0x037B, 0x0377, 0x036F, 0x035F, 0x033F, 0x0340, 0x1F7F,
  };
  return v;
}

// Writes the tables (after the data pages' random contents).
template <typename WriteBytes>
void write_tables(WriteBytes write) {
  std::vector<u8> t80;
  for (const Raw80& v : values80()) {
    u8 b[10];
    std::memcpy(b, &v.m, 8);
    std::memcpy(b + 8, &v.se, 2);
    t80.insert(t80.end(), b, b + 10);
  }
  write(kTab80, t80.data(), t80.size());
  write(kTab64, values64().data(), values64().size() * 8);
  write(kTab32, values32().data(), values32().size() * 4);
  write(kTabInt, integers().data(), integers().size() * 8);
  write(kTabCw, control_words().data(), control_words().size() * 2);
}

// A random FPU state: TOP, registers (empty or a table value or random
// bits, tagged by class as FNSAVE would), the control word, sticky flags
// (ES/B as they follow from them), condition codes, pointers.
// `friendly`: all exceptions masked and at most 4 registers in use, so
// that most instructions take bt's inline path.
inline void random_state(std::mt19937& rng, x86::FpuState& f, bool friendly = false) {
  auto r = [&](u32 n) { return std::uniform_int_distribution<u32>(0, n - 1)(rng); };
  const auto& cws = control_words();
  f.fcw = u16((cws[r(friendly ? 14 : u32(cws.size()))] & 0x1F3F) | 0x40);  // (the first 14 mask all)
  if (r(3) == 0) f.fcw = 0x037F;
  f.fsw = u16(r(8) << 11);
  if (r(2)) f.fsw |= u16(r(64));              // sticky flags
  f.fsw |= u16(r(16) & 0x7) << 8 | u16(r(2)) << 14;  // C0-C3
  const unsigned top = f.top();
  const unsigned used = r(friendly ? 5 : 9);  // registers from ST(0) on that hold something
  u16 ftw = 0;
  for (unsigned k = 0; k < 8; k++) {
    const unsigned p = (top + k) & 7;
    u8 b[10];
    if (r(2)) {
      const Raw80& v = values80()[r(u32(values80().size()))];
      std::memcpy(b, &v.m, 8);
      std::memcpy(b + 8, &v.se, 2);
    } else {
      for (auto& c : b) c = u8(r(256));
      if (r(2)) b[7] |= 0x80;  // mostly normal
    }
    std::memset(&f.regs[p], 0, sizeof f.regs[p]);
    std::memcpy(&f.regs[p], b, 10);
    const unsigned tag = k < used ? x86::x87host::tag_of(b) : 3;
    ftw = u16(ftw | (tag << (2 * p)));
  }
  f.ftw = ftw;
  if (f.fsw & ~f.fcw & 0x3F) f.fsw |= 0x8080;
  else f.fsw &= u16(~0x8080);
  f.fop = u16(r(0x800));
  f.fip = u32(rng());
  f.fdp = u32(rng());
  f.fcs = u16(r(0x10000));
  f.fds = u16(r(0x10000));
}

// One x87 instruction (or a short idiom) through the generator `g`
// (r(n), b(), d(), modrm(reg, mem_only)).
template <typename G>
void insn(G& g) {
  auto tab = [&](u8 op, unsigned ext, u32 base, u32 stride, u32 count) {
    g.b(op);
    g.b(u8(0x05 | (ext << 3)));
    g.d(base + stride * g.r(count));
  };
  const u32 n80 = u32(values80().size()), n64 = u32(values64().size()), n32 = u32(values32().size()),
            nint = u32(integers().size());
  switch (g.r(24)) {
    case 0: case 1: case 2:  // loads from the tables
      switch (g.r(6)) {
        case 0: tab(0xDB, 5, kTab80, 10, n80); break;  // fld m80
        case 1: case 2: tab(0xDD, 0, kTab64, 8, n64); break;  // fld m64
        case 3: tab(0xD9, 0, kTab32, 4, n32); break;   // fld m32
        case 4: tab(g.r(2) ? 0xDB : 0xDF, 0, kTabInt, 8, nint); break;  // fild m32 / m16
        default: tab(0xDF, 5, kTabInt, 8, nint); break;  // fild m64
      }
      break;
    case 3: {  // loads from anywhere
      static const u8 ops[][2] = {{0xD9, 0}, {0xDD, 0}, {0xDB, 5}, {0xDF, 0}, {0xDB, 0}, {0xDF, 5}};
      const auto& o = ops[g.r(6)];
      g.b(o[0]);
      g.modrm(o[1], true);
      break;
    }
    case 4: case 5: {  // stores: to the scratch area or anywhere
      static const u8 ops[][2] = {{0xD9, 2}, {0xD9, 3}, {0xDD, 2}, {0xDD, 3}, {0xDB, 7}, {0xDF, 2},
                                  {0xDF, 3}, {0xDB, 2}, {0xDB, 3}, {0xDF, 7}};
      const auto& o = ops[g.r(10)];
      g.b(o[0]);
      if (g.r(2)) {
        g.b(u8(0x05 | (o[1] << 3)));
        g.d(kScratch + g.r(0x100));
      } else {
        g.modrm(o[1], true);
      }
      break;
    }
    case 6: case 7: {  // arithmetic with a memory operand (table or anywhere)
      static const u8 ops[] = {0xD8, 0xDC, 0xDA, 0xDE};
      const u8 op = ops[g.r(4)];
      const unsigned ext = g.r(8);
      if (g.r(3)) {
        if (op == 0xD8) tab(op, ext, kTab32, 4, n32);
        else if (op == 0xDC) tab(op, ext, kTab64, 8, n64);
        else tab(op, ext, kTabInt, 8, nint);
      } else {
        g.b(op);
        g.modrm(ext, true);
      }
      break;
    }
    case 8: case 9: case 10: case 11: {  // arithmetic and compares, register forms
      static const u8 ops[] = {0xD8, 0xDC, 0xDE, 0xD8, 0xDC, 0xDE, 0xDD, 0xDB, 0xDF};
      const u8 op = ops[g.r(9)];
      if (op == 0xDD) g.b(op), g.b(u8(0xD0 + g.r(32)));          // fst/fstp/fucom/fucomp st(i)
      else if (op == 0xDB || op == 0xDF) g.b(op), g.b(u8(0xE8 + g.r(16)));  // f(u)comi(p)
      else g.b(op), g.b(u8(0xC0 + g.r(64)));
      break;
    }
    case 12: case 13: g.b(0xD9); g.b(u8(0xC0 + g.r(16))); break;  // fld st(i), fxch
    case 14: {  // one-operand, constants, transcendental (F2XM1 FYL2X FPATAN FPREM1 FPREM FYL2XP1 FSCALE FSIN FCOS)
      static const u8 ops[] = {0xE0, 0xE1, 0xE4, 0xE5, 0xE8, 0xE9, 0xEA, 0xEB, 0xEC, 0xED, 0xEE, 0xFA, 0xFC,
                               0xF0, 0xF1, 0xF3, 0xF5, 0xF8, 0xF9, 0xFD, 0xFE, 0xFF};
      g.b(0xD9);
      g.b(ops[g.r(sizeof ops)]);
      break;
    }
    case 15:
      if (g.r(2)) { g.b(0xDE); g.b(0xD9); }  // fcompp
      else { g.b(0xDA); g.b(0xE9); }         // fucompp
      break;
    case 16: {  // control words and status
      switch (g.r(6)) {
        case 0: case 1: tab(0xD9, 5, kTabCw, 2, u32(control_words().size())); break;  // fldcw
        case 2: g.b(0xD9); g.modrm(5, true); break;                                     // fldcw anywhere
        case 3: g.b(0xD9); g.modrm(7, true); break;                                     // fnstcw
        case 4: g.b(0xDF); g.b(0xE0); break;                                            // fnstsw ax
        default: g.b(0xDD); g.modrm(7, true); break;                                    // fnstsw m16
      }
      break;
    }
    case 17: {  // what the semantics keep: state changes between the inline ones
      switch (g.r(10)) {
        case 0: g.b(0xDB); g.b(0xE2); break;                   // fnclex
        case 1: g.b(0xDB); g.b(0xE3); break;                   // fninit
        case 2: g.b(0xDD); g.b(u8(0xC0 + g.r(8))); break;      // ffree
        case 3: g.b(0xD9); g.b(g.r(2) ? 0xF6 : 0xF7); break;  // fdecstp / fincstp
        case 4: g.b(u8(0xDA + g.r(2))); g.b(u8(0xC0 + g.r(32))); break;  // fcmovcc
        case 5: g.b(0x9B); break;                              // fwait
        case 6: g.b(0xD9); g.b(u8(0xF0 + g.r(6))); break;      // f2xm1 fyl2x fptan fpatan fxtract fprem1
        case 7: g.b(0xD9); g.b(u8(0xF8 + g.r(8) % 8)); break;  // fprem .. fcos
        case 8: {  // fnstenv then fldenv of the same bytes (maybe changed)
          g.b(0xD9); g.b(0x35); g.d(kScratch + 0x200);
          if (g.r(2)) { g.b(0xC6); g.b(0x05); g.d(kScratch + 0x200 + g.r(28)); g.b(u8(g.r(256))); }
          g.b(0xD9); g.b(0x25); g.d(kScratch + 0x200);
          break;
        }
        default: g.b(0xDF); g.b(u8(0xC0 + g.r(8))); break;     // ffreep
      }
      break;
    }
    default: {  // compiled code's idioms
      switch (g.r(4)) {
        case 0:  // fld m64 ; fmul m64 ; faddp ; fstp m64
          tab(0xDD, 0, kTab64, 8, n64);
          tab(0xDC, 1, kTab64, 8, n64);
          g.b(0xDE); g.b(0xC1);
          g.b(0xDD); g.b(0x1D); g.d(kScratch + 8 * g.r(16));
          break;
        case 1: {  // (int) x: fnstcw ; or ah, 0xC via memory ; fldcw ; fistp ; fldcw
          g.b(0xD9); g.b(0x3D); g.d(kScratch + 0x100);  // fnstcw [a]
          g.b(0x66); g.b(0x81); g.b(0x0D); g.d(kScratch + 0x100); g.b(0x00); g.b(0x0C);  // or word [a], 0xC00
          g.b(0xD9); g.b(0x2D); g.d(kScratch + 0x100);  // fldcw [a]
          g.b(0xDB); g.b(0x1D); g.d(kScratch + 0x108);  // fistp dword [b]
          g.b(0x66); g.b(0x81); g.b(0x35); g.d(kScratch + 0x100); g.b(0x00); g.b(0x0C);  // xor: back
          g.b(0xD9); g.b(0x2D); g.d(kScratch + 0x100);  // fldcw [a]
          break;
        }
        case 2:  // fucomip st(1) ; fstp st(0) ; jcc over
          g.b(0xDF); g.b(0xE9);
          g.b(0xDD); g.b(0xD8);
          g.b(u8(0x70 + g.r(16))); g.b(2); g.b(0xB0); g.b(u8(g.r(256)));
          break;
        default:  // fcomp m64 ; fnstsw ax ; sahf / test ah
          tab(0xDC, 3, kTab64, 8, n64);
          g.b(0xDF); g.b(0xE0);
          if (g.r(2)) g.b(0x9E);
          else { g.b(0xF6); g.b(0xC4); g.b(u8(1u << g.r(8))); }
          break;
      }
      break;
    }
  }
}

}  // namespace popek::test::x87fuzz
