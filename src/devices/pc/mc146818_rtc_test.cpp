// MC146818 tests through ports 0x70/0x71 on a Bus (in the spirit of QEMU's
// rtc-test), with a fixed wall-clock base and a ManualClock.
#include <gtest/gtest.h>

#include "base/clock.h"
#include "devices/bus/bus.h"
#include "devices/pc/mc146818_rtc.h"

using namespace popek;
using namespace popek::dev;

namespace {

constexpr u64 kSec = 1000000000ull;
// 2024-02-29 23:59:58 UTC, a Thursday.
constexpr i64 kBase = 1709251198;

struct RtcRig {
  ManualClock clock;
  IrqLine irq;
  Mc146818Rtc rtc;
  Bus pio{"pio"};
  int rises = 0;

  explicit RtcRig(i64 base = kBase, u8 century = 0)
      : rtc(clock, irq, Mc146818Rtc::Options{base, century}) {
    irq.connect([this](bool v) { rises += v; });
    pio.map(0x70, 2, &rtc);
  }
  u8 rd(u8 idx) {
    pio.write(0x70, 1, idx);
    return static_cast<u8>(pio.read(0x71, 1));
  }
  void wr(u8 idx, u8 v) {
    pio.write(0x70, 1, idx);
    pio.write(0x71, 1, v);
  }
  // Moves the clock, delivering timer events; the "handler" reads register C
  // on each interrupt as Linux's rtc driver does.
  int run_and_count_irqs(u64 until) {
    int n = 0;
    for (u64 t = rtc.next_event_ns(); t <= until; t = rtc.next_event_ns()) {
      clock.set(t);
      rtc.on_time(t);
      if (irq.level()) {
        ++n;
        rd(0x0C);
      }
    }
    clock.set(until);
    return n;
  }
};

}  // namespace

TEST(Mc146818, CalendarConversions) {
  EXPECT_EQ(Mc146818Rtc::days_from_civil(1970, 1, 1), 0);
  EXPECT_EQ(Mc146818Rtc::days_from_civil(2000, 3, 1), 11017);
  EXPECT_EQ(Mc146818Rtc::days_from_civil(1969, 12, 31), -1);
  for (i64 z : {-1000000ll, -1ll, 0ll, 11016ll, 11017ll, 19782ll, 2932896ll}) {
    i64 y;
    unsigned m, d;
    Mc146818Rtc::civil_from_days(z, &y, &m, &d);
    EXPECT_EQ(Mc146818Rtc::days_from_civil(y, m, d), z);
  }
}

TEST(Mc146818, BcdTwentyFourHourAcrossLeapDay) {
  RtcRig r;
  EXPECT_EQ(r.rd(0x0B), 0x02);  // BCD, 24 h
  EXPECT_EQ(r.rd(0x00), 0x58);
  EXPECT_EQ(r.rd(0x02), 0x59);
  EXPECT_EQ(r.rd(0x04), 0x23);
  EXPECT_EQ(r.rd(0x06), 0x05);  // Thursday (1 = Sunday)
  EXPECT_EQ(r.rd(0x07), 0x29);
  EXPECT_EQ(r.rd(0x08), 0x02);
  EXPECT_EQ(r.rd(0x09), 0x24);
  r.clock.set(2 * kSec);
  EXPECT_EQ(r.rd(0x00), 0x00);
  EXPECT_EQ(r.rd(0x04), 0x00);
  EXPECT_EQ(r.rd(0x07), 0x01);
  EXPECT_EQ(r.rd(0x08), 0x03);
  EXPECT_EQ(r.rd(0x06), 0x06);
  EXPECT_EQ(r.rtc.unix_time(), kBase + 2);
}

