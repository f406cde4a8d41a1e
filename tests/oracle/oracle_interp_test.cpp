// Checks the interpreter against vectors recorded on the host CPU (tools/oracle):
// each vector's instruction bytes run as one instruction in 32-bit flat
// protected mode; registers, defined flags, the memory window and the x87 state
// must match. Undefined flags are compared too but only reported. Prints the
// pass rate per group and the first mismatches.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <map>

#include "engine/interp/interp.h"
#include "memory/phys_mem.h"
#include "vector_format.h"
#include "x86/cpu.h"

using namespace popek;
namespace fs = std::filesystem;

namespace {

constexpr u32 kCode = 0x100000, kIdt = 0x1000, kStubs = 0x3000, kStack = 0x90000;

struct NullPlatform : x86::Platform {
  u32 io_in(u16, unsigned) override { return 0xFFFFFFFF; }
  void io_out(u16, unsigned, u32) override {}
  u64 tsc() override { return 0; }
  u8 intr_ack() override { return 0; }
};

long double to_ld(const oracle::Float80& f) {
  long double v = 0;
  std::memcpy(&v, &f.mant, 8);
  std::memcpy(reinterpret_cast<char*>(&v) + 8, &f.se, 2);
  return v;
}
oracle::Float80 from_ld(long double v) {
  oracle::Float80 f;
  std::memcpy(&f.mant, &v, 8);
  std::memcpy(&f.se, reinterpret_cast<char*>(&v) + 8, 2);
  return f;
}

bool outside_model(const oracle::Vector& v) { return v.mnemonic == "fisttp"; }

struct Runner {
  x86::CpuState s;
  mem::PhysMem pm{8u << 20};
  NullPlatform plat;
  engine::Interp interp{s, pm, plat};

  Runner() {
    const u64 gdt[3] = {0, 0x00CF9B000000FFFFull, 0x00CF93000000FFFFull};
    pm.write_bytes(0x2000, gdt, sizeof gdt);
    // IDT: 32 interrupt gates to one-byte HLT stubs at kStubs + vector.
    for (u32 v = 0; v < 32; v++) {
      u32 h = kStubs + v;
      u64 gate = (h & 0xFFFF) | (u64(0x08) << 16) | (u64(0x8E00) << 32) | (u64(h >> 16) << 48);
      pm.write_bytes(kIdt + v * 8, &gate, 8);
      u8 hlt = 0xF4;
      pm.write_bytes(kStubs + v, &hlt, 1);
    }
  }

  void setup(const oracle::Vector& v) {
    s = x86::CpuState{};
    s.cr0 = x86::CR0_PE | x86::CR0_ET | x86::CR0_NE;
    for (auto& sg : s.seg) sg = x86::Segment{0x10, 0, 0xFFFFFFFF, 0xC093};
    s.seg[x86::CS] = x86::Segment{0x08, 0, 0xFFFFFFFF, 0xC09B};
    s.idtr = {kIdt, 32 * 8 - 1};
    s.gdtr = {0x2000, 0x17};
    s.eip = kCode;
    for (int r = 0; r < 8; r++) s.gpr[r] = v.in.gpr[r];
    s.gpr[x86::ESP] = kStack;
    s.eflags = (v.in.eflags & 0xCD7) | 2;
    pm.write_bytes(kCode, v.code.data(), v.code.size());
    if (v.has_mem) pm.write_bytes(v.mem_addr, v.mem_in.data(), v.mem_in.size());
    if (v.has_fpu) {
      s.fpu.fcw = v.fpu_in.fcw;
      s.fpu.fsw = v.fpu_in.fsw;
      s.fpu.ftw = v.fpu_in.ftw;
      for (unsigned i = 0; i < 8; i++) s.fpu.regs[(v.fpu_in.top() + i) & 7] = to_ld(v.fpu_in.st[i]);
    }
  }

