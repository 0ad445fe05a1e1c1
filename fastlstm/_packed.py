"""An LSTM's weights checked, copied and laid out once: :class:`PackedLSTM`.

:func:`~fastlstm.lstm_forward` starts every call from nothing: it checks the
weights, stacks kernel on recurrent_kernel, lays them out for the CPU's
vectors, chooses how to split the work and allocates its workspace. A
served model calls the same weights over and over; this object does all of
that once and keeps it, as an inference session does.
"""
import threading

import numpy as np

from . import _config, _kernels, _plan, _sequences
from ._engine import ForwardWorkspace, kernel_copy
from .functional import _check_weights, check_sizes
from ._validation import (as_mask, as_real_array, as_sequences, as_state, as_step_states,
                          check_activation, check_bool, check_features, check_state_list)

__all__ = ["PackedLSTM"]


class PackedLSTM:
    """An LSTM for inference whose weights are checked, copied and packed once.

    Parameters
    ----------
    kernel : ndarray, shape (input_dim, 4 * units)
    recurrent_kernel : ndarray, shape (units, 4 * units)
    bias : ndarray, shape (4 * units,), or None
    activation, recurrent_activation : str
        As :func:`~fastlstm.lstm_forward` takes them. The arrays are
        copied: changing them afterwards does not change this object, which
        is why it never checks them again. ``kernel``, ``recurrent_kernel``
        and ``bias`` are then read-only views of the copies.

    Notes
    -----
    Calling it runs :func:`~fastlstm.lstm_forward` with ``return_cache=False``
    and gives the same results, to the bit: ``outputs, h, c =
    packed(x, initial_state=None, mask=None, go_backwards=False)``. What
    each call of ``lstm_forward`` does before the kernel runs (checking the
    weights, stacking and packing them into the layout of the CPU's
    vectors, planning the threads, allocating the workspace) is done here
    once per weights, or once per input shape, and kept.
    :meth:`step` runs one step with Keras' ``LSTMCell`` interface.

    Examples
    --------
    >>> import numpy as np, fastlstm as fl
    >>> rng = np.random.default_rng(0)
    >>> kernel, recurrent_kernel = rng.standard_normal((3, 16)), rng.standard_normal((4, 16))
    >>> lstm = fl.PackedLSTM(kernel, recurrent_kernel, np.zeros(16))
    >>> x = rng.standard_normal((2, 5, 3))
    >>> outputs, h, c = lstm(x)
    >>> bool(np.array_equal(outputs, fl.lstm_forward(x, kernel, recurrent_kernel,
    ...                     np.zeros(16), return_cache=False)[0]))
    True
    >>> h, (h, c) = lstm.step(x[:, 0], [np.zeros((2, 4)), np.zeros((2, 4))])
    """

    def __init__(self, kernel, recurrent_kernel, bias=None, activation="tanh",
                 recurrent_activation="sigmoid"):
        self.activation = check_activation(activation, "activation")
        self.recurrent_activation = check_activation(recurrent_activation,
                                                     "recurrent_activation")
        dtype, units, (kernel, recurrent_kernel, bias) = _check_weights(
            kernel, recurrent_kernel, bias)
        self.dtype, self.units, self.input_dim = dtype, units, kernel.shape[0]
        # kernel stacked on recurrent_kernel, as the kernels read them; the
        # properties below are read-only views of this one copy.
        self._weights = np.concatenate([kernel, recurrent_kernel]).astype(dtype, order="C")
        self._weights.flags.writeable = False
        self.use_bias = bias is not None
        self._bias = (np.array(bias, dtype, order="C") if self.use_bias
                      else np.zeros(4 * units, dtype))
        self._bias.flags.writeable = False
        self._start()

    def _start(self):
        """What the object keeps besides its weights, made anew after pickling."""
        kernels = _kernels.current()
        self._build = _kernels.current_name()
        self._codes = (kernels.Activation[self.activation.upper()],
                       kernels.Activation[self.recurrent_activation.upper()])
        self._step = kernels.Step(self.kernel, self.recurrent_kernel, self._bias, *self._codes)
        self._panels = {}
        self._plans = {}
        self._workspaces = {}
        self._lock = threading.Lock()

    def __getstate__(self):
        return {name: getattr(self, name) for name in (
            "activation", "recurrent_activation", "dtype", "units", "input_dim", "use_bias",
            "_weights", "_bias")}

    def __setstate__(self, state):
        self.__dict__.update(state)
        for array in (self._weights, self._bias):
            array.flags.writeable = False
        self._start()

    @property
    def kernel(self):
        """The input weights (input_dim, 4 * units), read-only."""
        return self._weights[:self.input_dim]

    @property
    def recurrent_kernel(self):
        """The recurrent weights (units, 4 * units), read-only."""
        return self._weights[self.input_dim:]

    @property
    def bias(self):
        """The biases (4 * units,), read-only; None without."""
        return self._bias if self.use_bias else None

    def __repr__(self):
        return (f"<PackedLSTM input_dim={self.input_dim} units={self.units} "
                f"dtype={self.dtype.name} activation={self.activation!r} "
                f"recurrent_activation={self.recurrent_activation!r}>")

    def _packed(self, kernels, rows):
        """The gate panels of ``rows`` of the weights: "all", "recurrent"
        (what the steps read when the input product is hoisted, see
        forward's ``packed_weights``) or "input" (the kernel's, which a
        layer of a pipelined stack reads for its input product); packed on
        first use for this build."""
        key = (_kernels.current_name(), rows)
        panels = self._panels.get(key)
        if panels is None:
            rows = {"all": self._weights, "recurrent": self._weights[self.input_dim:],
                    "input": self._weights[:self.input_dim]}[rows]
            size = kernels.gate_panels_size(rows.shape[0], self.units, self.dtype.itemsize)
            # 64-byte aligned, as the panels' vector loads need.
            spare = 64 // self.dtype.itemsize
            raw = np.empty(size + spare, self.dtype)
            start = (-raw.ctypes.data % 64) // self.dtype.itemsize
            panels = raw[start:start + size]
            kernels.pack_gate_panels(rows, panels)
            self._panels[key] = panels
        return panels

    def _plan(self, batch, timesteps):
        key = (batch, timesteps, _config.num_threads(), _kernels.current_name())
        plan = self._plans.get(key)
        if plan is None:
            check_sizes(batch, timesteps, self.input_dim, self.units)
            plan = self._plans[key] = _plan.forward_plan(batch, timesteps, self.input_dim,
                                                         self.units)
        return plan

    def __call__(self, x, initial_state=None, mask=None, go_backwards=False):
        """Run the LSTM over ``x`` (batch, timesteps, input_dim): ``outputs,
        h, c`` as :func:`~fastlstm.lstm_forward` returns them (without the cache)."""
        x = as_sequences(x, "x", self.dtype)
        batch, timesteps, features = x.shape
        check_features(features, "x", self.input_dim, "the kernel's rows")
        go_backwards = check_bool(go_backwards, "go_backwards")
        h, c = self._initial_state(initial_state, batch)
        if mask is not None:
            mask = as_mask(mask, "mask", (batch, timesteps))
        return self._forward(x, h, c, mask, go_backwards)

    def _forward(self, x, h, c, mask, go_backwards):
        """The call on checked arguments: ``x`` of the weights' dtype, ``h``
        and ``c`` C-contiguous arrays the kernel overwrites with the final
        states, ``mask`` a boolean (batch, timesteps) array or None."""
        batch, timesteps, input_dim = x.shape
        lengths = _sequences.serves_mask(mask, input_dim, self.units, False, training=False)
        if lengths is not None:
            # A trailing padding the planner packs: the rows sorted by length
            # skip it (the weights are packed by that call, not kept).
            outputs, h[...], c[...], _ = _sequences.padded_forward(
                x, lengths, self.kernel, self.recurrent_kernel,
                self._bias if self.use_bias else None, h, c, go_backwards, False,
                self.activation, self.recurrent_activation)
            return outputs, h, c
        x = np.ascontiguousarray(x)
        mask_bytes = None if mask is None else np.ascontiguousarray(mask).view(np.uint8)
        plan = self._plan(batch, timesteps)
        threads, single_blas, hoist = plan.threads, plan.single_threaded_blas, plan.hoist
        kernels = _kernels.current()
        packed = self._packed(kernels, "recurrent" if hoist else "all")
        outputs = np.empty((batch, timesteps, self.units), self.dtype)
        # One workspace per shape, used by one call at a time: a concurrent
        # call from another thread gets a workspace of its own.
        owned = self._lock.acquire(blocking=False)
        try:
            work, ones = self._workspace(batch, timesteps, hoist, owned)
            with _config.single_threaded_blas(single_blas):
                kernels.forward(x, self._weights, self._bias, mask_bytes, ones, go_backwards,
                                outputs, h, c, work.gates, work.states, work.c_prev,
                                work.h_last, False, hoist, *self._codes, threads,
                                packed_weights=packed, split_units=plan.split_units)
        finally:
            if owned:
                self._lock.release()
        return outputs, h, c

    def _holds(self, kernel, recurrent_kernel, bias):
        """Whether these are, bit for bit, the weights this object copied:
        what a layer checks before each call to keep using its packed copy.
        A weight changed to -0.0 or to NaN counts as changed."""
        if (bias is None) == self.use_bias:
            return False
        pairs = [(kernel, self.kernel), (recurrent_kernel, self.recurrent_kernel)]
        if self.use_bias:
            pairs.append((bias, self._bias))
        same_bytes = _kernels.current().same_bytes
        return all(type(array) is np.ndarray and array.shape == copy.shape
                   and array.dtype == copy.dtype
                   and same_bytes(np.ascontiguousarray(array), copy)
                   for array, copy in pairs)

    def _workspace(self, batch, timesteps, hoist, keep):
        key = (batch, timesteps, hoist)
        workspace = self._workspaces.get(key) if keep else None
        if workspace is None:
            workspace = (ForwardWorkspace(batch, timesteps, self.input_dim, self.units,
                                          self.dtype, False, hoist),
                         np.ones((batch, self.units), self.dtype))
            if keep:
                # The workspace of the last shape only: a server fed many
                # shapes keeps one workspace, not one per shape.
                self._workspaces = {key: workspace}
        return workspace

    def _initial_state(self, initial_state, batch):
        """Copies of h0 and c0 (the kernel writes the final states over
        them), or zeros."""
        shape = (batch, self.units)
        if initial_state is not None:
            initial_state = [as_state(value, name, self.dtype, shape, "(batch, units)")
                             for value, name in zip(
                                 check_state_list(initial_state, "initial_state", "[h0, c0]"),
                                 ("initial_state[0] (h0)", "initial_state[1] (c0)"))]
        return [kernel_copy(s, shape, self.dtype) for s in (initial_state or (None, None))]

    def step(self, inputs, states):
        """One step, with Keras' ``LSTMCell`` interface: ``(h, [h, c])`` from
        ``inputs (batch, input_dim)`` and ``states = [h, c]``. New arrays;
        the same results as a call on a sequence of that one step, to the
        bit where such a call computes the input product in the step."""
        x = inputs
        if not (type(x) is np.ndarray and x.dtype == self.dtype and x.ndim == 2
                and x.flags.c_contiguous and x.shape[1] == self.input_dim):
            x = np.ascontiguousarray(as_real_array(inputs, "inputs", self.dtype))
            if x.ndim != 2 or x.shape[0] == 0 or x.shape[1] != self.input_dim:
                raise ValueError(f"inputs must have shape (batch, input_dim={self.input_dim}),"
                                 f" one step of every sequence, got shape {x.shape}")
        h, c = as_step_states(states, self.dtype, (x.shape[0], self.units))
        if self._build != _kernels.current_name():
            kernels = _kernels.current()
            self._step = kernels.Step(self.kernel, self.recurrent_kernel, self._bias,
                                      *self._codes)
            self._build = _kernels.current_name()
        h, c = self._step(x, h, c)
        return h, [h, c]
