"""Tests of the pure-NumPy oracle, fastlstm.reference.

Gradients are checked against central finite differences of the whole
sequence layer; forward values against a hand computation on Python floats.
"""
import math

import numpy as np
import pytest

from fastlstm import reference

GRADIENT_NAMES = ("x", "kernel", "recurrent_kernel", "bias", "h0", "c0")


def random_arrays(batch, steps, input_dim, units, *, seed=0, dtype=np.float64):
    """Inputs, weights and initial states small enough that no gate saturates."""
    rng = np.random.default_rng(seed)
    return {
        "x": rng.normal(size=(batch, steps, input_dim)).astype(dtype),
        "kernel": (0.5 * rng.normal(size=(input_dim, 4 * units))).astype(dtype),
        "recurrent_kernel": (0.5 * rng.normal(size=(units, 4 * units))).astype(dtype),
        "bias": (0.3 * rng.normal(size=4 * units)).astype(dtype),
        "h0": (0.5 * rng.normal(size=(batch, units))).astype(dtype),
        "c0": rng.normal(size=(batch, units)).astype(dtype),
    }


def random_upstream(batch, steps, units, *, seed=1, dtype=np.float64):
    """The R1, R2, R3 of loss = sum(outputs*R1) + sum(h_N*R2) + sum(c_N*R3)."""
    rng = np.random.default_rng(seed)
    return (rng.normal(size=(batch, steps, units)).astype(dtype),
            rng.normal(size=(batch, units)).astype(dtype),
            rng.normal(size=(batch, units)).astype(dtype))


def forward(arrays, *, use_bias=True, use_initial_state=True, **kwargs):
    initial_state = [arrays["h0"], arrays["c0"]] if use_initial_state else None
    return reference.lstm_forward(
        arrays["x"], arrays["kernel"], arrays["recurrent_kernel"],
        arrays["bias"] if use_bias else None, initial_state=initial_state, **kwargs)


def loss(arrays, upstream, **kwargs):
    outputs, h_last, c_last, _ = forward(arrays, return_cache=False, **kwargs)
    grad_outputs, grad_h, grad_c = upstream
    return np.sum(outputs * grad_outputs) + np.sum(h_last * grad_h) + np.sum(c_last * grad_c)


def analytic_gradients(arrays, upstream, **kwargs):
    cache = forward(arrays, **kwargs)[3]
    grads = reference.lstm_backward(cache, *upstream)
    return dict(zip(GRADIENT_NAMES, grads))


def numerical_gradient(arrays, name, upstream, eps=1e-5, **kwargs):
    """Central differences of `loss` with respect to arrays[name]."""
    grad = np.zeros_like(arrays[name])
    for index in np.ndindex(grad.shape):
        perturbed = dict(arrays)
        values = []
        for step in (eps, -eps):
            perturbed[name] = arrays[name].copy()
            perturbed[name][index] += step
            values.append(loss(perturbed, upstream, **kwargs))
        grad[index] = (values[0] - values[1]) / (2 * eps)
    return grad


def _mask_with_rows(batch, steps, rows):
    mask = np.ones((batch, steps), dtype=bool)
    for row, values in rows.items():
        mask[row] = values
    return mask


