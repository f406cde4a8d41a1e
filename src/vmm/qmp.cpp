#include "vmm/qmp.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstring>

#include "base/error.h"

namespace popek::vmm {

namespace {

std::string errno_text() { return std::strerror(errno); }

u64 mono_ms() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return u64(ts.tv_sec) * 1000 + u64(ts.tv_nsec) / 1000000;
}

std::string dump(const json& j) {
  // Invalid UTF-8 can only come from parser messages quoting the input.
  return j.dump(-1, ' ', false, json::error_handler_t::replace);
}

json error_reply(const std::string& cls, const std::string& desc) {
  return json{{"error", json{{"class", cls}, {"desc", desc}}}};
}

const char* type_name(ArgType t) {
  switch (t) {
    case ArgType::boolean: return "boolean";
    case ArgType::integer: return "integer";
    case ArgType::number: return "number";
    case ArgType::string: return "string";
    case ArgType::object: return "object";
    case ArgType::array: return "array";
    case ArgType::any: return "any";
  }
  return "?";
}

bool has_type(const json& v, ArgType t) {
  switch (t) {
    case ArgType::boolean: return v.is_boolean();
    case ArgType::integer: return v.is_number_integer();
    case ArgType::number: return v.is_number();
    case ArgType::string: return v.is_string();
    case ArgType::object: return v.is_object();
    case ArgType::array: return v.is_array();
    case ArgType::any: return true;
  }
  return false;
}

// Splits a byte stream into top-level JSON texts by structure alone: brackets
// and strings are followed, anything else between texts is a bare token
// (ended by white space or a bracket). What the texts mean is the parser's
// business; this only finds where they end, so one bad text costs one error.
class Splitter {
 public:
  enum class Kind { text, error, overflow };
  struct Item {
    Kind kind;
    std::string s;  // the text, or the error's description
  };

  void feed(const char* p, usize n, std::vector<Item>& out) {
    for (usize k = 0; k < n && !overflow_; k++) put(p[k], out);
  }

