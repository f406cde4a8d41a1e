// The Linux/x86 32-bit boot protocol. See linux_boot.h.
#include "machine/boot/linux_boot.h"

#include <sys/stat.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <fstream>

#include "base/bits.h"
#include "base/error.h"

namespace popek::boot {
namespace {

std::string hex(u64 v) {
  char b[24];
  std::snprintf(b, sizeof b, "0x%llx", static_cast<unsigned long long>(v));
  return b;
}

// Sizes for people: "5.4 MiB (5707712 bytes)".
std::string size_str(u64 n) {
  char b[64];
  if (n >= 1024 * 1024)
    std::snprintf(b, sizeof b, "%.1f MiB (%llu bytes)", n / (1024.0 * 1024.0),
                  static_cast<unsigned long long>(n));
  else
    std::snprintf(b, sizeof b, "%llu bytes", static_cast<unsigned long long>(n));
  return b;
}

std::string mib(u64 n) {
  char b[32];
  std::snprintf(b, sizeof b, "%.1f MiB", n / (1024.0 * 1024.0));
  return b;
}

constexpr u64 align_up(u64 v, u64 a) { return a ? (v + a - 1) / a * a : v; }
constexpr u64 align_down(u64 v, u64 a) { return a ? v / a * a : v; }

template <typename T>
T rd(std::span<const u8> f, usize off) {
  return load_le<T>(f.data() + off);
}
template <typename T>
void wr(std::span<u8> b, usize off, T v) {
  store_le<T>(b.data() + off, v);
}

// Is [lo, hi) inside one e820 RAM entry?
bool covered_by_ram(std::span<const E820Entry> e820, u64 lo, u64 hi) {
  for (const auto& e : e820) {
    if (e.type != E820Type::kRam) continue;
    if (lo >= e.addr && hi <= e.addr + e.size) return true;
  }
  return false;
}

bool overlaps(u64 a_lo, u64 a_hi, u64 b_lo, u64 b_hi) { return a_lo < b_hi && b_lo < a_hi; }

}  // namespace

u64 BzImage::footprint_end() const {
  return std::max<u64>(kKernelLoadAddr + protected_mode().size(), runtime_end);
}

big_vector<u8> read_boot_file(const std::string& path, std::string_view what) {
  const std::string w(what);
  if (path.empty()) throw Error(w + ": no file name given");
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0)
    throw Error(w + " '" + path + "': " + std::strerror(errno));
  if (S_ISDIR(st.st_mode)) throw Error(w + " '" + path + "' is a directory, not a file");
  if (!S_ISREG(st.st_mode)) throw Error(w + " '" + path + "' is not a regular file");
  std::ifstream in(path, std::ios::binary);
  if (!in) throw Error(w + " '" + path + "': cannot open: " + std::strerror(errno));
  big_vector<u8> data(static_cast<usize>(st.st_size));
  if (!data.empty() && !in.read(reinterpret_cast<char*>(data.data()), st.st_size))
    throw Error(w + " '" + path + "': read error after " + std::to_string(in.gcount()) +
                " of " + std::to_string(st.st_size) + " bytes");
  if (data.empty()) throw Error(w + " '" + path + "' is empty");
  return data;
}

