// Malformed virtqueues against every device (blk, net, rng):
//
// 1. Property: each kind of malformed ring or chain, built on top of a
//    well-formed request, makes the device report DEVICE_NEEDS_RESET with a
//    configuration interrupt, and after a reset the device works again.
// 2. Random: descriptor tables, available rings and indices full of random
//    values (addresses in RAM, at its edge, past it, wrapping; random lengths,
//    flags and next indices), mixed with valid requests, notifications on
//    random queues and incoming frames. The device must not crash or hang,
//    must not touch memory outside guest RAM (guest RAM is an exact heap
//    block, so ASan — the unit label's sanitizer run — catches any stray
//    access), and must not report writes outside RAM.
//
// VIRTIO_FUZZ_ITERS (default 20000 per device) and VIRTIO_FUZZ_SEED select
// the random part's size and seed; the test prints what it ran.
#include <gtest/gtest.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <random>

#include "base/log.h"
#include "block/file.h"
#include "block/raw.h"
#include "devices/virtio/blk.h"
#include "devices/virtio/net.h"
#include "devices/virtio/rng.h"
#include "devices/virtio/test_driver.h"

using namespace popek;
using namespace popek::dev::virtio;
using namespace popek::dev::virtio::test;

namespace {

constexpr u64 kRam = 2 << 20;

class Loopback final : public net::NetBackend {
 public:
  u64 sent = 0;
  std::string describe() const override { return "loopback"; }
  void send(const u8*, usize) override { sent++; }
  void io_fill(std::vector<pollfd>&, int*) override {}
  void io_dispatch(const pollfd*, usize) override {}
  void inject(const std::vector<u8>& f) { deliver(f.data(), f.size()); }
};

enum class Kind { blk, net, rng };
const char* kind_name(Kind k) { return k == Kind::blk ? "blk" : k == Kind::net ? "net" : "rng"; }

struct Dut {
  Kind kind;
  TestMem& mem;
  std::unique_ptr<VirtioDevice> dev;
  VirtioBlk* blk = nullptr;
  Loopback* lo = nullptr;

