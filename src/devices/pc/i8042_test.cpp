// i8042 tests: data at 0x60 and command/status at 0x64 mapped apart (port B
// sits at 0x61 on a PC), driven as Linux's i8042, atkbd and psmouse drivers do.
#include <gtest/gtest.h>

#include <vector>

#include "devices/bus/bus.h"
#include "devices/pc/i8042.h"

using namespace popek;
using namespace popek::dev;

namespace {

struct KbcRig {
  IrqLine irq1, irq12;
  int kbd_edges = 0, aux_edges = 0, resets = 0;
  std::vector<bool> a20;
  I8042 kbc{irq1, irq12,
            I8042::Hooks{[this] { ++resets; }, [this](bool on) { a20.push_back(on); }}};
  Bus pio{"pio"};

  KbcRig() {
    irq1.connect([this](bool v) { kbd_edges += v; });
    irq12.connect([this](bool v) { aux_edges += v; });
    pio.map(0x60, 1, &kbc.data_port());
    pio.map(0x64, 1, &kbc.command_port());
  }
  u8 status() { return static_cast<u8>(pio.read(0x64, 1)); }
  u8 data() { return static_cast<u8>(pio.read(0x60, 1)); }
  void cmd(u8 v) { pio.write(0x64, 1, v); }
  void put(u8 v) { pio.write(0x60, 1, v); }
  // i8042_command(): command, optional parameter, optional one-byte result.
  int command(u8 c, int param = -1) {
    cmd(c);
    if (param >= 0) put(static_cast<u8>(param));
    if (!(status() & 0x01)) return -1;
    return data();
  }
  std::vector<u8> drain() {
    std::vector<u8> out;
    while (status() & 0x01) out.push_back(data());
    return out;
  }
};

}  // namespace

TEST(I8042, LinuxControllerProbe) {
  KbcRig r;
  EXPECT_EQ(r.status() & 0x01, 0);  // i8042_flush finds nothing
  const int ctr = r.command(0x20);
  EXPECT_EQ(ctr, 0x65);
  // Disable the ports and interrupts while probing, as i8042_controller_init.
  r.cmd(0x60);
  r.put(0x74);
  EXPECT_EQ(r.command(0x20), 0x74);
  r.kbd_edges = r.aux_edges = 0;
  EXPECT_EQ(r.command(0xAA), 0x55);  // self-test
  EXPECT_EQ(r.command(0xAB), 0x00);  // keyboard interface test
  EXPECT_EQ(r.kbd_edges + r.aux_edges, 0);  // interrupts were off
  EXPECT_TRUE(r.status() & 0x04);           // system flag
  EXPECT_TRUE(r.status() & 0x08);           // last write was a command
}

TEST(I8042, AuxPortProbeWithoutMouse) {
  KbcRig r;
  r.cmd(0x60);
  r.put(0x44);  // no interrupts, both ports enabled
  // i8042_check_aux: loopback, then the bit assignment test.
  r.cmd(0xD3);
  r.put(0x5A);
  EXPECT_EQ(r.status() & 0x21, 0x21);  // output full, from AUX
  EXPECT_EQ(r.data(), 0x5A);
  EXPECT_EQ(r.command(0xA9), 0x00);
  r.cmd(0xA7);
  EXPECT_TRUE(r.command(0x20) & 0x20);
  r.cmd(0xA8);
  EXPECT_FALSE(r.command(0x20) & 0x20);
  // AUX IRQ delivery test: AUXINT on, loopback a byte, IRQ 12 fires.
  r.cmd(0x60);
  r.put(0x46);
  r.cmd(0xD3);
  r.put(0xA5);
  EXPECT_TRUE(r.irq12.level());
  EXPECT_FALSE(r.irq1.level());
  EXPECT_EQ(r.data(), 0xA5);
  EXPECT_FALSE(r.irq12.level());
  // psmouse sends GETID to the mouse: nobody answers, the controller times out.
  r.cmd(0xD4);
  r.put(0xF2);
  EXPECT_EQ(r.status() & 0x61, 0x61);  // timeout, AUX data, output full
  EXPECT_EQ(r.data(), 0xFE);
  EXPECT_EQ(r.status() & 0x41, 0);
}

