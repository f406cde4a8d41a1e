// virtio-blk on raw (in memory) and qcow2 images: every request type, the
// asynchronous completion path, read-only disks, cache modes, bad requests
// (IOERR/UNSUPP) and malformed ones (NEEDS_RESET).
#include <gtest/gtest.h>

#include <cstring>

#include "block/file.h"
#include "block/qcow2/format.h"
#include "block/qcow2/qcow2.h"
#include "block/raw.h"
#include "devices/virtio/blk.h"
#include "devices/virtio/test_driver.h"

using namespace popek;
using namespace popek::dev::virtio;
using namespace popek::dev::virtio::test;

namespace {

constexpr u32 kIn = 0, kOut = 1, kFlush = 4, kGetId = 8, kDiscard = 11, kWriteZeroes = 13;
constexpr u64 kDisk = 1 << 20;

std::unique_ptr<block::BlockBackend> mem_disk(bool writable = true, block::MemFile** file = nullptr) {
  std::vector<u8> data(kDisk);
  for (usize i = 0; i < data.size(); i++) data[i] = u8(i * 7 + (i >> 9));
  auto f = std::make_unique<block::MemFile>("disk.img", data, writable);
  if (file) *file = f.get();
  return std::make_unique<block::RawBackend>(std::move(f));
}

struct BlkRig {
  TestMem mem{8 << 20};
  std::unique_ptr<VirtioBlk> blk;
  std::unique_ptr<TestDriver> drv;
  block::MemFile* file = nullptr;

  explicit BlkRig(VirtioBlk::Options opt = {}, bool writable = true) {
    opt.serial = opt.serial.empty() ? "POPEK-SERIAL-1" : opt.serial;
    blk = std::make_unique<VirtioBlk>("virtio-blk0", mem, mem_disk(writable, &file), opt);
    drv = std::make_unique<TestDriver>(*blk, mem);
    drv->init();
  }
  BlkRig(std::unique_ptr<block::BlockBackend> disk, VirtioBlk::Options opt) {
    blk = std::make_unique<VirtioBlk>("virtio-blk0", mem, std::move(disk), opt);
    drv = std::make_unique<TestDriver>(*blk, mem);
    drv->init();
  }

  u64 header(u32 type, u64 sector) {
    const u64 h = drv->alloc(16);
    std::memcpy(mem.at(h), &type, 4);
    std::memcpy(mem.at(h + 8), &sector, 8);
    return h;
  }
  // Runs one request; returns the status byte (or -1 if none came back).
  int run(u32 type, u64 sector, std::vector<Seg> data, bool indirect = false, u32* used_len = nullptr) {
    const u64 st = drv->alloc(1);
    mem.at(st)[0] = 0xEE;
    std::vector<Seg> segs{{header(type, sector), 16, false}};
    for (auto& s : data) segs.push_back(s);
    segs.push_back({st, 1, true});
    drv->add(0, segs, indirect);
    drv->kick(0);
    blk->drain();
    u32 id, len;
    if (!drv->take_used(0, &id, &len)) return -1;
    if (used_len) *used_len = len;
    return mem.at(st)[0];
  }
};

}  // namespace

TEST(VirtioBlk, ConfigAndFeatures) {
  BlkRig r;
  EXPECT_EQ(r.blk->read_config(0, 8), kDisk / 512);
  EXPECT_EQ(r.blk->read_config(12, 4), VirtioBlk::kSegMax);
  EXPECT_EQ(r.blk->read_config(20, 4), 512u);
  const u64 f = r.blk->offered_features();
  EXPECT_TRUE(f & bit(9));    // FLUSH
  EXPECT_FALSE(f & bit(5));   // not RO
  EXPECT_TRUE(f & bit(13));   // DISCARD
  EXPECT_TRUE(f & bit(14));   // WRITE_ZEROES
  BlkRig ro({}, /*writable=*/false);
  EXPECT_TRUE(ro.blk->offered_features() & bit(5));
  EXPECT_FALSE(ro.blk->offered_features() & bit(13));
}

