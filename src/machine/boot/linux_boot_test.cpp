#include "machine/boot/linux_boot.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <fstream>

#include "base/bits.h"
#include "base/error.h"

using namespace popek;
using namespace popek::boot;

namespace {

constexpr u64 kMiB = 1024 * 1024;

// A synthetic bzImage with a protocol 2.15 header shaped like Debian's 6.1
// i686 kernel: relocatable, 16 MiB alignment and pref_address.
struct FakeKernel {
  u8 setup_sects = 4;
  u16 version = 0x020F;
  u8 loadflags = kLoadedHigh;
  u32 pm_size = 64 * 1024;
  u32 init_size = 0x100C000;
  u64 pref_address = 0x1000000;
  u32 initrd_addr_max = 0x7FFFFFFF;
  u32 cmdline_size = 2047;
  bool relocatable = true;
  const char* magic = "HdrS";

  std::vector<u8> build() const {
    const usize setup = (usize{setup_sects ? setup_sects : 4u} + 1) * 512;
    std::vector<u8> f(setup + pm_size, 0);
    f[off::kSetupSects] = setup_sects;
    store_le<u16>(&f[off::kBootFlag], 0xAA55);
    f[off::kJump] = 0xEB;
    f[off::kJump + 1] = 0x6A;  // header ends at 0x26C
    std::memcpy(&f[off::kHeader], magic, 4);
    store_le<u16>(&f[off::kVersion], version);
    store_le<u32>(&f[off::kSyssize], pm_size / 16);
    store_le<u16>(&f[off::kKernelVersion], 0x100);  // string at 0x300
    const char* ver = "6.1.0-test-686 (fake) #1";
    std::memcpy(&f[0x300], ver, std::strlen(ver) + 1);
    f[off::kLoadflags] = loadflags;
    store_le<u32>(&f[off::kCode32Start], 0x100000);
    store_le<u32>(&f[off::kInitrdAddrMax], initrd_addr_max);
    store_le<u32>(&f[off::kKernelAlignment], 0x1000000);
    f[off::kRelocatable] = relocatable;
    f[off::kMinAlignment] = 13;
    store_le<u16>(&f[off::kXloadflags], 0x4);
    store_le<u32>(&f[off::kCmdlineSize], cmdline_size);
    store_le<u32>(&f[off::kPayloadOffset], 0x94);
    store_le<u32>(&f[off::kPayloadLength], pm_size / 2);
    store_le<u64>(&f[off::kPrefAddress], pref_address);
    store_le<u32>(&f[off::kInitSize], init_size);
    // The protected-mode part: a recognizable pattern.
    for (u32 i = 0; i < pm_size; i++) f[setup + i] = static_cast<u8>(i * 7 + 1);
    return f;
  }
};

// The e820 map a PC with `ram` bytes would have.
std::vector<E820Entry> pc_e820(u64 ram) {
  return {{0, 0x9FC00, E820Type::kRam},
          {0x9FC00, 0x400, E820Type::kReserved},
          {0xF0000, 0x10000, E820Type::kReserved},
          {0x100000, ram - 0x100000, E820Type::kRam}};
}

LoadOptions opts(u64 ram) {
  LoadOptions o;
  o.e820 = pc_e820(ram);
  return o;
}

// EXPECT that `f` throws popek::Error whose message contains all of `parts`.
template <typename F>
void expect_error(F&& f, std::initializer_list<const char*> parts) {
  try {
    f();
    ADD_FAILURE() << "no error thrown";
  } catch (const Error& e) {
    const std::string m = e.what();
    for (const char* p : parts) EXPECT_NE(m.find(p), std::string::npos) << "'" << p << "' not in: " << m;
  }
}

}  // namespace

// --- parsing ----------------------------------------------------------------------

