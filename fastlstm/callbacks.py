"""Callbacks with Keras' hooks and names: History, EarlyStopping,
ModelCheckpoint, ReduceLROnPlateau, LearningRateScheduler, CSVLogger,
TerminateOnNaN, LambdaCallback, BackupAndRestore.

``Sequential.fit`` calls, in this order: ``on_train_begin``; per epoch
``on_epoch_begin``, per batch ``on_train_batch_begin`` and
``on_train_batch_end``, then (with validation data) ``on_test_begin`` /
``on_test_batch_*`` / ``on_test_end``, then ``on_epoch_end``; finally
``on_train_end``. ``evaluate`` and ``predict`` call the ``on_test_*`` and
``on_predict_*`` hooks. ``logs`` are dicts of floats: ``loss`` and the
metrics (running means over the epoch so far), plus ``val_loss`` and
``val_<metric>`` at the end of an epoch with validation data.

A callback sees the model as ``self.model`` and fit's settings as
``self.params`` (``epochs``, ``steps``, ``verbose``); setting
``self.model.stop_training = True`` ends ``fit`` after the current batch.

Examples
--------
>>> import fastlstm as fl
>>> from fastlstm.callbacks import EarlyStopping, ModelCheckpoint
>>> callbacks = [EarlyStopping(patience=3, restore_best_weights=True),
...              ModelCheckpoint("best.npz", save_best_only=True)]
"""
import csv
import errno
import inspect
import math
import os
import sys
import time
import warnings

import numpy as np

from . import _backup
from ._validation import (as_path, check_bool, check_int, check_path, check_real, check_str,
                          describe, is_int, is_real)

__all__ = ["Callback", "History", "EarlyStopping", "ModelCheckpoint", "ProgbarLogger",
           "ReduceLROnPlateau", "LearningRateScheduler", "CSVLogger", "TerminateOnNaN",
           "LambdaCallback", "BackupAndRestore"]


class Callback:
    """Base class: every hook does nothing; override the ones you need.

    A callback whose decisions depend on what it saw in earlier epochs
    (counters, best values, files) gives that state to
    :class:`BackupAndRestore` through :meth:`get_state` and
    :meth:`set_state`, so that a resumed fit continues as the interrupted
    one would have.
    """

    def __init__(self):
        self.model = None
        self.params = {}

    def set_model(self, model):
        self.model = model

    def set_params(self, params):
        self.params = params

    def get_state(self):
        """The callback's state as plain data (dicts with str keys, lists,
        numbers, str, None, NumPy arrays), or None (the default) when it
        keeps none."""
        return None

    def set_state(self, state):
        """Continue from :meth:`get_state`'s ``state``; called after
        ``on_train_begin`` when a backup is restored."""

    def on_train_begin(self, logs=None):
        """Called once at the start of ``fit``."""

    def on_train_end(self, logs=None):
        """Called once at the end of ``fit`` with the last epoch's logs."""

    def on_epoch_begin(self, epoch, logs=None):
        """Called at the start of each epoch (``epoch`` counts from 0)."""

    def on_epoch_end(self, epoch, logs=None):
        """Called at the end of each epoch with its logs (``val_*`` included)."""

    def on_train_batch_begin(self, batch, logs=None):
        """Called before each training batch (``batch`` counts from 0 in each epoch)."""

    def on_train_batch_end(self, batch, logs=None):
        """Called after each training batch with the epoch's running logs."""

    def on_test_begin(self, logs=None):
        """Called at the start of ``evaluate`` and of fit's validation."""

    def on_test_end(self, logs=None):
        """Called at the end of ``evaluate`` and of fit's validation."""

    def on_test_batch_begin(self, batch, logs=None):
        """Called before each evaluation batch."""

    def on_test_batch_end(self, batch, logs=None):
        """Called after each evaluation batch with the running logs."""

    def on_predict_begin(self, logs=None):
        """Called at the start of ``predict``."""

    def on_predict_end(self, logs=None):
        """Called at the end of ``predict``."""

    def on_predict_batch_begin(self, batch, logs=None):
        """Called before each prediction batch."""

    def on_predict_batch_end(self, batch, logs=None):
        """Called after each prediction batch."""


class CallbackList:
    """Calls a hook on every callback in order (used by the model)."""

    def __init__(self, callbacks, model, params):
        if callbacks is None:
            callbacks = []
        if isinstance(callbacks, Callback) or not isinstance(callbacks, (list, tuple)):
            raise TypeError(f"callbacks must be a list of fastlstm.callbacks.Callback objects, "
                            f"got {describe(callbacks)}")
        for k, callback in enumerate(callbacks):
            if not isinstance(callback, Callback):
                raise TypeError(f"callbacks[{k}] must be a fastlstm.callbacks.Callback, got "
                                f"{describe(callback)}")
        self.model, self.params = model, params
        self.callbacks = []
        for callback in callbacks:
            self.append(callback)

    def append(self, callback):
        """Add a callback after the others."""
        callback.set_model(self.model)
        callback.set_params(self.params)
        self.callbacks.append(callback)

    def move_to_end(self, kind):
        """Move the callbacks of class ``kind`` after the others (in their order)."""
        moved = [callback for callback in self.callbacks if isinstance(callback, kind)]
        self.callbacks[:] = [callback for callback in self.callbacks
                             if not isinstance(callback, kind)] + moved

    def __getattr__(self, hook):
        if not hook.startswith("on_"):
            raise AttributeError(hook)

        def call(*args):
            for callback in self.callbacks:
                getattr(callback, hook)(*args)
        return call


