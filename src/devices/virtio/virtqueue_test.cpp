// The split virtqueue and the device state machine: chains direct and
// indirect, the used ring, event-index and NO_INTERRUPT rules, feature
// negotiation and reset, and each kind of malformed ring -> NEEDS_RESET.
#include <gtest/gtest.h>

#include <cstring>

#include "devices/virtio/test_driver.h"

using namespace popek;
using namespace popek::dev::virtio;
using namespace popek::dev::virtio::test;

namespace {

// Pops every chain, remembers it, and returns it with writable_len bytes used.
class EchoDevice final : public VirtioDevice {
 public:
  EchoDevice(GuestMemory& m, u16 qsize = 8)
      : VirtioDevice(DeviceType::console, "echo", m, {qsize}) {
    put_config(0, 0x1122334455667788ull, 8);
  }
  std::vector<Chain> seen;
  bool hold = false;  // pop but do not push
  using VirtioDevice::interrupt_queue;

 protected:
  u64 device_features() const override { return bit(3); }
  void on_notify(unsigned q) override {
    Chain c;
    while (pop(q, c)) {
      seen.push_back(c);
      if (!hold) queue(q).push(c.head, u32(c.writable_len));
    }
    queue(q).publish_avail_event();
    if (!hold) interrupt_queue(q);
  }
};

struct Rig {
  TestMem mem{4 << 20};
  EchoDevice dev{mem};
  TestDriver drv{dev, mem};
  int irq_level = 0, irq_edges = 0;
  Rig() {
    dev.set_interrupt_sink([this](bool l) {
      irq_level = l;
      irq_edges += l;
    });
  }
  void expect_broken(const char* what) {
    EXPECT_TRUE(dev.status() & kStatusNeedsReset) << what;
    EXPECT_TRUE(dev.isr() & kIsrConfig) << what;
    EXPECT_FALSE(dev.broken_reason().empty()) << what;
    EXPECT_EQ(mem.written_outside, 0u);
  }
};

}  // namespace

TEST(Virtqueue, DirectChain) {
  Rig r;
  r.drv.init();
  const u64 a = r.drv.alloc(100), b = r.drv.alloc(50), c = r.drv.alloc(200);
  std::memcpy(r.mem.at(a), "hello", 5);
  u16 head = r.drv.add(0, {{a, 100, false}, {b, 50, false}, {c, 200, true}});
  r.drv.kick(0);
  ASSERT_EQ(r.dev.seen.size(), 1u);
  const Chain& ch = r.dev.seen[0];
  EXPECT_EQ(ch.head, head);
  ASSERT_EQ(ch.readable.size(), 2u);
  ASSERT_EQ(ch.writable.size(), 1u);
  EXPECT_EQ(ch.readable_len, 150u);
  EXPECT_EQ(ch.writable_len, 200u);
  EXPECT_EQ(ch.readable[0].host, r.mem.at(a));
  char buf[5];
  EXPECT_EQ(ch.gather(0, buf, 5), 5u);
  EXPECT_EQ(std::memcmp(buf, "hello", 5), 0);
  // gather across the buffer boundary
  u8 big[160];
  EXPECT_EQ(ch.gather(0, big, sizeof big), 150u);
  EXPECT_EQ(ch.scatter(r.mem, 190, "0123456789ab", 12), 10u);
  EXPECT_EQ(std::memcmp(r.mem.at(c + 190), "0123456789", 10), 0);
  u32 id, len;
  ASSERT_TRUE(r.drv.take_used(0, &id, &len));
  EXPECT_EQ(id, head);
  EXPECT_EQ(len, 200u);
  EXPECT_FALSE(r.drv.take_used(0, &id, &len));
  EXPECT_EQ(r.irq_level, 1);
  EXPECT_EQ(r.dev.read_isr(), kIsrQueue);
  EXPECT_EQ(r.irq_level, 0);
  EXPECT_EQ(r.dev.read_isr(), 0);
}

TEST(Virtqueue, IndirectChain) {
  Rig r;
  r.drv.init();
  const u64 a = r.drv.alloc(16), b = r.drv.alloc(512), c = r.drv.alloc(1);
  u16 head = r.drv.add(0, {{a, 16, false}, {b, 512, true}, {c, 1, true}}, /*indirect=*/true);
  r.drv.kick(0);
  ASSERT_EQ(r.dev.seen.size(), 1u);
  EXPECT_EQ(r.dev.seen[0].head, head);
  EXPECT_EQ(r.dev.seen[0].readable_len, 16u);
  EXPECT_EQ(r.dev.seen[0].writable_len, 513u);
  EXPECT_FALSE(r.dev.broken());
}

