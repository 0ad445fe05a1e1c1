"""The training loop: ``compile``, ``fit``, ``evaluate``, ``predict``.

:class:`Trainer` is what :class:`fastlstm.Sequential` trains with. It asks
the model for three things only: ``_forward(x, training)`` returning the
output and its mask, ``backward(dy)`` filling the layers' ``grads``, and
``layers``, whose ``params`` and ``grads`` the optimizer pairs up. One
training step is the forward pass, the loss and its gradient, the backward
pass and one optimizer update; ``evaluate`` and ``predict`` run in batches
inside :func:`fastlstm.no_grad`. Callbacks see every hook Keras calls
(see :mod:`fastlstm.callbacks`).
"""
import math

import numpy as np

from . import losses as losses_module
from . import metrics as metrics_module
from . import optimizers as optimizers_module
from ._validation import as_real_array, check_bool, check_int, check_real, describe, is_int
from .callbacks import CallbackList, History, Progbar, ProgbarLogger
from .layers.base import no_grad

__all__ = ["Trainer"]


def _check_verbose(verbose):
    if isinstance(verbose, str) and verbose == "auto":
        return 1
    if not is_int(verbose) or verbose not in (0, 1, 2):
        raise ValueError(f"verbose must be 'auto', 0 (silent), 1 (progress bar) or 2 (one "
                         f"line per epoch), got {describe(verbose)}")
    return int(verbose)


def _check_batch_size(batch_size):
    if batch_size is None:
        return 32
    if not is_int(batch_size):
        raise TypeError(f"batch_size must be a positive int or None (32), got "
                        f"{describe(batch_size)}")
    return check_int(batch_size, "batch_size")


def _data(x, y, x_name="x", y_name="y"):
    """``x`` and ``y`` as arrays with the same number of samples (``y`` may be None)."""
    x = as_real_array(x, x_name)
    if x.ndim == 0:
        raise ValueError(f"{x_name} must have a leading sample axis, got a scalar")
    if y is None:
        return x, None
    y = as_real_array(y, y_name)
    if y.ndim == 0 or y.shape[0] != x.shape[0]:
        raise ValueError(f"{x_name} and {y_name} must have the same number of samples (first "
                         f"axis), got {x.shape[0]} and "
                         f"{'a scalar' if y.ndim == 0 else y.shape[0]}")
    return x, y


def _targets(x, y):
    """:func:`_data`, with targets required."""
    x, y = _data(x, y)
    if y is None:
        raise TypeError("y must be an array of targets, got None")
    return x, y


def _batches(count, batch_size, order=None):
    for start in range(0, count, batch_size):
        stop = min(start + batch_size, count)
        yield slice(start, stop) if order is None else order[start:stop]


def _split_validation(x, y, validation_split, validation_data):
    """``(x, y, validation)``: the training data and the validation pair, or None."""
    validation_split = check_real(validation_split, "validation_split", 0.0, 1.0,
                                  high_open=True)
    if validation_data is not None:
        if not isinstance(validation_data, (tuple, list)) or len(validation_data) != 2:
            raise ValueError(f"validation_data must be a tuple (x_val, y_val), got "
                             f"{describe(validation_data)}")
        validation = _data(*validation_data, x_name="validation_data[0] (x_val)",
                           y_name="validation_data[1] (y_val)")
        return x, y, validation
    if not validation_split:
        return x, y, None
    # The last samples, before shuffling, as in Keras.
    split_at = int(math.floor(x.shape[0] * (1.0 - validation_split)))
    if split_at == 0 or split_at == x.shape[0]:
        raise ValueError(f"validation_split={validation_split} of {x.shape[0]} samples "
                         f"leaves {split_at} to train on and {x.shape[0] - split_at} to "
                         f"validate; both need at least one")
    return x[:split_at], y[:split_at], (x[split_at:], y[split_at:])


