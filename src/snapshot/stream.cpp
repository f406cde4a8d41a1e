#include "snapshot/stream.h"

#include <fcntl.h>
#include <sys/socket.h>
#include <unistd.h>
#include <zlib.h>
#include <zstd.h>

#include <time.h>

#include <cerrno>
#include <cstring>
#include <chrono>
#include <thread>

namespace popek::snap {

namespace {

void put_le(std::vector<u8>& v, u64 x, unsigned n) {
  for (unsigned i = 0; i < n; i++) v.push_back(u8(x >> (8 * i)));
}
u64 get_le(const u8* p, unsigned n) {
  u64 x = 0;
  for (unsigned i = 0; i < n; i++) x |= u64(p[i]) << (8 * i);
  return x;
}
u32 crc(u32 c, const u8* p, usize n) {
  while (n) {
    const uInt k = uInt(std::min<usize>(n, 1u << 30));
    c = u32(::crc32(c, p, k));
    p += k;
    n -= k;
  }
  return c;
}
const char* type_name(FieldType t) {
  switch (t) {
    case FieldType::u64: return "u64";
    case FieldType::i64: return "i64";
    case FieldType::bytes: return "bytes";
    case FieldType::string: return "string";
  }
  return "?";
}

}  // namespace

// --- sinks and sources --------------------------------------------------------

void MemorySink::write(const void* data, usize len) {
  const u8* p = static_cast<const u8*>(data);
  bytes.insert(bytes.end(), p, p + len);
}

usize MemorySource::read(void* data, usize len) {
  const usize n = std::min(len, b_.size() - at_);
  if (n) std::memcpy(data, b_.data() + at_, n);
  at_ += n;
  return n;
}

FileSink::FileSink(const std::string& path) : path_(path) {
  fd_ = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (fd_ < 0) throw Error("cannot create '" + path + "': " + std::strerror(errno));
  buf_.reserve(1 << 20);
}

FileSink::~FileSink() {
  if (fd_ >= 0) ::close(fd_);
}

void FileSink::flush_buf() {
  usize at = 0;
  while (at < buf_.size()) {
    ssize_t n = ::write(fd_, buf_.data() + at, buf_.size() - at);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) throw Error("writing '" + path_ + "': " + std::strerror(errno));
    at += usize(n);
  }
  buf_.clear();
}

void FileSink::write(const void* data, usize len) {
  if (fd_ < 0) throw Error("writing '" + path_ + "': closed");
  if (buf_.size() + len > (1 << 20)) flush_buf();
  if (len >= (1 << 20)) {
    const u8* p = static_cast<const u8*>(data);
    buf_.assign(p, p + len);
    flush_buf();
    return;
  }
  const u8* p = static_cast<const u8*>(data);
  buf_.insert(buf_.end(), p, p + len);
}

void FileSink::close() {
  if (fd_ < 0) return;
  flush_buf();
  if (::fsync(fd_) != 0) throw Error("fsync '" + path_ + "': " + std::strerror(errno));
  const int fd = fd_;
  fd_ = -1;
  if (::close(fd) != 0) throw Error("closing '" + path_ + "': " + std::strerror(errno));
}

FileSource::FileSource(const std::string& path) : path_(path) {
  fd_ = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd_ < 0) throw Error("cannot open '" + path + "': " + std::strerror(errno));
}

FileSource::~FileSource() {
  if (fd_ >= 0) ::close(fd_);
}

usize FileSource::read(void* data, usize len) {
  usize done = 0;
  u8* p = static_cast<u8*>(data);
  while (done < len) {
    ssize_t n = ::read(fd_, p + done, len - done);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) throw Error("reading '" + path_ + "': " + std::strerror(errno));
    if (n == 0) break;
    done += usize(n);
  }
  return done;
}

void FdSink::send(const u8* p, usize n) {
  while (n) {
    ssize_t k = ::send(fd_, p, n, MSG_NOSIGNAL);  // a closed peer: EPIPE, not SIGPIPE
    if (k < 0 && errno == ENOTSOCK) k = ::write(fd_, p, n);
    if (k < 0 && errno == EINTR) continue;
    if (k <= 0) throw Error(what_ + ": " + (k < 0 ? std::strerror(errno) : "connection closed"));
    p += k;
    n -= usize(k);
  }
}

