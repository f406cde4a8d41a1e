// The reference interpreter: fetch, decode (through the Stepper's
// decoded-instruction cache), execute the shared x86 semantics, take interrupts
// and exceptions between instructions.
#pragma once
#include "engine/engine.h"
#include "engine/stepper.h"
#include "memory/mmu.h"
#include "memory/phys_mem.h"
#include "x86/cpu.h"

namespace popek::engine {

class Interp final : public Engine {
 public:
  // early_faults: see Stepper::set_early_faults.
  Interp(x86::CpuState& s, mem::PhysMem& pm, x86::Platform& plat, bool early_faults = true);

  const char* name() const override { return "interp"; }
  Exit run(u64 budget) override;
  std::vector<std::pair<std::string, u64>> stats() const override;
  void set_trace(std::FILE* out) override {
    Engine::set_trace(out);
    step_.set_trace(out);
  }

  // Another engine ran: its page-table and control-register changes never
  // reached this TLB.
  void switch_in() override { mmu_.flush_tlb(true); }

  mem::Mmu& mmu() { return mmu_; }
  x86::Cpu& cpu() { return cpu_; }
  const StepStats& istats() const { return step_.stats(); }

 private:
  x86::CpuState& s_;
  mem::Mmu mmu_;
  x86::Cpu cpu_;
  Stepper step_;
};

}  // namespace popek::engine
