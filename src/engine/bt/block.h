// Translated blocks and callout sites (internal to the bt engine).
#pragma once
#include <memory>
#include <vector>

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
  u64 hits = 0;
  u64 persistent = 0;
  u64 last_slow = 0;   // instruction count at the last such visit  // slow-path hits after which the TLB still could not serve it
};

struct Block {
  u64 pa = 0;
  u64 key = 0;
  u32 cs_base = 0;
  u32 mode = 0;
  u32 eip = 0;
  u32 n = 0;            // guest instructions
  u32 guest_bytes = 0;
  const u8* code = nullptr;  // executable address
  u32 code_size = 0;
  bool valid = true;
  Block* hnext = nullptr;  // the engine's lookup chain
  // The first instruction crosses into the next linear page, mapped to pa2
  // when translated (the code checks that at entry).
  bool crosses = false;
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
    Block* to = nullptr;  // the block it is patched to, if any
  };
  // Two for the block's end, the rest for conditional branches inside it
  // (side exits); the index travels in the low bits of a Block*.
  static constexpr unsigned kMaxLinks = 6;
  Link links[kMaxLinks];
  u8 nlinks = 0;
  std::vector<std::pair<Block*, u8>> incoming;  // patched links into this block
};

// Instruction groups (stats, --bt-interp).
enum Group : u8 { G_MOV, G_ALU, G_SHIFT, G_MULDIV, G_BIT, G_STACK, G_BRANCH, G_STRING, G_X87,
                  G_SYSTEM, G_OTHER, G_MMX, G_COUNT };
const char* group_name(unsigned g);
Group group_of(const x86::Insn& i);

}  // namespace popek::engine::bt