 private:
  static bool space(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r'; }
  static bool structural(char c) { return c == '{' || c == '}' || c == '[' || c == ']' || c == '"'; }

  void reset() {
    buf_.clear();
    depth_ = 0;
    in_str_ = esc_ = token_ = skipping_ = false;
    bytes_ = 0;
  }
  void emit_text(std::vector<Item>& out) {
    if (!skipping_) out.push_back({Kind::text, std::move(buf_)});
    reset();
  }
  void keep(char c) {
    if (!skipping_) buf_.push_back(c);
  }

  void put(char c, std::vector<Item>& out) {
    if (token_) {
      if (!space(c) && !structural(c)) {
        keep(c);
        count(out);
        return;
      }
      emit_text(out);  // the token ends here; c starts what follows
    }
    if (in_str_) {
      keep(c);
      if (esc_) {
        esc_ = false;
      } else if (c == '\\') {
        esc_ = true;
      } else if (c == '"') {
        in_str_ = false;
        if (depth_ == 0) return emit_text(out);
      } else if (u8(c) < 0x20) {
        char msg[96];
        std::snprintf(msg, sizeof msg, "JSON parse error, control character 0x%02x in a string", u8(c));
        if (!skipping_) out.push_back({Kind::error, msg});
        reset();
        return;
      }
      count(out);
      return;
    }
    if (depth_ == 0) {
      if (space(c)) return;
      if (c == '}' || c == ']') {
        out.push_back({Kind::error, std::string("JSON parse error, unexpected '") + c + "'"});
        return;
      }
      keep(c);
      if (c == '{' || c == '[') depth_ = 1;
      else if (c == '"') in_str_ = true;
      else token_ = true;
      count(out);
      return;
    }
    keep(c);
    if (c == '"') {
      in_str_ = true;
    } else if (c == '{' || c == '[') {
      if (++depth_ > QmpServer::kMaxDepth && !skipping_) {
        out.push_back({Kind::error, "JSON parse error, nesting deeper than " +
                                        std::to_string(QmpServer::kMaxDepth) + " levels"});
        skipping_ = true;  // the rest of this text is dropped
        buf_.clear();
      }
    } else if (c == '}' || c == ']') {
      if (--depth_ == 0) return emit_text(out);
    }
    count(out);
  }

  void count(std::vector<Item>& out) {
    if (++bytes_ > QmpServer::kMaxMessage) {
      out.push_back({Kind::overflow, "QMP input of more than " + std::to_string(QmpServer::kMaxMessage) +
                                         " bytes without a complete JSON value; closing the connection"});
      overflow_ = true;
      buf_.clear();
    }
  }

  std::string buf_;
  unsigned depth_ = 0;
  bool in_str_ = false, esc_ = false, token_ = false, skipping_ = false, overflow_ = false;
  usize bytes_ = 0;  // of the text in progress
};

}  // namespace

// --- endpoints -------------------------------------------------------------

Endpoint parse_endpoint(const std::string& spec) {
  const std::string usage =
      " (expected unix:PATH[,server][,wait=off] or tcp:HOST:PORT[,server][,wait=off], e.g. "
      "unix:/tmp/popek.qmp or tcp:127.0.0.1:4444)";
  Endpoint ep;
  ep.spec = spec;
  std::vector<std::string> parts;
  usize start = 0;
  for (;;) {
    usize comma = spec.find(',', start);
    parts.push_back(spec.substr(start, comma - start));
    if (comma == std::string::npos) break;
    start = comma + 1;
  }
  for (usize k = 1; k < parts.size(); k++) {
    const std::string& o = parts[k];
    if (o == "server" || o == "server=on" || o == "wait=off" || o == "nowait") continue;
    if (o == "wait=on" || o == "wait")
      throw Error("--qmp '" + spec + "': wait=on (waiting for a client before the guest starts) is not supported");
    if (o == "server=off")
      throw Error("--qmp '" + spec + "': popek only listens (server); it does not connect to a client");
    throw Error("--qmp '" + spec + "': unknown option '" + o + "'" + usage);
  }
  const std::string& addr = parts[0];
  if (addr.rfind("unix:", 0) == 0) {
    ep.kind = Endpoint::Kind::unix_socket;
    ep.path = addr.substr(5);
    if (ep.path.empty()) throw Error("--qmp '" + spec + "': empty socket path" + usage);
    if (ep.path.size() >= sizeof(sockaddr_un{}.sun_path))
      throw Error("--qmp '" + spec + "': socket path longer than " +
                  std::to_string(sizeof(sockaddr_un{}.sun_path) - 1) + " bytes");
    return ep;
  }
  if (addr.rfind("tcp:", 0) == 0) {
    ep.kind = Endpoint::Kind::tcp;
    std::string rest = addr.substr(4);
    usize colon = rest.rfind(':');
    if (colon == std::string::npos) throw Error("--qmp '" + spec + "': no port" + usage);
    ep.host = rest.substr(0, colon);
    std::string port = rest.substr(colon + 1);
    if (ep.host.empty()) throw Error("--qmp '" + spec + "': no host (use 127.0.0.1)" + usage);
    in_addr a;
    if (ep.host != "localhost" && inet_pton(AF_INET, ep.host.c_str(), &a) != 1)
      throw Error("--qmp '" + spec + "': host '" + ep.host + "' is not an IPv4 address or localhost");
    char* end = nullptr;
    unsigned long p = std::strtoul(port.c_str(), &end, 10);
    if (port.empty() || *end || p > 65535)
      throw Error("--qmp '" + spec + "': bad port '" + port + "' (0-65535; 0 picks a free one)");
    ep.port = u16(p);
    return ep;
  }
  throw Error("--qmp '" + spec + "': unknown address" + usage);
}

// --- the server --------------------------------------------------------------

struct QmpServer::Listener {
  int fd = -1;
  Endpoint ep;
  std::string address;
  dev_t dev = 0;  // the socket file this process made (removed only if still it)
  ino_t ino = 0;
};

struct QmpServer::Client {
  int fd = -1;
  Splitter split;
  std::string out;
  bool negotiated = false;
  bool closing = false;   // answered the last thing it will get; then half-closed
  bool shut = false;      // SHUT_WR done
  bool eof = false;       // it sent all it will: answers and events still go out for a while
  u64 close_deadline = 0; // for closing and eof
  bool dead = false;
};

QmpServer::QmpServer(json version) : version_(std::move(version)) {
  wake_fd_ = ::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  if (wake_fd_ < 0) throw Error("QMP: eventfd: " + errno_text());
  Command caps{"qmp_capabilities", {{"enable", ArgType::array}}, nullptr};
  commands_[caps.name] = caps;  // served by execute(): it changes the client's mode
  add_command({"query-commands", {}, [this](const json&) {
                 json list = json::array();
                 for (auto& [name, c] : commands_)
                   if (c.listed) list.push_back(json{{"name", name}});
                 return list;
               }});
  add_command({"query-version", {}, [this](const json&) { return version_; }});
}

QmpServer::~QmpServer() {
  stop();
  close_listeners();
  if (wake_fd_ >= 0) ::close(wake_fd_);
}

void QmpServer::add_command(Command c) { commands_[c.name] = std::move(c); }

void QmpServer::listen(const Endpoint& ep) {
  auto l = std::make_unique<Listener>();
  l->ep = ep;
  if (ep.kind == Endpoint::Kind::unix_socket) {
    sockaddr_un sa{};
    sa.sun_family = AF_UNIX;
    std::memcpy(sa.sun_path, ep.path.data(), ep.path.size());
    struct stat st;
    if (::lstat(ep.path.c_str(), &st) == 0) {
      if (!S_ISSOCK(st.st_mode))
        throw Error("--qmp '" + ep.spec + "': '" + ep.path + "' exists and is not a socket");
      // A live listener answers; a socket left by a dead process refuses.
      int probe = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
      if (probe < 0) throw Error("--qmp '" + ep.spec + "': socket: " + errno_text());
      int r = ::connect(probe, reinterpret_cast<sockaddr*>(&sa), sizeof sa);
      int err = errno;
      ::close(probe);
      if (r == 0) throw Error("--qmp '" + ep.spec + "': another process is listening on '" + ep.path + "'");
      if (err != ECONNREFUSED)
        throw Error("--qmp '" + ep.spec + "': cannot check '" + ep.path + "': " + std::strerror(err));
      if (::unlink(ep.path.c_str()) != 0 && errno != ENOENT)
        throw Error("--qmp '" + ep.spec + "': cannot remove the stale socket '" + ep.path + "': " + errno_text());
    }
    l->fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (l->fd < 0) throw Error("--qmp '" + ep.spec + "': socket: " + errno_text());
    // The file is made by bind(): with umask 0177 it is 0600 from the start
    // (the process has no other threads yet); chmod makes sure.
    mode_t old = ::umask(0177);
    int r = ::bind(l->fd, reinterpret_cast<sockaddr*>(&sa), sizeof sa);
    int err = errno;
    ::umask(old);
    if (r != 0) {
      ::close(l->fd);
      throw Error("--qmp '" + ep.spec + "': bind '" + ep.path + "': " + std::strerror(err));
    }
    if (::chmod(ep.path.c_str(), 0600) != 0 || ::lstat(ep.path.c_str(), &st) != 0) {
      err = errno;
      ::close(l->fd);
      ::unlink(ep.path.c_str());
      throw Error("--qmp '" + ep.spec + "': chmod '" + ep.path + "': " + std::strerror(err));
    }
    l->dev = st.st_dev;
    l->ino = st.st_ino;
    l->address = "unix:" + ep.path;
  } else {
    sockaddr_in sa{};
    sa.sin_family = AF_INET;
    sa.sin_port = htons(ep.port);
    inet_pton(AF_INET, ep.host == "localhost" ? "127.0.0.1" : ep.host.c_str(), &sa.sin_addr);
    l->fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (l->fd < 0) throw Error("--qmp '" + ep.spec + "': socket: " + errno_text());
    int one = 1;
    ::setsockopt(l->fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (::bind(l->fd, reinterpret_cast<sockaddr*>(&sa), sizeof sa) != 0) {
      int err = errno;
      ::close(l->fd);
      throw Error("--qmp '" + ep.spec + "': bind: " + std::strerror(err));
    }
    socklen_t len = sizeof sa;
    ::getsockname(l->fd, reinterpret_cast<sockaddr*>(&sa), &len);
    char host[INET_ADDRSTRLEN] = "?";
    inet_ntop(AF_INET, &sa.sin_addr, host, sizeof host);
    l->address = std::string("tcp:") + host + ":" + std::to_string(ntohs(sa.sin_port));
  }
  if (::listen(l->fd, 8) != 0) {
    int err = errno;
    ::close(l->fd);
    if (l->ep.kind == Endpoint::Kind::unix_socket) ::unlink(ep.path.c_str());
    throw Error("--qmp '" + ep.spec + "': listen: " + std::strerror(err));
  }
  listeners_.push_back(std::move(l));
}

std::vector<std::string> QmpServer::addresses() const {
  std::vector<std::string> out;
  for (auto& l : listeners_) out.push_back(l->address);
  return out;
}

void QmpServer::start() {
  thread_ = std::thread([this] {
    // Signals (SIGINT, SIGTERM) are the vCPU thread's business.
    sigset_t all;
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, nullptr);
    serve();
  });
}

void QmpServer::emit(const std::string& event, const json& data) {
  timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  json msg{{"event", event},
           {"timestamp", json{{"seconds", i64(ts.tv_sec)}, {"microseconds", i64(ts.tv_nsec / 1000)}}}};
  if (!data.is_null()) msg["data"] = data;
  {
    std::lock_guard<std::mutex> lk(events_mu_);
    events_.push_back(dump(msg) + "\r\n");
  }
  const u64 one = 1;
  (void)!::write(wake_fd_, &one, sizeof one);
}

void QmpServer::stop() {
  if (!thread_.joinable()) return;
  stopping_.store(true);
  const u64 one = 1;
  (void)!::write(wake_fd_, &one, sizeof one);
  thread_.join();
}

void QmpServer::close_listeners() {
  for (auto& l : listeners_) {
    if (l->fd >= 0) ::close(l->fd);
    l->fd = -1;
    if (l->ep.kind == Endpoint::Kind::unix_socket && l->ino) {
      struct stat st;
      if (::lstat(l->ep.path.c_str(), &st) == 0 && st.st_dev == l->dev && st.st_ino == l->ino)
        ::unlink(l->ep.path.c_str());
      l->ino = 0;
    }
  }
}

void QmpServer::take_events() {
  std::deque<std::string> ev;
  {
    std::lock_guard<std::mutex> lk(events_mu_);
    ev.swap(events_);
  }
  for (auto& c : clients_)
    if (c->negotiated && !c->closing && !c->dead)
      for (auto& e : ev) c->out += e;
}

void QmpServer::send(Client& c, const json& msg) {
  if (c.dead || c.shut) return;
  c.out += dump(msg);
  c.out += "\r\n";
}

void QmpServer::flush(Client& c) {
  while (!c.dead && !c.out.empty()) {
    ssize_t n = ::send(c.fd, c.out.data(), c.out.size(), MSG_NOSIGNAL | MSG_DONTWAIT);
    if (n > 0) {
      c.out.erase(0, usize(n));
    } else if (n < 0 && errno == EINTR) {
      continue;
    } else if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
      break;
    } else {
      c.dead = true;  // gone: dropped quietly
    }
  }
  if (c.out.size() > kMaxOutput) c.dead = true;  // does not read what it asked for
  if (!c.dead && c.closing && !c.shut && c.out.empty()) {
    ::shutdown(c.fd, SHUT_WR);  // then read and drop until it closes too (or the deadline)
    c.shut = true;
  }
}

