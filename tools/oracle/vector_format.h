// popek oracle test vectors: data structures, parser and writer.
//
// Self-contained (C++20 standard library only). The text format is described in
// tools/oracle/README.md; in short, one vector per line:
//
//   <mnemonic> <form> c=<code> r=<8 gprs> f=<eflags> R=<8 gprs> F=<eflags> u=<mask>
//       [ur=<mask>] [a=<addr> m=<mem in> M=<mem out> [mi=<off>+<len>,...]]
//       [x=<fpu in> X=<fpu out> xu=<mask>] [approx] [fault=DE|MF]
//
// Lines starting with '#' are comments; the line starting with "#popek-oracle"
// is the header of a file.
#pragma once

#include <array>
#include <cstdint>
#include <cstdio>
#include <fstream>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

namespace popek::oracle {

// GPR order is the x86 register encoding order.
enum Gpr : int { kEax = 0, kEcx, kEdx, kEbx, kEsp, kEbp, kEsi, kEdi };

// EFLAGS bits recorded in vectors (CF PF AF ZF SF DF OF plus the always-1 bit 1).
inline constexpr uint32_t kFlagCF = 0x001, kFlagPF = 0x004, kFlagAF = 0x010,
                          kFlagZF = 0x040, kFlagSF = 0x080, kFlagDF = 0x400,
                          kFlagOF = 0x800;
inline constexpr uint32_t kStatusFlags = 0x8D5;      // CF PF AF ZF SF OF
inline constexpr uint32_t kRecordedFlags = 0xCD7;    // status | DF | bit 1

// x87 status word condition bits (for FpuState::fsw and Vector::fsw_undef).
inline constexpr uint16_t kFswC0 = 0x0100, kFswC1 = 0x0200, kFswC2 = 0x0400,
                          kFswC3 = 0x4000;

enum class Fault { None, DE, MF };

// One 80-bit extended-precision value: sign+exponent (bit 15 = sign) and the
// 64-bit significand including the explicit integer bit (bit 63).
struct Float80 {
  uint16_t se = 0;
  uint64_t mant = 0;
  bool operator==(const Float80&) const = default;
};

struct FpuState {
  uint16_t fcw = 0x037F;
  uint16_t fsw = 0;         // includes TOP in bits 11..13
  uint16_t ftw = 0xFFFF;    // full 2-bit tags, indexed by PHYSICAL register (as FNSTENV)
  std::array<Float80, 8> st{};  // ST(0)..ST(7), i.e. physical register (TOP+i)&7
  unsigned top() const { return (fsw >> 11) & 7; }
  // Tag of ST(i): 0 valid, 1 zero, 2 special, 3 empty.
  unsigned tag_of_st(unsigned i) const { return (ftw >> (2 * ((top() + i) & 7))) & 3; }
  bool operator==(const FpuState&) const = default;
};

struct CpuState {
  std::array<uint32_t, 8> gpr{};  // eax ecx edx ebx esp ebp esi edi; esp is always 0, ignore it
  uint32_t eflags = 0x2;          // only kRecordedFlags bits
  bool operator==(const CpuState&) const = default;
};

struct MemRange {
  uint32_t offset = 0;  // from Vector::mem_addr
  uint32_t length = 0;
  bool operator==(const MemRange&) const = default;
};

struct Vector {
  std::string group;      // file's group, e.g. "alu" (not on the line; from the header)
  std::string mnemonic;   // e.g. "add"
  std::string form;       // e.g. "m32,imm8" (no spaces)
  std::vector<uint8_t> code;  // instruction bytes, valid as-is in 32-bit protected mode
  CpuState in, out;
  uint32_t undef_flags = 0;   // EFLAGS bits the SDM leaves undefined for this vector
  uint8_t undef_gprs = 0;     // bit i set: out.gpr[i] is architecturally undefined
  // Memory window (has_mem): bytes at [mem_addr, mem_addr + mem_in.size()).
  bool has_mem = false;
  uint32_t mem_addr = 0;
  std::vector<uint8_t> mem_in, mem_out;
  std::vector<MemRange> mem_ignore;  // output bytes that are implementation-specific
  // x87 state (has_fpu). Without it the FPU is in its FNINIT state and unused.
  bool has_fpu = false;
  FpuState fpu_in, fpu_out;
  uint16_t fsw_undef = 0;  // FSW bits (C0..C3) the SDM leaves undefined
  bool approx = false;     // transcendental: host result, SDM allows ~1 ulp difference
  Fault fault = Fault::None;  // expected exception; then out/mem_out/fpu_out == inputs
  size_t line = 0;            // 1-based line in the file (set by the parser)
};

struct FileHeader {
  int version = 0;
  std::string group;
  std::string host;   // cpuid vendor/family/model/stepping/brand
  uint64_t seed = 0;
  size_t count = 0;   // number of vectors in the file
};

struct VectorFile {
  FileHeader header;
  std::vector<Vector> vectors;
};

// ---------------------------------------------------------------------------
// Implementation details.
namespace detail {

inline int hexval(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

inline bool parse_hex(std::string_view s, uint64_t& out) {
  if (s.empty() || s.size() > 16) return false;
  uint64_t v = 0;
  for (char c : s) {
    int h = hexval(c);
    if (h < 0) return false;
    v = (v << 4) | static_cast<uint64_t>(h);
  }
  out = v;
  return true;
}

template <typename T>
inline bool parse_hex_t(std::string_view s, T& out) {
  uint64_t v;
  if (!parse_hex(s, v)) return false;
  if constexpr (sizeof(T) < 8)
    if ((v >> (8 * sizeof(T))) != 0) return false;
  out = static_cast<T>(v);
  return true;
}

inline bool parse_bytes(std::string_view s, std::vector<uint8_t>& out) {
  if (s.size() % 2) return false;
  out.clear();
  out.reserve(s.size() / 2);
  for (size_t i = 0; i < s.size(); i += 2) {
    int a = hexval(s[i]), b = hexval(s[i + 1]);
    if (a < 0 || b < 0) return false;
    out.push_back(static_cast<uint8_t>(a * 16 + b));
  }
  return true;
}

inline std::vector<std::string_view> split(std::string_view s, char sep) {
  std::vector<std::string_view> r;
  size_t p = 0;
  while (true) {
    size_t q = s.find(sep, p);
    if (q == std::string_view::npos) {
      r.push_back(s.substr(p));
      return r;
    }
    r.push_back(s.substr(p, q - p));
    p = q + 1;
  }
}

inline bool parse_cpu(std::string_view regs, std::string_view flags, CpuState& st) {
  auto parts = split(regs, ',');
  if (parts.size() != 8) return false;
  for (int i = 0; i < 8; ++i)
    if (!parse_hex_t(parts[i], st.gpr[i])) return false;
  return parse_hex_t(flags, st.eflags);
}

inline bool parse_f80(std::string_view s, Float80& f) {
  if (s.size() != 20) return false;
  return parse_hex_t(s.substr(0, 4), f.se) && parse_hex_t(s.substr(4), f.mant);
}

inline bool parse_fpu(std::string_view s, FpuState& st) {
  auto parts = split(s, ',');
  if (parts.size() != 11) return false;
  if (!parse_hex_t(parts[0], st.fcw) || !parse_hex_t(parts[1], st.fsw) ||
      !parse_hex_t(parts[2], st.ftw))
    return false;
  for (int i = 0; i < 8; ++i)
    if (!parse_f80(parts[3 + i], st.st[i])) return false;
  return true;
}

inline void put_hex(std::string& o, uint64_t v, int digits) {
  static const char* d = "0123456789abcdef";
  for (int i = digits - 1; i >= 0; --i) o.push_back(d[(v >> (4 * i)) & 15]);
}

inline void put_hex_min(std::string& o, uint64_t v) {
  int digits = 1;
  while (digits < 16 && (v >> (4 * digits)) != 0) ++digits;
  put_hex(o, v, digits);
}

inline void put_bytes(std::string& o, const std::vector<uint8_t>& b) {
  for (uint8_t x : b) put_hex(o, x, 2);
}

inline void put_cpu(std::string& o, const char* rk, const char* fk, const CpuState& s) {
  o += ' ';
  o += rk;
  o += '=';
  for (int i = 0; i < 8; ++i) {
    if (i) o += ',';
    put_hex(o, s.gpr[i], 8);
  }
  o += ' ';
  o += fk;
  o += '=';
  put_hex(o, s.eflags, 3);
}

inline void put_fpu(std::string& o, const char* k, const FpuState& s) {
  o += ' ';
  o += k;
  o += '=';
  put_hex(o, s.fcw, 4);
  o += ',';
  put_hex(o, s.fsw, 4);
  o += ',';
  put_hex(o, s.ftw, 4);
  for (int i = 0; i < 8; ++i) {
    o += ',';
    put_hex(o, s.st[i].se, 4);
    put_hex(o, s.st[i].mant, 16);
  }
}

}  // namespace detail

inline const char* fault_name(Fault f) {
  switch (f) {
    case Fault::DE: return "DE";
    case Fault::MF: return "MF";
    default: return "none";
  }
}

// Parses one vector line. Returns false and sets *err on malformed input.
inline bool parse_vector_line(std::string_view line, Vector& v, std::string* err = nullptr) {
  using namespace detail;
  auto fail = [&](const std::string& m) {
    if (err) *err = m;
    return false;
  };
  v = Vector{};
  auto toks = split(line, ' ');
  std::vector<std::string_view> t;
  for (auto x : toks)
    if (!x.empty()) t.push_back(x);
  if (t.size() < 2) return fail("too few fields");
  v.mnemonic = std::string(t[0]);
  v.form = std::string(t[1]);
  std::string_view r, f, R, F, x, X;
  bool have_c = false, have_u = false, have_a = false, have_m = false, have_M = false,
       have_xu = false;
  for (size_t i = 2; i < t.size(); ++i) {
    std::string_view tok = t[i];
    if (tok == "approx") {
      v.approx = true;
      continue;
    }
    size_t eq = tok.find('=');
    if (eq == std::string_view::npos) return fail("field without '=': " + std::string(tok));
    std::string_view k = tok.substr(0, eq), val = tok.substr(eq + 1);
    if (k == "c") {
      if (!parse_bytes(val, v.code) || v.code.empty()) return fail("bad code bytes");
      have_c = true;
    } else if (k == "r") r = val;
    else if (k == "f") f = val;
    else if (k == "R") R = val;
    else if (k == "F") F = val;
    else if (k == "u") {
      if (!parse_hex_t(val, v.undef_flags)) return fail("bad u");
      have_u = true;
    } else if (k == "ur") {
      if (!parse_hex_t(val, v.undef_gprs)) return fail("bad ur");
    } else if (k == "a") {
      if (!parse_hex_t(val, v.mem_addr)) return fail("bad a");
      have_a = true;
    } else if (k == "m") {
      if (!parse_bytes(val, v.mem_in)) return fail("bad m");
      have_m = true;
    } else if (k == "M") {
      if (!parse_bytes(val, v.mem_out)) return fail("bad M");
      have_M = true;
    } else if (k == "mi") {
      for (auto part : split(val, ',')) {
        size_t plus = part.find('+');
        MemRange mr;
        if (plus == std::string_view::npos || !parse_hex_t(part.substr(0, plus), mr.offset) ||
            !parse_hex_t(part.substr(plus + 1), mr.length))
          return fail("bad mi");
        v.mem_ignore.push_back(mr);
      }
    } else if (k == "x") x = val;
    else if (k == "X") X = val;
    else if (k == "xu") {
      if (!parse_hex_t(val, v.fsw_undef)) return fail("bad xu");
      have_xu = true;
    } else if (k == "fault") {
      if (val == "DE") v.fault = Fault::DE;
      else if (val == "MF") v.fault = Fault::MF;
      else return fail("bad fault");
    } else {
      return fail("unknown field " + std::string(k));
    }
  }
  if (!have_c || !have_u) return fail("missing c or u");
  if (!parse_cpu(r, f, v.in)) return fail("bad r/f");
  if (!parse_cpu(R, F, v.out)) return fail("bad R/F");
  if (have_a || have_m || have_M) {
    if (!(have_a && have_m && have_M)) return fail("incomplete memory fields");
    if (v.mem_in.size() != v.mem_out.size() || v.mem_in.empty())
      return fail("memory window sizes differ");
    for (auto& mr : v.mem_ignore)
      if (mr.offset + mr.length > v.mem_in.size()) return fail("mi out of window");
    v.has_mem = true;
  } else if (!v.mem_ignore.empty()) {
    return fail("mi without memory");
  }
  if (!x.empty() || !X.empty()) {
    if (!parse_fpu(x, v.fpu_in) || !parse_fpu(X, v.fpu_out) || !have_xu) return fail("bad x/X/xu");
    v.has_fpu = true;
  }
  return true;
}

// Formats one vector as a line (without newline). Inverse of parse_vector_line.
inline std::string format_vector_line(const Vector& v) {
  using namespace detail;
  std::string o;
  o.reserve(256 + 4 * v.mem_in.size());
  o += v.mnemonic;
  o += ' ';
  o += v.form;
  o += " c=";
  put_bytes(o, v.code);
  put_cpu(o, "r", "f", v.in);
  put_cpu(o, "R", "F", v.out);
  o += " u=";
  put_hex(o, v.undef_flags, 3);
  if (v.undef_gprs) {
    o += " ur=";
    put_hex(o, v.undef_gprs, 2);
  }
  if (v.has_mem) {
    o += " a=";
    put_hex(o, v.mem_addr, 8);
    o += " m=";
    put_bytes(o, v.mem_in);
    o += " M=";
    put_bytes(o, v.mem_out);
    if (!v.mem_ignore.empty()) {
      o += " mi=";
      for (size_t i = 0; i < v.mem_ignore.size(); ++i) {
        if (i) o += ',';
        put_hex_min(o, v.mem_ignore[i].offset);
        o += '+';
        put_hex_min(o, v.mem_ignore[i].length);
      }
    }
  }
  if (v.has_fpu) {
    put_fpu(o, "x", v.fpu_in);
    put_fpu(o, "X", v.fpu_out);
    o += " xu=";
    put_hex(o, v.fsw_undef, 4);
  }
  if (v.approx) o += " approx";
  if (v.fault != Fault::None) {
    o += " fault=";
    o += fault_name(v.fault);
  }
  return o;
}

// Header line: "#popek-oracle version=1 group=alu count=123 seed=... host=<rest of line>"
inline bool parse_header_line(std::string_view line, FileHeader& h) {
  using namespace detail;
  constexpr std::string_view kTag = "#popek-oracle ";
  if (line.substr(0, kTag.size()) != kTag) return false;
  line.remove_prefix(kTag.size());
  while (!line.empty()) {
    size_t eq = line.find('=');
    if (eq == std::string_view::npos) return false;
    std::string_view k = line.substr(0, eq);
    line.remove_prefix(eq + 1);
    if (k == "host") {  // host is last and may contain spaces
      h.host = std::string(line);
      break;
    }
    size_t sp = line.find(' ');
    std::string_view val = line.substr(0, sp);
    line = sp == std::string_view::npos ? std::string_view{} : line.substr(sp + 1);
    uint64_t n = 0;
    if (k == "version") h.version = std::stoi(std::string(val));
    else if (k == "group") h.group = std::string(val);
    else if (k == "count") h.count = std::stoull(std::string(val));
    else if (k == "seed" && parse_hex(val, n)) h.seed = n;
    else return false;
  }
  return h.version == 1 && !h.group.empty();
}

inline std::string format_header_line(const FileHeader& h) {
  std::string o = "#popek-oracle version=" + std::to_string(h.version) + " group=" + h.group +
                  " count=" + std::to_string(h.count) + " seed=";
  detail::put_hex(o, h.seed, 16);
  o += " host=" + h.host;
  return o;
}

// Reads a whole vector file. Throws std::runtime_error with file:line on errors,
// including a header whose count does not match the number of vectors.
inline VectorFile read_vector_file(const std::string& path) {
  std::ifstream in(path);
  if (!in) throw std::runtime_error("cannot open " + path);
  VectorFile f;
  std::string line;
  size_t n = 0;
  bool have_header = false;
  while (std::getline(in, line)) {
    ++n;
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (line.empty()) continue;
    if (line[0] == '#') {
      if (!have_header && line.rfind("#popek-oracle ", 0) == 0) {
        if (!parse_header_line(line, f.header))
          throw std::runtime_error(path + ":" + std::to_string(n) + ": bad header");
        have_header = true;
      }
      continue;
    }
    if (!have_header) throw std::runtime_error(path + ": vector before header");
    Vector v;
    std::string err;
    if (!parse_vector_line(line, v, &err))
      throw std::runtime_error(path + ":" + std::to_string(n) + ": " + err);
    v.group = f.header.group;
    v.line = n;
    f.vectors.push_back(std::move(v));
  }
  if (!have_header) throw std::runtime_error(path + ": no header");
  if (f.vectors.size() != f.header.count)
    throw std::runtime_error(path + ": header count " + std::to_string(f.header.count) +
                             " but " + std::to_string(f.vectors.size()) + " vectors");
  return f;
}

// The group files the generator writes, in order ("<group>.txt" in the output directory).
inline const std::vector<std::string>& group_names() {
  static const std::vector<std::string> g = {"alu",  "muldiv", "shift", "bit",  "xchg",
                                             "move", "cond",   "flags", "string", "x87",
                                             "mmx"};
  return g;
}

}  // namespace popek::oracle
