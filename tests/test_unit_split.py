"""Passes split by units (each step's units shared among the threads) against
the batch split: the same bits, forward and backward, whatever the build,
dtype, thread count, mask, direction and input product, and a call that
finishes at one thread's speed when the pool's worker cannot run."""
import dataclasses
import multiprocessing
import os
import time

import numpy as np
import pytest

import fastlstm
from fastlstm import _pool
from test_fast_kernel import make_problem

pytestmark = pytest.mark.skipif(not _pool.threaded(), reason="built without a thread pool")


@pytest.fixture
def forced_split(monkeypatch):
    """A function that sets how the next forward and backward passes split
    their steps (``split_units``: True by units) and, if given, whether the
    forward pass hoists its input product, on the thread count set, however
    small the call."""
    monkeypatch.setattr(fastlstm._plan, "PARALLEL_MIN_FLOPS", 0)
    plan = fastlstm._plan.forward_plan
    choice = {}

    def forced(*shape):
        return dataclasses.replace(plan(*shape), **choice)

    monkeypatch.setattr(fastlstm._plan, "forward_plan", forced)
    monkeypatch.setattr(fastlstm._plan, "split_units", lambda *args: choice["split_units"])
    yield lambda **fields: choice.update(fields)
    fastlstm.set_num_threads(None)


def _masked_at_start_middle_and_end(batch, timesteps):
    """Row 0 masked at its first steps, row 1 in the middle, row 2 at its
    last steps, further rows at random."""
    mask = np.random.default_rng(5).random((batch, timesteps)) < 0.7
    mask[:3] = True
    mask[0, :2] = mask[1 % batch, 3:5] = mask[2 % batch, -2:] = False
    return mask


def _forward_and_backward(forward, backward, training, go_backwards):
    """Outputs and states, and when training what the backward pass reads
    and its gradients (the backward pass split as the forward pass was)."""
    outputs, h, c, cache = fastlstm.lstm_forward(**forward, go_backwards=go_backwards,
                                                 return_cache=training)
    results = {"outputs": outputs, "h": h, "c": c}
    if training:
        record = cache.state
        results.update(gates=record.gates.copy(), states=record.states.copy(),
                       c_prev=record.c_prev.copy())
        grads = fastlstm.lstm_backward(cache, **backward)
        results.update({f"grad_{name}": value for name, value in grads._asdict().items()})
    return results


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("hoist", [True, False], ids=["hoisted", "per step"])
@pytest.mark.parametrize("training", [True, False], ids=["training", "inference"])
@pytest.mark.parametrize("go_backwards", [False, True])
@pytest.mark.parametrize("batch, mask", [(1, None), (3, "edges"), (4, "edges")])
def test_unit_split_gives_the_bits_of_the_batch_split(kernel_build, forced_split, dtype,
                                                      threads, hoist, training, go_backwards,
                                                      batch, mask):
    """140 units make nine gate panels of AVX-512's float32 lanes and
    three column panels of the backward product (the last of each partial),
    and more of narrower vectors: every block count the threads share, with
    recurrent dropout."""
    fastlstm.set_num_threads(threads)
    timesteps = 9
    if mask == "edges":
        mask = _masked_at_start_middle_and_end(batch, timesteps)
    forward, backward = make_problem(batch, timesteps, 5, 140, dtype, mask=mask,
                                     dropout=True)
    results = []
    for split_units in (False, True):
        forced_split(split_units=split_units, hoist=hoist)
        results.append(_forward_and_backward(forward, backward, training, go_backwards))
    batch_split, unit_split = results
    for name, want in batch_split.items():
        np.testing.assert_array_equal(unit_split[name], want, err_msg=name)


@pytest.mark.parametrize("activation, recurrent_activation",
                         [("tanh", "hard_sigmoid"), ("sigmoid", "tanh")])
def test_unit_split_gives_the_bits_of_the_batch_split_for_other_activations(
        forced_split, activation, recurrent_activation):
    fastlstm.set_num_threads(2)
    forward, _ = make_problem(2, 6, 4, 70, np.float32, mask="random", dropout=True)
    results = []
    for split_units in (False, True):
        forced_split(split_units=split_units)
        results.append(fastlstm.lstm_forward(**forward, activation=activation,
                                             recurrent_activation=recurrent_activation,
                                             return_cache=False)[:3])
    for got, want in zip(*results):
        np.testing.assert_array_equal(got, want)


def test_the_planner_splits_units_for_few_rows_of_many_units():
    """The bench's one (B=1) and few (B=4) of 256 units on two threads split
    by units; eight rows, or four rows of 64 units, by batch."""
    split = fastlstm._plan.split_units
    assert split(1, 256, 2) and split(4, 256, 2) and split(4, 128, 2) and split(1, 64, 2)
    assert not split(8, 512, 2)
    assert not split(4, 64, 2)
    assert not split(1, 256, 1)


def _timed_on_one_core(queue):
    """In a child pinned to one core: a call split by units on two threads,
    whose worker runs only when the caller gives the core up, against the
    batch split's bits and one thread's time (best of five calls each)."""
    os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    plan = fastlstm._plan.forward_plan
    forward, _ = make_problem(1, 64, 32, 256, np.float32)
    seconds, results = {}, {}
    for threads, split_units in ((1, False), (2, True)):
        fastlstm._plan.forward_plan = lambda *shape, s=split_units: dataclasses.replace(
            plan(*shape), split_units=s)
        fastlstm.set_num_threads(threads)
        times = []
        for _ in range(5):
            start = time.perf_counter()
            results[threads] = fastlstm.lstm_forward(**forward, return_cache=False)[0]
            times.append(time.perf_counter() - start)
        seconds[threads] = min(times)
    queue.put((seconds, np.array_equal(results[1], results[2])))


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="needs sched_setaffinity")
def test_unit_split_with_a_worker_that_cannot_run_finishes_at_one_threads_speed():
    """Pinned to one core, the worker runs only when the caller yields: the
    caller must run the steps itself rather than wait for the worker at
    each of the 64 steps (a scheduler time slice, milliseconds, each)."""
    # A new interpreter: forking a process whose other tests started threads
    # (JAX's) may leave the child a lock no thread will release.
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    child = context.Process(target=_timed_on_one_core, args=(queue,))
    child.start()
    seconds, same = queue.get(timeout=120)
    child.join(timeout=60)
    assert same
    # One thread's call takes about a millisecond; waiting a time slice at
    # each step would take tens.
    assert seconds[2] < 3 * seconds[1] + 0.002, seconds
