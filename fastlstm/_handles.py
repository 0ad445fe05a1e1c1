"""The functional LSTM for the frameworks' gradient machinery: caches by handle.

A framework that runs fastlstm's kernels as an opaque operation (a PyTorch
custom operator, a JAX callback) can pass only arrays between the forward
and the backward operation, not the :class:`~fastlstm.LSTMCache` itself. The
forward operation keeps the cache here and returns an integer handle to it;
the backward operation takes the handle and removes the cache as it uses it.
A forward pass that keeps no cache (inference) returns the handle 0.
"""
import itertools
import threading

import numpy as np

from .functional import lstm_backward, run_lstm_forward

__all__ = ["forward", "backward", "keep", "take", "release", "pending"]

_caches = {}
_lock = threading.Lock()
# Handles stay within int32, the integer type JAX uses by default.
_handles = itertools.cycle(range(1, 2**31 - 1))


def forward(x, kernel, recurrent_kernel, bias, h0, c0, mask, recurrent_dropout_mask,
            go_backwards, activation, recurrent_activation, keep_cache):
    """Run the kernels on arrays already checked by the caller's layer.

    Parameters
    ----------
    x : ndarray, shape (batch, timesteps, features)
        Cast to the weights' dtype.
    kernel, recurrent_kernel, bias : ndarray
        Weights in Keras' layout; ``bias`` may be None.
    h0, c0 : ndarray, shape (batch, units)
        Initial states.
    mask : ndarray of bool, shape (batch, timesteps), or None
        True keeps a step.
    recurrent_dropout_mask : ndarray, shape (batch, units), or None
        Multipliers of ``h_{t-1}`` in the recurrent product.
    go_backwards : bool
        Process the steps in reverse; the outputs come in processing order.
    activation, recurrent_activation : str
        Names the kernels implement.
    keep_cache : bool
        Keep what :func:`backward` needs.

    Returns
    -------
    tuple
        ``(outputs, h, c, handle)``: ``handle`` names the kept cache, 0 none.
    """
    dtype = kernel.dtype
    x, h0, c0 = (np.asarray(a, dtype) for a in (x, h0, c0))
    if recurrent_dropout_mask is not None:
        recurrent_dropout_mask = np.asarray(recurrent_dropout_mask, dtype)
    if mask is not None:
        mask = np.asarray(mask, np.bool_)
    outputs, h, c, cache = run_lstm_forward(
        "fast", x, kernel, recurrent_kernel, bias, [h0, c0], mask, bool(go_backwards),
        bool(keep_cache), recurrent_dropout_mask, activation, recurrent_activation)
    if cache is None:
        return outputs, h, c, 0
    return outputs, h, c, keep((cache, bias is not None))


def backward(handle, grad_outputs, grad_h, grad_c, input_gradient=True):
    """Backpropagate through the forward pass of ``handle`` and forget its cache.

    Parameters
    ----------
    handle : int
        What :func:`forward` returned.
    grad_outputs : ndarray, shape (batch, timesteps, units)
        Gradient of the outputs.
    grad_h, grad_c : ndarray, shape (batch, units)
        Gradients of the final states.
    input_gradient : bool
        Compute the gradient of ``x`` (else it is None).

    Returns
    -------
    LSTMGradients
        ``bias`` is zeros when the forward pass ran without one.
    """
    entry = take(handle)
    if entry is None:
        raise RuntimeError(
            f"no LSTM cache for handle {int(handle)}: the forward pass ran without recording "
            f"gradients (inference), or a backward pass already used it; run the forward "
            f"pass again with gradients recorded")
    cache, has_bias = entry
    grads = lstm_backward(cache, grad_outputs, grad_h, grad_c, input_gradient)
    if not has_bias:
        grads = grads._replace(bias=np.zeros(4 * cache.units, cache.dtype))
    return grads


def keep(entry):
    """Keep ``entry`` (a cache, or what a caller's backward pass needs with
    it) until :func:`take` or :func:`release`; returns its handle."""
    with _lock:
        handle = next(_handles)
        _caches[handle] = entry
    return handle


def take(handle):
    """The entry kept under ``handle``, forgotten here; None if there is none."""
    with _lock:
        return _caches.pop(int(handle), None)


def release(handle):
    """Forget the cache of ``handle``, if a backward pass has not used it: for
    a framework that frees a recorded forward pass without backpropagating."""
    take(handle)


def pending():
    """How many caches wait for their backward pass."""
    return len(_caches)
