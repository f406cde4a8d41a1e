// Network backends: where the frames of a guest network card go. A backend
// carries Ethernet frames (no virtio header) between the guest and the host:
// user-mode NAT through libslirp (no privileges needed), or a TAP interface.
//
// Everything runs on the board's event-loop thread: the board asks a backend
// which descriptors to poll (io_fill), polls, and hands the results back
// (io_dispatch); frames for the guest come out through the receiver callback,
// possibly from within send() (an ARP reply, say).
#pragma once
#include <poll.h>

#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "base/counters.h"
#include "base/types.h"

namespace popek::net {

// A port forward from the host into the guest (QEMU's hostfwd=).
struct HostFwd {
  bool udp = false;
  std::string host_addr;   // empty: any address
  u16 host_port = 0;
  std::string guest_addr;  // empty: the guest's DHCP address (10.0.2.15)
  u16 guest_port = 0;
};

struct NetdevSpec {
  enum class Kind { user, tap };
  Kind kind = Kind::user;
  std::string id;
  std::vector<HostFwd> hostfwd;  // user
  std::string ifname;            // tap
  std::string mac;               // "52:54:..": the card's address (empty: popek's default)
};

// Parses QEMU-style "user[,id=ID][,hostfwd=tcp:[HOSTADDR]:HOSTPORT-[GUESTADDR]:GUESTPORT]...[,mac=..]"
// or "tap,ifname=NAME[,id=ID][,mac=..]". Throws popek::Error with a message
// that names the bad part.
NetdevSpec parse_netdev(const std::string& spec);
// Parses "aa:bb:cc:dd:ee:ff" into 6 bytes; throws popek::Error.
void parse_mac(const std::string& s, u8 out[6]);

class NetBackend {
 public:
  using Receiver = std::function<void(const u8* frame, usize len)>;
  virtual ~NetBackend() = default;
  virtual std::string describe() const = 0;

  // A frame from the guest.
  virtual void send(const u8* frame, usize len) = 0;
  // Where frames for the guest go.
  void set_receiver(Receiver r) { receiver_ = std::move(r); }
  // Asked before reading more frames from the host, where the backend can
  // wait (TAP): false means the guest has no room now.
  void set_can_receive(std::function<bool()> f) { can_receive_ = std::move(f); }

  // The event loop: descriptors to wait on (and a deadline in ms, lowered if
  // the backend has timers), then dispatch with exactly the entries added.
  virtual void io_fill(std::vector<pollfd>& fds, int* timeout_ms) = 0;
  virtual void io_dispatch(const pollfd* fds, usize n) = 0;

  const Counters& counters() const { return counters_; }

  // ---- suspend/resume and live migration (event-loop thread, guest stopped) ----
  // What a backend carries from one popek to another: `kind` (checked on
  // load), a version of the bytes' format, the bytes (opaque here).
  struct State {
    std::string kind;
    u32 version = 0;
    std::vector<u8> bytes;
    // What the backend's own state does not carry but the destination must
    // know (slirp: the guest's NAT'd TCP connections, which it resets after
    // the restore, and the guest's MAC address to reach it): popek's fields.
    struct Conn {
      u8 guest_addr[4], peer_addr[4];  // network order
      u16 guest_port, peer_port;       // host order
    };
    std::vector<Conn> dropped_tcp;
    std::vector<u8> guest_mac;  // 6 bytes, or empty if the guest never sent a frame
  };
  // Whether the backend's state can be saved; else *why says why not.
  virtual bool can_save(std::string* why) const {
    *why = describe() + ": this network backend cannot be saved or migrated";
    return false;
  }
  virtual State save_state() const { return {}; }
  // Throws popek::Error naming what does not fit.
  virtual void load_state(const State& s) {}
  // Host resources two processes cannot hold at once (slirp's hostfwd
  // listening ports): given up at a migration's switch-over, taken by the
  // destination once the stream is complete. claim throws popek::Error
  // naming the port it cannot bind (nothing stays half-claimed).
  virtual void release_host_ports() {}
  virtual void claim_host_ports() {}
  virtual bool host_ports_held() const { return true; }

 protected:
  void deliver(const u8* frame, usize len) {
    if (receiver_) receiver_(frame, len);
  }
  bool can_receive() const { return !can_receive_ || can_receive_(); }
  Counters counters_;

 private:
  Receiver receiver_;
  std::function<bool()> can_receive_;
};

// Opens the backend a spec describes. Throws popek::Error (e.g. a port that
// cannot be forwarded, a TAP device that cannot be opened). With
// `defer_host_ports` (a migration's destination) hostfwd ports are not bound
// until claim_host_ports().
std::unique_ptr<NetBackend> open_netdev(const NetdevSpec& spec, bool defer_host_ports = false);

// The user-mode network's addresses (as QEMU's defaults).
inline constexpr const char* kSlirpNetwork = "10.0.2.0";
inline constexpr const char* kSlirpHost = "10.0.2.2";
inline constexpr const char* kSlirpDns = "10.0.2.3";
inline constexpr const char* kSlirpGuest = "10.0.2.15";

}  // namespace popek::net
