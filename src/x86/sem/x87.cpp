// x87 FPU semantics: being written (see the x87 work item). Until then every
// x87 row has no handler and raises #UD loudly as "unimplemented".
#include "x86/sem/sem.h"

namespace popek::x86 {
void register_x87(HandlerTable&) {}
}  // namespace popek::x86
