// What the semantics' unit tests (x87_test, mmx_test) run instructions on: a
// flat guest memory with one page that faults, and a platform with no devices
// that counts FERR# reports. Test-only.
#pragma once
#include <sys/mman.h>

#include <cstring>
#include <vector>

#include "x86/cpu.h"

namespace popek::x86::test {

// kSize bytes of guest memory straight from mmap (zero pages on demand, so the
// thousands of machines the tests create stay cheap, also under ASan, whose
// allocator would clear a fresh heap block each time); accesses to the page at
// kBadPage, or past the end, raise #PF.
template <u32 kSize, u32 kBadPage>
class FlatMem : public LinearMem {
 public:
  struct Pages {
    u8* p = static_cast<u8*>(mmap(nullptr, kSize, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0));
    Pages() = default;
    Pages(const Pages&) = delete;
    Pages& operator=(const Pages&) = delete;
    ~Pages() { munmap(p, kSize); }
    u8& operator[](usize i) { return p[i]; }
    const u8& operator[](usize i) const { return p[i]; }
    // A copy of the whole memory (to check that a faulting instruction wrote nothing).
    std::vector<u8> copy() const { return std::vector<u8>(p, p + kSize); }
  } b;
  void check(u32 la, unsigned n) {
    for (u32 a = la; a < la + n; ++a)
      if ((a & ~0xFFFu) == kBadPage || a >= kSize) raise_fault(PF_V, 0);
  }
  u32 read(u32 la, unsigned size, bool) override {
    check(la, size);
    u32 v = 0;
    std::memcpy(&v, &b[la], size);
    return v;
  }
  void write(u32 la, unsigned size, u32 value, bool) override {
    check(la, size);
    std::memcpy(&b[la], &value, size);
  }
  u64 read64(u32 la, bool) override {
    check(la, 8);
    u64 v;
    std::memcpy(&v, &b[la], 8);
    return v;
  }
  void write64(u32 la, u64 value, bool) override {
    check(la, 8);
    std::memcpy(&b[la], &value, 8);
  }
  void probe_write(u32 la, unsigned size, bool) override { check(la, size); }
  void flush_tlb(bool) override {}
  void invlpg(u32) override {}
};

class FakePlatform : public Platform {
 public:
  int fpu_errors = 0;
  u32 io_in(u16, unsigned) override { return 0; }
  void io_out(u16, unsigned, u32) override {}
  u64 tsc() override { return 0; }
  u8 intr_ack() override { return 0; }
  void fpu_error() override { ++fpu_errors; }
};

}  // namespace popek::x86::test
