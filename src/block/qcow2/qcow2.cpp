// qcow2: opening, the L2 cache, guest reads and writes, and write-back order.
#include "block/qcow2/qcow2.h"

#include <algorithm>
#include <cstring>

#include "base/error.h"
#include "base/log.h"
#include "block/compress.h"

namespace popek::block {

using namespace qcow2;

namespace {
std::string hex(u64 v) {
  char b[24];
  std::snprintf(b, sizeof b, "0x%llx", static_cast<unsigned long long>(v));
  return b;
}
}  // namespace

Qcow2Backend::Qcow2Backend(std::unique_ptr<File> f, const OpenOptions& opts)
    : BlockBackend(f->name(), opts.read_only || !f->writable()), file_(std::move(f)) {
  for_check_ = opts.for_check;
  h_ = read_header(*file_);
  const std::string& n = name_;
  if (!read_only_) {
    if (h_.version == 2)
      throw Error(n + ": qcow2 version 2 images can only be opened read-only; convert to version 3 "
                      "(`popek img convert -O qcow2`) to write");
    if ((h_.incompatible & kIncompatCorrupt) && !for_check_)
      throw Error(n + ": the image is marked corrupt; it can only be opened read-only (repair it "
                      "with `popek img check -r all`)");
  }
  cb_ = h_.cluster_bits;
  cs_ = h_.cluster_size();
  l2_entries_ = cs_ / 8;
  rc_per_block_ = cs_ * 8 >> h_.refcount_order;
  size_ = h_.size;
  scratch_.resize(cs_);

  std::vector<u8> raw(static_cast<usize>(h_.l1_size) * 8);
  if (!raw.empty()) file_->read_exact(h_.l1_table_offset, raw.data(), raw.size(), "L1 table");
  l1_.resize(h_.l1_size);
  for (usize i = 0; i < l1_.size(); i++) l1_[i] = rd_be64(&raw[i * 8]);
  l1_dirty_.assign(l1_.size(), false);

  raw.resize(static_cast<usize>(h_.refcount_table_clusters) * cs_);
  file_->read_exact(h_.refcount_table_offset, raw.data(), raw.size(), "refcount table");
  rt_.resize(raw.size() / 8);
  for (usize i = 0; i < rt_.size(); i++) rt_[i] = rd_be64(&raw[i * 8]);
  rt_dirty_.assign(rt_.size(), false);

  end_cluster_ = (file_->size() + cs_ - 1) / cs_;
  l2_.resize(std::max<usize>(4, opts.l2_cache_tables));
  validate_tables_at_open();

  if (!read_only_ && !for_check_) {
    // Before the first write, walk all metadata once (reading every L2 table:
    // about 0.01% of the image). A corrupt image is refused instead of being
    // written, where a cluster used twice would mix up guest data.
    if (!(h_.incompatible & kIncompatDirty)) {
      CheckResult r = check(Repair::none);
      if (r.corruptions || r.check_errors) {
        failed_.clear();
        std::string first = "?";
        for (const auto& m : r.messages)
          if (m.rfind("ERROR", 0) == 0) {
            first = m.substr(6);
            break;
          }
        throw Error(n + ": the image has " + std::to_string(r.corruptions + r.check_errors) +
                    " metadata error(s) (" + first +
                    "); it can be opened read-only, or repaired with `popek img check -r all`");
      }
    }
    if (h_.incompatible & kIncompatDirty) {
      // Refcounts may be stale (lazy refcounts): rebuild them before writing.
      CheckResult r = check(Repair::all);
      if (r.corruptions || r.check_errors)
        throw Error(n + ": the image was not closed cleanly and has errors that cannot be repaired "
                        "automatically; see `popek img check`");
      u8 b[8];
      wr_be64(b, h_.incompatible & ~kIncompatDirty);
      file_->write_at(72, b, 8);
      sync();
      h_.incompatible &= ~kIncompatDirty;
    }
    if (h_.version == 3 && h_.autoclear != 0) {
      // We maintain none of the autoclear features (bitmaps), so by the spec
      // their bits must be cleared before we write.
      u8 b[8] = {};
      file_->write_at(88, b, 8);
      sync();
      h_.autoclear = 0;
    }
  }
}

Qcow2Backend::~Qcow2Backend() {
  stop_async();
  if (!read_only_ && failed_.empty()) {
    try {
      write_back();
      if (unsynced_) sync();
    } catch (const std::exception& e) {
      POPEK_LOG(error, "%s: closing the image failed: %s", name_.c_str(), e.what());
    }
  }
}

void Qcow2Backend::corrupt(const std::string& what) {
  std::string msg = name_ + ": corrupt qcow2 image: " + what;
  if (!read_only_ && !for_check_ && failed_.empty()) failed_ = msg;
  throw Error(msg);
}

void Qcow2Backend::validate_tables_at_open() {
  const u64 fsize = file_->size();
  auto add = [&](u64 cluster, const std::string& what) {
    if (!meta_.insert(cluster).second && !for_check_)
      corrupt(what + " at " + hex(cluster * cs_) + " overlaps other metadata");
  };
  add(0, "the header");
  for (u64 c = h_.l1_table_offset / cs_, e = (h_.l1_table_offset + h_.l1_size * 8ull + cs_ - 1) / cs_;
       h_.l1_size && c < e; c++)
    add(c, "the L1 table");
  for (u64 c = 0; c < h_.refcount_table_clusters; c++)
    add(h_.refcount_table_offset / cs_ + c, "the refcount table");
  for (usize i = 0; i < l1_.size(); i++) {
    u64 off = l1_[i] & kOffsetMask;
    if (!off) continue;
    std::string what = "L1 entry " + std::to_string(i) + " (L2 table at " + hex(off) + ")";
    if (for_check_) {
      meta_.insert(off / cs_);
      continue;
    }
    if (off % cs_) corrupt(what + " is not cluster aligned");
    if (off + cs_ > fsize) corrupt(what + " points past the end of the file");
    add(off / cs_, what);
  }
  // Refcount blocks matter only when writing.
  if (read_only_) return;
  for (usize i = 0; i < rt_.size(); i++) {
    u64 off = rt_[i] & ~511ull;
    if (!off) continue;
    std::string what = "refcount table entry " + std::to_string(i) + " (block at " + hex(off) + ")";
    if (for_check_) {
      meta_.insert(off / cs_);
      continue;
    }
    if (off % cs_) corrupt(what + " is not cluster aligned");
    if (off + cs_ > fsize) corrupt(what + " points past the end of the file");
    add(off / cs_, what);
  }
}

void Qcow2Backend::sync() {
  file_->sync();
  unsynced_ = false;
  stats_.syncs++;
}

Qcow2Backend::Kind Qcow2Backend::classify(u64 e, u64* host) const {
  if (e & kCompressed) {
    *host = 0;
    return Kind::compressed;
  }
  *host = e & kOffsetMask;
  if (h_.version >= 3 && (e & kZeroFlag)) return Kind::zero;
  if (*host == 0) return Kind::unallocated;
  return Kind::normal;
}

void Qcow2Backend::evict_l2_if_full() {
  for (auto& s : l2_)
    if (s.offset == 0) return;
  auto victim = std::min_element(l2_.begin(), l2_.end(),
                                 [](const L2Slot& a, const L2Slot& b) { return a.used < b.used; });
  if (victim->dirty) write_back();
  l2_index_.erase(victim->offset);
  victim->offset = 0;
  victim->dirty = victim->fresh = false;
}

Qcow2Backend::L2Slot* Qcow2Backend::get_l2(u64 l1i, bool allocate) {
  if (l1i >= l1_.size()) corrupt("L1 index " + std::to_string(l1i) + " out of range");
  u64 off = l1_[l1i] & kOffsetMask;
  if (off == 0) {
    if (!allocate) return nullptr;
    evict_l2_if_full();
    u64 c = alloc_clusters(1);
    auto slot = std::find_if(l2_.begin(), l2_.end(), [](const L2Slot& s) { return s.offset == 0; });
    slot->offset = c;
    slot->e.assign(l2_entries_, 0);
    slot->dirty = slot->fresh = true;
    slot->used = ++tick_;
    l2_index_[c] = static_cast<usize>(slot - l2_.begin());
    meta_.insert(c / cs_);
    l1_[l1i] = c | kCopied;
    l1_dirty_[l1i] = true;
    any_l1_dirty_ = true;
    return &*slot;
  }
  L2Slot* s;
  auto it = l2_index_.find(off);
  if (it != l2_index_.end()) {
    stats_.l2_hits++;
    s = &l2_[it->second];
  } else {
    stats_.l2_misses++;
    if (off % cs_) corrupt("L1 entry " + std::to_string(l1i) + " is not cluster aligned");
    if (off < cs_) corrupt("L1 entry " + std::to_string(l1i) + " points into the header");
    if (off + cs_ > file_->size())
      corrupt("L1 entry " + std::to_string(l1i) + " points past the end of the file");
    evict_l2_if_full();
    auto slot = std::find_if(l2_.begin(), l2_.end(), [](const L2Slot& x) { return x.offset == 0; });
    slot->e.resize(l2_entries_);
    file_->read_at(off, slot->e.data(), cs_);
    for (auto& v : slot->e) v = __builtin_bswap64(v);
    slot->offset = off;
    slot->dirty = slot->fresh = false;
    l2_index_[off] = static_cast<usize>(slot - l2_.begin());
    s = &*slot;
  }
  s->used = ++tick_;
  if (allocate && !(l1_[l1i] & kCopied)) {
    u64 rc = get_refcount(off / cs_);
    if (rc != 1)
      corrupt("L2 table at " + hex(off) + " has refcount " + std::to_string(rc) +
              " (shared tables come from internal snapshots, which are not supported)");
    l1_[l1i] |= kCopied;
    l1_dirty_[l1i] = true;
    any_l1_dirty_ = true;
  }
  return s;
}

void Qcow2Backend::read_backing(u64 off, u8* buf, usize len) {
  if (!backing_ || off >= backing_->size()) {
    std::memset(buf, 0, len);
    return;
  }
  usize n = static_cast<usize>(std::min<u64>(len, backing_->size() - off));
  backing_->read(off, buf, n);
  if (n < len) std::memset(buf + n, 0, len - n);
}

void Qcow2Backend::read_compressed(u64 e, u8* out) {
  if (!zcache_.empty() && e == zcache_entry_) {
    std::memcpy(out, zcache_.data(), cs_);
    return;
  }
  const u32 x = 62 - (cb_ - 8);
  const u64 off = e & ((1ull << x) - 1);
  const u64 nsec = ((e >> x) & ((1ull << (cb_ - 8)) - 1)) + 1;
  const u64 csize = nsec * 512 - (off & 511);
  if (off < cs_) corrupt("compressed cluster at " + hex(off) + " points into the header");
  std::vector<u8> in(csize);
  file_->read_at(off, in.data(), in.size());
  std::string err = decompress_cluster(h_.compression_type, in.data(), in.size(), out, cs_);
  if (!err.empty()) throw Error(name_ + ": compressed cluster at " + hex(off) + ": " + err);
  zcache_.assign(out, out + cs_);
  zcache_entry_ = e;
}

void Qcow2Backend::do_read(u64 off, void* buf, usize len) {
  u8* p = static_cast<u8*>(buf);
  const u32 l2_bits = cb_ - 3;
  while (len) {
    u64 in = off & (cs_ - 1);
    usize n = static_cast<usize>(std::min<u64>(len, cs_ - in));
    u64 l1i = off >> (cb_ + l2_bits);
    u64 l2i = (off >> cb_) & (l2_entries_ - 1);
    L2Slot* s = get_l2(l1i, false);
    u64 e = s ? s->e[l2i] : 0, host;
    switch (classify(e, &host)) {
      case Kind::unallocated: read_backing(off, p, n); break;
      case Kind::zero: std::memset(p, 0, n); break;
      case Kind::compressed:
        read_compressed(e, scratch_.data());
        std::memcpy(p, scratch_.data() + in, n);
        break;
      case Kind::normal: {
        if (host & (cs_ - 1)) corrupt("L2 entry for guest offset " + hex(off) + " is unaligned");
        // Merge following clusters of the same table that are contiguous on
        // the host into one read.
        const u64 start = host + in;
        for (u64 j = l2i + 1; n < len && j < l2_entries_; j++) {
          u64 h2;
          if (classify(s->e[j], &h2) != Kind::normal || h2 != start + n) break;
          n += static_cast<usize>(std::min<u64>(len - n, cs_));
        }
        file_->read_at(start, p, n);
        break;
      }
    }
    p += n;
    off += n;
    len -= n;
  }
}

void Qcow2Backend::write_cluster_part(u64 off, const u8* data, usize n, bool zero) {
  const u32 l2_bits = cb_ - 3;
  u64 l1i = off >> (cb_ + l2_bits);
  u64 l2i = (off >> cb_) & (l2_entries_ - 1);
  u64 in = off & (cs_ - 1);
  L2Slot* s = get_l2(l1i, true);
  u64 e = s->e[l2i], host;
  Kind k = classify(e, &host);
  if (k == Kind::normal || (k == Kind::zero && host)) {
    if (host & (cs_ - 1)) corrupt("L2 entry for guest offset " + hex(off) + " is unaligned");
    if (is_metadata(host / cs_))
      corrupt("L2 entry for guest offset " + hex(off) + " points at metadata (" + hex(host) + ")");
    bool exclusive = (e & kCopied) != 0;
    if (!exclusive && get_refcount(host / cs_) == 1) exclusive = true;
    if (exclusive) {
      if (k == Kind::normal) {
        if (zero) {
          std::memset(scratch_.data(), 0, n);
          file_->write_at(host + in, scratch_.data(), n);
        } else {
          file_->write_at(host + in, data, n);
        }
      } else {
        // A preallocated zero cluster: write the whole cluster, then drop the flag.
        std::memset(scratch_.data(), 0, cs_);
        if (!zero) std::memcpy(scratch_.data() + in, data, n);
        file_->write_at(host, scratch_.data(), cs_);
      }
      unsynced_ = true;
      if (s->e[l2i] != (host | kCopied)) {
        s->e[l2i] = host | kCopied;
        s->dirty = true;
      }
      return;
    }
  }
  // Copy-on-write into a new cluster: the old contents (backing file,
  // compressed or shared cluster, or zeros) merged with the new data.
  u8* buf = scratch_.data();
  if (n < cs_) {
    // (The base is read even when only the new bytes end up written; it is
    // zeros in that case and costs a memset.)
    u64 base = off - in;
    switch (k) {
      case Kind::unallocated:
        read_backing(base, buf, cs_);
        if (backing_) stats_.cow_reads++;
        break;
      case Kind::zero: std::memset(buf, 0, cs_); break;
      case Kind::compressed: read_compressed(e, buf); break;
      case Kind::normal: file_->read_at(host, buf, cs_); break;
    }
  }
  if (zero)
    std::memset(buf + in, 0, n);
  else
    std::memcpy(buf + in, data, n);
  u64 nc = alloc_clusters(1);
  const bool zero_base = k == Kind::zero || (k == Kind::unallocated && !backing_);
  if (n < cs_ && zero_base && nc >= file_->size()) {
    // A cluster past the end of the file reads as zeros already: write only
    // the new bytes (the file grows sparse).
    file_->write_at(nc + in, buf + in, n);
  } else {
    file_->write_at(nc, buf, cs_);
  }
  unsynced_ = true;
  s->e[l2i] = nc | kCopied;
  s->dirty = true;
  if (k == Kind::compressed) {
    const u32 x = 62 - (cb_ - 8);
    const u64 coff = e & ((1ull << x) - 1);
    const u64 nsec = ((e >> x) & ((1ull << (cb_ - 8)) - 1)) + 1;
    free_later(coff, nsec * 512 - (coff & 511));
  } else if (host) {
    free_later(host, cs_);
  }
}

void Qcow2Backend::do_write(u64 off, const void* buf, usize len) {
  if (!failed_.empty()) throw Error(failed_);
  const u8* p = static_cast<const u8*>(buf);
  while (len) {
    u64 in = off & (cs_ - 1);
    usize n = static_cast<usize>(std::min<u64>(len, cs_ - in));
    write_cluster_part(off, p, n, false);
    p += n;
    off += n;
    len -= n;
  }
}

void Qcow2Backend::zero_or_discard(u64 off, u64 len, bool discard) {
  if (!failed_.empty()) throw Error(failed_);
  const u32 l2_bits = cb_ - 3;
  while (len) {
    u64 in = off & (cs_ - 1);
    usize n = static_cast<usize>(std::min<u64>(len, cs_ - in));
    bool whole = in == 0 && (n == cs_ || off + n == size_);
    u64 l1i = off >> (cb_ + l2_bits);
    u64 l2i = (off >> cb_) & (l2_entries_ - 1);
    L2Slot* s = get_l2(l1i, false);
    u64 e = s ? s->e[l2i] : 0, host;
    Kind k = classify(e, &host);
    bool reads_zero = k == Kind::zero || (k == Kind::unallocated && !backing_);
    if (k == Kind::normal && (host & (cs_ - 1)))
      corrupt("L2 entry for guest offset " + hex(off) + " is unaligned");
    if (!whole) {
      if (!reads_zero) write_cluster_part(off, nullptr, n, true);
    } else if (!((k == Kind::unallocated && !backing_) ||
                 (k == Kind::zero && (!host || !discard)))) {
      if (!s) s = get_l2(l1i, true);
      u64 ne;
      if (!discard && k == Kind::normal && (e & kCopied)) {
        ne = host | kCopied | kZeroFlag;  // keep the allocation, read as zeros
      } else {
        ne = backing_ ? kZeroFlag : 0;
        if (k == Kind::compressed) {
          const u32 x = 62 - (cb_ - 8);
          const u64 coff = e & ((1ull << x) - 1);
          const u64 nsec = ((e >> x) & ((1ull << (cb_ - 8)) - 1)) + 1;
          free_later(coff, nsec * 512 - (coff & 511));
        } else if (host) {
          free_later(host, cs_);
        }
      }
      s->e[l2i] = ne;
      s->dirty = true;
    }
    off += n;
    len -= n;
  }
}

void Qcow2Backend::do_discard(u64 off, u64 len) { zero_or_discard(off, len, true); }
void Qcow2Backend::do_write_zeroes(u64 off, u64 len) { zero_or_discard(off, len, false); }

void Qcow2Backend::do_flush() {
  if (!failed_.empty()) throw Error(failed_);
  write_back();
  if (unsynced_) sync();
}

void Qcow2Backend::write_back() {
  stats_.writebacks++;
  std::vector<u8> buf(cs_);
  auto write_l2 = [&](L2Slot& s) {
    for (u64 i = 0; i < l2_entries_; i++) wr_be64(&buf[i * 8], s.e[i]);
    file_->write_at(s.offset, buf.data(), cs_);
    s.dirty = false;
    unsynced_ = true;
  };
  // 1. Refcount blocks (increments may always go first) and new L2 tables
  //    that nothing on disk points to yet.
  for (auto& [bi, b] : rc_) {
    if (!b.dirty) continue;
    file_->write_at(rt_[bi] & ~511ull, b.raw.data(), cs_);
    b.dirty = false;
    unsynced_ = true;
  }
  for (auto& s : l2_)
    if (s.offset && s.dirty && s.fresh) write_l2(s);
  // 2. Refcount table entries for new blocks, once the blocks are durable.
  if (any_rt_dirty_) {
    if (unsynced_) sync();
    for (usize i = 0; i < rt_.size(); i++) {
      if (!rt_dirty_[i]) continue;
      u8 b[8];
      wr_be64(b, rt_[i]);
      file_->write_at(h_.refcount_table_offset + i * 8, b, 8);
      rt_dirty_[i] = false;
    }
    any_rt_dirty_ = false;
    unsynced_ = true;
  }
  // 3. Existing L2 tables and L1 entries, once data, refcounts and new tables
  //    are durable; then the clusters they stopped referencing may be freed.
  bool pending = any_l1_dirty_;
  for (auto& s : l2_) pending |= s.offset && s.dirty;
  if (!pending) return;
  if (unsynced_) sync();
  for (auto& s : l2_)
    if (s.offset && s.dirty) write_l2(s);
  if (any_l1_dirty_) {
    for (usize i = 0; i < l1_.size(); i++) {
      if (!l1_dirty_[i]) continue;
      u8 b[8];
      wr_be64(b, l1_[i]);
      file_->write_at(h_.l1_table_offset + i * 8, b, 8);
      l1_dirty_[i] = false;
    }
    any_l1_dirty_ = false;
    unsynced_ = true;
  }
  for (auto& s : l2_) s.fresh = false;
  if (!deferred_.empty()) {
    sync();
    apply_deferred_frees();
    // The decrements may go to disk at once: the references are gone.
    for (auto& [bi, b] : rc_) {
      if (!b.dirty) continue;
      file_->write_at(rt_[bi] & ~511ull, b.raw.data(), cs_);
      b.dirty = false;
      unsynced_ = true;
    }
  }
}

}  // namespace popek::block
