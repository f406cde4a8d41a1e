// The Machine's suspend/resume: which sections make up a saved machine, in
// which order, and the check that a stream fits the machine the command line
// describes. The stream format is src/snapshot/stream.h; each component
// saves and loads its own fields (x86/cpu_state.cpp, devices/pc/state_io.cpp,
// devices/virtio/state_io.cpp).
//
// Order: "machine" (the configuration, checked before anything is loaded),
// "ram" sections, then the CPU, the clock and the chips (the PICs last, so
// that their input pins agree with the lines the other chips restored), then
// "end" ("acpi-pm", the PM1 registers, only on a board with ACPI: the
// "machine" section says whether it has it). RAM first and device state
// last is the order a live migration would send them in.
#include <algorithm>
#include <ctime>

#include "base/error.h"
#include "devices/pc/state_io.h"
#include "machine/machine.h"
#include "snapshot/stream.h"

namespace popek::machine {

namespace {
// 2: "acpi" (a version-1 machine had no ACPI). 3: "paravirt" (older ones had none).
constexpr u32 kMachineVersion = 3;
constexpr u32 kClockVersion = 1;

std::string join(const std::vector<std::string>& v) {
  std::string s;
  for (auto& x : v) s += (s.empty() ? "" : ", ") + x;
  return s.empty() ? "none" : s;
}

std::string count_of(usize n, const char* what) {
  return std::to_string(n) + " " + what + (n == 1 ? "" : "s");
}
}  // namespace

std::vector<std::string> Machine::describe() const {
  return virtio_ ? virtio_->describe() : std::vector<std::string>{};
}

bool Machine::can_save(std::string* why) const {
  if (virtio_ && !virtio_->can_save(why)) return false;
  return true;
}

void Machine::release_host_ports() {
  if (virtio_) virtio_->release_host_ports();
}

void Machine::claim_host_ports() {
  if (virtio_) virtio_->claim_host_ports();
}

void Machine::quiesce() {
  if (virtio_) virtio_->quiesce();
}

void Machine::save_config(snap::StreamWriter& w) {
  snap::SectionWriter s;
  s.u64v("ram_size", cfg_.memory);
  s.u64v("deterministic", cfg_.deterministic);
  s.u64v("ns_per_insn", clock_.ns_per_insn());
  s.u64v("drives", cfg_.virtio.drives.size());
  s.u64v("netdevs", cfg_.virtio.netdevs.size());
  s.u64v("rng", cfg_.virtio.rng);
  s.str("devices", join(describe()));
  s.str("boot", cfg_.firmware.empty() ? "kernel" : "firmware");
  s.u64v("acpi", acpi_pm_ != nullptr);
  s.u64v("paravirt", cfg_.paravirt);
  w.section("machine", kMachineVersion, s);
}

void Machine::save_ram(snap::StreamWriter& w, snap::RamStats* rs) {
  pm_->for_each_range([&](u64 off, u64 len) {
    snap::write_ram(w, off / snap::kPageSize, len / snap::kPageSize, pm_->ram() + off, rs);
  });
}

void Machine::save_ram_pages(snap::StreamWriter& w, std::span<const u32> ppns, snap::RamStats* rs) {
  snap::write_ram_pages(w, ppns, [&](u64 ppn) -> const u8* { return pm_->ram() + (ppn << mem::kPageShift); }, rs);
}

std::vector<u32> Machine::sync_dirty_log() {
  // With bt's direct stores on (paging off), RAM is write-protected in the
  // host mapping: no device may be reading a disk into it meanwhile.
  if (pm_->code_write_protect()) quiesce();
  return pm_->sync_dirty_log();
}

void Machine::save_devices(snap::StreamWriter& w) {
  {
    snap::SectionWriter s;
    x86::save_cpu_state(cpu_, s);
    w.section("cpu", x86::kCpuStateVersion, s);
  }
  {
    snap::SectionWriter s;
    s.u64v("now_ns", clock_.now_ns());
    w.section("clock", kClockVersion, s);
  }
  dev::save_chip(w, "pit", *pit_);
  dev::save_chip(w, "port-b", *port_b_);
  dev::save_chip(w, "com1", *com1_);
  dev::save_chip(w, "rtc", *rtc_);
  dev::save_chip(w, "i8042", *i8042_);
  dev::save_chip(w, "post", *post_);
  if (acpi_pm_) dev::save_chip(w, "acpi-pm", *acpi_pm_);
  dev::save_chip(w, "pci-host", *pci_host_);
  {
    snap::SectionWriter s;
    auto st = pci_host_->host_function().save();
    dev::save_state(s, st);
    w.section("pci-host-function", st.version, s);
  }
  if (virtio_) virtio_->save(w);
  dev::save_chip(w, "pic-slave", *pic_slave_);
  dev::save_chip(w, "pic-master", *pic_master_);
}

SaveStats Machine::save_state(snap::Sink& out) {
  std::string why;
  if (!can_save(&why)) throw Error(why);
  quiesce();
  snap::StreamWriter w(out);
  save_config(w);
  snap::RamStats rs;
  save_ram(w, &rs);
  save_devices(w);
  w.end();
  SaveStats st;
  st.bytes = w.bytes_written();
  st.ram_pages = rs.pages;
  st.zero_pages = rs.zero_pages;
  st.ram_raw_bytes = rs.raw_bytes;
  st.ram_compressed_bytes = rs.compressed_bytes;
  return st;
}

void Machine::load_state(const std::string& path) {
  snap::FileSource src(path);
  load_stream(src, "--incoming " + path);
}

void Machine::load_stream(snap::Source& src, const std::string& what) {
  snap::StreamReader r(src, what);
  snap::Loader l;
  l.on("machine", kMachineVersion, [&](const snap::Section& s) {
    const u64 ram = s.u64v("ram_size");
    if (ram != cfg_.memory)
      s.fail("saved VM has " + std::to_string(ram >> 20) + " MiB of RAM, this command line has " +
             std::to_string(cfg_.memory >> 20) + " MiB (--memory)");
    const bool det = s.u64v("deterministic");
    if (det != cfg_.deterministic)
      s.fail(std::string("saved VM ran ") + (det ? "with" : "without") + " --deterministic, this command line " +
             (cfg_.deterministic ? "has" : "has not") + " it");
    if (s.u64v("ns_per_insn") != clock_.ns_per_insn()) s.fail("saved VM has another deterministic clock rate");
    auto check_count = [&](const char* field, usize here, const char* what, const char* flag) {
      const u64 saved = s.u64v(field);
      if (saved != here)
        s.fail("saved VM has " + count_of(saved, what) + ", this command line has " + std::to_string(here) + " (" +
               flag + ")");
    };
    check_count("drives", cfg_.virtio.drives.size(), "virtio-blk disk", "--drive");
    check_count("netdevs", cfg_.virtio.netdevs.size(), "virtio-net card", "--netdev");
    check_count("rng", cfg_.virtio.rng ? 1 : 0, "virtio-rng device", "--rng");
    const std::string saved_devs = s.str("devices"), here = join(describe());
    if (saved_devs != here)
      s.fail("saved VM's devices are " + saved_devs + "; this command line's are " + here +
             " (a disk of another size?)");
    const std::string boot = s.str("boot"), boot_here = cfg_.firmware.empty() ? "kernel" : "firmware";
    if (boot != boot_here)
      s.fail("saved VM was started with --" + boot + ", this command line uses --" + boot_here);
    const bool acpi = s.version >= 2 && s.u64v("acpi");
    if (acpi != (acpi_pm_ != nullptr))
      s.fail(std::string("saved VM has ") + (acpi ? "ACPI" : "no ACPI") + ", this command line " +
             (acpi_pm_ ? "has it (add --no-acpi)" : "has --no-acpi"));
    const bool pv = s.version >= 3 && s.u64v("paravirt");
    if (pv != cfg_.paravirt)
      s.fail(std::string("saved VM has ") + (pv ? "the paravirtual interface" : "no paravirtual interface") +
             ", this command line " + (cfg_.paravirt ? "has it (add --no-paravirt)" : "has --no-paravirt"));
    s.check_all_read();
  });
  l.on("ram", snap::kRamVersion, [&](const snap::Section& s) {
    snap::load_ram(s, [&](u64 ppn) -> u8* {
      return pm_->plain_ram(ppn) ? pm_->ram() + (ppn << mem::kPageShift) : nullptr;
    });
  }, /*repeatable=*/true);
  // A live migration's later passes: the pages written meanwhile.
  l.on("ram-pages", snap::kRamPagesVersion, [&](const snap::Section& s) {
    snap::load_ram_pages(s, [&](u64 ppn) -> u8* {
      return pm_->plain_ram(ppn) ? pm_->ram() + (ppn << mem::kPageShift) : nullptr;
    });
  }, /*repeatable=*/true);
  l.optional("ram-pages");
  l.on("clock", kClockVersion, [&](const snap::Section& s) {
    const u64 now = s.u64v("now_ns");
    s.check_all_read();
    clock_.set_now(now);  // after the CPU: deterministic time counts its instructions
    // kvm-clock's wall clock follows the host's real time here, as KVM's
    // does after a restore (the guest reads it again when it asks).
    if (!cfg_.deterministic) {
      timespec ts;
      ::clock_gettime(CLOCK_REALTIME, &ts);
      wall_epoch_ns_ = u64(ts.tv_sec) * 1000000000 + u64(ts.tv_nsec) - now;
    }
  });
  l.on("cpu", x86::kCpuStateVersion, [&](const snap::Section& s) { x86::load_cpu_state(cpu_, s); });
  l.on("pit", dev::I8254Pit::State::kVersion, [&](const snap::Section& s) { dev::load_chip(s, *pit_); });
  l.on("port-b", dev::SystemControlPortB::State::kVersion,
       [&](const snap::Section& s) { dev::load_chip(s, *port_b_); });
  l.on("com1", dev::Uart16550::State::kVersion, [&](const snap::Section& s) { dev::load_chip(s, *com1_); });
  l.on("rtc", dev::Mc146818Rtc::State::kVersion, [&](const snap::Section& s) { dev::load_chip(s, *rtc_); });
  l.on("i8042", dev::I8042::State::kVersion, [&](const snap::Section& s) { dev::load_chip(s, *i8042_); });
  l.on("post", dev::PostCodePort::State::kVersion, [&](const snap::Section& s) { dev::load_chip(s, *post_); });
  if (acpi_pm_)
    l.on("acpi-pm", dev::AcpiPm::State::kVersion, [&](const snap::Section& s) { dev::load_chip(s, *acpi_pm_); });
  l.on("pci-host", dev::PciHostBridge::State::kVersion,
       [&](const snap::Section& s) { dev::load_chip(s, *pci_host_); });
  l.on("pci-host-function", dev::PciFunction::State::kVersion, [&](const snap::Section& s) {
    dev::PciFunction::State st;
    dev::load_state(s, st);
    s.check_all_read();
    pci_host_->host_function().restore(st);
  });
  if (virtio_) virtio_->add_loaders(l);
  l.on("pic-slave", dev::I8259Pic::State::kVersion, [&](const snap::Section& s) { dev::load_chip(s, *pic_slave_); });
  l.on("pic-master", dev::I8259Pic::State::kVersion,
       [&](const snap::Section& s) { dev::load_chip(s, *pic_master_); });
  // Sections come in the writer's order (save_state above): the CPU, then
  // the clock, then the chips, which restore deadlines and IRQ levels
  // against the clock.
  l.run(r);
  cpu_.intr_line = intr_.level();
}

}  // namespace popek::machine
