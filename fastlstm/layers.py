"""Keras-style layers over the functional LSTM.

A layer holds its weights (``params``), the gradients of its last
``backward`` (``grads``) and what its last call recorded for ``backward``.
It validates and casts what the user gives it, draws dropout masks, and calls
:func:`fastlstm.lstm_forward` / :func:`fastlstm.lstm_backward`; the maths lives
in the kernels behind those two functions.
"""
import contextlib
import inspect
import numbers
import operator
import threading

import numpy as np

from . import _config, initializers
from ._blas import BLAS_Trans, _gemm_memview
from ._validation import as_real_array, check_bool, describe
from .functional import lstm_backward, lstm_forward

__all__ = ["LSTM", "Bidirectional", "Dense", "Embedding", "Dropout", "no_grad"]

_ACTIVATIONS = ("hard_sigmoid", "sigmoid", "tanh")
_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))
_MERGE_MODES = ("concat", "sum", "mul", "ave", None)
_WEIGHT_NAMES = ("kernel", "recurrent_kernel", "bias")

# Keras LSTM arguments with no fastlstm equivalent, and why.
_UNSUPPORTED = {
    "kernel_regularizer": "a regularizer is a term of the loss: add it to your loss and its "
                          "gradient to layer.grads",
    "recurrent_regularizer": "a regularizer is a term of the loss: add it to your loss and its "
                             "gradient to layer.grads",
    "bias_regularizer": "a regularizer is a term of the loss: add it to your loss and its "
                        "gradient to layer.grads",
    "activity_regularizer": "a regularizer is a term of the loss: add it to your loss and its "
                            "gradient to the upstream gradient",
    "kernel_constraint": "constraints belong to the optimizer step: apply them to "
                         "layer.params after each update",
    "recurrent_constraint": "constraints belong to the optimizer step: apply them to "
                            "layer.params after each update",
    "bias_constraint": "constraints belong to the optimizer step: apply them to "
                       "layer.params after each update",
    "unroll": "the time loop is a compiled kernel; there is nothing to unroll",
    "use_cudnn": "fastlstm runs on the CPU",
    "implementation": "the fused kernel is the only implementation",
}

_grad_mode = threading.local()


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


def _grad_enabled():
    return not getattr(_grad_mode, "disabled", False)


def _check_rate(value, name):
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a float in [0, 1), got {describe(value)}")
    if not 0.0 <= value < 1.0:
        raise ValueError(f"{name} must be in [0, 1) (the fraction of units dropped), "
                         f"got {value!r}")
    return float(value)


def _check_activation(value, name):
    if not isinstance(value, str) or value not in _ACTIVATIONS:
        raise ValueError(f"{name} must be one of {list(_ACTIVATIONS)} (the activations the "
                         f"kernel implements), got {describe(value)}")
    return value


def _check_dtype(value):
    try:
        dtype = None if value is None else np.dtype(value)
    except TypeError:
        dtype = None
    # Checked against None first: np.dtype(None) is float64, so None == float64.
    if dtype is None or dtype not in _DTYPES:
        raise ValueError(f"dtype must be 'float32' or 'float64', got {describe(value)}")
    return dtype


def _describe_list(value):
    if isinstance(value, (list, tuple)):
        return f"a {type(value).__name__} of {len(value)}"
    return describe(value)


def _check_shape(array, name, expected, meaning):
    if array.shape != expected:
        raise ValueError(f"{name} must have shape {meaning} = {expected}, got {array.shape}")


def _seed_sequence(seed):
    """The root :class:`numpy.random.SeedSequence` of a ``seed`` argument."""
    if seed is None:
        return np.random.SeedSequence()
    if isinstance(seed, np.random.SeedSequence):
        return seed
    if isinstance(seed, np.random.Generator):
        return np.random.SeedSequence(int(seed.integers(2**63)))
    if isinstance(seed, (bool, np.bool_)) or not isinstance(seed, numbers.Integral):
        raise TypeError(f"seed must be an int, a numpy Generator or None, got {describe(seed)}")
    if seed < 0:
        raise ValueError(f"seed must be non-negative, got {seed}")
    return np.random.SeedSequence(int(seed))


def _children(sequence, count):
    """The first ``count`` children of ``sequence``, without spawning from it
    (which would change what a later spawn returns)."""
    return [np.random.SeedSequence(sequence.entropy, spawn_key=sequence.spawn_key + (k,),
                                   pool_size=sequence.pool_size) for k in range(count)]


def _dropout_mask(rng, shape, rate, dtype):
    """Inverted dropout: zeros with probability ``rate``, else ``1 / (1 - rate)``."""
    keep = rng.random(shape) >= rate
    return keep.astype(dtype) / dtype.type(1.0 - rate)


class _Record:
    """What one recorded call keeps for its ``backward``."""

    __slots__ = ("cache", "input_dropout", "state_given", "zeroed_keep", "any_kept")

    def __init__(self, cache, input_dropout, state_given, zeroed_keep, any_kept):
        self.cache = cache
        self.input_dropout = input_dropout
        self.state_given = state_given
        # The mask in processing order when masked outputs were zeroed.
        self.zeroed_keep = zeroed_keep
        # Per sequence: whether any step was kept (None without a mask).
        self.any_kept = any_kept


