"""Tests of fastlstm.layers.Bidirectional, with Keras 3's semantics as the reference.

Keras' ``Bidirectional`` (keras/src/layers/rnn/bidirectional.py) runs a copy of
the layer's config and a copy with ``go_backwards=True``, flips the backward
outputs when ``return_sequences``, forces ``zero_output_for_mask`` to
``return_sequences`` and returns the states as ``[h_fw, c_fw, h_bw, c_bw]``.
Its RNN loop (keras/src/backend/tensorflow/rnn.py) reverses the mask with the
inputs, so on a right-padded sequence the backward direction first meets the
padding (state kept, output zero) and then the kept steps from last to first.
"""
import copy

import numpy as np
import pytest

from fastlstm import initializers
from fastlstm.layers import LSTM, Bidirectional, no_grad
from gradcheck import assert_gradient, inner, random_like

MERGE_MODES = ["concat", "sum", "mul", "ave", None]
LENGTHS = [4, 2, 1]
RIGHT_PADDED = np.arange(4)[None, :] < np.array(LENGTHS)[:, None]


def sample_input(batch=3, steps=4, features=2, seed=2):
    return np.random.default_rng(seed).standard_normal((batch, steps, features))


def small_lstm(units=3, **kwargs):
    kwargs.setdefault("kernel_initializer", initializers.RandomNormal(stddev=0.5))
    kwargs.setdefault("recurrent_initializer", initializers.RandomNormal(stddev=0.5))
    kwargs.setdefault("bias_initializer", initializers.RandomNormal(stddev=0.3))
    kwargs.setdefault("seed", 0)
    return LSTM(units, dtype="float64", **kwargs)


def standalone_pair(bi, **overrides):
    """Two plain LSTMs with the Bidirectional's weights: forward and go_backwards."""
    config = dict(bi.forward_layer.get_config(), **overrides)
    forward = LSTM(**config)
    backward = LSTM(**dict(config, go_backwards=True))
    forward.set_weights(bi.forward_layer.get_weights())
    backward.set_weights(bi.backward_layer.get_weights())
    return forward, backward


def assert_bidirectional_gradients(bi, x, *, initial_state=None, mask=None, training=False):
    bi.build(x.shape[-1])
    snapshot = copy.deepcopy(bi)
    x_probe = x.copy()
    state_probe = None if initial_state is None else [s.copy() for s in initial_state]
    outputs = bi(x, initial_state=initial_state, mask=mask, training=training)
    upstream = random_like(outputs, np.random.default_rng(1))
    returned = bi.backward(upstream)

    def loss():
        probe = copy.deepcopy(snapshot)
        with no_grad():
            return inner(probe(x_probe, initial_state=state_probe, mask=mask,
                               training=training), upstream)

    grads, params = bi.grads, snapshot.params
    assert set(grads) == set(params) and len(grads) in (4, 6)
    for name in grads:
        assert_gradient(grads[name], loss, params[name], name, count=8)
    dx = returned if initial_state is None else returned[0]
    assert_gradient(dx, loss, x_probe, "x", count=8)
    if initial_state is not None:
        assert len(returned) == 5
        for k, state in enumerate(state_probe):
            assert_gradient(returned[1 + k], loss, state, f"initial_state[{k}]", count=8)


# -- construction ----------------------------------------------------------------

def test_backward_layer_is_a_go_backwards_copy_of_the_config():
    layer = LSTM(5, return_sequences=True, dropout=0.2, seed=3)
    bi = Bidirectional(layer)
    for direction, go_backwards in ((bi.forward_layer, False), (bi.backward_layer, True)):
        assert direction is not layer
        assert direction.go_backwards is go_backwards
        assert direction.units == 5 and direction.dropout == 0.2
        assert direction.return_sequences
    assert bi.merge_mode == "concat"


def test_directions_get_different_reproducible_weights():
    def weights():
        bi = Bidirectional(LSTM(3, seed=4))
        bi.build(2)
        return bi.get_weights()

    first, second = weights(), weights()
    assert len(first) == 6
    for a, b in zip(first, second):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(first[0], first[3])


