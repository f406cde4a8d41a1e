// The oracle vector generator (used by popek-oracle-gen and oracle_selftest).
#pragma once

#include <cstdint>
#include <string>

namespace popek::oracle::gen {

inline constexpr unsigned kDefaultCount = 300;
inline constexpr uint64_t kDefaultSeed = 0x706f70656b0001ull;

// Generates one group's file contents (header line + one line per vector).
// `count` vectors per instruction form. Deterministic for a given seed/count.
// Returns false with *err on a generator bug (e.g. an unexpected signal).
bool generate_group(const std::string& group, unsigned count, uint64_t seed, std::string& text,
                    size_t& vectors, std::string* err);

}  // namespace popek::oracle::gen
