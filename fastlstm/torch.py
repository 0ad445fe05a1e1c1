"""``torch.nn.LSTM`` on fastlstm's kernels: a drop-in module for CPU training.

:class:`LSTM` takes ``torch.nn.LSTM``'s arguments, holds the same parameters
under the same names and shapes, and returns what it returns, so a training
script swaps the class and keeps its checkpoints.

Operators. The kernels run as two ``torch.library`` custom operators,
``torch.ops.fastlstm.lstm_stack`` and ``lstm_stack_backward`` (for a
``PackedSequence``, ``lstm_packed`` and its backward), with an
autograd formula and fake (shape-only) implementations, so that
``torch.compile`` and ``torch.export`` see each call as one node of their
graph. A unidirectional module runs all its layers as one call of
:func:`fastlstm.lstm_stack_forward` (pipelined where the planner says so);
a bidirectional one runs layer after layer, each direction a stack of one.
The forward operator keeps the kernels' cache in ``fastlstm/_handles.py``
and returns its handle as a 0-d int64 tensor, which autograd saves for the
backward operator. Calls with nothing to differentiate, eager or
compiled, go through a :class:`~fastlstm.PackedLSTM` per layer and
direction, kept by the module until a weight changes (the operator finds the
module's by a number). In an ONNX export the module records
``torch.nn.LSTM``'s own operator over the same parameters, so that both of
PyTorch's exporters write the ONNX ``LSTM`` nodes they write for
``torch.nn.LSTM``, and the exported graph never needs fastlstm.

Layout. fastlstm computes batch-major, ``(batch, timesteps, features)``
C-contiguous, so with ``batch_first=True`` the input and the outputs share
memory with the NumPy arrays the kernels read and write. With
``batch_first=False`` the input is copied once into batch-major order, and
the output once back into time-major order. The weights are copied once a
call into fastlstm's layout (``kernel = weight_ih.T``), as the kernels stack
them into their own workspace on each call.

Variable lengths. A ``PackedSequence`` runs on the packed kernels
(``fastlstm/_lstm_packed.pxi``): step ``t`` touches only the
``batch_sizes[t]`` sequences still running, and the rows stay packed from
input to output, so a packed batch costs its valid steps only. Traced
(``torch.compile``, ``torch.jit.trace``), and for a unidirectional stack
the planner pipelines, it is laid out padded, batch-major, and runs on the
masked kernels (a step ``t`` of a sequence of
length ``n`` is kept when ``t < n``): a masked step carries the state
unchanged, so the final state of the forward direction is the state at each
sequence's last valid step. The reverse direction processes the steps in
reverse order (``go_backwards``): its masked steps come first and carry the
initial state to each sequence's own last valid step, where it starts, as
PyTorch's does.

Projection. With ``proj_size > 0`` (an LSTM with projections, LSTMP)
every layer and direction runs as its own call of the projected kernels
(:func:`fastlstm.lstm_forward` with a ``projection_kernel``) through a
``torch.autograd.Function``, not the custom operators above, whose
signature and stacked kernels have no projection: ``torch.compile`` breaks
its graph there (``fullgraph=True`` fails), ``torch.export`` and an ONNX
export raise (ONNX's ``LSTM`` has no projection).

Importing :mod:`fastlstm` never imports PyTorch; this module needs it
(``pip install "fastlstm[torch]"``).
"""
import itertools
import math
from typing import Optional
import warnings
import weakref

try:
    import torch
except ImportError as error:
    raise ImportError('fastlstm.torch needs PyTorch; install it with '
                      'pip install "fastlstm[torch]"') from error
from torch.nn.utils.rnn import PackedSequence

import numpy as np

from ._validation import (as_mask, check_bool, check_features, check_not_empty, check_shape,
                          check_state_list, describe)
from . import _handles, _plan
from .convert import _keras_from_torch, _torch_gradients_from_keras
from ._packed import PackedLSTM
from ._sequences import packed_backward, packed_forward
from .functional import lstm_backward, lstm_forward
from ._stack import lstm_stack_backward, lstm_stack_forward, served_stack_forward

__all__ = ["LSTM"]

_DTYPES = (torch.float32, torch.float64)
_KINDS = ("weight_ih", "weight_hh", "bias_ih", "bias_hh")
_NO_DOUBLE_BACKWARD = (
    "fastlstm.torch.LSTM computes first-order gradients only: its backward pass cannot be "
    "differentiated again (a gradient penalty, double backward, Hessian-vector products). "
    "Use torch.nn.LSTM for the part of the model that needs second-order gradients")


def _first_order(grads, tensors):
    """The gradients ``grads`` (a list, None where not needed) of a kernel's
    backward pass, as they are unless autograd is recording them
    (``create_graph=True``) and one of ``tensors`` (what they were computed
    from) requires grad. Then they are right, but the kernels' backward pass
    has no derivative of its own: they are returned behind a node that raises
    if anything differentiates through them, rather than as constants that
    would silently drop a second-order term (a gradient penalty, say).
    ``torch.autograd.function.once_differentiable`` does the same, but looks
    only at the incoming gradients."""
    if not torch.is_grad_enabled() or not any(t is not None and t.requires_grad
                                              for t in tensors):
        return list(grads)
    error = torch._C._functions.DelayedError(_NO_DOUBLE_BACKWARD, len(grads))
    return list(error(*[None if g is None else g.detach().requires_grad_(True)
                        for g in grads]))


def _describe(value):
    if isinstance(value, torch.Tensor):
        return (f"a tensor of shape {tuple(value.shape)}, dtype {value.dtype} on device "
                f"{value.device}")
    return describe(value)


def _numpy(tensor):
    """A NumPy view of a CPU tensor's memory (None stays None)."""
    return None if tensor is None else tensor.detach().numpy()


def _c_order(matrix):
    """A 2-D array in C order: itself, or a copy made by PyTorch.

    PyTorch's weights are the transposes of fastlstm's, and so are the
    gradients. Copied in one pass, a transposed matrix is read with the
    stride of a whole row of its own layout (input_size, hidden_size or
    4 * hidden_size values), often a power of two that maps the reads to few
    cache sets. PyTorch copies a transposed matrix by blocks, on its
    threads: 2x faster than NumPy's tile by tile at (256, 1024) and
    (512, 2048) on two threads, 2.5x to 4x faster than NumPy's one pass.
    """
    if matrix.flags.c_contiguous:
        return matrix
    return torch.from_numpy(matrix).contiguous().numpy()


