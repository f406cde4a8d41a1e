// Port I/O and MMIO buses: a sorted map of windows to devices. Accesses that no
// device claims behave as on a PC (reads all ones, writes ignored) and are
// counted, so --stats can show what the guest poked at.
#pragma once
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "base/counters.h"
#include "base/types.h"
#include "devices/bus/device.h"

namespace popek::dev {

class Bus {
 public:
  explicit Bus(std::string name) : name_(std::move(name)) {}
  // Maps [base, base+len) to dev; overlapping windows are a board bug (throws).
  void map(u64 base, u64 len, Device* dev);
  void unmap(u64 base);
  // Returns the device and fills `offset`, or nullptr.
  Device* find(u64 addr, u64* offset) const;
  u64 read(u64 addr, unsigned size);
  void write(u64 addr, unsigned size, u64 value);

  u64 unclaimed_reads() const { return unclaimed_reads_; }
  u64 unclaimed_writes() const { return unclaimed_writes_; }
  // Per-device access counts ("pio.uart" etc.).
  const Counters& counters() const { return counters_; }
  // Optional hook for logging unclaimed accesses (addr, size, is_write, value).
  std::function<void(u64, unsigned, bool, u64)> on_unclaimed;

 private:
  struct Window {
    u64 len;
    Device* dev;
    u64* count;
  };
  std::string name_;
  std::map<u64, Window> windows_;  // keyed by base
  Counters counters_;
  u64 unclaimed_reads_ = 0;
  u64 unclaimed_writes_ = 0;
};

}  // namespace popek::dev
