// How a DMA-capable device reaches guest RAM: through this checked accessor
// only. The board implements it over its guest-physical memory; tests
// implement it over a heap buffer (so ASan sees any stray access).
//
// translate() hands out a host pointer only for a range that lies wholly in
// guest RAM; anything else (MMIO holes, ROM, past the end, wrap-around) gets
// nullptr. A device that writes through a translated pointer must call
// written() for that range afterwards, so code derived from those pages
// (decoded or translated instructions) is dropped, as for a CPU store.
#pragma once
#include <cstring>

#include "base/types.h"

namespace popek::dev::virtio {

class GuestMemory {
 public:
  virtual ~GuestMemory() = default;
  // Host address of [gpa, gpa+len) if all of it is RAM, else nullptr. A
  // zero-length range is valid at any address up to the end of RAM.
  virtual u8* translate(u64 gpa, u64 len) = 0;
  // Tells the board that the device wrote [gpa, gpa+len).
  virtual void written(u64 gpa, u64 len) = 0;

  // Checked copies; false (and nothing copied) if any byte is outside RAM.
  bool read(u64 gpa, void* dst, u64 len) {
    const u8* p = translate(gpa, len);
    if (!p) return false;
    if (len) std::memcpy(dst, p, len);
    return true;
  }
  bool write(u64 gpa, const void* src, u64 len) {
    u8* p = translate(gpa, len);
    if (!p) return false;
    if (len) {
      std::memcpy(p, src, len);
      written(gpa, len);
    }
    return true;
  }
};

}  // namespace popek::dev::virtio