def test_get_and_set_weights_are_forward_then_backward():
    bi = Bidirectional(small_lstm())
    rng = np.random.default_rng(0)
    weights = [rng.standard_normal(s) for s in [(2, 12), (3, 12), (12,)] * 2]
    bi.set_weights(weights)
    assert bi.built
    for got, expected in zip(bi.forward_layer.get_weights() + bi.backward_layer.get_weights(),
                             weights):
        np.testing.assert_array_equal(got, expected)
    for got, expected in zip(bi.get_weights(), weights):
        np.testing.assert_array_equal(got, expected)
    assert sorted(bi.params) == sorted(f"{d}_{n}" for d in ("forward", "backward")
                                       for n in ("kernel", "recurrent_kernel", "bias"))
    assert bi.params["backward_kernel"] is bi.backward_layer.params["kernel"]


def test_without_bias_four_weights():
    bi = Bidirectional(small_lstm(use_bias=False))
    bi.build(2)
    assert [w.shape for w in bi.get_weights()] == [(2, 12), (3, 12)] * 2


# -- outputs -----------------------------------------------------------------------

@pytest.mark.parametrize("merge_mode", MERGE_MODES)
@pytest.mark.parametrize("return_sequences", [False, True], ids=["last", "sequences"])
def test_merge_modes_combine_the_aligned_directions(merge_mode, return_sequences):
    x = sample_input()
    bi = Bidirectional(small_lstm(return_sequences=return_sequences), merge_mode=merge_mode)
    merged = bi(x)
    forward, backward = standalone_pair(bi)
    y, y_rev = forward(x), backward(x)
    if return_sequences:
        y_rev = y_rev[:, ::-1]
    expected = {"concat": lambda: np.concatenate([y, y_rev], axis=-1),
                "sum": lambda: y + y_rev, "mul": lambda: y * y_rev,
                "ave": lambda: (y + y_rev) / 2, None: lambda: [y, y_rev]}[merge_mode]()
    if merge_mode is None:
        assert isinstance(merged, list) and len(merged) == 2
        for got, want in zip(merged, expected):
            np.testing.assert_allclose(got, want, rtol=1e-14)
    else:
        np.testing.assert_allclose(merged, expected, rtol=1e-14)
    width = 6 if merge_mode == "concat" else 3
    shape = (3, 4, width) if return_sequences else (3, width)
    assert (merged[0] if merge_mode is None else merged).shape == shape


def test_seed_notes_shapes():
    x = np.random.default_rng(0).random((32, 10, 8))
    assert Bidirectional(LSTM(4))(x).shape == (32, 8)
    assert Bidirectional(LSTM(4, return_sequences=True))(x).shape == (32, 10, 8)


@pytest.mark.parametrize("merge_mode", ["concat", None])
def test_return_state_order_is_forward_then_backward(merge_mode):
    x = sample_input()
    bi = Bidirectional(small_lstm(return_state=True), merge_mode=merge_mode)
    outputs = bi(x)
    count = 2 if merge_mode is None else 1
    assert len(outputs) == count + 4
    h_fw, c_fw, h_bw, c_bw = outputs[count:]
    forward, backward = standalone_pair(bi)
    _, h, c = forward(x)
    np.testing.assert_allclose(h_fw, h, rtol=1e-14)
    np.testing.assert_allclose(c_fw, c, rtol=1e-14)
    _, h, c = backward(x)
    np.testing.assert_allclose(h_bw, h, rtol=1e-14)
    np.testing.assert_allclose(c_bw, c, rtol=1e-14)


def test_initial_state_halves_go_to_each_direction():
    x = sample_input()
    rng = np.random.default_rng(3)
    states = [rng.standard_normal((3, 3)) for _ in range(4)]
    bi = Bidirectional(small_lstm(return_sequences=True), merge_mode=None)
    y, y_rev = bi(x, initial_state=states)
    forward, backward = standalone_pair(bi)
    np.testing.assert_allclose(y, forward(x, initial_state=states[:2]), rtol=1e-14)
    np.testing.assert_allclose(y_rev, backward(x, initial_state=states[2:])[:, ::-1],
                               rtol=1e-14)


