// 16550A tests at COM1's usual window, poked as Linux's 8250 driver does
// (autoconfig, the THRE re-assert test, FIFO trigger levels, timeouts).
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "base/clock.h"
#include "devices/bus/bus.h"
#include "devices/pc/uart_16550.h"

using namespace popek;
using namespace popek::dev;

namespace {

constexpr u16 kBase = 0x3F8;
enum : u16 { RBR = kBase, IER, IIR, LCR, MCR, LSR, MSR, SCR };

struct UartRig {
  ManualClock clock;
  IrqLine irq;
  Uart16550 uart;
  Bus pio{"pio"};
  std::string sent;
  int rises = 0;

  explicit UartRig(Uart16550::Options o = {}) : uart(clock, irq, o, "com1") {
    irq.connect([this](bool v) { rises += v; });
    uart.set_tx_sink([this](u8 b) { sent.push_back(static_cast<char>(b)); });
    pio.map(kBase, 8, &uart);
  }
  u8 in(u16 port) { return static_cast<u8>(pio.read(port, 1)); }
  void out(u16 port, u8 v) { pio.write(port, 1, v); }
  void rx(const std::string& s) {
    uart.receive(std::span(reinterpret_cast<const u8*>(s.data()), s.size()));
  }
  void advance(u64 ns) {
    clock.advance(ns);
    if (uart.next_event_ns() <= clock.now_ns()) uart.on_time(clock.now_ns());
  }
};

}  // namespace

TEST(Uart16550, LinuxAutoconfigSees16550A) {
  UartRig r;
  // IER read/write test.
  r.out(IER, 0);
  EXPECT_EQ(r.in(IER) & 0x0F, 0);
  r.out(IER, 0x0F);
  EXPECT_EQ(r.in(IER) & 0x0F, 0x0F);
  r.out(IER, 0);
  // Loopback test: MCR = LOOP | OUT2 | RTS -> MSR = DCD | CTS.
  r.out(MCR, 0x10 | 0x0A);
  EXPECT_EQ(r.in(MSR) & 0xF0, 0x90);
  r.out(MCR, 0x00);
  // FIFO test.
  r.out(IIR, 0x01);
  EXPECT_EQ(r.in(IIR) >> 6, 3);
  // No EFR behind LCR=0x80 or LCR=0xBF: offset 2 still reads IIR.
  r.out(LCR, 0x80);
  EXPECT_NE(r.in(IIR), 0);
  r.out(LCR, 0xBF);
  EXPECT_NE(r.in(IIR), 0);
  r.out(LCR, 0x00);
  // No 64-byte FIFO (TI16750): IIR bit 5 stays clear.
  r.out(IIR, 0x21);
  EXPECT_EQ(r.in(IIR) & 0x20, 0);
  // IER bit 6 (XScale UUE) does not stick.
  r.out(IER, 0x40);
  EXPECT_EQ(r.in(IER) & 0x40, 0);
  // Scratch register.
  r.out(SCR, 0x5A);
  EXPECT_EQ(r.in(SCR), 0x5A);
  EXPECT_NE(r.in(LSR), 0xFF);
}

TEST(Uart16550, ThreReassertedWhenIerToggled) {
  UartRig r;
  r.out(IIR, 0x07);
  r.out(IER, 0x02);
  const u8 iir1 = r.in(IIR);
  EXPECT_EQ(iir1, 0xC2);  // THRE reported ...
  EXPECT_EQ(r.in(IIR), 0xC1);  // ... and cleared by that read
  r.out(IER, 0);
  r.out(IER, 0x02);
  EXPECT_EQ(r.in(IIR), 0xC2);  // a real 16550 re-asserts: no UART_BUG_THRE
  r.out(IER, 0);
  EXPECT_EQ(r.in(LSR) & 0x60, 0x60);  // THRE and TEMT
}

