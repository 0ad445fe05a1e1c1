"""Tests of fastlstm.callbacks: Keras' hooks in Keras' order, History,
EarlyStopping (stopping and restoring the best weights), ModelCheckpoint
(saving what it promises, formatted paths, round trips)."""
import os
import warnings

import numpy as np
import pytest

import fastlstm as fl
from fastlstm.callbacks import Callback, EarlyStopping, History, ModelCheckpoint
from fastlstm.layers import Dense
from fastlstm.models import Sequential
from fastlstm.optimizers import Adam


def data(count=48, seed=0):
    x = np.random.default_rng(seed).standard_normal((count, 5, 2))
    return x, x[:, :, :1].sum(axis=1)


def model_for(seed=0, learning_rate=0.02):
    model = Sequential([fl.LSTM(6, seed=seed, dtype="float64"),
                        Dense(1, seed=seed + 1, dtype="float64")], seed=seed)
    model.compile(optimizer=Adam(learning_rate), loss="mse", metrics=["mae"])
    return model


class Recorder(Callback):
    """Keeps every hook call and a copy of the weights at each epoch's end."""

    def __init__(self):
        super().__init__()
        self.calls = []
        self.weights = []

    def __getattribute__(self, name):
        if name.startswith("on_"):
            calls = object.__getattribute__(self, "calls")
            weights = object.__getattribute__(self, "weights")

            def hook(*args):
                calls.append((name,) + tuple(a if not isinstance(a, dict) else dict(a)
                                             for a in args))
                if name == "on_epoch_end":
                    weights.append(self.model.get_weights())
            return hook
        return object.__getattribute__(self, name)


class ScriptedModel:
    """Stands in for a model: its weights are the epoch number."""

    def __init__(self):
        self.stop_training = False
        self.metrics = []
        self.weights = None
        self.saved = []

    def get_weights(self):
        return [np.array(self.weights)]

    def set_weights(self, weights):
        self.weights = float(weights[0])

    def save_weights(self, path):
        self.saved.append((path, self.weights))


def drive(callback, values, monitor="val_loss"):
    """Run ``callback`` over epochs whose ``monitor`` takes ``values``; the
    model's weights at the end of epoch k are k. Returns the model and the
    number of epochs run."""
    model = ScriptedModel()
    callback.set_model(model)
    callback.on_train_begin()
    epochs = 0
    for epoch, value in enumerate(values):
        model.weights = float(epoch)
        callback.on_epoch_end(epoch, {monitor: value})
        epochs += 1
        if model.stop_training:
            break
    callback.on_train_end()
    return model, epochs


# -- hooks ------------------------------------------------------------------------

def test_fit_calls_keras_hooks_in_order():
    recorder = Recorder()
    x, y = data(24)
    model_for().fit(x, y, batch_size=12, epochs=2, validation_data=data(8, seed=1),
                    callbacks=[recorder], verbose=0)
    names = [call[0] for call in recorder.calls]
    epoch = ["on_epoch_begin", "on_train_batch_begin", "on_train_batch_end",
             "on_train_batch_begin", "on_train_batch_end", "on_test_begin",
             "on_test_batch_begin", "on_test_batch_end", "on_test_end", "on_epoch_end"]
    assert names == ["on_train_begin"] + epoch + epoch + ["on_train_end"]
    batch_end = recorder.calls[3]
    assert batch_end[1] == 0 and set(batch_end[2]) == {"loss", "mae"}
    epoch_end = recorder.calls[10]
    assert epoch_end[1] == 0 and set(epoch_end[2]) == {"loss", "mae", "val_loss", "val_mae"}
    assert recorder.params == {"epochs": 2, "steps": 2, "verbose": 0}


def test_evaluate_and_predict_call_their_hooks():
    recorder = Recorder()
    model = model_for()
    x, y = data(10)
    model.evaluate(x, y, batch_size=5, callbacks=[recorder], verbose=0)
    model.predict(x, batch_size=10, callbacks=[recorder], verbose=0)
    assert [c[0] for c in recorder.calls] == [
        "on_test_begin", "on_test_batch_begin", "on_test_batch_end", "on_test_batch_begin",
        "on_test_batch_end", "on_test_end", "on_predict_begin", "on_predict_batch_begin",
        "on_predict_batch_end", "on_predict_end"]


def test_history_records_every_epoch():
    x, y = data()
    history = model_for().fit(x, y, batch_size=16, epochs=3, validation_split=0.25, verbose=0)
    assert isinstance(history, History) and history.epoch == [0, 1, 2]
    assert set(history.history) == {"loss", "mae", "val_loss", "val_mae"}
    assert all(len(values) == 3 for values in history.history.values())


