// Disassembly for --trace and divergence reports (Zydis, Intel syntax).
#pragma once
#include <string>

#include "base/types.h"

namespace popek::x86 {
// Disassembles one instruction at `bytes`; returns "(bad)" if it cannot.
std::string disassemble(const u8* bytes, unsigned len, bool code32, u32 eip);
}  // namespace popek::x86
