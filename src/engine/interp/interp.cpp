#include "engine/interp/interp.h"

namespace popek::engine {

using namespace popek::x86;

Interp::Interp(CpuState& s, mem::PhysMem& pm, Platform& plat, bool early_faults)
    : s_(s), mmu_(s, pm), cpu_(s, mmu_, plat), step_(s, pm, mmu_, cpu_) {
  step_.set_early_faults(early_faults);
}

Exit Interp::run(u64 budget) {
  const u64 end = s_.icount + budget;
  return step_.run_loop(end, [&] { return take_stop(); }, [&] { step_.run_insns(end); });
}

std::vector<std::pair<std::string, u64>> Interp::stats() const {
  const StepStats& st = step_.stats();
  std::vector<std::pair<std::string, u64>> out = {
      {"interp.insns", s_.icount},
      {"interp.decode_cache_hits", st.cache_hits},
      {"interp.decode_cache_misses", st.cache_misses},
      {"interp.decode_cache_invalidations", st.cache_invalidations},
      {"interp.exceptions", st.exceptions},
      {"interp.early_faults", st.early_faults},
      {"interp.interrupts", st.interrupts},
      {"interp.unimplemented", st.unimplemented}};
  append_mmu_stats(mmu_, out);
  return out;
}

}  // namespace popek::engine