def test_callbacks_must_be_callback_objects():
    x, y = data(8)
    with pytest.raises(TypeError, match=r"callbacks\[0\] must be a fastlstm.callbacks.Callback"):
        model_for().fit(x, y, callbacks=[lambda logs: None], verbose=0)
    with pytest.raises(TypeError, match="callbacks must be a list"):
        model_for().fit(x, y, callbacks=EarlyStopping(), verbose=0)


# -- EarlyStopping -------------------------------------------------------------------

def test_early_stopping_waits_patience_epochs_after_the_best():
    callback = EarlyStopping(patience=2)
    model, epochs = drive(callback, [1.0, 0.5, 0.6, 0.7, 0.4])
    assert epochs == 4 and callback.stopped_epoch == 3 and model.stop_training
    assert callback.best == 0.5 and callback.best_epoch == 1


def test_early_stopping_min_delta_and_max_mode():
    callback = EarlyStopping(patience=1, min_delta=0.1)
    _, epochs = drive(callback, [1.0, 0.95, 0.5])
    assert epochs == 2
    callback = EarlyStopping(monitor="val_accuracy", patience=1)
    _, epochs = drive(callback, [0.5, 0.6, 0.7, 0.65, 0.8], monitor="val_accuracy")
    assert epochs == 4 and callback.best == 0.7


def test_early_stopping_baseline_must_be_beaten():
    values = [0.5, 0.4, 0.45, 0.42, 0.05]
    _, epochs = drive(EarlyStopping(patience=2, baseline=0.1), values)
    assert epochs == 3
    _, epochs = drive(EarlyStopping(patience=2), values)
    assert epochs == 4


def test_restore_best_weights_restores_the_best_epoch():
    callback = EarlyStopping(patience=2, restore_best_weights=True)
    model, _ = drive(callback, [1.0, 0.3, 0.6, 0.7, 0.9])
    assert model.weights == 1.0
    # Keras 3 restores at the end of training even without stopping early.
    model, epochs = drive(EarlyStopping(patience=10, restore_best_weights=True), [1.0, 0.2, 0.5])
    assert epochs == 3 and model.weights == 1.0


def test_restore_best_weights_in_fit_keeps_the_best_validation_epoch():
    recorder = Recorder()
    x, y = data()
    model = model_for(learning_rate=0.05)
    stopper = EarlyStopping(patience=3, restore_best_weights=True)
    history = model.fit(x, y, batch_size=8, epochs=25, validation_data=data(16, seed=1),
                        callbacks=[stopper, recorder], verbose=0)
    best = int(np.argmin(history.history["val_loss"]))
    assert stopper.best_epoch == best
    for restored, recorded in zip(model.get_weights(), recorder.weights[best]):
        np.testing.assert_array_equal(restored, recorded)
    assert model.evaluate(*data(16, seed=1), batch_size=8, verbose=0)[0] == pytest.approx(
        min(history.history["val_loss"]), rel=1e-12)


def test_missing_monitor_warns_and_does_nothing():
    callback = EarlyStopping(monitor="val_loss", patience=0)
    with pytest.warns(UserWarning, match="monitors 'val_loss', which is not in the logs"):
        _, epochs = drive(callback, [1.0, 2.0], monitor="loss")
    assert epochs == 2


def test_early_stopping_arguments_are_checked():
    with pytest.raises(ValueError, match="mode must be 'auto', 'min' or 'max'"):
        EarlyStopping(mode="up")
    with pytest.raises(TypeError, match="patience must be a non-negative int"):
        EarlyStopping(patience=1.5)
    with pytest.raises(TypeError, match="restore_best_weights must be True or False"):
        EarlyStopping(restore_best_weights="yes")


# -- ModelCheckpoint -------------------------------------------------------------------

def test_checkpoint_saves_every_epoch_with_formatted_paths(tmp_path):
    pattern = str(tmp_path / "ckpt-{epoch:02d}-{loss:.3f}.npz")
    recorder = Recorder()
    x, y = data()
    model = model_for()
    history = model.fit(x, y, batch_size=16, epochs=3,
                        callbacks=[ModelCheckpoint(pattern, monitor="loss"), recorder],
                        verbose=0)
    names = sorted(os.listdir(tmp_path))
    expected = [f"ckpt-{epoch + 1:02d}-{loss:.3f}.npz"
                for epoch, loss in enumerate(history.history["loss"])]
    assert names == expected
    restored = model_for(seed=9)
    restored.build((None, 5, 2))
    restored.load_weights(tmp_path / names[1])
    for a, b in zip(restored.get_weights(), recorder.weights[1]):
        np.testing.assert_array_equal(a, b)


