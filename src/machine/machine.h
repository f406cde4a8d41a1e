// The machine: builds a VM from a Config, owns guest memory, the buses and the
// devices, the vCPU state and its engine, and runs the vCPU loop. It is the only
// code that knows addresses, ports and IRQ numbers (see pc_layout.h).
#pragma once
#include <atomic>
#include <chrono>
#include <cstdio>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <span>
#include <string>
#include <vector>

#include "devices/bus/bus.h"
#include "devices/pc/acpi_pm.h"
#include "devices/pc/debug_ports.h"
#include "devices/pc/i8042.h"
#include "devices/pc/i8254_pit.h"
#include "devices/pc/i8259_pic.h"
#include "devices/pc/mc146818_rtc.h"
#include "devices/pc/pci.h"
#include "devices/pc/pci_host.h"
#include "devices/pc/uart_16550.h"
#include "machine/console.h"
#include "machine/engine_schedule.h"
#include "machine/hybrid_policy.h"
#include "engine/bt/bt.h"
#include "engine/engine.h"
#include "machine/clock.h"
#include "machine/virtio_board.h"
#include "memory/phys_mem.h"
#include "x86/cpu.h"

namespace popek::snap {
class Sink;
class Source;
class StreamWriter;
struct RamStats;
}

namespace popek::machine {

struct DebugPortSpec {
  u16 port;
  std::string file;  // empty: standard output
};

struct Config {
  u64 memory = 256ull << 20;
  std::string engine = "bt";   // interp, bt, kvm, or hybrid (kvm and bt by HybridPolicy)
  // --engine-schedule (engine_schedule.h): switch engines while the guest
  // runs; empty: the one engine of `engine` throughout.
  std::string engine_schedule;
  // --switch-check: at every switch, the state the next engine starts from
  // must be the one the last left (kvm: as read back from the vCPU), and
  // guest RAM's hash unchanged by the handover.
  bool switch_check = false;
  engine::BtOptions bt;  // --engine bt switches
  std::string firmware;  // raw ROM image: mapped to end at 0xFFFFF and at 4 GiB
  std::string kernel, initrd, append;  // Linux boot protocol (bzImage)
  bool console = true;   // the serial console (COM1) on stdin/stdout
  std::vector<DebugPortSpec> debug_ports;
  u16 exit_port = 0xF4;  // isa-debug-exit
  bool deterministic = false;
  // ACPI (--no-acpi turns it off): the PM1 registers and, with --kernel, the
  // tables in the BIOS area; system_powerdown presses its power button and
  // the guest's S5 request powers the machine off.
  bool acpi = true;
  // KVM's paravirtual interface on interp and bt (x86/paravirt.h: CPUID
  // 0x40000000, kvm-clock, hypercalls); --no-paravirt turns it off.
  bool paravirt = true;
  // interp and bt deliver the faults an instruction's early check finds
  // (divide errors, a MOV's #PF) without a C++ throw; --no-early-faults
  // sends every fault through the throw (engine/stepper.h).
  bool early_faults = true;
  std::string trace_file;  // "-" for stderr
  u64 max_insns = 0;       // stop after this many instructions (0: no limit)
  VirtioConfig virtio;     // --drive, --netdev, --rng (see virtio_board.h)
  bool append_outputs = false;  // --trace and --debug-port files: append (a machine rebuilt by system_reset)
  // --incoming file:PATH: the machine's state comes from PATH (written by
  // QMP `migrate`) instead of booting: RAM, CPU, devices, clock. The rest of
  // the configuration must describe the same machine (checked).
  std::string incoming;
  // --incoming tcp:...: a connected socket the stream comes from (main
  // accepted it); the state is read from it as from a file. -1: none.
  int incoming_fd = -1;
  std::string incoming_what;  // names that stream in messages
};

// What save_state wrote.
struct SaveStats {
  u64 bytes = 0;          // the whole stream
  u64 ram_pages = 0, zero_pages = 0;
  u64 ram_raw_bytes = 0, ram_compressed_bytes = 0;
};

// How a run ended; the exit status of `popek run` encodes it. `stopped`: a
// signal (request_stop); console_quit: Ctrl-A X; host_quit and host_reset:
// end_run() from the control socket (`quit`, `system_reset`).
enum class Outcome {
  poweroff, reset, triple_fault, halted, debug_exit, insn_limit, stopped,
  console_quit, host_quit, host_reset
};

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
  // Ends run() at the next safe point (thread- and async-signal-safe).
  void request_stop();

