// The machine-state stream: a versioned, self-describing format for
// suspend/resume (to a file) and, later, migration (over a socket).
//
// Layout (integers little-endian):
//   header   "POPEKVM\x1A", u32 format version (kFormatVersion), u32 flags (0)
//   section* "SECT", u8 name length, name, u32 section version,
//            u64 payload length, u32 CRC-32 (zlib's) of everything from the
//            name length to the end of the payload, then the payload
//   end      a section named "end" with an empty payload
// A payload is a list of typed fields: u8 type, u8 name length, name, value
// (u64: 8 bytes; i64: 8 bytes; bytes and string: u64 length, data).
//
// Sections are written and read one at a time, so a stream can be sent in
// passes (RAM as many "ram" sections of bounded size, device state at the
// end). Each section carries its own version: a component reads the fields
// its version had, and a field added later (with a version bump) leaves old
// streams readable. What a section means is up to the component that wrote
// it; this library knows nothing of CPUs or devices.
#pragma once
#include <cstring>
#include <functional>
#include <map>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "base/error.h"
#include "base/types.h"

namespace popek::snap {

inline constexpr char kMagic[8] = {'P', 'O', 'P', 'E', 'K', 'V', 'M', 0x1A};
inline constexpr u32 kFormatVersion = 1;
inline constexpr usize kMaxSection = usize(1) << 30;  // payload bytes, a sanity bound

// A malformed, truncated or corrupt stream, or one this popek cannot load.
class FormatError : public Error {
 public:
  using Error::Error;
};

// Where a stream goes / comes from: a file, a socket, memory.
class Sink {
 public:
  virtual ~Sink() = default;
  virtual void write(const void* data, usize len) = 0;  // throws popek::Error
};
class Source {
 public:
  virtual ~Source() = default;
  // Reads up to len bytes; returns fewer only at the end of the stream.
  virtual usize read(void* data, usize len) = 0;
};

class MemorySink final : public Sink {
 public:
  void write(const void* data, usize len) override;
  std::vector<u8> bytes;
};
class MemorySource final : public Source {
 public:
  explicit MemorySource(std::span<const u8> b) : b_(b) {}
  usize read(void* data, usize len) override;

 private:
  std::span<const u8> b_;
  usize at_ = 0;
};
// A file opened for writing (buffered, fsync'd by close()).
class FileSink final : public Sink {
 public:
  explicit FileSink(const std::string& path);
  ~FileSink() override;
  void write(const void* data, usize len) override;
  // Flushes, fsyncs and closes; throws on failure.
  void close();

 private:
  void flush_buf();
  std::string path_;
  int fd_ = -1;
  std::vector<u8> buf_;
};
class FileSource final : public Source {
 public:
  explicit FileSource(const std::string& path);
  ~FileSource() override;
  usize read(void* data, usize len) override;

 private:
  std::string path_;
  int fd_ = -1;
};

// A connected socket (or pipe), buffered; write errors throw popek::Error.
// The fd is not owned. A sink may be limited to `max_bytes_per_s` (0: no
// limit): writes then pace themselves (QMP's max-bandwidth).
class FdSink final : public Sink {
 public:
  explicit FdSink(int fd, std::string what) : fd_(fd), what_(std::move(what)) { buf_.reserve(1 << 18); }
  void write(const void* data, usize len) override;
  void flush();
  void set_rate_limit(u64 max_bytes_per_s) { rate_ = max_bytes_per_s; }
  u64 bytes() const { return total_; }

 private:
  void send(const u8* p, usize n);
  int fd_;
  std::string what_;
  std::vector<u8> buf_;
  u64 rate_ = 0, total_ = 0;
  u64 window_start_ns_ = 0, window_bytes_ = 0;
};
class FdSource final : public Source {
 public:
  FdSource(int fd, std::string what) : fd_(fd), what_(std::move(what)) {}
  usize read(void* data, usize len) override;

 private:
  int fd_;
  std::string what_;
};

enum class FieldType : u8 { u64 = 1, i64 = 2, bytes = 3, string = 4 };

// The fields of one section being written.
class SectionWriter {
 public:
  void u64v(std::string_view name, u64 v);
  void i64v(std::string_view name, i64 v);
  void bytes(std::string_view name, std::span<const u8> data);
  void str(std::string_view name, std::string_view s);
  // Fixed-size plain arrays (u8/u16/u32/u64 elements), stored as bytes.
  template <typename T, usize N>
  void array(std::string_view name, const T (&a)[N]) {
    bytes(name, std::span<const u8>(reinterpret_cast<const u8*>(a), sizeof a));
  }
  const std::vector<u8>& payload() const { return p_; }

