"""The LSTM layer, as ``keras.layers.LSTM``, on the functional LSTM."""
import inspect

import numpy as np

from .. import _kernels, _quantize, initializers
from .._engine import kernel_copy
from .._packed import PackedLSTM
from .. import _plan
from ..functional import check_sizes, lstm_backward, run_lstm_forward
from .._validation import (as_mask, as_real_array, as_sequences, as_state, as_step_states,
                           check_activation, check_bool, check_dtype, check_features,
                           check_int, check_rate, check_state_list, describe)
from .base import (REGULARIZERS_AND_CONSTRAINTS, Layer, dropout_mask, grad_enabled,
                   seed_children, seed_sequence)

__all__ = ["LSTM", "LSTMCell"]

_WEIGHT_NAMES = ("kernel", "recurrent_kernel", "bias")
_SCALE_NAMES = ("kernel_scale", "recurrent_kernel_scale")
_PROJECTION = "projection_kernel"

# Keras LSTM arguments with no fastlstm equivalent, and why.
_UNSUPPORTED = dict(
    {name: REGULARIZERS_AND_CONSTRAINTS[name] for name in (
        "kernel_regularizer", "recurrent_regularizer", "bias_regularizer",
        "activity_regularizer", "kernel_constraint", "recurrent_constraint", "bias_constraint")},
    unroll="the time loop is a compiled kernel; there is nothing to unroll",
    use_cudnn="fastlstm runs on the CPU",
    implementation="the fused kernel is the only implementation",
)


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


