"""The one base of every fastlstm layer, and what layers share.

A layer holds its weights (``params``), the gradients of its last
``backward`` (``grads``) and what its last call recorded for ``backward``.
It validates and casts what the user gives it, draws its dropout masks and
initial weights from seeded generators, and computes through
:mod:`fastlstm.functional`; the maths lives in the kernels behind it.

:class:`Layer` owns what every layer has in common, so that a model asks any
layer the same questions: ``build``, ``get_weights`` / ``set_weights``,
``get_config`` / ``from_config``, ``compute_mask`` and
``compute_output_shape``, and the record a call keeps for ``backward``
(nothing inside :func:`no_grad`).
"""
import collections
import contextlib
import re
import threading
import warnings

import numpy as np

from .._quantize import as_int8
from .._validation import (as_real_array, check_bool, check_int, check_shape, describe,
                           describe_list, is_int, reject_kwargs)

__all__ = ["Layer", "no_grad"]

_grad_mode = threading.local()

# How many layers of each default name this process has made (Keras' get_uid).
_name_counts = collections.Counter()
_name_lock = threading.Lock()

_NO_CALL = "backward() needs a forward call first: call the layer"
_INSIDE_NO_GRAD = ("the last call ran inside fastlstm.no_grad(), which records nothing for "
                   "backward(); call the layer outside no_grad() to train")
_ALREADY_USED = ("backward() was already called for the last call; a call supports one "
                 "backward(): call the layer again")

# Keras arguments that several layers take and fastlstm has no use for, and why.
REGULARIZERS_AND_CONSTRAINTS = {
    "kernel_regularizer": "a regularizer is a term of the loss: add it to your loss and its "
                          "gradient to layer.grads",
    "recurrent_regularizer": "a regularizer is a term of the loss: add it to your loss and its "
                             "gradient to layer.grads",
    "bias_regularizer": "a regularizer is a term of the loss: add it to your loss and its "
                        "gradient to layer.grads",
    "embeddings_regularizer": "a regularizer is a term of the loss: add it to your loss and "
                              "its gradient to layer.grads",
    "gamma_regularizer": "a regularizer is a term of the loss: add it to your loss and its "
                         "gradient to layer.grads",
    "beta_regularizer": "a regularizer is a term of the loss: add it to your loss and its "
                        "gradient to layer.grads",
    "activity_regularizer": "a regularizer is a term of the loss: add it to your loss and its "
                            "gradient to the upstream gradient",
    "kernel_constraint": "constraints belong to the optimizer step: apply them to "
                         "layer.params after each update",
    "recurrent_constraint": "constraints belong to the optimizer step: apply them to "
                            "layer.params after each update",
    "bias_constraint": "constraints belong to the optimizer step: apply them to "
                       "layer.params after each update",
    "embeddings_constraint": "constraints belong to the optimizer step: apply them to "
                             "layer.params after each update",
    "gamma_constraint": "constraints belong to the optimizer step: apply them to "
                        "layer.params after each update",
    "beta_constraint": "constraints belong to the optimizer step: apply them to "
                       "layer.params after each update",
    "lora_rank": "fastlstm has no low-rank adaptation",
}


# Keras 2 arguments that declared a model's input on a layer, and what replaces them.
_INPUT_ARGUMENTS = {
    "batch_input_shape": "Keras 3 dropped it; give input_shape, the shape of one sample "
                         "without the batch axis (e.g. (timesteps, features)), or build the "
                         "model: model.build((batch, timesteps, features))",
    "input_dim": "give input_shape, the shape of one sample without the batch axis, whose "
                 "last entry is the features (e.g. (timesteps, features)), or build the "
                 "model: model.build((None, timesteps, features))",
}


def check_input_shape(value, axes=None):
    """A layer's ``input_shape`` argument: a tuple of positive ints or None,
    one per axis of a sample (the batch axis left out); ``axes`` names the
    axes when the layer needs a given number of them."""
    expected = ("a tuple of positive ints or None, one per axis of a sample without the "
                "batch axis, e.g. (timesteps, features) for an LSTM")
    if not isinstance(value, (tuple, list)):
        hint = f"; for one axis write ({value},)" if is_int(value) else ""
        raise TypeError(f"input_shape must be {expected}, got {describe(value)}{hint}")
    if not value or any(d is not None and (not is_int(d) or d < 1) for d in value):
        raise ValueError(f"input_shape must be {expected}, got {describe(value)}")
    if axes is not None and len(value) != len(axes):
        raise ValueError(f"input_shape must be ({', '.join(axes)}), the shape of one sample "
                         f"without the batch axis, got {describe(value)}")
    return tuple(None if d is None else int(d) for d in value)


