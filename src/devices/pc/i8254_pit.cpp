#include "devices/pc/i8254_pit.h"

#include <algorithm>
#include <string>

#include "base/error.h"

namespace popek::dev {

namespace {
constexpr u64 kNsPerSec = 1000000000ull;

u32 from_bcd(u32 v) {
  return ((v >> 12) & 0xF) * 1000 + ((v >> 8) & 0xF) * 100 + ((v >> 4) & 0xF) * 10 + (v & 0xF);
}
u32 to_bcd(u32 v) {
  return ((v / 1000) % 10) << 12 | ((v / 100) % 10) << 8 | ((v / 10) % 10) << 4 | (v % 10);
}
constexpr u8 kRwMask = 0x30;
}  // namespace

u64 I8254Pit::ns_to_ticks(u64 ns) {
  return static_cast<u64>(static_cast<unsigned __int128>(ns) * kHz / kNsPerSec);
}
u64 I8254Pit::ticks_to_ns(u64 ticks) {
  const unsigned __int128 p = static_cast<unsigned __int128>(ticks) * kNsPerSec;
  return static_cast<u64>((p + kHz - 1) / kHz);
}

I8254Pit::I8254Pit(Clock& clock, IrqLine& out0) : clock_(clock), out0_(out0) { reset(); }

void I8254Pit::reset() {
  for (auto& c : ctr_) {
    const bool gate = c.gate;  // GATE is a wire from the board, not chip state
    c = Counter{};
    c.gate = gate;
  }
  last_irq_tick_ = tick();
  backlog_ = 0;
  catchup_tick_ = 0;
  out0_.set(true);  // no mode programmed: OUT undefined; high like modes 1-5
  out0_.set(output(0));
}

unsigned I8254Pit::mode(const Counter& c) const {
  unsigned m = (c.control >> 1) & 7;
  return m >= 6 ? m - 4 : m;
}

void I8254Pit::settle(Counter& c, u64 t) const {
  if (c.pending && t >= c.pending_tick) {
    c.initial = c.pending;
    c.load_tick = c.pending_tick;
    c.pending = 0;
  }
}

i64 I8254Pit::elapsed(const Counter& c, u64 t) const {
  if (!c.armed) return -1;
  if (c.paused) return static_cast<i64>(c.frozen);
  if (t < c.load_tick) return -1;
  return static_cast<i64>(t - c.load_tick);
}

u32 I8254Pit::count_at(const Counter& c, u64 t) const {
  const u32 mod = modulus(c);
  const u32 n = c.initial ? c.initial : mod;
  const i64 se = elapsed(c, t);
  u32 v = n;
  if (se >= 0) {
    const u64 e = static_cast<u64>(se);
    switch (mode(c)) {
      case 2:
        v = n - static_cast<u32>(e % n);
        break;
      case 3: {
        const u64 phase = e % n;
        if (n % 2 == 0) {
          const u64 half = n / 2;
          v = static_cast<u32>(n - 2 * (phase < half ? phase : phase - half));
        } else {
          const u64 high = (n + 1) / 2;
          v = static_cast<u32>(n - 1 - 2 * (phase < high ? phase : phase - high));
        }
        break;
      }
      default:  // 0, 1, 4, 5: count down and wrap
        v = static_cast<u32>((n + mod - e % mod) % mod);
        break;
    }
  }
  v %= mod;
  return (c.control & 1) ? to_bcd(v) : v;
}

bool I8254Pit::out_at(const Counter& c, u64 t) const {
  if (!c.armed) return c.out_static;
  const unsigned m = mode(c);
  if (c.paused && (m == 2 || m == 3)) return true;
  const i64 se = elapsed(c, t);
  if (se < 0) return m != 0;
  const u64 e = static_cast<u64>(se);
  const u64 n = c.initial ? c.initial : modulus(c);
  switch (m) {
    case 0:
    case 1: return e >= n;
    case 2: return e % n != n - 1;
    case 3: return e % n < (n + 1) / 2;
    default: return e != n;  // 4, 5: strobe low for one tick
  }
}

namespace {
// Rising edges of one waveform segment (no pending reload) in ticks (a, b].
struct Wave {
  bool armed, paused;
  unsigned mode;
  u64 load, n;
};
u64 edges_in(const Wave& w, u64 a, u64 b) {
  if (!w.armed || w.paused || b <= a || b < w.load) return 0;
  if (w.mode == 2 || w.mode == 3) {
    const u64 hi = (b - w.load) / w.n;
    const u64 lo = a < w.load ? 0 : (a - w.load) / w.n;
    return hi - lo;
  }
  const u64 at = w.load + ((w.mode == 0 || w.mode == 1) ? w.n : w.n + 1);
  return (a < at && at <= b) ? 1 : 0;
}
u64 first_edge_after(const Wave& w, u64 a) {
  if (!w.armed || w.paused) return Timed::kNever;
  if (w.mode == 2 || w.mode == 3) {
    const u64 k = a < w.load ? 1 : (a - w.load) / w.n + 1;
    return w.load + k * w.n;
  }
  const u64 at = w.load + ((w.mode == 0 || w.mode == 1) ? w.n : w.n + 1);
  return at > a ? at : Timed::kNever;
}
}  // namespace

u64 I8254Pit::rising_edges(const Counter& c, u64 a, u64 b) const {
  const u64 mod = modulus(c);
  Wave w{c.armed, c.paused, mode(c), c.load_tick, c.initial ? c.initial : mod};
  if (c.pending && c.pending_tick <= b) {
    const u64 split = std::max(a, c.pending_tick);
    const u64 before = c.pending_tick > a ? edges_in(w, a, c.pending_tick) : 0;
    Wave nw = w;
    nw.load = c.pending_tick;
    nw.n = c.pending;
    return before + edges_in(nw, split, b);
  }
  return edges_in(w, a, b);
}

u64 I8254Pit::next_rising(const Counter& c, u64 after) const {
  const u64 mod = modulus(c);
  Wave w{c.armed, c.paused, mode(c), c.load_tick, c.initial ? c.initial : mod};
  if (c.pending) {
    if (c.pending_tick > after) {
      const u64 t = first_edge_after(w, after);
      if (t <= c.pending_tick) return t;
    }
    w.load = c.pending_tick;
    w.n = c.pending;
    return first_edge_after(w, std::max(after, c.pending_tick));
  }
  return first_edge_after(w, after);
}

bool I8254Pit::output(unsigned i) const {
  const u64 t = tick();
  Counter c = ctr_[i];
  settle(c, t);
  return out_at(c, t);
}

u16 I8254Pit::count(unsigned i) const {
  const u64 t = tick();
  Counter c = ctr_[i];
  settle(c, t);
  return static_cast<u16>(count_at(c, t));
}

void I8254Pit::update_irq(u64 t) {
  Counter c = ctr_[0];
  settle(c, t);
  if (t > last_irq_tick_) {
    const u64 edges = rising_edges(ctr_[0], last_irq_tick_, t);
    const u64 period = c.initial ? c.initial : modulus(c);
    const u64 catchup_step = std::max<u64>(period / 4, 1);
    if (edges > 0) {
      pulse();
      const unsigned m = mode(c);
      if (edges > 1 && (m == 2 || m == 3) && c.armed && !c.paused)
        backlog_ = std::min(backlog_ + edges - 1, kMaxBacklogSec * kHz / period);
      catchup_tick_ = t + catchup_step;
    } else if (backlog_ > 0 && t >= catchup_tick_) {
      pulse();
      backlog_--;
      catchup_tick_ = t + catchup_step;
    }
    last_irq_tick_ = t;
  }
  out0_.set(out_at(c, t));
}

u64 I8254Pit::next_event_ns() const {
  u64 t = next_rising(ctr_[0], last_irq_tick_);
  if (backlog_ > 0) t = std::min(t, std::max(catchup_tick_, last_irq_tick_ + 1));
  return t == kNever ? kNever : ticks_to_ns(t);
}

void I8254Pit::on_time(u64 now_ns) { update_irq(ns_to_ticks(now_ns)); }

void I8254Pit::load_count(Counter& c, u32 n, u64 t) {
  c.null_count = true;
  switch (mode(c)) {
    case 1:
    case 5:
      // Takes effect at the next trigger (gate rising edge).
      if (c.armed) {
        c.pending = n;
        c.pending_tick = kNever;
      } else {
        c.initial = n;
      }
      break;
    case 2:
    case 3:
      if (c.armed && !c.paused && t + 1 >= c.load_tick) {
        // Finish the current period, then reload with the new count.
        const u64 cur = c.initial ? c.initial : modulus(c);
        const u64 e = t + 1 - c.load_tick;
        c.pending = n;
        c.pending_tick = c.load_tick + (e / cur + 1) * cur;
        break;
      }
      [[fallthrough]];
    default:  // 0, 4 (and the first count of 2/3): load on the next CLK
      c.initial = n;
      c.pending = 0;
      c.armed = true;
      c.load_tick = t + 1;
      c.paused = !c.gate && mode(c) != 1 && mode(c) != 5;
      c.frozen = 0;
      break;
  }
}

void I8254Pit::write_control(u8 v) {
  const u64 t = tick();
  if ((v >> 6) == 3) {  // read-back
    for (unsigned i = 0; i < 3; ++i) {
      if (!(v & (2u << i))) continue;
      settle(ctr_[i], t);
      if (!(v & 0x20)) latch_count(ctr_[i], t);
      if (!(v & 0x10)) latch_status(ctr_[i], t);
    }
    return;
  }
  Counter& c = ctr_[v >> 6];
  settle(c, t);
  if ((v & kRwMask) == 0) {  // counter latch command
    latch_count(c, t);
    return;
  }
  const bool gate = c.gate;
  c = Counter{};
  c.gate = gate;
  c.control = v & 0x3F;
  if ((v >> 6) == 0) backlog_ = 0;  // a new mode: missed ticks of the old one are moot
  c.out_static = mode(c) != 0;
  c.null_count = true;
}

void I8254Pit::write_counter(unsigned i, u8 v) {
  Counter& c = ctr_[i];
  const u64 t = tick();
  settle(c, t);
  u32 n;
  switch (c.control & kRwMask) {
    case 0x10: n = v; break;
    case 0x20: n = static_cast<u32>(v) << 8; break;
    case 0x30:
      if (!c.write_msb) {
        c.write_lsb = v;
        c.write_msb = true;
        if (mode(c) == 0) {  // the first byte stops a mode-0 count, OUT low
          c.armed = false;
          c.out_static = false;
          c.pending = 0;
        }
        return;
      }
      c.write_msb = false;
      n = c.write_lsb | static_cast<u32>(v) << 8;
      break;
    default: return;  // no control word yet
  }
  if (c.control & 1) n = from_bcd(n);
  if (n == 0 || n > modulus(c)) n = modulus(c);
  load_count(c, n, t);
}

void I8254Pit::latch_count(Counter& c, u64 t) {
  if (c.latched) return;  // a second latch before the read is ignored
  c.latch = static_cast<u16>(count_at(c, t));
  c.latched = true;
}

void I8254Pit::latch_status(Counter& c, u64 t) {
  if (c.status_latched) return;
  const bool loaded = c.armed && !c.pending && elapsed(c, t) >= 0 && !c.write_msb;
  if (loaded) c.null_count = false;
  c.status = static_cast<u8>((out_at(c, t) ? 0x80 : 0) | (c.null_count ? 0x40 : 0) |
                             (c.control & 0x3F));
  c.status_latched = true;
}

u8 I8254Pit::read_counter(unsigned i) {
  Counter& c = ctr_[i];
  const u64 t = tick();
  settle(c, t);
  if (c.status_latched) {
    c.status_latched = false;
    return c.status;
  }
  const u16 v = c.latched ? c.latch : static_cast<u16>(count_at(c, t));
  u8 b;
  switch (c.control & kRwMask) {
    case 0x10: b = v & 0xFF; c.latched = false; break;
    case 0x20: b = v >> 8; c.latched = false; break;
    default:
      b = c.read_msb ? (v >> 8) : (v & 0xFF);
      if (c.read_msb) c.latched = false;
      c.read_msb = !c.read_msb;
      break;
  }
  return b;
}

void I8254Pit::set_gate(unsigned i, bool level) {
  Counter& c = ctr_[i];
  const u64 t = tick();
  if (i == 0) update_irq(t);
  settle(c, t);
  if (level && !c.gate) {
    switch (mode(c)) {
      case 0:
      case 4:
        if (c.armed && c.paused) {
          c.load_tick = t - std::min<u64>(c.frozen, t);
          c.paused = false;
        }
        break;
      default:  // 1, 5 trigger; 2, 3 restart with the count register
        if (c.pending) {
          c.initial = c.pending;
          c.pending = 0;
        }
        if (c.initial) {
          c.armed = true;
          c.paused = false;
          c.load_tick = t + 1;
        }
        break;
    }
  } else if (!level && c.gate) {
    const unsigned m = mode(c);
    if (c.armed && !c.paused && m != 1 && m != 5) {
      const i64 e = elapsed(c, t);
      c.frozen = e < 0 ? 0 : static_cast<u64>(e);
      c.paused = true;
    }
  }
  c.gate = level;
  if (i == 0) update_irq(t);
}

u64 I8254Pit::read(u64 offset, unsigned size) {
  u64 v = 0;
  for (unsigned k = 0; k < size; ++k) {
    const u64 off = offset + k;
    const u8 b = off < 3 ? read_counter(static_cast<unsigned>(off)) : 0xFF;
    v |= static_cast<u64>(b) << (8 * k);
  }
  return v;
}

void I8254Pit::write(u64 offset, unsigned size, u64 value) {
  const u64 t = tick();
  update_irq(t);
  for (unsigned k = 0; k < size; ++k) {
    const u64 off = offset + k;
    const u8 b = static_cast<u8>(value >> (8 * k));
    if (off < 3)
      write_counter(static_cast<unsigned>(off), b);
    else if (off == 3)
      write_control(b);
  }
  update_irq(t);
}

I8254Pit::State I8254Pit::save() const {
  State s;
  for (unsigned i = 0; i < 3; ++i) s.ctr[i] = ctr_[i];
  s.last_irq_tick = last_irq_tick_;
  s.backlog = backlog_;
  s.catchup_tick = catchup_tick_;
  return s;
}

void I8254Pit::restore(const State& s) {
  if (s.version != State::kVersion)
    throw Error("pit: unsupported state version " + std::to_string(s.version));
  for (unsigned i = 0; i < 3; ++i) ctr_[i] = s.ctr[i];
  last_irq_tick_ = s.last_irq_tick;
  backlog_ = s.backlog;
  catchup_tick_ = s.catchup_tick;
  Counter c = ctr_[0];
  settle(c, last_irq_tick_);
  out0_.set(out_at(c, last_irq_tick_));
}

// --- port B ------------------------------------------------------------------

u64 SystemControlPortB::read(u64 offset, unsigned size) {
  if (offset != 0) return 0xFF;
  // DRAM refresh requests come every 15.085 us; bit 4 toggles with each.
  const bool refresh = (clock_.now_ns() / 15085) & 1;
  return (value_ & 0x0F) | (refresh ? 0x10 : 0) | (pit_.output(counter_) ? 0x20 : 0);
}

void SystemControlPortB::write(u64 offset, unsigned size, u64 value) {
  if (offset != 0) return;
  value_ = value & 0x0F;
  pit_.set_gate(counter_, value_ & 1);
}

void SystemControlPortB::reset() {
  value_ = 0;
  pit_.set_gate(counter_, false);
}

void SystemControlPortB::restore(const State& s) {
  if (s.version != State::kVersion)
    throw Error("port_b: unsupported state version " + std::to_string(s.version));
  value_ = s.value & 0x0F;
}

}  // namespace popek::dev
