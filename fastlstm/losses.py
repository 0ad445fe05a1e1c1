"""Loss functions with Keras 3's names, definitions and reduction.

A loss reduces over the last axis of the predictions (the features or
classes of one position) to one value per position, then averages those
values over every position, as Keras' ``"sum_over_batch_size"`` reduction
does: a prediction of shape ``(batch, timesteps, classes)`` has
``batch * timesteps`` positions. A boolean ``mask`` over the positions
(``y_pred.shape[:-1]``) averages over the kept positions only, as Keras does
with the mask an ``Embedding(mask_zero=True)`` makes.

``sample_weight`` multiplies each position's loss before that average, and
the divisor stays the number of (kept) positions, as in Keras 3's
``"sum_over_batch_size"``: ``sum(weight * loss) / positions``, not a
division by the weights' sum. Weights of shape ``(batch,)`` apply to every
position of a sample; ``(batch, timesteps)`` weigh each position.

Training needs the gradient as well as the value, so every loss computes
both in one pass: :meth:`Loss.value_and_gradient` returns the loss and its
gradient with respect to ``y_pred``, which is what ``backward`` of the last
layer takes.

Cross-entropies are computed stably: from logits through the log-sum-exp
(categorical) or ``max(z, 0) - z * y + log1p(exp(-|z|))`` (binary); from
probabilities after clipping them to ``[epsilon, 1 - epsilon]`` with Keras'
``epsilon = 1e-7`` (the gradient is zero where the clip is active, as it is
for Keras' clipped loss).

Examples
--------
>>> import numpy as np
>>> from fastlstm import losses
>>> loss = losses.get("sparse_categorical_crossentropy")
>>> round(loss([0, 1], [[0.9, 0.1], [0.2, 0.8]]), 6)
0.164252
>>> value, grad = losses.MeanSquaredError().value_and_gradient([[1.0], [2.0]], [[1.5], [2.0]])
>>> value, grad.tolist()
(0.125, [[0.5], [0.0]])
"""
import numpy as np

from ._validation import as_real_array, check_bool, describe, from_identifier

__all__ = [
    "Loss", "MeanSquaredError", "MeanAbsoluteError", "BinaryCrossentropy",
    "CategoricalCrossentropy", "SparseCategoricalCrossentropy", "get",
]

EPSILON = 1e-7


def _predictions(y_pred):
    y_pred = as_real_array(y_pred, "y_pred")
    if y_pred.dtype.kind != "f":
        y_pred = y_pred.astype(np.float64)
    if y_pred.ndim == 0:
        raise ValueError(f"y_pred must have at least one dimension (the last one holds a "
                         f"position's values), got {describe(y_pred)}")
    return y_pred


def _dense_targets(y_true, y_pred):
    """``y_true`` cast to ``y_pred``'s dtype, with Keras' one allowed rank
    difference: targets ``(batch,)`` for predictions ``(batch, 1)``."""
    y_true = as_real_array(y_true, "y_true", y_pred.dtype)
    if y_true.ndim == y_pred.ndim - 1 and y_pred.shape[-1] == 1:
        y_true = y_true[..., None]
    if y_true.shape != y_pred.shape:
        raise ValueError(f"y_true must have the shape of y_pred {y_pred.shape}, got "
                         f"{y_true.shape}")
    return y_true


def _class_indices(y_true, y_pred):
    """Integer class indices for each position of ``y_pred``, checked in range."""
    y_true = as_real_array(y_true, "y_true")
    positions = y_pred.shape[:-1]
    if y_true.shape == positions + (1,):
        y_true = y_true[..., 0]
    if y_true.shape != positions:
        hint = ""
        if y_true.shape == y_pred.shape:
            hint = ("; these look like one-hot targets, which the non-sparse loss takes: use "
                    "loss='categorical_crossentropy' (losses.CategoricalCrossentropy), or give "
                    "the class indices, y_true.argmax(axis=-1)")
        raise ValueError(f"y_true must hold one class index per position, shape "
                         f"y_pred.shape[:-1] = {positions} (or {positions + (1,)}), got "
                         f"{y_true.shape}{hint}")
    if y_true.dtype.kind == "f":
        if not np.all(np.isfinite(y_true)) or np.any(y_true != np.round(y_true)):
            raise ValueError("y_true must hold integer class indices, got non-integer values")
    labels = y_true.astype(np.intp)
    classes = y_pred.shape[-1]
    if labels.size and (labels.min() < 0 or labels.max() >= classes):
        bad = labels[(labels < 0) | (labels >= classes)].flat[0]
        raise ValueError(f"y_true must hold class indices in [0, {classes}) (y_pred has "
                         f"{classes} classes on its last axis), got {bad}")
    return labels