TEST(VirtioBlk, WriteThenReadAsync) {
  BlkRig r;
  const u64 a = r.drv->alloc(4096), b = r.drv->alloc(512);
  for (int i = 0; i < 4096; i++) r.mem.at(a)[i] = u8(i ^ 0x5A);
  for (int i = 0; i < 512; i++) r.mem.at(b)[i] = u8(i);
  EXPECT_EQ(r.run(kOut, 8, {{a, 4096, false}, {b, 512, false}}), 0);
  const u64 c = r.drv->alloc(4608);
  u32 used = 0;
  EXPECT_EQ(r.run(kIn, 8, {{c, 1000, true}, {c + 1000, 3608, true}}, /*indirect=*/true, &used), 0);
  EXPECT_EQ(used, 4609u);  // data + status
  EXPECT_EQ(std::memcmp(r.mem.at(c), r.mem.at(a), 4096), 0);
  EXPECT_EQ(std::memcmp(r.mem.at(c + 4096), r.mem.at(b), 512), 0);
  // The data reached the file.
  EXPECT_EQ(r.file->data()[8 * 512 + 1], u8(1 ^ 0x5A));
  EXPECT_EQ(r.blk->in_flight(), 0u);
  auto st = r.blk->stats();
  bool saw = false;
  for (auto& [k, v] : st)
    if (k == "virtio-blk0.read_bytes") saw = v == 4608;
  EXPECT_TRUE(saw);
}

TEST(VirtioBlk, CompletionArrivesThroughEventFd) {
  BlkRig r;
  const u64 c = r.drv->alloc(512), st = r.drv->alloc(1);
  r.drv->add(0, {{r.header(kIn, 0), 16, false}, {c, 512, true}, {st, 1, true}});
  r.drv->kick(0);
  u32 id, len;
  EXPECT_FALSE(r.drv->take_used(0, &id, &len)) << "completes later, not in the notify";
  EXPECT_EQ(r.blk->in_flight(), 1u);
  std::vector<pollfd> fds;
  int timeout = -1;
  r.blk->io_fill(fds, &timeout);
  ASSERT_EQ(fds.size(), 1u);
  ASSERT_EQ(::poll(fds.data(), 1, 5000), 1);
  r.blk->io_dispatch(fds.data(), 1);
  ASSERT_TRUE(r.drv->take_used(0, &id, &len));
  EXPECT_EQ(r.mem.at(st)[0], 0);
  EXPECT_EQ(r.mem.at(c)[3], u8(3 * 7));
  EXPECT_EQ(r.blk->isr(), kIsrQueue);
  fds.clear();
  r.blk->io_fill(fds, &timeout);
  EXPECT_TRUE(fds.empty()) << "nothing to wait for when idle";
}

TEST(VirtioBlk, SynchronousMode) {
  VirtioBlk::Options o;
  o.synchronous = true;
  BlkRig r(o);
  const u64 c = r.drv->alloc(512), st = r.drv->alloc(1);
  r.drv->add(0, {{r.header(kIn, 1), 16, false}, {c, 512, true}, {st, 1, true}});
  r.drv->kick(0);
  u32 id, len;
  EXPECT_TRUE(r.drv->take_used(0, &id, &len));
  EXPECT_EQ(r.mem.at(c)[0], u8(1));
}

TEST(VirtioBlk, FlushSyncs) {
  BlkRig r;
  const u64 before = r.file->syncs();
  EXPECT_EQ(r.run(kFlush, 0, {}), 0);
  EXPECT_EQ(r.file->syncs(), before + 1);
}

TEST(VirtioBlk, CacheModes) {
  VirtioBlk::Options o;
  o.cache = VirtioBlk::Cache::writethrough;
  BlkRig wt(o);
  EXPECT_FALSE(wt.blk->offered_features() & bit(9));
  EXPECT_EQ(wt.blk->read_config(32, 1), 0u);  // no write cache
  const u64 a = wt.drv->alloc(512);
  const u64 s0 = wt.file->syncs();
  EXPECT_EQ(wt.run(kOut, 0, {{a, 512, false}}), 0);
  EXPECT_EQ(wt.file->syncs(), s0 + 1);

  o.cache = VirtioBlk::Cache::unsafe;
  BlkRig un(o);
  const u64 s1 = un.file->syncs();
  EXPECT_EQ(un.run(kFlush, 0, {}), 0);
  EXPECT_EQ(un.file->syncs(), s1);
}