class Trainer:
    """Keras' training workflow for a model with ``_forward``, ``backward``
    and ``layers`` (see the module docstring)."""

    def __init__(self):
        self.optimizer = None
        self.loss = None
        self._metric_identifiers = []
        self.metrics = []
        self.history = None
        self.stop_training = False

    def compile(self, optimizer="rmsprop", loss=None, metrics=None):
        """Choose how ``fit`` trains and what it reports.

        Parameters
        ----------
        optimizer : str or fastlstm.optimizers.Optimizer
            ``"sgd"``, ``"adam"``, ``"rmsprop"`` (Keras' defaults) or an
            optimizer object. Default "rmsprop", as Keras.
        loss : str or fastlstm.losses.Loss
            ``"mse"``, ``"mae"``, ``"binary_crossentropy"``,
            ``"categorical_crossentropy"``, ``"sparse_categorical_crossentropy"``
            or a loss object (use one for ``from_logits=True``).
        metrics : list or None
            Metric names or :class:`fastlstm.metrics.Metric` objects.
            ``"accuracy"`` picks binary, categorical or sparse categorical
            accuracy from the loss (or the data's shapes), as Keras does.
        """
        self.optimizer = optimizers_module.get(optimizer)
        if loss is None:
            raise ValueError("loss must be given: a loss name or a fastlstm.losses.Loss")
        self.loss = losses_module.get(loss)
        if metrics is None:
            metrics = []
        if isinstance(metrics, (str, metrics_module.Metric)) or \
                not isinstance(metrics, (list, tuple)):
            raise TypeError(f"metrics must be a list of metric names or Metric objects, got "
                            f"{describe(metrics)}")
        self._metric_identifiers = list(metrics)
        self.metrics = [None] * len(metrics)
        for k, identifier in enumerate(metrics):
            try:
                self.metrics[k] = metrics_module.get(identifier, loss=self.loss)
            except ValueError:
                if identifier not in ("accuracy", "acc"):
                    raise
        names = [m.name if m is not None else i for m, i in zip(self.metrics, metrics)]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"metrics must have distinct names (they key the logs), got "
                             f"{duplicates} more than once")

    def _require_compiled(self, method):
        if self.loss is None:
            raise RuntimeError(f"{method}() needs a loss and an optimizer: call compile() first")

    def _resolve_metrics(self, y, y_pred):
        """Pick the kind of each ``"accuracy"`` the loss did not decide, from shapes."""
        for k, metric in enumerate(self.metrics):
            if metric is None:
                self.metrics[k] = metrics_module.get(self._metric_identifiers[k], y_true=y,
                                                     y_pred=y_pred)

    def _reset_metrics(self):
        for metric in self.metrics:
            if metric is not None:
                metric.reset_state()

    def _update_metrics(self, y, y_pred, mask):
        self._resolve_metrics(y, y_pred)
        for metric in self.metrics:
            metric.update_state(y, y_pred, mask)

    def _logs(self, loss):
        logs = {"loss": loss}
        for metric in self.metrics:
            if metric is not None:
                logs[metric.name] = metric.result()
        return logs

    def _variables_and_grads(self):
        variables, grads = [], []
        for layer in self.layers:
            layer_grads = layer.grads
            for name, array in layer.params.items():
                variables.append(array)
                grads.append(layer_grads.get(name))
        return variables, grads

    def _train_step(self, x, y):
        y_pred, mask = self._forward(x, training=True)
        loss, d_output = self.loss.value_and_gradient(y, y_pred, mask)
        self.backward(d_output, input_gradient=False)
        variables, grads = self._variables_and_grads()
        self.optimizer.apply(grads, variables)
        self._update_metrics(y, y_pred, mask)
        return loss

    def fit(self, x, y, batch_size=None, epochs=1, verbose="auto", callbacks=None,
            validation_split=0.0, validation_data=None, shuffle=True, initial_epoch=0):
        """Train for ``epochs`` passes over ``(x, y)`` in mini-batches.

        Parameters
        ----------
        x : array_like
            Inputs, samples first: ``(samples, timesteps, features)``, or
            integer indices ``(samples, timesteps)`` for an ``Embedding``.
        y : array_like
            Targets, samples first (see :mod:`fastlstm.losses`).
        batch_size : int or None
            Samples per update. Default (None) 32.
        epochs : int
            The epoch to stop at (counting ``initial_epoch``). Default 1.
        verbose : {"auto", 0, 1, 2}
            0 silent; 1 (and "auto") a progress bar per epoch showing the
            step, the ETA, the loss and the metrics, redrawn in place; 2 one
            line per epoch.
        callbacks : list of fastlstm.callbacks.Callback or None
        validation_split : float in [0, 1)
            Fraction of the samples (the last ones, before shuffling, as in
            Keras) held out to compute ``val_*`` logs after each epoch.
            Ignored when ``validation_data`` is given.
        validation_data : tuple (x_val, y_val) or None
        shuffle : bool
            Shuffle the training samples before each epoch (with the
            model's seeded generator). Default True.
        initial_epoch : int
            The epoch to start counting from (to resume training).

        Returns
        -------
        fastlstm.callbacks.History
            ``history.history`` maps each log entry to its value per epoch.
        """
        self._require_compiled("fit")
        x, y = _targets(x, y)
        batch_size = _check_batch_size(batch_size)
        epochs = check_int(epochs, "epochs", minimum=0)
        initial_epoch = check_int(initial_epoch, "initial_epoch", minimum=0)
        verbose = _check_verbose(verbose)
        shuffle = check_bool(shuffle, "shuffle")
        x, y, validation = _split_validation(x, y, validation_split, validation_data)
        if x.shape[0] == 0:
            raise ValueError("x must hold at least one sample")

        self.history = History()
        callback_list = CallbackList(callbacks, self, {
            "epochs": epochs, "steps": math.ceil(x.shape[0] / batch_size), "verbose": verbose})
        # After the user's callbacks, as in Keras: the bar's epoch line comes last.
        callback_list.append(self.history)
        if verbose:
            callback_list.append(ProgbarLogger())

        self.stop_training = False
        callback_list.on_train_begin()
        epoch_logs = {}
        for epoch in range(initial_epoch, epochs):
            self._reset_metrics()
            callback_list.on_epoch_begin(epoch)
            order = self._rng.permutation(x.shape[0]) if shuffle else None
            epoch_logs = self._train_epoch(x, y, batch_size, order, callback_list)
            if validation is not None:
                val_logs = self._evaluate(*validation, batch_size, 0, callback_list)
                epoch_logs.update({f"val_{key}": value for key, value in val_logs.items()})
            callback_list.on_epoch_end(epoch, epoch_logs)
            if self.stop_training:
                break
        callback_list.on_train_end(epoch_logs)
        return self.history

    def _train_epoch(self, x, y, batch_size, order, callback_list):
        """One pass over ``x`` in the batches of ``order``; the epoch's logs."""
        loss_total = 0.0
        seen = 0
        logs = {}
        for step, batch in enumerate(_batches(x.shape[0], batch_size, order)):
            callback_list.on_train_batch_begin(step)
            x_batch, y_batch = x[batch], y[batch]
            loss = self._train_step(x_batch, y_batch)
            loss_total += loss * x_batch.shape[0]
            seen += x_batch.shape[0]
            logs = self._logs(loss_total / seen)
            callback_list.on_train_batch_end(step, logs)
            if self.stop_training:
                break
        return dict(logs)

    def evaluate(self, x, y, batch_size=None, verbose="auto", callbacks=None,
                 return_dict=False):
        """The loss and metrics on ``(x, y)``, in batches inside ``no_grad()``.

        Parameters
        ----------
        x, y : array_like
            As for :meth:`fit`.
        batch_size : int or None
            Default (None) 32.
        verbose : {"auto", 0, 1, 2}
            As for :meth:`fit` (one bar, no epoch line).
        callbacks : list of fastlstm.callbacks.Callback or None
            Their ``on_test_*`` hooks are called.
        return_dict : bool
            Return ``{"loss": ..., <metric>: ...}``.

        Returns
        -------
        float, list or dict
            The loss when there are no metrics, else ``[loss, *metrics]``
            (in compile's order), or the dict.
        """
        self._require_compiled("evaluate")
        x, y = _targets(x, y)
        batch_size = _check_batch_size(batch_size)
        verbose = _check_verbose(verbose)
        return_dict = check_bool(return_dict, "return_dict")
        steps = math.ceil(x.shape[0] / batch_size)
        callback_list = CallbackList(callbacks, self, {"steps": steps, "verbose": verbose})
        logs = self._evaluate(x, y, batch_size, verbose, callback_list)
        if return_dict:
            return logs
        if len(logs) == 1:
            return logs["loss"]
        return list(logs.values())

    def _evaluate(self, x, y, batch_size, verbose, callback_list):
        if x.shape[0] == 0:
            raise ValueError("x must hold at least one sample")
        self._reset_metrics()
        steps = math.ceil(x.shape[0] / batch_size)
        bar = Progbar(steps, verbose) if verbose else None
        callback_list.on_test_begin()
        loss_total = 0.0
        seen = 0
        logs = {}
        with no_grad():
            for step, batch in enumerate(_batches(x.shape[0], batch_size)):
                callback_list.on_test_batch_begin(step)
                x_batch, y_batch = x[batch], y[batch]
                y_pred, mask = self._forward(x_batch, training=False)
                loss_total += self.loss(y_batch, y_pred, mask) * x_batch.shape[0]
                seen += x_batch.shape[0]
                self._update_metrics(y_batch, y_pred, mask)
                logs = self._logs(loss_total / seen)
                callback_list.on_test_batch_end(step, logs)
                if bar is not None:
                    bar.update(step + 1, logs, finalize=step + 1 == steps)
        callback_list.on_test_end(logs)
        return logs

    def predict(self, x, batch_size=None, verbose="auto", callbacks=None):
        """The model's outputs for ``x``, in batches inside ``no_grad()``
        with ``training=False`` (dropout off).

        Parameters
        ----------
        x : array_like
            Inputs, samples first.
        batch_size : int or None
            Default (None) 32.
        verbose : {"auto", 0, 1, 2}
            A progress bar as in :meth:`evaluate`.
        callbacks : list of fastlstm.callbacks.Callback or None
            Their ``on_predict_*`` hooks are called.

        Returns
        -------
        ndarray
            The outputs of every batch, concatenated on the first axis.
        """
        x, _ = _data(x, None)
        if x.shape[0] == 0:
            raise ValueError("x must hold at least one sample")
        batch_size = _check_batch_size(batch_size)
        verbose = _check_verbose(verbose)
        steps = math.ceil(x.shape[0] / batch_size)
        callback_list = CallbackList(callbacks, self, {"steps": steps, "verbose": verbose})
        bar = Progbar(steps, verbose) if verbose else None
        callback_list.on_predict_begin()
        outputs = []
        with no_grad():
            for step, batch in enumerate(_batches(x.shape[0], batch_size)):
                callback_list.on_predict_batch_begin(step)
                y_pred, _ = self._forward(x[batch], training=False)
                outputs.append(y_pred)
                callback_list.on_predict_batch_end(step, {"outputs": y_pred})
                if bar is not None:
                    bar.update(step + 1, finalize=step + 1 == steps)
        callback_list.on_predict_end()
        return np.concatenate(outputs, axis=0)
