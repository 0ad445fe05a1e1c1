"""The fast backend of the projected LSTM (LSTMP): the workspace of
``forward_projected`` and ``backward_projected`` (``fastlstm/_lstm_proj.pxi``)
allocated around the arrays :func:`fastlstm.lstm_forward` has checked, and
what the forward pass keeps for the backward pass.

The hidden state of a projected LSTM is ``h_t = (o_t * tanh(c_t)) @
projection_kernel``: P values for the cell's H. The recurrent kernel is
(P, 4H), the outputs and ``h`` have P values, ``c`` keeps H.
"""
from dataclasses import dataclass

import numpy as np

from . import _config, _kernels, _plan
from ._engine import SPARES, kernel_copy

__all__ = ["ProjectedRecord", "ProjectedFastBackend", "projected_forward", "projected_backward",
           "projected_flops"]


def projected_flops(x_shape, units, proj_units):
    """Floating-point operations of the matrix products of a forward pass:
    the input, recurrent and projection products of every step."""
    batch, timesteps, input_dim = x_shape
    return 2 * batch * timesteps * units * (4 * input_dim + 4 * proj_units + proj_units)


@dataclass
class ProjectedRecord:
    """What the projected forward pass keeps for its backward pass."""

    x_shape: tuple
    kernel: np.ndarray
    recurrent_kernel: np.ndarray
    projection_kernel: np.ndarray
    mask: object                 # (B, T) uint8, or None
    dropout: np.ndarray          # (B, P) recurrent-dropout multipliers, ones for none
    has_dropout: bool
    go_backwards: bool
    gates: np.ndarray            # the activated gates; the gate gradients overwrite them
    states: np.ndarray           # each step's [x_t, dropped-out h_{t-1}] (B, T, I + P)
    c_prev: np.ndarray           # each step's c_{t-1} (B, T, H)
    cells: np.ndarray            # each step's o * tanh(c) (B, T, H)
    has_bias: bool
    activation_codes: tuple


def projected_forward(x, kernel, recurrent_kernel, bias, projection_kernel, initial_state,
                      mask, go_backwards, return_cache, recurrent_dropout_mask, activation,
                      recurrent_activation):
    """The fast forward pass of a projected LSTM on checked arguments:
    ``(outputs, h, c, record)``, the record None without ``return_cache``."""
    dtype = kernel.dtype
    batch, timesteps, input_dim = x.shape
    units, proj_units = projection_kernel.shape
    x = np.ascontiguousarray(x)
    weights = [np.ascontiguousarray(w) for w in (kernel, recurrent_kernel, projection_kernel)]
    has_bias = bias is not None
    bias = np.ascontiguousarray(bias) if has_bias else np.zeros(4 * units, dtype)
    h0, c0 = initial_state or (None, None)
    h = kernel_copy(h0, (batch, proj_units), dtype)
    c = kernel_copy(c0, (batch, units), dtype)
    mask_bytes = None if mask is None else np.ascontiguousarray(mask).view(np.uint8)
    has_dropout = recurrent_dropout_mask is not None
    dropout = (np.ascontiguousarray(recurrent_dropout_mask) if has_dropout
               else np.ones((batch, proj_units), dtype))
    outputs = np.empty((batch, timesteps, proj_units), dtype)
    gates = SPARES.empty((batch, timesteps, 4 * units), dtype)
    states = SPARES.empty((batch, timesteps, input_dim + proj_units), dtype)
    c_prev = SPARES.empty((batch, timesteps, units), dtype)
    cells = SPARES.empty((batch, timesteps, units), dtype)
    kernels = _kernels.current()
    codes = (kernels.Activation[activation.upper()],
             kernels.Activation[recurrent_activation.upper()])
    threads, single_blas = _plan.call_threads(
        projected_flops(x.shape, units, proj_units))
    with _config.single_threaded_blas(single_blas):
        kernels.forward_projected(x, *weights, bias, mask_bytes, dropout, go_backwards,
                                  outputs, h, c, gates, states, c_prev, cells, *codes, threads)
    if not return_cache:
        SPARES.give(gates, states, c_prev, cells)
        return outputs, h, c, None
    record = ProjectedRecord(x_shape=x.shape, kernel=weights[0], recurrent_kernel=weights[1],
                             projection_kernel=weights[2], mask=mask_bytes, dropout=dropout,
                             has_dropout=has_dropout, go_backwards=go_backwards, gates=gates,
                             states=states, c_prev=c_prev, cells=cells, has_bias=has_bias,
                             activation_codes=codes)
    return outputs, h, c, record


