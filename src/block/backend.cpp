#include "block/backend.h"

#include <poll.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <cerrno>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <thread>

#include "base/error.h"

namespace popek::block {

struct BlockBackend::Async {
  std::mutex mu;
  std::condition_variable cv;
  std::deque<Request> pending;
  std::vector<Completion> done;
  bool stop = false;
  int efd = -1;
  std::thread worker;
};

BlockBackend::BlockBackend(std::string name, bool read_only)
    : name_(std::move(name)), read_only_(read_only) {}

BlockBackend::~BlockBackend() { stop_async(); }

// Requests still queued when a backend is destroyed are dropped.
void BlockBackend::stop_async() {
  std::lock_guard<std::mutex> g(async_mu_);
  if (async_) {
    {
      std::lock_guard<std::mutex> lk(async_->mu);
      async_->stop = true;
    }
    async_->cv.notify_all();
    if (async_->worker.joinable()) async_->worker.join();
    ::close(async_->efd);
    async_.reset();
  }
}

void BlockBackend::check_range(u64 off, u64 len, const char* what) const {
  if (off > size_ || len > size_ - off)
    throw Error(name_ + ": " + what + " of " + std::to_string(len) + " bytes at offset " +
                std::to_string(off) + " is past the end of the disk (" + std::to_string(size_) +
                " bytes)");
}

void BlockBackend::check_writable(const char* what) const {
  if (read_only_) throw Error(name_ + ": " + what + " on an image opened read-only");
}

void BlockBackend::read(u64 off, void* buf, usize len) {
  check_range(off, len, "read");
  std::lock_guard<std::mutex> lk(mu_);
  do_read(off, buf, len);
}

void BlockBackend::write(u64 off, const void* buf, usize len) {
  check_writable("write");
  check_range(off, len, "write");
  std::lock_guard<std::mutex> lk(mu_);
  do_write(off, buf, len);
}

void BlockBackend::readv(u64 off, const struct iovec* iov, int iovcnt) {
  for (int i = 0; i < iovcnt; i++) {
    read(off, iov[i].iov_base, iov[i].iov_len);
    off += iov[i].iov_len;
  }
}

void BlockBackend::writev(u64 off, const struct iovec* iov, int iovcnt) {
  for (int i = 0; i < iovcnt; i++) {
    write(off, iov[i].iov_base, iov[i].iov_len);
    off += iov[i].iov_len;
  }
}

void BlockBackend::flush() {
  if (read_only_) return;
  std::lock_guard<std::mutex> lk(mu_);
  do_flush();
}

void BlockBackend::discard(u64 off, u64 len) {
  check_writable("discard");
  check_range(off, len, "discard");
  std::lock_guard<std::mutex> lk(mu_);
  do_discard(off, len);
}

void BlockBackend::write_zeroes(u64 off, u64 len) {
  check_writable("write-zeroes");
  check_range(off, len, "write-zeroes");
  std::lock_guard<std::mutex> lk(mu_);
  do_write_zeroes(off, len);
}

void BlockBackend::run(Request& r) {
  switch (r.op) {
    case Op::read: readv(r.offset, r.iov.data(), static_cast<int>(r.iov.size())); break;
    case Op::write: writev(r.offset, r.iov.data(), static_cast<int>(r.iov.size())); break;
    case Op::flush: flush(); break;
    case Op::discard: discard(r.offset, r.length); break;
    case Op::write_zeroes: write_zeroes(r.offset, r.length); break;
  }
}

int BlockBackend::event_fd() {
  std::lock_guard<std::mutex> lk(async_mu_);
  if (!async_) {
    auto a = std::make_unique<Async>();
    a->efd = ::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (a->efd < 0) throw Error(name_ + ": eventfd failed: " + std::strerror(errno));
    Async* ap = a.get();
    a->worker = std::thread([this, ap] {
      std::unique_lock<std::mutex> lk(ap->mu);
      for (;;) {
        ap->cv.wait(lk, [ap] { return ap->stop || !ap->pending.empty(); });
        if (ap->stop) return;
        Request r = std::move(ap->pending.front());
        ap->pending.pop_front();
        lk.unlock();
        Completion c;
        c.tag = r.tag;
        try {
          run(r);
        } catch (const std::exception& e) {
          c.ok = false;
          c.error = e.what();
        }
        lk.lock();
        ap->done.push_back(std::move(c));
        u64 one = 1;
        [[maybe_unused]] ssize_t n = ::write(ap->efd, &one, sizeof one);
      }
    });
    async_ = std::move(a);
  }
  return async_->efd;
}

void BlockBackend::submit(Request req) {
  event_fd();  // starts the worker on first use
  {
    std::lock_guard<std::mutex> lk(async_->mu);
    async_->pending.push_back(std::move(req));
  }
  async_->cv.notify_one();
}

usize BlockBackend::reap(std::vector<Completion>& out) {
  if (!async_) return 0;
  u64 v;
  [[maybe_unused]] ssize_t n = ::read(async_->efd, &v, sizeof v);  // clears the counter
  std::lock_guard<std::mutex> lk(async_->mu);
  usize k = async_->done.size();
  for (auto& c : async_->done) out.push_back(std::move(c));
  async_->done.clear();
  return k;
}

void BlockBackend::wait(int timeout_ms) {
  struct pollfd p{event_fd(), POLLIN, 0};
  {
    std::lock_guard<std::mutex> lk(async_->mu);
    if (!async_->done.empty()) return;
  }
  ::poll(&p, 1, timeout_ms);
}

}  // namespace popek::block
