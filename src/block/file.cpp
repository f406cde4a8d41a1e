#include "block/file.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <mutex>
#include <thread>
#include <vector>

#include "base/error.h"

namespace popek::block {

namespace {

std::string errno_msg(const std::string& file, const char* op) {
  return file + ": " + op + " failed: " + std::strerror(errno);
}

// The writable images open in this process (for the migration's lock
// hand-over).
struct LockedFile {
  int fd;
  std::string name;
  bool locked;
};
std::mutex g_locks_mu;
std::vector<LockedFile> g_locked;
bool g_defer_locks = false;

// 0, or errno (EAGAIN/EACCES: another process holds it).
int set_lock(int fd, bool lock) {
  struct flock fl {};
  fl.l_type = lock ? F_WRLCK : F_UNLCK;
  fl.l_whence = SEEK_SET;
  fl.l_start = 0;
  fl.l_len = 0;  // the whole file
  return ::fcntl(fd, F_OFD_SETLK, &fl) == 0 ? 0 : errno;
}

std::string locked_msg(const std::string& name) {
  return name + ": the image is locked by another process (another popek writes it?); "
                "two VMs must not write one image";
}

class PosixFile : public File {
 public:
  PosixFile(std::string name, int fd, bool writable) : fd_(fd) {
    name_ = std::move(name);
    writable_ = writable;
  }
  ~PosixFile() override {
    if (writable_) {
      std::lock_guard<std::mutex> lk(g_locks_mu);
      g_locked.erase(std::remove_if(g_locked.begin(), g_locked.end(), [&](const LockedFile& f) { return f.fd == fd_; }),
                     g_locked.end());
    }
    ::close(fd_);
  }

  usize read_at(u64 off, void* buf, usize len) override {
    u8* p = static_cast<u8*>(buf);
    usize done = 0;
    while (done < len) {
      ssize_t n = ::pread(fd_, p + done, len - done, static_cast<off_t>(off + done));
      if (n < 0) {
        if (errno == EINTR) continue;
        throw Error(errno_msg(name_, "read"));
      }
      if (n == 0) break;
      done += static_cast<usize>(n);
    }
    if (done < len) std::memset(p + done, 0, len - done);
    return done;
  }

  void write_at(u64 off, const void* buf, usize len) override {
    if (!writable_) throw Error(name_ + ": write to a file opened read-only");
    const u8* p = static_cast<const u8*>(buf);
    usize done = 0;
    while (done < len) {
      ssize_t n = ::pwrite(fd_, p + done, len - done, static_cast<off_t>(off + done));
      if (n < 0) {
        if (errno == EINTR) continue;
        throw Error(errno_msg(name_, "write"));
      }
      done += static_cast<usize>(n);
    }
  }

  u64 size() override {
    struct stat st;
    if (::fstat(fd_, &st) != 0) throw Error(errno_msg(name_, "stat"));
    return static_cast<u64>(st.st_size);
  }

  void truncate(u64 size) override {
    if (::ftruncate(fd_, static_cast<off_t>(size)) != 0) throw Error(errno_msg(name_, "truncate"));
  }

  void sync() override {
    if (::fdatasync(fd_) != 0) throw Error(errno_msg(name_, "fdatasync"));
  }

  bool punch_hole(u64 off, u64 len) override {
    if (len == 0) return true;
    return ::fallocate(fd_, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, static_cast<off_t>(off),
                       static_cast<off_t>(len)) == 0;
  }

  u64 allocated_bytes() override {
    struct stat st;
    if (::fstat(fd_, &st) != 0) throw Error(errno_msg(name_, "stat"));
    return static_cast<u64>(st.st_blocks) * 512;
  }

