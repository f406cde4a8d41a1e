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

// IRQ lines (ISA).
inline constexpr unsigned kIrqPit = 0, kIrqKbd = 1, kIrqCascade = 2, kIrqCom1 = 4, kIrqRtc = 8,
                          kIrqAux = 12;

// Memory.
inline constexpr u64 kBaseMemEnd = 0x9FC00;   // 639 KiB of conventional memory
inline constexpr u64 kBiosStart = 0xF0000;    // reserved (firmware area)
inline constexpr u64 kHighMem = 0x100000;
inline constexpr u32 kBootGdt = 0x6000;       // GDT for the Linux 32-bit entry

}  // namespace popek::machine::pc
