"""Metrics with Keras 3's names: running means over the batches of an epoch.

A metric scores every position of a prediction (the last axis holds one
position's values, as for :mod:`fastlstm.losses`), and keeps the running
mean of those scores over every ``update_state`` since the last
``reset_state``. A boolean mask over the positions leaves masked positions
out, as Keras does with the mask of an ``Embedding(mask_zero=True)``.

Examples
--------
>>> from fastlstm import metrics
>>> accuracy = metrics.SparseCategoricalAccuracy()
>>> accuracy.update_state([0, 1], [[0.9, 0.1], [0.6, 0.4]])
>>> accuracy.update_state([1], [[0.3, 0.7]])
>>> round(accuracy.result(), 4)
0.6667
"""

import numpy as np

from ._validation import as_real_array, check_real, describe
from .losses import (BinaryCrossentropy, CategoricalCrossentropy, SparseCategoricalCrossentropy,
                     _check_mask, _class_indices, _dense_targets, _predictions)

__all__ = [
    "Metric", "MeanAbsoluteError", "MeanSquaredError", "BinaryAccuracy", "CategoricalAccuracy",
    "SparseCategoricalAccuracy", "get",
]


class Metric:
    """Base class: subclasses implement ``_scores(y_true, y_pred)``, one
    score per position (shape ``y_pred.shape[:-1]``).

    Parameters
    ----------
    name : str or None
        The key of the metric in ``fit``'s logs; None gives the class's
        Keras name.
    """

    name = "metric"
    #: Whether larger is better (EarlyStopping's mode="auto" reads it).
    higher_is_better = False

    def __init__(self, name=None):
        if name is not None:
            if not isinstance(name, str) or not name:
                raise TypeError(f"name must be a non-empty str or None, got {describe(name)}")
            self.name = name
        self.reset_state()

    def reset_state(self):
        """Forget every update."""
        self._total = 0.0
        self._count = 0.0

    def update_state(self, y_true, y_pred, mask=None):
        """Add a batch.

        Parameters
        ----------
        y_true, y_pred : array_like
            As for the losses of :mod:`fastlstm.losses`.
        mask : array_like of bool or None
            Shape ``y_pred.shape[:-1]``; only True positions count.
        """
        y_pred = _predictions(y_pred)
        scores = self._scores(y_true, y_pred)
        if mask is None:
            self._total += float(np.sum(scores))
            self._count += scores.size
        else:
            mask = _check_mask(mask, y_pred.shape[:-1])
            self._total += float(np.sum(scores[mask]))
            self._count += int(mask.sum())

    def get_state(self):
        """The running sums, as plain data (what a backup records)."""
        return {"total": self._total, "count": self._count}

    def set_state(self, state):
        """Continue from :meth:`get_state`'s sums."""
        self._total, self._count = state["total"], state["count"]

    def result(self):
        """The mean score over every position seen, a float (0.0 before any)."""
        return self._total / self._count if self._count else 0.0

    def __repr__(self):
        return f"{type(self).__name__}(name={self.name!r})"


class MeanAbsoluteError(Metric):
    """Mean of ``|y_true - y_pred|``, as ``keras.metrics.MeanAbsoluteError``."""

    name = "mean_absolute_error"

    def _scores(self, y_true, y_pred):
        return np.mean(np.abs(y_pred - _dense_targets(y_true, y_pred)), axis=-1)


class MeanSquaredError(Metric):
    """Mean of ``(y_true - y_pred) ** 2``, as ``keras.metrics.MeanSquaredError``."""

    name = "mean_squared_error"

    def _scores(self, y_true, y_pred):
        diff = y_pred - _dense_targets(y_true, y_pred)
        return np.mean(diff * diff, axis=-1)


