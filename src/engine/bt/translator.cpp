// The translator: Translator::translate drives one Emitter per block:
// Emitter::begin and run (decode the block, plan its flags, emit each
// instruction, then the side exits, the out-of-line slow paths and the
// budget exit). Also the instruction analysis the emitter's files share
// (detail:: in emitter.h). The register convention and how the guest
// flags are kept: emitter.h.
#include "engine/bt/translator.h"

#include <array>
#include <cstddef>
#include <cstring>

#include "base/error.h"
#include "engine/bt/bt.h"
#include "engine/bt/emitter.h"
#include "x86/arith.h"

namespace popek::engine::bt {

namespace {

// Which instructions with flags the SDM calls "undefined" leave all six
// arithmetic flags independent of the flags before them on this host. The
// semantics run the host's own instruction (x86/arith.h), so where the host
// does not keep an undefined flag from before, the instruction defines all of
// them, in both engines alike. Measured once by running the semantics'
// primitives with every flag clear and every flag set on the same operands.
struct HostDefines {
  bool logic = false;      // AND OR XOR TEST (AF)
  bool shift_imm = false;  // SHL SHR SAR by a non-zero count (AF, OF beyond 1)
  bool dshift_imm = false; // SHLD SHRD by a non-zero count
  bool bsf = false;        // BSF BSR (all but ZF)
  bool imul = false;       // IMUL r, r/m (, imm) (SF ZF AF PF)
  bool mul1 = false;       // MUL/IMUL r/m (SF ZF AF PF)
};
HostDefines probe_host_defines() {
  HostDefines h;
  u32 seed = 0x9E3779B9u;
  auto rnd = [&] {
    seed = seed * 1664525u + 1013904223u;
    return seed ^ (seed >> 15);
  };
  // True if fn(flags) gives the same flags for flags = 0 and flags = all six.
  auto same = [](auto fn) {
    u32 lo = 0, hi = ARITH;
    fn(lo);
    fn(hi);
    return (lo & ARITH) == (hi & ARITH);
  };
  auto operand = [&](unsigned k) -> u32 {
    switch (k % 5) {
      case 0: return 0;
      case 1: return rnd() & 0xFF;
      case 2: return 0x80000000u >> (rnd() & 31);
      default: return rnd();
    }
  };
  h.logic = h.shift_imm = h.dshift_imm = h.bsf = h.imul = h.mul1 = true;
  for (unsigned n = 0; n < 400; n++) {
    const u32 a = operand(n), b = operand(n / 5 + 3);
    const u8 c = u8(1 + n % 31);
    h.logic &= same([&](u32& f) { arith::and_<u8>(u8(a), u8(b), f); }) &&
             same([&](u32& f) { arith::or_<u16>(u16(a), u16(b), f); }) &&
             same([&](u32& f) { arith::xor_<u32>(a, b, f); }) &&
             same([&](u32& f) { arith::and_<u32>(a, b, f); }) &&
             same([&](u32& f) { arith::or_<u8>(u8(a), u8(b), f); });
    for (int sz = 0; sz < 3; sz++) {
      auto sh = [&](auto t) {
        using T = decltype(t);
        return same([&](u32& f) { arith::shl_imm<T>(T(a), c, f); }) &&
               same([&](u32& f) { arith::shr_imm<T>(T(a), c, f); }) &&
               same([&](u32& f) { arith::sar_imm<T>(T(a), c, f); });
      };
      h.shift_imm &= sz == 0 ? sh(u8()) : sz == 1 ? sh(u16()) : sh(u32());
    }
    h.dshift_imm &= same([&](u32& f) { arith::shld_imm<u16>(u16(a), u16(b), c, f); }) &&
              same([&](u32& f) { arith::shrd_imm<u16>(u16(a), u16(b), c, f); }) &&
              same([&](u32& f) { arith::shld_imm<u32>(a, b, c, f); }) &&
              same([&](u32& f) { arith::shrd_imm<u32>(a, b, c, f); });
    h.bsf &= same([&](u32& f) { arith::bsf<u32>(a, b, f); }) &&
           same([&](u32& f) { arith::bsr<u16>(u16(a), u16(b), f); });
    h.imul &= same([&](u32& f) { arith::imul2<u32>(a, b, f); }) &&
            same([&](u32& f) { arith::imul2<u16>(u16(a), u16(b), f); });
    h.mul1 &= same([&](u32& f) { u32 lo = a, hi = 0; arith::mul1<u32>(lo, hi, b, f); }) &&
            same([&](u32& f) { u32 lo = a, hi = 0; arith::imul1<u32>(lo, hi, b, f); }) &&
            same([&](u32& f) { u8 lo = u8(a), hi = 0; arith::mul1<u8>(lo, hi, u8(b), f); }) &&
            same([&](u32& f) { u16 lo = u16(a), hi = 0; arith::imul1<u16>(lo, hi, u16(b), f); });
  }
  return h;
}
const HostDefines& host_defines() {
  static const HostDefines h = probe_host_defines();
  return h;
}

}  // namespace

namespace detail {

Native native_of(const Insn& i) {
  Native n;
  const OpInfo& info = i.info();
  const bool byte = info.attrs & B;
  auto set = [&](u8 rm, bool regreg, u8 size = 0) {
    n.ok = true;
    n.rm = rm;
    n.reg_is_reg = regreg;
    n.rm_size = size ? size : (byte ? 1 : i.osize);
  };
  switch (i.op) {
#define ALU(N, RMW)                                                   \
  case Op::N##_EbGb: case Op::N##_EvGv: set(RMW, true); break;        \
  case Op::N##_GbEb: case Op::N##_GvEv: set(RM_R, true); break;       \
  case Op::N##_EbIb: case Op::N##_EvIz: case Op::N##_EbIb82:          \
  case Op::N##_EvIb: set(RMW, false); break;
    ALU(ADD, RM_RW) ALU(OR, RM_RW) ALU(ADC, RM_RW) ALU(SBB, RM_RW) ALU(AND, RM_RW)
    ALU(SUB, RM_RW) ALU(XOR, RM_RW) ALU(CMP, RM_R)
#undef ALU
#define SHIFT(N)                                                      \
  case Op::N##_EbIb: case Op::N##_EvIb: case Op::N##_Eb1: case Op::N##_Ev1: \
  case Op::N##_EbCL: case Op::N##_EvCL: set(RM_RW, false); break;
    SHIFT(ROL) SHIFT(ROR) SHIFT(RCL) SHIFT(RCR) SHIFT(SHL) SHIFT(SHR) SHIFT(SAL) SHIFT(SAR)
#undef SHIFT
    case Op::TEST_EbGb: case Op::TEST_EvGv: set(RM_R, true); break;
    case Op::XCHG_EbGb: case Op::XCHG_EvGv: set(RM_RW, true); break;
    case Op::MOV_EbGb: case Op::MOV_EvGv: set(RM_W, true); break;
    case Op::MOV_GbEb: case Op::MOV_GvEv: set(RM_R, true); break;
    case Op::MOV_EbIb: case Op::MOV_EvIz: set(RM_W, false); break;
    case Op::TEST_EbIb: case Op::TEST_EbIb1: case Op::TEST_EvIz: case Op::TEST_EvIz1:
      set(RM_R, false); break;
    case Op::NOT_Eb: case Op::NEG_Eb: case Op::NOT_Ev: case Op::NEG_Ev:
    case Op::INC_Eb: case Op::DEC_Eb: case Op::INC_Ev: case Op::DEC_Ev:
      set(RM_RW, false); break;
    case Op::MUL_Eb: case Op::IMUL_Eb: case Op::MUL_Ev: case Op::IMUL_Ev: set(RM_R, false); break;
    case Op::IMUL_GvEvIz: case Op::IMUL_GvEvIb: case Op::IMUL_GvEv: set(RM_R, true); break;
    case Op::CMOVCC: set(RM_R, true); break;
    case Op::SETCC: set(RM_W, false, 1); break;
    case Op::BT_EvIb: set(RM_R, false); break;
    case Op::BTS_EvIb: case Op::BTR_EvIb: case Op::BTC_EvIb: set(RM_RW, false); break;
    case Op::BT_EvGv: set(RM_R, true); n.reg_only = true; break;
    case Op::BTS_EvGv: case Op::BTR_EvGv: case Op::BTC_EvGv:
      set(RM_RW, true); n.reg_only = true; break;
    case Op::SHLD_EvGvIb: case Op::SHLD_EvGvCL: case Op::SHRD_EvGvIb: case Op::SHRD_EvGvCL:
      set(RM_RW, true); break;
    case Op::CMPXCHG_EbGb: case Op::CMPXCHG_EvGv: case Op::XADD_EbGb: case Op::XADD_EvGv:
      set(RM_RW, true); break;
    case Op::BSF: case Op::BSR: set(RM_R, true); break;
    case Op::MOVZX_GvEb: case Op::MOVSX_GvEb: set(RM_R, true, 1); break;
    case Op::MOVZX_GvEw: case Op::MOVSX_GvEw: set(RM_R, true, 2); break;
    case Op::CMPXCHG8B: set(RM_RW, false, 8); break;
    default: break;
  }
  return n;
}

// Byte operations whose ModRM.reg register is written.
bool writes_reg8(Op op) {
  switch (op) {
    case Op::MOV_GbEb: case Op::ADD_GbEb: case Op::OR_GbEb: case Op::ADC_GbEb: case Op::SBB_GbEb:
    case Op::AND_GbEb: case Op::SUB_GbEb: case Op::XOR_GbEb: case Op::XCHG_EbGb: case Op::XADD_EbGb:
      return true;
    default:
      return false;
  }
}

// Byte operations with a memory operand and AH..BH in ModRM.reg that the
// staging through r10b handles (CMPXCHG's implicit AL is fine; its reg is a source).
bool can_reencode_hi8(const Insn& i) {
  const ImmKind k = i.info().imm;
  return k == I_NONE || k == I_B || k == I_BS;
}

namespace {

// defines_all_flags by the instruction's kind (the table below is made from it).
bool defines_all_flags_of(const Insn& i) {
  const HostDefines& h = host_defines();
  switch (i.op) {
    case Op::AND_EbGb: case Op::AND_EvGv: case Op::AND_GbEb: case Op::AND_GvEv:
    case Op::AND_ALIb: case Op::AND_eAXIz: case Op::AND_EbIb: case Op::AND_EvIz:
    case Op::AND_EbIb82: case Op::AND_EvIb:
    case Op::OR_EbGb: case Op::OR_EvGv: case Op::OR_GbEb: case Op::OR_GvEv:
    case Op::OR_ALIb: case Op::OR_eAXIz: case Op::OR_EbIb: case Op::OR_EvIz:
    case Op::OR_EbIb82: case Op::OR_EvIb:
    case Op::XOR_EbGb: case Op::XOR_EvGv: case Op::XOR_GbEb: case Op::XOR_GvEv:
    case Op::XOR_ALIb: case Op::XOR_eAXIz: case Op::XOR_EbIb: case Op::XOR_EvIz:
    case Op::XOR_EbIb82: case Op::XOR_EvIb:
    case Op::TEST_EbGb: case Op::TEST_EvGv: case Op::TEST_ALIb: case Op::TEST_eAXIz:
    case Op::TEST_EbIb: case Op::TEST_EbIb1: case Op::TEST_EvIz: case Op::TEST_EvIz1:
      return h.logic;
    case Op::SHL_EbIb: case Op::SHL_EvIb: case Op::SHR_EbIb: case Op::SHR_EvIb:
    case Op::SAL_EbIb: case Op::SAL_EvIb: case Op::SAR_EbIb: case Op::SAR_EvIb:
      return h.shift_imm && (i.imm & 31) != 0;
    case Op::SHL_Eb1: case Op::SHL_Ev1: case Op::SHR_Eb1: case Op::SHR_Ev1:
    case Op::SAL_Eb1: case Op::SAL_Ev1: case Op::SAR_Eb1: case Op::SAR_Ev1:
      return h.shift_imm;
    case Op::SHLD_EvGvIb: case Op::SHRD_EvGvIb:
      return h.dshift_imm && (i.imm & 31) != 0;
    case Op::BSF: case Op::BSR:
      return h.bsf;
    case Op::IMUL_GvEv: case Op::IMUL_GvEvIz: case Op::IMUL_GvEvIb:
      return h.imul;
    case Op::MUL_Eb: case Op::IMUL_Eb: case Op::MUL_Ev: case Op::IMUL_Ev:
      return h.mul1;
    case Op::ADD_EbGb: case Op::ADD_EvGv: case Op::ADD_GbEb: case Op::ADD_GvEv:
    case Op::ADD_ALIb: case Op::ADD_eAXIz: case Op::ADD_EbIb: case Op::ADD_EvIz:
    case Op::ADD_EbIb82: case Op::ADD_EvIb:
    case Op::SUB_EbGb: case Op::SUB_EvGv: case Op::SUB_GbEb: case Op::SUB_GvEv:
    case Op::SUB_ALIb: case Op::SUB_eAXIz: case Op::SUB_EbIb: case Op::SUB_EvIz:
    case Op::SUB_EbIb82: case Op::SUB_EvIb:
    case Op::CMP_EbGb: case Op::CMP_EvGv: case Op::CMP_GbEb: case Op::CMP_GvEv:
    case Op::CMP_ALIb: case Op::CMP_eAXIz: case Op::CMP_EbIb: case Op::CMP_EvIz:
    case Op::CMP_EbIb82: case Op::CMP_EvIb:
    case Op::NEG_Eb: case Op::NEG_Ev:
      return true;
    default:
      return false;
  }
}

// Per Op: 0 never defines all six flags, 1 always, 2 when its count
// (imm & 31) is not 0 — all defines_all_flags_of depends on. The analysis
// asks it many times per instruction.
enum : u8 { kDefNever, kDefAlways, kDefCount };
const std::array<u8, kOpCount>& defines_table() {
  static const std::array<u8, kOpCount> t = [] {
    std::array<u8, kOpCount> r{};
    for (unsigned k = 0; k < kOpCount; k++) {
      Insn i;
      i.op = Op(k);
      i.imm = 1;
      const bool with = defines_all_flags_of(i);
      i.imm = 0;
      const bool without = defines_all_flags_of(i);
      if (without && !with) throw Error("bt: internal error: an op that defines the flags only with a count of 0");
      r[k] = with && without ? kDefAlways : with ? kDefCount : kDefNever;
    }
    return r;
  }();
  return t;
}

}  // namespace

// True if the instruction sets all six arithmetic flags from its operands
// alone: none read, none left as they were (on this host, for those with
// "undefined" flags).
bool defines_all_flags(const Insn& i) {
  const u8 c = defines_table()[unsigned(i.op)];
  return c == kDefAlways || (c == kDefCount && (i.imm & 31) != 0);
}

// True if the instruction's result depends on the guest's arithmetic flags
// before it: it reads one, or writes only some of them (or leaves some undefined).
bool needs_flags(const Insn& i) {
  const OpInfo& info = i.info();
  // One SCAS/CMPS compares and defines all six (a REP one with ECX = 0 keeps them).
  if ((i.op == Op::SCASB || i.op == Op::SCASV || i.op == Op::CMPSB || i.op == Op::CMPSV) &&
      !i.rep())
    return false;
  if (info.flags_read & ARITH) return true;
  if (!(info.flags_written & ARITH)) return false;
  return !defines_all_flags(i);
}

// True if running the instruction may change what a translation assumes
// (segment registers, CPL, DF, CR0): the callout then compares the mode.
bool may_change_mode(const Insn& i) {
  const u32 a = i.info().attrs;
  if (!(a & (SEN | PRV))) return i.op == Op::CLD || i.op == Op::STD;
  switch (i.op) {
    case Op::STI: case Op::CLI: case Op::RDTSC: case Op::RDPMC: case Op::RDMSR: case Op::WRMSR:
    case Op::CPUID: case Op::VERR: case Op::VERW: case Op::LAR: case Op::LSL:
    case Op::IN_ALIb: case Op::IN_eAXIb: case Op::OUT_IbAL: case Op::OUT_IbeAX:
    case Op::IN_ALDX: case Op::IN_eAXDX: case Op::OUT_DXAL: case Op::OUT_DXeAX:
    case Op::INSB: case Op::INSV: case Op::OUTSB: case Op::OUTSV:
    case Op::INVLPG: case Op::SGDT: case Op::SIDT: case Op::SLDT: case Op::STR: case Op::SMSW:
    case Op::LGDT: case Op::LIDT: case Op::LLDT: case Op::LTR: case Op::CLTS:
    case Op::INVD: case Op::WBINVD: case Op::MOV_RdCd: case Op::MOV_RdDd: case Op::MOV_DdRd:
    case Op::PUSHF: case Op::MOV_EwSw:
      return false;
    default:
      return true;
  }
}

// Instructions always run by the semantics (they find the flags in Rt::hf).
bool is_callout_only(const Insn& i) {
  const u32 a = i.info().attrs;
  return (a & (SEN | PRV | IOI | FPU | MMX)) || ((a & STR) && i.rep());
}

}  // namespace detail

void Emitter::begin(Block& b, const u8* page, const Stubs& stubs, const u8* page2, u32 max_insns) {
  max_insns_ = max_insns;
  slows_.clear();
  x87_ools_.clear();
  // References into it are kept while a block is emitted: never reallocate
  // (at most three slow paths per instruction).
  if (slows_.capacity() < size_t(max_insns_) * 3 + 8) slows_.reserve(size_t(max_insns_) * 3 + 8);
  // Likewise the drafts of access sites (slows_ points at them).
  drafts_.clear();
  if (drafts_.capacity() < size_t(max_insns_) * 3 + 8) drafts_.reserve(size_t(max_insns_) * 3 + 8);
  // Only the size: the emitter uses no xbyak labels, and the label manager's
  // reset (lists and maps rebuilt) cost 3 % of a translation.
  resetSize();
  if (pre_.size() < max_insns) pre_.resize(max_insns);
  b_ = &b;
  page_ = page;
  page2_ = page2;
  b.crosses = page2 != nullptr;
  stubs_ = stubs;
  rx_ = cc_.to_rx(cc_.cursor());
  // Emitted in place, in the cache's writable view at its cursor (the
  // caller made sure kMaxBlockCode bytes are free there): no copy after.
  // xbyak writes at top_ (its buffer is otherwise fixed when it is made).
  top_ = bt_.options().emit_in_place ? cc_.cursor() : scratch_;
  user_ = (b.mode & M_CPL) == 3;
  memo_ = bt_.options().memo == BtOptions::Memo::all || (bt_.options().memo == BtOptions::Memo::user && user_);
  fl_ = Fl::parked;
  idx_ = 0;
  prev_callout_ = nullptr;
  sides_.clear();
  rest_fix_.clear();
  lazy_ = false;
  rcp_ = -1;
  last_p_ = -1;
  loop_p_ = -1;
  loop_stash_ = -1;
  loop_body_ = kNone;
}

// Whether a conditional branch may be a side exit rather than end the block.
// User mode only by default: kernel code is mostly run a few times during a boot, and
// longer blocks there cost more translation (+23 % guest instructions
// translated, boot 5-10 % slower) than they save; user programs' hot loops
// gain (the string part 15 %). Translating a block again as a superblock
// once it is hot would serve both.
bool Emitter::side_exit_ok(const Insn& i) const {
  const auto sb = bt_.options().superblocks;
  if (sb == BtOptions::Superblocks::off || (sb == BtOptions::Superblocks::user && !user_)) return false;
  return (i.op == Op::JCC_Jb || i.op == Op::JCC_Jz) && i.osize == 4 && (b_->mode & M_CS_FLAT) &&
         !interp_group(i);
}

void Emitter::run(u32 max_insns) {
  auto& st = bt_.bstats();
  u32 stale1 = kNone, stale2 = kNone;
  if (page2_) {
    // The second page must still be mapped (executable) to pa2: its TLB entry
    // says so, or the dispatcher looks again. The flags are parked.
    const u32 la2 = b_->second_page_la();
    const int entry = tlb_off_ + (user_ ? int(mem::Mmu::kTlbSize * sizeof(mem::TlbEntry)) : 0) +
                      int(((la2 >> 12) & (mem::Mmu::kTlbSize - 1)) * sizeof(mem::TlbEntry));
    cmp(dword[r14 + entry + int(offsetof(mem::TlbEntry, tag_exec))], la2);
    stale1 = jcc32(5);
    cmp(dword[r14 + entry + int(offsetof(mem::TlbEntry, ppn))], u32(b_->pa2 >> 12));
    stale2 = jcc32(5);
  }
  // Decode the block first: the flag liveness below looks ahead.
  u32 eip = b_->eip;
  u32 off = b_->pa & 0xFFF;
  const u64 page_pa = b_->pa & ~u64(0xFFF);
  unsigned n = 0, sides = 0;
  while (n < max_insns) {
    const unsigned avail = 4096 - off;
    Pre& p = pre_[n];
    p.bytes = page_ + off;
    DecodeStatus ds = decode(page_ + off, avail < 15 ? avail : 15, true, &p.i);
    if (ds == DecodeStatus::need_more && n == 0 && page2_) {
      std::memcpy(p.joined, page_ + off, avail);
      std::memcpy(p.joined + avail, page2_, 15 - avail);
      ds = decode(p.joined, 15, true, &p.i);
      p.bytes = p.joined;
    }
    if (ds != DecodeStatus::ok) {
      if (n == 0) {
        // Invalid, too long or crossing the page: the semantics raise the fault
        // (or the dispatcher interprets it) — a one-instruction callout block
        // would need the bytes; leave it to the interpreter.
        b_->n = 0;
        return;
      }
      break;
    }
    p.eip = eip;
    p.off = off;
    n++;
    eip += p.i.len;
    off += p.i.len;
    if (off >= 4096) break;
    if (p.i.info().attrs & CT) {
      // Backward branches (loops: likely taken) end the block; forward ones
      // (likely not) become side exits.
      if (!side_exit_ok(p.i) || i32(p.i.imm) < 0 || sides == kMaxSides || n == max_insns) break;
      sides++;
    }
  }
  n_ = n;
  // Memos pay where an access runs many times between TLB flushes (a miss
  // costs a mispredicted branch and the fill): by default in loops, whose
  // back edge ends the block (--bt-memo all: in every block).
  if (memo_ && bt_.options().memo == BtOptions::Memo::user) {
    const Insn& last = pre_[n - 1].i;
    const u32 end = pre_[n - 1].eip + last.len;
    const bool jump = last.op == Op::JMP_Jb || last.op == Op::JMP_Jz || last.op == Op::JCC_Jb ||
                      last.op == Op::JCC_Jz;
    const u32 target = end + u32(i32(last.imm));
    memo_ = jump && target >= b_->eip && target < end;
  }
  plan_recipes(n);
  plan_loop(n);
  plan_frames(n);
  if (loop_p_ >= 0) mov(byte[r14 + kLoopLazyOff], 0);  // entered from outside
  loop_body_ = here();
  lazy_ = loop_p_ >= 0;
  // Prologue: account for the block's instructions (patched at the end).
  db(0x49); db(0x81); db(0x2E);  // sub qword [r14], imm32
  const size_t count_at = getSize();
  dd(0);
  const u32 budget_exit = jcc32(12);  // jl
  Done d = Done::next;
  if (join_at_.size() < n) {
    join_at_.resize(n);
    join_fl_.resize(n);
    join_rcp_.resize(n);
  }
  while (idx_ < n) {
    const Pre& p = pre_[idx_];
    const Insn& i = p.i;
    // The flags as a recipe end before an instruction that is not a plain
    // one or writes the recipe's operands.
    // (Also before a partial recipe's P: F's slow path takes the flags before
    // it from Rt::hf.)
    if (rcp_ >= 0 && (!rcp_plain(i, rcp_watch_) ||
                      (recipe_role_[idx_] == 1 && recipes_[size_t(recipe_for_[idx_])].partial))) {
      rcp_run();
      save_flags();
    }
    join_at_[idx_] = here();
    join_fl_[idx_] = fl_;
    // (A recipe, or a producer an access after t may make one, must be the
    // same on the way that jumps to t: joins there only where t defines the
    // flags first.)
    join_rcp_[idx_] = rcp_ >= 0 || last_p_ >= 0;
    // A producer of the flags that writes its operand keeps it first if an
    // access may make the flags its recipe.
    unsigned p_reads = 0, p_dest = ~0u;
    const bool producer = !interp_group(i) && loop_producer(i, &p_reads, &p_dest) &&
                          bt_.options().flag_recipes;
    bool p_stashed = false;
    if (producer && p_dest != ~0u && rcp_access_ahead(idx_)) {
      mov(dword[r14 + kRcpStashOff], Reg32(hreg(p_dest)));
      p_stashed = true;
    }
    // Parked flags come back before an instruction that needs them (one
    // that the semantics run, through a callout, finds them in Rt::hf),
    // unless it only writes some of them and what it leaves is dead.
    out_dead_ = partial_output_dead(idx_, n);
    if (out_dead_) st.flag_restores_skipped++;
    // A partial recipe's P needs the flags before it parked (else F goes
    // without the recipe), and then runs on any host flags.
    bool partial_p = false;
    if (recipe_role_[idx_] == 1) {
      const Recipe& r = recipes_[size_t(recipe_for_[idx_])];
      if (r.partial) {
        if (fl_ == Fl::parked) partial_p = true;
        else recipe_role_[r.f] = 0;
      }
    }
    if (fl_ == Fl::parked && needs_flags(i) && !is_callout_only(i) && !out_dead_ && !partial_p) restore_flags();
    use_recipe_ = -1;
    if (int(idx_) == loop_p_ && loop_stash_ >= 0)
      mov(dword[rsp + kLoopStash], Reg32(hreg(unsigned(loop_stash_))));
    if (recipe_role_[idx_] == 1 && recipes_[size_t(recipe_for_[idx_])].stashed) {
      const Recipe& r = recipes_[size_t(recipe_for_[idx_])];
      mov(dword[rsp + kStash], Reg32(hreg(r.dest_is_reg ? i.reg : i.rm)));
    } else if (recipe_role_[idx_] == 2) {
      use_recipe_ = recipe_for_[idx_];
    }
    d = insn(i, p.bytes, p.eip, page_pa | p.off);
    use_recipe_ = -1;
    if (idx_ == loop_w_) lazy_ = false;  // the flags are W's from here on
    if (i.info().flags_written & ARITH) rcp_ = -1;  // (they are the host's now, or parked by a callout)
    if (producer && fl_ == Fl::dirty && (p_dest == ~0u || p_stashed)) {
      last_p_ = int(idx_);
      last_p_watch_ = p_dest == ~0u ? p_reads : p_reads & ~(1u << p_dest);
      last_p_keep_ = p_stashed ? int(p_dest) : -1;
    } else if ((i.info().flags_written & ARITH) || !rcp_plain(i, last_p_watch_)) {
      last_p_ = -1;
    }
    st.guest_insns_translated++;
    idx_++;
    eip = p.eip + i.len;
    if (d == Done::ended) break;
  }
  out_dead_ = false;
  if (d != Done::ended) exit_direct(eip);
  lazy_ = false;
  if (rcp_ >= 0) throw Error("bt: internal error: a flag recipe outlived its block");

  // Side exits: the flags to Rt::hf, the instructions after the branch
  // given back to the budget, then out as any direct exit.
  for (const Side& sd : sides_) {
    bind(sd.fix);
    fl_ = sd.fl;
    unsigned t = sd.idx + 1;
    while (t < idx_ && pre_[t].eip != sd.target) t++;
    // (t defines all the flags first, from registers: nothing before it sees them.)
    const bool quiet_def = t < idx_ && !pre_[t].i.mem && defines_all_flags(pre_[t].i) && quiet_reg_op(pre_[t].i);
    if (t < idx_ && join_ok(sd, t) && (!join_rcp_[t] || quiet_def)) {
      // The instructions skipped go back to the budget; the flags go where
      // the code at t expects them (unless t defines them all first).
      const u32 skip = t - sd.idx - 1;
      if (quiet_def || join_fl_[t] == Fl::parked) {
        if (!quiet_def) save_flags();
        db(0x49); db(0x81); db(0x06); dd(skip);  // add qword [r14], skip
      } else {
        if (join_fl_[t] == Fl::host) save_flags();
        mov(r10, qword[r14]);
        lea(r10, ptr[r10 + int(skip)]);
        mov(qword[r14], r10);
      }
      jmp_back(join_at_[t]);
      st.side_joins++;
      continue;
    }
    if (sd.lazy && fl_ == Fl::parked) materialize();
    save_flags();
    fl_ = Fl::parked;
    add_unrun(sd.idx);
    exit_direct(sd.target);
  }

  // Out-of-line slow paths.
  make_seeds();
  for (Slow& s : slows_) {
    if (s.memo_fix != kNone) memo_miss(s);
    s.at = here();
    if (s.entry_fix != kNone) bind(s.entry_fix);
    if (s.entry_fix2 != kNone) bind(s.entry_fix2);
    if (s.entry_fix3 != kNone) bind(s.entry_fix3);
    // (With a full recipe the flags are P's, whatever Rt::hf holds.)
    if (s.lazy && (s.parked || (s.recipe >= 0 && recipes_[size_t(s.recipe)].partial))) {
      fl_ = Fl::parked;
      materialize();
    }
    if (s.recipe >= 0) emit_recipe(recipes_[size_t(s.recipe)]);
    bool parked = s.parked;
    if (s.rcp >= 0 && s.parked && s.recipe < 0) {
      rcp_ = s.rcp;
      rcp_keep_ = s.rcp_keep;
      rcp_run();  // the flags are the producer's again
      parked = false;
    }
    call_arg(site_arg(s.site), parked);  // the stub saves the flags unless parked
    jmp_back(s.done);
  }
  x87_emit_ools();
  if (page2_) {
    bind(stale1);
    bind(stale2);
    mov(dword[r15 + kEipOff], b_->eip);
    mov(qword[r14 + kReasonOff], u32(kExitNormal));
    jmp_abs(stubs_.exit_common);
  }
  bind(budget_exit);
  db(0x49); db(0x81); db(0x06);  // add qword [r14], imm32
  const size_t count2_at = getSize();
  dd(0);
  if (loop_p_ >= 0) {
    fl_ = Fl::parked;
    materialize();
  }
  mov(dword[r15 + kEipOff], b_->eip);
  mov(qword[r14 + kReasonOff], u32(kExitNormal));
  jmp_abs(stubs_.exit_common);
  for (const Slow& s : slows_)
    if (s.done == kNone) throw Error("bt: internal error: a slow path without its resume point");

  b_->n = idx_;
  b_->guest_bytes = eip - b_->eip;
  u8* code = const_cast<u8*>(getCode());
  std::memcpy(code + count_at, &b_->n, 4);
  std::memcpy(code + count2_at, &b_->n, 4);
  for (auto [at, from] : rest_fix_) {
    const u32 rest = b_->n - from;
    std::memcpy(code + at, &rest, 4);
  }
  b_->code = rx_;
  b_->code_size = u32(getSize());
  for (const Slow& s : slows_)
    if (s.direct_from != kNone) bt_.add_direct_fault(rx_ + s.direct_from, rx_ + s.done, rx_ + s.at);
}

Translator::Translator(Bt& bt, CodeCache& cc, i32 tlb_off)
    : bt_(bt), cc_(cc), tlb_off_(tlb_off), scratch_(kMaxBlockCode) {}

Translator::~Translator() = default;

bool Translator::translate(Block& b, const u8* page, u32 max_insns, const u8* page2) {
  if (cc_.free_bytes() < kMaxBlockCode) return false;
  if (!emitter_) emitter_ = std::make_unique<Emitter>(bt_, cc_, scratch_.data(), kMaxBlockCode, tlb_off_);
  Emitter& e = *emitter_;
  // The links go to links_ while the block is emitted, then to an arena
  // array of just those made (most blocks have one or two of the six).
  b.links = links_;
  b.nlinks = 0;
  e.begin(b, page, stubs_, page2, max_insns);
  e.run(max_insns);
  b.links = nullptr;
  if (b.nlinks) {
    b.links = bt_.new_links(b.nlinks);
    std::memcpy(static_cast<void*>(b.links), links_, b.nlinks * sizeof(Block::Link));
  }
  if (b.n) {
    if (e.getCode() != cc_.cursor()) std::memcpy(cc_.cursor(), e.getCode(), e.getSize());
    cc_.advance(b.code_size);
  }
  return true;
}

}  // namespace popek::engine::bt
