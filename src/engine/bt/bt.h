// The binary translator: guest basic blocks translated on demand into host
// x86-64 code (emitted with xbyak into a dual-mapped code cache), chained by
// patched jumps, with an inline soft-TLB lookup for memory operands and calls
// ("callouts") into the shared x86 semantics for sensitive instructions, slow
// paths and everything it does not translate. See docs/bt.md.
#pragma once
#include <deque>
#include <exception>
#include <map>
#include <array>
#include <memory>
#include <new>
#include <type_traits>
#include <string>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include "base/big_alloc.h"
#include "engine/engine.h"
#include "engine/stepper.h"
#include "memory/mmu.h"
#include "memory/phys_mem.h"
#include "x86/cpu.h"

#include "engine/bt/arena.h"
#include "engine/bt/block.h"

namespace popek::engine {

struct BtOptions {
  unsigned block_insns = 64;   // guest instructions per block at most (1: one per block)
  bool chain = true;           // patch direct jumps between blocks; inline indirect lookup
  bool translate = true;       // false: every instruction through the interpreter
  std::string interp_groups;   // comma list of instruction groups left to the interpreter
  // Reserved, not resident: pages are populated as translation reaches them.
  // A compile (zlib's make in the Debian guest) filled 64 MiB 92 times.
  size_t code_cache_mb = 256;
  bool adaptive = true;        // retranslate instructions that keep taking the slow path
  bool lockstep = false;       // run interp beside and compare at every block boundary
  bool perf_map = false;       // name translations in /tmp/perf-PID.map (perf's JIT map)
  // Forward conditional branches inside a block as side exits (superblocks):
  // in user-mode code (default), everywhere, or nowhere.
  enum class Superblocks { user, all, off };
  Superblocks superblocks = Superblocks::user;
  // With paging off, memory operands address guest RAM directly (no TLB
  // lookup); accesses the direct path may not make fault into the slow path.
  bool fastmem = true;
  // With paging on, memory operands of user-mode code (CPL 3) address a
  // host mapping of the guest's user pages at their linear addresses (the
  // MMU's user window, mirroring the TLB): no lookup; an access the TLB
  // would not allow faults into the slow path.
  bool user_window = true;
  // Instructions an address space runs at CPL 3 before it takes the window
  // over (Bt::note_user_run); tests use 0.
  u64 user_window_claim = u64(4) << 20;
  // Pages the window maps at most (one more empties it); tests make it small.
  u64 user_window_cap = mem::Mmu::kWindowCap;
  // Interpret a block the first `cold_visits` times it is reached; translate
  // it at the next (most of a boot's kernel code runs once, and much of a
  // compiler's a few times: translating it costs more than interpreting it).
  bool tiered = true;
  unsigned cold_visits = 1;  // 1..15
  // Memory operands first compare their address with the page they last
  // hit (a memo, mem::Mmu): no TLB load on the address chain. In loops of
  // user-mode code (default: a memo pays only where an access runs many
  // times between TLB flushes; kernel code mostly runs few times, and its
  // INVLPGs would search the memos), in every block, or nowhere.
  enum class Memo { user, all, off };
  Memo memo = Memo::user;
  // An access after a register-only definer of all flags keeps them as that
  // instruction's recipe (run again where they are needed) instead of saving them.
  bool flag_recipes = true;
  // DIV/IDIV run as the host's instruction, the cases that would fault (and
  // IDIV's unusual dividends) checked first and left to the semantics.
  bool inline_div = true;
  // A callout that delivered a guest exception goes on into the handler's
  // translated block (as one whose INT n or IRET completed does) instead of
  // leaving to the dispatcher.
  bool fault_continue = true;
  // The frequent x87 instructions run on the host's x87 against the guest's
  // FpuState, checked inline for the cases only the semantics handle (#NM,
  // unmasked exceptions, stack faults), which go to them.
  bool inline_x87 = true;
  // A direct CALL is also a host call (the guest return address and mode
  // beside it) and a RET that pops that address a host ret, which the host
  // predicts, instead of a jump-cache lookup and an indirect jump. Off by
  // default: measured slower on this host (fib +10-20 %, a call/ret chain
  // +40 %; the jump cache's indirect jump was already predicted, and the
  // frame costs instructions); the fuzzer turns it on in half its variants.
  bool ras = false;
  // Frame checks: where a block's memory operands are [EBP + disp] (or
  // [ESP + disp]) with that register unchanged in between, the first of them
  // checks the TLB once for the span all of them reach (one page) and keeps
  // the page's host address; the others add their offset to it (no TLB
  // check, the host flags left alone). Paging on, outside the user window:
  // kernel code and short-lived processes, whose locals are on the stack.
  bool frame_checks = true;
  // Exits and jump-cache lookups are copied from a template encoded once,
  // their immediates written in (else xbyak encodes each: slower to
  // translate; the code is the same but for a mov r64 that may then keep
  // its imm64 form).
  bool emit_templates = true;
  // A memory access's slow path gets a compact seed, made into its callout
  // site when it first runs (most never do), instead of a full site at
  // translation (records ~35 % smaller).
  bool lazy_sites = true;
  // Blocks are emitted straight into the code cache, not into a scratch
  // buffer copied there afterwards.
  bool emit_in_place = true;
};

// Instruction groups `interp_groups` may name (also used by stats).
const char* bt_groups_help();

class Bt;
namespace bt {
struct Block;
struct Site;
class Translator;
class Lockstep;
class CodeCache;

// What generated code reads through r14.
struct JcEntry {
  u32 eip;
  u32 mode;
  const u8* code;
};
static constexpr unsigned kJcBits = 18;

// A data-segment load at CPL 0 the semantics did: a later MOV to ES/DS/FS/GS
// of the same GDT selector whose descriptor still reads the same loads the
// same hidden part (the checks depend only on selector, descriptor and CPL),
// inline. Direct-mapped by selector bits 3..5.
struct SegLoad {
  u32 sel = ~0u;        // never a 16-bit selector: empty
  u8 flat = 0;          // the mode bits this segment gives (bit 0 flat, bit 1 base 0)
  u8 pad[3] = {};
  u64 raw = 0;          // the descriptor as it was (accessed bit set); 0 for a null selector
  x86::Segment seg;     // what the load left in the segment register
};
static_assert(sizeof(SegLoad) == 32 && sizeof(x86::Segment) == 16);
constexpr unsigned kSegLoads = 8;

struct Rt {
  i64 budget = 0;      // instructions left; each block subtracts its length at entry
  u64 hf = 0;          // guest OSZAPC while in generated code: AH image << 8 | OF
  u64 reason = 0;      // why generated code returned
  u64 arg = 0;
  u64 (*callout)(Rt*, Site*) = nullptr;
  // RDTSC at CPL 0 (Stubs::tsc): the guest's TSC; the second argument is the
  // block's instructions not yet retired before it.
  u64 (*tsc)(Rt*, u32) = nullptr;
  // VERW at CPL 0 (Stubs::verw; an absolute operand): 1 if the selector
  // verifies for writing, 0 if not, 2 if reading it or its descriptor
  // faults (the slow path then).
  u64 (*verw)(Rt*, Site*) = nullptr;
  engine::Bt* self = nullptr;
  JcEntry* jc = nullptr;
  // GS is not in the mode key (processes differ in it, and the kernel that
  // runs for all of them does not use it): 1 if GS is not a flat writable
  // data segment now (its accesses then take the slow path), else 0.
  u32 gs_slow = 0;
  // A loop block's flags (Translator: "loop flags"): 1 when the block was
  // entered through its own back edge, whose compare left the guest flags
  // only as a recipe (Rt::hf is stale); 0 when entered from outside. Read
  // only by that block's out-of-line paths, which recompute the flags first.
  u8 loop_lazy = 0;
  u8 pad[3] = {};
  // A flag recipe's operand kept aside (Translator: rcp_): here, not in the
  // red zone, because a slow path's call in between would overwrite that.
  u32 rcp_stash = 0;
  u32 pad2 = 0;
  // Frame checks (BtOptions::frame_checks): host address - linear address of
  // the page the current [EBP + disp] group's span (0) and [ESP + disp] /
  // push / pop group's span (1) are on, or a poison that faults (set by the
  // group's first access, read by the others in the same run of the block).
  u64 frame_addend[2] = {};
  u8* direct_base = nullptr;  // guest RAM + kR13Bias: r13 (see kR13Bias)
  // Guest CALL/RET as host call/ret pairs (Translator: "the return stack"):
  // the host RSP generated code was entered with (every way out goes back
  // to it, dropping the frames of calls not returned from), and the lowest
  // RSP a translated CALL may push another frame at.
  u64 entry_rsp = 0;
  u64 ras_floor = 0;
  u64 block_rsp = 0;  // the RSP of the block that made the last callout (frames above it)
  SegLoad seg_loads[kSegLoads];
  // Inline x87 (Translator: emitter_x87.cpp): the host's status word after
  // the instruction and after FXAM of a result; the host's control word
  // (restored after each instruction); constants of the tag computation
  // (PEXT mask of C3 C2 C0, the tag of each FXAM class); how many ran
  // inline, and how many of them ran again after clearing the host's
  // stale exception flags.
  u16 x87_sw = 0;
  u16 x87_class = 0;
  u16 x87_host_cw = 0x037F;
  u16 pad3 = 0;
  u32 x87_pext = 0x4500;
  u32 x87_tags = 0xAD8A;
  u64 x87_runs = 0;
  u64 x87_again = 0;
};
enum Reason : u64 { kExitNormal = 0, kExitChain = 1 };
// The Rt::frame_addend slot of a frame-check group on guest register `base`.
inline unsigned frame_slot(unsigned base) { return base == x86::EBP ? 0 : 1; }
// r13 in generated code is guest RAM + kR13Bias (RAM is 2 MiB aligned): the
// base of direct accesses with paging off ([r13 + address - kR13Bias]), and
// its low bits are constants the TLB check uses: bits 0-4 = 12, the SHRX
// count to a page number; bits 0-15 = 0x100C, the BEXTR control taking the
// 16 bits from bit 12, a soft-TLB index, in one instruction.
inline constexpr i32 kR13Bias = 0x100C;
// Host stack the return stack (BtOptions::ras) may use below the entry RSP:
// 4,096 frames of 16 bytes; deeper calls go without a host frame.
inline constexpr i32 kRasBytes = 64 * 1024;

struct BtStats {
  u64 blocks_translated = 0;
  u64 untranslatable = 0;    // first instruction crosses a page: interpreted
  u64 blocks_invalidated = 0;
  u64 guest_insns_translated = 0;
  u64 native_insns = 0;      // translated into inline host code
  u64 callout_insns = 0;     // translated into a call of the semantics
  u64 flag_restores_skipped = 0;  // partial flag writers whose other flags are dead
  u64 flag_recipes = 0;      // memory accesses whose slow path recomputes the flags
  u64 inline_divs = 0;       // DIV/IDIV translated inline
  u64 inline_x87 = 0;        // x87 instructions translated inline
  u64 ras_calls = 0;         // direct CALLs translated as host calls
  u64 ras_rets = 0;          // RETs translated to try a host ret first
  u64 flag_lazy_recipes = 0;  // accesses that left the flags as their producer's recipe
  u64 flag_parks = 0;        // flags saved early so that the accesses after take the short TLB check
  u64 flag_free_checks = 0;  // TLB checks translated in the flag-free form (the guest flags in the host's)
  u64 loop_flags = 0;        // loop blocks whose back edge leaves the flags as a recipe (no save)
  u64 side_joins = 0;        // side exits that jump to a later instruction of their own block
  u64 block_entries = 0;     // dispatcher -> generated code
  u64 block_lookups = 0;
  u64 block_lookup_misses = 0;
  u64 chain_requests = 0;    // exits through a link not patched yet
  u64 chains_patched = 0;
  u64 chains_undone = 0;
  u64 jc_fills = 0;
  u64 jc_flushes = 0;
  u64 jc_drops = 0;          // entries dropped by INVLPG, CR3 loads, code writes
  u64 callouts = 0;
  u64 callouts_slow_mem = 0;  // memory operands that missed the inline TLB
  u64 callout_exits = 0;
  u64 callout_continues = 0;  // callouts that went on to the next block themselves
  u64 invlpg_continues = 0;   // INVLPGs after which the block went on (not its own code page)
  u64 seg_loads_cached = 0;   // segment loads the inline path may repeat
  u64 adaptive_retranslations = 0;
  u64 adaptive_direct_calls = 0;  // slow paths taken directly after retranslation
  u64 adaptive_retries = 0;       // direct callouts given the inline path again
  u64 smc_exits = 0;
  u64 direct_accesses = 0;   // memory operands translated to address RAM directly (paging off)
  u64 direct_faults = 0;     // of those, runs that faulted into the slow path
  u64 window_strikes = 0;    // address spaces that gave the user window up for churn or size
  u64 inline_tsc = 0;        // RDTSCs at CPL 0 through the thin call (no callout)
  u64 inline_verw = 0;       // VERWs at CPL 0 through the thin call
  u64 memo_accesses = 0;     // memory operands translated with a memo (user mode)
  u64 memo_batches = 0;      // kMemoBatch misses of one memo (the policy looked)
  u64 memo_retranslations = 0;  // sites translated again without their memo
  u64 frame_leaders = 0;     // frame-check groups' first accesses translated (BtOptions::frame_checks)
  u64 frame_followers = 0;   // accesses translated to use their leader's check
  u64 frame_misses = 0;      // a leader's span was not on one mapped page after its slow path
  u64 frame_retranslations = 0;  // blocks translated again without frame checks
  u64 write_protect_switches = 0;  // code write protection turned on or off
  u64 interp_steps = 0;      // instructions run by the interpreter (modes, TF, shadows, first visits)
  u64 cold_blocks = 0;       // block entries interpreted on their first visit
  u64 cache_flushes = 0;
  u64 translate_ns = 0;
  u64 sites = 0;             // callout sites made at translation
  u64 seeds = 0;             // slow paths given a seed instead (BtOptions::lazy_sites)
  u64 seeds_run = 0;         // of those, made into sites (their slow path ran)
  u64 callouts_by_group[16] = {};
  std::vector<u64> callouts_by_op = std::vector<u64>(x86::kOpCount, 0);
};
}  // namespace bt

class Bt final : public Engine, public mem::CodeWatcher, public mem::TlbListener {
 public:
  // early_faults: see Stepper::set_early_faults.
  Bt(x86::CpuState& s, mem::PhysMem& pm, x86::Platform& plat, const BtOptions& opt, bool early_faults = true);
  ~Bt() override;