class LSTM:
    """Long Short-Term Memory layer, as ``keras.layers.LSTM``.

    Gate order i, f, c, o; ``kernel (input_dim, 4 * units)``,
    ``recurrent_kernel (units, 4 * units)``, ``bias (4 * units,)``; at each step
    ``z = x_t @ kernel + h_{t-1} @ recurrent_kernel + bias``,
    ``c_t = f * c_{t-1} + i * activation(z_c)``, ``h_t = o * activation(c_t)``,
    with ``i, f, o = recurrent_activation(z_i, z_f, z_o)``.

    Parameters
    ----------
    units : int
        Dimensionality of the output space (and of h and c).
    activation : {"tanh", "sigmoid", "hard_sigmoid"}
        Activation of the candidate and of the cell state. Default "tanh".
    recurrent_activation : {"tanh", "sigmoid", "hard_sigmoid"}
        Activation of the input, forget and output gates. Default "sigmoid".
        ``hard_sigmoid`` is Keras 3's ``clip(x / 6 + 0.5, 0, 1)``.
    use_bias : bool
        Whether the layer has a bias. Default True.
    kernel_initializer, recurrent_initializer, bias_initializer : str, Initializer or callable
        See :mod:`fastlstm.initializers`. Defaults "glorot_uniform",
        "orthogonal", "zeros".
    unit_forget_bias : bool
        Set the forget-gate slice of the initial bias to 1 (the other slices
        come from ``bias_initializer``). Default True.
    dropout : float in [0, 1)
        Fraction of the input features dropped in training: one mask per
        sequence, applied at every step. Default 0.
    recurrent_dropout : float in [0, 1)
        Fraction of ``h_{t-1}`` dropped in the recurrent product in training:
        one mask per sequence, shared by the four gates (Keras 3's fused
        implementation; Keras switches to one mask per gate when
        ``recurrent_dropout > 0``), applied inside the fused kernel. Default 0.
    seed : int, numpy.random.Generator, numpy.random.SeedSequence or None
        Makes the initial weights and the dropout masks reproducible.
    return_sequences : bool
        Return the output of every step rather than the last. Default False.
    return_state : bool
        Also return the final states: ``[output, h, c]``. Default False.
    go_backwards : bool
        Process the sequence in reverse; the outputs come in processing order
        and the "last" output is that of the first time step. Default False.
    stateful : bool
        Start each call from the final states of the previous call (same
        batch size) until :meth:`reset_state`. Default False.
    dtype : {"float32", "float64"}
        The dtype of the weights and of the computation; inputs are cast to
        it. Default "float32".

    Notes
    -----
    Keras arguments fastlstm does not support (regularizers, constraints,
    ``unroll``, ``use_cudnn``, ``implementation``) raise ``TypeError`` saying why.

    Examples
    --------
    >>> import numpy as np, fastlstm as fl
    >>> x = np.random.default_rng(0).random((32, 10, 8))
    >>> fl.LSTM(4, seed=0)(x).shape
    (32, 4)
    >>> y, h, c = fl.LSTM(4, return_sequences=True, return_state=True, seed=0)(x)
    >>> y.shape, h.shape, c.shape
    ((32, 10, 4), (32, 4), (32, 4))

    Training: ``backward`` takes the gradient of the loss with respect to
    what the call returned and fills ``grads``:

    >>> layer = fl.LSTM(4, seed=0)
    >>> y = layer(x)
    >>> dx = layer.backward(np.ones_like(y))
    >>> dx.shape, sorted(layer.grads)
    ((32, 10, 8), ['bias', 'kernel', 'recurrent_kernel'])
    """

    def __init__(self, units, activation="tanh", recurrent_activation="sigmoid", use_bias=True,
                 kernel_initializer="glorot_uniform", recurrent_initializer="orthogonal",
                 bias_initializer="zeros", unit_forget_bias=True, *, dropout=0.0,
                 recurrent_dropout=0.0, seed=None, return_sequences=False, return_state=False,
                 go_backwards=False, stateful=False, dtype="float32", **kwargs):
        for name in kwargs:
            if name in _UNSUPPORTED:
                raise TypeError(f"LSTM does not support the Keras argument {name}: "
                                f"{_UNSUPPORTED[name]}")
            raise TypeError(f"LSTM got an unexpected keyword argument {name!r}")
        self._config = dict(
            units=units, activation=activation, recurrent_activation=recurrent_activation,
            use_bias=use_bias, kernel_initializer=kernel_initializer,
            recurrent_initializer=recurrent_initializer, bias_initializer=bias_initializer,
            unit_forget_bias=unit_forget_bias, dropout=dropout,
            recurrent_dropout=recurrent_dropout, seed=seed, return_sequences=return_sequences,
            return_state=return_state, go_backwards=go_backwards, stateful=stateful, dtype=dtype)
        if isinstance(units, (bool, np.bool_)) or not isinstance(units, numbers.Integral):
            raise TypeError(f"units must be a positive int, got {describe(units)}")
        if units < 1:
            raise ValueError(f"units must be a positive int, got {units}")
        self.units = operator.index(units)
        self.activation = _check_activation(activation, "activation")
        self.recurrent_activation = _check_activation(recurrent_activation,
                                                      "recurrent_activation")
        self.use_bias = check_bool(use_bias, "use_bias")
        self.kernel_initializer = initializers.get(kernel_initializer, "kernel_initializer")
        self.recurrent_initializer = initializers.get(recurrent_initializer,
                                                      "recurrent_initializer")
        self.bias_initializer = initializers.get(bias_initializer, "bias_initializer")
        self.unit_forget_bias = check_bool(unit_forget_bias, "unit_forget_bias")
        self.dropout = _check_rate(dropout, "dropout")
        self.recurrent_dropout = _check_rate(recurrent_dropout, "recurrent_dropout")
        self.seed = seed
        weights_seed, dropout_seed = _children(_seed_sequence(seed), 2)
        self._weights_rng = np.random.default_rng(weights_seed)
        self._dropout_rng = np.random.default_rng(dropout_seed)
        self.return_sequences = check_bool(return_sequences, "return_sequences")
        self.return_state = check_bool(return_state, "return_state")
        self.go_backwards = check_bool(go_backwards, "go_backwards")
        self.stateful = check_bool(stateful, "stateful")
        self.dtype = _check_dtype(dtype)

        self.built = False
        self.input_dim = None
        self.params = {}
        self.grads = {}
        self._states = None
        self._record = None
        self._no_record_reason = "backward() needs a forward call first: call the layer"
        # Bidirectional sets this, as Keras does: with return_sequences, masked
        # steps output zeros instead of repeating the previous output.
        self._zero_output_for_mask = False

    def __repr__(self):
        defaults = inspect.signature(LSTM.__init__).parameters
        changed = [f"{k}={v!r}" for k, v in self._config.items()
                   if k != "units" and not (isinstance(v, type(defaults[k].default))
                                            and v == defaults[k].default)]
        return f"LSTM({', '.join([str(self.units)] + changed)})"

    def get_config(self):
        """The constructor arguments, as given: ``LSTM(**layer.get_config())``
        makes a new, unbuilt layer with the same configuration."""
        return dict(self._config)

    # -- weights -----------------------------------------------------------

    def build(self, input_dim):
        """Create the weights for inputs with ``input_dim`` features.

        The first call does this (and :meth:`set_weights` builds from the
        weights' shapes); call it to have weights before any data. Building a
        built layer again does nothing.
        """
        if isinstance(input_dim, (bool, np.bool_)) or not isinstance(input_dim, numbers.Integral):
            raise TypeError(f"input_dim must be a positive int, got {describe(input_dim)}")
        if input_dim < 1:
            raise ValueError(f"input_dim must be a positive int, got {input_dim}")
        input_dim = operator.index(input_dim)
        if self.built:
            if input_dim != self.input_dim:
                raise ValueError(f"the layer is built for input_dim={self.input_dim}, got "
                                 f"input_dim={input_dim}")
            return
        units, dtype, rng = self.units, self.dtype, self._weights_rng
        kernel = initializers._draw(self.kernel_initializer, (input_dim, 4 * units), dtype, rng,
                                    "kernel_initializer")
        recurrent_kernel = initializers._draw(self.recurrent_initializer, (units, 4 * units),
                                              dtype, rng, "recurrent_initializer")
        self.params = {"kernel": kernel, "recurrent_kernel": recurrent_kernel}
        if self.use_bias:
            if self.unit_forget_bias:
                bias = np.concatenate([
                    initializers._draw(self.bias_initializer, (units,), dtype, rng,
                                       "bias_initializer"),
                    np.ones(units, dtype),
                    initializers._draw(self.bias_initializer, (2 * units,), dtype, rng,
                                       "bias_initializer"),
                ])
            else:
                bias = initializers._draw(self.bias_initializer, (4 * units,), dtype, rng,
                                          "bias_initializer")
            self.params["bias"] = bias
        self.input_dim = input_dim
        self.built = True

    def get_weights(self):
        """Copies of ``[kernel, recurrent_kernel, bias]`` (no bias without
        ``use_bias``), Keras' order and shapes; ``[]`` before the layer is built."""
        return [self.params[name].copy() for name in _WEIGHT_NAMES if name in self.params]

    def set_weights(self, weights):
        """Set ``[kernel, recurrent_kernel, bias]`` (Keras' order and shapes).

        Builds the layer when it is not built yet, with ``input_dim`` taken
        from the kernel's rows. Values are cast to the layer's dtype and
        copied into the existing arrays, so references to ``params`` stay
        valid.
        """
        names = [f"weights[{k}] ({name})" for k, name in enumerate(self._weight_names())]
        self._assign(weights, names)

    def _weight_names(self):
        return _WEIGHT_NAMES if self.use_bias else _WEIGHT_NAMES[:2]

    def _assign(self, weights, names):
        expected = self._weight_names()
        if not isinstance(weights, (list, tuple)) or len(weights) != len(expected):
            raise ValueError(f"weights must be a list of {len(expected)} arrays "
                             f"[{', '.join(expected)}] (use_bias={self.use_bias}), got "
                             f"{_describe_list(weights)}")
        arrays = [as_real_array(w, name, self.dtype) for w, name in zip(weights, names)]
        units = self.units
        kernel = arrays[0]
        input_dim = self.input_dim
        if input_dim is None:
            if kernel.ndim != 2 or kernel.shape[0] < 1:
                raise ValueError(f"{names[0]} must have shape (input_dim, 4 * units) = "
                                 f"(input_dim, {4 * units}), got {kernel.shape}")
            input_dim = kernel.shape[0]
        shapes = [((input_dim, 4 * units), "(input_dim, 4 * units)"),
                  ((units, 4 * units), "(units, 4 * units)"),
                  ((4 * units,), "(4 * units,)")]
        for array, name, (shape, meaning) in zip(arrays, names, shapes):
            _check_shape(array, name, shape, meaning)
        if not self.built:
            self.params = {key: np.array(array, order="C")
                           for key, array in zip(expected, arrays)}
            self.input_dim = input_dim
            self.built = True
        else:
            for key, array in zip(expected, arrays):
                np.copyto(self.params[key], array)

    # -- state -------------------------------------------------------------

    @property
    def states(self):
        """``[h, c]`` a stateful layer will start its next call from (copies),
        or None (zeros)."""
        return None if self._states is None else [s.copy() for s in self._states]

    def reset_state(self):
        """Make a stateful layer's next call start from zero states.

        A layer that is not stateful has no state to reset; this does
        nothing then, as in Keras.
        """
        self._states = None

    # -- forward and backward ------------------------------------------------

    def __call__(self, x, initial_state=None, mask=None, training=False):
        """Run the layer.

        Parameters
        ----------
        x : array_like, shape (batch, timesteps, features)
            Real numbers, cast to the layer's dtype.
        initial_state : [h0, c0], each (batch, units), or None
            Zeros when None (or, for a stateful layer, its carried states).
        mask : array_like of bool, shape (batch, timesteps), or None
            True keeps a step; a masked step carries the states over and
            repeats the previous output (zeros before the first kept step).
        training : bool
            Apply ``dropout`` and ``recurrent_dropout``.

        Returns
        -------
        ndarray or list
            The last output ``(batch, units)``, or every output
            ``(batch, timesteps, units)`` with ``return_sequences``; with
            ``return_state``, ``[output, h, c]``.
        """
        return self._call(x, initial_state, mask, training,
                          ("initial_state[0] (h0)", "initial_state[1] (c0)"))

    def _call(self, x, initial_state, mask, training, state_names):
        x = as_real_array(x, "x", self.dtype)
        if x.ndim != 3:
            raise ValueError(f"x must have shape (batch, timesteps, features), got an array "
                             f"with {x.ndim} dimension(s), shape {x.shape}")
        batch, timesteps, features = x.shape
        if min(x.shape) == 0:
            raise ValueError(f"x must have at least one sequence, one timestep and one "
                             f"feature, got shape {x.shape}")
        training = False if training is None else check_bool(training, "training")
        if self.built and features != self.input_dim:
            raise ValueError(f"x has {features} features (last axis), but the layer was "
                             f"built for input_dim={self.input_dim}")
        state, state_given = self._initial_state(initial_state, batch, state_names)
        keep = self._check_mask(mask, batch, timesteps)
        if not self.built:
            self.build(features)

        input_dropout = recurrent_dropout = None
        if training and self.dropout:
            input_dropout = _dropout_mask(self._dropout_rng, (batch, features), self.dropout,
                                          self.dtype)
            x = x * input_dropout[:, None, :]
        if training and self.recurrent_dropout:
            recurrent_dropout = _dropout_mask(self._dropout_rng, (batch, self.units),
                                              self.recurrent_dropout, self.dtype)

        record = _grad_enabled()
        outputs, h, c, cache = lstm_forward(
            x, self.params["kernel"], self.params["recurrent_kernel"], self.params.get("bias"),
            initial_state=state, mask=keep, go_backwards=self.go_backwards,
            return_cache=record, recurrent_dropout_mask=recurrent_dropout,
            activation=self.activation, recurrent_activation=self.recurrent_activation)

        if self.stateful:
            # Copies: the caller owns the h and c returned below.
            self._states = [h.copy(), c.copy()]
        keep_in_order = None
        if keep is not None:
            keep_in_order = keep[:, ::-1] if self.go_backwards else keep
            if self._zero_output_for_mask and self.return_sequences:
                outputs[~keep_in_order] = 0.0
        if record:
            any_kept = None if keep is None else keep.any(axis=1)
            zeroed = keep_in_order if self._zero_output_for_mask and self.return_sequences \
                else None
            self._record = _Record(cache, input_dropout, state_given, zeroed, any_kept)
        else:
            self._record = None
            self._no_record_reason = ("the last call ran inside fastlstm.no_grad(), which "
                                      "records nothing for backward(); call the layer outside "
                                      "no_grad() to train")
        # A copy, so the returned last output does not keep every output alive.
        output = outputs if self.return_sequences else outputs[:, -1].copy()
        return [output, h, c] if self.return_state else output

    def _initial_state(self, initial_state, batch, names):
        if initial_state is None:
            if self.stateful and self._states is not None:
                carried = self._states[0].shape[0]
                if carried != batch:
                    raise ValueError(f"x has batch size {batch}, but this stateful layer "
                                     f"carries states for batch size {carried}; call "
                                     f"reset_state() to start over with another batch size")
                return self._states, False
            return None, False
        if isinstance(initial_state, np.ndarray) or not isinstance(initial_state, (list, tuple)) \
                or len(initial_state) != 2:
            raise ValueError(f"initial_state must be a list [h0, c0] of two arrays of shape "
                             f"(batch, units) = {(batch, self.units)}, got "
                             f"{describe(initial_state)}")
        states = [as_real_array(s, name, self.dtype) for s, name in zip(initial_state, names)]
        for array, name in zip(states, names):
            _check_shape(array, name, (batch, self.units), "(batch, units)")
        return states, True

    @staticmethod
    def _check_mask(mask, batch, timesteps):
        if mask is None:
            return None
        mask = np.asarray(mask)
        if mask.dtype.kind in "iu":
            if not np.isin(mask, (0, 1)).all():
                raise ValueError("mask must hold booleans (or 0 and 1), got integers other "
                                 "than 0 and 1")
            mask = mask.astype(bool)
        if mask.dtype != np.bool_:
            raise TypeError(f"mask must be boolean (True keeps a step), got dtype {mask.dtype}")
        _check_shape(mask, "mask", (batch, timesteps), "(batch, timesteps)")
        return mask

    def backward(self, dy):
        """Backpropagate through the last call.

        Parameters
        ----------
        dy : array_like or list
            Gradient of the loss with respect to what the call returned, in
            the same structure: the output's gradient, or
            ``[d_output, d_h, d_c]`` with ``return_state``; None entries are
            zeros.

        Returns
        -------
        ndarray or list
            ``dx (batch, timesteps, features)``; ``[dx, dh0, dc0]`` when the
            call was given an ``initial_state``. ``grads`` holds the weights'
            gradients (replaced by each backward).
        """
        record = self._record
        if record is None:
            raise RuntimeError(self._no_record_reason)
        cache = record.cache
        batch, timesteps, units = cache.batch, cache.timesteps, cache.units
        if self.return_state:
            if not isinstance(dy, (list, tuple)) or len(dy) != 3:
                raise ValueError(f"dy must be a list [d_output, d_h, d_c] (entries may be "
                                 f"None) because the layer has return_state=True, got "
                                 f"{describe(dy)}")
            d_output, d_h, d_c = dy
        else:
            d_output, d_h, d_c = dy, None, None
        output_name = "dy[0] (d_output)" if self.return_state else "dy"
        output_shape = (batch, timesteps, units) if self.return_sequences else (batch, units)
        d_output = self._grad_array(d_output, output_name, output_shape)
        d_h = self._grad_array(d_h, "dy[1] (d_h)", (batch, units))
        d_c = self._grad_array(d_c, "dy[2] (d_c)", (batch, units))

        grad_outputs = None
        if self.return_sequences:
            grad_outputs = d_output
            if d_output is not None and record.zeroed_keep is not None:
                # Zeroed outputs are constants: their gradient goes nowhere.
                grad_outputs = np.where(record.zeroed_keep[:, :, None], d_output, 0)
        elif d_output is not None:
            # The last output is h_N itself, except for a sequence with no kept
            # step, whose output is a constant zero.
            if record.any_kept is not None:
                d_output = np.where(record.any_kept[:, None], d_output, 0)
            d_h = d_output if d_h is None else d_h + d_output

        self._record = None
        self._no_record_reason = ("backward() was already called for the last call; a call "
                                  "supports one backward(): call the layer again")
        grads = lstm_backward(cache, grad_outputs, d_h, d_c)
        dx = grads.x
        if record.input_dropout is not None:
            dx *= record.input_dropout[:, None, :]
        self.grads.clear()
        self.grads["kernel"] = grads.kernel
        self.grads["recurrent_kernel"] = grads.recurrent_kernel
        if self.use_bias:
            self.grads["bias"] = grads.bias
        if record.state_given:
            return [dx, grads.h0, grads.c0]
        return dx

    def _grad_array(self, value, name, shape):
        if value is None:
            return None
        array = as_real_array(value, name, self.dtype)
        _check_shape(array, name, shape, "of what the call returned")
        return array