def _check_mask(mask, positions):
    """``mask`` as a boolean array of shape ``positions``."""
    mask = np.asarray(mask)
    if mask.dtype != np.bool_:
        raise TypeError(f"mask must be boolean (True keeps a position), got dtype {mask.dtype}")
    if mask.shape != positions:
        raise ValueError(f"mask must have shape y_pred.shape[:-1] = {positions}, got "
                         f"{mask.shape}")
    return mask


def _sample_weights(sample_weight, positions, dtype):
    """``sample_weight`` broadcast over the positions: its shape must be the
    leading axes of ``positions`` (``(batch,)`` or the positions' own), with
    an optional trailing axis of 1, as Keras' rank matching allows."""
    weights = as_real_array(sample_weight, "sample_weight", dtype)
    if weights.ndim == len(positions) + 1 and weights.shape[-1] == 1:
        weights = weights[..., 0]
    if weights.ndim == 0 or weights.shape != positions[:weights.ndim]:
        raise ValueError(f"sample_weight must have shape (batch,) = {positions[:1]} or "
                         f"y_pred.shape[:-1] = {positions}, got {weights.shape}")
    return weights.reshape(weights.shape + (1,) * (len(positions) - weights.ndim))


def _position_weights(mask, positions, dtype):
    """Weights over the positions (shape ``positions``) that average the kept
    ones: ``mask / mask.sum()``, all zeros when nothing is kept; uniform when
    ``mask`` is None."""
    if mask is None:
        count = int(np.prod(positions))
        return np.full(positions, 1.0 / max(count, 1), dtype=dtype)
    mask = _check_mask(mask, positions)
    return mask.astype(dtype) / dtype.type(max(int(mask.sum()), 1))


class Loss:
    """Base class: subclasses implement ``_positions(y_true, y_pred)``.

    ``_positions`` returns the loss of every position (shape
    ``y_pred.shape[:-1]``) and its gradient with respect to ``y_pred``
    (shape ``y_pred.shape``); the base class averages them.
    """

    name = "loss"

    def __call__(self, y_true, y_pred, mask=None, sample_weight=None):
        """The loss averaged over the (kept) positions, a float."""
        return self.value_and_gradient(y_true, y_pred, mask, sample_weight)[0]

    def value_and_gradient(self, y_true, y_pred, mask=None, sample_weight=None):
        """The loss and its gradient with respect to ``y_pred``.

        Parameters
        ----------
        y_true : array_like
            Targets: the shape of ``y_pred`` (``(batch,)`` is accepted for
            ``(batch, 1)`` predictions), or class indices of shape
            ``y_pred.shape[:-1]`` for the sparse cross-entropy.
        y_pred : array_like
            Predictions; the last axis holds one position's values.
        mask : array_like of bool or None
            Shape ``y_pred.shape[:-1]``; only True positions count.
        sample_weight : array_like or None
            Shape ``(batch,)`` or ``y_pred.shape[:-1]``: multiplies each
            position's loss; the sum is still divided by the number of
            (kept) positions, as Keras 3 does.

        Returns
        -------
        value : float
        gradient : ndarray
            Same shape and floating dtype as ``y_pred``.
        """
        y_pred = _predictions(y_pred)
        weights = _position_weights(mask, y_pred.shape[:-1], y_pred.dtype)
        if sample_weight is not None:
            weights = weights * _sample_weights(sample_weight, y_pred.shape[:-1], y_pred.dtype)
        losses, gradient = self._positions(y_true, y_pred)
        value = float(np.sum(losses * weights))
        gradient *= weights[..., None]
        return value, gradient

    def get_config(self):
        """The constructor arguments."""
        return {}

    def __repr__(self):
        arguments = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"{type(self).__name__}({arguments})"


