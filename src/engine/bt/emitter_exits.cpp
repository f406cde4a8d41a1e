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
    tmpl(exit_chain_tmpl_, {target, u64(b_) | k}, [&] {
      db(0xE9);
      dd(0);  // falls through until patched
      mov(dword[r15 + kEipOff], target);
      hole(4);
      mov(qword[r14 + kReasonOff], u32(kExitChain));
      mov(r8, u64(b_) | k);
      hole(8);
      mov(qword[r14 + kArgOff], r8);
    });
    jmp_abs(stubs_.exit_common);
  } else if (bt_.options().chain && flat && b_->cs_base == 0) {
    db(0x41); db(0xB9); dd(target);  // mov r9d, target
    jc_lookup();
  } else {
    tmpl(exit_plain_tmpl_, {target}, [&] {
      mov(dword[r15 + kEipOff], target);
      hole(4);
      mov(qword[r14 + kReasonOff], u32(kExitNormal));
    });
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
  if (!mode_in_r8) {
    tmpl(jc_tmpl_, {u64(b_->mode) << 32}, [&] {
      jc_probe(false);
      hole(8);
      jc_miss();
    });
  } else {
    jc_probe(true);
    jc_miss();
  }
  jmp_abs(stubs_.exit_common);
}

// jc_lookup's part up to the mode (r11 = the mode << 32), last.
void Emitter::jc_probe(bool mode_in_r8) {
  mov(r10d, r9d);
  shr(r10d, 12);
  xor_(r10d, r9d);
  and_(r10d, (1u << kJcBits) - 1);
  shl(r10d, 4);
  add(r10, qword[r14 + kJcOff]);
  if (mode_in_r8) mov(r11, r8);
  else mov(r11, u64(b_->mode) << 32);
}

// jc_lookup's part after the mode, up to the jump to the exit stub.
void Emitter::jc_miss() {
  or_(r11, r9);
  cmp(qword[r10], r11);
  const u32 miss = jcc32(5);
  jmp(qword[r10 + 8]);
  bind(miss);
  mov(dword[r15 + kEipOff], r9d);
  mov(qword[r14 + kReasonOff], u32(kExitNormal));
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

Site* Emitter::new_access_site(const Insn& i, u32 eip, u64 pa) {
  // (Not in a block whose instruction crosses a page: the seed's pa would
  // not follow from the block's. Rare.)
  if (!bt_.options().lazy_sites || page2_) return new_site(i, eip, pa, false, true);
  if (drafts_.size() == drafts_.capacity())
    throw Error("bt: internal error: more slow-path sites in a block than reserved");
  Site* s = &drafts_.emplace_back();
  s->insn = i;
  s->block = b_;
  s->pa = pa;
  s->eip = eip;
  s->idx = u16(idx_);
  s->slow_path = true;
  return s;
}

// The seeds of the block's drafts, one arena array (before the slow paths
// that pass them are emitted).
void Emitter::make_seeds() {
  nseeds_ = 0;
  seeds_ = nullptr;
  draft_arg_.assign(drafts_.size(), 0);
  if (drafts_.empty()) return;
  seeds_ = bt_.new_seeds(unsigned(drafts_.size()));
}

// What a slow path of `s` passes to the callout stub.
uintptr_t Emitter::site_arg(Site* s) {
  // Every Site field is either in SiteSeed, derived by Bt::site_from_seed,
  // or checked below: a new field must be taught to them. (The size catches
  // only fields that do not fit in padding: frame_miss_at did.)
  static_assert(sizeof(Site) == 128, "a new Site field: carry it in SiteSeed or make such sites in full here");
  if (!is_draft(s)) return reinterpret_cast<uintptr_t>(s);
  const size_t k = size_t(s - drafts_.data());
  if (draft_arg_[k]) return draft_arg_[k];
  if (s->frame_lead || s->frame_span || s->frame_lo || s->frame_base || s->frame_write) {
    // A frame-check group's leader (its slow path sets the group's span):
    // a full site now (a few per block at most; the seed has no room).
    Site* full = bt_.new_site();
    *full = *s;
    full->fn = handler_for(s->insn);
    full->early = early_check_for(s->insn);
    full->group = u8(group_of(s->insn));
    bt_.bstats().sites++;
    draft_arg_[k] = reinterpret_cast<uintptr_t>(full);
    return draft_arg_[k];
  }
  SiteSeed* seed = new (&seeds_[nseeds_++]) SiteSeed();
  seed->insn = s->insn;
  seed->eip = s->eip;
  seed->block = b_;
  seed->idx = s->idx;
  seed->memo = s->memo;
  seed->size = s->size;
  seed->seg = s->seg;
  seed->addr = u8(s->addr);
  seed->bits = u8((s->mode_check ? SiteSeed::kModeCheck : 0) | (s->write ? SiteSeed::kWrite : 0) |
                  (s->phys ? SiteSeed::kPhys : 0) | (s->window ? SiteSeed::kWindow : 0) |
                  (s->has_memo ? SiteSeed::kHasMemo : 0));
  // What the site made from it would be (Bt::site_from_seed) must be this.
  if (s->pa != b_->pa + (s->eip - b_->eip) || s->ends || s->direct || s->rep_resume || s->shadow_ok ||
      s->fn || s->early || s->group || s->hits || s->persistent || s->last_slow || s->frame_misses || s->frame_miss_at)
    throw Error("bt: internal error: a slow-path site its seed cannot describe");
  bt_.bstats().seeds++;
  draft_arg_[k] = reinterpret_cast<uintptr_t>(seed) + kSeedTag;
  return draft_arg_[k];
}

Site* Emitter::new_site(const Insn& i, u32 eip, u64 pa, bool ends, bool slow) {
  Site* s = bt_.new_site();
  bt_.bstats().sites++;
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
