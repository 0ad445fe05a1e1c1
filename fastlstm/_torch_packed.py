"""``fastlstm.torch.LSTM`` on a ``PackedSequence``: the packed kernels, whose
step ``t`` touches only the ``batch_sizes[t]`` sequences still running.

The kernels (``fastlstm/_lstm_packed.pxi``, through :mod:`fastlstm._sequences`)
read the packed rows as PyTorch lays them out, sorted by decreasing length
and time-major, and write the outputs packed the same way: no padding is
made, computed or removed. Each layer and direction is one call of the
operator ``torch.ops.fastlstm.lstm_packed``, with an autograd formula
(``lstm_packed_backward``) and fake implementations; a layer reads the
packed outputs of the one below (both directions side by side), so layers
compose as tensors do. The initial states are taken into the packed order
by ``sorted_indices`` and the final ones back by ``unsorted_indices``, as
``torch.nn.LSTM`` does.
"""
import weakref

import torch

from . import _handles
from ._sequences import packed_backward, packed_forward

__all__ = ["run"]


def _numpy(tensor):
    return tensor.detach().numpy()


def _forward(data, batch_sizes, h0, c0, weights, has_bias, reverse, keep_cache):
    from .torch import _keras_weights

    kernel, recurrent_kernel, bias = _keras_weights(
        [_numpy(w) for w in weights] + [None] * (4 - len(weights)))
    return packed_forward(_numpy(data), _numpy(batch_sizes), kernel, recurrent_kernel, bias,
                          _numpy(h0), _numpy(c0), reverse=reverse, training=keep_cache)


