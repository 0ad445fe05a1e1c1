# The one place fastlstm calls BLAS. Everything here is row-major: the
# wrappers swap operands to hand column-major BLAS the transposed problem.
from cython cimport floating


cpdef enum BLAS_Trans:
    NoTrans = 110  # ord('n')
    Trans = 116    # ord('t')


cdef void gemm(BLAS_Trans transa, BLAS_Trans transb, int m, int n, int k,
               floating alpha, const floating* a, int lda,
               const floating* b, int ldb, floating beta,
               floating* c, int ldc) noexcept nogil
