"""fastlstm's kernels under TensorFlow: a ``tf.custom_gradient`` around
``tf.numpy_function`` calls.

The forward and backward passes are ``tf.numpy_function`` operations, so
they run eagerly and inside ``tf.function`` graphs (Keras' compiled
``fit``, ``evaluate`` and ``predict``); TensorFlow calls back into Python
on the host to run them. XLA cannot compile such an operation, which is why
:class:`fastlstm.keras.LSTM` tells Keras it does not support
``jit_compile``.

Whether the forward pass keeps the kernels' cache is decided when the
operation is made (eagerly: at each call; in a graph: when it is traced):
it keeps it when a gradient tape watches one of its inputs, as in the
training step of Keras' ``fit``, which records its forward pass on a tape
inside the traced function. The cache then waits in
:mod:`fastlstm._handles` under a handle, an int64 scalar the forward
operation returns and the backward operation takes; the backward operation
uses and forgets it. A forward pass that no tape watches (inference) keeps
nothing. If a gradient is asked of a graph traced without a tape (a
``tf.function`` differentiated from outside, by a tape around its call),
the backward operation runs the forward pass again with its cache first:
correct, at the cost of a second forward pass. Weights are in Keras'
layout, gates i, f, c, o.

``tf.numpy_function`` hands the function its inputs as NumPy arrays over
TensorFlow's memory on the CPU, which the kernels read where they are, and
TensorFlow takes the arrays it returns as they are when their memory is
aligned for it (NumPy's allocations of the sizes that matter are) and
copies them otherwise. TensorFlow may run several such operations at once
from its own threads (the two directions of a ``Bidirectional`` layer);
each holds the GIL only outside the kernels, which serve concurrent
callers (see ``fastlstm/_fl_pool.h``).
"""
import weakref

import numpy as np
import tensorflow as tf
from tensorflow.python.eager import record

from . import _handles

__all__ = ["lstm"]


def _static_shapes(x, recurrent_kernel, h0):
    """The shapes TensorFlow knows of the outputs, h and c."""
    units = recurrent_kernel.shape[0]
    return x.shape[:2].concatenate([units]), h0.shape, h0.shape


def _forward_op(options, keep_cache, arrays, present):
    """The forward ``tf.numpy_function``: ``(outputs, h, c, handle)``.

    ``arrays`` are the tensors that are given, ``present`` says which of the
    eight arguments of ``_handles.forward`` they are (the others are None).
    """
    def host(*given):
        values = iter(given)
        inputs = [next(values) if here else None for here in present]
        outputs, h, c, handle = _handles.forward(*inputs, *options, keep_cache)
        return outputs, h, c, np.int64(handle)

    dtype = arrays[0].dtype
    return tf.numpy_function(host, arrays, (dtype, dtype, dtype, tf.int64), stateful=True,
                             name="fastlstm_lstm_forward")


def _backward_op(host, arrays, x, kernel, recurrent_kernel, h0, has_bias):
    """The six gradients of a backward ``tf.numpy_function``, shaped."""
    dtype = kernel.dtype
    grads = tf.numpy_function(lambda *given: tuple(host(*given)), arrays, (dtype,) * 6,
                              stateful=True, name="fastlstm_lstm_backward")
    shapes = (x.shape, kernel.shape, recurrent_kernel.shape,
              tf.TensorShape([recurrent_kernel.shape[1]]), h0.shape, h0.shape)
    dx, dkernel, drecurrent, dbias, dh0, dc0 = grads
    for grad, shape in zip(grads, shapes):
        grad.set_shape(shape)
    return dx, dkernel, drecurrent, dbias if has_bias else None, dh0, dc0


def lstm(x, kernel, recurrent_kernel, bias, h0, c0, mask=None, recurrent_dropout_mask=None,
         go_backwards=False, activation="tanh", recurrent_activation="sigmoid"):
    """``(outputs, h, c)`` of an LSTM over ``x``, differentiable by TensorFlow."""
    options = (bool(go_backwards), activation, recurrent_activation)
    given = [x, kernel, recurrent_kernel, bias, h0, c0, mask, recurrent_dropout_mask]
    present = tuple(value is not None for value in given)
    arrays = [tf.convert_to_tensor(value) for value in given if value is not None]
    x, kernel, recurrent_kernel = arrays[:3]
    h0 = arrays[3 + present[3]]
    differentiable = arrays[:4 + present[3] + 1]
    keep_cache = record.should_record_backprop(differentiable)
    shapes = _static_shapes(x, recurrent_kernel, h0)
    has_bias = present[3]

    @tf.custom_gradient
    def run(*arrays):
        outputs, h, c, handle = _forward_op(options, keep_cache, list(arrays), present)
        for tensor, shape in zip((outputs, h, c), shapes):
            tensor.set_shape(shape)

        def grad(grad_outputs, grad_h, grad_c):
            upstream = [tf.zeros_like(value) if gradient is None else gradient
                        for gradient, value in zip((grad_outputs, grad_h, grad_c),
                                                   (outputs, h, c))]
            if keep_cache:
                def host(handle, *upstream):
                    return _handles.backward(handle, *upstream)

                inputs = [handle, *upstream]
            else:
                def host(*given):
                    inputs, upstream = given[:-3], given[-3:]
                    values = iter(inputs)
                    kept = _handles.forward(*[next(values) if here else None
                                              for here in present], *options, True)
                    return _handles.backward(kept[3], *upstream)

                inputs = [*arrays, *upstream]
            grads = _backward_op(host, inputs, x, kernel, recurrent_kernel, h0, has_bias)
            grads = [g for g, here in zip(grads[:4], present[:4]) if here] + list(grads[4:])
            # No gradient for the mask and the recurrent dropout mask.
            return grads + [None] * (len(arrays) - len(grads))

        if keep_cache and tf.executing_eagerly():
            # The tape keeps grad until it has backpropagated or is dropped:
            # a cache never used goes with it.
            weakref.finalize(grad, _handles.release, int(handle))
        return (outputs, h, c), grad

    return run(*arrays)
