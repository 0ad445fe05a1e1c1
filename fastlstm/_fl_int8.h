/* fastlstm's int8 products: dynamic quantization of activations, weights
   packed for VNNI, integer products, and the one dequantization.

   Scheme (that of ONNX Runtime's dynamic quantization, per row). Weights
   are int8, symmetric, one scale per output column: w[k, n] ~ ws[n] q[k, n]
   with q in [-127, 127]. Each row of activations a[:K] (an input row of one
   sequence and time step, or one sequence's hidden state at one step) is
   quantized when it is used, as DynamicQuantizeLinear does: uint8,
   asymmetric, over the range [min(0, min a), max(0, max a)], so 0 is exact:
     s = (max - min) / 255 (1 when the range is empty)
     zp = round(clamp(-min / s, 0, 255)),  u = clamp(round(a / s) + zp, 0, 255)
   rounding to nearest, ties to even. uint8 activations times int8 weights is
   what VNNI's vpdpbusd multiplies (four u8 x s8 products summed into each
   int32 lane, without saturation, unlike vpmaddubsw), and it keeps 8 bits
   of resolution for the one-signed inputs (a ReLU's, an embedding's) that a
   symmetric int8 code would spend half its range on. Then
     sum_k (u[k] - zp) q[k, n] = sum_k u[k] q[k, n] - zp colsum[n]
   exactly in int32 (|sum| < 255 * 127 * K < 2^31 for K < 66000), and
     y[n] = (float)(acc[n] - zp colsum[n]) * (s * ws[n])
   in float32, by code every path shares (fl_int8_dequantize, and the LSTM's
   element-wise step, which adds the recurrent product in the same
   expression), so the VNNI kernels and the portable loop (the same
   integers in another order: integer sums are exact in any order) give
   the same bits.

   Packed weights. K is padded to a multiple of 4, the N columns to a
   multiple of 64 (zeros). Group g of 64 columns holds, for each k4 < K/4,
   256 bytes: column 64g + j, rows 4k4 .. 4k4+3, at byte 4j + e. One 64-byte
   vector is then 16 columns times 4 rows: one vpdpbusd against an int32
   broadcast of four activations of a row. The quantized activation rows
   are padded to the same K (the pad bytes are multiplied by zero weights).

   Paths: AVX-512 VNNI, AVX-VNNI (256-bit), and the portable loop, chosen at
   run time by what the CPU has (functions compiled for their instruction
   set with target attributes, so every build carries all three). */
#ifndef FASTLSTM_FL_INT8_H
#define FASTLSTM_FL_INT8_H

#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#ifdef I
#undef I
#endif

#define FL_INT8_GROUP 64

enum { FL_INT8_PORTABLE = 0, FL_INT8_AVXVNNI = 1, FL_INT8_AVX512VNNI = 2 };

#if (defined(__GNUC__) || defined(__clang__)) && defined(__x86_64__)
#define FL_INT8_X86 1
#include <immintrin.h>
#else
#define FL_INT8_X86 0
#endif

/* The widest integer-product path this CPU runs. */
static int fl_int8_best_path(void) {
#if FL_INT8_X86
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512vnni") && __builtin_cpu_supports("avx512bw")
            && __builtin_cpu_supports("avx512f"))
        return FL_INT8_AVX512VNNI;
#if defined(__clang__) || __GNUC__ >= 11
    if (__builtin_cpu_supports("avxvnni") && __builtin_cpu_supports("avx2"))
        return FL_INT8_AVXVNNI;
#endif
#endif
    return FL_INT8_PORTABLE;
}

/* v rounded to the nearest integer, ties to even, for |v| < 2^22 (here
   |v| <= 256): adding 1.5 * 2^23 leaves no fraction bits, so the addition
   rounds (in the default rounding mode), and the subtraction is exact (IEEE arithmetic: fastlstm
   is never compiled with -ffast-math, which would fold it). A form every
   compiler vectorises, unlike nearbyintf. */
static inline float fl_int8_round(float v) {
    const float shift = 12582912.0f;   /* 1.5 * 2^23 */
    return (v + shift) - shift;
}

/* Quantizes a[:n] into u[:padded] (pad bytes 0), its scale and zero point.
   A row holding NaN or an infinity gets scale NaN (u and zp 0), so every
   output it touches is NaN, as in float arithmetic. */
