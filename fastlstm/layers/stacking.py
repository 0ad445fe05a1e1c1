"""Consecutive LSTM layers of a model, run as one pipelined stack.

:func:`plan_calls` groups a model's layers into calls: most layers are
called on their own; a run of LSTM layers, each but the last returning
sequences, with at most a :class:`~fastlstm.layers.Dropout` between two of
them, becomes one :class:`LSTMStackCall`. Such a call runs its layers as
one :func:`fastlstm.lstm_stack_forward` when the measured rule
(``fastlstm._plan.pipeline_stack``) says the pipelined kernel is faster,
and one by one, exactly as the layers themselves would run, otherwise.
Either way every layer draws its dropout masks from its own generator in
the order it would on its own, so a seed gives the same masks.
"""
import numpy as np

from .. import _plan
from .._stack import lstm_stack_backward, lstm_stack_forward, served_stack_forward
from .._validation import as_mask, as_real_array
from .base import _INSIDE_NO_GRAD, grad_enabled
from .core import Dropout
from .lstm import LSTM

__all__ = ["plan_calls", "LSTMStackCall"]

_IN_STACK = ("this layer last ran inside a pipelined stack of LSTM layers of its model; "
             "backpropagate through the model's backward(), which runs the whole stack")


def _stacks(layer):
    """Whether ``layer`` can be a member LSTM of a pipelined stack."""
    return (isinstance(layer, LSTM) and not layer.stateful and not layer.return_state
            and not layer._zero_output_for_mask and not layer.quantization_mode
            and layer.proj_units is None)


def _run_end(layers, i):
    """``(end, count)``: the longest run of stackable layers from
    ``layers[i]`` is ``layers[i:end]``, holding ``count`` LSTM layers."""
    if not _stacks(layers[i]):
        return i + 1, 0
    dtype, end, count, j = layers[i].dtype, i + 1, 1, i
    while layers[j].return_sequences:
        k = j + 1
        if k < len(layers) and isinstance(layers[k], Dropout) and layers[k].dtype == dtype:
            k += 1
        if (k >= len(layers) or not _stacks(layers[k]) or layers[k].go_backwards
                or layers[k].dtype != dtype):
            break
        j, end, count = k, k + 1, count + 1
    return end, count


def plan_calls(layers):
    """The calls that run ``layers`` in order: ``(first, last, call)``
    triples, ``call`` a layer, or an :class:`LSTMStackCall` of layers
    ``first`` to ``last`` (inclusive) holding at least two LSTM layers."""
    calls, i = [], 0
    while i < len(layers):
        end, count = _run_end(layers, i)
        if count >= 2:
            calls.append((i, end - 1, LSTMStackCall(layers[i:end])))
            i = end
        else:
            calls.append((i, i, layers[i]))
            i += 1
    return calls


