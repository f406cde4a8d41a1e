// The ACPI tables: signatures, lengths, checksums, the pointers between
// them, the FADT fields Linux reads, the \_S5 AML; and, where acpica-tools
// is installed (scripts/setup.sh), iasl's disassembler reads each table
// without complaint.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <sstream>
#include <string>

#include "machine/boot/acpi_tables.h"

using namespace popek;
using namespace popek::boot;

namespace {

constexpr u32 kBase = 0xE0000;

AcpiConfig config() {
  AcpiConfig c;
  c.base = kBase;
  c.pm1a_evt = 0x600;
  c.pm1a_cnt = 0x604;
  c.sci_irq = 9;
  c.century = 0x32;
  c.s5_slp_typ = 5;
  c.pci_mmio_base = 0xE0000000;
  c.pci_mmio_end = 0xFEC00000;
  c.pci_inta_irq[1] = 10;
  c.pci_inta_irq[2] = 9;
  return c;
}

u32 get32(const std::vector<u8>& b, u32 at) {
  return u32(b[at]) | u32(b[at + 1]) << 8 | u32(b[at + 2]) << 16 | u32(b[at + 3]) << 24;
}
u16 get16(const std::vector<u8>& b, u32 at) { return u16(b[at] | b[at + 1] << 8); }
std::string sig(const std::vector<u8>& b, u32 at, usize n = 4) {
  return std::string(reinterpret_cast<const char*>(&b[at]), n);
}
// A guest-physical pointer into the image, as an offset (checked to fall inside).
u32 off(const std::vector<u8>& b, u32 pa) {
  EXPECT_GE(pa, kBase);
  EXPECT_LT(pa - kBase, b.size());
  return pa - kBase;
}

TEST(AcpiTables, RsdpFindsRsdtFindsFadtFindsFacsAndDsdt) {
  const AcpiImage img = build_acpi_tables(config());
  const auto& b = img.bytes;
  ASSERT_EQ(img.rsdp, 0u);
  EXPECT_EQ(sig(b, 0, 8), "RSD PTR ");
  EXPECT_EQ(acpi_sum(&b[0], 20), 0);  // ACPI 1.0 checksum: the first 20 bytes
  EXPECT_EQ(b[15], 0);                // revision 0
  const u32 rsdt = off(b, get32(b, 16));
  EXPECT_EQ(sig(b, rsdt), "RSDT");
  EXPECT_EQ(get32(b, rsdt + 4), 40u);
  EXPECT_EQ(acpi_sum(&b[rsdt], 40), 0);
  const u32 fadt = off(b, get32(b, rsdt + 36));
  EXPECT_EQ(sig(b, fadt), "FACP");
  EXPECT_EQ(get32(b, fadt + 4), 116u);  // ACPI 1.0 FADT
  EXPECT_EQ(b[fadt + 8], 1);
  EXPECT_EQ(acpi_sum(&b[fadt], 116), 0);
  const u32 facs = off(b, get32(b, fadt + 36));
  EXPECT_EQ(sig(b, facs), "FACS");
  EXPECT_EQ(get32(b, facs + 4), 64u);
  EXPECT_EQ((kBase + facs) % 64, 0u);  // FACS alignment
  const u32 dsdt = off(b, get32(b, fadt + 40));
  EXPECT_EQ(sig(b, dsdt), "DSDT");
  const u32 dlen = get32(b, dsdt + 4);
  EXPECT_EQ(dsdt + dlen, b.size());
  EXPECT_EQ(acpi_sum(&b[dsdt], dlen), 0);
  for (u32 t : {rsdt, fadt, dsdt}) {
    EXPECT_EQ(sig(b, t + 10, 6), "POPEK ");
    EXPECT_EQ(b[t + 8], 1);  // revision 1: 32-bit AML integers in the DSDT
  }
  EXPECT_EQ(kBase % 16, 0u);  // the RSDP scan looks on 16-byte boundaries
}

TEST(AcpiTables, FadtDescribesPicSciPm1BlocksAndPowerButton) {
  const AcpiImage img = build_acpi_tables(config());
  const auto& b = img.bytes;
  const u32 f = img.fadt;
  EXPECT_EQ(b[f + 44], 0);              // INT_MODEL: dual PIC
  EXPECT_EQ(get16(b, f + 46), 9);       // SCI_INT
  EXPECT_EQ(get32(b, f + 48), 0u);      // no SMI_CMD
  EXPECT_EQ(get32(b, f + 56), 0x600u);  // PM1a_EVT_BLK
  EXPECT_EQ(get32(b, f + 60), 0u);      // PM1b_EVT_BLK
  EXPECT_EQ(get32(b, f + 64), 0x604u);  // PM1a_CNT_BLK
  EXPECT_EQ(get32(b, f + 76), 0u);      // PM_TMR_BLK: none
  EXPECT_EQ(get32(b, f + 80), 0u);      // GPE0_BLK: none
  EXPECT_EQ(b[f + 88], 4);              // PM1_EVT_LEN
  EXPECT_EQ(b[f + 89], 2);              // PM1_CNT_LEN
  EXPECT_EQ(b[f + 91], 0);              // PM_TM_LEN
  EXPECT_EQ(b[f + 108], 0x32);          // CENTURY
  const u32 flags = get32(b, f + 112);
  EXPECT_EQ(flags & (1u << 4), 0u);     // PWR_BUTTON clear: fixed-feature power button
  EXPECT_NE(flags & (1u << 5), 0u);     // SLP_BUTTON set: no fixed sleep button
}

TEST(AcpiTables, DsdtDefinesS5WithTheBoardsSleepType) {
  const AcpiImage img = build_acpi_tables(config());
  const auto& b = img.bytes;
  const u8 aml[] = {0x08, '\\', '_', 'S', '5', '_', 0x12, 0x08, 0x04, 0x0A, 5, 0x0A, 5, 0x00, 0x00};
  ASSERT_GT(get32(b, img.dsdt + 4), 36 + sizeof aml);
  EXPECT_EQ(std::memcmp(&b[img.dsdt + 36], aml, sizeof aml), 0);
  // Then Scope (\_SB) { Device (PCI0) ... } up to the end of the table.
  const u32 scope = img.dsdt + 36 + sizeof aml;
  EXPECT_EQ(b[scope], 0x10);
  const u32 plen = (b[scope + 1] >> 6) == 1 ? u32(b[scope + 1] & 0xF) | u32(b[scope + 2]) << 4 : b[scope + 1];
  EXPECT_EQ(scope + 1 + plen, get32(b, img.dsdt + 4) + img.dsdt);
}

TEST(AcpiTables, RefusesMisalignedBaseAndWideSleepType) {
  AcpiConfig c = config();
  c.base = kBase + 8;
  EXPECT_ANY_THROW(build_acpi_tables(c));
  c = config();
  c.s5_slp_typ = 8;
  EXPECT_ANY_THROW(build_acpi_tables(c));
}

// iasl -d on each table: an independent reader of the format.
TEST(AcpiTables, IaslDisassemblesEveryTable) {
  if (std::system("iasl -v >/dev/null 2>&1") != 0) GTEST_SKIP() << "iasl (acpica-tools) is not installed";
  const AcpiImage img = build_acpi_tables(config());
  char dir[] = "/tmp/popek-acpi-XXXXXX";
  ASSERT_NE(::mkdtemp(dir), nullptr);
  struct Table {
    const char* name;
    u32 at;
    const char* expect;
  } tables[] = {{"dsdt", img.dsdt, "Name (\\_S5, Package (0x04)"},
                {"dsdt", img.dsdt, "Name (_HID, EisaId (\"PNP0A03\")"},
                {"dsdt", img.dsdt, "WordBusNumber (ResourceProducer, MinFixed, MaxFixed, PosDecode,"},
                {"dsdt", img.dsdt, "0xFEBFFFFF, // Range Maximum"},
                {"dsdt", img.dsdt, "Name (_PRT, Package (0x02)"},
                {"facp", img.fadt, "PM1A Event Block Address : 00000600"},
                {"rsdt", img.rsdt, "ACPI Table Address   0 : 000E00C0"},
                {"facs", img.facs, "Signature : \"FACS\""}};
  for (const Table& t : tables) {
    const std::string base = std::string(dir) + "/" + t.name;
    const u32 len = std::string(t.name) == "facs" ? 64 : get32(img.bytes, t.at + 4);
    {
      std::ofstream f(base + ".dat", std::ios::binary);
      f.write(reinterpret_cast<const char*>(&img.bytes[t.at]), len);
    }
    const std::string cmd = "cd " + std::string(dir) + " && iasl -d " + t.name + ".dat >" + t.name + ".log 2>&1";
    EXPECT_EQ(std::system(cmd.c_str()), 0) << t.name << ": " << cmd;
    std::ifstream dsl(base + ".dsl");
    std::stringstream ss;
    ss << dsl.rdbuf();
    const std::string text = ss.str();
    // Collapse runs of spaces: iasl aligns its columns.
    std::string flat;
    for (char ch : text)
      if (!(ch == ' ' && !flat.empty() && flat.back() == ' ')) flat += ch;
    std::string want;
    for (const char* p = t.expect; *p; p++)
      if (!(*p == ' ' && !want.empty() && want.back() == ' ')) want += *p;
    EXPECT_NE(flat.find(want), std::string::npos) << t.name << " disassembly lacks '" << t.expect << "':\n" << text;
    EXPECT_EQ(text.find("Invalid"), std::string::npos) << text;
    EXPECT_EQ(text.find("Error"), std::string::npos) << text;
  }
  std::system(("rm -rf " + std::string(dir)).c_str());
}

}  // namespace
