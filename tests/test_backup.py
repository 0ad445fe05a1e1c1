"""BackupAndRestore: a fit killed at any moment and started again ends with
bit for bit the weights, the History and the files of a fit never
interrupted, on one process and on two MPI ranks.

The subprocess tests run tests/backup/train.py, which sends itself SIGKILL
a random delay after a random batch (both drawn from a seeded generator, so
the same moments are tried every time), and launch it again until it
finishes. The
in-process tests interrupt fit by raising from a callback, which leaves
the backups as a kill would.
"""
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import fastlstm as fl
from fastlstm import callbacks
from launch import mpiexec, package_environment

SCRIPT = Path(__file__).resolve().parent / "backup" / "train.py"
# The last launch runs without a kill, so every test ends. The fit has 96
# batches (64 on each of two ranks), each a few milliseconds long: a kill
# after 4 to 24 batches and up to 20 ms leaves most launches some progress.
LAUNCHES = 6
KILL_BATCHES = (4, 25)
KILL_SECONDS = 0.02


def _command(folder, ranks, options):
    command = [sys.executable, str(SCRIPT), str(folder), str(folder / "result.pkl"), *options]
    if not ranks:
        return command
    return [mpiexec(), "-n", str(ranks)] + command + ["--mpi"]


def _run(folder, ranks=0, options=()):
    result = subprocess.run(_command(folder, ranks, options), capture_output=True, text=True,
                            timeout=120, env=package_environment())
    return result


def _result(folder):
    with open(folder / "result.pkl", "rb") as stream:
        return pickle.load(stream)


def _backups(folder):
    backup = folder / "backup"
    return sorted(backup.glob("backup-*.state")) if backup.is_dir() else []


