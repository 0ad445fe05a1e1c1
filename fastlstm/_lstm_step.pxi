# One LSTM step on weights read where they lie: the path of a model that is
# fed one step per call (sampling, generation), where the forward pass's
# packing and workspaces would cost more than the step itself.
#
# The step reads every weight once, so it streams them in Keras' layout
# instead of packing them (see _fl_step.h), keeps nothing between calls and
# cannot go stale: the weights it reads are the caller's arrays as they are
# at the call. Each gate pre-activation sums [x_t, h_{t-1}] @ [kernel;
# recurrent_kernel] in the order of the forward pass's per-step product, so
# a step gives the bits of lstm_forward on a sequence of one step wherever
# that one computes its input product per step (see fastlstm/_plan.py).
cimport numpy as cnp
import numpy as np

cnp.import_array()

cdef extern from "_fl_step.h":
    void fl_row_product_f(Py_ssize_t rows, const float* a, Py_ssize_t lda, const float* w,
                          Py_ssize_t depth, Py_ssize_t n, float* z,
                          int accumulate) noexcept nogil
    void fl_row_product_d(Py_ssize_t rows, const double* a, Py_ssize_t lda, const double* w,
                          Py_ssize_t depth, Py_ssize_t n, double* z,
                          int accumulate) noexcept nogil


cdef inline void _row_product(Py_ssize_t rows, const floating* a, Py_ssize_t lda,
                              const floating* w, Py_ssize_t depth, Py_ssize_t n, floating* z,
                              bint accumulate) noexcept nogil:
    if floating is float:
        fl_row_product_f(rows, a, lda, w, depth, n, z, accumulate)
    else:
        fl_row_product_d(rows, a, lda, w, depth, n, z, accumulate)


cdef inline void _step_units(Py_ssize_t H, const floating* z, const floating* bias,
                             const floating* c, floating* h_out, floating* c_out,
                             int activation, int recurrent_activation) noexcept nogil:
    """The element-wise step of one sequence, as _step_forward computes it."""
    cdef Py_ssize_t j
    cdef floating gi, gf, gg, go, cell
    for j in range(H):
        gi = _activate(z[j] + bias[j], recurrent_activation)
        gf = _activate(z[H + j] + bias[H + j], recurrent_activation)
        gg = _activate(z[2 * H + j] + bias[2 * H + j], activation)
        go = _activate(z[3 * H + j] + bias[3 * H + j], recurrent_activation)
        cell = gf * c[j] + gi * gg
        c_out[j] = cell
        h_out[j] = go * _activate(cell, activation)


cdef void _step(Py_ssize_t B, Py_ssize_t I, Py_ssize_t H, const floating* x,
                const floating* kernel, const floating* recurrent_kernel,
                const floating* bias, const floating* h, const floating* c,
                floating* h_out, floating* c_out, floating* z,
                int activation, int recurrent_activation) noexcept nogil:
    """h_out, c_out after one step from x (B, I), h and c (B, H); z (B, 4H)
    is scratch. One thread: split among the pool's, a step of a few
    microseconds measured slower (the performance page's tuning section)."""
    cdef Py_ssize_t b
    cdef unsigned int csr = fl_flush_denormals()
    # z = x @ kernel + h @ recurrent_kernel, summed over [x_t, h_{t-1}] in
    # the order of the forward pass's per-step product.
    _row_product(B, x, I, kernel, I, 4 * H, z, False)
    _row_product(B, h, H, recurrent_kernel, H, 4 * H, z, True)
    for b in range(B):
        if activation == TANH and recurrent_activation == SIGMOID:
            _step_units(H, z + b * 4 * H, bias, c + b * H, h_out + b * H, c_out + b * H,
                        TANH, SIGMOID)
        else:
            _step_units(H, z + b * 4 * H, bias, c + b * H, h_out + b * H, c_out + b * H,
                        activation, recurrent_activation)
    fl_restore_denormals(csr)


cdef inline int _check_matrix(cnp.ndarray a, int typenum, Py_ssize_t rows, Py_ssize_t cols,
                              str name) except -1:
    if (cnp.PyArray_TYPE(a) != typenum or cnp.PyArray_NDIM(a) != 2
            or not cnp.PyArray_IS_C_CONTIGUOUS(a)
            or cnp.PyArray_DIM(a, 0) != rows or cnp.PyArray_DIM(a, 1) != cols):
        raise ValueError(f"{name} must be a C-contiguous {cnp.PyArray_DescrFromType(typenum)} "
                         f"array of shape {(rows, cols)}, got {(<object>a).dtype} {(<object>a).shape}")
    return 0


