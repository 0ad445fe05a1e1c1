"""Tests of fastlstm.models.Sequential: training reaches a stated quality on
generated tasks in seconds, masks travel as in Keras, the progress output
has Keras' format, weights files round-trip and bad ones change nothing,
and training is reproducible bit for bit."""
import copy
import os
import re
import sys
import warnings

import numpy as np
import pytest

import fastlstm as fl
from fastlstm import losses
from fastlstm.callbacks import Callback
from fastlstm.layers import Dense, Dropout, Embedding
from fastlstm.models import Sequential
from fastlstm.optimizers import SGD, Adam
from gradcheck import assert_gradient


def regression_data(count=256, seed=0):
    """Sequences (count, 6, 2); the target is the sum of the first feature."""
    x = np.random.default_rng(seed).standard_normal((count, 6, 2))
    return x, x[:, :, :1].sum(axis=1)


def small_regressor(seed=0, dtype="float64", **compile_args):
    model = Sequential([fl.LSTM(12, seed=seed, dtype=dtype), Dense(1, seed=seed + 1, dtype=dtype)],
                       seed=seed)
    compile_args.setdefault("optimizer", Adam(0.02))
    compile_args.setdefault("loss", "mse")
    model.compile(**compile_args)
    return model


def motif_data(count, seed, length=12):
    """Right-padded digit sequences; label 1 when they contain 3 1 4."""
    rng = np.random.default_rng(seed)
    x = np.zeros((count, length), dtype=np.int64)
    y = np.zeros((count, 1))
    for k in range(count):
        size = rng.integers(5, length + 1)
        sequence = rng.integers(1, 10, size)
        text = "".join(map(str, sequence))
        if k % 2 == 0:
            start = rng.integers(0, size - 2)
            sequence[start:start + 3] = (3, 1, 4)
        else:
            while "314" in text:
                sequence = rng.integers(1, 10, size)
                text = "".join(map(str, sequence))
        y[k] = "314" in "".join(map(str, sequence))
        x[k, :size] = sequence
    return x, y


# -- training reaches a stated quality -----------------------------------------------

def test_fit_learns_a_regression_to_a_tenth_of_the_variance():
    x, y = regression_data()
    model = small_regressor(metrics=["mae"])
    history = model.fit(x, y, batch_size=32, epochs=40, verbose=0)
    x_test, y_test = regression_data(128, seed=1)
    mse, mae = model.evaluate(x_test, y_test, verbose=0)
    assert mse < 0.1 * y_test.var()
    assert history.history["loss"][-1] < 0.2 * history.history["loss"][0]


