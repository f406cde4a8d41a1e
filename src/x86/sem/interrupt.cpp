// Interrupts and exceptions (SDM vol. 3 ch. 6), IRET, and hardware task
// switching (ch. 7).
#include "base/error.h"
#include "x86/sem/sem.h"

namespace popek::x86 {

void raise_fault(u8 vector) { throw Fault{vector, false, 0}; }
void raise_fault(u8 vector, u32 error) { throw Fault{vector, true, error}; }

const char* vector_name(u8 v) {
  static const char* n[] = {"#DE", "#DB", "NMI", "#BP", "#OF", "#BR", "#UD", "#NM",
                            "#DF", "#MF9", "#TS", "#NP", "#SS", "#GP", "#PF", "#15",
                            "#MF", "#AC", "#MC", "#XM"};
  return v < 20 ? n[v] : "INT";
}

namespace {

// Pushes to a stack described by `ss` (possibly not yet loaded) at privilege `user`.
struct StackWriter {
  Cpu& c;
  const Segment& ss;
  u32 sp;
  bool user;
  void push(unsigned sz, u32 v) {
    sp = ss.db() ? sp - sz : ((sp - sz) & 0xFFFF);
    bool bad = ss.expand_down() ? (sp <= ss.limit) : (sp > ss.limit || sz - 1 > ss.limit - sp);
    if (bad) raise_fault(SS_V, 0);
    c.mem.write(ss.base + sp, sz, v, user);
  }
};

void deliver_real(Cpu& c, u8 vec, u32 ret_eip) {
  CpuState& s = c.s;
  if (u32(vec) * 4 + 3 > s.idtr.limit) raise_fault(GP, u32(vec) * 8 + 2);
  u32 ent = c.sys_read(s.idtr.base + vec * 4, 4);
  StackWriter w{c, s.seg[SS], c.sp(), false};
  w.push(2, s.eflags);
  w.push(2, s.seg[CS].sel);
  w.push(2, ret_eip);
  c.set_sp(w.sp);
  s.eflags &= ~(IF | TF | AC | RF);
  set_real_seg(c, CS, u16(ent >> 16));
  s.eip = ent & 0xFFFF;
}

}  // namespace

// Exceptions of the fault class (the saved EIP is that of the faulting
// instruction): #DE #BR #UD #NM #TS #NP #SS #GP #PF #MF #AC #XM. (#DB is a
// fault only for instruction breakpoints, which popek does not raise; #DF
// and #MC are aborts.)
static bool fault_class(u8 vec) {
  switch (vec) {
    case DE: case BR: case UD: case NM: case TS: case NP: case SS_V: case GP: case PF_V: case MF: case AC_V: case XM:
      return true;
    default:
      return false;
  }
}

void deliver_event(Cpu& c, u8 vec, EventKind kind, bool has_err, u32 err, u32 ret_eip) {
  CpuState& s = c.s;
  if (!s.pe()) return deliver_real(c, vec, ret_eip);
  const bool soft = kind == EventKind::software || kind == EventKind::software_exc;
  const u32 ext = (kind == EventKind::external || kind == EventKind::nmi ||
                   kind == EventKind::exception) ? 1 : 0;
  if (s.vm86() && kind == EventKind::software && s.iopl() < 3) raise_fault(GP, 0);

  const u32 gerr = u32(vec) * 8 + 2 + ext;
  if (u32(vec) * 8 + 7 > s.idtr.limit) raise_fault(GP, gerr);
  u64 raw = c.sys_read64(s.idtr.base + vec * 8);
  Desc g{u32(raw), u32(raw >> 32)};
  const u8 gt = g.type();
  if (g.s() || !(gt == T_TASKGATE || gt == T_INTGATE16 || gt == T_TRAPGATE16 ||
                 gt == T_INTGATE32 || gt == T_TRAPGATE32))
    raise_fault(GP, gerr);
  if (soft && g.dpl() < s.cpl) raise_fault(GP, gerr);
  if (!g.present()) raise_fault(NP, gerr);

  if (gt == T_TASKGATE) {
    u16 tsel = g.gate_sel();
    Desc td;
    if ((tsel & 4) || !read_desc(c, tsel, &td)) raise_fault(TS, (tsel & 0xFFFC) | ext);
    if (td.s() || (td.type() != T_TSS32_AVAIL && td.type() != T_TSS16_AVAIL))
      raise_fault(TS, (tsel & 0xFFFC) | ext);
    if (!td.present()) raise_fault(NP, (tsel & 0xFFFC) | ext);
    task_switch(c, tsel, td, TaskSrc::interrupt, ret_eip);
    if (has_err) {
      unsigned sz = (td.type() & 8) ? 4 : 2;
      u32 sp = c.sp_add(c.sp(), -i32(sz));
      if (sz == 4) c.write<u32>(SS, sp, err);
      else c.write<u16>(SS, sp, u16(err));
      c.set_sp(sp);
    }
    return;
  }

  const u16 sel = g.gate_sel();
  const u32 serr = (sel & 0xFFFC) | ext;
  if ((sel & ~3) == 0) raise_fault(GP, ext);
  Desc d;
  if (!read_desc(c, sel, &d)) raise_fault(GP, serr);
  if (!d.is_code() || d.dpl() > s.cpl) raise_fault(GP, serr);
  if (!d.present()) raise_fault(NP, serr);
  const bool gate32 = gt >= T_INTGATE32;
  const unsigned gsz = gate32 ? 4 : 2;
  u32 target = g.gate_offset();
  if (!gate32) target &= 0xFFFF;
  if (target > d.limit()) raise_fault(GP, ext);

  // The EFLAGS image a fault-class exception pushes has RF = 1 (SDM Vol. 3
  // 17.3.1.1: every fault but an instruction-breakpoint #DB, which popek
  // does not raise; traps, INT n, INT3, INTO, interrupts and aborts push it
  // as it is). Checked against the silicon by pm_fuzz_test.
  const u32 old_flags = s.eflags | (kind == EventKind::exception && fault_class(vec) ? u32(RF) : 0u);
  const u16 old_cs = s.seg[CS].sel;
  u8 ncpl = s.cpl;
  if (!d.conforming() && d.dpl() < s.cpl) {
    ncpl = d.dpl();
    if (s.vm86() && ncpl != 0) raise_fault(GP, serr);
    u16 nss;
    u32 nesp;
    tss_stack(c, ncpl, &nss, &nesp);
    const u32 sserr = (nss & 0xFFFC) | ext;
    if ((nss & ~3) == 0) raise_fault(TS, ext);
    Desc sd;
    if (!read_desc(c, nss, &sd)) raise_fault(TS, sserr);
    if ((nss & 3) != ncpl || sd.dpl() != ncpl || !sd.writable_data()) raise_fault(TS, sserr);
    if (!sd.present()) raise_fault(SS_V, sserr);
    Segment nss_seg = sd.to_segment(nss);
    StackWriter w{c, nss_seg, nesp, ncpl == 3};
    if (s.vm86()) {
      w.push(gsz, s.seg[GS].sel);
      w.push(gsz, s.seg[FS].sel);
      w.push(gsz, s.seg[DS].sel);
      w.push(gsz, s.seg[ES].sel);
    }
    w.push(gsz, s.seg[SS].sel);
    w.push(gsz, s.gpr[ESP]);
    w.push(gsz, old_flags);
    w.push(gsz, old_cs);
    w.push(gsz, ret_eip);
    if (has_err) w.push(gsz, err);
    mark_accessed(c, nss, sd);
    if (s.vm86()) {
      for (unsigned sr : {ES, DS, FS, GS}) null_seg(s.seg[sr], 0);
    }
    s.seg[SS] = nss_seg;
    c.set_sp(w.sp);  // SS is loaded: its B bit picks ESP or SP
  } else {
    if (s.vm86()) raise_fault(GP, serr);
    StackWriter w{c, s.seg[SS], c.sp(), s.cpl == 3};
    w.push(gsz, old_flags);
    w.push(gsz, old_cs);
    w.push(gsz, ret_eip);
    if (has_err) w.push(gsz, err);
    c.set_sp(w.sp);
  }
  mark_accessed(c, sel, d);
  s.eflags &= ~(TF | NT | RF | VM);
  if (gt == T_INTGATE16 || gt == T_INTGATE32) s.eflags &= ~IF;
  set_cs(c, sel, d, ncpl);
  s.eip = target;
  if (kind == EventKind::nmi) s.nmi_blocked = true;
}

namespace {
bool contributory(u8 v) { return v == DE || (v >= TS && v <= GP); }
}  // namespace

void deliver_escalating(Cpu& c, u8 vec, EventKind kind, bool has_err, u32 err, u32 ret_eip) {
  for (;;) {
    try {
      deliver_event(c, vec, kind, has_err, err, ret_eip);
      return;
    } catch (const Fault& f) {
      const bool first_exc = kind == EventKind::exception;
      if (first_exc && vec == DF_V) {
        c.s.shutdown = true;
        c.stop = StopReason::shutdown;
        return;
      }
      if (first_exc && ((contributory(vec) && contributory(f.vector)) ||
                        (vec == PF_V && (contributory(f.vector) || f.vector == PF_V)))) {
        vec = DF_V;
        has_err = true;
        err = 0;
      } else {
        vec = f.vector;
        has_err = f.has_error;
        err = f.error;
      }
      kind = EventKind::exception;
      ret_eip = c.s.eip;
    }
  }
}

// ---- IRET -------------------------------------------------------------------

void do_iret(Cpu& c, unsigned osize) {
  CpuState& s = c.s;
  const u32 sp0 = c.sp();
  auto rd = [&](unsigned idx) -> u32 {
    u32 off = c.sp_add(sp0, i32(idx * osize));
    return osize == 4 ? c.read<u32>(SS, off) : c.read<u16>(SS, off);
  };
  s.nmi_blocked = false;
  if (!s.pe() || s.vm86()) {
    if (s.vm86() && s.iopl() < 3) raise_fault(GP, 0);
    u32 eip = rd(0);
    u16 cs = u16(rd(1));
    u32 fl = rd(2);
    if (osize == 2) eip &= 0xFFFF;
    if (eip > s.seg[CS].limit && !s.vm86()) raise_fault(GP, 0);
    c.set_sp(c.sp_add(sp0, i32(3 * osize)));
    set_real_seg(c, CS, cs);
    c.next_eip = eip;
    if (s.vm86()) {
      // IOPL and VM cannot change from v86 mode.
      u32 mask = osize == 4 ? (0x3F7FD5u & ~(IOPL | VM | VIP | VIF)) : (0x7FD5u & ~IOPL);
      c.set_flags(mask, fl);
    } else {
      c.set_flags(osize == 4 ? 0x3F7FD5u & ~(VM | VIP | VIF) : 0x7FD5u, fl);
    }
    return;
  }
  if (s.eflags & NT) {
    u16 link = u16(c.sys_read(s.tr.base, 2));
    Desc td;
    if ((link & 4) || !read_desc(c, link, &td)) raise_fault(TS, link & 0xFFFC);
    if (td.s() || (td.type() != T_TSS32_BUSY && td.type() != T_TSS16_BUSY))
      raise_fault(TS, link & 0xFFFC);
    if (!td.present()) raise_fault(NP, link & 0xFFFC);
    task_switch(c, link, td, TaskSrc::iret, c.next_eip);
    c.next_eip = s.eip;
    return;
  }
  u32 eip = rd(0);
  u16 sel = u16(rd(1));
  u32 fl = rd(2);
  if (osize == 2) eip &= 0xFFFF;
  if (osize == 4 && (fl & VM) && s.cpl == 0) {
    // Return to virtual-8086 mode.
    u32 nesp = rd(3);
    u16 nss = u16(rd(4)), es = u16(rd(5)), ds = u16(rd(6)), fs = u16(rd(7)), gs = u16(rd(8));
    s.eflags = (fl & 0x3F7FD5u) | FLAGS_FIXED1;
    s.cpl = 3;
    set_real_seg(c, CS, sel);
    set_real_seg(c, SS, nss);
    set_real_seg(c, ES, es);
    set_real_seg(c, DS, ds);
    set_real_seg(c, FS, fs);
    set_real_seg(c, GS, gs);
    s.gpr[ESP] = nesp;
    c.next_eip = eip & 0xFFFF;
    return;
  }
  const u16 err = sel & 0xFFFC;
  if ((sel & ~3) == 0) raise_fault(GP, 0);
  Desc d;
  if (!read_desc(c, sel, &d)) raise_fault(GP, err);
  const unsigned rpl = sel & 3;
  if (!d.is_code() || rpl < s.cpl) raise_fault(GP, err);
  if (d.conforming() ? d.dpl() > rpl : d.dpl() != rpl) raise_fault(GP, err);
  if (!d.present()) raise_fault(NP, err);
  const u8 old_cpl = s.cpl;
  if (rpl == s.cpl) {
    if (eip > d.limit()) raise_fault(GP, 0);
    mark_accessed(c, sel, d);
    set_cs(c, sel, d, old_cpl);
    c.set_sp(c.sp_add(sp0, i32(3 * osize)));
  } else {
    u32 nesp = rd(3);
    u16 nss = u16(rd(4));
    Desc sd = check_outer_stack(c, nss, rpl);
    if (eip > d.limit()) raise_fault(GP, 0);
    mark_accessed(c, sel, d);
    mark_accessed(c, nss, sd);
    set_cs(c, sel, d, u8(rpl));
    s.seg[SS] = sd.to_segment(nss);
    c.set_sp(nesp);  // SS is loaded: its B bit picks ESP or SP
  }
  // EFLAGS: IOPL only at CPL 0, IF only if CPL <= IOPL (evaluated at the old CPL).
  u32 mask = CF | PF | AF | ZF | SF | TF | DF | OF | NT;
  // RF is not loaded: it only holds back instruction breakpoints (which
  // popek does not raise) for the one instruction after IRET, and the CPU
  // clears it when that instruction completes. Loading it would leave it set
  // (popek does not clear it after the next instruction), and a fault's
  // frame now carries RF = 1. (So an interrupt taken right after such an
  // IRET pushes RF = 0 where the CPU pushes 1: the one difference.)
  if (osize == 4) mask |= AC | ID;
  if (old_cpl <= s.iopl()) mask |= IF;
  if (old_cpl == 0) mask |= IOPL | (osize == 4 ? (VIF | VIP) : 0);
  c.set_flags(mask, fl);
  c.next_eip = eip;
  if (rpl != old_cpl) validate_data_segs(c);
}

// ---- task switch ------------------------------------------------------------

void task_switch(Cpu& c, u16 sel, Desc nd, TaskSrc src, u32 ret_eip) {
  CpuState& s = c.s;
  const u16 err = sel & 0xFFFC;
  const bool n32 = nd.type() & 8;
  if (!n32 || !(s.tr.type() & 8))
    throw Error("unimplemented: task switch involving a 16-bit (286) TSS");
  if (nd.limit() < 0x67) raise_fault(TS, err);
  const u32 nbase = nd.base();
  // Make sure the new TSS is readable before touching anything (faults here are
  // taken in the old task).
  for (u32 off = 0; off < 0x68; off += 4) c.sys_read(nbase + off, 4);
  c.mem.probe_write(s.tr.base + 0x20, 0x48, false);

  // Save the outgoing state.
  const u32 obase = s.tr.base;
  u32 oflags = s.eflags;
  if (src == TaskSrc::iret) oflags &= ~NT;
  c.sys_write(obase + 0x20, 4, ret_eip);
  c.sys_write(obase + 0x24, 4, oflags);
  for (unsigned r = 0; r < 8; r++) c.sys_write(obase + 0x28 + r * 4, 4, s.gpr[r]);
  for (unsigned sr = 0; sr < 6; sr++) c.sys_write(obase + 0x48 + sr * 4, 2, s.seg[sr].sel);

  // Busy bits and the back link.
  if (src == TaskSrc::jmp || src == TaskSrc::iret) {
    Desc od;
    if (read_desc(c, s.tr.sel, &od)) write_desc_hi(c, s.tr.sel, od.hi & ~0x200u);
  }
  if (src == TaskSrc::call || src == TaskSrc::interrupt) c.sys_write(nbase, 2, s.tr.sel);
  if (src != TaskSrc::iret) write_desc_hi(c, sel, nd.hi | 0x200u);

  // Read the incoming state.
  u32 cr3 = c.sys_read(nbase + 0x1C, 4);
  u32 eip = c.sys_read(nbase + 0x20, 4);
  u32 fl = c.sys_read(nbase + 0x24, 4);
  u32 gpr[8];
  for (unsigned r = 0; r < 8; r++) gpr[r] = c.sys_read(nbase + 0x28 + r * 4, 4);
  u16 sels[6];
  for (unsigned sr = 0; sr < 6; sr++) sels[sr] = u16(c.sys_read(nbase + 0x48 + sr * 4, 2));
  u16 ldt = u16(c.sys_read(nbase + 0x60, 2));

  s.tr.sel = sel;
  s.tr.base = nbase;
  s.tr.limit = nd.limit();
  s.tr.attr = u16(nd.attr() | 2);  // busy
  s.cr0 |= CR0_TS;
  if (s.pg() && cr3 != s.cr3) {
    s.cr3 = cr3;
    c.mem.flush_tlb(false);
  } else {
    s.cr3 = cr3;
  }
  if (src == TaskSrc::call || src == TaskSrc::interrupt) fl |= NT;
  s.eflags = (fl & 0x3F7FD5u) | FLAGS_FIXED1;
  for (unsigned r = 0; r < 8; r++) s.gpr[r] = gpr[r];
  s.eip = eip;
  // Selectors first, then descriptors, faults now belong to the new task.
  for (unsigned sr = 0; sr < 6; sr++) {
    s.seg[sr].sel = sels[sr];
    s.seg[sr].attr = 0;
  }
  s.ldtr.sel = ldt;
  s.ldtr.attr = 0;
  if (s.vm86()) {
    s.cpl = 3;
    for (unsigned sr = 0; sr < 6; sr++) set_real_seg(c, sr, sels[sr]);
    return;
  }
  if (ldt & ~3) {
    Desc ld;
    if ((ldt & 4) || !read_desc(c, ldt, &ld) || ld.s() || ld.type() != T_LDT)
      raise_fault(TS, ldt & 0xFFFC);
    if (!ld.present()) raise_fault(TS, ldt & 0xFFFC);
    s.ldtr = ld.to_segment(ldt);
  }
  // CS decides CPL.
  const u16 cs = sels[CS];
  Desc cd;
  if ((cs & ~3) == 0 || !read_desc(c, cs, &cd) || !cd.is_code()) raise_fault(TS, cs & 0xFFFC);
  if (cd.conforming() ? cd.dpl() > (cs & 3) : cd.dpl() != (cs & 3)) raise_fault(TS, cs & 0xFFFC);
  if (!cd.present()) raise_fault(NP, cs & 0xFFFC);
  set_cs(c, cs, cd, cs & 3);
  load_seg_checked(c, SS, sels[SS], TS);
  for (unsigned sr : {ES, DS, FS, GS}) load_seg_checked(c, sr, sels[sr], TS);
  if (eip > s.seg[CS].limit) raise_fault(GP, 0);
}

}  // namespace popek::x86
