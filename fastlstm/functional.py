"""The functional LSTM: check the arguments once, lay them out, dispatch.

:func:`lstm_forward` and :func:`lstm_backward` are the one door to the
kernels. They validate and cast every argument, so the backends (the
Cython kernels in ``_lstm`` and the NumPy oracle in :mod:`fastlstm.reference`)
receive C-contiguous arrays of one float dtype with agreeing shapes, and
never see a Python object they must check again.
"""
from collections import namedtuple
import operator

import numpy as np

from . import _config, _sequences, reference
from ._engine import FastBackend, forward_nbytes
from ._projection import ProjectedFastBackend
from ._blas import BLAS_Trans, gemm_arrays
from ._validation import (_FLOAT_DTYPES, as_mask, as_real_array, as_sequences,
                          as_state, check_activation, check_bool, check_features, check_option,
                          check_shape, check_state_list, describe)

__all__ = ["lstm_forward", "lstm_backward", "LSTMGradients", "ProjectedLSTMGradients",
           "LSTMCache", "workspace_nbytes",
           "matmul", "dense_forward", "dense_backward"]

LSTMGradients = namedtuple(
    "LSTMGradients", ["x", "kernel", "recurrent_kernel", "bias", "h0", "c0"]
)
LSTMGradients.__doc__ = """Gradients of a loss with respect to the arguments of :func:`lstm_forward`.

``bias`` is None when the forward ran without a bias. ``h0`` and ``c0`` are
the gradients of the initial states (zeros when none were given)."""

ProjectedLSTMGradients = namedtuple(
    "ProjectedLSTMGradients", LSTMGradients._fields + ("projection_kernel",)
)
ProjectedLSTMGradients.__doc__ = """:class:`LSTMGradients` of a projected LSTM (``lstm_forward``
with a ``projection_kernel``), followed by the gradient of that kernel; ``h0`` is
(batch, proj_units)."""

# BLAS takes 32-bit sizes and leading dimensions.
_INT_MAX = 2**31 - 1


class _Cache:
    """What a forward pass keeps for its backward pass, used once."""

    __slots__ = ("backend", "dtype", "batch", "timesteps", "input_dim", "units",
                 "state", "used")

    def __init__(self, backend, dtype, x_shape, units, state):
        self.backend = backend
        self.dtype = dtype
        self.batch, self.timesteps, self.input_dim = x_shape
        self.units = units
        self.state = state
        self.used = False

    def _details(self):
        return ""

    def __repr__(self):
        return (f"<{type(self).__name__} backend={self.backend!r}{self._details()} "
                f"dtype={self.dtype.name} batch={self.batch} timesteps={self.timesteps} "
                f"input_dim={self.input_dim} units={self.units}"
                f"{' (used)' if self.used else ''}>")


class LSTMCache(_Cache):
    """What a forward pass keeps for its backward pass.

    Opaque: pass it to :func:`lstm_backward`, once. The fast backend writes
    the gate gradients over the stored gates, so a second backward through
    the same cache raises ``RuntimeError``; run the forward pass again.
    """

    __slots__ = ()


class ProjectedLSTMCache(LSTMCache):
    """:class:`LSTMCache` of a projected LSTM, whose hidden state has
    ``proj_units`` values."""

    __slots__ = ("proj_units",)

    def __init__(self, backend, dtype, x_shape, units, state, proj_units):
        super().__init__(backend, dtype, x_shape, units, state)
        self.proj_units = proj_units

    def _details(self):
        return f" proj_units={self.proj_units}"


