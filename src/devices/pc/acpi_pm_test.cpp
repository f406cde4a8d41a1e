// ACPI PM1 register tests: driven as ACPICA drives them (16-bit accesses to
// PM1_STS, PM1_EN and PM1_CNT; write-1-to-clear status; enable bits checked
// to stick), with the SCI line and the sleep hook observed.
#include <gtest/gtest.h>

#include <vector>

#include "devices/bus/bus.h"
#include "devices/pc/acpi_pm.h"

using namespace popek;
using namespace popek::dev;

namespace {

constexpr u16 kBase = 0x600;

struct PmRig {
  IrqLine sci;
  int sci_rises = 0;
  std::vector<unsigned> sleeps;
  AcpiPm pm{sci, AcpiPm::Hooks{[this](unsigned t) { sleeps.push_back(t); }}};
  Bus pio{"pio"};
  PmRig() {
    sci.connect([this](bool v) { sci_rises += v; });
    pio.map(kBase, AcpiPm::kWindow, &pm);
  }
  u16 in16(u16 off) { return u16(pio.read(kBase + off, 2)); }
  void out16(u16 off, u16 v) { pio.write(kBase + off, 2, v); }
};

TEST(AcpiPm, ResetStateIsAcpiModeNothingPending) {
  PmRig r;
  EXPECT_EQ(r.in16(AcpiPm::kSts), 0);
  EXPECT_EQ(r.in16(AcpiPm::kEn), 0);
  EXPECT_EQ(r.in16(AcpiPm::kCnt), AcpiPm::kSciEn);  // no SMI_CMD: always in ACPI mode
  EXPECT_FALSE(r.sci.level());
}

TEST(AcpiPm, EnableBitsStickOthersDoNot) {
  PmRig r;
  r.out16(AcpiPm::kEn, 0xFFFF);
  EXPECT_EQ(r.in16(AcpiPm::kEn), AcpiPm::kEnMask);
  r.out16(AcpiPm::kEn, AcpiPm::kGbl);  // ACPICA's global-lock probe reads GBL_EN back
  EXPECT_EQ(r.in16(AcpiPm::kEn), AcpiPm::kGbl);
  EXPECT_FALSE(r.sci.level());
}

TEST(AcpiPm, PowerButtonRaisesSciOnlyWhenEnabledUntilCleared) {
  PmRig r;
  r.pm.press_power_button();
  EXPECT_EQ(r.in16(AcpiPm::kSts), AcpiPm::kPwrBtn);
  EXPECT_FALSE(r.sci.level());  // PWRBTN_EN clear: status only
  r.out16(AcpiPm::kEn, AcpiPm::kPwrBtn);
  EXPECT_TRUE(r.sci.level());   // level: pending status meets the enable
  r.out16(AcpiPm::kSts, AcpiPm::kTmr);  // clearing another bit leaves it
  EXPECT_TRUE(r.sci.level());
  r.out16(AcpiPm::kSts, AcpiPm::kPwrBtn);
  EXPECT_EQ(r.in16(AcpiPm::kSts), 0);
  EXPECT_FALSE(r.sci.level());
  r.pm.press_power_button();
  EXPECT_TRUE(r.sci.level());
  EXPECT_EQ(r.sci_rises, 2);
  EXPECT_EQ(r.pm.button_presses(), 2u);
}

TEST(AcpiPm, DwordAccessCoversStatusAndEnable) {
  PmRig r;
  r.pio.write(kBase, 4, u32(AcpiPm::kPwrBtn) << 16);  // PM1_EN through the high half
  r.pm.press_power_button();
  EXPECT_EQ(r.pio.read(kBase, 4), (u32(AcpiPm::kPwrBtn) << 16) | AcpiPm::kPwrBtn);
  r.pio.write(kBase + 1, 1, AcpiPm::kPwrBtn >> 8);  // byte write to PM1_STS's high byte
  EXPECT_FALSE(r.sci.level());
}

TEST(AcpiPm, SleepEnableHandsTypeToBoard) {
  PmRig r;
  // ACPICA: SLP_TYP first, then SLP_TYP | SLP_EN.
  r.out16(AcpiPm::kCnt, u16(AcpiPm::kSciEn | (5u << AcpiPm::kSlpTypShift)));
  EXPECT_TRUE(r.sleeps.empty());
  EXPECT_EQ(r.in16(AcpiPm::kCnt), AcpiPm::kSciEn | (5u << AcpiPm::kSlpTypShift));
  r.out16(AcpiPm::kCnt, u16(AcpiPm::kSciEn | (5u << AcpiPm::kSlpTypShift) | AcpiPm::kSlpEn));
  ASSERT_EQ(r.sleeps.size(), 1u);
  EXPECT_EQ(r.sleeps[0], 5u);
  EXPECT_EQ(r.in16(AcpiPm::kCnt) & AcpiPm::kSlpEn, 0);  // write-only
  r.out16(AcpiPm::kCnt, u16(0));  // SCI_EN cannot be turned off
  EXPECT_EQ(r.in16(AcpiPm::kCnt), AcpiPm::kSciEn);
}

TEST(AcpiPm, SaveRestoreKeepsPendingButtonAndLevel) {
  PmRig a;
  a.out16(AcpiPm::kEn, AcpiPm::kPwrBtn | AcpiPm::kRtc);
  a.out16(AcpiPm::kCnt, u16(3u << AcpiPm::kSlpTypShift));
  a.pm.press_power_button();
  const AcpiPm::State st = a.pm.save();
  PmRig b;
  b.pm.restore(st);
  EXPECT_EQ(b.in16(AcpiPm::kSts), AcpiPm::kPwrBtn);
  EXPECT_EQ(b.in16(AcpiPm::kEn), AcpiPm::kPwrBtn | AcpiPm::kRtc);
  EXPECT_EQ(b.in16(AcpiPm::kCnt), AcpiPm::kSciEn | (3u << AcpiPm::kSlpTypShift));
  EXPECT_TRUE(b.sci.level());
  b.pm.reset();
  EXPECT_FALSE(b.sci.level());
}

TEST(AcpiPm, OutsideTheWindowReadsOnes) {
  PmRig r;
  EXPECT_EQ(r.pm.read(6, 1), 0xFFu);
}

}  // namespace
