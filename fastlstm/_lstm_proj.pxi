# Included by _lstm.pyx: the projected LSTM (LSTMP).
#
# The cell is the LSTM's; its hidden state is projected to P values (usually
# fewer than H):
#   z_t = x_t @ kernel + h_{t-1} @ recurrent_kernel + bias     (B, 4H)
#   c_t = f * c_{t-1} + i * g,   m_t = o * tanh(c_t)           (B, H)
#   h_t = m_t @ projection_kernel                               (B, P)
# so recurrent_kernel is (P, 4H), projection_kernel (H, P), the outputs and
# h are (B, P) and c stays (B, H).
#
# Layout, batch-major like the single layer's (see the top of _lstm.pyx):
# gates (B, T, 4H), states (B, T, I + P) (each step's input beside its
# dropped-out h_{t-1}, the rows its recurrent product read, as the single
# layer keeps them), c_prev and cells (B, T, H) (each step's c_{t-1} and
# m_t), all indexed by input time; outputs (B, T, P) and
# grad_outputs by processing step. Every buffer is allocated by the caller.
#
# Forward, per thread (a contiguous block of batch rows):
#   1. gates[rows] = x[rows] @ kernel                 one GEMM for all steps
#   2. per step: gates[rows, t] += h_{t-1}[rows] @ recurrent_kernel
#      the single layer's fused element-wise step (_step_forward), which
#      writes m_t where it writes h_t, then
#      h_t[rows] = m_t[rows] @ projection_kernel        (into outputs)
#      and the masked rows' states and outputs carried over.
# Backward, per thread, in reverse processing order:
#   3. dh_t, the gradient reaching h_t (the output's, the next step's
#      recurrent product's, what masked steps passed back), kept in grad_h;
#      dm_t[rows] = dh_t[rows] @ projection_kernel.T
#      the single layer's fused backward step (_step_backward) on dm_t;
#      dh_{t-1}[rows] = dZ_t[rows] @ recurrent_kernel.T
#   4. dx[rows] = dZ[rows] @ kernel.T                  (one GEMM; optional)
# and, once every thread is done, by blocks of gate columns:
#   5. [dkernel; drecurrent_kernel] = [X, H_prev].T @ dZ (one GEMM, as for
#      the single layer), dbias = sum dZ, and in one more block
#      dprojection_kernel = M.T @ dH, over all steps.
#
# The per-step products run in the single layer's register tiles on weights
# packed once per call (BLAS would pack them at every step): the recurrent
# kernel in gate panels (forward), the projection in column panels, and
# the transposes of both in column panels (backward). Threads: the batch
# is split for the whole time loop (no meeting per step), then the columns
# for the weight gradients, through fastlstm's pool; BLAS is single-threaded
# inside (the caller makes sure).

cdef enum _ProjPart:
    PROJ_FORWARD = 0
    PROJ_BACKWARD = 1
    PROJ_WEIGHT_GRADS = 2


ctypedef struct _ProjJob:
    int part
    Py_ssize_t B, T, I, H, P, nchunks, ncolumns
    int activation, recurrent_activation
    bint go_backwards, double_precision
    const unsigned char* mask
    const void* x
    const void* kernel
    # Packed for the steps: recurrent_kernel (gate panels forward, its
    # transpose's column panels backward) and projection_kernel (column
    # panels forward, its transpose's backward).
    const void* packed_recurrent
    const void* packed_projection
    const void* bias
    const void* dropout
    const void* ones
    const void* grad_outputs
    void* zeros
    void* outputs
    void* h
    void* c
    void* gates
    void* states
    void* c_prev
    void* cells
    void* grad_h
    void* dm
    void* dh_rec
    void* dh_pass
    void* dc
    void* carry
    void* dx
    void* dweights
    void* dprojection
    void* dbias


cdef void _proj_block(void* ctx, Py_ssize_t k) noexcept nogil:
    if (<_ProjJob*>ctx).double_precision:
        _proj_part(<_ProjJob*>ctx, k, <double*>NULL)
    else:
        _proj_part(<_ProjJob*>ctx, k, <float*>NULL)