def test_fit_learns_a_masked_sequence_classification():
    x, y = motif_data(800, seed=0)
    x_test, y_test = motif_data(300, seed=1)
    model = Sequential([Embedding(10, 8, mask_zero=True, seed=0), fl.LSTM(16, seed=1),
                        Dense(1, seed=2)], seed=0)
    model.compile(optimizer=Adam(0.02), loss=losses.BinaryCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    model.fit(x, y, batch_size=32, epochs=12, verbose=0)
    _, accuracy = model.evaluate(x_test, y_test, verbose=0)
    assert accuracy >= 0.9


def test_fit_learns_per_step_targets_with_sparse_crossentropy():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 5, (400, 8))
    y = np.concatenate([np.zeros((400, 1), int), x[:, :-1]], axis=1)  # the previous token
    model = Sequential([Embedding(5, 8, seed=0), fl.LSTM(16, return_sequences=True, seed=1),
                        Dense(5, seed=2)], seed=0)
    model.compile(optimizer=Adam(0.02),
                  loss=losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    history = model.fit(x, y, batch_size=32, epochs=10, verbose=0)
    assert history.history["accuracy"][-1] >= 0.95
    assert model.predict(x[:2], verbose=0).shape == (2, 8, 5)


# -- masks ----------------------------------------------------------------------

def masked_model(return_sequences=False, seed=0):
    layers = [Embedding(6, 4, mask_zero=True, seed=seed, dtype="float64"),
              fl.LSTM(5, return_sequences=return_sequences, seed=seed + 1, dtype="float64"),
              Dense(3, seed=seed + 2, dtype="float64")]
    return Sequential(layers, seed=seed)


def test_padding_does_not_change_the_prediction():
    model = masked_model()
    padded = model.predict(np.array([[3, 1, 4, 0, 0]]), verbose=0)
    np.testing.assert_allclose(padded, model.predict(np.array([[3, 1, 4]]), verbose=0),
                               rtol=1e-12)


def test_lstm_with_return_sequences_passes_the_mask_to_the_loss():
    model = masked_model(return_sequences=True)
    model.compile(optimizer="sgd",
                  loss=losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    x = np.array([[2, 5, 1, 0], [4, 0, 0, 0]])
    y = np.array([[0, 1, 2, 0], [1, 0, 0, 0]])
    changed = y.copy()
    changed[x == 0] = 2
    assert model.evaluate(x, y, verbose=0) == model.evaluate(x, changed, verbose=0)
    model(x)
    np.testing.assert_array_equal(model.output_mask, x != 0)


def test_lstm_without_return_sequences_ends_the_mask():
    model = masked_model()
    model(np.array([[1, 2, 0]]))
    assert model.output_mask is None


def test_backward_lstm_passes_the_mask_in_its_own_order():
    model = Sequential([Embedding(6, 4, mask_zero=True), fl.LSTM(3, return_sequences=True,
                                                                go_backwards=True)])
    x = np.array([[2, 5, 0, 0]])
    model(x)
    np.testing.assert_array_equal(model.output_mask, [[False, False, True, True]])


def test_build_takes_a_keras_input_shape():
    model = Sequential([fl.LSTM(3, return_sequences=True), Dense(2)])
    with pytest.raises(ValueError, match="input_shape must give the number of features"):
        model.build((None, 5, None))
    with pytest.raises(ValueError, match=r"input_shape must be a tuple \(batch, ...\)"):
        model.build(5)
    model.build((None, None, 4))
    assert model.built and model.layers[1].input_dim == 3


def test_input_shape_on_the_first_layer_builds_the_model_with_a_warning(capsys):
    with pytest.warns(UserWarning, match=r"layer 'first' \(LSTM\): input_shape .* prefer "
                                         r"building the model: model.build\(\(None, 10, 3\)\)"):
        model = Sequential([fl.LSTM(8, input_shape=(10, 3), name="first", seed=0),
                            Dense(1, seed=1)])
    assert model.built and [w.shape for w in model.get_weights()] == [
        (3, 32), (8, 32), (32,), (8, 1), (1,)]
    model.summary()
    assert "(None, 8)" in capsys.readouterr().out
    built = Sequential([fl.LSTM(8, seed=0), Dense(1, seed=1)])
    built.build((None, 10, 3))
    for a, b in zip(model.get_weights(), built.get_weights()):
        np.testing.assert_array_equal(a, b)
    # Built on add too, with timesteps left open, for every kind of first layer.
    with pytest.warns(UserWarning):
        added = Sequential()
        added.add(fl.Bidirectional(fl.LSTM(4), input_shape=(None, 3)))
        added.add(Dense(2))
        assert added.built
        assert Sequential([Embedding(9, 4, input_shape=(6,)), fl.LSTM(3)]).built
        assert Sequential([fl.Bidirectional(fl.LSTM(4, input_shape=(5, 2)))]).built
        assert Sequential([Dense(2, input_shape=(7,))]).built
    # A layer's config leaves it out, as Keras' does.
    assert "input_shape" not in model.layers[0].get_config()


def test_input_shape_builds_a_stateful_model_that_then_trains():
    with pytest.warns(UserWarning):
        model = Sequential([fl.LSTM(4, stateful=True, input_shape=(5, 3)), Dense(1)])
    assert model.layers[0].states is None
    model.compile(loss="mse")
    model.fit(np.ones((8, 5, 3)), np.ones((8, 1)), batch_size=8, shuffle=False, verbose=0)
    assert model.layers[0].states[0].shape == (8, 4)


@pytest.mark.parametrize("make, error, match", [
    (lambda: fl.LSTM(8, input_shape=3), TypeError,
     r"input_shape must be a tuple of positive ints or None.*got int 3; for one axis write \(3,\)"),
    (lambda: fl.LSTM(8, input_shape=(10, 0)), ValueError, r"input_shape .*got tuple \(10, 0\)"),
    (lambda: fl.LSTM(8, input_shape=(10, 3.0)), ValueError, "input_shape"),
    (lambda: Dense(8, input_shape=()), ValueError, "input_shape"),
    (lambda: fl.LSTM(8, input_shape=(3,)), ValueError,
     r"input_shape must be \(timesteps, features\), the shape of one sample without the batch"),
    (lambda: fl.LSTM(8, batch_input_shape=(4, 10, 3)), TypeError,
     r"batch_input_shape: Keras 3 dropped it; give input_shape"),
    (lambda: Dense(8, input_dim=3), TypeError, "input_dim: give input_shape"),
    (lambda: Sequential([fl.LSTM(8, input_shape=(10, None))]), ValueError,
     r"building the model for the input_shape=\(10, None\) of its first layer .*number of "
     r"features"),
], ids=["int", "zero", "float", "empty", "one-axis-lstm", "batch_input_shape", "input_dim",
        "no-features"])
def test_bad_input_shape_is_named(make, error, match):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        with pytest.raises(error, match=match):
            make()


def test_whole_model_gradients_match_finite_differences():
    model = Sequential([Embedding(6, 4, mask_zero=True, seed=0, dtype="float64"),
                        fl.LSTM(5, return_sequences=True, seed=1, dtype="float64"),
                        Dropout(0.5, dtype="float64"), Dense(3, seed=2, dtype="float64")])
    loss = losses.SparseCategoricalCrossentropy(from_logits=True)
    x = np.array([[2, 5, 1, 0], [4, 3, 0, 0]])
    y = np.array([[0, 1, 2, 0], [1, 2, 0, 0]])
    model.build((None, 4))
    snapshot = copy.deepcopy(model)
    outputs = model(x)
    _, d_outputs = loss.value_and_gradient(y, outputs, model.output_mask)
    model.backward(d_outputs)

    def value():
        with fl.no_grad():
            out = snapshot(x)
            return loss(y, out, snapshot.output_mask)

    for name, analytic in model.grads.items():
        assert_gradient(analytic, value, snapshot.params[name], name, rtol=1e-6, atol=1e-10)


# -- progress output ----------------------------------------------------------------------

def test_verbose_1_draws_a_progress_bar_in_place(capsys):
    x, y = regression_data(64)
    model = small_regressor(metrics=["mae"])
    model.fit(x, y, batch_size=16, epochs=2, validation_split=0.25, verbose=1)
    out = capsys.readouterr().out
    assert out.startswith("Epoch 1/2\n") and "\nEpoch 2/2\n" in out
    assert "\r1/3 [" in out and "ETA: " in out
    final = re.search(r"\r3/3 \[={30}\] - \d+s \d+(us|ms|s)/step - loss: \d+\.\d{4} "
                      r"- mae: \d+\.\d{4} - val_loss: \d+\.\d{4} - val_mae: \d+\.\d{4}\s*\n", out)
    assert final is not None, out


def test_verbose_2_prints_one_line_per_epoch(capsys):
    x, y = regression_data(64)
    small_regressor().fit(x, y, batch_size=16, epochs=3, verbose=2)
    lines = capsys.readouterr().out.splitlines()
    assert lines[0::2] == ["Epoch 1/3", "Epoch 2/3", "Epoch 3/3"]
    for line in lines[1::2]:
        assert re.fullmatch(r"4/4 - \d+s - \d+(us|ms|s)/step - loss: \d+\.\d{4}", line), line
    assert "\r" not in "".join(lines)


def test_verbose_0_and_auto(capsys, monkeypatch):
    x, y = regression_data(32)
    model = small_regressor()
    model.fit(x, y, epochs=1, verbose=0)
    model.predict(x, verbose=0)
    model.evaluate(x, y, verbose=0)
    assert capsys.readouterr().out == ""
    # "auto" draws the bar on a terminal, and writes one line per epoch elsewhere (Keras).
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True, raising=False)
    model.fit(x, y, epochs=1)
    assert "\r1/1 [" in capsys.readouterr().out
    monkeypatch.setattr(sys.stdout, "isatty", lambda: False, raising=False)
    model.fit(x, y, epochs=1)
    out = capsys.readouterr().out
    assert "\r" not in out and len(out.splitlines()) == 2
    with pytest.raises(ValueError, match="verbose must be 'auto', 0"):
        model.fit(x, y, verbose=3)


def test_summary_shows_shapes_and_parameter_counts(capsys):
    # Named as the rows were before layers had names (default names: test_keras_surface.py).
    model = Sequential([Embedding(20, 8, name="layer_0"),
                        fl.LSTM(16, return_sequences=True, name="layer_1"),
                        fl.Bidirectional(fl.LSTM(4), name="layer_2"), Dense(3, name="layer_3")])
    with pytest.raises(RuntimeError, match="not built yet"):
        model.summary()
    model.build((None, 10))
    model.summary()
    out = capsys.readouterr().out
    lstm_params = 8 * 64 + 16 * 64 + 64
    bidirectional_params = 2 * (16 * 16 + 4 * 16 + 16)
    assert re.search(r"layer_0 \(Embedding\)\s+\(None, 10, 8\)\s+160\n", out)
    assert re.search(rf"layer_1 \(LSTM\)\s+\(None, 10, 16\)\s+{lstm_params:,}\n", out)
    assert re.search(rf"layer_2 \(Bidirectional\)\s+\(None, 8\)\s+{bidirectional_params}\n", out)
    assert re.search(r"layer_3 \(Dense\)\s+\(None, 3\)\s+27\n", out)
    total = 160 + lstm_params + bidirectional_params + 27
    assert f"Total params: {total:,}\n" in out and model.count_params() == total


# -- evaluate and predict ----------------------------------------------------------------

def test_predict_runs_in_batches_and_matches_one_call():
    x, y = regression_data(10)
    model = small_regressor()
    batched = model.predict(x, batch_size=3, verbose=0)
    with fl.no_grad():
        whole = model(x)
    np.testing.assert_allclose(batched, whole, rtol=1e-12)


def test_evaluate_returns_loss_and_metrics():
    x, y = regression_data(20)
    model = small_regressor(metrics=["mae"])
    predictions = model.predict(x, verbose=0)
    loss, mae = model.evaluate(x, y, batch_size=20, verbose=0)
    assert loss == pytest.approx(np.mean((predictions - y) ** 2))
    assert mae == pytest.approx(np.mean(np.abs(predictions - y)))
    assert model.evaluate(x, y, verbose=0, return_dict=True).keys() == {"loss", "mae"}
    assert isinstance(small_regressor().evaluate(x, y, verbose=0), float)


def test_validation_split_holds_out_the_last_samples():
    x, y = regression_data(40)
    model = small_regressor()
    history = model.fit(x, y, batch_size=8, epochs=1, validation_split=0.25, verbose=0)
    held_out = model.evaluate(x[30:], y[30:], batch_size=8, verbose=0)
    assert history.history["val_loss"] == [pytest.approx(held_out, rel=1e-12)]


# -- weights files ------------------------------------------------------------------------

def trained_model(seed=0):
    x, y = regression_data(32)
    model = small_regressor(seed=seed)
    model.fit(x, y, epochs=1, verbose=0)
    return model


def test_weights_round_trip_through_npz(tmp_path):
    model = trained_model()
    path = tmp_path / "weights.npz"
    model.save_weights(path)
    with np.load(path) as archive:
        assert sorted(archive.files) == ["layer_0/bias", "layer_0/kernel",
                                         "layer_0/recurrent_kernel", "layer_1/bias",
                                         "layer_1/kernel"]
    other = small_regressor(seed=5)
    other.build((None, 6, 2))
    other.load_weights(str(path))
    x, _ = regression_data(8, seed=3)
    np.testing.assert_array_equal(other.predict(x, verbose=0), model.predict(x, verbose=0))
    assert os.listdir(tmp_path) == ["weights.npz"]


def test_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path, monkeypatch):
    model = trained_model()
    path = tmp_path / "weights.npz"
    model.save_weights(path)
    before = path.read_bytes()

    def broken_replace(source, target):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", broken_replace)
    model.layers[1].params["bias"] += 1.0
    with pytest.raises(OSError, match="disk full"):
        model.save_weights(path)
    assert path.read_bytes() == before and os.listdir(tmp_path) == ["weights.npz"]


