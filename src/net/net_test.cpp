// Network backends: --netdev parsing; libslirp's DHCP, ARP and a host port
// forward driven through the backend's poll loop; and the TAP backend inside a
// network namespace this test makes (skipped where namespaces are not allowed).
#include <gtest/gtest.h>

#include <arpa/inet.h>
#include <fcntl.h>
#include <linux/if.h>
#include <net/if_arp.h>
#include <netinet/in.h>
#include <sched.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <functional>

#include "base/error.h"
#include "net/net.h"
#include "net/slirp.h"
#include "net/tap.h"

using namespace popek;
using namespace popek::net;

namespace {

const u8 kGuestMac[6] = {0x02, 0x50, 0x4F, 0x50, 0x45, 0x4B};

u16 ip_checksum(const u8* p, usize n) {
  u32 s = 0;
  for (usize i = 0; i + 1 < n; i += 2) s += u32(p[i]) << 8 | p[i + 1];
  while (s >> 16) s = (s & 0xFFFF) + (s >> 16);
  return u16(~s);
}

void put16(std::vector<u8>& f, usize at, u16 v) {
  f[at] = u8(v >> 8);
  f[at + 1] = u8(v);
}

std::vector<u8> eth(const u8 dst[6], u16 type) {
  std::vector<u8> f(14);
  std::memcpy(f.data(), dst, 6);
  std::memcpy(f.data() + 6, kGuestMac, 6);
  put16(f, 12, type);
  return f;
}

// A DHCPDISCOVER from the guest, broadcast.
std::vector<u8> dhcp_discover() {
  const u8 bcast[6] = {0xff, 0xff, 0xff, 0xff, 0xff, 0xff};
  std::vector<u8> f = eth(bcast, 0x0800);
  std::vector<u8> bootp(240 + 4, 0);
  bootp[0] = 1;  // BOOTREQUEST
  bootp[1] = 1;  // Ethernet
  bootp[2] = 6;
  bootp[4] = 0x12;  // xid
  bootp[5] = 0x34;
  std::memcpy(&bootp[28], kGuestMac, 6);
  const u8 cookie[4] = {99, 130, 83, 99};
  std::memcpy(&bootp[236], cookie, 4);
  bootp[240] = 53;  // message type
  bootp[241] = 1;
  bootp[242] = 1;  // DISCOVER
  bootp[243] = 255;
  const usize udp_len = 8 + bootp.size(), ip_len = 20 + udp_len;
  std::vector<u8> ip(20, 0);
  ip[0] = 0x45;
  put16(ip, 2, u16(ip_len));
  ip[8] = 64;
  ip[9] = 17;
  std::memset(&ip[16], 0xff, 4);
  put16(ip, 10, ip_checksum(ip.data(), 20));
  std::vector<u8> udp(8, 0);
  put16(udp, 0, 68);
  put16(udp, 2, 67);
  put16(udp, 4, u16(udp_len));
  f.insert(f.end(), ip.begin(), ip.end());
  f.insert(f.end(), udp.begin(), udp.end());
  f.insert(f.end(), bootp.begin(), bootp.end());
  return f;
}

std::vector<u8> arp(u16 op, const u8 sha[6], const char* spa, const u8 tha[6], const char* tpa) {
  const u8 bcast[6] = {0xff, 0xff, 0xff, 0xff, 0xff, 0xff};
  std::vector<u8> f = eth(op == 1 ? bcast : tha, 0x0806);
  f.resize(14 + 28);
  put16(f, 14, 1);
  put16(f, 16, 0x0800);
  f[18] = 6;
  f[19] = 4;
  put16(f, 20, op);
  std::memcpy(&f[22], sha, 6);
  inet_pton(AF_INET, spa, &f[28]);
  std::memcpy(&f[32], tha, 6);
  inet_pton(AF_INET, tpa, &f[38]);
  return f;
}

// Runs the backend's event loop until pred() or the timeout.
bool pump(NetBackend& b, const std::function<bool()>& pred, int ms = 3000) {
  auto end = std::chrono::steady_clock::now() + std::chrono::milliseconds(ms);
  while (!pred()) {
    if (std::chrono::steady_clock::now() > end) return false;
    std::vector<pollfd> fds;
    int timeout = 20;
    b.io_fill(fds, &timeout);
    ::poll(fds.data(), fds.size(), std::min(timeout, 20));
    b.io_dispatch(fds.data(), fds.size());
  }
  return true;
}

u16 free_port() {
  int s = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ::bind(s, reinterpret_cast<sockaddr*>(&a), sizeof a);
  socklen_t l = sizeof a;
  ::getsockname(s, reinterpret_cast<sockaddr*>(&a), &l);
  ::close(s);
  return ntohs(a.sin_port);
}

}  // namespace