GRADIENT_CASES = [
    pytest.param(dict(shape=(3, 4, 3, 2)), id="plain"),
    pytest.param(dict(shape=(3, 4, 3, 2), use_initial_state=False), id="no_initial_state"),
    pytest.param(dict(shape=(3, 5, 2, 3), mask="random"), id="random_mask"),
    pytest.param(dict(shape=(3, 5, 2, 2), use_initial_state=False, mask="random"),
                 id="random_mask_no_initial_state"),
    pytest.param(dict(shape=(3, 5, 2, 2), mask={1: [1, 1, 0, 0, 0]}), id="row_masked_from_middle"),
    pytest.param(dict(shape=(3, 4, 2, 2), mask={0: [0, 0, 0, 0]}), id="fully_masked_row"),
    pytest.param(dict(shape=(3, 4, 2, 2), mask={2: [0, 0, 1, 1]}),
                 id="row_masked_at_first_steps_with_initial_state"),
    pytest.param(dict(shape=(3, 4, 3, 2), go_backwards=True), id="go_backwards"),
    pytest.param(dict(shape=(3, 5, 2, 2), go_backwards=True, mask="random"),
                 id="go_backwards_random_mask"),
    pytest.param(dict(shape=(2, 5, 2, 2), go_backwards=True, mask={0: [1, 1, 1, 0, 0]}),
                 id="go_backwards_right_padded"),
    pytest.param(dict(shape=(3, 4, 2, 3), dropout=True), id="recurrent_dropout"),
    pytest.param(dict(shape=(3, 5, 2, 2), dropout=True, mask="random", go_backwards=True),
                 id="recurrent_dropout_mask_go_backwards"),
    pytest.param(dict(shape=(3, 4, 3, 2), use_bias=False), id="no_bias"),
    pytest.param(dict(shape=(1, 4, 3, 2), mask={0: [1, 0, 1, 0]}), id="batch_1"),
    pytest.param(dict(shape=(3, 1, 3, 2), mask={1: [0]}), id="steps_1"),
    pytest.param(dict(shape=(3, 4, 3, 1), mask="random"), id="units_1"),
    pytest.param(dict(shape=(3, 4, 1, 2)), id="input_dim_1"),
    pytest.param(dict(shape=(1, 1, 1, 1)), id="all_sizes_1"),
    pytest.param(dict(shape=(3, 4, 3, 2), activation="sigmoid"), id="activation_sigmoid"),
    pytest.param(dict(shape=(3, 4, 3, 2), activation="hard_sigmoid", mask="random"),
                 id="activation_hard_sigmoid"),
    pytest.param(dict(shape=(3, 4, 3, 2), recurrent_activation="hard_sigmoid"),
                 id="recurrent_activation_hard_sigmoid"),
    pytest.param(dict(shape=(3, 4, 3, 2), activation="sigmoid", recurrent_activation="tanh",
                      go_backwards=True), id="activations_swapped"),
]


@pytest.mark.parametrize("case", GRADIENT_CASES)
def test_gradients_match_finite_differences(case):
    batch, steps, input_dim, units = case["shape"]
    arrays = random_arrays(batch, steps, input_dim, units, seed=sum(case["shape"]))
    upstream = random_upstream(batch, steps, units)
    kwargs = {
        "use_bias": case.get("use_bias", True),
        "use_initial_state": case.get("use_initial_state", True),
        "go_backwards": case.get("go_backwards", False),
        "activation": case.get("activation", "tanh"),
        "recurrent_activation": case.get("recurrent_activation", "sigmoid"),
    }
    mask = case.get("mask")
    if mask == "random":
        rng = np.random.default_rng(7)
        kwargs["mask"] = rng.random((batch, steps)) < 0.6
    elif mask is not None:
        kwargs["mask"] = _mask_with_rows(batch, steps, mask)
    if case.get("dropout"):
        rng = np.random.default_rng(8)
        kwargs["recurrent_dropout_mask"] = (rng.random((batch, units)) < 0.7) / 0.7
    if not kwargs["use_initial_state"]:
        # The derivative at h0 = c0 = 0 is what dh0, dc0 report when no state is given.
        arrays["h0"] = np.zeros((batch, units))
        arrays["c0"] = np.zeros((batch, units))

    grads = analytic_gradients(arrays, upstream, **kwargs)

    differentiable = dict(kwargs, use_initial_state=True)
    for name in GRADIENT_NAMES:
        if name == "bias" and not kwargs["use_bias"]:
            assert grads["bias"] is None
            continue
        expected = numerical_gradient(arrays, name, upstream, **differentiable)
        assert grads[name].shape == arrays[name].shape
        np.testing.assert_allclose(grads[name], expected, rtol=1e-6, atol=1e-8, err_msg=name)


# Hand computation on Python floats: kernel and recurrent kernel constant, one
# bias value per gate so that a permuted gate order changes the result.
KERNEL_VALUE = 0.5
RECURRENT_VALUE = 0.25
GATE_BIAS = {"i": 0.1, "f": 1.0, "c": -0.2, "o": 0.3}
H0 = [0.1, -0.3]
C0 = [0.2, -0.5]
X_SEQUENCE = [1.0, -2.0]


