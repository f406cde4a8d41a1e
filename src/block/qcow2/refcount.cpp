// qcow2 refcounts: the refcount block cache, cluster allocation, deferred
// frees, and growth of the refcount table.
#include <algorithm>
#include <cstring>

#include "base/error.h"
#include "block/qcow2/qcow2.h"

namespace popek::block {

using namespace qcow2;

namespace {

u64 rc_get(const std::vector<u8>& raw, u64 idx, u32 order) {
  const u32 bits = 1u << order;
  if (bits >= 8) {
    const u8* p = &raw[idx * (bits / 8)];
    switch (bits) {
      case 8: return p[0];
      case 16: return rd_be16(p);
      case 32: return rd_be32(p);
      default: return rd_be64(p);
    }
  }
  u64 bitpos = idx * bits;
  return (raw[bitpos / 8] >> (bitpos % 8)) & ((1u << bits) - 1);
}

void rc_set(std::vector<u8>& raw, u64 idx, u32 order, u64 v) {
  const u32 bits = 1u << order;
  if (bits >= 8) {
    u8* p = &raw[idx * (bits / 8)];
    switch (bits) {
      case 8: p[0] = static_cast<u8>(v); break;
      case 16: wr_be16(p, static_cast<u16>(v)); break;
      case 32: wr_be32(p, static_cast<u32>(v)); break;
      default: wr_be64(p, v); break;
    }
    return;
  }
  u64 bitpos = idx * bits;
  u8 mask = static_cast<u8>(((1u << bits) - 1) << (bitpos % 8));
  raw[bitpos / 8] = static_cast<u8>((raw[bitpos / 8] & ~mask) | ((v << (bitpos % 8)) & mask));
}

std::string hex(u64 v) {
  char b[24];
  std::snprintf(b, sizeof b, "0x%llx", static_cast<unsigned long long>(v));
  return b;
}

}  // namespace

void Qcow2Backend::evict_rc_if_full() {
  if (rc_.size() < rc_capacity_) return;
  auto victim = rc_.begin();
  for (auto it = rc_.begin(); it != rc_.end(); ++it)
    if (it->second.used < victim->second.used) victim = it;
  // Writing a refcount block early is always safe: increments on disk before
  // the tables that use them, and decrements are only ever made in memory
  // after the tables stopped referencing the cluster durably.
  if (victim->second.dirty) {
    file_->write_at(rt_[victim->first] & ~511ull, victim->second.raw.data(), cs_);
    unsynced_ = true;
  }
  rc_.erase(victim);
}

Qcow2Backend::RcBlock* Qcow2Backend::get_rc_block(u64 bi, bool create, u64 excl_lo, u64 excl_hi) {
  auto it = rc_.find(bi);
  if (it != rc_.end()) {
    it->second.used = ++tick_;
    return &it->second;
  }
  if (bi >= rt_.size()) {
    if (!create) return nullptr;
    grow_refcount_table(bi + 1);
  }
  u64 off = rt_[bi] & ~511ull;
  if (off == 0) {
    if (!create) return nullptr;
    // A new block, placed inside the range it describes so that it counts
    // itself and needs no other block.
    const u64 lo = bi * rc_per_block_, hi = lo + rc_per_block_;
    u64 r = 0;
    for (u64 c = std::max<u64>(lo, 1); c < hi; c++) {
      if ((c >= excl_lo && c < excl_hi) || is_metadata(c)) continue;
      r = c;
      break;
    }
    if (!r) corrupt("no free cluster for refcount block " + std::to_string(bi));
    evict_rc_if_full();
    RcBlock b;
    b.raw.assign(cs_, 0);
    rc_set(b.raw, r - lo, h_.refcount_order, 1);
    b.dirty = true;
    b.used = ++tick_;
    rt_[bi] = r * cs_;
    rt_dirty_[bi] = true;
    any_rt_dirty_ = true;
    meta_.insert(r);
    end_cluster_ = std::max(end_cluster_, r + 1);
    return &(rc_[bi] = std::move(b));
  }
  if (off % cs_ || off < cs_ || off + cs_ > file_->size())
    corrupt("refcount block " + std::to_string(bi) + " at " + hex(off) +
            (off % cs_ ? " is not cluster aligned" : off < cs_ ? " points into the header"
                                                               : " lies past the end of the file"));
  evict_rc_if_full();
  RcBlock b;
  b.raw.resize(cs_);
  file_->read_at(off, b.raw.data(), cs_);
  b.used = ++tick_;
  return &(rc_[bi] = std::move(b));
}

u64 Qcow2Backend::get_refcount(u64 cluster) {
  u64 bi = cluster / rc_per_block_;
  if (bi >= rt_.size() || (rt_[bi] & ~511ull) == 0) return 0;
  RcBlock* b = get_rc_block(bi, false, 0, 0);
  return rc_get(b->raw, cluster % rc_per_block_, h_.refcount_order);
}

void Qcow2Backend::set_refcount(u64 cluster, u64 value, u64 excl_lo, u64 excl_hi) {
  if (value > refcount_max())
    throw Error(name_ + ": refcount overflow on cluster " + std::to_string(cluster) + " (" +
                std::to_string(refcount_bits()) + "-bit refcounts)");
  RcBlock* b = get_rc_block(cluster / rc_per_block_, true, excl_lo, excl_hi);
  rc_set(b->raw, cluster % rc_per_block_, h_.refcount_order, value);
  b->dirty = true;
}

void Qcow2Backend::add_refcount(u64 cluster, i64 delta, u64 excl_lo, u64 excl_hi) {
  u64 cur = get_refcount(cluster);
  if (delta < 0 && cur < static_cast<u64>(-delta))
    corrupt("refcount of cluster " + hex(cluster * cs_) + " would drop below zero");
  if (delta > 0 && cur > refcount_max() - static_cast<u64>(delta))
    throw Error(name_ + ": refcount overflow on cluster " + hex(cluster * cs_));
  set_refcount(cluster, cur + delta, excl_lo, excl_hi);
}

u64 Qcow2Backend::alloc_clusters(u64 n) {
  POPEK_CHECK(n == 1);
  u64 c = std::max<u64>(free_hint_, 1);
  for (;;) {
    u64 bi = c / rc_per_block_;
    if (bi < rt_.size() && (rt_[bi] & ~511ull) != 0) {
      RcBlock* b = get_rc_block(bi, false, 0, 0);
      const u64 lo = bi * rc_per_block_;
      bool found = false;
      for (u64 i = c - lo; i < rc_per_block_; i++) {
        if (rc_get(b->raw, i, h_.refcount_order) == 0 && !is_metadata(lo + i)) {
          c = lo + i;
          found = true;
          break;
        }
      }
      if (found) break;
      c = lo + rc_per_block_;
    } else {
      if (!is_metadata(c)) break;
      c++;
    }
  }
  free_hint_ = c + 1;
  end_cluster_ = std::max(end_cluster_, c + 1);
  add_refcount(c, 1, c, c + 1);
  stats_.allocations++;
  return c * cs_;
}

void Qcow2Backend::free_later(u64 host_offset, u64 bytes) {
  deferred_.emplace_back(host_offset, bytes);
}

void Qcow2Backend::apply_deferred_frees() {
  auto list = std::move(deferred_);
  deferred_.clear();
  for (auto [off, bytes] : list) {
    if (!bytes) continue;
    for (u64 c = off / cs_, e = (off + bytes - 1) / cs_; c <= e; c++) {
      add_refcount(c, -1);
      if (get_refcount(c) == 0) {
        free_hint_ = std::min(free_hint_, c);
        file_->punch_hole(c * cs_, cs_);
      }
    }
  }
}

void Qcow2Backend::grow_refcount_table(u64 min_entries) {
  const u64 per_cl = cs_ / 8;
  const u64 old_entries = rt_.size();
  // Everything the new table will copy must be on disk first.
  for (auto& [bi, b] : rc_) {
    if (!b.dirty) continue;
    file_->write_at(rt_[bi] & ~511ull, b.raw.data(), cs_);
    b.dirty = false;
    unsynced_ = true;
  }
  u64 entries = std::max(min_entries, old_entries * 2);
  u64 T = 0, k = 0;
  std::vector<u64> new_blocks;  // block indices created here
  for (;;) {
    entries = (entries + per_cl - 1) / per_cl * per_cl;
    k = entries / per_cl;
    if (k * cs_ > kMaxRefcountTableBytes)
      throw Error(name_ + ": the image is too large (refcount table would exceed 8 MiB)");
    // The new table and its new blocks go past everything in use.
    T = end_cluster_;
    u64 m = 0;
    for (;;) {
      bool moved = false;
      for (u64 c = T; c < T + k + m; c++) {
        if (get_refcount(c) != 0 || is_metadata(c)) {
          T = c + 1;
          moved = true;
        }
      }
      if (moved) continue;
      new_blocks.clear();
      for (u64 bi = T / rc_per_block_; bi <= (T + k + m - 1) / rc_per_block_; bi++)
        if (bi >= old_entries || (rt_[bi] & ~511ull) == 0) new_blocks.push_back(bi);
      if (new_blocks.size() == m) break;
      m = new_blocks.size();
    }
    if ((T + k + m - 1) / rc_per_block_ < entries) break;
    entries = ((T + k + m) / rc_per_block_ + 1) * 2;
  }
  const u64 m = new_blocks.size();
  std::vector<u64> nrt(entries, 0);
  std::copy(rt_.begin(), rt_.end(), nrt.begin());
  for (u64 j = 0; j < m; j++) nrt[new_blocks[j]] = (T + k + j) * cs_;
  // Refcount 1 for the table and the new blocks, in new or existing blocks.
  for (u64 bi = T / rc_per_block_; bi <= (T + k + m - 1) / rc_per_block_; bi++) {
    const u64 lo = bi * rc_per_block_;
    bool fresh = std::find(new_blocks.begin(), new_blocks.end(), bi) != new_blocks.end();
    std::vector<u8> raw(cs_, 0);
    if (!fresh) raw = get_rc_block(bi, false, 0, 0)->raw;
    for (u64 c = std::max(T, lo); c < std::min(T + k + m, lo + rc_per_block_); c++)
      rc_set(raw, c - lo, h_.refcount_order, 1);
    file_->write_at(nrt[bi] & ~511ull, raw.data(), cs_);
    if (!fresh) rc_[bi].raw = raw;
  }
  std::vector<u8> table(k * cs_, 0);
  for (u64 i = 0; i < entries; i++) wr_be64(&table[i * 8], nrt[i]);
  file_->write_at(T * cs_, table.data(), table.size());
  sync();
  u8 hb[12];
  wr_be64(hb, T * cs_);
  wr_be32(hb + 8, static_cast<u32>(k));
  file_->write_at(48, hb, sizeof hb);
  sync();
  const u64 old_off = h_.refcount_table_offset, old_k = h_.refcount_table_clusters;
  h_.refcount_table_offset = T * cs_;
  h_.refcount_table_clusters = static_cast<u32>(k);
  rt_ = std::move(nrt);
  rt_dirty_.assign(rt_.size(), false);
  any_rt_dirty_ = false;
  for (u64 c = 0; c < old_k; c++) meta_.erase(old_off / cs_ + c);
  for (u64 c = T; c < T + k + m; c++) meta_.insert(c);
  end_cluster_ = std::max(end_cluster_, T + k + m);
  // The header no longer points at the old table.
  for (u64 c = 0; c < old_k; c++) {
    add_refcount(old_off / cs_ + c, -1);
    if (get_refcount(old_off / cs_ + c) == 0) free_hint_ = std::min(free_hint_, old_off / cs_ + c);
  }
}

}  // namespace popek::block
