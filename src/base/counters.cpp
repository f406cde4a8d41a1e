#include "base/counters.h"

namespace popek {

u64& Counters::get(const std::string& name) {
  for (auto& c : items_)
    if (c->name == name) return c->value;
  items_.push_back(std::make_unique<Counter>(Counter{name, 0}));
  return items_.back()->value;
}

std::vector<std::pair<std::string, u64>> Counters::snapshot() const {
  std::vector<std::pair<std::string, u64>> out;
  out.reserve(items_.size());
  for (auto& c : items_) out.emplace_back(c->name, c->value);
  return out;
}

void Counters::reset() {
  for (auto& c : items_) c->value = 0;
}

}  // namespace popek
