// Test support: guest RAM as an exactly-sized heap block (so ASan flags any
// access outside it), and a minimal virtio driver that negotiates, lays out
// split rings and posts descriptor chains the way a guest would.
#pragma once
#include <memory>
#include <vector>

#include "devices/virtio/virtio_device.h"

namespace popek::dev::virtio::test {

class TestMem final : public GuestMemory {
 public:
  explicit TestMem(u64 size);
  u8* translate(u64 gpa, u64 len) override;
  void written(u64 gpa, u64 len) override;
  u8* at(u64 gpa) { return ram_.get() + gpa; }
  u64 size() const { return size_; }
  u64 written_bytes = 0;
  u64 written_outside = 0;  // written() for a range outside RAM (a device bug)
  u64 read16(u64 gpa) const;
  void put(u64 gpa, const void* src, u64 len);

 private:
  std::unique_ptr<u8[]> ram_;
  u64 size_;
};

struct Seg {
  u64 gpa;
  u32 len;
  bool write;
};

class TestDriver {
 public:
  // Rings of queue q live at kRingBase + q * kRingStride; data from kDataBase.
  static constexpr u64 kRingBase = 0x10000, kRingStride = 0x10000, kDataBase = 0x100000;

  TestDriver(VirtioDevice& dev, TestMem& mem) : dev_(dev), mem_(mem) {}
  // ACKNOWLEDGE, DRIVER, features (offered & want), FEATURES_OK, queues of
  // `qsize` (0: the device maximum), DRIVER_OK. Returns the features set.
  u64 init(u64 want = ~0ull, u16 qsize = 0);
  // Queue q's ring addresses (as init programs them).
  u64 desc(unsigned q) const { return kRingBase + q * kRingStride; }
  u64 avail(unsigned q) const { return desc(q) + 0x8000; }
  u64 used(unsigned q) const { return desc(q) + 0xC000; }

  // Writes a chain into the descriptor table (indirect: through one table)
  // and publishes it in the available ring. Returns the head index.
  u16 add(unsigned q, const std::vector<Seg>& segs, bool indirect = false);
  void kick(unsigned q) { dev_.notify(q); }
  // The next used element, if any.
  bool take_used(unsigned q, u32* id, u32* len);
  // Bump allocation in the data area (zeroed).
  u64 alloc(u64 len, u64 align = 16);

  // Raw ring access for malformed-ring tests.
  void put_desc(unsigned q, u16 i, u64 addr, u32 len, u16 flags, u16 next);
  void publish(unsigned q, u16 head);
  void set_avail_idx(unsigned q, u16 v);
  u16 qsize(unsigned q) const { return sizes_[q]; }

 private:
  VirtioDevice& dev_;
  TestMem& mem_;
  std::vector<u16> sizes_, next_desc_, avail_idx_, used_seen_;
  u64 next_data_ = kDataBase;
};

}  // namespace popek::dev::virtio::test
