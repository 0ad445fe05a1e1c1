"""Packed batches of sequences of different lengths: the forward and
backward passes whose steps touch only the sequences still running.

A packed batch is laid out as ``torch.nn.utils.rnn.PackedSequence`` lays it
out: the sequences sorted by decreasing length, the rows of step ``t``
(``batch_sizes[t]`` of them, the sequences still running) after those of
step ``t - 1``. The kernels are ``packed_forward`` and ``packed_backward`` in
``fastlstm/_lstm_packed.pxi``; this module allocates their buffers, splits
the sequences among the threads and keeps what the backward pass reads.

:func:`trailing_lengths` and :func:`pad_order` serve a padded batch whose
mask is a trailing padding: its rows sorted by length and packed, it runs on
the same kernels.
"""
from dataclasses import dataclass

import numpy as np

from . import _config, _kernels, _plan
from ._engine import SPARES, kernel_copy

__all__ = ["PackedRecord", "PaddedRecord", "packed_forward", "packed_backward",
           "padded_forward", "padded_backward", "serves_mask", "sequence_bounds",
           "trailing_lengths", "pack_order"]


@dataclass
class PackedRecord:
    """What :func:`packed_backward` reads of a training forward pass."""

    data: np.ndarray
    kernel: np.ndarray
    recurrent_kernel: np.ndarray
    batch_sizes: np.ndarray
    reverse: bool
    has_bias: bool
    gates: np.ndarray
    h_prev: np.ndarray
    c_prev: np.ndarray
    activation_codes: tuple


def _batch_sizes(batch_sizes, rows):
    sizes = np.ascontiguousarray(batch_sizes, dtype=np.int64)
    if sizes.ndim != 1 or sizes.size == 0:
        raise ValueError(f"batch_sizes must be a non-empty 1-d array, got shape {sizes.shape}")
    if sizes.sum() != rows:
        raise ValueError(f"batch_sizes must sum to the {rows} rows of the packed data, got "
                         f"{int(sizes.sum())}")
    return sizes


def sequence_bounds(batch_sizes, threads):
    """The first sequence of each thread's block, and the batch size last:
    consecutive sequences (sorted by decreasing length) with about as many
    valid steps in each block, since a step's work is proportional to the
    sequences it touches."""
    batch = int(batch_sizes[0])
    blocks = max(1, min(threads, batch))
    if blocks == 1:
        return np.array([0, batch], np.int64)
    # Sequence r runs for as many steps as there are batch sizes above r.
    lengths = np.searchsorted(-np.asarray(batch_sizes), -np.arange(batch), side="right")
    ends = np.cumsum(lengths)
    cuts = np.searchsorted(ends, ends[-1] * np.arange(1, blocks) / blocks, side="left") + 1
    return np.concatenate([[0], np.minimum(cuts, batch), [batch]]).astype(np.int64)


def _threads(rows, input_dim, units):
    """``(threads, single_threaded_blas)`` of a pass over ``rows`` valid rows."""
    return _plan.call_threads(_plan.forward_flops((rows, 1, input_dim), units))


def packed_forward(data, batch_sizes, kernel, recurrent_kernel, bias=None, h0=None, c0=None,
                   reverse=False, training=True, activation="tanh",
                   recurrent_activation="sigmoid"):
    """An LSTM over a packed batch: ``(outputs, h_n, c_n, record)``.

    ``data`` (rows, input_dim) and ``outputs`` (rows, units) are packed;
    ``h0``, ``c0`` and ``h_n``, ``c_n`` (batch, units) are in the packed
    (sorted) order, ``h_n`` each sequence's state after its last step, or
    after its first with ``reverse`` (the steps run from the last). The
    record, None without ``training``, is what :func:`packed_backward`
    reads. Weights in Keras' layout.
    """
    dtype = np.dtype(kernel.dtype)
    data = np.ascontiguousarray(data, dtype)
    rows, input_dim = data.shape
    units = recurrent_kernel.shape[0]
    sizes = _batch_sizes(batch_sizes, rows)
    batch = int(sizes[0])
    kernel = np.ascontiguousarray(kernel, dtype)
    recurrent_kernel = np.ascontiguousarray(recurrent_kernel, dtype)
    has_bias = bias is not None
    bias = np.ascontiguousarray(bias, dtype) if has_bias else np.zeros(4 * units, dtype)
    h = kernel_copy(h0, (batch, units), dtype)
    c = kernel_copy(c0, (batch, units), dtype)
    outputs = np.empty((rows, units), dtype)
    gates = SPARES.empty((rows, 4 * units), dtype)
    h_prev = SPARES.empty((rows, units), dtype)
    c_prev = SPARES.empty((rows, units), dtype)
    kernels = _kernels.current()
    codes = (kernels.Activation[activation.upper()],
             kernels.Activation[recurrent_activation.upper()])
    threads, single_blas = _threads(rows, input_dim, units)
    with _config.single_threaded_blas(single_blas):
        kernels.packed_forward(data, kernel, recurrent_kernel, bias, sizes,
                               sequence_bounds(sizes, threads), reverse, h, c, outputs, gates,
                               h_prev, c_prev, *codes, threads)
    if not training:
        SPARES.give(gates, h_prev, c_prev)
        return outputs, h, c, None
    record = PackedRecord(data, kernel, recurrent_kernel, sizes, reverse, has_bias, gates,
                          h_prev, c_prev, codes)
    return outputs, h, c, record


