// The soft TLB and page walker of one vCPU: x86 paging (4 KiB and 4 MiB pages,
// global pages, A/D bits, CR0.WP, #PF error codes) in front of PhysMem.
//
// The TLB is the shadow page table of DESIGN.md: per privilege class
// (supervisor, user) a direct-mapped array maps a linear page to a host
// address, with separate tags for read, write and execute. It is flushed
// exactly where x86 flushes its TLB. No write tag is installed for pages that
// are ROM, MMIO, watched (hold code) or not yet dirty, so those writes take the
// slow path.
#pragma once
#include <cstring>
#include <memory>
#include <unordered_map>
#include <vector>

#include "base/big_alloc.h"
#include "base/types.h"
#include "memory/phys_mem.h"
#include "x86/cpu.h"

namespace popek::mem {

struct TlbEntry {
  u32 tag_read;   // linear page | 0, or Mmu::invalid_tag(index)
  u32 tag_write;
  u32 tag_exec;
  u32 ppn;        // guest-physical page number
  uintptr_t addend;  // host address = addend + linear address
  u32 flags;      // kGlobal
  u32 pad;
};
static_assert(sizeof(TlbEntry) == 32, "TLB entry is read by generated code: keep it 32 bytes");
static_assert(offsetof(TlbEntry, tag_read) == 0 && offsetof(TlbEntry, addend) == 16);

struct MmuStats {
  u64 tlb_misses = 0;
  u64 page_walks = 0;
  u64 page_faults = 0;
  u64 flushes = 0;
  u64 slow_accesses = 0;
  u64 window_maps = 0;     // user-window pages mapped (or re-protected)
  u64 window_claims = 0;   // address spaces that took the window over
  u64 window_checks = 0;   // flushes that walked the window's pages again
  u64 window_churn = 0;    // pages those walks unmapped or made read-only
  u64 window_releases = 0;  // owners that gave the window up
  u64 window_clears = 0;   // the whole window unmapped at once (a claim, a release, its cap, the host's mapping limit)
  u64 window_evicted = 0;  // pages a clear at the cap threw out (a working set larger than the window)
  u64 window_refills = 0;  // pages mapped again by an access that faulted on them while the TLB held them
  u64 window_refused = 0;  // pages the host would not map even after a clear (left to the slow path)
};

// Told when the guest drops translations (an engine's caches of
// linear-address lookups follow the TLB).
struct TlbListener {
  virtual ~TlbListener() = default;
  virtual void tlb_flushed(bool global) = 0;  // all entries (global: global pages too)
  virtual void tlb_invlpg(u32 la) = 0;        // the page holding la
};

class Mmu final : public x86::LinearMem, public TlbShootdown {
 public:
  // 64 Ki entries per privilege class: generated code takes the index with a
  // flag-free 16-bit zero extension, and flushes clear only the entries used
  // since (the kListed list), so the size costs memory, not time.
  static constexpr unsigned kTlbBits = 16;
  static constexpr unsigned kTlbSize = 1u << kTlbBits;
  // An invalid tag never equals a page address and, for generated code that
  // tests "last byte - tag < 4096", names only pages that map to other
  // entries (index + 128, + 129): no address that selects this entry can match.
  static constexpr u32 invalid_tag(unsigned index) {
    return (((index + 128) & (kTlbSize - 1)) << 12) | 0x800;
  }
  enum : u32 { kGlobal = 1, kListed = 2 /* in used_ */ };

  Mmu(x86::CpuState& s, PhysMem& pm);
  ~Mmu() override;

