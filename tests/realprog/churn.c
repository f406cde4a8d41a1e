/* Address-space churn as allocators and runtimes cause it: large blocks
 * malloc'd and freed (glibc serves them with mmap/munmap) in changing orders,
 * realloc growth of a large block (mremap), raw mmap/munmap with holes punched
 * in the middle of a mapping, MAP_FIXED over a live mapping, and stack growth
 * by deep recursion. Every block's data is written in full and checked; pages
 * just unmapped must fault. Argument: rounds (default 3). */
#include <sys/mman.h>
#include "rp.h"

#define MiB (1024u * 1024u)

/* Word i of a block tagged tag (cheap: the interpreter fills many MiB). */
static inline uint32_t val(uint32_t tag, size_t i) { return (uint32_t)i * 2654435761u ^ tag << 20 ^ tag; }
static void fill(uint32_t *p, size_t words, uint32_t tag) {
  for (size_t i = 0; i < words; i++) p[i] = val(tag, i);
}
/* Index of the first bad word, or words if all are right. */
static size_t bad_word(const uint32_t *p, size_t words, uint32_t tag) {
  for (size_t i = 0; i < words; i++)
    if (p[i] != val(tag, i)) return i;
  return words;
}

/* Recursion with a 1 KiB frame that the next level reads back. */
static uint32_t deep(uint32_t depth, uint32_t seed) {
  volatile uint32_t frame[256];
  for (int i = 0; i < 256; i++) frame[i] = rp_mix(depth, i, seed);
  uint32_t r = depth ? deep(depth - 1, seed) : 0;
  for (int i = 0; i < 256; i += 64) r += frame[i];
  return r;
}