TEST(BzImage, ParsesGoodHeader) {
  FakeKernel fk;
  auto f = fk.build();
  auto k = parse_bzimage(f, "fake");
  EXPECT_EQ(k.hdr.version, 0x020F);
  EXPECT_EQ(k.hdr.setup_sects, 4);
  EXPECT_EQ(k.setup_size, 5u * 512);
  EXPECT_EQ(k.protected_mode().size(), fk.pm_size);
  EXPECT_EQ(k.protected_mode()[0], 1);
  EXPECT_EQ(k.hdr.code32_start, 0x100000u);
  EXPECT_TRUE(k.hdr.relocatable);
  EXPECT_EQ(k.hdr.kernel_alignment, 0x1000000u);
  EXPECT_EQ(k.hdr.initrd_addr_max, 0x7FFFFFFFu);
  EXPECT_EQ(k.hdr.cmdline_size, 2047u);
  EXPECT_EQ(k.hdr.pref_address, 0x1000000u);
  EXPECT_EQ(k.hdr.init_size, 0x100C000u);
  EXPECT_EQ(k.hdr.header_end, 0x26Cu);
  EXPECT_EQ(k.version_string, "6.1.0-test-686 (fake) #1");
  // Relocatable: 1 MiB aligned up to 16 MiB, not below pref_address.
  EXPECT_EQ(k.runtime_start, 0x1000000u);
  EXPECT_EQ(k.runtime_end, 0x1000000u + 0x100C000u);
  EXPECT_EQ(k.footprint_end(), 0x200C000u);
}

TEST(BzImage, SetupSectsZeroMeansFour) {
  FakeKernel fk;
  fk.setup_sects = 0;
  auto f = fk.build();
  auto k = parse_bzimage(f);
  EXPECT_EQ(k.setup_size, 5u * 512);
  EXPECT_EQ(k.protected_mode().size(), fk.pm_size);
}

TEST(BzImage, NonRelocatableRunsAtPrefAddress) {
  FakeKernel fk;
  fk.relocatable = false;
  fk.pref_address = 0x400000;
  fk.init_size = 0x200000;
  auto f = fk.build();
  auto k = parse_bzimage(f);
  EXPECT_EQ(k.runtime_start, 0x400000u);
  EXPECT_EQ(k.footprint_end(), 0x600000u);
}

TEST(BzImage, RefusesBadMagic) {
  FakeKernel fk;
  fk.magic = "MZ\0\0";
  auto f = fk.build();
  expect_error([&] { parse_bzimage(f, "/x/vmlinux"); }, {"/x/vmlinux", "not a Linux bzImage", "HdrS"});
}

TEST(BzImage, RefusesTinyFile) {
  std::vector<u8> f(100, 0x7F);
  expect_error([&] { parse_bzimage(f, "k"); }, {"'k'", "not a bzImage", "too short"});
  std::vector<u8> empty;
  expect_error([&] { parse_bzimage(empty, "k"); }, {"not a bzImage"});
}

TEST(BzImage, RefusesOldProtocol) {
  FakeKernel fk;
  fk.version = 0x0204;
  auto f = fk.build();
  expect_error([&] { parse_bzimage(f, "old"); }, {"protocol 2.04", "2.06 or newer"});
}

TEST(BzImage, AcceptsProtocol206) {
  FakeKernel fk;
  fk.version = 0x0206;
  auto f = fk.build();
  auto k = parse_bzimage(f);
  EXPECT_EQ(k.hdr.init_size, 0u);  // not read before 2.10
  EXPECT_EQ(k.hdr.pref_address, 0u);
  EXPECT_EQ(k.runtime_start, 0x1000000u);  // relocatable: 1 MiB aligned up to 16 MiB
  EXPECT_EQ(k.runtime_end, 0x1000000u + 4u * fk.pm_size);  // estimated
}

TEST(BzImage, RefusesZImage) {
  FakeKernel fk;
  fk.loadflags = 0;
  auto f = fk.build();
  expect_error([&] { parse_bzimage(f); }, {"zImage", "LOADED_HIGH"});
}

