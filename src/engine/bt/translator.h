// Guest basic block -> host x86-64 code. Internal to the bt engine.
#pragma once
#include <memory>
#include <vector>

#include "engine/bt/block.h"
#include "engine/bt/code_cache.h"

namespace popek::engine {
class Bt;
}

namespace popek::engine::bt {

// Mode bits of a translation key (what changes the generated code).
enum : u32 {
  M_CPL = 3,
  M_CS_FLAT = 1u << 2,   // CS limit 4 GiB
  M_SS32 = 1u << 3,      // 32-bit stack
  M_DF = 1u << 16,       // EFLAGS.DF (string direction; CLD/STD end blocks when they change it)
  M_NOPG = 1u << 17,     // paging off: memory operands address RAM directly (BtOptions::fastmem)
  M_UWIN = 1u << 18,     // CPL 3, paging on, the MMU's user window active: memory operands address it
};
// Per data segment (x86 segment number s): flat_rw (limit 4 GiB, writable,
// expand-up, present) and base 0.
constexpr u32 m_flat(unsigned s) { return 1u << (4 + 2 * s); }
constexpr u32 m_base0(unsigned s) { return 1u << (5 + 2 * s); }

struct Stubs {
  const u8* exit_common;
  const u8* exit_nostore;
  const u8* callout;
  const u8* callout_nosave;  // the guest flags are already in Rt::hf
  const u8* tsc;             // r8d = instructions not yet retired: EDX:EAX = the TSC (flags clobbered)
  const u8* verw;            // r8 = a VERW's Site (absolute operand): r9d = its ZF at CPL 0, 2 if it faults (flags clobbered)
};

class Emitter;

class Translator {
 public:
  Translator(Bt& bt, CodeCache& cc, i32 tlb_off);
  ~Translator();
  void set_stubs(const Stubs& s) { stubs_ = s; }
  // Translates the block starting at `eip` (guest-physical `pa`, host bytes of
  // its page at `page`). Fills `b` (code, sites, links). Returns false if the
  // cache is too full (the caller flushes and retries) — never for other reasons:
  // an instruction it cannot translate becomes a callout.
  // `page2`: the host bytes of the page after it, when the first instruction
  // continues there (a one-instruction block that checks at entry that the
  // second page is still mapped to b.pa2).
  bool translate(Block& b, const u8* page, u32 max_insns, const u8* page2 = nullptr);

  static constexpr size_t kMaxBlockCode = 64 * 1024;

 private:
  Bt& bt_;
  CodeCache& cc_;
  i32 tlb_off_;
  Stubs stubs_{};
  std::vector<u8> scratch_;
  Block::Link links_[Block::kMaxLinks];  // the block's links while it is emitted
  std::unique_ptr<Emitter> emitter_;
};

}  // namespace popek::engine::bt
