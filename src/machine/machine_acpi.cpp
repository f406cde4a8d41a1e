// The Machine's ACPI: the PM1 registers on their ports, the SCI on IRQ 9
// (shared with a PCI slot's INTA#), the tables a firmware would leave in the
// BIOS area, the soft-off request and the power button.
//
// ACPI here is the fixed-feature minimum Linux needs for two things: to power
// off through \_S5 (SLP_TYP | SLP_EN to PM1a_CNT ends the run with
// Outcome::poweroff) and to see a power button (system_powerdown). No PM
// timer, no GPEs, no MADT (no APIC on this board), no devices in the DSDT.
#include <cstring>

#include "base/error.h"
#include "machine/boot/acpi_tables.h"
#include "machine/machine.h"
#include "machine/pc_layout.h"

namespace popek::machine {

void Machine::drive_irq(unsigned irq) {
  irq_[irq].set(pci_level_[irq] || (irq == pc::kIrqSci && sci_level_));
}

void Machine::build_acpi() {
  using namespace pc;
  if (!cfg_.acpi) return;
  sci_.connect([this](bool level) {
    sci_level_ = level;
    drive_irq(kIrqSci);
  });
  dev::AcpiPm::Hooks hooks;
  hooks.sleep = [this](unsigned slp_typ) {
    if (slp_typ != kSlpTypS5) {  // no other \_Sx is defined: nothing to enter
      sleep_ignored_++;
      return;
    }
    poweroff_requested_ = true;
    stop_engine();
  };
  acpi_pm_ = std::make_unique<dev::AcpiPm>(sci_, hooks);
  pio_.map(kAcpiPm, dev::AcpiPm::kWindow, acpi_pm_.get());
  // The SCI is level-triggered (ACPI: shareable, level, active low on ISA;
  // the 8259 sees it through the ELCR), as firmware sets it.
  pic_slave_->set_elcr(u8(pic_slave_->elcr() | (1u << (kIrqSci - 8))));
}

void Machine::write_acpi_tables() {
  using namespace pc;
  boot::AcpiConfig ac;
  ac.base = u32(kAcpiTables);
  ac.pm1a_evt = kAcpiPm1aEvt;
  ac.pm1a_cnt = kAcpiPm1aCnt;
  ac.sci_irq = u16(kIrqSci);
  ac.century = kRtcCentury;
  ac.s5_slp_typ = u8(kSlpTypS5);
  ac.pci_mmio_base = u32(kPciMmioBase);
  ac.pci_mmio_end = u32(kPciMmioEnd);
  // Every slot a virtio function may take, as virtio_board.cpp wires INTA#.
  for (unsigned slot = kVirtioFirstSlot; slot < 32; slot++) ac.pci_inta_irq[slot] = u8(kPciIrqs[slot % 4]);
  const boot::AcpiImage img = boot::build_acpi_tables(ac);
  if (kAcpiTables + img.bytes.size() > kBiosStart || kAcpiTables + img.bytes.size() > pm_->ram_size())
    throw Error("ACPI tables do not fit below the BIOS area");
  std::memcpy(pm_->ram() + kAcpiTables, img.bytes.data(), img.bytes.size());
}

bool Machine::press_power_button() {
  if (!acpi_pm_) return false;
  acpi_pm_->press_power_button();
  return true;
}

}  // namespace popek::machine
