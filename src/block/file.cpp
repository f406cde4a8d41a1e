#include "block/file.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "base/error.h"

namespace popek::block {

namespace {

std::string errno_msg(const std::string& file, const char* op) {
  return file + ": " + op + " failed: " + std::strerror(errno);
}

class PosixFile : public File {
 public:
  PosixFile(std::string name, int fd, bool writable) : fd_(fd) {
    name_ = std::move(name);
    writable_ = writable;
  }
  ~PosixFile() override { ::close(fd_); }

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
  return std::make_unique<PosixFile>(path, fd, writable);
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
