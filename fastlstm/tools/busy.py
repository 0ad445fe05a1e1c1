"""``python -m fastlstm bench --busy``: fastlstm's threads when a core is busy.

A user's machine is seldom idle: another training run, a data pipeline or a
browser keeps a core busy. A library whose threads wait for each other at
the end of every parallel region then waits, each time, for the thread the
operating system has not scheduled yet, and asking for that busy core costs
more than leaving it. This mode starts a process that spins on one core
(pinned there with ``os.sched_setaffinity`` where the system offers it) and,
while it spins, times fastlstm on 2 threads and on 1
(:func:`fastlstm.set_num_threads`) at three calls:

- a training step (``train_on_batch``, Adam) of the model of
  ``examples/sequence_classification.py``: ``Embedding(10, 16,
  mask_zero=True) -> LSTM(32) -> Dense(1)``, a batch of 64 sequences of 30
  steps (here every sequence is 30 steps long, so PyTorch's unmasked LSTM
  does the same work);
- the benchmark's training step at "small" (:func:`fastlstm.lstm_forward`
  and :func:`fastlstm.lstm_backward`);
- the benchmark's inference at "one".

Its figure is the ratio of the 2-thread time to the 1-thread time (target: at
most :data:`TARGET_TWO_OVER_ONE`). PyTorch's times on 2 and 1 threads
(``torch.set_num_threads``) are printed beside, for the same model built in
PyTorch and the same LSTM calls, which are checked against fastlstm's first
as in the main benchmark. The configurations take turns
(:func:`fastlstm.tools.bench.interleaved_medians`), so that the load and its
drifts reach all of them alike. The spinning process is stopped when the
run ends, also on an error or Ctrl-C, and stops by itself when its parent
is gone.
"""
import contextlib
import json
import os
import subprocess
import sys
from collections import namedtuple

import numpy as np

from .. import _config, _kernels
from . import bench
from .sizes import SIZES

__all__ = ["TARGET_TWO_OVER_ONE", "BusyCore", "busy_core", "run"]

TARGET_TWO_OVER_ONE = 1.1
THREADS = (2, 1)
TASKS = {
    "example": "training step, example model (B=64, T=30)",
    "small": "training step, small",
    "one": "inference, one",
}
# Timed calls per configuration, and calls in a row per turn: a few seconds
# in all on two cores, a busy one included.
ROUNDS = {"example": 40, "small": 40, "one": 80}
BURST = 5

# The spinning process: it checks every few milliseconds that the process
# that started it (its first argument) is still its parent.
_SPIN = ("import os, sys\n"
         "parent = int(sys.argv[1])\n"
         "while os.getppid() == parent:\n"
         "    for _ in range(100000):\n"
         "        pass\n")


BusyCore = namedtuple("BusyCore", ["pid", "core"])
BusyCore.__doc__ = """The spinning process's id, and the core it is pinned to (None
where the system cannot pin a process)."""


@contextlib.contextmanager
def busy_core():
    """Keep one core busy while the block runs: a process spinning on the
    last core this process may run on.

    Yields
    ------
    BusyCore
    """
    process = subprocess.Popen([sys.executable, "-c", _SPIN, str(os.getpid())])
    try:
        core = None
        if hasattr(os, "sched_setaffinity"):
            core = max(os.sched_getaffinity(0))
            os.sched_setaffinity(process.pid, {core})
        yield BusyCore(process.pid, core)
    finally:
        process.kill()
        process.wait()


