#include "engine/kvm/kvm.h"

#include <fcntl.h>
#include <linux/kvm.h>
#include <signal.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <optional>

#include "base/error.h"
#include "engine/kvm/kvm_state.h"
#include "engine/kvm/kvm_sys.h"
#include "x86/cpuid.h"
#include "x86/disasm.h"
#include "x86/paravirt.h"

namespace popek::engine {

using namespace popek::x86;
using namespace popek::engine::kvm;

namespace {

// The signal that kicks a vCPU thread out of KVM_RUN. Its handler sets the
// thread's kvm_run.immediate_exit, so a kick that lands just before KVM_RUN
// is not lost (KVM returns at once with EINTR).
int kick_signal() { return SIGRTMIN + 4; }
thread_local kvm_run* t_run = nullptr;
// Set by the handler when the kick is signal-driven I/O (Kvm::watch_input):
// si_code > 0 (POLL_IN ...) there, SI_TKILL or SI_TIMER for the others.
thread_local volatile sig_atomic_t t_input_ready = 0;

void on_kick(int, siginfo_t* si, void*) {
  if (si && si->si_code > 0) t_input_ready = 1;
  if (kvm_run* r = t_run) r->immediate_exit = 1;
}

void install_kick_handler() {
  static bool done = false;
  if (done) return;
  struct sigaction sa {};
  sa.sa_sigaction = on_kick;
  sigemptyset(&sa.sa_mask);
  sa.sa_flags = SA_SIGINFO;
  if (sigaction(kick_signal(), &sa, nullptr) != 0)
    throw Error(std::string("kvm: sigaction: ") + std::strerror(errno));
  done = true;
}

}  // namespace

// ---------------------------------------------------------------------------

Kvm::Kvm(CpuState& s, mem::PhysMem& pm, Platform& plat, KvmOptions opt)
    : s_(s), pm_(pm), plat_(plat), opt_(std::move(opt)), created_(Clk::now()) {
  probe_ = opt_.calibrate ? kvm_probe() : kvm_available();
  if (!probe_.usable) throw Error("--engine kvm: " + probe_.why);
  install_kick_handler();
  try {
    create_vm();
  } catch (...) {
    release();
    throw;
  }
}

Kvm::~Kvm() { release(); }

void Kvm::watch_input(int fd) {
  input_fd_ = fd;
  input_armed_ = false;
}

void Kvm::arm_input() {
  // Signal-driven I/O: the kernel sends the kick signal to the vCPU thread
  // when input arrives, so KVM_RUN ends then (not at the end of the slice).
  // Fds that cannot (regular files, /dev/null) are polled between slices.
  input_armed_ = true;
  f_owner_ex owner{F_OWNER_TID, vcpu_tid_};
  if (::fcntl(input_fd_, F_SETOWN_EX, &owner) != 0 || ::fcntl(input_fd_, F_SETSIG, kick_signal()) != 0)
    return;
  const int fl = ::fcntl(input_fd_, F_GETFL);
  if (fl < 0 || (fl & O_ASYNC)) return;
  if (::fcntl(input_fd_, F_SETFL, fl | O_ASYNC) == 0) input_async_ = true;
}

void Kvm::release() {
  if (input_async_) {  // stdin is shared with whoever started popek
    const int fl = ::fcntl(input_fd_, F_GETFL);
    if (fl >= 0) ::fcntl(input_fd_, F_SETFL, fl & ~O_ASYNC);
    ::fcntl(input_fd_, F_SETSIG, 0);
    input_async_ = false;
  }
  if (timer_) {
    ::timer_delete(static_cast<timer_t>(timer_));
    timer_ = nullptr;
  }
  if (run_) {
    if (t_run == run_) t_run = nullptr;
    ::munmap(run_, run_size_);
    run_ = nullptr;
  }
  for (auto& [p, n] : rom_maps_) ::munmap(p, n);
  rom_maps_.clear();
  if (vcpu_fd_ >= 0) ::close(vcpu_fd_);
  if (vm_fd_ >= 0) ::close(vm_fd_);
  if (sys_fd_ >= 0) ::close(sys_fd_);
  vcpu_fd_ = vm_fd_ = sys_fd_ = -1;
}

void Kvm::create_vm() {
  std::string why;
  sys_fd_ = open_kvm(&why);
  if (sys_fd_ < 0) throw Error("--engine kvm: " + why);
  vm_fd_ = xioctl(sys_fd_, KVM_CREATE_VM, 0ul);
  if (vm_fd_ < 0) throw Error("--engine kvm: " + errstr("KVM_CREATE_VM"));
  // Intel without unrestricted guest runs real mode as vm86 and needs these
  // three pages; AMD ignores them. Just below the 4 GiB ROM alias, in no
  // memory slot and no device's range.
  u64 ident = 0xFFFBC000;
  if (xioctl(vm_fd_, KVM_SET_IDENTITY_MAP_ADDR, &ident) < 0 && errno != EINVAL)
    throw Error("--engine kvm: " + errstr("KVM_SET_IDENTITY_MAP_ADDR"));
  if (xioctl(vm_fd_, KVM_SET_TSS_ADDR, 0xFFFBD000ul) < 0)
    throw Error("--engine kvm: " + errstr("KVM_SET_TSS_ADDR"));
  pv_ = plat_.paravirt();
  map_memory();
  set_msr_filter();
  vcpu_fd_ = xioctl(vm_fd_, KVM_CREATE_VCPU, 0ul);
  if (vcpu_fd_ < 0) throw Error("--engine kvm: " + errstr("KVM_CREATE_VCPU"));
  const int sz = xioctl(sys_fd_, KVM_GET_VCPU_MMAP_SIZE, 0ul);
  if (sz <= 0) throw Error("--engine kvm: " + errstr("KVM_GET_VCPU_MMAP_SIZE"));
  run_size_ = usize(sz);
  void* p = ::mmap(nullptr, run_size_, PROT_READ | PROT_WRITE, MAP_SHARED, vcpu_fd_, 0);
  if (p == MAP_FAILED) throw Error("--engine kvm: " + errstr("mmap of kvm_run"));
  run_ = static_cast<kvm_run*>(p);
  set_cpuid();
  {
    MsrBuf mb;
    mb.hdr()->nmsrs = 1;
    mb.e()[0].index = kvm::kMsrSysenterCs;
    msr_ioctls_ = xioctl(vcpu_fd_, KVM_GET_MSRS, mb.hdr()) == 1;
  }
  // The guest's TSC runs at the VirtualClock's 1 GHz where KVM can scale it.
  if (probe_.tsc_control && xioctl(vcpu_fd_, KVM_SET_TSC_KHZ, 1000000ul) == 0) tsc_scaled_ = true;
}

void Kvm::map_memory() {
  // Classify every page the guest can address: RAM (PhysMem's mapping), ROM
  // (a read-only copy) or neither (no slot: accesses exit as MMIO).
  const u64 ram_end = std::max<u64>(pm_.ram_size(), 0x100000);
  struct Run { u64 pa, len; u8* host; bool rom; };
  std::vector<Run> runs;
  auto scan = [&](u64 from, u64 to) {
    for (u64 pa = from; pa < to; pa += mem::kPageSize) {
      mem::PhysMem::Page pg = pm_.page(pa);
      if (!pg.host) continue;
      if (!runs.empty()) {
        Run& r = runs.back();
        if (r.pa + r.len == pa && r.rom == pg.rom && r.host + r.len == pg.host) {
          r.len += mem::kPageSize;
          continue;
        }
      }
      runs.push_back({pa, mem::kPageSize, pg.host, pg.rom});
    }
  };
  scan(0, ram_end);
  scan(0x100000000ull - (16u << 20), 0x100000000ull);
  const bool ro_ok = xioctl(sys_fd_, KVM_CHECK_EXTENSION, (unsigned long)KVM_CAP_READONLY_MEM) > 0;
  u32 slot = 0;
  for (const Run& r : runs) {
    kvm_userspace_memory_region m{};
    m.slot = slot++;
    m.guest_phys_addr = r.pa;
    m.memory_size = r.len;
    u8* host = r.host;
    if (r.rom) {
      void* p = ::mmap(nullptr, r.len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
      if (p == MAP_FAILED) throw Error("--engine kvm: " + errstr("mmap of a ROM copy"));
      rom_maps_.push_back({p, r.len});
      // ROM runs are contiguous per ROM but its pages are looked up one by one.
      for (u64 off = 0; off < r.len; off += mem::kPageSize)
        std::memcpy(static_cast<u8*>(p) + off, pm_.page(r.pa + off).host, mem::kPageSize);
      host = static_cast<u8*>(p);
      if (ro_ok) m.flags = KVM_MEM_READONLY;
    }
    m.userspace_addr = reinterpret_cast<u64>(host);
    if (!r.rom && opt_.track_writes) m.flags |= KVM_MEM_LOG_DIRTY_PAGES;
    if (xioctl(vm_fd_, KVM_SET_USER_MEMORY_REGION, &m) < 0) {
      if (!(m.flags & KVM_MEM_LOG_DIRTY_PAGES)) throw Error("--engine kvm: " + errstr("KVM_SET_USER_MEMORY_REGION"));
      // No dirty log here: switch_out() then drops every code page.
      std::fprintf(stderr, "popek: kvm: %s with a dirty log; engine switches drop all decoded and translated code\n",
                   errstr("KVM_SET_USER_MEMORY_REGION").c_str());
      opt_.track_writes = false;
      m.flags &= ~u32(KVM_MEM_LOG_DIRTY_PAGES);
      if (xioctl(vm_fd_, KVM_SET_USER_MEMORY_REGION, &m) < 0)
        throw Error("--engine kvm: " + errstr("KVM_SET_USER_MEMORY_REGION"));
    }
    if (!r.rom) ram_slots_.push_back({m.slot, r.pa, r.len});
  }
  dirty_log_ = opt_.track_writes;
}

template <typename Fn>
bool Kvm::read_dirty_log(Fn fn) {
  for (const RamSlot& rs : ram_slots_) {
    const u64 pages = rs.len >> mem::kPageShift;
    std::vector<u64> bits((pages + 63) / 64, 0);
    kvm_dirty_log d{};
    d.slot = rs.slot;
    d.dirty_bitmap = bits.data();
    if (xioctl(vm_fd_, KVM_GET_DIRTY_LOG, &d) < 0) return false;
    for (u64 w = 0; w < bits.size(); w++)
      for (u64 b = bits[w]; b; b &= b - 1)
        fn(rs.pa + ((w * 64 + u64(__builtin_ctzll(b))) << mem::kPageShift));
  }
  return true;
}

void Kvm::switch_out() {
  // kvm-clock: KVM's structure describes KVM's TSC; interp and bt need
  // popek's (its 1 GHz TSC) in its place.
  if (carry_pv_msrs()) pv::update_clock(s_, plat_);
  else warn_pv_uncarried("leaves kvm");
  // The guest's stores went to RAM through KVM's mapping, which PhysMem
  // does not see: tell it now (code derived from those pages goes; a
  // running dirty log of PhysMem's records them).
  bool ok = dirty_log_ && read_dirty_log([&](u64 pa) {
    written_pages_++;
    pm_.notify_write(pa, mem::kPageSize);
  });
  if (!ok) {
    if (dirty_log_) {
      std::fprintf(stderr, "popek: kvm: %s; engine switches drop all decoded and translated code from now on\n",
                   errstr("KVM_GET_DIRTY_LOG").c_str());
      dirty_log_ = false;
    }
    // Without a log every page holding code counts as written.
    for (u64 pa = 0; pa < pm_.ram_size(); pa += mem::kPageSize)
      if (pm_.is_code(pa >> mem::kPageShift)) {
        code_drops_++;
        pm_.notify_write(pa, mem::kPageSize);
      }
  }
}

void Kvm::switch_in() {
  switches_in_++;
  clock_set_ = false;        // KVM's kvm-clock continues the VirtualClock
  system_time_set_ = false;  // and KVM rewrites the structure (the MSR again)
  have_pulled_ = false;  // the next run() loads everything (and resets KVM's MMU context)
  tsc_set_ = false;      // and the TSC: the VirtualClock went on meanwhile
  // bt's direct stores (paging off) keep code pages read-only in the host
  // mapping, which KVM's mapping of the guest's RAM is.
  pm_.set_code_write_protect(false);
  if (dirty_log_ && !read_dirty_log([](u64) {})) dirty_log_ = false;  // a fresh log
}

void Kvm::warn_pv_uncarried(const char* when) {
  if (!pv_msrs_ || carry_pv_msrs() || pv_uncarried_warned_) return;
  pv_uncarried_warned_ = true;
  std::fprintf(stderr,
               "popek: kvm: the guest %s, but this KVM's kvm-clock MSRs cannot be read or written by popek "
               "(KVM_GET/SET_MSRS refused): a kvm-clock the guest turned on is not carried across (its time "
               "would be wrong); use --no-paravirt to switch engines with such a guest\n",
               when);
}

CpuState Kvm::vcpu_state() {
  push_state();
  CpuState copy = s_;
  kvm::KvmState k;
  k.sysenter_cs = s_.msr.sysenter_cs;
  k.sysenter_esp = s_.msr.sysenter_esp;
  k.sysenter_eip = s_.msr.sysenter_eip;
  if (xioctl(vcpu_fd_, KVM_GET_REGS, &k.regs) < 0) fail(errstr("KVM_GET_REGS"));
  if (xioctl(vcpu_fd_, KVM_GET_SREGS, &k.sregs) < 0) fail(errstr("KVM_GET_SREGS"));
  if (xioctl(vcpu_fd_, KVM_GET_FPU, &k.fpu) < 0) fail(errstr("KVM_GET_FPU"));
  if (xioctl(vcpu_fd_, KVM_GET_VCPU_EVENTS, &k.events) < 0) fail(errstr("KVM_GET_VCPU_EVENTS"));
  kvm::from_kvm(k, copy);
  return copy;
}

void Kvm::set_cpuid() {
  // popek's CPU model, leaf by leaf. KVM answers a leaf it has no entry for
  // with the highest basic leaf (Intel's rule, which popek follows too) —
  // except that popek answers every extended leaf with zeros, so those get
  // explicit zero entries.
  std::vector<kvm_cpuid_entry2> e;
  // The paravirtual leaves announce what popek's model and this KVM both
  // have (KVM implements them here, not popek); none if KVM does not say.
  u32 pv_features = 0;
  const bool pv_unknown = pv_ && !supported_pv_features(&pv_features);
  pv_features &= pv::kFeatures;
  const bool pv_leaves = pv_features != 0;
  const u32 max_basic = cpuid(0, 0).eax;
  for (u32 leaf = 0; leaf <= max_basic; leaf++) {
    CpuidResult r = cpuid(leaf, 0, pv_leaves);
    kvm_cpuid_entry2 k{};
    k.function = leaf;
    k.eax = r.eax; k.ebx = r.ebx; k.ecx = r.ecx; k.edx = r.edx;
    e.push_back(k);
  }
  auto zeros = [&](u32 from, u32 n) {
    for (u32 leaf = from; leaf < from + n; leaf++) {
      CpuidResult r = cpuid(leaf, 0);
      kvm_cpuid_entry2 k{};
      k.function = leaf;
      k.eax = r.eax; k.ebx = r.ebx; k.ecx = r.ecx; k.edx = r.edx;
      e.push_back(k);
    }
  };
  if (pv_leaves) {
    kvm_cpuid_entry2 k{};
    const CpuidResult sig = cpuid(pv::kCpuidSignature, 0, true);
    k.function = pv::kCpuidSignature;
    k.eax = sig.eax; k.ebx = sig.ebx; k.ecx = sig.ecx; k.edx = sig.edx;
    e.push_back(k);
    k = {};
    k.function = pv::kCpuidFeatures;
    k.eax = pv_features;  // no hints (EDX), as on interp/bt
    e.push_back(k);
  }
  zeros(0x80000000u, 0x20);
  zeros(0xC0000000u, 0x8);
  std::vector<u8> buf(sizeof(kvm_cpuid2) + e.size() * sizeof(kvm_cpuid_entry2));
  auto* c = reinterpret_cast<kvm_cpuid2*>(buf.data());
  c->nent = u32(e.size());
  std::memcpy(c->entries, e.data(), e.size() * sizeof(kvm_cpuid_entry2));
  // Some KVMs (the PVM-based one on this project's machines) refuse every
  // CPUID ioctl: the guest then sees that KVM's CPUID, which --stats and a
  // warning say.
  if (xioctl(vcpu_fd_, KVM_SET_CPUID2, c) < 0) {
    cpuid_error_ = errno;
    std::fprintf(stderr, "popek: kvm: KVM_SET_CPUID2 failed (%s): the guest sees this KVM's CPUID, not popek's CPU model\n",
                 std::strerror(errno));
    return;
  }
  cpuid_set_ = true;
  pv_features_ = pv_features;
  if (pv_unknown)
    std::fprintf(stderr, "popek: kvm: this KVM does not say which paravirtual features it supports "
                         "(KVM_GET_SUPPORTED_CPUID): CPUID announces none\n");
  // KVM then refuses the paravirtual MSRs and hypercalls the CPUID does not
  // announce, as interp/bt do (without it KVM serves them all, announced or
  // not).
  if (xioctl(sys_fd_, KVM_CHECK_EXTENSION, (unsigned long)KVM_CAP_ENFORCE_PV_FEATURE_CPUID) > 0) {
    kvm_enable_cap cap{};
    cap.cap = KVM_CAP_ENFORCE_PV_FEATURE_CPUID;
    cap.args[0] = 1;
    pv_enforced_ = xioctl(vcpu_fd_, KVM_ENABLE_CAP, &cap) == 0;
  }
}

bool Kvm::supported_pv_features(u32* eax) {
  for (u32 n = 128; n <= 4096; n *= 2) {
    std::vector<u8> buf(sizeof(kvm_cpuid2) + n * sizeof(kvm_cpuid_entry2));
    auto* c = reinterpret_cast<kvm_cpuid2*>(buf.data());
    c->nent = n;
    if (xioctl(sys_fd_, KVM_GET_SUPPORTED_CPUID, c) < 0) {
      if (errno == E2BIG) continue;
      return false;
    }
    for (u32 i = 0; i < c->nent; i++)
      if (c->entries[i].function == pv::kCpuidFeatures) {
        *eax = c->entries[i].eax;
        return true;
      }
    return false;
  }
  return false;
}

bool Kvm::carry_pv_msrs() const {
  // KVM_GET/SET_MSRS of the kvm-clock MSRs work (with the PV CPUID
  // enforced, only when CLOCKSOURCE2 is announced).
  return pv_msrs_ && msr_ioctls_ && (!pv_enforced_ || (pv_features_ & pv::KVM_FEATURE_CLOCKSOURCE2));
}

void Kvm::set_msr_filter() {
  // MSRs KVM keeps for the guest: the TSC and SYSENTER_*. Every other MSR
  // access exits to popek's model (x86/cpuid.cpp), so RDMSR/WRMSR behave as
  // on the software engines (#GP for MSRs the model lacks).
  if (xioctl(sys_fd_, KVM_CHECK_EXTENSION, (unsigned long)KVM_CAP_X86_USER_SPACE_MSR) <= 0 ||
      xioctl(sys_fd_, KVM_CHECK_EXTENSION, (unsigned long)KVM_CAP_X86_MSR_FILTER) <= 0)
    return;
  kvm_enable_cap cap{};
  cap.cap = KVM_CAP_X86_USER_SPACE_MSR;
  cap.args[0] = KVM_MSR_EXIT_REASON_FILTER | KVM_MSR_EXIT_REASON_UNKNOWN | KVM_MSR_EXIT_REASON_INVAL;
  if (xioctl(vm_fd_, KVM_ENABLE_CAP, &cap) < 0) return;
  static u8 tsc_bits = 1, sysenter_bits = 7, pair_bits = 3;
  kvm_msr_filter f{};
  f.flags = KVM_MSR_FILTER_DEFAULT_DENY;
  f.ranges[0] = {KVM_MSR_FILTER_READ | KVM_MSR_FILTER_WRITE, 1, kvm::kMsrTsc, &tsc_bits};
  f.ranges[1] = {KVM_MSR_FILTER_READ | KVM_MSR_FILTER_WRITE, 3, kvm::kMsrSysenterCs, &sysenter_bits};
  // With the paravirtual interface, kvm-clock is KVM's: its structure must
  // describe the TSC the guest reads here, which is KVM's, not popek's 1 GHz
  // one. Without it the MSRs exit to popek's model and #GP.
  if (pv_) {
    f.ranges[2] = {KVM_MSR_FILTER_READ | KVM_MSR_FILTER_WRITE, 2, pv::MSR_KVM_WALL_CLOCK, &pair_bits};
    f.ranges[3] = {KVM_MSR_FILTER_READ | KVM_MSR_FILTER_WRITE, 2, pv::MSR_KVM_WALL_CLOCK_NEW, &pair_bits};
  }
  if (xioctl(vm_fd_, KVM_X86_SET_MSR_FILTER, &f) < 0)
    throw Error("--engine kvm: " + errstr("KVM_X86_SET_MSR_FILTER"));
  msr_filter_ = true;
  pv_msrs_ = pv_;
}

// ---------------------------------------------------------------------------
// State transfer.


void Kvm::push_state() {
  // CPL is SS.DPL for KVM; popek keeps it apart. Where they differ the state
  // cannot be given to KVM as it is.
  if (s_.pe() && !s_.vm86() && (s_.seg[SS].dpl() != s_.cpl) && s_.seg[SS].usable())
    fail("the CPU state has CPL " + std::to_string(s_.cpl) + " but SS.DPL " +
         std::to_string(s_.seg[SS].dpl()) + ", which KVM cannot represent");
  kvm::KvmState k = kvm::to_kvm(s_);
  if (s_.pe() && !s_.vm86() && !s_.seg[SS].usable()) k.sregs.ss.dpl = s_.cpl;
  // Unchanged since it was read back (the usual case between two slices):
  // the vCPU holds it already. KVM_SET_SREGS would also reset KVM's MMU
  // context for nothing.
  if (have_pulled_ && std::memcmp(&k.regs, &pulled_.regs, sizeof k.regs) == 0 &&
      std::memcmp(&k.sregs, &pulled_.sregs, sizeof k.sregs) == 0 &&
      std::memcmp(&k.fpu, &pulled_.fpu, sizeof k.fpu) == 0 &&
      std::memcmp(&k.events, &pulled_.events, sizeof k.events) == 0 &&
      k.sysenter_cs == pulled_.sysenter_cs && k.sysenter_esp == pulled_.sysenter_esp &&
      k.sysenter_eip == pulled_.sysenter_eip && s_.msr.tsc_offset == tsc_offset_seen_ &&
      (!carry_pv_msrs() || (system_time_set_ && s_.msr.kvm_system_time == system_time_seen_))) {
    pushes_skipped_++;
    return;
  }
  if (xioctl(vcpu_fd_, KVM_SET_SREGS, &k.sregs) < 0) fail(errstr("KVM_SET_SREGS"));
  if (xioctl(vcpu_fd_, KVM_SET_REGS, &k.regs) < 0) fail(errstr("KVM_SET_REGS"));
  if (xioctl(vcpu_fd_, KVM_SET_FPU, &k.fpu) < 0) fail(errstr("KVM_SET_FPU"));
  if (xioctl(vcpu_fd_, KVM_SET_VCPU_EVENTS, &k.events) < 0) fail(errstr("KVM_SET_VCPU_EVENTS"));
  if (pv_msrs_ && !clock_set_) {
    // kvm-clock's system_time is the VirtualClock's ns, as on interp/bt, so
    // the guest's clock goes on across engine switches and restores.
    clock_set_ = true;
    kvm_clock_data cd{};
    cd.clock = plat_.tsc();
    if (xioctl(vm_fd_, KVM_SET_CLOCK, &cd) == 0) clock_sets_++;
  }
  if (!carry_pv_msrs() && (s_.msr.kvm_system_time & 1)) warn_pv_uncarried("comes to kvm with kvm-clock on");
  if (!msr_ioctls_) return;
  MsrBuf mb;
  kvm_msr_entry* e = mb.e();
  u32 n = 0;
  e[n++] = {kvm::kMsrSysenterCs, 0, k.sysenter_cs};
  e[n++] = {kvm::kMsrSysenterEsp, 0, k.sysenter_esp};
  e[n++] = {kvm::kMsrSysenterEip, 0, k.sysenter_eip};
  if (!tsc_set_ || s_.msr.tsc_offset != tsc_offset_seen_) {
    e[n++] = {kvm::kMsrTsc, 0, plat_.tsc() + s_.msr.tsc_offset};
    tsc_set_ = true;
    tsc_offset_seen_ = s_.msr.tsc_offset;
  }
  if (carry_pv_msrs() && (!system_time_set_ || s_.msr.kvm_system_time != system_time_seen_)) {
    // KVM (re)writes the structure for its TSC on this write.
    e[n++] = {pv::MSR_KVM_SYSTEM_TIME_NEW, 0, s_.msr.kvm_system_time};
    system_time_set_ = true;
    system_time_seen_ = s_.msr.kvm_system_time;
  }
  mb.hdr()->nmsrs = n;
  if (xioctl(vcpu_fd_, KVM_SET_MSRS, mb.hdr()) != int(n)) fail(errstr("KVM_SET_MSRS"));
}

void Kvm::pull_state() {
  kvm::KvmState k;
  k.sysenter_cs = s_.msr.sysenter_cs;
  k.sysenter_esp = s_.msr.sysenter_esp;
  k.sysenter_eip = s_.msr.sysenter_eip;
  if (xioctl(vcpu_fd_, KVM_GET_REGS, &k.regs) < 0) fail(errstr("KVM_GET_REGS"));
  if (xioctl(vcpu_fd_, KVM_GET_SREGS, &k.sregs) < 0) fail(errstr("KVM_GET_SREGS"));
  if (xioctl(vcpu_fd_, KVM_GET_FPU, &k.fpu) < 0) fail(errstr("KVM_GET_FPU"));
  if (xioctl(vcpu_fd_, KVM_GET_VCPU_EVENTS, &k.events) < 0) fail(errstr("KVM_GET_VCPU_EVENTS"));
  if (!msr_ioctls_) {
    kvm::from_kvm(k, s_);  // (SYSENTER_* as they were: KVM does not say)
    remember_pulled();
    return;
  }
  MsrBuf mb;
  kvm_msr_entry* e = mb.e();
  const bool pv = carry_pv_msrs();
  const u32 n = pv ? 6 : 4;
  mb.hdr()->nmsrs = n;
  e[0].index = kvm::kMsrSysenterCs;
  e[1].index = kvm::kMsrSysenterEsp;
  e[2].index = kvm::kMsrSysenterEip;
  e[3].index = kvm::kMsrTsc;
  e[4].index = pv::MSR_KVM_SYSTEM_TIME_NEW;  // (KVM keeps one value for the old and new MSR)
  e[5].index = pv::MSR_KVM_WALL_CLOCK_NEW;
  if (xioctl(vcpu_fd_, KVM_GET_MSRS, mb.hdr()) != int(n)) fail(errstr("KVM_GET_MSRS"));
  if (pv) {
    s_.msr.kvm_system_time = e[4].data;
    s_.msr.kvm_wall_clock = e[5].data;
    system_time_seen_ = e[4].data;
  }
  k.sysenter_cs = u32(e[0].data);
  k.sysenter_esp = u32(e[1].data);
  k.sysenter_eip = u32(e[2].data);
  kvm::from_kvm(k, s_);
  s_.msr.tsc_offset = e[3].data - plat_.tsc();
  tsc_offset_seen_ = s_.msr.tsc_offset;
  remember_pulled();
}

void Kvm::remember_pulled() {
  // What push_state would make of the state just read: equal means the vCPU
  // holds it.
  pulled_ = kvm::to_kvm(s_);
  if (s_.pe() && !s_.vm86() && !s_.seg[SS].usable()) pulled_.sregs.ss.dpl = s_.cpl;
  have_pulled_ = true;
}

// ---------------------------------------------------------------------------
// The run loop.

void Kvm::kick() {
  const int tid = __atomic_load_n(&vcpu_tid_, __ATOMIC_RELAXED);
  if (tid) ::syscall(SYS_tgkill, ::getpid(), tid, kick_signal());
}

void Kvm::arm_timer(u64 ns) {
  if (!timer_) return;
  itimerspec its{};
  if (ns) {
    if (ns < 1000) ns = 1000;
    its.it_value.tv_sec = time_t(ns / 1000000000);
    its.it_value.tv_nsec = long(ns % 1000000000);
  }
  ::timer_settime(static_cast<timer_t>(timer_), 0, &its, nullptr);
}

void Kvm::complete_pending() {
  if (!need_complete_) return;
  need_complete_ = false;
  run_->immediate_exit = 1;
  const int r = ::ioctl(vcpu_fd_, KVM_RUN, 0);
  run_->immediate_exit = 0;
  if (r == 0) fail("KVM_RUN with immediate_exit ran the guest");
  if (errno != EINTR) fail(errstr("KVM_RUN (completing an exit)"));
}

bool Kvm::enter() {
  need_complete_ = false;
  const auto t0 = Clk::now();
  const int r = ::ioctl(vcpu_fd_, KVM_RUN, 0);
  guest_ns_ += ns_since(t0);
  runs_++;
  if (r < 0) {
    if (errno == EINTR || errno == EAGAIN) {
      kicks_++;
      return false;
    }
    fail(errstr("KVM_RUN"));
  }
  return true;
}

void Kvm::count_exit(const std::string& key) { exits_[key]++; }

void Kvm::handle_io() {
  auto& io = run_->io;
  u8* data = reinterpret_cast<u8*>(run_) + io.data_offset;
  char key[48];
  std::snprintf(key, sizeof key, "kvm.io.%#06x.%s", io.port, io.direction == KVM_EXIT_IO_OUT ? "out" : "in");
  exits_[key] += io.count;
  for (u32 i = 0; i < io.count; i++, data += io.size) {
    if (io.direction == KVM_EXIT_IO_OUT) {
      u32 v = 0;
      std::memcpy(&v, data, io.size);
      plat_.io_out(io.port, io.size, v);
    } else {
      const u32 v = plat_.io_in(io.port, io.size);
      std::memcpy(data, &v, io.size);
    }
  }
  need_complete_ = true;
}

void Kvm::handle_mmio() {
  auto& m = run_->mmio;
  char key[48];
  std::snprintf(key, sizeof key, "kvm.mmio.%#010llx.%s", (unsigned long long)(m.phys_addr & ~0xFFFull),
                m.is_write ? "write" : "read");
  exits_[key]++;
  // KVM splits accesses that cross pages; each piece is at most 8 bytes.
  if (m.is_write) {
    u64 v = 0;
    std::memcpy(&v, m.data, m.len);
    pm_.write(m.phys_addr, m.len, v);
  } else {
    const u64 v = pm_.read(m.phys_addr, m.len);
    std::memcpy(m.data, &v, m.len);
  }
  need_complete_ = true;
}

void Kvm::handle_msr(bool write) {
  auto& m = run_->msr;
  const u64 tsc = plat_.tsc();
  if (write) {
    exits_["kvm.exits.wrmsr"]++;
    m.error = write_msr(s_, m.index, m.data, tsc) ? 0 : 1;
  } else {
    exits_["kvm.exits.rdmsr"]++;
    u64 v = 0;
    m.error = read_msr(s_, m.index, tsc, &v) ? 0 : 1;
    m.data = v;
  }
  need_complete_ = true;
}

void Kvm::fail(const std::string& what) {
  std::string msg = "kvm: " + what;
  if (run_) {
    kvm_regs r{};
    kvm_sregs sr{};
    if (xioctl(vcpu_fd_, KVM_GET_REGS, &r) == 0 && xioctl(vcpu_fd_, KVM_GET_SREGS, &sr) == 0) {
      char b[256];
      std::snprintf(b, sizeof b, " at %04x:%08llx (linear %08llx), cr0 %08llx, eflags %08llx, esp %08llx",
                    sr.cs.selector, (unsigned long long)r.rip, (unsigned long long)(sr.cs.base + r.rip),
                    (unsigned long long)sr.cr0, (unsigned long long)r.rflags, (unsigned long long)r.rsp);
      msg += b;
      if (!(sr.cr0 & CR0_PG)) {  // the bytes there, with paging off
        u8 bytes[8];
        if (pm_.read_bytes(u32(sr.cs.base + r.rip), bytes, sizeof bytes)) {
          msg += ", bytes";
          for (u8 x : bytes) {
            std::snprintf(b, sizeof b, " %02x", x);
            msg += b;
          }
        }
      }
    }
  }
  throw Error(msg);
}

bool Kvm::emulate_one(std::optional<Exit>* want) {
  kvm_vcpu_events ev{};
  if (xioctl(vcpu_fd_, KVM_GET_VCPU_EVENTS, &ev) < 0 || !kvm::event_in_flight(ev).empty()) return false;
  pull_state();
  if (!step_) {
    mmu_ = std::make_unique<mem::Mmu>(s_, pm_);
    cpu_ = std::make_unique<Cpu>(s_, *mmu_, plat_);
    step_ = std::make_unique<Stepper>(s_, pm_, *mmu_, *cpu_);
    if (trace_) step_->set_trace(trace_);
  }
  // The guest changed memory and page tables behind popek's back: no TLB
  // entry and no decoded instruction of before may be trusted.
  mmu_->flush_tlb(true);
  const u32 la = s_.seg[CS].base + s_.eip;
  const bool code32 = s_.seg[CS].db();
  u8 bytes[16] = {};
  try {
    u64 pa;
    if (mmu_->fetch(la, s_.cpl == 3, &pa)) step_->code_page_written(pa >> mem::kPageShift);
    for (unsigned k = 0; k < 15; k++)
      if (mmu_->probe(la + k, &pa)) pm_.read_bytes(pa, &bytes[k], 1);
    const Stepper::Entry& e = step_->fetch();
    cpu_->stop = StopReason::none;
    step_->execute(e.insn, e.fn, e.early);  // (false: a fault delivered, as below)
  } catch (const Fault& f) {
    step_->take_fault(f);
  } catch (const Unimplemented& u) {
    step_->take_unimplemented(u);
  }
  emulated_++;
  const std::string text = disassemble(bytes, 15, code32, 0);
  exits_["kvm.popek_emulated." + text.substr(0, text.find(' '))]++;
  if (cpu_->stop == StopReason::halt || s_.halted) {
    s_.halted = true;
    if (!*want) *want = Exit::halt;
  }
  if (cpu_->stop == StopReason::shutdown) s_.shutdown = true;
  push_state();
  return true;
}

Exit Kvm::run(u64) {
  __atomic_store_n(&vcpu_tid_, int(::syscall(SYS_gettid)), __ATOMIC_RELAXED);
  t_run = run_;
  if (!timer_) {
    sigevent sev{};
    sev.sigev_notify = SIGEV_THREAD_ID;
    sev.sigev_signo = kick_signal();
    sev._sigev_un._tid = vcpu_tid_;
    timer_t t;
    if (::timer_create(CLOCK_MONOTONIC, &sev, &t) != 0) throw Error("kvm: " + errstr("timer_create"));
    timer_ = t;
  }
  if (input_fd_ >= 0 && !input_armed_) arm_input();
  t_input_ready = 0;  // the board reads the input after every slice
  if (s_.shutdown) return Exit::shutdown;
  if (take_stop()) return Exit::stopped;
  // A halted CPU wakes for an NMI or an interrupt it can take.
  if (s_.halted) {
    if (!(s_.nmi_pending || (s_.intr_line && (s_.eflags & IF)))) return Exit::halt;
    s_.halted = false;
  }
  const auto t_start = Clk::now();
  push_state();
  auto slice_ns = [&] {
    u64 n = opt_.max_slice_ns;
    if (opt_.ns_to_next_event) n = std::min(n, opt_.ns_to_next_event());
    return n;
  };
  u64 end = ns_since(t_start) + slice_ns();
  arm_timer(end - std::min(end, ns_since(t_start)));
  // Interrupts can be taken now: what the state says until the first exit
  // reports it (kvm_run's ready_for_interrupt_injection and if_flag).
  bool can_inject = (s_.eflags & IF) && !s_.intr_shadow;
  std::optional<Exit> want;
  u32 settles_in_run = 0;
  for (;;) {
    run_->immediate_exit = 0;
    if (!want) {
      if (take_stop()) {
        want = Exit::stopped;
      } else if (t_input_ready) {
        input_kicks_++;
        want = Exit::budget;
      } else if (ns_since(t_start) >= end) {
        want = Exit::budget;
      }
    }
    if (want) {
      complete_pending();
      kvm_vcpu_events ev{};
      if (xioctl(vcpu_fd_, KVM_GET_VCPU_EVENTS, &ev) < 0) fail(errstr("KVM_GET_VCPU_EVENTS"));
      if (kvm::event_in_flight(ev).empty()) break;
      // An event is half delivered: let the vCPU deliver it (briefly).
      if (++settles_in_run > 10000) fail("KVM keeps an event half delivered: " + kvm::event_in_flight(ev));
      settles_++;
      arm_timer(20000);
      run_->request_interrupt_window = 0;
    } else if (s_.intr_line) {
      if (can_inject) {
        kvm_interrupt irq{plat_.intr_ack()};
        if (xioctl(vcpu_fd_, KVM_INTERRUPT, &irq) < 0) fail(errstr("KVM_INTERRUPT"));
        injected_++;
        run_->request_interrupt_window = 0;
      } else {
        run_->request_interrupt_window = 1;
      }
    } else {
      run_->request_interrupt_window = 0;
    }
    if (!enter()) {
      // Kicked, perhaps before the guest ran: an interrupt injected just
      // now may still wait in KVM; take no other until an exit says so.
      count_exit("kvm.exits.intr");
      can_inject = false;
      continue;
    }
    can_inject = run_->ready_for_interrupt_injection && run_->if_flag;
    switch (run_->exit_reason) {
      case KVM_EXIT_IO:
        count_exit("kvm.exits.io");
        handle_io();
        break;
      case KVM_EXIT_MMIO:
        count_exit("kvm.exits.mmio");
        handle_mmio();
        break;
      case KVM_EXIT_X86_RDMSR:
        handle_msr(false);
        break;
      case KVM_EXIT_X86_WRMSR:
        handle_msr(true);
        break;
      case KVM_EXIT_IRQ_WINDOW_OPEN:
        count_exit("kvm.exits.irq_window");
        windows_++;
        continue;
      case KVM_EXIT_INTR:
        count_exit("kvm.exits.intr");
        continue;
      case KVM_EXIT_HLT:
        count_exit("kvm.exits.hlt");
        s_.halted = true;
        if (!want) want = Exit::halt;
        continue;
      case KVM_EXIT_SHUTDOWN:
        count_exit("kvm.exits.shutdown");
        s_.shutdown = true;
        arm_timer(0);
        pull_state();
        host_ns_ += ns_since(t_start);
        return Exit::shutdown;
      case KVM_EXIT_FAIL_ENTRY: {
        char b[96];
        std::snprintf(b, sizeof b, "VM entry failed (hardware reason %#llx)",
                      (unsigned long long)run_->fail_entry.hardware_entry_failure_reason);
        fail(b);
      }
      case KVM_EXIT_INTERNAL_ERROR: {
        if (run_->internal.suberror == KVM_INTERNAL_ERROR_EMULATION && emulate_one(&want)) {
          if (s_.shutdown) {
            host_ns_ += ns_since(t_start);
            return Exit::shutdown;
          }
          break;
        }
        std::string w = "KVM internal error, suberror " + std::to_string(run_->internal.suberror);
        if (run_->internal.suberror == KVM_INTERNAL_ERROR_EMULATION) w += " (instruction emulation failed)";
        char b[32];
        for (u32 i = 0; i < run_->internal.ndata && i < 16; i++) {
          std::snprintf(b, sizeof b, "%s%llx", i ? " " : "; data ", (unsigned long long)run_->internal.data[i]);
          w += b;
        }
        fail(w);
      }
      default:
        fail("unexpected exit reason " + std::to_string(run_->exit_reason));
    }
    // After a port or MMIO access a device may have moved its deadline.
    const u64 now = ns_since(t_start);
    const u64 e2 = now + slice_ns();
    if (e2 < end) {
      end = e2;
      arm_timer(end - now);
    }
  }
  arm_timer(0);
  pull_state();
  const u64 total = ns_since(t_start);
  host_ns_ += total;
  return *want;
}

std::vector<std::pair<std::string, u64>> Kvm::stats() const {
  const u64 life = ns_since(created_);
  std::vector<std::pair<std::string, u64>> out = {
      {"kvm.calibrated_kips", u64(probe_.mips * 1000)},
      {"kvm.calibrated_exit_ns", u64(probe_.exit_us * 1000)},
      {"kvm.tsc_scaled", tsc_scaled_},
      {"kvm.msr_filter", msr_filter_},
      {"kvm.cpuid_model_set", cpuid_set_},
      {"kvm.msr_ioctls", msr_ioctls_},
      {"kvm.paravirt_msrs", pv_msrs_},
      {"kvm.paravirt_features", pv_features_},
      {"kvm.paravirt_enforced", pv_enforced_},
      {"kvm.paravirt_msrs_carried", carry_pv_msrs()},
      {"kvm.clock_sets", clock_sets_},
      {"kvm.runs", runs_},
      {"kvm.kicks", kicks_},
      {"kvm.input_kicks", input_kicks_},
      {"kvm.input_signal_driven", input_async_},
      {"kvm.interrupts_injected", injected_},
      {"kvm.interrupt_windows", windows_},
      {"kvm.settles", settles_},
      {"kvm.state_loads_skipped", pushes_skipped_},
      {"kvm.popek_emulated", emulated_},
      {"kvm.switches_in", switches_in_},
      {"kvm.write_log", dirty_log_},
      {"kvm.pages_written_reported", written_pages_},
      {"kvm.code_pages_dropped_unlogged", code_drops_},
      {"kvm.time_in_guest_us", guest_ns_ / 1000},
      {"kvm.time_in_popek_us", (life > guest_ns_ ? life - guest_ns_ : 0) / 1000},
  };
  for (auto& [k, v] : exits_) out.emplace_back(k, v);
  return out;
}

}  // namespace popek::engine
