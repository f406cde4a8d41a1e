// Unit tests for the qcow2 backend: allocation, tables, refcounts, backing
// files, zero clusters, repair, and refusal of bad images without writing them.
#include <gtest/gtest.h>

#include <cstring>
#include <random>

#include "base/error.h"
#include "block/compress.h"
#include "block/qcow2/qcow2.h"
#include "block/raw.h"
#include "block/test_util.h"

using namespace popek;
using namespace popek::block;
using namespace popek::block::test;

namespace {

std::unique_ptr<Qcow2Backend> open_q(const std::string& path, bool ro = false) {
  OpenOptions o;
  o.read_only = ro;
  auto b = open_image(path, o);
  return std::unique_ptr<Qcow2Backend>(static_cast<Qcow2Backend*>(b.release()));
}

void expect_clean(const std::string& path) {
  OpenOptions o;
  o.read_only = true;
  o.for_check = true;
  Qcow2Backend q(open_posix_file(path, false), o);
  CheckResult r = q.check();
  std::string all;
  for (auto& m : r.messages) all += m + "\n";
  EXPECT_TRUE(r.clean()) << all;
}

// Random writes against a model of the disk, read back before and after reopen.
void random_io(const std::string& path, u64 size, int ops, u64 seed, usize max_len,
               std::vector<u8>* model) {
  std::mt19937_64 rng(seed);
  auto b = open_q(path);
  for (int i = 0; i < ops; i++) {
    usize len = 1 + rng() % max_len;
    u64 off = rng() % (size - len);
    int kind = static_cast<int>(rng() % 10);
    if (kind < 7) {
      auto d = pattern(len, rng());
      b->write(off, d.data(), len);
      std::memcpy(model->data() + off, d.data(), len);
    } else if (kind < 8) {
      b->discard(off, len);
      std::memset(model->data() + off, 0, len);
    } else if (kind < 9) {
      b->write_zeroes(off, len);
      std::memset(model->data() + off, 0, len);
    } else {
      b->flush();
    }
    if (i % 16 == 0) {
      std::vector<u8> got(len);
      b->read(off, got.data(), len);
      ASSERT_EQ(0, std::memcmp(got.data(), model->data() + off, len)) << "op " << i;
    }
  }
  b.reset();
  auto r = open_q(path, true);
  std::vector<u8> got(size);
  r->read(0, got.data(), size);
  ASSERT_TRUE(got == *model);
}

}  // namespace

TEST(Qcow2, CreateHasExpectedHeader) {
  TempDir d;
  qcow2::create(d.file("a.qcow2"), 1ull << 30, {});
  auto b = open_q(d.file("a.qcow2"), true);
  EXPECT_EQ(b->size(), 1ull << 30);
  EXPECT_EQ(b->header().version, 3u);
  EXPECT_EQ(b->header().cluster_bits, 16u);
  EXPECT_EQ(b->header().refcount_order, 4u);
  EXPECT_EQ(b->header().l1_size, 2u);
  std::vector<u8> buf(65536, 1);
  b->read(12345, buf.data(), buf.size());
  EXPECT_EQ(std::count(buf.begin(), buf.end(), 0), 65536);
  expect_clean(d.file("a.qcow2"));
}

TEST(Qcow2, WriteReadReopen) {
  TempDir d;
  const u64 size = 32 << 20;
  qcow2::create(d.file("a.qcow2"), size, {});
  std::vector<u8> model(size, 0);
  random_io(d.file("a.qcow2"), size, 400, 1, 200000, &model);
  expect_clean(d.file("a.qcow2"));
}

class Qcow2Geometry : public ::testing::TestWithParam<std::pair<u32, u32>> {};

TEST_P(Qcow2Geometry, RandomIoStaysConsistent) {
  auto [cluster_bits, refcount_order] = GetParam();
  TempDir d;
  const u64 size = 24 << 20;
  qcow2::CreateOptions o;
  o.cluster_bits = cluster_bits;
  o.refcount_order = refcount_order;
  qcow2::create(d.file("a.qcow2"), size, o);
  std::vector<u8> model(size, 0);
  random_io(d.file("a.qcow2"), size, 300, cluster_bits * 100 + refcount_order, 70000, &model);
  expect_clean(d.file("a.qcow2"));
}

