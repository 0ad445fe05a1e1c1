"""fastlstm's kernels under JAX: a ``jax.custom_vjp`` around host callbacks.

The forward and backward passes are ``jax.pure_callback`` calls into the
kernels, so they run under ``jit`` (XLA calls back into Python on the host).
Differentiated, the forward callback keeps the kernels' cache in
:mod:`fastlstm._handles` and returns its handle, an int32 scalar that
travels as the residual to the backward callback, which uses and forgets
the cache. Called without differentiation (inference), the forward keeps
nothing. Weights are in Keras' layout, gates i, f, c, o.

JAX hands a callback its arguments as NumPy arrays on the host; the
kernels read them where they are, and XLA copies the arrays the callback
returns into its own buffers (one copy of the outputs and of each gradient).
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np

from . import _handles

__all__ = ["lstm"]


def _result_shapes(x, recurrent_kernel, h0, with_handle):
    batch, timesteps, _ = x.shape
    units = recurrent_kernel.shape[0]
    shapes = [jax.ShapeDtypeStruct((batch, timesteps, units), x.dtype),
              jax.ShapeDtypeStruct(h0.shape, x.dtype), jax.ShapeDtypeStruct(h0.shape, x.dtype)]
    if with_handle:
        shapes.append(jax.ShapeDtypeStruct((), jnp.int32))
    return tuple(shapes)


def _call_forward(options, keep_cache, x, kernel, recurrent_kernel, bias, h0, c0, mask,
                  recurrent_dropout_mask):
    def host(*arrays):
        outputs, h, c, handle = _handles.forward(*arrays, *options, keep_cache)
        results = (outputs, h, c)
        return results + (np.int32(handle),) if keep_cache else results

    return jax.pure_callback(
        host, _result_shapes(x, recurrent_kernel, h0, keep_cache), x, kernel, recurrent_kernel,
        bias, h0, c0, mask, recurrent_dropout_mask)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _lstm(options, x, kernel, recurrent_kernel, bias, h0, c0, mask, recurrent_dropout_mask):
    return _call_forward(options, False, x, kernel, recurrent_kernel, bias, h0, c0, mask,
                         recurrent_dropout_mask)


def _lstm_fwd(options, x, kernel, recurrent_kernel, bias, h0, c0, mask, recurrent_dropout_mask):
    outputs, h, c, handle = _call_forward(options, True, x, kernel, recurrent_kernel, bias, h0,
                                          c0, mask, recurrent_dropout_mask)
    # The weights are alive anyway; the backward pass reads only their shapes.
    residuals = (handle, kernel, bias)
    return (outputs, h, c), residuals


def _lstm_bwd(options, residuals, cotangents):
    handle, kernel, bias = residuals
    grad_outputs, grad_h, grad_c = cotangents
    batch, timesteps, units = grad_outputs.shape
    shapes = [(batch, timesteps, kernel.shape[0]), kernel.shape, (units, 4 * units),
              (4 * units,), (batch, units), (batch, units)]

    def host(handle, grad_outputs, grad_h, grad_c):
        return tuple(_handles.backward(handle, grad_outputs, grad_h, grad_c))

    dx, dkernel, drecurrent, dbias, dh0, dc0 = jax.pure_callback(
        host, tuple(jax.ShapeDtypeStruct(shape, kernel.dtype) for shape in shapes), handle,
        grad_outputs, grad_h, grad_c)
    return (dx, dkernel, drecurrent, None if bias is None else dbias, dh0, dc0, None, None)


_lstm.defvjp(_lstm_fwd, _lstm_bwd)


def lstm(x, kernel, recurrent_kernel, bias, h0, c0, mask=None, recurrent_dropout_mask=None,
         go_backwards=False, activation="tanh", recurrent_activation="sigmoid"):
    """``(outputs, h, c)`` of an LSTM over ``x``, differentiable by JAX."""
    options = (bool(go_backwards), activation, recurrent_activation)
    return _lstm(options, x, kernel, recurrent_kernel, bias, h0, c0, mask,
                 recurrent_dropout_mask)
