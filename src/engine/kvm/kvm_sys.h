// Helpers the kvm engine's files share (not an interface of the engine):
// ioctl wrappers, error text, timing, opening /dev/kvm.
#pragma once
#include <linux/kvm.h>
#include <sys/ioctl.h>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <string>

#include "base/types.h"

namespace popek::engine::kvm {

using Clk = std::chrono::steady_clock;

// kvm_msrs with room for eight entries (it ends in a flexible array).
struct MsrBuf {
  alignas(kvm_msrs) u8 bytes[sizeof(kvm_msrs) + 8 * sizeof(kvm_msr_entry)] = {};
  kvm_msrs* hdr() { return reinterpret_cast<kvm_msrs*>(bytes); }
  kvm_msr_entry* e() { return hdr()->entries; }
};

inline u64 ns_since(Clk::time_point t) {
  return u64(std::chrono::duration_cast<std::chrono::nanoseconds>(Clk::now() - t).count());
}

inline std::string errstr(const char* what) { return std::string(what) + ": " + std::strerror(errno); }

inline int xioctl(int fd, unsigned long req, unsigned long arg) {
  int r;
  do r = ::ioctl(fd, req, arg);
  while (r < 0 && errno == EINTR && req != KVM_RUN);
  return r;
}
template <typename T>
int xioctl(int fd, unsigned long req, T* arg) {
  return xioctl(fd, req, reinterpret_cast<unsigned long>(arg));
}

// Opens /dev/kvm and checks the API version and the capabilities the engine
// relies on; -1 and *why if unusable. POPEK_KVM_DEVICE names another device
// node (tests use a missing one to see the engine and its tests say why
// they cannot run).
int open_kvm(std::string* why);

}  // namespace popek::engine::kvm
