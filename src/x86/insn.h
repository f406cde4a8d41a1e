// The decoded instruction and the instruction table's C++ view.
#pragma once
#include "base/types.h"
#include "x86/cpu_state.h"

namespace popek::x86 {

// Attributes (see opcodes.def).
enum : u32 {
  M = 1u << 0, B = 1u << 1, LK = 1u << 2, MO = 1u << 3, PRV = 1u << 4, SEN = 1u << 5,
  CT = 1u << 6, IOI = 1u << 7, STR = 1u << 8, FPU = 1u << 9, W16 = 1u << 10, RO = 1u << 11,
  MMX = 1u << 12,
};
enum ImmKind : u8 { I_NONE, I_B, I_BS, I_W, I_Z, I_AP, I_O, I_JB, I_JZ, I_WB };

// Flag sets for the table (EFLAGS bit positions).
inline constexpr u16 CF_ = CF, PF_ = PF, AF_ = AF, ZF_ = ZF, SF_ = SF, OF_ = OF;
inline constexpr u16 ARITH = CF | PF | AF | ZF | SF | OF;
inline constexpr u16 OSZAP = PF | AF | ZF | SF | OF;
inline constexpr u16 SZAPC = CF | PF | AF | ZF | SF;
inline constexpr u16 ALLFLAGS = ARITH;

// Group selectors: kind in bits 4..5, reg in 0..2, rm in 8..10.
inline constexpr u16 NE = 0xFFFF;
constexpr u16 G(unsigned r) { return u16(r); }
constexpr u16 GM(unsigned r) { return u16(r | 0x10); }
constexpr u16 GR(unsigned r) { return u16(r | 0x20); }
constexpr u16 GRR(unsigned r, unsigned rm) { return u16(r | 0x30 | (rm << 8)); }

enum class Op : u16 {
#define X(name, ...) name,
#include "x86/opcodes.def"
#undef X
  INVALID,
  COUNT
};
inline constexpr unsigned kOpCount = unsigned(Op::COUNT);

struct OpInfo {
  const char* name;
  u8 map, opcode, count;
  u16 ext;
  u32 attrs;
  ImmKind imm;
  u16 flags_read, flags_written;
  const char* mnemonic;
};
// Per Op (decoder.cpp); inline: the translator's analysis asks it often.
extern const OpInfo kOpInfo[];
inline const OpInfo& op_info(Op op) { return kOpInfo[unsigned(op)]; }

enum Prefix : u8 { P_LOCK = 1, P_REP = 2, P_REPNE = 4, P_OPSIZE = 8, P_ADSIZE = 16, P_SEG = 32 };
inline constexpr u8 kNoReg = 0xFF;

struct Insn {
  Op op = Op::INVALID;
  u8 len = 0;
  u8 map = 0, opcode = 0;  // the (last) opcode byte: Jcc/SETcc/CMOVcc conditions, reg-in-opcode
  u8 osize = 4;            // operand size in bytes: 1, 2 or 4
  u8 asize = 4;            // address size: 2 or 4
  u8 prefixes = 0;
  u8 seg = DS;             // segment of the memory operand (default or override)
  u8 modrm = 0;
  bool mem = false;        // ModRM names memory
  u8 reg = 0;              // ModRM.reg
  u8 rm = 0;               // ModRM.rm (register forms)
  u8 base = kNoReg, index = kNoReg, scale = 0;
  u32 disp = 0;
  u32 imm = 0;             // immediate (sign-extended where the form says so)
  u16 imm2 = 0;            // far pointer selector; ENTER nesting level
  const OpInfo& info() const { return op_info(op); }
  bool rep() const { return prefixes & (P_REP | P_REPNE); }
};

enum class DecodeStatus : u8 { ok, need_more, too_long, invalid };

// Decodes one instruction from `bytes` (`avail` valid bytes; the caller supplies
// at most 15 and never bytes beyond a page it has not translated). `code32` is CS.D.
// On need_more, the caller supplies more bytes (from the next page) and retries.
// invalid: an opcode missing from the table or a form it forbids (#UD);
// too_long: more than 15 bytes (#GP(0)).
DecodeStatus decode(const u8* bytes, unsigned avail, bool code32, Insn* out);

}  // namespace popek::x86
