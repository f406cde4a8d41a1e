// A virtio device independent of its transport: feature negotiation, the
// device status state machine, reset, the queues, the device configuration
// space, the interrupt status, and DEVICE_NEEDS_RESET. A transport (PCI,
// virtio_pci.h) maps registers onto these calls; a device type (blk, net,
// rng) supplies its features, configuration bytes and queue handlers.
//
// Host I/O (block completions, network sockets) is driven by the board's
// event loop through io_fill()/io_dispatch(): the device never blocks and
// never runs a thread that touches guest state.
#pragma once
#include <poll.h>

#include <functional>
#include <string>
#include <utility>
#include <vector>

#include "base/counters.h"
#include "base/types.h"
#include "devices/virtio/guest_memory.h"
#include "devices/virtio/virtio.h"
#include "devices/virtio/virtqueue.h"

namespace popek::snap {
class SectionWriter;
class Section;
}  // namespace popek::snap

namespace popek::dev::virtio {

class VirtioDevice {
 public:
  VirtioDevice(DeviceType type, std::string name, GuestMemory& mem,
               const std::vector<u16>& queue_sizes);
  virtual ~VirtioDevice();
  VirtioDevice(const VirtioDevice&) = delete;
  VirtioDevice& operator=(const VirtioDevice&) = delete;

  DeviceType type() const { return type_; }
  const std::string& name() const { return name_; }
  GuestMemory& mem() { return mem_; }
  unsigned num_queues() const { return unsigned(queues_.size()); }
  Virtqueue& queue(unsigned i) { return queues_[i]; }

  // ---- features ----
  // What the device offers: its own bits plus the transport bits popek
  // implements (VERSION_1, INDIRECT_DESC, EVENT_IDX).
  u64 offered_features() const;
  u64 driver_features() const { return driver_features_; }
  // The driver writes its features 32 bits at a time (sel 0: bits 0-31, 1: 32-63);
  // ignored once FEATURES_OK is set.
  void write_driver_features(unsigned sel, u32 value);
  bool negotiated(unsigned bit) const { return (driver_features_ >> bit) & 1; }

  // ---- status ----
  u8 status() const { return status_; }
  // Writing 0 resets the device. Setting FEATURES_OK is refused (the bit does
  // not stick) when the driver chose features the device did not offer or
  // left out VERSION_1. Setting DRIVER_OK starts the device.
  void write_status(u8 value);
  void reset();
  bool driver_ok() const { return (status_ & kStatusDriverOk) && !broken(); }
  bool broken() const { return status_ & kStatusNeedsReset; }
  const std::string& broken_reason() const { return broken_reason_; }

  // ---- queues (transport registers) ----
  // The driver enabled queue q (PCI queue_enable = 1).
  void enable_queue(unsigned q);
  // The driver's notification for queue q.
  void notify(unsigned q);

  // ---- device configuration space ----
  u32 config_size() const { return u32(config_.size()); }
  // Little-endian field access; bytes past the end read as zero.
  u64 read_config(unsigned offset, unsigned size) const;
  void write_config(unsigned offset, unsigned size, u64 value);
  u8 config_generation() const { return generation_; }

  // ---- interrupts ----
  u8 isr() const { return isr_; }
  // Reading the ISR status returns and clears it (and lowers the line).
  u8 read_isr();
  // Told the interrupt level (ISR status non-zero) whenever it changes.
  void set_interrupt_sink(std::function<void(bool)> sink) { irq_sink_ = std::move(sink); }

  // ---- host I/O for the board's event loop ----
  // Adds descriptors to wait on and lowers *timeout_ms if the device has a
  // deadline. io_dispatch gets back exactly the entries io_fill added.
  virtual void io_fill(std::vector<pollfd>& fds, int* timeout_ms) {}
  virtual void io_dispatch(const pollfd* fds, usize n) {}

  // Statistics: "<name>.<counter>".
  std::vector<std::pair<std::string, u64>> stats() const;

  // ---- suspend/resume (state_io.cpp) ----
  // Whether the device's state can be saved now; if not, *why says so.
  virtual bool can_save(std::string* why) const { return true; }
  // Before saving: finish host work that refers to guest memory (in-flight
  // disk requests complete into the rings) and make it durable.
  virtual void quiesce() {}
  // The transport-independent state (features, status, ISR, configuration
  // space, queues) as fields of a section; load throws snap::FormatError.
  void save_state(snap::SectionWriter& w) const;
  void load_state(const snap::Section& r);
  // The version of this device type's section (the common fields are
  // version 1; a device type with fields of its own counts up from there).
  virtual u32 state_version() const { return 1; }

 protected:
  // A device type's own fields, after the common ones (load: r.version is
  // the saved section's version; throws snap::FormatError).
  virtual void save_extra(snap::SectionWriter& w) const {}
  virtual void load_extra(const snap::Section& r) {}

 public:

  // Marks the device broken (DEVICE_NEEDS_RESET), stops it, and tells the
  // driver with a configuration-change interrupt. The first reason is kept and
  // logged once.
  void fail(const std::string& why);

 protected:
  // The device type's own feature bits.
  virtual u64 device_features() const = 0;
  // Queue q has new buffers (only called while DRIVER_OK and not broken).
  virtual void on_notify(unsigned q) = 0;
  // Reset: finish or cancel host work that still refers to guest memory,
  // then return to the power-on state. The queues are reset by the caller.
  virtual void on_reset() {}
  // DRIVER_OK was set.
  virtual void on_driver_ok() {}
  // A driver write into the configuration space (after the bytes are stored
  // if the field is writable). Default: read-only space, write ignored.
  virtual void on_config_write(unsigned offset, unsigned size, u64 value) {}

  // For device types: the configuration image and its generation counter.
  std::vector<u8>& config() { return config_; }
  void put_config(unsigned offset, u64 value, unsigned size);
  void config_changed();  // bumps the generation and raises a config interrupt
  // After pushing used buffers on queue q: interrupts if the driver wants one.
  void interrupt_queue(unsigned q);
  // Pops a chain from queue q; on a malformed ring calls fail() and returns
  // false. Returns false too when the queue is empty.
  bool pop(unsigned q, Chain& c);
  u64& counter(const std::string& name) { return counters_.get(name); }

 private:
  void set_isr(u8 bits);

  DeviceType type_;
  std::string name_;
  GuestMemory& mem_;
  std::vector<Virtqueue> queues_;
  u64 driver_features_ = 0;
  u8 status_ = 0;
  u8 isr_ = 0;
  u8 generation_ = 0;
  std::vector<u8> config_;
  std::string broken_reason_;
  std::function<void(bool)> irq_sink_;
  Counters counters_;
  u64 *notifications_, *interrupts_;
};

}  // namespace popek::dev::virtio
