// PCI configuration mechanism #1 through 0xCF8/0xCFC on a Bus, BAR sizing and
// BAR-change notification, absent functions; plus the POST and debug-exit ports.
#include <gtest/gtest.h>

#include <tuple>
#include <vector>

#include "devices/bus/bus.h"
#include "devices/pc/debug_ports.h"
#include "devices/pc/pci_host.h"

using namespace popek;
using namespace popek::dev;

namespace {

struct TestFn : PciFunction {
  TestFn() : PciFunction(0x1AF4, 0x1041, 0x020000, 0x01) {
    declare_bar(0, BarKind::kIo, 0x40);
    declare_bar(1, BarKind::kMem32, 0x1000);
    declare_bar(2, BarKind::kMem64, 0x4000, /*prefetchable=*/true);
    set_interrupt_pin(1);
  }
  const char* name() const override { return "testfn"; }
};

struct PciRig {
  PciBus pci;
  PciHostBridge host{pci};
  TestFn fn;
  Bus pio{"pio"};
  std::vector<std::tuple<unsigned, u64, u64>> changes;

  PciRig() {
    pci.attach(3, 0, &fn);
    pci.on_bar_change = [this](PciFunction&, unsigned bar, u64 o, u64 n) {
      changes.emplace_back(bar, o, n);
    };
    pio.map(0xCF8, 8, &host);
  }
  static u32 addr(unsigned dev, unsigned fn, unsigned reg) {
    return 0x80000000u | dev << 11 | fn << 8 | (reg & 0xFC);
  }
  u32 cfg_read(unsigned dev, unsigned fn, unsigned reg, unsigned size = 4) {
    pio.write(0xCF8, 4, addr(dev, fn, reg));
    return static_cast<u32>(pio.read(0xCFC + (reg & 3), size));
  }
  void cfg_write(unsigned dev, unsigned fn, unsigned reg, u32 v, unsigned size = 4) {
    pio.write(0xCF8, 4, addr(dev, fn, reg));
    pio.write(0xCFC + (reg & 3), size, v);
  }
};

}  // namespace

TEST(Pci, LinuxType1Check) {
  PciRig r;
  r.pio.write(0xCFB, 1, 0x01);  // pci_check_type1 pokes 0xCFB first: no effect
  const u64 saved = r.pio.read(0xCF8, 4);
  r.pio.write(0xCF8, 4, 0x80000000);
  EXPECT_EQ(r.pio.read(0xCF8, 4), 0x80000000u);
  r.pio.write(0xCF8, 4, saved);
  EXPECT_EQ(r.pio.read(0xCF8, 1), 0xFFu);  // byte reads are not CONFIG_ADDRESS
  r.pio.write(0xCF8, 4, 0xFFFFFFFF);
  EXPECT_EQ(r.pio.read(0xCF8, 4), 0x80FFFFFCu);
}

TEST(Pci, HostBridgeIdentity) {
  PciRig r;
  EXPECT_EQ(r.cfg_read(0, 0, 0x00), 0x12378086u);
  EXPECT_EQ(r.cfg_read(0, 0, 0x08) >> 8, 0x060000u);
  EXPECT_EQ(r.cfg_read(0, 0, 0x0A, 2), 0x0600u);
  EXPECT_EQ(r.cfg_read(0, 0, 0x0E, 1), 0x00u);
  // Read-only identity.
  r.cfg_write(0, 0, 0x00, 0);
  EXPECT_EQ(r.cfg_read(0, 0, 0x00), 0x12378086u);
}

TEST(Pci, AbsentFunctionsReadAllOnes) {
  PciRig r;
  EXPECT_EQ(r.cfg_read(5, 0, 0x00), 0xFFFFFFFFu);
  EXPECT_EQ(r.cfg_read(3, 1, 0x00), 0xFFFFFFFFu);
  EXPECT_EQ(r.cfg_read(3, 0, 0x02, 2), 0x1041u);
  EXPECT_EQ(r.cfg_read(3, 0, 0x03, 1), 0x10u);
  // Another bus, and the enable bit clear.
  r.pio.write(0xCF8, 4, 0x80010000u);
  EXPECT_EQ(r.pio.read(0xCFC, 4), 0xFFFFFFFFu);
  r.pio.write(0xCF8, 4, 0x00001800u);
  EXPECT_EQ(r.pio.read(0xCFC, 4), 0xFFFFFFFFu);
  r.cfg_write(7, 0, 0x04, 0x7);  // writes to nobody are dropped
}

TEST(Pci, ByteAndWordDataAccess) {
  PciRig r;
  r.cfg_write(3, 0, 0x3C, 0x0B, 1);  // interrupt line
  EXPECT_EQ(r.cfg_read(3, 0, 0x3C), 0x0000010Bu);  // pin INTA, line 11
  r.cfg_write(3, 0, 0x0C, 0xAA55, 2);
  EXPECT_EQ(r.cfg_read(3, 0, 0x0C, 1), 0x55u);
  EXPECT_EQ(r.cfg_read(3, 0, 0x0D, 1), 0xAAu);
  EXPECT_EQ(r.fn.interrupt_line(), 0x0B);
}

