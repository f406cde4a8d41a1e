// Bump allocation in 2 MiB chunks backed by transparent huge pages, for the
// bt engine's per-translation objects (blocks, callout sites), all freed
// together when the code cache is flushed. A translation allocates a few
// hundred bytes that are written at once: from malloc'ed memory, each new
// 4 KiB page cost a host page fault (expensive under virtualised hosts); a
// huge page costs one per 2 MiB.
#pragma once
#include <sys/mman.h>

#include <cstddef>
#include <cstdint>
#include <vector>

#include "base/big_alloc.h"
#include "base/error.h"
#include "base/types.h"

namespace popek::engine::bt {

class Arena {
 public:
  static constexpr size_t kChunk = size_t(2) << 20;
  static_assert(kChunk == kHugePage, "chunks are huge pages");
  Arena() = default;
  Arena(const Arena&) = delete;
  Arena& operator=(const Arena&) = delete;
  ~Arena() {
    for (u8* c : chunks_) munmap(c, kChunk);
  }
  // n bytes aligned to 16 (n <= kChunk).
  void* alloc(size_t n) {
    n = (n + 15) & ~size_t(15);
    if (cur_ == kNone || used_ + n > kChunk) next();
    void* p = chunks_[cur_] + used_;
    used_ += n;
    return p;
  }
  // Everything allocated is dead: hands the same memory out again.
  void reset() {
    cur_ = kNone;
    used_ = 0;
  }
  size_t bytes_used() const { return cur_ == kNone ? 0 : cur_ * kChunk + used_; }

 private:
  static constexpr size_t kNone = ~size_t(0);
  void next() {
    cur_ = cur_ == kNone ? 0 : cur_ + 1;
    used_ = 0;
    if (cur_ < chunks_.size()) return;
    void* c = map_huge_aligned(kChunk, MAP_NORESERVE);
    if (!c) throw Error("bt: out of memory for translation records");
    chunks_.push_back(static_cast<u8*>(c));
  }
  std::vector<u8*> chunks_;
  size_t cur_ = kNone;  // the chunk handed out from (none yet since the last reset)
  size_t used_ = 0;     // bytes of it used
};

}  // namespace popek::engine::bt
