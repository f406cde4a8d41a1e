// i8254 tests: the PIT at 0x40-0x43 and port B at 0x61 on a Bus, time moved by
// a ManualClock, the way Linux's i8253 clockevent and TSC calibration use them.
#include <gtest/gtest.h>

#include "base/clock.h"
#include "devices/bus/bus.h"
#include "devices/pc/i8254_pit.h"

using namespace popek;
using namespace popek::dev;

namespace {

struct PitRig {
  ManualClock clock;
  IrqLine irq0;
  I8254Pit pit{clock, irq0};
  SystemControlPortB portb{clock, pit};
  Bus pio{"pio"};
  int rises = 0;

  PitRig() {
    irq0.connect([this](bool v) { rises += v; });
    pio.map(0x40, 4, &pit);
    pio.map(0x61, 1, &portb);
  }
  // Moves time to `t`, delivering every timer event on the way as a board would.
  void run_to(u64 t) {
    for (u64 n = pit.next_event_ns(); n <= t; n = pit.next_event_ns()) {
      clock.set(std::max(n, clock.now_ns()));
      pit.on_time(clock.now_ns());
    }
    clock.set(t);
    pit.on_time(t);
  }
  void program(unsigned ctr, u8 control, u16 count) {
    pio.write(0x43, 1, control);
    pio.write(0x40 + ctr, 1, count & 0xFF);
    pio.write(0x40 + ctr, 1, count >> 8);
  }
  u16 latch_read(unsigned ctr) {
    pio.write(0x43, 1, ctr << 6);
    u16 lo = static_cast<u16>(pio.read(0x40 + ctr, 1));
    return static_cast<u16>(lo | pio.read(0x40 + ctr, 1) << 8);
  }
};

u64 ticks(u64 n) { return I8254Pit::ticks_to_ns(n); }

}  // namespace

TEST(I8254, TickConversionRoundTrips) {
  for (u64 t : {0ull, 1ull, 2ull, 1193181ull, 1193182ull, 123456789ull, 1ull << 40})
    EXPECT_EQ(I8254Pit::ns_to_ticks(I8254Pit::ticks_to_ns(t)), t);
  EXPECT_EQ(I8254Pit::ns_to_ticks(1000000000ull), 1193182u);
}

TEST(I8254, Mode2PeriodicRateAt250Hz) {
  PitRig r;
  const u16 latch = (1193182 + 125) / 250;  // Linux LATCH for HZ=250
  r.program(0, 0x34, latch);
  r.rises = 0;
  r.run_to(1000000000ull);
  EXPECT_NEAR(r.rises, 250, 1);
  r.run_to(10000000000ull);
  EXPECT_NEAR(r.rises, 2500, 1);
}

// A board that looks late (the host descheduled popek for 100 ms) still
// delivers every periodic tick: one at once, the rest a quarter period apart.
TEST(I8254, MissedPeriodicTicksAreCaughtUp) {
  PitRig r;
  const u16 latch = (1193182 + 125) / 250;
  r.program(0, 0x34, latch);
  r.run_to(1000000000ull);
  r.rises = 0;
  // 100 ms pass with no timer event delivered: 25 edges are due.
  r.clock.set(1100000000ull);
  r.pit.on_time(r.clock.now_ns());
  EXPECT_EQ(r.rises, 1);
  // Three catch-up edges per period: within the next 40 ms (10 periods) the
  // 24 others have come too, besides the 10 due then.
  r.run_to(1140000000ull);
  EXPECT_EQ(r.rises, 1 + 24 + 10);
  // From then on, the plain rate.
  r.rises = 0;
  r.run_to(2140000000ull);
  EXPECT_NEAR(r.rises, 250, 1);
  // A saved and restored PIT keeps its backlog.
  r.clock.set(2240000000ull);
  r.pit.on_time(r.clock.now_ns());
  const I8254Pit::State st = r.pit.save();
  EXPECT_EQ(st.backlog, 24u);
  ManualClock c2;
  c2.set(2240000000ull);
  IrqLine l2;
  int rises2 = 0;
  l2.connect([&](bool v) { rises2 += v; });
  I8254Pit p2{c2, l2};
  p2.restore(st);
  rises2 = 0;  // (restoring drives the fresh line to OUT's level)
  for (u64 n = p2.next_event_ns(); n <= 2280000000ull; n = p2.next_event_ns()) {
    c2.set(std::max(n, c2.now_ns()));
    p2.on_time(c2.now_ns());
  }
  EXPECT_EQ(rises2, 24 + 10);
  // A new mode drops what the old one missed; one-shot modes have no backlog.
  r.clock.set(2380000000ull);
  r.pit.on_time(r.clock.now_ns());
  r.program(0, 0x30, 1000);  // mode 0
  EXPECT_EQ(r.pit.save().backlog, 0u);
}

