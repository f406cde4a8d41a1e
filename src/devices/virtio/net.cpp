#include "devices/virtio/net.h"

#include <cstring>

namespace popek::dev::virtio {

namespace {

// Feature bits (5.1.3).
constexpr unsigned kFCsum = 0, kFGuestCsum = 1, kFMac = 5, kFMrgRxbuf = 15, kFStatus = 16;
// Header flags and GSO types (5.1.6).
constexpr u8 kHdrNeedsCsum = 1, kHdrDataValid = 2;
constexpr u8 kGsoNone = 0;
constexpr u16 kLinkUp = 1;
constexpr unsigned kRxQ = 0, kTxQ = 1;

}  // namespace

u16 inet_checksum(const u8* p, usize len, u32 initial) {
  u64 sum = initial;
  usize i = 0;
  for (; i + 1 < len; i += 2) sum += u32(p[i]) << 8 | p[i + 1];
  if (i < len) sum += u32(p[i]) << 8;
  while (sum >> 16) sum = (sum & 0xFFFF) + (sum >> 16);
  return u16(sum);
}

VirtioNet::VirtioNet(std::string name, GuestMemory& mem, std::unique_ptr<net::NetBackend> backend,
                     const u8 mac[6], u16 queue_size)
    : VirtioDevice(DeviceType::net, std::move(name), mem, {queue_size, queue_size}),
      backend_(std::move(backend)) {
  config().assign(12, 0);  // mac[6], status, max_virtqueue_pairs, mtu
  for (unsigned i = 0; i < 6; i++) put_config(i, mac[i], 1);
  put_config(6, kLinkUp, 2);
  put_config(8, 1, 2);
  tx_packets_ = &counter("tx_packets");
  tx_bytes_ = &counter("tx_bytes");
  tx_dropped_ = &counter("tx_dropped");
  rx_packets_ = &counter("rx_packets");
  rx_bytes_ = &counter("rx_bytes");
  rx_dropped_ = &counter("rx_dropped");
  csum_offloads_ = &counter("tx_csum_offloads");
  backend_->set_receiver([this](const u8* f, usize n) { receive(f, n); });
  backend_->set_can_receive([this] { return driver_ok() && backlog_.size() < 64; });
}

VirtioNet::~VirtioNet() {
  backend_->set_receiver(nullptr);
  backend_->set_can_receive(nullptr);
}

u64 VirtioNet::device_features() const {
  return bit(kFCsum) | bit(kFGuestCsum) | bit(kFMac) | bit(kFMrgRxbuf) | bit(kFStatus);
}

void VirtioNet::on_notify(unsigned q) {
  if (q == kTxQ) transmit();
  else if (q == kRxQ) flush_rx();
}

void VirtioNet::transmit() {
  Chain c;
  for (int pass = 0; pass < 2; pass++) {
    while (pop(kTxQ, c)) {
      if (c.readable_len < kHeaderLen) return fail("transmit without a 12-byte virtio-net header");
      const u64 len = c.readable_len - kHeaderLen;
      u8 hdr[kHeaderLen];
      c.gather(0, hdr, kHeaderLen);
      bool ok = len >= 14 && len <= kMaxFrame && hdr[1] == kGsoNone;
      if (ok) {
        txbuf_.resize(len);
        c.gather(kHeaderLen, txbuf_.data(), len);
        if (hdr[0] & kHdrNeedsCsum) {
          u16 start, off;
          std::memcpy(&start, hdr + 6, 2);
          std::memcpy(&off, hdr + 8, 2);
          if (!negotiated(kFCsum) || u64(start) + off + 2 > len) {
            ok = false;
          } else {
            // The field holds the pseudo-header sum; the checksum covers it.
            const u16 sum = inet_checksum(txbuf_.data() + start, len - start);
            const u16 v = u16(~sum);
            txbuf_[start + off] = u8(v >> 8);
            txbuf_[start + off + 1] = u8(v);
            ++*csum_offloads_;
          }
        }
      }
      if (ok) {
        ++*tx_packets_;
        *tx_bytes_ += len;
        backend_->send(txbuf_.data(), len);
      } else {
        ++*tx_dropped_;
      }
      queue(kTxQ).push(c.head, 0);
      if (broken()) return;
    }
    if (pass == 0) queue(kTxQ).publish_avail_event();
  }
  interrupt_queue(kTxQ);
}

void VirtioNet::receive(const u8* frame, usize len) {
  if (!driver_ok() || !queue(kRxQ).enabled() || len > kMaxFrame || backlog_.size() >= kBacklog) {
    ++*rx_dropped_;
    return;
  }
  backlog_.emplace_back(frame, frame + len);
  flush_rx();
}

void VirtioNet::flush_rx() {
  if (!driver_ok()) return;
  bool any = false;
  while (!backlog_.empty() && !broken()) {
    if (!deliver_one(backlog_.front())) break;
    backlog_.pop_front();
    any = true;
  }
  if (backlog_.empty()) queue(kRxQ).publish_avail_event();
  if (any) interrupt_queue(kRxQ);
}

// Places one frame into receive buffers; false if there are not enough
// buffers yet (nothing is consumed then).
bool VirtioNet::deliver_one(const std::vector<u8>& frame) {
  const bool mrg = negotiated(kFMrgRxbuf);
  const u64 total = kHeaderLen + frame.size();
  rxchains_.clear();
  u64 room = 0;
  while (room < total) {
    Chain c;
    if (!pop(kRxQ, c)) {
      if (!broken() && !rxchains_.empty()) queue(kRxQ).unpop(u16(rxchains_.size()));
      return false;
    }
    if (!c.readable.empty()) {
      fail("receive buffer with device-readable descriptors (the device would write into a read-only buffer)");
      return false;
    }
    room += c.writable_len;
    rxchains_.push_back(std::move(c));
    if (!mrg) break;
  }
  if (room < total) {
    // Without mergeable buffers one chain must hold the frame: it does not,
    // so the frame is dropped and the buffer given back unused.
    queue(kRxQ).unpop(u16(rxchains_.size()));
    ++*rx_dropped_;
    return true;
  }
  u8 hdr[kHeaderLen] = {};
  if (negotiated(kFGuestCsum)) hdr[0] = kHdrDataValid;
  const u16 nbuf = u16(rxchains_.size());
  std::memcpy(hdr + 10, &nbuf, 2);
  u64 done = 0;  // bytes of header+frame placed
  for (const Chain& c : rxchains_) {
    u64 n = 0;
    while (n < c.writable_len && done < total) {
      const u64 want = std::min<u64>(c.writable_len - n, total - done);
      u64 k;
      if (done < kHeaderLen) {
        k = c.scatter(mem(), n, hdr + done, std::min<u64>(want, kHeaderLen - done));
      } else {
        k = c.scatter(mem(), n, frame.data() + (done - kHeaderLen), want);
      }
      n += k;
      done += k;
    }
    queue(kRxQ).push(c.head, u32(n));
  }
  ++*rx_packets_;
  *rx_bytes_ += frame.size();
  return true;
}

void VirtioNet::io_fill(std::vector<pollfd>& fds, int* timeout_ms) { backend_->io_fill(fds, timeout_ms); }

void VirtioNet::io_dispatch(const pollfd* fds, usize n) {
  backend_->io_dispatch(fds, n);
  flush_rx();
}

}  // namespace popek::dev::virtio
