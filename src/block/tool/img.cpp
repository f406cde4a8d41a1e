#include "block/tool/img.h"

#include <CLI/CLI.hpp>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "base/error.h"
#include "block/backend.h"
#include "block/qcow2/qcow2.h"
#include "block/raw.h"

namespace popek::block {

namespace {

u64 parse_size(const std::string& s, const char* what) {
  if (s.empty()) throw Error(std::string("empty ") + what);
  usize pos = 0;
  unsigned long long v;
  try {
    v = std::stoull(s, &pos, 10);
  } catch (...) {
    throw Error(std::string("invalid ") + what + " '" + s + "' (a number with an optional K, M, G or T suffix)");
  }
  std::string suf = s.substr(pos);
  int shift = 0;
  if (suf.empty() || suf == "B" || suf == "b") shift = 0;
  else if (suf == "K" || suf == "k" || suf == "KiB") shift = 10;
  else if (suf == "M" || suf == "MiB") shift = 20;
  else if (suf == "G" || suf == "GiB") shift = 30;
  else if (suf == "T" || suf == "TiB") shift = 40;
  else if (suf == "P" || suf == "PiB") shift = 50;
  else
    throw Error(std::string("invalid ") + what + " '" + s + "' (unknown suffix '" + suf +
                "'; use K, M, G, T or P)");
  if (shift && v > (~0ull >> shift)) throw Error(std::string(what) + " '" + s + "' is too large");
  return static_cast<u64>(v) << shift;
}

std::string human(u64 b) {
  const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB", "PiB"};
  double v = static_cast<double>(b);
  int u = 0;
  while (v >= 1024 && u < 5) {
    v /= 1024;
    u++;
  }
  char buf[32];
  if (u == 0)
    std::snprintf(buf, sizeof buf, "%llu B", static_cast<unsigned long long>(b));
  else
    std::snprintf(buf, sizeof buf, "%.3g %s", v, units[u]);
  return buf;
}

std::string json_str(const std::string& s) {
  std::string o = "\"";
  for (char c : s) {
    if (c == '"' || c == '\\') {
      o += '\\';
      o += c;
    } else if (static_cast<unsigned char>(c) < 0x20) {
      char b[8];
      std::snprintf(b, sizeof b, "\\u%04x", c);
      o += b;
    } else {
      o += c;
    }
  }
  return o + "\"";
}

u32 log2_exact(u64 v, const char* what) {
  if (v == 0 || (v & (v - 1))) throw Error(std::string(what) + " must be a power of two");
  return static_cast<u32>(__builtin_ctzll(v));
}

int cmd_create(const std::string& fmt, const std::string& file, const std::string& size_s,
               const std::string& backing, const std::string& backing_fmt_in,
               const std::string& cluster_s, unsigned refcount_bits, const std::string& ctype,
               const std::string& prealloc) {
  u64 size = 0;
  std::string backing_fmt = backing_fmt_in;
  if (fmt == "raw" && !backing.empty()) throw Error("raw images cannot have a backing file");
  if (!backing.empty()) {
    std::string bpath = backing;
    if (bpath[0] != '/') {
      auto slash = file.rfind('/');
      if (slash != std::string::npos) bpath = file.substr(0, slash + 1) + backing;
    }
    OpenOptions o;
    o.read_only = true;
    o.format = backing_fmt;
    auto b = open_image(bpath, o);
    if (backing_fmt.empty()) backing_fmt = b->format();
    size = b->size();
  }
  if (!size_s.empty()) size = parse_size(size_s, "size");
  else if (backing.empty()) throw Error("the size is required (unless -b gives a backing file)");
  if (fmt == "raw") {
    if (prealloc != "off" && prealloc != "full")
      throw Error("raw preallocation must be off or full");
    create_raw(file, size, prealloc == "full");
  } else if (fmt == "qcow2") {
    if (prealloc != "off") throw Error("qcow2 images are created without preallocation (off)");
    qcow2::CreateOptions o;
    o.cluster_bits = log2_exact(parse_size(cluster_s, "cluster size"), "cluster size");
    o.refcount_order = log2_exact(refcount_bits, "refcount bits");
    if (ctype == "zstd") o.compression_type = qcow2::kCompressionZstd;
    else if (ctype != "zlib") throw Error("compression type must be zlib or zstd");
    o.backing_file = backing;
    o.backing_format = backing_fmt;
    qcow2::create(file, size, o);
  } else {
    throw Error("unknown format '" + fmt + "' (raw or qcow2)");
  }
  std::printf("Formatting '%s', fmt=%s size=%llu%s%s\n", file.c_str(), fmt.c_str(),
              static_cast<unsigned long long>(size),
              backing.empty() ? "" : (" backing_file=" + backing).c_str(),
              backing_fmt.empty() || backing.empty() ? "" : (" backing_fmt=" + backing_fmt).c_str());
  return 0;
}

int cmd_info(const std::string& file, const std::string& fmt_in, const std::string& output) {
  std::string fmt = fmt_in.empty() ? probe_format(file) : fmt_in;
  u64 disk = open_posix_file(file, false)->allocated_bytes();
  bool json = output == "json";
  if (fmt == "raw") {
    OpenOptions o;
    o.read_only = true;
    o.format = "raw";
    auto b = open_image(file, o);
    if (json)
      std::printf("{\"filename\": %s, \"format\": \"raw\", \"virtual-size\": %llu, \"actual-size\": %llu}\n",
                  json_str(file).c_str(), static_cast<unsigned long long>(b->size()),
                  static_cast<unsigned long long>(disk));
    else
      std::printf("image: %s\nfile format: raw\nvirtual size: %s (%llu bytes)\ndisk size: %s\n",
                  file.c_str(), human(b->size()).c_str(), static_cast<unsigned long long>(b->size()),
                  human(disk).c_str());
    return 0;
  }
  if (fmt != "qcow2") throw Error("unknown format '" + fmt + "' (raw or qcow2)");
  OpenOptions o;
  o.read_only = true;
  Qcow2Backend q(open_posix_file(file, false), o);
  const auto& h = q.header();
  std::string compat = h.version == 2 ? "0.10" : "1.1";
  std::string ct = h.compression_type == qcow2::kCompressionZstd ? "zstd" : "zlib";
  bool lazy = h.compatible & qcow2::kCompatLazyRefcounts;
  bool corrupt = h.incompatible & qcow2::kIncompatCorrupt;
  bool dirty = h.incompatible & qcow2::kIncompatDirty;
  if (json) {
    std::printf(
        "{\"filename\": %s, \"format\": \"qcow2\", \"virtual-size\": %llu, \"actual-size\": %llu, "
        "\"cluster-size\": %llu, \"compat\": \"%s\", \"compression-type\": \"%s\", "
        "\"lazy-refcounts\": %s, \"refcount-bits\": %u, \"corrupt\": %s, \"dirty\": %s",
        json_str(file).c_str(), static_cast<unsigned long long>(h.size),
        static_cast<unsigned long long>(disk), static_cast<unsigned long long>(h.cluster_size()),
        compat.c_str(), ct.c_str(), lazy ? "true" : "false", 1u << h.refcount_order,
        corrupt ? "true" : "false", dirty ? "true" : "false");
    if (!h.backing_file.empty()) {
      std::printf(", \"backing-filename\": %s", json_str(h.backing_file).c_str());
      if (!h.backing_format.empty())
        std::printf(", \"backing-filename-format\": %s", json_str(h.backing_format).c_str());
    }
    std::printf("}\n");
    return 0;
  }
  std::printf("image: %s\nfile format: qcow2\nvirtual size: %s (%llu bytes)\ndisk size: %s\n"
              "cluster_size: %llu\n",
              file.c_str(), human(h.size).c_str(), static_cast<unsigned long long>(h.size),
              human(disk).c_str(), static_cast<unsigned long long>(h.cluster_size()));
  if (!h.backing_file.empty()) {
    std::printf("backing file: %s\n", h.backing_file.c_str());
    if (!h.backing_format.empty()) std::printf("backing file format: %s\n", h.backing_format.c_str());
  }
  std::printf("Format specific information:\n    compat: %s\n    compression type: %s\n"
              "    lazy refcounts: %s\n    refcount bits: %u\n    corrupt: %s\n    dirty: %s\n",
              compat.c_str(), ct.c_str(), lazy ? "true" : "false", 1u << h.refcount_order,
              corrupt ? "true" : "false", dirty ? "true" : "false");
  return 0;
}

// Exit status as qemu-img check: 0 clean, 1 check failed, 2 corruptions, 3 leaks only.
int cmd_check(const std::string& file, const std::string& fmt_in, const std::string& repair_s,
              const std::string& output) {
  std::string fmt = fmt_in.empty() ? probe_format(file) : fmt_in;
  if (fmt == "raw") {
    if (output == "json") std::printf("{\"filename\": %s, \"format\": \"raw\", \"check-errors\": 0}\n", json_str(file).c_str());
    else std::printf("%s: raw images have no metadata to check\n", file.c_str());
    return 0;
  }
  if (fmt != "qcow2") throw Error("unknown format '" + fmt + "' (raw or qcow2)");
  Repair rep = Repair::none;
  if (repair_s == "leaks") rep = Repair::leaks;
  else if (repair_s == "all") rep = Repair::all;
  else if (!repair_s.empty()) throw Error("-r takes leaks or all, not '" + repair_s + "'");
  OpenOptions o;
  o.read_only = rep == Repair::none;
  o.for_check = true;
  Qcow2Backend q(open_posix_file(file, !o.read_only), o);
  CheckResult r = q.check(rep);
  if (output == "json") {
    std::printf("{\"filename\": %s, \"format\": \"qcow2\", \"check-errors\": %llu, \"corruptions\": %llu, "
                "\"leaks\": %llu, \"corruptions-fixed\": %llu, \"leaks-fixed\": %llu, "
                "\"allocated-clusters\": %llu, \"total-clusters\": %llu, "
                "\"compressed-clusters\": %llu, \"image-end-offset\": %llu}\n",
                json_str(file).c_str(), static_cast<unsigned long long>(r.check_errors),
                static_cast<unsigned long long>(r.corruptions), static_cast<unsigned long long>(r.leaks),
                static_cast<unsigned long long>(r.corruptions_fixed),
                static_cast<unsigned long long>(r.leaks_fixed),
                static_cast<unsigned long long>(r.allocated_clusters),
                static_cast<unsigned long long>(r.total_clusters),
                static_cast<unsigned long long>(r.compressed_clusters),
                static_cast<unsigned long long>(r.image_end_offset));
  } else {
    for (const auto& m : r.messages) std::printf("%s\n", m.c_str());
    if (r.leaks_fixed || r.corruptions_fixed)
      std::printf("The following inconsistencies were found and repaired:\n\n    %llu leaked clusters\n"
                  "    %llu corruptions\n\n",
                  static_cast<unsigned long long>(r.leaks_fixed),
                  static_cast<unsigned long long>(r.corruptions_fixed));
    if (r.clean()) std::printf("No errors were found on the image.\n");
    if (r.corruptions)
      std::printf("\n%llu errors were found on the image.\nData may be corrupted, or further writes "
                  "to the image may corrupt it.\n",
                  static_cast<unsigned long long>(r.corruptions));
    if (r.leaks)
      std::printf("\n%llu leaked clusters were found on the image.\nThis means waste of disk space, "
                  "but no harm to data.\n",
                  static_cast<unsigned long long>(r.leaks));
    if (r.check_errors)
      std::printf("\n%llu internal errors have occurred during the check.\n",
                  static_cast<unsigned long long>(r.check_errors));
    if (r.total_clusters)
      std::printf("%llu/%llu = %.2f%% allocated, %.2f%% compressed clusters\n",
                  static_cast<unsigned long long>(r.allocated_clusters),
                  static_cast<unsigned long long>(r.total_clusters),
                  100.0 * static_cast<double>(r.allocated_clusters) / static_cast<double>(r.total_clusters),
                  r.allocated_clusters ? 100.0 * static_cast<double>(r.compressed_clusters) /
                                             static_cast<double>(r.allocated_clusters)
                                       : 0.0);
    std::printf("Image end offset: %llu\n", static_cast<unsigned long long>(r.image_end_offset));
  }
  if (r.check_errors) return 1;
  if (r.corruptions) return 2;
  if (r.leaks) return 3;
  return 0;
}

int cmd_convert(const std::string& src, const std::string& src_fmt, const std::string& dst,
                const std::string& dst_fmt, const std::string& cluster_s) {
  OpenOptions so;
  so.read_only = true;
  so.format = src_fmt;
  auto in = open_image(src, so);
  const u64 size = in->size();
  if (dst_fmt == "raw") {
    create_raw(dst, size);
  } else if (dst_fmt == "qcow2") {
    qcow2::CreateOptions o;
    o.cluster_bits = log2_exact(parse_size(cluster_s, "cluster size"), "cluster size");
    qcow2::create(dst, size, o);
  } else {
    throw Error("unknown output format '" + dst_fmt + "' (raw or qcow2)");
  }
  OpenOptions dopt;
  dopt.format = dst_fmt;
  auto out = open_image(dst, dopt);
  std::vector<u8> buf(1 << 20);
  for (u64 off = 0; off < size; off += buf.size()) {
    usize n = static_cast<usize>(std::min<u64>(buf.size(), size - off));
    in->read(off, buf.data(), n);
    // Zero runs stay unallocated in the new image; compare 64 KiB at a time.
    for (usize p = 0; p < n; p += 65536) {
      usize m = std::min<usize>(65536, n - p);
      bool zero = buf[p] == 0 && std::memcmp(buf.data() + p, buf.data() + p + 1, m - 1) == 0;
      if (!zero) out->write(off + p, buf.data() + p, m);
    }
  }
  out->flush();
  return 0;
}

}  // namespace

int img_main(int argc, char** argv) {
  CLI::App app{"Create, inspect, check and convert disk images (raw and qcow2).", "popek img"};
  app.require_subcommand(1);
  app.set_help_all_flag("--help-all", "Show help for all subcommands");

  std::string c_fmt = "qcow2", c_file, c_size, c_backing, c_backing_fmt, c_cluster = "64K",
              c_ctype = "zlib", c_prealloc = "off";
  unsigned c_rbits = 16;
  auto* create = app.add_subcommand("create", "Create a new image. A qcow2 image is version 3 and "
                                              "starts with no data clusters allocated.");
  create->add_option("-f,--format", c_fmt, "Image format: qcow2 or raw")
      ->check(CLI::IsMember({"qcow2", "raw"}))->capture_default_str();
  create->add_option("file", c_file, "Image file to create (an existing file is overwritten)")->required();
  create->add_option("size", c_size,
                     "Virtual disk size in bytes, with an optional K, M, G, T or P suffix "
                     "(powers of 1024); may be omitted with -b to use the backing file's size");
  create->add_option("-b,--backing", c_backing,
                     "Backing file (qcow2 only); a relative name is relative to the new image's folder");
  create->add_option("-F,--backing-format", c_backing_fmt,
                     "Format of the backing file (raw or qcow2); detected from the file if omitted");
  create->add_option("--cluster-size", c_cluster, "qcow2 cluster size, 512 to 2M")->capture_default_str();
  create->add_option("--refcount-bits", c_rbits, "qcow2 refcount width: 1, 2, 4, 8, 16, 32 or 64")
      ->capture_default_str();
  create->add_option("--compression-type", c_ctype,
                     "qcow2 compression type recorded in the header: zlib or zstd")
      ->capture_default_str();
  create->add_option("--preallocation", c_prealloc,
                     "off, or full (raw only: write zeros to every byte instead of a sparse file)")
      ->capture_default_str();

  std::string i_file, i_fmt, i_out = "human";
  auto* info = app.add_subcommand("info", "Show an image's format, sizes, backing file and qcow2 header fields.");
  info->add_option("file", i_file, "Image file")->required();
  info->add_option("-f,--format", i_fmt, "Image format (raw or qcow2); detected if omitted");
  info->add_option("--output", i_out, "human or json")->check(CLI::IsMember({"human", "json"}))
      ->capture_default_str();

  std::string k_file, k_fmt, k_repair, k_out = "human";
  auto* check = app.add_subcommand(
      "check",
      "Check a qcow2 image's metadata: every cluster's refcount against the references to it "
      "(leaked clusters and corruption), table offsets and flags.\nExit status: 0 no problems, "
      "1 the check could not be completed, 2 corruption found, 3 only leaked clusters found.");
  check->add_option("file", k_file, "Image file")->required();
  check->add_option("-f,--format", k_fmt, "Image format (raw or qcow2); detected if omitted");
  check->add_option("-r,--repair", k_repair,
                    "Repair refcounts: 'leaks' frees leaked clusters, 'all' also raises refcounts "
                    "that are too low (writes the image)")
      ->check(CLI::IsMember({"leaks", "all"}));
  check->add_option("--output", k_out, "human or json")->check(CLI::IsMember({"human", "json"}))
      ->capture_default_str();

  std::string v_src, v_dst, v_sfmt, v_dfmt = "raw", v_cluster = "64K";
  auto* convert = app.add_subcommand(
      "convert", "Copy an image's contents into a new image of either format; zero data stays "
                 "unallocated (sparse). The output has no backing file.");
  convert->add_option("-f,--format", v_sfmt, "Source format (raw or qcow2); detected if omitted");
  convert->add_option("-O,--output-format", v_dfmt, "Output format: raw or qcow2")
      ->check(CLI::IsMember({"qcow2", "raw"}))->capture_default_str();
  convert->add_option("--cluster-size", v_cluster, "qcow2 output cluster size")->capture_default_str();
  convert->add_option("source", v_src, "Source image")->required();
  convert->add_option("dest", v_dst, "Output image (overwritten)")->required();

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  }
  try {
    if (*create)
      return cmd_create(c_fmt, c_file, c_size, c_backing, c_backing_fmt, c_cluster, c_rbits,
                        c_ctype, c_prealloc);
    if (*info) return cmd_info(i_file, i_fmt, i_out);
    if (*check) return cmd_check(k_file, k_fmt, k_repair, k_out);
    if (*convert) return cmd_convert(v_src, v_sfmt, v_dst, v_dfmt, v_cluster);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "popek img: %s\n", e.what());
    return 1;
  }
  return 1;
}

}  // namespace popek::block
