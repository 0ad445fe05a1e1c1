"""Tests of fastlstm.layers.LSTM and no_grad.

Gradients are checked against central finite differences of the whole layer
call (float64); forward values against hand computations on Python floats
with constant weights, where every unit of a layer carries the same value.
"""
import copy
import math
import threading

import numpy as np
import pytest

import fastlstm as fl
from fastlstm import initializers
from fastlstm.layers import LSTM, no_grad
from gradcheck import assert_gradient, inner, random_like

ACTIVATIONS = ["tanh", "sigmoid", "hard_sigmoid"]


# -- helpers -----------------------------------------------------------------

def assert_layer_gradients(layer, x, *, initial_state=None, mask=None, training=False,
                           seed=1, rtol=1e-6, atol=1e-8):
    """backward() of one call agrees with finite differences of that call.

    The loss is <outputs, upstream>. Every evaluation runs on a copy of the
    layer taken before the call, so it sees the same weights, carried states
    and random state (hence the same dropout masks).
    """
    layer.build(x.shape[-1])
    snapshot = copy.deepcopy(layer)
    x_probe = np.array(x, dtype=np.float64)
    state_probe = None if initial_state is None else [np.array(s) for s in initial_state]

    outputs = layer(x, initial_state=initial_state, mask=mask, training=training)
    upstream = random_like(outputs, np.random.default_rng(seed))
    returned = layer.backward(upstream)

    def loss():
        probe = copy.deepcopy(snapshot)
        with no_grad():
            return inner(probe(x_probe, initial_state=state_probe, mask=mask,
                               training=training), upstream)

    assert set(layer.grads) == set(layer.params)
    for name, analytic in layer.grads.items():
        assert_gradient(analytic, loss, snapshot.params[name], name, rtol=rtol, atol=atol)
    if initial_state is None:
        dx = returned
    else:
        dx, *d_states = returned
        for k, (analytic, state) in enumerate(zip(d_states, state_probe)):
            assert_gradient(analytic, loss, state, f"initial_state[{k}]", rtol=rtol, atol=atol)
    assert_gradient(dx, loss, x_probe, "x", rtol=rtol, atol=atol)
    return outputs


def small_layer(units=3, **kwargs):
    kwargs.setdefault("kernel_initializer", initializers.RandomNormal(stddev=0.5))
    kwargs.setdefault("recurrent_initializer", initializers.RandomNormal(stddev=0.5))
    kwargs.setdefault("bias_initializer", initializers.RandomNormal(stddev=0.3))
    kwargs.setdefault("seed", 0)
    return LSTM(units, dtype="float64", **kwargs)


def sample_input(batch=3, steps=4, features=2, seed=2):
    return np.random.default_rng(seed).standard_normal((batch, steps, features))


MASK = np.array([[True, True, True, True],     # full length
                 [True, True, False, False],   # right-padded
                 [False, True, False, True]])  # gaps, first step masked


def sigmoid(z):
    return 1.0 / (1.0 + math.exp(-z))


def hard_sigmoid(z):
    return min(1.0, max(0.0, z / 6.0 + 0.5))


SCALAR_ACTIVATIONS = {"tanh": math.tanh, "sigmoid": sigmoid, "hard_sigmoid": hard_sigmoid}


def by_hand(sequence, units, w, u, biases, mask=None, go_backwards=False,
            activation="tanh", recurrent_activation="sigmoid", h=0.0, c=0.0):
    """One sequence through an LSTM whose kernel entries all equal ``w`` and
    recurrent entries ``u``: every unit sees ``w * sum(x_t) + u * units * h``
    plus its gate's bias. Returns (outputs in processing order, h, c)."""
    act = SCALAR_ACTIVATIONS[activation]
    gate = SCALAR_ACTIVATIONS[recurrent_activation]
    b_i, b_f, b_c, b_o = biases
    steps = list(range(len(sequence)))
    if go_backwards:
        steps.reverse()
    outputs, output = [], 0.0
    for t in steps:
        if mask is None or mask[t]:
            z = w * sum(sequence[t]) + u * units * h
            i, f, g, o = gate(z + b_i), gate(z + b_f), act(z + b_c), gate(z + b_o)
            c = f * c + i * g
            h = o * act(c)
            output = h
        outputs.append(output)
    return outputs, h, c


def constant_layer(units, value=0.1, **kwargs):
    constant = initializers.Constant(value)
    return LSTM(units, kernel_initializer=constant, recurrent_initializer=constant,
                bias_initializer=constant, dtype="float64", **kwargs)


# -- shapes and outputs as Keras --------------------------------------------

