"""The rest of Keras' training surface: the batch methods, weighted losses,
data in batches (generators and PyDataset-like sequences), steps_per_epoch,
assignable learning rates and schedules, AdamW, the new callbacks and the
progress output when standard output is not a terminal.

Keras itself is not needed: every value is checked against the formula
Keras documents, computed here with NumPy.
"""
import csv
import math
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import fastlstm as fl
from fastlstm import losses, optimizers
from fastlstm.callbacks import (Callback, CSVLogger, LambdaCallback, LearningRateScheduler,
                                ReduceLROnPlateau, TerminateOnNaN)
from fastlstm.layers import Dense
from fastlstm.models import Sequential
from fastlstm.optimizers import schedules


def _data(count=40, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((count, 5, 3))
    return x, np.stack([x.sum(axis=(1, 2)), x[:, -1, 0]], axis=1)


def _model(seed=0, optimizer="adam", metrics=None):
    model = Sequential([fl.LSTM(4, seed=seed, dtype="float64"),
                        Dense(2, seed=seed + 1, dtype="float64")], seed=seed)
    model.compile(optimizer, "mse", metrics=metrics)
    return model


def _same_weights(a, b):
    return all(np.array_equal(u, v) for u, v in zip(a.get_weights(), b.get_weights()))


# -- weighted losses ----------------------------------------------------------------------

def test_sample_weight_is_keras_sum_over_batch_size():
    rng = np.random.default_rng(0)
    y_true, y_pred = rng.standard_normal((6, 3)), rng.standard_normal((6, 3))
    weights = rng.random(6)
    value, gradient = losses.MeanSquaredError().value_and_gradient(y_true, y_pred,
                                                                   sample_weight=weights)
    per_sample = ((y_pred - y_true) ** 2).mean(axis=1)
    # Divided by the number of samples, not by the weights' sum (Keras 3).
    assert value == pytest.approx(np.sum(weights * per_sample) / 6, rel=1e-12)
    expected = 2 * (y_pred - y_true) / 3 * weights[:, None] / 6
    assert np.allclose(gradient, expected, rtol=1e-12, atol=0)


def test_sample_weight_with_a_mask_divides_by_the_kept_positions():
    rng = np.random.default_rng(1)
    y_true = rng.integers(0, 4, (3, 5))
    logits = rng.standard_normal((3, 5, 4))
    mask = rng.random((3, 5)) > 0.3
    weights = np.array([1.0, 2.0, 0.5])
    loss = losses.SparseCategoricalCrossentropy(from_logits=True)
    value = loss(y_true, logits, mask, sample_weight=weights)
    log_probs = logits - np.log(np.exp(logits).sum(axis=-1, keepdims=True))
    per_position = -np.take_along_axis(log_probs, y_true[..., None], axis=-1)[..., 0]
    expected = np.sum(per_position * weights[:, None] * mask) / mask.sum()
    assert value == pytest.approx(expected, rel=1e-12)
    temporal = rng.random((3, 5))
    assert loss(y_true, logits, sample_weight=temporal) == pytest.approx(
        np.sum(per_position * temporal) / 15, rel=1e-12)
    with pytest.raises(ValueError, match=r"sample_weight must have shape \(batch,\) = \(3,\)"):
        loss(y_true, logits, sample_weight=np.ones(4))


def test_train_on_batch_returns_the_weighted_loss_computed_by_hand():
    x, y = _data(8)
    weights = np.linspace(0.0, 2.0, 8)
    model = _model()
    y_pred = model.predict_on_batch(x)
    expected = np.sum(weights * ((y_pred - y) ** 2).mean(axis=1)) / 8
    assert model.train_on_batch(x, y, sample_weight=weights) == pytest.approx(expected,
                                                                              rel=1e-12)


def test_class_weight_equals_the_sample_weights_of_each_class():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((12, 4, 3))
    labels = rng.integers(0, 3, 12)
    class_weight = {0: 1.0, 1: 3.0, 2: 0.25}

    def model():
        m = Sequential([fl.LSTM(4, seed=0, dtype="float64"), Dense(3, seed=1, dtype="float64")],
                       seed=0)
        m.compile("sgd", losses.SparseCategoricalCrossentropy(from_logits=True))
        return m

    by_class, by_sample = model(), model()
    logits = by_class.predict_on_batch(x)
    log_probs = logits - np.log(np.exp(logits).sum(axis=-1, keepdims=True))
    weights = np.array([class_weight[c] for c in labels])
    expected = np.sum(-log_probs[np.arange(12), labels] * weights) / 12
    assert by_class.train_on_batch(x, labels, class_weight=class_weight) == pytest.approx(
        expected, rel=1e-12)
    by_sample.train_on_batch(x, labels, sample_weight=weights)
    assert _same_weights(by_class, by_sample)
    one_hot, fitted = model(), model()
    one_hot.compile("sgd", losses.CategoricalCrossentropy(from_logits=True))
    one_hot.fit(x, np.eye(3)[labels], batch_size=5, epochs=2, shuffle=False,
                class_weight=class_weight, verbose=0)
    fitted.fit(x, labels, batch_size=5, epochs=2, shuffle=False, sample_weight=weights,
               verbose=0)
    assert all(np.allclose(a, b, rtol=1e-12, atol=1e-15)
               for a, b in zip(one_hot.get_weights(), fitted.get_weights()))
    with pytest.raises(ValueError, match="class_weight and sample_weight cannot both"):
        fitted.fit(x, labels, class_weight=class_weight, sample_weight=weights, verbose=0)
    with pytest.raises(ValueError, match="class_weight needs one class per sample"):
        fitted.train_on_batch(x, np.zeros((12, 4)), class_weight=class_weight)


# -- batch methods ------------------------------------------------------------------------

def test_batch_methods_return_as_keras_does():
    x, y = _data(8)
    model = _model(metrics=["mae"])
    before = model.test_on_batch(x, y, return_dict=True)
    assert before == model.evaluate(x, y, batch_size=8, verbose=0, return_dict=True)
    loss, mae = model.train_on_batch(x, y)
    assert loss == pytest.approx(before["loss"], rel=1e-12)
    assert mae == pytest.approx(before["mae"], rel=1e-12)
    # Each call reports its own batch: the running values are reset first.
    assert model.test_on_batch(x[:4], y[:4])[0] == pytest.approx(
        model.evaluate(x[:4], y[:4], verbose=0)[0], rel=1e-12)
    assert np.array_equal(model.predict_on_batch(x), model.predict(x, batch_size=8, verbose=0))
    plain = _model()
    assert isinstance(plain.train_on_batch(x, y), float)


# -- data in batches ----------------------------------------------------------------------

class Batches:
    """A keras.utils.PyDataset-like sequence of batches."""

    def __init__(self, x, y, batch_size, weights=None):
        self.x, self.y, self.batch_size, self.weights = x, y, batch_size, weights
        self.epochs_ended = 0

    def __len__(self):
        return math.ceil(len(self.x) / self.batch_size)

    def __getitem__(self, index):
        part = slice(index * self.batch_size, (index + 1) * self.batch_size)
        if self.weights is None:
            return self.x[part], self.y[part]
        return self.x[part], self.y[part], self.weights[part]

    def on_epoch_end(self):
        self.epochs_ended += 1


def test_fit_on_a_generator_gives_the_weights_of_fit_on_its_arrays():
    x, y = _data()
    on_arrays, on_generator, on_sequence = _model(), _model(), _model()
    on_arrays.fit(x, y, batch_size=8, epochs=3, shuffle=False, verbose=0)

    def generator():
        for _ in range(3):
            for start in range(0, 40, 8):
                yield x[start:start + 8], y[start:start + 8]

    on_generator.fit(generator(), epochs=3, steps_per_epoch=5, verbose=0)
    assert _same_weights(on_arrays, on_generator)
    sequence = Batches(x, y, 8)
    on_sequence.fit(sequence, epochs=3, shuffle=False, verbose=0)
    assert _same_weights(on_arrays, on_sequence) and sequence.epochs_ended == 3


def test_batches_with_sample_weights_equal_fit_with_sample_weight():
    x, y = _data()
    weights = np.random.default_rng(3).random(40)
    on_arrays, on_sequence = _model(), _model()
    on_arrays.fit(x, y, batch_size=10, epochs=2, shuffle=False, sample_weight=weights,
                  verbose=0)
    on_sequence.fit(Batches(x, y, 10, weights), epochs=2, shuffle=False, verbose=0)
    assert _same_weights(on_arrays, on_sequence)


class CountBatches(Callback):
    def on_train_begin(self, logs=None):
        self.per_epoch = []

    def on_epoch_begin(self, epoch, logs=None):
        self.per_epoch.append(0)

    def on_train_batch_end(self, batch, logs=None):
        self.per_epoch[-1] += 1


def test_steps_per_epoch_continues_over_passes_of_arrays():
    x, y = _data()
    counter = CountBatches()
    model = _model()
    model.fit(x, y, batch_size=8, epochs=3, steps_per_epoch=7, callbacks=[counter], verbose=0)
    assert counter.per_epoch == [7, 7, 7]
    # Unshuffled, 21 batches are 4 passes of 5 and one more: as 21 train_on_batch calls.
    by_hand = _model()
    for step in range(21):
        start = step % 5 * 8
        by_hand.train_on_batch(x[start:start + 8], y[start:start + 8])
    fitted = _model()
    fitted.fit(x, y, batch_size=8, epochs=3, steps_per_epoch=7, shuffle=False, verbose=0)
    assert _same_weights(by_hand, fitted)


def test_a_generator_that_runs_out_stops_training_with_a_warning():
    x, y = _data()
    counter = CountBatches()
    batches = ((x[k:k + 8], y[k:k + 8]) for k in range(0, 40, 8))
    model = _model()
    with pytest.warns(RuntimeWarning, match="the data ran out after 5 batches"):
        history = model.fit(batches, epochs=3, steps_per_epoch=2, callbacks=[counter],
                            verbose=0)
    assert counter.per_epoch == [2, 2, 1] and len(history.history["loss"]) == 3
    once = ((x[k:k + 8], y[k:k + 8]) for k in range(0, 40, 8))
    with pytest.warns(RuntimeWarning, match="ran out"):
        history = model.fit(once, epochs=2, verbose=0)
    assert len(history.history["loss"]) == 1


def test_data_in_batches_is_checked():
    x, y = _data()
    model = _model()
    with pytest.raises(ValueError, match="y must be None when x gives batches"):
        model.fit(Batches(x, y, 8), y, verbose=0)
    with pytest.raises(ValueError, match=r"batch 0 of x must be a tuple \(x, y\)"):
        model.fit(iter([x]), verbose=0)
    with pytest.raises(TypeError, match=r"x must be an array of samples .*, or batches: a "
                                        r"sequence .*, an iterator, or an iterable with "
                                        r"__iter__; got dict"):
        model.fit({"x": x}, y, verbose=0)
    with pytest.raises(TypeError, match="x must be an array of samples .* got object"):
        model.predict(object(), verbose=0)
    with pytest.raises(ValueError, match="validation_split needs x as an array"):
        model.fit(Batches(x, y, 8), validation_split=0.5, verbose=0)
    assert model.evaluate(Batches(x, y, 8), verbose=0) == pytest.approx(
        model.evaluate(x, y, batch_size=8, verbose=0), rel=1e-12)
    assert np.array_equal(model.predict(iter([x[:8], x[8:]]), verbose=0),
                          model.predict(x, verbose=0))
    # evaluate and predict read one pass at most, and steps may stop them early.
    assert model.evaluate(x, y, batch_size=8, steps=100, verbose=0) == model.evaluate(
        x, y, batch_size=8, verbose=0)
    assert model.predict(x, batch_size=8, steps=2, verbose=0).shape == (16, 2)


class Iterable:
    """A tf.data-like iterable of batches: only __iter__, which starts afresh."""

    def __init__(self, batches):
        self.batches = batches
        self.passes = 0

    def __iter__(self):
        self.passes += 1
        return iter(self.batches)


def test_fit_on_an_iterable_reads_it_afresh_every_epoch():
    x, y = _data()
    on_arrays, on_iterable = _model(), _model()
    on_arrays.fit(x, y, batch_size=8, epochs=3, shuffle=False, verbose=0)
    batches = Iterable([(x[k:k + 8], y[k:k + 8]) for k in range(0, 40, 8)])
    on_iterable.fit(batches, epochs=3, verbose=0)
    assert _same_weights(on_arrays, on_iterable) and batches.passes == 3
    # steps_per_epoch continues the pass and starts new ones, as over arrays.
    counter = CountBatches()
    stepped = _model()
    stepped.fit(batches, epochs=3, steps_per_epoch=7, callbacks=[counter], verbose=0)
    fitted = _model()
    fitted.fit(x, y, batch_size=8, epochs=3, steps_per_epoch=7, shuffle=False, verbose=0)
    assert counter.per_epoch == [7, 7, 7] and _same_weights(stepped, fitted)
    # evaluate and predict read one pass; predict takes (x,) or x alone.
    assert on_iterable.evaluate(batches, verbose=0) == pytest.approx(
        on_iterable.evaluate(x, y, batch_size=8, verbose=0), rel=1e-12)
    for inputs in (Iterable([(x[:8],), (x[8:],)]), Iterable([x[:8], x[8:]])):
        assert np.array_equal(on_iterable.predict(inputs, verbose=0),
                              on_iterable.predict(x, verbose=0))
    with pytest.raises(ValueError, match="x gave no batch in epoch 1"):
        _model().fit(Iterable([]), verbose=0)


def test_validation_data_as_batches_or_with_sample_weights():
    x, y = _data()
    x_val, y_val = _data(16, seed=1)
    weights = np.random.default_rng(2).random(16)
    logs = {}
    for name, validation_data in (
            ("arrays", (x_val, y_val, weights)),
            ("sequence", Batches(x_val, y_val, 8, weights)),
            ("iterable", Iterable([(x_val[:8], y_val[:8], weights[:8]),
                                   (x_val[8:], y_val[8:], weights[8:])]))):
        history = _model().fit(x, y, batch_size=8, epochs=2, shuffle=False,
                               validation_data=validation_data, verbose=0)
        logs[name] = history.history["val_loss"]
    assert logs["arrays"] == logs["sequence"] == logs["iterable"]
    model = _model()
    model.fit(x, y, batch_size=8, epochs=2, shuffle=False, verbose=0)
    assert logs["arrays"][-1] == pytest.approx(model.evaluate(
        x_val, y_val, batch_size=8, sample_weight=weights, verbose=0), rel=1e-12)
    with pytest.raises(ValueError, match="validation_data is read whole after every epoch.*"
                                         "an iterator, which is read once"):
        _model().fit(x, y, validation_data=iter([(x_val, y_val)]), verbose=0)


def test_fit_with_targets_for_the_other_cross_entropy_says_which_loss_to_use():
    x, _ = _data(16)
    labels = np.arange(16) % 3
    for loss, targets, hint in (("sparse_categorical_crossentropy", np.eye(3)[labels],
                                 "use loss='categorical_crossentropy'"),
                                ("categorical_crossentropy", labels,
                                 "use loss='sparse_categorical_crossentropy'")):
        model = Sequential([fl.LSTM(4, seed=0), Dense(3, activation="softmax", seed=1)])
        model.compile("adam", loss, metrics=["accuracy"])
        with pytest.raises(ValueError, match=hint):
            model.fit(x, targets, verbose=0)


# -- NaN and inf in the data ---------------------------------------------------------------

def test_nan_in_arrays_is_named_before_training():
    x, y = _data(16)
    weights = np.ones(16)
    for name, position, value, where in (
            ("x", (9, 2, 1), "nan", r"sample 9, index \(2, 1\) within the sample"),
            ("y", (4, 1), "inf", r"sample 4, index \(1,\) within the sample"),
            ("sample_weight", (12,), "-inf", "sample 12$")):
        arrays = dict(x=x.copy(), y=y.copy(), sample_weight=weights.copy())
        arrays[name][position] = float(value)
        model = _model()
        model.build((None, 5, 3))
        before = model.get_weights()
        pattern = (f"^{name} must hold finite numbers \\(one NaN or inf in training data makes "
                   f"every weight NaN after one update\\), got {value} at {where}")
        with pytest.raises(ValueError, match=pattern):
            model.fit(arrays["x"], arrays["y"], sample_weight=arrays["sample_weight"],
                      batch_size=4, verbose=0)
        with pytest.raises(ValueError, match=pattern):
            model.train_on_batch(arrays["x"], arrays["y"], sample_weight=arrays["sample_weight"])
        with pytest.raises(ValueError, match=pattern):
            model.evaluate(arrays["x"], arrays["y"], sample_weight=arrays["sample_weight"],
                           verbose=0)
        assert all(np.array_equal(a, b) for a, b in zip(before, model.get_weights()))
    bad_x = x.copy()
    bad_x[3, 0, 0] = np.nan
    with pytest.raises(ValueError, match=r"validation_data\[0\] \(x_val\) must hold finite"):
        _model().fit(x, y, validation_data=(bad_x, y), verbose=0)
    with pytest.raises(ValueError, match=r"^x must hold finite numbers .* at sample 3,"):
        _model().fit(bad_x, y, validation_split=0.5, verbose=0)
    # predict does not check: the NaN sample alone gives NaN outputs.
    predictions = _model().predict(bad_x, verbose=0)
    assert np.isnan(predictions[3]).all() and np.isfinite(np.delete(predictions, 3, 0)).all()


def test_nan_in_a_batch_names_the_epoch_the_batch_and_the_position():
    x, y = _data()

    class Spoiled(Batches):
        """Batch 3 of the second pass holds a NaN."""

        def __getitem__(self, index):
            batch_x, batch_y = super().__getitem__(index)
            if self.epochs_ended == 1 and index == 3:
                batch_x = batch_x.copy()
                batch_x[1, 4, 2] = np.nan
            return batch_x, batch_y

    counter = CountBatches()
    with pytest.raises(ValueError, match=r"^epoch 2, batch 3 of x: x must hold finite numbers .*"
                                         r"got nan at sample 1, index \(4, 2\) within the "
                                         r"sample"):
        _model().fit(Spoiled(x, y, 8), epochs=3, shuffle=False, callbacks=[counter], verbose=0)
    assert counter.per_epoch == [5, 3]
    with pytest.raises(ValueError, match=r"^epoch 5, batch 3 of x: x must hold finite"):
        _model().fit(Spoiled(x, y, 8), epochs=6, initial_epoch=3, shuffle=False, verbose=0)
    spoiled_y = y.copy()
    spoiled_y[13, 1] = np.inf
    batches = ((x[k:k + 8], spoiled_y[k:k + 8]) for k in range(0, 40, 8))
    with pytest.raises(ValueError, match=r"^epoch 1, batch 1 of x: y must hold finite numbers .*"
                                         r"got inf at sample 5, index \(1,\)"):
        _model().fit(batches, verbose=0)


def test_the_first_bad_value_of_a_large_array_is_found_past_the_first_block():
    x = np.zeros((3000, 100, 4), np.float32)
    x[2345, 61, 3], x[2900, 0, 0] = np.inf, np.nan
    model = _model()
    with pytest.raises(ValueError, match=r"got inf at sample 2345, index \(61, 3\) within"):
        model.fit(x, np.zeros((3000, 2)), verbose=0)


def test_large_finite_values_and_integer_data_pass_the_check():
    x, y = _data(8)
    x = x.astype(np.float32)
    x[:, :, 0] = 3e38  # every value finite, their float32 sum inf
    model = Sequential([fl.LSTM(4, seed=0), Dense(2, seed=1)], seed=0)
    model.compile("sgd", "mse")
    model.train_on_batch(x, y)
    integers = Sequential([fl.Embedding(10, 3, seed=0), fl.LSTM(2, seed=1)])
    integers.compile("sgd", "mse")
    integers.train_on_batch(np.arange(20).reshape(4, 5) % 10, np.zeros((4, 2)))


# -- learning rates, schedules, AdamW -------------------------------------------------------

def test_learning_rate_is_assignable():
    sgd = optimizers.SGD(learning_rate=0.1)
    sgd.learning_rate = 0.5
    weight = np.array([1.0])
    sgd.apply([np.array([1.0])], [weight])
    assert weight[0] == 0.5
    sgd.learning_rate = schedules.ExponentialDecay(1.0, 1, 0.5)
    assert sgd.learning_rate == 0.5  # the schedule at iterations = 1
    with pytest.raises(TypeError, match="learning_rate is a schedule, so it cannot be set"):
        sgd.learning_rate = 0.1
    with pytest.raises(ValueError, match=r"learning_rate must be in \[0.0, inf\)"):
        optimizers.Adam().learning_rate = -1.0


def test_schedules_follow_keras_formulas_step_by_step():
    exponential = schedules.ExponentialDecay(0.1, decay_steps=4, decay_rate=0.5)
    stairs = schedules.ExponentialDecay(0.1, decay_steps=4, decay_rate=0.5, staircase=True)
    for step in range(12):
        assert exponential(step) == pytest.approx(0.1 * 0.5 ** (step / 4), rel=1e-15)
        assert stairs(step) == pytest.approx(0.1 * 0.5 ** (step // 4), rel=1e-15)
    cosine = schedules.CosineDecay(0.2, decay_steps=10, alpha=0.1)
    for step in range(15):
        s = min(step, 10)
        assert cosine(step) == pytest.approx(
            0.2 * (0.9 * 0.5 * (1 + math.cos(math.pi * s / 10)) + 0.1), rel=1e-15)
    warm = schedules.CosineDecay(0.0, decay_steps=10, warmup_target=1.0, warmup_steps=5)
    assert [warm(s) for s in (0, 1, 5)] == pytest.approx([0.0, 0.2, 1.0])
    assert warm(10) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.5)))
    assert warm(100) == pytest.approx(0.0, abs=1e-15)
    # Keras' documented example: 1.0 up to step 100000, 0.5 up to 110000, then 0.1.
    piecewise = schedules.PiecewiseConstantDecay([100000, 110000], [1.0, 0.5, 0.1])
    assert [piecewise(s) for s in (0, 100000, 100001, 110000, 110001)] == [
        1.0, 1.0, 0.5, 0.5, 0.1]
    with pytest.raises(ValueError, match="one more entry than boundaries"):
        schedules.PiecewiseConstantDecay([1, 2], [1.0, 0.5])
    with pytest.raises(ValueError, match="decay_steps must be a positive int"):
        schedules.CosineDecay(0.1, decay_steps=0)


