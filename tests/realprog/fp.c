/* fp: floating-point work as gcc -m32 compiles it for a CPU without SSE:
 * every double, float and long double goes through the x87 (FLD/FSTP of
 * all formats, FMUL/FADD/FDIV, FXCH, FUCOMIP, FISTP with FLDCW, FILD, FXAM,
 * FNSTSW, libm's FSQRT/FYL2X/F2XM1/FPATAN...). An FFT and back, a matrix
 * product, libm over a range, printf/strtod of doubles, conversions to and
 * from integers in every rounding mode, float and long double arithmetic,
 * and the special values (NaN, infinities, denormals, -0). Checks what has
 * an exact answer; prints digests of the exact bits of the rest, which must
 * be the same on every engine (realprog_test.py compares the outputs).
 * Usage: fp [ROUNDS] */
#include <fenv.h>
#include <float.h>
#include <math.h>

#include "rp.h"

static volatile double g_one = 1.0;

static uint64_t bits(double x) {
  uint64_t u;
  memcpy(&u, &x, 8);
  return u;
}
static uint64_t mix(uint64_t h, uint64_t v) { return (h ^ v) * 0x100000001B3ull + (v >> 29); }

#define N 1024
static double re[N], im[N], in[N];

static void fft(int inverse) {
  for (int i = 1, j = 0; i < N; i++) {
    int bit = N >> 1;
    for (; j & bit; bit >>= 1) j ^= bit;
    j ^= bit;
    if (i < j) {
      double t = re[i]; re[i] = re[j]; re[j] = t;
      t = im[i]; im[i] = im[j]; im[j] = t;
    }
  }
  for (int len = 2; len <= N; len <<= 1) {
    double ang = 2 * M_PI / len * (inverse ? 1 : -1), wr = cos(ang), wi = sin(ang);
    for (int i = 0; i < N; i += len) {
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
    for (int i = 0; i < N; i++) { re[i] /= N; im[i] /= N; }
}

static void part_fft(int rounds) {
  uint64_t h = 0;
  for (int i = 0; i < N; i++) in[i] = sin(i * 0.01) + 0.5 * cos(i * 0.37) + (i % 7) * 0.125;
  for (int r = 0; r < rounds; r++) {
    for (int i = 0; i < N; i++) { re[i] = in[i] * g_one; im[i] = r * 1e-3; }
    fft(0);
    for (int i = 0; i < N; i += 37) h = mix(mix(h, bits(re[i])), bits(im[i]));
    fft(1);
    double err = 0;
    for (int i = 0; i < N; i++) err = fmax(err, fabs(re[i] - in[i]) + fabs(im[i] - r * 1e-3));
    CHECK(err < 1e-10, "fft round %d: error %g", r, err);
  }
  printf("fft %016llx\n", (unsigned long long)h);
}

static void part_matrix(int rounds) {
  enum { M = 48 };
  static double a[M][M], b[M][M], c[M][M];
  static float fa[M][M], fc[M][M];
  uint64_t h = 0;
  for (int i = 0; i < M; i++)
    for (int j = 0; j < M; j++) {
      a[i][j] = ((i * 31 + j * 17) % 97) / 7.0 - 6.5;
      b[i][j] = ((i * 13 + j * 29) % 89) / 3.0 - 14.0;
      fa[i][j] = (float)a[i][j] * 0.1f;
    }
  for (int r = 0; r < rounds; r++) {
    for (int i = 0; i < M; i++)
      for (int j = 0; j < M; j++) {
        double s = 0;
        float fs = 0;
        for (int k = 0; k < M; k++) {
          s += a[i][k] * b[k][j];
          fs += fa[i][k] * fa[k][j];
        }
        c[i][j] = s * (1 + r * 1e-7);
        fc[i][j] = fs;
      }
    for (int i = 0; i < M; i += 5) h = mix(mix(h, bits(c[i][(i * 7) % M])), (uint32_t)(fc[i][i] * 1e6f));
  }
  printf("matrix %016llx %.17g %.9g\n", (unsigned long long)h, c[3][5], (double)fc[7][9]);
}

static void part_libm(void) {
  uint64_t h = 0;
  for (int k = 1; k <= 2000; k++) {
    double x = k * 0.0137 * g_one;
    double v[] = {sin(x), cos(x), tan(x * 0.1), exp(-x * 0.1), log(x), log10(x), atan2(x, 3.0), pow(x, 0.37),
                  sqrt(x), cbrt(x), hypot(x, 1.5), floor(x * 3.3), ceil(x * 3.3), fmod(x, 1.7), expm1(x * 0.01),
                  log1p(x), asin(1 / (x + 1)), acos(1 / (x + 1)), sinh(x * 0.1), tanh(x * 0.1)};
    for (unsigned j = 0; j < sizeof v / sizeof v[0]; j++) h = mix(h, bits(v[j]));
  }
  CHECK(sqrt(2.0) * sqrt(2.0) - 2.0 < 1e-15, "sqrt");
  CHECK(fabs(sin(M_PI / 6) - 0.5) < 1e-15, "sin(pi/6) = %.17g", sin(M_PI / 6));
  printf("libm %016llx\n", (unsigned long long)h);
}

static void part_print(void) {
  uint64_t h = 0;
  char buf[64];
  for (int k = 0; k < 3000; k++) {
    double x = (k + 1) * 1.000123456789e-3 * g_one;
    x = k % 3 ? x * x * 1e10 : 1.0 / x;
    if (k % 7 == 0) x = -x * 1e-300;
    snprintf(buf, sizeof buf, "%.17g", x);
    double y = strtod(buf, NULL);
    CHECK(bits(x) == bits(y), "%s reads back as %.17g", buf, y);
    for (char* p = buf; *p; p++) h = mix(h, (unsigned char)*p);
  }
  printf("print %016llx %.6f %e %g %a\n", (unsigned long long)h, M_PI, 6.02214076e23, 1.0 / 3, 0.1);
}

static void part_conv(void) {
  static const int modes[] = {FE_TONEAREST, FE_DOWNWARD, FE_UPWARD, FE_TOWARDZERO};
  uint64_t h = 0;
  int64_t acc = 0;
  for (int m = 0; m < 4; m++) {
    fesetround(modes[m]);
    for (int k = 0; k < 4000; k++) {
      double x = (k - 2000) * 1.37 * g_one + 0.5;
      int i = (int)x;                   /* truncation whatever the mode (FLDCW around FISTP) */
      long r = lrint(x);                /* the current mode */
      long long l = llrint(x * 4096.0);
      float f = (float)(x / 3.0);       /* rounded to float in the mode */
      acc += i + r + (l >> 6);
      h = mix(mix(h, bits((double)f)), bits(x / 7.0));
    }
  }
  fesetround(FE_TONEAREST);
  CHECK((int)2.9 == 2 && (int)-2.9 == -2 && lrint(2.5) == 2 && lrint(3.5) == 4, "conversions");
  printf("conv %016llx %lld\n", (unsigned long long)h, (long long)acc);
}

static void part_special(void) {
  volatile double zero = 0, one = 1, big = DBL_MAX, tiny = DBL_MIN;
  double nan1 = zero / zero, inf = one / zero, den = tiny / 1024;
  CHECK(isnan(nan1) && isinf(inf) && inf > 0 && fpclassify(den) == FP_SUBNORMAL, "classes");
  volatile double o = big * 2, u = tiny * tiny;  /* (rounded to double when stored) */
  CHECK(isinf(o) && u == 0 && signbit(-zero) && !signbit(zero), "overflow/underflow");
  CHECK(!(nan1 == nan1) && !(nan1 < 1) && !(nan1 > 1) && nan1 != 1, "NaN compares");
  CHECK(-zero == zero && 1 / -zero < 0, "-0");
  feclearexcept(FE_ALL_EXCEPT);
  volatile double q = one / 3;
  CHECK(fetestexcept(FE_INEXACT) && !fetestexcept(FE_DIVBYZERO), "inexact after 1/3 (%g)", q);
  feclearexcept(FE_ALL_EXCEPT);
  q = one / zero;
  CHECK(fetestexcept(FE_DIVBYZERO), "divide by zero flag");
  feclearexcept(FE_ALL_EXCEPT);
  q = zero / zero;
  CHECK(fetestexcept(FE_INVALID), "invalid flag");
  long double ld = 1.0L / 3, ls = 0;
  for (int k = 0; k < 1000; k++) ls += ld * k;
  uint64_t lm;
  uint16_t le;
  memcpy(&lm, &ls, 8);
  memcpy(&le, (char*)&ls + 8, 2);
  printf("special %.17g %g %g %g %016llx:%04x\n", den, nan1, inf, -zero, (unsigned long long)lm, le);
}

int main(int argc, char** argv) {
  rp_start("fp");
  int rounds = (int)rp_arg(argc, argv, 40);
  part_fft(rounds);
  part_matrix(rounds / 4 + 1);
  part_libm();
  part_print();
  part_conv();
  part_special();
  return rp_end();
}
