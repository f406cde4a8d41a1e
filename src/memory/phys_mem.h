// Guest-physical memory: one host mapping for RAM, ROM regions, and everything
// else routed to an MMIO handler (the board's bus; unclaimed addresses read as
// all ones). Pages holding decoded or translated code are watched: a write to
// one invalidates the code derived from it (self-modifying code, DMA, module
// loading) — the one write-tracking mechanism DESIGN.md describes.
#pragma once
#include <atomic>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "base/types.h"

namespace popek::mem {

inline constexpr unsigned kPageShift = 12;
inline constexpr u32 kPageSize = 1u << kPageShift;

class MmioHandler {
 public:
  virtual ~MmioHandler() = default;
  virtual u64 mmio_read(u64 pa, unsigned size) = 0;
  virtual void mmio_write(u64 pa, unsigned size, u64 value) = 0;
};

// Told when a watched page is written (engines drop decoded/translated code).
class CodeWatcher {
 public:
  virtual ~CodeWatcher() = default;
  virtual void code_page_written(u64 ppn) = 0;
};

// Told when a page becomes watched, so soft TLBs drop writable entries for it.
class TlbShootdown {
 public:
  virtual ~TlbShootdown() = default;
  virtual void drop_writable(u64 ppn) = 0;
  // Every page became watched (a dirty-log pass starts): no write entry
  // and no writable user-window page may remain.
  virtual void drop_all_writable() = 0;
};

class PhysMem {
 public:
  // RAM at [0, ram_size) except the legacy VGA hole [0xA0000, 0xC0000).
  explicit PhysMem(u64 ram_size);
  ~PhysMem();
  PhysMem(const PhysMem&) = delete;
  PhysMem& operator=(const PhysMem&) = delete;

  u8* ram() { return ram_; }
  // RAM's memfd: page ppn of RAM is at offset ppn << kPageShift (a second
  // mapping of a page shares its contents with ram()).
  int ram_fd() const { return fd_; }
  u64 ram_size() const { return ram_size_; }

  // ---- direct access with paging off (the bt engine's fast path) ----
  // RAM sits at the start of a reservation of kDirectSpan bytes; all of it
  // past RAM is inaccessible, and so are the pages of RAM no access may
  // reach through ram() (the VGA hole, RAM under a ROM): generated code reads
  // and writes ram() + address, and an access there faults (the engine turns
  // the fault into its slow path). Writes must also not reach pages holding
  // code: while code write protection is on, those pages are read-only in
  // the host mapping, so a generated store to one faults too. Other writers
  // (the semantics, loaders) tell notify_write first, which drops the code
  // and lifts the protection; a host write that did not (a device's DMA
  // through its own pointer, told afterwards) faults once and
  // host_write_fault lifts the protection for it.
  // Code that touches ram() wholesale uses for_each_range.
  static constexpr u64 kDirectSpan = u64(8) << 30;
  bool in_direct_span(const void* p) const {
    return p >= ram_ && static_cast<const u8*>(p) < ram_ + kDirectSpan;
  }
  // Page ppn is RAM reached through ram() (not the VGA hole, not under a ROM).
  bool plain_ram(u64 ppn) const;
  // Calls fn(offset, length) for the ranges of ram() that hold RAM (not the
  // VGA hole, not RAM under a ROM), in order.
  template <typename Fn>
  void for_each_range(Fn fn) const {
    u64 at = 0;
    for (u64 p = 0; p <= npages_; p++) {
      if (p < npages_ && plain_ram(p)) continue;
      if ((p << kPageShift) > at) fn(at, (p << kPageShift) - at);
      at = (p + 1) << kPageShift;
    }
  }
  // Whether a direct access at physical `pa` faults (for a write: while
  // protection is on, or will be when it is next turned on).
  bool direct_poisoned(u64 pa, bool write) const {
    const u64 p = pa >> kPageShift;
    return p >= npages_ || !plain_ram(p) || (write && (code_[p] || (p + 1 < npages_ && code_[p + 1])));
  }
  // Turns code write protection on (every code page read-only in the host
  // mapping, and each page made code from now on) or off (all RAM writable).
  // The bt engine keeps it on while code that writes RAM directly may run.
  void set_code_write_protect(bool on);
  bool code_write_protect() const { return wp_on_; }
  u64 protect_calls() const { return protect_calls_; }
  // From a SIGSEGV handler: a host write faulted at `addr`. If that is a
  // protected code page of a PhysMem, lifts the protection (the writer tells
  // notify_write about the write, which drops the code) and returns true.
  static bool host_write_fault(const void* addr);
  // Maps a read-only region (firmware). Copies the data; writes are ignored.
  void add_rom(u64 base, const std::vector<u8>& data);
  void set_mmio(MmioHandler* h) { mmio_ = h; }
  MmioHandler* mmio() const { return mmio_; }
  // Copies RAM and ROM contents into `dst` (same RAM size): a shadow machine
  // for lockstep comparison.
  void copy_contents_to(PhysMem& dst) const;
  // Told about every bulk write (device DMA, loaders) with its data.
  class BulkWriteObserver {
   public:
    virtual ~BulkWriteObserver() = default;
    virtual void bulk_written(u64 pa, const void* src, u64 len) = 0;
  };
  void set_bulk_observer(BulkWriteObserver* o) { bulk_observer_ = o; }
  // A device wrote [pa, pa+len) of RAM in place (DMA through its own
  // pointer): drop translated code there and tell the bulk observer.
  void device_wrote(u64 pa, u64 len) {
    if (!len) return;
    notify_write(pa, len);
    if (bulk_observer_ && pa < ram_size_ && len <= ram_size_ - pa)
      bulk_observer_->bulk_written(pa, ram_ + pa, len);
  }

