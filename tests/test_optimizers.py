"""Tests of fastlstm.optimizers.

Updates are checked against Keras' documented examples and against the
update formulas written out here on Python floats, step by step.
"""
import math

import numpy as np
import pytest

import fastlstm as fl
from fastlstm import optimizers

GRADIENTS = [0.5, -1.5, 2.0, 0.25]


def run_scalar(optimizer, start, gradients):
    """The values a one-entry variable takes under ``gradients``."""
    variable = np.array([start])
    values = []
    for gradient in gradients:
        optimizer.apply([np.array([gradient])], [variable])
        values.append(variable[0])
    return values


def sgd_by_hand(lr, momentum, nesterov, start, gradients):
    w, velocity, values = start, 0.0, []
    for g in gradients:
        if momentum:
            velocity = momentum * velocity - lr * g
            w = w + momentum * velocity - lr * g if nesterov else w + velocity
        else:
            w -= lr * g
        values.append(w)
    return values


def adam_by_hand(lr, beta_1, beta_2, epsilon, amsgrad, start, gradients):
    w, m, v, v_max, values = start, 0.0, 0.0, 0.0, []
    for t, g in enumerate(gradients, start=1):
        m = beta_1 * m + (1 - beta_1) * g
        v = beta_2 * v + (1 - beta_2) * g * g
        v_max = max(v_max, v)
        alpha = lr * math.sqrt(1 - beta_2 ** t) / (1 - beta_1 ** t)
        w -= alpha * m / (math.sqrt(v_max if amsgrad else v) + epsilon)
        values.append(w)
    return values


def rmsprop_by_hand(lr, rho, momentum, epsilon, centered, start, gradients):
    w, velocity, mean_g, buffer, values = start, 0.0, 0.0, 0.0, []
    for g in gradients:
        velocity = rho * velocity + (1 - rho) * g * g
        mean_g = rho * mean_g + (1 - rho) * g
        denominator = velocity - mean_g ** 2 + epsilon if centered else velocity + epsilon
        increment = lr * g / math.sqrt(denominator)
        buffer = momentum * buffer + increment
        w -= buffer if momentum else increment
        values.append(w)
    return values


# -- Keras' documented examples ------------------------------------------------

def test_sgd_keras_examples():
    assert run_scalar(optimizers.SGD(0.1), 1.0, [1.0]) == pytest.approx([0.9])
    var = np.array([1.0])
    sgd = optimizers.SGD(0.1, momentum=0.9)
    sgd.apply([var.copy()], [var])
    first = 1.0 - var[0]
    before = var[0]
    sgd.apply([var.copy()], [var])
    assert first == pytest.approx(0.1) and before - var[0] == pytest.approx(0.18)


def test_adam_keras_example():
    assert run_scalar(optimizers.Adam(0.1), 10.0, [10.0]) == pytest.approx([9.9], rel=1e-6)


def test_rmsprop_keras_example():
    assert run_scalar(optimizers.RMSprop(0.1), 10.0, [10.0]) == pytest.approx([9.683772])


# -- the formulas, step by step -----------------------------------------------------

@pytest.mark.parametrize("momentum, nesterov", [(0.0, False), (0.9, False), (0.9, True),
                                                (0.5, True)])
def test_sgd_matches_the_formula(momentum, nesterov):
    optimizer = optimizers.SGD(0.05, momentum=momentum, nesterov=nesterov)
    expected = sgd_by_hand(0.05, momentum, nesterov, 1.0, GRADIENTS)
    assert run_scalar(optimizer, 1.0, GRADIENTS) == pytest.approx(expected, rel=1e-14)


@pytest.mark.parametrize("amsgrad", [False, True])
def test_adam_matches_the_formula(amsgrad):
    optimizer = optimizers.Adam(0.01, beta_1=0.8, beta_2=0.99, epsilon=1e-3, amsgrad=amsgrad)
    expected = adam_by_hand(0.01, 0.8, 0.99, 1e-3, amsgrad, 1.0, GRADIENTS)
    assert run_scalar(optimizer, 1.0, GRADIENTS) == pytest.approx(expected, rel=1e-14)


@pytest.mark.parametrize("momentum, centered", [(0.0, False), (0.9, False), (0.0, True),
                                                (0.5, True)])
def test_rmsprop_matches_the_formula(momentum, centered):
    optimizer = optimizers.RMSprop(0.01, rho=0.8, momentum=momentum, epsilon=1e-3,
                                   centered=centered)
    expected = rmsprop_by_hand(0.01, 0.8, momentum, 1e-3, centered, 1.0, GRADIENTS)
    assert run_scalar(optimizer, 1.0, GRADIENTS) == pytest.approx(expected, rel=1e-14)


