// The board's paravirtual devices: virtio-blk disks (--drive), virtio-net
// cards (--netdev) and virtio-rng (--rng) as PCI functions behind the host
// bridge, their BARs on the MMIO bus, their INTx lines on the PIC (shared
// lines are wired-OR, level-triggered in the ELCR), and the host-I/O event
// loop (block completions, network sockets) that the vCPU loop polls.
// Slots, IRQs and the BAR window are in pc_layout.h.
#pragma once
#include <poll.h>

#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "base/types.h"
#include "net/net.h"

namespace popek::dev {
class Bus;
class IrqLine;
class PciBus;
class PciFunction;
namespace virtio {
class VirtioDevice;
class VirtioPciFunction;
class GuestMemory;
}  // namespace virtio
}  // namespace popek::dev
namespace popek::snap {
class StreamWriter;
class Loader;
}  // namespace popek::snap
namespace popek::mem {
class PhysMem;
}

namespace popek::machine {

// One --drive: QEMU's spelling, file=PATH[,format=raw|qcow2][,readonly=on]
// [,cache=writeback|writethrough|unsafe][,serial=S][,if=virtio][,id=ID].
struct DriveConfig {
  std::string file;
  std::string format;  // "" = detect from the file
  bool readonly = false;
  std::string cache = "writeback";
  std::string serial;
};
// Throws popek::Error naming the bad part.
DriveConfig parse_drive(const std::string& spec);

struct VirtioConfig {
  std::vector<DriveConfig> drives;
  std::vector<net::NetdevSpec> netdevs;
  bool rng = false;
  bool deterministic = false;  // disks complete requests synchronously
  // A migration's destination: hostfwd ports are bound by claim_host_ports()
  // once the stream is complete (the source holds them until then).
  bool defer_host_ports = false;
};

class VirtioBoard {
 public:
  // `irq_set(n, level)` drives PIC input n. Opens every disk and backend
  // (throws popek::Error with the flag's name on failure).
  VirtioBoard(const VirtioConfig& cfg, mem::PhysMem& pm, dev::PciBus& pci, dev::Bus& mmio,
              std::function<void(unsigned, bool)> irq_set);
  ~VirtioBoard();

  bool empty() const { return devices_.empty(); }
  // IRQ numbers in use (the board makes them level-triggered).
  std::vector<unsigned> irqs() const;

  // Host I/O: waits up to timeout_ns for device I/O or for `extra` (e.g. the
  // console's stdin; may be null) and dispatches what is ready. With
  // timeout_ns = 0 it only looks. Returns extra's revents.
  short poll(u64 timeout_ns, const pollfd* extra = nullptr);

  std::vector<std::pair<std::string, u64>> stats() const;

  // ---- suspend/resume (machine_snapshot.cpp) ----
  // Whether every device can be saved (not with a TAP network card); else why not.
  bool can_save(std::string* why) const;
  // In-flight disk requests completed into their rings, images flushed.
  void quiesce();
  // One section per device, named as the device ("virtio-blk0", ...).
  void save(snap::StreamWriter& w) const;
  // Registers a loader for each device's section. A network card's backend
  // state is a section of its own ("virtio-net0.backend").
  void add_loaders(snap::Loader& l);
  // The network backends' host ports (hostfwd listeners): let go at a
  // migration's switch-over; taken by the destination (claim throws
  // popek::Error naming the port; then none is held).
  void release_host_ports();
  void claim_host_ports();
  // What the devices are, for the check that a stream fits this machine:
  // e.g. "virtio-blk0 (8589934592 bytes)", "virtio-rng0".
  std::vector<std::string> describe() const;

 private:
  class Ram;
  void add(std::unique_ptr<dev::virtio::VirtioDevice> d);
  void on_bar_change(dev::PciFunction& f, unsigned bar, u64 old_addr, u64 new_addr);

  std::unique_ptr<Ram> ram_;
  dev::PciBus& pci_;
  dev::Bus& mmio_;
  std::function<void(unsigned, bool)> irq_set_;
  std::vector<std::unique_ptr<dev::virtio::VirtioDevice>> devices_;
  std::vector<std::unique_ptr<dev::IrqLine>> lines_;
  std::vector<std::unique_ptr<dev::virtio::VirtioPciFunction>> fns_;
  unsigned irq_count_[16] = {};
  std::vector<pollfd> fds_;
  std::vector<usize> split_;  // fds_ index where each device's entries start
  u64 bar_mapping_errors_ = 0;
};

}  // namespace popek::machine
