// Two tiny I/O sinks the board maps where it likes.
//
// PostCodePort: the POST diagnostic port (0x80 on a PC). Linux writes to it
// for I/O delays (outb_p), so a write only stores the value, counts it and
// calls an optional hook. Reads return the last value written.
//
// DebugExit: QEMU's isa-debug-exit semantics, for test guests: a write of
// value v (masked to the window's access size) asks the board to end the run
// with exit status (v << 1) | 1. Reads return all ones.
#pragma once
#include <functional>

#include "base/types.h"
#include "devices/bus/device.h"

namespace popek::dev {

class PostCodePort : public Device {
 public:
  explicit PostCodePort(std::function<void(u8)> hook = {}) : hook_(std::move(hook)) {}
  const char* name() const override { return "post"; }
  u64 read(u64 offset, unsigned size) override;
  void write(u64 offset, unsigned size, u64 value) override;
  void reset() override { last_ = 0; }

  u8 last() const { return last_; }
  u64 writes() const { return writes_; }

  struct State {
    static constexpr u32 kVersion = 1;
    u32 version = kVersion;
    u8 last = 0;
  };
  State save() const { return State{State::kVersion, last_}; }
  void restore(const State& s);

 private:
  std::function<void(u8)> hook_;
  u8 last_ = 0;
  u64 writes_ = 0;
};

class DebugExit : public Device {
 public:
  // `io_size` is the register width in bytes (1, 2 or 4), as QEMU's iosize.
  explicit DebugExit(std::function<void(u32 status)> on_exit, unsigned io_size = 1)
      : on_exit_(std::move(on_exit)), io_size_(io_size) {}
  const char* name() const override { return "debug_exit"; }
  u64 read(u64 offset, unsigned size) override;
  void write(u64 offset, unsigned size, u64 value) override;

  bool requested() const { return requested_; }
  u32 status() const { return status_; }

 private:
  std::function<void(u32)> on_exit_;
  unsigned io_size_;
  bool requested_ = false;
  u32 status_ = 0;
};

}  // namespace popek::dev
