// Data movement and the stack: MOV forms, MOVZX/MOVSX, LEA, XCHG, XLAT,
// PUSH/POP (general and segment registers), PUSHA/POPA, ENTER/LEAVE, NOPs.
#include "x86/sem/sem.h"

namespace popek::x86 {
namespace {

template <typename T> void h_mov_EG(Cpu& c, const Insn& i) { c.write_rm<T>(i, c.reg<T>(i.reg)); }
template <typename T> void h_mov_GE(Cpu& c, const Insn& i) { c.set_reg<T>(i.reg, c.read_rm<T>(i)); }
template <typename T> void h_mov_EI(Cpu& c, const Insn& i) { c.write_rm<T>(i, T(i.imm)); }
template <typename T> void h_mov_rI(Cpu& c, const Insn& i) { c.set_reg<T>(i.opcode & 7, T(i.imm)); }
template <typename T> void h_mov_AO(Cpu& c, const Insn& i) { c.set_reg<T>(EAX, c.read<T>(i.seg, i.imm)); }
template <typename T> void h_mov_OA(Cpu& c, const Insn& i) { c.write<T>(i.seg, i.imm, c.reg<T>(EAX)); }
template <typename T> void h_movzx_b(Cpu& c, const Insn& i) { c.set_reg<T>(i.reg, T(c.read_rm<u8>(i))); }
template <typename T> void h_movzx_w(Cpu& c, const Insn& i) { c.set_reg<T>(i.reg, T(c.read_rm<u16>(i))); }
template <typename T> void h_movsx_b(Cpu& c, const Insn& i) { c.set_reg<T>(i.reg, T(i32(i8(c.read_rm<u8>(i))))); }
template <typename T> void h_movsx_w(Cpu& c, const Insn& i) { c.set_reg<T>(i.reg, T(i32(i16(c.read_rm<u16>(i))))); }
// Early checks (EarlyCheck) of the MOV forms: their one memory access, as
// the handler's read or write would find it, is their only fault.
template <typename T, bool W> bool e_mov_rm(Cpu& c, const Insn& i, Fault* f) {
  return i.mem && c.access_faults(i.seg, c.ea(i), sizeof(T), W, f);
}
template <typename T, bool W> bool e_mov_moffs(Cpu& c, const Insn& i, Fault* f) {
  return c.access_faults(i.seg, i.imm, sizeof(T), W, f);
}
template <typename T> bool e_mov_load(Cpu& c, const Insn& i, Fault* f) { return e_mov_rm<T, false>(c, i, f); }
template <typename T> bool e_mov_store(Cpu& c, const Insn& i, Fault* f) { return e_mov_rm<T, true>(c, i, f); }
template <typename T> bool e_mov_AO(Cpu& c, const Insn& i, Fault* f) { return e_mov_moffs<T, false>(c, i, f); }
template <typename T> bool e_mov_OA(Cpu& c, const Insn& i, Fault* f) { return e_mov_moffs<T, true>(c, i, f); }
// PUSH of a register or an immediate: its one access, the stack write.
template <typename T> bool e_push(Cpu& c, const Insn&, Fault* f) {
  return c.access_faults(SS, c.sp_add(c.sp(), -i32(sizeof(T))), sizeof(T), true, f);
}
template <typename T> void h_lea(Cpu& c, const Insn& i) { c.set_reg<T>(i.reg, T(c.ea(i))); }

template <typename T> void h_xchg(Cpu& c, const Insn& i) {
  T r = c.reg<T>(i.reg);
  if (i.mem) {
    u32 off = c.ea(i);
    T m = c.read<T>(i.seg, off);
    c.write<T>(i.seg, off, r);
    c.set_reg<T>(i.reg, m);
  } else {
    T m = c.reg<T>(i.rm);
    c.set_reg<T>(i.rm, r);
    c.set_reg<T>(i.reg, m);
  }
}
template <typename T> void h_xchg_a(Cpu& c, const Insn& i) {
  unsigned r = i.opcode & 7;
  T a = c.reg<T>(EAX);
  c.set_reg<T>(EAX, c.reg<T>(r));
  c.set_reg<T>(r, a);
}
void h_xlat(Cpu& c, const Insn& i) {
  u32 off = c.s.gpr[EBX] + u8(c.s.gpr[EAX]);
  if (i.asize == 2) off &= 0xFFFF;
  c.set_reg8(0, c.read<u8>(i.seg, off));
}
void h_nop(Cpu&, const Insn&) {}

// ---- stack ----
template <typename T> void h_push_r(Cpu& c, const Insn& i) { c.push<T>(c.reg<T>(i.opcode & 7)); }
template <typename T> void h_pop_r(Cpu& c, const Insn& i) {
  T v = c.pop<T>();
  c.set_reg<T>(i.opcode & 7, v);
}
template <typename T> void h_push_I(Cpu& c, const Insn& i) { c.push<T>(T(i.imm)); }
template <typename T> void h_push_E(Cpu& c, const Insn& i) { c.push<T>(c.read_rm<T>(i)); }
template <typename T> void h_pop_E(Cpu& c, const Insn& i) {
  // The destination address is computed with ESP already incremented.
  const u32 old = c.s.gpr[ESP];
  T v = c.read<T>(SS, c.sp());
  c.set_sp(c.sp_add(c.sp(), sizeof(T)));
  try {
    c.write_rm<T>(i, v);
  } catch (...) {
    c.s.gpr[ESP] = old;
    throw;
  }
}
template <unsigned Seg, typename T> void h_push_seg(Cpu& c, const Insn&) {
  if constexpr (sizeof(T) == 4) {
    // A 32-bit push of a segment register writes only the low 16 bits (current CPUs).
    u32 nsp = c.sp_add(c.sp(), -4);
    c.write<u16>(SS, nsp, c.s.seg[Seg].sel);
    c.set_sp(nsp);
  } else {
    c.push<u16>(c.s.seg[Seg].sel);
  }
}
template <unsigned Seg, typename T> void h_pop_seg(Cpu& c, const Insn&) {
  u16 sel = u16(c.read<T>(SS, c.sp()));
  // The pop moves the stack pointer by the rule of the stack it read from
  // (the SDM's StackAddrSize, taken before the load): a POP SS that changes
  // SS.B still wraps SP at 64 KiB, or not, as the old stack did.
  const u32 esp = c.esp_for_sp(c.sp_add(c.sp(), sizeof(T)));
  load_seg(c, Seg, sel);
  c.s.gpr[ESP] = esp;
  if (Seg == SS) c.s.intr_shadow = SHADOW_MOV_SS;
}
template <typename T> void h_pusha(Cpu& c, const Insn&) {
  u32 sp = c.sp();
  const u32 esp0 = c.s.gpr[ESP];
  for (unsigned r = 0; r < 8; r++) {
    sp = c.sp_add(sp, -i32(sizeof(T)));
    c.write<T>(SS, sp, T(r == ESP ? esp0 : c.s.gpr[r]));
  }
  c.set_sp(sp);
}
template <typename T> void h_popa(Cpu& c, const Insn&) {
  u32 sp = c.sp();
  T v[8];
  for (unsigned r = 8; r-- > 0;) {
    v[r] = c.read<T>(SS, sp);
    sp = c.sp_add(sp, sizeof(T));
  }
  for (unsigned r = 0; r < 8; r++)
    if (r != ESP) c.set_reg<T>(r, v[r]);
  c.set_sp(sp);
}
template <typename T> void h_enter(Cpu& c, const Insn& i) {
  const u16 size = u16(i.imm);
  const unsigned level = i.imm2 & 31;
  u32 sp = c.sp();
  const u32 bp = c.stack32() ? c.s.gpr[EBP] : (c.s.gpr[EBP] & 0xFFFF);
  sp = c.sp_add(sp, -i32(sizeof(T)));
  c.write<T>(SS, sp, T(c.s.gpr[EBP]));
  // The frame pointer is ESP after that push: on a 16-bit stack with a
  // 32-bit operand size, EBP gets ESP's upper half too (real CPUs; the SDM's
  // pseudo-code says SP).
  const u32 frame = c.esp_for_sp(sp);
  if (level > 0) {
    u32 b = bp;
    for (unsigned k = 1; k < level; k++) {
      b = c.sp_add(b, -i32(sizeof(T)));
      T v = c.read<T>(SS, b);
      sp = c.sp_add(sp, -i32(sizeof(T)));
      c.write<T>(SS, sp, v);
    }
    sp = c.sp_add(sp, -i32(sizeof(T)));
    c.write<T>(SS, sp, T(frame));
  }
  sp = c.sp_add(sp, -i32(size));
  // Last, a write check (segment and page, no write) of an operand at the
  // final stack pointer: a fault there leaves the registers as they were.
  c.mem.probe_write(c.linear(SS, sp, sizeof(T), true), sizeof(T), c.user());
  c.set_reg<T>(EBP, T(frame));
  c.set_sp(sp);
}
template <typename T> void h_leave(Cpu& c, const Insn&) {
  u32 bp = c.stack32() ? c.s.gpr[EBP] : (c.s.gpr[EBP] & 0xFFFF);
  T v = c.read<T>(SS, bp);
  c.set_sp(c.sp_add(bp, sizeof(T)));
  c.set_reg<T>(EBP, v);
}

}  // namespace

#define SIZES(f) f<u8>, f<u16>, f<u32>
void register_move(HandlerTable& t) {
  t.set(Op::MOV_EbGb, SIZES(h_mov_EG));
  t.set(Op::MOV_EvGv, SIZES(h_mov_EG));
  t.set(Op::MOV_GbEb, SIZES(h_mov_GE));
  t.set(Op::MOV_GvEv, SIZES(h_mov_GE));
  t.set(Op::MOV_EbIb, SIZES(h_mov_EI));
  t.set(Op::MOV_EvIz, SIZES(h_mov_EI));
  t.set(Op::MOV_rbIb, SIZES(h_mov_rI));
  t.set(Op::MOV_rIv, SIZES(h_mov_rI));
  t.set(Op::MOV_ALOb, SIZES(h_mov_AO));
  t.set(Op::MOV_eAXOv, SIZES(h_mov_AO));
  t.set(Op::MOV_ObAL, SIZES(h_mov_OA));
  t.set(Op::MOV_OveAX, SIZES(h_mov_OA));
  t.set(Op::MOVZX_GvEb, nullptr, h_movzx_b<u16>, h_movzx_b<u32>);
  t.set(Op::MOVZX_GvEw, nullptr, h_movzx_w<u16>, h_movzx_w<u32>);
  t.set(Op::MOVSX_GvEb, nullptr, h_movsx_b<u16>, h_movsx_b<u32>);
  t.set(Op::MOVSX_GvEw, nullptr, h_movsx_w<u16>, h_movsx_w<u32>);
  t.set_early(Op::PUSH_r, nullptr, e_push<u16>, e_push<u32>);
  t.set_early(Op::PUSH_Iz, nullptr, e_push<u16>, e_push<u32>);
  t.set_early(Op::PUSH_Ib, nullptr, e_push<u16>, e_push<u32>);
  t.set_early(Op::MOV_EbGb, SIZES(e_mov_store));
  t.set_early(Op::MOV_EvGv, SIZES(e_mov_store));
  t.set_early(Op::MOV_GbEb, SIZES(e_mov_load));
  t.set_early(Op::MOV_GvEv, SIZES(e_mov_load));
  t.set_early(Op::MOV_EbIb, SIZES(e_mov_store));
  t.set_early(Op::MOV_EvIz, SIZES(e_mov_store));
  t.set_early(Op::MOV_ALOb, SIZES(e_mov_AO));
  t.set_early(Op::MOV_eAXOv, SIZES(e_mov_AO));
  t.set_early(Op::MOV_ObAL, SIZES(e_mov_OA));
  t.set_early(Op::MOV_OveAX, SIZES(e_mov_OA));
  t.set_early(Op::MOVZX_GvEb, nullptr, e_mov_load<u8>, e_mov_load<u8>);
  t.set_early(Op::MOVZX_GvEw, nullptr, e_mov_load<u16>, e_mov_load<u16>);
  t.set_early(Op::MOVSX_GvEb, nullptr, e_mov_load<u8>, e_mov_load<u8>);
  t.set_early(Op::MOVSX_GvEw, nullptr, e_mov_load<u16>, e_mov_load<u16>);
  t.set(Op::LEA, nullptr, h_lea<u16>, h_lea<u32>);
  t.set(Op::XCHG_EbGb, SIZES(h_xchg));
  t.set(Op::XCHG_EvGv, SIZES(h_xchg));
  t.set(Op::XCHG_eAXr, SIZES(h_xchg_a));
  t.set1(Op::XLAT, h_xlat);
  t.set1(Op::NOP, h_nop);
  t.set1(Op::HINT_NOP, h_nop);
  t.set(Op::PUSH_r, nullptr, h_push_r<u16>, h_push_r<u32>);
  t.set(Op::POP_r, nullptr, h_pop_r<u16>, h_pop_r<u32>);
  t.set(Op::PUSH_Iz, nullptr, h_push_I<u16>, h_push_I<u32>);
  t.set(Op::PUSH_Ib, nullptr, h_push_I<u16>, h_push_I<u32>);
  t.set(Op::PUSH_Ev, nullptr, h_push_E<u16>, h_push_E<u32>);
  t.set(Op::POP_Ev, nullptr, h_pop_E<u16>, h_pop_E<u32>);
  t.set(Op::PUSH_ES, nullptr, h_push_seg<ES, u16>, h_push_seg<ES, u32>);
  t.set(Op::PUSH_CS, nullptr, h_push_seg<CS, u16>, h_push_seg<CS, u32>);
  t.set(Op::PUSH_SS, nullptr, h_push_seg<SS, u16>, h_push_seg<SS, u32>);
  t.set(Op::PUSH_DS, nullptr, h_push_seg<DS, u16>, h_push_seg<DS, u32>);
  t.set(Op::PUSH_FS, nullptr, h_push_seg<FS, u16>, h_push_seg<FS, u32>);
  t.set(Op::PUSH_GS, nullptr, h_push_seg<GS, u16>, h_push_seg<GS, u32>);
  t.set(Op::POP_ES, nullptr, h_pop_seg<ES, u16>, h_pop_seg<ES, u32>);
  t.set(Op::POP_SS, nullptr, h_pop_seg<SS, u16>, h_pop_seg<SS, u32>);
  t.set(Op::POP_DS, nullptr, h_pop_seg<DS, u16>, h_pop_seg<DS, u32>);
  t.set(Op::POP_FS, nullptr, h_pop_seg<FS, u16>, h_pop_seg<FS, u32>);
  t.set(Op::POP_GS, nullptr, h_pop_seg<GS, u16>, h_pop_seg<GS, u32>);
  t.set(Op::PUSHA, nullptr, h_pusha<u16>, h_pusha<u32>);
  t.set(Op::POPA, nullptr, h_popa<u16>, h_popa<u32>);
  t.set(Op::ENTER, nullptr, h_enter<u16>, h_enter<u32>);
  t.set(Op::LEAVE, nullptr, h_leave<u16>, h_leave<u32>);
}

}  // namespace popek::x86
