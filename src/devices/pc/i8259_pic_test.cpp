// i8259A tests: a master/slave pair wired as on a PC (slave INT -> master IR2),
// driven only through port accesses on a Bus, as Linux's i8259.c does.
#include <gtest/gtest.h>

#include "devices/bus/bus.h"
#include "devices/pc/i8259_pic.h"

using namespace popek;
using namespace popek::dev;

namespace {

struct PicPair {
  IrqLine intr;        // master INT -> CPU
  IrqLine cascade;     // slave INT -> master IR2
  I8259Pic master{intr, "pic1"};
  I8259Pic slave{cascade, "pic2"};
  I8259Elcr elcr1{master}, elcr2{slave};
  Bus pio{"pio"};
  int intr_edges = 0;

  PicPair() {
    intr.connect([this](bool v) { intr_edges += v; });
    cascade.connect([this](bool v) { master.set_irq(2, v); });
    master.attach_slave(2, &slave);
    master.set_elcr_mask(0xF8);
    slave.set_elcr_mask(0xDE);
    pio.map(0x20, 2, &master);
    pio.map(0xA0, 2, &slave);
    pio.map(0x4D0, 1, &elcr1);
    pio.map(0x4D1, 1, &elcr2);
  }
  // The sequence of Linux's init_8259A().
  void init(bool aeoi = false) {
    pio.write(0x21, 1, 0xFF);
    pio.write(0xA1, 1, 0xFF);
    pio.write(0x20, 1, 0x11);
    pio.write(0x21, 1, 0x30);
    pio.write(0x21, 1, 0x04);
    pio.write(0x21, 1, aeoi ? 0x03 : 0x01);
    pio.write(0xA0, 1, 0x11);
    pio.write(0xA1, 1, 0x38);
    pio.write(0xA1, 1, 0x02);
    pio.write(0xA1, 1, 0x01);
    pio.write(0x21, 1, 0x00);
    pio.write(0xA1, 1, 0x00);
  }
  void irq(unsigned n, bool level) { (n < 8 ? master : slave).set_irq(n & 7, level); }
  void pulse(unsigned n) {
    irq(n, true);
    irq(n, false);
  }
  u8 read_isr(u16 port) {
    pio.write(port, 1, 0x0B);
    u8 v = static_cast<u8>(pio.read(port, 1));
    pio.write(port, 1, 0x0A);
    return v;
  }
  u8 read_irr(u16 port) {
    pio.write(port, 1, 0x0A);
    return static_cast<u8>(pio.read(port, 1));
  }
  void eoi_master() { pio.write(0x20, 1, 0x20); }
  void eoi_slave() { pio.write(0xA0, 1, 0x20); }
};

}  // namespace

TEST(I8259, InitMaskReadback) {
  PicPair p;
  p.init();
  p.pio.write(0x21, 1, 0xA5);
  EXPECT_EQ(p.pio.read(0x21, 1), 0xA5u);
  p.pio.write(0x21, 1, 0xFF);
  EXPECT_EQ(p.pio.read(0x21, 1), 0xFFu);
  EXPECT_EQ(p.master.vector_base(), 0x30);
  EXPECT_EQ(p.slave.vector_base(), 0x38);
}

TEST(I8259, PriorityAndNonSpecificEoi) {
  PicPair p;
  p.init();
  p.pulse(3);
  p.pulse(1);
  EXPECT_TRUE(p.intr.level());
  EXPECT_EQ(p.read_irr(0x20), 0x0Au);
  EXPECT_EQ(p.master.acknowledge(), 0x31);
  EXPECT_EQ(p.read_isr(0x20), 0x02u);
  // IR3 is lower priority than IR1 in service: held off.
  EXPECT_FALSE(p.intr.level());
  p.eoi_master();
  EXPECT_TRUE(p.intr.level());
  EXPECT_EQ(p.master.acknowledge(), 0x33);
  p.eoi_master();
  EXPECT_FALSE(p.intr.level());
  EXPECT_EQ(p.read_isr(0x20), 0u);
}

TEST(I8259, HigherPriorityNestsLowerWaits) {
  PicPair p;
  p.init();
  p.pulse(5);
  EXPECT_EQ(p.master.acknowledge(), 0x35);
  p.pulse(6);
  EXPECT_FALSE(p.master.has_interrupt());
  p.pulse(3);
  EXPECT_TRUE(p.master.has_interrupt());
  EXPECT_EQ(p.master.acknowledge(), 0x33);
  EXPECT_EQ(p.read_isr(0x20), 0x28u);
  p.eoi_master();  // ends IR3 (highest in service)
  EXPECT_EQ(p.read_isr(0x20), 0x20u);
  EXPECT_FALSE(p.master.has_interrupt());
  p.eoi_master();
  EXPECT_EQ(p.master.acknowledge(), 0x36);
}

