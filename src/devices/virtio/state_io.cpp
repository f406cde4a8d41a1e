// Suspend/resume of virtio devices and their PCI transport: the state the
// device keeps outside guest RAM (the rings are in RAM and saved with it).
#include "base/error.h"
#include "devices/pc/state_io.h"
#include "devices/virtio/blk.h"
#include "devices/virtio/net.h"
#include "devices/virtio/virtio_device.h"
#include "devices/virtio/virtio_pci.h"
#include "devices/virtio/virtqueue.h"
#include "snapshot/stream.h"

namespace popek::dev::virtio {

Virtqueue::State Virtqueue::save() const {
  State s;
  s.size = size;
  s.desc_addr = desc_addr;
  s.avail_addr = avail_addr;
  s.used_addr = used_addr;
  s.msix_vector = msix_vector;
  s.enabled = enabled_;
  s.event_idx = event_idx_;
  s.indirect = indirect_;
  s.last_avail = last_avail_;
  s.used_idx = used_idx_;
  s.signalled_used = signalled_used_;
  s.error = error_;
  return s;
}

std::string Virtqueue::restore(const State& s) {
  reset();
  size = s.size;
  desc_addr = s.desc_addr;
  avail_addr = s.avail_addr;
  used_addr = s.used_addr;
  msix_vector = s.msix_vector;
  if (!s.enabled) return "";
  if (size == 0 || size > max_size_ || (size & (size - 1)))
    return "queue size " + std::to_string(size) + " is not a power of two up to " + std::to_string(max_size_);
  if ((desc_addr & 15) || (avail_addr & 1) || (used_addr & 3)) return "misaligned ring";
  desc_ = mem_.translate(desc_addr, desc_table_bytes(size));
  avail_ = mem_.translate(avail_addr, avail_ring_bytes(size));
  used_ = mem_.translate(used_addr, used_ring_bytes(size));
  if (!desc_ || !avail_ || !used_) {
    desc_ = avail_ = used_ = nullptr;
    return "ring outside guest RAM";
  }
  enabled_ = true;
  event_idx_ = s.event_idx;
  indirect_ = s.indirect;
  last_avail_ = s.last_avail;
  used_idx_ = s.used_idx;
  signalled_used_ = s.signalled_used;
  error_ = s.error;
  return "";
}

void VirtioDevice::save_state(snap::SectionWriter& w) const {
  w.u64v("type", u64(type_));
  w.u64v("driver_features", driver_features_);
  w.u64v("status", status_);
  w.u64v("isr", isr_);
  w.u64v("generation", generation_);
  w.bytes("config", config_);
  w.str("broken_reason", broken_reason_);
  w.u64v("queues", queues_.size());
  for (usize i = 0; i < queues_.size(); i++) {
    const Virtqueue::State q = queues_[i].save();
    const std::string p = "q" + std::to_string(i) + ".";
    w.u64v(p + "size", q.size);
    w.u64v(p + "desc", q.desc_addr);
    w.u64v(p + "avail", q.avail_addr);
    w.u64v(p + "used", q.used_addr);
    w.u64v(p + "msix_vector", q.msix_vector);
    w.u64v(p + "enabled", q.enabled);
    w.u64v(p + "event_idx", q.event_idx);
    w.u64v(p + "indirect", q.indirect);
    w.u64v(p + "last_avail", q.last_avail);
    w.u64v(p + "used_idx", q.used_idx);
    w.u64v(p + "signalled_used", q.signalled_used);
    w.str(p + "error", q.error);
  }
  save_extra(w);
}

void VirtioDevice::load_state(const snap::Section& r) {
  if (r.u64v("type") != u64(type_))
    r.fail("saved device type " + std::to_string(r.u64v("type")) + ", this machine's " + name_ + " is type " +
           std::to_string(unsigned(type_)));
  const u64 driver_features = r.u64v("driver_features");
  const u8 status = u8(r.u64v("status"));
  const u8 isr = u8(r.u64v("isr"));
  const u8 generation = u8(r.u64v("generation"));
  auto cfg = r.bytes("config");
  if (cfg.size() != config_.size())
    r.fail("device configuration is " + std::to_string(cfg.size()) + " bytes, this " + name_ + "'s is " +
           std::to_string(config_.size()));
  std::string broken = r.str("broken_reason");
  if (r.u64v("queues") != queues_.size())
    r.fail("saved " + std::to_string(r.u64v("queues")) + " queues, this " + name_ + " has " +
           std::to_string(queues_.size()));
  if (driver_features & ~offered_features()) r.fail("saved driver features this device does not offer");
  std::vector<Virtqueue::State> qs(queues_.size());
  for (usize i = 0; i < queues_.size(); i++) {
    Virtqueue::State& q = qs[i];
    const std::string p = "q" + std::to_string(i) + ".";
    q.size = u16(r.u64v(p + "size"));
    q.desc_addr = r.u64v(p + "desc");
    q.avail_addr = r.u64v(p + "avail");
    q.used_addr = r.u64v(p + "used");
    q.msix_vector = u16(r.u64v(p + "msix_vector"));
    q.enabled = r.u64v(p + "enabled");
    q.event_idx = r.u64v(p + "event_idx");
    q.indirect = r.u64v(p + "indirect");
    q.last_avail = u16(r.u64v(p + "last_avail"));
    q.used_idx = u16(r.u64v(p + "used_idx"));
    q.signalled_used = u16(r.u64v(p + "signalled_used"));
    q.error = r.str(p + "error");
  }
  driver_features_ = driver_features;
  status_ = status;
  generation_ = generation;
  std::copy(cfg.begin(), cfg.end(), config_.begin());
  broken_reason_ = broken;
  for (usize i = 0; i < queues_.size(); i++) {
    std::string err = queues_[i].restore(qs[i]);
    if (!err.empty()) r.fail(name_ + " queue " + std::to_string(i) + ": " + err);
  }
  isr_ = isr;
  load_extra(r);
  if (irq_sink_) irq_sink_(isr_ != 0);
}

void VirtioPciFunction::save_state(snap::SectionWriter& w) const {
  dev::save_state(w, save(), "pci.");
  w.u64v("dfselect", dfselect_);
  w.u64v("gfselect", gfselect_);
  w.u64v("queue_select", queue_select_);
  dev_.save_state(w);
}

void VirtioPciFunction::load_state(const snap::Section& r) {
  PciFunction::State ps;
  dev::load_state(r, ps, "pci.");
  const u32 dfselect = u32(r.u64v("dfselect")), gfselect = u32(r.u64v("gfselect"));
  const u16 qsel = u16(r.u64v("queue_select"));
  dev_.load_state(r);
  r.check_all_read();
  restore(ps);  // places the BAR through the bus's listener
  dfselect_ = dfselect;
  gfselect_ = gfselect;
  queue_select_ = qsel;
  level_ = dev_.isr() != 0;
  update_irq();
}

// Frames from the backend that the driver had no buffers for yet: each a
// little-endian u32 length and the frame.
void VirtioNet::save_extra(snap::SectionWriter& w) const {
  std::vector<u8> b;
  for (const auto& f : backlog_) {
    const u32 n = u32(f.size());
    for (int i = 0; i < 4; i++) b.push_back(u8(n >> (8 * i)));
    b.insert(b.end(), f.begin(), f.end());
  }
  w.u64v("rx_backlog_frames", backlog_.size());
  w.bytes("rx_backlog", b);
}

void VirtioNet::load_extra(const snap::Section& r) {
  backlog_.clear();
  if (r.version < 2) return;
  const u64 frames = r.u64v("rx_backlog_frames");
  auto b = r.bytes("rx_backlog");
  if (frames > kBacklog) r.fail(name() + ": " + std::to_string(frames) + " frames waiting, more than the backlog holds");
  usize at = 0;
  for (u64 i = 0; i < frames; i++) {
    if (b.size() - at < 4) r.fail(name() + ": receive backlog cut short");
    u32 n = 0;
    for (int k = 0; k < 4; k++) n |= u32(b[at + k]) << (8 * k);
    at += 4;
    if (n > kMaxFrame || b.size() - at < n) r.fail(name() + ": receive backlog frame of " + std::to_string(n) + " bytes");
    backlog_.emplace_back(b.begin() + at, b.begin() + at + n);
    at += n;
  }
  if (at != b.size()) r.fail(name() + ": receive backlog has bytes past its last frame");
}

void VirtioBlk::quiesce() {
  drain();
  // Even with cache=unsafe: the image is about to be opened by another process.
  if (!disk_->read_only()) disk_->flush();
}

}  // namespace popek::dev::virtio
