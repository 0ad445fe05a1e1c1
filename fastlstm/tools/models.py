"""``python -m fastlstm bench --models``: one epoch of ``fit`` on whole models.

Users judge speed by how long an epoch takes, which counts everything a
training step does: the LSTM layers, the Dense layer and the loss, the
optimizer and the framework's own overhead. This times one epoch of the
same three models, on the same synthetic data, with Adam, in fastlstm,
PyTorch (a plain training loop) and Keras 3 (``model.fit``), each in its own
process so that no framework's threads or memory affect another's. The
processes run in turns (fastlstm, PyTorch, Keras, fastlstm, ...); each runs
a warm-up epoch and then ``epochs`` timed ones, and the figure reported is
the median over every timed epoch of every turn.

A batch size other than a model's own (``batch_size``) times the same
model on as many batches of that size; the targets belong to the models'
own sizes, so ratios are then printed without them. Small batches are where
fastlstm runs consecutive LSTM layers pipelined (see the stacking guide).

Each worker is this file run as a script, ``MODEL FRAMEWORK EPOCHS
THREADS BATCH`` its last arguments; it prints one JSON line: the epoch times
in seconds. It needs only NumPy and its framework, so Keras can run in another
interpreter, given by ``keras_python`` (TensorFlow may need an environment of
its own); PyTorch and Keras are skipped with a note when they cannot be
imported there.
"""
import json
import os
import statistics
import subprocess
import sys
import time

import numpy as np

__all__ = ["MODELS", "data", "fastlstm_model", "run"]

# name: (description, batch size, batches per epoch). The targets of
# docs/performance.rst: one epoch <= TARGETS[name] x PyTorch's, <= 0.3 x Keras'.
MODELS = {
    "char": ("Embedding(64, 32) -> LSTM(256, seq) -> LSTM(256, seq) -> Dense(64); "
             "sparse CE from logits at every step; B=64, T=100", 64, 16),
    "classifier": ("LSTM(64) -> Dense(1); binary CE from logits; B=32, T=50, I=32", 32, 32),
    "stack512": ("LSTM(512, seq) -> LSTM(512) -> Dense(10); sparse CE from logits; "
                 "B=64, T=50, I=512", 64, 8),
}
TARGETS_VS_TORCH = {"char": 0.67, "classifier": 0.67, "stack512": 0.8}
TARGET_VS_KERAS = 0.3
FRAMEWORKS = ("fastlstm", "torch", "keras")


def data(name, batch=None):
    """The model's inputs and targets for one epoch of its batches of
    ``batch`` sequences (default: its own size), float32 (tokens int64)."""
    rng = np.random.default_rng(0)
    _, own, batches = MODELS[name]
    samples = (batch or own) * batches
    if name == "char":
        tokens = rng.integers(0, 64, (samples, 101))
        return tokens[:, :-1], tokens[:, 1:]
    if name == "classifier":
        x = rng.standard_normal((samples, 50, 32)).astype(np.float32)
        return x, (x[:, :, 0].sum(axis=1) > 0).astype(np.float32)[:, None]
    x = rng.standard_normal((samples, 50, 512)).astype(np.float32)
    return x, rng.integers(0, 10, samples)


def fastlstm_model(name, dtype="float32"):
    """The fastlstm model ``name`` of :data:`MODELS`, compiled with Adam."""
    from fastlstm.layers import LSTM, Dense, Embedding
    from fastlstm.losses import BinaryCrossentropy, SparseCategoricalCrossentropy
    from fastlstm.models import Sequential
    from fastlstm.optimizers import Adam

    if name == "char":
        layers = [Embedding(64, 32, seed=0, dtype=dtype),
                  LSTM(256, return_sequences=True, seed=1, dtype=dtype),
                  LSTM(256, return_sequences=True, seed=2, dtype=dtype),
                  Dense(64, seed=3, dtype=dtype)]
        loss = SparseCategoricalCrossentropy(from_logits=True)
    elif name == "classifier":
        layers = [LSTM(64, seed=0, dtype=dtype), Dense(1, seed=1, dtype=dtype)]
        loss = BinaryCrossentropy(from_logits=True)
    else:
        layers = [LSTM(512, return_sequences=True, seed=0, dtype=dtype),
                  LSTM(512, seed=1, dtype=dtype), Dense(10, seed=2, dtype=dtype)]
        loss = SparseCategoricalCrossentropy(from_logits=True)
    model = Sequential(layers, seed=0)
    model.compile(optimizer=Adam(), loss=loss)
    return model