BzImage parse_bzimage(std::span<const u8> f, std::string name) {
  const std::string k = "kernel '" + name + "'";
  // The header up to its protocol-2.10 fields must be there before any field
  // can be trusted; a shorter file is either truncated or not a kernel.
  if (f.size() < off::kHeader + 4)
    throw Error(k + " is not a bzImage: only " + size_str(f.size()) +
                ", too short to hold the Linux setup header (0x1F1..0x264)");
  if (std::memcmp(f.data() + off::kHeader, "HdrS", 4) != 0)
    throw Error(k + " is not a Linux bzImage: no \"HdrS\" magic at offset 0x202" +
                " (an ELF vmlinux, a compressed file or another OS's kernel?)");
  if (f.size() < off::kSetupHeaderMin)
    throw Error(k + " is truncated: " + size_str(f.size()) +
                ", shorter than its own setup header");

  BzImage img;
  img.name = std::move(name);
  img.file = f;
  SetupHeader& h = img.hdr;
  h.setup_sects = rd<u8>(f, off::kSetupSects);
  h.boot_flag = rd<u16>(f, off::kBootFlag);
  h.syssize = rd<u32>(f, off::kSyssize);
  h.version = rd<u16>(f, off::kVersion);
  h.kernel_version = rd<u16>(f, off::kKernelVersion);
  h.loadflags = rd<u8>(f, off::kLoadflags);
  h.code32_start = rd<u32>(f, off::kCode32Start);
  h.header_end = 0x202 + rd<u8>(f, off::kJump + 1);

  if (h.version < kMinProtocol) {
    char v[16];
    std::snprintf(v, sizeof v, "%u.%02u", h.version >> 8, h.version & 0xFF);
    throw Error(k + " uses boot protocol " + v +
                "; popek needs 2.06 or newer (Linux 2.6.22+)");
  }
  if (h.boot_flag != 0xAA55)
    throw Error(k + " has a \"HdrS\" header but no 0xAA55 boot flag at 0x1FE: damaged image");
  if (!(h.loadflags & kLoadedHigh))
    throw Error(k + " is a zImage (LOADED_HIGH not set in loadflags): it must be loaded at " +
                "0x10000, which the 32-bit boot protocol does not do; use a bzImage");

  h.initrd_addr_max = rd<u32>(f, off::kInitrdAddrMax);
  h.kernel_alignment = rd<u32>(f, off::kKernelAlignment);
  h.relocatable = rd<u8>(f, off::kRelocatable) != 0;
  h.cmdline_size = rd<u32>(f, off::kCmdlineSize);
  if (h.version >= 0x0208) {
    h.payload_offset = rd<u32>(f, off::kPayloadOffset);
    h.payload_length = rd<u32>(f, off::kPayloadLength);
  }
  if (h.version >= 0x020A) {
    h.min_alignment = rd<u8>(f, off::kMinAlignment);
    h.pref_address = rd<u64>(f, off::kPrefAddress);
    h.init_size = rd<u32>(f, off::kInitSize);
  }
  if (h.version >= 0x020C) h.xloadflags = rd<u16>(f, off::kXloadflags);

  const unsigned sects = h.setup_sects ? h.setup_sects : 4;
  img.setup_size = (static_cast<usize>(sects) + 1) * 512;
  // The header must reach the fields its version promises: 2.06 ends at
  // 0x23C (after cmdline_size), 2.08 at 0x250, 2.09 at 0x258, 2.10 at 0x264.
  const usize min_end = h.version >= 0x020A ? 0x264
                        : h.version >= 0x0209 ? 0x258
                        : h.version >= 0x0208 ? 0x250
                                              : 0x23C;
  if (h.header_end > img.setup_size || h.header_end < min_end)
    throw Error(k + ": setup header end " + hex(h.header_end) +
                " (from the jump at 0x200) does not fit protocol version and setup size;" +
                " damaged image");
  if (f.size() <= img.setup_size)
    throw Error(k + " is truncated: its setup code claims " + std::to_string(sects + 1) +
                " sectors (" + size_str(img.setup_size) + ") but the file has " +
                size_str(f.size()) + " and no protected-mode kernel");
  const u64 pm_size = f.size() - img.setup_size;
  if (h.version >= 0x0208 && h.payload_length != 0 &&
      u64{h.payload_offset} + h.payload_length > pm_size)
    throw Error(k + " is truncated: its compressed payload ends at " +
                hex(img.setup_size + u64{h.payload_offset} + h.payload_length) +
                " but the file has only " + size_str(f.size()));
  // syssize (16-byte units) is the protected-mode size the build recorded,
  // rounded and padded (Debian's 6.1 image: 576 bytes more than the file
  // holds); a file missing more than 64 KiB of it is cut short.
  if (u64{h.syssize} * 16 > pm_size + 65536)
    throw Error(k + " is truncated: the header records " + size_str(u64{h.syssize} * 16) +
                " of protected-mode code but the file holds " + size_str(pm_size));
  if (h.code32_start != kKernelLoadAddr &&
      (h.code32_start < kKernelLoadAddr || h.code32_start >= kKernelLoadAddr + pm_size))
    throw Error(k + ": code32_start " + hex(h.code32_start) +
                " is not inside the kernel loaded at 0x100000");
  if (h.cmdline_size == 0) throw Error(k + ": cmdline_size is 0 in the setup header");
  if (h.relocatable && h.kernel_alignment != 0 &&
      (h.kernel_alignment & (h.kernel_alignment - 1)) != 0)
    throw Error(k + ": kernel_alignment " + hex(h.kernel_alignment) + " is not a power of two");

  // Where it runs. Before 2.10 there is no pref_address/init_size: assume it
  // runs at 1 MiB and needs about four times its compressed size.
  const u64 pref = h.version >= 0x020A ? h.pref_address : kKernelLoadAddr;
  if (h.relocatable)
    img.runtime_start = std::max<u64>(align_up(kKernelLoadAddr, h.kernel_alignment), pref);
  else
    img.runtime_start = pref;
  const u64 init = h.version >= 0x020A && h.init_size ? h.init_size : pm_size * 4;
  img.runtime_end = img.runtime_start + init;

  if (h.kernel_version != 0) {
    const usize vo = usize{h.kernel_version} + 0x200;
    if (vo < img.setup_size && vo < f.size()) {
      const usize end = std::min(f.size(), img.setup_size);
      usize n = 0;
      while (vo + n < end && f[vo + n] != 0 && n < 256) n++;
      img.version_string.assign(reinterpret_cast<const char*>(f.data() + vo), n);
    }
  }
  return img;
}

