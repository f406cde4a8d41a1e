// The ACPI PM1 fixed-feature registers (ACPI 1.0 §4.7.3, "Fixed Hardware
// Registers"), as a chipset's power-management block provides them: the PM1a
// event block (PM1_STS, PM1_EN) and the PM1a control block (PM1_CNT). No PM
// timer, no GPE block, no PM2 control block: the board's FADT says so.
//
// Register window (offsets; the board maps it where its FADT says):
//   0  PM1_STS  16 bits, write 1 to clear
//   2  PM1_EN   16 bits
//   4  PM1_CNT  16 bits
// Any access size (1, 2, 4) at any offset inside the window works byte by
// byte, as the registers are byte-addressable I/O.
//
// What is live: the fixed power button (press_power_button() sets PWRBTN_STS;
// with PWRBTN_EN set the SCI line rises, level-triggered, until the OS clears
// the status), and sleep requests (a write with SLP_EN set hands SLP_TYP to
// the board's sleep hook, which decides what that type means). The other
// enable bits the OS may set (TMR_EN, GBL_EN, SLPBTN_EN, RTC_EN) read back as
// written, as ACPICA checks, but no event ever sets their status bits: this
// hardware has no PM timer, no firmware holding the global lock, no sleep
// button, and the RTC alarm is not wired to RTC_STS. SCI_EN reads 1 always:
// the hardware is in ACPI mode from reset (the FADT's SMI_CMD is 0).
#pragma once
#include <functional>

#include "base/types.h"
#include "devices/bus/device.h"

namespace popek::dev {

class AcpiPm : public Device {
 public:
  // Register offsets in the window, and their bits.
  static constexpr u64 kSts = 0, kEn = 2, kCnt = 4, kWindow = 6;
  static constexpr u16 kTmr = 1u << 0, kGbl = 1u << 5, kPwrBtn = 1u << 8, kSlpBtn = 1u << 9,
                       kRtc = 1u << 10, kWak = 1u << 15;
  static constexpr u16 kStsMask = 0x8731;  // TMR, BM, GBL, PWRBTN, SLPBTN, RTC, WAK
  static constexpr u16 kEnMask = 0x0721;   // TMR, GBL, PWRBTN, SLPBTN, RTC
  static constexpr u16 kSciEn = 1u << 0, kSlpEn = 1u << 13;
  static constexpr unsigned kSlpTypShift = 10;
  static constexpr u16 kSlpTypMask = 7u << kSlpTypShift;
  static constexpr u16 kCntMask = 0x0002 | kSlpTypMask;  // BM_RLD, SLP_TYP (GBL_RLS, SLP_EN: write-only)

  struct Hooks {
    // The OS wrote SLP_EN with this SLP_TYP (0-7): enter that sleep state.
    std::function<void(unsigned slp_typ)> sleep;
  };

  AcpiPm(IrqLine& sci, Hooks hooks);

  const char* name() const override { return "acpi-pm"; }
  u64 read(u64 offset, unsigned size) override;
  void write(u64 offset, unsigned size, u64 value) override;
  void reset() override;

  // The power button was pressed (and released): PWRBTN_STS.
  void press_power_button();

  u16 pm1_sts() const { return sts_; }
  u16 pm1_en() const { return en_; }
  u16 pm1_cnt() const { return u16(cnt_ | kSciEn); }
  bool sci() const { return sci_.level(); }
  u64 button_presses() const { return presses_; }
  u64 sleep_requests() const { return sleeps_; }

  struct State {
    static constexpr u32 kVersion = 1;
    u32 version = kVersion;
    u16 sts = 0, en = 0, cnt = 0;  // the SCI level follows from them
  };
  State save() const { return State{State::kVersion, sts_, en_, cnt_}; }
  void restore(const State& s);

 private:
  u8 read_byte(u64 offset) const;
  void write_byte(u64 offset, u8 v);
  void update_sci();

  IrqLine& sci_;
  Hooks hooks_;
  u16 sts_ = 0, en_ = 0, cnt_ = 0;
  u64 presses_ = 0, sleeps_ = 0;
};

}  // namespace popek::dev