class History(Callback):
    """Records the logs of every epoch; ``fit`` returns it.

    Attributes
    ----------
    history : dict
        ``{"loss": [...], "val_loss": [...], ...}``, one entry per epoch.
    epoch : list of int
        The epochs recorded (from 0).
    """

    def __init__(self):
        super().__init__()
        self.history = {}
        self.epoch = []

    def on_train_begin(self, logs=None):
        self.epoch = []

    def on_epoch_end(self, epoch, logs=None):
        self.epoch.append(epoch)
        for key, value in (logs or {}).items():
            self.history.setdefault(key, []).append(value)

    def get_state(self):
        return {"history": self.history, "epoch": self.epoch}

    def set_state(self, state):
        self.history = {key: list(values) for key, values in state["history"].items()}
        self.epoch = list(state["epoch"])


def _higher_is_better(monitor, model):
    """mode="auto": maximise accuracies (and metrics that say so), minimise the rest."""
    name = monitor[4:] if monitor.startswith("val_") else monitor
    for metric in getattr(model, "metrics", None) or []:
        if metric is not None and metric.name == name:
            return metric.higher_is_better
    return "acc" in name


def _check_mode(mode):
    if not isinstance(mode, str) or mode not in ("auto", "min", "max"):
        raise ValueError(f"mode must be 'auto', 'min' or 'max', got {describe(mode)}")
    return mode


def _check_monitor(monitor):
    return check_str(monitor, "monitor", "the name of a log entry (a str such as 'val_loss')")


def _check_verbose(verbose):
    if verbose not in (0, 1) or isinstance(verbose, float):
        raise ValueError(f"verbose must be 0 or 1, got {describe(verbose)}")
    return int(verbose)


class EarlyStopping(Callback):
    """Stop training when a monitored quantity has stopped improving.

    As ``keras.callbacks.EarlyStopping``: at the end of each epoch, an
    improvement is ``current < best - min_delta`` (``>`` and ``+`` for
    ``mode="max"``); after ``patience`` epochs without one, training stops.

    Parameters
    ----------
    monitor : str
        The log entry to watch. Default "val_loss".
    min_delta : float
        The smallest change that counts as an improvement. Default 0.
    patience : int
        Epochs without improvement before stopping. Default 0.
    verbose : {0, 1}
        1 prints when training stops and when weights are restored.
    mode : {"auto", "min", "max"}
        "auto" maximises accuracies and minimises everything else.
    baseline : float or None
        Training stops unless the quantity beats it within ``patience``
        epochs.
    restore_best_weights : bool
        At the end of training, set the model's weights to those of the best
        epoch (those of the last epoch if none improved on the first). Default
        False. Keeping the best weights is how to tame an LSTM's sensitivity
        to its random start.
    start_from_epoch : int
        Epochs to wait before watching. Default 0.

    Attributes
    ----------
    stopped_epoch : int
        The epoch training stopped at (0 if it did not stop early).
    best : float
        The best value seen.
    best_epoch : int
        The epoch of ``best``.
    """

    def __init__(self, monitor="val_loss", min_delta=0.0, patience=0, verbose=0, mode="auto",
                 baseline=None, restore_best_weights=False, start_from_epoch=0):
        super().__init__()
        self.monitor = _check_monitor(monitor)
        self.min_delta = abs(check_real(min_delta, "min_delta"))
        self.patience = check_int(patience, "patience", minimum=0)
        self.verbose = _check_verbose(verbose)
        self.mode = _check_mode(mode)
        self.baseline = check_real(baseline, "baseline", none=True)
        self.restore_best_weights = check_bool(restore_best_weights, "restore_best_weights")
        self.start_from_epoch = check_int(start_from_epoch, "start_from_epoch", minimum=0)
        self._reset()

    def _reset(self):
        self.wait = 0
        self.stopped_epoch = 0
        self.best = None
        self.best_epoch = 0
        self.best_weights = None

    def on_train_begin(self, logs=None):
        self._reset()
        maximize = self.mode == "max" or (self.mode == "auto"
                                          and _higher_is_better(self.monitor, self.model))
        self._sign = -1.0 if maximize else 1.0
        self.best = -math.inf if maximize else math.inf

    def _improves(self, value, reference):
        """Whether ``value`` beats ``reference`` by more than ``min_delta``."""
        return self._sign * (value - reference) < -self.min_delta

    def on_epoch_end(self, epoch, logs=None):
        current = _monitored(self.monitor, logs, "EarlyStopping")
        if current is None or epoch < self.start_from_epoch:
            return
        if self.restore_best_weights and self.best_weights is None:
            self.best_weights = self.model.get_weights()
            self.best_epoch = epoch
        self.wait += 1
        if self._improves(current, self.best):
            self.best = current
            self.best_epoch = epoch
            if self.restore_best_weights:
                self.best_weights = self.model.get_weights()
            # Patience restarts only when the baseline is beaten too.
            if self.baseline is None or self._improves(current, self.baseline):
                self.wait = 0
            return
        if self.wait >= self.patience and epoch > 0:
            self.stopped_epoch = epoch
            self.model.stop_training = True

    def get_state(self):
        return {"wait": self.wait, "stopped_epoch": self.stopped_epoch, "best": self.best,
                "best_epoch": self.best_epoch, "best_weights": self.best_weights}

    def set_state(self, state):
        self.wait, self.stopped_epoch = state["wait"], state["stopped_epoch"]
        self.best, self.best_epoch = state["best"], state["best_epoch"]
        self.best_weights = state["best_weights"]

    def on_train_end(self, logs=None):
        if self.stopped_epoch > 0 and self.verbose:
            print(f"Epoch {self.stopped_epoch + 1}: early stopping")
        if self.restore_best_weights and self.best_weights is not None:
            if self.verbose:
                print(f"Restoring model weights from the end of the best epoch: "
                      f"{self.best_epoch + 1}.")
            self.model.set_weights(self.best_weights)