class MeanSquaredError(Loss):
    """``mean((y_true - y_pred) ** 2)`` over the last axis, then over positions."""

    name = "mean_squared_error"

    def _positions(self, y_true, y_pred):
        diff = y_pred - _dense_targets(y_true, y_pred)
        features = y_pred.shape[-1]
        return np.mean(diff * diff, axis=-1), diff * y_pred.dtype.type(2.0 / features)


class MeanAbsoluteError(Loss):
    """``mean(|y_true - y_pred|)`` over the last axis, then over positions.

    The gradient at ``y_pred == y_true`` is 0 (the subgradient ``sign(0)``).
    """

    name = "mean_absolute_error"

    def _positions(self, y_true, y_pred):
        diff = y_pred - _dense_targets(y_true, y_pred)
        features = y_pred.shape[-1]
        return np.mean(np.abs(diff), axis=-1), np.sign(diff) / y_pred.dtype.type(features)


class _CrossEntropy(Loss):
    """A cross-entropy: of probabilities, or of logits with ``from_logits``."""

    def __init__(self, from_logits=False):
        self.from_logits = check_bool(from_logits, "from_logits")

    def get_config(self):
        return {"from_logits": self.from_logits}


class BinaryCrossentropy(_CrossEntropy):
    """Binary cross-entropy, averaged over the last axis, then over positions.

    Parameters
    ----------
    from_logits : bool
        Whether ``y_pred`` holds logits (any real number) rather than
        probabilities in [0, 1]. Logits are more accurate: the loss is then
        ``max(z, 0) - z * y + log1p(exp(-|z|))``, exact for any ``z``.
        Default False.
    """

    name = "binary_crossentropy"

    def _positions(self, y_true, y_pred):
        y_true = _dense_targets(y_true, y_pred)
        features = y_pred.dtype.type(y_pred.shape[-1])
        if self.from_logits:
            z = y_pred
            losses = np.maximum(z, 0) - z * y_true + np.log1p(np.exp(-np.abs(z)))
            # sigmoid(z) without overflow for large |z|.
            exp_neg = np.exp(-np.abs(z))
            sigmoid = np.where(z >= 0, 1 / (1 + exp_neg), exp_neg / (1 + exp_neg))
            gradient = (sigmoid - y_true) / features
        else:
            p = np.clip(y_pred, EPSILON, 1 - EPSILON)
            losses = -(y_true * np.log(p) + (1 - y_true) * np.log1p(-p))
            inside = (y_pred > EPSILON) & (y_pred < 1 - EPSILON)
            gradient = np.where(inside, (p - y_true) / (p * (1 - p)), 0) / features
        return np.mean(losses, axis=-1), gradient.astype(y_pred.dtype, copy=False)


def _log_softmax(z):
    shifted = z - np.max(z, axis=-1, keepdims=True)
    return shifted - np.log(np.sum(np.exp(shifted), axis=-1, keepdims=True))


