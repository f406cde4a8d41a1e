#include "net/slirp.h"

#include <arpa/inet.h>
#include <slirp/libslirp.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "base/error.h"
#include "base/log.h"

namespace popek::net {

struct SlirpBackend::Timer {
  void (*cb)(void*);
  void* cb_opaque;
  i64 expire_ms = -1;  // -1: not armed
};

namespace {

SlirpBackend* self(void* opaque) { return static_cast<SlirpBackend*>(opaque); }

ssize_t cb_send_packet(const void* buf, size_t len, void* opaque) {
  self(opaque)->to_guest(buf, len);
  return ssize_t(len);
}
void cb_guest_error(const char* msg, void* opaque) { POPEK_LOG(warn, "slirp: guest error: %s", msg); }
int64_t cb_clock_get_ns(void* opaque) { return self(opaque)->now_ns(); }
void* cb_timer_new(SlirpTimerCb cb, void* cb_opaque, void* opaque) {
  return self(opaque)->timer_new(cb, cb_opaque);
}
void cb_timer_free(void* t, void* opaque) {
  self(opaque)->timer_free(static_cast<SlirpBackend::Timer*>(t));
}
void cb_timer_mod(void* t, int64_t expire_ms, void* opaque) {
  self(opaque)->timer_mod(static_cast<SlirpBackend::Timer*>(t), expire_ms);
}
// The event loop is this thread's: nothing to register or kick.
void cb_register_poll_fd(int, void*) {}
void cb_unregister_poll_fd(int, void*) {}
void cb_notify(void*) {}

short to_poll(int ev) {
  short e = 0;
  if (ev & SLIRP_POLL_IN) e |= POLLIN;
  if (ev & SLIRP_POLL_OUT) e |= POLLOUT;
  if (ev & SLIRP_POLL_PRI) e |= POLLPRI;
  if (ev & SLIRP_POLL_ERR) e |= POLLERR;
  if (ev & SLIRP_POLL_HUP) e |= POLLHUP;
  return e;
}
int from_poll(short e) {
  int ev = 0;
  if (e & POLLIN) ev |= SLIRP_POLL_IN;
  if (e & POLLOUT) ev |= SLIRP_POLL_OUT;
  if (e & POLLPRI) ev |= SLIRP_POLL_PRI;
  if (e & POLLERR) ev |= SLIRP_POLL_ERR;
  if (e & POLLHUP) ev |= SLIRP_POLL_HUP;
  if (e & POLLNVAL) ev |= SLIRP_POLL_ERR;
  return ev;
}

struct FillCtx {
  std::vector<pollfd>* fds;
  usize base;
};
int cb_add_poll(int fd, int events, void* opaque) {
  auto* c = static_cast<FillCtx*>(opaque);
  c->fds->push_back(pollfd{fd, to_poll(events), 0});
  return int(c->fds->size() - 1 - c->base);
}
struct PollCtx {
  const pollfd* fds;
  usize n;
};
int cb_get_revents(int idx, void* opaque) {
  auto* c = static_cast<PollCtx*>(opaque);
  if (idx < 0 || usize(idx) >= c->n) return 0;
  return from_poll(c->fds[idx].revents);
}

const SlirpCb kCallbacks = {
    .send_packet = cb_send_packet,
    .guest_error = cb_guest_error,
    .clock_get_ns = cb_clock_get_ns,
    .timer_new = cb_timer_new,
    .timer_free = cb_timer_free,
    .timer_mod = cb_timer_mod,
    .register_poll_fd = cb_register_poll_fd,
    .unregister_poll_fd = cb_unregister_poll_fd,
    .notify = cb_notify,
    .init_completed = nullptr,
    .timer_new_opaque = nullptr,
};

in_addr ip(const char* s) {
  in_addr a{};
  inet_pton(AF_INET, s, &a);
  return a;
}

}  // namespace

SlirpBackend::SlirpBackend(const std::vector<HostFwd>& fwds, bool defer_host_ports) : fwds_(fwds) {
  SlirpConfig cfg{};
  cfg.version = 3;
  cfg.restricted = 0;
  cfg.in_enabled = true;
  cfg.vnetwork = ip(kSlirpNetwork);
  cfg.vnetmask = ip("255.255.255.0");
  cfg.vhost = ip(kSlirpHost);
  cfg.in6_enabled = false;
  cfg.vhostname = "popek";
  cfg.vdhcp_start = ip(kSlirpGuest);
  cfg.vnameserver = ip(kSlirpDns);
  cfg.disable_host_loopback = false;
  cfg.enable_emu = false;
  slirp_ = slirp_new(&cfg, &kCallbacks, this);
  if (!slirp_) throw Error("--netdev user: libslirp could not start");
  tx_frames_ = &counters_.get("tx_frames");
  rx_frames_ = &counters_.get("rx_frames");
  resets_ = &counters_.get("restored_connection_resets");
  if (defer_host_ports) return;
  try {
    claim_host_ports();
  } catch (...) {
    slirp_cleanup(slirp_);
    slirp_ = nullptr;
    throw;
  }
}

void SlirpBackend::claim_host_ports() {
  if (ports_held_) return;
  for (usize i = 0; i < fwds_.size(); i++) {
    const HostFwd& f = fwds_[i];
    in_addr host = f.host_addr.empty() ? in_addr{INADDR_ANY} : ip(f.host_addr.c_str());
    in_addr guest = f.guest_addr.empty() ? ip(kSlirpGuest) : ip(f.guest_addr.c_str());
    if (slirp_add_hostfwd(slirp_, f.udp, host, f.host_port, guest, f.guest_port) < 0) {
      remove_forwards(i);
      throw Error("--netdev user: cannot forward host " + std::string(f.udp ? "UDP" : "TCP") + " port " +
                  std::to_string(f.host_port) + " (in use, or not allowed?)");
    }
  }
  ports_held_ = true;
}

void SlirpBackend::release_host_ports() {
  if (!ports_held_) return;
  remove_forwards(fwds_.size());
  ports_held_ = false;
}

// Closes the listening sockets; connections already accepted through them
// stay (slirp_remove_hostfwd only removes listeners).
void SlirpBackend::remove_forwards(usize n) {
  for (usize i = 0; i < n; i++) {
    const HostFwd& f = fwds_[i];
    in_addr host = f.host_addr.empty() ? in_addr{INADDR_ANY} : ip(f.host_addr.c_str());
    slirp_remove_hostfwd(slirp_, f.udp, host, f.host_port);
  }
}

NetBackend::State SlirpBackend::save_state() const {
  State st;
  st.kind = "user";
  st.version = u32(slirp_state_version());
  // The guest's NAT'd TCP connections, from libslirp's human-readable list
  // (its only account of them): "  TCP[STATE]  FD  GUESTADDR GUESTPORT
  // PEERADDR PEERPORT RECVQ SENDQ". Listeners (HOST_FORWARD) and connections
  // accepted through one (their first address is the host's) are skipped.
  if (char* info = slirp_connection_info(slirp_)) {
    const std::string text(info);
    std::free(info);  // (g_free: glib allocates with malloc)
    usize at = 0;
    while (at < text.size()) {
      usize eol = text.find('\n', at);
      if (eol == std::string::npos) eol = text.size();
      const std::string line = text.substr(at, eol - at);
      at = eol + 1;
      char state[32], ga[32], pa[32];
      int fd, gp, pp;
      if (std::sscanf(line.c_str(), " TCP[%31[^]]] %d %31s %d %31s %d", state, &fd, ga, &gp, pa, &pp) != 6)
        continue;
      const std::string st_name(state);
      if (st_name == "HOST_FORWARD" || st_name == "CLOSED" || st_name == "LISTEN" || st_name == "NONE" ||
          st_name == "TIME_WAIT")
        continue;
      State::Conn c{};
      in_addr g{}, p{};
      const in_addr net = ip(kSlirpNetwork);
      if (inet_pton(AF_INET, ga, &g) != 1 || inet_pton(AF_INET, pa, &p) != 1) continue;
      if ((g.s_addr & htonl(0xFFFFFF00)) != net.s_addr) continue;  // a hostfwd connection's host side
      std::memcpy(c.guest_addr, &g, 4);
      std::memcpy(c.peer_addr, &p, 4);
      c.guest_port = u16(gp);
      c.peer_port = u16(pp);
      st.dropped_tcp.push_back(c);
    }
  }
  if (guest_mac_known_) st.guest_mac.assign(guest_mac_, guest_mac_ + 6);
  slirp_state_save(
      slirp_,
      [](const void* buf, size_t len, void* opaque) -> ssize_t {
        auto* out = static_cast<std::vector<u8>*>(opaque);
        out->insert(out->end(), static_cast<const u8*>(buf), static_cast<const u8*>(buf) + len);
        return ssize_t(len);
      },
      &st.bytes);
  return st;
}

void SlirpBackend::load_state(const State& st) {
  if (st.kind != "user")
    throw Error("saved network backend is '" + st.kind + "', this command line has --netdev user");
  if (st.version > u32(slirp_state_version()))
    throw Error("saved libslirp state is version " + std::to_string(st.version) + "; this popek's libslirp (" +
                slirp_version_string() + ") reads up to version " + std::to_string(slirp_state_version()));
  struct Reader {
    const std::vector<u8>* b;
    usize at = 0;
    bool short_read = false;  // (libslirp does not check what its reads return)
  } r{&st.bytes};
  const int rc = slirp_state_load(slirp_, int(st.version),
                                  [](void* buf, size_t len, void* opaque) -> ssize_t {
                                    auto* rd = static_cast<Reader*>(opaque);
                                    const usize n = std::min<usize>(len, rd->b->size() - rd->at);
                                    if (n < len) {
                                      rd->short_read = true;
                                      std::memset(buf, 0, len);
                                    }
                                    std::memcpy(buf, rd->b->data() + rd->at, n);
                                    rd->at += n;
                                    return ssize_t(n);
                                  },
                                  &r);
  if (r.short_read) throw Error("libslirp's saved state is cut short (" + std::to_string(st.bytes.size()) + " bytes)");
  if (rc < 0) throw Error("libslirp refused its saved state (error " + std::to_string(rc) + ")");
  if (r.at != st.bytes.size())
    throw Error("libslirp's saved state has " + std::to_string(st.bytes.size() - r.at) + " bytes it did not read");
  if (!st.guest_mac.empty()) {
    if (st.guest_mac.size() != 6) throw Error("saved guest MAC address is not 6 bytes");
    std::memcpy(guest_mac_, st.guest_mac.data(), 6);
    guest_mac_known_ = true;
  }
  dropped_tcp_ = guest_mac_known_ ? st.dropped_tcp : std::vector<State::Conn>{};
}

namespace {
u16 csum_fold(u32 sum) {
  while (sum >> 16) sum = (sum & 0xFFFF) + (sum >> 16);
  return u16(~sum);
}
u32 csum_add(u32 sum, const u8* p, usize n) {
  for (usize i = 0; i + 1 < n; i += 2) sum += u32(p[i]) << 8 | p[i + 1];
  if (n & 1) sum += u32(p[n - 1]) << 8;
  return sum;
}
}  // namespace

// For each connection the restore dropped: two bare ACK segments from the
// peer, half the sequence space apart, so that at least one lies outside the
// guest's receive window (at most 1 GiB) whatever its next expected number.
// The guest answers an out-of-window segment with an ACK of its own (Linux:
// tcp_send_dupack); the restored slirp has no socket for it and resets the
// connection with that ACK's number as its sequence number.
void SlirpBackend::send_resets() {
  // slirp's own address on the guest network (libslirp: 52:55 and the
  // gateway's IPv4 address), the source of all its frames.
  const in_addr gw = ip(kSlirpHost);
  u8 slirp_mac[6] = {0x52, 0x55};
  std::memcpy(slirp_mac + 2, &gw, 4);
  const u32 base = u32(u64(now_ns()) * 2654435761u);
  for (const State::Conn& c : dropped_tcp_) {
    for (u32 k = 0; k < 2; k++) {
      u8 f[14 + 20 + 20] = {};
      std::memcpy(f, guest_mac_, 6);
      std::memcpy(f + 6, slirp_mac, 6);
      f[12] = 0x08;
      u8* iph = f + 14;
      iph[0] = 0x45;
      iph[3] = 40;
      iph[6] = 0x40;  // DF
      iph[8] = 64;
      iph[9] = 6;
      std::memcpy(iph + 12, c.peer_addr, 4);
      std::memcpy(iph + 16, c.guest_addr, 4);
      const u16 ic = csum_fold(csum_add(0, iph, 20));
      iph[10] = u8(ic >> 8);
      iph[11] = u8(ic);
      u8* t = iph + 20;
      t[0] = u8(c.peer_port >> 8);
      t[1] = u8(c.peer_port);
      t[2] = u8(c.guest_port >> 8);
      t[3] = u8(c.guest_port);
      const u32 seq = base + k * 0x80000000u;
      for (int i = 0; i < 4; i++) t[4 + i] = u8(seq >> (24 - 8 * i));
      t[12] = 5 << 4;
      t[13] = 0x10;  // ACK (its number is not looked at: the segment is dropped first)
      t[14] = 0xFF;
      t[15] = 0xFF;
      u8 pseudo[12] = {};
      std::memcpy(pseudo, c.peer_addr, 4);
      std::memcpy(pseudo + 4, c.guest_addr, 4);
      pseudo[9] = 6;
      pseudo[11] = 20;
      const u16 tc = csum_fold(csum_add(csum_add(0, pseudo, 12), t, 20));
      t[16] = u8(tc >> 8);
      t[17] = u8(tc);
      deliver(f, sizeof f);
    }
    ++*resets_;
  }
  dropped_tcp_.clear();
}

SlirpBackend::~SlirpBackend() {
  if (slirp_) slirp_cleanup(slirp_);
}

i64 SlirpBackend::now_ns() const {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

SlirpBackend::Timer* SlirpBackend::timer_new(void (*cb)(void*), void* cb_opaque) {
  timers_.push_back(std::make_unique<Timer>(Timer{cb, cb_opaque, -1}));
  return timers_.back().get();
}

void SlirpBackend::timer_free(Timer* t) {
  timers_.erase(std::remove_if(timers_.begin(), timers_.end(),
                               [t](const std::unique_ptr<Timer>& p) { return p.get() == t; }),
                timers_.end());
}

void SlirpBackend::timer_mod(Timer* t, i64 expire_ms) { t->expire_ms = expire_ms; }

void SlirpBackend::to_guest(const void* buf, usize len) {
  ++*rx_frames_;
  deliver(static_cast<const u8*>(buf), len);
}

void SlirpBackend::send(const u8* frame, usize len) {
  ++*tx_frames_;
  if (len >= 14) {
    std::memcpy(guest_mac_, frame + 6, 6);
    guest_mac_known_ = true;
  }
  slirp_input(slirp_, frame, int(len));
}

void SlirpBackend::io_fill(std::vector<pollfd>& fds, int* timeout_ms) {
  u32 t = *timeout_ms < 0 ? 1000u : u32(*timeout_ms);
  FillCtx ctx{&fds, fds.size()};
  slirp_pollfds_fill(slirp_, &t, cb_add_poll, &ctx);
  const i64 now_ms = now_ns() / 1000000;
  for (auto& tm : timers_)
    if (tm->expire_ms >= 0) t = u32(std::min<i64>(t, std::max<i64>(0, tm->expire_ms - now_ms)));
  *timeout_ms = int(t);
}

void SlirpBackend::io_dispatch(const pollfd* fds, usize n) {
  if (!dropped_tcp_.empty() && can_receive()) send_resets();
  PollCtx ctx{fds, n};
  slirp_pollfds_poll(slirp_, 0, cb_get_revents, &ctx);
  run_timers();
}

void SlirpBackend::run_timers() {
  const i64 now_ms = now_ns() / 1000000;
  // A callback may free or re-arm timers: look the list up again each time.
  for (bool again = true; again;) {
    again = false;
    for (auto& tm : timers_) {
      if (tm->expire_ms >= 0 && tm->expire_ms <= now_ms) {
        tm->expire_ms = -1;
        tm->cb(tm->cb_opaque);
        again = true;
        break;
      }
    }
  }
}

}  // namespace popek::net
