"""The public functional API: argument checking, dtypes, and the small contracts
of lstm_forward / lstm_backward / workspace_nbytes / LSTMGradients.

Every error check asserts the exception type and that the message names the
argument at fault, and that the arguments are unchanged after the error.
"""
import numpy as np
import pytest

import fastlstm

BATCH, TIMESTEPS, INPUT_DIM, UNITS = 2, 3, 4, 5
BACKENDS = ["fast", "reference"]


def make_arguments(dtype=np.float64, seed=0):
    rng = np.random.default_rng(seed)
    return dict(
        x=rng.standard_normal((BATCH, TIMESTEPS, INPUT_DIM)).astype(dtype),
        kernel=(0.5 * rng.standard_normal((INPUT_DIM, 4 * UNITS))).astype(dtype),
        recurrent_kernel=(0.5 * rng.standard_normal((UNITS, 4 * UNITS))).astype(dtype),
        bias=(0.3 * rng.standard_normal(4 * UNITS)).astype(dtype),
    )


def make_upstream(dtype=np.float64, seed=1):
    rng = np.random.default_rng(seed)
    return dict(
        grad_outputs=rng.standard_normal((BATCH, TIMESTEPS, UNITS)).astype(dtype),
        grad_h=rng.standard_normal((BATCH, UNITS)).astype(dtype),
        grad_c=rng.standard_normal((BATCH, UNITS)).astype(dtype),
    )


def _arrays_in(value):
    if isinstance(value, np.ndarray):
        return [value]
    if isinstance(value, (list, tuple)):
        return [a for item in value for a in _arrays_in(item)]
    return []


def assert_rejected(error, match, **overrides):
    """lstm_forward with ``overrides`` raises ``error`` matching ``match`` and
    leaves every array it was given as it was."""
    arguments = dict(make_arguments(), **overrides)
    arrays = [a for value in arguments.values() for a in _arrays_in(value)]
    copies = [a.copy() for a in arrays]
    with pytest.raises(error, match=match):
        fastlstm.lstm_forward(**arguments)
    for array, copy in zip(arrays, copies):
        np.testing.assert_array_equal(array, copy)


# -- x ----------------------------------------------------------------------------

@pytest.mark.parametrize("shape", [(TIMESTEPS, INPUT_DIM), (1, BATCH, TIMESTEPS, INPUT_DIM)])
def test_x_must_have_three_dimensions(shape):
    assert_rejected(ValueError, r"\bx must have shape \(batch, timesteps, features\)",
                    x=np.ones(shape))


@pytest.mark.parametrize("x", [
    np.full((BATCH, TIMESTEPS, INPUT_DIM), 1.0, dtype=object),
    np.full((BATCH, TIMESTEPS, INPUT_DIM), 1 + 2j),
    np.full((BATCH, TIMESTEPS, INPUT_DIM), "1.0"),
], ids=["object", "complex", "string"])
def test_x_of_non_real_dtype_is_a_type_error(x):
    assert_rejected(TypeError, r"\bx must hold real numbers", x=x)


def test_ragged_x_is_a_value_error():
    assert_rejected(ValueError, r"\bx must be a rectangular array", x=[[[1.0]], [[1.0, 2.0]]])


@pytest.mark.parametrize("shape", [(0, TIMESTEPS, INPUT_DIM), (BATCH, 0, INPUT_DIM)],
                         ids=["empty batch", "zero timesteps"])
def test_x_without_sequences_or_steps_is_a_value_error(shape):
    assert_rejected(ValueError, r"\bx must have at least one sequence, one timestep",
                    x=np.ones(shape))


def test_x_input_dim_must_match_kernel_rows():
    assert_rejected(ValueError, r"x must have 4 features \(last axis\), the kernel's rows, got 3",
                    x=np.ones((BATCH, TIMESTEPS, 3)))


# -- weights ----------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [np.int64, np.int32, np.bool_, np.float16])
def test_kernel_of_non_float_dtype_is_a_type_error(dtype):
    kernel = make_arguments()["kernel"].astype(dtype)
    assert_rejected(TypeError, r"kernel must be float32 or float64", kernel=kernel)


@pytest.mark.parametrize("name", ["recurrent_kernel", "bias"])
def test_weights_must_share_the_kernel_dtype(name):
    value = make_arguments()[name].astype(np.float32)
    assert_rejected(TypeError, rf"{name} must have the dtype of kernel \(float64\), got float32",
                    **{name: value})


