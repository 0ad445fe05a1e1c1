"""Keras-style layers over the functional LSTM, one per module, on one base.

:class:`~fastlstm.layers.base.Layer` (``base.py``) owns what every layer
shares; ``lstm.py`` holds :class:`LSTM` and its one-step
:class:`LSTMCell`, ``bidirectional.py``
:class:`Bidirectional`, ``core.py`` :class:`Dense`, :class:`Embedding`,
:class:`Dropout` and :class:`Masking`, ``normalization.py``
:class:`LayerNormalization`.
"""
from .. import _quantize
from .._validation import describe
from .base import Layer, no_grad
from .bidirectional import Bidirectional
from .core import Dense, Dropout, Embedding, Masking
from .lstm import LSTM, LSTMCell
from .normalization import LayerNormalization

__all__ = ["Layer", "LSTM", "LSTMCell", "Bidirectional", "Dense", "Embedding", "Dropout", "Masking",
           "LayerNormalization", "no_grad", "serialize", "deserialize"]

_CLASSES = {cls.__name__: cls for cls in (LSTM, Bidirectional, Dense, Embedding, Dropout,
                                          Masking, LayerNormalization)}


def serialize(layer):
    """``{"class_name": ..., "config": ...}``, the layer's type and configuration."""
    spec = {"class_name": type(layer).__name__, "config": layer.get_config()}
    if getattr(layer, "quantization_mode", None):
        spec["quantization_mode"] = layer.quantization_mode
    return spec


def deserialize(spec):
    """A new, unbuilt layer from :func:`serialize`'s dict."""
    if not isinstance(spec, dict) or "class_name" not in spec or "config" not in spec:
        raise ValueError(f"a layer must be described as {{'class_name': ..., 'config': {{...}}}}, "
                         f"got {describe(spec)}")
    name = spec["class_name"]
    if name not in _CLASSES:
        raise ValueError(f"unknown layer class {name!r}; fastlstm has {sorted(_CLASSES)}")
    layer = _CLASSES[name].from_config(spec["config"])
    mode = spec.get("quantization_mode")
    if mode is not None:
        _quantize.check_mode(mode)
        _quantize.mark_quantized(layer, mode)
    return layer