def test_seed_notes_shapes():
    x = np.random.default_rng(0).random((32, 10, 8))
    assert LSTM(4)(x).shape == (32, 4)
    assert LSTM(4, return_sequences=True)(x).shape == (32, 10, 4)
    outputs = LSTM(4, return_sequences=True, return_state=True)(x)
    assert isinstance(outputs, list) and len(outputs) == 3
    assert [o.shape for o in outputs] == [(32, 10, 4), (32, 4), (32, 4)]
    assert all(o.dtype == np.float32 for o in outputs)


def test_return_state_without_sequences_gives_last_output_and_states():
    x = sample_input()
    y, h, c = small_layer(return_state=True)(x)
    every = small_layer(return_sequences=True)(x)
    np.testing.assert_array_equal(y, every[:, -1])
    np.testing.assert_array_equal(h, y)
    assert c.shape == h.shape


def test_go_backwards_returns_processing_order_and_last_processed_output():
    x = sample_input()
    forward = small_layer(return_sequences=True)
    backward = small_layer(return_sequences=True, go_backwards=True)
    np.testing.assert_allclose(backward(x), forward(x[:, ::-1]), rtol=1e-14)
    last = small_layer(go_backwards=True)(x)
    np.testing.assert_allclose(last, forward(x[:, ::-1])[:, -1], rtol=1e-14)


def test_golden_constant_weights_match_hand_computation():
    sequence = [[1.0, 2.0], [0.5, -1.0], [0.0, 3.0]]
    layer = constant_layer(2, return_sequences=True, return_state=True)
    y, h, c = layer(np.array([sequence]))
    # unit_forget_bias: the forget slice is 1, not 0.1 + 1, as Keras' initializer.
    expected, h_ref, c_ref = by_hand(sequence, 2, 0.1, 0.1, (0.1, 1.0, 0.1, 0.1))
    np.testing.assert_allclose(y[0], np.repeat(np.array(expected)[:, None], 2, axis=1),
                               rtol=1e-14)
    np.testing.assert_allclose(h[0], [h_ref] * 2, rtol=1e-14)
    np.testing.assert_allclose(c[0], [c_ref] * 2, rtol=1e-14)
    # Step 0 written out: z = 0.1 * (1 + 2) = 0.3 in every gate before its bias,
    # c = sigmoid(0.4) * tanh(0.4), h = sigmoid(0.4) * tanh(c).
    np.testing.assert_allclose(y[0, 0, 0], 0.1338826989, rtol=1e-9)


def test_golden_float32_default_dtype():
    sequence = [[1.0, 2.0], [0.5, -1.0]]
    constant = initializers.Constant(0.1)
    layer = LSTM(3, kernel_initializer=constant, recurrent_initializer=constant,
                 unit_forget_bias=False, bias_initializer=constant)
    y = layer(np.array([sequence]))
    assert y.dtype == np.float32
    expected, _, _ = by_hand(sequence, 3, 0.1, 0.1, (0.1,) * 4)
    np.testing.assert_allclose(y[0], [expected[-1]] * 3, rtol=1e-6)


@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("recurrent_activation", ACTIVATIONS)
def test_golden_activations(activation, recurrent_activation):
    sequence = [[4.0, 9.0], [-8.0, 1.0], [0.5, 0.5], [30.0, 2.0]]  # some gates clip
    layer = constant_layer(2, value=0.25, return_sequences=True, activation=activation,
                           recurrent_activation=recurrent_activation)
    y = layer(np.array([sequence]))
    expected, _, _ = by_hand(sequence, 2, 0.25, 0.25, (0.25, 1.0, 0.25, 0.25),
                             activation=activation, recurrent_activation=recurrent_activation)
    np.testing.assert_allclose(y[0, :, 0], expected, rtol=1e-13)


def test_golden_mask_and_go_backwards():
    sequence = [[1.0, 2.0], [0.5, -1.0], [0.0, 3.0], [2.0, 2.0]]
    mask = [True, False, True, False]
    layer = constant_layer(2, return_sequences=True, return_state=True, go_backwards=True)
    y, h, c = layer(np.array([sequence]), mask=np.array([mask]))
    expected, h_ref, c_ref = by_hand(sequence, 2, 0.1, 0.1, (0.1, 1.0, 0.1, 0.1), mask=mask,
                                     go_backwards=True)
    assert expected[0] == 0.0  # the first processed step (t = 3) is masked
    np.testing.assert_allclose(y[0, :, 1], expected, rtol=1e-14)
    np.testing.assert_allclose(h[0], [h_ref] * 2, rtol=1e-14)
    np.testing.assert_allclose(c[0], [c_ref] * 2, rtol=1e-14)