def assert_load_fails_and_changes_nothing(model, path, message):
    before = model.get_weights()
    with pytest.raises(ValueError, match=message):
        model.load_weights(path)
    for old, new in zip(before, model.get_weights()):
        np.testing.assert_array_equal(old, new)


def test_corrupt_weights_file_is_named_and_changes_nothing(tmp_path):
    model = trained_model()
    garbage = tmp_path / "garbage.npz"
    garbage.write_bytes(b"not a zip file at all")
    assert_load_fails_and_changes_nothing(model, garbage, "is not a readable .npz weights file")
    trained_model(seed=3).save_weights(tmp_path / "good.npz")
    truncated = tmp_path / "truncated.npz"
    truncated.write_bytes((tmp_path / "good.npz").read_bytes()[:300])
    assert_load_fails_and_changes_nothing(model, truncated, "is not a readable .npz")
    single = tmp_path / "single.npz"
    with open(single, "wb") as stream:
        np.save(stream, np.ones(3))
    assert_load_fails_and_changes_nothing(model, single, "single array, not named weights")


def test_mismatched_weights_file_names_the_mismatch(tmp_path):
    model = trained_model()
    arrays = {name: array.copy() for name, array in model.params.items()}
    missing = dict(arrays)
    del missing["layer_0/bias"]
    np.savez(tmp_path / "missing.npz", **missing)
    assert_load_fails_and_changes_nothing(model, tmp_path / "missing.npz",
                                          "missing from the file: layer_0/bias")
    np.savez(tmp_path / "extra.npz", **arrays, **{"layer_2/kernel": np.ones(2)})
    assert_load_fails_and_changes_nothing(model, tmp_path / "extra.npz",
                                          "in the file but not in the model: layer_2/kernel")
    shaped = dict(arrays, **{"layer_1/kernel": np.ones((13, 1))})
    np.savez(tmp_path / "shape.npz", **shaped)
    assert_load_fails_and_changes_nothing(
        model, tmp_path / "shape.npz",
        re.escape("layer_1/kernel has shape (13, 1) in the file, the model's is (12, 1)"))


