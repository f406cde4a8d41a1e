// The translator. Register convention inside generated code:
//   guest EAX ECX EDX EBX ESP EBP ESI EDI -> host eax ecx edx ebx r12d ebp esi edi
//   r13 = guest RAM + kR13Bias (direct accesses; its low bits are constants of the TLB check), r14 = bt::Rt*, r15 = CpuState*
//   r8-r11 temporaries; host RFLAGS hold the guest's OSZAPC; DF is always clear.
// Guest flags are saved into Rt::hf (LAHF/SETO image) at block exits and around
// callouts. A block starts with them "parked" there: the host flags are free
// (memory operands use a short compare-and-branch TLB check) until the first
// instruction that reads or partly writes them restores them, or one that
// defines all six puts the guest's flags in the host's again.
//
// Ordinary instructions are re-encoded for the host with their registers
// mapped and their memory operand replaced by [r8], which holds the host
// address found by an inline soft-TLB lookup that leaves the flags alone. A
// miss calls the semantics for the whole instruction (nothing has changed yet,
// so faults are precise), which also refills the TLB.
#include "engine/bt/translator.h"

#include <xbyak/xbyak.h>

#include <cstddef>
#include <cstring>
#include <deque>

#include "base/error.h"
#include "engine/bt/bt.h"
#include "x86/arith.h"

namespace popek::engine::bt {

using namespace popek::x86;
using namespace Xbyak;
using namespace Xbyak::util;

namespace {

constexpr int kGprOff = int(offsetof(CpuState, gpr));
constexpr int kEipOff = int(offsetof(CpuState, eip));
constexpr int kSegOff = int(offsetof(CpuState, seg));
constexpr int kBaseOff = int(offsetof(Segment, base));
constexpr int kSelOff = int(offsetof(Segment, sel));
constexpr int kEflagsOff = int(offsetof(CpuState, eflags));
constexpr int kIntrLineOff = int(offsetof(CpuState, intr_line));
// EFLAGS bits POPF can write (outside virtual-8086 mode, at CPL 0).
constexpr u32 kFlagsWritable = CF | PF | AF | ZF | SF | TF | IF | DF | OF | IOPL | NT | AC | ID;
constexpr int kHfOff = int(offsetof(Rt, hf));
constexpr int kLoopLazyOff = int(offsetof(Rt, loop_lazy));
constexpr int kRcpStashOff = int(offsetof(Rt, rcp_stash));
constexpr int kReasonOff = int(offsetof(Rt, reason));
constexpr int kArgOff = int(offsetof(Rt, arg));
constexpr int kJcOff = int(offsetof(Rt, jc));

// Host register number of a guest 16/32-bit register.
inline int hreg(unsigned r) { return r == ESP ? 12 : int(r); }

// Which operands an op has, for the generic re-encoder.
enum Rm : u8 { RM_NONE, RM_R, RM_W, RM_RW };
struct Native {
  bool ok = false;
  u8 rm = RM_NONE;     // access to the r/m operand
  u8 rm_size = 0;      // 0: operand size; else bytes
  bool reg_is_reg = false;  // ModRM.reg names a register (not an opcode extension)
  bool reg_only = false;    // memory forms go to the semantics
};

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
        return same([&](u32& f) { arith::shl<T>(T(a), c, f); }) &&
               same([&](u32& f) { arith::shr<T>(T(a), c, f); }) &&
               same([&](u32& f) { arith::sar<T>(T(a), c, f); });
      };
      h.shift_imm &= sz == 0 ? sh(u8()) : sz == 1 ? sh(u16()) : sh(u32());
    }
    h.dshift_imm &= same([&](u32& f) { arith::shld<u16>(u16(a), u16(b), c, f); }) &&
              same([&](u32& f) { arith::shrd<u16>(u16(a), u16(b), c, f); }) &&
              same([&](u32& f) { arith::shld<u32>(a, b, c, f); }) &&
              same([&](u32& f) { arith::shrd<u32>(a, b, c, f); });
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

// True if the instruction sets all six arithmetic flags from its operands
// alone: none read, none left as they were (on this host, for those with
// "undefined" flags).
bool defines_all_flags(const Insn& i) {
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

}  // namespace

class Emitter : public CodeGenerator {
 public:
  // One emitter for all translations (xbyak's generator is costly to build):
  // it writes into `scratch`; begin() starts a block that will be copied to
  // the cache at `cc.cursor()` (absolute targets are computed for that address).
  Emitter(Bt& bt, CodeCache& cc, u8* scratch, size_t max, i32 tlb_off)
      : CodeGenerator(max, scratch), bt_(bt), cc_(cc), tlb_off_(tlb_off) {}

