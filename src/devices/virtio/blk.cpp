#include "devices/virtio/blk.h"

#include <cstring>

#include "base/log.h"

namespace popek::dev::virtio {

namespace {

// Feature bits (5.2.3).
constexpr unsigned kFSegMax = 2, kFRo = 5, kFBlkSize = 6, kFFlush = 9, kFDiscard = 13,
                   kFWriteZeroes = 14;
// Request types and status values (5.2.6).
constexpr u32 kTIn = 0, kTOut = 1, kTFlush = 4, kTGetId = 8, kTDiscard = 11, kTWriteZeroes = 13;
constexpr u8 kSOk = 0, kSIoErr = 1, kSUnsupp = 2;
constexpr u32 kSector = 512;
constexpr u32 kIdBytes = 20;
constexpr u32 kMaxDiscardSectors = 1u << 21;  // 1 GiB per segment
constexpr u32 kUnmapFlag = 1;

// Configuration layout (5.2.4).
constexpr unsigned kCfgCapacity = 0, kCfgSegMax = 12, kCfgBlkSize = 20, kCfgWce = 32,
                   kCfgNumQueues = 34, kCfgMaxDiscardSectors = 36, kCfgMaxDiscardSeg = 40,
                   kCfgDiscardAlign = 44, kCfgMaxWzSectors = 48, kCfgMaxWzSeg = 52,
                   kCfgWzMayUnmap = 56, kCfgSize = 60;

u32 le32(const u8* p) {
  u32 v;
  std::memcpy(&v, p, 4);
  return v;
}
u64 le64(const u8* p) {
  u64 v;
  std::memcpy(&v, p, 8);
  return v;
}

}  // namespace

VirtioBlk::VirtioBlk(std::string name, GuestMemory& mem, std::unique_ptr<block::BlockBackend> disk,
                     Options opt)
    : VirtioDevice(DeviceType::blk, std::move(name), mem, {opt.queue_size}),
      disk_(std::move(disk)), opt_(std::move(opt)) {
  if (opt_.serial.size() > kIdBytes) opt_.serial.resize(kIdBytes);
  config().assign(kCfgSize, 0);
  put_config(kCfgCapacity, disk_->size() / kSector, 8);
  put_config(kCfgSegMax, kSegMax, 4);
  put_config(kCfgBlkSize, kSector, 4);
  put_config(kCfgWce, opt_.cache == Cache::writethrough ? 0 : 1, 1);
  put_config(kCfgNumQueues, 1, 2);
  put_config(kCfgMaxDiscardSectors, kMaxDiscardSectors, 4);
  put_config(kCfgMaxDiscardSeg, kMaxDiscardSeg, 4);
  put_config(kCfgDiscardAlign, 8, 4);
  put_config(kCfgMaxWzSectors, kMaxDiscardSectors, 4);
  put_config(kCfgMaxWzSeg, kMaxDiscardSeg, 4);
  put_config(kCfgWzMayUnmap, 1, 1);
  reads_ = &counter("reads");
  writes_ = &counter("writes");
  flushes_ = &counter("flushes");
  discards_ = &counter("discards");
  write_zeroes_ = &counter("write_zeroes");
  get_ids_ = &counter("get_ids");
  read_bytes_ = &counter("read_bytes");
  write_bytes_ = &counter("write_bytes");
  errors_ = &counter("io_errors");
  unsupported_ = &counter("unsupported");
}

VirtioBlk::~VirtioBlk() { on_reset(); }

u64 VirtioBlk::device_features() const {
  u64 f = bit(kFSegMax) | bit(kFBlkSize);
  if (opt_.cache != Cache::writethrough) f |= bit(kFFlush);
  if (read_only()) f |= bit(kFRo);
  else f |= bit(kFDiscard) | bit(kFWriteZeroes);
  return f;
}

void VirtioBlk::on_notify(unsigned q) {
  Chain c;
  while (pop(q, c)) handle(c);
  queue(0).publish_avail_event();
  // A request that arrived after publishing is picked up now (no lost wakeup).
  while (pop(q, c)) handle(c);
  interrupt_queue(0);
}

void VirtioBlk::handle(Chain& c) {
  if (c.readable_len < 16) return fail("request without a 16-byte device-readable header");
  const Buffer* st = nullptr;
  for (auto it = c.writable.rbegin(); it != c.writable.rend(); ++it)
    if (it->len) {
      st = &*it;
      break;
    }
  if (!st) return fail("request without a device-writable status byte");
  u8 hdr[16];
  c.gather(0, hdr, 16);
  const u32 type = le32(hdr);
  const u64 sector = le64(hdr + 8);

  usize slot;
  if (!free_slots_.empty()) {
    slot = free_slots_.back();
    free_slots_.pop_back();
  } else {
    slot = slots_.size();
    slots_.push_back(std::make_unique<Req>());
  }
  Req* r = slots_[slot].get();
  r->slot = slot;
  r->submitted = r->dropped = false;
  r->status = st->host + st->len - 1;
  r->status_gpa = st->gpa + st->len - 1;
  r->used_len = 1;
  r->parts = 0;
  r->result = kSOk;
  r->is_read = false;
  r->bytes = 0;
  r->type = type;
  r->chain = std::move(c);
  Chain& ch = r->chain;

  // Data buffers: the readable part after the header, or the writable part
  // before the status byte.
  auto readable_data = [&] {
    std::vector<iovec> iov;
    u64 skip = 16;
    for (const Buffer& b : ch.readable) {
      if (skip >= b.len) {
        skip -= b.len;
        continue;
      }
      iov.push_back({b.host + skip, b.len - skip});
      skip = 0;
    }
    return iov;
  };
  auto writable_data = [&] {
    std::vector<iovec> iov;
    u64 left = ch.writable_len - 1;
    for (const Buffer& b : ch.writable) {
      if (!left) break;
      const u64 n = std::min<u64>(b.len, left);
      if (n) iov.push_back({b.host, n});
      left -= n;
    }
    return iov;
  };
  auto in_range = [&](u64 sec, u64 bytes) {
    const u64 cap = disk_->size();
    return sec <= cap / kSector && bytes <= cap - sec * kSector;
  };
  auto done = [&](u8 status) {
    r->result = status;
    if (status == kSIoErr) ++*errors_;
    if (status == kSUnsupp) ++*unsupported_;
    finish(r);
  };
  block::Request br;
  br.tag = slot;

  switch (type) {
    case kTIn: {
      if (ch.readable_len > 16)
        return fail("read request whose data buffers are device-readable (the device would write into a read-only buffer)");
      const u64 len = ch.writable_len - 1;
      ++*reads_;
      if (len % kSector || !in_range(sector, len)) return done(kSIoErr);
      r->is_read = true;
      r->bytes = len;
      r->used_len = u32(std::min<u64>(len + 1, 0xFFFFFFFFull));
      *read_bytes_ += len;
      if (!len) return done(kSOk);
      br.op = block::Op::read;
      br.offset = sector * kSector;
      br.iov = writable_data();
      return submit(r, std::move(br));
    }
    case kTOut: {
      const u64 len = ch.readable_len - 16;
      ++*writes_;
      if (read_only() || len % kSector || !in_range(sector, len)) return done(kSIoErr);
      *write_bytes_ += len;
      r->bytes = len;
      if (!len) return done(kSOk);
      br.op = block::Op::write;
      br.offset = sector * kSector;
      br.iov = readable_data();
      if (opt_.cache == Cache::writethrough) {
        block::Request fl;
        fl.op = block::Op::flush;
        fl.tag = slot;
        r->parts = 2;
        submit(r, std::move(br));
        return submit(r, std::move(fl));
      }
      return submit(r, std::move(br));
    }
    case kTFlush: {
      ++*flushes_;
      if (opt_.cache == Cache::unsafe || read_only()) return done(kSOk);
      br.op = block::Op::flush;
      return submit(r, std::move(br));
    }
    case kTGetId: {
      ++*get_ids_;
      u8 id[kIdBytes] = {};
      std::memcpy(id, opt_.serial.data(), opt_.serial.size());
      const u64 n = ch.scatter(mem(), 0, id, std::min<u64>(kIdBytes, ch.writable_len - 1));
      r->used_len = u32(n + 1);
      return done(kSOk);
    }
    case kTDiscard:
    case kTWriteZeroes: {
      const bool discard = type == kTDiscard;
      ++*(discard ? discards_ : write_zeroes_);
      if (!negotiated(discard ? kFDiscard : kFWriteZeroes)) return done(kSUnsupp);
      const u64 len = ch.readable_len - 16;
      if (read_only() || len == 0 || len % 16 || len / 16 > kMaxDiscardSeg) return done(kSIoErr);
      std::vector<block::Request> parts;
      for (u64 off = 16; off < ch.readable_len; off += 16) {
        u8 seg[16];
        ch.gather(off, seg, 16);
        const u64 s = le64(seg);
        const u32 n = le32(seg + 8), flags = le32(seg + 12);
        if (discard && (flags & kUnmapFlag)) return done(kSUnsupp);
        if (flags & ~kUnmapFlag) return done(kSUnsupp);
        if (n > kMaxDiscardSectors || !in_range(s, u64(n) * kSector)) return done(kSIoErr);
        if (!n) continue;
        block::Request p;
        p.op = discard ? block::Op::discard : block::Op::write_zeroes;
        p.offset = s * kSector;
        p.length = u64(n) * kSector;
        p.tag = slot;
        parts.push_back(std::move(p));
      }
      if (parts.empty()) return done(kSOk);
      r->parts = unsigned(parts.size());
      for (auto& p : parts) submit(r, std::move(p));
      return;
    }
    default:
      return done(kSUnsupp);
  }
}

void VirtioBlk::submit(Req* r, block::Request br) {
  // r->parts was set by the caller for multi-part requests; one part otherwise.
  if (r->parts == 0) r->parts = 1;
  if (opt_.synchronous) {
    run_sync(r, br);
    if (--r->parts == 0) finish(r);
    return;
  }
  if (!r->submitted) {
    r->submitted = true;
    in_flight_count_++;
  }
  disk_->submit(std::move(br));
}

void VirtioBlk::run_sync(Req* r, block::Request& br) {
  try {
    switch (br.op) {
      case block::Op::read: disk_->readv(br.offset, br.iov.data(), int(br.iov.size())); break;
      case block::Op::write: disk_->writev(br.offset, br.iov.data(), int(br.iov.size())); break;
      case block::Op::flush: disk_->flush(); break;
      case block::Op::discard: disk_->discard(br.offset, br.length); break;
      case block::Op::write_zeroes: disk_->write_zeroes(br.offset, br.length); break;
    }
  } catch (const std::exception& e) {
    part_failed(r, e.what());
  }
}

void VirtioBlk::part_failed(Req* r, const std::string& why) {
  POPEK_LOG(warn, "%s: I/O error: %s", name().c_str(), why.c_str());
  if (r->result == kSOk) ++*errors_;
  r->result = kSIoErr;
}

void VirtioBlk::finish(Req* r) {
  if (r->submitted) in_flight_count_--;
  if (r->is_read && r->result == kSOk) {
    // The disk wrote these guest bytes on the worker thread.
    u64 left = r->bytes;
    for (const Buffer& b : r->chain.writable) {
      if (!left) break;
      const u64 n = std::min<u64>(b.len, left);
      if (n) mem().written(b.gpa, n);
      left -= n;
    }
  }
  if (!r->dropped) {
    *r->status = r->result;
    mem().written(r->status_gpa, 1);
    queue(0).push(r->chain.head, r->used_len);
  }
  r->chain.clear();
  r->submitted = r->dropped = false;
  free_slots_.push_back(r->slot);
}

void VirtioBlk::reap(bool deliver) {
  std::vector<block::Completion> done;
  disk_->reap(done);
  for (auto& c : done) {
    if (c.tag >= slots_.size()) continue;
    Req* r = slots_[c.tag].get();
    if (!c.ok) part_failed(r, c.error);
    if (!deliver) r->dropped = true;
    if (r->parts && --r->parts == 0) finish(r);
  }
}

void VirtioBlk::complete_finished() {
  if (!in_flight_count_) return;
  reap(true);
  interrupt_queue(0);
}

void VirtioBlk::drain() {
  while (in_flight_count_) {
    disk_->wait(1000);
    reap(!broken() && driver_ok());
  }
  if (driver_ok()) interrupt_queue(0);
}

void VirtioBlk::on_reset() {
  // In-flight requests still point into guest memory: let them finish, but
  // write nothing more into the rings the driver is taking back.
  while (in_flight_count_) {
    disk_->wait(1000);
    reap(false);
  }
}

void VirtioBlk::io_fill(std::vector<pollfd>& fds, int* timeout_ms) {
  if (in_flight_count_) fds.push_back(pollfd{disk_->event_fd(), POLLIN, 0});
}

void VirtioBlk::io_dispatch(const pollfd* fds, usize n) {
  if (n && (fds[0].revents & POLLIN)) complete_finished();
}

}  // namespace popek::dev::virtio
