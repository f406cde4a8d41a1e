// A small flat protected-mode test machine for engine tests: RAM, a GDT with
// flat code/data, an IDT whose every vector goes to a handler that records the
// vector and halts, and any engine (interp, bt with options).
#pragma once
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "engine/bt/bt.h"
#include "engine/interp/interp.h"

namespace popek::test {

struct TestPlatform : x86::Platform {
  std::vector<std::pair<u16, u32>> outs;
  u32 io_in(u16, unsigned) override { return 0xFFFFFFFF; }
  void io_out(u16 p, unsigned, u32 v) override {
    outs.emplace_back(p, v);
    if (on_out) on_out(p, v);
  }
  std::function<void(u16, u32)> on_out;  // (a test's hook: e.g. statistics at a marker)
  // The TSC counts retired instructions (as in deterministic runs): an engine
  // must have its count right when RDTSC reads it.
  const u64* icount = nullptr;
  u64 tsc() override { return 12345 + (icount ? 10 * *icount : 0); }
  u8 intr_ack() override { return 0x20; }
};

// Engine variants every engine test runs on.
struct EngineKind {
  std::string name;
  bool bt;
  engine::BtOptions opt;
};
inline std::vector<EngineKind> all_engines() {
  std::vector<EngineKind> v;
  v.push_back({"interp", false, {}});
  // The translator variants translate code the first time it runs (most
  // test code runs once); bt_tiered as a user runs it.
  // Memos everywhere (the tests run at CPL 0) except where the options are a
  // user's (bt_tiered) or chaining is off (the other way of each, tested).
  engine::BtOptions o;
  o.tiered = false;
  o.memo = engine::BtOptions::Memo::all;
  v.push_back({"bt", true, o});
  o.block_insns = 1;
  v.push_back({"bt_one_insn_blocks", true, o});
  o = {};
  o.tiered = false;
  o.chain = false;
  v.push_back({"bt_no_chain", true, o});
  o = {};
  o.tiered = false;
  o.superblocks = engine::BtOptions::Superblocks::all;  // the tests run at CPL 0
  o.memo = engine::BtOptions::Memo::all;
  v.push_back({"bt_superblocks", true, o});
  o = {};
  o.tiered = false;
  o.memo = engine::BtOptions::Memo::all;
  o.lockstep = true;
  v.push_back({"bt_lockstep", true, o});
  v.push_back({"bt_tiered", true, {}});
  return v;
}

constexpr u32 kIdt = 0x3000, kGdt = 0x5000, kHandlers = 0x6000, kStackTop = 0x80000;
// Handler k stores its vector at kVectorLog and halts with IF=0.
constexpr u32 kVectorLog = 0x7000;

struct TestVm {
  x86::CpuState s;
  mem::PhysMem pm{4u << 20};
  TestPlatform plat;
  std::unique_ptr<engine::Engine> eng;
  EngineKind kind;
  // Engine switching (the switching fuzzer): `alts` run the guest too
  // (made by the test on this VM's state, memory and platform); run() then
  // hands the guest between them and `eng` at random points: chunks of 1 to
  // max_chunk instructions, each on an engine drawn with switch_rng (kvm
  // does not count instructions: a chunk there runs until KVM returns).
  std::vector<std::unique_ptr<engine::Engine>> alts;
  u64 switch_rng = 1;
  u64 max_chunk = 64;
  engine::Engine* cur = nullptr;
  u64 switches = 0;
  bool trace_switches = std::getenv("POPEK_FUZZ_TRACE_SWITCHES") != nullptr;
  u64 rnd() {
    u64 z = (switch_rng += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
  }
  // The engine is made at the first run, after the test has set up memory
  // and registers (the lockstep shadow starts from a copy of them).
  void make_engine() {
    if (eng) return;
    if (kind.bt) eng = std::make_unique<engine::Bt>(s, pm, plat, kind.opt);
    else eng = std::make_unique<engine::Interp>(s, pm, plat);
  }
  engine::Exit run(u64 budget) {
    make_engine();
    if (alts.empty()) return eng->run(budget);
    if (!cur) cur = eng.get();
    engine::Exit e = engine::Exit::budget;
    for (u64 left = budget; left && e == engine::Exit::budget;) {
      const u64 k = rnd() % (alts.size() + 1);
      engine::Engine* next = k == 0 ? eng.get() : alts[k - 1].get();
      if (next != cur) {
        cur->switch_out();
        next->switch_in();
        cur = next;
        switches++;
      }
      const u64 chunk = std::min<u64>(left, 1 + rnd() % max_chunk);
      const u64 before = s.icount;
      e = cur->run(chunk);
      if (trace_switches)
        std::fprintf(stderr, "  %s ran to eip %#x icount %llu (%s)\n", cur->name(), s.eip,
                     (unsigned long long)s.icount, engine::exit_name(e));
      const u64 done = std::string(cur->name()) == "kvm" ? chunk : s.icount - before;
      left -= std::min(left, std::max<u64>(done, e == engine::Exit::budget ? 1 : 0));
    }
    return e;
  }
  // The state was set from outside (a new test case): no engine may keep
  // what it cached of the old one.
  void state_set() {
    if (!eng) return;
    if (auto* b = dynamic_cast<engine::Bt*>(eng.get())) b->lockstep_resync();
    else eng->switch_in();
    for (auto& a : alts) a->switch_in();
  }
  explicit TestVm(const EngineKind& k) : kind(k) {
    plat.icount = &s.icount;
    s.cr0 = x86::CR0_PE | x86::CR0_ET;
    for (auto& sg : s.seg) sg = x86::Segment{0x10, 0, 0xFFFFFFFF, 0xC093};
    s.seg[x86::CS] = x86::Segment{0x08, 0, 0xFFFFFFFF, 0xC09B};
    s.gpr[x86::ESP] = kStackTop;
    const u64 gdt[3] = {0, 0x00CF9B000000FFFFull, 0x00CF93000000FFFFull};
    pm.write_bytes(kGdt, gdt, sizeof gdt);
    s.gdtr = {kGdt, 0x17};
    s.idtr = {kIdt, 0x7FF};
    for (u32 v = 0; v < 256; v++) {
      const u32 h = kHandlers + v * 16;
      set_gate(v, h);
      // mov dword [kVectorLog], v ; hlt
      std::vector<u8> c = {0xC7, 0x05, u8(kVectorLog), u8(kVectorLog >> 8), u8(kVectorLog >> 16),
                           u8(kVectorLog >> 24), u8(v), 0, 0, 0, 0xF4};
      code(h, c);
    }
    u32 none = 0xFFFFFFFF;
    pm.write_bytes(kVectorLog, &none, 4);
  }
  void set_gate(u32 v, u32 handler) {
    u64 gate = (handler & 0xFFFF) | (u64(0x08) << 16) | (u64(0x8E00) << 32) |
               (u64(handler >> 16) << 48);
    pm.write_bytes(kIdt + v * 8, &gate, 8);
  }
  void code(u32 at, const std::vector<u8>& b) { pm.write_bytes(at, b.data(), b.size()); }
  // A GDT for ring 3 at kGdt: flat kernel code and data (0x08, 0x10), flat
  // user code and data (0x1B, 0x23) and a 32-bit TSS (0x28) at `tss` whose
  // ring-0 stack is 0x10:esp0.
  void ring3_gdt(u32 tss, u32 esp0) {
    const u64 tss_desc = 0x67 | (u64(tss & 0xFFFFFF) << 16) | (u64(0x89) << 40) | (u64(tss >> 24) << 56);
    const u64 gdt[6] = {0, 0x00CF9B000000FFFFull, 0x00CF93000000FFFFull, 0x00CFFB000000FFFFull,
                        0x00CFF3000000FFFFull, tss_desc};
    pm.write_bytes(kGdt, gdt, sizeof gdt);
    std::vector<u8> t(0x68, 0);
    const u32 ss0 = 0x10;
    std::memcpy(&t[4], &esp0, 4);
    std::memcpy(&t[8], &ss0, 4);
    pm.write_bytes(tss, t.data(), t.size());
  }
  // Segment registers, GDTR, IDTR, TR and CPL for ring3_gdt's tables: the
  // kernel's flat segments at CPL 0, or the user's at CPL 3.
  void ring3_segments(u32 tss, bool user) {
    for (auto& sg : s.seg) sg = user ? x86::Segment{0x23, 0, 0xFFFFFFFF, 0xC0F3} : x86::Segment{0x10, 0, 0xFFFFFFFF, 0xC093};
    s.seg[x86::CS] = user ? x86::Segment{0x1B, 0, 0xFFFFFFFF, 0xC0FB} : x86::Segment{0x08, 0, 0xFFFFFFFF, 0xC09B};
    s.gdtr = {kGdt, 0x2F};
    s.idtr = {kIdt, 0x7FF};
    s.tr = x86::Segment{0x28, tss, 0x67, 0x8B};
    s.cpl = user ? 3 : 0;
  }
  u32 rd32(u32 at) {
    u32 v = 0;
    pm.read_bytes(at, &v, 4);
    return v;
  }
  u32 vector_taken() { return rd32(kVectorLog); }
};

}  // namespace popek::test
