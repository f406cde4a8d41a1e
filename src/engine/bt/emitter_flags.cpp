// The emitter's planning of the guest flags: flag recipes (P ... F), loop
// flags, the producer recipes of the lazy flags (rcp_), side-exit joins and
// flag liveness (which partial writers may run on any host flags).
#include "engine/bt/emitter.h"

namespace popek::engine::bt {

// P of a flag recipe: a register-only 32-bit ALU op, TEST or shift by an
// immediate that defines all six flags and is re-encoded as it is.
bool Emitter::recipe_producer(const Insn& i, bool* writes, bool* dest_is_reg, bool* partial) const {
  if (i.mem || i.osize != 4 || i.asize != 4 || (i.info().attrs & B)) return false;
  if (interp_group(i)) return false;
  *dest_is_reg = false;
  *partial = !defines_all_flags(i);
  if (*partial) {
    // IMUL r32, r/m32 (, imm): on hosts where it keeps SF/ZF/AF/PF.
    if (i.op != Op::IMUL_GvEv && i.op != Op::IMUL_GvEvIz && i.op != Op::IMUL_GvEvIb) return false;
    *writes = true;
    *dest_is_reg = true;
    const Native nat = native_of(i);
    return nat.ok && can_reencode(i, nat);
  }
  switch (i.op) {
    case Op::ADD_EvGv: case Op::OR_EvGv: case Op::AND_EvGv: case Op::SUB_EvGv: case Op::XOR_EvGv:
    case Op::ADD_EvIz: case Op::OR_EvIz: case Op::AND_EvIz: case Op::SUB_EvIz: case Op::XOR_EvIz:
    case Op::ADD_EvIb: case Op::OR_EvIb: case Op::AND_EvIb: case Op::SUB_EvIb: case Op::XOR_EvIb:
    case Op::SHL_EvIb: case Op::SHR_EvIb: case Op::SAR_EvIb: case Op::SAL_EvIb:
    case Op::SHL_Ev1: case Op::SHR_Ev1: case Op::SAR_Ev1: case Op::SAL_Ev1:
      *writes = true;
      break;
    case Op::ADD_GvEv: case Op::OR_GvEv: case Op::AND_GvEv: case Op::SUB_GvEv: case Op::XOR_GvEv:
      *writes = true;
      *dest_is_reg = true;
      break;
    case Op::CMP_EvGv: case Op::CMP_GvEv: case Op::CMP_EvIz: case Op::CMP_EvIb:
    case Op::TEST_EvGv: case Op::TEST_EvIz: case Op::TEST_EvIz1:
      *writes = false;
      break;
    default:
      return false;
  }
  const Native nat = native_of(i);
  return nat.ok && can_reencode(i, nat);
}

// Finds P ... F pairs in the decoded block (see Recipe).
void Emitter::plan_recipes(unsigned n) {
  recipes_.clear();
  recipe_for_.assign(n, -1);
  recipe_role_.assign(n, 0);
  for (unsigned k = 0; k + 1 < n; k++) {
    const Insn& p = pre_[k].i;
    bool writes, dest_is_reg, partial;
    if (!recipe_producer(p, &writes, &dest_is_reg, &partial)) continue;
    // P's operands that must not change before F (its destination is kept).
    const bool has_reg_src = native_of(p).reg_is_reg;  // r, r forms read ModRM.reg too
    auto conflicts = [&](unsigned r) {
      if (!writes) return r == p.rm || (has_reg_src && r == p.reg);
      if (dest_is_reg) return r == p.rm;  // P.reg is the destination
      return has_reg_src && r == p.reg;   // P.rm is the destination
    };
    for (unsigned j = k + 1; j < n; j++) {
      const Insn& x = pre_[j].i;
      if (interp_group(x)) break;
      unsigned written = ~0u;
      switch (x.op) {
        case Op::MOVZX_GvEb: case Op::MOVZX_GvEw: case Op::MOVSX_GvEb: case Op::MOVSX_GvEw:
        case Op::MOV_GvEv:
          if (!x.mem && x.osize == 4) written = x.reg;
          break;
        case Op::MOV_EvGv:
          if (!x.mem && x.osize == 4) written = x.rm;
          break;
        case Op::LEA:
          if (x.osize == 4) written = x.reg;
          break;
        case Op::MOV_rIv:
          if (x.osize == 4) written = x.opcode & 7;
          break;
        default: break;
      }
      if (written != ~0u) {
        if (conflicts(written)) break;
        continue;
      }
      // F: defines all six from a memory operand through the generic path.
      if (x.mem && x.asize == 4 && defines_all_flags(x) && x.op != Op::LEA) {
        const Native nat = native_of(x);
        if (nat.ok && !nat.reg_only && seg_native(x.seg) &&
            !direct_slow((b_->pa & ~u64(0xFFF)) | pre_[j].off) &&
            can_reencode(x, nat) && !((x.info().attrs & B) && nat.reg_is_reg && x.reg >= 4)) {
          recipe_for_[k] = int(recipes_.size());
          recipe_role_[k] = 1;
          recipe_for_[j] = int(recipes_.size());
          recipe_role_[j] = 2;
          recipes_.push_back(Recipe{p, pre_[k].bytes, writes, dest_is_reg, partial, j});
          bt_.bstats().flag_recipes++;
          k = j;  // not overlapping
        }
      }
      break;
    }
  }
}

// Runs P again on its operands as they were: the host flags become the
// guest's. Clobbers r10 (and r11 for a partial P).
void Emitter::emit_recipe(const Recipe& r) {
  if (r.partial) restore_flags();  // the flags P leaves are those before it, in Rt::hf
  Insn q = r.p;
  int reg_host = -1;
  if (r.stashed) {
    mov(r10d, dword[rsp + kStash]);
    const unsigned dest = r.dest_is_reg ? r.p.reg : r.p.rm;
    if (r.dest_is_reg) reg_host = 10;
    if (r.p.rm == dest) q.rm = 10;  // hreg(10) is r10 (a ModRM register operand)
    if (!r.dest_is_reg && native_of(r.p).reg_is_reg && r.p.reg == dest) reg_host = 10;
  }
  reencode(q, native_of(q), r.bytes, reg_host);
}

// The bit of the 32-bit guest register that register operand r names (a
// byte operand: AL..BH -> EAX..EBX).
static unsigned reg_bit(unsigned r, bool byte) { return 1u << (byte ? (r & 3) : r); }

// P of the loop flags: register-only, defines all six flags from its
// operands alone, and can be emitted again as it is. `reads`: the guest
// registers (32-bit numbers) it reads; `dest`: the one it writes, or ~0u.
bool Emitter::loop_producer(const Insn& p, unsigned* reads, unsigned* dest) {
  const OpInfo& info = p.info();
  if (p.mem || p.asize != 4 || !defines_all_flags(p) || (info.flags_read & ARITH)) return false;
  if (info.attrs & (SEN | PRV | IOI | FPU | MMX | STR | CT)) return false;
  const bool byte = info.attrs & B;
  const auto bit = reg_bit;
  *reads = 0;
  *dest = ~0u;
  bool writes = true;
  switch (p.op) {
    case Op::CMP_ALIb: case Op::CMP_eAXIz: case Op::TEST_ALIb: case Op::TEST_eAXIz:
      writes = false;
      [[fallthrough]];
    case Op::ADD_ALIb: case Op::ADD_eAXIz: case Op::OR_ALIb: case Op::OR_eAXIz:
    case Op::AND_ALIb: case Op::AND_eAXIz: case Op::SUB_ALIb: case Op::SUB_eAXIz:
    case Op::XOR_ALIb: case Op::XOR_eAXIz:
      *reads = 1u << EAX;
      if (writes) *dest = EAX;
      return true;
    default: break;
  }
  const Native nat = native_of(p);
  if (!nat.ok || !can_reencode(p, nat) || nat.rm == RM_W) return false;
  switch (p.op) {
    case Op::CMP_EbGb: case Op::CMP_EvGv: case Op::CMP_GbEb: case Op::CMP_GvEv:
    case Op::CMP_EbIb: case Op::CMP_EvIz: case Op::CMP_EbIb82: case Op::CMP_EvIb:
    case Op::TEST_EbGb: case Op::TEST_EvGv: case Op::TEST_EbIb: case Op::TEST_EbIb1:
    case Op::TEST_EvIz: case Op::TEST_EvIz1:
      writes = false;
      break;
    default: break;
  }
  const bool rm_byte = nat.rm_size == 1;
  *reads |= bit(p.rm, rm_byte);
  if (nat.reg_is_reg) *reads |= bit(p.reg, byte);
  if (writes) {
    if (nat.rm == RM_RW) *dest = rm_byte ? (p.rm & 3) : p.rm;
    else if (nat.reg_is_reg) *dest = byte ? (p.reg & 3) : p.reg;
    else return false;
  }
  return true;
}

// The guest registers (bit per 32-bit register) an instruction of a loop
// window may write; false for those it does not know.
bool Emitter::regs_written(const Insn& x, unsigned* mask) {
  const OpInfo& info = x.info();
  const bool byte = info.attrs & B;
  const auto bit = reg_bit;
  unsigned m = 0;
  const Native nat = native_of(x);
  if (nat.ok) {
    if (!x.mem && (nat.rm == RM_W || nat.rm == RM_RW)) m |= bit(x.rm, nat.rm_size == 1);
    switch (x.op) {
      case Op::ADD_GbEb: case Op::ADD_GvEv: case Op::OR_GbEb: case Op::OR_GvEv:
      case Op::ADC_GbEb: case Op::ADC_GvEv: case Op::SBB_GbEb: case Op::SBB_GvEv:
      case Op::AND_GbEb: case Op::AND_GvEv: case Op::SUB_GbEb: case Op::SUB_GvEv:
      case Op::XOR_GbEb: case Op::XOR_GvEv: case Op::MOV_GbEb: case Op::MOV_GvEv:
      case Op::MOVZX_GvEb: case Op::MOVZX_GvEw: case Op::MOVSX_GvEb: case Op::MOVSX_GvEw:
      case Op::IMUL_GvEv: case Op::IMUL_GvEvIz: case Op::IMUL_GvEvIb: case Op::CMOVCC:
      case Op::BSF: case Op::BSR: case Op::XCHG_EbGb: case Op::XCHG_EvGv:
      case Op::XADD_EbGb: case Op::XADD_EvGv:
        m |= bit(x.reg, byte);
        break;
      case Op::MUL_Eb: case Op::IMUL_Eb: m |= 1u << EAX; break;
      case Op::MUL_Ev: case Op::IMUL_Ev: m |= (1u << EAX) | (1u << EDX); break;
      case Op::CMPXCHG_EbGb: case Op::CMPXCHG_EvGv: case Op::CMPXCHG8B: return false;
      default: break;
    }
    *mask = m;
    return true;
  }
  switch (x.op) {
    case Op::LEA: m = 1u << x.reg; break;
    case Op::MOV_rIv: m = 1u << (x.opcode & 7); break;
    case Op::MOV_rbIb: m = bit(x.opcode & 7, true); break;
    case Op::MOV_eAXOv: case Op::MOV_ALOb: m = 1u << EAX; break;
    case Op::MOV_OveAX: case Op::MOV_ObAL: case Op::NOP: case Op::HINT_NOP: break;
    case Op::PUSH_r: case Op::PUSH_Iz: case Op::PUSH_Ib: case Op::PUSH_Ev: m = 1u << ESP; break;
    case Op::POP_r: m = (1u << ESP) | (1u << (x.opcode & 7)); break;
    case Op::CBW: m = 1u << EAX; break;
    case Op::CWD: m = 1u << EDX; break;
    case Op::XCHG_eAXr: m = (1u << EAX) | (1u << (x.opcode & 7)); break;
    case Op::BSWAP: m = 1u << (x.opcode & 7); break;
    default: return false;
  }
  *mask = m;
  return true;
}

// Decides whether the block gets loop flags (see loop_p_).
void Emitter::plan_loop(unsigned n) {
  loop_p_ = -1;
  loop_stash_ = -1;
  if (!bt_.options().chain || page2_ || n < 2 || !(b_->mode & M_CS_FLAT)) return;
  const Insn& j = pre_[n - 1].i;
  if ((j.op != Op::JCC_Jb && j.op != Op::JCC_Jz) || j.osize != 4 || interp_group(j))
    return;
  if (pre_[n - 1].eip + j.len + j.imm != b_->eip) return;
  const Insn& p = pre_[n - 2].i;
  unsigned reads, dest;
  if (interp_group(p) || !loop_producer(p, &reads, &dest)) return;
  unsigned w = 0;
  while (!defines_all_flags(pre_[w].i)) w++;  // P is one
  unsigned written = 0;
  for (unsigned k = 0; k <= w; k++) {
    const Insn& x = pre_[k].i;
    const OpInfo& info = x.info();
    if ((info.attrs & (CT | STR)) || is_callout_only(x) || x.asize != 4 || (info.flags_read & ARITH) ||
        interp_group(x))
      return;
    if (k == w) break;
    if (needs_flags(x) && !(recipe_role_[k] == 1 && recipes_[size_t(recipe_for_[k])].partial &&
                            recipes_[size_t(recipe_for_[k])].f == w))
      return;
    unsigned m;
    if (!regs_written(x, &m)) return;
    written |= m;
  }
  // P's operands as they are at the back edge: the one P writes, or one the
  // window overwrites, is kept aside.
  unsigned keep = reads & written;
  if (dest != ~0u) keep |= 1u << dest;
  if (keep & (keep - 1)) return;
  loop_stash_ = keep ? __builtin_ctz(keep) : -1;
  loop_p_ = int(n - 2);
  loop_w_ = w;
  bt_.bstats().loop_flags++;
}

// P again, on the kept register's value at the back edge (swapped in through
// r10 for the while).
void Emitter::emit_loop_p() { emit_p(unsigned(loop_p_), loop_stash_, dword[rsp + kLoopStash]); }

// Instruction idx (a loop_producer) again; stash_reg >= 0: that guest
// register's value is the one at [rsp + stash_off] (swapped in through r10).
void Emitter::emit_p(unsigned idx, int stash_reg, const Address& stash) {
  const Pre& pp = pre_[idx];
  const Insn& p = pp.i;
  if (stash_reg >= 0) {
    mov(r10, Reg64(hreg(unsigned(stash_reg))));
    mov(Reg32(hreg(unsigned(stash_reg))), stash);
  }
  const Native nat = native_of(p);
  if (nat.ok) {
    reencode(p, nat, pp.bytes);
  } else {
    // AL/eAX with an immediate: no ModRM, the same bytes in 64-bit mode.
    const bool byte = p.info().attrs & B;
    const unsigned imm_len = byte ? 1 : p.osize;
    if (!byte && p.osize == 2) db(0x66);
    db(p.opcode);
    for (unsigned k = 0; k < imm_len; k++) db(pp.bytes[p.len - imm_len + k]);
  }
  if (stash_reg >= 0) mov(Reg64(hreg(unsigned(stash_reg))), r10);
}

// An instruction that may run while the flags are P's recipe: translated
// inline without a call, reading no flags but through restore_flags (a Jcc
// may), writing none of `watch`.
bool Emitter::rcp_plain(const Insn& x, unsigned watch) const {
  const OpInfo& info = x.info();
  if (info.attrs & (SEN | PRV | IOI | FPU | MMX | STR)) return false;
  if ((info.attrs & CT) && x.op != Op::JCC_Jb && x.op != Op::JCC_Jz) return false;
  if (interp_group(x)) return false;
  if (x.asize != 4) return false;
  unsigned m = 0;
  if (!(info.attrs & CT) && !regs_written(x, &m)) return false;
  return !(m & watch);
}

// Whether a memory access (one that does not need the flags) comes after
// instruction k before anything reads, writes or must save the flags: then
// P at k keeps its destination in Rt::rcp_stash for a recipe.
bool Emitter::rcp_access_ahead(unsigned k) const {
  for (unsigned j = k + 1; j < n_; j++) {
    const Insn& x = pre_[j].i;
    const OpInfo& info = x.info();
    if ((info.flags_read & ARITH) || (info.flags_written & ARITH) || (info.attrs & (CT | SEN | PRV | IOI | FPU | MMX | STR)))
      return false;
    if (x.mem && x.op != Op::LEA) return true;
  }
  return false;
}

// Whether side exit `sd` may jump to the block's instruction t instead of
// leaving: nothing between them that the code from t on relies on (a flag
// recipe's stash, the loop flags' compare).
bool Emitter::join_ok(const Side& sd, unsigned t) const {
  if (recipe_role_[t] == 2) return false;
  for (unsigned j = sd.idx + 1; j < t; j++)
    if (recipe_role_[j] == 1 && recipes_[size_t(recipe_for_[j])].f >= t) return false;
  if (loop_p_ >= 0 && sd.idx < unsigned(loop_p_) && unsigned(loop_p_) < t) return false;
  return true;
}

// A register-only instruction translated inline that cannot fault and does
// not read the flags: no one can observe the flags while it runs.
bool Emitter::quiet_reg_op(const Insn& i) const {
  const OpInfo& info = i.info();
  if (info.attrs & (SEN | PRV | IOI | FPU | MMX | STR | CT)) return false;
  if (info.flags_read & ARITH) return false;
  if (interp_group(i)) return false;
  if (i.asize != 4) return false;
  switch (i.op) {
    case Op::LEA: return i.osize == 4;  // no access
    case Op::NOP: case Op::HINT_NOP: case Op::INC_r: case Op::DEC_r: case Op::MOV_rIv:
    case Op::XCHG_eAXr: case Op::MOV_rbIb: case Op::CBW: case Op::CWD:
    case Op::ADD_ALIb: case Op::ADD_eAXIz: case Op::OR_ALIb: case Op::OR_eAXIz:
    case Op::AND_ALIb: case Op::AND_eAXIz: case Op::SUB_ALIb: case Op::SUB_eAXIz:
    case Op::XOR_ALIb: case Op::XOR_eAXIz: case Op::CMP_ALIb: case Op::CMP_eAXIz:
    case Op::TEST_ALIb: case Op::TEST_eAXIz:
      return true;
    case Op::BSWAP: return i.osize == 4;
    default: break;
  }
  if (i.mem) return false;
  const Native nat = native_of(i);
  return nat.ok && can_reencode(i, nat);
}

// Instruction k writes some flags and leaves the rest as they were. If a
// later instruction of the block defines all six before anything can read or
// observe them (a flag reader, a memory access or other possible fault, a
// callout, the end of the block), the flags after k are dead and k may run on
// whatever the host's flags are.
bool Emitter::partial_output_dead(unsigned k, unsigned n) const {
  const Insn& i = pre_[k].i;
  if (!needs_flags(i) || (i.info().flags_read & ARITH) || is_callout_only(i)) return false;
  if (i.mem) {
    // Its own access may fault: the flags before it must then be in Rt::hf
    // (parked), which the caller's clobbering check keeps.
    if (fl_ != Fl::parked) return false;
  } else if (!quiet_reg_op(i)) {
    return false;
  }
  for (unsigned j = k + 1; j < n; j++) {
    const Insn& x = pre_[j].i;
    if (!quiet_reg_op(x)) return false;
    if (defines_all_flags(x)) return true;
    if (x.info().flags_written & ARITH) {
      if (!needs_flags(x)) return false;  // not expected: a writer neither full nor partial
    }
  }
  return false;
}

}  // namespace popek::engine::bt
