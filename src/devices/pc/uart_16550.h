// National Semiconductor 16550A UART (the PC's COM port chip).
//
// Register window (8 bytes): 0 RBR/THR (DLL when LCR.DLAB), 1 IER (DLM when
// DLAB), 2 IIR (read) / FCR (write), 3 LCR, 4 MCR, 5 LSR, 6 MSR, 7 SCR.
//
// Transmission is instantaneous: a byte written to THR goes straight to the
// host sink (or, in loopback, to the receiver), so THRE and TEMT are always
// set and the THRE interrupt follows the datasheet rules for an idle
// transmitter: it is raised when THR empties, when IER.ETBEI goes 0->1, and
// when the FIFOs are enabled; it is cleared by reading IIR while it is the
// reported source (or by writing THR, which empties again at once).
// Reception is driven by the host through receive(), bounded by rx_space()
// (16 bytes with FIFOs, 1 without); the RX character timeout (4 character
// times at the programmed baud rate and frame format, measured on the Clock)
// is a Timed event. No threads: the board calls receive() from its loop.
#pragma once
#include <array>
#include <functional>
#include <span>

#include "base/clock.h"
#include "base/types.h"
#include "devices/bus/device.h"

namespace popek::dev {

class Uart16550 : public Device, public Timed {
 public:
  static constexpr unsigned kFifoSize = 16;
  static constexpr u64 kInputClockHz = 1843200;  // standard PC UART crystal

  struct Options {
    // On a PC the UART's OUT2 pin gates its interrupt onto the ISA bus; a board
    // that wires it that way sets this (Linux sets OUT2 whenever it uses IRQs).
    bool out2_gates_irq = false;
  };

  Uart16550(Clock& clock, IrqLine& irq, Options opt, const char* name = "uart");
  Uart16550(Clock& clock, IrqLine& irq, const char* name = "uart")
      : Uart16550(clock, irq, Options{}, name) {}

  const char* name() const override { return name_; }
  u64 read(u64 offset, unsigned size) override;
  void write(u64 offset, unsigned size, u64 value) override;
  void reset() override;

  u64 next_event_ns() const override;
  void on_time(u64 now_ns) override;

  // --- host side ---
  // Called with each byte the guest transmits (not in loopback).
  void set_tx_sink(std::function<void(u8)> sink) { tx_sink_ = std::move(sink); }
  // Bytes the receiver can take now without overrun.
  usize rx_space() const;
  // Queues received bytes; returns how many were taken (at most rx_space()).
  usize receive(std::span<const u8> bytes);
  // A break condition on the line (LSR.BI, a zero byte in the FIFO).
  void receive_break();
  // Modem status inputs from the far end (ignored in loopback).
  void set_modem_inputs(bool cts, bool dsr, bool ri, bool dcd);

  u8 mcr() const { return mcr_; }
  u32 divisor() const { return dll_ | (static_cast<u32>(dlm_) << 8); }
  u64 char_time_ns() const;
  u64 tx_bytes() const { return tx_bytes_; }

  struct State {
    static constexpr u32 kVersion = 1;
    u32 version = kVersion;
    u8 ier = 0, lcr = 0, mcr = 0, lsr_err = 0, msr_delta = 0, scr = 0, dll = 0x0C, dlm = 0;
    u8 fcr = 0;  // bit 0 FIFO enable, bits 6-7 trigger
    u8 rbr = 0;  // last byte read (returned again when empty)
    std::array<u8, kFifoSize> rx{};
    u8 rx_head = 0, rx_count = 0;
    bool thr_ipending = false, timeout_fired = false, break_in_fifo = false;
    u64 timeout_deadline = kNever;
    u8 inputs = 0xB0;  // MSR bits 4-7 driven by the far end (CTS, DSR, DCD)
    u8 lines = 0xB0;   // MSR bits 4-7 as last seen (for the delta bits)
  };
  State save() const;
  void restore(const State& s);

 private:
  u8 iir() const;
  unsigned trigger() const;
  bool fifo_enabled() const { return fcr_ & 1; }
  void rx_push(u8 b);
  u8 rx_pop();
  void clear_rx();
  void transmit(u8 b);
  void update_lines();
  void poll_timeout();
  void arm_timeout();
  void update_irq();
  u8 read_reg(unsigned reg);
  void write_reg(unsigned reg, u8 v);

  Clock& clock_;
  IrqLine& irq_;
  Options opt_;
  const char* name_;
  std::function<void(u8)> tx_sink_;
  u64 tx_bytes_ = 0;

  u8 ier_ = 0, lcr_ = 0, mcr_ = 0, lsr_err_ = 0, msr_delta_ = 0, scr_ = 0;
  u8 dll_ = 0x0C, dlm_ = 0, fcr_ = 0, rbr_ = 0;
  std::array<u8, kFifoSize> rx_{};
  u8 rx_head_ = 0, rx_count_ = 0;
  bool thr_ipending_ = false, timeout_fired_ = false, break_in_fifo_ = false;
  u64 timeout_deadline_ = kNever;
  u8 inputs_ = 0xB0, lines_ = 0xB0;
};

}  // namespace popek::dev
