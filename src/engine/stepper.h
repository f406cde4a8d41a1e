// One-instruction execution shared by the software engines: fetch and decode at
// CS:EIP through a decoded-instruction cache (keyed by physical address and
// mode, invalidated per page when the page is written), the privilege and #NM
// checks every instruction gets, the shared x86 semantics, single-step traps,
// and delivery of pending interrupts and faults. The interpreter is a loop over
// it; the translator uses it for code it does not translate and for callouts.
#pragma once
#include <cstdio>
#include <vector>

#include "base/big_alloc.h"
#include "engine/engine.h"
#include "memory/mmu.h"
#include "memory/phys_mem.h"
#include "x86/cpu.h"
#include "x86/sem/sem.h"

namespace popek::engine {

struct StepStats {
  u64 cache_hits = 0;
  u64 cache_misses = 0;
  u64 cache_invalidations = 0;
  u64 exceptions = 0;
  u64 interrupts = 0;
  u64 unimplemented = 0;
  u64 early_faults = 0;  // exceptions delivered from an early check (no C++ throw)
};

class Stepper final : public mem::CodeWatcher {
 public:
  struct Entry {
    u64 pa = ~0ull;
    u32 gen = 0;
    u8 mode = 0;
    x86::Handler fn = nullptr;
    // The instruction's early check, once it has faulted through a throw
    // (the check costs the interpreter ~10 % on MOVs that never fault;
    // instructions that faulted once tend to fault again: a loop touching
    // fresh pages, a division by a zero that stays zero).
    x86::EarlyCheck early = nullptr;
    x86::Insn insn;
  };

  Stepper(x86::CpuState& s, mem::PhysMem& pm, mem::Mmu& mmu, x86::Cpu& cpu);
  ~Stepper() override;
  Stepper(const Stepper&) = delete;
  Stepper& operator=(const Stepper&) = delete;

  // Decodes the instruction at CS:EIP (through the cache). Raises the fetch's
  // faults (#PF, #GP for the CS limit, #UD).
  const Entry& fetch();
  // Executes one decoded instruction at CS:EIP: CPL/#NM checks, semantics,
  // EIP and icount update, the TF trap. Faults propagate as x86::Fault, but
  // one that the instruction's early check finds (x86::EarlyCheck, where
  // early faults are on) is delivered here: false then.
  bool execute(const x86::Insn& i, x86::Handler fn, x86::EarlyCheck early);
  // Early checks on (default) or off (every fault through the C++ throw).
  void set_early_faults(bool on) { early_faults_ = on; }
  bool early_faults() const { return early_faults_; }
  // Fetch + execute until icount reaches `end`, the CPU stops (cpu.stop), an
  // interrupt becomes deliverable, or `max` instructions ran.
  void run_insns(u64 end, u64 max = ~0ull);
  // The same, also returning after an instruction that did not go on to the
  // next one (a taken branch, a call, a fault, an interrupt): one basic block.
  void run_block(u64 end, u64 max);
  // The outer loop of a software engine: take a stop request, deliver
  // pending events, end at shutdown, halt or the end of the budget, and
  // otherwise run `inner()` (which executes instructions up to `end`),
  // delivering the faults it raises.
  template <typename TakeStop, typename Inner>
  Exit run_loop(u64 end, TakeStop take_stop, Inner inner) {
    for (;;) {
      if (take_stop()) return Exit::stopped;
      if (s_.shutdown) return Exit::shutdown;
      try {
        deliver_pending();
        if (s_.shutdown) return Exit::shutdown;
        if (s_.halted) return Exit::halt;
        if (s_.icount >= end) return Exit::budget;
        cpu_.stop = x86::StopReason::none;
        inner();
        if (cpu_.stop == x86::StopReason::shutdown) return Exit::shutdown;
        // HLT with an interrupt already deliverable (raised while IF was 0,
        // then STI; HLT) wakes at once, as on a real CPU: the board must not
        // see a CPU asleep with nothing to wake it (it would end the run).
        if (cpu_.stop == x86::StopReason::halt && !event_ready()) return Exit::halt;
      } catch (const x86::Fault& f) {
        arm_early();
        take_fault(f);
      } catch (const x86::Unimplemented& u) {
        take_unimplemented(u);
      }
    }
  }
  // Delivers a pending NMI or (IF permitting) INTR. Call between instructions.
  void deliver_pending();
  // Delivers a fault raised at the current EIP.
  void take_fault(const x86::Fault& f);
  void take_unimplemented(const x86::Unimplemented& u);
  // A fault was raised (thrown) while run() executed an instruction: from
  // now on that instruction's early check (if it has one) runs before it.
  void arm_early();
  // True if an interrupt or NMI can be taken now.
  bool event_ready() const {
    return (s_.nmi_pending && !s_.nmi_blocked) ||
           (s_.intr_line && (s_.eflags & x86::IF) && !s_.intr_shadow);
  }

  void set_trace(std::FILE* f) { trace_ = f; }
  const StepStats& stats() const { return st_; }
  StepStats& stats() { return st_; }

  // CodeWatcher
  void code_page_written(u64 ppn) override;

 private:
  template <bool kOneBlock>
  void run(u64 end, u64 max);
  static constexpr unsigned kCacheBits = 15;
  void trace(const Entry& e);
  u32 gen(u64 ppn) const { return ppn < gens_.size() ? gens_[ppn] : 0; }

  x86::CpuState& s_;
  mem::PhysMem& pm_;
  mem::Mmu& mmu_;
  x86::Cpu& cpu_;
  big_vector<Entry> cache_;
  big_vector<u32> gens_;
  Entry scratch_;  // for instructions that span pages (not cached)
  StepStats st_;
  std::FILE* trace_ = nullptr;
  bool early_faults_ = true;
  Entry* current_ = nullptr;  // the entry run() executes (armed by take_fault)
};

// Statistics every software engine reports: the soft TLB's counters.
void append_mmu_stats(const mem::Mmu& mmu, std::vector<std::pair<std::string, u64>>& out);

}  // namespace popek::engine
