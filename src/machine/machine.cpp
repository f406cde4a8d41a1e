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
      stop_engine();
    }));
    pio_.map(cfg.exit_port, 1, devices_.back().get());
  }
  build_pc();
  build_virtio();

  if (!cfg.firmware.empty() && !cfg.kernel.empty())
    throw Error("give either --firmware or --kernel, not both");
  if (!cfg.firmware.empty()) load_firmware();
  // The engines: one (--engine), those a schedule names, or kvm and bt
  // (--engine hybrid). All are made now and kept.
  std::vector<EngineKind> kinds;
  EngineKind first = EngineKind::bt;
  if (!cfg.engine_schedule.empty() && cfg.engine == "hybrid")
    throw Error("--engine hybrid and --engine-schedule both choose the engine: give one");
  if (!cfg.engine_schedule.empty()) {
    sched_ = parse_engine_schedule(cfg.engine_schedule);
    slices_ = std::make_unique<SliceSource>(sched_);
    kinds = sched_.uses();
  } else if (cfg.engine == "hybrid") {
    kinds = {EngineKind::kvm, EngineKind::bt};
    first = EngineKind::kvm;
  } else {
    if (!parse_engine_kind(cfg.engine, &first))
      throw Error("unknown engine '" + cfg.engine + "' (available: interp, bt, kvm, hybrid)");
    kinds = {first};
  }
  for (EngineKind k : kinds)
    if (k == EngineKind::kvm && cfg.deterministic)
      throw Error("--deterministic needs engines that count instructions (interp, bt), not kvm" +
                  std::string(cfg.engine_schedule.empty() ? "" : " (in --engine-schedule)") +
                  (cfg.engine == "hybrid" ? " (--engine hybrid runs on kvm)" : ""));
  auto make_engines = [&] {
    for (EngineKind k : kinds) make_engine(k);
  };
  // Resumed: the state comes from the file, before the engine exists (so
  // every engine starts cold: no TLB, no decoded or translated code).
  // Migrated in (--incoming tcp:): the engine is made first, while the
  // source still runs the guest (it costs up to tens of ms: not in the
  // downtime); it has not run, so it is as cold (not with --lockstep, whose
  // shadow copies the machine when made).
  const bool engine_first = cfg.incoming_fd >= 0 && !cfg.bt.lockstep;
  if (engine_first) make_engines();
  if (!cfg.incoming.empty()) {
    load_state(cfg.incoming);
  } else if (cfg.incoming_fd >= 0) {
    snap::FdSource src(cfg.incoming_fd, cfg.incoming_what);
    load_stream(src, cfg.incoming_what);
    stream_loaded_ = std::chrono::steady_clock::now();
  } else if (!cfg.kernel.empty()) {
    load_kernel();
  }
  if (!engine_first) make_engines();
  if (slices_) {
    start_slice();  // the first slice's engine runs first
    first = cur_kind_;
  }
  cur_kind_ = first;
  engine_.store(engines_[unsigned(first)].get());
  kvm_slices_ = first == EngineKind::kvm;
  if (cfg.engine == "hybrid") {
    const engine::KvmProbe& p = static_cast<engine::Kvm&>(*engines_[unsigned(EngineKind::kvm)]).probe();
    HybridCosts c;
    c.exit_ns = p.exit_us * 1000;
    c.kvm_ips = p.mips * 1e6;
    // Until the first round trip is measured: a handover is a few ioctls
    // each way, about two exits' worth.
    c.switch_ns = 2 * c.exit_ns;
    hybrid_ = std::make_unique<HybridPolicy>(c);
  }
}

engine::Engine* Machine::make_engine(EngineKind k) {
  auto& slot = engines_[unsigned(k)];
  if (slot) return slot.get();
  switch (k) {
    case EngineKind::interp:
      slot = std::make_unique<engine::Interp>(cpu_, *pm_, *this, cfg_.early_faults);
      break;
    case EngineKind::bt:
      slot = std::make_unique<engine::Bt>(cpu_, *pm_, *this, cfg_.bt, cfg_.early_faults);
      break;
    case EngineKind::kvm: {
      if (cfg_.deterministic)
        throw Error("--deterministic needs an engine that counts instructions (interp, bt), not kvm");
      engine::KvmOptions ko;
      ko.ns_to_next_event = [this] { return kvm_ns_to_next_event(); };
      // Other engines may run the guest too (a schedule, the hybrid policy,
      // the control socket): the guest's writes are logged for them.
      ko.track_writes = true;
      auto kvm = std::make_unique<engine::Kvm>(cpu_, *pm_, *this, std::move(ko));
      if (console_) kvm->watch_input(0);
      slot = std::move(kvm);
      if (cfg_.max_insns)
        std::fprintf(stderr, "popek: --max-insns has no effect on kvm (KVM does not count guest instructions)\n");
      break;
    }
  }
  if (trace_) slot->set_trace(trace_);
  return slot.get();
}

