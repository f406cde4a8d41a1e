#include "devices/pc/i8042.h"

#include <string>

#include "base/error.h"

namespace popek::dev {

namespace {
// Command byte (controller RAM 0).
constexpr u8 kCtrKbdInt = 0x01, kCtrAuxInt = 0x02, kCtrSys = 0x04, kCtrKbdDis = 0x10,
             kCtrAuxDis = 0x20, kCtrXlate = 0x40;
// Status register.
constexpr u8 kStOutFull = 0x01, kStSys = 0x04, kStCmd = 0x08, kStUnlocked = 0x10,
             kStAuxData = 0x20, kStTimeout = 0x40;
// Keyboard replies.
constexpr u8 kAck = 0xFA, kNak = 0xFE, kBatOk = 0xAA;
// What the controller RAM holds at power-on: keyboard IRQ on, translation on,
// AUX port disabled, system flag set (as firmware leaves it).
constexpr u8 kPowerOnCtr = kCtrKbdInt | kCtrSys | kCtrAuxDis | kCtrXlate;
}  // namespace

I8042::I8042(IrqLine& kbd_irq, IrqLine& aux_irq, Hooks hooks)
    : kbd_irq_(kbd_irq), aux_irq_(aux_irq), hooks_(std::move(hooks)) {
  reset();
}

void I8042::reset() {
  ram_.fill(0);
  ram_[0] = kPowerOnCtr;
  out_port_ = 0x03;  // reset line inactive, A20 enabled
  pending_cmd_ = 0;
  last_was_cmd_ = false;
  obf_ = false;
  out_ = Entry{};
  ctrl_ = kbd_ = aux_ = Queue{};
  kbd_pending_ = 0;
  kbd_scanning_ = true;
  kbd_set_ = 2;
  kbd_leds_ = 0;
  kbd_typematic_ = 0x2B;
  update_irqs(false);
}

void I8042::push(Queue& q, u8 byte, u8 flags) {
  if (q.count >= kQueue) return;  // a full buffer drops, as a real one would
  q.e[(q.head + q.count) % kQueue] = Entry{byte, flags};
  ++q.count;
}

bool I8042::pop(Queue& q, Entry* e) {
  if (!q.count) return false;
  *e = q.e[q.head];
  q.head = static_cast<u8>((q.head + 1) % kQueue);
  --q.count;
  return true;
}

void I8042::refill() {
  if (obf_) return;
  Entry e;
  if (pop(ctrl_, &e) || (!(ram_[0] & kCtrKbdDis) && pop(kbd_, &e)) ||
      (!(ram_[0] & kCtrAuxDis) && pop(aux_, &e))) {
    out_ = e;
    obf_ = true;
  }
}

void I8042::update_irqs(bool pulse) {
  refill();
  if (pulse) {  // a new byte in the buffer is a new edge for the PIC
    kbd_irq_.lower();
    aux_irq_.lower();
  }
  const bool aux = out_.flags & kFromAux;
  kbd_irq_.set(obf_ && !aux && (ram_[0] & kCtrKbdInt));
  aux_irq_.set(obf_ && aux && (ram_[0] & kCtrAuxInt));
}

u8 I8042::status() const {
  u8 s = kStUnlocked;
  if (obf_) s |= kStOutFull;
  if (ram_[0] & kCtrSys) s |= kStSys;
  if (last_was_cmd_) s |= kStCmd;
  if (obf_ && (out_.flags & kFromAux)) s |= kStAuxData;
  if (obf_ && (out_.flags & kTimeout)) s |= kStTimeout;
  return s;
}

u8 I8042::read_data() {
  const u8 v = out_.byte;
  if (obf_) {
    obf_ = false;
    update_irqs(true);
  }
  return v;
}

void I8042::write_output_port(u8 v) {
  const u8 old = out_port_;
  out_port_ = v | 0x01;
  if (((old ^ v) & 0x02) && hooks_.a20) hooks_.a20(v & 0x02);
  if (!(v & 0x01)) {  // bit 0 low asserts the CPU reset line
    ++resets_;
    if (hooks_.reset) hooks_.reset();
  }
}

void I8042::write_command(u8 v) {
  last_was_cmd_ = true;
  pending_cmd_ = 0;
  if (v >= 0x20 && v < 0x40) {  // read controller RAM (0x20: command byte)
    push(ctrl_, ram_[v & 0x1F]);
  } else if ((v >= 0x60 && v < 0x80) || (v >= 0xD1 && v <= 0xD4)) {
    pending_cmd_ = v;  // the parameter follows on the data port
  } else if (v >= 0xF0) {  // pulse output port bits whose command bit is 0
    if (!(v & 0x01)) {
      ++resets_;
      if (hooks_.reset) hooks_.reset();
    }
  } else {
    switch (v) {
      case 0xA4: push(ctrl_, 0xF1); break;  // no password installed
      case 0xA7: ram_[0] |= kCtrAuxDis; break;
      case 0xA8: ram_[0] &= static_cast<u8>(~kCtrAuxDis); break;
      case 0xA9: push(ctrl_, 0x00); break;  // AUX interface test: no error
      case 0xAA:                            // controller self-test
        ram_[0] |= kCtrSys;
        push(ctrl_, 0x55);
        break;
      case 0xAB: push(ctrl_, 0x00); break;  // keyboard interface test: no error
      case 0xAD: ram_[0] |= kCtrKbdDis; break;
      case 0xAE: ram_[0] &= static_cast<u8>(~kCtrKbdDis); break;
      case 0xC0: push(ctrl_, 0x80); break;  // input port: keyboard not inhibited
      case 0xD0: {
        u8 p = out_port_ & 0xCF;
        if (obf_ && !(out_.flags & kFromAux)) p |= 0x10;
        if (obf_ && (out_.flags & kFromAux)) p |= 0x20;
        push(ctrl_, p);
        break;
      }
      case 0xDD: write_output_port(out_port_ & ~0x02); break;
      case 0xDF: write_output_port(out_port_ | 0x02); break;
      case 0xE0: push(ctrl_, 0x00); break;  // test inputs
      default: break;                       // unknown: ignored
    }
  }
  update_irqs(false);
}

void I8042::keyboard_command(u8 v) {
  if (kbd_pending_ && v < 0xED) {
    const u8 cmd = kbd_pending_;
    kbd_pending_ = 0;
    switch (cmd) {
      case 0xED: kbd_leds_ = v & 7; push(kbd_, kAck); break;
      case 0xF3: kbd_typematic_ = v & 0x7F; push(kbd_, kAck); break;
      case 0xF0:
        if (v == 0) {
          push(kbd_, kAck);
          push(kbd_, kbd_set_);
        } else if (v <= 3) {
          kbd_set_ = v;
          push(kbd_, kAck);
        } else {
          push(kbd_, kNak);
        }
        break;
    }
    return;
  }
  kbd_pending_ = 0;
  auto defaults = [this] {
    kbd_typematic_ = 0x2B;
    kbd_leds_ = 0;
  };
  switch (v) {
    case 0xED:
    case 0xF0:
    case 0xF3:
      push(kbd_, kAck);
      kbd_pending_ = v;
      break;
    case 0xEE: push(kbd_, 0xEE); break;  // echo
    case 0xF2:                           // identify: MF2 keyboard
      push(kbd_, kAck);
      push(kbd_, 0xAB);
      push(kbd_, (ram_[0] & kCtrXlate) ? 0x41 : 0x83);  // 0x83 as translated to set 1
      break;
    case 0xF4: kbd_scanning_ = true; push(kbd_, kAck); break;
    case 0xF5: kbd_scanning_ = false; defaults(); push(kbd_, kAck); break;
    case 0xF6: defaults(); push(kbd_, kAck); break;
    case 0xFF:  // reset and self-test (BAT)
      kbd_ = Queue{};
      defaults();
      kbd_set_ = 2;
      kbd_scanning_ = true;
      push(kbd_, kAck);
      push(kbd_, kBatOk);
      break;
    default:
      if (v >= 0xF7) {  // typematic/make/break mode commands, resend
        push(kbd_, kAck);
      } else {
        push(kbd_, kNak);
      }
      break;
  }
}

void I8042::write_data(u8 v) {
  last_was_cmd_ = false;
  const u8 cmd = pending_cmd_;
  pending_cmd_ = 0;
  if (cmd >= 0x60 && cmd < 0x80) {
    ram_[cmd & 0x1F] = v;
  } else if (cmd == 0xD1) {
    write_output_port(v);
  } else if (cmd == 0xD2) {
    push(ctrl_, v);  // as if from the keyboard
  } else if (cmd == 0xD3) {
    push(ctrl_, v, kFromAux);  // AUX loopback
  } else if (cmd == 0xD4) {
    // To the mouse: there is none, so the transfer times out.
    push(ctrl_, kNak, kFromAux | kTimeout);
  } else {
    keyboard_command(v);
  }
  update_irqs(false);
}

void I8042::keyboard_input(std::span<const u8> bytes) {
  if (!kbd_scanning_) return;
  for (u8 b : bytes) push(kbd_, b);
  update_irqs(false);
}

u64 I8042::read(u64 offset, unsigned size) {
  if (offset == 0) return read_data();
  if (offset == 4) return status();
  return 0xFF;
}

void I8042::write(u64 offset, unsigned size, u64 value) {
  if (offset == 0)
    write_data(static_cast<u8>(value));
  else if (offset == 4)
    write_command(static_cast<u8>(value));
}

I8042::State I8042::save() const {
  State s;
  s.ram = ram_;
  s.out_port = out_port_;
  s.pending_cmd = pending_cmd_;
  s.last_was_cmd = last_was_cmd_;
  s.obf = obf_;
  s.out = out_;
  s.ctrl = ctrl_;
  s.kbd = kbd_;
  s.aux = aux_;
  s.kbd_pending = kbd_pending_;
  s.kbd_scanning = kbd_scanning_;
  s.kbd_set = kbd_set_;
  s.kbd_leds = kbd_leds_;
  s.kbd_typematic = kbd_typematic_;
  return s;
}

void I8042::restore(const State& s) {
  if (s.version != State::kVersion)
    throw Error("i8042: unsupported state version " + std::to_string(s.version));
  auto sane = [](Queue q) {
    q.head %= kQueue;
    if (q.count > kQueue) q.count = kQueue;
    return q;
  };
  ram_ = s.ram;
  out_port_ = s.out_port;
  pending_cmd_ = s.pending_cmd;
  last_was_cmd_ = s.last_was_cmd;
  obf_ = s.obf;
  out_ = s.out;
  ctrl_ = sane(s.ctrl);
  kbd_ = sane(s.kbd);
  aux_ = sane(s.aux);
  kbd_pending_ = s.kbd_pending;
  kbd_scanning_ = s.kbd_scanning;
  kbd_set_ = s.kbd_set;
  kbd_leds_ = s.kbd_leds;
  kbd_typematic_ = s.kbd_typematic;
  update_irqs(false);
}

}  // namespace popek::dev
