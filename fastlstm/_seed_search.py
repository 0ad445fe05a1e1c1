"""Train one model from several seeds in parallel processes, keep the best.

An LSTM's result depends on its random start; trying several seeds and
keeping the one with the lowest validation loss is the usual remedy. The
trainings are independent, so they run in separate processes through joblib,
whose backends also reach a Dask or Ray cluster.
"""
import collections
import math
import numbers

import numpy as np

from ._config import num_threads, set_num_threads
from ._validation import check_int, check_real, describe

SeedResult = collections.namedtuple("SeedResult", ["seed", "val_loss", "model", "history"])


def _train(build_fn, seed, x, y, validation, threads, fit_kwargs):
    # joblib may run a job in the caller's process, whose setting comes back after.
    previous = num_threads()
    set_num_threads(threads)
    try:
        model = build_fn(seed)
        if not all(hasattr(model, name) for name in ("fit", "evaluate")):
            raise TypeError(f"build_fn must return a compiled model (with fit and evaluate), "
                            f"got {describe(model)} for seed {seed!r}")
        history = model.fit(x, y, validation_data=validation, **fit_kwargs)
        # The model as it ends (EarlyStopping may have restored its best
        # weights) is what is ranked, not the last epoch's logs.
        val_loss = model.evaluate(*validation, batch_size=fit_kwargs.get("batch_size"),
                                  verbose=0, return_dict=True)["loss"]
        return SeedResult(seed, float(val_loss), model, history)
    finally:
        set_num_threads(previous)


def search_seeds(build_fn, seeds, x, y, *, validation_data=None, validation_split=0.0,
                 n_jobs=None, threads_per_job=None, **fit_kwargs):
    """Train ``build_fn(seed)`` for each seed, in parallel; rank by validation loss.

    Each seed's model trains in its own process (joblib's default backend,
    loky) on the same data; the results come back ranked from the lowest
    validation loss to the highest. ``with joblib.parallel_config(backend=
    "dask")`` (or ``"ray"``) around the call runs the trainings on a cluster.

    Parameters
    ----------
    build_fn : callable
        ``build_fn(seed)`` returns a compiled model whose randomness comes
        from ``seed`` (seeded layers, and ``Sequential(seed=seed)`` for the
        shuffling). It must be importable by the worker processes: a
        function defined at a module's top level (or any function, with
        joblib's default backend, which uses cloudpickle).
    seeds : iterable of int
        One training per seed; seeds must be distinct.
    x, y : array_like
        The training data, passed to every model's ``fit``.
    validation_data : tuple (x_val, y_val) or None
        The held-out data that ranks the models.
    validation_split : float in (0, 1)
        Without ``validation_data``: hold out this fraction of the samples
        (the last ones, as ``fit`` does) to validate on.
    n_jobs : int or None
        Processes, as joblib counts them: None is joblib's default (1, or
        that of an enclosing ``joblib.parallel_config``), -1 every core.
    threads_per_job : int or None
        Kernel threads in each process (``fastlstm.set_num_threads``).
        Default: the cores divided by the processes running at once (at
        least 1), so that processes times threads never exceeds the cores.
    **fit_kwargs
        Passed to each ``fit`` (``batch_size``, ``epochs``, ``callbacks``,
        ``verbose``, ...). ``verbose`` defaults to 0 here.

    Returns
    -------
    list of SeedResult
        Named tuples ``(seed, val_loss, model, history)``, lowest
        ``val_loss`` first (NaN last; ties keep the seeds' order).
        ``val_loss`` is that of the model as ``fit`` left it.

    Examples
    --------
    >>> import numpy as np, fastlstm as fl
    >>> def build(seed):
    ...     model = fl.Sequential([fl.LSTM(4, seed=seed), fl.Dense(1, seed=seed)], seed=seed)
    ...     model.compile(optimizer="adam", loss="mse")
    ...     return model
    >>> rng = np.random.default_rng(0)
    >>> x = rng.standard_normal((40, 5, 2))
    >>> y = x.sum(axis=(1, 2))[:, None]
    >>> results = fl.search_seeds(build, [0, 1, 2], x, y, validation_split=0.25, epochs=2)
    >>> [r.seed for r in results] == [r.seed for r in sorted(results, key=lambda r: r.val_loss)]
    True
    """
    try:
        import joblib
    except ImportError as error:
        raise ImportError('search_seeds needs joblib: pip install "fastlstm[mpi]" (or joblib)'
                          ) from error

    if not callable(build_fn):
        raise TypeError(f"build_fn must be a callable build_fn(seed) -> compiled model, got "
                        f"{describe(build_fn)}")
    if isinstance(seeds, (str, bytes, numbers.Number)) or not hasattr(seeds, "__iter__"):
        raise TypeError(f"seeds must be a list of ints, got {describe(seeds)}")
    seeds = list(seeds)
    if not seeds:
        raise ValueError("seeds must hold at least one seed, got none")
    if len(set(map(repr, seeds))) != len(seeds):
        raise ValueError(f"seeds must be distinct, got {seeds}")
    x, y = np.asarray(x), np.asarray(y)
    if validation_data is None:
        check_real(validation_split, "validation_split", 0.0, 1.0, low_open=True,
                   high_open=True, meaning=" when validation_data is not given (the models "
                   "are ranked on held-out data)")
        split_at = int(math.floor(len(x) * (1.0 - validation_split)))
        validation = (x[split_at:], y[split_at:])
        x, y = x[:split_at], y[:split_at]
    else:
        if not isinstance(validation_data, (tuple, list)) or len(validation_data) != 2:
            raise ValueError(f"validation_data must be a tuple (x_val, y_val), got "
                             f"{describe(validation_data)}")
        validation = tuple(validation_data)
    if "validation_data" in fit_kwargs or "validation_split" in fit_kwargs:
        raise TypeError("pass validation_data or validation_split to search_seeds itself")
    fit_kwargs.setdefault("verbose", 0)

    jobs = min(joblib.effective_n_jobs(n_jobs), len(seeds))
    if threads_per_job is None:
        threads_per_job = max(1, joblib.cpu_count() // jobs)
    else:
        threads_per_job = check_int(threads_per_job, "threads_per_job")
    results = joblib.Parallel(n_jobs=n_jobs)(
        joblib.delayed(_train)(build_fn, seed, x, y, validation, threads_per_job, fit_kwargs)
        for seed in seeds)
    return sorted(results, key=lambda r: (math.isnan(r.val_loss), r.val_loss))
