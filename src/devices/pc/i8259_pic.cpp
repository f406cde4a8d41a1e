#include "devices/pc/i8259_pic.h"

#include "base/error.h"

namespace popek::dev {

namespace {
// ICW1
constexpr u8 kIcw1Ic4 = 0x01, kIcw1Single = 0x02, kIcw1Ltim = 0x08, kIcw1Init = 0x10;
// ICW4
constexpr u8 kIcw4Aeoi = 0x02, kIcw4Sfnm = 0x10;
// OCW3
constexpr u8 kOcw3Ris = 0x01, kOcw3Rr = 0x02, kOcw3Poll = 0x04, kOcw3Smm = 0x20, kOcw3Esmm = 0x40;
constexpr u8 kOcw3Select = 0x08;
}  // namespace

I8259Pic::I8259Pic(IrqLine& intr, const char* name) : name_(name), intr_(intr) {}

void I8259Pic::reset() {
  irr_ = isr_ = 0;
  // The datasheet leaves the power-on state undefined until ICW1; popek masks
  // every input until then (ICW1 clears the mask), so a guest that never
  // initialises the controller is not interrupted with a meaningless vector.
  imr_ = 0xFF;
  // The input pins are wires: reset does not change what the devices drive.
  elcr_ = 0;
  icw1_ = icw2_ = icw3_ = icw4_ = 0;
  init_step_ = 0;
  lowest_priority_ = 7;
  read_isr_ = poll_ = special_mask_ = rotate_aeoi_ = false;
  update();
}

void I8259Pic::attach_slave(unsigned pin, I8259Pic* slave) {
  POPEK_CHECK(pin < 8);
  slaves_[pin] = slave;
}

void I8259Pic::set_elcr(u8 v) {
  elcr_ = v & elcr_mask_;
  // Inputs that became level triggered follow their pin from now on.
  irr_ = static_cast<u8>((irr_ & ~elcr_) | (pins_ & elcr_));
  if (icw1_ & kIcw1Ltim) irr_ = pins_;
  update();
}

void I8259Pic::set_irq(unsigned pin, bool level) {
  POPEK_CHECK(pin < 8);
  const u8 bit = static_cast<u8>(1u << pin);
  const bool was = pins_ & bit;
  pins_ = level ? (pins_ | bit) : (pins_ & ~bit);
  if (level_mode(pin)) {
    irr_ = level ? (irr_ | bit) : (irr_ & ~bit);
  } else if (level && !was) {
    irr_ |= bit;  // rising edge latched until INTA
  }
  update();
}

int I8259Pic::highest_in_service() const {
  for (unsigned r = 0; r < 8; ++r) {
    const unsigned n = (lowest_priority_ + 1 + r) & 7;
    if ((isr_ >> n) & 1) return static_cast<int>(n);
  }
  return -1;
}

int I8259Pic::best_request() const {
  const u8 pending = irr_ & ~imr_;
  if (!pending) return -1;
  u8 blocking = isr_;
  // Special mask mode: a level that is masked does not hold off others even
  // while it is in service.
  if (special_mask_) blocking &= ~imr_;
  // Special fully nested mode (master): a cascade input in service does not
  // block a new, higher-priority request from the same slave.
  if (icw4_ & kIcw4Sfnm) {
    for (unsigned n = 0; n < 8; ++n)
      if (slaves_[n]) blocking &= static_cast<u8>(~(1u << n));
  }
  for (unsigned r = 0; r < 8; ++r) {
    const unsigned n = (lowest_priority_ + 1 + r) & 7;
    if ((blocking >> n) & 1) return -1;  // something at least as urgent is in service
    if ((pending >> n) & 1) return static_cast<int>(n);
  }
  return -1;
}

void I8259Pic::update() { intr_.set(has_interrupt()); }

u8 I8259Pic::acknowledge() {
  const int n = best_request();
  if (n < 0) {
    // The request went away between INT and INTA: default to IR7, ISR untouched.
    ++spurious_;
    return static_cast<u8>((icw2_ & 0xF8) | 7);
  }
  const u8 bit = static_cast<u8>(1u << n);
  irr_ &= ~bit;
  if (level_mode(static_cast<unsigned>(n))) irr_ |= pins_ & bit;  // still driven
  if (icw4_ & kIcw4Aeoi) {
    if (rotate_aeoi_) lowest_priority_ = static_cast<u8>(n);
  } else {
    isr_ |= bit;
  }
  u8 vec;
  if (slaves_[n])
    vec = slaves_[n]->acknowledge();
  else
    vec = static_cast<u8>((icw2_ & 0xF8) | n);
  update();
  return vec;
}

u8 I8259Pic::poll_byte() {
  // A poll read acts as an INTA for this chip alone (no cascade cycle).
  const int n = best_request();
  if (n < 0) return 0;
  const u8 bit = static_cast<u8>(1u << n);
  irr_ &= ~bit;
  if (level_mode(static_cast<unsigned>(n))) irr_ |= pins_ & bit;
  if (icw4_ & kIcw4Aeoi) {
    if (rotate_aeoi_) lowest_priority_ = static_cast<u8>(n);
  } else {
    isr_ |= bit;
  }
  update();
  return static_cast<u8>(0x80 | n);
}

void I8259Pic::eoi(int level, bool rotate) {
  const int n = level < 0 ? highest_in_service() : level;
  if (n < 0) return;
  isr_ &= static_cast<u8>(~(1u << n));
  if (rotate) lowest_priority_ = static_cast<u8>(n);
}

void I8259Pic::write_command(u8 v) {
  if (v & kIcw1Init) {
    icw1_ = v;
    if (!(v & kIcw1Ic4)) icw4_ = 0;
    imr_ = isr_ = 0;
    // The edge sense latches are reset: an edge input needs a fresh rising edge.
    irr_ = (v & kIcw1Ltim) ? pins_ : static_cast<u8>(pins_ & elcr_);
    lowest_priority_ = 7;
    special_mask_ = read_isr_ = poll_ = rotate_aeoi_ = false;
    init_step_ = 2;
  } else if (v & kOcw3Select) {  // OCW3
    if (v & kOcw3Poll) poll_ = true;
    if (v & kOcw3Rr) read_isr_ = v & kOcw3Ris;
    if (v & kOcw3Esmm) special_mask_ = v & kOcw3Smm;
  } else {  // OCW2
    const u8 level = v & 7;
    switch (v >> 5) {
      case 0: rotate_aeoi_ = false; break;
      case 1: eoi(-1, false); break;
      case 2: break;  // no operation
      case 3: eoi(level, false); break;
      case 4: rotate_aeoi_ = true; break;
      case 5: eoi(-1, true); break;
      case 6: lowest_priority_ = level; break;
      case 7: eoi(level, true); break;
    }
  }
  update();
}

void I8259Pic::write_data(u8 v) {
  switch (init_step_) {
    case 2:
      icw2_ = v;
      init_step_ = (icw1_ & kIcw1Single) ? ((icw1_ & kIcw1Ic4) ? 4 : 0) : 3;
      break;
    case 3:
      icw3_ = v;
      init_step_ = (icw1_ & kIcw1Ic4) ? 4 : 0;
      break;
    case 4:
      icw4_ = v;
      init_step_ = 0;
      break;
    default:
      imr_ = v;  // OCW1
      break;
  }
  update();
}

u64 I8259Pic::read(u64 offset, unsigned size) {
  u64 v = 0;
  for (unsigned i = 0; i < size; ++i) {
    const u64 off = offset + i;
    u8 b = 0xFF;
    if (off <= 1 && poll_) {
      poll_ = false;
      b = poll_byte();
    } else if (off == 0) {
      b = read_isr_ ? isr_ : irr_;
    } else if (off == 1) {
      b = imr_;
    }
    v |= static_cast<u64>(b) << (8 * i);
  }
  return v;
}

void I8259Pic::write(u64 offset, unsigned size, u64 value) {
  for (unsigned i = 0; i < size; ++i) {
    const u8 b = static_cast<u8>(value >> (8 * i));
    if (offset + i == 0)
      write_command(b);
    else if (offset + i == 1)
      write_data(b);
  }
}

I8259Pic::State I8259Pic::save() const {
  State s;
  s.irr = irr_; s.isr = isr_; s.imr = imr_; s.pins = pins_;
  s.elcr = elcr_; s.elcr_mask = elcr_mask_;
  s.icw1 = icw1_; s.icw2 = icw2_; s.icw3 = icw3_; s.icw4 = icw4_;
  s.init_step = init_step_;
  s.lowest_priority = lowest_priority_;
  s.read_isr = read_isr_; s.poll = poll_; s.special_mask = special_mask_;
  s.rotate_aeoi = rotate_aeoi_;
  s.spurious = spurious_;
  return s;
}

void I8259Pic::restore(const State& s) {
  if (s.version != State::kVersion)
    throw Error(std::string(name_) + ": unsupported state version " + std::to_string(s.version));
  irr_ = s.irr; isr_ = s.isr; imr_ = s.imr; pins_ = s.pins;
  elcr_ = s.elcr; elcr_mask_ = s.elcr_mask;
  icw1_ = s.icw1; icw2_ = s.icw2; icw3_ = s.icw3; icw4_ = s.icw4;
  init_step_ = s.init_step;
  lowest_priority_ = s.lowest_priority & 7;
  read_isr_ = s.read_isr; poll_ = s.poll; special_mask_ = s.special_mask;
  rotate_aeoi_ = s.rotate_aeoi;
  spurious_ = s.spurious;
  update();
}

}  // namespace popek::dev
