// Motorola MC146818A real-time clock with 128 bytes of CMOS RAM.
//
// Register window (2 bytes): offset 0 = index (write only; bit 7 is the PC's
// NMI mask, remembered but not acted on), offset 1 = data of the selected
// register. Registers 0-9 are the time, alarm and date; 10-13 are A-D; the
// rest (14-127) is plain battery-backed RAM the board fills with set_cmos().
//
// Time is the board's Clock plus a wall-clock base given at construction (so
// deterministic runs fix it): the chip keeps "seconds since 1970 (UTC)" and a
// clock instant, and encodes registers on each read per register B (BCD or
// binary, 12 or 24 hour). Updates happen once per second of clock time; UIP is
// set during the 244 us before each update. Flags in register C (PF, AF, UF,
// IRQF) are computed from the clock when looked at, so an idle RTC costs no
// timer events; as a Timed device it asks for wake-ups only for enabled
// interrupts while IRQF is clear. Register C clears on read, which lowers IRQ.
#pragma once
#include <array>

#include "base/clock.h"
#include "base/types.h"
#include "devices/bus/device.h"

namespace popek::dev {

class Mc146818Rtc : public Device, public Timed {
 public:
  struct Options {
    i64 base_unix_sec = 0;  // what the clock shows at construction
    // CMOS index that holds the century (0 = none; PCs with ACPI use 0x32).
    u8 century_index = 0;
  };

  Mc146818Rtc(Clock& clock, IrqLine& irq, Options opt);

  const char* name() const override { return "rtc"; }
  u64 read(u64 offset, unsigned size) override;
  void write(u64 offset, unsigned size, u64 value) override;
  // The RESET pin: clears PIE/AIE/UIE/SQWE and the flags; time and RAM stay.
  void reset() override;

  u64 next_event_ns() const override;
  void on_time(u64 now_ns) override;

  // CMOS RAM for the board (memory size fields, equipment byte...). Indices of
  // the clock registers (0-13) are refused.
  void set_cmos(u8 index, u8 value);
  u8 cmos(u8 index) const { return cmos_[index & 0x7F]; }
  bool nmi_masked() const { return nmi_masked_; }
  // The time the RTC currently shows, as seconds since 1970 UTC.
  i64 unix_time() const { return current_sec(clock_.now_ns()); }

  // Civil calendar helpers (proleptic Gregorian), public for tests.
  static i64 days_from_civil(i64 y, unsigned m, unsigned d);
  static void civil_from_days(i64 z, i64* y, unsigned* m, unsigned* d);

  struct State {
    static constexpr u32 kVersion = 1;
    u32 version = kVersion;
    std::array<u8, 128> cmos{};  // RAM plus alarm bytes and registers A, B, C
    u8 index = 0;
    bool nmi_masked = false;
    bool frozen = false;  // SET or divider reset: no updates
    i64 sec_base = 0;     // seconds shown at ns_base (or while frozen)
    u64 ns_base = 0;
    u64 div_base = 0;     // when the divider chain last left reset
    u64 last_sync = 0;
  };
  State save() const;
  void restore(const State& s);

 private:
  struct Tm {
    i64 year;
    unsigned mon, mday, hour, min, sec, wday;
  };
  i64 current_sec(u64 now) const;
  static Tm to_tm(i64 sec);
  static i64 from_tm(const Tm& t);
  u8 encode(unsigned v) const;
  unsigned decode(u8 v) const;
  u8 encode_hour(unsigned h) const;
  unsigned decode_hour(u8 v) const;
  u8 read_time_reg(unsigned idx, const Tm& t) const;
  bool alarm_matches(i64 sec) const;
  unsigned periodic_ticks() const;  // period in 32.768 kHz ticks, 0 = off
  bool divider_running() const;
  void sync(u64 now);
  void set_time_field(unsigned idx, u8 v);
  void write_reg(unsigned idx, u8 v);
  u8 read_reg(unsigned idx);
  void update_irq();

  Clock& clock_;
  IrqLine& irq_;
  Options opt_;
  std::array<u8, 128> cmos_{};
  u8 index_ = 0;
  bool nmi_masked_ = false;
  bool frozen_ = false;
  i64 sec_base_ = 0;
  u64 ns_base_ = 0;
  u64 div_base_ = 0;
  u64 last_sync_ = 0;
};

}  // namespace popek::dev