class Bidirectional:
    """Bidirectional wrapper, as ``keras.layers.Bidirectional``.

    Runs a copy of ``layer``'s configuration forwards and another with
    ``go_backwards=True``, and merges their outputs. The wrapped layer itself
    is not used: both copies get fresh weights (from seeds derived from
    ``layer.seed``, different for the two directions).

    Parameters
    ----------
    layer : LSTM
        The configuration of both directions (``go_backwards`` must be False).
    merge_mode : {"concat", "sum", "mul", "ave", None}
        How the two outputs combine; None returns them as a list
        ``[forward, backward]``. Default "concat".

    Notes
    -----
    Outputs follow Keras: with ``return_sequences`` the backward layer's
    outputs are reversed to line up with the input's time axis, and masked
    steps output zeros in both directions (for right-padded sequences the
    backward direction reads each sequence's kept steps from its last to its
    first, like a packed bidirectional PyTorch LSTM). With ``return_state``
    the call returns ``[output, h_fw, c_fw, h_bw, c_bw]`` (two outputs first
    when ``merge_mode`` is None); ``initial_state`` is ``[h_fw, c_fw, h_bw, c_bw]``.
    ``get_weights()`` lists the forward layer's three arrays, then the
    backward layer's.

    Examples
    --------
    >>> import numpy as np, fastlstm as fl
    >>> x = np.random.default_rng(0).random((2, 5, 3))
    >>> bi = fl.Bidirectional(fl.LSTM(8, return_sequences=True, seed=0))
    >>> bi(x).shape
    (2, 5, 16)
    >>> y, h_fw, c_fw, h_bw, c_bw = fl.Bidirectional(fl.LSTM(8, return_state=True))(x)
    >>> y.shape, h_bw.shape
    ((2, 16), (2, 8))
    """

    def __init__(self, layer, merge_mode="concat"):
        if not isinstance(layer, LSTM):
            raise TypeError(f"layer must be a fastlstm.LSTM, got {describe(layer)}")
        if not (merge_mode is None or isinstance(merge_mode, str)) \
                or merge_mode not in _MERGE_MODES:
            raise ValueError(f"merge_mode must be one of {list(_MERGE_MODES)}, got "
                             f"{describe(merge_mode)}")
        if layer.go_backwards:
            raise ValueError("layer must have go_backwards=False: Bidirectional makes the "
                             "backward direction itself, got go_backwards=True")
        config = layer.get_config()
        self._layer_repr = repr(layer)
        forward_seed, backward_seed = self._direction_seeds(config["seed"])
        self.forward_layer = LSTM(**dict(config, seed=forward_seed))
        self.backward_layer = LSTM(**dict(config, seed=backward_seed, go_backwards=True))
        self.merge_mode = merge_mode
        self.return_sequences = layer.return_sequences
        self.return_state = layer.return_state
        self.stateful = layer.stateful
        self.units = layer.units
        self.dtype = layer.dtype
        for direction in (self.forward_layer, self.backward_layer):
            direction._zero_output_for_mask = self.return_sequences
        self._merge_operands = None
        self._shape = None

    @staticmethod
    def _direction_seeds(seed):
        if seed is None:
            return None, None
        return _children(_seed_sequence(seed), 2)

    def __repr__(self):
        return f"Bidirectional({self._layer_repr}, merge_mode={self.merge_mode!r})"

    @property
    def built(self):
        return self.forward_layer.built

    def build(self, input_dim):
        """Create both directions' weights for inputs with ``input_dim`` features."""
        self.forward_layer.build(input_dim)
        self.backward_layer.build(input_dim)

    @property
    def params(self):
        """The two layers' weights, keyed ``forward_kernel``, ...,
        ``backward_bias`` (the layers' own arrays, not copies)."""
        return self._prefixed("params")

    @property
    def grads(self):
        """The gradients of the last backward, keyed as :attr:`params`."""
        return self._prefixed("grads")

    def _prefixed(self, attribute):
        merged = {}
        for prefix, layer in (("forward", self.forward_layer), ("backward", self.backward_layer)):
            for key, value in getattr(layer, attribute).items():
                merged[f"{prefix}_{key}"] = value
        return merged

    def get_weights(self):
        """The forward layer's weights, then the backward layer's (copies)."""
        return self.forward_layer.get_weights() + self.backward_layer.get_weights()

    def set_weights(self, weights):
        """Set the forward layer's weights, then the backward layer's; builds
        both when they are not built yet."""
        names = self.forward_layer._weight_names()
        count = 2 * len(names)
        if not isinstance(weights, (list, tuple)) or len(weights) != count:
            raise ValueError(f"weights must be a list of {count} arrays (forward "
                             f"{', '.join(names)}, then backward), got {_describe_list(weights)}")
        half = len(names)
        self.forward_layer._assign(list(weights[:half]), [
            f"weights[{k}] (forward {name})" for k, name in enumerate(names)])
        self.backward_layer._assign(list(weights[half:]), [
            f"weights[{k + half}] (backward {name})" for k, name in enumerate(names)])

    def reset_state(self):
        """Reset both directions' states (see :meth:`LSTM.reset_state`)."""
        self.forward_layer.reset_state()
        self.backward_layer.reset_state()

    def __call__(self, x, initial_state=None, mask=None, training=False):
        """Run both directions and merge (see the class docstring).

        Parameters are those of :meth:`LSTM.__call__`, except that
        ``initial_state`` is ``[h_fw, c_fw, h_bw, c_bw]``.
        """
        forward_state = backward_state = None
        if initial_state is not None:
            if isinstance(initial_state, np.ndarray) or \
                    not isinstance(initial_state, (list, tuple)) or len(initial_state) != 4:
                raise ValueError(f"initial_state must be a list [h_fw, c_fw, h_bw, c_bw] of "
                                 f"four arrays, got {describe(initial_state)}")
            forward_state, backward_state = list(initial_state[:2]), list(initial_state[2:])
        x = as_real_array(x, "x", self.dtype)
        y = self.forward_layer._call(x, forward_state, mask, training,
                                     ("initial_state[0] (h_fw)", "initial_state[1] (c_fw)"))
        y_rev = self.backward_layer._call(x, backward_state, mask, training,
                                          ("initial_state[2] (h_bw)", "initial_state[3] (c_bw)"))
        states = []
        if self.return_state:
            states = y[1:] + y_rev[1:]
            y, y_rev = y[0], y_rev[0]
        if self.return_sequences:
            y_rev = y_rev[:, ::-1]
        self._shape = y.shape
        self._merge_operands = (y, y_rev) if self.merge_mode == "mul" and _grad_enabled() \
            else None

        if self.merge_mode == "concat":
            outputs = [np.concatenate([y, y_rev], axis=-1)]
        elif self.merge_mode == "sum":
            outputs = [y + y_rev]
        elif self.merge_mode == "ave":
            outputs = [(y + y_rev) * self.dtype.type(0.5)]
        elif self.merge_mode == "mul":
            outputs = [y * y_rev]
        else:
            outputs = [y, np.ascontiguousarray(y_rev)]
        if self.return_state or self.merge_mode is None:
            return outputs + states
        return outputs[0]

    def backward(self, dy):
        """Backpropagate through both directions.

        Parameters
        ----------
        dy : array_like or list
            Mirrors what the call returned: the merged output's gradient;
            ``[d_fw, d_bw]`` when ``merge_mode`` is None; followed by
            ``d_h_fw, d_c_fw, d_h_bw, d_c_bw`` with ``return_state``. None
            entries are zeros.

        Returns
        -------
        ndarray or list
            ``dx``, or ``[dx, dh_fw, dc_fw, dh_bw, dc_bw]`` when the call was
            given an ``initial_state``.
        """
        if self._shape is None:
            raise RuntimeError("backward() needs a forward call first: call the layer")
        output_count = 2 if self.merge_mode is None else 1
        if self.return_state or self.merge_mode is None:
            count = output_count + (4 if self.return_state else 0)
            if not isinstance(dy, (list, tuple)) or len(dy) != count:
                raise ValueError(f"dy must be a list of {count} gradients mirroring the "
                                 f"call's outputs (entries may be None), got {describe(dy)}")
            d_outputs, d_states = list(dy[:output_count]), list(dy[output_count:])
        else:
            d_outputs, d_states = [dy], []
        d_y, d_y_rev = self._split_output_grad(d_outputs)
        if self.return_sequences and d_y_rev is not None:
            d_y_rev = d_y_rev[:, ::-1]
        if self.return_state:
            shape_state = (self._shape[0], self.units)
            names = ["d_h_fw", "d_c_fw", "d_h_bw", "d_c_bw"]
            d_states = [None if d is None else
                        self._grad_array(d, f"dy[{output_count + k}] ({name})", shape_state)
                        for k, (d, name) in enumerate(zip(d_states, names))]
            forward_dy, backward_dy = [d_y] + d_states[:2], [d_y_rev] + d_states[2:]
        else:
            forward_dy, backward_dy = d_y, d_y_rev
        forward_grads = self.forward_layer.backward(forward_dy)
        backward_grads = self.backward_layer.backward(backward_dy)
        self._merge_operands = None
        if isinstance(forward_grads, list):
            return [forward_grads[0] + backward_grads[0]] + forward_grads[1:] + backward_grads[1:]
        return forward_grads + backward_grads

    def _split_output_grad(self, d_outputs):
        """The gradients reaching the forward and (re-aligned) backward outputs."""
        shape = self._shape
        if self.merge_mode is None:
            names = ["dy[0] (d_forward)", "dy[1] (d_backward)"]
            return [None if d is None else self._grad_array(d, name, shape)
                    for d, name in zip(d_outputs, names)]
        d = d_outputs[0]
        if d is None:
            return None, None
        name = "dy[0] (d_output)" if self.return_state else "dy"
        if self.merge_mode == "concat":
            d = self._grad_array(d, name, shape[:-1] + (2 * shape[-1],))
            return d[..., :self.units], d[..., self.units:]
        d = self._grad_array(d, name, shape)
        if self.merge_mode == "sum":
            return d, d
        if self.merge_mode == "ave":
            half = d * self.dtype.type(0.5)
            return half, half
        if self._merge_operands is None:
            # The layers below raise the reason (no_grad, or a second backward).
            return d, d
        y, y_rev = self._merge_operands
        return d * y_rev, d * y

    def _grad_array(self, value, name, shape):
        array = as_real_array(value, name, self.dtype)
        _check_shape(array, name, shape, "of what the call returned")
        return array


