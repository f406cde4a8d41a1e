// The execution context semantics run in: the architectural state, the linear
// memory (paging and soft TLB, implemented in memory/), and the platform (ports,
// time). Semantics in this library are shared by every software engine: the
// interpreter runs them per instruction, the translator calls them for
// sensitive instructions and slow paths.
#pragma once
#include <cstring>

#include "base/bits.h"
#include "base/types.h"
#include "x86/cpu_state.h"
#include "x86/fault.h"
#include "x86/insn.h"

namespace popek::x86 {

// Long REP MOVS/STOS/SCAS/CMPS runs leave EIP on the instruction (so interrupts
// come in) whenever, after at least one element, ECX is a non-zero multiple of
// 65536: a point that depends only on ECX, so every engine and fast path
// (page-at-a-time copies, translated loops) yields at the same places.
inline bool rep_yield_point(u32 ecx) { return (ecx & 0xFFFF) == 0; }

// Guest linear memory with paging. `user` checks the access as CPL 3 (false for
// the implicit supervisor accesses to descriptor tables and the TSS).
// Accesses may cross pages; both pages are checked before anything is written.
// Raises #PF (setting CR2) on failure.
class LinearMem {
 public:
  virtual ~LinearMem() = default;
  virtual u32 read(u32 la, unsigned size, bool user) = 0;
  virtual void write(u32 la, unsigned size, u32 value, bool user) = 0;
  virtual u64 read64(u32 la, bool user) = 0;
  virtual void write64(u32 la, u64 value, bool user) = 0;
  // Checks that [la, la+size) may be written (faulting if not) without writing.
  virtual void probe_write(u32 la, unsigned size, bool user) = 0;
  // Whether an access of [la, la+size) would fault, found the way the access
  // itself finds it (TLB fills, accessed and dirty bits, CR2 on a #PF) but
  // returned, not raised: true with the #PF error code in *err. False if the
  // access would not fault, or if this memory cannot tell without the access
  // (the default): the access then raises its own fault.
  virtual bool access_fault(u32 la, unsigned size, bool write, bool user, u32* err) { return false; }
  // TLB maintenance, called where x86 flushes its TLB.
  virtual void flush_tlb(bool global) = 0;
  virtual void invlpg(u32 la) = 0;
  // Host address of [la, la+len) if it lies in one page that is already
  // mapped for this access as plain RAM (no page walk, no fault, no watched
  // page); null otherwise. Lets REP string work copy a page at a time.
  virtual u8* direct(u32 la, u32 len, bool write, bool user) { return nullptr; }
};

// What the CPU sees of the board.
class Platform {
 public:
  virtual ~Platform() = default;
  virtual u32 io_in(u16 port, unsigned size) = 0;
  virtual void io_out(u16 port, unsigned size, u32 value) = 0;
  // Time-stamp counter before the guest's offset (CpuState::msr.tsc_offset).
  virtual u64 tsc() = 0;
  // INTA cycle: the vector of the highest-priority pending interrupt.
  virtual u8 intr_ack() = 0;
  // FERR#/IGNNE# path for x87 errors with CR0.NE = 0 (raises IRQ 13 on a PC).
  virtual void fpu_error() {}
  // KVM's paravirtual interface (x86/paravirt.h) is on for this machine.
  virtual bool paravirt() { return false; }
  // Guest-physical RAM the VMM reads and writes on its own account (the
  // pvclock structures): like a device's DMA, translated code there is
  // dropped. False if any byte is not RAM.
  virtual bool read_phys(u64 pa, void* dst, unsigned len) { return false; }
  virtual bool write_phys(u64 pa, const void* src, unsigned len) { return false; }
  // Wall-clock time (ns since 1970, UTC) at which the virtual clock read 0.
  virtual u64 wall_clock_epoch_ns() { return 0; }
};

// Why a handler asks the engine to leave its loop after the instruction.
enum class StopReason : u8 { none, halt, shutdown, mode_change, io };

enum class EventKind : u8 {
  external,      // INTR from the interrupt controller
  nmi,
  exception,     // fault or trap raised by the CPU
  software,      // INT n
  software_exc,  // INT3, INTO: software, but checked like INT n
  icebp,         // INT1
};

class Cpu {
 public:
  Cpu(CpuState& s, LinearMem& mem, Platform& plat) : s(s), mem(mem), plat(plat) {}

  CpuState& s;
  LinearMem& mem;
  Platform& plat;

  u32 next_eip = 0;       // EIP after the current instruction; control transfers set it
  StopReason stop = StopReason::none;