@pytest.mark.parametrize("shape", [(INPUT_DIM, 4 * UNITS - 1), (INPUT_DIM, 2), (INPUT_DIM, 0),
                                   (4 * UNITS,)])
def test_kernel_columns_must_be_a_positive_multiple_of_four(shape):
    assert_rejected(ValueError, r"kernel must have shape \(input_dim, 4 \* units\)",
                    kernel=np.ones(shape))


@pytest.mark.parametrize("shape", [(UNITS + 1, 4 * UNITS), (UNITS, 4 * UNITS + 4),
                                   (4 * UNITS, UNITS), (UNITS * 4 * UNITS,)])
def test_recurrent_kernel_must_be_units_by_four_units(shape):
    assert_rejected(ValueError, r"recurrent_kernel must have shape \(5, 20\)",
                    recurrent_kernel=np.ones(shape))


@pytest.mark.parametrize("shape", [(4 * UNITS + 1,), (UNITS,), (1, 4 * UNITS), ()])
def test_bias_must_be_four_units_long(shape):
    assert_rejected(ValueError, r"bias must have shape \(20,\)", bias=np.ones(shape))


# -- initial_state, mask, dropout, flags, backend -----------------------------------

def _state(shape=(BATCH, UNITS)):
    return np.zeros(shape)


@pytest.mark.parametrize("initial_state", [
    [_state()],
    (_state(),),
    [_state(), _state(), _state()],
], ids=["list of one", "tuple of one", "list of three"])
def test_initial_state_must_be_a_pair(initial_state):
    assert_rejected(ValueError, r"initial_state must be \[h0, c0\], a list or tuple of 2 arrays",
                    initial_state=initial_state)


@pytest.mark.parametrize("initial_state", [5, np.zeros((2, BATCH, UNITS))],
                         ids=["int", "stacked array"])
def test_initial_state_that_is_not_a_list_is_a_type_error_naming_it(initial_state):
    assert_rejected(TypeError, r"initial_state must be \[h0, c0\], a list or tuple",
                    initial_state=initial_state)


@pytest.mark.parametrize("which, label", [(0, r"initial_state\[0\] \(h0\)"),
                                          (1, r"initial_state\[1\] \(c0\)")])
@pytest.mark.parametrize("shape", [(BATCH, UNITS + 1), (BATCH + 1, UNITS), (UNITS,)])
def test_initial_states_must_be_batch_by_units(which, label, shape):
    initial_state = [_state(), _state()]
    initial_state[which] = _state(shape)
    assert_rejected(ValueError, label + r" must have shape \(2, 5\)",
                    initial_state=initial_state)


def test_initial_state_entries_must_be_arrays():
    assert_rejected(TypeError, r"initial_state\[0\] \(h0\) must be an array",
                    initial_state=[None, _state()])


@pytest.mark.parametrize("shape", [(BATCH, TIMESTEPS + 1), (TIMESTEPS, BATCH), (BATCH,)])
def test_mask_must_be_batch_by_timesteps(shape):
    assert_rejected(ValueError, r"mask must have shape \(2, 3\)", mask=np.ones(shape, bool))


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_mask_of_float_dtype_is_a_type_error(dtype):
    assert_rejected(TypeError, r"mask must be boolean", mask=np.ones((BATCH, TIMESTEPS), dtype))


@pytest.mark.parametrize("dtype", [np.int64, np.uint8])
def test_mask_of_zeros_and_ones_is_the_boolean_mask(dtype):
    keep = np.array([[True, False, True], [False, True, True]])
    expected = fastlstm.lstm_forward(**dict(make_arguments(), mask=keep))
    given = fastlstm.lstm_forward(**dict(make_arguments(), mask=keep.astype(dtype)))
    for a, b in zip(expected[:3], given[:3]):
        np.testing.assert_array_equal(a, b)


def test_mask_of_other_integers_is_a_value_error():
    assert_rejected(ValueError, r"mask must hold booleans \(or 0 and 1\)",
                    mask=np.full((BATCH, TIMESTEPS), 2))


def test_ragged_mask_is_an_error_naming_mask():
    assert_rejected(ValueError, r"\bmask\b", mask=[[True, True, True], [True]])


