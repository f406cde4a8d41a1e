// libFuzzer target for the qcow2 parser and metadata walk: the input is an
// image file. It is opened read-only and read, checked, then opened writable
// (in memory) and written, discarded and flushed. Errors (popek::Error) are
// the expected outcome for bad images; crashes, sanitizer reports and hangs
// are bugs. As an oracle, an image without corruption that accepts every
// write must read back what was written and still have no corruption.
//
// With POPEK_FUZZ_WRITE_SEEDS=DIR set, it writes a seed corpus of small valid
// images into DIR and exits. Built by scripts/fuzz-qcow2.sh.
#include <sys/stat.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "base/error.h"
#include "block/compress.h"
#include "block/qcow2/qcow2.h"

using namespace popek;
using namespace popek::block;

namespace {

u64 mix(u64 x) {
  x ^= x >> 33;
  x *= 0xff51afd7ed558ccdull;
  x ^= x >> 33;
  return x;
}

std::vector<u8> make_image(u32 cluster_bits, u32 refcount_order, u64 size, int writes, bool compressed,
                           u8 ctype, const std::string& backing) {
  qcow2::CreateOptions o;
  o.cluster_bits = cluster_bits;
  o.refcount_order = refcount_order;
  o.compression_type = ctype;
  o.backing_file = backing;
  o.backing_format = backing.empty() ? "" : "raw";
  auto f = std::make_unique<MemFile>("seed", std::vector<u8>{}, true);
  qcow2::create(*f, size, o);
  std::vector<u8> bytes = f->data();
  {
    OpenOptions oo;
    Qcow2Backend q(std::make_unique<MemFile>("seed", bytes, true), oo);
    std::vector<u8> buf(3000);
    for (int i = 0; i < writes; i++) {
      for (usize j = 0; j < buf.size(); j++) buf[j] = static_cast<u8>(mix(i * 7919 + j / 64));
      u64 off = mix(i + 1) % (size - buf.size());
      q.write(off, buf.data(), buf.size());
      if (i % 3 == 2) q.discard(mix(i + 99) % (size / 2), 1u << cluster_bits);
    }
    q.flush();
    bytes = static_cast<MemFile&>(q.file()).data();
  }
  if (compressed) {
    // Turn guest cluster 0 into a compressed cluster by hand.
    const u64 cs = 1ull << cluster_bits;
    std::vector<u8> plain(cs);
    for (u64 j = 0; j < cs; j++) plain[j] = static_cast<u8>((j / 100) % 3);
    std::string z;
    if (compress_cluster(ctype, plain.data(), plain.size(), &z)) {
      u64 l1 = qcow2::rd_be64(&bytes[40]);
      u64 l2 = qcow2::rd_be64(&bytes[l1]) & qcow2::kOffsetMask;
      if (l2) {
        u64 host = (bytes.size() + 511) / 512 * 512;
        bytes.resize(host + z.size());
        std::memcpy(&bytes[host], z.data(), z.size());
        const u32 x = 62 - (cluster_bits - 8);
        u64 nsec = (z.size() + (host & 511) + 511) / 512 - 1;
        u64 old = qcow2::rd_be64(&bytes[l2]);
        qcow2::wr_be64(&bytes[l2], qcow2::kCompressed | (nsec << x) | host);
        (void)old;  // the old data cluster leaks: also a fine seed
      }
    }
  }
  return bytes;
}

void write_seeds(const char* dir) {
  mkdir(dir, 0755);
  struct S {
    u32 cb, ro;
    u64 size;
    int writes;
    bool comp;
    u8 ct;
    const char* backing;
  } seeds[] = {
      {9, 4, 1 << 20, 6, false, 0, ""},        {9, 6, 256 << 10, 10, true, 0, ""},
      {9, 0, 128 << 10, 4, false, 0, ""},      {10, 3, 512 << 10, 5, true, 1, ""},
      {12, 4, 1 << 20, 3, true, 0, ""},        {9, 4, 64 << 10, 0, false, 0, "base.raw"},
      {11, 5, 2 << 20, 8, false, 0, ""},       {9, 2, 300 << 10, 12, true, 0, ""},
  };
  int n = 0;
  for (const auto& s : seeds) {
    auto img = make_image(s.cb, s.ro, s.size, s.writes, s.comp, s.ct, s.backing);
    std::string path = std::string(dir) + "/popek-seed-" + std::to_string(n++) + ".qcow2";
    FILE* f = std::fopen(path.c_str(), "wb");
    if (!f) std::abort();
    std::fwrite(img.data(), 1, img.size(), f);
    std::fclose(f);
  }
  std::printf("wrote %d seeds to %s\n", n, dir);
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  if (const char* d = std::getenv("POPEK_FUZZ_WRITE_SEEDS")) {
    write_seeds(d);
    std::exit(0);
  }
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size > (4u << 20)) return 0;
  std::vector<u8> img(data, data + size);
  const u64 h = mix(size * 31 + (size ? data[size / 2] : 0));

