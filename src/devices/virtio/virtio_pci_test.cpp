// The modern PCI transport: identity and capabilities in configuration space,
// the common configuration through BAR 0 as Linux's virtio_pci_modern drives
// it, notifications, ISR/INTx, and the PCI configuration access capability.
#include <gtest/gtest.h>

#include <cstring>
#include <map>

#include "devices/virtio/rng.h"
#include "devices/virtio/test_driver.h"
#include "devices/virtio/virtio_pci.h"

using namespace popek;
using namespace popek::dev;
using namespace popek::dev::virtio;
using namespace popek::dev::virtio::test;

namespace {

struct Cap {
  u8 at, type, bar;
  u32 offset, length;
};

struct PciRig {
  TestMem mem{2 << 20};
  VirtioRng rng{"virtio-rng0", mem, 16};
  IrqLine irq;
  int level = 0;
  VirtioPciFunction fn{rng, irq};
  PciRig() { irq.connect([this](bool l) { level = l; }); }

  std::map<u8, Cap> caps() {
    std::map<u8, Cap> out;
    u8 p = u8(fn.config_read(0x34, 1));
    for (int guard = 0; p && guard < 48; guard++) {
      EXPECT_EQ(fn.config_read(p, 1), 0x09u);  // vendor-specific
      Cap c{p, u8(fn.config_read(p + 3, 1)), u8(fn.config_read(p + 4, 1)), fn.config_read(p + 8, 4),
            fn.config_read(p + 12, 4)};
      out[c.type] = c;
      p = u8(fn.config_read(p + 1, 1));
    }
    return out;
  }
  u64 rd(u64 off, unsigned size) { return fn.bar_read(off, size); }
  void wr(u64 off, unsigned size, u64 v) { fn.bar_write(off, size, v); }
};

}  // namespace

TEST(VirtioPci, Identity) {
  PciRig r;
  EXPECT_EQ(r.fn.config_read(0, 2), 0x1AF4u);
  EXPECT_EQ(r.fn.config_read(2, 2), 0x1044u);  // 0x1040 + entropy device
  EXPECT_GE(r.fn.config_read(8, 1), 1u);       // revision >= 1: modern only
  EXPECT_EQ(r.fn.config_read(0x2C, 2), 0x1AF4u);
  EXPECT_TRUE(r.fn.config_read(6, 2) & 0x10);  // capability list
  EXPECT_EQ(r.fn.config_read(0x3D, 1), 1u);    // INTA#
  // BAR 0: 32-bit memory, 16 KiB.
  r.fn.config_write(0x10, 4, 0xFFFFFFFF);
  EXPECT_EQ(r.fn.config_read(0x10, 4), u32(~(VirtioPciFunction::kBarSize - 1)));
}

TEST(VirtioPci, Capabilities) {
  PciRig r;
  auto caps = r.caps();
  ASSERT_TRUE(caps.count(kPciCapCommon));
  ASSERT_TRUE(caps.count(kPciCapNotify));
  ASSERT_TRUE(caps.count(kPciCapIsr));
  ASSERT_TRUE(caps.count(kPciCapPciCfg));
  EXPECT_FALSE(caps.count(kPciCapDevice));  // the entropy device has no configuration
  EXPECT_EQ(caps[kPciCapCommon].offset, 0u);
  EXPECT_GE(caps[kPciCapCommon].length, 0x38u);
  EXPECT_EQ(caps[kPciCapNotify].offset, 0x3000u);
  EXPECT_EQ(r.fn.config_read(caps[kPciCapNotify].at + 16, 4), 4u);  // multiplier
  EXPECT_EQ(caps[kPciCapIsr].offset, 0x1000u);
  for (auto& [t, c] : caps) {
    if (t == kPciCapPciCfg) continue;
    EXPECT_EQ(c.bar, 0);
    EXPECT_LE(u64(c.offset) + c.length, VirtioPciFunction::kBarSize);
  }
}

