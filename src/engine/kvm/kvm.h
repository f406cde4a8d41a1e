// The hardware-assisted engine: the guest runs on the host CPU through Linux
// KVM (VT-x / AMD-V). Everything else stays popek's: no in-kernel irqchip, so
// the PIC, PIT, UART and every other device are the board's user-space models
// the software engines use; port and MMIO exits go to the board's buses;
// interrupts come from the board's INTR line and are injected with
// KVM_INTERRUPT when the guest can take them (the interrupt window). Guest RAM
// is PhysMem's own mapping, registered as KVM memory slots; ROMs are read-only
// slots; everything else (the VGA hole, MMIO) is unmapped, so it exits.
//
// The architectural state lives in the CpuState, as for every engine: run()
// loads it into the vCPU when it starts and reads it back before it returns
// (kvm_state.h), so between run() calls the CpuState is exact.
#pragma once
#include <chrono>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "engine/engine.h"
#include "engine/kvm/kvm_state.h"
#include "engine/stepper.h"
#include "memory/mmu.h"
#include "memory/phys_mem.h"
#include "x86/cpu.h"


namespace popek::engine {

// What this host's KVM offers, and how fast it runs (kvm_probe()).
struct KvmProbe {
  bool usable = false;
  std::string why;           // when not usable: why not
  double mips = 0;           // a dec/jnz loop, guest instructions per second / 1e6
  double exit_us = 0;        // the round trip of one port I/O exit
  bool tsc_control = false;  // KVM_CAP_TSC_CONTROL: the guest TSC can run at 1 GHz
  // The kernel module behind /dev/kvm: kvm_intel (VT-x), kvm_amd (AMD-V),
  // kvm_pvm (PVM: no hardware virtualization; code that cannot run natively
  // goes through KVM's instruction emulator, see docs/kvm.md), or unknown.
  std::string flavour;
};
// Opens /dev/kvm and checks the API version and the capabilities the engine
// needs (cheap; no VM is run).
KvmProbe kvm_available();
// The same and a short calibration in a scratch VM (tens of ms here).
KvmProbe kvm_probe();

struct KvmOptions {
  // Nanoseconds from now to the board's next timer event (Timed::kNever:
  // none). run() returns by then: a host timer kicks the vCPU out of KVM_RUN.
  std::function<u64()> ns_to_next_event;
  // Upper bound of one run() in host time (console and host I/O are polled
  // between runs).
  u64 max_slice_ns = 2000000;
  bool calibrate = true;  // measure the speed at start (kvm.mips in --stats)
  // Other engines run the guest too (engine switching): RAM slots log the
  // pages the guest writes (KVM_MEM_LOG_DIRTY_PAGES), and switch_out()
  // tells PhysMem about them, so the other engines' decoded and translated
  // code of those pages goes. Where KVM cannot log, switch_out() treats
  // every code page as written.
  bool track_writes = false;
};

class Kvm final : public Engine {
 public:
  // Throws popek::Error when KVM is missing or unusable (saying why).
  Kvm(x86::CpuState& s, mem::PhysMem& pm, x86::Platform& plat, KvmOptions opt);
  ~Kvm() override;

  const char* name() const override { return "kvm"; }
  // `budget` (instructions) is not used: KVM does not count instructions.
  // run() returns at the next timer event, after max_slice_ns, on HLT,
  // shutdown or a stop request.
  Exit run(u64 budget) override;
  std::vector<std::pair<std::string, u64>> stats() const override;
  const KvmProbe& probe() const { return probe_; }
  // Engine switching (see Engine): switch_out() reports the guest's writes
  // to PhysMem; switch_in() loads the whole CpuState at the next run()
  // (KVM_SET_SREGS also resets KVM's MMU context: page tables may have
  // changed), the TSC again, and starts a fresh write log.
  void switch_out() override;
  void switch_in() override;
  // Whether KVM logs the guest's writes (track_writes and KVM took it).
  bool write_log() const { return dirty_log_; }
  // The state as the vCPU holds it (KVM_GET_*), without changing the
  // CpuState: for checking a handover (the state just loaded must read
  // back as it was given). Loads the CpuState first if it is not loaded.
  x86::CpuState vcpu_state();
  // Input the board reads between slices (the console's stdin): where the
  // fd supports signal-driven I/O, input arriving kicks the vCPU out of
  // KVM_RUN at once instead of at the end of its slice.
  void watch_input(int fd);
  // Whether KVM took popek's CPU model (KVM_SET_CPUID2) and carries MSRs.
  bool cpuid_model_set() const { return cpuid_set_; }
  bool msr_ioctls() const { return msr_ioctls_; }
  // KVM's paravirtual interface (the board's Platform::paravirt()): KVM
  // itself provides kvm-clock and the hypercalls; popek lets the kvm-clock
  // MSRs through its filter and announces in CPUID the KVM_FEATURE_* bits
  // both popek's model and this KVM have (pv_features(); 0 where KVM does
  // not say what it supports, or where the CPUID could not be set).
  bool paravirt_msrs() const { return pv_msrs_; }
  u32 pv_features() const { return pv_features_; }