  // 1. Read-only: the parser, the L1/L2 walk, decompression.
  try {
    OpenOptions o;
    o.read_only = true;
    o.l2_cache_tables = 4;
    Qcow2Backend q(std::make_unique<MemFile>("fuzz.qcow2", img, false), o);
    std::vector<u8> buf(8192);
    const u64 vs = q.size();
    for (u64 off = 0; off < vs && off < (256u << 10); off += buf.size())
      q.read(off, buf.data(), std::min<u64>(buf.size(), vs - off));
    for (int i = 0; i < 16 && vs; i++) {
      u64 off = mix(h + i) % vs;
      q.read(off, buf.data(), std::min<u64>(buf.size(), vs - off));
    }
  } catch (const Error&) {
  }

  // 2. The check, on a possibly damaged image.
  bool clean = false;
  try {
    OpenOptions o;
    o.read_only = true;
    o.for_check = true;
    Qcow2Backend q(std::make_unique<MemFile>("fuzz.qcow2", img, false), o);
    CheckResult r = q.check();
    clean = r.corruptions == 0 && r.check_errors == 0;  // leaks are harmless
  } catch (const Error&) {
  }

  // 3. Writable, in memory: allocation, copy-on-write, discard, write-back.
  try {
    OpenOptions o;
    o.l2_cache_tables = 4;
    auto mf = std::make_unique<MemFile>("fuzz.qcow2", img, true, 64u << 20);
    MemFile* m = mf.get();
    std::vector<u8> final_bytes;
    bool all_ok = true;
    std::vector<std::pair<u64, std::vector<u8>>> written;
    {
      Qcow2Backend q(std::move(mf), o);
      const u64 vs = q.size();
      for (int i = 0; i < 12 && vs; i++) {
        u64 len = std::min<u64>(1 + mix(h + 100 + i) % 20000, vs);
        u64 off = mix(h + 200 + i) % (vs - len + 1);
        try {
          if (i % 5 == 3) {
            q.discard(off, len);
            written.emplace_back(off, std::vector<u8>(len, 0));
          } else if (i % 7 == 5) {
            q.flush();
          } else {
            std::vector<u8> p(len, static_cast<u8>(i + 1));
            q.write(off, p.data(), len);
            written.emplace_back(off, std::move(p));
          }
        } catch (const Error&) {
          all_ok = false;
          break;
        }
      }
      if (all_ok) {
        q.flush();
        // Later writes win; check the last one of each overlapping set by
        // replaying into a map of bytes.
        std::vector<std::pair<u64, u8>> expect;
        for (auto& [off, v] : written)
          for (u64 j = 0; j < v.size(); j += 97) expect.emplace_back(off + j, v[j]);
        for (auto& [pos, val] : expect) {
          u8 last = val;
          for (auto& [off, v] : written)
            if (pos >= off && pos < off + v.size()) last = v[pos - off];
          u8 got;
          q.read(pos, &got, 1);
          if (got != last) {
            std::fprintf(stderr, "read back %u at %llu, wrote %u\n", got, (unsigned long long)pos, last);
            std::abort();
          }
        }
        final_bytes = m->data();  // flushed: everything is in the file
      }
    }
    if (clean && all_ok) {
      OpenOptions co;
      co.read_only = true;
      co.for_check = true;
      Qcow2Backend q(std::make_unique<MemFile>("fuzz.qcow2", final_bytes, false), co);
      CheckResult r = q.check();
      if (r.corruptions || r.check_errors) {
        std::fprintf(stderr, "a clean image became corrupt after writes: %s\n",
                     r.messages.empty() ? "" : r.messages[0].c_str());
        std::abort();
      }
    }
  } catch (const Error&) {
  }
  return 0;
}
