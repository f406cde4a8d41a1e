#include "base/log.h"

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>

namespace popek {
namespace {
LogLevel initial_level() {
  const char* e = std::getenv("POPEK_LOG");
  if (!e) return LogLevel::warn;
  if (!std::strcmp(e, "error")) return LogLevel::error;
  if (!std::strcmp(e, "info")) return LogLevel::info;
  if (!std::strcmp(e, "debug")) return LogLevel::debug;
  if (!std::strcmp(e, "trace")) return LogLevel::trace;
  return LogLevel::warn;
}
LogLevel g_level = initial_level();
std::mutex g_mu;
}  // namespace

void set_log_level(LogLevel l) { g_level = l; }
LogLevel log_level() { return g_level; }
bool log_enabled(LogLevel l) { return static_cast<int>(l) <= static_cast<int>(g_level); }

void log_write(LogLevel l, const char* fmt, ...) {
  static const char* names[] = {"error", "warn", "info", "debug", "trace"};
  std::lock_guard<std::mutex> g(g_mu);
  std::fprintf(stderr, "popek[%s]: ", names[static_cast<int>(l)]);
  va_list ap;
  va_start(ap, fmt);
  std::vfprintf(stderr, fmt, ap);
  va_end(ap);
  std::fputc('\n', stderr);
}
}  // namespace popek