def test_masked_steps_output_zeros_with_return_sequences():
    x = sample_input()
    mask = np.array([[True, False, True, True], [True, True, False, False],
                     [False, True, True, False]])
    bi = Bidirectional(small_lstm(return_sequences=True), merge_mode=None)
    y, y_rev = bi(x, mask=mask)
    np.testing.assert_array_equal(y[~mask], 0.0)
    np.testing.assert_array_equal(y_rev[~mask], 0.0)
    assert np.all(y[mask] != 0.0) and np.all(y_rev[mask] != 0.0)
    # The wrapped directions keep the state over masked steps as a plain LSTM does.
    forward, backward = standalone_pair(bi)
    np.testing.assert_allclose(y[mask], forward(x, mask=mask)[mask], rtol=1e-14)


def test_right_padded_backward_direction_reads_each_sequence_reversed():
    x = sample_input()
    bi = Bidirectional(small_lstm(return_sequences=True, return_state=True), merge_mode=None)
    y, y_rev, h_fw, c_fw, h_bw, c_bw = bi(x, mask=RIGHT_PADDED)
    forward, backward = standalone_pair(bi, return_state=True)
    for row, length in enumerate(LENGTHS):
        valid = x[row:row + 1, :length]
        expected_fw, h, _ = forward(valid)
        np.testing.assert_allclose(y[row, :length], expected_fw[0], rtol=1e-13)
        np.testing.assert_allclose(h_fw[row], h[0], rtol=1e-13)
        # The backward direction on the valid steps alone, re-aligned to time.
        expected_bw, h, c = backward(valid)
        np.testing.assert_allclose(y_rev[row, :length], expected_bw[0, ::-1], rtol=1e-13)
        np.testing.assert_allclose(h_bw[row], h[0], rtol=1e-13)
        np.testing.assert_allclose(c_bw[row], c[0], rtol=1e-13)
        np.testing.assert_array_equal(y[row, length:], 0.0)
        np.testing.assert_array_equal(y_rev[row, length:], 0.0)


def test_last_outputs_with_a_mask_are_the_last_kept_and_the_first_step():
    x = sample_input()
    bi = Bidirectional(small_lstm(), merge_mode=None)
    y, y_rev = bi(x, mask=RIGHT_PADDED)
    sequences = Bidirectional(small_lstm(return_sequences=True), merge_mode=None)
    every, every_rev = sequences(x, mask=RIGHT_PADDED)
    for row, length in enumerate(LENGTHS):
        np.testing.assert_allclose(y[row], every[row, length - 1], rtol=1e-14)
        np.testing.assert_allclose(y_rev[row], every_rev[row, 0], rtol=1e-14)


def test_stateful_directions_carry_and_reset():
    x = sample_input(steps=6)
    bi = Bidirectional(small_lstm(stateful=True, return_sequences=True), merge_mode=None)
    bi(x[:, :3])
    assert bi.forward_layer.states is not None and bi.backward_layer.states is not None
    forward, _ = standalone_pair(bi, stateful=False)
    h, c = bi.forward_layer.states
    np.testing.assert_allclose(bi(x[:, 3:])[0], forward(x[:, 3:], initial_state=[h, c]),
                               rtol=1e-14)
    bi.reset_state()
    assert bi.forward_layer.states is None and bi.backward_layer.states is None


# -- gradients -----------------------------------------------------------------------

@pytest.mark.parametrize("merge_mode", MERGE_MODES)
@pytest.mark.parametrize("return_sequences", [True, False], ids=["sequences", "last"])
def test_gradients_of_every_merge_mode(merge_mode, return_sequences):
    bi = Bidirectional(small_lstm(return_sequences=return_sequences), merge_mode=merge_mode)
    assert_bidirectional_gradients(bi, sample_input())


