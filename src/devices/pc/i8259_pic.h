// Intel 8259A programmable interrupt controller, one chip. The board cascades
// two: it connects the slave's INT output (the IrqLine given to the slave) to
// one master input and tells the master with attach_slave(), so that an INTA
// cycle on the master fetches the vector from the slave.
//
// Register window (offsets relative to the chip's base, 2 bytes):
//   0 (A0=0): write ICW1 / OCW2 / OCW3; read IRR, ISR or the poll byte
//   1 (A0=1): write ICW2-4 during initialisation, else OCW1 (IMR); read IMR
//
// Edge-triggered inputs latch a rising edge into the IRR until it is
// acknowledged (so IrqLine::pulse() is never lost); level-triggered inputs
// (ELCR bit set, or LTIM in ICW1) follow the input. An INTA with no request
// left returns the spurious IR7 vector without setting ISR, as the datasheet
// specifies (IRQ 7 on the master, IRQ 15 through the slave).
#pragma once
#include "base/types.h"
#include "devices/bus/device.h"

namespace popek::dev {

class I8259Pic : public Device {
 public:
  // `intr` is the chip's INT output: to the CPU for the master, to a master
  // input for the slave.
  explicit I8259Pic(IrqLine& intr, const char* name = "pic");

  const char* name() const override { return name_; }
  u64 read(u64 offset, unsigned size) override;
  void write(u64 offset, unsigned size, u64 value) override;
  void reset() override;

  // Input pin 0..7 driven by a device (or by a slave's INT).
  void set_irq(unsigned pin, bool level);
  // The INT output: an unmasked request of higher priority than any in service.
  bool has_interrupt() const { return best_request() >= 0; }
  // The INTA cycle: sets ISR (unless AEOI), clears an edge IRR bit, and returns
  // the vector (the slave's, if the chosen input is a cascade with a slave
  // attached). Without a request, returns the spurious IR7 vector.
  u8 acknowledge();
  // Declares that input `pin` carries the INT output of `slave`.
  void attach_slave(unsigned pin, I8259Pic* slave);

  // Edge/Level Control Register (PIIX ports 0x4D0/0x4D1): bit n = input n is
  // level triggered. Bits outside `mask` (set with set_elcr_mask) stay zero.
  u8 elcr() const { return elcr_; }
  void set_elcr(u8 v);
  void set_elcr_mask(u8 mask) { elcr_mask_ = mask; set_elcr(elcr_); }

  // Observers for tests and --stats.
  u8 irr() const { return irr_; }
  u8 isr() const { return isr_; }
  u8 imr() const { return imr_; }
  u8 vector_base() const { return icw2_ & 0xF8; }
  u64 spurious_count() const { return spurious_; }

  struct State {
    static constexpr u32 kVersion = 1;
    u32 version = kVersion;
    u8 irr = 0, isr = 0, imr = 0, pins = 0, elcr = 0, elcr_mask = 0xFF;
    u8 icw1 = 0, icw2 = 0, icw3 = 0, icw4 = 0;
    u8 init_step = 0;        // 0 = ready; 2,3,4 = expecting that ICW
    u8 lowest_priority = 7;  // the IR with the lowest priority (rotation)
    bool read_isr = false, poll = false, special_mask = false, rotate_aeoi = false;
    u64 spurious = 0;
  };
  State save() const;
  void restore(const State& s);

 private:
  // Highest-priority unmasked request that beats everything in service, or -1.
  int best_request() const;
  int highest_in_service() const;
  // Priority rank of IR `n`: 0 is the highest.
  unsigned rank(unsigned n) const { return (n - lowest_priority_ - 1) & 7; }
  bool level_mode(unsigned pin) const { return ((icw1_ & 0x08) != 0) || ((elcr_ >> pin) & 1); }
  void write_command(u8 v);
  void write_data(u8 v);
  void eoi(int level, bool rotate);
  u8 poll_byte();
  void update();

  const char* name_;
  IrqLine& intr_;
  I8259Pic* slaves_[8] = {};
  u8 irr_ = 0, isr_ = 0, imr_ = 0xFF, pins_ = 0, elcr_ = 0, elcr_mask_ = 0xFF;
  u8 icw1_ = 0, icw2_ = 0, icw3_ = 0, icw4_ = 0;
  u8 init_step_ = 0;
  u8 lowest_priority_ = 7;
  bool read_isr_ = false, poll_ = false, special_mask_ = false, rotate_aeoi_ = false;
  u64 spurious_ = 0;
};

// The ELCR as its own one-byte I/O register, for boards that map it (the PIIX
// puts the master's at 0x4D0 and the slave's at 0x4D1).
class I8259Elcr : public Device {
 public:
  explicit I8259Elcr(I8259Pic& pic) : pic_(pic) {}
  const char* name() const override { return "elcr"; }
  u64 read(u64 offset, unsigned size) override { return offset == 0 ? pic_.elcr() : 0xFF; }
  void write(u64 offset, unsigned size, u64 value) override {
    if (offset == 0) pic_.set_elcr(static_cast<u8>(value));
  }

 private:
  I8259Pic& pic_;
};

}  // namespace popek::dev