TEST(I8259, MaskedInputStaysInIrr) {
  PicPair p;
  p.init();
  p.pio.write(0x21, 1, 0x10);
  p.pulse(4);
  EXPECT_FALSE(p.intr.level());
  EXPECT_EQ(p.read_irr(0x20), 0x10u);
  p.pio.write(0x21, 1, 0x00);
  EXPECT_TRUE(p.intr.level());
  EXPECT_EQ(p.master.acknowledge(), 0x34);
}

TEST(I8259, CascadeThroughSlave) {
  PicPair p;
  p.init();
  p.pulse(12);
  EXPECT_TRUE(p.cascade.level());
  EXPECT_TRUE(p.intr.level());
  EXPECT_EQ(p.master.acknowledge(), 0x3C);
  EXPECT_EQ(p.read_isr(0x20), 0x04u);
  EXPECT_EQ(p.read_isr(0xA0), 0x10u);
  // Linux's mask_and_ack for a slave IRQ: specific EOI to both chips.
  p.pio.write(0xA0, 1, 0x60 + 4);
  p.pio.write(0x20, 1, 0x60 + 2);
  EXPECT_EQ(p.read_isr(0x20), 0u);
  EXPECT_EQ(p.read_isr(0xA0), 0u);
  // Slave inputs rank at master IR2: above IR3, below IR1.
  p.pulse(3);
  p.pulse(8);
  EXPECT_EQ(p.master.acknowledge(), 0x38);
}

TEST(I8259, AutoEoi) {
  PicPair p;
  p.init(/*aeoi=*/true);
  p.pulse(0);
  p.pulse(1);
  EXPECT_EQ(p.master.acknowledge(), 0x30);
  EXPECT_EQ(p.master.isr(), 0u);
  EXPECT_TRUE(p.intr.level());  // nothing in service holds IR1 off
  EXPECT_EQ(p.master.acknowledge(), 0x31);
  EXPECT_FALSE(p.intr.level());
}

TEST(I8259, LevelTriggeredViaElcr) {
  PicPair p;
  p.init();
  p.pio.write(0x4D1, 1, 0xFF);
  EXPECT_EQ(p.pio.read(0x4D1, 1), 0xDEu);  // reserved IRQ8/IRQ13 bits stay 0
  p.pio.write(0x4D0, 1, 0x07);
  EXPECT_EQ(p.pio.read(0x4D0, 1), 0x00u);
  p.irq(10, true);
  EXPECT_EQ(p.master.acknowledge(), 0x3A);
  p.eoi_slave();
  p.eoi_master();
  // Still driven: interrupts again.
  EXPECT_TRUE(p.intr.level());
  p.irq(10, false);
  EXPECT_FALSE(p.slave.has_interrupt());
  EXPECT_EQ(p.read_irr(0xA0), 0u);
  // The master's IR2 is edge triggered and has latched the slave's INT: the
  // withdrawn request shows up as the slave's spurious IR7 (IRQ 15).
  EXPECT_EQ(p.master.acknowledge(), 0x3F);
}

TEST(I8259, LevelDroppedBeforeInta_IsSpurious7) {
  PicPair p;
  p.init();
  p.pio.write(0x20, 1, 0x18);  // ICW1 with LTIM: all inputs level triggered
  p.pio.write(0x21, 1, 0x30);
  p.pio.write(0x21, 1, 0x04);
  p.pio.write(0x21, 1, 0x01);
  p.irq(5, true);
  EXPECT_TRUE(p.intr.level());
  p.irq(5, false);
  EXPECT_EQ(p.master.acknowledge(), 0x37);
  EXPECT_EQ(p.master.isr(), 0u);  // the spurious IR7 is not put in service
  EXPECT_EQ(p.master.spurious_count(), 1u);
}

