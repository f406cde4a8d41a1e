// /dev/kvm: whether it can be used, which module serves it, and how fast it
// runs (a scratch VM, apart from any guest).
#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cstdlib>

#include "engine/kvm/kvm.h"
#include "engine/kvm/kvm_sys.h"
#include "x86/cpu_state.h"

namespace popek::engine {

using namespace popek::x86;
using namespace popek::engine::kvm;

int kvm::open_kvm(std::string* why) {
  const char* env = std::getenv("POPEK_KVM_DEVICE");
  const std::string dev = env && *env ? env : "/dev/kvm";
  int fd = ::open(dev.c_str(), O_RDWR | O_CLOEXEC);
  if (fd < 0) {
    *why = errno == ENOENT ? dev + " does not exist (no KVM on this host)" : errstr(("cannot open " + dev).c_str());
    return -1;
  }
  const int api = xioctl(fd, KVM_GET_API_VERSION, 0ul);
  if (api != KVM_API_VERSION) {
    *why = "/dev/kvm speaks API version " + std::to_string(api) + ", not " + std::to_string(KVM_API_VERSION);
    ::close(fd);
    return -1;
  }
  for (auto [cap, name] : {std::pair{KVM_CAP_USER_MEMORY, "KVM_CAP_USER_MEMORY"},
                           std::pair{KVM_CAP_IMMEDIATE_EXIT, "KVM_CAP_IMMEDIATE_EXIT"},
                           std::pair{KVM_CAP_VCPU_EVENTS, "KVM_CAP_VCPU_EVENTS"},
                           std::pair{KVM_CAP_EXT_CPUID, "KVM_CAP_EXT_CPUID"}}) {
    if (xioctl(fd, KVM_CHECK_EXTENSION, (unsigned long)cap) <= 0) {
      *why = std::string("/dev/kvm lacks ") + name;
      ::close(fd);
      return -1;
    }
  }
  return fd;
}


// ---------------------------------------------------------------------------
// Probe and calibration: a scratch VM with one page of protected-mode code.

std::string kvm_flavour() {
  // The module that implements /dev/kvm's vCPUs.
  for (const char* m : {"kvm_intel", "kvm_amd", "kvm_pvm"}) {
    const std::string path = std::string("/sys/module/") + m;
    if (::access(path.c_str(), F_OK) == 0) return m;
  }
  return "unknown";
}

KvmProbe kvm_available() {
  KvmProbe p;
  p.flavour = kvm_flavour();
  int fd = open_kvm(&p.why);
  if (fd < 0) return p;
  p.tsc_control = xioctl(fd, KVM_CHECK_EXTENSION, (unsigned long)KVM_CAP_TSC_CONTROL) > 0;
  ::close(fd);
  p.usable = true;
  return p;
}

KvmProbe kvm_probe() {
  KvmProbe p = kvm_available();
  if (!p.usable) return p;
  std::string why;
  int sys = open_kvm(&why);
  int vm = -1, vcpu = -1;
  void* mem = MAP_FAILED;
  kvm_run* run = nullptr;
  usize run_size = 0;
  auto fail = [&](const std::string& w) {
    p.usable = false;
    p.why = w;
  };
  do {
    vm = xioctl(sys, KVM_CREATE_VM, 0ul);
    if (vm < 0) { fail(errstr("KVM_CREATE_VM")); break; }
    mem = ::mmap(nullptr, 0x10000, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (mem == MAP_FAILED) { fail(errstr("mmap")); break; }
    // 32-bit flat protected-mode code at 0x1000 (what a Linux guest runs):
    //   mov ecx, N; l1: dec ecx; jnz l1; hlt      (2 N instructions)
    //   mov ecx, M; l2: out 0x80, al; dec ecx; jnz l2; hlt   (M port exits)
    u8* c = static_cast<u8*>(mem) + 0x1000;
    const u8 code[] = {0xB9, 0, 0, 0, 0, 0x49, 0x75, 0xFD, 0xF4,
                       0xB9, 0, 0, 0, 0, 0xE6, 0x80, 0x49, 0x75, 0xFB, 0xF4};
    std::memcpy(c, code, sizeof code);
    kvm_userspace_memory_region r{};
    r.slot = 0;
    r.guest_phys_addr = 0;
    r.memory_size = 0x10000;
    r.userspace_addr = reinterpret_cast<u64>(mem);
    if (xioctl(vm, KVM_SET_USER_MEMORY_REGION, &r) < 0) { fail(errstr("KVM_SET_USER_MEMORY_REGION")); break; }
    xioctl(vm, KVM_SET_TSS_ADDR, 0xFFFBD000ul);
    vcpu = xioctl(vm, KVM_CREATE_VCPU, 0ul);
    if (vcpu < 0) { fail(errstr("KVM_CREATE_VCPU")); break; }
    run_size = usize(xioctl(sys, KVM_GET_VCPU_MMAP_SIZE, 0ul));
    void* rm = ::mmap(nullptr, run_size, PROT_READ | PROT_WRITE, MAP_SHARED, vcpu, 0);
    if (rm == MAP_FAILED) { fail(errstr("mmap kvm_run")); break; }
    run = static_cast<kvm_run*>(rm);
    kvm_sregs sr{};
    if (xioctl(vcpu, KVM_GET_SREGS, &sr) < 0) { fail(errstr("KVM_GET_SREGS")); break; }
    kvm_segment code_seg{};
    code_seg.limit = 0xFFFFFFFF;
    code_seg.selector = 0x08;
    code_seg.type = 0xB;
    code_seg.present = 1;
    code_seg.s = 1;
    code_seg.db = 1;
    code_seg.g = 1;
    kvm_segment data_seg = code_seg;
    data_seg.selector = 0x10;
    data_seg.type = 0x3;
    sr.cs = code_seg;
    sr.ds = sr.es = sr.fs = sr.gs = sr.ss = data_seg;
    sr.cr0 = CR0_PE | CR0_ET;
    // Runs the code from `at` with ECX loaded into its first instruction;
    // returns the host time until HLT, or -1.
    auto time_run = [&](u32 at, u32 count) -> double {
      std::memcpy(c + (at - 0x1000) + 1, &count, 4);
      if (xioctl(vcpu, KVM_SET_SREGS, &sr) < 0) return -1;
      kvm_regs rg{};
      rg.rip = at;
      rg.rflags = 2;
      if (xioctl(vcpu, KVM_SET_REGS, &rg) < 0) return -1;
      auto t0 = Clk::now();
      for (;;) {
        if (xioctl(vcpu, KVM_RUN, 0ul) < 0) {
          if (errno == EINTR) continue;
          return -1;
        }
        if (run->exit_reason == KVM_EXIT_HLT) break;
        if (run->exit_reason != KVM_EXIT_IO) return -1;
      }
      return double(ns_since(t0));
    };
    double ns = 0;
    u32 n = 50000;
    // Long enough to measure (20 ms), at most 4 G instructions.
    for (;;) {
      ns = time_run(0x1000, n);
      if (ns < 0) break;
      if (ns >= 20e6 || n >= (1u << 30)) break;
      n *= ns < 1e6 ? 16 : 4;
    }
    if (ns <= 0) { fail("the calibration guest did not run (exit " + std::to_string(run->exit_reason) + ")"); break; }
    p.mips = 2.0 * n / ns * 1e3;
    const u32 m = 200;
    double ens = time_run(0x1000 + 9, m);
    if (ens <= 0) { fail("the calibration guest's port exits failed"); break; }
    p.exit_us = ens / m / 1e3;
  } while (false);
  if (run) ::munmap(run, run_size);
  if (vcpu >= 0) ::close(vcpu);
  if (mem != MAP_FAILED) ::munmap(mem, 0x10000);
  if (vm >= 0) ::close(vm);
  if (sys >= 0) ::close(sys);
  return p;
}

}  // namespace popek::engine
