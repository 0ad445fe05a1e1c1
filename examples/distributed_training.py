"""Training on several processes: the adding problem over MPI.

Each sample is a sequence of 20 steps with two features: a random number in
[0, 1), and a marker that is 1 at exactly two steps and 0 elsewhere. The
target is the sum of the two marked numbers, so the LSTM has to remember a
value across many steps and ignore the others:

    LSTM(32) -> Dense(1)

Every process (rank) makes the same data, trains on its share of it
(``distributed.shard``), and averages its gradients with the other ranks'
at every step (``DistributedOptimizer``); they start from rank 0's weights
(``BroadcastWeights``) and see the mean of their logs (``AverageMetrics``,
first among the callbacks), so EarlyStopping stops them all at the same
epoch. Only rank 0 prints and writes the checkpoint.

Target: a held-out mean squared error under 0.002 (predicting the mean sum,
1, scores about 0.17).

Run ``mpiexec -n 2 python examples/distributed_training.py`` (about 2 s on
an idle 2-core machine, longer when other programs keep the cores busy); it
also runs as one process. ``--quick`` trains a few steps only, as the tests
do.
"""
import argparse
import os
import sys
import tempfile
import time

import numpy as np

import fastlstm as fl
from fastlstm import distributed

TIMESTEPS = 20
TARGET_MSE = 0.002


def make_data(count, rng):
    """Sequences ``(count, TIMESTEPS, 2)`` and the sums of their two marked values."""
    values = rng.random((count, TIMESTEPS))
    markers = np.zeros((count, TIMESTEPS))
    for k in range(count):
        markers[k, rng.choice(TIMESTEPS, size=2, replace=False)] = 1.0
    x = np.stack([values, markers], axis=-1)
    y = (values * markers).sum(axis=1, keepdims=True)
    return x, y


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="train a few steps only (a smoke test, no quality target)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    from mpi4py import MPI

    comm = MPI.COMM_WORLD
    rank, ranks = comm.Get_rank(), comm.Get_size()
    # The ranks share the machine's cores.
    fl.set_num_threads(max(1, (os.cpu_count() or 1) // ranks))

    # Every rank draws the same samples, then keeps its share.
    rng = np.random.default_rng(args.seed)
    train_count, epochs = (256, 2) if args.quick else (6000, 20)
    x, y = make_data(train_count, rng)
    x_val, y_val = make_data(train_count // 5, rng)
    x_test, y_test = make_data(2000, rng)
    x, y = distributed.shard(x, y)
    x_val, y_val = distributed.shard(x_val, y_val)

    # Unseeded layers: each rank draws its own weights until BroadcastWeights
    # gives them all rank 0's. The model must be built for that.
    model = fl.Sequential([fl.LSTM(32), fl.Dense(1)], seed=args.seed)
    model.compile(optimizer=distributed.DistributedOptimizer(fl.optimizers.Adam(0.01)),
                  loss="mse")
    model.build((None, TIMESTEPS, 2))

    with tempfile.TemporaryDirectory() as directory:
        checkpoint = os.path.join(directory, "best.npz")
        callbacks = [distributed.BroadcastWeights(root=0), distributed.AverageMetrics(),
                     fl.callbacks.EarlyStopping(patience=3, restore_best_weights=True)]
        if rank == 0:
            callbacks.append(fl.callbacks.ModelCheckpoint(checkpoint, save_best_only=True))
        start = time.perf_counter()
        # 64 samples per step in all: 64 / ranks on each rank.
        history = model.fit(x, y, batch_size=64 // ranks, epochs=epochs,
                            validation_data=(x_val, y_val), callbacks=callbacks,
                            verbose=2 if rank == 0 else 0)
        elapsed = time.perf_counter() - start
        saved = os.path.exists(checkpoint)

    if rank != 0:
        return 0
    test_mse = model.evaluate(x_test, y_test, batch_size=500, verbose=0)
    print(f"\n{ranks} rank(s) trained {len(history.epoch)} epochs in {elapsed:.1f} s "
          f"({model.optimizer.allreduce_count} Allreduce calls, "
          f"{model.optimizer.allreduce_seconds:.2f} s in them); checkpoint written: {saved}; "
          f"held-out mean squared error {test_mse:.4f}")
    if args.quick:
        return 0
    reached = test_mse < TARGET_MSE
    print(f"target: held-out mean squared error < {TARGET_MSE}: "
          f"{'reached' if reached else 'NOT reached'}")
    return 0 if reached else 1


if __name__ == "__main__":
    sys.exit(main())