LoadPlan plan_linux_boot(const BzImage& kernel, u64 ram_size, usize initrd_size,
                         usize cmdline_len, const LoadOptions& opt) {
  const std::string k = "kernel '" + kernel.name + "'";
  const SetupHeader& h = kernel.hdr;
  LoadPlan p;
  p.kernel_size = static_cast<u32>(kernel.protected_mode().size());
  p.runtime_start = kernel.runtime_start;
  p.runtime_end = kernel.runtime_end;
  p.footprint_end = kernel.footprint_end();
  p.boot_params_addr = opt.boot_params_addr;
  p.cmdline_addr = opt.cmdline_addr;

  if (ram_size > (u64{1} << 32)) ram_size = u64{1} << 32;  // 32-bit boot: the low 4 GiB

  // The kernel.
  if (u64{kKernelLoadAddr} + p.kernel_size > ram_size)
    throw Error(k + " (" + size_str(p.kernel_size) + ") does not fit in " + mib(ram_size) +
                " of RAM loaded at 1 MiB; give the VM more memory");
  if (p.footprint_end > ram_size)
    throw Error(k + " needs RAM up to " + mib(p.footprint_end) + " to boot (it runs at " +
                hex(p.runtime_start) + " and needs init_size " + size_str(h.init_size) +
                " there) but the VM has " + mib(ram_size) + "; give it more memory");
  if (opt.e820.empty()) throw Error("linux boot: no e820 memory map given");
  if (opt.e820.size() > kMaxE820Entries)
    throw Error("linux boot: e820 map has " + std::to_string(opt.e820.size()) +
                " entries; the zero page holds at most 128");
  if (!covered_by_ram(opt.e820, kKernelLoadAddr, p.footprint_end))
    throw Error(k + ": the e820 map has no RAM entry covering " + hex(kKernelLoadAddr) + ".." +
                hex(p.footprint_end) + ", where the kernel loads and runs");

  // boot_params and the command line: low memory, in RAM, apart.
  if (p.boot_params_addr % 16 != 0 || u64{p.boot_params_addr} + kBootParamsSize > kLowMemEnd ||
      !covered_by_ram(opt.e820, p.boot_params_addr, u64{p.boot_params_addr} + kBootParamsSize))
    throw Error("linux boot: boot_params address " + hex(p.boot_params_addr) +
                " must be 16-byte aligned, below 0xA0000 and in e820 RAM");
  if (cmdline_len > h.cmdline_size)
    throw Error("kernel command line is " + std::to_string(cmdline_len) + " bytes; " + k +
                " accepts at most " + std::to_string(h.cmdline_size) + " (cmdline_size)");
  p.cmdline_bytes = static_cast<u32>(cmdline_len + 1);
  const u64 cl_end = u64{p.cmdline_addr} + p.cmdline_bytes;
  if (p.cmdline_addr == 0 || cl_end > kLowMemEnd || !covered_by_ram(opt.e820, p.cmdline_addr, cl_end))
    throw Error("linux boot: command line at " + hex(p.cmdline_addr) + ".." + hex(cl_end) +
                " must be below 0xA0000 and in e820 RAM");
  if (overlaps(p.cmdline_addr, cl_end, p.boot_params_addr, u64{p.boot_params_addr} + kBootParamsSize))
    throw Error("linux boot: command line at " + hex(p.cmdline_addr) +
                " overlaps boot_params at " + hex(p.boot_params_addr));

  // The initrd: as high as allowed, page-aligned, in one e820 RAM entry, above
  // everything the kernel uses while it boots.
  if (initrd_size > 0) {
    u64 top = std::min<u64>(u64{h.initrd_addr_max} + 1, ram_size);
    if (opt.initrd_limit) top = std::min(top, opt.initrd_limit);
    u64 best = 0;
    bool found = false;
    for (const auto& e : opt.e820) {
      if (e.type != E820Type::kRam) continue;
      const u64 hi = std::min(top, e.addr + e.size);
      if (hi < initrd_size) continue;
      const u64 at = align_down(hi - initrd_size, kPageSize);
      if (at < e.addr || at < p.footprint_end) continue;
      if (!found || at > best) best = at, found = true;
    }
    if (!found) {
      const u64 room = top > p.footprint_end ? top - p.footprint_end : 0;
      throw Error("initrd (" + size_str(initrd_size) + ") does not fit: " + mib(room) +
                  " of RAM lie between the end of the kernel (" + mib(p.footprint_end) +
                  ") and the initrd limit (" + mib(top) + ", the lower of RAM size and " +
                  "initrd_addr_max " + hex(h.initrd_addr_max) + "); give the VM more memory");
    }
    p.initrd_addr = static_cast<u32>(best);
    p.initrd_size = static_cast<u32>(initrd_size);
  }
  return p;
}

