"""``python -m fastlstm bench``: fastlstm against its peers, side by side.

For each size of :data:`fastlstm.tools.sizes.SIZES` this
measures, in one process and on the same inputs and weights, the median time
of a training step (forward over the whole sequence returning every output,
then backward of ``sum(outputs)`` to the input and all weights) and of
inference (forward only, no cache) for fastlstm, its NumPy reference and,
when they are importable, PyTorch and ONNX Runtime (inference only).

Absolute times drift from run to run on a shared machine, so the calls are
interleaved: the implementations take turns, each timing a few calls in a
row (the steady state of a training loop), and noise hits all of them
alike. Only the ratios of one run mean something. Libraries leave their
worker threads spinning on the cores for a while after a call (fastlstm's
and PyTorch's OpenMP threads for milliseconds, NumPy's OpenBLAS threads
after the reference for about 0.15 s), so the run pauses after each turn
and starts each turn with an untimed call: no library is timed while
another's threads hold its cores. Before each size a large matrix product
measures the rate the machine delivers that day, against which the
training step is also reported. Before timing a size, every peer's results
are compared with fastlstm's, and a peer that disagrees is reported and not
timed: the benchmark never times a wrong computation.
"""
import gc
import json
import platform
import statistics
import sys
import time
from collections import namedtuple
from functools import partial

import numpy as np

from .. import _config, _kernels, convert
from .._onnx import IR_VERSION, OPSET, lstm_weights
from .._packed import PackedLSTM
from .._version import __version__
from ..functional import lstm_backward, lstm_forward, matmul
from .sizes import SIZES

__all__ = [
    "GENERATION_STEPS",
    "cpu_model",
    "training_flops",
    "ceiling_ms",
    "sgemm_gflops",
    "interleaved_medians",
    "torch_lstm",
    "onnx_lstm_model",
    "run",
]

# Generation: the "one" layer, stateful, fed one step at a time, as sampling
# text feeds a model its own last output.
GENERATION_STEPS = 200
GENERATION_SIZE = "one"

# Default timed calls of each implementation per size: a full run with
# PyTorch, ONNX Runtime and the reference takes two to three minutes on
# a 2-core machine. The small sizes get many calls because a call
# takes under a millisecond there and the median of few such calls is noisy.
DEFAULT_ROUNDS = {"tiny": 400, "small": 150, "medium": 40, "large": 30, "long": 60,
                  "one": 200, "few": 150}
# The NumPy reference is slow at the larger sizes and only gives the
# speed-up ratio, so it is timed fewer times, in turns spread evenly among
# the others'.
REFERENCE_ROUNDS = {"tiny": 50, "small": 20, "medium": 5, "large": 5, "long": 5,
                    "one": 20, "few": 20}

# Calls timed in a row per turn (see interleaved_medians): about 5 to 20 ms of
# work, so that each library runs in the steady state of a training loop.
BURST = {"tiny": 20, "small": 10, "medium": 2, "large": 2, "long": 4, "one": 10, "few": 10}
# The pause after each turn: libraries leave their worker threads spinning
# on the cores for milliseconds after a call, and a library timed in that
# window competes with them (docs/performance.rst, "How it was measured",
# gives what was measured).
PAUSE_SECONDS = 0.02
# The pause after the NumPy reference's turns: NumPy's own OpenBLAS threads
# keep spinning for OpenBLAS's thread timeout (2**28 cycles, about 0.15 s).
REFERENCE_SETTLE_SECONDS = 0.3

# A 2-core AVX-512 machine's sgemm ceiling, measured once with OpenBLAS's
# AVX-512 kernels on 2 threads. It is a float32 figure; no float64 one is given.
CEILING_FLOPS = 375e9

# Agreement required before timing: max |peer - fastlstm| / max |fastlstm|,
# per array. float32 LSTMs of different implementations differ by rounding
# only, far below these bounds; a wrong weight layout or gate order misses
# them by orders of magnitude.
TOLERANCE = {np.dtype(np.float32): 1e-3, np.dtype(np.float64): 1e-8}

# The targets, checked in the printed table: a training step at most this
# fraction of PyTorch's time (no target for the sizes left out); at most this
# multiple of the time its FLOPs take at the run's own 2048^3 sgemm rate; and
# inference at most this fraction of the faster peer's time. In generation, a
# stateful layer at most TARGET_GENERATION_VS_TORCH of PyTorch's time, and the
# layer's one-step cell at most TARGET_CELL_VS_ORT of ONNX Runtime's.
TARGET_TRAIN_VS_TORCH = {"tiny": 0.67, "small": 0.67, "medium": 0.67, "long": 0.67,
                         "large": 0.85}
TARGET_VS_SGEMM = {"medium": 1.3, "large": 1.3}
TARGET_INFER_VS_PEERS = 0.8
TARGET_GENERATION_VS_TORCH = 0.5
TARGET_CELL_VS_ORT = 0.8

