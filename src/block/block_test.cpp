// Unit tests for the BlockBackend interface, raw images and the async queue.
#include <gtest/gtest.h>
#include <poll.h>

#include <cstring>

#include "base/error.h"
#include "block/backend.h"
#include "block/raw.h"
#include "block/test_util.h"

using namespace popek;
using namespace popek::block;
using namespace popek::block::test;

TEST(Raw, CreateIsSparseAndReadsZeros) {
  TempDir d;
  create_raw(d.file("a.raw"), 64 << 20);
  auto b = open_image(d.file("a.raw"));
  EXPECT_EQ(b->format(), "raw");
  EXPECT_EQ(b->size(), 64u << 20);
  std::vector<u8> buf(4096, 0xAA);
  b->read(10 << 20, buf.data(), buf.size());
  EXPECT_EQ(std::count(buf.begin(), buf.end(), 0), 4096);
  EXPECT_LT(open_posix_file(d.file("a.raw"), false)->allocated_bytes(), 1u << 20);
}

TEST(Raw, WriteReadFlushDiscard) {
  TempDir d;
  create_raw(d.file("a.raw"), 1 << 20);
  auto b = open_image(d.file("a.raw"));
  auto data = pattern(8192, 1);
  b->write(4096, data.data(), data.size());
  b->flush();
  std::vector<u8> got(8192);
  b->read(4096, got.data(), got.size());
  EXPECT_EQ(got, data);
  b->discard(4096, 4096);
  b->read(4096, got.data(), 4096);
  EXPECT_EQ(std::count(got.begin(), got.begin() + 4096, 0), 4096);
  b->write_zeroes(8192, 100);
  b->read(8192, got.data(), 100);
  EXPECT_EQ(std::count(got.begin(), got.begin() + 100, 0), 100);
}

TEST(Backend, RangeAndReadOnlyErrorsNameTheFile) {
  TempDir d;
  create_raw(d.file("a.raw"), 4096);
  OpenOptions o;
  o.read_only = true;
  auto b = open_image(d.file("a.raw"), o);
  u8 x[16];
  try {
    b->read(4090, x, 16);
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("a.raw"), std::string::npos);
    EXPECT_NE(std::string(e.what()).find("past the end"), std::string::npos);
  }
  EXPECT_THROW(b->write(0, x, 16), Error);
  EXPECT_THROW(open_image(d.file("missing.raw")), Error);
}

TEST(Async, SubmitReapWithEventfd) {
  TempDir d;
  create_raw(d.file("a.raw"), 1 << 20);
  auto b = open_image(d.file("a.raw"));
  auto data = pattern(4096, 7);
  std::vector<u8> got(4096);
  Request w;
  w.op = Op::write;
  w.offset = 8192;
  w.iov = {{data.data(), 2048}, {data.data() + 2048, 2048}};
  w.tag = 1;
  b->submit(w);
  Request f;
  f.op = Op::flush;
  f.tag = 2;
  b->submit(f);
  Request r;
  r.op = Op::read;
  r.offset = 8192;
  r.iov = {{got.data(), got.size()}};
  r.tag = 3;
  b->submit(r);
  Request bad;
  bad.op = Op::read;
  bad.offset = 1 << 20;
  bad.iov = {{got.data(), 1}};
  bad.tag = 4;
  b->submit(bad);
  std::vector<Completion> done;
  while (done.size() < 4) {
    struct pollfd p{b->event_fd(), POLLIN, 0};
    ASSERT_GE(poll(&p, 1, 5000), 1);
    b->reap(done);
  }
  ASSERT_EQ(done.size(), 4u);
  for (int i = 0; i < 3; i++) {
    EXPECT_EQ(done[i].tag, static_cast<u64>(i + 1));
    EXPECT_TRUE(done[i].ok) << done[i].error;
  }
  EXPECT_FALSE(done[3].ok);
  EXPECT_NE(done[3].error.find("past the end"), std::string::npos);
  EXPECT_EQ(got, data);
}

TEST(Async, DestroyWithPendingRequestsIsSafe) {
  TempDir d;
  create_raw(d.file("a.raw"), 1 << 20);
  std::vector<u8> buf(65536);
  {
    auto b = open_image(d.file("a.raw"));
    for (int i = 0; i < 100; i++) {
      Request r;
      r.op = Op::read;
      r.offset = 0;
      r.iov = {{buf.data(), buf.size()}};
      b->submit(r);
    }
  }
  SUCCEED();
}

TEST(Probe, DetectsFormats) {
  TempDir d;
  create_raw(d.file("a.raw"), 4096);
  EXPECT_EQ(probe_format(d.file("a.raw")), "raw");
  EXPECT_THROW(open_image(d.file("a.raw"), OpenOptions{.format = "vmdk"}), Error);
}
