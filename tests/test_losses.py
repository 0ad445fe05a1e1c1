"""Tests of fastlstm.losses and fastlstm.metrics.

Values are checked against hand computations (Python floats, math module);
gradients against central finite differences of the loss's value (float64).
"""
import math

import numpy as np
import pytest

from fastlstm import losses, metrics
from gradcheck import assert_gradient

LOGIT_LOSSES = [
    losses.BinaryCrossentropy(from_logits=True),
    losses.CategoricalCrossentropy(from_logits=True),
    losses.SparseCategoricalCrossentropy(from_logits=True),
]


def targets_for(loss, shape, rng):
    """Valid targets for ``loss`` and predictions of ``shape``."""
    if isinstance(loss, losses.SparseCategoricalCrossentropy):
        return rng.integers(0, shape[-1], shape[:-1])
    if isinstance(loss, losses.CategoricalCrossentropy):
        return np.eye(shape[-1])[rng.integers(0, shape[-1], shape[:-1])]
    if isinstance(loss, losses.BinaryCrossentropy):
        return rng.integers(0, 2, shape).astype(float)
    return rng.standard_normal(shape)


def predictions_for(loss, shape, rng):
    """Predictions away from the clipping bounds and the kinks of |x|."""
    if getattr(loss, "from_logits", True) is False:
        if isinstance(loss, losses.BinaryCrossentropy):
            return rng.uniform(0.1, 0.9, shape)
        return rng.uniform(0.1, 1.0, shape)
    return rng.standard_normal(shape) * 2


ALL_LOSSES = [
    losses.MeanSquaredError(), losses.MeanAbsoluteError(),
    losses.BinaryCrossentropy(), losses.BinaryCrossentropy(from_logits=True),
    losses.CategoricalCrossentropy(), losses.CategoricalCrossentropy(from_logits=True),
    losses.SparseCategoricalCrossentropy(),
    losses.SparseCategoricalCrossentropy(from_logits=True),
]


# -- values against hand computations -----------------------------------------

def test_mean_squared_error_averages_features_then_positions():
    value = losses.MeanSquaredError()([[1.0, 2.0], [0.0, 0.0]], [[2.0, 2.0], [1.0, 3.0]])
    assert value == pytest.approx(((1 + 0) / 2 + (1 + 9) / 2) / 2)


def test_mean_absolute_error_value():
    value = losses.MeanAbsoluteError()([[1.0], [-2.0]], [[1.5], [1.0]])
    assert value == pytest.approx((0.5 + 3.0) / 2)


def test_targets_without_the_unit_axis_are_accepted():
    loss = losses.MeanSquaredError()
    assert loss([1.0, 2.0], [[2.0], [2.0]]) == pytest.approx(0.5)


def test_binary_crossentropy_from_probabilities_value():
    p, y = [[0.8], [0.3]], [[1.0], [0.0]]
    expected = -(math.log(0.8) + math.log(0.7)) / 2
    assert losses.BinaryCrossentropy()(y, p) == pytest.approx(expected)


def test_binary_crossentropy_from_logits_value():
    z, y = 0.4, 1.0
    expected = -math.log(1 / (1 + math.exp(-z)))
    assert losses.BinaryCrossentropy(from_logits=True)([[y]], [[z]]) == pytest.approx(expected)


def test_categorical_crossentropy_normalises_probabilities_like_keras():
    # Rows are divided by their sum first: [2, 6] is [0.25, 0.75].
    value = losses.CategoricalCrossentropy()([[0.0, 1.0]], [[2.0, 6.0]])
    assert value == pytest.approx(-math.log(0.75))


def test_categorical_crossentropy_from_logits_value():
    z = [1.0, 2.0, 0.5]
    log_sum = math.log(sum(math.exp(v) for v in z))
    value = losses.CategoricalCrossentropy(from_logits=True)([[0.0, 1.0, 0.0]], [z])
    assert value == pytest.approx(log_sum - 2.0)


