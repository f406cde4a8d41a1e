#include "devices/pc/acpi_pm.h"

namespace popek::dev {

AcpiPm::AcpiPm(IrqLine& sci, Hooks hooks) : sci_(sci), hooks_(std::move(hooks)) {}

void AcpiPm::reset() {
  sts_ = en_ = cnt_ = 0;
  update_sci();
}

u8 AcpiPm::read_byte(u64 offset) const {
  u16 reg;
  switch (offset & ~u64(1)) {
    case kSts: reg = sts_; break;
    case kEn: reg = en_; break;
    case kCnt: reg = pm1_cnt(); break;
    default: return 0xFF;
  }
  return u8(offset & 1 ? reg >> 8 : reg);
}

void AcpiPm::write_byte(u64 offset, u8 v) {
  const unsigned shift = offset & 1 ? 8 : 0;
  const u16 bits = u16(u16(v) << shift), lane = u16(0xFFu << shift);
  switch (offset & ~u64(1)) {
    case kSts: sts_ &= u16(~(bits & kStsMask)); break;  // write 1 to clear
    case kEn: en_ = u16((en_ & ~lane) | (bits & kEnMask & lane)); break;
    case kCnt:
      cnt_ = u16((cnt_ & ~lane) | (bits & kCntMask & lane));
      if (bits & kSlpEn) {
        sleeps_++;
        if (hooks_.sleep) hooks_.sleep((cnt_ & kSlpTypMask) >> kSlpTypShift);
      }
      break;
    default: return;
  }
  update_sci();
}

u64 AcpiPm::read(u64 offset, unsigned size) {
  u64 v = 0;
  for (unsigned i = 0; i < size; i++) v |= u64(read_byte(offset + i)) << (8 * i);
  return v;
}

void AcpiPm::write(u64 offset, unsigned size, u64 value) {
  for (unsigned i = 0; i < size; i++) write_byte(offset + i, u8(value >> (8 * i)));
}

void AcpiPm::press_power_button() {
  presses_++;
  sts_ |= kPwrBtn;
  update_sci();
}

void AcpiPm::restore(const State& s) {
  sts_ = u16(s.sts & kStsMask);
  en_ = u16(s.en & kEnMask);
  cnt_ = u16(s.cnt & kCntMask);
  update_sci();
}

// SCI_EN is always 1 here, so the SCI is any enabled status bit.
void AcpiPm::update_sci() { sci_.set((sts_ & en_ & kEnMask) != 0); }

}  // namespace popek::dev