// 512-byte clusters with 64-bit refcounts: one refcount table cluster covers
// only 2 MiB, so these runs grow the refcount table several times.
INSTANTIATE_TEST_SUITE_P(Geometries, Qcow2Geometry,
                         ::testing::Values(std::make_pair(9u, 6u), std::make_pair(9u, 0u),
                                           std::make_pair(12u, 1u), std::make_pair(12u, 2u),
                                           std::make_pair(16u, 3u), std::make_pair(16u, 5u),
                                           std::make_pair(21u, 4u)));

TEST(Qcow2, RefcountTableGrowthKeepsEverything) {
  TempDir d;
  qcow2::CreateOptions o;
  o.cluster_bits = 9;
  o.refcount_order = 6;
  const u64 size = 16 << 20;
  qcow2::create(d.file("a.qcow2"), size, o);
  auto data = pattern(size, 3);
  {
    auto b = open_q(d.file("a.qcow2"));
    u32 before = b->header().refcount_table_clusters;
    for (u64 off = 0; off < size; off += 65536) b->write(off, data.data() + off, 65536);
    b->flush();
    EXPECT_GT(b->header().refcount_table_clusters, before);
  }
  expect_clean(d.file("a.qcow2"));
  auto b = open_q(d.file("a.qcow2"), true);
  std::vector<u8> got(size);
  b->read(0, got.data(), size);
  EXPECT_TRUE(got == data);
}

TEST(Qcow2, SmallL2CacheEvictsDirtyTablesSafely) {
  TempDir d;
  const u64 size = 64 << 20;
  qcow2::CreateOptions co;
  co.cluster_bits = 12;  // 4 KiB clusters: one L2 table maps 2 MiB
  qcow2::create(d.file("a.qcow2"), size, co);
  OpenOptions o;
  o.l2_cache_tables = 4;
  std::vector<u8> model(size, 0);
  {
    auto b = open_image(d.file("a.qcow2"), o);
    std::mt19937_64 rng(5);
    for (int i = 0; i < 500; i++) {
      u64 off = (rng() % (size / 4096)) * 4096;
      auto p = pattern(4096, i);
      b->write(off, p.data(), 4096);
      std::memcpy(&model[off], p.data(), 4096);
    }
  }
  expect_clean(d.file("a.qcow2"));
  auto b = open_q(d.file("a.qcow2"), true);
  std::vector<u8> got(size);
  b->read(0, got.data(), size);
  EXPECT_TRUE(got == model);
}

TEST(Qcow2, BackingFileCopyOnWrite) {
  TempDir d;
  const u64 size = 8 << 20;
  create_raw(d.file("base.raw"), size);
  auto base = pattern(size, 11);
  {
    auto r = open_image(d.file("base.raw"));
    r->write(0, base.data(), size);
  }
  qcow2::CreateOptions o;
  o.backing_file = "base.raw";
  o.backing_format = "raw";
  qcow2::create(d.file("top.qcow2"), size, o);
  std::vector<u8> model = base;
  {
    auto t = open_q(d.file("top.qcow2"));
    ASSERT_NE(t->backing(), nullptr);
    std::vector<u8> got(size);
    t->read(0, got.data(), size);
    EXPECT_TRUE(got == base);
    auto p = pattern(1000, 2);
    t->write(70000, p.data(), p.size());  // partial cluster: rest copied from base
    std::memcpy(&model[70000], p.data(), p.size());
    t->discard(3 << 20, 65536 * 2);  // whole clusters: zero flag hides the base
    std::memset(&model[3 << 20], 0, 65536 * 2);
    t->write_zeroes(5 << 20, 100);
    std::memset(&model[5 << 20], 0, 100);
    t->flush();
    EXPECT_GE(t->stats().cow_reads, 1u);
  }
  auto t = open_q(d.file("top.qcow2"), true);
  std::vector<u8> got(size);
  t->read(0, got.data(), size);
  EXPECT_TRUE(got == model);
  // The base is untouched.
  EXPECT_TRUE(read_file(d.file("base.raw")) == base);
  expect_clean(d.file("top.qcow2"));
}

