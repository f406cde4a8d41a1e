// Differential fuzzing of bt against interp: random instruction sequences
// (ALU, shifts, multiply/divide, bit operations, moves, stack, string
// instructions with REP, conditional jumps, call/ret, 16-bit operands, FS
// overrides with a non-zero base, memory operands that cross pages, hit a
// not-present or read-only page, and stores into the code being run) run on
// bt in lockstep with the interpreter, which stops at the first difference in
// registers, flags or memory. Each sequence starts from random registers and
// flags and ends at HLT or at the first exception (every vector's handler
// records it and halts), for odd seeds after a second pass through the
// sequence on the state the first left (translated code then runs again). One sequence in five runs with paging off (bt then
// addresses RAM directly: stores into the code and accesses past RAM fault
// into its slow paths; ES ends at 4 MiB there so that REPs end).
//
// A third of the paged sequences run at CPL 3 (bt's user window), each in an
// address space of its own. Those also address a wider working set (up to
// 512 of more wide pages than the window maps at most, aliasing a pool of
// frames), walk pages in loops, and in most of them the kernel (INT 0x80)
// changes page tables between passes as a kernel does: unmaps a page, maps
// it to another frame, write-protects it, clears its accessed/dirty bits,
// takes a whole page table away, gives permissions back, switches to
// another address space — each change followed by the invalidation the
// architecture requires (INVLPG, a CR3 load, or none where it requires
// none) — and logs the entries it reads (lockstep then compares the
// accessed and dirty bits each engine set). Two variants run with a window
// of a few pages, so that sequences cross its cap, and some walk just past
// it and come back to the pages before it. UserWindowBeyondItsCap does that
// at the real cap and counts the direct faults.
//
// By default a fixed number of sequences from seed 1 (POPEK_FUZZ_SEQUENCES,
// default 12000) so that CI is repeatable; POPEK_FUZZ_SECONDS runs for a time
// instead, POPEK_FUZZ_SEED picks the first seed, POPEK_FUZZ_KIND one variant
// (an index into the bt variants of test::all_engines(): 0 bt, 1
// one-instruction blocks, 2 no chaining, 3 superblocks everywhere, 4 tiered;
// by default seed % 5), POPEK_FUZZ_TRACE_SEED traces one sequence,
// POPEK_FUZZ_DEBUG prints each sequence's instruction count, POPEK_FUZZ_DUMP
// its code bytes.
#include "bt_fuzz_gen.h"

#include "engine/kvm/kvm.h"
#include "machine/engine_schedule.h"