cdef void _proj_part(_ProjJob* job, Py_ssize_t k, floating* dtype_of) noexcept nogil:
    cdef Py_ssize_t b0 = _chunk_start(k, job.nchunks, job.B)
    cdef Py_ssize_t b1 = _chunk_start(k + 1, job.nchunks, job.B), G = 4 * job.H
    cdef unsigned int csr = fl_flush_denormals()
    if job.part == PROJ_FORWARD:
        _proj_forward_rows(job, b0, b1, dtype_of)
    elif job.part == PROJ_BACKWARD:
        _proj_backward_rows(job, b0, b1, k, dtype_of)
    elif k < job.ncolumns:
        _proj_weight_grads(job, _column_start(k, job.ncolumns, G),
                           _column_start(k + 1, job.ncolumns, G), dtype_of)
    else:
        # dprojection = M.T @ dH   (H, P) = (H, B*T)(B*T, P)
        gemm(Trans, NoTrans, <int>job.H, <int>job.P, <int>(job.B * job.T), <floating>1.0,
             <const floating*>job.cells, <int>job.H, <const floating*>job.grad_h, <int>job.P,
             <floating>0.0, <floating*>job.dprojection, <int>job.P)
    fl_restore_denormals(csr)


cdef void _proj_forward_rows(_ProjJob* job, Py_ssize_t b0, Py_ssize_t b1,
                             floating* dtype_of) noexcept nogil:
    """The forward pass over batch rows [b0, b1); see the top of this file."""
    cdef Py_ssize_t T = job.T, I = job.I, H = job.H, P = job.P, G = 4 * H
    cdef Py_ssize_t rows = b1 - b0, s, t, b, j
    cdef const floating* x = <const floating*>job.x
    cdef const floating* bias = <const floating*>job.bias
    cdef const floating* dropout = <const floating*>job.dropout
    cdef const floating* ones = <const floating*>job.ones
    cdef floating* outputs = <floating*>job.outputs
    cdef floating* h = <floating*>job.h
    cdef floating* c = <floating*>job.c
    cdef floating* gates = <floating*>job.gates
    cdef floating* states = <floating*>job.states
    cdef floating* c_prev = <floating*>job.c_prev
    cdef floating* cells = <floating*>job.cells
    cdef floating* m
    cdef floating* out
    cdef floating* hp
    cdef Py_ssize_t S = I + P
    if rows <= 0:
        return
    # Each step's input beside its state: the weight gradients are then one
    # product, [x_t, h_{t-1}].T @ dZ_t summed over all steps.
    for b in range(b0, b1):
        for t in range(T):
            memcpy(states + (b * T + t) * S, x + (b * T + t) * I, I * sizeof(floating))
    # Z[rows] = X[rows] @ kernel     (rows*T, 4H) = (rows*T, I)(I, 4H)
    gemm(NoTrans, NoTrans, <int>(rows * T), <int>G, <int>I, <floating>1.0, x + b0 * T * I,
         <int>I, <const floating*>job.kernel, <int>G, <floating>0.0, gates + b0 * T * G, <int>G)
    t = _time(0, T, job.go_backwards)
    for b in range(b0, b1):
        for j in range(P):
            states[(b * T + t) * S + I + j] = h[b * P + j] * dropout[b * P + j]
    for s in range(T):
        t = _time(s, T, job.go_backwards)
        # Z_t[rows] += h_{t-1}[rows] @ recurrent_kernel   (rows, 4H) += (rows, P)(P, 4H)
        _gate_product(b0, b1, H, states + t * S + I, T * S,
                      <const floating*>job.packed_recurrent, P, gates + t * G, T * G)
        for b in range(b0, b1):
            m = cells + (b * T + t) * H
            if job.mask == NULL or job.mask[b * T + t]:
                # The single layer's step, its hidden state m_t written to the
                # cells (h, output and next input alike), undropped.
                if job.activation == TANH and job.recurrent_activation == SIGMOID:
                    _step_forward(H, H, gates + (b * T + t) * G, bias, c + b * H, m, m,
                                  c_prev + (b * T + t) * H, m, ones, TANH, SIGMOID)
                else:
                    _step_forward(H, H, gates + (b * T + t) * G, bias, c + b * H, m, m,
                                  c_prev + (b * T + t) * H, m, ones, job.activation,
                                  job.recurrent_activation)
            else:
                memcpy(c_prev + (b * T + t) * H, c + b * H, H * sizeof(floating))
                memset(m, 0, H * sizeof(floating))
        # h_t[rows] = m_t[rows] @ projection_kernel   (rows, P) = (rows, H)(H, P)
        _column_product(b0, b1, P, cells + t * H, T * H,
                        <const floating*>job.packed_projection, H, outputs + s * P, T * P)
        for b in range(b0, b1):
            out = outputs + (b * T + s) * P
            if job.mask == NULL or job.mask[b * T + t]:
                memcpy(h + b * P, out, P * sizeof(floating))
            elif s > 0:
                # Masked step: the states carry over; the output repeats the
                # previous output (zeros before the first processed step).
                memcpy(out, out - P, P * sizeof(floating))
            else:
                memset(out, 0, P * sizeof(floating))
            if s + 1 < T:
                hp = states + (b * T + _time(s + 1, T, job.go_backwards)) * S + I
                for j in range(P):
                    hp[j] = h[b * P + j] * dropout[b * P + j]


