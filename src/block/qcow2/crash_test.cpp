// Crash safety: a writer process doing random writes and flushes is killed
// with SIGKILL at random moments, many times, on the same image. After each
// kill, qemu-img check (and popek's check) must find no corruption (leaked
// clusters are allowed), and every write that was flushed before the kill and
// not touched afterwards must read back.
#include <gtest/gtest.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <time.h>

#include <chrono>
#include <cstring>
#include <fstream>
#include <random>
#include <sstream>
#include <thread>

#include "block/qcow2/qcow2.h"
#include "block/test_util.h"

using namespace popek;
using namespace popek::block;
using namespace popek::block::test;

extern char** environ;

namespace {

struct Model {
  std::vector<u8> data;
  std::vector<u8> known;  // 1 = the byte's content is certain
};

// Applies a writer log: ops before the last completed flush are durable; the
// ones after it may or may not have happened, so their bytes become unknown.
u64 apply_log(const std::string& log_path, Model* m, u64* flushes) {
  std::ifstream f(log_path);
  std::vector<std::string> lines;
  std::string l;
  while (std::getline(f, l)) lines.push_back(l);
  if (!f.eof() || (!lines.empty() && lines.back().empty())) {}
  usize last_f = 0;
  for (usize i = 0; i < lines.size(); i++)
    if (lines[i] == "F") last_f = i + 1;
  u64 durable_ops = 0;
  for (usize i = 0; i < lines.size(); i++) {
    std::istringstream s(lines[i]);
    char op;
    unsigned long long off = 0, len = 0, seed = 0;
    s >> op;
    if (op == 'F') {
      (*flushes)++;
      continue;
    }
    if (op != 'W' && op != 'D' && op != 'Z') continue;
    s >> off >> len;
    if (op == 'W') s >> seed;
    if (!s || off + len > m->data.size()) continue;  // a torn last line
    if (i < last_f) {
      durable_ops++;
      if (op == 'W') {
        auto p = pattern(len, seed);
        std::memcpy(&m->data[off], p.data(), len);
      } else {
        std::memset(&m->data[off], 0, len);
      }
      std::memset(&m->known[off], 1, len);
    } else {
      std::memset(&m->known[off], 0, len);
    }
  }
  return durable_ops;
}

struct CrashConfig {
  const char* name;
  u32 cluster_bits;
  u32 refcount_order;
  u64 size;
  int runs;
};

void crash_loop(const CrashConfig& c) {
  TempDir d;
  std::string img = d.file("crash.qcow2"), log = d.file("ops.log");
  qcow2::CreateOptions o;
  o.cluster_bits = c.cluster_bits;
  o.refcount_order = c.refcount_order;
  qcow2::create(img, c.size, o);
  Model m{std::vector<u8>(c.size, 0), std::vector<u8>(c.size, 1)};
  std::mt19937_64 rng(c.cluster_bits * 1000 + c.refcount_order);
  bool qemu = have_program("qemu-img");
  u64 total_durable = 0, total_flushes = 0, max_leaks = 0, verified_bytes = 0;
  int killed_mid_run = 0;
  for (int run_i = 0; run_i < c.runs; run_i++) {
    std::remove(log.c_str());
    std::string seed = std::to_string(rng());
    const char* argv[] = {POPEK_CRASH_WRITER, img.c_str(), log.c_str(), seed.c_str(), nullptr};
    pid_t pid;
    ASSERT_EQ(0, posix_spawn(&pid, POPEK_CRASH_WRITER, nullptr, nullptr,
                             const_cast<char* const*>(argv), environ));
    // Kill at a random moment: 2 to 150 ms after start.
    std::this_thread::sleep_for(std::chrono::microseconds(2000 + rng() % 148000));
    kill(pid, SIGKILL);
    int st = 0;
    waitpid(pid, &st, 0);
    ASSERT_TRUE(WIFSIGNALED(st)) << "the writer exited by itself (status " << st
                                 << "); see its stderr above";
    killed_mid_run++;
    u64 flushes = 0;
    total_durable += apply_log(log, &m, &flushes);
    total_flushes += flushes;

    if (qemu) {
      auto r = run("qemu-img check " + sh_quote(img));
      // 0 = clean, 3 = leaked clusters only; anything else is corruption.
      ASSERT_TRUE(r.status == 0 || r.status == 3) << "run " << run_i << ":\n" << r.out;
      ASSERT_EQ(r.out.find("ERROR"), std::string::npos) << r.out;
    }
    {
      OpenOptions co;
      co.read_only = true;
      co.for_check = true;
      Qcow2Backend q(open_posix_file(img, false), co);
      CheckResult r = q.check();
      ASSERT_EQ(r.corruptions, 0u) << "run " << run_i << ": " << r.messages[0];
      ASSERT_EQ(r.check_errors, 0u);
      max_leaks = std::max(max_leaks, r.leaks);
      std::vector<u8> got(c.size);
      q.read(0, got.data(), got.size());
      for (u64 i = 0; i < c.size; i++) {
        if (!m.known[i]) continue;
        verified_bytes++;
        if (got[i] != m.data[i]) {
          FAIL() << "run " << run_i << ": byte " << i << " reads " << int(got[i]) << ", flushed "
                 << int(m.data[i]);
        }
      }
    }
  }
  std::printf("[%s] %d SIGKILLed runs, %llu flushes and %llu durable operations verified "
              "(%llu MiB compared), at most %llu leaked clusters, 0 corruptions\n",
              c.name, killed_mid_run, (unsigned long long)total_flushes,
              (unsigned long long)total_durable, (unsigned long long)(verified_bytes >> 20),
              (unsigned long long)max_leaks);
  if (qemu) {
    // Finally QEMU's own view agrees with the model wherever it is known.
    std::string out = d.file("qemu.raw");
    auto r = run("qemu-img convert -O raw " + sh_quote(img) + " " + sh_quote(out));
    ASSERT_EQ(r.status, 0) << r.out;
    auto q = read_file(out);
    ASSERT_EQ(q.size(), c.size);
    for (u64 i = 0; i < c.size; i++)
      if (m.known[i]) {
        ASSERT_EQ(q[i], m.data[i]) << "qemu reads byte " << i << " differently";
      }
  }
}

}  // namespace

TEST(Crash, KilledWriterLeavesConsistentImage64k) {
  crash_loop({"64k clusters", 16, 4, 16 << 20, 70});
}

TEST(Crash, KilledWriterLeavesConsistentImageSmallClusters) {
  // 512-byte clusters and 64-bit refcounts: many L2 tables and refcount
  // blocks, and refcount-table growth while being killed.
  crash_loop({"512 B clusters, 64-bit refcounts", 9, 6, 16 << 20, 50});
}
