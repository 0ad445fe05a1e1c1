"""The Keras-style ``fastlstm.LSTM`` layer, with ``return_sequences=True``.

The layer always runs the fast kernels (it has no backend switch), so these
benchmarks have no ``backend`` parameter: the functional benchmarks compare
the backends, and these show what the layer adds on top (validation, casts,
the record kept for ``backward``). Commits without the layer skip them.
"""
import functools

from .common import (DTYPES, SIZE_NAMES, SIZES, import_fastlstm, layer_class, lstm_inputs,
                     output_gradient)


@functools.lru_cache(maxsize=None)
def built_layer(size, dtype):
    """A layer for ``size``, built once per process: its orthogonal
    initialisation (a QR decomposition) must not slow down every ``setup``."""
    _, _, input_dim, units = SIZES[size]
    layer = layer_class(dtype)(units, return_sequences=True, dtype=dtype, seed=0)
    layer.build(input_dim)
    return layer


class Layer:
    """Training step, forward pass (recording for ``backward``) and inference."""

    params = (SIZE_NAMES, DTYPES)
    param_names = ("size", "dtype")
    timeout = 120

    def setup(self, size, dtype):
        self.layer = built_layer(size, dtype)
        self.x = lstm_inputs(size, dtype)[0]
        self.grad_outputs = output_gradient(size, dtype)

    def time_forward(self, size, dtype):
        self.layer(self.x, training=True)

    def time_training_step(self, size, dtype):
        self.layer(self.x, training=True)
        self.layer.backward(self.grad_outputs)

    def peakmem_training_step(self, size, dtype):
        self.layer(self.x, training=True)
        self.layer.backward(self.grad_outputs)


class LayerInference:
    """``layer(x)`` inside ``fastlstm.no_grad()``: nothing kept for ``backward``."""

    params = (SIZE_NAMES, DTYPES)
    param_names = ("size", "dtype")
    timeout = 120

    def setup(self, size, dtype):
        self.layer = built_layer(size, dtype)
        self.no_grad = getattr(import_fastlstm(), "no_grad", None)
        if self.no_grad is None:
            raise NotImplementedError("this commit has no fastlstm.no_grad")
        self.x = lstm_inputs(size, dtype)[0]

    def time_inference(self, size, dtype):
        with self.no_grad():
            self.layer(self.x)


class LayerBackward:
    """``layer.backward`` alone; as ``functional.Backward``, each timed call
    gets the record of its own forward pass, run in ``setup``."""

    params = (SIZE_NAMES, DTYPES)
    param_names = ("size", "dtype")
    number = 1
    warmup_time = 0.0
    timeout = 120

    def setup(self, size, dtype):
        self.layer = built_layer(size, dtype)
        self.layer(lstm_inputs(size, dtype)[0], training=True)
        self.grad_outputs = output_gradient(size, dtype)

    def time_backward(self, size, dtype):
        self.layer.backward(self.grad_outputs)
