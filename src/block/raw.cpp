#include "block/raw.h"

#include <cstring>
#include <vector>

#include "base/error.h"

namespace popek::block {

RawBackend::RawBackend(std::unique_ptr<File> file)
    : BlockBackend(file->name(), !file->writable()), file_(std::move(file)) {
  size_ = file_->size();
}

RawBackend::~RawBackend() { stop_async(); }

void RawBackend::do_read(u64 off, void* buf, usize len) { file_->read_at(off, buf, len); }

void RawBackend::do_write(u64 off, const void* buf, usize len) { file_->write_at(off, buf, len); }

void RawBackend::do_flush() { file_->sync(); }

void RawBackend::do_discard(u64 off, u64 len) { do_write_zeroes(off, len); }

void RawBackend::do_write_zeroes(u64 off, u64 len) {
  if (file_->punch_hole(off, len)) return;
  static const std::vector<u8> zeros(1 << 20);
  while (len) {
    usize n = static_cast<usize>(std::min<u64>(len, zeros.size()));
    file_->write_at(off, zeros.data(), n);
    off += n;
    len -= n;
  }
}

void create_raw(const std::string& path, u64 size, bool full) {
  auto f = create_posix_file(path);
  f->truncate(size);
  if (full) {
    std::vector<u8> zeros(1 << 20);
    for (u64 off = 0; off < size; off += zeros.size())
      f->write_at(off, zeros.data(), static_cast<usize>(std::min<u64>(zeros.size(), size - off)));
  }
  f->sync();
}

}  // namespace popek::block