@pytest.mark.parametrize("shape", [(BATCH, UNITS + 1), (UNITS,), (BATCH, TIMESTEPS, UNITS)])
def test_recurrent_dropout_mask_must_be_batch_by_units(shape):
    assert_rejected(ValueError, r"recurrent_dropout_mask must have shape \(2, 5\)",
                    recurrent_dropout_mask=np.ones(shape))


@pytest.mark.parametrize("value", [1, 0, None, "yes", np.array([True])])
@pytest.mark.parametrize("name", ["go_backwards", "return_cache"])
def test_flags_must_be_bools(name, value):
    assert_rejected(TypeError, rf"{name} must be True or False", **{name: value})


@pytest.mark.parametrize("backend", ["cuda", "Fast", ""])
def test_unknown_backend_is_a_value_error(backend):
    assert_rejected(ValueError, r"backend must be one of \['fast', 'reference'\]",
                    backend=backend)


@pytest.mark.parametrize("backend", [["fast"], None])
def test_backend_that_is_not_a_string_is_a_value_error_naming_it(backend):
    # Not one of the names, as for every option chosen by name.
    assert_rejected(ValueError, r"backend must be one of \['fast', 'reference'\]",
                    backend=backend)


# -- lstm_backward ----------------------------------------------------------------

def test_backward_without_cache_is_a_runtime_error():
    with pytest.raises(RuntimeError, match=r"lstm_backward needs the cache .*return_cache=True"):
        fastlstm.lstm_backward(None, **make_upstream())


@pytest.mark.parametrize("cache", [{}, "cache", object()])
def test_backward_with_a_foreign_cache_is_a_type_error(cache):
    with pytest.raises(TypeError, match=r"cache must be the LSTMCache"):
        fastlstm.lstm_backward(cache, **make_upstream())


@pytest.mark.parametrize("backend", BACKENDS)
def test_backward_twice_on_one_cache_is_a_runtime_error(backend):
    cache = fastlstm.lstm_forward(**make_arguments(), backend=backend)[3]
    fastlstm.lstm_backward(cache, **make_upstream())
    assert "used" in repr(cache)
    with pytest.raises(RuntimeError, match=r"this cache was already used"):
        fastlstm.lstm_backward(cache, **make_upstream())


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name, shape", [
    ("grad_outputs", (BATCH, TIMESTEPS, UNITS + 1)),
    ("grad_outputs", (BATCH, TIMESTEPS + 1, UNITS)),
    ("grad_outputs", (BATCH, UNITS)),
    ("grad_h", (BATCH, UNITS + 1)),
    ("grad_c", (BATCH + 1, UNITS)),
])
def test_backward_with_a_wrong_shape_is_a_value_error_and_keeps_the_cache(backend, name, shape):
    arguments = make_arguments()
    upstream = make_upstream()
    cache = fastlstm.lstm_forward(**arguments, backend=backend)[3]
    expected = fastlstm.lstm_backward(fastlstm.lstm_forward(**arguments, backend=backend)[3],
                                      **upstream)
    wrong = np.ones(shape)

    with pytest.raises(ValueError, match=rf"{name} must have shape"):
        fastlstm.lstm_backward(cache, **dict(upstream, **{name: wrong}))

    np.testing.assert_array_equal(wrong, 1)
    # The refused call did not use up the cache.
    for got, want in zip(fastlstm.lstm_backward(cache, **upstream), expected):
        np.testing.assert_array_equal(got, want)


def test_backward_with_complex_gradient_is_a_type_error():
    cache = fastlstm.lstm_forward(**make_arguments())[3]
    upstream = dict(make_upstream(), grad_c=np.ones((BATCH, UNITS), complex))
    with pytest.raises(TypeError, match=r"grad_c must hold real numbers"):
        fastlstm.lstm_backward(cache, **upstream)


def test_inference_result_has_no_cache():
    outputs, h, c, cache = fastlstm.lstm_forward(**make_arguments(), return_cache=False)
    assert cache is None
    assert outputs.shape == (BATCH, TIMESTEPS, UNITS)
    assert h.shape == c.shape == (BATCH, UNITS)


# -- dtypes and casting -----------------------------------------------------------