cdef void _proj_backward_rows(_ProjJob* job, Py_ssize_t b0, Py_ssize_t b1, Py_ssize_t k,
                              floating* dtype_of) noexcept nogil:
    """Backward through time over batch rows [b0, b1), and their dx unless
    dx is NULL. On entry dh_pass and dc hold the gradients of the final
    states, dh_rec and carry zeros; on exit dh_rec * dropout + dh_pass is
    dh0 and dc is dc0, as for the single layer (_backward_rows)."""
    cdef Py_ssize_t T = job.T, I = job.I, H = job.H, P = job.P, G = 4 * H
    cdef Py_ssize_t rows = b1 - b0, s, t, b, j, g
    cdef const floating* dropout = <const floating*>job.dropout
    cdef const floating* ones = <const floating*>job.ones
    cdef const floating* grad_outputs = <const floating*>job.grad_outputs
    # Zeros for the parts of the single layer's gradient of h that the
    # projection has already summed into dm_t: one row per chunk of rows.
    cdef floating* zeros = <floating*>job.zeros + k * H
    cdef floating* gates = <floating*>job.gates
    cdef floating* grad_h = <floating*>job.grad_h
    cdef floating* dm = <floating*>job.dm
    cdef floating* dh_rec = <floating*>job.dh_rec
    cdef floating* dh_pass = <floating*>job.dh_pass
    cdef floating* dc = <floating*>job.dc
    cdef floating* carry = <floating*>job.carry
    cdef floating* z
    cdef floating* dh
    cdef const floating* dy
    if rows <= 0:
        return
    for s in range(T - 1, -1, -1):
        t = _time(s, T, job.go_backwards)
        for b in range(b0, b1):
            dh = grad_h + (b * T + t) * P
            dy = grad_outputs + (b * T + s) * P
            if job.mask == NULL or job.mask[b * T + t]:
                for j in range(P):
                    dh[j] = (dh_rec[b * P + j] * dropout[b * P + j] + dh_pass[b * P + j]
                             + carry[b * P + j] + dy[j])
                    dh_pass[b * P + j] = 0
                    carry[b * P + j] = 0
            else:
                # Masked step: h and c passed through unchanged, so their
                # gradients do too; the output was a copy of the previous one.
                for j in range(P):
                    dh_pass[b * P + j] = dh_rec[b * P + j] * dropout[b * P + j] + dh_pass[b * P + j]
                    carry[b * P + j] = carry[b * P + j] + dy[j]
                    dh[j] = 0
        # dm_t[rows] = dh_t[rows] @ projection_kernel.T   (rows, H) = (rows, P)(P, H)
        _column_product(b0, b1, H, grad_h + t * P, T * P,
                        <const floating*>job.packed_projection, P, dm, H)
        for b in range(b0, b1):
            z = gates + (b * T + t) * G
            if job.mask == NULL or job.mask[b * T + t]:
                if job.activation == TANH and job.recurrent_activation == SIGMOID:
                    _step_backward(H, H, z, <const floating*>job.c_prev + (b * T + t) * H,
                                   dm + b * H, zeros, dc + b * H, zeros, zeros, ones,
                                   TANH, SIGMOID)
                else:
                    _step_backward(H, H, z, <const floating*>job.c_prev + (b * T + t) * H,
                                   dm + b * H, zeros, dc + b * H, zeros, zeros, ones,
                                   job.activation, job.recurrent_activation)
            else:
                for g in range(4):
                    memset(z + g * H, 0, H * sizeof(floating))
        # dh_{t-1}[rows] = dZ_t[rows] @ recurrent_kernel.T   (rows, P) = (rows, 4H)(4H, P)
        _column_product(b0, b1, P, gates + t * G, T * G,
                        <const floating*>job.packed_recurrent, G, dh_rec, P)
    if job.dx != NULL:
        # dx[rows] = dZ[rows] @ kernel.T   (rows*T, I) = (rows*T, 4H)(4H, I)
        gemm(NoTrans, Trans, <int>(rows * T), <int>I, <int>G, <floating>1.0,
             gates + b0 * T * G, <int>G, <const floating*>job.kernel, <int>G, <floating>0.0,
             <floating*>job.dx + b0 * T * I, <int>I)


