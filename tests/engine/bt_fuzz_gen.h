// The bt fuzzer's generator and machine (bt_fuzz_test.cpp describes the
// sequences), shared with the kvm oracle test (tests/oracle/kvm_bt_fuzz_test.cpp),
// which runs the same sequences on kvm against interp.
#pragma once
#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <cstdlib>
#include <map>
#include <random>

#include "base/error.h"
#include "test_vm.h"
#include "x87_fuzz.h"

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

// ---- the user-mode sequences' wider world ----
// Linear pages from kWide on (page-directory entries 1 on, their tables at
// kWidePt) alias a pool of kPoolFrames frames at kPool (also user pages at
// their own addresses): enough of them to touch more pages than the user
// window maps at most (mem::Mmu::kWindowCap, read here, not assumed).
constexpr u32 kWide = 0x400000;
constexpr u32 kPool = 0x200000;
constexpr unsigned kPoolFrames = 32;
constexpr u32 kWidePt = 0x300000;  // at most kWidePtMax tables, below the end of RAM
constexpr unsigned kWidePtMax = 64;
// Pages past the window's cap UserWindowBeyondItsCap touches.
constexpr unsigned kBeyondCap = 256;
constexpr unsigned kWidePts =
    std::min<unsigned>(kWidePtMax, unsigned((mem::Mmu::kWindowCap + kBeyondCap + 1023) / 1024));
constexpr u32 kWidePages = kWidePts * 1024;
// Each user-mode sequence is a process of its own: its page directory (and
// a second address space's, the same tables, that its kernel may switch
// to) one of kUserPds, by seed. bt's window goes to an address space at
// once here, but one that gave it up (churn, a working set larger than the
// window) waits long before it claims it again: another space, the next
// sequence's, does not.
constexpr u32 kUserPd = 0x240000, kUserPds = 64, kPd2Off = kUserPds * 0x1000;
constexpr u32 kSyscall = 0x8000;  // INT 0x80 (DPL 3): the kernel's page-table changes between passes
constexpr u32 kPteLog = 0x7800;   // the entries that kernel read (lockstep compares what interp wrote)
// The system pages of a user-mode sequence also hold its page directories
// and the wide tables (writable there: the kernel changes them).
bool user_system_page(u32 la, u32 pd) {
  return la == pd || la == pd + kPd2Off || la == kPt || (la >= kWidePt && la < kWidePt + kWidePts * 0x1000);
}

