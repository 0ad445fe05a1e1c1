/* fastlstm's register tiles: the vector width of the build (set by its
   compiler flags) and the packed step product computed in registers. */
#ifndef FASTLSTM_FL_TILES_H
#define FASTLSTM_FL_TILES_H

#include <stddef.h>

/* The packed step product. A register tile holds R rows by four vectors
   of L lanes: in the forward pass the i, f, c and o gates of L units, so
   the element-wise step reads all four gates of a unit from one tile.
   The vector width is the build's (L = 16 floats or 8 doubles with
   AVX-512, 8 or 4 with AVX2, 4 or 2 otherwise); R is as many rows as
   the register file holds: 4R accumulators, R broadcast rows and one
   weight vector (31 of AVX-512's 32 registers at R = 6, 16 of AVX2's
   16 at R = 3). */
#if defined(__AVX512F__)
#define FL_VECTOR_BYTES 64
#define FL_ROWS 6
#elif defined(__AVX2__)
#define FL_VECTOR_BYTES 32
#define FL_ROWS 3
#else
#define FL_VECTOR_BYTES 16
#define FL_ROWS 3
#endif
#define FL_LANES_F (FL_VECTOR_BYTES / 4)
#define FL_LANES_D (FL_VECTOR_BYTES / 8)
typedef float fl_vf __attribute__((vector_size(FL_VECTOR_BYTES)));
typedef double fl_vd __attribute__((vector_size(FL_VECTOR_BYTES)));
/* The same vectors at any element address, for rows of the gate buffer. */
typedef float fl_vf_u __attribute__((vector_size(FL_VECTOR_BYTES), aligned(4)));
typedef double fl_vd_u __attribute__((vector_size(FL_VECTOR_BYTES), aligned(8)));

/* z[r, g] (+)= a[r, :depth] @ panel[:, g], for r < R and the four
   column vectors g of a panel; z's vector g of row r starts at
   z + r * ldz + g * gate_stride. The panel is vector-aligned, depth rows
   of four vectors. The loops over r and g are unrolled completely, so
   every accumulator is a register. */
#define FL_DEFINE_TILE(NAME, T, VT, VTU, R)                                      \
static void NAME(const T* restrict a, ptrdiff_t lda, const T* restrict panel,   \
                 ptrdiff_t depth, T* restrict z, ptrdiff_t ldz,                   \
                 ptrdiff_t gate_stride, int accumulate) {                         \
    VT acc[R][4];                                                                 \
    const T* rows[R];                                                             \
    _Pragma("GCC unroll 8")                                                       \
    for (int r = 0; r < R; r++) {                                                 \
        rows[r] = a + r * lda;                                                    \
        _Pragma("GCC unroll 4")                                                   \
        for (int g = 0; g < 4; g++)                                               \
            acc[r][g] = accumulate ? (VT)*(const VTU*)(z + r * ldz + g * gate_stride) \
                                   : (VT){0};                                     \
    }                                                                             \
    for (ptrdiff_t k = 0; k < depth; k++) {                                       \
        const VT* w = (const VT*)panel + 4 * k;                                   \
        T s[R];                                                                   \
        _Pragma("GCC unroll 8")                                                   \
        for (int r = 0; r < R; r++) s[r] = rows[r][k];                            \
        _Pragma("GCC unroll 4")                                                   \
        for (int g = 0; g < 4; g++) {                                             \
            VT wg = w[g];                                                         \
            _Pragma("GCC unroll 8")                                               \
            for (int r = 0; r < R; r++) acc[r][g] += wg * s[r];                   \
        }                                                                         \
    }                                                                             \
    _Pragma("GCC unroll 8")                                                       \
    for (int r = 0; r < R; r++) {                                                 \
        _Pragma("GCC unroll 4")                                                   \
        for (int g = 0; g < 4; g++)                                               \
            *(VTU*)(z + r * ldz + g * gate_stride) = acc[r][g];                   \
    }                                                                             \
}
FL_DEFINE_TILE(fl_tile_f1, float, fl_vf, fl_vf_u, 1)
FL_DEFINE_TILE(fl_tile_f2, float, fl_vf, fl_vf_u, 2)
FL_DEFINE_TILE(fl_tile_f3, float, fl_vf, fl_vf_u, 3)
FL_DEFINE_TILE(fl_tile_d1, double, fl_vd, fl_vd_u, 1)
FL_DEFINE_TILE(fl_tile_d2, double, fl_vd, fl_vd_u, 2)
FL_DEFINE_TILE(fl_tile_d3, double, fl_vd, fl_vd_u, 3)
#if FL_ROWS > 3
FL_DEFINE_TILE(fl_tile_f4, float, fl_vf, fl_vf_u, 4)
FL_DEFINE_TILE(fl_tile_f5, float, fl_vf, fl_vf_u, 5)
FL_DEFINE_TILE(fl_tile_f6, float, fl_vf, fl_vf_u, 6)
FL_DEFINE_TILE(fl_tile_d4, double, fl_vd, fl_vd_u, 4)
FL_DEFINE_TILE(fl_tile_d5, double, fl_vd, fl_vd_u, 5)
FL_DEFINE_TILE(fl_tile_d6, double, fl_vd, fl_vd_u, 6)
#endif

/* One tile of 1 <= rows <= FL_ROWS rows, each row count its own
   fully unrolled kernel. */
#define FL_DEFINE_TILE_DISPATCH(NAME, T, PREFIX)                                 \
static inline void NAME(int rows, const T* a, ptrdiff_t lda, const T* panel,     \
                        ptrdiff_t depth, T* z, ptrdiff_t ldz,                     \
                        ptrdiff_t gate_stride, int accumulate) {                  \
    switch (rows) {                                                               \
    case 1: PREFIX##1(a, lda, panel, depth, z, ldz, gate_stride, accumulate); break; \
    case 2: PREFIX##2(a, lda, panel, depth, z, ldz, gate_stride, accumulate); break; \
    case 3: PREFIX##3(a, lda, panel, depth, z, ldz, gate_stride, accumulate); break; \
    FL_MORE_ROWS(PREFIX)                                                          \
    }                                                                             \
}
#if FL_ROWS > 3
#define FL_MORE_ROWS(PREFIX)                                                      \
    case 4: PREFIX##4(a, lda, panel, depth, z, ldz, gate_stride, accumulate); break; \
    case 5: PREFIX##5(a, lda, panel, depth, z, ldz, gate_stride, accumulate); break; \
    case 6: PREFIX##6(a, lda, panel, depth, z, ldz, gate_stride, accumulate); break;
#else
#define FL_MORE_ROWS(PREFIX)
#endif
FL_DEFINE_TILE_DISPATCH(fl_tile_f, float, fl_tile_f)
FL_DEFINE_TILE_DISPATCH(fl_tile_d, double, fl_tile_d)

#endif
