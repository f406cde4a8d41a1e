// The board's virtio part without a CPU: --drive parsing, PCI placement (slot,
// BAR, IRQ line), BAR moves and overlapping BARs on the MMIO bus, shared
// level-triggered IRQs, and the guest-RAM accessor's refusals.
#include <gtest/gtest.h>

#include <unistd.h>

#include <cstdio>
#include <fstream>
#include <map>

#include "base/error.h"
#include "devices/bus/bus.h"
#include "devices/pc/pci.h"
#include "machine/pc_layout.h"
#include "machine/virtio_board.h"
#include "memory/phys_mem.h"

using namespace popek;
using namespace popek::machine;

namespace {

std::string error_of(const std::string& spec) {
  try {
    parse_drive(spec);
  } catch (const Error& e) {
    return e.what();
  }
  return "(no error)";
}

struct TempImage {
  std::string path;
  explicit TempImage(u64 size) {
    char tmpl[] = "/tmp/popek-vb-XXXXXX";
    int fd = ::mkstemp(tmpl);
    EXPECT_GE(fd, 0);
    EXPECT_EQ(::ftruncate(fd, off_t(size)), 0);
    ::close(fd);
    path = tmpl;
  }
  ~TempImage() { std::remove(path.c_str()); }
};

struct BoardRig {
  mem::PhysMem pm{64 << 20};
  dev::PciBus pci;
  dev::Bus mmio{"mmio"};
  std::map<unsigned, bool> level;
  std::unique_ptr<VirtioBoard> board;
  explicit BoardRig(const VirtioConfig& cfg) {
    board = std::make_unique<VirtioBoard>(cfg, pm, pci, mmio, [this](unsigned irq, bool l) { level[irq] = l; });
  }
  u32 cfg_read(unsigned slot, unsigned off, unsigned size = 4) { return pci.config_read(0, slot, 0, off, size); }
};

}  // namespace

TEST(VirtioBoard, ParseDrive) {
  DriveConfig d = parse_drive("file=a.qcow2,format=qcow2,readonly=on,cache=unsafe,serial=S1,if=virtio,id=x");
  EXPECT_EQ(d.file, "a.qcow2");
  EXPECT_EQ(d.format, "qcow2");
  EXPECT_TRUE(d.readonly);
  EXPECT_EQ(d.cache, "unsafe");
  EXPECT_EQ(d.serial, "S1");
  EXPECT_EQ(parse_drive("file=b").format, "");
  EXPECT_NE(error_of("b.img").find("not key=value"), std::string::npos);
  EXPECT_NE(error_of("format=raw").find("file=PATH is missing"), std::string::npos);
  EXPECT_NE(error_of("file=x,format=vmdk").find("unknown format 'vmdk'"), std::string::npos);
  EXPECT_NE(error_of("file=x,cache=none").find("O_DIRECT"), std::string::npos);
  EXPECT_NE(error_of("file=x,cache=fast").find("unknown cache mode"), std::string::npos);
  EXPECT_NE(error_of("file=x,readonly=maybe").find("not on or off"), std::string::npos);
  EXPECT_NE(error_of("file=x,serial=123456789012345678901").find("longer than 20"), std::string::npos);
  EXPECT_NE(error_of("file=x,if=ide").find("if=ide"), std::string::npos);
  EXPECT_NE(error_of("file=x,snapshot=on").find("unknown option 'snapshot'"), std::string::npos);
}

TEST(VirtioBoard, BadDrivesAreClearErrors) {
  VirtioConfig cfg;
  cfg.drives.push_back(parse_drive("file=/nonexistent/popek.img"));
  try {
    BoardRig r(cfg);
    ADD_FAILURE();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("--drive file=/nonexistent/popek.img: No such file"), std::string::npos);
  }
  TempImage img(1 << 20);
  VirtioConfig twice;
  twice.drives = {parse_drive("file=" + img.path), parse_drive("file=" + img.path)};
  EXPECT_THROW(BoardRig r(twice), Error);
  VirtioConfig dir;
  dir.drives = {parse_drive("file=/tmp")};
  EXPECT_THROW(BoardRig r(dir), Error);
}

TEST(VirtioBoard, PlacesFunctionsLikeFirmware) {
  TempImage img(1 << 20);
  VirtioConfig cfg;
  cfg.drives.push_back(parse_drive("file=" + img.path + ",format=raw"));
  cfg.rng = true;
  BoardRig r(cfg);
  const unsigned s0 = pc::kVirtioFirstSlot, s1 = s0 + 1;
  EXPECT_EQ(r.cfg_read(s0, 0), 0x10421AF4u);  // virtio-blk, modern
  EXPECT_EQ(r.cfg_read(s1, 0), 0x10441AF4u);  // virtio-rng
  EXPECT_EQ(r.cfg_read(s0, 0x3C, 1), pc::kPciIrqs[s0 % 4]);
  EXPECT_EQ(r.cfg_read(s1, 0x3C, 1), pc::kPciIrqs[s1 % 4]);
  EXPECT_EQ(r.cfg_read(s0, 0x10), u32(pc::kPciMmioBase));
  EXPECT_TRUE(r.cfg_read(s0, 4, 2) & 2);  // memory decoding on
  u64 off;
  ASSERT_NE(r.mmio.find(pc::kPciMmioBase, &off), nullptr);
  // num_queues of the disk through the mapped BAR.
  EXPECT_EQ(r.mmio.read(pc::kPciMmioBase + 0x12, 2), 1u);
  // The guest moves the BAR: the old window goes, the new one works.
  r.pci.config_write(0, s0, 0, 0x10, 4, 0xF0000000);
  EXPECT_EQ(r.mmio.find(pc::kPciMmioBase, &off), nullptr);
  EXPECT_EQ(r.mmio.read(0xF0000000 + 0x12, 2), 1u);
  // Both BARs at one address: the second is not mapped, nothing breaks.
  r.pci.config_write(0, s1, 0, 0x10, 4, 0xF0000000);
  EXPECT_EQ(r.mmio.read(0xF0000000 + 0x12, 2), 1u);
  bool overlap_counted = false;
  for (auto& [k, v] : r.board->stats()) overlap_counted |= k == "virtio.bar_overlaps" && v == 1;
  EXPECT_TRUE(overlap_counted);
  // Decoding off: unmapped.
  r.pci.config_write(0, s0, 0, 0x04, 2, 0);
  EXPECT_EQ(r.mmio.find(0xF0000000, &off), nullptr);
  std::vector<unsigned> irqs = r.board->irqs();
  EXPECT_EQ(irqs.size(), 2u);
}

TEST(VirtioBoard, NoDevicesNoBoard) {
  BoardRig r(VirtioConfig{});
  EXPECT_TRUE(r.board->empty());
}