int main(int argc, char **argv) {
  rp_start("churn");
  rp_probe_install();
  long rounds = rp_arg(argc, argv, 3);
  static const unsigned sizes_kib[] = {1024, 3072, 6144, 640, 4096 + 12, 10240, 2048, 1536};
  enum { NB = sizeof sizes_kib / sizeof sizes_kib[0] };
  uint32_t total_hash = 0;

  for (long r = 0; r < rounds; r++) {
    /* 1. malloc every size, fill, free in an order that changes each round,
     *    and allocate again into the holes. */
    uint32_t *blk[NB];
    size_t words[NB];
    for (int i = 0; i < NB; i++) {
      words[i] = sizes_kib[(i + r) % NB] * 1024u / 4;
      blk[i] = malloc(words[i] * 4);
      CHECK(blk[i] != NULL, "round %ld: malloc %zu KiB failed", r, words[i] / 256);
      if (!blk[i]) return rp_end();
      fill(blk[i], words[i], r * 100 + i);
    }
    for (int k = 0; k < NB; k++) {
      int i = (k * 3 + r) % NB;  /* 3 is coprime with NB = 8: a permutation */
      size_t b = bad_word(blk[i], words[i], r * 100 + i);
      CHECK(b == words[i], "round %ld: block %d (%zu KiB) word %zu wrong before free", r, i, words[i] / 256, b);
      total_hash = total_hash * 31 + rp_hash(blk[i], words[i] < 4096 ? words[i] : 4096);
      free(blk[i]);
      blk[i] = 0;
      if (k % 2 == 1) {  /* allocate into the space just freed */
        size_t w = words[i] / 2 + 1024;
        uint32_t *p = malloc(w * 4);
        CHECK(p != NULL, "round %ld: malloc into hole failed", r);
        if (p) {
          fill(p, w, r * 100 + 50 + k);
          CHECK(bad_word(p, w, r * 100 + 50 + k) == w, "round %ld: reused block %d wrong", r, k);
          free(p);
        }
      }
    }

    /* 2. realloc growth of a large block: the data moves (mremap) and stays. */
    size_t w = 256 * 1024 / 4;
    uint32_t *g = malloc(w * 4);
    fill(g, w, 7000 + r);
    while (w < (r % 2 ? 12u : 6u) * MiB / 4) {
      size_t nw = w * 2 + 4096;
      uint32_t *ng = realloc(g, nw * 4);
      CHECK(ng != NULL, "round %ld: realloc to %zu KiB failed", r, nw / 256);
      if (!ng) break;
      g = ng;
      size_t b = bad_word(g, w, 7000 + r);
      CHECK(b == w, "round %ld: realloc to %zu KiB lost word %zu", r, nw / 256, b);
      fill(g, nw, 7000 + r);
      w = nw;
    }
    g = realloc(g, 100 * 1024);  /* shrink */
    CHECK(g && bad_word(g, 100 * 256, 7000 + r) == 100 * 256, "round %ld: realloc shrink lost data", r);
    free(g);

    /* 3. Raw mmap, a hole punched in the middle, MAP_FIXED over live pages. */
    size_t len = (4 + r % 3) * MiB, pw = len / 4;
    uint32_t *m = mmap(0, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    CHECK(m != MAP_FAILED, "round %ld: mmap %zu MiB failed", r, len / MiB);
    if (m == MAP_FAILED) return rp_end();
    fill(m, pw, 9000 + r);
    size_t hole = len / 2 - 64 * 1024, hole_len = 128 * 1024 + PAGE * (r % 4);
    CHECK(munmap((char *)m + hole, hole_len) == 0, "round %ld: munmap of a hole failed", r);
    CHECK(rp_probe_read((char *)m + hole) == SIGSEGV, "round %ld: first page of the hole still readable", r);
    CHECK(rp_probe_write((char *)m + hole + hole_len - 1) == SIGSEGV, "round %ld: last byte of the hole still writable", r);
    CHECK(bad_word(m, hole / 4, 9000 + r) == hole / 4, "round %ld: data below the hole changed", r);
    size_t above = (hole + hole_len) / 4;
    for (size_t i = above; i < pw; i++)
      if (m[i] != val(9000 + r, i)) { rp_fail("round %ld: data above the hole changed at word %zu", r, i); break; }
    /* A new mapping fixed over the upper quarter: zeros, then its own data. */
    size_t q = len / 4 * 3;
    void *f = mmap((char *)m + q, len / 4, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0);
    CHECK(f == (char *)m + q, "round %ld: MAP_FIXED mmap failed", r);
    size_t nz = 0;
    for (size_t i = q / 4; i < pw; i++) nz += m[i] != 0;
    CHECK(nz == 0, "round %ld: %zu words not zero in a fresh MAP_FIXED mapping", r, nz);
    fill(m + q / 4, pw - q / 4, 9500 + r);
    CHECK(bad_word(m + q / 4, pw - q / 4, 9500 + r) == pw - q / 4, "round %ld: MAP_FIXED data wrong", r);
    CHECK(munmap(m, len) == 0, "round %ld: munmap failed", r);
    CHECK(rp_probe_read((char *)m + len - 1) == SIGSEGV, "round %ld: unmapped block still readable", r);
    CHECK(rp_probe_read((char *)m) == SIGSEGV, "round %ld: unmapped block still readable at its start", r);

    /* 4. Many small mappings, unmapped in an interleaved order. */
    enum { NS = 64 };
    char *sm[NS];
    for (int i = 0; i < NS; i++) {
      size_t l = PAGE * (1 + (i * 7 + r) % 5);
      sm[i] = mmap(0, l, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
      CHECK(sm[i] != MAP_FAILED, "round %ld: small mmap %d failed", r, i);
      if (sm[i] == MAP_FAILED) return rp_end();
      memset(sm[i], i + 1, l);
    }
    for (int k = 0; k < NS; k++) {
      int i = (k * 5 + r) % NS;
      size_t l = PAGE * (1 + (i * 7 + r) % 5);
      CHECK(sm[i][0] == i + 1 && sm[i][l - 1] == i + 1, "round %ld: small mapping %d wrong", r, i);
      munmap(sm[i], l);
      CHECK(rp_probe_read(sm[i] + l - 1) == SIGSEGV, "round %ld: small mapping %d readable after munmap", r, i);
    }

    /* 5. The stack grows (2 MiB of frames) and is checked on the way back. */
    uint32_t d = deep(2000, r), expect = 0;
    for (uint32_t k = 0; k <= 2000; k++)
      for (int i = 0; i < 256; i += 64) expect += rp_mix(k, i, r);
    CHECK(d == expect, "round %ld: stack frames corrupted (%08x)", r, d);
    printf("round %ld done\n", r);
  }
  printf("hash %08x\n", total_hash);
  return rp_end();
}
