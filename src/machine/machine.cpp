#include "machine/machine.h"
#include "snapshot/stream.h"

#include <poll.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <time.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <fstream>
#include <iterator>

#include "base/error.h"
#include "engine/interp/interp.h"
#include "engine/kvm/kvm.h"
#include "machine/boot/linux_boot.h"

#include "machine/debug_ports.h"
#include "machine/pc_layout.h"

namespace popek::machine {

namespace {
u64 host_realtime_ns() {
  timespec ts;
  ::clock_gettime(CLOCK_REALTIME, &ts);
  return u64(ts.tv_sec) * 1000000000 + u64(ts.tv_nsec);
}
}  // namespace

Machine::Machine(const Config& cfg) : cfg_(cfg), clock_(cfg.deterministic, &cpu_.icount) {
  wake_fd_ = ::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  if (wake_fd_ < 0) throw Error(std::string("eventfd: ") + std::strerror(errno));
  pm_ = std::make_unique<mem::PhysMem>(cfg.memory);
  pm_->set_mmio(this);
  cpu_.reset();
  wall_epoch_ns_ = cfg.deterministic ? 1767225600ull * 1000000000 /* 2026-01-01 */
                                     : host_realtime_ns() - clock_.now_ns();

  if (!cfg.trace_file.empty()) {
    if (cfg.trace_file == "-") {
      trace_ = stderr;
    } else {
      trace_ = std::fopen(cfg.trace_file.c_str(), cfg.append_outputs ? "a" : "w");
      if (!trace_) throw Error("cannot open trace file '" + cfg.trace_file + "'");
    }
  }
  for (const auto& d : cfg.debug_ports) {
    std::FILE* out = stdout;
    bool own = false;
    if (!d.file.empty()) {
      out = std::fopen(d.file.c_str(), cfg.append_outputs ? "ab" : "wb");
      if (!out) throw Error("--debug-port: cannot open '" + d.file + "' for writing");
      own = true;
    }
    char name[32];
    std::snprintf(name, sizeof name, "debug-port-%#x", d.port);
    devices_.push_back(std::make_unique<DebugPortSink>(name, out, own));
    pio_.map(d.port, 1, devices_.back().get());
  }
  if (cfg.exit_port) {
    devices_.push_back(std::make_unique<dev::DebugExit>([this](u32 status) {
      exit_requested_ = true;
      exit_value_ = int(status);
      engine_->request_stop();
    }));
    pio_.map(cfg.exit_port, 1, devices_.back().get());
  }
  build_pc();
  build_virtio();

  if (!cfg.firmware.empty() && !cfg.kernel.empty())
    throw Error("give either --firmware or --kernel, not both");
  if (!cfg.firmware.empty()) load_firmware();
  auto make_engine = [&] {
    if (cfg.engine == "interp") {
      engine_ = std::make_unique<engine::Interp>(cpu_, *pm_, *this);
    } else if (cfg.engine == "bt") {
      engine_ = std::make_unique<engine::Bt>(cpu_, *pm_, *this, cfg.bt);
    } else if (cfg.engine == "kvm") {
      if (cfg.deterministic)
        throw Error("--deterministic needs an engine that counts instructions (interp, bt), not kvm");
      engine::KvmOptions ko;
      ko.ns_to_next_event = [this] {
        const u64 d = next_deadline(), now = clock_.now_ns();
        return d == Timed::kNever ? d : d > now ? d - now : 0;
      };
      engine_ = std::make_unique<engine::Kvm>(cpu_, *pm_, *this, std::move(ko));
      kvm_slices_ = true;
      if (cfg.max_insns)
        std::fprintf(stderr, "popek: --max-insns has no effect on kvm (KVM does not count guest instructions)\n");
    } else {
      throw Error("unknown engine '" + cfg.engine + "' (available: interp, bt, kvm)");
    }
  };
  // Resumed: the state comes from the file, before the engine exists (so
  // every engine starts cold: no TLB, no decoded or translated code).
  // Migrated in (--incoming tcp:): the engine is made first, while the
  // source still runs the guest (it costs up to tens of ms: not in the
  // downtime); it has not run, so it is as cold (not with --lockstep, whose
  // shadow copies the machine when made).
  const bool engine_first = cfg.incoming_fd >= 0 && !cfg.bt.lockstep;
  if (engine_first) make_engine();
  if (!cfg.incoming.empty()) {
    load_state(cfg.incoming);
  } else if (cfg.incoming_fd >= 0) {
    snap::FdSource src(cfg.incoming_fd, cfg.incoming_what);
    load_stream(src, cfg.incoming_what);
    stream_loaded_ = std::chrono::steady_clock::now();
  } else if (!cfg.kernel.empty()) {
    load_kernel();
  }
  if (!engine_first) make_engine();
  if (trace_) engine_->set_trace(trace_);
}

Machine::~Machine() {
  close_control();
  if (wait_epfd_ >= 0) ::close(wait_epfd_);
  if (wake_fd_ >= 0) ::close(wake_fd_);
  if (trace_ && trace_ != stderr) std::fclose(trace_);
}

// --- control: requests from other threads and signals, served at safe points ---

void Machine::request_stop() {
  const int saved = errno;  // also called from signal handlers
  stop_requested_.store(true, std::memory_order_relaxed);
  if (engine_) engine_->request_stop();
  const u64 one = 1;
  if (wake_fd_ >= 0) (void)!::write(wake_fd_, &one, sizeof one);
  errno = saved;
}

void Machine::post(ControlFn fn) {
  {
    std::lock_guard<std::mutex> lk(control_mu_);
    if (!control_closed_) {
      control_queue_.push_back(std::move(fn));
      control_pending_.store(true, std::memory_order_release);
      fn = nullptr;
    }
  }
  if (fn) {  // run() has returned: nothing will serve it
    fn(nullptr);
    return;
  }
  if (engine_) engine_->request_stop();  // out of the engine at the next boundary
  const u64 one = 1;
  (void)!::write(wake_fd_, &one, sizeof one);  // out of a wait
}

void Machine::serve_control() {
  control_pending_.store(false, std::memory_order_relaxed);
  u64 v;
  (void)!::read(wake_fd_, &v, sizeof v);
  std::deque<ControlFn> q;
  {
    std::lock_guard<std::mutex> lk(control_mu_);
    q.swap(control_queue_);
  }
  for (auto& fn : q) fn(this);
}

void Machine::close_control() {
  std::deque<ControlFn> q;
  {
    std::lock_guard<std::mutex> lk(control_mu_);
    control_closed_ = true;
    q.swap(control_queue_);
  }
  for (auto& fn : q) fn(nullptr);
}

void Machine::pause() {
  if (paused_) return;
  paused_ = true;
  clock_.pause();
}

void Machine::resume() {
  if (!paused_) return;
  paused_ = false;
  clock_.resume();
}

void Machine::end_run(Outcome outcome) {
  end_requested_ = true;
  end_outcome_ = outcome;
}

void Machine::build_pc() {
  using namespace pc;
  intr_.connect([this](bool level) { cpu_.intr_line = level; });
  pic_master_ = std::make_unique<dev::I8259Pic>(intr_, "pic-master");
  pic_slave_ = std::make_unique<dev::I8259Pic>(slave_intr_, "pic-slave");
  slave_intr_.connect([this](bool level) { pic_master_->set_irq(kIrqCascade, level); });
  pic_master_->attach_slave(kIrqCascade, pic_slave_.get());
  pic_master_->set_elcr_mask(0xF8);
  pic_slave_->set_elcr_mask(0xDE);
  for (unsigned i = 0; i < 16; i++) {
    irq_[i].connect([this, i](bool level) {
      if (level) irq_counts_[i]++;
      if (i < 8) pic_master_->set_irq(i, level);
      else pic_slave_->set_irq(i - 8, level);
    });
  }
  elcr_master_ = std::make_unique<dev::I8259Elcr>(*pic_master_);
  elcr_slave_ = std::make_unique<dev::I8259Elcr>(*pic_slave_);
  pio_.map(kPicMaster, 2, pic_master_.get());
  pio_.map(kPicSlave, 2, pic_slave_.get());
  pio_.map(kElcr, 1, elcr_master_.get());
  pio_.map(kElcr + 1, 1, elcr_slave_.get());

  pit_ = std::make_unique<dev::I8254Pit>(clock_, irq_[kIrqPit]);
  port_b_ = std::make_unique<dev::SystemControlPortB>(clock_, *pit_);
  pio_.map(kPit, 4, pit_.get());
  pio_.map(kPortB, 1, port_b_.get());

  dev::Uart16550::Options uopt;
  uopt.out2_gates_irq = true;
  com1_ = std::make_unique<dev::Uart16550>(clock_, irq_[kIrqCom1], uopt, "com1");
  pio_.map(kCom1, 8, com1_.get());

  dev::Mc146818Rtc::Options ropt;
  ropt.base_unix_sec = i64((wall_epoch_ns_ + clock_.now_ns()) / 1000000000);
  ropt.century_index = kRtcCentury;
  rtc_ = std::make_unique<dev::Mc146818Rtc>(clock_, irq_[kIrqRtc], ropt);
  pio_.map(kRtc, 2, rtc_.get());
  // CMOS memory size fields (KiB above 1 MiB up to 64 MiB; 64 KiB units above 16 MiB).
  u64 ext_kb = std::min<u64>((cfg_.memory - kHighMem) >> 10, 0xFFFF);
  rtc_->set_cmos(0x15, 0x80);
  rtc_->set_cmos(0x16, 0x02);  // 640 KiB base memory
  rtc_->set_cmos(0x17, u8(ext_kb));
  rtc_->set_cmos(0x18, u8(ext_kb >> 8));
  rtc_->set_cmos(0x30, u8(ext_kb));
  rtc_->set_cmos(0x31, u8(ext_kb >> 8));
  u64 above16 = cfg_.memory > (16u << 20) ? std::min<u64>((cfg_.memory - (16u << 20)) >> 16, 0xFFFF) : 0;
  rtc_->set_cmos(0x34, u8(above16));
  rtc_->set_cmos(0x35, u8(above16 >> 8));

  dev::I8042::Hooks hooks;
  hooks.reset = [this] {
    reset_requested_ = true;
    if (engine_) engine_->request_stop();
  };
  hooks.a20 = [this](bool on) { cpu_.a20 = on; };
  i8042_ = std::make_unique<dev::I8042>(irq_[kIrqKbd], irq_[kIrqAux], hooks);
  pio_.map(kI8042Data, 1, &i8042_->data_port());
  pio_.map(kI8042Cmd, 1, &i8042_->command_port());

  post_ = std::make_unique<dev::PostCodePort>();
  u64 off;
  if (!pio_.find(kPost, &off)) pio_.map(kPost, 1, post_.get());

  pci_bus_ = std::make_unique<dev::PciBus>();
  pci_host_ = std::make_unique<dev::PciHostBridge>(*pci_bus_);
  pio_.map(kPciConfig, 8, pci_host_.get());

  build_acpi();

  timed_ = {pit_.get(), com1_.get(), rtc_.get()};
  if (cfg_.console) {
    com1_->set_tx_sink([this](u8 b) {
      if (console_) console_->write(b);
    });
  }
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

void Machine::load_kernel() {
  using namespace pc;
  big_vector<u8> kfile = boot::read_boot_file(cfg_.kernel, "kernel");
  boot::BzImage bz = boot::parse_bzimage(kfile, cfg_.kernel);
  big_vector<u8> initrd;
  if (!cfg_.initrd.empty()) initrd = boot::read_boot_file(cfg_.initrd, "initrd");
  boot::LoadOptions opt;
  // With ACPI its tables sit below the BIOS area, reserved with it.
  const u64 reserved = acpi_pm_ ? kAcpiTables : kBiosStart;
  if (acpi_pm_) write_acpi_tables();
  opt.e820 = {{0, kBaseMemEnd, boot::E820Type::kRam},
              {kBaseMemEnd, 0xA0000 - kBaseMemEnd, boot::E820Type::kReserved},
              {reserved, kHighMem - reserved, boot::E820Type::kReserved},
              {kHighMem, cfg_.memory - kHighMem, boot::E820Type::kRam}};
  std::span<u8> ram(pm_->ram(), pm_->ram_size());
  boot::BootResult r = boot::load_linux(ram, bz, initrd, cfg_.append, opt);
  boot::GdtInfo gdt = boot::write_boot_gdt(ram, kBootGdt);
  const boot::EntryState& e = r.entry;
  cpu_.gdtr = {gdt.base, gdt.limit};
  cpu_.idtr = {0, 0};
  cpu_.cr0 = e.cr0;
  cpu_.eflags = e.eflags;
  cpu_.eip = e.eip;
  u32 regs[8] = {e.eax, e.ecx, e.edx, e.ebx, e.esp, e.ebp, e.esi, e.edi};
  for (int i = 0; i < 8; i++) cpu_.gpr[i] = regs[i];
  auto seg = [](const boot::FlatSegment& f) {
    return x86::Segment{f.selector, f.base, f.limit, u16(f.access | (u16(f.flags) << 12))};
  };
  cpu_.seg[x86::CS] = seg(e.cs);
  cpu_.seg[x86::DS] = seg(e.ds);
  cpu_.seg[x86::ES] = seg(e.es);
  cpu_.seg[x86::SS] = seg(e.ss);
  cpu_.seg[x86::FS] = seg(e.fs);
  cpu_.seg[x86::GS] = seg(e.gs);
  cpu_.cpl = 0;
}

u32 Machine::io_in(u16 port, unsigned size) { return u32(pio_.read(port, size)); }
void Machine::io_out(u16 port, unsigned size, u32 v) { pio_.write(port, size, v); }

u8 Machine::intr_ack() { return pic_master_->acknowledge(); }

bool Machine::read_phys(u64 pa, void* dst, unsigned len) {
  for (u64 p = pa; p < pa + len; p = (p | (mem::kPageSize - 1)) + 1)
    if (!pm_->is_ram(p) || !pm_->page(p).host || pm_->page(p).rom) return false;
  return pm_->read_bytes(pa, dst, len);
}
bool Machine::write_phys(u64 pa, const void* src, unsigned len) {
  // Check first: write_bytes may have written part of it when it refuses.
  for (u64 p = pa; p < pa + len; p = (p | (mem::kPageSize - 1)) + 1)
    if (!pm_->is_ram(p) || !pm_->page(p).host || pm_->page(p).rom) return false;
  return pm_->write_bytes(pa, src, len);
}

u64 Machine::next_deadline() const {
  u64 d = Timed::kNever;
  for (auto* t : timed_) d = std::min(d, t->next_event_ns());
  return d;
}

void Machine::fire_timers() {
  const u64 now = clock_.now_ns();
  for (auto* t : timed_)
    if (t->next_event_ns() <= now) t->on_time(now);
}

// While paused (deliver = false) input is read only up to this much, for the
// console's own keys (Ctrl-A X, Ctrl-A S); the guest gets it on resume.
constexpr usize kPausedConsoleBytes = 64 * 1024;

void Machine::pump_console(bool* quit, bool deliver) {
  if (!console_) return;
  bool status = false;
  if (!deliver) {
    if (console_pending_.size() < kPausedConsoleBytes) console_pending_ += console_->poll_input(quit, &status);
    if (status) status_line();
    return;
  }
  // Bytes wait here until the UART's receive FIFO has room, and while the
  // guest does not assert RTS (the far end's flow control: Linux raises it
  // when the tty is opened, and clears the FIFO then — bytes sent before
  // would be lost): nothing typed or piped is lost.
  console_pending_ += console_->poll_input(quit, &status);
  if (!console_pending_.empty() && (com1_->mcr() & 0x12) == 0x02) {  // RTS, not loopback
    usize n = com1_->receive(std::span<const u8>(
        reinterpret_cast<const u8*>(console_pending_.data()), console_pending_.size()));
    console_pending_.erase(0, n);
  }
  if (status) status_line();
}

void Machine::status_line() {
  const double secs = double(clock_.now_ns()) / 1e9;
  std::fprintf(stderr, "\r\npopek: %llu instructions, eip %04x:%08x, cpl %u%s%s, %.1f s virtual time\r\n",
               (unsigned long long)cpu_.icount, cpu_.seg[x86::CS].sel, cpu_.eip, cpu_.cpl,
               cpu_.halted ? ", halted" : "", paused_ ? ", paused" : "", secs);
  for (auto& [k, v] : stats())
    if (v) std::fprintf(stderr, "  %-36s %llu\r\n", k.c_str(), (unsigned long long)v);
}

void Machine::wait_for_event(u64 deadline) {
  if (clock_.deterministic()) {
    if (deadline != Timed::kNever) clock_.skip_to(deadline);
    return;
  }
  u64 now = clock_.now_ns();
  u64 wait_ns = deadline == Timed::kNever ? 50000000 : (deadline > now ? deadline - now : 0);
  if (wait_ns > 50000000) wait_ns = 50000000;
  wait_fds(wait_ns, console_ && !console_->eof(), virtio_ != nullptr);
}

void Machine::wait_paused() {
  pump_console(&quit_requested_, false);
  const bool con = console_ && !console_->eof() && console_pending_.size() < kPausedConsoleBytes;
  wait_fds(1000000000, con, false);
}

void Machine::wait_fds(u64 wait_ns, bool con, bool io) {
  if (io && virtio_) {  // device I/O, the console and the wake fd together
    // VirtioBoard::poll takes one extra fd: an epoll set of the wake fd and stdin.
    if (wait_epfd_ < 0) {
      wait_epfd_ = ::epoll_create1(EPOLL_CLOEXEC);
      epoll_event ev{};
      ev.events = EPOLLIN;
      ev.data.fd = wake_fd_;
      if (wait_epfd_ >= 0 && ::epoll_ctl(wait_epfd_, EPOLL_CTL_ADD, wake_fd_, &ev) != 0) {
        ::close(wait_epfd_);
        wait_epfd_ = -1;
      }
    }
    if (wait_epfd_ < 0) {  // no epoll: the console alone, as without a control socket
      pollfd c{0, POLLIN, 0};
      virtio_->poll(wait_ns, con ? &c : nullptr);
      return;
    }
    if (con && !stdin_in_epoll_ && !stdin_unpollable_) {
      epoll_event ev{};
      ev.events = EPOLLIN;
      ev.data.fd = 0;
      if (::epoll_ctl(wait_epfd_, EPOLL_CTL_ADD, 0, &ev) == 0) stdin_in_epoll_ = true;
      else stdin_unpollable_ = true;  // a regular file: poll() would call it ready at once
    } else if (!con && stdin_in_epoll_) {
      ::epoll_ctl(wait_epfd_, EPOLL_CTL_DEL, 0, nullptr);
      stdin_in_epoll_ = false;
    }
    if (con && stdin_unpollable_) wait_ns = 0;
    pollfd ex{wait_epfd_, POLLIN, 0};
    virtio_->poll(wait_ns, &ex);
    return;
  }
  pollfd p[2] = {{wake_fd_, POLLIN, 0}, {0, POLLIN, 0}};
  timespec ts{time_t(wait_ns / 1000000000), long(wait_ns % 1000000000)};
  ::ppoll(p, con ? 2 : 1, &ts, nullptr);
}

RunResult Machine::run() {
  struct Closer {
    Machine* m;
    ~Closer() { m->close_control(); }
  } closer{this};
  return run_loop();
}

RunResult Machine::run_loop() {
  if (cfg_.console && !cfg_.kernel.empty()) {
    console_ = std::make_unique<Console>();
    if (auto* k = dynamic_cast<engine::Kvm*>(engine_.get())) k->watch_input(0);
  }
  constexpr u64 kSlice = 20000;
  u64 slices = 0;
  for (;;) {
    // The safe point: the engine is between instructions (or blocks).
    if (control_pending_.load(std::memory_order_acquire)) serve_control();
    if (stop_requested_.load(std::memory_order_relaxed)) return {Outcome::stopped, 10, "stopped"};
    if (end_requested_) {
      if (end_outcome_ == Outcome::host_reset)
        return {Outcome::host_reset, 0, "reset from the control socket"};
      return {end_outcome_, 0, "quit from the control socket"};
    }
    if (quit_requested_) return {Outcome::console_quit, 10, "quit from the console (Ctrl-A X)"};
    if (paused_) {
      wait_paused();
      continue;
    }
    fire_timers();
    poll_io_if_due();
    // kvm's slices last up to milliseconds of host time (its slice timer
    // kicks the vCPU out): poll the console after each, not every 16th.
    if ((++slices & 15) == 0 || cpu_.halted || !console_pending_.empty() || kvm_slices_)
      pump_console(&quit_requested_);
    if (quit_requested_) return {Outcome::console_quit, 10, "quit from the console (Ctrl-A X)"};
    u64 budget = kSlice;
    if (clock_.deterministic()) {
      u64 d = next_deadline(), now = clock_.now_ns();
      if (d != Timed::kNever && d > now) budget = std::min<u64>(budget, (d - now) / clock_.ns_per_insn() + 1);
    }
    if (cfg_.max_insns) {
      if (cpu_.icount >= cfg_.max_insns)
        return {Outcome::insn_limit, 8, "instruction limit reached (" + std::to_string(cfg_.max_insns) + ")"};
      budget = std::min<u64>(budget, cfg_.max_insns - cpu_.icount);
    }
    engine::Exit e = engine_->run(budget);
    if (exit_requested_)
      return {Outcome::debug_exit, exit_value_,
              "guest wrote to the exit port: status " + std::to_string(exit_value_)};
    if (reset_requested_) return {Outcome::reset, 2, "the guest reset the machine"};
    if (poweroff_requested_) return {Outcome::poweroff, 0, "guest powered off (ACPI S5)"};
    switch (e) {
      case engine::Exit::budget: continue;
      case engine::Exit::shutdown:
        return {Outcome::triple_fault, 4, "triple fault: the CPU shut down"};
      case engine::Exit::halt: {
        if (!(cpu_.eflags & x86::IF)) {
          // A PC without ACPI (--no-acpi) powers off this way: Linux's
          // poweroff halts the CPU with interrupts disabled. (With ACPI it
          // writes S5 to PM1_CNT; if that fails it halts the same way.)
          if (!cfg_.kernel.empty())
            return {Outcome::poweroff, 0, "guest powered off (halted with interrupts disabled)"};
          return {Outcome::halted, 6, "guest halted with interrupts disabled"};
        }
        u64 d = next_deadline();
        if (d == Timed::kNever && (!console_ || console_->eof()) && !has_io()) {
          // Console input read before the end of the input may still wait
          // for room in the UART's receive FIFO: while the guest takes more
          // of it, its interrupt can wake the CPU (a guest halted between
          // two bytes of the last command line once ended here).
          const usize pending = console_pending_.size();
          if (pending) pump_console(&quit_requested_);
          if (!pending || console_pending_.size() == pending)
            return {Outcome::halted, 6, "guest halted waiting for an interrupt no device will raise"};
          continue;
        }
        wait_for_event(d);
        continue;
      }
      case engine::Exit::stopped:
        // request_stop() (a signal) or post() (the control socket): the loop's top sees which.
        continue;
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
  for (unsigned i = 0; i < 16; i++)
    if (irq_counts_[i]) out.emplace_back("irq." + std::to_string(i), irq_counts_[i]);
  if (acpi_pm_) {
    out.emplace_back("acpi.power_button_presses", acpi_pm_->button_presses());
    out.emplace_back("acpi.sleep_requests", acpi_pm_->sleep_requests());
    out.emplace_back("acpi.sleep_requests_ignored", sleep_ignored_);
  }
  if (virtio_)
    for (auto& kv : virtio_->stats()) out.push_back(kv);
  return out;
}

}  // namespace popek::machine
