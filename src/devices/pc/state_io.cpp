#include "devices/pc/state_io.h"

namespace popek::dev {

namespace {
// Field helpers: a field per member, named as the member.
#define PUT(f) w.u64v(#f, u64(s.f))
#define GET(f) s.f = decltype(s.f)(r.u64v(#f))
#define PUTI(f) w.i64v(#f, i64(s.f))
#define GETI(f) s.f = decltype(s.f)(r.i64v(#f))

template <usize N>
void put_arr(snap::SectionWriter& w, const char* n, const std::array<u8, N>& a) {
  w.bytes(n, std::span<const u8>(a.data(), N));
}
template <usize N>
void get_arr(const snap::Section& r, const char* n, std::array<u8, N>& a) {
  auto b = r.exact(n, N);
  std::memcpy(a.data(), b.data(), N);
}
}  // namespace

void save_state(snap::SectionWriter& w, const I8259Pic::State& s) {
  PUT(irr); PUT(isr); PUT(imr); PUT(pins); PUT(elcr); PUT(elcr_mask);
  PUT(icw1); PUT(icw2); PUT(icw3); PUT(icw4); PUT(init_step); PUT(lowest_priority);
  PUT(read_isr); PUT(poll); PUT(special_mask); PUT(rotate_aeoi); PUT(spurious);
}
void load_state(const snap::Section& r, I8259Pic::State& s) {
  GET(irr); GET(isr); GET(imr); GET(pins); GET(elcr); GET(elcr_mask);
  GET(icw1); GET(icw2); GET(icw3); GET(icw4); GET(init_step); GET(lowest_priority);
  GET(read_isr); GET(poll); GET(special_mask); GET(rotate_aeoi); GET(spurious);
}

void save_state(snap::SectionWriter& w, const I8254Pit::State& s) {
  PUT(last_irq_tick);
  PUT(backlog);
  PUT(catchup_tick);
  for (unsigned i = 0; i < 3; i++) {
    const I8254Pit::CounterState& c = s.ctr[i];
    const std::string p = "ctr" + std::to_string(i) + ".";
    w.u64v(p + "control", c.control);
    w.u64v(p + "initial", c.initial);
    w.u64v(p + "pending", c.pending);
    w.u64v(p + "load_tick", c.load_tick);
    w.u64v(p + "pending_tick", c.pending_tick);
    w.u64v(p + "frozen", c.frozen);
    w.u64v(p + "armed", c.armed);
    w.u64v(p + "gate", c.gate);
    w.u64v(p + "paused", c.paused);
    w.u64v(p + "out_static", c.out_static);
    w.u64v(p + "write_msb", c.write_msb);
    w.u64v(p + "read_msb", c.read_msb);
    w.u64v(p + "write_lsb", c.write_lsb);
    w.u64v(p + "latched", c.latched);
    w.u64v(p + "status_latched", c.status_latched);
    w.u64v(p + "latch", c.latch);
    w.u64v(p + "status", c.status);
    w.u64v(p + "null_count", c.null_count);
  }
}
void load_state(const snap::Section& r, I8254Pit::State& s) {
  GET(last_irq_tick);
  s.backlog = r.u64v("backlog", 0);  // absent before lost-tick catch-up
  s.catchup_tick = r.u64v("catchup_tick", 0);
  for (unsigned i = 0; i < 3; i++) {
    I8254Pit::CounterState& c = s.ctr[i];
    const std::string p = "ctr" + std::to_string(i) + ".";
    c.control = u8(r.u64v(p + "control"));
    c.initial = u32(r.u64v(p + "initial"));
    c.pending = u32(r.u64v(p + "pending"));
    c.load_tick = r.u64v(p + "load_tick");
    c.pending_tick = r.u64v(p + "pending_tick");
    c.frozen = r.u64v(p + "frozen");
    c.armed = r.u64v(p + "armed");
    c.gate = r.u64v(p + "gate");
    c.paused = r.u64v(p + "paused");
    c.out_static = r.u64v(p + "out_static");
    c.write_msb = r.u64v(p + "write_msb");
    c.read_msb = r.u64v(p + "read_msb");
    c.write_lsb = u8(r.u64v(p + "write_lsb"));
    c.latched = r.u64v(p + "latched");
    c.status_latched = r.u64v(p + "status_latched");
    c.latch = u16(r.u64v(p + "latch"));
    c.status = u8(r.u64v(p + "status"));
    c.null_count = r.u64v(p + "null_count");
    if (c.initial > 65536 || c.pending > 65536) r.fail("counter " + std::to_string(i) + " count out of range");
  }
}

void save_state(snap::SectionWriter& w, const SystemControlPortB::State& s) { PUT(value); }
void load_state(const snap::Section& r, SystemControlPortB::State& s) { GET(value); }

void save_state(snap::SectionWriter& w, const Uart16550::State& s) {
  PUT(ier); PUT(lcr); PUT(mcr); PUT(lsr_err); PUT(msr_delta); PUT(scr); PUT(dll); PUT(dlm);
  PUT(fcr); PUT(rbr); put_arr(w, "rx", s.rx); PUT(rx_head); PUT(rx_count);
  PUT(thr_ipending); PUT(timeout_fired); PUT(break_in_fifo); PUT(timeout_deadline);
  PUT(inputs); PUT(lines);
}
void load_state(const snap::Section& r, Uart16550::State& s) {
  GET(ier); GET(lcr); GET(mcr); GET(lsr_err); GET(msr_delta); GET(scr); GET(dll); GET(dlm);
  GET(fcr); GET(rbr); get_arr(r, "rx", s.rx); GET(rx_head); GET(rx_count);
  GET(thr_ipending); GET(timeout_fired); GET(break_in_fifo); GET(timeout_deadline);
  GET(inputs); GET(lines);
}

void save_state(snap::SectionWriter& w, const Mc146818Rtc::State& s) {
  put_arr(w, "cmos", s.cmos);
  PUT(index); PUT(nmi_masked); PUT(frozen); PUTI(sec_base); PUT(ns_base); PUT(div_base); PUT(last_sync);
}
void load_state(const snap::Section& r, Mc146818Rtc::State& s) {
  get_arr(r, "cmos", s.cmos);
  GET(index); GET(nmi_masked); GET(frozen); GETI(sec_base); GET(ns_base); GET(div_base); GET(last_sync);
}

namespace {
void put_queue(snap::SectionWriter& w, const std::string& p, const I8042::Queue& q) {
  std::array<u8, 2 * I8042::kQueue> b{};
  for (unsigned i = 0; i < I8042::kQueue; i++) {
    b[2 * i] = q.e[i].byte;
    b[2 * i + 1] = q.e[i].flags;
  }
  w.bytes(p + ".entries", b);
  w.u64v(p + ".head", q.head);
  w.u64v(p + ".count", q.count);
}
void get_queue(const snap::Section& r, const std::string& p, I8042::Queue& q) {
  auto b = r.exact(p + ".entries", 2 * I8042::kQueue);
  for (unsigned i = 0; i < I8042::kQueue; i++) q.e[i] = {b[2 * i], b[2 * i + 1]};
  q.head = u8(r.u64v(p + ".head"));
  q.count = u8(r.u64v(p + ".count"));
}
}  // namespace

void save_state(snap::SectionWriter& w, const I8042::State& s) {
  put_arr(w, "ram", s.ram);
  PUT(out_port); PUT(pending_cmd); PUT(last_was_cmd); PUT(obf);
  w.u64v("out.byte", s.out.byte);
  w.u64v("out.flags", s.out.flags);
  put_queue(w, "ctrl", s.ctrl);
  put_queue(w, "kbd", s.kbd);
  put_queue(w, "aux", s.aux);
  PUT(kbd_pending); PUT(kbd_scanning); PUT(kbd_set); PUT(kbd_leds); PUT(kbd_typematic);
}
void load_state(const snap::Section& r, I8042::State& s) {
  get_arr(r, "ram", s.ram);
  GET(out_port); GET(pending_cmd); GET(last_was_cmd); GET(obf);
  s.out.byte = u8(r.u64v("out.byte"));
  s.out.flags = u8(r.u64v("out.flags"));
  get_queue(r, "ctrl", s.ctrl);
  get_queue(r, "kbd", s.kbd);
  get_queue(r, "aux", s.aux);
  GET(kbd_pending); GET(kbd_scanning); GET(kbd_set); GET(kbd_leds); GET(kbd_typematic);
}

void save_state(snap::SectionWriter& w, const PostCodePort::State& s) { PUT(last); }
void load_state(const snap::Section& r, PostCodePort::State& s) { GET(last); }

void save_state(snap::SectionWriter& w, const AcpiPm::State& s) {
  PUT(sts);
  PUT(en);
  PUT(cnt);
}
void load_state(const snap::Section& r, AcpiPm::State& s) {
  GET(sts);
  GET(en);
  GET(cnt);
}

void save_state(snap::SectionWriter& w, const PciHostBridge::State& s) { PUT(config_address); }
void load_state(const snap::Section& r, PciHostBridge::State& s) { GET(config_address); }

void save_state(snap::SectionWriter& w, const PciFunction::State& s, const std::string& prefix) {
  w.bytes(prefix + "config", s.config);
}
void load_state(const snap::Section& r, PciFunction::State& s, const std::string& prefix) {
  auto b = r.exact(prefix + "config", 256);
  std::memcpy(s.config.data(), b.data(), 256);
}

#undef PUT
#undef GET
#undef PUTI
#undef GETI

}  // namespace popek::dev
