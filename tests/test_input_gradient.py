"""Tests of skipping the input's gradient where nothing reads it: every other
gradient is the same to the bit, the input's is None, and training a model
(whose first layer skips it) is unchanged."""
import numpy as np
import pytest

import fastlstm as fl
from fastlstm import _kernels
from fastlstm.layers import Dense, Dropout, Embedding
from fastlstm.models import Sequential


def _arguments(dtype, seed=0, batch=5, timesteps=7, input_dim=3, units=4):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((batch, timesteps, input_dim)).astype(dtype)
    kernel = (rng.standard_normal((input_dim, 4 * units)) * 0.5).astype(dtype)
    recurrent_kernel = (rng.standard_normal((units, 4 * units)) * 0.5).astype(dtype)
    bias = rng.standard_normal(4 * units).astype(dtype)
    mask = rng.random((batch, timesteps)) > 0.3
    return x, kernel, recurrent_kernel, bias, mask


def _gradients(backend, input_gradient, dtype, go_backwards, with_mask):
    x, kernel, recurrent_kernel, bias, mask = _arguments(dtype)
    h0 = np.full((x.shape[0], 4), 0.1, dtype)
    outputs, h, c, cache = fl.lstm_forward(
        x, kernel, recurrent_kernel, bias, initial_state=[h0, h0],
        mask=mask if with_mask else None, go_backwards=go_backwards, backend=backend)
    grad_outputs = np.cos(np.arange(outputs.size)).reshape(outputs.shape).astype(dtype)
    return fl.lstm_backward(cache, grad_outputs, grad_h=h, grad_c=c,
                            input_gradient=input_gradient)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("go_backwards", [False, True])
@pytest.mark.parametrize("with_mask", [False, True])
def test_fast_kernels_skip_the_input_gradient_and_change_nothing_else(
        kernel_build, dtype, go_backwards, with_mask):
    full = _gradients("fast", True, dtype, go_backwards, with_mask)
    skipped = _gradients("fast", False, dtype, go_backwards, with_mask)
    assert full.x is not None and skipped.x is None
    for name in ("kernel", "recurrent_kernel", "bias", "h0", "c0"):
        np.testing.assert_array_equal(getattr(skipped, name), getattr(full, name), err_msg=name)


def test_reference_skips_the_input_gradient_too():
    full = _gradients("reference", True, np.float64, True, True)
    skipped = _gradients("reference", False, np.float64, True, True)
    assert skipped.x is None
    for name in ("kernel", "recurrent_kernel", "bias", "h0", "c0"):
        np.testing.assert_array_equal(getattr(skipped, name), getattr(full, name), err_msg=name)


def test_input_gradient_must_be_a_bool():
    x, kernel, recurrent_kernel, bias, _ = _arguments(np.float64)
    cache = fl.lstm_forward(x, kernel, recurrent_kernel, bias)[3]
    with pytest.raises(TypeError, match="input_gradient must be True or False"):
        fl.lstm_backward(cache, input_gradient="no")


@pytest.mark.parametrize("make_layer", [
    lambda: fl.LSTM(4, return_sequences=True, dropout=0.3, seed=0, dtype="float64"),
    lambda: fl.Bidirectional(fl.LSTM(3, return_sequences=True, seed=1, dtype="float64")),
    lambda: Dense(2, activation="tanh", seed=2, dtype="float64"),
    lambda: Dropout(0.5, seed=3, dtype="float64"),
], ids=["LSTM", "Bidirectional", "Dense", "Dropout"])
def test_layer_backward_without_input_gradient(make_layer):
    x = np.random.default_rng(4).standard_normal((3, 5, 2))
    grads = []
    for input_gradient in (True, False):
        layer = make_layer()
        y = layer(x, training=True)
        dx = layer.backward(np.sin(y), input_gradient=input_gradient)
        assert (dx is None) == (not input_gradient)
        grads.append(layer.grads)
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        np.testing.assert_array_equal(grads[1][name], grads[0][name], err_msg=name)


def test_model_backward_skips_only_the_first_layers_input_gradient():
    x = np.random.default_rng(5).standard_normal((4, 6, 3))
    results = []
    for input_gradient in (True, False):
        model = Sequential([fl.LSTM(5, return_sequences=True, seed=0, dtype="float64"),
                            fl.LSTM(3, seed=1, dtype="float64"),
                            Dense(1, seed=2, dtype="float64")])
        y = model(x, training=True)
        results.append((model.backward(np.ones_like(y), input_gradient=input_gradient),
                        model.grads))
    (dx, grads), (skipped_dx, skipped_grads) = results
    assert dx.shape == x.shape and skipped_dx is None
    for name in grads:
        np.testing.assert_array_equal(skipped_grads[name], grads[name], err_msg=name)


def test_embedding_model_still_trains():
    tokens = np.random.default_rng(6).integers(0, 9, (16, 5))
    model = Sequential([Embedding(9, 4, seed=0), fl.LSTM(3, seed=1), Dense(1, seed=2)])
    model.compile(optimizer="adam", loss="mse")
    before = model.get_weights()
    model.fit(tokens, np.ones((16, 1)), epochs=1, batch_size=8, verbose=0)
    assert all(not np.array_equal(a, b) for a, b in zip(before, model.get_weights()))


def test_kernel_backward_checks_its_buffers(kernel_build):
    x, kernel, recurrent_kernel, bias, _ = _arguments(np.float64)
    cache = fl.lstm_forward(x, kernel, recurrent_kernel, bias)[3].state
    module = _kernels.current()
    batch, units = x.shape[0], 4
    state = np.zeros((batch, units))

    def call(**changes):
        arguments = dict(
            weights=cache.weights, mask=None, dropout=np.ones((batch, units)),
            go_backwards=False, grad_outputs=np.zeros((batch, x.shape[1], units)),
            gates=cache.gates, states=cache.states, c_prev=cache.c_prev,
            dh_rec=state.copy(), dh_pass=state.copy(), dc=state.copy(), carry=state.copy(),
            dx=np.empty(x.shape), dweights=np.empty_like(cache.weights),
            dbias=np.empty(4 * units), activation=0, recurrent_activation=1, num_threads=1)
        arguments.update(changes)
        module.backward(*arguments.values())

    call()
    for name, bad in (("dx", np.empty((batch, x.shape[1] + 1, x.shape[2]))),
                      ("grad_outputs", np.zeros((batch, x.shape[1], units + 1))),
                      ("dweights", np.empty((2, 16))),
                      ("dbias", np.empty(3)),
                      ("dh_rec", np.zeros((batch + 1, units))),
                      ("mask", np.ones((batch, 2), np.uint8))):
        with pytest.raises(ValueError, match=f"{name} must have shape"):
            call(**{name: bad})
