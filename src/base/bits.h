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

// The same for a size known only at run time (1, 2, 4 or 8 bytes): fixed-size
// copies the compiler inlines, where a memcpy of `size` bytes is a libc call.
inline u64 load_le_n(const void* p, unsigned size) {
  switch (size) {
    case 1: return *static_cast<const u8*>(p);
    case 2: return load_le<u16>(p);
    case 4: return load_le<u32>(p);
    case 8: return load_le<u64>(p);
    default: {
      u64 v = 0;
      std::memcpy(&v, p, size);
      return v;
    }
  }
}
inline void store_le_n(void* p, unsigned size, u64 v) {
  switch (size) {
    case 1: *static_cast<u8*>(p) = u8(v); break;
    case 2: store_le<u16>(p, u16(v)); break;
    case 4: store_le<u32>(p, u32(v)); break;
    case 8: store_le<u64>(p, v); break;
    default: std::memcpy(p, &v, size); break;
  }
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
