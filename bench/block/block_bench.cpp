// block_bench: throughput of 4 KiB requests, queue depth 1, through the page
// cache (no O_DIRECT), for
//   raw    - a raw file of the same size (popek's RawBackend: pread/pwrite),
//   popek  - popek's qcow2 backend,
//   qemu   - `qemu-img bench` on the same qcow2 image (if installed).
// Access patterns, identical for all three:
//   seq    - offsets 0, 4K, 8K, ... over the whole image;
//   rand   - a scattered stride: offset = (offset + STEP) mod (size - 4K) with
//            STEP a large prime multiple of 4 KiB (qemu-img bench has no random
//            mode, so its step option gives the shared pattern).
// Writes go to a freshly created image, so they include cluster allocation;
// reads go to the fully written image. Timing excludes the final flush.
//
// Usage: block_bench [--size MiB] [--dir DIR] [--cluster-size BYTES]
#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "base/error.h"
#include "block/backend.h"
#include "block/qcow2/format.h"
#include "block/raw.h"

using namespace popek;
using namespace popek::block;

namespace {

constexpr u64 kReq = 4096;
constexpr u64 kStepUnits = 40503;  // prime

struct Pattern {
  bool random;
  u64 size;
  u64 count;
  u64 offset(u64 prev) const {
    if (!random) return prev + kReq;
    return (prev + kStepUnits * kReq) % (size - kReq);
  }
  std::string qemu_step() const { return std::to_string(random ? kStepUnits * kReq : kReq); }
};

double now() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

double run_popek(BlockBackend& b, const Pattern& p, bool write) {
  std::vector<u8> buf(kReq, 0x5a);
  u64 off = 0;
  double t0 = now();
  for (u64 i = 0; i < p.count; i++) {
    if (write) {
      buf[0] = static_cast<u8>(i);
      b.write(off, buf.data(), kReq);
    } else {
      b.read(off, buf.data(), kReq);
    }
    off = p.offset(off);
  }
  return now() - t0;
}

bool have_qemu_img() { return std::system("command -v qemu-img >/dev/null 2>&1") == 0; }

// Returns seconds, or a negative value if qemu-img bench failed.
double run_qemu(const std::string& img, const Pattern& p, bool write) {
  std::string cmd = "qemu-img bench -f qcow2 -t writeback -d 1 -s 4096 -S " + p.qemu_step() +
                    " -c " + std::to_string(p.count) + (write ? " -w" : "") + " '" + img + "' 2>&1";
  FILE* f = popen(cmd.c_str(), "r");
  if (!f) return -1;
  char line[512];
  double secs = -1;
  while (fgets(line, sizeof line, f))
    if (std::sscanf(line, "Run completed in %lf seconds", &secs) == 1) {
    }
  pclose(f);
  return secs;
}

void make_qcow2(const std::string& path, u64 size, u32 cluster_bits) {
  qcow2::CreateOptions o;
  o.cluster_bits = cluster_bits;
  qcow2::create(path, size, o);
}

void fill(const std::string& path, const std::string& fmt, u64 size) {
  OpenOptions o;
  o.format = fmt;
  auto b = open_image(path, o);
  std::vector<u8> buf(1 << 20, 0x33);
  for (u64 off = 0; off < size; off += buf.size()) b->write(off, buf.data(), buf.size());
  b->flush();
}

std::string rate(double secs, u64 count) {
  if (secs <= 0) return "n/a";
  char b[48];
  std::snprintf(b, sizeof b, "%7.0f MiB/s %6.0fk", count * kReq / secs / (1 << 20), count / secs / 1000);
  return b;
}

std::string ratio(double a, double b) {
  if (a <= 0 || b <= 0) return "n/a";
  char s[16];
  std::snprintf(s, sizeof s, "%.2f", b / a);  // throughput ratio = time b / time a
  return s;
}

}  // namespace

int main(int argc, char** argv) {
  u64 size_mib = 256;
  std::string dir;
  u64 cluster = 65536;
  for (int i = 1; i < argc; i++) {
    std::string a = argv[i];
    if (a == "--size" && i + 1 < argc) size_mib = std::strtoull(argv[++i], nullptr, 10);
    else if (a == "--dir" && i + 1 < argc) dir = argv[++i];
    else if (a == "--cluster-size" && i + 1 < argc) cluster = std::strtoull(argv[++i], nullptr, 10);
    else {
      std::fprintf(stderr, "usage: %s [--size MiB] [--dir DIR] [--cluster-size BYTES]\n", argv[0]);
      return 2;
    }
  }
  if (cluster < 512 || (cluster & (cluster - 1))) {
    std::fprintf(stderr, "block_bench: cluster size must be a power of two >= 512\n");
    return 2;
  }
  if (dir.empty()) {
    const char* t = std::getenv("TMPDIR");
    dir = t && *t ? t : "/var/tmp";
  }
  std::string base = dir + "/popek-block-bench-" + std::to_string(getpid());
  if (mkdir(base.c_str(), 0755) != 0) {
    std::fprintf(stderr, "block_bench: cannot create %s: %s\n", base.c_str(), std::strerror(errno));
    return 1;
  }
  const u64 size = size_mib << 20;
  const u32 cb = static_cast<u32>(__builtin_ctzll(cluster));
  const bool qemu = have_qemu_img();
  const std::string raw = base + "/bench.raw", q = base + "/bench.qcow2",
                    qq = base + "/bench-qemu.qcow2";
  std::printf("block_bench: %llu MiB image, 4 KiB requests, queue depth 1, page cache, "
              "qcow2 cluster %llu bytes, in %s\n",
              (unsigned long long)size_mib, (unsigned long long)cluster, base.c_str());
  std::printf("throughput as MiB/s and thousands of requests/s; ratios > 1 mean popek is faster\n\n");
  std::printf("%-11s %-22s %-22s %-22s %9s %10s\n", "case", "raw file", "popek qcow2",
              "qemu-img bench qcow2", "popek/raw", "popek/qemu");
  int status = 0;
  try {
    for (bool random : {false, true}) {
      Pattern p{random, size, size / kReq};
      for (bool write : {true, false}) {
        // Fresh images for writes (allocating), fully written ones for reads.
        create_raw(raw, size);
        make_qcow2(q, size, cb);
        make_qcow2(qq, size, cb);
        if (!write) {
          fill(raw, "raw", size);
          fill(q, "qcow2", size);
          fill(qq, "qcow2", size);
        }
        double t_raw, t_popek, t_qemu = -1;
        {
          auto b = open_image(raw, OpenOptions{.format = "raw"});
          t_raw = run_popek(*b, p, write);
        }
        {
          auto b = open_image(q, OpenOptions{.format = "qcow2"});
          t_popek = run_popek(*b, p, write);
        }
        if (qemu) t_qemu = run_qemu(qq, p, write);
        std::string name = std::string(random ? "rand " : "seq ") + (write ? "write" : "read");
        std::printf("%-11s %-22s %-22s %-22s %9s %10s\n", name.c_str(), rate(t_raw, p.count).c_str(),
                    rate(t_popek, p.count).c_str(), rate(t_qemu, p.count).c_str(),
                    ratio(t_popek, t_raw).c_str(), ratio(t_popek, t_qemu).c_str());
        std::fflush(stdout);
      }
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "block_bench: %s\n", e.what());
    status = 1;
  }
  std::remove(raw.c_str());
  std::remove(q.c_str());
  std::remove(qq.c_str());
  rmdir(base.c_str());
  if (!qemu) std::printf("\n(qemu-img not installed: Debian package qemu-utils)\n");
  return status;
}