TEST(Uart16550, ThreInterruptAfterEachWrite) {
  UartRig r;
  r.out(IER, 0x02);
  EXPECT_TRUE(r.irq.level());
  EXPECT_EQ(r.in(IIR), 0x02);  // no FIFOs: bits 6-7 clear
  EXPECT_FALSE(r.irq.level());
  r.out(RBR, 'h');
  r.out(RBR, 'i');
  EXPECT_EQ(r.sent, "hi");
  EXPECT_TRUE(r.irq.level());
  EXPECT_EQ(r.in(IIR), 0x02);
  EXPECT_FALSE(r.irq.level());
}

TEST(Uart16550, LoopbackReceivesOwnBytes) {
  UartRig r;
  r.out(IIR, 0x01);
  r.out(MCR, 0x10);
  r.out(RBR, 'a');
  r.out(RBR, 'b');
  EXPECT_EQ(r.sent, "");
  EXPECT_EQ(r.in(LSR) & 0x01, 0x01);
  EXPECT_EQ(r.in(RBR), 'a');
  EXPECT_EQ(r.in(RBR), 'b');
  EXPECT_EQ(r.in(LSR) & 0x01, 0x00);
  r.out(MCR, 0x00);
  r.out(RBR, 'c');
  EXPECT_EQ(r.sent, "c");
}

TEST(Uart16550, FifoTriggerLevelAndTimeout) {
  UartRig r;
  r.out(LCR, 0x80);
  r.out(RBR, 1);  // 115200 baud
  r.out(IER, 0);
  r.out(LCR, 0x03);  // 8N1
  EXPECT_EQ(r.uart.char_time_ns(), 86805u);
  r.out(IIR, 0x81);  // FIFO on, trigger 8
  r.out(IER, 0x01);
  r.rx("1234567");
  EXPECT_EQ(r.in(IIR), 0xC1);
  EXPECT_FALSE(r.irq.level());
  r.rx("8");
  EXPECT_EQ(r.in(IIR), 0xC4);
  EXPECT_TRUE(r.irq.level());
  EXPECT_EQ(r.in(RBR), '1');
  EXPECT_FALSE(r.irq.level());  // 7 left: below the trigger level
  // Character timeout after 4 character times of silence.
  EXPECT_EQ(r.uart.next_event_ns(), r.clock.now_ns() + 4 * 86805);
  r.advance(4 * 86805 - 1);
  EXPECT_FALSE(r.irq.level());
  r.advance(1);
  EXPECT_TRUE(r.irq.level());
  EXPECT_EQ(r.in(IIR), 0xCC);
  EXPECT_EQ(r.in(RBR), '2');  // a read clears the timeout ...
  EXPECT_FALSE(r.irq.level());
  r.advance(4 * 86805);  // ... and restarts the timer
  EXPECT_EQ(r.in(IIR), 0xCC);
  std::string rest;
  while (r.in(LSR) & 1) rest.push_back(static_cast<char>(r.in(RBR)));
  EXPECT_EQ(rest, "345678");
  EXPECT_EQ(r.in(IIR), 0xC1);
  EXPECT_EQ(r.uart.next_event_ns(), Timed::kNever);
}

TEST(Uart16550, RxBackPressure) {
  UartRig r;
  EXPECT_EQ(r.uart.rx_space(), 1u);
  const std::string s(20, 'x');
  EXPECT_EQ(r.uart.receive(std::span(reinterpret_cast<const u8*>(s.data()), s.size())), 1u);
  EXPECT_EQ(r.uart.rx_space(), 0u);
  r.out(IIR, 0x01);  // enabling FIFOs clears them
  EXPECT_EQ(r.uart.rx_space(), 16u);
  EXPECT_EQ(r.uart.receive(std::span(reinterpret_cast<const u8*>(s.data()), s.size())), 16u);
  EXPECT_EQ(r.in(LSR) & 0x02, 0);  // no overrun: the host was told to wait
  r.out(IIR, 0x03);                // FCR: clear RX FIFO
  EXPECT_EQ(r.uart.rx_space(), 16u);
}

