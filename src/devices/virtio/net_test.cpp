// virtio-net against a loopback backend: transmit (header stripped, checksum
// offload), receive (header, mergeable buffers, the backlog while the driver
// has no buffers), and malformed chains.
#include <gtest/gtest.h>

#include <cstring>

#include "devices/virtio/net.h"
#include "devices/virtio/test_driver.h"
#include "snapshot/stream.h"

using namespace popek;
using namespace popek::dev::virtio;
using namespace popek::dev::virtio::test;

namespace {

class FakeBackend final : public net::NetBackend {
 public:
  std::vector<std::vector<u8>> sent;
  std::string describe() const override { return "fake"; }
  void send(const u8* f, usize n) override { sent.emplace_back(f, f + n); }
  void io_fill(std::vector<pollfd>&, int*) override {}
  void io_dispatch(const pollfd*, usize) override {}
  void inject(const std::vector<u8>& f) { deliver(f.data(), f.size()); }
  bool room() const { return can_receive(); }
};

constexpr u8 kMac[6] = {0x02, 0x50, 0x4F, 0x50, 0x45, 0x4B};

struct NetRig {
  TestMem mem{8 << 20};
  FakeBackend* be;
  std::unique_ptr<VirtioNet> net;
  TestDriver* drv;
  std::unique_ptr<TestDriver> drv_;
  explicit NetRig(u64 want = ~0ull) {
    auto b = std::make_unique<FakeBackend>();
    be = b.get();
    net = std::make_unique<VirtioNet>("virtio-net0", mem, std::move(b), kMac, 64);
    drv_ = std::make_unique<TestDriver>(*net, mem);
    drv = drv_.get();
    drv->init(want);
  }
  u64 hdr(u8 flags = 0, u16 csum_start = 0, u16 csum_off = 0) {
    const u64 h = drv->alloc(12);
    mem.at(h)[0] = flags;
    std::memcpy(mem.at(h + 6), &csum_start, 2);
    std::memcpy(mem.at(h + 8), &csum_off, 2);
    return h;
  }
  u64 data(const std::vector<u8>& v) {
    const u64 a = drv->alloc(v.size());
    mem.put(a, v.data(), v.size());
    return a;
  }
};

std::vector<u8> frame(usize n, u8 seed = 1) {
  std::vector<u8> f(n);
  for (usize i = 0; i < n; i++) f[i] = u8(seed + i * 3);
  return f;
}

// An Ethernet + IPv4 + UDP frame with the UDP checksum field holding the
// pseudo-header sum, as Linux leaves it for CHECKSUM_PARTIAL.
std::vector<u8> udp_frame(const std::string& payload, u16* full_csum) {
  std::vector<u8> f(14 + 20 + 8 + payload.size(), 0);
  f[12] = 0x08;
  u8* ip = f.data() + 14;
  ip[0] = 0x45;
  const u16 iplen = u16(20 + 8 + payload.size());
  ip[2] = u8(iplen >> 8);
  ip[3] = u8(iplen);
  ip[8] = 64;
  ip[9] = 17;
  const u8 src[4] = {10, 0, 2, 15}, dst[4] = {10, 0, 2, 2};
  std::memcpy(ip + 12, src, 4);
  std::memcpy(ip + 16, dst, 4);
  u8* udp = ip + 20;
  udp[0] = 0x30;
  udp[1] = 0x39;
  udp[2] = 0x00;
  udp[3] = 0x35;
  const u16 ulen = u16(8 + payload.size());
  udp[4] = u8(ulen >> 8);
  udp[5] = u8(ulen);
  std::memcpy(udp + 8, payload.data(), payload.size());
  // Pseudo-header: src, dst, zero+protocol, UDP length.
  u32 ph = 0;
  ph += (10 << 8 | 0) + (2 << 8 | 15) + (10 << 8 | 0) + (2 << 8 | 2) + 17 + ulen;
  const u16 partial = inet_checksum(nullptr, 0, ph);
  // The complete checksum, computed independently of the device.
  std::vector<u8> tmp(udp, udp + ulen);
  *full_csum = u16(~inet_checksum(tmp.data(), tmp.size(), ph));
  udp[6] = u8(partial >> 8);
  udp[7] = u8(partial);
  return f;
}

}  // namespace

TEST(VirtioNet, ConfigAndFeatures) {
  NetRig r;
  for (unsigned i = 0; i < 6; i++) EXPECT_EQ(r.net->read_config(i, 1), kMac[i]);
  EXPECT_EQ(r.net->read_config(6, 2), 1u);  // link up
  EXPECT_EQ(r.net->num_queues(), 2u);
  EXPECT_TRUE(r.net->negotiated(15));  // MRG_RXBUF
}

