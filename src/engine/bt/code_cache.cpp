#include "engine/bt/code_cache.h"

#include <sys/mman.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <string>

#include "base/error.h"

namespace popek::engine::bt {

CodeCache::CodeCache(size_t bytes) : size_(bytes) {
  int fd = memfd_create("popek-code-cache", MFD_CLOEXEC);
  if (fd < 0) throw Error(std::string("code cache: memfd_create: ") + std::strerror(errno));
  if (ftruncate(fd, off_t(bytes)) != 0) {
    int e = errno;
    close(fd);
    throw Error(std::string("code cache: ftruncate: ") + std::strerror(e));
  }
  void* w = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  void* x = w == MAP_FAILED ? MAP_FAILED : mmap(nullptr, bytes, PROT_READ | PROT_EXEC, MAP_SHARED, fd, 0);
  int e = errno;
  close(fd);
  if (w == MAP_FAILED || x == MAP_FAILED) {
    if (w != MAP_FAILED) munmap(w, bytes);
    throw Error(std::string("code cache: mmap of ") + std::to_string(bytes >> 20) +
                " MiB: " + std::strerror(e));
  }
  rw_ = static_cast<u8*>(w);
  rx_ = static_cast<u8*>(x);
  populate();
}

void CodeCache::populate() {
  if (populated_ >= size_) return;
  const size_t n = populated_ + kPopulateAhead > size_ ? size_ - populated_ : kPopulateAhead;
  // Advice only (kernels before 5.14 refuse it): the pages then fault one by one.
  madvise(rw_ + populated_, n, MADV_POPULATE_WRITE);
  madvise(rx_ + populated_, n, MADV_POPULATE_READ);
  populated_ += n;
}

CodeCache::~CodeCache() {
  munmap(rw_, size_);
  munmap(const_cast<u8*>(rx_), size_);
}

}  // namespace popek::engine::bt