  // ---- x86::LinearMem ----
  u32 read(u32 la, unsigned size, bool user) override {
    const TlbEntry& e = entry(la, user);
    if (POPEK_LIKELY(e.tag_read == (la & ~0xFFFu) && (la & 0xFFF) <= 4096 - size))
      return u32(load_le_n(reinterpret_cast<const void*>(e.addend + la), size));
    return u32(read_slow(la, size, user));
  }
  void write(u32 la, unsigned size, u32 v, bool user) override {
    TlbEntry& e = entry(la, user);
    if (POPEK_LIKELY(e.tag_write == (la & ~0xFFFu) && (la & 0xFFF) <= 4096 - size)) {
      store_le_n(reinterpret_cast<void*>(e.addend + la), size, v);
      return;
    }
    write_slow(la, size, v, user);
  }
  u64 read64(u32 la, bool user) override {
    const TlbEntry& e = entry(la, user);
    if (POPEK_LIKELY(e.tag_read == (la & ~0xFFFu) && (la & 0xFFF) <= 4096 - 8)) {
      u64 v;
      std::memcpy(&v, reinterpret_cast<const void*>(e.addend + la), 8);
      return v;
    }
    return read_slow(la, 8, user);
  }
  void write64(u32 la, u64 v, bool user) override {
    TlbEntry& e = entry(la, user);
    if (POPEK_LIKELY(e.tag_write == (la & ~0xFFFu) && (la & 0xFFF) <= 4096 - 8)) {
      std::memcpy(reinterpret_cast<void*>(e.addend + la), &v, 8);
      return;
    }
    write_slow(la, 8, v, user);
  }
  void probe_write(u32 la, unsigned size, bool user) override;
  bool access_fault(u32 la, unsigned size, bool write, bool user, u32* err) override {
    const TlbEntry& e = entry(la, user);
    if (POPEK_LIKELY((write ? e.tag_write : e.tag_read) == (la & ~0xFFFu) && (la & 0xFFF) <= 4096 - size))
      return false;
    return access_fault_slow(la, size, write, user, err);
  }
  u8* direct(u32 la, u32 len, bool write, bool user) override {
    const TlbEntry& e = entry(la, user);
    if ((la & 0xFFF) + len > 4096 || len == 0) return nullptr;
    if ((write ? e.tag_write : e.tag_read) != (la & ~0xFFFu)) return nullptr;
    return reinterpret_cast<u8*>(e.addend + la);
  }
  void flush_tlb(bool global) override;
  void invlpg(u32 la) override;

