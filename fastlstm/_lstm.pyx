"""LSTM forward and backpropagation-through-time kernels.

Layout. Every workspace is batch-major, like the input x (B, T, I): the gate
buffer is (B, T, 4H), the saved states (B, T, H). The rows a time step touches,
``gates[:, t, :]``, are a matrix with leading dimension T*4H, which BLAS takes
as it is, so neither x nor the outputs are ever transposed. Buffers are indexed
by input time t; with ``go_backwards`` processing step s reads input time
t = T-1-s and writes ``outputs[:, s]``.

Forward, per thread (a contiguous block of batch rows):
  1. gates[rows] = x[rows] @ kernel                      one GEMM for all steps
  2. for each step, in processing order, for each panel of L units and each
     block of up to R rows: one register tile computes
       gates[rows, t, i/f/c/o of the panel's units] += h_{t-1}[rows] @ panel
     (small layers, instead of 1. and this: the tile computes
        [x_t, h_{t-1}][rows] @ [kernel; recurrent_kernel] panel; the
        planner, fastlstm/_plan.py, chooses)
     and the fused element-wise step runs on the tile's units at once: add
     bias, activate, update c and h, apply the mask, keep the activated gates
     (training) for the backward pass.
Backward, per thread, in reverse processing order:
  3. one fused pass turns dh, dc and the kept gates into the pre-activation
     gradients dZ_t, written over the gates, and dc_{t-1};
     then register tiles: dh_{t-1}[rows] = dZ_t[rows] @ recurrent_kernel.T
  4. dx[rows] = dZ[rows] @ kernel.T  (one GEMM; skipped when not wanted)
and, once every thread is done, each thread takes a block of the 4H columns:
  5. [dkernel; drecurrent_kernel] = [x, h_prev].T @ dZ, one GEMM, and
     dbias = sum of dZ. The forward pass keeps each step's input beside the
     hidden state its product read, so [x_t, h_{t-1}] is one row.

Packed weights. BLAS packs its right-hand operand on every call, which for a
step's product (a few rows times the whole recurrent kernel) costs as much as
the product. So each call lays the weights its steps read out once, in a
workspace of its own: for the forward step in panels of L units (L lanes of
the build's vectors), each row of a panel the i, f, c, o columns of those
units, so one tile of R rows by four vectors holds every gate of L units;
for the backward step recurrent_kernel.T in panels of 4L columns. Units past
H are zero in the last panel, which goes through a tile buffer so that no
buffer is read or written past its end. The big products (1., 4., 5.) stay
with BLAS, which runs them at its full speed.

Threads. The recurrence of one sequence never reads another's, so the batch is
split across threads for the whole time loop: no synchronisation per step.
A pass of too few rows to share that way splits each step's units instead,
the threads meeting at every step (_split_units; the planner,
fastlstm/_plan.py, chooses).
The threads are fastlstm's pool (_fl_pool.h): each parallel part of a call is
a job of blocks the calling thread and the idle workers claim in order, and
the caller waits only for blocks already running, so on a busy machine it
takes over the block of a worker the OS has not scheduled yet instead of
waiting a whole time slice for it. BLAS is called single-threaded inside (the
caller makes sure), so BLAS threads and the pool's never compete for cores.
All buffers but the packed weights (allocated by the entry points) are
allocated by the caller; nothing is allocated inside the threads' loops.

C helpers. The fast exp and the activations (_fl_math.h), the register tiles
(_fl_tiles.h) and the threads' waiting (_fl_sync.h) are C headers, compiled
into each build with its flags. The activations are written so that the
fused loops vectorise (libm's exp and tanh do not): one exponential and one
division each, a few ulp from the truth, tested against float64.
"""
from cython cimport floating
cimport openmp
from libc.stdlib cimport free, malloc
from libc.string cimport memcmp, memcpy, memset

from ._blas cimport gemm, NoTrans, Trans
from ._pool cimport report_held_up, run_blocks

# The C helpers, each header compiled with this build's flags.
cdef extern from "_fl_math.h":
    float fl_sigmoidf(float x) noexcept nogil
    float fl_tanhf(float x) noexcept nogil
    double fl_sigmoid(double x) noexcept nogil
    double fl_tanh(double x) noexcept nogil
    unsigned int fl_flush_denormals() noexcept nogil
    void fl_restore_denormals(unsigned int saved) noexcept nogil

cdef extern from "_fl_tiles.h":
    const int FL_ROWS
    const int FL_VECTOR_BYTES
    void fl_tile_f(int rows, const float* a, Py_ssize_t lda, const float* panel,
                   Py_ssize_t depth, float* z, Py_ssize_t ldz, Py_ssize_t gate_stride,
                   int accumulate) noexcept nogil
    void fl_tile_d(int rows, const double* a, Py_ssize_t lda, const double* panel,
                   Py_ssize_t depth, double* z, Py_ssize_t ldz, Py_ssize_t gate_stride,
                   int accumulate) noexcept nogil

cdef extern from "_fl_sync.h":
    const int FL_OPENMP
    void fl_publish(long* done, long value) noexcept nogil
    void fl_wait_for(long* done, long target) noexcept nogil
    long fl_load(long* value) noexcept nogil
    bint fl_claim(long* word, long expected, long desired) noexcept nogil
    void fl_count(long* done) noexcept nogil
    double fl_now() noexcept nogil
    double fl_wait_counted(long* done, long target) noexcept nogil


cdef inline floating _sigmoid(floating x) noexcept nogil:
    if floating is float:
        return fl_sigmoidf(x)
    else:
        return fl_sigmoid(x)


cdef inline floating _tanh(floating x) noexcept nogil:
    if floating is float:
        return fl_tanhf(x)
    else:
        return fl_tanh(x)


cpdef enum Activation:
    # The one definition of the activation codes: functional.py passes
    # Activation[name.upper()] for "tanh", "sigmoid" and "hard_sigmoid".
    TANH = 0
    SIGMOID = 1
    HARD_SIGMOID = 2


cdef inline floating _activate(floating x, int kind) noexcept nogil:
    cdef floating y
    if kind == TANH:
        return _tanh(x)
    if kind == SIGMOID:
        return _sigmoid(x)
    # Keras 3's hard_sigmoid, clip(x / 6 + 1/2, 0, 1); NaN fails both tests and stays NaN.
    y = x / 6 + <floating>0.5
    return 0 if y < 0 else (1 if y > 1 else y)


cdef inline floating _activate_grad(floating y, int kind) noexcept nogil:
    """Derivative of activation ``kind`` where its value is ``y``."""
    if kind == TANH:
        return 1 - y * y
    if kind == SIGMOID:
        return y * (1 - y)
    return <floating>(1.0 / 6.0) if 0 < y < 1 else 0


def max_threads():
    """OpenMP's default number of threads (1 without OpenMP)."""
    if FL_OPENMP:
        return openmp.omp_get_max_threads()
    return 1


def _activations(floating[::1] x, floating[::1] sigmoid_out, floating[::1] tanh_out):
    """Test hook: the kernels' sigmoid and tanh applied to x."""
    cdef Py_ssize_t j
    for j in range(x.shape[0]):
        sigmoid_out[j] = _sigmoid(x[j])
        tanh_out[j] = _tanh(x[j])


cdef inline Py_ssize_t _time(Py_ssize_t step, Py_ssize_t timesteps, bint go_backwards) noexcept nogil:
    """Input time read at processing step ``step``."""
    return timesteps - 1 - step if go_backwards else step


cdef inline Py_ssize_t _chunk_start(Py_ssize_t k, Py_ssize_t nchunks, Py_ssize_t n) noexcept nogil:
    return (k * n) // nchunks