// The backlog is bounded (5 s of ticks): a VM stopped without its clock
// paused does not replay minutes of interrupts.
TEST(I8254, CatchUpIsBounded) {
  PitRig r;
  const u16 latch = (1193182 + 125) / 250;
  r.program(0, 0x34, latch);
  r.run_to(1000000000ull);
  r.clock.set(61000000000ull);
  r.pit.on_time(r.clock.now_ns());
  EXPECT_EQ(r.pit.save().backlog, 5u * 1193182 / latch);
}

TEST(I8254, Mode2CountAndPulse) {
  PitRig r;
  r.program(0, 0x34, 100);
  // Loaded on the next CLK; 100 at tick 1, 1 at tick 100 (OUT low), reload.
  r.run_to(ticks(1));
  EXPECT_EQ(r.latch_read(0), 100u);
  r.run_to(ticks(51));
  EXPECT_EQ(r.latch_read(0), 50u);
  r.run_to(ticks(100));
  EXPECT_EQ(r.latch_read(0), 1u);
  EXPECT_FALSE(r.irq0.level());
  r.rises = 0;
  r.run_to(ticks(101));
  EXPECT_EQ(r.rises, 1);
  EXPECT_TRUE(r.irq0.level());
  EXPECT_EQ(r.latch_read(0), 100u);
}

TEST(I8254, Mode2NewCountAtEndOfPeriod) {
  PitRig r;
  r.program(0, 0x34, 1000);
  r.run_to(ticks(500));
  r.pio.write(0x40, 1, 200 & 0xFF);
  r.pio.write(0x40, 1, 0);
  r.rises = 0;
  r.run_to(ticks(1001));
  EXPECT_EQ(r.rises, 1);  // the old period finished first
  EXPECT_EQ(r.latch_read(0), 200u);
  r.run_to(ticks(1001 + 2000));
  EXPECT_EQ(r.rises, 11);
}

TEST(I8254, Mode0OneShot) {
  PitRig r;
  r.program(0, 0x30, 1000);
  EXPECT_FALSE(r.irq0.level());
  const u64 t = r.pit.next_event_ns();
  EXPECT_EQ(t, ticks(1001));  // OUT rises N+1 CLKs after the write
  r.run_to(t - 1);
  EXPECT_FALSE(r.irq0.level());
  r.run_to(t);
  EXPECT_TRUE(r.irq0.level());
  EXPECT_EQ(r.pit.next_event_ns(), Timed::kNever);
  // The counter keeps decrementing (wraps) but OUT stays high.
  r.run_to(ticks(1001 + 5));
  EXPECT_EQ(r.latch_read(0), 0xFFFBu);
  EXPECT_TRUE(r.irq0.level());
}

TEST(I8254, Mode0FirstByteStopsCount) {
  PitRig r;
  r.program(0, 0x30, 1000);
  r.run_to(ticks(10));
  r.pio.write(0x40, 1, 0x10);
  EXPECT_EQ(r.pit.next_event_ns(), Timed::kNever);
  r.pio.write(0x40, 1, 0x00);
  EXPECT_EQ(r.pit.next_event_ns(), ticks(10 + 1 + 16));
}

TEST(I8254, Mode4OneShotAsLinuxUses) {
  PitRig r;
  r.program(0, 0x38, 500);  // pit_set_oneshot
  EXPECT_TRUE(r.irq0.level());
  r.rises = 0;
  r.run_to(ticks(501));
  EXPECT_FALSE(r.irq0.level());  // strobe low for one CLK
  r.run_to(ticks(502));
  EXPECT_TRUE(r.irq0.level());
  EXPECT_EQ(r.rises, 1);
  r.run_to(ticks(100000));
  EXPECT_EQ(r.rises, 1);
  // Writing a new count re-triggers.
  r.pio.write(0x40, 1, 10);
  r.pio.write(0x40, 1, 0);
  r.run_to(ticks(100000 + 12));
  EXPECT_EQ(r.rises, 2);
}