TEST(BtFuzz, RandomSequencesAgreeWithTheInterpreter) {
  const char* secs_env = std::getenv("POPEK_FUZZ_SECONDS");
  const char* seed_env = std::getenv("POPEK_FUZZ_SEED");
  const double seconds = secs_env ? std::atof(secs_env) : 1e9;
  const char* count_env = std::getenv("POPEK_FUZZ_SEQUENCES");
  const u64 max_sequences = secs_env ? ~u64(0) : count_env ? std::strtoull(count_env, nullptr, 0) : 12000;
  u32 seed = seed_env ? u32(std::strtoul(seed_env, nullptr, 0)) : 1;
  std::vector<test::EngineKind> kinds;
  for (auto& k : test::all_engines())
    if (k.bt && !k.opt.lockstep) kinds.push_back(k);
  std::vector<std::unique_ptr<FuzzVm>> vms(kinds.size());
  // What the user window did (summed over the variants and the machines made).
  std::map<std::string, u64> sum;
  auto add_window_stats = [&](const std::unique_ptr<FuzzVm>& v) {
    if (v && v->vm.eng)
      for (auto& [k, n] : v->vm.eng->stats())
        if (k.rfind("mmu.window", 0) == 0 || k.rfind("bt.frame_", 0) == 0 || k == "bt.direct_faults" ||
            k == "bt.window_strikes" ||
            k == "bt.inline_divs" || k == "bt.ras_calls" || k == "bt.ras_rets")
          sum[k] += n;
  };
  const auto t0 = std::chrono::steady_clock::now();
  u64 sequences = 0, insns = 0, divergences = 0, outside = 0;
  std::string first;
  while (sequences < max_sequences &&
         std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() < seconds) {
    const unsigned ki = std::getenv("POPEK_FUZZ_KIND") ? unsigned(std::atoi(std::getenv("POPEK_FUZZ_KIND")))
                                                       : seed % kinds.size();
    test::EngineKind k = kinds[ki];
    k.opt.lockstep = true;
    if (std::getenv("POPEK_FUZZ_NO_ADAPTIVE")) k.opt.adaptive = false;
    if (std::getenv("POPEK_FUZZ_NO_FLAG_RECIPES")) k.opt.flag_recipes = false;
    k.opt.ras = ki % 2 == 0 || std::getenv("POPEK_FUZZ_RAS");  // the return stack (off by default)
    // The user window from the first user-mode block on (POPEK_FUZZ_NO_USER_WINDOW: none).
    k.opt.user_window_claim = 0;
    if (std::getenv("POPEK_FUZZ_NO_USER_WINDOW")) k.opt.user_window = false;
    // Two of the variants with user-mode sequences get a window of a few
    // pages (under the churn that gives it up: one clear at the cap keeps
    // it), so that sequences cross its cap and come back to pages the TLB
    // still holds; the others the real cap (POPEK_FUZZ_WINDOW_CAP: all that).
    if (ki == 1) k.opt.user_window_cap = 24;
    if (ki == 3) k.opt.user_window_cap = 48;
    if (const char* c = std::getenv("POPEK_FUZZ_WINDOW_CAP")) k.opt.user_window_cap = std::strtoull(c, nullptr, 0);
    k.opt.code_cache_mb = std::getenv("POPEK_FUZZ_CACHE_MB") ? size_t(std::atoi(std::getenv("POPEK_FUZZ_CACHE_MB"))) : 8;
    if (!vms[ki]) vms[ki] = std::make_unique<FuzzVm>(k);
    FuzzResult r = vms[ki]->run(seed, k.name);
    if (std::getenv("POPEK_FUZZ_DEBUG")) {
      std::string w;
      if (vms[ki] && vms[ki]->vm.eng)
        for (auto& [name, v] : vms[ki]->vm.eng->stats())
          if (name == "mmu.window_claims" || name == "mmu.window_maps" || name == "bt.window_strikes")
            w += " " + name + "=" + std::to_string(v);
      std::printf("seed %u insns %llu%s%s\n", seed, (unsigned long long)r.insns, r.what.c_str(), w.c_str());
    }
    if (r.diverged || r.outside_ram) {  // start clean
      add_window_stats(vms[ki]);
      vms[ki].reset();
    }
    outside += r.outside_ram;
    sequences++;
    insns += r.insns;
    if (r.diverged) {
      if (divergences++ == 0) first = r.message;
    }
    seed++;
  }
  for (auto& v : vms) add_window_stats(v);
  std::string ws;
  for (auto& [k, n] : sum) ws += " " + k + "=" + std::to_string(n);
  std::printf("bt fuzz: user window, inline DIV, return stack:%s\n", ws.c_str());
  std::printf("bt fuzz: %llu sequences, %llu instructions compared in lockstep, %llu divergences "
              "(%llu sequences ended jumping outside RAM)\n",
              (unsigned long long)sequences, (unsigned long long)insns,
              (unsigned long long)divergences, (unsigned long long)outside);
  EXPECT_EQ(divergences, 0u) << first;
  EXPECT_GT(insns, 1000u);
}

// One flavour of sequences (Gen's mmx, frames) on every bt variant in
// lockstep: seeds first_seed.., the machines made again after a divergence
// or a jump out of RAM; the engines' stats whose names start with `prefix`
// summed.
struct FlavourRun {
  u64 insns = 0, divergences = 0;
  std::string first;
  std::map<std::string, u64> stats;
};
FlavourRun run_flavour(u64 sequences, u32 first_seed, bool claim_at_once, void (*flavour)(FuzzVm&),
                       const std::string& prefix) {
  std::vector<test::EngineKind> kinds;
  for (auto& k : test::all_engines())
    if (k.bt && !k.opt.lockstep) kinds.push_back(k);
  std::vector<std::unique_ptr<FuzzVm>> vms(kinds.size());
  FlavourRun out;
  auto add_stats = [&](const std::unique_ptr<FuzzVm>& v) {
    if (v && v->vm.eng)
      for (auto& [name, n] : v->vm.eng->stats())
        if (name.rfind(prefix, 0) == 0) out.stats[name] += n;
  };
  for (u32 seed = first_seed; seed < first_seed + sequences; seed++) {
    const unsigned ki = seed % kinds.size();
    test::EngineKind k = kinds[ki];
    k.opt.lockstep = true;
    if (claim_at_once) k.opt.user_window_claim = 0;
    k.opt.code_cache_mb = 8;
    if (!vms[ki]) {
      vms[ki] = std::make_unique<FuzzVm>(k);
      flavour(*vms[ki]);
    }
    FuzzResult r = vms[ki]->run(seed, k.name);
    if (r.diverged || r.outside_ram) {
      add_stats(vms[ki]);
      vms[ki].reset();
    }
    out.insns += r.insns;
    if (r.diverged && out.divergences++ == 0) out.first = r.message;
  }
  for (auto& v : vms) add_stats(v);
  return out;
}

