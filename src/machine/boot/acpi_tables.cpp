#include "machine/boot/acpi_tables.h"

#include <cstring>

#include "base/error.h"

namespace popek::boot {

namespace {

// Where the tables go in the image. The FACS must be 64-byte aligned; the
// others are placed on 16 bytes for readability of a memory dump.
constexpr u32 kRsdp = 0x000, kFacs = 0x040, kRsdt = 0x080, kFadt = 0x0C0, kDsdt = 0x140;
constexpr u32 kHeaderLen = 36;  // the common description header
constexpr u32 kRsdpLen = 20, kFacsLen = 64, kRsdtLen = kHeaderLen + 4, kFadtLen = 116;

// The DSDT's definition block body, hand-assembled AML (ACPI 1.0b §16):
//   Name (\_S5, Package (4) { typ, typ, 0, 0 })
// Bytes 10 and 12 (the SLP_TYP values) are filled in from the configuration.
constexpr u8 kDsdtAml[] = {
    0x08,                    // NameOp
    0x5C,                    // RootChar '\'
    '_', 'S', '5', '_',      // NameSeg "_S5_"
    0x12,                    // PackageOp
    0x08,                    // PkgLength: 8 bytes, this one included
    0x04,                    // NumElements: 4
    0x0A, 0x00,              // BytePrefix, SLP_TYPa (patched)
    0x0A, 0x00,              // BytePrefix, SLP_TYPb (patched)
    0x00,                    // ZeroOp: reserved
    0x00,                    // ZeroOp: reserved
};
constexpr usize kSlpTypA = 10, kSlpTypB = 12;

void put8(std::vector<u8>& b, u32 at, u8 v) { b[at] = v; }
void put16(std::vector<u8>& b, u32 at, u16 v) {
  b[at] = u8(v);
  b[at + 1] = u8(v >> 8);
}
void put32(std::vector<u8>& b, u32 at, u32 v) {
  for (int i = 0; i < 4; i++) b[at + i] = u8(v >> (8 * i));
}
void put_str(std::vector<u8>& b, u32 at, const char* s, usize n) { std::memcpy(&b[at], s, n); }

// The 36-byte header every table but the RSDP and FACS has; the checksum is
// set by checksum() once the body is written.
void header(std::vector<u8>& b, u32 at, const char* sig, u32 len, u8 rev, const char* table_id) {
  put_str(b, at, sig, 4);
  put32(b, at + 4, len);
  put8(b, at + 8, rev);
  put_str(b, at + 10, "POPEK ", 6);    // OEMID
  put_str(b, at + 16, table_id, 8);    // OEM table ID
  put32(b, at + 24, 1);                // OEM revision
  put_str(b, at + 28, "PPEK", 4);      // creator ID
  put32(b, at + 32, 1);                // creator revision
}

void checksum(std::vector<u8>& b, u32 at, u32 len, u32 sum_at) {
  b[sum_at] = 0;
  b[sum_at] = u8(-acpi_sum(&b[at], len));
}

}  // namespace

u8 acpi_sum(const u8* p, usize n) {
  u8 s = 0;
  for (usize i = 0; i < n; i++) s = u8(s + p[i]);
  return s;
}

AcpiImage build_acpi_tables(const AcpiConfig& cfg) {
  if (cfg.base & 15) throw Error("ACPI tables: base address must be 16-byte aligned");
  if (cfg.s5_slp_typ > 7) throw Error("ACPI tables: SLP_TYP is 3 bits");
  const u32 dsdt_len = kHeaderLen + u32(sizeof kDsdtAml);
  AcpiImage img;
  std::vector<u8>& b = img.bytes;
  b.assign(kDsdt + dsdt_len, 0);
  img.rsdp = kRsdp;
  img.rsdt = kRsdt;
  img.fadt = kFadt;
  img.facs = kFacs;
  img.dsdt = kDsdt;

  // RSDP (ACPI 1.0: 20 bytes, checksum over all of them).
  put_str(b, kRsdp, "RSD PTR ", 8);
  put_str(b, kRsdp + 9, "POPEK ", 6);  // OEMID
  put8(b, kRsdp + 15, 0);              // revision 0: ACPI 1.0, RSDT only
  put32(b, kRsdp + 16, cfg.base + kRsdt);
  checksum(b, kRsdp, kRsdpLen, kRsdp + 8);

  // RSDT: the header and one 32-bit pointer.
  header(b, kRsdt, "RSDT", kRsdtLen, 1, "POPEKRST");
  put32(b, kRsdt + kHeaderLen, cfg.base + kFadt);
  checksum(b, kRsdt, kRsdtLen, kRsdt + 9);

  // FADT, revision 1 (ACPI 1.0b table 5-6).
  const u32 f = kFadt;
  header(b, f, "FACP", kFadtLen, 1, "POPEKFCP");
  put32(b, f + 36, cfg.base + kFacs);  // FIRMWARE_CTRL
  put32(b, f + 40, cfg.base + kDsdt);  // DSDT
  put8(b, f + 44, 0);                  // INT_MODEL: dual 8259 PIC
  put16(b, f + 46, cfg.sci_irq);       // SCI_INT
  put32(b, f + 48, 0);                 // SMI_CMD: none, ACPI mode is fixed
  // ACPI_ENABLE, ACPI_DISABLE, S4BIOS_REQ (52-54): 0 without SMI_CMD.
  put32(b, f + 56, cfg.pm1a_evt);      // PM1a_EVT_BLK
  put32(b, f + 64, cfg.pm1a_cnt);      // PM1a_CNT_BLK
  // PM1b_EVT_BLK, PM1b_CNT_BLK, PM2_CNT_BLK, PM_TMR_BLK, GPE0_BLK, GPE1_BLK: 0 (none).
  put8(b, f + 88, 4);                  // PM1_EVT_LEN: PM1_STS + PM1_EN
  put8(b, f + 89, 2);                  // PM1_CNT_LEN
  // PM2_CNT_LEN, PM_TM_LEN, GPE0_BLK_LEN, GPE1_BLK_LEN, GPE1_BASE (90-94): 0.
  put16(b, f + 96, 101);               // P_LVL2_LAT > 100: no C2
  put16(b, f + 98, 1001);              // P_LVL3_LAT > 1000: no C3
  // FLUSH_SIZE, FLUSH_STRIDE, DUTY_OFFSET, DUTY_WIDTH, DAY_ALRM, MON_ALRM (100-107): 0.
  put8(b, f + 108, cfg.century);       // CENTURY: CMOS index of the century byte
  // Flags: WBINVD (bit 0: the CPU's WBINVD works), PROC_C1 (bit 2: HLT is
  // C1), SLP_BUTTON (bit 5: no fixed-feature sleep button). PWR_BUTTON
  // (bit 4) clear: the power button is the fixed feature in PM1.
  put32(b, f + 112, (1u << 0) | (1u << 2) | (1u << 5));
  checksum(b, f, kFadtLen, f + 9);

  // FACS (ACPI 1.0b table 5-7): no checksum; the rest is zero.
  put_str(b, kFacs, "FACS", 4);
  put32(b, kFacs + 4, kFacsLen);

  // DSDT: the header and the AML above.
  header(b, kDsdt, "DSDT", dsdt_len, 1, "POPEKDST");
  std::memcpy(&b[kDsdt + kHeaderLen], kDsdtAml, sizeof kDsdtAml);
  put8(b, kDsdt + kHeaderLen + kSlpTypA, cfg.s5_slp_typ);
  put8(b, kDsdt + kHeaderLen + kSlpTypB, cfg.s5_slp_typ);
  checksum(b, kDsdt, dsdt_len, kDsdt + 9);
  return img;
}

}  // namespace popek::boot
