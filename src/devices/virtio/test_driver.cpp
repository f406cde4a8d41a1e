#include "devices/virtio/test_driver.h"

#include <cstring>
#include <stdexcept>

namespace popek::dev::virtio::test {

TestMem::TestMem(u64 size) : ram_(new u8[size]()), size_(size) {}

u8* TestMem::translate(u64 gpa, u64 len) {
  if (gpa > size_ || len > size_ - gpa) return nullptr;
  return ram_.get() + gpa;
}

void TestMem::written(u64 gpa, u64 len) {
  if (gpa > size_ || len > size_ - gpa) written_outside++;
  written_bytes += len;
}

u64 TestMem::read16(u64 gpa) const {
  u16 v;
  std::memcpy(&v, ram_.get() + gpa, 2);
  return v;
}

void TestMem::put(u64 gpa, const void* src, u64 len) { std::memcpy(ram_.get() + gpa, src, len); }

u64 TestDriver::init(u64 want, u16 qsize) {
  dev_.write_status(0);
  dev_.write_status(kStatusAcknowledge);
  dev_.write_status(kStatusAcknowledge | kStatusDriver);
  const u64 f = dev_.offered_features() & want;
  dev_.write_driver_features(0, u32(f));
  dev_.write_driver_features(1, u32(f >> 32));
  dev_.write_status(kStatusAcknowledge | kStatusDriver | kStatusFeaturesOk);
  if (!(dev_.status() & kStatusFeaturesOk)) throw std::runtime_error("features refused");
  const unsigned n = dev_.num_queues();
  sizes_.assign(n, 0);
  next_desc_.assign(n, 0);
  avail_idx_.assign(n, 0);
  used_seen_.assign(n, 0);
  for (unsigned q = 0; q < n; q++) {
    Virtqueue& vq = dev_.queue(q);
    vq.size = qsize ? qsize : vq.max_size();
    sizes_[q] = vq.size;
    std::memset(mem_.at(desc(q)), 0, kRingStride);
    vq.desc_addr = desc(q);
    vq.avail_addr = avail(q);
    vq.used_addr = used(q);
    dev_.enable_queue(q);
  }
  dev_.write_status(kStatusAcknowledge | kStatusDriver | kStatusFeaturesOk | kStatusDriverOk);
  return f;
}

void TestDriver::put_desc(unsigned q, u16 i, u64 addr, u32 len, u16 flags, u16 next) {
  u8 d[16];
  std::memcpy(d, &addr, 8);
  std::memcpy(d + 8, &len, 4);
  std::memcpy(d + 12, &flags, 2);
  std::memcpy(d + 14, &next, 2);
  mem_.put(desc(q) + 16ull * i, d, 16);
}

void TestDriver::publish(unsigned q, u16 head) {
  const u16 slot = avail_idx_[q] % sizes_[q];
  mem_.put(avail(q) + 4 + 2ull * slot, &head, 2);
  avail_idx_[q]++;
  mem_.put(avail(q) + 2, &avail_idx_[q], 2);
}

void TestDriver::set_avail_idx(unsigned q, u16 v) {
  avail_idx_[q] = v;
  mem_.put(avail(q) + 2, &v, 2);
}

u16 TestDriver::add(unsigned q, const std::vector<Seg>& segs, bool indirect) {
  const u16 size = sizes_[q];
  const u16 head = next_desc_[q];
  if (indirect) {
    const u64 table = alloc(16 * segs.size());
    for (usize i = 0; i < segs.size(); i++) {
      u8 d[16];
      const u64 a = segs[i].gpa;
      const u32 l = segs[i].len;
      const u16 fl = u16((segs[i].write ? kDescFWrite : 0) | (i + 1 < segs.size() ? kDescFNext : 0));
      const u16 nx = u16(i + 1);
      std::memcpy(d, &a, 8);
      std::memcpy(d + 8, &l, 4);
      std::memcpy(d + 12, &fl, 2);
      std::memcpy(d + 14, &nx, 2);
      mem_.put(table + 16 * i, d, 16);
    }
    put_desc(q, head, table, u32(16 * segs.size()), kDescFIndirect, 0);
    next_desc_[q] = u16((head + 1) % size);
  } else {
    u16 i = head;
    for (usize k = 0; k < segs.size(); k++) {
      const u16 nx = u16((i + 1) % size);
      put_desc(q, i, segs[k].gpa, segs[k].len,
               u16((segs[k].write ? kDescFWrite : 0) | (k + 1 < segs.size() ? kDescFNext : 0)), nx);
      i = nx;
    }
    next_desc_[q] = i;
  }
  publish(q, head);
  return head;
}

bool TestDriver::take_used(unsigned q, u32* id, u32* len) {
  const u16 idx = u16(mem_.read16(used(q) + 2));
  if (idx == used_seen_[q]) return false;
  const u64 e = used(q) + 4 + 8ull * (used_seen_[q] % sizes_[q]);
  std::memcpy(id, mem_.at(e), 4);
  std::memcpy(len, mem_.at(e + 4), 4);
  used_seen_[q]++;
  return true;
}

u64 TestDriver::alloc(u64 len, u64 align) {
  next_data_ = (next_data_ + align - 1) & ~(align - 1);
  const u64 a = next_data_;
  if (a + len > mem_.size()) throw std::runtime_error("test memory exhausted");
  std::memset(mem_.at(a), 0, len);
  next_data_ += len;
  return a;
}

}  // namespace popek::dev::virtio::test
