// String instructions with REP/REPE/REPNE: MOVS, CMPS, STOS, LODS, SCAS, INS,
// OUTS. Each iteration commits ESI/EDI/ECX, so a fault restarts precisely; a
// long REP yields after a bounded number of iterations (EIP stays on the
// instruction) so interrupts are taken, and after each one when TF is set.
#include <cstring>

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

// REP MOVS/STOS forward with 32-bit addressing: one element through the
// normal path (it faults, fills the TLB and checks the segments), then the
// rest of the page at once through host pointers. Watched pages (code) and
// MMIO have no direct pointer and go element by element. Returns true when
// the instruction is complete or yields (next_eip set as the loop would).
template <StrK K, typename T>
bool bulk(Cpu& c, const Insn& i, StrRegs& r) {
  bool done = false;
  while (r.get(ECX) != 0) {
    if (done && rep_yield_point(r.get(ECX))) {
      c.next_eip = c.s.eip;
      return true;
    }
    one<K, T>(c, i, r, sizeof(T));
    r.add(ECX, -1);
    done = true;
    u32 n = r.get(ECX);
    if (n == 0) return true;
    const u32 edi = r.get(EDI);
    const u32 dst_room = (4096 - ((c.s.seg[ES].base + edi) & 0xFFF)) / sizeof(T);
    u32 k = n < dst_room ? n : dst_room;
    if ((n & 0xFFFF) < k) k = n & 0xFFFF;  // up to the next yield point
    const u32 esi = K == S_MOVS ? r.get(ESI) : 0;
    if constexpr (K == S_MOVS) {
      const u32 src_room = (4096 - ((c.s.seg[i.seg].base + esi) & 0xFFF)) / sizeof(T);
      if (src_room < k) k = src_room;
    }
    if (k == 0) continue;
    const u32 bytes = k * sizeof(T);
    // The whole run must pass the segment checks; otherwise the element loop
    // finds the exact element that faults.
    auto seg_ok = [&](unsigned sg, u32 off, bool write) {
      const Segment& g = c.s.seg[sg];
      if (!c.s.pe() || c.s.vm86()) return off <= g.limit && bytes - 1 <= g.limit - off;
      return g.usable() && !g.expand_down() && (write ? g.writable() : g.readable()) &&
             off <= g.limit && bytes - 1 <= g.limit - off;
    };
    if (!seg_ok(ES, edi, true)) continue;
    u8* dst = c.mem.direct(c.s.seg[ES].base + edi, bytes, true, c.user());
    if (!dst) continue;
    if constexpr (K == S_MOVS) {
      if (!seg_ok(i.seg, esi, false)) continue;
      const u8* src = c.mem.direct(c.s.seg[i.seg].base + esi, bytes, false, c.user());
      if (!src) continue;
      if (dst > src && dst < src + bytes) {
        for (u32 b = 0; b < bytes; b += sizeof(T)) std::memcpy(dst + b, src + b, sizeof(T));
      } else {
        std::memmove(dst, src, bytes);
      }
      r.add(ESI, i32(bytes));
    } else {
      const T v = c.reg<T>(EAX);
      for (u32 b = 0; b < bytes; b += sizeof(T)) std::memcpy(dst + b, &v, sizeof(T));
    }
    r.add(EDI, i32(bytes));
    r.add(ECX, -i32(k));
  }
  return true;
}

// REPNE SCASB forward (strlen, memchr): bytes that compare unequal change
// EDI, ECX and the flags, and the flags of the next compare replace them; so
// up to a page is skipped at once with memchr and the byte after the skipped
// run goes through the normal compare. Same yield rule as bulk().
void scan_bytes(Cpu& c, const Insn& i, StrRegs& r) {
  bool done = false;
  while (r.get(ECX) != 0) {
    if (done && rep_yield_point(r.get(ECX))) {
      c.next_eip = c.s.eip;
      return;
    }
    const u32 n = r.get(ECX);
    const u32 edi = r.get(EDI);
    const Segment& g = c.s.seg[ES];
    // Skip at most up to the next yield point, leaving the last element of
    // the round to the normal compare.
    u32 k = (n - 1) & 0xFFFF;
    const u32 room = 4096 - ((g.base + edi) & 0xFFF);
    if (room < k) k = room;
    const bool seg_ok = (!c.s.pe() || c.s.vm86() || (g.usable() && !g.expand_down() && g.readable())) &&
                        k > 0 && edi <= g.limit && k - 1 <= g.limit - edi;
    const u8* p = seg_ok ? c.mem.direct(g.base + edi, k, false, c.user()) : nullptr;
    if (p) {
      const void* hit = std::memchr(p, u8(c.s.gpr[EAX]), k);
      const u32 skip = hit ? u32(static_cast<const u8*>(hit) - p) : k;
      r.add(EDI, i32(skip));
      r.add(ECX, -i32(skip));
      // The flags of the last byte skipped: the next compare may fault, and
      // the handler must see them as the byte-by-byte loop leaves them.
      if (skip > 0) arith::sub(u8(c.s.gpr[EAX]), p[skip - 1], c.s.eflags);
    }
    // Every round ends with a real compare, so the flags (and a yield) always
    // follow the last element compared.
    one<S_SCAS, u8>(c, i, r, 1);
    r.add(ECX, -1);
    done = true;
    if (c.s.eflags & ZF) return;
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
  // Single-stepping (TF) makes each iteration a step of its own: the trap
  // after the instruction follows every iteration, with EIP still on the
  // instruction while iterations remain.
  const bool step = c.s.eflags & TF;
  if constexpr (K == S_MOVS || K == S_STOS) {
    if (!step && i.asize == 4 && d > 0 && bulk<K, T>(c, i, r)) return;
  }
  if constexpr (K == S_SCAS && sizeof(T) == 1) {
    if (!step && i.asize == 4 && d > 0 && (i.prefixes & P_REPNE)) {
      scan_bytes(c, i, r);
      return;
    }
  }
  // REPE/REPNE CMPS and SCAS with 32-bit addressing yield by the rule of
  // bulk() (bt runs REPE/REPNE CMPSB natively and yields at the same points);
  // the rest after kMaxIterations elements.
  const bool by_ecx = cond && i.asize == 4 && !step;
  const u32 max = step ? 1 : kMaxIterations;
  for (u32 n = 0; by_ecx || n < max; n++) {
    if (r.get(ECX) == 0) return;
    if (by_ecx && n > 0 && rep_yield_point(r.get(ECX))) break;
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