def test_masked_step_carries_state_and_repeats_output():
    x = sample_input()
    layer = small_layer(return_sequences=True, return_state=True)
    y, h, c = layer(x, mask=MASK)
    np.testing.assert_array_equal(y[1, 2], y[1, 1])
    np.testing.assert_array_equal(y[1, 3], y[1, 1])
    np.testing.assert_array_equal(y[2, 0], 0.0)
    np.testing.assert_array_equal(h[1], y[1, 1])
    # The right-padded row equals the same layer run on its two valid steps.
    _, h_short, c_short = layer(x[1:2, :2])
    np.testing.assert_allclose(h[1], h_short[0], rtol=1e-14)
    np.testing.assert_allclose(c[1], c_short[0], rtol=1e-14)


def test_one_hot_sequence():
    tokens = [4, 7, 8, 4]
    x = np.eye(10, dtype=int)[tokens][None]   # (1, 4, 10), integers cast to the dtype
    layer = constant_layer(3)
    y = layer(x)
    assert y.shape == (1, 3)
    expected, _, _ = by_hand(x[0].tolist(), 3, 0.1, 0.1, (0.1, 1.0, 0.1, 0.1))
    np.testing.assert_allclose(y[0], [expected[-1]] * 3, rtol=1e-14)
    layer(x)
    layer.backward(np.ones((1, 3)))
    unused = [k for k in range(10) if k not in tokens]
    np.testing.assert_array_equal(layer.grads["kernel"][unused], 0.0)
    assert np.all(layer.grads["kernel"][tokens] != 0.0)


# -- weights, initializers, seeds -------------------------------------------

def test_keras_default_initializers():
    layer = LSTM(5, seed=3)
    layer.build(7)
    kernel, recurrent_kernel, bias = layer.get_weights()
    assert kernel.shape == (7, 20) and recurrent_kernel.shape == (5, 20) and bias.shape == (20,)
    assert kernel.dtype == recurrent_kernel.dtype == bias.dtype == np.float32
    limit = math.sqrt(6 / (7 + 20))  # glorot_uniform
    assert np.abs(kernel).max() <= limit and np.abs(kernel).max() > 0.8 * limit
    # orthogonal (units, 4 units): orthonormal rows.
    np.testing.assert_allclose(recurrent_kernel @ recurrent_kernel.T, np.eye(5), atol=1e-6)
    np.testing.assert_array_equal(bias, np.r_[np.zeros(5), np.ones(5), np.zeros(10)])
    no_forget = LSTM(5, unit_forget_bias=False)
    no_forget.build(2)
    np.testing.assert_array_equal(no_forget.get_weights()[2], 0.0)
    assert len(LSTM(5, use_bias=False, seed=0).get_weights()) == 0
    unbiased = LSTM(5, use_bias=False)
    unbiased.build(2)
    assert [w.shape for w in unbiased.get_weights()] == [(2, 20), (5, 20)]
    assert set(unbiased.params) == {"kernel", "recurrent_kernel"}


def test_callable_initializer_is_called_with_shape_and_dtype():
    seen = []

    def initializer(shape, dtype):
        seen.append((shape, np.dtype(dtype)))
        return np.full(shape, 0.5)

    layer = LSTM(2, kernel_initializer=initializer, dtype="float64")
    layer.build(3)
    assert seen == [((3, 8), np.dtype("float64"))]
    np.testing.assert_array_equal(layer.params["kernel"], 0.5)


def test_seed_makes_weights_reproducible():
    def weights(seed):
        layer = LSTM(4, seed=seed)
        layer.build(3)
        return layer.get_weights()

    for a, b in zip(weights(0), weights(0)):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(weights(0)[0], weights(1)[0])
    for a, b in zip(weights(np.random.default_rng(5)), weights(np.random.default_rng(5))):
        np.testing.assert_array_equal(a, b)


def test_seed_makes_dropout_masks_reproducible_and_fresh_per_call():
    x = sample_input()

    def run(layer):
        return [layer(x, training=True) for _ in range(2)]

    first = run(small_layer(dropout=0.5, recurrent_dropout=0.5, seed=7))
    second = run(small_layer(dropout=0.5, recurrent_dropout=0.5, seed=7))
    for a, b in zip(first, second):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(first[0], first[1])


