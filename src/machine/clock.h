// The machine's VirtualClock: one time base for PIT, RTC and TSC. Real-time
// mode follows the host's monotonic clock; deterministic mode derives time from
// retired guest instructions, so a run repeats exactly.
#pragma once
#include <chrono>

#include "base/clock.h"
#include "base/types.h"

namespace popek::machine {

class VirtualClock final : public Clock {
 public:
  // `icount` is the vCPU's retired-instruction counter; `ns_per_insn` the
  // deterministic rate (1 = a guest that retires 1000 instructions per us).
  VirtualClock(bool deterministic, const u64* icount, u64 ns_per_insn = 1)
      : det_(deterministic), icount_(icount), ns_per_insn_(ns_per_insn),
        start_(std::chrono::steady_clock::now()) {}
  u64 now_ns() const override {
    if (det_) return *icount_ * ns_per_insn_ + skipped_;
    if (paused_) return frozen_;
    return u64(std::chrono::duration_cast<std::chrono::nanoseconds>(
                   std::chrono::steady_clock::now() - start_).count());
  }
  // A paused VM (the control socket's `stop`): real-time mode stands still
  // until resume(), so the guest sees no jump for the time it was stopped.
  // (Deterministic time only advances with retired instructions anyway.)
  void pause() {
    if (det_ || paused_) return;
    frozen_ = now_ns();
    paused_ = true;
  }
  void resume() {
    if (det_ || !paused_) return;
    start_ = std::chrono::steady_clock::now() - std::chrono::nanoseconds(frozen_);
    paused_ = false;
  }
  // Deterministic mode: an idle (halted) CPU jumps time forward to the next event.
  void skip_to(u64 t) {
    if (det_ && t > now_ns()) skipped_ += t - now_ns();
  }
  bool deterministic() const { return det_; }
  // Resume from a saved machine: the clock reads `ns` now (real time: and
  // runs on from there; deterministic: with the restored instruction count,
  // the idle time skipped so far is what makes up the difference).
  void set_now(u64 ns) {
    if (det_) {
      const u64 base = *icount_ * ns_per_insn_;
      skipped_ = ns > base ? ns - base : 0;
      return;
    }
    if (paused_) {
      frozen_ = ns;
      return;
    }
    start_ = std::chrono::steady_clock::now() - std::chrono::nanoseconds(ns);
  }
  u64 ns_per_insn() const { return ns_per_insn_; }
  // TSC ticks: 1 GHz, so the TSC agrees with the PIT by construction.
  u64 tsc() const { return now_ns(); }
  static constexpr u64 kTscHz = 1000000000;

 private:
  bool det_;
  const u64* icount_;
  u64 ns_per_insn_;
  u64 skipped_ = 0;
  bool paused_ = false;
  u64 frozen_ = 0;  // now_ns() while paused
  std::chrono::steady_clock::time_point start_;
};

}  // namespace popek::machine