cdef inline Py_ssize_t _column_start(Py_ssize_t k, Py_ssize_t nchunks, Py_ssize_t n) noexcept nogil:
    # Column blocks in multiples of 16 keep each thread's slice vector-aligned.
    cdef Py_ssize_t blocks = (n + 15) // 16
    return min(((k * blocks) // nchunks) * 16, n)


def gate_panels_size(Py_ssize_t depth, Py_ssize_t units, Py_ssize_t itemsize):
    """Elements of the gate panels of ``depth`` rows of weights for
    ``units`` units (units padded to whole panels of this build's lanes)."""
    return _gate_panels_size(depth, units, FL_VECTOR_BYTES // itemsize)


def pack_gate_panels(const floating[:, ::1] weights, floating[::1] packed):
    """Lay ``weights`` (depth, 4H) out in the gate panels the forward step
    reads, into ``packed`` (gate_panels_size elements, 64-byte aligned): what
    ``forward`` does on each call, for a caller that keeps the panels."""
    cdef Py_ssize_t depth = weights.shape[0], H = weights.shape[1] // 4
    _check_panels(&packed[0], packed.shape[0], depth, H)
    with nogil:
        _pack_gate_panels(&weights[0, 0], depth, H, &packed[0])


cdef int _check_panels(floating* packed, Py_ssize_t size, Py_ssize_t depth,
                       Py_ssize_t H) except -1:
    if size != _gate_panels_size(depth, H, _lanes(packed)):
        raise ValueError(f"packed must have {_gate_panels_size(depth, H, _lanes(packed))} "
                         f"elements for {depth} rows of weights of {H} units, got {size}")
    if <size_t>packed % 64:
        raise ValueError("packed must start on a 64-byte boundary")
    return 0


def vector_lanes(Py_ssize_t itemsize):
    """Lanes of this build's vectors for items of ``itemsize`` bytes: the
    units of one gate panel."""
    return FL_VECTOR_BYTES // itemsize


def tile_rows():
    """Rows of this build's largest register tile."""
    return FL_ROWS


cdef inline Py_ssize_t _lanes(floating* dtype_of) noexcept nogil:
    return FL_VECTOR_BYTES // sizeof(dtype_of[0])


cdef inline Py_ssize_t _gate_panels_size(Py_ssize_t depth, Py_ssize_t H, Py_ssize_t L) noexcept nogil:
    return ((H + L - 1) // L) * depth * 4 * L


cdef inline Py_ssize_t _transposed_panels_size(Py_ssize_t n, Py_ssize_t G,
                                               Py_ssize_t L) noexcept nogil:
    return ((n + 4 * L - 1) // (4 * L)) * G * 4 * L


cdef void _pack_gate_panels(const floating* w, Py_ssize_t depth, Py_ssize_t H,
                            floating* packed) noexcept nogil:
    """Lay w (depth, 4H), gate blocks i, f, c, o of H columns, out in panels
    of L units: panel u holds, for each row k, the i-gate columns of units
    uL .. uL+L-1, then their f, c and o columns. Units past H are zeros."""
    cdef Py_ssize_t L = _lanes(packed)
    cdef Py_ssize_t blocks = (H + L - 1) // L, u, k, g, n
    cdef floating* p = packed
    for u in range(blocks):
        n = min(L, H - u * L)
        for k in range(depth):
            for g in range(4):
                # Runs of L contiguous columns: the copy runs at memcpy's speed.
                memcpy(p, w + k * 4 * H + g * H + u * L, n * sizeof(floating))
                if n < L:
                    memset(p + n, 0, (L - n) * sizeof(floating))
                p += L


cdef void _unpack_gate_panels(const floating* packed, Py_ssize_t depth, Py_ssize_t H,
                              floating* w) noexcept nogil:
    cdef Py_ssize_t L = _lanes(w)
    cdef Py_ssize_t u, k, g, l
    for u in range((H + L - 1) // L):
        for k in range(depth):
            for g in range(4):
                for l in range(min(L, H - u * L)):
                    w[k * 4 * H + g * H + u * L + l] = packed[((u * depth + k) * 4 + g) * L + l]


cdef void _pack_transposed_panels(const floating* w, Py_ssize_t n, Py_ssize_t G,
                                  floating* packed) noexcept nogil:
    """Lay w.T (G, n) out in panels of W = 4L columns, for w (n, G) such as
    recurrent_kernel (H, 4H) or kernel (I, 4H): panel p holds, for each gate
    column k, w[pW + c, k] for c < W. Columns past n are zeros.

    By blocks of 16 gate columns: a block's W rows of w (a cache line of
    each) and its 16 rows of the panel stay in L1 while it is copied, where
    copying a whole row of w at a time wrote to a line of each of the G rows
    of the panel (256 KB at 256 units): the backward pass of one sequence of
    64 steps into 256 units took 5 to 7% less time."""
    cdef Py_ssize_t W = 4 * _lanes(packed)
    cdef Py_ssize_t p, c, k, k0, k1, row
    for p in range((n + W - 1) // W):
        for k0 in range(0, G, 16):
            k1 = min(G, k0 + 16)
            for c in range(W):
                row = p * W + c
                if row < n:
                    for k in range(k0, k1):
                        packed[(p * G + k) * W + c] = w[row * G + k]
                else:
                    for k in range(k0, k1):
                        packed[(p * G + k) * W + c] = 0


cdef void _unpack_transposed_panels(const floating* packed, Py_ssize_t H,
                                    floating* transposed) noexcept nogil:
    cdef Py_ssize_t W = 4 * _lanes(transposed), G = 4 * H
    cdef Py_ssize_t p, c, k
    for p in range((H + W - 1) // W):
        for k in range(G):
            for c in range(min(W, H - p * W)):
                transposed[k * H + p * W + c] = packed[(p * G + k) * W + c]


cdef inline void _tile(int rows, const floating* a, Py_ssize_t lda, const floating* panel,
                       Py_ssize_t depth, floating* z, Py_ssize_t ldz, Py_ssize_t gate_stride,
                       bint accumulate) noexcept nogil:
    if floating is float:
        fl_tile_f(rows, a, lda, panel, depth, z, ldz, gate_stride, accumulate)
    else:
        fl_tile_d(rows, a, lda, panel, depth, z, ldz, gate_stride, accumulate)


cdef enum:
    # Elements of the largest tile: FL_ROWS * 4 vectors of L lanes, at most
    # 6 * 4 * 16 floats.
    TILE_CAPACITY = 384


cdef void _gate_tile(int rows, Py_ssize_t n, const floating* a, Py_ssize_t lda,
                     const floating* panel, Py_ssize_t depth, floating* z, Py_ssize_t ldz,
                     Py_ssize_t H, bint accumulate) noexcept nogil:
    """z[r, g*H + j] (+)= a[r] @ panel for r < rows, gates g and units j < n
    (n <= L) of one gate panel. A panel of fewer than L units goes through
    a tile buffer, so that nothing past them is read or written."""
    cdef Py_ssize_t L = _lanes(z), r, g, l
    cdef floating buffer[TILE_CAPACITY]
    if n == L:
        _tile(rows, a, lda, panel, depth, z, ldz, H, accumulate)
        return
    for r in range(rows):
        for g in range(4):
            for l in range(L):
                buffer[(r * 4 + g) * L + l] = z[r * ldz + g * H + l] if accumulate and l < n else 0
    _tile(rows, a, lda, panel, depth, buffer, 4 * L, L, accumulate)
    for r in range(rows):
        for g in range(4):
            memcpy(z + r * ldz + g * H, buffer + (r * 4 + g) * L, n * sizeof(floating))


cdef void _column_tile(int rows, Py_ssize_t n, const floating* a, Py_ssize_t lda,
                       const floating* panel, Py_ssize_t depth, floating* z,
                       Py_ssize_t ldz) noexcept nogil:
    """z[r, :n] = a[r] @ panel for r < rows, the first n <= 4L columns of one
    panel of the transposed layout; a partial panel goes through a buffer."""
    cdef Py_ssize_t L = _lanes(z), W = 4 * _lanes(z), r
    cdef floating buffer[TILE_CAPACITY]
    if n == W:
        _tile(rows, a, lda, panel, depth, z, ldz, L, False)
        return
    _tile(rows, a, lda, panel, depth, buffer, W, L, False)
    for r in range(rows):
        memcpy(z + r * ldz, buffer + r * W, n * sizeof(floating))


cdef inline void _step_forward(
    Py_ssize_t n, Py_ssize_t H, floating* z, const floating* bias, floating* cb,
    floating* hb, floating* out, floating* keep_c, floating* h_next, const floating* drop,
    int activation, int recurrent_activation,
) noexcept nogil:
    """The fused element-wise step for n units of one sequence.

    z holds x_t @ kernel + h_{t-1} @ recurrent_kernel, its gate blocks H
    apart, and is replaced by the activated gates the backward pass reads.
    Called with constant activation codes for the default pair, so that copy
    is compiled branch-free and vectorised; other pairs run the same code
    with the codes tested per value.
    """
    cdef Py_ssize_t j
    cdef floating gi, gf, gg, go, cell, hidden, cell_prev
    for j in range(n):
        gi = _activate(z[j] + bias[j], recurrent_activation)
        gf = _activate(z[H + j] + bias[H + j], recurrent_activation)
        gg = _activate(z[2 * H + j] + bias[2 * H + j], activation)
        go = _activate(z[3 * H + j] + bias[3 * H + j], recurrent_activation)
        cell_prev = cb[j]
        cell = gf * cell_prev + gi * gg
        hidden = go * _activate(cell, activation)
        z[j] = gi
        z[H + j] = gf
        z[2 * H + j] = gg
        z[3 * H + j] = go
        keep_c[j] = cell_prev
        cb[j] = cell
        hb[j] = hidden
        out[j] = hidden
        h_next[j] = hidden * drop[j]


cdef inline void _step_backward(
    Py_ssize_t n, Py_ssize_t H, floating* z, const floating* cp, const floating* dhr,
    floating* dhp, floating* dcb, floating* cry, const floating* dy, const floating* drop,
    int activation, int recurrent_activation,
) noexcept nogil:
    """The fused element-wise backward step for n units of one sequence:
    the activated gates in z, their gate blocks H apart, become dZ, the
    gradients of the pre-activations."""
    cdef Py_ssize_t j
    cdef floating gi, gf, gg, go, cell_prev, cell, act_cell, grad_h, grad_cell
    for j in range(n):
        grad_h = dhr[j] * drop[j] + dhp[j] + cry[j] + dy[j]
        gi = z[j]
        gf = z[H + j]
        gg = z[2 * H + j]
        go = z[3 * H + j]
        cell_prev = cp[j]
        cell = gf * cell_prev + gi * gg
        act_cell = _activate(cell, activation)
        grad_cell = dcb[j] + grad_h * go * _activate_grad(act_cell, activation)
        z[j] = grad_cell * gg * _activate_grad(gi, recurrent_activation)
        z[H + j] = grad_cell * cell_prev * _activate_grad(gf, recurrent_activation)
        z[2 * H + j] = grad_cell * gi * _activate_grad(gg, activation)
        z[3 * H + j] = grad_h * act_cell * _activate_grad(go, recurrent_activation)
        dcb[j] = grad_cell * gf
        dhp[j] = 0
        cry[j] = 0




cdef void _forward_prologue(
    Py_ssize_t b0, Py_ssize_t b1, Py_ssize_t T, Py_ssize_t I, Py_ssize_t H,
    const floating* x, const floating* kernel, const floating* h, const floating* dropout,
    bint go_backwards, bint training, bint hoist, floating* gates, floating* states,
) noexcept nogil:
    """What the steps of batch rows [b0, b1) read before the first one:
    the inputs beside the states (training: all steps; inference without
    ``hoist``: the first), the input product of all steps (``hoist``) and
    h0, dropped out."""
    cdef Py_ssize_t G = 4 * H, S = I + H
    cdef Py_ssize_t slots = T if training else 2
    cdef Py_ssize_t first = _time(0, T, go_backwards)
    cdef Py_ssize_t now = first if training else 0
    cdef Py_ssize_t b, t, j
    cdef floating* h_next
    if b1 <= b0:
        return
    if training:
        # Each step's input beside its state: the weight gradients are then
        # one product, [x_t, h_{t-1}].T @ dZ_t summed over all steps.
        for b in range(b0, b1):
            for t in range(T):
                memcpy(states + (b * T + t) * S, x + (b * T + t) * I, I * sizeof(floating))
    elif not hoist:
        for b in range(b0, b1):
            memcpy(states + b * slots * S, x + (b * T + first) * I, I * sizeof(floating))
    if hoist:
        # Z[rows] = X[rows] @ kernel     (rows*T, 4H) = (rows*T, I)(I, 4H)
        gemm(NoTrans, NoTrans, <int>((b1 - b0) * T), <int>G, <int>I, <floating>1.0,
             x + b0 * T * I, <int>I, kernel, <int>G, <floating>0.0,
             gates + b0 * T * G, <int>G)
    for b in range(b0, b1):
        h_next = states + (b * slots + now) * S + I
        for j in range(H):
            h_next[j] = h[b * H + j] * dropout[b * H + j]


cdef void _next_inputs(
    Py_ssize_t b0, Py_ssize_t b1, Py_ssize_t s, Py_ssize_t T, Py_ssize_t I, Py_ssize_t H,
    const floating* x, bint go_backwards, floating* states,
) noexcept nogil:
    """Inference without hoisting: x of step s + 1 into its state slot, which
    step s does not read."""
    cdef Py_ssize_t b, S = I + H
    if s + 1 >= T:
        return
    for b in range(b0, b1):
        memcpy(states + (b * 2 + (s + 1) % 2) * S, x + (b * T + _time(s + 1, T, go_backwards)) * I,
               I * sizeof(floating))


cdef void _forward_step(
    Py_ssize_t b0, Py_ssize_t b1, Py_ssize_t u0, Py_ssize_t u1, Py_ssize_t s,
    Py_ssize_t T, Py_ssize_t I, Py_ssize_t H, const floating* packed,
    const floating* bias, const unsigned char* mask, const floating* dropout,
    bint go_backwards, bint training, bint hoist, int activation, int recurrent_activation,
    floating* outputs, floating* h, floating* c,
    floating* gates, Py_ssize_t gate_slots, floating* states, floating* c_prev,
    floating* h_last,
) noexcept nogil:
    """Processing step s for batch rows [b0, b1) and the units of gate
    panels [u0, u1). See the module docstring and _forward_rows.

    It reads h_{t-1} of every unit from the state slot of the step and
    writes h_t into the next one; no other step's rows or units are touched.
    """
    cdef Py_ssize_t G = 4 * H
    cdef Py_ssize_t S = I + H
    cdef Py_ssize_t slots = T if training else 2
    cdef Py_ssize_t c_slots = T if training else 1
    cdef Py_ssize_t L = _lanes(gates)
    cdef Py_ssize_t depth = H if hoist else S
    cdef Py_ssize_t lda = slots * S, ldz = gate_slots * G
    cdef Py_ssize_t t = _time(s, T, go_backwards)
    cdef Py_ssize_t now = t if training else s % 2
    cdef Py_ssize_t later = _time(s + 1, T, go_backwards) if training else (s + 1) % 2
    cdef Py_ssize_t gt = t if gate_slots > 1 else 0
    cdef Py_ssize_t b, j0, n, u, r0, nr
    cdef const floating* a0 = states + (b0 * slots + now) * S + (I if hoist else 0)
    cdef floating* z0 = gates + (b0 * gate_slots + gt) * G
    cdef const floating* panel
    cdef floating* z
    cdef floating* out
    cdef floating* keep_c
    cdef floating* h_read
    cdef floating* h_next
    # Panel by panel, so that one panel of the weights serves every row
    # block of the step while it is in cache.
    for u in range(u0, u1):
        j0 = u * L
        n = min(L, H - j0)
        panel = packed + u * depth * 4 * L
        r0 = b0
        while r0 < b1:
            nr = min(FL_ROWS, b1 - r0)
            # Z_t[r0:r0+nr, gates of units j0..j0+n] (+)= rows @ panel u
            _gate_tile(<int>nr, n, a0 + (r0 - b0) * lda, lda, panel, depth,
                       z0 + (r0 - b0) * ldz + j0, ldz, H, hoist)
            for b in range(r0, r0 + nr):
                z = gates + (b * gate_slots + gt) * G + j0
                out = outputs + (b * T + s) * H + j0
                keep_c = c_prev + (b * c_slots + (t if training else 0)) * H + j0
                h_read = states + (b * slots + now) * S + I + j0
                if s + 1 < T:
                    h_next = states + (b * slots + later) * S + I + j0
                else:
                    h_next = h_last + b * H + j0
                if mask == NULL or mask[b * T + t]:
                    if activation == TANH and recurrent_activation == SIGMOID:
                        _step_forward(n, H, z, bias + j0, c + b * H + j0, h + b * H + j0, out,
                                      keep_c, h_next, dropout + b * H + j0, TANH, SIGMOID)
                    else:
                        _step_forward(n, H, z, bias + j0, c + b * H + j0, h + b * H + j0, out,
                                      keep_c, h_next, dropout + b * H + j0, activation,
                                      recurrent_activation)
                else:
                    # Masked step: the states carry over; the output repeats the
                    # previous output (zeros before the first processed step).
                    if s > 0:
                        memcpy(out, out - H, n * sizeof(floating))
                    else:
                        memset(out, 0, n * sizeof(floating))
                    memcpy(keep_c, c + b * H + j0, n * sizeof(floating))
                    memcpy(h_next, h_read, n * sizeof(floating))
            r0 += nr


cdef void _forward_rows(
    Py_ssize_t b0, Py_ssize_t b1, Py_ssize_t T, Py_ssize_t I, Py_ssize_t H,
    const floating* x, const floating* kernel, const floating* packed,
    const floating* bias, const unsigned char* mask, const floating* dropout,
    bint go_backwards, bint training, bint hoist, int activation, int recurrent_activation,
    floating* outputs, floating* h, floating* c,
    floating* gates, Py_ssize_t gate_slots, floating* states, floating* c_prev,
    floating* h_last,
) noexcept nogil:
    """Forward pass over batch rows [b0, b1), every unit: the batch split.

    packed holds the gate panels of recurrent_kernel (with ``hoist``) or of
    kernel stacked on recurrent_kernel (without). Each row of states is
    [x_t, h_{t-1}], the input of a step beside the dropped-out hidden state
    its product reads; c_prev holds the cell state before each step. When
    training both are (B, T, .), indexed by input time; when not, states
    has two slots that steps use in turn (a step's tiles read h_{t-1} of
    every unit while its epilogues write h_t), c_prev one. h and c hold the
    running states (in: initial, out: final); h_last takes the dropped-out
    state after the last step, which no product reads. dropout is all ones
    when there is no recurrent dropout, so the fused loop has no branches.

    With ``hoist`` the input product of all steps is one GEMM before the
    loop, gates (B, T, 4H). Without, it is part of each step's packed
    product, and gates is (B, 1, 4H) (gate_slots = 1) when not training.
    """
    cdef Py_ssize_t s, blocks = (H + _lanes(gates) - 1) // _lanes(gates)
    if b1 <= b0:
        return
    _forward_prologue(b0, b1, T, I, H, x, kernel, h, dropout, go_backwards, training, hoist,
                      gates, states)
    for s in range(T):
        _forward_step(b0, b1, 0, blocks, s, T, I, H, packed, bias, mask, dropout, go_backwards,
                      training, hoist, activation, recurrent_activation, outputs, h, c, gates,
                      gate_slots, states, c_prev, h_last)
        if not hoist and not training:
            _next_inputs(b0, b1, s, T, I, H, x, go_backwards, states)


cdef void _backward_step(
    Py_ssize_t b0, Py_ssize_t b1, Py_ssize_t s, Py_ssize_t T, Py_ssize_t H,
    const floating* packed_transpose, const unsigned char* mask, const floating* dropout,
    bint go_backwards, int activation, int recurrent_activation,
    const floating* grad_outputs, floating* gates, const floating* c_prev,
    floating* dh_rec, floating* dh_pass, floating* dc, floating* carry,
) noexcept nogil:
    """Processing step s of the backward pass through time, batch rows
    [b0, b1), every unit. See _backward_rows for the buffers; grad_outputs[b, s]
    is the gradient of the output of step s."""
    cdef Py_ssize_t W = 4 * _lanes(gates)
    _backward_gates(b0, b1, 0, H, s, T, H, mask, dropout, go_backwards, activation,
                    recurrent_activation, grad_outputs, gates, c_prev, dh_rec, dh_pass, dc,
                    carry)
    _backward_product(b0, b1, 0, (H + W - 1) // W, s, T, H, packed_transpose, go_backwards,
                      gates, dh_rec)


cdef void _backward_gates(
    Py_ssize_t b0, Py_ssize_t b1, Py_ssize_t j0, Py_ssize_t j1, Py_ssize_t s, Py_ssize_t T,
    Py_ssize_t H, const unsigned char* mask, const floating* dropout, bint go_backwards,
    int activation, int recurrent_activation, const floating* grad_outputs, floating* gates,
    const floating* c_prev, floating* dh_rec, floating* dh_pass, floating* dc,
    floating* carry,
) noexcept nogil:
    """The element-wise part of backward step s for batch rows [b0, b1) and
    units [j0, j1): their activated gates become dZ_t. It reads dh_rec of
    those units only, which the product of the step after wrote."""
    cdef Py_ssize_t G = 4 * H, n = j1 - j0
    cdef Py_ssize_t t = _time(s, T, go_backwards)
    cdef Py_ssize_t b, j, g
    cdef floating* z
    cdef floating* dhr
    cdef floating* dhp
    cdef floating* dcb
    cdef floating* cry
    cdef const floating* cp
    cdef const floating* dy
    cdef const floating* drop
    for b in range(b0, b1):
        z = gates + (b * T + t) * G + j0
        cp = c_prev + (b * T + t) * H + j0
        dhr = dh_rec + b * H + j0
        dhp = dh_pass + b * H + j0
        dcb = dc + b * H + j0
        cry = carry + b * H + j0
        dy = grad_outputs + (b * T + s) * H + j0
        drop = dropout + b * H + j0
        if mask == NULL or mask[b * T + t]:
            if activation == TANH and recurrent_activation == SIGMOID:
                _step_backward(n, H, z, cp, dhr, dhp, dcb, cry, dy, drop, TANH, SIGMOID)
            else:
                _step_backward(n, H, z, cp, dhr, dhp, dcb, cry, dy, drop,
                               activation, recurrent_activation)
        else:
            # Masked step: h and c passed through unchanged, so their
            # gradients do too; the output was a copy of the previous one.
            for j in range(n):
                dhp[j] = dhr[j] * drop[j] + dhp[j]
                cry[j] = cry[j] + dy[j]
            for g in range(4):
                memset(z + g * H, 0, n * sizeof(floating))


cdef void _backward_product(
    Py_ssize_t b0, Py_ssize_t b1, Py_ssize_t p0, Py_ssize_t p1, Py_ssize_t s, Py_ssize_t T,
    Py_ssize_t H, const floating* packed_transpose, bint go_backwards,
    const floating* gates, floating* dh_rec,
) noexcept nogil:
    """The recurrent product of backward step s for batch rows [b0, b1) and
    the columns of dh of column panels [p0, p1): it reads dZ_t of every
    unit of those rows."""
    cdef Py_ssize_t G = 4 * H
    cdef Py_ssize_t W = 4 * _lanes(gates)
    cdef Py_ssize_t t = _time(s, T, go_backwards)
    cdef Py_ssize_t p, n, r0, nr
    # dh_{t-1}[rows] = dZ_t[rows] @ recurrent_kernel.T   (rows, H) = (rows, 4H)(4H, H)
    for p in range(p0, p1):
        n = min(W, H - p * W)
        r0 = b0
        while r0 < b1:
            nr = min(FL_ROWS, b1 - r0)
            _column_tile(<int>nr, n, gates + (r0 * T + t) * G, T * G,
                         packed_transpose + p * G * W, G, dh_rec + r0 * H + p * W, H)
            r0 += nr


cdef void _backward_rows(
    Py_ssize_t b0, Py_ssize_t b1, Py_ssize_t T, Py_ssize_t I, Py_ssize_t H,
    const floating* kernel, const floating* packed_transpose,
    const unsigned char* mask, const floating* dropout, bint go_backwards,
    int activation, int recurrent_activation, const floating* grad_outputs,
    floating* gates, const floating* c_prev,
    floating* dh_rec, floating* dh_pass, floating* dc, floating* carry,
    floating* dx,
) noexcept nogil:
    """Backward pass through time over batch rows [b0, b1), and dx for them
    unless dx is NULL.

    On entry dh_pass and dc hold the gradients of the final states, dh_rec and
    carry zeros. dh_rec receives each step's recurrent product (the gradient
    of the dropped-out h_{t-1}); dh_pass the part of dh that skips it (state
    carried through masked steps); carry the gradient of an output repeated by
    later masked steps. On exit dh_rec * dropout + dh_pass is dh0, dc is dc0.
    The gate gradients dZ replace the gates in ``gates``. packed_transpose
    holds recurrent_kernel.T in column panels (_pack_transposed_panels).
    """
    cdef Py_ssize_t s
    if b1 <= b0:
        return
    for s in range(T - 1, -1, -1):
        _backward_step(b0, b1, s, T, H, packed_transpose, mask, dropout, go_backwards,
                       activation, recurrent_activation, grad_outputs, gates, c_prev,
                       dh_rec, dh_pass, dc, carry)
    if dx != NULL:
        _input_gradient(b0, b1, T, I, H, kernel, gates, dx)


cdef void _input_gradient(Py_ssize_t b0, Py_ssize_t b1, Py_ssize_t T, Py_ssize_t I,
                          Py_ssize_t H, const floating* kernel, const floating* gates,
                          floating* dx) noexcept nogil:
    """dx[rows] = dZ[rows] @ kernel.T   (rows*T, I) = (rows*T, 4H)(4H, I); kernel
    is the first I rows of the stacked weights."""
    cdef Py_ssize_t G = 4 * H
    if b1 <= b0:
        return
    gemm(NoTrans, Trans, <int>((b1 - b0) * T), <int>I, <int>G, <floating>1.0,
         gates + b0 * T * G, <int>G, kernel, <int>G, <floating>0.0,
         dx + b0 * T * I, <int>I)


cdef void _weight_grads_columns(
    Py_ssize_t c0, Py_ssize_t c1, Py_ssize_t B, Py_ssize_t T, Py_ssize_t I, Py_ssize_t H,
    const floating* states, const floating* gates, floating* dweights, floating* dbias,
) noexcept nogil:
    """Weight gradients for gate columns [c0, c1), summed over all steps.

    One product gives both: its rows 0..I-1 are dkernel, the rest
    drecurrent_kernel. With the I + H rows of [x_t, h_{t-1}] each packed
    element of dZ serves more multiply-adds than in two products, which is
    up to 1.2x faster where I and H are small.
    """
    cdef Py_ssize_t G = 4 * H
    cdef Py_ssize_t n = c1 - c0
    cdef Py_ssize_t r, j
    cdef const floating* row
    if n <= 0:
        return
    # dweights[:, cols] = [X, H_prev].T @ dZ[:, cols]   (I+H, n) = (I+H, B*T)(B*T, n)
    gemm(Trans, NoTrans, <int>(I + H), <int>n, <int>(B * T), <floating>1.0,
         states, <int>(I + H), gates + c0, <int>G, <floating>0.0, dweights + c0, <int>G)
    # dbias[cols] = dZ[:, cols].sum(0)
    for j in range(c0, c1):
        dbias[j] = 0
    for r in range(B * T):
        row = gates + r * G
        for j in range(c0, c1):
            dbias[j] += row[j]




cdef floating* _aligned(void* raw, floating* dtype_of) noexcept nogil:
    """The first 64-byte boundary at or after raw (64 bytes spare allocated)."""
    return <floating*>((<size_t>raw + 63) & ~(<size_t>63))


cdef void* _workspace(Py_ssize_t elements, Py_ssize_t itemsize, str what) except NULL:
    cdef void* raw = malloc(elements * itemsize + 64)
    if raw == NULL:
        raise MemoryError(f"cannot allocate the {elements * itemsize} bytes of {what}")
    return raw


cdef tuple _dims(Py_ssize_t* shape, int ndim):
    """A memoryview's shape as a tuple, for the entry points' checks."""
    return tuple([shape[k] for k in range(ndim)])


def _check_buffer(str name, tuple shape, tuple expected):
    """The entry points' one check of a caller-allocated buffer: the pointer
    arithmetic of the kernels trusts these shapes, and a mistake must not
    read or write out of bounds. A None shape (an optional buffer left
    out) passes."""
    if shape is not None and shape != expected:
        raise ValueError(f"{name} must have shape {expected}, got {shape}")


def _check_buffers(tuple checks):
    """_check_buffer of each (name, shape, expected) in ``checks``."""
    for name, shape, expected in checks:
        _check_buffer(name, shape, expected)


def _packing_round_trip(const floating[:, ::1] weights, floating[:, ::1] gates_out,
                        floating[:, ::1] transposed_out):
    """Test hook: weights (depth, 4H) packed into gate panels and unpacked
    into gates_out (depth, 4H); weights' last H rows, a recurrent kernel,
    packed into transposed panels and unpacked into transposed_out (4H, H)."""
    cdef Py_ssize_t depth = weights.shape[0], H = weights.shape[1] // 4
    cdef Py_ssize_t L = _lanes(&gates_out[0, 0])
    _check_buffer("gates_out", (gates_out.shape[0], gates_out.shape[1]), (depth, 4 * H))
    _check_buffer("transposed_out", (transposed_out.shape[0], transposed_out.shape[1]), (4 * H, H))
    if depth < H:
        raise ValueError(f"weights must have at least H = {H} rows, got {depth}")
    cdef void* raw = _workspace(max(_gate_panels_size(depth, H, L),
                                    _transposed_panels_size(H, 4 * H, L)),
                                sizeof(gates_out[0, 0]), "packed weights")
    cdef floating* packed = _aligned(raw, &gates_out[0, 0])
    try:
        _pack_gate_panels(&weights[0, 0], depth, H, packed)
        _unpack_gate_panels(packed, depth, H, &gates_out[0, 0])
        _pack_transposed_panels(&weights[depth - H, 0], H, 4 * H, packed)
        _unpack_transposed_panels(packed, H, &transposed_out[0, 0])
    finally:
        free(raw)


def _packed_product(const floating[:, ::1] a, const floating[:, ::1] weights,
                    floating[:, ::1] z, Py_ssize_t repeat=1):
    """Test and benchmark hook: z = a @ weights through the gate panels and
    register tiles of the forward step, ``repeat`` times; a (rows, depth),
    weights (depth, 4H), z (rows, 4H). Returns the seconds the products took."""
    cdef Py_ssize_t rows = a.shape[0], depth = a.shape[1], H = weights.shape[1] // 4
    cdef Py_ssize_t L = _lanes(&z[0, 0]), u, r0, _run
    _check_buffer("weights", (weights.shape[0], weights.shape[1]), (depth, 4 * H))
    _check_buffer("z", (z.shape[0], z.shape[1]), (rows, 4 * H))
    cdef void* raw = _workspace(_gate_panels_size(depth, H, L), sizeof(z[0, 0]),
                                "packed weights")
    cdef floating* packed = _aligned(raw, &z[0, 0])
    cdef double start, stop
    try:
        _pack_gate_panels(&weights[0, 0], depth, H, packed)
        start = openmp.omp_get_wtime()
        with nogil:
            for _run in range(repeat):
                for u in range((H + L - 1) // L):
                    r0 = 0
                    while r0 < rows:
                        _gate_tile(<int>min(FL_ROWS, rows - r0), min(L, H - u * L),
                                   &a[r0, 0], depth, packed + u * depth * 4 * L, depth,
                                   &z[r0, u * L], 4 * H, H, False)
                        r0 += FL_ROWS
        stop = openmp.omp_get_wtime()
    finally:
        free(raw)
    return stop - start


cdef enum:
    # The most blocks a step's units are split into.
    MAX_UNIT_BLOCKS = 64

# A thread of the unit split that waits for a block another thread is
# running longer than this many seconds, plus twice its own last block's
# time, takes that for a preempted thread: it runs the rest of the call
# alone (see _split_units).
cdef double UNIT_SPLIT_PATIENCE = 100e-6


# What the blocks of one single-layer call read (see forward and backward):
# the part of the call they run, its sizes and split, and its buffers, of
# the call's dtype; for the unit split, the blocks of units of each step
# and how far the threads have got.
ctypedef struct _RowsJob:
    int part
    Py_ssize_t B, T, I, H, gate_slots, nchunks, ncolumns, unit_blocks
    # Blocks of units done, over all steps; the thread that runs the rest
    # alone (-1: none yet); the last step each block of units was claimed for.
    long finished
    long alone
    long claims[MAX_UNIT_BLOCKS]
    int activation, recurrent_activation
    bint go_backwards, training, hoist, double_precision
    const unsigned char* mask
    const void* x
    const void* weights
    const void* packed
    const void* bias
    const void* dropout
    const void* grad_outputs
    void* outputs
    void* h
    void* c
    void* gates
    void* states
    void* c_prev
    void* h_last
    void* dh_rec
    void* dh_pass
    void* dc
    void* carry
    void* dx
    void* dweights
    void* dbias


cdef enum _RowsPart:
    FORWARD_ROWS = 0
    BACKWARD_ROWS = 1
    WEIGHT_GRADS = 2
    FORWARD_PROLOGUE = 3
    FORWARD_UNITS = 4
    BACKWARD_UNITS = 5
    INPUT_GRADIENT = 6


cdef void _rows_block(void* ctx, Py_ssize_t k) noexcept nogil:
    """Block k of the part of a single-layer call that the job names: the
    batch rows of chunk k (forward, its prologue, backward through time, the
    input gradient), the gate columns of block k (weight gradients) or the
    thread k of a time loop split by units."""
    if (<_RowsJob*>ctx).double_precision:
        _rows_part(<_RowsJob*>ctx, k, <double*>NULL)
    else:
        _rows_part(<_RowsJob*>ctx, k, <float*>NULL)


cdef void _rows_part(_RowsJob* job, Py_ssize_t k, floating* dtype_of) noexcept nogil:
    cdef Py_ssize_t b0 = _chunk_start(k, job.nchunks, job.B)
    cdef Py_ssize_t b1 = _chunk_start(k + 1, job.nchunks, job.B), G = 4 * job.H
    cdef unsigned int csr = fl_flush_denormals()
    if job.part == FORWARD_ROWS:
        _forward_rows(b0, b1, job.T, job.I, job.H, <const floating*>job.x,
                      <const floating*>job.weights, <const floating*>job.packed,
                      <const floating*>job.bias, job.mask, <const floating*>job.dropout,
                      job.go_backwards, job.training, job.hoist, job.activation,
                      job.recurrent_activation, <floating*>job.outputs, <floating*>job.h,
                      <floating*>job.c, <floating*>job.gates, job.gate_slots,
                      <floating*>job.states, <floating*>job.c_prev, <floating*>job.h_last)
    elif job.part == FORWARD_PROLOGUE:
        _forward_prologue(b0, b1, job.T, job.I, job.H, <const floating*>job.x,
                          <const floating*>job.weights, <const floating*>job.h,
                          <const floating*>job.dropout, job.go_backwards, job.training,
                          job.hoist, <floating*>job.gates, <floating*>job.states)
    elif job.part == FORWARD_UNITS or job.part == BACKWARD_UNITS:
        _split_units(job, k)
    elif job.part == INPUT_GRADIENT:
        _input_gradient(b0, b1, job.T, job.I, job.H, <const floating*>job.weights,
                        <const floating*>job.gates, <floating*>job.dx)
    elif job.part == BACKWARD_ROWS:
        _backward_rows(b0, b1, job.T, job.I, job.H, <const floating*>job.weights,
                       <const floating*>job.packed, job.mask, <const floating*>job.dropout,
                       job.go_backwards, job.activation, job.recurrent_activation,
                       <const floating*>job.grad_outputs, <floating*>job.gates,
                       <const floating*>job.c_prev, <floating*>job.dh_rec,
                       <floating*>job.dh_pass, <floating*>job.dc, <floating*>job.carry,
                       <floating*>job.dx)
    else:
        _weight_grads_columns(_column_start(k, job.ncolumns, G),
                              _column_start(k + 1, job.ncolumns, G), job.B, job.T, job.I,
                              job.H, <const floating*>job.states, <const floating*>job.gates,
                              <floating*>job.dweights, <floating*>job.dbias)
    fl_restore_denormals(csr)


cdef void _split_units(_RowsJob* job, Py_ssize_t p) noexcept nogil:
    """Thread p's share of a time loop split by units: every batch row, the
    blocks of units of each phase (a step) that this thread claims.

    Each phase is job.unit_blocks blocks; a thread prefers block p (so
    that, two threads each taking their own, each reads the same part of
    the weights at every step, which stays in its cache) and takes any
    block left unclaimed. A block of phase s starts once every block of
    phase s - 1 is done, and a thread that finds no block of a phase left
    goes on to the next and waits there, only for blocks other threads are
    running. A thread joins at the phase the call has reached, so a pool
    worker that the operating system schedules late (or never) holds no one
    up: the caller alone runs every phase.

    A thread that waits longer than UNIT_SPLIT_PATIENCE plus twice its own
    block's time for a block in progress takes it for a preempted thread:
    once that block is done, it runs the remaining phases alone (the others
    leave after their current block) and tells the pool, which then runs
    the next calls on their caller alone for a while, as after any job a
    busy core held up.
    """
    cdef Py_ssize_t n = job.unit_blocks, i, j
    # The backward pass's last phase is the product of its first step.
    cdef long phases = job.T + (job.part == BACKWARD_UNITS)
    cdef long s = fl_load(&job.finished) // n
    cdef double own = 0, started
    while s < phases:
        if fl_load(&job.alone) >= 0 and fl_load(&job.alone) != p:
            return
        if (fl_wait_counted(&job.finished, s * n) > UNIT_SPLIT_PATIENCE + 2 * own
                and fl_claim(&job.alone, -1, p)):
            report_held_up()
        for i in range(n):
            j = (p + i) % n
            if not fl_claim(&job.claims[j], s - 1, s):
                continue
            started = fl_now()
            if job.double_precision:
                _unit_block(job, j, s, <double*>NULL)
            else:
                _unit_block(job, j, s, <float*>NULL)
            own = fl_now() - started
            fl_count(&job.finished)
        s = max(s + 1, fl_load(&job.finished) // n)


cdef void _unit_block(_RowsJob* job, Py_ssize_t j, Py_ssize_t phase,
                      floating* dtype_of) noexcept nogil:
    """Block j of the units of one phase of a time loop split by units.

    Forward, phase s is step s, block j its gate panels [u0, u1) for every
    row; the thread that runs block 0 also copies the input of the next step
    into its state slot (inference with the input product per step), which
    the step's tiles do not read and the previous step's, done by then, did.
    Backward, phase q holds the product of step s + 1 (s = T - 1 - q) for
    the columns of dh of column panels [u0, u1), then the element-wise part
    of step s for the same units, which reads their dh only: one meeting
    per step, after the element-wise parts, which the products read whole.
    """
    cdef Py_ssize_t n = job.unit_blocks, T = job.T, H = job.H, s
    cdef Py_ssize_t width = _lanes(dtype_of) * (4 if job.part == BACKWARD_UNITS else 1)
    cdef Py_ssize_t panels = (H + width - 1) // width
    cdef Py_ssize_t u0 = _chunk_start(j, n, panels), u1 = _chunk_start(j + 1, n, panels)
    if job.part == FORWARD_UNITS:
        _forward_step(0, job.B, u0, u1, phase, T, job.I, H, <const floating*>job.packed,
                      <const floating*>job.bias, job.mask, <const floating*>job.dropout,
                      job.go_backwards, job.training, job.hoist, job.activation,
                      job.recurrent_activation, <floating*>job.outputs, <floating*>job.h,
                      <floating*>job.c, <floating*>job.gates, job.gate_slots,
                      <floating*>job.states, <floating*>job.c_prev, <floating*>job.h_last)
        if j == 0 and not job.hoist and not job.training:
            _next_inputs(0, job.B, phase, T, job.I, H, <const floating*>job.x,
                         job.go_backwards, <floating*>job.states)
        return
    s = T - 1 - phase
    if s + 1 < T:
        _backward_product(0, job.B, u0, u1, s + 1, T, H, <const floating*>job.packed,
                          job.go_backwards, <const floating*>job.gates, <floating*>job.dh_rec)
    if s >= 0:
        _backward_gates(0, job.B, u0 * width, min(u1 * width, H), s, T, H, job.mask,
                        <const floating*>job.dropout, job.go_backwards, job.activation,
                        job.recurrent_activation, <const floating*>job.grad_outputs,
                        <floating*>job.gates, <const floating*>job.c_prev,
                        <floating*>job.dh_rec, <floating*>job.dh_pass, <floating*>job.dc,
                        <floating*>job.carry)


def forward(const floating[:, :, ::1] x,
            const floating[:, ::1] weights,
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
            floating[:, ::1] h_last,
            bint training,
            bint hoist,
            int activation,
            int recurrent_activation,
            int num_threads,
            floating[::1] packed_weights=None,
            bint split_units=False):
    """Run the forward kernel into caller-allocated buffers.

    x (B, T, I); weights (I + H, 4H), kernel stacked on recurrent_kernel;
    bias (4H,); mask (B, T) as uint8 or None; dropout (B, H), ones for no
    dropout; outputs (B, T, H); h, c (B, H): initial states in, final states
    out; gates (B, T, 4H), or (B, 1, 4H) for inference without ``hoist``;
    states (B, T, I + H) and c_prev (B, T, H) when training, (B, 2, I + H)
    and (B, 1, H) when not; h_last (B, H) scratch. hoist: one GEMM for the
    input product of all steps, or part of each step's product (see
    _forward_rows). The weights the steps read are packed into a workspace
    of this call, unless ``packed_weights`` holds them already
    (pack_gate_panels of the rows the steps read: recurrent_kernel's with
    ``hoist``, all otherwise). split_units: the threads share each step's
    units instead of the batch (_split_units), where the units make at
    least two blocks. The caller has made BLAS single-threaded.
    """
    cdef Py_ssize_t B = x.shape[0], T = x.shape[1], I = x.shape[2], H = h.shape[1]
    cdef Py_ssize_t G = 4 * H
    cdef const unsigned char* mask_ptr = &mask[0, 0] if mask is not None else NULL
    cdef Py_ssize_t gate_slots = gates.shape[1]
    cdef Py_ssize_t nchunks = max(1, min(num_threads, B))
    cdef Py_ssize_t depth = H if hoist else I + H
    cdef Py_ssize_t panels = (H + _lanes(&h[0, 0]) - 1) // _lanes(&h[0, 0])
    cdef Py_ssize_t unit_blocks = min(num_threads, panels, MAX_UNIT_BLOCKS) if split_units else 1
    cdef Py_ssize_t j
    cdef void* raw
    cdef floating* packed
    cdef _RowsJob job
    # The pointer arithmetic below trusts these shapes; the caller allocates
    # them, and a mistake must not write out of bounds.
    if gate_slots != T and (training or hoist or gate_slots != 1):
        raise ValueError(f"gates must have T = {T} slots when training or hoisting, "
                         f"1 otherwise; got {gate_slots}")
    _check_buffers((
        ("weights", _dims(weights.shape, 2), (I + H, G)),
        ("bias", _dims(bias.shape, 1), (G,)),
        ("mask", None if mask is None else _dims(mask.shape, 2), (B, T)),
        ("dropout", _dims(dropout.shape, 2), (B, H)),
        ("outputs", _dims(outputs.shape, 3), (B, T, H)),
        ("h", _dims(h.shape, 2), (B, H)),
        ("c", _dims(c.shape, 2), (B, H)),
        ("gates", _dims(gates.shape, 3), (B, gate_slots, G)),
        ("states", _dims(states.shape, 3), (B, T if training else 2, I + H)),
        ("c_prev", _dims(c_prev.shape, 3), (B, T if training else 1, H)),
        ("h_last", _dims(h_last.shape, 2), (B, H))))
    raw = NULL
    if packed_weights is not None:
        _check_panels(&packed_weights[0], packed_weights.shape[0], depth, H)
        packed = &packed_weights[0]
    else:
        raw = _workspace(_gate_panels_size(depth, H, _lanes(&h[0, 0])), sizeof(h[0, 0]),
                         "packed weights")
        packed = _aligned(raw, &h[0, 0])
    job.B, job.T, job.I, job.H, job.nchunks = B, T, I, H, nchunks
    job.double_precision = floating is double
    job.activation, job.recurrent_activation = activation, recurrent_activation
    job.go_backwards, job.training, job.hoist = go_backwards, training, hoist
    job.gate_slots, job.mask = gate_slots, mask_ptr
    job.x, job.weights, job.packed = &x[0, 0, 0], &weights[0, 0], packed
    job.bias, job.dropout, job.outputs = &bias[0], &dropout[0, 0], &outputs[0, 0, 0]
    job.h, job.c, job.gates, job.states = &h[0, 0], &c[0, 0], &gates[0, 0, 0], &states[0, 0, 0]
    job.c_prev, job.h_last = &c_prev[0, 0, 0], &h_last[0, 0]
    job.unit_blocks, job.finished, job.alone = unit_blocks, 0, -1
    for j in range(unit_blocks):
        job.claims[j] = -1
    try:
        with nogil:
            if raw != NULL:
                _pack_gate_panels(&weights[I if hoist else 0, 0], depth, H, packed)
            if unit_blocks >= 2:
                # The prologue in the batch split's chunks, so that its
                # products are the batch split's, then the steps by units.
                # Without the input product of all steps, the prologue is a
                # few rows' copies, which the caller makes sooner than a
                # worker would start (and a job of blocks that short would
                # count as one a busy core held up, half the time).
                job.part = FORWARD_PROLOGUE
                if hoist:
                    run_blocks(_rows_block, &job, job.nchunks, num_threads)
                else:
                    for j in range(job.nchunks):
                        _rows_block(&job, j)
                job.part = FORWARD_UNITS
                run_blocks(_rows_block, &job, unit_blocks, num_threads)
            else:
                job.part = FORWARD_ROWS
                run_blocks(_rows_block, &job, job.nchunks, num_threads)
    finally:
        free(raw)


def backward(const floating[:, ::1] weights,
             const unsigned char[:, ::1] mask,
             const floating[:, ::1] dropout,
             bint go_backwards,
             const floating[:, :, ::1] grad_outputs,
             floating[:, :, ::1] gates,
             const floating[:, :, ::1] states,
             const floating[:, :, ::1] c_prev,
             floating[:, ::1] dh_rec,
             floating[:, ::1] dh_pass,
             floating[:, ::1] dc,
             floating[:, ::1] carry,
             floating[:, :, ::1] dx,
             floating[:, ::1] dweights,
             floating[::1] dbias,
             int activation,
             int recurrent_activation,
             int num_threads,
             bint split_units=False):
    """Run the backward kernel into caller-allocated buffers.

    weights, gates, states and c_prev are those of a training ``forward``;
    the gate gradients overwrite ``gates``. dh_pass and dc come in holding
    the gradients of the final states; dh_rec and carry come in as zeros.
    dx (B, T, I) receives the input gradient; None skips its product.
    dweights (I + H, 4H) receives dkernel stacked on drecurrent_kernel.
    dropout is all ones for no dropout. recurrent_kernel.T is packed into
    a workspace of this call. split_units: the threads share each step's
    units instead of the batch (_split_units), where the units make at least
    two column panels.
    """
    cdef Py_ssize_t B = gates.shape[0], T = gates.shape[1], H = dc.shape[1]
    cdef Py_ssize_t I = states.shape[2] - H
    cdef Py_ssize_t G = 4 * H
    cdef const unsigned char* mask_ptr = &mask[0, 0] if mask is not None else NULL
    cdef floating* dx_ptr = &dx[0, 0, 0] if dx is not None else NULL
    cdef Py_ssize_t nchunks = max(1, min(num_threads, B))
    cdef Py_ssize_t ncolumns = max(1, min(num_threads, (G + 15) // 16))
    cdef Py_ssize_t W = 4 * _lanes(&dc[0, 0])
    cdef Py_ssize_t unit_blocks = (min(num_threads, (H + W - 1) // W, MAX_UNIT_BLOCKS)
                                   if split_units else 1)
    cdef Py_ssize_t j
    cdef void* raw
    cdef floating* packed
    cdef _RowsJob job
    # The pointer arithmetic below trusts these shapes; the caller allocates
    # them, and a mistake must not read or write out of bounds.
    _check_buffers((
        ("gates", _dims(gates.shape, 3), (B, T, G)),
        ("states", _dims(states.shape, 3), (B, T, I + H)),
        ("c_prev", _dims(c_prev.shape, 3), (B, T, H)),
        ("grad_outputs", _dims(grad_outputs.shape, 3), (B, T, H)),
        ("weights", _dims(weights.shape, 2), (I + H, G)),
        ("dweights", _dims(dweights.shape, 2), (I + H, G)),
        ("dbias", _dims(dbias.shape, 1), (G,)),
        ("dropout", _dims(dropout.shape, 2), (B, H)),
        ("dh_rec", _dims(dh_rec.shape, 2), (B, H)),
        ("dh_pass", _dims(dh_pass.shape, 2), (B, H)),
        ("dc", _dims(dc.shape, 2), (B, H)),
        ("carry", _dims(carry.shape, 2), (B, H)),
        ("mask", None if mask is None else _dims(mask.shape, 2), (B, T)),
        ("dx", None if dx is None else _dims(dx.shape, 3), (B, T, I))))
    if I < 1:
        raise ValueError(f"states must have more than H = {H} columns, got {I + H}")
    raw = _workspace(_transposed_panels_size(H, G, _lanes(&dc[0, 0])), sizeof(dc[0, 0]),
                     "packed weights")
    packed = _aligned(raw, &dc[0, 0])
    job.B, job.T, job.I, job.H, job.nchunks, job.ncolumns = B, T, I, H, nchunks, ncolumns
    job.double_precision = floating is double
    job.activation, job.recurrent_activation = activation, recurrent_activation
    job.go_backwards, job.mask = go_backwards, mask_ptr
    job.weights, job.packed, job.dropout = &weights[0, 0], packed, &dropout[0, 0]
    job.grad_outputs, job.gates = &grad_outputs[0, 0, 0], &gates[0, 0, 0]
    job.states, job.c_prev = <void*>&states[0, 0, 0], <void*>&c_prev[0, 0, 0]
    job.dh_rec, job.dh_pass = &dh_rec[0, 0], &dh_pass[0, 0]
    job.dc, job.carry = &dc[0, 0], &carry[0, 0]
    job.dx, job.dweights, job.dbias = dx_ptr, &dweights[0, 0], &dbias[0]
    job.unit_blocks, job.finished, job.alone = unit_blocks, 0, -1
    for j in range(unit_blocks):
        job.claims[j] = -1
    try:
        with nogil:
            _pack_transposed_panels(&weights[I, 0], H, G, packed)
            if unit_blocks >= 2:
                job.part = BACKWARD_UNITS
                run_blocks(_rows_block, &job, unit_blocks, num_threads)
                if dx_ptr != NULL:
                    # In the batch split's chunks, so that the products are its own.
                    job.part = INPUT_GRADIENT
                    run_blocks(_rows_block, &job, job.nchunks, num_threads)
            else:
                job.part = BACKWARD_ROWS
                run_blocks(_rows_block, &job, job.nchunks, num_threads)
            job.part = WEIGHT_GRADS
            run_blocks(_rows_block, &job, job.ncolumns, num_threads)
    finally:
        free(raw)


include "_lstm_stack.pxi"
include "_lstm_step.pxi"
include "_lstm_int8.pxi"
include "_lstm_packed.pxi"
include "_lstm_proj.pxi"