TEST(Uart16550, InterruptPriorities) {
  UartRig r;
  r.out(IIR, 0x01);  // FIFO, trigger 1
  r.out(MCR, 0x10);
  for (int i = 0; i < 17; ++i) r.out(RBR, static_cast<u8>('A' + i));  // 17th overruns
  r.out(MCR, 0x11);  // DTR -> DSR changes in loopback: MSR delta
  r.out(IER, 0x0F);
  EXPECT_EQ(r.in(IIR), 0xC6);  // line status (overrun) first
  EXPECT_EQ(r.in(LSR) & 0x03, 0x03);
  EXPECT_EQ(r.in(IIR), 0xC4);  // then received data
  for (int i = 0; i < 16; ++i) r.in(RBR);
  EXPECT_EQ(r.in(IIR), 0xC2);  // then THRE (IER just enabled it)
  EXPECT_EQ(r.in(IIR), 0xC0);  // then modem status
  EXPECT_EQ(r.in(MSR) & 0x22, 0x22);  // DSR and DDSR
  EXPECT_EQ(r.in(IIR), 0xC1);
  EXPECT_FALSE(r.irq.level());
}

TEST(Uart16550, ModemStatusDeltas) {
  UartRig r;
  r.out(IER, 0x08);
  EXPECT_FALSE(r.irq.level());
  r.uart.set_modem_inputs(true, true, true, true);  // RI rises: no TERI
  EXPECT_FALSE(r.irq.level());
  r.uart.set_modem_inputs(false, true, false, true);  // CTS drops, RI trailing edge
  EXPECT_TRUE(r.irq.level());
  EXPECT_EQ(r.in(MSR), 0xA0 | 0x01 | 0x04);
  EXPECT_EQ(r.in(MSR), 0xA0);
  EXPECT_FALSE(r.irq.level());
}

TEST(Uart16550, BreakSetsLsrBi) {
  UartRig r;
  r.out(IIR, 0x01);
  r.out(IER, 0x04);
  r.uart.receive_break();
  EXPECT_TRUE(r.irq.level());
  EXPECT_EQ(r.in(LSR) & 0x91, 0x91);  // BI, DR, error in FIFO
  EXPECT_EQ(r.in(LSR) & 0x10, 0);
  EXPECT_EQ(r.in(RBR), 0);
}

TEST(Uart16550, Out2GatesIrqWhenWiredSo) {
  UartRig r(Uart16550::Options{.out2_gates_irq = true});
  r.out(IER, 0x02);
  EXPECT_FALSE(r.irq.level());
  r.out(MCR, 0x08);
  EXPECT_TRUE(r.irq.level());
  r.out(MCR, 0x18);  // loopback disconnects OUT2 from the pin
  EXPECT_FALSE(r.irq.level());
}

TEST(Uart16550, DivisorLatchAndFrameTiming) {
  UartRig r;
  r.out(LCR, 0x80);
  r.out(RBR, 0x0C);
  r.out(IER, 0x00);
  EXPECT_EQ(r.in(RBR), 0x0C);
  r.out(LCR, 0x1F);  // 8 data, even parity, 2 stop: 12 bits
  EXPECT_EQ(r.uart.divisor(), 12u);
  EXPECT_EQ(r.uart.char_time_ns(), 1250000u);  // 12 bits at 9600 baud
}

TEST(Uart16550, SaveRestore) {
  UartRig r;
  r.out(IIR, 0x01);
  r.out(IER, 0x01);
  r.rx("xyz");
  auto s = r.uart.save();
  UartRig q;
  q.uart.restore(s);
  EXPECT_TRUE(q.irq.level());
  EXPECT_EQ(q.in(RBR), 'x');
  EXPECT_EQ(q.uart.rx_space(), 14u);
}