def sigmoid(value):
    return 1.0 / (1.0 + math.exp(-value))


def hand_step(x_t, h, c):
    """One LSTM step with 1 input and 2 units under the constant weights above."""
    # Every column of the kernels is constant, so all units share one z per gate.
    shared = KERNEL_VALUE * x_t + RECURRENT_VALUE * (h[0] + h[1])
    i = sigmoid(shared + GATE_BIAS["i"])
    f = sigmoid(shared + GATE_BIAS["f"])
    g = math.tanh(shared + GATE_BIAS["c"])
    o = sigmoid(shared + GATE_BIAS["o"])
    c_new = [f * c[0] + i * g, f * c[1] + i * g]
    h_new = [o * math.tanh(c_new[0]), o * math.tanh(c_new[1])]
    return h_new, c_new


def golden_arrays(batch):
    units = 2
    return dict(
        x=np.array([[[X_SEQUENCE[0]], [X_SEQUENCE[1]]]] * batch),
        kernel=np.full((1, 4 * units), KERNEL_VALUE),
        recurrent_kernel=np.full((units, 4 * units), RECURRENT_VALUE),
        bias=np.repeat([GATE_BIAS[gate] for gate in "ifco"], units),
        initial_state=[np.array([H0] * batch), np.array([C0] * batch)],
    )


def test_two_steps_match_hand_computation():
    h1, c1 = hand_step(X_SEQUENCE[0], H0, C0)
    h2, c2 = hand_step(X_SEQUENCE[1], h1, c1)

    outputs, h_last, c_last, _ = reference.lstm_forward(**golden_arrays(batch=1))

    np.testing.assert_allclose(outputs, [[h1, h2]], rtol=1e-14)
    np.testing.assert_allclose(h_last, [h2], rtol=1e-14)
    np.testing.assert_allclose(c_last, [c2], rtol=1e-14)


def test_masked_steps_match_hand_computation():
    h1, c1 = hand_step(X_SEQUENCE[0], H0, C0)
    h2_after_skip, c2_after_skip = hand_step(X_SEQUENCE[1], H0, C0)
    mask = np.array([[True, False], [False, True], [False, False]])

    outputs, h_last, c_last, _ = reference.lstm_forward(**golden_arrays(batch=3), mask=mask)

    # Second step masked: state carried, output repeated.
    np.testing.assert_allclose(outputs[0], [h1, h1], rtol=1e-14)
    np.testing.assert_allclose(h_last[0], h1, rtol=1e-14)
    np.testing.assert_allclose(c_last[0], c1, rtol=1e-14)
    # First step masked: zeros out (not h0), h0 and c0 carried into step two.
    np.testing.assert_allclose(outputs[1], [[0.0, 0.0], h2_after_skip], rtol=1e-14)
    np.testing.assert_allclose(h_last[1], h2_after_skip, rtol=1e-14)
    np.testing.assert_allclose(c_last[1], c2_after_skip, rtol=1e-14)
    # Every step masked: zero outputs, the initial state comes back.
    np.testing.assert_array_equal(outputs[2], np.zeros((2, 2)))
    np.testing.assert_array_equal(h_last[2], H0)
    np.testing.assert_array_equal(c_last[2], C0)


def test_go_backwards_matches_hand_computation():
    h1, c1 = hand_step(X_SEQUENCE[1], H0, C0)
    h2, c2 = hand_step(X_SEQUENCE[0], h1, c1)
    mask = np.array([[True, True], [True, False]])

    outputs, h_last, c_last, _ = reference.lstm_forward(
        **golden_arrays(batch=2), mask=mask, go_backwards=True)

    # Outputs come in processing order: the last input step first.
    np.testing.assert_allclose(outputs[0], [h1, h2], rtol=1e-14)
    np.testing.assert_allclose(h_last[0], h2, rtol=1e-14)
    np.testing.assert_allclose(c_last[0], c2, rtol=1e-14)
    # The mask is reversed with the sequence: the masked input step 1 is processed first.
    h_only, c_only = hand_step(X_SEQUENCE[0], H0, C0)
    np.testing.assert_allclose(outputs[1], [[0.0, 0.0], h_only], rtol=1e-14)
    np.testing.assert_allclose(h_last[1], h_only, rtol=1e-14)
    np.testing.assert_allclose(c_last[1], c_only, rtol=1e-14)


