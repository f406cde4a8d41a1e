// Control transfer: near and far JMP/CALL/RET, Jcc, LOOP, JCXZ, INT n, INTO,
// INT3, INT1, IRET, BOUND, UD2.
#include "x86/sem/sem.h"

namespace popek::x86 {
namespace {

inline void jump_near(Cpu& c, u32 target, unsigned osize) {
  if (osize == 2) target &= 0xFFFF;
  if (target > c.s.seg[CS].limit) raise_fault(GP, 0);
  c.next_eip = target;
}

void h_jcc(Cpu& c, const Insn& i) {
  if (c.cond(i.opcode & 15)) jump_near(c, c.next_eip + i.imm, i.osize);
}
void h_jmp_rel(Cpu& c, const Insn& i) { jump_near(c, c.next_eip + i.imm, i.osize); }
template <typename T> void h_call_rel(Cpu& c, const Insn& i) {
  u32 target = c.next_eip + i.imm;
  if (sizeof(T) == 2) target &= 0xFFFF;
  if (target > c.s.seg[CS].limit) raise_fault(GP, 0);
  c.push<T>(T(c.next_eip));
  c.next_eip = target;
}
template <typename T> void h_jmp_E(Cpu& c, const Insn& i) { jump_near(c, c.read_rm<T>(i), sizeof(T)); }
template <typename T> void h_call_E(Cpu& c, const Insn& i) {
  u32 target = c.read_rm<T>(i);
  if (target > c.s.seg[CS].limit) raise_fault(GP, 0);
  c.push<T>(T(c.next_eip));
  c.next_eip = target;
}
template <typename T> void h_ret(Cpu& c, const Insn& i) {
  u32 target = c.read<T>(SS, c.sp());
  if (target > c.s.seg[CS].limit) raise_fault(GP, 0);
  u32 adj = sizeof(T) + (i.op == Op::RET_Iw ? (i.imm & 0xFFFF) : 0);
  c.set_sp(c.sp_add(c.sp(), i32(adj)));
  c.next_eip = target;
}
template <typename T> void h_retf(Cpu& c, const Insn& i) {
  far_return(c, sizeof(T), i.op == Op::RETF_Iw ? u16(i.imm) : 0);
}
template <typename T> void h_jmpf_A(Cpu& c, const Insn& i) {
  far_transfer(c, FarKind::jmp, i.imm2, i.imm, sizeof(T));
}
template <typename T> void h_callf_A(Cpu& c, const Insn& i) {
  far_transfer(c, FarKind::call, i.imm2, i.imm, sizeof(T));
}
template <typename T> void h_jmpf_E(Cpu& c, const Insn& i) {
  u32 off = c.ea(i);
  u32 target = c.read<T>(i.seg, off);
  u16 sel = c.read<u16>(i.seg, off + sizeof(T));
  far_transfer(c, FarKind::jmp, sel, target, sizeof(T));
}
template <typename T> void h_callf_E(Cpu& c, const Insn& i) {
  u32 off = c.ea(i);
  u32 target = c.read<T>(i.seg, off);
  u16 sel = c.read<u16>(i.seg, off + sizeof(T));
  far_transfer(c, FarKind::call, sel, target, sizeof(T));
}

// LOOP/JCXZ count in CX or ECX by address size.
inline u32 count_reg(Cpu& c, const Insn& i) {
  return i.asize == 4 ? c.s.gpr[ECX] : (c.s.gpr[ECX] & 0xFFFF);
}
inline u32 dec_count(Cpu& c, const Insn& i) {
  if (i.asize == 4) return --c.s.gpr[ECX];
  u16 v = u16(c.s.gpr[ECX] - 1);
  c.set_reg<u16>(ECX, v);
  return v;
}
void h_loop(Cpu& c, const Insn& i) {
  u32 n = dec_count(c, i);
  bool take = n != 0;
  if (i.op == Op::LOOPE) take = take && (c.s.eflags & ZF);
  if (i.op == Op::LOOPNE) take = take && !(c.s.eflags & ZF);
  if (take) jump_near(c, c.next_eip + i.imm, i.osize);
}
void h_jcxz(Cpu& c, const Insn& i) {
  if (count_reg(c, i) == 0) jump_near(c, c.next_eip + i.imm, i.osize);
}

// Software interrupts are delivered here, with the next instruction as the
// return address; a fault while delivering is the INT instruction's fault.
void soft_int(Cpu& c, u8 vec, EventKind k) {
  deliver_event(c, vec, k, false, 0, c.next_eip);
  c.next_eip = c.s.eip;
}
void h_int(Cpu& c, const Insn& i) { soft_int(c, u8(i.imm), EventKind::software); }
void h_int3(Cpu& c, const Insn&) { soft_int(c, BP, EventKind::software_exc); }
void h_into(Cpu& c, const Insn&) {
  if (c.s.eflags & OF) soft_int(c, OF_V, EventKind::software_exc);
}
void h_int1(Cpu& c, const Insn&) { soft_int(c, DB, EventKind::icebp); }
template <typename T> void h_iret(Cpu& c, const Insn&) { do_iret(c, sizeof(T)); }

template <typename T> void h_bound(Cpu& c, const Insn& i) {
  using S = std::make_signed_t<T>;
  u32 off = c.ea(i);
  S lo = S(c.read<T>(i.seg, off));
  S hi = S(c.read<T>(i.seg, off + sizeof(T)));
  S v = S(c.reg<T>(i.reg));
  if (v < lo || v > hi) raise_fault(BR);
}
void h_ud2(Cpu&, const Insn&) { raise_fault(UD); }

}  // namespace

void register_ctrl(HandlerTable& t) {
  t.set1(Op::JCC_Jb, h_jcc);
  t.set1(Op::JCC_Jz, h_jcc);
  t.set1(Op::JMP_Jb, h_jmp_rel);
  t.set1(Op::JMP_Jz, h_jmp_rel);
  t.set(Op::CALL_Jz, nullptr, h_call_rel<u16>, h_call_rel<u32>);
  t.set(Op::JMP_Ev, nullptr, h_jmp_E<u16>, h_jmp_E<u32>);
  t.set(Op::CALL_Ev, nullptr, h_call_E<u16>, h_call_E<u32>);
  t.set(Op::RET, nullptr, h_ret<u16>, h_ret<u32>);
  t.set(Op::RET_Iw, nullptr, h_ret<u16>, h_ret<u32>);
  t.set(Op::RETF, nullptr, h_retf<u16>, h_retf<u32>);
  t.set(Op::RETF_Iw, nullptr, h_retf<u16>, h_retf<u32>);
  t.set(Op::JMPF_Ap, nullptr, h_jmpf_A<u16>, h_jmpf_A<u32>);
  t.set(Op::CALLF_Ap, nullptr, h_callf_A<u16>, h_callf_A<u32>);
  t.set(Op::JMPF_Ep, nullptr, h_jmpf_E<u16>, h_jmpf_E<u32>);
  t.set(Op::CALLF_Ep, nullptr, h_callf_E<u16>, h_callf_E<u32>);
  t.set1(Op::LOOP, h_loop);
  t.set1(Op::LOOPE, h_loop);
  t.set1(Op::LOOPNE, h_loop);
  t.set1(Op::JCXZ, h_jcxz);
  t.set1(Op::INT_Ib, h_int);
  t.set1(Op::INT3, h_int3);
  t.set1(Op::INTO, h_into);
  t.set1(Op::INT1, h_int1);
  t.set(Op::IRET, nullptr, h_iret<u16>, h_iret<u32>);
  t.set(Op::BOUND, nullptr, h_bound<u16>, h_bound<u32>);
  t.set1(Op::UD2, h_ud2);
}

}  // namespace popek::x86
