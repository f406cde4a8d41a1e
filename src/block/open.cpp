// Opening images by path: format detection and backing chains.
#include <cstring>

#include "base/error.h"
#include "block/backend.h"
#include "block/qcow2/qcow2.h"
#include "block/raw.h"

namespace popek::block {

namespace {

std::unique_ptr<BlockBackend> open_depth(const std::string& path, const OpenOptions& opts,
                                         int depth) {
  std::string fmt = opts.format.empty() ? probe_format(path) : opts.format;
  if (fmt == "raw") return std::make_unique<RawBackend>(open_posix_file(path, !opts.read_only));
  if (fmt != "qcow2") throw Error(path + ": unknown image format '" + fmt + "' (raw or qcow2)");
  auto q = std::make_unique<Qcow2Backend>(open_posix_file(path, !opts.read_only), opts);
  const std::string& bf = q->header().backing_file;
  if (!bf.empty()) {
    if (!opts.open_backing)
      throw Error(path + ": the image has a backing file (" + bf + "), which is not allowed here");
    if (depth >= opts.max_backing_depth)
      throw Error(path + ": backing chain is longer than " + std::to_string(opts.max_backing_depth) +
                  " images (a loop?)");
    std::string bpath = bf;
    if (bpath[0] != '/') {
      auto slash = path.rfind('/');
      if (slash != std::string::npos) bpath = path.substr(0, slash + 1) + bf;
    }
    OpenOptions bo = opts;
    bo.read_only = true;
    bo.for_check = false;
    bo.format = q->header().backing_format;
    try {
      q->set_backing(open_depth(bpath, bo, depth + 1));
    } catch (const Error& e) {
      throw Error(path + ": cannot open its backing file: " + e.what());
    }
  }
  return q;
}

}  // namespace

std::string probe_format(const std::string& path) {
  auto f = open_posix_file(path, false);
  u8 m[4] = {};
  if (f->read_at(0, m, 4) == 4 && m[0] == 'Q' && m[1] == 'F' && m[2] == 'I' && m[3] == 0xfb)
    return "qcow2";
  return "raw";
}

std::unique_ptr<BlockBackend> open_image(const std::string& path, const OpenOptions& opts) {
  return open_depth(path, opts, 0);
}

}  // namespace popek::block
