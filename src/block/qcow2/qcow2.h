// The qcow2 backend: a growable image file with two-level cluster tables
// (L1 -> L2 -> data), reference-counted clusters, zero clusters, compressed
// clusters (read), and an optional backing image read through until a cluster
// is first written (copy-on-write).
//
// Crash safety comes from the order of writes, never from the dirty bit:
//  * a new cluster's refcount reaches the disk before any table points to it,
//  * a new table's contents reach the disk before its parent points to it,
//  * a cluster's refcount is decremented only after the table entry that
//    referenced it has been durably changed.
// Guest data goes straight to its cluster; table updates are cached and
// written (with fdatasync barriers between the steps above) on flush or when
// the cache must evict. A process killed at any point thus leaves at worst
// leaked clusters, and every write completed before a finished flush survives.
#pragma once
#include <memory>
#include <string>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include "block/backend.h"
#include "block/file.h"
#include "block/qcow2/format.h"

namespace popek::block {

struct CheckResult {
  u64 corruptions = 0;     // errors that make the image unsafe to write
  u64 leaks = 0;           // clusters with a refcount but no reference
  u64 check_errors = 0;    // metadata that could not be read
  u64 corruptions_fixed = 0;
  u64 leaks_fixed = 0;
  u64 allocated_clusters = 0;  // guest clusters with data in this image
  u64 total_clusters = 0;      // guest clusters of the virtual disk
  u64 compressed_clusters = 0;
  u64 image_end_offset = 0;
  std::vector<std::string> messages;  // one line per problem (capped)
  bool clean() const { return corruptions == 0 && leaks == 0 && check_errors == 0; }
};

enum class Repair { none, leaks, all };

class Qcow2Backend final : public BlockBackend {
 public:
  // Opens an image on f. `backing` is opened by the caller (see open_image)
  // from header().backing_file; pass nullptr when the image has none.
  Qcow2Backend(std::unique_ptr<File> f, const OpenOptions& opts);
  ~Qcow2Backend() override;
  std::string format() const override { return "qcow2"; }

  const qcow2::Header& header() const { return h_; }
  File& file() { return *file_; }
  void set_backing(std::unique_ptr<BlockBackend> b) { backing_ = std::move(b); }
  BlockBackend* backing() { return backing_.get(); }

  // Walks all metadata, compares computed references with the stored
  // refcounts, and optionally repairs refcounts (which needs a writable image).
  CheckResult check(Repair repair = Repair::none);

  // Statistics for tests and `--stats`.
  struct Stats {
    u64 l2_hits = 0, l2_misses = 0, allocations = 0, cow_reads = 0, syncs = 0, writebacks = 0;
  };
  const Stats& stats() const { return stats_; }

 protected:
  void do_read(u64 off, void* buf, usize len) override;
  void do_write(u64 off, const void* buf, usize len) override;
  void do_flush() override;
  void do_discard(u64 off, u64 len) override;
  void do_write_zeroes(u64 off, u64 len) override;

 private:
  struct L2Slot {
    u64 offset = 0;  // host offset of the table; 0 = empty slot
    std::vector<u64> e;
    bool dirty = false;
    bool fresh = false;  // not yet referenced by the L1 table on disk
    u64 used = 0;
  };
  struct RcBlock {
    std::vector<u8> raw;  // on-disk bytes
    bool dirty = false;
    u64 used = 0;
  };
  enum class Kind { unallocated, zero, normal, compressed };

  // Metadata access.
  [[noreturn]] void corrupt(const std::string& what);
  void validate_tables_at_open();
  L2Slot* get_l2(u64 l1_index, bool allocate);
  void evict_l2_if_full();
  Kind classify(u64 entry, u64* host) const;
  void read_compressed(u64 entry, u8* out);
  void read_backing(u64 off, u8* buf, usize len);
  void write_back();  // writes all cached metadata in crash-safe order
  void sync();

  // Refcounts and allocation (refcount.cpp).
  u64 refcount_bits() const { return 1ull << h_.refcount_order; }
  u64 refcount_max() const { return h_.refcount_order == 6 ? ~0ull : (1ull << refcount_bits()) - 1; }
  RcBlock* get_rc_block(u64 block_index, bool create, u64 exclude_lo, u64 exclude_hi);
  u64 get_refcount(u64 cluster);
  void set_refcount(u64 cluster, u64 value, u64 exclude_lo = 0, u64 exclude_hi = 0);
  void add_refcount(u64 cluster, i64 delta, u64 exclude_lo = 0, u64 exclude_hi = 0);
  u64 alloc_clusters(u64 n);  // returns the host offset of n contiguous clusters
  void free_later(u64 host_offset, u64 bytes);  // decrement after the next durable L2 update
  void apply_deferred_frees();
  void grow_refcount_table(u64 min_entries);
  void evict_rc_if_full();
  bool is_metadata(u64 cluster) const { return meta_.count(cluster) != 0; }

  // Guest I/O helpers.
  void write_cluster_part(u64 guest_off, const u8* data, usize len, bool zero);
  void zero_or_discard(u64 off, u64 len, bool discard);

  std::unique_ptr<File> file_;
  std::unique_ptr<BlockBackend> backing_;
  qcow2::Header h_;
  u64 cs_ = 0;           // cluster size
  u32 cb_ = 0;           // cluster bits
  u64 l2_entries_ = 0;
  u64 rc_per_block_ = 0;
  std::vector<u64> l1_;
  std::vector<bool> l1_dirty_;
  bool any_l1_dirty_ = false;
  std::vector<L2Slot> l2_;
  std::unordered_map<u64, usize> l2_index_;  // table offset -> slot
  std::vector<u64> rt_;
  std::vector<bool> rt_dirty_;
  bool any_rt_dirty_ = false;
  std::unordered_map<u64, RcBlock> rc_;  // block index -> block
  usize rc_capacity_ = 64;
  std::unordered_set<u64> meta_;  // cluster indices holding metadata
  std::vector<std::pair<u64, u64>> deferred_;
  u64 free_hint_ = 0;
  u64 end_cluster_ = 0;  // first cluster past everything allocated or in the file
  u64 tick_ = 0;
  bool unsynced_ = false;  // written since the last fdatasync
  bool for_check_ = false;
  std::vector<u8> scratch_;
  std::string failed_;
  // One-cluster cache of the last decompressed cluster.
  u64 zcache_entry_ = 0;
  std::vector<u8> zcache_;
  Stats stats_;
};

}  // namespace popek::block