TEST(Netdev, Parse) {
  NetdevSpec s = parse_netdev("user");
  EXPECT_EQ(s.kind, NetdevSpec::Kind::user);
  s = parse_netdev("user,id=n0,hostfwd=tcp::8080-:80,hostfwd=udp:127.0.0.1:5353-10.0.2.15:53,mac=52:54:00:aa:bb:cc");
  ASSERT_EQ(s.hostfwd.size(), 2u);
  EXPECT_FALSE(s.hostfwd[0].udp);
  EXPECT_EQ(s.hostfwd[0].host_addr, "");
  EXPECT_EQ(s.hostfwd[0].host_port, 8080);
  EXPECT_EQ(s.hostfwd[0].guest_port, 80);
  EXPECT_TRUE(s.hostfwd[1].udp);
  EXPECT_EQ(s.hostfwd[1].host_addr, "127.0.0.1");
  EXPECT_EQ(s.hostfwd[1].guest_addr, "10.0.2.15");
  EXPECT_EQ(s.mac, "52:54:00:aa:bb:cc");
  s = parse_netdev("user,hostfwd=:127.0.0.1:2222-:22");
  EXPECT_EQ(s.hostfwd[0].host_port, 2222);
  s = parse_netdev("tap,ifname=tap0");
  EXPECT_EQ(s.kind, NetdevSpec::Kind::tap);
  EXPECT_EQ(s.ifname, "tap0");
}

TEST(Netdev, ParseErrorsSayWhatIsWrong) {
  auto msg = [](const std::string& spec) {
    try {
      parse_netdev(spec);
    } catch (const Error& e) {
      return std::string(e.what());
    }
    return std::string("(no error)");
  };
  EXPECT_NE(msg("bridge").find("unknown type 'bridge'"), std::string::npos);
  EXPECT_NE(msg("user,hostfwd=tcp::80").find("no '-'"), std::string::npos);
  EXPECT_NE(msg("user,hostfwd=tcp::99999-:80").find("bad host port"), std::string::npos);
  EXPECT_NE(msg("user,hostfwd=sctp::1-:2").find("not tcp or udp"), std::string::npos);
  EXPECT_NE(msg("user,hostfwd=tcp:1.2.3:1-:2").find("bad IPv4 address"), std::string::npos);
  EXPECT_NE(msg("user,foo=bar").find("unknown option 'foo'"), std::string::npos);
  EXPECT_NE(msg("user,restrict").find("needs a value"), std::string::npos);
  EXPECT_NE(msg("tap").find("needs ifname"), std::string::npos);
  EXPECT_NE(msg("user,mac=01:00:00:00:00:01").find("multicast"), std::string::npos);
  EXPECT_NE(msg("user,mac=zz").find("bad MAC"), std::string::npos);
}

TEST(Slirp, DhcpOfferAndArp) {
  SlirpBackend b({});
  std::vector<std::vector<u8>> got;
  b.set_receiver([&](const u8* f, usize n) { got.emplace_back(f, f + n); });
  auto d = dhcp_discover();
  b.send(d.data(), d.size());
  ASSERT_TRUE(pump(b, [&] { return !got.empty(); }));
  const auto& o = got[0];
  ASSERT_GE(o.size(), 14u + 20 + 8 + 240);
  EXPECT_EQ(o[12], 0x08);
  EXPECT_EQ(o[13], 0x00);
  EXPECT_EQ(o[14 + 9], 17);                             // UDP
  EXPECT_EQ(o[14 + 20 + 1], 67);                        // from the DHCP server port
  const u8* bootp = o.data() + 14 + 20 + 8;
  EXPECT_EQ(bootp[0], 2);                               // BOOTREPLY
  char yi[INET_ADDRSTRLEN];
  inet_ntop(AF_INET, bootp + 16, yi, sizeof yi);
  EXPECT_STREQ(yi, kSlirpGuest);

  got.clear();
  const u8 zero[6] = {};
  auto a = arp(1, kGuestMac, kSlirpGuest, zero, kSlirpHost);
  b.send(a.data(), a.size());
  ASSERT_TRUE(pump(b, [&] { return !got.empty(); }));
  ASSERT_GE(got[0].size(), 42u);
  EXPECT_EQ(got[0][12], 0x08);
  EXPECT_EQ(got[0][13], 0x06);
  EXPECT_EQ(got[0][21], 2);  // ARP reply
  EXPECT_EQ(std::memcmp(&got[0][32], kGuestMac, 6), 0);
}