def test_an_optimizer_reads_its_schedule_at_each_update():
    schedule = schedules.PiecewiseConstantDecay([1], [1.0, 0.1])
    sgd = optimizers.SGD(learning_rate=schedule)
    weight = np.array([0.0])
    for _ in range(3):
        sgd.apply([np.array([1.0])], [weight])
    assert weight[0] == pytest.approx(-1.0 - 1.0 - 0.1)


def test_adamw_decays_the_weights_before_the_adam_update():
    rng = np.random.default_rng(0)
    start, grads = rng.standard_normal(5), [rng.standard_normal(5) for _ in range(3)]
    decayed, plain = start.copy(), start.copy()
    adamw = optimizers.AdamW(learning_rate=0.01, weight_decay=0.1)
    adam = optimizers.Adam(learning_rate=0.01)
    for gradient in grads:
        adamw.apply([gradient], [decayed])
        plain -= 0.01 * 0.1 * plain
        adam.apply([gradient], [plain])
    assert np.allclose(decayed, plain, rtol=1e-14, atol=0)
    assert optimizers.AdamW().weight_decay == 0.004
    assert isinstance(optimizers.get("adamw"), optimizers.AdamW)
    with pytest.raises(TypeError, match="weight_decay must be a real number for AdamW"):
        optimizers.AdamW(weight_decay=None)


