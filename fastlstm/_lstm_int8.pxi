# int8 inference: the forward pass of a quantized LSTM and the product of a
# quantized Dense layer, on the integer products of _fl_int8.h.
#
# Forward, per thread (a contiguous block of batch rows, for the whole time
# loop; the recurrences of two sequences never meet):
#   1. each input row x[b, t] is quantized (uint8, its own scale and zero
#      point), then, in chunks of rows,
#        gates[b, t] = dequantize(u_x[b, t] @ kernel_q) + bias    int32 sums
#   2. per step, in processing order: each h_{t-1}[b] is quantized, then
#        z = gates[b, t] + dequantize(u_h[b] @ recurrent_kernel_q)
#      in the float32 element-wise step (activations, c and h, mask), one
#      pass over each row.
# Every buffer is allocated by the entry point (numpy arrays), one region
# per thread; nothing is allocated inside the threads' loops.
#
# Paths: the integer products run on AVX-512 VNNI, AVX-VNNI or a portable
# loop (fl_int8_best_path); every path computes the same int32 sums and
# shares the dequantization and the element-wise step, so the results are
# the same bits on each. ``portable=True`` forces the portable loop.
from libc.stdint cimport int32_t, int8_t, uint8_t

cdef extern from "_fl_int8.h":
    const int FL_INT8_GROUP
    const int FL_INT8_PORTABLE
    const int FL_INT8_AVXVNNI
    const int FL_INT8_AVX512VNNI
    int fl_int8_best_path() noexcept nogil
    void fl_quantize_row_u8(Py_ssize_t n, const float* a, Py_ssize_t padded, uint8_t* u,
                            float* scale, int32_t* zero) noexcept nogil
    Py_ssize_t fl_int8_packed_size(Py_ssize_t K, Py_ssize_t N) noexcept nogil
    void fl_int8_pack(Py_ssize_t K, Py_ssize_t N, const int8_t* w, int8_t* packed,
                      int32_t* colsum) noexcept nogil
    void fl_int8_product(int path, Py_ssize_t rows, const uint8_t* u, Py_ssize_t ldu,
                         const int8_t* packed, Py_ssize_t K4, Py_ssize_t groups,
                         int32_t* acc, Py_ssize_t ldacc) noexcept nogil
    void fl_int8_dequantize(Py_ssize_t rows, Py_ssize_t N, const int32_t* acc,
                            Py_ssize_t ldacc, const float* row_scale, const int32_t* row_zero,
                            const int32_t* colsum, const float* column_scale,
                            const float* bias, float* z, Py_ssize_t ldz,
                            int accumulate) noexcept nogil

import numpy as np

cdef enum:
    # Rows of one chunk of the input product (and of the Dense product).
    INT8_CHUNK = 64

_INT8_PATH_NAMES = {FL_INT8_PORTABLE: "portable", FL_INT8_AVXVNNI: "avxvnni",
                    FL_INT8_AVX512VNNI: "avx512vnni"}


def int8_path():
    """The integer-product path this CPU runs: ``"avx512vnni"``,
    ``"avxvnni"`` or ``"portable"``."""
    return _INT8_PATH_NAMES[fl_int8_best_path()]


cdef inline int _int8_path(bint portable) noexcept nogil:
    return FL_INT8_PORTABLE if portable else fl_int8_best_path()