TEST(Slirp, HostForwardReachesTheGuest) {
  const u16 port = free_port();
  HostFwd f;
  f.host_addr = "127.0.0.1";
  f.host_port = port;
  f.guest_port = 80;
  SlirpBackend b({f});
  std::vector<std::vector<u8>> got;
  b.set_receiver([&](const u8* fr, usize n) { got.emplace_back(fr, fr + n); });
  int s = ::socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(port);
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ::connect(s, reinterpret_cast<sockaddr*>(&a), sizeof a);
  // slirp asks who has the guest's address, then sends a SYN to port 80.
  bool syn = false;
  ASSERT_TRUE(pump(b, [&] {
    for (auto& fr : got) {
      if (fr.size() >= 42 && fr[12] == 0x08 && fr[13] == 0x06 && fr[21] == 1) {
        auto reply = arp(2, kGuestMac, kSlirpGuest, &fr[6], kSlirpHost);
        got.clear();
        b.send(reply.data(), reply.size());
        return false;
      }
      if (fr.size() >= 54 && fr[12] == 0x08 && fr[14 + 9] == 6) {
        const u8* tcp = fr.data() + 14 + (fr[14] & 0xF) * 4;
        syn = (u16(tcp[2] << 8 | tcp[3]) == 80) && (tcp[13] & 0x02);
        return syn;
      }
    }
    return false;
  }));
  EXPECT_TRUE(syn);
  ::close(s);
}

TEST(Slirp, ForwardOfBusyPortFails) {
  int s = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ASSERT_EQ(::bind(s, reinterpret_cast<sockaddr*>(&a), sizeof a), 0);
  ASSERT_EQ(::listen(s, 1), 0);
  socklen_t l = sizeof a;
  ::getsockname(s, reinterpret_cast<sockaddr*>(&a), &l);
  HostFwd f;
  f.host_addr = "127.0.0.1";
  f.host_port = ntohs(a.sin_port);
  f.guest_port = 80;
  try {
    SlirpBackend b({f});
    ADD_FAILURE() << "forwarding a port in use should fail";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("cannot forward host TCP port"), std::string::npos);
  }
  ::close(s);
}

TEST(Tap, MissingDeviceOrPermissionIsAClearError) {
  try {
    TapBackend t("popek-no-such-tap-name-that-is-long");
    SUCCEED();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("--netdev tap"), std::string::npos);
  }
}

// In a fresh network namespace: create tap "ptap0" with 192.168.77.1/24, send
// an ARP request for that address through the backend, and get the kernel's
// reply back through the backend's poll loop. (A TAP backend refuses to be
// saved, saying why.)
TEST(Tap, ArpThroughTheHostKernel) {
  pid_t pid = ::fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    int flags = CLONE_NEWNET | (::geteuid() == 0 ? 0 : CLONE_NEWUSER);
    if (::unshare(flags) != 0) ::_exit(77);
    try {
      TapBackend t("ptap0");
      std::string why;
      if (t.can_save(&why) || why.find("cannot be saved or migrated") == std::string::npos) ::_exit(7);
      int s = ::socket(AF_INET, SOCK_DGRAM, 0);
      ifreq ifr{};
      std::strcpy(ifr.ifr_name, "ptap0");
      auto* sin = reinterpret_cast<sockaddr_in*>(&ifr.ifr_addr);
      sin->sin_family = AF_INET;
      inet_pton(AF_INET, "192.168.77.1", &sin->sin_addr);
      if (::ioctl(s, SIOCSIFADDR, &ifr) != 0) ::_exit(3);
      inet_pton(AF_INET, "255.255.255.0", &sin->sin_addr);
      if (::ioctl(s, SIOCSIFNETMASK, &ifr) != 0) ::_exit(4);
      if (::ioctl(s, SIOCGIFFLAGS, &ifr) != 0) ::_exit(5);
      ifr.ifr_flags |= IFF_UP | IFF_RUNNING;
      if (::ioctl(s, SIOCSIFFLAGS, &ifr) != 0) ::_exit(6);
      bool reply = false;
      t.set_receiver([&](const u8* f, usize n) {
        if (n >= 42 && f[12] == 0x08 && f[13] == 0x06 && f[21] == 2 &&
            std::memcmp(f + 32, kGuestMac, 6) == 0)
          reply = true;
      });
      const u8 zero[6] = {};
      auto req = arp(1, kGuestMac, "192.168.77.2", zero, "192.168.77.1");
      t.send(req.data(), req.size());
      ::_exit(pump(t, [&] { return reply; }) ? 0 : 2);
    } catch (const Error& e) {
      std::fprintf(stderr, "%s\n", e.what());
      ::_exit(1);
    }
  }
  int st = 0;
  ::waitpid(pid, &st, 0);
  ASSERT_TRUE(WIFEXITED(st));
  if (WEXITSTATUS(st) == 77) GTEST_SKIP() << "cannot make a network namespace here";
  EXPECT_EQ(WEXITSTATUS(st), 0);
}

