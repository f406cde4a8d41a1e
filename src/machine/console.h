// The serial console on the terminal: raw mode on a tty (restored at exit),
// Ctrl-A X to quit, Ctrl-A S for a status line, Ctrl-A Ctrl-A for a literal
// Ctrl-A; with pipes it passes bytes straight through.
#pragma once
#include <functional>
#include <string>

#include "base/types.h"

namespace popek::machine {

class Console {
 public:
  Console();
  ~Console();
  // Reads what is available on stdin (non-blocking); returns guest bytes.
  // Sets quit/status when the escape sequence asks for it.
  std::string poll_input(bool* quit, bool* status);
  void write(u8 b);
  bool eof() const { return eof_; }
  int fd() const { return 0; }

 private:
  bool tty_ = false;
  bool escape_ = false;
  bool eof_ = false;
  struct Saved;
  Saved* saved_ = nullptr;
};

}  // namespace popek::machine