// MMX instructions (callouts in bt) among the rest, so that their memory
// operands fault and cross pages, write into the code, and sit between the
// flags' producers and consumers; lockstep compares the x87 registers they
// alias. Fewer sequences than above (POPEK_FUZZ_MMX_SEQUENCES, default 2000).
TEST(BtFuzz, MmxSequencesAgreeWithTheInterpreter) {
  const char* count_env = std::getenv("POPEK_FUZZ_MMX_SEQUENCES");
  const u64 max_sequences = count_env ? std::strtoull(count_env, nullptr, 0) : 2000;
  const FlavourRun f = run_flavour(max_sequences, 1, true, [](FuzzVm& v) { v.mmx = true; }, "bt.callouts.mmx");
  const u64 mmx_callouts = f.stats.count("bt.callouts.mmx") ? f.stats.at("bt.callouts.mmx") : 0;
  std::printf("bt fuzz (mmx): %llu sequences, %llu instructions compared in lockstep (%llu MMX "
              "callouts), %llu divergences\n",
              (unsigned long long)max_sequences, (unsigned long long)f.insns, (unsigned long long)mmx_callouts,
              (unsigned long long)f.divergences);
  EXPECT_GT(mmx_callouts, 5 * max_sequences);  // (about 22 per sequence at the default count)
  EXPECT_EQ(f.divergences, 0u) << f.first;
  EXPECT_GT(f.insns, 1000u);
}

// Runs of [EBP + d8] / [ESP + d8] operands (Gen::frame_run) among the rest:
// bt's frame checks (one TLB check per run, BtOptions::frame_checks) where
// the run crosses pages, reaches the absent, read-only or code pages,
// changes EBP or ESP, or branches over a member. POPEK_FUZZ_FRAME_SEQUENCES
// sequences (default 2000).
TEST(BtFuzz, FrameSequencesAgreeWithTheInterpreter) {
  const char* count_env = std::getenv("POPEK_FUZZ_FRAME_SEQUENCES");
  const u64 max_sequences = count_env ? std::strtoull(count_env, nullptr, 0) : 2000;
  const char* seed_env = std::getenv("POPEK_FUZZ_SEED");
  const u32 first_seed = seed_env ? u32(std::strtoul(seed_env, nullptr, 0)) : 1;
  FlavourRun f = run_flavour(max_sequences, first_seed, false, [](FuzzVm& v) { v.frames = true; }, "bt.frame_");
  std::printf("bt fuzz (frames): %llu sequences, %llu instructions compared in lockstep, %llu divergences;",
              (unsigned long long)max_sequences, (unsigned long long)f.insns, (unsigned long long)f.divergences);
  for (auto& [name, n] : f.stats) std::printf(" %s=%llu", name.c_str(), (unsigned long long)n);
  std::printf("\n");
  EXPECT_EQ(f.divergences, 0u) << f.first;
  EXPECT_GT(f.insns, 1000u);
  // The groups were made, and their span missed (crossing, absent pages):
  // the poisoned followers' host faults ran.
  if (max_sequences >= 1000) {
    EXPECT_GT(f.stats["bt.frame_followers"], 1000u);
    EXPECT_GT(f.stats["bt.frame_misses"], 10u);
  }
}

