// The PC's address map and IRQ numbers: the one place that knows them.
#pragma once
#include "base/types.h"

namespace popek::machine::pc {

// Port I/O.
inline constexpr u16 kPicMaster = 0x20, kPicSlave = 0xA0, kElcr = 0x4D0;
inline constexpr u16 kPit = 0x40, kPortB = 0x61;
inline constexpr u16 kI8042Data = 0x60, kI8042Cmd = 0x64;
inline constexpr u16 kRtc = 0x70;
inline constexpr u16 kPost = 0x80;
inline constexpr u16 kCom1 = 0x3F8;
inline constexpr u16 kPciConfig = 0xCF8;
inline constexpr u16 kDebugExit = 0xF4;
// ACPI PM1 registers (dev::AcpiPm's window): the PM1a event block (PM1_STS,
// PM1_EN) at kAcpiPm, the PM1a control block (PM1_CNT) at kAcpiPm + 4, as
// on PIIX4-based PCs.
inline constexpr u16 kAcpiPm = 0x600;
inline constexpr u16 kAcpiPm1aEvt = kAcpiPm, kAcpiPm1aCnt = kAcpiPm + 4;

// IRQ lines (ISA).
inline constexpr unsigned kIrqPit = 0, kIrqKbd = 1, kIrqCascade = 2, kIrqCom1 = 4, kIrqRtc = 8,
                          kIrqSci = 9, kIrqAux = 12;

// Memory.
inline constexpr u64 kBaseMemEnd = 0x9FC00;   // 639 KiB of conventional memory
inline constexpr u64 kBiosStart = 0xF0000;    // reserved (firmware area)
// The ACPI tables (boot/acpi_tables.h), RSDP first, where Linux scans for it
// (0xE0000-0xFFFFF); with ACPI the E820 map reserves from here up.
inline constexpr u64 kAcpiTables = 0xE0000;
// The SLP_TYP that the DSDT's \_S5 names and PM1_CNT decodes as power off.
inline constexpr unsigned kSlpTypS5 = 5;
// CMOS index of the RTC's century byte (the FADT's CENTURY says so).
inline constexpr u8 kRtcCentury = 0x32;
inline constexpr u64 kHighMem = 0x100000;
inline constexpr u32 kBootGdt = 0x6000;       // GDT for the Linux 32-bit entry
// Device DMA never targets [kVgaHole, kHighMem): the VGA hole, option ROM and
// BIOS area (reserved in the E820 map).
inline constexpr u64 kVgaHole = 0xA0000;

// PCI: virtio functions from slot kVirtioFirstSlot on (00:00.0 is the host
// bridge); memory BARs assigned from kPciMmioBase as firmware would; INTA# of
// slot s is ISA IRQ kPciIrqs[s % 4] (level-triggered, possibly shared, IRQ 9
// with the ACPI SCI too).
inline constexpr unsigned kVirtioFirstSlot = 1;
inline constexpr u64 kPciMmioBase = 0xE0000000, kPciMmioEnd = 0xFEC00000;
inline constexpr unsigned kPciIrqs[4] = {11, 10, 9, 5};

}  // namespace popek::machine::pc