// Suspend/resume: libslirp's saved state carries the DHCP leases. The
// restored stack remembers that 10.0.2.15 is taken: a second card asking
// gets 10.0.2.16, where a fresh stack would hand out .15 again.
TEST(Slirp, SavedStateKeepsTheDhcpLeases) {
  auto offered = [](SlirpBackend& b, u8 last_mac_byte) {
    std::vector<std::vector<u8>> got;
    b.set_receiver([&](const u8* f, usize n) { got.emplace_back(f, f + n); });
    auto d = dhcp_discover();
    d[6 + 5] = last_mac_byte;                  // Ethernet source
    d[14 + 20 + 8 + 28 + 5] = last_mac_byte;   // chaddr
    b.send(d.data(), d.size());
    EXPECT_TRUE(pump(b, [&] { return !got.empty(); }));
    char yi[INET_ADDRSTRLEN] = "";
    if (!got.empty() && got[0].size() >= 14u + 20 + 8 + 240)
      inet_ntop(AF_INET, got[0].data() + 14 + 20 + 8 + 16, yi, sizeof yi);
    b.set_receiver(nullptr);
    return std::string(yi);
  };
  SlirpBackend a({});
  EXPECT_EQ(offered(a, 0x4B), "10.0.2.15");
  std::string why;
  EXPECT_TRUE(a.can_save(&why));
  const NetBackend::State st = a.save_state();
  EXPECT_EQ(st.kind, "user");
  EXPECT_GT(st.version, 0u);
  EXPECT_FALSE(st.bytes.empty());

  SlirpBackend fresh({});
  EXPECT_EQ(offered(fresh, 0x4C), "10.0.2.15");
  SlirpBackend b({});
  b.load_state(st);
  EXPECT_EQ(offered(b, 0x4C), "10.0.2.16");
  EXPECT_EQ(offered(b, 0x4B), "10.0.2.15");  // the first card keeps its address
}

TEST(Slirp, SavedStateFromANewerLibslirpOrOtherBackendIsRefused) {
  SlirpBackend a({});
  NetBackend::State st = a.save_state();
  st.version += 1;
  SlirpBackend b({});
  try {
    b.load_state(st);
    ADD_FAILURE() << "a newer state version should be refused";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("reads up to version"), std::string::npos) << e.what();
  }
  st = a.save_state();
  st.kind = "tap";
  EXPECT_THROW(b.load_state(st), Error);
  st = a.save_state();
  st.bytes.resize(st.bytes.size() / 2);
  EXPECT_THROW(b.load_state(st), Error);
}

// A migration's switch-over on one host: the source lets its forwarded port
// go, the destination (built with the ports deferred) binds it; a port still
// held is refused with a message naming it, and nothing stays half-bound.
TEST(Slirp, HostPortsMoveBetweenBackends) {
  HostFwd f1, f2;
  f1.host_addr = f2.host_addr = "127.0.0.1";
  f1.host_port = free_port();
  f2.host_port = free_port();
  f1.guest_port = 80;
  f2.guest_port = 81;
  SlirpBackend src({f1, f2});
  EXPECT_TRUE(src.host_ports_held());
  SlirpBackend dst({f1, f2}, /*defer_host_ports=*/true);
  EXPECT_FALSE(dst.host_ports_held());
  try {
    dst.claim_host_ports();
    ADD_FAILURE() << "the source still holds the ports";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("port " + std::to_string(f1.host_port)), std::string::npos) << e.what();
  }
  EXPECT_FALSE(dst.host_ports_held());
  src.release_host_ports();
  EXPECT_FALSE(src.host_ports_held());
  dst.claim_host_ports();
  EXPECT_TRUE(dst.host_ports_held());
  // The destination's listener answers.
  int s = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(f2.host_port);
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  EXPECT_EQ(::connect(s, reinterpret_cast<sockaddr*>(&a), sizeof a), 0);
  ::close(s);
  // A failed migration: the source takes them back once the destination is gone.
  EXPECT_THROW(src.claim_host_ports(), Error);
  dst.release_host_ports();
  src.claim_host_ports();
  EXPECT_TRUE(src.host_ports_held());
}

