"""What a Keras user reaches for next: layer names and ``trainable``, the
Masking and LayerNormalization layers, and the stacking error.

Keras itself is not needed: outputs and gradients are checked against NumPy
formulas and finite differences, names against Keras' documented defaults.
"""
import re

import numpy as np
import pytest

import fastlstm as fl
from fastlstm.layers import Dense, Dropout, Embedding
from fastlstm.models import Sequential, load_model
from gradcheck import assert_gradient, inner, random_like


def _number(name, prefix):
    """The counter of a default name: ``lstm`` -> 0, ``lstm_3`` -> 3."""
    match = re.fullmatch(rf"{prefix}(?:_(\d+))?", name)
    assert match, name
    return int(match.group(1) or 0)


# -- names ----------------------------------------------------------------------------

@pytest.mark.parametrize("make, prefix", [
    (lambda: fl.LSTM(2), "lstm"), (lambda: Dense(2), "dense"),
    (lambda: Embedding(5, 2), "embedding"), (lambda: Dropout(0.1), "dropout"),
    (lambda: fl.Masking(), "masking"), (lambda: fl.LayerNormalization(), "layer_normalization"),
    (lambda: fl.Bidirectional(fl.LSTM(2)), "bidirectional")])
def test_default_names_count_up_per_class_as_keras(make, prefix):
    first, second = make(), make()
    assert _number(second.name, prefix) == _number(first.name, prefix) + 1


def test_bidirectional_names_its_directions_after_the_wrapped_layer():
    bi = fl.Bidirectional(fl.LSTM(3, name="encoder"), name="both_ways")
    assert (bi.name, bi.forward_layer.name, bi.backward_layer.name) == (
        "both_ways", "forward_encoder", "backward_encoder")


def test_bad_names_are_rejected():
    with pytest.raises(ValueError, match="name must not contain '/'"):
        fl.LSTM(2, name="a/b")
    with pytest.raises(TypeError, match="name must be a non-empty str or None, got int 3"):
        Dense(2, name=3)
    with pytest.raises(TypeError, match="trainable must be True or False"):
        fl.LSTM(2, trainable="no")


def test_sequential_rejects_two_layers_with_one_name():
    with pytest.raises(ValueError, match="second layer named 'x'"):
        Sequential([Dense(2, name="x"), Dense(2, name="x")])


def test_name_and_trainable_are_in_the_config_and_survive_saving(tmp_path):
    model = Sequential([fl.LSTM(3, return_sequences=True, name="encoder", trainable=False,
                                seed=0),
                        fl.Bidirectional(fl.LSTM(2, seed=1), name="middle"),
                        fl.LayerNormalization(name="norm"), Dense(1, seed=2)])
    model.layers[1].trainable = False
    config = model.layers[0].get_config()
    assert config["name"] == "encoder" and config["trainable"] is False
    assert fl.LSTM.from_config(config).get_config() == config
    model.build((None, 4, 2))
    model.save(tmp_path / "m.fastlstm")
    restored = load_model(tmp_path / "m.fastlstm")
    assert [layer.name for layer in restored.layers] == [layer.name for layer in model.layers]
    assert [layer.trainable for layer in restored.layers] == [False, False, True, True]
    assert not restored.layers[1].forward_layer.trainable
    # Weight files keep their position keys, so files saved before names existed still load.
    assert sorted(model.params)[0].startswith("layer_0/")


def test_summary_names_layers_and_counts_frozen_weights(capsys):
    model = Sequential([Embedding(20, 8, name="tokens"), fl.LSTM(4, name="encoder"),
                        Dense(3)])
    model.build((None, 5))
    model.layers[0].trainable = False
    model.summary()
    out = capsys.readouterr().out
    lstm_params = 8 * 16 + 4 * 16 + 16
    assert re.search(r"tokens \(Embedding\)\s+\(None, 5, 8\)\s+160\n", out)
    assert re.search(rf"encoder \(LSTM\)\s+\(None, 4\)\s+{lstm_params}\n", out)
    assert re.search(rf"{model.layers[2].name} \(Dense\)\s+\(None, 3\)\s+15\n", out)
    assert f"Trainable params: {lstm_params + 15}\n" in out
    assert "Non-trainable params: 160\n" in out
    model.trainable = False
    assert all(not layer.trainable for layer in model.layers)
    assert model.trainable_weights == [] and len(model.non_trainable_weights) == 6
    assert not Sequential.from_config(model.get_config()).trainable


# -- trainable ----------------------------------------------------------------------------

def _classifier(trainable_encoder=True, seed=0):
    return Sequential([fl.LSTM(5, return_sequences=True, seed=seed, dtype="float64",
                               trainable=trainable_encoder),
                       fl.Bidirectional(fl.LSTM(3, seed=seed + 1, dtype="float64")),
                       Dense(2, seed=seed + 2, dtype="float64")], seed=seed)


