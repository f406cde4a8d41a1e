// The qcow2 on-disk format (QEMU's docs/interop/qcow2.txt): constants, the
// header and its extensions. All on-disk numbers are big-endian.
#pragma once
#include <string>
#include <vector>

#include "base/types.h"
#include "block/file.h"

namespace popek::block::qcow2 {

constexpr u32 kMagic = 0x514649fb;  // "QFI\xfb"
constexpr u32 kV2HeaderLength = 72;
constexpr u32 kV3HeaderLength = 112;  // with the compression type byte, padded to 8
constexpr u32 kMinClusterBits = 9;
constexpr u32 kMaxClusterBits = 21;   // 2 MiB, QEMU's limit too
constexpr u64 kMaxL1Bytes = 32ull << 20;
constexpr u64 kMaxRefcountTableBytes = 8ull << 20;
constexpr u32 kMaxBackingNameLength = 1023;

// Feature bits.
constexpr u64 kIncompatDirty = 1ull << 0;
constexpr u64 kIncompatCorrupt = 1ull << 1;
constexpr u64 kIncompatExternalData = 1ull << 2;
constexpr u64 kIncompatCompressionType = 1ull << 3;
constexpr u64 kIncompatExtendedL2 = 1ull << 4;
constexpr u64 kIncompatKnown = kIncompatDirty | kIncompatCorrupt | kIncompatCompressionType;
constexpr u64 kCompatLazyRefcounts = 1ull << 0;

// Header extension types.
constexpr u32 kExtEnd = 0;
constexpr u32 kExtBackingFormat = 0xe2792aca;
constexpr u32 kExtFeatureNames = 0x6803f857;
constexpr u32 kExtBitmaps = 0x23852875;
constexpr u32 kExtCrypto = 0x0537be77;
constexpr u32 kExtDataFile = 0x44415441;

// Table entries.
constexpr u64 kOffsetMask = 0x00fffffffffffe00ull;  // bits 9..55
constexpr u64 kCopied = 1ull << 63;
constexpr u64 kCompressed = 1ull << 62;
constexpr u64 kZeroFlag = 1ull;
constexpr u64 kL1Reserved = 0x7f000000000001ffull;     // bits 0..8 and 56..62
constexpr u64 kL2StdReserved = 0x3f000000000001feull;  // bits 1..8 and 56..61

constexpr u8 kCompressionZlib = 0;
constexpr u8 kCompressionZstd = 1;

inline u64 rd_be64(const u8* p) {
  u64 v;
  __builtin_memcpy(&v, p, 8);
  return __builtin_bswap64(v);
}
inline u32 rd_be32(const u8* p) {
  u32 v;
  __builtin_memcpy(&v, p, 4);
  return __builtin_bswap32(v);
}
inline u16 rd_be16(const u8* p) {
  u16 v;
  __builtin_memcpy(&v, p, 2);
  return __builtin_bswap16(v);
}
inline void wr_be64(u8* p, u64 v) {
  v = __builtin_bswap64(v);
  __builtin_memcpy(p, &v, 8);
}
inline void wr_be32(u8* p, u32 v) {
  v = __builtin_bswap32(v);
  __builtin_memcpy(p, &v, 4);
}
inline void wr_be16(u8* p, u16 v) {
  v = __builtin_bswap16(v);
  __builtin_memcpy(p, &v, 2);
}

struct FeatureName {
  u8 type;  // 0 incompatible, 1 compatible, 2 autoclear
  u8 bit;
  std::string name;
};

struct Header {
  u32 version = 3;
  u64 backing_file_offset = 0;
  u32 backing_file_size = 0;
  u32 cluster_bits = 16;
  u64 size = 0;
  u32 crypt_method = 0;
  u32 l1_size = 0;
  u64 l1_table_offset = 0;
  u64 refcount_table_offset = 0;
  u32 refcount_table_clusters = 0;
  u32 nb_snapshots = 0;
  u64 snapshots_offset = 0;
  u64 incompatible = 0;
  u64 compatible = 0;
  u64 autoclear = 0;
  u32 refcount_order = 4;
  u32 header_length = kV2HeaderLength;
  u8 compression_type = kCompressionZlib;
  // From the extensions and the backing name.
  std::string backing_file;
  std::string backing_format;
  std::vector<FeatureName> feature_names;
  bool has_crypto_ext = false;
  bool has_data_file_ext = false;
  bool has_bitmaps_ext = false;

  u64 cluster_size() const { return 1ull << cluster_bits; }
};

// Reads and validates the header and its extensions. Checks that do not need
// the rest of the image (field ranges, feature bits, the extension chain).
// Throws popek::Error naming the file.
Header read_header(File& f);

// Human-readable names for set feature bits, taken from the image's feature
// name table when present: "external data file (bit 2)".
std::string describe_features(const Header& h, u8 type, u64 bits);

struct CreateOptions {
  u32 cluster_bits = 16;
  u32 refcount_order = 4;
  u8 compression_type = kCompressionZlib;
  std::string backing_file;    // as stored in the image
  std::string backing_format;  // "" = not recorded
  bool lazy_refcounts = false;
};

// Writes a new empty qcow2 v3 image of `size` bytes into f (which must be
// empty and writable).
void create(File& f, u64 size, const CreateOptions& opts);
void create(const std::string& path, u64 size, const CreateOptions& opts);

}  // namespace popek::block::qcow2
