// Oracle vector generator: builds random and edge-case inputs for each
// instruction form, runs the instruction on the host (host_exec.cc) and
// formats the result. Encodings follow the Intel SDM opcode tables; every
// encoding here means the same in 64-bit mode (no REX, no RIP-relative or
// 64-bit-only forms) and in 32-bit protected mode.
#include "gen.h"

#include <algorithm>
#include <bit>
#include <cstdarg>
#include <cstdio>
#include <cstring>
#include <functional>
#include <string_view>

#include "host_exec.h"
#include "vector_format.h"

namespace popek::oracle::gen {
namespace {

struct Rng {
  uint64_t s;
  uint64_t next() {  // splitmix64
    uint64_t z = (s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
  }
  uint32_t u32() { return static_cast<uint32_t>(next() >> 16); }
  uint32_t below(uint32_t n) { return static_cast<uint32_t>(((next() >> 32) * n) >> 32); }
  bool chance(unsigned pct) { return below(100) < pct; }
};

uint64_t hash_str(std::string_view s, uint64_t h) {
  h ^= 0xcbf29ce484222325ull;
  for (unsigned char c : s) h = (h ^ c) * 0x100000001b3ull;
  return h;
}

constexpr uint32_t mask_of(int bits) { return bits >= 32 ? 0xFFFFFFFFu : (1u << bits) - 1; }
constexpr uint32_t bit(int r) { return 1u << r; }
constexpr uint32_t kAvoidEax = bit(kEax), kAvoidEdx = bit(kEdx), kAvoidEcx = bit(kEcx);

int64_t sext(uint64_t x, int bits) {
  uint64_t m = bits >= 64 ? ~0ull : (1ull << bits) - 1;
  x &= m;
  if (bits < 64 && (x >> (bits - 1)) & 1) x |= ~m;
  return static_cast<int64_t>(x);
}

std::string fmt(const char* f, ...) __attribute__((format(printf, 1, 2)));
std::string fmt(const char* f, ...) {
  char buf[128];
  va_list ap;
  va_start(ap, f);
  std::vsnprintf(buf, sizeof buf, f, ap);
  va_end(ap);
  return buf;
}

const char* rn(int size) { return size == 8 ? "r8" : size == 16 ? "r16" : "r32"; }
const char* mn_(int size) { return size == 8 ? "m8" : size == 16 ? "m16" : "m32"; }
const char* rmn(int size, bool mem) { return mem ? mn_(size) : rn(size); }
const char* accn(int size) { return size == 8 ? "al" : size == 16 ? "ax" : "eax"; }
const char* kCc[16] = {"o", "no", "b", "ae", "e", "ne", "be", "a",
                       "s", "ns", "p", "np", "l", "ge", "le", "g"};

struct RM {
  bool mem = false;
  int reg = 0;
  int base = -1, index = -1, scale = 0;
  int32_t disp = 0;
  bool disp32 = false;
  uint32_t off = 0;  // offset of the operand in the memory window
};

// Builds one vector's code and inputs.
class B {
 public:
  B(Rng& r, Vector& vec) : rng(r), v(vec) {}
  Rng& rng;
  Vector& v;
  uint32_t used = 0;  // 32-bit registers holding operand values (not usable as address regs)
  uint64_t aux = 0;

  uint32_t val(int bits) {
    uint32_t m = mask_of(bits), sign = 1u << (bits - 1);
    switch (rng.below(12)) {
      case 0:
      case 1: {
        const uint32_t e[] = {0,        1,          2,          m,          m - 1,      sign,
                              sign - 1, sign + 1,   sign - 2,   0x55555555, 0xAAAAAAAA, 0x0F0F0F0F,
                              0xF0F0F0F0, 0x80000001, 0x7F,     0x80,       0xFF,       0x7FFF,
                              0x8000,   0xFFFF,     0x00FF00FF, 3};
        return e[rng.below(sizeof e / sizeof e[0])] & m;
      }
      case 2: return rng.below(16);
      case 3: return (0u - rng.below(16)) & m;
      case 4: return rng.u32() & mask_of(static_cast<int>(rng.below(bits)) + 1);
      case 5: return rng.chance(50) ? (1u << rng.below(bits)) : (~(1u << rng.below(bits)) & m);
      default: return rng.u32() & m;
    }
  }
  uint64_t val64() {
    switch (rng.below(8)) {
      case 0: {
        const uint64_t e[] = {0,
                              1,
                              ~0ull,
                              0x8000000000000000ull,
                              0x7FFFFFFFFFFFFFFFull,
                              0x8000000000000001ull,
                              0xFFFFFFFF80000000ull,
                              0x000000007FFFFFFFull,
                              0x0000000080000000ull,
                              0xFFFFFFFFFFFF8000ull,
                              0x0020000000000001ull,
                              0x001FFFFFFFFFFFFFull};
        return e[rng.below(sizeof e / sizeof e[0])];
      }
      case 1: return static_cast<uint64_t>(sext(val(32), 32));
      case 2: return static_cast<uint64_t>(sext(val(16), 16));
      case 3: return rng.next() >> rng.below(64);
      default: return rng.next();
    }
  }
  void code(std::initializer_list<int> bytes) {
    for (int b : bytes) v.code.push_back(static_cast<uint8_t>(b));
  }
  void op16(int size) {
    if (size == 16) v.code.push_back(0x66);
  }
  void set(int r, int size, uint32_t x) {
    if (size == 8) {
      int r32 = r & 3, sh = r >= 4 ? 8 : 0;
      v.in.gpr[r32] = (v.in.gpr[r32] & ~(0xFFu << sh)) | ((x & 0xFF) << sh);
    } else if (size == 16) {
      v.in.gpr[r] = (v.in.gpr[r] & 0xFFFF0000u) | (x & 0xFFFF);
    } else {
      v.in.gpr[r] = x;
    }
  }
  uint32_t get(int r, int size) const {
    if (size == 8) return (v.in.gpr[r & 3] >> (r >= 4 ? 8 : 0)) & 0xFF;
    return v.in.gpr[r] & mask_of(size);
  }
  int pick_reg(int size, uint32_t avoid = 0) {
    for (int tries = 0; tries < 100; ++tries) {
      int r = static_cast<int>(rng.below(8));
      if (size == 8) {
        if (avoid & bit(r & 3)) continue;
        return r;
      }
      if (r == kEsp || (avoid & bit(r))) continue;
      return r;
    }
    return size == 8 ? 1 : kEsi;
  }
  int reg(int size, uint32_t avoid = 0) {
    int r = pick_reg(size, avoid);
    set(r, size, val(size));
    used |= bit(size == 8 ? (r & 3) : r);
    return r;
  }
  // Sets up the memory window (once per vector).
  void window(unsigned size) {
    if (v.has_mem) return;
    v.has_mem = true;
    v.mem_addr = host::kDataBase + 64 + rng.below(host::kDataSize - 192 - size);
    v.mem_in.resize(size);
    for (auto& b : v.mem_in) b = static_cast<uint8_t>(rng.u32());
  }
  uint64_t mem_get(uint32_t off, int n) const {
    uint64_t x = 0;
    for (int i = n - 1; i >= 0; --i) x = (x << 8) | v.mem_in[off + i];
    return x;
  }
  void mem_set(uint32_t off, int n, uint64_t x) {
    for (int i = 0; i < n; ++i) v.mem_in[off + i] = static_cast<uint8_t>(x >> (8 * i));
  }
  // A memory operand whose effective address is mem_addr + off.
  RM mem_at(uint32_t off, uint32_t avoid) {
    RM m;
    m.mem = true;
    m.off = off;
    uint32_t target = v.mem_addr + off;
    avoid |= used | bit(kEsp);
    unsigned kind = rng.below(10);
    int base = -1;
    if (kind != 0) {
      for (int tries = 0; tries < 50 && base < 0; ++tries) {
        int r = static_cast<int>(rng.below(8));
        if (!(avoid & bit(r))) base = r;
      }
    }
    if (base < 0) {  // [disp32] via SIB with no base and no index
      m.disp = static_cast<int32_t>(target);
      return m;
    }
    m.base = base;
    uint32_t idxval = 0;
    if (kind <= 2) {
      for (int tries = 0; tries < 50 && m.index < 0; ++tries) {
        int r = static_cast<int>(rng.below(8));
        if (!(avoid & bit(r)) && r != base) m.index = r;
      }
      if (m.index >= 0) {
        m.scale = static_cast<int>(rng.below(4));
        idxval = rng.below(16);
        v.in.gpr[m.index] = idxval;
        used |= bit(m.index);
      }
    }
    unsigned dk = rng.below(20);
    if (dk < 8) m.disp = 0;
    else if (dk < 17) m.disp = static_cast<int32_t>(rng.below(256)) - 128;
    else {
      m.disp = static_cast<int32_t>(rng.below(0x200000)) - 0x100000;
      m.disp32 = true;
    }
    v.in.gpr[base] = target - static_cast<uint32_t>(m.disp) - (idxval << m.scale);
    used |= bit(base);
    return m;
  }
  // A register (random value) or memory (random value in a window) operand.
  RM rm(int size, bool mem, uint32_t avoid = 0, unsigned win = 32) {
    RM m;
    if (!mem) {
      m.reg = reg(size, avoid);
      return m;
    }
    window(win);
    uint32_t off = rng.below(win - size / 8 + 1);
    m = mem_at(off, avoid);
    if (size <= 32) mem_set(off, size / 8, val(size));
    return m;
  }
  RM mem_operand(int bytes, uint32_t avoid = 0, unsigned win = 32) {
    window(win);
    return mem_at(rng.below(win - bytes + 1), avoid);
  }
  void modrm(int regfield, const RM& m) {
    auto& c = v.code;
    if (!m.mem) {
      c.push_back(static_cast<uint8_t>(0xC0 | regfield << 3 | m.reg));
      return;
    }
    if (m.base < 0) {
      c.push_back(static_cast<uint8_t>(0x04 | regfield << 3));
      c.push_back(0x25);
      imm(4, static_cast<uint32_t>(m.disp));
      return;
    }
    int mod = m.disp32 ? 2 : (m.disp == 0 && m.base != kEbp) ? 0 : 1;
    if (m.index >= 0) {
      c.push_back(static_cast<uint8_t>(mod << 6 | regfield << 3 | 4));
      c.push_back(static_cast<uint8_t>(m.scale << 6 | m.index << 3 | m.base));
    } else {
      c.push_back(static_cast<uint8_t>(mod << 6 | regfield << 3 | m.base));
    }
    if (mod == 1) c.push_back(static_cast<uint8_t>(m.disp));
    if (mod == 2) imm(4, static_cast<uint32_t>(m.disp));
  }
  void imm(int bytes, uint32_t x) {
    for (int i = 0; i < bytes; ++i) v.code.push_back(static_cast<uint8_t>(x >> (8 * i)));
  }
  uint32_t operand_value(const RM& m, int size) const {
    return m.mem ? static_cast<uint32_t>(mem_get(m.off, size / 8)) : get(m.reg, size);
  }
};

using Fn = std::function<void(B&)>;

class Group {
 public:
  Group(std::string name, unsigned count, uint64_t seed) : name_(std::move(name)), count_(count), seed_(seed) {}
  std::string name_;
  unsigned count_;
  uint64_t seed_;
  std::string text;
  size_t n = 0;
  bool ok = true;
  std::string err;

