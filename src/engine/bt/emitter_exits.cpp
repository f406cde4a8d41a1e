// The emitter's ways out of a block and into the semantics: direct exits
// (chained or through the jump cache), indirect ones and the jump-cache
// lookup, and callouts (the sites the semantics run).
#include "engine/bt/emitter.h"

namespace popek::engine::bt {

// The flags to Rt::hf for a way out (a recipe run, a loop's flags materialized).
void Emitter::flags_out() {
  if (rcp_ >= 0) rcp_run();
  if (lazy_ && fl_ == Fl::parked) materialize();
  save_flags();
}

// Leaves the block for guest EIP `target` (a constant). `jcc`: the rel32
// of a Jcc that jumps here (bound by the caller), or kNone.
void Emitter::exit_direct(u32 target, u32 jcc) {
  flags_out();
  const bool flat = b_->mode & M_CS_FLAT;
  if (bt_.options().chain && flat && b_->nlinks < Block::kMaxLinks &&
      (target & ~0xFFFu) == (b_->eip & ~0xFFFu)) {
    const unsigned k = b_->nlinks++;
    b_->links[k].slot = u32(getSize());
    b_->links[k].target_eip = target;
    b_->links[k].jcc = jcc == kNone ? 0 : jcc;
    // Chained, the successor needs no EIP in CpuState (its own exits and
    // callouts store theirs): only the way out stores it.
    db(0xE9);
    dd(0);  // falls through until patched
    mov(dword[r15 + kEipOff], target);
    mov(qword[r14 + kReasonOff], u32(kExitChain));
    mov(r8, u64(b_) | k);
    mov(qword[r14 + kArgOff], r8);
    jmp_abs(stubs_.exit_common);
  } else if (bt_.options().chain && flat && b_->cs_base == 0) {
    mov(r9d, target);
    jc_lookup();
  } else {
    mov(dword[r15 + kEipOff], target);
    mov(qword[r14 + kReasonOff], u32(kExitNormal));
    jmp_abs(stubs_.exit_common);
  }
}

// Leaves the block for the guest EIP in r9d.
void Emitter::exit_indirect() {
  flags_out();
  if (bt_.options().chain && (b_->mode & M_CS_FLAT) && b_->cs_base == 0) {
    if (ras_ret_) {
      // A RET: if the top return-stack frame is the call's that pushed this
      // address in this mode, the host's ret (predicted) goes back to the
      // code after that call. (At the entry RSP the slot holds -1.)
      fl_ = Fl::parked;
      mov(r11, u64(b_->mode) << 32);
      or_(r11, r9);
      cmp(r11, qword[rsp + 8]);
      const u32 miss = jcc32(5);  // jne
      ret();
      bind(miss);
    }
    jc_lookup();
  } else {
    mov(dword[r15 + kEipOff], r9d);
    mov(qword[r14 + kReasonOff], u32(kExitNormal));
    jmp_abs(stubs_.exit_common);
  }
}

// The jump cache: (eip, mode) -> code, filled by the dispatcher. Flags are
// saved; the guest EIP in r9d is stored only on the way out (a block found
// needs none in CpuState: its own exits and callouts store theirs).
// `mode_in_r8`: the mode is not the block's but r8's high half.
void Emitter::jc_lookup(bool mode_in_r8) {
  mov(r10d, r9d);
  shr(r10d, 12);
  xor_(r10d, r9d);
  and_(r10d, (1u << kJcBits) - 1);
  shl(r10d, 4);
  add(r10, qword[r14 + kJcOff]);
  if (mode_in_r8) mov(r11, r8);
  else mov(r11, u64(b_->mode) << 32);
  or_(r11, r9);
  cmp(qword[r10], r11);
  const u32 miss = jcc32(5);
  jmp(qword[r10 + 8]);
  bind(miss);
  mov(dword[r15 + kEipOff], r9d);
  mov(qword[r14 + kReasonOff], u32(kExitNormal));
  jmp_abs(stubs_.exit_common);
}

// The end of an indirect transfer whose target the fast path left in r9d;
// after the slow path (which ran the instruction) it is the state's EIP.
void Emitter::exit_indirect_after(Slow& s) {
  const u32 go = jmp32();
  s.done = here();
  mov(r9d, dword[r15 + kEipOff]);
  bind(go);
  exit_indirect();
}

Site* Emitter::new_site(const Insn& i, u32 eip, u64 pa, bool ends, bool slow) {
  Site* s = bt_.new_site();
  s->insn = i;
  s->fn = handler_for(i);
  s->early = early_check_for(i);
  s->block = b_;
  s->pa = pa;
  s->eip = eip;
  s->idx = u16(idx_);
  s->group = u8(group_of(i));
  s->ends = ends;
  s->slow_path = slow;
  s->mode_check = !slow && may_change_mode(i);
  return s;
}

Emitter::Done Emitter::callout(const Insn& i, u32 eip, u64 pa, bool ends) {
  Site* s = new_site(i, eip, pa, ends, false);
  s->direct = direct_slow(pa);
  // An interrupt shadow (STI, MOV SS) need not end the block when the
  // instruction it covers is this callout that ends it: the semantics run
  // it, then the dispatcher looks for interrupts, as the interpreter would.
  if (ends && prev_callout_ && prev_callout_->idx + 1u == idx_) prev_callout_->shadow_ok = true;
  prev_callout_ = s;
  save_flags();
  call_site(s, fl_ == Fl::parked);
  bt_.bstats().callout_insns++;
  if (ends) {
    ud2();  // the stub never returns here
    return Done::ended;
  }
  return Done::next;
}

bool Emitter::direct_slow(u64 pa) const { return bt_.is_direct_slow(pa); }

}  // namespace popek::engine::bt
