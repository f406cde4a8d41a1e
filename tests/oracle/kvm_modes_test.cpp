// Which execution modes this host's /dev/kvm runs on the silicon and which
// through KVM's instruction emulator (kvm_modes.h): prints the table
// docs/kvm.md records, and checks that the two kinds of evidence agree — a
// mode whose fingerprint says "silicon" (DAA ran, AAM's flags are the SDM's)
// must also run the loop much faster than a mode whose fingerprint says
// "emulator". Skips, saying why, without a usable /dev/kvm.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>

#include "engine/kvm/kvm.h"
#include "kvm_modes.h"

using namespace popek;
using namespace popek::oracle;

TEST(KvmModes, SiliconOrEmulator) {
  const engine::KvmProbe p = engine::kvm_available();
  if (!p.usable) GTEST_SKIP() << "kvm not usable here: " << p.why;
  std::printf("/dev/kvm: %s\n", p.flavour.c_str());
  const double min_ns = std::getenv("POPEK_KVM_MODES_MS") ? std::atof(std::getenv("POPEK_KVM_MODES_MS")) * 1e6 : 20e6;
  double slowest_silicon = 1e18, fastest_emulated = 0;
  int silicon = 0, emulated = 0;
  for (KvmMode m : all_modes()) {
    KvmModeResult r = probe_mode(m, min_ns);
    std::printf("%-36s %-13s", mode_name(m), where_name(r.where).c_str());
    if (r.ran) std::printf(" %9.2f MIPS (%llu insns, %llu exits to user space)", r.mips,
                           (unsigned long long)r.loop_insns, (unsigned long long)r.user_exits);
    if (r.fingerprint && r.ran)
      std::printf(" AAM ZF %s, DAA %s", r.aam_zf_sdm ? "SDM's" : "emulator's", r.daa_ran ? "ran" : "failed");
    if (!r.exit.empty()) std::printf(" [%s]", r.exit.c_str());
    std::printf("\n");
    for (const std::string& l : r.dmesg) std::printf("    dmesg: %s\n", l.c_str());
    if (r.where == KvmModeResult::Where::silicon) {
      silicon++;
      slowest_silicon = std::min(slowest_silicon, r.mips);
    }
    if (r.where == KvmModeResult::Where::emulator) {
      emulated++;
      fastest_emulated = std::max(fastest_emulated, r.mips);
    }
    // The two fingerprints agree with each other: DAA running but AAM's
    // flags being the emulator's (or the reverse) would mean neither tells.
    if (r.ran && r.fingerprint) {
      EXPECT_EQ(r.daa_ran, r.aam_zf_sdm) << mode_name(m);
    }
  }
  std::printf("%d modes on silicon, %d through the emulator\n", silicon, emulated);
  if (silicon && emulated) {
    EXPECT_GT(slowest_silicon, 5 * fastest_emulated)
        << "the modes the fingerprint calls silicon are not much faster than the emulated ones";
  }
}