def _fit_epochs(model, x, y, batch, epochs):
    """Seconds of each of ``epochs`` epochs of Keras-style ``model.fit``, after a warm-up one."""
    times = []
    for _ in range(epochs + 1):
        start = time.perf_counter()
        model.fit(x, y, batch_size=batch, epochs=1, verbose=0)
        times.append(time.perf_counter() - start)
    return times[1:]


def _epochs_fastlstm(name, epochs, threads, batch):
    from fastlstm._config import set_num_threads

    set_num_threads(threads)
    x, y = data(name, batch)
    return _fit_epochs(fastlstm_model(name), x, y, batch, epochs)


def _epochs_torch(name, epochs, threads, batch):
    import torch

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    x, y = data(name, batch)

    class Model(torch.nn.Module):
        def __init__(self):
            super().__init__()
            if name == "char":
                self.embedding = torch.nn.Embedding(64, 32)
                self.lstm = torch.nn.LSTM(32, 256, num_layers=2, batch_first=True)
                self.dense = torch.nn.Linear(256, 64)
            elif name == "classifier":
                self.lstm = torch.nn.LSTM(32, 64, batch_first=True)
                self.dense = torch.nn.Linear(64, 1)
            else:
                self.lstm = torch.nn.LSTM(512, 512, num_layers=2, batch_first=True)
                self.dense = torch.nn.Linear(512, 10)

        def forward(self, inputs):
            if name == "char":
                inputs = self.embedding(inputs)
            outputs, _ = self.lstm(inputs)
            return self.dense(outputs if name == "char" else outputs[:, -1])

    model = Model()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, eps=1e-7)
    if name == "classifier":
        loss_fn = torch.nn.BCEWithLogitsLoss()
    else:
        loss_fn = torch.nn.CrossEntropyLoss()
    x = torch.from_numpy(x)
    y = torch.from_numpy(y)
    times = []
    for _ in range(epochs + 1):
        start = time.perf_counter()
        order = torch.randperm(x.shape[0])
        for first in range(0, x.shape[0], batch):
            index = order[first:first + batch]
            optimizer.zero_grad()
            logits = model(x[index])
            target = y[index]
            if name == "char":
                loss = loss_fn(logits.reshape(-1, 64), target.reshape(-1))
            else:
                loss = loss_fn(logits, target)
            loss.backward()
            optimizer.step()
        times.append(time.perf_counter() - start)
    return times[1:]


def _epochs_keras(name, epochs, threads, batch):
    import os

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf
    import keras

    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(threads)
    keras.utils.set_random_seed(0)
    x, y = data(name, batch)
    if name == "char":
        layers = [keras.Input((100,), dtype="int64"), keras.layers.Embedding(64, 32),
                  keras.layers.LSTM(256, return_sequences=True),
                  keras.layers.LSTM(256, return_sequences=True), keras.layers.Dense(64)]
        loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    elif name == "classifier":
        layers = [keras.Input((50, 32)), keras.layers.LSTM(64), keras.layers.Dense(1)]
        loss = keras.losses.BinaryCrossentropy(from_logits=True)
    else:
        layers = [keras.Input((50, 512)), keras.layers.LSTM(512, return_sequences=True),
                  keras.layers.LSTM(512), keras.layers.Dense(10)]
        loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    model = keras.Sequential(layers)
    model.compile(optimizer=keras.optimizers.Adam(), loss=loss)
    return _fit_epochs(model, x, y, batch, epochs)


_WORKERS = {"fastlstm": _epochs_fastlstm, "torch": _epochs_torch, "keras": _epochs_keras}


def _worker(argv):
    name, framework = argv[0], argv[1]
    epochs, threads, batch = (int(value) for value in argv[2:5])
    print(json.dumps(_WORKERS[framework](name, epochs, threads, batch)))
    return 0


def _run_worker(python, name, framework, epochs, threads, batch, timeout):
    """The epoch times of one worker process, or the reason it gave none."""
    return run_script(python, __file__, [name, framework, epochs, threads, batch],
                      f"{framework} on {name}", timeout)


def run_script(python, path, arguments, label, timeout, env=None):
    """The JSON a worker script printed last, or None and the reason it gave
    none (``label`` names the worker).

    The script runs by ``runpy.run_path``, not as ``python path``: fastlstm's
    own directory must not come first on ``sys.path``, where fastlstm/torch.py
    and fastlstm/keras.py would hide PyTorch and Keras.
    """
    command = [python, "-c", "import runpy, sys; runpy.run_path(sys.argv[1], "
               "run_name='__main__')", os.path.abspath(path), *map(str, arguments)]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout,
                              env=env)
    except (OSError, subprocess.TimeoutExpired) as error:
        return None, f"{label}: {error}"
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        return None, f"{label} failed: {last}"
    return json.loads(done.stdout.strip().splitlines()[-1]), None


