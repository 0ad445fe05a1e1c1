"""LSTM forward and backpropagation-through-time kernels.

Layout. Every workspace is batch-major, like the input x (B, T, I): the gate
buffer is (B, T, 4H), the saved states (B, T, H). The rows a time step touches,
``gates[:, t, :]``, are a matrix with leading dimension T*4H, which BLAS takes
as it is, so neither x nor the outputs are ever transposed. Buffers are indexed
by input time t; with ``go_backwards`` processing step s reads input time
t = T-1-s and writes ``outputs[:, s]``.

Forward, per thread (a contiguous block of batch rows):
  1. gates[rows] = x[rows] @ kernel                      one GEMM for all steps
  2. for each step, in processing order:
       gates[rows, t] += h_{t-1}[rows] @ recurrent_kernel   one GEMM
       (small layers, instead of 1. and this: gates[rows, t] = [x_t, h_{t-1}][rows]
        @ [kernel; recurrent_kernel], one GEMM; see hoist_input_product)
       one fused pass over the rows: add bias, activate, update c and h, apply
       the mask, keep the activated gates (training) for the backward pass.
Backward, per thread, in reverse processing order:
  3. one fused pass turns dh, dc and the kept gates into the pre-activation
     gradients dZ_t, written over the gates, and dc_{t-1};
     then one GEMM: dh_{t-1}[rows] = dZ_t[rows] @ recurrent_kernel.T
  4. dx[rows] = dZ[rows] @ kernel.T (skipped when nothing reads dx, as for
     the first layer of a model, whose input is data)
and, once every thread is done, each thread takes a block of the 4H columns:
  5. [dkernel; drecurrent_kernel] = [x, h_prev].T @ dZ, one GEMM, and
     dbias = sum of dZ. The forward pass keeps each step's input beside the
     hidden state its recurrent GEMM read, so [x_t, h_{t-1}] is one row.

Threads. The recurrence of one sequence never reads another's, so the batch is
split across OpenMP threads for the whole time loop: no synchronisation per
step. Blocks are handed out dynamically: on a busy machine the calling thread
takes over the block of a thread the OS has not scheduled yet, instead of
waiting a whole time slice for it. BLAS is called single-threaded inside (the caller makes sure), so BLAS
threads and OpenMP threads never compete for cores. All buffers are allocated
by the caller; nothing is allocated inside the kernels.

Precision. Both dtypes use the exp below, written so that the fused loops
vectorise (libm's exp and tanh do not); its error is a few ulp, and the
activations built on it are tested against float64 truth.
"""
from cython cimport floating
from cython.parallel cimport parallel, prange
cimport openmp
from libc.string cimport memcpy, memmove, memset

from ._blas cimport gemm, NoTrans, Trans

