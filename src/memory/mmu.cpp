#include "memory/mmu.h"

#include <sys/mman.h>

#include <cerrno>
#include <cstring>
#include <string>

#include "base/error.h"

namespace popek::mem {

using namespace popek::x86;

namespace {
enum : u32 { PTE_P = 1, PTE_W = 2, PTE_U = 4, PTE_A = 0x20, PTE_D = 0x40, PTE_PS = 0x80, PTE_G = 0x100 };
}

// The two levels of a walk of la as they are in memory (nothing set).
struct Mmu::Walk {
  u64 pde_pa = 0, pte_pa = 0;  // pte_pa, pte: 0 for a 4 MiB page
  u32 pde = 0, pte = 0;
  bool big = false;
  u32 eff() const { return big ? pde : pde & pte; }  // U/W of both levels
  u32 last() const { return big ? pde : pte; }       // the level with the frame, D and G
  u64 frame(u32 la) const { return big ? (pde & 0xFFC00000u) | (la & 0x3FF000u) : pte & ~0xFFFu; }
};

Mmu::Mmu(CpuState& s, PhysMem& pm)
    : s_(s), pm_(pm),
      // The engine area, the entries, the arrays mirroring them, the memos.
      tlb_store_((kEngineArea + kMemoMissOff + kMemos * 4 + sizeof(TlbEntry) - 1) / sizeof(TlbEntry)) {
  static_assert(kEngineArea % sizeof(TlbEntry) == 0 && sizeof(uintptr_t) == 8);
  tlb_[0] = tlb_store_.data() + kEngineArea / sizeof(TlbEntry);
  tlb_[1] = tlb_[0] + kTlbSize;
  for (auto* set : tlb_)
    for (unsigned k = 0; k < kTlbSize; k++) {
      TlbEntry& e = set[k];
      e.tag_read = e.tag_write = e.tag_exec = invalid_tag(k);
      e.ppn = 0;
      e.addend = 0;
      e.flags = 0;
      e.pad = 0;
    }
  for (unsigned m = 0; m < kMemos; m++) memos()[m] = {kMemoEmpty, 0};
  for (bool user : {false, true})
    for (unsigned k = 0; k < kTlbSize; k++) mirror(user, k);
  flush_tlb(true);
  pm_.add_shootdown(this);
}
Mmu::~Mmu() {
  pm_.remove_shootdown(this);
  if (uw_map_) munmap(uw_map_, uw_map_len_);
}

void Mmu::enable_user_window() {
  if (uw_on_) return;
  if (pm_.ram_fd() < 0) throw Error("the user window needs guest RAM in a memfd");
  constexpr int kReserve = MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE;
  void* want = reinterpret_cast<void*>(kWindowLow);
  void* p = mmap(want, kWindowSpan - kWindowLow, PROT_NONE, kReserve | MAP_FIXED_NOREPLACE, -1, 0);
  if (p == want) {
    uw_map_ = static_cast<u8*>(p);
    uw_map_len_ = kWindowSpan - kWindowLow;
    uw_base_ = 0;
    uw_lo_ = kWindowLow;
  } else {
    if (p != MAP_FAILED) munmap(p, kWindowSpan - kWindowLow);  // (a kernel without MAP_FIXED_NOREPLACE)
    p = mmap(nullptr, kWindowSpan + kWindowAlign, PROT_NONE, kReserve, -1, 0);
    if (p == MAP_FAILED)
      throw Error(std::string("cannot reserve the user window (8 GiB of address space): ") + std::strerror(errno));
    uw_map_ = static_cast<u8*>(p);
    uw_map_len_ = kWindowSpan + kWindowAlign;
    uw_base_ = (reinterpret_cast<uintptr_t>(p) + kWindowAlign - 1) & ~uintptr_t(kWindowAlign - 1);
    uw_lo_ = uw_base_;
  }
  uw_on_ = true;
}

void Mmu::claim_window() {
  if (!uw_on_ || !s_.pg()) return;
  if (!uw_pages_.empty()) window_clear();
  uw_owner_ = s_.cr3 & ~0xFFFu;
  uw_active_ = true;
  stats_.window_claims++;
  // (No more than the window holds: the rest come back at their first access.)
  for (u32 k : used_[1])
    if (!(tlb_[1][k].tag_read & 0xFFF) && uw_pages_.size() < uw_cap_) window_fill(k);
}

void Mmu::release_window() {
  if (!uw_on_) return;
  if (!uw_pages_.empty()) window_clear();
  uw_owner_ = 1;
  uw_active_ = false;
  stats_.window_releases++;
}

void Mmu::window_clear() {
  stats_.window_clears++;
  if (mmap(reinterpret_cast<void*>(uw_lo_), uw_base_ + (u64(1) << 32) - uw_lo_, PROT_NONE,
           MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_FIXED, -1, 0) == MAP_FAILED)
    throw Error(std::string("cannot clear the user window: ") + std::strerror(errno));
  uw_pages_.clear();
}

void Mmu::window_fill(unsigned k) {
  // (A page of plain RAM is at ram() + its address: the memfd's offset.)
  const TlbEntry& e = tlb_[1][k];
  window_set(e.tag_read, e.ppn,
             !pm_.plain_ram(e.ppn) ? 0 : e.tag_write == e.tag_read ? PROT_READ | PROT_WRITE : PROT_READ);
}

void Mmu::window_set(u32 la, u32 ppn, int prot) {
  auto it = uw_pages_.find(la);
  if (it == uw_pages_.end()) {
    if (!prot) return;
    if (uw_pages_.size() >= uw_cap_) {
      stats_.window_evicted += uw_pages_.size();
      window_clear();
      it = uw_pages_.end();
    }
  } else if (it->second.ppn == ppn && it->second.prot == prot) {
    return;
  }
  if (uw_base_ + la < uw_lo_) return;  // below the host's mmap_min_addr: never mapped
  u8* at = reinterpret_cast<u8*>(uw_base_ + la);
  if (!prot) {
    if (mmap(at, kPageSize, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_FIXED, -1, 0) == MAP_FAILED)
      throw Error(std::string("cannot unmap a user-window page: ") + std::strerror(errno));
    uw_pages_.erase(it);
    return;
  }
  stats_.window_maps++;
  if (it != uw_pages_.end() && it->second.ppn == ppn && mprotect(at, kPageSize, prot) == 0) {
    it->second.prot = prot;
    return;
  }
  // Each page may be a host mapping of its own: at the host's limit
  // (vm.max_map_count), start the window afresh, then give up on the page
  // (its accesses take the slow path).
  for (int attempt = 0; attempt < 2; attempt++) {
    if (mmap(at, kPageSize, prot, MAP_SHARED | MAP_FIXED | MAP_POPULATE, pm_.ram_fd(),
             off_t(u64(ppn) << kPageShift)) != MAP_FAILED) {
      uw_pages_[la] = WindowPage{ppn, prot};
      return;
    }
    if (errno != ENOMEM || attempt) break;
    window_clear();
  }
  stats_.window_refused++;
  window_clear();  // (a failed MAP_FIXED may have left anything there)
}

void Mmu::window_touch(u32 la, unsigned size) {
  if (!uw_active_) return;
  const u32 last = la + size - 1;
  for (u32 page = la & ~0xFFFu;; page += kPageSize) {
    const unsigned k = (page >> 12) & (kTlbSize - 1);
    const TlbEntry& e = tlb_[1][k];
    if (e.tag_read == page) {
      const bool had = uw_pages_.contains(page);
      window_fill(k);
      if (!had && uw_pages_.contains(page)) stats_.window_refills++;
    }
    if (page == (last & ~0xFFFu)) break;
  }
}

int Mmu::window_walk(u32 la, u32* ppn) {
  Walk w;
  if (!walk(la, &w, true)) return 0;
  constexpr u32 kUsed = PTE_P | PTE_U | PTE_A;  // present, user, accessed: a fill sets nothing
  if ((w.pde & kUsed) != kUsed || (!w.big && (w.pte & kUsed) != kUsed)) return 0;
  *ppn = u32(w.frame(la) >> kPageShift);
  if (!pm_.plain_ram(*ppn)) return 0;
  const bool write = (w.eff() & PTE_W) && (w.last() & PTE_D) && !pm_.write_watched(*ppn);
  return write ? PROT_READ | PROT_WRITE : PROT_READ;
}

void Mmu::window_flushed() {
  if (!uw_on_) return;
  uw_active_ = s_.pg() && (s_.cr3 & ~0xFFFu) == uw_owner_;
  if (!uw_active_) return;  // kept as it is until the owner comes back (checked then)
  stats_.window_checks++;
  std::vector<std::pair<u32, WindowPage>> pages(uw_pages_.begin(), uw_pages_.end());
  for (const auto& [la, pg] : pages) {
    u32 ppn = 0;
    int prot = window_walk(la, &ppn);
    if (prot && ppn != pg.ppn) prot = 0;  // another frame: its first access maps it
    if (prot != pg.prot) stats_.window_churn++;
    window_set(la, pg.ppn, prot);
  }
}

void Mmu::drop_memos(bool user, unsigned k) {
  at(memo_mark_off(user))[k] = 0;
  Memo* m = memos();
  const u32* list = memo_list();
  for (u32 i = 0, n = memo_count(); i < n; i++) {
    Memo& o = m[list[i]];
    if (o.page < kMemoEmpty && ((o.page >> 12) & (kTlbSize - 1)) == k && memo_is_user(list[i]) == user) {
      o.page = kMemoDropped;
      memo_drops_++;
    }
  }
}

void Mmu::reset_memos() {
  Memo* m = memos();
  const u32* list = memo_list();
  for (u32 i = 0, n = memo_count(); i < n; i++) {
    Memo& o = m[list[i]];
    if (o.page < kMemoEmpty) at(memo_mark_off(memo_is_user(list[i])))[(o.page >> 12) & (kTlbSize - 1)] = 0;
    o.page = kMemoEmpty;
  }
  memo_count() = 0;
}

void Mmu::flush_tlb(bool global) {
  stats_.flushes++;
  epoch_++;
  reset_memos();  // first: the entries' mirror() then finds no marks
  for (unsigned u = 0; u < 2; u++) {
    TlbEntry* set = tlb_[u];
    std::vector<u32>& used = used_[u];
    size_t n = 0;
    for (u32 k : used) {
      TlbEntry& e = set[k];
      if (!global && (e.flags & kGlobal)) {
        used[n++] = k;
        continue;
      }
      e.tag_read = e.tag_write = e.tag_exec = invalid_tag(k);
      e.flags = 0;
      mirror(u, k);
    }
    used.resize(n);
  }
  window_flushed();
  if (listener_) listener_->tlb_flushed(global);
}

void Mmu::invlpg(u32 la) {
  epoch_++;
  if (uw_active_) window_set(la & ~0xFFFu, 0, 0);
  if (listener_) listener_->tlb_invlpg(la);
  for (unsigned u = 0; u < 2; u++) {
    const unsigned k = (la >> 12) & (kTlbSize - 1);
    TlbEntry& e = tlb_[u][k];
    if ((e.tag_read & ~0xFFFu) == (la & ~0xFFFu) || (e.tag_exec & ~0xFFFu) == (la & ~0xFFFu) ||
        (e.tag_write & ~0xFFFu) == (la & ~0xFFFu)) {
      e.tag_read = e.tag_write = e.tag_exec = invalid_tag(k);
      e.flags &= kListed;
      mirror(u, k);
    }
  }
}

void Mmu::drop_writable(u64 ppn) {
  // The window's writable mappings of the page (inactive: checked when the
  // owner comes back).
  if (uw_active_)
    for (auto& [la, pg] : uw_pages_)
      if (pg.ppn == ppn && (pg.prot & PROT_WRITE)) {
        if (mprotect(reinterpret_cast<u8*>(uw_base_ + la), kPageSize, PROT_READ) != 0)
          throw Error(std::string("cannot write-protect a user-window page: ") + std::strerror(errno));
        pg.prot = PROT_READ;
      }
  for (unsigned u = 0; u < 2; u++)
    for (u32 k : used_[u])
      if (tlb_[u][k].ppn == ppn) {
        tlb_[u][k].tag_write = invalid_tag(k);
        mirror(u, k);
      }
}

void Mmu::drop_all_writable() {
  // Every writable window page (active or not) becomes read-only: its next
  // write faults into the slow path, which finds the page watched.
  for (auto& [la, pg] : uw_pages_)
    if (pg.prot & PROT_WRITE) {
      if (mprotect(reinterpret_cast<u8*>(uw_base_ + la), kPageSize, PROT_READ) != 0)
        throw Error(std::string("cannot write-protect a user-window page: ") + std::strerror(errno));
      pg.prot = PROT_READ;
    }
  for (unsigned u = 0; u < 2; u++)
    for (u32 k : used_[u])
      if (tlb_[u][k].tag_write != invalid_tag(k)) {
        tlb_[u][k].tag_write = invalid_tag(k);
        mirror(u, k);
      }
}

bool Mmu::walk(u32 la, Walk* w, bool ram_only) {
  w->pde_pa = (s_.cr3 & ~0xFFFu) + ((la >> 22) << 2);
  if (ram_only && !pm_.is_ram(w->pde_pa)) return false;
  w->pde = u32(pm_.read(w->pde_pa, 4));
  if (!(w->pde & PTE_P)) return false;
  w->big = (w->pde & PTE_PS) && (s_.cr4 & CR4_PSE);
  if (w->big) return true;
  w->pte_pa = (w->pde & ~0xFFFu) + (((la >> 12) & 0x3FF) << 2);
  if (ram_only && !pm_.is_ram(w->pte_pa)) return false;
  w->pte = u32(pm_.read(w->pte_pa, 4));
  return w->pte & PTE_P;
}

u64 Mmu::page_fault(u32 la, u32 err, u32* out) {
  stats_.page_faults++;
  s_.cr2 = la;
  *out = err;
  return kNoTranslation;
}

void Mmu::raise_page_fault(u32 err) { raise_fault(PF_V, err); }

u64 Mmu::translate_or_fault(u32 la, Acc acc, bool user, u32* err) {
  stats_.tlb_misses++;
  const u32 page = la & ~0xFFFu;
  u64 pa_page;
  bool can_write = true, global = false, dirty = true;
  if (!s_.pg()) {
    pa_page = page;
  } else {
    stats_.page_walks++;
    const bool write = acc == Acc::write;
    const u32 err_base = (write ? u32(PFE_W) : 0u) | (user ? u32(PFE_U) : 0u);
    Walk w;
    if (!walk(la, &w, false)) return page_fault(la, err_base, err);
    // Permission checks.
    const u32 eff = w.eff();
    if (user && !(eff & PTE_U)) return page_fault(la, err_base | PFE_P, err);
    const bool writable = (eff & PTE_W) || (!user && !(s_.cr0 & CR0_WP));
    if (write && !writable) return page_fault(la, err_base | PFE_P, err);
    can_write = writable;
    // The walk succeeded: set accessed (and dirty) bits, directory first.
    if (!(w.pde & PTE_A) || (w.big && write && !(w.pde & PTE_D))) {
      w.pde |= PTE_A | (w.big && write ? u32(PTE_D) : 0u);
      pm_.write(w.pde_pa, 4, w.pde);
    }
    if (!w.big && (!(w.pte & PTE_A) || (write && !(w.pte & PTE_D)))) {
      w.pte |= PTE_A | (write ? u32(PTE_D) : 0u);
      pm_.write(w.pte_pa, 4, w.pte);
    }
    pa_page = w.frame(la);
    global = (w.last() & PTE_G) && (s_.cr4 & CR4_PGE);
    dirty = w.last() & PTE_D;
  }
  // Fill the TLB entry for this privilege class.
  PhysMem::Page pg = pm_.page(pa_page);
  TlbEntry& e = entry(la, user);
  const u32 inv = invalid_tag((la >> 12) & (kTlbSize - 1));
  const u64 ppn = pa_page >> kPageShift;
  if (e.tag_read != page && e.tag_exec != page) {
    // A different page: start clean.
    e.tag_read = e.tag_write = e.tag_exec = inv;
  }
  if (pg.host) {
    e.addend = uintptr_t(pg.host) - page;
    e.ppn = u32(ppn);
    if (!(e.flags & kListed)) used_[user].push_back((la >> 12) & (kTlbSize - 1));
    e.flags = (global ? u32(kGlobal) : 0u) | kListed;
    e.tag_read = page;
    e.tag_exec = page;
    if (can_write && dirty && !pg.rom && !pm_.write_watched(ppn)) e.tag_write = page;
    else e.tag_write = inv;
  } else {
    e.tag_read = e.tag_write = e.tag_exec = inv;
  }
  mirror(user, (la >> 12) & (kTlbSize - 1));
  return pa_page | (la & 0xFFF);
}

u64 Mmu::read_slow(u32 la, unsigned size, bool user) {
  stats_.slow_accesses++;
  if ((la & 0xFFF) + size > 4096) {
    // Crosses a page: translate both before reading.
    unsigned n1 = 4096 - (la & 0xFFF);
    u64 pa1 = translate(la, Acc::read, user);
    u64 pa2 = translate(la + n1, Acc::read, user);
    u64 v = 0;
    for (unsigned k = 0; k < size; k++) {
      u64 pa = k < n1 ? pa1 + k : pa2 + (k - n1);
      v |= pm_.read(pa, 1) << (8 * k);
    }
    return v;
  }
  return pm_.read(translate(la, Acc::read, user), size);
}

// The translations read_slow/write_slow make before they touch memory, in the
// same order (both pages of a crossing access, the first first), with the
// same effects (TLB fills, accessed and dirty bits, CR2), the #PF returned.
bool Mmu::access_fault_slow(u32 la, unsigned size, bool write, bool user, u32* err) {
  const Acc acc = write ? Acc::write : Acc::read;
  if (translate_or_fault(la, acc, user, err) == kNoTranslation) return true;
  if ((la & 0xFFF) + size > 4096 && translate_or_fault(la + (4096 - (la & 0xFFF)), acc, user, err) == kNoTranslation)
    return true;
  return false;
}

void Mmu::write_slow(u32 la, unsigned size, u64 v, bool user) {
  stats_.slow_accesses++;
  if ((la & 0xFFF) + size > 4096) {
    unsigned n1 = 4096 - (la & 0xFFF);
    u64 pa1 = translate(la, Acc::write, user);
    u64 pa2 = translate(la + n1, Acc::write, user);
    for (unsigned k = 0; k < size; k++) {
      u64 pa = k < n1 ? pa1 + k : pa2 + (k - n1);
      pm_.write(pa, 1, (v >> (8 * k)) & 0xFF);
    }
    return;
  }
  pm_.write(translate(la, Acc::write, user), size, v);
}

void Mmu::probe_write(u32 la, unsigned size, bool user) {
  u32 last = la + size - 1;
  for (u32 p = la & ~0xFFFu;; p += 4096) {
    TlbEntry& e = entry(p, user);
    if (e.tag_write != p) translate(p < la ? la : p, Acc::write, user);
    if ((p & ~0xFFFu) == (last & ~0xFFFu)) break;
  }
}

const u8* Mmu::fetch_slow(u32 la, bool user, u64* pa) {
  u64 p = translate(la, Acc::exec, user);
  *pa = p;
  PhysMem::Page pg = pm_.page(p);
  return pg.host ? pg.host + (p & 0xFFF) : nullptr;
}

bool Mmu::probe(u32 la, u64* pa) const {
  if (!s_.pg()) {
    *pa = la;
    return true;
  }
  // Page-table reads from RAM only: probing has no side effects, not even on devices.
  auto entry = [&](u64 at, u32* v) {
    const PhysMem::Page pg = pm_.page(at);
    if (!pg.host) return false;
    std::memcpy(v, pg.host + (at & (kPageSize - 1)), 4);
    return true;
  };
  u32 pde, pte;
  if (!entry((s_.cr3 & ~0xFFFu) + ((la >> 22) << 2), &pde) || !(pde & PTE_P)) return false;
  if ((pde & PTE_PS) && (s_.cr4 & CR4_PSE)) {
    *pa = (pde & 0xFFC00000u) | (la & 0x3FFFFFu);
    return true;
  }
  if (!entry((pde & ~0xFFFu) + (((la >> 12) & 0x3FF) << 2), &pte) || !(pte & PTE_P)) return false;
  *pa = (pte & ~0xFFFu) | (la & 0xFFF);
  return true;
}

}  // namespace popek::mem
