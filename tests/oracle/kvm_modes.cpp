#include "kvm_modes.h"

#include <fcntl.h>
#include <linux/kvm.h>
#include <sys/ioctl.h>
#include <sys/klog.h>
#include <sys/mman.h>
#include <unistd.h>

#include <chrono>
#include <cstring>

namespace popek::oracle {

namespace {

constexpr u32 kMem = 0x80000;       // RAM (slot 0)
constexpr u32 kMarker = 0x90000;    // no slot: a write exits as MMIO
constexpr u32 kCode = 0x1000, kGdt = 0x5000, kTss = 0x6000, kPt = 0x10000, kStack = 0x70000;

struct Desc {
  u16 sel;
  u8 type, dpl, db, l, g;
  u32 base, limit;  // (the byte limit, as kvm_segment holds it)
};
// The GDT: null, code32/data at DPL 0 and 3, code16 at DPL 0 and 3, code64
// at DPL 0 and 3, a 64-bit busy TSS (two slots).
const Desc kCode32{0x08, 0xB, 0, 1, 0, 1, 0, 0xFFFFFFFF}, kData0{0x10, 0x3, 0, 1, 0, 1, 0, 0xFFFFFFFF},
    kCode32u{0x1B, 0xB, 3, 1, 0, 1, 0, 0xFFFFFFFF}, kData3{0x23, 0x3, 3, 1, 0, 1, 0, 0xFFFFFFFF},
    kCode16{0x28, 0xB, 0, 0, 0, 0, 0, 0xFFFF}, kCode16u{0x33, 0xB, 3, 0, 0, 0, 0, 0xFFFF},
    kCode64{0x38, 0xB, 0, 0, 1, 1, 0, 0xFFFFFFFF}, kCode64u{0x43, 0xB, 3, 0, 1, 1, 0, 0xFFFFFFFF};

u64 encode(const Desc& d) {
  const u32 lim = d.g ? d.limit >> 12 : d.limit;
  u64 v = (lim & 0xFFFF) | (u64(d.base & 0xFFFFFF) << 16) | (u64(0x90 | d.dpl << 5 | d.type) << 40) |
          (u64((lim >> 16) & 0xF) << 48) | (u64(d.l << 1 | d.db << 2 | d.g << 3) << 52) |
          (u64(d.base >> 24) << 56);
  return v;
}

kvm_segment seg(const Desc& d) {
  kvm_segment s{};
  s.base = d.base;
  s.limit = d.limit;
  s.selector = d.sel;
  s.type = d.type;
  s.present = 1;
  s.dpl = d.dpl;
  s.db = d.db;
  s.s = 1;
  s.l = d.l;
  s.g = d.g;
  return s;
}
// A real-mode / virtual-8086 segment: base = selector * 16.
kvm_segment rseg(u16 sel, u8 type, u8 dpl) {
  kvm_segment s{};
  s.base = u32(sel) << 4;
  s.limit = 0xFFFF;
  s.selector = sel;
  s.type = type;
  s.present = 1;
  s.dpl = dpl;
  s.s = 1;
  return s;
}

bool is16(KvmMode m) {
  return m == KvmMode::real16 || m == KvmMode::v8086 || m == KvmMode::pm16_cpl0 || m == KvmMode::pm16_cpl3 ||
         m == KvmMode::compat16_cpl3;
}
bool is64(KvmMode m) { return m == KvmMode::long64_cpl0 || m == KvmMode::long64_cpl3; }
bool is_long(KvmMode m) {
  return is64(m) || m == KvmMode::compat32_cpl3 || m == KvmMode::compat16_cpl3 || m == KvmMode::compat32_cpl0;
}
bool realish(KvmMode m) { return m == KvmMode::real16 || m == KvmMode::v8086; }

// The probe's code; *count_at: where the loop count's imm32 is.
std::vector<u8> probe_code(KvmMode m, u32* count_at) {
  std::vector<u8> c;
  auto store = [&] {  // mov [kMarker], al
    if (realish(m)) c.insert(c.end(), {0xA2, 0x00, 0x00});  // DS base = kMarker
    else if (is64(m)) c.insert(c.end(), {0x88, 0x04, 0x25, 0x00, 0x00, 0x09, 0x00});
    else if (is16(m)) c.insert(c.end(), {0x67, 0xA2, 0x00, 0x00, 0x09, 0x00});
    else c.insert(c.end(), {0xA2, 0x00, 0x00, 0x09, 0x00});
  };
  if (is16(m)) {
    c.insert(c.end(), {0x66, 0xB9});
    *count_at = u32(c.size());
    c.insert(c.end(), {0, 0, 0, 0, 0x66, 0xFF, 0xC9, 0x75, 0xFB});  // dec ecx; jnz
    c.insert(c.end(), {0x66, 0xB8, 0xBE, 0, 0, 0, 0xD4, 0x0A, 0x66, 0x9C, 0x66, 0x5B});  // mov eax; aam; pushfd; pop ebx
  } else {
    c.push_back(0xB9);
    *count_at = u32(c.size());
    c.insert(c.end(), {0, 0, 0, 0, 0xFF, 0xC9, 0x75, 0xFC});
    if (!is64(m)) c.insert(c.end(), {0xB8, 0xBE, 0, 0, 0, 0xD4, 0x0A, 0x9C, 0x5B});
  }
  store();
  if (!is64(m)) {
    c.push_back(0x27);  // daa
    store();
  }
  return c;
}

std::vector<std::string> kernel_log() {
  std::vector<std::string> lines;
  const int n = klogctl(10, nullptr, 0);  // SYSLOG_ACTION_SIZE_BUFFER
  if (n <= 0) return lines;
  std::string buf(usize(n), '\0');
  const int got = klogctl(3, buf.data(), n);  // SYSLOG_ACTION_READ_ALL
  if (got <= 0) return lines;
  buf.resize(usize(got));
  usize p = 0;
  while (p < buf.size()) {
    usize e = buf.find('\n', p);
    if (e == std::string::npos) e = buf.size();
    lines.push_back(buf.substr(p, e - p));
    p = e + 1;
  }
  return lines;
}

struct Vm {
  int sys = -1, vm = -1, vcpu = -1;
  u8* mem = nullptr;
  kvm_run* run = nullptr;
  usize run_size = 0;
  std::string err;
  Vm() {
    sys = ::open("/dev/kvm", O_RDWR | O_CLOEXEC);
    if (sys < 0) { err = std::string("/dev/kvm: ") + std::strerror(errno); return; }
    vm = ::ioctl(sys, KVM_CREATE_VM, 0);
    if (vm < 0) { err = "KVM_CREATE_VM failed"; return; }
    void* p = ::mmap(nullptr, kMem, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) { err = "mmap failed"; return; }
    mem = static_cast<u8*>(p);
    kvm_userspace_memory_region r{0, 0, 0, kMem, reinterpret_cast<u64>(mem)};
    if (::ioctl(vm, KVM_SET_USER_MEMORY_REGION, &r) < 0) { err = "KVM_SET_USER_MEMORY_REGION failed"; return; }
    ::ioctl(vm, KVM_SET_TSS_ADDR, 0xFFFBD000ul);
    vcpu = ::ioctl(vm, KVM_CREATE_VCPU, 0);
    if (vcpu < 0) { err = "KVM_CREATE_VCPU failed"; return; }
    run_size = usize(::ioctl(sys, KVM_GET_VCPU_MMAP_SIZE, 0));
    void* rp = ::mmap(nullptr, run_size, PROT_READ | PROT_WRITE, MAP_SHARED, vcpu, 0);
    if (rp == MAP_FAILED) { err = "mmap kvm_run failed"; return; }
    run = static_cast<kvm_run*>(rp);
  }
  ~Vm() {
    if (run) ::munmap(run, run_size);
    if (vcpu >= 0) ::close(vcpu);
    if (mem) ::munmap(mem, kMem);
    if (vm >= 0) ::close(vm);
    if (sys >= 0) ::close(sys);
  }
};

std::string exit_text(const kvm_run* r) {
  switch (r->exit_reason) {
    case KVM_EXIT_INTERNAL_ERROR:
      return "internal error, suberror " + std::to_string(r->internal.suberror) +
             (r->internal.suberror == KVM_INTERNAL_ERROR_EMULATION ? " (emulation failure)" : "");
    case KVM_EXIT_SHUTDOWN: return "shutdown (triple fault)";
    case KVM_EXIT_FAIL_ENTRY: return "entry failed, reason " + std::to_string(r->fail_entry.hardware_entry_failure_reason);
    case KVM_EXIT_HLT: return "hlt";
    case KVM_EXIT_IO: return "port I/O " + std::to_string(r->io.port);
    case KVM_EXIT_MMIO: return "MMIO at " + std::to_string(r->mmio.phys_addr);
    default: return "exit reason " + std::to_string(r->exit_reason);
  }
}

}  // namespace

const char* mode_name(KvmMode m) {
  switch (m) {
    case KvmMode::real16: return "real mode";
    case KvmMode::v8086: return "virtual-8086";
    case KvmMode::pm16_cpl0: return "16-bit PM, CPL 0";
    case KvmMode::pm16_cpl3: return "16-bit PM, CPL 3";
    case KvmMode::pm32_cpl0: return "32-bit PM, CPL 0";
    case KvmMode::pm32_cpl3: return "32-bit PM, CPL 3";
    case KvmMode::pae32_cpl0: return "32-bit PM + PAE paging, CPL 0";
    case KvmMode::pae32_cpl3: return "32-bit PM + PAE paging, CPL 3";
    case KvmMode::long64_cpl0: return "long mode 64-bit, CPL 0";
    case KvmMode::long64_cpl3: return "long mode 64-bit, CPL 3";
    case KvmMode::compat32_cpl3: return "compatibility mode 32-bit, CPL 3";
    case KvmMode::compat16_cpl3: return "compatibility mode 16-bit, CPL 3";
    case KvmMode::compat32_cpl0: return "compatibility mode 32-bit, CPL 0";
  }
  return "?";
}

std::vector<KvmMode> all_modes() {
  return {KvmMode::real16,      KvmMode::v8086,       KvmMode::pm16_cpl0,     KvmMode::pm16_cpl3,
          KvmMode::pm32_cpl0,   KvmMode::pm32_cpl3,   KvmMode::pae32_cpl0,    KvmMode::pae32_cpl3,
          KvmMode::long64_cpl0, KvmMode::long64_cpl3, KvmMode::compat32_cpl0, KvmMode::compat32_cpl3,
          KvmMode::compat16_cpl3};
}

std::string where_name(KvmModeResult::Where w) {
  switch (w) {
    case KvmModeResult::Where::silicon: return "silicon";
    case KvmModeResult::Where::emulator: return "KVM emulator";
    case KvmModeResult::Where::failed: return "does not run";
  }
  return "?";
}

KvmModeResult probe_mode(KvmMode m, double min_ns) {
  KvmModeResult res;
  res.mode = m;
  res.fingerprint = !is64(m);
  Vm v;
  if (!v.err.empty()) {
    res.exit = v.err;
    return res;
  }
  u32 count_at = 0;
  const std::vector<u8> code = probe_code(m, &count_at);
  std::memcpy(v.mem + kCode, code.data(), code.size());
  // The GDT (the caches below are what the selectors describe) and a TSS.
  const Desc descs[] = {kCode32, kData0, kCode32u, kData3, kCode16, kCode16u, kCode64, kCode64u};
  for (const Desc& d : descs) {
    const u64 e = encode(d);
    std::memcpy(v.mem + kGdt + (d.sel & ~7u), &e, 8);
  }
  const u64 tss_desc = 0x67 | (u64(kTss) << 16) | (u64(0x8B) << 40);
  std::memcpy(v.mem + kGdt + 0x48, &tss_desc, 8);
  const u32 rsp0 = kStack - 0x8000;
  std::memcpy(v.mem + kTss + 4, &rsp0, 4);  // (esp0 in a 32-bit TSS, rsp0's low half in a 64-bit one)
  // Page tables: the first 2 MiB identity-mapped, user, writable (a 2 MiB page).
  auto put64 = [&](u32 at, u64 val) { std::memcpy(v.mem + at, &val, 8); };
  if (is_long(m)) {
    put64(kPt, (kPt + 0x1000) | 7);         // PML4[0]
    put64(kPt + 0x1000, (kPt + 0x2000) | 7);  // PDPT[0]
    put64(kPt + 0x2000, 0x87);              // PD[0]: 2 MiB page
  } else {
    put64(kPt, (kPt + 0x2000) | 1);         // PDPT[0] (PAE: present only)
    put64(kPt + 0x2000, 0x87);
  }

  kvm_sregs sr{};
  if (::ioctl(v.vcpu, KVM_GET_SREGS, &sr) < 0) {
    res.exit = "KVM_GET_SREGS failed";
    return res;
  }
  kvm_regs rg{};
  rg.rflags = 2;
  rg.rsp = kStack;
  sr.gdt.base = kGdt;
  sr.gdt.limit = 0x57;
  sr.idt.base = 0;
  sr.idt.limit = 0;  // any exception: triple fault (shutdown exit)
  kvm_segment tr{};
  tr.base = kTss;
  tr.limit = 0x67;
  tr.selector = 0x48;
  tr.type = 0xB;
  tr.present = 1;
  sr.tr = tr;
  sr.ldt = kvm_segment{};
  sr.ldt.unusable = 1;
  sr.ldt.type = 2;
  sr.efer = 0;
  sr.cr4 = 0;
  sr.cr3 = kPt;
  switch (m) {
    case KvmMode::real16:
    case KvmMode::v8086: {
      const u8 dpl = m == KvmMode::v8086 ? 3 : 0;
      sr.cr0 = m == KvmMode::v8086 ? 0x11 : 0x10;
      sr.cs = rseg(kCode >> 4, m == KvmMode::v8086 ? 3 : 0xB, dpl);
      sr.ds = rseg(kMarker >> 4, 3, dpl);
      sr.es = sr.fs = sr.gs = sr.ss = rseg(0, 3, dpl);
      rg.rip = 0;
      if (m == KvmMode::v8086) rg.rflags |= 0x20000;
      break;
    }
    default: {
      const bool user = m == KvmMode::pm16_cpl3 || m == KvmMode::pm32_cpl3 || m == KvmMode::pae32_cpl3 ||
                        m == KvmMode::long64_cpl3 || m == KvmMode::compat32_cpl3 || m == KvmMode::compat16_cpl3;
      sr.cr0 = 0x11;  // PE, ET
      const bool paging = m == KvmMode::pae32_cpl0 || m == KvmMode::pae32_cpl3 || is_long(m);
      if (paging) {
        sr.cr0 |= 0x80010000;  // PG, WP
        sr.cr4 = 0x20;         // PAE
      }
      if (is_long(m)) sr.efer = 0x500;  // LME, LMA
      Desc cs = user ? kCode32u : kCode32;
      if (is16(m)) cs = user ? kCode16u : kCode16;
      if (is64(m)) cs = user ? kCode64u : kCode64;
      sr.cs = seg(cs);
      sr.ds = sr.es = sr.fs = sr.gs = sr.ss = seg(user ? kData3 : kData0);
      rg.rip = kCode;
      break;
    }
  }
  auto go = [&](u32 n, u64* exits) -> bool {  // to the first marker
    std::memcpy(v.mem + kCode + count_at, &n, 4);
    kvm_sregs s2 = sr;
    kvm_regs r2 = rg;
    if (::ioctl(v.vcpu, KVM_SET_SREGS, &s2) < 0) {
      res.exit = std::string("KVM_SET_SREGS: ") + std::strerror(errno);
      return false;
    }
    if (::ioctl(v.vcpu, KVM_SET_REGS, &r2) < 0) {
      res.exit = std::string("KVM_SET_REGS: ") + std::strerror(errno);
      return false;
    }
    for (;;) {
      if (::ioctl(v.vcpu, KVM_RUN, 0) < 0) {
        if (errno == EINTR) continue;
        res.exit = std::string("KVM_RUN: ") + std::strerror(errno);
        return false;
      }
      ++*exits;
      if (v.run->exit_reason == KVM_EXIT_MMIO && v.run->mmio.phys_addr == kMarker) return true;
      res.exit = exit_text(v.run);
      return false;
    }
  };
  const std::vector<std::string> log0 = kernel_log();
  using Clk = std::chrono::steady_clock;
  u32 n = 20000;
  double ns = 0;
  for (;;) {
    u64 exits = 0;
    const auto t0 = Clk::now();
    if (!go(n, &exits)) break;
    ns = double(std::chrono::duration_cast<std::chrono::nanoseconds>(Clk::now() - t0).count());
    res.user_exits = exits;
    if (ns >= min_ns || n >= (1u << 30)) {
      res.ran = true;
      break;
    }
    n = ns < min_ns / 64 ? n * 16 : n * 2;
  }
  if (res.ran) {
    res.loop_insns = 2ull * n + 1;
    res.mips = double(res.loop_insns) / ns * 1e3;
    if (res.fingerprint) {
      kvm_regs after{};
      ::ioctl(v.vcpu, KVM_GET_REGS, &after);
      res.aam_zf_sdm = (after.rbx & 0x40) != 0;  // AX = 0x1300: AL = 0, ZF = 1
      // On to DAA and the second marker.
      bool ok = false;
      for (;;) {
        if (::ioctl(v.vcpu, KVM_RUN, 0) < 0) {
          if (errno == EINTR) continue;
          break;
        }
        ok = v.run->exit_reason == KVM_EXIT_MMIO && v.run->mmio.phys_addr == kMarker;
        if (!ok) res.exit = "after DAA: " + exit_text(v.run);
        break;
      }
      res.daa_ran = ok;
    }
  }
  const std::vector<std::string> log1 = kernel_log();
  // New lines: those after the last line the first read ended with.
  usize from = 0;
  if (!log0.empty())
    for (usize i = log1.size(); i-- > 0;)
      if (log1[i] == log0.back()) {
        from = i + 1;
        break;
      }
  for (usize i = from; i < log1.size() && res.dmesg.size() < 8; i++) res.dmesg.push_back(log1[i]);
  if (!res.ran) res.where = KvmModeResult::Where::failed;
  else if (res.fingerprint) res.where = res.daa_ran && res.aam_zf_sdm ? KvmModeResult::Where::silicon : KvmModeResult::Where::emulator;
  else res.where = res.mips > 50 ? KvmModeResult::Where::silicon : KvmModeResult::Where::emulator;
  return res;
}

}  // namespace popek::oracle
