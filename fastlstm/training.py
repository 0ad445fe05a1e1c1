"""The training loop: ``compile``, ``fit``, ``evaluate``, ``predict`` and
their one-batch forms.

:class:`Trainer` is what :class:`fastlstm.Sequential` trains with. It asks
the model for three things only: ``_forward(x, training)`` returning the
output and its mask, ``_last_calls()``, the calls that forward pass made
(``(first, last, call)``: a layer, or one call running layers ``first`` to
``last``), whose ``backward`` fills the layers' ``grads``, and ``layers``,
whose ``params`` and ``grads`` the optimizer pairs up. A layer
with ``trainable = False`` (or every layer, with the model's
``trainable = False``) gets no update, and the backward pass stops at the
lowest layer that trains. One training step is the forward
pass, the loss and its gradient, the backward pass and one optimizer
update; ``evaluate`` and ``predict`` run in batches inside
:func:`fastlstm.no_grad`. Callbacks see every hook Keras calls (see
:mod:`fastlstm.callbacks`).

Data comes as arrays, which the loop cuts into batches, or already in
batches, as Keras takes it: a sequence of batches (an object with
``__len__`` and ``__getitem__``, like ``keras.utils.PyDataset``), an
iterator such as a generator (read once), or any other iterable of batches
(an object with ``__iter__``, like a ``tf.data.Dataset`` or a PyTorch
``DataLoader``, iterated afresh for each pass), each batch a tuple ``(x,)``,
``(x, y)`` or ``(x, y, sample_weight)``.

Training and evaluation data must be finite: inputs, targets and sample
weights are checked for NaN and inf (arrays once, batches as they are
read), because one NaN in a training batch makes every weight NaN after
one update. ``predict`` does not check: a NaN input gives NaN outputs for
its own samples only.
"""
import math
import sys
import warnings

import numpy as np

from . import _quantize
from . import losses as losses_module
from . import metrics as metrics_module
from . import optimizers as optimizers_module
from ._validation import (as_real_array, check_bool, check_int, check_real, describe, is_int,
                          is_real)
from .callbacks import BackupAndRestore, CallbackList, History, Progbar, ProgbarLogger
from .layers.base import no_grad

__all__ = ["Trainer"]


def _check_verbose(verbose):
    """0, 1 or 2; "auto" is 1 on a terminal and 2 (one line per epoch) otherwise, as in Keras."""
    if isinstance(verbose, str) and verbose == "auto":
        isatty = getattr(sys.stdout, "isatty", None)
        return 1 if isatty is not None and isatty() else 2
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


def _check_steps(steps, name):
    return None if steps is None else check_int(steps, name)


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


# Values checked for NaN and inf at a time: the boolean block stays small
# (256 KiB) however large the array, and one np.isfinite per block is as
# fast as one over the whole array.
_FINITE_BLOCK = 1 << 18