# -- callbacks ----------------------------------------------------------------------------

class ScriptedModel:
    def __init__(self, learning_rate):
        self.optimizer = optimizers.SGD(learning_rate=learning_rate)
        self.stop_training = False


def test_reduce_lr_on_plateau_follows_a_scripted_loss_history():
    model = ScriptedModel(1.0)
    reduce = ReduceLROnPlateau(monitor="loss", factor=0.5, patience=2, cooldown=1,
                               min_delta=0.01, min_lr=0.2)
    reduce.set_model(model)
    reduce.on_train_begin()
    history = [1.0, 0.9, 0.895, 0.9, 0.7, 0.7, 0.7, 0.7, 0.7, 0.7, 0.7, 0.7]
    rates, logged = [], []
    for epoch, loss in enumerate(history):
        logs = {"loss": loss}
        reduce.on_epoch_end(epoch, logs)
        logged.append(logs["learning_rate"])
        rates.append(model.optimizer.learning_rate)
    # Epoch 2 (0.895) is not 0.01 better than 0.9: waits 1, 2 -> halve at epoch 3; epoch 4
    # ends the cooldown (and improves), then waits at 5, 6 -> halve at 6; epoch 7 ends the
    # cooldown and, as in Keras, already waits; 8 waits again -> 0.125, clipped to min_lr
    # 0.2; at min_lr the rate stays.
    assert rates == [1.0, 1.0, 1.0, 0.5, 0.5, 0.5, 0.25, 0.25, 0.2, 0.2, 0.2, 0.2]
    assert logged == [1.0, 1.0, 1.0, 1.0] + rates[3:-1]
    with pytest.raises(ValueError, match=r"factor must be in \[0.0, 1.0\)"):
        ReduceLROnPlateau(factor=1.0)


