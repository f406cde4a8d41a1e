// The device side of the board. Chip models implement these interfaces and see
// only offsets within their own register window, IRQ lines and (for DMA-capable
// devices) a guest-RAM accessor; they never know their address or IRQ number.
#pragma once
#include <functional>
#include <string>

#include "base/counters.h"
#include "base/types.h"

namespace popek::dev {

// A device reachable through port I/O or MMIO. `offset` is relative to the base
// of the window the board mapped it at; `size` is 1, 2 or 4 (8 for MMIO).
class Device {
 public:
  virtual ~Device() = default;
  virtual const char* name() const = 0;
  virtual u64 read(u64 offset, unsigned size) = 0;
  virtual void write(u64 offset, unsigned size, u64 value) = 0;
  // Power-on / hardware reset state.
  virtual void reset() {}
};

// An interrupt line from a device to an interrupt controller input. The board
// connects lines; a device only raises and lowers its own.
class IrqLine {
 public:
  using Sink = std::function<void(bool level)>;
  IrqLine() = default;
  explicit IrqLine(Sink sink) : sink_(std::move(sink)) {}
  void connect(Sink sink) { sink_ = std::move(sink); }
  void set(bool level) {
    if (level == level_) return;
    level_ = level;
    if (sink_) sink_(level);
  }
  void raise() { set(true); }
  void lower() { set(false); }
  // An edge: a low->high->low transition (for edge-triggered inputs).
  void pulse() {
    set(true);
    set(false);
  }
  bool level() const { return level_; }

 private:
  Sink sink_;
  bool level_ = false;
};

}  // namespace popek::dev
