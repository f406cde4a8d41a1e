// The emitter: one guest block -> host x86-64 code, written with xbyak.
// Private to the bt engine (translator.h is the interface): its members are
// defined by concern in translator.cpp (the per-block driver, run()),
// emitter_memory.cpp, emitter_exits.cpp, emitter_flags.cpp and
// emitter_insn.cpp; the small ones called all the time stay inline here.
//
// Register convention inside generated code:
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
#pragma once

#include <xbyak/xbyak.h>

#include <cstddef>
#include <cstring>
#include <initializer_list>
#include <utility>
#include <vector>

#include "base/error.h"
#include "engine/bt/bt.h"
#include "engine/bt/translator.h"

namespace popek::engine::bt {

// (Only the emitter's own files include this header; they all work in these.)
using namespace popek::x86;
using namespace Xbyak;
using namespace Xbyak::util;

// What the emitter's files share besides the class: CpuState and Rt offsets,
// the register mapping and the instruction analysis (defined in translator.cpp).
namespace detail {

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
constexpr int kFrameOff = int(offsetof(Rt, frame_addend));
constexpr int kReasonOff = int(offsetof(Rt, reason));
constexpr int kArgOff = int(offsetof(Rt, arg));
constexpr int kJcOff = int(offsetof(Rt, jc));
constexpr int kRasFloorOff = int(offsetof(Rt, ras_floor));

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

Native native_of(const Insn& i);
bool writes_reg8(Op op);
bool can_reencode_hi8(const Insn& i);
bool defines_all_flags(const Insn& i);
bool needs_flags(const Insn& i);
bool may_change_mode(const Insn& i);
bool is_callout_only(const Insn& i);

}  // namespace detail
using namespace detail;

class Emitter : public CodeGenerator {
 public:
  // One emitter for all translations (xbyak's generator is costly to build):
  // it writes into `scratch`; begin() starts a block that will be copied to
  // the cache at `cc.cursor()` (absolute targets are computed for that address).
  Emitter(Bt& bt, CodeCache& cc, u8* scratch, size_t max, i32 tlb_off)
      : CodeGenerator(max, scratch), bt_(bt), cc_(cc), tlb_off_(tlb_off), scratch_(scratch) {}

  void begin(Block& b, const u8* page, const Stubs& stubs, const u8* page2, u32 max_insns);
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

  // ---- raw bytes ----
  // The emitter's own db/dd/dq: one bounds check and one store each (xbyak's
  // checks every byte and, since a byte store may alias its size, reloads
  // the size after each; dd was four of those). xbyak's encoders keep theirs.
  using CodeGenerator::db;
  template <typename T> void put(T v) {
    if (size_ + sizeof(T) > Translator::kMaxBlockCode) throw Error("bt: internal error: block code too big");
    std::memcpy(top_ + size_, &v, sizeof(T));
    size_ += sizeof(T);
  }
  void db(int code) { put(u8(code)); }
  void dd(u32 code) { put(code); }
  void dq(u64 code) { put(code); }

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
  // Sequences whose encoding depends on their parameters only through
  // immediates of a fixed width (holes): encoded by xbyak the first time,
  // then copied with the holes written (xbyak's encoder, building operands
  // and checking them, cost more than a tenth of a translation). `encode`
  // emits it for `vals` and calls hole(width) right after each instruction
  // that ends with one of them, in order. Recorded only if each hole holds
  // its value there (else xbyak encodes it every time): an immediate that
  // xbyak encoded shorter than its hole's width is never recorded. Later
  // values are written at full width (a mov r64 then keeps its imm64 form).
  struct Tmpl {
    u8 len = 0;
    u8 nh = 0;
    u8 at[3] = {};
    u8 width[3] = {};
    u8 bytes[96];
  };
  Tmpl* tmpl_rec_ = nullptr;
  u32 tmpl_start_ = 0;
  void hole(unsigned width) {
    if (!tmpl_rec_) return;
    if (tmpl_rec_->nh == sizeof tmpl_rec_->at) throw Error("bt: internal error: a template with too many holes");
    tmpl_rec_->at[tmpl_rec_->nh] = u8(here() - width - tmpl_start_);
    tmpl_rec_->width[tmpl_rec_->nh] = u8(width);
    tmpl_rec_->nh++;
  }
  template <typename Encode> void tmpl(Tmpl& t, std::initializer_list<u64> vals, Encode encode) {
    if (t.len && bt_.options().emit_templates) {
      const u32 at = here();
      emit_bytes(t.bytes, t.len);
      u8* code = const_cast<u8*>(getCode()) + at;
      unsigned k = 0;
      for (u64 v : vals) {
        std::memcpy(code + t.at[k], &v, t.width[k]);
        k++;
      }
      return;
    }
    const u32 at = here();
    Tmpl rec;
    tmpl_rec_ = &rec;
    tmpl_start_ = at;
    encode();
    tmpl_rec_ = nullptr;
    const u32 len = here() - at;
    if (len > sizeof rec.bytes || rec.nh != vals.size()) return;
    const u8* code = getCode() + at;
    unsigned k = 0;
    for (u64 v : vals) {
      if (std::memcmp(code + rec.at[k], &v, rec.width[k]) != 0) return;
      k++;
    }
    std::memcpy(rec.bytes, code, len);
    rec.len = u8(len);
    t = rec;
  }
  Tmpl exit_chain_tmpl_, jc_tmpl_, exit_plain_tmpl_;
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