def _check_weights(kernel, recurrent_kernel, bias, projection_kernel=None):
    kernel = as_real_array(kernel, "kernel")
    if kernel.dtype not in _FLOAT_DTYPES:
        raise TypeError(f"kernel must be float32 or float64 (the weights set the compute "
                        f"dtype), got dtype {kernel.dtype}")
    dtype = kernel.dtype
    if kernel.ndim != 2 or kernel.shape[1] % 4 or kernel.shape[1] == 0 or kernel.shape[0] == 0:
        raise ValueError(f"kernel must have shape (input_dim, 4 * units) with input_dim >= 1 "
                         f"and units >= 1, got {kernel.shape}")
    units = kernel.shape[1] // 4
    weights = [kernel]
    hidden, recurrent_meaning = units, "(units, 4 * units)"
    if projection_kernel is not None:
        projection_kernel = as_real_array(projection_kernel, "projection_kernel")
        if projection_kernel.dtype != dtype:
            raise TypeError(f"projection_kernel must have the dtype of kernel ({dtype}), got "
                            f"{projection_kernel.dtype}")
        if (projection_kernel.ndim != 2 or projection_kernel.shape[0] != units
                or projection_kernel.shape[1] == 0):
            raise ValueError(f"projection_kernel must have shape (units, proj_units) with "
                             f"units={units} (from kernel) and proj_units >= 1, got "
                             f"{projection_kernel.shape}")
        hidden, recurrent_meaning = projection_kernel.shape[1], "(proj_units, 4 * units)"
    for name, value, shape, meaning in (
        ("recurrent_kernel", recurrent_kernel, (hidden, 4 * units), recurrent_meaning),
        ("bias", bias, (4 * units,), "(4 * units,)"),
    ):
        if value is None and name == "bias":
            weights.append(None)
            continue
        array = as_real_array(value, name)
        if array.dtype != dtype:
            raise TypeError(f"{name} must have the dtype of kernel ({dtype}), got {array.dtype}")
        check_shape(array, name, shape, f"{meaning} for units={units}"
                    + ("" if projection_kernel is None else f", proj_units={hidden}"))
        weights.append(array)
    if projection_kernel is not None:
        weights.append(projection_kernel)
    return dtype, units, weights


