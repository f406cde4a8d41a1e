// Checks the recorded oracle vectors: well-formedness, internal consistency,
// and that a sample reproduces when re-executed on the host CPU.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <cstdlib>
#include <cstring>
#include <map>

#include "gen.h"
#include "host_exec.h"
#include "vector_format.h"

namespace po = popek::oracle;

namespace {

const std::string kDir = POPEK_ORACLE_VECTOR_DIR;

const std::map<std::string, po::VectorFile>& files() {
  static std::map<std::string, po::VectorFile> f = [] {
    std::map<std::string, po::VectorFile> m;
    for (auto& g : po::group_names()) m[g] = po::read_vector_file(kDir + "/" + g + ".txt");
    return m;
  }();
  return f;
}

// Differences between expected and actual outputs ("" if none).
std::string diff(const po::Vector& e, const po::Vector& a) {
  std::string d;
  if (e.fault != a.fault) d += std::string(" fault ") + po::fault_name(e.fault) + "/" + po::fault_name(a.fault);
  for (int i = 0; i < 8; ++i)
    if (e.out.gpr[i] != a.out.gpr[i]) d += " gpr" + std::to_string(i);
  if (e.out.eflags != a.out.eflags) d += " eflags";
  if (e.has_mem) {
    std::vector<bool> ign(e.mem_out.size());
    for (auto r : e.mem_ignore)
      for (uint32_t i = 0; i < r.length; ++i) ign[r.offset + i] = true;
    for (size_t i = 0; i < e.mem_out.size(); ++i)
      if (!ign[i] && (i >= a.mem_out.size() || e.mem_out[i] != a.mem_out[i])) {
        d += " mem+" + std::to_string(i);
        break;
      }
  }
  if (e.has_fpu && !(e.fpu_out == a.fpu_out)) d += " fpu";
  return d;
}

bool has_rex_opcode(const std::vector<uint8_t>& c) {
  size_t i = 0;
  while (i < c.size() && (c[i] == 0x66 || c[i] == 0xF0 || c[i] == 0xF2 || c[i] == 0xF3)) ++i;
  return i < c.size() && (c[i] & 0xF0) == 0x40;
}

}  // namespace

TEST(OracleSelftest, FilesParseAndAreConsistent) {
  size_t total = 0;
  for (auto& [g, f] : files()) {
    SCOPED_TRACE(g);
    EXPECT_EQ(f.header.group, g);
    EXPECT_EQ(f.header.version, 1);
    EXPECT_FALSE(f.header.host.empty());
    EXPECT_GT(f.vectors.size(), 100u);
    total += f.vectors.size();
    for (auto& v : f.vectors) {
      SCOPED_TRACE("line " + std::to_string(v.line) + " " + v.mnemonic + " " + v.form);
      ASSERT_FALSE(v.code.empty());
      ASSERT_LE(v.code.size(), 15u);
      EXPECT_FALSE(has_rex_opcode(v.code));
      EXPECT_EQ(v.in.gpr[po::kEsp], 0u);
      EXPECT_EQ(v.out.gpr[po::kEsp], 0u);
      EXPECT_EQ(v.in.eflags & ~po::kRecordedFlags, 0u);
      EXPECT_EQ(v.out.eflags & ~po::kRecordedFlags, 0u);
      EXPECT_EQ(v.in.eflags & 2, 2u);
      EXPECT_EQ(v.out.eflags & 2, 2u);
      EXPECT_EQ(v.undef_flags & ~po::kStatusFlags, 0u);
      if (v.has_mem) {
        EXPECT_GE(v.mem_addr, po::host::kDataBase);
        EXPECT_LE(v.mem_addr + v.mem_in.size(), po::host::kDataBase + po::host::kDataSize);
      }
      if (v.fault != po::Fault::None) {
        EXPECT_EQ(v.out, v.in);
        EXPECT_EQ(v.mem_out, v.mem_in);
      }
      EXPECT_EQ(v.has_fpu, g == "x87" || g == "mmx");
      if (v.mnemonic == "fnsave" || v.mnemonic == "fnstenv") {
        // Reserved halves of the first three dwords and the 16 pointer bytes.
        ASSERT_EQ(v.mem_ignore.size(), 4u);
        EXPECT_EQ(v.mem_ignore[1].offset, v.mem_ignore[0].offset + 4);
        EXPECT_EQ(v.mem_ignore[3].offset, v.mem_ignore[0].offset + 10);
        EXPECT_EQ(v.mem_ignore[3].length, 16u);
      } else {
        EXPECT_TRUE(v.mem_ignore.empty());
      }
      if (v.has_fpu) {
        for (const po::FpuState* s : {&v.fpu_in, &v.fpu_out})
          for (unsigned i = 0; i < 8; ++i) {
            if (s->tag_of_st(i) != 3) {
              EXPECT_EQ(s->tag_of_st(i), po::host::tag_of(s->st[i]));
            }
          }
        EXPECT_EQ(v.fsw_undef & ~(po::kFswC0 | po::kFswC1 | po::kFswC2 | po::kFswC3), 0);
      }
    }
  }
  EXPECT_GT(total, 1000u);
}