static void fl_quantize_row_u8(ptrdiff_t n, const float* a, ptrdiff_t padded,
                               uint8_t* u, float* scale, int32_t* zero) {
    /* The range, and whether all is finite, in 16 lanes, then across them.
       A running minimum of floats does not vectorise (without
       -ffinite-math-only), so with GCC and Clang the lanes are a vector
       type; elsewhere, an array. Either way the same values: a minimum and
       a maximum are exact, and the sum of (v - v) is NaN exactly when some
       v is NaN or infinite, in any order. */
    float low = 0.0f, high = 0.0f, bad = 0.0f;
    ptrdiff_t k = 0;
#if defined(__GNUC__) || defined(__clang__)
    typedef float fl_v16f __attribute__((vector_size(64)));
    typedef int32_t fl_v16i __attribute__((vector_size(64)));
    fl_v16f lows = {0}, highs = {0}, sums = {0};
    for (; k + 16 <= n; k += 16) {
        fl_v16f v;
        memcpy(&v, a + k, sizeof v);
        const fl_v16i below = v < lows, above = v > highs;
        lows = (fl_v16f)(((fl_v16i)v & below) | ((fl_v16i)lows & ~below));
        highs = (fl_v16f)(((fl_v16i)v & above) | ((fl_v16i)highs & ~above));
        sums += v - v;
    }
    for (int l = 0; l < 16; l++) {
        low = lows[l] < low ? lows[l] : low;
        high = highs[l] > high ? highs[l] : high;
        bad += sums[l];
    }
#endif
    for (; k < n; k++) {
        const float v = a[k];
        low = v < low ? v : low;
        high = v > high ? v : high;
        bad += v - v;
    }
    const float finite_sum = bad;
    if (finite_sum != 0.0f || high - low > 3.0e38f) {
        memset(u, 0, (size_t)padded);
        *scale = NAN;
        *zero = 0;
        return;
    }
    const float s = high > low ? (high - low) / 255.0f : 1.0f;
    float zp = fl_int8_round(-low / s);
    zp = zp < 0.0f ? 0.0f : (zp > 255.0f ? 255.0f : zp);
    for (k = 0; k < n; k++) {
        float q = fl_int8_round(a[k] / s) + zp;
        q = q < 0.0f ? 0.0f : (q > 255.0f ? 255.0f : q);
        u[k] = (uint8_t)(int32_t)q;
    }
    for (k = n; k < padded; k++) u[k] = 0;
    *scale = s;
    *zero = (int32_t)zp;
}

/* The bytes of the packed weights of K rows and N columns. */
static ptrdiff_t fl_int8_packed_size(ptrdiff_t K, ptrdiff_t N) {
    return ((N + FL_INT8_GROUP - 1) / FL_INT8_GROUP) * ((K + 3) / 4) * 4 * FL_INT8_GROUP;
}

/* w (K, N) int8, row-major, into the layout above; colsum[n] = sum_k w[k, n]. */
static void fl_int8_pack(ptrdiff_t K, ptrdiff_t N, const int8_t* w, int8_t* packed,
                         int32_t* colsum) {
    const ptrdiff_t K4 = (K + 3) / 4, groups = (N + FL_INT8_GROUP - 1) / FL_INT8_GROUP;
    for (ptrdiff_t g = 0; g < groups; g++)
        for (ptrdiff_t k4 = 0; k4 < K4; k4++) {
            int8_t* p = packed + (g * K4 + k4) * 4 * FL_INT8_GROUP;
            for (ptrdiff_t j = 0; j < FL_INT8_GROUP; j++)
                for (ptrdiff_t e = 0; e < 4; e++) {
                    const ptrdiff_t k = 4 * k4 + e, n = g * FL_INT8_GROUP + j;
                    p[4 * j + e] = (k < K && n < N) ? w[k * N + n] : 0;
                }
        }
    for (ptrdiff_t n = 0; n < N; n++) colsum[n] = 0;
    for (ptrdiff_t k = 0; k < K; k++)
        for (ptrdiff_t n = 0; n < N; n++) colsum[n] += w[k * N + n];
}

/* acc[r, :Npad] = u[r, :Kpad] @ W for r < rows, the portable way: plain
   int32 arithmetic, which a compiler may vectorise but never saturates. */
