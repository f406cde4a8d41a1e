/* mremap as growing buffers and allocators use it: a mapping grown in place,
 * grown where a neighbour blocks it (MREMAP_MAYMOVE moves it), moved to a
 * chosen address (MREMAP_FIXED), shrunk, and a vector doubled from 64 KiB to
 * several MiB. The contents must move with the pages; the new tail must be
 * zero and writable; the old range, once moved or cut off, must fault (a
 * stale translation would still reach the old pages). Argument: rounds
 * (default 4). */
#define _GNU_SOURCE
#include <sys/mman.h>
#include "rp.h"

static inline uint32_t val(size_t i, uint32_t t) { return (uint32_t)i * 2654435761u ^ t << 24; }
static void fill(uint32_t *p, size_t from, size_t to, uint32_t t) { for (size_t i = from; i < to; i++) p[i] = val(i, t); }
static size_t bad(const uint32_t *p, size_t from, size_t to, uint32_t t) {
  for (size_t i = from; i < to; i++) if (p[i] != val(i, t)) return i;
  return to;
}
static size_t nonzero(const uint32_t *p, size_t from, size_t to) {
  size_t n = 0;
  for (size_t i = from; i < to; i++) n += p[i] != 0;
  return n;
}
static void *map(void *at, size_t len, int flags) {
  return mmap(at, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | flags, -1, 0);
}