TEST(VirtioNet, TransmitStripsHeader) {
  NetRig r;
  auto f = frame(60);
  r.drv->add(1, {{r.hdr(), 12, false}, {r.data(f), 60, false}});
  // Header and frame in one descriptor (Linux's usual layout) works too.
  auto g = frame(100, 9);
  const u64 both = r.drv->alloc(112);
  r.mem.put(both + 12, g.data(), g.size());
  r.drv->add(1, {{both, 112, false}});
  r.drv->kick(1);
  ASSERT_EQ(r.be->sent.size(), 2u);
  EXPECT_EQ(r.be->sent[0], f);
  EXPECT_EQ(r.be->sent[1], g);
  u32 id, len;
  EXPECT_TRUE(r.drv->take_used(1, &id, &len));
  EXPECT_EQ(len, 0u);
  EXPECT_EQ(r.net->isr(), kIsrQueue);
}

TEST(VirtioNet, TransmitChecksumOffload) {
  NetRig r;
  u16 want;
  auto f = udp_frame("hello, checksum", &want);
  r.drv->add(1, {{r.hdr(1, 14 + 20, 6), 12, false}, {r.data(f), u32(f.size()), false}});
  r.drv->kick(1);
  ASSERT_EQ(r.be->sent.size(), 1u);
  const auto& s = r.be->sent[0];
  EXPECT_EQ(u16(s[14 + 20 + 6] << 8 | s[14 + 20 + 7]), want);
  // The whole UDP datagram now sums to 0xFFFF with the pseudo-header.
  u32 ph = (10 << 8 | 0) + (2 << 8 | 15) + (10 << 8 | 0) + (2 << 8 | 2) + 17 + (8 + 15);
  EXPECT_EQ(inet_checksum(s.data() + 34, s.size() - 34, ph), 0xFFFF);
}

TEST(VirtioNet, TransmitBadOffloadIsDropped) {
  NetRig r;
  auto f = frame(60);
  r.drv->add(1, {{r.hdr(1, 58, 4), 12, false}, {r.data(f), 60, false}});  // past the end
  r.drv->kick(1);
  EXPECT_TRUE(r.be->sent.empty());
  EXPECT_FALSE(r.net->broken());
  u32 id, len;
  EXPECT_TRUE(r.drv->take_used(1, &id, &len));
}

TEST(VirtioNet, ReceiveIntoOneBuffer) {
  NetRig r;
  const u64 b = r.drv->alloc(2048);
  r.drv->add(0, {{b, 2048, true}});
  r.drv->kick(0);
  auto f = frame(1514);
  r.be->inject(f);
  u32 id, len;
  ASSERT_TRUE(r.drv->take_used(0, &id, &len));
  EXPECT_EQ(len, 12u + 1514);
  EXPECT_EQ(r.mem.at(b)[0], 2);             // DATA_VALID (GUEST_CSUM negotiated)
  EXPECT_EQ(r.mem.read16(b + 10), 1u);      // num_buffers
  EXPECT_EQ(std::memcmp(r.mem.at(b + 12), f.data(), f.size()), 0);
  EXPECT_EQ(r.net->isr(), kIsrQueue);
}

TEST(VirtioNet, ReceiveMergeable) {
  NetRig r;
  std::vector<u64> bufs;
  for (int i = 0; i < 4; i++) {
    bufs.push_back(r.drv->alloc(500));
    r.drv->add(0, {{bufs.back(), 500, true}});
  }
  r.drv->kick(0);
  auto f = frame(1200);
  r.be->inject(f);
  u32 id, len, total = 0;
  std::vector<u8> got;
  for (int i = 0; i < 3; i++) {
    ASSERT_TRUE(r.drv->take_used(0, &id, &len)) << i;
    got.insert(got.end(), r.mem.at(bufs[id]), r.mem.at(bufs[id]) + len);
    total += len;
  }
  EXPECT_FALSE(r.drv->take_used(0, &id, &len));
  EXPECT_EQ(total, 1212u);
  EXPECT_EQ(got[10], 3);  // num_buffers
  EXPECT_TRUE(std::equal(f.begin(), f.end(), got.begin() + 12));
}

TEST(VirtioNet, BacklogWaitsForBuffers) {
  NetRig r;
  auto f1 = frame(100, 1), f2 = frame(200, 2);
  r.be->inject(f1);
  r.be->inject(f2);
  EXPECT_EQ(r.net->backlog(), 2u);
  EXPECT_EQ(r.net->isr(), 0);
  const u64 b1 = r.drv->alloc(1600), b2 = r.drv->alloc(1600);
  r.drv->add(0, {{b1, 1600, true}});
  r.drv->kick(0);
  EXPECT_EQ(r.net->backlog(), 1u);
  r.drv->add(0, {{b2, 1600, true}});
  r.drv->kick(0);
  EXPECT_EQ(r.net->backlog(), 0u);
  EXPECT_EQ(std::memcmp(r.mem.at(b2 + 12), f2.data(), f2.size()), 0);
}

