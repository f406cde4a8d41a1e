// Interoperability with the real qemu-img and qemu-io (Debian's qemu-utils, a
// test dependency only): images QEMU makes read back identical through popek,
// and images popek writes pass `qemu-img check` and `qemu-img compare`.
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

bool have_qemu() { return have_program("qemu-img") && have_program("qemu-io"); }

#define REQUIRE_QEMU() \
  if (!have_qemu()) GTEST_SKIP() << "qemu-img/qemu-io not installed (Debian package qemu-utils)"

void sh(const std::string& cmd) {
  auto r = run(cmd);
  ASSERT_EQ(r.status, 0) << cmd << "\n" << r.out;
}

// What QEMU reads: the image converted to raw by qemu-img itself.
std::vector<u8> qemu_contents(const TempDir& d, const std::string& img) {
  std::string out = d.file("qemu-view.raw");
  auto r = run("qemu-img convert -O raw " + sh_quote(img) + " " + sh_quote(out));
  EXPECT_EQ(r.status, 0) << r.out;
  auto v = read_file(out);
  std::remove(out.c_str());
  return v;
}

std::vector<u8> popek_contents(const std::string& img) {
  OpenOptions o;
  o.read_only = true;
  auto b = open_image(img, o);
  std::vector<u8> v(b->size());
  // Read in odd-sized pieces to cross cluster boundaries.
  for (u64 off = 0; off < v.size();) {
    usize n = static_cast<usize>(std::min<u64>(v.size() - off, 777777));
    b->read(off, v.data() + off, n);
    off += n;
  }
  return v;
}

void qemu_check_clean(const std::string& img) {
  auto r = run("qemu-img check " + sh_quote(img));
  EXPECT_EQ(r.status, 0) << "qemu-img check " << img << ":\n" << r.out;
  EXPECT_NE(r.out.find("No errors were found"), std::string::npos) << r.out;
  EXPECT_EQ(r.out.find("leaked"), std::string::npos) << r.out;
}

void qemu_compare(const std::string& img, const std::string& raw) {
  auto r = run("qemu-img compare -f qcow2 -F raw " + sh_quote(img) + " " + sh_quote(raw));
  EXPECT_EQ(r.status, 0) << "qemu-img compare:\n" << r.out;
}

// Writes a spread of patterns, zero writes and discards with qemu-io.
void qemu_io_writes(const std::string& img, const std::string& fmt = "qcow2") {
  sh("qemu-io -f " + fmt + " " +
     "-c 'write -P 0xa1 0 64k' "
     "-c 'write -P 0xb2 100k 3k' "
     "-c 'write -P 0xc3 1m 1m' "
     "-c 'write -P 0xd4 5000k 130k' "
     "-c 'write -z 1100k 64k' "
     "-c 'discard 1600k 128k' "
     "-c 'write -P 0xe5 15m 512' " +
     sh_quote(img) + " >/dev/null");
}

struct QemuImageCase {
  std::string name;
  std::string create_opts;  // -o ...
  bool backing;
};

}  // namespace

class QemuMadeImages : public ::testing::TestWithParam<QemuImageCase> {};

TEST_P(QemuMadeImages, ReadBackIdentical) {
  REQUIRE_QEMU();
  const auto& c = GetParam();
  TempDir d;
  std::string img = d.file("img.qcow2");
  if (c.backing) {
    std::string base = d.file("base.raw");
    sh("qemu-img create -f raw " + sh_quote(base) + " 16M >/dev/null");
    sh("qemu-io -f raw -c 'write -P 0x77 0 16m' -c 'write -P 0x12 3m 100k' " + sh_quote(base) +
       " >/dev/null");
    sh("qemu-img create -f qcow2 -b base.raw -F raw " + c.create_opts + " " + sh_quote(img) +
       " >/dev/null");
  } else {
    sh("qemu-img create -f qcow2 " + c.create_opts + " " + sh_quote(img) + " 16M >/dev/null");
  }
  qemu_io_writes(img);
  auto want = qemu_contents(d, img);
  auto got = popek_contents(img);
  ASSERT_EQ(got.size(), want.size());
  EXPECT_TRUE(got == want) << "popek reads differ from qemu-img's";
  // popek's own check agrees the image is clean.
  OpenOptions o;
  o.read_only = true;
  o.for_check = true;
  Qcow2Backend q(open_posix_file(img, false), o);
  CheckResult r = q.check();
  std::string all;
  for (auto& m : r.messages) all += m + "\n";
  EXPECT_TRUE(r.clean()) << all;
}

