#include "memory/phys_mem.h"

#include "base/bits.h"

#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstdio>
#include <cstring>

#include "base/error.h"

namespace popek::mem {

PhysMem::PhysMem(u64 ram_size) : ram_size_(ram_size) {
  if (ram_size < (1u << 20) || ram_size > (u64(3) << 30) || (ram_size & (kPageSize - 1)))
    throw Error("memory size must be a multiple of 4 KiB between 1 MiB and 3 GiB (got " +
                std::to_string(ram_size) + " bytes)");
  // One reservation: RAM on a 2 MiB boundary (with transparent huge pages
  // the guest's first touches cost one host fault per 2 MiB instead of per
  // 4 KiB: a Linux boot touches most of its RAM), then nothing up to
  // kDirectSpan. Reserving costs address space only.
  constexpr u64 kHuge = u64(2) << 20;
  map_size_ = kHuge + kDirectSpan;
  void* p = mmap(nullptr, map_size_, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (p == MAP_FAILED) throw Error("cannot reserve address space for " + std::to_string(ram_size >> 20) + " MiB of guest RAM");
  map_ = static_cast<u8*>(p);
  ram_ = reinterpret_cast<u8*>((reinterpret_cast<uintptr_t>(p) + kHuge - 1) & ~uintptr_t(kHuge - 1));
  // RAM is a memfd so that it can be mapped a second time: the bt engine's
  // user window maps guest pages at their linear addresses (map_user_page).
  fd_ = memfd_create("popek-guest-ram", MFD_CLOEXEC);
  if (fd_ < 0) throw Error(std::string("cannot create guest RAM (memfd_create): ") + std::strerror(errno));
  if (ftruncate(fd_, off_t(ram_size)) != 0 ||
      mmap(ram_, ram_size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_NORESERVE | MAP_FIXED, fd_, 0) == MAP_FAILED) {
    const int err = errno;
    close(fd_);
    munmap(map_, map_size_);
    throw Error("cannot map " + std::to_string(ram_size >> 20) + " MiB of guest RAM: " + std::strerror(err));
  }
  // Shared memory gets no transparent huge pages on most hosts, so each
  // first touch of a 4 KiB page would be a host fault (a Linux boot touches
  // most of its RAM: 0.7 s of faults for 256 MiB here). Populating the
  // mapping in the kernel costs a tenth of that: a thread does it beside the
  // guest, 2 MiB at a time from the bottom (where a boot starts), advice
  // only (hosts before Linux 5.14 fault lazily; a page protected meanwhile
  // just stays for its first touch).
  madvise(ram_, ram_size, MADV_HUGEPAGE);
  populate_ = std::thread([this] {
#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23
#endif
    constexpr u64 kChunk = u64(2) << 20;
    for (u64 at = 0; at < ram_size_ && !stop_populate_.load(std::memory_order_relaxed);) {
      // Not the VGA hole (inaccessible); a ROM's range fails alone.
      u64 end = std::min((at + kChunk) & ~(kChunk - 1), ram_size_);
      if (at < 0xA0000 && end > 0xA0000) end = 0xA0000;
      if (madvise(ram_ + at, end - at, MADV_POPULATE_WRITE) != 0 && errno == EINVAL) break;  // not supported
      at = end == 0xA0000 ? 0xC0000 : end;
    }
  });
  npages_ = ram_size >> kPageShift;
  code_.assign(npages_, 0);
  wp_.assign(npages_, 0);
  // The VGA hole: not RAM, and not to be reached through ram().
  protect_non_ram(0xA0000, 0xC0000);
}

namespace {
// The PhysMems whose code pages are write-protected (for host_write_fault,
// which a signal handler calls: a fixed array of atomics, no locks).
constexpr int kMaxProtecting = 8;
std::atomic<PhysMem*> g_protecting[kMaxProtecting];

bool register_protecting(PhysMem* m) {
  for (auto& slot : g_protecting) {
    PhysMem* none = nullptr;
    if (slot.compare_exchange_strong(none, m)) return true;
  }
  return false;
}

void unregister_protecting(PhysMem* m) {
  for (auto& slot : g_protecting) {
    PhysMem* me = m;
    slot.compare_exchange_strong(me, nullptr);
  }
}
}  // namespace

bool PhysMem::host_write_fault(const void* addr) {
  for (auto& slot : g_protecting) {
    PhysMem* m = slot.load(std::memory_order_acquire);
    if (!m || addr < m->ram_ || static_cast<const u8*>(addr) >= m->ram_ + m->ram_size_) continue;
    const u64 ppn = u64(static_cast<const u8*>(addr) - m->ram_) >> kPageShift;
    if (!m->wp_[ppn]) return false;
    if (mprotect(m->ram_ + (ppn << kPageShift), kPageSize, PROT_READ | PROT_WRITE) != 0) return false;
    m->wp_[ppn] = 0;
    if (m->log_on_) m->dirty_[ppn] = 1;  // a host write the log must not miss
    return true;
  }
  return false;
}

void PhysMem::protect_page(u64 ppn, bool ro) {
  if (mprotect(ram_ + (ppn << kPageShift), kPageSize, ro ? PROT_READ : PROT_READ | PROT_WRITE) != 0) {
    char at[32];
    std::snprintf(at, sizeof at, "%#llx", static_cast<unsigned long long>(ppn << kPageShift));
    throw Error(std::string("cannot ") + (ro ? "write-protect" : "unprotect") + " the guest code page at " + at +
                ": " + std::strerror(errno) + (ro ? " (too many host mappings? --bt-no-fastmem does without)" : ""));
  }
  wp_[ppn] = ro;
  protect_calls_++;
}

void PhysMem::set_code_write_protect(bool on) {
  if (on == wp_on_) return;
  if (on) {
    if (!register_protecting(this)) throw Error("too many machines write-protect their code pages at once");
    wp_on_ = true;
    for (u64 ppn = 0; ppn < npages_; ppn++)
      if ((code_[ppn] || (log_on_ && !dirty_[ppn])) && plain_ram(ppn)) protect_page(ppn, true);
  } else {
    // All RAM writable again, in as few calls as there are ranges.
    for_each_range([&](u64 at, u64 len) {
      if (mprotect(ram_ + at, len, PROT_READ | PROT_WRITE) != 0)
        throw Error(std::string("cannot unprotect guest RAM: ") + std::strerror(errno));
      protect_calls_++;
    });
    std::fill(wp_.begin(), wp_.end(), 0);
    wp_on_ = false;
    unregister_protecting(this);
  }
}

void PhysMem::protect_non_ram(u64 from, u64 to) {
  to = std::min(to, ram_size_);
  if (from < to && mprotect(ram_ + from, to - from, PROT_NONE) != 0)
    throw Error(std::string("cannot protect guest RAM: ") + std::strerror(errno));
}

bool PhysMem::plain_ram(u64 ppn) const {
  const u64 pa = ppn << kPageShift;
  return is_ram(pa) && !rom_at(pa);
}

PhysMem::~PhysMem() {
  stop_populate_ = true;
  if (populate_.joinable()) populate_.join();
  unregister_protecting(this);
  if (map_) munmap(map_, map_size_);
  if (fd_ >= 0) close(fd_);
}

void PhysMem::add_rom(u64 base, const std::vector<u8>& data) {
  POPEK_CHECK((base & (kPageSize - 1)) == 0);
  Rom r{base, data};
  r.data.resize((data.size() + kPageSize - 1) & ~u64(kPageSize - 1), 0xFF);
  const u64 end = base + r.data.size();
  roms_.push_back(std::move(r));
  protect_non_ram(base, end);  // RAM under the ROM is never read or written
}

PhysMem::Page PhysMem::page(u64 pa) const {
  if (const Rom* r = rom_at(pa))
    return {const_cast<u8*>(r->data.data()) + ((pa - r->base) & ~u64(kPageSize - 1)), true};
  if (is_ram(pa)) return {ram_ + (pa & ~u64(kPageSize - 1)), false};
  return {nullptr, false};
}

u64 PhysMem::read(u64 pa, unsigned size) {
  Page pg = page(pa);
  if (pg.host) return load_le_n(pg.host + (pa & (kPageSize - 1)), size);
  if (mmio_) return mmio_->mmio_read(pa, size);
  return size >= 8 ? ~0ull : ((1ull << (8 * size)) - 1);
}

void PhysMem::write(u64 pa, unsigned size, u64 value) {
  Page pg = page(pa);
  if (pg.host) {
    if (pg.rom) return;
    notify_write(pa, size);
    store_le_n(pg.host + (pa & (kPageSize - 1)), size, value);
    return;
  }
  if (mmio_) mmio_->mmio_write(pa, size, value);
}

bool PhysMem::read_bytes(u64 pa, void* dst, u64 len) {
  u8* d = static_cast<u8*>(dst);
  while (len) {
    Page pg = page(pa);
    if (!pg.host) return false;
    u64 off = pa & (kPageSize - 1), n = std::min<u64>(len, kPageSize - off);
    std::memcpy(d, pg.host + off, n);
    d += n;
    pa += n;
    len -= n;
  }
  return true;
}

void PhysMem::copy_contents_to(PhysMem& dst) const {
  if (dst.ram_size_ != ram_size_) throw Error("copy_contents_to: RAM sizes differ");
  for_each_range([&](u64 at, u64 len) { std::memcpy(dst.ram_ + at, ram_ + at, len); });
  dst.roms_.clear();
  for (const Rom& r : roms_) dst.add_rom(r.base, r.data);
}

bool PhysMem::write_bytes(u64 pa, const void* src, u64 len) {
  if (bulk_observer_) bulk_observer_->bulk_written(pa, src, len);
  const u8* s = static_cast<const u8*>(src);
  while (len) {
    Page pg = page(pa);
    if (!pg.host || pg.rom) return false;
    u64 off = pa & (kPageSize - 1), n = std::min<u64>(len, kPageSize - off);
    notify_write(pa, n);
    std::memcpy(pg.host + off, s, n);
    s += n;
    pa += n;
    len -= n;
  }
  return true;
}

void PhysMem::mark_code(u64 ppn) {
  if (ppn >= npages_ || code_[ppn]) return;
  code_[ppn] = 1;
  if (wp_on_ && plain_ram(ppn)) protect_page(ppn, true);
  for (auto* t : shootdowns_) t->drop_writable(ppn);
}

void PhysMem::log_dirty(u64 ppn) {
  dirty_[ppn] = 1;
  if (wp_[ppn] && !code_[ppn]) protect_page(ppn, false);
}

void PhysMem::arm_dirty_log() {
  std::fill(dirty_.begin(), dirty_.end(), 0);
  for (auto* t : shootdowns_) t->drop_all_writable();
  if (wp_on_) {
    // bt's direct stores (paging off): every page read-only in the host
    // mapping, in as few calls as there are ranges.
    for_each_range([&](u64 at, u64 len) {
      if (mprotect(ram_ + at, len, PROT_READ) != 0)
        throw Error(std::string("cannot write-protect guest RAM for the dirty log: ") + std::strerror(errno));
      protect_calls_++;
      std::fill(wp_.begin() + long(at >> kPageShift), wp_.begin() + long((at + len) >> kPageShift), 1);
    });
  }
}

void PhysMem::start_dirty_log() {
  dirty_.assign(npages_, 0);
  log_on_ = true;
  arm_dirty_log();
}

void PhysMem::stop_dirty_log() {
  if (!log_on_) return;
  log_on_ = false;
  // Clean pages that hold no code lose their protection (writes then find
  // their way back into TLBs and the window at their next slow access).
  for (u64 ppn = 0; ppn < npages_; ppn++)
    if (wp_[ppn] && !code_[ppn]) protect_page(ppn, false);
  dirty_.clear();
}

std::vector<u32> PhysMem::sync_dirty_log() {
  std::vector<u32> out;
  if (!log_on_) return out;
  for (u64 ppn = 0; ppn < npages_; ppn++)
    if (dirty_[ppn] && plain_ram(ppn)) out.push_back(u32(ppn));
  arm_dirty_log();
  return out;
}

void PhysMem::code_written(u64 ppn) {
  code_[ppn] = 0;
  if (wp_[ppn]) protect_page(ppn, false);
  code_invalidations_++;
  for (auto* w : watchers_) w->code_page_written(ppn);
}

void PhysMem::remove_watcher(CodeWatcher* w) {
  watchers_.erase(std::remove(watchers_.begin(), watchers_.end(), w), watchers_.end());
}
void PhysMem::remove_shootdown(TlbShootdown* t) {
  shootdowns_.erase(std::remove(shootdowns_.begin(), shootdowns_.end(), t), shootdowns_.end());
}

}  // namespace popek::mem
