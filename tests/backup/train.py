"""A fit with every kind of state a backup must bring back: shuffling,
dropout and recurrent dropout, a Dropout layer, Adam, ReduceLROnPlateau,
EarlyStopping restoring the best weights, a best-only ModelCheckpoint and a
CSVLogger, in float64 on one thread. test_backup.py kills it and starts it
again until it finishes; it then writes what it ended with to OUTPUT.

    python train.py FOLDER OUTPUT [--backup] [--save-freq N] [--kill-after K SECONDS]
    mpiexec -n 2 python train.py FOLDER OUTPUT --mpi [--kill-rank R] ...

--kill-after K SECONDS sends SIGKILL to the process (under MPI, to rank R
alone) SECONDS after the end of its K-th batch, from another thread, so
that the kill lands wherever fit is then: in a batch, in a callback, in
the middle of writing a backup. Without --backup, fit runs without
BackupAndRestore (the uninterrupted reference).
"""
import argparse
import os
import pickle
import signal
import threading

import numpy as np

import fastlstm as fl
from fastlstm import callbacks


def arguments():
    parser = argparse.ArgumentParser()
    parser.add_argument("folder")
    parser.add_argument("output")
    parser.add_argument("--save-freq", default="epoch")
    parser.add_argument("--kill-after", nargs=2, type=float)
    parser.add_argument("--kill-rank", type=int, default=0)
    parser.add_argument("--mpi", action="store_true")
    parser.add_argument("--backup", action="store_true")
    return parser.parse_args()


class KillAfter(callbacks.Callback):
    """SIGKILL this process ``seconds`` after the end of its ``batches``-th batch."""

    def __init__(self, batches, seconds):
        super().__init__()
        self.batches, self.seconds = int(batches), seconds
        self.seen = 0

    def on_train_batch_end(self, batch, logs=None):
        self.seen += 1
        if self.seen == self.batches:
            timer = threading.Timer(self.seconds, os.kill, (os.getpid(), signal.SIGKILL))
            timer.daemon = True
            timer.start()


def data(rank, ranks):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((96, 6, 3))
    y = np.tanh(x[:, :, 0].sum(axis=1, keepdims=True)) + 0.1 * rng.standard_normal((96, 1))
    # Each rank its share (every ranks-th sample), as fastlstm.distributed.shard gives it.
    return (x[rank:64:ranks], y[rank:64:ranks]), (x[64 + rank::ranks], y[64 + rank::ranks])


def main():
    args = arguments()
    fl.set_num_threads(1)
    rank, ranks, optimizer = 0, 1, fl.optimizers.Adam(0.005)
    extra = []
    if args.mpi:
        from fastlstm import distributed
        comm = distributed.MPI.COMM_WORLD
        rank, ranks = comm.Get_rank(), comm.Get_size()
        optimizer = distributed.DistributedOptimizer(optimizer)
        extra = [distributed.AverageMetrics(), distributed.BroadcastWeights()]
    (x, y), validation = data(rank, ranks)
    # Each rank draws its own dropout masks and shuffles its own share.
    model = fl.Sequential([
        fl.LSTM(8, return_sequences=True, dropout=0.2, recurrent_dropout=0.2, seed=1 + rank,
                dtype="float64"),
        fl.Dropout(0.1, seed=2 + rank, dtype="float64"),
        fl.LSTM(4, seed=3, dtype="float64"),
        fl.Dense(1, seed=4, dtype="float64"),
    ], seed=5 + rank)
    model.compile(optimizer=optimizer, loss="mse", metrics=["mae"])
    model.build((None, 6, 3))
    stopping = callbacks.EarlyStopping(patience=2, min_delta=0.001, restore_best_weights=True)
    used = extra + [callbacks.ReduceLROnPlateau(factor=0.5, patience=1), stopping]
    if rank == 0:
        used += [callbacks.ModelCheckpoint(os.path.join(args.folder, "best.npz"),
                                           save_best_only=True),
                 callbacks.CSVLogger(os.path.join(args.folder, "log.csv"))]
    if args.backup:
        save_freq = args.save_freq if args.save_freq == "epoch" else int(args.save_freq)
        used.append(callbacks.BackupAndRestore(os.path.join(args.folder, "backup"), save_freq))
    if args.kill_after is not None and rank == args.kill_rank:
        used.insert(0, KillAfter(*args.kill_after))
    history = model.fit(x, y, batch_size=8, epochs=30, validation_data=validation, verbose=0,
                        callbacks=used)
    if rank != 0:
        return
    with open(os.path.join(args.folder, "best.npz"), "rb") as best, \
            open(os.path.join(args.folder, "log.csv")) as log:
        result = {"weights": model.get_weights(), "history": history.history,
                  "epochs": history.epoch, "stopped_epoch": stopping.stopped_epoch,
                  "best": best.read(), "log": log.read()}
    with open(args.output + ".part", "wb") as stream:
        pickle.dump(result, stream)
    os.replace(args.output + ".part", args.output)


if __name__ == "__main__":
    main()