# -- Dense, Embedding, Dropout -------------------------------------------------

def _check_positive_int(value, name):
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be a positive int, got {describe(value)}")
    if value < 1:
        raise ValueError(f"{name} must be a positive int, got {value}")
    return operator.index(value)


def _reject_kwargs(kwargs, owner, unsupported):
    for name in kwargs:
        if name in unsupported:
            raise TypeError(f"{owner} does not support the Keras argument {name}: "
                            f"{unsupported[name]}")
        raise TypeError(f"{owner} got an unexpected keyword argument {name!r}")


class _Layer:
    """What Dense, Embedding and Dropout share: the record of the last call
    that ``backward`` consumes, and the checks of ``dy``."""

    def _start(self):
        self.params = {}
        self.grads = {}
        self._record = None
        self._no_record_reason = "backward() needs a forward call first: call the layer"

    def _keep(self, record):
        """Keep ``record`` for backward, or nothing inside no_grad()."""
        if _grad_enabled():
            self._record = record
        else:
            self._record = None
            self._no_record_reason = ("the last call ran inside fastlstm.no_grad(), which "
                                      "records nothing for backward(); call the layer outside "
                                      "no_grad() to train")

    def _take_record(self):
        record = self._record
        if record is None:
            raise RuntimeError(self._no_record_reason)
        self._record = None
        self._no_record_reason = ("backward() was already called for the last call; a call "
                                  "supports one backward(): call the layer again")
        return record

    def _grad_array(self, value, shape):
        array = as_real_array(value, "dy", self.dtype)
        _check_shape(array, "dy", shape, "of what the call returned")
        return array

    def get_config(self):
        """The constructor arguments, as given."""
        return dict(self._config)

    def __repr__(self):
        arguments = ", ".join(f"{k}={v!r}" for k, v in self._config.items())
        return f"{type(self).__name__}({arguments})"