// x87 instructions among the rest (x87_fuzz.h), from a random FPU state:
// bt runs the frequent ones inline on the host's x87 and the rest through
// the semantics; lockstep compares the FPU state (registers, TOP, tags, FSW,
// FCW, FOP and the pointers) and the memory they write after every block.
// POPEK_FUZZ_X87_SEQUENCES sequences (default 3000); POPEK_FUZZ_X87_MMX mixes MMX
// instructions in (they share the registers and the tag word).
TEST(BtFuzz, X87SequencesAgreeWithTheInterpreter) {
  const char* count_env = std::getenv("POPEK_FUZZ_X87_SEQUENCES");
  const u64 max_sequences = count_env ? std::strtoull(count_env, nullptr, 0) : 3000;
  const char* seed_env = std::getenv("POPEK_FUZZ_SEED");
  const u32 first_seed = seed_env ? u32(std::strtoul(seed_env, nullptr, 0)) : 1;
  std::vector<test::EngineKind> kinds;
  for (auto& k : test::all_engines())
    if (k.bt && !k.opt.lockstep) kinds.push_back(k);
  std::vector<std::unique_ptr<FuzzVm>> vms(kinds.size());
  u64 insns = 0, divergences = 0, outside = 0;
  std::map<std::string, u64> sum;
  std::string first;
  auto add_stats = [&](const std::unique_ptr<FuzzVm>& v) {
    if (v && v->vm.eng)
      for (auto& [name, n] : v->vm.eng->stats())
        if (name.rfind("bt.x87_", 0) == 0 || name == "bt.exceptions") sum[name] += n;
  };
  for (u32 seed = first_seed; seed < first_seed + max_sequences; seed++) {
    const unsigned ki = std::getenv("POPEK_FUZZ_KIND") ? unsigned(std::atoi(std::getenv("POPEK_FUZZ_KIND")))
                                                       : seed % kinds.size();
    test::EngineKind k = kinds[ki];
    k.opt.lockstep = true;
    k.opt.user_window_claim = 0;
    k.opt.code_cache_mb = 8;
    k.opt.ras = ki % 2 == 0;
    if (std::getenv("POPEK_FUZZ_NO_INLINE_X87")) k.opt.inline_x87 = false;
    if (!vms[ki]) {
      vms[ki] = std::make_unique<FuzzVm>(k);
      vms[ki]->x87 = true;
      vms[ki]->mmx = std::getenv("POPEK_FUZZ_X87_MMX") != nullptr;
    }
    FuzzResult r = vms[ki]->run(seed, k.name);
    if (std::getenv("POPEK_FUZZ_DEBUG"))
      std::printf("seed %u insns %llu%s\n", seed, (unsigned long long)r.insns, r.what.c_str());
    if (r.diverged || r.outside_ram) {
      add_stats(vms[ki]);
      vms[ki].reset();
    }
    outside += r.outside_ram;
    insns += r.insns;
    if (r.diverged && divergences++ == 0) first = r.message;
  }
  for (auto& v : vms) add_stats(v);
  std::printf("bt fuzz (x87): %llu sequences, %llu instructions compared in lockstep, %llu divergences "
              "(%llu ended outside RAM); x87 inline: %llu translated, %llu runs (%llu run again), "
              "%llu x87 callouts, %llu exceptions\n",
              (unsigned long long)max_sequences, (unsigned long long)insns, (unsigned long long)divergences,
              (unsigned long long)outside, (unsigned long long)sum["bt.x87_inline_translated"],
              (unsigned long long)sum["bt.x87_inline_runs"], (unsigned long long)sum["bt.x87_inline_reruns"],
              (unsigned long long)sum["bt.x87_callouts"], (unsigned long long)sum["bt.exceptions"]);
  EXPECT_EQ(divergences, 0u) << first;
  EXPECT_GT(sum["bt.x87_inline_runs"], max_sequences * 10);
  EXPECT_GT(sum["bt.x87_callouts"], max_sequences);
  EXPECT_GT(insns, 1000u);
}

