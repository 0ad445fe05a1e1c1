"""Pipelined LSTM stacks: lstm_stack_forward / lstm_stack_backward and the
models that run their consecutive LSTM layers through them.

The pipelined call (a wavefront of layers on threads of their own, see
``fastlstm/_lstm_stack.pxi``) must give what the same layers give run one
by one: outputs, final states and every gradient, within 1e-12 (float64)
and 1e-5 (float32) of the largest entry of each array. Hypothesis draws
stacks of one to four layers of mixed sizes, with masks, initial states,
a first layer going backwards, dropout between layers, recurrent dropout,
inference and spans of steps (stack_span) from one to more than the
sequence, on every kernel build and on one, two and three threads.
"""
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import fastlstm
import fastlstm._stack
from fastlstm import _kernels
from fastlstm.layers import Bidirectional, Dense, Dropout, Embedding
from fastlstm.layers.stacking import LSTMStackCall, plan_calls
from test_fast_kernel import _HYPOTHESIS, assert_close_normwise

STACK_TOLERANCE = {np.float32: 1e-5, np.float64: 1e-12}
ACTIVATIONS = ["tanh", "sigmoid", "hard_sigmoid"]


@pytest.fixture(params=[1, 2, 3], ids=["1 thread", "2 threads", "3 threads"])
def threads(request, monkeypatch):
    """Run even these small stacks on the thread count given."""
    monkeypatch.setattr(fastlstm._plan, "PARALLEL_MIN_FLOPS", 0)
    fastlstm.set_num_threads(request.param)
    yield request.param
    fastlstm.set_num_threads(None)


def _weights(rng, inputs, units, dtype, bias):
    """Weights at the scale of Keras' initialisers, 1/sqrt(inputs + units).
    Much larger weights make the recurrence chaotic: it then amplifies the
    rounding of any change in the order of a sum (the pipelined call sums
    the input product in its own tiles) far beyond what the kernels add."""
    scale = 1 / np.sqrt(inputs + units)
    return ((rng.standard_normal((inputs, 4 * units)) * scale).astype(dtype),
            (rng.standard_normal((units, 4 * units)) * scale).astype(dtype), bias)


def _scaled_mask(rng, shape, rate, dtype):
    return ((rng.random(shape) >= rate) / (1 - rate)).astype(dtype)


@st.composite
def stacks(draw, dtype):
    """A stack, its input and what the call is given."""
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    count = draw(st.integers(1, 4))
    batch = draw(st.integers(1, 9))
    timesteps = draw(st.integers(1, 8))
    input_dim = draw(st.integers(1, 10))
    # Units around the panel widths (4 to 16 lanes) and the transposed
    # panels' (16 to 64 columns), mixed from layer to layer.
    units = [draw(st.sampled_from([1, 3, 4, 7, 8, 9, 16, 17, 33, 40, 65])) for _ in range(count)]
    training = draw(st.booleans())
    inputs = [input_dim] + units[:-1]
    layers = []
    for i, u in zip(inputs, units):
        bias = rng.standard_normal(4 * u).astype(dtype) * 0.5 if draw(st.booleans()) else None
        layers.append(_weights(rng, i, u, dtype, bias))
    x = rng.standard_normal((batch, timesteps, input_dim)).astype(dtype)
    mask = None
    if draw(st.booleans()):
        mask = rng.random((batch, timesteps)) > 0.3
        mask[0] = draw(st.sampled_from([True, False]))  # an all-kept or all-masked row
    initial = [[rng.standard_normal((batch, u)).astype(dtype) for _ in range(2)]
               if draw(st.booleans()) else None for u in units]
    between = recurrent = None
    if training and draw(st.booleans()):
        between = [_scaled_mask(rng, (batch, timesteps, i), 0.3, dtype)
                   if draw(st.booleans()) else None for i in inputs[1:]]
    if draw(st.booleans()):
        recurrent = [_scaled_mask(rng, (batch, u), 0.25, dtype) if draw(st.booleans()) else None
                     for u in units]
    activation = [draw(st.sampled_from(ACTIVATIONS)) if draw(st.integers(0, 4)) == 0 else "tanh"
                  for _ in units]
    kwargs = dict(initial_states=initial, mask=mask,
                  go_backwards=[draw(st.booleans())] + [False] * (count - 1),
                  dropout_masks=between, recurrent_dropout_masks=recurrent,
                  activation=activation, return_cache=training)
    grad_outputs = rng.standard_normal((batch, timesteps, units[-1])).astype(dtype)
    grad_states = [[rng.standard_normal((batch, u)).astype(dtype), None]
                   if draw(st.booleans()) else None for u in units]
    # The steps whose input product a pipelined layer computes at once.
    span = draw(st.integers(1, timesteps + 1))
    return x, layers, kwargs, grad_outputs, grad_states, draw(st.booleans()), span


