// User-mode networking through libslirp: a NAT'ed 10.0.2.0/24 with the host
// at 10.0.2.2 (host loopback reachable there), DNS at 10.0.2.3, DHCP handing
// out 10.0.2.15; outgoing TCP/UDP become host sockets, and host ports can be
// forwarded into the guest. No privileges needed.
#pragma once
#include <memory>
#include <vector>

#include "net/net.h"

struct Slirp;

namespace popek::net {

class SlirpBackend final : public NetBackend {
 public:
  explicit SlirpBackend(const std::vector<HostFwd>& fwds);
  ~SlirpBackend() override;
  std::string describe() const override { return "user (slirp)"; }
  void send(const u8* frame, usize len) override;
  void io_fill(std::vector<pollfd>& fds, int* timeout_ms) override;
  void io_dispatch(const pollfd* fds, usize n) override;

  // libslirp's callbacks (C linkage shims call these).
  struct Timer;
  i64 now_ns() const;
  Timer* timer_new(void (*cb)(void*), void* cb_opaque);
  void timer_free(Timer* t);
  void timer_mod(Timer* t, i64 expire_ms);
  void to_guest(const void* buf, usize len);

 private:
  void run_timers();
  Slirp* slirp_ = nullptr;
  std::vector<std::unique_ptr<Timer>> timers_;
  std::vector<pollfd>* filling_ = nullptr;
  usize fill_base_ = 0;
  u64 *tx_frames_, *rx_frames_;
};

}  // namespace popek::net
