// qcow2 consistency check: recompute every cluster's reference count from the
// metadata and compare it with the stored refcounts, like `qemu-img check`.
#include <algorithm>
#include <cstring>

#include "base/error.h"
#include "block/qcow2/qcow2.h"

namespace popek::block {

using namespace qcow2;

namespace {
std::string hex(u64 v) {
  char b[24];
  std::snprintf(b, sizeof b, "0x%llx", static_cast<unsigned long long>(v));
  return b;
}
}  // namespace

CheckResult Qcow2Backend::check(Repair repair) {
  if (repair != Repair::none && read_only_)
    throw Error(name_ + ": repairing needs the image opened for writing");
  if (!read_only_) {
    if (!failed_.empty()) throw Error(failed_);
    write_back();
  }
  CheckResult r;
  auto msg = [&](const std::string& m) {
    if (r.messages.size() < 200) r.messages.push_back(m);
  };
  const u64 fsize = file_->size();
  const u64 nclusters = (fsize + cs_ - 1) / cs_;
  std::vector<u16> ref(nclusters, 0);  // saturating: only 0, 1 and 'more' matter
  u64 highest = 0;
  auto add = [&](u64 off, u64 len, const std::string& what) -> bool {
    if (len == 0) return true;
    if (off >= fsize || len > fsize - off) {
      if (off >= fsize || (off + len + cs_ - 1) / cs_ > nclusters) {
        r.corruptions++;
        msg("ERROR " + what + " at " + hex(off) + " lies past the end of the file");
        return false;
      }
    }
    for (u64 c = off / cs_, e = (off + len - 1) / cs_; c <= e; c++) {
      if (ref[c] != 0xffff) ref[c]++;
      highest = std::max(highest, c + 1);
    }
    return true;
  };

  add(0, cs_, "header");
  add(h_.l1_table_offset, static_cast<u64>(h_.l1_size) * 8, "L1 table");
  add(h_.refcount_table_offset, static_cast<u64>(h_.refcount_table_clusters) * cs_,
      "refcount table");
  for (usize i = 0; i < rt_.size(); i++) {
    u64 off = rt_[i] & ~511ull;
    if (!off) continue;
    if (off % cs_) {
      r.corruptions++;
      msg("ERROR refcount block " + std::to_string(i) + " at " + hex(off) + " is not cluster aligned");
      continue;
    }
    add(off, cs_, "refcount block " + std::to_string(i));
  }

  // Stored refcount, or nullopt-like failure counted as a check error.
  auto stored = [&](u64 c, bool* ok) -> u64 {
    try {
      *ok = true;
      return get_refcount(c);
    } catch (const Error& e) {
      *ok = false;
      return 0;
    }
  };
  auto check_copied = [&](u64 c, bool flag, const std::string& what) {
    bool ok;
    u64 rc = stored(c, &ok);
    if (ok && flag != (rc == 1)) {
      r.corruptions++;
      msg("ERROR OFLAG_COPIED " + what + ": refcount=" + std::to_string(rc) +
          (flag ? " but the copied flag is set" : " but the copied flag is clear"));
    }
  };

  const u32 x = 62 - (cb_ - 8);
  std::vector<u64> table(l2_entries_);
  for (usize i = 0; i < l1_.size(); i++) {
    const u64 le = l1_[i];
    const u64 off = le & kOffsetMask;
    if (!off) continue;
    std::string what = "L2 table (L1 entry " + std::to_string(i) + ")";
    if (le & kL1Reserved) {
      r.corruptions++;
      msg("ERROR " + what + ": reserved bits set in L1 entry " + hex(le));
    }
    if (off % cs_) {
      r.corruptions++;
      msg("ERROR " + what + " at " + hex(off) + " is not cluster aligned");
      continue;
    }
    if (!add(off, cs_, what)) continue;
    if (ref[off / cs_] > 1) continue;  // reported as a refcount mismatch; walk once
    check_copied(off / cs_, le & kCopied, what + " at " + hex(off));
    auto it = l2_index_.find(off);
    if (it != l2_index_.end()) {
      table = l2_[it->second].e;
    } else {
      file_->read_at(off, table.data(), cs_);
      for (auto& v : table) v = __builtin_bswap64(v);
    }
    for (u64 j = 0; j < l2_entries_; j++) {
      const u64 e = table[j];
      const u64 guest = (static_cast<u64>(i) * l2_entries_ + j) * cs_;
      if (guest >= size_) {
        if (e) {
          r.corruptions++;
          msg("ERROR L2 entry for guest offset " + hex(guest) + " lies beyond the virtual disk");
        }
        continue;
      }
      if (e & kCompressed) {
        const u64 coff = e & ((1ull << x) - 1);
        const u64 nsec = ((e >> x) & ((1ull << (cb_ - 8)) - 1)) + 1;
        u64 end = (coff & ~511ull) + nsec * 512;
        if (end > fsize) end = std::max(fsize, coff + 1);  // the last sector may be short
        if (e & kCopied) {
          r.corruptions++;
          msg("ERROR compressed cluster for guest offset " + hex(guest) + " has the copied flag");
        }
        if (coff < cs_) {
          r.corruptions++;
          msg("ERROR compressed cluster for guest offset " + hex(guest) + " points into the header");
          continue;
        }
        add(coff, end - coff, "compressed cluster for guest offset " + hex(guest));
        r.allocated_clusters++;
        r.compressed_clusters++;
        continue;
      }
      const u64 host = e & kOffsetMask;
      const bool zero = h_.version >= 3 && (e & kZeroFlag);
      if (e & kL2StdReserved || (h_.version < 3 && (e & kZeroFlag))) {
        r.corruptions++;
        msg("ERROR L2 entry for guest offset " + hex(guest) + " has reserved bits set: " + hex(e));
      }
      if (!host) continue;
      if (host % cs_) {
        r.corruptions++;
        msg("ERROR data cluster for guest offset " + hex(guest) + " at " + hex(host) +
            " is not cluster aligned");
        continue;
      }
      if (!add(host, cs_, "data cluster for guest offset " + hex(guest))) continue;
      if (!zero) r.allocated_clusters++;
      check_copied(host / cs_, e & kCopied, "data cluster for guest offset " + hex(guest));
    }
  }

  // Compare with the stored refcounts, including refcounts for clusters past
  // the end of the file (leaked by a crash before the file grew).
  std::vector<std::pair<u64, u64>> fixes;  // cluster, wanted refcount
  u64 last = nclusters;
  for (usize bi = 0; bi < rt_.size(); bi++)
    if (rt_[bi] & ~511ull) last = std::max<u64>(last, (bi + 1) * rc_per_block_);
  for (u64 c = 0; c < last; c++) {
    if (c >= nclusters) {
      u64 bi = c / rc_per_block_;
      if (bi >= rt_.size() || !(rt_[bi] & ~511ull)) {
        c = (bi + 1) * rc_per_block_ - 1;
        continue;
      }
    }
    bool ok;
    u64 s = stored(c, &ok);
    if (!ok) {
      r.check_errors++;
      msg("ERROR cannot read the refcount of cluster " + std::to_string(c) +
          " (its refcount block is damaged)");
      c = (c / rc_per_block_ + 1) * rc_per_block_ - 1;
      continue;
    }
    u64 want = c < nclusters ? ref[c] : 0;
    if (s == want) continue;
    if (s < want) {
      r.corruptions++;
      msg("ERROR cluster " + std::to_string(c) + " refcount=" + std::to_string(s) +
          " reference=" + std::to_string(want));
      if (repair == Repair::all) fixes.emplace_back(c, want);
    } else {
      r.leaks++;
      msg("Leaked cluster " + std::to_string(c) + " refcount=" + std::to_string(s) +
          " reference=" + std::to_string(want));
      if (repair != Repair::none) fixes.emplace_back(c, want);
    }
  }
  r.total_clusters = (size_ + cs_ - 1) / cs_;
  r.image_end_offset = highest * cs_;

  if (!fixes.empty()) {
    u64 fixed_leaks = 0, fixed_corruptions = 0;
    for (auto [c, want] : fixes) {
      bool ok;
      u64 s = stored(c, &ok);
      try {
        set_refcount(c, want);
        (s > want ? fixed_leaks : fixed_corruptions)++;
      } catch (const Error& e) {
        msg(std::string("ERROR could not repair: ") + e.what());
      }
    }
    write_back();
    if (unsynced_) sync();
    // Repairs may have allocated refcount blocks; check once more.
    CheckResult again = check(Repair::none);
    again.leaks_fixed = fixed_leaks;
    again.corruptions_fixed = fixed_corruptions;
    std::vector<std::string> m = std::move(r.messages);
    m.insert(m.end(), again.messages.begin(), again.messages.end());
    again.messages = std::move(m);
    if (repair == Repair::all && (h_.incompatible & kIncompatCorrupt) && again.clean()) {
      u8 b[8];
      wr_be64(b, h_.incompatible & ~kIncompatCorrupt);
      file_->write_at(72, b, 8);
      sync();
      h_.incompatible &= ~kIncompatCorrupt;
    }
    return again;
  }
  if (repair == Repair::all && (h_.incompatible & kIncompatCorrupt) && r.clean()) {
    u8 b[8];
    wr_be64(b, h_.incompatible & ~kIncompatCorrupt);
    file_->write_at(72, b, 8);
    sync();
    h_.incompatible &= ~kIncompatCorrupt;
  }
  return r;
}

}  // namespace popek::block
