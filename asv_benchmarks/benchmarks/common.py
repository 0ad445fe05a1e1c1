"""Sizes, inputs and feature checks shared by the benchmarks.

fastlstm is imported inside the helpers, never at module level: asv imports
every benchmark module to discover the suite, in every commit's environment,
including commits where ``import fastlstm`` fails or finds no functional API.
"""
import functools
import importlib

import numpy as np

# The first five sizes of fastlstm/tools/sizes.py, (batch, timesteps, input_dim,
# units), copied: asv imports this suite for commits older than that module.
# tests/test_sizes.py checks that the two agree.
SIZES = {
    "tiny": (8, 20, 16, 32),
    "small": (32, 50, 32, 64),
    "medium": (64, 100, 128, 256),
    "large": (64, 50, 512, 512),
    "long": (16, 400, 64, 128),
}
SIZE_NAMES = list(SIZES)
DTYPES = ["float32", "float64"]
BACKENDS = ["fast", "reference"]


def import_fastlstm():
    """The installed fastlstm, or NotImplementedError (asv: skipped)."""
    try:
        return importlib.import_module("fastlstm")
    except ImportError as error:
        raise NotImplementedError(f"fastlstm is not importable: {error}") from None


@functools.lru_cache(maxsize=None)
def lstm_inputs(size, dtype):
    """``x, kernel, recurrent_kernel, bias`` for a size of :data:`SIZES`.

    Standard normal inputs, weights scaled by 1/sqrt(fan-in) so the gates
    neither saturate nor vanish. Fixed seed: every commit gets the same
    numbers. Cached per process because asv may re-run ``setup`` before
    every timed call; no benchmark writes to these arrays.
    """
    batch, timesteps, input_dim, units = SIZES[size]
    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch, timesteps, input_dim)).astype(dtype)
    kernel = (rng.standard_normal((input_dim, 4 * units)) / np.sqrt(input_dim)).astype(dtype)
    recurrent_kernel = (rng.standard_normal((units, 4 * units)) / np.sqrt(units)).astype(dtype)
    bias = (0.1 * rng.standard_normal(4 * units)).astype(dtype)
    return x, kernel, recurrent_kernel, bias


def output_gradient(size, dtype):
    """``grad_outputs`` of a training step: the gradient of sum(outputs)."""
    batch, timesteps, _, units = SIZES[size]
    return np.ones((batch, timesteps, units), dtype)


@functools.lru_cache(maxsize=None)
def functional_api(backend, dtype):
    """fastlstm, once a tiny forward and backward pass through ``backend``
    has run; NotImplementedError (asv: skipped) at commits without
    ``lstm_forward`` / ``lstm_backward``, without ``backend``, or where the
    pass fails."""
    fastlstm = import_fastlstm()
    if not (hasattr(fastlstm, "lstm_forward") and hasattr(fastlstm, "lstm_backward")):
        raise NotImplementedError("this commit has no fastlstm.lstm_forward / lstm_backward")
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3, 5)).astype(dtype)
    kernel = rng.standard_normal((5, 16)).astype(dtype)
    recurrent_kernel = rng.standard_normal((4, 16)).astype(dtype)
    bias = np.zeros(16, dtype)
    try:
        outputs, _, _, cache = fastlstm.lstm_forward(x, kernel, recurrent_kernel, bias,
                                                     backend=backend)
        fastlstm.lstm_backward(cache, grad_outputs=np.ones_like(outputs))
    except Exception as error:
        raise NotImplementedError(f"lstm_forward(..., backend={backend!r}) with {dtype} "
                                  f"does not run at this commit: {error!r}") from None
    return fastlstm


def layer_class(dtype):
    """``fastlstm.LSTM`` once a tiny layer has run forward and backward;
    NotImplementedError (asv: skipped) at commits without it."""
    fastlstm = import_fastlstm()
    lstm = getattr(fastlstm, "LSTM", None)
    if lstm is None:
        raise NotImplementedError("this commit has no fastlstm.LSTM layer")
    try:
        layer = lstm(4, return_sequences=True, dtype=dtype)
        outputs = layer(np.ones((2, 3, 5), dtype))
        layer.backward(np.ones_like(outputs))
    except Exception as error:
        raise NotImplementedError(f"fastlstm.LSTM(return_sequences=True, dtype={dtype!r}) "
                                  f"does not run forward and backward at this commit: "
                                  f"{error!r}") from None
    return lstm


def relative_difference(actual, expected):
    """max|actual - expected| / max|expected|: a norm-wise relative error,
    which unlike an element-wise one stays meaningful near zero."""
    actual = np.asarray(actual, np.float64)
    expected = np.asarray(expected, np.float64)
    scale = np.max(np.abs(expected))
    difference = np.max(np.abs(actual - expected))
    return float(difference / scale) if scale > 0 else float(difference)