TEST(BzImage, RefusesTruncated) {
  FakeKernel fk;
  auto f = fk.build();
  // Only the setup sectors.
  std::vector<u8> cut(f.begin(), f.begin() + 5 * 512);
  expect_error([&] { parse_bzimage(cut, "cut"); }, {"'cut'", "truncated", "no protected-mode"});
  // Cut inside the compressed payload.
  std::vector<u8> cut2(f.begin(), f.begin() + 5 * 512 + 1000);
  expect_error([&] { parse_bzimage(cut2, "cut2"); }, {"truncated", "payload"});
  // Cut inside the setup header itself.
  std::vector<u8> cut3(f.begin(), f.begin() + 0x240);
  expect_error([&] { parse_bzimage(cut3, "cut3"); }, {"truncated"});
}

TEST(BzImage, RefusesTruncatedBySyssize) {
  FakeKernel fk;
  fk.pm_size = 1024 * 1024;
  auto f = fk.build();
  // Keep the payload (first half) but lose the last 300 KiB.
  std::vector<u8> cut(f.begin(), f.end() - 300 * 1024);
  expect_error([&] { parse_bzimage(cut, "cut"); }, {"truncated", "protected-mode code"});
}

// --- files ------------------------------------------------------------------------------

TEST(BootFiles, MissingEmptyDirectory) {
  expect_error([] { read_boot_file("/nonexistent/bzImage", "kernel"); },
               {"kernel", "/nonexistent/bzImage", "No such file"});
  expect_error([] { read_boot_file("/tmp", "initrd"); }, {"initrd", "directory"});
  expect_error([] { read_boot_file("", "initrd"); }, {"initrd", "no file name"});
  const std::string p = testing::TempDir() + "popek_empty_" + std::to_string(::getpid());
  { std::ofstream(p).flush(); }
  expect_error([&] { read_boot_file(p, "initrd"); }, {"initrd", "empty"});
  { std::ofstream(p, std::ios::binary) << "abc"; }
  auto d = read_boot_file(p, "initrd");
  EXPECT_EQ(d.size(), 3u);
  std::filesystem::remove(p);
}

// --- plan and boot_params ---------------------------------------------------------------

TEST(LoadLinux, BootParamsFields) {
  FakeKernel fk;
  auto f = fk.build();
  auto k = parse_bzimage(f);
  const u64 ram_size = 64 * kMiB;
  std::vector<u8> ram(ram_size, 0xAA);
  std::vector<u8> initrd(10000, 0x5A);
  auto o = opts(ram_size);
  auto r = load_linux(ram, k, initrd, "console=ttyS0 quiet", o);

  const u8* bp = &ram[kDefaultBootParamsAddr];
  EXPECT_EQ(r.plan.boot_params_addr, 0x7000u);
  // The setup header is copied at 0x1F1 and reaches header_end.
  // (vid_mode at 0x1FA is the loader's to set: 0xFFFF, checked below.)
  EXPECT_EQ(std::memcmp(bp + off::kSetupSects, &f[off::kSetupSects], off::kVidMode - 0x1F1), 0);
  EXPECT_EQ(std::memcmp(bp + 0x1FC, &f[0x1FC], 0x210 - 0x1FC), 0);
  EXPECT_EQ(std::memcmp(bp + 0x22C, &f[0x22C], 0x26C - 0x22C), 0);
  EXPECT_EQ(std::memcmp(bp + 0x202, "HdrS", 4), 0);
  EXPECT_EQ(load_le<u16>(bp + off::kVersion), 0x020F);
  EXPECT_EQ(load_le<u32>(bp + off::kCode32Start), 0x100000u);
  EXPECT_EQ(load_le<u32>(bp + off::kInitSize), 0x100C000u);
  EXPECT_EQ(load_le<u32>(bp + off::kCmdlineSize), 2047u);
  // Everything outside the header and the fields we fill is zero.
  for (usize i = 0x26C; i < off::kE820Table; i++) EXPECT_EQ(bp[i], 0) << "at " << i;
  EXPECT_EQ(bp[off::kSentinel], 0);
  for (usize i = 0; i < 0x40; i++)
    if (i != off::kExtMemK && i != off::kExtMemK + 1) {
      EXPECT_EQ(bp[i], 0) << "screen_info " << i;
    }
  EXPECT_EQ(bp[off::kOrigVideoIsVga], 0);
  // Loader fields.
  EXPECT_EQ(bp[off::kTypeOfLoader], 0xFF);
  EXPECT_EQ(bp[off::kLoadflags], kLoadedHigh | kCanUseHeap);
  EXPECT_EQ(load_le<u16>(bp + off::kHeapEndPtr), 0xFE00);
  EXPECT_EQ(load_le<u16>(bp + off::kVidMode), 0xFFFF);
  EXPECT_EQ(load_le<u32>(bp + off::kCmdLinePtr), 0x20000u);
  EXPECT_EQ(load_le<u32>(bp + off::kRamdiskImage), r.plan.initrd_addr);
  EXPECT_EQ(load_le<u32>(bp + off::kRamdiskSize), 10000u);
  EXPECT_EQ(load_le<u32>(bp + off::kExtRamdiskImage), 0u);
  EXPECT_EQ(load_le<u32>(bp + off::kExtCmdLinePtr), 0u);
  EXPECT_EQ(load_le<u32>(bp + off::kAltMemK), (ram_size - kMiB) / 1024);
  EXPECT_EQ(load_le<u16>(bp + off::kExtMemK), (ram_size - kMiB) / 1024);
  // e820: count at 0x1E8, 20-byte entries at 0x2D0.
  ASSERT_EQ(bp[off::kE820Entries], 4);
  for (usize i = 0; i < 4; i++) {
    EXPECT_EQ(load_le<u64>(bp + 0x2D0 + i * 20), o.e820[i].addr);
    EXPECT_EQ(load_le<u64>(bp + 0x2D0 + i * 20 + 8), o.e820[i].size);
    EXPECT_EQ(load_le<u32>(bp + 0x2D0 + i * 20 + 16), static_cast<u32>(o.e820[i].type));
  }
  EXPECT_EQ(load_le<u64>(bp + 0x2D0 + 3 * 20 + 8), ram_size - kMiB);
  for (usize i = 0x2D0 + 4 * 20; i < kBootParamsSize; i++) ASSERT_EQ(bp[i], 0) << "at " << i;
  // Outside boot_params, untouched.
  EXPECT_EQ(ram[kDefaultBootParamsAddr - 1], 0xAA);
  EXPECT_EQ(ram[kDefaultBootParamsAddr + kBootParamsSize], 0xAA);
}