def _check_pipelined_matches_layers(problem, dtype):
    x, layers, kwargs, grad_outputs, grad_states, input_gradient, span = problem
    tol = STACK_TOLERANCE[dtype]
    copies = [a.copy() for a in (x, grad_outputs)]
    rule = fastlstm._plan.stack_span
    fastlstm._plan.stack_span = lambda batch, timesteps: span
    try:
        out_p, states_p, cache_p = fastlstm.lstm_stack_forward(x, layers, pipelined=True,
                                                               **kwargs)
        if cache_p is not None:
            grads_p = fastlstm.lstm_stack_backward(cache_p, grad_outputs, grad_states,
                                                   input_gradient)
    finally:
        fastlstm._plan.stack_span = rule
    out_l, states_l, cache_l = fastlstm.lstm_stack_forward(x, layers, pipelined=False, **kwargs)
    assert (cache_p is None) == (not kwargs["return_cache"])
    assert_close_normwise(out_p, out_l, tol, "outputs")
    for i, (pair_p, pair_l) in enumerate(zip(states_p, states_l)):
        for name, a, b in zip("hc", pair_p, pair_l):
            assert_close_normwise(a, b, tol, f"layer {i} {name}")
    if cache_p is not None:
        assert cache_p.pipelined and not cache_l.pipelined
        grads_l = fastlstm.lstm_stack_backward(cache_l, grad_outputs, grad_states, input_gradient)
        if input_gradient:
            assert_close_normwise(grads_p.x, grads_l.x, tol, "x")
        else:
            assert grads_p.x is None and grads_l.x is None
        for i, (gp, gl) in enumerate(zip(grads_p.layers, grads_l.layers)):
            assert gp.x is None and gl.x is None
            for name in ("kernel", "recurrent_kernel", "bias", "h0", "c0"):
                a, b = getattr(gp, name), getattr(gl, name)
                if b is None:
                    assert a is None, f"layer {i} {name}"
                else:
                    assert_close_normwise(a, b, tol, f"layer {i} {name}")
    np.testing.assert_array_equal(copies[0], x)
    np.testing.assert_array_equal(copies[1], grad_outputs)


@_HYPOTHESIS
@given(problem=stacks(np.float64))
def test_pipelined_stack_matches_layers_float64(kernel_build, threads, problem):
    _check_pipelined_matches_layers(problem, np.float64)


@_HYPOTHESIS
@given(problem=stacks(np.float32))
def test_pipelined_stack_matches_layers_float32(kernel_build, threads, problem):
    _check_pipelined_matches_layers(problem, np.float32)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_pipelined_stack_matches_the_reference(kernel_build, threads, dtype):
    """Beyond agreeing with the fast layers one by one: the NumPy oracle,
    on a stack large enough for hoisted input products and several tiles."""
    rng = np.random.default_rng(5)
    batch, timesteps, input_dim, units = 13, 9, 24, [40, 70, 33]
    layers = [_weights(rng, i, u, dtype, rng.standard_normal(4 * u).astype(dtype) * 0.1)
              for i, u in zip([input_dim] + units[:-1], units)]
    x = rng.standard_normal((batch, timesteps, input_dim)).astype(dtype)
    mask = rng.random((batch, timesteps)) > 0.2
    between = [_scaled_mask(rng, (batch, timesteps, u), 0.2, dtype) for u in units[:-1]]
    kwargs = dict(mask=mask, dropout_masks=between, go_backwards=[True, False, False])
    out, states, cache = fastlstm.lstm_stack_forward(x, layers, pipelined=True, **kwargs)
    ref_out, ref_states, ref_cache = fastlstm.lstm_stack_forward(x, layers, backend="reference",
                                                                 **kwargs)
    tol = {np.float32: 1e-4, np.float64: 1e-10}[dtype]
    assert_close_normwise(out, ref_out, tol, "outputs")
    grad_outputs = rng.standard_normal(out.shape).astype(dtype)
    grads = fastlstm.lstm_stack_backward(cache, grad_outputs)
    ref = fastlstm.lstm_stack_backward(ref_cache, grad_outputs)
    assert_close_normwise(grads.x, ref.x, tol, "x")
    for i, (g, r) in enumerate(zip(grads.layers, ref.layers)):
        for name in ("kernel", "recurrent_kernel", "bias", "h0", "c0"):
            assert_close_normwise(getattr(g, name), getattr(r, name), tol, f"layer {i} {name}")