def test_sparse_categorical_crossentropy_matches_categorical():
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((4, 3, 5))
    labels = rng.integers(0, 5, (4, 3))
    for from_logits in (True, False):
        predictions = logits if from_logits else np.exp(logits)
        sparse = losses.SparseCategoricalCrossentropy(from_logits=from_logits)
        dense = losses.CategoricalCrossentropy(from_logits=from_logits)
        s_value, s_grad = sparse.value_and_gradient(labels, predictions)
        d_value, d_grad = dense.value_and_gradient(np.eye(5)[labels], predictions)
        assert s_value == pytest.approx(d_value, rel=1e-12)
        np.testing.assert_allclose(s_grad, d_grad, rtol=1e-10, atol=1e-14)


def test_sparse_labels_with_a_trailing_unit_axis_are_accepted():
    loss = losses.SparseCategoricalCrossentropy()
    p = [[0.9, 0.1], [0.2, 0.8]]
    assert loss([[0], [1]], p) == pytest.approx(loss([0, 1], p))


# -- gradients ----------------------------------------------------------------

@pytest.mark.parametrize("loss", ALL_LOSSES, ids=repr)
@pytest.mark.parametrize("masked", [False, True])
def test_gradient_matches_finite_differences(loss, masked):
    rng = np.random.default_rng(1)
    shape = (3, 4, 5)
    y_true = targets_for(loss, shape, rng)
    y_pred = predictions_for(loss, shape, rng)
    mask = rng.random(shape[:-1]) < 0.6 if masked else None
    _, gradient = loss.value_and_gradient(y_true, y_pred, mask)
    assert gradient.shape == y_pred.shape
    assert_gradient(gradient, lambda: loss(y_true, y_pred, mask), y_pred, repr(loss),
                    eps=1e-6, rtol=1e-5, atol=1e-9, count=20)


@pytest.mark.parametrize("loss", ALL_LOSSES, ids=repr)
def test_float32_predictions_give_a_float32_gradient(loss):
    rng = np.random.default_rng(2)
    y_pred = predictions_for(loss, (4, 3), rng).astype(np.float32)
    _, gradient = loss.value_and_gradient(targets_for(loss, (4, 3), rng), y_pred)
    assert gradient.dtype == np.float32


# -- numerical stability ------------------------------------------------------

def test_logit_losses_are_exact_for_huge_logits():
    big = 1000.0
    bce = losses.BinaryCrossentropy(from_logits=True)
    value, gradient = bce.value_and_gradient([[1.0], [0.0]], [[-big], [-big]])
    assert value == pytest.approx(big / 2)
    np.testing.assert_allclose(gradient, [[-0.5], [0.0]])
    sparse = losses.SparseCategoricalCrossentropy(from_logits=True)
    value, gradient = sparse.value_and_gradient([0], [[-big, big, 0.0]])
    assert value == pytest.approx(2 * big)
    np.testing.assert_allclose(gradient, [[-1.0, 1.0, 0.0]])
    categorical = losses.CategoricalCrossentropy(from_logits=True)
    assert categorical([[1.0, 0.0]], [[big, -big]]) == 0.0


def test_probabilities_are_clipped_to_epsilon_with_zero_gradient():
    sparse = losses.SparseCategoricalCrossentropy()
    value, gradient = sparse.value_and_gradient([0], [[0.0, 1.0]])
    assert value == pytest.approx(-math.log(losses.EPSILON))
    np.testing.assert_array_equal(gradient, 0.0)
    bce = losses.BinaryCrossentropy()
    value, gradient = bce.value_and_gradient([[1.0]], [[0.0]])
    assert value == pytest.approx(-math.log(losses.EPSILON), rel=1e-6)
    assert np.all(np.isfinite(gradient)) and gradient[0, 0] == 0.0
    assert np.isfinite(losses.CategoricalCrossentropy()([[1.0, 0.0]], [[0.0, 1.0]]))


