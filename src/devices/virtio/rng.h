// virtio-rng / entropy device (virtio 1.x, 5.4): fills each device-writable
// buffer of the request queue from the host's getrandom(2). A request with
// device-readable buffers is malformed (the device would have to write into a
// read-only buffer) and sets DEVICE_NEEDS_RESET.
#pragma once
#include "devices/virtio/virtio_device.h"

namespace popek::dev::virtio {

class VirtioRng final : public VirtioDevice {
 public:
  VirtioRng(std::string name, GuestMemory& mem, u16 queue_size = 64);

 protected:
  u64 device_features() const override { return 0; }
  void on_notify(unsigned q) override;

 private:
  u64 *requests_, *bytes_;
};

}  // namespace popek::dev::virtio
