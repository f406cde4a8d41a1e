// Intel 8254 programmable interval timer: three 16-bit down counters clocked
// at 1.193182 MHz, derived from the board's Clock (never the host clock).
//
// Register window (4 bytes): offsets 0..2 = counters 0..2, offset 3 = control
// word (write only; reads return all ones).
//
// The counters are not stepped; each remembers the clock tick at which it was
// (re)loaded and computes its count and OUT level from the current tick, so
// reading the count is exact at any clock resolution and costs no timer events.
// Only counter 0's OUT drives an IrqLine (given at construction); the board
// reads counter 2's OUT and drives its GATE through set_gate()/output() (on a
// PC via port 0x61, see SystemControlPortB).
//
// Modes 0-5 follow the datasheet: a written count is loaded on the next CLK
// pulse (so mode 0 with count N raises OUT N+1 ticks after the write); in
// modes 2 and 3 a new count written while counting takes effect at the end of
// the current period (the datasheet lets mode 3 switch at a half-period; the
// full period keeps the square wave clean and is what drivers wait for); a
// count of 0 means 65536 (binary) or 10000 (BCD). Mode 3 with an odd count is
// high for (N+1)/2 and low for (N-1)/2 ticks.
#pragma once
#include "base/clock.h"
#include "base/types.h"
#include "devices/bus/device.h"

namespace popek::dev {

class I8254Pit : public Device, public Timed {
 public:
  static constexpr u64 kHz = 1193182;

  I8254Pit(Clock& clock, IrqLine& out0);

  const char* name() const override { return "pit"; }
  u64 read(u64 offset, unsigned size) override;
  void write(u64 offset, unsigned size, u64 value) override;
  void reset() override;

  // Timed: the next rising edge of OUT0 (what the PIC latches).
  u64 next_event_ns() const override;
  void on_time(u64 now_ns) override;

  // GATE input of counter `c` (counters 0 and 1 are tied high on a PC).
  void set_gate(unsigned c, bool level);
  bool gate(unsigned c) const { return ctr_[c].gate; }
  // OUT level of counter `c` now.
  bool output(unsigned c) const;
  // Current count of counter `c` (what an unlatched read would return).
  u16 count(unsigned c) const;

  // Converts between the clock's nanoseconds and PIT ticks.
  static u64 ns_to_ticks(u64 ns);
  static u64 ticks_to_ns(u64 ticks);  // first ns at which tick `ticks` has happened

  struct CounterState {
    u8 control = 0;      // RW/mode/BCD bits as written (status byte bits 5..0)
    u32 initial = 0;     // count register, 1..65536 (or 1..10000 BCD); 0 = none
    u32 pending = 0;     // count written but not yet loaded (modes 2/3), 0 = none
    u64 load_tick = 0;   // tick at which counting (re)started
    u64 pending_tick = 0;  // tick at which `pending` becomes `initial`
    u64 frozen = 0;      // elapsed ticks when the gate paused counting
    bool armed = false;  // a count is loaded and counting is defined
    bool gate = true;
    bool paused = false;   // gate low in a mode where that stops counting
    bool out_static = true;  // OUT level when not armed
    bool write_msb = false, read_msb = false;  // LSB/MSB flip-flops
    u8 write_lsb = 0;
    bool latched = false, status_latched = false;
    u16 latch = 0;
    u8 status = 0;
    bool null_count = true;
  };
  struct State {
    static constexpr u32 kVersion = 1;
    u32 version = kVersion;
    CounterState ctr[3];
    u64 last_irq_tick = 0;
    // Lost-tick catch-up (fields absent in older streams read as 0).
    u64 backlog = 0;
    u64 catchup_tick = 0;
  };
  State save() const;
  void restore(const State& s);

 private:
  using Counter = CounterState;
  u64 tick() const { return ns_to_ticks(clock_.now_ns()); }
  // Applies a pending reload whose time has come.
  void settle(Counter& c, u64 t) const;
  u32 modulus(const Counter& c) const { return (c.control & 1) ? 10000 : 65536; }
  unsigned mode(const Counter& c) const;
  // Elapsed ticks since counting began (handles gate pauses); -1 before load.
  i64 elapsed(const Counter& c, u64 t) const;
  u32 count_at(const Counter& c, u64 t) const;
  bool out_at(const Counter& c, u64 t) const;
  // Number of rising edges of OUT in ticks (a, b], and the first after a.
  u64 rising_edges(const Counter& c, u64 a, u64 b) const;
  u64 next_rising(const Counter& c, u64 after) const;  // kNever if none
  void write_control(u8 v);
  void write_counter(unsigned i, u8 v);
  void load_count(Counter& c, u32 n, u64 t);
  u8 read_counter(unsigned i);
  void latch_count(Counter& c, u64 t);
  void latch_status(Counter& c, u64 t);
  void update_irq(u64 t);

  void pulse() {
    out0_.set(false);
    out0_.set(true);
  }

  Clock& clock_;
  IrqLine& out0_;
  Counter ctr_[3];
  u64 last_irq_tick_ = 0;  // ticks up to here have been reflected on out0_
  // Periodic interrupts (modes 2 and 3 on counter 0) that passed while popek
  // was not looking (descheduled by the host, or in a long stretch of guest
  // code) are not lost: one edge is raised at once and the rest, up to
  // kMaxBacklogSec of them, one every quarter period from catchup_tick_ on
  // (as KVM's in-kernel PIT reinjects missed ticks). A guest that keeps time
  // by counting ticks (Linux with the PIT as clocksource, when its TSC
  // calibration failed) then stays on time.
  static constexpr u64 kMaxBacklogSec = 5;
  u64 backlog_ = 0;
  u64 catchup_tick_ = 0;
};

// "System control port B" of the PC/AT (port 0x61): gates PIT counter 2 and
// the speaker, and reads back counter 2's OUT and the refresh toggle.
//   bit 0 (rw): counter 2 GATE       bit 1 (rw): speaker data enable
//   bits 2-3 (rw): parity / IOCHK check disable (stored only)
//   bit 4 (r): refresh request toggle (flips every 15.085 us of clock time)
//   bit 5 (r): OUT of counter 2      bits 6-7 (r): IOCHK / parity error = 0
class SystemControlPortB : public Device {
 public:
  SystemControlPortB(Clock& clock, I8254Pit& pit, unsigned counter = 2)
      : clock_(clock), pit_(pit), counter_(counter) {
    pit_.set_gate(counter_, false);
  }
  const char* name() const override { return "port_b"; }
  u64 read(u64 offset, unsigned size) override;
  void write(u64 offset, unsigned size, u64 value) override;
  void reset() override;
  bool speaker_enabled() const { return (value_ & 3) == 3; }

  struct State {
    static constexpr u32 kVersion = 1;
    u32 version = kVersion;
    u8 value = 0;
  };
  State save() const { return State{State::kVersion, value_}; }
  void restore(const State& s);

 private:
  Clock& clock_;
  I8254Pit& pit_;
  unsigned counter_;
  u8 value_ = 0;  // bits 0-3 as written
};

}  // namespace popek::dev
