// Named statistics counters ("what the VMM did"). A Counters set is owned by
// whoever counts (a device, an engine); `--stats` and the control socket walk
// them. Counting is a plain u64 increment: no locks on the hot path.
#pragma once
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "base/types.h"

namespace popek {

struct Counter {
  std::string name;
  u64 value = 0;
};

class Counters {
 public:
  // Returns a stable reference; names are "group.item" by convention.
  u64& get(const std::string& name);
  std::vector<std::pair<std::string, u64>> snapshot() const;
  void reset();

 private:
  std::vector<std::unique_ptr<Counter>> items_;
};

}  // namespace popek
