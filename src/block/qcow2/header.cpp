// Header parsing and validation, and creation of new images.
#include <algorithm>
#include <cstring>

#include "base/error.h"
#include "block/qcow2/format.h"

namespace popek::block::qcow2 {

namespace {

const char* builtin_feature_name(u8 type, u8 bit) {
  if (type == 0) {
    switch (bit) {
      case 0: return "dirty bit";
      case 1: return "corrupt bit";
      case 2: return "external data file";
      case 3: return "compression type";
      case 4: return "extended L2 entries";
    }
  } else if (type == 1) {
    if (bit == 0) return "lazy refcounts";
  } else if (type == 2) {
    if (bit == 0) return "bitmaps";
    if (bit == 1) return "raw external data";
  }
  return nullptr;
}

std::string hex(u64 v) {
  char b[24];
  std::snprintf(b, sizeof b, "0x%llx", static_cast<unsigned long long>(v));
  return b;
}

}  // namespace

std::string describe_features(const Header& h, u8 type, u64 bits) {
  std::string out;
  for (u8 bit = 0; bit < 64; bit++) {
    if (!((bits >> bit) & 1)) continue;
    std::string name;
    for (const auto& f : h.feature_names)
      if (f.type == type && f.bit == bit) name = f.name;
    if (name.empty()) {
      const char* n = builtin_feature_name(type, bit);
      name = n ? n : "unknown feature";
    }
    if (!out.empty()) out += ", ";
    out += name + " (bit " + std::to_string(bit) + ")";
  }
  return out;
}

Header read_header(File& f) {
  const std::string& n = f.name();
  const u64 fsize = f.size();
  u8 b[kV3HeaderLength] = {};
  if (fsize < kV2HeaderLength)
    throw Error(n + ": not a qcow2 image: the file is " + std::to_string(fsize) +
                " bytes, shorter than a qcow2 header (72 bytes)");
  f.read_at(0, b, std::min<u64>(fsize, sizeof b));
  if (rd_be32(b) != kMagic) throw Error(n + ": not a qcow2 image (bad magic number)");
  Header h;
  h.version = rd_be32(b + 4);
  if (h.version != 2 && h.version != 3)
    throw Error(n + ": unsupported qcow2 version " + std::to_string(h.version) +
                " (only versions 2 and 3 exist)");
  h.backing_file_offset = rd_be64(b + 8);
  h.backing_file_size = rd_be32(b + 16);
  h.cluster_bits = rd_be32(b + 20);
  h.size = rd_be64(b + 24);
  h.crypt_method = rd_be32(b + 32);
  h.l1_size = rd_be32(b + 36);
  h.l1_table_offset = rd_be64(b + 40);
  h.refcount_table_offset = rd_be64(b + 48);
  h.refcount_table_clusters = rd_be32(b + 56);
  h.nb_snapshots = rd_be32(b + 60);
  h.snapshots_offset = rd_be64(b + 64);
  if (h.version == 3) {
    if (fsize < 104)
      throw Error(n + ": truncated qcow2 v3 header: the file is only " + std::to_string(fsize) +
                  " bytes");
    h.incompatible = rd_be64(b + 72);
    h.compatible = rd_be64(b + 80);
    h.autoclear = rd_be64(b + 88);
    h.refcount_order = rd_be32(b + 96);
    h.header_length = rd_be32(b + 100);
    if (h.header_length < 104)
      throw Error(n + ": invalid qcow2 header length " + std::to_string(h.header_length) +
                  " (at least 104 for version 3)");
    if (h.header_length > 104) h.compression_type = b[104];
  }

  if (h.cluster_bits < kMinClusterBits || h.cluster_bits > kMaxClusterBits)
    throw Error(n + ": unsupported cluster size 2^" + std::to_string(h.cluster_bits) +
                " (must be 512 bytes to 2 MiB)");
  const u64 cs = h.cluster_size();
  if (h.header_length > cs)
    throw Error(n + ": qcow2 header length " + std::to_string(h.header_length) +
                " is larger than a cluster");
  if (h.refcount_order > 6)
    throw Error(n + ": invalid refcount order " + std::to_string(h.refcount_order) +
                " (refcounts are at most 64 bits)");
  if (h.crypt_method != 0)
    throw Error(n + ": the image is encrypted (method " + std::to_string(h.crypt_method) +
                "); encrypted qcow2 images are not supported");
  if (h.incompatible & ~kIncompatKnown)
    throw Error(n + ": the image uses incompatible features popek does not support: " +
                describe_features(h, 0, h.incompatible & ~kIncompatKnown));

  // Header extensions: from the end of the header to the end marker, all
  // inside the first cluster.
  const u64 ext_limit = std::min<u64>(cs, fsize);
  std::vector<u8> c0(ext_limit);
  f.read_at(0, c0.data(), c0.size());
  u64 pos = h.header_length;
  bool ended = false;
  while (pos + 8 <= ext_limit) {
    u32 type = rd_be32(&c0[pos]);
    u32 len = rd_be32(&c0[pos + 4]);
    pos += 8;
    if (type == kExtEnd) {
      ended = true;
      break;
    }
    if (len > ext_limit - pos)
      throw Error(n + ": qcow2 header extension " + hex(type) + " of " + std::to_string(len) +
                  " bytes runs past the first cluster");
    const u8* d = &c0[pos];
    switch (type) {
      case kExtBackingFormat: h.backing_format.assign(reinterpret_cast<const char*>(d), len); break;
      case kExtFeatureNames:
        for (u32 i = 0; i + 48 <= len; i += 48) {
          FeatureName fn;
          fn.type = d[i];
          fn.bit = d[i + 1];
          const char* s = reinterpret_cast<const char*>(d + i + 2);
          fn.name.assign(s, strnlen(s, 46));
          if (fn.bit < 64) h.feature_names.push_back(fn);
        }
        break;
      case kExtCrypto: h.has_crypto_ext = true; break;
      case kExtDataFile: h.has_data_file_ext = true; break;
      case kExtBitmaps: h.has_bitmaps_ext = true; break;
      default: break;  // unknown extensions are ignored, as the spec allows
    }
    pos += (static_cast<u64>(len) + 7) & ~7ull;
  }
  (void)ended;  // a chain that simply reaches the end of the cluster is accepted

  if (h.backing_file_offset != 0) {
    if (h.backing_file_size > kMaxBackingNameLength)
      throw Error(n + ": backing file name is " + std::to_string(h.backing_file_size) +
                  " bytes long (at most 1023 allowed)");
    if (h.backing_file_offset > cs || h.backing_file_size > cs - h.backing_file_offset)
      throw Error(n + ": backing file name at offset " + hex(h.backing_file_offset) +
                  " lies outside the first cluster");
    if (h.backing_file_offset + h.backing_file_size > fsize)
      throw Error(n + ": backing file name lies past the end of the file");
    h.backing_file.assign(reinterpret_cast<const char*>(&c0[h.backing_file_offset]),
                          h.backing_file_size);
    if (h.backing_file.find('\0') != std::string::npos)
      throw Error(n + ": backing file name contains a NUL byte");
  }

  if (h.version == 3 && h.header_length > 104) {
    if (h.compression_type != kCompressionZlib && h.compression_type != kCompressionZstd)
      throw Error(n + ": unknown compression type " + std::to_string(h.compression_type));
    if (h.compression_type != kCompressionZlib && !(h.incompatible & kIncompatCompressionType))
      throw Error(n + ": compression type " + std::to_string(h.compression_type) +
                  " is set but the compression type feature bit is not");
  }

  // Sizes and table placement that can be checked without reading tables.
  const u64 l2_entries = cs / 8;
  if (h.size > (1ull << 62))
    throw Error(n + ": virtual size " + std::to_string(h.size) + " is too large");
  const u64 l2_span = cs * l2_entries;
  const u64 l1_needed = (h.size + l2_span - 1) / l2_span;
  if (static_cast<u64>(h.l1_size) * 8 > kMaxL1Bytes)
    throw Error(n + ": L1 table of " + std::to_string(h.l1_size) + " entries is too large");
  if (h.l1_size < l1_needed)
    throw Error(n + ": L1 table has " + std::to_string(h.l1_size) + " entries, but the virtual size " +
                std::to_string(h.size) + " needs " + std::to_string(l1_needed));
  if (h.l1_size > 0) {
    if (h.l1_table_offset % cs != 0 || h.l1_table_offset == 0)
      throw Error(n + ": L1 table offset " + hex(h.l1_table_offset) +
                  " is not a cluster boundary after the header");
    if (h.l1_table_offset > fsize || fsize - h.l1_table_offset < static_cast<u64>(h.l1_size) * 8)
      throw Error(n + ": L1 table at " + hex(h.l1_table_offset) + " lies past the end of the file");
  }
  if (h.refcount_table_offset % cs != 0 || h.refcount_table_offset == 0)
    throw Error(n + ": refcount table offset " + hex(h.refcount_table_offset) +
                " is not a cluster boundary after the header");
  if (h.refcount_table_clusters == 0 ||
      static_cast<u64>(h.refcount_table_clusters) * cs > kMaxRefcountTableBytes)
    throw Error(n + ": invalid refcount table size of " +
                std::to_string(h.refcount_table_clusters) + " clusters");
  if (h.refcount_table_offset > fsize ||
      fsize - h.refcount_table_offset < static_cast<u64>(h.refcount_table_clusters) * cs)
    throw Error(n + ": refcount table at " + hex(h.refcount_table_offset) +
                " lies past the end of the file");
  if (h.l1_size > 0) {
    u64 a0 = h.l1_table_offset, a1 = a0 + static_cast<u64>(h.l1_size) * 8;
    u64 b0 = h.refcount_table_offset, b1 = b0 + static_cast<u64>(h.refcount_table_clusters) * cs;
    if (a0 < b1 && b0 < a1) throw Error(n + ": the L1 table overlaps the refcount table");
  }
  // Refused last, once the header is known to be well formed, so that `img info`
  // style errors are about the real problem.
  if (h.nb_snapshots != 0)
    throw Error(n + ": the image has " + std::to_string(h.nb_snapshots) +
                " internal snapshot(s), which popek does not support (delete them with "
                "`qemu-img snapshot -d`, or convert the image)");
  if (h.has_crypto_ext) throw Error(n + ": the image has an encryption header; not supported");
  return h;
}

void create(File& f, u64 size, const CreateOptions& o) {
  const std::string& n = f.name();
  if (o.cluster_bits < kMinClusterBits || o.cluster_bits > kMaxClusterBits)
    throw Error(n + ": cluster size must be a power of two from 512 bytes to 2 MiB");
  if (o.refcount_order > 6) throw Error(n + ": refcount width must be 1..64 bits");
  if (o.backing_file.size() > kMaxBackingNameLength)
    throw Error(n + ": backing file name longer than 1023 bytes");
  const u64 cs = 1ull << o.cluster_bits;
  const u64 l2_span = cs * (cs / 8);
  if (size > (1ull << 62)) throw Error(n + ": image size too large");
  const u64 l1_size = (size + l2_span - 1) / l2_span;
  if (l1_size * 8 > kMaxL1Bytes)
    throw Error(n + ": image size too large for this cluster size (L1 table over 32 MiB)");
  const u64 l1_clusters = (l1_size * 8 + cs - 1) / cs;
  const u64 epb = cs * 8 >> o.refcount_order;  // refcounts per block
  // Layout: header | refcount table | refcount blocks | L1 table.
  u64 rt_clusters = 1, blocks = 1;
  for (;;) {
    u64 meta = 1 + rt_clusters + blocks + l1_clusters;
    u64 nb = (meta + epb - 1) / epb;
    u64 nrt = (nb * 8 + cs - 1) / cs;
    if (nb == blocks && nrt == rt_clusters) break;
    blocks = std::max(blocks, nb);
    rt_clusters = std::max(rt_clusters, nrt);
  }
  if (rt_clusters * cs > kMaxRefcountTableBytes) throw Error(n + ": image size too large");
  const u64 meta = 1 + rt_clusters + blocks + l1_clusters;

  std::vector<u8> hdr(cs, 0);
  u8* b = hdr.data();
  wr_be32(b, kMagic);
  wr_be32(b + 4, 3);
  wr_be32(b + 20, o.cluster_bits);
  wr_be64(b + 24, size);
  wr_be32(b + 36, static_cast<u32>(l1_size));
  wr_be64(b + 40, (1 + rt_clusters + blocks) * cs);
  wr_be64(b + 48, cs);
  wr_be32(b + 56, static_cast<u32>(rt_clusters));
  u64 incompat = o.compression_type != kCompressionZlib ? kIncompatCompressionType : 0;
  wr_be64(b + 72, incompat);
  wr_be64(b + 80, o.lazy_refcounts ? kCompatLazyRefcounts : 0);
  wr_be32(b + 96, o.refcount_order);
  wr_be32(b + 100, kV3HeaderLength);
  b[104] = o.compression_type;
  usize pos = kV3HeaderLength;
  auto ext = [&](u32 type, const void* data, u32 len) {
    u64 need = 8 + ((static_cast<u64>(len) + 7) & ~7ull);
    if (pos + need + 8 + o.backing_file.size() > cs)
      throw Error(n + ": header extensions do not fit in one cluster");
    wr_be32(b + pos, type);
    wr_be32(b + pos + 4, len);
    std::memcpy(b + pos + 8, data, len);
    pos += need;
  };
  if (!o.backing_format.empty())
    ext(kExtBackingFormat, o.backing_format.data(), static_cast<u32>(o.backing_format.size()));
  {
    // Feature name table, so other tools can name the bits we use.
    struct {
      u8 type, bit;
      const char* name;
    } names[] = {{0, 0, "dirty bit"}, {0, 1, "corrupt bit"}, {0, 2, "external data file"},
                 {0, 3, "compression type"}, {0, 4, "extended L2 entries"}, {1, 0, "lazy refcounts"},
                 {2, 0, "bitmaps"}, {2, 1, "raw external data"}};
    if (cs >= 4096) {
      std::vector<u8> t(48 * std::size(names), 0);
      for (usize i = 0; i < std::size(names); i++) {
        t[i * 48] = names[i].type;
        t[i * 48 + 1] = names[i].bit;
        std::memcpy(&t[i * 48 + 2], names[i].name, std::strlen(names[i].name));
      }
      ext(kExtFeatureNames, t.data(), static_cast<u32>(t.size()));
    }
  }
  pos += 8;  // end marker (zeros)
  if (!o.backing_file.empty()) {
    wr_be64(b + 8, pos);
    wr_be32(b + 16, static_cast<u32>(o.backing_file.size()));
    std::memcpy(b + pos, o.backing_file.data(), o.backing_file.size());
  }

  std::vector<u8> rt(rt_clusters * cs, 0);
  for (u64 i = 0; i < blocks; i++) wr_be64(&rt[i * 8], (1 + rt_clusters + i) * cs);
  std::vector<u8> rb(blocks * cs, 0);
  const u32 bits = 1u << o.refcount_order;
  for (u64 c = 0; c < meta; c++) {
    // refcount 1 for each metadata cluster
    u64 bitpos = c * bits;
    if (bits >= 8) {
      rb[bitpos / 8 + bits / 8 - 1] = 1;  // big-endian: the last byte holds the low bits
    } else {
      rb[bitpos / 8] |= static_cast<u8>(1u << (bitpos % 8));
    }
  }
  f.truncate(0);
  f.write_at(0, hdr.data(), hdr.size());
  f.write_at(cs, rt.data(), rt.size());
  f.write_at((1 + rt_clusters) * cs, rb.data(), rb.size());
  f.truncate(meta * cs);
  f.sync();
}

void create(const std::string& path, u64 size, const CreateOptions& opts) {
  auto f = create_posix_file(path);
  create(*f, size, opts);
}

}  // namespace popek::block::qcow2
