#include "x86/disasm.h"

#include <Zydis/Zydis.h>

namespace popek::x86 {
std::string disassemble(const u8* bytes, unsigned len, bool code32, u32 eip) {
  ZydisDisassembledInstruction ins;
  if (ZYAN_SUCCESS(ZydisDisassembleIntel(code32 ? ZYDIS_MACHINE_MODE_LEGACY_32
                                                : ZYDIS_MACHINE_MODE_LEGACY_16,
                                         eip, bytes, len, &ins)))
    return ins.text;
  return "(bad)";
}

std::string disassemble_host(const u8* bytes, unsigned avail, u64 address, unsigned* len) {
  ZydisDisassembledInstruction ins;
  if (ZYAN_SUCCESS(ZydisDisassembleIntel(ZYDIS_MACHINE_MODE_LONG_64, address, bytes, avail, &ins))) {
    *len = ins.info.length;
    return ins.text;
  }
  *len = 1;
  return "(bad)";
}
}  // namespace popek::x86
