#include "devices/pc/debug_ports.h"

#include <string>

#include "base/bits.h"
#include "base/error.h"

namespace popek::dev {

namespace {
u64 all_ones(unsigned size) { return size >= 8 ? ~0ull : size_mask(size); }
}  // namespace

u64 PostCodePort::read(u64 offset, unsigned size) {
  return offset == 0 ? last_ : all_ones(size);
}

void PostCodePort::write(u64 offset, unsigned size, u64 value) {
  if (offset != 0) return;
  last_ = static_cast<u8>(value);
  ++writes_;
  if (hook_) hook_(last_);
}

void PostCodePort::restore(const State& s) {
  if (s.version != State::kVersion)
    throw Error("post: unsupported state version " + std::to_string(s.version));
  last_ = s.last;
}

u64 DebugExit::read(u64 offset, unsigned size) { return all_ones(size); }

void DebugExit::write(u64 offset, unsigned size, u64 value) {
  if (offset != 0) return;
  const u32 v = static_cast<u32>(value & all_ones(io_size_));
  status_ = (v << 1) | 1;
  requested_ = true;
  if (on_exit_) on_exit_(status_);
}

}  // namespace popek::dev