void QmpServer::accept_clients(Listener& l) {
  for (;;) {
    int fd = ::accept4(l.fd, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd < 0) return;  // EAGAIN, or a connection that went away already
    if (clients_.size() >= kMaxClients) {
      static const char busy[] =
          "{\"error\": {\"class\": \"GenericError\", \"desc\": \"too many QMP clients\"}}\r\n";
      (void)!::send(fd, busy, sizeof busy - 1, MSG_NOSIGNAL | MSG_DONTWAIT);
      ::close(fd);
      continue;
    }
    auto c = std::make_unique<Client>();
    c->fd = fd;
    send(*c, json{{"QMP", json{{"version", version_}, {"capabilities", json::array()}}}});
    flush(*c);
    clients_.push_back(std::move(c));
  }
}

void QmpServer::read_client(Client& c) {
  char buf[65536];
  for (int rounds = 0; rounds < 16 && !c.dead; rounds++) {
    ssize_t n = ::recv(c.fd, buf, sizeof buf, MSG_DONTWAIT);
    if (n == 0 && !c.closing) {
      // It will send no more (`printf ... | socat`), perhaps mid-message (that
      // text is dropped): what it asked for and the events of the next second
      // (the SHUTDOWN after a quit) still go out, then the connection closes.
      c.eof = true;
      c.close_deadline = mono_ms() + 1000;
      return;
    }
    if (n == 0 || (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)) {
      c.dead = true;  // the client left: dropped quietly
      return;
    }
    if (n < 0) return;
    if (c.closing) continue;  // draining after the last answer
    std::vector<Splitter::Item> items;
    c.split.feed(buf, usize(n), items);
    for (auto& it : items) {
      if (c.closing) break;
      switch (it.kind) {
        case Splitter::Kind::text: handle_text(c, it.s); break;
        case Splitter::Kind::error: send(c, error_reply("GenericError", it.s)); break;
        case Splitter::Kind::overflow:
          send(c, error_reply("GenericError", it.s));
          c.closing = true;
          c.close_deadline = mono_ms() + 1000;
          break;
      }
      flush(c);
    }
    if (usize(n) < sizeof buf) return;
  }
}

