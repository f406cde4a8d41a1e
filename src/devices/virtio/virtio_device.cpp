#include "devices/virtio/virtio_device.h"

#include "base/log.h"

namespace popek::dev::virtio {

VirtioDevice::VirtioDevice(DeviceType type, std::string name, GuestMemory& mem,
                           const std::vector<u16>& queue_sizes)
    : type_(type), name_(std::move(name)), mem_(mem) {
  queues_.reserve(queue_sizes.size());
  for (u16 s : queue_sizes) queues_.emplace_back(mem, s);
  notifications_ = &counters_.get("notifications");
  interrupts_ = &counters_.get("interrupts");
}

VirtioDevice::~VirtioDevice() = default;

u64 VirtioDevice::offered_features() const {
  return device_features() | bit(kFVersion1) | bit(kFIndirectDesc) | bit(kFEventIdx);
}

void VirtioDevice::write_driver_features(unsigned sel, u32 value) {
  if (status_ & kStatusFeaturesOk) return;
  if (sel == 0) driver_features_ = (driver_features_ & ~0xFFFFFFFFull) | value;
  else if (sel == 1) driver_features_ = (driver_features_ & 0xFFFFFFFFull) | (u64(value) << 32);
}

void VirtioDevice::write_status(u8 v) {
  if (v == 0) {
    reset();
    return;
  }
  const u8 old = status_;
  if ((v & kStatusFeaturesOk) && !(old & kStatusFeaturesOk)) {
    const u64 extra = driver_features_ & ~offered_features();
    if (extra || !negotiated(kFVersion1)) {
      POPEK_LOG(info, "%s: refusing features %#llx (offered %#llx)", name_.c_str(),
                (unsigned long long)driver_features_, (unsigned long long)offered_features());
      v &= u8(~kStatusFeaturesOk);
    }
  }
  // The driver cannot clear bits other than by a reset, nor NEEDS_RESET at all.
  status_ = u8(v | (old & (kStatusNeedsReset | kStatusFeaturesOk)));
  if ((status_ & kStatusDriverOk) && !(old & kStatusDriverOk)) {
    if (!(status_ & kStatusFeaturesOk)) {
      fail("DRIVER_OK set without FEATURES_OK");
      return;
    }
    if (!broken()) on_driver_ok();
  }
}

void VirtioDevice::reset() {
  on_reset();
  for (auto& q : queues_) q.reset();
  driver_features_ = 0;
  status_ = 0;
  broken_reason_.clear();
  if (isr_) {
    isr_ = 0;
    if (irq_sink_) irq_sink_(false);
  }
}

void VirtioDevice::enable_queue(unsigned q) {
  if (q >= queues_.size() || queues_[q].enabled() || broken()) return;
  std::string err = queues_[q].enable(negotiated(kFEventIdx), negotiated(kFIndirectDesc));
  if (!err.empty()) fail("queue " + std::to_string(q) + ": " + err);
}

void VirtioDevice::notify(unsigned q) {
  ++*notifications_;
  if (q >= queues_.size() || !driver_ok() || !queues_[q].enabled()) return;
  on_notify(q);
}

u64 VirtioDevice::read_config(unsigned offset, unsigned size) const {
  u64 v = 0;
  for (unsigned i = 0; i < size && i < 8; i++)
    if (offset + i < config_.size()) v |= u64(config_[offset + i]) << (8 * i);
  return v;
}

void VirtioDevice::write_config(unsigned offset, unsigned size, u64 value) {
  if (offset >= config_.size() || size > config_.size() - offset) return;
  on_config_write(offset, size, value);
}

void VirtioDevice::put_config(unsigned offset, u64 value, unsigned size) {
  if (config_.size() < offset + size) config_.resize(offset + size);
  for (unsigned i = 0; i < size; i++) config_[offset + i] = u8(value >> (8 * i));
}

void VirtioDevice::config_changed() {
  generation_++;
  if (status_ & kStatusDriverOk) set_isr(kIsrConfig);
}

u8 VirtioDevice::read_isr() {
  const u8 v = isr_;
  if (v) {
    isr_ = 0;
    if (irq_sink_) irq_sink_(false);
  }
  return v;
}

void VirtioDevice::set_isr(u8 bits) {
  const u8 old = isr_;
  isr_ |= bits;
  if (!old && isr_ && irq_sink_) irq_sink_(true);
}

void VirtioDevice::interrupt_queue(unsigned q) {
  if (broken() || !queues_[q].need_interrupt()) return;
  ++*interrupts_;
  set_isr(kIsrQueue);
}

bool VirtioDevice::pop(unsigned q, Chain& c) {
  if (broken()) return false;
  switch (queues_[q].pop(c)) {
    case Virtqueue::Pop::ok: return true;
    case Virtqueue::Pop::empty: return false;
    case Virtqueue::Pop::error: break;
  }
  fail("queue " + std::to_string(q) + ": " + queues_[q].error());
  return false;
}

void VirtioDevice::fail(const std::string& why) {
  if (broken()) return;
  broken_reason_ = why;
  counters_.get("needs_reset")++;
  POPEK_LOG(warn, "%s: %s; device needs reset", name_.c_str(), why.c_str());
  status_ |= kStatusNeedsReset;
  if (status_ & kStatusDriverOk) set_isr(kIsrConfig);
}

std::vector<std::pair<std::string, u64>> VirtioDevice::stats() const {
  std::vector<std::pair<std::string, u64>> out;
  for (auto& [k, v] : counters_.snapshot()) out.emplace_back(name_ + "." + k, v);
  return out;
}

}  // namespace popek::dev::virtio