def projected_backward(record, grad_outputs, grad_h, grad_c, input_gradient):
    """``(dx, dkernel, drecurrent_kernel, dbias, dh0, dc0, dprojection_kernel)``
    from a :class:`ProjectedRecord`, used once."""
    x_shape, dropout = record.x_shape, record.dropout
    dtype = dropout.dtype
    batch, timesteps, input_dim = x_shape
    units, proj_units = record.projection_kernel.shape
    dh_pass = kernel_copy(grad_h, (batch, proj_units), dtype)
    dc = kernel_copy(grad_c, (batch, units), dtype)
    dh_rec = np.zeros((batch, proj_units), dtype)
    carry = np.zeros((batch, proj_units), dtype)
    dm = np.empty((batch, units), dtype)
    grad_h_steps = SPARES.empty((batch, timesteps, proj_units), dtype)
    dx = np.empty(x_shape, dtype) if input_gradient else None
    # One product fills both: dkernel on drecurrent_kernel.
    dweights = np.empty((input_dim + proj_units, 4 * units), dtype)
    dkernel, drecurrent_kernel = dweights[:input_dim], dweights[input_dim:]
    dprojection = np.empty_like(record.projection_kernel)
    dbias = np.empty(4 * units, dtype)
    grad_outputs = (np.zeros((batch, timesteps, proj_units), dtype) if grad_outputs is None
                    else np.ascontiguousarray(grad_outputs))
    if batch == 0 or timesteps == 0:
        # Nothing ran: the states' gradients pass through, the rest are zeros.
        for grad in (dx, dkernel, drecurrent_kernel, dprojection, dbias):
            if grad is not None:
                grad[...] = 0
        return (dx, dkernel, drecurrent_kernel, dbias if record.has_bias else None,
                dh_pass, dc, dprojection)
    # The backward pass does twice the forward pass's products.
    threads, single_blas = _plan.call_threads(
        2 * projected_flops(x_shape, units, proj_units))
    with _config.single_threaded_blas(single_blas):
        _kernels.current().backward_projected(
            record.kernel, record.recurrent_kernel, record.projection_kernel, record.mask,
            dropout, record.go_backwards, grad_outputs, record.gates, record.states,
            record.c_prev, record.cells, grad_h_steps, dm, dh_rec, dh_pass, dc, carry, dx,
            dweights, dprojection, dbias, *record.activation_codes, threads)
    SPARES.give(record.gates, record.states, record.c_prev, record.cells, grad_h_steps)
    record.gates = record.states = record.c_prev = record.cells = None
    if record.has_dropout:
        dh_rec *= dropout
    return (dx, dkernel, drecurrent_kernel, dbias if record.has_bias else None,
            dh_rec + dh_pass, dc, dprojection)


class ProjectedFastBackend:
    """The projected kernels behind the NumPy reference's signatures (its
    ``projection_kernel`` argument required), as the functional doors call
    a backend."""

    @staticmethod
    def lstm_forward(x, kernel, recurrent_kernel, bias, initial_state=None, mask=None,
                     go_backwards=False, return_cache=True, recurrent_dropout_mask=None,
                     activation="tanh", recurrent_activation="sigmoid", projection_kernel=None):
        return projected_forward(x, kernel, recurrent_kernel, bias, projection_kernel,
                                 initial_state, mask, go_backwards, return_cache,
                                 recurrent_dropout_mask, activation, recurrent_activation)

    @staticmethod
    def lstm_backward(cache, grad_outputs=None, grad_h=None, grad_c=None, input_gradient=True):
        return projected_backward(cache, grad_outputs, grad_h, grad_c, input_gradient)