def lstm_forward(x, kernel, recurrent_kernel, bias, initial_state=None, mask=None,
                 go_backwards=False, return_cache=True, backend="fast",
                 recurrent_dropout_mask=None, activation="tanh",
                 recurrent_activation="sigmoid", projection_kernel=None):
    """Run an LSTM over a batch of sequences.

    Parameters
    ----------
    x : array_like, shape (batch, timesteps, input_dim)
        The input sequences; real numbers, cast to the weights' dtype.
    kernel : ndarray, shape (input_dim, 4 * units)
        Input weights, gates in the order i, f, c, o (as Keras). Its dtype,
        float32 or float64, is the dtype of the computation.
    recurrent_kernel : ndarray, shape (units, 4 * units)
        Recurrent weights, same gate order and dtype.
    bias : ndarray, shape (4 * units,), or None
        Gate biases; None for an LSTM without bias.
    initial_state : [h0, c0] or None
        Initial hidden and cell states, each (batch, units); zeros if None.
    mask : array_like of bool (or of integers 0 and 1), shape (batch, timesteps), or None
        False marks a step to skip: the states are carried over unchanged and
        the output repeats the previous output (zeros before the first kept
        step), as in Keras.
    go_backwards : bool
        Process the sequences in reverse time order; the outputs are returned
        in processing order, as in Keras.
    return_cache : bool
        Keep what the backward pass needs. False is the inference path: no
        per-step workspace is kept and the cache returned is None.
    backend : {"fast", "reference"}
        "fast" runs the Cython kernels; "reference" the NumPy oracle.
    recurrent_dropout_mask : array_like, shape (batch, units), or None
        Multipliers applied to the previous hidden state before the recurrent
        product, one mask per sequence (Keras' recurrent dropout).
    activation : {"tanh", "sigmoid", "hard_sigmoid"}
        Activation of the candidate cell state and of the cell state in the
        output. Keras 3's definitions; hard_sigmoid is clip(x / 6 + 1/2, 0, 1).
    recurrent_activation : {"tanh", "sigmoid", "hard_sigmoid"}
        Activation of the input, forget and output gates. The default pair
        (tanh, sigmoid) runs the vectorised kernels; other pairs run the same
        kernels with scalar activations.
    projection_kernel : ndarray, shape (units, proj_units), or None
        A projected LSTM (LSTMP, ``torch.nn.LSTM``'s ``proj_size``): the
        hidden state is ``(o * tanh(c)) @ projection_kernel``, of
        ``proj_units`` values, which the outputs, ``h``, ``h0``,
        ``recurrent_kernel`` (then ``(proj_units, 4 * units)``) and
        ``recurrent_dropout_mask`` (``(batch, proj_units)``) follow; ``c``
        keeps ``units`` values. :func:`lstm_backward` then returns
        :class:`ProjectedLSTMGradients`.

    Returns
    -------
    outputs : ndarray, shape (batch, timesteps, units), or (batch, timesteps, proj_units)
    h : ndarray, shape (batch, units), or (batch, proj_units)
        Hidden state after the last processed step.
    c : ndarray, shape (batch, units)
        Cell state after the last processed step.
    cache : LSTMCache or None
        For :func:`lstm_backward`; None when ``return_cache`` is False.

    Examples
    --------
    >>> import numpy as np, fastlstm as fl
    >>> rng = np.random.default_rng(0)
    >>> x = rng.standard_normal((2, 5, 3))
    >>> kernel, recurrent_kernel = rng.standard_normal((3, 16)), rng.standard_normal((4, 16))
    >>> outputs, h, c, cache = fl.lstm_forward(x, kernel, recurrent_kernel, np.zeros(16))
    >>> outputs.shape, h.shape
    ((2, 5, 4), (2, 4))
    """
    check_backend(backend)
    check_activation(activation, "activation")
    check_activation(recurrent_activation, "recurrent_activation")
    dtype, units, weights = _check_weights(kernel, recurrent_kernel, bias, projection_kernel)
    kernel, recurrent_kernel, bias = weights[:3]
    projection_kernel = weights[3] if len(weights) > 3 else None
    hidden = recurrent_kernel.shape[0]
    x = as_sequences(x, "x", dtype)
    batch, timesteps, input_dim = x.shape
    check_features(input_dim, "x", kernel.shape[0], "the kernel's rows")
    check_sizes(batch, timesteps, input_dim, units)
    go_backwards = check_bool(go_backwards, "go_backwards")
    return_cache = check_bool(return_cache, "return_cache")

    hidden_meaning = "(batch, units)" if projection_kernel is None else "(batch, proj_units)"
    if initial_state is None:
        h0 = c0 = None
    else:
        states = check_state_list(initial_state, "initial_state", "[h0, c0]")
        h0 = as_state(states[0], "initial_state[0] (h0)", dtype, (batch, hidden),
                      hidden_meaning)
        c0 = as_state(states[1], "initial_state[1] (c0)", dtype, (batch, units),
                      "(batch, units)")
    if mask is not None:
        mask = as_mask(mask, "mask", (batch, timesteps))
    if recurrent_dropout_mask is not None:
        recurrent_dropout_mask = as_state(recurrent_dropout_mask, "recurrent_dropout_mask",
                                          dtype, (batch, hidden), hidden_meaning)

    return run_lstm_forward(backend, x, kernel, recurrent_kernel, bias,
                            None if h0 is None else [h0, c0], mask, go_backwards, return_cache,
                            recurrent_dropout_mask, activation, recurrent_activation,
                            projection_kernel)


def run_lstm_forward(backend, x, kernel, recurrent_kernel, bias, initial_state, mask,
                     go_backwards, return_cache, recurrent_dropout_mask, activation,
                     recurrent_activation, projection_kernel=None):
    """:func:`lstm_forward` on arguments already checked and cast.

    For the layers, which check what they are given in their own terms
    (and so name their own arguments in errors): ``x`` a (B, T, I) array of
    the weights' dtype, the weights of agreeing shapes, ``mask`` None or
    bool (B, T), the states and dropout multipliers (B, H) of that dtype,
    and the sizes within :func:`check_sizes`.
    """
    lengths = None
    if backend == "fast" and projection_kernel is None:
        lengths = _sequences.serves_mask(mask, x.shape[2], recurrent_kernel.shape[0],
                                         recurrent_dropout_mask is not None, return_cache)
    if lengths is not None:
        # A trailing padding: the rows sorted by length and packed skip it.
        outputs, h, c, state = _sequences.padded_forward(
            x, lengths, kernel, recurrent_kernel, bias, *(initial_state or (None, None)),
            go_backwards, return_cache, activation, recurrent_activation)
    else:
        extra, backends = {}, _BACKENDS
        if projection_kernel is not None:
            extra, backends = {"projection_kernel": projection_kernel}, _PROJECTED_BACKENDS
        outputs, h, c, state = backends[backend].lstm_forward(
            x, kernel, recurrent_kernel, bias, initial_state=initial_state, mask=mask,
            go_backwards=go_backwards, return_cache=return_cache,
            recurrent_dropout_mask=recurrent_dropout_mask,
            activation=activation, recurrent_activation=recurrent_activation, **extra,
        )
    cache = None
    if return_cache and projection_kernel is None:
        cache = LSTMCache(backend, kernel.dtype, x.shape, recurrent_kernel.shape[0], state)
    elif return_cache:
        cache = ProjectedLSTMCache(backend, kernel.dtype, x.shape, kernel.shape[1] // 4, state,
                                   projection_kernel.shape[1])
    return outputs, h, c, cache


