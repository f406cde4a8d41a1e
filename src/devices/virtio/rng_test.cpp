// virtio-rng: buffers come back full of host randomness; a device-readable
// buffer is malformed.
#include <gtest/gtest.h>

#include "devices/virtio/rng.h"
#include "devices/virtio/test_driver.h"

using namespace popek;
using namespace popek::dev::virtio;
using namespace popek::dev::virtio::test;

TEST(VirtioRng, FillsBuffers) {
  TestMem mem(2 << 20);
  VirtioRng rng("virtio-rng0", mem);
  TestDriver drv(rng, mem);
  drv.init();
  const u64 a = drv.alloc(64), b = drv.alloc(4096);
  drv.add(0, {{a, 64, true}, {b, 4096, true}});
  drv.kick(0);
  u32 id, len;
  ASSERT_TRUE(drv.take_used(0, &id, &len));
  EXPECT_EQ(len, 64u + 4096);
  int zeros = 0;
  for (int i = 0; i < 4096; i++) zeros += mem.at(b)[i] == 0;
  EXPECT_LT(zeros, 100);  // about 16 expected
  EXPECT_EQ(rng.isr(), kIsrQueue);
  EXPECT_GE(mem.written_bytes, 4160u);
}

TEST(VirtioRng, ReadableBufferNeedsReset) {
  TestMem mem(2 << 20);
  VirtioRng rng("virtio-rng0", mem);
  TestDriver drv(rng, mem);
  drv.init();
  drv.add(0, {{drv.alloc(16), 16, false}});
  drv.kick(0);
  EXPECT_TRUE(rng.broken());
  EXPECT_NE(rng.broken_reason().find("read-only"), std::string::npos);
}