  // Where a physical page lives. host is the page's host address (RAM or ROM),
  // or null for MMIO/unassigned space.
  struct Page {
    u8* host;
    bool rom;
  };
  Page page(u64 pa) const;
  bool is_ram(u64 pa) const {
    return pa < ram_size_ && !(pa >= 0xA0000 && pa < 0xC0000);
  }

  // Physical accesses of 1, 2, 4 or 8 bytes that do not cross a page.
  u64 read(u64 pa, unsigned size);
  void write(u64 pa, unsigned size, u64 value);
  // Bulk copies (loaders, devices' DMA); cross pages freely, RAM/ROM only
  // (writes to ROM are refused). Returns false if any byte is outside RAM.
  bool read_bytes(u64 pa, void* dst, u64 len);
  bool write_bytes(u64 pa, const void* src, u64 len);

  // ---- dirty logging (live migration) ----
  // While the log is on, every RAM page not yet written since the last
  // sync is watched like a code page: soft TLBs install no write entry for
  // it (write_watched), the user window maps it read-only (shootdowns'
  // drop_all_writable), and while code write protection is on (bt's direct
  // stores with paging off) it is read-only in the host mapping. The first
  // write by any path reaches notify_write (or host_write_fault), which
  // marks the page dirty and lifts the watch for the rest of the pass.
  // vCPU thread only (host_write_fault excepted).
  void start_dirty_log();   // every page clean and watched; the log on
  void stop_dirty_log();    // the log off, nothing watched for it
  bool dirty_logging() const { return log_on_; }
  // The pages written since the last sync (or start), as page numbers; all
  // pages clean and watched again.
  std::vector<u32> sync_dirty_log();
  // A device is about to access [pa, pa+len) through its own pointer (it may
  // write there from another thread, where a protected page would make the
  // host call fail): the pages count as dirty and lose their protection.
  void device_access(u64 pa, u64 len) {
    if (!log_on_ || !len) return;
    for (u64 p = pa >> kPageShift; p <= (pa + len - 1) >> kPageShift && p < npages_; p++)
      if (!dirty_[p]) log_dirty(p);
  }
  // Whether a soft TLB or the user window may let writes to ppn through
  // without the slow path: not while it holds code or waits for its first
  // write of a dirty-log pass.
  bool write_watched(u64 ppn) const {
    return ppn < npages_ && (code_[ppn] || (log_on_ && !dirty_[ppn]));
  }

  // ---- code watching ----
  bool is_code(u64 ppn) const { return ppn < npages_ && code_[ppn]; }
  void mark_code(u64 ppn);
  // Call before/after writing RAM bytes by any path other than a soft-TLB hit.
  void notify_write(u64 pa, u64 len) {
    for (u64 p = pa >> kPageShift; p <= (pa + len - 1) >> kPageShift; p++) {
      if (p >= npages_) break;
      if (code_[p]) code_written(p);
      if (log_on_ && !dirty_[p]) log_dirty(p);
    }
  }
  void add_watcher(CodeWatcher* w) { watchers_.push_back(w); }
  void remove_watcher(CodeWatcher* w);
  void add_shootdown(TlbShootdown* t) { shootdowns_.push_back(t); }
  void remove_shootdown(TlbShootdown* t);

  u64 code_invalidations() const { return code_invalidations_; }

 private:
  void code_written(u64 ppn);
  void log_dirty(u64 ppn);
  // Arms the watch of every page for a new pass.
  void arm_dirty_log();
  // Makes page ppn read-only (`ro`) or writable again in the host mapping.
  void protect_page(u64 ppn, bool ro);
  // Makes ram() in [from, to) inaccessible (not RAM: direct reads fault).
  void protect_non_ram(u64 from, u64 to);
  struct Rom {
    u64 base;
    std::vector<u8> data;
  };
  // The ROM that covers `pa`, if any.
  const Rom* rom_at(u64 pa) const {
    for (const Rom& r : roms_)
      if (pa >= r.base && pa - r.base < r.data.size()) return &r;
    return nullptr;
  }
  u8* map_ = nullptr;  // the reservation; ram_ is a 2 MiB boundary in it
  u8* ram_ = nullptr;
  u64 ram_size_ = 0;
  u64 map_size_ = 0;
  int fd_ = -1;  // RAM's memfd
  std::thread populate_;  // fills RAM's page tables in the background (see the constructor)
  std::atomic<bool> stop_populate_{false};
  u64 npages_ = 0;
  std::vector<u8> code_;
  bool log_on_ = false;
  std::vector<u8> dirty_;  // dirty log: page written since the last sync
  std::vector<u8> wp_;  // page ppn is read-only in the host mapping (a code page)
  bool wp_on_ = false;
  u64 protect_calls_ = 0;
  std::vector<Rom> roms_;
  MmioHandler* mmio_ = nullptr;
  BulkWriteObserver* bulk_observer_ = nullptr;
  std::vector<CodeWatcher*> watchers_;
  std::vector<TlbShootdown*> shootdowns_;
  u64 code_invalidations_ = 0;
};

}  // namespace popek::mem
