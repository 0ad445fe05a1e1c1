"""Threads, memory and long-sequence numerics of the fast kernels."""
import sys
import threading

import numpy as np
import pytest

import fastlstm as fl


def make_problem(batch, timesteps, input_dim, units, dtype=np.float64, seed=0):
    rng = np.random.default_rng(seed)
    return {
        "x": rng.standard_normal((batch, timesteps, input_dim)).astype(dtype),
        "kernel": (rng.standard_normal((input_dim, 4 * units)) / np.sqrt(input_dim)).astype(dtype),
        "recurrent_kernel": (rng.standard_normal((units, 4 * units)) / np.sqrt(units)).astype(dtype),
        "bias": (0.1 * rng.standard_normal(4 * units)).astype(dtype),
        "mask": rng.random((batch, timesteps)) < 0.8,
        "grad_outputs": rng.standard_normal((batch, timesteps, units)).astype(dtype),
    }


def train_step(problem):
    outputs, h, c, cache = fl.lstm_forward(
        problem["x"], problem["kernel"], problem["recurrent_kernel"], problem["bias"],
        mask=problem["mask"])
    grads = fl.lstm_backward(cache, problem["grad_outputs"], grad_h=h, grad_c=c)
    return (outputs, h, c) + tuple(grads)


def read_only(problem):
    for array in problem.values():
        array.flags.writeable = False
    return problem


@pytest.mark.parametrize("shared_weights", [False, True], ids=["separate", "shared_read_only"])
def test_concurrent_python_threads_give_the_serial_results(shared_weights):
    workers = 6
    shared = read_only(make_problem(5, 30, 7, 16, seed=99))
    problems = []
    for seed in range(workers):
        problem = make_problem(5, 30, 7, 16, seed=seed)
        if shared_weights:
            for name in ("kernel", "recurrent_kernel", "bias"):
                problem[name] = shared[name]
        problems.append(problem)
    serial = [train_step(problem) for problem in problems]

    results = [None] * workers
    errors = []
    start = threading.Barrier(workers)

    def work(index):
        try:
            start.wait()
            for _ in range(5):
                results[index] = train_step(problems[index])
        except Exception as error:  # reported below, with the thread's index
            errors.append((index, error))

    threads = [threading.Thread(target=work, args=(index,)) for index in range(workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    for expected, got in zip(serial, results):
        for expected_array, got_array in zip(expected, got):
            np.testing.assert_array_equal(got_array, expected_array)


def test_blas_thread_count_is_restored_after_concurrent_calls():
    from fastlstm import _config

    info = _config._openblas()
    if not info:
        pytest.skip("SciPy's BLAS is not OpenBLAS: fastlstm does not change its threads")
    before = info["get_num_threads"]()
    test_concurrent_python_threads_give_the_serial_results(shared_weights=True)
    assert info["get_num_threads"]() == before


def _resident_bytes():
    with open("/proc/self/statm") as statm:
        resident_pages = int(statm.read().split()[1])
    import resource

    return resident_pages * resource.getpagesize()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/statm")
def test_many_training_steps_keep_resident_memory_flat():
    problem = make_problem(8, 20, 16, 32, dtype=np.float32)
    for _ in range(200):  # warm up allocator pools and caches
        train_step(problem)
    before = _resident_bytes()
    calls = 3000
    for _ in range(calls):
        train_step(problem)
    grown = _resident_bytes() - before
    # One step allocates about 60 KiB; a leak of even one buffer per call
    # would add ~30 MiB over these calls.
    assert grown < 8 * 2**20, f"resident memory grew by {grown / 2**20:.1f} MiB over {calls} calls"


def test_float32_stays_close_to_float64_over_a_thousand_steps():
    problem64 = make_problem(4, 1000, 8, 32, dtype=np.float64, seed=3)
    problem32 = {name: (value.astype(np.float32) if value.dtype == np.float64 else value)
                 for name, value in problem64.items()}
    result64 = train_step(problem64)
    result32 = train_step(problem32)
    for name, low, high in zip(("outputs", "h", "c") + fl.LSTMGradients._fields,
                               result32, result64):
        assert low.dtype == np.float32
        error = np.abs(low - high).max() / np.abs(high).max()
        assert error < 1e-4, f"{name}: float32 differs from float64 by {error:.2e} relative"


def test_kernels_restore_the_callers_denormal_handling():
    problem = make_problem(2, 5, 3, 4, dtype=np.float32)
    train_step(problem)
    tiny = np.float32(1e-38)
    # With flush-to-zero left on, this product would be 0.
    assert tiny * np.float32(0.5) > 0


def test_denormal_inputs_and_states_give_the_float64_result():
    problem = make_problem(3, 40, 4, 8, dtype=np.float32, seed=5)
    problem["x"] = (problem["x"] * 1e-39).astype(np.float32)
    problem["bias"] = np.full_like(problem["bias"], -30.0)
    fast = train_step(problem)
    problem64 = {name: (value.astype(np.float64) if value.dtype == np.float32 else value)
                 for name, value in problem.items()}
    outputs, h, c, cache = fl.lstm_forward(
        problem64["x"], problem64["kernel"], problem64["recurrent_kernel"], problem64["bias"],
        mask=problem64["mask"], backend="reference")
    exact = (outputs, h, c) + tuple(
        fl.lstm_backward(cache, problem64["grad_outputs"], grad_h=h, grad_c=c))
    for got, expected in zip(fast, exact):
        assert np.all(np.isfinite(got))
        # Every value here is below 1e-12 (the gates sit at sigmoid(-30)); values of
        # the size of denormals are flushed to zero, far inside this tolerance.
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-20)


def _broadcast_input(batch, timesteps, input_dim):
    """A huge x that takes no memory: one float32 zero seen at every index."""
    return np.lib.stride_tricks.as_strided(np.zeros(1, np.float32),
                                           (batch, timesteps, input_dim), (0, 0, 0))


def test_sizes_beyond_blas_32_bit_indices_are_a_value_error():
    x = _broadcast_input(2**16, 2**16, 1)            # batch * timesteps = 2**32 rows
    kernel = np.zeros((1, 8), np.float32)
    recurrent_kernel = np.zeros((2, 8), np.float32)
    with pytest.raises(ValueError, match=r"batch \* timesteps = 4294967296 is too large"):
        fl.lstm_forward(x, kernel, recurrent_kernel, None)


def test_workspace_larger_than_memory_is_a_memory_error_naming_its_size():
    x = _broadcast_input(2**13, 2**13, 1)            # 2**26 steps: indices fit
    kernel = np.zeros((1, 4096), np.float32)          # units = 1024
    recurrent_kernel = np.zeros((1024, 4096), np.float32)
    needed = fl.workspace_nbytes(2**13, 2**13, 1, 1024)
    assert needed > 2**40                             # more than any machine's memory
    with pytest.raises(MemoryError, match=r"lstm_forward needs \d+\.\d GiB of workspace "
                                          r"for x of shape \(8192, 8192, 1\) and units=1024"):
        fl.lstm_forward(x, kernel, recurrent_kernel, None)
