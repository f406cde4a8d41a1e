// virtio-net (virtio 1.x, 5.1) on a popek NetBackend (libslirp or TAP).
//
// Queues: 0 receive, 1 transmit (no control queue, one queue pair).
// Features: MAC, STATUS (link up), MRG_RXBUF (a frame may span several
// receive buffers), CSUM (the guest may leave the transport checksum to the
// device: computed here before the frame goes out) and GUEST_CSUM (received
// frames are marked DATA_VALID: slirp and the host kernel checked them).
// No segmentation offloads (TSO/UFO): every frame is at most one MTU.
//
// Frames for the guest wait in a bounded backlog (4096 frames) while the
// driver has no receive buffers; past that they are dropped (TCP resends).
// Malformed chains — a transmit without its 12-byte header, a receive buffer
// that is device-readable — set DEVICE_NEEDS_RESET.
#pragma once
#include <deque>
#include <memory>
#include <vector>

#include "devices/virtio/virtio_device.h"
#include "net/net.h"

namespace popek::dev::virtio {

class VirtioNet final : public VirtioDevice {
 public:
  static constexpr usize kHeaderLen = 12;  // struct virtio_net_hdr with num_buffers
  static constexpr usize kBacklog = 4096;
  static constexpr usize kMaxFrame = 65535 + 14;

  VirtioNet(std::string name, GuestMemory& mem, std::unique_ptr<net::NetBackend> backend,
            const u8 mac[6], u16 queue_size = 256);
  ~VirtioNet() override;

  net::NetBackend& backend() { return *backend_; }
  usize backlog() const { return backlog_.size(); }

  void io_fill(std::vector<pollfd>& fds, int* timeout_ms) override;
  void io_dispatch(const pollfd* fds, usize n) override;
  // A frame from the backend (public for tests).
  void receive(const u8* frame, usize len);
  // Saved: the common virtio state, and (version 2) the frames waiting for
  // receive buffers. Nothing is in flight on transmit: a notification sends
  // every frame the driver queued before it returns. The backend's state is
  // a section of its own (machine/virtio_board.cpp); a backend that cannot
  // be saved (TAP) makes the device refuse.
  bool can_save(std::string* why) const override {
    if (backend_->can_save(why)) return true;
    *why = name() + ": " + *why;
    return false;
  }
  u32 state_version() const override { return 2; }

 protected:
  void save_extra(snap::SectionWriter& w) const override;
  void load_extra(const snap::Section& r) override;
  u64 device_features() const override;
  void on_notify(unsigned q) override;
  void on_reset() override { backlog_.clear(); }
  void on_driver_ok() override { flush_rx(); }

 private:
  void transmit();
  void flush_rx();
  bool deliver_one(const std::vector<u8>& frame);

  std::unique_ptr<net::NetBackend> backend_;
  std::deque<std::vector<u8>> backlog_;
  std::vector<u8> txbuf_;
  std::vector<Chain> rxchains_;
  u64 *tx_packets_, *tx_bytes_, *tx_dropped_, *rx_packets_, *rx_bytes_, *rx_dropped_,
      *csum_offloads_;
};

// The Internet checksum (RFC 1071) of data, folded, not complemented.
u16 inet_checksum(const u8* data, usize len, u32 initial = 0);

}  // namespace popek::dev::virtio