  Dut(Kind k, TestMem& m, bool sync_blk = true) : kind(k), mem(m) {
    static const u8 mac[6] = {2, 0, 0, 0, 0, 1};
    switch (k) {
      case Kind::blk: {
        auto f = std::make_unique<block::MemFile>("fuzz.img", std::vector<u8>(32 * 1024), true);
        VirtioBlk::Options o;
        o.synchronous = sync_blk;
        o.queue_size = 16;
        o.serial = "fuzz";
        auto b = std::make_unique<VirtioBlk>("virtio-blk-fuzz", m, std::make_unique<block::RawBackend>(std::move(f)), o);
        blk = b.get();
        dev = std::move(b);
        break;
      }
      case Kind::net: {
        auto l = std::make_unique<Loopback>();
        lo = l.get();
        dev = std::make_unique<VirtioNet>("virtio-net-fuzz", m, std::move(l), mac, 16);
        break;
      }
      case Kind::rng:
        dev = std::make_unique<VirtioRng>("virtio-rng-fuzz", m, 16);
        break;
    }
  }
  void settle() {
    if (blk) blk->drain();
  }
  // A well-formed request for queue q of this device.
  std::vector<Seg> good(TestDriver& d, unsigned* q) {
    switch (kind) {
      case Kind::blk: {
        const u64 h = d.alloc(16), data = d.alloc(1024), st = d.alloc(1);
        const u32 type = 0;  // read
        std::memcpy(mem.at(h), &type, 4);
        *q = 0;
        return {{h, 16, false}, {data, 1024, true}, {st, 1, true}};
      }
      case Kind::net: {
        *q = 1;  // transmit
        const u64 h = d.alloc(12 + 60);
        return {{h, 12, false}, {h + 12, 60, false}};
      }
      case Kind::rng:
        *q = 0;
        return {{d.alloc(64), 64, true}};
    }
    return {};
  }
};

// ---- 1. property: each malformation -> NEEDS_RESET ----

struct Malformation {
  const char* name;
  // Builds the bad ring for queue q (size n) given a valid chain's segments.
  std::function<void(TestDriver&, TestMem&, unsigned q, const std::vector<Seg>&)> make;
};

std::vector<Malformation> malformations() {
  return {
      {"avail index runs past the queue size",
       [](TestDriver& d, TestMem&, unsigned q, const std::vector<Seg>&) {
         d.set_avail_idx(q, u16(d.qsize(q) + 1));
       }},
      {"head index out of range",
       [](TestDriver& d, TestMem&, unsigned q, const std::vector<Seg>&) { d.publish(q, d.qsize(q)); }},
      {"next index out of range",
       [](TestDriver& d, TestMem&, unsigned q, const std::vector<Seg>& s) {
         d.put_desc(q, 0, s[0].gpa, s[0].len, kDescFNext, 0xFFFF);
         d.publish(q, 0);
       }},
      {"descriptor loop",
       [](TestDriver& d, TestMem&, unsigned q, const std::vector<Seg>& s) {
         d.put_desc(q, 0, s[0].gpa, s[0].len, u16(kDescFNext | (s[0].write ? kDescFWrite : 0)), 1);
         d.put_desc(q, 1, s[0].gpa, s[0].len, u16(kDescFNext | (s[0].write ? kDescFWrite : 0)), 0);
         d.publish(q, 0);
       }},
      {"chain longer than the queue",
       [](TestDriver& d, TestMem&, unsigned q, const std::vector<Seg>& s) {
         const u16 n = d.qsize(q);
         for (u16 i = 0; i < n; i++)
           d.put_desc(q, i, s[0].gpa, 1, u16(kDescFNext | (s[0].write ? kDescFWrite : 0)), u16((i + 1) % n));
         d.publish(q, 0);
       }},
      {"buffer past the end of RAM",
       [](TestDriver& d, TestMem& m, unsigned q, const std::vector<Seg>& s) {
         std::vector<Seg> t = s;
         t.back().gpa = m.size() - 1;
         t.back().len = 2;
         d.add(q, t);
       }},
      {"buffer address wraps around",
       [](TestDriver& d, TestMem&, unsigned q, const std::vector<Seg>& s) {
         std::vector<Seg> t = s;
         t[0].gpa = ~0ull - 3;
         d.add(q, t);
       }},
      {"readable descriptor after a writable one",
       [](TestDriver& d, TestMem& m, unsigned q, const std::vector<Seg>& s) {
         std::vector<Seg> t = s;
         const bool w = !t.back().write;
         t.push_back({t.back().gpa, 1, true});
         t.push_back({t.back().gpa, 1, false});
         (void)w;
         d.add(q, t);
       }},
      {"indirect table inside an indirect table",
       [](TestDriver& d, TestMem& m, unsigned q, const std::vector<Seg>&) {
         const u64 outer = d.alloc(16), inner = d.alloc(16);
         u8 desc[16] = {};
         const u32 l = 16;
         const u16 fl = kDescFIndirect;
         std::memcpy(desc, &inner, 8);
         std::memcpy(desc + 8, &l, 4);
         std::memcpy(desc + 12, &fl, 2);
         m.put(outer, desc, 16);
         d.put_desc(q, 0, outer, 16, kDescFIndirect, 0);
         d.publish(q, 0);
       }},
      {"INDIRECT together with NEXT",
       [](TestDriver& d, TestMem&, unsigned q, const std::vector<Seg>&) {
         d.put_desc(q, 0, d.alloc(32), 32, kDescFIndirect | kDescFNext, 1);
         d.publish(q, 0);
       }},
      {"indirect table length not a multiple of 16",
       [](TestDriver& d, TestMem&, unsigned q, const std::vector<Seg>&) {
         d.put_desc(q, 0, d.alloc(32), 24, kDescFIndirect, 0);
         d.publish(q, 0);
       }},
      {"indirect table outside RAM",
       [](TestDriver& d, TestMem& m, unsigned q, const std::vector<Seg>&) {
         d.put_desc(q, 0, m.size() - 8, 16, kDescFIndirect, 0);
         d.publish(q, 0);
       }},
  };
}

// Device-specific malformed requests: the device would write into a
// read-only buffer, or a mandatory part is missing.
std::vector<std::pair<const char*, std::function<void(Dut&, TestDriver&)>>> device_malformations(Kind k) {
  switch (k) {
    case Kind::blk:
      return {{"blk read into a device-readable buffer",
               [](Dut&, TestDriver& d) {
                 const u64 h = d.alloc(16), st = d.alloc(1);
                 d.add(0, {{h, 16, false}, {d.alloc(512), 512, false}, {st, 1, true}});
                 d.kick(0);
               }},
              {"blk request without status byte",
               [](Dut&, TestDriver& d) {
                 d.add(0, {{d.alloc(16), 16, false}});
                 d.kick(0);
               }},
              {"blk header shorter than 16 bytes",
               [](Dut&, TestDriver& d) {
                 d.add(0, {{d.alloc(16), 12, false}, {d.alloc(1), 1, true}});
                 d.kick(0);
               }}};
    case Kind::net:
      return {{"net receive buffer that is device-readable",
               [](Dut& u, TestDriver& d) {
                 d.add(0, {{d.alloc(2048), 2048, false}});
                 d.kick(0);
                 u.lo->inject(std::vector<u8>(60, 1));
               }},
              {"net transmit without its header",
               [](Dut&, TestDriver& d) {
                 d.add(1, {{d.alloc(8), 8, false}});
                 d.kick(1);
               }}};
    case Kind::rng:
      return {{"rng device-readable buffer", [](Dut&, TestDriver& d) {
                 d.add(0, {{d.alloc(16), 16, false}});
                 d.kick(0);
               }}};
  }
  return {};
}

void expect_needs_reset(Dut& u, const std::string& what) {
  EXPECT_TRUE(u.dev->status() & kStatusNeedsReset) << kind_name(u.kind) << ": " << what;
  EXPECT_TRUE(u.dev->isr() & kIsrConfig) << kind_name(u.kind) << ": " << what;
  EXPECT_EQ(u.mem.written_outside, 0u);
}

void expect_recovers(Dut& u) {
  TestDriver d(*u.dev, u.mem);
  d.init();
  EXPECT_FALSE(u.dev->broken());
  unsigned q;
  auto segs = u.good(d, &q);
  d.add(q, segs);
  d.kick(q);
  u.settle();
  u32 id, len;
  EXPECT_TRUE(d.take_used(q, &id, &len)) << kind_name(u.kind) << " works after reset";
}

}  // namespace

