"""The fast backend behind the functional doors: the forward pass's
workspace described once, allocated, and handed to the kernels.

:func:`fastlstm.lstm_forward` checks its arguments and calls
:class:`FastBackend` with arrays the kernels can take as they are; this
module lays out what the kernels need around them (the workspace, the
stacked weights, the plan) and keeps, in a :class:`FastRecord`, what the
backward pass reads.
"""
import threading
from collections import OrderedDict
from dataclasses import dataclass
from math import prod

import numpy as np

from . import _config, _kernels, _plan

__all__ = ["ForwardWorkspace", "FastRecord", "FastBackend", "SpareBuffers", "SPARES",
           "forward_nbytes", "kernel_copy"]


def kernel_copy(value, shape, dtype):
    """A C-contiguous copy of ``value`` that a kernel may write over, or
    zeros of ``shape`` for None: the states (and state gradients) a kernel
    takes in and gives back in the same buffer."""
    return np.zeros(shape, dtype) if value is None else np.array(value, dtype, order="C")


class SpareBuffers:
    """The internal buffers of finished calls, kept for the next call that
    needs the same shapes.

    A training step allocates its workspace in the forward pass and frees
    it at the end of the backward pass. Allocated anew each step, that
    memory comes back page by page: once more than twice its mmap threshold
    lies free at the top of the heap, glibc gives it back to the system, and
    the next step touches it again through page faults (about 770 a step,
    half of the step's time, at the bench's "small" size on an AMD EPYC Zen
    5). Kept here instead, the buffers of a loop's steps are the same memory
    each time. At most ``max_bytes`` are kept, those given back last.

    Only buffers no caller can see are given back: workspaces, and the
    records of training calls once their backward pass has run.
    """

    def __init__(self, max_bytes=64 * 2**20):
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self._free = OrderedDict()      # (shape, dtype) -> arrays, oldest key first
        self._nbytes = 0

    @property
    def nbytes(self):
        """Bytes kept."""
        return self._nbytes

    def empty(self, shape, dtype):
        """An array of ``shape`` and ``dtype``, kept or new (uninitialised)."""
        key = (tuple(shape), np.dtype(dtype))
        with self._lock:
            arrays = self._free.get(key)
            if arrays:
                array = arrays.pop()
                if not arrays:
                    del self._free[key]
                self._nbytes -= array.nbytes
                return array
        return np.empty(shape, dtype)

    def give(self, *arrays):
        """Keep ``arrays`` (None entries are skipped) for later :meth:`empty`
        calls; the caller must hold no other reference to them."""
        with self._lock:
            for array in arrays:
                if array is None or array.base is not None or array.nbytes > self.max_bytes:
                    continue
                key = (array.shape, array.dtype)
                self._free.setdefault(key, []).append(array)
                self._free.move_to_end(key)
                self._nbytes += array.nbytes
            while self._nbytes > self.max_bytes:
                key, kept = next(iter(self._free.items()))
                self._nbytes -= kept.pop(0).nbytes
                if not kept:
                    del self._free[key]

    def clear(self):
        """Drop every kept buffer."""
        with self._lock:
            self._free.clear()
            self._nbytes = 0


SPARES = SpareBuffers()


class ForwardWorkspace:
    """The buffers a forward pass writes besides its outputs and final
    states (see ``forward`` in ``fastlstm/_lstm.pyx``): the one description
    of them, which every caller allocates through and ``workspace_nbytes``
    counts.

    gates: the activated gates of every step when training (the backward
    pass reads them), the input product of every step when it is hoisted,
    else one step's; states: each step's [x_t, h_{t-1}] when training, two
    slots used in turn otherwise; c_prev: each step's c_{t-1} when training;
    h_last: scratch.
    """

    __slots__ = ("gates", "states", "c_prev", "h_last")

    def __init__(self, batch, timesteps, input_dim, units, dtype, training, hoist,
                 empty=np.empty):
        for name, shape in self.shapes(batch, timesteps, input_dim, units, training,
                                       hoist).items():
            setattr(self, name, empty(shape, dtype))

    def buffers(self):
        """The buffers, in ``__slots__`` order."""
        return [getattr(self, name) for name in self.__slots__]

    @staticmethod
    def shapes(batch, timesteps, input_dim, units, training, hoist):
        """The shape of each buffer, by name."""
        return {"gates": (batch, timesteps if training or hoist else 1, 4 * units),
                "states": (batch, timesteps if training else 2, input_dim + units),
                "c_prev": (batch, timesteps if training else 1, units),
                "h_last": (batch, units)}

    @classmethod
    def elements(cls, *args):
        """The values of all buffers, for :meth:`shapes`' arguments."""
        return sum(prod(shape) for shape in cls.shapes(*args).values())


