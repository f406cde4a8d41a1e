// The Linux/x86 boot protocol, 32-bit entry (the kernel's
// Documentation/arch/x86/boot.rst and zero-page.rst), on plain bytes.
//
// A loader using it:
//   auto file   = boot::read_boot_file(path, "kernel");
//   auto kernel = boot::parse_bzimage(file, path);          // checks the header
//   auto initrd = boot::read_boot_file(initrd_path, "initrd");
//   auto res    = boot::load_linux(ram, kernel, initrd, cmdline, opts);
//   auto gdt    = boot::write_boot_gdt(ram, 0x6000);
//   ...set the vCPU from res.entry and gdt, then run.
//
// Guest RAM is one span starting at guest-physical 0. Everything that is wrong
// with the files or too large for the RAM throws popek::Error with a message
// that says which file and why. Nothing here knows the board; the caller gives
// the e820 map and, if it wants, other addresses.
#pragma once
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "base/big_alloc.h"
#include "base/types.h"

namespace popek::boot {

// --- fixed facts of the protocol ------------------------------------------------

inline constexpr u32 kKernelLoadAddr = 0x100000;      // protected-mode kernel, 32-bit boot
inline constexpr u32 kDefaultBootParamsAddr = 0x7000;  // "zero page", 4 KiB
inline constexpr u32 kDefaultCmdlineAddr = 0x20000;
inline constexpr u32 kBootParamsSize = 4096;
inline constexpr u32 kLowMemEnd = 0xA0000;  // command line and boot_params stay below
inline constexpr u16 kBootCs = 0x10;        // __BOOT_CS: GDT entry 2
inline constexpr u16 kBootDs = 0x18;        // __BOOT_DS: GDT entry 3
inline constexpr u16 kMinProtocol = 0x0206;
inline constexpr usize kMaxE820Entries = 128;  // E820_MAX_ENTRIES_ZEROPAGE
inline constexpr u32 kPageSize = 4096;

// Offsets inside the bzImage file and inside boot_params; the setup header
// sits at the same offsets in both (it is copied from file 0x1F1 to
// boot_params 0x1F1).
namespace off {
// setup header
inline constexpr usize kSetupSects = 0x1F1;  // u8, 0 means 4
inline constexpr usize kSyssize = 0x1F4;     // u32, 16-byte units
inline constexpr usize kVidMode = 0x1FA;     // u16
inline constexpr usize kBootFlag = 0x1FE;    // u16, 0xAA55
inline constexpr usize kJump = 0x200;        // u16; byte 0x201 gives the header's end
inline constexpr usize kHeader = 0x202;      // u32, "HdrS"
inline constexpr usize kVersion = 0x206;     // u16
inline constexpr usize kKernelVersion = 0x20E;  // u16, string at this + 0x200
inline constexpr usize kTypeOfLoader = 0x210;   // u8
inline constexpr usize kLoadflags = 0x211;      // u8
inline constexpr usize kCode32Start = 0x214;    // u32
inline constexpr usize kRamdiskImage = 0x218;   // u32
inline constexpr usize kRamdiskSize = 0x21C;    // u32
inline constexpr usize kHeapEndPtr = 0x224;     // u16
inline constexpr usize kExtLoaderVer = 0x226;   // u8
inline constexpr usize kExtLoaderType = 0x227;  // u8
inline constexpr usize kCmdLinePtr = 0x228;     // u32
inline constexpr usize kInitrdAddrMax = 0x22C;  // u32 (2.03+)
inline constexpr usize kKernelAlignment = 0x230;  // u32 (2.05+)
inline constexpr usize kRelocatable = 0x234;      // u8 (2.05+)
inline constexpr usize kMinAlignment = 0x235;     // u8 (2.10+)
inline constexpr usize kXloadflags = 0x236;       // u16 (2.12+)
inline constexpr usize kCmdlineSize = 0x238;      // u32 (2.06+)
inline constexpr usize kHardwareSubarch = 0x23C;  // u32 (2.07+)
inline constexpr usize kPayloadOffset = 0x248;    // u32 (2.08+)
inline constexpr usize kPayloadLength = 0x24C;    // u32 (2.08+)
inline constexpr usize kSetupData = 0x250;        // u64 (2.09+)
inline constexpr usize kPrefAddress = 0x258;      // u64 (2.10+)
inline constexpr usize kInitSize = 0x260;         // u32 (2.10+)
inline constexpr usize kSetupHeaderMin = 0x264;   // a 2.10+ header reaches at least here
// boot_params only
inline constexpr usize kScreenInfo = 0x000;       // struct screen_info, 0x40 bytes
inline constexpr usize kExtMemK = 0x002;          // screen_info.ext_mem_k, u16
inline constexpr usize kOrigVideoCols = 0x007;    // u8
inline constexpr usize kOrigVideoLines = 0x00E;   // u8
inline constexpr usize kOrigVideoIsVga = 0x00F;   // u8
inline constexpr usize kExtRamdiskImage = 0x0C0;  // u32
inline constexpr usize kExtRamdiskSize = 0x0C4;   // u32
inline constexpr usize kExtCmdLinePtr = 0x0C8;    // u32
inline constexpr usize kAltMemK = 0x1E0;          // u32
inline constexpr usize kE820Entries = 0x1E8;      // u8
inline constexpr usize kSentinel = 0x1EF;         // u8, must be 0
inline constexpr usize kE820Table = 0x2D0;        // 128 x 20 bytes
}  // namespace off

// loadflags bits
inline constexpr u8 kLoadedHigh = 0x01;
inline constexpr u8 kKaslrFlag = 0x02;
inline constexpr u8 kQuietFlag = 0x20;
inline constexpr u8 kKeepSegments = 0x40;
inline constexpr u8 kCanUseHeap = 0x80;

// --- the kernel image -------------------------------------------------------------

// The setup header fields a loader needs, as read from the file. Fields newer
// than the image's protocol version read as the protocol's documented default.
struct SetupHeader {
  u8 setup_sects = 0;  // raw; BzImage::setup_size applies "0 means 4"
  u16 boot_flag = 0;
  u32 syssize = 0;
  u16 version = 0;     // e.g. 0x020F
  u16 kernel_version = 0;
  u8 loadflags = 0;
  u32 code32_start = 0;
  u32 initrd_addr_max = 0;  // highest byte address the initrd may occupy
  u32 kernel_alignment = 0;
  bool relocatable = false;
  u8 min_alignment = 0;
  u16 xloadflags = 0;
  u32 cmdline_size = 0;  // longest command line, without the NUL
  u32 payload_offset = 0;
  u32 payload_length = 0;
  u64 pref_address = 0;
  u32 init_size = 0;
  usize header_end = 0;  // file offset one past the header: 0x202 + byte at 0x201
};

// A parsed bzImage. It views the caller's bytes, which must outlive it.
struct BzImage {
  std::string name;  // for messages (usually the path)
  SetupHeader hdr;
  std::span<const u8> file;
  usize setup_size = 0;     // (setup_sects + 1) * 512: boot sector + real-mode setup
  std::string version_string;  // e.g. "6.1.0-50-686 (debian-kernel@...) #1 SMP ..."
  // Where the kernel decompresses and runs (boot.rst: a relocatable kernel
  // moves to the load address aligned up to kernel_alignment but not below
  // pref_address; a fixed one to pref_address), and its extent by init_size.
  u64 runtime_start = 0;
  u64 runtime_end = 0;

