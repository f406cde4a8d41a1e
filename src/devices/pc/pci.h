// PCI functions and a PCI bus (bus 0 only), independent of how configuration
// space is reached (see PciHostBridge for mechanism #1).
//
// A PciFunction owns a 256-byte type-0 configuration space with a write mask
// (bits the guest may change) and a write-1-to-clear mask (status bits).
// BARs are declared with a kind and a power-of-two size; their write masks make
// sizing work by itself (write all ones, read back ~(size-1) | type bits).
// Whenever the decoded address of a BAR changes — the BAR is written, or the
// command register's I/O / memory enable flips — the bus's on_bar_change hook
// tells the board, which maps or unmaps the function's registers. A BAR that
// is disabled, zero, or holds the sizing pattern reports kUnmapped.
#pragma once
#include <array>
#include <functional>

#include "base/types.h"

namespace popek::dev {

class PciFunction {
 public:
  enum class BarKind : u8 { kNone, kIo, kMem32, kMem64 };
  struct Bar {
    BarKind kind = BarKind::kNone;
    u64 size = 0;
    bool prefetchable = false;
  };
  static constexpr u64 kUnmapped = ~0ull;
  using BarListener = std::function<void(PciFunction&, unsigned bar, u64 old_addr, u64 new_addr)>;

  // class_code is the 24-bit class / subclass / programming interface.
  PciFunction(u16 vendor, u16 device, u32 class_code, u8 revision);
  virtual ~PciFunction() = default;
  virtual const char* name() const = 0;

  // Configuration access within the 256-byte space; size 1, 2 or 4, naturally
  // aligned (the host bridge guarantees it).
  virtual u32 config_read(unsigned offset, unsigned size);
  virtual void config_write(unsigned offset, unsigned size, u32 value);

  // Declares BAR `index` (0-5; a 64-bit BAR also uses index+1). Size is a power
  // of two (at least 4 for I/O, 16 for memory).
  void declare_bar(unsigned index, BarKind kind, u64 size, bool prefetchable = false);
  const Bar& bar(unsigned index) const { return bars_[index]; }
  // The address the BAR decodes now, or kUnmapped.
  u64 bar_address(unsigned index) const;
  void set_interrupt_pin(u8 pin);  // 1 = INTA# ... 4 = INTD#, 0 = none
  u8 interrupt_line() const { return cfg_[0x3C]; }
  u16 command() const { return static_cast<u16>(cfg_[4] | cfg_[5] << 8); }
  void set_multifunction(bool on);
  void set_listener(BarListener l) { listener_ = std::move(l); }

  struct State {
    static constexpr u32 kVersion = 1;
    u32 version = kVersion;
    std::array<u8, 256> config{};
  };
  State save() const { return State{State::kVersion, cfg_}; }
  // Restores config space and reports BARs whose decoded address changed.
  void restore(const State& s);

 protected:
  // Raw access for subclasses that define more registers.
  std::array<u8, 256>& config_space() { return cfg_; }
  std::array<u8, 256>& write_mask() { return wmask_; }
  std::array<u8, 256>& w1c_mask() { return w1c_; }
  // Called after a guest write has been applied.
  virtual void on_config_write(unsigned offset, unsigned size) {}

 private:
  void check_bars();

  std::array<u8, 256> cfg_{}, wmask_{}, w1c_{};
  std::array<Bar, 6> bars_{};
  std::array<u64, 6> mapped_{};
  BarListener listener_;
};

class PciBus {
 public:
  static constexpr unsigned kDevices = 32, kFunctions = 8;

  PciBus();
  // Places `f` at 00:dev.fn and routes its BAR changes to on_bar_change.
  void attach(unsigned dev, unsigned fn, PciFunction* f);
  PciFunction* function(unsigned dev, unsigned fn) const { return fns_[dev][fn]; }

  // Configuration cycles; a function that is not there reads all ones.
  u32 config_read(unsigned bus, unsigned dev, unsigned fn, unsigned offset, unsigned size);
  void config_write(unsigned bus, unsigned dev, unsigned fn, unsigned offset, unsigned size,
                    u32 value);

  PciFunction::BarListener on_bar_change;

 private:
  PciFunction* fns_[kDevices][kFunctions];
};

}  // namespace popek::dev