cdef void _proj_weight_grads(_ProjJob* job, Py_ssize_t c0, Py_ssize_t c1,
                             floating* dtype_of) noexcept nogil:
    """dkernel stacked on drecurrent_kernel, and dbias, for gate columns
    [c0, c1), summed over all steps."""
    cdef Py_ssize_t rows = job.B * job.T, G = 4 * job.H, n = c1 - c0, r, j
    cdef const floating* gates = <const floating*>job.gates
    cdef floating* dbias = <floating*>job.dbias
    if n <= 0:
        return
    # dweights[:, cols] = [X, H_prev].T @ dZ[:, cols]   (I+P, n) = (I+P, B*T)(B*T, n)
    gemm(Trans, NoTrans, <int>(job.I + job.P), <int>n, <int>rows, <floating>1.0,
         <const floating*>job.states, <int>(job.I + job.P), gates + c0, <int>G,
         <floating>0.0, <floating*>job.dweights + c0, <int>G)
    for j in range(c0, c1):
        dbias[j] = 0
    for r in range(rows):
        for j in range(c0, c1):
            dbias[j] += gates[r * G + j]


cdef void _gate_product(Py_ssize_t b0, Py_ssize_t b1, Py_ssize_t H, const floating* a,
                        Py_ssize_t lda, const floating* packed, Py_ssize_t depth,
                        floating* z, Py_ssize_t ldz) noexcept nogil:
    """z[b] += a[b] @ w for rows b in [b0, b1), w (depth, 4H) in gate panels
    (_pack_gate_panels); row b of a and z starts at b * lda and b * ldz."""
    cdef Py_ssize_t L = _lanes(z), u, j0, r0, nr
    for u in range((H + L - 1) // L):
        j0 = u * L
        r0 = b0
        while r0 < b1:
            nr = min(FL_ROWS, b1 - r0)
            _gate_tile(<int>nr, min(L, H - j0), a + r0 * lda, lda, packed + u * depth * 4 * L,
                       depth, z + r0 * ldz + j0, ldz, H, True)
            r0 += nr


cdef void _column_product(Py_ssize_t b0, Py_ssize_t b1, Py_ssize_t n, const floating* a,
                          Py_ssize_t lda, const floating* packed, Py_ssize_t depth,
                          floating* z, Py_ssize_t ldz) noexcept nogil:
    """z[b, :n] = a[b, :depth] @ w for rows b in [b0, b1), w (depth, n) in
    column panels of 4L columns (_pack_column_panels, or
    _pack_transposed_panels of w.T); row b of a and z starts at b * lda and
    b * ldz."""
    cdef Py_ssize_t W = 4 * _lanes(z), p, r0, nr
    for p in range((n + W - 1) // W):
        r0 = b0
        while r0 < b1:
            nr = min(FL_ROWS, b1 - r0)
            _column_tile(<int>nr, min(W, n - p * W), a + r0 * lda, lda, packed + p * depth * W,
                         depth, z + r0 * ldz + p * W, ldz)
            r0 += nr


cdef void _pack_column_panels(const floating* w, Py_ssize_t depth, Py_ssize_t n,
                              floating* packed) noexcept nogil:
    """Lay w (depth, n) out in panels of W = 4L columns: panel p holds, for
    each row k, w[k, pW .. pW + W - 1]; columns past n are zeros. The layout
    _pack_transposed_panels makes of w.T."""
    cdef Py_ssize_t W = 4 * _lanes(packed), p, k, m
    for p in range((n + W - 1) // W):
        m = min(W, n - p * W)
        for k in range(depth):
            memcpy(packed + (p * depth + k) * W, w + k * n + p * W, m * sizeof(floating))
            if m < W:
                memset(packed + (p * depth + k) * W + m, 0, (W - m) * sizeof(floating))


cdef void* _proj_constants(Py_ssize_t H, Py_ssize_t rows_of_zeros, Py_ssize_t itemsize,
                           bint double_precision) except NULL:
    """H ones followed by rows_of_zeros rows of H zeros, of the call's dtype."""
    cdef void* raw = _workspace(H * (1 + rows_of_zeros), itemsize, "projected-LSTM scratch")
    cdef Py_ssize_t j
    memset(raw, 0, H * (1 + rows_of_zeros) * itemsize)
    for j in range(H):
        if double_precision:
            (<double*>raw)[j] = 1
        else:
            (<float*>raw)[j] = 1
    return raw


def forward_projected(const floating[:, :, ::1] x,
                      const floating[:, ::1] kernel,
                      const floating[:, ::1] recurrent_kernel,
                      const floating[:, ::1] projection_kernel,
                      const floating[::1] bias,
                      const unsigned char[:, ::1] mask,
                      const floating[:, ::1] dropout,
                      bint go_backwards,
                      floating[:, :, ::1] outputs,
                      floating[:, ::1] h,
                      floating[:, ::1] c,
                      floating[:, :, ::1] gates,
                      floating[:, :, ::1] states,
                      floating[:, :, ::1] c_prev,
                      floating[:, :, ::1] cells,
                      int activation,
                      int recurrent_activation,
                      int num_threads):
    """Run the projected LSTM's forward kernel into caller-allocated buffers.

    x (B, T, I); kernel (I, 4H); recurrent_kernel (P, 4H); projection_kernel
    (H, P); bias (4H,); mask (B, T) as uint8 or None; dropout (B, P), ones
    for no dropout; outputs (B, T, P); h (B, P) and c (B, H): initial states
    in, final states out; gates (B, T, 4H), states (B, T, I + P), c_prev and
    cells (B, T, H): what the backward pass reads (the activated gates, each
    step's [x_t, dropped-out h_{t-1}], c_{t-1} and m_t). The caller has made BLAS
    single-threaded.
    """
    cdef Py_ssize_t B = x.shape[0], T = x.shape[1], I = x.shape[2]
    cdef Py_ssize_t H = c.shape[1], P = h.shape[1], G = 4 * H
    cdef Py_ssize_t recurrent_size = _gate_panels_size(P, H, _lanes(&h[0, 0]))
    cdef void* constants = NULL
    cdef void* raw = NULL
    cdef floating* packed
    cdef _ProjJob job
    _check_buffers((
        ("kernel", _dims(kernel.shape, 2), (I, G)),
        ("recurrent_kernel", _dims(recurrent_kernel.shape, 2), (P, G)),
        ("projection_kernel", _dims(projection_kernel.shape, 2), (H, P)),
        ("bias", _dims(bias.shape, 1), (G,)),
        ("mask", None if mask is None else _dims(mask.shape, 2), (B, T)),
        ("dropout", _dims(dropout.shape, 2), (B, P)),
        ("outputs", _dims(outputs.shape, 3), (B, T, P)),
        ("h", _dims(h.shape, 2), (B, P)),
        ("c", _dims(c.shape, 2), (B, H)),
        ("gates", _dims(gates.shape, 3), (B, T, G)),
        ("states", _dims(states.shape, 3), (B, T, I + P)),
        ("c_prev", _dims(c_prev.shape, 3), (B, T, H)),
        ("cells", _dims(cells.shape, 3), (B, T, H))))
    if B == 0 or T == 0:
        return
    job.part = PROJ_FORWARD
    job.B, job.T, job.I, job.H, job.P = B, T, I, H, P
    job.nchunks = max(1, min(num_threads, B))
    job.activation, job.recurrent_activation = activation, recurrent_activation
    job.go_backwards, job.double_precision = go_backwards, floating is double
    job.mask = &mask[0, 0] if mask is not None else NULL
    job.x, job.kernel, job.bias = &x[0, 0, 0], &kernel[0, 0], &bias[0]
    job.dropout = &dropout[0, 0]
    job.outputs, job.h, job.c = &outputs[0, 0, 0], &h[0, 0], &c[0, 0]
    job.gates, job.states = &gates[0, 0, 0], &states[0, 0, 0]
    job.c_prev, job.cells = &c_prev[0, 0, 0], &cells[0, 0, 0]
    try:
        constants = _proj_constants(H, 0, sizeof(h[0, 0]), floating is double)
        raw = _workspace(recurrent_size + _transposed_panels_size(P, H, _lanes(&h[0, 0])),
                         sizeof(h[0, 0]), "packed weights")
        packed = _aligned(raw, &h[0, 0])
        job.ones = constants
        job.packed_recurrent, job.packed_projection = packed, packed + recurrent_size
        with nogil:
            _pack_gate_panels(&recurrent_kernel[0, 0], P, H, packed)
            _pack_column_panels(&projection_kernel[0, 0], H, P, packed + recurrent_size)
            run_blocks(_proj_block, &job, job.nchunks, num_threads)
    finally:
        free(constants)
        free(raw)


def backward_projected(const floating[:, ::1] kernel,
                       const floating[:, ::1] recurrent_kernel,
                       const floating[:, ::1] projection_kernel,
                       const unsigned char[:, ::1] mask,
                       const floating[:, ::1] dropout,
                       bint go_backwards,
                       const floating[:, :, ::1] grad_outputs,
                       floating[:, :, ::1] gates,
                       const floating[:, :, ::1] states,
                       const floating[:, :, ::1] c_prev,
                       const floating[:, :, ::1] cells,
                       floating[:, :, ::1] grad_h,
                       floating[:, ::1] dm,
                       floating[:, ::1] dh_rec,
                       floating[:, ::1] dh_pass,
                       floating[:, ::1] dc,
                       floating[:, ::1] carry,
                       floating[:, :, ::1] dx,
                       floating[:, ::1] dweights,
                       floating[:, ::1] dprojection_kernel,
                       floating[::1] dbias,
                       int activation,
                       int recurrent_activation,
                       int num_threads):
    """Run the projected LSTM's backward kernel into caller-allocated buffers.

    The weights, mask, dropout, gates, states, c_prev and cells are those of
    a ``forward_projected``; the gate gradients overwrite ``gates``.
    grad_outputs (B, T, P); grad_h (B, T, P) receives each step's dh_t;
    dm (B, H) is scratch. dh_pass (B, P) and dc (B, H) come in holding the
    gradients of the final states, dh_rec and carry (B, P) as zeros; on exit
    dh_rec * dropout + dh_pass is dh0 and dc is dc0. dx (B, T, I), or None
    to skip its product; dweights (I + P, 4H) (dkernel stacked on
    drecurrent_kernel), dprojection_kernel (H, P) and dbias (4H,) receive
    the weight gradients.
    """
    cdef Py_ssize_t B = gates.shape[0], T = gates.shape[1], I = kernel.shape[0]
    cdef Py_ssize_t H = dc.shape[1], P = dh_rec.shape[1], G = 4 * H
    cdef Py_ssize_t recurrent_size = _transposed_panels_size(P, G, _lanes(&dc[0, 0]))
    cdef void* constants = NULL
    cdef void* raw = NULL
    cdef floating* packed
    cdef _ProjJob job
    _check_buffers((
        ("kernel", _dims(kernel.shape, 2), (I, G)),
        ("recurrent_kernel", _dims(recurrent_kernel.shape, 2), (P, G)),
        ("projection_kernel", _dims(projection_kernel.shape, 2), (H, P)),
        ("mask", None if mask is None else _dims(mask.shape, 2), (B, T)),
        ("dropout", _dims(dropout.shape, 2), (B, P)),
        ("grad_outputs", _dims(grad_outputs.shape, 3), (B, T, P)),
        ("gates", _dims(gates.shape, 3), (B, T, G)),
        ("states", _dims(states.shape, 3), (B, T, I + P)),
        ("c_prev", _dims(c_prev.shape, 3), (B, T, H)),
        ("cells", _dims(cells.shape, 3), (B, T, H)),
        ("grad_h", _dims(grad_h.shape, 3), (B, T, P)),
        ("dm", _dims(dm.shape, 2), (B, H)),
        ("dh_rec", _dims(dh_rec.shape, 2), (B, P)),
        ("dh_pass", _dims(dh_pass.shape, 2), (B, P)),
        ("carry", _dims(carry.shape, 2), (B, P)),
        ("dx", None if dx is None else _dims(dx.shape, 3), (B, T, I)),
        ("dweights", _dims(dweights.shape, 2), (I + P, G)),
        ("dprojection_kernel", _dims(dprojection_kernel.shape, 2), (H, P)),
        ("dbias", _dims(dbias.shape, 1), (G,))))
    if B == 0 or T == 0:
        raise ValueError(f"backward_projected needs at least one sequence and one step, "
                         f"got gates of shape {(B, T, G)}")
    job.B, job.T, job.I, job.H, job.P = B, T, I, H, P
    job.nchunks = max(1, min(num_threads, B))
    job.ncolumns = max(1, min(num_threads, (G + 15) // 16))
    job.activation, job.recurrent_activation = activation, recurrent_activation
    job.go_backwards, job.double_precision = go_backwards, floating is double
    job.mask = &mask[0, 0] if mask is not None else NULL
    job.kernel, job.dropout = &kernel[0, 0], &dropout[0, 0]
    job.grad_outputs, job.gates = &grad_outputs[0, 0, 0], &gates[0, 0, 0]
    job.states, job.c_prev = <void*>&states[0, 0, 0], <void*>&c_prev[0, 0, 0]
    job.cells = <void*>&cells[0, 0, 0]
    job.grad_h, job.dm, job.dh_rec = &grad_h[0, 0, 0], &dm[0, 0], &dh_rec[0, 0]
    job.dh_pass, job.dc, job.carry = &dh_pass[0, 0], &dc[0, 0], &carry[0, 0]
    job.dx = &dx[0, 0, 0] if dx is not None else NULL
    job.dweights = &dweights[0, 0]
    job.dprojection, job.dbias = &dprojection_kernel[0, 0], &dbias[0]
    try:
        constants = _proj_constants(H, job.nchunks, sizeof(dc[0, 0]), floating is double)
        raw = _workspace(recurrent_size + _transposed_panels_size(H, P, _lanes(&dc[0, 0])),
                         sizeof(dc[0, 0]), "packed weights")
        packed = _aligned(raw, &dc[0, 0])
        job.ones = constants
        job.zeros = <char*>constants + H * sizeof(dc[0, 0])
        job.packed_recurrent, job.packed_projection = packed, packed + recurrent_size
        with nogil:
            # dh_rec = dZ @ recurrent_kernel.T and dm = dh @ projection_kernel.T
            _pack_transposed_panels(&recurrent_kernel[0, 0], P, G, packed)
            _pack_transposed_panels(&projection_kernel[0, 0], H, P, packed + recurrent_size)
            job.part = PROJ_BACKWARD
            run_blocks(_proj_block, &job, job.nchunks, num_threads)
            # The gate columns' blocks, then one for the projection's gradient.
            job.part = PROJ_WEIGHT_GRADS
            run_blocks(_proj_block, &job, job.ncolumns + 1, num_threads)
    finally:
        free(constants)
        free(raw)