@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("x_dtype", [np.int8, np.int64, np.uint16, np.bool_])
def test_int_and_bool_x_give_the_result_of_the_float_array(backend, dtype, x_dtype):
    arguments = make_arguments(dtype)
    rng = np.random.default_rng(3)
    x = (rng.integers(0, 2, size=arguments["x"].shape) if x_dtype == np.bool_
         else rng.integers(-3, 4, size=arguments["x"].shape)).astype(x_dtype)
    upstream = make_upstream(dtype)

    *forward_int, cache_int = fastlstm.lstm_forward(**dict(arguments, x=x), backend=backend)
    *forward_float, cache_float = fastlstm.lstm_forward(**dict(arguments, x=x.astype(dtype)),
                                                        backend=backend)
    grads_int = fastlstm.lstm_backward(cache_int, **upstream)
    grads_float = fastlstm.lstm_backward(cache_float, **upstream)

    for got, want in zip(forward_int + list(grads_int), forward_float + list(grads_float)):
        assert got.dtype == dtype
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_results_have_the_weights_dtype(backend, dtype):
    arguments = make_arguments(dtype)
    # x and the optional arrays in the other float dtype: the weights decide.
    other = np.float64 if dtype == np.float32 else np.float32
    arguments["x"] = arguments["x"].astype(other)
    state = [np.zeros((BATCH, UNITS), other), np.ones((BATCH, UNITS), other)]
    outputs, h, c, cache = fastlstm.lstm_forward(
        **arguments, initial_state=state, recurrent_dropout_mask=np.ones((BATCH, UNITS), other),
        backend=backend)
    grads = fastlstm.lstm_backward(cache, **make_upstream(other))
    for name, value in zip(("outputs", "h", "c") + grads._fields, (outputs, h, c) + tuple(grads)):
        assert value.dtype == dtype, name


# -- bias=None, LSTMGradients, workspace_nbytes -------------------------------------

def test_lstm_gradients_fields():
    assert fastlstm.LSTMGradients._fields == ("x", "kernel", "recurrent_kernel", "bias",
                                              "h0", "c0")


@pytest.mark.parametrize("backend", BACKENDS)
def test_no_bias_is_a_zero_bias_without_its_gradient(backend):
    arguments = make_arguments()
    upstream = make_upstream()
    *forward_none, cache_none = fastlstm.lstm_forward(**dict(arguments, bias=None),
                                                      backend=backend)
    *forward_zero, cache_zero = fastlstm.lstm_forward(
        **dict(arguments, bias=np.zeros(4 * UNITS)), backend=backend)
    grads_none = fastlstm.lstm_backward(cache_none, **upstream)
    grads_zero = fastlstm.lstm_backward(cache_zero, **upstream)

    assert grads_none.bias is None
    assert grads_zero.bias.shape == (4 * UNITS,) and np.any(grads_zero.bias != 0)
    for got, want in zip(forward_none, forward_zero):
        np.testing.assert_array_equal(got, want)
    for name in ("x", "kernel", "recurrent_kernel", "h0", "c0"):
        np.testing.assert_array_equal(getattr(grads_none, name), getattr(grads_zero, name),
                                      err_msg=name)


def test_gradients_of_initial_state_are_returned_without_one():
    cache = fastlstm.lstm_forward(**make_arguments())[3]
    grads = fastlstm.lstm_backward(cache, **make_upstream())
    assert grads.h0.shape == grads.c0.shape == (BATCH, UNITS)
    assert np.all(np.isfinite(grads.h0)) and np.any(grads.h0 != 0)


def test_workspace_nbytes_is_a_positive_int_that_grows_with_timesteps():
    sizes = [fastlstm.workspace_nbytes(8, timesteps, 16, 32) for timesteps in (1, 2, 10, 100)]
    assert all(type(size) is int and size > 0 for size in sizes)
    assert sizes == sorted(set(sizes))


def test_workspace_nbytes_scales_with_the_itemsize():
    single = fastlstm.workspace_nbytes(8, 10, 16, 32, dtype="float32")
    double = fastlstm.workspace_nbytes(8, 10, 16, 32, dtype="float64")
    assert double == 2 * single


def test_inference_needs_less_workspace_than_training():
    training = fastlstm.workspace_nbytes(8, 50, 16, 32, training=True)
    inference = fastlstm.workspace_nbytes(8, 50, 16, 32, training=False)
    assert 0 < inference < training