class _InferenceCache:
    """A module's :class:`~fastlstm.PackedLSTM` per layer and direction, for
    calls with nothing to differentiate, each kept until one of its weights
    changes: each tensor's ``_version`` counts its in-place changes, so an
    optimizer step, ``load_state_dict`` or ``copy_`` is seen."""

    def __init__(self):
        self._packed = {}

    def packed(self, index, weights):
        """The :class:`~fastlstm.PackedLSTM` of layer and direction
        ``index``, whose parameters are ``weights``."""
        weights = (*weights, *(None,) * (len(_KINDS) - len(weights)))
        key = tuple(None if w is None else (w.data_ptr(), w._version, w.dtype)
                    for w in weights)
        cached = self._packed.get(index)
        if cached is None or cached[0] != key:
            views = [_numpy(w) for w in weights]
            # The views keep the weights' memory alive while they are the
            # key, so that no other tensor can take their addresses.
            cached = self._packed[index] = (key, PackedLSTM(*_keras_weights(views)), views)
        return cached[1]

    def run(self, index, x, h0, c0, weights, mask, reverse):
        """Layer and direction ``index`` over ``x``: the outputs (in time
        order), ``h_n`` and ``c_n`` as ``(1, batch, hidden_size)`` tensors,
        as from a stack of one."""
        initial_state = None if h0 is None else [_numpy(h0[0]), _numpy(c0[0])]
        outputs, h_n, c_n = self.packed(index, weights)(
            _numpy(x), initial_state=initial_state, mask=_numpy(mask), go_backwards=reverse)
        return (_as_tensors(outputs, reverse), torch.from_numpy(h_n)[None],
                torch.from_numpy(c_n)[None])


# Each module's _InferenceCache under a number that the operator takes: a
# compiled or exported graph cannot carry the module itself.
_INFERENCE_CACHES = weakref.WeakValueDictionary()
_inference_numbers = itertools.count(1)


def _register(cache):
    number = next(_inference_numbers)
    _INFERENCE_CACHES[number] = cache
    return number


def _layers(weights, has_bias):
    """Each layer's ``(weight_ih, weight_hh, bias_ih, bias_hh)`` from the
    flat list the operators take (the biases None without them)."""
    count = 4 if has_bias else 2
    return [(*weights[i:i + count], *(None,) * (4 - count))
            for i in range(0, len(weights), count)]


def _run_stack(x, h0, c0, weights, has_bias, mask, dropout, reverse, keep_cache):
    """:func:`fastlstm.lstm_stack_forward` on tensors: the outputs (in time
    order), ``h_n`` and ``c_n`` (layers, batch, hidden) as tensors, and the
    cache."""
    layers = [_keras_weights([_numpy(w) for w in layer]) for layer in _layers(weights, has_bias)]
    states = None if h0 is None else [list(s) for s in zip(_numpy(h0), _numpy(c0))]
    outputs, final, cache = lstm_stack_forward(
        _numpy(x), layers, initial_states=states, mask=_numpy(mask), go_backwards=reverse,
        dropout_masks=None if dropout is None else list(_numpy(dropout)),
        return_cache=keep_cache)
    h_n, c_n = (torch.from_numpy(np.stack(s)) for s in zip(*final))
    return _as_tensors(outputs, reverse), h_n, c_n, cache