def test_dropout_masks_do_not_depend_on_how_weights_were_set():
    x = sample_input()
    built = small_layer(dropout=0.5, seed=7)
    built.build(2)
    loaded = small_layer(dropout=0.5, seed=7)
    loaded.set_weights(built.get_weights())
    np.testing.assert_array_equal(built(x, training=True), loaded(x, training=True))


def test_dropout_only_in_training():
    x = sample_input()
    layer = small_layer(dropout=0.5, recurrent_dropout=0.5)
    plain = small_layer()
    np.testing.assert_array_equal(layer(x), plain(x))
    assert not np.allclose(layer(x, training=True), plain(x))


def test_input_dropout_is_one_mask_per_sequence():
    # Keras: one (batch, features) mask for every step, scaled by 1 / (1 - rate).
    x = np.ones((64, 5, 3))
    layer = small_layer(dropout=0.5, return_sequences=True)
    y = layer(x, training=True)
    dx = layer.backward(np.ones_like(y))
    dropped = dx == 0.0
    assert dropped.any() and not dropped.all()
    assert np.all(dropped == dropped[:, :1, :])


def test_set_weights_before_call_builds_and_round_trips():
    rng = np.random.default_rng(0)
    weights = [rng.standard_normal((3, 8)), rng.standard_normal((2, 8)), rng.standard_normal(8)]
    layer = LSTM(2)
    layer.set_weights([w.tolist() for w in weights])  # array-likes, cast to float32
    assert layer.built and layer.input_dim == 3
    for got, expected in zip(layer.get_weights(), weights):
        assert got.dtype == np.float32
        np.testing.assert_allclose(got, expected, rtol=1e-6)
    kernel = layer.params["kernel"]
    layer.set_weights(weights)
    assert layer.params["kernel"] is kernel  # assigned in place
    copies = layer.get_weights()
    copies[0][:] = 0
    assert np.any(layer.params["kernel"] != 0)


def test_params_are_live_and_grads_overwritten():
    x = sample_input()
    layer = small_layer()
    y = layer(x)
    layer.backward(np.ones_like(y))
    first = {k: v.copy() for k, v in layer.grads.items()}
    layer.params["kernel"] -= 0.1 * layer.grads["kernel"]  # an optimizer step
    y2 = layer(x)
    assert not np.allclose(y, y2)
    layer.backward(np.ones_like(y2))
    assert not np.allclose(first["kernel"], layer.grads["kernel"])


# -- inputs ------------------------------------------------------------------

def test_array_likes_strides_and_casts_give_the_same_result():
    x = sample_input(steps=8)
    layer = small_layer(return_sequences=True)
    expected = layer(x[:, ::2])
    np.testing.assert_array_equal(layer(x[:, ::2].tolist()), expected)
    np.testing.assert_array_equal(layer(np.asfortranarray(x[:, ::2])), expected)
    np.testing.assert_array_equal(layer(np.ascontiguousarray(x[:, ::2])), expected)
    flags = layer(np.array([[[True, False]], [[False, True]]]))
    np.testing.assert_array_equal(flags, layer(np.array([[[1.0, 0.0]], [[0.0, 1.0]]])))


def test_inputs_are_never_written():
    x = sample_input()
    h0, c0 = np.ones((3, 3)), np.ones((3, 3))
    mask = MASK.copy()
    dy = np.ones((3, 4, 3))
    saved = [a.copy() for a in (x, h0, c0, mask, dy)]
    layer = small_layer(return_sequences=True, dropout=0.3, recurrent_dropout=0.3)
    y = layer(x, initial_state=[h0, c0], mask=mask, training=True)
    y[:] = 7.0
    layer.backward(dy)
    for before, after in zip(saved, (x, h0, c0, mask, dy)):
        np.testing.assert_array_equal(before, after)


def test_float64_input_to_float32_layer_computes_in_float32():
    y = LSTM(2, seed=0)(sample_input())
    assert y.dtype == np.float32


def test_nan_propagates_to_its_row_only():
    x = sample_input()
    x[1, 2, 0] = np.nan
    y = small_layer(return_sequences=True)(x)
    assert np.isnan(y[1, 2:]).all()
    assert np.isfinite(y[[0, 2]]).all() and np.isfinite(y[1, :2]).all()


# -- stateful ------------------------------------------------------------------

def test_stateful_carries_states_across_calls_and_resets():
    x = sample_input(steps=6)
    stateful = small_layer(stateful=True, return_sequences=True)
    whole = small_layer(return_sequences=True)(x)
    first = stateful(x[:, :3])
    second = stateful(x[:, 3:])
    np.testing.assert_allclose(np.concatenate([first, second], axis=1), whole, rtol=1e-13)
    h, c = stateful.states
    np.testing.assert_array_equal(h, second[:, -1])
    stateful.reset_state()
    assert stateful.states is None
    np.testing.assert_array_equal(stateful(x[:, :3]), first)