class LSTMStackCall:
    """One call of a run of LSTM layers (with Dropout layers between some
    of them), pipelined when the measured rule says so.

    Not a layer: a model builds one per forward pass from its layers, which
    keep their weights, gradients and configuration.
    """

    def __init__(self, layers):
        self.layers = list(layers)
        self.lstms = [layer for layer in self.layers if isinstance(layer, LSTM)]
        self._record = None
        self._pipelined = False

    def compute_mask(self, x, mask=None):
        """The mask after the last layer."""
        for layer in self.layers:
            mask = layer.compute_mask(x, mask)
        return mask

    def _runs_pipelined(self, x):
        """Whether this call runs pipelined; building the layers first if
        they are not (as their own first call would). Input the layers would
        refuse runs one by one, so that they raise their own errors."""
        if x.ndim != 3 or min(x.shape) == 0:
            return False
        features = x.shape[2]
        for layer in self.lstms:
            if not layer.built:
                layer.build(features)
            if layer.input_dim != features:
                return False
            features = layer.units
        return _plan.pipeline_stack(*x.shape, [layer.units for layer in self.lstms])

    def __call__(self, x, mask=None, training=False):
        """Run the layers; pipelined or one by one."""
        first = self.lstms[0]
        x = as_real_array(x, "x", first.dtype)
        self._record = None
        self._pipelined = self._runs_pipelined(x)
        if not self._pipelined:
            for layer in self.layers:
                y = layer(x, mask=mask, training=training)
                mask = layer.compute_mask(x, mask)
                x = y
            return x
        batch, timesteps, _ = x.shape
        keep = None if mask is None else as_mask(mask, "mask", (batch, timesteps))
        input_dropout, between, recurrent = None, [], []
        below = None  # the mask of the Dropout layer below the next LSTM
        for layer in self.layers:
            if isinstance(layer, Dropout):
                below = layer.draw_mask((batch, timesteps, self._units_below(layer)), training)
                continue
            multiplier = below
            drop, recurrent_drop = layer.dropout_masks(batch, training)
            if drop is not None:
                if layer is first:
                    input_dropout = drop
                else:
                    drop = np.broadcast_to(drop[:, None, :], (batch, timesteps, layer.input_dim))
                    multiplier = drop if multiplier is None else multiplier * drop
            if layer is not first:
                between.append(multiplier)
            recurrent.append(recurrent_drop)
            below = None
        if input_dropout is not None:
            x = x * input_dropout[:, None, :]
        record = grad_enabled()
        cache = None
        if record or any(m is not None for m in between + recurrent):
            outputs, _, cache = lstm_stack_forward(
                x, [layer.kernel_weights for layer in self.lstms],
                mask=keep, go_backwards=[first.go_backwards] + [False] * (len(self.lstms) - 1),
                dropout_masks=between, recurrent_dropout_masks=recurrent,
                activation=[layer.activation for layer in self.lstms],
                recurrent_activation=[layer.recurrent_activation for layer in self.lstms],
                return_cache=record, pipelined=True)
        else:
            # The layers' packed weights, kept between calls as each layer's own.
            outputs = served_stack_forward(x, [layer.packed_lstm() for layer in self.lstms], keep,
                                           first.go_backwards)[0]
        for layer in self.layers:
            layer.drop_record(_IN_STACK if record else _INSIDE_NO_GRAD)
        last = self.lstms[-1]
        any_kept = None if keep is None or last.return_sequences else keep.any(axis=1)
        self._record = (cache, input_dropout, any_kept, x.shape) if record else None
        return outputs if last.return_sequences else outputs[:, -1].copy()

    def _units_below(self, dropout):
        index = self.layers.index(dropout)
        return self.layers[index - 1].units

    def backward(self, dy, input_gradient=True):
        """Backpropagate through the layers of the last call; fills each
        LSTM's ``grads`` and returns the input's gradient (None without
        ``input_gradient``)."""
        if not self._pipelined:
            dx = dy
            for position in reversed(range(len(self.layers))):
                layer = self.layers[position]
                dx = layer.backward(dx, input_gradient or position > 0)
            return dx
        if self._record is None:
            raise RuntimeError(_INSIDE_NO_GRAD)
        cache, input_dropout, any_kept, x_shape = self._record
        self._record = None
        last = self.lstms[-1]
        batch, timesteps, _ = x_shape
        grad_outputs, grad_states = None, None
        if last.return_sequences:
            grad_outputs = last._grad_array(dy, "dy", (batch, timesteps, last.units))
        else:
            d_h = last._grad_array(dy, "dy", (batch, last.units))
            if any_kept is not None:
                d_h = np.where(any_kept[:, None], d_h, 0)
            grad_states = [None] * (len(self.lstms) - 1) + [[d_h, None]]
        grads = lstm_stack_backward(cache, grad_outputs, grad_states, input_gradient)
        for layer, layer_grads in zip(self.lstms, grads.layers):
            layer.take_gradients(layer_grads)
        dx = grads.x
        if dx is not None and input_dropout is not None:
            dx *= input_dropout[:, None, :]
        return dx