// The guest's NAT'd connections are not in libslirp's saved state: the saved
// state lists them, and the restored backend, once the card can take frames,
// sends the guest two out-of-window ACKs for each (its TCP then answers, and
// the restored slirp resets the connection).
TEST(Slirp, RestoreNudgesTheGuestsDroppedConnections) {
  int ls = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ASSERT_EQ(::bind(ls, reinterpret_cast<sockaddr*>(&a), sizeof a), 0);
  ASSERT_EQ(::listen(ls, 1), 0);
  socklen_t l = sizeof a;
  ::getsockname(ls, reinterpret_cast<sockaddr*>(&a), &l);
  const u16 host_port = ntohs(a.sin_port);

  SlirpBackend src({});
  std::vector<std::vector<u8>> got;
  src.set_receiver([&](const u8* f, usize n) { got.emplace_back(f, f + n); });
  // A SYN from 10.0.2.15:40000 to the host (10.0.2.2:host_port).
  const u8 gw[6] = {0x52, 0x55, 10, 0, 2, 2};
  std::vector<u8> f = eth(gw, 0x0800);
  std::vector<u8> ip(20, 0), tcp(20, 0);
  ip[0] = 0x45;
  put16(ip, 2, 40);
  ip[8] = 64;
  ip[9] = 6;
  inet_pton(AF_INET, kSlirpGuest, &ip[12]);
  inet_pton(AF_INET, kSlirpHost, &ip[16]);
  put16(ip, 10, ip_checksum(ip.data(), 20));
  put16(tcp, 0, 40000);
  put16(tcp, 2, host_port);
  tcp[7] = 1;  // seq 1
  tcp[12] = 5 << 4;
  tcp[13] = 0x02;  // SYN
  put16(tcp, 14, 64240);
  std::vector<u8> ps(12 + 20, 0);
  std::memcpy(&ps[0], &ip[12], 8);
  ps[9] = 6;
  ps[11] = 20;
  std::memcpy(&ps[12], tcp.data(), 20);
  put16(tcp, 16, ip_checksum(ps.data(), ps.size()));
  f.insert(f.end(), ip.begin(), ip.end());
  f.insert(f.end(), tcp.begin(), tcp.end());
  src.send(f.data(), f.size());
  pump(src, [] { return false; }, 200);

  const NetBackend::State st = src.save_state();
  ASSERT_EQ(st.dropped_tcp.size(), 1u);
  EXPECT_EQ(st.dropped_tcp[0].guest_port, 40000);
  EXPECT_EQ(st.dropped_tcp[0].peer_port, host_port);
  ASSERT_EQ(st.guest_mac.size(), 6u);
  EXPECT_EQ(std::memcmp(st.guest_mac.data(), kGuestMac, 6), 0);

  SlirpBackend dst({});
  std::vector<std::vector<u8>> out;
  bool room = false;
  dst.set_receiver([&](const u8* fr, usize n) { out.emplace_back(fr, fr + n); });
  dst.set_can_receive([&] { return room; });
  dst.load_state(st);
  pump(dst, [] { return false; }, 50);
  EXPECT_TRUE(out.empty()) << "nothing before the card can take frames";
  room = true;
  ASSERT_TRUE(pump(dst, [&] { return out.size() >= 2; }));
  u32 seqs[2];
  for (int i = 0; i < 2; i++) {
    const auto& fr = out[i];
    ASSERT_EQ(fr.size(), 54u);
    EXPECT_EQ(std::memcmp(fr.data(), kGuestMac, 6), 0);
    EXPECT_EQ(std::memcmp(fr.data() + 6, gw, 6), 0);
    EXPECT_EQ(ip_checksum(fr.data() + 14, 20), 0) << "IPv4 header checksum";
    const u8* t = fr.data() + 34;
    EXPECT_EQ(u16(t[0] << 8 | t[1]), host_port);
    EXPECT_EQ(u16(t[2] << 8 | t[3]), 40000);
    EXPECT_EQ(t[13], 0x10);  // ACK only
    std::vector<u8> p(12 + 20, 0);
    std::memcpy(&p[0], fr.data() + 14 + 12, 8);
    p[9] = 6;
    p[11] = 20;
    std::memcpy(&p[12], t, 20);
    EXPECT_EQ(ip_checksum(p.data(), p.size()), 0) << "TCP checksum";
    seqs[i] = u32(t[4]) << 24 | u32(t[5]) << 16 | u32(t[6]) << 8 | t[7];
  }
  EXPECT_EQ(seqs[1] - seqs[0], 0x80000000u);
  ::close(ls);
}
