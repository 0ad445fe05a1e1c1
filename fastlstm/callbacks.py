"""Callbacks with Keras' hooks: History, EarlyStopping, ModelCheckpoint.

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
import math
import sys
import time
import warnings

from ._validation import check_bool, check_int, check_path, check_real, check_str, describe

__all__ = ["Callback", "History", "EarlyStopping", "ModelCheckpoint", "ProgbarLogger"]


class Callback:
    """Base class: every hook does nothing; override the ones you need."""

    def __init__(self):
        self.model = None
        self.params = {}

    def set_model(self, model):
        self.model = model

    def set_params(self, params):
        self.params = params

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
    Files are written by :meth:`Sequential.save_weights` (atomically).

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
        maximize = self.mode == "max" or (self.mode == "auto"
                                          and _higher_is_better(self.monitor, self.model))
        self._sign = -1.0 if maximize else 1.0
        # Kept across fits, as Keras does: a later fit saves only to beat it.
        if self.best is None:
            if self.initial_value_threshold is not None:
                self.best = float(self.initial_value_threshold)
            else:
                self.best = -math.inf if maximize else math.inf

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
            self.model.save_weights(path)
            return
        current = _monitored(self.monitor, logs, "ModelCheckpoint")
        if current is None:
            return
        if self._sign * (current - self.best) < 0:
            if self.verbose:
                print(f"\nEpoch {epoch + 1}: {self.monitor} improved from {self.best:.5f} to "
                      f"{current:.5f}, saving model to {path}")
            self.best = current
            self.model.save_weights(path)
        elif self.verbose:
            print(f"\nEpoch {epoch + 1}: {self.monitor} did not improve from {self.best:.5f}")


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
    that final line.
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
        digits = len(str(self.steps))
        counter = f"{step:>{digits}}/{self.steps}"
        per_step = elapsed / max(step, 1)
        if self.verbose == 2:
            line = f"{counter} - {_format_duration(elapsed)} - {_format_per_step(per_step)}"
            sys.stdout.write(line + _format_logs(logs) + "\n")
            sys.stdout.flush()
            return
        done = int(self.width * step / self.steps) if self.steps else self.width
        bar = "=" * done
        if step < self.steps:
            bar = bar[:-1] + ">" if bar else ">"
        bar = f"[{bar:.<{self.width}}]"
        if finalize:
            timing = f"{_format_duration(elapsed)} {_format_per_step(per_step)}"
        else:
            timing = f"ETA: {_format_duration(per_step * (self.steps - step))}"
        line = f"{counter} {bar} - {timing}{_format_logs(logs)}"
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
