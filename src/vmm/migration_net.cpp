#include "vmm/migration_net.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "base/error.h"

namespace popek::vmm {

TcpAddress parse_tcp_uri(const std::string& uri, const char* what) {
  if (uri.rfind("tcp:", 0) != 0) throw Error(std::string(what) + ": expected tcp:HOST:PORT, got '" + uri + "'");
  const std::string rest = uri.substr(4);
  const auto colon = rest.rfind(':');
  if (colon == std::string::npos || colon == 0 || colon + 1 == rest.size())
    throw Error(std::string(what) + ": expected tcp:HOST:PORT, got '" + uri + "'");
  TcpAddress a;
  a.host = rest.substr(0, colon);
  if (a.host == "localhost") a.host = "127.0.0.1";
  char* end = nullptr;
  const unsigned long p = std::strtoul(rest.c_str() + colon + 1, &end, 10);
  if (*end || p > 65535) throw Error(std::string(what) + ": bad port in '" + uri + "'");
  a.port = u16(p);
  in_addr ia{};
  if (inet_pton(AF_INET, a.host.c_str(), &ia) != 1)
    throw Error(std::string(what) + ": '" + a.host + "' is not an IPv4 address (or localhost)");
  return a;
}

namespace {
sockaddr_in to_sa(const TcpAddress& a) {
  sockaddr_in sa{};
  sa.sin_family = AF_INET;
  sa.sin_port = htons(a.port);
  inet_pton(AF_INET, a.host.c_str(), &sa.sin_addr);
  return sa;
}
void tune(int fd) {
  int one = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
}
}  // namespace

int tcp_listen(const TcpAddress& a, std::string* bound) {
  int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) throw Error(std::string("socket: ") + std::strerror(errno));
  int one = 1;
  setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  // A small receive window (inherited by the accepted socket): with the
  // source's small send buffer, the stream's end is never far behind the
  // source's (see tcp_connect).
  int buf = 256 << 10;
  setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &buf, sizeof buf);
  sockaddr_in sa = to_sa(a);
  if (::bind(fd, reinterpret_cast<sockaddr*>(&sa), sizeof sa) != 0 || ::listen(fd, 1) != 0) {
    const int e = errno;
    ::close(fd);
    throw Error("--incoming tcp:" + a.host + ":" + std::to_string(a.port) + ": " + std::strerror(e));
  }
  socklen_t len = sizeof sa;
  getsockname(fd, reinterpret_cast<sockaddr*>(&sa), &len);
  if (bound) *bound = a.host + ":" + std::to_string(ntohs(sa.sin_port));
  return fd;
}

int tcp_accept_one(int listen_fd) {
  int fd;
  do fd = ::accept4(listen_fd, nullptr, nullptr, SOCK_CLOEXEC);
  while (fd < 0 && errno == EINTR);
  const int e = errno;
  ::close(listen_fd);
  if (fd < 0) throw Error(std::string("--incoming: accept: ") + std::strerror(e));
  tune(fd);
  return fd;
}

int tcp_connect(const TcpAddress& a, int timeout_ms) {
  int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  if (fd < 0) throw Error(std::string("socket: ") + std::strerror(errno));
  sockaddr_in sa = to_sa(a);
  const std::string where = "tcp:" + a.host + ":" + std::to_string(a.port);
  int r = ::connect(fd, reinterpret_cast<sockaddr*>(&sa), sizeof sa);
  if (r != 0 && errno == EINPROGRESS) {
    pollfd p{fd, POLLOUT, 0};
    r = ::poll(&p, 1, timeout_ms);
    if (r == 0) {
      ::close(fd);
      throw Error("cannot connect to " + where + ": timed out");
    }
    int err = 0;
    socklen_t l = sizeof err;
    getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &l);
    if (err) {
      ::close(fd);
      throw Error("cannot connect to " + where + ": " + std::strerror(err));
    }
    r = 0;
  }
  if (r != 0) {
    const int e = errno;
    ::close(fd);
    throw Error("cannot connect to " + where + ": " + std::strerror(e));
  }
  fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) & ~O_NONBLOCK);
  tune(fd);
  // Small send buffers: the destination is never more than this behind the
  // source, so the switch-over does not wait for it to catch up (on
  // loopback the kernel would buffer megabytes).
  int buf = 256 << 10;
  setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &buf, sizeof buf);
  return fd;
}

}  // namespace popek::vmm
