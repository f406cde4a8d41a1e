// Board-level debug aid: --debug-port PORT[=FILE] records what the guest
// writes to a port (POST codes, a Bochs-style 0xE9 console). The exit port is
// dev::DebugExit (devices/pc/debug_ports.h).
#pragma once
#include <cstdio>
#include <functional>
#include <string>

#include "devices/bus/device.h"

namespace popek::machine {

class DebugPortSink final : public dev::Device {
 public:
  DebugPortSink(std::string name, std::FILE* out, bool own) : name_(std::move(name)), out_(out), own_(own) {}
  ~DebugPortSink() override {
    if (own_ && out_) std::fclose(out_);
    else if (out_) std::fflush(out_);
  }
  const char* name() const override { return name_.c_str(); }
  u64 read(u64, unsigned size) override { return size == 4 ? 0xFFFFFFFFu : (1u << (8 * size)) - 1; }
  void write(u64, unsigned size, u64 v) override {
    for (unsigned k = 0; k < size; k++) std::fputc(int((v >> (8 * k)) & 0xFF), out_);
    std::fflush(out_);
  }

 private:
  std::string name_;
  std::FILE* out_;
  bool own_;
};

}  // namespace popek::machine
