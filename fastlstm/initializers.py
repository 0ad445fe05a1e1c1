"""Weight initializers with Keras 3's names and definitions.

An initializer is a callable ``initializer(shape, dtype="float32", rng=None)``
returning a new array. Layers pass their own :class:`numpy.random.Generator`
as ``rng`` so that a layer's ``seed`` decides its weights; an initializer built
with its own ``seed`` ignores ``rng`` and returns the same values at every call,
as a seeded Keras initializer does.

Examples
--------
>>> import numpy as np
>>> from fastlstm import initializers
>>> initializers.get("glorot_uniform")((3, 8), rng=np.random.default_rng(0)).shape
(3, 8)
>>> initializers.Constant(0.1)((2,), dtype="float64")
array([0.1, 0.1])
"""
import math

import numpy as np

from ._validation import check_real, is_int

__all__ = [
    "Initializer", "Zeros", "Ones", "Constant", "RandomNormal", "RandomUniform",
    "TruncatedNormal", "VarianceScaling", "GlorotUniform", "GlorotNormal", "HeUniform",
    "HeNormal", "LecunUniform", "LecunNormal", "Orthogonal", "get",
]


def _compute_fans(shape):
    """(fan_in, fan_out) as Keras computes them."""
    if len(shape) == 0:
        return 1, 1
    if len(shape) == 1:
        return shape[0], shape[0]
    if len(shape) == 2:
        return shape[0], shape[1]
    receptive_field = math.prod(shape[:-2])
    return shape[-2] * receptive_field, shape[-1] * receptive_field


def _truncated_standard_normal(rng, shape):
    """Standard normal values redrawn until within two standard deviations."""
    values = rng.standard_normal(shape)
    outside = np.abs(values) > 2.0
    while outside.any():
        values[outside] = rng.standard_normal(int(outside.sum()))
        outside = np.abs(values) > 2.0
    return values


class Initializer:
    """Base class: subclasses implement ``_sample(shape, rng)`` in float64.

    Parameters
    ----------
    seed : int or None
        With a seed, every call returns the same values and ``rng`` is ignored.
    """

    def __init__(self, seed=None):
        if seed is not None and (not is_int(seed) or seed < 0):
            raise ValueError(f"seed must be a non-negative integer or None, got {seed!r}")
        self.seed = seed

    def __call__(self, shape, dtype="float32", rng=None):
        shape = tuple(int(n) for n in shape)
        if self.seed is not None:
            rng = np.random.default_rng(self.seed)
        elif rng is None:
            rng = np.random.default_rng()
        return np.asarray(self._sample(shape, rng), dtype=dtype)

    def _sample(self, shape, rng):
        raise NotImplementedError

    def __repr__(self):
        fields = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if v is not None)
        return f"{type(self).__name__}({fields})"


class Zeros(Initializer):
    """All zeros."""

    def _sample(self, shape, rng):
        return np.zeros(shape)


class Ones(Initializer):
    """All ones."""

    def _sample(self, shape, rng):
        return np.ones(shape)


class Constant(Initializer):
    """Every entry equal to ``value``."""

    def __init__(self, value=0.0):
        super().__init__()
        self.value = check_real(value, "value")

    def _sample(self, shape, rng):
        return np.full(shape, self.value)


class RandomNormal(Initializer):
    """Normal distribution with the given ``mean`` and ``stddev``."""

    def __init__(self, mean=0.0, stddev=0.05, seed=None):
        super().__init__(seed)
        self.mean, self.stddev = check_real(mean, "mean"), check_real(stddev, "stddev")

    def _sample(self, shape, rng):
        return self.mean + self.stddev * rng.standard_normal(shape)


class RandomUniform(Initializer):
    """Uniform distribution on ``[minval, maxval)``."""

    def __init__(self, minval=-0.05, maxval=0.05, seed=None):
        super().__init__(seed)
        self.minval, self.maxval = check_real(minval, "minval"), check_real(maxval, "maxval")

    def _sample(self, shape, rng):
        return rng.uniform(self.minval, self.maxval, shape)


class TruncatedNormal(Initializer):
    """Normal distribution cut at two standard deviations from the mean."""

    def __init__(self, mean=0.0, stddev=0.05, seed=None):
        super().__init__(seed)
        self.mean, self.stddev = check_real(mean, "mean"), check_real(stddev, "stddev")

    def _sample(self, shape, rng):
        return self.mean + self.stddev * _truncated_standard_normal(rng, shape)


class VarianceScaling(Initializer):
    """Variance ``scale / n`` with n the fan in, the fan out or their mean.

    ``distribution`` is "truncated_normal" (the normal's stddev corrected for
    the truncation, as Keras does), "untruncated_normal" or "uniform" (limit
    ``sqrt(3 * scale / n)``).
    """

    _MODES = ("fan_in", "fan_out", "fan_avg")
    _DISTRIBUTIONS = ("truncated_normal", "untruncated_normal", "uniform")
    # Standard deviation of a standard normal truncated to [-2, 2].
    _TRUNCATED_STDDEV = 0.87962566103423978

    def __init__(self, scale=1.0, mode="fan_in", distribution="truncated_normal", seed=None):
        super().__init__(seed)
        scale = check_real(scale, "scale")
        if not scale > 0:
            raise ValueError(f"scale must be positive, got {scale!r}")
        if mode not in self._MODES:
            raise ValueError(f"mode must be one of {self._MODES}, got {mode!r}")
        if distribution not in self._DISTRIBUTIONS:
            raise ValueError(f"distribution must be one of {self._DISTRIBUTIONS}, "
                             f"got {distribution!r}")
        self.scale, self.mode, self.distribution = scale, mode, distribution

    def _sample(self, shape, rng):
        fan_in, fan_out = _compute_fans(shape)
        n = {"fan_in": fan_in, "fan_out": fan_out, "fan_avg": (fan_in + fan_out) / 2}[self.mode]
        variance = self.scale / max(1.0, n)
        if self.distribution == "uniform":
            limit = math.sqrt(3.0 * variance)
            return rng.uniform(-limit, limit, shape)
        if self.distribution == "untruncated_normal":
            return math.sqrt(variance) * rng.standard_normal(shape)
        stddev = math.sqrt(variance) / self._TRUNCATED_STDDEV
        return stddev * _truncated_standard_normal(rng, shape)


