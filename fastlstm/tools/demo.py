"""``python -m fastlstm demo``: train a character-level language model.

The text is English that every Python installation carries: the docstrings
of a fixed list of standard-library modules (their modules, public classes,
functions and methods), kept to printable ASCII. The model reads 50
characters and predicts each next one:
``Embedding(vocabulary, 32) -> LSTM(units, return_sequences=True) -> Dense(vocabulary)``,
trained with a sparse categorical cross-entropy from logits and Adam, for a
bounded time. The demo prints text sampled from the model before and after
training (seeded), the held-out loss and accuracy before and after, and the
time of one training step on the same batch with fastlstm's kernels and with
the NumPy reference backend.
"""
import importlib
import inspect
import math
import sys
import time
import warnings

import numpy as np

from .. import _config
from ..callbacks import Callback
from ..functional import lstm_backward, lstm_forward
from ..layers import LSTM, Dense, Embedding, no_grad
from ..losses import SparseCategoricalCrossentropy
from ..models import Sequential
from ..optimizers import Adam

# Modules whose docstrings are plain English prose; the order fixes the text.
MODULES = (
    "abc", "argparse", "ast", "asyncio", "base64", "bisect", "builtins", "calendar", "cmd",
    "codecs", "collections", "concurrent.futures", "configparser", "contextlib", "copy",
    "csv", "dataclasses", "datetime", "decimal", "difflib", "doctest", "email", "enum",
    "fractions", "ftplib", "functools", "gettext", "glob", "heapq", "hashlib", "html",
    "http.client", "http.cookiejar", "http.server", "imaplib", "inspect", "io", "ipaddress",
    "itertools", "json", "locale", "logging", "mailbox", "math", "multiprocessing",
    "numbers", "operator", "optparse", "os", "pathlib", "pdb", "pickle", "pprint", "queue",
    "random", "re", "sched", "selectors", "shlex", "shutil", "smtplib", "socket",
    "statistics", "string", "struct", "subprocess", "tarfile", "tempfile", "textwrap",
    "threading", "timeit", "tokenize", "typing", "unittest", "urllib.parse",
    "urllib.request", "uuid", "warnings", "xml.dom.minidom", "xml.etree.ElementTree",
    "zipfile",
)

SEQUENCE_LENGTH = 50
BATCH_SIZE = 32
EMBEDDING_DIM = 32
LEARNING_RATE = 0.01
HELD_OUT_FRACTION = 0.05
PROMPT = "Return the "


def _docstrings(module):
    """The docstrings of a module and of its public classes, functions and methods."""
    yield inspect.getdoc(module)
    for name in sorted(dir(module)):
        if name.startswith("_"):
            continue
        member = getattr(module, name, None)
        if getattr(member, "__module__", None) != module.__name__:
            continue
        if inspect.isfunction(member):
            yield inspect.getdoc(member)
        elif inspect.isclass(member):
            yield inspect.getdoc(member)
            for attribute in sorted(vars(member)):
                method = vars(member)[attribute]
                if not attribute.startswith("_") and inspect.isfunction(method):
                    yield inspect.getdoc(method)


def corpus():
    """The training text: standard-library docstrings, printable ASCII only.

    Modules this Python lacks are skipped; a docstring met twice is kept
    once. Under ``python -OO`` there are no docstrings and the text is empty.
    """
    allowed = {chr(code) for code in range(32, 127)} | {"\n"}
    seen = set()
    parts = []
    # Reading some members (typing.io, ...) warns of their deprecation.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name in MODULES:
            try:
                module = importlib.import_module(name)
            except ImportError:
                continue
            for doc in _docstrings(module):
                if doc and doc not in seen:
                    seen.add(doc)
                    parts.append("".join(ch for ch in doc if ch in allowed))
    return "\n\n".join(parts)