# -- the rule and the arguments ------------------------------------------------

def test_the_rule_pipelines_small_batches_on_several_threads(monkeypatch):
    monkeypatch.setattr(fastlstm._plan, "PARALLEL_MIN_FLOPS", 0)
    rows = fastlstm._plan.PIPELINE_MAX_ROWS_PER_THREAD
    rule = fastlstm._plan.pipeline_stack
    fastlstm.set_num_threads(2)
    try:
        widest = fastlstm._plan.PIPELINE_MAX_UNITS
        assert rule(2 * rows, 10, 8, [16, widest])
        assert not rule(2 * rows, 10, 8, [16, widest + 1])  # split by units instead
        assert rule(1, 10, 8, [16, 16, 16])
        assert not rule(2 * rows + 1, 10, 8, [16, 16])
        assert not rule(1, 10, 8, [16])  # one layer
        fastlstm.set_num_threads(3)
        assert rule(3 * rows, 10, 8, [16, 16])
        fastlstm.set_num_threads(1)
        assert not rule(1, 10, 8, [16, 16])
    finally:
        fastlstm.set_num_threads(None)
    # Under the small-call threshold a call runs on one thread: as today.
    monkeypatch.setattr(fastlstm._plan, "PARALLEL_MIN_FLOPS", 10**12)
    assert not rule(1, 10, 8, [16, 16])


def test_spans_give_each_panel_enough_rows():
    span = fastlstm._plan.stack_span
    assert span(64, 100) == 1
    assert span(1, 100) == fastlstm._plan.SPAN_ROWS
    assert span(1, 5) == 5
    assert span(3, 100) * 3 >= fastlstm._plan.SPAN_ROWS > (span(3, 100) - 1) * 3


def _two_layers(dtype=np.float64):
    rng = np.random.default_rng(0)
    return [(rng.standard_normal((3, 16)).astype(dtype), rng.standard_normal((4, 16)).astype(dtype),
             None),
            (rng.standard_normal((4, 8)).astype(dtype), rng.standard_normal((2, 8)).astype(dtype),
             np.zeros(8, dtype))]


@pytest.mark.parametrize("change, error, match", [
    (dict(layers=[]), ValueError, "layers must be a non-empty list"),
    (dict(layers=[(np.zeros((3, 16)),)]), ValueError, r"layers\[0\] must be \(kernel"),
    (dict(layers=[(np.zeros((3, 16)), np.zeros((4, 16)), None),
                  (np.zeros((5, 8)), np.zeros((2, 8)), None)]),
     ValueError, r"layers\[1\]'s kernel has 5 rows, but the layer below has units=4"),
    (dict(layers=[(np.zeros((3, 16)), np.zeros((4, 16)), None),
                  (np.zeros((4, 8), np.float32), np.zeros((2, 8), np.float32), None)]),
     TypeError, r"layers\[1\] has dtype float32"),
    (dict(layers=[(np.zeros((3, 16)), np.zeros((5, 16)), None)]),
     ValueError, r"layers\[0\]: recurrent_kernel"),
    (dict(x=np.zeros((2, 5, 4))), ValueError, r"x must have 3 features \(last axis\), layers\[0\]"),
    (dict(x=np.zeros((2, 5))), ValueError, r"x must have shape \(batch, timesteps, features\)"),
    (dict(mask=np.ones((2, 4), bool)), ValueError, "mask"),
    (dict(mask=np.ones((2, 5))), TypeError, "mask must be boolean"),
    (dict(go_backwards=[True]), ValueError, "go_backwards must be one value for every layer"),
    (dict(initial_states=[None]), ValueError, "initial_states must be None or a list of 2"),
    (dict(initial_states=[None, [np.zeros((2, 3)), np.zeros((2, 2))]]), ValueError,
     r"initial_states\[1\]\[0\]"),
    (dict(dropout_masks=[np.ones((2, 5, 3))]), ValueError, r"dropout_masks\[0\]"),
    (dict(recurrent_dropout_masks=[None, np.ones((2, 3))]), ValueError,
     r"recurrent_dropout_masks\[1\]"),
    (dict(activation="relu"), ValueError, "activation"),
    (dict(pipelined=True, go_backwards=[False, True]), ValueError,
     "cannot run pipelined: a layer above the first goes backwards"),
    (dict(pipelined=True, backend="reference"), ValueError, "only the fast backend"),
    (dict(pipelined=True, return_cache=False, dropout_masks=[np.ones((2, 5, 4))]), ValueError,
     "dropout_masks are for training"),
    (dict(backend="slow"), ValueError, "backend must be one of"),
])
def test_bad_arguments_are_named(change, error, match):
    arguments = dict(x=np.zeros((2, 5, 3)), layers=_two_layers())
    arguments.update(change)
    with pytest.raises(error, match=match):
        fastlstm.lstm_stack_forward(**arguments)


