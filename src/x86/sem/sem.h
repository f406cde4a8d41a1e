// Internal interface between the semantics files (not for engines).
#pragma once
#include "x86/cpu.h"

namespace popek::x86 {

// A raw 8-byte segment or gate descriptor.
struct Desc {
  u32 lo = 0, hi = 0;
  u32 base() const { return (lo >> 16) | ((hi & 0xFF) << 16) | (hi & 0xFF000000u); }
  u32 limit() const {
    u32 l = (lo & 0xFFFF) | (hi & 0xF0000);
    return (hi & 0x800000) ? (l << 12) | 0xFFF : l;
  }
  u16 attr() const { return u16(((hi >> 8) & 0xFF) | ((hi >> 8) & 0xF000)); }
  u8 type() const { return (hi >> 8) & 0xF; }
  bool s() const { return hi & 0x1000; }
  u8 dpl() const { return (hi >> 13) & 3; }
  bool present() const { return hi & 0x8000; }
  bool is_code() const { return s() && (hi & 0x800); }
  bool conforming() const { return is_code() && (hi & 0x400); }
  bool readable_code() const { return is_code() && (hi & 0x200); }
  bool writable_data() const { return s() && !(hi & 0x800) && (hi & 0x200); }
  // Gates.
  u16 gate_sel() const { return u16(lo >> 16); }
  u32 gate_offset() const { return (lo & 0xFFFF) | (hi & 0xFFFF0000u); }
  u8 gate_params() const { return hi & 0x1F; }
  Segment to_segment(u16 sel) const { return Segment{sel, base(), limit(), attr()}; }
};

// System descriptor types.
enum : u8 {
  T_TSS16_AVAIL = 1, T_LDT = 2, T_TSS16_BUSY = 3, T_CALLGATE16 = 4, T_TASKGATE = 5,
  T_INTGATE16 = 6, T_TRAPGATE16 = 7, T_TSS32_AVAIL = 9, T_TSS32_BUSY = 11,
  T_CALLGATE32 = 12, T_INTGATE32 = 14, T_TRAPGATE32 = 15,
};

// Reads the descriptor for `sel` from the GDT or LDT. Returns false if the
// index is beyond the table limit (callers raise the fault their rules name).
bool read_desc(Cpu& c, u16 sel, Desc* d);
void write_desc_hi(Cpu& c, u16 sel, u32 hi);
// Sets the accessed bit of a code/data descriptor in memory if clear.
void mark_accessed(Cpu& c, u16 sel, Desc& d);

// Loads a data/stack segment register with all protected-mode checks (or the
// real/v86 rule). `fault_vec` GP or TS selects the vector used for descriptor
// errors (TS during a task switch).
void load_seg(Cpu& c, unsigned seg, u16 sel);
void load_seg_checked(Cpu& c, unsigned seg, u16 sel, u8 err_vec);
// Loads CS directly from a descriptor already checked, and sets CPL.
void set_cs(Cpu& c, u16 sel, const Desc& d, u8 cpl);
void set_real_seg(Cpu& c, unsigned seg, u16 sel);
void null_seg(Segment& s, u16 sel);

// Far transfers (protected-mode rules included).
enum class FarKind { jmp, call };
void far_transfer(Cpu& c, FarKind k, u16 sel, u32 off, unsigned osize);
void far_return(Cpu& c, unsigned osize, u16 pop_bytes);
void do_iret(Cpu& c, unsigned osize);
// The stack segment a far RET or IRET to outer privilege `rpl` loads: checked
// per the SDM (#GP for a bad selector or descriptor, #SS if not present).
Desc check_outer_stack(Cpu& c, u16 nss, unsigned rpl);
// Reads SS:ESP for privilege level `dpl` from the current TSS.
void tss_stack(Cpu& c, unsigned dpl, u16* ss, u32* esp);

// Hardware task switch.
enum class TaskSrc { jmp, call, iret, interrupt };
void task_switch(Cpu& c, u16 sel, Desc d, TaskSrc src, u32 ret_eip);

// After a CPL decrease/increase, data segments not accessible at the new CPL become null.
void validate_data_segs(Cpu& c);

// Per-group handler registration (dispatch.cpp).
struct HandlerTable {
  Handler h[kOpCount][3] = {};
  EarlyCheck e[kOpCount][3] = {};
  void set_early(Op op, EarlyCheck e8, EarlyCheck e16, EarlyCheck e32) {
    e[unsigned(op)][0] = e8;
    e[unsigned(op)][1] = e16;
    e[unsigned(op)][2] = e32;
  }
  void set(Op op, Handler h8, Handler h16, Handler h32) {
    h[unsigned(op)][0] = h8;
    h[unsigned(op)][1] = h16;
    h[unsigned(op)][2] = h32;
  }
  void set1(Op op, Handler f) { set(op, f, f, f); }
};
void register_alu(HandlerTable& t);
void register_move(HandlerTable& t);
void register_ctrl(HandlerTable& t);
void register_string(HandlerTable& t);
void register_system(HandlerTable& t);
void register_x87(HandlerTable& t);
void register_mmx(HandlerTable& t);

// Raised by a handler that found an instruction popek does not implement; the
// engine reports it (with --trace, by name) and the guest sees #UD.
struct Unimplemented {
  const char* what;
};

}  // namespace popek::x86