def _check_finite(array, name):
    """ValueError naming the first NaN or inf in ``array`` (the sample, and
    the index within it); integer and boolean arrays cannot hold one."""
    if array.dtype.kind != "f" or array.size == 0:
        return
    rows = max(1, _FINITE_BLOCK // array[0].size)
    for start in range(0, array.shape[0], rows):
        finite = np.isfinite(array[start:start + rows])
        if finite.all():
            continue
        position = np.unravel_index(np.argmin(finite), finite.shape)
        sample = start + int(position[0])
        within = f", index {tuple(int(k) for k in position[1:])} within the sample" \
            if len(position) > 1 else ""
        raise ValueError(f"{name} must hold finite numbers (one NaN or inf in training data "
                         f"makes every weight NaN after one update), got "
                         f"{array[(sample,) + position[1:]]} at sample {sample}{within}")


def _targets(x, y, x_name="x", y_name="y"):
    """:func:`_data`, with targets required; inputs and targets must be finite."""
    x, y = _data(x, y, x_name, y_name)
    if y is None:
        raise TypeError(f"{y_name} must be an array of targets, got None")
    _check_finite(x, x_name)
    _check_finite(y, y_name)
    return x, y


def _sample_weights(sample_weight, samples, name="sample_weight"):
    """``sample_weight`` as an array with ``samples`` rows, or None."""
    if sample_weight is None:
        return None
    weights = as_real_array(sample_weight, name)
    if weights.ndim == 0 or weights.shape[0] != samples:
        raise ValueError(f"{name} must hold one weight per sample (first axis {samples}), got "
                         f"{describe(weights)}")
    _check_finite(weights, name)
    return weights


def _check_class_weight(class_weight):
    if class_weight is None:
        return None
    if not isinstance(class_weight, dict) or not all(
            is_int(k) and is_real(v) for k, v in class_weight.items()):
        raise TypeError(f"class_weight must be a dict mapping class indices (ints) to weights "
                        f"(floats), got {describe(class_weight)}")
    return {int(k): float(v) for k, v in class_weight.items()}


def _class_sample_weights(y, class_weight, loss):
    """Each sample's weight from the class of its target, as Keras computes
    it: targets ``(samples,)`` or ``(samples, 1)`` hold the class, one-hot
    ``(samples, classes)`` its argmax; a class missing from the dict weighs 1."""
    if y.ndim > 2 or (y.ndim == 2 and y.shape[1] != 1
                      and isinstance(loss, losses_module.SparseCategoricalCrossentropy)):
        raise ValueError(f"class_weight needs one class per sample (targets of shape "
                         f"(samples,), (samples, 1) or one-hot (samples, classes)), got targets "
                         f"of shape {y.shape}; weight the positions of sequence targets with "
                         f"sample_weight of shape (samples, timesteps)")
    if y.ndim == 2:
        y = y[:, 0] if y.shape[1] == 1 else np.argmax(y, axis=1)
    classes = np.round(y).astype(np.int64)
    return np.array([class_weight.get(int(c), 1.0) for c in classes])


def _is_dataset(x):
    """Whether ``x`` holds batches (a sequence of batches, an iterator or
    another iterable) rather than samples."""
    if x is None or isinstance(x, (np.ndarray, list, tuple, dict, str, bytes)) \
            or np.isscalar(x):
        return False
    if hasattr(x, "__array__") or hasattr(x, "__array_interface__"):
        return False
    return hasattr(x, "__iter__") or hasattr(x, "__next__") or (
        hasattr(x, "__len__") and hasattr(x, "__getitem__"))


def _is_sequence(x):
    """Whether batches ``x`` can be read by index (``__len__`` and ``__getitem__``)."""
    return hasattr(x, "__len__") and hasattr(x, "__getitem__")


def _unpack(batch, where, need_targets):
    """``(x, y, sample_weight)`` of one batch a dataset gave; ``where``
    names it in errors (``epoch 2, batch 3 of x``)."""
    if isinstance(batch, tuple) and 1 <= len(batch) <= 3:
        parts = list(batch) + [None] * (3 - len(batch))
    elif not need_targets and not isinstance(batch, tuple):
        parts = [batch, None, None]
    else:
        raise ValueError(f"{where} must be a tuple (x, y) or (x, y, sample_weight), got "
                         f"{describe(batch)}")
    if not need_targets:
        # Predictions read the inputs alone.
        return _data(parts[0], None, f"{where}: x") + (None,)
    x, y = _targets(parts[0], parts[1], f"{where}: x", f"{where}: y")
    return x, y, _sample_weights(parts[2], x.shape[0], f"{where}: sample_weight")


class _Batches:
    """Where a loop's batches come from: arrays cut into batches, a sequence
    of batches read in order (or shuffled order), an iterator, or another
    iterable of batches, iterated afresh for each pass in its own order.

    :meth:`next` gives the next ``(x, y, sample_weight)`` or None at the end
    of a pass. For ``fit``, arrays, sequences and iterables start a new pass
    (reshuffled) when asked for a batch after one ends; ``evaluate`` and
    ``predict`` read one pass at most; an iterator is read once. ``name``
    names the data in errors; with ``first_epoch`` (the number of the first
    :meth:`epoch`, from 0) they name the epoch of a batch too.
    """

    def __init__(self, x, y, sample_weight, batch_size, shuffle, rng, need_targets,
                 owner, name="x", first_epoch=None):
        # Training reads passes after passes; evaluation and prediction one at most.
        self._cycles = owner == "fit"
        self._rng = rng
        self._shuffle = shuffle
        self._need_targets = need_targets
        self._name = name
        self._epoch = None if first_epoch is None else first_epoch - 1
        self._pass = None
        # The order of the pass under way (None: the data's own) and the
        # batches it has given: where a backup resumes the data.
        self._order = None
        self._position = 0
        self.exhausted = False
        # Batches an iterator has given (for messages).
        self.read = 0
        if _is_dataset(x):
            for argument, value in (("y", y), ("sample_weight", sample_weight),
                                    ("batch_size", batch_size)):
                if value is not None:
                    raise ValueError(f"{argument} must be None when {name} gives batches "
                                     f"({owner} reads them from {name}), got {describe(value)}")
            self._dataset = x
            self._arrays = None
            self.is_iterator = hasattr(x, "__next__")
            self.num_batches = None if self.is_iterator or not hasattr(x, "__len__") \
                else len(x)
            if self.num_batches == 0:
                raise ValueError(f"{name} must give at least one batch, got {describe(x)} of "
                                 f"length 0")
            return
        self._dataset = None
        self.is_iterator = False
        if isinstance(x, dict) or not (x is None or isinstance(x, (list, tuple)) or np.isscalar(x)
                                       or hasattr(x, "__array__")
                                       or hasattr(x, "__array_interface__")):
            raise TypeError(f"{name} must be an array of samples (a NumPy array or nested "
                            f"lists), or batches: a sequence with __len__ and __getitem__, an "
                            f"iterator, or an iterable with __iter__; got {describe(x)}")
        if need_targets:
            x, y = _targets(x, y)
        else:
            x, y = _data(x, None)
        if x.shape[0] == 0:
            raise ValueError("x must hold at least one sample")
        self._arrays = (x, y, _sample_weights(sample_weight, x.shape[0]))
        self._batch_size = _check_batch_size(batch_size)
        self.num_batches = math.ceil(x.shape[0] / self._batch_size)

    def _where(self, index):
        """``epoch 2, batch 3 of x``: a batch of a dataset, as errors name it."""
        epoch = "" if self._epoch is None else f"epoch {self._epoch + 1}, "
        return f"{epoch}batch {index} of {self._name}"

    @property
    def rewinds(self):
        """Whether a pass can be resumed at a batch: arrays and sequences can;
        an iterator, and an iterable that orders its own batches, cannot."""
        return self._arrays is not None or _is_sequence(self._dataset)

    def _new_pass(self, resume=None):
        """A pass in a new (shuffled) order, or ``resume = (order, position)``:
        the rest of a pass a backup recorded."""
        if self.is_iterator:
            return self._dataset
        if not self.rewinds:
            return (_unpack(batch, self._where(k), self._need_targets)
                    for k, batch in enumerate(self._dataset))
        if resume is None:
            order = self._rng.permutation(self.num_batches if self._arrays is None
                                          else self._arrays[0].shape[0]) if self._shuffle else None
            resume = (order, 0)
        order, first = resume
        self._order, self._position = order, first
        if self._arrays is None:
            indices = range(self.num_batches) if order is None else order
            return (_unpack(self._dataset[int(k)], self._where(int(k)), self._need_targets)
                    for k in indices[first:])
        x, y, weights = self._arrays
        count, size = x.shape[0], self._batch_size

        def cut():
            for start in range(first * size, count, size):
                stop = min(start + size, count)
                batch = slice(start, stop) if order is None else order[start:stop]
                yield (x[batch], None if y is None else y[batch],
                       None if weights is None else weights[batch])
        return cut()

    def next(self):
        """The next batch, or None when the pass (or the iterator) ends."""
        if self.exhausted:
            return None
        if self._pass is None:
            self._pass = self._new_pass()
        try:
            batch = next(self._pass)
        except StopIteration:
            self._pass = None
            if self.is_iterator:
                self.exhausted = True
            return None
        if self.is_iterator:
            self.read += 1
            return _unpack(batch, self._where(self.read - 1), self._need_targets)
        if self.rewinds:
            self._position += 1
        return batch

    def get_state(self):
        """Where the data is, as plain data: the order of the pass under way
        and the batches it gave (None between passes); an iterator's
        batches read."""
        if not self.rewinds:
            return {"iterator": True, "read": self.read}
        if self._pass is None:
            return {"iterator": False, "pass": None}
        return {"iterator": False, "pass": {"order": self._order, "position": self._position}}

    def set_state(self, state, check_only=False):
        """Continue the pass :meth:`get_state` recorded (of arrays or a
        sequence: an iterator cannot be rewound). ValueError, before
        anything changes, if it does not fit this data; ``check_only``
        stops there."""
        recorded = state["pass"]
        if recorded is not None:
            order, position = recorded["order"], int(recorded["position"])
            size = self.num_batches if self._arrays is None else self._arrays[0].shape[0]
            if order is not None and (not isinstance(order, np.ndarray)
                                      or order.shape != (size,)) \
                    or not 0 <= position <= self.num_batches:
                raise ValueError(f"the backup's data position (batch {position} of a pass over "
                                 f"{'?' if order is None else len(order)} items) does not fit "
                                 f"x ({self.num_batches} batches of {size} items): give the "
                                 f"data of the interrupted fit")
        if check_only:
            return
        self._pass = None if recorded is None else self._new_pass((order, position))

    def epoch(self, steps):
        """The batches of one epoch: ``steps`` of them (continuing the pass
        the previous epoch left, starting new passes as needed), or one
        pass when ``steps`` is None."""
        if steps is not None and not self._cycles and self.num_batches is not None:
            steps = min(steps, self.num_batches)
        if self._epoch is not None:
            self._epoch += 1
        count = 0
        while steps is None or count < steps:
            batch = self.next()
            if batch is None:
                if steps is None or self.is_iterator or not self._cycles:
                    return
                batch = self.next()
                if batch is None:
                    # An iterable that gives no batch at all.
                    return
            count += 1
            yield batch

    def on_epoch_end(self):
        """Tell a sequence of batches that an epoch ended, as Keras does."""
        hook = getattr(self._dataset, "on_epoch_end", None)
        if self._dataset is not None and not self.is_iterator and callable(hook):
            hook()


def _ran_out(batches_read):
    warnings.warn(f"the data ran out after {batches_read} batches, so training stops: an "
                  f"iterator is read once, so it must give steps_per_epoch * epochs batches "
                  f"(a sequence of batches, with __len__ and __getitem__, or an iterable "
                  f"whose __iter__ starts afresh, is read again every epoch)", RuntimeWarning,
                  stacklevel=3)


def _split_validation(x, y, sample_weight, batch_size, validation_split, validation_data):
    """``(x, y, sample_weight, validation)``: the training data and the
    :class:`_Batches` of the validation data (weighted as the training
    samples are, for a split), read whole after each epoch, or None."""
    validation_split = check_real(validation_split, "validation_split", 0.0, 1.0,
                                  high_open=True)
    if validation_data is not None:
        return x, y, sample_weight, _validation_batches(validation_data, batch_size)
    if not validation_split:
        return x, y, sample_weight, None
    if _is_dataset(x):
        raise ValueError("validation_split needs x as an array (it holds out the last "
                         "samples); with batches from a sequence or an iterable, give "
                         "validation_data")
    x, y = _targets(x, y)
    sample_weight = _sample_weights(sample_weight, x.shape[0])
    # The last samples, before shuffling, as in Keras.
    split_at = int(math.floor(x.shape[0] * (1.0 - validation_split)))
    if split_at == 0 or split_at == x.shape[0]:
        raise ValueError(f"validation_split={validation_split} of {x.shape[0]} samples "
                         f"leaves {split_at} to train on and {x.shape[0] - split_at} to "
                         f"validate; both need at least one")
    train_weights = val_weights = None
    if sample_weight is not None:
        train_weights, val_weights = sample_weight[:split_at], sample_weight[split_at:]
    return (x[:split_at], y[:split_at], train_weights,
            _Batches(x[split_at:], y[split_at:], val_weights, batch_size, False, None, True,
                     "fit"))


def _validation_batches(validation_data, batch_size):
    """The :class:`_Batches` of fit's ``validation_data``, as Keras takes it:
    a tuple ``(x_val, y_val)`` or ``(x_val, y_val, val_sample_weight)`` of
    arrays, or batches that can be read again after every epoch."""
    if _is_dataset(validation_data):
        if hasattr(validation_data, "__next__"):
            raise ValueError(f"validation_data is read whole after every epoch, so it must "
                             f"be arrays, a sequence of batches (with __len__ and "
                             f"__getitem__) or an iterable whose __iter__ starts afresh; got "
                             f"{describe(validation_data)}, an iterator, which is read once")
        return _Batches(validation_data, None, None, None, False, None, True, "fit",
                        name="validation_data")
    if not isinstance(validation_data, (tuple, list)) or len(validation_data) not in (2, 3):
        raise ValueError(f"validation_data must be a tuple (x_val, y_val) or (x_val, y_val, "
                         f"val_sample_weight), or batches (a sequence of batches or an "
                         f"iterable), got {describe(validation_data)}")
    x, y = _targets(validation_data[0], validation_data[1], "validation_data[0] (x_val)",
                    "validation_data[1] (y_val)")
    weights = None if len(validation_data) == 2 else _sample_weights(
        validation_data[2], x.shape[0], "validation_data[2] (val_sample_weight)")
    return _Batches(x, y, weights, batch_size, False, None, True, "fit")


class Trainer:
    """Keras' training workflow for a model with ``_forward``,
    ``_last_calls`` and ``layers`` (see the module docstring)."""

    def __init__(self):
        self.optimizer = None
        self.loss = None
        self._metric_identifiers = []
        self.metrics = []
        self.history = None
        self.stop_training = False
        self._loss_total = 0.0
        self._loss_seen = 0
        # During fit: its data and callbacks, and where a restored backup
        # resumes it ((epoch, step), set by the callback that restores it).
        self._fit_data = None
        self._fit_callbacks = []
        self._resume_at = None

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

    def _refuse_quantized(self, method):
        quantized = [layer for layer in self.layers if getattr(layer, "quantization_mode", None)]
        if quantized:
            raise RuntimeError(f"{method}() cannot train this model: "
                               f"{_quantize.training_refused(quantized[0])}")

    def _resolve_metrics(self, y, y_pred):
        """Pick the kind of each ``"accuracy"`` the loss did not decide, from shapes."""
        for k, metric in enumerate(self.metrics):
            if metric is None:
                self.metrics[k] = metrics_module.get(self._metric_identifiers[k], y_true=y,
                                                     y_pred=y_pred)

    def _reset_metrics(self):
        self._loss_total = 0.0
        self._loss_seen = 0
        for metric in self.metrics:
            if metric is not None:
                metric.reset_state()

    def reset_metrics(self):
        """Forget the running loss and metrics (``fit`` and ``evaluate`` do
        this at their start, ``train_on_batch`` and ``test_on_batch`` at each
        call)."""
        self._reset_metrics()

    def _update_metrics(self, y, y_pred, mask, loss, samples):
        self._loss_total += loss * samples
        self._loss_seen += samples
        self._resolve_metrics(y, y_pred)
        for metric in self.metrics:
            metric.update_state(y, y_pred, mask)

    def _logs(self):
        """The loss (the mean over the samples seen, as Keras' loss tracker
        weighs each batch by its size) and the metrics since the last reset."""
        logs = {"loss": self._loss_total / self._loss_seen if self._loss_seen else 0.0}
        for metric in self.metrics:
            if metric is not None:
                logs[metric.name] = metric.result()
        return logs

    @staticmethod
    def _returned(logs, return_dict):
        """What evaluate and the batch methods return: the dict, the loss
        alone without metrics, else ``[loss, *metrics]``."""
        if return_dict:
            return dict(logs)
        if len(logs) == 1:
            return logs["loss"]
        return list(logs.values())

    def _layer_trains(self, layer):
        """Whether training updates ``layer``'s weights."""
        return getattr(self, "trainable", True) and getattr(layer, "trainable", True)

    def _variables_and_grads(self):
        """Every weight and its gradient, None for a frozen layer's: the
        optimizer leaves those weights alone, and its slots stay paired
        with the same arrays when ``trainable`` changes between calls."""
        variables, grads = [], []
        for layer in self.layers:
            trains = self._layer_trains(layer)
            layer_grads = layer.grads
            for name, array in layer.params.items():
                variables.append(array)
                grads.append(layer_grads.get(name) if trains else None)
        return variables, grads

    def _backward_for_update(self, d_output):
        """Backpropagate only as far as the update needs: down to the lowest
        layer that trains, which computes no input gradient (the layers
        below it are frozen, or it is the first, whose input is data). With
        every layer trainable this is ``backward(d_output,
        input_gradient=False)``."""
        lowest = next((i for i, layer in enumerate(self.layers) if self._layer_trains(layer)),
                      None)
        if lowest is None:
            return
        # A call may run several layers (a pipelined stack of LSTMs).
        for first, last, call in reversed(self._last_calls()):
            if last < lowest:
                break
            d_output = call.backward(d_output, first > lowest)
            if d_output is None:
                break

    def _loss_value_and_gradient(self, y, y_pred, mask, sample_weight):
        if sample_weight is None:
            return self.loss.value_and_gradient(y, y_pred, mask)
        return self.loss.value_and_gradient(y, y_pred, mask, sample_weight)

    def _train_step(self, x, y, sample_weight=None):
        y_pred, mask = self._forward(x, training=True)
        loss, d_output = self._loss_value_and_gradient(y, y_pred, mask, sample_weight)
        self._backward_for_update(d_output)
        variables, grads = self._variables_and_grads()
        self.optimizer.apply(grads, variables)
        self._update_metrics(y, y_pred, mask, loss, x.shape[0])
        return loss

    def _test_step(self, x, y, sample_weight=None):
        with no_grad():
            y_pred, mask = self._forward(x, training=False)
        loss = self._loss_value_and_gradient(y, y_pred, mask, sample_weight)[0]
        self._update_metrics(y, y_pred, mask, loss, x.shape[0])
        return loss

    def _weighted(self, y, sample_weight, class_weight):
        """The batch's sample weights, from ``class_weight`` when it is given."""
        if class_weight is None:
            return sample_weight
        if sample_weight is not None:
            raise ValueError("class_weight and sample_weight cannot both be given (Keras' "
                             "rule): fold the class weights into sample_weight")
        return _class_sample_weights(y, class_weight, self.loss)

    def fit(self, x=None, y=None, batch_size=None, epochs=1, verbose="auto", callbacks=None,
            validation_split=0.0, validation_data=None, shuffle=True, class_weight=None,
            sample_weight=None, initial_epoch=0, steps_per_epoch=None):
        """Train for ``epochs`` passes over the data in mini-batches.

        Parameters
        ----------
        x : array_like, sequence of batches, iterator or iterable of batches
            Inputs, samples first: ``(samples, timesteps, features)``, or
            integer indices ``(samples, timesteps)`` for an ``Embedding``.
            Or the data already in batches (then ``y``, ``sample_weight``
            and ``batch_size`` must be None): an object with ``__len__`` and
            ``__getitem__`` (like ``keras.utils.PyDataset``; its
            ``on_epoch_end()``, if any, is called after each epoch), an
            iterator such as a generator (read once), or any other object
            with ``__iter__`` (like a ``tf.data.Dataset`` or a PyTorch
            ``DataLoader``), iterated afresh for each pass; each batch a
            tuple ``(x, y)`` or ``(x, y, sample_weight)``. Inputs, targets
            and sample weights must be finite: the first NaN or inf raises
            ``ValueError`` naming the array, the sample and the index within
            it (and the epoch and batch, for data in batches).
        y : array_like or None
            Targets, samples first (see :mod:`fastlstm.losses`).
        batch_size : int or None
            Samples per update for array data. Default (None) 32.
        epochs : int
            The epoch to stop at (counting ``initial_epoch``). Default 1.
        verbose : {"auto", 0, 1, 2}
            0 silent; 1 a progress bar per epoch showing the step, the ETA,
            the loss and the metrics, redrawn in place; 2 one line per epoch.
            "auto" (the default) is 1 when standard output is a terminal
            and 2 otherwise (a log file), as in Keras.
        callbacks : list of fastlstm.callbacks.Callback or None
        validation_split : float in [0, 1)
            Fraction of the samples (the last ones, before shuffling, as in
            Keras) held out to compute ``val_*`` logs after each epoch.
            Ignored when ``validation_data`` is given; needs array data.
        validation_data : tuple, sequence of batches, iterable or None
            ``(x_val, y_val)`` or ``(x_val, y_val, val_sample_weight)``, or
            batches as for ``x`` that can be read again after every epoch
            (a sequence or an iterable, not an iterator).
        shuffle : bool
            Shuffle the training samples (or the order of a sequence's
            batches) before each pass, with the model's seeded generator.
            An iterator is read in its own order. Default True.
        class_weight : dict or None
            ``{class index: weight}``: each sample's loss is weighted by the
            weight of its target's class (the class index, or the argmax of
            a one-hot target); classes not in the dict weigh 1. Cannot be
            combined with ``sample_weight``.
        sample_weight : array_like or None
            A weight per sample ``(samples,)``, or per position
            ``(samples, timesteps)`` for sequence outputs, multiplying each
            loss term (see :meth:`fastlstm.losses.Loss.value_and_gradient`).
            Metrics are not weighted (Keras weights only
            ``weighted_metrics``).
        initial_epoch : int
            The epoch to start counting from (to resume training). A
            :class:`~fastlstm.callbacks.BackupAndRestore` that restores a
            backup starts ``fit`` where the backup was made instead.
        steps_per_epoch : int or None
            Batches per epoch. None: one pass over the data (an iterator:
            until it ends). Given, an epoch continues the pass the previous
            one left and starts new (reshuffled) passes over arrays, a
            sequence or an iterable as needed; an iterator that ends before
            ``steps_per_epoch * epochs`` batches stops training with a
            ``RuntimeWarning``.

        Returns
        -------
        fastlstm.callbacks.History
            ``history.history`` maps each log entry to its value per epoch.
        """
        self._require_compiled("fit")
        self._refuse_quantized("fit")
        epochs = check_int(epochs, "epochs", minimum=0)
        initial_epoch = check_int(initial_epoch, "initial_epoch", minimum=0)
        verbose = _check_verbose(verbose)
        shuffle = check_bool(shuffle, "shuffle")
        steps_per_epoch = _check_steps(steps_per_epoch, "steps_per_epoch")
        class_weight = _check_class_weight(class_weight)
        if class_weight is not None and sample_weight is not None:
            raise ValueError("class_weight and sample_weight cannot both be given (Keras' "
                             "rule): fold the class weights into sample_weight")
        x, y, sample_weight, validation = _split_validation(
            x, y, sample_weight, batch_size, validation_split, validation_data)
        data = _Batches(x, y, sample_weight, batch_size, shuffle, self._rng, True, "fit",
                        first_epoch=initial_epoch)
        steps = steps_per_epoch or data.num_batches

        self.history = History()
        callback_list = CallbackList(callbacks, self, {
            "epochs": epochs, "steps": steps, "verbose": verbose})
        # After the user's callbacks, as in Keras: the bar's epoch line comes last.
        callback_list.append(self.history)
        # A backup records the state the other callbacks and the History reach at each hook.
        callback_list.move_to_end(BackupAndRestore)
        if verbose:
            callback_list.append(ProgbarLogger())

        self.stop_training = False
        self._fit_data, self._fit_callbacks = data, callback_list.callbacks
        self._resume_at = None
        callback_list.on_train_begin()
        first_epoch, first_step = self._resume_at or (initial_epoch, 0)
        if self._resume_at is not None and self.stop_training and not first_step:
            # The interrupted fit had stopped: only on_train_end was left.
            first_epoch = epochs
        epoch_logs = {}
        for epoch in range(first_epoch, epochs):
            if data.exhausted:
                _ran_out(data.read)
                break
            if not first_step:
                self._reset_metrics()
            callback_list.on_epoch_begin(epoch)
            epoch_logs, count = self._train_epoch(data, steps_per_epoch, class_weight,
                                                  callback_list, first_step)
            first_step = 0
            if count == 0:
                raise ValueError(f"x gave no batch in epoch {epoch + 1}: give data with at "
                                 f"least one batch")
            if validation is not None:
                val_logs = self._evaluate(validation, None, 0, callback_list)
                epoch_logs.update({f"val_{key}": value for key, value in val_logs.items()})
            data.on_epoch_end()
            callback_list.on_epoch_end(epoch, epoch_logs)
            if steps_per_epoch is not None and count < steps_per_epoch:
                _ran_out(data.read)
                break
            if self.stop_training:
                break
        callback_list.on_train_end(epoch_logs)
        self._fit_data, self._fit_callbacks = None, []
        return self.history

    def _train_epoch(self, data, steps, class_weight, callback_list, first_step=0):
        """One epoch's batches of ``data`` from batch ``first_step`` on (a
        restored backup's; the running logs then continue); the epoch's logs
        and its number of batches."""
        logs = self._logs() if first_step else {}
        count = first_step
        if first_step and self.stop_training:
            return dict(logs), count
        remaining = None if steps is None else steps - first_step
        for step, (x_batch, y_batch, weights) in enumerate(data.epoch(remaining), first_step):
            callback_list.on_train_batch_begin(step)
            self._train_step(x_batch, y_batch, self._weighted(y_batch, weights, class_weight))
            count += 1
            logs = self._logs()
            callback_list.on_train_batch_end(step, logs)
            if self.stop_training:
                break
        return dict(logs), count

    def _fit_state(self):
        """What a backup of the running fit holds beyond the layers, the
        optimizer and the callbacks, as plain data: where the data is, the
        epoch's running loss and metrics, and whether a callback stopped
        training."""
        return {"data": self._fit_data.get_state(), "loss_total": self._loss_total,
                "loss_seen": self._loss_seen, "stop_training": bool(self.stop_training),
                "metrics": [dict(metric.get_state(), name=metric.name, kind=type(metric).__name__)
                            if metric is not None else {"name": identifier, "kind": None}
                            for metric, identifier in zip(self.metrics,
                                                          self._metric_identifiers)]}

    def _resumes_exactly(self, state):
        """Whether the data of :meth:`_fit_state`'s ``state`` and this fit's
        can continue where the backup was made (both can be rewound)."""
        return self._fit_data.rewinds and not state["data"]["iterator"]

    def _check_fit_state(self, state):
        """ValueError unless :meth:`_fit_state`'s ``state`` fits this fit's
        metrics and data (checked before anything is restored)."""
        recorded = [(m["name"], m["kind"]) for m in state["metrics"]]
        own = [(m.name, type(m).__name__) if m is not None else (identifier, None)
               for m, identifier in zip(self.metrics, self._metric_identifiers)]
        # An "accuracy" not resolved yet (kind None) matches any kind.
        if len(recorded) != len(own) or any(
                name != own_name or None not in (kind, own_kind) and kind != own_kind
                for (name, kind), (own_name, own_kind) in zip(recorded, own)):
            raise ValueError(f"the backup's metrics {recorded} are not the model's {own}: "
                             f"compile the model as the interrupted fit's was")
        if self._resumes_exactly(state):
            self._fit_data.set_state(state["data"], check_only=True)

    def _resume_fit(self, state, epoch, step):
        """Continue this fit from :meth:`_fit_state`'s ``state``, recorded at
        batch ``step`` of ``epoch``: fit starts there. Data from an iterator
        (or an iterable with ``__iter__`` alone) cannot be rewound: fit then
        starts at the next epoch's start, with a warning."""
        if not self._resumes_exactly(state):
            if step:
                epoch, step = epoch + 1, 0
            kind, reading = (("an iterator", "from where it is now") if self._fit_data.is_iterator
                             else ("an iterable that orders its own batches", "afresh"))
            warnings.warn(f"x is {kind}, which cannot be rewound to where the backup was "
                          f"made, so training resumes at the start of epoch {epoch + 1}, "
                          f"reading x {reading}; give a sequence of "
                          f"batches (with __len__ and __getitem__) or arrays to resume "
                          f"exactly", RuntimeWarning, stacklevel=2)
        else:
            self._fit_data.set_state(state["data"])
        if step:
            self._loss_total, self._loss_seen = state["loss_total"], state["loss_seen"]
            for k, recorded in enumerate(state["metrics"]):
                if recorded["kind"] is None:
                    continue
                if self.metrics[k] is None:
                    self.metrics[k] = getattr(metrics_module, recorded["kind"])(
                        name=recorded["name"])
                self.metrics[k].set_state(recorded)
        self.stop_training = state["stop_training"]
        self._resume_at = (epoch, step)

    def train_on_batch(self, x, y=None, sample_weight=None, class_weight=None,
                       return_dict=False):
        """One training step on one batch, as Keras' ``train_on_batch``.

        Parameters
        ----------
        x, y : array_like
            One batch of inputs and targets, finite (as for :meth:`fit`).
        sample_weight : array_like or None
            As for :meth:`fit`.
        class_weight : dict or None
            As for :meth:`fit`.
        return_dict : bool
            Return ``{"loss": ..., <metric>: ...}``.

        Returns
        -------
        float, list or dict
            The batch's loss when there are no metrics, else
            ``[loss, *metrics]`` (compile's order), or the dict: values of
            this batch alone (the running loss and metrics are reset first).
        """
        self._require_compiled("train_on_batch")
        self._refuse_quantized("train_on_batch")
        x, y = _targets(x, y)
        sample_weight = _sample_weights(sample_weight, x.shape[0])
        class_weight = _check_class_weight(class_weight)
        return_dict = check_bool(return_dict, "return_dict")
        self._reset_metrics()
        self._train_step(x, y, self._weighted(y, sample_weight, class_weight))
        return self._returned(self._logs(), return_dict)

    def test_on_batch(self, x, y=None, sample_weight=None, return_dict=False):
        """The loss and metrics of one batch, inside ``no_grad()``, as Keras'
        ``test_on_batch`` (returns as :meth:`train_on_batch`)."""
        self._require_compiled("test_on_batch")
        x, y = _targets(x, y)
        sample_weight = _sample_weights(sample_weight, x.shape[0])
        return_dict = check_bool(return_dict, "return_dict")
        self._reset_metrics()
        self._test_step(x, y, sample_weight)
        return self._returned(self._logs(), return_dict)

    def predict_on_batch(self, x):
        """The outputs for one batch ``x``, inside ``no_grad()`` with
        ``training=False``, as Keras' ``predict_on_batch``."""
        x, _ = _data(x, None)
        with no_grad():
            y_pred, _ = self._forward(x, training=False)
        return y_pred

    def evaluate(self, x=None, y=None, batch_size=None, verbose="auto", sample_weight=None,
                 steps=None, callbacks=None, return_dict=False):
        """The loss and metrics on the data, in batches inside ``no_grad()``.

        Parameters
        ----------
        x, y : array_like, or x a sequence of batches, an iterator or an iterable
            As for :meth:`fit` (finite, too).
        batch_size : int or None
            Default (None) 32, for array data.
        verbose : {"auto", 0, 1, 2}
            As for :meth:`fit` (one bar, no epoch line).
        sample_weight : array_like or None
            Weights of the loss terms, as for :meth:`fit`.
        steps : int or None
            Batches to evaluate; default all.
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
        verbose = _check_verbose(verbose)
        steps = _check_steps(steps, "steps")
        return_dict = check_bool(return_dict, "return_dict")
        data = _Batches(x, y, sample_weight, batch_size, False, None, True, "evaluate")
        callback_list = CallbackList(callbacks, self, {
            "steps": steps or data.num_batches, "verbose": verbose})
        logs = self._evaluate(data, steps, verbose, callback_list)
        return self._returned(logs, return_dict)

    def _evaluate(self, data, steps, verbose, callback_list):
        self._reset_metrics()
        total = steps or data.num_batches
        bar = Progbar(total, verbose) if verbose else None
        callback_list.on_test_begin()
        logs = {}
        for step, (x_batch, y_batch, weights) in enumerate(data.epoch(steps)):
            callback_list.on_test_batch_begin(step)
            self._test_step(x_batch, y_batch, weights)
            logs = self._logs()
            callback_list.on_test_batch_end(step, logs)
            if bar is not None:
                bar.update(step + 1, logs, finalize=step + 1 == total)
        if not logs:
            raise ValueError("x gave no batch to evaluate")
        if bar is not None and total is None:
            bar.update(step + 1, logs, finalize=True)
        callback_list.on_test_end(logs)
        return logs

    def predict(self, x, batch_size=None, verbose="auto", steps=None, callbacks=None):
        """The model's outputs for ``x``, in batches inside ``no_grad()``
        with ``training=False`` (dropout off).

        Parameters
        ----------
        x : array_like, sequence of batches, iterator or iterable
            Inputs, samples first; or batches as for :meth:`fit`, each the
            inputs alone or a tuple whose first entry is the inputs. NaN is
            not checked for: it gives NaN outputs for its own samples.
        batch_size : int or None
            Default (None) 32, for array data.
        verbose : {"auto", 0, 1, 2}
            A progress bar as in :meth:`evaluate`.
        steps : int or None
            Batches to predict; default all.
        callbacks : list of fastlstm.callbacks.Callback or None
            Their ``on_predict_*`` hooks are called.

        Returns
        -------
        ndarray
            The outputs of every batch, concatenated on the first axis.
        """
        verbose = _check_verbose(verbose)
        steps = _check_steps(steps, "steps")
        data = _Batches(x, None, None, batch_size, False, None, False, "predict")
        total = steps or data.num_batches
        callback_list = CallbackList(callbacks, self, {"steps": total, "verbose": verbose})
        bar = Progbar(total, verbose) if verbose else None
        callback_list.on_predict_begin()
        outputs = []
        with no_grad():
            for step, (x_batch, _, _) in enumerate(data.epoch(steps)):
                callback_list.on_predict_batch_begin(step)
                y_pred, _ = self._forward(x_batch, training=False)
                outputs.append(y_pred)
                callback_list.on_predict_batch_end(step, {"outputs": y_pred})
                if bar is not None:
                    bar.update(step + 1, finalize=step + 1 == total)
        if not outputs:
            raise ValueError("x gave no batch to predict")
        if bar is not None and total is None:
            bar.update(len(outputs), finalize=True)
        callback_list.on_predict_end()
        return np.concatenate(outputs, axis=0)