TEST(Pci, BarSizing) {
  PciRig r;
  EXPECT_EQ(r.cfg_read(3, 0, 0x10), 0x1u);  // I/O BAR type bit
  r.cfg_write(3, 0, 0x10, 0xFFFFFFFF);
  EXPECT_EQ(r.cfg_read(3, 0, 0x10), 0xFFFFFFC1u);
  r.cfg_write(3, 0, 0x14, 0xFFFFFFFF);
  EXPECT_EQ(r.cfg_read(3, 0, 0x14), 0xFFFFF000u);
  r.cfg_write(3, 0, 0x18, 0xFFFFFFFF);
  r.cfg_write(3, 0, 0x1C, 0xFFFFFFFF);
  EXPECT_EQ(r.cfg_read(3, 0, 0x18), 0xFFFFC00Cu);  // 64-bit, prefetchable
  EXPECT_EQ(r.cfg_read(3, 0, 0x1C), 0xFFFFFFFFu);
  EXPECT_EQ(r.cfg_read(3, 0, 0x20), 0u);  // undeclared BARs are hardwired 0
  r.cfg_write(3, 0, 0x20, 0xFFFFFFFF);
  EXPECT_EQ(r.cfg_read(3, 0, 0x20), 0u);
  EXPECT_TRUE(r.changes.empty());  // decoding is off: nothing to map
}

TEST(Pci, BarProgrammingNotifiesBoard) {
  PciRig r;
  r.cfg_write(3, 0, 0x10, 0xC000);
  r.cfg_write(3, 0, 0x14, 0xFEB00000);
  r.cfg_write(3, 0, 0x18, 0xFE000000);
  r.cfg_write(3, 0, 0x1C, 0x00000001);
  EXPECT_TRUE(r.changes.empty());
  r.cfg_write(3, 0, 0x04, 0x0003, 2);  // I/O and memory decode on
  constexpr u64 U = PciFunction::kUnmapped;
  ASSERT_EQ(r.changes.size(), 3u);
  EXPECT_EQ(r.changes[0], std::make_tuple(0u, U, 0xC000ull));
  EXPECT_EQ(r.changes[1], std::make_tuple(1u, U, 0xFEB00000ull));
  EXPECT_EQ(r.changes[2], std::make_tuple(2u, U, 0x1FE000000ull));
  r.changes.clear();
  r.cfg_write(3, 0, 0x10, 0xD000);  // move the I/O BAR
  ASSERT_EQ(r.changes.size(), 1u);
  EXPECT_EQ(r.changes[0], std::make_tuple(0u, 0xC000ull, 0xD000ull));
  r.changes.clear();
  // Linux's sizing with decode off: unmapped, then restored.
  r.cfg_write(3, 0, 0x04, 0x0000, 2);
  r.cfg_write(3, 0, 0x14, 0xFFFFFFFF);
  r.cfg_write(3, 0, 0x14, 0xFEB00000);
  r.cfg_write(3, 0, 0x04, 0x0002, 2);
  EXPECT_EQ(r.changes.size(), 5u);  // 3 unmapped, 2 memory BARs back
  EXPECT_EQ(r.fn.bar_address(0), PciFunction::kUnmapped);
  EXPECT_EQ(r.fn.bar_address(1), 0xFEB00000u);
}

TEST(Pci, CommandAndStatusMasks) {
  PciRig r;
  r.cfg_write(3, 0, 0x04, 0xFFFF, 2);
  EXPECT_EQ(r.cfg_read(3, 0, 0x04, 2), 0x0547u);
  // Status error bits are write-1-to-clear and read-only otherwise.
  r.cfg_write(3, 0, 0x06, 0xFFFF, 2);
  EXPECT_EQ(r.cfg_read(3, 0, 0x06, 2), 0x0000u);
}

TEST(Pci, MultifunctionBitAndSaveRestore) {
  PciRig r;
  struct Fn1 : PciFunction {
    Fn1() : PciFunction(0x8086, 0x7010, 0x010180, 0) {}
    const char* name() const override { return "fn1"; }
  } f1;
  r.pci.attach(3, 1, &f1);
  EXPECT_EQ(r.cfg_read(3, 0, 0x0E, 1), 0x80u);
  EXPECT_EQ(r.cfg_read(3, 1, 0x00), 0x70108086u);
  r.cfg_write(3, 0, 0x10, 0xC000);
  r.cfg_write(3, 0, 0x04, 0x1, 2);
  const auto s = r.fn.save();
  TestFn g;
  std::vector<u64> seen;
  g.set_listener([&](PciFunction&, unsigned, u64, u64 n) { seen.push_back(n); });
  g.restore(s);
  EXPECT_EQ(g.bar_address(0), 0xC000u);
  EXPECT_EQ(seen, (std::vector<u64>{0xC000}));
  const auto hs = r.host.save();
  PciBus bus2;
  PciHostBridge h2(bus2);
  h2.restore(hs);
  EXPECT_EQ(h2.config_address(), r.host.config_address());
}

TEST(DebugPorts, PostCodeAndDebugExit) {
  std::vector<u8> codes;
  PostCodePort post([&](u8 v) { codes.push_back(v); });
  u32 status = 0;
  DebugExit dx([&](u32 s) { status = s; });
  DebugExit dx4([&](u32 s) { status = s; }, 4);
  Bus pio("pio");
  pio.map(0x80, 1, &post);
  pio.map(0x501, 1, &dx);
  pio.map(0x504, 4, &dx4);
  pio.write(0x80, 1, 0x12);
  pio.write(0x80, 1, 0x34);
  EXPECT_EQ(post.last(), 0x34);
  EXPECT_EQ(pio.read(0x80, 1), 0x34u);
  EXPECT_EQ(codes, (std::vector<u8>{0x12, 0x34}));
  EXPECT_FALSE(dx.requested());
  pio.write(0x501, 1, 0x10);
  EXPECT_TRUE(dx.requested());
  EXPECT_EQ(status, 0x21u);
  pio.write(0x501, 2, 0x1FF);  // a 1-byte register sees the low byte
  EXPECT_EQ(status, 0x1FFu);
  pio.write(0x504, 4, 0x1234);
  EXPECT_EQ(status, 0x2469u);
  EXPECT_EQ(pio.read(0x501, 1), 0xFFu);
}