void FdSink::flush() {
  if (buf_.empty()) return;
  if (rate_) {
    // Pacing by windows of 100 ms: a window's bytes wait for its budget.
    timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    u64 now = u64(ts.tv_sec) * 1000000000 + u64(ts.tv_nsec);
    if (now - window_start_ns_ >= 100000000) {
      window_start_ns_ = now;
      window_bytes_ = 0;
    }
    window_bytes_ += buf_.size();
    const u64 allowed_ns = window_bytes_ * 1000000000 / rate_;
    if (allowed_ns > now - window_start_ns_)
      std::this_thread::sleep_for(std::chrono::nanoseconds(allowed_ns - (now - window_start_ns_)));
  }
  send(buf_.data(), buf_.size());
  buf_.clear();
}

void FdSink::write(const void* data, usize len) {
  const u8* p = static_cast<const u8*>(data);
  total_ += len;
  while (len) {
    const usize n = std::min(len, (usize(1) << 18) - buf_.size());
    buf_.insert(buf_.end(), p, p + n);
    p += n;
    len -= n;
    if (buf_.size() >= (usize(1) << 18)) flush();
  }
}

usize FdSource::read(void* data, usize len) {
  usize done = 0;
  u8* p = static_cast<u8*>(data);
  while (done < len) {
    ssize_t n = ::read(fd_, p + done, len - done);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) throw FormatError(what_ + ": " + std::strerror(errno));
    if (n == 0) break;
    done += usize(n);
  }
  return done;
}

// --- writing ------------------------------------------------------------------

void SectionWriter::head(FieldType t, std::string_view name) {
  POPEK_CHECK(!name.empty() && name.size() < 256);
  p_.push_back(u8(t));
  p_.push_back(u8(name.size()));
  p_.insert(p_.end(), name.begin(), name.end());
}

void SectionWriter::u64v(std::string_view name, u64 v) {
  head(FieldType::u64, name);
  put_le(p_, v, 8);
}

void SectionWriter::i64v(std::string_view name, i64 v) {
  head(FieldType::i64, name);
  put_le(p_, u64(v), 8);
}

void SectionWriter::bytes(std::string_view name, std::span<const u8> data) {
  head(FieldType::bytes, name);
  put_le(p_, data.size(), 8);
  p_.insert(p_.end(), data.begin(), data.end());
}

void SectionWriter::str(std::string_view name, std::string_view s) {
  head(FieldType::string, name);
  put_le(p_, s.size(), 8);
  p_.insert(p_.end(), s.begin(), s.end());
}

StreamWriter::StreamWriter(Sink& sink) : sink_(sink) {
  std::vector<u8> h(kMagic, kMagic + 8);
  put_le(h, kFormatVersion, 4);
  put_le(h, 0, 4);
  put(h.data(), h.size());
}

void StreamWriter::put(const void* p, usize n) {
  sink_.write(p, n);
  bytes_ += n;
}

void StreamWriter::section(std::string_view name, u32 version, const SectionWriter& fields) {
  POPEK_CHECK(!name.empty() && name.size() < 256);
  const auto& pl = fields.payload();
  POPEK_CHECK(pl.size() <= kMaxSection);
  std::vector<u8> h = {'S', 'E', 'C', 'T', u8(name.size())};
  h.insert(h.end(), name.begin(), name.end());
  put_le(h, version, 4);
  put_le(h, pl.size(), 8);
  u32 c = crc(0, h.data() + 4, h.size() - 4);
  c = crc(c, pl.data(), pl.size());
  put_le(h, c, 4);
  put(h.data(), h.size());
  if (!pl.empty()) put(pl.data(), pl.size());
}

void StreamWriter::end() { section("end", 1, SectionWriter{}); }

// --- reading ------------------------------------------------------------------

void Section::fail(const std::string& what) const {
  throw FormatError("section '" + name + "' (version " + std::to_string(version) + "): " + what);
}

void Section::parse(std::vector<u8> payload) {
  payload_ = std::move(payload);
  fields_.clear();
  read_.clear();
  const u8* p = payload_.data();
  const usize n = payload_.size();
  usize at = 0;
  while (at < n) {
    if (n - at < 2) fail("malformed field list (truncated field header)");
    const u8 t = p[at];
    const usize nl = p[at + 1];
    at += 2;
    if (t < 1 || t > 4) fail("malformed field list (unknown field type " + std::to_string(t) + ")");
    if (nl == 0 || n - at < nl) fail("malformed field list (bad field name)");
    std::string fname(reinterpret_cast<const char*>(p + at), nl);
    at += nl;
    Field f{FieldType(t), 0, 0};
    if (f.type == FieldType::u64 || f.type == FieldType::i64) {
      f.len = 8;
    } else {
      if (n - at < 8) fail("malformed field '" + fname + "' (truncated length)");
      f.len = usize(get_le(p + at, 8));
      at += 8;
    }
    if (n - at < f.len) fail("malformed field '" + fname + "' (runs past the section)");
    f.off = at;
    at += f.len;
    if (!fields_.emplace(fname, f).second) fail("field '" + fname + "' appears twice");
    read_[fname] = false;
  }
}

