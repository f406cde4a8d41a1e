#include "net/tap.h"

#include <fcntl.h>
#include <linux/if.h>
#include <linux/if_tun.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "base/error.h"
#include "base/log.h"

namespace popek::net {

TapBackend::TapBackend(const std::string& ifname) : ifname_(ifname) {
  fd_ = ::open("/dev/net/tun", O_RDWR | O_NONBLOCK | O_CLOEXEC);
  if (fd_ < 0)
    throw Error("--netdev tap: cannot open /dev/net/tun: " + std::string(std::strerror(errno)));
  ifreq ifr{};
  ifr.ifr_flags = IFF_TAP | IFF_NO_PI;
  std::strncpy(ifr.ifr_name, ifname.c_str(), IFNAMSIZ - 1);
  if (::ioctl(fd_, TUNSETIFF, &ifr) < 0) {
    int e = errno;
    ::close(fd_);
    throw Error("--netdev tap: cannot attach to TAP interface '" + ifname + "': " + std::strerror(e) +
                (e == EPERM ? " (create it first, e.g. `ip tuntap add " + ifname +
                                  " mode tap user $USER`, or run with CAP_NET_ADMIN)"
                            : ""));
  }
  tx_frames_ = &counters_.get("tx_frames");
  rx_frames_ = &counters_.get("rx_frames");
  tx_dropped_ = &counters_.get("tx_dropped");
}

TapBackend::~TapBackend() {
  if (fd_ >= 0) ::close(fd_);
}

void TapBackend::send(const u8* frame, usize len) {
  for (;;) {
    ssize_t n = ::write(fd_, frame, len);
    if (n >= 0) {
      ++*tx_frames_;
      return;
    }
    if (errno == EINTR) continue;
    // EAGAIN (the interface queue is full) or the interface is down: the frame
    // is lost, as on a wire.
    ++*tx_dropped_;
    return;
  }
}

void TapBackend::io_fill(std::vector<pollfd>& fds, int* timeout_ms) {
  fds.push_back(pollfd{fd_, short(can_receive() ? POLLIN : 0), 0});
}

void TapBackend::io_dispatch(const pollfd* fds, usize n) {
  if (!n || !(fds[0].revents & POLLIN)) return;
  u8 buf[65536 + 64];
  // A bounded batch, so a flood cannot starve the vCPU.
  for (int i = 0; i < 64 && can_receive(); i++) {
    ssize_t k = ::read(fd_, buf, sizeof buf);
    if (k < 0) {
      if (errno == EINTR) continue;
      if (errno != EAGAIN) POPEK_LOG(warn, "tap %s: read: %s", ifname_.c_str(), std::strerror(errno));
      return;
    }
    ++*rx_frames_;
    deliver(buf, usize(k));
  }
}

}  // namespace popek::net