TEST(VirtioFuzz, EveryMalformationNeedsReset) {
  int cases = 0;
  for (Kind k : {Kind::blk, Kind::net, Kind::rng}) {
    for (const auto& m : malformations()) {
      for (bool indirect_good : {false, true}) {
        TestMem mem(kRam);
        Dut u(k, mem);
        TestDriver d(*u.dev, mem);
        d.init();
        unsigned q;
        auto segs = u.good(d, &q);
        if (indirect_good) {  // a good request first, so the ring is not fresh
          d.add(q, segs, true);
          d.kick(q);
          u.settle();
          d.init();
        }
        m.make(d, mem, q, segs);
        d.kick(q);
        u.settle();
        expect_needs_reset(u, m.name);
        // Still broken: further notifications do nothing.
        d.kick(q);
        expect_recovers(u);
        cases++;
      }
    }
    for (auto& [name, make] : device_malformations(k)) {
      TestMem mem(kRam);
      Dut u(k, mem);
      TestDriver d(*u.dev, mem);
      d.init();
      make(u, d);
      u.settle();
      expect_needs_reset(u, name);
      expect_recovers(u);
      cases++;
    }
  }
  std::printf("virtio property test: %d malformed-ring cases, each NEEDS_RESET then recovered\n", cases);
}