static void fl_int8_product_portable(ptrdiff_t rows, const uint8_t* u, ptrdiff_t ldu,
                                     const int8_t* packed, ptrdiff_t K4, ptrdiff_t groups,
                                     int32_t* acc, ptrdiff_t ldacc) {
    for (ptrdiff_t r = 0; r < rows; r++)
        for (ptrdiff_t g = 0; g < groups; g++) {
            int32_t sums[FL_INT8_GROUP];
            for (ptrdiff_t j = 0; j < FL_INT8_GROUP; j++) sums[j] = 0;
            const int8_t* p = packed + g * K4 * 4 * FL_INT8_GROUP;
            const uint8_t* ur = u + r * ldu;
            for (ptrdiff_t k4 = 0; k4 < K4; k4++) {
                const int32_t u0 = ur[4 * k4], u1 = ur[4 * k4 + 1];
                const int32_t u2 = ur[4 * k4 + 2], u3 = ur[4 * k4 + 3];
                const int8_t* pk = p + k4 * 4 * FL_INT8_GROUP;
                for (ptrdiff_t j = 0; j < FL_INT8_GROUP; j++)
                    sums[j] += u0 * pk[4 * j] + u1 * pk[4 * j + 1]
                             + u2 * pk[4 * j + 2] + u3 * pk[4 * j + 3];
            }
            memcpy(acc + r * ldacc + g * FL_INT8_GROUP, sums, sizeof sums);
        }
}

#if FL_INT8_X86
/* Four activations of row r at k4, as one int32 (unaligned read). */
static inline int32_t fl_int8_quad(const uint8_t* u, ptrdiff_t k4) {
    int32_t v;
    memcpy(&v, u + 4 * k4, sizeof v);
    return v;
}

/* acc += the dot products of a (u8) and w (s8), four at a time: vpdpbusd
   as an instruction whose accumulator is its destination, which GCC 12
   cannot see through the intrinsic (it copies every accumulator at every
   use, and spills them). */
#define FL_DPBUSD(acc, a, w) __asm__("vpdpbusd %2, %1, %0" : "+v"(acc) : "v"(a), "v"(w))
#define FL_DPBUSD_AVX(acc, a, w) __asm__("%{vex%} vpdpbusd %2, %1, %0" : "+x"(acc) : "x"(a), "x"(w))

/* R rows (a constant after inlining) by one group of 64 columns: 4R
   accumulators, named (an array of vectors is kept on the stack by GCC). */
#define FL_INT8_ROW512_DECLARE(r)                                                  \
    __m512i s##r##0 = _mm512_setzero_si512(), s##r##1 = _mm512_setzero_si512();    \
    __m512i s##r##2 = _mm512_setzero_si512(), s##r##3 = _mm512_setzero_si512();