class GlorotUniform(VarianceScaling):
    """Uniform on ``[-limit, limit]``, ``limit = sqrt(6 / (fan_in + fan_out))``."""

    def __init__(self, seed=None):
        super().__init__(1.0, "fan_avg", "uniform", seed)


class GlorotNormal(VarianceScaling):
    """Truncated normal with stddev ``sqrt(2 / (fan_in + fan_out))``."""

    def __init__(self, seed=None):
        super().__init__(1.0, "fan_avg", "truncated_normal", seed)


class HeUniform(VarianceScaling):
    """Uniform on ``[-limit, limit]``, ``limit = sqrt(6 / fan_in)``."""

    def __init__(self, seed=None):
        super().__init__(2.0, "fan_in", "uniform", seed)


class HeNormal(VarianceScaling):
    """Truncated normal with stddev ``sqrt(2 / fan_in)``."""

    def __init__(self, seed=None):
        super().__init__(2.0, "fan_in", "truncated_normal", seed)


class LecunUniform(VarianceScaling):
    """Uniform on ``[-limit, limit]``, ``limit = sqrt(3 / fan_in)``."""

    def __init__(self, seed=None):
        super().__init__(1.0, "fan_in", "uniform", seed)


class LecunNormal(VarianceScaling):
    """Truncated normal with stddev ``sqrt(1 / fan_in)``."""

    def __init__(self, seed=None):
        super().__init__(1.0, "fan_in", "truncated_normal", seed)


class Orthogonal(Initializer):
    """A (semi-)orthogonal matrix times ``gain``.

    The array is seen as a matrix of ``prod(shape[:-1])`` rows and
    ``shape[-1]`` columns; its rows are orthonormal when there are fewer rows
    than columns (a recurrent kernel ``(units, 4 * units)``), its columns
    otherwise.
    """

    def __init__(self, gain=1.0, seed=None):
        super().__init__(seed)
        self.gain = check_real(gain, "gain")

    def _sample(self, shape, rng):
        if len(shape) < 2:
            raise ValueError(f"the orthogonal initializer needs a shape with at least two "
                             f"dimensions, got {shape}")
        rows, cols = math.prod(shape[:-1]), shape[-1]
        q, r = np.linalg.qr(rng.standard_normal((max(rows, cols), min(rows, cols))))
        # The sign correction makes q uniformly distributed over orthogonal matrices.
        q *= np.sign(np.diag(r))
        if rows < cols:
            q = q.T
        return self.gain * q.reshape(shape)


_BY_NAME = {
    "zeros": Zeros, "ones": Ones, "random_normal": RandomNormal,
    "random_uniform": RandomUniform, "truncated_normal": TruncatedNormal,
    "glorot_uniform": GlorotUniform, "glorot_normal": GlorotNormal,
    "he_uniform": HeUniform, "he_normal": HeNormal, "lecun_uniform": LecunUniform,
    "lecun_normal": LecunNormal, "orthogonal": Orthogonal,
}


def get(identifier, name="initializer"):
    """The initializer an argument names.

    Parameters
    ----------
    identifier : str, Initializer or callable
        A Keras name (``"glorot_uniform"``, ``"orthogonal"``, ``"zeros"``, ...),
        an :class:`Initializer`, or any callable ``f(shape, dtype)`` returning
        an array of that shape.
    name : str
        The argument's name, for error messages.

    Returns
    -------
    callable
    """
    if isinstance(identifier, str):
        if identifier not in _BY_NAME:
            raise ValueError(f"{name} must be one of {sorted(_BY_NAME)}, an Initializer or a "
                             f"callable f(shape, dtype), got {identifier!r}")
        return _BY_NAME[identifier]()
    if callable(identifier):
        return identifier
    raise TypeError(f"{name} must be an initializer name, an Initializer or a callable "
                    f"f(shape, dtype), got {type(identifier).__name__} {identifier!r}")


def _draw(initializer, shape, dtype, rng, name):
    """``initializer``'s values for ``shape``, checked and cast to ``dtype``.

    :class:`Initializer` instances draw from ``rng``; other callables are
    called as ``f(shape, dtype)``, as Keras calls them.
    """
    if isinstance(initializer, Initializer):
        values = initializer(shape, dtype=dtype, rng=rng)
    else:
        values = initializer(shape, dtype)
    values = np.asarray(values)
    if values.dtype.kind not in "fiub":
        raise TypeError(f"{name} returned dtype {values.dtype}; it must return real numbers")
    if values.shape != tuple(shape):
        raise ValueError(f"{name} returned an array of shape {values.shape}; "
                         f"expected {tuple(shape)}")
    # A copy, so the layer never shares memory with what a callable returned.
    return values.astype(dtype, copy=True)
