"""Pure-NumPy LSTM forward pass and backpropagation through time.

This module is the oracle the Cython kernels in ``fastlstm._lstm`` are tested
against. It is written to be read, not to be fast: one Python loop over time
steps, one NumPy expression per equation, and a cache that keeps every
intermediate the backward pass needs under the name the equations give it.

The semantics are those of Keras 3's ``keras.layers.LSTM``:

* gate order i, f, c, o in the columns of ``kernel``, ``recurrent_kernel`` and
  ``bias``;
* a masked step carries the states ``h`` and ``c`` over unchanged and repeats
  the previous output (zeros before the first processed step, not ``h0``);
* ``go_backwards=True`` processes the sequence from its last step to its first
  and returns the outputs in that processing order;
* recurrent dropout multiplies ``h_{t-1}`` by one mask per sequence inside the
  recurrent product only; the state itself is not scaled.

Everything is computed in the float dtype of the arrays given (float32 stays
float32), and no input array is ever written to.
"""
import dataclasses

import numpy as np

__all__ = ["ACTIVATIONS", "LSTMCache", "lstm_forward", "lstm_backward"]


def _sigmoid(z):
    # With e = exp(-|z|): sigma(z) = 1 / (1 + e) for z >= 0 and e / (1 + e) for
    # z < 0. exp never overflows, and both branches keep full relative
    # precision (1/2 (1 + tanh(z/2)) loses it to cancellation for z << 0).
    e = np.exp(-np.abs(z))
    return np.where(z >= 0, 1.0, e) / (1.0 + e)


def _hard_sigmoid(z):
    # Keras 3's hard_sigmoid: relu6(z + 3) / 6 = clip(z / 6 + 1/2, 0, 1). Written
    # with where, not clip, so that NaN stays NaN.
    y = z / 6.0 + 0.5
    return np.where(y < 0, 0.0, np.where(y > 1, 1.0, y)).astype(z.dtype, copy=False)


#: The activations an LSTM may use, each as (function, derivative written in
#: terms of the function's value y): tanh' = 1 - y^2, sigmoid' = y (1 - y),
#: hard_sigmoid' = 1/6 where 0 < y < 1 and 0 where it is clipped.
ACTIVATIONS = {
    "tanh": (np.tanh, lambda y: 1.0 - y * y),
    "sigmoid": (_sigmoid, lambda y: y * (1.0 - y)),
    "hard_sigmoid": (_hard_sigmoid, lambda y: np.where((y > 0) & (y < 1), 1.0 / 6.0, 0.0)),
}


def _split_gates(gates):
    """Views of the i, f, c, o blocks of a ``(..., 4H)`` array."""
    return np.split(gates, 4, axis=-1)


@dataclasses.dataclass(frozen=True)
class LSTMCache:
    """What `lstm_backward` needs from one call of `lstm_forward`.

    Every per-step array is stored in processing order: step ``t`` of the
    arrays below is the ``t``-th step the forward pass computed, which is input
    step ``T - 1 - t`` when ``go_backwards`` is true.

    Attributes
    ----------
    x : ndarray, shape (B, T, I)
        The input, in the caller's (original) time order. A reference to the
        caller's array, not a copy.
    kernel : ndarray, shape (I, 4H)
    recurrent_kernel : ndarray, shape (H, 4H)
    bias : ndarray of shape (4H,) or None
        References to the weights the forward pass used.
    go_backwards : bool
        Whether the forward pass processed the time steps in reverse.
    step_mask : ndarray of bool, shape (T, B), or None
        ``step_mask[t, b]`` is true when sequence ``b`` was updated at
        processing step ``t``; None when no mask was given.
    recurrent_dropout_mask : ndarray, shape (B, H), or None
        The multiplier applied to ``h_{t-1}`` in the recurrent product.
    h_prev : ndarray, shape (T, B, H)
        ``h_{t-1}``, the hidden state entering each step (before dropout).
    c_prev : ndarray, shape (T, B, H)
        ``c_{t-1}``, the cell state entering each step.
    gates : ndarray, shape (T, B, 4H)
        The activated gates ``[i, f, g, o]`` of each step.
    c_candidate : ndarray, shape (T, B, H)
        ``f * c_{t-1} + i * g``: the cell state each step computes, before the
        mask decides whether it replaces ``c_{t-1}``.
    activation, recurrent_activation : str
        Names in `ACTIVATIONS` of the candidate/output and gate activations.
    projection_kernel : ndarray, shape (H, P), or None
        The projection of the hidden state (a projected LSTM); ``h_prev`` is
        then (T, B, P).
    """

    x: np.ndarray
    kernel: np.ndarray
    recurrent_kernel: np.ndarray
    bias: np.ndarray | None
    go_backwards: bool
    step_mask: np.ndarray | None
    recurrent_dropout_mask: np.ndarray | None
    h_prev: np.ndarray
    c_prev: np.ndarray
    gates: np.ndarray
    c_candidate: np.ndarray
    activation: str = "tanh"
    recurrent_activation: str = "sigmoid"
    projection_kernel: np.ndarray | None = None


