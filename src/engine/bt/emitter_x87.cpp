// The emitter's inline x87 (BtOptions::inline_x87; docs/bt.md "x87 inline").
//
// The semantics (x86/sem/x87.cpp) run every x87 instruction on the host's
// x87 between FRSTOR and FNSAVE of an image built from the guest's FpuState:
// exact, but a callout and two full state transfers each. Here the frequent
// instructions run on the host's x87 directly against FpuState: the guest
// registers they read are loaded (FLD m80: no conversion, no exception) onto
// the empty host stack, the guest's own instruction runs there (its register
// operand renumbered) under the guest's control word, and what it leaves is
// stored back (FSTP m80), so every result, flag and masked response is the
// hardware's, as in the semantics. The translation then does by hand what
// FRSTOR/FNSAVE did around it:
//  * TOP and the tag word: the tag of each register written is the class
//    FXAM gives (valid, zero, special), which is what FNSAVE derives from
//    the contents; popped registers become empty. (The tags of the other
//    registers already are their contents' class: every path that writes
//    FpuState keeps them so.)
//  * The condition codes: the instruction's own where it defines them. Where
//    the SDM calls them undefined, this host either keeps them or sets them
//    regardless of their value before (measured once per host instruction,
//    cc_kept below, as the translator measures undefined EFLAGS): the kept
//    ones are the guest's, the rest the host's.
//  * The exception flags the instruction raised: the host's sticky flags
//    after it. The host's flags are not cleared first (FNCLEX costs ~0.6 us
//    here): what the host already had set is either already set in the
//    guest's FSW (then ORing it changes nothing) or not — and then, rarely,
//    the instruction runs a second time out of line after an FNCLEX.
//  * FOP, FIP/FCS and (memory forms) FDP/FDS.
// The inline path applies only where the semantics would give the masked
// response: CR0.EM and CR0.TS clear (else #NM), all exceptions masked in
// FCW (then FSW.ES is clear: no #MF/FERR# pending), no stack overflow or
// underflow (tags of the registers read, and of ST(7) for a push). Anything
// else goes out of line to the semantics (a callout of the instruction),
// as does a memory operand the TLB does not serve. The host control word is
// restored after each instruction; the host stack is empty between guest
// instructions, as the C++ code's ABI wants it.
#include <mutex>
#include <unordered_map>

#include "engine/bt/emitter.h"
#include "x86/sem/x87_host.h"

