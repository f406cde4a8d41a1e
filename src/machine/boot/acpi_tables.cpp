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

// --- AML (ACPI 1.0b chapter 16), assembled by hand ----------------------------
using Bytes = std::vector<u8>;

void add(Bytes& out, std::initializer_list<u8> b) { out.insert(out.end(), b); }
void add(Bytes& out, const Bytes& b) { out.insert(out.end(), b.begin(), b.end()); }

// PkgLength: the length of what follows the opcode, this encoding included.
// One byte up to 63; else the first byte's bits 7-6 say how many bytes
// follow, its bits 3-0 are the low nibble, the next bytes the rest.
Bytes pkg_length(usize body) {
  if (body + 1 <= 0x3F) return {u8(body + 1)};
  if (body + 2 <= 0xFFF) {
    const usize n = body + 2;
    return {u8(0x40 | (n & 0xF)), u8(n >> 4)};
  }
  const usize n = body + 3;  // up to 2^20: far more than these tables need
  if (n > 0xFFFFF) throw Error("ACPI tables: AML package too long");
  return {u8(0x80 | (n & 0xF)), u8(n >> 4), u8(n >> 12)};
}

// `op` (one or two opcode bytes), PkgLength, then `body`.
Bytes with_length(std::initializer_list<u8> op, const Bytes& body) {
  Bytes out(op);
  add(out, pkg_length(body.size()));
  add(out, body);
  return out;
}

Bytes dword(u32 v) { return {0x0C, u8(v), u8(v >> 8), u8(v >> 16), u8(v >> 24)}; }  // DWordPrefix
Bytes byte(u8 v) { return {0x0A, v}; }                                               // BytePrefix

// Name (SEG, value): NameOp, a 4-character NameSeg, the value's bytes.
Bytes name(const char seg[5], const Bytes& value) {
  Bytes out{0x08, u8(seg[0]), u8(seg[1]), u8(seg[2]), u8(seg[3])};
  add(out, value);
  return out;
}

// Package (n) { elements }: PackageOp, PkgLength, NumElements, elements.
Bytes package(u8 count, const Bytes& elements) {
  Bytes body{count};
  add(body, elements);
  return with_length({0x12}, body);
}

// Buffer () { bytes }: BufferOp, PkgLength, BufferSize (WordPrefix), bytes.
Bytes buffer(const Bytes& bytes) {
  Bytes body{0x0B, u8(bytes.size()), u8(bytes.size() >> 8)};
  add(body, bytes);
  return with_length({0x11}, body);
}

// Resource descriptors (ACPI 1.0b §6.4), little-endian fields.
void le16(Bytes& b, u32 v) { add(b, {u8(v), u8(v >> 8)}); }
void le32(Bytes& b, u32 v) { add(b, {u8(v), u8(v >> 8), u8(v >> 16), u8(v >> 24)}); }

// Word Address Space Descriptor (large item 0x88, 13 bytes of data):
// resource type (1 I/O, 2 bus number), general flags 0x0C (producer,
// positive decode, min and max fixed), type-specific flags, then
// granularity, min, max, translation offset, length.
Bytes word_space(u8 type, u8 type_flags, u16 min, u16 max) {
  Bytes b{0x88, 0x0D, 0x00, type, 0x0C, type_flags};
  le16(b, 0);
  le16(b, min);
  le16(b, max);
  le16(b, 0);
  le16(b, u16(max - min + 1));
  return b;
}

// DWord Address Space Descriptor (large item 0x87, 23 bytes of data), memory
// (type 0), producer with fixed min and max, read/write non-cacheable
// (type-specific flags 0x01).
Bytes dword_memory(u32 min, u32 max) {
  Bytes b{0x87, 0x17, 0x00, 0x00, 0x0C, 0x01};
  le32(b, 0);
  le32(b, min);
  le32(b, max);
  le32(b, 0);
  le32(b, max - min + 1);
  return b;
}

// The DSDT's definition block body:
//   Name (\_S5, Package (4) { typ, typ, 0, 0 })
//   Scope (\_SB) { Device (PCI0) { _HID, _UID, _CRS, _PRT } }
Bytes dsdt_aml(const AcpiConfig& cfg) {
  Bytes aml;
  add(aml, {0x08,                     // NameOp
            0x5C, '_', 'S', '5', '_'});  // "\_S5_" (RootChar, NameSeg)
  {
    Bytes e;
    add(e, byte(cfg.s5_slp_typ));  // SLP_TYPa
    add(e, byte(cfg.s5_slp_typ));  // SLP_TYPb
    add(e, {0x00, 0x00});          // ZeroOp, ZeroOp: reserved
    add(aml, package(4, e));
  }

  Bytes crs;
  add(crs, word_space(2, 0x00, 0x00, 0xFF));        // bus numbers 0-255
  add(crs, {0x47, 0x01,                             // I/O port descriptor, 16-bit decode
            0xF8, 0x0C, 0xF8, 0x0C,                 // min 0xCF8, max 0xCF8
            0x01, 0x08});                           // alignment 1, length 8: the config ports
  add(crs, word_space(1, 0x03, 0x0000, 0x0CF7));    // I/O below them (entire range)
  add(crs, word_space(1, 0x03, 0x0D00, 0xFFFF));    // I/O above them
  add(crs, dword_memory(cfg.pci_mmio_base, cfg.pci_mmio_end - 1));  // BARs
  add(crs, {0x79, 0x00});                           // End Tag, checksum 0 (none)

  Bytes prt;
  u8 entries = 0;
  for (unsigned slot = 0; slot < 32; slot++) {
    if (!cfg.pci_inta_irq[slot]) continue;
    Bytes e;
    add(e, dword((slot << 16) | 0xFFFF));  // Address: device `slot`, any function
    add(e, {0x00,                          // Pin: ZeroOp (INTA#)
            0x00});                        // Source: ZeroOp (a GSI, not a link device)
    add(e, byte(cfg.pci_inta_irq[slot]));  // Source Index: the GSI (= ISA IRQ with the PIC)
    add(prt, package(4, e));
    entries++;
  }

  Bytes dev;
  add(dev, {'P', 'C', 'I', '0'});           // NameSeg
  add(dev, name("_HID", dword(0x030AD041)));  // EisaId ("PNP0A03"): PCI root bridge
  add(dev, name("_UID", {0x00}));           // ZeroOp
  add(dev, name("_CRS", buffer(crs)));
  add(dev, name("_PRT", package(entries, prt)));
  Bytes scope{0x5C, '_', 'S', 'B', '_'};    // "\_SB_"
  add(scope, with_length({0x5B, 0x82}, dev));  // ExtOpPrefix DeviceOp
  add(aml, with_length({0x10}, scope));        // ScopeOp
  return aml;
}

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
  if (cfg.pci_mmio_end <= cfg.pci_mmio_base) throw Error("ACPI tables: empty PCI MMIO window");
  const Bytes aml = dsdt_aml(cfg);
  const u32 dsdt_len = kHeaderLen + u32(aml.size());
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

  // DSDT: the header and the AML.
  header(b, kDsdt, "DSDT", dsdt_len, 1, "POPEKDST");
  std::memcpy(&b[kDsdt + kHeaderLen], aml.data(), aml.size());
  checksum(b, kDsdt, dsdt_len, kDsdt + 9);
  return img;
}

}  // namespace popek::boot