INSTANTIATE_TEST_SUITE_P(
    Variants, QemuMadeImages,
    ::testing::Values(QemuImageCase{"plain", "", false},
                      QemuImageCase{"prealloc_metadata", "-o preallocation=metadata", false},
                      QemuImageCase{"prealloc_full", "-o preallocation=full", false},
                      QemuImageCase{"prealloc_falloc", "-o preallocation=falloc", false},
                      QemuImageCase{"cluster4k", "-o cluster_size=4k", false},
                      QemuImageCase{"cluster512_refcount1", "-o cluster_size=512,refcount_bits=1", false},
                      QemuImageCase{"cluster2m_refcount64", "-o cluster_size=2M,refcount_bits=64", false},
                      QemuImageCase{"compat010", "-o compat=0.10", false},
                      QemuImageCase{"lazy_refcounts", "-o lazy_refcounts=on", false},
                      QemuImageCase{"backing", "", true},
                      QemuImageCase{"backing_cluster4k", "-o cluster_size=4k", true}),
    [](const auto& info) { return info.param.name; });

TEST(QemuInterop, CompressedClustersZlibAndZstd) {
  REQUIRE_QEMU();
  TempDir d;
  std::string raw = d.file("src.raw");
  // Compressible data: runs of a few byte values, plus a random region.
  std::vector<u8> v(8 << 20, 0);
  for (usize i = 0; i < v.size(); i++) v[i] = static_cast<u8>((i / 4096) % 7 == 0 ? 0 : (i / 513) % 5);
  auto rnd = pattern(300000, 3);
  std::memcpy(&v[2 << 20], rnd.data(), rnd.size());
  write_file(raw, v);
  for (std::string ct : {"zlib", "zstd"}) {
    if (ct == "zlib" && !have_zlib()) {
      std::printf("built without zlib; skipping deflate clusters\n");
      continue;
    }
    std::string img = d.file("c-" + ct + ".qcow2");
    auto r = run("qemu-img convert -c -O qcow2 -o compression_type=" + ct + " " + sh_quote(raw) +
                 " " + sh_quote(img));
    if (r.status != 0 && ct == "zstd") {
      std::printf("qemu-img has no zstd support; skipping zstd: %s\n", r.out.c_str());
      continue;
    }
    ASSERT_EQ(r.status, 0) << r.out;
    auto got = popek_contents(img);
    EXPECT_TRUE(got == v) << ct;
    // Overwrite parts of compressed clusters through popek: copy-on-write
    // decompresses, and the compressed clusters' refcounts drop correctly.
    {
      auto b = open_image(img);
      auto p = pattern(70000, 9);
      b->write(12345, p.data(), p.size());
      std::memcpy(&v[12345], p.data(), p.size());
      b->discard(4 << 20, 1 << 20);
      std::memset(&v[4 << 20], 0, 1 << 20);
      b->flush();
    }
    write_file(raw + ".want", v);
    qemu_check_clean(img);
    qemu_compare(img, raw + ".want");
    write_file(raw, v);
  }
}

struct PopekWriteCase {
  std::string name;
  u32 cluster_bits;
  u32 refcount_order;
  int ops;
};

class PopekWrittenImages : public ::testing::TestWithParam<PopekWriteCase> {};

TEST_P(PopekWrittenImages, PassQemuCheckAndCompare) {
  REQUIRE_QEMU();
  const auto& c = GetParam();
  TempDir d;
  const u64 size = 24 << 20;
  std::string img = d.file("p.qcow2"), model_path = d.file("model.raw");
  qcow2::CreateOptions o;
  o.cluster_bits = c.cluster_bits;
  o.refcount_order = c.refcount_order;
  qcow2::create(img, size, o);
  std::vector<u8> model(size, 0);
  {
    auto b = open_image(img);
    std::mt19937_64 rng(c.cluster_bits * 7 + c.refcount_order);
    for (int i = 0; i < c.ops; i++) {
      usize len = 1 + rng() % 150000;
      u64 off = rng() % (size - len);
      int k = static_cast<int>(rng() % 12);
      if (k < 8) {
        auto p = pattern(len, rng());
        b->write(off, p.data(), len);
        std::memcpy(&model[off], p.data(), len);
      } else if (k < 9) {
        b->discard(off, len);
        std::memset(&model[off], 0, len);
      } else if (k < 10) {
        b->write_zeroes(off, len);
        std::memset(&model[off], 0, len);
      } else {
        b->flush();
      }
    }
  }
  write_file(model_path, model);
  {
    OpenOptions co;
    co.read_only = true;
    co.for_check = true;
    Qcow2Backend q(open_posix_file(img, false), co);
    CheckResult r = q.check();
    EXPECT_TRUE(r.clean()) << "popek check: " << r.leaks << " leaks, " << r.corruptions
                           << " corruptions; first: " << (r.messages.empty() ? "" : r.messages[0]);
  }
  qemu_check_clean(img);
  qemu_compare(img, model_path);
  EXPECT_TRUE(qemu_contents(d, img) == model);
}

