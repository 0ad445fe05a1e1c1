# Included by _lstm.pyx: the pipelined stack of LSTM layers.
#
# A stack of LSTM layers, each reading the outputs of the one below, runs as
# one call in which the layers advance together, as a wavefront: while the
# thread of layer l computes step s, the thread of layer l + 1 computes step
# s - 1. Each layer's steps run on one thread over the whole batch, so a step's
# register tiles see every batch row (the batch split gives each thread a
# share of them), and a small batch, which the batch split cannot share among
# threads, keeps every thread busy.
#
# Forward. Layer 0 runs as a single layer does: its prologue (and its input
# product of all steps, where hoisted) split by batch rows among the threads
# before the wavefront. A layer l >= 1 cannot hoist its input product for
# all steps, whose input appears one step at a time; it computes it for a
# span of steps at once (a packed product of the layer below's outputs by
# kernel, gate panels of depth I, written into the span's gates, which each
# step's own tiles then add h_{t-1} @ recurrent_kernel to), so that every
# weight panel serves batch x span rows while it is in cache, and it lags
# the layer below by a span. That input product is split by gate panels
# between the thread below, which computes panels [0, split) right after
# finishing the span, and the layer's own thread, which computes the rest
# before the span's first step; the split balances the threads' work
# (_stack_splits).
#
# Backward, the mirror image: the top layer first, in reverse processing
# order; the gradient of layer l's outputs over a span is layer l + 1's
# gate gradients there times kernel.T (column panels of kernel.T), split by
# columns between the thread above, once it has finished the span, and
# layer l's thread, before it starts it. The weight gradients and the stack
# input's gradient are then one BLAS product per layer, as for a single
# layer.
#
# Synchronisation. Each layer publishes how many of its steps are done, and
# how many steps' share of its input product (forward) or of its output
# gradient (backward) the neighbouring thread has handed over. Each layer's
# steps are one block of the pool's job, in the order the wavefront runs
# them: layer l is block l forward, block L - 1 - l backward. Every wait is
# for work of a lower-numbered block (the layer below forward, the layer
# above backward), which the pool has handed out first: the earliest
# unfinished block can always run, so no thread waits forever, whatever the
# number of threads (one thread runs the layers one after the other, each
# finding what it waits for done).

ctypedef struct _StackLayer:
    Py_ssize_t I, H
    int activation, recurrent_activation
    bint go_backwards, hoist
    # The caller gave packed and packed_input, already packed.
    bint prepacked
    Py_ssize_t gate_slots, state_slots
    # Gate panels (forward) or column panels (backward) whose share of the
    # input product (or of the layer below's output gradient) the
    # neighbouring layer's thread computes.
    Py_ssize_t split
    const void* weights
    void* packed
    void* packed_input
    const void* x
    const void* bias
    const unsigned char* mask
    const void* dropout
    const void* between
    void* outputs
    void* h
    void* c
    void* gates
    void* states
    void* c_prev
    void* h_last
    void* grad_outputs
    void* dh_rec
    void* dh_pass
    void* dc
    void* carry
    void* dweights
    void* dbias
    long* done
    long* handed_over


# Counters on their own cache lines: (2 per layer) x 16 longs.
cdef enum:
    COUNTER_STRIDE = 16


cdef void _stack_prologue(Py_ssize_t b0, Py_ssize_t b1, _StackLayer* layer, Py_ssize_t T,
                          bint training, floating* dtype_of) noexcept nogil:
    """A layer l >= 1 before its first step: h0, dropped out, in the state
    slot the first step reads."""
    cdef Py_ssize_t I = layer.I, H = layer.H, S = layer.I + layer.H, b, j
    cdef const floating* h = <const floating*>layer.h
    cdef const floating* dropout = <const floating*>layer.dropout
    cdef floating* states = <floating*>layer.states
    for b in range(b0, b1):
        for j in range(H):
            states[b * layer.state_slots * S + I + j] = h[b * H + j] * dropout[b * H + j]


cdef void _stack_take_input(_StackLayer* layer, const floating* below_outputs, Py_ssize_t B,
                            Py_ssize_t s, Py_ssize_t T, floating* dtype_of) noexcept nogil:
    """Training: the input of layer l >= 1 at step s, the layer below's
    output times ``between``, into the state row the weight gradients read."""
    cdef Py_ssize_t I = layer.I, S = layer.I + layer.H, b, j
    cdef floating* row
    cdef const floating* out
    cdef const floating* between = <const floating*>layer.between
    for b in range(B):
        row = <floating*>layer.states + (b * T + s) * S
        out = below_outputs + (b * T + s) * I
        if between == NULL:
            memcpy(row, out, I * sizeof(floating))
        else:
            for j in range(I):
                row[j] = out[j] * between[(b * T + s) * I + j]


