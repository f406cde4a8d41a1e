// TCP endpoints of a live migration: `tcp:HOST:PORT` (an IPv4 address or
// "localhost"; port 0 picks a free one when listening).
#pragma once
#include <string>

#include "base/types.h"

namespace popek::vmm {

struct TcpAddress {
  std::string host;
  u16 port = 0;
};
// Parses "tcp:HOST:PORT"; throws popek::Error naming what is wrong.
TcpAddress parse_tcp_uri(const std::string& uri, const char* what);
// A listening socket; *bound gets "HOST:PORT" as bound (the port chosen).
int tcp_listen(const TcpAddress& a, std::string* bound);
// Accepts one connection and closes the listener.
int tcp_accept_one(int listen_fd);
// Connects within timeout_ms; throws popek::Error.
int tcp_connect(const TcpAddress& a, int timeout_ms);

}  // namespace popek::vmm
