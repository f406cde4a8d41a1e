// Differential fuzzing of bt against interp: random instruction sequences
// (ALU, shifts, multiply/divide, bit operations, moves, stack, string
// instructions with REP, conditional jumps, call/ret, 16-bit operands, FS
// overrides with a non-zero base, memory operands that cross pages, hit a
// not-present or read-only page, and stores into the code being run) run on
// bt in lockstep with the interpreter, which stops at the first difference in
// registers, flags or memory. Each sequence starts from random registers and
// flags and ends at HLT or at the first exception (every vector's handler
// records it and halts), for odd seeds after a second pass through the
// sequence on the state the first left (translated code then runs again). One sequence in five runs with paging off (bt then
// addresses RAM directly: stores into the code and accesses past RAM fault
// into its slow paths; ES ends at 4 MiB there so that REPs end).
//
// By default a fixed number of sequences from seed 1 (POPEK_FUZZ_SEQUENCES,
// default 12000) so that CI is repeatable; POPEK_FUZZ_SECONDS runs for a time
// instead, POPEK_FUZZ_SEED picks the first seed, POPEK_FUZZ_KIND one variant
// (0 bt, 1 one-instruction blocks, 2 no chaining), POPEK_FUZZ_TRACE_SEED
// traces one sequence, POPEK_FUZZ_DEBUG prints each sequence's instruction count.
#include <gtest/gtest.h>

#include <chrono>
#include <cstdio>
#include <cstring>
#include <cstdlib>
#include <random>

#include "base/error.h"
#include "test_vm.h"

using namespace popek;
using namespace popek::x86;

