/* The register tile of the forward step on weights read where they lie.

   The tile of fastlstm/_lstm.pyx reads a gate panel packed for it; this one
   reads the same four column vectors straight from a weight matrix w
   (depth, 4H) in Keras' layout: the vector of gate g of units j0 .. j0+L-1
   at row k starts at w + k * ldw + g * gate_stride + j0. Each output sums
   its products in the order of k, as the packed tile does, so both give the
   same bits. Used where a pass reads each weight once anyway (one step of a
   few rows), so packing would only add a copy of the weights.

   Needs the vector types and FL_ROWS of the kernels (defined before this
   header is included). */
#ifndef FASTLSTM_FL_STEP_H
#define FASTLSTM_FL_STEP_H

#include <stddef.h>

/* NumPy's headers, included before this one by the step's module, bring in
   <complex.h>, whose macro I would rename every variable of the kernels
   called I (the input dimension). */
#ifdef I
#undef I
#endif

#define FL_DEFINE_STRIDED_TILE(NAME, T, VT, VTU, R)                               \
static void NAME(const T* restrict a, ptrdiff_t lda, const T* restrict w,          \
                 ptrdiff_t ldw, ptrdiff_t depth, T* restrict z, ptrdiff_t ldz,     \
                 ptrdiff_t gate_stride, int accumulate) {                          \
    VT acc[R][4];                                                                  \
    const T* rows[R];                                                              \
    _Pragma("GCC unroll 8")                                                        \
    for (int r = 0; r < R; r++) {                                                  \
        rows[r] = a + r * lda;                                                     \
        _Pragma("GCC unroll 4")                                                    \
        for (int g = 0; g < 4; g++)                                                \
            acc[r][g] = accumulate ? (VT)*(const VTU*)(z + r * ldz + g * gate_stride) \
                                   : (VT){0};                                      \
    }                                                                              \
    for (ptrdiff_t k = 0; k < depth; k++) {                                        \
        const T* wk = w + k * ldw;                                                 \
        T s[R];                                                                    \
        _Pragma("GCC unroll 8")                                                    \
        for (int r = 0; r < R; r++) s[r] = rows[r][k];                             \
        _Pragma("GCC unroll 4")                                                    \
        for (int g = 0; g < 4; g++) {                                              \
            VT wg = *(const VTU*)(wk + g * gate_stride);                           \
            _Pragma("GCC unroll 8")                                                \
            for (int r = 0; r < R; r++) acc[r][g] += wg * s[r];                    \
        }                                                                          \
    }                                                                              \
    _Pragma("GCC unroll 8")                                                        \
    for (int r = 0; r < R; r++) {                                                  \
        _Pragma("GCC unroll 4")                                                    \
        for (int g = 0; g < 4; g++)                                                \
            *(VTU*)(z + r * ldz + g * gate_stride) = acc[r][g];                    \
    }                                                                              \
}
FL_DEFINE_STRIDED_TILE(fl_strided_tile_f1, float, fl_vf, fl_vf_u, 1)
FL_DEFINE_STRIDED_TILE(fl_strided_tile_f2, float, fl_vf, fl_vf_u, 2)
FL_DEFINE_STRIDED_TILE(fl_strided_tile_f3, float, fl_vf, fl_vf_u, 3)
FL_DEFINE_STRIDED_TILE(fl_strided_tile_d1, double, fl_vd, fl_vd_u, 1)
FL_DEFINE_STRIDED_TILE(fl_strided_tile_d2, double, fl_vd, fl_vd_u, 2)
FL_DEFINE_STRIDED_TILE(fl_strided_tile_d3, double, fl_vd, fl_vd_u, 3)
#if FL_ROWS > 3
FL_DEFINE_STRIDED_TILE(fl_strided_tile_f4, float, fl_vf, fl_vf_u, 4)
FL_DEFINE_STRIDED_TILE(fl_strided_tile_f5, float, fl_vf, fl_vf_u, 5)
FL_DEFINE_STRIDED_TILE(fl_strided_tile_f6, float, fl_vf, fl_vf_u, 6)
FL_DEFINE_STRIDED_TILE(fl_strided_tile_d4, double, fl_vd, fl_vd_u, 4)
FL_DEFINE_STRIDED_TILE(fl_strided_tile_d5, double, fl_vd, fl_vd_u, 5)
FL_DEFINE_STRIDED_TILE(fl_strided_tile_d6, double, fl_vd, fl_vd_u, 6)
#endif

#define FL_DEFINE_STRIDED_DISPATCH(NAME, T, PREFIX)                                \
static inline void NAME(int rows, const T* a, ptrdiff_t lda, const T* w,           \
                        ptrdiff_t ldw, ptrdiff_t depth, T* z, ptrdiff_t ldz,        \
                        ptrdiff_t gate_stride, int accumulate) {                    \
    switch (rows) {                                                                \
    case 1: PREFIX##1(a, lda, w, ldw, depth, z, ldz, gate_stride, accumulate); break; \
    case 2: PREFIX##2(a, lda, w, ldw, depth, z, ldz, gate_stride, accumulate); break; \
    case 3: PREFIX##3(a, lda, w, ldw, depth, z, ldz, gate_stride, accumulate); break; \
    FL_MORE_STRIDED_ROWS(PREFIX)                                                   \
    }                                                                              \
}
#if FL_ROWS > 3
#define FL_MORE_STRIDED_ROWS(PREFIX)                                               \
    case 4: PREFIX##4(a, lda, w, ldw, depth, z, ldz, gate_stride, accumulate); break; \
    case 5: PREFIX##5(a, lda, w, ldw, depth, z, ldz, gate_stride, accumulate); break; \
    case 6: PREFIX##6(a, lda, w, ldw, depth, z, ldz, gate_stride, accumulate); break;
#else
#define FL_MORE_STRIDED_ROWS(PREFIX)
#endif
FL_DEFINE_STRIDED_DISPATCH(fl_strided_tile_f, float, fl_strided_tile_f)
FL_DEFINE_STRIDED_DISPATCH(fl_strided_tile_d, double, fl_strided_tile_d)

#endif
