"""``torch.nn.LSTM`` on fastlstm's kernels: a drop-in module for CPU training.

:class:`LSTM` takes ``torch.nn.LSTM``'s arguments, holds the same parameters
under the same names and shapes, and returns what it returns, so a training
script swaps the class and keeps its checkpoints. Each layer and direction
runs as one ``torch.autograd.Function`` whose forward and backward passes are
:func:`fastlstm.lstm_forward` and :func:`fastlstm.lstm_backward`.

Layout. fastlstm computes batch-major, ``(batch, timesteps, features)``
C-contiguous, so with ``batch_first=True`` the input and the outputs share
memory with the NumPy arrays the kernels read and write. With
``batch_first=False`` the input is copied once into batch-major order, and
the output once back into time-major order. The weights are read through
transposed views (``kernel = weight_ih.T``); the kernels stack them into their
own workspace on each call, as they do for fastlstm's own layers.

Variable lengths. A ``PackedSequence`` is laid out padded, batch-major, and
runs on the masked kernels (a step ``t`` of a sequence of length ``n`` is kept
when ``t < n``): a masked step carries the state unchanged, so the final
state of the forward direction is the state at each sequence's last valid
step. The reverse direction processes the steps in reverse order
(``go_backwards``): its masked steps come first and carry the initial state to
each sequence's own last valid step, where it starts, as PyTorch's does.

Importing :mod:`fastlstm` never imports PyTorch; this module needs it
(``pip install "fastlstm[torch]"``).
"""
import math
import warnings

try:
    import torch
except ImportError as error:
    raise ImportError('fastlstm.torch needs PyTorch; install it with '
                      'pip install "fastlstm[torch]"') from error
from torch.nn.utils.rnn import PackedSequence

import numpy as np

from ._validation import (check_bool, check_features, check_not_empty, check_shape,
                          check_state_list, describe)
from .convert import _keras_from_torch, _torch_gradients_from_keras
from .functional import lstm_backward, lstm_forward
from ._packed import PackedLSTM

__all__ = ["LSTM"]

_DTYPES = (torch.float32, torch.float64)
_KINDS = ("weight_ih", "weight_hh", "bias_ih", "bias_hh")
# Rows and columns of the tiles in which _c_order copies a transposed weight.
_TILE = 128
_NO_DOUBLE_BACKWARD = (
    "fastlstm.torch.LSTM computes first-order gradients only: its backward pass cannot be "
    "differentiated again (a gradient penalty, double backward, Hessian-vector products). "
    "Use torch.nn.LSTM for the part of the model that needs second-order gradients")


def _describe(value):
    if isinstance(value, torch.Tensor):
        return (f"a tensor of shape {tuple(value.shape)}, dtype {value.dtype} on device "
                f"{value.device}")
    return describe(value)


def _numpy(tensor):
    """A NumPy view of a CPU tensor's memory (None stays None)."""
    return None if tensor is None else tensor.detach().numpy()


def _c_order(matrix):
    """A 2-D array in C order: itself, or a copy made tile by tile.

    PyTorch's weights are the transposes of fastlstm's, and so are the
    gradients. Copied in one pass, a transposed matrix is read with the
    stride of a whole row of its own layout (input_size, hidden_size or
    4 * hidden_size values), often a power of two that maps the reads to few
    cache sets: about 3x slower than by tiles at input_size = hidden_size =
    512. A tile's rows stay in the cache until it is copied.
    """
    if matrix.flags.c_contiguous:
        return matrix
    result = np.empty(matrix.shape, matrix.dtype)
    rows, columns = matrix.shape
    for i in range(0, rows, _TILE):
        for j in range(0, columns, _TILE):
            result[i:i + _TILE, j:j + _TILE] = matrix[i:i + _TILE, j:j + _TILE]
    return result