  // ---- registers ----
  template <typename T> T reg(unsigned r) const;
  template <typename T> void set_reg(unsigned r, T v);
  u8 reg8(unsigned r) const { return r < 4 ? u8(s.gpr[r]) : u8(s.gpr[r - 4] >> 8); }
  void set_reg8(unsigned r, u8 v) {
    if (r < 4) s.gpr[r] = (s.gpr[r] & ~0xFFu) | v;
    else s.gpr[r - 4] = (s.gpr[r - 4] & ~0xFF00u) | (u32(v) << 8);
  }

  // ---- segmentation ----
  bool user() const { return s.cpl == 3; }
  // Offset -> linear address with the limit and rights checks of a data access.
  u32 linear(unsigned seg, u32 off, unsigned size, bool write) {
    const Segment& sg = s.seg[seg];
    if (POPEK_LIKELY(!sg.expand_down() && off <= sg.limit && size - 1 <= sg.limit - off &&
                     (write ? sg.writable() || !s.pe() || s.vm86() : sg.readable()) &&
                     (sg.usable() || !s.pe()))) {
      return sg.base + off;
    }
    return linear_slow(seg, off, size, write);
  }
  u32 linear_slow(unsigned seg, u32 off, unsigned size, bool write);

  template <typename T> T read(unsigned seg, u32 off) {
    u32 la = linear(seg, off, sizeof(T), false);
    if constexpr (sizeof(T) == 8) return mem.read64(la, user());
    else return T(mem.read(la, sizeof(T), user()));
  }
  template <typename T> void write(unsigned seg, u32 off, T v) {
    u32 la = linear(seg, off, sizeof(T), true);
    if constexpr (sizeof(T) == 8) mem.write64(la, v, user());
    else mem.write(la, sizeof(T), u32(v), user());
  }
  // The fault an access of `seg`:`off` would raise first (segmentation's,
  // raised; paging's, returned in *f as access_fault finds it): true if it
  // would raise a #PF, false if not or if the memory cannot tell.
  bool access_faults(unsigned seg, u32 off, unsigned size, bool write, Fault* f) {
    const u32 la = linear(seg, off, size, write);
    u32 err;
    if (POPEK_LIKELY(!mem.access_fault(la, size, write, user(), &err))) return false;
    *f = Fault{PF_V, true, err};
    return true;
  }
  // The value read_rm<T> would read if it can be had without a fault or an
  // effect (a register, or memory the TLB maps as RAM); false otherwise.
  // Segmentation's faults are raised as read_rm raises them.
  template <typename T> bool peek_rm(const Insn& i, T* v) {
    if (!i.mem) {
      *v = reg<T>(i.rm);
      return true;
    }
    const u8* p = mem.direct(linear(i.seg, ea(i), sizeof(T), false), sizeof(T), false, user());
    if (!p) return false;
    std::memcpy(v, p, sizeof(T));
    return true;
  }

  // Supervisor-implicit accesses (descriptor tables, TSS).
  u32 sys_read(u32 la, unsigned size) { return mem.read(la, size, false); }
  u64 sys_read64(u32 la) { return mem.read64(la, false); }
  void sys_write(u32 la, unsigned size, u32 v) { mem.write(la, size, v, false); }

  // ---- operands of a decoded instruction ----
  u32 ea(const Insn& i) const {
    u32 a = i.disp;
    if (i.base != kNoReg) a += s.gpr[i.base];
    if (i.index != kNoReg) a += s.gpr[i.index] << i.scale;
    return i.asize == 2 ? (a & 0xFFFF) : a;
  }
  template <typename T> T read_rm(const Insn& i) {
    if (i.mem) return read<T>(i.seg, ea(i));
    return reg<T>(i.rm);
  }
  template <typename T> void write_rm(const Insn& i, T v) {
    if (i.mem) write<T>(i.seg, ea(i), v);
    else set_reg<T>(i.rm, v);
  }

  // ---- stack ----
  bool stack32() const { return s.seg[SS].db(); }
  u32 sp() const { return stack32() ? s.gpr[ESP] : (s.gpr[ESP] & 0xFFFF); }
  // ESP once SP (or ESP) is set to `v`: a 16-bit stack keeps ESP's upper half.
  u32 esp_for_sp(u32 v) const { return stack32() ? v : (s.gpr[ESP] & 0xFFFF0000u) | (v & 0xFFFF); }
  void set_sp(u32 v) { s.gpr[ESP] = esp_for_sp(v); }
  u32 sp_add(u32 sp, i32 d) const { return stack32() ? sp + d : ((sp + d) & 0xFFFF); }
  template <typename T> void push(T v) {
    u32 nsp = sp_add(sp(), -i32(sizeof(T)));
    write<T>(SS, nsp, v);
    set_sp(nsp);
  }
  template <typename T> T pop() {
    T v = read<T>(SS, sp());
    set_sp(sp_add(sp(), sizeof(T)));
    return v;
  }
  // Push/pop with operand size 2 or 4.
  void push_sz(unsigned sz, u32 v) { sz == 4 ? push<u32>(v) : push<u16>(u16(v)); }
  u32 pop_sz(unsigned sz) { return sz == 4 ? pop<u32>() : pop<u16>(); }

