// Disassembly for --trace and divergence reports (Zydis, Intel syntax).
#pragma once
#include <string>

#include "base/types.h"

namespace popek::x86 {
// Disassembles one instruction at `bytes`; returns "(bad)" if it cannot.
std::string disassemble(const u8* bytes, unsigned len, bool code32, u32 eip);
// Host (x86-64) code, e.g. a translation: one instruction, its length in *len.
std::string disassemble_host(const u8* bytes, unsigned avail, u64 address, unsigned* len);
}  // namespace popek::x86
