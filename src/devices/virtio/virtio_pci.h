// The virtio 1.x PCI transport ("modern", 4.1): a PCI function whose
// capabilities point into one 32-bit memory BAR holding the common
// configuration, the ISR status byte, the device configuration and the
// notification addresses; plus the PCI-configuration-access capability.
// Interrupts are INTx (pin A): the line is high while the ISR status is
// non-zero and the command register's INTx-disable bit is clear. MSI-X is
// not offered (there is no APIC yet), so MSI-X vector registers read
// NO_VECTOR and drivers fall back to INTx.
//
// BAR 0 layout (16 KiB):
//   0x0000 common configuration (56 bytes, the 1.0 layout)
//   0x1000 ISR status (1 byte, read to clear)
//   0x2000 device configuration
//   0x3000 notifications: queue q at 0x3000 + 4*q (notify_off_multiplier 4)
#pragma once
#include "devices/bus/device.h"
#include "devices/pc/pci.h"
#include "devices/virtio/virtio_device.h"

namespace popek::dev::virtio {

class VirtioPciFunction : public PciFunction {
 public:
  static constexpr u64 kBarSize = 0x4000;
  static constexpr u64 kCommonOff = 0x0000, kCommonLen = 0x38;
  static constexpr u64 kIsrOff = 0x1000, kDeviceOff = 0x2000, kNotifyOff = 0x3000;
  static constexpr u32 kNotifyMultiplier = 4;

  // `irq` is the function's INTA# line, wired by the board.
  VirtioPciFunction(VirtioDevice& dev, IrqLine& irq);
  const char* name() const override { return dev_.name().c_str(); }

  u32 config_read(unsigned offset, unsigned size) override;
  void config_write(unsigned offset, unsigned size, u32 value) override;

  // BAR 0's registers, for the board to map where the BAR points.
  Device& bar_device() { return bar_; }
  VirtioDevice& device() { return dev_; }

  // Suspend/resume (state_io.cpp): configuration space, transport registers
  // and the device's state as one section's fields. Loading re-places the BAR
  // (through the bus's listener) and sets the INTx line from the restored ISR.
  void save_state(snap::SectionWriter& w) const;
  void load_state(const snap::Section& r);

  // BAR 0 accesses at an offset within the BAR.
  u64 bar_read(u64 offset, unsigned size);
  void bar_write(u64 offset, unsigned size, u64 value);

 protected:
  void on_config_write(unsigned offset, unsigned size) override;

 private:
  class Bar : public Device {
   public:
    explicit Bar(VirtioPciFunction& f) : f_(f) {}
    const char* name() const override { return f_.name(); }
    u64 read(u64 offset, unsigned size) override { return f_.bar_read(offset, size); }
    void write(u64 offset, unsigned size, u64 value) override { f_.bar_write(offset, size, value); }

   private:
    VirtioPciFunction& f_;
  };

  void add_cap(u8 type, u8 len, u32 offset, u32 length);
  void build_common(u8* img) const;
  void write_common(unsigned off, unsigned size, u64 value);
  void update_irq();

  VirtioDevice& dev_;
  IrqLine& irq_;
  Bar bar_;
  bool level_ = false;
  u32 dfselect_ = 0, gfselect_ = 0;
  u16 queue_select_ = 0;
  u8 cap_next_ = 0x40;   // where the next capability goes
  u8 last_cap_ = 0;      // offset of the previous one (its next pointer)
  u8 pci_cfg_cap_ = 0;   // offset of the PCI configuration access capability
};

}  // namespace popek::dev::virtio
