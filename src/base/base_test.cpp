#include <gtest/gtest.h>

#include "base/bits.h"
#include "base/counters.h"
#include "base/error.h"

using namespace popek;

TEST(Bits, Sext) {
  EXPECT_EQ(sext(0x80, 8), 0xFFFFFF80u);
  EXPECT_EQ(sext(0x7F, 8), 0x7Fu);
  EXPECT_EQ(sext(0x8000, 16), 0xFFFF8000u);
  EXPECT_EQ(sext(0x12345678, 32), 0x12345678u);
  EXPECT_EQ(size_mask(2), 0xFFFFu);
  EXPECT_EQ(size_sign(1), 0x80u);
}

TEST(Counters, StableReferences) {
  Counters c;
  u64& a = c.get("a");
  for (int i = 0; i < 100; i++) c.get("x" + std::to_string(i));
  a += 3;
  EXPECT_EQ(c.get("a"), 3u);
  EXPECT_EQ(c.snapshot().size(), 101u);
  c.reset();
  EXPECT_EQ(c.get("a"), 0u);
}

TEST(Result, ValueAndError) {
  Result<int> ok(5);
  EXPECT_TRUE(ok.ok());
  EXPECT_EQ(*ok, 5);
  auto bad = Result<int>::fail("no such file");
  EXPECT_FALSE(bad.ok());
  EXPECT_EQ(bad.error(), "no such file");
  EXPECT_THROW(bad.value(), Error);
}