 private:
  int fd_;
};

}  // namespace

void File::read_exact(u64 off, void* buf, usize len, const char* what) {
  if (off > size() || size() - off < len)
    throw Error(name_ + ": " + what + " at offset " + std::to_string(off) + " (" +
                std::to_string(len) + " bytes) lies past the end of the file");
  read_at(off, buf, len);
}

std::unique_ptr<File> open_posix_file(const std::string& path, bool writable) {
  int fd = ::open(path.c_str(), (writable ? O_RDWR : O_RDONLY) | O_CLOEXEC);
  if (fd < 0) throw Error(errno_msg(path, "open"));
  struct stat st;
  if (::fstat(fd, &st) != 0 || !(S_ISREG(st.st_mode) || S_ISBLK(st.st_mode))) {
    ::close(fd);
    throw Error(path + ": not a regular file or block device");
  }
  if (writable) {
    std::lock_guard<std::mutex> lk(g_locks_mu);
    bool locked = false;
    if (!g_defer_locks) {
      if (int e = set_lock(fd, true)) {
        ::close(fd);
        if (e == EAGAIN || e == EACCES) throw Error(locked_msg(path));
        throw Error(path + ": cannot lock the image (fcntl F_OFD_SETLK): " + std::strerror(e));
      }
      locked = true;
    }
    g_locked.push_back({fd, path, locked});
  }
  return std::make_unique<PosixFile>(path, fd, writable);
}

void set_defer_image_locks(bool defer) {
  std::lock_guard<std::mutex> lk(g_locks_mu);
  g_defer_locks = defer;
}

void release_image_locks() {
  std::lock_guard<std::mutex> lk(g_locks_mu);
  for (auto& f : g_locked)
    if (f.locked) {
      set_lock(f.fd, false);
      f.locked = false;
    }
}

void acquire_image_locks(int timeout_ms) {
  const auto end = std::chrono::steady_clock::now() + std::chrono::milliseconds(timeout_ms);
  std::unique_lock<std::mutex> lk(g_locks_mu);
  for (;;) {
    std::string busy;
    for (auto& f : g_locked) {
      if (f.locked) continue;
      const int e = set_lock(f.fd, true);
      if (e == 0) {
        f.locked = true;
      } else if (e == EAGAIN || e == EACCES) {
        busy = f.name;
      } else {
        throw Error(f.name + ": cannot lock the image (fcntl F_OFD_SETLK): " + std::strerror(e));
      }
    }
    if (busy.empty()) return;
    if (std::chrono::steady_clock::now() >= end) throw Error(locked_msg(busy));
    lk.unlock();
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
    lk.lock();
  }
}

std::unique_ptr<File> create_posix_file(const std::string& path) {
  int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) throw Error(errno_msg(path, "create"));
  return std::make_unique<PosixFile>(path, fd, true);
}

MemFile::MemFile(std::string name, std::vector<u8> data, bool writable, u64 max_size)
    : data_(std::move(data)), max_size_(max_size) {
  name_ = std::move(name);
  writable_ = writable;
}

usize MemFile::read_at(u64 off, void* buf, usize len) {
  u8* p = static_cast<u8*>(buf);
  usize avail = off < data_.size() ? std::min<u64>(len, data_.size() - off) : 0;
  if (avail) std::memcpy(p, data_.data() + off, avail);
  if (avail < len) std::memset(p + avail, 0, len - avail);
  return avail;
}

void MemFile::write_at(u64 off, const void* buf, usize len) {
  if (!writable_) throw Error(name_ + ": write to a file opened read-only");
  if (off + len > max_size_ || off + len < off)
    throw Error(name_ + ": write past the in-memory file limit");
  if (off + len > data_.size()) data_.resize(off + len);
  std::memcpy(data_.data() + off, buf, len);
}

void MemFile::truncate(u64 size) {
  if (size > max_size_) throw Error(name_ + ": truncate past the in-memory file limit");
  data_.resize(size);
}

bool MemFile::punch_hole(u64 off, u64 len) {
  if (off >= data_.size()) return true;
  u64 n = std::min<u64>(len, data_.size() - off);
  std::memset(data_.data() + off, 0, n);
  return true;
}

}  // namespace popek::block
