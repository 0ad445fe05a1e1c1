"""The packed step kernel: weight panels, register tiles and the size rules.

The step product runs on weights packed into panels of the build's vector
width (``vector_lanes``) and on register tiles of up to ``tile_rows`` batch
rows. These tests aim at the edges of that layout: units just under, at and
over a multiple of the panel width, batches that leave every smaller tile
in use, and each size rule forced both ways, on every kernel build the
machine runs, against the NumPy reference at the tolerances of
test_fast_kernel.py.
"""
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import fastlstm
from fastlstm import _kernels
from test_fast_kernel import (_HYPOTHESIS, DTYPES, TOLERANCE, _check_fast_matches_reference,
                              assert_close_normwise, assert_matches_reference, draw_problem,
                              input_product, make_problem, with_full_rows)


@pytest.fixture
def kernels(kernel_build):
    """The module of the build the test runs on."""
    return _kernels.current()


@pytest.fixture(params=[1, 2], ids=["1 thread", "2 threads"])
def threads(request, monkeypatch):
    """Run even these small problems on the thread count given."""
    monkeypatch.setattr(fastlstm._plan, "PARALLEL_MIN_FLOPS", 0)
    fastlstm.set_num_threads(request.param)
    yield request.param
    fastlstm.set_num_threads(None)


def _units_around_panels(kernels, dtype):
    """Unit counts at the edges of the panel layout of ``dtype``."""
    lanes = kernels.vector_lanes(np.dtype(dtype).itemsize)
    return sorted({1, lanes - 1, lanes, lanes + 1, 4 * lanes - 1, 4 * lanes + 3} - {0})


# -- packing ----------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("extra_rows", [0, 5])
def test_packing_then_unpacking_returns_the_weights_exactly(kernels, dtype, extra_rows):
    rng = np.random.default_rng(1)
    for units in _units_around_panels(kernels, dtype) + [70]:
        weights = rng.standard_normal((extra_rows + units, 4 * units)).astype(dtype)
        gates = np.full_like(weights, np.nan)
        transposed = np.full((4 * units, units), np.nan, dtype)
        kernels._packing_round_trip(weights, gates, transposed)
        np.testing.assert_array_equal(gates, weights, err_msg=f"gate panels, units={units}")
        np.testing.assert_array_equal(transposed, weights[extra_rows:].T,
                                      err_msg=f"transposed panels, units={units}")


@pytest.mark.parametrize("dtype", DTYPES)
def test_packed_product_of_every_tile_height(kernels, dtype):
    """Row counts from 1 to two full tiles and one more exercise every tile
    height; unit counts off the panel width exercise the padded panel."""
    rng = np.random.default_rng(2)
    rows_max = 2 * kernels.tile_rows() + 1
    for units in _units_around_panels(kernels, dtype):
        depth = 7 + units
        weights = rng.standard_normal((depth, 4 * units)).astype(dtype)
        for rows in range(1, rows_max + 1):
            a = rng.standard_normal((rows, depth)).astype(dtype)
            z = np.full((rows, 4 * units), np.nan, dtype)
            kernels._packed_product(a, weights, z)
            expected = a.astype(np.float64) @ weights.astype(np.float64)
            assert_close_normwise(z, expected, TOLERANCE[dtype], f"rows={rows} units={units}")


def test_packed_product_refuses_mismatched_buffers(kernels):
    a = np.zeros((3, 8))
    with pytest.raises(ValueError, match="weights must have shape"):
        kernels._packed_product(a, np.zeros((7, 16)), np.zeros((3, 16)))
    with pytest.raises(ValueError, match="z must have shape"):
        kernels._packed_product(a, np.zeros((8, 16)), np.zeros((4, 16)))


# -- the packed path against the reference ------------------------------------------

@st.composite
def packed_problems(draw, dtype):
    """Shapes at the edges of the tiles and panels, with every option."""
    kernels = _kernels.current()
    lanes = kernels.vector_lanes(np.dtype(dtype).itemsize)
    rows = kernels.tile_rows()
    batch = draw(st.one_of(st.just(1), st.integers(1, 2 * rows + 1), st.integers(1, 40)))
    units = draw(st.one_of(st.sampled_from(_units_around_panels(kernels, dtype)),
                           st.integers(1, 5 * lanes + 1)))
    input_dim = draw(st.integers(1, 40))
    timesteps = draw(st.integers(1, max(1, min(30, 60_000 // (batch * (input_dim + units))))))
    seed = draw(st.integers(0, 2**32 - 1))
    mask = None
    if draw(st.booleans()):
        mask = with_full_rows(np.random.default_rng(seed + 1).random((batch, timesteps)) < 0.6)
    return draw_problem(draw, batch, timesteps, input_dim, units, dtype, seed, mask)


# input_product (imported) forces the input product one way, whatever the size would choose.
@pytest.mark.parametrize("dtype", DTYPES)
def test_packed_path_matches_reference(kernels, input_product, threads, dtype):
    @_HYPOTHESIS
    @given(problem=packed_problems(dtype))
    def check(problem):
        _check_fast_matches_reference(problem, dtype)

    check()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("activations", [("sigmoid", "hard_sigmoid"), ("tanh", "tanh")])
def test_other_activations_on_a_padded_panel(kernels, input_product, dtype, activations):
    units = kernels.vector_lanes(np.dtype(dtype).itemsize) + 3
    forward, backward = make_problem(kernels.tile_rows() + 2, 6, 5, units, dtype,
                                     mask="random", dropout=True)
    activation, recurrent_activation = activations
    assert_matches_reference(forward, backward, dtype, activation=activation,
                             recurrent_activation=recurrent_activation)


# -- the kernels' own shape checks ---------------------------------------------------------

def test_forward_kernel_names_a_buffer_of_the_wrong_shape(kernels):
    x = np.zeros((2, 3, 4))
    arguments = dict(x=x, weights=np.zeros((9, 20)), bias=np.zeros(20), mask=None,
                     dropout=np.ones((2, 5)), go_backwards=False, outputs=np.empty((2, 3, 5)),
                     h=np.zeros((2, 5)), c=np.zeros((2, 5)), gates=np.empty((2, 3, 20)),
                     states=np.empty((2, 3, 9)), c_prev=np.empty((2, 3, 5)),
                     h_last=np.empty((2, 5)), training=True, hoist=True, activation=0,
                     recurrent_activation=1, num_threads=1)
    kernels.forward(**arguments)
    for name in ("bias", "dropout", "outputs", "c", "states", "c_prev", "h_last"):
        bad = dict(arguments)
        good = arguments[name]
        bad[name] = np.zeros(good.shape[:-1] + (good.shape[-1] + 1,))
        with pytest.raises(ValueError, match=f"^{name} must have shape"):
            kernels.forward(**bad)
