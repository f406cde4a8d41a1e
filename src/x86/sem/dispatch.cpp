// Binds every table row to its handler. Rows without a handler (none should
// remain; the test suite checks) raise #UD through the Unimplemented path, so a
// gap fails loudly instead of doing something silently wrong.
#include "x86/sem/sem.h"

namespace popek::x86 {
namespace {

void h_unimplemented(Cpu&, const Insn& i) { throw Unimplemented{i.info().name}; }

struct Table {
  HandlerTable t;
  Table() {
    register_alu(t);
    register_move(t);
    register_ctrl(t);
    register_string(t);
    register_system(t);
    register_x87(t);
    register_mmx(t);
  }
};
const Table& table() {
  static const Table t;
  return t;
}

}  // namespace

Handler handler_for(const Insn& i) {
  unsigned idx = i.osize == 1 ? 0 : i.osize == 2 ? 1 : 2;
  Handler h = table().t.h[unsigned(i.op)][idx];
  return h ? h : h_unimplemented;
}

EarlyCheck early_check_for(const Insn& i) {
  unsigned idx = i.osize == 1 ? 0 : i.osize == 2 ? 1 : 2;
  return table().t.e[unsigned(i.op)][idx];
}

bool has_handler(Op op, unsigned size_index) {
  return table().t.h[unsigned(op)][size_index] != nullptr;
}

}  // namespace popek::x86