TEST(LoadLinux, KernelCmdlineInitrdBytesAndEntry) {
  FakeKernel fk;
  auto f = fk.build();
  auto k = parse_bzimage(f);
  const u64 ram_size = 64 * kMiB;
  std::vector<u8> ram(ram_size, 0xAA);
  std::vector<u8> initrd(3 * 4096 + 5);
  for (usize i = 0; i < initrd.size(); i++) initrd[i] = static_cast<u8>(i ^ 0x33);
  auto r = load_linux(ram, k, initrd, "console=ttyS0", opts(ram_size));

  EXPECT_EQ(r.plan.kernel_addr, 0x100000u);
  EXPECT_EQ(r.plan.kernel_size, fk.pm_size);
  EXPECT_TRUE(std::equal(k.protected_mode().begin(), k.protected_mode().end(), ram.begin() + 0x100000));
  EXPECT_EQ(ram[0x100000 + fk.pm_size], 0xAA);
  EXPECT_EQ(std::string(reinterpret_cast<const char*>(&ram[0x20000])), "console=ttyS0");
  EXPECT_EQ(r.plan.cmdline_bytes, 14u);
  EXPECT_TRUE(std::equal(initrd.begin(), initrd.end(), ram.begin() + r.plan.initrd_addr));

  const EntryState& e = r.entry;
  EXPECT_EQ(e.eip, 0x100000u);
  EXPECT_EQ(e.esi, 0x7000u);
  EXPECT_EQ(e.ebp, 0u);
  EXPECT_EQ(e.edi, 0u);
  EXPECT_EQ(e.ebx, 0u);
  EXPECT_EQ(e.eflags & 0x200, 0u);  // IF = 0
  EXPECT_EQ(e.cr0 & 1, 1u);         // protected mode
  EXPECT_EQ(e.cr0 & 0x80000000u, 0u);  // no paging
  EXPECT_EQ(e.cs.selector, 0x10);
  EXPECT_EQ(e.ds.selector, 0x18);
  EXPECT_EQ(e.es.selector, 0x18);
  EXPECT_EQ(e.ss.selector, 0x18);
  for (const FlatSegment* s : {&e.cs, &e.ds, &e.es, &e.ss}) {
    EXPECT_EQ(s->base, 0u);
    EXPECT_EQ(s->limit, 0xFFFFFFFFu);
    EXPECT_EQ(s->flags, 0xC);
  }
  EXPECT_EQ(e.cs.access, 0x9B);  // present, ring 0, code, execute/read
  EXPECT_EQ(e.ds.access, 0x93);  // present, ring 0, data, read/write
}

