// The architectural state of one x86 CPU, as plain data. It lives outside the
// engines: interp, bt and kvm all read and write the same CpuState, which is what
// makes snapshots engine-neutral and lets a running VM switch engines.
#pragma once
#include <cstring>

#include "base/types.h"

namespace popek::x86 {

enum Reg : u8 { EAX, ECX, EDX, EBX, ESP, EBP, ESI, EDI };
enum SegReg : u8 { ES, CS, SS, DS, FS, GS, SEG_NONE = 7 };

// EFLAGS bits.
enum : u32 {
  CF = 1u << 0, PF = 1u << 2, AF = 1u << 4, ZF = 1u << 6, SF = 1u << 7, TF = 1u << 8,
  IF = 1u << 9, DF = 1u << 10, OF = 1u << 11, IOPL = 3u << 12, NT = 1u << 14,
  RF = 1u << 16, VM = 1u << 17, AC = 1u << 18, VIF = 1u << 19, VIP = 1u << 20, ID = 1u << 21,
  FLAGS_ARITH = CF | PF | AF | ZF | SF | OF,
  FLAGS_FIXED1 = 1u << 1,
};

// CpuState::intr_shadow: what holds back events until the next instruction
// has run (the bits of KVM's interruptibility state). Both hold back maskable
// interrupts; an SS load (MOV SS, POP SS) also holds back the debug traps of
// its own instruction, so that a single-step trap never lands between the
// loads of SS and ESP.
enum : u8 { SHADOW_MOV_SS = 1u << 0, SHADOW_STI = 1u << 1 };

// Control register bits.
enum : u32 {
  CR0_PE = 1u << 0, CR0_MP = 1u << 1, CR0_EM = 1u << 2, CR0_TS = 1u << 3, CR0_ET = 1u << 4,
  CR0_NE = 1u << 5, CR0_WP = 1u << 16, CR0_AM = 1u << 18, CR0_NW = 1u << 29,
  CR0_CD = 1u << 30, CR0_PG = 1u << 31,
  CR4_VME = 1u << 0, CR4_PVI = 1u << 1, CR4_TSD = 1u << 2, CR4_DE = 1u << 3,
  CR4_PSE = 1u << 4, CR4_PAE = 1u << 5, CR4_MCE = 1u << 6, CR4_PGE = 1u << 7,
  CR4_PCE = 1u << 8, CR4_OSFXSR = 1u << 9, CR4_OSXMMEXCPT = 1u << 10,
};

// A segment register with its hidden descriptor cache. `attr` holds descriptor
// bits 40..47 (type, S, DPL, P) in its low byte and 52..55 (AVL, L, D/B, G) in
// bits 12..15, the layout VMX and KVM use.
struct Segment {
  u16 sel = 0;
  u32 base = 0;
  u32 limit = 0xFFFF;  // byte-granular effective limit
  u16 attr = 0;

