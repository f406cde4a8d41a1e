#include "engine/engine.h"

namespace popek::engine {
const char* exit_name(Exit e) {
  switch (e) {
    case Exit::budget: return "budget";
    case Exit::halt: return "halt";
    case Exit::shutdown: return "shutdown";
    case Exit::stopped: return "stopped";
  }
  return "?";
}
}  // namespace popek::engine
