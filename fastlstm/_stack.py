"""Stacks of LSTM layers as one call: :func:`lstm_stack_forward` and
:func:`lstm_stack_backward`.

A stack is what Keras builds from consecutive ``LSTM(..., return_sequences=True)``
layers: each layer reads the outputs of the one below. On several threads
the fast backend can run the whole stack as one pipelined call (a
wavefront: while layer l computes step t, layer l + 1 computes step t - 1,
each layer on a thread of its own over the whole batch; the backward pass
runs the same way from the top); otherwise, and with the reference backend,
the layers run one after the other. Both give the same results up to the
rounding of the input products, which the pipelined call computes step by
step (see ``fastlstm/_lstm_stack.pxi``).
"""
from collections import namedtuple
from dataclasses import dataclass

import numpy as np

from . import _config, _kernels, _plan
from ._engine import SPARES, ForwardWorkspace, kernel_copy
from .functional import (LSTMGradients, _Cache, _check_weights, check_backend,
                         check_cache, check_sizes, lstm_backward, run_lstm_forward)
from ._validation import (as_mask, as_real_array, as_sequences, as_state, check_activation,
                          check_bool, check_features, check_list, check_shape, check_state_list,
                          describe)

@dataclass
class _LayeredRecord:
    """What a layer-by-layer stack keeps: each layer's LSTMCache, and the
    dropout multipliers applied between layers."""

    caches: list
    between: list


@dataclass
class _PipelinedRecord:
    """What the pipelined forward pass keeps for its backward pass: per
    layer, the buffers the backward kernel reads (see ``stack_backward`` in
    ``fastlstm/_lstm_stack.pxi``)."""

    x_shape: tuple
    weights: list                # kernel stacked on recurrent_kernel
    masks: object                # (B, T) uint8, or None
    dropouts: list               # recurrent-dropout multipliers, ones for none
    between: list                # input dropout of each layer above the first, or None
    go_backwards: bool
    gates: list
    states: list
    c_prev: list
    codes: list                  # activation codes
    has_bias: list
    has_dropout: list
    span: int


__all__ = ["lstm_stack_forward", "lstm_stack_backward", "LSTMStackCache",
           "LSTMStackGradients"]

LSTMStackGradients = namedtuple("LSTMStackGradients", ["x", "layers"])
LSTMStackGradients.__doc__ = """Gradients of a loss with respect to the arguments of
:func:`lstm_stack_forward`.

``x`` is the gradient of the stack's input (None without ``input_gradient``);
``layers`` holds one :class:`~fastlstm.LSTMGradients` per layer, whose ``x``
is None (a layer's input is the output of the layer below, not an argument)."""

class LSTMStackCache(_Cache):
    """What :func:`lstm_stack_forward` keeps for :func:`lstm_stack_backward`.

    Opaque and usable once, like :class:`~fastlstm.LSTMCache`; ``units``
    holds every layer's, and ``pipelined`` says how the forward pass ran.
    """

    __slots__ = ("pipelined",)

    def __init__(self, backend, pipelined, dtype, x_shape, units, state):
        super().__init__(backend, dtype, x_shape, tuple(units), state)
        self.pipelined = pipelined

    def _details(self):
        return f" pipelined={self.pipelined}"


def _per_layer(value, name, count, check):
    """``value`` for every layer: one value for all, or a list of ``count``."""
    if isinstance(value, (list, tuple)):
        if len(value) != count:
            raise ValueError(f"{name} must be one value for every layer or a list of one per "
                             f"layer ({count}), got {len(value)} entries")
        return [check(v, f"{name}[{i}]") for i, v in enumerate(value)]
    value = check(value, name)
    return [value] * count


def _optional_list(value, name, count, meaning):
    if value is None:
        return [None] * count
    return check_list(value, count,
                      f"{name} must be None or a list of {count} entries ({meaning})")


