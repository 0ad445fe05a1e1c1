"""Denormal numbers: do they slow the kernels down?

Denormals (|x| < 1.2e-38 in float32) appear when states and gradients decay
over many steps. Arithmetic on them can take a hundred times the cycles of
arithmetic on normal numbers on some CPUs; fastlstm's kernels flush them to
zero. The "denormal-prone" inputs are denormal themselves, start from
denormal states, and have gate biases that keep every gate near zero, so
the products of the cell update land in the denormal range step after step.
"""
import statistics
import time

import numpy as np

from .common import SIZES, functional_api, lstm_inputs, output_gradient

INPUTS = ["normal", "denormal-prone"]


def _inputs(size, dtype, kind):
    x, kernel, recurrent_kernel, bias = lstm_inputs(size, dtype)
    batch, _, _, units = SIZES[size]
    initial_state = None
    if kind == "denormal-prone":
        tiny = np.finfo(dtype).smallest_normal
        x = (x * tiny / 16).astype(dtype)
        bias = np.full_like(bias, -20.0)
        initial_state = [np.full((batch, units), tiny / 8, dtype),
                         np.full((batch, units), tiny / 8, dtype)]
    return (x, kernel, recurrent_kernel, bias), initial_state


def _training_step(fastlstm, inputs, initial_state, grad_outputs):
    cache = fastlstm.lstm_forward(*inputs, initial_state=initial_state)[3]
    fastlstm.lstm_backward(cache, grad_outputs=grad_outputs)


class Denormals:
    """A training step of the fast kernels on normal and denormal-prone inputs."""

    params = (["small", "medium"], ["float32", "float64"], INPUTS)
    param_names = ("size", "dtype", "inputs")
    timeout = 300

    def setup(self, size, dtype, kind):
        self.fastlstm = functional_api("fast", dtype)
        self.inputs, self.initial_state = _inputs(size, dtype, kind)
        self.grad_outputs = output_gradient(size, dtype)

    def time_training_step(self, size, dtype, kind):
        _training_step(self.fastlstm, self.inputs, self.initial_state, self.grad_outputs)


class DenormalSlowdown:
    """Time of a training step on denormal-prone inputs over that on normal
    inputs, measured interleaved in one process (unit "x": 1 is no slowdown)."""

    params = (["small", "medium"], ["float32", "float64"])
    param_names = ("size", "dtype")
    unit = "x"
    timeout = 300

    def setup(self, size, dtype):
        self.fastlstm = functional_api("fast", dtype)
        self.cases = [_inputs(size, dtype, kind) for kind in INPUTS]
        self.grad_outputs = output_gradient(size, dtype)

    def track_slowdown(self, size, dtype):
        times = [[], []]
        for _ in range(7):
            for samples, (inputs, initial_state) in zip(times, self.cases):
                began = time.perf_counter()
                _training_step(self.fastlstm, inputs, initial_state, self.grad_outputs)
                samples.append(time.perf_counter() - began)
        return statistics.median(times[1]) / statistics.median(times[0])
