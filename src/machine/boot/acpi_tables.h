// Minimal ACPI 1.0 tables for a PC without a BIOS: what a firmware would
// leave in the BIOS area for the OS to find (ACPI 1.0b, chapter 5).
//
//   RSDP  "RSD PTR ", revision 0 (ACPI 1.0), 20 bytes, 16-byte aligned, at the
//         start of the area: Linux scans 0xE0000-0xFFFFF for it
//   RSDT  one entry: the FADT
//   FADT  revision 1 (116 bytes): dual-8259 interrupt model, the SCI on an ISA
//         IRQ, the PM1a event and control blocks at the given I/O ports, no
//         PM timer, no GPE blocks, no SMI command port (the hardware is in
//         ACPI mode from reset), the fixed-feature power button, no sleep
//         button, the CMOS century byte
//   FACS  64 bytes, 64-byte aligned (no waking vector: the OS cannot resume
//         from S2-S4 here)
//   DSDT  revision 1; its AML defines \_S5 (soft-off) with the SLP_TYP the
//         board's PM1_CNT decodes as power off, and the PCI root bridge
//         \_SB.PCI0 (PNP0A03): with ACPI, Linux finds PCI bus 0 only through
//         it. Its _CRS gives bus 0-255, config ports 0xCF8-0xCFF, the I/O
//         ranges around them and the MMIO window for BARs; its _PRT says
//         which ISA IRQ each slot's INTA# drives (PIC mode: GSI = IRQ)
//
// Nothing here knows the board: the caller gives the addresses and numbers,
// and writes the image at `base` in guest memory.
#pragma once
#include <vector>

#include "base/types.h"

namespace popek::boot {

struct AcpiConfig {
  u32 base = 0;          // guest-physical address of the image (16-byte aligned, RSDP first)
  u16 pm1a_evt = 0;      // PM1a_EVT_BLK: PM1_STS, PM1_EN (4 bytes)
  u16 pm1a_cnt = 0;      // PM1a_CNT_BLK: PM1_CNT (2 bytes)
  u16 sci_irq = 9;       // ISA IRQ of the SCI
  u8 century = 0;        // CMOS index of the century byte (0: none)
  u8 s5_slp_typ = 0;     // SLP_TYPa/b for \_S5 (3 bits)
  u32 pci_mmio_base = 0, pci_mmio_end = 0;  // BAR window [base, end)
  u8 pci_inta_irq[32] = {};  // ISA IRQ of slot s's INTA# (0: no _PRT entry)
};

// Where each table sits, as offsets into the image.
struct AcpiImage {
  std::vector<u8> bytes;
  u32 rsdp = 0, rsdt = 0, fadt = 0, facs = 0, dsdt = 0;
};

AcpiImage build_acpi_tables(const AcpiConfig& cfg);

// The 8-bit sum of `n` bytes (a valid table sums to 0).
u8 acpi_sum(const u8* p, usize n);

}  // namespace popek::boot