TEST(Virtqueue, ManyChainsWrapTheRing) {
  Rig r;
  r.drv.init();
  const u64 a = r.drv.alloc(8);
  u32 id, len;
  for (int i = 0; i < 100; i++) {  // queue size 8: the indices wrap many times
    r.drv.add(0, {{a, 8, true}});
    r.drv.kick(0);
    ASSERT_TRUE(r.drv.take_used(0, &id, &len)) << i;
    EXPECT_EQ(len, 8u);
  }
  EXPECT_EQ(r.dev.seen.size(), 100u);
  EXPECT_FALSE(r.dev.broken());
}

TEST(Virtqueue, ZeroLengthBufferAnywhereInRam) {
  Rig r;
  r.drv.init();
  r.drv.add(0, {{r.mem.size(), 0, true}});
  r.drv.kick(0);
  EXPECT_FALSE(r.dev.broken());
  EXPECT_EQ(r.dev.seen.size(), 1u);
}

TEST(Virtqueue, NoInterruptFlag) {
  Rig r;
  r.drv.init(~bit(kFEventIdx));
  const u16 flags = kAvailFNoInterrupt;
  r.mem.put(r.drv.avail(0), &flags, 2);
  r.drv.add(0, {{r.drv.alloc(4), 4, true}});
  r.drv.kick(0);
  EXPECT_EQ(r.irq_edges, 0);
  EXPECT_EQ(r.dev.isr(), 0);
}

TEST(Virtqueue, EventIndex) {
  Rig r;
  ASSERT_TRUE(r.drv.init() & bit(kFEventIdx));
  const u64 a = r.drv.alloc(4);
  const u64 used_event = r.drv.avail(0) + 4 + 2 * 8;
  const u64 avail_event = r.drv.used(0) + 4 + 8 * 8;
  // used_event = 2: interrupt only when the used index passes 2 (i.e. reaches 3).
  u16 ue = 2;
  r.mem.put(used_event, &ue, 2);
  for (int i = 0; i < 3; i++) {
    r.drv.add(0, {{a, 4, true}});
    r.drv.kick(0);
    EXPECT_EQ(r.mem.read16(avail_event), u64(i + 1)) << "avail_event follows the device";
    EXPECT_EQ(r.dev.isr() != 0, i == 2) << i;
  }
  // Not again until used_event moves.
  r.dev.read_isr();
  r.drv.add(0, {{a, 4, true}});
  r.drv.kick(0);
  EXPECT_EQ(r.dev.isr(), 0);
}

TEST(Virtqueue, UnpopGivesChainsBack) {
  Rig r;
  r.drv.init();
  r.dev.hold = true;
  r.drv.add(0, {{r.drv.alloc(4), 4, true}});
  r.drv.add(0, {{r.drv.alloc(4), 4, true}});
  r.drv.kick(0);
  EXPECT_EQ(r.dev.seen.size(), 2u);
  EXPECT_EQ(r.dev.queue(0).pending(), 0);
  r.dev.queue(0).unpop(2);
  EXPECT_EQ(r.dev.queue(0).pending(), 2);
  r.dev.hold = false;
  r.drv.kick(0);
  EXPECT_EQ(r.dev.seen.size(), 4u);
  EXPECT_EQ(r.dev.seen[2].head, r.dev.seen[0].head);
}

TEST(VirtioDevice, FeatureNegotiation) {
  Rig r;
  EchoDevice& d = r.dev;
  EXPECT_EQ(d.offered_features(), bit(3) | bit(kFVersion1) | bit(kFIndirectDesc) | bit(kFEventIdx));
  d.write_status(kStatusAcknowledge | kStatusDriver);
  d.write_driver_features(0, u32(bit(3) | bit(7)));  // bit 7 was not offered
  d.write_driver_features(1, 1);
  d.write_status(kStatusAcknowledge | kStatusDriver | kStatusFeaturesOk);
  EXPECT_FALSE(d.status() & kStatusFeaturesOk);
  // Without VERSION_1 (a legacy driver) the modern device refuses too.
  d.write_driver_features(0, u32(bit(3)));
  d.write_driver_features(1, 0);
  d.write_status(kStatusAcknowledge | kStatusDriver | kStatusFeaturesOk);
  EXPECT_FALSE(d.status() & kStatusFeaturesOk);
  d.write_driver_features(1, 1);
  d.write_status(kStatusAcknowledge | kStatusDriver | kStatusFeaturesOk);
  EXPECT_TRUE(d.status() & kStatusFeaturesOk);
  EXPECT_TRUE(d.negotiated(3));
  EXPECT_TRUE(d.negotiated(kFVersion1));
  // Features are frozen after FEATURES_OK.
  d.write_driver_features(0, 0);
  EXPECT_TRUE(d.negotiated(3));
  EXPECT_EQ(d.read_config(0, 4), 0x55667788u);
  EXPECT_EQ(d.read_config(4, 4), 0x11223344u);
  EXPECT_EQ(d.read_config(6, 4), 0x1122u);  // bytes past the end read 0
}