namespace {

constexpr u32 kCode = 0x1000;     // code may run into the next page
constexpr u32 kData = 0x100000;   // RW data pages
constexpr u32 kAbsent = 0x110000;  // not present
constexpr u32 kReadOnly = 0x111000;
constexpr u32 kPd = 0x10000, kPt = 0x11000;
constexpr u32 kPasses = 0x120000;  // the count of passes left (outside the pages addr() picks)
// User-mode sequences: the TSS (in the GDT's page) and the stack their
// exceptions switch to.
constexpr u32 kTss = test::kGdt + 0x100, kKernelStack = 0x9F000;
// Pages user mode may not touch: the IDT, GDT, TSS, handlers, the vector log,
// the fault code, the resume table, the paging structures, the kernel stack.
bool supervisor_page(u32 la) {
  return (la >= 0x3000 && la < 0x10000) || (la >= 0x20000 && la < 0x28000) || la == kPd || la == kPt ||
         (la >= kKernelStack - 0x1000 && la < kKernelStack);
}

struct Gen {
  std::mt19937 rng;
  std::vector<u8> out;
  explicit Gen(u32 seed) : rng(seed) {}
  u32 r(u32 n) { return std::uniform_int_distribution<u32>(0, n - 1)(rng); }
  void b(u8 v) { out.push_back(v); }
  void d(u32 v) {
    for (int k = 0; k < 4; k++) b(u8(v >> (8 * k)));
  }
  // An address near interesting places: data, page boundaries, the absent
  // and read-only pages, the code itself.
  u32 addr() {
    switch (r(6)) {
      case 0: return kData + r(0x2000);
      case 1: return kData + 0x1000 - 4 + r(8);  // crossing a page inside RAM
      case 2: return kAbsent - 4 + r(8);          // crossing into the absent page
      case 3: return kReadOnly + r(0x1000);
      case 4: return kCode + r(0x400);            // self-modifying
      default: return kData + 0xFFFC + r(8);
    }
  }
  // A ModRM byte with `reg`, a random register or memory form, plus SIB/disp.
  void modrm(unsigned reg, bool mem_only = false) {
    unsigned kind = mem_only ? 1 + r(4) : r(5);
    switch (kind) {
      case 0: b(u8(0xC0 | (reg << 3) | r(8))); break;                      // register
      case 1: b(u8(0x40 | (reg << 3) | 3)); b(u8(r(256))); break;          // [ebx+d8]
      case 2: b(u8(0x80 | (reg << 3) | 6)); d(r(0x1100) - 0x80); break;   // [esi+d32]
      case 3: b(u8(0x44 | (reg << 3))); b(u8((r(4) << 6) | (1 << 3) | 7)); b(u8(r(256))); break;  // [edi+ecx*s+d8]
      default: b(u8(0x05 | (reg << 3))); d(addr()); break;                 // [abs]
    }
  }
  void insn() {
    if (r(8) == 0) b(0x66);          // 16-bit operands
    if (r(10) == 0) b(r(3) ? 0x64 : 0x65);  // FS: (base 0x100), GS: (base 0x200)
    switch (r(26)) {
      case 0: case 1: case 2: {      // ALU r/m forms
        static const u8 ops[] = {0x00, 0x01, 0x02, 0x03, 0x08, 0x09, 0x0A, 0x0B, 0x10, 0x11, 0x12, 0x13,
                                 0x18, 0x19, 0x1A, 0x1B, 0x20, 0x21, 0x22, 0x23, 0x28, 0x29, 0x2A, 0x2B,
                                 0x30, 0x31, 0x32, 0x33, 0x38, 0x39, 0x3A, 0x3B, 0x84, 0x85, 0x86, 0x87,
                                 0x88, 0x89, 0x8A, 0x8B};
        b(ops[r(sizeof ops)]);
        modrm(r(8));
        break;
      }
      case 3: {                      // group 1 with immediates (0x82 too)
        const u8 op = u8(0x80 + r(4));
        b(op);
        modrm(r(8));
        if (op == 0x81) d(rng()); else b(u8(r(256)));
        break;
      }
      case 4: {                      // shifts and rotates
        static const u8 ops[] = {0xC0, 0xC1, 0xD0, 0xD1, 0xD2, 0xD3};
        const u8 op = ops[r(6)];
        b(op);
        modrm(r(8));
        if (op <= 0xC1) b(u8(r(4) == 0 ? r(256) : r(33)));
        break;
      }
      case 5: {                      // group 3: test/not/neg/mul/imul/div/idiv
        const u8 op = r(2) ? 0xF7 : 0xF6;
        const unsigned ext = r(8);
        b(op);
        modrm(ext);
        if (ext < 2) { if (op == 0xF7) d(rng()); else b(u8(r(256))); }
        break;
      }
      case 6: b(r(2) ? 0xFF : 0xFE); modrm(r(2)); break;  // inc/dec r/m
      case 7: b(u8(0x40 + r(16))); break;                   // inc/dec r
      case 8: {                      // 0F: imul, movzx/sx, cmov, setcc, bsf/bsr
        static const u8 ops[] = {0xAF, 0xB6, 0xB7, 0xBE, 0xBF, 0xBC, 0xBD};
        b(0x0F);
        switch (r(3)) {
          case 0: b(ops[r(sizeof ops)]); modrm(r(8)); break;
          case 1: b(u8(0x40 + r(16))); modrm(r(8)); break;
          default: b(u8(0x90 + r(16))); modrm(0); break;
        }
        break;
      }
      case 9: {                      // bit tests, shld/shrd, cmpxchg, xadd
        static const u8 ops[] = {0xA3, 0xAB, 0xB3, 0xBB, 0xA5, 0xAD, 0xB0, 0xB1, 0xC0, 0xC1};
        const u8 op = ops[r(sizeof ops)];
        const bool bt_reg = op == 0xA3 || op == 0xAB || op == 0xB3 || op == 0xBB;
        // Register bit offsets into memory reach far: a small signed offset
        // loaded just before (not into ESP), or a register operand.
        const unsigned off = r(8);
        if (bt_reg && off != 4 && r(2)) {
          b(u8(0xB8 + off));
          d(u32(i32(r(512)) - 256));  // mov off, -256..255
          b(0x0F);
          b(op);
          modrm(off, true);
          break;
        }
        b(0x0F);
        b(op);
        if (bt_reg) b(u8(0xC0 | (off << 3) | r(8)));
        else modrm(r(8));
        break;
      }
      case 10: b(0x0F); b(0xBA); modrm(4 + r(4)); b(u8(r(256))); break;
      case 11: b(0x0F); b(r(2) ? 0xA4 : 0xAC); modrm(r(8)); b(u8(r(40))); break;
      case 12: b(u8(r(2) ? 0x69 : 0x6B)); { const u8 op = out.back(); modrm(r(8)); if (op == 0x69) d(rng()); else b(u8(r(256))); } break;
      case 13: b(u8(0x50 + r(8))); break;                    // push r
      case 14: b(u8(0x58 + (r(8) | 0))); if ((out.back() & 7) == 4) out.back() = 0x58; break;  // pop r (not esp)
      case 15: if (r(2)) { b(0x68); d(rng()); } else { b(0x6A); b(u8(r(256))); } break;
      case 16: {                     // mov r, imm / mov r/m, imm
        if (r(2)) { b(u8(0xB8 + r(8))); d(r(2) ? addr() : rng()); }
        else { b(0xC7); modrm(0, true); d(rng()); }
        break;
      }
      case 17: {                     // one-byte specials
        static const u8 ops[] = {0x90, 0x91, 0x93, 0x96, 0x98, 0x99, 0x9E, 0x9F, 0xF5, 0xF8, 0xF9};
        b(ops[r(sizeof ops)]);
        break;
      }
      case 18: b(0x8D); modrm(r(8), true); break;             // lea
      case 19: {                     // string instructions with a small count
        b(0xB9); d(r(20));                                     // mov ecx, n
        if (r(2)) b(r(2) ? 0xF3 : 0xF2);
        static const u8 ops[] = {0xA4, 0xA5, 0xA6, 0xA7, 0xAA, 0xAB, 0xAC, 0xAD, 0xAE, 0xAF};
        b(ops[r(sizeof ops)]);
        break;
      }
      case 20: b(u8(0x70 + r(16))); b(2); b(0xB0); b(u8(r(256))); break;  // jcc over mov al, imm
      case 21: b(0xE8); d(2); b(0xEB); b(1); b(0xC3); break;  // call L; jmp over; L: ret
      case 22: b(u8(0xA0 + r(4))); d(addr()); break;           // moffs
      case 23: b(0xC6); b(0x05); d(kCode + r(0x200)); b(u8(r(256))); break;  // store into code
      case 24:
        if (r(3) == 0) {             // jcc over a store (bt: the join after it parks the flags)
          b(u8(0x70 + r(16))); b(6); b(0x89); b(u8(0x05 | (r(8) << 3))); d(addr());
        } else if (r(2)) {           // jcc over a compare, then a store (the flags differ by the way taken)
          b(u8(0x70 + r(16))); b(2); b(0x85); b(u8(0xC0 | (r(8) << 3) | r(8)));
          b(0x89); b(u8(0x05 | (r(8) << 3))); d(addr());
        } else {
          b(0x0F); b(u8(0xC8 + r(8)));                           // bswap
        }
        break;
      default:
        switch (r(4)) {
          case 0: b(0xFC); break;                                // cld (std would break REP sets)
          case 1: {                  // pushfd; xor [esp], bits; popfd: arithmetic flags, IF, IOPL, AC, ID
            u32 bits = rng() & (0x8D5u | 0x200u);
            if (r(8) == 0) bits |= 0x3000u;
            if (r(16) == 0) bits |= 0x40000u;
            if (r(16) == 0) bits |= 0x200000u;
            b(0x9C); b(0x81); b(0x34); b(0x24); d(bits); b(0x9D);
            break;
          }
          case 2: b(r(2) ? 0xFB : 0xFA); break;                  // sti / cli
          default: {                 // load es/ds/fs/gs (fs, gs had bases 0x100, 0x200) from a register or memory
            static const u8 sregs[] = {0, 3, 4, 5};
            static const u8 sels[] = {0x10, 0x10, 0x00, 0x08, 0x13, 0x18};  // data, null, code, RPL 3, past the GDT
            const u8 sel = sels[r(sizeof sels)];
            if (r(2)) {
              unsigned rr = r(8);
              if (rr == 4) rr = 0;  // not SP
              b(0x66); b(u8(0xB8 + rr)); b(sel); b(0x00);          // mov r16, sel
              b(0x8E); b(u8(0xC0 | (sregs[r(4)] << 3) | rr));      // mov sreg, r16
            } else {
              const u8 d8 = u8(r(256));
              b(0x66); b(0xC7); b(0x43); b(d8); b(sel); b(0x00);   // mov word [ebx+d8], sel
              b(0x8E); b(u8(0x43 | (sregs[r(4)] << 3))); b(d8);    // mov sreg, [ebx+d8]
            }
            break;
          }
        }
        break;
    }
  }
};

constexpr u32 kTable = 0x20000;    // code offset -> next instruction's EIP (0: none)
constexpr u32 kFaultCommon = 0x9000;

struct FuzzResult {
  u64 insns = 0;
  bool diverged = false;
  bool outside_ram = false;
  std::string message;
};

// One fuzz machine per engine variant, reused across sequences.
struct FuzzVm {
  test::TestVm vm;
  u64 last_icount = 0;
  explicit FuzzVm(const test::EngineKind& k) : vm(k) {}
  // Page tables, GDT, IDT and handlers: garbage code may have written them.
  void reset_tables() {
    // Kernel code and data, user code and data (DPL 3), a 32-bit TSS.
    const u64 tss_desc = 0x67 | (u64(kTss & 0xFFFFFF) << 16) | (u64(0x89) << 40) | (u64(kTss >> 24) << 56);
    const u64 gdt[6] = {0, 0x00CF9B000000FFFFull, 0x00CF93000000FFFFull, 0x00CFFB000000FFFFull,
                        0x00CFF3000000FFFFull, tss_desc};
    vm.pm.write_bytes(test::kGdt, gdt, sizeof gdt);
    std::vector<u8> tss(0x68, 0);
    const u32 esp0 = kKernelStack, ss0 = 0x10;
    std::memcpy(&tss[4], &esp0, 4);
    std::memcpy(&tss[8], &ss0, 4);
    vm.pm.write_bytes(kTss, tss.data(), tss.size());
    for (u32 v = 0; v < 256; v++) vm.set_gate(v, test::kHandlers + v * 16);

    // Page tables: identity, one page absent, one read-only (CR0.WP), the
    // tables read-only.
    // (User pages for the user-mode sequences: all but the system's.)
    u32 pde = kPt | 7;
    vm.pm.write_bytes(kPd, &pde, 4);
    for (u32 p = 0; p < 1024; p++) {
      u32 pte = (p << 12) | (supervisor_page(p << 12) ? 3 : 7);
      if (p << 12 == kAbsent) pte = 0;
      if (p << 12 == kReadOnly) pte = (p << 12) | 5;
      // The paging structures themselves are read-only: a write to them
      // without INVLPG leaves which translation the CPU uses undefined (each
      // engine's TLB may keep a different set), which lockstep cannot judge.
      if (p << 12 == kPd || p << 12 == kPt) pte = (p << 12) | 1;
      vm.pm.write_bytes(kPt + p * 4, &pte, 4);
    }
    // Exceptions resume at the next instruction (from kTable) or halt.
    for (u32 v = 0; v < 256; v++) {
      const bool err = v == 8 || (v >= 10 && v <= 14) || v == 17;
      std::vector<u8> stub;
      if (err) stub = {0x83, 0xC4, 0x04};  // add esp, 4
      const u32 at = test::kHandlers + v * 16 + u32(stub.size());
      const i32 rel = i32(kFaultCommon - (at + 5));
      stub.push_back(0xE9);
      for (int k = 0; k < 4; k++) stub.push_back(u8(u32(rel) >> (8 * k)));
      vm.code(test::kHandlers + v * 16, stub);
    }
    vm.code(kFaultCommon, {0x8B, 0x1C, 0x24,                          // mov ebx, [esp]
                           0x81, 0xEB, u8(kCode), u8(kCode >> 8), 0, 0,  // sub ebx, kCode
                           0x81, 0xFB, 0x00, 0x20, 0, 0,              // cmp ebx, 0x2000
                           0x73, 0x0F,                                // jae halt
                           0x8B, 0x1C, 0x9D, u8(kTable), u8(kTable >> 8), u8(kTable >> 16), 0,
                           0x85, 0xDB,                                // test ebx, ebx
                           0x74, 0x04,                                // jz halt
                           0x89, 0x1C, 0x24,                          // mov [esp], ebx
                           0xCF,                                      // iret
                           0xF4});                                    // halt: hlt
    }
  FuzzResult run(u32 seed, const std::string& name) {
    Gen g(seed);
    // Seeds 3 mod 4 end in a loop that is one block when the sequence has
    // no transfer (bt's loop flags: the back edge leaves the flags as the
    // compare's recipe), so they are shorter.
    const bool loop = seed % 4 == 3;
    const unsigned n = 1 + g.r(loop ? 40 : 60);
    // Most of them fault at their start from the second pass on (the handler
    // then sees the flags the back edge left): mov x, [kPasses] ; mov y,
    // [x*8 + d], which reads the page after the absent one while the count
    // is 3 and the absent page after.
    if (loop && g.r(4)) {
      unsigned x = g.r(8), y = g.r(8);
      if (x == ESP) x = EAX;
      if (y == ESP) y = EDX;
      g.b(0x8B); g.b(u8(0x05 | (x << 3))); g.d(kPasses);
      g.b(0x8B); g.b(u8(0x04 | (y << 3))); g.b(u8(0xC5 | (x << 3))); g.d(kAbsent + 0x1000 - 20);
    }
    for (unsigned k = 0; k < n; k++) g.insn();
    if (loop) {
      // sub dword [kPasses], 1 ; mov ecx, 17 ; mov r, [kPasses] ; imul r,
      // r, odd ; P on r ; jnz start ; hlt — P is one of the forms bt
      // recomputes (ZF: r == 0; the other flags vary).
      g.b(0x83); g.b(0x2D); g.d(kPasses); g.b(1);
      g.b(0xB9); g.d(17);
      unsigned r = g.r(8);
      if (r == ESP) r = EBP;
      g.b(0x8B); g.b(u8(0x05 | (r << 3))); g.d(kPasses);
      g.b(0x69); g.b(u8(0xC0 | (r << 3) | r)); g.d(g.rng() | 1);  // imul r, r, odd: flags vary, zero stays zero
      switch (g.r(9)) {
        case 0: g.b(0x85); g.b(u8(0xC0 | (r << 3) | r)); break;               // test r, r
        case 1: g.b(0x83); g.b(u8(0xF8 | r)); g.b(0); break;                  // cmp r, 0
        case 2: g.b(0x09); g.b(u8(0xC0 | (r << 3) | r)); break;               // or r, r
        case 3: g.b(0x83); g.b(u8(0xE8 | r)); g.b(0); break;                  // sub r, 0
        case 4: g.b(0xD1); g.b(u8(0xE8 | r)); break;                          // shr r, 1
        case 5: g.b(0x81); g.b(u8(0xC0 | r)); g.d(0); break;                  // add r, 0
        case 6: g.b(0xF7); g.b(u8(0xD8 | r)); break;                          // neg r
        case 7:                                                               // cmp eax, 0 / test al, al
          if (r == EAX) { g.b(0x3D); g.d(0); }
          else if (r < 4) { g.b(0x84); g.b(u8(0xC0 | (r << 3) | r)); }
          else { g.b(0x85); g.b(u8(0xC0 | (r << 3) | r)); }
          break;
        default: g.b(0x21); g.b(u8(0xC0 | (r << 3) | r)); break;              // and r, r
      }
      g.b(0x0F); g.b(0x85); g.d(u32(-i32(g.out.size() + 4)));
      g.b(0xF4);
    } else {
      // Odd seeds run twice through (dec dword [kPasses] ; jz end ; mov ecx,
      // 17 (REP counts stay small) ; jmp to the start ; end: hlt): the second
      // pass runs translated code that ran before (bt's memos of pages, chained
      // jumps), on the state the first pass left.
      g.b(0xFF);
      g.b(0x0D);
      g.d(kPasses);
      g.b(0x74);
      g.b(10);
      g.b(0xB9);
      g.d(17);
      g.b(0xE9);
      g.d(u32(-i32(g.out.size() + 4)));
      g.b(0xF4);
    }
    const std::vector<u8> code = g.out;
    const u32 start = g.r(4) == 0 ? kCode + 0x1000 - u32(code.size()) / 2 : kCode;
    // A third of the sequences with paging on run in user mode (CPL 3: bt
    // addresses the user window there; privileged instructions fault).
    const bool user = seed % 5 != 0 && seed % 3 == 1;
    // Instruction boundaries for the fault handler.
    std::vector<u32> table(0x2000, 0);
    u32 last_eip = 0;
    for (u32 off = 0; off < code.size();) {
      Insn i;
      const unsigned avail = u32(code.size()) - off;
      if (decode(code.data() + off, avail < 15 ? avail : 15, true, &i) != DecodeStatus::ok) break;
      const u32 eip = start + off;
      table[eip - kCode] = eip + i.len;
      last_eip = eip;
      off += i.len;
    }
    // In user mode the final HLT faults: the handler then halts.
    if (user && code.back() == 0xF4 && last_eip == start + code.size() - 1) table[last_eip - kCode] = 0;
    vm.pm.write_bytes(kTable, table.data(), table.size() * 4);
    std::vector<u8> junk(0x12000);  // all the data pages, the absent one included
    for (auto& c : junk) c = u8(g.r(256));
    vm.pm.write_bytes(kData, junk.data(), junk.size());
    vm.pm.write_bytes(kReadOnly, junk.data() + 0x1000, 0x1000);
    vm.pm.write_bytes(kCode, std::vector<u8>(0x2000, 0xF4).data(), 0x2000);
    reset_tables();
    std::vector<u8> stack(0x1000);
    for (auto& c : stack) c = u8(g.r(256));
    vm.pm.write_bytes(test::kStackTop - 0x1000, stack.data(), stack.size());
    vm.code(start, code);
    const u32 passes = seed % 4 == 3 ? 3 : 1 + seed % 2;  // (every other sequence: CI's time)
    vm.pm.write_bytes(kPasses, &passes, 4);
    // Everything a previous sequence may have changed (it may have run
    // garbage: segment loads, LGDT...), so that a seed reproduces alone.
    CpuState& s = vm.s;
    for (auto& sg : s.seg) sg = Segment{0x10, 0, 0xFFFFFFFF, 0xC093};
    s.seg[CS] = Segment{0x08, 0, 0xFFFFFFFF, 0xC09B};
    s.gdtr = {test::kGdt, 0x2F};
    s.idtr = {test::kIdt, 0x7FF};
    s.cr3 = kPd;
    s.cr0 = CR0_PE | CR0_ET | (seed % 5 ? CR0_PG | CR0_WP : 0);
    s.cr4 = 0;
    s.cpl = 0;
    s.tr = Segment{0x28, kTss, 0x67, 0x8B};
    if (user) {
      for (auto& sg : s.seg) sg = Segment{0x23, 0, 0xFFFFFFFF, 0xC0F3};
      s.seg[CS] = Segment{0x1B, 0, 0xFFFFFFFF, 0xC0FB};
      s.cpl = 3;
    }
    s.intr_shadow = 0;
    s.eip = start;
    for (unsigned r = 0; r < 8; r++) s.gpr[r] = g.rng();
    s.gpr[EBX] = kData + g.r(0x1000);
    s.gpr[ESI] = kData + g.r(0x1000);
    s.gpr[EDI] = kData + g.r(0x1000);
    s.gpr[ECX] = g.r(64);
    s.gpr[ESP] = test::kStackTop - 4 * g.r(64);
    s.eflags = FLAGS_FIXED1 | (g.rng() & (CF | PF | AF | ZF | SF | OF));
    s.seg[FS].base = 0x100;
    s.seg[GS].base = 0x200;
    // Without paging nothing faults past RAM: ES (REP destinations) ends at
    // 4 MiB, so that a REP that garbage gave a huge count stops there.
    if (!(s.cr0 & CR0_PG)) s.seg[ES].limit = 0x3FFFFF;
    s.halted = s.shutdown = false;
    FuzzResult res;
    const u64 before = s.icount;
    try {
      if (vm.eng) static_cast<engine::Bt&>(*vm.eng).lockstep_resync();
      const char* tr = std::getenv("POPEK_FUZZ_TRACE_SEED");
      if (tr && u32(std::atoi(tr)) == seed) {
        if (!vm.eng) vm.run(0);
        vm.eng->set_trace(stderr);
      }
      // (At most 5,000 instructions: a sequence that rewrote its own way out loops.)
      // Loop seeds run in short slices: the budget runs out at the loop's
      // entry too (its exit then recomputes the flags the back edge left).
      const u64 slice = seed % 4 == 3 ? 5 + seed / 4 % 40 : 500;
      for (u64 done = 0; done < 5000 && !s.halted && !s.shutdown; done += slice) vm.run(slice);
    } catch (const Error& e) {
      // Garbage may jump outside RAM: popek refuses to execute there (both
      // engines would); only lockstep's verdict is a divergence.
      if (std::string(e.what()).rfind("lockstep:", 0) != 0) {
        res.outside_ram = true;
        res.insns = s.icount - before;
        return res;
      }
      res.diverged = true;
      char hex[8];
      std::string bytes;
      for (u8 c : code) {
        std::snprintf(hex, sizeof hex, "%02x ", c);
        bytes += hex;
      }
      res.message = std::string(e.what()) + "\nseed " + std::to_string(seed) + " engine " + name +
                    " code at " + std::to_string(start) + ": " + bytes;
    }
    res.insns = s.icount - before;
    return res;
  }
};

}  // namespace