def _monitored(monitor, logs, owner):
    """The monitored value, or None (with a warning) when the logs lack it."""
    logs = logs or {}
    if monitor not in logs:
        warnings.warn(f"{owner} monitors {monitor!r}, which is not in the logs; available: "
                      f"{sorted(logs)} (val_* entries need validation data)", stacklevel=3)
        return None
    return float(logs[monitor])


class ModelCheckpoint(Callback):
    """Save the model's weights at the end of epochs.

    As ``keras.callbacks.ModelCheckpoint`` with ``save_weights_only=True``:
    ``filepath`` may contain ``str.format`` fields filled with ``epoch``
    (from 1) and the epoch's logs, e.g. ``"ckpt-{epoch:02d}-{val_loss:.3f}.npz"``.
    Files are written by :meth:`Sequential.save_weights` (atomically). A
    missing folder is created, as Keras does, when ``fit`` starts (before
    each save when the folder's name has fields); a path where no file can be
    written (its folder is a file or not writable, or it is a folder) raises
    ``OSError`` naming it then, before the first epoch trains.

    Parameters
    ----------
    filepath : str or os.PathLike
        Must end in ``.npz``.
    monitor : str
        The log entry ``save_best_only`` compares. Default "val_loss".
    verbose : {0, 1}
        1 prints a line at each save (and each skipped save).
    save_best_only : bool
        Save only when the monitored value improves on the best so far
        (strictly). Default False: save every epoch.
    save_weights_only : bool
        Must be True: fastlstm saves weights, not whole models.
    mode : {"auto", "min", "max"}
    save_freq : "epoch"
        Only saving at the end of epochs is supported.
    initial_value_threshold : float or None
        With ``save_best_only``, the value to beat for the first save.

    Attributes
    ----------
    best : float
        The best monitored value so far.
    """

    def __init__(self, filepath, monitor="val_loss", verbose=0, save_best_only=False,
                 save_weights_only=True, mode="auto", save_freq="epoch",
                 initial_value_threshold=None):
        super().__init__()
        self.filepath = check_path(filepath, "filepath", ".npz", "weights are saved as NumPy .npz")
        self.monitor = _check_monitor(monitor)
        self.verbose = _check_verbose(verbose)
        self.save_best_only = check_bool(save_best_only, "save_best_only")
        if not check_bool(save_weights_only, "save_weights_only"):
            raise ValueError("save_weights_only must be True: fastlstm saves a model's weights "
                             "(rebuild the model in code, then load_weights)")
        self.mode = _check_mode(mode)
        if save_freq != "epoch":
            raise ValueError(f"save_freq must be 'epoch' (saving at the end of each epoch), "
                             f"got {describe(save_freq)}")
        check_real(initial_value_threshold, "initial_value_threshold", none=True)
        self.initial_value_threshold = initial_value_threshold
        self.best = None

    def on_train_begin(self, logs=None):
        # The folder is made now, as Keras makes it before saving, so that a
        # path that cannot be written fails before the first epoch trains;
        # a folder with fields is made at each save.
        if "{" not in os.path.dirname(self.filepath):
            self._prepare(self.filepath)
        maximize = self.mode == "max" or (self.mode == "auto"
                                          and _higher_is_better(self.monitor, self.model))
        self._sign = -1.0 if maximize else 1.0
        # Kept across fits, as Keras does: a later fit saves only to beat it.
        if self.best is None:
            if self.initial_value_threshold is not None:
                self.best = float(self.initial_value_threshold)
            else:
                self.best = -math.inf if maximize else math.inf

    def _prepare(self, path):
        """Create the folder of ``path`` if it is missing; an ``OSError``
        naming ``filepath`` if no file can be written at ``path``."""
        folder = os.path.dirname(path)
        try:
            if folder:
                os.makedirs(folder, exist_ok=True)
        except OSError as error:
            raise OSError(error.errno, f"ModelCheckpoint cannot create the folder {folder!r} "
                                       f"of filepath {self.filepath!r}: "
                                       f"{error.strerror or error}") from None
        if os.path.isdir(path):
            raise IsADirectoryError(errno.EISDIR, f"ModelCheckpoint's filepath {path!r} is a "
                                                  f"folder: give a file path ending in .npz")
        if not os.access(folder or os.curdir, os.W_OK):
            raise PermissionError(errno.EACCES, f"ModelCheckpoint cannot write filepath "
                                                f"{self.filepath!r}: its folder "
                                                f"{folder or os.curdir!r} is not writable")

    def get_state(self):
        return {"best": self.best}

    def set_state(self, state):
        self.best = state["best"]

    def _path(self, epoch, logs):
        try:
            return self.filepath.format(epoch=epoch + 1, **(logs or {}))
        except (KeyError, IndexError, ValueError) as error:
            raise ValueError(f"filepath {self.filepath!r} has a field the logs do not fill "
                             f"({error!r}); available: epoch, {', '.join(sorted(logs or {}))}"
                             ) from None

    def on_epoch_end(self, epoch, logs=None):
        path = self._path(epoch, logs)
        if not self.save_best_only:
            if self.verbose:
                print(f"\nEpoch {epoch + 1}: saving model to {path}")
            self._save(path)
            return
        current = _monitored(self.monitor, logs, "ModelCheckpoint")
        if current is None:
            return
        if self._sign * (current - self.best) < 0:
            if self.verbose:
                print(f"\nEpoch {epoch + 1}: {self.monitor} improved from {self.best:.5f} to "
                      f"{current:.5f}, saving model to {path}")
            self.best = current
            self._save(path)
        elif self.verbose:
            print(f"\nEpoch {epoch + 1}: {self.monitor} did not improve from {self.best:.5f}")

    def _save(self, path):
        self._prepare(path)
        self.model.save_weights(path)