@torch.library.custom_op("fastlstm::lstm_stack", mutates_args=(), device_types="cpu")
def _lstm_stack(x: torch.Tensor, h0: Optional[torch.Tensor], c0: Optional[torch.Tensor],
                weights: list[torch.Tensor], has_bias: bool, mask: Optional[torch.Tensor],
                dropout: Optional[torch.Tensor], reverse: bool, keep_cache: bool,
                inference_cache: int, first_index: int
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """A stack of unidirectional layers, or one direction of one layer:
    ``(outputs, h_n, c_n, handle)``.

    ``x`` is batch-major ``(batch, timesteps, input_size)``; ``h0`` and
    ``c0`` are ``(layers, batch, hidden_size)`` or None for zeros;
    ``weights`` are the layers' parameters in ``torch.nn.LSTM``'s order;
    ``mask`` (batch, timesteps) keeps the steps of packed sequences;
    ``dropout`` (layers - 1, batch, timesteps, hidden_size) multiplies the
    input of every layer but the first; ``reverse`` runs one layer from the
    last step (its outputs still in time order). ``handle`` names the cache
    kept for the backward operator (0: none). Without ``keep_cache``, the
    layers run through the module's ``_InferenceCache`` numbered
    ``inference_cache`` (0: none), as its layers ``first_index`` onwards.
    """
    cache = _INFERENCE_CACHES.get(inference_cache)
    if cache is not None and not keep_cache:
        outputs, h_n, c_n = _run_inference(cache, first_index, x, h0, c0,
                                           _layers(weights, has_bias), mask, dropout, reverse)
        return outputs, h_n, c_n, torch.tensor(0, dtype=torch.int64)
    outputs, h_n, c_n, cache = _run_stack(x, h0, c0, weights, has_bias, mask, dropout, reverse,
                                          keep_cache)
    handle = _handles.keep(cache) if keep_cache else 0
    handle_tensor = torch.tensor(handle, dtype=torch.int64)
    if handle:
        # The cache lives as long as the handle, which autograd keeps until
        # the backward pass or until it frees a graph never backpropagated.
        weakref.finalize(handle_tensor, _handles.release, handle)
    return outputs, h_n, c_n, handle_tensor


def _run_inference(cache, first_index, x, h0, c0, layers, mask, dropout, reverse):
    """The layers through ``cache``: the outputs and the stacked ``h_n`` and
    ``c_n``, as :func:`_run_stack` returns them. A unidirectional stack the
    planner pipelines runs as one pipelined call on the layers' packed
    weights; otherwise the layers run one after the other."""
    batch, timesteps, features = x.shape
    units = [layer[1].shape[1] for layer in layers]
    if (len(layers) >= 2 and dropout is None and not reverse
            and _plan.pipeline_stack(batch, timesteps, features, units)):
        served = [cache.packed(first_index + i, [w for w in layer if w is not None])
                  for i, layer in enumerate(layers)]
        states = None if h0 is None else [[h, c] for h, c in zip(_numpy(h0), _numpy(c0))]
        keep = None if mask is None else as_mask(_numpy(mask), "mask", (batch, timesteps))
        outputs, final = served_stack_forward(
            np.ascontiguousarray(_numpy(x), served[0].dtype), served, keep, False, states)
        h_n, c_n = (torch.from_numpy(np.stack(s)) for s in zip(*final))
        return torch.from_numpy(outputs), h_n, c_n
    h_n, c_n = [], []
    for i, layer in enumerate(layers):
        if i and dropout is not None:
            x = x * dropout[i - 1]
        state = (None, None) if h0 is None else (h0[i:i + 1], c0[i:i + 1])
        x, h, c = cache.run(first_index + i, x, *state,
                            [w for w in layer if w is not None], mask, reverse)
        h_n.append(h)
        c_n.append(c)
    return x, torch.cat(h_n), torch.cat(c_n)


@_lstm_stack.register_fake
def _lstm_stack_fake(x, h0, c0, weights, has_bias, mask, dropout, reverse, keep_cache,
                     inference_cache, first_index):
    batch, timesteps, _ = x.shape
    hidden = weights[1].shape[1]
    states = (len(_layers(weights, has_bias)), batch, hidden)
    return (x.new_empty((batch, timesteps, hidden)), x.new_empty(states), x.new_empty(states),
            x.new_empty((), dtype=torch.int64))


@torch.library.custom_op("fastlstm::lstm_stack_backward", mutates_args=(), device_types="cpu")
def _lstm_stack_backward(handle: torch.Tensor, grad_outputs: torch.Tensor,
                         grad_h: torch.Tensor, grad_c: torch.Tensor, x: torch.Tensor,
                         h0: Optional[torch.Tensor], c0: Optional[torch.Tensor],
                         weights: list[torch.Tensor], has_bias: bool,
                         mask: Optional[torch.Tensor], dropout: Optional[torch.Tensor],
                         reverse: bool, input_gradient: bool) -> list[torch.Tensor]:
    """The gradients of ``fastlstm::lstm_stack``'s ``x`` (empty without
    ``input_gradient``), ``h0``, ``c0`` and ``weights``, from its handle and
    the gradients of its outputs; the forward pass's arguments serve only
    when the cache is gone."""
    cache = _handles.take(handle)
    if cache is None:
        # A second backward pass through a retained graph: the first wrote
        # the gate gradients over the cached gates, so the forward runs again.
        cache = _run_stack(x, h0, c0, weights, has_bias, mask, dropout, reverse, True)[3]
    grad_outputs = _numpy(grad_outputs)
    if reverse:
        grad_outputs = grad_outputs[:, ::-1]
    grads = lstm_stack_backward(cache, grad_outputs,
                                [list(g) for g in zip(_numpy(grad_h), _numpy(grad_c))],
                                input_gradient=input_gradient)
    result = [x.new_empty(0) if grads.x is None else torch.from_numpy(grads.x)]
    result += [torch.from_numpy(np.stack([getattr(layer, name) for layer in grads.layers]))
               for name in ("h0", "c0")]
    for layer in grads.layers:
        layer_grads = _torch_gradients_from_keras(layer.kernel, layer.recurrent_kernel,
                                                  layer.bias)
        # In the parameters' layout, so that autograd takes them as they are.
        result += [torch.from_numpy(_c_order(g) if g.ndim == 2 else g)
                   for g in layer_grads[:4 if has_bias else 2]]
    return result


@_lstm_stack_backward.register_fake
def _lstm_stack_backward_fake(handle, grad_outputs, grad_h, grad_c, x, h0, c0, weights, has_bias,
                              mask, dropout, reverse, input_gradient):
    return [x.new_empty(x.shape if input_gradient else 0), grad_h.new_empty(grad_h.shape),
            grad_c.new_empty(grad_c.shape), *(w.new_empty(w.shape) for w in weights)]


def _setup_context(ctx, inputs, output):
    x, h0, c0, weights, has_bias, mask, dropout, reverse, *_ = inputs
    ctx.has_bias, ctx.reverse = has_bias, reverse
    ctx.save_for_backward(output[3], x, h0, c0, mask, dropout, *weights)


def _stack_gradients(ctx, grad_outputs, grad_h, grad_c, _grad_handle):
    handle, x, h0, c0, mask, dropout, *weights = ctx.saved_tensors
    needs_x, needs_h0, needs_c0, needs_weights = ctx.needs_input_grad[:4]
    with torch.no_grad():
        grads = _lstm_stack_backward(handle, grad_outputs, grad_h, grad_c, x, h0, c0, weights,
                                     ctx.has_bias, mask, dropout, ctx.reverse, needs_x)
    needed = [needs_x, needs_h0, needs_c0, *needs_weights]
    grads = _first_order([g if need else None for g, need in zip(grads, needed)],
                         (*ctx.saved_tensors, grad_outputs, grad_h, grad_c))
    dx, dh0, dc0, *dweights = grads
    return dx, dh0, dc0, list(dweights), None, None, None, None, None, None, None


_lstm_stack.register_autograd(_stack_gradients, setup_context=_setup_context)


def _keras_weights(views):
    """(kernel, recurrent_kernel, bias) in fastlstm's layout, C-ordered, from
    NumPy views of one layer and direction's PyTorch parameters."""
    kernel, recurrent_kernel, bias = _keras_from_torch(*views)
    return _c_order(kernel), _c_order(recurrent_kernel), bias


def _as_tensors(outputs, reverse):
    """A direction's outputs as a tensor sharing their memory, in time
    order: go_backwards returns them in processing order, reversed here by a
    copy, since for one step the reversed view counts as contiguous but
    keeps its negative stride, which torch.from_numpy refuses."""
    if reverse:
        outputs = outputs[:, ::-1].copy()
    return torch.from_numpy(outputs)


# A PackedSequence: the packed kernels, whose step t touches only the
# batch_sizes[t] sequences still running. They read the packed rows as
# PyTorch lays them out (sorted by decreasing length, time-major) and write
# the outputs packed the same way: no padding is made, computed or removed.
# Each layer and direction is one call of torch.ops.fastlstm.lstm_packed,
# with an autograd formula (lstm_packed_backward) and fake implementations;
# a layer reads the packed outputs of the one below (both directions side by
# side), so layers compose as tensors do. The initial states are taken into
# the packed order by sorted_indices and the final ones back by
# unsorted_indices, as torch.nn.LSTM does.

def _packed_call(data, batch_sizes, h0, c0, weights, has_bias, reverse, keep_cache):
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
    outputs, h_n, c_n, record = _packed_call(data, batch_sizes, h0, c0, weights, has_bias, reverse,
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
    record = _handles.take(handle)
    if record is None:
        # A second backward pass through a retained graph: the first wrote
        # the gate gradients over the kept gates, so the forward runs again.
        record = _packed_call(data, batch_sizes, h0, c0, weights, has_bias, reverse, True)[3]
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


def _packed_setup_context(ctx, inputs, output):
    data, batch_sizes, h0, c0, weights, has_bias, reverse, _ = inputs
    ctx.has_bias, ctx.reverse = has_bias, reverse
    ctx.save_for_backward(output[3], data, batch_sizes, h0, c0, *weights)


def _packed_gradients(ctx, grad_outputs, grad_h, grad_c, _grad_handle):
    handle, data, batch_sizes, h0, c0, *weights = ctx.saved_tensors
    needs_data, _, needs_h0, needs_c0, needs_weights = ctx.needs_input_grad[:5]
    with torch.no_grad():
        grads = _lstm_packed_backward(handle, grad_outputs.contiguous(), grad_h.contiguous(),
                                      grad_c.contiguous(), data, batch_sizes, h0, c0, weights,
                                      ctx.has_bias, ctx.reverse, needs_data)
    needed = [needs_data, needs_h0, needs_c0, *needs_weights]
    grads = _first_order([g if need else None for g, need in zip(grads, needed)],
                         (*ctx.saved_tensors, grad_outputs, grad_h, grad_c))
    dx, dh0, dc0, *dweights = grads
    return dx, None, dh0, dc0, list(dweights), None, None, None


_lstm_packed.register_autograd(_packed_gradients, setup_context=_packed_setup_context)


def _run_packed(module, packed, h0, c0):
    """``module`` (a :class:`fastlstm.torch.LSTM`) over the ``PackedSequence``
    ``packed``: the last layer's packed outputs, ``h_n`` and ``c_n``
    (layers * directions, batch, hidden_size) in the batch's order. ``h0``
    and ``c0`` are in that order too, or None for zeros."""
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
            x = x * _packed_dropout_noise(x, module.dropout)
    h_n, c_n = torch.stack(h_n), torch.stack(c_n)
    if packed.unsorted_indices is not None:
        h_n = h_n.index_select(1, packed.unsorted_indices)
        c_n = c_n.index_select(1, packed.unsorted_indices)
    return x, h_n, c_n


def _packed_dropout_noise(x, rate):
    """Inverted dropout's multipliers over the packed rows ``x``, one
    Bernoulli draw per value in that layout, as ``torch.nn.LSTM`` draws
    them: ``torch.manual_seed`` gives both classes the same masks."""
    if rate == 1:
        return torch.zeros_like(x)
    return torch.empty_like(x).bernoulli_(1 - rate).div_(1 - rate)


class _ProjectedLSTM(torch.autograd.Function):
    """One layer and direction of a projected LSTM on fastlstm's projected
    kernels: ``(outputs, h_n, c_n)``, the outputs in time order."""

    @staticmethod
    def _run(x, h0, c0, mask, reverse, weights, keep_cache):
        weight_ih, weight_hh, bias_ih, bias_hh, weight_hr = weights
        kernel, recurrent_kernel, bias = _keras_weights(
            [_numpy(w) for w in (weight_ih, weight_hh, bias_ih, bias_hh)])
        projection_kernel = _c_order(_numpy(weight_hr).T)
        state = None if h0 is None else [_numpy(h0), _numpy(c0)]
        return lstm_forward(_numpy(x), kernel, recurrent_kernel, bias, initial_state=state,
                            mask=_numpy(mask), go_backwards=reverse, return_cache=keep_cache,
                            projection_kernel=projection_kernel)

    @staticmethod
    def forward(ctx, x, h0, c0, mask, reverse, weight_ih, weight_hh, bias_ih, bias_hh,
                weight_hr):
        weights = (weight_ih, weight_hh, bias_ih, bias_hh, weight_hr)
        outputs, h_n, c_n, cache = _ProjectedLSTM._run(x, h0, c0, mask, reverse, weights,
                                                       any(ctx.needs_input_grad))
        ctx.cache, ctx.reverse = cache, reverse
        ctx.save_for_backward(x, h0, c0, mask, *weights)
        return _as_tensors(outputs, reverse), torch.from_numpy(h_n), torch.from_numpy(c_n)

    @staticmethod
    def backward(ctx, grad_outputs, grad_h, grad_c):
        incoming = (grad_outputs, grad_h, grad_c)
        x, h0, c0, mask, *weights = ctx.saved_tensors
        has_bias = weights[2] is not None
        if ctx.cache is None:
            # A second backward pass through a retained graph: the first wrote
            # the gate gradients over the kept gates, so the forward runs again.
            ctx.cache = _ProjectedLSTM._run(x, h0, c0, mask, ctx.reverse, weights, True)[3]
        grad_outputs = _numpy(grad_outputs)
        if ctx.reverse:
            grad_outputs = grad_outputs[:, ::-1]
        needs_x, needs_h0, needs_c0 = ctx.needs_input_grad[:3]
        grads = lstm_backward(ctx.cache, grad_outputs, _numpy(grad_h), _numpy(grad_c),
                              input_gradient=needs_x)
        ctx.cache = None
        d_ih, d_hh, d_bih, d_bhh = _torch_gradients_from_keras(
            grads.kernel, grads.recurrent_kernel, grads.bias)
        dweights = [torch.from_numpy(_c_order(g)) for g in (d_ih, d_hh)]
        if has_bias:
            dweights += [torch.from_numpy(d_bih), torch.from_numpy(d_bhh)]
        dweights.append(torch.from_numpy(_c_order(grads.projection_kernel.T)))
        result = [None if grads.x is None else torch.from_numpy(grads.x),
                  torch.from_numpy(grads.h0) if needs_h0 else None,
                  torch.from_numpy(grads.c0) if needs_c0 else None, *dweights]
        result = _first_order(result, (x, h0, c0, *weights, *incoming))
        dx, dh0, dc0, *dweights = result
        if not has_bias:
            dweights = [dweights[0], dweights[1], None, None, dweights[2]]
        return (dx, dh0, dc0, None, None, *dweights)


class _Packing:
    """Where the rows of a ``PackedSequence`` sit in a padded, batch-major
    ``(batch * timesteps, features)`` array, in the batch's original order."""

    def __init__(self, packed):
        batch_sizes = packed.batch_sizes
        self.batch, self.timesteps = int(batch_sizes[0]), len(batch_sizes)
        order = (torch.arange(self.batch) if packed.sorted_indices is None
                 else packed.sorted_indices.cpu())
        steps = torch.arange(self.timesteps)
        # Packed data is time-major: step t holds the first batch_sizes[t]
        # sequences of the sorted batch, sequence j at padded row order[j] * T + t.
        valid = torch.arange(self.batch)[None, :] < batch_sizes[:, None]
        self.rows = (order[None, :] * self.timesteps + steps[:, None])[valid]
        lengths = torch.empty(self.batch, dtype=torch.int64)
        lengths[order] = valid.sum(0)
        self.mask = steps[None, :] < lengths[:, None]

    def pad(self, data):
        padded = data.new_zeros((self.batch * self.timesteps, data.shape[1]))
        return padded.index_copy(0, self.rows, data).view(self.batch, self.timesteps, -1)

    def pack(self, padded):
        return padded.reshape(self.batch * self.timesteps, -1).index_select(0, self.rows)


class LSTM(torch.nn.Module):
    """A multi-layer LSTM with ``torch.nn.LSTM``'s interface, run by fastlstm.

    Parameters, attributes, initialisation, inputs and outputs are those of
    ``torch.nn.LSTM``; see its documentation for the equations. A
    ``state_dict`` of either class loads into the other.

    Parameters
    ----------
    input_size : int
        Features of the input.
    hidden_size : int
        Units of each layer and direction.
    num_layers : int
        Stacked layers; layer ``k > 0`` reads layer ``k - 1``'s output.
    bias : bool
        Whether the layers have the biases ``bias_ih_l{k}`` and ``bias_hh_l{k}``.
    batch_first : bool
        Inputs and outputs are ``(batch, seq, feature)`` if True (the layout
        fastlstm computes in: no copies), ``(seq, batch, feature)`` if False.
    dropout : float
        Dropout applied to the outputs of every layer but the last, in
        training mode, drawn from PyTorch's generator as ``torch.nn.LSTM``
        draws it.
    bidirectional : bool
        Run each layer in both directions and concatenate the outputs.
    proj_size : int
        If > 0, an LSTM with projections (LSTMP): each layer's hidden state
        ``h_t = weight_hr (o_t * tanh(c_t))`` has ``proj_size`` values
        (the outputs, ``h_0`` and ``h_n`` too), ``c`` keeps
        ``hidden_size``. Must be smaller than ``hidden_size``. Each layer and
        direction then runs on its own through fastlstm's projected kernels
        (see the module's notes on ``torch.compile``, export and ONNX).
    device : torch.device, str or None
        Must be the CPU (or None).
    dtype : torch.float32, torch.float64 or None
        The parameters' dtype; None is ``torch.get_default_dtype()``.

    Attributes
    ----------
    weight_ih_l{k}, weight_hh_l{k} : Parameter, shapes (4 * hidden_size, in) and (4 * hidden_size, hidden_size)
        Gates in the order i, f, g, o; ``in`` is ``input_size`` for layer 0
        and ``num_directions * hidden_size`` above. ``_reverse`` suffixes the
        second direction's names.
    bias_ih_l{k}, bias_hh_l{k} : Parameter, shape (4 * hidden_size,)
        Only with ``bias=True``. fastlstm adds the two into one bias.
    weight_hr_l{k} : Parameter, shape (proj_size, hidden_size)
        Only with ``proj_size > 0``; ``weight_hh_l{k}`` is then
        ``(4 * hidden_size, proj_size)`` and ``in`` of the layers above the
        first ``num_directions * proj_size``.

    Examples
    --------
    >>> import torch
    >>> import fastlstm.torch
    >>> lstm = fastlstm.torch.LSTM(10, 20, num_layers=2, batch_first=True)
    >>> x = torch.randn(3, 5, 10)
    >>> output, (h_n, c_n) = lstm(x)
    >>> output.shape, h_n.shape
    (torch.Size([3, 5, 20]), torch.Size([2, 3, 20]))
    >>> reference = torch.nn.LSTM(10, 20, num_layers=2, batch_first=True)
    >>> reference.load_state_dict(lstm.state_dict())
    <All keys matched successfully>
    >>> torch.allclose(reference(x)[0], output, atol=1e-6)
    True
    """

    def __init__(self, input_size, hidden_size, num_layers=1, bias=True, batch_first=False,
                 dropout=0.0, bidirectional=False, proj_size=0, device=None, dtype=None):
        super().__init__()
        self.input_size = _check_count(input_size, "input_size")
        self.hidden_size = _check_count(hidden_size, "hidden_size")
        self.num_layers = _check_count(num_layers, "num_layers")
        self.bias = check_bool(bias, "bias")
        self.batch_first = check_bool(batch_first, "batch_first")
        self.bidirectional = check_bool(bidirectional, "bidirectional")
        if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) \
                or not 0 <= dropout <= 1:
            raise ValueError(f"dropout must be a number between 0 and 1, got "
                             f"{_describe(dropout)}")
        self.dropout = float(dropout)
        if self.dropout > 0 and self.num_layers == 1:
            warnings.warn(f"dropout acts between stacked layers, after every layer but the "
                          f"last, so dropout={self.dropout} does nothing with num_layers=1",
                          UserWarning, stacklevel=2)
        if isinstance(proj_size, bool) or not isinstance(proj_size, int) or proj_size < 0:
            raise ValueError(f"proj_size must be a positive int, or 0 for no projection, "
                             f"got {_describe(proj_size)}")
        if proj_size >= self.hidden_size:
            raise ValueError(f"proj_size must be smaller than hidden_size ({self.hidden_size}), "
                             f"got {proj_size}")
        self.proj_size = proj_size
        if device is not None and torch.device(device).type != "cpu":
            raise ValueError(f"device must be the CPU or None: fastlstm runs on the CPU "
                             f"only, got {device!r}")
        if dtype is None:
            dtype = torch.get_default_dtype()
        if dtype not in _DTYPES:
            raise TypeError(f"dtype must be torch.float32 or torch.float64, got {dtype!r}")
        directions = 2 if self.bidirectional else 1
        kinds = self._kinds()
        names = []
        real_hidden = self.proj_size or self.hidden_size
        for layer in range(self.num_layers):
            layer_input = self.input_size if layer == 0 else directions * real_hidden
            shapes = {"weight_ih": (4 * self.hidden_size, layer_input),
                      "weight_hh": (4 * self.hidden_size, real_hidden),
                      "bias_ih": (4 * self.hidden_size,), "bias_hh": (4 * self.hidden_size,),
                      "weight_hr": (self.proj_size, self.hidden_size)}
            for direction in range(directions):
                suffix = f"_l{layer}{'_reverse' if direction else ''}"
                for kind in kinds:
                    names.append(kind + suffix)
                    self.register_parameter(kind + suffix, torch.nn.Parameter(
                        torch.empty(shapes[kind], dtype=dtype)))
        self._parameter_names = names
        self._inference = _InferenceCache()
        self._inference_number = _register(self._inference)
        self.reset_parameters()

    def _kinds(self):
        """The parameters of one layer and direction, in ``torch.nn.LSTM``'s order."""
        kinds = _KINDS if self.bias else _KINDS[:2]
        return kinds + ("weight_hr",) if self.proj_size else kinds

    def reset_parameters(self):
        """Draw every parameter from U(-1/sqrt(hidden_size), 1/sqrt(hidden_size)),
        in ``torch.nn.LSTM``'s order: the same seed gives both classes the same
        weights."""
        bound = 1 / math.sqrt(self.hidden_size)
        for parameter in self.parameters():
            torch.nn.init.uniform_(parameter, -bound, bound)

    def flatten_parameters(self):
        """Nothing to do: the CPU kernels read the parameters as they are.
        Kept so that code written for ``torch.nn.LSTM`` runs unchanged."""

    def __setstate__(self, state):
        super().__setstate__(state)
        # A copy (pickle, copy.deepcopy) has its own cache, under its own number.
        self._inference_number = _register(self._inference)

    def __prepare_scriptable__(self):
        """Refuse ``torch.jit.script``, which compiles a module's Python
        source: this module's forward pass calls fastlstm's kernels from
        Python, which TorchScript cannot compile."""
        raise RuntimeError(
            "torch.jit.script cannot compile fastlstm.torch.LSTM: its forward pass calls "
            "fastlstm's kernels from Python. Use torch.compile(model), "
            "torch.export.export(model, args) or torch.jit.trace(model, args) instead")

    def extra_repr(self):
        text = f"{self.input_size}, {self.hidden_size}"
        for name, default in (("num_layers", 1), ("bias", True), ("batch_first", False),
                              ("dropout", 0.0), ("bidirectional", False), ("proj_size", 0)):
            if getattr(self, name) != default:
                text += f", {name}={getattr(self, name)}"
        return text

    def forward(self, input, hx=None):
        """Run the stack over ``input``.

        Parameters
        ----------
        input : Tensor or PackedSequence
            ``(seq, batch, input_size)``, or ``(batch, seq, input_size)`` with
            ``batch_first=True``; ``(seq, input_size)`` for one unbatched
            sequence; or a ``PackedSequence`` of variable-length sequences.
        hx : (Tensor, Tensor) or None
            ``(h_0, c_0)``, each ``(num_directions * num_layers, batch,
            hidden_size)`` (without the batch axis for unbatched input), h_0
            of ``proj_size`` with ``proj_size > 0``; zeros if None.

        Returns
        -------
        output : Tensor or PackedSequence
            The last layer's hidden states at every step, both directions
            concatenated: ``(seq, batch, num_directions * hidden_size)`` (batch
            first with ``batch_first=True``), or a ``PackedSequence`` with the
            input's batch sizes and indices.
        (h_n, c_n) : (Tensor, Tensor)
            Each layer's and direction's states after its last step (for a
            packed sequence, each sequence's last valid step), shaped as ``hx``.
        """
        try:
            packing, x, unbatched, h0, c0 = self._checked(input, hx)
        except (TypeError, ValueError) as error:
            raise _as_torch_error(error) from None
        if torch.onnx.is_in_onnx_export():
            if self.proj_size:
                raise ValueError(f"a fastlstm.torch.LSTM with proj_size={self.proj_size} cannot "
                                 f"be exported to ONNX: ONNX's LSTM operator has no projection")
            if packing is not None:
                raise ValueError("input must be a tensor in an ONNX export, got a "
                                 "PackedSequence; export the module with padded sequences")
            outputs, h_n, c_n = self._torch_lstm(x, h0, c0)
        elif isinstance(packing, PackedSequence):
            output, h_n, c_n = _run_packed(self, packing, h0, c0)
            return PackedSequence(output, input.batch_sizes, input.sorted_indices,
                                  input.unsorted_indices), (h_n, c_n)
        elif self.proj_size:
            outputs, h_n, c_n = self._projected(x, h0, c0, packing)
        elif self.bidirectional:
            outputs, h_n, c_n = self._by_layer(x, h0, c0, packing)
        else:
            outputs, h_n, c_n = self._stack(x, h0, c0, packing)
        if packing is None and not unbatched and not self.batch_first:
            # One copy into the caller's time-major layout.
            return torch.cat([o.transpose(0, 1) for o in outputs], 2), (h_n, c_n)
        x = outputs[0] if len(outputs) == 1 else torch.cat(outputs, 2)
        if packing is not None:
            output = PackedSequence(packing.pack(x), input.batch_sizes, input.sorted_indices,
                                    input.unsorted_indices)
        elif unbatched:
            output, h_n, c_n = x[0], h_n[:, 0], c_n[:, 0]
        else:
            output = x
        return output, (h_n, c_n)

    def _checked(self, input, hx):
        """``input`` and ``hx`` checked: ``(packing, x, unbatched, h0, c0)``,
        ``packing`` None for a tensor input and ``x`` batch-major; for a
        ``PackedSequence``, eagerly the sequence itself and its data (for
        the packed kernels), traced or compiled a :class:`_Packing` and ``x``
        padded (for the masked kernels)."""
        dtype = self._check_parameters()
        packing = None
        if isinstance(input, PackedSequence):
            _check_tensor(input.data, "input.data", dtype)
            if input.data.dim() != 2 or input.data.shape[1] != self.input_size:
                raise ValueError(f"input.data (of the PackedSequence) must have shape "
                                 f"(total steps, input_size={self.input_size}), got "
                                 f"{tuple(input.data.shape)}")
            if self._packed_kernels_serve(input):
                # The packed kernels read the packed rows as they are.
                packing, x = input, input.data
            else:
                packing = _Packing(input)
                x = packing.pad(input.data)
            batch = int(input.batch_sizes[0])
            unbatched = False
        else:
            _check_tensor(input, "input", dtype)
            if input.dim() not in (2, 3):
                layout = "(batch, seq, " if self.batch_first else "(seq, batch, "
                raise ValueError(f"input must have shape {layout}input_size), or (seq, "
                                 f"input_size) for one sequence; got {tuple(input.shape)}")
            check_features(input.shape[-1], "input", self.input_size, "the module's input_size")
            check_not_empty(input.shape, "input")
            unbatched = input.dim() == 2
            if unbatched:
                x = input.unsqueeze(0)
            else:
                x = input if self.batch_first else input.transpose(0, 1)
            batch = x.shape[0]
        h0, c0 = self._initial_state(hx, batch, unbatched, dtype)
        return packing, x, unbatched, h0, c0

    def _packed_kernels_serve(self, packed):
        """Whether the ``PackedSequence`` ``packed`` runs on the packed
        kernels: when eager, and unless the module is projected (the packed
        kernels have no projection) or a unidirectional stack that the
        planner pipelines (a thread per layer), which the masked kernels'
        stack keeps."""
        if not _eager() or self.proj_size:
            return False
        if self.bidirectional or self.num_layers < 2:
            return True
        return not _plan.pipeline_stack(int(packed.batch_sizes[0]), len(packed.batch_sizes),
                                        self.input_size, [self.hidden_size] * self.num_layers)

    def _stack(self, x, h0, c0, packing):
        """A unidirectional stack as one call of the stack kernels (pipelined
        where the planner says so); the outputs as a list of one tensor."""
        weights = [getattr(self, name) for name in self._parameter_names]
        dropout = None
        if self.training and self.dropout > 0 and self.num_layers > 1:
            dropout = torch.stack([self._dropout_noise(x.shape[:2] + (self.hidden_size,), x,
                                                       packing)
                                   for _ in range(self.num_layers - 1)])
        mask = None if packing is None else packing.mask
        keep_cache = _keep_cache(x, h0, c0, *weights)
        if not keep_cache and _eager():
            output, h_n, c_n = _run_inference(self._inference, 0, x, h0, c0,
                                              _layers(weights, self.bias), mask, dropout, False)
        else:
            output, h_n, c_n, _ = _lstm_stack(x, h0, c0, weights, self.bias, mask, dropout,
                                              False, keep_cache, self._inference_number, 0)
        return [output], h_n, c_n

    def _by_layer(self, x, h0, c0, packing):
        """A bidirectional module, layer after layer, each direction a stack
        of one (each layer reads both directions of the one below); the last
        layer's outputs as a list of one tensor per direction."""
        kinds = _KINDS if self.bias else _KINDS[:2]
        mask = None if packing is None else packing.mask
        h_n, c_n = [], []
        for layer in range(self.num_layers):
            outputs = []
            for direction in range(2):
                index = 2 * layer + direction
                suffix = f"_l{layer}{'_reverse' if direction else ''}"
                weights = [getattr(self, kind + suffix) for kind in kinds]
                state = (None, None) if h0 is None else (h0[index:index + 1],
                                                         c0[index:index + 1])
                keep_cache = _keep_cache(x, *state, *weights)
                if not keep_cache and _eager():
                    output, h, c = self._inference.run(index, x, *state, weights, mask,
                                                       bool(direction))
                else:
                    output, h, c, _ = _lstm_stack(x, *state, weights, self.bias, mask, None,
                                                  bool(direction), keep_cache,
                                                  self._inference_number, index)
                outputs.append(output)
                h_n.append(h)
                c_n.append(c)
            if layer + 1 < self.num_layers:
                x = torch.cat(outputs, 2)
                if self.training and self.dropout > 0:
                    x = x * self._dropout_noise(x.shape, x, packing)
        return outputs, torch.cat(h_n), torch.cat(c_n)

    def _projected(self, x, h0, c0, packing):
        """A projected LSTM, layer after layer and direction by direction,
        each one call of the projected kernels; the last layer's outputs as
        a list of one tensor per direction."""
        if torch.compiler.is_exporting():
            raise RuntimeError(f"torch.export cannot export a fastlstm.torch.LSTM with "
                               f"proj_size={self.proj_size}: its projected kernels run "
                               f"outside fastlstm's custom operator; export the module "
                               f"without a projection, or run it eagerly or under "
                               f"torch.compile (fullgraph=False)")
        directions = 2 if self.bidirectional else 1
        mask = None if packing is None else packing.mask
        h_n, c_n = [], []
        for layer in range(self.num_layers):
            outputs = []
            for direction in range(directions):
                index = directions * layer + direction
                suffix = f"_l{layer}{'_reverse' if direction else ''}"
                weights = {kind: getattr(self, kind + suffix) for kind in self._kinds()}
                state = (None, None) if h0 is None else (h0[index], c0[index])
                output, h, c = _ProjectedLSTM.apply(
                    x, *state, mask, bool(direction), weights["weight_ih"],
                    weights["weight_hh"], weights.get("bias_ih"), weights.get("bias_hh"),
                    weights["weight_hr"])
                outputs.append(output)
                h_n.append(h)
                c_n.append(c)
            if layer + 1 < self.num_layers:
                x = outputs[0] if directions == 1 else torch.cat(outputs, 2)
                if self.training and self.dropout > 0:
                    x = x * self._dropout_noise(x.shape, x, packing)
        return outputs, torch.stack(h_n), torch.stack(c_n)

    def _torch_lstm(self, x, h0, c0):
        """``torch.nn.LSTM``'s own operator over the same parameters: what an
        ONNX export records, so that the graph holds the ONNX ``LSTM`` nodes
        both of PyTorch's exporters write for ``torch.nn.LSTM``."""
        if h0 is None:
            directions = 2 if self.bidirectional else 1
            h0 = c0 = x.new_zeros((directions * self.num_layers, x.shape[0], self.hidden_size))
        output, h_n, c_n = torch.lstm(x, (h0, c0), [getattr(self, name)
                                                    for name in self._parameter_names],
                                      self.bias, self.num_layers, self.dropout, self.training,
                                      self.bidirectional, True)
        return [output], h_n, c_n

    def _dropout_noise(self, shape, like, packing):
        """The multipliers of inverted dropout over a layer's output of
        ``shape`` (batch-major), drawn as torch.nn.LSTM draws them: one
        Bernoulli draw per value in its own layout (time-major, or the packed
        rows), so that ``torch.manual_seed`` gives both classes the same
        masks."""
        if self.dropout == 1:
            return like.new_zeros(shape)
        batch, timesteps, features = shape
        if packing is None:
            noise = like.new_empty((timesteps, batch, features)).bernoulli_(1 - self.dropout)
            return noise.div_(1 - self.dropout).transpose(0, 1)
        noise = like.new_empty((len(packing.rows), features)).bernoulli_(1 - self.dropout)
        return packing.pad(noise.div_(1 - self.dropout))

    def _check_parameters(self):
        """The parameters' dtype, after checking they can run here."""
        dtype = None
        for name in self._parameter_names:
            parameter = getattr(self, name)
            if parameter.device.type != "cpu":
                raise ValueError(f"parameter {name} is on device {parameter.device}; "
                                 f"fastlstm.torch.LSTM runs on the CPU only")
            if parameter.dtype not in _DTYPES or (dtype is not None and parameter.dtype != dtype):
                raise TypeError(f"parameter {name} has dtype {parameter.dtype}; the parameters "
                                f"must all be torch.float32 or all torch.float64")
            dtype = parameter.dtype
        return dtype

    def _initial_state(self, hx, batch, unbatched, dtype):
        """``(h_0, c_0)`` as ``(layers * directions, batch, hidden_size)``
        tensors, or ``(None, None)`` for zeros."""
        if hx is None:
            return None, None
        layers = (2 if self.bidirectional else 1) * self.num_layers
        states = []
        for state, name, size, size_name in zip(
                check_state_list(hx, "hx", "(h_0, c_0)", "tensors"),
                ("hx[0] (h_0)", "hx[1] (c_0)"),
                (self.proj_size or self.hidden_size, self.hidden_size),
                ("proj_size" if self.proj_size else "hidden_size", "hidden_size")):
            shape = (layers, size) if unbatched else (layers, batch, size)
            meaning = (f"(num_directions * num_layers, {size_name}) for unbatched input"
                       if unbatched else f"(num_directions * num_layers, batch, {size_name})")
            _check_tensor(state, name, dtype)
            check_shape(state, name, shape, meaning)
            states.append(state.unsqueeze(1) if unbatched else state)
        return states


class _ArgumentValueError(ValueError, RuntimeError):
    """A bad argument's value or shape: a ValueError, as fastlstm raises it,
    and a RuntimeError, as ``torch.nn.LSTM`` raises most of them, so that
    code written for either class catches it."""


class _ArgumentTypeError(TypeError, ValueError, RuntimeError):
    """A bad argument's kind or dtype: a TypeError, as fastlstm raises it,
    and what ``torch.nn.LSTM`` raises for it (a ValueError for the input's
    dtype, a RuntimeError for the states')."""


def _as_torch_error(error):
    """``error`` (a TypeError or ValueError of the argument checks) as the
    class above of its kind, with its message and traceback."""
    kind = _ArgumentTypeError if isinstance(error, TypeError) else _ArgumentValueError
    return kind(*error.args).with_traceback(error.__traceback__)


def _keep_cache(*tensors):
    """Whether a call on ``tensors`` (None entries allowed) keeps the kernels'
    cache for a backward pass: when autograd records it, and always in
    ``torch.jit.trace``, whose graph serves training and inference alike
    (a cache no backward pass takes is freed with its handle)."""
    return torch.jit.is_tracing() or (torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in tensors))


def _eager():
    """Whether the module runs eagerly, not traced by ``torch.compile``,
    ``torch.export`` or ``torch.jit.trace``, so that it may call its
    ``_InferenceCache`` itself rather than through the operator."""
    return not (torch.compiler.is_compiling() or torch.jit.is_tracing())


def _check_tensor(value, name, dtype):
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {_describe(value)}")
    if value.device.type != "cpu":
        raise ValueError(f"{name} is on device {value.device}; fastlstm.torch.LSTM runs on "
                         f"the CPU only (move it with .cpu())")
    if value.dtype != dtype:
        raise TypeError(f"{name} must have the parameters' dtype {dtype}, got {value.dtype}")


def _check_count(value, name):
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {_describe(value)}")
    return value
