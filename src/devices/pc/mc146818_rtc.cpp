#include "devices/pc/mc146818_rtc.h"

#include <algorithm>
#include <string>

#include "base/error.h"

namespace popek::dev {

namespace {
constexpr u64 kSec = 1000000000ull;
constexpr u64 kUipWindowNs = 244000;
constexpr u64 kDividerHz = 32768;
// Register indices.
enum : unsigned {
  kSeconds = 0, kSecAlarm = 1, kMinutes = 2, kMinAlarm = 3, kHours = 4, kHourAlarm = 5,
  kWeekday = 6, kMday = 7, kMonth = 8, kYear = 9, kRegA = 10, kRegB = 11, kRegC = 12, kRegD = 13,
};
// Register A
constexpr u8 kAUip = 0x80;
// Register B
constexpr u8 kBSet = 0x80, kBPie = 0x40, kBAie = 0x20, kBUie = 0x10, kBSqwe = 0x08, kBBinary = 0x04,
             kB24h = 0x02;
// Register C
constexpr u8 kCIrqf = 0x80, kCPf = 0x40, kCAf = 0x20, kCUf = 0x10;
constexpr u8 kDVrt = 0x80;

i64 floor_div(i64 a, i64 b) { return a >= 0 ? a / b : -((-a + b - 1) / b); }
u64 t32(u64 ns) { return static_cast<u64>(static_cast<unsigned __int128>(ns) * kDividerHz / kSec); }
u64 t32_to_ns(u64 t) {
  return static_cast<u64>((static_cast<unsigned __int128>(t) * kSec + kDividerHz - 1) / kDividerHz);
}
}  // namespace

// --- calendar ------------------------------------------------------------------

i64 Mc146818Rtc::days_from_civil(i64 y, unsigned m, unsigned d) {
  // Count from 0000-03-01 in 400-year eras so leap days fall at era ends.
  y -= m <= 2;
  const i64 era = floor_div(y, 400);
  const i64 yoe = y - era * 400;
  const i64 doy = (153 * (m > 2 ? m - 3 : m + 9) + 2) / 5 + d - 1;
  const i64 doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
  return era * 146097 + doe - 719468;
}

void Mc146818Rtc::civil_from_days(i64 z, i64* y, unsigned* m, unsigned* d) {
  z += 719468;
  const i64 era = floor_div(z, 146097);
  const i64 doe = z - era * 146097;
  const i64 yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
  const i64 doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
  const i64 mp = (5 * doy + 2) / 153;
  *d = static_cast<unsigned>(doy - (153 * mp + 2) / 5 + 1);
  *m = static_cast<unsigned>(mp < 10 ? mp + 3 : mp - 9);
  *y = yoe + era * 400 + (*m <= 2);
}

Mc146818Rtc::Tm Mc146818Rtc::to_tm(i64 sec) {
  const i64 days = floor_div(sec, 86400);
  const i64 rem = sec - days * 86400;
  Tm t{};
  civil_from_days(days, &t.year, &t.mon, &t.mday);
  t.hour = static_cast<unsigned>(rem / 3600);
  t.min = static_cast<unsigned>(rem / 60 % 60);
  t.sec = static_cast<unsigned>(rem % 60);
  t.wday = static_cast<unsigned>(((days % 7) + 11) % 7) + 1;  // 1970-01-01: Thursday (5)
  return t;
}

i64 Mc146818Rtc::from_tm(const Tm& t) {
  return days_from_civil(t.year, std::clamp(t.mon, 1u, 12u), std::max(t.mday, 1u)) * 86400 +
         t.hour * 3600 + t.min * 60 + t.sec;
}

// --- encoding ------------------------------------------------------------------

u8 Mc146818Rtc::encode(unsigned v) const {
  if (cmos_[kRegB] & kBBinary) return static_cast<u8>(v);
  return static_cast<u8>(((v / 10) % 10) << 4 | (v % 10));
}

unsigned Mc146818Rtc::decode(u8 v) const {
  if (cmos_[kRegB] & kBBinary) return v;
  return (v >> 4) * 10 + (v & 0x0F);
}

u8 Mc146818Rtc::encode_hour(unsigned h) const {
  if (cmos_[kRegB] & kB24h) return encode(h);
  const unsigned h12 = h % 12 == 0 ? 12 : h % 12;
  return static_cast<u8>(encode(h12) | (h >= 12 ? 0x80 : 0));
}

unsigned Mc146818Rtc::decode_hour(u8 v) const {
  if (cmos_[kRegB] & kB24h) return std::min(decode(v), 23u);
  const unsigned h12 = decode(v & 0x7F) % 12;
  return h12 + ((v & 0x80) ? 12 : 0);
}

// --- time base -----------------------------------------------------------------

Mc146818Rtc::Mc146818Rtc(Clock& clock, IrqLine& irq, Options opt)
    : clock_(clock), irq_(irq), opt_(opt) {
  const u64 now = clock_.now_ns();
  cmos_[kRegA] = 0x26;  // 32.768 kHz time base, 1024 Hz periodic rate
  cmos_[kRegB] = kB24h;
  cmos_[kRegD] = kDVrt;
  sec_base_ = opt.base_unix_sec;
  ns_base_ = div_base_ = last_sync_ = now;
  update_irq();
}

bool Mc146818Rtc::divider_running() const { return ((cmos_[kRegA] >> 4) & 7) < 6; }

i64 Mc146818Rtc::current_sec(u64 now) const {
  if (frozen_ || now < ns_base_) return sec_base_;
  return sec_base_ + static_cast<i64>((now - ns_base_) / kSec);
}

unsigned Mc146818Rtc::periodic_ticks() const {
  const unsigned rs = cmos_[kRegA] & 0x0F;
  if (rs == 0) return 0;
  return rs <= 2 ? 1u << (rs + 6) : 1u << (rs - 1);
}

bool Mc146818Rtc::alarm_matches(i64 sec) const {
  const Tm t = to_tm(sec);
  auto ok = [](u8 alarm, u8 cur) { return (alarm & 0xC0) == 0xC0 || alarm == cur; };
  return ok(cmos_[kSecAlarm], encode(t.sec)) && ok(cmos_[kMinAlarm], encode(t.min)) &&
         ok(cmos_[kHourAlarm], encode_hour(t.hour));
}

void Mc146818Rtc::sync(u64 now) {
  if (now <= last_sync_) return;
  u8 flags = 0;
  if (!frozen_) {
    const i64 from = current_sec(last_sync_), to = current_sec(now);
    if (to > from) {
      flags |= kCUf;
      // Each update compares the alarm; any pattern recurs within a day.
      if (to - from >= 86400) {
        flags |= kCAf;
      } else {
        for (i64 s = from + 1; s <= to; ++s)
          if (alarm_matches(s)) {
            flags |= kCAf;
            break;
          }
      }
    }
  }
  if (const unsigned p = periodic_ticks(); p && divider_running() && last_sync_ >= div_base_) {
    if (t32(now - div_base_) / p > t32(last_sync_ - div_base_) / p) flags |= kCPf;
  }
  cmos_[kRegC] |= flags;
  last_sync_ = now;
  update_irq();
}

void Mc146818Rtc::update_irq() {
  const u8 b = cmos_[kRegB], c = cmos_[kRegC];
  const bool irqf = ((c & kCPf) && (b & kBPie)) || ((c & kCAf) && (b & kBAie)) ||
                    ((c & kCUf) && (b & kBUie));
  if (irqf) cmos_[kRegC] |= kCIrqf;
  irq_.set(irqf);
}

u64 Mc146818Rtc::next_event_ns() const {
  if (cmos_[kRegC] & kCIrqf) return kNever;  // IRQ already up until C is read
  const u8 b = cmos_[kRegB];
  u64 next = kNever;
  if ((b & kBPie) && periodic_ticks() && divider_running() && last_sync_ >= div_base_) {
    const u64 p = periodic_ticks();
    const u64 k = t32(last_sync_ - div_base_) / p + 1;
    next = std::min(next, div_base_ + t32_to_ns(k * p));
  }
  if ((b & (kBUie | kBAie)) && !frozen_) {
    const u64 since = last_sync_ >= ns_base_ ? (last_sync_ - ns_base_) / kSec + 1 : 1;
    next = std::min(next, ns_base_ + since * kSec);
  }
  return next;
}

void Mc146818Rtc::on_time(u64 now_ns) { sync(now_ns); }

// --- registers -----------------------------------------------------------------

u8 Mc146818Rtc::read_time_reg(unsigned idx, const Tm& t) const {
  switch (idx) {
    case kSeconds: return encode(t.sec);
    case kMinutes: return encode(t.min);
    case kHours: return encode_hour(t.hour);
    case kWeekday: return encode(t.wday);
    case kMday: return encode(t.mday);
    case kMonth: return encode(t.mon);
    default: return encode(static_cast<unsigned>(((t.year % 100) + 100) % 100));  // kYear
  }
}

void Mc146818Rtc::set_time_field(unsigned idx, u8 v) {
  const u64 now = clock_.now_ns();
  Tm t = to_tm(current_sec(now));
  switch (idx) {
    case kSeconds: t.sec = std::min(decode(v), 59u); break;
    case kMinutes: t.min = std::min(decode(v), 59u); break;
    case kHours: t.hour = decode_hour(v); break;
    case kMday: t.mday = decode(v); break;
    case kMonth: t.mon = decode(v); break;
    case kYear: {
      const unsigned yy = decode(v) % 100;
      const i64 century = opt_.century_index ? t.year / 100 : (yy < 70 ? 20 : 19);
      t.year = century * 100 + yy;
      break;
    }
    default: {  // the century register
      t.year = static_cast<i64>(decode(v)) * 100 + t.year % 100;
      break;
    }
  }
  const i64 sec = from_tm(t);
  if (!frozen_ && now >= ns_base_) {
    const u64 sub = (now - ns_base_) % kSec;  // keep the phase of the divider
    ns_base_ = now - sub;
  }
  sec_base_ = sec;
}

u8 Mc146818Rtc::read_reg(unsigned idx) {
  const u64 now = clock_.now_ns();
  switch (idx) {
    case kSecAlarm:
    case kMinAlarm:
    case kHourAlarm:
      return cmos_[idx];
    case kRegA: {
      u8 v = cmos_[kRegA] & 0x7F;
      if (!frozen_ && now >= ns_base_ && (now - ns_base_) % kSec >= kSec - kUipWindowNs) v |= kAUip;
      return v;
    }
    case kRegB: return cmos_[kRegB];
    case kRegC: {
      const u8 v = cmos_[kRegC];
      cmos_[kRegC] = 0;
      update_irq();
      return v;
    }
    case kRegD: return kDVrt;
    default:
      break;
  }
  if (idx <= kYear) return read_time_reg(idx, to_tm(current_sec(now)));
  if (opt_.century_index && idx == opt_.century_index)
    return encode(static_cast<unsigned>(to_tm(current_sec(now)).year / 100));
  return cmos_[idx];
}

void Mc146818Rtc::write_reg(unsigned idx, u8 v) {
  const u64 now = clock_.now_ns();
  switch (idx) {
    case kSecAlarm:
    case kMinAlarm:
    case kHourAlarm:
      cmos_[idx] = v;
      return;
    case kWeekday:
      return;  // derived from the date
    case kRegA: {
      const bool was_running = divider_running();
      cmos_[kRegA] = v & 0x7F;
      const bool running = divider_running();
      if (was_running && !running && !frozen_) {
        sec_base_ = current_sec(now);
        frozen_ = true;
      } else if (!was_running && running) {
        div_base_ = now;
        if (!(cmos_[kRegB] & kBSet)) {
          // The first update comes half a second after the divider is released.
          frozen_ = false;
          // (Within the first half second of clock time it comes a bit later.)
          ns_base_ = now >= kSec / 2 ? now - kSec / 2 : 0;
        }
      }
      update_irq();
      return;
    }
    case kRegB: {
      const u8 old = cmos_[kRegB];
      if (v & kBSet) v &= static_cast<u8>(~kBUie);  // SET clears UIE
      cmos_[kRegB] = v;
      if ((v & kBSet) && !(old & kBSet) && !frozen_) {
        sec_base_ = current_sec(now);
        frozen_ = true;
      } else if (!(v & kBSet) && (old & kBSet) && divider_running()) {
        frozen_ = false;
        ns_base_ = now;  // the next update is one second after SET is cleared
      }
      update_irq();
      return;
    }
    case kRegC:
    case kRegD:
      return;  // read only
    default:
      break;
  }
  if (idx <= kYear || (opt_.century_index && idx == opt_.century_index))
    set_time_field(idx, v);
  else
    cmos_[idx] = v;
}

u64 Mc146818Rtc::read(u64 offset, unsigned size) {
  if (offset != 1) return size >= 8 ? ~0ull : (1ull << (8 * size)) - 1;  // index is write-only
  sync(clock_.now_ns());
  return read_reg(index_);
}

void Mc146818Rtc::write(u64 offset, unsigned size, u64 value) {
  const u8 v = static_cast<u8>(value);
  if (offset == 0) {
    index_ = v & 0x7F;
    nmi_masked_ = v & 0x80;
    if (size >= 2) write(1, 1, value >> 8);  // outw 0x70: index, then data
    return;
  }
  if (offset != 1) return;
  sync(clock_.now_ns());
  write_reg(index_, v);
  last_sync_ = std::max(last_sync_, clock_.now_ns());
}

void Mc146818Rtc::set_cmos(u8 index, u8 value) {
  index &= 0x7F;
  POPEK_CHECK(index > kRegD);
  cmos_[index] = value;
}

void Mc146818Rtc::reset() {
  sync(clock_.now_ns());
  cmos_[kRegB] &= static_cast<u8>(~(kBPie | kBAie | kBUie | kBSqwe));
  cmos_[kRegC] = 0;
  update_irq();
}

Mc146818Rtc::State Mc146818Rtc::save() const {
  State s;
  s.cmos = cmos_;
  s.index = index_;
  s.nmi_masked = nmi_masked_;
  s.frozen = frozen_;
  s.sec_base = sec_base_;
  s.ns_base = ns_base_;
  s.div_base = div_base_;
  s.last_sync = last_sync_;
  return s;
}

void Mc146818Rtc::restore(const State& s) {
  if (s.version != State::kVersion)
    throw Error("rtc: unsupported state version " + std::to_string(s.version));
  cmos_ = s.cmos;
  index_ = s.index & 0x7F;
  nmi_masked_ = s.nmi_masked;
  frozen_ = s.frozen;
  sec_base_ = s.sec_base;
  ns_base_ = s.ns_base;
  div_base_ = s.div_base;
  last_sync_ = s.last_sync;
  update_irq();
}

}  // namespace popek::dev
