// User-mode networking through libslirp: a NAT'ed 10.0.2.0/24 with the host
// at 10.0.2.2 (host loopback reachable there), DNS at 10.0.2.3, DHCP handing
// out 10.0.2.15; outgoing TCP/UDP become host sockets, and host ports can be
// forwarded into the guest. No privileges needed.
//
// Saved state (slirp_state_save): libslirp's own format and version, which
// holds the DHCP leases, the IP identification counter and the TCP state of
// guestfwd connections served by a callback (popek has none). NAT'd
// connections (guest to host or Internet) and connections through hostfwd
// are not in it: their host ends are this process's sockets, which another
// process cannot take over. The saved state also lists the guest's NAT'd
// connections (from slirp_connection_info); after a restore, once the card
// can take frames, each gets a segment outside the guest's receive window,
// which makes the guest's TCP answer with an ACK (a duplicate ACK, RFC 793);
// the restored slirp knows no such connection and answers that with a reset
// carrying the guest's own next sequence number, which the guest accepts: its
// application sees ECONNRESET at once instead of waiting for data that will
// never come. Connections the guest accepted through a hostfwd are not listed
// by libslirp with their guest-side peer: those are reset only when the guest
// next sends on them. hostfwd rules come from the command
// line on both sides; their listening sockets move at the switch-over
// (release_host_ports / claim_host_ports).
#pragma once
#include <memory>
#include <vector>

#include "net/net.h"

struct Slirp;

namespace popek::net {

class SlirpBackend final : public NetBackend {
 public:
  // With defer_host_ports the forwards are not bound until claim_host_ports().
  explicit SlirpBackend(const std::vector<HostFwd>& fwds, bool defer_host_ports = false);
  ~SlirpBackend() override;
  std::string describe() const override { return "user (slirp)"; }
  void send(const u8* frame, usize len) override;
  void io_fill(std::vector<pollfd>& fds, int* timeout_ms) override;
  void io_dispatch(const pollfd* fds, usize n) override;
  bool can_save(std::string*) const override { return true; }
  State save_state() const override;
  void load_state(const State& s) override;
  void release_host_ports() override;
  void claim_host_ports() override;
  bool host_ports_held() const override { return ports_held_; }

  // libslirp's callbacks (C linkage shims call these).
  struct Timer;
  i64 now_ns() const;
  Timer* timer_new(void (*cb)(void*), void* cb_opaque);
  void timer_free(Timer* t);
  void timer_mod(Timer* t, i64 expire_ms);
  void to_guest(const void* buf, usize len);

 private:
  void run_timers();
  void remove_forwards(usize n);  // the first n of fwds_
  void send_resets();             // the nudges for dropped_tcp_ (see above)
  std::vector<State::Conn> dropped_tcp_;
  u8 guest_mac_[6] = {};
  bool guest_mac_known_ = false;
  u64* resets_;
  Slirp* slirp_ = nullptr;
  std::vector<HostFwd> fwds_;
  bool ports_held_ = false;
  std::vector<std::unique_ptr<Timer>> timers_;
  std::vector<pollfd>* filling_ = nullptr;
  usize fill_base_ = 0;
  u64 *tx_frames_, *rx_frames_;
};

}  // namespace popek::net