cdef inline Py_ssize_t _pad4(Py_ssize_t n) noexcept nogil:
    return 4 * ((n + 3) // 4)


cdef inline Py_ssize_t _groups(Py_ssize_t n) noexcept nogil:
    return (n + FL_INT8_GROUP - 1) // FL_INT8_GROUP


def int8_pack(const int8_t[:, ::1] weights):
    """``(packed, colsum)``: ``weights`` (K, N) int8 in the layout the
    integer products read (int8, 1-D), and its column sums (int32, N)."""
    cdef Py_ssize_t K = weights.shape[0], N = weights.shape[1]
    packed = np.empty(fl_int8_packed_size(K, N), np.int8)
    colsum = np.empty(N, np.int32)
    cdef int8_t[::1] p = packed
    cdef int32_t[::1] s = colsum
    with nogil:
        fl_int8_pack(K, N, &weights[0, 0], &p[0], &s[0])
    return packed, colsum


def _check_int8_packed(str name, const int8_t[::1] packed, const int32_t[::1] colsum,
                       const float[::1] scale, Py_ssize_t K, Py_ssize_t N):
    if packed.shape[0] != fl_int8_packed_size(K, N):
        raise ValueError(f"{name}: packed weights must have {fl_int8_packed_size(K, N)} bytes "
                         f"for {K} rows and {N} columns, got {packed.shape[0]}")
    if colsum.shape[0] != N or scale.shape[0] != N:
        raise ValueError(f"{name}: colsum and scale must have {N} entries, got "
                         f"{colsum.shape[0]} and {scale.shape[0]}")


cdef void _int8_rows_product(int path, Py_ssize_t rows, const float* a, Py_ssize_t K,
                             const int8_t* packed, const int32_t* colsum, const float* scale,
                             const float* bias, Py_ssize_t N, float* z, Py_ssize_t ldz,
                             uint8_t* u, float* row_scale, int32_t* row_zero,
                             int32_t* acc) noexcept nogil:
    """z[r] = dequantize(quantize(a[r]) @ W) + bias for r < rows (a row-major,
    K columns), in chunks of INT8_CHUNK rows through u, row_scale, row_zero
    and acc (INT8_CHUNK rows each)."""
    cdef Py_ssize_t Kp = _pad4(K), G = _groups(N), r0 = 0, n, r
    while r0 < rows:
        n = min(<Py_ssize_t>INT8_CHUNK, rows - r0)
        for r in range(n):
            fl_quantize_row_u8(K, a + (r0 + r) * K, Kp, u + r * Kp, &row_scale[r], &row_zero[r])
        # acc[chunk] = u[chunk] @ W   (n, G*64) int32 = (n, Kp) u8 @ (Kp, G*64) s8
        fl_int8_product(path, n, u, Kp, packed, Kp // 4, G, acc, G * FL_INT8_GROUP)
        fl_int8_dequantize(n, N, acc, G * FL_INT8_GROUP, row_scale, row_zero, colsum, scale,
                           bias, z + r0 * ldz, ldz, 0)
        r0 += n


def int8_matmul(const float[:, ::1] x, const int8_t[::1] packed, const int32_t[::1] colsum,
                const float[::1] scale, bias, bint portable=False):
    """``x @ W + bias`` for W quantized (packed by :func:`int8_pack`, its
    column scales ``scale``), ``x`` (M, K) float32 quantized per row: a
    float32 (M, N) array."""
    cdef Py_ssize_t M = x.shape[0], K = x.shape[1], N = colsum.shape[0]
    _check_int8_packed("int8_matmul", packed, colsum, scale, K, N)
    cdef const float[::1] b
    cdef const float* bias_ptr = NULL
    if bias is not None:
        b = bias
        if b.shape[0] != N:
            raise ValueError(f"bias must have {N} entries, got {b.shape[0]}")
        bias_ptr = &b[0]
    out = np.empty((M, N), np.float32)
    u = np.empty(INT8_CHUNK * _pad4(K), np.uint8)
    row_scale = np.empty(INT8_CHUNK, np.float32)
    row_zero = np.empty(INT8_CHUNK, np.int32)
    acc = np.empty(INT8_CHUNK * _groups(N) * FL_INT8_GROUP, np.int32)
    cdef float[:, ::1] o = out
    cdef uint8_t[::1] uv = u
    cdef float[::1] rs = row_scale
    cdef int32_t[::1] rz = row_zero
    cdef int32_t[::1] av = acc
    cdef int path = _int8_path(portable)
    if M == 0:
        return out
    with nogil:
        _int8_rows_product(path, M, &x[0, 0], K, &packed[0], &colsum[0], &scale[0], bias_ptr,
                           N, &o[0, 0], N, &uv[0], &rs[0], &rz[0], &av[0])
    return out


cdef struct _Int8Job:
    const float* x
    Py_ssize_t B, T, I, H, blocks, ws_rows
    float* h
    float* c
    float* outputs
    float* gates
    const uint8_t* keep
    bint go_backwards
    const int8_t* kernel
    const int32_t* kernel_colsum
    const float* kernel_scale
    const int8_t* recurrent
    const int32_t* recurrent_colsum
    const float* recurrent_scale
    const float* bias
    int activation, recurrent_activation, path
    uint8_t* u
    float* row_scale
    int32_t* row_zero
    int32_t* acc


cdef inline float _int8_gate(const float* z, const int32_t* acc, int32_t zero,
                             const int32_t* colsum, float scale,
                             const float* column_scale) noexcept nogil:
    """z + the dequantized recurrent product of one gate column: the
    expression of fl_int8_dequantize."""
    return z[0] + <float>(acc[0] - zero * colsum[0]) * (scale * column_scale[0])


cdef inline void _int8_step_units(Py_ssize_t H, const float* z, const int32_t* acc,
                                  int32_t zero, const int32_t* colsum, float scale,
                                  const float* column_scale, float* c, float* h,
                                  int activation, int recurrent_activation) noexcept nogil:
    """The element-wise step of one sequence: its pre-activations are z (the
    input product and bias, gate blocks H apart) plus the dequantized
    recurrent product acc (row scale and zero point ``scale``, ``zero``);
    c and h updated in place. Called with constant codes for the default
    pair, so that copy is compiled branch-free and vectorised."""
    cdef Py_ssize_t j, k
    cdef float gi, gf, gc, go, cn
    for j in range(H):
        k = j
        gi = _activate(_int8_gate(z + k, acc + k, zero, colsum + k, scale, column_scale + k),
                       recurrent_activation)
        k = H + j
        gf = _activate(_int8_gate(z + k, acc + k, zero, colsum + k, scale, column_scale + k),
                       recurrent_activation)
        k = 2 * H + j
        gc = _activate(_int8_gate(z + k, acc + k, zero, colsum + k, scale, column_scale + k),
                       activation)
        k = 3 * H + j
        go = _activate(_int8_gate(z + k, acc + k, zero, colsum + k, scale, column_scale + k),
                       recurrent_activation)
        cn = gf * c[j] + gi * gc
        c[j] = cn
        h[j] = go * _activate(cn, activation)


cdef void _int8_block(void* ctx, Py_ssize_t k) noexcept nogil:
    cdef unsigned int saved = fl_flush_denormals()
    _int8_forward_rows(<_Int8Job*>ctx, k)
    fl_restore_denormals(saved)


cdef void _int8_forward_rows(_Int8Job* job, Py_ssize_t k) noexcept nogil:
    cdef Py_ssize_t B = job.B, T = job.T, I = job.I, H = job.H, G4 = 4 * H
    cdef Py_ssize_t b0 = _chunk_start(k, job.blocks, B), b1 = _chunk_start(k + 1, job.blocks, B)
    cdef Py_ssize_t rows = b1 - b0, Hp = _pad4(H), G = _groups(G4), ld = G * FL_INT8_GROUP
    cdef Py_ssize_t width = max(_pad4(I), Hp)
    cdef uint8_t* u = job.u + k * job.ws_rows * width
    cdef float* row_scale = job.row_scale + k * job.ws_rows
    cdef int32_t* row_zero = job.row_zero + k * job.ws_rows
    cdef int32_t* acc = job.acc + k * job.ws_rows * ld
    cdef Py_ssize_t s, t, b, r
    cdef float* z
    cdef float* out
    cdef float* h
    cdef float* c
    if rows <= 0:
        return
    # gates[b0:b1] = dequantize(quantize(x[b0:b1]) @ kernel_q) + bias, all steps at once
    _int8_rows_product(job.path, rows * T, job.x + b0 * T * I, I, job.kernel,
                       job.kernel_colsum, job.kernel_scale, job.bias, G4,
                       job.gates + b0 * T * G4, G4, u, row_scale, row_zero, acc)
    for s in range(T):
        t = _time(s, T, job.go_backwards)
        for b in range(rows):
            fl_quantize_row_u8(H, job.h + (b0 + b) * H, Hp, u + b * Hp, &row_scale[b],
                               &row_zero[b])
        # acc = u_h @ recurrent_kernel_q   (rows, ld) int32 = (rows, Hp) u8 @ (Hp, ld) s8
        # (dequantized and added to gates[b, t] inside the element-wise step)
        fl_int8_product(job.path, rows, u, Hp, job.recurrent, Hp // 4, G, acc, ld)
        for b in range(b0, b1):
            out = job.outputs + (b * T + s) * H
            if job.keep != NULL and not job.keep[b * T + t]:
                # A masked step carries the states and repeats the last output.
                if s == 0:
                    memset(out, 0, H * sizeof(float))
                else:
                    memcpy(out, out - H, H * sizeof(float))
                continue
            z = job.gates + (b * T + t) * G4
            h = job.h + b * H
            c = job.c + b * H
            r = b - b0
            if job.activation == TANH and job.recurrent_activation == SIGMOID:
                _int8_step_units(H, z, acc + r * ld, row_zero[r], job.recurrent_colsum,
                                 row_scale[r], job.recurrent_scale, c, h, TANH, SIGMOID)
            else:
                _int8_step_units(H, z, acc + r * ld, row_zero[r], job.recurrent_colsum,
                                 row_scale[r], job.recurrent_scale, c, h, job.activation,
                                 job.recurrent_activation)
            memcpy(out, h, H * sizeof(float))


def int8_lstm_forward(const float[:, :, ::1] x, float[:, ::1] h, float[:, ::1] c, mask,
                      bint go_backwards, const int8_t[::1] kernel, const int32_t[::1] kernel_colsum,
                      const float[::1] kernel_scale, const int8_t[::1] recurrent_kernel,
                      const int32_t[::1] recurrent_colsum, const float[::1] recurrent_scale,
                      bias, int activation, int recurrent_activation, int threads,
                      bint portable=False):
    """The forward pass of a quantized LSTM on x (B, T, I) float32: returns
    the outputs (B, T, H) in processing order and writes the final states
    over ``h`` and ``c`` (B, H), which hold the initial ones.

    ``kernel`` and ``recurrent_kernel`` are packed by :func:`int8_pack`, with
    their column sums and scales; ``mask`` None or uint8 (B, T), nonzero
    keeps a step; ``bias`` None or float32 (4H,)."""
    cdef Py_ssize_t B = x.shape[0], T = x.shape[1], I = x.shape[2], H = h.shape[1]
    cdef Py_ssize_t G4 = 4 * H
    _check_int8_packed("kernel", kernel, kernel_colsum, kernel_scale, I, G4)
    _check_int8_packed("recurrent_kernel", recurrent_kernel, recurrent_colsum, recurrent_scale,
                       H, G4)
    if h.shape[0] != B or c.shape[0] != B or c.shape[1] != H:
        raise ValueError(f"h and c must have shape ({B}, {H}), got ({h.shape[0]}, {h.shape[1]}) "
                         f"and ({c.shape[0]}, {c.shape[1]})")
    cdef const uint8_t[:, ::1] keep
    cdef const float[::1] b
    cdef _Int8Job job
    job.keep = NULL
    job.bias = NULL
    if mask is not None:
        keep = mask
        if keep.shape[0] != B or keep.shape[1] != T:
            raise ValueError(f"mask must have shape ({B}, {T}), got ({keep.shape[0]}, {keep.shape[1]})")
        job.keep = &keep[0, 0]
    if bias is not None:
        b = bias
        if b.shape[0] != G4:
            raise ValueError(f"bias must have {G4} entries, got {b.shape[0]}")
        job.bias = &b[0]
    outputs = np.empty((B, T, H), np.float32)
    if B == 0 or T == 0:
        return outputs
    cdef Py_ssize_t blocks = max(1, min(threads, B))
    cdef Py_ssize_t rows = (B + blocks - 1) // blocks
    cdef Py_ssize_t ws_rows = max(<Py_ssize_t>INT8_CHUNK, rows)
    cdef Py_ssize_t width = max(_pad4(I), _pad4(H)), ld = _groups(G4) * FL_INT8_GROUP
    gates = np.empty((B, T, G4), np.float32)
    u = np.empty(blocks * ws_rows * width, np.uint8)
    row_scale = np.empty(blocks * ws_rows, np.float32)
    row_zero = np.empty(blocks * ws_rows, np.int32)
    acc = np.empty(blocks * ws_rows * ld, np.int32)
    cdef float[:, :, ::1] o = outputs
    cdef float[:, :, ::1] g = gates
    cdef uint8_t[::1] uv = u
    cdef float[::1] rs = row_scale
    cdef int32_t[::1] rz = row_zero
    cdef int32_t[::1] av = acc
    job.x = &x[0, 0, 0]
    job.B, job.T, job.I, job.H = B, T, I, H
    job.blocks, job.ws_rows = blocks, ws_rows
    job.h, job.c = &h[0, 0], &c[0, 0]
    job.outputs, job.gates = &o[0, 0, 0], &g[0, 0, 0]
    job.go_backwards = go_backwards
    job.kernel, job.kernel_colsum, job.kernel_scale = &kernel[0], &kernel_colsum[0], &kernel_scale[0]
    job.recurrent, job.recurrent_colsum = &recurrent_kernel[0], &recurrent_colsum[0]
    job.recurrent_scale = &recurrent_scale[0]
    job.activation, job.recurrent_activation = activation, recurrent_activation
    job.path = _int8_path(portable)
    job.u, job.row_scale, job.row_zero, job.acc = &uv[0], &rs[0], &rz[0], &av[0]
    with nogil:
        run_blocks(_int8_block, &job, blocks, <int>blocks)
    return outputs