@torch.library.custom_op("fastlstm::lstm_packed", mutates_args=(), device_types="cpu")
def _lstm_packed(data: torch.Tensor, batch_sizes: torch.Tensor, h0: torch.Tensor,
                 c0: torch.Tensor, weights: list[torch.Tensor], has_bias: bool, reverse: bool,
                 keep_cache: bool
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """One layer and direction over a packed batch: ``(outputs, h_n, c_n,
    handle)``.

    ``data`` (rows, input_size) and ``outputs`` (rows, hidden_size) are
    packed; ``batch_sizes`` (int64) those of the ``PackedSequence``;
    ``h0``, ``c0``, ``h_n`` and ``c_n`` (batch, hidden_size) in the packed
    (sorted) order; ``weights`` the layer's parameters in ``torch.nn.LSTM``'s
    order; ``reverse`` runs each sequence from its last step. ``handle``
    names the record kept for the backward operator (0: none).
    """
    outputs, h_n, c_n, record = _forward(data, batch_sizes, h0, c0, weights, has_bias, reverse,
                                         keep_cache)
    handle = _handles.keep(record) if keep_cache else 0
    handle_tensor = torch.tensor(handle, dtype=torch.int64)
    if handle:
        # The record lives as long as the handle, which autograd keeps until
        # the backward pass or until it frees a graph never backpropagated.
        weakref.finalize(handle_tensor, _handles.release, handle)
    return (torch.from_numpy(outputs), torch.from_numpy(h_n), torch.from_numpy(c_n),
            handle_tensor)


@_lstm_packed.register_fake
def _lstm_packed_fake(data, batch_sizes, h0, c0, weights, has_bias, reverse, keep_cache):
    rows, hidden = data.shape[0], weights[1].shape[1]
    return (data.new_empty((rows, hidden)), h0.new_empty(h0.shape), c0.new_empty(c0.shape),
            data.new_empty((), dtype=torch.int64))


@torch.library.custom_op("fastlstm::lstm_packed_backward", mutates_args=(), device_types="cpu")
def _lstm_packed_backward(handle: torch.Tensor, grad_outputs: torch.Tensor,
                          grad_h: torch.Tensor, grad_c: torch.Tensor, data: torch.Tensor,
                          batch_sizes: torch.Tensor, h0: torch.Tensor, c0: torch.Tensor,
                          weights: list[torch.Tensor], has_bias: bool, reverse: bool,
                          input_gradient: bool) -> list[torch.Tensor]:
    """The gradients of ``fastlstm::lstm_packed``'s ``data`` (empty without
    ``input_gradient``), ``h0``, ``c0`` and ``weights``, from its handle and
    the gradients of its outputs; the forward pass's arguments serve only
    when the record is gone."""
    from .convert import _torch_gradients_from_keras
    from .torch import _c_order

    record = _handles.take(handle)
    if record is None:
        # A second backward pass through a retained graph: the first wrote
        # the gate gradients over the kept gates, so the forward runs again.
        record = _forward(data, batch_sizes, h0, c0, weights, has_bias, reverse, True)[3]
    dx, dkernel, drecurrent, dbias, dh0, dc0 = packed_backward(
        record, _numpy(grad_outputs), _numpy(grad_h), _numpy(grad_c),
        input_gradient=input_gradient)
    result = [data.new_empty(0) if dx is None else torch.from_numpy(dx),
              torch.from_numpy(dh0), torch.from_numpy(dc0)]
    gradients = _torch_gradients_from_keras(dkernel, drecurrent, dbias)
    # In the parameters' layout, so that autograd takes them as they are.
    result += [torch.from_numpy(_c_order(g) if g.ndim == 2 else g)
               for g in gradients[:4 if has_bias else 2]]
    return result


@_lstm_packed_backward.register_fake
def _lstm_packed_backward_fake(handle, grad_outputs, grad_h, grad_c, data, batch_sizes, h0, c0,
                               weights, has_bias, reverse, input_gradient):
    return [data.new_empty(data.shape if input_gradient else 0), h0.new_empty(h0.shape),
            c0.new_empty(c0.shape), *(w.new_empty(w.shape) for w in weights)]


def _setup_context(ctx, inputs, output):
    data, batch_sizes, h0, c0, weights, has_bias, reverse, _ = inputs
    ctx.has_bias, ctx.reverse = has_bias, reverse
    ctx.save_for_backward(output[3], data, batch_sizes, h0, c0, *weights)


def _gradients(ctx, grad_outputs, grad_h, grad_c, _grad_handle):
    from .torch import _NO_DOUBLE_BACKWARD

    handle, data, batch_sizes, h0, c0, *weights = ctx.saved_tensors
    needs_data, _, needs_h0, needs_c0, needs_weights = ctx.needs_input_grad[:5]
    with torch.no_grad():
        grads = _lstm_packed_backward(handle, grad_outputs.contiguous(), grad_h.contiguous(),
                                      grad_c.contiguous(), data, batch_sizes, h0, c0, weights,
                                      ctx.has_bias, ctx.reverse, needs_data)
    needed = [needs_data, needs_h0, needs_c0, *needs_weights]
    grads = [g if need else None for g, need in zip(grads, needed)]
    if torch.is_grad_enabled() and any(
            t is not None and t.requires_grad
            for t in (*ctx.saved_tensors, grad_outputs, grad_h, grad_c)):
        # As for the padded operator (fastlstm/torch.py): the kernels'
        # backward pass has no derivative, so create_graph=True leads to a
        # node that raises if anything differentiates through it.
        error = torch._C._functions.DelayedError(_NO_DOUBLE_BACKWARD, len(grads))
        grads = error(*[None if g is None else g.detach().requires_grad_(True)
                        for g in grads])
    dx, dh0, dc0, *dweights = grads
    return dx, None, dh0, dc0, list(dweights), None, None, None


_lstm_packed.register_autograd(_gradients, setup_context=_setup_context)


def run(module, packed, h0, c0):
    """``module`` (a :class:`fastlstm.torch.LSTM`) over the ``PackedSequence``
    ``packed``: the last layer's packed outputs, ``h_n`` and ``c_n``
    (layers * directions, batch, hidden_size) in the batch's order. ``h0``
    and ``c0`` are in that order too, or None for zeros."""
    from .torch import _keep_cache

    data, batch_sizes = packed.data, packed.batch_sizes
    directions = 2 if module.bidirectional else 1
    kinds = ("weight_ih", "weight_hh", "bias_ih", "bias_hh")[:4 if module.bias else 2]
    if h0 is None:
        h0 = c0 = data.new_zeros((module.num_layers * directions, int(batch_sizes[0]),
                                  module.hidden_size))
    elif packed.sorted_indices is not None:
        h0 = h0.index_select(1, packed.sorted_indices)
        c0 = c0.index_select(1, packed.sorted_indices)
    x, h_n, c_n = data, [], []
    for layer in range(module.num_layers):
        outputs = []
        for direction in range(directions):
            index = layer * directions + direction
            suffix = f"_l{layer}{'_reverse' if direction else ''}"
            weights = [getattr(module, kind + suffix) for kind in kinds]
            keep_cache = _keep_cache(x, h0, c0, *weights)
            output, h, c, _ = _lstm_packed(x, batch_sizes, h0[index], c0[index], weights,
                                           module.bias, bool(direction), keep_cache)
            outputs.append(output)
            h_n.append(h)
            c_n.append(c)
        x = outputs[0] if directions == 1 else torch.cat(outputs, 1)
        if layer + 1 < module.num_layers and module.training and module.dropout > 0:
            x = x * _dropout_noise(x, module.dropout)
    h_n, c_n = torch.stack(h_n), torch.stack(c_n)
    if packed.unsorted_indices is not None:
        h_n = h_n.index_select(1, packed.unsorted_indices)
        c_n = c_n.index_select(1, packed.unsorted_indices)
    return x, h_n, c_n


def _dropout_noise(x, rate):
    """Inverted dropout's multipliers over the packed rows ``x``, one
    Bernoulli draw per value in that layout, as ``torch.nn.LSTM`` draws
    them: ``torch.manual_seed`` gives both classes the same masks."""
    if rate == 1:
        return torch.zeros_like(x)
    return torch.empty_like(x).bernoulli_(1 - rate).div_(1 - rate)