_GRAD_NAMES = ("x", "kernel", "recurrent_kernel", "bias")

Implementation = namedtuple("Implementation",
                            ["name", "train", "infer", "check_train", "check_infer"])
Implementation.__doc__ = """One implementation under test.

``train`` and ``infer`` are the timed calls, None where the implementation
does not offer one. ``check_train`` and ``check_infer`` run the same
computations for the check before timing and return NumPy arrays in
fastlstm's layout: ``check_train`` a dict of the outputs and gradients,
named ``"outputs"`` and as in :class:`fastlstm.LSTMGradients`;
``check_infer`` the outputs, (batch, timesteps, units)."""


def training_flops(batch, timesteps, input_dim, units):
    """Floating-point operations of one training step, as docs/performance.rst counts them.

    Parameters
    ----------
    batch, timesteps, input_dim, units : int

    Returns
    -------
    int
        ``24 * B * T * H * (I + H)``: the GEMMs of the forward pass (2 flops
        per multiply-add over 4H gate columns) and the two of the backward
        pass (input and weight gradients), each as large.
    """
    return 24 * batch * timesteps * units * (input_dim + units)


def ceiling_ms(batch, timesteps, input_dim, units):
    """The time of a float32 training step at the machine's sgemm ceiling, in ms."""
    return training_flops(batch, timesteps, input_dim, units) / CEILING_FLOPS * 1e3


def sgemm_gflops(threads, size=2048, repeat=7):
    """The float32 matrix-product rate of this machine, as this run finds it.

    CEILING_FLOPS is a figure measured once; what a shared machine
    delivers drifts. This is the best rate of ``repeat`` products of
    ``size`` × ``size`` matrices through fastlstm's BLAS (SciPy's OpenBLAS,
    with the core type fastlstm chose) running ``threads`` threads of its
    own: other work on the machine only ever lowers the rate, so the best
    is the fairest estimate of the ceiling.

    Returns
    -------
    float
        GFLOP/s.
    """
    rng = np.random.default_rng(0)
    a = rng.standard_normal((size, size)).astype(np.float32)
    b = rng.standard_normal((size, size)).astype(np.float32)
    c = np.empty((size, size), np.float32)
    handles = _config._openblas()
    saved = handles["get_num_threads"]() if handles else None
    if handles:
        handles["set_num_threads"](threads)
    try:
        matmul(a, b, out=c, single_threaded=False)  # warm-up
        times = []
        for _ in range(repeat):
            start = time.perf_counter()
            matmul(a, b, out=c, single_threaded=False)
            times.append(time.perf_counter() - start)
    finally:
        if handles:
            handles["set_num_threads"](saved)
    return 2 * size**3 / min(times) / 1e9


