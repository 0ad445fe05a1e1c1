"""fastlstm's thread pool (fastlstm/_fl_pool.h): the kernels' results on one
and two threads, in a process forked after the pool started, from several
Python threads at once, and after set_num_threads grows and shrinks the pool.
"""
import multiprocessing
import threading

import numpy as np
import pytest

import fastlstm
from fastlstm import _pool
from test_fast_kernel import RESULT_NAMES, make_problem, run

pytestmark = pytest.mark.skipif(not _pool.threaded(), reason="built without a thread pool")


@pytest.fixture
def any_size_on_threads(monkeypatch):
    """Every call on the thread count set, however small."""
    monkeypatch.setattr(fastlstm._plan, "PARALLEL_MIN_FLOPS", 0)
    yield
    fastlstm.set_num_threads(None)


def _single_layer(threads, seed=0):
    """Forward and backward of one layer, the batch of 6 split in two; all
    but grad_x, which is apart: its product goes to BLAS one batch chunk
    per thread, and OpenBLAS rounds a row of a product of fewer rows
    differently (on one thread as before the pool)."""
    fastlstm.set_num_threads(threads)
    forward, backward = make_problem(6, 7, 5, 9, np.float64, seed=seed, mask="random",
                                     dropout=True)
    results = dict(zip(RESULT_NAMES, run(forward, backward)))
    return [results[name] for name in RESULT_NAMES if name != "grad_x"], results["grad_x"]


def _stack(threads, seed=0):
    """Forward and backward of a pipelined stack of three layers: on two
    threads a layer waits for the one below (above, backward) on the other."""
    fastlstm.set_num_threads(threads)
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((4, 9, 5))
    layers, inputs = [], 5
    for units in (7, 6, 8):
        scale = 1 / np.sqrt(inputs + units)
        layers.append((rng.standard_normal((inputs, 4 * units)) * scale,
                       rng.standard_normal((units, 4 * units)) * scale,
                       rng.standard_normal(4 * units) * 0.1))
        inputs = units
    outputs, states, cache = fastlstm.lstm_stack_forward(x, layers, pipelined=True)
    grads = fastlstm.lstm_stack_backward(cache, grad_outputs=np.ones_like(outputs))
    return [outputs] + [s for pair in states for s in pair] + _flatten(grads)


def _flatten(value):
    if isinstance(value, np.ndarray):
        return [value]
    if value is None:
        return []
    return [array for item in value for array in _flatten(item)]


def _optimizer_step(threads):
    """Two Adam steps on a variable long enough to split among the threads."""
    fastlstm.set_num_threads(threads)
    rng = np.random.default_rng(3)
    variables = [rng.standard_normal(1000)]
    optimizer = fastlstm.optimizers.Adam(0.01)
    for _ in range(2):
        optimizer.apply([rng.standard_normal(1000)], variables)
    return variables


def _all_kernels(threads):
    """Every kernel's results that the thread count leaves bit for bit."""
    return _single_layer(threads)[0] + _stack(threads) + _optimizer_step(threads)


def _assert_same_bits(got, want):
    assert len(got) == len(want)
    for a, b in zip(got, want):
        np.testing.assert_array_equal(a, b)


def test_a_worker_runs_blocks_beside_the_caller(any_size_on_threads):
    """Block 0 of a job waits for block 1 to start: only a worker can start
    it, the caller being busy with block 0."""
    fastlstm.set_num_threads(2)
    assert _pool._blocks_overlap(2, patience=5.0)
    assert not _pool._blocks_overlap(1, patience=0.01)


def test_every_kernel_gives_the_same_bits_on_one_and_two_threads(any_size_on_threads):
    one = _all_kernels(1)
    two = _all_kernels(2)
    assert _pool.workers() == 1
    _assert_same_bits(two, one)
    np.testing.assert_allclose(_single_layer(2)[1], _single_layer(1)[1], rtol=0, atol=1e-14)


def _in_child(queue):
    # The parent's workers are not in the child: it starts without any, and
    # makes its own, which set_num_threads then stops (joins).
    before = _pool.workers()
    results = _all_kernels(2)
    after = _pool.workers()
    fastlstm.set_num_threads(1)
    queue.put((before, after, _pool.workers(), results))


def test_a_process_forked_after_the_pool_started_runs_the_kernels(any_size_on_threads):
    parent = _all_kernels(2)
    assert _pool.workers() == 1
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    child = context.Process(target=_in_child, args=(queue,))
    child.start()
    try:
        before, after, stopped, got = queue.get(timeout=120)
    finally:
        child.join(timeout=30)
        if child.is_alive():
            child.kill()
    assert child.exitcode == 0
    assert (before, after, stopped) == (0, 1, 0)
    _assert_same_bits(got, parent)


def test_python_threads_calling_the_kernels_at_once_get_their_own_results(
        any_size_on_threads):
    """While one call has the pool, another runs its blocks itself: every
    call of every thread gives the bits of a call made alone."""
    want = {seed: _single_layer(2, seed)[0] + _stack(2, seed) for seed in range(4)}
    fastlstm.set_num_threads(2)
    results, errors = {}, []

    def work(seed):
        try:
            for _ in range(5):
                fastlstm.set_num_threads(2)
                got = _single_layer(2, seed)[0] + _stack(2, seed)
                _assert_same_bits(got, want[seed])
            results[seed] = True
        except Exception as error:  # reported below, with the seed
            errors.append((seed, error))

    threads = [threading.Thread(target=work, args=(seed,)) for seed in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    assert not any(thread.is_alive() for thread in threads)
    assert not errors, errors
    assert sorted(results) == [0, 1, 2, 3]


def test_set_num_threads_grows_and_shrinks_the_pool(any_size_on_threads):
    want = _all_kernels(1)
    assert _pool.workers() == 0
    for threads, workers in ((3, 2), (2, 1), (4, 3), (1, 0), (2, 1)):
        got = _all_kernels(threads)
        # To rounding: on 3 and 4 threads the stack's batch of 4 splits
        # into chunks of other sizes for BLAS's input-gradient product.
        for a, b in zip(got, want):
            np.testing.assert_allclose(a, b, rtol=1e-13, atol=1e-15)
        assert _pool.workers() == workers, threads
    fastlstm.set_num_threads(1)
    assert _pool.workers() == 0
