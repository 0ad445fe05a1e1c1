/* fastlstm's floating-point helpers: the exponential and the activations
   in arithmetic the compiler vectorises (libm's exp and tanh do not), and
   the flushing of denormal numbers. */
#ifndef FASTLSTM_FL_MATH_H
#define FASTLSTM_FL_MATH_H

#include <stdint.h>
#include <string.h>

/* float32 e^{ax} = 2^n e^r, in arithmetic the compiler vectorises: ax =
   n ln2 + r with |r| <= ln2/2 (ln2 in two parts, so that n times the first
   is exact) and 2^n put straight into the exponent bits. a is a constant
   of the caller's, so it folds into the constants. x is clamped so that
   2^n stays a normal number; a NaN passes the clamps (its comparisons are
   false) and comes out NaN. Returns r; *scale = 2^n. */
static inline float fl_reducef(float x, float a, float* scale) {
    const float shift = 12582912.0f;             /* 1.5 * 2^23 */
    const float low = (a > 0 ? -87.0f : 88.0f) / a, high = (a > 0 ? 88.0f : -87.0f) / a;
    x = x < low ? low : x;
    x = x > high ? high : x;
    float k = x * (a * 1.44269504088896341f) + shift;  /* round(ax / ln2) in low bits */
    int32_t kbits;
    memcpy(&kbits, &k, sizeof kbits);
    float n = k - shift;
    float r = a * x - n * 0.693145751953125f;    /* ln2, high part (exact in n*) */
    r = r - n * 1.42860682030941723e-6f;         /* ln2, low part */
    int32_t sbits = (kbits - 0x4B400000 + 127) << 23;
    memcpy(scale, &sbits, sizeof *scale);
    return r;
}

/* u(r) with e^r - 1 = r u(r) for |r| <= ln2/2: 1 + r c(r), c the
   polynomial of degree 4 that gives e^r - 1 its least maximum relative
   error there (1.7e-8 with these float32 coefficients; the Taylor series
   to the same degree, 3.9e-7). */
static inline float fl_expm1_factorf(float r) {
    float c = 0.0013882514322176576f;
    c = c * r + 0.008366533555090427f;
    c = c * r + 0.04166720062494278f;
    c = c * r + 0.1666654348373413f;
    c = c * r + 0.4999999701976776f;
    return c * r + 1.0f;
}

/* sigmoid x = 1 / (1 + e^-x), 1 + e^-x = 1 + s (1 + r u) one multiply-add:
   relative precision also where sigmoid x is tiny. tanh x = m / (m + 2)
   with m = e^{2x} - 1 = (s - 1) + s r u, exact when n = 0, so that tanh
   keeps its relative precision near 0; it tends to +-1 at the clamps. One
   exponential and one division each. Neither is monotone to the last bit:
   rounding lets tanh step back by up to 3 ulp between neighbouring floats,
   sigmoid by 1. */
static inline float fl_sigmoidf(float x) {
    float s;
    float r = fl_reducef(x, -1.0f, &s);
    return 1.0f / (1.0f + s * (1.0f + r * fl_expm1_factorf(r)));
}
static inline float fl_tanhf(float x) {
    float s;
    float r = fl_reducef(x, 2.0f, &s);
    float m = (s - 1.0f) + s * (r * fl_expm1_factorf(r));
    return m / (m + 2.0f);
}

/* float64, the dtype results are verified in: e^x and e^x - 1 as x = n ln2
   + r with |r| <= ln2/2, e^r - 1 = q(r) by its Taylor series to r^12
   (truncation < 2e-16 relative), 2^n put straight into the exponent bits.
   Then e^x = s + s q and e^x - 1 = (s - 1) + s q with s = 2^n, exact when
   n = 0, so e^x - 1 keeps full relative precision near 0. x is clamped so
   that 2^n stays a normal number; a NaN passes the clamps and comes out
   NaN. */
static inline double fl_reduce(double x, double* scale) {
    const double shift = 6755399441055744.0;     /* 1.5 * 2^52 */
    x = x < -708.0 ? -708.0 : x;
    x = x > 709.0 ? 709.0 : x;
    double k = x * 1.4426950408889634 + shift;
    int64_t kbits;
    memcpy(&kbits, &k, sizeof kbits);
    double n = k - shift;
    double r = x - n * 0.693147180369123816490;  /* ln2, high part */
    r = r - n * 1.90821492927058770002e-10;      /* ln2, low part */
    int64_t sbits = (kbits - 0x4338000000000000LL + 1023) << 52;
    memcpy(scale, &sbits, sizeof *scale);
    double q = 1.0 / 479001600.0;
    q = q * r + 1.0 / 39916800.0;
    q = q * r + 1.0 / 3628800.0;
    q = q * r + 1.0 / 362880.0;
    q = q * r + 1.0 / 40320.0;
    q = q * r + 1.0 / 5040.0;
    q = q * r + 1.0 / 720.0;
    q = q * r + 1.0 / 120.0;
    q = q * r + 1.0 / 24.0;
    q = q * r + 1.0 / 6.0;
    q = q * r + 0.5;
    q = q * r + 1.0;
    return q * r;
}
static inline double fl_exp(double x) { double s; double q = fl_reduce(x, &s); return s + s * q; }

/* sigmoid x = 1 / (1 + e^-x). tanh x = m / (m + 2) = 1 - 2 / (1 + e)
   with e = e^{2x} and m = e - 1 from one range reduction: the first form
   keeps relative precision near 0, the second is accurate and monotone
   to the last bit where |tanh x| > 0.46; both tend to +-1 at the clamps. */
static inline double fl_sigmoid(double x) { return 1.0 / (1.0 + fl_exp(-x)); }
static inline double fl_tanh(double x) {
    double s;
    double sq = fl_reduce(2.0 * x, &s) * s;
    double m = (s - 1.0) + sq, e = s + sq;
    return (x < 0.5 && x > -0.5) ? m / (m + 2.0) : 1.0 - 2.0 / (1.0 + e);
}

/* Denormal numbers (|x| < 1.2e-38 in float32) arise when states and
   gradients decay over many steps; arithmetic on them can cost a hundred
   times more cycles. Each kernel thread flushes them to zero (FTZ, DAZ)
   for the length of its work, then restores the caller's setting. */
#if defined(__SSE2__) || defined(_M_X64)
#include <xmmintrin.h>
static inline unsigned int fl_flush_denormals(void) {
    unsigned int saved = _mm_getcsr();
    _mm_setcsr(saved | 0x8040);   /* FTZ (bit 15) | DAZ (bit 6) */
    return saved;
}
static inline void fl_restore_denormals(unsigned int saved) { _mm_setcsr(saved); }
#else
static inline unsigned int fl_flush_denormals(void) { return 0; }
static inline void fl_restore_denormals(unsigned int saved) { (void)saved; }
#endif

#endif