def test_learning_rate_scheduler_sets_the_rate_each_epoch():
    x, y = _data(16)
    model = _model(optimizer=optimizers.SGD(learning_rate=0.1))
    history = model.fit(x, y, epochs=3, verbose=0, callbacks=[
        LearningRateScheduler(lambda epoch, rate: rate if epoch == 0 else rate / 2)])
    assert history.history["learning_rate"] == [0.1, 0.05, 0.025]
    model.fit(x, y, epochs=2, verbose=0, callbacks=[LearningRateScheduler(lambda e: 0.3 + e)])
    assert model.optimizer.learning_rate == 1.3
    with pytest.raises(ValueError, match="the schedule must return a float"):
        model.fit(x, y, verbose=0, callbacks=[LearningRateScheduler(lambda e: "fast")])


def test_csv_logger_writes_a_header_and_a_row_per_epoch(tmp_path):
    x, y = _data(16)
    path = tmp_path / "log.csv"
    model = _model(metrics=["mae"])
    history = model.fit(x, y, epochs=2, validation_split=0.25, verbose=0,
                        callbacks=[CSVLogger(path)])
    model.fit(x, y, epochs=1, verbose=0, callbacks=[CSVLogger(path, separator=";",
                                                              append=True)])
    rows = path.read_text().splitlines()
    assert rows[0] == "epoch,loss,mae,val_loss,val_mae" and len(rows) == 4
    first = next(csv.DictReader(rows[:2]))
    assert first["epoch"] == "0" and float(first["val_mae"]) == history.history["val_mae"][0]
    assert rows[3].startswith("0;") and rows[3].count(";") == 2