u64 Machine::kvm_ns_to_next_event() const {
  const u64 d = next_deadline(), now = clock_.now_ns();
  u64 n = d == Timed::kNever ? d : d > now ? d - now : 0;
  if (slices_ && slice_len_.time) n = std::min(n, slice_end_ > now ? slice_end_ - now : 0);
  return n;
}

std::vector<EngineKind> Machine::engines() const {
  std::vector<EngineKind> out;
  for (unsigned i = 0; i < kEngineKinds; i++)
    if (engines_[i]) out.push_back(EngineKind(i));
  return out;
}

void Machine::start_slice() {
  auto [k, len] = slices_->next();
  if (engine_.load(std::memory_order_relaxed) == nullptr) {
    cur_kind_ = k;  // the first slice: nothing to hand over
  } else if (k != cur_kind_) {
    switch_to(k);
  }
  // (The slice starts once the handover is done: a --switch-check takes time.)
  slice_len_ = len;
  slice_end_ = (len.time ? clock_.now_ns() : cpu_.icount) + len.n;
  slices_on_[unsigned(k)]++;
}

bool Machine::slice_over() const {
  return slice_len_.time ? clock_.now_ns() >= slice_end_ : cpu_.icount >= slice_end_;
}

void Machine::set_engine(EngineKind k) {
  make_engine(k);
  slices_.reset();
  hybrid_.reset();
  if (k != cur_kind_) switch_to(k);
}

namespace {
// FNV-1a over guest RAM, 8 bytes at a time (--switch-check).
u64 ram_hash(mem::PhysMem& pm) {
  u64 h = 0xCBF29CE484222325ull;
  pm.for_each_range([&](u64 at, u64 len) {
    const u8* p = pm.ram() + at;
    for (u64 i = 0; i + 8 <= len; i += 8) {
      u64 v;
      std::memcpy(&v, p + i, 8);
      h = (h ^ v) * 0x100000001B3ull;
    }
  });
  return h;
}
}  // namespace