def _format_duration(seconds):
    """Keras' ETA format: 7s, 1:05, 1:02:03."""
    seconds = int(round(seconds))
    if seconds >= 3600:
        return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"
    if seconds >= 60:
        return f"{seconds // 60}:{seconds % 60:02d}"
    return f"{seconds}s"


def _format_per_step(seconds):
    if seconds >= 1:
        return f"{seconds:.0f}s/step"
    if seconds >= 1e-3:
        return f"{seconds * 1e3:.0f}ms/step"
    return f"{seconds * 1e6:.0f}us/step"


def _format_logs(logs):
    parts = []
    for key, value in logs.items():
        value = float(value)
        text = f"{value:.4f}" if abs(value) > 1e-3 or value == 0 else f"{value:.4e}"
        parts.append(f" - {key}: {text}")
    return "".join(parts)


class Progbar:
    """A progress bar over ``steps`` steps, written to ``sys.stdout``.

    ``verbose=1`` redraws one line in place (carriage return) with the step,
    a bar, the ETA and the logs, at most every ``interval`` seconds, and ends
    it with the total time and the time per step; ``verbose=2`` prints only
    that final line. ``steps=None`` (data from an iterator of unknown
    length) shows the step count as ``12/Unknown``, with no bar or ETA.
    """

    width = 30

    def __init__(self, steps, verbose=1, interval=0.05):
        self.steps = steps
        self.verbose = verbose
        self.interval = interval
        self._start = time.perf_counter()
        self._last_draw = -math.inf
        self._drawn_width = 0

    def update(self, step, logs=None, finalize=False):
        """Show that ``step`` steps (from 1) are done; ``finalize`` ends the line."""
        now = time.perf_counter()
        logs = logs or {}
        if self.verbose == 2 and not finalize:
            return
        if self.verbose == 1 and not finalize and step > 1 \
                and now - self._last_draw < self.interval:
            return
        self._last_draw = now
        elapsed = now - self._start
        digits = len(str(self.steps if self.steps is not None else step))
        counter = f"{step:>{digits}}/{self.steps if self.steps is not None else 'Unknown'}"
        per_step = elapsed / max(step, 1)
        if self.verbose == 2:
            line = f"{counter} - {_format_duration(elapsed)} - {_format_per_step(per_step)}"
            sys.stdout.write(line + _format_logs(logs) + "\n")
            sys.stdout.flush()
            return
        if finalize or self.steps is None:
            timing = f"{_format_duration(elapsed)} {_format_per_step(per_step)}"
        else:
            timing = f"ETA: {_format_duration(per_step * (self.steps - step))}"
        if self.steps is None:
            line = f"{counter} - {timing}{_format_logs(logs)}"
        else:
            done = int(self.width * step / self.steps) if self.steps else self.width
            bar = "=" * done
            if step < self.steps:
                bar = bar[:-1] + ">" if bar else ">"
            line = f"{counter} [{bar:.<{self.width}}] - {timing}{_format_logs(logs)}"
        # Spaces wipe what a longer previous line left on the terminal.
        padding = " " * max(self._drawn_width - len(line), 0)
        self._drawn_width = len(line)
        sys.stdout.write("\r" + line + padding + ("\n" if finalize else ""))
        sys.stdout.flush()


