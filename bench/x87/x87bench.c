/* x87bench: floating-point work for popek's in-guest benchmark
 * (bench/x87/run.sh). Same protocol and build as bench/cpu's cpubench.c: built
 * `gcc -m32 -O2 -static` for the guest, whose CPU has no SSE, so every double
 * is x87 code (FLD/FSTP m64, FMUL/FADD, FXCH, FUCOMIP, FISTP with FLDCW, ...),
 * and `gcc -m64 -O2` natively (SSE2: the results differ in the last bits, the
 * checks allow for that).
 *
 * Parts:
 *   fft      radix-2 complex FFT of 4096 points, forward and back
 *   matmul   96 x 96 double matrix product
 *   libm     sin, cos, exp, log, atan2, pow, sqrt over a range
 *   dtoa     printf("%.17g") and strtod of doubles, round trip
 *   conv     double <-> int conversions ((int) casts, lrint, (long long))
 * Each part prints `cpubench-check NAME DIGEST`, a hash of its results' exact
 * bits: every engine running the same i386 build must print the same.
 * Usage: x87bench [--scale S] [--parts a,b,...] [--list]
 */
#define _GNU_SOURCE
#include <math.h>
#include <stdint.h>

#include "../lib/partbench.h"

static volatile double g_one = 1.0;

static uint64_t bits(double x) {
  uint64_t u;
  memcpy(&u, &x, 8);
  return u;
}
static uint64_t mix(uint64_t h, uint64_t v) { return (h ^ v) * 0x100000001B3ull + (v >> 29); }

/* ---- fft ---- */
#define FFT_N 4096
static double fft_re[FFT_N], fft_im[FFT_N], fft_in[FFT_N];

static void fft(double* re, double* im, int n, int inverse) {
  for (int i = 1, j = 0; i < n; i++) {
    int bit = n >> 1;
    for (; j & bit; bit >>= 1) j ^= bit;
    j ^= bit;
    if (i < j) {
      double t = re[i]; re[i] = re[j]; re[j] = t;
      t = im[i]; im[i] = im[j]; im[j] = t;
    }
  }
  for (int len = 2; len <= n; len <<= 1) {
    double ang = 2 * M_PI / len * (inverse ? 1 : -1);
    double wr = cos(ang), wi = sin(ang);
    for (int i = 0; i < n; i += len) {
      double cr = 1, ci = 0;
      for (int k = 0; k < len / 2; k++) {
        double ur = re[i + k], ui = im[i + k];
        double vr = re[i + k + len / 2] * cr - im[i + k + len / 2] * ci;
        double vi = re[i + k + len / 2] * ci + im[i + k + len / 2] * cr;
        re[i + k] = ur + vr; im[i + k] = ui + vi;
        re[i + k + len / 2] = ur - vr; im[i + k + len / 2] = ui - vi;
        double t = cr * wr - ci * wi;
        ci = cr * wi + ci * wr;
        cr = t;
      }
    }
  }
  if (inverse)
    for (int i = 0; i < n; i++) { re[i] /= n; im[i] /= n; }
}

static void fft_setup(void) {
  for (int i = 0; i < FFT_N; i++) fft_in[i] = sin(i * 0.01) + 0.5 * cos(i * 0.37) + (i % 7) * 0.125;
}

static void part_fft(uint32_t iters) {
  uint64_t h = 0;
  double err = 0;
  for (uint32_t it = 0; it < iters; it++) {
    for (int i = 0; i < FFT_N; i++) { fft_re[i] = fft_in[i] * g_one; fft_im[i] = 0; }
    fft(fft_re, fft_im, FFT_N, 0);
    h = mix(h, bits(fft_re[it % FFT_N])) ^ bits(fft_im[(it * 7) % FFT_N]);
    fft(fft_re, fft_im, FFT_N, 1);
    for (int i = 0; i < FFT_N; i++) {
      double e = fabs(fft_re[i] - fft_in[i]) + fabs(fft_im[i]);
      if (e > err) err = e;
    }
  }
  if (!(err < 1e-9)) fail("round trip error %g", err);
  printf("cpubench-check fft %016llx\n", (unsigned long long)h);
}

/* ---- matmul ---- */
#define MM_N 96
static double mm_a[MM_N][MM_N], mm_b[MM_N][MM_N], mm_c[MM_N][MM_N];