def test_float32_softmax_does_not_overflow():
    logits = np.array([[80.0, 90.0, 100.0]], np.float32)
    value = losses.SparseCategoricalCrossentropy(from_logits=True)([2], logits)
    expected = math.log(1 + math.exp(-10) + math.exp(-20))
    assert value == pytest.approx(expected, rel=1e-3)


# -- masks ----------------------------------------------------------------------

def test_mask_averages_over_kept_positions_only():
    loss = losses.MeanSquaredError()
    y_true = np.zeros((1, 3, 1))
    y_pred = np.array([[[1.0], [2.0], [100.0]]])
    value, gradient = loss.value_and_gradient(y_true, y_pred, [[True, True, False]])
    assert value == pytest.approx((1 + 4) / 2)
    np.testing.assert_allclose(gradient[0, :, 0], [1.0, 2.0, 0.0])


def test_fully_masked_batch_has_zero_loss_and_gradient():
    loss = losses.SparseCategoricalCrossentropy(from_logits=True)
    value, gradient = loss.value_and_gradient([[0, 1]], np.ones((1, 2, 3)),
                                              np.zeros((1, 2), bool))
    assert value == 0.0 and not gradient.any()


def test_mask_of_wrong_shape_or_kind_is_rejected():
    loss = losses.MeanSquaredError()
    with pytest.raises(ValueError, match=r"mask must have shape y_pred.shape\[:-1\]"):
        loss(np.zeros((2, 3, 1)), np.zeros((2, 3, 1)), np.ones((2, 2), bool))
    with pytest.raises(TypeError, match="mask must be boolean"):
        loss(np.zeros((2, 3, 1)), np.zeros((2, 3, 1)), np.ones((2, 3)))


# -- errors ---------------------------------------------------------------------

def test_mismatched_shapes_name_y_true():
    with pytest.raises(ValueError, match=r"y_true must have the shape of y_pred \(2, 3\)"):
        losses.MeanSquaredError()(np.zeros((2, 4)), np.zeros((2, 3)))


def test_sparse_labels_out_of_range_are_named():
    loss = losses.SparseCategoricalCrossentropy()
    with pytest.raises(ValueError, match=r"class indices in \[0, 3\).*got 3"):
        loss([0, 3], np.ones((2, 3)))
    with pytest.raises(ValueError, match="integer class indices"):
        loss([0.5, 1.0], np.ones((2, 3)))
    with pytest.raises(ValueError, match="one class index per position"):
        loss(np.zeros((2, 3)), np.ones((2, 3)))


@pytest.mark.parametrize("from_logits", [False, True])
def test_one_hot_targets_for_the_sparse_loss_suggest_the_categorical_one(from_logits):
    loss = losses.SparseCategoricalCrossentropy(from_logits=from_logits)
    one_hot = np.eye(3)[[0, 2, 1, 1]]
    for y_true, y_pred in ((one_hot, np.full((4, 3), 1 / 3)),
                           (np.stack([one_hot] * 5, 1), np.full((4, 5, 3), 1 / 3))):
        with pytest.raises(ValueError, match=r"look like one-hot targets.*categorical_crossentropy"
                                             r".*CategoricalCrossentropy.*argmax"):
            loss(y_true, y_pred)


@pytest.mark.parametrize("labels", [[0, 2, 1, 1], [[0], [2], [1], [1]]])
def test_class_indices_for_the_categorical_loss_suggest_the_sparse_one(labels):
    loss = losses.CategoricalCrossentropy()
    with pytest.raises(ValueError, match=r"look like class indices.*"
                                         r"sparse_categorical_crossentropy.*"
                                         r"SparseCategoricalCrossentropy"):
        loss.value_and_gradient(labels, np.full((4, 3), 1 / 3))
    # One class: (batch,) targets for (batch, 1) predictions stay accepted.
    assert loss([1.0, 1.0], [[1.0], [1.0]]) == pytest.approx(0.0, abs=1e-6)