TEST(VirtioBlk, GetId) {
  BlkRig r;
  const u64 a = r.drv->alloc(20);
  u32 used = 0;
  EXPECT_EQ(r.run(kGetId, 0, {{a, 20, true}}, false, &used), 0);
  EXPECT_EQ(std::string(reinterpret_cast<char*>(r.mem.at(a))), "POPEK-SERIAL-1");
  EXPECT_EQ(used, 21u);
}

TEST(VirtioBlk, DiscardAndWriteZeroes) {
  BlkRig r;
  // Two write-zeroes segments and one discard.
  const u64 segs = r.drv->alloc(32);
  u64 s0 = 2, s1 = 10;
  u32 n = 2, fl = 0;
  std::memcpy(r.mem.at(segs), &s0, 8);
  std::memcpy(r.mem.at(segs + 8), &n, 4);
  std::memcpy(r.mem.at(segs + 12), &fl, 4);
  std::memcpy(r.mem.at(segs + 16), &s1, 8);
  std::memcpy(r.mem.at(segs + 24), &n, 4);
  fl = 1;  // unmap allowed
  std::memcpy(r.mem.at(segs + 28), &fl, 4);
  EXPECT_EQ(r.run(kWriteZeroes, 0, {{segs, 32, false}}), 0);
  for (u64 i = 2 * 512; i < 4 * 512; i++) ASSERT_EQ(r.file->data()[i], 0) << i;
  for (u64 i = 10 * 512; i < 12 * 512; i++) ASSERT_EQ(r.file->data()[i], 0) << i;
  EXPECT_NE(r.file->data()[4 * 512 + 1], 0);
  const u64 d = r.drv->alloc(16);
  u64 s2 = 20;
  n = 1;
  fl = 0;
  std::memcpy(r.mem.at(d), &s2, 8);
  std::memcpy(r.mem.at(d + 8), &n, 4);
  std::memcpy(r.mem.at(d + 12), &fl, 4);
  EXPECT_EQ(r.run(kDiscard, 0, {{d, 16, false}}), 0);
  for (u64 i = 20 * 512; i < 21 * 512; i++) ASSERT_EQ(r.file->data()[i], 0) << i;
  // The unmap flag on discard and unknown flags are unsupported; a range past
  // the end is an I/O error.
  fl = 1;
  std::memcpy(r.mem.at(d + 12), &fl, 4);
  EXPECT_EQ(r.run(kDiscard, 0, {{d, 16, false}}), 2);
  fl = 4;
  std::memcpy(r.mem.at(d + 12), &fl, 4);
  EXPECT_EQ(r.run(kWriteZeroes, 0, {{d, 16, false}}), 2);
  fl = 0;
  s2 = kDisk / 512;
  std::memcpy(r.mem.at(d), &s2, 8);
  std::memcpy(r.mem.at(d + 12), &fl, 4);
  EXPECT_EQ(r.run(kWriteZeroes, 0, {{d, 16, false}}), 1);
  EXPECT_EQ(r.run(kWriteZeroes, 0, {{d, 15, false}}), 1);  // not whole segments
}

TEST(VirtioBlk, BadRequestsFailCleanly) {
  BlkRig r;
  const u64 a = r.drv->alloc(4096);
  EXPECT_EQ(r.run(kIn, kDisk / 512, {{a, 512, true}}), 1);      // past the end
  EXPECT_EQ(r.run(kIn, kDisk / 512 - 1, {{a, 1024, true}}), 1);  // straddles the end
  EXPECT_EQ(r.run(kIn, ~0ull / 256, {{a, 512, true}}), 1);       // sector * 512 overflows
  EXPECT_EQ(r.run(kOut, 0, {{a, 100, false}}), 1);               // not whole sectors
  EXPECT_EQ(r.run(kIn, 0, {}), 0);                                // nothing to read: fine
  EXPECT_EQ(r.run(99, 0, {}), 2);                                 // unknown type
  EXPECT_EQ(r.run(10, 0, {{a, 16, true}}), 2);                    // GET_LIFETIME: not offered
  EXPECT_FALSE(r.blk->broken());
}

