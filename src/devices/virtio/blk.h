// virtio-blk (virtio 1.x, 5.2) on a popek BlockBackend (raw or qcow2).
//
// Requests: read, write, flush, get-id (serial number), discard and
// write-zeroes (multi-segment); read-only disks offer VIRTIO_BLK_F_RO and fail
// writes with IOERR. Data moves straight between the disk and guest buffers
// (the iovecs point into guest RAM) on the backend's worker thread; the
// completion arrives on the backend's eventfd, which the board's event loop
// watches, and only then are the status byte and the used ring written, on
// the vCPU thread. So the vCPU never waits for the disk.
//
// Malformed requests (no device-readable 16-byte header, no device-writable
// status byte, read data in device-readable buffers) set DEVICE_NEEDS_RESET;
// well-formed requests with bad arguments (past the end of the disk, length
// not a multiple of 512, unknown type) complete with IOERR or UNSUPP.
#pragma once
#include <memory>
#include <string>
#include <vector>

#include "block/backend.h"
#include "devices/virtio/virtio_device.h"

namespace popek::dev::virtio {

class VirtioBlk final : public VirtioDevice {
 public:
  enum class Cache {
    writeback,     // a volatile write cache: the guest's FLUSH is fdatasync
    writethrough,  // every write is followed by fdatasync; no FLUSH offered
    unsafe,        // FLUSH offered and acknowledged without syncing
  };
  struct Options {
    std::string serial;     // GET_ID answer (at most 20 bytes)
    Cache cache = Cache::writeback;
    bool synchronous = false;  // complete requests at notify time (deterministic runs)
    u16 queue_size = 256;
  };
  VirtioBlk(std::string name, GuestMemory& mem, std::unique_ptr<block::BlockBackend> disk,
            Options opt);
  ~VirtioBlk() override;

  block::BlockBackend& disk() { return *disk_; }
  bool read_only() const { return disk_->read_only(); }
  // Requests submitted to the backend and not completed yet.
  usize in_flight() const { return in_flight_count_; }

  void io_fill(std::vector<pollfd>& fds, int* timeout_ms) override;
  void io_dispatch(const pollfd* fds, usize n) override;
  // Reaps finished requests (called by io_dispatch; public for tests).
  void complete_finished();
  // Blocks until every submitted request has completed (tests, reset).
  void drain();
  // Saving: every in-flight request completed into the ring, the image flushed.
  void quiesce() override;

  static constexpr u32 kSegMax = 126;
  static constexpr u32 kMaxDiscardSeg = 32;

 protected:
  u64 device_features() const override;
  void on_notify(unsigned q) override;
  void on_reset() override;

 private:
  struct Req {
    Chain chain;
    u8* status = nullptr;   // the status byte in guest RAM
    u64 status_gpa = 0;
    u32 used_len = 0;
    unsigned parts = 0;     // backend requests still running
    u8 result = 0;          // VIRTIO_BLK_S_*
    bool is_read = false;
    u64 bytes = 0;
    u32 type = 0;
    usize slot = 0;
    bool submitted = false;  // counted in in_flight_count_
    bool dropped = false;    // completed after a reset: write nothing back
  };
  void handle(Chain& c);
  void submit(Req* r, block::Request br);
  void finish(Req* r);
  void run_sync(Req* r, block::Request& br);
  void part_failed(Req* r, const std::string& why);
  void reap(bool deliver);

  std::unique_ptr<block::BlockBackend> disk_;
  Options opt_;
  std::vector<std::unique_ptr<Req>> slots_;  // tag = slot index
  std::vector<usize> free_slots_;
  usize in_flight_count_ = 0;
  u64 *reads_, *writes_, *flushes_, *discards_, *write_zeroes_, *get_ids_, *read_bytes_,
      *write_bytes_, *errors_, *unsupported_;
};

}  // namespace popek::dev::virtio
