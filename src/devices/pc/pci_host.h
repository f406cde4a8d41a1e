// PCI host bridge behind configuration mechanism #1, and the bridge's own
// function (an Intel 440FX-like host bridge, 8086:1237, class 06/00/00).
//
// Register window (8 bytes; 0xCF8-0xCFF on a PC):
//   offset 0, 32-bit only: CONFIG_ADDRESS (bit 31 enable, 23-16 bus, 15-11
//     device, 10-8 function, 7-2 register). Narrower accesses to offsets 0-3
//     are not configuration cycles: reads give all ones, writes are dropped
//     (Linux's pci_check_type1 writes a byte to 0xCFB first).
//   offsets 4-7: CONFIG_DATA, byte/word/dword, at register + (offset - 4).
// With the enable bit clear, or for a function nobody attached, data reads
// return all ones.
#pragma once
#include "base/types.h"
#include "devices/bus/device.h"
#include "devices/pc/pci.h"

namespace popek::dev {

class I440fxHostFunction : public PciFunction {
 public:
  I440fxHostFunction() : PciFunction(0x8086, 0x1237, 0x060000, 0x02) {}
  const char* name() const override { return "i440fx"; }
};

class PciHostBridge : public Device {
 public:
  // Attaches the bridge's own function at 00:00.0 of `bus`.
  explicit PciHostBridge(PciBus& bus);

  const char* name() const override { return "pci_host"; }
  u64 read(u64 offset, unsigned size) override;
  void write(u64 offset, unsigned size, u64 value) override;
  void reset() override { config_address_ = 0; }

  u32 config_address() const { return config_address_; }
  PciFunction& host_function() { return host_fn_; }

  struct State {
    static constexpr u32 kVersion = 1;
    u32 version = kVersion;
    u32 config_address = 0;
  };
  State save() const { return State{State::kVersion, config_address_}; }
  void restore(const State& s);

 private:
  PciBus& bus_;
  I440fxHostFunction host_fn_;
  u32 config_address_ = 0;
};

}  // namespace popek::dev