TEST(VirtioBlk, ReadOnlyRefusesWrites) {
  BlkRig r({}, /*writable=*/false);
  const u64 a = r.drv->alloc(512);
  EXPECT_EQ(r.run(kOut, 0, {{a, 512, false}}), 1);
  EXPECT_EQ(r.run(kIn, 0, {{a, 512, true}}), 0);
  EXPECT_EQ(r.run(kFlush, 0, {}), 0);
  EXPECT_EQ(r.file->data()[0], 0);
  EXPECT_FALSE(r.blk->broken());
}

TEST(VirtioBlk, MalformedRequestsNeedReset) {
  {
    BlkRig r;  // read whose data buffer is device-readable
    const u64 a = r.drv->alloc(512);
    EXPECT_EQ(r.run(kIn, 0, {{a, 512, false}}), -1);
    EXPECT_TRUE(r.blk->broken());
  }
  {
    BlkRig r;  // no status byte
    r.drv->add(0, {{r.header(kIn, 0), 16, false}});
    r.drv->kick(0);
    EXPECT_TRUE(r.blk->broken());
  }
  {
    BlkRig r;  // header shorter than 16 bytes
    const u64 st = r.drv->alloc(1);
    r.drv->add(0, {{r.header(kIn, 0), 8, false}, {st, 1, true}});
    r.drv->kick(0);
    EXPECT_TRUE(r.blk->broken());
  }
}

TEST(VirtioBlk, HeaderSplitAcrossDescriptors) {
  BlkRig r;
  const u64 h = r.header(kIn, 3), c = r.drv->alloc(512), st = r.drv->alloc(1);
  r.drv->add(0, {{h, 5, false}, {h + 5, 11, false}, {c, 512, true}, {st, 1, true}});
  r.drv->kick(0);
  r.blk->drain();
  u32 id, len;
  ASSERT_TRUE(r.drv->take_used(0, &id, &len));
  EXPECT_EQ(r.mem.at(st)[0], 0);
  EXPECT_EQ(r.mem.at(c)[0], u8(3));
}

TEST(VirtioBlk, Qcow2Backend) {
  auto f = std::make_unique<block::MemFile>("disk.qcow2", std::vector<u8>{}, true);
  block::qcow2::create(*f, 4 << 20, {});
  auto disk = std::make_unique<block::Qcow2Backend>(std::move(f), block::OpenOptions{});
  auto* q = disk.get();
  BlkRig r(std::move(disk), {});
  EXPECT_EQ(r.blk->read_config(0, 8), (4u << 20) / 512);
  const u64 a = r.drv->alloc(8192), c = r.drv->alloc(8192);
  for (int i = 0; i < 8192; i++) r.mem.at(a)[i] = u8(i * 13);
  EXPECT_EQ(r.run(kOut, 100, {{a, 8192, false}}), 0);
  EXPECT_EQ(r.run(kFlush, 0, {}), 0);
  EXPECT_EQ(r.run(kIn, 100, {{c, 8192, true}}), 0);
  EXPECT_EQ(std::memcmp(r.mem.at(a), r.mem.at(c), 8192), 0);
  auto res = q->check();
  EXPECT_TRUE(res.clean()) << "qcow2 check after virtio writes";
}

TEST(VirtioBlk, ResetWithRequestsInFlight) {
  BlkRig r;
  const u64 c = r.drv->alloc(65536), st = r.drv->alloc(1);
  r.drv->add(0, {{r.header(kIn, 0), 16, false}, {c, 65536, true}, {st, 1, true}});
  r.drv->kick(0);
  r.blk->write_status(0);  // waits for the request, writes nothing back
  EXPECT_EQ(r.blk->in_flight(), 0u);
  EXPECT_EQ(r.mem.read16(r.drv->used(0) + 2), 0u);
  // Works again after a new bring-up.
  r.drv->init();
  EXPECT_EQ(r.run(kIn, 0, {{c, 512, true}}), 0);
}
