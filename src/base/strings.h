// Small string helpers shared by the option parsers.
#pragma once
#include <string>
#include <vector>

namespace popek {

// "a,b,,c" -> {"a", "b", "", "c"}; an empty string gives {""}.
inline std::vector<std::string> split(const std::string& s, char sep) {
  std::vector<std::string> out;
  std::string::size_type start = 0;
  for (;;) {
    const auto p = s.find(sep, start);
    out.push_back(s.substr(start, p == std::string::npos ? std::string::npos : p - start));
    if (p == std::string::npos) return out;
    start = p + 1;
  }
}

}  // namespace popek