TEST(OracleSelftest, LinesRoundTrip) {
  for (auto& g : po::group_names()) {
    std::ifstream in(kDir + "/" + g + ".txt");
    std::string line;
    size_t n = 0;
    while (std::getline(in, line) && n < 5000) {
      if (line.empty() || line[0] == '#') continue;
      po::Vector v;
      std::string err;
      ASSERT_TRUE(po::parse_vector_line(line, v, &err)) << err << ": " << line;
      ASSERT_EQ(po::format_vector_line(v), line);
      ++n;
    }
  }
}

TEST(OracleSelftest, SampleReproducesOnHost) {
  std::string err;
  if (!po::host::init(&err)) GTEST_SKIP() << err;
  size_t checked = 0, bad = 0;
  for (auto& [g, f] : files()) {
    // POPEK_ORACLE_FULL=1 re-executes every vector instead of a sample.
    size_t stride = std::getenv("POPEK_ORACLE_FULL") ? 1 : std::max<size_t>(1, f.vectors.size() / 1500);
    for (size_t i = 0; i < f.vectors.size(); i += stride) {
      const po::Vector& e = f.vectors[i];
      po::Vector a = e;
      // A different guard pattern around the window: a vector that read memory
      // outside its window would not reproduce.
      po::host::RunResult rr = po::host::execute(a, 0x5A);
      ++checked;
      std::string d = rr.signo ? "signal " + std::to_string(rr.signo) : diff(e, a);
      if (!d.empty() && ++bad <= 20)
        ADD_FAILURE() << g << ".txt:" << e.line << " " << e.mnemonic << " " << e.form << ":" << d;
    }
  }
  EXPECT_EQ(bad, 0u) << "of " << checked;
  EXPECT_GT(checked, 5000u);
}

TEST(OracleSelftest, ComparisonDetectsWrongResults) {
  const po::Vector* add = nullptr;
  for (auto& v : files().at("alu").vectors)
    if (v.mnemonic == "add" && v.form == "r32,r32") add = &v;
  ASSERT_NE(add, nullptr);
  po::Vector wrong = *add;
  wrong.out.gpr[po::kEax] ^= 1;
  wrong.out.gpr[add->code[1] & 7] ^= 0x100;
  po::Vector a = *add;
  ASSERT_EQ(po::host::execute(a).signo, 0);
  EXPECT_EQ(diff(*add, a), "");
  EXPECT_NE(diff(wrong, a), "");
}

// Independent of the host: the ALU r32,imm32 vectors agree with C++ arithmetic.
TEST(OracleSelftest, AluImmediateSemantics) {
  size_t n = 0;
  for (auto& v : files().at("alu").vectors) {
    if (v.form != "r32,imm32" || v.code.size() != 6 || v.code[0] != 0x81) continue;
    int op = (v.code[1] >> 3) & 7, r = v.code[1] & 7;
    uint32_t a = v.in.gpr[r], b, cf = v.in.eflags & 1;
    std::memcpy(&b, &v.code[2], 4);
    uint64_t res;
    switch (op) {
      case 0: res = uint64_t{a} + b; break;
      case 1: res = a | b; break;
      case 2: res = uint64_t{a} + b + cf; break;
      case 3: res = uint64_t{a} - b - cf; break;
      case 4: res = a & b; break;
      case 5:
      case 7: res = uint64_t{a} - b; break;
      default: res = a ^ b; break;
    }
    uint32_t r32 = static_cast<uint32_t>(res);
    SCOPED_TRACE(v.mnemonic + " line " + std::to_string(v.line));
    EXPECT_EQ(v.out.gpr[r], op == 7 ? a : r32);
    EXPECT_EQ((v.out.eflags & po::kFlagZF) != 0, r32 == 0);
    EXPECT_EQ((v.out.eflags & po::kFlagSF) != 0, (r32 >> 31) != 0);
    bool carry = (op == 1 || op == 4 || op == 6) ? false : ((res >> 32) & 1) != 0;
    EXPECT_EQ((v.out.eflags & po::kFlagCF) != 0, carry);
    ++n;
  }
  EXPECT_GT(n, 50u);
}

TEST(OracleSelftest, GenerationIsDeterministic) {
  std::string t1, t2, t3, err;
  size_t n1 = 0, n2 = 0, n3 = 0;
  ASSERT_TRUE(po::gen::generate_group("flags", 20, 1, t1, n1, &err)) << err;
  ASSERT_TRUE(po::gen::generate_group("flags", 20, 1, t2, n2, &err)) << err;
  ASSERT_TRUE(po::gen::generate_group("flags", 20, 2, t3, n3, &err)) << err;
  EXPECT_EQ(t1, t2);
  EXPECT_NE(t1, t3);
  EXPECT_EQ(n1, n2);
}