 private:
  void head(FieldType t, std::string_view name);
  std::vector<u8> p_;
};

// Writes the header at construction, then sections.
class StreamWriter {
 public:
  explicit StreamWriter(Sink& sink);
  void section(std::string_view name, u32 version, const SectionWriter& fields);
  void end();
  u64 bytes_written() const { return bytes_; }

 private:
  void put(const void* p, usize n);
  Sink& sink_;
  u64 bytes_ = 0;
};

// One section read back: its fields by name. Getters throw FormatError
// naming the section and field when a field is missing or of another type.
class Section {
 public:
  std::string name;
  u32 version = 0;

  bool has(std::string_view field) const;
  u64 u64v(std::string_view field) const;
  u64 u64v(std::string_view field, u64 dflt) const;  // absent: dflt
  i64 i64v(std::string_view field) const;
  std::span<const u8> bytes(std::string_view field) const;
  std::string str(std::string_view field) const;
  // A bytes field of exactly sizeof a bytes into a plain array.
  template <typename T, usize N>
  void array(std::string_view field, T (&a)[N]) const {
    auto b = exact(field, sizeof a);
    std::memcpy(a, b.data(), sizeof a);
  }
  std::span<const u8> exact(std::string_view field, usize len) const;
  // Throws if a field was never read: a stream whose section holds more than
  // the loader understood is not loaded half-way.
  void check_all_read() const;
  [[noreturn]] void fail(const std::string& what) const;

  // Parses a payload (throws FormatError on malformed field lists).
  void parse(std::vector<u8> payload);

 private:
  struct Field {
    FieldType type;
    usize off, len;
  };
  const Field& get(std::string_view field, FieldType t) const;
  std::vector<u8> payload_;
  std::map<std::string, Field, std::less<>> fields_;
  mutable std::map<std::string, bool, std::less<>> read_;
};

// Reads and checks the header at construction, then sections in order.
// `what` names the stream in messages (e.g. the file name).
class StreamReader {
 public:
  StreamReader(Source& src, std::string what);
  // The next section; false at the "end" section. Throws FormatError on a
  // truncated stream, a checksum mismatch (naming the section), a malformed
  // payload.
  bool next(Section& out);
  u64 bytes_read() const { return bytes_; }
  const std::string& what() const { return what_; }

 private:
  void get(void* p, usize n, const char* context);
  Source& src_;
  std::string what_;
  u64 bytes_ = 0;
};

// Dispatch by section name, with the highest version each loader knows.
// Unknown sections and newer versions are refused with a message naming
// them; a section that is not `repeatable` may appear once.
class Loader {
 public:
  using Fn = std::function<void(const Section&)>;
  void on(std::string name, u32 max_version, Fn fn, bool repeatable = false);
  // Reads every section up to "end" and dispatches each; then checks that
  // every non-optional registered section was seen (names the missing one).
  void run(StreamReader& r);
  void optional(const std::string& name);

 private:
  struct Entry {
    u32 max_version;
    Fn fn;
    bool repeatable;
    bool optional = false;
    unsigned seen = 0;
  };
  std::map<std::string, Entry> entries_;
};

// RAM pages in sections: up to kPagesPerChunk pages per "ram" section, zero
// pages elided (a bitmap says which pages are present), the rest compressed
// with zstd. Page size 4 KiB.
inline constexpr u64 kPageSize = 4096;
inline constexpr u64 kPagesPerChunk = 1024;
inline constexpr u32 kRamVersion = 1;
struct RamStats {
  u64 pages = 0, zero_pages = 0, raw_bytes = 0, compressed_bytes = 0;
};
// Writes pages [first, first + count) of `base` (base points at page `first`)
// as "ram" sections.
void write_ram(StreamWriter& w, u64 first, u64 count, const u8* base, RamStats* st = nullptr);
// Loads one "ram" section: `page(ppn)` returns the host address of guest page
// ppn or null if it is not RAM (then the section is refused).
void load_ram(const Section& s, const std::function<u8*(u64 ppn)>& page);

// Pages named one by one, for the passes of a live migration after the
// first: a "ram-pages" section holds up to kPagesPerChunk page numbers and
// overwrites exactly those pages (other pages keep what earlier sections
// gave them); zero pages carry no data (a bitmap over the list says which).
inline constexpr u32 kRamPagesVersion = 1;
// `page(ppn)` gives the host address of page ppn to read from.
void write_ram_pages(StreamWriter& w, std::span<const u32> ppns, const std::function<const u8*(u64 ppn)>& page,
                     RamStats* st = nullptr);
void load_ram_pages(const Section& s, const std::function<u8*(u64 ppn)>& page);

}  // namespace popek::snap
