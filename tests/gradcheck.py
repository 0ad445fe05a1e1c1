"""Finite-difference checks shared by the layer tests."""
import numpy as np


def random_like(structure, rng):
    """Standard-normal arrays shaped like an array or a list of arrays."""
    if isinstance(structure, list):
        return [rng.standard_normal(a.shape) for a in structure]
    return rng.standard_normal(structure.shape)


def inner(outputs, upstream):
    """sum(outputs * upstream), over an array or matching lists of arrays."""
    if isinstance(outputs, list):
        return sum(float(np.sum(o * u)) for o, u in zip(outputs, upstream))
    return float(np.sum(outputs * upstream))


def probe_indices(shape, count=10, seed=0):
    """Every index of a small array; a fixed sample of ``count`` of a larger one."""
    indices = list(np.ndindex(shape))
    if len(indices) <= count:
        return indices
    chosen = np.random.default_rng(seed).choice(len(indices), count, replace=False)
    return [indices[k] for k in sorted(chosen)]


def assert_gradient(analytic, loss, array, name, eps=1e-6, rtol=1e-6, atol=1e-8, count=10):
    """``analytic`` agrees with central differences of ``loss()`` with respect
    to ``array`` (perturbed in place, then restored) at the probed entries."""
    assert analytic.shape == array.shape, name
    for index in probe_indices(array.shape, count):
        original = array[index]
        array[index] = original + eps
        plus = loss()
        array[index] = original - eps
        minus = loss()
        array[index] = original
        np.testing.assert_allclose(analytic[index], (plus - minus) / (2 * eps), rtol=rtol,
                                   atol=atol, err_msg=f"{name}{list(index)}")