def _regression(count=40, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((count, 6, 3))
    return x, np.stack([x.sum(axis=(1, 2)), x[:, -1, 0]], axis=1)


@pytest.mark.parametrize("optimizer", ["adam", "sgd", "rmsprop", "adamw"])
def test_a_frozen_layer_is_bitwise_unchanged_by_fit_while_the_others_train(optimizer):
    x, y = _regression()
    model = _classifier(trainable_encoder=False)
    model.build((None, 6, 3))
    before = [w.copy() for w in model.get_weights()]
    model.compile(optimizer, "mse")
    model.fit(x, y, batch_size=8, epochs=2, verbose=0)
    after = model.get_weights()
    for k in range(3):
        assert np.array_equal(before[k], after[k])
    for k in range(3, len(after)):
        assert not np.array_equal(before[k], after[k])


def test_backward_stops_at_the_lowest_layer_that_trains():
    x, y = _regression()
    model = _classifier(trainable_encoder=False)
    model.compile("adam", "mse")
    model.fit(x, y, batch_size=8, epochs=1, verbose=0)
    # The frozen encoder at the bottom ran no backward: it has no gradients at all.
    assert model.layers[0].grads == {} and model.layers[1].grads != {}


def test_freezing_between_fits_keeps_the_optimizer_paired_with_its_weights():
    x, y = _regression()
    model = _classifier()
    model.compile("adam", "mse")
    model.fit(x, y, batch_size=8, epochs=1, verbose=0)
    model.layers[1].trainable = False
    frozen = [w.copy() for w in model.layers[1].get_weights()]
    model.fit(x, y, batch_size=8, epochs=1, verbose=0)
    assert all(np.array_equal(a, b) for a, b in zip(frozen, model.layers[1].get_weights()))
    assert not model.layers[1].forward_layer.trainable
    model.layers[1].trainable = True
    model.fit(x, y, batch_size=8, epochs=1, verbose=0)
    assert not np.array_equal(frozen[0], model.layers[1].get_weights()[0])


def test_a_frozen_model_changes_no_weight():
    x, y = _regression()
    model = _classifier()
    model.build((None, 6, 3))
    before = model.get_weights()
    model.trainable = False
    model.compile("sgd", "mse")
    model.fit(x, y, epochs=1, verbose=0)
    model.train_on_batch(x[:4], y[:4])
    assert all(np.array_equal(a, b) for a, b in zip(before, model.get_weights()))


# -- the stacking error -----------------------------------------------------------------

def test_stacking_without_return_sequences_names_both_layers_and_the_fix():
    x, _ = _regression(8)
    model = Sequential([fl.LSTM(4, name="first"), fl.LSTM(3, name="second")])
    with pytest.raises(ValueError, match=r"layer 'second' \(LSTM\) needs sequences .* the "
                                         r"layer before it, 'first' \(LSTM\), returns only its "
                                         r"last output, shape \(8, 4\): give that layer "
                                         r"return_sequences=True"):
        model.predict(x, verbose=0)
    with pytest.raises(ValueError, match=r"layer 'alone' \(LSTM\): x must have shape \(batch, "
                                         r"timesteps, features\).*return_sequences=True"):
        fl.LSTM(3, name="alone")(np.ones((8, 4)))
    dense = Dense(2, name="head")
    dense(np.ones((3, 4)))
    with pytest.raises(ValueError, match=r"layer 'head' \(Dense\): x has 5 features"):
        dense(np.ones((3, 5)))


# -- Masking ------------------------------------------------------------------------------

def _padded(seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((4, 6, 3))
    x[0, 4:] = -1.0
    x[2, 1] = -1.0
    x[3, :2] = -1.0
    x[1, 2, 0] = -1.0  # one feature equal to the mask value does not mask the step
    return x


def test_masking_masks_steps_whose_features_all_equal_the_mask_value():
    x = _padded()
    layer = fl.Masking(mask_value=-1.0, dtype="float64")
    kept = np.any(x != -1.0, axis=-1)
    assert np.array_equal(layer.compute_mask(x), kept)
    assert kept.sum() == 24 - 5
    y = layer(x)
    assert np.array_equal(y, np.where(kept[..., None], x, 0.0))
    assert x[0, 4, 0] == -1.0  # the input is untouched


def test_masking_feeds_the_lstm_as_an_explicit_mask_does():
    x = _padded()
    kept = np.any(x != -1.0, axis=-1)
    model = Sequential([fl.Masking(-1.0, dtype="float64"),
                        fl.LSTM(4, return_sequences=True, seed=3, dtype="float64")])
    lstm = fl.LSTM(4, return_sequences=True, seed=3, dtype="float64")
    expected = lstm(np.where(kept[..., None], x, 0.0), mask=kept)
    assert np.array_equal(model.predict(x, verbose=0), expected)
    assert np.array_equal(model(x), expected) and np.array_equal(model.output_mask, kept)


def test_masking_backward_zeroes_masked_steps_and_checks_against_differences():
    x = _padded()
    layer = fl.Masking(-1.0, dtype="float64")
    upstream = random_like(layer(x), np.random.default_rng(1))
    dx = layer.backward(upstream)
    kept = np.any(x != -1.0, axis=-1)
    assert np.array_equal(dx, upstream * kept[..., None])
    layer(x)
    assert layer.backward(upstream, input_gradient=False) is None
    # Finite differences at kept steps: moving a masked step's feature would unmask it.
    probe = x.copy()
    eps = 1e-6
    for index in [(0, 0, 1), (1, 2, 0), (1, 2, 2), (2, 0, 2), (3, 5, 1)]:
        assert kept[index[:2]]
        probe[index] += eps
        plus = inner(fl.Masking(-1.0, dtype="float64")(probe), upstream)
        probe[index] -= 2 * eps
        minus = inner(fl.Masking(-1.0, dtype="float64")(probe), upstream)
        probe[index] += eps
        assert dx[index] == pytest.approx((plus - minus) / (2 * eps), rel=1e-6)


def test_masking_trains_in_a_model_with_a_masked_loss():
    x = _padded()
    y = np.random.default_rng(2).standard_normal((4, 6, 2))
    model = Sequential([fl.Masking(-1.0), fl.LSTM(4, return_sequences=True, seed=0),
                        Dense(2, seed=1)])
    model.compile("adam", "mse")
    loss = model.fit(x, y, epochs=3, verbose=0).history["loss"]
    assert loss[-1] < loss[0]


# -- LayerNormalization -------------------------------------------------------------------

def _layer_norm(x, gamma, beta, epsilon=1e-3):
    mean = x.mean(axis=-1, keepdims=True)
    variance = ((x - mean) ** 2).mean(axis=-1, keepdims=True)
    return gamma * (x - mean) / np.sqrt(variance + epsilon) + beta


def test_layer_normalization_matches_the_formula_with_keras_defaults():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, 5, 4)) * 3 + 1
    layer = fl.LayerNormalization(dtype="float64")
    y = layer(x)
    assert layer.epsilon == 1e-3 and layer._weight_names() == ("gamma", "beta")
    assert np.allclose(y, _layer_norm(x, 1.0, 0.0), rtol=1e-12, atol=1e-12)
    gamma, beta = rng.standard_normal(4), rng.standard_normal(4)
    layer.set_weights([gamma, beta])
    assert np.allclose(layer(x), _layer_norm(x, gamma, beta), rtol=1e-12, atol=1e-12)
    built = fl.LayerNormalization(epsilon=0.5, dtype="float64")
    built.set_weights([gamma, beta])
    assert built.input_dim == 4
    assert np.allclose(built(x), _layer_norm(x, gamma, beta, 0.5), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("center, scale", [(True, True), (False, True), (True, False),
                                           (False, False)])
def test_layer_normalization_gradients_match_finite_differences(center, scale):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 3, 5))
    layer = fl.LayerNormalization(center=center, scale=scale, dtype="float64")
    layer.build(5)
    for array in layer.params.values():
        array[...] = rng.standard_normal(array.shape)
    upstream = random_like(layer(x), rng)
    dx = layer.backward(upstream)

    def loss():
        return inner(layer(x), upstream)

    assert_gradient(dx, loss, x, "x", count=30)
    for name, array in layer.params.items():
        assert_gradient(layer.grads[name], loss, array, name)
    # Without the input's gradient (a model's first layer) the weights' are the same.
    grads = {name: grad.copy() for name, grad in layer.grads.items()}
    layer(x)
    assert layer.backward(upstream, input_gradient=False) is None
    assert all(np.array_equal(grads[name], layer.grads[name]) for name in grads)
    assert sorted(layer.params) == sorted(
        [n for n, used in (("gamma", scale), ("beta", center)) if used])