  Site* new_site(const Insn& i, u32 eip, u64 pa, bool ends, bool slow);
  // A memory access's slow-path site (BtOptions::lazy_sites): a draft in
  // drafts_ while the block is emitted (its pointer only in slows_, never
  // in code), a seed in the arena when its slow path is emitted.
  Site* new_access_site(const Insn& i, u32 eip, u64 pa);
  std::vector<Site> drafts_;
  std::vector<uintptr_t> draft_arg_;  // per draft: what its slow paths pass (0: not made yet)
  SiteSeed* seeds_ = nullptr;         // the block's seeds
  unsigned nseeds_ = 0;
  bool is_draft(const Site* s) const {
    return !drafts_.empty() && s >= drafts_.data() && s < drafts_.data() + drafts_.size();
  }
  void make_seeds();
  uintptr_t site_arg(Site* s);
  // Calls the semantics for `s`; `parked`: Rt::hf holds the guest flags and
  // the host's are not theirs.
  void call_site(Site* s, bool parked) { call_arg(reinterpret_cast<uintptr_t>(s), parked); }
  // The same with r8 = `arg` (a Site*, or a SiteSeed* + kSeedTag).
  void call_arg(uintptr_t arg, bool parked) {
    if (parked && rcp_ >= 0) {
      rcp_run();
      parked = false;
    }
    if (parked && lazy_) materialize();
    db(0x49); db(0xB8); dq(arg);  // mov r8, imm64
    call_abs(parked ? stubs_.callout_nosave : stubs_.callout);
    fl_ = Fl::host;  // the stub restored the flags from Rt::hf
  }

  // ---- memory operands (emitter_memory.cpp) ----
  // GS is checked at run time (Rt::gs_slow; it is not in the mode key).
  bool seg_native(unsigned seg) const { return seg == GS || (b_->mode & m_flat(seg)); }
  // A field of CpuState::seg[seg] (selector, base) as a memory operand.
  Address seg_field(unsigned seg, int off, unsigned bytes) const {
    const int disp = kSegOff + int(seg * sizeof(Segment)) + off;
    return bytes == 2 ? word[r15 + disp] : dword[r15 + disp];
  }
  void guest_modrm(unsigned ext, const Insn& i);
  void ea_to_r8(const Insn& i);
  bool add_seg_base(unsigned seg, unsigned size, bool clobber, Slow& s);
  // Emits code bytes as they are.
  void emit_bytes(const u8* bytes, unsigned len) {
    if (size_ + len > Translator::kMaxBlockCode) throw Error("bt: internal error: block code too big");
    std::memcpy(top_ + size_, bytes, len);
    size_ += len;
  }
  // r8 (linear, zero-extended) -> host address, or a jump to the slow path,
  // whose rel32 it returns. `clobber`: the host flags are free (a compare and
  // branch); otherwise a flag-free sequence.
  Snip lookup_snips_[128];
  u32 lookup(unsigned size, bool write, bool clobber, bool wrap_in_r11 = false);
  u32 tag_check(unsigned size, bool write);
  u32 encode_lookup(unsigned size, bool write, bool clobber, bool wrap_in_r11);
  Slow& mem_access(const Insn& i, u32 eip, u64 pa, unsigned seg, unsigned size, bool write,
                   Site::Addr addr, bool flags_dead = false);
  void memo_hit(Slow& s, unsigned size, bool write);
  void memo_miss(Slow& s);
  void room(const Reg32& out, const Reg32& reg, unsigned seg, unsigned size);
  // Frame checks (BtOptions::frame_checks). plan_frames groups the block's
  // stack-frame operands: [EBP + disp] (slot 0) and, tracking ESP through
  // PUSH, POP and ADD/SUB ESP, imm, [ESP + disp] and the pushes and pops
  // themselves (slot 1), each group between changes of its register it
  // cannot follow, instructions that may change the mappings or mode or
  // leave the block, and the targets of the block's own branches (a side
  // exit's join skips code). At run time the group's first access emitted
  // inline (the leader) checks the TLB once for the group's whole span and
  // keeps the page's host address - linear address in Rt::frame_addend[slot];
  // the later ones (followers) compute their linear address as usual and
  // add it: no check, the flags left alone, like direct accesses (a host
  // fault, from the poison Bt::callout leaves when the span is not on one
  // mapped page, takes their slow path).
  struct FrameGroup {
    u8 base;             // guest register: EBP (slot 0) or ESP (slot 1)
    i32 lo = 0, hi = 0;  // the members reach [base0 + lo, base0 + hi): base0 the register at the group's start
    bool write = false;
    unsigned first = 0, last = 0;  // the first and last members' indices
    unsigned members = 0;
    bool led = false;    // emitting: its leader has been emitted
  };
  // Per instruction: the groups of its ModRM operand and of its implicit
  // stack access (PUSH/POP), their offsets from base0, and ESP - ESP's
  // base0 after it.
  struct FrameUse {
    i16 ea = -1, stk = -1;
    i32 ea_off = 0, stk_off = 0;
    i32 esp_after = 0;
  };
  std::vector<FrameGroup> frames_;
  std::vector<FrameUse> frame_use_;
  std::vector<u8> frame_target_;  // per instruction: a branch of the block may go to it
  void plan_frames(unsigned n);
  bool frame_member(const Insn& x, unsigned* size, bool* write) const;
  int frame_stack_access(const Insn& x) const;
  std::pair<Slow*, Slow*> operand_then_push_slot(const Insn& i, u32 eip, u64 pa);

