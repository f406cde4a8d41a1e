// Helpers shared by the block tests: temporary folders, running tools.
#pragma once
#include <string>
#include <vector>

#include "base/types.h"

namespace popek::block::test {

class TempDir {
 public:
  TempDir();
  ~TempDir();
  const std::string& path() const { return path_; }
  std::string file(const std::string& name) const { return path_ + "/" + name; }

 private:
  std::string path_;
};

struct RunResult {
  int status = -1;  // exit status, or -1 if it did not exit normally
  std::string out;  // stdout and stderr together
};

// Runs a shell command line; never throws.
RunResult run(const std::string& cmd);
// Whether a program is on PATH.
bool have_program(const std::string& name);
// Quotes for /bin/sh.
std::string sh_quote(const std::string& s);
// Deterministic pseudo-random bytes.
std::vector<u8> pattern(usize n, u64 seed);
std::vector<u8> read_file(const std::string& path);
void write_file(const std::string& path, const std::vector<u8>& data);

}  // namespace popek::block::test