cdef extern from *:
    """
    #ifdef _OPENMP
    #define FL_OPENMP 1
    #else
    #define FL_OPENMP 0
    #endif
    #include <stdint.h>
    #include <string.h>

    /* e^x and e^x - 1 in arithmetic the compiler vectorises: x = n ln2 + r
       with |r| <= ln2/2, e^r - 1 = q(r) by its Taylor series (to r^6 in
       float32, truncation < 1.2e-7 relative; to r^12 in float64, < 2e-16),
       2^n put straight into the exponent bits. Then e^x = s + s q and
       e^x - 1 = (s - 1) + s q with s = 2^n, exact when n = 0, so e^x - 1
       keeps full relative precision near 0. x is clamped so that 2^n stays
       a normal number; a NaN passes the clamps (its comparisons are false)
       and comes out NaN. */
    static inline float fl_reducef(float x, float* scale) {
        const float shift = 12582912.0f;             /* 1.5 * 2^23 */
        x = x < -87.0f ? -87.0f : x;
        x = x > 88.0f ? 88.0f : x;
        float k = x * 1.44269504088896341f + shift;  /* round(x / ln2) in low bits */
        int32_t kbits;
        memcpy(&kbits, &k, sizeof kbits);
        float n = k - shift;
        float r = x - n * 0.693145751953125f;        /* ln2, high part (exact in n*) */
        r = r - n * 1.42860682030941723e-6f;         /* ln2, low part */
        int32_t sbits = (kbits - 0x4B400000 + 127) << 23;
        memcpy(scale, &sbits, sizeof *scale);
        float q = 1.0f / 720.0f;
        q = q * r + 1.0f / 120.0f;
        q = q * r + 1.0f / 24.0f;
        q = q * r + 1.0f / 6.0f;
        q = q * r + 0.5f;
        q = q * r + 1.0f;
        return q * r;
    }
    static inline float fl_expf(float x) { float s; float q = fl_reducef(x, &s); return s + s * q; }

    static inline double fl_reduce(double x, double* scale) {
        const double shift = 6755399441055744.0;     /* 1.5 * 2^52 */
        x = x < -708.0 ? -708.0 : x;
        x = x > 709.0 ? 709.0 : x;
        double k = x * 1.4426950408889634 + shift;
        int64_t kbits;
        memcpy(&kbits, &k, sizeof kbits);
        double n = k - shift;
        double r = x - n * 0.693147180369123816490;  /* ln2, high part */
        r = r - n * 1.90821492927058770002e-10;      /* ln2, low part */
        int64_t sbits = (kbits - 0x4338000000000000LL + 1023) << 52;
        memcpy(scale, &sbits, sizeof *scale);
        double q = 1.0 / 479001600.0;
        q = q * r + 1.0 / 39916800.0;
        q = q * r + 1.0 / 3628800.0;
        q = q * r + 1.0 / 362880.0;
        q = q * r + 1.0 / 40320.0;
        q = q * r + 1.0 / 5040.0;
        q = q * r + 1.0 / 720.0;
        q = q * r + 1.0 / 120.0;
        q = q * r + 1.0 / 24.0;
        q = q * r + 1.0 / 6.0;
        q = q * r + 0.5;
        q = q * r + 1.0;
        return q * r;
    }
    static inline double fl_exp(double x) { double s; double q = fl_reduce(x, &s); return s + s * q; }

    /* Denormal numbers (|x| < 1.2e-38 in float32) arise when states and
       gradients decay over many steps; arithmetic on them can cost a hundred
       times more cycles. Each kernel thread flushes them to zero (FTZ, DAZ)
       for the length of its work, then restores the caller's setting. */
    #if defined(__SSE2__) || defined(_M_X64)
    #include <xmmintrin.h>
    static inline unsigned int fl_flush_denormals(void) {
        unsigned int saved = _mm_getcsr();
        _mm_setcsr(saved | 0x8040);   /* FTZ (bit 15) | DAZ (bit 6) */
        return saved;
    }
    static inline void fl_restore_denormals(unsigned int saved) { _mm_setcsr(saved); }
    #else
    static inline unsigned int fl_flush_denormals(void) { return 0; }
    static inline void fl_restore_denormals(unsigned int saved) { (void)saved; }
    #endif

    /* sigmoid x = 1 / (1 + e^-x). tanh x = m / (m + 2) = 1 - 2 / (1 + e)
       with e = e^{2x} and m = e - 1 from one range reduction: the first form
       keeps relative precision near 0, the second is accurate and monotone
       to the last bit where |tanh x| > 0.46; both tend to +-1 at the clamps. */
    static inline float fl_sigmoidf(float x) { return 1.0f / (1.0f + fl_expf(-x)); }
    static inline float fl_tanhf(float x) {
        float s;
        float sq = fl_reducef(2.0f * x, &s) * s;
        float m = (s - 1.0f) + sq, e = s + sq;
        return (x < 0.5f && x > -0.5f) ? m / (m + 2.0f) : 1.0f - 2.0f / (1.0f + e);
    }
    static inline double fl_sigmoid(double x) { return 1.0 / (1.0 + fl_exp(-x)); }
    static inline double fl_tanh(double x) {
        double s;
        double sq = fl_reduce(2.0 * x, &s) * s;
        double m = (s - 1.0) + sq, e = s + sq;
        return (x < 0.5 && x > -0.5) ? m / (m + 2.0) : 1.0 - 2.0 / (1.0 + e);
    }
    """
    const int FL_OPENMP
    float fl_sigmoidf(float x) noexcept nogil
    float fl_tanhf(float x) noexcept nogil
    double fl_sigmoid(double x) noexcept nogil
    double fl_tanh(double x) noexcept nogil
    unsigned int fl_flush_denormals() noexcept nogil
    void fl_restore_denormals(unsigned int saved) noexcept nogil


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