def _available(python, module):
    """Whether ``python`` can import ``module``."""
    try:
        return subprocess.run([python, "-c", f"import {module}"], capture_output=True,
                              timeout=120).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def run(models=None, turns=3, epochs=2, threads=None, keras_python=None, file=None,
        timeout=900, batch_size=None):
    """Time one epoch of ``fit`` per model and framework; print and return the medians.

    Parameters
    ----------
    models : list of str or None
        Names of :data:`MODELS`; None runs all.
    turns : int
        Processes per framework and model, run in turns.
    epochs : int
        Timed epochs per process, after one warm-up epoch.
    threads : int or None
        Threads for every framework; None: fastlstm's default
        (:func:`fastlstm.num_threads`).
    keras_python : str or None
        The interpreter that runs Keras (default: this one).
    file : file-like or None
        Where to print; ``sys.stdout`` when None.
    timeout : float
        Seconds a worker process may take.
    batch_size : int or None
        The batch size of every model instead of its own (as many batches
        per epoch); ratios are then printed without the targets.

    Returns
    -------
    dict
        Per model: the median epoch seconds per framework, every epoch time,
        the ratios, and notes on what could not run.
    """
    file = sys.stdout if file is None else file
    models, threads = checked_models(models, MODELS, threads)
    if batch_size is not None and (not isinstance(batch_size, int) or batch_size < 1):
        raise ValueError(f"batch_size must be a positive int or None, got {batch_size!r}")
    pythons = {"fastlstm": sys.executable, "torch": sys.executable,
               "keras": keras_python or sys.executable}
    frameworks = ["fastlstm"]
    notes = []
    for framework, module in (("torch", "torch"), ("keras", "keras")):
        if _available(pythons[framework], module):
            frameworks.append(framework)
        else:
            notes.append(f"{module} cannot be imported by {pythons[framework]}: not timed")
    print(f"one epoch of fit, {threads} thread(s) each, {turns} process(es) per framework "
          f"in turns, {epochs} timed epoch(s) each after a warm-up; median seconds", file=file)
    for note in notes:
        print(f"note: {note}", file=file)
    results = {"threads": threads, "turns": turns, "epochs": epochs, "notes": notes,
               "batch_size": batch_size, "models": {}}
    for name in models:
        batch = batch_size or MODELS[name][1]
        times = {framework: [] for framework in frameworks}
        errors = []
        for _ in range(turns):
            for framework in frameworks:
                epoch_times, error = _run_worker(pythons[framework], name, framework, epochs,
                                                 threads, batch, timeout)
                if error:
                    errors.append(error)
                else:
                    times[framework].extend(epoch_times)
        medians = {f: statistics.median(t) for f, t in times.items() if t}
        ratios = {f"fastlstm_over_{f}": medians["fastlstm"] / medians[f]
                  for f in medians if f != "fastlstm" and "fastlstm" in medians}
        description = MODELS[name][0]
        if batch != MODELS[name][1]:
            description += f"; run at batch size {batch}, {MODELS[name][2]} batches"
        results["models"][name] = {"description": description, "seconds": medians,
                                   "times": times, "ratios": ratios, "errors": errors,
                                   "batch_size": batch}
        _print_model(name, results["models"][name], file, batch == MODELS[name][1])
        file.flush()
    return results


def checked_models(models, known, threads):
    """``(models, threads)``: the names asked for (None: all of ``known``),
    checked, and the threads (None: :func:`fastlstm.num_threads`)."""
    if threads is None:
        from fastlstm._config import num_threads

        threads = num_threads()
    models = list(known) if models is None else list(models)
    unknown = [name for name in models if name not in known]
    if unknown:
        raise ValueError(f"unknown model(s) {unknown}; the models are {list(known)}")
    return models, threads


def _print_model(name, result, file, targets=True):
    seconds = result["seconds"]
    cells = "  ".join(f"{framework} {seconds[framework]:.3f}" for framework in FRAMEWORKS
                      if framework in seconds)
    print(f"\n{name}: {result['description']}\n  seconds: {cells}", file=file)
    ratios = result["ratios"]
    for framework, label, target in (("torch", "PyTorch", TARGETS_VS_TORCH[name]),
                                     ("keras", "Keras", TARGET_VS_KERAS)):
        ratio = ratios.get(f"fastlstm_over_{framework}")
        if ratio is None:
            continue
        verdict = (f" (target <= {target}: {'met' if ratio <= target else 'missed'})"
                   if targets else "")
        print(f"  fastlstm / {label} {ratio:.2f}{verdict}", file=file)
    for error in result["errors"]:
        print(f"  error: {error}", file=file)


if __name__ == "__main__":
    sys.exit(_worker(sys.argv[-5:]))
