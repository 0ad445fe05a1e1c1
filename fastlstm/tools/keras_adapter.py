"""``python -m fastlstm bench --keras``: fastlstm.keras.LSTM inside Keras 3.

Times one epoch of ``model.fit`` on the model benchmark's models
(:mod:`fastlstm.tools.models`) built in Keras 3, with ``keras.layers.LSTM``
and with :class:`fastlstm.keras.LSTM`, on each Keras backend installed, and
the same model in fastlstm's own ``Sequential``: the first ratio is what the
layer gains a Keras user, the second what the adapter costs against
fastlstm's own training loop. Each run is a process of its own (Keras picks
its backend at import), in turns; each runs a warm-up epoch (which compiles)
and then ``epochs`` timed ones, and the figure is the median over every
timed epoch of every turn.

Each worker is this file run as a script, ``MODEL BACKEND LAYER EPOCHS
THREADS`` its last arguments; it prints one JSON line: the epoch times.
"""
import importlib.util
import json
import os
import statistics
import sys

from fastlstm.tools import models as model_bench

__all__ = ["MODELS", "TARGETS", "run"]

MODELS = ("char", "stack512")
# fastlstm.keras.LSTM's epoch <= TARGETS[backend] x keras.layers.LSTM's, and
# <= TARGET_VS_FASTLSTM x fastlstm's own Sequential.
TARGETS = {"tensorflow": 0.6, "torch": 0.3, "jax": 0.8}
TARGET_VS_FASTLSTM = 1.3
LAYERS = ("keras", "fastlstm.keras")


def keras_model(name, layer):
    """The model ``name`` of the model benchmark in Keras, its LSTM layers of
    ``layer`` ("keras" or "fastlstm.keras"), compiled with Adam."""
    import keras

    if layer == "keras":
        lstm = keras.layers.LSTM
    else:
        import fastlstm.keras

        lstm = fastlstm.keras.LSTM
    keras.utils.set_random_seed(0)
    if name == "char":
        layers = [keras.Input((100,), dtype="int32"), keras.layers.Embedding(64, 32),
                  lstm(256, return_sequences=True), lstm(256, return_sequences=True),
                  keras.layers.Dense(64)]
    else:
        layers = [keras.Input((50, 512)), lstm(512, return_sequences=True), lstm(512),
                  keras.layers.Dense(10)]
    model = keras.Sequential(layers)
    model.compile(optimizer=keras.optimizers.Adam(),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return model


def _epochs(name, backend, layer, epochs, threads):
    if backend == "fastlstm":
        return model_bench._epochs_fastlstm(name, epochs, threads, model_bench.MODELS[name][1])
    from fastlstm._config import set_num_threads

    set_num_threads(threads)
    if backend == "torch":
        import torch

        torch.set_num_threads(threads)
    elif backend == "tensorflow":
        import tensorflow as tf

        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(threads)
    batch = model_bench.MODELS[name][1]
    x, y = model_bench.data(name)
    return model_bench._fit_epochs(keras_model(name, layer), x, y, batch, epochs)


def _worker(argv):
    name, backend, layer = argv[:3]
    epochs, threads = int(argv[3]), int(argv[4])
    print(json.dumps(_epochs(name, backend, layer, epochs, threads)))
    return 0


def _run_worker(name, backend, layer, epochs, threads, timeout):
    """The epoch times of one worker process, or the reason it gave none."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    if backend != "fastlstm":
        env["KERAS_BACKEND"] = backend
    label = f"{layer} on {backend}, {name}" if backend != "fastlstm" else f"fastlstm, {name}"
    return model_bench.run_script(sys.executable, __file__,
                                    [name, backend, layer, epochs, threads], label, timeout, env)


def run(models=None, turns=3, epochs=2, threads=None, file=None, timeout=1800):
    """Time one epoch of ``fit`` per model, backend and LSTM class; print and
    return the medians.

    Parameters
    ----------
    models : list of str or None
        Names of :data:`MODELS`; None runs both.
    turns : int
        Processes per configuration, run in turns.
    epochs : int
        Timed epochs per process, after one warm-up epoch.
    threads : int or None
        Threads for fastlstm and the backend; None: fastlstm's default.
    file : file-like or None
        Where to print; ``sys.stdout`` when None.
    timeout : float
        Seconds a worker process may take.

    Returns
    -------
    dict
        Per model: median epoch seconds per backend and class, the ratios,
        and the errors; the backends that could not be imported, in notes.
    """
    file = sys.stdout if file is None else file
    models, threads = model_bench.checked_models(models, MODELS, threads)
    backends, notes = [], []
    if importlib.util.find_spec("keras") is None:
        notes.append("keras cannot be imported: only fastlstm's Sequential is timed")
    else:
        for backend in TARGETS:
            if importlib.util.find_spec(backend) is None:
                notes.append(f"{backend} cannot be imported: the {backend} backend is not timed")
            else:
                backends.append(backend)
    runs = [("fastlstm", "fastlstm")] + [(b, layer) for b in backends for layer in LAYERS]
    print(f"one epoch of Keras' fit, {threads} thread(s), {turns} process(es) per "
          f"configuration in turns, {epochs} timed epoch(s) each after a warm-up; median "
          f"seconds", file=file)
    for note in notes:
        print(f"note: {note}", file=file)
    results = {"threads": threads, "turns": turns, "epochs": epochs, "notes": notes,
               "models": {}}
    for name in models:
        times = {key: [] for key in runs}
        errors = []
        for _ in range(turns):
            for backend, layer in runs:
                epoch_times, error = _run_worker(name, backend, layer, epochs, threads,
                                                 timeout)
                if error:
                    errors.append(error)
                else:
                    times[backend, layer].extend(epoch_times)
        seconds = {f"{backend}/{layer}": statistics.median(t)
                   for (backend, layer), t in times.items() if t}
        results["models"][name] = {"description": model_bench.MODELS[name][0],
                                   "seconds": seconds, "errors": errors,
                                   "times": {f"{b}/{l}": t for (b, l), t in times.items()}}
        _print_model(name, results["models"][name], backends, file)
        file.flush()
    return results


def _print_model(name, result, backends, file):
    seconds = result["seconds"]
    print(f"\n{name}: {result['description']}", file=file)
    own = seconds.get("fastlstm/fastlstm")
    if own is not None:
        print(f"  fastlstm Sequential: {own:.3f}", file=file)
    for backend in backends:
        theirs = seconds.get(f"{backend}/keras")
        ours = seconds.get(f"{backend}/fastlstm.keras")
        cells = []
        if theirs is not None:
            cells.append(f"keras.layers.LSTM {theirs:.3f}")
        if ours is not None:
            cells.append(f"fastlstm.keras.LSTM {ours:.3f}")
        if theirs is not None and ours is not None:
            ratio = ours / theirs
            target = TARGETS[backend]
            cells.append(f"ratio {ratio:.2f} (target <= {target}: "
                         f"{'met' if ratio <= target else 'missed'})")
        if ours is not None and own is not None:
            ratio = ours / own
            cells.append(f"vs Sequential {ratio:.2f} (target <= {TARGET_VS_FASTLSTM}: "
                         f"{'met' if ratio <= TARGET_VS_FASTLSTM else 'missed'})")
        print(f"  {backend}: " + "; ".join(cells), file=file)
    for error in result["errors"]:
        print(f"  error: {error}", file=file)


if __name__ == "__main__":
    sys.exit(_worker(sys.argv[-5:]))
