/* A file mapped MAP_SHARED, as databases and loaders use it: writes through
 * one mapping are seen at once by a second mapping of the same file (and by a
 * mapping at a page offset), reach the file (msync, then read() compares
 * every byte), and pwrite()s to the file show in the mappings. A MAP_PRIVATE
 * mapping sees the file until it writes a page, and its writes never reach
 * the file. Truncating the file under the mapping makes the pages past the
 * end raise SIGBUS; growing it back gives zeros. The file is reopened and
 * mapped anew each round. Argument: rounds (default 4); the file lives in
 * the current directory. */
#define _GNU_SOURCE
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include "rp.h"

static inline uint32_t val(size_t i, uint32_t t) { return (uint32_t)i * 2654435761u + t * 0x9E3779B9u; }

int main(int argc, char **argv) {
  rp_start("fmap");
  rp_probe_install();
  long rounds = rp_arg(argc, argv, 4);
  const char *path = "rp-fmap.dat";
  const size_t len = 2 * 1024 * 1024, words = len / 4;
  uint32_t *buf = malloc(len);
  unlink(path);
  for (long r = 0; r < rounds; r++) {
    int fd = open(path, O_RDWR | O_CREAT, 0644);
    CHECK(fd >= 0, "round %ld: open failed", r);
    if (fd < 0) return rp_end();
    CHECK(ftruncate(fd, len) == 0, "round %ld: ftruncate failed", r);
    uint32_t *m1 = mmap(0, len, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    const uint32_t *m2 = mmap(0, len, PROT_READ, MAP_SHARED, fd, 0);
    CHECK(m1 != MAP_FAILED && m2 != MAP_FAILED && m1 != m2, "round %ld: mmap failed", r);
    if (m1 == MAP_FAILED || m2 == MAP_FAILED) return rp_end();
    /* The previous round's data is in the file (or zeros in round 0). */
    size_t wrong = 0;
    for (size_t i = 0; i < words; i++) wrong += m2[i] != (r ? val(i, r - 1) : 0);
    CHECK(wrong == 0, "round %ld: %zu words of the previous round's file wrong", r, wrong);

    /* Writes through m1, seen through m2 at once. */
    for (size_t i = 0; i < words; i++) m1[i] = val(i, r);
    wrong = 0;
    for (size_t i = 0; i < words; i++) wrong += m2[i] != val(i, r);
    CHECK(wrong == 0, "round %ld: second mapping misses %zu words", r, wrong);
    CHECK(msync(m1, len, MS_SYNC) == 0, "round %ld: msync failed", r);
    memset(buf, 0, len);
    CHECK(pread(fd, buf, len, 0) == (ssize_t)len, "round %ld: read failed", r);
    CHECK(memcmp(buf, m2, len) == 0, "round %ld: read() differs from the mapping", r);

    /* A mapping at a page offset (pages 3.. of the file). */
    const size_t po = 3 + r % 4;
    const uint32_t *m3 = mmap(0, len - po * PAGE, PROT_READ, MAP_SHARED, fd, po * PAGE);
    CHECK(m3 != MAP_FAILED && m3[0] == val(po * PAGE / 4, r) && m3[words - po * PAGE / 4 - 1] == val(words - 1, r),
          "round %ld: mapping at file offset %zu pages wrong", r, po);

    /* pwrite to the file: seen in every mapping. */
    for (size_t i = 0; i < 1024; i++) buf[i] = ~val(i, r);
    size_t at = (PAGE * 10 + 8 * r);
    CHECK(pwrite(fd, buf, 4096, at) == 4096, "round %ld: pwrite failed", r);
    wrong = 0;
    for (size_t i = 0; i < 1024; i++) {
      size_t w = at / 4 + i;
      wrong += m1[w] != ~val(i, r) || m2[w] != ~val(i, r) || m3[w - po * PAGE / 4] != ~val(i, r);
    }
    CHECK(wrong == 0, "round %ld: pwrite not seen in the mappings (%zu words)", r, wrong);
    for (size_t i = 0; i < 1024; i++) m1[at / 4 + i] = val(at / 4 + i, r);

    /* MAP_PRIVATE: sees shared writes to pages it has not written; its own
     * writes stay private. */
    uint32_t *pv = mmap(0, len, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, 0);
    CHECK(pv != MAP_FAILED && pv[5] == val(5, r), "round %ld: private mapping wrong", r);
    pv[PAGE / 4 * 20] = 0xdeadbeef;  /* page 20 becomes a private copy */
    m1[PAGE / 4 * 20 + 1] = 0x1234;  /* not seen in pv's copy */
    m1[PAGE / 4 * 21] = 0x5678;      /* page 21 not copied: seen */
    CHECK(pv[PAGE / 4 * 20 + 1] == val(PAGE / 4 * 20 + 1, r), "round %ld: private copy saw a later shared write", r);
    CHECK(pv[PAGE / 4 * 21] == 0x5678, "round %ld: private mapping missed a shared write to an unwritten page", r);
    CHECK(m2[PAGE / 4 * 20] == val(PAGE / 4 * 20, r), "round %ld: private write reached the file", r);
    m1[PAGE / 4 * 20 + 1] = val(PAGE / 4 * 20 + 1, r);
    m1[PAGE / 4 * 21] = val(PAGE / 4 * 21, r);
    munmap(pv, len);

    /* Truncate under the mapping: SIGBUS past the end; grow back: zeros. */
    CHECK(ftruncate(fd, len / 2) == 0, "round %ld: shrinking the file failed", r);
    CHECK(rp_probe_read((const char *)m2 + len / 2 - 1) == 0, "round %ld: last page before the end not readable", r);
    CHECK(rp_probe_read((const char *)m2 + len / 2) == SIGBUS, "round %ld: read past the end did not raise SIGBUS", r);
    CHECK(rp_probe_write((char *)m1 + len - 1) == SIGBUS, "round %ld: write past the end did not raise SIGBUS", r);
    CHECK(ftruncate(fd, len) == 0, "round %ld: growing the file failed", r);
    wrong = 0;
    for (size_t i = words / 2; i < words; i++) wrong += m2[i] != 0;
    CHECK(wrong == 0, "round %ld: %zu words not zero after growing the file back", r, wrong);
    for (size_t i = words / 2; i < words; i++) m1[i] = val(i, r);

    CHECK(msync(m1, len, MS_SYNC) == 0, "round %ld: msync failed", r);
    munmap(m1, len);
    munmap((void *)m2, len);
    munmap((void *)m3, len - po * PAGE);
    /* After unmapping: the file holds the round's data. */
    CHECK(pread(fd, buf, len, 0) == (ssize_t)len, "round %ld: read failed", r);
    wrong = 0;
    for (size_t i = 0; i < words; i++) wrong += buf[i] != val(i, r);
    CHECK(wrong == 0, "round %ld: file has %zu wrong words after munmap", r, wrong);
    close(fd);
    printf("round %ld: file hash %08x\n", r, rp_hash(buf, words));
  }
  unlink(path);
  return rp_end();
}
