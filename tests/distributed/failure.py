"""Ways a rank can fail while the others wait for it in a collective call;
each must end the whole job with the error. The test times the job.

    mpiexec -n 2 python failure.py exception      (rank 1 raises in its 3rd step)
    mpiexec -n 2 python failure.py uneven_steps   (rank 0 has one step more per epoch)
    mpiexec -n 2 python failure.py stop_alone     (a callback stops rank 1 in its 3rd step)
"""
import sys

import numpy as np
from mpi4py import MPI

import fastlstm as fl
from fastlstm import distributed


class FailOnRankOne(fl.callbacks.Callback):
    def on_train_batch_end(self, batch, logs=None):
        if MPI.COMM_WORLD.Get_rank() == 1 and batch == 2:
            raise ValueError("rank 1 fails on purpose at step 3")


class StopRankOne(fl.callbacks.Callback):
    def on_train_batch_end(self, batch, logs=None):
        if MPI.COMM_WORLD.Get_rank() == 1 and batch == 2:
            self.model.stop_training = True


def main():
    fl.set_num_threads(1)
    rng = np.random.default_rng(0)
    model = fl.Sequential([fl.LSTM(4, seed=0), fl.Dense(1, seed=1)], seed=0)
    model.compile(optimizer=distributed.DistributedOptimizer("adam"), loss="mse")
    if sys.argv[1] in ("exception", "stop_alone"):
        x, y = rng.standard_normal((64, 5, 2)), rng.standard_normal((64, 1))
        callbacks = ([FailOnRankOne()] if sys.argv[1] == "exception"
                     else [distributed.AverageMetrics(), StopRankOne()])
    else:
        # 17 samples: rank 0 gets 9 (two batches of 8), rank 1 gets 8 (one).
        x, y = rng.standard_normal((17, 5, 2)), rng.standard_normal((17, 1))
        callbacks = [distributed.AverageMetrics()]
    x, y = distributed.shard(x, y)
    model.fit(x, y, batch_size=8, epochs=50, verbose=0, callbacks=callbacks)


if __name__ == "__main__":
    main()