@pytest.mark.parametrize("pipelined", [False, True])
def test_backward_arguments_and_a_used_cache(pipelined):
    x = np.random.default_rng(1).standard_normal((2, 5, 3))
    _, _, cache = fastlstm.lstm_stack_forward(x, _two_layers(), pipelined=pipelined)
    with pytest.raises(ValueError, match="grad_outputs"):
        fastlstm.lstm_stack_backward(cache, np.zeros((2, 5, 4)))
    with pytest.raises(ValueError, match=r"grad_states\[0\]\[1\]"):
        fastlstm.lstm_stack_backward(cache, None, [[None, np.zeros((2, 5))], None])
    with pytest.raises(ValueError, match="grad_states must be None or a list of 2"):
        fastlstm.lstm_stack_backward(cache, None, [None])
    grads = fastlstm.lstm_stack_backward(cache, None, input_gradient=False)
    assert grads.x is None and len(grads.layers) == 2 and grads.layers[0].bias is None
    with pytest.raises(RuntimeError, match="already used"):
        fastlstm.lstm_stack_backward(cache)
    with pytest.raises(TypeError, match="LSTMStackCache"):
        fastlstm.lstm_stack_backward(object())
    _, _, none = fastlstm.lstm_stack_forward(x, _two_layers(), return_cache=False)
    with pytest.raises(RuntimeError, match="return_cache=True"):
        fastlstm.lstm_stack_backward(none)


def test_the_kernel_entry_checks_every_buffer():
    """The entry points trust nothing they index: a buffer of the wrong
    shape is refused with its name, not read past its end."""
    kernels = _kernels.current()
    B, T, I, H = 2, 3, 4, 5
    f = np.float64

    def buffers():
        return dict(weights=[np.zeros((I + H, 4 * H)), np.zeros((2 * H, 4 * H))],
                    biases=[np.zeros(4 * H)] * 2, masks=[None, None],
                    dropouts=[np.ones((B, H))] * 2, between=[None, None],
                    outputs=[np.zeros((B, T, H)) for _ in range(2)],
                    h=[np.zeros((B, H)) for _ in range(2)],
                    c=[np.zeros((B, H)) for _ in range(2)],
                    gates=[np.zeros((B, T, 4 * H)) for _ in range(2)],
                    states=[np.zeros((B, T, I + H)), np.zeros((B, T, 2 * H))],
                    c_prev=[np.zeros((B, T, H)) for _ in range(2)],
                    h_last=[np.zeros((B, H)) for _ in range(2)])

    def run(b, packed=None):
        kernels.stack_forward(np.zeros((B, T, I), f), b["weights"], b["biases"], b["masks"],
                              b["dropouts"], b["between"], False, b["outputs"], b["h"], b["c"],
                              b["gates"], b["states"], b["c_prev"], b["h_last"], True, True,
                              [(0, 1), (0, 1)], 2, 2, packed=packed)

    run(buffers())

    def panels(depth, extra=0):
        size = kernels.gate_panels_size(depth, H, 8) + extra
        raw = np.empty(size + 8)
        start = (-raw.ctypes.data % 64) // 8
        return raw[start:start + size]

    run(buffers(), [None, (panels(H), panels(H))])
    for packed, match in [([None, (panels(H, 1), panels(H))], r"packed\[1\]\[0\]: packed must"),
                          ([None, (panels(H), panels(H + 1))], r"packed\[1\]\[1\]: packed must"),
                          ([None], r"packed must have one entry per layer")]:
        with pytest.raises(ValueError, match=match):
            run(buffers(), packed)
    for name, index, wrong in [("outputs", 1, np.zeros((B, T, H + 1))),
                               ("states", 1, np.zeros((B, T, I + H))),
                               ("gates", 0, np.zeros((B, T - 1, 4 * H))),
                               ("weights", 1, np.zeros((I + H, 4 * H))),
                               ("dropouts", 1, np.ones((B, H + 1))),
                               ("masks", 0, np.ones((B, T + 1), np.uint8))]:
        b = buffers()
        b[name][index] = wrong
        with pytest.raises(ValueError, match=rf"{name}\[{index}\] must have shape"):
            run(b)
    b = buffers()
    b["between"][1] = np.ones((B, T, H))
    run(b)
    b["between"][0] = np.ones((B, T, I))
    with pytest.raises(ValueError, match=r"between\[0\] must be None"):
        run(b)