def test_stateful_refuses_another_batch_size_until_reset():
    layer = small_layer(stateful=True)
    layer(sample_input(batch=3))
    with pytest.raises(ValueError, match="batch size"):
        layer(sample_input(batch=2))
    layer.reset_state()
    assert layer(sample_input(batch=2)).shape == (2, 3)


def test_stateful_initial_state_overrides_the_carried_state():
    x = sample_input()
    state = [np.full((3, 3), 0.2), np.full((3, 3), -0.1)]
    layer = small_layer(stateful=True)
    layer(x)
    np.testing.assert_array_equal(layer(x, initial_state=state),
                                  small_layer()(x, initial_state=state))


def test_reset_state_of_a_layer_that_is_not_stateful_does_nothing():
    layer = small_layer()
    layer.reset_state()
    assert layer.states is None


# -- gradients -----------------------------------------------------------------

GRADIENT_CASES = [
    pytest.param({}, {}, id="default"),
    pytest.param({"return_sequences": True}, {}, id="return_sequences"),
    pytest.param({"return_state": True}, {}, id="return_state"),
    pytest.param({"return_sequences": True, "return_state": True}, {}, id="sequences+state"),
    pytest.param({"return_state": True}, {"initial_state": True}, id="initial_state"),
    pytest.param({"return_sequences": True}, {"mask": True}, id="mask-sequences"),
    pytest.param({"return_state": True}, {"mask": True}, id="mask-last"),
    pytest.param({"go_backwards": True}, {}, id="go_backwards"),
    pytest.param({"go_backwards": True, "return_sequences": True, "return_state": True},
                 {"mask": True, "initial_state": True}, id="go_backwards-mask-state"),
    pytest.param({"use_bias": False, "return_sequences": True}, {}, id="no_bias"),
    pytest.param({"dropout": 0.4}, {"training": True}, id="dropout"),
    pytest.param({"recurrent_dropout": 0.4, "return_sequences": True}, {"training": True},
                 id="recurrent_dropout"),
    pytest.param({"dropout": 0.3, "recurrent_dropout": 0.3, "return_sequences": True,
                  "return_state": True, "go_backwards": True},
                 {"training": True, "mask": True, "initial_state": True}, id="everything"),
]


@pytest.mark.parametrize("options, call", GRADIENT_CASES)
def test_gradients_match_finite_differences(options, call):
    x = sample_input()
    rng = np.random.default_rng(4)
    initial_state = ([0.5 * rng.standard_normal((3, 3)), rng.standard_normal((3, 3))]
                     if call.get("initial_state") else None)
    mask = MASK if call.get("mask") else None
    assert_layer_gradients(small_layer(**options), x, initial_state=initial_state, mask=mask,
                           training=call.get("training", False))


@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("recurrent_activation", ACTIVATIONS)
def test_gradients_of_every_activation_pair(activation, recurrent_activation):
    # Large weights, so hard_sigmoid clips somewhere (no point lands on a kink).
    layer = small_layer(return_sequences=True, activation=activation,
                        recurrent_activation=recurrent_activation,
                        kernel_initializer=initializers.RandomNormal(stddev=2.0))
    assert_layer_gradients(layer, 2.0 * sample_input())


def test_gradients_of_a_stateful_call_hold_the_carried_state_fixed():
    layer = small_layer(stateful=True, return_sequences=True)
    x = sample_input()
    layer(x)
    assert layer.states is not None
    assert_layer_gradients(layer, sample_input(seed=9))


def test_backward_works_after_an_inference_call_outside_no_grad():
    layer = small_layer()
    y = layer(sample_input(), training=False)
    assert layer.backward(np.ones_like(y)).shape == (3, 4, 2)


def test_a_fully_masked_sequence_gets_no_gradient_from_its_zero_output():
    x = sample_input()
    mask = MASK.copy()
    mask[0] = False
    state = [np.ones((3, 3)), np.ones((3, 3))]
    layer = small_layer(return_state=True)
    y, h, c = layer(x, initial_state=state, mask=mask)
    np.testing.assert_array_equal(y[0], 0.0)
    np.testing.assert_array_equal(h[0], 1.0)  # h0 carried through
    dx, dh0, dc0 = layer.backward([np.ones_like(y), None, None])
    for grad in (dx, dh0, dc0):
        np.testing.assert_array_equal(grad[0], 0.0)
        assert np.any(grad[1] != 0)


