// The split virtqueue (virtio 1.x, 2.7) from the device's side: walks the
// driver's descriptor chains into lists of checked guest buffers, and returns
// them through the used ring, with the event-index notification rules.
//
// Safety: the three ring areas are checked (in guest RAM, aligned) when the
// queue is activated, every buffer and every indirect table is checked when
// its chain is popped, and each descriptor is read once (a copy), so a driver
// that rewrites the ring meanwhile cannot make the device step outside what
// it checked. A malformed ring — the available index running more than the
// queue size ahead, a head or next index out of range, a chain longer than
// the queue or its indirect table (a loop), nested or unnegotiated indirect
// descriptors, INDIRECT together with NEXT, a bad indirect table length, a
// buffer outside guest RAM, a device-readable descriptor after a writable
// one — stops the queue with an error message; the device then reports
// DEVICE_NEEDS_RESET (see VirtioDevice::fail).
#pragma once
#include <string>
#include <vector>

#include "base/types.h"
#include "devices/virtio/guest_memory.h"
#include "devices/virtio/virtio.h"

namespace popek::dev::virtio {

// One guest buffer of a chain; host is null only for a zero-length buffer.
struct Buffer {
  u64 gpa = 0;
  u32 len = 0;
  u8* host = nullptr;
};

// A popped descriptor chain: the device-readable buffers, then the
// device-writable ones.
struct Chain {
  u16 head = 0;
  std::vector<Buffer> readable, writable;
  u64 readable_len = 0, writable_len = 0;

  void clear();
  // Copies up to len bytes of the readable part, starting at byte `offset`;
  // returns how many were copied.
  u64 gather(u64 offset, void* dst, u64 len) const;
  // Copies up to len bytes into the writable part at byte `offset` and tells
  // `mem` what was written; returns how many were copied.
  u64 scatter(GuestMemory& mem, u64 offset, const void* src, u64 len) const;
};

class Virtqueue {
 public:
  Virtqueue(GuestMemory& mem, u16 max_size);

  // ---- registers the transport exposes (meaningful while not enabled) ----
  u16 max_size() const { return max_size_; }
  u16 size = 0;
  u64 desc_addr = 0, avail_addr = 0, used_addr = 0;
  u16 msix_vector = kNoVector;
  bool enabled() const { return enabled_; }

  // Back to the power-on state (size = max_size, addresses zero, disabled).
  void reset();
  // The driver enabled the queue: checks size and ring placement. Returns an
  // empty string on success, else what is wrong (the queue stays disabled).
  std::string enable(bool event_idx, bool indirect);

  // ---- the device side ----
  enum class Pop { empty, ok, error };
  // Takes the next available chain. On Pop::error, error() says why and the
  // queue refuses further work until reset.
  Pop pop(Chain& out);
  // Gives the last n popped chains back (the device could not use them yet).
  void unpop(u16 n = 1);
  // Returns a chain to the driver with the number of bytes written into it.
  void push(u16 head, u32 written);
  // After a batch of pushes: whether the driver asked to be interrupted
  // (VRING_AVAIL_F_NO_INTERRUPT, or used_event with event index).
  bool need_interrupt();
  // With event index, tells the driver to notify for any buffer after the
  // ones popped so far (avail_event = next index to pop).
  void publish_avail_event();
  // Chains the driver made available and the device has not popped.
  u16 pending() const;
  bool failed() const { return !error_.empty(); }
  const std::string& error() const { return error_; }

  u16 last_avail() const { return last_avail_; }
  u16 used_idx() const { return used_idx_; }

  // Suspend/resume: the registers and the device's ring positions. The rings
  // themselves are in guest RAM (saved with it). restore() re-checks the ring
  // placement (as enable() does, without touching the rings) and returns an
  // error message, or an empty string.
  struct State {
    u16 size = 0;
    u64 desc_addr = 0, avail_addr = 0, used_addr = 0;
    u16 msix_vector = kNoVector;
    bool enabled = false, event_idx = false, indirect = false;
    u16 last_avail = 0, used_idx = 0, signalled_used = 0;
    std::string error;
  };
  State save() const;
  std::string restore(const State& s);

 private:
  Pop fail(std::string why);
  u16 load16(const u8* p) const;

  GuestMemory& mem_;
  u16 max_size_;
  bool enabled_ = false;
  bool event_idx_ = false, indirect_ = false;
  u8 *desc_ = nullptr, *avail_ = nullptr, *used_ = nullptr;
  u16 last_avail_ = 0, used_idx_ = 0, signalled_used_ = 0;
  std::string error_;
};

}  // namespace popek::dev::virtio
