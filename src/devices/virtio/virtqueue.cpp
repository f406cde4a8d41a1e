#include "devices/virtio/virtqueue.h"

#include <atomic>
#include <cstdio>
#include <cstring>

namespace popek::dev::virtio {

static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "virtio rings are little-endian");

namespace {

// An indirect table may hold at most this many descriptors (64 KiB). The
// specification leaves the bound to the device; Linux's largest tables are
// a few hundred entries.
constexpr u32 kMaxIndirect = 4096;

struct Desc {
  u64 addr;
  u32 len;
  u16 flags, next;
};

Desc load_desc(const u8* p) {
  Desc d;
  std::memcpy(&d.addr, p, 8);
  std::memcpy(&d.len, p + 8, 4);
  std::memcpy(&d.flags, p + 12, 2);
  std::memcpy(&d.next, p + 14, 2);
  return d;
}

std::string hex(u64 v) {
  char b[24];
  std::snprintf(b, sizeof b, "%#llx", (unsigned long long)v);
  return b;
}

}  // namespace

void Chain::clear() {
  head = 0;
  readable.clear();
  writable.clear();
  readable_len = writable_len = 0;
}

u64 Chain::gather(u64 offset, void* dst, u64 len) const {
  u8* out = static_cast<u8*>(dst);
  u64 done = 0;
  for (const Buffer& b : readable) {
    if (done == len) break;
    if (offset >= b.len) {
      offset -= b.len;
      continue;
    }
    u64 n = std::min<u64>(b.len - offset, len - done);
    std::memcpy(out + done, b.host + offset, n);
    done += n;
    offset = 0;
  }
  return done;
}

u64 Chain::scatter(GuestMemory& mem, u64 offset, const void* src, u64 len) const {
  const u8* in = static_cast<const u8*>(src);
  u64 done = 0;
  for (const Buffer& b : writable) {
    if (done == len) break;
    if (offset >= b.len) {
      offset -= b.len;
      continue;
    }
    u64 n = std::min<u64>(b.len - offset, len - done);
    std::memcpy(b.host + offset, in + done, n);
    mem.written(b.gpa + offset, n);
    done += n;
    offset = 0;
  }
  return done;
}

Virtqueue::Virtqueue(GuestMemory& mem, u16 max_size) : mem_(mem), max_size_(max_size) { reset(); }

void Virtqueue::reset() {
  size = max_size_;
  desc_addr = avail_addr = used_addr = 0;
  msix_vector = kNoVector;
  enabled_ = false;
  event_idx_ = indirect_ = false;
  desc_ = avail_ = used_ = nullptr;
  last_avail_ = used_idx_ = signalled_used_ = 0;
  error_.clear();
}

std::string Virtqueue::enable(bool event_idx, bool indirect) {
  if (size == 0 || size > max_size_ || (size & (size - 1)))
    return "queue size " + std::to_string(size) + " is not a power of two up to " +
           std::to_string(max_size_);
  if ((desc_addr & 15) || (avail_addr & 1) || (used_addr & 3))
    return "misaligned ring (descriptors " + hex(desc_addr) + ", available " + hex(avail_addr) +
           ", used " + hex(used_addr) + ")";
  desc_ = mem_.translate(desc_addr, desc_table_bytes(size));
  avail_ = mem_.translate(avail_addr, avail_ring_bytes(size));
  used_ = mem_.translate(used_addr, used_ring_bytes(size));
  if (!desc_ || !avail_ || !used_) {
    desc_ = avail_ = used_ = nullptr;
    return "ring outside guest RAM (descriptors " + hex(desc_addr) + ", available " +
           hex(avail_addr) + ", used " + hex(used_addr) + ", size " + std::to_string(size) + ")";
  }
  event_idx_ = event_idx;
  indirect_ = indirect;
  last_avail_ = used_idx_ = signalled_used_ = 0;
  // The used ring starts empty with no flags (the device never asks the
  // driver to stop notifying other than through avail_event).
  const u8 zero[4] = {};
  std::memcpy(used_, zero, 4);
  mem_.written(used_addr, 4);
  enabled_ = true;
  error_.clear();
  return "";
}

u16 Virtqueue::load16(const u8* p) const {
  u16 v;
  std::memcpy(&v, p, 2);
  return v;
}

u16 Virtqueue::pending() const {
  if (!enabled_ || failed()) return 0;
  return u16(load16(avail_ + 2) - last_avail_);
}

Virtqueue::Pop Virtqueue::fail(std::string why) {
  if (error_.empty()) error_ = std::move(why);
  return Pop::error;
}