_DENSE_ACTIVATIONS = ("linear", "relu", "sigmoid", "tanh", "softmax")
_DENSE_UNSUPPORTED = {
    "kernel_regularizer": "a regularizer is a term of the loss: add it to your loss and its "
                          "gradient to layer.grads",
    "bias_regularizer": "a regularizer is a term of the loss: add it to your loss and its "
                        "gradient to layer.grads",
    "activity_regularizer": "a regularizer is a term of the loss: add it to your loss and its "
                            "gradient to the upstream gradient",
    "kernel_constraint": "constraints belong to the optimizer step: apply them to "
                         "layer.params after each update",
    "bias_constraint": "constraints belong to the optimizer step: apply them to "
                       "layer.params after each update",
    "lora_rank": "fastlstm has no low-rank adaptation",
}


def _sigmoid(z):
    # exp of a non-positive number only, so nothing overflows.
    e = np.exp(-np.abs(z))
    return np.where(z >= 0, 1 / (1 + e), e / (1 + e))


def _matmul(a, b, transa=False, transb=False, out=None, accumulate=False):
    """``op(a) @ op(b)`` (plus ``out`` when ``accumulate``), on fastlstm's
    BLAS wrapper and single-threaded.

    NumPy's ``@`` would run on NumPy's own multi-threaded BLAS, whose threads
    keep spinning after each product and take the cores from the LSTM
    kernels' threads: on two cores that halved the speed of a training step
    of an LSTM followed by a Dense layer.
    """
    rows = a.shape[1] if transa else a.shape[0]
    cols = b.shape[0] if transb else b.shape[1]
    if out is None:
        out = np.empty((rows, cols), dtype=a.dtype)
    with _config.single_threaded_blas():
        _gemm_memview(BLAS_Trans.Trans if transa else BLAS_Trans.NoTrans,
                      BLAS_Trans.Trans if transb else BLAS_Trans.NoTrans, a, b, out,
                      1.0, 1.0 if accumulate else 0.0)
    return out