  // Generates count * pct / 100 vectors of one form.
  void form(const std::string& mn, const std::string& form, const Fn& setup, uint32_t undef,
            const Fn& post = nullptr, unsigned pct = 100) {
    if (!ok) return;
    Rng rng{hash_str(mn + " " + form, seed_ ^ hash_str(name_, 0))};
    unsigned cnt = std::max(1u, count_ * pct / 100);
    for (unsigned i = 0; i < cnt; ++i) {
      Vector v;
      v.mnemonic = mn;
      v.form = form.empty() ? "-" : form;
      B b(rng, v);
      for (int r = 0; r < 8; ++r) v.in.gpr[r] = r == kEsp ? 0 : b.val(32);
      v.in.eflags = 2 | (rng.u32() & kStatusFlags);
      setup(b);
      v.undef_flags = undef;
      host::RunResult rr = host::execute(v);
      if (rr.signo) {
        ok = false;
        err = fmt("signal %d (code %d) running ", rr.signo, rr.si_code) + format_vector_line(v);
        return;
      }
      if (post) post(b);
      text += format_vector_line(v);
      text += '\n';
      ++n;
    }
  }
};

// ---------------------------------------------------------------------------
// Integer groups.

const char* kAlu[8] = {"add", "or", "adc", "sbb", "and", "sub", "xor", "cmp"};

void gen_alu(Group& g) {
  for (int op = 0; op < 8; ++op) {
    uint32_t u = (op == 1 || op == 4 || op == 6) ? kFlagAF : 0;
    for (int size : {8, 16, 32}) {
      int w = size > 8;
      for (bool mem : {false, true}) {
        g.form(kAlu[op], fmt("%s,%s", rmn(size, mem), rn(size)), [=](B& b) {
          b.op16(size);
          b.code({op * 8 + w});
          int r = b.reg(size);
          b.modrm(r, b.rm(size, mem));
        }, u);
        g.form(kAlu[op], fmt("%s,%s%s", rn(size), rmn(size, mem), mem ? "" : ".r"), [=](B& b) {
          b.op16(size);
          b.code({op * 8 + 2 + w});
          int r = b.reg(size);
          b.modrm(r, b.rm(size, mem));
        }, u);
        g.form(kAlu[op], fmt("%s,imm%d", rmn(size, mem), size), [=](B& b) {
          b.op16(size);
          b.code({0x80 + w});
          b.modrm(op, b.rm(size, mem));
          b.imm(size / 8, b.val(size));
        }, u);
        if (size > 8)
          g.form(kAlu[op], fmt("%s,simm8", rmn(size, mem)), [=](B& b) {
            b.op16(size);
            b.code({0x83});
            b.modrm(op, b.rm(size, mem));
            b.imm(1, b.val(8));
          }, u);
      }
      g.form(kAlu[op], fmt("%s,imm%d", accn(size), size), [=](B& b) {
        b.op16(size);
        b.code({op * 8 + 4 + w});
        b.set(kEax, size, b.val(size));
        b.imm(size / 8, b.val(size));
      }, u);
    }
  }
  for (int size : {8, 16, 32}) {
    int w = size > 8;
    for (bool mem : {false, true}) {
      g.form("test", fmt("%s,%s", rmn(size, mem), rn(size)), [=](B& b) {
        b.op16(size);
        b.code({0x84 + w});
        int r = b.reg(size);
        b.modrm(r, b.rm(size, mem));
      }, kFlagAF);
      g.form("test", fmt("%s,imm%d", rmn(size, mem), size), [=](B& b) {
        b.op16(size);
        b.code({0xF6 + w});
        b.modrm(0, b.rm(size, mem));
        b.imm(size / 8, b.val(size));
      }, kFlagAF);
      const struct { const char* n; int opc8, opc, digit; } un[] = {
          {"inc", 0xFE, 0xFF, 0}, {"dec", 0xFE, 0xFF, 1}, {"not", 0xF6, 0xF7, 2}, {"neg", 0xF6, 0xF7, 3}};
      for (auto& x : un)
        g.form(x.n, rmn(size, mem), [=](B& b) {
          b.op16(size);
          b.code({size == 8 ? x.opc8 : x.opc});
          b.modrm(x.digit, b.rm(size, mem));
        }, 0);
    }
    g.form("test", fmt("%s,imm%d", accn(size), size), [=](B& b) {
      b.op16(size);
      b.code({0xA8 + w});
      b.set(kEax, size, b.val(size));
      b.imm(size / 8, b.val(size));
    }, kFlagAF);
  }
}

// Sets AX / DX:AX / EDX:EAX to a dividend for divisor d (mostly non-faulting).
void dividend(B& b, int size, bool sign, uint32_t d) {
  uint64_t hi = b.val(size), lo = b.val(size);
  unsigned mode = b.rng.below(100);
  if (mode >= 15 && d != 0) {
    if (!sign) {
      hi = b.rng.next() % d;
    } else {
      int64_t sd = sext(d, size), q = sext(b.val(size), size);
      int64_t ad = sd < 0 ? -sd : sd;
      int64_t r = static_cast<int64_t>(b.rng.next() % static_cast<uint64_t>(ad));
      int64_t prod = q * sd;
      if (prod < 0 || (prod == 0 && b.rng.chance(50))) r = -r;
      uint64_t x = static_cast<uint64_t>(prod + r);
      lo = x & mask_of(size);
      hi = (x >> size) & mask_of(size);
    }
  }
  if (size == 8) {
    b.set(kEax, 16, static_cast<uint32_t>(hi << 8 | lo));
  } else {
    b.set(kEax, size, static_cast<uint32_t>(lo));
    b.set(kEdx, size, static_cast<uint32_t>(hi));
  }
}

void gen_muldiv(Group& g) {
  const char* names[4] = {"mul", "imul", "div", "idiv"};
  for (int k = 0; k < 4; ++k) {
    int digit = 4 + k;
    bool div = k >= 2;
    uint32_t u = div ? kStatusFlags : (kFlagSF | kFlagZF | kFlagAF | kFlagPF);
    for (int size : {8, 16, 32})
      for (bool mem : {false, true})
        g.form(names[k], rmn(size, mem), [=](B& b) {
          b.op16(size);
          b.code({size == 8 ? 0xF6 : 0xF7});
          uint32_t avoid = kAvoidEax | (size == 8 ? 0 : kAvoidEdx);
          if (!div) {
            b.set(kEax, size, b.val(size));
            b.used |= avoid;
            b.modrm(digit, b.rm(size, mem, mem ? avoid : 0));
          } else {
            RM m = b.rm(size, mem, b.rng.chance(90) || mem ? avoid : 0);
            b.modrm(digit, m);
            uint32_t d = b.operand_value(m, size);
            if (b.rng.chance(3)) d = 0, mem ? b.mem_set(m.off, size / 8, 0) : b.set(m.reg, size, 0);
            dividend(b, size, k == 3, d);
          }
        }, u);
  }
  uint32_t u = kFlagSF | kFlagZF | kFlagAF | kFlagPF;
  for (int size : {16, 32})
    for (bool mem : {false, true}) {
      g.form("imul", fmt("%s,%s", rn(size), rmn(size, mem)), [=](B& b) {
        b.op16(size);
        b.code({0x0F, 0xAF});
        int r = b.reg(size);
        b.modrm(r, b.rm(size, mem));
      }, u);
      g.form("imul", fmt("%s,%s,simm8", rn(size), rmn(size, mem)), [=](B& b) {
        b.op16(size);
        b.code({0x6B});
        int r = b.reg(size);
        b.modrm(r, b.rm(size, mem));
        b.imm(1, b.val(8));
      }, u);
      g.form("imul", fmt("%s,%s,imm%d", rn(size), rmn(size, mem), size), [=](B& b) {
        b.op16(size);
        b.code({0x69});
        int r = b.reg(size);
        b.modrm(r, b.rm(size, mem));
        b.imm(size / 8, b.val(size));
      }, u);
    }
}

uint32_t shift_count(B& b, int size) {
  if (b.rng.chance(60)) {
    const uint32_t e[] = {0, 1, 2, 3, uint32_t(size - 1), uint32_t(size), uint32_t(size + 1), 31, 32,
                          33, 63, 64, 255, 128, 8, 9, 16, 17, 7, 15};
    return e[b.rng.below(sizeof e / sizeof e[0])];
  }
  return b.rng.chance(50) ? b.rng.below(32) : b.rng.below(256);
}

void gen_shift(Group& g) {
  const char* names[8] = {"rol", "ror", "rcl", "rcr", "shl", "shr", nullptr, "sar"};
  for (int n = 0; n < 8; ++n) {
    if (!names[n]) continue;
    for (int size : {8, 16, 32})
      for (int kind = 0; kind < 3; ++kind)  // 0: by 1, 1: by CL, 2: by imm8
        for (bool mem : {false, true}) {
          const char* cnt = kind == 0 ? "1" : kind == 1 ? "cl" : "imm8";
          auto post = [=](B& b) {
            const Vector& v = b.v;
            uint32_t c = kind == 0 ? 1 : kind == 1 ? (v.in.gpr[kEcx] & 0xFF) : v.code.back();
            c &= 31;
            uint32_t u = 0;
            if (c != 0) {
              if (c != 1) u |= kFlagOF;
              if (n >= 4) u |= kFlagAF;
              if ((n == 4 || n == 5) && c >= static_cast<uint32_t>(size)) u |= kFlagCF;
            }
            b.v.undef_flags = u;
          };
          g.form(names[n], fmt("%s,%s", rmn(size, mem), cnt), [=](B& b) {
            b.op16(size);
            int w = size > 8;
            b.code({kind == 0 ? 0xD0 + w : kind == 1 ? 0xD2 + w : 0xC0 + w});
            b.modrm(n, b.rm(size, mem, kind == 1 ? kAvoidEcx : 0));
            if (kind == 1) b.set(kEcx, 8, shift_count(b, size));
            if (kind == 2) b.imm(1, shift_count(b, size));
          }, 0, post);
        }
  }
  // shld/shrd. A 16-bit count (mod 32) above 16 gives undefined results: not generated.
  for (int dir = 0; dir < 2; ++dir)
    for (int size : {16, 32})
      for (bool cl : {false, true})
        for (bool mem : {false, true}) {
          auto count = [=](B& b) {
            uint32_t c;
            do c = shift_count(b, size); while (size == 16 && (c & 31) > 16);
            return c;
          };
          auto post = [=](B& b) {
            const Vector& v = b.v;
            uint32_t c = (cl ? v.in.gpr[kEcx] : v.code.back()) & 31;
            b.v.undef_flags = c == 0 ? 0 : (kFlagAF | (c != 1 ? kFlagOF : 0));
          };
          g.form(dir ? "shrd" : "shld", fmt("%s,%s,%s", rmn(size, mem), rn(size), cl ? "cl" : "imm8"),
                 [=](B& b) {
                   b.op16(size);
                   b.code({0x0F, (dir ? 0xAC : 0xA4) + (cl ? 1 : 0)});
                   int r = b.reg(size, cl ? kAvoidEcx : 0);
                   RM m = b.rm(size, mem, cl ? kAvoidEcx : 0);
                   if (!mem && cl && m.reg == kEcx) m.reg = r == kEbx ? kEdx : kEbx;  // keep cl a pure count
                   b.modrm(r, m);
                   if (cl) b.set(kEcx, 8, count(b));
                   else b.imm(1, count(b));
                 }, 0, post);
        }
}

void gen_bit(Group& g) {
  const char* names[4] = {"bt", "bts", "btr", "btc"};
  const int opr[4] = {0xA3, 0xAB, 0xB3, 0xBB};
  uint32_t u = kFlagOF | kFlagSF | kFlagAF | kFlagPF;
  for (int k = 0; k < 4; ++k)
    for (int size : {16, 32}) {
      g.form(names[k], fmt("%s,%s", rn(size), rn(size)), [=](B& b) {
        b.op16(size);
        b.code({0x0F, opr[k]});
        int r = b.reg(size);
        b.modrm(r, b.rm(size, false));
      }, u);
      // Memory with a register bit offset: the offset (signed) may address
      // below or beyond the operand; EA is window+32, offsets -256..255.
      g.form(names[k], fmt("%s,%s", mn_(size), rn(size)), [=](B& b) {
        b.op16(size);
        b.code({0x0F, opr[k]});
        int r = b.pick_reg(size);
        b.used |= bit(r);
        b.set(r, size, static_cast<uint32_t>(static_cast<int32_t>(b.rng.below(512)) - 256));
        b.window(64);
        b.modrm(r, b.mem_at(32, 0));
      }, u);
      for (bool mem : {false, true})
        g.form(names[k], fmt("%s,imm8", rmn(size, mem)), [=](B& b) {
          b.op16(size);
          b.code({0x0F, 0xBA});
          b.modrm(4 + k, b.rm(size, mem));
          b.imm(1, b.rng.chance(70) ? b.rng.below(size) : b.rng.below(256));
        }, u);
    }
  for (int k = 0; k < 2; ++k)
    for (int size : {16, 32})
      for (bool mem : {false, true})
        g.form(k ? "bsr" : "bsf", fmt("%s,%s", rn(size), rmn(size, mem)), [=](B& b) {
          b.op16(size);
          b.code({0x0F, k ? 0xBD : 0xBC});
          int r = b.reg(size);
          RM m = b.rm(size, mem);
          if (b.rng.chance(20)) mem ? b.mem_set(m.off, size / 8, 0) : b.set(m.reg, size, 0);
          b.modrm(r, m);
          b.aux = static_cast<uint64_t>(r) << 32 | b.operand_value(m, size);
        }, kStatusFlags & ~kFlagZF, [](B& b) {
          if (static_cast<uint32_t>(b.aux) == 0) b.v.undef_gprs = static_cast<uint8_t>(bit(static_cast<int>(b.aux >> 32)));
        });
  g.form("bswap", "r32", [](B& b) {
    int r = b.reg(32);
    b.code({0x0F, 0xC8 + r});
  }, 0);
}

void gen_xchg(Group& g) {
  for (int size : {8, 16, 32}) {
    int w = size > 8;
    for (bool mem : {false, true}) {
      g.form("xchg", fmt("%s,%s", rmn(size, mem), rn(size)), [=](B& b) {
        b.op16(size);
        b.code({0x86 + w});
        int r = b.reg(size);
        b.modrm(r, b.rm(size, mem));
      }, 0);
      g.form("xadd", fmt("%s,%s", rmn(size, mem), rn(size)), [=](B& b) {
        b.op16(size);
        b.code({0x0F, 0xC0 + w});
        int r = b.reg(size);
        b.modrm(r, b.rm(size, mem));
      }, 0);
      g.form("cmpxchg", fmt("%s,%s", rmn(size, mem), rn(size)), [=](B& b) {
        b.op16(size);
        b.code({0x0F, 0xB0 + w});
        b.set(kEax, size, b.val(size));
        b.used |= kAvoidEax;
        int r = b.reg(size);
        RM m = b.rm(size, mem, kAvoidEax);
        b.modrm(r, m);
        if (b.rng.chance(50)) b.set(kEax, size, b.operand_value(m, size));
      }, 0);
    }
    if (size > 8)
      g.form("xchg", fmt("%s,%s", accn(size), rn(size)), [=](B& b) {
        b.op16(size);
        int r;
        do r = b.pick_reg(32); while (r == kEax);
        b.code({0x90 + r});
      }, 0);
  }
  for (bool lock : {false, true})
    g.form("cmpxchg8b", lock ? "lock,m64" : "m64", [=](B& b) {
      if (lock) b.code({0xF0});
      b.code({0x0F, 0xC7});
      RM m = b.mem_operand(8, 0xF);
      b.modrm(1, m);
      uint64_t mv = b.rng.chance(30) ? b.val64() : b.mem_get(m.off, 8);
      b.mem_set(m.off, 8, mv);
      if (b.rng.chance(50)) {
        b.v.in.gpr[kEax] = static_cast<uint32_t>(mv);
        b.v.in.gpr[kEdx] = static_cast<uint32_t>(mv >> 32);
      } else if (b.rng.chance(50)) {
        b.v.in.gpr[kEax] = static_cast<uint32_t>(mv);
      }
    }, 0);
  // LOCK-prefixed read-modify-write forms (same results as without LOCK).
  g.form("add", "lock,m32,r32", [](B& b) {
    b.code({0xF0, 0x01});
    int r = b.reg(32);
    b.modrm(r, b.rm(32, true));
  }, 0);
  g.form("xadd", "lock,m32,r32", [](B& b) {
    b.code({0xF0, 0x0F, 0xC1});
    int r = b.reg(32);
    b.modrm(r, b.rm(32, true));
  }, 0);
  g.form("cmpxchg", "lock,m32,r32", [](B& b) {
    b.code({0xF0, 0x0F, 0xB1});
    b.used |= kAvoidEax;
    int r = b.reg(32);
    RM m = b.rm(32, true, kAvoidEax);
    b.modrm(r, m);
    if (b.rng.chance(50)) b.set(kEax, 32, b.operand_value(m, 32));
  }, 0);
  g.form("bts", "lock,m32,imm8", [](B& b) {
    b.code({0xF0, 0x0F, 0xBA});
    b.modrm(5, b.rm(32, true));
    b.imm(1, b.rng.below(32));
  }, kFlagOF | kFlagSF | kFlagAF | kFlagPF);
  g.form("dec", "lock,m16", [](B& b) {
    b.code({0xF0, 0x66, 0xFF});
    b.modrm(1, b.rm(16, true));
  }, 0);
}

void gen_move(Group& g) {
  for (int size : {8, 16, 32}) {
    int w = size > 8;
    for (bool mem : {false, true}) {
      g.form("mov", fmt("%s,%s", rmn(size, mem), rn(size)), [=](B& b) {
        b.op16(size);
        b.code({0x88 + w});
        int r = b.reg(size);
        b.modrm(r, b.rm(size, mem));
      }, 0);
      g.form("mov", fmt("%s,%s%s", rn(size), rmn(size, mem), mem ? "" : ".r"), [=](B& b) {
        b.op16(size);
        b.code({0x8A + w});
        int r = b.reg(size);
        b.modrm(r, b.rm(size, mem));
      }, 0);
      g.form("mov", fmt("%s,imm%d", rmn(size, mem), size), [=](B& b) {
        b.op16(size);
        b.code({0xC6 + w});
        b.modrm(0, b.rm(size, mem));
        b.imm(size / 8, b.val(size));
      }, 0);
    }
    g.form("mov", fmt("%s,imm%d.o", rn(size), size), [=](B& b) {
      b.op16(size);
      int r = b.pick_reg(size);
      b.code({(size == 8 ? 0xB0 : 0xB8) + r});
      b.imm(size / 8, b.val(size));
    }, 0);
  }
  const struct { const char* n; int opc, dsize, ssize; } ext[] = {
      {"movzx", 0xB6, 16, 8}, {"movzx", 0xB6, 32, 8}, {"movzx", 0xB7, 32, 16},
      {"movsx", 0xBE, 16, 8}, {"movsx", 0xBE, 32, 8}, {"movsx", 0xBF, 32, 16}};
  for (auto& x : ext)
    for (bool mem : {false, true})
      g.form(x.n, fmt("%s,%s", rn(x.dsize), rmn(x.ssize, mem)), [=](B& b) {
        b.op16(x.dsize);
        b.code({0x0F, x.opc});
        int r = b.reg(x.dsize);
        b.modrm(r, b.rm(x.ssize, mem));
      }, 0);
  // LEA with 32-bit addressing: any ModRM/SIB form except mod=00 rm=101 (RIP-relative
  // in 64-bit mode) and base=ESP. Registers hold arbitrary values: no memory access.
  for (int size : {16, 32})
    for (bool sib : {false, true})
      g.form("lea", fmt("%s,%s", rn(size), sib ? "m.sib" : "m"), [=](B& b) {
        b.op16(size);
        b.code({0x8D});
        int r = b.pick_reg(32);
        int mod, rmf;
        do {
          mod = static_cast<int>(b.rng.below(3));
          rmf = sib ? 4 : static_cast<int>(b.rng.below(8));
        } while (!sib && (rmf == 4 || (mod == 0 && rmf == 5)));
        b.code({mod << 6 | r << 3 | rmf});
        bool nobase = false;
        if (sib) {
          int base, index = static_cast<int>(b.rng.below(8));
          do base = static_cast<int>(b.rng.below(8)); while (base == kEsp);
          nobase = mod == 0 && base == 5;
          b.code({static_cast<int>(b.rng.below(4)) << 6 | index << 3 | base});
        }
        if (mod == 1) b.imm(1, b.val(8));
        if (mod == 2 || nobase) b.imm(4, b.val(32));
      }, 0);
  g.form("cbw", "", [](B& b) { b.code({0x66, 0x98}); }, 0);
  g.form("cwde", "", [](B& b) { b.code({0x98}); }, 0);
  g.form("cwd", "", [](B& b) { b.code({0x66, 0x99}); }, 0);
  g.form("cdq", "", [](B& b) { b.code({0x99}); }, 0);
  g.form("xlat", "m8", [](B& b) {
    b.code({0xD7});
    b.window(256);
    b.v.in.gpr[kEbx] = b.v.mem_addr;
  }, 0, nullptr, 50);
}

void gen_cond(Group& g) {
  for (int cc = 0; cc < 16; ++cc) {
    for (bool mem : {false, true}) {
      g.form(std::string("set") + kCc[cc], rmn(8, mem), [=](B& b) {
        b.code({0x0F, 0x90 + cc});
        b.modrm(0, b.rm(8, mem));
      }, 0, nullptr, 50);
      for (int size : {16, 32})
        g.form(std::string("cmov") + kCc[cc], fmt("%s,%s", rn(size), rmn(size, mem)), [=](B& b) {
          b.op16(size);
          b.code({0x0F, 0x40 + cc});
          int r = b.reg(size);
          b.modrm(r, b.rm(size, mem));
        }, 0, nullptr, 50);
    }
  }
}

void gen_flags(Group& g) {
  const struct { const char* n; int opc; } f[] = {{"lahf", 0x9F}, {"sahf", 0x9E}, {"clc", 0xF8}, {"stc", 0xF9},
                                                  {"cmc", 0xF5},  {"cld", 0xFC},  {"std", 0xFD}};
  for (auto& x : f)
    g.form(x.n, "", [=](B& b) {
      b.code({x.opc});
      if (b.rng.chance(50)) b.v.in.eflags |= kFlagDF;
    }, 0, nullptr, 50);
}

void gen_string(Group& g) {
  const struct { const char* n; int opc; bool src, dst, cmp; } s[] = {
      {"movs", 0xA4, true, true, false}, {"stos", 0xAA, false, true, false}, {"lods", 0xAC, true, false, false},
      {"cmps", 0xA6, true, true, true},  {"scas", 0xAE, false, true, true}};
  const char sfx[] = {'b', 'w', 'd'};
  for (auto& x : s)
    for (int si = 0; si < 3; ++si)
      for (int rep = 0; rep < (x.cmp ? 3 : 2); ++rep) {  // 0 none, 1 F3, 2 F2
        int size = 8 << si, sz = size / 8;
        const char* pfx = rep == 0 ? "" : rep == 1 ? (x.cmp ? "repe," : "rep,") : "repne,";
        g.form(fmt("%s%c", x.n, sfx[si]), fmt("%s%s", pfx, accn(size)), [=, &x](B& b) {
          if (rep) b.code({rep == 1 ? 0xF3 : 0xF2});
          b.op16(size);
          b.code({x.opc + (size > 8)});
          bool df = b.rng.chance(50);
          if (df) b.v.in.eflags |= kFlagDF;
          const unsigned win = 64;
          b.window(win);
          unsigned n = 1;
          if (rep) {
            n = b.rng.chance(10) ? 0 : 1 + b.rng.below(8);
            b.v.in.gpr[kEcx] = n;
          }
          unsigned span = std::max(n, 1u) * sz;
          auto start = [&]() -> uint32_t {
            uint32_t lo = df ? span - sz : 0, hi = df ? win - sz : win - span;
            return lo + b.rng.below(hi - lo + 1);
          };
          uint32_t so = start(), dof = start();
          b.v.in.gpr[kEsi] = b.v.mem_addr + so;
          b.v.in.gpr[kEdi] = b.v.mem_addr + dof;
          b.set(kEax, size, b.val(size));
          if (x.cmp && n > 0) {
            // Make runs of equal elements so REPE/REPNE stop at varied places.
            int step = df ? -sz : sz;
            unsigned diff = b.rng.below(n + 2);  // element index that differs (>= n: none)
            for (unsigned i = 0; i < n; ++i) {
              uint32_t d = static_cast<uint32_t>(static_cast<int>(dof) + step * static_cast<int>(i));
              uint32_t sv = x.src ? static_cast<uint32_t>(b.mem_get(static_cast<uint32_t>(static_cast<int>(so) + step * static_cast<int>(i)), sz))
                                  : b.get(kEax, size);
              bool eq = rep == 2 ? (i == diff) : (i != diff);
              if (b.rng.chance(80)) b.mem_set(d, sz, eq ? sv : sv ^ (1u << b.rng.below(size)));
            }
          }
        }, 0);
      }
}

// ---------------------------------------------------------------------------
// x87.

Float80 f80(uint16_t se, uint64_t m) { return Float80{se, m}; }

Float80 from_double_bits(uint64_t bits) {
  uint16_t sign = static_cast<uint16_t>((bits >> 63) << 15);
  int exp = static_cast<int>((bits >> 52) & 0x7FF);
  uint64_t frac = bits & ((1ull << 52) - 1);
  if (exp == 0x7FF) return f80(sign | 0x7FFF, (1ull << 63) | (frac << 11));
  if (exp == 0) {
    if (frac == 0) return f80(sign, 0);
    int msb = 63 - __builtin_clzll(frac);
    return f80(static_cast<uint16_t>(sign | (msb - 1074 + 16383)), frac << (63 - msb));
  }
  return f80(static_cast<uint16_t>(sign | (exp - 1023 + 16383)), (1ull << 63) | (frac << 11));
}

uint32_t rand_f32(B& b) {
  const uint32_t e[] = {0,          0x80000000, 0x7F800000, 0xFF800000, 0x7FC00000, 0xFFC00000,
                        0x7FA00000, 0x00000001, 0x807FFFFF, 0x00800000, 0x7F7FFFFF, 0x3F800000,
                        0xBF800000, 0x3EFFFFFF, 0x4B000000, 0x4F000000, 0xCF000000, 0x3FC00000};
  switch (b.rng.below(6)) {
    case 0: return e[b.rng.below(sizeof e / sizeof e[0])];
    case 1: return b.rng.u32();
    default:
      return (b.rng.u32() & 0x80000000) | ((127 + b.rng.below(64) - 32) << 23) | (b.rng.u32() & 0x7FFFFF);
  }
}

uint64_t rand_f64(B& b) {
  const uint64_t e[] = {0,
                        0x8000000000000000ull,
                        0x7FF0000000000000ull,
                        0xFFF0000000000000ull,
                        0x7FF8000000000000ull,
                        0x7FF4000000000000ull,
                        0x0000000000000001ull,
                        0x000FFFFFFFFFFFFFull,
                        0x0010000000000000ull,
                        0x7FEFFFFFFFFFFFFFull,
                        0x3FF0000000000000ull,
                        0xBFF0000000000000ull,
                        0x3FE0000000000000ull,
                        0x43E0000000000000ull,
                        0x41E0000000000000ull,
                        0x40E0000000000000ull,
                        0x3FF8000000000000ull};
  switch (b.rng.below(6)) {
    case 0: return e[b.rng.below(sizeof e / sizeof e[0])];
    case 1: return b.rng.next();
    default:
      return (b.rng.next() & 0x8000000000000000ull) | (uint64_t{1023 + b.rng.below(140) - 70} << 52) |
             (b.rng.next() & 0xFFFFFFFFFFFFFull);
  }
}

Float80 rand_f80(B& b) {
  const Float80 e[] = {
      {0x0000, 0},                     {0x8000, 0},
      {0x7FFF, 0x8000000000000000ull}, {0xFFFF, 0x8000000000000000ull},
      {0x7FFF, 0xC000000000000000ull}, {0xFFFF, 0xC000000000000000ull},
      {0x7FFF, 0x8000000000000001ull}, {0xFFFF, 0xA000000000000000ull},
      {0x0000, 0x0000000000000001ull}, {0x8000, 0x7FFFFFFFFFFFFFFFull},
      {0x0000, 0x8000000000000000ull}, {0x0001, 0x8000000000000000ull},
      {0x7FFE, 0xFFFFFFFFFFFFFFFFull}, {0xFFFE, 0xFFFFFFFFFFFFFFFFull},
      {0x3FFF, 0x8000000000000000ull}, {0xBFFF, 0x8000000000000000ull},
      {0x4000, 0xC90FDAA22168C235ull}, {0x3FFE, 0x8000000000000000ull},
      {0x403E, 0x8000000000000000ull}, {0xC03E, 0x8000000000000000ull},
      {0x403E, 0xFFFFFFFFFFFFFFFFull}, {0x401D, 0x8000000000000000ull},
      {0x3FFF, 0x4000000000000000ull}, {0x7FFF, 0x0000000000000000ull},
      {0x400E, 0x8000000000000000ull}, {0xC00E, 0x8000000000000000ull},
      {0x400D, 0xFFFE000000000000ull}, {0x3FFD, 0xC000000000000000ull},
      {0x3FFF, 0xC000000000000000ull}, {0xBFFE, 0xC000000000000000ull},
      {0x0000, 0x0000000000000400ull}, {0x3C01, 0x8000000000000000ull},
  };
  switch (b.rng.below(10)) {
    case 0:
    case 1: return e[b.rng.below(sizeof e / sizeof e[0])];
    case 2: return from_double_bits(rand_f64(b));
    case 3: {  // small integer
      int32_t i = static_cast<int32_t>(b.rng.below(2001)) - 1000;
      return from_double_bits(std::bit_cast<uint64_t>(static_cast<double>(i)));
    }
    case 4: return f80(static_cast<uint16_t>(b.rng.u32()), b.rng.next() | (1ull << 63));
    default:
      return f80(static_cast<uint16_t>((b.rng.u32() & 0x8000) | (0x3FFF + b.rng.below(130) - 65)),
                 b.rng.next() | (1ull << 63));
  }
}

uint16_t rand_fcw(B& b) {
  unsigned masks = b.rng.chance(90) ? 0x3F : b.rng.below(64);
  unsigned pc = b.rng.chance(60) ? 3 : (b.rng.chance(50) ? 0 : 2);
  return static_cast<uint16_t>(0x40 | masks | pc << 8 | b.rng.below(4) << 10);
}

void fix_tags(FpuState& f, unsigned depth) {
  uint16_t ftw = 0;
  for (unsigned i = 0; i < 8; ++i) {
    unsigned t = i < depth ? host::tag_of(f.st[i]) : 3;
    ftw |= static_cast<uint16_t>(t << (2 * ((f.top() + i) & 7)));
  }
  f.ftw = ftw;
}

unsigned depth_of(const FpuState& f) {
  unsigned d = 0;
  while (d < 8 && f.tag_of_st(d) != 3) ++d;
  return d;
}

// Random x87 state with ST(0)..ST(k-1) valid; k >= need except sometimes (stack underflow).
void fpu_init(B& b, unsigned need) {
  FpuState& f = b.v.fpu_in;
  b.v.has_fpu = true;
  f.fcw = rand_fcw(b);
  unsigned k;
  if (need > 0 && b.rng.chance(5)) k = b.rng.below(need);
  else if (b.rng.chance(15)) k = 8;
  else k = need + b.rng.below(9 - need);
  unsigned top = b.rng.below(8);
  for (unsigned i = 0; i < 8; ++i) f.st[i] = i < k || b.rng.chance(50) ? rand_f80(b) : Float80{};
  unsigned masked = f.fcw & 0x3F;
  unsigned flags = b.rng.chance(30) ? (b.rng.below(64) & masked) : 0;
  f.fsw = static_cast<uint16_t>(top << 11 | (b.rng.u32() & 0x4700) | flags);
  fix_tags(f, k);
  b.v.fsw_undef = 0x4500;
}

enum MT { kF32, kF64, kF80, kI16, kI32, kI64 };
int mt_bytes(MT t) {
  const int n[] = {4, 8, 10, 2, 4, 8};
  return n[t];
}

void mem_value(B& b, uint32_t off, MT t) {
  switch (t) {
    case kF32: b.mem_set(off, 4, rand_f32(b)); break;
    case kF64: b.mem_set(off, 8, rand_f64(b)); break;
    case kF80: {
      Float80 x = rand_f80(b);
      b.mem_set(off, 8, x.mant);
      b.mem_set(off + 8, 2, x.se);
      break;
    }
    case kI16: b.mem_set(off, 2, b.val(16)); break;
    case kI32: b.mem_set(off, 4, b.val(32)); break;
    case kI64: b.mem_set(off, 8, b.val64()); break;
  }
}

uint16_t fsw_undef_for(const std::string& mn) {
  static const char* all_defined[] = {"fcom",  "fcomp",  "fcompp", "fucom",  "fucomp", "fucompp",
                                      "ficom", "ficomp", "ftst",   "fxam",   "fprem",  "fprem1",
                                      "fcomi", "fcomip", "fucomi", "fucomip", "fnsave", "fninit",
                                      "frstor", "fldenv", "fwait"};
  for (auto* x : all_defined)
    if (mn == x) return 0;
  if (mn == "fptan" || mn == "fsin" || mn == "fcos" || mn == "fsincos") return kFswC0 | kFswC3;
  if (mn == "fldcw" || mn == "fnstcw" || mn == "fnstsw" || mn == "fnstenv" || mn == "fnclex" ||
      mn == "ffree" || mn == "fnop")
    return kFswC0 | kFswC1 | kFswC2 | kFswC3;
  return kFswC0 | kFswC2 | kFswC3;
}

bool is_approx(const std::string& mn) {
  return mn == "f2xm1" || mn == "fyl2x" || mn == "fyl2xp1" || mn == "fptan" || mn == "fpatan" ||
         mn == "fsin" || mn == "fcos" || mn == "fsincos";
}

// Writes a 32-bit protected-mode FPU environment (28 bytes) and optionally the
// 8 registers (80 more bytes, ST order) at off, from a random state.
void put_env(B& b, uint32_t off, bool regs) {
  FpuState s;
  s.fcw = static_cast<uint16_t>(rand_fcw(b) | (b.rng.chance(10) ? b.rng.u32() & 0xF0C0 : 0));
  unsigned k = b.rng.below(9);
  for (auto& x : s.st) x = rand_f80(b);
  unsigned top = b.rng.below(8);
  unsigned flags = b.rng.below(64);
  if (b.rng.chance(80)) flags &= s.fcw & 0x3F;
  uint16_t fsw = static_cast<uint16_t>(top << 11 | (b.rng.u32() & 0x4700) | flags);
  if (flags & ~s.fcw & 0x3F) fsw |= 0x8080;  // pending unmasked exception: ES and B
  s.fsw = fsw;
  fix_tags(s, k);
  if (b.rng.chance(10)) s.ftw = static_cast<uint16_t>(b.rng.u32());
  b.mem_set(off + 0, 2, s.fcw);
  b.mem_set(off + 4, 2, s.fsw);
  b.mem_set(off + 8, 2, s.ftw);
  if (regs)
    for (int i = 0; i < 8; ++i) {
      b.mem_set(off + 28 + 10 * i, 8, s.st[i].mant);
      b.mem_set(off + 36 + 10 * i, 2, s.st[i].se);
    }
}

void gen_x87(Group& g) {
  // Register-only forms: code bytes, stack depth needed. 'i' forms add i.
  auto reg_form = [&](const std::string& mn, const std::string& form, std::vector<int> bytes, bool sti,
                      unsigned need, const Fn& extra = nullptr, unsigned pct = 100) {
    g.form(mn, form, [=](B& b) {
      unsigned i = sti ? b.rng.below(8) : 0;
      for (size_t j = 0; j < bytes.size(); ++j)
        b.v.code.push_back(static_cast<uint8_t>(bytes[j] + (j + 1 == bytes.size() ? static_cast<int>(i) : 0)));
      fpu_init(b, std::max(need, sti ? i + 1 : 0u));
      if (extra) extra(b);
      b.v.fsw_undef = fsw_undef_for(mn);
      b.v.approx = is_approx(mn);
    }, 0, nullptr, pct);
  };
  auto mem_form = [&](const std::string& mn, const std::string& form, std::vector<int> opc, int digit, MT t,
                      bool load, unsigned need) {
    g.form(mn, form, [=](B& b) {
      for (int x : opc) b.v.code.push_back(static_cast<uint8_t>(x));
      RM m = b.mem_operand(mt_bytes(t));
      if (load) mem_value(b, m.off, t);
      b.modrm(digit, m);
      fpu_init(b, need);
      b.v.fsw_undef = fsw_undef_for(mn);
    }, 0);
  };
  // Loads.
  mem_form("fld", "m32", {0xD9}, 0, kF32, true, 0);
  mem_form("fld", "m64", {0xDD}, 0, kF64, true, 0);
  mem_form("fld", "m80", {0xDB}, 5, kF80, true, 0);
  mem_form("fild", "m16", {0xDF}, 0, kI16, true, 0);
  mem_form("fild", "m32", {0xDB}, 0, kI32, true, 0);
  mem_form("fild", "m64", {0xDF}, 5, kI64, true, 0);
  reg_form("fld", "st(i)", {0xD9, 0xC0}, true, 0);
  const char* consts[] = {"fld1", "fldl2t", "fldl2e", "fldpi", "fldlg2", "fldln2", "fldz"};
  for (int i = 0; i < 7; ++i) reg_form(consts[i], "", {0xD9, 0xE8 + i}, false, 0, nullptr, 50);
  // Stores.
  mem_form("fst", "m32", {0xD9}, 2, kF32, false, 1);
  mem_form("fstp", "m32", {0xD9}, 3, kF32, false, 1);
  mem_form("fst", "m64", {0xDD}, 2, kF64, false, 1);
  mem_form("fstp", "m64", {0xDD}, 3, kF64, false, 1);
  mem_form("fstp", "m80", {0xDB}, 7, kF80, false, 1);
  mem_form("fist", "m16", {0xDF}, 2, kI16, false, 1);
  mem_form("fistp", "m16", {0xDF}, 3, kI16, false, 1);
  mem_form("fist", "m32", {0xDB}, 2, kI32, false, 1);
  mem_form("fistp", "m32", {0xDB}, 3, kI32, false, 1);
  mem_form("fistp", "m64", {0xDF}, 7, kI64, false, 1);
  mem_form("fisttp", "m16", {0xDF}, 1, kI16, false, 1);
  mem_form("fisttp", "m32", {0xDB}, 1, kI32, false, 1);
  mem_form("fisttp", "m64", {0xDD}, 1, kI64, false, 1);
  // Packed BCD (18 digits + sign byte); only valid digit encodings (the SDM
  // leaves invalid ones undefined).
  g.form("fbld", "m80", [](B& b) {
    b.code({0xDF});
    RM m = b.mem_operand(10);
    b.modrm(4, m);
    unsigned ndig = b.rng.chance(20) ? 18 : 1 + b.rng.below(18);
    for (unsigned i = 0; i < 9; ++i) {
      unsigned lo = 2 * i < ndig ? b.rng.below(10) : 0, hi = 2 * i + 1 < ndig ? b.rng.below(10) : 0;
      b.v.mem_in[m.off + i] = static_cast<uint8_t>(hi << 4 | lo);
    }
    b.v.mem_in[m.off + 9] = b.rng.chance(50) ? 0x80 : 0x00;
    fpu_init(b, 0);
    b.v.fsw_undef = fsw_undef_for("fbld");
  }, 0);
  g.form("fbstp", "m80", [](B& b) {
    b.code({0xDF});
    RM m = b.mem_operand(10);
    b.modrm(6, m);
    fpu_init(b, 1);
    auto& f = b.v.fpu_in;
    unsigned d = depth_of(f);
    if (d > 0 && b.rng.chance(50)) {  // integers up to ~1e18 and a bit beyond
      f.st[0] = f80(static_cast<uint16_t>((b.rng.u32() & 0x8000) | (0x3FFF + b.rng.below(62))),
                    b.rng.next() | (1ull << 63));
      fix_tags(f, d);
    }
    b.v.fsw_undef = fsw_undef_for("fbstp");
  }, 0);
  reg_form("fst", "st(i)", {0xDD, 0xD0}, true, 1);
  reg_form("fstp", "st(i)", {0xDD, 0xD8}, true, 1);
  // Arithmetic.
  const char* ar[8] = {"fadd", "fmul", "fcom", "fcomp", "fsub", "fsubr", "fdiv", "fdivr"};
  const char* iar[8] = {"fiadd", "fimul", "ficom", "ficomp", "fisub", "fisubr", "fidiv", "fidivr"};
  for (int op = 0; op < 8; ++op) {
    mem_form(ar[op], "m32", {0xD8}, op, kF32, true, 1);
    mem_form(ar[op], "m64", {0xDC}, op, kF64, true, 1);
    mem_form(iar[op], "m32", {0xDA}, op, kI32, true, 1);
    mem_form(iar[op], "m16", {0xDE}, op, kI16, true, 1);
    reg_form(ar[op], "st0,st(i)", {0xD8, 0xC0 + op * 8}, true, 1);
  }
  // DC/DE register forms: reg field 4 is FSUBR, 5 FSUB, 6 FDIVR, 7 FDIV (SDM).
  const struct { int op; const char* n; const char* p; } rev[] = {
      {0, "fadd", "faddp"}, {1, "fmul", "fmulp"}, {4, "fsubr", "fsubrp"},
      {5, "fsub", "fsubp"}, {6, "fdivr", "fdivrp"}, {7, "fdiv", "fdivp"}};
  for (auto& x : rev) {
    reg_form(x.n, "st(i),st0", {0xDC, 0xC0 + x.op * 8}, true, 1);
    reg_form(x.p, "st(i),st0", {0xDE, 0xC0 + x.op * 8}, true, 1);
  }
  // Compares.
  reg_form("fcompp", "", {0xDE, 0xD9}, false, 2);
  reg_form("fucom", "st(i)", {0xDD, 0xE0}, true, 1);
  reg_form("fucomp", "st(i)", {0xDD, 0xE8}, true, 1);
  reg_form("fucompp", "", {0xDA, 0xE9}, false, 2);
  reg_form("fcomi", "st0,st(i)", {0xDB, 0xF0}, true, 1);
  reg_form("fucomi", "st0,st(i)", {0xDB, 0xE8}, true, 1);
  reg_form("fcomip", "st0,st(i)", {0xDF, 0xF0}, true, 1);
  reg_form("fucomip", "st0,st(i)", {0xDF, 0xE8}, true, 1);
  reg_form("ftst", "", {0xD9, 0xE4}, false, 1);
  reg_form("fxam", "", {0xD9, 0xE5}, false, 0);
  // Other arithmetic / transcendental (D9 E0..FF).
  auto small_st0 = [](B& b) {  // moderate arguments for transcendental functions
    if (b.rng.chance(70)) {
      auto& f = b.v.fpu_in;
      unsigned d = depth_of(f);
      if (d > 0) {
        f.st[0] = f80(static_cast<uint16_t>((b.rng.u32() & 0x8000) | (0x3FFF + b.rng.below(30) - 24)),
                      b.rng.next() | (1ull << 63));
        fix_tags(f, d);
      }
    }
  };
  auto small_int_st1 = [](B& b) {  // fscale: ST(1) a moderate integer
    auto& f = b.v.fpu_in;
    unsigned d = depth_of(f);
    if (d > 1 && b.rng.chance(60)) {
      int32_t i = static_cast<int32_t>(b.rng.below(200)) - 100;
      if (b.rng.chance(10)) i = b.rng.chance(50) ? 20000 : -20000;
      f.st[1] = from_double_bits(std::bit_cast<uint64_t>(static_cast<double>(i)));
      fix_tags(f, d);
    }
  };
  const struct { const char* n; int b; unsigned need; bool small; } un[] = {
      {"fchs", 0xE0, 1, false},    {"fabs", 0xE1, 1, false},   {"f2xm1", 0xF0, 1, true},
      {"fyl2x", 0xF1, 2, false},   {"fptan", 0xF2, 1, true},   {"fpatan", 0xF3, 2, false},
      {"fxtract", 0xF4, 1, false}, {"fprem1", 0xF5, 2, false}, {"fdecstp", 0xF6, 0, false},
      {"fincstp", 0xF7, 0, false}, {"fprem", 0xF8, 2, false},  {"fyl2xp1", 0xF9, 2, true},
      {"fsqrt", 0xFA, 1, false},   {"fsincos", 0xFB, 1, true}, {"frndint", 0xFC, 1, false},
      {"fscale", 0xFD, 2, false},  {"fsin", 0xFE, 1, true},    {"fcos", 0xFF, 1, true},
      {"fnop", 0xD0, 0, false}};
  for (auto& x : un)
    reg_form(x.n, "", {0xD9, x.b}, false, x.need,
             x.small ? Fn(small_st0) : std::string(x.n) == "fscale" ? Fn(small_int_st1) : Fn(nullptr));
  reg_form("fxch", "st(i)", {0xD9, 0xC8}, true, 1);
  reg_form("ffree", "st(i)", {0xDD, 0xC0}, true, 0, nullptr, 50);
  const char* fcm[8] = {"fcmovb", "fcmove", "fcmovbe", "fcmovu", "fcmovnb", "fcmovne", "fcmovnbe", "fcmovnu"};
  for (int k = 0; k < 8; ++k) reg_form(fcm[k], "st0,st(i)", {k < 4 ? 0xDA : 0xDB, 0xC0 + (k & 3) * 8}, true, 1, nullptr, 50);
  // Control.
  g.form("fldcw", "m16", [](B& b) {
    b.code({0xD9});
    RM m = b.mem_operand(2);
    b.modrm(5, m);
    fpu_init(b, 0);
    b.mem_set(m.off, 2, b.rng.chance(80) ? rand_fcw(b) : b.rng.u32() & 0xFFFF);
    b.v.fsw_undef = fsw_undef_for("fldcw");
  }, 0);
  g.form("fnstcw", "m16", [](B& b) {
    b.code({0xD9});
    b.modrm(7, b.mem_operand(2));
    fpu_init(b, 0);
    b.v.fsw_undef = fsw_undef_for("fnstcw");
  }, 0, nullptr, 50);
  g.form("fnstsw", "m16", [](B& b) {
    b.code({0xDD});
    b.modrm(7, b.mem_operand(2));
    fpu_init(b, 0);
    b.v.fsw_undef = fsw_undef_for("fnstsw");
  }, 0, nullptr, 50);
  reg_form("fnstsw", "ax", {0xDF, 0xE0}, false, 0, nullptr, 50);
  reg_form("fnclex", "", {0xDB, 0xE2}, false, 0, nullptr, 50);
  reg_form("fninit", "", {0xDB, 0xE3}, false, 0, nullptr, 50);
  // Environment / full state images (32-bit protected-mode format). The
  // instruction/operand pointer fields and the reserved upper halves of the
  // first three dwords are implementation-specific: listed in mi=.
  const std::vector<MemRange> env_ignore = {{2, 2}, {6, 2}, {10, 2}, {12, 16}};
  for (bool save : {false, true})
    for (bool full : {false, true})
      g.form(save ? (full ? "fnsave" : "fnstenv") : (full ? "frstor" : "fldenv"), full ? "m108" : "m28",
             [=](B& b) {
               b.code({full ? 0xDD : 0xD9});
               RM m = b.mem_operand(full ? 108 : 28, 0, full ? 112 : 32);
               b.modrm(save ? 6 : 4, m);
               fpu_init(b, 0);
               if (!save) put_env(b, m.off, full);
               if (save)
                 for (auto r : env_ignore) b.v.mem_ignore.push_back({m.off + r.offset, r.length});
               b.v.fsw_undef = fsw_undef_for(b.v.mnemonic);
             }, 0);
  // FWAIT with and without a pending unmasked exception (#MF).
  reg_form("fwait", "", {0x9B}, false, 0, [](B& b) {
    auto& f = b.v.fpu_in;
    if (b.rng.chance(50)) {
      f.fcw = static_cast<uint16_t>(f.fcw & ~0x3F);  // all unmasked
      f.fsw = static_cast<uint16_t>((f.fsw & ~0x3F) | (1u << b.rng.below(6)) | 0x8080);
    }
  }, 50);
}

// ---------------------------------------------------------------------------
// MMX (the Pentium II's set). The input is a random x87 state (random TOP,
// some registers empty, masked sticky flags only: nothing pending) whose
// registers hold the MMX operands: MMi is physical register i, whatever TOP
// is. The output shows the aliasing: TOP = 0, no register empty, written
// registers with sign/exponent all ones.

// An operand: mostly per-word special values (saturation, sign and
// carry boundaries for bytes, words and doublewords), else random.
uint64_t mmx_val(B& b) {
  if (b.rng.chance(25)) return b.val64();
  const uint16_t e[] = {0,      1,      0x7F,   0x80,   0xFF,   0x7FFF, 0x8000, 0xFFFF, 0x8080,
                        0x7F7F, 0x00FF, 0xFF00, 0x807F, 0x7F80, 0x0101, 0xFFFE, 0x8001, 0x4000};
  uint64_t x = 0;
  for (int w = 0; w < 4; ++w) {
    uint64_t word = b.rng.chance(45) ? e[b.rng.below(sizeof e / sizeof e[0])] : (b.rng.u32() & 0xFFFF);
    x |= word << (16 * w);
  }
  return x;
}

// A shift count: mostly around the lane widths, sometimes any 64-bit value.
uint64_t mmx_count(B& b) {
  if (b.rng.chance(70)) return b.rng.below(72);
  return b.rng.chance(50) ? b.rng.next() : (b.rng.next() >> b.rng.below(64));
}

void mmx_init(B& b) {
  FpuState& f = b.v.fpu_in;
  b.v.has_fpu = true;
  f.fcw = rand_fcw(b);
  const unsigned top = b.rng.below(8);
  for (auto& st : f.st) {
    const unsigned k = b.rng.below(4);
    const uint16_t se = k == 0 ? 0xFFFF : k == 1 ? static_cast<uint16_t>(b.rng.u32()) : k == 2 ? 0x3FFF : 0;
    st = Float80{se, mmx_val(b)};
  }
  const unsigned masked = f.fcw & 0x3F;
  const unsigned flags = b.rng.chance(30) ? (b.rng.below(64) & masked) : 0;
  f.fsw = static_cast<uint16_t>(top << 11 | (b.rng.u32() & 0x4700) | flags);
  uint16_t ftw = 0;
  for (unsigned i = 0; i < 8; ++i) {
    const unsigned t = b.rng.chance(30) ? 3 : host::tag_of(f.st[i]);
    ftw |= static_cast<uint16_t>(t << (2 * ((top + i) & 7)));
  }
  f.ftw = ftw;
  b.v.fsw_undef = 0;
}

// Tags of the non-empty registers from their (final) contents.
void mmx_tags(B& b) {
  FpuState& f = b.v.fpu_in;
  uint16_t ftw = 0;
  for (unsigned i = 0; i < 8; ++i) {
    const unsigned p = (f.top() + i) & 7;
    const unsigned t = ((f.ftw >> (2 * p)) & 3) == 3 ? 3 : host::tag_of(f.st[i]);
    ftw |= static_cast<uint16_t>(t << (2 * p));
  }
  f.ftw = ftw;
}

// MMi (physical register i) of the input state.
Float80& mmx_reg(B& b, unsigned i) {
  FpuState& f = b.v.fpu_in;
  return f.st[(i - f.top()) & 7];
}

void gen_mmx(Group& g) {
  // op mm, mm/m64 (the source is a shift count for the shifts).
  auto pq = [&](const char* mn, int opc, bool count) {
    for (bool mem : {false, true}) {
      g.form(mn, mem ? "mm,m64" : "mm,mm", [=](B& b) {
        mmx_init(b);
        const unsigned d = b.rng.below(8);
        mmx_reg(b, d).mant = mmx_val(b);
        b.code({0x0F, opc});
        if (mem) {
          RM m = b.mem_operand(8);
          b.mem_set(m.off, 8, count ? mmx_count(b) : mmx_val(b));
          b.modrm(static_cast<int>(d), m);
        } else {
          RM m;
          m.reg = static_cast<int>(b.rng.below(8));
          if (m.reg != static_cast<int>(d)) mmx_reg(b, static_cast<unsigned>(m.reg)).mant = count ? mmx_count(b) : mmx_val(b);
          b.modrm(static_cast<int>(d), m);
        }
        mmx_tags(b);
        mmx_tags(b);
    }, 0);
    }
  };
  struct P { const char* mn; int opc; };
  const P arith[] = {
      {"paddb", 0xFC},     {"paddw", 0xFD},     {"paddd", 0xFE},     {"paddsb", 0xEC},
      {"paddsw", 0xED},    {"paddusb", 0xDC},   {"paddusw", 0xDD},   {"psubb", 0xF8},
      {"psubw", 0xF9},     {"psubd", 0xFA},     {"psubsb", 0xE8},    {"psubsw", 0xE9},
      {"psubusb", 0xD8},   {"psubusw", 0xD9},   {"pmullw", 0xD5},    {"pmulhw", 0xE5},
      {"pmaddwd", 0xF5},   {"pcmpeqb", 0x74},   {"pcmpeqw", 0x75},   {"pcmpeqd", 0x76},
      {"pcmpgtb", 0x64},   {"pcmpgtw", 0x65},   {"pcmpgtd", 0x66},   {"packsswb", 0x63},
      {"packssdw", 0x6B},  {"packuswb", 0x67},  {"punpcklbw", 0x60}, {"punpcklwd", 0x61},
      {"punpckldq", 0x62}, {"punpckhbw", 0x68}, {"punpckhwd", 0x69}, {"punpckhdq", 0x6A},
      {"pand", 0xDB},      {"pandn", 0xDF},     {"por", 0xEB},       {"pxor", 0xEF},
  };
  for (const P& p : arith) pq(p.mn, p.opc, false);
  const P shifts[] = {{"psllw", 0xF1}, {"pslld", 0xF2}, {"psllq", 0xF3}, {"psrlw", 0xD1},
                      {"psrld", 0xD2}, {"psrlq", 0xD3}, {"psraw", 0xE1}, {"psrad", 0xE2}};
  for (const P& p : shifts) pq(p.mn, p.opc, true);
  // Shifts by an immediate: 0F 71/72/73 /digit, register forms only.
  struct I { const char* mn; int opc, digit; };
  const I imms[] = {{"psrlw", 0x71, 2}, {"psraw", 0x71, 4}, {"psllw", 0x71, 6},
                    {"psrld", 0x72, 2}, {"psrad", 0x72, 4}, {"pslld", 0x72, 6},
                    {"psrlq", 0x73, 2}, {"psllq", 0x73, 6}};
  for (const I& p : imms) {
    g.form(p.mn, "mm,imm8", [=](B& b) {
      mmx_init(b);
      const unsigned r = b.rng.below(8);
      mmx_reg(b, r).mant = mmx_val(b);
      b.code({0x0F, p.opc, 0xC0 | p.digit << 3 | static_cast<int>(r)});
      b.imm(1, b.rng.chance(75) ? b.rng.below(72) : b.rng.u32() & 0xFF);
      mmx_tags(b);
    }, 0);
  }
  // Moves.
  for (bool mem : {false, true}) {
    g.form("movd", mem ? "mm,m32" : "mm,r32", [=](B& b) {
      mmx_init(b);
      b.code({0x0F, 0x6E});
      RM m = mem ? b.mem_operand(4) : b.rm(32, false);
      b.modrm(static_cast<int>(b.rng.below(8)), m);
      mmx_tags(b);
    }, 0);
    g.form("movd", mem ? "m32,mm" : "r32,mm", [=](B& b) {
      mmx_init(b);
      b.code({0x0F, 0x7E});
      RM m = mem ? b.mem_operand(4) : b.rm(32, false);
      b.modrm(static_cast<int>(b.rng.below(8)), m);
      mmx_tags(b);
    }, 0);
    g.form("movq", mem ? "mm,m64" : "mm,mm", [=](B& b) {
      mmx_init(b);
      b.code({0x0F, 0x6F});
      RM m;
      if (mem) m = b.mem_operand(8);
      else m.reg = static_cast<int>(b.rng.below(8));
      b.modrm(static_cast<int>(b.rng.below(8)), m);
      mmx_tags(b);
    }, 0);
    g.form("movq", mem ? "m64,mm" : "mm,mm.r", [=](B& b) {
      mmx_init(b);
      b.code({0x0F, 0x7F});
      RM m;
      if (mem) m = b.mem_operand(8);
      else m.reg = static_cast<int>(b.rng.below(8));
      b.modrm(static_cast<int>(b.rng.below(8)), m);
      mmx_tags(b);
    }, 0);
  }
  g.form("emms", "", [](B& b) {
    mmx_init(b);
    b.code({0x0F, 0x77});
    mmx_tags(b);
  }, 0);
}

}  // namespace

bool generate_group(const std::string& group, unsigned count, uint64_t seed, std::string& text,
                    size_t& vectors, std::string* err) {
  std::string e;
  if (!host::init(&e)) {
    if (err) *err = e;
    return false;
  }
  Group g(group, count, seed);
  if (group == "alu") gen_alu(g);
  else if (group == "muldiv") gen_muldiv(g);
  else if (group == "shift") gen_shift(g);
  else if (group == "bit") gen_bit(g);
  else if (group == "xchg") gen_xchg(g);
  else if (group == "move") gen_move(g);
  else if (group == "cond") gen_cond(g);
  else if (group == "flags") gen_flags(g);
  else if (group == "string") gen_string(g);
  else if (group == "x87") gen_x87(g);
  else if (group == "mmx") gen_mmx(g);
  else {
    if (err) *err = "unknown group " + group;
    return false;
  }
  if (!g.ok) {
    if (err) *err = group + ": " + g.err;
    return false;
  }
  FileHeader h;
  h.version = 1;
  h.group = group;
  h.count = g.n;
  h.seed = seed;
  h.host = host::host_description();
  text = "# popek oracle vectors, generated by popek-oracle-gen on the host CPU. Format: tools/oracle/README.md\n";
  text = format_header_line(h) + "\n" + text + g.text;
  vectors = g.n;
  return true;
}

}  // namespace popek::oracle::gen
