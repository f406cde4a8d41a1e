#include "devices/pc/pci.h"

#include <string>

#include "base/bits.h"
#include "base/error.h"

namespace popek::dev {

namespace {
constexpr unsigned kCommand = 0x04, kStatus = 0x06, kBar0 = 0x10, kIntLine = 0x3C, kIntPin = 0x3D,
                   kHeaderType = 0x0E;
constexpr u16 kCmdIo = 0x0001, kCmdMem = 0x0002;
// Writable command bits: I/O, memory, bus master, parity, SERR#, INTx disable.
constexpr u16 kCmdWritable = 0x0547;
// Status bits that are cleared by writing 1: parity/system/abort errors.
constexpr u16 kStatusW1c = 0xF900;

void put16(std::array<u8, 256>& a, unsigned off, u16 v) {
  a[off] = static_cast<u8>(v);
  a[off + 1] = static_cast<u8>(v >> 8);
}
u32 get32(const std::array<u8, 256>& a, unsigned off) {
  return a[off] | a[off + 1] << 8 | a[off + 2] << 16 | static_cast<u32>(a[off + 3]) << 24;
}
}  // namespace

PciFunction::PciFunction(u16 vendor, u16 device, u32 class_code, u8 revision) {
  put16(cfg_, 0x00, vendor);
  put16(cfg_, 0x02, device);
  cfg_[0x08] = revision;
  cfg_[0x09] = static_cast<u8>(class_code);
  cfg_[0x0A] = static_cast<u8>(class_code >> 8);
  cfg_[0x0B] = static_cast<u8>(class_code >> 16);
  put16(wmask_, kCommand, kCmdWritable);
  put16(w1c_, kStatus, kStatusW1c);
  wmask_[0x0C] = 0xFF;  // cache line size
  wmask_[0x0D] = 0xFF;  // latency timer
  wmask_[kIntLine] = 0xFF;
  mapped_.fill(kUnmapped);
}

void PciFunction::declare_bar(unsigned index, BarKind kind, u64 size, bool prefetchable) {
  POPEK_CHECK(index < 6 && size && (size & (size - 1)) == 0);
  POPEK_CHECK(kind != BarKind::kMem64 || index < 5);
  bars_[index] = Bar{kind, size, prefetchable};
  const unsigned off = kBar0 + 4 * index;
  u64 mask = ~(size - 1);
  u32 type = 0;
  switch (kind) {
    case BarKind::kIo:
      POPEK_CHECK(size >= 4 && size <= 0x10000);
      type = 0x1;
      mask &= 0xFFFFFFFCull;
      break;
    case BarKind::kMem32:
      POPEK_CHECK(size >= 16 && size <= 0x80000000ull);
      mask &= 0xFFFFFFF0ull;
      break;
    case BarKind::kMem64:
      POPEK_CHECK(size >= 16);
      type = 0x4;
      mask &= ~0xFull;
      bars_[index + 1] = Bar{};
      break;
    case BarKind::kNone:
      mask = 0;
      break;
  }
  if (prefetchable && kind != BarKind::kIo) type |= 0x8;
  for (unsigned i = 0; i < 4; ++i) {
    cfg_[off + i] = static_cast<u8>(type >> (8 * i));
    wmask_[off + i] = static_cast<u8>(mask >> (8 * i));
  }
  if (kind == BarKind::kMem64) {
    for (unsigned i = 0; i < 4; ++i) {
      cfg_[off + 4 + i] = 0;
      wmask_[off + 4 + i] = static_cast<u8>(mask >> (32 + 8 * i));
    }
  }
}

void PciFunction::set_interrupt_pin(u8 pin) { cfg_[kIntPin] = pin; }

void PciFunction::set_multifunction(bool on) {
  cfg_[kHeaderType] = static_cast<u8>((cfg_[kHeaderType] & 0x7F) | (on ? 0x80 : 0));
}

u64 PciFunction::bar_address(unsigned index) const {
  const Bar& b = bars_[index];
  const unsigned off = kBar0 + 4 * index;
  const u16 cmd = command();
  u64 addr, mask;
  switch (b.kind) {
    case BarKind::kIo:
      if (!(cmd & kCmdIo)) return kUnmapped;
      addr = get32(cfg_, off) & 0xFFFFFFFCu;
      mask = ~(b.size - 1) & 0xFFFFFFFCull;
      break;
    case BarKind::kMem32:
      if (!(cmd & kCmdMem)) return kUnmapped;
      addr = get32(cfg_, off) & 0xFFFFFFF0u;
      mask = ~(b.size - 1) & 0xFFFFFFF0ull;
      break;
    case BarKind::kMem64:
      if (!(cmd & kCmdMem)) return kUnmapped;
      addr = (get32(cfg_, off) & 0xFFFFFFF0u) | static_cast<u64>(get32(cfg_, off + 4)) << 32;
      mask = ~(b.size - 1) & ~0xFull;
      break;
    default:
      return kUnmapped;
  }
  // Zero means "not assigned"; the all-ones pattern is a sizing probe.
  if (addr == 0 || addr == mask) return kUnmapped;
  return addr;
}

void PciFunction::check_bars() {
  for (unsigned i = 0; i < 6; ++i) {
    const u64 now = bar_address(i);
    if (now == mapped_[i]) continue;
    const u64 old = mapped_[i];
    mapped_[i] = now;
    if (listener_) listener_(*this, i, old, now);
  }
}

u32 PciFunction::config_read(unsigned offset, unsigned size) {
  u32 v = 0;
  for (unsigned i = 0; i < size && offset + i < 256; ++i) v |= static_cast<u32>(cfg_[offset + i]) << (8 * i);
  return v;
}

void PciFunction::config_write(unsigned offset, unsigned size, u32 value) {
  for (unsigned i = 0; i < size && offset + i < 256; ++i) {
    const unsigned o = offset + i;
    const u8 b = static_cast<u8>(value >> (8 * i));
    cfg_[o] = static_cast<u8>((cfg_[o] & ~wmask_[o]) | (b & wmask_[o]));
    cfg_[o] &= static_cast<u8>(~(b & w1c_[o]));
  }
  if (offset < kBar0 + 24 && offset + size > kCommand) check_bars();
  on_config_write(offset, size);
}

void PciFunction::restore(const State& s) {
  if (s.version != State::kVersion)
    throw Error(std::string(name()) + ": unsupported PCI state version " +
                std::to_string(s.version));
  // Keep the read-only identity and BAR type bits; take what the guest could write.
  for (unsigned o = 0; o < 256; ++o)
    cfg_[o] = static_cast<u8>((cfg_[o] & ~wmask_[o]) | (s.config[o] & wmask_[o]));
  check_bars();
}

// --- bus -------------------------------------------------------------------------

PciBus::PciBus() {
  for (auto& d : fns_)
    for (auto& f : d) f = nullptr;
}

void PciBus::attach(unsigned dev, unsigned fn, PciFunction* f) {
  POPEK_CHECK(dev < kDevices && fn < kFunctions && f);
  if (fns_[dev][fn]) throw Error(std::string("pci: two functions at slot of ") + f->name());
  fns_[dev][fn] = f;
  f->set_listener([this](PciFunction& pf, unsigned bar, u64 old_addr, u64 new_addr) {
    if (on_bar_change) on_bar_change(pf, bar, old_addr, new_addr);
  });
  // Function 0 announces further functions through the header type's bit 7.
  bool multi = false;
  for (unsigned i = 1; i < kFunctions; ++i) multi |= fns_[dev][i] != nullptr;
  if (fns_[dev][0]) fns_[dev][0]->set_multifunction(multi);
}

u32 PciBus::config_read(unsigned bus, unsigned dev, unsigned fn, unsigned offset, unsigned size) {
  PciFunction* f = (bus == 0 && dev < kDevices && fn < kFunctions) ? fns_[dev][fn] : nullptr;
  if (!f) return size_mask(size);
  return f->config_read(offset, size);
}

void PciBus::config_write(unsigned bus, unsigned dev, unsigned fn, unsigned offset, unsigned size,
                          u32 value) {
  PciFunction* f = (bus == 0 && dev < kDevices && fn < kFunctions) ? fns_[dev][fn] : nullptr;
  if (f) f->config_write(offset, size, value);
}

}  // namespace popek::dev