TEST(Qcow2, DiscardFreesClustersAndPunchesHoles) {
  TempDir d;
  const u64 size = 16 << 20;
  qcow2::create(d.file("a.qcow2"), size, {});
  auto p = pattern(size, 4);
  auto b = open_q(d.file("a.qcow2"));
  b->write(0, p.data(), size);
  b->flush();
  u64 before = b->file().allocated_bytes();
  b->discard(0, size);
  b->flush();
  std::vector<u8> got(4096, 1);
  b->read(100000, got.data(), got.size());
  EXPECT_EQ(std::count(got.begin(), got.end(), 0), 4096);
  EXPECT_LT(b->file().allocated_bytes(), before / 2);
  // Freed clusters are reused rather than the file growing.
  u64 fsize = b->file().size();
  b->write(0, p.data(), 1 << 20);
  b->flush();
  EXPECT_EQ(b->file().size(), fsize);
  b.reset();
  expect_clean(d.file("a.qcow2"));
}

TEST(Qcow2, DiscardJustBeforeCloseLeaksNothing) {
  // The frees of a discard are applied by the write-back at close; their
  // refcount decrements must reach the file too.
  TempDir d;
  qcow2::create(d.file("a.qcow2"), 4 << 20, {});
  {
    auto b = open_q(d.file("a.qcow2"));
    auto p = pattern(1 << 20, 2);
    b->write(0, p.data(), p.size());
    b->flush();
    b->discard(0, 512 << 10);
  }
  expect_clean(d.file("a.qcow2"));
}

TEST(Qcow2, WriteZeroesKeepsAllocationAndReadsZero) {
  TempDir d;
  qcow2::create(d.file("a.qcow2"), 4 << 20, {});
  auto p = pattern(1 << 20, 9);
  auto b = open_q(d.file("a.qcow2"));
  b->write(0, p.data(), p.size());
  b->write_zeroes(65536, 65536 * 3 + 17);
  std::vector<u8> got(1 << 20);
  b->read(0, got.data(), got.size());
  std::memset(&p[65536], 0, 65536 * 3 + 17);
  EXPECT_TRUE(got == p);
  // Writing into a preallocated zero cluster reuses it.
  u64 allocs = b->stats().allocations;
  b->write(65536 + 10, "hello", 5);
  EXPECT_EQ(b->stats().allocations, allocs);
  b->read(65536, got.data(), 65536);
  EXPECT_EQ(0, std::memcmp(&got[10], "hello", 5));
  EXPECT_EQ(got[0], 0);
  EXPECT_EQ(got[20], 0);
  b.reset();
  expect_clean(d.file("a.qcow2"));
}

TEST(Qcow2, CrashBeforeFlushLeavesOnlyLeaks) {
  // Simulate a kill: copy the file bytes at arbitrary points between writes
  // (the copy is what a killed process leaves behind, as pwrite is synchronous).
  TempDir d;
  qcow2::create(d.file("a.qcow2"), 8 << 20, {});
  auto mem = std::make_unique<MemFile>("mem.qcow2", read_file(d.file("a.qcow2")), true);
  MemFile* m = mem.get();
  OpenOptions o;
  Qcow2Backend b(std::move(mem), o);
  std::mt19937_64 rng(8);
  for (int i = 0; i < 200; i++) {
    u64 off = rng() % ((8 << 20) - 9000);
    auto p = pattern(1 + rng() % 9000, i);
    b.write(off, p.data(), p.size());
    if (i % 7 == 0) b.flush();
    if (i % 5 == 0) {
      MemFile snap("snap.qcow2", m->data(), false);
      OpenOptions so;
      so.read_only = true;
      so.for_check = true;
      Qcow2Backend s(std::make_unique<MemFile>("snap.qcow2", m->data(), false), so);
      CheckResult r = s.check();
      EXPECT_EQ(r.corruptions, 0u) << "after op " << i;
      EXPECT_EQ(r.check_errors, 0u);
    }
  }
}