TEST(VirtioNet, MergeableNeedsEnoughBuffers) {
  NetRig r;
  const u64 b = r.drv->alloc(100);
  r.drv->add(0, {{b, 100, true}});
  r.drv->kick(0);
  r.be->inject(frame(300));
  u32 id, len;
  EXPECT_FALSE(r.drv->take_used(0, &id, &len)) << "a partial frame is never delivered";
  EXPECT_EQ(r.net->backlog(), 1u);
  const u64 c = r.drv->alloc(400);
  r.drv->add(0, {{c, 400, true}});
  r.drv->kick(0);
  ASSERT_TRUE(r.drv->take_used(0, &id, &len));
  EXPECT_EQ(len, 100u);
  ASSERT_TRUE(r.drv->take_used(0, &id, &len));
  EXPECT_EQ(len, 212u);
}

TEST(VirtioNet, WithoutMergeableSmallBufferDropsFrame) {
  NetRig r(~bit(15));
  const u64 b = r.drv->alloc(100), c = r.drv->alloc(2000);
  r.drv->add(0, {{b, 100, true}});
  r.drv->kick(0);
  r.be->inject(frame(300));
  u32 id, len;
  EXPECT_FALSE(r.drv->take_used(0, &id, &len));
  EXPECT_EQ(r.net->backlog(), 0u);
  // The small buffer was given back: the next frame that fits uses it.
  r.be->inject(frame(60));
  ASSERT_TRUE(r.drv->take_used(0, &id, &len));
  EXPECT_EQ(len, 72u);
  (void)c;
}

TEST(VirtioNet, FramesBeforeDriverOkAreDropped) {
  TestMem mem{1 << 20};
  auto b = std::make_unique<FakeBackend>();
  FakeBackend* be = b.get();
  VirtioNet n("virtio-net0", mem, std::move(b), kMac, 64);
  EXPECT_FALSE(be->room());
  be->inject(frame(60));
  EXPECT_EQ(n.backlog(), 0u);
}

TEST(VirtioNet, MalformedChainsNeedReset) {
  {
    NetRig r;  // transmit without header
    r.drv->add(1, {{r.drv->alloc(8), 8, false}});
    r.drv->kick(1);
    EXPECT_TRUE(r.net->broken());
  }
  {
    NetRig r;  // device-readable receive buffer
    r.drv->add(0, {{r.drv->alloc(2000), 2000, false}});
    r.drv->kick(0);
    r.be->inject(frame(60));
    EXPECT_TRUE(r.net->broken());
    EXPECT_TRUE(r.net->isr() & kIsrConfig);
  }
}

TEST(VirtioNet, InetChecksum) {
  // RFC 1071's example: 0001 f203 f4f5 f6f7 sums to ddf2.
  const u8 d[] = {0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7};
  EXPECT_EQ(inet_checksum(d, 8), 0xddf2);
  const u8 odd[] = {0x01};
  EXPECT_EQ(inet_checksum(odd, 1), 0x0100);
}

// Suspend/resume: frames waiting for receive buffers are part of the saved
// state and reach the guest from the restored device.
TEST(VirtioNet, BacklogIsSavedAndRestored) {
  NetRig r;
  auto f1 = frame(100, 1), f2 = frame(300, 2);
  r.be->inject(f1);
  r.be->inject(f2);
  ASSERT_EQ(r.net->backlog(), 2u);
  snap::SectionWriter w;
  r.net->save_state(w);
  snap::Section s;
  s.name = "virtio-net0";
  s.version = r.net->state_version();
  s.parse(w.payload());
  // The same rings (guest RAM), a second device as the destination's.
  VirtioNet copy("virtio-net0", r.mem, std::make_unique<FakeBackend>(), kMac, 64);
  copy.load_state(s);
  s.check_all_read();
  EXPECT_EQ(copy.backlog(), 2u);
  const u64 b1 = r.drv->alloc(1600);
  r.drv->add(0, {{b1, 1600, true}});
  copy.notify(0);
  EXPECT_EQ(copy.backlog(), 1u);
  EXPECT_EQ(std::memcmp(r.mem.at(b1 + 12), f1.data(), f1.size()), 0);
}

TEST(VirtioNet, BacklogCutShortIsRefused) {
  NetRig r;
  r.be->inject(frame(100, 1));
  snap::SectionWriter w;
  r.net->save_state(w);
  std::vector<u8> p = w.payload();
  // The last field is the backlog; drop its last byte and fix its length.
  snap::SectionWriter w2;
  r.net->save_state(w2);
  snap::Section ok;
  ok.name = "virtio-net0";
  ok.version = 2;
  ok.parse(w2.payload());
  auto bl = ok.bytes("rx_backlog");
  ASSERT_EQ(bl.size(), 104u);
  ASSERT_GT(p.size(), 8u);
  p.pop_back();
  u64 len;
  std::memcpy(&len, p.data() + p.size() - 103 - 8, 8);
  ASSERT_EQ(len, 104u);
  len = 103;
  std::memcpy(p.data() + p.size() - 103 - 8, &len, 8);
  snap::Section s;
  s.name = "virtio-net0";
  s.version = 2;
  s.parse(p);
  EXPECT_THROW(r.net->load_state(s), snap::FormatError);
}