void QmpServer::handle_text(Client& c, const std::string& text) {
  json req;
  try {
    req = json::parse(text);
  } catch (const json::exception& e) {
    std::string what = e.what();
    // "[json.exception.parse_error.101] parse error at ...": keep what follows the tag.
    if (auto k = what.find("] "); what.rfind("[json.exception", 0) == 0 && k != std::string::npos)
      what = what.substr(k + 2);
    send(c, error_reply("GenericError", "JSON parse error, " + what));
    return;
  }
  if (!req.is_object()) {
    send(c, error_reply("GenericError", "QMP input must be a JSON object"));
    return;
  }
  json reply;
  try {
    std::string name;
    bool has_execute = false;
    json args = json::object();
    for (auto& [key, value] : req.items()) {
      if (key == "execute") {
        if (!value.is_string()) throw QmpError("GenericError", "QMP input member 'execute' must be a string");
        name = value.get<std::string>();
        has_execute = true;
      } else if (key == "arguments") {
        if (!value.is_object()) throw QmpError("GenericError", "QMP input member 'arguments' must be an object");
        args = value;
      } else if (key == "id") {
      } else if (key == "exec-oob") {
        throw QmpError("GenericError", "QMP input member 'exec-oob' is not supported (no out-of-band capability)");
      } else {
        throw QmpError("GenericError", "QMP input member '" + key + "' is unexpected");
      }
    }
    if (!has_execute) throw QmpError("GenericError", "QMP input lacks member 'execute'");
    reply = json{{"return", execute(c, name, args)}};
  } catch (const QmpError& e) {
    reply = error_reply(e.cls(), e.what());
  } catch (const std::exception& e) {
    reply = error_reply("GenericError", e.what());
  }
  if (auto id = req.find("id"); id != req.end()) reply["id"] = *id;
  take_events();  // events the command caused go first, as in QEMU
  send(c, reply);
}