TEST(Qcow2, CompressRoundTrip) {
  auto p = pattern(65536, 1);
  for (int i = 0; i < 65536; i += 2) p[i] = 0;
  for (u8 t : {qcow2::kCompressionZlib, qcow2::kCompressionZstd}) {
    if (t == qcow2::kCompressionZlib && !have_zlib()) continue;
    std::string c;
    ASSERT_TRUE(compress_cluster(t, p.data(), p.size(), &c));
    c.resize(c.size() + 300, '\0');  // sector padding after the stream
    std::vector<u8> out(65536);
    EXPECT_EQ("", decompress_cluster(t, reinterpret_cast<const u8*>(c.data()), c.size(),
                                     out.data(), out.size()));
    EXPECT_TRUE(out == p);
    c.resize(c.size() / 3);
    EXPECT_NE("", decompress_cluster(t, reinterpret_cast<const u8*>(c.data()), c.size(),
                                     out.data(), out.size()));
  }
}

// ---- bad images: clear errors, no crash, and no write to the file ----

namespace {

struct BadImage {
  std::vector<u8> bytes;
};

std::vector<u8> good_image(u64 size = 1 << 20) {
  TempDir d;
  qcow2::create(d.file("g.qcow2"), size, {});
  {
    auto b = open_q(d.file("g.qcow2"));
    auto p = pattern(200000, 1);
    b->write(0, p.data(), p.size());
  }
  return read_file(d.file("g.qcow2"));
}

// Opens (writable) and expects an Error mentioning `needle`; the file must be
// byte-for-byte unchanged afterwards.
void expect_refused(const std::vector<u8>& img, const std::string& needle, bool ro = false) {
  TempDir d;
  write_file(d.file("bad.qcow2"), img);
  OpenOptions o;
  o.read_only = ro;
  try {
    auto b = open_image(d.file("bad.qcow2"), o);
    std::vector<u8> buf(1 << 20);
    b->read(0, buf.data(), std::min<u64>(buf.size(), b->size()));
    if (!ro) {
      b->write(0, buf.data(), 4096);
      b->flush();
    }
    ADD_FAILURE() << "no error; expected one mentioning '" << needle << "'";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("bad.qcow2"), std::string::npos) << e.what();
  }
  EXPECT_TRUE(read_file(d.file("bad.qcow2")) == img) << "the image was written";
}

void put64(std::vector<u8>& v, usize off, u64 x) { qcow2::wr_be64(&v[off], x); }
void put32(std::vector<u8>& v, usize off, u32 x) { qcow2::wr_be32(&v[off], x); }

}  // namespace

TEST(Qcow2Bad, TruncatedHeader) {
  auto g = good_image();
  expect_refused(std::vector<u8>(g.begin(), g.begin() + 40), "shorter than a qcow2 header");
  expect_refused(std::vector<u8>(g.begin(), g.begin() + 90), "truncated");
}

TEST(Qcow2Bad, BadMagicAndVersion) {
  auto g = good_image();
  auto v = g;
  put32(v, 4, 7);
  expect_refused(v, "unsupported qcow2 version 7");
  v = g;
  put32(v, 20, 30);
  expect_refused(v, "cluster size");
}

TEST(Qcow2Bad, UnknownIncompatibleFeature) {
  auto g = good_image();
  put64(g, 72, 1ull << 40);
  expect_refused(g, "unknown feature (bit 40)");
  auto h = good_image();
  put64(h, 72, qcow2::kIncompatExternalData);
  expect_refused(h, "external data file");
}

TEST(Qcow2Bad, EncryptionAndSnapshotsRefused) {
  auto g = good_image();
  put32(g, 32, 2);
  expect_refused(g, "encrypted");
  auto h = good_image();
  put32(h, 60, 1);
  expect_refused(h, "internal snapshot");
}

TEST(Qcow2Bad, L1EntryPastEndOfFile) {
  auto g = good_image();
  u64 l1 = qcow2::rd_be64(&g[40]);
  put64(g, l1, (1ull << 40) | qcow2::kCopied);
  expect_refused(g, "past the end of the file", true);
}

