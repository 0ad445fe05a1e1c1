/* The product of the one-step path, on weights read where they lie.

   The product of the rows r of a with w in Keras' layout (depth rows of 4H
   contiguous columns). The loop runs over the rows of w in order and
   streams each one, so the weights are read once, front to back, as the
   hardware prefetchers like best: a step of one sequence is bound by how
   fast its weights arrive. Each output
   sums its products in the order of k from +0, as the forward pass's
   register tiles do, so both give the same bits. */
#ifndef FASTLSTM_FL_STEP_H
#define FASTLSTM_FL_STEP_H

#include <stddef.h>
#include <string.h>

/* NumPy's headers, included before this one by the step's module, bring in
   <complex.h>, whose macro I would rename every variable of the kernels
   called I (the input dimension). */
#ifdef I
#undef I
#endif

/* z[r, :n] (+)= a[r, :depth] @ w[:depth, :n], w of n contiguous columns
   per row. */
#define FL_DEFINE_ROW_PRODUCT(NAME, T)                                             \
static void NAME(ptrdiff_t rows, const T* restrict a, ptrdiff_t lda,              \
                 const T* restrict w, ptrdiff_t depth, ptrdiff_t n,                \
                 T* restrict z, int accumulate) {                                  \
    if (!accumulate)                                                               \
        memset(z, 0, rows * n * sizeof(T));                                        \
    for (ptrdiff_t k = 0; k < depth; k++) {                                        \
        const T* restrict wk = w + k * n;                                          \
        for (ptrdiff_t r = 0; r < rows; r++) {                                     \
            const T s = a[r * lda + k];                                            \
            T* restrict zr = z + r * n;                                            \
            for (ptrdiff_t j = 0; j < n; j++) zr[j] += wk[j] * s;                  \
        }                                                                          \
    }                                                                              \
}
FL_DEFINE_ROW_PRODUCT(fl_row_product_f, float)
FL_DEFINE_ROW_PRODUCT(fl_row_product_d, double)

#endif