// Drives the device the way Linux's virtio_pci_modern does, through BAR 0 only.
TEST(VirtioPci, LinuxStyleBringUpAndRequest) {
  PciRig r;
  EXPECT_EQ(r.rd(0x12, 2), 1u);  // num_queues
  r.wr(0x14, 1, kStatusAcknowledge);
  r.wr(0x14, 1, kStatusAcknowledge | kStatusDriver);
  r.wr(0x00, 4, 1);
  const u64 hi = r.rd(0x04, 4);
  r.wr(0x00, 4, 0);
  const u64 lo = r.rd(0x04, 4);
  EXPECT_EQ((hi << 32 | lo), r.rng.offered_features());
  r.wr(0x08, 4, 0);
  r.wr(0x0C, 4, u32(lo));
  r.wr(0x08, 4, 1);
  r.wr(0x0C, 4, u32(hi));
  r.wr(0x14, 1, kStatusAcknowledge | kStatusDriver | kStatusFeaturesOk);
  ASSERT_TRUE(r.rd(0x14, 1) & kStatusFeaturesOk);
  // Queue 0: size, MSI-X vector (stays NO_VECTOR: no MSI-X), rings in halves.
  r.wr(0x16, 2, 0);
  EXPECT_EQ(r.rd(0x18, 2), 16u);
  r.wr(0x18, 2, 8);
  r.wr(0x1A, 2, 0);
  EXPECT_EQ(r.rd(0x1A, 2), kNoVector);
  EXPECT_EQ(r.rd(0x10, 2), kNoVector);
  const u64 desc = 0x10000, avail = 0x11000, used = 0x12000;
  r.wr(0x20, 4, u32(desc));
  r.wr(0x24, 4, 0);
  r.wr(0x28, 8, avail);  // a 64-bit store works too
  r.wr(0x30, 4, u32(used));
  r.wr(0x34, 4, 0);
  EXPECT_EQ(r.rd(0x20, 8), desc);
  EXPECT_EQ(r.rd(0x1E, 2), 0u);  // queue_notify_off
  r.wr(0x1C, 2, 1);
  EXPECT_EQ(r.rd(0x1C, 2), 1u);
  // Enabled queues ignore address writes.
  r.wr(0x20, 4, 0x5000);
  EXPECT_EQ(r.rd(0x20, 4), desc);
  r.wr(0x14, 1, kStatusAcknowledge | kStatusDriver | kStatusFeaturesOk | kStatusDriverOk);
  EXPECT_EQ(r.rd(0x14, 1), 15u);

  // One 32-byte entropy request.
  const u64 buf = 0x20000;
  const u32 len = 32;
  const u16 flags = kDescFWrite, next = 0, head = 0, idx = 1;
  std::memcpy(r.mem.at(desc), &buf, 8);
  std::memcpy(r.mem.at(desc + 8), &len, 4);
  std::memcpy(r.mem.at(desc + 12), &flags, 2);
  std::memcpy(r.mem.at(desc + 14), &next, 2);
  std::memcpy(r.mem.at(avail + 4), &head, 2);
  std::memcpy(r.mem.at(avail + 2), &idx, 2);
  r.wr(0x3000, 2, 0);  // notify queue 0
  EXPECT_EQ(r.mem.read16(used + 2), 1u);
  EXPECT_EQ(r.level, 1);
  // INTx disable in the command register masks the line.
  r.fn.config_write(4, 2, 0x402);
  EXPECT_EQ(r.level, 0);
  EXPECT_TRUE(r.fn.config_read(6, 2) & 0x08);  // interrupt status still pending
  r.fn.config_write(4, 2, 0x002);
  EXPECT_EQ(r.level, 1);
  EXPECT_EQ(r.rd(0x1000, 1), kIsrQueue);
  EXPECT_EQ(r.level, 0);
  EXPECT_EQ(r.rd(0x1000, 1), 0u);
  EXPECT_FALSE(r.fn.config_read(6, 2) & 0x08);

  // Reset through the status register: everything back, selects too.
  r.wr(0x16, 2, 0);
  r.wr(0x14, 1, 0);
  EXPECT_EQ(r.rd(0x14, 1), 0u);
  EXPECT_EQ(r.rd(0x1C, 2), 0u);
  EXPECT_EQ(r.rd(0x18, 2), 16u);
}

TEST(VirtioPci, QueueSelectOutOfRange) {
  PciRig r;
  r.wr(0x16, 2, 5);
  EXPECT_EQ(r.rd(0x18, 2), 0u);  // no such queue: size 0
  r.wr(0x18, 2, 8);
  r.wr(0x1C, 2, 1);
  EXPECT_EQ(r.rd(0x1C, 2), 0u);
  r.wr(0x3000 + 4 * 7, 2, 7);  // notifying a queue that does not exist: ignored
  EXPECT_FALSE(r.rng.broken());
}

TEST(VirtioPci, NeedsResetRaisesConfigInterrupt) {
  PciRig r;
  TestDriver drv(r.rng, r.mem);
  drv.init();
  drv.publish(0, 200);  // head out of range
  r.wr(0x3000, 2, 0);
  EXPECT_TRUE(r.rd(0x14, 1) & kStatusNeedsReset);
  EXPECT_EQ(r.level, 1);
  EXPECT_EQ(r.rd(0x1000, 1), kIsrConfig);
}

TEST(VirtioPci, PciConfigAccessCapability) {
  PciRig r;
  const u8 at = r.caps()[kPciCapPciCfg].at;
  r.fn.config_write(at + 4, 1, 0);      // BAR 0
  r.fn.config_write(at + 8, 4, 0x12);   // num_queues
  r.fn.config_write(at + 12, 4, 2);     // 2 bytes
  EXPECT_EQ(r.fn.config_read(at + 16, 2), 1u);
  // Write device_status through the window.
  r.fn.config_write(at + 8, 4, 0x14);
  r.fn.config_write(at + 12, 4, 1);
  r.fn.config_write(at + 16, 1, kStatusAcknowledge);
  EXPECT_EQ(r.rng.status(), kStatusAcknowledge);
  // A bad length or offset does nothing.
  r.fn.config_write(at + 12, 4, 3);
  r.fn.config_write(at + 16, 1, 0);
  EXPECT_EQ(r.rng.status(), kStatusAcknowledge);
  r.fn.config_write(at + 8, 4, 0x3FFF);
  r.fn.config_write(at + 12, 4, 4);
  r.fn.config_read(at + 16, 4);
}

TEST(VirtioPci, OddAccessSizes) {
  PciRig r;
  // Byte reads of a 32-bit field and reads past the common structure.
  r.wr(0x00, 4, 1);
  EXPECT_EQ(r.rd(0x04, 1), 1u);  // VERSION_1 is bit 32: byte 0 of the high word
  EXPECT_EQ(r.rd(0x37, 8) >> 8, 0u);
  EXPECT_EQ(r.rd(0x800, 4), 0u);
  EXPECT_EQ(r.rd(0x3FFC, 4), 0u);
  r.wr(0x13, 2, 0xFFFF);  // straddles num_queues (read-only) and status
  EXPECT_EQ(r.rd(0x12, 2), 1u);
}
