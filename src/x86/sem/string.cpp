// String instructions with REP/REPE/REPNE: MOVS, CMPS, STOS, LODS, SCAS, INS,
// OUTS. Each iteration commits ESI/EDI/ECX, so a fault restarts precisely; a
// long REP yields after a bounded number of iterations (EIP stays on the
// instruction) so interrupts are taken.
#include "x86/arith.h"
#include "x86/sem/sem.h"

namespace popek::x86 {
namespace {

constexpr u32 kMaxIterations = 4096;

struct StrRegs {
  Cpu& c;
  bool a32;
  u32 get(unsigned r) const { return a32 ? c.s.gpr[r] : (c.s.gpr[r] & 0xFFFF); }
  void add(unsigned r, i32 d) {
    if (a32) c.s.gpr[r] += d;
    else c.set_reg<u16>(r, u16(c.s.gpr[r] + d));
  }
};

enum StrK { S_MOVS, S_CMPS, S_STOS, S_LODS, S_SCAS, S_INS, S_OUTS };

template <StrK K, typename T>
inline void one(Cpu& c, const Insn& i, StrRegs& r, i32 d) {
  if constexpr (K == S_MOVS) {
    T v = c.read<T>(i.seg, r.get(ESI));
    c.write<T>(ES, r.get(EDI), v);
    r.add(ESI, d);
    r.add(EDI, d);
  } else if constexpr (K == S_CMPS) {
    T a = c.read<T>(i.seg, r.get(ESI));
    T b = c.read<T>(ES, r.get(EDI));
    arith::sub(a, b, c.s.eflags);
    r.add(ESI, d);
    r.add(EDI, d);
  } else if constexpr (K == S_STOS) {
    c.write<T>(ES, r.get(EDI), c.reg<T>(EAX));
    r.add(EDI, d);
  } else if constexpr (K == S_LODS) {
    c.set_reg<T>(EAX, c.read<T>(i.seg, r.get(ESI)));
    r.add(ESI, d);
  } else if constexpr (K == S_SCAS) {
    T b = c.read<T>(ES, r.get(EDI));
    arith::sub(c.reg<T>(EAX), b, c.s.eflags);
    r.add(EDI, d);
  } else if constexpr (K == S_INS) {
    // The destination is checked before the port is read (an IN has side effects).
    u32 la = c.linear(ES, r.get(EDI), sizeof(T), true);
    c.mem.probe_write(la, sizeof(T), c.user());
    T v = T(c.plat.io_in(u16(c.s.gpr[EDX]), sizeof(T)));
    c.write<T>(ES, r.get(EDI), v);
    r.add(EDI, d);
  } else {
    T v = c.read<T>(i.seg, r.get(ESI));
    c.plat.io_out(u16(c.s.gpr[EDX]), sizeof(T), v);
    r.add(ESI, d);
  }
}

template <StrK K, typename T>
void h_str(Cpu& c, const Insn& i) {
  if constexpr (K == S_INS || K == S_OUTS) c.check_io(u16(c.s.gpr[EDX]), sizeof(T));
  StrRegs r{c, i.asize == 4};
  const i32 d = (c.s.eflags & DF) ? -i32(sizeof(T)) : i32(sizeof(T));
  if (!i.rep()) {
    one<K, T>(c, i, r, d);
    return;
  }
  constexpr bool cond = K == S_CMPS || K == S_SCAS;
  for (u32 n = 0; n < kMaxIterations; n++) {
    if (r.get(ECX) == 0) return;
    one<K, T>(c, i, r, d);
    r.add(ECX, -1);
    if (cond) {
      bool zf = c.s.eflags & ZF;
      if ((i.prefixes & P_REP) ? !zf : zf) return;
    }
  }
  if (r.get(ECX) != 0) c.next_eip = c.s.eip;  // resume: interrupts may come in between
}

}  // namespace

#define STR_ROWS(B, V, K)                                        \
  t.set(Op::B, h_str<K, u8>, h_str<K, u8>, h_str<K, u8>);        \
  t.set(Op::V, nullptr, h_str<K, u16>, h_str<K, u32>);

void register_string(HandlerTable& t) {
  STR_ROWS(MOVSB, MOVSV, S_MOVS)
  STR_ROWS(CMPSB, CMPSV, S_CMPS)
  STR_ROWS(STOSB, STOSV, S_STOS)
  STR_ROWS(LODSB, LODSV, S_LODS)
  STR_ROWS(SCASB, SCASV, S_SCAS)
  STR_ROWS(INSB, INSV, S_INS)
  STR_ROWS(OUTSB, OUTSV, S_OUTS)
}

}  // namespace popek::x86