def test_weights_path_and_order_errors(tmp_path):
    model = small_regressor()
    with pytest.raises(RuntimeError, match="no weights yet"):
        model.save_weights(tmp_path / "w.npz")
    with pytest.raises(RuntimeError, match="no weights to load into yet"):
        model.load_weights(tmp_path / "w.npz")
    model.build((None, 6, 2))
    with pytest.raises(ValueError, match="must end in '.npz'"):
        model.save_weights(tmp_path / "w.h5")
    with pytest.raises(FileNotFoundError):
        model.load_weights(tmp_path / "absent.npz")
    model.save_weights(tmp_path / "w.npz")
    with pytest.raises(FileExistsError, match="overwrite=False"):
        model.save_weights(tmp_path / "w.npz", overwrite=False)


def test_set_weights_checks_every_shape_before_changing_anything():
    model = trained_model()
    weights = model.get_weights()
    bad = [w + 1 for w in weights]
    bad[-1] = np.ones(2)
    with pytest.raises(ValueError, match=r"weights\[4\] must have shape \(1,\)"):
        model.set_weights(bad)
    np.testing.assert_array_equal(model.get_weights()[0], weights[0])
    model.set_weights([w + 1 for w in weights])
    np.testing.assert_array_equal(model.get_weights()[0], weights[0] + 1)


