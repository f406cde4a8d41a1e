// popek-oracle-gen: records x86 instruction test vectors by running the
// instructions on the host CPU. Usage: popek-oracle-gen [options] OUTDIR
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "gen.h"
#include "vector_format.h"

namespace {

void usage() {
  std::fprintf(stderr,
               "usage: popek-oracle-gen [-n COUNT] [-s SEED] [-g GROUP[,GROUP...]] [-q] OUTDIR\n"
               "  -n COUNT  vectors per instruction form (default %u)\n"
               "  -s SEED   64-bit seed, hex or decimal (default 0x%llx)\n"
               "  -g GROUPS comma-separated subset of:",
               popek::oracle::gen::kDefaultCount,
               static_cast<unsigned long long>(popek::oracle::gen::kDefaultSeed));
  for (auto& g : popek::oracle::group_names()) std::fprintf(stderr, " %s", g.c_str());
  std::fprintf(stderr, "\n  writes OUTDIR/<group>.txt\n");
}

}  // namespace

int main(int argc, char** argv) {
  unsigned count = popek::oracle::gen::kDefaultCount;
  uint64_t seed = popek::oracle::gen::kDefaultSeed;
  std::vector<std::string> groups = popek::oracle::group_names();
  std::string outdir;
  bool quiet = false;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    auto next = [&]() -> std::string {
      if (i + 1 >= argc) {
        usage();
        std::exit(2);
      }
      return argv[++i];
    };
    if (a == "-n") count = static_cast<unsigned>(std::stoul(next()));
    else if (a == "-s") seed = std::stoull(next(), nullptr, 0);
    else if (a == "-q") quiet = true;
    else if (a == "-g") {
      groups.clear();
      std::stringstream ss(next());
      std::string g;
      while (std::getline(ss, g, ','))
        if (!g.empty()) groups.push_back(g);
    } else if (a == "-h" || a == "--help") {
      usage();
      return 0;
    } else if (!a.empty() && a[0] == '-') {
      usage();
      return 2;
    } else outdir = a;
  }
  if (outdir.empty() || count == 0) {
    usage();
    return 2;
  }
  std::filesystem::create_directories(outdir);
  auto t0 = std::chrono::steady_clock::now();
  size_t total = 0;
  for (auto& g : groups) {
    std::string text, err;
    size_t n = 0;
    if (!popek::oracle::gen::generate_group(g, count, seed, text, n, &err)) {
      std::fprintf(stderr, "popek-oracle-gen: %s\n", err.c_str());
      return 1;
    }
    std::string path = outdir + "/" + g + ".txt";
    std::string tmp = path + ".tmp";
    {
      std::ofstream out(tmp, std::ios::binary);
      out << text;
      if (!out) {
        std::fprintf(stderr, "popek-oracle-gen: cannot write %s\n", tmp.c_str());
        return 1;
      }
    }
    std::filesystem::rename(tmp, path);
    total += n;
    if (!quiet) std::printf("%-8s %8zu vectors\n", g.c_str(), n);
  }
  double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  if (!quiet) std::printf("total    %8zu vectors in %.2f s -> %s\n", total, s, outdir.c_str());
  return 0;
}