def test_single_step_bias_gradient_matches_hand_computation():
    # From zero states: c = i*g, h = o*tanh(c), so dh/dz = [
    #   o*(1-tanh(c)^2)*g*i*(1-i), 0, o*(1-tanh(c)^2)*i*(1-g^2), tanh(c)*o*(1-o)].
    x_t, kernel_value, gate_bias = 0.7, -0.4, {"i": 0.2, "f": -0.1, "c": 0.5, "o": -0.3}
    i = sigmoid(kernel_value * x_t + gate_bias["i"])
    g = math.tanh(kernel_value * x_t + gate_bias["c"])
    o = sigmoid(kernel_value * x_t + gate_bias["o"])
    tanh_c = math.tanh(i * g)
    expected = [o * (1 - tanh_c ** 2) * g * i * (1 - i), 0.0,
                o * (1 - tanh_c ** 2) * i * (1 - g ** 2), tanh_c * o * (1 - o)]

    cache = reference.lstm_forward(
        np.array([[[x_t]]]), np.full((1, 4), kernel_value), np.full((1, 4), 0.9),
        np.array([gate_bias[gate] for gate in "ifco"]))[3]
    dbias = reference.lstm_backward(cache, grad_h=np.ones((1, 1)))[3]

    np.testing.assert_allclose(dbias, expected, rtol=1e-14, atol=1e-300)


@pytest.mark.parametrize("go_backwards", [False, True])
def test_go_backwards_equals_forward_on_reversed_sequence(go_backwards):
    arrays = random_arrays(3, 5, 2, 3)
    mask = np.random.default_rng(3).random((3, 5)) < 0.6
    upstream = random_upstream(3, 5, 3)
    reversed_arrays = dict(arrays, x=arrays["x"][:, ::-1])

    outputs, h_last, c_last, cache = forward(arrays, mask=mask, go_backwards=True)
    expected = forward(reversed_arrays, mask=mask[:, ::-1])

    np.testing.assert_allclose(outputs, expected[0], rtol=1e-14)
    np.testing.assert_allclose(h_last, expected[1], rtol=1e-14)
    np.testing.assert_allclose(c_last, expected[2], rtol=1e-14)
    grads = reference.lstm_backward(cache, *upstream)
    expected_grads = reference.lstm_backward(expected[3], *upstream)
    np.testing.assert_allclose(grads[0], expected_grads[0][:, ::-1], rtol=1e-14)
    for grad, expected_grad in zip(grads[1:], expected_grads[1:]):
        np.testing.assert_allclose(grad, expected_grad, rtol=1e-12, atol=1e-15)


def test_fully_masked_row_passes_gradients_of_state_to_initial_state():
    arrays = random_arrays(2, 4, 3, 2)
    mask = _mask_with_rows(2, 4, {0: [0, 0, 0, 0]})
    grad_outputs, grad_h, grad_c = random_upstream(2, 4, 2)

    cache = forward(arrays, mask=mask)[3]
    dx, _, _, _, dh0, dc0 = reference.lstm_backward(cache, grad_outputs, grad_h, grad_c)

    np.testing.assert_array_equal(dx[0], 0.0)
    np.testing.assert_array_equal(dh0[0], grad_h[0])
    np.testing.assert_array_equal(dc0[0], grad_c[0])


def test_repeated_output_gradient_flows_to_the_output_it_repeats():
    arrays = random_arrays(1, 4, 2, 2)
    mask = np.array([[True, True, False, False]])
    cache = forward(arrays, mask=mask)[3]
    last_output_only = np.zeros((1, 4, 2))
    last_output_only[0, 3] = [1.0, -2.0]
    repeated_output_only = np.zeros((1, 4, 2))
    repeated_output_only[0, 1] = [1.0, -2.0]

    grads = reference.lstm_backward(cache, last_output_only)
    expected = reference.lstm_backward(cache, repeated_output_only)

    for grad, expected_grad in zip(grads, expected):
        np.testing.assert_array_equal(grad, expected_grad)