def lstm_forward(x, kernel, recurrent_kernel, bias, initial_state=None, mask=None,
                 go_backwards=False, return_cache=True, recurrent_dropout_mask=None,
                 activation="tanh", recurrent_activation="sigmoid", projection_kernel=None):
    """Run one LSTM layer over a batch of sequences.

    Parameters
    ----------
    x : ndarray, shape (B, T, I)
        Input sequences, batch-major.
    kernel : ndarray, shape (I, 4H)
        Input weights, gate blocks in the order i, f, c, o.
    recurrent_kernel : ndarray, shape (H, 4H), or (P, 4H) with a projection
        Recurrent weights, same gate order.
    bias : ndarray of shape (4H,) or None
        Gate biases; None means the layer has no bias.
    initial_state : pair of ndarray [h0, c0], each (B, H), optional
        (h0 is (B, P) with a projection.)
        States before the first processed step; None means zeros.
    mask : ndarray of bool, shape (B, T), optional
        True where a step is kept. A masked step carries ``h`` and ``c`` over
        unchanged and repeats the previous output (zeros before the first
        processed step).
    go_backwards : bool, default False
        Process the time steps (and the mask) from last to first. The outputs
        are returned in that processing order, as Keras does.
    return_cache : bool, default True
        Whether to keep the intermediates `lstm_backward` needs.
    recurrent_dropout_mask : ndarray, shape (B, H), optional
        Multiplier applied to ``h_{t-1}`` in the recurrent product at every
        step (Keras' recurrent dropout: one mask per sequence).
    activation : {"tanh", "sigmoid", "hard_sigmoid"}, default "tanh"
        Activation of the candidate ``g`` and of the cell state in ``h``
        (``tanh`` in the equations below).
    recurrent_activation : {"tanh", "sigmoid", "hard_sigmoid"}, default "sigmoid"
        Activation of the gates ``i``, ``f`` and ``o`` (``sigmoid`` below).
    projection_kernel : ndarray, shape (H, P), optional
        A projected LSTM (LSTMP): the hidden state is ``h~ @ projection_kernel``
        of P values, which the outputs, ``h`` and the recurrent product
        (``recurrent_dropout_mask`` then (B, P)) read; ``c`` keeps H.

    Returns
    -------
    outputs : ndarray, shape (B, T, H), or (B, T, P) with a projection
        The output of every step, in processing order.
    h_N : ndarray, shape (B, H) (or (B, P))
        Hidden state after the last processed step.
    c_N : ndarray, shape (B, H)
        Cell state after the last processed step.
    cache : LSTMCache or None
        None when ``return_cache`` is false.

    Notes
    -----
    Equations, for each processing step t with ``keep`` the step's mask::

        z   = x_t @ kernel + (h_{t-1} * recurrent_dropout_mask) @ recurrent_kernel + bias
        i   = sigmoid(z_i)      f = sigmoid(z_f)
        g   = tanh(z_c)         o = sigmoid(z_o)
        c~  = f * c_{t-1} + i * g
        h~  = o * tanh(c~)                 (h~ @ projection_kernel with one)
        c_t = keep ? c~ : c_{t-1}
        h_t = keep ? h~ : h_{t-1}
        y_t = keep ? h~ : y_{t-1}          with y_{-1} = 0
    """
    dtype = np.result_type(x, kernel, recurrent_kernel)
    batch, steps, _ = x.shape
    units = recurrent_kernel.shape[1] // 4
    # The size of h: the projection's, or the cell's.
    hidden = units if projection_kernel is None else projection_kernel.shape[1]
    candidate = ACTIVATIONS[activation][0]
    gate = ACTIVATIONS[recurrent_activation][0]

    # Processing order: reversing here lets the loop below always run forwards.
    x_steps = x[:, ::-1] if go_backwards else x
    step_mask = None
    if mask is not None:
        mask = np.asarray(mask, dtype=bool)
        step_mask = (mask[:, ::-1] if go_backwards else mask).T

    if initial_state is None:
        h = np.zeros((batch, hidden), dtype=dtype)
        c = np.zeros((batch, units), dtype=dtype)
    else:
        h, c = initial_state
    output = np.zeros((batch, hidden), dtype=dtype)

    outputs = np.empty((batch, steps, hidden), dtype=dtype)
    h_prev = np.empty((steps, batch, hidden), dtype=dtype)
    c_prev = np.empty((steps, batch, units), dtype=dtype)
    gates = np.empty((steps, batch, 4 * units), dtype=dtype)
    c_candidate = np.empty((steps, batch, units), dtype=dtype)

    for t in range(steps):
        h_prev[t] = h
        c_prev[t] = c
        h_recurrent = h if recurrent_dropout_mask is None else h * recurrent_dropout_mask
        z = x_steps[:, t] @ kernel + h_recurrent @ recurrent_kernel
        if bias is not None:
            z = z + bias
        z_i, z_f, z_c, z_o = _split_gates(z)
        i, f, g, o = gate(z_i), gate(z_f), candidate(z_c), gate(z_o)
        c_new = f * c + i * g
        h_new = o * candidate(c_new)
        if projection_kernel is not None:
            h_new = h_new @ projection_kernel

        gates[t] = np.concatenate([i, f, g, o], axis=-1)
        c_candidate[t] = c_new
        if step_mask is None:
            h, c, output = h_new, c_new, h_new
        else:
            keep = step_mask[t][:, None]
            h = np.where(keep, h_new, h)
            c = np.where(keep, c_new, c)
            output = np.where(keep, h_new, output)
        outputs[:, t] = output

    cache = None
    if return_cache:
        cache = LSTMCache(
            x=x, kernel=kernel, recurrent_kernel=recurrent_kernel, bias=bias,
            go_backwards=bool(go_backwards), step_mask=step_mask,
            recurrent_dropout_mask=recurrent_dropout_mask,
            h_prev=h_prev, c_prev=c_prev, gates=gates, c_candidate=c_candidate,
            activation=activation, recurrent_activation=recurrent_activation,
            projection_kernel=projection_kernel,
        )
    # np.array copies: with no time steps, h and c are still the caller's h0 and c0.
    return outputs, np.array(h, dtype=dtype), np.array(c, dtype=dtype), cache