  // ---- for engines ----
  // Translates an instruction fetch; returns the host address of the byte at
  // `la` (null if the page is not RAM/ROM) and its physical address.
  const u8* fetch(u32 la, bool user, u64* pa) {
    const TlbEntry& e = entry(la, user);
    if (POPEK_LIKELY(e.tag_exec == (la & ~0xFFFu))) {
      *pa = (u64(e.ppn) << kPageShift) | (la & 0xFFF);
      return reinterpret_cast<const u8*>(e.addend + la);
    }
    return fetch_slow(la, user, pa);
  }
  // The same where the TLB already holds the page; null otherwise (no walk).
  const u8* fetch_hit(u32 la, bool user, u64* pa) const {
    const TlbEntry& e = entry(la, user);
    if (e.tag_exec != (la & ~0xFFFu)) return nullptr;
    *pa = (u64(e.ppn) << kPageShift) | (la & 0xFFF);
    return reinterpret_cast<const u8*>(e.addend + la);
  }
  // Walks without side effects (no A/D bits, no fault): for debuggers/tracing.
  bool probe(u32 la, u64* pa) const;
  TlbEntry* tlb(bool user) { return tlb_[user]; }
  const TlbEntry* tlb(bool user) const { return tlb_[user]; }
  // For generated code, the same entries' read tags, write tags (u32) and
  // addends (u64) again as separate arrays indexed by the entry number: an
  // index scales to them in the address itself (the entries are 32 bytes,
  // past the largest scale). Byte offsets from tlb(false).
  static constexpr i64 kSoaOff = i64(2) * kTlbSize * sizeof(TlbEntry);
  static constexpr i64 tag_array_off(bool user, bool write) {
    return kSoaOff + i64((user ? 2 : 0) + (write ? 1 : 0)) * kTlbSize * 4;
  }
  static constexpr i64 addend_array_off(bool user) {
    return kSoaOff + i64(4) * kTlbSize * 4 + i64(user ? 1 : 0) * kTlbSize * 8;
  }
  // Memos (for generated code): per memory-access site, the page it last
  // hit and that page's addend, so that an access to the same page again
  // needs no TLB load on its address chain. Four pools of kMemos / 4, one per
  // privilege class and kind (read: filled from read tags, write: from write
  // tags), memo_pool(user, write) the first id of each; sites share them
  // round-robin (any site may use any memo of its class and kind: the memo
  // names its page). Invariant: a memo holds a page only while the entry it
  // was filled from still holds that page with that addend: generated code
  // marks the entry (kMemoMarkOff) and lists the memo when it fills one, and
  // every change to a marked entry (mirror), as every flush, drops the memos
  // on it. A memo's page is kMemoEmpty (not filled since the last flush),
  // kMemoDropped (listed, dropped since), or a page address (< 2^32).
  struct Memo {
    u64 page;
    uintptr_t host;  // the page's host address (written and read by generated code only)
  };
  static constexpr unsigned kMemos = 1u << 16;
  static constexpr unsigned kMemoListCap = 8192;  // memos filled between flushes; more stay empty
  static constexpr u64 kMemoEmpty = u64(1) << 40;
  static constexpr u64 kMemoDropped = u64(1) << 41;
  static constexpr i64 kMemoOff = kSoaOff + i64(4) * kTlbSize * 4 + i64(2) * kTlbSize * 8;  // after the addends
  static constexpr i64 kMemoMarkOff = kMemoOff + i64(kMemos) * 16;      // a byte per entry, per class
  static constexpr i64 kMemoCountOff = kMemoMarkOff + 2 * i64(kTlbSize);  // u32: memos listed
  static constexpr i64 kMemoListOff = kMemoCountOff + 8;                 // u32 ids
  // A count-down of misses per memo, for the engine's policy (generated code
  // decrements it at each miss and takes the slow path at zero).
  static constexpr i64 kMemoMissOff = kMemoListOff + i64(kMemoListCap) * 4;
  static constexpr i64 memo_miss_off(unsigned id) { return kMemoMissOff + i64(id) * 4; }
  u32& memo_misses(unsigned id) { return *reinterpret_cast<u32*>(at(memo_miss_off(id))); }
  static constexpr unsigned memo_pool(bool user, bool write) {
    return ((user ? 2u : 0u) + (write ? 1u : 0u)) * (kMemos / 4);
  }
  static constexpr bool memo_is_user(unsigned id) { return id >= memo_pool(true, false); }
  static constexpr i64 memo_mark_off(bool user) { return kMemoMarkOff + (user ? i64(kTlbSize) : 0); }
  static constexpr i64 memo_off(unsigned id) { return kMemoOff + i64(id) * 16; }
  u64 memo_drops() const { return memo_drops_; }
  // Bytes just before the TLB for an engine's own data: generated code that
  // addresses both from one register needs them within a 32-bit offset.
  static constexpr size_t kEngineArea = 512;
  void* engine_area() { return tlb_store_.data(); }
  const MmuStats& stats() const { return stats_; }
  PhysMem& phys() { return pm_; }
  // Changes whenever entries are dropped (flush, INVLPG): caches of
  // linear-address translations kept outside the TLB compare it.
  u64 epoch() const { return epoch_; }
  void set_listener(TlbListener* l) { listener_ = l; }
  // The page of an instruction fetch that just hit is global (survives CR3 loads).
  bool exec_global(u32 la, bool user) const {
    return entry(la, user).flags & kGlobal;
  }

  // TlbShootdown
  void drop_writable(u64 ppn) override;
  void drop_all_writable() override;  // the dirty log's new pass

