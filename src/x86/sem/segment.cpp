// Segmentation: descriptor tables, segment register loads, far JMP/CALL/RET
// through code segments, call gates and task gates (SDM vol. 3 ch. 3, 5, 7).
#include <initializer_list>

#include "x86/sem/sem.h"

namespace popek::x86 {

namespace {
u32 table_base(Cpu& c, u16 sel, u32* limit) {
  if (sel & 4) {
    if (!c.s.ldtr.usable()) return *limit = 0, ~0u;
    *limit = c.s.ldtr.limit;
    return c.s.ldtr.base;
  }
  *limit = c.s.gdtr.limit;
  return c.s.gdtr.base;
}
}  // namespace

bool read_desc(Cpu& c, u16 sel, Desc* d) {
  u32 limit;
  u32 base = table_base(c, sel, &limit);
  u32 idx = sel & ~7u;
  if (base == ~0u || idx + 7 > limit) return false;
  u64 v = c.sys_read64(base + idx);
  d->lo = u32(v);
  d->hi = u32(v >> 32);
  return true;
}

void write_desc_hi(Cpu& c, u16 sel, u32 hi) {
  u32 limit;
  u32 base = table_base(c, sel, &limit);
  c.sys_write(base + (sel & ~7u) + 4, 4, hi);
}

void mark_accessed(Cpu& c, u16 sel, Desc& d) {
  if (!(d.hi & 0x100)) {
    d.hi |= 0x100;
    write_desc_hi(c, sel, d.hi);
  }
}

void null_seg(Segment& s, u16 sel) {
  s.sel = sel;
  s.base = 0;
  s.limit = 0;
  s.attr = 0;  // not present: unusable
}

void set_real_seg(Cpu& c, unsigned seg, u16 sel) {
  Segment& s = c.s.seg[seg];
  s.sel = sel;
  s.base = u32(sel) << 4;
  if (c.s.vm86()) {
    s.limit = 0xFFFF;
    s.attr = seg == CS ? 0xFB : 0xF3;
  } else if (!s.present()) {
    s.attr = 0x93;  // real mode: a loaded segment is always usable
  }
}

void set_cs(Cpu& c, u16 sel, const Desc& d, u8 cpl) {
  Segment& cs = c.s.seg[CS];
  cs = d.to_segment(u16((sel & ~3) | cpl));
  c.s.cpl = cpl;
}

void load_seg_checked(Cpu& c, unsigned seg, u16 sel, u8 ev) {
  CpuState& s = c.s;
  if (!s.pe() || s.vm86()) return set_real_seg(c, seg, sel);
  const u16 err = sel & 0xFFFC;
  if ((sel & ~3) == 0) {
    if (seg == SS) raise_fault(ev == TS ? TS : GP, 0);
    null_seg(s.seg[seg], sel);
    return;
  }
  Desc d;
  if (!read_desc(c, sel, &d)) raise_fault(ev, err);
  const unsigned rpl = sel & 3, dpl = d.dpl();
  if (seg == SS) {
    if (rpl != s.cpl || dpl != s.cpl || !d.writable_data()) raise_fault(ev, err);
    if (!d.present()) raise_fault(SS_V, err);
  } else {
    if (!d.s() || (d.is_code() && !d.readable_code())) raise_fault(ev, err);
    if (!d.conforming() && (rpl > dpl || s.cpl > dpl)) raise_fault(ev, err);
    if (!d.present()) raise_fault(NP, err);
  }
  mark_accessed(c, sel, d);
  s.seg[seg] = d.to_segment(sel);
}

void load_seg(Cpu& c, unsigned seg, u16 sel) { load_seg_checked(c, seg, sel, GP); }

void validate_data_segs(Cpu& c) {
  for (unsigned sr : {ES, DS, FS, GS}) {
    Segment& sg = c.s.seg[sr];
    if (!sg.usable()) continue;
    if ((!sg.is_code() || !sg.conforming()) && sg.dpl() < c.s.cpl) null_seg(sg, 0);
  }
}

void tss_stack(Cpu& c, unsigned dpl, u16* ss, u32* esp) {
  const Segment& tr = c.s.tr;
  const bool t32 = (tr.type() & 8);
  u32 off = t32 ? 4 + dpl * 8 : 2 + dpl * 4;
  u32 need = t32 ? off + 5 : off + 3;
  if (need > tr.limit) raise_fault(TS, tr.sel & 0xFFFC);
  if (t32) {
    *esp = c.sys_read(tr.base + off, 4);
    *ss = u16(c.sys_read(tr.base + off + 4, 2));
  } else {
    *esp = c.sys_read(tr.base + off, 2);
    *ss = u16(c.sys_read(tr.base + off + 2, 2));
  }
}

// ---- far JMP / CALL ---------------------------------------------------------

namespace {

void check_code_target(Cpu& c, u16 sel, const Desc& d) {
  const u16 err = sel & 0xFFFC;
  if (!d.is_code()) raise_fault(GP, err);
  if (d.conforming()) {
    if (d.dpl() > c.s.cpl) raise_fault(GP, err);
  } else {
    if ((sel & 3) > c.s.cpl || d.dpl() != c.s.cpl) raise_fault(GP, err);
  }
  if (!d.present()) raise_fault(NP, err);
}

// Writes `v` (2 or 4 bytes) below `sp` in the stack segment `ss` (not yet loaded).
void push_to(Cpu& c, const Segment& ss, u32& sp, unsigned sz, u32 v, bool user) {
  sp = ss.db() ? sp - sz : ((sp - sz) & 0xFFFF);
  if (sp > ss.limit - (sz - 1) && !ss.expand_down()) raise_fault(SS_V, 0);
  c.mem.write(ss.base + sp, sz, v, user);
}

void call_gate(Cpu& c, FarKind k, u16 gsel, const Desc& g, unsigned osize) {
  CpuState& s = c.s;
  const u16 gerr = gsel & 0xFFFC;
  if (g.dpl() < s.cpl || g.dpl() < (gsel & 3)) raise_fault(GP, gerr);
  if (!g.present()) raise_fault(NP, gerr);
  const u16 sel = g.gate_sel();
  const u16 err = sel & 0xFFFC;
  if ((sel & ~3) == 0) raise_fault(GP, 0);
  Desc d;
  if (!read_desc(c, sel, &d)) raise_fault(GP, err);
  if (!d.is_code() || d.dpl() > s.cpl) raise_fault(GP, err);
  if (!d.present()) raise_fault(NP, err);
  const bool gate32 = g.type() == T_CALLGATE32;
  const unsigned gsz = gate32 ? 4 : 2;
  u32 target = g.gate_offset();
  if (!gate32) target &= 0xFFFF;
  if (target > d.limit()) raise_fault(GP, 0);

  if (k == FarKind::jmp) {
    if (d.conforming() ? false : d.dpl() != s.cpl) raise_fault(GP, err);
    mark_accessed(c, sel, d);
    set_cs(c, sel, d, s.cpl);
    c.next_eip = target;
    return;
  }
  if (!d.conforming() && d.dpl() < s.cpl) {
    // Inter-privilege call: new stack from the TSS, parameters copied.
    const u8 ncpl = d.dpl();
    u16 nss;
    u32 nesp;
    tss_stack(c, ncpl, &nss, &nesp);
    const u16 serr = nss & 0xFFFC;
    if ((nss & ~3) == 0) raise_fault(TS, 0);
    Desc sd;
    if (!read_desc(c, nss, &sd)) raise_fault(TS, serr);
    if ((nss & 3) != ncpl || sd.dpl() != ncpl || !sd.writable_data()) raise_fault(TS, serr);
    if (!sd.present()) raise_fault(SS_V, serr);
    Segment nss_seg = sd.to_segment(nss);
    const unsigned nparams = g.gate_params();
    u32 params[32];
    const Segment& oss = s.seg[SS];
    u32 osp = c.sp();
    for (unsigned i = 0; i < nparams; i++) {
      u32 off = oss.db() ? osp + i * gsz : ((osp + i * gsz) & 0xFFFF);
      params[i] = gate32 ? c.read<u32>(SS, off) : c.read<u16>(SS, off);
    }
    const bool user = ncpl == 3;
    u32 sp = nesp;
    push_to(c, nss_seg, sp, gsz, oss.sel, user);
    push_to(c, nss_seg, sp, gsz, s.gpr[ESP], user);
    for (unsigned i = nparams; i-- > 0;) push_to(c, nss_seg, sp, gsz, params[i], user);
    push_to(c, nss_seg, sp, gsz, s.seg[CS].sel, user);
    push_to(c, nss_seg, sp, gsz, c.next_eip, user);
    mark_accessed(c, nss, sd);
    mark_accessed(c, sel, d);
    s.seg[SS] = nss_seg;
    c.set_sp(sp);  // SS is loaded: its B bit picks ESP or SP
    set_cs(c, sel, d, ncpl);
    c.next_eip = target;
    return;
  }
  // Same privilege through the gate.
  u32 sp = c.sp();
  push_to(c, s.seg[SS], sp, gsz, s.seg[CS].sel, c.user());
  push_to(c, s.seg[SS], sp, gsz, c.next_eip, c.user());
  mark_accessed(c, sel, d);
  c.set_sp(sp);
  set_cs(c, sel, d, s.cpl);
  c.next_eip = target;
  (void)osize;
}

}  // namespace

void far_transfer(Cpu& c, FarKind k, u16 sel, u32 off, unsigned osize) {
  CpuState& s = c.s;
  if (!s.pe() || s.vm86()) {
    if (k == FarKind::call) {
      u32 sp = c.sp();
      push_to(c, s.seg[SS], sp, osize, s.seg[CS].sel, c.user());
      push_to(c, s.seg[SS], sp, osize, c.next_eip, c.user());
      c.set_sp(sp);
    }
    set_real_seg(c, CS, sel);
    c.next_eip = osize == 2 ? (off & 0xFFFF) : off;
    return;
  }
  const u16 err = sel & 0xFFFC;
  if ((sel & ~3) == 0) raise_fault(GP, 0);
  Desc d;
  if (!read_desc(c, sel, &d)) raise_fault(GP, err);
  if (d.s()) {
    check_code_target(c, sel, d);
    if (osize == 2) off &= 0xFFFF;
    if (off > d.limit()) raise_fault(GP, 0);
    if (k == FarKind::call) {
      u32 sp = c.sp();
      push_to(c, s.seg[SS], sp, osize, s.seg[CS].sel, c.user());
      push_to(c, s.seg[SS], sp, osize, c.next_eip, c.user());
      c.set_sp(sp);
    }
    mark_accessed(c, sel, d);
    set_cs(c, sel, d, s.cpl);
    c.next_eip = off;
    return;
  }
  switch (d.type()) {
    case T_CALLGATE16:
    case T_CALLGATE32:
      return call_gate(c, k, sel, d, osize);
    case T_TASKGATE: {
      if (d.dpl() < s.cpl || d.dpl() < (sel & 3)) raise_fault(GP, err);
      if (!d.present()) raise_fault(NP, err);
      u16 tsel = d.gate_sel();
      Desc td;
      if ((tsel & 4) || !read_desc(c, tsel, &td)) raise_fault(GP, tsel & 0xFFFC);
      if (td.type() != T_TSS32_AVAIL && td.type() != T_TSS16_AVAIL) raise_fault(GP, tsel & 0xFFFC);
      if (!td.present()) raise_fault(NP, tsel & 0xFFFC);
      task_switch(c, tsel, td, k == FarKind::call ? TaskSrc::call : TaskSrc::jmp, c.next_eip);
      c.next_eip = s.eip;
      return;
    }
    case T_TSS16_AVAIL:
    case T_TSS32_AVAIL:
      if (d.dpl() < s.cpl || d.dpl() < (sel & 3)) raise_fault(GP, err);
      if (!d.present()) raise_fault(NP, err);
      task_switch(c, sel, d, k == FarKind::call ? TaskSrc::call : TaskSrc::jmp, c.next_eip);
      c.next_eip = s.eip;
      return;
    default:
      raise_fault(GP, err);
  }
}

// ---- far RET ----------------------------------------------------------------

Desc check_outer_stack(Cpu& c, u16 nss, unsigned rpl) {
  const u16 serr = nss & 0xFFFC;
  if ((nss & ~3) == 0) raise_fault(GP, 0);
  Desc sd;
  if (!read_desc(c, nss, &sd)) raise_fault(GP, serr);
  if ((nss & 3) != rpl || sd.dpl() != rpl || !sd.writable_data()) raise_fault(GP, serr);
  if (!sd.present()) raise_fault(SS_V, serr);
  return sd;
}

void far_return(Cpu& c, unsigned osize, u16 pop_bytes) {
  CpuState& s = c.s;
  const u32 sp0 = c.sp();
  auto rd = [&](u32 idx) -> u32 {
    u32 off = c.sp_add(sp0, i32(idx * osize));
    return osize == 4 ? c.read<u32>(SS, off) : c.read<u16>(SS, off);
  };
  u32 off = rd(0);
  u16 sel = u16(rd(1));
  if (!s.pe() || s.vm86()) {
    set_real_seg(c, CS, sel);
    c.next_eip = off;
    c.set_sp(c.sp_add(sp0, i32(2 * osize + pop_bytes)));
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
  if (osize == 2) off &= 0xFFFF;
  if (rpl == s.cpl) {
    if (off > d.limit()) raise_fault(GP, 0);
    mark_accessed(c, sel, d);
    set_cs(c, sel, d, s.cpl);
    c.next_eip = off;
    c.set_sp(c.sp_add(sp0, i32(2 * osize + pop_bytes)));
    return;
  }
  // Return to an outer privilege level: pop SS:ESP too.
  const u32 o = c.sp_add(sp0, i32(2 * osize + pop_bytes));
  const u32 nesp = osize == 4 ? c.read<u32>(SS, o) : c.read<u16>(SS, o);
  const u16 nss = c.read<u16>(SS, c.sp_add(o, i32(osize)));
  Desc sd = check_outer_stack(c, nss, rpl);
  if (off > d.limit()) raise_fault(GP, 0);
  mark_accessed(c, sel, d);
  mark_accessed(c, nss, sd);
  set_cs(c, sel, d, u8(rpl));
  s.seg[SS] = sd.to_segment(nss);
  u32 sp = nesp + pop_bytes;
  c.set_sp(sp);  // SS is loaded: its B bit picks ESP or SP
  c.next_eip = off;
  validate_data_segs(c);
}

u32 Cpu::linear_slow(unsigned seg, u32 off, unsigned size, bool write) {
  const Segment& sg = s.seg[seg];
  const u8 vec = seg == SS ? SS_V : GP;
  if (s.pe() && !s.vm86()) {
    if (!sg.usable()) raise_fault(vec, 0);
    if (write && !sg.writable()) raise_fault(vec, 0);
    if (!write && !sg.readable()) raise_fault(vec, 0);
  }
  const u32 last = off + size - 1;
  if (sg.expand_down()) {
    const u32 upper = sg.db() ? 0xFFFFFFFFu : 0xFFFFu;
    if (off <= sg.limit || last > upper || last < off) raise_fault(vec, 0);
  } else {
    if (off > sg.limit || size - 1 > sg.limit - off) raise_fault(vec, 0);
  }
  return sg.base + off;
}

}  // namespace popek::x86