void fill_boot_params(std::span<u8> bp, const BzImage& kernel, const LoadPlan& plan,
                      std::span<const E820Entry> e820, u64 ram_size) {
  POPEK_CHECK(bp.size() >= kBootParamsSize);
  POPEK_CHECK(e820.size() <= kMaxE820Entries);
  std::fill(bp.begin(), bp.begin() + kBootParamsSize, u8{0});

  // The setup header, as in the file, from 0x1F1 to its end.
  const usize end = std::min<usize>(kernel.hdr.header_end, kBootParamsSize);
  std::memcpy(bp.data() + off::kSetupSects, kernel.file.data() + off::kSetupSects,
              end - off::kSetupSects);

  // What a boot loader fills in.
  wr<u16>(bp, off::kVidMode, 0xFFFF);  // "normal"; no video mode switch (no real mode)
  wr<u8>(bp, off::kTypeOfLoader, 0xFF);  // undefined loader
  u8 lf = kernel.hdr.loadflags;
  lf &= static_cast<u8>(~(kKeepSegments | kKaslrFlag));
  lf |= kCanUseHeap;
  wr<u8>(bp, off::kLoadflags, lf);
  wr<u16>(bp, off::kHeapEndPtr, 0xFE00);  // end of a 64 KiB setup segment - 0x200
  wr<u8>(bp, off::kExtLoaderVer, 0);
  wr<u8>(bp, off::kExtLoaderType, 0);
  wr<u32>(bp, off::kCmdLinePtr, plan.cmdline_addr);
  wr<u32>(bp, off::kRamdiskImage, plan.initrd_addr);
  wr<u32>(bp, off::kRamdiskSize, plan.initrd_size);
  wr<u32>(bp, off::kExtRamdiskImage, 0);
  wr<u32>(bp, off::kExtRamdiskSize, 0);
  wr<u32>(bp, off::kExtCmdLinePtr, 0);
  wr<u32>(bp, off::kHardwareSubarch, 0);  // the default PC
  wr<u64>(bp, off::kSetupData, 0);

  // screen_info stays zero apart from the memory size: orig_video_mode, _cols,
  // _lines and _isVGA all 0 tell the kernel there is no VGA text console, so
  // vgacon stays off and the kernel never touches 0xB8000.
  // The legacy memory-size fields (KiB above 1 MiB), used only without e820.
  const u64 ext_k = ram_size > 0x100000 ? (ram_size - 0x100000) / 1024 : 0;
  wr<u16>(bp, off::kExtMemK, static_cast<u16>(std::min<u64>(ext_k, 0xFFFF)));
  wr<u32>(bp, off::kAltMemK, static_cast<u32>(std::min<u64>(ext_k, 0xFFFFFFFF)));

  // e820
  wr<u8>(bp, off::kE820Entries, static_cast<u8>(e820.size()));
  for (usize i = 0; i < e820.size(); i++) {
    const usize o = off::kE820Table + i * 20;
    wr<u64>(bp, o, e820[i].addr);
    wr<u64>(bp, o + 8, e820[i].size);
    wr<u32>(bp, o + 16, static_cast<u32>(e820[i].type));
  }
}