def test_keras_defaults():
    sgd, adam, rmsprop = (optimizers.get(name) for name in ("sgd", "adam", "rmsprop"))
    assert (sgd.learning_rate, sgd.momentum, sgd.nesterov) == (0.01, 0.0, False)
    assert (adam.learning_rate, adam.beta_1, adam.beta_2, adam.epsilon) == (0.001, 0.9, 0.999,
                                                                            1e-7)
    assert (rmsprop.learning_rate, rmsprop.rho, rmsprop.momentum, rmsprop.epsilon) == (
        0.001, 0.9, 0.0, 1e-7)


@pytest.mark.parametrize("name", ["sgd", "adam", "rmsprop"])
def test_updates_in_place_and_keeps_the_dtype(name):
    variable = np.ones((3, 2), np.float32)
    identity = id(variable)
    optimizer = optimizers.get(name)
    optimizer.apply([np.full((3, 2), 0.5)], [variable])
    assert id(variable) == identity and variable.dtype == np.float32
    assert np.all(variable < 1) and optimizer.iterations == 1


@pytest.mark.parametrize("optimizer", [optimizers.SGD(0.1, momentum=0.9),
                                       optimizers.Adam(0.1), optimizers.RMSprop(0.05)],
                         ids=repr)
def test_minimises_a_least_squares_problem(optimizer):
    rng = np.random.default_rng(0)
    a = rng.standard_normal((20, 3))
    truth = np.array([1.0, -2.0, 0.5])
    b = a @ truth
    w = np.zeros(3)
    for _ in range(500):
        optimizer.apply([a.T @ (a @ w - b) / len(b)], [w])
    np.testing.assert_allclose(w, truth, atol=0.05)


# -- clipping -----------------------------------------------------------------------

def apply_sgd(clip, grads):
    """The gradients SGD(lr=1) applied, after ``clip``."""
    variables = [np.zeros_like(g) for g in grads]
    optimizers.SGD(1.0, **clip).apply([g.copy() for g in grads], variables)
    return [-v for v in variables]


def test_clipnorm_clips_each_gradient_by_its_own_norm():
    applied = apply_sgd({"clipnorm": 1.0}, [np.array([3.0, 4.0]), np.array([0.3, 0.4])])
    np.testing.assert_allclose(applied[0], [0.6, 0.8])
    np.testing.assert_allclose(applied[1], [0.3, 0.4])


def test_global_clipnorm_scales_all_gradients_together():
    applied = apply_sgd({"global_clipnorm": 1.0}, [np.array([3.0, 4.0]), np.array([12.0])])
    np.testing.assert_allclose(applied[0], [3 / 13, 4 / 13])
    np.testing.assert_allclose(applied[1], [12 / 13])
    within = apply_sgd({"global_clipnorm": 20.0}, [np.array([3.0, 4.0]), np.array([12.0])])
    np.testing.assert_allclose(within[1], [12.0])


def test_clipvalue_clips_each_entry():
    applied = apply_sgd({"clipvalue": 0.5}, [np.array([3.0, -0.2, -7.0])])
    np.testing.assert_allclose(applied[0], [0.5, -0.2, -0.5])


def test_clipping_leaves_the_layers_gradients_untouched():
    gradient = np.array([3.0, 4.0])
    optimizers.SGD(1.0, clipnorm=1.0).apply([gradient], [np.zeros(2)])
    np.testing.assert_array_equal(gradient, [3.0, 4.0])


def test_only_one_kind_of_clipping():
    with pytest.raises(ValueError, match="only one of clipnorm, clipvalue and global_clipnorm"):
        optimizers.Adam(clipnorm=1.0, clipvalue=0.5)
    with pytest.raises(ValueError, match=r"clipnorm must be in \(0.0, inf\)"):
        optimizers.Adam(clipnorm=0.0)


# -- schedules ------------------------------------------------------------------------

def test_learning_rate_schedule_is_called_with_the_step_number():
    calls = []

    def schedule(step):
        calls.append(step)
        return [0.1, 0.01, 0.001][step]

    optimizer = optimizers.SGD(schedule)
    assert run_scalar(optimizer, 1.0, [1.0, 1.0, 1.0]) == pytest.approx([0.9, 0.89, 0.889])
    assert calls == [0, 1, 2]


def test_schedule_returning_nonsense_is_named():
    optimizer = optimizers.Adam(lambda step: -1.0)
    with pytest.raises(ValueError, match=r"learning_rate\(0\) \(the schedule's value\)"):
        optimizer.apply([np.ones(1)], [np.ones(1)])
    optimizer = optimizers.Adam(lambda step: "fast")
    with pytest.raises(TypeError, match="learning_rate"):
        optimizer.apply([np.ones(1)], [np.ones(1)])