TEST(I8254, Mode3SquareWave) {
  PitRig r;
  r.program(0, 0x36, 1000);
  r.run_to(ticks(1));
  EXPECT_TRUE(r.irq0.level());
  EXPECT_EQ(r.latch_read(0), 1000u);
  r.run_to(ticks(2));
  EXPECT_EQ(r.latch_read(0), 998u);  // decrements by two
  r.run_to(ticks(501));
  EXPECT_FALSE(r.irq0.level());  // second half
  r.rises = 0;
  r.run_to(ticks(1001));
  EXPECT_TRUE(r.irq0.level());
  EXPECT_EQ(r.rises, 1);
  r.run_to(ticks(1001 + 100 * 1000));
  EXPECT_EQ(r.rises, 101);
}

TEST(I8254, LatchHoldsValueUntilRead) {
  PitRig r;
  r.program(1, 0x74, 0x4000);  // counter 1, mode 2
  r.run_to(ticks(0x101));
  r.pio.write(0x43, 1, 0x40);  // latch counter 1
  r.run_to(ticks(0x2001));
  r.pio.write(0x43, 1, 0x40);  // ignored: the first latch is unread
  EXPECT_EQ(r.pio.read(0x41, 1), 0x00u);
  EXPECT_EQ(r.pio.read(0x41, 1), 0x3Fu);
  // Unlatched: live value.
  EXPECT_EQ(r.pio.read(0x41, 1), 0x00u);
  EXPECT_EQ(r.pio.read(0x41, 1), 0x20u);
}

TEST(I8254, LsbOnlyAndMsbOnlyAccess) {
  PitRig r;
  r.pio.write(0x43, 1, 0x10);  // counter 0, LSB only, mode 0
  r.pio.write(0x40, 1, 0x80);
  r.run_to(ticks(1 + 0x10));
  EXPECT_EQ(r.pio.read(0x40, 1), 0x70u);
  r.pio.write(0x43, 1, 0xA4);  // counter 2, MSB only, mode 2: count 0x0300
  r.pio.write(0x42, 1, 0x03);
  r.pio.write(0x61, 1, 0x01);
  r.run_to(ticks(1 + 0x10 + 1 + 0x100));
  EXPECT_EQ(r.pio.read(0x42, 1), 0x02u);
}

TEST(I8254, ReadBackStatusAndCount) {
  PitRig r;
  r.pio.write(0x43, 1, 0x34);
  // Control word written, no count yet: null count set, OUT high (mode 2).
  r.pio.write(0x43, 1, 0xE2);  // read-back status of counter 0
  EXPECT_EQ(r.pio.read(0x40, 1), 0x80u | 0x40u | 0x34u);
  r.pio.write(0x40, 1, 0x00);
  r.pio.write(0x40, 1, 0x10);
  r.run_to(ticks(0x11));
  r.pio.write(0x43, 1, 0xC2);  // latch status and count
  EXPECT_EQ(r.pio.read(0x40, 1), 0x80u | 0x34u);  // count loaded: null count 0
  EXPECT_EQ(r.pio.read(0x40, 1), 0xF0u);
  EXPECT_EQ(r.pio.read(0x40, 1), 0x0Fu);
  // Mode 0, OUT low while counting.
  r.program(2, 0xB0, 0x1000);
  r.pio.write(0x61, 1, 0x01);
  r.run_to(ticks(0x20));
  r.pio.write(0x43, 1, 0xE8);
  EXPECT_EQ(r.pio.read(0x42, 1), 0x30u);
}

TEST(I8254, BcdCounting) {
  PitRig r;
  r.program(0, 0x31, 0x1000);  // mode 0 BCD, count 1000 decimal
  r.run_to(ticks(1 + 1));
  EXPECT_EQ(r.latch_read(0), 0x0999u);
  r.run_to(ticks(1 + 990));
  EXPECT_EQ(r.latch_read(0), 0x0010u);
  EXPECT_EQ(r.pit.next_event_ns(), ticks(1001));
}