TEST(VirtioDevice, DriverOkWithoutFeaturesOkIsAnError) {
  Rig r;
  r.dev.write_status(kStatusAcknowledge | kStatusDriver | kStatusDriverOk);
  EXPECT_TRUE(r.dev.broken());
}

TEST(VirtioDevice, ResetRestoresPowerOnState) {
  Rig r;
  r.drv.init();
  r.drv.add(0, {{r.drv.alloc(4), 4, true}});
  r.drv.kick(0);
  EXPECT_EQ(r.irq_level, 1);
  r.dev.write_status(0);
  EXPECT_EQ(r.dev.status(), 0);
  EXPECT_EQ(r.irq_level, 0);
  EXPECT_FALSE(r.dev.queue(0).enabled());
  EXPECT_EQ(r.dev.queue(0).size, 8);
  EXPECT_EQ(r.dev.driver_features(), 0u);
  // Notifications before DRIVER_OK are ignored.
  r.dev.notify(0);
  EXPECT_EQ(r.dev.seen.size(), 1u);
}

// ---- malformed rings: each sets NEEDS_RESET and raises a config interrupt ----

TEST(VirtqueueMalformed, AvailIndexTooFarAhead) {
  Rig r;
  r.drv.init();
  r.drv.set_avail_idx(0, 9);  // 9 > queue size 8
  r.drv.kick(0);
  r.expect_broken("avail index");
  EXPECT_TRUE(r.dev.seen.empty());
}

TEST(VirtqueueMalformed, HeadOutOfRange) {
  Rig r;
  r.drv.init();
  r.drv.publish(0, 8);
  r.drv.kick(0);
  r.expect_broken("head");
}

TEST(VirtqueueMalformed, NextOutOfRange) {
  Rig r;
  r.drv.init();
  r.drv.put_desc(0, 0, r.drv.alloc(4), 4, kDescFNext, 200);
  r.drv.publish(0, 0);
  r.drv.kick(0);
  r.expect_broken("next");
}

TEST(VirtqueueMalformed, Loop) {
  Rig r;
  r.drv.init();
  const u64 a = r.drv.alloc(4);
  r.drv.put_desc(0, 0, a, 4, kDescFNext, 1);
  r.drv.put_desc(0, 1, a, 4, kDescFNext, 0);
  r.drv.publish(0, 0);
  r.drv.kick(0);
  r.expect_broken("loop");
  EXPECT_NE(r.dev.broken_reason().find("loop"), std::string::npos);
}

TEST(VirtqueueMalformed, SelfLoop) {
  Rig r;
  r.drv.init();
  r.drv.put_desc(0, 3, r.drv.alloc(4), 4, kDescFNext | kDescFWrite, 3);
  r.drv.publish(0, 3);
  r.drv.kick(0);
  r.expect_broken("self loop");
}

TEST(VirtqueueMalformed, BufferOutsideRam) {
  for (u64 addr : {u64(4 << 20) - 2, u64(4 << 20), u64(~0ull - 1), u64(1ull << 40)}) {
    Rig r;
    r.drv.init();
    r.drv.add(0, {{addr, 4, true}});
    r.drv.kick(0);
    r.expect_broken("outside RAM");
    EXPECT_TRUE(r.dev.seen.empty());
  }
}

TEST(VirtqueueMalformed, ReadableAfterWritable) {
  Rig r;
  r.drv.init();
  const u64 a = r.drv.alloc(8);
  r.drv.add(0, {{a, 4, true}, {a + 4, 4, false}});
  r.drv.kick(0);
  r.expect_broken("readable after writable");
}

TEST(VirtqueueMalformed, IndirectNotNegotiated) {
  Rig r;
  r.drv.init(~bit(kFIndirectDesc));
  r.drv.add(0, {{r.drv.alloc(4), 4, true}}, /*indirect=*/true);
  r.drv.kick(0);
  r.expect_broken("indirect without the feature");
}

TEST(VirtqueueMalformed, IndirectWithNext) {
  Rig r;
  r.drv.init();
  const u64 t = r.drv.alloc(16);
  r.drv.put_desc(0, 0, t, 16, kDescFIndirect | kDescFNext, 1);
  r.drv.publish(0, 0);
  r.drv.kick(0);
  r.expect_broken("indirect+next");
}