# -- reproducibility --------------------------------------------------------------------

@pytest.fixture
def one_thread():
    fl.set_num_threads(1)
    yield
    fl.set_num_threads(None)


def reproducible_run(seed):
    x, y = motif_data(200, seed=0)
    model = Sequential([Embedding(10, 6, mask_zero=True, seed=seed, dtype="float64"),
                        fl.LSTM(8, return_sequences=True, dropout=0.2, seed=seed + 1,
                                dtype="float64"),
                        fl.LSTM(8, seed=seed + 2, dtype="float64"),
                        Dropout(0.3, seed=seed + 3, dtype="float64"),
                        Dense(1, seed=seed + 4, dtype="float64")], seed=seed)
    model.compile(optimizer=Adam(0.01), loss=losses.BinaryCrossentropy(from_logits=True))
    model.fit(x, y, batch_size=16, epochs=2, validation_split=0.2, verbose=0)
    return model.get_weights()


def test_same_seed_same_weights_bit_for_bit(one_thread):
    first, second = reproducible_run(7), reproducible_run(7)
    for a, b in zip(first, second):
        np.testing.assert_array_equal(a, b)
    other = reproducible_run(8)
    assert not all(np.array_equal(a, b) for a, b in zip(first, other))


# -- arguments and order ----------------------------------------------------------------