TEST(OracleSelftest, ParserRejectsMalformedLines) {
  po::Vector v;
  EXPECT_FALSE(po::parse_vector_line("add r32,r32", v));
  EXPECT_FALSE(po::parse_vector_line(
      "add r32,r32 c=01c0 r=1,2,3,4,0,5,6 f=2 R=1,2,3,4,0,5,6,7 F=2 u=0", v));  // 7 regs
  EXPECT_FALSE(po::parse_vector_line(
      "add r32,r32 c=01c r=1,2,3,4,0,5,6,7 f=2 R=1,2,3,4,0,5,6,7 F=2 u=0", v));  // odd hex
  EXPECT_FALSE(po::parse_vector_line(
      "add m32,r32 c=0103 r=1,2,3,4,0,5,6,7 f=2 R=1,2,3,4,0,5,6,7 F=2 u=0 a=200000 m=00", v));
  EXPECT_TRUE(po::parse_vector_line(
      "add r32,r32 c=01c0 r=1,2,3,4,0,5,6,7 f=2 R=3,2,3,4,0,5,6,7 F=2 u=0", v));
  EXPECT_EQ(v.out.gpr[0], 3u);
}

// Independent of the host: register-form shifts/rotates follow the SDM
// pseudo-code for the result and for every flag not marked undefined (u=).
TEST(OracleSelftest, ShiftRotateSemanticsOnDefinedFlags) {
  size_t n = 0, bad = 0;
  for (auto& v : files().at("shift").vectors) {
    const std::string& mn = v.mnemonic;
    if (mn == "shld" || mn == "shrd" || v.form[0] != 'r') continue;
    int size = v.form[1] == '8' ? 8 : v.form[1] == '1' ? 16 : 32;
    size_t i = v.code[0] == 0x66 ? 1 : 0;
    int r = v.code[i + 1] & 7;
    std::string cntf = v.form.substr(v.form.find(',') + 1);
    uint32_t count = cntf == "1" ? 1 : cntf == "cl" ? (v.in.gpr[po::kEcx] & 0xFF) : v.code.back();
    uint64_t mask = (1ull << size) - 1, msb = 1ull << (size - 1);
    auto rd = [&](const po::CpuState& s) -> uint64_t {
      if (size == 8) return (s.gpr[r & 3] >> (r >= 4 ? 8 : 0)) & 0xFF;
      return s.gpr[r] & mask;
    };
    uint64_t x = rd(v.in), res = x;
    uint32_t f = v.in.eflags, cf = f & 1, nf = f;
    unsigned c = count & 31;
    if (c) {
      if (mn == "shl" || mn == "shr" || mn == "sar") {
        for (unsigned k = 0; k < c; ++k) {
          if (mn == "shl") cf = (res >> (size - 1)) & 1, res = (res << 1) & mask;
          else if (mn == "shr") cf = res & 1, res >>= 1;
          else cf = res & 1, res = (res >> 1) | (res & msb);
        }
        nf = (f & ~0x8D5u) | cf | (res == 0 ? po::kFlagZF : 0) | ((res & msb) ? po::kFlagSF : 0) |
             ((__builtin_popcountll(res & 0xFF) & 1) ? 0 : po::kFlagPF);
        if (c == 1) {
          bool of = mn == "shl" ? (((res >> (size - 1)) & 1) ^ cf) : mn == "shr" ? ((x >> (size - 1)) & 1) : false;
          nf |= of ? po::kFlagOF : 0;
        }
      } else {
        bool through = mn == "rcl" || mn == "rcr";
        unsigned t = through ? c % (size + 1) : c % size;
        for (unsigned k = 0; k < t; ++k) {
          uint64_t b;
          if (mn == "rol") b = (res >> (size - 1)) & 1, res = ((res << 1) | b) & mask;
          else if (mn == "ror") b = res & 1, res = (res >> 1) | (b << (size - 1));
          else if (mn == "rcl") b = (res >> (size - 1)) & 1, res = ((res << 1) | cf) & mask, cf = static_cast<uint32_t>(b);
          else b = res & 1, res = (res >> 1) | (uint64_t{cf} << (size - 1)), cf = static_cast<uint32_t>(b);
        }
        if (mn == "rol") cf = res & 1;
        if (mn == "ror") cf = (res >> (size - 1)) & 1;
        nf = (f & ~(po::kFlagCF | po::kFlagOF)) | cf;
        if (c == 1) {
          bool of = (mn == "rol" || mn == "rcl") ? (((res >> (size - 1)) & 1) ^ cf)
                                                 : (((res >> (size - 1)) ^ (res >> (size - 2))) & 1);
          nf |= of ? po::kFlagOF : 0;
        }
      }
    }
    uint32_t defined = ~v.undef_flags & 0xCD5;
    ++n;
    if (rd(v.out) != res || (nf & defined) != (v.out.eflags & defined)) {
      if (++bad <= 10) ADD_FAILURE() << "shift.txt:" << v.line << " " << mn << " " << v.form;
    }
  }
  EXPECT_EQ(bad, 0u);
  EXPECT_GT(n, 10000u);
}