int main(int argc, char **argv) {
  rp_start("mremap");
  rp_probe_install();
  long rounds = rp_arg(argc, argv, 4);
  const size_t MiB = 1024 * 1024;
  for (long r = 0; r < rounds; r++) {
    uint32_t t = r * 8;
    /* 1. Grow in place: reserve 4 MiB, keep 1 MiB, grow to 3 MiB (room is
     *    free behind it, so it stays). */
    char *res = map(0, 4 * MiB, 0);
    CHECK(res != MAP_FAILED, "round %ld: mmap failed", r);
    if (res == MAP_FAILED) return rp_end();
    munmap(res + MiB, 3 * MiB);
    uint32_t *a = (uint32_t *)res;
    fill(a, 0, MiB / 4, t);
    uint32_t *b = mremap(a, MiB, 3 * MiB, 0);
    CHECK(b == a, "round %ld: grow in place failed", r);
    if (b != a) return rp_end();
    CHECK(bad(b, 0, MiB / 4, t) == MiB / 4, "round %ld: in-place grow lost data", r);
    CHECK(nonzero(b, MiB / 4, 3 * MiB / 4) == 0, "round %ld: in-place grow: new tail not zero", r);
    fill(b, MiB / 4, 3 * MiB / 4, t);

    /* 2. A neighbour right behind blocks growth: MAYMOVE moves the pages. */
    char *nb = map((char *)b + 3 * MiB, PAGE, MAP_FIXED_NOREPLACE);
    CHECK(nb == (char *)b + 3 * MiB, "round %ld: could not place the neighbour", r);
    nb[0] = 42;
    CHECK(mremap(b, 3 * MiB, 5 * MiB, 0) == MAP_FAILED, "round %ld: grow without MAYMOVE over a neighbour succeeded", r);
    uint32_t *c = mremap(b, 3 * MiB, 5 * MiB, MREMAP_MAYMOVE);
    CHECK(c != MAP_FAILED && c != b, "round %ld: MAYMOVE grow did not move", r);
    if (c == MAP_FAILED) return rp_end();
    CHECK(bad(c, 0, 3 * MiB / 4, t) == 3 * MiB / 4, "round %ld: moved mapping lost data at word %zu", r, bad(c, 0, 3 * MiB / 4, t));
    CHECK(nonzero(c, 3 * MiB / 4, 5 * MiB / 4) == 0, "round %ld: moved mapping: new tail not zero", r);
    CHECK(rp_probe_read((char *)b) == SIGSEGV, "round %ld: old start still readable after the move", r);
    CHECK(rp_probe_write((char *)b + 3 * MiB - 1) == SIGSEGV, "round %ld: old end still writable after the move", r);
    CHECK(rp_probe_read((char *)b + MiB + 5 * PAGE) == SIGSEGV, "round %ld: old middle still readable after the move", r);
    CHECK(nb[0] == 42, "round %ld: the neighbour changed", r);
    munmap(nb, PAGE);
    fill(c, 3 * MiB / 4, 5 * MiB / 4, t + 1);

    /* 3. MREMAP_FIXED to a chosen (reserved) address. */
    char *dst = map(0, 6 * MiB, 0);
    CHECK(dst != MAP_FAILED, "round %ld: reserving a destination failed", r);
    dst[0] = 1;  /* this page is replaced by the move */
    size_t off = PAGE * (r % 3);
    uint32_t *d = mremap(c, 5 * MiB, 5 * MiB, MREMAP_MAYMOVE | MREMAP_FIXED, dst + off);
    CHECK(d == (uint32_t *)(dst + off), "round %ld: MREMAP_FIXED went elsewhere", r);
    if (d == MAP_FAILED) return rp_end();
    CHECK(bad(d, 0, 3 * MiB / 4, t) == 3 * MiB / 4 && bad(d, 3 * MiB / 4, 5 * MiB / 4, t + 1) == 5 * MiB / 4,
          "round %ld: MREMAP_FIXED lost data", r);
    CHECK(rp_probe_read((char *)c + 4 * MiB) == SIGSEGV, "round %ld: old range readable after MREMAP_FIXED", r);

    /* 4. Shrink: the cut-off part faults, the rest stays. */
    uint32_t *e = mremap(d, 5 * MiB, 2 * MiB + PAGE, 0);
    CHECK(e == d, "round %ld: shrink moved the mapping", r);
    CHECK(bad(e, 0, (2 * MiB + PAGE) / 4, t) == (2 * MiB + PAGE) / 4, "round %ld: shrink lost data", r);
    CHECK(rp_probe_read((char *)e + 2 * MiB + PAGE) == SIGSEGV, "round %ld: page after the shrunk end readable", r);
    CHECK(rp_probe_write((char *)e + 4 * MiB) == SIGSEGV, "round %ld: cut-off page still writable", r);
    munmap(dst, 6 * MiB + PAGE * 3);

    /* 5. A vector doubling from 64 KiB, with a mapping allocated after each
     *    step in the way (so most steps move). */
    size_t len = 64 * 1024;
    uint32_t *v = map(0, len, 0);
    fill(v, 0, len / 4, t + 2);
    char *blockers[16];
    int nblk = 0;
    while (len < (r % 2 ? 8 : 4) * MiB) {
      uint32_t *old = v;
      v = mremap(v, len, len * 2, MREMAP_MAYMOVE);
      CHECK(v != MAP_FAILED, "round %ld: doubling to %zu KiB failed", r, len / 512);
      if (v == MAP_FAILED) return rp_end();
      size_t bw = bad(v, 0, len / 4, t + 2);
      CHECK(bw == len / 4, "round %ld: doubling to %zu KiB lost word %zu", r, len / 512, bw);
      if (v != old) CHECK(rp_probe_read((char *)old + len - 1) == SIGSEGV, "round %ld: old vector still readable", r);
      fill(v, len / 4, len / 2, t + 2);
      len *= 2;
      blockers[nblk] = map((char *)v + len, PAGE, MAP_FIXED_NOREPLACE);
      if (blockers[nblk] != MAP_FAILED) nblk++;
    }
    CHECK(bad(v, 0, len / 4, t + 2) == len / 4, "round %ld: final vector wrong", r);
    munmap(v, len);
    for (int i = 0; i < nblk; i++) munmap(blockers[i], PAGE);
    printf("round %ld done: vector of %zu KiB\n", r, len / 1024);
  }
  return rp_end();
}