  // Control from another thread (the control socket). `fn` runs on the vCPU
  // thread at the next safe point of run() — between engine slices (the
  // engine is asked to stop at its next instruction or block boundary), while
  // halted, or while paused — and gets this machine. Once run() has returned,
  // or if it returns before fn's turn, fn runs with nullptr instead (on the
  // thread that notices). Thread-safe.
  using ControlFn = std::function<void(Machine*)>;
  void post(ControlFn fn);
  // vCPU thread only (inside a posted fn, or before run()):
  // pause(): the guest stops between instructions, its timers and its clock
  // (VirtualClock::pause) stand still, host I/O for its devices is not polled;
  // resume() continues with no jump in guest time.
  void pause();
  void resume();
  bool paused() const { return paused_; }
  // run() returns `outcome` at the safe point (host_quit, host_reset).
  void end_run(Outcome outcome);

  // ---- suspend/resume (machine_snapshot.cpp); vCPU thread, while paused ----
  // Whether the machine can be saved (false with a TAP network card: its
  // host side is not popek's to move); *why says why not.
  bool can_save(std::string* why) const;
  // The network backends' hostfwd listening ports: given up at a live
  // migration's switch-over, taken back if it fails; the destination (built
  // with Config::virtio.defer_host_ports) claims them once the stream is
  // complete. claim throws popek::Error naming the port (then none is held).
  void release_host_ports();
  void claim_host_ports();
  // Completes in-flight disk requests into the guest's rings and flushes
  // every disk image.
  void quiesce();
  // Writes the whole machine to `out` (see src/snapshot/stream.h): a
  // "machine" section describing the configuration, RAM, clock, CPU, chips,
  // PCI and virtio devices. Throws popek::Error.
  SaveStats save_state(snap::Sink& out);
  // The pieces of that stream, for a live migration that sends RAM in
  // passes while the guest runs: the "machine" section; all of RAM as
  // "ram" sections (any thread, while RAM may change: a page written
  // meanwhile is dirty and goes again); the pages listed as "ram-pages";
  // the CPU and devices (vCPU thread, paused, quiesced).
  void save_config(snap::StreamWriter& w);
  void save_ram(snap::StreamWriter& w, snap::RamStats* rs);
  void save_ram_pages(snap::StreamWriter& w, std::span<const u32> ppns, snap::RamStats* rs);
  void save_devices(snap::StreamWriter& w);
  // The dirty log (PhysMem): pages written since the last call (vCPU thread).
  std::vector<u32> sync_dirty_log();

  // When the --incoming tcp: stream had been read and loaded (before the
  // engine was made), for the destination's timing of a switch-over.
  std::chrono::steady_clock::time_point stream_loaded() const { return stream_loaded_; }

  // The ACPI power button is pressed (QMP system_powerdown): PWRBTN_STS,
  // and the SCI if the guest enabled the button. False (nothing done) on a
  // board without ACPI. vCPU thread.
  bool press_power_button();

  // Statistics of everything: engine, buses, devices.
  std::vector<std::pair<std::string, u64>> stats() const;

  x86::CpuState& cpu() { return cpu_; }
  mem::PhysMem& mem() { return *pm_; }
  // The engine running the guest now.
  engine::Engine& engine() { return *engine_.load(std::memory_order_relaxed); }
  EngineKind engine_kind() const { return cur_kind_; }

  // ---- switching engines (vCPU thread) ----
  // The guest goes on on `k` from the next safe point (made if it does not
  // exist: throws popek::Error if it cannot be). A schedule or the hybrid
  // policy stops: the engine stays `k` until the next set_engine.
  void set_engine(EngineKind k);
  // The engines made so far (kept until the machine goes).
  std::vector<EngineKind> engines() const;
  bool uses_kvm() const { return engines_[unsigned(EngineKind::kvm)] != nullptr; }
  // The schedule in force ("" if none) and whether the hybrid policy steers.
  std::string schedule_spec() const { return slices_ ? sched_.spec : std::string(); }
  bool hybrid() const { return hybrid_ != nullptr; }
  u64 switches() const { return switch_total_; }

  // x86::Platform
  u32 io_in(u16 port, unsigned size) override;
  void io_out(u16 port, unsigned size, u32 value) override;
  u64 tsc() override { return clock_.tsc(); }
  u8 intr_ack() override;
  bool paravirt() override { return cfg_.paravirt; }
  bool read_phys(u64 pa, void* dst, unsigned len) override;
  bool write_phys(u64 pa, const void* src, unsigned len) override;
  u64 wall_clock_epoch_ns() override { return wall_epoch_ns_; }
  // mem::MmioHandler
  u64 mmio_read(u64 pa, unsigned size) override { return mmio_.read(pa, size); }
  void mmio_write(u64 pa, unsigned size, u64 v) override { mmio_.write(pa, size, v); }

