// Which x86 execution modes /dev/kvm runs on the silicon and which through
// KVM's instruction emulator. Each mode runs, in a scratch VM of its own
// (raw KVM ioctls, no popek engine in between):
//   1. a `dec ecx; jnz` loop, timed (guest instructions per second);
//   2. a fingerprint: AAM on AL = 0xBE (AX = 0x1300: the SDM and the silicon
//      set ZF = 1 from AL = 0; KVM's emulator sets it from AX, ZF = 0), then
//      DAA, which KVM's emulator lacks (an emulation failure exit there).
// Both must say the same: a mode is "silicon" when the loop is fast, DAA ran
// and AAM's ZF is the SDM's; "emulator" when DAA fails or ZF is the
// emulator's. 64-bit mode has no AAM/DAA: speed only.
#pragma once
#include <string>
#include <vector>

#include "base/types.h"

namespace popek::oracle {

enum class KvmMode {
  real16,          // real mode
  v8086,           // virtual-8086 mode (CPL 3)
  pm16_cpl0,       // 16-bit protected mode, paging off
  pm16_cpl3,
  pm32_cpl0,       // 32-bit protected mode, paging off
  pm32_cpl3,
  pae32_cpl0,      // 32-bit protected mode, PAE paging
  pae32_cpl3,
  long64_cpl0,     // long mode, 64-bit code
  long64_cpl3,
  compat32_cpl3,   // long mode, a 32-bit code segment (compatibility mode)
  compat16_cpl3,   // long mode, a 16-bit code segment
  compat32_cpl0,
};
const char* mode_name(KvmMode m);
std::vector<KvmMode> all_modes();

struct KvmModeResult {
  KvmMode mode{};
  bool ran = false;          // the loop reached its end marker (an MMIO write)
  std::string exit;          // how it ended when it did not: exit reason, internal error...
  double mips = 0;           // the loop's instructions per second / 1e6
  u64 loop_insns = 0;
  bool fingerprint = false;  // the mode has AAM/DAA (not 64-bit code)
  bool daa_ran = false;      // DAA executed (no emulation failure)
  bool aam_zf_sdm = false;   // ZF after AAM as the SDM says (silicon)
  u64 user_exits = 0;        // KVM_RUN returns in the timed loop
  std::vector<std::string> dmesg;  // new kernel messages while it ran
  // The verdict: silicon (native) or KVM's emulator (or did not run).
  enum class Where { silicon, emulator, failed } where = Where::failed;
};

// Runs one mode; `min_ns`: time the loop for at least this long.
KvmModeResult probe_mode(KvmMode m, double min_ns = 30e6);
std::string where_name(KvmModeResult::Where w);

}  // namespace popek::oracle