// The user window past its cap (mem::Mmu::kWindowCap, the default, read
// here): a process that has run long enough to keep the window (Bt gives it
// up at once when a young owner's pages churn: 16M instructions of a loop
// first) touches more distinct pages than the window maps, which empties it
// at the cap, then comes back again and again to pages it touched before
// that. The soft TLB still holds them: each may fault into the slow path
// once and must then be mapped again, not fault at every access (the
// heap-sort hang: right results at ~1/1000 of the speed). On two engines at
// once: the first has the window at host 0 where it can, the second the
// r13 one.
TEST(BtFuzz, UserWindowBeyondItsCap) {
  const u32 cap = u32(mem::Mmu::kWindowCap), pages = cap + kBeyondCap;
  constexpr u32 kRevisit = 256, kTimes = 16;  // pages, times each
  constexpr u32 kWarmup = 19u << 20;          // instructions (more than Bt::kWindowChurnInsns, 16M)
  if (pages > kWidePages) GTEST_SKIP() << "the window's cap is past the pages this test maps";
  std::vector<std::unique_ptr<FuzzVm>> vms;
  for (const auto& kind : test::all_engines()) {
    if (kind.name != "bt" && kind.name != "bt_tiered") continue;
    test::EngineKind k = kind;
    k.opt.user_window_claim = 0;
    vms.push_back(std::make_unique<FuzzVm>(k));
  }
  ASSERT_EQ(vms.size(), 2u);
  for (auto& fv : vms) {
    test::TestVm& vm = fv->vm;
    Gen g(7);
    g.bytes({0xB9});
    g.d(kWarmup / 2);                                  // mov ecx, n ; L: dec ecx ; jnz L
    g.bytes({0x49, 0x75, 0xFD});
    g.bytes({0xE6, 0xE9});                               // out 0xE9, al
    g.beyond_cap(pages, kRevisit, kTimes, true);
    g.b(0xF4);                                           // hlt: #GP at CPL 3, whose handler halts
    fv->reset_tables(true, kUserPd);
    vm.pm.write_bytes(kTable, std::vector<u32>(0x2000, 0).data(), 0x8000);
    vm.code(kCode, g.out);
    fv->system_state(true, true, kUserPd);
    CpuState& s = vm.s;
    s.eip = kCode;
    s.gpr[ESP] = test::kStackTop;
    s.eflags = FLAGS_FIXED1 | 0x3000;  // IOPL 3: the markers' OUT
    s.halted = false;
    // Direct faults at each marker: after the loop, the first touches, the revisits.
    std::vector<u64> marks;
    vm.plat.on_out = [&](u16, u32) {
      for (auto& [name, n] : vm.eng->stats())
        if (name == "bt.direct_faults") marks.push_back(n);
    };
    for (int k = 0; k < 2000 && !s.halted; k++) vm.run(100000);  // (a timer's slices)
    ASSERT_TRUE(s.halted);
    ASSERT_EQ(marks.size(), 3u);
    std::map<std::string, u64> st;
    for (auto& [name, n] : vm.eng->stats()) st[name] = n;
    const u64 first = marks[1] - marks[0], again = marks[2] - marks[1], accesses = u64(kRevisit) * kTimes;
    std::printf("user window (%s, %s): %u pages (cap %u): %llu direct faults; %llu accesses to %u of them "
                "again: %llu direct faults (%llu pages mapped again); clears %llu, releases %llu\n",
                vm.kind.name.c_str(),
                static_cast<engine::Bt&>(*vm.eng).user_window_zero() ? "host 0" : "r13", pages, cap, (unsigned long long)first,
                (unsigned long long)accesses, kRevisit, (unsigned long long)again,
                (unsigned long long)st["mmu.window_refills"], (unsigned long long)st["mmu.window_clears"],
                (unsigned long long)st["mmu.window_releases"]);
    // The test did what it says: the window was emptied at its cap and kept.
    EXPECT_GE(st["mmu.window_evicted"], cap);
    EXPECT_TRUE(static_cast<engine::Bt&>(*vm.eng).mmu().window_active());
    // A page faults at most once after the clear (each first touch may fault too).
    EXPECT_LE(again, accesses / 8) << "the window does not map again the pages the TLB still holds";
    EXPECT_LE(first, u64(pages) + pages / 8);
  }
}