  // ---- the user window (the bt engine's direct accesses at CPL 3) ----
  // A host reservation of kWindowSpan bytes whose first 4 GiB map pages of
  // one guest address space (its owner, a page-directory base) at their
  // linear addresses: a page of plain RAM the user-class TLB was filled with
  // is mapped (a second mapping of PhysMem's memfd) at window + its linear
  // page, read-only unless the fill allowed writes (dirty, writable, not
  // code); everything else is inaccessible. Generated code at CPL 3
  // addresses window + linear address with no check: where the TLB would
  // miss (or refuse a write) the access faults, and the engine's SIGSEGV
  // handler sends it to its slow path, whose TLB fill maps the page. The
  // rest of the span (past 4 GiB) stays inaccessible, so a base +
  // displacement past 4 GiB faults too.
  //
  // Host mapping calls are dear (~10 us each here), so the window is not
  // flushed with the TLB: while the owner's address space is loaded, the
  // window is active; a flush then walks the guest page tables again for
  // each page it maps (no side effects: a page whose walk would now differ
  // or would set an accessed or dirty bit is unmapped or made read-only),
  // which gives exactly the pages a TLB fill would. Another address space
  // loaded leaves the window inactive (its code must not use it: the
  // engine keys translations on window_active) and untouched until the
  // owner's comes back (checked again then) or another claims it.
  static constexpr u64 kWindowSpan = u64(8) << 30;
  static constexpr u64 kWindowAlign = u64(1) << 16;
  // Pages mapped at most; one more starts the window afresh. The walk at a
  // flush costs per page (~50 ns each), and each page may be a host mapping
  // of its own (vm.max_map_count is 65,530 by default): 64 MiB of working
  // set. A clear leaves the soft TLB as it is, so the pages it still holds
  // come back through window_touch at their next access.
  static constexpr size_t kWindowCap = 16384;
  void set_window_cap(size_t pages) { uw_cap_ = pages ? pages : 1; }
  // Reserves the window (idempotent). Where the host's low 8 GiB are free
  // (not under a sanitizer's shadow, not taken by another Mmu's window) the
  // window starts at host address 0: linear address = host address, so
  // generated code may address it with the guest's own addressing (32-bit,
  // 0x67). Pages below kWindowLow (the host's mmap_min_addr) stay unmapped
  // there: their accesses take the slow path. Else its base is a 64 KiB
  // aligned reservation anywhere.
  static constexpr uintptr_t kWindowLow = uintptr_t(1) << 16;
  void enable_user_window();
  uintptr_t user_window_base() const { return uw_base_; }
  bool user_window_zero() const { return uw_on_ && uw_base_ == 0; }
  bool in_user_window(const void* p) const {
    const uintptr_t a = reinterpret_cast<uintptr_t>(p);
    return uw_on_ && a >= uw_base_ && a < uw_base_ + kWindowSpan;
  }
  // The address space now loaded (CR3's page-directory base, paging on)
  // owns the window: it is emptied and active.
  void claim_window();
  // No address space owns the window any more: it is emptied and inactive.
  void release_window();
  bool window_active() const { return uw_active_; }
  // An access of `size` bytes at la faulted in the window and has run
  // through the slow path: maps the pages the user-class TLB now holds for
  // it. Without this a page the TLB kept while the window dropped it (a
  // clear at the cap, the host's mapping limit) would fault at every access
  // from then on: the TLB hit in the slow path fills nothing.
  void window_touch(u32 la, unsigned size);