class LSTM(Layer):
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
    proj_units : int or None
        A projected LSTM (LSTMP, ``torch.nn.LSTM``'s ``proj_size``): the
        hidden state is ``h_t = (o * activation(c_t)) @ projection_kernel``,
        of ``proj_units`` values, while ``c_t`` keeps ``units``. The outputs,
        ``h`` (and ``h0``) then have ``proj_units`` values, the
        ``recurrent_kernel`` is ``(proj_units, 4 * units)`` and the layer
        has a fourth weight, ``projection_kernel (units, proj_units)``,
        last in :meth:`get_weights`. Named after ``units``, which Keras'
        layers use for every output size, as PyTorch's ``proj_size``
        follows its ``hidden_size``. Usually smaller than ``units``: the
        recurrent product then shrinks with it. Default None (no
        projection). Keras has no projected LSTM, so a projected layer has
        no Keras or ONNX counterpart to convert or export to.
    projection_initializer : str, Initializer or callable
        Initializer of ``projection_kernel``. Default "glorot_uniform".
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
    name, trainable
        See :class:`~fastlstm.layers.Layer`; the default names are
        ``lstm``, ``lstm_1``, ...

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

    A projected LSTM:

    >>> y, h, c = fl.LSTM(16, proj_units=4, return_state=True, seed=0)(x)
    >>> y.shape, h.shape, c.shape
    ((32, 4), (32, 4), (32, 16))
    """

    _sample_axes = ("timesteps", "features")

    def __init__(self, units, activation="tanh", recurrent_activation="sigmoid", use_bias=True,
                 kernel_initializer="glorot_uniform", recurrent_initializer="orthogonal",
                 bias_initializer="zeros", unit_forget_bias=True, *, dropout=0.0,
                 recurrent_dropout=0.0, seed=None, return_sequences=False, return_state=False,
                 go_backwards=False, stateful=False, dtype="float32", name=None, trainable=True,
                 proj_units=None, projection_initializer="glorot_uniform", **kwargs):
        super().__init__(dict(
            units=units, activation=activation, recurrent_activation=recurrent_activation,
            use_bias=use_bias, kernel_initializer=kernel_initializer,
            recurrent_initializer=recurrent_initializer, bias_initializer=bias_initializer,
            unit_forget_bias=unit_forget_bias, dropout=dropout,
            recurrent_dropout=recurrent_dropout, seed=seed, return_sequences=return_sequences,
            return_state=return_state, go_backwards=go_backwards, stateful=stateful,
            dtype=dtype, proj_units=proj_units, projection_initializer=projection_initializer),
            name, trainable, kwargs, _UNSUPPORTED)
        self.units = check_int(units, "units")
        self.proj_units = None if proj_units is None else check_int(proj_units, "proj_units")
        self.projection_initializer = initializers.get(projection_initializer,
                                                       "projection_initializer")
        self.activation = check_activation(activation, "activation")
        self.recurrent_activation = check_activation(recurrent_activation, "recurrent_activation")
        self.use_bias = check_bool(use_bias, "use_bias")
        self.kernel_initializer = initializers.get(kernel_initializer, "kernel_initializer")
        self.recurrent_initializer = initializers.get(recurrent_initializer,
                                                      "recurrent_initializer")
        self.bias_initializer = initializers.get(bias_initializer, "bias_initializer")
        self.unit_forget_bias = check_bool(unit_forget_bias, "unit_forget_bias")
        self.dropout = check_rate(dropout, "dropout")
        self.recurrent_dropout = check_rate(recurrent_dropout, "recurrent_dropout")
        self.seed = seed
        weights_seed, dropout_seed = seed_children(seed_sequence(seed), 2)
        self._weights_rng = np.random.default_rng(weights_seed)
        self._dropout_rng = np.random.default_rng(dropout_seed)
        self.return_sequences = check_bool(return_sequences, "return_sequences")
        self.return_state = check_bool(return_state, "return_state")
        self.go_backwards = check_bool(go_backwards, "go_backwards")
        self.stateful = check_bool(stateful, "stateful")
        self.dtype = check_dtype(dtype)
        self._states = None
        self._cell = None
        self._served_lstm = None
        self._int8 = None
        # Bidirectional sets this, as Keras does: with return_sequences, masked
        # steps output zeros instead of repeating the previous output.
        self._zero_output_for_mask = False

    def __repr__(self):
        defaults = inspect.signature(LSTM.__init__).parameters
        changed = [f"{k}={v!r}" for k, v in self._config.items()
                   if k != "units" and not (isinstance(v, type(defaults[k].default))
                                            and v == defaults[k].default)]
        return f"LSTM({', '.join([str(self.units)] + changed)})"

    # -- weights -----------------------------------------------------------

    @property
    def output_units(self):
        """The size of the outputs and of ``h``: ``proj_units`` for a
        projected LSTM, else ``units``."""
        return self.units if self.proj_units is None else self.proj_units

    def _weight_names(self):
        names = _WEIGHT_NAMES if self.use_bias else _WEIGHT_NAMES[:2]
        if self.proj_units is not None:
            names = names + (_PROJECTION,)
        return names + _SCALE_NAMES if self.quantization_mode else names

    def _weight_shapes(self, input_dim):
        units = self.units
        if self.proj_units is None:
            recurrent = ((units, 4 * units), "(units, 4 * units)")
        else:
            recurrent = ((self.proj_units, 4 * units), "(proj_units, 4 * units)")
        shapes = {"kernel": ((input_dim, 4 * units), "(input_dim, 4 * units)"),
                  "recurrent_kernel": recurrent,
                  "bias": ((4 * units,), "(4 * units,)"),
                  _PROJECTION: ((units, self.proj_units), "(units, proj_units)"),
                  "kernel_scale": ((4 * units,), "(4 * units,)"),
                  "recurrent_kernel_scale": ((4 * units,), "(4 * units,)")}
        return [shapes[name] for name in self._weight_names()]

    def _weight_dtypes(self):
        if not self.quantization_mode:
            return super()._weight_dtypes()
        return {"kernel": np.int8, "recurrent_kernel": np.int8}

    def _weights_note(self):
        if self.proj_units is None:
            return f" (use_bias={self.use_bias})"
        return f" (use_bias={self.use_bias}, proj_units={self.proj_units})"

    def _initial_weights(self, input_dim):
        units, dtype, rng = self.units, self.dtype, self._weights_rng
        kernel = initializers._draw(self.kernel_initializer, (input_dim, 4 * units), dtype, rng,
                                    "kernel_initializer")
        recurrent_kernel = initializers._draw(self.recurrent_initializer,
                                              (self.output_units, 4 * units), dtype, rng,
                                              "recurrent_initializer")
        weights = {"kernel": kernel, "recurrent_kernel": recurrent_kernel}
        if self.quantization_mode:
            weights["kernel"], kernel_scale = _quantize.quantize_columns(kernel, "kernel")
            weights["recurrent_kernel"], recurrent_scale = _quantize.quantize_columns(
                recurrent_kernel, "recurrent_kernel")
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
            weights["bias"] = bias
        if self.proj_units is not None:
            weights[_PROJECTION] = initializers._draw(
                self.projection_initializer, (units, self.proj_units), dtype, rng,
                "projection_initializer")
        if self.quantization_mode:
            weights["kernel_scale"], weights["recurrent_kernel_scale"] = (kernel_scale,
                                                                          recurrent_scale)
        return weights

    # -- int8 ----------------------------------------------------------------

    def quantize(self, mode):
        """Quantize the layer's weights, as Keras 3's ``layer.quantize(mode)``.

        ``mode="int8"`` (the one fastlstm implements): ``kernel`` and
        ``recurrent_kernel`` become int8 with one float32 scale per gate
        column (``kernel_scale``, ``recurrent_kernel_scale``, in ``params``
        beside them); the bias stays float32. Calls then run the integer
        kernels (see :doc:`/guide/serving`); the layer runs inference only.
        Build the layer first; float64 layers are refused (the integer
        products dequantize to float32).
        """
        _quantize.check_mode(mode)
        if not self.built:
            raise RuntimeError(f"{self._label()} is not built yet, so it has no weights to "
                               f"quantize: call it on data or build(input_dim) first")
        _quantize.check_quantizable(self)
        params = self._params
        kernel, kernel_scale = _quantize.quantize_columns(params["kernel"], "kernel")
        recurrent, recurrent_scale = _quantize.quantize_columns(params["recurrent_kernel"],
                                                                "recurrent_kernel")
        quantized = {"kernel": kernel, "recurrent_kernel": recurrent}
        if self.use_bias:
            quantized["bias"] = params["bias"]
        quantized["kernel_scale"] = kernel_scale
        quantized["recurrent_kernel_scale"] = recurrent_scale
        self._params = quantized
        self._grads = {}
        self.quantization_mode = mode
        self._served_lstm = None
        self._cell = None
        self.drop_record(_quantize.training_refused(self))

    def _int8_forward(self, x, h, c, keep, go_backwards):
        """The quantized forward pass: outputs (processing order); the final
        states are written over ``h`` and ``c``."""
        params = self._params
        packed = self._int8
        kernel = _quantize.PackedInt8.kept(packed and packed[0], params["kernel"],
                                           params["kernel_scale"])
        recurrent = _quantize.PackedInt8.kept(packed and packed[1], params["recurrent_kernel"],
                                              params["recurrent_kernel_scale"])
        self._int8 = (kernel, recurrent)
        kernels = _kernels.current()
        batch, timesteps = x.shape[:2]
        threads = _plan.call_threads(_plan.forward_flops(x.shape, self.units))[0]
        mask = None if keep is None else np.ascontiguousarray(keep, np.uint8)
        return kernels.int8_lstm_forward(
            np.ascontiguousarray(x, np.float32), h, c, mask, go_backwards,
            *kernel.arguments(), *recurrent.arguments(), params.get("bias"),
            kernels.Activation[self.activation.upper()],
            kernels.Activation[self.recurrent_activation.upper()], threads,
            _quantize.use_portable())

    # -- shapes and masks ----------------------------------------------------

    @property
    def returns_list(self):
        return self.return_state

    def compute_output_shape(self, input_shape):
        """``(batch, timesteps, units)`` with ``return_sequences``, else
        ``(batch, units)`` (``proj_units`` for a projected LSTM)."""
        if self.return_sequences:
            return tuple(input_shape[:2]) + (self.output_units,)
        return (input_shape[0], self.output_units)

    def compute_mask(self, x, mask=None):
        """The mask of the returned sequence (in processing order with
        ``go_backwards``); None without ``return_sequences``, as in Keras."""
        if mask is None or not self.return_sequences:
            return None
        return mask[:, ::-1] if self.go_backwards else mask

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
            (h0 (batch, proj_units) for a projected LSTM)
            Zeros when None (or, for a stateful layer, its carried states).
        mask : array_like of bool (or of integers 0 and 1), shape (batch, timesteps), or None
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
        return self._call(x, self._state_list(initial_state), mask, training,
                          ("initial_state[0] (h0)", "initial_state[1] (c0)"))

    def _call(self, x, initial_state, mask, training, state_names):
        """The call; ``initial_state`` None or a list of two entries."""
        x = as_sequences(x, "x", self.dtype, self._label())
        batch, timesteps, features = x.shape
        training = False if training is None else check_bool(training, "training")
        if self.built:
            check_features(features, "x", self.input_dim, "the layer's input_dim",
                           self._label())
        state, state_given = self._initial_state(initial_state, batch, state_names)
        keep = None if mask is None else as_mask(mask, "mask", (batch, timesteps))
        if not self.built:
            self.build(features)
        check_sizes(batch, timesteps, features, self.units)

        if self.quantization_mode:
            return self._quantized_call(x, state, keep, training)
        input_dropout, recurrent_dropout = self.dropout_masks(batch, training)
        if input_dropout is not None:
            x = x * input_dropout[:, None, :]

        record = grad_enabled()
        projected = self.proj_units is not None
        if (timesteps == 1 and keep is None and recurrent_dropout is None and not record
                and not projected):
            return self._one_step(x[:, 0], state)
        if record or recurrent_dropout is not None or projected:
            outputs, h, c, cache = run_lstm_forward(
                "fast", x, self._params["kernel"], self._params["recurrent_kernel"],
                self._params.get("bias"), state, keep, self.go_backwards, record,
                recurrent_dropout, self.activation, self.recurrent_activation,
                self._params.get(_PROJECTION))
        else:
            # Copies (or zeros): the kernel writes the final states over them.
            h, c = (kernel_copy(s, (batch, self.units), self.dtype)
                    for s in (state or (None, None)))
            outputs, h, c = self.packed_lstm()._forward(x, h, c, keep, self.go_backwards)
            cache = None

        if self.stateful:
            # Copies: the caller owns the h and c returned below.
            self._states = [h.copy(), c.copy()]
        keep_in_order = None
        if keep is not None:
            keep_in_order = keep[:, ::-1] if self.go_backwards else keep
            if self._zero_output_for_mask and self.return_sequences:
                outputs[~keep_in_order] = 0.0
        any_kept = None if keep is None else keep.any(axis=1)
        zeroed = keep_in_order if self._zero_output_for_mask and self.return_sequences else None
        self._keep(_Record(cache, input_dropout, state_given, zeroed, any_kept))
        # A copy, so the returned last output does not keep every output alive.
        output = outputs if self.return_sequences else outputs[:, -1].copy()
        return [output, h, c] if self.return_state else output

    def _quantized_call(self, x, state, keep, training):
        """``_call`` of a quantized layer: inference only, recording nothing."""
        if training:
            raise ValueError(f"training=True: {_quantize.training_refused(self)}")
        batch = x.shape[0]
        h, c = (kernel_copy(s, (batch, self.units), self.dtype)
                for s in (state or (None, None)))
        outputs = self._int8_forward(x, h, c, keep, self.go_backwards)
        if self.stateful:
            self._states = [h.copy(), c.copy()]
        if keep is not None and self._zero_output_for_mask and self.return_sequences:
            keep_in_order = keep[:, ::-1] if self.go_backwards else keep
            outputs[~keep_in_order] = 0.0
        self.drop_record(_quantize.training_refused(self))
        output = outputs if self.return_sequences else outputs[:, -1].copy()
        return [output, h, c] if self.return_state else output

    def packed_lstm(self):
        """The layer's weights as a :class:`~fastlstm.PackedLSTM`: what its
        calls that record nothing run on (and a model's pipelined stack of
        such layers), as an inference session keeps its weights.

        Made on the first such call and kept, with the workspace of the last
        input shape, for as long as the weights hold the same bits: each
        call compares them with the packed copy (a read of the weights,
        cheaper than packing them), so no way of changing them
        (``set_weights``, an optimizer step, a write into ``params``) can
        leave it stale. Build the layer first; a quantized or projected layer
        has none."""
        if self.quantization_mode:
            raise RuntimeError(f"{self._label()} is quantized to int8: its calls run the "
                               f"integer kernels, not a PackedLSTM")
        self._refuse_projection("packed_lstm")
        params = self._params
        weights = (params["kernel"], params["recurrent_kernel"], params.get("bias"))
        served = self._served_lstm
        if served is None or not served._holds(*weights):
            served = self._served_lstm = PackedLSTM(
                *weights, activation=self.activation,
                recurrent_activation=self.recurrent_activation)
        return served

    def _one_step(self, x, state):
        """A call on one step of every sequence, recording nothing: the
        step reads the weights where they lie (nothing packed, copied or
        kept), as :attr:`cell` does."""
        batch = x.shape[0]
        if state is None:
            h = c = np.zeros((batch, self.units), self.dtype)
        else:
            h, c = (np.ascontiguousarray(s) for s in state)
        h, c = self.cell._run(np.ascontiguousarray(x), h, c)
        if self.stateful:
            self._states = [h.copy(), c.copy()]
        self._keep(None)
        output = h[:, None, :] if self.return_sequences else h
        return [output, h.copy(), c] if self.return_state else output

    @property
    def cell(self):
        """The layer's one-step interface, as ``keras.layers.LSTMCell``:
        ``h, [h, c] = layer.cell(x_t, [h, c])``. See :class:`LSTMCell`."""
        self._refuse_projection("cell")
        if self._cell is None:
            self._cell = LSTMCell(self)
        return self._cell

    def _refuse_projection(self, what):
        if self.proj_units is not None:
            raise NotImplementedError(
                f"{what} is not available for a projected LSTM (proj_units="
                f"{self.proj_units}); call the layer on sequences instead")

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
        hidden = "(batch, units)" if self.proj_units is None else "(batch, proj_units)"
        return [as_state(initial_state[0], names[0], self.dtype, (batch, self.output_units),
                         hidden),
                as_state(initial_state[1], names[1], self.dtype, (batch, self.units),
                         "(batch, units)")], True

    @staticmethod
    def _state_list(initial_state):
        return (None if initial_state is None
                else check_state_list(initial_state, "initial_state", "[h0, c0]"))

    def backward(self, dy, input_gradient=True):
        """Backpropagate through the last call.

        Parameters
        ----------
        dy : array_like or list
            Gradient of the loss with respect to what the call returned, in
            the same structure: the output's gradient, or
            ``[d_output, d_h, d_c]`` with ``return_state``; None entries are
            zeros.
        input_gradient : bool
            Compute ``dx``. False skips its product where nothing reads it
            (the first layer of a model, whose input is data); ``dx`` is
            then None and the weights' gradients are the same to the bit.

        Returns
        -------
        ndarray or list
            ``dx (batch, timesteps, features)``; ``[dx, dh0, dc0]`` when the
            call was given an ``initial_state``. ``grads`` holds the weights'
            gradients (replaced by each backward).
        """
        input_gradient = check_bool(input_gradient, "input_gradient")
        record = self._peek_record()
        cache = record.cache
        batch, timesteps, units = cache.batch, cache.timesteps, self.output_units
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
        d_output = self._optional_grad(d_output, output_name, output_shape)
        d_h = self._optional_grad(d_h, "dy[1] (d_h)", (batch, units))
        d_c = self._optional_grad(d_c, "dy[2] (d_c)", (batch, self.units))

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

        self._take_record()
        grads = lstm_backward(cache, grad_outputs, d_h, d_c, input_gradient)
        dx = grads.x
        if dx is not None and record.input_dropout is not None:
            dx *= record.input_dropout[:, None, :]
        self.take_gradients(grads)
        if record.state_given:
            return [dx, grads.h0, grads.c0]
        return dx

    # -- what a stack of layers runs this layer by (layers/stacking.py) -------

    @property
    def kernel_weights(self):
        """``(kernel, recurrent_kernel, bias)`` as the functional doors take
        them (the layer's own arrays; bias None without one). A projected
        layer's ``projection_kernel`` is in ``params``."""
        return self._params["kernel"], self._params["recurrent_kernel"], self._params.get("bias")

    def dropout_masks(self, batch, training):
        """``(input, recurrent)`` dropout multipliers for a call on ``batch``
        sequences: (batch, input_dim) and (batch, units), each None where
        its rate is 0 or not ``training``; drawn in this order from the
        layer's generator, whoever runs the layer."""
        draw = training and self.dropout
        input_dropout = (dropout_mask(self._dropout_rng, (batch, self.input_dim), self.dropout,
                                      self.dtype) if draw else None)
        recurrent = (dropout_mask(self._dropout_rng, (batch, self.output_units),
                                  self.recurrent_dropout, self.dtype)
                     if training and self.recurrent_dropout else None)
        return input_dropout, recurrent

    def take_gradients(self, grads):
        """Make ``grads`` (an :class:`~fastlstm.LSTMGradients`) the layer's
        weight gradients, as its ``backward`` does."""
        self._grads.clear()
        self._grads["kernel"] = grads.kernel
        self._grads["recurrent_kernel"] = grads.recurrent_kernel
        if self.use_bias:
            self._grads["bias"] = grads.bias
        if self.proj_units is not None:
            self._grads[_PROJECTION] = grads.projection_kernel

    def _optional_grad(self, value, name, shape):
        return None if value is None else self._grad_array(value, name, shape)


class LSTMCell:
    """One step of an LSTM layer, with Keras' ``LSTMCell`` interface.

    ``layer.cell`` is the cell of ``layer`` (built by its first call, or by
    ``layer.build(input_dim)``): it shares the layer's weights, so it sees
    every change to them (``set_weights``, an optimizer step, a write into
    ``layer.params``) at its next call. For loops that carry their own
    state, such as sampling a character at a time:

    >>> import numpy as np, fastlstm as fl
    >>> layer = fl.LSTM(8, seed=0)
    >>> layer.build(3)
    >>> h = c = np.zeros((2, 8), np.float32)
    >>> for x_t in np.ones((5, 2, 3), np.float32):
    ...     output, (h, c) = layer.cell(x_t, [h, c])
    >>> output.shape, output is h
    ((2, 8), True)

    A call runs the step of :func:`~fastlstm.lstm_forward` on one time step,
    with the same results (to the bit where that one computes each step's
    input product in the step, as at the sizes sampling uses). It reads the
    weights where they lie rather than packing a copy, allocates only the
    two arrays it returns and records nothing for ``backward``: it is the
    inference path. Dropout does not apply (``training=True`` on a layer
    with dropout raises), as in a Keras cell called outside training.
    """

    def __init__(self, layer):
        self._layer = layer
        self._step = None

    @property
    def units(self):
        """The layer's units."""
        return self._layer.units

    @property
    def state_size(self):
        """``[units, units]``: the sizes of h and c, as Keras' cell."""
        return [self._layer.units, self._layer.units]

    @property
    def output_size(self):
        """``units``."""
        return self._layer.units

    def get_initial_state(self, batch_size):
        """``[h, c]``, zeros of shape ``(batch_size, units)`` in the layer's dtype."""
        batch_size = check_int(batch_size, "batch_size")
        shape = (batch_size, self._layer.units)
        return [np.zeros(shape, self._layer.dtype), np.zeros(shape, self._layer.dtype)]

    def __call__(self, inputs, states, training=False):
        """One step: ``(h, [h, c])`` from ``inputs (batch, input_dim)`` and
        ``states = [h, c]``, each ``(batch, units)``. New arrays; the
        arguments are not modified."""
        layer = self._layer
        x = inputs
        if not (type(x) is np.ndarray and x.dtype == layer.dtype and x.ndim == 2
                and x.flags.c_contiguous):
            x = np.ascontiguousarray(as_real_array(inputs, "inputs", layer.dtype))
            if x.ndim != 2 or 0 in x.shape:
                raise ValueError(f"{layer._label()} cell: inputs must have shape (batch, "
                                 f"input_dim), one step of every sequence, got shape "
                                 f"{x.shape}")
        if not layer.built:
            layer.build(x.shape[1])
        elif x.shape[1] != layer.input_dim:
            raise ValueError(f"{layer._label()} cell: inputs has {x.shape[1]} features (last "
                             f"axis), but the layer was built for input_dim={layer.input_dim}")
        if training is not False and check_bool(training, "training") and (
                layer.dropout or layer.recurrent_dropout):
            raise ValueError(f"{layer._label()} cell: training=True would apply dropout, "
                             f"which the cell's inference step does not; train the layer "
                             f"on whole sequences")
        h, c = as_step_states(states, layer.dtype, (x.shape[0], layer.units))
        h, c = self._run(x, h, c)
        return h, [h, c]

    def _run(self, x, h, c):
        """The step on checked arrays: new ``h, c``."""
        layer = self._layer
        if layer.quantization_mode:
            h, c = h.copy(), c.copy()
            layer._int8_forward(x[:, None, :], h, c, None, False)
            return h, c
        params = layer._params
        step = self._step
        if (step is None or step.kernel is not params["kernel"]
                or step.recurrent_kernel is not params["recurrent_kernel"]
                or step.bias is not params.get("bias", step.bias)):
            kernels = _kernels.current()
            step = self._step = kernels.Step(
                params["kernel"], params["recurrent_kernel"], params.get("bias"),
                kernels.Activation[self._layer.activation.upper()],
                kernels.Activation[self._layer.recurrent_activation.upper()])
        return step(x, h, c)