def openmp_enabled():
    """Whether the kernels were compiled with OpenMP."""
    return bool(FL_OPENMP)


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


# Products with at most this many multiply-adds go through OpenBLAS's
# small-matrix kernels, which skip the packing of both operands. A step's
# recurrent product packs all of recurrent_kernel on every call; cut into
# column blocks under this size it is up to 1.4x faster where H is modest
# (measured for B/threads = 16..32 rows and H = 64..256).
cdef Py_ssize_t SMALL_GEMM = 1000000
cdef Py_ssize_t SMALL_GEMM_MAX_DEPTH = 256


def hoist_input_product(Py_ssize_t rows, Py_ssize_t input_dim, Py_ssize_t units):
    """Whether the forward pass, on threads of ``rows`` batch rows each,
    computes the input product of all steps as one GEMM before the loop.

    Otherwise each step computes [x_t, h_{t-1}] @ [kernel; recurrent_kernel]
    as one GEMM: done when a step's input product is small enough for
    OpenBLAS's small-matrix kernels. The step's gates are then still in cache
    for the fused loop, and inference needs no (B, T, 4H) gate buffer:
    inference was 4-26% faster at the benchmark's small and long sizes
    (docs/performance.rst), training 2-7%. A larger step product would be
    packed on every step, and the single GEMM wins (8-40% at the sizes
    measured).
    """
    return rows * input_dim * 4 * units > SMALL_GEMM


