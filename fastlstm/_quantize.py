"""int8 quantization of the LSTM and Dense layers (``layer.quantize("int8")``).

Weights: int8, symmetric, one scale per output column (per gate column for
an LSTM's ``kernel`` and ``recurrent_kernel``)::

    scale[n] = max_k |w[k, n]| / 127        (1 for a column of zeros)
    q[k, n]  = round(w[k, n] / scale[n])    in [-127, 127]

so ``|w - scale * q| <= scale / 2`` elementwise. Activations (each input row
of each sequence and time step, each hidden state of each sequence and
step) are quantized by the kernels when they are used, uint8 with a zero
point, as ONNX Runtime's dynamic quantization does (see ``_fl_int8.h``).

A quantized layer keeps, in ``params``, ``kernel`` and ``recurrent_kernel``
as int8, ``bias`` as float32, and ``kernel_scale`` and
``recurrent_kernel_scale`` as float32 ``(4 * units,)``; a quantized Dense,
``kernel`` int8, ``bias`` and ``kernel_scale``. ``quantization_mode`` is
``"int8"``. The packed copies the kernels read are made from those arrays
and remade whenever they change.
"""
import contextlib

import numpy as np

from . import _kernels
from ._validation import as_real_array, check_option, describe

__all__ = ["MODES", "check_mode", "quantize_columns", "PackedInt8"]

#: The quantization modes fastlstm implements.
MODES = ("int8",)

_TRAINING = ("it is quantized to int8, which fastlstm runs for inference only; train the "
             "float32 model, then quantize it")

_state = {"portable": False}


def check_mode(mode):
    """``mode`` if fastlstm implements it, else ValueError naming the modes."""
    return check_option(mode, "mode", MODES, " (the quantization modes fastlstm implements)")


@contextlib.contextmanager
def portable_products():
    """Run the integer products on the portable loop, not VNNI, inside the
    block: the switch the tests compare the two paths with."""
    saved = _state["portable"]
    _state["portable"] = True
    try:
        yield
    finally:
        _state["portable"] = saved


def use_portable():
    """Whether the integer products run on the portable loop now."""
    return _state["portable"]


def quantize_columns(weights, name):
    """``(q, scale)``: ``weights`` (K, N) as int8 ``q`` and float32 ``scale``
    (N,) with ``weights ~ q * scale``, symmetric, one scale per column."""
    w = np.asarray(weights, np.float32)
    if not np.all(np.isfinite(w)):
        raise ValueError(f"{name} holds NaN or infinite values, which int8 cannot represent; "
                         f"quantize a model whose weights are finite")
    amax = np.max(np.abs(w), axis=0) if w.shape[0] else np.zeros(w.shape[1], np.float32)
    scale = (amax / np.float32(127)).astype(np.float32)
    scale[scale == 0] = 1
    q = np.clip(np.rint(w / scale), -127, 127).astype(np.int8)
    return np.ascontiguousarray(q), scale


def as_int8(value, name):
    """``value`` as an int8 array: integers in [-128, 127], else ValueError."""
    array = as_real_array(value, name)
    if array.dtype != np.int8:
        if array.size and (not np.all(np.isfinite(array)) or np.any(array != np.round(array))
                           or array.min() < -128 or array.max() > 127):
            raise ValueError(f"{name} must hold int8 values (integers in [-128, 127]) because "
                             f"the layer is quantized to int8, got {describe(value)}")
        array = array.astype(np.int8)
    return array


def check_quantizable(layer):
    """ValueError unless ``layer`` can be quantized (float32, not projected,
    not quantized yet; for a Bidirectional, both directions)."""
    for part in layer._sublayers() or [layer]:
        if getattr(part, "proj_units", None) is not None:
            raise ValueError(f"{part._label()} is a projected LSTM (proj_units="
                             f"{part.proj_units}); the int8 kernels have no projection, so "
                             f"it stays float32: quantize a model without proj_units")
        if part.quantization_mode is not None:
            raise ValueError(f"{part._label()} is already quantized "
                             f"(quantization_mode={part.quantization_mode!r})")
        if np.dtype(part.dtype) != np.float32:
            raise ValueError(f"{part._label()} computes in {np.dtype(part.dtype).name}; int8 "
                             f"quantization takes float32 layers (its products dequantize "
                             f"to float32): make the layer with dtype='float32'")


def mark_quantized(layer, mode):
    """Make the unbuilt ``layer`` (just made from a saved configuration) one
    whose weights are quantized, so that the saved quantized weights build
    it."""
    if not hasattr(layer, "quantize"):
        raise ValueError(f"{layer._label()} cannot be quantized, but its configuration says "
                         f"quantization_mode={mode!r}")
    for part in layer._sublayers() or [layer]:
        part.quantization_mode = mode


def training_refused(layer):
    """The message of a quantized layer asked to train."""
    return f"{layer._label()} cannot be trained: {_TRAINING}"


class PackedInt8:
    """One quantized weight matrix as the kernels read it: the int8 matrix
    packed for the integer products, its column sums and scales, with a
    copy of what it was made from, to tell when to remake it."""

    __slots__ = ("weights", "scale", "packed", "colsum")

    def __init__(self, weights, scale):
        self.weights = weights.copy()
        self.scale = np.ascontiguousarray(scale, np.float32).copy()
        self.packed, self.colsum = _kernels.current().int8_pack(np.ascontiguousarray(weights))

    def holds(self, weights, scale):
        """Whether this was made from ``weights`` and ``scale`` as they are now."""
        return np.array_equal(self.weights, weights) and np.array_equal(self.scale, scale)

    @classmethod
    def kept(cls, current, weights, scale):
        """``current`` if it still holds ``weights`` and ``scale``, else a new one."""
        if current is not None and current.holds(weights, scale):
            return current
        return cls(weights, scale)

    def arguments(self):
        """``(packed, colsum, scale)``, as the kernels take them."""
        return self.packed, self.colsum, self.scale