def test_checkpoint_save_best_only_keeps_the_best_weights(tmp_path):
    path = tmp_path / "best.npz"
    recorder = Recorder()
    x, y = data()
    model = model_for(learning_rate=0.05)
    history = model.fit(x, y, batch_size=8, epochs=12, validation_data=data(16, seed=1),
                        callbacks=[ModelCheckpoint(path, save_best_only=True), recorder],
                        verbose=0)
    best = int(np.argmin(history.history["val_loss"]))
    fresh = model_for(seed=4)
    fresh.build((None, 5, 2))
    fresh.load_weights(path)
    for a, b in zip(fresh.get_weights(), recorder.weights[best]):
        np.testing.assert_array_equal(a, b)
    assert os.listdir(tmp_path) == ["best.npz"]


def test_checkpoint_saves_only_on_strict_improvement():
    callback = ModelCheckpoint("w.npz", save_best_only=True)
    model, _ = drive(callback, [1.0, 0.5, 0.5, 0.7, 0.2])
    assert [weights for _, weights in model.saved] == [0.0, 1.0, 4.0]
    callback = ModelCheckpoint("w.npz", save_best_only=True, initial_value_threshold=0.4)
    model, _ = drive(callback, [1.0, 0.5, 0.3])
    assert [weights for _, weights in model.saved] == [2.0]


def test_checkpoint_verbose_says_what_it_did(capsys):
    drive(ModelCheckpoint("w.npz", save_best_only=True, verbose=1), [1.0, 2.0])
    out = capsys.readouterr().out
    assert "Epoch 1: val_loss improved from inf to 1.00000, saving model to w.npz" in out
    assert "Epoch 2: val_loss did not improve from 1.00000" in out


def test_checkpoint_arguments_are_checked(tmp_path):
    with pytest.raises(ValueError, match="filepath must end in '.npz'"):
        ModelCheckpoint(tmp_path / "w.h5")
    with pytest.raises(ValueError, match="save_weights_only must be True"):
        ModelCheckpoint("w.npz", save_weights_only=False)
    with pytest.raises(ValueError, match="save_freq must be 'epoch'"):
        ModelCheckpoint("w.npz", save_freq=10)
    callback = ModelCheckpoint("w-{val_accuracy}.npz")
    with pytest.raises(ValueError, match="has a field the logs do not fill"):
        drive(callback, [1.0])


def test_checkpoint_creates_its_folder_when_fit_starts(tmp_path):
    path = tmp_path / "runs" / "one" / "w.npz"
    seen = []
    probe = Callback()
    probe.on_epoch_begin = lambda epoch, logs=None: seen.append(path.parent.is_dir())
    x, y = data()
    model = model_for()
    model.fit(x, y, batch_size=16, epochs=2, callbacks=[ModelCheckpoint(path), probe],
              verbose=0)
    assert seen == [True, True] and os.listdir(path.parent) == ["w.npz"]
    # A folder with fields is made at each save.
    pattern = str(tmp_path / "epoch-{epoch}" / "w.npz")
    model.fit(x, y, batch_size=16, epochs=2, callbacks=[ModelCheckpoint(pattern)], verbose=0)
    assert all((tmp_path / f"epoch-{k}" / "w.npz").is_file() for k in (1, 2))


def test_checkpoint_path_that_cannot_be_written_fails_before_training(tmp_path):
    (tmp_path / "a_file").write_text("not a folder")
    (tmp_path / "folder.npz").mkdir()
    x, y = data()
    for filepath, error, match in (
            (tmp_path / "a_file" / "w.npz", OSError,
             r"cannot create the folder .*a_file' of filepath .*a_file/w.npz'"),
            (tmp_path / "folder.npz", IsADirectoryError, r"filepath .*folder.npz' is a folder")):
        recorder = Recorder()
        with pytest.raises(error, match=match):
            model_for().fit(x, y, epochs=1, callbacks=[recorder, ModelCheckpoint(filepath)],
                            verbose=0)
        assert [call[0] for call in recorder.calls] == ["on_train_begin"]


def test_save_weights_names_the_path_asked_for_not_a_temporary_file(tmp_path):
    model = model_for()
    model.build((None, 5, 2))
    path = tmp_path / "missing" / "w.npz"
    with pytest.raises(FileNotFoundError,
                       match=r"cannot write filepath .*missing/w.npz': ") as info:
        model.save_weights(path)
    assert ".tmp" not in str(info.value)


def test_checkpoint_without_its_monitor_warns(tmp_path):
    callback = ModelCheckpoint(tmp_path / "w.npz", save_best_only=True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model, _ = drive(callback, [1.0], monitor="loss")
    assert model.saved == [] and "not in the logs" in str(caught[0].message)