class ProgbarLogger(Callback):
    """Prints fit's progress: ``Epoch i/n``, then a :class:`Progbar` per epoch.

    ``fit`` adds one when ``verbose`` is not 0; the final line of an epoch
    carries the validation logs too.
    """

    def __init__(self):
        super().__init__()
        self._bar = None
        self._last_step = 0

    def on_epoch_begin(self, epoch, logs=None):
        print(f"Epoch {epoch + 1}/{self.params['epochs']}")
        self._bar = Progbar(self.params["steps"], verbose=self.params["verbose"])
        self._last_step = 0

    def on_train_batch_end(self, batch, logs=None):
        self._last_step = batch + 1
        self._bar.update(batch + 1, logs)

    def on_epoch_end(self, epoch, logs=None):
        self._bar.update(self._last_step, logs, finalize=True)


def _optimizer_of(model, owner):
    optimizer = getattr(model, "optimizer", None)
    if optimizer is None or not hasattr(optimizer, "learning_rate"):
        raise RuntimeError(f"{owner} needs a compiled model whose optimizer has a "
                           f"learning_rate: call compile() first")
    return optimizer


class ReduceLROnPlateau(Callback):
    """Reduce the learning rate when a monitored quantity stops improving,
    as ``keras.callbacks.ReduceLROnPlateau``.

    At the end of each epoch: an improvement is ``current < best - min_delta``
    (``current > best + min_delta`` in mode "max"). After ``patience``
    epochs without one, and outside a cooldown, the rate becomes
    ``max(rate * factor, min_lr)`` (if it is above ``min_lr``), the wait
    restarts and ``cooldown`` epochs follow in which no epoch counts as a
    wait. The epoch's logs gain ``learning_rate``, the rate it trained with.

    Parameters
    ----------
    monitor : str
        Default "val_loss".
    factor : float in [0, 1)
        Default 0.1.
    patience : int
        Epochs without improvement before a reduction. Default 10.
    verbose : {0, 1}
        1 prints each reduction.
    mode : {"auto", "min", "max"}
        "auto" maximises names containing "acc", as Keras does.
    min_delta : float
        Default 1e-4.
    cooldown : int
        Epochs to wait after a reduction. Default 0.
    min_lr : float
        The lowest rate. Default 0.

    Examples
    --------
    >>> from fastlstm.callbacks import ReduceLROnPlateau
    >>> reduce = ReduceLROnPlateau(monitor="loss", factor=0.5, patience=2)
    """

    def __init__(self, monitor="val_loss", factor=0.1, patience=10, verbose=0, mode="auto",
                 min_delta=1e-4, cooldown=0, min_lr=0.0):
        super().__init__()
        self.monitor = _check_monitor(monitor)
        self.factor = check_real(factor, "factor", 0.0, 1.0, high_open=True,
                                 meaning=" (the rate is multiplied by it)")
        self.patience = check_int(patience, "patience", minimum=0)
        self.verbose = _check_verbose(verbose)
        self.mode = _check_mode(mode)
        self.min_delta = check_real(min_delta, "min_delta")
        self.cooldown = check_int(cooldown, "cooldown", minimum=0)
        self.min_lr = check_real(min_lr, "min_lr", 0.0)
        self._reset()

    def _reset(self):
        self._maximize = self.mode == "max" or (self.mode == "auto" and "acc" in self.monitor)
        self.best = -math.inf if self._maximize else math.inf
        self.cooldown_counter = 0
        self.wait = 0

    def _improves(self, current):
        if self._maximize:
            return current > self.best + self.min_delta
        return current < self.best - self.min_delta

    def in_cooldown(self):
        """Whether reductions are paused after the last one."""
        return self.cooldown_counter > 0

    def on_train_begin(self, logs=None):
        self._reset()

    def get_state(self):
        return {"best": self.best, "cooldown_counter": self.cooldown_counter, "wait": self.wait}

    def set_state(self, state):
        self.best, self.wait = state["best"], state["wait"]
        self.cooldown_counter = state["cooldown_counter"]

    def on_epoch_end(self, epoch, logs=None):
        optimizer = _optimizer_of(self.model, "ReduceLROnPlateau")
        if logs is not None:
            logs["learning_rate"] = float(optimizer.learning_rate)
        current = _monitored(self.monitor, logs, "ReduceLROnPlateau")
        if current is None:
            return
        if self.in_cooldown():
            self.cooldown_counter -= 1
            self.wait = 0
        if self._improves(current):
            self.best = current
            self.wait = 0
            return
        if self.in_cooldown():
            return
        self.wait += 1
        if self.wait < self.patience:
            return
        old_lr = float(optimizer.learning_rate)
        # Compared in float32, as Keras does, so a rate at min_lr stays put.
        if old_lr > np.float32(self.min_lr):
            new_lr = max(old_lr * self.factor, self.min_lr)
            optimizer.learning_rate = new_lr
            if self.verbose:
                print(f"\nEpoch {epoch + 1}: ReduceLROnPlateau reducing learning rate to "
                      f"{new_lr}.")
            self.cooldown_counter = self.cooldown
            self.wait = 0


