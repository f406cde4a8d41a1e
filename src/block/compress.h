// Decompression of qcow2 compressed clusters: raw deflate (zlib, window 4 KiB
// as the qcow2 spec fixes) or a zstd frame.
#pragma once
#include <string>

#include "base/types.h"

namespace popek::block {

// Fills exactly out_len bytes of out from the compressed bytes in; trailing
// input (padding up to a sector) is ignored. Returns "" or an error message.
std::string decompress_cluster(u8 type, const u8* in, usize in_len, u8* out, usize out_len);

// Whether deflate (zlib) clusters can be read: popek_block links zlib when
// zlib1g-dev is installed at build time.
bool have_zlib();

// Compresses one cluster (raw deflate or zstd). Returns false if the result
// would not be smaller than the input. Used by tests to build images.
bool compress_cluster(u8 type, const u8* in, usize in_len, std::string* out);

}  // namespace popek::block