TEST(Mc146818, BinaryAndTwelveHour) {
  RtcRig r;
  r.wr(0x0B, 0x04);  // binary, 12 h
  EXPECT_EQ(r.rd(0x04), 0x80 | 11);  // 11 PM
  EXPECT_EQ(r.rd(0x00), 58);
  EXPECT_EQ(r.rd(0x07), 29);
  r.clock.set(2 * kSec);
  EXPECT_EQ(r.rd(0x04), 12);  // 12 AM
  r.wr(0x0B, 0x00);           // BCD, 12 h
  r.clock.set(13 * 3600 * kSec);
  EXPECT_EQ(r.rd(0x04), 0x80 | 0x12);  // 12 PM (noon)
}

TEST(Mc146818, SetTimeWithSetBit) {
  RtcRig r;
  r.clock.set(kSec / 3);
  r.wr(0x0B, 0x82);  // SET, 24 h, BCD
  r.wr(0x00, 0x30);
  r.wr(0x02, 0x15);
  r.wr(0x04, 0x10);
  r.wr(0x07, 0x04);
  r.wr(0x08, 0x07);
  r.wr(0x09, 0x99);
  r.clock.advance(5 * kSec);  // frozen while SET
  EXPECT_EQ(r.rd(0x00), 0x30);
  EXPECT_EQ(r.rd(0x0A) & 0x80, 0);  // no UIP while SET
  r.wr(0x0B, 0x02);
  EXPECT_EQ(r.rd(0x09), 0x99);
  EXPECT_EQ(r.rd(0x06), 0x01);  // 1999-07-04 was a Sunday
  r.clock.advance(kSec - 1);
  EXPECT_EQ(r.rd(0x00), 0x30);
  r.clock.advance(1);  // the first update comes one second after SET is cleared
  EXPECT_EQ(r.rd(0x00), 0x31);
}

TEST(Mc146818, UpdateInProgressWindow) {
  RtcRig r;
  r.clock.set(kSec - 244001);
  EXPECT_EQ(r.rd(0x0A), 0x26);
  r.clock.set(kSec - 244000);
  EXPECT_EQ(r.rd(0x0A), 0xA6);
  EXPECT_EQ(r.rd(0x00), 0x58);  // not yet updated
  r.clock.set(kSec - 1);
  EXPECT_EQ(r.rd(0x0A) & 0x80, 0x80);
  r.clock.set(kSec);
  EXPECT_EQ(r.rd(0x0A) & 0x80, 0);
  EXPECT_EQ(r.rd(0x00), 0x59);
}

TEST(Mc146818, PeriodicInterruptRate) {
  RtcRig r;
  r.wr(0x0B, 0x02 | 0x40);  // PIE
  EXPECT_EQ(r.run_and_count_irqs(kSec), 1024);
  r.wr(0x0A, 0x2F);  // 2 Hz
  EXPECT_EQ(r.run_and_count_irqs(11 * kSec), 20);
  r.wr(0x0A, 0x23);  // 8192 Hz
  EXPECT_NEAR(r.run_and_count_irqs(12 * kSec), 8192, 1);
  r.wr(0x0A, 0x20);  // rate 0: off
  EXPECT_EQ(r.rtc.next_event_ns(), Timed::kNever);
}

TEST(Mc146818, RegisterCClearsOnReadAndLowersIrq) {
  RtcRig r;
  r.wr(0x0B, 0x02 | 0x40);
  r.clock.set(kSec / 100);
  r.rtc.on_time(r.clock.now_ns());
  EXPECT_TRUE(r.irq.level());
  EXPECT_EQ(r.rtc.next_event_ns(), Timed::kNever);  // nothing new until C is read
  const u8 c = r.rd(0x0C);
  EXPECT_EQ(c & 0xC0, 0xC0);  // IRQF | PF
  EXPECT_FALSE(r.irq.level());
  EXPECT_EQ(r.rd(0x0C), 0x00);
  // Flags are set even when their interrupt is disabled; IRQF is not.
  r.wr(0x0B, 0x02);
  r.clock.set(3 * kSec);
  // PF | AF | UF: the alarm registers (all zero) matched 00:00:00.
  EXPECT_EQ(r.rd(0x0C), 0x40 | 0x20 | 0x10);
  EXPECT_FALSE(r.irq.level());
}

