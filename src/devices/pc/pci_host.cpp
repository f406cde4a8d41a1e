#include "devices/pc/pci_host.h"

#include <string>

#include "base/bits.h"
#include "base/error.h"

namespace popek::dev {

namespace {
constexpr u32 kEnable = 0x80000000u;
// Writable CONFIG_ADDRESS bits: enable, bus, device, function, dword register.
constexpr u32 kAddressMask = 0x80FFFFFCu;
u64 all_ones(unsigned size) { return size >= 8 ? ~0ull : size_mask(size); }
}  // namespace

PciHostBridge::PciHostBridge(PciBus& bus) : bus_(bus) { bus_.attach(0, 0, &host_fn_); }

u64 PciHostBridge::read(u64 offset, unsigned size) {
  if (offset < 4) return (offset == 0 && size == 4) ? config_address_ : all_ones(size);
  if (!(config_address_ & kEnable) || offset + size > 8 || size > 4) return all_ones(size);
  const u32 a = config_address_;
  return bus_.config_read((a >> 16) & 0xFF, (a >> 11) & 0x1F, (a >> 8) & 7,
                          (a & 0xFC) + static_cast<unsigned>(offset - 4), size);
}

void PciHostBridge::write(u64 offset, unsigned size, u64 value) {
  if (offset < 4) {
    if (offset == 0 && size == 4) config_address_ = static_cast<u32>(value) & kAddressMask;
    return;
  }
  if (!(config_address_ & kEnable) || offset + size > 8 || size > 4) return;
  const u32 a = config_address_;
  bus_.config_write((a >> 16) & 0xFF, (a >> 11) & 0x1F, (a >> 8) & 7,
                    (a & 0xFC) + static_cast<unsigned>(offset - 4), size,
                    static_cast<u32>(value));
}

void PciHostBridge::restore(const State& s) {
  if (s.version != State::kVersion)
    throw Error("pci_host: unsupported state version " + std::to_string(s.version));
  config_address_ = s.config_address & kAddressMask;
}

}  // namespace popek::dev
