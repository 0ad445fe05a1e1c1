"""Buffers of finished calls serve the next call (fastlstm._engine.SPARES):
what the kernels compute never depends on what such a buffer held, and a
training loop's steps run on the same memory each time."""
import numpy as np
import pytest

import fastlstm as fl
from fastlstm import _engine


@pytest.fixture
def spares():
    _engine.SPARES.clear()
    yield _engine.SPARES
    _engine.SPARES.clear()


def _weights(rng, inputs, units, dtype):
    return [(rng.standard_normal(shape) * 0.3).astype(dtype)
            for shape in ((inputs, 4 * units), (units, 4 * units), (4 * units,))]


def _problem(dtype, batch=5, timesteps=9, features=6, units=(11, 7)):
    rng = np.random.default_rng(3)
    x = rng.standard_normal((batch, timesteps, features)).astype(dtype)
    layers = [_weights(rng, i, u, dtype) for i, u in zip((features,) + units[:-1], units)]
    mask = rng.random((batch, timesteps)) > 0.3
    grad = rng.standard_normal((batch, timesteps, units[-1])).astype(dtype)
    return x, layers, mask, grad


def _run_all(x, layers, mask, grad):
    """Every call that draws on the spares: a single layer and a stack
    (layer by layer and pipelined), training and inference."""
    results = []
    kernel, recurrent_kernel, bias = layers[0]
    results += fl.lstm_forward(x, kernel, recurrent_kernel, bias, mask=mask,
                               return_cache=False)[:3]
    outputs, h, c, cache = fl.lstm_forward(x, kernel, recurrent_kernel, bias, mask=mask)
    grads = fl.lstm_backward(cache, grad_outputs=np.ones_like(outputs), grad_h=h)
    results += [outputs, h, c, *grads]
    for pipelined in (False, True):
        outputs, states, cache = fl.lstm_stack_forward(x, layers, mask=mask,
                                                       pipelined=pipelined)
        grads = fl.lstm_stack_backward(cache, grad)
        results += [outputs, *np.concatenate([s for pair in states for s in pair], axis=1),
                    grads.x, *[g for layer in grads.layers for g in layer if g is not None]]
        outputs, states, _ = fl.lstm_stack_forward(x, layers, mask=mask, pipelined=pipelined,
                                                   return_cache=False)
        results.append(outputs)
    return results


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_results_do_not_depend_on_what_a_spare_buffer_held(kernel_build, spares, monkeypatch,
                                                           dtype):
    problem = _problem(dtype)
    expected = _run_all(*problem)
    # Every buffer handed out full of NaN, as a kept buffer could hold
    # anything: a kernel reading one before writing it would spread the NaN.
    monkeypatch.setattr(spares, "empty", lambda shape, dtype: np.full(shape, np.nan, dtype))
    for result, reference in zip(_run_all(*problem), expected, strict=True):
        np.testing.assert_array_equal(result, reference)


def test_a_training_loop_runs_on_the_same_memory_each_step(spares):
    x, layers, mask, grad = _problem(np.float32)
    kernel, recurrent_kernel, bias = layers[0]
    addresses = []
    for _ in range(3):
        outputs, _, _, cache = fl.lstm_forward(x, kernel, recurrent_kernel, bias, mask=mask)
        addresses.append([a.ctypes.data for a in (cache.state.gates, cache.state.states,
                                                  cache.state.c_prev, cache.state.weights)])
        fl.lstm_backward(cache, grad_outputs=np.ones_like(outputs))
    assert addresses[1] == addresses[2]
    assert spares.nbytes > 0


def test_what_is_kept_stays_under_the_bound():
    spares = _engine.SpareBuffers(max_bytes=1000)
    spares.give(np.empty(100, np.float32), np.empty(100, np.float32), np.empty(10, np.float64))
    assert spares.nbytes <= 1000
    spares.give(np.empty(2000, np.uint8))       # larger than the bound: not kept
    assert spares.nbytes <= 1000
    kept = spares.empty((10,), np.float64)      # the last given is kept
    assert spares.nbytes <= 1000 - kept.nbytes


def test_views_are_not_kept():
    spares = _engine.SpareBuffers()
    whole = np.empty((4, 8))
    spares.give(whole[:2])
    assert spares.nbytes == 0