def test_training_before_compile_and_bad_data_are_named():
    x, y = regression_data(8)
    model = Sequential([fl.LSTM(2), Dense(1)])
    with pytest.raises(RuntimeError, match="call compile\\(\\) first"):
        model.fit(x, y)
    model.compile(loss="mse")
    with pytest.raises(ValueError, match="same number of samples .* got 8 and 7"):
        model.fit(x, y[:7])
    with pytest.raises(ValueError, match="validation_split must be in"):
        model.fit(x, y, validation_split=1.0)
    with pytest.raises(ValueError, match="validation_data must be a tuple"):
        model.fit(x, y, validation_data=(x, y, y[:, 0], y))
    with pytest.raises(TypeError, match="batch_size must be a positive int"):
        model.fit(x, y, batch_size=2.5)
    with pytest.raises(ValueError, match="loss must be given"):
        model.compile()


def test_stack_layers_must_return_one_array():
    with pytest.raises(ValueError, match="must return one array"):
        Sequential([fl.LSTM(4, return_state=True)])
    with pytest.raises(ValueError, match="must return one array"):
        Sequential([fl.Bidirectional(fl.LSTM(4), merge_mode=None)])
    with pytest.raises(TypeError, match="layer must be a fastlstm layer"):
        Sequential([np.tanh])


def test_a_callback_can_stop_training_mid_epoch():
    class StopAfterThree(Callback):
        def on_train_batch_end(self, batch, logs=None):
            if batch == 2:
                self.model.stop_training = True

    x, y = regression_data(64)
    model = small_regressor(optimizer=SGD(0.01))
    history = model.fit(x, y, batch_size=8, epochs=5, callbacks=[StopAfterThree()], verbose=0)
    assert history.epoch == [0] and model.optimizer.iterations == 3
