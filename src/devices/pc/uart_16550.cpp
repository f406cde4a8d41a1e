#include "devices/pc/uart_16550.h"

#include <algorithm>
#include <string>

#include "base/error.h"

namespace popek::dev {

namespace {
enum Reg : unsigned { kRbr = 0, kIer = 1, kIir = 2, kLcr = 3, kMcr = 4, kLsr = 5, kMsr = 6, kScr = 7 };
// IER
constexpr u8 kIerRda = 0x01, kIerThre = 0x02, kIerRls = 0x04, kIerMsi = 0x08;
// IIR
constexpr u8 kIirNone = 0x01, kIirMsi = 0x00, kIirThre = 0x02, kIirRda = 0x04, kIirRls = 0x06,
             kIirTimeout = 0x0C, kIirFifos = 0xC0;
// LCR
constexpr u8 kLcrDlab = 0x80;
// MCR
constexpr u8 kMcrDtr = 0x01, kMcrRts = 0x02, kMcrOut1 = 0x04, kMcrOut2 = 0x08, kMcrLoop = 0x10;
// LSR
constexpr u8 kLsrDr = 0x01, kLsrOe = 0x02, kLsrBi = 0x10, kLsrThre = 0x20, kLsrTemt = 0x40,
             kLsrFifoErr = 0x80, kLsrErrors = 0x1E;
// MSR
constexpr u8 kMsrDcts = 0x01, kMsrDdsr = 0x02, kMsrTeri = 0x04, kMsrDdcd = 0x08;
constexpr u8 kMsrCts = 0x10, kMsrDsr = 0x20, kMsrRi = 0x40, kMsrDcd = 0x80;
}  // namespace

Uart16550::Uart16550(Clock& clock, IrqLine& irq, Options opt, const char* name)
    : clock_(clock), irq_(irq), opt_(opt), name_(name) {
  reset();
}

void Uart16550::reset() {
  // Master reset leaves RBR/THR, the divisor latch and SCR alone.
  ier_ = lcr_ = mcr_ = lsr_err_ = msr_delta_ = fcr_ = 0;
  clear_rx();
  thr_ipending_ = false;
  update_lines();
  msr_delta_ = 0;
  update_irq();
}

u64 Uart16550::char_time_ns() const {
  // Frame in half bits: start + data + parity + stop (1, or 1.5/2).
  const unsigned data = 5 + (lcr_ & 3);
  unsigned half_bits = 2 * (1 + data + ((lcr_ & 0x08) ? 1 : 0));
  half_bits += (lcr_ & 0x04) ? (data == 5 ? 3 : 4) : 2;
  const u64 div = std::max<u32>(divisor(), 1);
  return half_bits * div * 16 * 1000000000ull / (2 * kInputClockHz);
}

unsigned Uart16550::trigger() const {
  if (!fifo_enabled()) return 1;
  static constexpr unsigned kLevels[4] = {1, 4, 8, 14};
  return kLevels[fcr_ >> 6];
}

usize Uart16550::rx_space() const { return (fifo_enabled() ? kFifoSize : 1) - rx_count_; }

void Uart16550::clear_rx() {
  rx_head_ = rx_count_ = 0;
  timeout_fired_ = false;
  break_in_fifo_ = false;
  timeout_deadline_ = kNever;
}

void Uart16550::arm_timeout() {
  timeout_deadline_ =
      (fifo_enabled() && rx_count_ > 0) ? clock_.now_ns() + 4 * char_time_ns() : kNever;
}

void Uart16550::poll_timeout() {
  if (timeout_deadline_ != kNever && clock_.now_ns() >= timeout_deadline_) {
    timeout_deadline_ = kNever;
    timeout_fired_ = rx_count_ > 0;
  }
}

void Uart16550::rx_push(u8 b) {
  const unsigned cap = fifo_enabled() ? kFifoSize : 1;
  if (rx_count_ >= cap) {
    lsr_err_ |= kLsrOe;  // overrun: the FIFO keeps its bytes, the new one is lost
    if (!fifo_enabled()) rx_[rx_head_] = b;  // without FIFO, RBR is overwritten
    return;
  }
  rx_[(rx_head_ + rx_count_) % kFifoSize] = b;
  ++rx_count_;
  if (!timeout_fired_) arm_timeout();  // new data restarts the timer
}

u8 Uart16550::rx_pop() {
  if (rx_count_ == 0) return rbr_;
  rbr_ = rx_[rx_head_];
  rx_head_ = static_cast<u8>((rx_head_ + 1) % kFifoSize);
  --rx_count_;
  if (rx_count_ == 0) break_in_fifo_ = false;
  timeout_fired_ = false;  // a read clears the timeout and restarts the timer
  arm_timeout();
  return rbr_;
}

usize Uart16550::receive(std::span<const u8> bytes) {
  poll_timeout();
  const usize n = std::min(bytes.size(), rx_space());
  for (usize i = 0; i < n; ++i) rx_push(bytes[i]);
  update_irq();
  return n;
}

void Uart16550::receive_break() {
  poll_timeout();
  if (rx_space() == 0) {
    lsr_err_ |= kLsrOe;
  } else {
    rx_push(0);
    break_in_fifo_ = true;
  }
  lsr_err_ |= kLsrBi;
  update_irq();
}

void Uart16550::set_modem_inputs(bool cts, bool dsr, bool ri, bool dcd) {
  inputs_ = static_cast<u8>((cts ? kMsrCts : 0) | (dsr ? kMsrDsr : 0) | (ri ? kMsrRi : 0) |
                            (dcd ? kMsrDcd : 0));
  update_lines();
  update_irq();
}

void Uart16550::update_lines() {
  u8 now = inputs_;
  if (mcr_ & kMcrLoop) {
    // Loopback: the modem outputs are wired back to the inputs.
    now = static_cast<u8>(((mcr_ & kMcrRts) ? kMsrCts : 0) | ((mcr_ & kMcrDtr) ? kMsrDsr : 0) |
                          ((mcr_ & kMcrOut1) ? kMsrRi : 0) | ((mcr_ & kMcrOut2) ? kMsrDcd : 0));
  }
  const u8 changed = now ^ lines_;
  if (changed & kMsrCts) msr_delta_ |= kMsrDcts;
  if (changed & kMsrDsr) msr_delta_ |= kMsrDdsr;
  if ((changed & kMsrRi) && !(now & kMsrRi)) msr_delta_ |= kMsrTeri;  // trailing edge only
  if (changed & kMsrDcd) msr_delta_ |= kMsrDdcd;
  lines_ = now;
}

u8 Uart16550::iir() const {
  u8 id = kIirNone;
  const bool timeout = timeout_fired_ && rx_count_ > 0;
  if ((ier_ & kIerRls) && (lsr_err_ & kLsrErrors))
    id = kIirRls;
  else if ((ier_ & kIerRda) && rx_count_ >= trigger())
    id = kIirRda;
  else if ((ier_ & kIerRda) && timeout)
    id = kIirTimeout;
  else if ((ier_ & kIerThre) && thr_ipending_)
    id = kIirThre;
  else if ((ier_ & kIerMsi) && msr_delta_)
    id = kIirMsi;
  return static_cast<u8>(id | (fifo_enabled() ? kIirFifos : 0));
}

void Uart16550::update_irq() {
  bool level = !(iir() & kIirNone);
  if (opt_.out2_gates_irq) level = level && (mcr_ & kMcrOut2) && !(mcr_ & kMcrLoop);
  irq_.set(level);
}

u64 Uart16550::next_event_ns() const { return timeout_deadline_; }

void Uart16550::on_time(u64 now_ns) {
  if (timeout_deadline_ != kNever && now_ns >= timeout_deadline_) {
    timeout_deadline_ = kNever;
    timeout_fired_ = rx_count_ > 0;
    update_irq();
  }
}

void Uart16550::transmit(u8 b) {
  ++tx_bytes_;
  if (mcr_ & kMcrLoop) {
    rx_push(b);
  } else if (tx_sink_) {
    tx_sink_(b);
  }
  thr_ipending_ = true;  // the transmitter is idle again at once
}

u8 Uart16550::read_reg(unsigned reg) {
  switch (reg) {
    case kRbr:
      if (lcr_ & kLcrDlab) return dll_;
      return rx_pop();
    case kIer:
      if (lcr_ & kLcrDlab) return dlm_;
      return ier_;
    case kIir: {
      const u8 v = iir();
      if ((v & 0x0F) == kIirThre) thr_ipending_ = false;
      return v;
    }
    case kLcr: return lcr_;
    case kMcr: return mcr_;
    case kLsr: {
      u8 v = static_cast<u8>(kLsrThre | kLsrTemt | lsr_err_);
      if (rx_count_) v |= kLsrDr;
      if (fifo_enabled() && break_in_fifo_) v |= kLsrFifoErr;
      lsr_err_ = 0;  // OE, PE, FE, BI clear on read
      return v;
    }
    case kMsr: {
      const u8 v = lines_ | msr_delta_;
      msr_delta_ = 0;
      return v;
    }
    default: return scr_;
  }
}

void Uart16550::write_reg(unsigned reg, u8 v) {
  switch (reg) {
    case kRbr:
      if (lcr_ & kLcrDlab) {
        dll_ = v;
        arm_timeout();
      } else {
        thr_ipending_ = false;
        transmit(v);
      }
      break;
    case kIer:
      if (lcr_ & kLcrDlab) {
        dlm_ = v;
        arm_timeout();
      } else {
        const u8 old = ier_;
        ier_ = v & 0x0F;
        // Enabling ETBEI with the transmitter empty raises THRE at once; Linux's
        // UART_BUG_THRE test toggles IER to see it re-asserted.
        if ((ier_ & kIerThre) && !(old & kIerThre)) thr_ipending_ = true;
      }
      break;
    case kIir: {  // FCR
      const u8 old = fcr_;
      if ((v ^ old) & 1) {
        clear_rx();  // changing FIFO mode empties both FIFOs
        if (v & 1) thr_ipending_ = true;
      }
      fcr_ = (v & 1) ? static_cast<u8>(v & 0xC1) : 0;
      if (v & 0x02) clear_rx();
      break;
    }
    case kLcr:
      lcr_ = v;
      break;
    case kMcr:
      mcr_ = v & 0x1F;
      update_lines();
      break;
    case kLsr:
    case kMsr:
      break;  // read only (factory test on some parts)
    default:
      scr_ = v;
      break;
  }
}

u64 Uart16550::read(u64 offset, unsigned size) {
  poll_timeout();
  u64 v = 0;
  for (unsigned i = 0; i < size; ++i) {
    const u64 off = offset + i;
    const u8 b = off < 8 ? read_reg(static_cast<unsigned>(off)) : 0xFF;
    v |= static_cast<u64>(b) << (8 * i);
  }
  update_irq();
  return v;
}

void Uart16550::write(u64 offset, unsigned size, u64 value) {
  poll_timeout();
  for (unsigned i = 0; i < size; ++i) {
    const u64 off = offset + i;
    if (off < 8) write_reg(static_cast<unsigned>(off), static_cast<u8>(value >> (8 * i)));
  }
  update_irq();
}

Uart16550::State Uart16550::save() const {
  State s;
  s.ier = ier_; s.lcr = lcr_; s.mcr = mcr_; s.lsr_err = lsr_err_; s.msr_delta = msr_delta_;
  s.scr = scr_; s.dll = dll_; s.dlm = dlm_; s.fcr = fcr_; s.rbr = rbr_;
  s.rx = rx_; s.rx_head = rx_head_; s.rx_count = rx_count_;
  s.thr_ipending = thr_ipending_; s.timeout_fired = timeout_fired_;
  s.break_in_fifo = break_in_fifo_; s.timeout_deadline = timeout_deadline_;
  s.inputs = inputs_; s.lines = lines_;
  return s;
}

void Uart16550::restore(const State& s) {
  if (s.version != State::kVersion)
    throw Error(std::string(name_) + ": unsupported state version " + std::to_string(s.version));
  ier_ = s.ier & 0x0F; lcr_ = s.lcr; mcr_ = s.mcr & 0x1F; lsr_err_ = s.lsr_err & kLsrErrors;
  msr_delta_ = s.msr_delta & 0x0F; scr_ = s.scr; dll_ = s.dll; dlm_ = s.dlm;
  fcr_ = s.fcr & 0xC1; rbr_ = s.rbr;
  rx_ = s.rx; rx_head_ = s.rx_head % kFifoSize;
  rx_count_ = std::min<u8>(s.rx_count, kFifoSize);
  thr_ipending_ = s.thr_ipending; timeout_fired_ = s.timeout_fired;
  break_in_fifo_ = s.break_in_fifo; timeout_deadline_ = s.timeout_deadline;
  inputs_ = s.inputs & 0xF0; lines_ = s.lines & 0xF0;
  update_irq();
}

}  // namespace popek::dev