def _softmax(z):
    e = np.exp(z - np.max(z, axis=-1, keepdims=True))
    e /= np.sum(e, axis=-1, keepdims=True)
    return e


class Dense(_Layer):
    """Densely connected layer on the last axis, as ``keras.layers.Dense``.

    ``y = activation(x @ kernel + bias)`` with ``kernel (input_dim, units)``
    and ``bias (units,)``, for inputs ``(batch, features)`` or
    ``(batch, timesteps, features)`` (any rank of at least 2: the same
    weights apply at every position). A mask passes through unchanged, as
    in Keras.

    Parameters
    ----------
    units : int
        Dimensionality of the output's last axis.
    activation : {None, "linear", "relu", "sigmoid", "tanh", "softmax"}
        Default None (linear). For a classifier, prefer None with a loss
        ``from_logits=True``: it is more accurate than a softmax or sigmoid
        followed by a cross-entropy on probabilities.
    use_bias : bool
        Default True.
    kernel_initializer, bias_initializer : str, Initializer or callable
        Defaults "glorot_uniform" and "zeros".
    seed : int, numpy.random.Generator, numpy.random.SeedSequence or None
        Makes the initial weights reproducible.
    dtype : {"float32", "float64"}
        The dtype of the weights and of the computation. Default "float32".

    Examples
    --------
    >>> import numpy as np, fastlstm as fl
    >>> from fastlstm.layers import Dense
    >>> Dense(3, seed=0)(np.ones((2, 5, 4))).shape
    (2, 5, 3)
    """

    def __init__(self, units, activation=None, use_bias=True,
                 kernel_initializer="glorot_uniform", bias_initializer="zeros", *, seed=None,
                 dtype="float32", **kwargs):
        _reject_kwargs(kwargs, "Dense", _DENSE_UNSUPPORTED)
        self._config = dict(units=units, activation=activation, use_bias=use_bias,
                            kernel_initializer=kernel_initializer,
                            bias_initializer=bias_initializer, seed=seed, dtype=dtype)
        self.units = _check_positive_int(units, "units")
        activation = "linear" if activation is None else activation
        if not isinstance(activation, str) or activation not in _DENSE_ACTIVATIONS:
            raise ValueError(f"activation must be None or one of {list(_DENSE_ACTIVATIONS)}, "
                             f"got {describe(activation)}")
        self.activation = activation
        self.use_bias = check_bool(use_bias, "use_bias")
        self.kernel_initializer = initializers.get(kernel_initializer, "kernel_initializer")
        self.bias_initializer = initializers.get(bias_initializer, "bias_initializer")
        self.seed = seed
        self._weights_rng = np.random.default_rng(_seed_sequence(seed))
        self.dtype = _check_dtype(dtype)
        self.built = False
        self.input_dim = None
        self._start()

    def _weight_names(self):
        return ("kernel", "bias") if self.use_bias else ("kernel",)

    def build(self, input_dim):
        """Create the weights for inputs with ``input_dim`` features (the last
        axis); building a built layer again does nothing."""
        input_dim = _check_positive_int(input_dim, "input_dim")
        if self.built:
            if input_dim != self.input_dim:
                raise ValueError(f"the layer is built for input_dim={self.input_dim}, got "
                                 f"input_dim={input_dim}")
            return
        self.params = {"kernel": initializers._draw(
            self.kernel_initializer, (input_dim, self.units), self.dtype, self._weights_rng,
            "kernel_initializer")}
        if self.use_bias:
            self.params["bias"] = initializers._draw(
                self.bias_initializer, (self.units,), self.dtype, self._weights_rng,
                "bias_initializer")
        self.input_dim = input_dim
        self.built = True

    def get_weights(self):
        """Copies of ``[kernel, bias]`` (``[kernel]`` without ``use_bias``);
        ``[]`` before the layer is built."""
        return [self.params[name].copy() for name in self._weight_names() if name in self.params]

    def set_weights(self, weights):
        """Set ``[kernel, bias]``, building the layer from the kernel's shape
        when it is not built; values are copied into the existing arrays."""
        expected = self._weight_names()
        if not isinstance(weights, (list, tuple)) or len(weights) != len(expected):
            raise ValueError(f"weights must be a list of {len(expected)} arrays "
                             f"[{', '.join(expected)}] (use_bias={self.use_bias}), got "
                             f"{_describe_list(weights)}")
        names = [f"weights[{k}] ({name})" for k, name in enumerate(expected)]
        arrays = [as_real_array(w, name, self.dtype) for w, name in zip(weights, names)]
        input_dim = self.input_dim
        if input_dim is None:
            if arrays[0].ndim != 2 or arrays[0].shape[0] < 1:
                raise ValueError(f"{names[0]} must have shape (input_dim, units) = "
                                 f"(input_dim, {self.units}), got {arrays[0].shape}")
            input_dim = arrays[0].shape[0]
        shapes = [((input_dim, self.units), "(input_dim, units)"), ((self.units,), "(units,)")]
        for array, name, (shape, meaning) in zip(arrays, names, shapes):
            _check_shape(array, name, shape, meaning)
        if not self.built:
            self.params = {key: np.array(a, order="C") for key, a in zip(expected, arrays)}
            self.input_dim = input_dim
            self.built = True
        else:
            for key, array in zip(expected, arrays):
                np.copyto(self.params[key], array)

    def compute_output_shape(self, input_shape):
        """``input_shape`` with its last axis replaced by ``units``."""
        return tuple(input_shape[:-1]) + (self.units,)

    def compute_mask(self, x, mask=None):
        """The mask passes through unchanged."""
        return mask

    def __call__(self, x, training=False):
        """Apply the layer to ``x`` of shape ``(batch, ..., features)``.

        ``training`` is accepted for a uniform interface; Dense behaves the
        same in training and inference.
        """
        x = as_real_array(x, "x", self.dtype)
        if x.ndim < 2:
            raise ValueError(f"x must have shape (batch, ..., features), got an array with "
                             f"{x.ndim} dimension(s), shape {x.shape}")
        if self.built and x.shape[-1] != self.input_dim:
            raise ValueError(f"x has {x.shape[-1]} features (last axis), but the layer was "
                             f"built for input_dim={self.input_dim}")
        if training is not None:
            check_bool(training, "training")
        if not self.built:
            self.build(x.shape[-1])
        if x.size == 0:
            raise ValueError(f"x must have at least one sample and one feature, got shape "
                             f"{x.shape}")
        x2 = np.ascontiguousarray(x.reshape(-1, x.shape[-1]))
        if self.use_bias:
            z = np.repeat(self.params["bias"][None, :], x2.shape[0], axis=0)
            _matmul(x2, self.params["kernel"], out=z, accumulate=True)
        else:
            z = _matmul(x2, self.params["kernel"])
        activation = self.activation
        if activation == "relu":
            y = np.maximum(z, 0)
        elif activation == "sigmoid":
            y = _sigmoid(z).astype(self.dtype, copy=False)
        elif activation == "tanh":
            y = np.tanh(z)
        elif activation == "softmax":
            y = _softmax(z)
        else:
            y = z
        # What backward needs: the input, and the output for the activation's derivative.
        self._keep((x2, y, x.shape))
        return y.reshape(x.shape[:-1] + (self.units,))

    def backward(self, dy):
        """Backpropagate through the last call.

        Parameters
        ----------
        dy : array_like
            Gradient of the loss with respect to the output.

        Returns
        -------
        ndarray
            ``dx``, the input's shape; ``grads`` holds ``kernel`` (and
            ``bias``) gradients, replaced by each backward.
        """
        x2, y, x_shape = self._take_record()
        dy = self._grad_array(dy, x_shape[:-1] + (self.units,)).reshape(-1, self.units)
        activation = self.activation
        if activation == "relu":
            dz = dy * (y > 0)
        elif activation == "sigmoid":
            dz = dy * y * (1 - y)
        elif activation == "tanh":
            dz = dy * (1 - y * y)
        elif activation == "softmax":
            dz = y * (dy - np.sum(dy * y, axis=-1, keepdims=True))
        else:
            dz = dy
        dz = np.ascontiguousarray(dz)
        self.grads = {"kernel": _matmul(x2, dz, transa=True)}
        if self.use_bias:
            self.grads["bias"] = dz.sum(axis=0)
        return _matmul(dz, self.params["kernel"], transb=True).reshape(x_shape)