def test_recurrent_dropout_scales_only_the_recurrent_product():
    arrays = random_arrays(3, 4, 2, 3)
    scaled_kernel = dict(arrays, recurrent_kernel=2.0 * arrays["recurrent_kernel"])
    zero_kernel = dict(arrays, recurrent_kernel=np.zeros_like(arrays["recurrent_kernel"]))

    doubled = forward(arrays, recurrent_dropout_mask=np.full((3, 3), 2.0), return_cache=False)
    dropped = forward(arrays, recurrent_dropout_mask=np.zeros((3, 3)), return_cache=False)

    for got, expected in zip(doubled[:3], forward(scaled_kernel)[:3]):
        np.testing.assert_allclose(got, expected, rtol=1e-14)
    for got, expected in zip(dropped[:3], forward(zero_kernel)[:3]):
        np.testing.assert_allclose(got, expected, rtol=1e-14)


def test_recurrent_dropout_mask_of_ones_changes_nothing():
    arrays = random_arrays(3, 4, 2, 3)
    upstream = random_upstream(3, 4, 3)
    with_ones = forward(arrays, recurrent_dropout_mask=np.ones((3, 3)))
    without = forward(arrays)

    for got, expected in zip(with_ones[:3], without[:3]):
        np.testing.assert_array_equal(got, expected)
    grads = reference.lstm_backward(with_ones[3], *upstream)
    for got, expected in zip(grads, reference.lstm_backward(without[3], *upstream)):
        np.testing.assert_array_equal(got, expected)


def test_no_bias_equals_zero_bias_and_returns_no_bias_gradient():
    arrays = random_arrays(2, 3, 2, 2)
    upstream = random_upstream(2, 3, 2)
    no_bias = forward(arrays, use_bias=False)
    zero_bias = forward(dict(arrays, bias=np.zeros(8)))

    for got, expected in zip(no_bias[:3], zero_bias[:3]):
        np.testing.assert_array_equal(got, expected)
    grads = reference.lstm_backward(no_bias[3], *upstream)
    expected = reference.lstm_backward(zero_bias[3], *upstream)
    assert grads[3] is None
    for index in (0, 1, 2, 4, 5):
        np.testing.assert_array_equal(grads[index], expected[index])


def test_initial_state_none_equals_zero_state():
    arrays = random_arrays(2, 3, 2, 2)
    upstream = random_upstream(2, 3, 2)
    zeros = dict(arrays, h0=np.zeros((2, 2)), c0=np.zeros((2, 2)))
    without_state = forward(arrays, use_initial_state=False)
    zero_state = forward(zeros)

    for got, expected in zip(without_state[:3], zero_state[:3]):
        np.testing.assert_array_equal(got, expected)
    grads = reference.lstm_backward(without_state[3], *upstream)
    for got, expected in zip(grads, reference.lstm_backward(zero_state[3], *upstream)):
        np.testing.assert_array_equal(got, expected)


def test_missing_upstream_gradients_count_as_zero():
    arrays = random_arrays(2, 3, 2, 2)
    grad_outputs, grad_h, grad_c = random_upstream(2, 3, 2)
    cache = forward(arrays, mask=_mask_with_rows(2, 3, {1: [0, 1, 0]}))[3]

    cases = [
        ((None, grad_h, grad_c), (np.zeros_like(grad_outputs), grad_h, grad_c)),
        ((grad_outputs, None, grad_c), (grad_outputs, np.zeros_like(grad_h), grad_c)),
        ((grad_outputs, grad_h, None), (grad_outputs, grad_h, np.zeros_like(grad_c))),
    ]
    for given, explicit in cases:
        for got, expected in zip(reference.lstm_backward(cache, *given),
                                 reference.lstm_backward(cache, *explicit)):
            np.testing.assert_array_equal(got, expected)
    no_gradient = reference.lstm_backward(cache)
    for grad in no_gradient:
        np.testing.assert_array_equal(grad, 0.0)


