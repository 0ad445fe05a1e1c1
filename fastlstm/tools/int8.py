"""``python -m fastlstm bench --int8``: int8 inference against float32 and ONNX Runtime.

For each size of the benchmark (:data:`fastlstm.tools.sizes.SIZES`), one
model, ``Sequential([LSTM(units, return_sequences=True)])`` built for
``(batch, timesteps, input_dim)``, is run three ways on the same input:

- fastlstm float32 inference (a call inside :func:`fastlstm.no_grad`, what
  ``predict`` runs on one batch);
- the same model after ``model.quantize("int8")``;
- ONNX Runtime on the float model written by ``model.export`` and quantized
  with ``onnxruntime.quantization.quantize_dynamic`` (its LSTM becomes a
  ``DynamicQuantizeLSTM``), on as many threads as fastlstm.

They take turns (:func:`fastlstm.tools.bench.interleaved_medians`); the
table gives the medians, the ratios int8 / float32 (target: at most
:data:`TARGET_INT8_OVER_FLOAT` at medium and large) and int8 / ONNX Runtime
int8 (target: at most :data:`TARGET_INT8_OVER_ORT` at every size), and the
largest difference of each int8 output from the float32 one.
"""
import json
import logging
import os
import platform
import sys
import tempfile

import numpy as np

from .. import _config, _kernels
from .._version import __version__
from .bench import interleaved_medians
from .sizes import SIZES

__all__ = ["run", "TARGET_INT8_OVER_FLOAT", "TARGET_INT8_OVER_ORT"]

TARGET_INT8_OVER_FLOAT = 0.5
TARGET_INT8_OVER_ORT = 0.8
# The sizes the float32 target is set for.
FLOAT_TARGET_SIZES = ("medium", "large")


def _rounds(batch, timesteps, input_dim, units, repeat):
    if repeat is not None:
        return repeat
    work = batch * timesteps * units * (input_dim + units)
    return int(np.clip(2e9 / max(work, 1), 5, 41))


def _ort_int8_session(model, threads, folder):
    """An ONNX Runtime session of ``model`` exported, then quantized with
    ``quantize_dynamic``; None (and why) when ONNX Runtime is missing."""
    try:
        import onnxruntime
        from onnxruntime.quantization import quantize_dynamic
    except ImportError as error:
        return None, f"onnxruntime left out: {error}"
    float_path = os.path.join(folder, "model.onnx")
    int8_path = os.path.join(folder, "model.int8.onnx")
    model.export(float_path)
    # quantize_dynamic logs a suggestion to preprocess the model on the root
    # logger; the benchmark's table is what this prints.
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        quantize_dynamic(float_path, int8_path)
    finally:
        root.setLevel(level)
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    session = onnxruntime.InferenceSession(int8_path, options,
                                           providers=["CPUExecutionProvider"])
    return session, None


def _size(name, shape, threads, repeat, folder):
    from ..layers import LSTM, no_grad
    from ..models import Sequential

    batch, timesteps, input_dim, units = shape
    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch, timesteps, input_dim)).astype(np.float32)
    float_model = Sequential([LSTM(units, return_sequences=True, seed=1)])
    float_model.build((None, timesteps, input_dim))
    int8_model = Sequential([LSTM(units, return_sequences=True, seed=1)])
    int8_model.build((None, timesteps, input_dim))
    int8_model.set_weights(float_model.get_weights())
    int8_model.quantize("int8")
    session, note = _ort_int8_session(float_model, threads, folder)

    def run_float():
        with no_grad():
            return float_model(x)

    def run_int8():
        with no_grad():
            return int8_model(x)

    calls = {"float32": run_float, "int8": run_int8}
    if session is not None:
        def run_ort():
            return session.run(None, {"input": x})[0]
        calls["ort_int8"] = run_ort
    reference = run_float()
    errors = {key: float(np.abs(call() - reference).max())
              for key, call in calls.items() if key != "float32"}
    rounds = _rounds(*shape, repeat)
    medians, _ = interleaved_medians(calls, {key: rounds for key in calls})
    ort = medians.get("ort_int8")
    return {
        "shape": dict(zip(("batch", "timesteps", "input_dim", "units"), shape)),
        "ms": medians,
        "int8_over_float32": medians["int8"] / medians["float32"],
        "int8_over_ort_int8": None if ort is None else medians["int8"] / ort,
        "max_abs_difference_from_float32": errors,
        "note": note,
    }


def _mark(ratio, target):
    if ratio is None:
        return "       -"
    return f"{ratio:7.2f}{' ' if target is None or ratio <= target else '!'}"


def run(sizes=None, repeat=None, threads=None, json_path=None, file=None):
    """Run the int8 benchmark on ``sizes`` (names of :data:`SIZES`, default
    all) and print its table; returns the results as a dict."""
    file = sys.stdout if file is None else file
    if threads is not None:
        _config.set_num_threads(threads)
    threads = _config.num_threads()
    names = list(SIZES) if not sizes else list(sizes)
    kernels = _kernels.current()
    results = {"fastlstm": __version__, "build": _kernels.current_name(),
               "int8_path": kernels.int8_path(), "threads": threads,
               "cpu": platform.processor() or platform.machine(), "sizes": {}}
    print(f"fastlstm {__version__} int8 inference, build {results['build']}, integer "
          f"products on {results['int8_path']}, {threads} thread(s)", file=file)
    print(f"{'size':8s} {'B,T,I,H':>18s} {'f32 ms':>9s} {'int8 ms':>9s} {'ORT8 ms':>9s} "
          f"{'int8/f32':>8s} {'int8/ORT':>8s}  max |int8 - f32| (fastlstm, ORT)", file=file)
    with tempfile.TemporaryDirectory() as folder:
        for name in names:
            result = _size(name, SIZES[name], threads, repeat, folder)
            results["sizes"][name] = result
            ms = result["ms"]
            float_target = TARGET_INT8_OVER_FLOAT if name in FLOAT_TARGET_SIZES else None
            errors = result["max_abs_difference_from_float32"]
            shape = ",".join(str(v) for v in SIZES[name])
            ort = ms.get("ort_int8")
            print(f"{name:8s} {shape:>18s} {ms['float32']:9.2f} {ms['int8']:9.2f} "
                  f"{'-' if ort is None else f'{ort:9.2f}':>9s} "
                  f"{_mark(result['int8_over_float32'], float_target)} "
                  f"{_mark(result['int8_over_ort_int8'], TARGET_INT8_OVER_ORT)}  "
                  f"{errors['int8']:.1e}, "
                  f"{'-' if 'ort_int8' not in errors else format(errors['ort_int8'], '.1e')}",
                  file=file)
            if result["note"]:
                print(f"  {result['note']}", file=file)
    print(f"Times are medians in ms (ORT8: ONNX Runtime on the model quantized by "
          f"quantize_dynamic); '!' marks a ratio above its target (int8/f32 <= "
          f"{TARGET_INT8_OVER_FLOAT} at {' and '.join(FLOAT_TARGET_SIZES)}, int8/ORT <= "
          f"{TARGET_INT8_OVER_ORT} everywhere).", file=file)
    if json_path is not None:
        with open(json_path, "w") as stream:
            json.dump(results, stream, indent=1)
    return results