json QmpServer::execute(Client& c, const std::string& name, const json& args) {
  auto it = commands_.find(name);
  if (!c.negotiated && name != "qmp_capabilities") {
    if (it == commands_.end()) throw QmpError("CommandNotFound", "The command " + name + " has not been found");
    throw QmpError("CommandNotFound",
                   "Expecting capabilities negotiation with 'qmp_capabilities' before command '" + name + "'");
  }
  if (c.negotiated && name == "qmp_capabilities")
    throw QmpError("CommandNotFound", "Capabilities negotiation is already complete, command ignored");
  if (it == commands_.end()) throw QmpError("CommandNotFound", "The command " + name + " has not been found");
  const Command& cmd = it->second;
  for (auto& [key, value] : args.items()) {
    if (!cmd.check_args) break;
    const Param* p = nullptr;
    for (auto& q : cmd.params)
      if (q.name == key) p = &q;
    if (!p) throw QmpError("GenericError", "Parameter '" + key + "' is unexpected");
    if (!has_type(value, p->type))
      throw QmpError("GenericError",
                     "Invalid parameter type for '" + key + "', expected: " + type_name(p->type));
  }
  for (auto& q : cmd.params)
    if (q.required && !args.contains(q.name)) throw QmpError("GenericError", "Parameter '" + q.name + "' is missing");
  if (name == "qmp_capabilities") {
    if (auto e = args.find("enable"); e != args.end()) {
      for (auto& cap : *e) {
        if (!cap.is_string())
          throw QmpError("GenericError", "Invalid parameter type for 'enable', expected: array of strings");
        throw QmpError("GenericError", "Capability '" + cap.get<std::string>() + "' not available");
      }
    }
    c.negotiated = true;
    return json::object();
  }
  return cmd.handler(args);
}

