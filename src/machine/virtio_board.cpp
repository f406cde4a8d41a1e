#include "machine/virtio_board.h"

#include <sys/stat.h>
#include <time.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>

#include "base/error.h"
#include "base/strings.h"
#include "base/log.h"
#include "block/backend.h"
#include "devices/bus/bus.h"
#include "devices/pc/pci.h"
#include "devices/virtio/blk.h"
#include "devices/virtio/net.h"
#include "devices/virtio/rng.h"
#include "devices/virtio/virtio_pci.h"
#include "machine/pc_layout.h"
#include "memory/phys_mem.h"

namespace popek::machine {

using dev::virtio::VirtioBlk;
using dev::virtio::VirtioDevice;
using dev::virtio::VirtioPciFunction;

namespace {

bool parse_bool(const std::string& key, const std::string& v) {
  if (v == "on" || v == "true" || v == "yes" || v == "1") return true;
  if (v == "off" || v == "false" || v == "no" || v == "0") return false;
  throw Error("--drive: " + key + "=" + v + " is not on or off");
}

// popek's MAC prefix: locally administered 02:50:4f:50:45 ("POPE"), then the card index.
void default_mac(unsigned index, u8 mac[6]) {
  const u8 base[6] = {0x02, 0x50, 0x4F, 0x50, 0x45, 0x4B};
  std::memcpy(mac, base, 6);
  mac[5] = u8(base[5] + index);
}

}  // namespace

DriveConfig parse_drive(const std::string& spec) {
  DriveConfig d;
  for (const std::string& o : split(spec, ',')) {
    auto eq = o.find('=');
    if (eq == std::string::npos)
      throw Error("--drive: '" + o + "' is not key=value (e.g. --drive file=disk.qcow2,format=qcow2)");
    const std::string k = o.substr(0, eq), v = o.substr(eq + 1);
    if (k == "file") {
      if (v.empty()) throw Error("--drive: file= is empty");
      d.file = v;
    } else if (k == "format") {
      if (v != "raw" && v != "qcow2") throw Error("--drive: unknown format '" + v + "' (raw or qcow2)");
      d.format = v;
    } else if (k == "readonly") {
      d.readonly = parse_bool(k, v);
    } else if (k == "cache") {
      if (v == "none" || v == "directsync")
        throw Error("--drive: cache=" + v +
                    " needs O_DIRECT, which popek's disk images do not do; use cache=writeback "
                    "(default), writethrough or unsafe");
      if (v != "writeback" && v != "writethrough" && v != "unsafe")
        throw Error("--drive: unknown cache mode '" + v + "' (writeback, writethrough or unsafe)");
      d.cache = v;
    } else if (k == "serial") {
      if (v.size() > 20) throw Error("--drive: serial '" + v + "' is longer than 20 characters");
      d.serial = v;
    } else if (k == "if") {
      if (v != "virtio") throw Error("--drive: if=" + v + " is not available (popek's disks are virtio)");
    } else if (k == "media") {
      if (v != "disk") throw Error("--drive: media=" + v + " is not available (disk only)");
    } else if (k == "id") {
      // accepted for QEMU compatibility; unused
    } else {
      throw Error("--drive: unknown option '" + k +
                  "' (known: file, format, readonly, cache, serial, if, media, id)");
    }
  }
  if (d.file.empty()) throw Error("--drive: file=PATH is missing in '" + spec + "'");
  return d;
}

// Guest RAM for devices: ranges wholly inside RAM and outside the legacy
// hole / BIOS area; writes invalidate translated code on the pages.
class VirtioBoard::Ram final : public dev::virtio::GuestMemory {
 public:
  explicit Ram(mem::PhysMem& pm) : pm_(pm) {}
  u8* translate(u64 gpa, u64 len) override {
    const u64 size = pm_.ram_size();
    if (gpa > size || len > size - gpa) return nullptr;
    if (len && gpa < pc::kHighMem && gpa + len > pc::kVgaHole) return nullptr;
    pm_.device_access(gpa, len);  // the dirty log: the device may write there from its I/O thread
    return pm_.ram() + gpa;
  }
  void written(u64 gpa, u64 len) override {
    pm_.device_wrote(gpa, len);  // translated code and the lockstep shadow see DMA
  }

