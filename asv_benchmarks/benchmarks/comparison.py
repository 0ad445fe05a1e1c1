"""Fast against reference, measured side by side in one process.

Absolute times drift by tens of per cent from run to run on a shared machine;
a ratio of two timings taken interleaved in one process does not,
so the speed-up is tracked as its own number. The largest relative
difference between the two backends' results is tracked too, so a
correctness regression shows on the dashboard next to the speed it bought.
"""
import statistics
import time

from .common import (DTYPES, SIZE_NAMES, functional_api, lstm_inputs, output_gradient,
                     relative_difference)

# Interleaved (fast, reference) pairs timed per speed-up: at least
# MIN_PAIRS, more while the time spent stays under BUDGET_SECONDS.
MIN_PAIRS = 3
MAX_PAIRS = 25
BUDGET_SECONDS = 1.0


def _training_step(fastlstm, inputs, grad_outputs, backend):
    outputs, h, c, cache = fastlstm.lstm_forward(*inputs, backend=backend)
    grads = fastlstm.lstm_backward(cache, grad_outputs=grad_outputs)
    return (outputs, h, c) + tuple(grads)


def _inference(fastlstm, inputs, grad_outputs, backend):
    return fastlstm.lstm_forward(*inputs, return_cache=False, backend=backend)[:3]


_PASSES = {"training step": _training_step, "inference": _inference}


class FastOverReference:
    """How many times faster "fast" runs than "reference": the ratio of the
    medians of interleaved timings (the first pair included: each call
    allocates its own buffers, both backends alike)."""

    params = (SIZE_NAMES, DTYPES, list(_PASSES))
    param_names = ("size", "dtype", "pass")
    unit = "x"
    timeout = 300

    def setup(self, size, dtype, pass_name):
        self.fastlstm = functional_api("fast", dtype)
        functional_api("reference", dtype)
        self.inputs = lstm_inputs(size, dtype)
        self.grad_outputs = output_gradient(size, dtype)

    def track_speedup(self, size, dtype, pass_name):
        run = _PASSES[pass_name]
        times = {"fast": [], "reference": []}
        start = time.perf_counter()
        while len(times["fast"]) < MAX_PAIRS and (
                len(times["fast"]) < MIN_PAIRS
                or time.perf_counter() - start < BUDGET_SECONDS):
            for backend, samples in times.items():
                began = time.perf_counter()
                run(self.fastlstm, self.inputs, self.grad_outputs, backend)
                samples.append(time.perf_counter() - began)
        return statistics.median(times["reference"]) / statistics.median(times["fast"])


class FastMatchesReference:
    """The largest relative difference (:func:`common.relative_difference`)
    between "fast" and "reference" over the outputs, final states and every
    gradient of a training step. float32 sits near 1e-6, float64 near 1e-15;
    a jump by orders of magnitude is a bug, not rounding."""

    params = (SIZE_NAMES, DTYPES)
    param_names = ("size", "dtype")
    unit = "relative error"
    timeout = 120

    def setup(self, size, dtype):
        self.fastlstm = functional_api("fast", dtype)
        functional_api("reference", dtype)
        self.inputs = lstm_inputs(size, dtype)
        self.grad_outputs = output_gradient(size, dtype)

    def track_max_relative_difference(self, size, dtype):
        fast = _training_step(self.fastlstm, self.inputs, self.grad_outputs, "fast")
        reference = _training_step(self.fastlstm, self.inputs, self.grad_outputs, "reference")
        return max(relative_difference(a, b) for a, b in zip(fast, reference)
                   if b is not None)
