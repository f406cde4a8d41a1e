// The control socket: a server for the QEMU Machine Protocol (QMP) framing,
// independent of what the commands do. Clients connect to a unix or TCP
// socket, get a greeting, negotiate capabilities with `qmp_capabilities`,
// then send {"execute": NAME, "arguments": {...}, "id": ANY} and get
// {"return": ...} or {"error": {"class": ..., "desc": ...}} (with the id
// echoed); events {"event": NAME, "data": {...}, "timestamp": {...}} go to
// every client past negotiation.
//
// One thread serves every listener and client (poll). Commands run one at a
// time on that thread; a handler may block (the machine's commands wait for
// the vCPU thread's next safe point). Robustness: input is split into JSON
// texts by bracket and string structure (as QEMU's streamer does, so a text
// may span lines or share one); a text that does not parse, or is not a
// command, gets a GenericError and the connection goes on; more than
// kMaxMessage bytes without a complete text, or a client that does not read
// its answers, closes the connection; a client that vanishes is dropped.
#pragma once
#include <nlohmann/json.hpp>

#include <atomic>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "base/types.h"

namespace popek::vmm {

using json = nlohmann::json;

// A command's failure: a QMP error class (GenericError, CommandNotFound, ...)
// and a description for people.
class QmpError : public std::runtime_error {
 public:
  QmpError(std::string cls, const std::string& desc) : std::runtime_error(desc), cls_(std::move(cls)) {}
  const std::string& cls() const { return cls_; }

 private:
  std::string cls_;
};

enum class ArgType { boolean, integer, number, string, object, array, any };

struct Param {
  std::string name;
  ArgType type = ArgType::any;
  bool required = false;
};

// A command: its arguments are checked against `params` (unknown names,
// missing required ones and wrong types are GenericErrors naming the
// argument) before `handler` runs; the handler returns the "return" value or
// throws QmpError. `listed`: shown by query-commands (false for commands that
// are placeholders until their feature exists).
struct Command {
  std::string name;
  std::vector<Param> params;
  std::function<json(const json& args)> handler;
  bool listed = true;
  bool check_args = true;  // false: any arguments reach the handler
};

// Where a control socket listens: --qmp unix:PATH[,server][,wait=off] or
// tcp:HOST:PORT[,server][,wait=off]. Throws popek::Error naming what is wrong.
struct Endpoint {
  enum class Kind { unix_socket, tcp } kind = Kind::unix_socket;
  std::string path;  // unix
  std::string host;  // tcp: an IPv4 address or "localhost"
  u16 port = 0;      // tcp: 0 picks a free port
  std::string spec;  // as given
};
Endpoint parse_endpoint(const std::string& spec);

class QmpServer {
 public:
  // Bytes a client may send without completing a JSON text; then its
  // connection is closed (after an error answer).
  static constexpr usize kMaxMessage = 1 << 20;
  static constexpr unsigned kMaxDepth = 1024;   // JSON nesting
  static constexpr usize kMaxClients = 16;      // at once; more are refused
  static constexpr usize kMaxOutput = 8 << 20;  // unread answers and events

  // `version`: the greeting's and query-version's {"qemu": {...}, "package": ...}.
  explicit QmpServer(json version);
  ~QmpServer();
  QmpServer(const QmpServer&) = delete;
  QmpServer& operator=(const QmpServer&) = delete;

  // Before start(). listen() throws popek::Error: a unix socket path held by
  // a live listener, a file there that is not a socket, a TCP port in use.
  // A socket file left by a dead process is replaced. The file is mode 0600.
  void listen(const Endpoint& ep);
  void add_command(Command c);
  void start();

  // Where the listeners are, e.g. "unix:/tmp/popek.qmp", "tcp:127.0.0.1:4444"
  // (with the port chosen for port 0).
  std::vector<std::string> addresses() const;

  // Thread-safe: queued for every negotiated client (data: null for none).
  void emit(const std::string& event, const json& data = nullptr);

  // Sends what is queued (up to about a second), closes every connection and
  // listener, removes the socket files, joins the thread. Idempotent.
  void stop();

 private:
  struct Listener;
  struct Client;
  void serve();
  void accept_clients(Listener& l);
  void read_client(Client& c);
  void handle_text(Client& c, const std::string& text);
  json execute(Client& c, const std::string& name, const json& args);
  void send(Client& c, const json& msg);
  void flush(Client& c);
  void take_events();
  void close_listeners();

  json version_;
  std::map<std::string, Command> commands_;
  std::vector<std::unique_ptr<Listener>> listeners_;
  std::vector<std::unique_ptr<Client>> clients_;  // serve() thread only
  std::thread thread_;
  int wake_fd_ = -1;
  std::atomic<bool> stopping_{false};
  std::mutex events_mu_;
  std::deque<std::string> events_;  // serialised, guarded by events_mu_
};

}  // namespace popek::vmm