 private:
  mem::PhysMem& pm_;
};

VirtioBoard::VirtioBoard(const VirtioConfig& cfg, mem::PhysMem& pm, dev::PciBus& pci, dev::Bus& mmio,
                         std::function<void(unsigned, bool)> irq_set)
    : ram_(std::make_unique<Ram>(pm)), pci_(pci), mmio_(mmio), irq_set_(std::move(irq_set)) {
  const unsigned n = unsigned(cfg.drives.size() + cfg.netdevs.size() + (cfg.rng ? 1 : 0));
  if (n == 0) return;
  if (pm.ram_size() > pc::kPciMmioBase)
    throw Error("with virtio devices the guest RAM must end below the PCI window at 3.5 GiB (--memory " +
                std::to_string(pm.ram_size() >> 20) + "M is too much)");
  if (pc::kVirtioFirstSlot + n > dev::PciBus::kDevices)
    throw Error("too many virtio devices (" + std::to_string(n) + "; at most " +
                std::to_string(dev::PciBus::kDevices - pc::kVirtioFirstSlot) + ")");

  std::vector<std::string> opened;
  for (usize i = 0; i < cfg.drives.size(); i++) {
    const DriveConfig& d = cfg.drives[i];
    const std::string what = "--drive file=" + d.file;
    struct stat st;
    if (::stat(d.file.c_str(), &st) != 0)
      throw Error(what + ": " + std::strerror(errno));
    if (!S_ISREG(st.st_mode) && !S_ISBLK(st.st_mode))
      throw Error(what + ": not a regular file or block device");
    char* real = ::realpath(d.file.c_str(), nullptr);
    std::string rp = real ? real : d.file;
    std::free(real);
    for (const std::string& o : opened)
      if (o == rp) throw Error(what + ": the same image is given twice");
    opened.push_back(rp);
    block::OpenOptions oo;
    oo.format = d.format;
    oo.read_only = d.readonly;
    std::unique_ptr<block::BlockBackend> disk;
    try {
      disk = block::open_image(d.file, oo);
    } catch (const Error& e) {
      std::string hint;
      if (!d.readonly && ::access(d.file.c_str(), W_OK) != 0) hint = " (the file is not writable: add readonly=on?)";
      throw Error(what + ": " + e.what() + hint);
    }
    if (disk->size() % 512)
      POPEK_LOG(warn, "%s: size %llu is not a multiple of 512; the last %llu bytes are not visible",
                d.file.c_str(), (unsigned long long)disk->size(), (unsigned long long)(disk->size() % 512));
    VirtioBlk::Options o;
    o.serial = d.serial;
    o.cache = d.cache == "writethrough" ? VirtioBlk::Cache::writethrough
              : d.cache == "unsafe"     ? VirtioBlk::Cache::unsafe
                                        : VirtioBlk::Cache::writeback;
    o.synchronous = cfg.deterministic;
    add(std::make_unique<VirtioBlk>("virtio-blk" + std::to_string(i), *ram_, std::move(disk), o));
  }
  for (usize i = 0; i < cfg.netdevs.size(); i++) {
    const net::NetdevSpec& s = cfg.netdevs[i];
    u8 mac[6];
    if (s.mac.empty()) default_mac(unsigned(i), mac);
    else net::parse_mac(s.mac, mac);
    add(std::make_unique<dev::virtio::VirtioNet>("virtio-net" + std::to_string(i), *ram_,
                                                 net::open_netdev(s, cfg.defer_host_ports), mac));
  }
  if (cfg.rng) add(std::make_unique<dev::virtio::VirtioRng>("virtio-rng0", *ram_));

  auto prev = pci_.on_bar_change;
  pci_.on_bar_change = [this, prev](dev::PciFunction& f, unsigned bar, u64 o, u64 nw) {
    if (prev) prev(f, bar, o, nw);
    on_bar_change(f, bar, o, nw);
  };
  // As firmware would: slot, BAR address, memory decoding on, IRQ line.
  u64 next_bar = pc::kPciMmioBase;
  for (usize i = 0; i < devices_.size(); i++) {
    const unsigned slot = unsigned(pc::kVirtioFirstSlot + i);
    const unsigned irq = pc::kPciIrqs[slot % 4];
    lines_.push_back(std::make_unique<dev::IrqLine>([this, irq](bool level) {
      if (level) irq_count_[irq]++;
      else irq_count_[irq]--;
      irq_set_(irq, irq_count_[irq] > 0);
    }));
    fns_.push_back(std::make_unique<VirtioPciFunction>(*devices_[i], *lines_.back()));
    VirtioPciFunction& fn = *fns_.back();
    pci_.attach(slot, 0, &fn);
    fn.config_write(0x3C, 1, irq);
    fn.config_write(0x10, 4, u32(next_bar));
    fn.config_write(0x04, 2, 0x0006);  // memory space, bus master
    next_bar += VirtioPciFunction::kBarSize;
  }
}

VirtioBoard::~VirtioBoard() {
  // Devices (and their in-flight disk requests) go before the functions and
  // lines their interrupt sinks point at.
  devices_.clear();
}

void VirtioBoard::add(std::unique_ptr<VirtioDevice> d) { devices_.push_back(std::move(d)); }

std::vector<unsigned> VirtioBoard::irqs() const {
  std::vector<unsigned> out;
  for (usize i = 0; i < devices_.size(); i++) {
    const unsigned irq = pc::kPciIrqs[(pc::kVirtioFirstSlot + i) % 4];
    bool seen = false;
    for (unsigned x : out) seen |= x == irq;
    if (!seen) out.push_back(irq);
  }
  return out;
}

void VirtioBoard::on_bar_change(dev::PciFunction& f, unsigned bar, u64 old_addr, u64 new_addr) {
  auto* vf = dynamic_cast<VirtioPciFunction*>(&f);
  if (!vf || bar != 0) return;
  if (old_addr != dev::PciFunction::kUnmapped) mmio_.unmap(old_addr);
  if (new_addr == dev::PciFunction::kUnmapped) return;
  try {
    mmio_.map(new_addr, VirtioPciFunction::kBarSize, &vf->bar_device());
  } catch (const Error& e) {
    // The guest placed two BARs over each other: the later one stays
    // unreachable, as the bus cannot decode both.
    bar_mapping_errors_++;
    POPEK_LOG(warn, "%s: BAR 0 at %#llx overlaps another device; not mapped (%s)", vf->name(),
              (unsigned long long)new_addr, e.what());
  }
}

short VirtioBoard::poll(u64 timeout_ns, const pollfd* extra) {
  fds_.clear();
  split_.clear();
  int timeout_ms = int(std::min<u64>(timeout_ns / 1000000 + (timeout_ns % 1000000 ? 1 : 0), 1000));
  for (auto& d : devices_) {
    split_.push_back(fds_.size());
    d->io_fill(fds_, &timeout_ms);
  }
  split_.push_back(fds_.size());
  if (extra) fds_.push_back(*extra);
  u64 wait = timeout_ns;
  if (timeout_ms >= 0) wait = std::min<u64>(wait, u64(timeout_ms) * 1000000);
  if (!fds_.empty() || wait) {
    timespec ts{time_t(wait / 1000000000), long(wait % 1000000000)};
    int r = ::ppoll(fds_.data(), fds_.size(), &ts, nullptr);
    if (r < 0 && errno != EINTR) POPEK_LOG(warn, "virtio: ppoll: %s", std::strerror(errno));
  }
  for (usize i = 0; i < devices_.size(); i++)
    devices_[i]->io_dispatch(fds_.data() + split_[i], split_[i + 1] - split_[i]);
  return extra ? fds_.back().revents : 0;
}

std::vector<std::pair<std::string, u64>> VirtioBoard::stats() const {
  std::vector<std::pair<std::string, u64>> out;
  for (auto& d : devices_) {
    for (auto& kv : d->stats()) out.push_back(kv);
    if (auto* n = dynamic_cast<dev::virtio::VirtioNet*>(d.get()))
      for (auto& [k, v] : n->backend().counters().snapshot())
        out.emplace_back(d->name() + ".backend." + k, v);
  }
  if (bar_mapping_errors_) out.emplace_back("virtio.bar_overlaps", bar_mapping_errors_);
  return out;
}

}  // namespace popek::machine