  // ---- the generic re-encoder (emitter_insn.cpp) ----
  static bool can_reencode(const Insn& i, const Native& n);
  void reencode(const Insn& i, const Native& n, const u8* bytes, int reg_host = -1);

  // ---- exits (emitter_exits.cpp) ----
  void flags_out();
  void exit_direct(u32 target, u32 jcc = kNone);
  void exit_indirect();
  void jc_lookup(bool mode_in_r8 = false);
  void jc_probe(bool mode_in_r8);
  void jc_miss();
  void exit_indirect_after(Slow& s);

  void rep_string(const Insn& i, u32 eip, u64 pa, unsigned size);

  // ---- x87 inline (emitter_x87.cpp) ----
  // What an inline x87 instruction does on the host stack (x87()). `in`:
  // guest ST indices loaded, in[0] ending as host ST(0); the host
  // instruction b0 b1 (memory forms: [r8], b1 = reg << 3); `out`: where
  // what the host stack then holds goes (host ST(0) first): a guest ST
  // index relative to the TOP before the instruction (-1: the register a
  // push fills) or kX87Drop; `pops` guest registers from ST(0) on become
  // empty; TOP moves by pops - push.
  static constexpr i8 kX87Drop = 8;
  struct X87Plan {
    u8 nin = 0;
    i8 in[2] = {};
    u8 b0 = 0, b1 = 0;
    bool mem = false;
    u8 msize = 0;
    bool write = false;
    bool push = false;
    u8 pops = 0;
    u8 nout = 0;
    i8 out[2] = {};
    bool eflags = false;  // FCOMI family: ZF PF CF from the host, OF SF AF clear
  };
  // The out-of-line end of one (x87_emit_ools).
  struct X87Ool {
    X87Plan p;
    u32 again;   // the rel32 of the jump there
    u32 commit;  // where it goes back to
  };
  static bool x87_plan(const Insn& i, X87Plan& p);
  bool x87(const Insn& i, u32 eip, u64 pa);
  bool x87_control(const Insn& i, u32 eip, u64 pa);
  void x87_m80(unsigned ext, int index);
  int x87_phys(int k);
  void x87_run(const X87Plan& p);
  void x87_ea_r9(const Insn& i);
  void x87_emit_ools();
  void x87_record(const Insn& i, const X87Plan& p);
  void x87_move(const Insn& i, int kept, int value);
  u32 x87_eip_ = 0;
  std::vector<X87Ool> x87_ools_;

  enum class Done { next, ended };
  Done insn(const Insn& i, const u8* bytes, u32 eip, u64 pa);
  Done callout(const Insn& i, u32 eip, u64 pa, bool ends);
  bool stack_ok() const {
    return (b_->mode & M_SS32) && seg_native(SS);
  }
  bool direct_slow(u64 pa) const;
  // The instruction's group is left to the interpreter (--bt-interp).
  bool interp_group(const Insn& x) const {
    const u32 m = bt_.interp_group_mask();
    return m && (m & (1u << group_of(x)));
  }

  Bt& bt_;
  CodeCache& cc_;
  i32 tlb_off_;
  u8* scratch_;  // where a block is emitted without emit_in_place (then copied)
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
  bool side_exit_ok(const Insn& i) const;
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
  bool ras_ret_ = false;  // exit_indirect: a RET, which tries the return stack first
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
  bool park_pays() const;
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

}  // namespace popek::engine::bt