def packed_backward(record, grad_outputs=None, grad_h=None, grad_c=None, input_gradient=True):
    """The gradients of a :func:`packed_forward` call from those of its
    outputs: ``(dx, dkernel, drecurrent_kernel, dbias, dh0, dc0)``, dx packed
    (None without ``input_gradient``), dbias None without a bias. The record
    is used once."""
    if record.gates is None:
        raise ValueError("this record's backward pass has already run; run the forward pass "
                         "again")
    dtype = record.kernel.dtype
    rows, input_dim = record.data.shape
    units = record.recurrent_kernel.shape[0]
    batch = int(record.batch_sizes[0])
    dh = kernel_copy(grad_h, (batch, units), dtype)
    dc = kernel_copy(grad_c, (batch, units), dtype)
    grad_outputs = (np.zeros((rows, units), dtype) if grad_outputs is None
                    else np.ascontiguousarray(grad_outputs, dtype))
    dx = np.empty((rows, input_dim), dtype) if input_gradient else None
    dkernel = np.empty((input_dim, 4 * units), dtype)
    drecurrent = np.empty((units, 4 * units), dtype)
    dbias = np.empty(4 * units, dtype)
    # The backward pass does twice the forward pass's products.
    threads, single_blas = _threads(2 * rows, input_dim, units)
    with _config.single_threaded_blas(single_blas):
        _kernels.current().packed_backward(
            record.data, record.kernel, record.recurrent_kernel, record.batch_sizes,
            sequence_bounds(record.batch_sizes, threads), record.reverse, grad_outputs,
            record.gates, record.h_prev, record.c_prev, dh, dc, dx, dkernel, drecurrent, dbias,
            *record.activation_codes, threads)
    SPARES.give(record.gates, record.h_prev, record.c_prev)
    record.gates = record.h_prev = record.c_prev = None
    return dx, dkernel, drecurrent, dbias if record.has_bias else None, dh, dc


@dataclass
class PaddedRecord:
    """What :func:`padded_backward` reads of :func:`padded_forward`: the
    packed record and where the packed rows sit in the padded batch."""

    record: PackedRecord
    x_shape: tuple
    order: np.ndarray
    rows: np.ndarray
    outputs_rows: np.ndarray
    last_rows: np.ndarray
    lengths: np.ndarray


def serves_mask(mask, input_dim, units, has_dropout, training=True):
    """Each row's length if a masked call runs on the packed kernels, else
    None: when ``mask`` keeps a prefix of at least one step of every row (a
    trailing padding), without recurrent dropout, where the planner says
    it pays for a call that keeps a record for the backward pass
    (``training``) or not (:func:`fastlstm._plan.pack_masked_batch`)."""
    if mask is None or has_dropout:
        return None
    batch, timesteps = mask.shape
    lengths = trailing_lengths(mask)
    if (lengths is None or lengths.min() < 1 or not _plan.pack_masked_batch(
            batch, timesteps, input_dim, units, int(lengths.sum()), training)):
        return None
    return lengths