// An access through a flat segment with a non-zero base whose offset wraps
// past 4 GiB (sub fs:[ebx-3], ebx with EBX 1: a dword at offset 0xFFFFFFFE)
// raises #GP; base + offset must not wrap to a linear address that is then
// accessed. (Fuzz seed 30482 of the fuzzer at 2f852c8, bt_no_chain after
// seed 28913: bt wrote at linear 0xFE where interp took #GP; fixed by
// c1b05b5's check in the translator, as seed 520314 was.) A byte at offset
// 0xFFFFFFFF does not wrap. Paging off, on, and at CPL 3 through the user
// window, every bt variant in lockstep with the interpreter.
TEST(BtFuzz, SegmentOffsetPast4GiB) {
  // (The fault handler leaves EBX changed: each access sets it first.)
  const std::vector<u8> code = {
      0xBB, 1, 0, 0, 0, 0x64, 0x29, 0x5B, 0xFD,        // mov ebx, 1 ; sub fs:[ebx-3], ebx  (#GP)
      0xBB, 1, 0, 0, 0, 0x64, 0x8B, 0x43, 0xFD,        // mov ebx, 1 ; mov eax, fs:[ebx-3]  (#GP)
      0xBB, 2, 0, 0, 0, 0x66, 0x64, 0x01, 0x5B, 0xFD,  // mov ebx, 2 ; add fs:[ebx-3], bx   (#GP)
      0xBB, 2, 0, 0, 0, 0x64, 0x00, 0x5B, 0xFD,        // mov ebx, 2 ; add fs:[ebx-3], bl   (a byte: linear 0xFF)
      0xBB, 2, 0, 0, 0, 0x65, 0x87, 0x43, 0xFD,        // mov ebx, 2 ; xchg gs:[ebx-3], eax (#GP)
      0xBB, 2, 0, 0, 0, 0x65, 0x88, 0x43, 0xFD,        // mov ebx, 2 ; mov gs:[ebx-3], al   (a byte: linear 0x1FF)
      0xF4};
  for (const auto& kind : test::all_engines()) {
    if (!kind.bt || kind.opt.lockstep) continue;
    for (int mode = 0; mode < 3; mode++) {  // paging off, on, CPL 3
      test::EngineKind k = kind;
      k.opt.lockstep = true;
      k.opt.user_window_claim = 0;
      FuzzVm fv(k);
      const bool paging = mode > 0, user = mode == 2;
      fv.reset_tables(user, user ? kUserPd : kPd);
      fv.resume_table(code, kCode, user);
      fv.vm.code(kCode, code);
      fv.system_state(paging, user, user ? kUserPd : kPd);
      CpuState& s = fv.vm.s;
      s.eip = kCode;
      s.gpr[ESP] = test::kStackTop;
      s.eflags = FLAGS_FIXED1;
      s.seg[FS].base = 0x100;
      s.seg[GS].base = 0x200;
      s.halted = false;
      try {
        for (int n = 0; n < 20 && !s.halted; n++) fv.vm.run(100);
        EXPECT_TRUE(s.halted) << kind.name << " mode " << mode;
        u64 exceptions = 0;
        for (auto& [name, n] : fv.vm.eng->stats())
          if (name == "bt.exceptions") exceptions = n;
        EXPECT_EQ(exceptions, user ? 5u : 4u) << kind.name << " mode " << mode;  // (at CPL 3 the HLT too)
      } catch (const Error& e) {
        ADD_FAILURE() << kind.name << " mode " << mode << ": " << e.what();
      }
    }
  }
}