TEST(Qcow2Bad, L1EntryIntoHeader) {
  auto g = good_image();
  u64 l1 = qcow2::rd_be64(&g[40]);
  put64(g, l1, 0 | qcow2::kCopied | 0);  // offset 0 = unallocated: fine
  put64(g, l1, 65536 * 0 + qcow2::kCopied + 512);  // unaligned
  expect_refused(g, "not cluster aligned", true);
}

TEST(Qcow2Bad, L2TablePointsAtRefcountTable) {
  auto g = good_image();
  u64 l1 = qcow2::rd_be64(&g[40]);
  u64 rt = qcow2::rd_be64(&g[48]);
  put64(g, l1, rt | qcow2::kCopied);
  expect_refused(g, "overlaps", false);
}

TEST(Qcow2Bad, RefcountBlockIntoHeaderOnWrite) {
  auto g = good_image();
  u64 rt = qcow2::rd_be64(&g[48]);
  put64(g, rt, 0x200);
  expect_refused(g, "refcount table entry 0");
}

TEST(Qcow2Bad, DataClusterPointingAtMetadataIsNotWritten) {
  auto g = good_image();
  u64 l1 = qcow2::rd_be64(&g[40]);
  u64 l2 = qcow2::rd_be64(&g[l1]) & qcow2::kOffsetMask;
  put64(g, l2, 0 | qcow2::kCopied);  // guest cluster 0 -> the header
  put64(g, l2, qcow2::kCopied | 65536);  // -> refcount table cluster
  expect_refused(g, "metadata error");
}

TEST(Qcow2Bad, ClusterUsedTwiceIsRefusedForWriting) {
  // Two guest clusters share one host cluster (refcount 1): writing one would
  // change the other, so a writable open refuses; read-only works.
  auto g = good_image();
  u64 l1 = qcow2::rd_be64(&g[40]);
  u64 l2 = qcow2::rd_be64(&g[l1]) & qcow2::kOffsetMask;
  put64(g, l2 + 8 * 10, qcow2::rd_be64(&g[l2]));
  expect_refused(g, "refcount=1 reference=2");
  TempDir d;
  write_file(d.file("c.qcow2"), g);
  EXPECT_NO_THROW(open_q(d.file("c.qcow2"), true));
}

TEST(Qcow2Bad, CorruptBitAllowsReadOnly) {
  auto g = good_image();
  put64(g, 72, qcow2::kIncompatCorrupt);
  expect_refused(g, "marked corrupt");
  TempDir d;
  write_file(d.file("c.qcow2"), g);
  EXPECT_NO_THROW(open_q(d.file("c.qcow2"), true));
}

TEST(Qcow2Bad, RefcountOverflowInRepairIsAnError) {
  // 1-bit refcounts, and two L2 entries pointing at one cluster: the needed
  // refcount (2) cannot be stored.
  TempDir d;
  qcow2::CreateOptions o;
  o.refcount_order = 0;
  qcow2::create(d.file("a.qcow2"), 1 << 20, o);
  {
    auto b = open_q(d.file("a.qcow2"));
    auto p = pattern(65536 * 2, 1);
    b->write(0, p.data(), p.size());
  }
  auto img = read_file(d.file("a.qcow2"));
  u64 l1 = qcow2::rd_be64(&img[40]);
  u64 l2 = qcow2::rd_be64(&img[l1]) & qcow2::kOffsetMask;
  put64(img, l2 + 8, qcow2::rd_be64(&img[l2]));
  write_file(d.file("a.qcow2"), img);
  OpenOptions co;
  co.for_check = true;
  Qcow2Backend q(open_posix_file(d.file("a.qcow2"), true), co);
  CheckResult r = q.check(Repair::all);
  EXPECT_GT(r.corruptions, 0u);
  bool found = false;
  for (auto& m : r.messages) found |= m.find("refcount overflow") != std::string::npos;
  EXPECT_TRUE(found);
}