def lstm_backward(cache, grad_outputs=None, grad_h=None, grad_c=None, input_gradient=True):
    """Backpropagate through time.

    Parameters
    ----------
    cache : LSTMCache
        From ``lstm_forward(..., return_cache=True)``; usable once.
    grad_outputs : array_like, shape (batch, timesteps, units), or None
        Gradient of the loss with respect to the outputs (None: zero).
    grad_h, grad_c : array_like, shape (batch, units), or None
        Gradients with respect to the final states (None: zero).
    input_gradient : bool
        Compute the gradient of the input ``x``. False skips its product
        (a sixth of a training step's work when ``input_dim`` equals
        ``units``) where nothing reads it, as for the first layer of a
        model, whose input is data; ``x`` is then None and every other
        gradient is the same to the bit.

    Returns
    -------
    LSTMGradients
        Named tuple ``(x, kernel, recurrent_kernel, bias, h0, c0)``; for a
        projected LSTM, :class:`ProjectedLSTMGradients`, which adds
        ``projection_kernel``.
    """
    check_cache(cache, LSTMCache, "lstm_forward", "lstm_backward")
    hidden, name = ((cache.proj_units, "proj_units") if isinstance(cache, ProjectedLSTMCache)
                    else (cache.units, "units"))
    expected = {
        "grad_outputs": ((cache.batch, cache.timesteps, hidden),
                         f"(batch, timesteps, {name})"),
        "grad_h": ((cache.batch, hidden), f"(batch, {name})"),
        "grad_c": ((cache.batch, cache.units), "(batch, units)"),
    }
    input_gradient = check_bool(input_gradient, "input_gradient")
    grads = {}
    for name, value in (("grad_outputs", grad_outputs), ("grad_h", grad_h), ("grad_c", grad_c)):
        if value is not None:
            shape, meaning = expected[name]
            value = as_state(value, name, cache.dtype, shape, f"{meaning} of the forward pass")
        grads[name] = value
    cache.used = True
    if isinstance(cache.state, _sequences.PaddedRecord):
        backward = _sequences.padded_backward
    elif isinstance(cache, ProjectedLSTMCache):
        backward = _PROJECTED_BACKENDS[cache.backend].lstm_backward
    else:
        backward = _BACKENDS[cache.backend].lstm_backward
    result = backward(cache.state, grads["grad_outputs"], grads["grad_h"], grads["grad_c"],
                      input_gradient)
    if isinstance(cache, ProjectedLSTMCache):
        return ProjectedLSTMGradients(*result)
    return LSTMGradients(*result)


def check_backend(backend):
    """``backend`` if it names a backend of :func:`lstm_forward`."""
    return check_option(backend, "backend", sorted(_BACKENDS))


def check_cache(cache, cls, forward, backward):
    """Refuse what ``backward`` cannot run from: no cache, another object,
    or a cache a backward pass has already used."""
    if cache is None:
        raise RuntimeError(f"{backward} needs the cache of a forward pass run with "
                           f"return_cache=True; got None (an inference-only result)")
    if not isinstance(cache, cls):
        raise TypeError(f"cache must be the {cls.__name__} returned by {forward}, got "
                        f"{describe(cache)}")
    if cache.used:
        raise RuntimeError(f"this cache was already used by a backward pass (the gate "
                           f"gradients overwrite it); run {forward} again")


