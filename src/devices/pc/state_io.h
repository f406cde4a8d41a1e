// The PC chips' State structs (each chip's save()/restore()) in a
// machine-state stream: one section per chip, with the State's version as the
// section version. `save_*` fills a section's fields; `load_*` reads them
// back into a State (throws snap::FormatError naming a missing or bad field).
#pragma once
#include "devices/pc/acpi_pm.h"
#include "devices/pc/debug_ports.h"
#include "devices/pc/i8042.h"
#include "devices/pc/i8254_pit.h"
#include "devices/pc/i8259_pic.h"
#include "devices/pc/mc146818_rtc.h"
#include "devices/pc/pci.h"
#include "devices/pc/pci_host.h"
#include "devices/pc/uart_16550.h"
#include "snapshot/stream.h"

namespace popek::dev {

void save_state(snap::SectionWriter& w, const I8259Pic::State& s);
void load_state(const snap::Section& r, I8259Pic::State& s);
void save_state(snap::SectionWriter& w, const I8254Pit::State& s);
void load_state(const snap::Section& r, I8254Pit::State& s);
void save_state(snap::SectionWriter& w, const SystemControlPortB::State& s);
void load_state(const snap::Section& r, SystemControlPortB::State& s);
void save_state(snap::SectionWriter& w, const Uart16550::State& s);
void load_state(const snap::Section& r, Uart16550::State& s);
void save_state(snap::SectionWriter& w, const Mc146818Rtc::State& s);
void load_state(const snap::Section& r, Mc146818Rtc::State& s);
void save_state(snap::SectionWriter& w, const I8042::State& s);
void load_state(const snap::Section& r, I8042::State& s);
void save_state(snap::SectionWriter& w, const PostCodePort::State& s);
void load_state(const snap::Section& r, PostCodePort::State& s);
void save_state(snap::SectionWriter& w, const AcpiPm::State& s);
void load_state(const snap::Section& r, AcpiPm::State& s);
void save_state(snap::SectionWriter& w, const PciHostBridge::State& s);
void load_state(const snap::Section& r, PciHostBridge::State& s);
// PCI configuration space, as fields prefixed with `prefix` (a function's
// state lives in its owner's section).
void save_state(snap::SectionWriter& w, const PciFunction::State& s, const std::string& prefix = "pci.");
void load_state(const snap::Section& r, PciFunction::State& s, const std::string& prefix = "pci.");

// A chip's whole section: writes `name` with the State's version.
template <typename Chip>
void save_chip(snap::StreamWriter& out, const char* name, const Chip& chip) {
  snap::SectionWriter w;
  auto st = chip.save();
  save_state(w, st);
  out.section(name, st.version, w);
}
template <typename Chip>
void load_chip(const snap::Section& r, Chip& chip) {
  typename Chip::State st;
  st.version = r.version;
  load_state(r, st);
  r.check_all_read();
  chip.restore(st);
}

}  // namespace popek::dev