  u8 type() const { return attr & 0xF; }
  bool s() const { return attr & 0x10; }
  u8 dpl() const { return (attr >> 5) & 3; }
  bool present() const { return attr & 0x80; }
  bool db() const { return attr & 0x4000; }
  bool g() const { return attr & 0x8000; }
  bool is_code() const { return s() && (attr & 8); }
  bool conforming() const { return is_code() && (attr & 4); }
  bool readable() const { return !is_code() || (attr & 2); }
  bool writable() const { return s() && !(attr & 8) && (attr & 2); }
  bool expand_down() const { return s() && !(attr & 8) && (attr & 4); }
  // A segment register holding a null selector in protected mode is unusable.
  bool usable() const { return attr & 0x80; }
};

struct TableReg {
  u32 base = 0;
  u16 limit = 0xFFFF;
};

// x87 state, architectural form. Registers are stored by physical index
// (st(i) = regs[(top + i) & 7]); host `long double` is the 80-bit format.
struct FpuState {
  u16 fcw = 0x037F;
  u16 fsw = 0;      // TOP is kept in bits 11..13 here, as FNSTSW shows it
  u16 ftw = 0xFFFF; // full 2-bit tag word: 11 = empty
  u16 fop = 0;
  u32 fip = 0, fdp = 0;
  u16 fcs = 0, fds = 0;
  long double regs[8] = {};
  unsigned top() const { return (fsw >> 11) & 7; }
  void set_top(unsigned t) { fsw = u16((fsw & ~0x3800) | ((t & 7) << 11)); }
};

struct Msrs {
  u32 sysenter_cs = 0, sysenter_esp = 0, sysenter_eip = 0;
  u64 tsc_offset = 0;  // guest TSC = virtual clock TSC + offset (as WRMSR 0x10 sets)
  u64 apic_base = 0xFEE00900;  // BSP, enabled (no APIC yet: CPUID says so)
  u64 misc_enable = 1;         // fast-strings
  u64 pat = 0x0007040600070406ull;
  u64 mtrr_def_type = 0;
  u64 bios_sign_id = 0;
  u64 perfctr[2] = {};
  u32 evntsel[2] = {};
  // kvm-clock (x86/paravirt.h): MSR_KVM_SYSTEM_TIME(_NEW), bit 0 = on, and
  // MSR_KVM_WALL_CLOCK(_NEW), guest-physical addresses of the structures.
  u64 kvm_system_time = 0;
  u64 kvm_wall_clock = 0;
};

struct CpuState {
  u32 gpr[8] = {};
  u32 eip = 0xFFF0;
  u32 eflags = FLAGS_FIXED1;
  Segment seg[6];
  Segment ldtr, tr;
  TableReg gdtr, idtr;
  u32 cr0 = CR0_ET | CR0_NW | CR0_CD;  // 0x60000010 at reset
  u32 cr2 = 0, cr3 = 0, cr4 = 0;
  u32 dr[8] = {0, 0, 0, 0, 0xFFFF0FF0, 0x400, 0xFFFF0FF0, 0x400};
  u8 cpl = 0;
  Msrs msr;
  FpuState fpu;

  // Events and execution status.
  bool halted = false;
  bool shutdown = false;     // triple fault: the board decides (reset or stop)
  u8 intr_shadow = 0;        // SHADOW_* bits: no interrupt before the next instruction
  bool intr_line = false;     // the INTR pin (interrupt controller output), kept by the board
  bool nmi_pending = false;
  bool nmi_blocked = false;  // set while an NMI handler runs, cleared by IRET
  bool a20 = true;
  u64 icount = 0;            // instructions retired

  bool pe() const { return cr0 & CR0_PE; }
  bool pg() const { return cr0 & CR0_PG; }
  bool vm86() const { return eflags & VM; }
  bool code32() const { return seg[CS].db(); }
  unsigned iopl() const { return (eflags >> 12) & 3; }

  // Power-on / RESET state (SDM vol. 3, 10.1.1).
  void reset();
};

inline void CpuState::reset() {
  *this = CpuState{};
  for (auto& s : seg) { s.sel = 0; s.base = 0; s.limit = 0xFFFF; s.attr = 0x93; }
  seg[CS].sel = 0xF000;
  seg[CS].base = 0xFFFF0000;
  seg[CS].attr = 0x9B;
  gpr[EDX] = 0x00000652;  // the CPUID.1 signature (cpuid.cpp): family 6, model 5, stepping 2
  ldtr.attr = 0x82;
  tr.attr = 0x8B;
  idtr = {0, 0x3FF};
  gdtr = {0, 0xFFFF};
}

}  // namespace popek::x86

// Saving and loading a CpuState in a machine-state stream (cpu_state.cpp):
// every field above, as the "cpu" section. Loading checks values a later run
// would trust (CPL, segment limits are taken as saved) and throws
// snap::FormatError for a section that does not hold a CPU.
namespace popek::snap {
class SectionWriter;
class Section;
}  // namespace popek::snap
namespace popek::x86 {
// 2: the kvm-clock MSRs.
inline constexpr u32 kCpuStateVersion = 2;
void save_cpu_state(const CpuState& s, snap::SectionWriter& w);
void load_cpu_state(CpuState& s, const snap::Section& r);
}  // namespace popek::x86