cdef void _stack_input_product(_StackLayer* layer, const floating* below_outputs,
                               Py_ssize_t u0, Py_ssize_t u1, Py_ssize_t B, Py_ssize_t s0,
                               Py_ssize_t s1, Py_ssize_t T, bint training,
                               floating* dtype_of) noexcept nogil:
    """Gate panels [u0, u1) of layer l >= 1's input product over steps
    [s0, s1): gates[:, s, panel units] = input_s @ kernel's panels. Training
    reads the input from the state rows (_stack_take_input); inference
    straight from the layer below's outputs. Panel by panel, so that each
    serves B * (s1 - s0) rows while it is in cache: step by step across the
    batch for spans shorter than a tile, else sequence by sequence across
    the span's steps."""
    cdef Py_ssize_t I = layer.I, H = layer.H, G = 4 * layer.H
    cdef Py_ssize_t L = _lanes(dtype_of), u, b, t, r0, nr, j0
    cdef const floating* a
    cdef Py_ssize_t row
    cdef floating* z = <floating*>layer.gates
    cdef const floating* packed = <const floating*>layer.packed_input
    if training:
        a = <const floating*>layer.states
        row = I + H
    else:
        a = below_outputs
        row = I
    for u in range(u0, u1):
        j0 = u * L
        if s1 - s0 < FL_ROWS:
            for t in range(s0, s1):
                r0 = 0
                while r0 < B:
                    nr = min(FL_ROWS, B - r0)
                    _gate_tile(<int>nr, min(L, H - j0), a + (r0 * T + t) * row, T * row,
                               packed + u * I * 4 * L, I, z + (r0 * T + t) * G + j0, T * G, H,
                               False)
                    r0 += nr
            continue
        for b in range(B):
            r0 = s0
            while r0 < s1:
                nr = min(FL_ROWS, s1 - r0)
                _gate_tile(<int>nr, min(L, H - j0), a + (b * T + r0) * row, row,
                           packed + u * I * 4 * L, I, z + (b * T + r0) * G + j0, G, H, False)
                r0 += nr


