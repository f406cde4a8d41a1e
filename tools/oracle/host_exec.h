// Executes one oracle vector's instruction on the host CPU (64-bit mode).
#pragma once

#include <cstdint>
#include <string>

#include "vector_format.h"

namespace popek::oracle::host {

// Base of the data area (mapped at a fixed address below 4 GiB) that memory
// windows live in, and its size.
inline constexpr uint32_t kDataBase = 0x00200000;
inline constexpr uint32_t kDataSize = 0x10000;

// Maps the code page and the data area and installs signal handlers. Returns
// false (with a message) if the fixed data mapping is unavailable. Idempotent.
bool init(std::string* err = nullptr);

// Outcome of running the instruction: 0 = completed, otherwise the signal.
struct RunResult {
  int signo = 0;
  int si_code = 0;
};

// Runs v.code with v.in, v.mem_in (at v.mem_addr, if has_mem) and v.fpu_in (if
// has_fpu), and fills v.out, v.mem_out, v.fpu_out and v.fault. A #DE (SIGFPE
// FPE_INTDIV/FPE_INTOVF) sets fault=DE, an x87 #MF (other SIGFPE codes) sets
// fault=MF; in both cases the outputs are set equal to the inputs. Any other
// signal is returned (a generator bug); the outputs are then unspecified.
// guard: byte value filled around the window (writes there are reported as
// signo -3; a different guard in a re-run exposes reads outside the window).
RunResult execute(Vector& v, uint8_t guard = 0xA5);

// Full x87 tag (0 valid, 1 zero, 2 special) of a non-empty register value.
unsigned tag_of(const Float80& f);

// "AuthenticAMD family 0x19 model 0x1 stepping 0x1 brand=..." from CPUID.
std::string host_description();

}  // namespace popek::oracle::host