def _windows(codes, length):
    """Non-overlapping windows of ``length + 1`` codes: inputs and next-character targets."""
    count = (len(codes) - 1) // length
    starts = np.arange(count) * length
    index = starts[:, None] + np.arange(length + 1)
    windows = codes[index]
    return windows[:, :-1], windows[:, 1:]


def build_model(vocabulary, units, seed):
    """The language model: embedding, LSTM over the sequence, logits per character."""
    model = Sequential([
        Embedding(vocabulary, EMBEDDING_DIM, seed=seed),
        LSTM(units, return_sequences=True, seed=seed + 1),
        Dense(vocabulary, seed=seed + 2),
    ], seed=seed)
    model.compile(optimizer=Adam(LEARNING_RATE, global_clipnorm=5.0),
                  loss=SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    return model


def sample(model, characters, prompt, length, rng, temperature=0.7):
    """Text the model writes after ``prompt``, one character at a time.

    A stateful copy of the LSTM carries its state from character to
    character, so each step costs one time step.
    """
    embedding, lstm, dense = model.layers
    stepper = LSTM(**dict(lstm.get_config(), stateful=True))
    stepper.set_weights(lstm.get_weights())
    index = {ch: k for k, ch in enumerate(characters)}
    codes = [index[ch] for ch in prompt if ch in index]
    text = []
    with no_grad():
        for code in codes[:-1]:
            stepper(embedding(np.array([[code]])))
        code = codes[-1]
        for _ in range(length):
            logits = dense(stepper(embedding(np.array([[code]]))))[0, -1].astype(np.float64)
            logits /= temperature
            probabilities = np.exp(logits - logits.max())
            probabilities /= probabilities.sum()
            code = int(rng.choice(len(characters), p=probabilities))
            text.append(characters[code])
    return prompt + "".join(text)


def _step_seconds(model, x, y, backend, repeat):
    """Median times of the LSTM's forward and backward, and of the whole
    forward and backward through the model, on one batch with the LSTM on
    ``backend``; everything else is the same code for both backends."""
    embedding, lstm, dense = model.layers
    lstm_times, step_times = [], []
    for _ in range(repeat):
        start = time.perf_counter()
        embedded = embedding(x, training=True)
        lstm_start = time.perf_counter()
        outputs, _, _, cache = lstm_forward(embedded, lstm.params["kernel"],
                                            lstm.params["recurrent_kernel"],
                                            lstm.params["bias"], backend=backend)
        lstm_time = time.perf_counter() - lstm_start
        logits = dense(outputs, training=True)
        _, d_logits = model.loss.value_and_gradient(y, logits)
        d_outputs = dense.backward(d_logits)
        lstm_start = time.perf_counter()
        grads = lstm_backward(cache, d_outputs)
        lstm_time += time.perf_counter() - lstm_start
        embedding.backward(grads.x)
        step_times.append(time.perf_counter() - start)
        lstm_times.append(lstm_time)
    return float(np.median(lstm_times)), float(np.median(step_times))


class _TimeLimit(Callback):
    """Ends training after ``seconds`` (checked after every batch)."""

    def __init__(self, seconds):
        super().__init__()
        self.seconds = seconds
        self.steps = 0

    def on_train_begin(self, logs=None):
        self.start = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        self.steps += 1
        if time.perf_counter() - self.start >= self.seconds:
            self.model.stop_training = True


def _print_sample(title, text):
    print(f"\n{title}:")
    print("    " + text.replace("\n", "\n    "))


def run(seconds=60.0, units=256, seed=0, threads=None, sample_length=240):
    """Run the demo; returns 0 on success, 1 when there is no text to learn.

    Parameters
    ----------
    seconds : float
        Training time (the speed comparison and sampling come on top).
    units : int
        The LSTM's units.
    seed : int
        Seeds the weights, the shuffling and the sampling.
    threads : int or None
        fastlstm's threads (default: its default, the number of cores).
    sample_length : int
        Characters sampled before and after training.
    """
    if threads is not None:
        _config.set_num_threads(threads)
    text = corpus()
    if len(text) < 10 * SEQUENCE_LENGTH:
        print("fastlstm demo: the standard library's docstrings are missing (is Python "
              "running with -OO?); the demo needs them as its text", file=sys.stderr)
        return 1
    characters = sorted(set(text))
    lookup = np.zeros(128, dtype=np.int64)
    lookup[[ord(ch) for ch in characters]] = np.arange(len(characters))
    codes = lookup[np.frombuffer(text.encode("ascii"), dtype=np.uint8)]
    split = int(len(codes) * (1 - HELD_OUT_FRACTION))
    x, y = _windows(codes[:split], SEQUENCE_LENGTH)
    x_held, y_held = _windows(codes[split:], SEQUENCE_LENGTH)

    print(f"fastlstm demo: a character-level language model of {len(text):,} characters of "
          f"standard-library docstrings")
    print(f"  {len(characters)} distinct characters; {x.shape[0]:,} training sequences and "
          f"{x_held.shape[0]} held-out sequences of {SEQUENCE_LENGTH}; "
          f"{_config.num_threads()} thread(s)")
    model = build_model(len(characters), units, seed)
    model.build((None, SEQUENCE_LENGTH))
    model.summary(print_fn=lambda line: print("  " + line))
    rng = np.random.default_rng(seed)
    before_loss, before_accuracy = model.evaluate(x_held, y_held, batch_size=BATCH_SIZE,
                                                  verbose=0)
    _print_sample("Sampled before training", sample(model, characters, PROMPT, sample_length,
                                                     np.random.default_rng(seed)))

    batch = rng.choice(x.shape[0], BATCH_SIZE, replace=False)
    x_batch, y_batch = x[batch], y[batch]
    fast_lstm, fast = _step_seconds(model, x_batch, y_batch, "fast", repeat=5)
    reference_lstm, reference = _step_seconds(model, x_batch, y_batch, "reference", repeat=3)
    print(f"\nOne training step (forward and backward) on a batch of {BATCH_SIZE} x "
          f"{SEQUENCE_LENGTH} characters, LSTM of {units} units:")
    print("                       LSTM layer   whole step")
    print(f"  fastlstm kernels   {fast_lstm * 1e3:8.1f} ms  {fast * 1e3:8.1f} ms")
    print(f"  NumPy reference    {reference_lstm * 1e3:8.1f} ms  {reference * 1e3:8.1f} ms")
    print(f"  speed-up           {reference_lstm / fast_lstm:8.1f}x    "
          f"{reference / fast:8.1f}x")

    steps_per_epoch = math.ceil(x.shape[0] / BATCH_SIZE)
    epochs = max(1, min(1000, round(seconds / (steps_per_epoch * fast))))
    print(f"\nTraining for {seconds:g} s ({epochs} epoch(s) of {steps_per_epoch} steps "
          f"expected):")
    limit = _TimeLimit(seconds)
    start = time.perf_counter()
    model.fit(x, y, batch_size=BATCH_SIZE, epochs=epochs, validation_data=(x_held, y_held),
              callbacks=[limit], verbose="auto")
    elapsed = time.perf_counter() - start

    after_loss, after_accuracy = model.evaluate(x_held, y_held, batch_size=BATCH_SIZE,
                                                verbose=0)
    _print_sample("Sampled after training", sample(model, characters, PROMPT, sample_length,
                                                    np.random.default_rng(seed)))
    print(f"\nTrained {limit.steps} steps in {elapsed:.1f} s "
          f"({limit.steps * BATCH_SIZE * SEQUENCE_LENGTH / elapsed:,.0f} characters/s).")
    print(f"Held-out loss {before_loss:.3f} -> {after_loss:.3f} nats per character "
          f"(uniform guessing: {math.log(len(characters)):.3f}); next-character accuracy "
          f"{before_accuracy:.1%} -> {after_accuracy:.1%}.")
    return 0