@pytest.mark.parametrize("go_backwards", [False, True])
def test_float32_computes_in_float32_close_to_float64(go_backwards):
    batch, steps, input_dim, units = 3, 5, 4, 3
    rng = np.random.default_rng(5)
    kwargs = dict(mask=rng.random((batch, steps)) < 0.7, go_backwards=go_backwards)
    dropout = ((rng.random((batch, units)) < 0.8) / 0.8)

    results = {}
    for dtype in (np.float32, np.float64):
        arrays = random_arrays(batch, steps, input_dim, units, dtype=dtype)
        upstream = random_upstream(batch, steps, units, dtype=dtype)
        outputs, h_last, c_last, cache = forward(
            arrays, recurrent_dropout_mask=dropout.astype(dtype), **kwargs)
        results[dtype] = (outputs, h_last, c_last) + reference.lstm_backward(cache, *upstream)

    for low, high in zip(results[np.float32], results[np.float64]):
        assert low.dtype == np.float32
        np.testing.assert_allclose(low, high, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("go_backwards", [False, True])
def test_inputs_are_not_modified(go_backwards):
    batch, steps, units = 3, 4, 2
    arrays = random_arrays(batch, steps, 3, units)
    rng = np.random.default_rng(4)
    mask = rng.random((batch, steps)) < 0.6
    mask[0] = False
    dropout = (rng.random((batch, units)) < 0.7) / 0.7
    upstream = random_upstream(batch, steps, units)
    given = dict(arrays, mask=mask, dropout=dropout, grad_outputs=upstream[0],
                 grad_h=upstream[1], grad_c=upstream[2])
    originals = {name: value.copy() for name, value in given.items()}
    for value in given.values():
        value.flags.writeable = False

    outputs, h_last, c_last, cache = forward(
        arrays, mask=mask, recurrent_dropout_mask=dropout, go_backwards=go_backwards)
    grads = reference.lstm_backward(cache, *upstream)

    for name, value in given.items():
        np.testing.assert_array_equal(value, originals[name], err_msg=name)
    # The fully masked row returns h0 and c0 unchanged: as copies, not aliases.
    for result in (outputs, h_last, c_last, *grads):
        for value in given.values():
            assert not np.shares_memory(result, value)


def test_zero_steps_return_copies_of_the_states_and_their_gradients():
    arrays = random_arrays(2, 0, 3, 2)
    grad_outputs, grad_h, grad_c = random_upstream(2, 0, 2)

    outputs, h_last, c_last, cache = forward(arrays)
    dx, dkernel, drecurrent_kernel, dbias, dh0, dc0 = reference.lstm_backward(
        cache, grad_outputs, grad_h, grad_c)

    assert outputs.shape == (2, 0, 2) and dx.shape == (2, 0, 3)
    for result, given in ((h_last, arrays["h0"]), (c_last, arrays["c0"]),
                          (dh0, grad_h), (dc0, grad_c)):
        np.testing.assert_array_equal(result, given)
        assert not np.shares_memory(result, given)
    for grad in (dkernel, drecurrent_kernel, dbias):
        np.testing.assert_array_equal(grad, 0.0)


def test_return_cache_false_returns_no_cache_and_the_same_values():
    arrays = random_arrays(2, 3, 2, 2)
    mask = _mask_with_rows(2, 3, {0: [1, 0, 1]})

    without_cache = forward(arrays, mask=mask, return_cache=False)
    with_cache = forward(arrays, mask=mask)

    assert without_cache[3] is None
    assert isinstance(with_cache[3], reference.LSTMCache)
    for got, expected in zip(without_cache[:3], with_cache[:3]):
        np.testing.assert_array_equal(got, expected)


def test_hard_sigmoid_is_keras_3_definition_and_keeps_nan():
    z = np.array([-4.0, -3.0, -1.5, 0.0, 1.5, 3.0, 4.0, np.nan])
    function, derivative = reference.ACTIVATIONS["hard_sigmoid"]
    expected = [0.0, 0.0, 0.25, 0.5, 0.75, 1.0, 1.0, np.nan]
    np.testing.assert_array_equal(function(z), expected)
    np.testing.assert_array_equal(derivative(function(z))[1:6], [0.0, 1 / 6, 1 / 6, 1 / 6, 0.0])
