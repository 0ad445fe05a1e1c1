"""Tests of the row-major BLAS wrapper, through its array door ``gemm_arrays``.

Every product is checked against NumPy in float64 over dtype x transa x
transb x memory order of both operands x shapes, with one relative tolerance
per dtype. The operands are drawn from [0.5, 1.5), so no entry of a product
is a cancellation (alpha and beta share a sign) and an elementwise relative
tolerance is meaningful.
"""
import itertools

import numpy as np
import pytest

from fastlstm._blas import BLAS_Trans, gemm_arrays

NoTrans, Trans = BLAS_Trans.NoTrans, BLAS_Trans.Trans

RTOL = {np.float32: 1e-5, np.float64: 1e-12}
DTYPES = [np.float32, np.float64]
TRANSPOSES = [NoTrans, Trans]
ORDERS = ["C", "F"]
# (m, n, k) of c (m, n) = op(a) (m, k) @ op(b) (k, n); every size-one case,
# then sizes past a vector register and past a BLAS blocking step.
SHAPES = [
    (1, 1, 1),
    (1, 7, 5),
    (6, 1, 4),
    (5, 6, 1),
    (1, 1, 9),
    (13, 17, 9),
    (64, 48, 33),
]


def _operand(rng, rows, cols, trans, dtype, order):
    """The stored array whose op() is (rows, cols)."""
    shape = (rows, cols) if trans == NoTrans else (cols, rows)
    return np.asarray(rng.uniform(0.5, 1.5, size=shape).astype(dtype), order=order)


def _op(array, trans):
    return array if trans == NoTrans else array.T


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("transa", TRANSPOSES)
@pytest.mark.parametrize("transb", TRANSPOSES)
@pytest.mark.parametrize("order_a, order_b", list(itertools.product(ORDERS, ORDERS)))
@pytest.mark.parametrize("m, n, k", SHAPES)
def test_gemm_matches_numpy(dtype, transa, transb, order_a, order_b, m, n, k):
    rng = np.random.default_rng(m * 10_000 + n * 100 + k)
    a = _operand(rng, m, k, transa, dtype, order_a)
    b = _operand(rng, k, n, transb, dtype, order_b)
    c = rng.uniform(0.5, 1.5, size=(m, n)).astype(dtype)
    # Same signs for both terms, so the sum never cancels.
    alpha, beta = -1.75, -0.5
    expected = (alpha * _op(a, transa).astype(np.float64) @ _op(b, transb).astype(np.float64)
                + beta * c.astype(np.float64))
    a_before, b_before = a.copy(order="K"), b.copy(order="K")

    gemm_arrays(transa, transb, a, b, c, alpha, beta)

    assert c.dtype == dtype
    np.testing.assert_allclose(c, expected, rtol=RTOL[dtype])
    np.testing.assert_array_equal(a, a_before)
    np.testing.assert_array_equal(b, b_before)


@pytest.mark.parametrize("dtype", DTYPES)
def test_gemm_defaults_overwrite_c(dtype):
    """alpha=1, beta=0: whatever c held (even NaN) is replaced by a @ b."""
    rng = np.random.default_rng(0)
    a = rng.uniform(0.5, 1.5, size=(4, 3)).astype(dtype)
    b = rng.uniform(0.5, 1.5, size=(3, 5)).astype(dtype)
    c = np.full((4, 5), np.nan, dtype=dtype)

    gemm_arrays(NoTrans, NoTrans, a, b, c)

    np.testing.assert_allclose(c, a.astype(np.float64) @ b, rtol=RTOL[dtype])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("transa", TRANSPOSES)
@pytest.mark.parametrize("transb", TRANSPOSES)
def test_gemm_respects_leading_dimensions(dtype, transa, transb):
    """Operands and result that are blocks of wider arrays, as the kernels'
    per-step slices of (B, T, 4H) buffers are: only the block is read or written."""
    rng = np.random.default_rng(1)
    m, n, k = 5, 8, 6
    a_full = _operand(rng, m + 3, k + 4, transa, dtype, "C")
    b_full = _operand(rng, k + 2, n + 5, transb, dtype, "C")
    a = a_full[:m, :k] if transa == NoTrans else a_full[:k, :m]
    b = b_full[:k, :n] if transb == NoTrans else b_full[:n, :k]
    c_full = rng.uniform(0.5, 1.5, size=(m + 2, n + 7)).astype(dtype)
    c_before = c_full.copy()
    c = c_full[1:m + 1, 2:n + 2]
    alpha, beta = 0.5, 2.0
    expected = alpha * _op(a, transa).astype(np.float64) @ _op(b, transb) + beta * c

    gemm_arrays(transa, transb, a, b, c, alpha, beta)

    np.testing.assert_allclose(c, expected, rtol=RTOL[dtype])
    outside = np.ones(c_full.shape, dtype=bool)
    outside[1:m + 1, 2:n + 2] = False
    np.testing.assert_array_equal(c_full[outside], c_before[outside])


@pytest.mark.parametrize("dtype", DTYPES)
def test_gemm_rejects_c_strided_in_last_axis(dtype):
    a = np.ones((3, 2), dtype=dtype)
    b = np.ones((2, 4), dtype=dtype)
    c = np.zeros((3, 4), dtype=dtype, order="F")

    with pytest.raises(ValueError, match="contiguous"):
        gemm_arrays(NoTrans, NoTrans, a, b, c)

    np.testing.assert_array_equal(c, 0)
