#include "machine/hybrid_policy.h"

namespace popek::machine {

void HybridPolicy::switched() {
  w_events_ = w_insns_ = w_ns_ = stay_ns_ = 0;
  streak_ = 0;
}

void HybridPolicy::note_switch_cost(double ns) {
  // The first measurement replaces the start value; later ones average in.
  switch_samples_++;
  c_.switch_ns = switch_samples_ == 1 ? ns : c_.switch_ns + (ns - c_.switch_ns) / double(switch_samples_);
}

bool HybridPolicy::on_kvm(u64 events, u64 ns) {
  w_events_ += events;
  w_ns_ += ns;
  stay_ns_ += ns;
  if (w_ns_ < o_.kvm_window_ns) return false;
  last_f_ = double(w_events_) * c_.exit_ns / double(w_ns_);
  w_events_ = w_ns_ = 0;
  streak_ = last_f_ >= o_.to_bt ? streak_ + 1 : 0;
  return streak_ >= o_.confirm;
}

bool HybridPolicy::on_bt(u64 events, u64 insns, u64 ns) {
  w_events_ += events;
  w_insns_ += insns;
  w_ns_ += ns;
  stay_ns_ += ns;
  if (w_insns_ < o_.bt_window_insns) return false;
  const double exits = double(w_events_) * c_.exit_ns;
  const double run = c_.kvm_ips > 0 ? double(w_insns_) / c_.kvm_ips * 1e9 : 0;
  last_f_ = exits + run > 0 ? exits / (exits + run) : 0;
  w_events_ = w_insns_ = w_ns_ = 0;
  streak_ = last_f_ < o_.to_kvm ? streak_ + 1 : 0;
  return streak_ >= o_.confirm && double(stay_ns_) >= o_.min_stay_switches * c_.switch_ns;
}

}  // namespace popek::machine