  const char* name() const override { return "bt"; }
  Exit run(u64 budget) override;
  std::vector<std::pair<std::string, u64>> stats() const override;
  void set_trace(std::FILE* out) override;

  // Lockstep: the CPU state was changed from outside; the shadow follows anew.
  void lockstep_resync();
  // Another engine ran: the TLB (and with it the jump cache, the memos and
  // the user window) starts empty; the lockstep shadow starts from the state
  // as it is. Translations stay (keyed by physical page; writes by the
  // other engines reached PhysMem, which invalidated the ones written).
  void switch_in() override;
  // Direct stores with paging off need code pages read-only in the host
  // mapping; the next engine (kvm: the guest's stores through KVM's mapping
  // of the same RAM would fail) writes RAM its own way.
  void switch_out() override;

  // CodeWatcher: a page holding translated code was written.
  void code_page_written(u64 ppn) override;
  // TlbListener: the jump cache keeps what the TLB keeps.
  void tlb_flushed(bool global) override;
  void tlb_invlpg(u32 la) override;

  // For the runtime (callouts) and the translator.
  u64 callout(bt::Site* site);
  x86::CpuState& state() { return s_; }
  mem::Mmu& mmu() { return mmu_; }
  const BtOptions& options() const { return opt_; }
  bt::BtStats& bstats() { return st_; }
  u32 interp_group_mask() const { return interp_group_mask_; }
  bool is_direct_slow(u64 pa) const { return direct_slow_.count(pa) != 0; }
  // RDTSC from generated code at CPL 0 (a thin call: no state saved but the
  // instruction count, which deterministic time and lockstep need).
  u64 inline_tsc(u32 unretired);
  u64 inline_verw(const bt::Site* site);
  // The user window starts at host address 0 (generated code may use the
  // guest's own addressing on it).
  bool user_window_zero() const { return uwin_ && mmu_.user_window_zero(); }
  bool is_no_memo(u64 pa) const { return no_memo_.count(pa) != 0; }
  bool is_no_frames(u64 pa) const { return no_frames_.count(pa) != 0; }
  // A memo's misses come in batches of kMemoBatch (its count-down); a batch
  // within kMemoWindow guest instructions of the last makes the site's block
  // retranslate without it (its accesses alternate between pages: each miss
  // costs a mispredicted branch, more than the plain TLB check).
  static constexpr u32 kMemoBatch = 256;
  static constexpr u64 kMemoWindow = 256 * 256;
  u64& memo_batch_start(unsigned id) { return memo_since_[id]; }
  // A direct access (paging off) at host [start, end) of generated code goes
  // to the slow path at `slow` when it faults.
  void add_direct_fault(const u8* start, const u8* end, const u8* slow) {
    direct_faults_[uintptr_t(start)] = DirectFault{uintptr_t(end), uintptr_t(slow)};
  }
  // From the SIGSEGV handler: where a fault at host `pc` touching `addr`
  // resumes, or 0 if it is not a direct access's.
  uintptr_t direct_fault(const void* addr, uintptr_t pc);
  // The arena array of a block's links (its emitter kept them while it emitted).
  bt::Block::Link* new_links(unsigned n) {
    return static_cast<bt::Block::Link*>(arena_.alloc(n * sizeof(bt::Block::Link)));
  }
  // An arena array of n seeds (8-aligned).
  bt::SiteSeed* new_seeds(unsigned n) {
    static_assert(std::is_trivially_destructible_v<bt::SiteSeed>, "seeds are freed without destructors");
    return static_cast<bt::SiteSeed*>(arena_.alloc(n * sizeof(bt::SiteSeed)));
  }
  // The site generated code passed in r8: a Site, or a seed (+ kSeedTag)
  // whose site is made the first time.
  bt::Site* site_of(bt::Site* arg) {
    const uintptr_t a = reinterpret_cast<uintptr_t>(arg);
    if (!(a & bt::kSeedTag)) return arg;
    bt::SiteSeed* seed = reinterpret_cast<bt::SiteSeed*>(a - bt::kSeedTag);
    return seed->site ? seed->site : site_from_seed(*seed);
  }
  bt::Site* new_site() {
    static_assert(std::is_trivially_destructible_v<bt::Site>, "sites are freed without destructors");
    return new (arena_.alloc(sizeof(bt::Site))) bt::Site();
  }

