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
nothing. Eagerly, the cache lives as long as the tape can backpropagate
through the outputs. In a graph, each run of the forward operation forgets
the cache of its previous run if no backward pass took it (a graph traced
under a tape may run without one, for inference), and the backward
operation also takes the forward operation's inputs: if it finds no cache
(a graph traced without a tape and differentiated from outside, or a cache
forgotten that way), it runs the forward pass again first. Keras' ``fit``
never needs that second forward pass. Weights are in Keras' layout, gates
i, f, c, o.

A graph holding these operations cannot be served by another process (they
call Python functions of this one): when ``tf.saved_model.save`` traces the
gradient functions of the graphs it writes, the gradient refuses with an
error that says so, and no SavedModel is written.

In a graph, ``tf.numpy_function`` hands the function its inputs as NumPy
arrays over TensorFlow's own memory, which the kernels read where they are,
and takes the arrays it returns as its outputs: no copies (TensorFlow
2.21). Eagerly, TensorFlow copies the inputs into new arrays and the results
into its tensors. TensorFlow may run several such operations at once from
its own threads (the two directions of a ``Bidirectional`` layer); each
holds the GIL only outside the kernels, which serve concurrent callers (see
``fastlstm/_fl_pool.h``).
"""
import weakref

import numpy as np
import tensorflow as tf
from tensorflow.python.eager import record
from tensorflow.python.saved_model import save_context

from . import _handles

__all__ = ["lstm"]

_NO_SAVEDMODEL = (
    "fastlstm.keras.LSTM cannot be exported to a SavedModel: its TensorFlow operations call "
    "Python functions of the process that made them, which a SavedModel cannot carry. Save "
    "a .keras file instead, or export the same model built with keras.layers.LSTM and given "
    "these weights (see the guide's page \"Using fastlstm from Keras 3\")")


def _inputs(present, given):
    """The eight arguments of ``_handles.forward`` from the ``given`` ones."""
    values = iter(given)
    return [next(values) if here else None for here in present]


def _forward_op(options, keep_cache, in_graph, arrays, present):
    """The forward ``tf.numpy_function``: ``(outputs, h, c, handle)``."""
    # In a graph, a cache the backward operation has not taken by the next
    # run of this operation is not waited for (a graph traced under a tape
    # runs without one too, for inference): each run forgets the previous
    # run's, and a backward operation that finds none runs the forward pass
    # again.
    previous = [0]

    def host(*given):
        outputs, h, c, handle = _handles.forward(*_inputs(present, given), *options,
                                                 keep_cache)
        if in_graph and keep_cache:
            _handles.release(previous[0])
            previous[0] = handle
        return outputs, h, c, np.int64(handle)

    dtype = arrays[0].dtype
    return tf.numpy_function(host, arrays, (dtype, dtype, dtype, tf.int64), stateful=True,
                             name="fastlstm_lstm_forward")


def _backward_op(options, present, handle, arrays, upstream, recompute):
    """The six gradients of the backward ``tf.numpy_function``, shaped.

    With ``recompute``, the operation also takes ``arrays`` (the forward
    operation's inputs) and runs the forward pass again if the cache is
    gone; without, the cache must be there.
    """
    def host(handle, *given):
        if recompute:
            entry = _handles.take(handle) if handle else None
            handle = (_handles.keep(entry) if entry is not None else
                      _handles.forward(*_inputs(present, given[:-3]), *options, True)[3])
        return tuple(_handles.backward(handle, *given[-3:]))

    x, kernel, recurrent_kernel = arrays[:3]
    h0 = arrays[3 + present[3]]
    dtype = kernel.dtype
    inputs = [handle, *arrays, *upstream] if recompute else [handle, *upstream]
    grads = tf.numpy_function(host, inputs, (dtype,) * 6, stateful=True,
                              name="fastlstm_lstm_backward")
    shapes = (x.shape, kernel.shape, recurrent_kernel.shape,
              tf.TensorShape([recurrent_kernel.shape[1]]), h0.shape, h0.shape)
    for grad, shape in zip(grads, shapes):
        grad.set_shape(shape)
    return grads


def lstm(x, kernel, recurrent_kernel, bias, h0, c0, mask=None, recurrent_dropout_mask=None,
         go_backwards=False, activation="tanh", recurrent_activation="sigmoid"):
    """``(outputs, h, c)`` of an LSTM over ``x``, differentiable by TensorFlow."""
    options = (bool(go_backwards), activation, recurrent_activation)
    given = [x, kernel, recurrent_kernel, bias, h0, c0, mask, recurrent_dropout_mask]
    present = tuple(value is not None for value in given)
    arrays = [tf.convert_to_tensor(value) for value in given if value is not None]
    # x, kernel, recurrent_kernel, bias (if any), h0, c0
    differentiable = arrays[:5 + present[3]]
    keep_cache = record.should_record_backprop(differentiable)
    in_graph = not tf.executing_eagerly()
    units = arrays[2].shape[0]
    shapes = (arrays[0].shape[:2].concatenate([units]), arrays[3 + present[3]].shape)

    @tf.custom_gradient
    def run(*arrays):
        outputs, h, c, handle = _forward_op(options, keep_cache, in_graph, list(arrays),
                                            present)
        for tensor, shape in zip((outputs, h, c), (shapes[0], shapes[1], shapes[1])):
            tensor.set_shape(shape)

        def grad(*upstream):
            if save_context.in_save_context():
                # tf.saved_model.save traces the gradients of the graphs it
                # writes: the one moment a SavedModel export can be refused.
                raise NotImplementedError(_NO_SAVEDMODEL)
            upstream = [tf.zeros_like(value) if gradient is None else gradient
                        for gradient, value in zip(upstream, (outputs, h, c))]
            # Eagerly, the cache is there (a tape backpropagates once), and
            # passing the inputs would copy them.
            grads = _backward_op(options, present, handle, arrays, upstream, in_graph)
            dx, dkernel, drecurrent, dbias, dh0, dc0 = grads
            result = [dx, dkernel, drecurrent] + ([dbias] if present[3] else []) + [dh0, dc0]
            # No gradient for the mask and the recurrent dropout mask.
            return result + [None] * (len(arrays) - len(result))

        if keep_cache and not in_graph:
            # The tape keeps grad while it can backpropagate through the
            # outputs: a cache never used goes with it.
            weakref.finalize(grad, _handles.release, int(handle))
        return (outputs, h, c), grad

    return run(*arrays)
