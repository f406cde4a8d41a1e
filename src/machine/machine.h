// The machine: builds a VM from a Config, owns guest memory, the buses and the
// devices, the vCPU state and its engine, and runs the vCPU loop. It is the only
// code that knows addresses, ports and IRQ numbers (see pc_layout.h).
#pragma once
#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include "devices/bus/bus.h"
#include "engine/engine.h"
#include "machine/clock.h"
#include "memory/phys_mem.h"
#include "x86/cpu.h"

namespace popek::machine {

struct DebugPortSpec {
  u16 port;
  std::string file;  // empty: standard output
};

struct Config {
  u64 memory = 256ull << 20;
  std::string engine = "interp";
  std::string firmware;  // raw ROM image: mapped to end at 0xFFFFF and at 4 GiB
  std::vector<DebugPortSpec> debug_ports;
  u16 exit_port = 0xF4;  // isa-debug-exit
  bool deterministic = false;
  std::string trace_file;  // "-" for stderr
  u64 max_insns = 0;       // stop after this many instructions (0: no limit)
};

// How a run ended; the exit status of `popek run` encodes it.
enum class Outcome { poweroff, reset, triple_fault, halted, debug_exit, insn_limit, stopped };

struct RunResult {
  Outcome outcome;
  int exit_status;
  std::string message;
};

class Machine final : public x86::Platform, public mem::MmioHandler {
 public:
  explicit Machine(const Config& cfg);
  ~Machine() override;

  RunResult run();
  void request_stop() { engine_->request_stop(); }

  // Statistics of everything: engine, buses, devices.
  std::vector<std::pair<std::string, u64>> stats() const;

  x86::CpuState& cpu() { return cpu_; }
  mem::PhysMem& mem() { return *pm_; }
  engine::Engine& engine() { return *engine_; }

  // x86::Platform
  u32 io_in(u16 port, unsigned size) override;
  void io_out(u16 port, unsigned size, u32 value) override;
  u64 tsc() override { return clock_.tsc(); }
  u8 intr_ack() override;
  // mem::MmioHandler
  u64 mmio_read(u64 pa, unsigned size) override { return mmio_.read(pa, size); }
  void mmio_write(u64 pa, unsigned size, u64 v) override { mmio_.write(pa, size, v); }

 private:
  void load_firmware();

  Config cfg_;
  x86::CpuState cpu_;
  std::unique_ptr<mem::PhysMem> pm_;
  VirtualClock clock_;
  dev::Bus pio_{"pio"};
  dev::Bus mmio_{"mmio"};
  std::vector<std::unique_ptr<dev::Device>> devices_;
  std::unique_ptr<engine::Engine> engine_;
  std::FILE* trace_ = nullptr;
  bool exit_requested_ = false;
  int exit_value_ = 0;
};

}  // namespace popek::machine