cdef inline void _step_gemm(Py_ssize_t rows, Py_ssize_t G, Py_ssize_t K, const floating* a,
                            Py_ssize_t lda, const floating* w, floating beta, floating* z,
                            Py_ssize_t ldz) noexcept nogil:
    """z[rows, :G] = a[rows, :K] @ w + beta * z, w (K, G) C-contiguous: a
    step's product, in column blocks when that is faster."""
    cdef Py_ssize_t block = G
    cdef Py_ssize_t j = 0
    if K <= SMALL_GEMM_MAX_DEPTH and rows * G * K > SMALL_GEMM:
        block = max(32, (SMALL_GEMM // (rows * K)) // 16 * 16)
    while j < G:
        # z[:, j:j+n] = a @ w[:, j:j+n] + beta z[:, j:j+n]   (rows, n) = (rows, K)(K, n)
        gemm(NoTrans, NoTrans, <int>rows, <int>min(block, G - j), <int>K, <floating>1.0,
             a, <int>lda, w + j, <int>G, beta, z + j, <int>ldz)
        j += block


cdef inline void _step_forward(
    Py_ssize_t H, floating* z, const floating* bias, floating* cb, floating* hb,
    floating* out, floating* keep_c, floating* h_next, const floating* drop,
    int activation, int recurrent_activation,
) noexcept nogil:
    """The fused element-wise step of one sequence.

    z holds x_t @ kernel + h_{t-1} @ recurrent_kernel and is replaced by the
    activated gates the backward pass reads. Called with constant activation
    codes for the default pair, so that copy is compiled branch-free and
    vectorised; other pairs run the same code with the codes tested per value.
    """
    cdef Py_ssize_t j
    cdef floating gi, gf, gg, go, cell, hidden, cell_prev
    for j in range(H):
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
    Py_ssize_t H, floating* z, const floating* cp, const floating* dhr, floating* dhp,
    floating* dcb, floating* cry, const floating* dy, const floating* drop,
    int activation, int recurrent_activation,
) noexcept nogil:
    """The fused element-wise backward step of one sequence: the activated
    gates in z become dZ, the gradients of the pre-activations."""
    cdef Py_ssize_t j
    cdef floating gi, gf, gg, go, cell_prev, cell, act_cell, grad_h, grad_cell
    for j in range(H):
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


cdef void _forward_rows(
    Py_ssize_t b0, Py_ssize_t b1, Py_ssize_t T, Py_ssize_t I, Py_ssize_t H,
    const floating* x, const floating* weights,
    const floating* bias, const unsigned char* mask, const floating* dropout,
    bint go_backwards, bint training, bint hoist, int activation, int recurrent_activation,
    floating* outputs, floating* h, floating* c,
    floating* gates, Py_ssize_t gate_slots, floating* states, floating* c_prev,
    floating* h_last,
) noexcept nogil:
    """Forward pass over batch rows [b0, b1). See the module docstring.

    weights is kernel stacked on recurrent_kernel, (I + H, 4H). Each row of
    states is [x_t, h_{t-1}], the input of a step beside the dropped-out
    hidden state its recurrent GEMM reads; c_prev holds the cell state
    before each step. Both are (B, T, .) when training, indexed by input
    time, and a single (B, 1, .) slot when not. h and c hold the running
    states (in: initial, out: final); h_last takes the dropped-out state
    after the last step, which no GEMM reads. dropout is all ones when there
    is no recurrent dropout, so the fused loop has no branches.

    With ``hoist`` the input product of all steps is one GEMM before the
    loop. Without, each step computes [x_t, h_{t-1}] @ weights in one GEMM,
    so the step's gates are still in cache when the fused loop reads them;
    gates is then (B, 1, 4H) (gate_slots = 1) when not training.
    """
    cdef Py_ssize_t G = 4 * H
    cdef Py_ssize_t S = I + H
    cdef Py_ssize_t rows = b1 - b0
    cdef Py_ssize_t slots = T if training else 1
    cdef const floating* kernel = weights
    cdef const floating* recurrent_kernel = weights + I * G
    cdef floating* row0
    cdef Py_ssize_t s, t, t_next, b, j, gt
    cdef floating* z
    cdef floating* hb
    cdef floating* cb
    cdef floating* out
    cdef floating* h_read
    cdef floating* h_next
    cdef floating* keep_c
    cdef const floating* drop
    if rows <= 0:
        return

    if training:
        # Each step's input beside its state: the weight gradients are then
        # one product, [x_t, h_{t-1}].T @ dZ_t summed over all steps.
        for b in range(b0, b1):
            for t in range(T):
                memcpy(states + (b * T + t) * S, x + (b * T + t) * I, I * sizeof(floating))
    if hoist:
        # Z[rows] = X[rows] @ kernel     (rows*T, 4H) = (rows*T, I)(I, 4H)
        gemm(NoTrans, NoTrans, <int>(rows * T), <int>G, <int>I, <floating>1.0,
             x + b0 * T * I, <int>I, kernel, <int>G, <floating>0.0,
             gates + b0 * T * G, <int>G)

    # The state the first recurrent GEMM reads: h0, dropped out.
    t = _time(0, T, go_backwards)
    for b in range(b0, b1):
        h_next = states + (b * slots + (t if training else 0)) * S + I
        hb = h + b * H
        drop = dropout + b * H
        for j in range(H):
            h_next[j] = hb[j] * drop[j]

    for s in range(T):
        t = _time(s, T, go_backwards)
        t_next = _time(s + 1, T, go_backwards)
        gt = t if gate_slots > 1 else 0
        row0 = states + (b0 * slots + (t if training else 0)) * S
        if hoist:
            # Z_t[rows] += h_{t-1}[rows] @ recurrent_kernel   (rows, 4H) += (rows, H)(H, 4H)
            _step_gemm(rows, G, H, row0 + I, slots * S, recurrent_kernel, 1,
                       gates + (b0 * gate_slots + gt) * G, gate_slots * G)
        else:
            if not training:
                for b in range(b0, b1):
                    memcpy(states + b * S, x + (b * T + t) * I, I * sizeof(floating))
            # Z_t[rows] = [x_t, h_{t-1}][rows] @ weights   (rows, 4H) = (rows, I+H)(I+H, 4H)
            _step_gemm(rows, G, S, row0, slots * S, weights, 0,
                       gates + (b0 * gate_slots + gt) * G, gate_slots * G)
        for b in range(b0, b1):
            z = gates + (b * gate_slots + gt) * G
            hb = h + b * H
            cb = c + b * H
            out = outputs + (b * T + s) * H
            h_read = states + (b * slots + (t if training else 0)) * S + I
            if s + 1 < T:
                h_next = states + (b * slots + (t_next if training else 0)) * S + I
            else:
                h_next = h_last + b * H
            keep_c = c_prev + (b * slots + (t if training else 0)) * H
            drop = dropout + b * H
            if mask == NULL or mask[b * T + t]:
                if activation == TANH and recurrent_activation == SIGMOID:
                    _step_forward(H, z, bias, cb, hb, out, keep_c, h_next, drop, TANH, SIGMOID)
                else:
                    _step_forward(H, z, bias, cb, hb, out, keep_c, h_next, drop,
                                  activation, recurrent_activation)
            else:
                # Masked step: the states carry over; the output repeats the
                # previous output (zeros before the first processed step).
                if s > 0:
                    memcpy(out, out - H, H * sizeof(floating))
                else:
                    memset(out, 0, H * sizeof(floating))
                memcpy(keep_c, cb, H * sizeof(floating))
                memmove(h_next, h_read, H * sizeof(floating))


cdef void _backward_rows(
    Py_ssize_t b0, Py_ssize_t b1, Py_ssize_t T, Py_ssize_t I, Py_ssize_t H,
    const floating* kernel, const floating* recurrent_kernel_t,
    const unsigned char* mask, const floating* dropout, bint go_backwards,
    int activation, int recurrent_activation, const floating* grad_outputs,
    floating* gates, const floating* c_prev,
    floating* dh_rec, floating* dh_pass, floating* dc, floating* carry,
    floating* dx,
) noexcept nogil:
    """Backward pass through time over batch rows [b0, b1), and dx for them.

    On entry dh_pass and dc hold the gradients of the final states, dh_rec and
    carry zeros. dh_rec receives each step's recurrent GEMM (the gradient of
    the dropped-out h_{t-1}); dh_pass the part of dh that skips the GEMM (state
    carried through masked steps); carry the gradient of an output repeated by
    later masked steps. On exit dh_rec * dropout + dh_pass is dh0, dc is dc0.
    The gate gradients dZ replace the gates in ``gates``. dx may be NULL:
    the input's gradient is then not computed (nothing reads it). recurrent_kernel_t
    is recurrent_kernel transposed, (4H, H) C-contiguous: OpenBLAS multiplies
    by it about 1.5x faster than by the transposed view of the original.
    """
    cdef Py_ssize_t G = 4 * H
    cdef Py_ssize_t rows = b1 - b0
    cdef Py_ssize_t s, t, b, j
    cdef floating* z
    cdef floating* dhr
    cdef floating* dhp
    cdef floating* dcb
    cdef floating* cry
    cdef const floating* cp
    cdef const floating* dy
    cdef const floating* drop
    if rows <= 0:
        return
    for s in range(T - 1, -1, -1):
        t = _time(s, T, go_backwards)
        for b in range(b0, b1):
            z = gates + (b * T + t) * G
            cp = c_prev + (b * T + t) * H
            dhr = dh_rec + b * H
            dhp = dh_pass + b * H
            dcb = dc + b * H
            cry = carry + b * H
            dy = grad_outputs + (b * T + s) * H
            drop = dropout + b * H
            if mask == NULL or mask[b * T + t]:
                if activation == TANH and recurrent_activation == SIGMOID:
                    _step_backward(H, z, cp, dhr, dhp, dcb, cry, dy, drop, TANH, SIGMOID)
                else:
                    _step_backward(H, z, cp, dhr, dhp, dcb, cry, dy, drop,
                                   activation, recurrent_activation)
            else:
                # Masked step: h and c passed through unchanged, so their
                # gradients do too; the output was a copy of the previous one.
                for j in range(H):
                    dhp[j] = dhr[j] * drop[j] + dhp[j]
                    cry[j] = cry[j] + dy[j]
                memset(z, 0, G * sizeof(floating))
        # dh_{t-1}[rows] = dZ_t[rows] @ recurrent_kernel.T   (rows, H) = (rows, 4H)(4H, H)
        gemm(NoTrans, NoTrans, <int>rows, <int>H, <int>G, <floating>1.0,
             gates + (b0 * T + t) * G, <int>(T * G), recurrent_kernel_t, <int>H,
             <floating>0.0, dh_rec + b0 * H, <int>H)

    if dx == NULL:
        return
    # dx[rows] = dZ[rows] @ kernel.T   (rows*T, I) = (rows*T, 4H)(4H, I); kernel is the
    # first I rows of the stacked weights
    gemm(NoTrans, Trans, <int>(rows * T), <int>I, <int>G, <floating>1.0,
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


cdef tuple _dims(Py_ssize_t* shape, int ndim):
    """A memoryview's shape as a tuple, for the entry points' checks."""
    return tuple([shape[k] for k in range(ndim)])


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
            int num_threads):
    """Run the forward kernel into caller-allocated buffers.

    x (B, T, I); weights (I + H, 4H), kernel stacked on recurrent_kernel;
    bias (4H,); mask (B, T) as uint8 or None; dropout (B, H), ones for no
    dropout; outputs (B, T, H); h, c (B, H): initial states in, final states
    out; gates (B, T, 4H), or (B, 1, 4H) for inference without ``hoist``;
    states (B, T, I + H) and c_prev (B, T, H) when training, (B, 1, I + H)
    and (B, 1, H) when not; h_last (B, H) scratch. hoist: one GEMM for the
    input product of all steps, or one per step (see _forward_rows).
    The caller has checked every shape and made BLAS single-threaded.
    """
    cdef Py_ssize_t B = x.shape[0], T = x.shape[1], I = x.shape[2], H = h.shape[1]
    cdef const unsigned char* mask_ptr = &mask[0, 0] if mask is not None else NULL
    cdef Py_ssize_t gate_slots = gates.shape[1]
    cdef Py_ssize_t nchunks = max(1, min(num_threads, B)), k
    cdef unsigned int csr
    # The pointer arithmetic below trusts these shapes; the caller allocates
    # them, and a mistake must not write out of bounds.
    if gate_slots != T and (training or hoist or gate_slots != 1):
        raise ValueError(f"gates must have T = {T} slots when training or hoisting, "
                         f"1 otherwise; got {gate_slots}")
    if (weights.shape[0] != I + H or weights.shape[1] != 4 * H
            or states.shape[0] != B or states.shape[1] != (T if training else 1)
            or states.shape[2] != I + H):
        raise ValueError("weights must be (I + H, 4H) and states (B, T or 1, I + H)")
    with nogil, parallel(num_threads=nchunks):
        for k in prange(nchunks, schedule="dynamic", chunksize=1):
            csr = fl_flush_denormals()
            _forward_rows(
                _chunk_start(k, nchunks, B), _chunk_start(k + 1, nchunks, B), T, I, H,
                &x[0, 0, 0], &weights[0, 0], &bias[0],
                mask_ptr, &dropout[0, 0], go_backwards, training, hoist, activation,
                recurrent_activation, &outputs[0, 0, 0], &h[0, 0], &c[0, 0],
                &gates[0, 0, 0], gate_slots, &states[0, 0, 0], &c_prev[0, 0, 0],
                &h_last[0, 0])
            fl_restore_denormals(csr)


def backward(const floating[:, ::1] weights,
             const floating[:, ::1] recurrent_kernel_t,
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
             int num_threads):
    """Run the backward kernel into caller-allocated buffers.

    weights, gates, states and c_prev are those of a training ``forward``;
    the gate gradients overwrite ``gates``. recurrent_kernel_t is the
    recurrent kernel transposed, (4H, H). dh_pass and dc come in holding the
    gradients of the final states; dh_rec and carry come in as zeros.
    dweights (I + H, 4H) receives dkernel stacked on drecurrent_kernel.
    dropout is all ones for no dropout. dx (B, T, I) receives the input's
    gradient, or is None to skip that product (nothing reads it).
    """
    cdef Py_ssize_t B = gates.shape[0], T = gates.shape[1], H = dc.shape[1]
    cdef Py_ssize_t I = states.shape[2] - H
    cdef Py_ssize_t G = 4 * H
    cdef const unsigned char* mask_ptr = &mask[0, 0] if mask is not None else NULL
    cdef floating* dx_ptr = &dx[0, 0, 0] if dx is not None else NULL
    cdef Py_ssize_t nchunks = max(1, min(num_threads, B)), k
    cdef Py_ssize_t ncolumns = max(1, min(num_threads, (G + 15) // 16))
    cdef unsigned int csr
    # The pointer arithmetic below trusts these shapes; the caller allocates
    # them, and a mistake must not read or write out of bounds.
    for name, shape, expected in (
            ("gates", _dims(gates.shape, 3), (B, T, G)),
            ("states", _dims(states.shape, 3), (B, T, I + H)),
            ("c_prev", _dims(c_prev.shape, 3), (B, T, H)),
            ("grad_outputs", _dims(grad_outputs.shape, 3), (B, T, H)),
            ("weights", _dims(weights.shape, 2), (I + H, G)),
            ("recurrent_kernel_t", _dims(recurrent_kernel_t.shape, 2), (G, H)),
            ("dweights", _dims(dweights.shape, 2), (I + H, G)),
            ("dbias", _dims(dbias.shape, 1), (G,)),
            ("dropout", _dims(dropout.shape, 2), (B, H)),
            ("dh_rec", _dims(dh_rec.shape, 2), (B, H)),
            ("dh_pass", _dims(dh_pass.shape, 2), (B, H)),
            ("dc", _dims(dc.shape, 2), (B, H)),
            ("carry", _dims(carry.shape, 2), (B, H)),
            ("mask", None if mask is None else _dims(mask.shape, 2), (B, T)),
            ("dx", None if dx is None else _dims(dx.shape, 3), (B, T, I))):
        if shape is not None and shape != expected:
            raise ValueError(f"{name} must have shape {expected}, got {shape}")
    if I < 1:
        raise ValueError(f"states must have more than H = {H} columns, got {I + H}")
    with nogil, parallel(num_threads=max(nchunks, ncolumns)):
        for k in prange(nchunks, schedule="dynamic", chunksize=1):
            csr = fl_flush_denormals()
            _backward_rows(
                _chunk_start(k, nchunks, B), _chunk_start(k + 1, nchunks, B), T, I, H,
                &weights[0, 0], &recurrent_kernel_t[0, 0], mask_ptr, &dropout[0, 0],
                go_backwards, activation, recurrent_activation, &grad_outputs[0, 0, 0], &gates[0, 0, 0], &c_prev[0, 0, 0],
                &dh_rec[0, 0], &dh_pass[0, 0], &dc[0, 0], &carry[0, 0], dx_ptr)
            fl_restore_denormals(csr)
        for k in prange(ncolumns, schedule="dynamic", chunksize=1):
            csr = fl_flush_denormals()
            _weight_grads_columns(
                _column_start(k, ncolumns, G), _column_start(k + 1, ncolumns, G),
                B, T, I, H, &states[0, 0, 0], &gates[0, 0, 0], &dweights[0, 0], &dbias[0])
            fl_restore_denormals(csr)