@pytest.mark.parametrize("merge_mode", ["concat", "mul", None])
def test_gradients_with_states_mask_and_initial_state(merge_mode):
    rng = np.random.default_rng(6)
    states = [0.5 * rng.standard_normal((3, 3)) for _ in range(4)]
    mask = RIGHT_PADDED.copy()
    mask[2] = [False, True, False, True]
    bi = Bidirectional(small_lstm(return_sequences=True, return_state=True),
                       merge_mode=merge_mode)
    assert_bidirectional_gradients(bi, sample_input(), initial_state=states, mask=mask)


def test_gradients_with_dropout_and_no_bias():
    bi = Bidirectional(small_lstm(return_sequences=True, dropout=0.3, recurrent_dropout=0.3,
                                  use_bias=False, seed=8), merge_mode="sum")
    assert_bidirectional_gradients(bi, sample_input(), mask=RIGHT_PADDED, training=True)


def test_backward_accepts_none_entries():
    bi = Bidirectional(small_lstm(return_state=True))
    y, *_ = bi(sample_input())
    dx = bi.backward([np.ones_like(y), None, None, None, None])
    assert dx.shape == (3, 4, 2)


# -- errors ----------------------------------------------------------------------------

def test_bad_constructor_arguments():
    with pytest.raises(TypeError, match="layer must be a fastlstm.LSTM"):
        Bidirectional("lstm")
    with pytest.raises(ValueError, match="merge_mode.*concat"):
        Bidirectional(small_lstm(), merge_mode="max")
    with pytest.raises(ValueError, match="merge_mode"):
        Bidirectional(small_lstm(), merge_mode=["sum"])
    with pytest.raises(ValueError, match="go_backwards"):
        Bidirectional(small_lstm(go_backwards=True))


def test_bad_call_arguments():
    bi = Bidirectional(small_lstm())
    x = sample_input()
    with pytest.raises(ValueError, match=r"initial_state must be \[h_fw, c_fw, h_bw, c_bw\], a "
                                         r"list or tuple of 4 arrays, got a list of 2"):
        bi(x, initial_state=[np.ones((3, 3))] * 2)
    with pytest.raises(ValueError, match=r"initial_state\[2\] \(h_bw\)"):
        bi(x, initial_state=[np.ones((3, 3))] * 2 + [np.ones((3, 2)), np.ones((3, 3))])
    with pytest.raises(ValueError, match="mask"):
        bi(x, mask=np.ones((3, 2), bool))
    with pytest.raises(TypeError, match="x must hold real"):
        bi(np.ones((3, 4, 2), complex))
    with pytest.raises(TypeError, match="training"):
        bi(x, training="no")


def test_bad_backward_arguments():
    bi = Bidirectional(small_lstm(return_state=True))
    with pytest.raises(RuntimeError, match="forward call first"):
        bi.backward([None] * 5)
    y, *_ = bi(sample_input())
    with pytest.raises(ValueError, match="dy must be a list of 5"):
        bi.backward(np.ones_like(y))
    with pytest.raises(ValueError, match=r"dy\[0\] \(d_output\)"):
        bi.backward([np.ones((3, 3))] + [None] * 4)
    with pytest.raises(ValueError, match=r"dy\[3\] \(d_h_bw\)"):
        bi.backward([None, None, None, np.ones((3, 4)), None])
    bi.backward([np.ones_like(y)] + [None] * 4)
    with pytest.raises(RuntimeError, match="already called"):
        bi.backward([np.ones_like(y)] + [None] * 4)
    plain = Bidirectional(small_lstm(), merge_mode="mul")
    with no_grad():
        y = plain(sample_input())
    with pytest.raises(RuntimeError, match="no_grad"):
        plain.backward(np.ones_like(y))


def test_bad_set_weights():
    bi = Bidirectional(small_lstm())
    good = [np.ones((2, 12)), np.ones((3, 12)), np.ones(12)]
    with pytest.raises(ValueError, match="weights must be a list of 6"):
        bi.set_weights(good)
    with pytest.raises(ValueError, match=r"weights\[4\] \(backward recurrent_kernel\)"):
        bi.set_weights(good + [good[0], np.ones((3, 8)), good[2]])