namespace popek::engine::bt {

namespace {

constexpr int kFpuOff = int(offsetof(CpuState, fpu));
constexpr int kFcwOff = kFpuOff + int(offsetof(FpuState, fcw));
constexpr int kFswOff = kFpuOff + int(offsetof(FpuState, fsw));
constexpr int kFtwOff = kFpuOff + int(offsetof(FpuState, ftw));
constexpr int kFopOff = kFpuOff + int(offsetof(FpuState, fop));
constexpr int kFipOff = kFpuOff + int(offsetof(FpuState, fip));
constexpr int kFdpOff = kFpuOff + int(offsetof(FpuState, fdp));
constexpr int kFcsOff = kFpuOff + int(offsetof(FpuState, fcs));
constexpr int kFdsOff = kFpuOff + int(offsetof(FpuState, fds));
constexpr int kRegsOff = kFpuOff + int(offsetof(FpuState, regs));
constexpr int kCr0Off = int(offsetof(CpuState, cr0));
constexpr int kX87SwOff = int(offsetof(Rt, x87_sw));
constexpr int kX87ClassOff = int(offsetof(Rt, x87_class));
constexpr int kX87HostCwOff = int(offsetof(Rt, x87_host_cw));
constexpr int kX87PextOff = int(offsetof(Rt, x87_pext));
constexpr int kX87TagsOff = int(offsetof(Rt, x87_tags));
constexpr int kX87RunsOff = int(offsetof(Rt, x87_runs));
constexpr int kX87AgainOff = int(offsetof(Rt, x87_again));
static_assert(sizeof(long double) == 16, "FpuState::regs: 16 bytes a register");
static_assert(offsetof(FpuState, fsw) == offsetof(FpuState, fcw) + 2, "FCW and FSW are read as one dword");

constexpr u16 kC0 = 0x100, kC1 = 0x200, kC2 = 0x400, kC3 = 0x4000, kCC = kC0 | kC1 | kC2 | kC3;
constexpr i8 kDrop = 8;  // Emitter::kX87Drop

// ---- which condition codes a host instruction keeps ----

// 80-bit values of every class, for the measurement.
struct V80 {
  u64 m;
  u16 se;
};
constexpr V80 kRegSamples[] = {
    {0x8000000000000000ull, 0x3FFF}, {0xA000000000000000ull, 0xC000}, {0, 0}, {0, 0x8000},
    {1, 0},                          {0x8000000000000000ull, 0},      {0x8000000000000000ull, 0x7FFF},
    {0xC000000000000000ull, 0xFFFF}, {0xA000000000000000ull, 0x7FFF}, {0x4000000000000000ull, 0x4000},
    {0xFFFFFFFFFFFFFFFFull, 0x7FFE}, {0x8000000000000001ull, 0x0001},
};
// Memory operands: each line read at the operand's size.
constexpr u64 kMemSamples[][2] = {
    {0x3F800000, 0x3FF0000000000000ull}, {0, 0}, {0x80000000u, 0x8000000000000000ull},
    {1, 1}, {0x7F800000, 0x7FF0000000000000ull}, {0x7FC00000, 0x7FF8000000000000ull},
    {0x7FA00000, 0x7FF4000000000000ull}, {0x7F7FFFFF, 0x7FEFFFFFFFFFFFFFull},
    {0xFFFF8000u, 0x8000000000000000ull}, {0x1234567, 0x4003FFFF00000000ull},
};

void put_v80(u8* p, const V80& v) {
  std::memcpy(p, &v.m, 8);
  std::memcpy(p + 8, &v.se, 2);
}

// The condition-code bits (FSW positions) the host instruction b0 b1 (b1 =
// reg << 3 for a memory form) leaves as they were, whatever the operands;
// -1 if one of them is neither always kept nor always independent of the
// codes before it (then it is not run inline). `nin` registers are loaded
// first (ST(0), ST(1)); ST(7) is empty.
struct CcKept {
  int kept = -1;    // FSW condition-code bits kept, or -1
  int value = -1;   // the others' value if the same for every operand, else -1
};
CcKept measure_cc_kept(u8 b0, u8 b1, bool mem, unsigned nin) {
  using x86::x87host::Ctx;
  unsigned kept = 0xF, set = 0xF;  // bit k: C0, C1, C2, C3
  int first = -1;
  bool same = true;
  const unsigned nreg = sizeof kRegSamples / sizeof kRegSamples[0];
  const unsigned nmem = sizeof kMemSamples / sizeof kMemSamples[0];
  const unsigned n0 = nin >= 1 ? nreg : 1, n1 = nin >= 2 ? nreg : 1, nm = mem ? nmem : 1;
  static constexpr u16 bit[4] = {kC0, kC1, kC2, kC3};
  for (unsigned a = 0; a < n0; a++)
    for (unsigned b = 0; b < n1; b++)
      for (unsigned m = 0; m < nm; m++) {
        unsigned out0 = 0;
        for (unsigned cc = 0; cc < 16; cc++) {
          Ctx ctx;
          std::memset(&ctx.img, 0, sizeof ctx.img);
          u16 sw = 0;
          for (unsigned k = 0; k < 4; k++)
            if (cc & (1u << k)) sw |= bit[k];
          ctx.img.cw = 0xFFFF037F;
          ctx.img.sw = 0xFFFF0000u | sw;  // TOP 0: ST(k) is register k
          u16 tw = 0xFFFF;
          if (nin >= 1) {
            put_v80(ctx.img.st[0], kRegSamples[a]);
            tw = u16((tw & ~3u) | x86::x87host::tag_of(ctx.img.st[0]));
          }
          if (nin >= 2) {
            put_v80(ctx.img.st[1], kRegSamples[b]);
            tw = u16((tw & ~0xCu) | (x86::x87host::tag_of(ctx.img.st[1]) << 2));
          }
          ctx.img.tw = 0xFFFF0000u | tw;
          if (mem) {
            const u64 lo = b0 == 0xDC || b0 == 0xDD || (b0 == 0xDF && ((b1 >> 3) & 7) >= 4)
                               ? kMemSamples[m][1] : kMemSamples[m][0];
            std::memcpy(ctx.mem, &lo, 8);
            const u16 hi = u16(0x3FFF + m * 0x1111);
            std::memcpy(ctx.mem + 8, &hi, 2);  // (m80)
          }
          x86::x87host::exec(ctx, b0, b1);
          unsigned out = 0;
          for (unsigned k = 0; k < 4; k++)
            if (ctx.img.sw & bit[k]) out |= 1u << k;
          if (cc == 0) out0 = out;
          kept &= ~(out ^ cc);
          set &= ~(out ^ out0);
        }
        if (first < 0) first = int(out0);
        same &= int(out0) == first;
      }
  CcKept r;
  if ((kept | set) != 0xF) return r;
  r.kept = 0;
  for (unsigned k = 0; k < 4; k++)
    if (kept & (1u << k)) r.kept |= bit[k];
  if (same) {
    // (Where a bit is kept, first holds it as it came in: 0.)
    r.value = 0;
    for (unsigned k = 0; k < 4; k++)
      if ((unsigned(first) & ~kept) & (1u << k)) r.value |= bit[k];
  }
  return r;
}

CcKept cc_kept(u8 b0, u8 b1, bool mem, unsigned nin) {
  static std::mutex mu;
  static std::unordered_map<u32, CcKept> memo;
  const u32 key = u32(b0) | u32(b1) << 8 | u32(mem) << 16 | nin << 17;
  std::lock_guard<std::mutex> lock(mu);
  auto it = memo.find(key);
  if (it != memo.end()) return it->second;
  const CcKept r = measure_cc_kept(b0, b1, mem, nin);
  memo.emplace(key, r);
  return r;
}

}  // namespace

bool Emitter::x87_plan(const Insn& i, X87Plan& p) {
  const u8 rm = i.rm;
  auto ins = [&](std::initializer_list<int> v) {
    p.nin = 0;
    for (int k : v) p.in[p.nin++] = i8(k);
  };
  auto outs = [&](std::initializer_list<int> v) {
    p.nout = 0;
    for (int k : v) p.out[p.nout++] = i8(k);
  };
  p.b0 = i.opcode;
  if (i.mem) {
    p.mem = true;
    p.b1 = u8(i.reg << 3);
    switch (i.op) {
#define ARITH_MEM(P, size)                                                                   \
  case Op::P##_FADD: case Op::P##_FMUL: case Op::P##_FSUB: case Op::P##_FSUBR:             \
  case Op::P##_FDIV: case Op::P##_FDIVR: p.msize = size; ins({0}); outs({0}); return true; \
  case Op::P##_FCOM: p.msize = size; ins({0}); outs({kDrop}); return true;                  \
  case Op::P##_FCOMP: p.msize = size; ins({0}); outs({}); p.pops = 1; return true;
      ARITH_MEM(M32FP, 4)
      ARITH_MEM(M64FP, 8)
      ARITH_MEM(M32INT, 4)
      ARITH_MEM(M16INT, 2)
#undef ARITH_MEM
      case Op::FLD_M32: case Op::FILD_M32: p.msize = 4; break;
      case Op::FLD_M64: case Op::FILD_M64: p.msize = 8; break;
      case Op::FILD_M16: p.msize = 2; break;
      case Op::FLD_M80: p.msize = 10; break;
      case Op::FST_M32: case Op::FIST_M32: p.msize = 4; p.write = true; ins({0}); outs({kDrop}); return true;
      case Op::FST_M64: p.msize = 8; p.write = true; ins({0}); outs({kDrop}); return true;
      case Op::FIST_M16: p.msize = 2; p.write = true; ins({0}); outs({kDrop}); return true;
      case Op::FSTP_M32: case Op::FISTP_M32: p.msize = 4; p.write = true; ins({0}); p.pops = 1; return true;
      case Op::FSTP_M64: case Op::FISTP_M64: p.msize = 8; p.write = true; ins({0}); p.pops = 1; return true;
      case Op::FISTP_M16: p.msize = 2; p.write = true; ins({0}); p.pops = 1; return true;
      case Op::FSTP_M80: p.msize = 10; p.write = true; ins({0}); p.pops = 1; return true;
      default: return false;
    }
    p.push = true;  // the loads
    outs({-1});
    return true;
  }
  // Register forms: ST(i) becomes host ST(1) (or the one operand when i = 0).
  const u8 b1r = u8((i.modrm & 0xF8) | (rm ? 1 : 0));
  p.b1 = b1r;
  switch (i.op) {
    case Op::FADD_ST0STi: case Op::FMUL_ST0STi: case Op::FSUB_ST0STi: case Op::FSUBR_ST0STi:
    case Op::FDIV_ST0STi: case Op::FDIVR_ST0STi:
      if (rm) { ins({0, rm}); outs({0, kDrop}); } else { ins({0}); outs({0}); }
      return true;
    case Op::FADD_STiST0: case Op::FMUL_STiST0: case Op::FSUB_STiST0: case Op::FSUBR_STiST0:
    case Op::FDIV_STiST0: case Op::FDIVR_STiST0:
      if (rm) { ins({0, rm}); outs({kDrop, rm}); } else { ins({0}); outs({0}); }
      return true;
    case Op::FADDP: case Op::FMULP: case Op::FSUBP: case Op::FSUBRP: case Op::FDIVP: case Op::FDIVRP:
      if (!rm) return false;  // the result goes to the register it pops
      ins({0, rm}); outs({rm}); p.pops = 1;
      return true;
    case Op::FCOM_STi: case Op::FUCOM_STi: case Op::FCOMI: case Op::FUCOMI:
      if (rm) { ins({0, rm}); outs({kDrop, kDrop}); } else { ins({0}); outs({kDrop}); }
      p.eflags = i.op == Op::FCOMI || i.op == Op::FUCOMI;
      return true;
    case Op::FCOMP_STi: case Op::FUCOMP_STi: case Op::FCOMIP: case Op::FUCOMIP:
      if (rm) { ins({0, rm}); outs({kDrop}); } else { ins({0}); outs({}); }
      p.pops = 1;
      p.eflags = i.op == Op::FCOMIP || i.op == Op::FUCOMIP;
      return true;
    case Op::FCOMPP: case Op::FUCOMPP:
      ins({0, 1}); outs({}); p.pops = 2;
      return true;
    case Op::FLD_STi:
      if (rm == 7) return false;  // ST(7) must be empty for the push: a stack fault either way
      p.b1 = 0xC0;  // fld st(0) on a stack holding only ST(i)
      ins({rm}); outs({-1, kDrop}); p.push = true;
      return true;
    case Op::FXCH_STi:
      if (rm) { ins({0, rm}); outs({0, rm}); } else { ins({0}); outs({0}); }
      return true;
    case Op::FST_STi:
      if (rm) { ins({0, rm}); outs({kDrop, rm}); } else { ins({0}); outs({kDrop}); }
      return true;
    case Op::FSTP_STi:
      if (rm) { ins({0, rm}); outs({rm}); } else { ins({0}); outs({}); }
      p.pops = 1;
      return true;
    case Op::FCHS: case Op::FABS: case Op::FSQRT: case Op::FRNDINT:
      p.b1 = i.modrm;
      ins({0}); outs({0});
      return true;
    case Op::FTST: case Op::FXAM:
      p.b1 = i.modrm;
      ins({0}); outs({kDrop});
      return true;
    // The transcendental ones (libm's): as the arithmetic. (Not FPTAN or
    // FSINCOS: whether they push depends on the operand; not FXTRACT: rare.)
    case Op::F2XM1: case Op::FSIN: case Op::FCOS:
      p.b1 = i.modrm;
      ins({0}); outs({0});
      return true;
    case Op::FSCALE: case Op::FPREM: case Op::FPREM1:  // ST(0) from ST(0) and ST(1)
      p.b1 = i.modrm;
      ins({0, 1}); outs({0, kDrop});
      return true;
    case Op::FYL2X: case Op::FYL2XP1: case Op::FPATAN:  // ST(1) from both, then a pop
      p.b1 = i.modrm;
      ins({0, 1}); outs({1}); p.pops = 1;
      return true;
    case Op::FLD1: case Op::FLDL2T: case Op::FLDL2E: case Op::FLDPI: case Op::FLDLG2:
    case Op::FLDLN2: case Op::FLDZ:
      p.b1 = i.modrm;
      ins({}); outs({-1}); p.push = true;
      return true;
    default:
      return false;
  }
}

// fld/fstp tword [r15 + index + FpuState::regs] (index: r9 or r11).
void Emitter::x87_m80(unsigned ext, int index) {
  db(0x43);  // REX.X REX.B
  db(0xDB);
  db(u8(0x84 | (ext << 3)));  // mod 10, SIB
  db(u8(((index & 7) << 3) | 7));
  dd(u32(kRegsOff));
}
// r9d = 16 * physical register of ST(k) (r11d = 16 * TOP); returns the index register.
int Emitter::x87_phys(int k) {
  if (k == 0) return 11;
  lea(r9d, ptr[r11 + 16 * k]);
  and_(r9d, 0x70);
  return 9;
}

// The plan's loads, the instruction under the guest's control word, the
// flags it leaves (FCOMI) and the host's status word to Rt::x87_sw.
void Emitter::x87_run(const X87Plan& p) {
  for (int k = p.nin - 1; k >= 0; k--) x87_m80(5, x87_phys(p.in[k]));
  fldcw(word[r15 + kFcwOff]);
  if (p.mem) {
    db(0x41);  // [r8]
    db(p.b0);
    db(p.b1);
  } else {
    db(p.b0);
    db(p.b1);
  }
  if (p.eflags) {
    mov(r9, rax);
    lahf();
    seto(al);
    mov(word[r14 + kHfOff], ax);
    mov(rax, r9);
  }
  fldcw(word[r14 + kX87HostCwOff]);
  fnstsw(word[r14 + kX87SwOff]);
}

bool Emitter::x87(const Insn& i, u32 eip, u64 pa) {
  x87_eip_ = eip;
  if (!bt_.options().inline_x87 || i.asize != 4 || (i.prefixes & P_LOCK) || lazy_) return false;
  if (i.mem && (!seg_native(i.seg) || direct_slow(pa))) return false;
  if (i.op == Op::FNSTSW_AX || i.op == Op::FNSTCW || i.op == Op::FLDCW || i.op == Op::FWAIT)
    return x87_control(i, eip, pa);
  static_assert(kDrop == kX87Drop);
  X87Plan p;
  if (!x87_plan(i, p)) return false;
  const CcKept cc = cc_kept(p.b0, p.b1, p.mem, p.nin);
  const int kept = cc.kept;
  if (kept < 0) return false;
  // FXCH, FLD/FST/FSTP ST(i): copies; no exception, no rounding (extended
  // format), the condition codes the host sets the same for every value.
  const bool move = (i.op == Op::FXCH_STi || i.op == Op::FLD_STi || i.op == Op::FST_STi ||
                     i.op == Op::FSTP_STi) && cc.value >= 0;
  auto& st = bt_.bstats();
  st.native_insns++;
  st.inline_x87++;
  // The checks clobber the host flags: the guest's to Rt::hf, where the
  // out-of-line paths (the semantics) find them.
  if (rcp_ >= 0) rcp_run();
  save_flags();
  fl_ = Fl::parked;
  Slow* ms = nullptr;
  Site* site;
  if (p.mem) {
    ms = &mem_access(i, eip, pa, i.seg, p.msize, p.write, Site::A_EA);
    site = ms->site;
    if (ms->direct_from != kNone) {
      // A direct access (paging off, the user window) faults into the slow
      // path: touch the first and last byte (a write: keeping them) while
      // the host stack is still empty; the x87 access itself cannot fault then.
      if (p.write) {
        or_(byte[r8], 0);
        or_(byte[r8 + p.msize - 1], 0);
      } else {
        mov(r9b, byte[r8]);
        mov(r9b, byte[r8 + p.msize - 1]);
      }
    }
  } else {
    site = new_site(i, eip, pa, false, false);
  }
  Slow& g = also_slow(site, kNone);
  // #NM: CR0.EM or CR0.TS.
  test(byte[r15 + kCr0Off], u8(CR0_EM | CR0_TS));
  g.entry_fix = jcc32(5);  // jnz
  // An unmasked exception (the response differs) or one pending (FSW.ES).
  mov(r10d, dword[r15 + kFcwOff]);  // FCW | FSW << 16
  mov(r9d, r10d);
  xor_(r9d, 0x3F);
  test(r9d, 0x0080003F);
  g.entry_fix2 = jcc32(5);  // jnz
  rorx(r11d, r10d, 23);
  and_(r11d, 0x70);  // 16 * TOP
  // Stack underflow (a register read is empty) or overflow (ST(7) not empty for a push).
  unsigned need = 0;
  for (unsigned k = 0; k < p.nin; k++) need |= 1u << (2 * unsigned(p.in[k]));
  if (p.push) need |= 1u << 14;
  if (need) {
    movzx(r9d, word[r15 + kFtwOff]);
    imul(r9d, r9d, 0x10001);
    rorx(r10d, r10d, 26);
    and_(r10d, 0xE);  // 2 * TOP
    shrx(r9d, r9d, r10d);  // ST(k)'s tag at bits 2k
    mov(r10d, r9d);
    shr(r10d, 1);
    and_(r10d, r9d);  // bit 2k: ST(k) empty
    if (p.push) xor_(r10d, 1u << 14);
    test(r10d, need);
    g.entry_fix3 = jcc32(5);  // jnz
  }
  if (move) {
    x87_move(i, kept, cc.value);
    x87_record(i, p);
    g.done = here();
    return true;
  }
  x87_run(p);
  // Exception flags the host has set that the guest's FSW has not: raised
  // now, or left from before — out of line, clear them and run again.
  movzx(r9d, word[r14 + kX87SwOff]);
  movzx(r10d, word[r15 + kFswOff]);
  andn(r9d, r10d, r9d);
  test(r9d, 0x7F);
  const u32 again = jcc32(5);  // jnz
  const u32 commit = here();
  x87_ools_.push_back({p, again, commit});
  // The registers written (their tags from FXAM's class), the ones popped.
  movzx(r10d, word[r15 + kFtwOff]);
  for (unsigned j = 0; j < p.nout; j++) {
    const int k = p.out[j];
    if (k == kDrop) {
      fstp(st0);
      continue;
    }
    fxam();
    fnstsw(word[r14 + kX87ClassOff]);
    x87_m80(7, x87_phys(k));
    if (k) shr(r9d, 3);
    else rorx(r9d, r11d, 3);  // 2 * physical register
    movzx(r8d, word[r14 + kX87ClassOff]);
    pext(r8d, r8d, dword[r14 + kX87PextOff]);  // C3 C2 C0
    add(r8d, r8d);
    shrx(r8d, dword[r14 + kX87TagsOff], r8d);
    xor_(r8d, 3);
    and_(r8d, 3);  // tag ^ 3
    shlx(r8d, r8d, r9d);
    bts(r10d, r9d);
    inc(r9d);
    bts(r10d, r9d);
    xor_(r10d, r8d);
  }
  for (unsigned j = 0; j < p.pops; j++) {
    x87_phys(int(j));
    if (j) shr(r9d, 3);
    else rorx(r9d, r11d, 3);
    bts(r10d, r9d);
    inc(r9d);
    bts(r10d, r9d);
  }
  mov(word[r15 + kFtwOff], r10w);
  // FSW: the sticky flags ORed in, the condition codes the host sets, TOP.
  movzx(r9d, word[r14 + kX87SwOff]);
  movzx(r10d, word[r15 + kFswOff]);
  and_(r10d, 0x80FF | kept);
  and_(r9d, 0x7F | (kCC & ~kept));
  or_(r10d, r9d);
  const int delta = int(p.pops) - (p.push ? 1 : 0);
  if (delta) {
    lea(r9d, ptr[r11 + 16 * delta]);
    and_(r9d, 0x70);
    shl(r9d, 7);
  } else {
    mov(r9d, r11d);
    shl(r9d, 7);
  }
  or_(r10d, r9d);
  mov(word[r15 + kFswOff], r10w);
  x87_record(i, p);
  g.done = here();
  if (ms) ms->done = g.done;
  return true;
}

// FOP, FIP/FCS, FDP/FDS; the count of inline runs.
void Emitter::x87_record(const Insn& i, const X87Plan& p) {
  mov(word[r15 + kFopOff], u16(((i.opcode & 7) << 8) | i.modrm));
  mov(dword[r15 + kFipOff], x87_eip_);
  mov(r9w, seg_field(CS, kSelOff, 2));
  mov(word[r15 + kFcsOff], r9w);
  if (p.mem) {
    x87_ea_r9(i);
    mov(dword[r15 + kFdpOff], r9d);
    mov(r9w, seg_field(i.seg, kSelOff, 2));
    mov(word[r15 + kFdsOff], r9w);
  }
  add(qword[r14 + kX87RunsOff], 1);
}

// A register copy (FXCH, FLD/FST/FSTP ST(i)) as 16-byte moves in FpuState
// (the 6 bytes after each register are zero throughout), its tag copied
// with it (the tags are the contents' class), pops, TOP, and the condition
// codes: `kept` from before, the rest `value` (what the host sets for every
// operand). r11d = 16 * TOP; Rt::x87_sw is scratch here.
void Emitter::x87_move(const Insn& i, int kept, int value) {
  const int rm = i.rm;
  auto at = [&](const Reg32& r) { return xword[r15 + Reg64(r.getIdx()) + kRegsOff]; };
  auto phys = [&](const Reg32& r, int k) {  // 16 * physical register of ST(k)
    lea(r, ptr[r11 + 16 * k]);
    and_(r, 0x70);
  };
  const Address tmp = dword[r14 + kX87SwOff];
  movzx(r8d, word[r15 + kFtwOff]);
  // The tag at bit r10d goes to bit r9d (clobbers r11d).
  auto copy_tag = [&] {
    shrx(r11d, r8d, r10d);
    and_(r11d, 3);
    xor_(r11d, 3);
    bts(r8d, r9d);
    inc(r9d);
    bts(r8d, r9d);
    dec(r9d);
    shlx(r11d, r11d, r9d);
    xor_(r8d, r11d);
  };
  auto copy = [&] {  // ST at r10d to r9d (offsets), then as shifts
    movups(xmm0, at(r10d));
    movups(at(r9d), xmm0);
    shr(r9d, 3);
    shr(r10d, 3);
    copy_tag();
  };
  int delta = 0;
  switch (i.op) {
    case Op::FXCH_STi:
      if (!rm) break;
      phys(r9d, 0);
      phys(r10d, rm);
      movups(xmm0, at(r9d));
      movups(xmm1, at(r10d));
      movups(at(r9d), xmm1);
      movups(at(r10d), xmm0);
      shr(r9d, 3);
      shr(r10d, 3);
      // x = (t0 ^ ti) & 3; both tags ^= x.
      shrx(r11d, r8d, r10d);
      mov(tmp, r11d);
      shrx(r11d, r8d, r9d);
      xor_(r11d, tmp);
      and_(r11d, 3);
      mov(tmp, r11d);
      shlx(r11d, r11d, r9d);
      xor_(r8d, r11d);
      mov(r11d, tmp);
      shlx(r11d, r11d, r10d);
      xor_(r8d, r11d);
      break;
    case Op::FLD_STi:
      phys(r9d, -1);
      phys(r10d, rm);
      copy();
      delta = -1;
      break;
    case Op::FST_STi:
    case Op::FSTP_STi:
      mov(tmp, r11d);
      if (rm) {
        phys(r9d, rm);
        phys(r10d, 0);
        copy();
      }
      if (i.op == Op::FSTP_STi) {  // then ST(0) is popped
        mov(r9d, tmp);
        shr(r9d, 3);
        bts(r8d, r9d);
        inc(r9d);
        bts(r8d, r9d);
        delta = 1;
      }
      break;
    default:
      throw Error("bt: internal error: x87_move of another instruction");
  }
  mov(word[r15 + kFtwOff], r8w);
  movzx(r9d, word[r15 + kFswOff]);
  if (delta) {
    lea(r10d, ptr[r9 + 0x800 * delta]);
    and_(r10d, 0x3800);
    and_(r9d, ~0x3800 & (0xFFFF & ~(kCC & ~kept)));
    or_(r9d, r10d);
  } else {
    and_(r9d, 0xFFFF & ~(kCC & ~kept));
  }
  if (value) or_(r9d, value);
  mov(word[r15 + kFswOff], r9w);
}

// r9d = the memory operand's offset (32-bit addressing).
void Emitter::x87_ea_r9(const Insn& i) {
  if (i.base == kNoReg && i.index == kNoReg) {
    mov(r9d, i.disp);
    return;
  }
  RegExp e;
  bool any = false;
  if (i.base != kNoReg) {
    e = RegExp(Reg64(hreg(i.base)));
    any = true;
  }
  if (i.index != kNoReg) {
    RegExp ix = Reg64(hreg(i.index)) * (1 << i.scale);
    e = any ? e + ix : ix;
  }
  lea(r9d, ptr[e + i32(i.disp)]);
}

// The out-of-line ends of the inline instructions (Emitter::run emits them
// after the slow paths): the host's stale exception flags cleared, the
// instruction again from its loads, back to its commit.
void Emitter::x87_emit_ools() {
  for (const X87Ool& o : x87_ools_) {
    bind(o.again);
    for (unsigned j = 0; j < o.p.nout; j++) fstp(st0);
    fnclex();
    add(qword[r14 + kX87AgainOff], 1);
    x87_run(o.p);
    jmp_back(o.commit);
  }
  x87_ools_.clear();
}

// FNSTSW AX, FNSTCW m16 (no wait: #NM only), FLDCW m16 (waits: #MF/FERR#
// when FSW.ES is set), FWAIT. Control instructions: FOP and the pointers stay.
bool Emitter::x87_control(const Insn& i, u32 eip, u64 pa) {
  auto& st = bt_.bstats();
  st.native_insns++;
  st.inline_x87++;
  if (rcp_ >= 0) rcp_run();
  save_flags();
  fl_ = Fl::parked;
  Slow* ms = nullptr;
  Site* site;
  const bool load = i.op == Op::FLDCW;
  if (i.mem) {
    ms = &mem_access(i, eip, pa, i.seg, 2, !load, Site::A_EA);
    site = ms->site;
    if (ms->direct_from != kNone) {
      if (load) mov(r9b, byte[r8 + 1]);
      else or_(byte[r8 + 1], 0);
      mov(r9b, byte[r8]);  // (both bytes touched: the access cannot fault later)
    }
  } else {
    site = new_site(i, eip, pa, false, false);
  }
  Slow& g = also_slow(site, kNone);
  if (i.op == Op::FWAIT) {
    // #NM only with both MP and TS; then a pending exception (FSW.ES).
    movzx(r9d, byte[r15 + kCr0Off]);
    and_(r9d, CR0_MP | CR0_TS);
    cmp(r9d, CR0_MP | CR0_TS);
    g.entry_fix = jcc32(4);  // je
    test(byte[r15 + kFswOff], 0x80);
    g.entry_fix2 = jcc32(5);  // jnz
    add(qword[r14 + kX87RunsOff], 1);
    g.done = here();
    return true;
  }
  test(byte[r15 + kCr0Off], u8(CR0_EM | CR0_TS));
  g.entry_fix = jcc32(5);
  switch (i.op) {
    case Op::FNSTSW_AX:
      mov(ax, word[r15 + kFswOff]);
      break;
    case Op::FNSTCW:
      mov(r9w, word[r15 + kFcwOff]);
      mov(word[r8], r9w);
      break;
    default:  // FLDCW: reserved bits as the hardware reads them, then ES and B
      test(byte[r15 + kFswOff], 0x80);
      g.entry_fix2 = jcc32(5);
      movzx(r9d, word[r8]);
      and_(r9d, 0x1F3F);
      or_(r9d, 0x40);
      mov(word[r15 + kFcwOff], r9w);
      movzx(r10d, word[r15 + kFswOff]);
      andn(r11d, r9d, r10d);
      and_(r11d, 0x3F);  // unmasked flags set
      neg(r11d);
      sbb(r11d, r11d);
      and_(r11d, 0x8080);  // ES | B
      and_(r10d, ~0x8080);
      or_(r10d, r11d);
      mov(word[r15 + kFswOff], r10w);
      break;
  }
  add(qword[r14 + kX87RunsOff], 1);
  g.done = here();
  if (ms) ms->done = g.done;
  return true;
}

}  // namespace popek::engine::bt
