"""Each rank validates on its own share, so its own val_loss differs from
the others'; with AverageMetrics first, EarlyStopping sees the mean on every
rank and stops every rank at the same epoch (and restores the same best
weights). Only rank 0 has the
ModelCheckpoint and the progress bar. Rank 0 prints a JSON line last.

    mpiexec -n 2 python early_stopping.py CHECKPOINT_DIR
"""
import json
import os
import sys

import numpy as np
from mpi4py import MPI

import fastlstm as fl
from fastlstm import distributed


def main():
    fl.set_num_threads(1)
    comm = MPI.COMM_WORLD
    rank = comm.Get_rank()
    rng = np.random.default_rng(0)
    x = rng.standard_normal((160, 5, 2))
    y = x[:, :, 0].sum(axis=1, keepdims=True) + rng.standard_normal((160, 1))
    x_train, y_train = distributed.shard(x[:96], y[:96])
    x_val, y_val = distributed.shard(x[96:], y[96:])
    model = fl.Sequential([fl.LSTM(8, seed=0), fl.Dropout(0.1, seed=2), fl.Dense(1, seed=1)],
                          seed=0)
    model.compile(optimizer=distributed.DistributedOptimizer(fl.optimizers.Adam(0.05)),
                  loss="mse")
    stopping = fl.callbacks.EarlyStopping(patience=1, min_delta=0.05, restore_best_weights=True)
    callbacks = [distributed.AverageMetrics(), stopping]
    if rank == 0:
        callbacks.append(fl.callbacks.ModelCheckpoint(
            os.path.join(sys.argv[1], "epoch-{epoch:02d}.npz")))
    history = model.fit(x_train, y_train, batch_size=8, epochs=40,
                        validation_data=(x_val, y_val), verbose=2 if rank == 0 else 0,
                        callbacks=callbacks)
    own_val_loss = model.evaluate(x_val, y_val, verbose=0)
    every_rank = comm.gather({"history": history.history, "stopped_epoch": stopping.stopped_epoch,
                              "own_val_loss": own_val_loss,
                              "weights": [w.tolist() for w in model.get_weights()]}, root=0)
    if rank == 0:
        print(json.dumps(every_rank))


if __name__ == "__main__":
    main()