def test_get_knows_keras_names_and_rejects_others():
    assert isinstance(losses.get("mse"), losses.MeanSquaredError)
    assert isinstance(losses.get("mean_absolute_error"), losses.MeanAbsoluteError)
    sparse = losses.get("sparse_categorical_crossentropy")
    assert isinstance(sparse, losses.SparseCategoricalCrossentropy) and not sparse.from_logits
    with pytest.raises(ValueError, match="loss must be one of"):
        losses.get("hinge")
    with pytest.raises(TypeError, match="needs the loss's gradient"):
        losses.get(lambda y_true, y_pred: 0.0)
    with pytest.raises(TypeError, match="from_logits must be True or False"):
        losses.BinaryCrossentropy(from_logits=1)


def test_non_numeric_predictions_are_rejected():
    with pytest.raises(TypeError, match="y_pred must hold real numbers"):
        losses.MeanSquaredError()([["a"]], [["b"]])


# -- metrics ----------------------------------------------------------------------

def test_metrics_keep_a_running_mean_over_batches():
    mae = metrics.MeanAbsoluteError()
    mae.update_state([[0.0], [0.0]], [[1.0], [3.0]])
    mae.update_state([[0.0]], [[5.0]])
    assert mae.result() == pytest.approx(3.0)
    mae.reset_state()
    assert mae.result() == 0.0


def test_accuracies_count_hits():
    binary = metrics.BinaryAccuracy()
    binary.update_state([[1], [0], [1], [0]], [[0.7], [0.2], [0.4], [0.6]])
    assert binary.result() == 0.5
    categorical = metrics.CategoricalAccuracy()
    categorical.update_state([[0, 1], [1, 0]], [[0.3, 0.7], [0.2, 0.8]])
    assert categorical.result() == 0.5
    sparse = metrics.SparseCategoricalAccuracy()
    sparse.update_state([[1], [0], [2]], [[0.1, 0.9, 0.0], [0.6, 0.3, 0.1], [0.5, 0.4, 0.1]])
    assert sparse.result() == pytest.approx(2 / 3)


def test_metric_mask_leaves_out_masked_positions():
    sparse = metrics.SparseCategoricalAccuracy()
    sparse.update_state([[1, 0, 0]], np.array([[[0, 1], [0, 1], [0, 1]]], float),
                        [[True, False, False]])
    assert sparse.result() == 1.0


def test_accuracy_follows_the_loss_then_the_shapes():
    bce = losses.BinaryCrossentropy()
    assert isinstance(metrics.get("accuracy", loss=bce), metrics.BinaryAccuracy)
    logits = metrics.get("accuracy", loss=losses.BinaryCrossentropy(from_logits=True))
    assert logits.threshold == 0.0
    sparse = metrics.get("acc", loss=losses.SparseCategoricalCrossentropy())
    assert isinstance(sparse, metrics.SparseCategoricalAccuracy) and sparse.name == "acc"
    assert isinstance(metrics.get("accuracy", loss=losses.CategoricalCrossentropy()),
                      metrics.CategoricalAccuracy)
    mse = losses.MeanSquaredError()
    assert isinstance(metrics.get("accuracy", mse, np.zeros((4, 1)), np.zeros((4, 1))),
                      metrics.BinaryAccuracy)
    assert isinstance(metrics.get("accuracy", mse, np.zeros(4), np.zeros((4, 3))),
                      metrics.SparseCategoricalAccuracy)
    assert isinstance(metrics.get("accuracy", mse, np.zeros((4, 3)), np.zeros((4, 3))),
                      metrics.CategoricalAccuracy)


def test_named_metrics_report_under_the_given_name():
    assert metrics.get("mae").name == "mae"
    assert metrics.get("mean_squared_error").name == "mean_squared_error"
    with pytest.raises(ValueError, match="metric names must be one of"):
        metrics.get("f1")
    with pytest.raises(TypeError, match="metrics must hold metric names"):
        metrics.get(3)