Virtqueue::Pop Virtqueue::pop(Chain& c) {
  if (!enabled_) return Pop::empty;
  if (failed()) return Pop::error;
  const u16 avail_idx = load16(avail_ + 2);
  const u16 ahead = u16(avail_idx - last_avail_);
  if (ahead == 0) return Pop::empty;
  if (ahead > size)
    return fail("available index " + std::to_string(avail_idx) + " is " + std::to_string(ahead) +
                " entries ahead of the device, more than the queue size " + std::to_string(size));
  // Ring entries are read after the index that published them.
  std::atomic_thread_fence(std::memory_order_acquire);
  const u16 head = load16(avail_ + 4 + 2 * u32(last_avail_ % size));
  if (head >= size)
    return fail("available ring entry " + std::to_string(last_avail_ % size) + " names descriptor " +
                std::to_string(head) + ", past the queue size " + std::to_string(size));

  c.clear();
  c.head = head;
  const u8* table = desc_;
  u32 table_len = size;
  bool in_indirect = false;
  u32 idx = head, count = 0;
  for (;;) {
    if (++count > table_len)
      return fail(in_indirect ? "indirect descriptor chain longer than its table (a loop?)"
                              : "descriptor chain longer than the queue size (a loop?)");
    const Desc d = load_desc(table + u64(idx) * kDescSize);
    if (d.flags & kDescFIndirect) {
      if (!indirect_) return fail("indirect descriptor, but VIRTIO_F_INDIRECT_DESC was not negotiated");
      if (in_indirect) return fail("indirect descriptor inside an indirect table");
      if (d.flags & kDescFNext) return fail("descriptor with both INDIRECT and NEXT");
      if (d.len == 0 || d.len % kDescSize || d.len / kDescSize > kMaxIndirect)
        return fail("indirect table of " + std::to_string(d.len) + " bytes (a multiple of 16, at most " +
                    std::to_string(kMaxIndirect) + " descriptors)");
      table = mem_.translate(d.addr, d.len);
      if (!table) return fail("indirect table at " + hex(d.addr) + " is outside guest RAM");
      table_len = d.len / kDescSize;
      in_indirect = true;
      idx = 0;
      count = 0;
      continue;
    }
    Buffer b{d.addr, d.len, nullptr};
    if (d.len) {
      b.host = mem_.translate(d.addr, d.len);
      if (!b.host)
        return fail("buffer [" + hex(d.addr) + ", +" + hex(d.len) + ") is outside guest RAM");
    }
    if (d.flags & kDescFWrite) {
      c.writable.push_back(b);
      c.writable_len += d.len;
    } else {
      if (!c.writable.empty()) return fail("device-readable descriptor after a device-writable one");
      c.readable.push_back(b);
      c.readable_len += d.len;
    }
    if (!(d.flags & kDescFNext)) break;
    idx = d.next;
    if (idx >= table_len)
      return fail("next index " + std::to_string(idx) + " is past the end of the " +
                  (in_indirect ? "indirect table" : "descriptor table") + " (" +
                  std::to_string(table_len) + " entries)");
  }
  last_avail_++;
  return Pop::ok;
}

void Virtqueue::unpop(u16 n) { last_avail_ = u16(last_avail_ - n); }

void Virtqueue::push(u16 head, u32 written) {
  const u32 slot = used_idx_ % size;
  u8* e = used_ + 4 + u64(slot) * kUsedElemSize;
  const u32 id = head;
  std::memcpy(e, &id, 4);
  std::memcpy(e + 4, &written, 4);
  mem_.written(used_addr + 4 + u64(slot) * kUsedElemSize, kUsedElemSize);
  // The element is visible before the index that publishes it.
  std::atomic_thread_fence(std::memory_order_release);
  used_idx_++;
  std::memcpy(used_ + 2, &used_idx_, 2);
  mem_.written(used_addr + 2, 2);
}

bool Virtqueue::need_interrupt() {
  if (!enabled_) return false;
  const u16 old = signalled_used_, now = used_idx_;
  signalled_used_ = now;
  if (old == now) return false;
  std::atomic_thread_fence(std::memory_order_seq_cst);
  if (event_idx_) {
    // Interrupt if used_event lies in (old, now]: the driver wants to hear
    // when the used index passes it.
    const u16 used_event = load16(avail_ + 4 + 2 * u32(size));
    return u16(now - used_event - 1) < u16(now - old);
  }
  return !(load16(avail_) & kAvailFNoInterrupt);
}

void Virtqueue::publish_avail_event() {
  if (!enabled_ || !event_idx_) return;
  std::memcpy(used_ + 4 + u64(size) * kUsedElemSize, &last_avail_, 2);
  mem_.written(used_addr + 4 + u64(size) * kUsedElemSize, 2);
  std::atomic_thread_fence(std::memory_order_seq_cst);
}

}  // namespace popek::dev::virtio