def test_terminate_on_nan_stops_after_the_batch(capsys):
    x, y = _data(16)
    # A finite target whose squared error overflows: the loss becomes inf in training.
    y[9, 0] = 1e200
    batches = []
    model = _model()
    with np.errstate(over="ignore"):
        model.fit(x, y, batch_size=4, epochs=2, shuffle=False, verbose=0, callbacks=[
            TerminateOnNaN(),
            LambdaCallback(on_train_batch_end=lambda b, logs: batches.append(b))])
    assert batches == [0, 1, 2]
    assert "Batch 2: Invalid loss, terminating training" in capsys.readouterr().out


def test_lambda_callback_calls_the_given_hooks():
    x, y = _data(16)
    seen = []
    model = _model()
    model.fit(x, y, batch_size=8, epochs=2, verbose=0, callbacks=[LambdaCallback(
        on_epoch_end=lambda epoch, logs: seen.append(("epoch", epoch, sorted(logs))),
        on_train_end=lambda logs: seen.append("end"),
        on_train_batch_begin=lambda batch, logs: seen.append(batch))])
    assert seen == [0, 1, ("epoch", 0, ["loss"]), 0, 1, ("epoch", 1, ["loss"]), "end"]
    with pytest.raises(TypeError, match="unexpected keyword argument 'on_batch_end'"):
        LambdaCallback(on_batch_end=print)


