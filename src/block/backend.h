// The block layer's one interface: a virtual disk of size() bytes that a device
// reads, writes, flushes and discards. Formats (raw, qcow2) implement the
// protected do_* methods; the public methods serialize callers with a mutex so
// the synchronous calls and the asynchronous queue may be mixed.
//
// Asynchronous path: submit() queues a request and returns at once; a worker
// thread runs requests in submission order (a flush completes after every
// request submitted before it). Completions are collected with reap(); the
// eventfd returned by event_fd() becomes readable whenever completions are
// waiting, so a device can poll it or sleep on it in its event loop.
#pragma once
#include <sys/uio.h>

#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "base/types.h"

namespace popek::block {

enum class Op : u8 { read, write, flush, discard, write_zeroes };

struct Request {
  Op op = Op::read;
  u64 offset = 0;
  u64 length = 0;                // for discard/write_zeroes; read/write use iov
  std::vector<struct iovec> iov;  // the caller keeps buffers alive until completion
  u64 tag = 0;                   // returned in the completion
};

struct Completion {
  u64 tag = 0;
  bool ok = true;
  std::string error;  // set when !ok
};

class BlockBackend {
 public:
  virtual ~BlockBackend();
  BlockBackend(const BlockBackend&) = delete;
  BlockBackend& operator=(const BlockBackend&) = delete;

  // Virtual disk size in bytes.
  u64 size() const { return size_; }
  bool read_only() const { return read_only_; }
  const std::string& name() const { return name_; }
  virtual std::string format() const = 0;

  // Synchronous I/O. Ranges must lie within size(). Errors throw popek::Error.
  void read(u64 off, void* buf, usize len);
  void write(u64 off, const void* buf, usize len);
  void readv(u64 off, const struct iovec* iov, int iovcnt);
  void writev(u64 off, const struct iovec* iov, int iovcnt);
  // Makes every completed write durable (the guest's FLUSH).
  void flush();
  // After discard the range's contents are unspecified but reads return zeros
  // in both formats here; the space is given back where possible.
  void discard(u64 off, u64 len);
  // The range reads as zeros afterwards.
  void write_zeroes(u64 off, u64 len);

  // Asynchronous submission (see the header comment).
  void submit(Request req);
  // Appends finished completions to out; returns how many. Never blocks.
  usize reap(std::vector<Completion>& out);
  // Blocks until at least one completion is waiting (or timeout_ms passes).
  void wait(int timeout_ms = -1);
  int event_fd();

 protected:
  BlockBackend(std::string name, bool read_only);
  virtual void do_read(u64 off, void* buf, usize len) = 0;
  virtual void do_write(u64 off, const void* buf, usize len) = 0;
  virtual void do_flush() = 0;
  virtual void do_discard(u64 off, u64 len) = 0;
  virtual void do_write_zeroes(u64 off, u64 len) = 0;
  void check_range(u64 off, u64 len, const char* what) const;
  // Joins the async worker; every format's destructor calls it first, so the
  // worker never runs a request on a half-destroyed object.
  void stop_async();
  void check_writable(const char* what) const;

  u64 size_ = 0;
  std::string name_;
  bool read_only_;

 private:
  void run(Request& r);
  std::mutex mu_;
  struct Async;
  std::unique_ptr<Async> async_;
  std::mutex async_mu_;
};

struct OpenOptions {
  std::string format;         // "raw", "qcow2", or "" to detect from the file
  bool read_only = false;
  bool open_backing = true;   // false: an image with a backing file fails to open
  int max_backing_depth = 16;
  usize l2_cache_tables = 64;
  // For `img check`: open an image whose tables are damaged (they are then
  // reported by check() instead of refusing the open), and allow a writable
  // open of an image marked corrupt so that check() can repair refcounts.
  bool for_check = false;
};

// Opens an image file. Detects the format from the first bytes unless
// opts.format is set. Throws popek::Error with the file name on failure.
std::unique_ptr<BlockBackend> open_image(const std::string& path, const OpenOptions& opts = {});

// "qcow2" if the file begins with the qcow2 magic, else "raw".
std::string probe_format(const std::string& path);

}  // namespace popek::block