def interleaved_medians(calls, rounds, burst=1, pause=0.0, settle=None, before=None):
    """Median wall time of each call, timed in interleaved turns.

    Parameters
    ----------
    calls : dict of str to callable
        The calls to time, each without arguments. They take turns, in order.
    rounds : dict of str to int
        How many times to time each call. The call with the most turns has
        one in every round; one with fewer has its turns in rounds spread
        evenly over the run, so that drifts of the machine's speed reach it
        too.
    burst : int
        Calls timed in a row in each turn: a library's threads and caches
        are then in the steady state of a loop that calls it repeatedly.
    pause : float
        Seconds to wait after each turn, so that threads the call left
        spinning on the cores (OpenMP's and OpenBLAS's worker threads spin
        for milliseconds after a parallel section) have gone idle before the
        next call's turn, and no library is timed while another one's
        threads take its cores. With a pause, each turn starts with one
        untimed call, which wakes the call's own threads.
    settle : dict of str to float, optional
        A longer pause after the turns of these calls.
    before : dict of str to callable, optional
        An untimed call without arguments made before each turn (and the
        warm-up) of these calls: a setting of their own, such as a thread
        count.

    Returns
    -------
    medians : dict of str to float
        Median time of each call, in milliseconds.
    times : dict of str to list of float
        Every time measured, in milliseconds, in order.
    """
    settle = dict(settle or {})
    before = dict(before or {})
    for name, call in calls.items():
        before.get(name, _nothing)()
        call()  # warm-up: first-call allocations, lazy imports, JIT kernels
    turns = {name: -(-rounds[name] // burst) for name in calls}
    total = max(turns.values())
    times = {name: [] for name in calls}
    # The collector would stop whichever call happened to trigger it; as in
    # timeit, it is kept out of the measurement.
    gc.collect()
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        for step in range(total):
            for name, call in calls.items():
                # True in exactly turns[name] of the total rounds, evenly spaced.
                if (step * turns[name]) // total == ((step + 1) * turns[name]) // total:
                    continue
                wait = settle.get(name, pause)
                before.get(name, _nothing)()
                if pause or settle:
                    call()  # untimed: the threads wake up after the last pause
                for _ in range(min(burst, rounds[name] - len(times[name]))):
                    start = time.perf_counter()
                    call()
                    times[name].append((time.perf_counter() - start) * 1e3)
                if wait:
                    time.sleep(wait)
    finally:
        if gc_was_enabled:
            gc.enable()
    medians = {name: statistics.median(values) for name, values in times.items()}
    return medians, times


def _nothing():
    pass


def _inputs(batch, timesteps, input_dim, units, dtype, seed=0):
    """Inputs and weights of one size; the scales keep the gates out of
    saturation, so no implementation gets an easy (all-saturated) problem."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((batch, timesteps, input_dim)).astype(dtype)
    kernel = (rng.standard_normal((input_dim, 4 * units)) / np.sqrt(input_dim)).astype(dtype)
    recurrent_kernel = (rng.standard_normal((units, 4 * units)) / np.sqrt(units)).astype(dtype)
    bias = (0.1 * rng.standard_normal(4 * units)).astype(dtype)
    return x, kernel, recurrent_kernel, bias


def _first(lstm, x):
    """The outputs of ``lstm(x)``."""
    return lstm(x)[0]


def _fastlstm(name, backend, x, kernel, recurrent_kernel, bias):
    grad_outputs = np.ones((x.shape[0], x.shape[1], recurrent_kernel.shape[0]), x.dtype)

    def train():
        outputs, _, _, cache = lstm_forward(x, kernel, recurrent_kernel, bias, backend=backend)
        return outputs, lstm_backward(cache, grad_outputs=grad_outputs)

    if backend == "fast":
        # Served weights, as the peers' sessions and modules hold theirs:
        # checked, copied and packed once, with lstm_forward's results.
        infer = partial(_first, PackedLSTM(kernel, recurrent_kernel, bias), x)
    else:
        def infer():
            return lstm_forward(x, kernel, recurrent_kernel, bias, return_cache=False,
                                backend=backend)[0]

    def check_train():
        outputs, grads = train()
        return dict(outputs=outputs, **{key: getattr(grads, key) for key in _GRAD_NAMES})

    return Implementation(name, train, infer, check_train, infer)


# PyTorch


def torch_lstm(kernel, recurrent_kernel, bias):
    """A ``torch.nn.LSTM(input_dim, units, batch_first=True)`` computing
    what fastlstm computes with these weights (mapped by
    :func:`fastlstm.convert.to_torch_state_dict`)."""
    import torch

    input_dim, units = kernel.shape[0], recurrent_kernel.shape[0]
    dtype = {np.dtype(np.float32): torch.float32, np.dtype(np.float64): torch.float64}[kernel.dtype]
    lstm = torch.nn.LSTM(input_dim, units, batch_first=True, dtype=dtype)
    with torch.no_grad():
        state_dict = convert.to_torch_state_dict([[kernel, recurrent_kernel, bias]])
        for name, value in state_dict.items():
            getattr(lstm, name).copy_(torch.from_numpy(value))
    return lstm


def _torch(x, kernel, recurrent_kernel, bias):
    import torch

    lstm = torch_lstm(kernel, recurrent_kernel, bias)
    x_train = torch.from_numpy(x).requires_grad_(True)
    x_infer = torch.from_numpy(x)

    def train():
        # Fresh gradient tensors each step, as fastlstm allocates its own.
        lstm.zero_grad(set_to_none=True)
        x_train.grad = None
        outputs, _ = lstm(x_train)
        outputs.sum().backward()

    def infer():
        with torch.inference_mode():
            return lstm(x_infer)[0]

    def check_train():
        lstm.zero_grad(set_to_none=True)
        x_train.grad = None
        outputs, _ = lstm(x_train)
        outputs.sum().backward()
        return {
            "outputs": outputs.detach().numpy(),
            "x": x_train.grad.numpy(),
            "kernel": lstm.weight_ih_l0.grad.numpy().T,
            "recurrent_kernel": lstm.weight_hh_l0.grad.numpy().T,
            "bias": lstm.bias_ih_l0.grad.numpy(),
        }

    return Implementation("torch", train, infer, check_train, lambda: infer().numpy())


def _generation_calls(x, kernel, recurrent_kernel, bias, threads, peers):
    """The ways of generating, each a call that feeds ``x`` (batch, steps,
    input_dim) one step per call, from zero states, and returns the outputs
    (batch, steps, units) in the implementation's own type; and notes on the
    ways left out."""
    from ..layers import LSTM, no_grad
    from ..models import Sequential

    steps, units = x.shape[1], recurrent_kernel.shape[0]
    dtype = np.dtype(kernel.dtype).name
    layers = []
    for _ in range(2):
        layer = LSTM(units, return_sequences=True, stateful=True, dtype=dtype)
        layer.build(x.shape[2])
        layer.set_weights([kernel, recurrent_kernel, bias])
        layers.append(layer)
    layer, model = layers[0], Sequential([layers[1]])

    def layer_calls():
        # Inference, as PyTorch's calls below: a call that records for
        # backward keeps a copy of the weights with each step.
        layer.reset_state()
        with no_grad():
            return np.concatenate([layer(x[:, t:t + 1]) for t in range(steps)], axis=1)

    def model_calls():
        model.layers[0].reset_state()
        return np.concatenate([model.predict_on_batch(x[:, t:t + 1]) for t in range(steps)],
                              axis=1)

    def cell_calls():
        h = np.zeros((x.shape[0], units), kernel.dtype)
        state = [h, np.zeros_like(h)]
        outputs = []
        for t in range(steps):
            h, state = layer.cell(x[:, t], state)
            outputs.append(h)
        return np.stack(outputs, axis=1)

    calls = {"layer": layer_calls, "model": model_calls, "cell": cell_calls}
    notes = []
    if "torch" in peers:
        import torch

        lstm = torch_lstm(kernel, recurrent_kernel, bias)
        x_tensor = torch.from_numpy(x)

        def torch_calls():
            with torch.inference_mode():
                state, outputs = None, []
                for t in range(steps):
                    output, state = lstm(x_tensor[:, t:t + 1], state)
                    outputs.append(output)
                return torch.cat(outputs, dim=1)

        calls["torch"] = torch_calls
    if "onnxruntime" in peers:
        try:
            session = _onnx_session(onnx_lstm_model(kernel, recurrent_kernel, bias,
                                                    with_state=True), threads)
        except Exception as error:  # a peer that cannot load the model is left out, not fatal
            notes.append(_cannot_load(error))
            return calls, notes
        # Time-major steps (1, batch, input_dim), cut once outside the timing.
        x_steps = [np.ascontiguousarray(x[:, t][None]) for t in range(steps)]
        zeros = np.zeros((1, x.shape[0], units), kernel.dtype)

        def onnxruntime_calls():
            h, c = zeros, zeros
            outputs = []
            for x_t in x_steps:
                h, c = session.run(["Y_h", "Y_c"], {"X": x_t, "initial_h": h, "initial_c": c})
                outputs.append(h[0])
            return np.stack(outputs, axis=1)

        calls["onnxruntime"] = onnxruntime_calls
    return calls, notes


def _generation(dtype, threads, peers, rounds, burst):
    """Verify, then time, text generation: the GENERATION_SIZE layer fed
    GENERATION_STEPS steps one call at a time, its state carried from call to
    call: a stateful :class:`fastlstm.LSTM`, ``predict_on_batch`` of a stateful
    :class:`fastlstm.Sequential`, the layer's one-step ``cell``, PyTorch's
    ``nn.LSTM`` with ``hx`` carried and an ONNX Runtime session fed its
    states back. Each must give the outputs of one forward pass over the
    whole sequence before it is timed."""
    batch, _, input_dim, units = SIZES[GENERATION_SIZE]
    x, kernel, recurrent_kernel, bias = _inputs(batch, GENERATION_STEPS, input_dim, units, dtype)
    expected = {"outputs": lstm_forward(x, kernel, recurrent_kernel, bias,
                                        return_cache=False)[0]}
    candidates, notes = _generation_calls(x, kernel, recurrent_kernel, bias, threads, peers)
    calls, errors = {}, []
    for name, call in candidates.items():
        outputs = call()
        bad = _mismatch({"outputs": outputs if isinstance(outputs, np.ndarray)
                         else outputs.numpy()}, expected, np.dtype(dtype))
        if bad:
            errors.append(f"{GENERATION_LABELS[name]}'s generation disagrees with fastlstm's "
                          f"forward pass: {'; '.join(bad)}")
        else:
            calls[name] = call
    medians, times = (interleaved_medians(calls, dict.fromkeys(calls, rounds), burst,
                                          PAUSE_SECONDS) if calls else ({}, {}))
    return {
        "shape": {"batch": batch, "steps": GENERATION_STEPS, "input_dim": input_dim,
                  "units": units},
        "rounds": rounds,
        "median_ms": medians,
        "times_ms": times,
        "ratios": {
            "layer_over_torch": _ratio(medians.get("layer"), medians.get("torch")),
            "model_over_torch": _ratio(medians.get("model"), medians.get("torch")),
            "cell_over_onnxruntime": _ratio(medians.get("cell"), medians.get("onnxruntime")),
        },
        "notes": notes,
        "errors": errors,
    }


GENERATION_LABELS = {
    "layer": "fastlstm stateful LSTM layer",
    "model": "fastlstm predict_on_batch",
    "cell": "fastlstm layer.cell",
    "torch": "PyTorch nn.LSTM, hx carried",
    "onnxruntime": "ONNX Runtime, states fed back",
}


def _generation_rows(result):
    """``(label, value, target)`` of each generation ratio measured."""
    ratios = result["ratios"]
    rows = [("stateful layer / PyTorch", ratios["layer_over_torch"], TARGET_GENERATION_VS_TORCH),
            ("predict_on_batch / PyTorch", ratios["model_over_torch"], None),
            ("layer.cell / ORT", ratios["cell_over_onnxruntime"], TARGET_CELL_VS_ORT)]
    return [row for row in rows if row[1] is not None]


def _print_generation(result, file):
    shape = result["shape"]
    print(f"\ngeneration: B={shape['batch']} I={shape['input_dim']} H={shape['units']}, "
          f"{shape['steps']} one-step calls, state carried; {result['rounds']} runs each",
          file=file)
    for note in result["notes"]:
        print(f"  note: {note}", file=file)
    for error in result["errors"]:
        print(f"  ERROR: {error}; not timed", file=file)
    if not result["median_ms"]:
        return
    print(f"  median ms per {shape['steps']} steps", file=file)
    for name, label in GENERATION_LABELS.items():
        if name in result["median_ms"]:
            print(f"  {label:<38}{_ms(result['median_ms'][name]):>10}", file=file)
    print(f"  {'ratio':<38}{'value':>10}   target", file=file)
    for label, value, target in _generation_rows(result):
        print(f"  {label:<38}{value:>10.2f}   {_verdict(value, target)}".rstrip(), file=file)


# ONNX Runtime


def onnx_lstm_model(kernel, recurrent_kernel, bias, with_state=False):
    """An ONNX model of fastlstm's LSTM with these weights, for inference.

    The model takes ``X`` of shape (timesteps, batch, input_dim), ONNX's
    native (time-major) layout, and returns ``Y`` of shape
    (timesteps, 1, batch, units): ONNX Runtime's CPU LSTM supports no other
    layout, and timing it without layout conversions does not flatter
    fastlstm.

    Parameters
    ----------
    kernel, recurrent_kernel, bias : ndarray
        fastlstm's weights.
    with_state : bool
        Instead, take the states to start from too, ``initial_h`` and
        ``initial_c`` (1, batch, units), and return only the last ones,
        ``Y_h`` and ``Y_c`` (1, batch, units): a model to feed one step at a
        time with its states fed back, as generation does.

    Returns
    -------
    onnx.ModelProto
    """
    import onnx
    from onnx import helper, numpy_helper

    units = recurrent_kernel.shape[0]
    element = {np.dtype(np.float32): onnx.TensorProto.FLOAT,
               np.dtype(np.float64): onnx.TensorProto.DOUBLE}[kernel.dtype]
    W, R, B = lstm_weights(kernel, recurrent_kernel, bias)
    inputs = [helper.make_tensor_value_info("X", element, ["T", "B", kernel.shape[0]])]
    if with_state:
        states = [helper.make_tensor_value_info(name, element, [1, "B", units])
                  for name in ("initial_h", "initial_c")]
        inputs += states
        outputs = [helper.make_tensor_value_info(name, element, [1, "B", units])
                   for name in ("Y_h", "Y_c")]
        # The optional sequence_lens and Y are left out by empty names.
        node = helper.make_node("LSTM", ["X", "W", "R", "B", "", "initial_h", "initial_c"],
                                ["", "Y_h", "Y_c"], hidden_size=units)
    else:
        outputs = [helper.make_tensor_value_info("Y", element, ["T", 1, "B", units])]
        node = helper.make_node("LSTM", ["X", "W", "R", "B"], ["Y"], hidden_size=units)
    graph = helper.make_graph(
        [node], "fastlstm_bench_lstm", inputs=inputs, outputs=outputs,
        initializer=[numpy_helper.from_array(W, "W"), numpy_helper.from_array(R, "R"),
                     numpy_helper.from_array(B, "B")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model)
    return model


def _cannot_load(error):
    """The note on ONNX Runtime left out because it refused the model."""
    return (f"onnxruntime left out, it cannot load the model: "
            f"{type(error).__name__}: {str(error).splitlines()[0]}")


def _onnx_session(model, threads):
    """An ONNX Runtime CPU session of ``model`` on ``threads`` threads."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    return onnxruntime.InferenceSession(model.SerializeToString(), options,
                                        providers=["CPUExecutionProvider"])


def _onnxruntime(x, kernel, recurrent_kernel, bias, threads):
    session = _onnx_session(onnx_lstm_model(kernel, recurrent_kernel, bias), threads)
    # Converted to the model's layout once, outside the timing.
    x_time_major = np.ascontiguousarray(x.transpose(1, 0, 2))

    def infer():
        return session.run(["Y"], {"X": x_time_major})[0]

    def check_infer():
        return infer()[:, 0].transpose(1, 0, 2)

    return Implementation("onnxruntime", None, infer, None, check_infer)


def _peers(threads, dtype):
    """Versions of the importable peers that run ``dtype``, after setting
    their thread counts; and notes on the peers left out."""
    peers, notes = {}, []
    try:
        import torch
    except ImportError:
        pass
    else:
        torch.set_num_threads(threads)
        peers["torch"] = torch.__version__
    try:
        import onnx
        import onnxruntime
    except ImportError:
        pass
    else:
        if dtype == np.float32:
            peers["onnxruntime"] = f"{onnxruntime.__version__} (onnx {onnx.__version__})"
        else:
            notes.append(f"onnxruntime {onnxruntime.__version__} left out: its CPU LSTM "
                         f"runs float32 only")
    return peers, notes


# The run


def _mismatch(results, expected, dtype):
    """Names and relative errors of the arrays where ``results`` disagree with
    ``expected`` beyond the tolerance of ``dtype``; empty when they agree."""
    bad = []
    for key, value in results.items():
        reference = np.asarray(expected[key], dtype=np.float64)
        value = np.asarray(value, dtype=np.float64)
        if value.shape != reference.shape:
            bad.append(f"{key} has shape {value.shape}, expected {reference.shape}")
            continue
        scale = np.max(np.abs(reference)) or 1.0
        error = np.max(np.abs(value - reference)) / scale
        if not error < TOLERANCE[dtype]:  # also catches NaN
            bad.append(f"{key} rel. error {error:.2e}")
    return bad


def _verify(fast, others, dtype):
    """Check every implementation against fastlstm once, before any timing.

    Returns
    -------
    timed : list of Implementation
        What may be timed: fastlstm and the implementations that agree with
        it; empty when fastlstm disagrees with its own training forward or
        with the reference (the oracle its tests use).
    errors : list of str
        One line per disagreement.
    """
    expected_train = fast.check_train()
    expected_infer = {"outputs": fast.check_infer()}
    errors = []
    fast_is_wrong = False
    bad = _mismatch(expected_infer, {"outputs": expected_train["outputs"]}, dtype)
    if bad:
        errors.append(f"fastlstm's inference disagrees with its training forward: "
                      f"{'; '.join(bad)}")
        fast_is_wrong = True
    agreeing = []
    for other in others:
        bad = []
        if other.check_train is not None:
            bad += [f"training {b}" for b in _mismatch(other.check_train(), expected_train, dtype)]
        if other.check_infer is not None:
            bad += [f"inference {b}"
                    for b in _mismatch({"outputs": other.check_infer()}, expected_infer, dtype)]
        if bad:
            errors.append(f"{other.name} disagrees with fastlstm: {'; '.join(bad)}")
            fast_is_wrong |= other.name == "reference"
        else:
            agreeing.append(other)
    if fast_is_wrong:
        return [], errors
    return [fast] + agreeing, errors


def _ratio(numerator, denominator):
    if numerator is None or denominator is None:
        return None
    return numerator / denominator


def _bench_size(shape, dtype, threads, rounds, reference_rounds, use_reference, peers,
                sgemm=None, burst=1):
    """Verify, then time, one size; return its results as a dict."""
    batch, timesteps, input_dim, units = shape
    x, kernel, recurrent_kernel, bias = _inputs(*shape, dtype)
    fast = _fastlstm("fast", "fast", x, kernel, recurrent_kernel, bias)
    others = []
    notes = []
    if use_reference:
        others.append(_fastlstm("reference", "reference", x, kernel, recurrent_kernel, bias))
    if "torch" in peers:
        others.append(_torch(x, kernel, recurrent_kernel, bias))
    if "onnxruntime" in peers:
        try:
            others.append(_onnxruntime(x, kernel, recurrent_kernel, bias, threads))
        except Exception as error:  # a peer that cannot load the model is left out, not fatal
            notes.append(_cannot_load(error))

    implementations, errors = _verify(fast, others, np.dtype(dtype))
    calls, call_rounds = {}, {}
    for implementation in implementations:
        count = reference_rounds if implementation.name == "reference" else rounds
        if implementation.train is not None:
            calls[("training", implementation.name)] = implementation.train
            call_rounds[("training", implementation.name)] = count
        if implementation.infer is not None:
            calls[("inference", implementation.name)] = implementation.infer
            call_rounds[("inference", implementation.name)] = count
    settle = {key: REFERENCE_SETTLE_SECONDS for key in calls if key[1] == "reference"}
    medians, times = (interleaved_medians(calls, call_rounds, burst, PAUSE_SECONDS, settle)
                      if calls else ({}, {}))

    median_ms = {"training": {}, "inference": {}}
    times_ms = {"training": {}, "inference": {}}
    for (task, implementation), value in medians.items():
        median_ms[task][implementation] = value
        times_ms[task][implementation] = times[(task, implementation)]
    train, infer = median_ms["training"], median_ms["inference"]
    flops = training_flops(*shape)
    ceiling = ceiling_ms(*shape) if np.dtype(dtype) == np.float32 else None
    sgemm_ms = flops / (sgemm * 1e9) * 1e3 if sgemm else None
    fastest_peer = min((infer[p] for p in ("torch", "onnxruntime") if p in infer), default=None)
    return {
        "shape": {"batch": batch, "timesteps": timesteps, "input_dim": input_dim, "units": units},
        "rounds": {implementation.name: call_rounds.get(("inference", implementation.name))
                   for implementation in implementations},
        "burst": burst,
        "median_ms": median_ms,
        "times_ms": times_ms,
        "training_flops": flops,
        "ceiling_ms": ceiling,
        "sgemm_gflops": sgemm,
        "sgemm_ms": sgemm_ms,
        "gflops": {impl: flops / (ms * 1e-3) / 1e9 for impl, ms in train.items()},
        "ratios": {
            "training_fast_over_torch": _ratio(train.get("fast"), train.get("torch")),
            "training_fast_over_ceiling": _ratio(train.get("fast"), ceiling),
            "training_fast_over_sgemm": _ratio(train.get("fast"), sgemm_ms),
            "training_reference_over_fast": _ratio(train.get("reference"), train.get("fast")),
            "inference_fast_over_torch": _ratio(infer.get("fast"), infer.get("torch")),
            "inference_fast_over_fastest_peer": _ratio(infer.get("fast"), fastest_peer),
            "inference_reference_over_fast": _ratio(infer.get("reference"), infer.get("fast")),
        },
        "errors": errors,
        "notes": notes,
    }


def _ms(value):
    if value is None:
        return "-"
    return f"{value:.3f}" if value < 10 else f"{value:.1f}"


def _print_size(name, result, file):
    shape = result["shape"]
    rounds = result["rounds"]
    counts = sorted(set(v for k, v in rounds.items() if k != "reference"))
    counts_text = f"{', '.join(str(c) for c in counts) or 0} calls each"
    if "reference" in rounds:
        counts_text += f" (reference {rounds['reference']})"
    if result.get("burst", 1) > 1:
        counts_text += f", in turns of {result['burst']}"
    print(f"\n{name}: B={shape['batch']} T={shape['timesteps']} I={shape['input_dim']} "
          f"H={shape['units']}, {counts_text}", file=file)
    for note in result["notes"]:
        print(f"  note: {note}", file=file)
    for error in result["errors"]:
        print(f"  ERROR: {error}; not timed", file=file)
    train, infer = result["median_ms"]["training"], result["median_ms"]["inference"]
    if not train and not infer:
        return
    print(f"  {'median ms':<28}{'training':>10}{'GFLOP/s':>10}{'inference':>11}", file=file)
    labels = {"fast": "fastlstm", "reference": "NumPy reference", "torch": "PyTorch",
              "onnxruntime": "ONNX Runtime"}
    for implementation in labels:
        if implementation in train or implementation in infer:
            gflops = result["gflops"].get(implementation)
            print(f"  {labels[implementation]:<28}{_ms(train.get(implementation)):>10}"
                  f"{'-' if gflops is None else f'{gflops:.1f}':>10}"
                  f"{_ms(infer.get(implementation)):>11}", file=file)
    if result.get("sgemm_gflops"):
        print(f"  {'sgemm 2048^3, same threads':<28}{'':>10}{result['sgemm_gflops']:>10.1f}",
              file=file)

    print(f"  {'ratio':<38}{'value':>10}   target", file=file)
    for label, value, target in _ratio_rows(name, result):
        print(f"  {label:<38}{value:>10.2f}   {_verdict(value, target)}".rstrip(), file=file)


def _verdict(value, target):
    if target is None:
        return ""
    return f"<= {target:<5} {'met' if value <= target else 'MISSED'}"


def _ratio_rows(name, result):
    """``(label, value, target)`` of each ratio a size's table prints; the
    target is None where there is none."""
    ratios = result["ratios"]
    infer = result["median_ms"]["inference"]
    rows = [
        ("training  fast / PyTorch", ratios["training_fast_over_torch"],
         TARGET_TRAIN_VS_TORCH.get(name)),
        (f"training  fast / sgemm here ({_ms(result.get('sgemm_ms'))} ms)",
         ratios.get("training_fast_over_sgemm"), TARGET_VS_SGEMM.get(name)),
        ("training  reference / fast", ratios["training_reference_over_fast"], None),
    ]
    # The inference target is against the faster peer; with one peer
    # only, that is the fast / PyTorch row (or fast / ORT).
    peers = [label for key, label in (("torch", "PyTorch"), ("onnxruntime", "ORT"))
             if key in infer]
    if len(peers) == 2:
        rows.append(("inference fast / PyTorch", ratios["inference_fast_over_torch"], None))
    rows += [
        (f"inference fast / {'min(PyTorch, ORT)' if len(peers) == 2 else ''.join(peers)}",
         ratios["inference_fast_over_fastest_peer"], TARGET_INFER_VS_PEERS),
        ("inference reference / fast", ratios["inference_reference_over_fast"], None),
    ]
    return [row for row in rows if row[1] is not None]


def cpu_model():
    """The CPU's model name, with its family and model numbers where the
    name is generic (as virtual machines report it)."""
    fields = {}
    try:
        with open("/proc/cpuinfo") as stream:
            for line in stream:
                key, _, value = line.partition(":")
                if not line.strip():
                    break
                fields.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    name = fields.get("model name") or platform.processor() or platform.machine()
    if "cpu family" in fields and "model" in fields:
        name += f" (family {fields['cpu family']} model {fields['model']})"
    return name or "unknown CPU"


def _print_targets(results, file):
    """Every ratio with a target, one line each, under the machine it ran on."""
    sgemm = [size["sgemm_gflops"] for size in results["sizes"].values() if size["sgemm_gflops"]]
    print(f"\ntargets on {results['cpu']}, {results['kernels']} kernels, "
          f"{results['threads']} thread(s)"
          + (f", sgemm 2048^3 {statistics.median(sgemm):.0f} GFLOP/s (median of the run)"
             if sgemm else ""), file=file)
    rows = [(name, label, value, target) for name, result in results["sizes"].items()
            for label, value, target in _ratio_rows(name, result) if target is not None]
    if results.get("generation"):
        rows += [("generation", label, value, target)
                 for label, value, target in _generation_rows(results["generation"])
                 if target is not None]
    for name, label, value, target in rows:
        label = " ".join(label.split(" (")[0].split())
        print(f"  {name:<11}{label:<36}{value:>7.2f}   {_verdict(value, target)}", file=file)


def run(sizes=None, repeat=None, dtype="float32", threads=None, reference=True,
        json_path=None, file=None, generation=None):
    """Run the benchmark, print its tables and return its results.

    Parameters
    ----------
    sizes : list of str or None
        Names of :data:`SIZES` to run, in the order given; None runs all.
    repeat : int or None
        Timed calls of each implementation per size; None uses
        :data:`DEFAULT_ROUNDS`. The reference is timed
        ``min(repeat, REFERENCE_ROUNDS[size])`` times.
    dtype : {"float32", "float64"}
    threads : int or None
        fastlstm's threads (:func:`fastlstm.set_num_threads`); the peers get
        as many. None keeps fastlstm's default.
    reference : bool
        Time the NumPy reference too. Without it fastlstm is not checked
        against the reference, only against the peers.
    json_path : str or path-like or None
        Where to write the results as JSON.
    file : file-like or None
        Where to print; ``sys.stdout`` when None.
    generation : bool or None
        Time text generation too (see :data:`GENERATION_STEPS`); None does
        when every size runs.

    Returns
    -------
    dict
        The results (what ``json_path`` receives): configuration, peer
        versions and, per size, medians, every time measured, ratios and
        errors.
    """
    file = sys.stdout if file is None else file
    sizes = list(SIZES) if sizes is None else list(sizes)
    unknown = [name for name in sizes if name not in SIZES]
    if unknown:
        raise ValueError(f"unknown size(s) {unknown}; the sizes are {list(SIZES)}")
    dtype = np.dtype(dtype)
    if threads is not None:
        _config.set_num_threads(threads)
    threads = _config.num_threads()
    peers, peer_notes = _peers(threads, dtype)
    info = _config.blas_info()
    kernels = _kernels.current_name()

    cpu = cpu_model()
    print(f"fastlstm {__version__}: {kernels} kernels, {threads} thread(s); BLAS "
          f"{info['library']}, core type {info['corename']} ({info['coretype_source']})",
          file=file)
    print(f"CPU: {cpu}", file=file)
    peer_text = ", ".join(f"{name} {version}" for name, version in peers.items()) or "none found"
    print(f"peers: numpy {np.__version__} (reference), {peer_text}; {dtype.name}, "
          f"{threads} thread(s) each; medians of interleaved turns", file=file)
    for note in peer_notes:
        print(f"note: {note}", file=file)

    results = {
        "fastlstm": __version__,
        "cpu": cpu,
        "kernels": kernels,
        "blas": info,
        "threads": threads,
        "dtype": dtype.name,
        "peers": dict(peers, numpy=np.__version__),
        "sizes": {},
    }
    for name in sizes:
        rounds = DEFAULT_ROUNDS[name] if repeat is None else repeat
        # Measured afresh for each size: a shared machine's speed drifts.
        sgemm = sgemm_gflops(threads) if dtype == np.float32 else None
        result = _bench_size(SIZES[name], dtype, threads, rounds,
                             min(rounds, REFERENCE_ROUNDS[name]), reference, peers, sgemm,
                             min(rounds, BURST[name]))
        results["sizes"][name] = result
        _print_size(name, result, file)
        file.flush()
    if generation or (generation is None and sizes == list(SIZES)):
        rounds = DEFAULT_ROUNDS[GENERATION_SIZE] // 10 if repeat is None else repeat
        results["generation"] = _generation(dtype, threads, peers, rounds, min(rounds, 2))
        _print_generation(results["generation"], file)
    _print_targets(results, file)
    if json_path is not None:
        with open(json_path, "w") as stream:
            json.dump(results, stream, indent=1)
    return results