def lstm_backward(cache, grad_outputs=None, grad_h=None, grad_c=None, input_gradient=True):
    """Backpropagate through time the gradients of one `lstm_forward` call.

    Parameters
    ----------
    cache : LSTMCache
        The cache returned by `lstm_forward`.
    grad_outputs : ndarray, shape (B, T, H), optional
        Gradient of the loss with respect to ``outputs`` (processing order,
        like ``outputs``). None means zero.
    grad_h : ndarray, shape (B, H), optional
        Gradient with respect to ``h_N``. None means zero.
    grad_c : ndarray, shape (B, H), optional
        Gradient with respect to ``c_N``. None means zero.
    input_gradient : bool
        Compute ``dx``; when False it is skipped and returned as None.

    Returns
    -------
    tuple of (dx, dkernel, drecurrent_kernel, dbias, dh0, dc0)
        Gradients with respect to ``x`` (in the original time order),
        ``kernel``, ``recurrent_kernel``, ``bias`` (None when the forward pass
        had no bias) and the initial states ``h0`` and ``c0`` (returned also
        when the forward pass started from zeros).
        With a projection, ``dprojection_kernel`` follows as a seventh entry.

    Notes
    -----
    Equations, for t from the last processing step to the first, with
    ``dh``, ``dc`` the gradients reaching ``h_t``, ``c_t`` and ``dy`` the
    gradient reaching ``y_t`` (its upstream gradient plus what later masked
    steps that repeated ``y_t`` passed back)::

        dh~ = keep ? dh + dy : 0           dc~ = keep ? dc : 0
        dy_{t-1} += keep ? 0 : dy
        (with a projection: dprojection_kernel += (o * tanh(c~)).T @ dh~,
         then dh~ = dh~ @ projection_kernel.T)
        do  = dh~ * tanh(c~)
        dc~ += dh~ * o * (1 - tanh(c~)^2)
        di  = dc~ * g      df = dc~ * c_{t-1}      dg = dc~ * i
        dz  = [di * i(1-i), df * f(1-f), dg * (1-g^2), do * o(1-o)]
        dh_{t-1} = (dz @ recurrent_kernel.T) * recurrent_dropout_mask + (keep ? 0 : dh)
        dc_{t-1} = dc~ * f + (keep ? 0 : dc)
        dx_t = dz @ kernel.T
        dkernel += x_t.T @ dz
        drecurrent_kernel += (h_{t-1} * recurrent_dropout_mask).T @ dz
        dbias += sum over the batch of dz

    The gradient a masked first step's zero output receives goes nowhere: that
    output is a constant.
    """
    x = cache.x
    kernel = cache.kernel
    recurrent_kernel = cache.recurrent_kernel
    dropout = cache.recurrent_dropout_mask
    projection = cache.projection_kernel
    steps, batch, hidden = cache.h_prev.shape
    units = cache.c_prev.shape[2]
    dtype = cache.h_prev.dtype
    candidate, candidate_grad = ACTIVATIONS[cache.activation]
    gate_grad = ACTIVATIONS[cache.recurrent_activation][1]

    def zero_or(grad, size):
        return np.zeros((batch, size), dtype=dtype) if grad is None else grad

    dh = zero_or(grad_h, hidden)
    dc = zero_or(grad_c, units)
    grad_prev_output = np.zeros((batch, hidden), dtype=dtype)

    x_steps = x[:, ::-1] if cache.go_backwards else x
    dx_steps = np.empty(x.shape, dtype=dtype) if input_gradient else None
    dkernel = np.zeros(kernel.shape, dtype=dtype)
    drecurrent_kernel = np.zeros(recurrent_kernel.shape, dtype=dtype)
    dbias = None if cache.bias is None else np.zeros(cache.bias.shape, dtype=dtype)
    dprojection = None if projection is None else np.zeros(projection.shape, dtype=dtype)

    for t in reversed(range(steps)):
        dy = grad_prev_output
        if grad_outputs is not None:
            dy = dy + grad_outputs[:, t]
        if cache.step_mask is None:
            dh_new, dc_new = dh + dy, dc
            grad_prev_output = np.zeros_like(dy)
            dh_skip = dc_skip = 0.0
        else:
            keep = cache.step_mask[t][:, None]
            dh_new = np.where(keep, dh + dy, 0.0)
            dc_new = np.where(keep, dc, 0.0)
            grad_prev_output = np.where(keep, 0.0, dy)
            # A masked step is the identity on (h, c): its gradients pass through.
            dh_skip = np.where(keep, 0.0, dh)
            dc_skip = np.where(keep, 0.0, dc)

        i, f, g, o = _split_gates(cache.gates[t])
        tanh_c = candidate(cache.c_candidate[t])
        if projection is not None:
            dprojection += (o * tanh_c).T @ dh_new
            dh_new = dh_new @ projection.T
        dc_new = dc_new + dh_new * o * candidate_grad(tanh_c)
        grad_gates = np.concatenate([
            dc_new * g * gate_grad(i),
            dc_new * cache.c_prev[t] * gate_grad(f),
            dc_new * i * candidate_grad(g),
            dh_new * tanh_c * gate_grad(o),
        ], axis=-1).astype(dtype, copy=False)

        h_recurrent = cache.h_prev[t]
        dh = grad_gates @ recurrent_kernel.T
        if dropout is not None:
            h_recurrent = h_recurrent * dropout
            dh = dh * dropout
        dh = dh + dh_skip
        dc = dc_new * f + dc_skip

        if input_gradient:
            dx_steps[:, t] = grad_gates @ kernel.T
        dkernel += x_steps[:, t].T @ grad_gates
        drecurrent_kernel += h_recurrent.T @ grad_gates
        if dbias is not None:
            dbias += grad_gates.sum(axis=0)

    dx = dx_steps
    if input_gradient and cache.go_backwards:
        dx = np.ascontiguousarray(dx_steps[:, ::-1])
    # np.array copies: with no time steps, dh and dc are still the caller's grad_h, grad_c.
    grads = (dx, dkernel, drecurrent_kernel, dbias,
             np.array(dh, dtype=dtype), np.array(dc, dtype=dtype))
    return grads if projection is None else grads + (dprojection,)