def lstm_stack_forward(x, layers, initial_states=None, mask=None, go_backwards=False,
                       dropout_masks=None, recurrent_dropout_masks=None, activation="tanh",
                       recurrent_activation="sigmoid", return_cache=True, backend="fast",
                       pipelined=None):
    """Run a stack of LSTM layers, each over the outputs of the one below.

    Parameters
    ----------
    x : array_like, shape (batch, timesteps, input_dim)
        The input sequences of the first layer; cast to the weights' dtype.
    layers : list of tuple
        Each layer's weights ``(kernel, recurrent_kernel, bias)``, as
        :func:`~fastlstm.lstm_forward` takes them (``bias`` may be None);
        layer l's kernel has as many rows as layer l - 1 has units. Every
        layer has the first kernel's dtype.
    initial_states : list of ([h0, c0] or None), or None
        Each layer's initial states, (batch, units of the layer); zeros for
        None.
    mask : array_like of bool (or of integers 0 and 1), shape (batch, timesteps), or None
        The first layer's mask. Each layer passes it on as Keras does: in
        its processing order (reversed after a layer that goes backwards).
    go_backwards : bool or list of bool
        For every layer, or one per layer.
    dropout_masks : list of (array or None), or None
        One entry per layer but the first: multipliers (batch, timesteps,
        units of the layer below) applied to the layer's input, such as a
        Dropout layer's between two LSTMs (training only).
    recurrent_dropout_masks : list of (array or None), or None
        One entry per layer: multipliers (batch, units) of h_{t-1} before
        the recurrent product, as ``recurrent_dropout_mask`` of
        :func:`~fastlstm.lstm_forward`.
    activation, recurrent_activation : str or list of str
        As for :func:`~fastlstm.lstm_forward`, for every layer or one per layer.
    return_cache : bool
        Keep what the backward pass needs; False is inference.
    backend : {"fast", "reference"}
    pipelined : bool or None
        True runs the stack as one pipelined call (fast backend; only the
        first layer may go backwards; no dropout masks in inference); False
        layer by layer; None (default) chooses by the planner (``fastlstm/_plan.py``).

    Returns
    -------
    outputs : ndarray, shape (batch, timesteps, units of the last layer)
        The last layer's outputs, in its processing order.
    states : list of [h, c]
        Each layer's states after its last processed step.
    cache : LSTMStackCache or None
        For :func:`lstm_stack_backward`; None when ``return_cache`` is False.

    Examples
    --------
    >>> import numpy as np, fastlstm as fl
    >>> rng = np.random.default_rng(0)
    >>> def weights(inputs, units):
    ...     return (rng.standard_normal((inputs, 4 * units)) * 0.3,
    ...             rng.standard_normal((units, 4 * units)) * 0.3, np.zeros(4 * units))
    >>> x = rng.standard_normal((2, 5, 3))
    >>> outputs, states, cache = fl.lstm_stack_forward(x, [weights(3, 8), weights(8, 4)])
    >>> outputs.shape, [h.shape for h, c in states]
    ((2, 5, 4), [(2, 8), (2, 4)])
    """
    check_backend(backend)
    if not isinstance(layers, (list, tuple)) or not layers:
        raise ValueError(f"layers must be a non-empty list of (kernel, recurrent_kernel, bias), "
                         f"got {describe(layers)}")
    count = len(layers)
    weights = []
    for i, layer in enumerate(layers):
        if not isinstance(layer, (list, tuple)) or len(layer) != 3:
            raise ValueError(f"layers[{i}] must be (kernel, recurrent_kernel, bias), got "
                             f"{describe(layer)}")
        try:
            dtype, units, checked = _check_weights(*layer)
        except (TypeError, ValueError) as error:
            raise type(error)(f"layers[{i}]: {error}") from None
        if weights and dtype != weights[0][0].dtype:
            raise TypeError(f"layers[{i}] has dtype {dtype}, but layers[0] has "
                            f"{weights[0][0].dtype}; every layer must have the same dtype")
        if weights and checked[0].shape[0] != weights[-1][1].shape[0]:
            raise ValueError(f"layers[{i}]'s kernel has {checked[0].shape[0]} rows, but the "
                             f"layer below has units={weights[-1][1].shape[0]}; a layer's "
                             f"kernel has a row per unit of the layer below")
        weights.append(checked)
    dtype = weights[0][0].dtype
    units = [w[1].shape[0] for w in weights]
    x = as_sequences(x, "x", dtype)
    batch, timesteps, input_dim = x.shape
    check_features(input_dim, "x", weights[0][0].shape[0], "layers[0]'s kernel's rows")
    inputs = [input_dim] + units[:-1]
    for i in range(count):
        check_sizes(batch, timesteps, inputs[i], units[i])
    go_backwards = _per_layer(go_backwards, "go_backwards", count, check_bool)
    activation = _per_layer(activation, "activation", count, check_activation)
    recurrent_activation = _per_layer(recurrent_activation, "recurrent_activation", count,
                                      check_activation)
    return_cache = check_bool(return_cache, "return_cache")
    if pipelined is not None:
        pipelined = check_bool(pipelined, "pipelined")

    states = _optional_list(initial_states, "initial_states", count, "[h0, c0] or None per layer")
    for i, state in enumerate(states):
        if state is None:
            continue
        states[i] = [as_state(s, f"initial_states[{i}][{j}] ({part})", dtype, (batch, units[i]),
                              "(batch, units)")
                     for j, (s, part) in enumerate(zip(
                         check_state_list(state, f"initial_states[{i}]", "[h0, c0]"),
                         ("h0", "c0")))]
    if mask is not None:
        mask = as_mask(mask, "mask", (batch, timesteps))
    masks = _layer_masks(mask, go_backwards)
    between = [None] + _optional_list(dropout_masks, "dropout_masks", count - 1,
                                      "None or (batch, timesteps, units below) per layer but "
                                      "the first")
    for i in range(1, count):
        if between[i] is not None:
            between[i] = as_real_array(between[i], f"dropout_masks[{i - 1}]", dtype)
            check_shape(between[i], f"dropout_masks[{i - 1}]", (batch, timesteps, inputs[i]),
                        "(batch, timesteps, units of the layer below)")
    recurrent = _optional_list(recurrent_dropout_masks, "recurrent_dropout_masks", count,
                               "None or (batch, units) per layer")
    for i, value in enumerate(recurrent):
        if value is not None:
            recurrent[i] = as_real_array(value, f"recurrent_dropout_masks[{i}]", dtype)
            check_shape(recurrent[i], f"recurrent_dropout_masks[{i}]", (batch, units[i]),
                        "(batch, units)")

    obstacle = _pipeline_obstacle(backend, go_backwards, between, return_cache)
    if pipelined and obstacle:
        raise ValueError(f"pipelined=True, but this stack cannot run pipelined: {obstacle}")
    if pipelined is None:
        pipelined = obstacle is None and _plan.pipeline_stack(batch, timesteps, input_dim,
                                                             units)
    args = (x, weights, states, masks, go_backwards, between, recurrent,
            list(zip(activation, recurrent_activation)), return_cache)
    if pipelined:
        outputs, final, state = _pipelined_forward(*args)
    else:
        outputs, final, state = _layered_forward(backend, *args)
    cache = None
    if return_cache:
        cache = LSTMStackCache(backend, pipelined, dtype, x.shape, units, state)
    return outputs, final, cache