  // Returns an empty string on a match, else what differed.
  std::string check(const oracle::Vector& v, bool* undef_mismatch) {
    setup(v);
    int fault = -1;
    for (int n = 0; n < 100000 && s.eip == kCode; n++) {
      interp.run(1);
      if (s.eip > kStubs && s.eip <= kStubs + 32) {
        fault = int(s.eip - kStubs - 1);
        break;
      }
    }
    char buf[256];
    std::string diff;
    int want_fault = v.fault == oracle::Fault::DE ? 0 : v.fault == oracle::Fault::MF ? 16 : -1;
    // Instructions the host has but popek's CPU model (a Pentium II: no SSE3)
    // does not: the guest must get #UD.
    if (outside_model(v)) want_fault = 6;
    if (fault != want_fault) {
      std::snprintf(buf, sizeof buf, "fault %d, expected %d; ", fault, want_fault);
      diff += buf;
      return diff;
    }
    if (fault == 6 && want_fault == 6) return diff;
    if (fault < 0 && s.eip != kCode + v.code.size()) {
      std::snprintf(buf, sizeof buf, "eip %#x; ", s.eip);
      diff += buf;
    }
    for (int r = 0; r < 8; r++) {
      if (r == x86::ESP || (v.undef_gprs & (1 << r))) continue;
      if (s.gpr[r] != v.out.gpr[r]) {
        std::snprintf(buf, sizeof buf, "gpr%d %08x want %08x; ", r, s.gpr[r], v.out.gpr[r]);
        diff += buf;
      }
    }
    const u32 defined = 0xCD7 & ~v.undef_flags;
    if ((s.eflags & defined) != (v.out.eflags & defined)) {
      std::snprintf(buf, sizeof buf, "flags %03x want %03x (defined %03x); ", s.eflags & 0xCD7,
                    v.out.eflags & 0xCD7, defined);
      diff += buf;
    }
    *undef_mismatch = (s.eflags & v.undef_flags & 0xCD7) != (v.out.eflags & v.undef_flags & 0xCD7);
    if (v.has_mem) {
      std::vector<u8> got(v.mem_out.size());
      pm.read_bytes(v.mem_addr, got.data(), got.size());
      for (size_t k = 0; k < got.size(); k++) {
        bool ignored = false;
        for (auto& r : v.mem_ignore) ignored |= k >= r.offset && k < r.offset + r.length;
        if (!ignored && got[k] != v.mem_out[k]) {
          std::snprintf(buf, sizeof buf, "mem+%zu %02x want %02x; ", k, got[k], v.mem_out[k]);
          diff += buf;
          break;
        }
      }
    }
    if (v.has_fpu) {
      const auto& w = v.fpu_out;
      if (s.fpu.fcw != w.fcw) { std::snprintf(buf, sizeof buf, "fcw %04x want %04x; ", s.fpu.fcw, w.fcw); diff += buf; }
      if ((s.fpu.fsw & ~v.fsw_undef) != (w.fsw & ~v.fsw_undef)) {
        std::snprintf(buf, sizeof buf, "fsw %04x want %04x; ", s.fpu.fsw, w.fsw);
        diff += buf;
      }
      if (s.fpu.ftw != w.ftw) { std::snprintf(buf, sizeof buf, "ftw %04x want %04x; ", s.fpu.ftw, w.ftw); diff += buf; }
      for (unsigned i = 0; i < 8; i++) {
        if (w.tag_of_st(i) == 3) continue;
        oracle::Float80 got = from_ld(s.fpu.regs[(s.fpu.top() + i) & 7]);
        if (got == w.st[i]) continue;
        if (v.approx && got.se == w.st[i].se &&
            (got.mant > w.st[i].mant ? got.mant - w.st[i].mant : w.st[i].mant - got.mant) <= 1)
          continue;
        std::snprintf(buf, sizeof buf, "st%u %04x:%016llx want %04x:%016llx; ", i, got.se,
                      (unsigned long long)got.mant, w.st[i].se, (unsigned long long)w.st[i].mant);
        diff += buf;
      }
    }
    return diff;
  }
};

}  // namespace

TEST(Oracle, InterpreterMatchesHostVectors) {
  const fs::path dir = POPEK_ORACLE_VECTOR_DIR;
  if (!fs::exists(dir / ".stamp")) GTEST_SKIP() << "no oracle vectors at " << dir;
  Runner run;
  u64 total = 0, passed = 0, undef_mis = 0;
  std::map<std::string, std::pair<u64, u64>> per_group;
  std::map<std::string, int> shown;
  for (const auto& g : oracle::group_names()) {
    fs::path f = dir / (g + ".txt");
    if (!fs::exists(f)) continue;
    oracle::VectorFile vf = oracle::read_vector_file(f.string());
    for (const auto& v : vf.vectors) {
      bool um = false;
      std::string d = run.check(v, &um);
      auto& pg = per_group[g];
      pg.first++;
      total++;
      undef_mis += um;
      if (d.empty()) {
        pg.second++;
        passed++;
      } else if (shown[v.mnemonic + " " + v.form]++ < 2) {
        std::printf("MISMATCH %s %s line %zu: %s\n", v.mnemonic.c_str(), v.form.c_str(), v.line, d.c_str());
      }
    }
  }
  std::printf("oracle vectors: %llu/%llu passed (%.3f %%); undefined-flag disagreements: %llu\n",
              (unsigned long long)passed, (unsigned long long)total,
              total ? 100.0 * double(passed) / double(total) : 0.0, (unsigned long long)undef_mis);
  for (auto& [g, pr] : per_group)
    std::printf("  %-8s %7llu/%-7llu %.3f %%\n", g.c_str(), (unsigned long long)pr.second,
                (unsigned long long)pr.first, 100.0 * double(pr.second) / double(pr.first));
  ASSERT_GT(total, 0u);
  EXPECT_GE(double(passed) / double(total), 0.999);
  for (auto& [g, pr] : per_group) EXPECT_GE(double(pr.second) / double(pr.first), 0.99) << g;
  // MMX is integer arithmetic with no undefined results: every vector must pass.
  if (per_group.count("mmx")) {
    EXPECT_EQ(per_group["mmx"].second, per_group["mmx"].first);
  }
}
