"""Data-parallel training over MPI and the seed search.

The multi-process tests launch the scripts of tests/distributed/ with
``mpiexec -n 2`` and check what they report: two ranks fitting their shards
train exactly as one process on all the samples with twice the batch,
weights are broadcast, failures end the whole job quickly, and every step
makes one Allreduce.
"""
import json
import pickle
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import fastlstm as fl
from launch import mpiexec, package_environment

pytest.importorskip("mpi4py", reason="distributed training needs mpi4py (the mpi extra)")
from fastlstm import distributed  # noqa: E402

SCRIPTS = Path(__file__).resolve().parent / "distributed"
RANKS = 2


def run_script(name, *args, ranks=RANKS, timeout=120, folder=SCRIPTS):
    command = [sys.executable, str(folder / name), *map(str, args)]
    if ranks:
        command = [mpiexec(), "-n", str(ranks)] + command
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout,
                          env=package_environment())


@pytest.fixture(scope="module")
def equivalence(tmp_path_factory):
    folder = tmp_path_factory.mktemp("equivalence")
    results = {}
    for label, args, ranks in (("ranks", [folder / "ranks.pkl"], RANKS),
                               ("single", ["--single", RANKS, folder / "single.pkl"], 0)):
        result = run_script("equivalence.py", *args, ranks=ranks)
        assert result.returncode == 0, result.stderr
        with open(folder / f"{label}.pkl", "rb") as stream:
            results[label] = pickle.load(stream)
    return results


CASES = ["sgd_clipnorm_float64", "adam_global_clipnorm_float64", "rmsprop_float64",
         "rmsprop_embedding_mask_float64", "adamw_float64", "adam_float32"]


@pytest.mark.slow
@pytest.mark.parametrize("case", CASES)
def test_two_ranks_train_as_one_process_with_twice_the_batch(equivalence, case):
    ranks, single = equivalence["ranks"][case], equivalence["single"][case]
    # float32 rounds each rank's half-batch sum and their mean differently
    # from one sum over the whole batch: about one unit in the last place
    # per step, compounding over 21 steps.
    tolerance = 1e-5 if case.endswith("float32") else 1e-12
    assert len(ranks["weights"]) == len(single["weights"])
    for got, expected in zip(ranks["weights"], single["weights"]):
        np.testing.assert_allclose(got, expected, rtol=0, atol=tolerance)
    assert sorted(ranks["history"]) == sorted(single["history"])
    assert any(key.startswith("val_") for key in single["history"])
    for key, expected in single["history"].items():
        np.testing.assert_allclose(ranks["history"][key], expected, rtol=0, atol=tolerance)
    assert ranks["ranks_identical"]


@pytest.mark.slow
def test_one_allreduce_per_step(equivalence):
    for case in CASES:
        result = equivalence["ranks"][case]
        assert result["allreduce_count"] == 3 * result["steps"] == 21


def test_weights_differ_before_broadcast_and_match_after():
    result = run_script("broadcast.py")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.splitlines()[-1])
    assert report == {"identical_before": False, "identical_after": True,
                      "after_is_rank_0s_before": True, "callback_gives_rank_0s": True}


def test_early_stopping_stops_every_rank_at_once_and_only_rank_0_writes(tmp_path):
    result = run_script("early_stopping.py", tmp_path)
    assert result.returncode == 0, result.stderr
    every_rank = json.loads(result.stdout.splitlines()[-1])
    # Each rank validates on its own share, so their own losses differ...
    assert every_rank[0]["own_val_loss"] != every_rank[1]["own_val_loss"]
    # ...but they see the mean, so they record and decide the same.
    assert every_rank[0]["history"] == every_rank[1]["history"]
    # Dropout draws other masks on each rank; the averaged update is the same.
    assert every_rank[0]["weights"] == every_rank[1]["weights"]
    epochs = len(every_rank[0]["history"]["loss"])
    assert 1 < epochs < 40
    assert every_rank[0]["stopped_epoch"] == every_rank[1]["stopped_epoch"] == epochs - 1
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        f"epoch-{k:02d}.npz" for k in range(1, epochs + 1)]
    assert result.stdout.count("Epoch 1/40") == 1


