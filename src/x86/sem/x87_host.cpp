// Host x87 execution (see x87_host.h). One tiny function per x87 encoding the
// guest can execute natively: the 8 x 64 register forms and the 8 x 8 memory
// forms with the operand at [rax].
#include "x86/sem/x87_host.h"

#include <array>
#include <utility>

#if !defined(__x86_64__)
#error "x87 semantics run the host x87 unit: x86-64 host required"
#endif

namespace popek::x86::x87host {
namespace {

// The asm keeps everything behind pointers held in registers: it moves RSP
// (PUSHF/POPF, below the red zone) and so must not use RSP-relative operands.
template <u8 B0, u8 B1>
void run(Ctx* ctx) {
  u16 host_cw;
  u16* hcw = &host_cw;
  asm volatile(
      "fnstcw (%[hcw])\n\t"
      "frstor (%[img])\n\t"
      "leaq -128(%%rsp), %%rsp\n\t"
      "pushfq\n\t"
      "andq $-0x8D6, (%%rsp)\n\t"  // -0x8D6 == ~(CF|PF|AF|ZF|SF|OF)
      "movq (%[fin]), %%r11\n\t"
      "orq %%r11, (%%rsp)\n\t"
      "popfq\n\t"
      ".byte %c[b0], %c[b1]\n\t"
      "pushfq\n\t"
      "popq (%[fout])\n\t"
      "leaq 128(%%rsp), %%rsp\n\t"
      "fnsave (%[img])\n\t"
      "fldcw (%[hcw])\n\t"
      :
      : [img] "r"(&ctx->img), [fin] "r"(&ctx->flags_in), [fout] "r"(&ctx->flags_out),
        [hcw] "r"(hcw), "a"(ctx->mem), [b0] "i"(B0), [b1] "i"(B1)
      : "memory", "cc", "r11", "st", "st(1)", "st(2)", "st(3)", "st(4)", "st(5)", "st(6)",
        "st(7)");
}

using Fn = void (*)(Ctx*);
constexpr unsigned kRegForms = 8 * 64, kMemForms = 8 * 8;

template <unsigned I>
constexpr Fn entry() {
  if constexpr (I < kRegForms) return &run<u8(0xD8 + I / 64), u8(0xC0 + I % 64)>;
  else return &run<u8(0xD8 + (I - kRegForms) / 8), u8(((I - kRegForms) % 8) << 3)>;
}
template <unsigned... I>
constexpr std::array<Fn, sizeof...(I)> make(std::integer_sequence<unsigned, I...>) {
  return {entry<I>()...};
}
constexpr auto kTable = make(std::make_integer_sequence<unsigned, kRegForms + kMemForms>{});

}  // namespace

void exec(Ctx& ctx, u8 b0, u8 b1) {
  const unsigned op = b0 & 7;
  const unsigned idx = (b1 >= 0xC0) ? op * 64 + (b1 & 63) : kRegForms + op * 8 + ((b1 >> 3) & 7);
  kTable[idx](&ctx);
}

}  // namespace popek::x86::x87host