// ---- engine switching ----
// Each sequence runs on the interpreter alone and again handed at random
// points (chunks of 1 to 64 instructions) between bt and the interpreter
// (Engine::switch_out/switch_in at every handover, as Machine does); both
// runs must end in the same registers, flags, x87 state, memory and port
// writes. POPEK_SWITCH_FUZZ_SEQUENCES (default 1500). Where KVM is usable,
// POPEK_SWITCH_FUZZ_KVM_SEQUENCES sequences (default 30: KVM is slow on the
// project's machines) with paging off (kvm_pvm cannot page) are handed
// among all three engines.
namespace {

// `rf_images`: differences in bit 16 of an aligned dword of RAM (RF in an
// EFLAGS image an exception pushed; see below) are counted there, not reported.
std::string compare_runs(test::TestVm& want, test::TestVm& got, bool icount, u64* rf_images = nullptr) {
  std::string d = machine::compare_states(want.s, got.s);
  if (!d.empty()) return d;
  char b[160];
  if (icount && want.s.icount != got.s.icount) {
    std::snprintf(b, sizeof b, "icount: %llu alone, %llu switched", (unsigned long long)want.s.icount,
                  (unsigned long long)got.s.icount);
    return b;
  }
  if (want.s.halted != got.s.halted || want.s.shutdown != got.s.shutdown) return "halted/shutdown";
  const u64 n = want.pm.ram_size();
  if (std::memcmp(want.pm.ram(), got.pm.ram(), 0xA0000) != 0 ||
      std::memcmp(want.pm.ram() + 0x100000, got.pm.ram() + 0x100000, n - 0x100000) != 0) {
    u64 k = 0, rf = 0;
    for (;; k++) {
      while (k < n && ((k >= 0xA0000 && k < 0x100000) || want.pm.ram()[k] == got.pm.ram()[k])) k++;
      if (k < n && rf_images && k % 4 == 2 && (want.pm.ram()[k] ^ got.pm.ram()[k]) == 1) {
        rf++;
        continue;
      }
      break;
    }
    if (k >= n) {
      *rf_images += rf;
      return {};
    }
    std::snprintf(b, sizeof b, "RAM at %#llx: %02x alone, %02x switched", (unsigned long long)k,
                  want.pm.ram()[k], got.pm.ram()[k]);
    return b;
  }
  if (want.plat.outs != got.plat.outs) return "port writes";
  return {};
}

struct SwitchFuzz {
  u64 sequences = 0, insns = 0, divergences = 0, outside = 0, switches = 0, with_faults = 0;
  u64 exceptions_seen = 0;  // the interpreter-alone VM's exception count so far
  u64 rf_images = 0, rf_sequences = 0;  // RF-only differences in RAM (kvm)
  std::string first;
  u64 schedule_dependent = 0;  // kvm: differed once, agreed when run again
  test::EngineKind ik = test::all_engines()[0];
  test::EngineKind bk;
  SwitchFuzz() {
    for (auto& k : test::all_engines())
      if (k.name == "bt") bk = k;
    bk.opt.user_window_claim = 0;
    bk.opt.code_cache_mb = 8;
  }
  // The switching machine: bt, with interp (and kvm) to switch to.
  std::unique_ptr<FuzzVm> switching(u32 seed, bool kvm) {
    auto sw = std::make_unique<FuzzVm>(bk);
    sw->vm.make_engine();
    sw->vm.alts.push_back(std::make_unique<engine::Interp>(sw->vm.s, sw->vm.pm, sw->vm.plat));
    if (kvm) {
      engine::KvmOptions ko;
      ko.calibrate = false;
      ko.track_writes = true;
      ko.max_slice_ns = 200000;
      sw->vm.alts.push_back(std::make_unique<engine::Kvm>(sw->vm.s, sw->vm.pm, sw->vm.plat, std::move(ko)));
    }
    sw->vm.switch_rng = seed * 7919ull;
    return sw;
  }
  // Seed `seed` alone on fresh machines (kvm among the engines), twice:
  // whether one of the runs agreed with the interpreter.
  bool again(u32 seed) {
    for (int k = 0; k < 2; k++) {
      FuzzVm a(ik);
      auto sw = switching(seed + 1000003u * u32(k + 1), true);
      FuzzResult ra = a.run(seed, "interp");
      FuzzResult rs;
      try {
        rs = sw->run(seed, "switching");
      } catch (const Error&) {
        continue;
      }
      if (!ra.outside_ram && !rs.outside_ram && !rs.diverged && compare_runs(a.vm, sw->vm, false, nullptr).empty())
        return true;
    }
    return false;
  }
  // `kvm`: seeds with paging off only, KVM among the engines.
  void run(u32 seed, u64 count, bool kvm) {
    std::unique_ptr<FuzzVm> alone, sw;
    for (u64 done = 0; done < count; seed++) {
      if (kvm && seed % 5 != 0) continue;  // paging on: not on kvm_pvm
      if (!alone) alone = std::make_unique<FuzzVm>(ik);
      if (!sw) sw = switching(seed, kvm);
      alone->vm.plat.outs.clear();
      sw->vm.plat.outs.clear();
      const u64 sw0 = sw->vm.switches;
      FuzzResult a = alone->run(seed, "interp");
      FuzzResult r;
      try {
        r = sw->run(seed, "switching");
      } catch (const Error& e) {  // kvm: an error of KVM's
        r.diverged = true;
        r.message = e.what();
      }
      done++;
      sequences++;
      insns += a.insns;
      switches += sw->vm.switches - sw0;
      if (a.outside_ram || r.outside_ram) {
        // Both must have left RAM (popek refuses to run there); KVM runs
        // on there (the bytes read as MMIO, all ones), so with kvm only
        // the interpreter's verdict counts.
        if (a.outside_ram != r.outside_ram && !r.diverged && !kvm) {
          r.diverged = true;
          r.message = "one run left RAM, the other did not";
        }
        outside += a.outside_ram;
        alone.reset();
        exceptions_seen = 0;
        if (!r.diverged) {
          sw.reset();
          continue;
        }
      }
      // With kvm, sequences that took an exception are not compared: on
      // kvm_pvm the faulting code runs in KVM's instruction emulator, which
      // departs from the interpreter there (compared anyway, 6 of 22 such
      // sequences differed, the same seeds kvm_bt_fuzz_test counts as the
      // emulator's). popek now pushes RF = 1 for faults as the SDM and KVM
      // do; a difference in RAM that is only RF of an aligned dword is still
      // counted apart.
      if (kvm && !r.diverged) {
        u64 exc = 0;
        for (auto& [k, v] : alone->vm.eng->stats())
          if (k == "interp.exceptions") exc = v;
        if (exc != exceptions_seen) {
          exceptions_seen = exc;
          with_faults++;
          continue;
        }
      }
      const u64 rf0 = rf_images;
      std::string d = r.diverged ? r.message : compare_runs(alone->vm, sw->vm, !kvm, kvm ? &rf_images : nullptr);
      rf_sequences += rf_images != rf0;
      // With kvm the schedule is in host time, so which instructions KVM's
      // emulator runs changes from run to run, and that emulator departs from
      // the SDM in places (docs/kvm.md lists those measured): a sequence that
      // differs is run twice more on fresh machines with other schedules, and
      // counts as a divergence only if it differs every time. (Seed 140's
      // difference, a byte above the stack in 1 run of 6, is not analysed.)
      if (!d.empty() && kvm && again(seed)) {
        schedule_dependent++;
        if (std::getenv("POPEK_FUZZ_DEBUG")) std::printf("seed %u: %s (agreed when run again)\n", seed, d.c_str());
        alone.reset();
        exceptions_seen = 0;
        sw.reset();
        continue;
      }
      if (!d.empty()) {
        if (std::getenv("POPEK_FUZZ_DEBUG")) std::printf("seed %u: %s\n", seed, d.c_str());
        if (divergences++ == 0) first = "seed " + std::to_string(seed) + (kvm ? " (with kvm)" : "") + ": " + d;
        alone.reset();
        exceptions_seen = 0;
        sw.reset();
      }
    }
  }
};

}  // namespace

