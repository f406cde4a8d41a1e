#include "devices/virtio/rng.h"

#include <sys/random.h>

#include <cerrno>
#include <cstring>

#include "base/error.h"

namespace popek::dev::virtio {

namespace {
// Per buffer at most this much per request (the driver asks for small amounts).
constexpr u32 kMaxPerRequest = 64 * 1024;

void fill_random(u8* p, usize n) {
  while (n) {
    ssize_t k = ::getrandom(p, n, 0);
    if (k < 0) {
      if (errno == EINTR) continue;
      throw Error(std::string("virtio-rng: getrandom failed: ") + std::strerror(errno));
    }
    p += k;
    n -= usize(k);
  }
}
}  // namespace

VirtioRng::VirtioRng(std::string name, GuestMemory& mem, u16 queue_size)
    : VirtioDevice(DeviceType::rng, std::move(name), mem, {queue_size}) {
  requests_ = &counter("requests");
  bytes_ = &counter("bytes");
}

void VirtioRng::on_notify(unsigned q) {
  Chain c;
  for (int pass = 0; pass < 2; pass++) {
    while (pop(q, c)) {
      if (!c.readable.empty())
        return fail("entropy request with device-readable buffers (the device would write into a read-only buffer)");
      ++*requests_;
      u32 total = 0;
      for (const Buffer& b : c.writable) {
        const u32 n = std::min<u32>(b.len, kMaxPerRequest - total);
        if (!n) break;
        fill_random(b.host, n);
        mem().written(b.gpa, n);
        total += n;
      }
      *bytes_ += total;
      queue(q).push(c.head, total);
    }
    if (pass == 0) queue(q).publish_avail_event();
  }
  interrupt_queue(q);
}

}  // namespace popek::dev::virtio
