"""Time an epoch of the character model on several ranks, or on one.

The model is the character model of ``python -m fastlstm bench --models``:
Embedding(64, 32) -> LSTM(256) -> LSTM(256) -> Dense(64), both LSTMs
returning sequences, sparse categorical cross-entropy from logits at every
step, Adam; 16 batches of 64 sequences of 100 steps per epoch, float32. On R
ranks each one trains on its shard with batches of 64 / R, so every epoch
makes the same 16 updates from the same 64-sequence batches. ::

    mpiexec -n 2 python docs/scripts/bench_distributed.py --threads 1
    python docs/scripts/bench_distributed.py --threads 2

Rank 0 prints the median epoch time over ``--epochs`` epochs (after one
warm-up epoch) and, on several ranks, the time spent in the gradients'
Allreduce (each rank's mean over the epochs; it includes waiting for the
slower rank) and its share of the epoch, then the time of one Allreduce of
all the gradients when the ranks enter it together.
"""
import argparse
import statistics
import time

import numpy as np

import fastlstm as fl
from fastlstm.tools.models import MODELS, data, fastlstm_model


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--epochs", type=int, default=3)
    args = parser.parse_args()
    fl.set_num_threads(args.threads)

    from mpi4py import MPI
    from fastlstm import distributed

    comm = MPI.COMM_WORLD
    ranks = comm.Get_size()
    _, batch, batches = MODELS["char"]
    x, y = distributed.shard(*data("char"))
    model = fastlstm_model("char")
    optimizer = model.optimizer
    if ranks > 1:
        optimizer = distributed.DistributedOptimizer(optimizer)
        model.compile(optimizer=optimizer, loss=model.loss)
    epochs, allreduce = [], []
    for epoch in range(args.epochs + 1):
        comm.Barrier()
        spent = getattr(optimizer, "allreduce_seconds", 0.0)
        started = time.perf_counter()
        model.fit(x, y, batch_size=batch // ranks, epochs=1, shuffle=False, verbose=0)
        comm.Barrier()
        if epoch:
            epochs.append(time.perf_counter() - started)
            allreduce.append(getattr(optimizer, "allreduce_seconds", 0.0) - spent)
    allreduce = comm.gather(statistics.mean(allreduce), root=0)
    # The Allreduce alone, the ranks entering it together: what the
    # communication costs without the waiting for a slower rank.
    gradients = np.zeros(model.count_params(), np.float32)
    comm.Barrier()
    started = time.perf_counter()
    for _ in range(20):
        comm.Allreduce(MPI.IN_PLACE, gradients, op=MPI.SUM)
    alone = (time.perf_counter() - started) / 20
    if comm.Get_rank() == 0:
        epoch_time = statistics.median(epochs)
        line = f"{ranks} rank(s) x {args.threads} thread(s): epoch {epoch_time:.2f} s"
        if ranks > 1:
            share = statistics.mean(allreduce) / epoch_time
            line += (f", Allreduce {statistics.mean(allreduce) * 1e3:.0f} ms per epoch "
                     f"({share:.1%}), {optimizer.allreduce_count} calls for "
                     f"{(args.epochs + 1) * batches} steps; alone {alone * 1e3:.2f} ms per "
                     f"call of {gradients.nbytes / 1e6:.1f} MB ({batches * alone / epoch_time:.2%}"
                     f" of an epoch)")
        print(line)


if __name__ == "__main__":
    main()
