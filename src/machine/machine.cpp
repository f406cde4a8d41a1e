#include "machine/machine.h"

#include <fstream>
#include <iterator>

#include "base/error.h"
#include "engine/interp/interp.h"
#include "machine/debug_ports.h"

namespace popek::machine {

namespace {
// isa-debug-exit: a write of v ends the run with status (v << 1) | 1.
class ExitPort final : public dev::Device {
 public:
  explicit ExitPort(std::function<void(u32)> f) : f_(std::move(f)) {}
  const char* name() const override { return "debug-exit"; }
  u64 read(u64, unsigned size) override { return size == 4 ? 0xFFFFFFFFu : (1u << (8 * size)) - 1; }
  void write(u64, unsigned, u64 v) override { f_(u32(v)); }

 private:
  std::function<void(u32)> f_;
};
}  // namespace

Machine::Machine(const Config& cfg)
    : cfg_(cfg), clock_(cfg.deterministic, &cpu_.icount) {
  pm_ = std::make_unique<mem::PhysMem>(cfg.memory);
  pm_->set_mmio(this);
  cpu_.reset();

  if (!cfg.trace_file.empty()) {
    if (cfg.trace_file == "-") {
      trace_ = stderr;
    } else {
      trace_ = std::fopen(cfg.trace_file.c_str(), "w");
      if (!trace_) throw Error("cannot open trace file '" + cfg.trace_file + "'");
    }
  }
  for (const auto& d : cfg.debug_ports) {
    std::FILE* out = stdout;
    bool own = false;
    if (!d.file.empty()) {
      out = std::fopen(d.file.c_str(), "wb");
      if (!out) throw Error("--debug-port: cannot open '" + d.file + "' for writing");
      own = true;
    }
    char name[32];
    std::snprintf(name, sizeof name, "debug-port-%#x", d.port);
    devices_.push_back(std::make_unique<DebugPortSink>(name, out, own));
    pio_.map(d.port, 1, devices_.back().get());
  }
  if (cfg.exit_port) {
    devices_.push_back(std::make_unique<ExitPort>([this](u32 v) {
      exit_requested_ = true;
      exit_value_ = int((v << 1) | 1);
      engine_->request_stop();
    }));
    pio_.map(cfg.exit_port, 1, devices_.back().get());
  }

  if (!cfg.firmware.empty()) load_firmware();

  if (cfg.engine == "interp") {
    engine_ = std::make_unique<engine::Interp>(cpu_, *pm_, *this);
  } else {
    throw Error("unknown engine '" + cfg.engine + "' (available: interp)");
  }
  if (trace_) engine_->set_trace(trace_);
}

Machine::~Machine() {
  if (trace_ && trace_ != stderr) std::fclose(trace_);
}

void Machine::load_firmware() {
  std::ifstream f(cfg_.firmware, std::ios::binary);
  if (!f) throw Error("--firmware: cannot open '" + cfg_.firmware + "'");
  std::vector<u8> data((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  if (data.empty()) throw Error("--firmware: '" + cfg_.firmware + "' is empty");
  if (data.size() > 256 * 1024 || (data.size() & 0xFFF))
    throw Error("--firmware: '" + cfg_.firmware + "' is " + std::to_string(data.size()) +
                " bytes; a ROM image must be a multiple of 4 KiB and at most 256 KiB");
  // Mapped to end at 0xFFFFF (below 1 MiB) and aliased to end at 4 GiB, where
  // the reset vector F000:FFF0 (linear 0xFFFFFFF0) finds it.
  pm_->add_rom(0x100000 - data.size(), data);
  pm_->add_rom(0x100000000ull - data.size(), data);
}

u32 Machine::io_in(u16 port, unsigned size) { return u32(pio_.read(port, size)); }
void Machine::io_out(u16 port, unsigned size, u32 v) { pio_.write(port, size, v); }

u8 Machine::intr_ack() {
  // No interrupt controller on this board yet: INTR is never raised.
  return 0xFF;
}

RunResult Machine::run() {
  constexpr u64 kSlice = 100000;
  for (;;) {
    u64 budget = kSlice;
    if (cfg_.max_insns) {
      if (cpu_.icount >= cfg_.max_insns)
        return {Outcome::insn_limit, 8, "instruction limit reached (" + std::to_string(cfg_.max_insns) + ")"};
      budget = std::min<u64>(budget, cfg_.max_insns - cpu_.icount);
    }
    engine::Exit e = engine_->run(budget);
    if (exit_requested_)
      return {Outcome::debug_exit, exit_value_,
              "guest wrote to the exit port: status " + std::to_string(exit_value_)};
    switch (e) {
      case engine::Exit::budget: continue;
      case engine::Exit::shutdown:
        return {Outcome::triple_fault, 4, "triple fault: the CPU shut down"};
      case engine::Exit::halt:
        if (!(cpu_.eflags & x86::IF))
          return {Outcome::halted, 6, "guest halted with interrupts disabled"};
        // Nothing can raise an interrupt on this board yet.
        return {Outcome::halted, 6, "guest halted waiting for an interrupt no device can raise"};
      case engine::Exit::stopped:
        return {Outcome::stopped, 10, "stopped"};
    }
  }
}

std::vector<std::pair<std::string, u64>> Machine::stats() const {
  auto out = engine_->stats();
  for (auto& kv : pio_.counters().snapshot()) out.push_back(kv);
  out.emplace_back("pio.unclaimed_reads", pio_.unclaimed_reads());
  out.emplace_back("pio.unclaimed_writes", pio_.unclaimed_writes());
  out.emplace_back("mmio.unclaimed_reads", mmio_.unclaimed_reads());
  out.emplace_back("mmio.unclaimed_writes", mmio_.unclaimed_writes());
  out.emplace_back("mem.code_invalidations", pm_->code_invalidations());
  return out;
}

}  // namespace popek::machine