  void begin(Block& b, const u8* page, const Stubs& stubs, const u8* page2, u32 max_insns) {
    max_insns_ = max_insns;
    slows_.clear();
    // References into it are kept while a block is emitted: never reallocate
    // (at most three slow paths per instruction).
    if (slows_.capacity() < size_t(max_insns_) * 3 + 8) slows_.reserve(size_t(max_insns_) * 3 + 8);
    reset();
    if (pre_.size() < max_insns) pre_.resize(max_insns);
    b_ = &b;
    page_ = page;
    page2_ = page2;
    b.crosses = page2 != nullptr;
    stubs_ = stubs;
    rx_ = cc_.to_rx(cc_.cursor());
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
  void run(u32 max_insns);

 private:
  // Forward jumps are rel32 fields patched when their target is known (no
  // xbyak labels: their bookkeeping cost more than the rest of a translation).
  static constexpr u32 kNone = ~0u;
  struct Slow {
    u32 entry_fix = kNone;  // the rel32 of the lookup's jump to the slow path
    u32 entry_fix2 = kNone;  // another (an offset that wraps)
    u32 entry_fix3 = kNone;  // another (GS not flat)
    u32 done = kNone;       // where the slow path resumes
    Site* site;
    bool parked;  // the guest flags were in Rt::hf (not the host's) at the access
    int recipe = -1;  // >= 0: recompute the flags from recipe_[recipe] first
    u32 direct_from = kNone;  // a direct access (paging off) from here to `done`: its fault comes here
    u32 at = kNone;           // where the out-of-line slow path begins
    // A memo access (site->has_memo, mem::Mmu::Memo): its miss (memo_fix)
    // goes to out-of-line code that looks the TLB up, fills the memo and
    // resumes at memo_resume, or takes the slow path.
    u32 memo_fix = kNone;
    u32 memo_resume = kNone;
    // Made while a loop block's flags may be only its back edge's recipe
    // (lazy_): the out-of-line path recomputes them first (materialize).
    bool lazy = false;
    // Made while the flags were only a register producer's recipe (rcp_):
    // the out-of-line path runs that producer again first.
    int rcp = -1;
    int rcp_keep = -1;  // rcp_keep_ then
  };
  // Where the guest's arithmetic flags are.
  enum class Fl {
    host,    // in host RFLAGS and in Rt::hf alike
    dirty,   // in host RFLAGS only
    parked,  // in Rt::hf only: host RFLAGS are free
  };

  Slow& new_slow() {
    if (slows_.size() == slows_.capacity())
      throw Error("bt: internal error: more slow paths in a block than reserved");
    Slow& s = slows_.emplace_back();
    s.lazy = lazy_;
    s.rcp = rcp_;
    s.rcp_keep = rcp_keep_;
    return s;
  }
  // Another way into the slow path of `site` (the rel32 `fix`), taken with
  // the guest flags in Rt::hf.
  Slow& also_slow(Site* site, u32 fix) {
    Slow& m = new_slow();
    m.site = site;
    m.entry_fix = fix;
    m.parked = true;
    return m;
  }

  // ---- jumps ----
  u32 here() const { return u32(getSize()); }
  u32 jcc32(unsigned cc) {  // jcc rel32 to be bound
    db(0x0F);
    db(u8(0x80 | (cc & 15)));
    dd(0);
    return here() - 4;
  }
  u32 jmp32() {
    db(0xE9);
    dd(0);
    return here() - 4;
  }
  void bind_to(u32 fix, u32 target) {
    const i32 rel = i32(target) - i32(fix + 4);
    std::memcpy(const_cast<u8*>(getCode()) + fix, &rel, 4);
  }
  void bind(u32 fix) { bind_to(fix, here()); }
  void jmp_back(u32 target) {  // jmp rel32 to an offset already emitted
    db(0xE9);
    dd(u32(i32(target) - i32(here() + 4)));
  }

  // ---- raw emission against executable addresses ----
  i32 rel_to(const u8* target, unsigned len) {
    return i32(target - (rx_ + getSize() + len));
  }
  void jmp_abs(const u8* target) {
    const i32 rel = rel_to(target, 5);
    db(0xE9);
    dd(u32(rel));
  }
  void call_abs(const u8* target) {
    const i32 rel = rel_to(target, 5);
    db(0xE8);
    dd(u32(rel));
  }

  // Sequences that depend only on their parameters (no position), encoded
  // once by xbyak and copied afterwards; `fix` is the offset of a rel32 the
  // caller binds (kNone: none).
  struct Snip {
    u8 len = 0;
    u8 fix = 0;
    u8 bytes[80];
  };
  // Emits `sn` (encoding it with `encode`, which returns the absolute offset
  // of its rel32 or kNone, the first time). Returns the rel32's offset.
  template <typename Encode> u32 cached(Snip& sn, Encode encode) {
    const u32 at = here();
    if (sn.len) {
      emit_bytes(sn.bytes, sn.len);
      return sn.fix == 0xFF ? kNone : at + sn.fix;
    }
    const u32 fix = encode();
    const u32 len = here() - at;
    if (len <= sizeof sn.bytes) {
      std::memcpy(sn.bytes, getCode() + at, len);
      sn.fix = fix == kNone ? 0xFF : u8(fix - at);
      sn.len = u8(len);
    }
    return fix;
  }
  Snip save_seq_, restore_seq_;
  void save_flags() {
    if (fl_ != Fl::dirty) return;
    cached(save_seq_, [&] {
      mov(r11, rax);
      lahf();
      seto(al);
      mov(word[r14 + kHfOff], ax);
      mov(rax, r11);
      return kNone;
    });
    fl_ = Fl::host;
  }
  void restore_flags() {
    if (rcp_ >= 0) {  // the producer again: the host flags become the guest's
      rcp_run();
      return;
    }
    if (lazy_) materialize();
    cached(restore_seq_, [&] {
      mov(r11, rax);
      mov(ax, word[r14 + kHfOff]);
      add(al, 0x7F);  // OF from bit 0
      sahf();
      mov(rax, r11);
      return kNone;
    });
    fl_ = Fl::host;
  }

  Site* new_site(const Insn& i, u32 eip, u64 pa, bool ends, bool slow) {
    Site* s = bt_.new_site();
    s->insn = i;
    s->fn = handler_for(i);
    s->block = b_;
    s->pa = pa;
    s->eip = eip;
    s->idx = u16(idx_);
    s->group = u8(group_of(i));
    s->ends = ends;
    s->slow_path = slow;
    s->mode_check = !slow && may_change_mode(i);
    return s;
  }
  // Calls the semantics for `s`; `parked`: Rt::hf holds the guest flags and
  // the host's are not theirs.
  void call_site(Site* s, bool parked) {
    if (parked && rcp_ >= 0) {
      rcp_run();
      parked = false;
    }
    if (parked && lazy_) materialize();
    mov(r8, u64(s));
    call_abs(parked ? stubs_.callout_nosave : stubs_.callout);
    fl_ = Fl::host;  // the stub restored the flags from Rt::hf
  }

  // ---- memory operands ----
  // GS is checked at run time (Rt::gs_slow; it is not in the mode key).
  bool seg_native(unsigned seg) const { return seg == GS || (b_->mode & m_flat(seg)); }
  // A field of CpuState::seg[seg] (selector, base) as a memory operand.
  Address seg_field(unsigned seg, int off, unsigned bytes) const {
    const int disp = kSegOff + int(seg * sizeof(Segment)) + off;
    return bytes == 2 ? word[r15 + disp] : dword[r15 + disp];
  }
  // ModRM (reg field `ext`), SIB and displacement of the guest's own memory
  // operand with its registers mapped (user window at host 0, under 0x67).
  void guest_modrm(unsigned ext, const Insn& i) {
    const i32 disp = i32(i.disp);
    const int base = i.base == kNoReg ? -1 : hreg(i.base);
    const int index = i.index == kNoReg ? -1 : hreg(i.index);  // never rsp
    if (base < 0) {  // [index*scale + disp32] or [disp32], through a SIB (mod 00 r/m 101 is RIP-relative)
      db(u8((ext << 3) | 4));
      db(u8((i.scale << 6) | ((index >= 0 ? (index & 7) : 4) << 3) | 5));
      dd(u32(disp));
      return;
    }
    const unsigned mod = (disp == 0 && (base & 7) != 5) ? 0 : (disp >= -128 && disp <= 127) ? 1 : 2;
    if (index >= 0 || (base & 7) == 4) {
      db(u8((mod << 6) | (ext << 3) | 4));
      db(u8((i.scale << 6) | ((index >= 0 ? (index & 7) : 4) << 3) | (base & 7)));
    } else {
      db(u8((mod << 6) | (ext << 3) | (base & 7)));
    }
    if (mod == 1) db(u8(i8(disp)));
    else if (mod == 2) dd(u32(disp));
  }
  // r8d = offset of the memory operand.
  // Encoded by hand (the most frequent sequence after the TLB check):
  // lea r8d, [base + index*scale + disp], or mov r8d, disp.
  void ea_to_r8(const Insn& i) {
    const i32 disp = i32(i.disp);
    if (i.base == kNoReg && i.index == kNoReg) {
      db(0x41); db(0xB8); dd(u32(disp));  // mov r8d, imm32
      return;
    }
    const int base = i.base == kNoReg ? -1 : hreg(i.base);
    const int index = i.index == kNoReg ? -1 : hreg(i.index);  // never rsp
    db(0x44 | (index >= 8 ? 0x02 : 0) | (base >= 8 ? 0x01 : 0));  // REX.R: r8d
    db(0x8D);
    if (base < 0) {  // [index*scale + disp32]
      db(0x04);
      db(u8((i.scale << 6) | ((index & 7) << 3) | 5));
      dd(u32(disp));
      return;
    }
    const unsigned mod = (disp == 0 && (base & 7) != 5) ? 0 : (disp >= -128 && disp <= 127) ? 1 : 2;
    if (index >= 0 || (base & 7) == 4) {
      db(u8((mod << 6) | 4));
      db(u8((i.scale << 6) | ((index >= 0 ? (index & 7) : 4) << 3) | (base & 7)));
    } else {
      db(u8((mod << 6) | (base & 7)));
    }
    if (mod == 1) db(u8(i8(disp)));
    else if (mod == 2) dd(u32(disp));
  }
  // Offset r8d -> linear r8d. A flat segment's limit check is only that the
  // access does not wrap past offset 4 GiB: with base 0 the TLB check sees
  // that (the last byte's page differs), with another base it must be tested
  // here — by a branch to `s` (clobber), else into r11d (non-zero: wraps) for
  // the flag-free lookup to fold in. Returns true in the latter case.
  bool add_seg_base(unsigned seg, unsigned size, bool clobber, Slow& s) {
    if (b_->mode & m_base0(seg)) return false;
    bool wrap_in_r11 = false;
    if (size > 1) {
      if (clobber) {
        cmp(r8d, u32(0xFFFFFFFFu - (size - 1)));
        s.entry_fix2 = jcc32(7);  // ja
      } else {
        lea(r11, ptr[r8 + int(size - 1)]);  // 33 bits
        rorx(r11, r11, 32);
        movzx(r11d, r11b);                   // bit 32 of the last offset
        wrap_in_r11 = true;
      }
    }
    mov(r9d, seg_field(seg, kBaseOff, 4));
    lea(r8d, ptr[r8 + r9]);
    return wrap_in_r11;
  }
  // Emits code bytes as they are.
  void emit_bytes(const u8* bytes, unsigned len) {
    const size_t at = getSize();
    if (at + len > Translator::kMaxBlockCode) throw Error("bt: internal error: block code too big");
    std::memcpy(const_cast<u8*>(getCode()) + at, bytes, len);
    setSize(at + len);
  }
  // r8 (linear, zero-extended) -> host address, or a jump to the slow path,
  // whose rel32 it returns. `clobber`: the host flags are free (a compare and
  // branch); otherwise a flag-free sequence.
  Snip lookup_snips_[64];
  u32 lookup(unsigned size, bool write, bool clobber, bool wrap_in_r11 = false) {
    if (!clobber) bt_.bstats().flag_free_checks++;
    const unsigned key = (size == 1 ? 0u : size == 2 ? 1u : size == 4 ? 2u : 3u) | (write ? 4u : 0u) |
                         (clobber ? 8u : 0u) | (wrap_in_r11 ? 16u : 0u) | (user_ ? 32u : 0u);
    return cached(lookup_snips_[key], [&] { return encode_lookup(size, write, clobber, wrap_in_r11); });
  }
  // The compare-and-branch part of the TLB check (clobbers the flags): r9 =
  // the entry; returns the rel32 of the jump taken on a miss.
  u32 tag_check(unsigned size, bool write) {
    static_assert(mem::Mmu::kTlbBits == 16 && (kR13Bias & 0xFFFF) == 0x100C, "BEXTR takes 16 bits from bit 12");
    bextr(r9d, r8d, r13d);  // the entry: the page number's low 16 bits (r13's control byte pair)
    // The page of the last byte must be the entry's tag (invalid tags have
    // low bits set and never compare equal).
    lea(r10d, ptr[r8 + int(size - 1)]);
    and_(r10d, ~0xFFFu);
    cmp(r10d, dword[r14 + r9 * 4 + tlb_off_ + int(mem::Mmu::tag_array_off(user_, write))]);
    return jcc32(5);  // jne
  }
  u32 encode_lookup(unsigned size, bool write, bool clobber, bool wrap_in_r11) {
    // The tag and addend arrays (Mmu::tag_array_off): the entry number
    // scales to them in the address, no multiply first.
    const int tag = tlb_off_ + int(mem::Mmu::tag_array_off(user_, write));
    const int addend = tlb_off_ + int(mem::Mmu::addend_array_off(user_));
    if (clobber) {
      const u32 fix = tag_check(size, write);
      add(r8, qword[r14 + r9 * 8 + addend]);
      return fix;
    }
    rorx(r9d, r8d, 12);  // (BEXTR writes flags: the flag-free way takes two)
    movzx(r9d, r9w);
    mov(r10d, dword[r14 + r9 * 4 + tag]);
    not_(r10d);
    lea(r10d, ptr[r8 + r10 + int(size)]);  // last byte - tag
    shrx(r10d, r10d, r13d);                  // zero iff on the tagged page
    if (wrap_in_r11) lea(r10d, ptr[r10 + r11]);
    mov(r11, rcx);
    mov(ecx, r10d);
    db(0xE3);  // jrcxz over the next two instructions (hit)
    db(8);
    mov(rcx, r11);  // 3 bytes
    const u32 fix = jmp32();  // 5 bytes
    mov(rcx, r11);
    mov(r10, qword[r14 + r9 * 8 + addend]);
    lea(r8, ptr[r8 + r10]);
    return fix;
  }

  // ---- the generic re-encoder ----
  // Emits `i` for the host with registers mapped and a memory operand as [r8].
  // Returns false (emitting nothing) if the host cannot encode it that way.
  static bool can_reencode(const Insn& i, const Native& n) {
    const OpInfo& info = i.info();
    const bool byte = info.attrs & B;
    const unsigned reg_size = byte ? 1 : i.osize;
    bool rex = i.mem, hi8 = false;
    if (n.reg_is_reg) {
      if (reg_size == 1) hi8 |= i.reg >= 4;
      else rex |= hreg(i.reg) >= 8;
    }
    if (!i.mem) {
      if (n.rm_size == 1) hi8 |= i.rm >= 4;
      else rex |= hreg(i.rm) >= 8;
    }
    if (rex && hi8) return false;
    switch (info.imm) {
      case I_B: case I_BS: case I_W: case I_Z: case I_NONE: return true;
      default: return false;
    }
  }
  // reg_host >= 0: ModRM.reg names that host register instead (an AH..BH
  // operand staged in r10b next to a memory operand that needs REX).
  void reencode(const Insn& i, const Native& n, const u8* bytes, int reg_host = -1) {
    const OpInfo& info = i.info();
    const bool byte = info.attrs & B;
    const unsigned reg_size = byte ? 1 : i.osize;
    const unsigned rm_size = n.rm_size;
    u8 rex = 0;
    bool hi8 = false;
    u8 reg_field = i.reg & 7, rm_field;
    if (reg_host >= 0) {
      reg_field = u8(reg_host & 7);
      if (reg_host >= 8) rex |= 4;
    } else if (n.reg_is_reg) {
      if (reg_size == 1) hi8 |= i.reg >= 4;
      else if (hreg(i.reg) >= 8) rex |= 4;
    }
    if (i.mem && direct_form_ == 3) {
      rm_field = 0;  // (guest_modrm)
      if (i.base != kNoReg && hreg(i.base) >= 8) rex |= 1;
      if (i.index != kNoReg && hreg(i.index) >= 8) rex |= 2;
    } else if (i.mem) {
      rm_field = direct_form_ ? 4 : 0;  // [r8], or SIB with base r13 (direct)
      rex |= 1;
      if (direct_form_ == 1 || (direct_form_ == 2 && hreg(i.base) >= 8)) rex |= 2;  // REX.X
    } else {
      rm_field = i.rm & 7;
      if (rm_size == 1) hi8 |= i.rm >= 4;
      else if (hreg(i.rm) >= 8) rex |= 1;
    }
    (void)hi8;
    // Immediate bytes: the tail of the guest instruction.
    unsigned imm_len = 0;
    switch (info.imm) {
      case I_B: case I_BS: imm_len = 1; break;
      case I_W: imm_len = 2; break;
      case I_Z: imm_len = i.osize == 2 ? 2 : 4; break;
      default: break;
    }
    if (i.osize == 2 && !byte) db(0x66);
    if (i.mem && direct_form_ == 3) db(0x67);  // 32-bit addressing: the guest's wrap
    if (rex) db(0x40 | rex);
    if (i.map == 1) db(0x0F);
    u8 opc = i.opcode;
    if (i.map == 0 && opc == 0x82) opc = 0x80;  // invalid in 64-bit mode
    db(opc);
    u8 ext = reg_field;
    if (i.op == Op::TEST_EbIb1 || i.op == Op::TEST_EvIz1) ext = 0;
    if (i.mem && direct_form_ == 3) {
      guest_modrm(ext, i);
      direct_form_ = 0;
    } else if (i.mem && direct_form_) {
      // [r13 + r8 - bias] or [r13 + base + disp - bias] (r13 = RAM + bias).
      const i64 disp = direct_form_ == 1 ? -kR13Bias : i64(i32(i.disp)) - kR13Bias;
      const bool d8 = disp >= -128 && disp <= 127;
      const unsigned index = direct_form_ == 1 ? 0 : unsigned(hreg(i.base)) & 7;
      db(u8((d8 ? 0x40 : 0x80) | (ext << 3) | 4));
      db(u8((index << 3) | 5));  // scale 1, base r13
      if (d8) db(u8(i8(disp)));
      else dd(u32(i32(disp)));
      direct_form_ = 0;
    } else {
      db(u8((i.mem ? 0x00 : 0xC0) | (ext << 3) | rm_field));
    }
    for (unsigned k = 0; k < imm_len; k++) db(bytes[i.len - imm_len + k]);
  }

  // ---- exits ----
  // Leaves the block for guest EIP `target` (a constant). `jcc`: the rel32
  // of a Jcc that jumps here (bound by the caller), or kNone.
  // The flags to Rt::hf for a way out (a recipe run, a loop's flags materialized).
  void flags_out() {
    if (rcp_ >= 0) rcp_run();
    if (lazy_ && fl_ == Fl::parked) materialize();
    save_flags();
  }
  void exit_direct(u32 target, u32 jcc = kNone) {
    flags_out();
    const bool flat = b_->mode & M_CS_FLAT;
    if (bt_.options().chain && flat && b_->nlinks < Block::kMaxLinks &&
        (target & ~0xFFFu) == (b_->eip & ~0xFFFu)) {
      const unsigned k = b_->nlinks++;
      b_->links[k].slot = u32(getSize());
      b_->links[k].target_eip = target;
      b_->links[k].jcc = jcc == kNone ? 0 : jcc;
      // Chained, the successor needs no EIP in CpuState (its own exits and
      // callouts store theirs): only the way out stores it.
      db(0xE9);
      dd(0);  // falls through until patched
      mov(dword[r15 + kEipOff], target);
      mov(qword[r14 + kReasonOff], u32(kExitChain));
      mov(r8, u64(b_) | k);
      mov(qword[r14 + kArgOff], r8);
      jmp_abs(stubs_.exit_common);
    } else if (bt_.options().chain && flat && b_->cs_base == 0) {
      mov(r9d, target);
      jc_lookup();
    } else {
      mov(dword[r15 + kEipOff], target);
      mov(qword[r14 + kReasonOff], u32(kExitNormal));
      jmp_abs(stubs_.exit_common);
    }
  }
  // Leaves the block for the guest EIP in r9d.
  void exit_indirect() {
    flags_out();
    if (bt_.options().chain && (b_->mode & M_CS_FLAT) && b_->cs_base == 0) {
      jc_lookup();
    } else {
      mov(dword[r15 + kEipOff], r9d);
      mov(qword[r14 + kReasonOff], u32(kExitNormal));
      jmp_abs(stubs_.exit_common);
    }
  }
  // The jump cache: (eip, mode) -> code, filled by the dispatcher. Flags are
  // saved; the guest EIP in r9d is stored only on the way out (a block found
  // needs none in CpuState: its own exits and callouts store theirs).
  // `mode_in_r8`: the mode is not the block's but r8's high half.
  void jc_lookup(bool mode_in_r8 = false) {
    mov(r10d, r9d);
    shr(r10d, 12);
    xor_(r10d, r9d);
    and_(r10d, (1u << kJcBits) - 1);
    shl(r10d, 4);
    add(r10, qword[r14 + kJcOff]);
    if (mode_in_r8) mov(r11, r8);
    else mov(r11, u64(b_->mode) << 32);
    or_(r11, r9);
    cmp(qword[r10], r11);
    const u32 miss = jcc32(5);
    jmp(qword[r10 + 8]);
    bind(miss);
    mov(dword[r15 + kEipOff], r9d);
    mov(qword[r14 + kReasonOff], u32(kExitNormal));
    jmp_abs(stubs_.exit_common);
  }


  // Starts a memory access: a slow path (the whole instruction through the
  // semantics) and the inline lookup of the operand `addr` names (the ModRM
  // operand, or an implicit one: the stack, [EBP], a moffs, [ESI], [EDI]) in
  // segment `seg`. Leaves its host address in r8. Returns the slow record.
  // `flags_dead`: the instruction's result does not depend on the flags
  // before it from here on (the caller saved them for the slow path).
  Slow& mem_access(const Insn& i, u32 eip, u64 pa, unsigned seg, unsigned size, bool write,
                   Site::Addr addr, bool flags_dead = false) {
    Slow& s = new_slow();
    s.site = new_site(i, eip, pa, false, true);
    // Paging off, a base-0 segment: the linear address is the physical one,
    // and RAM is addressed directly (no check, nothing clobbered).
    // With paging on at CPL 3, the user window (mem::Mmu) maps the user
    // pages the TLB holds at their linear addresses: addressed the same way.
    const bool nopg = b_->mode & M_NOPG;
    const bool direct = (nopg || (b_->mode & M_UWIN)) && !in_rep_ && (b_->mode & m_base0(seg)) && seg != GS;
    // Guest flags only in the host's at an access that does not read them:
    // parked now (5 instructions), this access and the next ones take the
    // compare-and-branch TLB check (7) instead of the flag-free one (14).
    if (!direct && fl_ == Fl::dirty && use_recipe_ < 0 && !flags_dead && !in_rep_ &&
        (out_dead_ || !needs_flags(i))) {
      if (last_p_ >= 0 && !lazy_ && bt_.options().flag_recipes && rcp_plain(i, last_p_watch_)) {
        // The flags stay P's recipe (see rcp_): the check may clobber them.
        rcp_ = last_p_;
        rcp_watch_ = last_p_watch_;
        rcp_keep_ = last_p_keep_;
        last_p_ = -1;
        fl_ = Fl::parked;
        s.rcp = rcp_;
        s.rcp_keep = rcp_keep_;
        bt_.bstats().flag_lazy_recipes++;
      } else if (park_pays()) {
        save_flags();
        bt_.bstats().flag_parks++;
      }
    }
    // The host flags are free for the check unless they hold guest flags not
    // yet saved, or the instruction needs the guest's flags as input.
    bool clobber = fl_ != Fl::dirty && (flags_dead || (!direct && (out_dead_ || !needs_flags(i))));
    if (direct) {
      s.site->phys = nopg;
      s.site->window = !nopg;
      bt_.bstats().direct_accesses++;
      if (clobber) fl_ = Fl::parked;
      s.parked = fl_ == Fl::parked;
      // After a partial recipe's P the host flags are not all the guest's:
      // a fault here recomputes them.
      if (use_recipe_ >= 0 && recipes_[size_t(use_recipe_)].partial && fl_ == Fl::dirty) s.recipe = use_recipe_;
    } else if (!clobber && use_recipe_ >= 0 && fl_ == Fl::dirty) {
      // The flags are the last producer's, recomputable on the slow path.
      clobber = true;
      s.recipe = use_recipe_;
      // Until F (emitted right after this access) defines them again, the
      // guest flags exist only as the recipe; nothing in between reads fl_.
      fl_ = Fl::parked;
      s.parked = false;
    } else {
      if (clobber) fl_ = Fl::parked;
      s.parked = fl_ == Fl::parked;
    }
    s.site->seg = u8(seg);
    s.site->size = u8(size);
    s.site->write = write;
    s.site->addr = addr;
    // A direct access to [base + disp] (disp >= 0) the caller re-encodes: the
    // access itself addresses [r13 + base + disp - kR13Bias] (a sum past 4 GiB
    // lands in the inaccessible rest of the reservation and faults: the slow
    // path then wraps it as the CPU does).
    // With the user window at host 0 the access is the guest's own
    // addressing under 0x67 (it wraps at 4 GiB as the guest's does).
    const bool zero = !nopg && bt_.user_window_zero();
    if (direct && zero && direct_fold_ok_ && addr == Site::A_EA && i.asize == 4 && !bt_index_) {
      direct_form_ = 3;
      s.direct_from = here();
      return s;
    }
    if (direct && direct_fold_ok_ && addr == Site::A_EA && i.asize == 4 && i.index == kNoReg &&
        i.base != kNoReg && i32(i.disp) >= 0) {
      direct_form_ = 2;
      s.direct_from = here();
      return s;
    }
    switch (addr) {
      case Site::A_EA:
        ea_to_r8(i);
        if (bt_index_) lea(r8d, ptr[r8 + r10 * 4]);
        break;
      case Site::A_PUSH: lea(r8d, ptr[r12 - 4]); break;
      case Site::A_POP: mov(r8d, r12d); break;
      case Site::A_EBP: mov(r8d, ebp); break;
      case Site::A_MOFFS: mov(r8d, i.imm); break;
      case Site::A_ESI: mov(r8d, esi); break;
      case Site::A_EDI: mov(r8d, edi); break;
    }
    if (direct) {
      // The access addresses RAM's base + the address. One that may not go
      // straight to RAM (not RAM; for a write, a code page: write-protected
      // in the host mapping) faults, and the SIGSEGV handler resumes at this
      // slow path.
      if (direct_fold_ok_) direct_form_ = 1;  // the access addresses [r13 + r8 - kR13Bias]
      else if (!zero) lea(r8, ptr[r13 + r8 - kR13Bias]);  // (at host 0: r8 is the address)
      s.direct_from = here();
      return s;
    }
    bool wrap = add_seg_base(seg, size, clobber, s);
    if (seg == GS) {
      // Not flat now: the slow path (folded into the flag-free check's r11).
      constexpr int kGsSlow = int(offsetof(Rt, gs_slow));
      if (clobber) {
        cmp(dword[r14 + kGsSlow], 0);
        s.entry_fix3 = jcc32(5);  // jne
      } else if (wrap) {
        mov(r9d, dword[r14 + kGsSlow]);
        lea(r11d, ptr[r11 + r9]);
      } else {
        mov(r11d, dword[r14 + kGsSlow]);
        wrap = true;
      }
    }
    if (memo_ && clobber && !wrap && !in_rep_ && seg != GS && (b_->mode & m_base0(seg)) &&
        !bt_.is_no_memo(pa)) {
      memo_hit(s, size, write);
      return s;
    }
    s.entry_fix = lookup(size, write, clobber, wrap);
    return s;
  }
  // The memo check (flags free): r8 - memo page in [0, 4096 - size], else
  // the miss (which adds the page back); the hit adds the page's host
  // address. Memos are handed out round-robin per kind (any memo of the
  // kind is right for any site).
  void memo_hit(Slow& s, unsigned size, bool write) {
    constexpr unsigned kPool = mem::Mmu::kMemos / 4;
    const unsigned pool = mem::Mmu::memo_pool(user_, write);
    const unsigned id = pool + (memo_next_[pool / kPool]++ & (kPool - 1));
    const int moff = tlb_off_ + int(mem::Mmu::memo_off(id));
    s.site->has_memo = true;
    s.site->memo = u16(id);
    bt_.mmu().memo_misses(id) = Bt::kMemoBatch;
    bt_.memo_batch_start(id) = 0;
    // r8 - page (the 64-bit difference: a page above the address, or the
    // empty marks, leave it huge), then + the page's host address.
    sub(r8, qword[r14 + moff]);
    cmp(r8, int(4096 - size));
    s.memo_fix = jcc32(7);  // ja
    add(r8, qword[r14 + moff + 8]);
    s.memo_resume = here();
    bt_.bstats().memo_accesses++;
  }
  // A memo's miss: the TLB check; on a hit the memo is listed (if it is
  // not yet), its entry marked, and it is filled (mem::Mmu::Memo).
  void memo_miss(Slow& s) {
    bind(s.memo_fix);
    const Site& site = *s.site;
    const int moff = tlb_off_ + int(mem::Mmu::memo_off(site.memo));
    add(r8, qword[r14 + moff]);  // the address again
    // The policy's count-down (Bt::kMemoBatch): at zero, the slow path.
    sub(dword[r14 + (tlb_off_ + int(mem::Mmu::memo_miss_off(site.memo)))], 1);
    s.entry_fix2 = jcc32(4);  // jz
    const int addend = tlb_off_ + int(mem::Mmu::addend_array_off(user_));
    const int count = tlb_off_ + int(mem::Mmu::kMemoCountOff);
    s.entry_fix = tag_check(site.size, site.write);  // a TLB miss: the slow path
    static_assert(mem::Mmu::kMemoEmpty == u64(1) << 40);
    bt(qword[r14 + moff], 40);
    const u32 listed = jcc32(3);  // jnc (jae)
    mov(r10d, dword[r14 + count]);
    cmp(r10d, mem::Mmu::kMemoListCap);
    const u32 full = jcc32(3);  // jae
    mov(dword[r14 + r10 * 4 + (tlb_off_ + int(mem::Mmu::kMemoListOff))], u32(site.memo));
    inc(r10d);
    mov(dword[r14 + count], r10d);
    bind(listed);
    mov(byte[r14 + r9 + (tlb_off_ + int(mem::Mmu::memo_mark_off(user_)))], 1);
    lea(r10d, ptr[r8 + int(site.size - 1)]);
    and_(r10d, ~0xFFFu);
    mov(qword[r14 + moff], r10);
    mov(r11, qword[r14 + r9 * 8 + addend]);
    add(r10, r11);  // the page's host address
    mov(qword[r14 + moff + 8], r10);
    add(r8, r11);
    jmp_back(s.memo_resume);
    bind(full);
    add(r8, qword[r14 + r9 * 8 + addend]);
    jmp_back(s.memo_resume);
  }
  // The end of an indirect transfer whose target the fast path left in r9d;
  // after the slow path (which ran the instruction) it is the state's EIP.
  void exit_indirect_after(Slow& s) {
    const u32 go = jmp32();
    s.done = here();
    mov(r9d, dword[r15 + kEipOff]);
    bind(go);
    exit_indirect();
  }

  // out = elements of `size` bytes from linear address (reg + seg base) to
  // the end of its page. Clobbers the flags.
  void room(const Reg32& out, const Reg32& reg, unsigned seg, unsigned size) {
    mov(out, reg);
    if (!(b_->mode & m_base0(seg))) add(out, seg_field(seg, kBaseOff, 4));
    and_(out, 0xFFF);
    neg(out);
    add(out, 4096);
    if (size > 1) shr(out, size == 4 ? 2 : 1);
  }
  void rep_string(const Insn& i, u32 eip, u64 pa, unsigned size);
  // PUSH/CALL through memory: the 32-bit operand (read before ESP moves) to
  // [rsp-8] in the red zone, then r8 = the new stack slot. A slow path runs
  // the whole instruction: the fast read before it was RAM, so reading again
  // is harmless. Returns both slow records (the caller sets where they resume).
  std::pair<Slow*, Slow*> operand_then_push_slot(const Insn& i, u32 eip, u64 pa) {
    Slow& s1 = mem_access(i, eip, pa, i.seg, 4, false, Site::A_EA);
    mov(r9d, dword[r8]);
    mov(dword[rsp - 8], r9d);
    Slow& s2 = mem_access(i, eip, pa, SS, 4, true, Site::A_PUSH);
    return {&s1, &s2};
  }

  enum class Done { next, ended };
  Done insn(const Insn& i, const u8* bytes, u32 eip, u64 pa);
  Done callout(const Insn& i, u32 eip, u64 pa, bool ends) {
    Site* s = new_site(i, eip, pa, ends, false);
    s->direct = direct_slow(pa);
    // An interrupt shadow (STI, MOV SS) need not end the block when the
    // instruction it covers is this callout that ends it: the semantics run
    // it, then the dispatcher looks for interrupts, as the interpreter would.
    if (ends && prev_callout_ && prev_callout_->idx + 1u == idx_) prev_callout_->shadow_ok = true;
    prev_callout_ = s;
    save_flags();
    call_site(s, fl_ == Fl::parked);
    bt_.bstats().callout_insns++;
    if (ends) {
      ud2();  // the stub never returns here
      return Done::ended;
    }
    return Done::next;
  }
  bool stack_ok() const {
    return (b_->mode & M_SS32) && seg_native(SS);
  }
  bool direct_slow(u64 pa) const;

  Bt& bt_;
  CodeCache& cc_;
  i32 tlb_off_;
  Block* b_ = nullptr;
  const u8* page_ = nullptr;
  const u8* page2_ = nullptr;
  Stubs stubs_{};
  const u8* rx_ = nullptr;
  bool user_ = false;
  unsigned memo_next_[4] = {};  // the next memo of each pool (mem::Mmu::memo_pool)
  bool memo_ = false;           // memory operands of this block use memos
  Fl fl_ = Fl::parked;
  Site* prev_callout_ = nullptr;  // the last plain callout of this block
  unsigned idx_ = 0;
  unsigned n_ = 0;  // instructions in the block
  // Conditional branches inside the block: their exits, emitted out of line.
  struct Side {
    u32 fix;      // the jcc's rel32
    u32 target;
    unsigned idx;
    Fl fl;        // where the flags were at the branch
    bool lazy;    // lazy_ at the branch
  };
  std::vector<Side> sides_;
  // Where each instruction's code begins (before the flags are restored for
  // it) and where the flags were then: a side exit whose target is a later
  // instruction of the block jumps there (an if without else in a loop).
  std::vector<u32> join_at_;
  std::vector<Fl> join_fl_;
  std::vector<u8> join_rcp_;
  bool join_ok(const Side& sd, unsigned t) const;
  static constexpr unsigned kMaxSides = Block::kMaxLinks - 2;
  // Whether a conditional branch may be a side exit rather than end the block.
  // User mode only by default: kernel code is mostly run a few times during a boot, and
  // longer blocks there cost more translation (+23 % guest instructions
  // translated, boot 5-10 % slower) than they save; user programs' hot loops
  // gain (the string part 15 %). Translating a block again as a superblock
  // once it is hot would serve both.
  bool side_exit_ok(const Insn& i) const {
    const auto sb = bt_.options().superblocks;
    if (sb == BtOptions::Superblocks::off || (sb == BtOptions::Superblocks::user && !user_)) return false;
    return (i.op == Op::JCC_Jb || i.op == Op::JCC_Jz) && i.osize == 4 && (b_->mode & M_CS_FLAT) &&
           !(bt_.interp_group_mask() & (1u << group_of(i)));
  }
  // `add qword [r14], imm32` whose immediate (instructions the prologue
  // counted that will not run) is patched when the block's length is known.
  // Also RDTSC's count of unretired instructions: (immediate, the index of
  // the first instruction it counts) -> the block's instructions from there on.
  std::vector<std::pair<u32, unsigned>> rest_fix_;
  void add_unrun(unsigned idx) {
    db(0x49); db(0x81); db(0x06);
    rest_fix_.emplace_back(here(), idx + 1);
    dd(0);
  }
  // The block's instructions, decoded ahead of emission.
  struct Pre {
    Insn i;
    const u8* bytes;
    u32 eip, off;
    u8 joined[15];
  };
  std::vector<Pre> pre_;
  // Flag recipes: a register-only producer P of all six flags, followed
  // (through register moves that leave P's operands alone) by an instruction F
  // that defines all six again from a memory operand. The guest flags at F's
  // access are P's: instead of keeping them (a flag-free TLB check, or a save),
  // F's check clobbers them and its slow path recomputes them by running P
  // again, on P's destination as it was (kept in the red zone).
  struct Recipe {
    Insn p;
    const u8* bytes;
    bool stashed;  // P's destination before P is at [rsp - 24]
    bool dest_is_reg;  // P writes ModRM.reg (else ModRM.rm, or nothing)
    // P writes only some flags (IMUL here): the rest are the flags before
    // P, which must then be parked (in Rt::hf) at P; P runs on any host
    // flags, and the slow path restores Rt::hf before running P again.
    bool partial = false;
    unsigned f = 0;  // F's index in the block
  };
  std::vector<Recipe> recipes_;
  int use_recipe_ = -1;          // F's memory access may use this recipe
  std::vector<int> recipe_for_;  // per instruction index: the recipe P makes / F uses
  std::vector<u8> recipe_role_;  // 0 none, 1 P, 2 F
  static constexpr int kStash = -24;
  bool recipe_producer(const Insn& i, bool* writes, bool* dest_is_reg, bool* partial) const;
  void plan_recipes(unsigned n);
  void emit_recipe(const Recipe& r);
  // The instruction being emitted writes only some flags, reads none, and
  // every flag it leaves is dead: it may run on any host flags.
  bool out_dead_ = false;
  bool in_rep_ = false;  // rep_string: host string instructions move guest registers first
  // Direct accesses (paging off) the generic re-encoder emits: the caller
  // re-encodes the access right after mem_access (direct_fold_ok_), which
  // then says how the operand is addressed (0 [r8], 1 [r13 + r8 - kR13Bias],
  // 2 [r13 + base + disp - kR13Bias]).
  bool direct_fold_ok_ = false;
  u8 direct_form_ = 0;
  // BT/BTS/BTR/BTC on memory with a register bit offset: r10 holds the
  // offset's dword index, added to the effective address.
  bool bt_index_ = false;
  bool partial_output_dead(unsigned k, unsigned n) const;
  // Whether parking the flags at this memory access pays: unless an
  // instruction that needs them follows before a second access (it would
  // restore them, 5 more), a definer of all six or the block's end (which
  // saves them anyway) come first.
  bool park_pays() const {
    unsigned accesses = 1;
    for (unsigned j = idx_ + 1; j < n_; j++) {
      const Insn& x = pre_[j].i;
      if (needs_flags(x)) return accesses >= 2;
      if (x.mem && x.op != Op::LEA) accesses++;
      if (defines_all_flags(x)) return true;
    }
    return true;
  }
  bool quiet_reg_op(const Insn& i) const;
  // Loop flags. A block that ends with a conditional branch back to its own
  // start, right after a register-only instruction P that defines all six
  // flags (CMP, TEST, ALU, shift by an immediate), does not save the flags
  // on that back edge: it sets Rt::loop_lazy and jumps (the entry from
  // outside clears it). Until the block's first definer of all six flags (W),
  // the guest flags are then P's on P's operands as they were at the back
  // edge: still in their registers, or one kept aside in the red zone
  // (kLoopStash) by a store before P. Every path that needs the flags in
  // Rt::hf before W — out-of-line slow paths, the budget exit — first runs
  // materialize(): if the flag is set, P again, the flags saved, the flag
  // cleared. The window before W may hold only instructions that neither read
  // nor write flags (but a partial recipe's P whose F is W), transfer or
  // call out; plan_loop checks that, the hooks in restore_flags, call_site
  // and the exits keep any other case correct.
  int loop_p_ = -1;      // P's index, or -1: not a loop block of that kind
  int loop_stash_ = -1;  // the guest register kept aside, or -1
  unsigned loop_w_ = 0;  // W's index
  u32 loop_body_ = kNone;  // the prologue, where the back edge goes
  bool lazy_ = false;    // emitting the window: Rt::hf may be stale
  static constexpr int kLoopStash = -32;
  // Flag recipes at run time's convenience. After a register-only producer P
  // of all six flags (what loop_producer accepts), a memory access that does
  // not read the flags would have to save them (park: 5 instructions) so that
  // its slow path finds them. Instead the translator remembers P (rcp_): the
  // host flags are free, Rt::hf is stale, and whatever needs the flags runs
  // P again on its operands (rcp_run: one instruction, and a swap when P's
  // destination was kept at Rt::rcp_stash before P). Accesses' slow paths do that
  // out of line. Ended (the flags then in the host's) by a reader, an exit, a
  // callout, or before an instruction that writes P's operands or is not a
  // plain one (run()).
  int rcp_ = -1;           // P's index, or -1
  unsigned rcp_watch_ = 0;  // guest registers P reads from their registers
  int rcp_keep_ = -1;      // P's destination, whose value before P is in Rt::rcp_stash, or -1
  int last_p_ = -1;        // the last such P whose flags are still the host's, if its operands stand
  unsigned last_p_watch_ = 0;
  int last_p_keep_ = -1;
  void emit_p(unsigned idx, int stash_reg, const Address& stash);
  // P again on its operands (rcp_): the host flags are the guest's (dirty).
  void rcp_run() {
    emit_p(unsigned(rcp_), rcp_keep_, dword[r14 + kRcpStashOff]);
    rcp_ = -1;
    fl_ = Fl::dirty;
  }
  bool rcp_plain(const Insn& x, unsigned watch) const;
  bool rcp_access_ahead(unsigned k) const;
  static bool loop_producer(const Insn& p, unsigned* reads, unsigned* dest);
  static bool regs_written(const Insn& x, unsigned* mask);
  void plan_loop(unsigned n);
  void emit_loop_p();
  // The flags to Rt::hf if they are only the loop's recipe now (clobbers the
  // host flags, r10, r11). Afterwards they are parked.
  void materialize() {
    cmp(byte[r14 + kLoopLazyOff], 0);
    const u32 skip = jcc32(4);  // je
    emit_loop_p();
    fl_ = Fl::dirty;
    save_flags();
    mov(byte[r14 + kLoopLazyOff], 0);
    bind(skip);
    fl_ = Fl::parked;
  }
  std::vector<Slow> slows_;
  u32 max_insns_ = 0;
};

bool Emitter::direct_slow(u64 pa) const { return bt_.is_direct_slow(pa); }

// P of a flag recipe: a register-only 32-bit ALU op, TEST or shift by an
// immediate that defines all six flags and is re-encoded as it is.
bool Emitter::recipe_producer(const Insn& i, bool* writes, bool* dest_is_reg, bool* partial) const {
  if (i.mem || i.osize != 4 || i.asize != 4 || (i.info().attrs & B)) return false;
  if (bt_.interp_group_mask() & (1u << group_of(i))) return false;
  *dest_is_reg = false;
  *partial = !defines_all_flags(i);
  if (*partial) {
    // IMUL r32, r/m32 (, imm): on hosts where it keeps SF/ZF/AF/PF.
    if (i.op != Op::IMUL_GvEv && i.op != Op::IMUL_GvEvIz && i.op != Op::IMUL_GvEvIb) return false;
    *writes = true;
    *dest_is_reg = true;
    const Native nat = native_of(i);
    return nat.ok && can_reencode(i, nat);
  }
  switch (i.op) {
    case Op::ADD_EvGv: case Op::OR_EvGv: case Op::AND_EvGv: case Op::SUB_EvGv: case Op::XOR_EvGv:
    case Op::ADD_EvIz: case Op::OR_EvIz: case Op::AND_EvIz: case Op::SUB_EvIz: case Op::XOR_EvIz:
    case Op::ADD_EvIb: case Op::OR_EvIb: case Op::AND_EvIb: case Op::SUB_EvIb: case Op::XOR_EvIb:
    case Op::SHL_EvIb: case Op::SHR_EvIb: case Op::SAR_EvIb: case Op::SAL_EvIb:
    case Op::SHL_Ev1: case Op::SHR_Ev1: case Op::SAR_Ev1: case Op::SAL_Ev1:
      *writes = true;
      break;
    case Op::ADD_GvEv: case Op::OR_GvEv: case Op::AND_GvEv: case Op::SUB_GvEv: case Op::XOR_GvEv:
      *writes = true;
      *dest_is_reg = true;
      break;
    case Op::CMP_EvGv: case Op::CMP_GvEv: case Op::CMP_EvIz: case Op::CMP_EvIb:
    case Op::TEST_EvGv: case Op::TEST_EvIz: case Op::TEST_EvIz1:
      *writes = false;
      break;
    default:
      return false;
  }
  const Native nat = native_of(i);
  return nat.ok && can_reencode(i, nat);
}

// Finds P ... F pairs in the decoded block (see Recipe).
void Emitter::plan_recipes(unsigned n) {
  recipes_.clear();
  recipe_for_.assign(n, -1);
  recipe_role_.assign(n, 0);
  for (unsigned k = 0; k + 1 < n; k++) {
    const Insn& p = pre_[k].i;
    bool writes, dest_is_reg, partial;
    if (!recipe_producer(p, &writes, &dest_is_reg, &partial)) continue;
    // P's operands that must not change before F (its destination is kept).
    const bool has_reg_src = native_of(p).reg_is_reg;  // r, r forms read ModRM.reg too
    auto conflicts = [&](unsigned r) {
      if (!writes) return r == p.rm || (has_reg_src && r == p.reg);
      if (dest_is_reg) return r == p.rm;  // P.reg is the destination
      return has_reg_src && r == p.reg;   // P.rm is the destination
    };
    for (unsigned j = k + 1; j < n; j++) {
      const Insn& x = pre_[j].i;
      if (bt_.interp_group_mask() & (1u << group_of(x))) break;
      unsigned written = ~0u;
      switch (x.op) {
        case Op::MOVZX_GvEb: case Op::MOVZX_GvEw: case Op::MOVSX_GvEb: case Op::MOVSX_GvEw:
        case Op::MOV_GvEv:
          if (!x.mem && x.osize == 4) written = x.reg;
          break;
        case Op::MOV_EvGv:
          if (!x.mem && x.osize == 4) written = x.rm;
          break;
        case Op::LEA:
          if (x.osize == 4) written = x.reg;
          break;
        case Op::MOV_rIv:
          if (x.osize == 4) written = x.opcode & 7;
          break;
        default: break;
      }
      if (written != ~0u) {
        if (conflicts(written)) break;
        continue;
      }
      // F: defines all six from a memory operand through the generic path.
      if (x.mem && x.asize == 4 && defines_all_flags(x) && x.op != Op::LEA) {
        const Native nat = native_of(x);
        if (nat.ok && !nat.reg_only && seg_native(x.seg) &&
            !direct_slow((b_->pa & ~u64(0xFFF)) | pre_[j].off) &&
            can_reencode(x, nat) && !((x.info().attrs & B) && nat.reg_is_reg && x.reg >= 4)) {
          recipe_for_[k] = int(recipes_.size());
          recipe_role_[k] = 1;
          recipe_for_[j] = int(recipes_.size());
          recipe_role_[j] = 2;
          recipes_.push_back(Recipe{p, pre_[k].bytes, writes, dest_is_reg, partial, j});
          bt_.bstats().flag_recipes++;
          k = j;  // not overlapping
        }
      }
      break;
    }
  }
}

// Runs P again on its operands as they were: the host flags become the
// guest's. Clobbers r10 (and r11 for a partial P).
void Emitter::emit_recipe(const Recipe& r) {
  if (r.partial) restore_flags();  // the flags P leaves are those before it, in Rt::hf
  Insn q = r.p;
  int reg_host = -1;
  if (r.stashed) {
    mov(r10d, dword[rsp + kStash]);
    const unsigned dest = r.dest_is_reg ? r.p.reg : r.p.rm;
    if (r.dest_is_reg) reg_host = 10;
    if (r.p.rm == dest) q.rm = 10;  // hreg(10) is r10 (a ModRM register operand)
    if (!r.dest_is_reg && native_of(r.p).reg_is_reg && r.p.reg == dest) reg_host = 10;
  }
  reencode(q, native_of(q), r.bytes, reg_host);
}

// The bit of the 32-bit guest register that register operand r names (a
// byte operand: AL..BH -> EAX..EBX).
static unsigned reg_bit(unsigned r, bool byte) { return 1u << (byte ? (r & 3) : r); }

// P of the loop flags: register-only, defines all six flags from its
// operands alone, and can be emitted again as it is. `reads`: the guest
// registers (32-bit numbers) it reads; `dest`: the one it writes, or ~0u.
bool Emitter::loop_producer(const Insn& p, unsigned* reads, unsigned* dest) {
  const OpInfo& info = p.info();
  if (p.mem || p.asize != 4 || !defines_all_flags(p) || (info.flags_read & ARITH)) return false;
  if (info.attrs & (SEN | PRV | IOI | FPU | MMX | STR | CT)) return false;
  const bool byte = info.attrs & B;
  const auto bit = reg_bit;
  *reads = 0;
  *dest = ~0u;
  bool writes = true;
  switch (p.op) {
    case Op::CMP_ALIb: case Op::CMP_eAXIz: case Op::TEST_ALIb: case Op::TEST_eAXIz:
      writes = false;
      [[fallthrough]];
    case Op::ADD_ALIb: case Op::ADD_eAXIz: case Op::OR_ALIb: case Op::OR_eAXIz:
    case Op::AND_ALIb: case Op::AND_eAXIz: case Op::SUB_ALIb: case Op::SUB_eAXIz:
    case Op::XOR_ALIb: case Op::XOR_eAXIz:
      *reads = 1u << EAX;
      if (writes) *dest = EAX;
      return true;
    default: break;
  }
  const Native nat = native_of(p);
  if (!nat.ok || !can_reencode(p, nat) || nat.rm == RM_W) return false;
  switch (p.op) {
    case Op::CMP_EbGb: case Op::CMP_EvGv: case Op::CMP_GbEb: case Op::CMP_GvEv:
    case Op::CMP_EbIb: case Op::CMP_EvIz: case Op::CMP_EbIb82: case Op::CMP_EvIb:
    case Op::TEST_EbGb: case Op::TEST_EvGv: case Op::TEST_EbIb: case Op::TEST_EbIb1:
    case Op::TEST_EvIz: case Op::TEST_EvIz1:
      writes = false;
      break;
    default: break;
  }
  const bool rm_byte = nat.rm_size == 1;
  *reads |= bit(p.rm, rm_byte);
  if (nat.reg_is_reg) *reads |= bit(p.reg, byte);
  if (writes) {
    if (nat.rm == RM_RW) *dest = rm_byte ? (p.rm & 3) : p.rm;
    else if (nat.reg_is_reg) *dest = byte ? (p.reg & 3) : p.reg;
    else return false;
  }
  return true;
}

// The guest registers (bit per 32-bit register) an instruction of a loop
// window may write; false for those it does not know.
bool Emitter::regs_written(const Insn& x, unsigned* mask) {
  const OpInfo& info = x.info();
  const bool byte = info.attrs & B;
  const auto bit = reg_bit;
  unsigned m = 0;
  const Native nat = native_of(x);
  if (nat.ok) {
    if (!x.mem && (nat.rm == RM_W || nat.rm == RM_RW)) m |= bit(x.rm, nat.rm_size == 1);
    switch (x.op) {
      case Op::ADD_GbEb: case Op::ADD_GvEv: case Op::OR_GbEb: case Op::OR_GvEv:
      case Op::ADC_GbEb: case Op::ADC_GvEv: case Op::SBB_GbEb: case Op::SBB_GvEv:
      case Op::AND_GbEb: case Op::AND_GvEv: case Op::SUB_GbEb: case Op::SUB_GvEv:
      case Op::XOR_GbEb: case Op::XOR_GvEv: case Op::MOV_GbEb: case Op::MOV_GvEv:
      case Op::MOVZX_GvEb: case Op::MOVZX_GvEw: case Op::MOVSX_GvEb: case Op::MOVSX_GvEw:
      case Op::IMUL_GvEv: case Op::IMUL_GvEvIz: case Op::IMUL_GvEvIb: case Op::CMOVCC:
      case Op::BSF: case Op::BSR: case Op::XCHG_EbGb: case Op::XCHG_EvGv:
      case Op::XADD_EbGb: case Op::XADD_EvGv:
        m |= bit(x.reg, byte);
        break;
      case Op::MUL_Eb: case Op::IMUL_Eb: m |= 1u << EAX; break;
      case Op::MUL_Ev: case Op::IMUL_Ev: m |= (1u << EAX) | (1u << EDX); break;
      case Op::CMPXCHG_EbGb: case Op::CMPXCHG_EvGv: case Op::CMPXCHG8B: return false;
      default: break;
    }
    *mask = m;
    return true;
  }
  switch (x.op) {
    case Op::LEA: m = 1u << x.reg; break;
    case Op::MOV_rIv: m = 1u << (x.opcode & 7); break;
    case Op::MOV_rbIb: m = bit(x.opcode & 7, true); break;
    case Op::MOV_eAXOv: case Op::MOV_ALOb: m = 1u << EAX; break;
    case Op::MOV_OveAX: case Op::MOV_ObAL: case Op::NOP: case Op::HINT_NOP: break;
    case Op::PUSH_r: case Op::PUSH_Iz: case Op::PUSH_Ib: case Op::PUSH_Ev: m = 1u << ESP; break;
    case Op::POP_r: m = (1u << ESP) | (1u << (x.opcode & 7)); break;
    case Op::CBW: m = 1u << EAX; break;
    case Op::CWD: m = 1u << EDX; break;
    case Op::XCHG_eAXr: m = (1u << EAX) | (1u << (x.opcode & 7)); break;
    case Op::BSWAP: m = 1u << (x.opcode & 7); break;
    default: return false;
  }
  *mask = m;
  return true;
}

// Decides whether the block gets loop flags (see loop_p_).
void Emitter::plan_loop(unsigned n) {
  loop_p_ = -1;
  loop_stash_ = -1;
  if (!bt_.options().chain || page2_ || n < 2 || !(b_->mode & M_CS_FLAT)) return;
  const unsigned mask = bt_.interp_group_mask();
  const Insn& j = pre_[n - 1].i;
  if ((j.op != Op::JCC_Jb && j.op != Op::JCC_Jz) || j.osize != 4 || (mask & (1u << group_of(j))))
    return;
  if (pre_[n - 1].eip + j.len + j.imm != b_->eip) return;
  const Insn& p = pre_[n - 2].i;
  unsigned reads, dest;
  if ((mask & (1u << group_of(p))) || !loop_producer(p, &reads, &dest)) return;
  unsigned w = 0;
  while (!defines_all_flags(pre_[w].i)) w++;  // P is one
  unsigned written = 0;
  for (unsigned k = 0; k <= w; k++) {
    const Insn& x = pre_[k].i;
    const OpInfo& info = x.info();
    if ((info.attrs & (CT | STR)) || is_callout_only(x) || x.asize != 4 || (info.flags_read & ARITH) ||
        (mask & (1u << group_of(x))))
      return;
    if (k == w) break;
    if (needs_flags(x) && !(recipe_role_[k] == 1 && recipes_[size_t(recipe_for_[k])].partial &&
                            recipes_[size_t(recipe_for_[k])].f == w))
      return;
    unsigned m;
    if (!regs_written(x, &m)) return;
    written |= m;
  }
  // P's operands as they are at the back edge: the one P writes, or one the
  // window overwrites, is kept aside.
  unsigned keep = reads & written;
  if (dest != ~0u) keep |= 1u << dest;
  if (keep & (keep - 1)) return;
  loop_stash_ = keep ? __builtin_ctz(keep) : -1;
  loop_p_ = int(n - 2);
  loop_w_ = w;
  bt_.bstats().loop_flags++;
}

// P again, on the kept register's value at the back edge (swapped in through
// r10 for the while).
void Emitter::emit_loop_p() { emit_p(unsigned(loop_p_), loop_stash_, dword[rsp + kLoopStash]); }

// Instruction idx (a loop_producer) again; stash_reg >= 0: that guest
// register's value is the one at [rsp + stash_off] (swapped in through r10).
void Emitter::emit_p(unsigned idx, int stash_reg, const Address& stash) {
  const Pre& pp = pre_[idx];
  const Insn& p = pp.i;
  if (stash_reg >= 0) {
    mov(r10, Reg64(hreg(unsigned(stash_reg))));
    mov(Reg32(hreg(unsigned(stash_reg))), stash);
  }
  const Native nat = native_of(p);
  if (nat.ok) {
    reencode(p, nat, pp.bytes);
  } else {
    // AL/eAX with an immediate: no ModRM, the same bytes in 64-bit mode.
    const bool byte = p.info().attrs & B;
    const unsigned imm_len = byte ? 1 : p.osize;
    if (!byte && p.osize == 2) db(0x66);
    db(p.opcode);
    for (unsigned k = 0; k < imm_len; k++) db(pp.bytes[p.len - imm_len + k]);
  }
  if (stash_reg >= 0) mov(Reg64(hreg(unsigned(stash_reg))), r10);
}

// An instruction that may run while the flags are P's recipe: translated
// inline without a call, reading no flags but through restore_flags (a Jcc
// may), writing none of `watch`.
bool Emitter::rcp_plain(const Insn& x, unsigned watch) const {
  const OpInfo& info = x.info();
  if (info.attrs & (SEN | PRV | IOI | FPU | MMX | STR)) return false;
  if ((info.attrs & CT) && x.op != Op::JCC_Jb && x.op != Op::JCC_Jz) return false;
  if (bt_.interp_group_mask() & (1u << group_of(x))) return false;
  if (x.asize != 4) return false;
  unsigned m = 0;
  if (!(info.attrs & CT) && !regs_written(x, &m)) return false;
  return !(m & watch);
}

// Whether a memory access (one that does not need the flags) comes after
// instruction k before anything reads, writes or must save the flags: then
// P at k keeps its destination in Rt::rcp_stash for a recipe.
bool Emitter::rcp_access_ahead(unsigned k) const {
  for (unsigned j = k + 1; j < n_; j++) {
    const Insn& x = pre_[j].i;
    const OpInfo& info = x.info();
    if ((info.flags_read & ARITH) || (info.flags_written & ARITH) || (info.attrs & (CT | SEN | PRV | IOI | FPU | MMX | STR)))
      return false;
    if (x.mem && x.op != Op::LEA) return true;
  }
  return false;
}

// Whether side exit `sd` may jump to the block's instruction t instead of
// leaving: nothing between them that the code from t on relies on (a flag
// recipe's stash, the loop flags' compare).
bool Emitter::join_ok(const Side& sd, unsigned t) const {
  if (recipe_role_[t] == 2) return false;
  for (unsigned j = sd.idx + 1; j < t; j++)
    if (recipe_role_[j] == 1 && recipes_[size_t(recipe_for_[j])].f >= t) return false;
  if (loop_p_ >= 0 && sd.idx < unsigned(loop_p_) && unsigned(loop_p_) < t) return false;
  return true;
}

// A register-only instruction translated inline that cannot fault and does
// not read the flags: no one can observe the flags while it runs.
bool Emitter::quiet_reg_op(const Insn& i) const {
  const OpInfo& info = i.info();
  if (info.attrs & (SEN | PRV | IOI | FPU | MMX | STR | CT)) return false;
  if (info.flags_read & ARITH) return false;
  if (bt_.interp_group_mask() & (1u << group_of(i))) return false;
  if (i.asize != 4) return false;
  switch (i.op) {
    case Op::LEA: return i.osize == 4;  // no access
    case Op::NOP: case Op::HINT_NOP: case Op::INC_r: case Op::DEC_r: case Op::MOV_rIv:
    case Op::XCHG_eAXr: case Op::MOV_rbIb: case Op::CBW: case Op::CWD:
    case Op::ADD_ALIb: case Op::ADD_eAXIz: case Op::OR_ALIb: case Op::OR_eAXIz:
    case Op::AND_ALIb: case Op::AND_eAXIz: case Op::SUB_ALIb: case Op::SUB_eAXIz:
    case Op::XOR_ALIb: case Op::XOR_eAXIz: case Op::CMP_ALIb: case Op::CMP_eAXIz:
    case Op::TEST_ALIb: case Op::TEST_eAXIz:
      return true;
    case Op::BSWAP: return i.osize == 4;
    default: break;
  }
  if (i.mem) return false;
  const Native nat = native_of(i);
  return nat.ok && can_reencode(i, nat);
}

// Instruction k writes some flags and leaves the rest as they were. If a
// later instruction of the block defines all six before anything can read or
// observe them (a flag reader, a memory access or other possible fault, a
// callout, the end of the block), the flags after k are dead and k may run on
// whatever the host's flags are.
bool Emitter::partial_output_dead(unsigned k, unsigned n) const {
  const Insn& i = pre_[k].i;
  if (!needs_flags(i) || (i.info().flags_read & ARITH) || is_callout_only(i)) return false;
  if (i.mem) {
    // Its own access may fault: the flags before it must then be in Rt::hf
    // (parked), which the caller's clobbering check keeps.
    if (fl_ != Fl::parked) return false;
  } else if (!quiet_reg_op(i)) {
    return false;
  }
  for (unsigned j = k + 1; j < n; j++) {
    const Insn& x = pre_[j].i;
    if (!quiet_reg_op(x)) return false;
    if (defines_all_flags(x)) return true;
    if (x.info().flags_written & ARITH) {
      if (!needs_flags(x)) return false;  // not expected: a writer neither full nor partial
    }
  }
  return false;
}

void Emitter::rep_string(const Insn& i, u32 eip, u64 pa, unsigned size) {
  // SCAS and CMPS compare (they stop on the flags and leave them);
  // MOVS and CMPS have a source operand.
  const bool cmps = i.op == Op::CMPSB;
  const bool scas = i.op == Op::SCASB || cmps;
  const bool movs = i.op == Op::MOVSB || i.op == Op::MOVSV || cmps;
  const unsigned shift = size == 4 ? 2 : 0;
  // The guest flags go to Rt::hf: the checks below clobber the host's, and a
  // fault on the first element must see them. REPNE SCASB with ECX = 0 keeps
  // them: it needs them in the host's too.
  if (scas && fl_ == Fl::parked) restore_flags();
  save_flags();
  u32 zero;
  if (scas) {
    // ECX = 0 changes nothing, the flags included.
    db(0x67); db(0xE3); db(5);  // jecxz over the jmp
    const u32 go = jmp32();
    zero = jmp32();
    bind(go);
  } else {
    test(ecx, ecx);
    zero = jcc32(4);  // jz
  }
  // From here on at least one element is done: the flags before are dead.
  // (Checked lookups even with paging off: a fault inside the host's REP
  // would find guest registers already replaced.)
  const u32 again = here();  // MOVS/STOS go on with the next page from here
  Slow* src = nullptr;
  in_rep_ = true;
  if (movs) {
    src = &mem_access(i, eip, pa, i.seg, size, false, Site::A_ESI, true);
    mov(qword[rsp - 16], r8);
  }
  Slow& dst = mem_access(i, eip, pa, ES, size, !scas, Site::A_EDI, true);
  // (A comparison reads both: neither is written.)
  in_rep_ = false;
  // r9d = elements to do here: min(ECX, room in the page(s)).
  room(r9d, edi, ES, size);
  if (movs) {
    room(r10d, esi, i.seg, size);
    cmp(r10d, r9d);
    cmovb(r9d, r10d);
  }
  cmp(ecx, r9d);
  cmovb(r9d, ecx);
  // ... and not past the next yield point (ECX a multiple of 65536).
  lea(r10d, ptr[rcx - 1]);
  movzx(r10d, r10w);
  inc(r10d);
  cmp(r10d, r9d);
  cmovb(r9d, r10d);
  mov(r10d, ecx);  // guest ECX
  mov(r11d, edi);  // guest EDI
  if (movs) {
    mov(qword[rsp - 8], rsi);  // guest ESI
    mov(rsi, qword[rsp - 16]);
  }
  mov(rdi, r8);
  mov(ecx, r9d);
  if (scas) {
    if (cmps) {
      db((i.prefixes & P_REPNE) ? 0xF2 : 0xF3); db(0xA6);  // repe/repne cmpsb
    } else {
      db(0xF2); db(0xAE);  // repne scasb
    }
    // Flag-free: d = n - remaining; (ESI += d;) EDI += d; ECX -= d.
    not_(ecx);
    lea(r8d, ptr[r9 + rcx + 1]);
    if (cmps) {
      mov(rsi, qword[rsp - 8]);
      lea(esi, ptr[rsi + r8]);
    }
    lea(edi, ptr[r11 + r8]);
    not_(r8d);
    lea(ecx, ptr[r10 + r8 + 1]);
    fl_ = Fl::dirty;  // the last compare's flags
  } else {
    db(0xF3);
    if (size == 4) db(movs ? 0xA5 : 0xAB);
    else db(movs ? 0xA4 : 0xAA);
    if (movs) {
      mov(rsi, qword[rsp - 8]);
      lea(esi, ptr[rsi + r9 * (1 << shift)]);
    }
    lea(edi, ptr[r11 + r9 * (1 << shift)]);
    sub(r10d, r9d);
    mov(ecx, r10d);
  }
  // Unfinished (the page ended first): the semantics go on from here.
  Slow& more = new_slow();
  more.site = new_site(i, eip, pa, false, false);
  more.site->rep_resume = true;
  if (scas) {
    // Stopped on the compare: REPNE when equal, REPE when not.
    const u32 found = jcc32((i.prefixes & P_REPNE) ? 4 : 5);  // jz / jnz
    db(0x67); db(0xE3); db(5);   // jecxz over the jmp: ECX ran out
    more.entry_fix = jmp32();
    more.parked = false;  // the host flags are the guest's
    bind(found);
  } else {
    // Not finished: the next page(s) the same way, unless ECX is at a
    // yield point (a non-zero multiple of 65536: the semantics stop there).
    test(ecx, ecx);
    const u32 fin = jcc32(4);   // jz
    test(cx, cx);
    more.entry_fix = jcc32(4);  // jz: a yield point
    jmp_back(again);
    bind(fin);
    more.parked = true;
    fl_ = Fl::parked;
  }
  bind(zero);
  // Every path arrives with the flags valid where fl_ says: REPNE SCASB in
  // the host's (ECX = 0 kept them there and in Rt::hf); MOVS/STOS in Rt::hf.
  more.done = here();
  dst.done = here();
  if (src) src->done = here();
}

Emitter::Done Emitter::insn(const Insn& i, const u8* bytes, u32 eip, u64 pa) {
  const OpInfo& info = i.info();
  const u32 next = eip + i.len;
  const u32 group_bit = 1u << group_of(i);
  const bool interp_only = bt_.interp_group_mask() & group_bit;
  const bool flat_cs = b_->mode & M_CS_FLAT;
  auto& st = bt_.bstats();

  // PUSHF (never in virtual-8086 mode here): EFLAGS with the guest's
  // arithmetic flags from Rt::hf, VM and RF clear.
  if (i.op == Op::PUSHF && i.osize == 4 && stack_ok() && !direct_slow(pa) && !interp_only) {
    st.native_insns++;
    save_flags();
    Slow& s = mem_access(i, eip, pa, SS, 4, true, Site::A_PUSH, true);
    mov(r9d, dword[r15 + kEflagsOff]);
    and_(r9d, ~u32(ARITH | VM | RF));
    movzx(r10d, byte[r14 + kHfOff + 1]);
    and_(r10d, 0xD5);
    or_(r9d, r10d);
    movzx(r10d, byte[r14 + kHfOff]);
    and_(r10d, 1);
    shl(r10d, 11);
    or_(r9d, r10d);
    mov(dword[r8], r9d);
    lea(r12d, ptr[r12 - 4]);
    s.done = here();
    return Done::next;
  }
  // PUSH of a segment register: the selector into the low 16 bits of the new
  // stack slot (current CPUs leave the upper half as it was).
  if ((i.op == Op::PUSH_ES || i.op == Op::PUSH_CS || i.op == Op::PUSH_SS || i.op == Op::PUSH_DS ||
       i.op == Op::PUSH_FS || i.op == Op::PUSH_GS) &&
      i.osize == 4 && stack_ok() && !direct_slow(pa) && !interp_only) {
    const unsigned sreg = i.op == Op::PUSH_ES ? ES : i.op == Op::PUSH_CS ? CS : i.op == Op::PUSH_SS ? SS
                        : i.op == Op::PUSH_DS ? DS : i.op == Op::PUSH_FS ? FS : GS;
    st.native_insns++;
    Slow& s = mem_access(i, eip, pa, SS, 2, true, Site::A_PUSH);
    mov(r9w, seg_field(sreg, kSelOff, 2));
    mov(word[r8], r9w);
    lea(r12d, ptr[r12 - 4]);
    s.done = here();
    return Done::next;
  }
  // RDTSC at CPL 0 (never faults there): a thin call for the time, the
  // instructions of the block before it counted as retired.
  if (i.op == Op::RDTSC && (b_->mode & M_CPL) == 0 && !interp_only) {
    st.native_insns++;
    save_flags();
    db(0x41); db(0xB8);  // mov r8d, imm32: the block's instructions from this one on
    rest_fix_.emplace_back(here(), idx_);
    dd(0);
    if (lazy_ && fl_ == Fl::parked) materialize();  // (the call may overwrite the stash)
    if (rcp_ >= 0) throw Error("bt: internal error: a flag recipe across RDTSC");
    call_abs(stubs_.tsc);
    fl_ = Fl::parked;
    return Done::next;
  }
  // VERW of an absolute memory operand at CPL 0 (Linux runs `verw
  // %cs:mds_verw_sel` at every return to user mode: the virtual CPU is one
  // it deems MDS-affected): a thin call (no callout) reads the selector and
  // checks its descriptor as the semantics do; only ZF changes. Where that
  // faults (answer 2) the slow path runs the instruction and takes the fault.
  if (i.op == Op::VERW && i.mem && i.base == kNoReg && i.index == kNoReg && (b_->mode & M_CPL) == 0 &&
      !interp_only) {
    st.native_insns++;
    save_flags();
    if (lazy_ && fl_ == Fl::parked) materialize();
    if (rcp_ >= 0) throw Error("bt: internal error: a flag recipe across VERW");
    Slow& s = new_slow();
    s.site = new_site(i, eip, pa, false, true);
    s.site->seg = u8(i.seg);
    s.site->size = 2;
    s.site->write = false;
    s.site->addr = Site::A_EA;
    s.parked = true;
    mov(r8, reinterpret_cast<uintptr_t>(s.site));
    call_abs(stubs_.verw);
    cmp(r9d, 2);
    s.entry_fix3 = jcc32(4);  // je
    shl(r9d, 6);               // ZF's place in AH
    and_(byte[r14 + kHfOff + 1], u8(~0x40));
    or_(byte[r14 + kHfOff + 1], r9b);
    fl_ = Fl::parked;
    s.done = here();
    return Done::next;
  }
  // CLI at CPL 0 (always allowed there): clear IF. Clearing it never makes an
  // interrupt deliverable, so the block goes on.
  if (i.op == Op::CLI && (b_->mode & M_CPL) == 0 && !interp_only) {
    st.native_insns++;
    save_flags();
    and_(dword[r15 + kEflagsOff], ~u32(IF));
    fl_ = Fl::parked;
    return Done::next;
  }
  // POPF at CPL 0 (32-bit, flat stack): the arithmetic flags and IF from the
  // stack when no other flag changes, RF is clear and it raises no
  // interrupt (IF set with the interrupt line up); else the semantics.
  if (i.op == Op::POPF && i.osize == 4 && (b_->mode & M_CPL) == 0 && stack_ok() &&
      !direct_slow(pa) && !interp_only) {
    st.native_insns++;
    save_flags();
    Slow& s = mem_access(i, eip, pa, SS, 4, false, Site::A_POP, true);
    s.site->mode_check = true;  // the slow path is the one that changes DF
    const u32 fix_same = kFlagsWritable & ~u32(ARITH | IF);
    mov(r9d, dword[r8]);                    // new
    mov(r10d, dword[r15 + kEflagsOff]);     // old
    mov(r11d, r9d);
    xor_(r11d, r10d);
    test(r11d, fix_same);
    const u32 other = jcc32(5);             // jnz: another flag changes
    test(r10d, RF);
    const u32 rf = jcc32(5);
    and_(r11d, r9d);                        // bits set now that were clear
    test(r11d, IF);
    const u32 same_if = jcc32(4);           // jz
    cmp(byte[r15 + kIntrLineOff], 0);
    const u32 irq = jcc32(5);               // jnz: an interrupt becomes deliverable
    bind(same_if);
    and_(r10d, ~u32(ARITH | IF));
    mov(r11d, r9d);
    and_(r11d, u32(ARITH | IF));
    or_(r10d, r11d);
    mov(dword[r15 + kEflagsOff], r10d);
    // Rt::hf: (SF ZF AF PF CF | 2) << 8 | OF.
    mov(r10d, r9d);
    and_(r10d, 0xD5);
    or_(r10d, 2);
    shl(r10d, 8);
    bt(r9d, 11);
    setc(r10b);
    mov(word[r14 + kHfOff], r10w);
    lea(r12d, ptr[r12 + 4]);
    fl_ = Fl::parked;
    Slow& more = also_slow(s.site, other);
    more.entry_fix2 = rf;
    Slow& more2 = also_slow(s.site, irq);
    s.done = more.done = more2.done = here();
    return Done::next;
  }
  // STI at CPL 0 with no interrupt requested, not last in the block: set IF.
  // Its shadow then has no effect: no dispatcher runs before the next
  // instruction ends, and a callout that raises the line there delivers the
  // interrupt after that instruction, as the shadow would.
  if (i.op == Op::STI && (b_->mode & M_CPL) == 0 && idx_ + 1 < n_ && !interp_only) {
    st.native_insns++;
    save_flags();
    Slow& s = new_slow();
    s.site = new_site(i, eip, pa, false, false);
    s.parked = true;
    cmp(byte[r15 + kIntrLineOff], 0);
    s.entry_fix = jcc32(5);  // jnz: the semantics (and the shadow)
    or_(dword[r15 + kEflagsOff], u32(IF));
    fl_ = Fl::parked;
    s.done = here();
    return Done::next;
  }
  // MOV ES/DS/FS/GS, r16 at CPL 0: a load the semantics did before (Rt's
  // SegLoad), of a GDT descriptor that still reads the same, giving this
  // block's mode, is repeated by copying its result.
  if (i.op == Op::MOV_SwEw && (b_->mode & M_CPL) == 0 && !interp_only &&
      (i.reg == ES || i.reg == DS || i.reg == FS || i.reg == GS) &&
      (!i.mem || (i.asize == 4 && seg_native(i.seg) && !direct_slow(pa)))) {
    st.native_insns++;
    save_flags();
    fl_ = Fl::parked;
    Slow* rd = nullptr;
    if (i.mem) {
      rd = &mem_access(i, eip, pa, i.seg, 2, false, Site::A_EA, true);
      rd->site->mode_check = true;
      movzx(r11d, word[r8]);
    } else {
      movzx(r11d, Reg16(hreg(i.rm)));
    }
    Slow& s = new_slow();
    s.site = new_site(i, eip, pa, false, false);
    s.parked = true;
    constexpr int kLoads = int(offsetof(Rt, seg_loads));
    constexpr int kSel = kLoads + int(offsetof(SegLoad, sel));
    constexpr int kFlat = kLoads + int(offsetof(SegLoad, flat));
    constexpr int kRaw = kLoads + int(offsetof(SegLoad, raw));
    constexpr int kSeg = kLoads + int(offsetof(SegLoad, seg));
    xor_(r9d, r9d);  // a null selector reads no descriptor (remembered as 0)
    test(r11d, 0xFFFC);
    const u32 null_sel = jcc32(4);  // jz
    mov(r8d, r11d);
    and_(r8d, 0xFFF8);
    movzx(r9d, word[r15 + int(offsetof(CpuState, gdtr) + offsetof(TableReg, limit))]);
    lea(r10d, ptr[r8 + 7]);
    cmp(r10d, r9d);
    s.entry_fix2 = jcc32(7);  // ja: past the GDT's limit
    add(r8d, dword[r15 + int(offsetof(CpuState, gdtr) + offsetof(TableReg, base))]);
    const u32 miss = lookup(8, false, true);
    mov(r9, qword[r8]);
    bind(null_sel);
    mov(r10d, r11d);  // the remembered load for this selector's slot
    and_(r10d, 0x38);
    shl(r10d, 2);
    cmp(r11d, dword[r14 + r10 + kSel]);
    const u32 other_sel = jcc32(5);
    cmp(r9, qword[r14 + r10 + kRaw]);
    const u32 other_desc = jcc32(5);
    const unsigned shift = 4 + 2 * i.reg;
    auto copy = [&] {
      mov(r9, qword[r14 + r10 + kSeg]);
      mov(qword[r15 + kSegOff + int(i.reg * sizeof(Segment))], r9);
      mov(r9, qword[r14 + r10 + kSeg + 8]);
      mov(qword[r15 + kSegOff + int(i.reg * sizeof(Segment)) + 8], r9);
    };
    if (i.reg == GS) {
      // Not in the mode: the block goes on, its GS accesses read Rt::gs_slow.
      copy();
      movzx(r9d, byte[r14 + r10 + kFlat]);
      and_(r9d, 1);
      xor_(r9d, 1);
      mov(dword[r14 + int(offsetof(Rt, gs_slow))], r9d);
    } else {
      cmp(byte[r14 + r10 + kFlat], u8((b_->mode >> shift) & 3));
      const u32 changed = jcc32(5);  // jne: another mode
      copy();
      if (bt_.options().chain && (b_->mode & M_CS_FLAT) && b_->cs_base == 0) {
        // The mode changes (FS between the kernel's per-CPU segment and the
        // user's null one on every system call): the block ends here and the
        // translation for the new mode is looked up in the jump cache.
        const u32 over = jmp32();
        bind(changed);
        copy();
        add_unrun(idx_);  // the prologue counted the rest of the block
        movzx(r8d, byte[r14 + r10 + kFlat]);
        shl(r8d, u8(shift));
        or_(r8d, b_->mode & ~(3u << shift));
        shl(r8, 32);
        mov(r9d, eip + i.len);
        jc_lookup(true);
        bind(over);
      } else {
        s.entry_fix = changed;  // the semantics, then the dispatcher
      }
    }
    if (s.entry_fix == kNone) s.entry_fix = miss;
    else also_slow(s.site, miss);
    for (u32 f : {other_desc, other_sel}) also_slow(s.site, f);
    const u32 done = here();
    for (Slow* p = &s; p <= &slows_.back(); p++) p->done = done;
    if (rd) rd->done = done;
    return Done::next;
  }
  // Sensitive instructions call the semantics. Those that do not transfer
  // control continue in the block unless the callout finds the mode, the TLB,
  // TF, the interrupt shadow or a deliverable interrupt changed.
  if (info.attrs & (SEN | PRV | IOI)) return callout(i, eip, pa, info.attrs & CT);
  // With DF in the translation's mode, CLD/STD that keep it are no-ops.
  if ((i.op == Op::CLD && !(b_->mode & M_DF)) || (i.op == Op::STD && (b_->mode & M_DF))) {
    st.native_insns++;
    return Done::next;
  }
  // REP MOVS/STOS, REPNE SCASB and REPE/REPNE CMPSB forward: the host's own string instruction
  // over the part that lies in one page of each operand; MOVS/STOS then go on
  // with the next pages, the comparisons continue through the semantics.
  // (Base-0 segments only: a chunk then never wraps past offset 4 GiB unseen.)
  if (!interp_only && i.rep() && i.asize == 4 && !(b_->mode & M_DF) && !direct_slow(pa) &&
      (b_->mode & m_base0(ES)) &&
      (((i.op == Op::MOVSB || i.op == Op::MOVSV) && (b_->mode & m_base0(i.seg))) ||
       i.op == Op::STOSB || i.op == Op::STOSV ||
       (i.op == Op::SCASB && (i.prefixes & P_REPNE)) ||
       (i.op == Op::CMPSB && (b_->mode & m_base0(i.seg)))) &&
      ((info.attrs & B) || i.osize == 4)) {
    st.native_insns++;
    rep_string(i, eip, pa, (info.attrs & B) ? 1 : 4);
    return Done::next;
  }
  // One SCAS: compare AL/AX/EAX with ES:[EDI], step EDI.
  if (!interp_only && (i.op == Op::SCASB || i.op == Op::SCASV) && !i.rep() && i.asize == 4 &&
      !direct_slow(pa) && seg_native(ES)) {
    st.native_insns++;
    const unsigned size = (info.attrs & B) ? 1 : i.osize;
    Slow& s = mem_access(i, eip, pa, ES, size, false, Site::A_EDI);
    if (size == 2) db(0x66);
    db(0x41);
    db(size == 1 ? 0x3A : 0x3B);  // cmp al/ax/eax, [r8]
    db(0x00);
    fl_ = Fl::dirty;
    lea(edi, ptr[rdi + ((b_->mode & M_DF) ? -int(size) : int(size))]);
    s.done = here();
    return Done::next;
  }
  // Single (not REP) string moves, stores and loads, 32-bit addressing.
  if (!interp_only && (i.op == Op::MOVSB || i.op == Op::MOVSV || i.op == Op::STOSB ||
                       i.op == Op::STOSV || i.op == Op::LODSB || i.op == Op::LODSV) &&
      !i.rep() && i.asize == 4 && !direct_slow(pa) && seg_native(ES) &&
      (i.op == Op::STOSB || i.op == Op::STOSV || seg_native(i.seg))) {
    st.native_insns++;
    const unsigned size = (info.attrs & B) ? 1 : i.osize;
    const int step = (b_->mode & M_DF) ? -int(size) : int(size);
    const bool load = i.op != Op::STOSB && i.op != Op::STOSV;
    const bool store = i.op != Op::LODSB && i.op != Op::LODSV;
    Slow* s1 = nullptr;
    Slow* s2 = nullptr;
    auto val = [&](int r) -> const Xbyak::Reg& {
      static const Reg8 b8[] = {Reg8(0), Reg8(9), Reg8(10)};
      static const Reg16 b16[] = {Reg16(0), Reg16(9), Reg16(10)};
      static const Reg32 b32[] = {Reg32(0), Reg32(9), Reg32(10)};
      return size == 1 ? static_cast<const Xbyak::Reg&>(b8[r]) : size == 2 ? static_cast<const Xbyak::Reg&>(b16[r])
                                                                   : static_cast<const Xbyak::Reg&>(b32[r]);
    };
    if (load) {
      s1 = &mem_access(i, eip, pa, i.seg, size, false, Site::A_ESI);
      if (store) {
        // Keep the value in rax's slot on the host stack (red zone): r9-r11 are the lookup's.
        if (size == 1) { movzx(r9d, byte[r8]); }
        else if (size == 2) { movzx(r9d, word[r8]); }
        else { mov(r9d, dword[r8]); }
        mov(dword[rsp - 8], r9d);
      } else {
        mov(val(0), size == 1 ? static_cast<const Operand&>(byte[r8])
                              : size == 2 ? static_cast<const Operand&>(word[r8])
                                          : static_cast<const Operand&>(dword[r8]));
      }
    }
    if (store) {
      s2 = &mem_access(i, eip, pa, ES, size, true, Site::A_EDI);
      if (load) {
        mov(r9d, dword[rsp - 8]);
        mov(size == 1 ? static_cast<const Operand&>(byte[r8]) : size == 2 ? static_cast<const Operand&>(word[r8])
                                                                          : static_cast<const Operand&>(dword[r8]),
            val(1));
      } else {
        mov(size == 1 ? static_cast<const Operand&>(byte[r8]) : size == 2 ? static_cast<const Operand&>(word[r8])
                                                                          : static_cast<const Operand&>(dword[r8]),
            val(0));
      }
      lea(edi, ptr[rdi + step]);
    }
    if (load) lea(esi, ptr[rsi + step]);
    if (s1) s1->done = here();
    if (s2) s2->done = here();
    return Done::next;
  }
  if (interp_only || (info.attrs & (FPU | MMX | STR))) return callout(i, eip, pa, info.attrs & CT);
  if (i.asize != 4) return callout(i, eip, pa, info.attrs & CT);
  const bool mem_native = !i.mem || (seg_native(i.seg) && !direct_slow(pa));

  // Control transfers.
  if (info.attrs & CT) {
    if (i.osize != 4 || !flat_cs) return callout(i, eip, pa, true);
    // Those with a memory access save the flags first, as their exit must:
    // the access then uses the short check (not the flag-free one).
    if (i.op == Op::CALL_Jz || i.op == Op::RET || i.op == Op::RET_Iw ||
        (i.op == Op::JMP_Ev && i.mem) || i.op == Op::CALL_Ev)
      save_flags();
    switch (i.op) {
      case Op::JMP_Jb: case Op::JMP_Jz:
        st.native_insns++;
        exit_direct(next + i.imm);
        return Done::ended;
      case Op::JCC_Jb: case Op::JCC_Jz: {
        st.native_insns++;
        if (idx_ + 1 < n_) {
          // A side exit: the block goes on with the next instruction, the
          // guest flags still in the host's; the exit is out of line.
          Side& sd = sides_.emplace_back();
          sd.fix = jcc32(i.opcode & 15);
          sd.target = next + i.imm;
          sd.idx = idx_;
          sd.fl = fl_;
          sd.lazy = lazy_;
          return Done::next;
        }
        if (loop_p_ >= 0 && int(idx_) == loop_p_ + 1) {
          // The loop's back edge: the flags stay P's (see loop_p_).
          mov(byte[r14 + kLoopLazyOff], 1);
          bind_to(jcc32(i.opcode & 15), loop_body_);
          exit_direct(next);
          return Done::ended;
        }
        save_flags();
        const u32 taken = jcc32(i.opcode & 15);
        exit_direct(next);
        bind(taken);
        exit_direct(next + i.imm, taken);  // flags saved: the slot comes first
        return Done::ended;
      }
      case Op::CALL_Jz: {
        if (!stack_ok() || direct_slow(pa)) break;
        st.native_insns++;
        Slow& s = mem_access(i, eip, pa, SS, 4, true, Site::A_PUSH);
        mov(dword[r8], next);
        lea(r12d, ptr[r12 - 4]);
        s.done = here();
        exit_direct(next + i.imm);
        return Done::ended;
      }
      case Op::RET: case Op::RET_Iw: {
        if (!stack_ok() || direct_slow(pa)) break;
        st.native_insns++;
        Slow& s = mem_access(i, eip, pa, SS, 4, false, Site::A_POP);
        mov(r9d, dword[r8]);
        lea(r12d, ptr[r12 + 4 + int(i.op == Op::RET_Iw ? (i.imm & 0xFFFF) : 0)]);
        exit_indirect_after(s);
        return Done::ended;
      }
      case Op::JMP_Ev: {
        if (!i.mem) {
          st.native_insns++;
          mov(r9d, Reg32(hreg(i.rm)));
          exit_indirect();
          return Done::ended;
        }
        if (!mem_native) break;
        st.native_insns++;
        Slow& s = mem_access(i, eip, pa, i.seg, 4, false, Site::A_EA);
        mov(r9d, dword[r8]);
        exit_indirect_after(s);
        return Done::ended;
      }
      case Op::CALL_Ev: {
        if (i.mem) {
          if (!stack_ok() || !mem_native) break;
          st.native_insns++;
          auto [s1, s2] = operand_then_push_slot(i, eip, pa);
          mov(dword[r8], next);
          mov(r9d, dword[rsp - 8]);
          lea(r12d, ptr[r12 - 4]);
          exit_indirect_after(*s2);
          s1->done = s2->done;
          return Done::ended;
        }
        if (!stack_ok() || direct_slow(pa)) break;
        st.native_insns++;
        Slow& s = mem_access(i, eip, pa, SS, 4, true, Site::A_PUSH);
        mov(dword[r8], next);
        mov(r9d, Reg32(hreg(i.rm)));
        lea(r12d, ptr[r12 - 4]);
        exit_indirect_after(s);
        return Done::ended;
      }
      default: break;
    }
    return callout(i, eip, pa, true);
  }

  // BT/BTS/BTR/BTC m32, r32: the operand is the dword at EA + 4 * (offset
  // >> 5) (signed), the bit offset & 31 in it; the host's instruction on
  // that dword with the masked offset.
  if ((i.op == Op::BT_EvGv || i.op == Op::BTS_EvGv || i.op == Op::BTR_EvGv || i.op == Op::BTC_EvGv) &&
      i.mem && i.osize == 4 && mem_native && !i.rep() && !(i.prefixes & P_LOCK)) {
    st.native_insns++;
    const Reg32 off(hreg(i.reg));
    save_flags();
    fl_ = Fl::parked;
    mov(r10d, off);
    sar(r10d, 5);
    bt_index_ = true;
    Slow& s = mem_access(i, eip, pa, i.seg, 4, i.op != Op::BT_EvGv, Site::A_EA, true);
    bt_index_ = false;
    mov(r9d, off);
    and_(r9d, 31);
    restore_flags();  // the flags BT leaves are the guest's
    db(0x45); db(0x0F);
    db(i.op == Op::BT_EvGv ? 0xA3 : i.op == Op::BTS_EvGv ? 0xAB : i.op == Op::BTR_EvGv ? 0xB3 : 0xBB);
    db(0x08);  // [r8], r9d
    fl_ = Fl::dirty;
    s.done = here();
    return Done::next;
  }

  // Stack operations.
  switch (i.op) {
    case Op::PUSH_Ev:
      if (!i.mem) goto push;
      if (i.osize != 4 || !stack_ok() || !mem_native) break;
      {
        st.native_insns++;
        auto [s1, s2] = operand_then_push_slot(i, eip, pa);
        mov(r9d, dword[rsp - 8]);
        mov(dword[r8], r9d);
        lea(r12d, ptr[r12 - 4]);
        s1->done = s2->done = here();
        return Done::next;
      }
    case Op::PUSH_r: case Op::PUSH_Iz: case Op::PUSH_Ib:
    push: {
      if (i.osize != 4 || !stack_ok() || direct_slow(pa)) break;
      st.native_insns++;
      Slow& s = mem_access(i, eip, pa, SS, 4, true, Site::A_PUSH);
      if (i.op == Op::PUSH_r) mov(dword[r8], Reg32(hreg(i.opcode & 7)));
      else if (i.op == Op::PUSH_Ev) mov(dword[r8], Reg32(hreg(i.rm)));
      else mov(dword[r8], i.imm);
      lea(r12d, ptr[r12 - 4]);
      s.done = here();
      return Done::next;
    }
    case Op::POP_r: case Op::POP_Ev: {
      if (i.osize != 4 || !stack_ok() || direct_slow(pa) || (i.op == Op::POP_Ev && i.mem)) break;
      st.native_insns++;
      Slow& s = mem_access(i, eip, pa, SS, 4, false, Site::A_POP);
      mov(r9d, dword[r8]);
      lea(r12d, ptr[r12 + 4]);
      mov(Reg32(hreg(i.op == Op::POP_r ? (i.opcode & 7) : i.rm)), r9d);
      s.done = here();
      return Done::next;
    }
    case Op::LEAVE: {
      if (i.osize != 4 || !stack_ok() || direct_slow(pa)) break;
      st.native_insns++;
      Slow& s = mem_access(i, eip, pa, SS, 4, false, Site::A_EBP);
      mov(r9d, dword[r8]);
      lea(r12d, ptr[rbp + 4]);
      mov(ebp, r9d);
      s.done = here();
      return Done::next;
    }
    case Op::LEA: {
      if (i.osize != 4) break;
      st.native_insns++;
      RegExp e;
      bool any = false;
      if (i.base != kNoReg) { e = RegExp(Reg64(hreg(i.base))); any = true; }
      if (i.index != kNoReg) {
        RegExp ix = Reg64(hreg(i.index)) * (1 << i.scale);
        e = any ? e + ix : ix;
        any = true;
      }
      if (any) lea(Reg32(hreg(i.reg)), ptr[e + i32(i.disp)]);
      else mov(Reg32(hreg(i.reg)), i.disp);
      return Done::next;
    }
    case Op::NOP: case Op::HINT_NOP:
      st.native_insns++;
      return Done::next;
    case Op::INC_r: case Op::DEC_r: {
      st.native_insns++;
      const int r = hreg(i.opcode & 7);
      if (i.osize == 2) db(0x66);
      if (r >= 8) db(0x41);
      db(0xFF);
      db(u8(0xC0 | ((i.op == Op::DEC_r ? 1 : 0) << 3) | (r & 7)));
      fl_ = Fl::dirty;
      return Done::next;
    }
    case Op::MOV_rIv: case Op::XCHG_eAXr: case Op::BSWAP: {
      if (i.op == Op::BSWAP && i.osize != 4) break;
      st.native_insns++;
      const int r = hreg(i.opcode & 7);
      if (i.osize == 2) db(0x66);
      if (r >= 8) db(0x41);
      if (i.map == 1) db(0x0F);
      db(u8((i.opcode & ~7) | (r & 7)));
      if (i.op == Op::MOV_rIv)
        for (unsigned k = 0; k < i.osize; k++) db(bytes[i.len - i.osize + k]);
      return Done::next;
    }
    case Op::MOV_rbIb: case Op::CBW: case Op::CWD: case Op::CMC: case Op::CLC: case Op::STC:
    case Op::SAHF: case Op::LAHF:
    case Op::ADD_ALIb: case Op::ADD_eAXIz: case Op::OR_ALIb: case Op::OR_eAXIz:
    case Op::ADC_ALIb: case Op::ADC_eAXIz: case Op::SBB_ALIb: case Op::SBB_eAXIz:
    case Op::AND_ALIb: case Op::AND_eAXIz: case Op::SUB_ALIb: case Op::SUB_eAXIz:
    case Op::XOR_ALIb: case Op::XOR_eAXIz: case Op::CMP_ALIb: case Op::CMP_eAXIz:
    case Op::TEST_ALIb: case Op::TEST_eAXIz: {
      // No ModRM, no ESP: the guest bytes after the prefixes run as they are.
      st.native_insns++;
      const unsigned imm_len =
          info.imm == I_B ? 1 : info.imm == I_Z ? (i.osize == 2 ? 2 : 4) : 0;
      if (i.osize == 2 && !(info.attrs & B)) db(0x66);
      db(i.opcode);
      for (unsigned k = 0; k < imm_len; k++) db(bytes[i.len - imm_len + k]);
      if (info.flags_written & ARITH) fl_ = Fl::dirty;
      return Done::next;
    }
    case Op::MOV_ALOb: case Op::MOV_eAXOv: case Op::MOV_ObAL: case Op::MOV_OveAX: {
      if (!seg_native(i.seg) || direct_slow(pa)) break;  // no ModRM: i.mem is false
      // As MOV AL/eAX <-> [moffs] through the generic path.
      Insn m = i;
      const bool load = i.op == Op::MOV_ALOb || i.op == Op::MOV_eAXOv;
      const bool byte = info.attrs & B;
      m.op = load ? (byte ? Op::MOV_GbEb : Op::MOV_GvEv) : (byte ? Op::MOV_EbGb : Op::MOV_EvGv);
      m.opcode = load ? (byte ? 0x8A : 0x8B) : (byte ? 0x88 : 0x89);
      m.mem = true;
      m.reg = 0;
      m.base = m.index = kNoReg;
      st.native_insns++;
      const unsigned size = byte ? 1 : i.osize;
      direct_fold_ok_ = true;
      Slow& s = mem_access(i, eip, pa, i.seg, size, !load, Site::A_MOFFS);  // moffs is in imm
      direct_fold_ok_ = false;
      Native n;
      n.ok = true;
      n.rm = load ? RM_R : RM_W;
      n.rm_size = u8(size);
      n.reg_is_reg = true;
      reencode(m, n, bytes);  // MOV has no immediate: nothing read from bytes
      s.done = here();
      return Done::next;
    }
    default: break;
  }

  const Native n = native_of(i);
  if (n.ok && !(n.reg_only && i.mem) && mem_native) {
    const bool byte_op = info.attrs & B;
    if (i.mem && n.reg_is_reg && byte_op && i.reg >= 4 && can_reencode_hi8(i)) {
      // AH..BH with a memory operand: stage the register in r10b (flag-free
      // moves through the red zone below RSP).
      st.native_insns++;
      Slow& s = mem_access(i, eip, pa, i.seg, 1, n.rm == RM_W || n.rm == RM_RW, Site::A_EA);
      db(0x88); db(u8(0x44 | (i.reg << 3))); db(0x24); db(0xF8);       // mov [rsp-8], ah..bh
      movzx(r10d, byte[rsp - 8]);
      reencode(i, n, bytes, 10);
      if (writes_reg8(i.op)) {
        mov(byte[rsp - 8], r10b);
        db(0x8A); db(u8(0x44 | (i.reg << 3))); db(0x24); db(0xF8);     // mov ah..bh, [rsp-8]
      }
      if (info.flags_written & ARITH) fl_ = Fl::dirty;
      s.done = here();
      return Done::next;
    }
    if (can_reencode(i, n)) {
      st.native_insns++;
      if (!i.mem) {
        reencode(i, n, bytes);
      } else {
        direct_fold_ok_ = true;
        Slow& s = mem_access(i, eip, pa, i.seg, n.rm_size, n.rm == RM_W || n.rm == RM_RW, Site::A_EA);
        direct_fold_ok_ = false;
        reencode(i, n, bytes);
        s.done = here();
      }
      if (info.flags_written & ARITH) fl_ = Fl::dirty;
      return Done::next;
    }
  }
  return callout(i, eip, pa, info.attrs & CT);
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
  const unsigned group_mask = bt_.interp_group_mask();
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
    const bool producer = !(group_mask & (1u << group_of(i))) && loop_producer(i, &p_reads, &p_dest) &&
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
    call_site(s.site, parked);  // the stub saves the flags unless parked
    jmp_back(s.done);
  }
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
  e.begin(b, page, stubs_, page2, max_insns);
  e.run(max_insns);
  if (b.n) {
    std::memcpy(cc_.cursor(), e.getCode(), e.getSize());
    cc_.advance(b.code_size);
  }
  return true;
}

}  // namespace popek::engine::bt