cdef inline Py_ssize_t _span_end(Py_ssize_t s, Py_ssize_t span, Py_ssize_t T) noexcept nogil:
    """The end of the span of steps holding step s."""
    return min(T, (s // span + 1) * span)


cdef void _stack_forward_layer(_StackLayer* layers, Py_ssize_t l, Py_ssize_t nlayers,
                               Py_ssize_t B, Py_ssize_t T, Py_ssize_t span, bint training,
                               floating* dtype_of) noexcept nogil:
    """Layer l's steps in the forward wavefront (see the top of this file)."""
    cdef Py_ssize_t L = _lanes(dtype_of), s, end
    cdef _StackLayer* layer = &layers[l]
    cdef _StackLayer* above
    cdef const floating* below_outputs
    cdef Py_ssize_t blocks = (layer.H + L - 1) // L
    for s in range(T):
        if l > 0 and s % span == 0:
            # The first step of a span: the layer's share of the span's
            # input product, once the layer below has produced it all.
            end = _span_end(s, span, T)
            below_outputs = <const floating*>layers[l - 1].outputs
            fl_wait_for(layers[l - 1].done, end)
            _stack_input_product(layer, below_outputs, layer.split, blocks, B, s, end, T,
                                 training, dtype_of)
            fl_wait_for(layer.handed_over, end)
        _forward_step(0, B, 0, blocks, s, T, layer.I, layer.H, <const floating*>layer.packed,
                      <const floating*>layer.bias, layer.mask,
                      <const floating*>layer.dropout, layer.go_backwards, training,
                      layer.hoist, layer.activation, layer.recurrent_activation,
                      <floating*>layer.outputs, <floating*>layer.h, <floating*>layer.c,
                      <floating*>layer.gates, layer.gate_slots, <floating*>layer.states,
                      <floating*>layer.c_prev, <floating*>layer.h_last)
        if l == 0 and not layer.hoist and not training:
            _next_inputs(0, B, s, T, layer.I, layer.H, <const floating*>layer.x,
                         layer.go_backwards, <floating*>layer.states)
        if l + 1 < nlayers:
            above = &layers[l + 1]
            if training:
                _stack_take_input(above, <const floating*>layer.outputs, B, s, T, dtype_of)
            fl_publish(layer.done, s + 1)
            if s + 1 == _span_end(s, span, T):
                _stack_input_product(above, <const floating*>layer.outputs, 0, above.split,
                                     B, s - s % span, s + 1, T, training, dtype_of)
                fl_publish(above.handed_over, s + 1)


cdef void _stack_output_gradient(_StackLayer* above, _StackLayer* layer, Py_ssize_t p0,
                                 Py_ssize_t p1, Py_ssize_t B, Py_ssize_t s0, Py_ssize_t s1,
                                 Py_ssize_t T, floating* dtype_of) noexcept nogil:
    """Column panels [p0, p1) of the gradient of ``layer``'s outputs over
    steps [s0, s1): the gate gradients of the layer above times its
    kernel.T, times the multipliers (``between``) that made its input.
    Tiled as _stack_input_product."""
    cdef Py_ssize_t I = above.I, G = 4 * above.H
    cdef Py_ssize_t W = 4 * _lanes(dtype_of), p, n, r0, nr, b, j, t
    cdef const floating* dz = <const floating*>above.gates
    cdef const floating* packed = <const floating*>above.packed_input
    cdef const floating* between = <const floating*>above.between
    cdef floating* grad = <floating*>layer.grad_outputs
    for p in range(p0, p1):
        n = min(W, I - p * W)
        if s1 - s0 < FL_ROWS:
            for t in range(s0, s1):
                r0 = 0
                while r0 < B:
                    nr = min(FL_ROWS, B - r0)
                    _column_tile(<int>nr, n, dz + (r0 * T + t) * G, T * G, packed + p * G * W,
                                 G, grad + (r0 * T + t) * I + p * W, T * I)
                    r0 += nr
        else:
            for b in range(B):
                r0 = s0
                while r0 < s1:
                    nr = min(FL_ROWS, s1 - r0)
                    _column_tile(<int>nr, n, dz + (b * T + r0) * G, G, packed + p * G * W, G,
                                 grad + (b * T + r0) * I + p * W, I)
                    r0 += nr
        if between != NULL:
            for b in range(B):
                for t in range(s0, s1):
                    for j in range(p * W, p * W + n):
                        grad[(b * T + t) * I + j] *= between[(b * T + t) * I + j]


cdef void _stack_backward_layer(_StackLayer* layers, Py_ssize_t l, Py_ssize_t nlayers,
                                Py_ssize_t B, Py_ssize_t T, Py_ssize_t span,
                                floating* dtype_of) noexcept nogil:
    """Layer l's steps in the backward wavefront (see the top of this file),
    in reverse processing order."""
    cdef Py_ssize_t W = 4 * _lanes(dtype_of), s, start, end
    cdef _StackLayer* layer = &layers[l]
    cdef _StackLayer* above
    for s in range(T - 1, -1, -1):
        end = _span_end(s, span, T)
        start = s - s % span
        if l + 1 < nlayers and s + 1 == end:
            # The first step of a span processed backwards: the layer's
            # share of its output gradient over the span.
            above = &layers[l + 1]
            fl_wait_for(above.done, T - start)
            _stack_output_gradient(above, layer, above.split, (layer.H + W - 1) // W, B,
                                   start, end, T, dtype_of)
            fl_wait_for(layer.handed_over, T - start)
        _backward_step(0, B, s, T, layer.H, <const floating*>layer.packed, layer.mask,
                       <const floating*>layer.dropout, layer.go_backwards,
                       layer.activation, layer.recurrent_activation,
                       <const floating*>layer.grad_outputs, <floating*>layer.gates,
                       <const floating*>layer.c_prev, <floating*>layer.dh_rec,
                       <floating*>layer.dh_pass, <floating*>layer.dc,
                       <floating*>layer.carry)
        if l > 0:
            fl_publish(layer.done, T - s)
            if s == start:
                _stack_output_gradient(layer, &layers[l - 1], 0, layer.split, B, start, end,
                                       T, dtype_of)
                fl_publish(layers[l - 1].handed_over, T - s)


cdef void _stack_splits(_StackLayer* layers, Py_ssize_t nlayers, int threads, bint backward,
                        Py_ssize_t lanes):
    """Each layer l >= 1's ``split``: how many of the panels of its input
    product (forward) or of the layer below's output gradient (backward) the
    neighbouring layer's thread computes, so that the threads' multiply-adds
    per step come out as even as whole panels allow. Greedy, layer after
    layer in the order the wavefront runs them."""
    cdef double load[64]
    cdef double below, mine, product, share
    cdef Py_ssize_t q, l, other, width, panels, first
    cdef _StackLayer* layer
    threads = max(1, min(threads, 64))
    for q in range(threads):
        load[q] = 0
    first = nlayers - 1 if backward else 0
    layer = &layers[first]
    load[first % threads] += <double>layer.H * 4 * layer.H
    if not backward and not layer.hoist:
        load[0] += <double>layer.I * 4 * layer.H
    for q in range(1, nlayers):
        l = nlayers - 1 - q if backward else q
        # The pair: the layer whose step produced what is split (``other``)
        # and the layer that consumes it (``l``).
        other = l + 1 if backward else l - 1
        # Forward: layer l's input product, panels of its gates; backward:
        # the output gradient of layer l, column panels of layer l + 1's kernel.T.
        if backward:
            product = <double>layers[other].I * 4 * layers[other].H
            width = 4 * lanes
            panels = (layers[l].H + width - 1) // width
        else:
            product = <double>layers[l].I * 4 * layers[l].H
            panels = (layers[l].H + lanes - 1) // lanes
        below = load[other % threads]
        mine = load[l % threads] + <double>layers[l].H * 4 * layers[l].H
        if other % threads == l % threads:
            share = 0.5
        else:
            share = (mine + product - below) / (2 * product)
        share = min(1.0, max(0.0, share))
        if backward:
            layers[l + 1].split = <Py_ssize_t>(share * panels + 0.5)
        else:
            layers[l].split = <Py_ssize_t>(share * panels + 0.5)
        load[other % threads] += share * product
        load[l % threads] = mine + (1 - share) * product


cdef class _StackWorkspace:
    """The C side of one stack call: the layers' descriptions, their
    counters and their packed weights, freed with the object."""
    cdef _StackLayer* layers
    cdef long* counters
    cdef list raws
    cdef Py_ssize_t nlayers

    def __cinit__(self, Py_ssize_t nlayers):
        cdef Py_ssize_t l
        self.nlayers = nlayers
        self.raws = []
        self.layers = <_StackLayer*>malloc(nlayers * sizeof(_StackLayer))
        self.counters = <long*>malloc(2 * nlayers * COUNTER_STRIDE * sizeof(long) + 64)
        if self.layers == NULL or self.counters == NULL:
            raise MemoryError("cannot allocate the description of an LSTM stack")
        memset(self.layers, 0, nlayers * sizeof(_StackLayer))
        memset(self.counters, 0, 2 * nlayers * COUNTER_STRIDE * sizeof(long))
        for l in range(nlayers):
            self.layers[l].done = self.counters + 2 * l * COUNTER_STRIDE
            self.layers[l].handed_over = self.counters + (2 * l + 1) * COUNTER_STRIDE

    cdef void* allocate(self, Py_ssize_t elements, Py_ssize_t itemsize, str what) except NULL:
        cdef void* raw = _workspace(elements, itemsize, what)
        self.raws.append(<size_t>raw)
        return <void*>((<size_t>raw + 63) & ~(<size_t>63))

    def __dealloc__(self):
        for raw in self.raws:
            free(<void*><size_t>raw)
        free(self.layers)
        free(self.counters)


def _check_list(str name, list values, Py_ssize_t nlayers, bint optional=False):
    if len(values) != nlayers:
        raise ValueError(f"{name} must have one entry per layer ({nlayers}), got {len(values)}")
    if not optional and any(v is None for v in values):
        raise ValueError(f"{name} must have an array for every layer")


cdef void* _data(object array, str name, tuple expected, floating* dtype_of) except? NULL:
    """The data of a caller's buffer (C-contiguous, of ``dtype_of``'s dtype,
    ``len(expected)`` dimensions), once its shape is checked: the kernels
    index it and must not read or write past its end."""
    cdef floating[::1] v1
    cdef floating[:, ::1] v2
    cdef floating[:, :, ::1] v3
    if len(expected) == 1:
        v1 = array
        _check_buffer(name, _dims(v1.shape, 1), expected)
        return &v1[0]
    if len(expected) == 2:
        v2 = array
        _check_buffer(name, _dims(v2.shape, 2), expected)
        return &v2[0, 0]
    v3 = array
    _check_buffer(name, _dims(v3.shape, 3), expected)
    return &v3[0, 0, 0]


cdef const void* _input_data(object array, str name, tuple expected,
                             floating* dtype_of) except? NULL:
    """As _data, for a buffer the kernels only read (which may be read-only,
    as the weights of a PackedLSTM are)."""
    cdef const floating[::1] v1
    cdef const floating[:, ::1] v2
    if len(expected) == 1:
        v1 = array
        _check_buffer(name, _dims(v1.shape, 1), expected)
        return &v1[0]
    v2 = array
    _check_buffer(name, _dims(v2.shape, 2), expected)
    return &v2[0, 0]


cdef const unsigned char* _mask_data(object mask, str name, tuple expected) except? NULL:
    """A (B, T) uint8 mask's data once its shape is checked; NULL for None."""
    cdef const unsigned char[:, ::1] view
    if mask is None:
        return NULL
    view = mask
    _check_buffer(name, _dims(view.shape, 2), expected)
    return &view[0, 0]


# What the blocks of one stack call read: the part of the call they run, the
# layers, the call's sizes and splits; the buffers, of the call's dtype, are
# the layers'.
ctypedef struct _StackJob:
    int part
    _StackLayer* layers
    Py_ssize_t nlayers, B, T, span, nchunks, ncolumns
    bint training, double_precision
    void* dx


cdef enum _StackPart:
    PREPARE_FORWARD = 0
    LAYERS_FORWARD = 1
    PACK_BACKWARD = 2
    LAYERS_BACKWARD = 3
    GRADIENTS = 4


cdef void _stack_block(void* ctx, Py_ssize_t k) noexcept nogil:
    """Block k of the part of a stack call that the job names:
    PREPARE_FORWARD: blocks 0 .. L-1 pack layer k's weights, the rest run
    the prologue of the batch rows of chunk k - L; LAYERS_FORWARD: layer k's
    steps; PACK_BACKWARD: layer k's weights; LAYERS_BACKWARD: layer
    L - 1 - k's steps (the top layer first); GRADIENTS: blocks 0 ..
    L * ncolumns - 1 the weight gradients of a layer's block of gate
    columns, the rest dx of the batch rows of chunk k - L * ncolumns."""
    if (<_StackJob*>ctx).double_precision:
        _stack_part(<_StackJob*>ctx, k, <double*>NULL)
    else:
        _stack_part(<_StackJob*>ctx, k, <float*>NULL)


cdef void _stack_part(_StackJob* job, Py_ssize_t k, floating* dtype_of) noexcept nogil:
    cdef _StackLayer* first = &job.layers[0]
    cdef Py_ssize_t L = job.nlayers, B = job.B
    cdef unsigned int csr = fl_flush_denormals()
    if job.part == PREPARE_FORWARD and k < L:
        _stack_pack_forward(&job.layers[k], k, dtype_of)
    elif job.part == PREPARE_FORWARD:
        _stack_forward_prologue(job.layers, L, _chunk_start(k - L, job.nchunks, B),
                                _chunk_start(k - L + 1, job.nchunks, B), job.T, job.training,
                                dtype_of)
    elif job.part == LAYERS_FORWARD:
        _stack_forward_layer(job.layers, k, L, B, job.T, job.span, job.training, dtype_of)
    elif job.part == PACK_BACKWARD:
        _stack_pack_backward(&job.layers[k], k, dtype_of)
    elif job.part == LAYERS_BACKWARD:
        _stack_backward_layer(job.layers, L - 1 - k, L, B, job.T, job.span, dtype_of)
    elif k < L * job.ncolumns:
        _stack_weight_grads(&job.layers[k // job.ncolumns], k % job.ncolumns, job.ncolumns,
                            B, job.T, dtype_of)
    else:
        k -= L * job.ncolumns
        _input_gradient(_chunk_start(k, job.nchunks, B), _chunk_start(k + 1, job.nchunks, B),
                        job.T, first.I, first.H, <const floating*>first.weights,
                        <const floating*>first.gates, <floating*>job.dx)
    fl_restore_denormals(csr)


def stack_forward(const floating[:, :, ::1] x,
                  list weights, list biases, list masks, list dropouts, list between,
                  bint go_backwards,
                  list outputs, list h, list c, list gates, list states, list c_prev,
                  list h_last,
                  bint training, bint hoist, list activations, Py_ssize_t span,
                  int num_threads, list packed=None):
    """Run a stack of LSTM layers as one pipelined forward pass.

    Per layer l (lists of one entry each): weights (I_l + H_l, 4H_l),
    kernel stacked on recurrent_kernel, with I_0 = x's features and
    I_l = H_{l-1}; bias (4H_l,); mask (B, T) uint8 or None, the layer's
    own (in its input's time order); dropout (B, H_l), recurrent dropout
    multipliers (ones for none); between (B, T, I_l) multipliers of the
    layer's input or None (always None for layer 0); outputs (B, T, H_l);
    h, c (B, H_l) initial states in, final out; h_last (B, H_l) scratch;
    activations (activation, recurrent_activation) codes. Layer 0 has the
    buffers of a single ``forward`` (gates with 1 slot in inference
    without ``hoist``); layers l >= 1 gates (B, T, 4H_l), states
    (B, T or 2, I_l + H_l) and c_prev (B, T or 1, H_l). Only layer 0 may
    go backwards; inference takes no ``between``. span: the steps whose
    input product a layer computes at once (weights read once per span of
    B * span rows); a layer then starts a span once the layer below has
    finished it. packed: None, or per layer None or the panels the layer's
    steps read, already packed: (pack_gate_panels of the rows its steps
    read: recurrent_kernel's for a hoisting layer, as every layer above the
    first is, all rows otherwise; and, above the first, of its kernel,
    else None); the call packs the others. The caller has made BLAS
    single-threaded.
    """
    cdef Py_ssize_t nlayers = len(weights)
    cdef Py_ssize_t B = x.shape[0], T = x.shape[1], I, H, G, l, depth, threads
    cdef Py_ssize_t lanes = _lanes(<floating*>&x[0, 0, 0])
    cdef floating[:, ::1] w2
    cdef _StackLayer* layer
    cdef _StackWorkspace work
    cdef floating* dtype_of = <floating*>&x[0, 0, 0]
    cdef _StackJob job
    if nlayers < 1:
        raise ValueError("a stack needs at least one layer")
    if span < 1:
        raise ValueError(f"span must be at least 1, got {span}")
    if packed is not None:
        _check_list("packed", packed, nlayers, True)
    for name, values, optional in (("weights", weights, False), ("biases", biases, False),
                                   ("masks", masks, True), ("dropouts", dropouts, False),
                                   ("between", between, True), ("outputs", outputs, False),
                                   ("h", h, False), ("c", c, False), ("gates", gates, False),
                                   ("states", states, False), ("c_prev", c_prev, False),
                                   ("h_last", h_last, False), ("activations", activations, False)):
        _check_list(name, values, nlayers, optional)
    if between[0] is not None:
        raise ValueError("between[0] must be None: the stack's input is x itself")
    if not training and any(v is not None for v in between):
        raise ValueError("between multipliers are for training; inference takes none")
    work = _StackWorkspace(nlayers)
    I = x.shape[2]
    for l in range(nlayers):
        layer = &work.layers[l]
        w2 = h[l]
        H = w2.shape[1]
        G = 4 * H
        layer.I, layer.H = I, H
        layer.go_backwards = go_backwards if l == 0 else False
        layer.hoist = hoist if l == 0 else True
        layer.gate_slots = T if (training or layer.hoist) else 1
        layer.state_slots = T if training else 2
        layer.activation, layer.recurrent_activation = activations[l]
        layer.h = _data(h[l], f"h[{l}]", (B, H), dtype_of)
        layer.c = _data(c[l], f"c[{l}]", (B, H), dtype_of)
        layer.h_last = _data(h_last[l], f"h_last[{l}]", (B, H), dtype_of)
        layer.weights = _input_data(weights[l], f"weights[{l}]", (I + H, G), dtype_of)
        layer.dropout = _data(dropouts[l], f"dropouts[{l}]", (B, H), dtype_of)
        layer.bias = _input_data(biases[l], f"biases[{l}]", (G,), dtype_of)
        layer.mask = _mask_data(masks[l], f"masks[{l}]", (B, T))
        layer.between = (NULL if between[l] is None
                         else _data(between[l], f"between[{l}]", (B, T, I), dtype_of))
        layer.outputs = _data(outputs[l], f"outputs[{l}]", (B, T, H), dtype_of)
        layer.gates = _data(gates[l], f"gates[{l}]", (B, layer.gate_slots, G), dtype_of)
        layer.states = _data(states[l], f"states[{l}]", (B, layer.state_slots, I + H), dtype_of)
        layer.c_prev = _data(c_prev[l], f"c_prev[{l}]", (B, T if training else 1, H), dtype_of)
        depth = H if layer.hoist else I + H
        given = None if packed is None else packed[l]
        if given is not None:
            layer.prepacked = True
            layer.packed = _given_panels(given[0], f"packed[{l}][0]", depth, H, dtype_of)
            if l > 0:
                layer.packed_input = _given_panels(given[1], f"packed[{l}][1]", I, H,
                                                   dtype_of)
        else:
            layer.packed = work.allocate(_gate_panels_size(depth, H, lanes),
                                         sizeof(dtype_of[0]), "packed weights")
            if l > 0:
                layer.packed_input = work.allocate(_gate_panels_size(I, H, lanes),
                                                   sizeof(dtype_of[0]), "packed weights")
        I = H
    layer = &work.layers[0]
    layer.x = &x[0, 0, 0]
    threads = max(1, min(num_threads, nlayers))
    _stack_splits(work.layers, nlayers, <int>threads, False, _lanes(dtype_of))
    job.layers, job.nlayers, job.B, job.T, job.span = work.layers, nlayers, B, T, span
    job.nchunks, job.training = max(1, min(num_threads, B)), training
    job.double_precision = floating is double
    with nogil:
        job.part = PREPARE_FORWARD
        run_blocks(_stack_block, &job, nlayers + job.nchunks, num_threads)
        job.part = LAYERS_FORWARD
        run_blocks(_stack_block, &job, nlayers, num_threads)


cdef void* _given_panels(object panels, str name, Py_ssize_t depth, Py_ssize_t H,
                         floating* dtype_of) except NULL:
    """The data of panels the caller packed, once their size and alignment
    are checked."""
    cdef floating[::1] view = panels
    try:
        _check_panels(&view[0], view.shape[0], depth, H)
    except ValueError as error:
        raise ValueError(f"{name}: {error}") from None
    return &view[0]


cdef void _stack_pack_forward(_StackLayer* layer, Py_ssize_t l, floating* dtype_of) noexcept nogil:
    cdef const floating* w = <const floating*>layer.weights
    if layer.prepacked:
        return
    if layer.hoist:
        _pack_gate_panels(w + layer.I * 4 * layer.H, layer.H, layer.H, <floating*>layer.packed)
    else:
        _pack_gate_panels(w, layer.I + layer.H, layer.H, <floating*>layer.packed)
    if l > 0:
        _pack_gate_panels(w, layer.I, layer.H, <floating*>layer.packed_input)


cdef void _stack_forward_prologue(_StackLayer* layers, Py_ssize_t nlayers, Py_ssize_t b0,
                                  Py_ssize_t b1, Py_ssize_t T, bint training,
                                  floating* dtype_of) noexcept nogil:
    cdef _StackLayer* first = &layers[0]
    cdef Py_ssize_t l
    if b1 <= b0:
        return
    _forward_prologue(b0, b1, T, first.I, first.H, <const floating*>first.x,
                      <const floating*>first.weights, <const floating*>first.h,
                      <const floating*>first.dropout, first.go_backwards, training, first.hoist,
                      <floating*>first.gates, <floating*>first.states)
    for l in range(1, nlayers):
        _stack_prologue(b0, b1, &layers[l], T, training, dtype_of)


def stack_backward(const floating[:, :, ::1] grad_outputs, list weights, list masks,
                   list dropouts, list between, bint go_backwards, list output_gradients,
                   list gates, list states, list c_prev,
                   list dh_rec, list dh_pass, list dc, list carry,
                   floating[:, :, ::1] dx, list dweights, list dbiases,
                   list activations, Py_ssize_t span, int num_threads):
    """Run the backward pass of a training ``stack_forward``, pipelined.

    weights, masks, dropouts, between, go_backwards, gates, states and
    c_prev are those of the forward pass; the gate gradients overwrite
    ``gates``. grad_outputs (B, T, H_top) is the gradient of the top
    layer's outputs; output_gradients, one (B, T, H_l) per layer below the
    top, receive the gradients of theirs.
    dh_pass and dc come in holding the gradients of each layer's final
    states, dh_rec and carry as zeros (see ``backward``). dx (B, T, I_0)
    receives the stack input's gradient; None skips its product. dweights
    (I_l + H_l, 4H_l) and dbiases (4H_l,) receive each layer's weight
    gradients. span: as for ``stack_forward`` (spans of the output
    gradients, aligned on multiples of span).
    """
    cdef Py_ssize_t nlayers = len(weights)
    cdef Py_ssize_t B = grad_outputs.shape[0], T = grad_outputs.shape[1], I, H, G, l, lanes
    cdef Py_ssize_t nchunks = max(1, min(num_threads, B)), threads, ncolumns
    cdef floating[:, ::1] w2
    cdef _StackLayer* layer
    cdef _StackWorkspace work
    cdef floating* dtype_of = <floating*>&grad_outputs[0, 0, 0]
    cdef floating* dx_ptr = NULL
    cdef _StackJob job
    for name, values, optional in (("weights", weights, False), ("masks", masks, True),
                                   ("dropouts", dropouts, False), ("between", between, True),
                                   ("gates", gates, False),
                                   ("states", states, False), ("c_prev", c_prev, False),
                                   ("dh_rec", dh_rec, False), ("dh_pass", dh_pass, False),
                                   ("dc", dc, False), ("carry", carry, False),
                                   ("dweights", dweights, False), ("dbiases", dbiases, False),
                                   ("activations", activations, False)):
        _check_list(name, values, nlayers, optional)
    _check_list("output_gradients", output_gradients, nlayers - 1)
    if span < 1:
        raise ValueError(f"span must be at least 1, got {span}")
    if between[0] is not None:
        raise ValueError("between[0] must be None: the stack's input is x itself")
    work = _StackWorkspace(nlayers)
    lanes = _lanes(dtype_of)
    w2 = weights[0]
    I = w2.shape[0] - w2.shape[1] // 4
    if I < 1:
        raise ValueError(f"weights[0] must have more than H rows, got shape {_dims(w2.shape, 2)}")
    for l in range(nlayers):
        layer = &work.layers[l]
        w2 = weights[l]
        H = w2.shape[1] // 4
        G = 4 * H
        layer.I, layer.H = I, H
        layer.go_backwards = go_backwards if l == 0 else False
        layer.activation, layer.recurrent_activation = activations[l]
        layer.weights = _data(weights[l], f"weights[{l}]", (I + H, G), dtype_of)
        layer.dropout = _data(dropouts[l], f"dropouts[{l}]", (B, H), dtype_of)
        layer.dh_rec = _data(dh_rec[l], f"dh_rec[{l}]", (B, H), dtype_of)
        layer.dh_pass = _data(dh_pass[l], f"dh_pass[{l}]", (B, H), dtype_of)
        layer.dc = _data(dc[l], f"dc[{l}]", (B, H), dtype_of)
        layer.carry = _data(carry[l], f"carry[{l}]", (B, H), dtype_of)
        layer.dweights = _data(dweights[l], f"dweights[{l}]", (I + H, G), dtype_of)
        layer.dbias = _data(dbiases[l], f"dbiases[{l}]", (G,), dtype_of)
        layer.mask = _mask_data(masks[l], f"masks[{l}]", (B, T))
        layer.between = (NULL if between[l] is None
                         else _data(between[l], f"between[{l}]", (B, T, I), dtype_of))
        if l + 1 < nlayers:
            layer.grad_outputs = _data(output_gradients[l], f"output_gradients[{l}]",
                                       (B, T, H), dtype_of)
        else:
            _check_buffer("grad_outputs", _dims(grad_outputs.shape, 3), (B, T, H))
            layer.grad_outputs = <void*>&grad_outputs[0, 0, 0]
        layer.gates = _data(gates[l], f"gates[{l}]", (B, T, G), dtype_of)
        layer.states = _data(states[l], f"states[{l}]", (B, T, I + H), dtype_of)
        layer.c_prev = _data(c_prev[l], f"c_prev[{l}]", (B, T, H), dtype_of)
        layer.packed = work.allocate(_transposed_panels_size(H, G, lanes), sizeof(dtype_of[0]),
                                     "packed weights")
        if l > 0:
            layer.packed_input = work.allocate(_transposed_panels_size(I, G, lanes),
                                               sizeof(dtype_of[0]), "packed weights")
        I = H
    if dx is not None:
        _check_buffer("dx", _dims(dx.shape, 3), (B, T, work.layers[0].I))
        dx_ptr = &dx[0, 0, 0]
    threads = max(1, min(num_threads, nlayers))
    _stack_splits(work.layers, nlayers, <int>threads, True, lanes)
    ncolumns = max(1, min(num_threads, 16))
    job.layers, job.nlayers, job.B, job.T, job.span = work.layers, nlayers, B, T, span
    job.nchunks, job.ncolumns, job.dx = nchunks, ncolumns, dx_ptr
    job.double_precision = floating is double
    with nogil:
        job.part = PACK_BACKWARD
        run_blocks(_stack_block, &job, nlayers, num_threads)
        job.part = LAYERS_BACKWARD
        run_blocks(_stack_block, &job, nlayers, num_threads)
        job.part = GRADIENTS
        run_blocks(_stack_block, &job, nlayers * ncolumns + (nchunks if dx_ptr != NULL else 0),
                   num_threads)


cdef void _stack_pack_backward(_StackLayer* layer, Py_ssize_t l, floating* dtype_of) noexcept nogil:
    cdef const floating* w = <const floating*>layer.weights
    cdef Py_ssize_t G = 4 * layer.H
    _pack_transposed_panels(w + layer.I * G, layer.H, G, <floating*>layer.packed)
    if l > 0:
        _pack_transposed_panels(w, layer.I, G, <floating*>layer.packed_input)


cdef void _stack_weight_grads(_StackLayer* layer, Py_ssize_t k, Py_ssize_t ncolumns,
                              Py_ssize_t B, Py_ssize_t T, floating* dtype_of) noexcept nogil:
    cdef Py_ssize_t G = 4 * layer.H
    _weight_grads_columns(_column_start(k, ncolumns, G), _column_start(k + 1, ncolumns, G),
                          B, T, layer.I, layer.H, <const floating*>layer.states,
                          <const floating*>layer.gates, <floating*>layer.dweights,
                          <floating*>layer.dbias)