def test_stacked_layers_backward_through_both():
    x = sample_input()
    first = small_layer(return_sequences=True, seed=1)
    second = small_layer(units=2, seed=2)
    upstream = np.random.default_rng(3).standard_normal((3, 2))
    y = second(first(x))
    dx = first.backward(second.backward(upstream))
    snapshot = [copy.deepcopy(first), copy.deepcopy(second)]
    x_probe = x.copy()

    def loss():
        with no_grad():
            return inner(snapshot[1](snapshot[0](x_probe)), upstream)

    assert y.shape == (3, 2)
    for name in first.params:
        assert_gradient(first.grads[name], loss, snapshot[0].params[name], name)
    assert_gradient(dx, loss, x_probe, "x")


def test_encoder_states_start_a_decoder_and_gradients_reach_the_encoder():
    rng = np.random.default_rng(5)
    source, target = rng.standard_normal((2, 5, 3)), rng.standard_normal((2, 4, 2))
    encoder = small_layer(return_state=True, seed=1)
    decoder = small_layer(return_sequences=True, seed=2)
    _, h, c = encoder(source)
    y = decoder(target, initial_state=[h, c])
    upstream = rng.standard_normal(y.shape)
    d_target, dh, dc = decoder.backward(upstream)
    d_source = encoder.backward([None, dh, dc])
    assert d_target.shape == target.shape and d_source.shape == source.shape

    snapshot = [copy.deepcopy(encoder), copy.deepcopy(decoder)]
    source_probe = source.copy()

    def loss():
        with no_grad():
            _, h, c = snapshot[0](source_probe)
            return inner(snapshot[1](target, initial_state=[h, c]), upstream)

    for name in encoder.params:
        assert_gradient(encoder.grads[name], loss, snapshot[0].params[name], name)
    assert_gradient(d_source, loss, source_probe, "source")


# -- no_grad -----------------------------------------------------------------

def test_no_grad_records_nothing_and_restores():
    layer = small_layer()
    x = sample_input()
    with no_grad():
        with no_grad():
            y = layer(x)
        inside = layer(x)
    np.testing.assert_array_equal(y, inside)
    with pytest.raises(RuntimeError, match="no_grad"):
        layer.backward(np.ones_like(y))
    layer(x)
    layer.backward(np.ones_like(y))


def test_no_grad_drops_the_record_of_an_earlier_call():
    layer = small_layer()
    x = sample_input()
    layer(x)
    with no_grad():
        layer(x)
    with pytest.raises(RuntimeError, match="no_grad"):
        layer.backward(np.ones((3, 3)))


def test_no_grad_is_per_thread():
    layer = small_layer()
    entered, done = threading.Event(), threading.Event()
    results = {}

    def other_thread():
        entered.wait()
        other = small_layer()
        y = other(sample_input())
        results["dx"] = other.backward(np.ones_like(y))
        done.set()

    worker = threading.Thread(target=other_thread)
    worker.start()
    with no_grad():
        entered.set()
        done.wait(timeout=30)
        layer(sample_input())
    worker.join()
    assert results["dx"].shape == (3, 4, 2)
    with pytest.raises(RuntimeError, match="no_grad"):
        layer.backward(np.ones((3, 3)))


# -- errors --------------------------------------------------------------------

