// The emitter's per-instruction translation: the generic re-encoder,
// REP string instructions, and insn(), which translates one guest
// instruction (natively, or as a callout to the semantics).
#include "engine/bt/emitter.h"

namespace popek::engine::bt {

// Emits `i` for the host with registers mapped and a memory operand as [r8].
// Returns false (emitting nothing) if the host cannot encode it that way.
bool Emitter::can_reencode(const Insn& i, const Native& n) {
  const OpInfo& info = i.info();
  const bool byte = info.attrs & B;
  const unsigned reg_size = byte ? 1 : i.osize;
  bool rex = i.mem, hi8 = false;
  if (n.reg_is_reg) {
    if (reg_size == 1) hi8 |= i.reg >= 4;
    else rex |= hreg(i.reg) >= 8;
  }
  if (!i.mem) {
    if (n.rm_size == 1) hi8 |= i.rm >= 4;
    else rex |= hreg(i.rm) >= 8;
  }
  if (rex && hi8) return false;
  switch (info.imm) {
    case I_B: case I_BS: case I_W: case I_Z: case I_NONE: return true;
    default: return false;
  }
}

// reg_host >= 0: ModRM.reg names that host register instead (an AH..BH
// operand staged in r10b next to a memory operand that needs REX).
void Emitter::reencode(const Insn& i, const Native& n, const u8* bytes, int reg_host) {
  const OpInfo& info = i.info();
  const bool byte = info.attrs & B;
  const unsigned reg_size = byte ? 1 : i.osize;
  const unsigned rm_size = n.rm_size;
  u8 rex = 0;
  bool hi8 = false;
  u8 reg_field = i.reg & 7, rm_field;
  if (reg_host >= 0) {
    reg_field = u8(reg_host & 7);
    if (reg_host >= 8) rex |= 4;
  } else if (n.reg_is_reg) {
    if (reg_size == 1) hi8 |= i.reg >= 4;
    else if (hreg(i.reg) >= 8) rex |= 4;
  }
  if (i.mem && direct_form_ == 3) {
    rm_field = 0;  // (guest_modrm)
    if (i.base != kNoReg && hreg(i.base) >= 8) rex |= 1;
    if (i.index != kNoReg && hreg(i.index) >= 8) rex |= 2;
  } else if (i.mem) {
    rm_field = direct_form_ ? 4 : 0;  // [r8], or SIB with base r13 (direct)
    rex |= 1;
    if (direct_form_ == 1 || (direct_form_ == 2 && hreg(i.base) >= 8)) rex |= 2;  // REX.X
  } else {
    rm_field = i.rm & 7;
    if (rm_size == 1) hi8 |= i.rm >= 4;
    else if (hreg(i.rm) >= 8) rex |= 1;
  }
  (void)hi8;
  // Immediate bytes: the tail of the guest instruction.
  unsigned imm_len = 0;
  switch (info.imm) {
    case I_B: case I_BS: imm_len = 1; break;
    case I_W: imm_len = 2; break;
    case I_Z: imm_len = i.osize == 2 ? 2 : 4; break;
    default: break;
  }
  if (i.osize == 2 && !byte) db(0x66);
  if (i.mem && direct_form_ == 3) db(0x67);  // 32-bit addressing: the guest's wrap
  if (rex) db(0x40 | rex);
  if (i.map == 1) db(0x0F);
  u8 opc = i.opcode;
  if (i.map == 0 && opc == 0x82) opc = 0x80;  // invalid in 64-bit mode
  db(opc);
  u8 ext = reg_field;
  if (i.op == Op::TEST_EbIb1 || i.op == Op::TEST_EvIz1) ext = 0;
  if (i.mem && direct_form_ == 3) {
    guest_modrm(ext, i);
    direct_form_ = 0;
  } else if (i.mem && direct_form_) {
    // [r13 + r8 - bias] or [r13 + base + disp - bias] (r13 = RAM + bias).
    const i64 disp = direct_form_ == 1 ? -kR13Bias : i64(i32(i.disp)) - kR13Bias;
    const bool d8 = disp >= -128 && disp <= 127;
    const unsigned index = direct_form_ == 1 ? 0 : unsigned(hreg(i.base)) & 7;
    db(u8((d8 ? 0x40 : 0x80) | (ext << 3) | 4));
    db(u8((index << 3) | 5));  // scale 1, base r13
    if (d8) db(u8(i8(disp)));
    else dd(u32(i32(disp)));
    direct_form_ = 0;
  } else {
    db(u8((i.mem ? 0x00 : 0xC0) | (ext << 3) | rm_field));
  }
  for (unsigned k = 0; k < imm_len; k++) db(bytes[i.len - imm_len + k]);
}

void Emitter::rep_string(const Insn& i, u32 eip, u64 pa, unsigned size) {
  // SCAS and CMPS compare (they stop on the flags and leave them);
  // MOVS and CMPS have a source operand.
  const bool cmps = i.op == Op::CMPSB;
  const bool scas = i.op == Op::SCASB || cmps;
  const bool movs = i.op == Op::MOVSB || i.op == Op::MOVSV || cmps;
  const unsigned shift = size == 4 ? 2 : 0;
  // The guest flags go to Rt::hf: the checks below clobber the host's, and a
  // fault on the first element must see them. REPNE SCASB with ECX = 0 keeps
  // them: it needs them in the host's too.
  if (scas && fl_ == Fl::parked) restore_flags();
  save_flags();
  u32 zero;
  if (scas) {
    // ECX = 0 changes nothing, the flags included.
    db(0x67); db(0xE3); db(5);  // jecxz over the jmp
    const u32 go = jmp32();
    zero = jmp32();
    bind(go);
  } else {
    test(ecx, ecx);
    zero = jcc32(4);  // jz
  }
  // From here on at least one element is done: the flags before are dead.
  // (Checked lookups even with paging off: a fault inside the host's REP
  // would find guest registers already replaced.)
  const u32 again = here();  // MOVS/STOS go on with the next page from here
  Slow* src = nullptr;
  in_rep_ = true;
  if (movs) {
    src = &mem_access(i, eip, pa, i.seg, size, false, Site::A_ESI, true);
    mov(qword[rsp - 16], r8);
  }
  Slow& dst = mem_access(i, eip, pa, ES, size, !scas, Site::A_EDI, true);
  // (A comparison reads both: neither is written.)
  in_rep_ = false;
  // r9d = elements to do here: min(ECX, room in the page(s)).
  room(r9d, edi, ES, size);
  if (movs) {
    room(r10d, esi, i.seg, size);
    cmp(r10d, r9d);
    cmovb(r9d, r10d);
  }
  cmp(ecx, r9d);
  cmovb(r9d, ecx);
  // ... and not past the next yield point (ECX a multiple of 65536).
  lea(r10d, ptr[rcx - 1]);
  movzx(r10d, r10w);
  inc(r10d);
  cmp(r10d, r9d);
  cmovb(r9d, r10d);
  mov(r10d, ecx);  // guest ECX
  mov(r11d, edi);  // guest EDI
  if (movs) {
    mov(qword[rsp - 8], rsi);  // guest ESI
    mov(rsi, qword[rsp - 16]);
  }
  mov(rdi, r8);
  mov(ecx, r9d);
  if (scas) {
    if (cmps) {
      db((i.prefixes & P_REPNE) ? 0xF2 : 0xF3); db(0xA6);  // repe/repne cmpsb
    } else {
      db(0xF2); db(0xAE);  // repne scasb
    }
    // Flag-free: d = n - remaining; (ESI += d;) EDI += d; ECX -= d.
    not_(ecx);
    lea(r8d, ptr[r9 + rcx + 1]);
    if (cmps) {
      mov(rsi, qword[rsp - 8]);
      lea(esi, ptr[rsi + r8]);
    }
    lea(edi, ptr[r11 + r8]);
    not_(r8d);
    lea(ecx, ptr[r10 + r8 + 1]);
    fl_ = Fl::dirty;  // the last compare's flags
  } else {
    db(0xF3);
    if (size == 4) db(movs ? 0xA5 : 0xAB);
    else db(movs ? 0xA4 : 0xAA);
    if (movs) {
      mov(rsi, qword[rsp - 8]);
      lea(esi, ptr[rsi + r9 * (1 << shift)]);
    }
    lea(edi, ptr[r11 + r9 * (1 << shift)]);
    sub(r10d, r9d);
    mov(ecx, r10d);
  }
  // Unfinished (the page ended first): the semantics go on from here.
  Slow& more = new_slow();
  more.site = new_site(i, eip, pa, false, false);
  more.site->rep_resume = true;
  if (scas) {
    // Stopped on the compare: REPNE when equal, REPE when not.
    const u32 found = jcc32((i.prefixes & P_REPNE) ? 4 : 5);  // jz / jnz
    db(0x67); db(0xE3); db(5);   // jecxz over the jmp: ECX ran out
    more.entry_fix = jmp32();
    more.parked = false;  // the host flags are the guest's
    bind(found);
  } else {
    // Not finished: the next page(s) the same way, unless ECX is at a
    // yield point (a non-zero multiple of 65536: the semantics stop there).
    test(ecx, ecx);
    const u32 fin = jcc32(4);   // jz
    test(cx, cx);
    more.entry_fix = jcc32(4);  // jz: a yield point
    jmp_back(again);
    bind(fin);
    more.parked = true;
    fl_ = Fl::parked;
  }
  bind(zero);
  // Every path arrives with the flags valid where fl_ says: REPNE SCASB in
  // the host's (ECX = 0 kept them there and in Rt::hf); MOVS/STOS in Rt::hf.
  more.done = here();
  dst.done = here();
  if (src) src->done = here();
}

Emitter::Done Emitter::insn(const Insn& i, const u8* bytes, u32 eip, u64 pa) {
  const OpInfo& info = i.info();
  const u32 next = eip + i.len;
  const u32 group_bit = 1u << group_of(i);
  const bool interp_only = bt_.interp_group_mask() & group_bit;
  const bool flat_cs = b_->mode & M_CS_FLAT;
  auto& st = bt_.bstats();

  // PUSHF (never in virtual-8086 mode here): EFLAGS with the guest's
  // arithmetic flags from Rt::hf, VM and RF clear.
  if (i.op == Op::PUSHF && i.osize == 4 && stack_ok() && !direct_slow(pa) && !interp_only) {
    st.native_insns++;
    save_flags();
    Slow& s = mem_access(i, eip, pa, SS, 4, true, Site::A_PUSH, true);
    mov(r9d, dword[r15 + kEflagsOff]);
    and_(r9d, ~u32(ARITH | VM | RF));
    movzx(r10d, byte[r14 + kHfOff + 1]);
    and_(r10d, 0xD5);
    or_(r9d, r10d);
    movzx(r10d, byte[r14 + kHfOff]);
    and_(r10d, 1);
    shl(r10d, 11);
    or_(r9d, r10d);
    mov(dword[r8], r9d);
    lea(r12d, ptr[r12 - 4]);
    s.done = here();
    return Done::next;
  }
  // PUSH of a segment register: the selector into the low 16 bits of the new
  // stack slot (current CPUs leave the upper half as it was).
  if ((i.op == Op::PUSH_ES || i.op == Op::PUSH_CS || i.op == Op::PUSH_SS || i.op == Op::PUSH_DS ||
       i.op == Op::PUSH_FS || i.op == Op::PUSH_GS) &&
      i.osize == 4 && stack_ok() && !direct_slow(pa) && !interp_only) {
    const unsigned sreg = i.op == Op::PUSH_ES ? ES : i.op == Op::PUSH_CS ? CS : i.op == Op::PUSH_SS ? SS
                        : i.op == Op::PUSH_DS ? DS : i.op == Op::PUSH_FS ? FS : GS;
    st.native_insns++;
    Slow& s = mem_access(i, eip, pa, SS, 2, true, Site::A_PUSH);
    mov(r9w, seg_field(sreg, kSelOff, 2));
    mov(word[r8], r9w);
    lea(r12d, ptr[r12 - 4]);
    s.done = here();
    return Done::next;
  }
  // RDTSC at CPL 0 (never faults there): a thin call for the time, the
  // instructions of the block before it counted as retired.
  if (i.op == Op::RDTSC && (b_->mode & M_CPL) == 0 && !interp_only) {
    st.native_insns++;
    save_flags();
    db(0x41); db(0xB8);  // mov r8d, imm32: the block's instructions from this one on
    rest_fix_.emplace_back(here(), idx_);
    dd(0);
    if (lazy_ && fl_ == Fl::parked) materialize();  // (the call may overwrite the stash)
    if (rcp_ >= 0) throw Error("bt: internal error: a flag recipe across RDTSC");
    call_abs(stubs_.tsc);
    fl_ = Fl::parked;
    return Done::next;
  }
  // VERW of an absolute memory operand at CPL 0 (Linux runs `verw
  // %cs:mds_verw_sel` at every return to user mode: the virtual CPU is one
  // it deems MDS-affected): a thin call (no callout) reads the selector and
  // checks its descriptor as the semantics do; only ZF changes. Where that
  // faults (answer 2) the slow path runs the instruction and takes the fault.
  if (i.op == Op::VERW && i.mem && i.base == kNoReg && i.index == kNoReg && (b_->mode & M_CPL) == 0 &&
      !interp_only) {
    st.native_insns++;
    save_flags();
    if (lazy_ && fl_ == Fl::parked) materialize();
    if (rcp_ >= 0) throw Error("bt: internal error: a flag recipe across VERW");
    Slow& s = new_slow();
    s.site = new_site(i, eip, pa, false, true);
    s.site->seg = u8(i.seg);
    s.site->size = 2;
    s.site->write = false;
    s.site->addr = Site::A_EA;
    s.parked = true;
    mov(r8, reinterpret_cast<uintptr_t>(s.site));
    call_abs(stubs_.verw);
    cmp(r9d, 2);
    s.entry_fix3 = jcc32(4);  // je
    shl(r9d, 6);               // ZF's place in AH
    and_(byte[r14 + kHfOff + 1], u8(~0x40));
    or_(byte[r14 + kHfOff + 1], r9b);
    fl_ = Fl::parked;
    s.done = here();
    return Done::next;
  }
  // CLI at CPL 0 (always allowed there): clear IF. Clearing it never makes an
  // interrupt deliverable, so the block goes on.
  if (i.op == Op::CLI && (b_->mode & M_CPL) == 0 && !interp_only) {
    st.native_insns++;
    save_flags();
    and_(dword[r15 + kEflagsOff], ~u32(IF));
    fl_ = Fl::parked;
    return Done::next;
  }
  // POPF at CPL 0 (32-bit, flat stack): the arithmetic flags and IF from the
  // stack when no other flag changes, RF is clear and it raises no
  // interrupt (IF set with the interrupt line up); else the semantics.
  if (i.op == Op::POPF && i.osize == 4 && (b_->mode & M_CPL) == 0 && stack_ok() &&
      !direct_slow(pa) && !interp_only) {
    st.native_insns++;
    save_flags();
    Slow& s = mem_access(i, eip, pa, SS, 4, false, Site::A_POP, true);
    s.site->mode_check = true;  // the slow path is the one that changes DF
    const u32 fix_same = kFlagsWritable & ~u32(ARITH | IF);
    mov(r9d, dword[r8]);                    // new
    mov(r10d, dword[r15 + kEflagsOff]);     // old
    mov(r11d, r9d);
    xor_(r11d, r10d);
    test(r11d, fix_same);
    const u32 other = jcc32(5);             // jnz: another flag changes
    test(r10d, RF);
    const u32 rf = jcc32(5);
    and_(r11d, r9d);                        // bits set now that were clear
    test(r11d, IF);
    const u32 same_if = jcc32(4);           // jz
    cmp(byte[r15 + kIntrLineOff], 0);
    const u32 irq = jcc32(5);               // jnz: an interrupt becomes deliverable
    bind(same_if);
    and_(r10d, ~u32(ARITH | IF));
    mov(r11d, r9d);
    and_(r11d, u32(ARITH | IF));
    or_(r10d, r11d);
    mov(dword[r15 + kEflagsOff], r10d);
    // Rt::hf: (SF ZF AF PF CF | 2) << 8 | OF.
    mov(r10d, r9d);
    and_(r10d, 0xD5);
    or_(r10d, 2);
    shl(r10d, 8);
    bt(r9d, 11);
    setc(r10b);
    mov(word[r14 + kHfOff], r10w);
    lea(r12d, ptr[r12 + 4]);
    fl_ = Fl::parked;
    Slow& more = also_slow(s.site, other);
    more.entry_fix2 = rf;
    Slow& more2 = also_slow(s.site, irq);
    s.done = more.done = more2.done = here();
    return Done::next;
  }
  // STI at CPL 0 with no interrupt requested, not last in the block: set IF.
  // Its shadow then has no effect: no dispatcher runs before the next
  // instruction ends, and a callout that raises the line there delivers the
  // interrupt after that instruction, as the shadow would.
  if (i.op == Op::STI && (b_->mode & M_CPL) == 0 && idx_ + 1 < n_ && !interp_only) {
    st.native_insns++;
    save_flags();
    Slow& s = new_slow();
    s.site = new_site(i, eip, pa, false, false);
    s.parked = true;
    cmp(byte[r15 + kIntrLineOff], 0);
    s.entry_fix = jcc32(5);  // jnz: the semantics (and the shadow)
    or_(dword[r15 + kEflagsOff], u32(IF));
    fl_ = Fl::parked;
    s.done = here();
    return Done::next;
  }
  // MOV ES/DS/FS/GS, r16 at CPL 0: a load the semantics did before (Rt's
  // SegLoad), of a GDT descriptor that still reads the same, giving this
  // block's mode, is repeated by copying its result.
  if (i.op == Op::MOV_SwEw && (b_->mode & M_CPL) == 0 && !interp_only &&
      (i.reg == ES || i.reg == DS || i.reg == FS || i.reg == GS) &&
      (!i.mem || (i.asize == 4 && seg_native(i.seg) && !direct_slow(pa)))) {
    st.native_insns++;
    save_flags();
    fl_ = Fl::parked;
    Slow* rd = nullptr;
    if (i.mem) {
      rd = &mem_access(i, eip, pa, i.seg, 2, false, Site::A_EA, true);
      rd->site->mode_check = true;
      movzx(r11d, word[r8]);
    } else {
      movzx(r11d, Reg16(hreg(i.rm)));
    }
    Slow& s = new_slow();
    s.site = new_site(i, eip, pa, false, false);
    s.parked = true;
    constexpr int kLoads = int(offsetof(Rt, seg_loads));
    constexpr int kSel = kLoads + int(offsetof(SegLoad, sel));
    constexpr int kFlat = kLoads + int(offsetof(SegLoad, flat));
    constexpr int kRaw = kLoads + int(offsetof(SegLoad, raw));
    constexpr int kSeg = kLoads + int(offsetof(SegLoad, seg));
    xor_(r9d, r9d);  // a null selector reads no descriptor (remembered as 0)
    test(r11d, 0xFFFC);
    const u32 null_sel = jcc32(4);  // jz
    mov(r8d, r11d);
    and_(r8d, 0xFFF8);
    movzx(r9d, word[r15 + int(offsetof(CpuState, gdtr) + offsetof(TableReg, limit))]);
    lea(r10d, ptr[r8 + 7]);
    cmp(r10d, r9d);
    s.entry_fix2 = jcc32(7);  // ja: past the GDT's limit
    add(r8d, dword[r15 + int(offsetof(CpuState, gdtr) + offsetof(TableReg, base))]);
    const u32 miss = lookup(8, false, true);
    mov(r9, qword[r8]);
    bind(null_sel);
    mov(r10d, r11d);  // the remembered load for this selector's slot
    and_(r10d, 0x38);
    shl(r10d, 2);
    cmp(r11d, dword[r14 + r10 + kSel]);
    const u32 other_sel = jcc32(5);
    cmp(r9, qword[r14 + r10 + kRaw]);
    const u32 other_desc = jcc32(5);
    const unsigned shift = 4 + 2 * i.reg;
    auto copy = [&] {
      mov(r9, qword[r14 + r10 + kSeg]);
      mov(qword[r15 + kSegOff + int(i.reg * sizeof(Segment))], r9);
      mov(r9, qword[r14 + r10 + kSeg + 8]);
      mov(qword[r15 + kSegOff + int(i.reg * sizeof(Segment)) + 8], r9);
    };
    if (i.reg == GS) {
      // Not in the mode: the block goes on, its GS accesses read Rt::gs_slow.
      copy();
      movzx(r9d, byte[r14 + r10 + kFlat]);
      and_(r9d, 1);
      xor_(r9d, 1);
      mov(dword[r14 + int(offsetof(Rt, gs_slow))], r9d);
    } else {
      cmp(byte[r14 + r10 + kFlat], u8((b_->mode >> shift) & 3));
      const u32 changed = jcc32(5);  // jne: another mode
      copy();
      if (bt_.options().chain && (b_->mode & M_CS_FLAT) && b_->cs_base == 0) {
        // The mode changes (FS between the kernel's per-CPU segment and the
        // user's null one on every system call): the block ends here and the
        // translation for the new mode is looked up in the jump cache.
        const u32 over = jmp32();
        bind(changed);
        copy();
        add_unrun(idx_);  // the prologue counted the rest of the block
        movzx(r8d, byte[r14 + r10 + kFlat]);
        shl(r8d, u8(shift));
        or_(r8d, b_->mode & ~(3u << shift));
        shl(r8, 32);
        mov(r9d, eip + i.len);
        jc_lookup(true);
        bind(over);
      } else {
        s.entry_fix = changed;  // the semantics, then the dispatcher
      }
    }
    if (s.entry_fix == kNone) s.entry_fix = miss;
    else also_slow(s.site, miss);
    for (u32 f : {other_desc, other_sel}) also_slow(s.site, f);
    const u32 done = here();
    for (Slow* p = &s; p <= &slows_.back(); p++) p->done = done;
    if (rd) rd->done = done;
    return Done::next;
  }
  // Sensitive instructions call the semantics. Those that do not transfer
  // control continue in the block unless the callout finds the mode, the TLB,
  // TF, the interrupt shadow or a deliverable interrupt changed.
  if (info.attrs & (SEN | PRV | IOI)) return callout(i, eip, pa, info.attrs & CT);
  // With DF in the translation's mode, CLD/STD that keep it are no-ops.
  if ((i.op == Op::CLD && !(b_->mode & M_DF)) || (i.op == Op::STD && (b_->mode & M_DF))) {
    st.native_insns++;
    return Done::next;
  }
  // REP MOVS/STOS, REPNE SCASB and REPE/REPNE CMPSB forward: the host's own string instruction
  // over the part that lies in one page of each operand; MOVS/STOS then go on
  // with the next pages, the comparisons continue through the semantics.
  // (Base-0 segments only: a chunk then never wraps past offset 4 GiB unseen.)
  if (!interp_only && i.rep() && i.asize == 4 && !(b_->mode & M_DF) && !direct_slow(pa) &&
      (b_->mode & m_base0(ES)) &&
      (((i.op == Op::MOVSB || i.op == Op::MOVSV) && (b_->mode & m_base0(i.seg))) ||
       i.op == Op::STOSB || i.op == Op::STOSV ||
       (i.op == Op::SCASB && (i.prefixes & P_REPNE)) ||
       (i.op == Op::CMPSB && (b_->mode & m_base0(i.seg)))) &&
      ((info.attrs & B) || i.osize == 4)) {
    st.native_insns++;
    rep_string(i, eip, pa, (info.attrs & B) ? 1 : 4);
    return Done::next;
  }
  // One SCAS: compare AL/AX/EAX with ES:[EDI], step EDI.
  if (!interp_only && (i.op == Op::SCASB || i.op == Op::SCASV) && !i.rep() && i.asize == 4 &&
      !direct_slow(pa) && seg_native(ES)) {
    st.native_insns++;
    const unsigned size = (info.attrs & B) ? 1 : i.osize;
    Slow& s = mem_access(i, eip, pa, ES, size, false, Site::A_EDI);
    if (size == 2) db(0x66);
    db(0x41);
    db(size == 1 ? 0x3A : 0x3B);  // cmp al/ax/eax, [r8]
    db(0x00);
    fl_ = Fl::dirty;
    lea(edi, ptr[rdi + ((b_->mode & M_DF) ? -int(size) : int(size))]);
    s.done = here();
    return Done::next;
  }
  // Single (not REP) string moves, stores and loads, 32-bit addressing.
  if (!interp_only && (i.op == Op::MOVSB || i.op == Op::MOVSV || i.op == Op::STOSB ||
                       i.op == Op::STOSV || i.op == Op::LODSB || i.op == Op::LODSV) &&
      !i.rep() && i.asize == 4 && !direct_slow(pa) && seg_native(ES) &&
      (i.op == Op::STOSB || i.op == Op::STOSV || seg_native(i.seg))) {
    st.native_insns++;
    const unsigned size = (info.attrs & B) ? 1 : i.osize;
    const int step = (b_->mode & M_DF) ? -int(size) : int(size);
    const bool load = i.op != Op::STOSB && i.op != Op::STOSV;
    const bool store = i.op != Op::LODSB && i.op != Op::LODSV;
    Slow* s1 = nullptr;
    Slow* s2 = nullptr;
    auto val = [&](int r) -> const Xbyak::Reg& {
      static const Reg8 b8[] = {Reg8(0), Reg8(9), Reg8(10)};
      static const Reg16 b16[] = {Reg16(0), Reg16(9), Reg16(10)};
      static const Reg32 b32[] = {Reg32(0), Reg32(9), Reg32(10)};
      return size == 1 ? static_cast<const Xbyak::Reg&>(b8[r]) : size == 2 ? static_cast<const Xbyak::Reg&>(b16[r])
                                                                   : static_cast<const Xbyak::Reg&>(b32[r]);
    };
    if (load) {
      s1 = &mem_access(i, eip, pa, i.seg, size, false, Site::A_ESI);
      if (store) {
        // Keep the value in rax's slot on the host stack (red zone): r9-r11 are the lookup's.
        if (size == 1) { movzx(r9d, byte[r8]); }
        else if (size == 2) { movzx(r9d, word[r8]); }
        else { mov(r9d, dword[r8]); }
        mov(dword[rsp - 8], r9d);
      } else {
        mov(val(0), size == 1 ? static_cast<const Operand&>(byte[r8])
                              : size == 2 ? static_cast<const Operand&>(word[r8])
                                          : static_cast<const Operand&>(dword[r8]));
      }
    }
    if (store) {
      s2 = &mem_access(i, eip, pa, ES, size, true, Site::A_EDI);
      if (load) {
        mov(r9d, dword[rsp - 8]);
        mov(size == 1 ? static_cast<const Operand&>(byte[r8]) : size == 2 ? static_cast<const Operand&>(word[r8])
                                                                          : static_cast<const Operand&>(dword[r8]),
            val(1));
      } else {
        mov(size == 1 ? static_cast<const Operand&>(byte[r8]) : size == 2 ? static_cast<const Operand&>(word[r8])
                                                                          : static_cast<const Operand&>(dword[r8]),
            val(0));
      }
      lea(edi, ptr[rdi + step]);
    }
    if (load) lea(esi, ptr[rsi + step]);
    if (s1) s1->done = here();
    if (s2) s2->done = here();
    return Done::next;
  }
  if ((info.attrs & FPU) && !interp_only && x87(i, eip, pa)) return Done::next;
  if (interp_only || (info.attrs & (FPU | MMX | STR))) return callout(i, eip, pa, info.attrs & CT);
  if (i.asize != 4) return callout(i, eip, pa, info.attrs & CT);
  const bool mem_native = !i.mem || (seg_native(i.seg) && !direct_slow(pa));

  // Control transfers.
  if (info.attrs & CT) {
    if (i.osize != 4 || !flat_cs) return callout(i, eip, pa, true);
    // Those with a memory access save the flags first, as their exit must:
    // the access then uses the short check (not the flag-free one).
    if (i.op == Op::CALL_Jz || i.op == Op::RET || i.op == Op::RET_Iw ||
        (i.op == Op::JMP_Ev && i.mem) || i.op == Op::CALL_Ev)
      save_flags();
    switch (i.op) {
      case Op::JMP_Jb: case Op::JMP_Jz:
        st.native_insns++;
        exit_direct(next + i.imm);
        return Done::ended;
      case Op::JCC_Jb: case Op::JCC_Jz: {
        st.native_insns++;
        if (idx_ + 1 < n_) {
          // A side exit: the block goes on with the next instruction, the
          // guest flags still in the host's; the exit is out of line.
          Side& sd = sides_.emplace_back();
          sd.fix = jcc32(i.opcode & 15);
          sd.target = next + i.imm;
          sd.idx = idx_;
          sd.fl = fl_;
          sd.lazy = lazy_;
          return Done::next;
        }
        if (loop_p_ >= 0 && int(idx_) == loop_p_ + 1) {
          // The loop's back edge: the flags stay P's (see loop_p_).
          mov(byte[r14 + kLoopLazyOff], 1);
          bind_to(jcc32(i.opcode & 15), loop_body_);
          exit_direct(next);
          return Done::ended;
        }
        save_flags();
        const u32 taken = jcc32(i.opcode & 15);
        exit_direct(next);
        bind(taken);
        exit_direct(next + i.imm, taken);  // flags saved: the slot comes first
        return Done::ended;
      }
      case Op::CALL_Jz: {
        if (!stack_ok() || direct_slow(pa)) break;
        st.native_insns++;
        Slow& s = mem_access(i, eip, pa, SS, 4, true, Site::A_PUSH);
        mov(dword[r8], next);
        lea(r12d, ptr[r12 - 4]);
        s.done = here();
        if (bt_.options().ras && bt_.options().chain && b_->cs_base == 0 &&
            b_->nlinks + 3u <= Block::kMaxLinks) {
          // The return stack: a host call to the exit to the callee, with
          // (mode << 32 | return EIP) beside the host return address. A RET
          // that pops that EIP in the same mode returns to the code after
          // the call (the host predicts it), which chains to the block at
          // the return address. (Valid while the frame is: a CR3 load or
          // anything else that changes the TLB leaves generated code, and
          // with it the frames, but INVLPG, which then ends the block;
          // code writes unpatch the chain.) Far below the entry RSP (calls
          // never returned from), no frame.
          st.ras_calls++;
          flags_out();
          fl_ = Fl::parked;
          cmp(rsp, qword[r14 + kRasFloorOff]);
          const u32 plain = jcc32(6);  // jbe
          mov(r11, (u64(b_->mode) << 32) | next);
          push(r11);
          db(0xE8);  // call rel32: to the callee's exit below
          dd(0);
          const u32 callee = here() - 4;
          lea(rsp, ptr[rsp + 8]);  // back from the callee: the frame's key
          exit_direct(next);
          bind(callee);
          exit_direct(next + i.imm);
          bind(plain);
          exit_direct(next + i.imm);
          return Done::ended;
        }
        exit_direct(next + i.imm);
        return Done::ended;
      }
      case Op::RET: case Op::RET_Iw: {
        if (!stack_ok() || direct_slow(pa)) break;
        st.native_insns++;
        Slow& s = mem_access(i, eip, pa, SS, 4, false, Site::A_POP);
        mov(r9d, dword[r8]);
        lea(r12d, ptr[r12 + 4 + int(i.op == Op::RET_Iw ? (i.imm & 0xFFFF) : 0)]);
        ras_ret_ = bt_.options().ras && bt_.options().chain && b_->cs_base == 0;
        if (ras_ret_) st.ras_rets++;
        exit_indirect_after(s);
        ras_ret_ = false;
        return Done::ended;
      }
      case Op::JMP_Ev: {
        if (!i.mem) {
          st.native_insns++;
          mov(r9d, Reg32(hreg(i.rm)));
          exit_indirect();
          return Done::ended;
        }
        if (!mem_native) break;
        st.native_insns++;
        Slow& s = mem_access(i, eip, pa, i.seg, 4, false, Site::A_EA);
        mov(r9d, dword[r8]);
        exit_indirect_after(s);
        return Done::ended;
      }
      case Op::CALL_Ev: {
        if (i.mem) {
          if (!stack_ok() || !mem_native) break;
          st.native_insns++;
          auto [s1, s2] = operand_then_push_slot(i, eip, pa);
          mov(dword[r8], next);
          mov(r9d, dword[rsp - 8]);
          lea(r12d, ptr[r12 - 4]);
          exit_indirect_after(*s2);
          s1->done = s2->done;
          return Done::ended;
        }
        if (!stack_ok() || direct_slow(pa)) break;
        st.native_insns++;
        Slow& s = mem_access(i, eip, pa, SS, 4, true, Site::A_PUSH);
        mov(dword[r8], next);
        mov(r9d, Reg32(hreg(i.rm)));
        lea(r12d, ptr[r12 - 4]);
        exit_indirect_after(s);
        return Done::ended;
      }
      default: break;
    }
    return callout(i, eip, pa, true);
  }

  // BT/BTS/BTR/BTC m32, r32: the operand is the dword at EA + 4 * (offset
  // >> 5) (signed), the bit offset & 31 in it; the host's instruction on
  // that dword with the masked offset.
  if ((i.op == Op::BT_EvGv || i.op == Op::BTS_EvGv || i.op == Op::BTR_EvGv || i.op == Op::BTC_EvGv) &&
      i.mem && i.osize == 4 && mem_native && !i.rep() && !(i.prefixes & P_LOCK)) {
    st.native_insns++;
    const Reg32 off(hreg(i.reg));
    save_flags();
    fl_ = Fl::parked;
    mov(r10d, off);
    sar(r10d, 5);
    bt_index_ = true;
    Slow& s = mem_access(i, eip, pa, i.seg, 4, i.op != Op::BT_EvGv, Site::A_EA, true);
    bt_index_ = false;
    mov(r9d, off);
    and_(r9d, 31);
    restore_flags();  // the flags BT leaves are the guest's
    db(0x45); db(0x0F);
    db(i.op == Op::BT_EvGv ? 0xA3 : i.op == Op::BTS_EvGv ? 0xAB : i.op == Op::BTR_EvGv ? 0xB3 : 0xBB);
    db(0x08);  // [r8], r9d
    fl_ = Fl::dirty;
    s.done = here();
    return Done::next;
  }

  // DIV/IDIV: the host's instruction on the guest's own EAX/EDX, the
  // divisor in r10 (zero- or sign-extended). The cases the host would trap
  // on (#DE: a zero divisor, a quotient that does not fit) are checked first
  // and go out of line to the semantics, which raise the fault with the
  // flags and registers as they were. IDIV takes the inline path only when
  // the dividend's high half is the sign of its low half (CDQ; IDIV) and
  // the divisor is neither 0 nor -1: the quotient then fits. The rest (also
  // a slow path's TLB miss) runs through the semantics, correct for all
  // inputs. The flags the host leaves are the guest's, as in the semantics,
  // which run the same host instruction on the guest's flags (x86/arith.h).
  if ((i.op == Op::DIV_Eb || i.op == Op::DIV_Ev || i.op == Op::IDIV_Eb || i.op == Op::IDIV_Ev) &&
      bt_.options().inline_div && mem_native && !i.rep() && !(i.prefixes & P_LOCK)) {
    st.native_insns++;
    st.inline_divs++;
    const bool sign = i.op == Op::IDIV_Eb || i.op == Op::IDIV_Ev;
    const unsigned size = (info.attrs & B) ? 1 : i.osize;
    // The flags to Rt::hf: the checks clobber the host's, and the slow path
    // (a fault among them) finds them there.
    if (rcp_ >= 0) rcp_run();
    save_flags();
    const bool restore = fl_ != Fl::parked || !out_dead_;
    fl_ = Fl::parked;
    Slow* s = nullptr;  // the memory operand's slow path
    Site* site;
    if (i.mem) {
      direct_fold_ok_ = true;
      s = &mem_access(i, eip, pa, i.seg, size, false, Site::A_EA);
      site = s->site;
      direct_fold_ok_ = false;
      Insn m = i;
      Native nm;
      nm.ok = true;
      nm.rm = RM_R;
      nm.rm_size = u8(size);
      nm.reg_is_reg = true;
      m.osize = 4;
      if (size == 4) {
        m.op = Op::MOV_GvEv; m.map = 0; m.opcode = 0x8B;
      } else {
        m.op = size == 1 ? Op::MOVZX_GvEb : Op::MOVZX_GvEw; m.map = 1; m.opcode = size == 1 ? 0xB6 : 0xB7;
      }
      reencode(m, nm, bytes, 10);  // r10d = the divisor (no immediate read from bytes)
    } else {
      site = new_site(i, eip, pa, false, false);
      if (size == 1 && i.rm >= 4) {  // AH..BH
        mov(r10d, Reg32(i.rm - 4));
        shr(r10d, 8);
        movzx(r10d, r10b);
      } else if (size == 1) {
        movzx(r10d, Reg8(i.rm));
      } else if (size == 2) {
        movzx(r10d, Reg16(hreg(i.rm)));
      } else {
        mov(r10d, Reg32(hreg(i.rm)));
      }
    }
    // Another way into the same slow path (the flags parked).
    Slow& de = also_slow(site, kNone);
    if (!sign) {
      // #DE exactly when the high half >= the divisor (0 included).
      if (size == 1) {
        movzx(r11d, ax);
        shr(r11d, 8);
        cmp(r11d, r10d);
      } else if (size == 2) {
        cmp(dx, r10w);
      } else {
        cmp(edx, r10d);
      }
      de.entry_fix = jcc32(3);  // jae
    } else {
      if (size == 1) movsx(r10d, r10b);
      else if (size == 2) movsx(r10d, r10w);
      lea(r11d, ptr[r10 + 1]);
      cmp(r11d, 1);
      de.entry_fix = jcc32(6);  // jbe: the divisor is 0 or -1
      if (size == 1) {
        movsx(r11d, al);
        cmp(r11w, ax);
      } else if (size == 2) {
        movsx(r11d, ax);
        sar(r11d, 16);
        cmp(r11w, dx);
      } else {
        mov(r11d, eax);
        sar(r11d, 31);
        cmp(r11d, edx);
      }
      de.entry_fix2 = jcc32(5);  // jne: the high half is not the low half's sign
    }
    if (restore) restore_flags();
    if (size == 2) db(0x66);
    db(0x41);  // REX.B: r10
    db(size == 1 ? 0xF6 : 0xF7);
    db(u8(0xC0 | ((sign ? 7 : 6) << 3) | 2));  // div/idiv r10b/r10w/r10d
    fl_ = Fl::dirty;
    de.done = here();
    if (s) s->done = de.done;
    return Done::next;
  }

  // Stack operations.
  switch (i.op) {
    case Op::PUSH_Ev:
      if (!i.mem) goto push;
      if (i.osize != 4 || !stack_ok() || !mem_native) break;
      {
        st.native_insns++;
        auto [s1, s2] = operand_then_push_slot(i, eip, pa);
        mov(r9d, dword[rsp - 8]);
        mov(dword[r8], r9d);
        lea(r12d, ptr[r12 - 4]);
        s1->done = s2->done = here();
        return Done::next;
      }
    case Op::PUSH_r: case Op::PUSH_Iz: case Op::PUSH_Ib:
    push: {
      if (i.osize != 4 || !stack_ok() || direct_slow(pa)) break;
      st.native_insns++;
      Slow& s = mem_access(i, eip, pa, SS, 4, true, Site::A_PUSH);
      if (i.op == Op::PUSH_r) mov(dword[r8], Reg32(hreg(i.opcode & 7)));
      else if (i.op == Op::PUSH_Ev) mov(dword[r8], Reg32(hreg(i.rm)));
      else mov(dword[r8], i.imm);
      lea(r12d, ptr[r12 - 4]);
      s.done = here();
      return Done::next;
    }
    case Op::POP_r: case Op::POP_Ev: {
      if (i.osize != 4 || !stack_ok() || direct_slow(pa) || (i.op == Op::POP_Ev && i.mem)) break;
      st.native_insns++;
      Slow& s = mem_access(i, eip, pa, SS, 4, false, Site::A_POP);
      mov(r9d, dword[r8]);
      lea(r12d, ptr[r12 + 4]);
      mov(Reg32(hreg(i.op == Op::POP_r ? (i.opcode & 7) : i.rm)), r9d);
      s.done = here();
      return Done::next;
    }
    case Op::LEAVE: {
      if (i.osize != 4 || !stack_ok() || direct_slow(pa)) break;
      st.native_insns++;
      Slow& s = mem_access(i, eip, pa, SS, 4, false, Site::A_EBP);
      mov(r9d, dword[r8]);
      lea(r12d, ptr[rbp + 4]);
      mov(ebp, r9d);
      s.done = here();
      return Done::next;
    }
    case Op::LEA: {
      if (i.osize != 4) break;
      st.native_insns++;
      RegExp e;
      bool any = false;
      if (i.base != kNoReg) { e = RegExp(Reg64(hreg(i.base))); any = true; }
      if (i.index != kNoReg) {
        RegExp ix = Reg64(hreg(i.index)) * (1 << i.scale);
        e = any ? e + ix : ix;
        any = true;
      }
      if (any) lea(Reg32(hreg(i.reg)), ptr[e + i32(i.disp)]);
      else mov(Reg32(hreg(i.reg)), i.disp);
      return Done::next;
    }
    case Op::NOP: case Op::HINT_NOP:
      st.native_insns++;
      return Done::next;
    case Op::INC_r: case Op::DEC_r: {
      st.native_insns++;
      const int r = hreg(i.opcode & 7);
      if (i.osize == 2) db(0x66);
      if (r >= 8) db(0x41);
      db(0xFF);
      db(u8(0xC0 | ((i.op == Op::DEC_r ? 1 : 0) << 3) | (r & 7)));
      fl_ = Fl::dirty;
      return Done::next;
    }
    case Op::MOV_rIv: case Op::XCHG_eAXr: case Op::BSWAP: {
      if (i.op == Op::BSWAP && i.osize != 4) break;
      st.native_insns++;
      const int r = hreg(i.opcode & 7);
      if (i.osize == 2) db(0x66);
      if (r >= 8) db(0x41);
      if (i.map == 1) db(0x0F);
      db(u8((i.opcode & ~7) | (r & 7)));
      if (i.op == Op::MOV_rIv)
        for (unsigned k = 0; k < i.osize; k++) db(bytes[i.len - i.osize + k]);
      return Done::next;
    }
    case Op::MOV_rbIb: case Op::CBW: case Op::CWD: case Op::CMC: case Op::CLC: case Op::STC:
    case Op::SAHF: case Op::LAHF:
    case Op::ADD_ALIb: case Op::ADD_eAXIz: case Op::OR_ALIb: case Op::OR_eAXIz:
    case Op::ADC_ALIb: case Op::ADC_eAXIz: case Op::SBB_ALIb: case Op::SBB_eAXIz:
    case Op::AND_ALIb: case Op::AND_eAXIz: case Op::SUB_ALIb: case Op::SUB_eAXIz:
    case Op::XOR_ALIb: case Op::XOR_eAXIz: case Op::CMP_ALIb: case Op::CMP_eAXIz:
    case Op::TEST_ALIb: case Op::TEST_eAXIz: {
      // No ModRM, no ESP: the guest bytes after the prefixes run as they are.
      st.native_insns++;
      const unsigned imm_len =
          info.imm == I_B ? 1 : info.imm == I_Z ? (i.osize == 2 ? 2 : 4) : 0;
      if (i.osize == 2 && !(info.attrs & B)) db(0x66);
      db(i.opcode);
      for (unsigned k = 0; k < imm_len; k++) db(bytes[i.len - imm_len + k]);
      if (info.flags_written & ARITH) fl_ = Fl::dirty;
      return Done::next;
    }
    case Op::MOV_ALOb: case Op::MOV_eAXOv: case Op::MOV_ObAL: case Op::MOV_OveAX: {
      if (!seg_native(i.seg) || direct_slow(pa)) break;  // no ModRM: i.mem is false
      // As MOV AL/eAX <-> [moffs] through the generic path.
      Insn m = i;
      const bool load = i.op == Op::MOV_ALOb || i.op == Op::MOV_eAXOv;
      const bool byte = info.attrs & B;
      m.op = load ? (byte ? Op::MOV_GbEb : Op::MOV_GvEv) : (byte ? Op::MOV_EbGb : Op::MOV_EvGv);
      m.opcode = load ? (byte ? 0x8A : 0x8B) : (byte ? 0x88 : 0x89);
      m.mem = true;
      m.reg = 0;
      m.base = m.index = kNoReg;
      st.native_insns++;
      const unsigned size = byte ? 1 : i.osize;
      direct_fold_ok_ = true;
      Slow& s = mem_access(i, eip, pa, i.seg, size, !load, Site::A_MOFFS);  // moffs is in imm
      direct_fold_ok_ = false;
      Native n;
      n.ok = true;
      n.rm = load ? RM_R : RM_W;
      n.rm_size = u8(size);
      n.reg_is_reg = true;
      reencode(m, n, bytes);  // MOV has no immediate: nothing read from bytes
      s.done = here();
      return Done::next;
    }
    default: break;
  }

  const Native n = native_of(i);
  if (n.ok && !(n.reg_only && i.mem) && mem_native) {
    const bool byte_op = info.attrs & B;
    if (i.mem && n.reg_is_reg && byte_op && i.reg >= 4 && can_reencode_hi8(i)) {
      // AH..BH with a memory operand: stage the register in r10b (flag-free
      // moves through the red zone below RSP).
      st.native_insns++;
      Slow& s = mem_access(i, eip, pa, i.seg, 1, n.rm == RM_W || n.rm == RM_RW, Site::A_EA);
      db(0x88); db(u8(0x44 | (i.reg << 3))); db(0x24); db(0xF8);       // mov [rsp-8], ah..bh
      movzx(r10d, byte[rsp - 8]);
      reencode(i, n, bytes, 10);
      if (writes_reg8(i.op)) {
        mov(byte[rsp - 8], r10b);
        db(0x8A); db(u8(0x44 | (i.reg << 3))); db(0x24); db(0xF8);     // mov ah..bh, [rsp-8]
      }
      if (info.flags_written & ARITH) fl_ = Fl::dirty;
      s.done = here();
      return Done::next;
    }
    if (can_reencode(i, n)) {
      st.native_insns++;
      if (!i.mem) {
        reencode(i, n, bytes);
      } else {
        direct_fold_ok_ = true;
        Slow& s = mem_access(i, eip, pa, i.seg, n.rm_size, n.rm == RM_W || n.rm == RM_RW, Site::A_EA);
        direct_fold_ok_ = false;
        reencode(i, n, bytes);
        s.done = here();
      }
      if (info.flags_written & ARITH) fl_ = Fl::dirty;
      return Done::next;
    }
  }
  return callout(i, eip, pa, info.attrs & CT);
}

}  // namespace popek::engine::bt