struct Gen {
  std::mt19937 rng;
  std::vector<u8> out;
  // User mode: the wide pages this sequence favours (hot from hot_base on).
  bool user = false;
  u32 hot_base = 0, hot = 1;
  bool mmx = false;  // MMX instructions among the rest (draws nothing when off)
  bool frames = false;  // runs of [EBP/ESP + d8] operands among the rest (likewise)
  bool x87 = false;  // x87 instructions among the rest (likewise; x87_fuzz.h)
  explicit Gen(u32 seed) : rng(seed) {}
  u32 r(u32 n) { return std::uniform_int_distribution<u32>(0, n - 1)(rng); }
  void b(u8 v) { out.push_back(v); }
  void d(u32 v) {
    for (int k = 0; k < 4; k++) b(u8(v >> (8 * k)));
  }
  void bytes(std::initializer_list<u8> v) { out.insert(out.end(), v); }
  u32 wide_page() { return kWide + (((hot_base + r(hot)) % kWidePages) << 12); }
  // An address near interesting places: data, page boundaries, the absent
  // and read-only pages, the code itself; in user mode also the wide pages
  // and the pool they alias.
  u32 addr() {
    if (user && r(5) == 0) return r(4) ? wide_page() + r(0x1000) : kPool + r(kPoolFrames << 12);
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
  // bt's frame checks: `mov ebp, a` (near page boundaries, the absent,
  // read-only and code pages) and a run of [EBP + d8] operands — reads,
  // writes, read-modify-writes, PUSH of one — with changes of EBP, pushes
  // and pops, forward branches over one of them (side joins in user mode)
  // and [ESP + d8] reads among them.
  void frame_run() {
    b(0xBD); d(addr());
    static const u8 ops32[] = {0x8B, 0x89, 0x01, 0x03, 0x29, 0x31, 0x39, 0x3B, 0x85, 0x87, 0x11, 0x1B};
    static const u8 ops8[] = {0x8A, 0x88, 0x00, 0x20, 0x38, 0x02};
    static const u8 regs32[] = {EAX, ECX, EDX, EBX, EBP, ESI, EDI};  // (a load may end the run's EBP)
    const unsigned k = 2 + r(7);
    for (unsigned j = 0; j < k; j++) {
      const u8 d8 = u8(r(4) ? r(64) - 32 : r(256));
      switch (r(14)) {
        case 12:                                                       // push ; push ; mov r, [esp+4] ; pop ; pop
          b(u8(0x50 | regs32[r(7)])); b(u8(0x50 | regs32[r(7)]));
          b(0x8B); b(u8(0x44 | (regs32[r(4)] << 3))); b(0x24); b(4);
          b(u8(0x58 | regs32[r(7)])); b(u8(0x58 | regs32[r(7)]));
          break;
        case 13:                                                       // sub esp, 8 ; mov [esp+4], r ; mov r, [esp] ; add esp, 8
          b(0x83); b(0xEC); b(8);
          b(0x89); b(u8(0x44 | (regs32[r(7)] << 3))); b(0x24); b(4);
          b(0x8B); b(u8(0x04 | (regs32[r(4)] << 3))); b(0x24);
          b(0x83); b(0xC4); b(8);
          break;
        case 0: b(0x83); b(0xC5); b(u8(r(2) ? 4 : 0xFC)); break;      // add ebp, +-4
        case 1: b(u8(0x50 | regs32[r(sizeof regs32)])); b(u8(0x58 | regs32[r(sizeof regs32)])); break;  // push r ; pop r
        case 2: b(u8(0x70 | r(16))); b(3); b(0x8B); b(u8(0x45 | (regs32[r(4)] << 3))); b(d8); break;  // jcc over a load
        case 3: b(0x8B); b(u8(0x44 | (regs32[r(4)] << 3))); b(0x24); b(u8(4 * r(8))); break;  // mov r, [esp+d8]
        case 4: b(0xFF); b(0x75); b(d8); b(u8(0x58 | regs32[r(4)])); break;  // push dword [ebp+d8] ; pop r
        case 5: b(0xC7); b(0x45); b(d8); d(rng()); break;             // mov dword [ebp+d8], imm
        case 6: b(0x0F); b(u8(r(2) ? 0xB6 : 0xBF)); b(u8(0x45 | (regs32[r(4)] << 3))); b(d8); break;  // movzx/movsx
        case 7: b(ops8[r(sizeof ops8)]); b(u8(0x45 | (r(4) << 3))); b(d8); break;
        default:
          if (r(6) == 0) b(0x66);
          b(ops32[r(sizeof ops32)]); b(u8(0x45 | (regs32[r(sizeof regs32)] << 3))); b(d8);
          break;
      }
    }
  }
  // User mode: a loop over pages, `mov edx, a ; mov ecx, n ; L: op [edx+d8]
  // ; add edx, stride ; loop L` (or dec ecx ; jnz L).
  void walk() {
    b(0xBA); d(r(8) ? wide_page() + r(0x1000) : kData + r(0x12000));
    b(0xB9); d(1 + r(40));
    const size_t top = out.size();
    static const u8 ops32[] = {0x8B, 0x89, 0x01, 0x03, 0x29, 0x31, 0x39, 0x3B, 0x85, 0x87};
    static const u8 ops8[] = {0x8A, 0x88, 0x00, 0x20, 0x38};
    static const u8 regs32[] = {EAX, EBX, EBP, ESI, EDI}, regs8[] = {0, 3, 4, 7};  // (not CL/CH, DL/DH)
    if (r(3) == 0) {
      b(ops8[r(sizeof ops8)]);
      b(u8(0x42 | (regs8[r(sizeof regs8)] << 3)));  // [edx+d8]
    } else if (r(4) == 0) {
      b(0xFF); b(u8(0x42 | (r(2) << 3)));             // inc/dec dword [edx+d8]
    } else {
      if (r(6) == 0) b(0x66);
      b(ops32[r(sizeof ops32)]);
      b(u8(0x42 | (regs32[r(sizeof regs32)] << 3)));
    }
    b(u8(r(4) ? r(64) : r(256)));                       // (near the page's end: crossing)
    static const u32 strides[] = {0x1000, 0x1000, 0x2000, 0xFFFFF000u, 0x1004, 0x3000, 0x800};
    b(0x81); b(0xC2); d(strides[r(sizeof strides / sizeof strides[0])]);
    if (r(2)) {
      b(0xE2);
    } else {
      b(0x49); b(0x75);
    }
    b(u8(i32(top) - i32(out.size() + 1)));
  }
  // Touches `pages` wide pages from kWide on (16 an iteration, `op [edx +
  // k*4096]`), then `times` times again the first `revisit` (touched before
  // the window's cap emptied it): `marker` puts an OUT 0xE9 after each phase.
  // revisit: a power of two, a multiple of 16, at most 1024.
  unsigned beyond_cap(unsigned pages, unsigned revisit, unsigned times, bool marker) {
    auto pass16 = [&] {
      static const u8 ops[] = {0x8B, 0x01, 0x89, 0x3B};  // mov eax,[m] / add [m],eax / mov [m],esi / cmp ebx,[m]
      static const u8 regs[] = {EAX, EAX, ESI, EBX};
      for (unsigned k = 0; k < 16; k++) {
        const unsigned o = r(4);
        b(ops[o]);
        b(u8(0x82 | (regs[o] << 3)));  // [edx+d32]
        d(k << 12);
      }
      b(0x81); b(0xC2); d(0x10000);    // add edx, 16 pages
    };
    b(0xBA); d(kWide);
    b(0xB9); d((pages + 15) / 16);
    size_t top = out.size();
    pass16();
    b(0xE2); b(u8(i32(top) - i32(out.size() + 1)));
    if (marker) bytes({0xE6, 0xE9});   // out 0xE9, al
    b(0xBA); d(kWide);
    b(0xB9); d(revisit / 16 * times);
    top = out.size();
    pass16();
    b(0x81); b(0xE2); d(kWide | (revisit * 4096 - 1));  // and edx: back to the first page after the last
    b(0xE2); b(u8(i32(top) - i32(out.size() + 1)));
    if (marker) bytes({0xE6, 0xE9});
    // (The instructions it runs.)
    return 2 + (pages + 15) / 16 * 18 + 2 + revisit / 16 * times * 19 + (marker ? 2 : 0);
  }
  // An MMX instruction: register and memory forms (the addresses above:
  // faults, crossings, stores into the code), the immediate shifts, EMMS,
  // now and then a prefix (66 is ignored; FS/GS apply).
  void mmx_insn() {
    if (r(10) == 0) b(0x66);
    if (r(10) == 0) b(r(2) ? 0x64 : 0x65);
    static const u8 ops[] = {0x60, 0x61, 0x62, 0x63, 0x64, 0x65, 0x66, 0x67, 0x68, 0x69, 0x6A, 0x6B,
                             0x6E, 0x6F, 0x74, 0x75, 0x76, 0x7E, 0x7F, 0xD1, 0xD2, 0xD3, 0xD5, 0xD8,
                             0xD9, 0xDB, 0xDC, 0xDD, 0xDF, 0xE1, 0xE2, 0xE5, 0xE8, 0xE9, 0xEB, 0xEC,
                             0xED, 0xEF, 0xF1, 0xF2, 0xF3, 0xF5, 0xF8, 0xF9, 0xFA, 0xFC, 0xFD, 0xFE};
    b(0x0F);
    switch (r(8)) {
      case 0: {                      // psrlw/psraw/psllw, d, q by imm8
        static const u8 digits[3][3] = {{2, 4, 6}, {2, 4, 6}, {2, 6, 6}};
        const unsigned g = r(3);
        b(u8(0x71 + g));
        b(u8(0xC0 | (digits[g][r(3)] << 3) | r(8)));
        b(u8(r(4) ? r(72) : r(256)));
        break;
      }
      case 1: b(0x77); break;        // emms
      default: b(ops[r(sizeof ops)]); modrm(r(8)); break;
    }
  }
  void insn() {
    if (mmx && r(3) == 0) {
      mmx_insn();
      return;
    }
    if (x87 && r(2) == 0) {
      test::x87fuzz::insn(*this);
      return;
    }
    if (frames && r(4) == 0) {
      frame_run();
      return;
    }
    if (user && r(24) == 0) {
      walk();
      return;
    }
    const size_t start = out.size();
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
        if (ext >= 6 && r(2)) {
          // DIV/IDIV on a dividend whose quotient mostly fits (bt runs those
          // inline): a divisor from the usual values, 0 and -1 among them,
          // INT_MIN-like dividends, a high half from CDQ/CWD/CBW or zeroed.
          const std::vector<u8> px(out.begin() + std::ptrdiff_t(start), out.end());
          out.resize(start);
          const bool o16 = std::find(px.begin(), px.end(), u8(0x66)) != px.end();
          static const u8 dregs[] = {ECX, EBX, EBP, ESI, EDI};  // (CL BL CH DH BH as bytes)
          const unsigned dreg = dregs[r(sizeof dregs)];
          static const u32 vals[] = {0, 0xFFFFFFFFu, 1, 2, 3, 7, 10, 0x80000000u, 0xFFFFFF80u, 0xFFFF8000u};
          b(u8(0xB8 + dreg)); d(r(3) ? vals[r(sizeof vals / sizeof vals[0])] : rng());
          if (r(4) == 0) { b(0xB8); d(r(3) ? vals[7 + r(3)] : rng()); }  // mov eax, INT_MIN-like
          switch (r(4)) {
            case 0: if (op == 0xF6 || o16) b(0x66); b(op == 0xF6 ? 0x98 : 0x99); break;  // cbw/cwd/cdq
            case 1: if (op == 0xF6) { b(0xB4); b(0); } else { b(0x31); b(0xD2); } break;  // mov ah, 0 / xor edx, edx
            case 2: if (op == 0xF6) { b(0x66); b(0x98); } else { b(0x99); } break;
            default: break;
          }
          for (u8 x : px) b(x);
          b(op);
          if (r(2)) b(u8(0xC0 | (ext << 3) | dreg));
          else modrm(ext);
          break;
        }
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
      case 21:
        if (r(2)) { b(0xE8); d(2); b(0xEB); b(1); b(0xC3); break; }  // call L; jmp over; L: ret
        {
          // A recursion EBX deep: push ebx ; mov ebx, n ; call F ; jmp over ;
          // F: dec ebx ; jz B ; call F ; R: ret ; B: [pop eax ; jmp eax] ;
          // over: pop ebx. B is R itself, or (the innermost level returning
          // by an indirect jump) leaves bt's return stack a frame no RET pops.
          const bool jmp_back = r(3) == 0;
          b(0x53);
          b(0xBB); d(1 + r(r(4) ? 8 : 64));
          b(0xE8); d(2);
          b(0xEB); b(jmp_back ? 12 : 9);
          b(0x4B);                                  // F: dec ebx
          b(0x74); b(jmp_back ? 6 : 5);             // jz B
          b(0xE8); d(u32(-8));                      // call F
          b(0xC3);                                  // R: ret
          if (jmp_back) { b(0x58); b(0xFF); b(0xE0); }  // B: pop eax ; jmp eax
          b(0x5B);                                  // over: pop ebx
        }
        break;
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

// The kernel's INT 0x80 handler of a user-mode sequence: it logs the
// page-table entries of the pages it changes (lockstep compares the log
// interp writes: the accessed and dirty bits each engine set), then, by the
// passes left (the count at kPasses), makes that pass's changes, each
// followed by the invalidation the architecture requires for it: INVLPG of
// the page or a CR3 load, at once or after the pass's other changes (the
// user pages are not touched in between); none where permissions only
// grow (a not-present entry is never cached; a write the TLB refuses walks
// again in both engines — x86 may also take a spurious #PF there, neither
// engine does). Memory operands through SS (the user may have left any DS).
std::vector<u8> kernel_code(Gen& g, u32 passes, u32 pd) {
  // Pages the sequence touches most: data (where EBX, ESI and EDI point
  // first, the absent and read-only pages too), the user stack, the first
  // of its wide pages, the pool.
  std::vector<u32> pages;
  for (unsigned k = 0, n = 1 + g.r(4); k < n; k++) {
    switch (g.r(6)) {
      case 0: case 1: pages.push_back(kData + ((g.r(3) ? g.r(2) : g.r(18)) << 12)); break;
      case 2: pages.push_back(test::kStackTop - 0x1000); break;
      case 3: case 4: pages.push_back(kWide + ((g.hot_base + g.r(std::min(g.hot, 4u))) % kWidePages << 12)); break;
      default: pages.push_back(kPool + (g.r(kPoolFrames) << 12)); break;
    }
  }
  auto pte_of = [](u32 la) { return la < kWide ? kPt + (la >> 12) * 4 : kWidePt + ((la - kWide) >> 12) * 4; };
  Gen e(0);  // (emits only)
  auto mem_imm = [&](u8 op, u8 modrm, u32 at, u32 imm) {  // op dword ss:[at], imm32
    e.bytes({0x36, op, modrm});
    e.d(at);
    e.d(imm);
  };
  auto invlpg = [&](u32 la) { e.bytes({0x36, 0x0F, 0x01, 0x3D}); e.d(la + g.r(0x1000)); };
  auto reload_cr3 = [&] { e.bytes({0x0F, 0x20, 0xD8, 0x0F, 0x22, 0xD8}); };  // mov eax, cr3 ; mov cr3, eax
  e.b(0x50);  // push eax
  for (size_t j = 0; j < pages.size(); j++) {
    const u32 la = pages[j];
    e.b(0x36); e.b(0xA1); e.d(pte_of(la));                      // mov eax, ss:[pte]
    e.b(0x36); e.b(0xA3); e.d(kPteLog + u32(j) * 8);             // mov ss:[log], eax
    e.b(0x36); e.b(0xA1); e.d(pd + (la >> 22) * 4);              // and its directory entry
    e.b(0x36); e.b(0xA3); e.d(kPteLog + u32(j) * 8 + 4);
  }
  for (u32 left = passes - 1; left >= 1; left--) {
    Gen body(0);
    std::swap(body.out, e.out);
    std::vector<u32> deferred;
    bool deferred_cr3 = false;
    for (unsigned k = 0, n = 1 + g.r(3); k < n; k++) {
      const u32 la = pages[g.r(u32(pages.size()))];
      const u32 pte = pte_of(la);
      bool down = true, dir = false;
      switch (g.r(14)) {
        case 0: case 1: mem_imm(0x81, 0x25, pte, ~1u); break;   // and: not present
        case 2: case 3: case 11: case 12: {                      // mov: another frame
          u32 frame;
          switch (g.r(5)) {
            case 0: frame = kData + (g.r(17) << 12); break;      // (the absent page's frame too)
            case 1: frame = kPool + (g.r(kPoolFrames) << 12); break;
            case 2: frame = kReadOnly; break;
            case 3: frame = kCode + (g.r(2) << 12); break;       // writes through it change the code
            default: {                                           // another's (or its own) first frame
              const u32 o = pages[g.r(u32(pages.size()))];
              frame = o < kWide ? o : kPool + ((o - kWide) >> 12) % kPoolFrames * 0x1000;
              break;
            }
          }
          // (Mostly accessed, as a kernel installs an entry at a fault.)
          const u32 flags = 5 | (g.r(4) ? 2 : 0) | (g.r(4) ? 0x20 : 0) | (g.r(2) ? 0x40 : 0);
          mem_imm(0xC7, 0x05, pte, frame | flags);
          break;
        }
        case 4: case 5: mem_imm(0x81, 0x25, pte, ~2u); break;   // read-only
        case 6: case 7: {                                        // accessed and/or dirty clear
          static const u32 ad[] = {0x20, 0x40, 0x60};
          mem_imm(0x81, 0x25, pte, ~ad[g.r(3)]);
          break;
        }
        case 8: case 9: {                                        // or: present, writable, user
          static const u32 up[] = {1, 2, 7};
          mem_imm(0x81, 0x0D, pte, up[g.r(3)]);
          down = false;
          break;
        }
        case 13:                                                 // a wide page's whole table (both spaces)
          if (la >= kWide) {
            const u32 bits = g.r(3) ? 1 : 0x20;                  // not present, or not accessed
            const bool up = g.r(3) == 0;
            for (u32 d : {pd, pd + kPd2Off}) mem_imm(0x81, up ? 0x0D : 0x25, d + (la >> 22) * 4, up ? bits : ~bits);
            down = !up;
            dir = true;
          } else {
            mem_imm(0x81, 0x25, pte, ~1u);
          }
          break;
        default:                                                 // the other address space (a CR3 load)
          e.bytes({0x0F, 0x20, 0xD8, 0x35});
          e.d(pd ^ (pd + kPd2Off));
          e.bytes({0x0F, 0x22, 0xD8});                           // mov eax, cr3 ; xor eax ; mov cr3, eax
          deferred.clear();
          deferred_cr3 = false;
          continue;
      }
      // (A directory entry: INVLPG covers only its page, a CR3 load all.)
      switch (g.r(4)) {
        case 0: if (dir) reload_cr3(); else if (down || g.r(2)) invlpg(la); break;
        case 1: if (down || g.r(2)) reload_cr3(); break;
        case 2: if (dir) deferred_cr3 |= down; else if (down) deferred.push_back(la); break;
        default: if (dir) deferred_cr3 |= down; else if (down) deferred_cr3 = true; break;
      }
    }
    for (u32 la : deferred) invlpg(la);
    if (deferred_cr3) reload_cr3();
    std::swap(body.out, e.out);
    e.bytes({0x36, 0x83, 0x3D});                                 // cmp dword ss:[kPasses], left
    e.d(kPasses);
    e.b(u8(left));
    e.bytes({0x0F, 0x85});                                       // jne past this pass's part
    e.d(u32(body.out.size() + 2));
    e.out.insert(e.out.end(), body.out.begin(), body.out.end());
    e.bytes({0x58, 0xCF});                                       // pop eax ; iret
  }
  e.bytes({0x58, 0xCF});
  return e.out;
}

constexpr u32 kTable = 0x20000;    // code offset -> next instruction's EIP (0: none)
constexpr u32 kFaultCommon = 0x9000;

struct FuzzResult {
  u64 insns = 0;
  bool diverged = false;
  bool outside_ram = false;
  std::string message;
  std::string what;  // user, kernel, big (POPEK_FUZZ_DEBUG)
};

// One fuzz machine per engine variant, reused across sequences.
struct FuzzVm {
  test::TestVm vm;
  u64 last_icount = 0;
  explicit FuzzVm(const test::EngineKind& k) : vm(k) {}
  // Page tables, GDT, IDT and handlers: garbage code may have written them.
  // `user`: the page directory is `pd`, with the wide pages, and the
  // second address space's at pd + kPd2Off; the paging structures are
  // writable there (supervisor).
  void reset_tables(bool user, u32 pd = kPd) {
    // Kernel code and data, user code and data (DPL 3), a 32-bit TSS.
    vm.ring3_gdt(kTss, kKernelStack);
    for (u32 v = 0; v < 256; v++) vm.set_gate(v, test::kHandlers + v * 16);

    // Page tables: identity, one page absent, one read-only (CR0.WP), the
    // tables read-only.
    // (User pages for the user-mode sequences: all but the system's.)
    // (The whole directory: a sequence with paging off may have written any of it.)
    std::vector<u32> table(1024, 0);
    table[0] = kPt | 7;
    if (user)
      for (u32 k = 0; k < kWidePts; k++) table[1 + k] = (kWidePt + k * 0x1000) | 7;
    vm.pm.write_bytes(pd, table.data(), 4096);
    if (user) vm.pm.write_bytes(pd + kPd2Off, table.data(), 4096);
    for (u32 p = 0; p < 1024; p++) {
      u32 pte = (p << 12) | (supervisor_page(p << 12) ? 3 : 7);
      if (p << 12 == kAbsent) pte = 0;
      if (p << 12 == kReadOnly) pte = (p << 12) | 5;
      // The paging structures themselves are read-only: a write to them
      // without INVLPG leaves which translation the CPU uses undefined (each
      // engine's TLB may keep a different set), which lockstep cannot judge.
      // (User mode cannot write them: there only the kernel's INT 0x80
      // handler does, invalidating as it must.)
      if (p << 12 == kPd || p << 12 == kPt) pte = (p << 12) | 1;
      if (user && user_system_page(p << 12, pd)) pte = (p << 12) | 3;
      table[p] = pte;
    }
    vm.pm.write_bytes(kPt, table.data(), 4096);
    if (user) {
      for (u32 k = 0; k < kWidePts; k++) {
        for (u32 i = 0; i < 1024; i++) table[i] = (kPool + ((k * 1024 + i) % kPoolFrames) * 0x1000) | 7;
        vm.pm.write_bytes(kWidePt + k * 0x1000, table.data(), 4096);
      }
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
  // Instruction boundaries for the fault handler (kTable).
  void resume_table(const std::vector<u8>& code, u32 start, bool user) {
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
  }
  // Segments, descriptor tables, control registers, CPL.
  void system_state(bool paging, bool user, u32 pd) {
    CpuState& s = vm.s;
    vm.ring3_segments(kTss, user);
    s.cr3 = pd;
    s.cr0 = CR0_PE | CR0_ET | (paging ? CR0_PG | CR0_WP : 0);
    s.cr4 = 0;
    s.intr_shadow = 0;
  }
  bool mmx = false;  // sequences with MMX instructions
  bool frames = false;  // sequences with runs of [EBP/ESP + d8] operands
  bool x87 = false;  // sequences with x87 instructions (and a random FPU state)
  FuzzResult run(u32 seed, const std::string& name) {
    Gen g(seed);
    g.mmx = mmx;
    g.frames = frames;
    g.x87 = x87;
    const u64 cap = vm.kind.opt.user_window_cap;
    // Seeds 3 mod 4 end in a loop that is one block when the sequence has
    // no transfer (bt's loop flags: the back edge leaves the flags as the
    // compare's recipe), so they are shorter.
    const bool loop = seed % 4 == 3;
    // A third of the sequences with paging on run in user mode (CPL 3: bt
    // addresses the user window there; privileged instructions fault).
    const bool user = seed % 5 != 0 && seed % 3 == 1;
    // (What only user-mode sequences draw comes first: the others' stay as they were.)
    bool kernel = false, big = false;
    u32 passes = seed % 4 == 3 ? 3 : 1 + seed % 2;  // (every other sequence: CI's time)
    if (user) {
      g.user = true;
      g.hot = 1u << g.r(10);  // 1 to 512 pages
      g.hot_base = g.r(kWidePages);
      // Between passes the kernel changes page tables (two or three passes:
      // a change and then another, or its undoing).
      kernel = !loop && g.r(3) != 0;
      if (kernel) passes = 2 + g.r(2);
      // Where the variant's window is small: past its cap at once, and back
      // to the pages before it (the TLB still holds them, the window not).
      big = !loop && cap <= 1024 && g.r(8) == 0;
    }
    u64 limit = 5000;  // instructions a sequence may run
    if (big) limit += 2 * g.beyond_cap(u32(cap) + 16, 16, 4, false);
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
      // (With the kernel's changes: dec ; int 0x80 ; jz end ; ..., the
      // kernel's entry after the last pass only reads the entries.)
      g.b(0xFF);
      g.b(0x0D);
      g.d(kPasses);
      if (kernel) g.bytes({0xCD, 0x80});
      g.b(0x74);
      g.b(10);
      g.b(0xB9);
      g.d(17);
      g.b(0xE9);
      g.d(u32(-i32(g.out.size() + 4)));
      g.b(0xF4);
    }
    const std::vector<u8> code = g.out;
    if (std::getenv("POPEK_FUZZ_DUMP")) {
      std::printf("seed %u code:", seed);
      for (u8 c : code) std::printf(" %02x", c);
      std::printf("\n");
    }
    const u32 pd = user ? kUserPd + seed % kUserPds * 0x1000 : kPd;
    const std::vector<u8> kcode = kernel ? kernel_code(g, passes, pd) : std::vector<u8>{};
    const u32 start = g.r(4) == 0 ? kCode + 0x1000 - u32(code.size()) / 2 : kCode;
    resume_table(code, start, user);
    std::vector<u8> junk(0x12000);  // all the data pages, the absent one included
    for (auto& c : junk) c = u8(g.r(256));
    vm.pm.write_bytes(kData, junk.data(), junk.size());
    vm.pm.write_bytes(kReadOnly, junk.data() + 0x1000, 0x1000);
    if (x87) test::x87fuzz::write_tables([&](u32 at, const void* p, size_t n) { vm.pm.write_bytes(at, p, n); });
    vm.pm.write_bytes(kCode, std::vector<u8>(0x2000, 0xF4).data(), 0x2000);
    reset_tables(user, pd);
    std::vector<u8> stack(0x1000);
    for (auto& c : stack) c = u8(g.r(256));
    vm.pm.write_bytes(test::kStackTop - 0x1000, stack.data(), stack.size());
    vm.code(start, code);
    vm.pm.write_bytes(kPasses, &passes, 4);
    if (kernel) {
      vm.code(kSyscall, kcode);
      const u64 gate = (kSyscall & 0xFFFF) | (u64(0x08) << 16) | (u64(0xEE00) << 32) | (u64(kSyscall >> 16) << 48);
      vm.pm.write_bytes(test::kIdt + 0x80 * 8, &gate, 8);  // DPL 3
    }
    // Everything a previous sequence may have changed (it may have run
    // garbage: segment loads, LGDT...), so that a seed reproduces alone.
    CpuState& s = vm.s;
    system_state(seed % 5 != 0, user, pd);
    s.eip = start;
    for (unsigned r = 0; r < 8; r++) s.gpr[r] = g.rng();
    s.gpr[EBX] = kData + g.r(0x1000);
    s.gpr[ESI] = kData + g.r(0x1000);
    s.gpr[EDI] = kData + g.r(0x1000);
    s.gpr[ECX] = g.r(64);
    s.gpr[ESP] = test::kStackTop - 4 * g.r(64);
    s.eflags = FLAGS_FIXED1 | (g.rng() & (CF | PF | AF | ZF | SF | OF));
    if (x87) {
      // The FPU as some program left it; now and then #NM (TS, EM), #MF or FERR# (NE).
      // (Every other sequence from a state where most instructions take bt's inline path.)
      const bool friendly = seed % 2 == 0;
      test::x87fuzz::random_state(g.rng, s.fpu, friendly);
      if (!friendly && g.r(12) == 0) s.cr0 |= CR0_TS;
      if (!friendly && g.r(24) == 0) s.cr0 |= CR0_EM;
      if (g.r(2)) s.cr0 |= CR0_NE;
      if (g.r(2)) s.cr0 |= CR0_MP;
    }
    if (user) {
      // Pointers into the wide pages; the pool's contents (cheaply: 128 KiB).
      for (unsigned r : {EBX, ESI, EDI})
        if (g.r(3) == 0) s.gpr[r] = g.wide_page() + g.r(0x1000);
      std::vector<u64> pool(kPoolFrames * 512);
      u64 x = g.rng() | 1;
      for (auto& v : pool) {
        x ^= x << 13, x ^= x >> 7, x ^= x << 17;
        v = x;
      }
      vm.pm.write_bytes(kPool, pool.data(), pool.size() * 8);
    }
    s.seg[FS].base = 0x100;
    s.seg[GS].base = 0x200;
    // Without paging nothing faults past RAM: ES (REP destinations) ends at
    // 4 MiB, so that a REP that garbage gave a huge count stops there.
    if (!(s.cr0 & CR0_PG)) s.seg[ES].limit = 0x3FFFFF;
    s.halted = s.shutdown = false;
    FuzzResult res;
    res.what = std::string(user ? " user" : "") + (kernel ? " kernel" : "") + (big ? " big" : "") +
               " passes " + std::to_string(passes);
    const u64 before = s.icount;
    try {
      vm.state_set();
      const char* tr = std::getenv("POPEK_FUZZ_TRACE_SEED");
      if (tr && u32(std::atoi(tr)) == seed) {
        if (!vm.eng) vm.run(0);
        vm.eng->set_trace(stderr);
      }
      // (At most 5,000 instructions, more past the window's cap: a sequence
      // that rewrote its own way out loops.)
      // Loop seeds run in short slices: the budget runs out at the loop's
      // entry too (its exit then recomputes the flags the back edge left).
      const u64 slice = seed % 4 == 3 ? 5 + seed / 4 % 40 : 500;
      for (u64 done = 0; done < limit && !s.halted && !s.shutdown; done += slice) vm.run(slice);
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