CONSTRUCTOR_ERRORS = [
    ({"units": 0}, ValueError, "units"),
    ({"units": -2}, ValueError, "units"),
    ({"units": 2.5}, TypeError, "units"),
    ({"units": "4"}, TypeError, "units"),
    ({"units": True}, TypeError, "units"),
    ({"activation": "relu"}, ValueError, "activation.*tanh"),
    ({"activation": np.tanh}, ValueError, "activation"),
    ({"activation": None}, ValueError, "activation"),
    ({"recurrent_activation": "relu"}, ValueError, "recurrent_activation.*hard_sigmoid"),
    ({"recurrent_activation": None}, ValueError, "recurrent_activation"),
    ({"use_bias": 1}, TypeError, "use_bias"),
    ({"kernel_initializer": "nope"}, ValueError, "kernel_initializer.*glorot_uniform"),
    ({"kernel_initializer": 3}, TypeError, "kernel_initializer"),
    ({"recurrent_initializer": "nope"}, ValueError, "recurrent_initializer"),
    ({"bias_initializer": None}, TypeError, "bias_initializer"),
    ({"unit_forget_bias": None}, TypeError, "unit_forget_bias"),
    ({"dropout": -0.1}, ValueError, "dropout"),
    ({"dropout": 1.0}, ValueError, "dropout"),
    ({"dropout": "0.5"}, TypeError, "dropout"),
    ({"recurrent_dropout": 1.5}, ValueError, "recurrent_dropout"),
    ({"recurrent_dropout": True}, TypeError, "recurrent_dropout"),
    ({"seed": "x"}, TypeError, "seed"),
    ({"seed": -1}, ValueError, "seed"),
    ({"seed": 1.5}, TypeError, "seed"),
    ({"return_sequences": 1}, TypeError, "return_sequences"),
    ({"return_state": "yes"}, TypeError, "return_state"),
    ({"go_backwards": None}, TypeError, "go_backwards"),
    ({"stateful": 0}, TypeError, "stateful"),
    ({"dtype": "float16"}, ValueError, "dtype"),
    ({"dtype": "int32"}, ValueError, "dtype"),
    ({"dtype": "nonsense"}, ValueError, "dtype"),
    ({"kernel_regularizer": "l2"}, TypeError, "kernel_regularizer.*loss"),
    ({"recurrent_constraint": None}, TypeError, "recurrent_constraint"),
    ({"unroll": True}, TypeError, "unroll"),
    ({"use_cudnn": False}, TypeError, "use_cudnn"),
    ({"bogus": 1}, TypeError, "bogus"),
]


@pytest.mark.parametrize("kwargs, error, match", CONSTRUCTOR_ERRORS,
                         ids=[f"{next(iter(k))}={next(iter(k.values()))!r}"
                              for k, _, _ in CONSTRUCTOR_ERRORS])
def test_bad_constructor_arguments(kwargs, error, match):
    kwargs = dict(kwargs)
    units = kwargs.pop("units", 3)
    with pytest.raises(error, match=match):
        LSTM(units, **kwargs)


def test_initializer_returning_a_wrong_shape_is_named():
    layer = LSTM(2, recurrent_initializer=lambda shape, dtype: np.zeros(3))
    with pytest.raises(ValueError, match="recurrent_initializer"):
        layer(sample_input())


CALL_ERRORS = [
    ({"x": np.ones((3, 4))}, ValueError, "x must have shape"),
    ({"x": np.ones((0, 4, 2))}, ValueError, "x must have at least"),
    ({"x": np.ones((3, 4, 2), complex)}, TypeError, "x must hold real"),
    ({"x": [[["a", "b"]]]}, TypeError, "x must hold real"),
    ({"x": [[[1.0, None]]]}, TypeError, "x must hold real"),
    ({"x": [[[1.0, 2.0], [1.0]]]}, ValueError, "x must be a rectangular"),
    ({"x": None}, TypeError, "x"),
    ({"initial_state": np.ones((3, 3))}, TypeError, r"initial_state must be \[h0, c0\], a list"),
    ({"initial_state": [np.ones((3, 3))] * 3}, ValueError,
     r"initial_state must be \[h0, c0\], a list or tuple of 2 arrays, got a list of 3"),
    ({"initial_state": [np.ones((3, 2)), np.ones((3, 3))]}, ValueError,
     r"initial_state\[0\] \(h0\) must have shape"),
    ({"initial_state": [np.ones((3, 3)), np.ones((3, 3), complex)]}, TypeError,
     r"initial_state\[1\] \(c0\)"),
    ({"mask": np.ones((3, 5), bool)}, ValueError, "mask must have shape"),
    ({"mask": np.ones((3, 4))}, TypeError, "mask must be boolean"),
    ({"mask": np.full((3, 4), 2)}, ValueError, "mask"),
    ({"training": "yes"}, TypeError, "training"),
    ({"training": 1}, TypeError, "training"),
]


@pytest.mark.parametrize("kwargs, error, match", CALL_ERRORS,
                         ids=[f"{next(iter(k))}-{i}" for i, (k, _, _) in enumerate(CALL_ERRORS)])
def test_bad_call_arguments(kwargs, error, match):
    kwargs = dict(kwargs)
    x = kwargs.pop("x", sample_input())
    layer = small_layer()
    with pytest.raises(error, match=match):
        layer(x, **kwargs)
    assert not layer.built or kwargs  # a refused first input builds nothing


def test_a_4d_input_says_what_the_three_dimensions_are_and_how_to_reshape():
    x = np.ones((2, 6, 5, 3))
    expected = (r"x must have shape \(batch, timesteps, features\), three dimensions: the "
                r"sequences, the steps of each, the features of each step; got an array with "
                r"4 dimension\(s\), shape \(2, 6, 5, 3\); fastlstm has no TimeDistributed"
                r".*x.reshape\(-1, 5, 3\)")
    for run in (small_layer(), fl.Bidirectional(small_layer()),
                fl.Sequential([small_layer(), fl.Dense(1)]).predict):
        with pytest.raises(ValueError, match=expected):
            run(x)