class _LSTMDirection(torch.autograd.Function):
    """One layer and direction: ``(x, h0, c0, weights) -> (outputs, h_n, c_n)``.

    ``x`` is batch-major ``(batch, timesteps, input_size)``; the outputs are
    in time order for either direction.
    """

    @staticmethod
    def forward(ctx, x, h0, c0, weight_ih, weight_hh, bias_ih, bias_hh, mask, reverse,
                keep_cache):
        ctx.set_materialize_grads(False)
        ctx.mask, ctx.reverse, ctx.has_h0 = mask, reverse, h0 is not None
        outputs, h_n, c_n, ctx.cache = _run_direction(
            x, h0, c0, (weight_ih, weight_hh, bias_ih, bias_hh), mask, reverse, keep_cache)
        if keep_cache:
            ctx.save_for_backward(x, h0, c0, weight_ih, weight_hh, bias_ih, bias_hh)
        return outputs, h_n, c_n

    @staticmethod
    def backward(ctx, grad_outputs, grad_h, grad_c):
        with torch.no_grad():
            grads = _LSTMDirection._gradients(ctx, grad_outputs, grad_h, grad_c)
        create_graph = torch.is_grad_enabled()
        if not (create_graph and any(t is not None and t.requires_grad
                                     for t in (*ctx.saved_tensors, grad_outputs, grad_h,
                                               grad_c))):
            return grads
        # The gradients are right, but the kernels' backward pass has no
        # derivative of its own: with create_graph=True they lead to a node
        # that raises if anything differentiates through them, rather than
        # to constants that would silently drop a second-order term (a
        # gradient penalty, say). torch.autograd.function.once_differentiable
        # does the same, but looks only at the incoming gradients.
        error = torch._C._functions.DelayedError(_NO_DOUBLE_BACKWARD, len(grads))
        return error(*[None if g is None else g.detach().requires_grad_(True)
                       for g in grads])

    @staticmethod
    def _gradients(ctx, grad_outputs, grad_h, grad_c):
        x, h0, c0, *weights = ctx.saved_tensors
        if ctx.cache.used:
            # A second backward through a retained graph: the first wrote the
            # gate gradients over the cached gates, so the forward runs again.
            ctx.cache = _run_direction(x, h0, c0, weights, ctx.mask, ctx.reverse, True)[3]
        grad_outputs = _numpy(grad_outputs)
        if grad_outputs is not None and ctx.reverse:
            grad_outputs = grad_outputs[:, ::-1]
        grads = lstm_backward(ctx.cache, grad_outputs, _numpy(grad_h), _numpy(grad_c),
                              input_gradient=ctx.needs_input_grad[0])
        weight_grads = _torch_gradients_from_keras(grads.kernel, grads.recurrent_kernel,
                                                   grads.bias)
        # In the parameters' layout, so that autograd takes them as they are.
        weight_grads = [_c_order(g) if g is not None and g.ndim == 2 else g
                        for g in weight_grads]
        state_grads = (grads.h0, grads.c0) if ctx.has_h0 else (None, None)
        result = [grads.x, *state_grads, *weight_grads]
        result = [None if g is None or not needed else torch.from_numpy(g)
                  for g, needed in zip(result, ctx.needs_input_grad)]
        return (*result, None, None, None)


def _keras_weights(views):
    """(kernel, recurrent_kernel, bias) in fastlstm's layout, C-ordered, from
    NumPy views of one layer and direction's PyTorch parameters."""
    kernel, recurrent_kernel, bias = _keras_from_torch(*views)
    return _c_order(kernel), _c_order(recurrent_kernel), bias


def _as_tensors(outputs, h_n, c_n, reverse):
    """The results of a direction as tensors sharing their memory, the
    outputs in time order: go_backwards returns them in processing order,
    reversed here by a copy, since for one step the reversed view counts as
    contiguous but keeps its negative stride, which torch.from_numpy refuses."""
    if reverse:
        outputs = outputs[:, ::-1].copy()
    return torch.from_numpy(outputs), torch.from_numpy(h_n), torch.from_numpy(c_n)