def _layer_masks(mask, go_backwards):
    """Each layer's mask: the stack's, passed on by each layer in its
    processing order, as Keras does."""
    masks = []
    for backwards in go_backwards:
        masks.append(mask)
        if mask is not None and backwards:
            mask = mask[:, ::-1]
    return masks


def served_stack_forward(x, served, mask, go_backwards, initial_states=None):
    """A pipelined inference pass of a stack whose layers are
    :class:`~fastlstm.PackedLSTM` objects: their copies of the weights and
    their packed panels are read as they are, not copied and packed again.
    ``x``, ``mask`` and ``initial_states`` (None, or ``[h0, c0]`` or None per
    layer) are checked; only the first layer may go backwards. Returns the
    top layer's outputs and each layer's final ``[h, c]``."""
    count = len(served)
    go_backwards = [go_backwards] + [False] * (count - 1)
    outputs, final, _ = _pipelined_forward(
        x, [(layer.kernel, layer.recurrent_kernel, layer.bias) for layer in served],
        initial_states or [None] * count, _layer_masks(mask, go_backwards), go_backwards,
        [None] * count, [None] * count,
        [(layer.activation, layer.recurrent_activation) for layer in served], False, served)
    return outputs, final


def _pipeline_obstacle(backend, go_backwards, between, training):
    if backend != "fast":
        return "only the fast backend pipelines"
    if any(go_backwards[1:]):
        return ("a layer above the first goes backwards, so its first step needs the last "
                "output of the layer below")
    if not training and any(b is not None for b in between):
        return "dropout_masks are for training (return_cache=True)"
    return None


def _layered_forward(backend, x, weights, states, masks, go_backwards, between, recurrent,
                     activations, training):
    caches, final = [], []
    for i, ((kernel, recurrent_kernel, bias), (act, rec_act)) in enumerate(
            zip(weights, activations)):
        if between[i] is not None:
            x = x * between[i]
        x, h, c, cache = run_lstm_forward(backend, x, kernel, recurrent_kernel, bias, states[i],
                                          masks[i], go_backwards[i], training, recurrent[i],
                                          act, rec_act)
        caches.append(cache)
        final.append([h, c])
    return x, final, _LayeredRecord(caches, between)