TEST(LoadLinux, InitrdGoesHighPageAligned) {
  FakeKernel fk;
  auto f = fk.build();
  auto k = parse_bzimage(f);
  const u64 ram = 64 * kMiB;
  auto p = plan_linux_boot(k, ram, 10000, 10, opts(ram));
  EXPECT_EQ(p.initrd_addr % 4096, 0u);
  EXPECT_LE(u64{p.initrd_addr} + p.initrd_size, ram);
  EXPECT_EQ(p.initrd_addr, ram - 12288);  // 10000 rounded to the page below the top
  EXPECT_GE(p.initrd_addr, k.footprint_end());

  // An exact multiple of the page size sits flush with the end of RAM.
  p = plan_linux_boot(k, ram, 8192, 10, opts(ram));
  EXPECT_EQ(p.initrd_addr, ram - 8192);

  // initrd_addr_max limits it (highest byte address it may occupy).
  FakeKernel lim = fk;
  lim.initrd_addr_max = 0x37FFFFF;  // 56 MiB - 1
  auto f2 = lim.build();
  auto k2 = parse_bzimage(f2);
  p = plan_linux_boot(k2, ram, 10000, 10, opts(ram));
  EXPECT_EQ(p.initrd_addr, 0x3800000u - 12288);

  // The caller's limit too.
  auto o = opts(ram);
  o.initrd_limit = 48 * kMiB;
  p = plan_linux_boot(k, ram, 10000, 10, o);
  EXPECT_EQ(p.initrd_addr, 48 * kMiB - 12288);

  // No initrd: zero address and size.
  p = plan_linux_boot(k, ram, 0, 10, opts(ram));
  EXPECT_EQ(p.initrd_addr, 0u);
  EXPECT_EQ(p.initrd_size, 0u);
}

TEST(LoadLinux, InitrdSkipsE820Holes) {
  FakeKernel fk;
  auto f = fk.build();
  auto k = parse_bzimage(f);
  const u64 ram = 64 * kMiB;
  LoadOptions o;
  o.e820 = {{0, 0x9FC00, E820Type::kRam},
            {0x100000, 48 * kMiB - 0x100000, E820Type::kRam},
            {48 * kMiB, 15 * kMiB, E820Type::kReserved},
            {63 * kMiB, 1 * kMiB, E820Type::kRam}};
  // Small: fits in the top 1 MiB entry.
  auto p = plan_linux_boot(k, ram, 100000, 10, o);
  EXPECT_EQ(p.initrd_addr, 64 * kMiB - 102400);
  // 2 MiB: only below the reserved hole.
  p = plan_linux_boot(k, ram, 2 * kMiB, 10, o);
  EXPECT_EQ(p.initrd_addr, 46 * kMiB);
}

TEST(LoadLinux, InitrdTooLarge) {
  FakeKernel fk;
  auto f = fk.build();
  auto k = parse_bzimage(f);
  const u64 ram = 64 * kMiB;
  // The kernel uses up to ~32 MiB; 40 MiB of initrd cannot fit above it.
  expect_error([&] { plan_linux_boot(k, ram, 40 * kMiB, 10, opts(ram)); },
               {"initrd", "does not fit", "more memory"});
  // Just fits: everything between the kernel's footprint and the end of RAM.
  const u64 room = ram - ((k.footprint_end() + 4095) / 4096 * 4096);
  auto p = plan_linux_boot(k, ram, room, 10, opts(ram));
  EXPECT_GE(p.initrd_addr, k.footprint_end());
}