def forward_nbytes(batch, timesteps, input_dim, units, dtype, training):
    """Bytes a forward pass allocates (see :func:`fastlstm.workspace_nbytes`)."""
    hoist = _plan.forward_plan(batch, timesteps, input_dim, units).hoist
    itemsize = np.dtype(dtype).itemsize
    lanes = _kernels.current().vector_lanes(itemsize)
    panel_units = -(-units // lanes) * lanes
    elements = (ForwardWorkspace.elements(batch, timesteps, input_dim, units, training, hoist)
                + batch * timesteps * units        # outputs
                + (input_dim + units) * 4 * units  # kernel stacked on recurrent_kernel
                # the weights a step reads, packed (units padded to whole panels)
                + (units if hoist else input_dim + units) * 4 * panel_units
                + 3 * batch * units)               # h, c, dropout multipliers
    return elements * itemsize


@dataclass
class FastRecord:
    """What the fast forward pass keeps for its backward pass: the buffers
    the backward kernel reads (see ``backward`` in ``fastlstm/_lstm.pyx``)."""

    x_shape: tuple
    weights: np.ndarray          # kernel stacked on recurrent_kernel, as the forward read them
    mask: object                 # (B, T) uint8, or None
    dropout: np.ndarray          # (B, H) recurrent-dropout multipliers, ones for none
    has_dropout: bool
    go_backwards: bool
    gates: np.ndarray            # the activated gates; the gate gradients overwrite them
    states: np.ndarray           # each step's [x_t, h_{t-1}]
    c_prev: np.ndarray           # each step's c_{t-1}
    has_bias: bool
    activation_codes: tuple


class FastBackend:
    """The Cython kernels behind the reference's signatures: allocate the
    outputs and workspace, then run the kernel with BLAS single-threaded."""

    @staticmethod
    def lstm_forward(x, kernel, recurrent_kernel, bias, initial_state=None, mask=None,
                     go_backwards=False, return_cache=True, recurrent_dropout_mask=None,
                     activation="tanh", recurrent_activation="sigmoid"):
        dtype = kernel.dtype
        batch, timesteps, input_dim = x.shape
        units = recurrent_kernel.shape[0]
        x = np.ascontiguousarray(x)
        has_bias = bias is not None
        bias = np.ascontiguousarray(bias) if has_bias else np.zeros(4 * units, dtype)
        h, c = (kernel_copy(s, (batch, units), dtype) for s in (initial_state or (None, None)))
        mask_bytes = None if mask is None else np.ascontiguousarray(mask).view(np.uint8)
        has_dropout = recurrent_dropout_mask is not None
        dropout = (np.ascontiguousarray(recurrent_dropout_mask) if has_dropout
                   else np.ones((batch, units), dtype))
        plan = _plan.forward_plan(batch, timesteps, input_dim, units)
        try:
            weights = SPARES.empty((input_dim + units, 4 * units), dtype)
            outputs = np.empty((batch, timesteps, units), dtype)
            work = ForwardWorkspace(batch, timesteps, input_dim, units, dtype, return_cache,
                                    plan.hoist, SPARES.empty)
        except MemoryError:
            needed = forward_nbytes(batch, timesteps, input_dim, units, dtype, return_cache)
            raise MemoryError(
                f"lstm_forward needs {needed / 2**30:.1f} GiB of workspace for x of shape "
                f"{x.shape} and units={units} ({dtype}, "
                f"{'training' if return_cache else 'inference'}); see "
                f"fastlstm.workspace_nbytes. Use a smaller batch or shorter sequences."
            ) from None
        weights[:input_dim] = kernel
        weights[input_dim:] = recurrent_kernel
        kernels = _kernels.current()
        codes = (kernels.Activation[activation.upper()],
                 kernels.Activation[recurrent_activation.upper()])
        with _config.single_threaded_blas(plan.single_threaded_blas):
            kernels.forward(x, weights, bias, mask_bytes, dropout, go_backwards, outputs, h, c,
                            work.gates, work.states, work.c_prev, work.h_last, return_cache,
                            plan.hoist, *codes, plan.threads, split_units=plan.split_units)
        cache = None
        if not return_cache:
            SPARES.give(weights, *work.buffers())
        else:
            SPARES.give(work.h_last)
            cache = FastRecord(x_shape=x.shape, weights=weights, mask=mask_bytes,
                               dropout=dropout, has_dropout=has_dropout,
                               go_backwards=go_backwards, gates=work.gates, states=work.states,
                               c_prev=work.c_prev, has_bias=has_bias, activation_codes=codes)
        return outputs, h, c, cache

    @staticmethod
    def lstm_backward(cache, grad_outputs=None, grad_h=None, grad_c=None, input_gradient=True):
        weights, dropout = cache.weights, cache.dropout
        dtype = weights.dtype
        batch, timesteps, input_dim = x_shape = cache.x_shape
        units = weights.shape[1] // 4
        state_shape = (batch, units)
        dh_pass = kernel_copy(grad_h, state_shape, dtype)
        dc = kernel_copy(grad_c, state_shape, dtype)
        dh_rec = np.zeros(state_shape, dtype)
        carry = np.zeros(state_shape, dtype)
        dx = np.empty(x_shape, dtype) if input_gradient else None
        # One product fills both weight gradients: dkernel on drecurrent_kernel.
        dweights = np.empty_like(weights)
        dbias = np.empty(4 * units, dtype)
        grad_outputs = (np.zeros((batch, timesteps, units), dtype) if grad_outputs is None
                        else np.ascontiguousarray(grad_outputs))
        # The backward pass does twice the forward pass's products.
        threads, single_blas = _plan.call_threads(2 * _plan.forward_flops(x_shape, units))
        with _config.single_threaded_blas(single_blas):
            _kernels.current().backward(weights, cache.mask, dropout,
                                        cache.go_backwards, grad_outputs, cache.gates,
                                        cache.states, cache.c_prev, dh_rec, dh_pass, dc,
                                        carry, dx, dweights, dbias,
                                        *cache.activation_codes, threads,
                                        split_units=_plan.split_units(batch, units, threads))
        # The record is used once: its buffers serve the next call.
        SPARES.give(weights, cache.gates, cache.states, cache.c_prev)
        cache.weights = cache.gates = cache.states = cache.c_prev = None
        if cache.has_dropout:
            dh_rec *= dropout
        dh0 = dh_rec + dh_pass
        return (dx, dweights[:input_dim], dweights[input_dim:],
                dbias if cache.has_bias else None, dh0, dc)
