// The victim of block_crash_test: opens an image and does random writes,
// discards, write-zeroes and flushes until it is killed. Before each operation
// it appends the operation to a log; after each flush returns it appends "F".
// Usage: block_crash_writer IMAGE LOG SEED
#include <fcntl.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <random>
#include <string>

#include "block/backend.h"
#include "block/test_util.h"

using namespace popek;
using namespace popek::block;

static void log_line(int fd, const std::string& s) {
  if (::write(fd, s.data(), s.size()) != static_cast<ssize_t>(s.size())) std::abort();
}

int main(int argc, char** argv) {
  if (argc != 4) {
    std::fprintf(stderr, "usage: %s IMAGE LOG SEED\n", argv[0]);
    return 2;
  }
  try {
    auto b = open_image(argv[1]);
    int fd = ::open(argv[2], O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    if (fd < 0) return 2;
    std::mt19937_64 rng(std::strtoull(argv[3], nullptr, 10));
    const u64 size = b->size();
    log_line(fd, "S\n");  // started: the image opened
    for (u64 i = 0;; i++) {
      int k = static_cast<int>(rng() % 16);
      u64 len = 1 + rng() % (k < 12 ? 70000 : 300000);
      u64 off = rng() % (size - len);
      u64 seed = rng();
      char line[96];
      if (k < 12) {
        std::snprintf(line, sizeof line, "W %llu %llu %llu\n", (unsigned long long)off,
                      (unsigned long long)len, (unsigned long long)seed);
        log_line(fd, line);
        auto p = test::pattern(len, seed);
        b->write(off, p.data(), len);
      } else if (k < 13) {
        std::snprintf(line, sizeof line, "D %llu %llu\n", (unsigned long long)off,
                      (unsigned long long)len);
        log_line(fd, line);
        b->discard(off, len);
      } else if (k < 14) {
        std::snprintf(line, sizeof line, "Z %llu %llu\n", (unsigned long long)off,
                      (unsigned long long)len);
        log_line(fd, line);
        b->write_zeroes(off, len);
      } else {
        b->flush();
        log_line(fd, "F\n");
      }
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "block_crash_writer: %s\n", e.what());
    return 1;
  }
}