def matmul(a, b, transpose_a=False, transpose_b=False, out=None, accumulate=False,
           single_threaded=True):
    """``op(a) @ op(b)``, plus ``out`` when ``accumulate``, on fastlstm's BLAS,
    single-threaded unless ``single_threaded`` is False.

    For the layers' own products (Dense) and the benchmark's sgemm rate:
    NumPy's ``@`` would run on NumPy's own multi-threaded BLAS, whose threads
    keep spinning after each product and take the cores from the LSTM
    kernels' threads (on two cores that halved the speed of a training step
    of an LSTM followed by a Dense layer). ``a`` and ``b`` are 2-D arrays of
    one float dtype; ``out``, when given, is C-contiguous and of that dtype.
    """
    rows = a.shape[1] if transpose_a else a.shape[0]
    cols = b.shape[0] if transpose_b else b.shape[1]
    if out is None:
        out = np.empty((rows, cols), dtype=a.dtype)
    with _config.single_threaded_blas(single_threaded):
        gemm_arrays(BLAS_Trans.Trans if transpose_a else BLAS_Trans.NoTrans,
                      BLAS_Trans.Trans if transpose_b else BLAS_Trans.NoTrans, a, b, out,
                      1.0, 1.0 if accumulate else 0.0)
    return out


def dense_forward(x, kernel, bias=None):
    """``x @ kernel + bias`` for ``x`` (rows, input_dim) C-contiguous, in the
    kernel's dtype; ``bias`` (units,) or None."""
    if bias is None:
        return matmul(x, kernel)
    z = np.repeat(bias[None, :], x.shape[0], axis=0)
    return matmul(x, kernel, out=z, accumulate=True)


def dense_backward(x, kernel, grad_z, use_bias=True, input_gradient=True):
    """Gradients of :func:`dense_forward` from ``grad_z`` (rows, units),
    C-contiguous: ``(dx, dkernel, dbias)``, dbias None without a bias and
    dx None without ``input_gradient``."""
    dkernel = matmul(x, grad_z, transpose_a=True)
    dbias = grad_z.sum(axis=0) if use_bias else None
    dx = matmul(grad_z, kernel, transpose_b=True) if input_gradient else None
    return dx, dkernel, dbias


def check_sizes(batch, timesteps, input_dim, units):
    """Refuse sizes whose workspace indices would not fit BLAS's 32-bit ints."""
    rows = batch * timesteps
    widest = max(input_dim, 4 * units)
    for what, value in (("batch * timesteps", rows),
                        ("timesteps * 4 * units", timesteps * 4 * units),
                        ("4 * units", widest)):
        if value > _INT_MAX:
            raise ValueError(f"{what} = {value} is too large: BLAS indexes with 32-bit "
                             f"integers (at most {_INT_MAX}); got x of shape "
                             f"{(batch, timesteps, input_dim)} and units={units}")


def workspace_nbytes(batch, timesteps, input_dim, units, dtype="float32", training=True):
    """Bytes the fast forward pass allocates for one call, outputs included.

    Training keeps, per step, the activated gates (4 * units values) and the
    hidden and cell states before the step (units each) for the backward
    pass. Inference keeps two state slots; it keeps the input projection of
    every step only where that is one product for all steps (for larger
    layers; smaller ones compute it step by step, which depends on the
    batch rows per thread, so on :func:`fastlstm.num_threads`). Both return
    the outputs (units per step), hold a few (batch, units) state buffers
    and a copy of the weights the steps read, laid out for the CPU's
    vectors. The backward pass then allocates the
    gradients (the size of x and of the weights), five (batch, units)
    buffers and a laid-out copy of the recurrent weights, and reuses the
    gate buffer for the gate gradients.

    Examples
    --------
    >>> import fastlstm as fl
    >>> fl.workspace_nbytes(64, 100, 128, 256)      # the benchmark's "medium", float32
    52035584
    """
    return forward_nbytes(*(operator.index(v) for v in (batch, timesteps, input_dim, units)),
                          dtype, training)


_BACKENDS = {"fast": FastBackend, "reference": reference}
_PROJECTED_BACKENDS = {"fast": ProjectedFastBackend, "reference": reference}