# -- variables and errors ---------------------------------------------------------------

def test_optimizer_keeps_to_the_variables_it_was_built_for():
    first, second = np.ones(2), np.ones(2)
    optimizer = optimizers.Adam()
    optimizer.apply([np.ones(2)], [first])
    optimizer.apply([np.ones(2)])
    with pytest.raises(ValueError, match="the 1 arrays the optimizer was built for"):
        optimizer.apply([np.ones(2)], [second])


def test_none_gradients_leave_their_variable_unchanged():
    first, second = np.ones(2), np.ones(2)
    optimizers.SGD(0.5).apply([None, np.ones(2)], [first, second])
    np.testing.assert_array_equal(first, 1.0)
    np.testing.assert_array_equal(second, 0.5)


def test_bad_gradients_and_variables_are_named():
    optimizer = optimizers.SGD()
    with pytest.raises(ValueError, match=r"grads\[0\] must have its variable's shape \(2,\)"):
        optimizer.apply([np.ones(3)], [np.ones(2)])
    with pytest.raises(ValueError, match="grads must be a list of 1 gradients"):
        optimizers.SGD().apply([np.ones(2), np.ones(2)], [np.ones(2)])
    with pytest.raises(TypeError, match=r"variables\[0\] must be a float ndarray"):
        optimizers.SGD().apply([np.ones(2)], [[1.0, 2.0]])
    with pytest.raises(RuntimeError, match="the optimizer is not built"):
        optimizers.SGD().apply([np.ones(2)])


def test_bad_hyperparameters_are_named():
    with pytest.raises(ValueError, match=r"momentum must be in \[0.0, 1.0\]"):
        optimizers.SGD(momentum=1.5)
    with pytest.raises(ValueError, match=r"beta_1 must be in \[0.0, 1.0\)"):
        optimizers.Adam(beta_1=1.0)
    with pytest.raises(TypeError, match="learning_rate must be a real number"):
        optimizers.RMSprop(learning_rate="0.1")
    with pytest.raises(TypeError, match="does not support the Keras argument weight_decay"):
        optimizers.Adam(weight_decay=0.01)
    with pytest.raises(ValueError, match="optimizer must be one of"):
        optimizers.get("adagrad")


_FUSED = {
    "adam": lambda lr: optimizers.Adam(learning_rate=lr),
    "adam amsgrad": lambda lr: optimizers.Adam(learning_rate=lr, amsgrad=True),
    "adamw": lambda lr: optimizers.AdamW(learning_rate=lr, weight_decay=0.01),
    "sgd momentum": lambda lr: optimizers.SGD(learning_rate=lr, momentum=0.9),
    "sgd nesterov": lambda lr: optimizers.SGD(learning_rate=lr, momentum=0.8, nesterov=True),
    "rmsprop": lambda lr: optimizers.RMSprop(learning_rate=lr),
    "rmsprop centered momentum": lambda lr: optimizers.RMSprop(learning_rate=lr, centered=True,
                                                               momentum=0.5),
}


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("kind", list(_FUSED))
@pytest.mark.parametrize("threads", [1, 2])
def test_the_fused_updates_are_numpys_to_the_bit(monkeypatch, dtype, kind, threads):
    """The one-pass updates (fastlstm/_optim.pyx) against the NumPy
    expressions they replace: every variable and slot equal to the bit,
    step after step, on one thread and on two."""
    monkeypatch.setattr(fl._plan, "PARALLEL_MIN_FLOPS", 0)
    rng = np.random.default_rng(7)
    shapes = [(37, 13), (1000,), (3, 4, 5)]
    start = [rng.standard_normal(shape).astype(dtype) for shape in shapes]
    steps = [[(rng.standard_normal(shape) * 10.0 ** rng.integers(-6, 3)).astype(dtype)
              for shape in shapes] for _ in range(6)]
    results = []
    fl.set_num_threads(threads)
    try:
        for fused in (True, False):
            if not fused:
                monkeypatch.setattr(optimizers, "_fusable", lambda variable, gradient: False)
            variables = [v.copy() for v in start]
            optimizer = _FUSED[kind](lambda step: 0.01 / (1 + step))
            for grads in steps:
                optimizer.apply(grads, variables)
            results.append((variables, optimizer._slot_list))
    finally:
        fl.set_num_threads(None)
    (fused_vars, fused_slots), (numpy_vars, numpy_slots) = results
    for a, b in zip(fused_vars, numpy_vars):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(fused_slots, numpy_slots):
        assert a.keys() == b.keys()
        for name in a:
            if name != "scratch":
                np.testing.assert_array_equal(a[name], b[name], err_msg=name)
