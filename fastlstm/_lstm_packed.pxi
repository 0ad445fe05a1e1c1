# Packed batches: sequences of different lengths, each step touching only
# the sequences that have not ended.
#
# Layout. The sequences are sorted by decreasing length and laid out time
# major, as torch.nn.utils.rnn.PackedSequence lays them out: step t holds
# its first batch_sizes[t] sequences in consecutive rows, starting at row
# offsets[t] = batch_sizes[0] + ... + batch_sizes[t-1]. Every buffer of N
# rows (data, outputs, gates, h_prev, c_prev, grad_outputs, dx) has this
# layout, so no row is padding. The running states h, c (B, H) are indexed
# by sequence: in, the initial states; out, each sequence's state after its
# last processed step.
#
# Forward:
#   1. gates = data @ kernel                  one GEMM over the N valid rows
#   2. each step t, in processing order, for the sequences r < batch_sizes[t]:
#        h_prev[t, r] = h[r], and c_prev[t, r] = c[r] (kept for the backward
#        pass); then register tiles
#        gates[t, r] += h_prev[t, r] @ recurrent_kernel   (M = batch_sizes[t])
#        and the fused element-wise step, which updates h[r], c[r], writes
#        outputs[t, r] and replaces the gates by their activations.
#    In the reverse direction the steps run from T-1 down to 0: a sequence
#    enters at its own last step with its initial state, since h[r] was not
#    touched by the steps it has no row in.
# Backward, in reverse processing order, the gradients dh, dc (B, H) of the
# running states coming in as those of the final states:
#   3. the element-wise pass turns dh[r] + grad_outputs[t, r], dc[r] and the
#      activated gates into dZ_t (written over the gates) and dc[r] for the
#      step before; then register tiles dh[r] = dZ_t[r] @ recurrent_kernel.T.
#      On exit dh, dc hold the initial states' gradients.
#   4. dx = dZ @ kernel.T                     one GEMM over the N rows
#   5. dkernel = data.T @ dZ, drecurrent_kernel = h_prev.T @ dZ, dbias the
#      column sums of dZ, by blocks of the 4H columns.
#
# Threads. A sequence's recurrence reads no other's, so the time loop splits
# the sorted sequences into blocks of consecutive rows, one per thread, with
# as many valid steps in each block (the caller gives the bounds): no
# meeting per step. The products 1., 4. run by chunks of rows, 5. by blocks
# of columns, each on fastlstm's pool with BLAS single-threaded inside (the
# caller makes sure).
from libc.stdint cimport int64_t


ctypedef struct _PackedJob:
    int part
    bint double_precision, reverse
    int activation, recurrent_activation
    Py_ssize_t N, T, I, H, nchunks, ncolumns
    const int64_t* batch_sizes
    const Py_ssize_t* offsets
    const int64_t* bounds
    const void* data
    const void* kernel
    const void* packed
    const void* bias
    const void* grad_outputs
    void* h
    void* c
    void* outputs
    void* gates
    void* h_prev
    void* c_prev
    void* dx
    void* dkernel
    void* drecurrent
    void* dbias


cdef enum _PackedPart:
    PACKED_INPUT_PRODUCT = 0
    PACKED_FORWARD = 1
    PACKED_BACKWARD = 2
    PACKED_INPUT_GRADIENT = 3
    PACKED_WEIGHT_GRADS = 4


cdef inline void _packed_step_forward(
    Py_ssize_t n, Py_ssize_t H, floating* z, const floating* bias, floating* c, floating* h,
    floating* out, floating* keep_c, int activation, int recurrent_activation,
) noexcept nogil:
    """The fused element-wise step of n units of one sequence: z holds the
    gate pre-activations without the bias, their blocks H apart, and is
    replaced by the activated gates; c and h are updated in place."""
    cdef Py_ssize_t j
    cdef floating gi, gf, gg, go, cell, hidden
    for j in range(n):
        gi = _activate(z[j] + bias[j], recurrent_activation)
        gf = _activate(z[H + j] + bias[H + j], recurrent_activation)
        gg = _activate(z[2 * H + j] + bias[2 * H + j], activation)
        go = _activate(z[3 * H + j] + bias[3 * H + j], recurrent_activation)
        keep_c[j] = c[j]
        cell = gf * c[j] + gi * gg
        hidden = go * _activate(cell, activation)
        z[j] = gi
        z[H + j] = gf
        z[2 * H + j] = gg
        z[3 * H + j] = go
        c[j] = cell
        h[j] = hidden
        out[j] = hidden


