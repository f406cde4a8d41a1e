// Raw images: the file is the disk, byte for byte. Sparse where the host file
// system allows: creation only sets the size, and discard/write-zeroes punch
// holes.
#pragma once
#include <memory>
#include <string>

#include "block/backend.h"
#include "block/file.h"

namespace popek::block {

class RawBackend final : public BlockBackend {
 public:
  explicit RawBackend(std::unique_ptr<File> file);
  ~RawBackend() override;
  std::string format() const override { return "raw"; }
  File& file() { return *file_; }

 protected:
  void do_read(u64 off, void* buf, usize len) override;
  void do_write(u64 off, const void* buf, usize len) override;
  void do_flush() override;
  void do_discard(u64 off, u64 len) override;
  void do_write_zeroes(u64 off, u64 len) override;

 private:
  std::unique_ptr<File> file_;
};

// Creates a raw image of `size` bytes; `full` allocates every byte (zeros)
// instead of leaving the file sparse.
void create_raw(const std::string& path, u64 size, bool full = false);

}  // namespace popek::block