class LearningRateScheduler(Callback):
    """Set the learning rate at the start of each epoch, as
    ``keras.callbacks.LearningRateScheduler``.

    Parameters
    ----------
    schedule : callable
        ``schedule(epoch, learning_rate) -> float`` (``epoch`` from 0,
        ``learning_rate`` the current rate), or ``schedule(epoch)``.
    verbose : {0, 1}
        1 prints the rate set at each epoch.

    Notes
    -----
    The epoch's logs gain ``learning_rate``. The optimizer must have a float
    rate: one made with a schedule raises ``TypeError`` (as in Keras).

    Examples
    --------
    >>> from fastlstm.callbacks import LearningRateScheduler
    >>> halve = LearningRateScheduler(lambda epoch, rate: rate if epoch < 2 else rate / 2)
    """

    def __init__(self, schedule, verbose=0):
        super().__init__()
        if not callable(schedule):
            raise TypeError(f"schedule must be a callable schedule(epoch, learning_rate) -> "
                            f"float, got {describe(schedule)}")
        self.schedule = schedule
        self.verbose = _check_verbose(verbose)
        self._takes_rate = _accepts_two_arguments(schedule)

    def on_epoch_begin(self, epoch, logs=None):
        optimizer = _optimizer_of(self.model, "LearningRateScheduler")
        if self._takes_rate:
            rate = self.schedule(epoch, float(optimizer.learning_rate))
        else:
            rate = self.schedule(epoch)
        if isinstance(rate, np.ndarray) and rate.shape == ():
            rate = rate.item()
        if not is_real(rate):
            raise ValueError(f"the schedule must return a float, got {describe(rate)} for "
                             f"epoch {epoch}")
        optimizer.learning_rate = float(rate)
        if self.verbose:
            print(f"\nEpoch {epoch + 1}: LearningRateScheduler setting learning rate to "
                  f"{float(rate)}.")

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["learning_rate"] = float(_optimizer_of(self.model, "LearningRateScheduler")
                                          .learning_rate)


def _accepts_two_arguments(function):
    """Whether ``function`` can be called with two positional arguments."""
    try:
        signature = inspect.signature(function)
    except (TypeError, ValueError):
        return True
    try:
        signature.bind(0, 0.0)
    except TypeError:
        return False
    return True


class CSVLogger(Callback):
    """Write each epoch's logs as a row of a CSV file, as ``keras.callbacks.CSVLogger``.

    The first row is the header: ``epoch`` and the log entries in sorted
    order; then one row per epoch (``epoch`` from 0). An entry missing from
    an epoch's logs is written ``NA``.

    Parameters
    ----------
    filename : str or os.PathLike
    separator : str
        One character. Default ",".
    append : bool
        Append to an existing file (without a second header if it has
        rows) rather than overwrite it. Default False.

    Examples
    --------
    >>> from fastlstm.callbacks import CSVLogger
    >>> logger = CSVLogger("training.csv")
    """

    def __init__(self, filename, separator=",", append=False):
        super().__init__()
        self.filename = as_path(filename, "filename")
        if not isinstance(separator, str) or len(separator) != 1:
            raise ValueError(f"separator must be one character, got {describe(separator)}")
        self.sep = separator
        self.append = check_bool(append, "append")
        self.keys = None
        self._file = None
        self._writer = None
        self._write_header = True

    def on_train_begin(self, logs=None):
        self._write_header = True
        if self.append and os.path.exists(self.filename):
            with open(self.filename, newline="") as existing:
                self._write_header = not existing.readline()
        self._file = open(self.filename, "a" if self.append else "w", newline="")
        # Where this fit's rows begin (after an appended-to file's).
        self._start = self._file.tell()
        self._writer = None
        self.keys = None

    def get_state(self):
        """The columns and the rows this fit wrote (the file may lose them
        with the process)."""
        self._file.flush()
        with open(self.filename, newline="") as written:
            written.seek(self._start)
            rows = written.read()
        return {"keys": self.keys, "write_header": self._write_header, "start": self._start,
                "rows": rows}

    def set_state(self, state):
        """Cut the file back to where the backed-up fit began its rows (an
        interrupted fit may have written more), and write those rows again."""
        self._file.truncate(state["start"])
        self._file.seek(state["start"])
        self._file.write(state["rows"])
        self._file.flush()
        self._start, self._write_header = state["start"], state["write_header"]
        self.keys = state["keys"]
        self._writer = None
        if self.keys is not None:
            self._writer = self._dict_writer()

    def _dict_writer(self):
        return csv.DictWriter(self._file, fieldnames=["epoch"] + self.keys, delimiter=self.sep,
                              lineterminator="\n", extrasaction="ignore")

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        if self.keys is None:
            self.keys = sorted(logs)
        if self._writer is None:
            self._writer = self._dict_writer()
            if self._write_header:
                self._writer.writeheader()
        row = {"epoch": epoch}
        row.update({key: _csv_value(logs[key]) if key in logs else "NA" for key in self.keys})
        self._writer.writerow(row)
        self._file.flush()

    def on_train_end(self, logs=None):
        if self._file is not None:
            self._file.close()
        self._file = None
        self._writer = None


