#include "devices/bus/bus.h"

#include "base/error.h"
#include "base/bits.h"

namespace popek::dev {

void Bus::map(u64 base, u64 len, Device* dev) {
  POPEK_CHECK(len > 0 && dev);
  auto it = windows_.lower_bound(base);
  if (it != windows_.end() && it->first < base + len)
    throw Error(name_ + ": window of " + dev->name() + " overlaps " + it->second.dev->name());
  if (it != windows_.begin()) {
    auto p = std::prev(it);
    if (p->first + p->second.len > base)
      throw Error(name_ + ": window of " + dev->name() + " overlaps " + p->second.dev->name());
  }
  windows_[base] = Window{len, dev, &counters_.get(name_ + "." + dev->name())};
}

void Bus::unmap(u64 base) { windows_.erase(base); }

Device* Bus::find(u64 addr, u64* offset) const {
  auto it = windows_.upper_bound(addr);
  if (it == windows_.begin()) return nullptr;
  --it;
  if (addr - it->first >= it->second.len) return nullptr;
  *offset = addr - it->first;
  ++*it->second.count;
  return it->second.dev;
}

u64 Bus::read(u64 addr, unsigned size) {
  u64 off;
  if (Device* d = find(addr, &off)) return d->read(off, size);
  ++unclaimed_reads_;
  if (on_unclaimed) on_unclaimed(addr, size, false, 0);
  return size >= 8 ? ~0ull : ((1ull << (size * 8)) - 1);
}

void Bus::write(u64 addr, unsigned size, u64 value) {
  u64 off;
  if (Device* d = find(addr, &off)) return d->write(off, size, value);
  ++unclaimed_writes_;
  if (on_unclaimed) on_unclaimed(addr, size, true, value);
}

}  // namespace popek::dev