 private:
  friend class bt::Translator;
  // Blocks are keyed by physical address, CS base, EIP (one physical page may
  // be mapped at several linear addresses) and mode.
  bt::Block* lookup(u64 pa, u32 cs_base, u32 eip, u32 mode);
  bt::Block* translate(u32 eip, u64 pa, u32 mode);
  bt::Site* site_from_seed(bt::SiteSeed& seed);
  u32 mode_key() const;
  bool translatable() const;
  void invalidate(bt::Block* b);
  void unlink(bt::Block* b);
  void flush_cache();
  void flush_jc();
  void patch_chain(bt::Block* from, unsigned link, bt::Block* to);
  void emit_stubs();
  Exit run_dispatch(u64 budget);
  Exit run_blocks(u64 end);
  // Runs instructions in the interpreter (stepper) up to `max`.
  void interp_steps(u64 end, u64 max);
  const u8* continue_at();
  bt::Block* cached_block(u64 pa, u32 cs_base, u32 eip, u32 mode, bool may_translate);
  void jc_note(u32 eip, u32 mode, bt::Block* b);
  void remember_seg_load(unsigned k);
  void sync_gs();
  // Rt::direct_base (r13): the user window with paging on, else RAM.
  void sync_direct_base();

  struct DirectFault {
    uintptr_t end, slow;
  };
  std::map<uintptr_t, DirectFault> direct_faults_;  // by start; emptied with the code cache
  bool fault_wrapped_ = false;  // the last direct fault's address wrapped past 4 GiB
  bool uwin_ = false;  // direct accesses at CPL 3 use the MMU's user window
  struct SpaceUse {
    u32 cr3 = 1;  // not a page-directory base: free
    u64 insns = 0;
    unsigned strikes = 0;  // times this space gave the window up for churn
  };
  std::array<SpaceUse, 8> space_use_{};
  SpaceUse* space_slot(u32 cr3);  // cr3's slot, made if need be
  static constexpr unsigned kStrikeShift = 3;  // each strike: 8 times longer to wait
  static constexpr u64 kStrikeBase = u64(4) << 20;  // the shortest wait after a strike
  void note_user_run(u64 n);
  void note_window_run(u64 n);
  u64 uwin_insns_ = 0;       // instructions run with the window since the churn was last looked at
  u64 uwin_churn_mark_ = 0;  // the MMU's window_churn then
  static constexpr u64 kWindowChurn = 64;
  static constexpr u64 kWindowChurnInsns = u64(16) << 20;
  bt::Rt* rt_ = nullptr;  // in the MMU's engine area: generated code reaches the TLB from it
  x86::CpuState& s_;
  mem::PhysMem& pm_;
  std::unique_ptr<bt::Lockstep> lockstep_;  // before cpu_: it records what cpu_ gets
  mem::Mmu mmu_;
  x86::Cpu cpu_;
  Stepper step_;
  BtOptions opt_;
  std::unique_ptr<bt::CodeCache> cache_;
  std::unique_ptr<bt::Translator> tr_;
  big_vector<bt::JcEntry> jc_;
  // Beside each jump-cache entry: its block, the linear page of its EIP and
  // whether that page is global (the entry then survives CR3 loads).
  struct JcMeta {
    bt::Block* block = nullptr;
    u32 page = 0;
    bool global = false;
  };
  big_vector<JcMeta> jc_meta_;
  std::vector<u32> jc_filled_[2];     // indices of the jc_ entries in use: [global page]
  std::vector<u64> jc_pages_;         // bitmap by hashed page: might have an entry
  static u32 jc_page_bit(u32 page) { return (page ^ (page >> 16)) & 0xFFFF; }
  void jc_fill(u32 k, u32 eip, u32 mode, bt::Block* b, bool global);
  template <typename Drop> void jc_drop_if(Drop drop, bool nonglobal_only = false);
  // The dispatcher's own direct-mapped cache in front of the hash map.
  struct DcEntry {
    u64 pa = ~0ull;
    u32 eip = 0, mode = 0, cs_base = 0;
    bt::Block* block = nullptr;
  };
  big_vector<DcEntry> dc_;
  u32 interp_group_mask_ = 0;