def _csv_value(value):
    if isinstance(value, np.ndarray) and value.shape == ():
        return value.item()
    return value


class TerminateOnNaN(Callback):
    """Stop training when the loss becomes NaN or infinite, as
    ``keras.callbacks.TerminateOnNaN``: checked after every training batch;
    prints ``Batch <i>: Invalid loss, terminating training`` and sets
    ``model.stop_training``."""

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(float(loss)):
            print(f"Batch {batch}: Invalid loss, terminating training")
            self.model.stop_training = True


_HOOKS = tuple(name for name in vars(Callback) if name.startswith("on_"))


class LambdaCallback(Callback):
    """A callback made of functions, as ``keras.callbacks.LambdaCallback``.

    Each keyword argument names a hook and gives the function it calls, with
    the hook's arguments: ``on_epoch_begin`` / ``on_epoch_end`` get
    ``(epoch, logs)``, the ``on_*_batch_*`` hooks ``(batch, logs)``, the
    others ``(logs)``.

    Parameters
    ----------
    on_epoch_begin, on_epoch_end : callable or None
        Called with ``(epoch, logs)``.
    on_train_begin, on_train_end : callable or None
        Called with ``(logs)``.
    on_train_batch_begin, on_train_batch_end : callable or None
        Called with ``(batch, logs)``.
    **kwargs
        Any other hook of :class:`Callback` (``on_test_end=...``, ...).

    Examples
    --------
    >>> from fastlstm.callbacks import LambdaCallback
    >>> losses = []
    >>> record = LambdaCallback(on_epoch_end=lambda epoch, logs: losses.append(logs["loss"]))
    """

    def __init__(self, on_epoch_begin=None, on_epoch_end=None, on_train_begin=None,
                 on_train_end=None, on_train_batch_begin=None, on_train_batch_end=None,
                 **kwargs):
        super().__init__()
        hooks = dict(on_epoch_begin=on_epoch_begin, on_epoch_end=on_epoch_end,
                     on_train_begin=on_train_begin, on_train_end=on_train_end,
                     on_train_batch_begin=on_train_batch_begin,
                     on_train_batch_end=on_train_batch_end, **kwargs)
        for name, function in hooks.items():
            if name not in _HOOKS:
                raise TypeError(f"LambdaCallback got an unexpected keyword argument {name!r}; "
                                f"the hooks are {', '.join(_HOOKS)}")
            if function is None:
                continue
            if not callable(function):
                raise TypeError(f"{name} must be callable or None, got {describe(function)}")
            setattr(self, name, _hook(function, name))


def _hook(function, name):
    """``function`` called as Keras calls a LambdaCallback's hooks: with the
    epoch or batch index, if the hook has one, and the logs (None if the
    loop passes none)."""
    if name.startswith("on_epoch_") or "_batch_" in name:
        return lambda index, logs=None: function(index, logs)
    return lambda logs=None: function(logs)


