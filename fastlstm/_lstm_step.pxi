# One LSTM step on weights read where they lie: the path of a model that is
# fed one step per call (sampling, generation), where the forward pass's
# packing and workspaces would cost more than the step itself.
#
# The step reads every weight once, so it reads them in Keras' layout
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
    void fl_strided_tile_f(int rows, const float* a, Py_ssize_t lda, const float* w,
                           Py_ssize_t ldw, Py_ssize_t depth, float* z, Py_ssize_t ldz,
                           Py_ssize_t gate_stride, int accumulate) noexcept nogil
    void fl_strided_tile_d(int rows, const double* a, Py_ssize_t lda, const double* w,
                           Py_ssize_t ldw, Py_ssize_t depth, double* z, Py_ssize_t ldz,
                           Py_ssize_t gate_stride, int accumulate) noexcept nogil


cdef inline void _strided_tile(int rows, const floating* a, Py_ssize_t lda, const floating* w,
                               Py_ssize_t ldw, Py_ssize_t depth, floating* z, Py_ssize_t ldz,
                               Py_ssize_t gate_stride, bint accumulate) noexcept nogil:
    if floating is float:
        fl_strided_tile_f(rows, a, lda, w, ldw, depth, z, ldz, gate_stride, accumulate)
    else:
        fl_strided_tile_d(rows, a, lda, w, ldw, depth, z, ldz, gate_stride, accumulate)


cdef void _step_products(Py_ssize_t B, Py_ssize_t I, Py_ssize_t H, const floating* x,
                         const floating* kernel, const floating* recurrent_kernel,
                         const floating* h, floating* z, floating* tail) noexcept nogil:
    """z (B, 4H) = x (B, I) @ kernel + h (B, H) @ recurrent_kernel, in
    register tiles of whole gate panels read in place. A last partial panel
    is packed into ``tail`` ((I + H) * 4L, zero-padded) as the forward pass
    packs it, since reading it in place would read past the weights' end."""
    cdef Py_ssize_t G = 4 * H, L = _lanes(z), full = H // L
    cdef Py_ssize_t u, r0, nr, k, g, l, j
    for u in range(full):
        r0 = 0
        while r0 < B:
            nr = min(FL_ROWS, B - r0)
            _strided_tile(<int>nr, x + r0 * I, I, kernel + u * L, G, I,
                          z + r0 * G + u * L, G, H, False)
            _strided_tile(<int>nr, h + r0 * H, H, recurrent_kernel + u * L, G, H,
                          z + r0 * G + u * L, G, H, True)
            r0 += nr
    if full * L == H:
        return
    for k in range(I + H):
        for g in range(4):
            for l in range(L):
                j = full * L + l
                if j >= H:
                    tail[(k * 4 + g) * L + l] = 0
                elif k < I:
                    tail[(k * 4 + g) * L + l] = kernel[k * G + g * H + j]
                else:
                    tail[(k * 4 + g) * L + l] = recurrent_kernel[(k - I) * G + g * H + j]
    r0 = 0
    while r0 < B:
        nr = min(FL_ROWS, B - r0)
        _gate_tile(<int>nr, H - full * L, x + r0 * I, I, tail, I, z + r0 * G + full * L, G,
                   H, False)
        _gate_tile(<int>nr, H - full * L, h + r0 * H, H, tail + I * 4 * L, H,
                   z + r0 * G + full * L, G, H, True)
        r0 += nr


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


cdef int _step(Py_ssize_t B, Py_ssize_t I, Py_ssize_t H, const floating* x,
               const floating* kernel, const floating* recurrent_kernel,
               const floating* bias, const floating* h, const floating* c,
               floating* h_out, floating* c_out, floating* z,
               int activation, int recurrent_activation) noexcept nogil:
    """The step; -1 when the tail panel's few bytes cannot be allocated."""
    cdef Py_ssize_t b, L = _lanes(z)
    cdef unsigned int csr
    cdef void* raw = NULL
    cdef floating* tail = NULL
    if H % L:
        raw = malloc((I + H) * 4 * L * sizeof(floating) + 64)
        if raw == NULL:
            return -1
        tail = _aligned(raw, z)
    csr = fl_flush_denormals()
    # Every product reads all of h before any unit of h_out is written, so
    # h_out and c_out may be h and c themselves.
    _step_products(B, I, H, x, kernel, recurrent_kernel, h, z, tail)
    for b in range(B):
        if activation == TANH and recurrent_activation == SIGMOID:
            _step_units(H, z + b * 4 * H, bias, c + b * H, h_out + b * H, c_out + b * H,
                        TANH, SIGMOID)
        else:
            _step_units(H, z + b * 4 * H, bias, c + b * H, h_out + b * H, c_out + b * H,
                        activation, recurrent_activation)
    fl_restore_denormals(csr)
    free(raw)
    return 0


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
    after one step. Single threaded; BLAS is not called.
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
        cdef Py_ssize_t I = self.input_dim, H = self.units
        cdef int t = self.typenum, status
        cdef cnp.npy_intp dims[2]
        cdef void* scratch
        # The pointer arithmetic below trusts these shapes.
        _check_matrix(x, t, B, I, "x")
        _check_matrix(h, t, B, H, "h")
        _check_matrix(c, t, B, H, "c")
        dims[0], dims[1] = B, H
        cdef cnp.ndarray h_out = cnp.PyArray_EMPTY(2, dims, t, 0)
        cdef cnp.ndarray c_out = cnp.PyArray_EMPTY(2, dims, t, 0)
        scratch = malloc(B * 4 * H * (4 if t == cnp.NPY_FLOAT32 else 8))
        if scratch == NULL:
            raise MemoryError(f"cannot allocate the {B * 4 * H} gate values of a step")
        if t == cnp.NPY_FLOAT32:
            with nogil:
                status = _step(B, I, H, <float*>cnp.PyArray_DATA(x),
                               <float*>cnp.PyArray_DATA(self.kernel),
                               <float*>cnp.PyArray_DATA(self.recurrent_kernel),
                               <float*>cnp.PyArray_DATA(self.bias), <float*>cnp.PyArray_DATA(h),
                               <float*>cnp.PyArray_DATA(c), <float*>cnp.PyArray_DATA(h_out),
                               <float*>cnp.PyArray_DATA(c_out), <float*>scratch,
                               self.activation, self.recurrent_activation)
        else:
            with nogil:
                status = _step(B, I, H, <double*>cnp.PyArray_DATA(x),
                               <double*>cnp.PyArray_DATA(self.kernel),
                               <double*>cnp.PyArray_DATA(self.recurrent_kernel),
                               <double*>cnp.PyArray_DATA(self.bias),
                               <double*>cnp.PyArray_DATA(h), <double*>cnp.PyArray_DATA(c),
                               <double*>cnp.PyArray_DATA(h_out),
                               <double*>cnp.PyArray_DATA(c_out), <double*>scratch,
                               self.activation, self.recurrent_activation)
        free(scratch)
        if status:
            raise MemoryError("cannot allocate the step's tail panel")
        return h_out, c_out
