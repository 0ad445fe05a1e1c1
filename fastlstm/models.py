"""``Sequential``: a stack of layers with Keras' training workflow.

``compile`` chooses the optimizer, loss and metrics; ``fit`` trains in
mini-batches, ``evaluate`` and ``predict`` run in batches inside
:func:`fastlstm.no_grad`; ``save_weights`` / ``load_weights`` keep the
weights in a NumPy ``.npz`` file with one named array per weight
(``"layer_0/kernel"``, ``"layer_1/forward_bias"``, ...).

A training step is: forward through the layers (``training=True``), the
loss and its gradient with respect to the output, ``backward`` through the
layers in reverse, then one optimizer update of every layer's ``params``
from its ``grads``.

Masks travel as in Keras: an ``Embedding(mask_zero=True)`` makes one
(``x != 0``), ``Dense`` and ``Dropout`` pass it on, an ``LSTM`` consumes it
and passes it on only with ``return_sequences=True``. A mask that reaches
the output restricts the loss and the metrics to the kept positions.

Examples
--------
>>> import numpy as np, fastlstm as fl
>>> from fastlstm.layers import Dense
>>> from fastlstm.models import Sequential
>>> rng = np.random.default_rng(0)
>>> x = rng.standard_normal((64, 5, 2))
>>> y = x.sum(axis=(1, 2))[:, None]
>>> model = Sequential([fl.LSTM(8, seed=0), Dense(1, seed=1)], seed=0)
>>> model.compile(optimizer="adam", loss="mse", metrics=["mae"])
>>> history = model.fit(x, y, batch_size=16, epochs=2, verbose=0)
>>> sorted(history.history)
['loss', 'mae']
>>> model.predict(x[:3], verbose=0).shape
(3, 1)
"""
import inspect
import math
import numbers
import os
import secrets
import zipfile
import zlib

import numpy as np

from . import losses as losses_module
from . import metrics as metrics_module
from . import optimizers as optimizers_module
from ._validation import as_real_array, check_bool, describe
from .callbacks import CallbackList, History, Progbar, ProgbarLogger
from .layers import LSTM, Bidirectional, Embedding, _seed_sequence, no_grad

__all__ = ["Sequential"]

_LAYER_INTERFACE = ("backward", "params", "grads", "get_weights", "set_weights")


def _check_verbose(verbose):
    if isinstance(verbose, str) and verbose == "auto":
        return 1
    if isinstance(verbose, (bool, np.bool_)) or not isinstance(verbose, numbers.Integral) \
            or verbose not in (0, 1, 2):
        raise ValueError(f"verbose must be 'auto', 0 (silent), 1 (progress bar) or 2 (one "
                         f"line per epoch), got {describe(verbose)}")
    return int(verbose)


def _check_batch_size(batch_size):
    if batch_size is None:
        return 32
    if isinstance(batch_size, (bool, np.bool_)) or not isinstance(batch_size, numbers.Integral):
        raise TypeError(f"batch_size must be a positive int or None (32), got "
                        f"{describe(batch_size)}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size}")
    return int(batch_size)


def _check_count(value, name):
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be a non-negative int, got {describe(value)}")
    if value < 0:
        raise ValueError(f"{name} must be a non-negative int, got {value}")
    return int(value)


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


def _accepts_mask(layer):
    try:
        return "mask" in inspect.signature(layer.__call__).parameters
    except (TypeError, ValueError):
        return False


def _output_mask(layer, x, mask):
    """The mask a layer passes on, as Keras' ``compute_mask``."""
    if isinstance(layer, (LSTM, Bidirectional)):
        if mask is None or not layer.return_sequences:
            return None
        # A backward LSTM returns its sequence in processing (reversed) order.
        return mask[:, ::-1] if getattr(layer, "go_backwards", False) else mask
    if hasattr(layer, "compute_mask"):
        return layer.compute_mask(x, mask)
    return None


def _output_shape(layer, shape):
    """The layer's output shape for ``shape`` (batch None), or None if unknown."""
    if shape is None:
        return None
    if isinstance(layer, (LSTM, Bidirectional)):
        units = layer.units
        if isinstance(layer, Bidirectional) and layer.merge_mode == "concat":
            units *= 2
        return tuple(shape[:2]) + (units,) if layer.return_sequences else (shape[0], units)
    if hasattr(layer, "compute_output_shape"):
        return tuple(layer.compute_output_shape(shape))
    return None


