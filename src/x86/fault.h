// Exceptions as values. Semantics raise a Fault; the engine catches it at the
// instruction boundary (EIP still at the faulting instruction, registers as
// before it) and delivers it through the IDT with x86::deliver_event().
#pragma once
#include "base/types.h"

namespace popek::x86 {

enum Vector : u8 {
  DE = 0, DB = 1, NMI_V = 2, BP = 3, OF_V = 4, BR = 5, UD = 6, NM = 7, DF_V = 8,
  TS = 10, NP = 11, SS_V = 12, GP = 13, PF_V = 14, MF = 16, AC_V = 17, MC = 18, XM = 19,
};

struct Fault {
  u8 vector;
  bool has_error;
  u32 error;
};

[[noreturn]] void raise_fault(u8 vector);
[[noreturn]] void raise_fault(u8 vector, u32 error);

// Page-fault error code bits.
enum : u32 { PFE_P = 1, PFE_W = 2, PFE_U = 4, PFE_RSVD = 8, PFE_I = 16 };

}  // namespace popek::x86