def _pipelined_forward(x, weights, states, masks, go_backwards, between, recurrent,
                       activations, training, served=None):
    """The pipelined pass; ``served``, PackedLSTM objects of the layers'
    weights, gives the stacked weights and packed panels (inference)."""
    dtype = x.dtype
    batch, timesteps, input_dim = x.shape
    kernels = _kernels.current()
    units = [w[1].shape[0] for w in weights]
    inputs = [input_dim] + units[:-1]
    threads, single_blas = _plan.call_threads(
        _plan.stack_flops(batch, timesteps, input_dim, units))
    hoist = _plan.hoist_input_product(batch, input_dim, units[0])
    span = _plan.stack_span(batch, timesteps)
    packed = None
    if served is not None:
        packed = [(served[0]._packed(kernels, "recurrent" if hoist else "all"), None)]
        packed += [(layer._packed(kernels, "recurrent"), layer._packed(kernels, "input"))
                   for layer in served[1:]]
    buffers = dict(weights=[], biases=[], dropouts=[], h=[], c=[], outputs=[], gates=[],
                   states=[], c_prev=[], h_last=[])
    has_bias, has_dropout = [], []
    for i, ((kernel, recurrent_kernel, bias), inp, hidden) in enumerate(
            zip(weights, inputs, units)):
        if served is not None:
            stacked = served[i]._weights
        else:
            stacked = SPARES.empty((inp + hidden, 4 * hidden), dtype)
            stacked[:inp] = kernel
            stacked[inp:] = recurrent_kernel
        buffers["weights"].append(stacked)
        has_bias.append(bias is not None)
        buffers["biases"].append(np.ascontiguousarray(bias) if bias is not None
                                 else np.zeros(4 * hidden, dtype))
        has_dropout.append(recurrent[i] is not None)
        buffers["dropouts"].append(np.ascontiguousarray(recurrent[i]) if recurrent[i] is not None
                                   else np.ones((batch, hidden), dtype))
        for j, name in enumerate(("h", "c")):
            buffers[name].append(kernel_copy(None if states[i] is None else states[i][j],
                                             (batch, hidden), dtype))
        buffers["outputs"].append(np.empty((batch, timesteps, hidden), dtype))
        # Layers above the first compute their input products by spans of
        # steps, as a hoisting layer does.
        work = ForwardWorkspace(batch, timesteps, inp, hidden, dtype, training,
                                hoist if i == 0 else True, SPARES.empty)
        for name in ForwardWorkspace.__slots__:
            buffers[name].append(getattr(work, name))
    mask_bytes = [None if m is None else np.ascontiguousarray(m).view(np.uint8) for m in masks]
    between = [None if b is None else np.ascontiguousarray(b) for b in between]
    codes = [(kernels.Activation[a.upper()], kernels.Activation[r.upper()])
             for a, r in activations]
    with _config.single_threaded_blas(single_blas):
        kernels.stack_forward(np.ascontiguousarray(x), buffers["weights"], buffers["biases"],
                              mask_bytes, buffers["dropouts"], between, go_backwards[0],
                              buffers["outputs"], buffers["h"], buffers["c"], buffers["gates"],
                              buffers["states"], buffers["c_prev"], buffers["h_last"],
                              training, hoist, codes, span, threads, packed=packed)
    final = [[h, c] for h, c in zip(buffers["h"], buffers["c"])]
    SPARES.give(*buffers["h_last"])
    state = None
    if not training:
        SPARES.give(*([] if served else buffers["weights"]), *buffers["gates"],
                    *buffers["states"], *buffers["c_prev"])
    else:
        state = _PipelinedRecord(
            weights=buffers["weights"], masks=mask_bytes, dropouts=buffers["dropouts"],
            between=between, go_backwards=go_backwards[0], gates=buffers["gates"],
            states=buffers["states"], c_prev=buffers["c_prev"], codes=codes,
            has_bias=has_bias, has_dropout=has_dropout, x_shape=x.shape, span=span)
    return buffers["outputs"][-1], final, state


