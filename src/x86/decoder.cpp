// Table-driven decoder: prefixes, one- and two-byte maps, groups, ModRM/SIB,
// 16/32-bit operand and address size, immediates. The lookup tables are built
// once from opcodes.def.
#include <array>
#include <vector>

#include "base/error.h"
#include "x86/insn.h"

namespace popek::x86 {

extern const OpInfo kOpInfo[] = {
#define X(name, map, opc, count, ext, attrs, imm, fr, fw, mn) \
  {#name, map, opc, count, ext, attrs, imm, u16(fr), u16(fw), mn},
#include "x86/opcodes.def"
#undef X
    {"INVALID", 0, 0, 0, NE, 0, I_NONE, 0, 0, "(bad)"},
};
static_assert(sizeof(kOpInfo) / sizeof(kOpInfo[0]) == kOpCount);

namespace {

const OpInfo (&kInfo)[kOpCount] = kOpInfo;

// Per opcode: either a direct op, or a group of [mod==3][reg][rm] ops.
struct Entry {
  Op op = Op::INVALID;
  i16 group = -1;
  bool modrm = false;
};
struct Tables {
  Entry map[2][256];
  std::vector<std::array<Op, 2 * 8 * 8>> groups;
};

Tables build() {
  Tables t;
  for (unsigned i = 0; i < kOpCount - 1; i++) {
    const OpInfo& in = kInfo[i];
    for (unsigned k = 0; k < in.count; k++) {
      Entry& e = t.map[in.map][in.opcode + k];
      e.modrm = in.attrs & M;
      if (in.ext == NE) {
        POPEK_CHECK(e.op == Op::INVALID && e.group < 0);
        e.op = Op(i);
        continue;
      }
      if (e.group < 0) {
        e.group = i16(t.groups.size());
        std::array<Op, 128> g;
        g.fill(Op::INVALID);
        t.groups.push_back(g);
      }
      auto& g = t.groups[e.group];
      unsigned reg = in.ext & 7, kind = (in.ext >> 4) & 3, rmf = (in.ext >> 8) & 7;
      for (unsigned mod3 = 0; mod3 < 2; mod3++) {
        if (kind == 1 && mod3) continue;   // GM: memory only
        if (kind >= 2 && !mod3) continue;  // GR/GRR: register only
        for (unsigned rm = 0; rm < 8; rm++) {
          if (kind == 3 && rm != rmf) continue;
          g[mod3 * 64 + reg * 8 + rm] = Op(i);
        }
      }
    }
  }
  return t;
}

const Tables& tables() {
  static const Tables t = build();
  return t;
}

// 16-bit addressing forms: base, index, default segment.
struct Ea16 {
  u8 base, index, seg;
};
constexpr Ea16 kEa16[8] = {{EBX, ESI, DS}, {EBX, EDI, DS}, {EBP, ESI, SS}, {EBP, EDI, SS},
                           {ESI, kNoReg, DS}, {EDI, kNoReg, DS}, {EBP, kNoReg, SS},
                           {EBX, kNoReg, DS}};

}  // namespace


DecodeStatus decode(const u8* p, unsigned avail, bool code32, Insn* out) {
  Insn& d = *out;
  d = Insn{};
  unsigned n = 0;
  auto need = [&](unsigned k) { return n + k <= avail; };
#define NEED(k)                                            \
  do {                                                     \
    if (!need(k)) return n + (k) > 15 ? DecodeStatus::too_long : DecodeStatus::need_more; \
  } while (0)

  u8 seg_override = SEG_NONE;
  u8 b;
  for (;;) {
    NEED(1);
    b = p[n];
    switch (b) {
      case 0x26: seg_override = ES; break;
      case 0x2E: seg_override = CS; break;
      case 0x36: seg_override = SS; break;
      case 0x3E: seg_override = DS; break;
      case 0x64: seg_override = FS; break;
      case 0x65: seg_override = GS; break;
      case 0x66: d.prefixes |= P_OPSIZE; break;
      case 0x67: d.prefixes |= P_ADSIZE; break;
      case 0xF0: d.prefixes |= P_LOCK; break;
      case 0xF2: d.prefixes = u8((d.prefixes & ~P_REP) | P_REPNE); break;
      case 0xF3: d.prefixes = u8((d.prefixes & ~P_REPNE) | P_REP); break;
      default: goto prefixes_done;
    }
    n++;
  }
prefixes_done:
  const Tables& t = tables();
  unsigned map = 0;
  n++;
  if (b == 0x0F) {
    NEED(1);
    b = p[n++];
    map = 1;
  }
  d.map = u8(map);
  d.opcode = b;
  const Entry& e = t.map[map][b];
  Op op = e.op;

  bool d32 = code32 ^ bool(d.prefixes & P_OPSIZE);
  bool a32 = code32 ^ bool(d.prefixes & P_ADSIZE);
  d.asize = a32 ? 4 : 2;

  if (e.modrm) {
    NEED(1);
    u8 modrm = p[n++];
    d.modrm = modrm;
    unsigned mod = modrm >> 6;
    d.reg = (modrm >> 3) & 7;
    d.rm = modrm & 7;
    if (e.group >= 0) op = t.groups[e.group][(mod == 3) * 64 + d.reg * 8 + d.rm];
    const OpInfo& in = kInfo[unsigned(op)];
    if (mod != 3 && !(in.attrs & RO)) {
      d.mem = true;
      if (!a32) {
        if (mod == 0 && d.rm == 6) {
          NEED(2);
          d.disp = u32(p[n]) | u32(p[n + 1]) << 8;
          n += 2;
          d.seg = DS;
        } else {
          const Ea16& f = kEa16[d.rm];
          d.base = f.base;
          d.index = f.index;
          d.seg = f.seg;
          if (mod == 1) {
            NEED(1);
            d.disp = u32(i32(i8(p[n++])));
          } else if (mod == 2) {
            NEED(2);
            d.disp = u32(p[n]) | u32(p[n + 1]) << 8;
            n += 2;
          }
        }
      } else {
        unsigned base = d.rm;
        d.seg = DS;
        if (d.rm == 4) {
          NEED(1);
          u8 sib = p[n++];
          d.scale = sib >> 6;
          unsigned idx = (sib >> 3) & 7;
          if (idx != 4) d.index = u8(idx);
          base = sib & 7;
          if (base == 5 && mod == 0) {
            base = kNoReg;
          }
        } else if (d.rm == 5 && mod == 0) {
          base = kNoReg;
        }
        if (base != kNoReg) {
          d.base = u8(base);
          if (base == ESP || base == EBP) d.seg = SS;
        }
        if (mod == 1) {
          NEED(1);
          d.disp = u32(i32(i8(p[n++])));
        } else if (mod == 2 || base == kNoReg) {
          NEED(4);
          d.disp = u32(p[n]) | u32(p[n + 1]) << 8 | u32(p[n + 2]) << 16 | u32(p[n + 3]) << 24;
          n += 4;
        }
      }
    }
  }
  const OpInfo& in = kInfo[unsigned(op)];
  d.op = op;
  d.osize = (in.attrs & B) ? 1 : (d32 ? 4 : 2);
  if (seg_override != SEG_NONE) {
    d.seg = seg_override;
    d.prefixes |= P_SEG;
  }

  auto take = [&](unsigned k) -> u32 {
    u32 v = 0;
    for (unsigned i = 0; i < k; i++) v |= u32(p[n + i]) << (8 * i);
    n += k;
    return v;
  };
  switch (in.imm) {
    case I_NONE: break;
    case I_B: NEED(1); d.imm = take(1); break;
    case I_BS:
    case I_JB: NEED(1); d.imm = u32(i32(i8(take(1)))); break;
    case I_W: NEED(2); d.imm = take(2); break;
    case I_Z:
    case I_JZ:
      if (d32) { NEED(4); d.imm = take(4); }
      else { NEED(2); d.imm = in.imm == I_JZ ? u32(i32(i16(take(2)))) : take(2); }
      break;
    case I_AP:
      if (d32) { NEED(6); d.imm = take(4); } else { NEED(4); d.imm = take(2); }
      d.imm2 = u16(take(2));
      break;
    case I_O:
      if (a32) { NEED(4); d.imm = take(4); } else { NEED(2); d.imm = take(2); }
      break;
    case I_WB: NEED(3); d.imm = take(2); d.imm2 = u16(take(1)); break;
  }
#undef NEED
  if (n > 15) return DecodeStatus::too_long;
  d.len = u8(n);
  if (op == Op::INVALID) return DecodeStatus::invalid;
  if ((in.attrs & MO) && !d.mem) return DecodeStatus::invalid;
  // LOCK is allowed only on the listed read-modify-write forms with a memory destination.
  if ((d.prefixes & P_LOCK) && (!(in.attrs & LK) || !d.mem)) return DecodeStatus::invalid;
  return DecodeStatus::ok;
}

}  // namespace popek::x86