@contextlib.contextmanager
def no_grad():
    """Run layers without recording anything for ``backward``.

    Inside the block layers call :func:`fastlstm.lstm_forward` with
    ``return_cache=False``, the inference path that keeps no per-step
    workspace; ``backward`` after such a call raises ``RuntimeError``. The
    setting is per thread, and blocks nest.

    Examples
    --------
    >>> import numpy as np, fastlstm as fl
    >>> layer = fl.LSTM(4, seed=0)
    >>> with fl.no_grad():
    ...     y = layer(np.ones((2, 3, 5)))
    >>> y.shape
    (2, 4)
    """
    previous = getattr(_grad_mode, "disabled", False)
    _grad_mode.disabled = True
    try:
        yield
    finally:
        _grad_mode.disabled = previous


def grad_enabled():
    """Whether layer calls record what ``backward`` needs (False inside :func:`no_grad`)."""
    return not getattr(_grad_mode, "disabled", False)


def seed_sequence(seed):
    """The root :class:`numpy.random.SeedSequence` of a ``seed`` argument."""
    if seed is None:
        return np.random.SeedSequence()
    if isinstance(seed, np.random.SeedSequence):
        return seed
    if isinstance(seed, np.random.Generator):
        return np.random.SeedSequence(int(seed.integers(2**63)))
    if not is_int(seed):
        raise TypeError(f"seed must be an int, a numpy Generator or None, got {describe(seed)}")
    if seed < 0:
        raise ValueError(f"seed must be non-negative, got {seed}")
    return np.random.SeedSequence(int(seed))


def seed_children(sequence, count):
    """The first ``count`` children of ``sequence``, without spawning from it
    (which would change what a later spawn returns)."""
    return [np.random.SeedSequence(sequence.entropy, spawn_key=sequence.spawn_key + (k,),
                                   pool_size=sequence.pool_size) for k in range(count)]


def snake_case(class_name):
    """``"LayerNormalization"`` -> ``"layer_normalization"``, ``"LSTM"`` -> ``"lstm"``."""
    words = re.sub(r"(.)([A-Z][a-z]+)", r"\1_\2", class_name)
    return re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", words).lower()


def unique_name(prefix):
    """``prefix`` the first time this process asks, then ``prefix_1``,
    ``prefix_2``, ...: the default names of Keras' layers."""
    with _name_lock:
        count = _name_counts[prefix]
        _name_counts[prefix] += 1
    return prefix if count == 0 else f"{prefix}_{count}"


def check_name(name, class_name):
    """A layer's ``name`` argument, or a fresh default from its class name."""
    if name is None:
        return unique_name(snake_case(class_name))
    if not isinstance(name, str) or not name:
        raise TypeError(f"name must be a non-empty str or None, got {describe(name)}")
    if "/" in name:
        raise ValueError(f"name must not contain '/' (it separates a layer from its weights "
                         f"in weight names), got {name!r}")
    return name


def layer_label(layer, index):
    """``'lstm_1' (LSTM)``: the layer at ``index`` of a model, as summaries
    and errors name it (any object with the layer interface)."""
    return f"{getattr(layer, 'name', f'layer_{index}')!r} ({type(layer).__name__})"


def dropout_mask(rng, shape, rate, dtype):
    """Inverted dropout: zeros with probability ``rate``, else ``1 / (1 - rate)``."""
    keep = rng.random(shape) >= rate
    return keep.astype(dtype) / dtype.type(1.0 - rate)