def _example_batch(seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(1, 10, (64, 30)), rng.integers(0, 2, (64, 1)).astype(np.float32)


def _fastlstm_example():
    """A training step of the example's model in fastlstm."""
    from ..layers import LSTM, Dense, Embedding
    from ..losses import BinaryCrossentropy
    from ..models import Sequential
    from ..optimizers import Adam

    model = Sequential([Embedding(10, 16, mask_zero=True, seed=0), LSTM(32, seed=1),
                        Dense(1, seed=2)], seed=0)
    model.compile(optimizer=Adam(0.01), loss=BinaryCrossentropy(from_logits=True))
    x, y = _example_batch()
    return lambda: model.train_on_batch(x, y)


def _torch_example():
    """The same training step in PyTorch."""
    import torch

    torch.manual_seed(0)
    embedding = torch.nn.Embedding(10, 16, padding_idx=0)
    lstm = torch.nn.LSTM(16, 32, batch_first=True)
    dense = torch.nn.Linear(32, 1)
    parameters = [*embedding.parameters(), *lstm.parameters(), *dense.parameters()]
    optimizer = torch.optim.Adam(parameters, lr=0.01, eps=1e-7)
    loss_fn = torch.nn.BCEWithLogitsLoss()
    x, y = (torch.from_numpy(array) for array in _example_batch())

    def step():
        optimizer.zero_grad()
        outputs, _ = lstm(embedding(x))
        loss_fn(dense(outputs[:, -1]), y).backward()
        optimizer.step()

    return step


def _calls(libraries):
    """The timed calls, keyed ``(task, library)``; and the disagreements
    that kept an LSTM call of a library out."""
    calls = {("example", "fastlstm"): _fastlstm_example()}
    if "torch" in libraries:
        calls["example", "torch"] = _torch_example()
    errors = []
    for task, kind in (("small", "train"), ("one", "infer")):
        x, kernel, recurrent_kernel, bias = bench._inputs(*SIZES[task], np.float32)
        fast = bench._fastlstm("fast", "fast", x, kernel, recurrent_kernel, bias)
        calls[task, "fastlstm"] = getattr(fast, kind)
        if "torch" in libraries:
            timed, found = bench._verify(fast, [bench._torch(x, kernel, recurrent_kernel, bias)],
                                         np.dtype(np.float32))
            errors += [f"{task}: {error}" for error in found]
            if len(timed) == 2:
                calls[task, "torch"] = getattr(timed[1], kind)
    return calls, errors


def _setters(libraries):
    """Per library, the call that sets its threads."""
    setters = {"fastlstm": _config.set_num_threads}
    if "torch" in libraries:
        import torch

        setters["torch"] = torch.set_num_threads
    return setters


def run(repeat=None, file=None, json_path=None):
    """Time fastlstm and PyTorch on 2 and 1 threads with one core busy;
    print and return the medians and ratios.

    Parameters
    ----------
    repeat : int or None
        Timed calls per configuration; None uses :data:`ROUNDS`.
    file : file-like or None
        Where to print; ``sys.stdout`` when None.
    json_path : str or path-like or None
        Where to write the results as JSON.

    Returns
    -------
    dict
        The busy core, per task the median milliseconds per library and
        thread count (keys ``"2"`` and ``"1"``), the ratios 2-thread /
        1-thread, and the disagreements that kept a call out.
    """
    file = sys.stdout if file is None else file
    libraries = ["fastlstm"]
    try:
        import torch
    except ImportError:
        torch = None
    else:
        libraries.append("torch")
    setters = _setters(libraries)
    saved = {"fastlstm": _config.num_threads()}
    if torch is not None:
        saved["torch"] = torch.get_num_threads()
    try:
        calls, errors = _calls(libraries)
        timed, rounds, before = {}, {}, {}
        for (task, library), call in calls.items():
            for threads in THREADS:
                key = (task, library, threads)
                timed[key] = call
                rounds[key] = ROUNDS[task] if repeat is None else repeat
                before[key] = (lambda setter, n: lambda: setter(n))(setters[library], threads)
        with busy_core() as busy:
            medians, _ = bench.interleaved_medians(timed, rounds, min(BURST, min(rounds.values())),
                                                   bench.PAUSE_SECONDS, before=before)
    finally:
        for library, threads in saved.items():
            setters[library](threads)
    results = {
        "kernels": _kernels.current_name(),
        "cpu": bench.cpu_model(),
        "busy_core": busy.core,
        "libraries": libraries,
        "median_ms": {task: {library: {str(n): medians[task, library, n] for n in THREADS}
                             for library in libraries if (task, library, 1) in medians}
                      for task in TASKS},
        "errors": errors,
    }
    results["ratios"] = {task: {library: times["2"] / times["1"]
                                for library, times in by_library.items()}
                         for task, by_library in results["median_ms"].items()}
    _print(results, file)
    if json_path is not None:
        with open(json_path, "w") as stream:
            json.dump(results, stream, indent=1)
    return results


def _print(results, file):
    where = (f"pinned to core {results['busy_core']}" if results["busy_core"] is not None
             else "not pinned: this system cannot pin a process")
    print(f"busy core: a process spinning on one core ({where}); {results['cpu']}, "
          f"{results['kernels']} kernels; medians of interleaved turns, ms", file=file)
    labels = {"fastlstm": "fastlstm", "torch": "PyTorch"}
    header = "".join(f"{labels[library] + ' 2 / 1 thr':>24}{'2/1':>6}"
                     for library in results["libraries"])
    print(f"  {'':<44}{header}   target (fastlstm 2/1)", file=file)
    for task, label in TASKS.items():
        cells = ""
        for library in results["libraries"]:
            times = results["median_ms"][task].get(library)
            if times is None:
                cells += f"{'-':>24}{'-':>6}"
                continue
            cells += (f"{bench._ms(times['2']) + ' / ' + bench._ms(times['1']):>24}"
                      f"{results['ratios'][task][library]:>6.2f}")
        verdict = bench._verdict(results["ratios"][task]["fastlstm"], TARGET_TWO_OVER_ONE)
        print(f"  {label:<44}{cells}   {verdict}", file=file)
    for error in results["errors"]:
        print(f"  ERROR: {error}; not timed", file=file)