TEST(I8254, Counter2GateAndOut2ThroughPortB) {
  PitRig r;
  EXPECT_EQ(r.pio.read(0x61, 1) & 0x01, 0u);
  r.program(2, 0xB0, 1000);  // mode 0, as pit_calibrate_tsc does
  r.run_to(ticks(500));
  // Gate low: mode 0 does not count.
  EXPECT_EQ(r.latch_read(2), 1000u);
  EXPECT_EQ(r.pio.read(0x61, 1) & 0x20, 0u);
  r.pio.write(0x61, 1, (r.pio.read(0x61, 1) & ~0x02u) | 0x01);
  EXPECT_EQ(r.pio.read(0x61, 1) & 0x03, 0x01u);
  r.run_to(ticks(500 + 400));
  EXPECT_EQ(r.latch_read(2), 600u);
  r.pio.write(0x61, 1, 0x00);  // pause
  r.run_to(ticks(5000));
  EXPECT_EQ(r.latch_read(2), 600u);
  r.pio.write(0x61, 1, 0x01);
  r.run_to(ticks(5000 + 599));
  EXPECT_EQ(r.pio.read(0x61, 1) & 0x20, 0u);
  r.run_to(ticks(5000 + 600));
  EXPECT_EQ(r.pio.read(0x61, 1) & 0x20, 0x20u);
}

TEST(I8254, QuickPitCalibrateSeesMsbFallAt1193182Hz) {
  // quick_pit_calibrate(): mode 0 on counter 2, count 0xFFFF, then polls the
  // MSB with two unlatched reads (LSB then MSB) per sample.
  PitRig r;
  r.pio.write(0x61, 1, 0x01);
  r.pio.write(0x43, 1, 0xB0);
  r.pio.write(0x42, 1, 0xFF);
  r.pio.write(0x42, 1, 0xFF);
  r.clock.advance(1000);
  auto msb = [&] {
    r.pio.read(0x42, 1);
    return static_cast<u8>(r.pio.read(0x42, 1));
  };
  EXPECT_EQ(msb(), 0xFFu);
  // After 10 ms, 11932 ticks have gone: MSB = (0xFFFF - 11932) >> 8.
  r.clock.set(10000000);
  EXPECT_EQ(msb(), (0xFFFF - 11932 + 1) >> 8);
  // The MSB decrements once per 256 ticks (214.5 us).
  u8 prev = msb();
  int changes = 0;
  for (u64 t = 10000000; t < 20000000; t += 1000) {
    r.clock.set(t);
    const u8 m = msb();
    EXPECT_LE(m, prev);
    changes += (m != prev);
    prev = m;
  }
  EXPECT_NEAR(changes, 11932 / 256, 1);
}

TEST(I8254, PortBRefreshToggles) {
  PitRig r;
  const u64 b0 = r.pio.read(0x61, 1) & 0x10;
  r.clock.advance(15085);
  EXPECT_NE(r.pio.read(0x61, 1) & 0x10, b0);
  r.pio.write(0x61, 1, 0xFF);
  EXPECT_EQ(r.pio.read(0x61, 1) & 0xCF, 0x0Fu);  // only bits 0-3 are stored
}

TEST(I8254, SaveRestore) {
  PitRig r;
  r.program(0, 0x34, 1000);
  r.run_to(ticks(300));
  auto s = r.pit.save();
  PitRig q;
  q.clock.set(r.clock.now_ns());
  q.pit.restore(s);
  EXPECT_EQ(q.latch_read(0), r.latch_read(0));
  EXPECT_EQ(q.pit.next_event_ns(), r.pit.next_event_ns());
}

TEST(I8254, Mode1And5AreGateTriggered) {
  PitRig r;
  r.program(2, 0xB2, 100);  // counter 2, mode 1
  r.pio.write(0x61, 1, 0x00);
  EXPECT_TRUE(r.pit.output(2));  // waits for a trigger, OUT high
  r.run_to(ticks(50));
  r.pio.write(0x61, 1, 0x01);  // rising GATE triggers the one-shot
  EXPECT_TRUE(r.pit.output(2));  // loaded on the next CLK
  r.run_to(ticks(51));
  EXPECT_FALSE(r.pit.output(2));
  r.run_to(ticks(51 + 99));
  EXPECT_FALSE(r.pit.output(2));
  r.run_to(ticks(51 + 100));
  EXPECT_TRUE(r.pit.output(2));
  // Retrigger.
  r.pio.write(0x61, 1, 0x00);
  r.pio.write(0x61, 1, 0x01);
  r.run_to(ticks(51 + 102));
  EXPECT_FALSE(r.pit.output(2));
  // Mode 5: strobe after the trigger.
  r.program(2, 0xBA, 10);
  r.pio.write(0x61, 1, 0x00);
  r.pio.write(0x61, 1, 0x01);
  const u64 t0 = I8254Pit::ns_to_ticks(r.clock.now_ns());
  r.run_to(ticks(t0 + 11));
  EXPECT_FALSE(r.pit.output(2));
  r.run_to(ticks(t0 + 12));
  EXPECT_TRUE(r.pit.output(2));
}