_EMBEDDING_UNSUPPORTED = {
    "embeddings_regularizer": "a regularizer is a term of the loss: add it to your loss and "
                              "its gradient to layer.grads",
    "activity_regularizer": "a regularizer is a term of the loss: add it to your loss and its "
                            "gradient to the upstream gradient",
    "embeddings_constraint": "constraints belong to the optimizer step: apply them to "
                             "layer.params after each update",
    "sparse": "gradients are dense arrays",
    "lora_rank": "fastlstm has no low-rank adaptation",
    "input_length": "the layer takes sequences of any length",
}


class Embedding(_Layer):
    """Turns integer indices into dense vectors, as ``keras.layers.Embedding``.

    ``y[..., :] = embeddings[x[...]]`` with ``embeddings (input_dim, output_dim)``.

    Parameters
    ----------
    input_dim : int
        Size of the vocabulary: indices are in ``[0, input_dim)``.
    output_dim : int
        Dimension of the vectors.
    embeddings_initializer : str, Initializer or callable
        Default "uniform" (Keras' name for ``RandomUniform(-0.05, 0.05)``).
    mask_zero : bool
        Whether index 0 is padding: :meth:`compute_mask` then returns
        ``x != 0``, the mask an LSTM consumes (``Sequential`` passes it on),
        and ``input_dim`` must count the padding index. Default False.
    seed : int, numpy.random.Generator, numpy.random.SeedSequence or None
        Makes the initial vectors reproducible.
    dtype : {"float32", "float64"}
        Default "float32".

    Examples
    --------
    >>> import numpy as np
    >>> from fastlstm.layers import Embedding
    >>> embedding = Embedding(10, 4, mask_zero=True, seed=0)
    >>> tokens = np.array([[3, 1, 0, 0]])
    >>> embedding(tokens).shape, embedding.compute_mask(tokens).tolist()
    ((1, 4, 4), [[True, True, False, False]])
    """

    def __init__(self, input_dim, output_dim, embeddings_initializer="uniform",
                 mask_zero=False, *, seed=None, dtype="float32", **kwargs):
        _reject_kwargs(kwargs, "Embedding", _EMBEDDING_UNSUPPORTED)
        self._config = dict(input_dim=input_dim, output_dim=output_dim,
                            embeddings_initializer=embeddings_initializer, mask_zero=mask_zero,
                            seed=seed, dtype=dtype)
        self.input_dim = _check_positive_int(input_dim, "input_dim")
        self.output_dim = _check_positive_int(output_dim, "output_dim")
        if isinstance(embeddings_initializer, str) and embeddings_initializer == "uniform":
            embeddings_initializer = initializers.RandomUniform(-0.05, 0.05)
        self.embeddings_initializer = initializers.get(embeddings_initializer,
                                                       "embeddings_initializer")
        self.mask_zero = check_bool(mask_zero, "mask_zero")
        self.seed = seed
        self._weights_rng = np.random.default_rng(_seed_sequence(seed))
        self.dtype = _check_dtype(dtype)
        self.built = False
        self._start()

    def build(self, input_dim=None):
        """Create the embeddings, ``(self.input_dim, output_dim)``.

        Their shape comes from the constructor, so the argument (a uniform
        interface with the other layers, like Keras' ``input_shape``) is
        ignored. Building a built layer again does nothing.
        """
        if self.built:
            return
        self.params = {"embeddings": initializers._draw(
            self.embeddings_initializer, (self.input_dim, self.output_dim), self.dtype,
            self._weights_rng, "embeddings_initializer")}
        self.built = True

    def get_weights(self):
        """A copy of ``[embeddings]``; ``[]`` before the layer is built."""
        return [self.params["embeddings"].copy()] if self.built else []

    def set_weights(self, weights):
        """Set ``[embeddings]`` (building the layer if needed)."""
        if not isinstance(weights, (list, tuple)) or len(weights) != 1:
            raise ValueError(f"weights must be a list of 1 array [embeddings], got "
                             f"{_describe_list(weights)}")
        array = as_real_array(weights[0], "weights[0] (embeddings)", self.dtype)
        _check_shape(array, "weights[0] (embeddings)", (self.input_dim, self.output_dim),
                     "(input_dim, output_dim)")
        if not self.built:
            self.params = {"embeddings": np.array(array, order="C")}
            self.built = True
        else:
            np.copyto(self.params["embeddings"], array)

    def compute_output_shape(self, input_shape):
        """``input_shape`` with a last axis of ``output_dim`` added."""
        return tuple(input_shape) + (self.output_dim,)

    def compute_mask(self, x, mask=None):
        """``x != 0`` with ``mask_zero``, else None (no mask)."""
        if not self.mask_zero:
            return None
        return np.asarray(x) != 0

    def _indices(self, x):
        array = as_real_array(x, "x")
        if array.dtype.kind == "f":
            if not np.all(np.isfinite(array)) or np.any(array != np.round(array)):
                raise ValueError("x must hold integer indices, got non-integer values")
        indices = array.astype(np.intp)
        if indices.size and (indices.min() < 0 or indices.max() >= self.input_dim):
            bad = indices[(indices < 0) | (indices >= self.input_dim)].flat[0]
            raise ValueError(f"x must hold indices in [0, input_dim) = [0, {self.input_dim}), "
                             f"got {bad}")
        return indices

    def __call__(self, x, training=False):
        """Look up the vectors of the indices ``x`` (any shape): the result
        has shape ``x.shape + (output_dim,)``. ``training`` changes nothing."""
        indices = self._indices(x)
        if training is not None:
            check_bool(training, "training")
        if not self.built:
            self.build()
        self._keep(indices)
        return self.params["embeddings"][indices]

    def backward(self, dy):
        """Accumulate ``grads["embeddings"]`` from the last call.

        Returns None: the indices have no gradient.
        """
        indices = self._take_record()
        dy = self._grad_array(dy, indices.shape + (self.output_dim,))
        grad = np.zeros_like(self.params["embeddings"])
        np.add.at(grad, indices.reshape(-1), dy.reshape(-1, self.output_dim))
        self.grads = {"embeddings": grad}
        return None