class Layer:
    """The base of every fastlstm layer.

    A subclass calls ``super().__init__(config, name, trainable, kwargs,
    unsupported)`` with its constructor arguments as given, the keyword
    arguments it does not name, and the Keras arguments it does not support
    (with why), sets ``dtype``, and implements
    ``__call__(x, mask=None, training=False)`` and
    ``backward(dy, input_gradient=True)`` (which returns None without
    ``input_gradient``); a layer with weights implements
    :meth:`_weight_names`, :meth:`_weight_shapes` and :meth:`_initial_weights`,
    and the base does the rest: building, getting and setting weights (every
    shape checked before anything changes), configuration, and the record a
    call keeps for ``backward``.

    Every layer has a ``name`` (Keras' default: the class name in snake case,
    numbered from the second layer of a class on, ``lstm``, ``lstm_1``, ...)
    and a ``trainable`` flag: a layer with ``trainable = False`` keeps its
    weights through ``fit`` and ``train_on_batch``.

    Every layer takes Keras' ``input_shape`` keyword, the shape of one sample
    without the batch axis (``(timesteps, features)`` for an ``LSTM``), with
    a ``UserWarning``, as Keras 3 does: a :class:`~fastlstm.Sequential` whose
    first layer has it is built at once, as by ``model.build((None,) +
    input_shape)``, the way to prefer (fastlstm has no ``Input`` layer).
    Other layers of a model ignore it; it is not part of the configuration.
    """

    #: Whether the input's last axis holds features, whose number builds the
    #: weights (False for an Embedding, whose input is integer indices).
    input_is_features = True
    # The number of input features the layer is built for (None before).
    input_dim = None

    # The input_shape argument, as a tuple (None when not given).
    _input_shape_arg = None
    # The axes of one sample, when the layer needs a given number of them.
    _sample_axes = None
    #: ``"int8"`` once :meth:`quantize` has run on a layer that has it, else None.
    quantization_mode = None

    def __init__(self, config, name=None, trainable=True, kwargs=None, unsupported=None):
        kwargs = dict(kwargs or {})
        input_shape = kwargs.pop("input_shape", None)
        reject_kwargs(kwargs, type(self).__name__, dict(_INPUT_ARGUMENTS, **(unsupported or {})))
        self._config = config
        self.name = check_name(name, type(self).__name__)
        if input_shape is not None:
            self._input_shape_arg = check_input_shape(input_shape, self._sample_axes)
            warnings.warn(f"{self._label()}: input_shape declares a model's input the Keras 2 "
                          f"way; a Sequential whose first layer has it is built from it (other "
                          f"layers ignore it), but prefer building the model: "
                          f"model.build({(None,) + self._input_shape_arg})", UserWarning,
                          stacklevel=3)
        self.trainable = trainable
        self._built = False
        self._params = {}
        self._grads = {}
        self._record = None
        self._no_record_reason = _NO_CALL

    # -- configuration -------------------------------------------------------

    def get_config(self):
        """The constructor arguments, as given, with the layer's ``name`` and
        its current ``trainable`` flag: ``type(layer)(**layer.get_config())``
        makes a new, unbuilt layer with the same configuration."""
        return dict(name=self.name, trainable=self.trainable, **self._config)

    @classmethod
    def from_config(cls, config):
        """A new, unbuilt layer from :meth:`get_config`'s dict."""
        if not isinstance(config, dict):
            raise TypeError(f"config must be a dict of constructor arguments, got "
                            f"{describe(config)}")
        return cls(**config)

    def _label(self):
        """``layer 'lstm_1' (LSTM)``: how errors name the layer."""
        return f"layer {self.name!r} ({type(self).__name__})"

    def __repr__(self):
        arguments = ", ".join(f"{k}={v!r}" for k, v in self._config.items())
        return f"{type(self).__name__}({arguments})"

    @property
    def trainable(self):
        """Whether training updates the layer's weights (Keras' flag). A
        frozen layer still passes gradients on to the layers below it."""
        return self._trainable

    @trainable.setter
    def trainable(self, value):
        self._trainable = check_bool(value, "trainable")
        for layer in self._sublayers():
            layer.trainable = self._trainable

    def _sublayers(self):
        """The layers inside this one, whose ``trainable`` follows its own."""
        return []

    # -- weights -------------------------------------------------------------

    @property
    def built(self):
        """Whether the layer has its weights."""
        return self._built

    @property
    def params(self):
        """The weights by name (the layer's own arrays, not copies)."""
        return self._params

    @property
    def grads(self):
        """The gradients of the last ``backward``, keyed as :attr:`params`."""
        return self._grads

    def _weight_names(self):
        """The names of the weights, in :meth:`get_weights` order."""
        return ()

    def _weight_shapes(self, input_dim):
        """``(shape, meaning)`` of each weight for inputs of ``input_dim`` features."""
        return []

    def _initial_weights(self, input_dim):
        """Freshly initialised weights for ``input_dim`` features, by name."""
        return {}

    def _weight_dtypes(self):
        """The weights whose dtype is not the layer's, by name (a quantized
        layer's int8 matrices)."""
        return {}

    def _weights_note(self):
        """Said after the expected names when a weights list has the wrong length."""
        return ""

    def build(self, input_dim=None):
        """Create the weights for inputs with ``input_dim`` features.

        The first call does this (and :meth:`set_weights` builds from the
        weights' shapes); call it to have weights before any data. Building a
        built layer again does nothing.
        """
        if self.input_is_features:
            input_dim = check_int(input_dim, "input_dim")
        if self.built:
            if self.input_is_features and input_dim != self.input_dim:
                raise ValueError(f"the layer is built for input_dim={self.input_dim}, got "
                                 f"input_dim={input_dim}")
            return
        # C order, as set_weights builds them: the kernels and the fused
        # optimizer updates take them as they are (the orthogonal
        # initializer's QR gives Fortran order).
        self._params = {name: np.ascontiguousarray(array)
                        for name, array in self._initial_weights(input_dim).items()}
        self._finish_build(input_dim)

    def _finish_build(self, input_dim):
        if self.input_is_features:
            self.input_dim = input_dim
        self._built = True

    def get_weights(self):
        """Copies of the weights in Keras' order and shapes; ``[]`` before
        the layer is built."""
        return [self._params[name].copy() for name in self._weight_names()
                if name in self._params]

    def set_weights(self, weights):
        """Set the weights from a list in :meth:`get_weights` order.

        Builds the layer when it is not built yet, with ``input_dim`` taken
        from the first weight's rows. Values are cast to the layer's dtype
        and copied into the existing arrays, so references to ``params``
        stay valid. Every shape is checked before anything changes.
        """
        self._assign(weights, [f"weights[{k}] ({name})"
                               for k, name in enumerate(self._weight_names())])

    def _assign(self, weights, labels):
        """:meth:`set_weights`, with each weight called by its ``labels`` entry in errors."""
        names = self._weight_names()
        if isinstance(weights, (list, tuple)) and not names and not weights:
            return
        if not isinstance(weights, (list, tuple)) or len(weights) != len(names):
            plural = "" if len(names) == 1 else "s"
            raise ValueError(f"weights must be a list of {len(names)} array{plural} "
                             f"[{', '.join(names)}]{self._weights_note()}, got "
                             f"{describe_list(weights)}")
        dtypes = self._weight_dtypes()
        arrays = [as_int8(w, label) if dtypes.get(name) == np.int8
                  else as_real_array(w, label, self.dtype)
                  for w, label, name in zip(weights, labels, names)]
        input_dim = self.input_dim
        if self.input_is_features and not self.built:
            input_dim = self._input_dim_of(arrays[0], labels[0])
        for array, label, (shape, meaning) in zip(arrays, labels,
                                                  self._weight_shapes(input_dim)):
            check_shape(array, label, shape, meaning)
        if not self.built:
            self._params = {name: np.array(array, order="C")
                            for name, array in zip(names, arrays)}
            self._finish_build(input_dim)
        else:
            for name, array in zip(names, arrays):
                np.copyto(self._params[name], array)

    @property
    def trainable_weights(self):
        """The weights training updates: all of ``params`` (in their order)
        when the layer is trainable, else none."""
        return list(self.params.values()) if self.trainable else []

    @property
    def non_trainable_weights(self):
        """The weights training leaves alone: all of ``params`` when the
        layer is frozen, else none."""
        return [] if self.trainable else list(self.params.values())

    def _input_dim_of(self, first_weight, label):
        """The ``input_dim`` an unbuilt layer's first weight says (its rows)."""
        shape, meaning = self._weight_shapes(None)[0]
        if first_weight.ndim != 2 or first_weight.shape[0] < 1:
            raise ValueError(f"{label} must have shape {meaning} = (input_dim, {shape[1]}), "
                             f"got {first_weight.shape}")
        return first_weight.shape[0]

    def count_params(self):
        """The number of weights."""
        return sum(array.size for array in self.params.values())

    # -- shapes and masks ----------------------------------------------------

    @property
    def returns_list(self):
        """Whether a call returns a list of arrays rather than one array."""
        return False

    def compute_output_shape(self, input_shape):
        """The output's shape for inputs of ``input_shape`` (batch axis first)."""
        return tuple(input_shape)

    def compute_mask(self, x, mask=None):
        """The mask the layer passes on for input ``x`` masked by ``mask``; it
        passes through unchanged unless the layer says otherwise."""
        return mask

    # -- the record a call keeps for backward ---------------------------------

    def _keep(self, record):
        """Keep ``record`` for backward, or nothing inside no_grad()."""
        if grad_enabled():
            self._record = record
        else:
            self._record = None
            self._no_record_reason = _INSIDE_NO_GRAD

    def drop_record(self, reason):
        """Forget the last call's record, as when another object ran the
        call (a stack of layers run as one): ``backward`` then raises
        RuntimeError with ``reason``."""
        self._record = None
        self._no_record_reason = reason

    def _peek_record(self):
        """The record of the last call, left in place (RuntimeError if there is none)."""
        if self._record is None:
            raise RuntimeError(self._no_record_reason)
        return self._record

    def _take_record(self):
        """The record of the last call, which one ``backward`` consumes."""
        record = self._peek_record()
        self._record = None
        self._no_record_reason = _ALREADY_USED
        return record

    def _grad_array(self, value, name, shape):
        """An upstream gradient ``value`` as an array of the layer's dtype and ``shape``."""
        array = as_real_array(value, name, self.dtype)
        check_shape(array, name, shape, "of what the call returned")
        return array
