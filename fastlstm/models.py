"""``Sequential``: a stack of layers with Keras' training workflow.

The stack itself lives here: forward and backward through the layers, their
weights, the summary. Training (``compile``, ``fit``, ``evaluate``,
``predict``) comes from :class:`fastlstm.training.Trainer`, saving and
loading from :mod:`fastlstm.saving`, the ONNX graph ``export`` writes from
``fastlstm/_onnx.py``.

A training step is: forward through the layers (``training=True``), the
loss and its gradient with respect to the output, ``backward`` through the
layers in reverse, then one optimizer update of every layer's ``params``
from its ``grads``.

Masks travel as in Keras: each layer says what mask it passes on
(``compute_mask``): an ``Embedding(mask_zero=True)`` makes one
(``x != 0``), ``Dense`` and ``Dropout`` pass it on, an ``LSTM`` consumes it
and passes it on only with ``return_sequences=True``. A mask that reaches
the output restricts the loss and the metrics to the kept positions.

Examples
--------
>>> import numpy as np, fastlstm as fl
>>> from fastlstm.layers import Dense
>>> from fastlstm.models import Sequential
>>> rng = np.random.default_rng(0)
>>> x = rng.standard_normal((64, 5, 2))
>>> y = x.sum(axis=(1, 2))[:, None]
>>> model = Sequential([fl.LSTM(8, seed=0), Dense(1, seed=1)], seed=0)
>>> model.compile(optimizer="adam", loss="mse", metrics=["mae"])
>>> history = model.fit(x, y, batch_size=16, epochs=2, verbose=0)
>>> sorted(history.history)
['loss', 'mae']
>>> model.predict(x[:3], verbose=0).shape
(3, 1)
"""
import numpy as np

from . import _model_files, _onnx, _quantize
from ._validation import as_real_array, check_bool, check_option, check_path, describe, is_int
from .layers import deserialize, serialize
from .layers.base import layer_label, no_grad, seed_sequence
from .layers.stacking import plan_calls
from .training import Trainer

__all__ = ["Sequential", "load_model"]

# What export writes.
_EXPORT_FORMATS = ("onnx",)

# What Sequential asks of a layer: fastlstm.layers.Layer has all of it.
_LAYER_INTERFACE = ("backward", "params", "grads", "get_weights", "set_weights",
                    "compute_mask", "compute_output_shape", "returns_list")


def _is_recurrent(layer):
    return hasattr(layer, "return_sequences")


def _format_shape(shape):
    return "?" if shape is None else str(tuple(shape)).replace(",)", ")")