def padded_forward(x, lengths, kernel, recurrent_kernel, bias, h0, c0, go_backwards, training,
                   activation, recurrent_activation):
    """:func:`packed_forward` of a padded batch ``x`` (batch, timesteps,
    input_dim) whose rows have ``lengths`` valid steps first: ``(outputs,
    h_n, c_n, record)`` as the masked kernels give them, outputs (batch,
    timesteps, units) in processing order. A padded step repeats the last
    output before it (zeros before the first processed step, as in the
    reverse direction), as a masked step does."""
    batch, timesteps, input_dim = x.shape
    order, batch_sizes, rows = pack_order(lengths, timesteps)
    data = x.reshape(batch * timesteps, input_dim)[rows]
    h0 = None if h0 is None else h0[order]
    c0 = None if c0 is None else c0[order]
    outputs, h, c, record = packed_forward(data, batch_sizes, kernel, recurrent_kernel, bias,
                                           h0, c0, go_backwards, training, activation,
                                           recurrent_activation)
    rank = np.empty(batch, np.int64)
    rank[order] = np.arange(batch)
    offsets = np.concatenate([[0], np.cumsum(batch_sizes)])
    steps = np.arange(timesteps)
    times = timesteps - 1 - steps if go_backwards else steps
    valid = times[None, :] < lengths[:, None]
    # The packed row each padded output reads; the extra zero row N for the
    # padded steps the reverse direction processes first.
    times = np.minimum(times[None, :], lengths[:, None] - 1)
    outputs_rows = np.where(valid | (not go_backwards),
                            offsets[times] + rank[:, None], len(data)).ravel()
    padded = np.concatenate([outputs, np.zeros((1, outputs.shape[1]), outputs.dtype)])
    padded = padded[outputs_rows].reshape(batch, timesteps, -1)
    inverse = rank
    h, c = h[inverse], c[inverse]
    if record is None:
        return padded, h, c, None
    last_rows = offsets[lengths - 1] + rank
    return padded, h, c, PaddedRecord(record, x.shape, order, rows, outputs_rows, last_rows,
                                      lengths)


def padded_backward(padded_record, grad_outputs=None, grad_h=None, grad_c=None,
                    input_gradient=True):
    """:func:`packed_backward` of a :func:`padded_forward` call, from and to
    the padded layout: ``(dx, dkernel, drecurrent_kernel, dbias, dh0, dc0)``."""
    record = padded_record.record
    batch, timesteps, input_dim = padded_record.x_shape
    rows, units = record.data.shape[0], record.recurrent_kernel.shape[0]
    order = padded_record.order
    grad_packed = None
    if grad_outputs is not None:
        flat = np.asarray(grad_outputs).reshape(batch * timesteps, units)
        # Each output's gradient to the packed row it repeats: the valid
        # steps' own, and the padded steps' summed onto each row's last.
        valid = padded_record.outputs_rows < rows
        grad_packed = np.zeros((rows + 1, units), flat.dtype)
        direct = padded_record.outputs_rows.reshape(batch, timesteps)
        steps = np.arange(timesteps)
        if record.reverse:
            own = valid.reshape(batch, timesteps)
        else:
            own = steps[None, :] < padded_record.lengths[:, None]
        grad_packed[direct[own]] = flat.reshape(batch, timesteps, units)[own]
        if not record.reverse:
            repeated = (~own).reshape(batch, timesteps, 1)
            grad_packed[padded_record.last_rows] += (
                flat.reshape(batch, timesteps, units) * repeated).sum(1)
        grad_packed = grad_packed[:rows]
    grad_h = None if grad_h is None else np.asarray(grad_h)[order]
    grad_c = None if grad_c is None else np.asarray(grad_c)[order]
    dx_packed, dkernel, drecurrent, dbias, dh0, dc0 = packed_backward(
        record, grad_packed, grad_h, grad_c, input_gradient)
    dx = None
    if input_gradient:
        dx = np.zeros((batch * timesteps, input_dim), dx_packed.dtype)
        dx[padded_record.rows] = dx_packed
        dx = dx.reshape(batch, timesteps, input_dim)
    inverse = np.empty(batch, np.int64)
    inverse[order] = np.arange(batch)
    return dx, dkernel, drecurrent, dbias, dh0[inverse], dc0[inverse]


def trailing_lengths(mask):
    """Each row's length if ``mask`` (batch, timesteps) keeps a prefix of
    every row (its valid steps first, then padding), else None."""
    mask = np.asarray(mask, bool)
    lengths = mask.sum(1)
    if not (mask == (np.arange(mask.shape[1]) < lengths[:, None])).all():
        return None
    return lengths


def pack_order(lengths, timesteps):
    """``(order, batch_sizes, rows)`` of a padded batch of ``lengths`` (at
    least 1) packed: ``order`` the rows by decreasing length (stable),
    ``rows`` the flat padded indices ``b * timesteps + t`` of the packed
    rows, step after step."""
    lengths = np.asarray(lengths)
    order = np.argsort(-lengths, kind="stable")
    batch_sizes = (lengths[None, :] > np.arange(int(lengths.max()))[:, None]).sum(1)
    sorted_lengths = lengths[order]
    steps, ranks = np.nonzero(np.arange(len(batch_sizes))[:, None] < sorted_lengths[None, :])
    return order, batch_sizes.astype(np.int64), order[ranks] * timesteps + steps
