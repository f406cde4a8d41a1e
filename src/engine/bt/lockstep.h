// Lockstep: a shadow interpreter that follows the bt engine. The shadow has
// its own CpuState and a copy of guest memory; it replays what the outside
// world gave the real CPU (port reads, TSC, MMIO reads, interrupt vectors at
// the instruction count they were taken, device DMA) and after every block
// catches up to the same instruction count and compares the complete CpuState
// and the memory the shadow wrote. The first divergence stops the VM with both
// states and the disassembly of the block.
#pragma once
#include <deque>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "engine/stepper.h"
#include "memory/mmu.h"
#include "memory/phys_mem.h"
#include "x86/cpu.h"

namespace popek::engine {
class Bt;
}

namespace popek::engine::bt {

class Lockstep final : public x86::Platform, public mem::MmioHandler,
                       public mem::PhysMem::BulkWriteObserver {
 public:
  Lockstep(x86::CpuState& real, mem::PhysMem& pm, x86::Platform& plat);
  ~Lockstep() override;

  // The platform the real CPU must use (records what it returns).
  x86::Platform& recorder() { return rec_; }
  // Called by Bt before it enters a block at (real) `eip`, and after it with
  // the block's start so a divergence can show it.
  void before_block(u32 eip) { block_eip_ = eip; }
  void after_block();
  // Catches the shadow up to the real instruction count and compares.
  void sync_and_compare(const char* where);
  void append_stats(std::vector<std::pair<std::string, u64>>& out) const;
  // Faults do not retire: the shadow also catches up to the real exception count.
  void set_real_stats(const StepStats* st) { real_stats_ = st; }
  // The real CPU's state was changed from outside (a test harness, a
  // debugger): start following it afresh. Guest memory changes made through
  // PhysMem::write_bytes reach the shadow by themselves.
  void resync();
  // Another engine ran the guest (engine switching): the shadow takes the
  // real memory and state as they are (pages that differ are copied), with
  // nothing compared, and follows from there.
  void adopt();
  // Compares all of guest RAM (periodically, and at resync).
  void compare_all_memory();

  // Platform (the shadow's side: replays).
  u32 io_in(u16 port, unsigned size) override;
  void io_out(u16 port, unsigned size, u32 value) override;
  u64 tsc() override;
  u8 intr_ack() override;
  // The paravirtual interface: the shadow's VMM writes (pvclock) go to its
  // own memory when the shadow executes the instruction that asks for them,
  // as the real side's did (which are kept out of bulk_written for that).
  bool paravirt() override { return rec_.plat->paravirt(); }
  bool read_phys(u64 pa, void* dst, unsigned len) override;
  bool write_phys(u64 pa, const void* src, unsigned len) override;
  u64 wall_clock_epoch_ns() override { return rec_.plat->wall_clock_epoch_ns(); }
  // MmioHandler (the shadow's side: replays reads, checks writes).
  u64 mmio_read(u64 pa, unsigned size) override;
  void mmio_write(u64 pa, unsigned size, u64 value) override;
  // BulkWriteObserver: DMA into real memory goes to the shadow too.
  void bulk_written(u64 pa, const void* src, u64 len) override;

 private:
  struct Rec {
    enum Kind : u8 { in, out, tsc, ack, mmio_r, mmio_w } kind;
    u64 icount;
    u64 addr;
    u64 value;
    unsigned size;
  };
  // Wraps the real platform / MMIO handler and logs.
  struct Recorder final : x86::Platform, mem::MmioHandler {
    Lockstep* ls = nullptr;
    x86::Platform* plat = nullptr;
    mem::MmioHandler* mmio = nullptr;
    u32 io_in(u16 port, unsigned size) override;
    void io_out(u16 port, unsigned size, u32 value) override;
    u64 tsc() override;
    u8 intr_ack() override;
    void fpu_error() override { plat->fpu_error(); }
    bool paravirt() override { return plat->paravirt(); }
    bool read_phys(u64 pa, void* dst, unsigned len) override { return plat->read_phys(pa, dst, len); }
    bool write_phys(u64 pa, const void* src, unsigned len) override;
    u64 wall_clock_epoch_ns() override { return plat->wall_clock_epoch_ns(); }
    u64 mmio_read(u64 pa, unsigned size) override;
    void mmio_write(u64 pa, unsigned size, u64 value) override;
  };
  // The shadow's linear memory: the shadow MMU, logging written addresses.
  struct LoggingMem final : x86::LinearMem {
    mem::Mmu* mmu = nullptr;
    std::vector<std::pair<u32, unsigned>> writes;  // (linear, size)
    bool user_ignored = false;
    u32 read(u32 la, unsigned size, bool user) override { return mmu->read(la, size, user); }
    void write(u32 la, unsigned size, u32 v, bool user) override {
      mmu->write(la, size, v, user);
      writes.emplace_back(la, size);
    }
    u64 read64(u32 la, bool user) override { return mmu->read64(la, user); }
    void write64(u32 la, u64 v, bool user) override {
      mmu->write64(la, v, user);
      writes.emplace_back(la, 8);
    }
    void probe_write(u32 la, unsigned size, bool user) override { mmu->probe_write(la, size, user); }
    void flush_tlb(bool global) override { mmu->flush_tlb(global); }
    void invlpg(u32 la) override { mmu->invlpg(la); }
  };

  const Rec& next(Rec::Kind k, u64 addr, unsigned size);
  [[noreturn]] void diverged(const std::string& what);
  std::string describe(const x86::CpuState& s) const;
  std::string block_disasm() const;

  x86::CpuState& real_;
  mem::PhysMem& pm_;
  Recorder rec_;
  std::deque<Rec> log_;
  x86::CpuState sh_;
  mem::PhysMem spm_;
  mem::Mmu smmu_;
  LoggingMem lmem_;
  x86::Cpu scpu_;
  Stepper sstep_;
  const StepStats* real_stats_ = nullptr;
  u64 exc_base_real_ = 0, exc_base_sh_ = 0;
  u64 real_exc() const { return real_stats_ ? real_stats_->exceptions - exc_base_real_ : 0; }
  u64 sh_exc() const { return sstep_.stats().exceptions - exc_base_sh_; }
  u32 block_eip_ = 0;
  bool vmm_writing_ = false;  // the real side's write_phys: not for bulk_written
  u64 blocks_ = 0;
  u64 compares_ = 0;
  u64 bytes_compared_ = 0;
  u64 full_compares_ = 0;
  u64 adoptions_ = 0, adopted_pages_ = 0;
};

}  // namespace popek::engine::bt
