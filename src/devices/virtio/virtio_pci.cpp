#include "devices/virtio/virtio_pci.h"

#include <cstring>

#include "base/bits.h"

namespace popek::dev::virtio {

namespace {

constexpr unsigned kPciStatus = 0x06, kCapPtr = 0x34, kSubsysVendor = 0x2C, kSubsysId = 0x2E;
constexpr u16 kStatusCapList = 0x10, kStatusIntx = 0x08;
constexpr u16 kCmdIntxDisable = 0x400;

u32 class_code(DeviceType t) {
  switch (t) {
    case DeviceType::net: return 0x020000;   // network, Ethernet
    case DeviceType::blk: return 0x018000;   // mass storage, other
    default: return 0x00FF00;                // unclassified
  }
}

void put(u8* p, u64 v, unsigned size) {
  for (unsigned i = 0; i < size; i++) p[i] = u8(v >> (8 * i));
}
u64 get(const u8* p, unsigned size) {
  u64 v = 0;
  for (unsigned i = 0; i < size; i++) v |= u64(p[i]) << (8 * i);
  return v;
}

// Common configuration fields: offset and width.
struct Field {
  u8 off, size;
};
constexpr Field kFields[] = {{0x00, 4}, {0x04, 4}, {0x08, 4}, {0x0C, 4}, {0x10, 2}, {0x12, 2},
                             {0x14, 1}, {0x15, 1}, {0x16, 2}, {0x18, 2}, {0x1A, 2}, {0x1C, 2},
                             {0x1E, 2}, {0x20, 8}, {0x28, 8}, {0x30, 8}};

}  // namespace

VirtioPciFunction::VirtioPciFunction(VirtioDevice& dev, IrqLine& irq)
    : PciFunction(kPciVendor, u16(kPciModernDeviceBase + u16(dev.type())), class_code(dev.type()), 1),
      dev_(dev), irq_(irq), bar_(*this) {
  auto& cfg = config_space();
  put(&cfg[kSubsysVendor], kPciVendor, 2);
  put(&cfg[kSubsysId], u16(dev.type()), 2);
  cfg[kPciStatus] |= kStatusCapList;
  cfg[kCapPtr] = 0x40;
  declare_bar(0, BarKind::kMem32, kBarSize);
  set_interrupt_pin(1);

  add_cap(kPciCapCommon, 16, kCommonOff, kCommonLen);
  const u8 notify_cap = cap_next_;
  add_cap(kPciCapNotify, 20, kNotifyOff, kNotifyMultiplier * dev.num_queues());
  put(&cfg[notify_cap + 16], kNotifyMultiplier, 4);
  add_cap(kPciCapIsr, 16, kIsrOff, 1);
  if (dev.config_size()) add_cap(kPciCapDevice, 16, kDeviceOff, dev.config_size());
  // The PCI configuration access capability: bar, offset and length are
  // written by the driver; pci_cfg_data (4 bytes after the header) accesses
  // the BAR there.
  pci_cfg_cap_ = cap_next_;
  add_cap(kPciCapPciCfg, 20, 0, 0);
  auto& wm = write_mask();
  wm[pci_cfg_cap_ + 4] = 0xFF;  // bar
  for (unsigned i = 8; i < 20; i++) wm[pci_cfg_cap_ + i] = 0xFF;  // offset, length, data

  dev_.set_interrupt_sink([this](bool level) {
    level_ = level;
    update_irq();
  });
}

void VirtioPciFunction::add_cap(u8 type, u8 len, u32 offset, u32 length) {
  auto& cfg = config_space();
  const u8 at = cap_next_;
  if (last_cap_) cfg[last_cap_ + 1] = at;
  cfg[at] = kPciCapVendor;
  cfg[at + 1] = 0;
  cfg[at + 2] = len;
  cfg[at + 3] = type;
  cfg[at + 4] = 0;  // BAR 0
  put(&cfg[at + 8], offset, 4);
  put(&cfg[at + 12], length, 4);
  last_cap_ = at;
  cap_next_ = u8(at + ((len + 3) & ~3));
}

u32 VirtioPciFunction::config_read(unsigned offset, unsigned size) {
  const unsigned data = pci_cfg_cap_ + 16u;
  if (offset >= data && offset < data + 4) {
    auto& cfg = config_space();
    const u32 boff = u32(get(&cfg[pci_cfg_cap_ + 8], 4)), blen = u32(get(&cfg[pci_cfg_cap_ + 12], 4));
    if (cfg[pci_cfg_cap_ + 4] == 0 && (blen == 1 || blen == 2 || blen == 4) && boff < kBarSize &&
        blen <= kBarSize - boff) {
      put(&cfg[data], bar_read(boff, blen), blen);
    }
  }
  return PciFunction::config_read(offset, size);
}

void VirtioPciFunction::config_write(unsigned offset, unsigned size, u32 value) {
  PciFunction::config_write(offset, size, value);
  const unsigned data = pci_cfg_cap_ + 16u;
  if (offset >= data && offset < data + 4) {
    auto& cfg = config_space();
    const u32 boff = u32(get(&cfg[pci_cfg_cap_ + 8], 4)), blen = u32(get(&cfg[pci_cfg_cap_ + 12], 4));
    if (cfg[pci_cfg_cap_ + 4] == 0 && (blen == 1 || blen == 2 || blen == 4) && boff < kBarSize &&
        blen <= kBarSize - boff)
      bar_write(boff, blen, get(&cfg[data], blen));
  }
}

void VirtioPciFunction::on_config_write(unsigned offset, unsigned size) {
  if (offset < 0x06 && offset + size > 0x04) update_irq();  // command register
}

void VirtioPciFunction::update_irq() {
  auto& cfg = config_space();
  if (level_) cfg[kPciStatus] |= kStatusIntx;
  else cfg[kPciStatus] &= u8(~kStatusIntx);
  irq_.set(level_ && !(command() & kCmdIntxDisable));
}

void VirtioPciFunction::build_common(u8* img) const {
  VirtioDevice& d = dev_;
  std::memset(img, 0, kCommonLen);
  put(img + 0x00, dfselect_, 4);
  const u64 f = d.offered_features();
  put(img + 0x04, dfselect_ == 0 ? u32(f) : dfselect_ == 1 ? u32(f >> 32) : 0, 4);
  put(img + 0x08, gfselect_, 4);
  const u64 g = d.driver_features();
  put(img + 0x0C, gfselect_ == 0 ? u32(g) : gfselect_ == 1 ? u32(g >> 32) : 0, 4);
  put(img + 0x10, kNoVector, 2);
  put(img + 0x12, d.num_queues(), 2);
  img[0x14] = d.status();
  img[0x15] = d.config_generation();
  put(img + 0x16, queue_select_, 2);
  if (queue_select_ < d.num_queues()) {
    Virtqueue& q = d.queue(queue_select_);
    put(img + 0x18, q.size, 2);
    put(img + 0x1A, kNoVector, 2);
    put(img + 0x1C, q.enabled() ? 1 : 0, 2);
    put(img + 0x1E, queue_select_, 2);  // notify offset = queue index
    put(img + 0x20, q.desc_addr, 8);
    put(img + 0x28, q.avail_addr, 8);
    put(img + 0x30, q.used_addr, 8);
  } else {
    put(img + 0x1A, kNoVector, 2);
  }
}

void VirtioPciFunction::write_common(unsigned off, unsigned size, u64 value) {
  u8 img[kCommonLen];
  build_common(img);
  if (off >= kCommonLen) return;
  size = std::min<unsigned>(size, unsigned(kCommonLen - off));
  put(img + off, value, size);
  for (const Field& f : kFields) {
    if (f.off + f.size <= off || f.off >= off + size) continue;
    const u64 v = get(img + f.off, f.size);
    Virtqueue* q = queue_select_ < dev_.num_queues() ? &dev_.queue(queue_select_) : nullptr;
    const bool q_writable = q && !q->enabled();
    switch (f.off) {
      case 0x00: dfselect_ = u32(v); break;
      case 0x08: gfselect_ = u32(v); break;
      case 0x0C: dev_.write_driver_features(gfselect_, u32(v)); break;
      case 0x14:
        dev_.write_status(u8(v));
        if (dev_.status() == 0) dfselect_ = gfselect_ = queue_select_ = 0;
        break;
      case 0x16: queue_select_ = u16(v); break;
      case 0x18: if (q_writable) q->size = u16(v); break;
      case 0x1C: if (q && v == 1) dev_.enable_queue(queue_select_); break;
      case 0x20: if (q_writable) q->desc_addr = v; break;
      case 0x28: if (q_writable) q->avail_addr = v; break;
      case 0x30: if (q_writable) q->used_addr = v; break;
      default: break;  // read-only, or MSI-X vectors (not implemented: stay NO_VECTOR)
    }
  }
}

u64 VirtioPciFunction::bar_read(u64 offset, unsigned size) {
  if (offset < kIsrOff) {
    if (offset >= kCommonLen) return 0;
    u8 img[kCommonLen + 8] = {};
    build_common(img);
    return get(img + offset, size);
  }
  if (offset < kDeviceOff) return offset == kIsrOff ? dev_.read_isr() : 0;
  if (offset < kNotifyOff) return dev_.read_config(unsigned(offset - kDeviceOff), size);
  return 0;
}

void VirtioPciFunction::bar_write(u64 offset, unsigned size, u64 value) {
  if (offset < kIsrOff) {
    write_common(unsigned(offset), size, value);
  } else if (offset < kDeviceOff) {
    // ISR status is read-only.
  } else if (offset < kNotifyOff) {
    dev_.write_config(unsigned(offset - kDeviceOff), size, value);
  } else if (offset < kBarSize) {
    const u64 q = (offset - kNotifyOff) / kNotifyMultiplier;
    if (q < dev_.num_queues()) dev_.notify(unsigned(q));
  }
}

}  // namespace popek::dev::virtio