#define FL_INT8_ROW512_STEP(r)                                                     \
    if (R > r) {                                                                   \
        const __m512i a = _mm512_set1_epi32(fl_int8_quad(u + r * ldu, k4));        \
        FL_DPBUSD(s##r##0, a, w0);                             \
        FL_DPBUSD(s##r##1, a, w1);                             \
        FL_DPBUSD(s##r##2, a, w2);                             \
        FL_DPBUSD(s##r##3, a, w3);                             \
    }
#define FL_INT8_ROW512_STORE(r)                                                    \
    if (R > r) {                                                                   \
        _mm512_storeu_si512((void*)(acc + r * ldacc), s##r##0);                    \
        _mm512_storeu_si512((void*)(acc + r * ldacc + 16), s##r##1);               \
        _mm512_storeu_si512((void*)(acc + r * ldacc + 32), s##r##2);               \
        _mm512_storeu_si512((void*)(acc + r * ldacc + 48), s##r##3);               \
    }

__attribute__((target("avx512f,avx512bw,avx512vnni"), always_inline))
static inline void fl_int8_tile512(const int R, const uint8_t* u, ptrdiff_t ldu,
                                   const int8_t* p, ptrdiff_t K4, int32_t* acc,
                                   ptrdiff_t ldacc) {
    FL_INT8_ROW512_DECLARE(0) FL_INT8_ROW512_DECLARE(1) FL_INT8_ROW512_DECLARE(2)
    FL_INT8_ROW512_DECLARE(3) FL_INT8_ROW512_DECLARE(4) FL_INT8_ROW512_DECLARE(5)
    for (ptrdiff_t k4 = 0; k4 < K4; k4++) {
        const int8_t* pk = p + k4 * 4 * FL_INT8_GROUP;
        const __m512i w0 = _mm512_loadu_si512((const void*)pk);
        const __m512i w1 = _mm512_loadu_si512((const void*)(pk + 64));
        const __m512i w2 = _mm512_loadu_si512((const void*)(pk + 128));
        const __m512i w3 = _mm512_loadu_si512((const void*)(pk + 192));
        FL_INT8_ROW512_STEP(0) FL_INT8_ROW512_STEP(1) FL_INT8_ROW512_STEP(2)
        FL_INT8_ROW512_STEP(3) FL_INT8_ROW512_STEP(4) FL_INT8_ROW512_STEP(5)
    }
    FL_INT8_ROW512_STORE(0) FL_INT8_ROW512_STORE(1) FL_INT8_ROW512_STORE(2)
    FL_INT8_ROW512_STORE(3) FL_INT8_ROW512_STORE(4) FL_INT8_ROW512_STORE(5)
}

#define FL_INT8_TILE512(R)                                                         \
__attribute__((target("avx512f,avx512bw,avx512vnni")))                             \
static void fl_int8_tile512_##R(const uint8_t* u, ptrdiff_t ldu, const int8_t* p,  \
                                ptrdiff_t K4, int32_t* acc, ptrdiff_t ldacc) {     \
    fl_int8_tile512(R, u, ldu, p, K4, acc, ldacc);                                 \
}
FL_INT8_TILE512(1)
FL_INT8_TILE512(2)
FL_INT8_TILE512(3)
FL_INT8_TILE512(4)
FL_INT8_TILE512(5)
FL_INT8_TILE512(6)

static void fl_int8_product_avx512vnni(ptrdiff_t rows, const uint8_t* u, ptrdiff_t ldu,
                                       const int8_t* packed, ptrdiff_t K4, ptrdiff_t groups,
                                       int32_t* acc, ptrdiff_t ldacc) {
    for (ptrdiff_t r0 = 0; r0 < rows; r0 += 6) {
        const ptrdiff_t R = rows - r0 < 6 ? rows - r0 : 6;
        const uint8_t* ur = u + r0 * ldu;
        for (ptrdiff_t g = 0; g < groups; g++) {
            const int8_t* p = packed + g * K4 * 4 * FL_INT8_GROUP;
            int32_t* a = acc + r0 * ldacc + g * FL_INT8_GROUP;
            switch (R) {
                case 1: fl_int8_tile512_1(ur, ldu, p, K4, a, ldacc); break;
                case 2: fl_int8_tile512_2(ur, ldu, p, K4, a, ldacc); break;
                case 3: fl_int8_tile512_3(ur, ldu, p, K4, a, ldacc); break;
                case 4: fl_int8_tile512_4(ur, ldu, p, K4, a, ldacc); break;
                case 5: fl_int8_tile512_5(ur, ldu, p, K4, a, ldacc); break;
                default: fl_int8_tile512_6(ur, ldu, p, K4, a, ldacc); break;
            }
        }
    }
}

#if defined(__clang__) || __GNUC__ >= 11
/* AVX-VNNI: 16 registers of 256 bits, so a tile is 2 rows by half a group
   (32 columns, four vectors of 8). */
#define FL_INT8_ROW256_STEP(r)                                                     \
    if (R > r) {                                                                   \
        const __m256i a = _mm256_set1_epi32(fl_int8_quad(u + r * ldu, k4));        \
        FL_DPBUSD_AVX(s##r##0, a, w0);                         \
        FL_DPBUSD_AVX(s##r##1, a, w1);                         \
        FL_DPBUSD_AVX(s##r##2, a, w2);                         \
        FL_DPBUSD_AVX(s##r##3, a, w3);                         \
    }
#define FL_INT8_ROW256_STORE(r)                                                    \
    if (R > r) {                                                                   \
        _mm256_storeu_si256((__m256i*)(acc + r * ldacc), s##r##0);                 \
        _mm256_storeu_si256((__m256i*)(acc + r * ldacc + 8), s##r##1);             \
        _mm256_storeu_si256((__m256i*)(acc + r * ldacc + 16), s##r##2);            \
        _mm256_storeu_si256((__m256i*)(acc + r * ldacc + 24), s##r##3);            \
    }

__attribute__((target("avx2,avxvnni"), always_inline))
static inline void fl_int8_tile256(const int R, const uint8_t* u, ptrdiff_t ldu,
                                   const int8_t* p, ptrdiff_t K4, int32_t* acc,
                                   ptrdiff_t ldacc) {
    __m256i s00 = _mm256_setzero_si256(), s01 = s00, s02 = s00, s03 = s00;
    __m256i s10 = s00, s11 = s00, s12 = s00, s13 = s00;
    for (ptrdiff_t k4 = 0; k4 < K4; k4++) {
        const int8_t* pk = p + k4 * 4 * FL_INT8_GROUP;
        const __m256i w0 = _mm256_loadu_si256((const __m256i*)pk);
        const __m256i w1 = _mm256_loadu_si256((const __m256i*)(pk + 32));
        const __m256i w2 = _mm256_loadu_si256((const __m256i*)(pk + 64));
        const __m256i w3 = _mm256_loadu_si256((const __m256i*)(pk + 96));
        FL_INT8_ROW256_STEP(0) FL_INT8_ROW256_STEP(1)
    }
    FL_INT8_ROW256_STORE(0) FL_INT8_ROW256_STORE(1)
}

#define FL_INT8_TILE256(R)                                                         \
__attribute__((target("avx2,avxvnni")))                                            \
static void fl_int8_tile256_##R(const uint8_t* u, ptrdiff_t ldu, const int8_t* p,  \
                                ptrdiff_t K4, int32_t* acc, ptrdiff_t ldacc) {     \
    fl_int8_tile256(R, u, ldu, p, K4, acc, ldacc);                                 \
}
FL_INT8_TILE256(1)
FL_INT8_TILE256(2)
#define FL_INT8_HAVE_AVXVNNI 1
#endif

static void fl_int8_product_avxvnni(ptrdiff_t rows, const uint8_t* u, ptrdiff_t ldu,
                                    const int8_t* packed, ptrdiff_t K4, ptrdiff_t groups,
                                    int32_t* acc, ptrdiff_t ldacc) {
#ifdef FL_INT8_HAVE_AVXVNNI
    /* The 64 columns of a group in two halves: the half-group's 32 columns
       are the bytes 128h .. 128h+127 of each k4's 256. The tile reads four
       vectors of 32 bytes from pk; point it at the half and keep the
       group's stride of 256 bytes per k4 by the layout itself. */
    for (ptrdiff_t r0 = 0; r0 < rows; r0 += 2) {
        const ptrdiff_t R = rows - r0 < 2 ? rows - r0 : 2;
        const uint8_t* ur = u + r0 * ldu;
        for (ptrdiff_t g = 0; g < groups; g++)
            for (ptrdiff_t h = 0; h < 2; h++) {
                const int8_t* p = packed + g * K4 * 4 * FL_INT8_GROUP + 128 * h;
                int32_t* a = acc + r0 * ldacc + g * FL_INT8_GROUP + 32 * h;
                if (R == 1) fl_int8_tile256_1(ur, ldu, p, K4, a, ldacc);
                else fl_int8_tile256_2(ur, ldu, p, K4, a, ldacc);
            }
    }
#else
    fl_int8_product_portable(rows, u, ldu, packed, K4, groups, acc, ldacc);
#endif
}
#endif

/* acc[r, :] = u[r] @ W for r < rows, on ``path`` (falls back on the
   portable loop where the path is not compiled in). */
static void fl_int8_product(int path, ptrdiff_t rows, const uint8_t* u, ptrdiff_t ldu,
                            const int8_t* packed, ptrdiff_t K4, ptrdiff_t groups,
                            int32_t* acc, ptrdiff_t ldacc) {
#if FL_INT8_X86
    if (path == FL_INT8_AVX512VNNI) {
        fl_int8_product_avx512vnni(rows, u, ldu, packed, K4, groups, acc, ldacc);
        return;
    }
    if (path == FL_INT8_AVXVNNI) {
        fl_int8_product_avxvnni(rows, u, ldu, packed, K4, groups, acc, ldacc);
        return;
    }
#endif
    fl_int8_product_portable(rows, u, ldu, packed, K4, groups, acc, ldacc);
}

/* z[r, n] = (accumulate ? z[r, n] : bias[n] or 0) + dequantized acc[r, n],
   for n < N: the one dequantization of every path. Not inlined, so that
   each path runs the same instructions on the same integers. */
#if defined(__GNUC__) || defined(__clang__)
#define FL_INT8_NOINLINE __attribute__((noinline))
#else
#define FL_INT8_NOINLINE __declspec(noinline)
#endif
FL_INT8_NOINLINE
static void fl_int8_dequantize(ptrdiff_t rows, ptrdiff_t N, const int32_t* acc,
                               ptrdiff_t ldacc, const float* row_scale,
                               const int32_t* row_zero, const int32_t* colsum,
                               const float* column_scale, const float* bias, float* z,
                               ptrdiff_t ldz, int accumulate) {
    for (ptrdiff_t r = 0; r < rows; r++) {
        const float s = row_scale[r];
        const int32_t zp = row_zero[r];
        const int32_t* a = acc + r * ldacc;
        float* zr = z + r * ldz;
        for (ptrdiff_t n = 0; n < N; n++) {
            const float product = (float)(a[n] - zp * colsum[n]) * (s * column_scale[n]);
            const float base = accumulate ? zr[n] : (bias ? bias[n] : 0.0f);
            zr[n] = base + product;
        }
    }
}

#endif