// --- suspend/resume -------------------------------------------------------------

#include "snapshot/stream.h"

namespace popek::machine {

bool VirtioBoard::can_save(std::string* why) const {
  for (auto& d : devices_)
    if (!d->can_save(why)) return false;
  return true;
}

void VirtioBoard::quiesce() {
  for (auto& d : devices_) d->quiesce();
}

namespace {
// 1: libslirp's state; 2: and the connections it drops, the guest's MAC.
constexpr u32 kBackendVersion = 2;
}  // namespace

void VirtioBoard::save(snap::StreamWriter& w) const {
  for (auto& f : fns_) {
    snap::SectionWriter s;
    f->save_state(s);
    w.section(f->device().name(), f->device().state_version(), s);
    if (auto* n = dynamic_cast<dev::virtio::VirtioNet*>(&f->device())) {
      // "virtio-net0.backend": libslirp's state, in its own format and version.
      const net::NetBackend::State st = n->backend().save_state();
      snap::SectionWriter b;
      b.str("kind", st.kind);
      b.u64v("format_version", st.version);
      b.bytes("state", st.bytes);
      std::vector<u8> conns;  // 12 bytes each: guest addr, port, peer addr, port (network order)
      for (const auto& c : st.dropped_tcp) {
        conns.insert(conns.end(), c.guest_addr, c.guest_addr + 4);
        conns.push_back(u8(c.guest_port >> 8));
        conns.push_back(u8(c.guest_port));
        conns.insert(conns.end(), c.peer_addr, c.peer_addr + 4);
        conns.push_back(u8(c.peer_port >> 8));
        conns.push_back(u8(c.peer_port));
      }
      b.bytes("dropped_tcp", conns);
      b.bytes("guest_mac", st.guest_mac);
      w.section(n->name() + ".backend", kBackendVersion, b);
    }
  }
}

void VirtioBoard::add_loaders(snap::Loader& l) {
  for (auto& f : fns_) {
    VirtioPciFunction* fn = f.get();
    l.on(fn->device().name(), fn->device().state_version(), [fn](const snap::Section& s) { fn->load_state(s); });
    if (auto* n = dynamic_cast<dev::virtio::VirtioNet*>(&fn->device())) {
      l.on(n->name() + ".backend", kBackendVersion, [n](const snap::Section& s) {
        net::NetBackend::State st;
        st.kind = s.str("kind");
        st.version = u32(s.u64v("format_version"));
        auto b = s.bytes("state");
        st.bytes.assign(b.begin(), b.end());
        if (s.version >= 2) {
          auto conns = s.bytes("dropped_tcp");
          if (conns.size() % 12) s.fail("dropped_tcp is not a list of 12-byte entries");
          for (usize i = 0; i < conns.size(); i += 12) {
            net::NetBackend::State::Conn c{};
            std::memcpy(c.guest_addr, &conns[i], 4);
            c.guest_port = u16(conns[i + 4] << 8 | conns[i + 5]);
            std::memcpy(c.peer_addr, &conns[i + 6], 4);
            c.peer_port = u16(conns[i + 10] << 8 | conns[i + 11]);
            st.dropped_tcp.push_back(c);
          }
          auto mac = s.bytes("guest_mac");
          st.guest_mac.assign(mac.begin(), mac.end());
        }
        s.check_all_read();
        try {
          n->backend().load_state(st);
        } catch (const snap::FormatError&) {
          throw;
        } catch (const Error& e) {
          s.fail(e.what());
        }
      });
    }
  }
}

void VirtioBoard::release_host_ports() {
  for (auto& d : devices_)
    if (auto* n = dynamic_cast<dev::virtio::VirtioNet*>(d.get())) n->backend().release_host_ports();
}

void VirtioBoard::claim_host_ports() {
  std::vector<net::NetBackend*> done;
  try {
    for (auto& d : devices_)
      if (auto* n = dynamic_cast<dev::virtio::VirtioNet*>(d.get())) {
        n->backend().claim_host_ports();
        done.push_back(&n->backend());
      }
  } catch (...) {
    for (auto* b : done) b->release_host_ports();  // all or none
    throw;
  }
}

std::vector<std::string> VirtioBoard::describe() const {
  std::vector<std::string> out;
  for (auto& d : devices_) {
    std::string s = d->name();
    if (auto* b = dynamic_cast<VirtioBlk*>(d.get())) s += " (" + std::to_string(b->disk().size()) + " bytes)";
    out.push_back(s);
  }
  return out;
}

}  // namespace popek::machine
