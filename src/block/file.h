// Host storage under a disk image: a POSIX file, or (for tests and the fuzz
// target) a byte vector in memory. Every error is a popek::Error that names the
// file and the operation.
#pragma once
#include <memory>
#include <string>
#include <vector>

#include "base/types.h"

namespace popek::block {

class File {
 public:
  virtual ~File() = default;
  const std::string& name() const { return name_; }
  bool writable() const { return writable_; }

  // Reads up to len bytes; bytes past end of file read as zero. Returns the
  // number of bytes that came from the file.
  virtual usize read_at(u64 off, void* buf, usize len) = 0;
  virtual void write_at(u64 off, const void* buf, usize len) = 0;
  virtual u64 size() = 0;
  virtual void truncate(u64 size) = 0;
  // Makes written data durable (fdatasync).
  virtual void sync() = 0;
  // Deallocates the range so it reads as zeros, keeping the file size; returns
  // false if the file system cannot do that (the caller then writes zeros).
  virtual bool punch_hole(u64 off, u64 len) = 0;
  // Bytes actually allocated on the host (st_blocks), for `img info`.
  virtual u64 allocated_bytes() = 0;

  // Reads exactly len bytes or throws (used for metadata that must exist).
  void read_exact(u64 off, void* buf, usize len, const char* what);

 protected:
  std::string name_;
  bool writable_ = false;
};

// Opens an existing file. Throws popek::Error naming the file and errno.
std::unique_ptr<File> open_posix_file(const std::string& path, bool writable);
// Image locks: a file opened for writing takes an fcntl OFD write lock on
// the whole file (as QEMU does), so that two popeks never write one image; a
// file another process holds so is refused with a clear error. A live
// migration hands the locks over: the source releases its own at
// switch-over (after flushing), the destination opens its images with the
// locks deferred and takes them when the stream is complete.
// Process-wide; thread-safe.
void set_defer_image_locks(bool defer);  // opens from now on do not lock
void release_image_locks();              // every open image's lock, released
// Takes every open writable image's lock, retrying up to timeout_ms while
// another process holds one; throws naming the image.
void acquire_image_locks(int timeout_ms);
// Creates (or truncates) a file for writing.
std::unique_ptr<File> create_posix_file(const std::string& path);

// An in-memory file. `data` is shared so a test can look at the bytes.
class MemFile : public File {
 public:
  MemFile(std::string name, std::vector<u8> data, bool writable, u64 max_size = 1ull << 32);
  usize read_at(u64 off, void* buf, usize len) override;
  void write_at(u64 off, const void* buf, usize len) override;
  u64 size() override { return data_.size(); }
  void truncate(u64 size) override;
  void sync() override { syncs_++; }
  bool punch_hole(u64 off, u64 len) override;
  u64 allocated_bytes() override { return data_.size(); }
  const std::vector<u8>& data() const { return data_; }
  u64 syncs() const { return syncs_; }

 private:
  std::vector<u8> data_;
  u64 max_size_;
  u64 syncs_ = 0;
};

}  // namespace popek::block