@pytest.mark.parametrize("mode, message", [
    ("exception", "ValueError: rank 1 fails on purpose at step 3"),
    ("uneven_steps", "every rank must run the same number of steps per epoch"),
    ("stop_alone", "rank 0 is at step 4 of epoch 1, rank 1 is at the end of epoch 1"),
])
def test_a_failing_rank_ends_the_whole_job_quickly(mode, message):
    started = time.perf_counter()
    result = run_script("failure.py", mode, timeout=60)
    elapsed = time.perf_counter() - started
    assert result.returncode != 0
    assert message in result.stderr
    # Starting two Python processes with fastlstm takes about a second.
    assert elapsed < 10


@pytest.mark.parametrize("ranks", [1, 2])
def test_the_abort_handler_is_installed_by_first_use_not_by_import(ranks):
    """Importing the module leaves sys.excepthook alone; the first
    DistributedOptimizer replaces it in a job of several ranks only."""
    result = run_script("excepthook.py", ranks=ranks, timeout=60)
    assert result.returncode == 0, result.stderr
    reports = json.loads(result.stdout)
    assert reports == [{"unchanged_after_import": True, "unchanged_after_use": ranks == 1}] * ranks


def test_the_example_trains_on_two_ranks():
    result = run_script("distributed_training.py", "--quick",
                        folder=SCRIPTS.parent.parent / "examples")
    assert result.returncode == 0, result.stderr
    assert "2 rank(s) trained 2 epochs" in result.stdout
    assert "checkpoint written: True" in result.stdout