class BinaryAccuracy(Metric):
    """How often ``y_pred > threshold`` equals the 0/1 target.

    Parameters
    ----------
    name : str or None
    threshold : float
        0.5 for probabilities; use 0.0 for logits. Default 0.5.
    """

    name = "binary_accuracy"
    higher_is_better = True

    def __init__(self, name=None, threshold=0.5):
        self.threshold = check_real(threshold, "threshold")
        super().__init__(name)

    def _scores(self, y_true, y_pred):
        y_true = _dense_targets(y_true, y_pred)
        return np.mean((y_pred > self.threshold) == (y_true > 0.5), axis=-1)


class CategoricalAccuracy(Metric):
    """How often the arg max of ``y_pred`` is that of the one-hot target."""

    name = "categorical_accuracy"
    higher_is_better = True

    def _scores(self, y_true, y_pred):
        y_true = _dense_targets(y_true, y_pred)
        return np.argmax(y_pred, axis=-1) == np.argmax(y_true, axis=-1)


class SparseCategoricalAccuracy(Metric):
    """How often the arg max of ``y_pred`` is the target class index."""

    name = "sparse_categorical_accuracy"
    higher_is_better = True

    def _scores(self, y_true, y_pred):
        return np.argmax(y_pred, axis=-1) == _class_indices(y_true, y_pred)


_BY_NAME = {
    "mae": MeanAbsoluteError, "mean_absolute_error": MeanAbsoluteError,
    "mse": MeanSquaredError, "mean_squared_error": MeanSquaredError,
    "binary_accuracy": BinaryAccuracy, "categorical_accuracy": CategoricalAccuracy,
    "sparse_categorical_accuracy": SparseCategoricalAccuracy,
}
_ACCURACY = ("accuracy", "acc")


def get(identifier, loss=None, y_true=None, y_pred=None):
    """The metric an argument names.

    Parameters
    ----------
    identifier : str or Metric
        A Keras name (``"mae"``, ``"mse"``, ``"binary_accuracy"``, ...), or
        ``"accuracy"`` / ``"acc"``, or a :class:`Metric`. A named metric's
        key in the logs is the name given.
    loss : fastlstm.losses.Loss or None
        Picks the kind of ``"accuracy"``: binary for a binary cross-entropy
        (threshold 0 when it is ``from_logits``), sparse categorical for a
        sparse one, categorical for a categorical one.
    y_true, y_pred : array_like or None
        For other losses ``"accuracy"`` is picked from the shapes, as Keras 3
        does: binary when ``y_pred`` has one value per position, sparse when
        ``y_true`` has one dimension fewer (or a last axis of 1), else
        categorical.

    Returns
    -------
    Metric
    """
    if isinstance(identifier, Metric):
        return identifier
    if not isinstance(identifier, str):
        raise TypeError(f"metrics must hold metric names or fastlstm.metrics.Metric objects, "
                        f"got {describe(identifier)}")
    if identifier in _BY_NAME:
        return _BY_NAME[identifier](name=identifier)
    if identifier not in _ACCURACY:
        raise ValueError(f"metric names must be one of {sorted(set(_BY_NAME) | set(_ACCURACY))}, "
                         f"got {identifier!r}")
    if isinstance(loss, BinaryCrossentropy):
        return BinaryAccuracy(name=identifier, threshold=0.0 if loss.from_logits else 0.5)
    if isinstance(loss, SparseCategoricalCrossentropy):
        return SparseCategoricalAccuracy(name=identifier)
    if isinstance(loss, CategoricalCrossentropy):
        return CategoricalAccuracy(name=identifier)
    if y_true is None or y_pred is None:
        raise ValueError(f"metric {identifier!r} needs the loss or the data's shapes to pick "
                         f"binary, categorical or sparse categorical accuracy")
    y_true, y_pred = as_real_array(y_true, "y_true"), as_real_array(y_pred, "y_pred")
    if y_pred.shape[-1:] == (1,):
        return BinaryAccuracy(name=identifier)
    if y_true.ndim < y_pred.ndim or y_true.shape[-1:] == (1,):
        return SparseCategoricalAccuracy(name=identifier)
    return CategoricalAccuracy(name=identifier)