TEST(LoadLinux, KernelTooLargeForRam) {
  FakeKernel fk;
  auto f = fk.build();
  auto k = parse_bzimage(f);
  // Needs RAM up to 16 MiB + init_size (~32 MiB).
  expect_error([&] { plan_linux_boot(k, 24 * kMiB, 0, 10, opts(24 * kMiB)); },
               {"needs RAM up to 32.0 MiB", "24.0 MiB", "more memory"});
  // A protected-mode part bigger than the RAM above 1 MiB.
  FakeKernel big;
  big.pm_size = 3 * kMiB;
  big.init_size = 0;
  big.relocatable = false;
  big.pref_address = 0x100000;
  auto f2 = big.build();
  auto k2 = parse_bzimage(f2);
  expect_error([&] { plan_linux_boot(k2, 2 * kMiB, 0, 10, opts(2 * kMiB)); },
               {"does not fit in 2.0 MiB", "give the VM more memory"});
}

TEST(LoadLinux, CmdlineLimits) {
  FakeKernel fk;
  fk.cmdline_size = 255;
  auto f = fk.build();
  auto k = parse_bzimage(f);
  const u64 ram_size = 64 * kMiB;
  std::vector<u8> ram(ram_size, 0xAA);
  const std::string ok(255, 'x');
  auto r = load_linux(ram, k, {}, ok, opts(ram_size));
  EXPECT_EQ(r.plan.cmdline_bytes, 256u);
  EXPECT_EQ(ram[0x20000 + 254], 'x');
  EXPECT_EQ(ram[0x20000 + 255], 0);

  // One byte too many: refused, and nothing is written.
  std::vector<u8> ram2(ram_size, 0xAA);
  const std::string too_long(256, 'x');
  expect_error([&] { load_linux(ram2, k, {}, too_long, opts(ram_size)); },
               {"256 bytes", "at most 255", "cmdline_size"});
  EXPECT_TRUE(std::all_of(ram2.begin(), ram2.end(), [](u8 b) { return b == 0xAA; }));

  // NUL inside.
  expect_error([&] { load_linux(ram2, k, {}, std::string_view("a\0b", 3), opts(ram_size)); },
               {"NUL"});
  // Empty command line: just the terminator.
  r = load_linux(ram, k, {}, "", opts(ram_size));
  EXPECT_EQ(r.plan.cmdline_bytes, 1u);
  EXPECT_EQ(ram[0x20000], 0);
}

TEST(LoadLinux, AddressChecks) {
  FakeKernel fk;
  auto f = fk.build();
  auto k = parse_bzimage(f);
  const u64 ram = 64 * kMiB;
  auto o = opts(ram);
  o.cmdline_addr = 0x7800;  // inside boot_params at 0x7000
  expect_error([&] { plan_linux_boot(k, ram, 0, 10, o); }, {"overlaps boot_params"});
  o = opts(ram);
  o.cmdline_addr = 0x9FFF0;  // runs past 0xA0000
  expect_error([&] { plan_linux_boot(k, ram, 0, 100, o); }, {"below 0xA0000"});
  o = opts(ram);
  o.boot_params_addr = 0x7001;
  expect_error([&] { plan_linux_boot(k, ram, 0, 10, o); }, {"boot_params", "aligned"});
  o = opts(ram);
  o.e820.clear();
  expect_error([&] { plan_linux_boot(k, ram, 0, 10, o); }, {"e820"});
  o = opts(ram);
  o.e820[3].size = 8 * kMiB;  // RAM above 1 MiB ends before the kernel's runtime area
  expect_error([&] { plan_linux_boot(k, ram, 0, 10, o); }, {"e820", "no RAM entry"});
  o = opts(ram);
  o.e820.resize(129, o.e820[0]);
  expect_error([&] { plan_linux_boot(k, ram, 0, 10, o); }, {"at most 128"});
}

// --- GDT --------------------------------------------------------------------------------