def lstm_stack_backward(cache, grad_outputs=None, grad_states=None, input_gradient=True):
    """Backpropagate through a stack, from the top layer down.

    Parameters
    ----------
    cache : LSTMStackCache
        From ``lstm_stack_forward(..., return_cache=True)``; usable once.
    grad_outputs : array_like, shape (batch, timesteps, units of the last layer), or None
        Gradient of the loss with respect to the stack's outputs (None: zero).
    grad_states : list of ([dh, dc] or None), or None
        Gradients with respect to each layer's final states (None: zero).
    input_gradient : bool
        Compute the gradient of the stack's input; False skips its product
        (the stack's input is data) and ``x`` is None.

    Returns
    -------
    LSTMStackGradients
        ``(x, layers)``, ``layers`` one :class:`~fastlstm.LSTMGradients` per layer.
    """
    check_cache(cache, LSTMStackCache, "lstm_stack_forward", "lstm_stack_backward")
    input_gradient = check_bool(input_gradient, "input_gradient")
    batch, timesteps, units = cache.batch, cache.timesteps, cache.units
    if grad_outputs is not None:
        grad_outputs = as_state(grad_outputs, "grad_outputs", cache.dtype,
                                (batch, timesteps, units[-1]),
                                "(batch, timesteps, units of the last layer)")
    grads = _optional_list(grad_states, "grad_states", len(units), "[dh, dc] or None per layer")
    for i, value in enumerate(grads):
        if value is None:
            grads[i] = [None, None]
            continue
        grads[i] = [None if g is None else
                    as_state(g, f"grad_states[{i}][{j}]", cache.dtype, (batch, units[i]),
                             "(batch, units)")
                    for j, g in enumerate(check_state_list(value, f"grad_states[{i}]",
                                                           "[dh, dc]"))]
    cache.used = True
    if cache.pipelined:
        return _pipelined_backward(cache, grad_outputs, grads, input_gradient)
    return _layered_backward(cache, grad_outputs, grads, input_gradient)


def _layered_backward(cache, grad_outputs, grads, input_gradient):
    layers = []
    between = cache.state.between
    for i in reversed(range(len(cache.units))):
        result = lstm_backward(cache.state.caches[i], grad_outputs, *grads[i],
                               input_gradient=input_gradient or i > 0)
        grad_outputs = result.x
        if grad_outputs is not None and between[i] is not None:
            grad_outputs = grad_outputs * between[i]
        layers.append(result._replace(x=None))
    return LSTMStackGradients(grad_outputs, layers[::-1])


def _pipelined_backward(cache, grad_outputs, grads, input_gradient):
    state = cache.state
    dtype = cache.dtype
    batch, timesteps, input_dim = state.x_shape
    units = cache.units
    inputs = [input_dim] + list(units[:-1])
    shape = (batch, timesteps)
    below = [SPARES.empty(shape + (u,), dtype) for u in units[:-1]]
    if grad_outputs is None:
        grad_outputs = np.zeros(shape + (units[-1],), dtype)
    dh_pass = [kernel_copy(g[0], (batch, u), dtype) for g, u in zip(grads, units)]
    dc = [kernel_copy(g[1], (batch, u), dtype) for g, u in zip(grads, units)]
    dh_rec = [np.zeros((batch, u), dtype) for u in units]
    carry = [np.zeros((batch, u), dtype) for u in units]
    dweights = [np.empty_like(w) for w in state.weights]
    dbiases = [np.empty(4 * u, dtype) for u in units]
    dx = np.empty(state.x_shape, dtype) if input_gradient else None
    threads, single_blas = _plan.call_threads(
        2 * _plan.stack_flops(batch, timesteps, input_dim, units))
    with _config.single_threaded_blas(single_blas):
        _kernels.current().stack_backward(
            np.ascontiguousarray(grad_outputs), state.weights, state.masks,
            state.dropouts, state.between, state.go_backwards, below, state.gates, state.states, state.c_prev,
            dh_rec, dh_pass, dc, carry, dx, dweights, dbiases, state.codes, state.span,
            threads)
    # The record is used once: its buffers serve the next call.
    SPARES.give(*below, *state.weights, *state.gates, *state.states, *state.c_prev)
    cache.state = None
    layers = []
    for i, (inp, hidden) in enumerate(zip(inputs, units)):
        if state.has_dropout[i]:
            dh_rec[i] *= state.dropouts[i]
        layers.append(LSTMGradients(None, dweights[i][:inp], dweights[i][inp:],
                                    dbiases[i] if state.has_bias[i] else None,
                                    dh_rec[i] + dh_pass[i], dc[i]))
    return LSTMStackGradients(dx, layers)