# -- progress output ----------------------------------------------------------------------

def test_progress_written_to_a_file_has_one_line_per_epoch(tmp_path):
    script = textwrap.dedent("""
        import numpy as np, fastlstm as fl
        x = np.random.default_rng(0).standard_normal((64, 5, 3))
        model = fl.Sequential([fl.LSTM(4, seed=0), fl.Dense(1, seed=1)])
        model.compile("adam", "mse")
        model.fit(x, x.sum(axis=(1, 2)), batch_size=4, epochs=3)
    """)
    log = tmp_path / "fit.log"
    with open(log, "w") as stream:
        subprocess.run([sys.executable, "-c", script], stdout=stream, check=True, timeout=120)
    text = log.read_text()
    assert "\r" not in text
    lines = text.splitlines()
    assert lines[0::2] == ["Epoch 1/3", "Epoch 2/3", "Epoch 3/3"]
    assert len(lines) == 6 and all(line.startswith("16/16 - ") for line in lines[1::2])


def test_progress_of_an_iterator_of_unknown_length(capsys, monkeypatch):
    x, y = _data(16)
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True, raising=False)
    _model().fit(((x[k:k + 8], y[k:k + 8]) for k in (0, 8)), verbose="auto")
    out = capsys.readouterr().out
    assert "\r1/Unknown - " in out and "\r2/Unknown - " in out and out.endswith("\n")