cdef inline void _packed_step_backward(
    Py_ssize_t H, floating* z, const floating* cp, const floating* dh, floating* dc,
    const floating* dy, int activation, int recurrent_activation,
) noexcept nogil:
    """The fused element-wise backward step of one sequence: the activated
    gates in z become dZ, the gradients of the pre-activations, from the
    gradients dh + dy of h_t and dc of c_t; dc becomes that of c_{t-1}."""
    cdef Py_ssize_t j
    cdef floating gi, gf, gg, go, cell_prev, cell, act_cell, grad_h, grad_cell
    for j in range(H):
        grad_h = dh[j] + dy[j]
        gi = z[j]
        gf = z[H + j]
        gg = z[2 * H + j]
        go = z[3 * H + j]
        cell_prev = cp[j]
        cell = gf * cell_prev + gi * gg
        act_cell = _activate(cell, activation)
        grad_cell = dc[j] + grad_h * go * _activate_grad(act_cell, activation)
        z[j] = grad_cell * gg * _activate_grad(gi, recurrent_activation)
        z[H + j] = grad_cell * cell_prev * _activate_grad(gf, recurrent_activation)
        z[2 * H + j] = grad_cell * gi * _activate_grad(gg, activation)
        z[3 * H + j] = grad_h * act_cell * _activate_grad(go, recurrent_activation)
        dc[j] = grad_cell * gf


cdef void _packed_forward_rows(_PackedJob* job, Py_ssize_t r0, Py_ssize_t r1,
                               floating* dtype_of) noexcept nogil:
    """The time loop of sequences [r0, r1) of the sorted batch."""
    cdef Py_ssize_t H = job.H, G = 4 * H, T = job.T
    cdef Py_ssize_t L = _lanes(dtype_of)
    cdef Py_ssize_t panels = (H + L - 1) // L
    cdef const floating* packed = <const floating*>job.packed
    cdef const floating* bias = <const floating*>job.bias
    cdef floating* h = <floating*>job.h
    cdef floating* c = <floating*>job.c
    cdef floating* outputs = <floating*>job.outputs
    cdef floating* gates = <floating*>job.gates
    cdef floating* h_prev = <floating*>job.h_prev
    cdef floating* c_prev = <floating*>job.c_prev
    cdef Py_ssize_t s, t, b, base, r, u, j0, n, rr, nr
    for s in range(T):
        t = T - 1 - s if job.reverse else s
        b = min(r1, <Py_ssize_t>job.batch_sizes[t])
        if b <= r0:
            continue
        base = job.offsets[t]
        # The tiles read h_{t-1} of every unit while the steps write h_t.
        memcpy(h_prev + (base + r0) * H, h + r0 * H, (b - r0) * H * sizeof(floating))
        # Panel by panel, so that one panel of the weights serves every row
        # block of the step while it is in cache.
        for u in range(panels):
            j0 = u * L
            n = min(L, H - j0)
            rr = r0
            while rr < b:
                nr = min(FL_ROWS, b - rr)
                # Z_t[rows, gates of the panel's units] += h_prev[rows] @ panel u
                _gate_tile(<int>nr, n, h_prev + (base + rr) * H, H, packed + u * H * 4 * L,
                           H, gates + (base + rr) * G + j0, G, H, True)
                for r in range(rr, rr + nr):
                    if job.activation == TANH and job.recurrent_activation == SIGMOID:
                        _packed_step_forward(n, H, gates + (base + r) * G + j0, bias + j0,
                                             c + r * H + j0, h + r * H + j0,
                                             outputs + (base + r) * H + j0,
                                             c_prev + (base + r) * H + j0, TANH, SIGMOID)
                    else:
                        _packed_step_forward(n, H, gates + (base + r) * G + j0, bias + j0,
                                             c + r * H + j0, h + r * H + j0,
                                             outputs + (base + r) * H + j0,
                                             c_prev + (base + r) * H + j0, job.activation,
                                             job.recurrent_activation)
                rr += nr


