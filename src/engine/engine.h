// The interface every engine implements (interp, bt, kvm). All engines read and
// write one x86::CpuState that lives outside them, so a VM can switch engines
// and snapshots are engine-neutral.
#pragma once
#include <atomic>
#include <cstdio>
#include <string>
#include <utility>
#include <vector>

#include "base/types.h"

namespace popek::engine {

// Why run() returned.
enum class Exit {
  budget,      // executed the instruction budget (the board's next timer deadline)
  halt,        // HLT with nothing to wake the CPU: the board waits for an interrupt
  shutdown,    // triple fault (or another shutdown cycle)
  stopped,     // request_stop() from a device or another thread
};
const char* exit_name(Exit e);

class Engine {
 public:
  virtual ~Engine() = default;
  virtual const char* name() const = 0;
  // Runs guest code for at most `budget` instructions.
  virtual Exit run(u64 budget) = 0;
  // Asks run() to return at the next instruction boundary (thread- and signal-safe).
  void request_stop() {
    stop_.store(true, std::memory_order_relaxed);
    kick();
  }
  // Statistics of what the engine did, as (name, value) pairs.
  virtual std::vector<std::pair<std::string, u64>> stats() const = 0;
  // Instruction trace with disassembly to `out` (null: off).
  virtual void set_trace(std::FILE* out) { trace_ = out; }

  // Switching engines while the guest runs (Machine: --engine-schedule, the
  // control socket's x-popek-set-engine, --engine hybrid). Every engine
  // keeps the architectural state in the one CpuState between run() calls;
  // what it caches beside it must be given up or checked at a handover.
  // switch_out(): this engine stops running the guest for now: whatever it
  // did to memory behind PhysMem's back (kvm: the guest's own stores) is
  // told to PhysMem (notify_write), so other engines' decoded and
  // translated code of those pages goes. switch_in(): it runs the guest
  // again after another engine did: the CpuState (CR0/CR3/CR4, segments,
  // events), the page tables and memory may all have changed, so its TLB,
  // jump cache and user window start empty (translated code keyed by
  // physical page stays: writes to it reached PhysMem, which invalidated it).
  virtual void switch_out() {}
  virtual void switch_in() {}

 protected:
  bool take_stop() { return stop_.exchange(false, std::memory_order_relaxed); }
  // Gets a run() that does not poll stop_ (kvm: the vCPU inside KVM_RUN) to
  // look at it soon. Called from any thread and from signal handlers: must be
  // async-signal-safe.
  virtual void kick() {}
  std::atomic<bool> stop_{false};
  std::FILE* trace_ = nullptr;
};

}  // namespace popek::engine
