#include "block/compress.h"

#ifdef POPEK_HAVE_ZLIB
#include <zlib.h>
#endif
#include <zstd.h>

#include <cstring>
#include <vector>

#include "block/qcow2/format.h"

namespace popek::block {

bool have_zlib() {
#ifdef POPEK_HAVE_ZLIB
  return true;
#else
  return false;
#endif
}

std::string decompress_cluster(u8 type, const u8* in, usize in_len, u8* out, usize out_len) {
  if (type == qcow2::kCompressionZlib) {
#ifndef POPEK_HAVE_ZLIB
    (void)in, (void)in_len, (void)out, (void)out_len;
    return "this popek was built without zlib, so deflate-compressed clusters cannot be read "
           "(install zlib1g-dev and rebuild)";
#else
    z_stream s;
    std::memset(&s, 0, sizeof s);
    if (inflateInit2(&s, -12) != Z_OK) return "zlib initialisation failed";
    s.next_in = const_cast<Bytef*>(in);
    s.avail_in = static_cast<uInt>(in_len);
    s.next_out = out;
    s.avail_out = static_cast<uInt>(out_len);
    int r = inflate(&s, Z_FINISH);
    usize got = out_len - s.avail_out;
    inflateEnd(&s);
    if (got == out_len && (r == Z_STREAM_END || r == Z_BUF_ERROR || r == Z_OK)) return "";
    return "deflate data is corrupt (" + std::to_string(got) + " of " + std::to_string(out_len) +
           " bytes decoded)";
#endif
  }
  if (type == qcow2::kCompressionZstd) {
    ZSTD_DCtx* d = ZSTD_createDCtx();
    if (!d) return "zstd initialisation failed";
    ZSTD_inBuffer ib{in, in_len, 0};
    ZSTD_outBuffer ob{out, out_len, 0};
    std::string err;
    while (ob.pos < ob.size) {
      usize r = ZSTD_decompressStream(d, &ob, &ib);
      if (ZSTD_isError(r)) {
        err = std::string("zstd data is corrupt: ") + ZSTD_getErrorName(r);
        break;
      }
      if (r == 0 || ib.pos == ib.size) break;
    }
    ZSTD_freeDCtx(d);
    if (err.empty() && ob.pos != ob.size)
      err = "zstd data is corrupt (" + std::to_string(ob.pos) + " of " + std::to_string(out_len) +
            " bytes decoded)";
    return err;
  }
  return "unknown compression type " + std::to_string(type);
}

bool compress_cluster(u8 type, const u8* in, usize in_len, std::string* out) {
  if (type == qcow2::kCompressionZlib) {
#ifndef POPEK_HAVE_ZLIB
    return false;
#else
    z_stream s;
    std::memset(&s, 0, sizeof s);
    if (deflateInit2(&s, Z_DEFAULT_COMPRESSION, Z_DEFLATED, -12, 9, Z_DEFAULT_STRATEGY) != Z_OK)
      return false;
    std::vector<u8> buf(in_len);
    s.next_in = const_cast<Bytef*>(in);
    s.avail_in = static_cast<uInt>(in_len);
    s.next_out = buf.data();
    s.avail_out = static_cast<uInt>(buf.size());
    int r = deflate(&s, Z_FINISH);
    usize n = buf.size() - s.avail_out;
    deflateEnd(&s);
    if (r != Z_STREAM_END || n >= in_len) return false;
    out->assign(reinterpret_cast<char*>(buf.data()), n);
    return true;
#endif
  }
  if (type == qcow2::kCompressionZstd) {
    std::vector<u8> buf(ZSTD_compressBound(in_len));
    usize n = ZSTD_compress(buf.data(), buf.size(), in, in_len, 3);
    if (ZSTD_isError(n) || n >= in_len) return false;
    out->assign(reinterpret_cast<char*>(buf.data()), n);
    return true;
  }
  return false;
}

}  // namespace popek::block