class Dropout(_Layer):
    """Sets a fraction ``rate`` of the inputs to 0 in training, as ``keras.layers.Dropout``.

    Kept values are scaled by ``1 / (1 - rate)`` (inverted dropout), so
    inference (``training=False``) is the identity. A mask passes through.

    Parameters
    ----------
    rate : float in [0, 1)
        Fraction of the inputs dropped.
    seed : int, numpy.random.Generator, numpy.random.SeedSequence or None
        Makes the dropped positions reproducible.
    dtype : {"float32", "float64"}
        The dtype inputs are cast to. Default "float32".

    Examples
    --------
    >>> import numpy as np
    >>> from fastlstm.layers import Dropout
    >>> y = Dropout(0.5, seed=0)(np.ones((2, 4)), training=True)
    >>> sorted(set(y.ravel().tolist()))
    [0.0, 2.0]
    """

    def __init__(self, rate, *, seed=None, dtype="float32", **kwargs):
        _reject_kwargs(kwargs, "Dropout", {
            "noise_shape": "one mask per value is drawn; for a mask shared over time steps "
                           "use LSTM's dropout argument"})
        self._config = dict(rate=rate, seed=seed, dtype=dtype)
        self.rate = _check_rate(rate, "rate")
        self.seed = seed
        self._rng = np.random.default_rng(_seed_sequence(seed))
        self.dtype = _check_dtype(dtype)
        self.built = True
        self._start()

    def build(self, input_dim=None):
        """Dropout has no weights: nothing to build."""

    def get_weights(self):
        """``[]``: Dropout has no weights."""
        return []

    def set_weights(self, weights):
        """Accepts only ``[]``."""
        if not isinstance(weights, (list, tuple)) or len(weights) != 0:
            raise ValueError(f"weights must be an empty list (Dropout has no weights), got "
                             f"{_describe_list(weights)}")

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)

    def compute_mask(self, x, mask=None):
        """The mask passes through unchanged."""
        return mask

    def __call__(self, x, training=False):
        """Drop values when ``training`` is True; else return ``x`` (cast)."""
        x = as_real_array(x, "x", self.dtype)
        training = False if training is None else check_bool(training, "training")
        keep = None
        if training and self.rate:
            keep = _dropout_mask(self._rng, x.shape, self.rate, self.dtype)
            x = x * keep
        self._keep((keep, x.shape))
        return x

    def backward(self, dy):
        """``dy`` times the scaled mask of the last call (``dy`` itself in inference)."""
        keep, shape = self._take_record()
        dy = self._grad_array(dy, shape)
        return dy if keep is None else dy * keep
