// Time as devices see it. The board owns one VirtualClock (real time or derived
// from retired guest instructions); chips read it through this interface and
// never call the host clock themselves, so deterministic runs repeat exactly.
#pragma once
#include "base/types.h"

namespace popek {

class Clock {
 public:
  virtual ~Clock() = default;
  // Nanoseconds of virtual time since the machine was powered on; monotonic.
  virtual u64 now_ns() const = 0;
};

// A clock that moves only when told to: for tests and deterministic replay.
class ManualClock : public Clock {
 public:
  u64 now_ns() const override { return t_; }
  void set(u64 t) { t_ = t; }
  void advance(u64 dt) { t_ += dt; }

 private:
  u64 t_ = 0;
};

// Devices that fire timed events (PIT, RTC, UART timeouts) implement this: the
// board asks for the next deadline to know how long the vCPU may run, and calls
// on_time() when the clock reaches it (or later); on_time raises due IRQs.
class Timed {
 public:
  virtual ~Timed() = default;
  static constexpr u64 kNever = ~0ull;
  virtual u64 next_event_ns() const = 0;
  virtual void on_time(u64 now_ns) = 0;
};

}  // namespace popek
