// x87 FPU semantics (SDM vol. 1 ch. 8, vol. 2 "F..." pages).
//
// Computational instructions run on the host's x87 unit (x87_host.h) with the
// guest's control word -- precision, rounding and exception masks -- so every
// result, masked response and unmasked response (no result for IE/DE/ZE, the
// bias-adjusted result for OE/UE, ES/B set) is the hardware's own. The host
// cannot trap on it: the instruction is followed only by FNSAVE, which does not
// check for pending exceptions and reinitialises the host FPU. What the host
// does not do for us: memory (read before, written after, never for an
// unmasked IE/DE/ZE/OE/UE, as the SDM says), the pointers and FOP, #NM, and
// reporting the pending exception: at the next waiting x87 instruction, #MF
// with CR0.NE = 1, else the board's FERR# path (IRQ 13) and the instruction
// runs (IGNNE#). Control instructions (FLDCW, FNSTENV, FNSAVE, ...) are pure
// state manipulation here.
#include <cstring>
#include <initializer_list>

#include "x86/sem/sem.h"
#include "x86/sem/x87_host.h"

namespace popek::x86 {
namespace {

using x87host::Ctx;
using x87host::Image;

// FSW bits.
enum : u16 {
  S_IE = 1, S_DE = 2, S_ZE = 4, S_OE = 8, S_UE = 0x10, S_PE = 0x20, S_SF = 0x40,
  S_ES = 0x80, S_C0 = 0x100, S_C1 = 0x200, S_C2 = 0x400, S_C3 = 0x4000, S_B = 0x8000,
  S_CC = S_C0 | S_C1 | S_C2 | S_C3, S_TOP = 0x3800,
};

// ---- state helpers ----------------------------------------------------------

void get80(const long double& r, u8* out) { std::memcpy(out, &r, 10); }
void put80(long double& r, const u8* in) {
  std::memset(&r, 0, sizeof r);
  std::memcpy(&r, in, 10);
}

// ES and B summarise the unmasked exception flags (SF counts through IE).
void update_es(FpuState& f) {
  if (f.fsw & ~f.fcw & 0x3F) f.fsw |= S_ES | S_B;
  else f.fsw &= u16(~(S_ES | S_B));
}

u16 fixed_cw(u16 v) { return u16((v & 0x1F3F) | 0x40); }  // reserved bits as hardware reads them

// #NM, then a pending unmasked exception for waiting instructions.
void prologue(Cpu& c, bool waiting) {
  if (c.s.cr0 & (CR0_EM | CR0_TS)) raise_fault(NM);
  if (waiting && (c.s.fpu.fsw & S_ES)) {
    if (c.s.cr0 & CR0_NE) raise_fault(MF);
    c.plat.fpu_error();  // FERR# -> IRQ 13; the instruction then runs (IGNNE#)
  }
}

// FOP, FIP/FCS and (memory forms) FDP/FDS for non-control instructions.
void record(Cpu& c, const Insn& i, u32 off) {
  FpuState& f = c.s.fpu;
  f.fop = u16(((i.opcode & 7) << 8) | i.modrm);
  f.fip = c.s.eip;
  f.fcs = c.s.seg[CS].sel;
  if (i.mem) {
    f.fdp = off;
    f.fds = c.s.seg[i.seg].sel;
  }
}

u32 add_off(const Insn& i, u32 off, u32 d) { return i.asize == 2 ? ((off + d) & 0xFFFF) : off + d; }

void read_bytes(Cpu& c, const Insn& i, u32 off, u8* buf, unsigned n) {
  unsigned k = 0;
  for (; k + 4 <= n; k += 4) {
    u32 v = c.read<u32>(i.seg, add_off(i, off, k));
    std::memcpy(buf + k, &v, 4);
  }
  for (; k + 2 <= n; k += 2) {
    u16 v = c.read<u16>(i.seg, add_off(i, off, k));
    std::memcpy(buf + k, &v, 2);
  }
}

// Checks the whole destination (segment and pages) before writing any of it.
void probe(Cpu& c, const Insn& i, u32 off, unsigned n) {
  const u32 la = c.linear(i.seg, off, n, true);
  c.mem.probe_write(la, n, c.user());
}
void write_bytes(Cpu& c, const Insn& i, u32 off, const u8* buf, unsigned n) {
  unsigned k = 0;
  for (; k + 4 <= n; k += 4) {
    u32 v;
    std::memcpy(&v, buf + k, 4);
    c.write<u32>(i.seg, add_off(i, off, k), v);
  }
  for (; k + 2 <= n; k += 2) {
    u16 v;
    std::memcpy(&v, buf + k, 2);
    c.write<u16>(i.seg, add_off(i, off, k), v);
  }
}

void to_image(const FpuState& f, Image& im, u16 cw) {
  std::memset(&im, 0, sizeof im);
  im.cw = 0xFFFF0000u | cw;
  im.sw = 0xFFFF0000u | (f.fsw & (S_CC | S_TOP));
  im.tw = 0xFFFF0000u | f.ftw;
  for (unsigned k = 0; k < 8; ++k) get80(f.regs[(f.top() + k) & 7], im.st[k]);
}

// Takes the host's registers, TOP, tags and condition codes; ORs `flags` into
// the sticky exception flags.
void commit(FpuState& f, const Image& im, u16 flags) {
  f.fsw = u16((im.sw & (S_CC | S_TOP)) | (f.fsw & 0x7F) | (flags & 0x7F));
  f.ftw = u16(im.tw);
  const unsigned top = f.top();
  for (unsigned k = 0; k < 8; ++k) put80(f.regs[(top + k) & 7], im.st[k]);
  update_es(f);
}

// ---- the native path ----------------------------------------------------------

enum class MemKind : u8 { none, load, store };

struct Spec {
  MemKind mk = MemKind::none;
  u8 msize = 0;             // memory operand bytes
  bool control = false;     // FFREE/FINCSTP/FDECSTP: no FOP/FIP update
  bool flags_out = false;   // FCOMI family writes ZF/PF/CF (clears OF/SF/AF)
};

void native(Cpu& c, const Insn& i, u8 b0, u8 b1, const Spec& sp) {
  prologue(c, true);
  FpuState& f = c.s.fpu;
  Ctx ctx;
  u32 off = 0;
  if (i.mem) {
    off = c.ea(i);
    if (sp.mk == MemKind::load) read_bytes(c, i, off, ctx.mem, sp.msize);
    else probe(c, i, off, sp.msize);
  }
  to_image(f, ctx.img, f.fcw);
  ctx.flags_in = c.s.eflags & FLAGS_ARITH;
  x87host::exec(ctx, b0, b1);
  if (!sp.control) record(c, i, off);

  const u16 raised = u16(ctx.img.sw & 0x7F);
  const u16 unmasked = u16(raised & ~f.fcw & 0x3F);
  // An unmasked IE/DE/ZE/OE/UE leaves a memory destination unchanged (the
  // host left its registers unchanged too); an unmasked PE still stores.
  if (sp.mk == MemKind::store && !(unmasked & (S_IE | S_DE | S_ZE | S_OE | S_UE)))
    write_bytes(c, i, off, ctx.mem, sp.msize);
  if (sp.flags_out) c.s.eflags = (c.s.eflags & ~FLAGS_ARITH) | (u32(ctx.flags_out) & FLAGS_ARITH);
  commit(f, ctx.img, raised);
}

// Register forms: the guest's own encoding (undocumented aliases mapped to the
// documented instruction they duplicate).
template <bool Control = false, bool FlagsOut = false>
void h_reg(Cpu& c, const Insn& i) {
  Spec sp;
  sp.control = Control;
  sp.flags_out = FlagsOut;
  native(c, i, i.opcode, i.modrm, sp);
}
// Aliases: FSTP1 (D9 D8+i) = FSTP (DD D8+i); FXCH4 (DD C8+i) = FXCH (D9 C8+i);
// FCOM2 (DC D0+i) = FCOM (D8 D0+i); FCOMP3 (DC D8+i), FCOMP5 (DE D0+i) = FCOMP (D8 D8+i).
template <u8 B0, u8 B1Base>
void h_alias(Cpu& c, const Insn& i) {
  native(c, i, B0, u8(B1Base + i.rm), Spec{});
}
template <MemKind K, u8 Size>
void h_mem(Cpu& c, const Insn& i) {
  Spec sp;
  sp.mk = K;
  sp.msize = Size;
  native(c, i, i.opcode, u8(i.reg << 3), sp);
}

// ---- control instructions -------------------------------------------------------

void h_fwait(Cpu& c, const Insn&) {
  if ((c.s.cr0 & (CR0_MP | CR0_TS)) == (CR0_MP | CR0_TS)) raise_fault(NM);
  if (c.s.fpu.fsw & S_ES) {
    if (c.s.cr0 & CR0_NE) raise_fault(MF);
    c.plat.fpu_error();
  }
}

void fninit(FpuState& f) {
  f.fcw = 0x037F;
  f.fsw = 0;
  f.ftw = 0xFFFF;
  f.fop = 0;
  f.fip = f.fdp = 0;
  f.fcs = f.fds = 0;
}

void h_fninit(Cpu& c, const Insn&) {
  prologue(c, false);
  fninit(c.s.fpu);
}
void h_fnclex(Cpu& c, const Insn&) {
  prologue(c, false);
  c.s.fpu.fsw &= u16(~(0xFF | S_B));
}
void h_fnop_nowait(Cpu& c, const Insn&) { prologue(c, false); }  // FNENI/FNDISI/FNSETPM: 8087/287 only
void h_fnop(Cpu& c, const Insn&) { prologue(c, true); }
void h_fnstsw_ax(Cpu& c, const Insn&) {
  prologue(c, false);
  c.set_reg<u16>(EAX, c.s.fpu.fsw);
}
void h_fnstsw_m(Cpu& c, const Insn& i) {
  prologue(c, false);
  c.write<u16>(i.seg, c.ea(i), c.s.fpu.fsw);
}
void h_fnstcw(Cpu& c, const Insn& i) {
  prologue(c, false);
  c.write<u16>(i.seg, c.ea(i), c.s.fpu.fcw);
}
void h_fldcw(Cpu& c, const Insn& i) {
  prologue(c, true);
  const u16 v = c.read<u16>(i.seg, c.ea(i));
  c.s.fpu.fcw = fixed_cw(v);
  update_es(c.s.fpu);
}
// FFREEP (DF C0+i, undocumented but on every P6-class CPU): FFREE st(i), then pop.
void h_ffreep(Cpu& c, const Insn& i) {
  prologue(c, true);
  FpuState& f = c.s.fpu;
  const unsigned p = (f.top() + i.rm) & 7;
  f.ftw |= u16(3u << (2 * p));
  f.ftw |= u16(3u << (2 * f.top()));
  f.set_top(f.top() + 1);
}

// ---- FNSTENV/FLDENV/FNSAVE/FRSTOR (SDM vol. 1, figures 8-9 .. 8-12) ----------------

bool real_format(const Cpu& c) { return !c.s.pe() || c.s.vm86(); }

unsigned env_size(const Insn& i) { return i.osize == 4 ? 28 : 14; }

void put16(u8* p, u16 v) { std::memcpy(p, &v, 2); }
void put32(u8* p, u32 v) { std::memcpy(p, &v, 4); }
u16 get16(const u8* p) { u16 v; std::memcpy(&v, p, 2); return v; }
u32 get32(const u8* p) { u32 v; std::memcpy(&v, p, 4); return v; }

void build_env(const Cpu& c, const Insn& i, u8* b) {
  const FpuState& f = c.s.fpu;
  const bool real = real_format(c);
  const u32 ip = real ? (u32(f.fcs) << 4) + f.fip : f.fip;
  const u32 dp = real ? (u32(f.fds) << 4) + f.fdp : f.fdp;
  const u16 fop = f.fop & 0x7FF;
  if (i.osize == 4) {
    put32(b + 0, 0xFFFF0000u | f.fcw);
    put32(b + 4, 0xFFFF0000u | f.fsw);
    put32(b + 8, 0xFFFF0000u | f.ftw);
    if (real) {
      put32(b + 12, 0xFFFF0000u | (ip & 0xFFFF));
      put32(b + 16, ((ip >> 16) << 12) | fop);
      put32(b + 20, 0xFFFF0000u | (dp & 0xFFFF));
      put32(b + 24, (dp >> 16) << 12);
    } else {
      put32(b + 12, ip);
      put32(b + 16, f.fcs | (u32(fop) << 16));
      put32(b + 20, dp);
      put32(b + 24, 0xFFFF0000u | f.fds);
    }
  } else {
    put16(b + 0, f.fcw);
    put16(b + 2, f.fsw);
    put16(b + 4, f.ftw);
    if (real) {
      put16(b + 6, u16(ip));
      put16(b + 8, u16((((ip >> 16) & 0xF) << 12) | fop));
      put16(b + 10, u16(dp));
      put16(b + 12, u16(((dp >> 16) & 0xF) << 12));
    } else {
      put16(b + 6, u16(ip));
      put16(b + 8, f.fcs);
      put16(b + 10, u16(dp));
      put16(b + 12, f.fds);
    }
  }
}

// Loads the environment; tags other than "empty" are recomputed from the
// registers' contents, as the hardware does.
void load_env(Cpu& c, const Insn& i, const u8* b) {
  FpuState& f = c.s.fpu;
  const bool real = real_format(c);
  u16 tw;
  if (i.osize == 4) {
    f.fcw = fixed_cw(get16(b + 0));
    f.fsw = get16(b + 4);
    tw = get16(b + 8);
    if (real) {
      f.fip = (get32(b + 12) & 0xFFFF) | ((get32(b + 16) >> 12) << 16);
      f.fop = get32(b + 16) & 0x7FF;
      f.fdp = (get32(b + 20) & 0xFFFF) | ((get32(b + 24) >> 12) << 16);
      f.fcs = f.fds = 0;
    } else {
      f.fip = get32(b + 12);
      f.fcs = get16(b + 16);
      f.fop = get16(b + 18) & 0x7FF;
      f.fdp = get32(b + 20);
      f.fds = get16(b + 24);
    }
  } else {
    f.fcw = fixed_cw(get16(b + 0));
    f.fsw = get16(b + 2);
    tw = get16(b + 4);
    if (real) {
      f.fip = get16(b + 6) | (u32(get16(b + 8) >> 12) << 16);
      f.fop = get16(b + 8) & 0x7FF;
      f.fdp = get16(b + 10) | (u32(get16(b + 12) >> 12) << 16);
      f.fcs = f.fds = 0;
    } else {
      f.fip = get16(b + 6);
      f.fcs = get16(b + 8);
      f.fop = 0;  // the 16-bit protected-mode image has no opcode field
      f.fdp = get16(b + 10);
      f.fds = get16(b + 12);
    }
  }
  u16 ftw = 0;
  for (unsigned p = 0; p < 8; ++p) {
    unsigned t = (tw >> (2 * p)) & 3;
    if (t != 3) {
      u8 v[10];
      get80(f.regs[p], v);
      t = x87host::tag_of(v);
    }
    ftw |= u16(t << (2 * p));
  }
  f.ftw = ftw;
  update_es(f);
}

void h_fnstenv(Cpu& c, const Insn& i) {
  prologue(c, false);
  const u32 off = c.ea(i);
  const unsigned n = env_size(i);
  u8 b[28];
  build_env(c, i, b);
  probe(c, i, off, n);
  write_bytes(c, i, off, b, n);
  c.s.fpu.fcw |= 0x3F;
  update_es(c.s.fpu);
}
void h_fldenv(Cpu& c, const Insn& i) {
  prologue(c, true);
  const u32 off = c.ea(i);
  u8 b[28];
  read_bytes(c, i, off, b, env_size(i));
  load_env(c, i, b);
}
void h_fnsave(Cpu& c, const Insn& i) {
  prologue(c, false);
  const u32 off = c.ea(i);
  const unsigned n = env_size(i);
  u8 b[108];
  build_env(c, i, b);
  const FpuState& f = c.s.fpu;
  for (unsigned k = 0; k < 8; ++k) get80(f.regs[(f.top() + k) & 7], b + n + 10 * k);
  probe(c, i, off, n + 80);
  write_bytes(c, i, off, b, n + 80);
  fninit(c.s.fpu);
}
void h_frstor(Cpu& c, const Insn& i) {
  prologue(c, true);
  const u32 off = c.ea(i);
  const unsigned n = env_size(i);
  u8 b[108];
  read_bytes(c, i, off, b, n + 80);
  FpuState& f = c.s.fpu;
  const unsigned top = (get16(b + (n == 28 ? 4 : 2)) >> 11) & 7;
  for (unsigned k = 0; k < 8; ++k) put80(f.regs[(top + k) & 7], b + n + 10 * k);
  load_env(c, i, b);
}

}  // namespace

void register_x87(HandlerTable& t) {
  using enum MemKind;
  // Arithmetic with memory operands, and FCOM/FCOMP m.
#define ARITH_MEM(P, size)                                                              \
  for (Op op : {Op::P##_FADD, Op::P##_FMUL, Op::P##_FCOM, Op::P##_FCOMP, Op::P##_FSUB,  \
                Op::P##_FSUBR, Op::P##_FDIV, Op::P##_FDIVR})                            \
    t.set1(op, h_mem<load, size>);
  ARITH_MEM(M32FP, 4)
  ARITH_MEM(M32INT, 4)
  ARITH_MEM(M64FP, 8)
  ARITH_MEM(M16INT, 2)
#undef ARITH_MEM
  for (Op op : {Op::FLD_M32, Op::FILD_M32}) t.set1(op, h_mem<load, 4>);
  for (Op op : {Op::FLD_M64, Op::FILD_M64}) t.set1(op, h_mem<load, 8>);
  t.set1(Op::FILD_M16, h_mem<load, 2>);
  for (Op op : {Op::FLD_M80, Op::FBLD}) t.set1(op, h_mem<load, 10>);
  for (Op op : {Op::FST_M32, Op::FSTP_M32, Op::FIST_M32, Op::FISTP_M32}) t.set1(op, h_mem<store, 4>);
  for (Op op : {Op::FST_M64, Op::FSTP_M64, Op::FISTP_M64}) t.set1(op, h_mem<store, 8>);
  for (Op op : {Op::FIST_M16, Op::FISTP_M16}) t.set1(op, h_mem<store, 2>);
  for (Op op : {Op::FSTP_M80, Op::FBSTP}) t.set1(op, h_mem<store, 10>);

  // Register forms run as encoded (FCMOVcc gets the guest's CF/PF/ZF).
  for (Op op : {Op::FADD_ST0STi, Op::FMUL_ST0STi, Op::FCOM_STi, Op::FCOMP_STi, Op::FSUB_ST0STi,
                Op::FSUBR_ST0STi, Op::FDIV_ST0STi, Op::FDIVR_ST0STi, Op::FLD_STi, Op::FXCH_STi,
                Op::FCHS, Op::FABS, Op::FTST, Op::FXAM, Op::FLD1, Op::FLDL2T, Op::FLDL2E,
                Op::FLDPI, Op::FLDLG2, Op::FLDLN2, Op::FLDZ, Op::F2XM1, Op::FYL2X, Op::FPTAN,
                Op::FPATAN, Op::FXTRACT, Op::FPREM1, Op::FPREM, Op::FYL2XP1, Op::FSQRT,
                Op::FSINCOS, Op::FRNDINT, Op::FSCALE, Op::FSIN, Op::FCOS, Op::FCMOVB,
                Op::FCMOVE, Op::FCMOVBE, Op::FCMOVU, Op::FUCOMPP, Op::FCMOVNB, Op::FCMOVNE,
                Op::FCMOVNBE, Op::FCMOVNU, Op::FADD_STiST0, Op::FMUL_STiST0, Op::FSUBR_STiST0,
                Op::FSUB_STiST0, Op::FDIVR_STiST0, Op::FDIV_STiST0, Op::FST_STi, Op::FSTP_STi,
                Op::FUCOM_STi, Op::FUCOMP_STi, Op::FADDP, Op::FMULP, Op::FCOMPP, Op::FSUBRP,
                Op::FSUBP, Op::FDIVRP, Op::FDIVP})
    t.set1(op, h_reg<>);
  for (Op op : {Op::FUCOMI, Op::FCOMI, Op::FUCOMIP, Op::FCOMIP}) t.set1(op, h_reg<false, true>);
  for (Op op : {Op::FFREE, Op::FINCSTP, Op::FDECSTP}) t.set1(op, h_reg<true>);
  t.set1(Op::FSTP1_STi, h_alias<0xDD, 0xD8>);
  t.set1(Op::FXCH4_STi, h_alias<0xD9, 0xC8>);
  t.set1(Op::FCOM2_STi, h_alias<0xD8, 0xD0>);
  t.set1(Op::FCOMP3_STi, h_alias<0xD8, 0xD8>);
  t.set1(Op::FCOMP5_STi, h_alias<0xD8, 0xD8>);

  // Control.
  t.set1(Op::FWAIT, h_fwait);
  t.set1(Op::FNOP, h_fnop);
  t.set1(Op::FFREEP, h_ffreep);
  t.set1(Op::FNINIT, h_fninit);
  t.set1(Op::FNCLEX, h_fnclex);
  for (Op op : {Op::FNENI, Op::FNDISI, Op::FNSETPM}) t.set1(op, h_fnop_nowait);
  t.set1(Op::FNSTSW_AX, h_fnstsw_ax);
  t.set1(Op::FNSTSW_M16, h_fnstsw_m);
  t.set1(Op::FNSTCW, h_fnstcw);
  t.set1(Op::FLDCW, h_fldcw);
  t.set1(Op::FNSTENV, h_fnstenv);
  t.set1(Op::FLDENV, h_fldenv);
  t.set1(Op::FNSAVE, h_fnsave);
  t.set1(Op::FRSTOR, h_frstor);
}

}  // namespace popek::x86
