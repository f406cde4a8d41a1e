#include "engine/bt/lockstep.h"

#include <algorithm>
#include <cstring>

#include "base/error.h"
#include "x86/disasm.h"

namespace popek::engine::bt {

using namespace popek::x86;

namespace {
constexpr u64 kFullCompareEvery = 1u << 16;  // blocks
}

Lockstep::Lockstep(CpuState& real, mem::PhysMem& pm, Platform& plat)
    : real_(real), pm_(pm), sh_(real), spm_(pm.ram_size()), smmu_(sh_, spm_),
      scpu_(sh_, lmem_, *this), sstep_(sh_, spm_, smmu_, scpu_) {
  lmem_.mmu = &smmu_;
  // The shadow raises every fault through the semantics (no early checks):
  // the comparison then also checks the early checks the translator's
  // callouts make against the faults the handlers raise.
  sstep_.set_early_faults(false);
  rec_.ls = this;
  rec_.plat = &plat;
  rec_.mmio = pm.mmio();
  pm.set_mmio(&rec_);
  pm.copy_contents_to(spm_);
  spm_.set_mmio(this);
  pm.set_bulk_observer(this);
}

Lockstep::~Lockstep() {
  pm_.set_bulk_observer(nullptr);
  pm_.set_mmio(rec_.mmio);
}

// ---- the real side: record ----
u32 Lockstep::Recorder::io_in(u16 port, unsigned size) {
  u32 v = plat->io_in(port, size);
  ls->log_.push_back({Rec::in, ls->real_.icount, port, v, size});
  return v;
}
void Lockstep::Recorder::io_out(u16 port, unsigned size, u32 value) {
  ls->log_.push_back({Rec::out, ls->real_.icount, port, value, size});
  plat->io_out(port, size, value);
}
u64 Lockstep::Recorder::tsc() {
  u64 v = plat->tsc();
  ls->log_.push_back({Rec::tsc, ls->real_.icount, 0, v, 0});
  return v;
}
u8 Lockstep::Recorder::intr_ack() {
  u8 v = plat->intr_ack();
  ls->log_.push_back({Rec::ack, ls->real_.icount, 0, v, 0});
  return v;
}
u64 Lockstep::Recorder::mmio_read(u64 pa, unsigned size) {
  u64 v = mmio ? mmio->mmio_read(pa, size) : ~u64(0);
  ls->log_.push_back({Rec::mmio_r, ls->real_.icount, pa, v, size});
  return v;
}
void Lockstep::Recorder::mmio_write(u64 pa, unsigned size, u64 value) {
  ls->log_.push_back({Rec::mmio_w, ls->real_.icount, pa, value, size});
  if (mmio) mmio->mmio_write(pa, size, value);
}

bool Lockstep::Recorder::write_phys(u64 pa, const void* src, unsigned len) {
  ls->vmm_writing_ = true;
  const bool ok = plat->write_phys(pa, src, len);
  ls->vmm_writing_ = false;
  return ok;
}

void Lockstep::bulk_written(u64 pa, const void* src, u64 len) {
  if (vmm_writing_) return;  // the shadow makes this write itself (write_phys)
  // Devices write between instructions: the shadow has caught up by then.
  spm_.write_bytes(pa, src, len);
}

// ---- the shadow side: replay ----
const Lockstep::Rec& Lockstep::next(Rec::Kind k, u64 addr, unsigned size) {
  static const char* const names[] = {"port read", "port write", "TSC read", "interrupt",
                                      "MMIO read", "MMIO write"};
  if (log_.empty() || log_.front().kind != k || log_.front().addr != addr ||
      log_.front().size != size) {
    char buf[160];
    if (log_.empty())
      std::snprintf(buf, sizeof buf, "interp did a %s (%#llx, size %u) that bt did not",
                    names[k], (unsigned long long)addr, size);
    else
      std::snprintf(buf, sizeof buf, "interp did a %s (%#llx, size %u) where bt did a %s (%#llx, size %u)",
                    names[k], (unsigned long long)addr, size, names[log_.front().kind],
                    (unsigned long long)log_.front().addr, log_.front().size);
    diverged(buf);
  }
  return log_.front();
}

u32 Lockstep::io_in(u16 port, unsigned size) {
  u32 v = u32(next(Rec::in, port, size).value);
  log_.pop_front();
  return v;
}
void Lockstep::io_out(u16 port, unsigned size, u32 value) {
  const Rec& r = next(Rec::out, port, size);
  if (r.value != value) diverged("port write value differs");
  log_.pop_front();
}
u64 Lockstep::tsc() {
  u64 v = next(Rec::tsc, 0, 0).value;
  log_.pop_front();
  return v;
}
u8 Lockstep::intr_ack() {
  u8 v = u8(next(Rec::ack, 0, 0).value);
  log_.pop_front();
  return v;
}
u64 Lockstep::mmio_read(u64 pa, unsigned size) {
  u64 v = next(Rec::mmio_r, pa, size).value;
  log_.pop_front();
  return v;
}
void Lockstep::mmio_write(u64 pa, unsigned size, u64 value) {
  const Rec& r = next(Rec::mmio_w, pa, size);
  if (r.value != value) diverged("MMIO write value differs");
  log_.pop_front();
}

bool Lockstep::read_phys(u64 pa, void* dst, unsigned len) {
  for (u64 p = pa; p < pa + len; p = (p | (mem::kPageSize - 1)) + 1)
    if (!spm_.is_ram(p)) return false;
  return spm_.read_bytes(pa, dst, len);
}
bool Lockstep::write_phys(u64 pa, const void* src, unsigned len) {
  for (u64 p = pa; p < pa + len; p = (p | (mem::kPageSize - 1)) + 1)
    if (!spm_.is_ram(p)) return false;
  return spm_.write_bytes(pa, src, len);
}

void Lockstep::resync() {
  compare_all_memory();  // what the last run left must agree before starting afresh
  sh_ = real_;
  log_.clear();
  exc_base_real_ = real_stats_ ? real_stats_->exceptions : 0;
  exc_base_sh_ = sstep_.stats().exceptions;
  smmu_.flush_tlb(true);
}

void Lockstep::adopt() {
  adoptions_++;
  pm_.for_each_range([&](u64 at, u64 len) {
    for (u64 off = at; off < at + len; off += mem::kPageSize) {
      const u64 n = std::min<u64>(mem::kPageSize, at + len - off);
      if (std::memcmp(pm_.ram() + off, spm_.ram() + off, n) == 0) continue;
      spm_.notify_write(off, n);  // the shadow's decoded code of the page goes
      std::memcpy(spm_.ram() + off, pm_.ram() + off, n);
      adopted_pages_++;
    }
  });
  sh_ = real_;
  log_.clear();
  exc_base_real_ = real_stats_ ? real_stats_->exceptions : 0;
  exc_base_sh_ = sstep_.stats().exceptions;
  smmu_.flush_tlb(true);
}

void Lockstep::after_block() {
  blocks_++;
  sync_and_compare("after the block");
  if (blocks_ % kFullCompareEvery == 0) compare_all_memory();
}

void Lockstep::compare_all_memory() {
  full_compares_++;
  u64 k = ~u64(0);
  pm_.for_each_range([&](u64 at, u64 len) {
    if (k != ~u64(0) || std::memcmp(pm_.ram() + at, spm_.ram() + at, len) == 0) return;
    k = at;
    while (pm_.ram()[k] == spm_.ram()[k]) k++;
  });
  if (k != ~u64(0)) {
    char buf[120];
    std::snprintf(buf, sizeof buf, "guest RAM differs at physical %#llx (full comparison): bt %02x, interp %02x",
                  (unsigned long long)k, pm_.ram()[k], spm_.ram()[k]);
    diverged(buf);
  }
}

void Lockstep::sync_and_compare(const char* where) {
  // Catch up: deliver the interrupts the real CPU took at the instruction
  // count it took them, run instructions until the counts agree.
  lmem_.writes.clear();
  for (;;) {
    if (!log_.empty() && log_.front().kind == Rec::ack && log_.front().icount == sh_.icount) {
      sh_.halted = false;
      try {
        deliver_escalating(scpu_, intr_ack(), EventKind::external, false, 0, sh_.eip);
      } catch (const Fault& f) {
        sstep_.take_fault(f);
      }
      continue;
    }
    const bool behind_faults = sh_exc() < real_exc();
    if (sh_.icount >= real_.icount && !behind_faults) break;
    if (sh_.icount > real_.icount) break;
    if (sh_.halted || sh_.shutdown) break;
    scpu_.stop = StopReason::none;
    try {
      sstep_.run_insns(real_.icount, 1);
    } catch (const Fault& f) {
      sstep_.take_fault(f);
    } catch (const Unimplemented& u) {
      sstep_.take_unimplemented(u);
    }
  }
  compares_++;
  // Registers and everything else architectural.
  std::string diff;
  auto cmp = [&](const char* name, u64 a, u64 b) {
    if (a != b) {
      char buf[96];
      std::snprintf(buf, sizeof buf, "%s: bt %#llx, interp %#llx; ", name, (unsigned long long)a,
                    (unsigned long long)b);
      diff += buf;
    }
  };
  static const char* const gpr[] = {"eax", "ecx", "edx", "ebx", "esp", "ebp", "esi", "edi"};
  for (unsigned k = 0; k < 8; k++) cmp(gpr[k], real_.gpr[k], sh_.gpr[k]);
  cmp("eip", real_.eip, sh_.eip);
  cmp("eflags", real_.eflags, sh_.eflags);
  static const char* const sn[] = {"es", "cs", "ss", "ds", "fs", "gs"};
  for (unsigned k = 0; k < 6; k++) {
    cmp(sn[k], real_.seg[k].sel, sh_.seg[k].sel);
    cmp(sn[k], real_.seg[k].base, sh_.seg[k].base);
    cmp(sn[k], real_.seg[k].limit, sh_.seg[k].limit);
    cmp(sn[k], real_.seg[k].attr, sh_.seg[k].attr);
  }
  cmp("cr0", real_.cr0, sh_.cr0);
  cmp("cr2", real_.cr2, sh_.cr2);
  cmp("cr3", real_.cr3, sh_.cr3);
  cmp("cr4", real_.cr4, sh_.cr4);
  cmp("cpl", real_.cpl, sh_.cpl);
  cmp("icount", real_.icount, sh_.icount);
  cmp("exceptions", real_exc(), sh_exc());
  cmp("halted", real_.halted, sh_.halted);
  cmp("tr", real_.tr.sel, sh_.tr.sel);
  cmp("ldtr", real_.ldtr.sel, sh_.ldtr.sel);
  cmp("gdtr.base", real_.gdtr.base, sh_.gdtr.base);
  cmp("idtr.base", real_.idtr.base, sh_.idtr.base);
  cmp("fpu.cw", real_.fpu.fcw, sh_.fpu.fcw);
  cmp("fpu.sw", real_.fpu.fsw, sh_.fpu.fsw);
  cmp("fpu.tw", real_.fpu.ftw, sh_.fpu.ftw);
  cmp("fpu.fop", real_.fpu.fop, sh_.fpu.fop);
  cmp("fpu.fip", real_.fpu.fip, sh_.fpu.fip);
  cmp("fpu.fcs", real_.fpu.fcs, sh_.fpu.fcs);
  cmp("fpu.fdp", real_.fpu.fdp, sh_.fpu.fdp);
  cmp("fpu.fds", real_.fpu.fds, sh_.fpu.fds);
  cmp("msr.kvm_system_time", real_.msr.kvm_system_time, sh_.msr.kvm_system_time);
  cmp("msr.kvm_wall_clock", real_.msr.kvm_wall_clock, sh_.msr.kvm_wall_clock);
  // The x87 registers by physical index, the MMX registers' home: the 80
  // bits each holds (significand, then sign/exponent).
  static const char* const fr[] = {"fpu.r0", "fpu.r1", "fpu.r2", "fpu.r3",
                                   "fpu.r4", "fpu.r5", "fpu.r6", "fpu.r7"};
  for (unsigned k = 0; k < 8; k++) {
    u64 ma = 0, mb = 0;
    u16 ea = 0, eb = 0;
    std::memcpy(&ma, &real_.fpu.regs[k], 8);
    std::memcpy(&mb, &sh_.fpu.regs[k], 8);
    std::memcpy(&ea, reinterpret_cast<const u8*>(&real_.fpu.regs[k]) + 8, 2);
    std::memcpy(&eb, reinterpret_cast<const u8*>(&sh_.fpu.regs[k]) + 8, 2);
    cmp(fr[k], ma, mb);
    cmp(fr[k], ea, eb);
  }
  if (!diff.empty()) diverged(std::string(where) + ": " + diff);
  // Memory the shadow wrote.
  for (auto [la, size] : lmem_.writes) {
    for (unsigned k = 0; k < size; k++) {
      u64 pa;
      if (!smmu_.probe(la + k, &pa) || !spm_.is_ram(pa)) continue;
      bytes_compared_++;
      if (pm_.ram()[pa] != spm_.ram()[pa]) {
        char buf[160];
        std::snprintf(buf, sizeof buf, "%s: memory at linear %#x (physical %#llx): bt %02x, interp %02x",
                      where, la + k, (unsigned long long)pa, pm_.ram()[pa], spm_.ram()[pa]);
        diverged(buf);
      }
    }
  }
  // Anything the real CPU got from outside that the shadow has not asked for
  // by now (apart from interrupts still to be taken) is a divergence too.
  while (!log_.empty() && log_.front().kind != Rec::ack && log_.front().icount < sh_.icount)
    diverged("bt read or wrote something outside the CPU that interp did not");
}

std::string Lockstep::describe(const CpuState& s) const {
  char buf[400];
  std::snprintf(buf, sizeof buf,
                "  eip=%08x eflags=%08x cpl=%u icount=%llu\n"
                "  eax=%08x ecx=%08x edx=%08x ebx=%08x esp=%08x ebp=%08x esi=%08x edi=%08x\n"
                "  cs=%04x ds=%04x es=%04x ss=%04x fs=%04x gs=%04x cr0=%08x cr2=%08x cr3=%08x\n",
                s.eip, s.eflags, s.cpl, (unsigned long long)s.icount, s.gpr[0], s.gpr[1], s.gpr[2],
                s.gpr[3], s.gpr[4], s.gpr[5], s.gpr[6], s.gpr[7], s.seg[CS].sel, s.seg[DS].sel,
                s.seg[ES].sel, s.seg[SS].sel, s.seg[FS].sel, s.seg[GS].sel, s.cr0, s.cr2, s.cr3);
  return buf;
}

std::string Lockstep::block_disasm() const {
  std::string out;
  u32 eip = block_eip_;
  for (int k = 0; k < 64; k++) {
    u8 bytes[16] = {};
    u64 pa;
    unsigned n = 0;
    for (; n < 15; n++) {
      if (!smmu_.probe(real_.seg[CS].base + eip + n, &pa) || !pm_.read_bytes(pa, &bytes[n], 1)) break;
    }
    if (n == 0) break;
    Insn i;
    if (decode(bytes, n, real_.seg[CS].db(), &i) != DecodeStatus::ok) break;
    out += "  " + disassemble(bytes, i.len, real_.seg[CS].db(), eip) + "\n";
    eip += i.len;
    if (i.info().attrs & (CT | SEN | PRV | IOI)) break;
  }
  return out;
}

void Lockstep::diverged(const std::string& what) {
  throw Error("lockstep: bt and interp diverged " + what + "\nblock at " +
              [&] { char b[16]; std::snprintf(b, sizeof b, "%08x", block_eip_); return std::string(b); }() +
              ":\n" + block_disasm() + "bt:\n" + describe(real_) + "interp:\n" + describe(sh_));
}

void Lockstep::append_stats(std::vector<std::pair<std::string, u64>>& out) const {
  out.emplace_back("lockstep.blocks_compared", compares_);
  out.emplace_back("lockstep.bytes_compared", bytes_compared_);
  out.emplace_back("lockstep.full_memory_compares", full_compares_);
  out.emplace_back("lockstep.instructions", sh_.icount);
  out.emplace_back("lockstep.adoptions", adoptions_);
  out.emplace_back("lockstep.adopted_pages", adopted_pages_);
}

}  // namespace popek::engine::bt