bool Section::has(std::string_view field) const { return fields_.find(field) != fields_.end(); }

const Section::Field& Section::get(std::string_view field, FieldType t) const {
  auto it = fields_.find(field);
  if (it == fields_.end()) fail("field '" + std::string(field) + "' is missing");
  if (it->second.type != t)
    fail("field '" + std::string(field) + "' is " + type_name(it->second.type) + ", expected " + type_name(t));
  read_.find(field)->second = true;
  return it->second;
}

u64 Section::u64v(std::string_view field) const {
  return get_le(payload_.data() + get(field, FieldType::u64).off, 8);
}
u64 Section::u64v(std::string_view field, u64 dflt) const { return has(field) ? u64v(field) : dflt; }
i64 Section::i64v(std::string_view field) const {
  return i64(get_le(payload_.data() + get(field, FieldType::i64).off, 8));
}
std::span<const u8> Section::bytes(std::string_view field) const {
  const Field& f = get(field, FieldType::bytes);
  return {payload_.data() + f.off, f.len};
}
std::string Section::str(std::string_view field) const {
  const Field& f = get(field, FieldType::string);
  return std::string(reinterpret_cast<const char*>(payload_.data() + f.off), f.len);
}
std::span<const u8> Section::exact(std::string_view field, usize len) const {
  auto b = bytes(field);
  if (b.size() != len)
    fail("field '" + std::string(field) + "' has " + std::to_string(b.size()) + " bytes, expected " +
         std::to_string(len));
  return b;
}

void Section::check_all_read() const {
  for (auto& [k, r] : read_)
    if (!r) fail("field '" + k + "' is not understood by this popek");
}

StreamReader::StreamReader(Source& src, std::string what) : src_(src), what_(std::move(what)) {
  u8 h[16];
  get(h, sizeof h, "the header");
  if (std::memcmp(h, kMagic, 8) != 0) throw FormatError(what_ + ": not a popek machine-state stream (bad magic)");
  const u32 v = u32(get_le(h + 8, 4));
  if (v != kFormatVersion)
    throw FormatError(what_ + ": stream format version " + std::to_string(v) + " (this popek reads version " +
                      std::to_string(kFormatVersion) + ")");
  if (get_le(h + 12, 4) != 0) throw FormatError(what_ + ": unknown header flags");
}

void StreamReader::get(void* p, usize n, const char* context) {
  const usize got = n ? src_.read(p, n) : 0;
  bytes_ += got;
  if (got != n)
    throw FormatError(what_ + ": unexpected end of the stream in " + context + " (at byte " +
                      std::to_string(bytes_) + ")");
}

bool StreamReader::next(Section& out) {
  u8 h[5];
  get(h, 5, "a section header");
  if (std::memcmp(h, "SECT", 4) != 0)
    throw FormatError(what_ + ": no section at byte " + std::to_string(bytes_ - 5) + " (corrupt stream)");
  const usize nl = h[4];
  std::vector<u8> hdr(h + 4, h + 5);
  hdr.resize(1 + nl + 16);
  get(hdr.data() + 1, nl + 16, "a section header");
  std::string name(reinterpret_cast<const char*>(hdr.data() + 1), nl);
  for (char c : name)
    if (c < 0x20 || c > 0x7E) name = "(unprintable name)";
  const u32 version = u32(get_le(hdr.data() + 1 + nl, 4));
  const u64 len = get_le(hdr.data() + 5 + nl, 8);
  const u32 want = u32(get_le(hdr.data() + 13 + nl, 4));
  if (len > kMaxSection)
    throw FormatError(what_ + ": section '" + name + "' claims " + std::to_string(len) +
                      " bytes (corrupt stream)");
  std::vector<u8> payload(len);
  const std::string ctx = "section '" + name + "'";
  get(payload.data(), len, ctx.c_str());
  u32 c = crc(0, hdr.data(), 1 + nl + 12);
  c = crc(c, payload.data(), payload.size());
  if (c != want) throw FormatError(what_ + ": checksum mismatch in section '" + name + "' (corrupt stream)");
  out.name = name;
  out.version = version;
  try {
    out.parse(std::move(payload));
  } catch (const FormatError& e) {
    throw FormatError(what_ + ": " + e.what());
  }
  return name != "end";
}