TEST(Qcow2, DirtyBitTriggersRepairOnWritableOpen) {
  TempDir d;
  qcow2::create(d.file("a.qcow2"), 4 << 20, {});
  {
    auto b = open_q(d.file("a.qcow2"));
    auto p = pattern(300000, 1);
    b->write(0, p.data(), p.size());
  }
  auto img = read_file(d.file("a.qcow2"));
  // Leak a cluster past the data and set the dirty bit, as a lazy-refcount
  // writer that crashed would leave it.
  u64 rt = qcow2::rd_be64(&img[48]);
  u64 rb = qcow2::rd_be64(&img[rt]);
  qcow2::wr_be16(&img[rb + 2 * 60], 1);
  put64(img, 72, qcow2::kIncompatDirty);
  write_file(d.file("a.qcow2"), img);
  {
    auto b = open_q(d.file("a.qcow2"));
    EXPECT_EQ(b->header().incompatible & qcow2::kIncompatDirty, 0u);
  }
  expect_clean(d.file("a.qcow2"));
  auto after = read_file(d.file("a.qcow2"));
  EXPECT_EQ(qcow2::rd_be64(&after[72]) & qcow2::kIncompatDirty, 0u);
}

TEST(Qcow2, CheckFindsAndRepairsLeaks) {
  TempDir d;
  qcow2::create(d.file("a.qcow2"), 4 << 20, {});
  auto img = read_file(d.file("a.qcow2"));
  u64 rt = qcow2::rd_be64(&img[48]);
  u64 rb = qcow2::rd_be64(&img[rt]);
  qcow2::wr_be16(&img[rb + 2 * 10], 1);
  qcow2::wr_be16(&img[rb + 2 * 11], 3);
  write_file(d.file("a.qcow2"), img);
  OpenOptions o;
  o.for_check = true;
  {
    o.read_only = true;
    Qcow2Backend q(open_posix_file(d.file("a.qcow2"), false), o);
    EXPECT_EQ(q.check().leaks, 2u);
  }
  {
    o.read_only = false;
    Qcow2Backend q(open_posix_file(d.file("a.qcow2"), true), o);
    CheckResult r = q.check(Repair::leaks);
    EXPECT_EQ(r.leaks_fixed, 2u);
    EXPECT_TRUE(r.clean());
  }
  expect_clean(d.file("a.qcow2"));
}

TEST(Qcow2, AsyncQueueOnQcow2) {
  TempDir d;
  qcow2::create(d.file("a.qcow2"), 4 << 20, {});
  auto b = open_q(d.file("a.qcow2"));
  std::vector<std::vector<u8>> bufs;
  for (int i = 0; i < 32; i++) {
    bufs.push_back(pattern(4096, i));
    Request r;
    r.op = Op::write;
    r.offset = static_cast<u64>(i) * 100000;
    r.iov = {{bufs.back().data(), 4096}};
    r.tag = i;
    b->submit(std::move(r));
  }
  Request f;
  f.op = Op::flush;
  f.tag = 99;
  b->submit(f);
  std::vector<Completion> done;
  while (done.size() < 33) {
    b->wait(5000);
    b->reap(done);
  }
  for (auto& c : done) EXPECT_TRUE(c.ok) << c.error;
  EXPECT_EQ(done.back().tag, 99u);
  for (int i = 0; i < 32; i++) {
    std::vector<u8> got(4096);
    b->read(static_cast<u64>(i) * 100000, got.data(), 4096);
    EXPECT_TRUE(got == bufs[i]);
  }
}

// ---- the image tool ----

