// Switching engines while the guest runs: which engine runs the guest when.
// `--engine-schedule SPEC` (parse_engine_schedule) gives a fixed cycle or a
// seeded random sequence of slices; EngineSwitcher (machine.cpp) carries
// them out at the vCPU loop's safe points. The state check made at a
// handover (--switch-check) is compare_states.
#pragma once
#include <string>
#include <utility>
#include <vector>

#include "base/types.h"
#include "x86/cpu_state.h"

namespace popek::machine {

enum class EngineKind : u8 { interp, bt, kvm };
inline constexpr unsigned kEngineKinds = 3;
const char* engine_kind_name(EngineKind k);
// "interp", "bt", "kvm"; false for anything else.
bool parse_engine_kind(const std::string& s, EngineKind* k);

// How long a slice lasts: guest instructions, or nanoseconds of the guest's
// clock (the VirtualClock: host time, or with --deterministic time derived
// from retired instructions, so a time slice is then also exact and
// repeatable).
struct SliceLen {
  bool time = false;
  u64 n = 0;
  std::string str() const;
};

struct EngineSchedule {
  std::string spec;
  // A cycle: these slices in order, repeating.
  std::vector<std::pair<EngineKind, SliceLen>> cycle;
  // random:SEED:ENGINES:MIN-MAX: each slice on an engine other than the
  // last one's (so every slice ends in a switch), of a length drawn
  // uniformly from [min, max].
  bool random = false;
  u64 seed = 0;
  std::vector<EngineKind> engines;
  SliceLen min, max;
  // The engines it names, each once, in order of first use.
  std::vector<EngineKind> uses() const;
};

// Throws popek::Error saying what is wrong with SPEC. The grammar:
//   SPEC   := ITEM{,ITEM}                      a cycle, e.g. interp:1ms,bt:20ms,kvm:5ms
//           | random:SEED:ENGINE{,ENGINE}:LEN-LEN   e.g. random:7:interp,bt,kvm:100us-2ms
//   ITEM   := ENGINE:LEN
//   ENGINE := interp | bt | kvm
//   LEN    := N[k|M]                           guest instructions (k = 1000, M = 1000000)
//           | N(ns|us|ms|s)                    guest clock time
// kvm does not count instructions: its slices must be times.
EngineSchedule parse_engine_schedule(const std::string& spec);
// The help text of the option (the grammar above, for --help).
const char* engine_schedule_help();

// Walks a schedule: next() gives the slices in order.
class SliceSource {
 public:
  explicit SliceSource(const EngineSchedule& s) : s_(s), rng_(s.seed) {}
  std::pair<EngineKind, SliceLen> next();

 private:
  u64 rand();  // splitmix64: the same sequence on every host and library
  EngineSchedule s_;
  u64 rng_;
  usize at_ = 0;
  bool have_last_ = false;
  EngineKind last_ = EngineKind::interp;
};

// The architectural fields two states must share after a handover (what
// KVM holds: registers, segments with their caches, control and table
// registers, CPL, x87, interrupt shadow, NMI state, SYSENTER MSRs). Empty if
// equal; else names the first field that differs and both values.
std::string compare_states(const x86::CpuState& want, const x86::CpuState& got);

}  // namespace popek::machine