// --- dispatch -----------------------------------------------------------------

void Loader::on(std::string name, u32 max_version, Fn fn, bool repeatable) {
  entries_[std::move(name)] = Entry{max_version, std::move(fn), repeatable};
}

void Loader::optional(const std::string& name) { entries_.at(name).optional = true; }

void Loader::run(StreamReader& r) {
  Section s;
  while (r.next(s)) {
    auto it = entries_.find(s.name);
    if (it == entries_.end())
      throw FormatError(r.what() + ": unknown section '" + s.name +
                        "' (written by another popek version or for other devices)");
    Entry& e = it->second;
    if (s.version == 0 || s.version > e.max_version)
      throw FormatError(r.what() + ": section '" + s.name + "' has version " + std::to_string(s.version) +
                        "; this popek reads versions 1 to " + std::to_string(e.max_version));
    if (e.seen && !e.repeatable) throw FormatError(r.what() + ": section '" + s.name + "' appears twice");
    e.seen++;
    try {
      e.fn(s);
    } catch (const FormatError& ex) {
      throw FormatError(r.what() + ": " + ex.what());
    }
  }
  for (auto& [name, e] : entries_)
    if (!e.seen && !e.optional)
      throw FormatError(r.what() + ": section '" + name + "' is missing (truncated or incomplete stream)");
}

// --- RAM ----------------------------------------------------------------------

namespace {
bool zero_page(const u8* p) {
  const u64* q = reinterpret_cast<const u64*>(p);
  u64 acc = 0;
  for (usize i = 0; i < kPageSize / 8; i += 8)
    acc |= q[i] | q[i + 1] | q[i + 2] | q[i + 3] | q[i + 4] | q[i + 5] | q[i + 6] | q[i + 7];
  return acc == 0;
}

// A zstd context for the RAM sections a writer makes (level 1: RAM goes
// while the guest runs; speed matters more than size).
class PageCompressor {
 public:
  PageCompressor() : cctx_(ZSTD_createCCtx()) {
    if (!cctx_) throw Error("zstd: out of memory");
  }
  ~PageCompressor() { ZSTD_freeCCtx(cctx_); }
  PageCompressor(const PageCompressor&) = delete;
  PageCompressor& operator=(const PageCompressor&) = delete;
  // `raw` (the chunk's non-zero pages of its n) into `comp`; counted in st.
  void compress(const std::vector<u8>& raw, std::vector<u8>& comp, u64 n, RamStats* st) {
    comp.resize(ZSTD_compressBound(raw.size()));
    const usize cl = raw.empty() ? 0 : ZSTD_compressCCtx(cctx_, comp.data(), comp.size(), raw.data(), raw.size(), 1);
    if (ZSTD_isError(cl)) throw Error(std::string("zstd: ") + ZSTD_getErrorName(cl));
    comp.resize(cl);
    if (st) {
      st->pages += n;
      st->zero_pages += n - raw.size() / kPageSize;
      st->raw_bytes += raw.size();
      st->compressed_bytes += cl;
    }
  }

 private:
  ZSTD_CCtx* cctx_;
};

// A RAM section's page data: raw_len bytes in `comp`, which must be the
// `present` pages its bitmap names (`mismatch`: the error if not).
std::vector<u8> unpack_pages(const Section& s, u64 present, u64 raw_len, std::span<const u8> comp,
                             const char* mismatch) {
  if (raw_len != present * kPageSize) s.fail(mismatch);
  std::vector<u8> raw(raw_len);
  if (raw_len) {
    const usize got = ZSTD_decompress(raw.data(), raw.size(), comp.data(), comp.size());
    if (ZSTD_isError(got)) s.fail(std::string("zstd: ") + ZSTD_getErrorName(got));
    if (got != raw_len) s.fail("zstd data is shorter than the pages it stands for");
  }
  return raw;
}
}  // namespace

