#include <gtest/gtest.h>

#include "base/error.h"
#include "devices/bus/bus.h"

using namespace popek;
using namespace popek::dev;

namespace {
struct Reg : Device {
  u64 last_off = 0, val = 0;
  const char* name() const override { return "reg"; }
  u64 read(u64 off, unsigned) override { last_off = off; return val; }
  void write(u64 off, unsigned, u64 v) override { last_off = off; val = v; }
};
}  // namespace

TEST(Bus, RoutesAndCountsUnclaimed) {
  Bus b("pio");
  Reg r;
  b.map(0x40, 4, &r);
  b.write(0x42, 1, 7);
  EXPECT_EQ(r.last_off, 2u);
  EXPECT_EQ(b.read(0x43, 1), 7u);
  EXPECT_EQ(b.read(0x44, 1), 0xFFu);
  EXPECT_EQ(b.read(0x3F, 2), 0xFFFFu);
  b.write(0x50, 1, 1);
  EXPECT_EQ(b.unclaimed_reads(), 2u);
  EXPECT_EQ(b.unclaimed_writes(), 1u);
}

TEST(Bus, RefusesOverlap) {
  Bus b("pio");
  Reg r1, r2;
  b.map(0x40, 4, &r1);
  EXPECT_THROW(b.map(0x43, 2, &r2), Error);
  EXPECT_THROW(b.map(0x3E, 3, &r2), Error);
  b.map(0x44, 2, &r2);
}

TEST(IrqLine, EdgesReachSink) {
  int rises = 0;
  IrqLine l([&](bool v) { rises += v; });
  l.raise();
  l.raise();
  l.lower();
  l.pulse();
  EXPECT_EQ(rises, 2);
}