TEST(BtFuzz, SwitchingEnginesAgreesWithTheInterpreterAlone) {
  const char* n = std::getenv("POPEK_SWITCH_FUZZ_SEQUENCES");
  SwitchFuzz f;
  f.run(1, n ? std::strtoull(n, nullptr, 0) : 1500, false);
  std::printf("switch fuzz (interp, bt): %llu sequences, %llu instructions, %llu switches, %llu divergences "
              "(%llu sequences ended jumping outside RAM)\n",
              (unsigned long long)f.sequences, (unsigned long long)f.insns, (unsigned long long)f.switches,
              (unsigned long long)f.divergences, (unsigned long long)f.outside);
  EXPECT_EQ(f.divergences, 0u) << f.first;
  EXPECT_GT(f.switches, 1000u);
}

TEST(BtFuzz, SwitchingEnginesWithKvmAgreesWithTheInterpreterAlone) {
  const engine::KvmProbe p = engine::kvm_available();
  if (!p.usable) GTEST_SKIP() << "kvm not usable here: " << p.why;
  const char* n = std::getenv("POPEK_SWITCH_FUZZ_KVM_SEQUENCES");
  SwitchFuzz f;
  const char* sd = std::getenv("POPEK_SWITCH_FUZZ_SEED");
  f.run(sd ? u32(std::atoi(sd)) : 5, n ? std::strtoull(n, nullptr, 0) : 30, true);
  std::printf("switch fuzz (interp, bt, kvm on %s): %llu sequences, %llu instructions, %llu switches, %llu "
              "divergences (%llu sequences ended jumping outside RAM, %llu took an exception: not compared; "
              "%llu differed only in RF of a pushed EFLAGS image; %llu differed once and agreed when run "
              "again with other schedules)\n",
              p.flavour.c_str(), (unsigned long long)f.sequences, (unsigned long long)f.insns,
              (unsigned long long)f.switches, (unsigned long long)f.divergences, (unsigned long long)f.outside,
              (unsigned long long)f.with_faults, (unsigned long long)f.rf_sequences,
              (unsigned long long)f.schedule_dependent);
  EXPECT_EQ(f.divergences, 0u) << f.first;
  EXPECT_GT(f.switches, 10u);
}