cdef void _packed_backward_rows(_PackedJob* job, Py_ssize_t r0, Py_ssize_t r1,
                                floating* dtype_of) noexcept nogil:
    """The backward pass through time of sequences [r0, r1): job.h and job.c
    hold their dh and dc."""
    cdef Py_ssize_t H = job.H, G = 4 * H, T = job.T
    cdef Py_ssize_t W = 4 * _lanes(dtype_of)
    cdef const floating* packed = <const floating*>job.packed
    cdef const floating* grad_outputs = <const floating*>job.grad_outputs
    cdef const floating* c_prev = <const floating*>job.c_prev
    cdef floating* dh = <floating*>job.h
    cdef floating* dc = <floating*>job.c
    cdef floating* gates = <floating*>job.gates
    cdef Py_ssize_t s, t, b, base, r, p, n, rr, nr
    for s in range(T - 1, -1, -1):
        t = T - 1 - s if job.reverse else s
        b = min(r1, <Py_ssize_t>job.batch_sizes[t])
        if b <= r0:
            continue
        base = job.offsets[t]
        for r in range(r0, b):
            if job.activation == TANH and job.recurrent_activation == SIGMOID:
                _packed_step_backward(H, gates + (base + r) * G, c_prev + (base + r) * H,
                                      dh + r * H, dc + r * H, grad_outputs + (base + r) * H,
                                      TANH, SIGMOID)
            else:
                _packed_step_backward(H, gates + (base + r) * G, c_prev + (base + r) * H,
                                      dh + r * H, dc + r * H, grad_outputs + (base + r) * H,
                                      job.activation, job.recurrent_activation)
        # dh[rows] = dZ_t[rows] @ recurrent_kernel.T   (rows, H) = (rows, 4H)(4H, H)
        for p in range((H + W - 1) // W):
            n = min(W, H - p * W)
            rr = r0
            while rr < b:
                nr = min(FL_ROWS, b - rr)
                _column_tile(<int>nr, n, gates + (base + rr) * G, G, packed + p * G * W, G,
                             dh + rr * H + p * W, H)
                rr += nr


cdef void _packed_block(void* ctx, Py_ssize_t k) noexcept nogil:
    """Block k of the part of a packed call that the job names."""
    if (<_PackedJob*>ctx).double_precision:
        _packed_part(<_PackedJob*>ctx, k, <double*>NULL)
    else:
        _packed_part(<_PackedJob*>ctx, k, <float*>NULL)


cdef void _packed_part(_PackedJob* job, Py_ssize_t k, floating* dtype_of) noexcept nogil:
    cdef Py_ssize_t N = job.N, I = job.I, H = job.H, G = 4 * H
    cdef Py_ssize_t n0 = _chunk_start(k, job.nchunks, N)
    cdef Py_ssize_t n1 = _chunk_start(k + 1, job.nchunks, N)
    cdef Py_ssize_t c0, c1, r, j
    cdef const floating* data = <const floating*>job.data
    cdef const floating* kernel = <const floating*>job.kernel
    cdef floating* gates = <floating*>job.gates
    cdef floating* dbias
    cdef const floating* row
    cdef unsigned int csr = fl_flush_denormals()
    if job.part == PACKED_FORWARD:
        _packed_forward_rows(job, job.bounds[k], job.bounds[k + 1], dtype_of)
    elif job.part == PACKED_BACKWARD:
        _packed_backward_rows(job, job.bounds[k], job.bounds[k + 1], dtype_of)
    elif job.part == PACKED_INPUT_PRODUCT:
        if n1 > n0:
            # Z[rows] = data[rows] @ kernel   (rows, 4H) = (rows, I)(I, 4H)
            gemm(NoTrans, NoTrans, <int>(n1 - n0), <int>G, <int>I, <floating>1.0,
                 data + n0 * I, <int>I, kernel, <int>G, <floating>0.0, gates + n0 * G, <int>G)
    elif job.part == PACKED_INPUT_GRADIENT:
        if n1 > n0:
            # dx[rows] = dZ[rows] @ kernel.T   (rows, I) = (rows, 4H)(4H, I)
            gemm(NoTrans, Trans, <int>(n1 - n0), <int>I, <int>G, <floating>1.0,
                 gates + n0 * G, <int>G, kernel, <int>G, <floating>0.0,
                 <floating*>job.dx + n0 * I, <int>I)
    else:
        c0 = _column_start(k, job.ncolumns, G)
        c1 = _column_start(k + 1, job.ncolumns, G)
        if c1 > c0:
            # dkernel[:, cols] = data.T @ dZ[:, cols]   (I, n) = (I, N)(N, n)
            gemm(Trans, NoTrans, <int>I, <int>(c1 - c0), <int>N, <floating>1.0, data, <int>I,
                 gates + c0, <int>G, <floating>0.0, <floating*>job.dkernel + c0, <int>G)
            # drecurrent_kernel[:, cols] = h_prev.T @ dZ[:, cols]   (H, n) = (H, N)(N, n)
            gemm(Trans, NoTrans, <int>H, <int>(c1 - c0), <int>N, <floating>1.0,
                 <const floating*>job.h_prev, <int>H, gates + c0, <int>G, <floating>0.0,
                 <floating*>job.drecurrent + c0, <int>G)
            # dbias[cols] = dZ[:, cols].sum(0)
            dbias = <floating*>job.dbias
            for j in range(c0, c1):
                dbias[j] = 0
            for r in range(N):
                row = gates + r * G
                for j in range(c0, c1):
                    dbias[j] += row[j]
    fl_restore_denormals(csr)


cdef Py_ssize_t* _packed_offsets(const int64_t[::1] batch_sizes, Py_ssize_t B, Py_ssize_t N,
                                 const int64_t[::1] bounds) except NULL:
    """The first row of each step, after checking batch_sizes and bounds:
    the pointer arithmetic of the kernels trusts them."""
    cdef Py_ssize_t T = batch_sizes.shape[0], t, total = 0
    cdef Py_ssize_t* offsets
    if T < 1 or batch_sizes[0] != B:
        raise ValueError(f"batch_sizes must start with the batch size {B}, got "
                         f"{[batch_sizes[t] for t in range(min(T, 1))]}")
    for t in range(T):
        if batch_sizes[t] < 1 or (t and batch_sizes[t] > batch_sizes[t - 1]):
            raise ValueError(f"batch_sizes must be positive and non-increasing (sequences "
                             f"sorted by decreasing length), got "
                             f"{[batch_sizes[k] for k in range(T)]}")
        total += batch_sizes[t]
    if total != N:
        raise ValueError(f"batch_sizes must sum to the {N} rows of the packed data, got {total}")
    if bounds.shape[0] < 2 or bounds[0] != 0 or bounds[bounds.shape[0] - 1] != B:
        raise ValueError(f"bounds must run from 0 to the batch size {B}, got "
                         f"{[bounds[t] for t in range(bounds.shape[0])]}")
    for t in range(1, bounds.shape[0]):
        if bounds[t] < bounds[t - 1]:
            raise ValueError(f"bounds must be non-decreasing, got "
                             f"{[bounds[k] for k in range(bounds.shape[0])]}")
    offsets = <Py_ssize_t*>malloc(T * sizeof(Py_ssize_t))
    if offsets == NULL:
        raise MemoryError("cannot allocate the offsets of the steps")
    total = 0
    for t in range(T):
        offsets[t] = total
        total += batch_sizes[t]
    return offsets


def packed_forward(const floating[:, ::1] data,
                   const floating[:, ::1] kernel,
                   const floating[:, ::1] recurrent_kernel,
                   const floating[::1] bias,
                   const int64_t[::1] batch_sizes,
                   const int64_t[::1] bounds,
                   bint reverse,
                   floating[:, ::1] h,
                   floating[:, ::1] c,
                   floating[:, ::1] outputs,
                   floating[:, ::1] gates,
                   floating[:, ::1] h_prev,
                   floating[:, ::1] c_prev,
                   int activation,
                   int recurrent_activation,
                   int num_threads):
    """Run the forward kernel of a packed batch into caller-allocated buffers.

    data (N, I) packed time major, sequences sorted by decreasing length;
    batch_sizes (T,) int64, the sequences of each step; kernel (I, 4H),
    recurrent_kernel (H, 4H), bias (4H,); h, c (B, H): initial states in,
    each sequence's final state out; outputs, h_prev, c_prev (N, H) and
    gates (N, 4H), the activated gates out. bounds (int64) splits the
    sequences into blocks of rows run by one thread each, from 0 to B.
    reverse runs the steps from the last. The caller has made BLAS
    single-threaded.
    """
    cdef Py_ssize_t N = data.shape[0], I = data.shape[1], H = h.shape[1], B = h.shape[0]
    cdef Py_ssize_t G = 4 * H
    cdef void* raw = NULL
    cdef Py_ssize_t* offsets
    cdef _PackedJob job
    _check_buffers((
        ("kernel", _dims(kernel.shape, 2), (I, G)),
        ("recurrent_kernel", _dims(recurrent_kernel.shape, 2), (H, G)),
        ("bias", _dims(bias.shape, 1), (G,)),
        ("c", _dims(c.shape, 2), (B, H)),
        ("outputs", _dims(outputs.shape, 2), (N, H)),
        ("gates", _dims(gates.shape, 2), (N, G)),
        ("h_prev", _dims(h_prev.shape, 2), (N, H)),
        ("c_prev", _dims(c_prev.shape, 2), (N, H))))
    offsets = _packed_offsets(batch_sizes, B, N, bounds)
    try:
        raw = _workspace(_gate_panels_size(H, H, _lanes(&h[0, 0])), sizeof(h[0, 0]),
                         "packed weights")
        job.part, job.reverse = PACKED_INPUT_PRODUCT, reverse
        job.double_precision = floating is double
        job.activation, job.recurrent_activation = activation, recurrent_activation
        job.N, job.T, job.I, job.H = N, batch_sizes.shape[0], I, H
        job.nchunks, job.ncolumns = max(1, min(num_threads, N // 16)), 1
        job.batch_sizes, job.offsets, job.bounds = &batch_sizes[0], offsets, &bounds[0]
        job.data, job.kernel, job.bias = &data[0, 0], &kernel[0, 0], &bias[0]
        job.packed = _aligned(raw, &h[0, 0])
        job.grad_outputs = NULL
        job.h, job.c, job.outputs, job.gates = &h[0, 0], &c[0, 0], &outputs[0, 0], &gates[0, 0]
        job.h_prev, job.c_prev = &h_prev[0, 0], &c_prev[0, 0]
        job.dx, job.dkernel, job.drecurrent, job.dbias = NULL, NULL, NULL, NULL
        with nogil:
            _pack_gate_panels(&recurrent_kernel[0, 0], H, H, <floating*>job.packed)
            run_blocks(_packed_block, &job, job.nchunks, num_threads)
            job.part = PACKED_FORWARD
            run_blocks(_packed_block, &job, bounds.shape[0] - 1, num_threads)
    finally:
        free(raw)
        free(offsets)


def packed_backward(const floating[:, ::1] data,
                    const floating[:, ::1] kernel,
                    const floating[:, ::1] recurrent_kernel,
                    const int64_t[::1] batch_sizes,
                    const int64_t[::1] bounds,
                    bint reverse,
                    const floating[:, ::1] grad_outputs,
                    floating[:, ::1] gates,
                    const floating[:, ::1] h_prev,
                    const floating[:, ::1] c_prev,
                    floating[:, ::1] dh,
                    floating[:, ::1] dc,
                    floating[:, ::1] dx,
                    floating[:, ::1] dkernel,
                    floating[:, ::1] drecurrent_kernel,
                    floating[::1] dbias,
                    int activation,
                    int recurrent_activation,
                    int num_threads):
    """Run the backward kernel of a packed batch into caller-allocated buffers.

    data, kernel, recurrent_kernel, batch_sizes, reverse, gates, h_prev and
    c_prev are those of a ``packed_forward``; the gate gradients overwrite
    ``gates``. grad_outputs (N, H); dh, dc (B, H): the gradients of the
    final states in, of the initial states out. dx (N, I) receives the
    input gradient (None skips its product); dkernel, drecurrent_kernel and
    dbias the weight gradients.
    """
    cdef Py_ssize_t N = data.shape[0], I = data.shape[1], H = dh.shape[1], B = dh.shape[0]
    cdef Py_ssize_t G = 4 * H
    cdef void* raw = NULL
    cdef Py_ssize_t* offsets
    cdef _PackedJob job
    _check_buffers((
        ("kernel", _dims(kernel.shape, 2), (I, G)),
        ("recurrent_kernel", _dims(recurrent_kernel.shape, 2), (H, G)),
        ("grad_outputs", _dims(grad_outputs.shape, 2), (N, H)),
        ("gates", _dims(gates.shape, 2), (N, G)),
        ("h_prev", _dims(h_prev.shape, 2), (N, H)),
        ("c_prev", _dims(c_prev.shape, 2), (N, H)),
        ("dc", _dims(dc.shape, 2), (B, H)),
        ("dx", None if dx is None else _dims(dx.shape, 2), (N, I)),
        ("dkernel", _dims(dkernel.shape, 2), (I, G)),
        ("drecurrent_kernel", _dims(drecurrent_kernel.shape, 2), (H, G)),
        ("dbias", _dims(dbias.shape, 1), (G,))))
    offsets = _packed_offsets(batch_sizes, B, N, bounds)
    try:
        raw = _workspace(_transposed_panels_size(H, G, _lanes(&dh[0, 0])), sizeof(dh[0, 0]),
                         "packed weights")
        job.part, job.reverse = PACKED_BACKWARD, reverse
        job.double_precision = floating is double
        job.activation, job.recurrent_activation = activation, recurrent_activation
        job.N, job.T, job.I, job.H = N, batch_sizes.shape[0], I, H
        job.nchunks = max(1, min(num_threads, N // 16))
        job.ncolumns = max(1, min(num_threads, (G + 15) // 16))
        job.batch_sizes, job.offsets, job.bounds = &batch_sizes[0], offsets, &bounds[0]
        job.data, job.kernel, job.bias = &data[0, 0], &kernel[0, 0], NULL
        job.packed = _aligned(raw, &dh[0, 0])
        job.grad_outputs = &grad_outputs[0, 0]
        job.h, job.c, job.outputs, job.gates = &dh[0, 0], &dc[0, 0], NULL, &gates[0, 0]
        job.h_prev, job.c_prev = <void*>&h_prev[0, 0], <void*>&c_prev[0, 0]
        job.dx = &dx[0, 0] if dx is not None else NULL
        job.dkernel, job.drecurrent = &dkernel[0, 0], &drecurrent_kernel[0, 0]
        job.dbias = &dbias[0]
        with nogil:
            _pack_transposed_panels(&recurrent_kernel[0, 0], H, G, <floating*>job.packed)
            run_blocks(_packed_block, &job, bounds.shape[0] - 1, num_threads)
            if job.dx != NULL:
                job.part = PACKED_INPUT_GRADIENT
                run_blocks(_packed_block, &job, job.nchunks, num_threads)
            job.part = PACKED_WEIGHT_GRADS
            run_blocks(_packed_block, &job, job.ncolumns, num_threads)
    finally:
        free(raw)
        free(offsets)