static void mm_setup(void) {
  for (int i = 0; i < MM_N; i++)
    for (int j = 0; j < MM_N; j++) {
      mm_a[i][j] = (double)((i * 31 + j * 17) % 97) / 7.0 - 6.5;
      mm_b[i][j] = (double)((i * 13 + j * 29) % 89) / 3.0 - 14.0;
    }
}

static void part_matmul(uint32_t iters) {
  uint64_t h = 0;
  for (uint32_t it = 0; it < iters; it++) {
    double s = 1.0 + it * 1e-9 * g_one;
    for (int i = 0; i < MM_N; i++)
      for (int j = 0; j < MM_N; j++) {
        double acc = 0;
        for (int k = 0; k < MM_N; k++) acc += mm_a[i][k] * mm_b[k][j];
        mm_c[i][j] = acc * s;
      }
    h = mix(h, bits(mm_c[it % MM_N][(it * 5) % MM_N]));
  }
  /* The trace of A*B, computed another way. */
  double tr = 0, tr2 = 0;
  for (int i = 0; i < MM_N; i++) tr += mm_c[i][i];
  for (int k = 0; k < MM_N; k++)
    for (int i = 0; i < MM_N; i++) tr2 += mm_a[i][k] * mm_b[k][i];
  tr2 *= 1.0 + (iters - 1) * 1e-9;
  if (!(fabs(tr - tr2) <= 1e-9 * fabs(tr2) + 1e-9)) fail("trace %.17g, expected %.17g", tr, tr2);
  printf("cpubench-check matmul %016llx\n", (unsigned long long)h);
}

/* ---- libm ---- */
static void part_libm(uint32_t iters) {
  uint64_t h = 0;
  double sum = 0;
  for (uint32_t it = 0; it < iters; it++) {
    for (int k = 1; k <= 1000; k++) {
      double x = (it * 1000 + k) * 0.00137 * g_one;
      double v = sin(x) + cos(x * 0.5) + exp(-x * 0.01) + log(x + 1) + atan2(x, 3.0) + pow(x, 0.37) +
                 sqrt(x);
      sum += v;
      if (k == 500) h = mix(h, bits(v));
    }
  }
  if (!(sum > 0) || isnan(sum)) fail("sum %g", sum);
  printf("cpubench-check libm %016llx %.17g\n", (unsigned long long)h, sum);
}

/* ---- dtoa ---- */
static void part_dtoa(uint32_t iters) {
  uint64_t h = 0;
  char buf[64];
  for (uint32_t it = 0; it < iters; it++) {
    for (int k = 0; k < 100; k++) {
      double x = (it * 100 + k + 1) * 1.000123456789e-3 * g_one;
      x = k % 3 ? x * x * 1e10 : 1.0 / x;
      snprintf(buf, sizeof buf, "%.17g", x);
      double y = strtod(buf, NULL);
      if (bits(x) != bits(y)) fail("%s does not read back (%.17g)", buf, y);
      for (char* p = buf; *p; p++) h = mix(h, (unsigned char)*p);
    }
  }
  printf("cpubench-check dtoa %016llx\n", (unsigned long long)h);
}

/* ---- conv ---- */
static void part_conv(uint32_t iters) {
  uint64_t h = 0;
  int64_t acc = 0;
  for (uint32_t it = 0; it < iters; it++) {
    for (int k = 0; k < 1000; k++) {
      double x = ((int32_t)(it * 1000 + k) - 500000) * 1.37 * g_one;
      int i = (int)x;
      long long l = (long long)(x * 4096.0);
      long r = lrint(x * 0.5);
      acc += i + (l >> 8) + r;
      x = (double)i * 0.75 + (double)l * 1e-6;
      h = mix(h, bits(x));
    }
  }
  printf("cpubench-check conv %016llx %lld\n", (unsigned long long)h, (long long)acc);
}

static const struct part parts[] = {
    {"fft", fft_setup, part_fft, 60},
    {"matmul", mm_setup, part_matmul, 200},
    {"libm", NULL, part_libm, 1500},
    {"dtoa", NULL, part_dtoa, 600},
    {"conv", NULL, part_conv, 6000},
};
enum { NPARTS = sizeof parts / sizeof parts[0] };

int main(int argc, char** argv) {
  return partbench_main(argc, argv, "x87bench", "[--scale S] [--parts a,b,...] [--list]", parts, NPARTS);
}