def _killed_until_done(folder, seed, ranks=0, save_freq="epoch", truncate=False):
    """Launch the fit with a backup, kill it at a random moment, launch it
    again, until it finishes; its result and the launches' stderr."""
    rng = np.random.default_rng(seed)
    folder.mkdir()
    errors, resumed, killed = [], 0, 0
    for launch in range(LAUNCHES):
        backups = _backups(folder)
        if truncate and len(backups) >= 2:
            # A torn newest backup: the one before it must serve.
            with open(backups[-1], "r+b") as stream:
                stream.truncate(os.path.getsize(backups[-1]) // 2)
        resumed += bool(backups)
        options = ["--backup", "--save-freq", str(save_freq)]
        if launch < LAUNCHES - 1:
            options += ["--kill-after", str(rng.integers(*KILL_BATCHES)),
                        f"{rng.uniform(0.0, KILL_SECONDS):.4f}",
                        "--kill-rank", str(rng.integers(max(ranks, 1)))]
        result = _run(folder, ranks, options)
        errors.append(result.stderr)
        if result.returncode == 0:
            break
        # Killed, not failed: SIGKILL (mpiexec reports the rank's signal, 9).
        assert result.returncode in (-9, 9), result.stderr
        killed += 1
    assert killed >= 2 and resumed >= 2, (killed, resumed)
    return _result(folder), errors


def _assert_same_run(result, reference):
    assert len(result["weights"]) == len(reference["weights"])
    for got, expected in zip(result["weights"], reference["weights"]):
        assert got.dtype == expected.dtype == np.float64
        assert np.array_equal(got, expected)
    assert result["history"] == reference["history"]
    assert result["epochs"] == reference["epochs"]
    assert result["stopped_epoch"] == reference["stopped_epoch"]
    # The best-only checkpoint and the CSV log, too.
    assert result["best"] == reference["best"]
    assert result["log"] == reference["log"]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The uninterrupted fit, without BackupAndRestore."""
    folder = tmp_path_factory.mktemp("reference")
    result = _run(folder)
    assert result.returncode == 0, result.stderr
    outcome = _result(folder)
    # EarlyStopping and ReduceLROnPlateau act: their states matter.
    assert 0 < outcome["stopped_epoch"] < 29
    assert min(outcome["history"]["learning_rate"]) < max(outcome["history"]["learning_rate"])
    return outcome


@pytest.mark.slow
def test_an_uninterrupted_fit_is_unchanged_and_removes_its_backup(tmp_path, reference):
    tmp_path.mkdir(exist_ok=True)
    result = _run(tmp_path, options=["--backup", "--save-freq", "3"])
    assert result.returncode == 0, result.stderr
    _assert_same_run(_result(tmp_path), reference)
    assert not (tmp_path / "backup").exists()


@pytest.mark.slow
@pytest.mark.parametrize("save_freq", ["epoch", 3])
def test_a_killed_fit_resumes_to_the_same_weights_and_history(tmp_path, reference, save_freq):
    result, errors = _killed_until_done(tmp_path / "run", seed=1, save_freq=save_freq)
    _assert_same_run(result, reference)
    assert not any("Warning" in error for error in errors), errors
    assert not (tmp_path / "run" / "backup").exists()


@pytest.mark.slow
def test_a_torn_newest_backup_falls_back_to_the_previous_one(tmp_path, reference):
    result, errors = _killed_until_done(tmp_path / "run", seed=2, save_freq=2, truncate=True)
    _assert_same_run(result, reference)
    assert any("is damaged" in error and "restoring the backup before it" in error
               for error in errors), errors


@pytest.fixture(scope="module")
def ranks_reference(tmp_path_factory):
    pytest.importorskip("mpi4py", reason="distributed training needs mpi4py (the mpi extra)")
    folder = tmp_path_factory.mktemp("ranks_reference")
    result = _run(folder, ranks=2)
    assert result.returncode == 0, result.stderr
    return _result(folder)


@pytest.mark.slow
def test_two_ranks_killed_and_relaunched_resume_as_two_ranks_uninterrupted(tmp_path,
                                                                            ranks_reference):
    result, _ = _killed_until_done(tmp_path / "run", seed=3, ranks=2, save_freq=2)
    _assert_same_run(result, ranks_reference)


# -- in one process ------------------------------------------------------------


class Interrupt(Exception):
    """Stands for a kill: fit ends without its on_train_end."""


class InterruptAt(callbacks.Callback):
    """Raise Interrupt at the ``batches``-th batch's end (counted over the fit)."""

    def __init__(self, batches):
        super().__init__()
        self.batches = batches
        self.seen = 0

    def on_train_batch_end(self, batch, logs=None):
        self.seen += 1
        if self.seen == self.batches:
            raise Interrupt


class Batches:
    """A sequence of batches, as keras.utils.PyDataset."""

    def __init__(self, x, y, size):
        self.x, self.y, self.size = x, y, size

    def __len__(self):
        return -(-len(self.x) // self.size)

    def __getitem__(self, index):
        part = slice(index * self.size, (index + 1) * self.size)
        return self.x[part], self.y[part]


def _data():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((40, 5, 2))
    return x, x[:, :, :1].sum(axis=1)


def _model(units=4, optimizer="adam"):
    fl.set_num_threads(1)
    model = fl.Sequential([fl.LSTM(units, dropout=0.2, recurrent_dropout=0.1, seed=0,
                                   dtype="float64"),
                           fl.Dropout(0.2, seed=1, dtype="float64"),
                           fl.Dense(1, seed=2, dtype="float64")], seed=3)
    model.compile(optimizer=optimizer, loss="mse", metrics=["mae"])
    return model


def _fit(model, data, backup=None, interrupt_at=None, extra=(), epochs=4):
    used = list(extra)
    if interrupt_at is not None:
        used.append(InterruptAt(interrupt_at))
    if backup is not None:
        used.append(backup)
    if isinstance(data, tuple):
        return model.fit(*data, batch_size=8, epochs=epochs, verbose=0, callbacks=used)
    return model.fit(data, epochs=epochs, verbose=0, callbacks=used)


def test_a_sequence_of_batches_resumes_mid_epoch_exactly(tmp_path):
    # The schedule halves the rate at every epoch's start: replaying the
    # start of the resumed epoch must not halve it twice.
    def schedule():
        return callbacks.LearningRateScheduler(lambda epoch, rate: rate / 2)

    data = Batches(*_data(), size=8)
    reference = _model()
    expected = _fit(reference, data, extra=[schedule()])
    model = _model()
    with pytest.raises(Interrupt):
        _fit(model, data, callbacks.BackupAndRestore(tmp_path, save_freq=3), interrupt_at=8,
             extra=[schedule()])
    resumed = _model()
    history = _fit(resumed, data, callbacks.BackupAndRestore(tmp_path, save_freq=3),
                   extra=[schedule()])
    assert history.history == expected.history
    for got, want in zip(resumed.get_weights(), reference.get_weights()):
        assert np.array_equal(got, want)


def test_a_generator_resumes_at_the_next_epoch_with_a_warning(tmp_path):
    x, y = _data()

    def batches():
        while True:
            for start in range(0, 40, 8):
                yield x[start:start + 8], y[start:start + 8]

    def fit(model, backup, interrupt_at=None):
        used = [backup] if interrupt_at is None else [InterruptAt(interrupt_at), backup]
        return model.fit(batches(), steps_per_epoch=5, epochs=4, verbose=0, callbacks=used)

    with pytest.raises(Interrupt):
        fit(_model(), callbacks.BackupAndRestore(tmp_path, save_freq=2), interrupt_at=8)
    with pytest.warns(RuntimeWarning, match="cannot be rewound.*resumes at the start of "
                                            "epoch 3"):
        history = fit(_model(), callbacks.BackupAndRestore(tmp_path, save_freq=2))
    # Epoch 1 comes from the backup; epoch 2, interrupted after the backup of
    # its first batch, is not in the History; epochs 3 and 4 train.
    assert history.epoch == [0, 2, 3]
    assert len(history.history["loss"]) == 3


def test_a_fit_that_had_stopped_only_ends(tmp_path):
    # Interrupted in on_train_end, after the last backup: the relaunch runs
    # no epoch, and EarlyStopping still puts the best weights back.
    class InterruptAtEnd(callbacks.Callback):
        def on_train_end(self, logs=None):
            raise Interrupt

    def stopping():
        return callbacks.EarlyStopping(monitor="loss", patience=0, min_delta=10.0,
                                       restore_best_weights=True)

    data = _data()
    reference = _model()
    expected = _fit(reference, data, extra=[stopping()])
    assert len(expected.epoch) < 4
    with pytest.raises(Interrupt):
        _fit(_model(), data, callbacks.BackupAndRestore(tmp_path),
             extra=[stopping(), InterruptAtEnd()])
    trained = []
    resumed = _model()
    history = _fit(resumed, data, callbacks.BackupAndRestore(tmp_path), extra=[
        stopping(), callbacks.LambdaCallback(on_epoch_begin=lambda e, logs: trained.append(e))])
    assert trained == []
    assert history.history == expected.history
    for got, want in zip(resumed.get_weights(), reference.get_weights()):
        assert np.array_equal(got, want)


def _interrupted_backup(folder, **model_arguments):
    with pytest.raises(Interrupt):
        _fit(_model(**model_arguments), _data(), callbacks.BackupAndRestore(folder, 2),
             interrupt_at=3)


@pytest.mark.parametrize("other, message", [
    (dict(units=5), "does not match the model: layer_0/kernel has shape"),
    (dict(optimizer="sgd"), "optimizer does not match the model's: it is Adam, the model's "
                            "is SGD"),
])
def test_a_backup_of_another_model_is_an_error_and_changes_nothing(tmp_path, other, message):
    _interrupted_backup(tmp_path)
    model = _model(**other)
    model.build((None, 5, 2))
    before = model.get_weights()
    with pytest.raises(ValueError, match=message):
        _fit(model, _data(), callbacks.BackupAndRestore(tmp_path, 2))
    for got, want in zip(model.get_weights(), before):
        assert np.array_equal(got, want)
    assert model.optimizer.iterations == 0


def test_other_callbacks_with_a_state_are_an_error(tmp_path):
    _interrupted_backup(tmp_path)
    with pytest.raises(ValueError, match=r"callbacks with a state are \['History'\], this "
                                         r"fit's are \['EarlyStopping', 'History'\]"):
        _fit(_model(), _data(), callbacks.BackupAndRestore(tmp_path, 2),
             extra=[callbacks.EarlyStopping(monitor="loss")])


def test_a_damaged_only_backup_is_an_error(tmp_path):
    _interrupted_backup(tmp_path)
    (only,) = tmp_path.glob("backup-*.state")
    with open(only, "r+b") as stream:
        stream.truncate(100)
    with pytest.raises(ValueError, match="no backup in backup_dir .* can be restored: backup "
                                         ".* is damaged"):
        _fit(_model(), _data(), callbacks.BackupAndRestore(tmp_path, 2))


def test_the_two_newest_backups_are_kept_and_interrupted_writes_cleared(tmp_path):
    leftover = tmp_path / "backup-00000009.state.0123456789ab.tmp"
    tmp_path.mkdir(exist_ok=True)
    leftover.write_bytes(b"half a backup")
    _fit(_model(), _data(), callbacks.BackupAndRestore(tmp_path, 2, delete_checkpoint=False))
    # 4 epochs of 5 batches: a backup every 2 batches, 10 in all.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["backup-00000009.state",
                                                          "backup-00000010.state"]


def test_backup_and_restore_checks_its_arguments(tmp_path):
    with pytest.raises(ValueError, match="save_freq must be a positive int, got 0"):
        callbacks.BackupAndRestore(tmp_path, save_freq=0)
    with pytest.raises(TypeError, match="save_freq must be 'epoch' or a number of batches"):
        callbacks.BackupAndRestore(tmp_path, save_freq="batch")
    with pytest.raises(TypeError, match="backup_dir must be a str or os.PathLike, got"):
        callbacks.BackupAndRestore(3)
    with pytest.raises(TypeError, match="delete_checkpoint must be"):
        callbacks.BackupAndRestore(tmp_path, delete_checkpoint="yes")


def test_callback_states_are_plain_data_that_a_new_callback_continues_from():
    stopping = callbacks.EarlyStopping(monitor="loss", patience=3)
    stopping.model = _model()
    stopping.on_train_begin()
    stopping.on_epoch_end(0, {"loss": 1.0})
    stopping.on_epoch_end(1, {"loss": 2.0})
    fresh = callbacks.EarlyStopping(monitor="loss", patience=3)
    fresh.model = stopping.model
    fresh.on_train_begin()
    fresh.set_state(stopping.get_state())
    assert (fresh.wait, fresh.best, fresh.best_epoch) == (1, 1.0, 0)
    assert callbacks.TerminateOnNaN().get_state() is None


def test_an_appended_csv_log_loses_the_rows_written_after_the_backup(tmp_path):
    # Rows of an earlier run stay; the row the interrupted fit wrote after
    # its last backup is cut, and written again when the resumed fit gets there.
    class InterruptAtEpochEnd(callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch == 2:
                raise Interrupt

    def fit(log, *extra):
        return _fit(_model(), _data(), extra=[callbacks.CSVLogger(log, append=True), *extra])

    earlier = "epoch,loss\n0,9.0\n"
    (tmp_path / "expected.csv").write_text(earlier)
    fit(tmp_path / "expected.csv")
    (tmp_path / "log.csv").write_text(earlier)
    with pytest.raises(Interrupt):
        fit(tmp_path / "log.csv", InterruptAtEpochEnd(),
            callbacks.BackupAndRestore(tmp_path / "backup"))
    # Epoch 3's row is written, its backup is not.
    assert (tmp_path / "log.csv").read_text().count("\n") == 2 + 3
    fit(tmp_path / "log.csv", callbacks.BackupAndRestore(tmp_path / "backup"))
    assert (tmp_path / "log.csv").read_text() == (tmp_path / "expected.csv").read_text()


def test_a_backup_of_other_data_is_an_error(tmp_path):
    _interrupted_backup(tmp_path)
    x, y = _data()
    model = _model()
    with pytest.raises(ValueError, match=r"the backup's data position \(batch 2 of a pass over "
                                         r"40 items\) does not fit x \(6 batches of 48 items\)"):
        _fit(model, (np.concatenate([x, x[:8]]), np.concatenate([y, y[:8]])),
             callbacks.BackupAndRestore(tmp_path, 2))
    assert model.optimizer.iterations == 0


def test_a_stateful_layer_resumes_with_the_states_it_carried(tmp_path):
    def model():
        fl.set_num_threads(1)
        stateful = fl.Sequential([fl.LSTM(4, stateful=True, seed=0, dtype="float64"),
                                  fl.Dense(1, seed=1, dtype="float64")], seed=2)
        stateful.compile(optimizer="rmsprop", loss="mse")
        return stateful

    def fit(stateful, backup, interrupt_at=None):
        used = [backup] if interrupt_at is None else [InterruptAt(interrupt_at), backup]
        return stateful.fit(*_data(), batch_size=8, epochs=3, shuffle=False, verbose=0,
                            callbacks=used)

    reference = model()
    expected = reference.fit(*_data(), batch_size=8, epochs=3, shuffle=False, verbose=0)
    with pytest.raises(Interrupt):
        fit(model(), callbacks.BackupAndRestore(tmp_path, save_freq=3), interrupt_at=8)
    resumed = model()
    history = fit(resumed, callbacks.BackupAndRestore(tmp_path, save_freq=3))
    assert history.history == expected.history
    for got, want in zip(resumed.layers[0].states, reference.layers[0].states):
        assert np.array_equal(got, want)
    for got, want in zip(resumed.get_weights(), reference.get_weights()):
        assert np.array_equal(got, want)
