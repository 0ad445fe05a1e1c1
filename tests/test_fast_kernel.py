"""The Cython kernels (backend="fast") against the NumPy reference.

Every test runs once per kernel build this machine has (baseline, avx2,
avx512, ...). float64 results must match the float64 reference within 1e-10;
float32 results must match the reference run in float64 on the same
(float32) inputs within 1e-4. Both are measured norm-wise per array: see
`assert_close_normwise` and SCALE_FLOOR.
"""
import dataclasses
import warnings

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fastlstm
from fastlstm import _kernels

GRADIENT_NAMES = ("x", "kernel", "recurrent_kernel", "bias", "h0", "c0")
RESULT_NAMES = ("outputs", "h", "c") + tuple(f"grad_{name}" for name in GRADIENT_NAMES)
TOLERANCE = {np.float32: 1e-4, np.float64: 1e-10}
DTYPES = [np.float32, np.float64]


@pytest.fixture
def restore_num_threads(monkeypatch):
    """Let even the small problems of these tests run on several threads, and
    restore the default thread count afterwards."""
    monkeypatch.setattr(fastlstm._plan, "PARALLEL_MIN_FLOPS", 0)
    yield
    fastlstm.set_num_threads(None)


def assert_close_normwise(actual, expected, tol, name="", floor=0.0):
    """Assert ``max|actual - expected| / max(max|expected|, floor) <= tol``.

    The error is measured relative to the largest entry of ``expected``, not
    entry by entry: an elementwise relative tolerance means nothing for the
    entries near zero that every LSTM result has. ``floor`` is the smallest
    scale an array is held to, for arrays that are small only because their
    terms cancelled or shrank (see SCALE_FLOOR). NaN anywhere fails.
    """
    assert actual.shape == expected.shape, (name, actual.shape, expected.shape)
    actual = np.asarray(actual, dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    assert np.all(np.isfinite(actual)), f"{name}: non-finite entries"
    scale = max(np.max(np.abs(expected), initial=0.0), floor)
    error = np.max(np.abs(actual - expected), initial=0.0) / (scale if scale > 0 else 1.0)
    assert error <= tol, (f"{name}: norm-wise relative error {error:.3e} > {tol:.0e} "
                          f"(max|expected| = {np.max(np.abs(expected), initial=0.0):.3e})")


# The problems below compute everything from O(1) inputs, weights and upstream
# gradients. An array much smaller than that (c where f * c_prev and i * g
# cancel, the gradient of h0 through 300 steps: 1e-40, below float32's
# normal range) carries the absolute rounding error of the O(1) terms it came
# from, in NumPy's float32 as much as in the kernels'. Such arrays are held to
# tol * SCALE_FLOOR in absolute terms.
SCALE_FLOOR = 1e-3

# dx and dh0 are products with the gate gradients: each entry sums 4 * units
# terms of O(1) size (dZ_t @ kernel.T, dZ_t @ recurrent_kernel.T). Where the
# terms cancel, as a single entry (batch = timesteps = input_dim = 1) can,
# the entry keeps the rounding of its terms, which grows with their number
# (n * u for n terms) and includes the few-ulp error of each gate gradient's
# activations. Measured over 3,240 such single-entry problems (float32,
# 1 to 81 units): absolute errors up to 2.6e-6, 2.4e-4 of an entry that had
# cancelled to 4e-3 (NumPy's own float32 computation: up to 6.8e-7). Those
# entries are held to the size of their terms: SCALE_FLOOR per term.
SUMMED_OVER_GATES = ("grad_x", "grad_h0")


def scale_floor(name, units):
    """The smallest scale the array ``name`` of a problem with ``units`` is held to."""
    return SCALE_FLOOR * 4 * units if name in SUMMED_OVER_GATES else SCALE_FLOOR


# -- problems -----------------------------------------------------------------

def make_problem(batch, timesteps, input_dim, units, dtype, *, seed=0, use_bias=True,
                 initial_state=True, mask=None, dropout=False, upstream=(True, True, True)):
    """Arguments of lstm_forward and lstm_backward for one random problem.

    Weights are scaled by 1/sqrt(fan-in), so pre-activations stay O(1) and
    the recurrence is contractive: errors do not grow with the sequence.
    ``mask`` is None, "random", or an explicit (batch, timesteps) bool array.
    ``upstream`` says which of grad_outputs, grad_h, grad_c are given.
    """
    rng = np.random.default_rng(seed)
    shape = (batch, units)

    def normal(size, scale=1.0):
        return (scale * rng.standard_normal(size)).astype(dtype)

    if isinstance(mask, str):
        mask = rng.random((batch, timesteps)) < 0.7
    forward = dict(
        x=normal((batch, timesteps, input_dim)),
        kernel=normal((input_dim, 4 * units), 1 / np.sqrt(input_dim)),
        recurrent_kernel=normal((units, 4 * units), 1 / np.sqrt(units)),
        bias=normal(4 * units, 0.3) if use_bias else None,
        initial_state=[normal(shape, 0.5), normal(shape)] if initial_state else None,
        mask=mask,
        recurrent_dropout_mask=(((rng.random(shape) < 0.8) / 0.8).astype(dtype)
                                if dropout else None),
    )
    want_outputs, want_h, want_c = upstream
    backward = dict(
        grad_outputs=normal((batch, timesteps, units)) if want_outputs else None,
        grad_h=normal(shape) if want_h else None,
        grad_c=normal(shape) if want_c else None,
    )
    return forward, backward


def run(forward, backward, backend="fast", dtype=None, **options):
    """Forward then backward; the nine results in RESULT_NAMES order.

    ``dtype`` casts every float array first (the float64 reference of a
    float32 problem).
    """
    def cast(value):
        if dtype is None or value is None or not isinstance(value, np.ndarray):
            return value
        return value if value.dtype == np.bool_ else value.astype(dtype)

    forward = {name: ([cast(s) for s in value] if name == "initial_state" and value
                      else cast(value)) for name, value in forward.items()}
    backward = {name: cast(value) for name, value in backward.items()}
    outputs, h, c, cache = fastlstm.lstm_forward(backend=backend, **forward, **options)
    grads = fastlstm.lstm_backward(cache, **backward)
    return (outputs, h, c) + tuple(grads)


def assert_matches_reference(forward, backward, dtype, **options):
    fast = run(forward, backward, "fast", **options)
    reference = run(forward, backward, "reference", dtype=np.float64, **options)
    for name, got, want in zip(RESULT_NAMES, fast, reference):
        if want is None:
            assert got is None, name
            continue
        assert got.dtype == dtype, name
        floor = scale_floor(name, forward["recurrent_kernel"].shape[0])
        assert_close_normwise(got, want, TOLERANCE[dtype], name, floor=floor)
    return fast


# -- hypothesis: fast == reference over shapes and options -----------------------

# Most sizes small, some up to ~300; B * T * (I + H) is kept under a budget so
# that the reference's Python loop over time stays cheap.
_size = st.one_of(st.integers(1, 4), st.integers(1, 16), st.integers(1, 300))
_WORK_BUDGET = 120_000


@st.composite
def problems(draw, dtype):
    batch, input_dim, units = draw(_size), draw(_size), draw(_size)
    longest = max(1, min(300, _WORK_BUDGET // (batch * (input_dim + units))))
    timesteps = draw(st.integers(1, longest))
    seed = draw(st.integers(0, 2**32 - 1))
    mask_kind = draw(st.sampled_from(["none", "random", "random with full rows"]))
    mask = None
    if mask_kind != "none":
        rng = np.random.default_rng(seed + 1)
        mask = rng.random((batch, timesteps)) < draw(st.floats(0.0, 1.0))
        if mask_kind == "random with full rows":
            with_full_rows(mask)
    return draw_problem(draw, batch, timesteps, input_dim, units, dtype, seed, mask)


def with_full_rows(mask):
    """``mask`` with a sequence every step of which is skipped, and one that
    skips none (the same row when B == 1)."""
    mask[0] = False
    mask[-1] = True
    return mask


def draw_problem(draw, batch, timesteps, input_dim, units, dtype, seed, mask):
    """A problem of these sizes with the other options drawn: bias, initial
    state, recurrent dropout, which upstream gradients, and go_backwards."""
    forward, backward = make_problem(
        batch, timesteps, input_dim, units, dtype, seed=seed,
        use_bias=draw(st.booleans()), initial_state=draw(st.booleans()), mask=mask,
        dropout=draw(st.booleans()),
        upstream=(draw(st.booleans()), draw(st.booleans()), draw(st.booleans())))
    return forward, backward, draw(st.booleans())


def _check_fast_matches_reference(problem, dtype):
    forward, backward, go_backwards = problem
    fast = assert_matches_reference(forward, backward, dtype, go_backwards=go_backwards)
    outputs, h, c, cache = fastlstm.lstm_forward(**forward, go_backwards=go_backwards,
                                                 return_cache=False)
    assert cache is None
    for name, got, want in zip(("outputs", "h", "c"), (outputs, h, c), fast):
        np.testing.assert_array_equal(got, want, err_msg=f"inference {name}")


_HYPOTHESIS = settings(max_examples=25, deadline=None, database=None,
                       suppress_health_check=[HealthCheck.function_scoped_fixture,
                                              HealthCheck.too_slow])


@_HYPOTHESIS
@given(problem=problems(np.float64))
def test_fast_matches_reference_float64(kernel_build, problem):
    _check_fast_matches_reference(problem, np.float64)


@_HYPOTHESIS
@given(problem=problems(np.float32))
def test_fast_matches_reference_float32(kernel_build, problem):
    _check_fast_matches_reference(problem, np.float32)


# Shapes at the edges, run every time whatever hypothesis draws.
EDGE_SHAPES = [
    (1, 1, 1, 1),
    (1, 300, 2, 3),
    (300, 2, 3, 5),
    (2, 3, 300, 4),
    (2, 3, 5, 300),
    (5, 7, 17, 33),  # units not a multiple of any vector width
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("batch, timesteps, input_dim, units", EDGE_SHAPES)
@pytest.mark.parametrize("go_backwards", [False, True])
def test_fast_matches_reference_at_edge_shapes(kernel_build, dtype, batch, timesteps,
                                               input_dim, units, go_backwards):
    forward, backward = make_problem(batch, timesteps, input_dim, units, dtype,
                                     mask="random", dropout=True)
    assert_matches_reference(forward, backward, dtype, go_backwards=go_backwards)


@pytest.mark.parametrize("dtype", DTYPES)
def test_fully_masked_sequence_keeps_initial_state_and_gets_zero_gradient(kernel_build, dtype):
    mask = np.ones((3, 6), dtype=bool)
    mask[1] = False
    forward, backward = make_problem(3, 6, 4, 5, dtype, mask=mask)
    outputs, h, c, grad_x, *_, grad_h0, grad_c0 = assert_matches_reference(forward, backward, dtype)
    h0, c0 = forward["initial_state"]
    np.testing.assert_array_equal(outputs[1], 0)
    np.testing.assert_array_equal(h[1], h0[1])
    np.testing.assert_array_equal(c[1], c0[1])
    np.testing.assert_array_equal(grad_x[1], 0)
    # Nothing happened to the sequence: the final-state gradients pass straight through.
    np.testing.assert_array_equal(grad_h0[1], backward["grad_h"][1])
    np.testing.assert_array_equal(grad_c0[1], backward["grad_c"][1])


@pytest.mark.parametrize("dtype", DTYPES)
def test_masked_step_carries_state_and_repeats_output(kernel_build, dtype):
    mask = np.ones((2, 5), dtype=bool)
    mask[0, 2] = False
    forward, backward = make_problem(2, 5, 3, 4, dtype, mask=mask)
    outputs = assert_matches_reference(forward, backward, dtype)[0]
    np.testing.assert_array_equal(outputs[0, 2], outputs[0, 1])
    assert not np.array_equal(outputs[0, 3], outputs[0, 2])


# -- the input product: one GEMM for all steps, or one per step -----------------

@pytest.fixture(params=[True, False], ids=["hoisted", "per step"])
def input_product(request, monkeypatch):
    """Force the forward pass to compute the input product one way, whatever
    the size would choose."""
    plan = fastlstm._plan.forward_plan

    def forced(*shape):
        return dataclasses.replace(plan(*shape), hoist=request.param)

    monkeypatch.setattr(fastlstm._plan, "forward_plan", forced)
    return request.param


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("batch, timesteps, input_dim, units", [(5, 9, 7, 6), (33, 12, 40, 70)])
@pytest.mark.parametrize("go_backwards", [False, True])
@pytest.mark.parametrize("threads", [1, 2])
def test_both_input_products_match_reference(kernel_build, restore_num_threads, input_product,
                                             dtype, batch, timesteps, input_dim, units,
                                             go_backwards, threads):
    fastlstm.set_num_threads(threads)
    forward, backward = make_problem(batch, timesteps, input_dim, units, dtype,
                                     mask="random", dropout=True)
    fast = assert_matches_reference(forward, backward, dtype, go_backwards=go_backwards)
    outputs, h, c, _ = fastlstm.lstm_forward(**forward, go_backwards=go_backwards,
                                             return_cache=False)
    for name, got, want in zip(("outputs", "h", "c"), (outputs, h, c), fast):
        np.testing.assert_array_equal(got, want, err_msg=f"inference {name}")


def test_small_layers_compute_the_input_product_per_step():
    """The choice the kernels make: per step where a step's input product
    is small, so inference keeps no (B, T, 4H) gate buffer; hoisted for
    larger ones."""
    hoist = fastlstm._plan.hoist_input_product
    assert not hoist(16, 32, 64)      # the benchmark's small, 2 threads
    assert not hoist(8, 64, 128)      # long
    assert hoist(32, 128, 256)        # medium
    assert hoist(32, 512, 512)        # large
    small = fastlstm.workspace_nbytes(32, 50, 32, 64, training=False)
    large = fastlstm.workspace_nbytes(64, 50, 512, 512, training=False)
    assert small < 32 * 50 * 4 * 64 * 4        # less than one gate buffer
    assert large > 64 * 50 * 4 * 512 * 4


# -- threads --------------------------------------------------------------------

# Results agree to rounding, not bitwise: OpenBLAS rounds a row of a product
# differently when the product has fewer rows (the last two shapes show it), and
# the threads split the batch. One thread count always gives the same bits.
THREAD_SHAPES = [(2, 3, 4, 4), (64, 10, 32, 64), (7, 20, 5, 9), (17, 300, 7, 13),
                 (31, 29, 34, 13)]


def _run_with_threads(n, forward, backward):
    fastlstm.set_num_threads(n)
    return dict(zip(RESULT_NAMES, run(forward, backward)))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("batch, timesteps, input_dim, units", THREAD_SHAPES)
def test_one_and_two_threads_agree_to_rounding(
        kernel_build, restore_num_threads, dtype, batch, timesteps, input_dim, units):
    forward, backward = make_problem(batch, timesteps, input_dim, units, dtype,
                                     mask="random", dropout=True)
    one = _run_with_threads(1, forward, backward)
    two = _run_with_threads(2, forward, backward)
    rounding = {np.float32: 1e-5, np.float64: 1e-13}[dtype]
    for name in RESULT_NAMES:
        assert_close_normwise(two[name], one[name], rounding, name)


@pytest.mark.parametrize("threads", [2, 3, 8])
def test_batch_smaller_than_thread_count(kernel_build, restore_num_threads, threads):
    forward, backward = make_problem(1, 4, 3, 5, np.float64, mask="random")
    fastlstm.set_num_threads(threads)
    assert_matches_reference(forward, backward, np.float64)


# -- memory layout, read-only and list inputs -------------------------------------

def _strided_copy(array, layout):
    """The same values as ``array`` in another memory layout."""
    if layout == "fortran":
        return np.asfortranarray(array)
    if layout == "every other":
        wide = np.zeros(array.shape[:-1] + (2 * array.shape[-1],), dtype=array.dtype)
        wide[..., ::2] = array
        return wide[..., ::2]
    if layout == "reversed":
        return array[..., ::-1].copy()[..., ::-1]
    raise ValueError(layout)


def _relayout(forward, backward, layout):
    forward = dict(forward)
    for name in ("x", "kernel", "recurrent_kernel", "bias", "mask", "recurrent_dropout_mask"):
        forward[name] = _strided_copy(forward[name], layout)
    forward["initial_state"] = [_strided_copy(s, layout) for s in forward["initial_state"]]
    backward = {name: _strided_copy(value, layout) for name, value in backward.items()}
    return forward, backward


def _snapshot(forward, backward):
    arrays = [v for v in forward.values() if isinstance(v, np.ndarray)]
    arrays += list(forward["initial_state"]) + list(backward.values())
    return [(a, a.copy()) for a in arrays]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout", ["fortran", "every other", "reversed"])
def test_non_contiguous_inputs_give_the_contiguous_result(kernel_build, dtype, layout):
    contiguous = make_problem(3, 8, 5, 6, dtype, mask="random", dropout=True)
    strided = _relayout(*contiguous, layout)
    if layout != "fortran":
        assert not strided[0]["x"].flags.c_contiguous
    assert not strided[0]["kernel"].flags.c_contiguous
    before = _snapshot(*strided)

    for name, got, want in zip(RESULT_NAMES, run(*strided), run(*contiguous)):
        np.testing.assert_array_equal(got, want, err_msg=name)
    for array, copy in before:
        np.testing.assert_array_equal(array, copy)


def test_time_reversed_view_of_x_gives_the_contiguous_result(kernel_build):
    """x[:, ::-1] is a negative-stride view; the kernels must see its values,
    in its order, not the memory behind it."""
    forward, backward = make_problem(2, 9, 3, 4, np.float64, mask="random")
    forward_view = dict(forward, x=forward["x"][:, ::-1])
    forward_copy = dict(forward, x=np.ascontiguousarray(forward["x"][:, ::-1]))
    for name, got, want in zip(RESULT_NAMES, run(forward_view, backward),
                               run(forward_copy, backward)):
        np.testing.assert_array_equal(got, want, err_msg=name)


@pytest.mark.parametrize("backend", ["fast", "reference"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_read_only_inputs_are_accepted_and_left_unchanged(kernel_build, backend, dtype):
    forward, backward = make_problem(3, 5, 4, 6, dtype, mask="random", dropout=True)
    expected = run(forward, backward, backend)
    before = _snapshot(forward, backward)
    for array, _ in before:
        array.flags.writeable = False

    for name, got, want in zip(RESULT_NAMES, run(forward, backward, backend), expected):
        np.testing.assert_array_equal(got, want, err_msg=name)
    for array, copy in before:
        np.testing.assert_array_equal(array, copy)


@pytest.mark.parametrize("backend", ["fast", "reference"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_inputs_are_not_modified_by_forward_or_backward(kernel_build, backend, dtype):
    forward, backward = make_problem(4, 6, 3, 5, dtype, mask="random", dropout=True)
    before = _snapshot(forward, backward)
    run(forward, backward, backend)
    for array, copy in before:
        np.testing.assert_array_equal(array, copy)


@pytest.mark.parametrize("dtype", DTYPES)
def test_list_inputs_give_the_array_result(kernel_build, dtype):
    """Lists (of values exactly representable in ``dtype``) are cast to the
    weights' dtype. The weights stay arrays: they set the dtype."""
    forward, backward = make_problem(2, 4, 3, 5, dtype, mask="random", dropout=True)
    as_lists = dict(forward, x=forward["x"].tolist(), mask=forward["mask"].tolist(),
                    initial_state=[s.tolist() for s in forward["initial_state"]],
                    recurrent_dropout_mask=forward["recurrent_dropout_mask"].tolist())
    backward_lists = {name: value.tolist() for name, value in backward.items()}
    for name, got, want in zip(RESULT_NAMES, run(as_lists, backward_lists),
                               run(forward, backward)):
        assert got.dtype == dtype
        np.testing.assert_array_equal(got, want, err_msg=name)


def test_list_weights_compute_in_float64(kernel_build):
    forward, backward = make_problem(2, 4, 3, 5, np.float64, dropout=True)
    as_lists = dict(forward, kernel=forward["kernel"].tolist(),
                    recurrent_kernel=forward["recurrent_kernel"].tolist(),
                    bias=forward["bias"].tolist())
    for name, got, want in zip(RESULT_NAMES, run(as_lists, backward), run(forward, backward)):
        assert got.dtype == np.float64
        np.testing.assert_array_equal(got, want, err_msg=name)


# -- non-finite and extreme values ----------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
def test_nan_in_one_sequence_stays_in_that_sequence(kernel_build, dtype):
    forward, backward = make_problem(4, 6, 3, 17, dtype)
    clean = dict(zip(RESULT_NAMES, run(forward, backward)))
    poisoned = dict(forward, x=forward["x"].copy())
    poisoned["x"][1, 3, 0] = np.nan
    got = dict(zip(RESULT_NAMES, run(poisoned, backward)))

    assert np.all(np.isnan(got["outputs"][1, 3:]))
    assert np.all(np.isnan(got["h"][1])) and np.all(np.isnan(got["c"][1]))
    np.testing.assert_array_equal(got["outputs"][1, :3], clean["outputs"][1, :3])
    others = [0, 2, 3]
    for name in ("outputs", "h", "c", "grad_x", "grad_h0", "grad_c0"):
        np.testing.assert_array_equal(got[name][others], clean[name][others], err_msg=name)
    assert np.all(np.isnan(got["grad_x"][1]))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("go_backwards", [False, True])
def test_huge_pre_activations_give_finite_results_without_warnings(kernel_build, dtype,
                                                                   go_backwards):
    """Weights scaled so that |z| reaches ~1e4: every gate saturates, yet
    nothing overflows into inf or NaN and no floating-point warning fires.

    A saturated gate passes back a gradient scaled by sigma'(z) ~ e^-|z|,
    which sigma(z) rounded to the dtype can give only to absolute precision,
    so the gradients are compared in units of the upstream gradients (O(1)).
    """
    forward, backward = make_problem(3, 7, 6, 8, dtype, mask="random", dropout=True)
    x = forward["x"].astype(np.float64)
    input_part = np.abs(x @ forward["kernel"]).max()
    forward["kernel"] = (forward["kernel"] * (8e3 / input_part)).astype(dtype)
    forward["recurrent_kernel"] = (forward["recurrent_kernel"] * 300).astype(dtype)
    forward["bias"] = (forward["bias"] * 1e3).astype(dtype)
    z_bound = (np.abs(x @ forward["kernel"]).max()
               + np.abs(forward["recurrent_kernel"]).sum(axis=0).max()
               + np.abs(forward["bias"]).max())
    assert 5e3 < z_bound < 2e4

    with warnings.catch_warnings(), np.errstate(all="raise"):
        warnings.simplefilter("error")
        fast = run(forward, backward, go_backwards=go_backwards)
    reference = run(forward, backward, "reference", dtype=np.float64, go_backwards=go_backwards)
    for name, got, want in zip(RESULT_NAMES, fast, reference):
        assert np.all(np.isfinite(got)), name
        floor = 1.0 if name.startswith("grad_") else SCALE_FLOOR
        assert_close_normwise(got, want, TOLERANCE[dtype], name, floor=floor)


# -- activations ----------------------------------------------------------------

def _consecutive_floats(dtype, centre, count=5000):
    """The ``count`` floats of ``dtype`` either side of +-centre, consecutive."""
    bits_type = np.int32 if dtype == np.float32 else np.int64
    bits = int(np.array(abs(centre), dtype=dtype).view(bits_type))
    offsets = np.arange(max(-count, -bits), count + 1)
    values = (bits + offsets).astype(bits_type).view(dtype)
    return np.concatenate([values, -values])


def _activation_grid(dtype):
    """A dense grid over [-100, 100], runs of consecutive floats where the
    float32 exp changes its reduction step or clamps, and +-inf; sorted."""
    grid = [np.linspace(-100, 100, 2_000_001).astype(dtype)]
    grid += [_consecutive_floats(dtype, centre)
             for centre in (0.0, 0.5 * np.log(2), 1.0, 8.5, 44.0, 87.0, 88.0)]
    grid.append(np.array([-np.inf, np.inf], dtype=dtype))
    return np.unique(np.concatenate(grid))


def _activations(x):
    sigmoid, tanh = np.empty_like(x), np.empty_like(x)
    _kernels.current()._activations(x, sigmoid, tanh)
    return sigmoid, tanh


def _true_sigmoid(x):
    x = x.astype(np.float64)
    with np.errstate(over="ignore"):
        return 1.0 / (1.0 + np.exp(-x))


def _ulps(got, want, dtype):
    """|got - want| in units in the last place of ``dtype`` at ``want``
    (its smallest spacing below the normal numbers)."""
    info = np.finfo(dtype)
    _, exponent = np.frexp(want)
    ulp = np.ldexp(1.0, np.maximum(exponent, info.minexp + 1) - info.nmant - 1)
    return np.abs(got.astype(np.float64) - want) / ulp


# The largest errors against float64 over every float32 in [-20, 20], in
# every build, rounded up (the performance page has them; measured with
# docs/scripts/activation_accuracy.py): sigmoid's and tanh's absolute
# error, then in ulp of the float32 result.
ACTIVATION_BOUNDS = {np.float32: (1e-7, 1.5e-7, 2.5, 3.5),
                     np.float64: (1e-15, 1e-15, None, None)}


@pytest.mark.parametrize("dtype", DTYPES)
def test_activations_are_accurate_bounded_and_monotone(kernel_build, dtype):
    x = _activation_grid(dtype)
    sigmoid, tanh = _activations(x)
    sigmoid_abs, tanh_abs, sigmoid_ulp, tanh_ulp = ACTIVATION_BOUNDS[dtype]

    np.testing.assert_allclose(sigmoid, _true_sigmoid(x), rtol=0, atol=sigmoid_abs)
    np.testing.assert_allclose(tanh, np.tanh(x.astype(np.float64)), rtol=0, atol=tanh_abs)
    assert sigmoid.min() >= 0 and sigmoid.max() <= 1
    assert tanh.min() >= -1 and tanh.max() <= 1
    assert np.all(np.diff(sigmoid) >= 0)
    if dtype == np.float64:
        assert np.all(np.diff(tanh) >= 0)
    else:
        # float32 tanh is m / (m + 2), one division: its two roundings let
        # it step back by up to 3 ulp between neighbouring floats (over
        # every float32 in [-20, 20]); a second division would buy
        # monotonicity, not accuracy.
        steps_back = np.maximum(-np.diff(tanh), 0)
        assert np.all(steps_back <= 3 * np.spacing(np.abs(tanh[1:])))
    if dtype == np.float32:
        # In ulp, so tiny results count too; also where tanh's reduction
        # changes its step (x = ln2 / 4).
        x = np.unique(np.concatenate([x, _consecutive_floats(dtype, 0.25 * np.log(2))]))
        x = x[np.abs(x) <= 20]
        sigmoid, tanh = _activations(x)
        assert _ulps(sigmoid, _true_sigmoid(x), dtype).max() <= sigmoid_ulp
        assert _ulps(tanh, np.tanh(x.astype(np.float64)), dtype).max() <= tanh_ulp


@pytest.mark.parametrize("dtype", DTYPES)
def test_activations_of_nan_are_nan(kernel_build, dtype):
    # NaN among ordinary values, so a vectorised loop meets it in a full register.
    x = np.linspace(-5, 5, 37).astype(dtype)
    x[[0, 5, 17, 36]] = np.nan
    sigmoid, tanh = _activations(x)
    nan = np.isnan(x)
    assert np.all(np.isnan(sigmoid[nan])) and np.all(np.isnan(tanh[nan]))
    assert np.all(np.isfinite(sigmoid[~nan])) and np.all(np.isfinite(tanh[~nan]))
