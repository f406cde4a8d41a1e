// Errors. popek reports problems a user can act on (bad flags, missing or
// corrupt files) with popek::Error, whose message says what and why. Programming
// errors use POPEK_CHECK, which aborts with the location.
#pragma once
#include <cstdio>
#include <cstdlib>
#include <stdexcept>
#include <string>
#include <utility>
#include <variant>

namespace popek {

class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& what) : std::runtime_error(what) {}
};

// A value or an error message; a small stand-in for C++23 std::expected.
template <typename T>
class Result {
 public:
  Result(T v) : v_(std::move(v)) {}  // NOLINT
  static Result fail(std::string msg) { return Result(ErrTag{}, std::move(msg)); }
  bool ok() const { return v_.index() == 0; }
  explicit operator bool() const { return ok(); }
  T& value() {
    if (!ok()) throw Error(error());
    return std::get<0>(v_);
  }
  T& operator*() { return value(); }
  T* operator->() { return &value(); }
  const std::string& error() const { return std::get<1>(v_); }

 private:
  struct ErrTag {};
  Result(ErrTag, std::string m) : v_(std::in_place_index<1>, std::move(m)) {}
  std::variant<T, std::string> v_;
};

[[noreturn]] inline void check_failed(const char* cond, const char* file, int line) {
  std::fprintf(stderr, "popek: internal check failed: %s at %s:%d\n", cond, file, line);
  std::abort();
}

}  // namespace popek

#define POPEK_CHECK(c) \
  ((c) ? (void)0 : ::popek::check_failed(#c, __FILE__, __LINE__))
