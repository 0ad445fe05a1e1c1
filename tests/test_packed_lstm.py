"""fl.PackedLSTM: lstm_forward's inference with the weights packed once."""
import threading

import numpy as np
import pytest

import fastlstm as fl


def _weights(rng, input_dim, units, dtype="float64"):
    return [rng.normal(0, 0.3, shape).astype(dtype)
            for shape in ((input_dim, 4 * units), (units, 4 * units), (4 * units,))]


# Small (input product per step) and large (one product for all steps) inputs.
SHAPES = [(3, 7, 5, 4), (8, 20, 16, 32), (16, 12, 200, 96), (1, 9, 32, 256)]


@pytest.mark.parametrize("batch, timesteps, input_dim, units", SHAPES)
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("threads", [1, 2])
def test_calls_are_lstm_forward_to_the_bit(batch, timesteps, input_dim, units, dtype, threads):
    rng = np.random.default_rng(0)
    kernel, recurrent_kernel, bias = _weights(rng, input_dim, units, dtype)
    lstm = fl.PackedLSTM(kernel, recurrent_kernel, bias)
    previous = fl.num_threads()
    fl.set_num_threads(threads)
    try:
        for _ in range(2):  # the second call runs on what the first one kept
            x = rng.standard_normal((batch, timesteps, input_dim)).astype(dtype)
            state = list(rng.standard_normal((2, batch, units)).astype(dtype))
            mask = rng.random((batch, timesteps)) > 0.3
            for kwargs in ({}, dict(initial_state=state, mask=mask, go_backwards=True)):
                got = lstm(x, **kwargs)
                expected = fl.lstm_forward(x, kernel, recurrent_kernel, bias,
                                           return_cache=False, **kwargs)[:3]
                for a, b in zip(got, expected):
                    np.testing.assert_array_equal(a, b)
    finally:
        fl.set_num_threads(previous)


def test_it_keeps_its_own_copy_of_the_weights():
    rng = np.random.default_rng(1)
    weights = _weights(rng, 3, 4)
    lstm = fl.PackedLSTM(*weights)
    x = rng.standard_normal((2, 5, 3))
    before = lstm(x)[0]
    for w in weights:
        w += 1.0
    np.testing.assert_array_equal(lstm(x)[0], before)
    with pytest.raises(ValueError, match="read-only"):
        lstm.kernel[0, 0] = 1.0


def test_no_bias_and_other_activations_are_lstm_forward():
    rng = np.random.default_rng(2)
    kernel, recurrent_kernel, _ = _weights(rng, 6, 5)
    lstm = fl.PackedLSTM(kernel, recurrent_kernel, None, activation="sigmoid",
                         recurrent_activation="hard_sigmoid")
    assert lstm.bias is None
    x = rng.standard_normal((3, 4, 6))
    expected = fl.lstm_forward(x, kernel, recurrent_kernel, None, return_cache=False,
                               activation="sigmoid", recurrent_activation="hard_sigmoid")
    np.testing.assert_array_equal(lstm(x)[0], expected[0])


def test_step_is_a_call_on_one_step():
    rng = np.random.default_rng(3)
    lstm = fl.PackedLSTM(*_weights(rng, 32, 256))
    x = rng.standard_normal((1, 32))
    state = list(rng.standard_normal((2, 1, 256)))
    output, (h, c) = lstm.step(x, state)
    _, h_call, c_call = lstm(x[:, None], initial_state=state)
    assert output is h
    np.testing.assert_array_equal(h, h_call)
    np.testing.assert_array_equal(c, c_call)


def test_calls_from_two_threads_at_once_are_each_right():
    rng = np.random.default_rng(4)
    weights = _weights(rng, 16, 64)
    lstm = fl.PackedLSTM(*weights)
    inputs = [rng.standard_normal((8, 30, 16)) for _ in range(2)]
    expected = [fl.lstm_forward(x, *weights, return_cache=False)[0] for x in inputs]
    errors = []

    def run(k):
        for _ in range(20):
            if not np.array_equal(lstm(inputs[k])[0], expected[k]):
                errors.append(k)

    threads = [threading.Thread(target=run, args=(k,)) for k in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []


def test_bad_arguments_get_clear_errors():
    rng = np.random.default_rng(5)
    lstm = fl.PackedLSTM(*_weights(rng, 3, 4))
    with pytest.raises(ValueError, match=r"x must have 3 features \(last axis\)"):
        lstm(np.zeros((2, 5, 4)))
    with pytest.raises(ValueError, match=r"initial_state\[0\] \(h0\)"):
        lstm(np.zeros((2, 5, 3)), initial_state=[np.zeros((3, 4)), np.zeros((2, 4))])
    with pytest.raises(ValueError, match="mask"):
        lstm(np.zeros((2, 5, 3)), mask=np.ones((2, 4), bool))
    with pytest.raises(ValueError, match=r"inputs must have shape \(batch, input_dim=3\)"):
        lstm.step(np.zeros((2, 4)), [np.zeros((2, 4))] * 2)
    with pytest.raises(TypeError, match=r"states must be \[h, c\], a list or tuple of 2"):
        lstm.step(np.zeros((2, 3)), np.zeros((2, 4)))
    with pytest.raises(TypeError, match="kernel must be float32 or float64"):
        fl.PackedLSTM(np.zeros((3, 16), int), np.zeros((4, 16)))