# -- models ----------------------------------------------------------------------

def _char_model(dtype="float64", last_sequences=True, dropout=0.3):
    return fastlstm.Sequential([
        Embedding(20, 8, mask_zero=True, seed=1, dtype=dtype),
        fastlstm.LSTM(16, return_sequences=True, dropout=0.1, recurrent_dropout=0.2, seed=2,
                      dtype=dtype),
        Dropout(dropout, seed=3, dtype=dtype),
        fastlstm.LSTM(12, return_sequences=True, dropout=0.2, seed=4, dtype=dtype),
        fastlstm.LSTM(10, return_sequences=last_sequences, seed=5, dtype=dtype),
        Dense(5, seed=6, dtype=dtype)], seed=0)


def test_the_plan_groups_consecutive_lstm_layers():
    L = fastlstm.LSTM
    model = _char_model()
    kinds = [(first, last, type(call).__name__) for first, last, call in plan_calls(model.layers)]
    assert kinds == [(0, 0, "Embedding"), (1, 4, "LSTMStackCall"), (5, 5, "Dense")]
    layers = [L(4, return_sequences=True), L(4, return_sequences=True, go_backwards=True),
              L(4, return_sequences=True), L(4), Dropout(0.1), Dense(2)]
    # A layer going backwards starts a new stack: its first step reads the last input.
    assert [(f, t) for f, t, _ in plan_calls(layers)] == [(0, 0), (1, 3), (4, 4), (5, 5)]
    layers = [L(4, return_sequences=True, stateful=True), L(4, return_sequences=True),
              Dropout(0.1), Dropout(0.1), L(4), L(3)]
    assert all(not isinstance(c, LSTMStackCall) for _, _, c in plan_calls(layers))
    layers = [Bidirectional(L(4, return_sequences=True)), L(4, return_sequences=True),
              L(4, return_sequences=True, dtype="float64"), L(4, dtype="float64")]
    plan = plan_calls(layers)
    assert [(f, t) for f, t, _ in plan] == [(0, 0), (1, 1), (2, 3)]


