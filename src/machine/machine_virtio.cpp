// The Machine's side of the paravirtual devices (virtio_board.h): building
// them, making their IRQs level-triggered, and polling host I/O from the vCPU
// loop.
#include <time.h>

#include "machine/machine.h"

namespace popek::machine {

namespace {
// While the vCPU runs, host I/O (disk completions, network sockets) is looked
// at no more often than this.
constexpr u64 kIoPollInterval = 100000;  // ns

u64 host_ns() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return u64(ts.tv_sec) * 1000000000 + u64(ts.tv_nsec);
}
}  // namespace

void Machine::build_virtio() {
  VirtioConfig vc = cfg_.virtio;
  vc.deterministic = cfg_.deterministic;
  virtio_ = std::make_unique<VirtioBoard>(vc, *pm_, *pci_bus_, mmio_,
                                          [this](unsigned irq, bool level) {
                                            pci_level_[irq] = level;
                                            drive_irq(irq);
                                          });
  if (virtio_->empty()) {
    virtio_.reset();
    return;
  }
  // PCI interrupts are level-triggered: mark them so in the ELCR, as firmware does.
  for (unsigned irq : virtio_->irqs()) {
    if (irq < 8) pic_master_->set_elcr(u8(pic_master_->elcr() | (1u << irq)));
    else pic_slave_->set_elcr(u8(pic_slave_->elcr() | (1u << (irq - 8))));
  }
}

bool Machine::has_io() const { return virtio_ != nullptr; }

void Machine::poll_io_if_due() {
  if (!virtio_) return;
  const u64 now = host_ns();
  if (now - last_io_poll_ns_ < kIoPollInterval) return;
  last_io_poll_ns_ = now;
  virtio_->poll(0);
}

}  // namespace popek::machine