TEST(BootGdt, FlatDescriptors) {
  EXPECT_EQ(make_descriptor(0, 0xFFFFF, 0x9B, 0xC), 0x00CF9B000000FFFFull);
  EXPECT_EQ(make_descriptor(0, 0xFFFFF, 0x93, 0xC), 0x00CF93000000FFFFull);
  EXPECT_EQ(make_descriptor(0x12345678, 0xABCDE, 0x89, 0x0), 0x120A89345678BCDEull);

  std::vector<u8> ram(1 * kMiB, 0xAA);
  auto g = write_boot_gdt(ram, 0x6000);
  EXPECT_EQ(g.base, 0x6000u);
  EXPECT_EQ(g.limit, 31);
  EXPECT_EQ(load_le<u64>(&ram[0x6000]), 0u);
  EXPECT_EQ(load_le<u64>(&ram[0x6008]), 0u);
  EXPECT_EQ(load_le<u64>(&ram[0x6000 + kBootCs]), 0x00CF9B000000FFFFull);
  EXPECT_EQ(load_le<u64>(&ram[0x6000 + kBootDs]), 0x00CF93000000FFFFull);
  EXPECT_EQ(ram[0x6020], 0xAA);
  expect_error([&] { write_boot_gdt(ram, 0x6004); }, {"aligned"});
  expect_error([&] { write_boot_gdt(ram, 1 * kMiB - 8); }, {"inside RAM"});
}

// --- the real Debian kernel, when scripts/fetch-guest.sh has fetched it -------------

TEST(RealKernel, DebianVmlinuz) {
  const char* env = std::getenv("POPEK_CACHE");
  const std::filesystem::path dir = env && *env ? env : POPEK_DEFAULT_GUEST_CACHE;
  const auto kpath = dir / "vmlinuz";
  if (!std::filesystem::exists(kpath))
    GTEST_SKIP() << kpath << " not present; run scripts/fetch-guest.sh";

  auto file = read_boot_file(kpath.string(), "kernel");
  auto k = parse_bzimage(file, kpath.string());
  EXPECT_GE(k.hdr.version, 0x020A);
  EXPECT_TRUE(k.hdr.loadflags & kLoadedHigh);
  EXPECT_TRUE(k.hdr.relocatable);
  EXPECT_EQ(k.hdr.code32_start, 0x100000u);
  EXPECT_GT(k.hdr.init_size, 0u);
  EXPECT_GE(k.hdr.cmdline_size, 255u);
  std::ifstream vf(dir / "VERSION");
  std::string ver;
  if (vf >> ver) {
    EXPECT_EQ(k.version_string.rfind(ver, 0), 0u) << k.version_string;
  }

  big_vector<u8> initrd;
  if (std::filesystem::exists(dir / "initrd.img"))
    initrd = read_boot_file((dir / "initrd.img").string(), "initrd");
  const u64 ram_size = 256 * kMiB;
  std::vector<u8> ram(ram_size);
  auto r = load_linux(ram, k, initrd, "console=ttyS0 quiet", opts(ram_size));
  EXPECT_EQ(r.entry.eip, 0x100000u);
  EXPECT_EQ(std::memcmp(&ram[0x7000 + 0x202], "HdrS", 4), 0);
  EXPECT_TRUE(std::equal(k.protected_mode().begin(), k.protected_mode().end(), ram.begin() + 0x100000));
  if (!initrd.empty()) {
    EXPECT_EQ(r.plan.initrd_addr % 4096, 0u);
    EXPECT_GE(r.plan.initrd_addr, k.footprint_end());
    EXPECT_LE(u64{r.plan.initrd_addr} + initrd.size(), ram_size);
    EXPECT_GT(u64{r.plan.initrd_addr} + initrd.size(), ram_size - 4096);
    // gzip magic where the initrd landed
    EXPECT_EQ(ram[r.plan.initrd_addr], 0x1F);
    EXPECT_EQ(ram[r.plan.initrd_addr + 1], 0x8B);
  }
  // Too little RAM for this kernel is refused with its own numbers.
  expect_error([&] { plan_linux_boot(k, 16 * kMiB, 0, 10, opts(16 * kMiB)); }, {"needs RAM up to"});
}