def test_importing_fastlstm_imports_neither_mpi4py_nor_joblib():
    code = ("import sys, fastlstm; "
            "print(sorted({'mpi4py', 'joblib'} & set(sys.modules)))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            env=package_environment(), timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_without_mpi4py_the_import_error_says_what_to_install():
    code = ("import sys; sys.modules['mpi4py'] = None\n"
            "try:\n    import fastlstm.distributed\n"
            "except ImportError as error:\n    print(error)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            env=package_environment(), timeout=60)
    assert 'pip install "fastlstm[mpi]"' in result.stdout


# On one process (a communicator of one rank), in this process.

def test_shard_on_one_rank_is_everything_and_checks_its_arguments():
    x, y = np.arange(10.0).reshape(5, 2), np.arange(5)
    x_share, y_share = distributed.shard(x, y)
    assert np.shares_memory(x_share, x)
    assert np.array_equal(x_share, x) and np.array_equal(y_share, y)
    with pytest.raises(ValueError, match="same number of samples"):
        distributed.shard(x, y[:4])
    with pytest.raises(TypeError, match="x must be an ndarray"):
        distributed.shard([1, 2, 3])
    with pytest.raises(TypeError, match="comm must be an mpi4py"):
        distributed.shard(x, y, comm="world")


def test_distributed_optimizer_checks_its_arguments():
    with pytest.raises(ValueError, match="average every gradient twice"):
        distributed.DistributedOptimizer(distributed.DistributedOptimizer("sgd"))
    optimizer = distributed.DistributedOptimizer(fl.optimizers.SGD(0.1))
    weight = np.zeros(3)
    with pytest.raises(ValueError, match=r"grads\[0\] must have its variable's shape"):
        optimizer.apply([np.zeros(2)], [weight])
    with pytest.raises(RuntimeError, match="not built"):
        optimizer.apply([np.zeros(3)])
    assert optimizer.allreduce_count == 0


def test_distributed_optimizer_applies_as_the_wrapped_one_on_one_rank():
    rng = np.random.default_rng(0)
    grads = [rng.standard_normal((3, 4)), None, rng.standard_normal(5)]
    plain_variables = [rng.standard_normal((3, 4)), rng.standard_normal(2),
                       rng.standard_normal(5)]
    wrapped_variables = [v.copy() for v in plain_variables]
    plain = fl.optimizers.Adam(0.1, global_clipnorm=0.5)
    wrapped = distributed.DistributedOptimizer(fl.optimizers.Adam(0.1, global_clipnorm=0.5))
    originals = [None if g is None else g.copy() for g in grads]
    for _ in range(3):
        plain.apply(grads, plain_variables)
        wrapped.apply(grads, wrapped_variables)
    for got, expected in zip(wrapped_variables, plain_variables):
        np.testing.assert_array_equal(got, expected)
    assert wrapped.iterations == 3 and wrapped.allreduce_count == 3
    for gradient, original in zip(grads, originals):
        assert (gradient is None) == (original is None)
        if gradient is not None:
            np.testing.assert_array_equal(gradient, original)


def test_distributed_optimizer_learning_rate_is_the_wrapped_one():
    optimizer = distributed.DistributedOptimizer(fl.optimizers.SGD(0.1))
    optimizer.learning_rate = 0.05
    assert optimizer.optimizer.learning_rate == optimizer.learning_rate == 0.05
    with pytest.raises(ValueError, match="learning_rate must be in"):
        optimizer.learning_rate = -1.0


def test_broadcast_weights_needs_a_built_model():
    with pytest.raises(RuntimeError, match="no weights yet"):
        distributed.broadcast_weights(fl.Sequential([fl.LSTM(2)]))
    with pytest.raises(ValueError, match=r"root must be a rank in \[0, 1\)"):
        distributed.BroadcastWeights(root=1)


# The seed search.

def _build(seed):
    model = fl.Sequential([fl.LSTM(6, seed=seed, dtype="float64"),
                           fl.Dense(1, seed=seed, dtype="float64")], seed=seed)
    model.compile(optimizer=fl.optimizers.Adam(0.02), loss="mse")
    return model


@pytest.mark.slow
def test_search_seeds_ranks_the_same_with_one_or_two_processes():
    pytest.importorskip("joblib", reason="the seed search needs joblib (the mpi extra)")
    rng = np.random.default_rng(0)
    x = rng.standard_normal((80, 6, 2))
    y = x[:, :, 0].sum(axis=1, keepdims=True)
    seeds = [3, 1, 4, 5]
    one = fl.search_seeds(_build, seeds, x, y, validation_split=0.25, n_jobs=1,
                          batch_size=16, epochs=3)
    two = fl.search_seeds(_build, seeds, x, y, validation_split=0.25, n_jobs=2,
                          batch_size=16, epochs=3)
    assert sorted(r.seed for r in one) == sorted(seeds)
    assert [r.seed for r in one] == [r.seed for r in two]
    losses = [r.val_loss for r in one]
    assert losses == sorted(losses) and len(set(losses)) == len(seeds)
    # Thread counts differ (2 in one process, 1 in each of two), which may
    # change the order of a few sums.
    np.testing.assert_allclose(losses, [r.val_loss for r in two], rtol=1e-10)
    best = one[0]
    assert len(best.history.history["val_loss"]) == 3
    assert best.model.evaluate(x[60:], y[60:], batch_size=16, verbose=0) == best.val_loss


def test_search_seeds_checks_its_arguments():
    x, y = np.zeros((8, 3, 2)), np.zeros((8, 1))
    with pytest.raises(ValueError, match="validation_split must be in"):
        fl.search_seeds(_build, [0, 1], x, y)
    with pytest.raises(ValueError, match="seeds must be distinct"):
        fl.search_seeds(_build, [0, 0], x, y, validation_split=0.5)
    with pytest.raises(TypeError, match="seeds must be a list"):
        fl.search_seeds(_build, 3, x, y, validation_split=0.5)