void QmpServer::serve() {
  std::vector<pollfd> fds;
  for (;;) {
    const bool stopping = stopping_.load();
    take_events();
    for (auto& c : clients_) flush(*c);
    const u64 now = mono_ms();
    std::erase_if(clients_, [&](const std::unique_ptr<Client>& c) {
      if (c->dead || ((c->closing || c->eof) && now >= c->close_deadline)) {
        ::close(c->fd);
        return true;
      }
      return false;
    });
    if (stopping) {
      // Answers and events already queued (the SHUTDOWN event) go out first.
      const u64 deadline = mono_ms() + 1000;
      for (;;) {
        fds.clear();
        for (auto& c : clients_)
          if (!c->dead && !c->out.empty()) fds.push_back({c->fd, POLLOUT, 0});
        if (fds.empty() || mono_ms() >= deadline) break;
        ::poll(fds.data(), fds.size(), 100);
        for (auto& c : clients_) flush(*c);
      }
      for (auto& c : clients_) ::close(c->fd);
      clients_.clear();
      close_listeners();
      return;
    }
    fds.clear();
    fds.push_back({wake_fd_, POLLIN, 0});
    for (auto& l : listeners_) fds.push_back({l->fd, POLLIN, 0});
    bool closing = false;
    for (auto& c : clients_) {
      short ev = c->eof ? 0 : POLLIN;
      if (!c->out.empty()) ev |= POLLOUT;
      fds.push_back({c->fd, ev, 0});
      closing |= c->closing || c->eof;
    }
    int r = ::poll(fds.data(), fds.size(), closing ? 100 : -1);
    if (r < 0) continue;
    if (fds[0].revents & POLLIN) {
      u64 v;
      (void)!::read(wake_fd_, &v, sizeof v);
    }
    usize k = 1;
    for (auto& l : listeners_)
      if (fds[k++].revents & POLLIN) accept_clients(*l);
    // Clients accepted just now are past the end of fds: served next round.
    const usize n = clients_.size();
    for (usize i = 0; i < n && k + i < fds.size(); i++) {
      Client& c = *clients_[i];
      const short re = fds[k + i].revents;
      if (c.eof) {
        if (re & (POLLHUP | POLLERR)) c.dead = true;  // gone both ways
      } else if (re & (POLLIN | POLLHUP | POLLERR)) {
        read_client(c);
      }
      if (re & POLLOUT) flush(c);
    }
  }
}

}  // namespace popek::vmm
