#include "snapshot/stream.h"

#include <gtest/gtest.h>

#include <random>

using namespace popek;
using namespace popek::snap;

namespace {

std::vector<u8> sample(std::vector<u8>* ram_out = nullptr) {
  MemorySink sink;
  StreamWriter w(sink);
  SectionWriter a;
  a.u64v("eax", 0x12345678);
  a.i64v("neg", -5);
  a.str("name", "popek");
  u32 arr[3] = {1, 2, 3};
  a.array("arr", arr);
  w.section("cpu", 2, a);
  std::vector<u8> ram(8 * kPageSize, 0);
  for (usize i = 0; i < kPageSize; i++) ram[3 * kPageSize + i] = u8(i * 7);
  ram[6 * kPageSize + 100] = 1;
  write_ram(w, 0, 8, ram.data());
  w.end();
  if (ram_out) *ram_out = ram;
  return sink.bytes;
}

struct Loaded {
  u64 eax = 0;
  i64 neg = 0;
  std::string name;
  u32 arr[3] = {};
  std::vector<u8> ram = std::vector<u8>(8 * kPageSize, 0xEE);
};

void load(const std::vector<u8>& bytes, Loaded& l, u32 cpu_max = 2) {
  MemorySource src(bytes);
  StreamReader r(src, "test");
  Loader ld;
  ld.on("cpu", cpu_max, [&](const Section& s) {
    l.eax = s.u64v("eax");
    l.neg = s.i64v("neg");
    l.name = s.str("name");
    s.array("arr", l.arr);
    s.check_all_read();
  });
  ld.on("ram", kRamVersion, [&](const Section& s) {
    load_ram(s, [&](u64 ppn) -> u8* { return ppn < 8 ? l.ram.data() + ppn * kPageSize : nullptr; });
  }, true);
  ld.run(r);
}

TEST(SnapshotStream, RoundTrip) {
  std::vector<u8> ram;
  auto bytes = sample(&ram);
  Loaded l;
  load(bytes, l);
  EXPECT_EQ(l.eax, 0x12345678u);
  EXPECT_EQ(l.neg, -5);
  EXPECT_EQ(l.name, "popek");
  EXPECT_EQ(l.arr[2], 3u);
  EXPECT_EQ(l.ram, ram);  // zero pages written as zeros over the 0xEE fill
}

TEST(SnapshotStream, ZeroPagesElidedAndCompressed) {
  MemorySink sink;
  StreamWriter w(sink);
  std::vector<u8> ram(1024 * kPageSize, 0);
  for (usize p = 0; p < 1024; p += 2) ram[p * kPageSize] = 1;  // half the pages, very compressible
  RamStats st;
  write_ram(w, 0, 1024, ram.data(), &st);
  EXPECT_EQ(st.zero_pages, 512u);
  EXPECT_LT(sink.bytes.size(), 64u * 1024);
}

TEST(SnapshotStream, NewerSectionVersionRefused) {
  auto bytes = sample();
  Loaded l;
  try {
    load(bytes, l, 1);
    FAIL();
  } catch (const FormatError& e) {
    EXPECT_NE(std::string(e.what()).find("section 'cpu' has version 2"), std::string::npos) << e.what();
  }
}

TEST(SnapshotStream, OlderSectionWithoutNewFieldLoads) {
  MemorySink sink;
  StreamWriter w(sink);
  SectionWriter a;
  a.u64v("x", 1);
  w.section("dev", 1, a);
  w.end();
  MemorySource src(sink.bytes);
  StreamReader r(src, "t");
  Loader ld;
  u64 x = 0, y = 0;
  ld.on("dev", 2, [&](const Section& s) {
    x = s.u64v("x");
    y = s.version >= 2 ? s.u64v("y") : 42;  // the field version 2 added
    s.check_all_read();
  });
  ld.run(r);
  EXPECT_EQ(x, 1u);
  EXPECT_EQ(y, 42u);
}

TEST(SnapshotStream, UnknownSectionNamed) {
  MemorySink sink;
  StreamWriter w(sink);
  w.section("frobnicator", 1, SectionWriter{});
  w.end();
  MemorySource src(sink.bytes);
  StreamReader r(src, "t");
  Loader ld;
  try {
    ld.run(r);
    FAIL();
  } catch (const FormatError& e) {
    EXPECT_NE(std::string(e.what()).find("unknown section 'frobnicator'"), std::string::npos) << e.what();
  }
}

TEST(SnapshotStream, MissingSectionNamed) {
  MemorySink sink;
  StreamWriter w(sink);
  w.end();
  MemorySource src(sink.bytes);
  StreamReader r(src, "t");
  Loader ld;
  ld.on("cpu", 1, [](const Section&) {});
  try {
    ld.run(r);
    FAIL();
  } catch (const FormatError& e) {
    EXPECT_NE(std::string(e.what()).find("section 'cpu' is missing"), std::string::npos) << e.what();
  }
}

TEST(SnapshotStream, UnreadFieldRefused) {
  MemorySink sink;
  StreamWriter w(sink);
  SectionWriter a;
  a.u64v("x", 1);
  a.u64v("later", 2);
  w.section("dev", 1, a);
  w.end();
  MemorySource src(sink.bytes);
  StreamReader r(src, "t");
  Loader ld;
  ld.on("dev", 1, [&](const Section& s) {
    s.u64v("x");
    s.check_all_read();
  });
  EXPECT_THROW(ld.run(r), FormatError);
}

TEST(SnapshotStream, EveryTruncationRefused) {
  auto bytes = sample();
  for (usize n = 0; n < bytes.size(); n++) {
    std::vector<u8> cut(bytes.begin(), bytes.begin() + n);
    Loaded l;
    try {
      load(cut, l);
      FAIL() << "truncated at " << n << " loaded";
    } catch (const FormatError& e) {
      EXPECT_NE(std::string(e.what()).find("unexpected end"), std::string::npos) << n << ": " << e.what();
    }
  }
}

TEST(SnapshotStream, EveryBitFlipRefused) {
  auto bytes = sample();
  std::mt19937 rng(1);
  for (usize i = 0; i < bytes.size(); i++) {
    auto bad = bytes;
    bad[i] ^= u8(1u << (rng() % 8));
    Loaded l;
    EXPECT_THROW(load(bad, l), FormatError) << "flip at byte " << i;
  }
}

TEST(SnapshotStream, ChecksumMismatchNamesSection) {
  auto bytes = sample();
  // The cpu section's payload starts after header (16) + "SECT" + 1 + "cpu" + 4 + 8 + 4.
  bytes[16 + 4 + 1 + 3 + 16 + 3] ^= 0x10;
  Loaded l;
  try {
    load(bytes, l);
    FAIL();
  } catch (const FormatError& e) {
    EXPECT_NE(std::string(e.what()).find("checksum mismatch in section 'cpu'"), std::string::npos) << e.what();
  }
}

TEST(SnapshotStream, BadMagicAndVersion) {
  auto bytes = sample();
  Loaded l;
  auto b1 = bytes;
  b1[0] = 'X';
  EXPECT_THROW(load(b1, l), FormatError);
  auto b2 = bytes;
  b2[8] = 9;
  try {
    load(b2, l);
    FAIL();
  } catch (const FormatError& e) {
    EXPECT_NE(std::string(e.what()).find("format version 9"), std::string::npos) << e.what();
  }
}

TEST(SnapshotStream, RamToNonRamRefused) {
  MemorySink sink;
  StreamWriter w(sink);
  std::vector<u8> ram(2 * kPageSize, 1);
  write_ram(w, 7, 2, ram.data());
  w.end();
  Loaded l;
  EXPECT_THROW(load(sink.bytes, l), FormatError);
}

}  // namespace

