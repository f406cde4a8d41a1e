// --netdev parsing and backend selection.
#include <arpa/inet.h>

#include <cstdlib>

#include "base/error.h"
#include "base/strings.h"
#include "net/net.h"
#include "net/slirp.h"
#include "net/tap.h"

namespace popek::net {

namespace {

u16 parse_port(const std::string& s, const std::string& what) {
  char* end = nullptr;
  unsigned long v = std::strtoul(s.c_str(), &end, 10);
  if (s.empty() || *end || v == 0 || v > 65535)
    throw Error("--netdev: bad " + what + " port '" + s + "' in hostfwd (1-65535)");
  return u16(v);
}

void check_addr(const std::string& a, const std::string& rule) {
  in_addr x;
  if (!a.empty() && inet_pton(AF_INET, a.c_str(), &x) != 1)
    throw Error("--netdev: bad IPv4 address '" + a + "' in hostfwd=" + rule);
}

// tcp:[HOSTADDR]:HOSTPORT-[GUESTADDR]:GUESTPORT (the protocol may be omitted).
HostFwd parse_hostfwd(const std::string& rule) {
  HostFwd f;
  std::string r = rule;
  const std::string usage = " (expected [tcp|udp]:[HOSTADDR]:HOSTPORT-[GUESTADDR]:GUESTPORT)";
  auto dash = r.find('-');
  if (dash == std::string::npos) throw Error("--netdev: hostfwd=" + rule + " has no '-'" + usage);
  std::string host = r.substr(0, dash), guest = r.substr(dash + 1);
  auto parts = split(host, ':');
  if (parts.size() == 3) {
    if (parts[0] == "udp") f.udp = true;
    else if (parts[0] != "tcp" && !parts[0].empty())
      throw Error("--netdev: hostfwd protocol '" + parts[0] + "' is not tcp or udp");
    parts.erase(parts.begin());
  }
  if (parts.size() != 2) throw Error("--netdev: bad host side '" + host + "' in hostfwd=" + rule + usage);
  f.host_addr = parts[0];
  f.host_port = parse_port(parts[1], "host");
  auto gparts = split(guest, ':');
  if (gparts.size() != 2) throw Error("--netdev: bad guest side '" + guest + "' in hostfwd=" + rule + usage);
  f.guest_addr = gparts[0];
  f.guest_port = parse_port(gparts[1], "guest");
  check_addr(f.host_addr, rule);
  check_addr(f.guest_addr, rule);
  return f;
}

}  // namespace

void parse_mac(const std::string& s, u8 out[6]) {
  auto parts = split(s, ':');
  bool ok = parts.size() == 6;
  for (usize i = 0; ok && i < 6; i++) {
    char* end = nullptr;
    unsigned long v = std::strtoul(parts[i].c_str(), &end, 16);
    ok = parts[i].size() == 2 && !*end && v <= 0xFF;
    out[i] = u8(v);
  }
  if (!ok) throw Error("bad MAC address '" + s + "' (expected six hex bytes like 52:54:00:12:34:56)");
  if (out[0] & 1) throw Error("MAC address '" + s + "' is a multicast address");
}

NetdevSpec parse_netdev(const std::string& spec) {
  NetdevSpec n;
  auto opts = split(spec, ',');
  const std::string& kind = opts[0];
  if (kind == "user") n.kind = NetdevSpec::Kind::user;
  else if (kind == "tap") n.kind = NetdevSpec::Kind::tap;
  else
    throw Error("--netdev: unknown type '" + kind + "' (user or tap; e.g. --netdev user,hostfwd=tcp::8080-:80)");
  for (usize i = 1; i < opts.size(); i++) {
    const std::string& o = opts[i];
    auto eq = o.find('=');
    if (eq == std::string::npos) throw Error("--netdev: option '" + o + "' needs a value (key=value)");
    std::string k = o.substr(0, eq), v = o.substr(eq + 1);
    if (k == "id") {
      n.id = v;
    } else if (k == "mac") {
      u8 m[6];
      parse_mac(v, m);
      n.mac = v;
    } else if (k == "hostfwd" && n.kind == NetdevSpec::Kind::user) {
      n.hostfwd.push_back(parse_hostfwd(v));
    } else if (k == "ifname" && n.kind == NetdevSpec::Kind::tap) {
      if (v.empty() || v.size() > 15) throw Error("--netdev tap: ifname '" + v + "' must be 1-15 characters");
      n.ifname = v;
    } else {
      throw Error("--netdev " + kind + ": unknown option '" + k + "'" +
                  (n.kind == NetdevSpec::Kind::user ? " (known: id, mac, hostfwd)" : " (known: id, mac, ifname)"));
    }
  }
  if (n.kind == NetdevSpec::Kind::tap && n.ifname.empty())
    throw Error("--netdev tap needs ifname=NAME (an existing TAP interface, or one popek may create)");
  return n;
}

std::unique_ptr<NetBackend> open_netdev(const NetdevSpec& spec, bool defer_host_ports) {
  if (spec.kind == NetdevSpec::Kind::tap) return std::make_unique<TapBackend>(spec.ifname);
  return std::make_unique<SlirpBackend>(spec.hostfwd, defer_host_ports);
}

}  // namespace popek::net
