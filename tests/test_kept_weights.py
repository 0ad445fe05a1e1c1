"""Weights kept between calls are never stale: after every way a layer's
weights can change, the next call of every inference path (a whole sequence,
with and without a mask, ``predict``, ``Bidirectional``, one step, the cell)
gives what a fresh layer with the new weights gives, to the bit."""
import numpy as np
import pytest

import fastlstm as fl

UNITS, FEATURES = 12, 4


def _layer(seed=0, **kwargs):
    layer = fl.LSTM(UNITS, seed=seed, dtype="float64", return_sequences=True, **kwargs)
    layer.build(FEATURES)
    rng = np.random.default_rng(1)
    layer.set_weights([w + rng.normal(0, 0.1, w.shape) for w in layer.get_weights()])
    return layer


def _inputs():
    rng = np.random.default_rng(6)
    x = rng.standard_normal((3, 7, FEATURES))
    mask = np.ones((3, 7), bool)
    mask[0, :2] = mask[1, 5:] = mask[2, 3] = False
    state = list(rng.standard_normal((2, 3, UNITS)))
    return x, mask, state


def _paths(layer):
    """Every inference path's result for ``layer``, by name."""
    x, mask, state = _inputs()
    with fl.no_grad():
        results = {
            "sequence": layer(x),
            "sequence with a mask and states": layer(x, initial_state=state, mask=mask),
            "one step": layer(x[:, :1], initial_state=state),
        }
    results["cell"] = layer.cell(x[:, 0], state)[0]
    results["predict"] = fl.Sequential([layer]).predict(x, verbose=0)
    return results


def _set_weights(layer, new, tmp_path):
    layer.set_weights(new)


def _write_into_params(layer, new, tmp_path):
    for name, array in zip(("kernel", "recurrent_kernel", "bias"), new):
        layer.params[name][...] = array


def _write_one_element(layer, new, tmp_path):
    # One weight of thousands: a check that sampled the weights would miss it.
    new[:] = layer.get_weights()
    new[1][UNITS - 1, 3] += 0.25
    layer.params["recurrent_kernel"][UNITS - 1, 3] += 0.25


def _replace_the_array(layer, new, tmp_path):
    for name, array in zip(("kernel", "recurrent_kernel", "bias"), new):
        layer.params[name] = np.array(array)


def _load_weights(layer, new, tmp_path):
    other = _layer(seed=3)
    other.set_weights(new)
    path = str(tmp_path / "w.weights.npz")
    fl.Sequential([other]).save_weights(path)
    fl.Sequential([layer]).load_weights(path)


def _apply_gradients(layer, new, tmp_path):
    optimizer = fl.optimizers.SGD(learning_rate=1.0)
    grads = [w - n for w, n in zip(layer.get_weights(), new)]
    optimizer.apply_gradients(zip(grads, list(layer.params.values())))


def _fit(layer, new, tmp_path):
    x, _, _ = _inputs()
    model = fl.Sequential([layer])
    model.compile(optimizer=fl.optimizers.Adam(0.1), loss="mse")
    model.fit(x, np.ones((3, 7, UNITS)), batch_size=3, epochs=1, verbose=0)
    new[:] = layer.get_weights()


CHANGES = [_set_weights, _write_into_params, _write_one_element, _replace_the_array,
           _load_weights, _apply_gradients, _fit]


@pytest.mark.parametrize("change", CHANGES, ids=lambda f: f.__name__.strip("_"))
def test_every_change_of_weights_is_seen_by_the_next_call(change, tmp_path):
    layer = _layer()
    before = _paths(layer)
    rng = np.random.default_rng(7)
    new = [w + rng.normal(0, 0.5, w.shape) for w in layer.get_weights()]
    change(layer, new, tmp_path)
    fresh = _layer(seed=5)
    fresh.set_weights(new)
    expected = _paths(fresh)
    for path, result in _paths(layer).items():
        np.testing.assert_array_equal(result, expected[path], err_msg=path)
        assert not np.array_equal(result, before[path]), path


@pytest.mark.parametrize("merge_mode", ["concat", "sum"])
def test_bidirectional_sees_a_write_into_either_direction(merge_mode):
    x, mask, _ = _inputs()
    layer = fl.Bidirectional(fl.LSTM(UNITS, seed=2, dtype="float64", return_sequences=True),
                             merge_mode=merge_mode)
    with fl.no_grad():
        layer(x, mask=mask)
    for sublayer in (layer.forward_layer, layer.backward_layer):
        sublayer.params["kernel"] *= 0.5
    fresh = fl.Bidirectional(fl.LSTM(UNITS, seed=9, dtype="float64", return_sequences=True),
                             merge_mode=merge_mode)
    fresh.build(FEATURES)
    fresh.set_weights(layer.get_weights())
    with fl.no_grad():
        np.testing.assert_array_equal(layer(x, mask=mask), fresh(x, mask=mask))


def test_unchanged_weights_are_packed_once():
    layer = _layer()
    x, mask, _ = _inputs()
    with fl.no_grad():
        layer(x)
        kept = layer._served_lstm
        layer(x, mask=mask)
        fl.Sequential([layer]).predict(x, verbose=0)
        assert layer._served_lstm is kept
        layer.params["bias"][0] += 1.0
        layer(x)
    assert layer._served_lstm is not kept


def test_a_nan_weight_is_kept_as_it_is():
    # Bits are compared, not values: a NaN equals its own copy, so the
    # packed copy is kept (and the outputs carry the NaN, as a fresh layer's).
    layer = _layer()
    layer.params["kernel"][0, 0] = np.nan
    x = _inputs()[0]
    with fl.no_grad():
        first = layer(x)
        kept = layer._served_lstm
        second = layer(x)
    assert layer._served_lstm is kept
    assert np.isnan(first).any()
    np.testing.assert_array_equal(first, second)


@pytest.mark.parametrize("go_backwards", [False, True])
def test_a_pipelined_stack_reads_its_layers_packed_weights(monkeypatch, go_backwards):
    # A model's stack of LSTMs runs pipelined at inference on the layers'
    # kept copies: the same bits as the functional pipelined call, and a
    # change of either layer's weights is seen.
    monkeypatch.setattr(fl._plan, "pipeline_stack", lambda *args: True)
    x, mask, _ = _inputs()
    lower = fl.LSTM(UNITS, seed=1, dtype="float64", return_sequences=True,
                    go_backwards=go_backwards)
    upper = fl.LSTM(5, seed=2, dtype="float64", return_sequences=True,
                    recurrent_activation="hard_sigmoid")
    model = fl.Sequential([lower, upper])
    fl.set_num_threads(2)
    try:
        for change in range(3):
            if change == 1:
                upper.params["recurrent_kernel"][0, 0] += 0.5
            if change == 2:
                lower.set_weights([w * 0.9 for w in lower.get_weights()])
            with fl.no_grad():
                outputs = model(x, mask=mask)
            assert model._calls[0][2]._pipelined
            expected = fl.lstm_stack_forward(
                x, [lower.kernel_weights, upper.kernel_weights], mask=mask,
                go_backwards=[go_backwards, False],
                recurrent_activation=["sigmoid", "hard_sigmoid"], return_cache=False,
                pipelined=True)[0]
            np.testing.assert_array_equal(outputs, expected)
    finally:
        fl.set_num_threads(None)