def _format_shape(shape):
    return "?" if shape is None else str(tuple(shape)).replace(",)", ")")


class Sequential:
    """A linear stack of layers, trained as with ``keras.Sequential``.

    Parameters
    ----------
    layers : list or None
        Layers in order: fastlstm's (``LSTM``, ``Bidirectional``, ``Dense``,
        ``Embedding``, ``Dropout``) or any object with their interface
        (``__call__(x, training=...)``, ``backward(dy)``, ``params``,
        ``grads``, ``get_weights``, ``set_weights``). Each must return one
        array: an LSTM with ``return_state=True`` does not fit a stack.
    seed : int, numpy.random.Generator, numpy.random.SeedSequence or None
        Seeds the shuffling of ``fit``. With seeded layers, the same data,
        float64 and ``fastlstm.set_num_threads(1)``, ``fit`` gives the same
        weights bit for bit, run after run.
    name : str
        Shown by :meth:`summary`. Default "sequential".

    Attributes
    ----------
    history : fastlstm.callbacks.History or None
        That of the last ``fit``.
    stop_training : bool
        A callback sets it to end ``fit`` after the current batch.
    """

    def __init__(self, layers=None, *, seed=None, name="sequential"):
        if not isinstance(name, str):
            raise TypeError(f"name must be a str, got {describe(name)}")
        self.name = name
        self.layers = []
        self._rng = np.random.default_rng(_seed_sequence(seed))
        self.optimizer = None
        self.loss = None
        self._metric_identifiers = []
        self.metrics = []
        self.history = None
        self.stop_training = False
        self._input_shape = None
        self.output_mask = None
        if layers is not None:
            if isinstance(layers, np.ndarray) or not isinstance(layers, (list, tuple)):
                raise TypeError(f"layers must be a list of layers, got {describe(layers)}")
            for layer in layers:
                self.add(layer)

    def __repr__(self):
        return f"Sequential([{', '.join(repr(layer) for layer in self.layers)}])"

    # -- structure ---------------------------------------------------------

    def add(self, layer):
        """Append a layer to the stack."""
        missing = [name for name in _LAYER_INTERFACE if not hasattr(layer, name)]
        if not callable(layer) or missing:
            raise TypeError(f"layer must be a fastlstm layer (callable, with "
                            f"{', '.join(_LAYER_INTERFACE)}), got {describe(layer)}"
                            + (f" (it lacks {', '.join(missing)})" if missing else ""))
        if getattr(layer, "return_state", False) or (
                isinstance(layer, Bidirectional) and layer.merge_mode is None):
            raise ValueError(f"every layer of a Sequential model must return one array, got "
                             f"{layer!r}, which returns a list; use return_state=False (and a "
                             f"merge_mode), or the layers directly")
        self.layers.append(layer)

    def pop(self):
        """Remove the last layer and return it."""
        if not self.layers:
            raise IndexError("pop() from a Sequential model with no layers")
        return self.layers.pop()

    @property
    def built(self):
        """Whether every layer has its weights."""
        return bool(self.layers) and all(getattr(layer, "built", True) for layer in self.layers)

    def build(self, input_shape):
        """Create every layer's weights for inputs of ``input_shape``.

        Parameters
        ----------
        input_shape : tuple
            The input's shape with the batch axis first, which may be None,
            as in Keras: ``(None, timesteps, features)``, or
            ``(None, timesteps)`` for an ``Embedding`` first; timesteps may
            be None too.
        """
        if not isinstance(input_shape, (tuple, list)) or len(input_shape) < 2 or any(
                d is not None and (isinstance(d, bool) or not isinstance(d, numbers.Integral)
                                   or d < 1) for d in input_shape):
            raise ValueError(f"input_shape must be a tuple (batch, ...) of positive ints or "
                             f"None, with the batch axis first, got {describe(input_shape)}")
        self._check_layers()
        if input_shape[-1] is None and not isinstance(self.layers[0], Embedding):
            raise ValueError(f"input_shape must give the number of features (last axis), got "
                             f"{tuple(input_shape)}")
        probe = np.zeros(tuple(1 if d is None else d for d in input_shape))
        with no_grad():
            self._forward(probe, training=False)
        self._input_shape = (None,) + tuple(input_shape[1:])

    def _check_layers(self):
        if not self.layers:
            raise ValueError("the model has no layers: pass them to Sequential([...]) or add() "
                             "them")

    # -- forward and backward ---------------------------------------------

    def __call__(self, x, mask=None, training=False):
        """Run the layers on ``x``; the output's mask is kept in ``output_mask``."""
        training = False if training is None else check_bool(training, "training")
        y, self.output_mask = self._forward(x, training, mask)
        return y

    def _forward(self, x, training, mask=None):
        self._check_layers()
        if self._input_shape is None:
            shape = np.shape(x)
            self._input_shape = (None,) + tuple(shape[1:])
        for layer in self.layers:
            if mask is not None and _accepts_mask(layer):
                y = layer(x, mask=mask, training=training)
            else:
                y = layer(x, training=training)
            mask = _output_mask(layer, x, mask)
            x = y
        return x, mask

    def backward(self, dy):
        """Backpropagate ``dy`` (the gradient of the loss with respect to the
        output) through every layer; fills each layer's ``grads`` and returns
        the input's gradient (None when the first layer is an Embedding)."""
        self._check_layers()
        for layer in reversed(self.layers):
            dy = layer.backward(dy)
            if dy is None:
                break
        return dy

    # -- weights -----------------------------------------------------------

    @property
    def params(self):
        """Every layer's weights, keyed ``"layer_<i>/<name>"`` (the layers'
        own arrays, not copies): the names of the weights file."""
        return {f"layer_{i}/{name}": array for i, layer in enumerate(self.layers)
                for name, array in layer.params.items()}

    @property
    def grads(self):
        """The gradients of the last ``backward``, keyed as :attr:`params`."""
        return {f"layer_{i}/{name}": array for i, layer in enumerate(self.layers)
                for name, array in layer.grads.items()}

    def count_params(self):
        """The number of weights."""
        return sum(array.size for array in self.params.values())

    def get_weights(self):
        """Copies of every layer's weights, layer after layer (Keras' order)."""
        return [w for layer in self.layers for w in layer.get_weights()]

    def set_weights(self, weights):
        """Set every layer's weights from a list in :meth:`get_weights` order.

        Every shape is checked before anything changes.
        """
        current = self.get_weights()
        if not isinstance(weights, (list, tuple)) or len(weights) != len(current):
            raise ValueError(f"weights must be a list of {len(current)} arrays (get_weights() "
                             f"order), got {describe(weights)}")
        arrays = []
        for k, (new, old) in enumerate(zip(weights, current)):
            array = as_real_array(new, f"weights[{k}]")
            if array.shape != old.shape:
                raise ValueError(f"weights[{k}] must have shape {old.shape}, got {array.shape}")
            arrays.append(array)
        start = 0
        for layer in self.layers:
            count = len(layer.get_weights())
            layer.set_weights(arrays[start:start + count])
            start += count

    def save_weights(self, filepath, overwrite=True):
        """Write the weights to a ``.npz`` file, atomically.

        Parameters
        ----------
        filepath : str or os.PathLike
            Must end in ``.npz``. Arrays are named as :attr:`params`.
        overwrite : bool
            Whether an existing file may be replaced. Default True.

        Notes
        -----
        The arrays go to a temporary file in the same directory, which then
        replaces ``filepath`` in one rename: a crash leaves either the old
        file or the new one, never half of one.
        """
        path = self._weights_path(filepath)
        overwrite = check_bool(overwrite, "overwrite")
        arrays = self.params
        if not arrays:
            raise RuntimeError("the model has no weights yet: call build(input_shape) or the "
                               "model on data first")
        if not overwrite and os.path.exists(path):
            raise FileExistsError(f"filepath {path!r} exists and overwrite=False")
        temporary = f"{path}.{secrets.token_hex(6)}.tmp"
        try:
            with open(temporary, "xb") as stream:
                np.savez(stream, **arrays)
                stream.flush()
                os.fsync(stream.fileno())
            os.replace(temporary, path)
        except BaseException:
            if os.path.exists(temporary):
                os.unlink(temporary)
            raise

    def load_weights(self, filepath):
        """Read weights written by :meth:`save_weights`.

        Every name and shape is checked before anything changes: a file that
        cannot be read, lacks a weight, has one the model does not, or has
        one of another shape raises ``ValueError`` naming it, and the model
        is left as it was.
        """
        path = self._weights_path(filepath)
        expected = self.params
        if not expected:
            raise RuntimeError("the model has no weights to load into yet: call "
                               "build(input_shape) or the model on data first")
        try:
            archive = np.load(path, allow_pickle=False)
            if not isinstance(archive, np.lib.npyio.NpzFile):
                raise ValueError("it holds a single array, not named weights")
            with archive:
                loaded = {name: archive[name] for name in archive.files}
        except FileNotFoundError:
            raise
        except (OSError, ValueError, TypeError, EOFError, KeyError, zipfile.BadZipFile,
                zlib.error) as error:
            raise ValueError(f"filepath {path!r} is not a readable .npz weights file: "
                             f"{error}") from None
        missing = [name for name in expected if name not in loaded]
        unexpected = sorted(name for name in loaded if name not in expected)
        problems = []
        if missing:
            problems.append(f"missing from the file: {', '.join(missing)}")
        if unexpected:
            problems.append(f"in the file but not in the model: {', '.join(unexpected)}")
        for name, array in expected.items():
            if name not in loaded:
                continue
            value = loaded[name]
            if value.dtype.kind not in "fiub":
                problems.append(f"{name} holds dtype {value.dtype}, not real numbers")
            elif value.shape != array.shape:
                problems.append(f"{name} has shape {value.shape} in the file, the model's is "
                                f"{array.shape}")
        if problems:
            raise ValueError(f"weights file {path!r} does not match the model: "
                             f"{'; '.join(problems)}")
        for name, array in expected.items():
            np.copyto(array, loaded[name], casting="unsafe")

    @staticmethod
    def _weights_path(filepath):
        try:
            path = os.fspath(filepath)
        except TypeError:
            raise TypeError(f"filepath must be a str or os.PathLike, got "
                            f"{describe(filepath)}") from None
        if not isinstance(path, str) or not path.endswith(".npz"):
            raise ValueError(f"filepath must end in '.npz' (weights are saved as NumPy .npz), "
                             f"got {path!r}")
        return path

    # -- summary -------------------------------------------------------------

    def summary(self, print_fn=None):
        """Print each layer's output shape and number of weights.

        Parameters
        ----------
        print_fn : callable or None
            Called with each line; default :func:`print`.
        """
        self._check_layers()
        if not self.built:
            raise RuntimeError("the model is not built yet, so its shapes are unknown: call "
                               "build(input_shape) or the model on data first")
        print_fn = print if print_fn is None else print_fn
        rows = []
        shape = self._input_shape
        for i, layer in enumerate(self.layers):
            shape = _output_shape(layer, shape)
            count = sum(array.size for array in layer.params.values())
            rows.append((f"layer_{i} ({type(layer).__name__})", _format_shape(shape),
                         f"{count:,}"))
        widths = [max(28, *(len(r[0]) + 2 for r in rows)),
                  max(26, *(len(r[1]) + 2 for r in rows)), 12]
        width = sum(widths) + 1
        total = self.count_params()
        print_fn(f'Model: "{self.name}"')
        print_fn("_" * width)
        print_fn(" " + "Layer (type)".ljust(widths[0]) + "Output Shape".ljust(widths[1])
                 + "Param #".rjust(widths[2]))
        print_fn("=" * width)
        for name, shape_text, count in rows:
            print_fn(" " + name.ljust(widths[0]) + shape_text.ljust(widths[1])
                     + count.rjust(widths[2]))
        print_fn("=" * width)
        print_fn(f"Total params: {total:,}")
        print_fn(f"Trainable params: {total:,}")
        print_fn("Non-trainable params: 0")
        print_fn("_" * width)

    # -- training ----------------------------------------------------------

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
        self.backward(d_output)
        variables, grads = self._variables_and_grads()
        self.optimizer.apply(grads, variables)
        self._resolve_metrics(y, y_pred)
        for metric in self.metrics:
            metric.update_state(y, y_pred, mask)
        return loss

    def _batches(self, count, batch_size, order=None):
        for start in range(0, count, batch_size):
            stop = min(start + batch_size, count)
            yield slice(start, stop) if order is None else order[start:stop]

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
        x, y = _data(x, y)
        if y is None:
            raise TypeError("y must be an array of targets, got None")
        batch_size = _check_batch_size(batch_size)
        epochs = _check_count(epochs, "epochs")
        initial_epoch = _check_count(initial_epoch, "initial_epoch")
        verbose = _check_verbose(verbose)
        shuffle = check_bool(shuffle, "shuffle")
        if isinstance(validation_split, (bool, np.bool_)) or \
                not isinstance(validation_split, numbers.Real):
            raise TypeError(f"validation_split must be a float in [0, 1), got "
                            f"{describe(validation_split)}")
        if not 0.0 <= validation_split < 1.0:
            raise ValueError(f"validation_split must be in [0, 1), got {validation_split!r}")
        if validation_data is not None:
            if not isinstance(validation_data, (tuple, list)) or len(validation_data) != 2:
                raise ValueError(f"validation_data must be a tuple (x_val, y_val), got "
                                 f"{describe(validation_data)}")
            validation = _data(*validation_data, x_name="validation_data[0] (x_val)",
                               y_name="validation_data[1] (y_val)")
        elif validation_split:
            split_at = int(math.floor(x.shape[0] * (1.0 - validation_split)))
            if split_at == 0 or split_at == x.shape[0]:
                raise ValueError(f"validation_split={validation_split} of {x.shape[0]} samples "
                                 f"leaves {split_at} to train on and {x.shape[0] - split_at} to "
                                 f"validate; both need at least one")
            validation = (x[split_at:], y[split_at:])
            x, y = x[:split_at], y[:split_at]
        else:
            validation = None
        if x.shape[0] == 0:
            raise ValueError("x must hold at least one sample")

        samples = x.shape[0]
        steps = math.ceil(samples / batch_size)
        self.history = History()
        callback_list = CallbackList(callbacks, self,
                                     {"epochs": epochs, "steps": steps, "verbose": verbose})
        # After the user's callbacks, as in Keras: the bar's epoch line comes last.
        callback_list.append(self.history)
        if verbose:
            callback_list.append(ProgbarLogger())

        self.stop_training = False
        callback_list.on_train_begin()
        epoch_logs = {}
        for epoch in range(initial_epoch, epochs):
            for metric in self.metrics:
                if metric is not None:
                    metric.reset_state()
            callback_list.on_epoch_begin(epoch)
            order = self._rng.permutation(samples) if shuffle else None
            loss_total = 0.0
            seen = 0
            logs = {}
            for step, batch in enumerate(self._batches(samples, batch_size, order)):
                callback_list.on_train_batch_begin(step)
                x_batch, y_batch = x[batch], y[batch]
                loss = self._train_step(x_batch, y_batch)
                count = x_batch.shape[0]
                loss_total += loss * count
                seen += count
                logs = self._logs(loss_total / seen)
                callback_list.on_train_batch_end(step, logs)
                if self.stop_training:
                    break
            epoch_logs = dict(logs)
            if validation is not None:
                val_logs = self._evaluate(*validation, batch_size, 0, callback_list)
                epoch_logs.update({f"val_{key}": value for key, value in val_logs.items()})
            callback_list.on_epoch_end(epoch, epoch_logs)
            if self.stop_training:
                break
        callback_list.on_train_end(epoch_logs)
        return self.history

    def _logs(self, loss):
        logs = {"loss": loss}
        for metric in self.metrics:
            if metric is not None:
                logs[metric.name] = metric.result()
        return logs

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
        x, y = _data(x, y)
        if y is None:
            raise TypeError("y must be an array of targets, got None")
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
        for metric in self.metrics:
            if metric is not None:
                metric.reset_state()
        steps = math.ceil(x.shape[0] / batch_size)
        bar = Progbar(steps, verbose) if verbose else None
        callback_list.on_test_begin()
        loss_total = 0.0
        seen = 0
        logs = {}
        with no_grad():
            for step, batch in enumerate(self._batches(x.shape[0], batch_size)):
                callback_list.on_test_batch_begin(step)
                x_batch, y_batch = x[batch], y[batch]
                y_pred, mask = self._forward(x_batch, training=False)
                loss_total += self.loss(y_batch, y_pred, mask) * x_batch.shape[0]
                seen += x_batch.shape[0]
                self._resolve_metrics(y_batch, y_pred)
                for metric in self.metrics:
                    metric.update_state(y_batch, y_pred, mask)
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
            for step, batch in enumerate(self._batches(x.shape[0], batch_size)):
                callback_list.on_predict_batch_begin(step)
                y_pred, _ = self._forward(x[batch], training=False)
                outputs.append(y_pred)
                callback_list.on_predict_batch_end(step, {"outputs": y_pred})
                if bar is not None:
                    bar.update(step + 1, finalize=step + 1 == steps)
        callback_list.on_predict_end()
        return np.concatenate(outputs, axis=0)