 private:
  void load_state(const std::string& path);
  void load_stream(snap::Source& src, const std::string& what);
  std::vector<std::string> describe() const;
  void load_firmware();
  void load_kernel();
  void build_pc();
  void build_acpi();
  void write_acpi_tables();
  // Drives PIC input `irq` from its sources: PCI INTx (virtio) and the SCI.
  void drive_irq(unsigned irq);
  u64 next_deadline() const;
  void fire_timers();
  void pump_console(bool* quit, bool deliver = true);
  void wait_for_event(u64 deadline);
  RunResult run_loop();
  void serve_control();
  void close_control();
  void wait_paused();
  // Waits up to wait_ns for the wake fd, the console (`con`) and, when
  // `io`, host device I/O.
  void wait_fds(u64 wait_ns, bool con, bool io);
  void status_line();
  // Paravirtual devices and their host I/O (machine_virtio.cpp).
  void build_virtio();
  void poll_io_if_due();
  bool has_io() const;

  Config cfg_;
  x86::CpuState cpu_;
  std::unique_ptr<mem::PhysMem> pm_;
  VirtualClock clock_;
  // Wall-clock time (ns since 1970) at clock time 0: the RTC's starting
  // point and kvm-clock's wall clock (fixed in deterministic mode).
  u64 wall_epoch_ns_ = 0;
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
  std::unique_ptr<dev::AcpiPm> acpi_pm_;  // null with --no-acpi
  dev::IrqLine sci_;
  bool sci_level_ = false;
  bool pci_level_[16] = {};
  bool poweroff_requested_ = false;  // the guest entered S5
  u64 sleep_ignored_ = 0;            // SLP_EN with a type other than S5
  std::vector<Timed*> timed_;
  std::unique_ptr<Console> console_;
  std::string console_pending_;
  bool reset_requested_ = false;
  bool quit_requested_ = false;
  u64 irq_counts_[16] = {};
  // The engines made (by EngineKind) and the one running the guest (read
  // by request_stop from other threads and signal handlers).
  std::unique_ptr<engine::Engine> engines_[kEngineKinds];
  std::atomic<engine::Engine*> engine_{nullptr};
  EngineKind cur_kind_ = EngineKind::bt;
  engine::Engine* make_engine(EngineKind k);
  void stop_engine() {
    if (engine::Engine* e = engine_.load(std::memory_order_relaxed)) e->request_stop();
  }
  // Hands the guest to engine k (made if need be): the last engine's
  // switch_out, k's switch_in, --switch-check, the counts.
  void switch_to(EngineKind k);
  // The schedule: its slices, the current one's end (an instruction count
  // or a clock time).
  EngineSchedule sched_;
  std::unique_ptr<SliceSource> slices_;
  SliceLen slice_len_;
  u64 slice_end_ = 0;
  void start_slice();
  bool slice_over() const;
  // How far the kvm engine may run: the next timer deadline, and with a
  // time slice its end.
  u64 kvm_ns_to_next_event() const;
  // --engine hybrid.
  std::unique_ptr<HybridPolicy> hybrid_;
  u64 device_accesses_ = 0;  // port I/O and MMIO accesses (the hybrid policy's events)
  std::chrono::steady_clock::time_point switch_out_at_{};  // the hybrid's kvm -> bt handover ended
  double last_handover_ns_ = 0;
  void hybrid_after_run(u64 events, u64 insns, u64 ns);
  // Statistics of switching.
  u64 switch_counts_[kEngineKinds][kEngineKinds] = {};
  u64 switch_total_ = 0, switch_checks_ = 0, hybrid_to_bt_ = 0, hybrid_to_kvm_ = 0;
  u64 insns_on_[kEngineKinds] = {}, ns_on_[kEngineKinds] = {}, slices_on_[kEngineKinds] = {};
  std::FILE* trace_ = nullptr;
  bool exit_requested_ = false;
  bool kvm_slices_ = false;  // the engine runs time slices, not instruction budgets (kvm)
  int exit_value_ = 0;
  std::unique_ptr<VirtioBoard> virtio_;
  u64 last_io_poll_ns_ = 0;
  // Control (post, pause, end_run, request_stop).
  std::mutex control_mu_;
  std::deque<ControlFn> control_queue_;  // guarded by control_mu_
  bool control_closed_ = false;          // guarded by control_mu_: run() has returned
  std::atomic<bool> control_pending_{false};
  std::atomic<bool> stop_requested_{false};
  bool paused_ = false;
  bool end_requested_ = false;
  Outcome end_outcome_ = Outcome::host_quit;
  int wake_fd_ = -1;    // eventfd: post() and request_stop() wake a waiting vCPU loop
  int wait_epfd_ = -1;  // epoll of wake_fd_ and stdin, for VirtioBoard::poll's one extra fd
  bool stdin_in_epoll_ = false;
  bool stdin_unpollable_ = false;
  std::chrono::steady_clock::time_point stream_loaded_{};  // a regular file or the like: always ready
};

}  // namespace popek::machine