TEST(ImgTool, CreateInfoCheckConvert) {
  TempDir d;
  std::string img = POPEK_IMG_PATH;
  auto r = run(img + " create -f qcow2 " + sh_quote(d.file("a.qcow2")) + " 64M");
  ASSERT_EQ(r.status, 0) << r.out;
  {
    auto b = open_q(d.file("a.qcow2"));
    auto p = pattern(1 << 20, 5);
    b->write(1 << 20, p.data(), p.size());
  }
  r = run(img + " info " + sh_quote(d.file("a.qcow2")));
  EXPECT_EQ(r.status, 0) << r.out;
  EXPECT_NE(r.out.find("virtual size: 64 MiB (67108864 bytes)"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("file format: qcow2"), std::string::npos);
  r = run(img + " info --output json " + sh_quote(d.file("a.qcow2")));
  EXPECT_NE(r.out.find("\"virtual-size\": 67108864"), std::string::npos) << r.out;
  r = run(img + " check " + sh_quote(d.file("a.qcow2")));
  EXPECT_EQ(r.status, 0) << r.out;
  EXPECT_NE(r.out.find("No errors were found"), std::string::npos) << r.out;
  r = run(img + " convert -O raw " + sh_quote(d.file("a.qcow2")) + " " + sh_quote(d.file("a.raw")));
  ASSERT_EQ(r.status, 0) << r.out;
  r = run(img + " convert -O qcow2 " + sh_quote(d.file("a.raw")) + " " + sh_quote(d.file("b.qcow2")));
  ASSERT_EQ(r.status, 0) << r.out;
  auto raw = read_file(d.file("a.raw"));
  ASSERT_EQ(raw.size(), 64u << 20);
  auto b = open_q(d.file("b.qcow2"), true);
  std::vector<u8> got(64 << 20);
  b->read(0, got.data(), got.size());
  EXPECT_TRUE(got == raw);
  expect_clean(d.file("b.qcow2"));
  // Backing file, size taken from it.
  r = run(img + " create -f qcow2 -b a.qcow2 " + sh_quote(d.file("top.qcow2")));
  ASSERT_EQ(r.status, 0) << r.out;
  r = run(img + " info " + sh_quote(d.file("top.qcow2")));
  EXPECT_NE(r.out.find("backing file: a.qcow2"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("backing file format: qcow2"), std::string::npos) << r.out;
}

TEST(ImgTool, ErrorsNameTheFileAndProblem) {
  TempDir d;
  std::string img = POPEK_IMG_PATH;
  auto r = run(img + " info " + sh_quote(d.file("nope.qcow2")));
  EXPECT_EQ(r.status, 1);
  EXPECT_NE(r.out.find("nope.qcow2"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("No such file"), std::string::npos) << r.out;
  write_file(d.file("short.qcow2"), {'Q', 'F', 'I', 0xfb, 0, 0, 0, 3});
  r = run(img + " check " + sh_quote(d.file("short.qcow2")));
  EXPECT_EQ(r.status, 1);
  EXPECT_NE(r.out.find("short.qcow2: not a qcow2 image"), std::string::npos) << r.out;
  r = run(img + " create -f qcow2 " + sh_quote(d.file("x.qcow2")) + " 12Q");
  EXPECT_NE(r.status, 0);
  EXPECT_NE(r.out.find("unknown suffix"), std::string::npos) << r.out;
  r = run(img + " frobnicate");
  EXPECT_NE(r.status, 0);
  r = run(img + " --help");
  EXPECT_EQ(r.status, 0);
  for (const char* s : {"create", "info", "check", "convert"})
    EXPECT_NE(r.out.find(s), std::string::npos) << r.out;
  r = run(img + " check --help");
  EXPECT_NE(r.out.find("Exit status"), std::string::npos) << r.out;
}

TEST(ImgTool, CheckReportsLeaksWithExitStatus3) {
  TempDir d;
  std::string img = POPEK_IMG_PATH;
  qcow2::create(d.file("a.qcow2"), 4 << 20, {});
  auto v = read_file(d.file("a.qcow2"));
  u64 rt = qcow2::rd_be64(&v[48]);
  u64 rb = qcow2::rd_be64(&v[rt]);
  qcow2::wr_be16(&v[rb + 2 * 20], 1);
  write_file(d.file("a.qcow2"), v);
  auto r = run(img + " check " + sh_quote(d.file("a.qcow2")));
  EXPECT_EQ(r.status, 3) << r.out;
  EXPECT_NE(r.out.find("1 leaked clusters"), std::string::npos) << r.out;
  r = run(img + " check -r leaks " + sh_quote(d.file("a.qcow2")));
  EXPECT_EQ(r.status, 0) << r.out;
  r = run(img + " check " + sh_quote(d.file("a.qcow2")));
  EXPECT_EQ(r.status, 0) << r.out;
}