cdef class Step:
    """One LSTM step on the weights given, read at every call where they lie.

    ``Step(kernel, recurrent_kernel, bias, activation, recurrent_activation)``
    keeps references to the arrays (C-contiguous, one float dtype; bias None
    for none) and the activation codes; ``step(x, h, c)`` returns the states
    after one step. One thread (see the performance page's tuning section);
    BLAS is not called.
    """

    cdef readonly cnp.ndarray kernel, recurrent_kernel, bias
    cdef readonly Py_ssize_t input_dim, units
    cdef int typenum, activation, recurrent_activation

    def __init__(self, cnp.ndarray kernel, cnp.ndarray recurrent_kernel, bias,
                 int activation, int recurrent_activation):
        cdef int typenum = cnp.PyArray_TYPE(kernel)
        if typenum != cnp.NPY_FLOAT32 and typenum != cnp.NPY_FLOAT64:
            raise TypeError(f"kernel must be float32 or float64, got {kernel.dtype}")
        if cnp.PyArray_NDIM(kernel) != 2 or cnp.PyArray_DIM(kernel, 1) % 4:
            raise ValueError(f"kernel must have shape (input_dim, 4 * units), got "
                             f"{(<object>kernel).shape}")
        self.typenum = typenum
        self.input_dim = cnp.PyArray_DIM(kernel, 0)
        self.units = cnp.PyArray_DIM(kernel, 1) // 4
        _check_matrix(kernel, typenum, self.input_dim, 4 * self.units, "kernel")
        _check_matrix(recurrent_kernel, typenum, self.units, 4 * self.units, "recurrent_kernel")
        if bias is None:
            bias = np.zeros(4 * self.units, kernel.dtype)
        _check_matrix(bias.reshape(1, -1), typenum, 1, 4 * self.units, "bias")
        self.kernel, self.recurrent_kernel, self.bias = kernel, recurrent_kernel, bias
        self.activation, self.recurrent_activation = activation, recurrent_activation

    def __call__(self, cnp.ndarray x, cnp.ndarray h, cnp.ndarray c):
        """``(h_out, c_out)``: the states after one step from x (B, I) and
        h, c (B, H), in new arrays; x, h and c are left as they are."""
        cdef Py_ssize_t B = cnp.PyArray_DIM(x, 0) if cnp.PyArray_NDIM(x) == 2 else -1
        cdef Py_ssize_t H = self.units
        cdef int t = self.typenum
        cdef cnp.npy_intp dims[2]
        cdef void* z
        # The pointer arithmetic below trusts these shapes.
        _check_matrix(x, t, B, self.input_dim, "x")
        _check_matrix(h, t, B, H, "h")
        _check_matrix(c, t, B, H, "c")
        dims[0], dims[1] = B, H
        cdef cnp.ndarray h_out = cnp.PyArray_EMPTY(2, dims, t, 0)
        cdef cnp.ndarray c_out = cnp.PyArray_EMPTY(2, dims, t, 0)
        z = malloc(B * 4 * H * (8 if t == cnp.NPY_FLOAT64 else 4))
        if z == NULL:
            raise MemoryError(f"cannot allocate the {B * 4 * H} gate values of a step")
        if t == cnp.NPY_FLOAT32:
            with nogil:
                _step(B, self.input_dim, H, <float*>cnp.PyArray_DATA(x),
                      <float*>cnp.PyArray_DATA(self.kernel),
                      <float*>cnp.PyArray_DATA(self.recurrent_kernel),
                      <float*>cnp.PyArray_DATA(self.bias), <float*>cnp.PyArray_DATA(h),
                      <float*>cnp.PyArray_DATA(c), <float*>cnp.PyArray_DATA(h_out),
                      <float*>cnp.PyArray_DATA(c_out), <float*>z,
                      self.activation, self.recurrent_activation)
        else:
            with nogil:
                _step(B, self.input_dim, H, <double*>cnp.PyArray_DATA(x),
                      <double*>cnp.PyArray_DATA(self.kernel),
                      <double*>cnp.PyArray_DATA(self.recurrent_kernel),
                      <double*>cnp.PyArray_DATA(self.bias), <double*>cnp.PyArray_DATA(h),
                      <double*>cnp.PyArray_DATA(c), <double*>cnp.PyArray_DATA(h_out),
                      <double*>cnp.PyArray_DATA(c_out), <double*>z,
                      self.activation, self.recurrent_activation)
        free(z)
        return h_out, c_out


def same_bytes(cnp.ndarray a, cnp.ndarray b):
    """Whether two C-contiguous arrays of the same size hold the same bytes:
    how a layer tells, on each call, that the weights it packed are still
    the weights it has (a comparison of bits, not of values, so that a NaN
    equals its copy and -0.0 does not equal 0.0)."""
    if not (cnp.PyArray_IS_C_CONTIGUOUS(a) and cnp.PyArray_IS_C_CONTIGUOUS(b)):
        raise ValueError("same_bytes compares C-contiguous arrays")
    cdef size_t size = <size_t>cnp.PyArray_NBYTES(a)
    if size != <size_t>cnp.PyArray_NBYTES(b):
        return False
    cdef int order
    cdef const void* first = cnp.PyArray_DATA(a)
    cdef const void* second = cnp.PyArray_DATA(b)
    with nogil:
        order = memcmp(first, second, size)
    return order == 0
