"""The functional API, fast kernels against the NumPy reference.

A training step is a forward pass over the whole sequence keeping the cache,
then the backward pass of sum(outputs) (``grad_outputs`` = ones) to the input,
the weights and the initial states. Inference is the forward pass with
``return_cache=False``.

The reference is one value of the ``backend`` parameter, so the dashboard
plots both on one graph. It takes up to a few seconds per training step at
medium and large sizes; the timeouts allow for that on a loaded machine.
"""
from .common import BACKENDS, DTYPES, SIZE_NAMES, functional_api, lstm_inputs, output_gradient


class Functional:
    """Forward, inference and training step of ``lstm_forward`` / ``lstm_backward``."""

    params = (SIZE_NAMES, DTYPES, BACKENDS)
    param_names = ("size", "dtype", "backend")
    timeout = 180

    def setup(self, size, dtype, backend):
        self.fastlstm = functional_api(backend, dtype)
        self.inputs = lstm_inputs(size, dtype)
        self.grad_outputs = output_gradient(size, dtype)

    def time_forward(self, size, dtype, backend):
        self.fastlstm.lstm_forward(*self.inputs, backend=backend)

    def time_inference(self, size, dtype, backend):
        self.fastlstm.lstm_forward(*self.inputs, return_cache=False, backend=backend)

    def time_training_step(self, size, dtype, backend):
        outputs, _, _, cache = self.fastlstm.lstm_forward(*self.inputs, backend=backend)
        self.fastlstm.lstm_backward(cache, grad_outputs=self.grad_outputs)

    def peakmem_training_step(self, size, dtype, backend):
        outputs, _, _, cache = self.fastlstm.lstm_forward(*self.inputs, backend=backend)
        self.fastlstm.lstm_backward(cache, grad_outputs=self.grad_outputs)


class Backward:
    """``lstm_backward`` alone.

    A cache is usable once, so every timed call needs a fresh forward pass
    that must not be timed. ``setup`` runs it, and ``number = 1`` makes each
    sample a single call preceded by its own ``setup`` (asv runs ``setup``
    once per sample). ``warmup_time = 0`` because a warm-up call would reuse
    the cache of the previous call. Timing the training step and subtracting
    the forward pass would instead add the noise of two measurements.
    """

    params = (SIZE_NAMES, DTYPES, BACKENDS)
    param_names = ("size", "dtype", "backend")
    number = 1
    warmup_time = 0.0
    timeout = 180

    def setup(self, size, dtype, backend):
        self.fastlstm = functional_api(backend, dtype)
        outputs, _, _, self.cache = self.fastlstm.lstm_forward(*lstm_inputs(size, dtype),
                                                               backend=backend)
        self.grad_outputs = output_gradient(size, dtype)

    def time_backward(self, size, dtype, backend):
        self.fastlstm.lstm_backward(self.cache, grad_outputs=self.grad_outputs)