TEST(Mc146818, UpdateEndedInterruptEachSecond) {
  RtcRig r;
  r.wr(0x0B, 0x02 | 0x10);  // UIE
  EXPECT_EQ(r.run_and_count_irqs(10 * kSec + 1), 10);
  r.wr(0x0B, 0x82 | 0x10);  // SET clears UIE
  EXPECT_EQ(r.rd(0x0B), 0x82);
}

TEST(Mc146818, AlarmInterrupt) {
  RtcRig r;
  // Alarm at 00:00:03 (5 s after the base).
  r.wr(0x01, 0x03);
  r.wr(0x03, 0x00);
  r.wr(0x05, 0x00);
  r.wr(0x0B, 0x02 | 0x20);
  EXPECT_EQ(r.run_and_count_irqs(5 * kSec - 1), 0);
  EXPECT_EQ(r.run_and_count_irqs(5 * kSec), 1);
  EXPECT_EQ(r.run_and_count_irqs(100 * kSec), 0);
  // "Don't care" hours and minutes: every minute at :03.
  r.wr(0x03, 0xC0);
  r.wr(0x05, 0xFF);
  EXPECT_EQ(r.run_and_count_irqs(100 * kSec + 600 * kSec), 10);
}

TEST(Mc146818, RegisterDIndexAndNmiBit) {
  RtcRig r;
  EXPECT_EQ(r.rd(0x0D), 0x80);
  r.pio.write(0x70, 1, 0x8D);
  EXPECT_TRUE(r.rtc.nmi_masked());
  EXPECT_EQ(r.pio.read(0x71, 1), 0x80u);
  r.pio.write(0x70, 1, 0x0D);
  EXPECT_FALSE(r.rtc.nmi_masked());
  EXPECT_EQ(r.pio.read(0x70, 1), 0xFFu);
}

TEST(Mc146818, CmosRamAndBoardFields) {
  RtcRig r;
  r.rtc.set_cmos(0x34, 0x12);  // e.g. memory above 16 MiB in 64 KiB units
  r.rtc.set_cmos(0x35, 0x34);
  EXPECT_EQ(r.rd(0x34), 0x12);
  EXPECT_EQ(r.rd(0x35), 0x34);
  r.wr(0x40, 0xAB);
  EXPECT_EQ(r.rtc.cmos(0x40), 0xAB);
  r.wr(0x0D, 0x00);  // read only
  EXPECT_EQ(r.rd(0x0D), 0x80);
}

TEST(Mc146818, CenturyRegister) {
  RtcRig r(kBase, 0x32);
  EXPECT_EQ(r.rd(0x32), 0x20);
  r.wr(0x0B, 0x82);
  r.wr(0x32, 0x19);
  r.wr(0x0B, 0x02);
  EXPECT_EQ(r.rtc.unix_time(), kBase - Mc146818Rtc::days_from_civil(2024, 1, 1) * 86400 +
                                   Mc146818Rtc::days_from_civil(1924, 1, 1) * 86400);
}

TEST(Mc146818, DividerResetStopsTime) {
  RtcRig r;
  r.wr(0x0A, 0x70);
  r.clock.set(10 * kSec);
  EXPECT_EQ(r.rd(0x00), 0x58);
  r.wr(0x0A, 0x26);
  r.clock.set(10 * kSec + kSec / 2 - 1);
  EXPECT_EQ(r.rd(0x00), 0x58);
  r.clock.set(10 * kSec + kSec / 2);  // first update half a second later
  EXPECT_EQ(r.rd(0x00), 0x59);
}

TEST(Mc146818, SaveRestore) {
  RtcRig r;
  r.rtc.set_cmos(0x20, 0x55);
  r.wr(0x0B, 0x06);
  r.clock.set(7 * kSec);
  auto s = r.rtc.save();
  RtcRig q(0);
  q.clock.set(7 * kSec);
  q.rtc.restore(s);
  EXPECT_EQ(q.rd(0x00), r.rd(0x00));
  EXPECT_EQ(q.rd(0x20), 0x55);
  EXPECT_EQ(q.rd(0x0B), 0x06);
}