BootResult load_linux(std::span<u8> ram, const BzImage& kernel, std::span<const u8> initrd,
                      std::string_view cmdline, const LoadOptions& opt) {
  if (cmdline.find('\0') != std::string_view::npos)
    throw Error("kernel command line contains a NUL byte");
  BootResult r;
  r.plan = plan_linux_boot(kernel, ram.size(), initrd.size(), cmdline.size(), opt);
  const LoadPlan& p = r.plan;
  // The plan checked every range against the RAM size; these guard the copies.
  POPEK_CHECK(u64{p.kernel_addr} + p.kernel_size <= ram.size());
  POPEK_CHECK(u64{p.initrd_addr} + p.initrd_size <= ram.size());
  POPEK_CHECK(u64{p.cmdline_addr} + p.cmdline_bytes <= ram.size());
  POPEK_CHECK(u64{p.boot_params_addr} + kBootParamsSize <= ram.size());

  const auto pm = kernel.protected_mode();
  std::memcpy(ram.data() + p.kernel_addr, pm.data(), pm.size());
  if (!initrd.empty()) std::memcpy(ram.data() + p.initrd_addr, initrd.data(), initrd.size());
  std::memcpy(ram.data() + p.cmdline_addr, cmdline.data(), cmdline.size());
  ram[p.cmdline_addr + cmdline.size()] = 0;
  fill_boot_params(ram.subspan(p.boot_params_addr, kBootParamsSize), kernel, p, opt.e820,
                   ram.size());

  r.entry.eip = kernel.hdr.code32_start;
  r.entry.esi = p.boot_params_addr;
  return r;
}

u64 make_descriptor(u32 base, u32 limit20, u8 access, u8 flags) {
  u64 d = 0;
  d |= u64{limit20 & 0xFFFF};
  d |= u64{base & 0xFFFFFF} << 16;
  d |= u64{access} << 40;
  d |= u64{(limit20 >> 16) & 0xF} << 48;
  d |= u64{flags & 0xFu} << 52;
  d |= u64{base >> 24} << 56;
  return d;
}

GdtInfo write_boot_gdt(std::span<u8> ram, u32 addr) {
  constexpr usize kEntries = 4;
  if (addr % 8 != 0 || u64{addr} + kEntries * 8 > ram.size())
    throw Error("linux boot: GDT at " + hex(addr) + " must be 8-byte aligned and inside RAM");
  const EntryState s;
  const u64 gdt[kEntries] = {
      0,
      0,
      make_descriptor(0, 0xFFFFF, s.cs.access, s.cs.flags),  // 0x10 __BOOT_CS
      make_descriptor(0, 0xFFFFF, s.ds.access, s.ds.flags),  // 0x18 __BOOT_DS
  };
  for (usize i = 0; i < kEntries; i++) store_le<u64>(ram.data() + addr + i * 8, gdt[i]);
  return GdtInfo{addr, static_cast<u16>(kEntries * 8 - 1)};
}

}  // namespace popek::boot
