// Small bit helpers.
#pragma once
#include <cstring>
#include <type_traits>

#include "base/types.h"

namespace popek {

template <typename T>
inline T load_le(const void* p) {
  T v;
  std::memcpy(&v, p, sizeof v);
  return v;
}
template <typename T>
inline void store_le(void* p, T v) {
  std::memcpy(p, &v, sizeof v);
}

// Sign-extend the low `bits` bits of v.
constexpr inline u32 sext(u32 v, unsigned bits) {
  const u32 m = 1u << (bits - 1);
  v &= (bits == 32) ? 0xFFFFFFFFu : ((1u << bits) - 1);
  return (v ^ m) - m;
}
constexpr inline u32 size_mask(unsigned bytes) {
  return bytes == 4 ? 0xFFFFFFFFu : ((1u << (bytes * 8)) - 1);
}
constexpr inline u32 size_sign(unsigned bytes) { return 1u << (bytes * 8 - 1); }
constexpr inline bool bit(u64 v, unsigned n) { return (v >> n) & 1; }

}  // namespace popek
