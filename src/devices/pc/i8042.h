// Intel 8042 keyboard controller with an attached AT keyboard and an AUX
// (PS/2 mouse) port with nothing plugged in.
//
// Register window: offset 0 = data (read: output buffer; write: to the
// keyboard, or a parameter of the last controller command), offset 4 =
// status (read) / command (write). A PC puts port B (0x61) between them, so a
// board maps data_port() and command_port() (each 1 byte) separately; the
// chip itself also accepts the combined 5-byte window.
//
// Enough for Linux's i8042 and atkbd/psmouse probes: controller self-test
// (0xAA -> 0x55), interface tests, command byte (0x20/0x60) and its RAM, AUX
// loopback (0xD3) with IRQ 12 delivery, AUX enable/disable, keyboard commands
// (reset 0xFF -> 0xFA 0xAA, identify 0xF2 -> 0xFA 0xAB 0x83, LEDs, typematic,
// scancode set, enable/disable). Bytes sent to the absent mouse (0xD4 x) are
// answered with 0xFE flagged as an AUX timeout, so psmouse gives up at once.
// Output port writes (0xD1) and pulses (0xF0-0xFF) drive the system reset and
// A20 hooks the board provides.
#pragma once
#include <array>
#include <functional>
#include <span>

#include "base/types.h"
#include "devices/bus/device.h"

namespace popek::dev {

class I8042 : public Device {
 public:
  struct Hooks {
    std::function<void()> reset;      // the CPU reset line was pulsed
    std::function<void(bool)> a20;    // gate A20 changed (output port bit 1)
  };

  I8042(IrqLine& kbd_irq, IrqLine& aux_irq, Hooks hooks);

  const char* name() const override { return "i8042"; }
  u64 read(u64 offset, unsigned size) override;
  void write(u64 offset, unsigned size, u64 value) override;
  void reset() override;

  // 1-byte views for boards that map data (0x60) and command (0x64) apart.
  Device& data_port() { return data_view_; }
  Device& command_port() { return command_view_; }

  // Scancodes from the host keyboard (already in the set the guest expects);
  // dropped while the keyboard has scanning disabled or its buffer is full.
  void keyboard_input(std::span<const u8> bytes);

  u8 command_byte() const { return ram_[0]; }
  bool a20() const { return out_port_ & 0x02; }
  u64 resets_requested() const { return resets_; }

  static constexpr unsigned kQueue = 16;
  struct Entry {
    u8 byte = 0;
    u8 flags = 0;  // kFromAux, kTimeout
  };
  struct Queue {
    std::array<Entry, kQueue> e{};
    u8 head = 0, count = 0;
  };
  struct State {
    static constexpr u32 kVersion = 1;
    u32 version = kVersion;
    std::array<u8, 32> ram{};  // ram[0] = command byte
    u8 out_port = 0x03;
    u8 pending_cmd = 0;  // controller command awaiting its data byte
    bool last_was_cmd = false;
    bool obf = false;
    Entry out{};         // the output buffer
    Queue ctrl, kbd, aux;
    u8 kbd_pending = 0;  // keyboard command awaiting its parameter
    bool kbd_scanning = true;
    u8 kbd_set = 2, kbd_leds = 0, kbd_typematic = 0x2B;
  };
  State save() const;
  void restore(const State& s);

  static constexpr u8 kFromAux = 0x01, kTimeout = 0x02;

 private:
  class View : public Device {
   public:
    View(I8042& c, u64 off, const char* n) : c_(c), off_(off), name_(n) {}
    const char* name() const override { return name_; }
    u64 read(u64 offset, unsigned size) override { return c_.read(off_ + offset, 1); }
    void write(u64 offset, unsigned size, u64 v) override { c_.write(off_ + offset, 1, v); }

   private:
    I8042& c_;
    u64 off_;
    const char* name_;
  };

  static void push(Queue& q, u8 byte, u8 flags = 0);
  static bool pop(Queue& q, Entry* e);
  u8 status() const;
  u8 read_data();
  void write_command(u8 v);
  void write_data(u8 v);
  void keyboard_command(u8 v);
  void write_output_port(u8 v);
  void refill();
  void update_irqs(bool new_byte);

  IrqLine& kbd_irq_;
  IrqLine& aux_irq_;
  Hooks hooks_;
  View data_view_{*this, 0, "i8042.data"};
  View command_view_{*this, 4, "i8042.cmd"};
  u64 resets_ = 0;

  std::array<u8, 32> ram_{};
  u8 out_port_ = 0x03;
  u8 pending_cmd_ = 0;
  bool last_was_cmd_ = false;
  bool obf_ = false;
  Entry out_{};
  Queue ctrl_, kbd_, aux_;
  u8 kbd_pending_ = 0;
  bool kbd_scanning_ = true;
  u8 kbd_set_ = 2, kbd_leds_ = 0, kbd_typematic_ = 0x2B;
};

}  // namespace popek::dev