  // ---- flags ----
  bool cond(unsigned cc) const;
  void set_flags(u32 mask, u32 value) { s.eflags = (s.eflags & ~mask) | (value & mask); }
  // Writes EFLAGS as POPF/IRET do, honouring CPL and IOPL for IF and IOPL.
  void write_eflags(u32 v, u32 mask);

  // ---- helpers for privileged checks ----
  void require_cpl0() {
    if (s.cpl != 0) raise_fault(GP, 0);
  }
  // I/O permission (IOPL, then the TSS bitmap).
  void check_io(u16 port, unsigned size);
};

template <> inline u8 Cpu::reg<u8>(unsigned r) const { return reg8(r); }
template <> inline u16 Cpu::reg<u16>(unsigned r) const { return u16(s.gpr[r]); }
template <> inline u32 Cpu::reg<u32>(unsigned r) const { return s.gpr[r]; }
template <> inline void Cpu::set_reg<u8>(unsigned r, u8 v) { set_reg8(r, v); }
template <> inline void Cpu::set_reg<u16>(unsigned r, u16 v) {
  s.gpr[r] = (s.gpr[r] & 0xFFFF0000u) | v;
}
template <> inline void Cpu::set_reg<u32>(unsigned r, u32 v) { s.gpr[r] = v; }

inline bool Cpu::cond(unsigned cc) const {
  const u32 f = s.eflags;
  bool r;
  switch ((cc >> 1) & 7) {
    case 0: r = f & OF; break;
    case 1: r = f & CF; break;
    case 2: r = f & ZF; break;
    case 3: r = f & (CF | ZF); break;
    case 4: r = f & SF; break;
    case 5: r = f & PF; break;
    case 6: r = bool(f & SF) != bool(f & OF); break;
    default: r = (f & ZF) || (bool(f & SF) != bool(f & OF)); break;
  }
  return r ^ (cc & 1);
}

// A handler executes one decoded instruction.
using Handler = void (*)(Cpu&, const Insn&);
// The interpreter's handler for each op and operand size (index 0: 8-bit or
// size-less, 1: 16-bit, 2: 32-bit). Unimplemented entries raise #UD loudly.
Handler handler_for(const Insn& i);

// An early check finds, without running the instruction, a fault its handler
// would raise before it changes anything: true with the fault in *f (the
// engine then delivers it without a C++ throw, which costs microseconds);
// false if the handler would not fault there, or the check cannot tell (the
// handler then runs and raises whatever it raises). It may raise the faults
// the handler raises before that point, in the same order; its effects are
// those the handler has before it (TLB fills, accessed bits, CR2 with a
// #PF). Only hot fault sources have one: divide errors, the #PF of a MOV's
// memory operand or of a PUSH of a register or an immediate.
using EarlyCheck = bool (*)(Cpu&, const Insn&, Fault*);
EarlyCheck early_check_for(const Insn& i);  // null: none

// Delivers an interrupt or exception through the IVT/IDT (privilege checks,
// stack switch through the TSS, task gates, #DF and triple fault). `ret_eip` is
// the EIP pushed (the instruction for faults, the next one for traps/INT n).
void deliver_event(Cpu& c, u8 vector, EventKind kind, bool has_error, u32 error, u32 ret_eip);

// Delivers an event and escalates faults raised while delivering it as the
// SDM's table of exception classes says: #DF for contributory/page-fault
// pairs, shutdown (CpuState::shutdown, StopReason::shutdown) for a fault
// while delivering #DF.
void deliver_escalating(Cpu& c, u8 vector, EventKind kind, bool has_error, u32 error, u32 ret_eip);

// VERR/VERW's test (their ZF) of a selector at the current CPL: may fault
// reading the descriptor.
bool verify_segment(Cpu& c, u16 sel, bool write);

// Name of an exception vector ("#PF").
const char* vector_name(u8 v);

}  // namespace popek::x86

namespace popek::x86 {
// True if the op has a handler at that size index (tests check table coverage).
bool has_handler(Op op, unsigned size_index);
}  // namespace popek::x86
