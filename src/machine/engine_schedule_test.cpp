// --engine-schedule's grammar and slices, and the hybrid policy's decisions.
#include <gtest/gtest.h>

#include <map>

#include "base/error.h"
#include "machine/engine_schedule.h"
#include "machine/hybrid_policy.h"

using namespace popek;
using namespace popek::machine;

TEST(EngineSchedule, CycleRepeats) {
  EngineSchedule s = parse_engine_schedule("interp:1ms,bt:20k,kvm:5ms");
  ASSERT_EQ(s.cycle.size(), 3u);
  EXPECT_FALSE(s.random);
  SliceSource src(s);
  for (int round = 0; round < 2; round++) {
    auto a = src.next();
    EXPECT_EQ(a.first, EngineKind::interp);
    EXPECT_TRUE(a.second.time);
    EXPECT_EQ(a.second.n, 1000000u);
    auto b = src.next();
    EXPECT_EQ(b.first, EngineKind::bt);
    EXPECT_FALSE(b.second.time);
    EXPECT_EQ(b.second.n, 20000u);
    EXPECT_EQ(src.next().first, EngineKind::kvm);
  }
  EXPECT_EQ(s.uses(), (std::vector<EngineKind>{EngineKind::interp, EngineKind::bt, EngineKind::kvm}));
}

TEST(EngineSchedule, RandomSwitchesEverySliceWithinItsRange) {
  EngineSchedule s = parse_engine_schedule("random:42:interp,bt,kvm:100us-2ms");
  ASSERT_TRUE(s.random);
  SliceSource a(s), b(s);
  std::map<EngineKind, int> seen;
  EngineKind last{};
  for (int i = 0; i < 1000; i++) {
    auto x = a.next(), y = b.next();
    EXPECT_EQ(x.first, y.first);  // the same seed, the same schedule
    EXPECT_EQ(x.second.n, y.second.n);
    EXPECT_TRUE(x.second.time);
    EXPECT_GE(x.second.n, 100000u);
    EXPECT_LE(x.second.n, 2000000u);
    if (i) {
      EXPECT_NE(x.first, last);
    }
    last = x.first;
    seen[x.first]++;
  }
  EXPECT_EQ(seen.size(), 3u);
  SliceSource c(parse_engine_schedule("random:43:interp,bt,kvm:100us-2ms"));
  bool differs = false;
  SliceSource d(s);
  for (int i = 0; i < 20; i++) differs |= c.next().second.n != d.next().second.n;
  EXPECT_TRUE(differs);
}

TEST(EngineSchedule, BadSpecsSayWhy) {
  for (const char* bad : {"", "interp", "interp:", "interp:0", "qemu:1ms", "kvm:50k", "interp:1h",
                          "random:1:interp:1k-2k", "random:x:interp,bt:1k-2k", "random:1:interp,bt:2k-1k",
                          "random:1:interp,bt:1k-2ms", "random:1:interp,kvm:1k-2k", "random:1:bt,bt:1-2"}) {
    EXPECT_THROW(parse_engine_schedule(bad), Error) << bad;
  }
  try {
    parse_engine_schedule("kvm:50k");
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("kvm does not count instructions"), std::string::npos) << e.what();
  }
}

TEST(EngineSchedule, CompareStatesNamesTheField) {
  x86::CpuState a, b;
  EXPECT_EQ(compare_states(a, b), "");
  b.seg[x86::SS].base = 0x1000;
  EXPECT_NE(compare_states(a, b).find("ss.base"), std::string::npos);
  b = a;
  b.intr_shadow = 1;
  EXPECT_NE(compare_states(a, b).find("interrupt shadow"), std::string::npos);
}

TEST(HybridPolicy, MovesToBtWhenExitsDominateAndBackWhenTheyStop) {
  HybridCosts c;
  c.exit_ns = 5000;    // 5 us per exit
  c.kvm_ips = 1e9;     // 1,000 MIPS between exits
  c.switch_ns = 20000;
  HybridPolicy p(c);
  // 1 ms runs on kvm with 20 exits: 10 % of the time in exits: stays.
  for (int i = 0; i < 20; i++) EXPECT_FALSE(p.on_kvm(20, 1000000));
  // 150 exits per ms: 75 %: moves after `confirm` windows of 4 ms.
  bool moved = false;
  int runs = 0;
  while (!moved && runs < 100) moved = p.on_kvm(150, 1000000), runs++;
  EXPECT_TRUE(moved);
  EXPECT_EQ(runs, 8);  // two 4 ms windows
  p.switched();
  // On bt: one event per 50 instructions would cost kvm 5 us of exits per
  // 50 ns of running: stays.
  for (int i = 0; i < 20; i++) EXPECT_FALSE(p.on_bt(1000, 50000, 100000));
  // No events: moves back (after two windows of 200,000 instructions).
  runs = 0;
  moved = false;
  while (!moved && runs < 100) moved = p.on_bt(0, 50000, 100000), runs++;
  EXPECT_TRUE(moved);
  EXPECT_EQ(runs, 8);
}

TEST(HybridPolicy, AStretchOnBtPaysForItsHandovers) {
  HybridCosts c;
  c.exit_ns = 5000;
  c.kvm_ips = 1e9;
  c.switch_ns = 50e6;  // 50 ms per round trip: 500 ms on bt at least
  HybridPolicy p(c);
  int runs = 0;
  while (!p.on_bt(0, 100000, 1000000) && runs < 10000) runs++;
  EXPECT_GE(runs, 499);
  EXPECT_LT(runs, 10000);
}
