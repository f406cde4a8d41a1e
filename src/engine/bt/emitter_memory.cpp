// The emitter's memory operands: effective addresses and segment bases,
// the inline soft-TLB lookups (compare-and-branch and flag-free), the
// direct accesses (paging off, the user window), memos and their misses,
// and whether parking the flags before an access pays.
#include "engine/bt/emitter.h"

namespace popek::engine::bt {

// ModRM (reg field `ext`), SIB and displacement of the guest's own memory
// operand with its registers mapped (user window at host 0, under 0x67).
void Emitter::guest_modrm(unsigned ext, const Insn& i) {
  const i32 disp = i32(i.disp);
  const int base = i.base == kNoReg ? -1 : hreg(i.base);
  const int index = i.index == kNoReg ? -1 : hreg(i.index);  // never rsp
  if (base < 0) {  // [index*scale + disp32] or [disp32], through a SIB (mod 00 r/m 101 is RIP-relative)
    db(u8((ext << 3) | 4));
    db(u8((i.scale << 6) | ((index >= 0 ? (index & 7) : 4) << 3) | 5));
    dd(u32(disp));
    return;
  }
  const unsigned mod = (disp == 0 && (base & 7) != 5) ? 0 : (disp >= -128 && disp <= 127) ? 1 : 2;
  if (index >= 0 || (base & 7) == 4) {
    db(u8((mod << 6) | (ext << 3) | 4));
    db(u8((i.scale << 6) | ((index >= 0 ? (index & 7) : 4) << 3) | (base & 7)));
  } else {
    db(u8((mod << 6) | (ext << 3) | (base & 7)));
  }
  if (mod == 1) db(u8(i8(disp)));
  else if (mod == 2) dd(u32(disp));
}

// r8d = offset of the memory operand.
// Encoded by hand (the most frequent sequence after the TLB check):
// lea r8d, [base + index*scale + disp], or mov r8d, disp.
void Emitter::ea_to_r8(const Insn& i) {
  const i32 disp = i32(i.disp);
  if (i.base == kNoReg && i.index == kNoReg) {
    db(0x41); db(0xB8); dd(u32(disp));  // mov r8d, imm32
    return;
  }
  const int base = i.base == kNoReg ? -1 : hreg(i.base);
  const int index = i.index == kNoReg ? -1 : hreg(i.index);  // never rsp
  db(0x44 | (index >= 8 ? 0x02 : 0) | (base >= 8 ? 0x01 : 0));  // REX.R: r8d
  db(0x8D);
  if (base < 0) {  // [index*scale + disp32]
    db(0x04);
    db(u8((i.scale << 6) | ((index & 7) << 3) | 5));
    dd(u32(disp));
    return;
  }
  const unsigned mod = (disp == 0 && (base & 7) != 5) ? 0 : (disp >= -128 && disp <= 127) ? 1 : 2;
  if (index >= 0 || (base & 7) == 4) {
    db(u8((mod << 6) | 4));
    db(u8((i.scale << 6) | ((index >= 0 ? (index & 7) : 4) << 3) | (base & 7)));
  } else {
    db(u8((mod << 6) | (base & 7)));
  }
  if (mod == 1) db(u8(i8(disp)));
  else if (mod == 2) dd(u32(disp));
}

// Offset r8d -> linear r8d. A flat segment's limit check is only that the
// access does not wrap past offset 4 GiB: with base 0 the TLB check sees
// that (the last byte's page differs), with another base it must be tested
// here — by a branch to `s` (clobber), else into r11d (non-zero: wraps) for
// the flag-free lookup to fold in. Returns true in the latter case.
bool Emitter::add_seg_base(unsigned seg, unsigned size, bool clobber, Slow& s) {
  if (b_->mode & m_base0(seg)) return false;
  bool wrap_in_r11 = false;
  if (size > 1) {
    if (clobber) {
      cmp(r8d, u32(0xFFFFFFFFu - (size - 1)));
      s.entry_fix2 = jcc32(7);  // ja
    } else {
      lea(r11, ptr[r8 + int(size - 1)]);  // 33 bits
      rorx(r11, r11, 32);
      movzx(r11d, r11b);                   // bit 32 of the last offset
      wrap_in_r11 = true;
    }
  }
  mov(r9d, seg_field(seg, kBaseOff, 4));
  lea(r8d, ptr[r8 + r9]);
  return wrap_in_r11;
}

u32 Emitter::lookup(unsigned size, bool write, bool clobber, bool wrap_in_r11) {
  if (!clobber) bt_.bstats().flag_free_checks++;
  if (size != 1 && size != 2 && size != 4 && size != 8 && size != 10)
    throw Error("bt: internal error: a memory operand of " + std::to_string(size) + " bytes");
  const unsigned key = (size == 1 ? 0u : size == 2 ? 1u : size == 4 ? 2u : size == 8 ? 3u : 4u) | (write ? 8u : 0u) |
                       (clobber ? 16u : 0u) | (wrap_in_r11 ? 32u : 0u) | (user_ ? 64u : 0u);
  return cached(lookup_snips_[key], [&] { return encode_lookup(size, write, clobber, wrap_in_r11); });
}

// The compare-and-branch part of the TLB check (clobbers the flags): r9 =
// the entry; returns the rel32 of the jump taken on a miss.
u32 Emitter::tag_check(unsigned size, bool write) {
  static_assert(mem::Mmu::kTlbBits == 16 && (kR13Bias & 0xFFFF) == 0x100C, "BEXTR takes 16 bits from bit 12");
  bextr(r9d, r8d, r13d);  // the entry: the page number's low 16 bits (r13's control byte pair)
  // The page of the last byte must be the entry's tag (invalid tags have
  // low bits set and never compare equal).
  lea(r10d, ptr[r8 + int(size - 1)]);
  and_(r10d, ~0xFFFu);
  cmp(r10d, dword[r14 + r9 * 4 + tlb_off_ + int(mem::Mmu::tag_array_off(user_, write))]);
  return jcc32(5);  // jne
}

u32 Emitter::encode_lookup(unsigned size, bool write, bool clobber, bool wrap_in_r11) {
  // The tag and addend arrays (Mmu::tag_array_off): the entry number
  // scales to them in the address, no multiply first.
  const int tag = tlb_off_ + int(mem::Mmu::tag_array_off(user_, write));
  const int addend = tlb_off_ + int(mem::Mmu::addend_array_off(user_));
  if (clobber) {
    const u32 fix = tag_check(size, write);
    add(r8, qword[r14 + r9 * 8 + addend]);
    return fix;
  }
  rorx(r9d, r8d, 12);  // (BEXTR writes flags: the flag-free way takes two)
  movzx(r9d, r9w);
  mov(r10d, dword[r14 + r9 * 4 + tag]);
  not_(r10d);
  lea(r10d, ptr[r8 + r10 + int(size)]);  // last byte - tag
  shrx(r10d, r10d, r13d);                  // zero iff on the tagged page
  if (wrap_in_r11) lea(r10d, ptr[r10 + r11]);
  mov(r11, rcx);
  mov(ecx, r10d);
  db(0xE3);  // jrcxz over the next two instructions (hit)
  db(8);
  mov(rcx, r11);  // 3 bytes
  const u32 fix = jmp32();  // 5 bytes
  mov(rcx, r11);
  mov(r10, qword[r14 + r9 * 8 + addend]);
  lea(r8, ptr[r8 + r10]);
  return fix;
}

// Whether parking the flags at this memory access pays: unless an
// instruction that needs them follows before a second access (it would
// restore them, 5 more), a definer of all six or the block's end (which
// saves them anyway) come first.
bool Emitter::park_pays() const {
  unsigned accesses = 1;
  for (unsigned j = idx_ + 1; j < n_; j++) {
    const Insn& x = pre_[j].i;
    if (needs_flags(x)) return accesses >= 2;
    if (x.mem && x.op != Op::LEA) accesses++;
    if (defines_all_flags(x)) return true;
  }
  return true;
}

// Whether x's ModRM operand may be a frame-check group's (see frames_):
// [EBP/ESP + disp] through a flat base-0 segment, of an instruction the
// re-encoder runs inline (or PUSH of it), at most 4 bytes; its size and
// whether it writes.
bool Emitter::frame_member(const Insn& x, unsigned* size, bool* write) const {
  if (!x.mem || x.op == Op::LEA || x.asize != 4 || x.index != kNoReg || (x.base != EBP && x.base != ESP))
    return false;
  if (x.info().attrs & (SEN | PRV | IOI | FPU | MMX | STR | CT)) return false;
  if (x.rep() || (bt_.interp_group_mask() & (1u << group_of(x)))) return false;
  const unsigned seg = x.seg;
  if (seg == GS || !(b_->mode & m_flat(seg)) || !(b_->mode & m_base0(seg))) return false;
  if (x.op == Op::PUSH_Ev) {
    *size = x.osize;
    *write = false;
    return x.base == EBP && x.osize == 4;  // (with ESP the push moves the base after its read)
  }
  const Native nat = native_of(x);
  if (!nat.ok || nat.reg_only || nat.rm_size > 4) return false;
  *size = nat.rm_size;
  *write = nat.rm == RM_W || nat.rm == RM_RW;
  return true;
}

// x's implicit stack access as a frame-check member: -4 a 32-bit push
// (PUSH reg/imm/r/m), +4 a 32-bit pop into a register other than ESP, 0 none.
int Emitter::frame_stack_access(const Insn& x) const {
  if (x.osize != 4 || !(b_->mode & M_SS32) || !(b_->mode & m_flat(SS)) || !(b_->mode & m_base0(SS))) return 0;
  if (bt_.interp_group_mask() & (1u << group_of(x))) return 0;
  switch (x.op) {
    case Op::PUSH_r: case Op::PUSH_Iz: case Op::PUSH_Ib: return -4;
    case Op::PUSH_Ev: return x.mem && (x.asize != 4 || x.seg == GS) ? 0 : -4;
    case Op::POP_r: return (x.opcode & 7) == ESP ? 0 : 4;
    case Op::POP_Ev: return x.mem || x.rm == ESP ? 0 : 4;
    default: return 0;
  }
}

void Emitter::plan_frames(unsigned n) {
  frames_.clear();
  if (frame_use_.size() < n) frame_use_.resize(n);
  std::fill_n(frame_use_.begin(), n, FrameUse{});
  if (!bt_.options().frame_checks || (b_->mode & (M_NOPG | M_UWIN)) || bt_.is_no_frames(b_->pa)) return;
  // Where the block's own forward branches may come back in (side joins).
  std::vector<u8>& target = frame_target_;
  target.assign(n, 0);
  for (unsigned j = 0; j < n; j++) {
    const Insn& x = pre_[j].i;
    if (!(x.info().attrs & CT)) continue;
    const u32 to = pre_[j].eip + x.len + x.imm;
    for (unsigned t = j + 1; t < n; t++)
      if (pre_[t].eip == to) target[t] = 1;
  }
  int cur[2] = {-1, -1};  // the open group of slot 0 (EBP) and 1 (ESP)
  i32 esp = 0;            // ESP - base0 of slot 1's group
  auto close = [&](int slot) {
    const int g = cur[slot];
    cur[slot] = -1;
    if (g < 0 || frames_[size_t(g)].members >= 2) return;
    for (unsigned k = frames_[size_t(g)].first; k < n; k++) {  // alone: nothing to share
      if (frame_use_[k].ea == g) frame_use_[k].ea = -1;
      if (frame_use_[k].stk == g) frame_use_[k].stk = -1;
    }
    frames_[size_t(g)].members = 0;
  };
  // Adds a member at [base0 + off, base0 + off + size); returns its group.
  auto add = [&](int slot, unsigned j, i32 off, unsigned size, bool write) -> i16 {
    if (cur[slot] >= 0) {
      const FrameGroup& g = frames_[size_t(cur[slot])];
      if (std::max(g.hi, off + i32(size)) - std::min(g.lo, off) > 1024) close(slot);  // likely two pages
    }
    if (cur[slot] < 0) {
      cur[slot] = int(frames_.size());
      FrameGroup g;
      g.base = slot == 0 ? EBP : ESP;
      g.lo = off;
      g.hi = off + i32(size);
      g.first = j;
      frames_.push_back(g);
    }
    FrameGroup& g = frames_[size_t(cur[slot])];
    g.lo = std::min(g.lo, off);
    g.hi = std::max(g.hi, off + i32(size));
    g.write |= write;
    g.last = j;
    g.members++;
    return i16(cur[slot]);
  };
  for (unsigned j = 0; j < n; j++) {
    const Insn& x = pre_[j].i;
    FrameUse& u = frame_use_[j];
    if (target[j]) {
      close(0);
      close(1);
    }
    // (A new ESP group starts with base0 = ESP before x.)
    if (cur[1] < 0) esp = 0;
    unsigned size = 0;
    bool write = false;
    if (frame_member(x, &size, &write)) {
      const int slot = x.base == EBP ? 0 : 1;
      const i32 off = (slot == 1 ? esp : 0) + i32(x.disp);
      u.ea = add(slot, j, off, size, write);
      u.ea_off = off;
    }
    const int move = frame_stack_access(x);
    if (move) {
      const i32 off = move < 0 ? esp - 4 : esp;
      u.stk = add(1, j, off, 4, move < 0);
      u.stk_off = off;
    }
    // How x moves ESP, when it is known: PUSH/POP, ADD/SUB ESP, imm.
    bool esp_known = false;
    if (move) {
      esp += move;
      esp_known = true;
    } else if (!x.mem && x.rm == ESP && x.osize == 4 &&
               (x.op == Op::ADD_EvIz || x.op == Op::ADD_EvIb || x.op == Op::SUB_EvIz || x.op == Op::SUB_EvIb)) {
      const i32 imm = i32(x.imm);
      esp += (x.op == Op::ADD_EvIz || x.op == Op::ADD_EvIb) ? imm : -imm;
      esp_known = true;
    }
    u.esp_after = esp;
    // What ends a group after x: x writes its register (or may: a write
    // not known), or may change the mappings or the mode, or leave the block.
    unsigned m = 0;
    const auto attrs = x.info().attrs;
    const bool jcc = x.op == Op::JCC_Jb || x.op == Op::JCC_Jz;
    if ((attrs & (SEN | PRV | IOI)) || ((attrs & CT) && !jcc) || (!(attrs & CT) && !regs_written(x, &m))) {
      close(0);
      close(1);
    } else {
      if (m & (1u << EBP)) close(0);
      if ((m & (1u << ESP)) && !esp_known) close(1);
    }
    if (esp < -2048 || esp > 2048) close(1);  // (far from where it began)
  }
  close(0);
  close(1);
}

// Starts a memory access: a slow path (the whole instruction through the
// semantics) and the inline lookup of the operand `addr` names (the ModRM
// operand, or an implicit one: the stack, [EBP], a moffs, [ESI], [EDI]) in
// segment `seg`. Leaves its host address in r8. Returns the slow record.
// `flags_dead`: the instruction's result does not depend on the flags
// before it from here on (the caller saved them for the slow path).
Emitter::Slow& Emitter::mem_access(const Insn& i, u32 eip, u64 pa, unsigned seg, unsigned size, bool write,
                                   Site::Addr addr, bool flags_dead) {
  Slow& s = new_slow();
  s.site = new_access_site(i, eip, pa);
  // Paging off, a base-0 segment: the linear address is the physical one,
  // and RAM is addressed directly (no check, nothing clobbered).
  // With paging on at CPL 3, the user window (mem::Mmu) maps the user
  // pages the TLB holds at their linear addresses: addressed the same way.
  const bool nopg = b_->mode & M_NOPG;
  // A frame-check group's member (plan_frames): the leader checks the
  // group's span, a follower is addressed like a direct access.
  int fg = -1;
  i32 foff = 0;
  if (!in_rep_ && !bt_index_ && size <= 4 && idx_ < n_) {
    const FrameUse& u = frame_use_[idx_];
    if (addr == Site::A_EA) fg = u.ea, foff = u.ea_off;
    else if (addr == Site::A_PUSH || addr == Site::A_POP) fg = u.stk, foff = u.stk_off;
  }
  // (PUSH of a memory operand reads it first: the slow path of that read
  // runs the whole instruction, past this access's inline code, which so
  // cannot be a leader: it stays a plain access until one is.)
  if (fg >= 0 && !frames_[size_t(fg)].led && addr == Site::A_PUSH && i.mem) fg = -1;
  const bool follower = fg >= 0 && frames_[size_t(fg)].led;
  const bool leader = fg >= 0 && !follower;
  const bool direct =
      follower || ((nopg || (b_->mode & M_UWIN)) && !in_rep_ && (b_->mode & m_base0(seg)) && seg != GS);
  // Guest flags only in the host's at an access that does not read them:
  // parked now (5 instructions), this access and the next ones take the
  // compare-and-branch TLB check (7) instead of the flag-free one (14).
  if (!direct && fl_ == Fl::dirty && use_recipe_ < 0 && !flags_dead && !in_rep_ &&
      (out_dead_ || !needs_flags(i))) {
    if (last_p_ >= 0 && !lazy_ && bt_.options().flag_recipes && rcp_plain(i, last_p_watch_)) {
      // The flags stay P's recipe (see rcp_): the check may clobber them.
      rcp_ = last_p_;
      rcp_watch_ = last_p_watch_;
      rcp_keep_ = last_p_keep_;
      last_p_ = -1;
      fl_ = Fl::parked;
      s.rcp = rcp_;
      s.rcp_keep = rcp_keep_;
      bt_.bstats().flag_lazy_recipes++;
    } else if (park_pays()) {
      save_flags();
      bt_.bstats().flag_parks++;
    }
  }
  // The host flags are free for the check unless they hold guest flags not
  // yet saved, or the instruction needs the guest's flags as input.
  bool clobber = fl_ != Fl::dirty && (flags_dead || (!direct && (out_dead_ || !needs_flags(i))));
  if (direct) {
    s.site->phys = nopg && !follower;
    s.site->window = !nopg && !follower;
    bt_.bstats().direct_accesses++;
    if (clobber) fl_ = Fl::parked;
    s.parked = fl_ == Fl::parked;
    // After a partial recipe's P the host flags are not all the guest's:
    // a fault here recomputes them.
    if (use_recipe_ >= 0 && recipes_[size_t(use_recipe_)].partial && fl_ == Fl::dirty) s.recipe = use_recipe_;
  } else if (!clobber && use_recipe_ >= 0 && fl_ == Fl::dirty) {
    // The flags are the last producer's, recomputable on the slow path.
    clobber = true;
    s.recipe = use_recipe_;
    // Until F (emitted right after this access) defines them again, the
    // guest flags exist only as the recipe; nothing in between reads fl_.
    fl_ = Fl::parked;
    s.parked = false;
  } else {
    if (clobber) fl_ = Fl::parked;
    s.parked = fl_ == Fl::parked;
  }
  s.site->seg = u8(seg);
  s.site->size = u8(size);
  s.site->write = write;
  s.site->addr = addr;
  // A direct access to [base + disp] (disp >= 0) the caller re-encodes: the
  // access itself addresses [r13 + base + disp - kR13Bias] (a sum past 4 GiB
  // lands in the inaccessible rest of the reservation and faults: the slow
  // path then wraps it as the CPU does).
  // With the user window at host 0 the access is the guest's own
  // addressing under 0x67 (it wraps at 4 GiB as the guest's does).
  const bool zero = !nopg && bt_.user_window_zero();
  if (direct && !follower && zero && direct_fold_ok_ && addr == Site::A_EA && i.asize == 4 && !bt_index_) {
    direct_form_ = 3;
    s.direct_from = here();
    return s;
  }
  if (direct && !follower && direct_fold_ok_ && addr == Site::A_EA && i.asize == 4 && i.index == kNoReg &&
      i.base != kNoReg && i32(i.disp) >= 0) {
    direct_form_ = 2;
    s.direct_from = here();
    return s;
  }
  switch (addr) {
    case Site::A_EA:
      ea_to_r8(i);
      if (bt_index_) lea(r8d, ptr[r8 + r10 * 4]);
      break;
    case Site::A_PUSH: lea(r8d, ptr[r12 - 4]); break;
    case Site::A_POP: mov(r8d, r12d); break;
    case Site::A_EBP: mov(r8d, ebp); break;
    case Site::A_MOFFS: mov(r8d, i.imm); break;
    case Site::A_ESI: mov(r8d, esi); break;
    case Site::A_EDI: mov(r8d, edi); break;
  }
  if (follower) {
    // + the group's host address - linear address (the span check saw this
    // linear address on its page: it did not wrap).
    const FrameGroup& g = frames_[size_t(fg)];
    mov(r9, qword[r14 + kFrameOff + 8 * int(frame_slot(g.base))]);
    lea(r8, ptr[r8 + r9]);
    bt_.bstats().frame_followers++;
    s.direct_from = here();
    return s;
  }
  if (direct) {
    // The access addresses RAM's base + the address. One that may not go
    // straight to RAM (not RAM; for a write, a code page: write-protected
    // in the host mapping) faults, and the SIGSEGV handler resumes at this
    // slow path.
    if (direct_fold_ok_) direct_form_ = 1;  // the access addresses [r13 + r8 - kR13Bias]
    else if (!zero) lea(r8, ptr[r13 + r8 - kR13Bias]);  // (at host 0: r8 is the address)
    s.direct_from = here();
    return s;
  }
  bool wrap = add_seg_base(seg, size, clobber, s);
  if (seg == GS) {
    // Not flat now: the slow path (folded into the flag-free check's r11).
    constexpr int kGsSlow = int(offsetof(Rt, gs_slow));
    if (clobber) {
      cmp(dword[r14 + kGsSlow], 0);
      s.entry_fix3 = jcc32(5);  // jne
    } else if (wrap) {
      mov(r9d, dword[r14 + kGsSlow]);
      lea(r11d, ptr[r11 + r9]);
    } else {
      mov(r11d, dword[r14 + kGsSlow]);
      wrap = true;
    }
  }
  if (leader && !wrap && seg != GS) {
    // The whole span at once: r8 = host address of base + lo (the slow
    // path's callout sets Rt::frame_addend itself), then this operand's.
    FrameGroup& g = frames_[size_t(fg)];
    const int slot_off = kFrameOff + 8 * int(frame_slot(g.base));
    lea(r8d, ptr[r8 + (g.lo - foff)]);
    s.entry_fix = encode_lookup(unsigned(g.hi - g.lo), g.write, clobber, false);
    mov(r10, qword[r14 + r9 * 8 + (tlb_off_ + int(mem::Mmu::addend_array_off(user_)))]);
    mov(qword[r14 + slot_off], r10);
    lea(r8, ptr[r8 + (foff - g.lo)]);
    Site& st = *s.site;
    // (The callout sees the register after the instruction.)
    st.frame_lo = g.lo - (g.base == ESP ? frame_use_[idx_].esp_after : 0);
    st.frame_span = u16(g.hi - g.lo);
    st.frame_base = g.base;
    st.frame_write = g.write;
    st.frame_lead = idx_ < g.last;  // later members rely on it
    g.led = true;
    bt_.bstats().frame_leaders++;
    return s;
  }
  if (memo_ && clobber && !wrap && !in_rep_ && seg != GS && (b_->mode & m_base0(seg)) &&
      !bt_.is_no_memo(pa)) {
    memo_hit(s, size, write);
    return s;
  }
  s.entry_fix = lookup(size, write, clobber, wrap);
  return s;
}

// The memo check (flags free): r8 - memo page in [0, 4096 - size], else
// the miss (which adds the page back); the hit adds the page's host
// address. Memos are handed out round-robin per kind (any memo of the
// kind is right for any site).
void Emitter::memo_hit(Slow& s, unsigned size, bool write) {
  constexpr unsigned kPool = mem::Mmu::kMemos / 4;
  const unsigned pool = mem::Mmu::memo_pool(user_, write);
  const unsigned id = pool + (memo_next_[pool / kPool]++ & (kPool - 1));
  const int moff = tlb_off_ + int(mem::Mmu::memo_off(id));
  s.site->has_memo = true;
  s.site->memo = u16(id);
  bt_.mmu().memo_misses(id) = Bt::kMemoBatch;
  bt_.memo_batch_start(id) = 0;
  // r8 - page (the 64-bit difference: a page above the address, or the
  // empty marks, leave it huge), then + the page's host address.
  sub(r8, qword[r14 + moff]);
  cmp(r8, int(4096 - size));
  s.memo_fix = jcc32(7);  // ja
  add(r8, qword[r14 + moff + 8]);
  s.memo_resume = here();
  bt_.bstats().memo_accesses++;
}

// A memo's miss: the TLB check; on a hit the memo is listed (if it is
// not yet), its entry marked, and it is filled (mem::Mmu::Memo).
void Emitter::memo_miss(Slow& s) {
  bind(s.memo_fix);
  const Site& site = *s.site;
  const int moff = tlb_off_ + int(mem::Mmu::memo_off(site.memo));
  add(r8, qword[r14 + moff]);  // the address again
  // The policy's count-down (Bt::kMemoBatch): at zero, the slow path.
  sub(dword[r14 + (tlb_off_ + int(mem::Mmu::memo_miss_off(site.memo)))], 1);
  s.entry_fix2 = jcc32(4);  // jz
  const int addend = tlb_off_ + int(mem::Mmu::addend_array_off(user_));
  const int count = tlb_off_ + int(mem::Mmu::kMemoCountOff);
  s.entry_fix = tag_check(site.size, site.write);  // a TLB miss: the slow path
  static_assert(mem::Mmu::kMemoEmpty == u64(1) << 40);
  bt(qword[r14 + moff], 40);
  const u32 listed = jcc32(3);  // jnc (jae)
  mov(r10d, dword[r14 + count]);
  cmp(r10d, mem::Mmu::kMemoListCap);
  const u32 full = jcc32(3);  // jae
  mov(dword[r14 + r10 * 4 + (tlb_off_ + int(mem::Mmu::kMemoListOff))], u32(site.memo));
  inc(r10d);
  mov(dword[r14 + count], r10d);
  bind(listed);
  mov(byte[r14 + r9 + (tlb_off_ + int(mem::Mmu::memo_mark_off(user_)))], 1);
  lea(r10d, ptr[r8 + int(site.size - 1)]);
  and_(r10d, ~0xFFFu);
  mov(qword[r14 + moff], r10);
  mov(r11, qword[r14 + r9 * 8 + addend]);
  add(r10, r11);  // the page's host address
  mov(qword[r14 + moff + 8], r10);
  add(r8, r11);
  jmp_back(s.memo_resume);
  bind(full);
  add(r8, qword[r14 + r9 * 8 + addend]);
  jmp_back(s.memo_resume);
}

// out = elements of `size` bytes from linear address (reg + seg base) to
// the end of its page. Clobbers the flags.
void Emitter::room(const Reg32& out, const Reg32& reg, unsigned seg, unsigned size) {
  mov(out, reg);
  if (!(b_->mode & m_base0(seg))) add(out, seg_field(seg, kBaseOff, 4));
  and_(out, 0xFFF);
  neg(out);
  add(out, 4096);
  if (size > 1) shr(out, size == 4 ? 2 : 1);
}

// PUSH/CALL through memory: the 32-bit operand (read before ESP moves) to
// [rsp-8] in the red zone, then r8 = the new stack slot. A slow path runs
// the whole instruction: the fast read before it was RAM, so reading again
// is harmless. Returns both slow records (the caller sets where they resume).
std::pair<Emitter::Slow*, Emitter::Slow*> Emitter::operand_then_push_slot(const Insn& i, u32 eip, u64 pa) {
  Slow& s1 = mem_access(i, eip, pa, i.seg, 4, false, Site::A_EA);
  mov(r9d, dword[r8]);
  mov(dword[rsp - 8], r9d);
  Slow& s2 = mem_access(i, eip, pa, SS, 4, true, Site::A_PUSH);
  return {&s1, &s2};
}

}  // namespace popek::engine::bt