def _run_direction(x, h0, c0, weights, mask, reverse, keep_cache):
    """``lstm_forward`` on tensors: outputs (in time order), h_n, c_n as
    tensors sharing the kernels' memory, and the cache."""
    initial_state = None if h0 is None else [_numpy(h0), _numpy(c0)]
    outputs, h_n, c_n, cache = lstm_forward(
        _numpy(x), *_keras_weights([_numpy(w) for w in weights]), initial_state=initial_state,
        mask=mask, go_backwards=reverse, return_cache=keep_cache)
    return (*_as_tensors(outputs, h_n, c_n, reverse), cache)


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
        self.mask = (steps[None, :] < lengths[:, None]).numpy()

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
        Must be 0: projected hidden states are not supported.
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
        if isinstance(proj_size, bool) or not isinstance(proj_size, int) or proj_size != 0:
            raise ValueError(f"proj_size must be 0: fastlstm's LSTM has no projected hidden "
                             f"state (torch.nn.LSTM's proj_size), got {_describe(proj_size)}")
        self.proj_size = 0
        if device is not None and torch.device(device).type != "cpu":
            raise ValueError(f"device must be the CPU or None: fastlstm runs on the CPU "
                             f"only, got {device!r}")
        if dtype is None:
            dtype = torch.get_default_dtype()
        if dtype not in _DTYPES:
            raise TypeError(f"dtype must be torch.float32 or torch.float64, got {dtype!r}")
        directions = 2 if self.bidirectional else 1
        kinds = _KINDS if self.bias else _KINDS[:2]
        names = []
        for layer in range(self.num_layers):
            layer_input = self.input_size if layer == 0 else directions * self.hidden_size
            shapes = {"weight_ih": (4 * self.hidden_size, layer_input),
                      "weight_hh": (4 * self.hidden_size, self.hidden_size),
                      "bias_ih": (4 * self.hidden_size,), "bias_hh": (4 * self.hidden_size,)}
            for direction in range(directions):
                suffix = f"_l{layer}{'_reverse' if direction else ''}"
                for kind in kinds:
                    names.append(kind + suffix)
                    self.register_parameter(kind + suffix, torch.nn.Parameter(
                        torch.empty(shapes[kind], dtype=dtype)))
        self._parameter_names = names
        # Per layer and direction: the PackedLSTM of inference calls and
        # what its weights were made from (see _infer).
        self._packed = {}
        self.reset_parameters()

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

    def extra_repr(self):
        text = f"{self.input_size}, {self.hidden_size}"
        for name, default in (("num_layers", 1), ("bias", True), ("batch_first", False),
                              ("dropout", 0.0), ("bidirectional", False)):
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
            hidden_size)`` (without the batch axis for unbatched input); zeros
            if None.

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
        dtype = self._check_parameters()
        packing = None
        if isinstance(input, PackedSequence):
            _check_tensor(input.data, "input.data", dtype)
            if input.data.dim() != 2 or input.data.shape[1] != self.input_size:
                raise ValueError(f"input.data (of the PackedSequence) must have shape "
                                 f"(total steps, input_size={self.input_size}), got "
                                 f"{tuple(input.data.shape)}")
            packing = _Packing(input)
            x = packing.pad(input.data)
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
        mask = None if packing is None else packing.mask

        directions = 2 if self.bidirectional else 1
        h_n, c_n = [], []
        for layer in range(self.num_layers):
            outputs = []
            for direction in range(directions):
                index = layer * directions + direction
                suffix = f"_l{layer}{'_reverse' if direction else ''}"
                weights = [getattr(self, kind + suffix, None) for kind in _KINDS]
                state = (None, None) if h0 is None else (h0[index], c0[index])
                inputs = (x, *state, *weights)
                keep_cache = torch.is_grad_enabled() and any(
                    t is not None and t.requires_grad for t in inputs)
                if keep_cache:
                    output, h, c = _LSTMDirection.apply(*inputs, mask, bool(direction), True)
                else:
                    output, h, c = self._infer(index, x, *state, weights, mask, bool(direction))
                outputs.append(output)
                h_n.append(h)
                c_n.append(c)
            last = layer == self.num_layers - 1
            if last and packing is None and not unbatched and not self.batch_first:
                # One copy into the caller's time-major layout.
                return (torch.cat([o.transpose(0, 1) for o in outputs], 2),
                        (torch.stack(h_n), torch.stack(c_n)))
            x = outputs[0] if directions == 1 else torch.cat(outputs, 2)
            if not last and self.training and self.dropout > 0:
                x = self._drop(x, packing)
        h_n, c_n = torch.stack(h_n), torch.stack(c_n)
        if packing is not None:
            output = PackedSequence(packing.pack(x), input.batch_sizes, input.sorted_indices,
                                    input.unsorted_indices)
        elif unbatched:
            output, h_n, c_n = x[0], h_n[:, 0], c_n[:, 0]
        else:
            output = x
        return output, (h_n, c_n)

    def _infer(self, index, x, h0, c0, weights, mask, reverse):
        """One layer and direction with nothing to differentiate: through a
        :class:`~fastlstm.PackedLSTM` of its weights, kept until a weight
        changes (each tensor's ``_version`` counts its in-place changes, so an
        optimizer step, ``load_state_dict`` or ``copy_`` is seen)."""
        key = tuple(None if w is None else (w.data_ptr(), w._version, w.dtype)
                    for w in weights)
        cached = self._packed.get(index)
        if cached is None or cached[0] != key:
            views = [_numpy(w) for w in weights]
            # The views keep the weights' memory alive while they are the
            # key, so that no other tensor can take their addresses.
            cached = self._packed[index] = (key, PackedLSTM(*_keras_weights(views)), views)
        initial_state = None if h0 is None else [_numpy(h0), _numpy(c0)]
        return _as_tensors(*cached[1](_numpy(x), initial_state=initial_state, mask=mask,
                                      go_backwards=reverse), reverse)

    def _drop(self, x, packing):
        """Inverted dropout with the draws torch.nn.LSTM makes: one Bernoulli
        draw per value of the layer output in its own layout (time-major, or
        the packed rows), so that ``torch.manual_seed`` gives both classes the
        same masks."""
        if self.dropout == 1:
            return x * torch.zeros((), dtype=x.dtype)
        batch, timesteps, features = x.shape
        if packing is None:
            noise = x.new_empty((timesteps, batch, features)).bernoulli_(1 - self.dropout)
            noise = noise.div_(1 - self.dropout).transpose(0, 1)
        else:
            noise = x.new_empty((len(packing.rows), features)).bernoulli_(1 - self.dropout)
            noise = packing.pad(noise.div_(1 - self.dropout))
        return x * noise

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
        shape = (layers, self.hidden_size) if unbatched else (layers, batch, self.hidden_size)
        meaning = ("(num_directions * num_layers, hidden_size) for unbatched input"
                   if unbatched else "(num_directions * num_layers, batch, hidden_size)")
        states = []
        for state, name in zip(check_state_list(hx, "hx", "(h_0, c_0)", "tensors"),
                               ("hx[0] (h_0)", "hx[1] (c_0)")):
            _check_tensor(state, name, dtype)
            check_shape(state, name, shape, meaning)
            states.append(state.unsqueeze(1) if unbatched else state)
        return states


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