 protected:
  void kick() override;

 private:
  void create_vm();
  void release();  // closes and unmaps what exists (the destructor; a failed constructor)
  void map_memory();
  void set_cpuid();
  void set_msr_filter();
  // KVM_FEATURE_* bits (CPUID 0x40000001 EAX) this KVM supports; false if
  // it does not say (KVM_GET_SUPPORTED_CPUID refused or without the leaf).
  bool supported_pv_features(u32* eax);
  // The kvm-clock MSRs go between the CpuState and KVM (KVM_GET/SET_MSRS).
  bool carry_pv_msrs() const;
  // Once: the guest's kvm-clock cannot be carried between KVM and popek here.
  void warn_pv_uncarried(const char* when);
  void push_state();
  void pull_state();
  void remember_pulled();
  void arm_input();
  // Completes an I/O, MMIO or MSR exit's instruction without running guest
  // code further (KVM_RUN with immediate_exit).
  void complete_pending();
  // One KVM_RUN; returns false on EINTR (a kick).
  bool enter();
  void handle_io();
  void handle_mmio();
  void handle_msr(bool write);
  // KVM could not emulate an instruction (its instruction emulator lacks it:
  // kvm_pvm runs much of a 32-bit guest through that emulator): popek's
  // semantics execute it on the CpuState, and KVM_RUN goes on. False when
  // that cannot be done exactly (an event is half delivered).
  bool emulate_one(std::optional<Exit>* want);
  [[noreturn]] void fail(const std::string& what);
  void arm_timer(u64 ns);
  void count_exit(const std::string& key);

  x86::CpuState& s_;
  mem::PhysMem& pm_;
  x86::Platform& plat_;
  KvmOptions opt_;
  KvmProbe probe_;
  int sys_fd_ = -1, vm_fd_ = -1, vcpu_fd_ = -1;
  kvm_run* run_ = nullptr;
  usize run_size_ = 0;
  std::vector<std::pair<void*, usize>> rom_maps_;  // page-aligned ROM copies (read-only slots)
  struct RamSlot {
    u32 slot;
    u64 pa, len;
  };
  std::vector<RamSlot> ram_slots_;
  bool dirty_log_ = false;  // RAM slots log writes (track_writes)
  // Reads (and clears) every RAM slot's dirty log; calls fn(pa) per dirty
  // page. False if KVM refused.
  template <typename Fn> bool read_dirty_log(Fn fn);
  u64 written_pages_ = 0, code_drops_ = 0, switches_in_ = 0;
  bool msr_filter_ = false;
  bool cpuid_set_ = false;   // KVM took popek's CPUID (KVM_SET_CPUID2)
  int cpuid_error_ = 0;
  bool msr_ioctls_ = false;  // KVM_GET/SET_MSRS work (SYSENTER_*, TSC carried)
  bool tsc_scaled_ = false;
  // The paravirtual interface (docs/paravirt.md, "On the kvm engine").
  bool pv_ = false;          // the board has it on
  bool pv_msrs_ = false;     // the kvm-clock MSRs pass the filter to KVM
  u32 pv_features_ = 0;      // announced in CPUID 0x40000001 (when the CPUID is set)
  bool pv_enforced_ = false; // KVM_CAP_ENFORCE_PV_FEATURE_CPUID on
  bool clock_set_ = false;   // KVM_SET_CLOCK to the VirtualClock done (since switch_in)
  u64 clock_sets_ = 0;
  u64 system_time_seen_ = 0; // MSR_KVM_SYSTEM_TIME_NEW as KVM holds it (msr_ioctls_)
  bool system_time_set_ = false;
  bool pv_uncarried_warned_ = false;
  bool need_complete_ = false;  // the last exit's instruction waits for the next KVM_RUN
  void* timer_ = nullptr;       // a POSIX timer that signals this thread
  int vcpu_tid_ = 0;
  u64 tsc_offset_seen_ = 0;     // CpuState::msr.tsc_offset as last read back
  bool tsc_set_ = false;
  // The state as last read back, in KVM's form (push_state skips loading
  // an unchanged state).
  kvm::KvmState pulled_;
  bool have_pulled_ = false;
  u64 pushes_skipped_ = 0;
  int input_fd_ = -1;
  bool input_armed_ = false, input_async_ = false;
  u64 input_kicks_ = 0;

  // popek's own semantics, for instructions KVM cannot emulate (made when
  // first needed).
  std::unique_ptr<mem::Mmu> mmu_;
  std::unique_ptr<x86::Cpu> cpu_;
  std::unique_ptr<Stepper> step_;

  // Statistics.
  std::map<std::string, u64> exits_;  // by reason and by port / MMIO page
  u64 runs_ = 0, injected_ = 0, windows_ = 0, kicks_ = 0, settles_ = 0, emulated_ = 0;
  u64 guest_ns_ = 0, host_ns_ = 0;
  std::chrono::steady_clock::time_point created_;
};

}  // namespace popek::engine