TEST(VirtqueueMalformed, IndirectBadLength) {
  for (u32 len : {0u, 15u, 17u, 16u * 5000}) {
    Rig r;
    r.drv.init();
    r.drv.put_desc(0, 0, r.drv.alloc(16), len, kDescFIndirect, 0);
    r.drv.publish(0, 0);
    r.drv.kick(0);
    r.expect_broken("indirect length");
  }
}

TEST(VirtqueueMalformed, IndirectTableOutsideRam) {
  Rig r;
  r.drv.init();
  r.drv.put_desc(0, 0, r.mem.size() - 16, 32, kDescFIndirect, 0);
  r.drv.publish(0, 0);
  r.drv.kick(0);
  r.expect_broken("indirect table outside RAM");
}

TEST(VirtqueueMalformed, NestedIndirect) {
  Rig r;
  r.drv.init();
  const u64 inner = r.drv.alloc(16), outer = r.drv.alloc(16);
  u8 d[16] = {};
  const u64 a = inner;
  const u32 l = 16;
  const u16 fl = kDescFIndirect;
  std::memcpy(d, &a, 8);
  std::memcpy(d + 8, &l, 4);
  std::memcpy(d + 12, &fl, 2);
  r.mem.put(outer, d, 16);
  r.drv.put_desc(0, 0, outer, 16, kDescFIndirect, 0);
  r.drv.publish(0, 0);
  r.drv.kick(0);
  r.expect_broken("nested indirect");
}

TEST(VirtqueueMalformed, IndirectLoop) {
  Rig r;
  r.drv.init();
  const u64 t = r.drv.alloc(32), a = r.drv.alloc(4);
  u8 d[32] = {};
  const u16 fl = kDescFNext, n0 = 1, n1 = 0;
  const u32 l = 4;
  for (int i = 0; i < 2; i++) {
    std::memcpy(d + 16 * i, &a, 8);
    std::memcpy(d + 16 * i + 8, &l, 4);
    std::memcpy(d + 16 * i + 12, &fl, 2);
  }
  std::memcpy(d + 14, &n0, 2);
  std::memcpy(d + 30, &n1, 2);
  r.mem.put(t, d, 32);
  r.drv.put_desc(0, 0, t, 32, kDescFIndirect, 0);
  r.drv.publish(0, 0);
  r.drv.kick(0);
  r.expect_broken("indirect loop");
}

TEST(VirtqueueMalformed, RingPlacement) {
  struct Case {
    u16 size;
    u64 desc, avail, used;
  };
  const u64 top = 4 << 20;
  for (const Case& c : {Case{8, top - 64, 0x1000, 0x2000},     // descriptors past the end
                        Case{8, 0x1000, top - 4, 0x2000},      // avail past the end
                        Case{8, 0x1000, 0x2000, top - 8},      // used past the end
                        Case{8, 0x1008, 0x2000, 0x3000},       // misaligned descriptors
                        Case{8, 0x1000, 0x2001, 0x3000},       // misaligned avail
                        Case{8, 0x1000, 0x2000, 0x3002},       // misaligned used
                        Case{6, 0x1000, 0x2000, 0x3000},       // not a power of two
                        Case{16, 0x1000, 0x2000, 0x3000}}) {   // above the maximum
    Rig r;
    r.dev.write_status(kStatusAcknowledge | kStatusDriver);
    r.dev.write_driver_features(1, 1);
    r.dev.write_status(kStatusAcknowledge | kStatusDriver | kStatusFeaturesOk);
    Virtqueue& q = r.dev.queue(0);
    q.size = c.size;
    q.desc_addr = c.desc;
    q.avail_addr = c.avail;
    q.used_addr = c.used;
    r.dev.enable_queue(0);
    EXPECT_FALSE(q.enabled());
    EXPECT_TRUE(r.dev.broken()) << c.desc << " " << c.avail << " " << c.used << " " << c.size;
  }
}

TEST(VirtqueueMalformed, ResetRecovers) {
  Rig r;
  r.drv.init();
  r.drv.publish(0, 100);
  r.drv.kick(0);
  ASSERT_TRUE(r.dev.broken());
  // Broken: no more work until the driver resets.
  r.drv.kick(0);
  EXPECT_TRUE(r.dev.seen.empty());
  r.drv.init();
  EXPECT_FALSE(r.dev.broken());
  EXPECT_TRUE(r.dev.broken_reason().empty());
  r.drv.add(0, {{r.drv.alloc(4), 4, true}});
  r.drv.kick(0);
  EXPECT_EQ(r.dev.seen.size(), 1u);
}