void write_ram(StreamWriter& w, u64 first, u64 count, const u8* base, RamStats* st) {
  std::vector<u8> raw, comp;
  PageCompressor zc;
  for (u64 at = 0; at < count; at += kPagesPerChunk) {
    const u64 n = std::min(kPagesPerChunk, count - at);
    std::vector<u8> bitmap((n + 7) / 8);
    raw.clear();
    for (u64 i = 0; i < n; i++) {
      const u8* p = base + (at + i) * kPageSize;
      if (zero_page(p)) continue;
      bitmap[i / 8] |= u8(1u << (i % 8));
      raw.insert(raw.end(), p, p + kPageSize);
    }
    zc.compress(raw, comp, n, st);
    SectionWriter f;
    f.u64v("first", first + at);
    f.u64v("count", n);
    f.bytes("present", bitmap);
    f.u64v("raw_len", raw.size());
    f.bytes("zstd", comp);
    w.section("ram", kRamVersion, f);
  }
}

void load_ram(const Section& s, const std::function<u8*(u64 ppn)>& page) {
  const u64 first = s.u64v("first"), n = s.u64v("count");
  if (n == 0 || n > kPagesPerChunk) s.fail("bad page count " + std::to_string(n));
  auto bitmap = s.exact("present", (n + 7) / 8);
  const u64 raw_len = s.u64v("raw_len");
  auto comp = s.bytes("zstd");
  s.check_all_read();
  u64 present = 0;
  for (u64 i = 0; i < n; i++) present += (bitmap[i / 8] >> (i % 8)) & 1;
  const std::vector<u8> raw =
      unpack_pages(s, present, raw_len, comp, "page data length does not match the page bitmap");
  const u8* src = raw.data();
  for (u64 i = 0; i < n; i++) {
    u8* dst = page(first + i);
    if (!dst) s.fail("page " + std::to_string(first + i) + " is not RAM in this machine");
    if ((bitmap[i / 8] >> (i % 8)) & 1) {
      std::memcpy(dst, src, kPageSize);
      src += kPageSize;
    } else if (!zero_page(dst)) {
      std::memset(dst, 0, kPageSize);
    }
  }
}

void write_ram_pages(StreamWriter& w, std::span<const u32> ppns, const std::function<const u8*(u64 ppn)>& page,
                     RamStats* st) {
  std::vector<u8> raw, comp;
  PageCompressor zc;
  for (usize at = 0; at < ppns.size(); at += kPagesPerChunk) {
    const usize n = std::min<usize>(kPagesPerChunk, ppns.size() - at);
    std::vector<u8> list, zero((n + 7) / 8);
    raw.clear();
    for (usize i = 0; i < n; i++) {
      put_le(list, ppns[at + i], 4);
      const u8* p = page(ppns[at + i]);
      if (zero_page(p)) {
        zero[i / 8] |= u8(1u << (i % 8));
        continue;
      }
      raw.insert(raw.end(), p, p + kPageSize);
    }
    zc.compress(raw, comp, n, st);
    SectionWriter f;
    f.bytes("pages", list);
    f.bytes("zero", zero);
    f.u64v("raw_len", raw.size());
    f.bytes("zstd", comp);
    w.section("ram-pages", kRamPagesVersion, f);
  }
}

void load_ram_pages(const Section& s, const std::function<u8*(u64 ppn)>& page) {
  auto list = s.bytes("pages");
  if (list.empty() || list.size() % 4 || list.size() / 4 > kPagesPerChunk) s.fail("bad page list");
  const u64 n = list.size() / 4;
  auto zero = s.exact("zero", (n + 7) / 8);
  const u64 raw_len = s.u64v("raw_len");
  auto comp = s.bytes("zstd");
  s.check_all_read();
  u64 present = 0;
  for (u64 i = 0; i < n; i++) present += !((zero[i / 8] >> (i % 8)) & 1);
  const std::vector<u8> raw =
      unpack_pages(s, present, raw_len, comp, "page data length does not match the zero-page bitmap");
  const u8* src = raw.data();
  for (u64 i = 0; i < n; i++) {
    const u64 ppn = get_le(list.data() + 4 * i, 4);
    u8* dst = page(ppn);
    if (!dst) s.fail("page " + std::to_string(ppn) + " is not RAM in this machine");
    if ((zero[i / 8] >> (i % 8)) & 1) {
      std::memset(dst, 0, kPageSize);
    } else {
      std::memcpy(dst, src, kPageSize);
      src += kPageSize;
    }
  }
}

}  // namespace popek::snap
