// Translated blocks and callout sites (internal to the bt engine).
#pragma once
#include <cstdint>
#include <type_traits>

#include "base/types.h"
#include "x86/cpu.h"

namespace popek::engine::bt {

struct Block;

// One instruction executed by calling the shared semantics, either always
// (sensitive, untranslated) or when its inline memory access misses.
struct Site {
  x86::Insn insn;
  x86::Handler fn = nullptr;
  x86::EarlyCheck early = nullptr;
  Block* block = nullptr;
  u64 pa = 0;          // guest-physical address of the instruction
  u32 eip = 0;
  u16 idx = 0;         // index in the block
  u8 group = 0;
  bool ends = false;   // the block ends after it: always leave to the dispatcher
  bool slow_path = false;  // reached when an inline memory access missed
  bool direct = false;     // the adaptive policy made this a plain callout
  bool rep_resume = false; // continues a REP the block began: leaves at a yield point
  bool shadow_ok = false;  // the next instruction is a callout that ends the block
  bool mode_check = false; // may change what the translation assumed (segments, CPL, DF)
  // The inline access the slow path stands for (adaptive translation).
  enum Addr : u8 { A_EA, A_PUSH, A_POP, A_EBP, A_MOFFS, A_ESI, A_EDI };
  Addr addr = A_EA;
  u8 seg = 0;
  u8 size = 0;
  bool write = false;
  bool phys = false;   // the inline access addresses RAM directly (paging off)
  bool window = false;    // the inline access addresses the user window (mem::Mmu)
  bool has_memo = false;  // the inline access first checks memo `memo` (mem::Mmu::Memo)
  u16 memo = 0;
  // The first access of a frame-check group (BtOptions::frame_checks): its
  // slow path leaves Rt::frame_addend for the span [base + frame_lo, base +
  // frame_lo + frame_span) for the group's other accesses.
  bool frame_lead = false;
  bool frame_write = false;
  u8 frame_base = 0;    // the guest base register
  u16 frame_span = 0;   // 0: not a group's first access
  i32 frame_lo = 0;
  u16 frame_misses = 0;
  u32 frame_miss_at = 0;  // (low bits of) the instruction count at the last miss
  u64 hits = 0;
  u64 persistent = 0;
  u64 last_slow = 0;   // instruction count at the last such visit  // slow-path hits after which the TLB still could not serve it
};

// Trivially destructible (records live in the engine's arena and are
// dropped with it, no destructor run): the links are an arena array of
// nlinks, the patched links into a block a list threaded through them.
// A slow path's site until the slow path first runs (BtOptions::lazy_sites):
// most never do. What the site needs besides what follows from the
// instruction (handler, group) and the block (pa). Generated code passes
// its address + kSeedTag where it would pass a Site*; the callout makes the
// Site then (Bt::site_of). Seeds of a block are one arena array.
struct SiteSeed {
  x86::Insn insn;
  u32 eip = 0;
  Block* block = nullptr;
  Site* site = nullptr;  // made at the first run
  u16 idx = 0;
  u16 memo = 0;
  u8 size = 0;
  u8 seg = 0;
  u8 addr = 0;           // Site::Addr
  u8 bits = 0;           // kSeed* below
  static constexpr u8 kModeCheck = 1, kWrite = 2, kPhys = 4, kWindow = 8, kHasMemo = 16;
};
static_assert(sizeof(SiteSeed) == 56 && alignof(SiteSeed) == 8);
inline constexpr uintptr_t kSeedTag = 1;

struct Block {
  u64 pa = 0;
  u64 key = 0;
  u32 cs_base = 0;
  u32 mode = 0;
  u32 eip = 0;
  u32 n = 0;            // guest instructions
  u32 guest_bytes = 0;
  u32 code_size = 0;
  const u8* code = nullptr;  // executable address
  bool valid = true;
  // The first instruction crosses into the next linear page, mapped to pa2
  // when translated (the code checks that at entry).
  bool crosses = false;
  u8 nlinks = 0;
  u8 in_k = 0;          // the link of in_from that heads the incoming list
  Block* hnext = nullptr;  // the engine's lookup chain
  u64 pa2 = 0;
  // The linear address of the page after the block's first byte.
  u32 second_page_la() const { return ((cs_base + eip) & ~0xFFFu) + 0x1000; }
  struct Link {
    u32 slot = 0;         // offset of the patchable `jmp rel32` in the code
    // 0, or the offset of the rel32 of the block's last Jcc, which jumps to
    // `slot`: chained, it jumps to the successor itself (a loop's back edge
    // is then one taken branch, not two).
    u32 jcc = 0;
    u32 target_eip = 0;
    u8 next_k = 0;
    Block* to = nullptr;  // the block it is patched to, if any
    // The next link patched into `to`: link next_k of next_from (null: none).
    Block* next_from = nullptr;
  };
  // Two for the block's end, the rest for conditional branches inside it
  // (side exits); the index travels in the low bits of a Block*.
  static constexpr unsigned kMaxLinks = 6;
  Link* links = nullptr;  // nlinks of them
  // The patched links into this block: link in_k of in_from, then on
  // through their next_from/next_k (null: none).
  Block* in_from = nullptr;
};
static_assert(std::is_trivially_destructible_v<Block>, "blocks are freed without destructors");

// Instruction groups (stats, --bt-interp).
enum Group : u8 { G_MOV, G_ALU, G_SHIFT, G_MULDIV, G_BIT, G_STACK, G_BRANCH, G_STRING, G_X87,
                  G_SYSTEM, G_OTHER, G_MMX, G_COUNT };
const char* group_name(unsigned g);
Group group_of(const x86::Insn& i);

}  // namespace popek::engine::bt