namespace {
// A live migration's stream: all of RAM, then passes naming the pages they
// carry ("ram-pages"): exactly those are overwritten (zero pages included),
// the others keep what earlier sections gave them.
TEST(SnapshotStream, RamPagesOverwriteOnlyTheirPages) {
  std::vector<u8> ram(8 * kPageSize, 0);
  for (usize p = 0; p < 8; p++) ram[p * kPageSize + 5] = u8(p + 1);
  MemorySink sink;
  StreamWriter w(sink);
  write_ram(w, 0, 8, ram.data());
  std::vector<u8> later = ram;
  later[2 * kPageSize + 9] = 0x42;                          // page 2 written
  std::fill(later.begin() + 6 * kPageSize, later.begin() + 7 * kPageSize, 0);  // page 6 zeroed
  later[4 * kPageSize + 1] = 0x99;                          // page 4 written, but not sent: stays old
  const u32 pages[] = {6, 2};
  RamStats st;
  write_ram_pages(w, pages, [&](u64 ppn) -> const u8* { return later.data() + ppn * kPageSize; }, &st);
  EXPECT_EQ(st.pages, 2u);
  EXPECT_EQ(st.zero_pages, 1u);
  w.end();
  std::vector<u8> got(8 * kPageSize, 0xEE);
  MemorySource src(sink.bytes);
  StreamReader r(src, "test");
  Loader ld;
  auto page = [&](u64 ppn) -> u8* { return ppn < 8 ? got.data() + ppn * kPageSize : nullptr; };
  ld.on("ram", kRamVersion, [&](const Section& s) { load_ram(s, page); }, true);
  ld.on("ram-pages", kRamPagesVersion, [&](const Section& s) { load_ram_pages(s, page); }, true);
  ld.run(r);
  std::vector<u8> want = ram;
  std::copy(later.begin() + 2 * kPageSize, later.begin() + 3 * kPageSize, want.begin() + 2 * kPageSize);
  std::fill(want.begin() + 6 * kPageSize, want.begin() + 7 * kPageSize, 0);
  EXPECT_EQ(got, want);
  // A page outside RAM is refused, naming it.
  MemorySink bad;
  StreamWriter wb(bad);
  const u32 out[] = {9};
  write_ram_pages(wb, out, [&](u64) -> const u8* { return later.data(); });
  wb.end();
  MemorySource bsrc(bad.bytes);
  StreamReader br(bsrc, "test");
  Loader bl;
  bl.on("ram-pages", kRamPagesVersion, [&](const Section& s) { load_ram_pages(s, page); }, true);
  try {
    bl.run(br);
    ADD_FAILURE() << "a page outside RAM was loaded";
  } catch (const FormatError& e) {
    EXPECT_NE(std::string(e.what()).find("page 9 is not RAM"), std::string::npos) << e.what();
  }
}
}  // namespace
