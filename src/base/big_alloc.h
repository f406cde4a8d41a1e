// Memory for large tables and buffers (megabytes: soft TLBs, jump caches,
// files read whole), mapped and populated in one system call. On a
// virtualised host each first touch of a fresh 4 KiB page is a trap of
// several microseconds; a table of megabytes set up by memset or read()
// takes thousands of them, and popek's start-up was half page faults.
// Small requests go to operator new.
#pragma once
#include <sys/mman.h>

#include <cstddef>
#include <cstdint>
#include <new>
#include <vector>

namespace popek {

inline constexpr std::size_t kBigAllocMin = std::size_t(256) << 10;
inline constexpr std::size_t kHugePage = std::size_t(2) << 20;

// `len` bytes (a multiple of 4 KiB) of fresh anonymous memory on a 2 MiB
// boundary, advised to use transparent huge pages (one fault per 2 MiB).
// `flags` are added to mmap's (e.g. MAP_NORESERVE). Null if none is left.
inline void* map_huge_aligned(std::size_t len, int flags = 0) {
  const std::size_t span = len + kHugePage;
  void* p = mmap(nullptr, span, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | flags, -1, 0);
  if (p == MAP_FAILED) return nullptr;
  auto* base = static_cast<std::uint8_t*>(p);
  auto* aligned = reinterpret_cast<std::uint8_t*>((reinterpret_cast<std::uintptr_t>(base) + kHugePage - 1) &
                                                  ~std::uintptr_t(kHugePage - 1));
  if (aligned > base) munmap(base, std::size_t(aligned - base));
  const std::size_t tail = span - std::size_t(aligned - base) - len;
  if (tail) munmap(aligned + len, tail);
  madvise(aligned, len, MADV_HUGEPAGE);  // advice only
  return aligned;
}

inline void* big_alloc(std::size_t bytes) {
  if (bytes < kBigAllocMin) return ::operator new(bytes);
  const std::size_t len = (bytes + 4095) & ~std::size_t(4095);
  // Whole huge pages where the size allows.
  void* p = len >= kHugePage ? map_huge_aligned(len)
                             : mmap(nullptr, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (!p || p == MAP_FAILED) throw std::bad_alloc();
  auto* base = static_cast<std::uint8_t*>(p);
#ifdef MADV_POPULATE_WRITE
  madvise(base, len, MADV_POPULATE_WRITE);  // advice only: else faults as touched
#endif
  return base;
}

inline void big_free(void* p, std::size_t bytes) noexcept {
  if (!p) return;
  if (bytes < kBigAllocMin) {
    ::operator delete(p);
    return;
  }
  munmap(p, (bytes + 4095) & ~std::size_t(4095));
}

template <typename T>
struct BigAlloc {
  using value_type = T;
  BigAlloc() = default;
  template <typename U>
  BigAlloc(const BigAlloc<U>&) noexcept {}
  T* allocate(std::size_t n) { return static_cast<T*>(big_alloc(n * sizeof(T))); }
  void deallocate(T* p, std::size_t n) noexcept { big_free(p, n * sizeof(T)); }
  template <typename U>
  bool operator==(const BigAlloc<U>&) const noexcept { return true; }
};

template <typename T>
using big_vector = std::vector<T, BigAlloc<T>>;

}  // namespace popek