TEST(VirtioFuzz, RandomRings) {
  const char* it_env = std::getenv("VIRTIO_FUZZ_ITERS");
  const char* seed_env = std::getenv("VIRTIO_FUZZ_SEED");
  const int iters = it_env ? std::atoi(it_env) : 20000;
  // One warning per broken device would flood the log.
  const LogLevel saved = log_level();
  set_log_level(LogLevel::error);
  const u64 seed = seed_env ? std::strtoull(seed_env, nullptr, 0) : 0x706f70656bull;
  std::mt19937_64 rng(seed);
  auto rnd = [&](u64 n) { return n ? rng() % n : 0; };
  u64 execs = 0, kicks = 0, resets = 0, used_total = 0;
  for (Kind k : {Kind::blk, Kind::net, Kind::rng}) {
    TestMem mem(kRam);
    for (int it = 0; it < iters; it++) {
      Dut u(k, mem, /*sync_blk=*/rnd(4) != 0);
      TestDriver d(*u.dev, mem);
      u64 want = rng() | bit(kFVersion1);
      const u16 qs = u16(1u << rnd(5));  // 1..16
      d.init(want, qs);
      auto addr = [&]() -> u64 {
        switch (rnd(8)) {
          case 0: return mem.size() - rnd(64);
          case 1: return mem.size() + rnd(1 << 20);
          case 2: return ~0ull - rnd(4096);
          case 3: return rng();
          case 4: return d.desc(unsigned(rnd(u.dev->num_queues()))) + rnd(0x10000);
          default: return TestDriver::kDataBase + rnd(0x40000);
        }
      };
      auto len = [&]() -> u32 {
        switch (rnd(6)) {
          case 0: return u32(rng());
          case 1: return 0;
          case 2: return u32(rnd(17));
          default: return u32(rnd(4096));
        }
      };
      const int rounds = 1 + int(rnd(6));
      for (int r = 0; r < rounds; r++) {
        const unsigned q = unsigned(rnd(u.dev->num_queues() + 1));  // sometimes a queue that does not exist
        const unsigned qq = q % u.dev->num_queues();
        const u64 pick = rnd(8);
        switch (pick < 3 ? 0 : pick < 5 ? 1 : pick < 7 ? 2 : 3) {
          case 0: {  // a valid request
            unsigned gq;
            auto segs = u.good(d, &gq);
            d.add(gq, segs, rnd(2));
            break;
          }
          case 1: {  // random descriptors, then publish random heads
            const u16 n = d.qsize(qq);
            for (int i = 0; i < 1 + int(rnd(n)); i++)
              d.put_desc(qq, u16(rnd(n)), addr(), len(), u16(rnd(8)), u16(rnd(4) ? rnd(n) : rng()));
            for (int i = 0; i < 1 + int(rnd(3)); i++) d.publish(qq, u16(rnd(5) ? rnd(n) : rng()));
            break;
          }
          case 2: {  // an indirect table of random descriptors
            const u32 cnt = 1 + u32(rnd(8));
            const u64 t = d.alloc(16 * cnt);
            for (u32 i = 0; i < cnt; i++) {
              u8 desc[16];
              const u64 a = addr();
              const u32 l = len();
              const u16 fl = u16(rnd(8)), nx = u16(rnd(cnt + 1));
              std::memcpy(desc, &a, 8);
              std::memcpy(desc + 8, &l, 4);
              std::memcpy(desc + 12, &fl, 2);
              std::memcpy(desc + 14, &nx, 2);
              mem.put(t + 16 * i, desc, 16);
            }
            const u16 head = u16(rnd(d.qsize(qq)));
            d.put_desc(qq, head, rnd(8) ? t : addr(), rnd(8) ? 16 * cnt : len(), u16(kDescFIndirect | (rnd(8) ? 0 : rnd(8))), 0);
            d.publish(qq, head);
            break;
          }
          case 3:  // the available index jumps
            d.set_avail_idx(qq, u16(rng()));
            break;
        }
        if (u.lo && rnd(2)) u.lo->inject(std::vector<u8>(rnd(3000), u8(it)));
        d.kick(q);
        kicks++;
        u.settle();
        ASSERT_EQ(mem.written_outside, 0u) << kind_name(k) << " iteration " << it;
      }
      // (The used ring itself may have been overwritten: random buffers may
      // point at the rings, which is the guest's business. Count from the
      // device's side.)
      for (unsigned q = 0; q < u.dev->num_queues(); q++) used_total += u.dev->queue(q).used_idx();
      if (u.dev->broken()) {
        resets++;
        EXPECT_TRUE(u.dev->isr() & kIsrConfig);
      }
      execs++;
    }
  }
  set_log_level(saved);
  std::printf("virtio fuzz: %llu device runs (seed %#llx), %llu notifications, %llu used buffers, "
              "%llu ended in NEEDS_RESET\n",
              (unsigned long long)execs, (unsigned long long)seed, (unsigned long long)kicks,
              (unsigned long long)used_total, (unsigned long long)resets);
}
