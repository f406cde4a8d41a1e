/* Heap sort of n pseudo-random 32-bit words (argument: n; default 2,500,000,
 * a 10 MB array): a long-running user process with a large working set (the
 * case that hung bt's user window when its capacity clear left pages the
 * TLB still held). Checks the result is sorted and a permutation (same sum
 * and xor as the input). */
#include "rp.h"

static uint32_t x = 2463534242u;
static uint32_t xs(void) { x ^= x << 13; x ^= x >> 17; x ^= x << 5; return x; }
static void sift(uint32_t *v, size_t root, size_t end) {
  while (2 * root + 1 <= end) {
    size_t c = 2 * root + 1;
    if (c + 1 <= end && v[c] < v[c + 1]) c++;
    if (v[root] < v[c]) { uint32_t t = v[root]; v[root] = v[c]; v[c] = t; root = c; } else return;
  }
}
int main(int argc, char **argv) {
  rp_start("hs");
  size_t n = argc > 1 ? strtoul(argv[1], 0, 0) : 2500000;
  uint32_t *v = malloc(n * sizeof *v);
  if (!v || n < 2) { printf("FAIL hs: no memory or n < 2\n"); return 1; }
  uint32_t sum = 0, xr = 0;
  for (size_t i = 0; i < n; i++) { v[i] = xs(); sum += v[i]; xr ^= v[i]; }
  printf("filled %zu\n", n);
  for (size_t s = n / 2; s-- > 0;) sift(v, s, n - 1);
  printf("heap built, max %08x\n", v[0]);
  for (size_t end = n - 1; end > 0; end--) {
    uint32_t t = v[0]; v[0] = v[end]; v[end] = t; sift(v, 0, end - 1);
  }
  uint32_t sum2 = v[0], xr2 = v[0];
  for (size_t i = 1; i < n; i++) {
    sum2 += v[i]; xr2 ^= v[i];
    if (v[i - 1] > v[i]) { rp_fail("NOT SORTED at %zu", i); break; }
  }
  CHECK(sum == sum2 && xr == xr2, "not a permutation: sum %08x/%08x xor %08x/%08x", sum, sum2, xr, xr2);
  printf("sorted: min %08x median %08x max %08x hash %08x\n", v[0], v[n / 2], v[n - 1], rp_hash(v, n));
  return rp_end();
}