  std::span<const u8> protected_mode() const { return file.subspan(setup_size); }
  // One past the highest byte the kernel uses while booting: the image loaded
  // at 1 MiB or its decompressed/runtime extent, whichever ends higher.
  u64 footprint_end() const;
};

// Parses and checks a bzImage: size, "HdrS" magic, boot flag, protocol
// >= 2.06, LOADED_HIGH, setup_sects, payload within the file, code32_start.
// `name` goes into error messages. Throws popek::Error.
BzImage parse_bzimage(std::span<const u8> file, std::string name = "kernel");

// Reads a whole file; `what` ("kernel", "initrd") names it in the error when
// it is missing, unreadable, not a regular file or empty.
// (In memory populated at once: see base/big_alloc.h.)
big_vector<u8> read_boot_file(const std::string& path, std::string_view what);

// --- memory map -------------------------------------------------------------------

enum class E820Type : u32 { kRam = 1, kReserved = 2, kAcpi = 3, kNvs = 4, kUnusable = 5 };

struct E820Entry {
  u64 addr = 0;
  u64 size = 0;
  E820Type type = E820Type::kRam;
};

// --- the load plan ------------------------------------------------------------------

struct LoadOptions {
  std::vector<E820Entry> e820;  // required: the board's memory map
  u32 boot_params_addr = kDefaultBootParamsAddr;
  u32 cmdline_addr = kDefaultCmdlineAddr;
  // Highest end address the initrd may have (e.g. below an MMIO hole); 0 means
  // the RAM size. initrd_addr_max and the e820 map also limit it.
  u64 initrd_limit = 0;
};

// Where everything goes, in guest-physical addresses.
struct LoadPlan {
  u32 kernel_addr = kKernelLoadAddr;
  u32 kernel_size = 0;  // bytes of the protected-mode part copied to kernel_addr
  u64 runtime_start = 0;
  u64 runtime_end = 0;
  u64 footprint_end = 0;  // the initrd must start at or above this
  u32 boot_params_addr = 0;
  u32 cmdline_addr = 0;
  u32 cmdline_bytes = 0;  // including the NUL
  u32 initrd_addr = 0;    // 0 when there is no initrd
  u32 initrd_size = 0;
};

// Computes and checks the plan without writing anything. Throws popek::Error
// when the kernel or initrd does not fit, the command line is too long, the
// e820 map does not cover what is needed, or the addresses overlap.
LoadPlan plan_linux_boot(const BzImage& kernel, u64 ram_size, usize initrd_size,
                         usize cmdline_len, const LoadOptions& opt);

// --- the entry state ------------------------------------------------------------------

// A flat 4 GiB segment as the protocol wants it: base 0, limit 0xFFFFFFFF
// (descriptor limit 0xFFFFF, 4 KiB granularity), 32-bit, DPL 0.
struct FlatSegment {
  u16 selector = 0;
  u32 base = 0;
  u32 limit = 0xFFFFFFFF;  // byte limit, as the hidden descriptor cache holds it
  u8 access = 0;           // descriptor byte 5: P DPL S Type (0x9B code, 0x93 data)
  u8 flags = 0xC;          // descriptor byte 6 high nibble: G=1 D/B=1
};

// The CPU at the 32-bit entry point (boot.rst, "32-bit Boot Protocol"):
// protected mode, paging off, interrupts off, CS = __BOOT_CS execute/read,
// DS = ES = SS = __BOOT_DS read/write (FS and GS too, for tidiness), ESI =
// boot_params, EBP = EDI = EBX = 0. The other GPRs are 0 as well; no stack is
// needed (the kernel makes its own).
struct EntryState {
  u32 eip = 0;
  u32 esi = 0;
  u32 eax = 0, ebx = 0, ecx = 0, edx = 0, esp = 0, ebp = 0, edi = 0;
  u32 eflags = 0x00000002;  // IF = 0; bit 1 is always set
  u32 cr0 = 0x00000011;     // PE | ET; PG = 0
  FlatSegment cs{kBootCs, 0, 0xFFFFFFFF, 0x9B, 0xC};
  FlatSegment ds{kBootDs, 0, 0xFFFFFFFF, 0x93, 0xC};
  FlatSegment es{kBootDs, 0, 0xFFFFFFFF, 0x93, 0xC};
  FlatSegment ss{kBootDs, 0, 0xFFFFFFFF, 0x93, 0xC};
  FlatSegment fs{kBootDs, 0, 0xFFFFFFFF, 0x93, 0xC};
  FlatSegment gs{kBootDs, 0, 0xFFFFFFFF, 0x93, 0xC};
};

struct BootResult {
  LoadPlan plan;
  EntryState entry;
};

// Loads the kernel, initrd (may be empty), command line and boot_params into
// `ram` per the plan and returns it with the entry state. Writes nothing when
// it throws. The GDT is the caller's (see write_boot_gdt).
BootResult load_linux(std::span<u8> ram, const BzImage& kernel, std::span<const u8> initrd,
                      std::string_view cmdline, const LoadOptions& opt);

// Fills the zero page (boot_params) for `plan` into `bp` (4096 bytes):
// zeroed, the setup header copied at 0x1F1, loader fields, e820. Used by
// load_linux; public for tests and for loaders that place things themselves.
void fill_boot_params(std::span<u8> bp, const BzImage& kernel, const LoadPlan& plan,
                      std::span<const E820Entry> e820, u64 ram_size);

// --- GDT --------------------------------------------------------------------------------

// An 8-byte segment descriptor. `limit` is the 20-bit descriptor limit,
// `access` byte 5, `flags` the high nibble of byte 6 (G, D/B, L, AVL).
u64 make_descriptor(u32 base, u32 limit20, u8 access, u8 flags);

struct GdtInfo {
  u32 base = 0;
  u16 limit = 0;  // bytes - 1, as LGDT wants it
};

// Writes a 4-entry GDT at `addr` (8-byte aligned, in RAM): null, null,
// __BOOT_CS (0x10) flat code execute/read, __BOOT_DS (0x18) flat data
// read/write; descriptors are pre-marked accessed so the CPU need not write
// them. Returns base and limit for GDTR. Throws popek::Error if it does not fit.
GdtInfo write_boot_gdt(std::span<u8> ram, u32 addr);

}  // namespace popek::boot
