#include "machine/console.h"

#include <fcntl.h>
#include <termios.h>
#include <unistd.h>

#include <cstdio>

namespace popek::machine {

struct Console::Saved {
  termios tio;
  int flags;
};

Console::Console() {
  tty_ = isatty(0);
  saved_ = new Saved;
  saved_->flags = fcntl(0, F_GETFL);
  if (tty_) {
    tcgetattr(0, &saved_->tio);
    termios raw = saved_->tio;
    cfmakeraw(&raw);
    raw.c_oflag |= OPOST | ONLCR;  // keep output translation for the host terminal
    tcsetattr(0, TCSANOW, &raw);
    std::fprintf(stderr, "popek: serial console on this terminal; Ctrl-A X quits, Ctrl-A S shows status\r\n");
  }
  fcntl(0, F_SETFL, saved_->flags | O_NONBLOCK);
}

Console::~Console() {
  if (tty_) tcsetattr(0, TCSANOW, &saved_->tio);
  fcntl(0, F_SETFL, saved_->flags);
  delete saved_;
}

std::string Console::poll_input(bool* quit, bool* status) {
  std::string out;
  if (eof_) return out;
  char buf[256];
  ssize_t n = ::read(0, buf, sizeof buf);
  if (n == 0) {
    eof_ = true;
    return out;
  }
  for (ssize_t k = 0; k < n; k++) {
    char c = buf[k];
    if (!tty_) {
      out.push_back(c);
      continue;
    }
    if (escape_) {
      escape_ = false;
      if (c == 'x' || c == 'X') *quit = true;
      else if (c == 's' || c == 'S' || c == 'c' || c == 'C') *status = true;
      else if (c == 1) out.push_back(c);
      continue;
    }
    if (c == 1) {
      escape_ = true;
      continue;
    }
    out.push_back(c);
  }
  return out;
}

void Console::write(u8 b) {
  // Unbuffered: a prompt or the echo of a typed key must appear at once.
  std::fputc(b, stdout);
  std::fflush(stdout);
}

}  // namespace popek::machine
