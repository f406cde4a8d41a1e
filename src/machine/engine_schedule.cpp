#include "machine/engine_schedule.h"

#include <cstdio>
#include <cstring>

#include "base/error.h"

namespace popek::machine {

const char* engine_kind_name(EngineKind k) {
  switch (k) {
    case EngineKind::interp: return "interp";
    case EngineKind::bt: return "bt";
    case EngineKind::kvm: return "kvm";
  }
  return "?";
}

bool parse_engine_kind(const std::string& s, EngineKind* k) {
  for (unsigned i = 0; i < kEngineKinds; i++)
    if (s == engine_kind_name(EngineKind(i))) {
      *k = EngineKind(i);
      return true;
    }
  return false;
}

std::string SliceLen::str() const {
  char b[40];
  if (!time) std::snprintf(b, sizeof b, "%llu insns", (unsigned long long)n);
  else if (n % 1000000 == 0) std::snprintf(b, sizeof b, "%llu ms", (unsigned long long)(n / 1000000));
  else if (n % 1000 == 0) std::snprintf(b, sizeof b, "%llu us", (unsigned long long)(n / 1000));
  else std::snprintf(b, sizeof b, "%llu ns", (unsigned long long)n);
  return b;
}

std::vector<EngineKind> EngineSchedule::uses() const {
  std::vector<EngineKind> out;
  auto add = [&](EngineKind k) {
    for (EngineKind e : out)
      if (e == k) return;
    out.push_back(k);
  };
  for (auto& [k, len] : cycle) add(k);
  for (EngineKind k : engines) add(k);
  return out;
}

const char* engine_schedule_help() {
  return "Switch engines while the guest runs. ENGINE:LEN,ENGINE:LEN,... runs the slices in "
         "order, repeating (e.g. interp:1ms,bt:20ms,kvm:5ms); random:SEED:ENGINE,ENGINE[,...]:MIN-MAX "
         "runs slices of lengths drawn from [MIN, MAX], each on an engine other than the last "
         "(e.g. random:7:interp,bt:20k-200k). LEN is guest instructions (N, Nk, NM) or guest "
         "clock time (Nns, Nus, Nms, Ns: host time, or with --deterministic time derived from "
         "retired instructions, so repeatable); kvm slices must be times (KVM does not count "
         "instructions). Every engine named is made at start and kept; the schedule, not "
         "--engine, chooses the first. --stats counts switches per pair";
}

namespace {

[[noreturn]] void bad(const std::string& spec, const std::string& why) {
  throw Error("--engine-schedule " + spec + ": " + why);
}

EngineKind engine_of(const std::string& spec, const std::string& s) {
  EngineKind k;
  if (!parse_engine_kind(s, &k)) bad(spec, "unknown engine '" + s + "' (interp, bt, kvm)");
  return k;
}

SliceLen len_of(const std::string& spec, const std::string& s) {
  usize i = 0;
  u64 n = 0;
  while (i < s.size() && s[i] >= '0' && s[i] <= '9') {
    if (n > (~u64(0) - 9) / 10) bad(spec, "'" + s + "' is too large");
    n = n * 10 + u64(s[i++] - '0');
  }
  if (i == 0) bad(spec, "bad length '" + s + "' (a count of instructions, e.g. 50k, or a time, e.g. 2ms)");
  const std::string unit = s.substr(i);
  SliceLen l;
  u64 mul = 1;
  if (unit.empty()) mul = 1;
  else if (unit == "k") mul = 1000;
  else if (unit == "M") mul = 1000000;
  else if (unit == "ns") l.time = true;
  else if (unit == "us") l.time = true, mul = 1000;
  else if (unit == "ms") l.time = true, mul = 1000000;
  else if (unit == "s") l.time = true, mul = 1000000000;
  else bad(spec, "bad unit in '" + s + "' (k, M for instructions; ns, us, ms, s for time)");
  if (n == 0) bad(spec, "a slice of length 0 ('" + s + "')");
  if (n > ~u64(0) / mul) bad(spec, "'" + s + "' is too large");
  l.n = n * mul;
  return l;
}

std::vector<std::string> split(const std::string& s, char c) {
  std::vector<std::string> out;
  usize at = 0;
  for (;;) {
    const usize k = s.find(c, at);
    out.push_back(s.substr(at, k == std::string::npos ? std::string::npos : k - at));
    if (k == std::string::npos) return out;
    at = k + 1;
  }
}

}  // namespace

EngineSchedule parse_engine_schedule(const std::string& spec) {
  EngineSchedule s;
  s.spec = spec;
  if (spec.empty()) bad(spec, "empty");
  if (spec.rfind("random:", 0) == 0) {
    const std::vector<std::string> f = split(spec, ':');
    if (f.size() != 4) bad(spec, "expected random:SEED:ENGINE,ENGINE[,...]:MIN-MAX");
    char* end = nullptr;
    s.random = true;
    s.seed = std::strtoull(f[1].c_str(), &end, 0);
    if (f[1].empty() || *end) bad(spec, "bad seed '" + f[1] + "'");
    for (const std::string& e : split(f[2], ',')) {
      const EngineKind k = engine_of(spec, e);
      for (EngineKind x : s.engines)
        if (x == k) bad(spec, "engine '" + e + "' named twice");
      s.engines.push_back(k);
    }
    if (s.engines.size() < 2) bad(spec, "a random schedule needs at least two engines");
    const usize dash = f[3].find('-');
    if (dash == std::string::npos) bad(spec, "expected MIN-MAX lengths, e.g. 20k-200k or 100us-2ms");
    s.min = len_of(spec, f[3].substr(0, dash));
    s.max = len_of(spec, f[3].substr(dash + 1));
    if (s.min.time != s.max.time) bad(spec, "MIN and MAX must both be instructions or both times");
    if (s.min.n > s.max.n) bad(spec, "MIN is more than MAX");
    for (EngineKind k : s.engines)
      if (k == EngineKind::kvm && !s.min.time)
        bad(spec, "kvm does not count instructions: give the lengths as times (e.g. 100us-2ms)");
    return s;
  }
  for (const std::string& item : split(spec, ',')) {
    const usize c = item.find(':');
    if (c == std::string::npos) bad(spec, "expected ENGINE:LEN, got '" + item + "'");
    const EngineKind k = engine_of(spec, item.substr(0, c));
    const SliceLen l = len_of(spec, item.substr(c + 1));
    if (k == EngineKind::kvm && !l.time)
      bad(spec, "kvm does not count instructions: give its slice as a time (e.g. kvm:5ms)");
    s.cycle.emplace_back(k, l);
  }
  return s;
}

u64 SliceSource::rand() {
  u64 z = (rng_ += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

std::pair<EngineKind, SliceLen> SliceSource::next() {
  if (!s_.random) {
    auto r = s_.cycle[at_];
    at_ = (at_ + 1) % s_.cycle.size();
    return r;
  }
  EngineKind k;
  if (!have_last_) {
    k = s_.engines[rand() % s_.engines.size()];
  } else {
    // Uniformly among the others.
    std::vector<EngineKind> others;
    for (EngineKind e : s_.engines)
      if (e != last_) others.push_back(e);
    k = others[rand() % others.size()];
  }
  have_last_ = true;
  last_ = k;
  SliceLen l = s_.min;
  l.n = s_.min.n + rand() % (s_.max.n - s_.min.n + 1);
  return {k, l};
}

std::string compare_states(const x86::CpuState& a, const x86::CpuState& b) {
  char buf[160];
  auto num = [&](const char* what, u64 x, u64 y) -> bool {
    if (x == y) return false;
    std::snprintf(buf, sizeof buf, "%s: %#llx before, %#llx after", what, (unsigned long long)x,
                  (unsigned long long)y);
    return true;
  };
  static const char* gpr[8] = {"eax", "ecx", "edx", "ebx", "esp", "ebp", "esi", "edi"};
  for (int i = 0; i < 8; i++)
    if (num(gpr[i], a.gpr[i], b.gpr[i])) return buf;
  if (num("eip", a.eip, b.eip) || num("eflags", a.eflags, b.eflags)) return buf;
  auto seg = [&](const x86::Segment& x, const x86::Segment& y, const std::string& n) {
    return num((n + ".sel").c_str(), x.sel, y.sel) || num((n + ".base").c_str(), x.base, y.base) ||
           num((n + ".limit").c_str(), x.limit, y.limit) || num((n + ".attr").c_str(), x.attr, y.attr);
  };
  static const char* sn[6] = {"es", "cs", "ss", "ds", "fs", "gs"};
  for (int i = 0; i < 6; i++)
    if (seg(a.seg[i], b.seg[i], sn[i])) return buf;
  if (seg(a.ldtr, b.ldtr, "ldtr") || seg(a.tr, b.tr, "tr")) return buf;
  if (num("gdtr.base", a.gdtr.base, b.gdtr.base) || num("gdtr.limit", a.gdtr.limit, b.gdtr.limit) ||
      num("idtr.base", a.idtr.base, b.idtr.base) || num("idtr.limit", a.idtr.limit, b.idtr.limit) ||
      num("cr0", a.cr0, b.cr0) || num("cr2", a.cr2, b.cr2) || num("cr3", a.cr3, b.cr3) ||
      num("cr4", a.cr4, b.cr4) || num("cpl", a.cpl, b.cpl))
    return buf;
  if (num("fcw", a.fpu.fcw, b.fpu.fcw) || num("fsw", a.fpu.fsw, b.fpu.fsw) || num("ftw", a.fpu.ftw, b.fpu.ftw) ||
      num("fop", a.fpu.fop, b.fpu.fop) || num("fip", a.fpu.fip, b.fpu.fip) || num("fdp", a.fpu.fdp, b.fpu.fdp) ||
      num("fcs", a.fpu.fcs, b.fpu.fcs) || num("fds", a.fpu.fds, b.fpu.fds))
    return buf;
  for (int i = 0; i < 8; i++)
    if (std::memcmp(&a.fpu.regs[i], &b.fpu.regs[i], 10) != 0) {
      std::snprintf(buf, sizeof buf, "x87 physical register %d", i);
      return buf;
    }
  if (num("interrupt shadow", a.intr_shadow, b.intr_shadow) || num("nmi_pending", a.nmi_pending, b.nmi_pending) ||
      num("nmi_blocked", a.nmi_blocked, b.nmi_blocked) ||
      num("sysenter_cs", a.msr.sysenter_cs, b.msr.sysenter_cs) ||
      num("sysenter_esp", a.msr.sysenter_esp, b.msr.sysenter_esp) ||
      num("sysenter_eip", a.msr.sysenter_eip, b.msr.sysenter_eip))
    return buf;
  return {};
}

}  // namespace popek::machine
