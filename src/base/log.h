// Logging to stderr with levels; POPEK_LOG env var or set_log_level() selects.
#pragma once
#include <cstdarg>

namespace popek {

enum class LogLevel { error = 0, warn = 1, info = 2, debug = 3, trace = 4 };

void set_log_level(LogLevel l);
LogLevel log_level();
bool log_enabled(LogLevel l);
void log_write(LogLevel l, const char* fmt, ...) __attribute__((format(printf, 2, 3)));

}  // namespace popek

#define POPEK_LOG(lvl, ...)                                               \
  do {                                                                    \
    if (::popek::log_enabled(::popek::LogLevel::lvl))                     \
      ::popek::log_write(::popek::LogLevel::lvl, __VA_ARGS__);            \
  } while (0)