def test_layer_normalization_arguments_are_checked():
    with pytest.raises(ValueError, match="axis must be -1"):
        fl.LayerNormalization(axis=1)
    with pytest.raises(ValueError, match="rms_scaling must be False"):
        fl.LayerNormalization(rms_scaling=True)
    with pytest.raises(TypeError, match="does not support the Keras argument gamma_regularizer"):
        fl.LayerNormalization(gamma_regularizer="l2")
    layer = fl.LayerNormalization()
    layer(np.ones((2, 3)))
    with pytest.raises(ValueError, match=r"'layer_normalization.*' \(LayerNormalization\): x "
                                         r"has 4 features"):
        layer(np.ones((2, 4)))


def test_layer_normalization_between_lstms_trains():
    x, y = _regression(32)
    model = Sequential([fl.LSTM(6, return_sequences=True, seed=0), fl.LayerNormalization(),
                        fl.LSTM(4, seed=1), Dense(2, seed=2)])
    model.compile("adam", "mse")
    model.build((None, 6, 3))
    gamma = model.layers[1].params["gamma"].copy()
    loss = model.fit(x, y, batch_size=8, epochs=4, verbose=0).history["loss"]
    assert loss[-1] < loss[0]
    assert not np.array_equal(gamma, model.layers[1].params["gamma"])