class BackupAndRestore(Callback):
    """Back up the whole state of ``fit`` so that a fit killed at any moment
    continues, when started again, exactly where it was, as
    ``keras.callbacks.BackupAndRestore`` does for the weights and the epoch.

    At the start of ``fit``, the newest backup in ``backup_dir`` (if any) is
    restored and ``fit`` resumes at the epoch and batch it was made at, with
    the same shuffled order; ``initial_epoch`` is then ignored. A backup
    holds the weights, the optimizer's slots, step count (so a learning-rate
    schedule's position) and rate, every random generator of the model and
    its layers (shuffling, dropout and recurrent-dropout masks, ``Dropout``
    layers), the states stateful layers carry, where the data is, the
    epoch's running loss and metrics, the History, and the state of every
    callback that keeps one (:meth:`Callback.get_state`: ``EarlyStopping``,
    ``ReduceLROnPlateau``, ``ModelCheckpoint``'s best value, ``CSVLogger``'s
    rows). With seeded layers and model, float64 and one thread, the
    resumed fit ends with bit for bit the weights and the History of a fit
    never interrupted.

    Not restored: a generator or any other iterator given as ``x``, which
    cannot be rewound (``fit`` then resumes at the start of the next epoch,
    reading it from where it is, with a ``RuntimeWarning``); the state of a
    sequence of batches itself (what its ``on_epoch_end`` changes); and
    what callbacks without :meth:`Callback.get_state` keep (a
    ``LambdaCallback``'s closures).

    Each backup is one file, written to a temporary file and renamed, then
    read back and checked against its checksum; only then is the backup
    before the previous one deleted, so the two newest are on disk. At
    restore, a damaged newest backup is reported with a warning and the one
    before it is used. A backup that does not match the model, its
    optimizer, its metrics or the callbacks with a state raises
    ``ValueError`` before anything changes.

    Under MPI (a model compiled with a
    :class:`fastlstm.distributed.DistributedOptimizer`), rank 0 writes the
    backups, with every rank's random generators, data position and
    callbacks gathered; at restore it reads the backup and every rank takes
    its own part, so a job relaunched on as many ranks resumes.

    ``fit`` runs this callback after the others, so that a backup holds
    their state after each hook. When ``fit`` ends, the backups are deleted
    (``delete_checkpoint``); after a crash they stay for the next run.

    Parameters
    ----------
    backup_dir : str or os.PathLike
        The folder of the backups, created if missing; one per training run.
    save_freq : "epoch" or int
        "epoch" (the default): back up at the end of every epoch. An int
        ``N``: back up after every ``N`` batches, counted across epochs.
    delete_checkpoint : bool
        Delete the backups (and the folder, if left empty) when ``fit``
        ends. Default True.

    Examples
    --------
    >>> from fastlstm.callbacks import BackupAndRestore
    >>> backup = BackupAndRestore("run-backup", save_freq=50)
    """

    def __init__(self, backup_dir, save_freq="epoch", delete_checkpoint=True):
        super().__init__()
        self.backup_dir = as_path(backup_dir, "backup_dir")
        if save_freq != "epoch":
            if not is_int(save_freq):
                raise TypeError(f"save_freq must be 'epoch' or a number of batches (a positive "
                                f"int), got {describe(save_freq)}")
            save_freq = check_int(save_freq, "save_freq")
        self.save_freq = save_freq
        self.delete_checkpoint = check_bool(delete_checkpoint, "delete_checkpoint")
        self._comm = None
        self._rank = 0
        self._number = 0
        self._kept = None
        self._batches = 0
        self._epoch = 0
        self._restored = None

    def _others(self):
        return [callback for callback in self.model._fit_callbacks if callback is not self]

    def _newest(self):
        """``(path, content)`` of the newest backup that reads back whole, or None."""
        damaged = []
        for _, path in _backup.backup_files(self.backup_dir):
            try:
                content = _backup.read(path)
            except ValueError as error:
                damaged.append(str(error))
                continue
            for reason in damaged:
                warnings.warn(f"{reason}; restoring the backup before it, {path!r}",
                              RuntimeWarning, stacklevel=4)
            return path, content
        if damaged:
            raise ValueError(f"no backup in backup_dir {self.backup_dir!r} can be restored: "
                             f"{'; '.join(damaged)}")
        return None

    def on_train_begin(self, logs=None):
        # Under MPI the optimizer averages over the ranks' communicator.
        self._comm = getattr(self.model.optimizer, "comm", None)
        self._rank = 0 if self._comm is None else self._comm.Get_rank()
        self._batches = 0
        self._restored = None
        found = None
        if self._rank == 0:
            os.makedirs(self.backup_dir, exist_ok=True)
            _backup.remove_unfinished(self.backup_dir)
            files = _backup.backup_files(self.backup_dir)
            self._number = files[0][0] if files else 0
            try:
                found = self._newest()
            except ValueError as error:
                found = error
        if self._comm is not None:
            found = self._comm.bcast(found, root=0)
        if isinstance(found, ValueError):
            raise found
        if found is None:
            return
        path, content = found
        ranks = 1 if self._comm is None else self._comm.Get_size()
        if len(content["ranks"]) != ranks:
            raise ValueError(f"backup {path!r} was made by a fit on {len(content['ranks'])} "
                             f"processes, and this fit runs on {ranks}: relaunch it on as many")
        own = content["ranks"][self._rank]
        stateful = _backup.restore(self.model, self._others(), content["shared"], own, path)
        self._kept = path
        self._restored = (stateful, own, content["shared"]["optimizer"]["learning_rate"])

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch
        if self._restored is None:
            return
        stateful, own, learning_rate = self._restored
        self._restored = None
        if self.model._resume_at == (epoch, 0):
            return
        # fit resumed in the middle of this epoch, whose start the others'
        # on_epoch_begin has just replayed: undo what that changed.
        _backup.set_callback_states(stateful, own)
        if learning_rate is not None:
            self.model.optimizer.learning_rate = learning_rate

    def on_train_batch_end(self, batch, logs=None):
        if self.save_freq == "epoch":
            return
        self._batches += 1
        if self._batches >= self.save_freq:
            self._batches = 0
            self._back_up(self._epoch, batch + 1)

    def on_epoch_end(self, epoch, logs=None):
        if self.save_freq == "epoch":
            self._back_up(epoch + 1, 0)

    def _back_up(self, epoch, step):
        """Write a backup from which fit resumes at batch ``step`` of ``epoch``."""
        shared, own = _backup.capture(self.model, self._others(), epoch, step)
        ranks = [own] if self._comm is None else self._comm.gather(own, root=0)
        if self._rank != 0:
            return
        self._number += 1
        path = _backup.write(self.backup_dir, self._number, {"shared": shared, "ranks": ranks})
        for _, older in _backup.backup_files(self.backup_dir):
            if older not in (path, self._kept):
                os.unlink(older)
        self._kept = path

    def on_train_end(self, logs=None):
        if not self.delete_checkpoint or self._rank != 0:
            return
        for _, path in _backup.backup_files(self.backup_dir):
            os.unlink(path)
        self._kept = None
        if os.path.isdir(self.backup_dir) and not os.listdir(self.backup_dir):
            os.rmdir(self.backup_dir)
