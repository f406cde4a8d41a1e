// The machine: builds a VM from a Config, owns guest memory, the buses and the
// devices, the vCPU state and its engine, and runs the vCPU loop. It is the only
// code that knows addresses, ports and IRQ numbers (see pc_layout.h).
#pragma once
#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include "devices/bus/bus.h"
#include "devices/pc/debug_ports.h"
#include "devices/pc/i8042.h"
#include "devices/pc/i8254_pit.h"
#include "devices/pc/i8259_pic.h"
#include "devices/pc/mc146818_rtc.h"
#include "devices/pc/pci.h"
#include "devices/pc/pci_host.h"
#include "devices/pc/uart_16550.h"
#include "machine/console.h"
#include "engine/bt/bt.h"
#include "engine/engine.h"
#include "machine/clock.h"
#include "machine/virtio_board.h"
#include "memory/phys_mem.h"
#include "x86/cpu.h"

namespace popek::machine {

struct DebugPortSpec {
  u16 port;
  std::string file;  // empty: standard output
};

struct Config {
  u64 memory = 256ull << 20;
  std::string engine = "bt";
  engine::BtOptions bt;  // --engine bt switches
  std::string firmware;  // raw ROM image: mapped to end at 0xFFFFF and at 4 GiB
  std::string kernel, initrd, append;  // Linux boot protocol (bzImage)
  bool console = true;   // the serial console (COM1) on stdin/stdout
  std::vector<DebugPortSpec> debug_ports;
  u16 exit_port = 0xF4;  // isa-debug-exit
  bool deterministic = false;
  std::string trace_file;  // "-" for stderr
  u64 max_insns = 0;       // stop after this many instructions (0: no limit)
  VirtioConfig virtio;     // --drive, --netdev, --rng (see virtio_board.h)
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
  void load_kernel();
  void build_pc();
  u64 next_deadline() const;
  void fire_timers();
  void pump_console(bool* quit);
  void wait_for_event(u64 deadline);
  void status_line();
  // Paravirtual devices and their host I/O (machine_virtio.cpp).
  void build_virtio();
  void poll_io_if_due();
  bool has_io() const;

  Config cfg_;
  x86::CpuState cpu_;
  std::unique_ptr<mem::PhysMem> pm_;
  VirtualClock clock_;
  dev::Bus pio_{"pio"};
  dev::Bus mmio_{"mmio"};
  std::vector<std::unique_ptr<dev::Device>> devices_;
  // The PC chips and their wiring.
  dev::IrqLine intr_, slave_intr_;
  dev::IrqLine irq_[16];
  std::unique_ptr<dev::I8259Pic> pic_master_, pic_slave_;
  std::unique_ptr<dev::I8259Elcr> elcr_master_, elcr_slave_;
  std::unique_ptr<dev::I8254Pit> pit_;
  std::unique_ptr<dev::SystemControlPortB> port_b_;
  std::unique_ptr<dev::Uart16550> com1_;
  std::unique_ptr<dev::Mc146818Rtc> rtc_;
  std::unique_ptr<dev::I8042> i8042_;
  std::unique_ptr<dev::PostCodePort> post_;
  std::unique_ptr<dev::PciBus> pci_bus_;
  std::unique_ptr<dev::PciHostBridge> pci_host_;
  std::vector<Timed*> timed_;
  std::unique_ptr<Console> console_;
  std::string console_pending_;
  bool reset_requested_ = false;
  bool quit_requested_ = false;
  u64 irq_counts_[16] = {};
  std::unique_ptr<engine::Engine> engine_;
  std::FILE* trace_ = nullptr;
  bool exit_requested_ = false;
  int exit_value_ = 0;
  std::unique_ptr<VirtioBoard> virtio_;
  u64 last_io_poll_ns_ = 0;
};

}  // namespace popek::machine
