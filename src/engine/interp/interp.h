// The reference interpreter: fetch, decode (through a decoded-instruction cache
// keyed by physical address and invalidated when its page is written), execute
// the shared x86 semantics, take interrupts and exceptions between instructions.
#pragma once
#include <memory>
#include <vector>

#include "engine/engine.h"
#include "memory/mmu.h"
#include "memory/phys_mem.h"
#include "x86/cpu.h"

namespace popek::engine {

struct InterpStats {
  u64 insns = 0;
  u64 cache_hits = 0;
  u64 cache_misses = 0;
  u64 cache_invalidations = 0;
  u64 exceptions = 0;
  u64 interrupts = 0;
  u64 unimplemented = 0;
};

class Interp final : public Engine, public mem::CodeWatcher {
 public:
  Interp(x86::CpuState& s, mem::PhysMem& pm, x86::Platform& plat);
  ~Interp() override;

  const char* name() const override { return "interp"; }
  Exit run(u64 budget) override;
  std::vector<std::pair<std::string, u64>> stats() const override;

  // CodeWatcher
  void code_page_written(u64 ppn) override;

  mem::Mmu& mmu() { return mmu_; }
  x86::Cpu& cpu() { return cpu_; }
  const InterpStats& istats() const { return st_; }

 private:
  struct Entry {
    u64 pa = ~0ull;
    u32 gen = 0;
    u8 mode = 0;
    x86::Handler fn = nullptr;
    x86::Insn insn;
  };
  static constexpr unsigned kCacheBits = 15;

  // Decodes the instruction at CS:EIP (through the cache). Faults on fetch.
  const Entry& fetch();
  void run_insns(u64 end);
  void take_fault(const x86::Fault& f);
  void trace(const Entry& e);
  u32 gen(u64 ppn) const { return ppn < gens_.size() ? gens_[ppn] : 0; }

  x86::CpuState& s_;
  mem::PhysMem& pm_;
  mem::Mmu mmu_;
  x86::Cpu cpu_;
  std::vector<Entry> cache_;
  std::vector<u32> gens_;
  Entry scratch_;  // for instructions that span pages (not cached)
  InterpStats st_;
};

}  // namespace popek::engine
