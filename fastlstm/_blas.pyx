"""Row-major BLAS for fastlstm, over one ``floating`` fused type.

Every BLAS call of the package goes through this module. BLAS itself is
column-major; a row-major ``C = op(A) @ op(B)`` is the column-major
``C.T = op(B).T @ op(A).T``, so each wrapper passes the operands swapped and
nothing else in fastlstm needs to know the storage convention of BLAS.
"""
from scipy.linalg.cython_blas cimport sgemm, dgemm


cdef void gemm(BLAS_Trans transa, BLAS_Trans transb, int m, int n, int k,
               floating alpha, const floating* a, int lda,
               const floating* b, int ldb, floating beta,
               floating* c, int ldc) noexcept nogil:
    """C := alpha * op(A) @ op(B) + beta * C, row-major; C is (m, n), op(A) (m, k)."""
    cdef char ta = <char>transa
    cdef char tb = <char>transb
    if floating is float:
        sgemm(&tb, &ta, &n, &m, &k, &alpha, <float*>b, &ldb,
              <float*>a, &lda, &beta, c, &ldc)
    else:
        dgemm(&tb, &ta, &n, &m, &k, &alpha, <double*>b, &ldb,
              <double*>a, &lda, &beta, c, &ldc)


cdef inline bint _row_major(const floating[:, :] x):
    # A 2-D view is row-major when its last axis is contiguous; a view with a
    # single column is both, and counts as row-major unless it is one row.
    return x.strides[1] == sizeof(floating) or x.shape[1] == 1


cdef inline int _leading(const floating[:, :] x, bint row_major):
    # Along an axis of length one the stride is arbitrary; BLAS still wants
    # the leading dimension to be at least the stored row length.
    if row_major:
        return <int>max(x.strides[0] // <Py_ssize_t>sizeof(floating), x.shape[1], 1)
    return <int>max(x.strides[1] // <Py_ssize_t>sizeof(floating), x.shape[0], 1)


cpdef void gemm_arrays(BLAS_Trans transa, BLAS_Trans transb,
                       const floating[:, :] a, const floating[:, :] b, floating[:, :] c,
                       double alpha=1.0, double beta=0.0):
    """``gemm`` on arrays: c := alpha * op(a) @ op(b) + beta * c.

    The door of Python code to BLAS (fastlstm.functional.matmul, for the
    Dense layer's products and the benchmark's sgemm rate) and what the
    tests check the wrapper by. Accepts C- or Fortran-ordered views; a Fortran-ordered operand is the
    row-major transpose of itself, so it flips its ``trans`` flag. ``c`` must
    be C-contiguous in its last axis.
    """
    cdef bint a_rows = _row_major(a)
    cdef bint b_rows = _row_major(b)
    cdef int m = c.shape[0]
    cdef int n = c.shape[1]
    cdef int k = a.shape[1] if transa == NoTrans else a.shape[0]
    cdef BLAS_Trans ta = transa if a_rows else (Trans if transa == NoTrans else NoTrans)
    cdef BLAS_Trans tb = transb if b_rows else (Trans if transb == NoTrans else NoTrans)
    cdef int lda = _leading(a, a_rows)
    cdef int ldb = _leading(b, b_rows)
    cdef int ldc = _leading(c, True)
    if c.strides[1] != sizeof(floating) and n > 1:
        raise ValueError("c must be contiguous in its last axis")
    with nogil:
        gemm(ta, tb, m, n, k, <floating>alpha, &a[0, 0], lda, &b[0, 0], ldb,
             <floating>beta, &c[0, 0], ldc)
