// The host CPU as an oracle for 16- and 32-bit user-mode code. On this
// project's machines /dev/kvm (kvm_pvm) runs no 16/32-bit code on the
// silicon (docs/kvm.md), but the x86-64 host itself does: a 64-bit Linux
// process can far-jump into a 32-bit code segment (compatibility mode) or a
// 16-bit one it made in its LDT (modify_ldt), run there at CPL 3 on the real
// CPU, and get back through a signal. Compatibility mode runs 16/32-bit code
// as legacy protected mode does at CPL 3: AAA..AAD, BOUND, ARPL, PUSHA,
// LAR/LSL/VERR/VERW, segment loads and their faults through the LDT all
// exist there.
//
// The environment (the popek side mirrors it, tests/oracle/pm_fuzz.h): an LDT
// of `ldt` entries (DPL 3: what modify_ldt allows) whose bases are the code,
// data and stack areas here; CS, DS, ES, SS from it, FS and GS null. The
// code runs until it raises an exception (it ends with INT3): the signal's
// trap number, error code and registers are the result.
#pragma once
#include <string>
#include <vector>

#include "base/types.h"

namespace popek::oracle {

// One LDT entry, in modify_ldt's terms (DPL 3, S = 1, accessed set).
struct LdtEntry {
  enum Area : u8 { code, data, stack, none } area = data;  // what its base points at
  u32 limit = 0xFFFF;        // in bytes or pages (limit_in_pages)
  bool seg_32bit = true;
  u8 contents = 0;           // 0 data, 1 data expand-down, 2 code, 3 conforming code
  bool read_exec_only = false;
  bool limit_in_pages = false;
  bool not_present = false;
  bool avl = false;
  // The 8-byte descriptor with the given base (as Linux's fill_ldt writes it).
  u64 descriptor(u32 base) const;
};

// What an area holds (both sides: the same offsets).
constexpr u32 kAreaSize = 0x10000;

struct Run32 {
  u32 gpr[8] = {};  // EAX..EDI (ESP: the stack segment's offset)
  u32 eflags = 0;
  u32 eip = 0;      // at the end: where the exception left EIP
  u16 cs = 0, ss = 0, ds = 0, es = 0, fs = 0, gs = 0;
  int vector = -1;  // the exception that ended the run (3: the final INT3)
  u32 error = 0;
};

class Host32 {
 public:
  // Maps the areas (below 4 GiB) and writes the LDT; usable() false with
  // why() when this host cannot (no compatibility mode, modify_ldt refused).
  explicit Host32(const std::vector<LdtEntry>& ldt);
  ~Host32();
  bool usable() const { return why_.empty(); }
  const std::string& why() const { return why_; }
  u8* area(LdtEntry::Area a);
  // Runs from in.eip in the code segment `in.cs` with the other selectors
  // and registers of `in`; returns the state at the exception that ended it.
  Run32 run(const Run32& in);

 private:
  std::string why_;
  u8* base_ = nullptr;
};

// Where the host's CPU comes from (vendor and family/model/stepping).
std::string host_cpu();

}  // namespace popek::oracle