TEST(I8042, KeyboardResetAndIdentify) {
  KbcRig r;
  r.put(0xFF);
  EXPECT_TRUE(r.irq1.level());
  EXPECT_EQ(r.data(), 0xFA);
  EXPECT_TRUE(r.irq1.level());  // the next byte follows with a fresh edge
  EXPECT_EQ(r.kbd_edges, 2);
  EXPECT_EQ(r.data(), 0xAA);
  EXPECT_FALSE(r.irq1.level());
  r.put(0xF2);
  EXPECT_EQ(r.drain(), (std::vector<u8>{0xFA, 0xAB, 0x41}));  // translated
  r.cmd(0x60);
  r.put(0x25);  // translation off
  r.put(0xF2);
  EXPECT_EQ(r.drain(), (std::vector<u8>{0xFA, 0xAB, 0x83}));
}

TEST(I8042, KeyboardCommandsWithParameters) {
  KbcRig r;
  r.put(0xED);
  r.put(0x07);  // LEDs
  r.put(0xF3);
  r.put(0x20);  // typematic
  r.put(0xF0);
  r.put(0x00);  // query scancode set
  r.put(0xEE);
  r.put(0xF5);
  r.put(0xF4);
  r.put(0x01);  // not a command
  EXPECT_EQ(r.drain(),
            (std::vector<u8>{0xFA, 0xFA, 0xFA, 0xFA, 0xFA, 0xFA, 0x02, 0xEE, 0xFA, 0xFA, 0xFE}));
}

TEST(I8042, DisabledKeyboardHoldsBytes) {
  KbcRig r;
  r.cmd(0xAD);
  const u8 keys[] = {0x1E, 0x9E};
  r.kbc.keyboard_input(keys);
  EXPECT_EQ(r.status() & 0x01, 0);
  EXPECT_FALSE(r.irq1.level());
  r.cmd(0xAE);
  EXPECT_TRUE(r.irq1.level());
  EXPECT_EQ(r.drain(), (std::vector<u8>{0x1E, 0x9E}));
}

TEST(I8042, ResetPulseAndA20) {
  KbcRig r;
  r.cmd(0xFE);  // what Linux's reboot=kbd does
  EXPECT_EQ(r.resets, 1);
  r.cmd(0xFF);  // pulse nothing
  EXPECT_EQ(r.resets, 1);
  r.cmd(0xD1);
  r.put(0x01);  // A20 off
  EXPECT_EQ(r.a20, (std::vector<bool>{false}));
  EXPECT_FALSE(r.kbc.a20());
  r.cmd(0xDF);
  EXPECT_TRUE(r.kbc.a20());
  EXPECT_EQ(r.command(0xD0) & 0x03, 0x03);
  r.cmd(0xD1);
  r.put(0x02);  // bit 0 low: reset
  EXPECT_EQ(r.resets, 2);
  EXPECT_EQ(r.kbc.resets_requested(), 2u);
}

TEST(I8042, ControllerRamAndPassword) {
  KbcRig r;
  r.cmd(0x65);
  r.put(0x99);
  EXPECT_EQ(r.command(0x25), 0x99);
  EXPECT_EQ(r.command(0xA4), 0xF1);
  r.cmd(0xD2);
  r.put(0x42);  // write keyboard output buffer
  EXPECT_EQ(r.status() & 0x21, 0x01);
  EXPECT_EQ(r.data(), 0x42);
}

TEST(I8042, SaveRestore) {
  KbcRig r;
  r.put(0xFF);
  auto s = r.kbc.save();
  KbcRig q;
  q.kbc.restore(s);
  EXPECT_TRUE(q.irq1.level());
  EXPECT_EQ(q.drain(), (std::vector<u8>{0xFA, 0xAA}));
}