def test_input_with_other_features_than_built_is_refused():
    layer = small_layer()
    layer(sample_input(features=2))
    with pytest.raises(ValueError, match=r"x must have 2 features \(last axis\), the layer's "
                                          r"input_dim, got 3"):
        layer(sample_input(features=3))


def test_mask_of_zeros_and_ones_is_accepted():
    layer = small_layer(return_sequences=True)
    x = sample_input()
    np.testing.assert_array_equal(layer(x, mask=MASK.astype(int)), layer(x, mask=MASK))


BACKWARD_ERRORS = [
    ({}, np.ones((3, 4, 3)), ValueError, r"dy must have shape"),
    ({}, np.ones((3, 3), complex), TypeError, "dy"),
    ({"return_state": True}, np.ones((3, 3)), ValueError, r"dy must be a list \[d_output"),
    ({"return_state": True}, [np.ones((3, 3)), np.ones((3, 2)), None], ValueError,
     r"dy\[1\] \(d_h\)"),
    ({"return_state": True, "return_sequences": True}, [np.ones((3, 3)), None, None],
     ValueError, r"dy\[0\] \(d_output\)"),
]


@pytest.mark.parametrize("options, dy, error, match", BACKWARD_ERRORS)
def test_bad_backward_arguments(options, dy, error, match):
    layer = small_layer(**options)
    layer(sample_input())
    with pytest.raises(error, match=match):
        layer.backward(dy)


def test_backward_before_a_call_is_refused():
    with pytest.raises(RuntimeError, match="forward call first"):
        small_layer().backward(np.ones((3, 3)))


def test_second_backward_for_one_call_is_refused():
    layer = small_layer()
    y = layer(sample_input())
    layer.backward(np.ones_like(y))
    with pytest.raises(RuntimeError, match="already called"):
        layer.backward(np.ones_like(y))


SET_WEIGHTS_ERRORS = [
    (lambda k, r, b: [k, r], ValueError, r"weights must be a list of 3"),
    (lambda k, r, b: k, ValueError, r"weights must be a list of 3"),
    (lambda k, r, b: [k[:, :4], r, b], ValueError, r"weights\[0\] \(kernel\)"),
    (lambda k, r, b: [k[0], r, b], ValueError, r"weights\[0\] \(kernel\)"),
    (lambda k, r, b: [k, r[:, :8], b], ValueError, r"weights\[1\] \(recurrent_kernel\)"),
    (lambda k, r, b: [k, r, b[:8]], ValueError, r"weights\[2\] \(bias\)"),
    (lambda k, r, b: [k, r, b.astype(complex)], TypeError, r"weights\[2\] \(bias\)"),
    (lambda k, r, b: [k, r, None], TypeError, r"weights\[2\] \(bias\)"),
]


@pytest.mark.parametrize("built", [False, True], ids=["unbuilt", "built"])
@pytest.mark.parametrize("make, error, match", SET_WEIGHTS_ERRORS)
def test_bad_set_weights(make, error, match, built):
    layer = small_layer()
    if built:
        layer.build(2)
    kernel, recurrent_kernel, bias = np.ones((2, 12)), np.ones((3, 12)), np.ones(12)
    with pytest.raises(error, match=match):
        layer.set_weights(make(kernel, recurrent_kernel, bias))


def test_set_weights_with_another_input_dim_after_build_is_refused():
    layer = small_layer()
    layer.build(2)
    with pytest.raises(ValueError, match=r"weights\[0\] \(kernel\).*\(2, 12\)"):
        layer.set_weights([np.ones((5, 12)), np.ones((3, 12)), np.ones(12)])


def test_build_with_another_input_dim_is_refused():
    layer = small_layer()
    layer.build(2)
    with pytest.raises(ValueError, match="input_dim"):
        layer.build(4)
    with pytest.raises(TypeError, match="input_dim"):
        small_layer().build(2.0)


def test_repr_and_config():
    layer = LSTM(4, return_sequences=True, dtype="float64", seed=1)
    assert repr(layer) == "LSTM(4, seed=1, return_sequences=True, dtype='float64')"
    clone = LSTM(**layer.get_config())
    clone.build(3)
    layer.build(3)
    for a, b in zip(layer.get_weights(), clone.get_weights()):
        np.testing.assert_array_equal(a, b)
