// --engine hybrid: the guest runs on kvm, and a stretch in which exits are
// frequent enough that translating would be cheaper moves to bt, back to
// kvm when they become rare (Adams & Agesen's observation: hardware
// assistance loses where the guest exits often — I/O, page-table writes,
// privileged operations — and binary translation, whose "exits" are
// callouts within one process, does not). docs/kvm.md gives the policy with
// the figures measured here.
//
// The costs the policy weighs (all measured, none assumed):
//   exit_ns   one exit's round trip (`popek kvm-info`, kvm.calibrated_exit_ns)
//   kvm_ips   guest instructions per second between exits on kvm (the same
//             calibration's dec/jnz loop)
//   switch_ns one kvm -> bt -> kvm round trip of handovers, as measured at
//             this VM's switches (a start value until the first)
// Events are the board's device accesses (port I/O and MMIO): every one is
// an exit on kvm; on bt one is a callout.
//
// On kvm, over windows of at least kvm_window_ns of host time: the share of
// the window spent in exits, f = events * exit_ns / window. At f >= to_bt
// in `confirm` windows in a row the stretch moves to bt.
// On bt, over windows of at least bt_window_insns instructions: what the
// same stretch would cost on kvm, in exits and in running,
//   exits = events * exit_ns,  run = insns / kvm_ips,
// and the share the exits would take, f = exits / (exits + run). At
// f < to_kvm in `confirm` windows in a row, and after at least
// min_stay_switches * switch_ns on bt (a stretch must pay for its two
// handovers), it moves back to kvm. to_bt > to_kvm: hysteresis.
#pragma once
#include <string>

#include "base/types.h"

namespace popek::machine {

struct HybridCosts {
  double exit_ns = 0;
  double kvm_ips = 0;
  double switch_ns = 0;
};

struct HybridOptions {
  double to_bt = 0.3;
  double to_kvm = 0.1;
  u64 kvm_window_ns = 4000000;
  u64 bt_window_insns = 200000;
  unsigned confirm = 2;
  double min_stay_switches = 10;
};

class HybridPolicy {
 public:
  HybridPolicy(const HybridCosts& c, const HybridOptions& o = {}) : c_(c), o_(o) {}
  // After a run on kvm: device accesses and host time it took. True: move to bt.
  bool on_kvm(u64 events, u64 ns);
  // After a run on bt: device accesses, instructions, host time. True: move to kvm.
  bool on_bt(u64 events, u64 insns, u64 ns);
  // A switch happened (either way): windows start afresh.
  void switched();
  // A measured handover round trip (kvm -> bt -> kvm), averaged in.
  void note_switch_cost(double ns);
  const HybridCosts& costs() const { return c_; }
  const HybridOptions& options() const { return o_; }
  // The last window's share of time in exits (kvm) or predicted share (bt), in per mille.
  u64 last_share_permille() const { return u64(last_f_ * 1000); }

 private:
  HybridCosts c_;
  HybridOptions o_;
  u64 w_events_ = 0, w_insns_ = 0, w_ns_ = 0;
  u64 stay_ns_ = 0;  // time on the current engine since the switch
  unsigned streak_ = 0;
  double last_f_ = 0;
  u64 switch_samples_ = 0;
};

}  // namespace popek::machine