void Machine::switch_to(EngineKind k) {
  const auto t0 = std::chrono::steady_clock::now();
  engine::Engine* from = engine_.load(std::memory_order_relaxed);
  engine::Engine* to = make_engine(k);
  const EngineKind was = cur_kind_;
  x86::CpuState before;
  u64 hash = 0;
  if (cfg_.switch_check) {
    before = cpu_;
    hash = ram_hash(*pm_);
  }
  from->switch_out();
  to->switch_in();
  if (cfg_.switch_check) {
    switch_checks_++;
    std::string d = compare_states(before, cpu_);
    if (d.empty() && k == EngineKind::kvm) d = compare_states(before, static_cast<engine::Kvm*>(to)->vcpu_state());
    if (d.empty() && ram_hash(*pm_) != hash) d = "guest RAM changed";
    if (!d.empty())
      throw Error(std::string("--switch-check: the handover from ") + engine_kind_name(was) + " to " +
                  engine_kind_name(k) + " after " + std::to_string(cpu_.icount) +
                  " instructions changed the state: " + d);
  }
  cur_kind_ = k;
  engine_.store(to, std::memory_order_relaxed);
  kvm_slices_ = k == EngineKind::kvm;
  switch_counts_[unsigned(was)][unsigned(k)]++;
  switch_total_++;
  last_handover_ns_ = double(std::chrono::duration_cast<std::chrono::nanoseconds>(
                                 std::chrono::steady_clock::now() - t0).count());
  // A stop asked of the old engine just before the switch must not be lost:
  // the loop's top sees the machine's flags; the new engine checks too.
  if (stop_requested_.load(std::memory_order_relaxed) || control_pending_.load(std::memory_order_relaxed))
    to->request_stop();
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
  stop_engine();
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
  stop_engine();  // out of the engine at the next boundary
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
    stop_engine();
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

u32 Machine::io_in(u16 port, unsigned size) {
  device_accesses_++;
  return u32(pio_.read(port, size));
}
void Machine::io_out(u16 port, unsigned size, u32 v) {
  device_accesses_++;
  pio_.write(port, size, v);
}

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
    if (auto* k = static_cast<engine::Kvm*>(engines_[unsigned(EngineKind::kvm)].get())) k->watch_input(0);
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
    if (slices_ && slice_over()) start_slice();
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
    if (slices_) {  // not past the slice's end
      if (!slice_len_.time) {
        budget = std::min<u64>(budget, slice_end_ > cpu_.icount ? slice_end_ - cpu_.icount : 1);
      } else if (clock_.deterministic()) {
        const u64 now = clock_.now_ns();
        budget = std::min<u64>(budget, (slice_end_ > now ? slice_end_ - now : 0) / clock_.ns_per_insn() + 1);
      }
    }
    const u64 events0 = device_accesses_, insns0 = cpu_.icount;
    const auto t_run = std::chrono::steady_clock::now();
    const EngineKind ran = cur_kind_;
    engine::Exit e = engine().run(budget);
    const u64 run_ns = u64(std::chrono::duration_cast<std::chrono::nanoseconds>(
                               std::chrono::steady_clock::now() - t_run).count());
    insns_on_[unsigned(ran)] += cpu_.icount - insns0;
    ns_on_[unsigned(ran)] += run_ns;
    if (hybrid_ && e != engine::Exit::halt) hybrid_after_run(device_accesses_ - events0, cpu_.icount - insns0, run_ns);
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
        // An interrupt already waiting (the engine left it for the next run,
        // which delivers it and wakes the CPU): nothing to wait for.
        if (cpu_.intr_line || (cpu_.nmi_pending && !cpu_.nmi_blocked)) continue;
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

void Machine::hybrid_after_run(u64 events, u64 insns, u64 ns) {
  if (cur_kind_ == EngineKind::kvm) {
    if (!hybrid_->on_kvm(events, ns)) return;
    switch_to(EngineKind::bt);
    hybrid_to_bt_++;
    switch_out_at_ = std::chrono::steady_clock::now();
    hybrid_->switched();
    hybrid_->note_switch_cost(last_handover_ns_);  // (the way back is added when it is made)
  } else {
    if (!hybrid_->on_bt(events, insns, ns)) return;
    const double there = last_handover_ns_;
    switch_to(EngineKind::kvm);
    hybrid_to_kvm_++;
    hybrid_->switched();
    hybrid_->note_switch_cost(there + last_handover_ns_);
  }
}

std::vector<std::pair<std::string, u64>> Machine::stats() const {
  std::vector<std::pair<std::string, u64>> out;
  unsigned made = 0;
  for (auto& e : engines_) made += e != nullptr;
  for (auto& e : engines_) {
    if (!e) continue;
    const std::string pre = std::string(e->name()) + ".";
    for (auto& [k, v] : e->stats())
      out.emplace_back(made > 1 && k.rfind(pre, 0) != 0 ? pre + k : k, v);
  }
  if (made > 1 || switch_total_) {
    out.emplace_back("switch.total", switch_total_);
    for (unsigned a = 0; a < kEngineKinds; a++)
      for (unsigned b = 0; b < kEngineKinds; b++)
        if (switch_counts_[a][b])
          out.emplace_back(std::string("switch.") + engine_kind_name(EngineKind(a)) + "_to_" +
                               engine_kind_name(EngineKind(b)),
                           switch_counts_[a][b]);
    for (unsigned a = 0; a < kEngineKinds; a++) {
      if (!engines_[a]) continue;
      const std::string n = std::string("switch.on_") + engine_kind_name(EngineKind(a));
      out.emplace_back(n + ".insns", insns_on_[a]);
      out.emplace_back(n + ".run_us", ns_on_[a] / 1000);
      if (sched_.spec.size()) out.emplace_back(n + ".slices", slices_on_[a]);
    }
    out.emplace_back("switch.checks", switch_checks_);
    out.emplace_back("switch.last_handover_ns", u64(last_handover_ns_));
  }
  if (hybrid_) {
    out.emplace_back("hybrid.to_bt", hybrid_to_bt_);
    out.emplace_back("hybrid.to_kvm", hybrid_to_kvm_);
    out.emplace_back("hybrid.exit_ns", u64(hybrid_->costs().exit_ns));
    out.emplace_back("hybrid.kvm_kips", u64(hybrid_->costs().kvm_ips / 1000));
    out.emplace_back("hybrid.switch_round_trip_ns", u64(hybrid_->costs().switch_ns));
    out.emplace_back("hybrid.last_exit_share_permille", hybrid_->last_share_permille());
  }
  out.emplace_back("device_accesses", device_accesses_);
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
