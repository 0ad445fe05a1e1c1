"""Unseeded models draw different weights on each rank; broadcast_weights and
the BroadcastWeights callback make them rank 0's. Rank 0 prints a JSON line.

    mpiexec -n 2 python broadcast.py
"""
import json

import numpy as np
from mpi4py import MPI

import fastlstm as fl
from fastlstm import distributed


def identical(every_rank):
    return all(all(np.array_equal(a, b) for a, b in zip(weights, every_rank[0]))
               for weights in every_rank)


def main():
    fl.set_num_threads(1)
    comm = MPI.COMM_WORLD
    model = fl.Sequential([fl.LSTM(4), fl.Dense(1)])
    model.build((None, 5, 2))
    before = comm.allgather(model.get_weights())
    distributed.broadcast_weights(model)
    after = comm.allgather(model.get_weights())

    # With a learning rate of 0, fit leaves the weights BroadcastWeights set.
    fitted = fl.Sequential([fl.LSTM(4), fl.Dense(1)])
    fitted.build((None, 5, 2))
    root_weights = comm.bcast(fitted.get_weights(), root=0)
    fitted.compile(optimizer=distributed.DistributedOptimizer(fl.optimizers.SGD(0.0)),
                   loss="mse")
    rng = np.random.default_rng(comm.Get_rank())
    fitted.fit(rng.standard_normal((16, 5, 2)), rng.standard_normal((16, 1)), batch_size=8,
               verbose=0, callbacks=[distributed.BroadcastWeights()])
    fitted_weights = comm.allgather(fitted.get_weights())
    if comm.Get_rank() == 0:
        print(json.dumps({
            "identical_before": identical(before),
            "identical_after": identical(after),
            "after_is_rank_0s_before": identical([before[0], after[0]]),
            "callback_gives_rank_0s": identical(fitted_weights + [root_weights]),
        }))


if __name__ == "__main__":
    main()
