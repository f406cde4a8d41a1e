// The translation cache's memory: one shared-memory object mapped twice, once
// writable (where the translator emits and patches) and once executable (where
// the host runs it). No page is ever writable and executable at one address
// (W^X by dual mapping).
#pragma once
#include <cstddef>

#include "base/types.h"

namespace popek::engine::bt {

class CodeCache {
 public:
  explicit CodeCache(size_t bytes);
  ~CodeCache();
  CodeCache(const CodeCache&) = delete;
  CodeCache& operator=(const CodeCache&) = delete;

  u8* rw() const { return rw_; }
  const u8* rx() const { return rx_; }
  size_t size() const { return size_; }
  // Host-executable address of a writable-view address and back.
  const u8* to_rx(const u8* w) const { return rx_ + (w - rw_); }
  u8* to_rw(const u8* x) const { return rw_ + (x - rx_); }

  // Bump allocation: `reserve` bytes at the start are never freed (stubs).
  u8* cursor() const { return rw_ + used_; }
  size_t free_bytes() const { return size_ - used_; }
  void advance(size_t n) {
    used_ += (n + 15) & ~size_t(15);
    if (used_ + kPopulateAhead / 2 > populated_) populate();
  }
  void set_reserved() { reserved_ = used_; }
  // Drops every translation (the caller forgets its blocks).
  void reset() { used_ = reserved_; }
  size_t used() const { return used_; }

 private:
  u8* rw_ = nullptr;
  u8* rx_ = nullptr;
  size_t size_ = 0;
  size_t used_ = 0;
  size_t reserved_ = 0;
  // Pages ahead of the cursor are faulted in a chunk at a time (one system
  // call instead of a fault per page in each view).
  static constexpr size_t kPopulateAhead = size_t(2) << 20;
  size_t populated_ = 0;
  void populate();
};

}  // namespace popek::engine::bt