class Sequential(Trainer):
    """A linear stack of layers, trained as with ``keras.Sequential``.

    Parameters
    ----------
    layers : list or None
        Layers in order: fastlstm's (``LSTM``, ``Bidirectional``, ``Dense``,
        ``Embedding``, ``Dropout``, ``Masking``, ``LayerNormalization``),
        subclasses of
        :class:`fastlstm.layers.Layer`, or any object with their interface
        (``__call__(x, mask=..., training=...)``, ``backward(dy, input_gradient)``,
        ``params``, ``grads``, ``get_weights``, ``set_weights``,
        ``compute_mask``, ``compute_output_shape``, ``returns_list``). Each
        must return one array: an LSTM with ``return_state=True`` does not
        fit a stack.
    seed : int, numpy.random.Generator, numpy.random.SeedSequence or None
        Seeds the shuffling of ``fit``. With seeded layers, the same data,
        float64 and ``fastlstm.set_num_threads(1)``, ``fit`` gives the same
        weights bit for bit, run after run.
    name : str
        Shown by :meth:`summary`. Default "sequential".
    trainable : bool
        Whether training updates any weight. Setting a model's ``trainable``
        sets every layer's, as in Keras; a model with ``trainable = False``
        is frozen whatever its layers say. Default True.

    Attributes
    ----------
    history : fastlstm.callbacks.History or None
        That of the last ``fit``.
    stop_training : bool
        A callback sets it to end ``fit`` after the current batch.
    """

    def __init__(self, layers=None, *, seed=None, name="sequential", trainable=True):
        super().__init__()
        if not isinstance(name, str):
            raise TypeError(f"name must be a str, got {describe(name)}")
        self.name = name
        self._trainable = check_bool(trainable, "trainable")
        self.seed = seed
        self.layers = []
        self._rng = np.random.default_rng(seed_sequence(seed))
        self._input_shape = None
        self._calls = None
        self.output_mask = None
        if layers is not None:
            if isinstance(layers, np.ndarray) or not isinstance(layers, (list, tuple)):
                raise TypeError(f"layers must be a list of layers, got {describe(layers)}")
            for layer in layers:
                self.add(layer)

    def __repr__(self):
        return f"Sequential([{', '.join(repr(layer) for layer in self.layers)}])"

    def get_config(self):
        """``{"name": ..., "seed": ..., "trainable": ..., "layers": [...]}``,
        each layer as ``{"class_name": ..., "config": ...}``."""
        return {"name": self.name, "seed": self.seed, "trainable": self.trainable,
                "layers": [serialize(layer) for layer in self.layers]}

    @classmethod
    def from_config(cls, config):
        """A new, unbuilt model from :meth:`get_config`'s dict."""
        if not isinstance(config, dict) or not isinstance(config.get("layers"), list):
            raise ValueError(f"config must be a dict with a list of 'layers', got "
                             f"{describe(config)}")
        # Set after the layers: the model's flag would overwrite theirs.
        model = cls([deserialize(spec) for spec in config["layers"]],
                    seed=config.get("seed"), name=config.get("name", "sequential"))
        model._trainable = check_bool(config.get("trainable", True), "config['trainable']")
        return model

    # -- structure ---------------------------------------------------------

    def add(self, layer):
        """Append a layer to the stack."""
        missing = [name for name in _LAYER_INTERFACE if not hasattr(layer, name)]
        if not callable(layer) or missing:
            raise TypeError(f"layer must be a fastlstm layer (a fastlstm.layers.Layer, or "
                            f"callable with {', '.join(_LAYER_INTERFACE)}), got "
                            f"{describe(layer)}"
                            + (f" (it lacks {', '.join(missing)})" if missing else ""))
        if layer.returns_list:
            raise ValueError(f"every layer of a Sequential model must return one array, got "
                             f"{layer!r}, which returns a list; use return_state=False (and a "
                             f"merge_mode), or the layers directly")
        name = getattr(layer, "name", None)
        if name is not None and any(getattr(other, "name", None) == name
                                    for other in self.layers):
            raise ValueError(f"every layer of a Sequential model must have its own name, got a "
                             f"second layer named {name!r}; pass another name=")
        self.layers.append(layer)
        self._calls = None
        # Keras 2's way to declare the input, which Keras 3 still takes.
        declared = getattr(self.layers[0], "_input_shape_arg", None)
        if declared is not None:
            try:
                self.build((None,) + tuple(declared))
            except ValueError as error:
                raise ValueError(f"building the model for the input_shape={declared} of its "
                                 f"first layer {layer_label(self.layers[0], 0)}: "
                                 f"{error}") from None

    def pop(self):
        """Remove the last layer and return it."""
        if not self.layers:
            raise IndexError("pop() from a Sequential model with no layers")
        self._calls = None
        return self.layers.pop()

    @property
    def built(self):
        """Whether every layer has its weights."""
        return bool(self.layers) and all(getattr(layer, "built", True) for layer in self.layers)

    def build(self, input_shape):
        """Create every layer's weights for inputs of ``input_shape``.

        Parameters
        ----------
        input_shape : tuple
            The input's shape with the batch axis first, which may be None,
            as in Keras: ``(None, timesteps, features)``, or
            ``(None, timesteps)`` for an ``Embedding`` first; timesteps may
            be None too.
        """
        if not isinstance(input_shape, (tuple, list)) or len(input_shape) < 2 or any(
                d is not None and (not is_int(d) or d < 1) for d in input_shape):
            raise ValueError(f"input_shape must be a tuple (batch, ...) of positive ints or "
                             f"None, with the batch axis first, got {describe(input_shape)}")
        self._check_layers()
        if input_shape[-1] is None and getattr(self.layers[0], "input_is_features", True):
            raise ValueError(f"input_shape must give the number of features (last axis), got "
                             f"{tuple(input_shape)}")
        probe = np.zeros(tuple(1 if d is None else d for d in input_shape))
        # The probe leaves no state behind: a stateful layer would carry it into the first batch.
        fresh = [layer for layer in self.layers
                 if getattr(layer, "stateful", False) and getattr(layer, "states", None) is None]
        with no_grad():
            self._forward(probe, training=False)
        for layer in fresh:
            layer.reset_state()
        self._input_shape = (None,) + tuple(input_shape[1:])

    def _check_layers(self):
        if not self.layers:
            raise ValueError("the model has no layers: pass them to Sequential([...]) or add() "
                             "them")

    # -- forward and backward ---------------------------------------------

    def __call__(self, x, mask=None, training=False):
        """Run the layers on ``x``; the output's mask is kept in ``output_mask``."""
        training = False if training is None else check_bool(training, "training")
        y, self.output_mask = self._forward(x, training, mask)
        return y

    def _forward(self, x, training, mask=None):
        self._check_layers()
        if self._input_shape is None:
            self._input_shape = (None,) + tuple(np.shape(x)[1:])
        # Consecutive LSTM layers run as one call, pipelined where that is
        # faster (fastlstm.layers.stacking); the calls are kept for backward.
        self._calls = plan_calls(self.layers)
        for first, _, call in self._calls:
            layer = self.layers[first]
            if first and np.ndim(x) == 2 and _is_recurrent(layer) \
                    and _is_recurrent(self.layers[first - 1]):
                previous = self.layers[first - 1]
                raise ValueError(
                    f"layer {layer_label(layer, first)} needs sequences (batch, timesteps, "
                    f"features), but the layer before it, {layer_label(previous, first - 1)}, "
                    f"returns only its last output, shape {np.shape(x)}: give that layer return_sequences=True")
            y = call(x, mask=mask, training=training)
            mask = call.compute_mask(x, mask)
            x = y
        return x, mask

    def _last_calls(self):
        """The calls of the last forward pass, ``(first, last, call)``
        (each layer on its own before any)."""
        if self._calls is None:
            return [(i, i, layer) for i, layer in enumerate(self.layers)]
        return self._calls

    def backward(self, dy, input_gradient=True):
        """Backpropagate ``dy`` (the gradient of the loss with respect to the
        output) through every layer; fills each layer's ``grads`` and returns
        the input's gradient (None when the first layer is an Embedding).

        With ``input_gradient=False`` the first layer does not compute the
        input's gradient, which training never reads (its input is data),
        and None is returned; every weight's gradient is the same to the bit.
        """
        self._check_layers()
        for first, _, call in reversed(self._last_calls()):
            dy = call.backward(dy, input_gradient or first > 0)
            if dy is None:
                break
        return dy

    # -- weights -----------------------------------------------------------

    @property
    def trainable(self):
        """Whether training updates the weights of the trainable layers."""
        return self._trainable

    @trainable.setter
    def trainable(self, value):
        self._trainable = check_bool(value, "trainable")
        for layer in self.layers:
            if hasattr(layer, "trainable"):
                layer.trainable = self._trainable

    def _layer_trains(self, layer):
        """Whether training updates ``layer``'s weights."""
        return self._trainable and getattr(layer, "trainable", True)

    @property
    def trainable_weights(self):
        """The arrays training updates, layer after layer."""
        return [array for layer in self.layers if self._layer_trains(layer)
                for array in layer.params.values()]

    @property
    def non_trainable_weights(self):
        """The arrays of frozen layers (all of them when the model is frozen)."""
        return [array for layer in self.layers if not self._layer_trains(layer)
                for array in layer.params.values()]

    @property
    def params(self):
        """Every layer's weights, keyed ``"layer_<i>/<name>"`` (the layers'
        own arrays, not copies): the names of the weights file. The keys
        count layers by position, not by name, so that renaming a layer
        (or a default name numbered differently in another process) keeps
        its weights file readable."""
        return {f"layer_{i}/{name}": array for i, layer in enumerate(self.layers)
                for name, array in layer.params.items()}

    @property
    def grads(self):
        """The gradients of the last ``backward``, keyed as :attr:`params`."""
        return {f"layer_{i}/{name}": array for i, layer in enumerate(self.layers)
                for name, array in layer.grads.items()}

    def count_params(self):
        """The number of weights."""
        return sum(array.size for array in self.params.values())

    def get_weights(self):
        """Copies of every layer's weights, layer after layer (Keras' order)."""
        return [w for layer in self.layers for w in layer.get_weights()]

    def set_weights(self, weights):
        """Set every layer's weights from a list in :meth:`get_weights` order.

        Every shape is checked before anything changes.
        """
        current = self.get_weights()
        if not isinstance(weights, (list, tuple)) or len(weights) != len(current):
            raise ValueError(f"weights must be a list of {len(current)} arrays (get_weights() "
                             f"order), got {describe(weights)}")
        arrays = []
        for k, (new, old) in enumerate(zip(weights, current)):
            array = as_real_array(new, f"weights[{k}]")
            if array.shape != old.shape:
                raise ValueError(f"weights[{k}] must have shape {old.shape}, got {array.shape}")
            arrays.append(array)
        start = 0
        for layer in self.layers:
            count = len(layer.get_weights())
            layer.set_weights(arrays[start:start + count])
            start += count

    def save_weights(self, filepath, overwrite=True):
        """Write the weights to a ``.npz`` file, atomically.

        Parameters
        ----------
        filepath : str or os.PathLike
            Must end in ``.npz``. Arrays are named as :attr:`params`.
        overwrite : bool
            Whether an existing file may be replaced. Default True.

        Notes
        -----
        The arrays go to a temporary file in the same directory, which then
        replaces ``filepath`` in one rename: a crash leaves either the old
        file or the new one, never half of one.
        """
        _model_files.save_weights(self, filepath, overwrite)

    def load_weights(self, filepath):
        """Read weights written by :meth:`save_weights`.

        Every name and shape is checked before anything changes: a file that
        cannot be read, lacks a weight, has one the model does not, or has
        one of another shape raises ``ValueError`` naming it, and the model
        is left as it was.
        """
        _model_files.load_weights(self, filepath)

    def save(self, filepath, overwrite=True):
        """Write the architecture and the weights to one ``.fastlstm`` file,
        atomically; :func:`fastlstm.models.load_model` reads it back.

        Parameters
        ----------
        filepath : str or os.PathLike
            Must end in ``.fastlstm``.
        overwrite : bool
            Whether an existing file may be replaced. Default True.

        Notes
        -----
        The file holds each layer's :meth:`get_config` as JSON and the
        weights as in :meth:`save_weights`. Configuration values must be
        JSON data (a seed as an int, an initializer as its name); the
        optimizer and loss are not saved: ``compile`` the loaded model to
        train it further.
        """
        _model_files.save_model(self, filepath, overwrite)

    def export(self, filepath, format="onnx"):
        """Write the model for inference outside fastlstm, as Keras 3's
        ``model.export(filepath, format="onnx")``.

        The ONNX model (opset 17) computes what :meth:`predict` does, with
        any batch size and any number of time steps. Its input ``"input"``
        is float32 ``(batch, timesteps, features)``, or int64 indices
        ``(batch, timesteps)`` when the first layer is an ``Embedding``; its
        output is ``"output"``. Every ``LSTM`` (and ``Bidirectional``) is one
        ONNX ``LSTM`` node; masks (``Embedding(mask_zero=True)``,
        ``Masking``) give the outputs fastlstm gives, wherever the masked
        steps lie. ``Dropout`` is the identity, as in inference. A model
        after :meth:`quantize` is written with ONNX Runtime's quantized
        operators (``DynamicQuantizeLSTM``, ``DynamicQuantizeMatMul``) and
        its int8 weights.

        Parameters
        ----------
        filepath : str or os.PathLike
            Must end in ``.onnx``. Written atomically (a temporary file in
            the same folder, renamed), replacing an existing file.
        format : {"onnx"}
            The format to write. Default "onnx". It needs the ``onnx``
            package: ``pip install "fastlstm[onnx]"``.

        Raises
        ------
        RuntimeError
            The model is not built yet.
        TypeError
            A layer is not one of fastlstm's own (``LSTM``,
            ``Bidirectional``, ``Dense``, ``Embedding``, ``Dropout``,
            ``Masking``, ``LayerNormalization``).
        ValueError
            An unknown ``format``; a float64 layer (ONNX Runtime's LSTM runs
            float32 only); a stateful layer.
        ImportError
            The ``onnx`` package is not installed.

        Nothing is written when an error is raised.
        """
        check_option(format, "format", _EXPORT_FORMATS)
        path = check_path(filepath, "filepath", ".onnx", "an ONNX model")
        self._check_layers()
        if not self.built or self._input_shape is None:
            raise RuntimeError("the model is not built yet, so there is nothing to export: call "
                               "build(input_shape) or the model on data first")
        _onnx.export(self.layers, self._input_shape, self.name, path)

    def quantize(self, mode):
        """Quantize the model's LSTM, Bidirectional and Dense layers, as
        Keras 3's ``model.quantize(mode)``.

        ``mode="int8"`` (the one fastlstm implements): each such layer's
        weight matrices become int8 with one float32 scale per output column
        (``kernel_scale``, ``recurrent_kernel_scale`` beside them in
        ``params``), and its calls quantize their inputs and hidden states
        to uint8, row by row and step by step, and run integer products
        (AVX-512 VNNI or AVX-VNNI where the CPU has them). Embedding and
        LayerNormalization stay float32. :meth:`predict` and :meth:`evaluate`
        run the quantized model; ``save`` and ``load_model`` keep it
        quantized; it cannot be trained (train the float32 model, then
        quantize). See the guide's serving page for what it costs in
        accuracy and what it saves in time.

        Raises
        ------
        ValueError
            ``mode`` is not ``"int8"``; a layer is already quantized or
            computes in float64 (checked for every layer before any changes).
        RuntimeError
            The model is not built yet.
        """
        _quantize.check_mode(mode)
        self._check_layers()
        if not self.built:
            raise RuntimeError("the model is not built yet, so it has no weights to quantize: "
                               "call build(input_shape) or the model on data first")
        layers = [layer for layer in self.layers if hasattr(layer, "quantize")]
        for layer in layers:
            _quantize.check_quantizable(layer)
        for layer in layers:
            layer.quantize(mode)
        self._calls = None

    # -- summary -------------------------------------------------------------

    def summary(self, print_fn=None):
        """Print each layer's output shape and number of weights.

        Parameters
        ----------
        print_fn : callable or None
            Called with each line; default :func:`print`.
        """
        self._check_layers()
        if not self.built:
            raise RuntimeError("the model is not built yet, so its shapes are unknown: call "
                               "build(input_shape) or the model on data first")
        print_fn = print if print_fn is None else print_fn
        rows = []
        shape = self._input_shape
        for i, layer in enumerate(self.layers):
            shape = None if shape is None else tuple(layer.compute_output_shape(shape))
            count = sum(array.size for array in layer.params.values())
            name = getattr(layer, "name", f"layer_{i}")
            rows.append((f"{name} ({type(layer).__name__})", _format_shape(shape),
                         f"{count:,}"))
        widths = [max(28, *(len(r[0]) + 2 for r in rows)),
                  max(26, *(len(r[1]) + 2 for r in rows)), 12]
        width = sum(widths) + 1
        total = self.count_params()
        trainable = sum(array.size for array in self.trainable_weights)
        print_fn(f'Model: "{self.name}"')
        print_fn("_" * width)
        print_fn(" " + "Layer (type)".ljust(widths[0]) + "Output Shape".ljust(widths[1])
                 + "Param #".rjust(widths[2]))
        print_fn("=" * width)
        for name, shape_text, count in rows:
            print_fn(" " + name.ljust(widths[0]) + shape_text.ljust(widths[1])
                     + count.rjust(widths[2]))
        print_fn("=" * width)
        print_fn(f"Total params: {total:,}")
        print_fn(f"Trainable params: {trainable:,}")
        print_fn(f"Non-trainable params: {total - trainable:,}")
        print_fn("_" * width)


def load_model(filepath):
    """The model saved by :meth:`fastlstm.Sequential.save` at ``filepath``.

    The layers are rebuilt from their configurations, then the weights are
    checked and loaded; the model is not compiled (``compile`` it to train
    it further).

    Raises
    ------
    FileNotFoundError
        No file at ``filepath``.
    ValueError
        The file is not a fastlstm model file, is damaged, names a layer
        fastlstm does not have, or its weights do not fit its layers.
    """
    config, weights, what = _model_files.read_model(filepath)
    try:
        model = Sequential.from_config(config)
    except (TypeError, ValueError) as error:
        raise ValueError(f"{what} describes a model fastlstm cannot build: {error}") from None
    _model_files.fill_model(model, weights, what)
    return model