class CategoricalCrossentropy(_CrossEntropy):
    """Cross-entropy between one-hot (or soft) targets and class scores.

    Parameters
    ----------
    from_logits : bool
        Whether ``y_pred`` holds logits rather than probabilities. From
        logits the loss is ``-sum(y * log_softmax(z))`` through the
        log-sum-exp. From probabilities, as Keras, each row is first divided
        by its sum and clipped to ``[epsilon, 1 - epsilon]``. Default False.
    """

    name = "categorical_crossentropy"

    def _positions(self, y_true, y_pred):
        y_true = as_real_array(y_true, "y_true", y_pred.dtype)
        positions = y_pred.shape[:-1]
        if y_pred.shape[-1] > 1 and y_true.shape in (positions, positions + (1,)):
            raise ValueError(f"y_true must have the shape of y_pred {y_pred.shape} (one-hot or "
                             f"soft targets), got {y_true.shape}: these look like class "
                             f"indices, which the sparse loss takes: use "
                             f"loss='sparse_categorical_crossentropy' "
                             f"(losses.SparseCategoricalCrossentropy)")
        y_true = _dense_targets(y_true, y_pred)
        if self.from_logits:
            log_probs = _log_softmax(y_pred)
            losses = -np.sum(y_true * log_probs, axis=-1)
            gradient = np.exp(log_probs) * np.sum(y_true, axis=-1, keepdims=True) - y_true
            return losses, gradient
        total = np.sum(y_pred, axis=-1, keepdims=True)
        probs = y_pred / total
        clipped = np.clip(probs, EPSILON, 1 - EPSILON)
        losses = -np.sum(y_true * np.log(clipped), axis=-1)
        # d/dq of the clipped log, then through q = p / sum(p).
        inside = (probs > EPSILON) & (probs < 1 - EPSILON)
        d_probs = np.where(inside, -y_true / np.where(inside, probs, 1), 0)
        gradient = (d_probs - np.sum(d_probs * probs, axis=-1, keepdims=True)) / total
        return losses, gradient.astype(y_pred.dtype, copy=False)


class SparseCategoricalCrossentropy(_CrossEntropy):
    """Categorical cross-entropy with integer class indices as targets.

    ``y_true`` holds one class index per position (shape
    ``y_pred.shape[:-1]``, or with a trailing axis of 1); indices out of
    range raise ``ValueError``.

    Parameters
    ----------
    from_logits : bool
        As for :class:`CategoricalCrossentropy`. Default False.
    """

    name = "sparse_categorical_crossentropy"

    def _positions(self, y_true, y_pred):
        labels = _class_indices(y_true, y_pred)
        classes = y_pred.shape[-1]
        flat = y_pred.reshape(-1, classes)
        rows = np.arange(flat.shape[0])
        picked = labels.reshape(-1)
        if self.from_logits:
            shifted = flat - np.max(flat, axis=1, keepdims=True)
            exp = np.exp(shifted)
            sums = np.sum(exp, axis=1)
            losses = np.log(sums) - shifted[rows, picked]
            gradient = exp
            gradient /= sums[:, None]
            gradient[rows, picked] -= 1
        else:
            total = np.sum(flat, axis=1)
            prob = flat[rows, picked] / total
            losses = -np.log(np.clip(prob, EPSILON, 1 - EPSILON))
            # L = -log p_t + log sum(p): 1 / sum everywhere, -1 / p_t at the target.
            inside = (prob > EPSILON) & (prob < 1 - EPSILON)
            gradient = np.repeat(np.where(inside, 1 / total, 0)[:, None], classes, axis=1)
            gradient[rows, picked] -= np.where(inside, 1 / np.where(inside, flat[rows, picked],
                                                                   1), 0)
            gradient = gradient.astype(y_pred.dtype, copy=False)
        return losses.reshape(y_pred.shape[:-1]), gradient.reshape(y_pred.shape)


_BY_NAME = {
    "mse": MeanSquaredError, "mean_squared_error": MeanSquaredError,
    "mae": MeanAbsoluteError, "mean_absolute_error": MeanAbsoluteError,
    "binary_crossentropy": BinaryCrossentropy,
    "categorical_crossentropy": CategoricalCrossentropy,
    "sparse_categorical_crossentropy": SparseCategoricalCrossentropy,
}


def get(identifier):
    """The loss an argument names.

    Parameters
    ----------
    identifier : str or Loss
        A Keras name (``"mse"``, ``"mae"``, ``"binary_crossentropy"``,
        ``"categorical_crossentropy"``, ``"sparse_categorical_crossentropy"``,
        and the long names of the first two) or a :class:`Loss`. Names give
        the loss with ``from_logits=False``, as in Keras.

    Returns
    -------
    Loss
    """
    return from_identifier(identifier, "loss", _BY_NAME, Loss,
                           " (training needs the loss's gradient, which a Loss computes)")