TEST(I8259, SpuriousFromSlaveIs15) {
  PicPair p;
  p.init();
  p.pio.write(0x4D1, 1, 0x02);  // IRQ9 level triggered (a PCI interrupt)
  p.irq(9, true);
  EXPECT_TRUE(p.master.has_interrupt());  // master IR2 latched the slave's edge
  p.irq(9, false);                        // the device withdraws its request
  EXPECT_TRUE(p.master.has_interrupt());
  EXPECT_EQ(p.master.acknowledge(), 0x3F);
  EXPECT_EQ(p.slave.isr(), 0u);
  EXPECT_EQ(p.master.isr(), 0x04u);  // Linux sends the master an EOI for this
  EXPECT_EQ(p.slave.spurious_count(), 1u);
}

TEST(I8259, EdgeLatchedUntilAcknowledged) {
  PicPair p;
  p.init();
  p.pulse(4);
  EXPECT_TRUE(p.master.has_interrupt());
  p.irq(4, true);  // holding high is not a second edge
  EXPECT_EQ(p.master.acknowledge(), 0x34);
  p.eoi_master();
  EXPECT_FALSE(p.master.has_interrupt());
}

TEST(I8259, SpecificEoiAndRotation) {
  PicPair p;
  p.init();
  p.pulse(1);
  p.pulse(6);
  EXPECT_EQ(p.master.acknowledge(), 0x31);
  p.pio.write(0x20, 1, 0x61);  // specific EOI IR1
  EXPECT_EQ(p.master.acknowledge(), 0x36);
  p.pio.write(0x20, 1, 0xA0);  // rotate on non-specific EOI: IR6 becomes lowest
  EXPECT_EQ(p.master.isr(), 0u);
  p.pulse(5);
  p.pulse(7);
  EXPECT_EQ(p.master.acknowledge(), 0x37);  // IR7 now has the highest priority
  p.pio.write(0x20, 1, 0x20);
  // Set priority: IR3 lowest => IR4 highest.
  p.pio.write(0x20, 1, 0xC3);
  p.pulse(0);
  EXPECT_EQ(p.master.acknowledge(), 0x35);
  p.pio.write(0x20, 1, 0x20);
  EXPECT_EQ(p.master.acknowledge(), 0x30);
}

TEST(I8259, PollMode) {
  PicPair p;
  p.init();
  p.pulse(6);
  p.pio.write(0x20, 1, 0x0C);  // OCW3 poll
  EXPECT_EQ(p.pio.read(0x20, 1), 0x86u);
  EXPECT_EQ(p.master.isr(), 0x40u);
  p.pio.write(0x20, 1, 0x0C);
  EXPECT_EQ(p.pio.read(0x20, 1), 0x00u);  // nothing pending
  EXPECT_EQ(p.pio.read(0x20, 1), 0x00u);  // and back to IRR reads
}

TEST(I8259, SpecialMaskMode) {
  PicPair p;
  p.init();
  p.pulse(2 + 1);
  EXPECT_EQ(p.master.acknowledge(), 0x33);
  p.pulse(5);
  EXPECT_FALSE(p.master.has_interrupt());
  p.pio.write(0x21, 1, 0x08);  // mask the level in service
  p.pio.write(0x20, 1, 0x68);  // OCW3: set special mask
  EXPECT_TRUE(p.master.has_interrupt());
  EXPECT_EQ(p.master.acknowledge(), 0x35);
  p.pio.write(0x20, 1, 0x48);  // reset special mask
  EXPECT_EQ(p.master.isr(), 0x28u);
}

TEST(I8259, SaveRestore) {
  PicPair p;
  p.init();
  p.pulse(4);
  p.pulse(9);
  auto s1 = p.master.save();
  auto s2 = p.slave.save();
  PicPair q;
  q.master.restore(s1);
  q.slave.restore(s2);
  EXPECT_TRUE(q.intr.level());
  EXPECT_EQ(q.master.acknowledge(), 0x39);
  q.pio.write(0xA0, 1, 0x20);
  q.pio.write(0x20, 1, 0x20);
  EXPECT_EQ(q.master.acknowledge(), 0x34);
  s1.version = 99;
  EXPECT_THROW(q.master.restore(s1), std::exception);
}

// Before the first ICW1 every input is masked: an uninitialised controller
// (no firmware ran) never interrupts the CPU. Initialisation unmasks.
TEST(I8259, UninitialisedControllerIsMasked) {
  PicPair p;
  EXPECT_EQ(p.pio.read(0x21, 1), 0xFFu);
  p.pulse(0);
  EXPECT_FALSE(p.master.has_interrupt());
  EXPECT_EQ(p.intr_edges, 0);
  p.init();
  p.pulse(0);
  EXPECT_TRUE(p.master.has_interrupt());
  EXPECT_EQ(p.master.acknowledge(), 0x30);
}