@pytest.mark.parametrize("last_sequences", [True, False])
def test_a_pipelined_model_trains_as_its_layers_one_by_one(monkeypatch, last_sequences):
    """fit, with an Embedding's mask, dropout before and between the LSTM
    layers and recurrent dropout, gives the same history, weights and
    predictions whether the stack runs pipelined (forced, on two threads)
    or layer by layer."""
    monkeypatch.setattr(fastlstm._plan, "PARALLEL_MIN_FLOPS", 0)
    rng = np.random.default_rng(1)
    x = rng.integers(1, 20, (12, 9))
    x[:, -3:] = 0
    x[0] = 0  # a sequence with no kept step
    y = rng.integers(0, 5, (12, 9) if last_sequences else (12,))
    results = []
    fastlstm.set_num_threads(2)
    try:
        for pipelined in (False, True):
            monkeypatch.setattr(fastlstm._plan, "pipeline_stack", lambda *a, p=pipelined: p)
            model = _char_model(last_sequences=last_sequences)
            model.compile(optimizer="adam",
                          loss=fastlstm.losses.SparseCategoricalCrossentropy(from_logits=True))
            history = model.fit(x, y, epochs=3, batch_size=6, verbose=0)
            assert model._calls[1][2]._pipelined is pipelined
            results.append((history.history["loss"], model.get_weights(),
                            model.predict(x, verbose=0)))
    finally:
        fastlstm.set_num_threads(None)
    (loss_l, weights_l, pred_l), (loss_p, weights_p, pred_p) = results
    np.testing.assert_allclose(loss_p, loss_l, rtol=1e-12)
    for a, b in zip(weights_p, weights_l):
        assert_close_normwise(a, b, 1e-12)
    assert_close_normwise(pred_p, pred_l, 1e-12)


def test_a_frozen_first_lstm_in_a_pipelined_stack_keeps_its_weights(monkeypatch):
    monkeypatch.setattr(fastlstm._plan, "pipeline_stack", lambda *a: True)
    rng = np.random.default_rng(2)
    x, y = rng.integers(1, 20, (8, 6)), rng.integers(0, 5, (8, 6))
    model = _char_model()
    model.layers[1].trainable = False
    model.compile(optimizer="sgd",
                  loss=fastlstm.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.build((None, 6))
    before = [w.copy() for w in model.layers[1].get_weights()]
    embedding = model.layers[0].get_weights()[0].copy()
    others = model.layers[3].get_weights()[0].copy()
    model.fit(x, y, epochs=2, batch_size=4, verbose=0)
    for a, b in zip(model.layers[1].get_weights(), before):
        np.testing.assert_array_equal(a, b)
    # The Embedding below the frozen layer trains on, as Keras.
    assert not np.array_equal(model.layers[0].get_weights()[0], embedding)
    assert not np.array_equal(model.layers[3].get_weights()[0], others)


def test_a_member_layer_points_to_the_models_backward(monkeypatch):
    monkeypatch.setattr(fastlstm._plan, "pipeline_stack", lambda *a: True)
    model = _char_model()
    x = np.random.default_rng(3).integers(1, 20, (4, 6))
    out = model(x, training=True)
    with pytest.raises(RuntimeError, match="pipelined stack"):
        model.layers[3].backward(np.zeros((4, 6, 12)))
    dx = model.backward(np.ones_like(out))
    assert dx is None  # an Embedding is first
    assert set(model.layers[4].grads) == {"kernel", "recurrent_kernel", "bias"}
    with fastlstm.no_grad():
        model(x)
    with pytest.raises(RuntimeError, match="no_grad"):
        model.backward(np.ones_like(out))


def test_concurrent_pipelined_calls_give_the_serial_results(monkeypatch):
    """Pipelined calls from several Python threads at once (each an OpenMP
    team of its own, more threads than cores) finish, with the results of
    the same calls made one after another."""
    import threading

    monkeypatch.setattr(fastlstm._plan, "PARALLEL_MIN_FLOPS", 0)
    rng = np.random.default_rng(11)
    layers = [_weights(rng, i, u, np.float32, None) for i, u in ((6, 20), (20, 33), (33, 9))]
    inputs = [rng.standard_normal((3, 12, 6)).astype(np.float32) for _ in range(4)]

    def run(x):
        outputs, _, cache = fastlstm.lstm_stack_forward(x, layers, pipelined=True)
        grads = fastlstm.lstm_stack_backward(cache, np.ones_like(outputs))
        return [outputs, grads.x] + [g.kernel for g in grads.layers]

    fastlstm.set_num_threads(2)
    try:
        serial = [run(x) for x in inputs]
        results = [None] * len(inputs)

        def worker(k):
            for _ in range(5):
                results[k] = run(inputs[k])

        threads = [threading.Thread(target=worker, args=(k,)) for k in range(len(inputs))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=120)
        assert not any(thread.is_alive() for thread in threads)
    finally:
        fastlstm.set_num_threads(None)
    for expected, got in zip(serial, results):
        for a, b in zip(expected, got):
            np.testing.assert_array_equal(a, b)
