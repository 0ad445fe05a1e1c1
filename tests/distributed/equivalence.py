"""Fit each case on every rank's shard with DistributedOptimizer, or on one
process with all the samples and a batch as large as all the ranks' together,
and write what the fits produced (weights, History, Allreduce count) to a
pickle that tests/test_distributed.py compares.

    mpiexec -n 2 python equivalence.py RESULTS.pkl
    python equivalence.py --single 2 RESULTS.pkl      (one process standing in for 2 ranks)
"""
import pickle
import sys

import numpy as np

import fastlstm as fl

BATCH = 8
EPOCHS = 3
# 100 samples: six batches of 16, then one of 4 that two ranks split evenly.
SAMPLES = 100
VALIDATION = 32


def regression(dtype):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((SAMPLES + VALIDATION, 6, 3)).astype(dtype)
    y = np.stack([x[:, :, 0].sum(axis=1), x[:, :, 1].max(axis=1)], axis=1)
    model = fl.Sequential([fl.LSTM(8, seed=0, dtype=dtype), fl.Dense(2, seed=1, dtype=dtype)],
                          seed=0)
    return model, x, y, "mse", ["mae"]


def masked_tokens(dtype):
    rng = np.random.default_rng(2)
    x = rng.integers(1, 10, size=(SAMPLES + VALIDATION, 7))
    lengths = rng.integers(2, 8, size=len(x))
    x[np.arange(7) >= lengths[:, None]] = 0
    y = x[:, 0] % 3
    model = fl.Sequential([
        fl.Embedding(10, 4, mask_zero=True, seed=2, dtype=dtype),
        fl.Bidirectional(fl.LSTM(6, return_sequences=True, seed=3, dtype=dtype)),
        fl.LSTM(5, seed=4, dtype=dtype),
        fl.Dense(3, seed=5, dtype=dtype),
    ], seed=0)
    return model, x, y, fl.losses.SparseCategoricalCrossentropy(from_logits=True), ["accuracy"]


CASES = {
    "sgd_clipnorm_float64": (regression, "float64",
                             lambda: fl.optimizers.SGD(0.05, momentum=0.9, clipnorm=0.5)),
    "adam_global_clipnorm_float64": (regression, "float64",
                                     lambda: fl.optimizers.Adam(0.01, global_clipnorm=0.3)),
    "rmsprop_float64": (regression, "float64", lambda: fl.optimizers.RMSprop(0.01)),
    "rmsprop_embedding_mask_float64": (masked_tokens, "float64",
                                       lambda: fl.optimizers.RMSprop(0.01, clipvalue=0.2)),
    "adamw_float64": (regression, "float64", lambda: fl.optimizers.AdamW(0.01)),
    "adam_float32": (regression, "float32", lambda: fl.optimizers.Adam(0.01)),
}


def fit(case, ranks, comm=None):
    """One case: on the ranks of ``comm``, or (``comm`` None) on one process."""
    build, dtype, make_optimizer = CASES[case]
    model, x, y, loss, metrics = build(dtype)
    x_train, y_train = x[:SAMPLES], y[:SAMPLES]
    validation = (x[SAMPLES:], y[SAMPLES:])
    if comm is None:
        optimizer, callbacks, batch_size = make_optimizer(), [], ranks * BATCH
    else:
        from fastlstm import distributed
        optimizer = distributed.DistributedOptimizer(make_optimizer(), comm)
        callbacks = [distributed.AverageMetrics(comm)]
        batch_size = BATCH
        x_train, y_train = distributed.shard(x_train, y_train, comm)
        validation = distributed.shard(*validation, comm=comm)
    model.compile(optimizer=optimizer, loss=loss, metrics=metrics)
    history = model.fit(x_train, y_train, batch_size=batch_size, epochs=EPOCHS,
                        validation_data=validation, shuffle=False, verbose=0,
                        callbacks=callbacks)
    return {"weights": model.get_weights(), "history": history.history,
            "allreduce_count": getattr(optimizer, "allreduce_count", None),
            "steps": -(-len(x_train) // batch_size)}


def main():
    fl.set_num_threads(1)
    if sys.argv[1] == "--single":
        ranks, path = int(sys.argv[2]), sys.argv[3]
        results = {case: fit(case, ranks) for case in CASES}
    else:
        from mpi4py import MPI

        comm, path = MPI.COMM_WORLD, sys.argv[1]
        results = {}
        for case in CASES:
            result = fit(case, comm.Get_size(), comm)
            every_rank = comm.allgather(result["weights"])
            result["ranks_identical"] = all(
                all(np.array_equal(a, b) for a, b in zip(weights, every_rank[0]))
                for weights in every_rank)
            results[case] = result
        if comm.Get_rank() != 0:
            return
    with open(path, "wb") as stream:
        pickle.dump(results, stream)


if __name__ == "__main__":
    main()