INSTANTIATE_TEST_SUITE_P(Geometries, PopekWrittenImages,
                         ::testing::Values(PopekWriteCase{"c64k_r16", 16, 4, 300},
                                           PopekWriteCase{"c512_r64_growth", 9, 6, 150},
                                           PopekWriteCase{"c4k_r1", 12, 0, 200},
                                           PopekWriteCase{"c2m_r8", 21, 3, 100}),
                         [](const auto& info) { return info.param.name; });

TEST(QemuInterop, PopekWritesIntoQemuImagesWithBackingAndPreallocation) {
  REQUIRE_QEMU();
  TempDir d;
  const u64 size = 16 << 20;
  std::string base = d.file("base.qcow2");
  sh("qemu-img create -f qcow2 " + sh_quote(base) + " 16M >/dev/null");
  sh("qemu-io -c 'write -c -P 0x44 4m 1m' -c 'write -P 0x33 0 4m' -c 'write -P 0x33 5m 11m' " + sh_quote(base) + " >/dev/null");
  // QEMU allows preallocation with a backing file only with extended L2
  // entries, so the preallocated images have no backing file.
  for (std::string opts : {"-b base.qcow2 -F qcow2", "-b base.qcow2 -F qcow2 -o cluster_size=4k",
                           "-o preallocation=metadata", "-o preallocation=full"}) {
    std::string top = d.file("top.qcow2"), model_path = d.file("want.raw");
    sh("qemu-img create -f qcow2 " + opts + " " + sh_quote(top) +
       (opts[1] == 'b' ? "" : " 16M") + " >/dev/null");
    qemu_io_writes(top);
    auto model = qemu_contents(d, top);
    ASSERT_EQ(model.size(), size);
    {
      auto b = open_image(top);
      std::mt19937_64 rng(opts.size());
      for (int i = 0; i < 150; i++) {
        usize len = 1 + rng() % 100000;
        u64 off = rng() % (size - len);
        if (rng() % 5 == 0) {
          b->discard(off, len);
          std::memset(&model[off], 0, len);
        } else {
          auto p = pattern(len, rng());
          b->write(off, p.data(), len);
          std::memcpy(&model[off], p.data(), len);
        }
      }
    }
    write_file(model_path, model);
    qemu_check_clean(top);
    qemu_compare(top, model_path);
    EXPECT_TRUE(popek_contents(top) == model) << opts;
    // qemu-io can keep working on the image popek wrote.
    sh("qemu-io -c 'write -P 0x99 7m 200k' " + sh_quote(top) + " >/dev/null");
    qemu_check_clean(top);
  }
}

TEST(QemuInterop, ImgToolOutputsPassQemuCheck) {
  REQUIRE_QEMU();
  TempDir d;
  std::string img = POPEK_IMG_PATH;
  std::string src = d.file("src.qcow2");
  sh("qemu-img create -f qcow2 " + sh_quote(src) + " 32M >/dev/null");
  qemu_io_writes(src);
  sh(img + " convert -O qcow2 " + sh_quote(src) + " " + sh_quote(d.file("out.qcow2")));
  qemu_check_clean(d.file("out.qcow2"));
  sh("qemu-img compare " + sh_quote(src) + " " + sh_quote(d.file("out.qcow2")));
  sh(img + " convert -O raw " + sh_quote(src) + " " + sh_quote(d.file("out.raw")));
  sh("qemu-img compare " + sh_quote(src) + " " + sh_quote(d.file("out.raw")));
  sh(img + " create -f qcow2 -b src.qcow2 " + sh_quote(d.file("top.qcow2")));
  auto r = run("qemu-img info " + sh_quote(d.file("top.qcow2")));
  EXPECT_NE(r.out.find("backing file format: qcow2"), std::string::npos) << r.out;
  sh("qemu-img compare " + sh_quote(src) + " " + sh_quote(d.file("top.qcow2")));
  qemu_check_clean(d.file("top.qcow2"));
  // popek's check agrees with qemu-img's on a leaked image.
  sh("qemu-img create -f qcow2 " + sh_quote(d.file("leak.qcow2")) + " 4M >/dev/null");
  auto v = read_file(d.file("leak.qcow2"));
  u64 rt = qcow2::rd_be64(&v[48]);
  u64 rb = qcow2::rd_be64(&v[rt]);
  qcow2::wr_be16(&v[rb + 2 * 30], 1);
  v.resize(31 * 65536);  // qemu-img reports leaks only inside the file
  write_file(d.file("leak.qcow2"), v);
  EXPECT_EQ(run("qemu-img check " + sh_quote(d.file("leak.qcow2"))).status, 3);
  EXPECT_EQ(run(img + " check " + sh_quote(d.file("leak.qcow2"))).status, 3);
  sh(img + " check -r leaks " + sh_quote(d.file("leak.qcow2")));
  qemu_check_clean(d.file("leak.qcow2"));
}