TEST(BtFuzz, RandomSequencesAgreeWithTheInterpreter) {
  const char* secs_env = std::getenv("POPEK_FUZZ_SECONDS");
  const char* seed_env = std::getenv("POPEK_FUZZ_SEED");
  const double seconds = secs_env ? std::atof(secs_env) : 1e9;
  const char* count_env = std::getenv("POPEK_FUZZ_SEQUENCES");
  const u64 max_sequences = secs_env ? ~u64(0) : count_env ? std::strtoull(count_env, nullptr, 0) : 12000;
  u32 seed = seed_env ? u32(std::strtoul(seed_env, nullptr, 0)) : 1;
  std::vector<test::EngineKind> kinds;
  for (auto& k : test::all_engines())
    if (k.bt && !k.opt.lockstep) kinds.push_back(k);
  std::vector<std::unique_ptr<FuzzVm>> vms(kinds.size());
  const auto t0 = std::chrono::steady_clock::now();
  u64 sequences = 0, insns = 0, divergences = 0, outside = 0;
  std::string first;
  while (sequences < max_sequences &&
         std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() < seconds) {
    const unsigned ki = std::getenv("POPEK_FUZZ_KIND") ? unsigned(std::atoi(std::getenv("POPEK_FUZZ_KIND")))
                                                       : seed % kinds.size();
    test::EngineKind k = kinds[ki];
    k.opt.lockstep = true;
    if (std::getenv("POPEK_FUZZ_NO_ADAPTIVE")) k.opt.adaptive = false;
    if (std::getenv("POPEK_FUZZ_NO_FLAG_RECIPES")) k.opt.flag_recipes = false;
    // The user window from the first user-mode block on (POPEK_FUZZ_NO_USER_WINDOW: none).
    k.opt.user_window_claim = 0;
    if (std::getenv("POPEK_FUZZ_NO_USER_WINDOW")) k.opt.user_window = false;
    k.opt.code_cache_mb = std::getenv("POPEK_FUZZ_CACHE_MB") ? size_t(std::atoi(std::getenv("POPEK_FUZZ_CACHE_MB"))) : 8;
    if (!vms[ki]) vms[ki] = std::make_unique<FuzzVm>(k);
    FuzzResult r = vms[ki]->run(seed, k.name);
    if (std::getenv("POPEK_FUZZ_DEBUG")) std::printf("seed %u insns %llu\n", seed, (unsigned long long)r.insns);
    if (r.diverged || r.outside_ram) vms[ki].reset();  // start clean
    outside += r.outside_ram;
    sequences++;
    insns += r.insns;
    if (r.diverged) {
      if (divergences++ == 0) first = r.message;
    }
    seed++;
  }
  std::printf("bt fuzz: %llu sequences, %llu instructions compared in lockstep, %llu divergences "
              "(%llu sequences ended jumping outside RAM)\n",
              (unsigned long long)sequences, (unsigned long long)insns,
              (unsigned long long)divergences, (unsigned long long)outside);
  EXPECT_EQ(divergences, 0u) << first;
  EXPECT_GT(insns, 1000u);
}