  // Blocks: the lookup map and per physical page the blocks translated from
  // it (the blocks themselves live in arena_).
  // Block entries reached but not translated yet (tiered translation):
  // fingerprints of their keys with the visits so far in the low 4 bits,
  // two-way set-associative (a set's colder entry makes room); a collision
  // only makes a block wait longer for its translation.
  big_vector<u64> seen_;
  static constexpr size_t kSeenSize = size_t(1) << 18;
  bool cold_ = false;  // cached_block found the block not reached before
  // Blocks and callout sites live in arena_ (destroyed and reused at flush).
  bt::Arena arena_;
  // The lookup table: chained through Block::hnext, power-of-two buckets.
  struct Bucket {
    u64 key = 0;        // the head block's key, EIP and CS base (valid with head)
    u32 eip = 0;
    u32 cs_base = 0;
    bt::Block* head = nullptr;
    void set_head(bt::Block* b);
  };
  big_vector<Bucket> htab_;
  size_t hcount_ = 0;
  size_t hash_slot(u64 key, u32 eip) const;
  void hash_insert(bt::Block* b);
  void hash_remove(bt::Block* b);
  std::unordered_map<u64, std::vector<bt::Block*>> by_page_;
  // Guest instructions (by physical address) the adaptive policy sends
  // straight to their slow path.
  std::unordered_set<u64> direct_slow_;
  std::unordered_set<u64> no_memo_;  // instructions (by address) translated without a memo
  std::unordered_set<u64> no_frames_;  // blocks (by address) translated without frame checks
  big_vector<u64> memo_since_ = big_vector<u64>(mem::Mmu::kMemos);  // icount at a memo's batch start

  // Stubs in the reserved start of the code cache.
  using EnterFn = u64 (*)(x86::CpuState*, bt::Rt*, const u8*);
  EnterFn enter_ = nullptr;
  const u8* exit_common_ = nullptr;   // store guest registers, merge flags, return
  const u8* exit_nostore_ = nullptr;  // return (the state is already in CpuState)
  const u8* callout_stub_ = nullptr;  // r8 = Site*

  // Accounting while generated code runs.
  u64 icount_base_ = 0;
  // Where the run's first exception went on into its handler (fault
  // continue): the run is user mode for the user window's counts only
  // until there, as it was when the exception left to the dispatcher.
  u64 user_run_end_ = ~u64(0);
  i64 budget_start_ = 0;
  // The instruction count from the budget generated code has left, less
  // the block's instructions it counted that have not retired.
  void set_icount(u32 unretired) { s_.icount = icount_base_ + u64(budget_start_ - rt_->budget) - unretired; }
  std::exception_ptr pending_error_;
  std::FILE* perf_map_ = nullptr;
  u64 entry_epoch_ = 0;  // the MMU's epoch when the dispatcher entered generated code
  bt::BtStats st_;
};

}  // namespace popek::engine
