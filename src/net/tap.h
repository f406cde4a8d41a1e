// A TAP interface as the guest's network: frames go to and come from the
// host kernel's tapN device (opened through /dev/net/tun; creating one needs
// CAP_NET_ADMIN, attaching to one the user owns does not).
#pragma once
#include <string>

#include "net/net.h"

namespace popek::net {

class TapBackend final : public NetBackend {
 public:
  explicit TapBackend(const std::string& ifname);
  ~TapBackend() override;
  std::string describe() const override { return "tap " + ifname_; }
  void send(const u8* frame, usize len) override;
  void io_fill(std::vector<pollfd>& fds, int* timeout_ms) override;
  void io_dispatch(const pollfd* fds, usize n) override;
  int fd() const { return fd_; }
  // The host side (the interface, its bridge or routes) is not popek's to
  // move: a VM on a TAP interface is not saved.
  bool can_save(std::string* why) const override {
    *why = "--netdev tap (" + ifname_ + "): a VM on a TAP interface cannot be saved or migrated (its host "
           "side is outside popek); use --netdev user";
    return false;
  }

 private:
  std::string ifname_;
  int fd_ = -1;
  u64 *tx_frames_, *rx_frames_, *tx_dropped_;
};

}  // namespace popek::net