 private:
  enum class Acc { read, write, exec };
  TlbEntry& entry(u32 la, bool user) { return tlb_[user][(la >> 12) & (kTlbSize - 1)]; }
  const TlbEntry& entry(u32 la, bool user) const { return tlb_[user][(la >> 12) & (kTlbSize - 1)]; }
  // Copies entry k of class `user` to the arrays generated code reads.
  void mirror(bool user, unsigned k) {
    const TlbEntry& e = tlb_[user][k];
    if (at(memo_mark_off(user))[k]) drop_memos(user, k);
    reinterpret_cast<u32*>(at(tag_array_off(user, false)))[k] = e.tag_read;
    reinterpret_cast<u32*>(at(tag_array_off(user, true)))[k] = e.tag_write;
    reinterpret_cast<uintptr_t*>(at(addend_array_off(user)))[k] = e.addend;
    if (user && uw_active_ && !(e.tag_read & 0xFFF)) window_fill(k);
  }
  // The window's page for user entry k, just filled.
  void window_fill(unsigned k);
  void window_clear();  // every page of the window inaccessible again
  // Sets the window's page at linear page la to ppn with prot (0: unmapped).
  void window_set(u32 la, u32 ppn, int prot);
  // What a user-mode TLB fill of la would map now without setting an
  // accessed or dirty bit: the frame and the protection (0: nothing).
  int window_walk(u32 la, u32* ppn);
  // At a flush: the window follows the address space now loaded.
  void window_flushed();
  // The byte at an offset from tlb(false) (the *_off constants).
  u8* at(i64 off) { return reinterpret_cast<u8*>(tlb_[0]) + off; }
  Memo* memos() { return reinterpret_cast<Memo*>(at(kMemoOff)); }
  u32& memo_count() { return *reinterpret_cast<u32*>(at(kMemoCountOff)); }
  u32* memo_list() { return reinterpret_cast<u32*>(at(kMemoListOff)); }
  void drop_memos(bool user, unsigned k);  // those on entry k of a class
  void reset_memos();           // all (a flush)
  // Reads la's page-directory and page-table entries into `w` (setting no
  // bit, raising nothing); false at the first level not present.
  // `ram_only`: a level outside RAM counts as not present (not read: an
  // MMIO read has effects).
  struct Walk;
  bool walk(u32 la, Walk* w, bool ram_only);
  // Translates one page for an access, filling the TLB; faults with #PF.
  u64 translate(u32 la, Acc acc, bool user) {
    u32 err;
    const u64 pa = translate_or_fault(la, acc, user, &err);
    if (POPEK_UNLIKELY(pa == kNoTranslation)) raise_page_fault(err);
    return pa;
  }
  // The same, but a #PF is returned: kNoTranslation with the error code in
  // *err (CR2 set and the fault counted, as the raising form does).
  static constexpr u64 kNoTranslation = ~0ull;
  u64 translate_or_fault(u32 la, Acc acc, bool user, u32* err);
  u64 read_slow(u32 la, unsigned size, bool user);
  bool access_fault_slow(u32 la, unsigned size, bool write, bool user, u32* err);
  void write_slow(u32 la, unsigned size, u64 v, bool user);
  const u8* fetch_slow(u32 la, bool user, u64* pa);
  // A #PF at la: sets CR2, counts it; returns kNoTranslation.
  u64 page_fault(u32 la, u32 err, u32* out);
  [[noreturn]] static void raise_page_fault(u32 err);

  x86::CpuState& s_;
  PhysMem& pm_;
  big_vector<TlbEntry> tlb_store_;
  TlbEntry* tlb_[2];
  std::vector<u32> used_[2];  // indices of entries filled since they were last cleared
  MmuStats stats_;
  u64 epoch_ = 0;
  u64 memo_drops_ = 0;
  TlbListener* listener_ = nullptr;
  // The user window: the reservation, its 64 KiB-aligned base, its owner
  // and the pages it maps (by linear page).
  struct WindowPage {
    u32 ppn;
    int prot;
  };
  u8* uw_map_ = nullptr;
  size_t uw_map_len_ = 0;
  bool uw_on_ = false;
  uintptr_t uw_base_ = 0;
  uintptr_t uw_lo_ = 0;  // the lowest host address the window may map
  bool uw_active_ = false;
  u32 uw_owner_ = 1;  // not a page-directory base: none
  std::unordered_map<u32, WindowPage> uw_pages_;
  size_t uw_cap_ = kWindowCap;
};

}  // namespace popek::mem
