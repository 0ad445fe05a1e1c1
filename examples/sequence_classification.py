"""Sequence classification: does a sequence of digits contain the motif 3 1 4?

Each sample is a sequence of 8 to 30 random digits 1-9, padded with 0 to 30
steps; half the samples contain the motif 3 1 4 somewhere (contiguous), the
other half nowhere. The model must find a three-step pattern anywhere in a
variable-length sequence:

    Embedding(10, 16, mask_zero=True) -> LSTM(32) -> Dense(1)

The embedding's mask makes the LSTM skip the padding. Training keeps the
best weights by validation loss (EarlyStopping(restore_best_weights=True))
and writes them to a checkpoint (ModelCheckpoint(save_best_only=True)).

Target: accuracy of at least 99% on 2,000 held-out sequences.

Run ``python examples/sequence_classification.py`` (about 3 s on an idle
2-core machine, longer when other programs keep the cores busy);
``--quick`` trains a few steps only, as the tests do.
"""
import argparse
import os
import sys
import tempfile
import time

import numpy as np

import fastlstm as fl
from fastlstm.callbacks import EarlyStopping, ModelCheckpoint
from fastlstm.layers import Dense, Embedding
from fastlstm.losses import BinaryCrossentropy
from fastlstm.models import Sequential
from fastlstm.optimizers import Adam

MOTIF = (3, 1, 4)
MAX_LENGTH = 30
TARGET_ACCURACY = 0.99

# Outputs go to the temporary directory unless --output-dir says otherwise, so that running an
# example leaves nothing in the directory it is run from.
OUTPUT_DIR = os.path.join(tempfile.gettempdir(), "fastlstm-examples")


def contains_motif(sequence):
    return any(tuple(sequence[k:k + len(MOTIF)]) == MOTIF
               for k in range(len(sequence) - len(MOTIF) + 1))


def make_data(count, rng):
    """Padded digit sequences and 0/1 labels, half of them positive."""
    x = np.zeros((count, MAX_LENGTH), dtype=np.int64)
    y = np.zeros((count, 1))
    for k in range(count):
        length = rng.integers(8, MAX_LENGTH + 1)
        sequence = rng.integers(1, 10, length)
        if k % 2 == 0:
            start = rng.integers(0, length - len(MOTIF) + 1)
            sequence[start:start + len(MOTIF)] = MOTIF
            y[k] = 1
        else:
            while contains_motif(sequence):
                sequence = rng.integers(1, 10, length)
        x[k, :length] = sequence
    order = rng.permutation(count)
    return x[order], y[order]


def save_loss_plot(history, path):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed, so no plot "
              "(pip install matplotlib, or fastlstm[examples])")
        return
    figure, axes = plt.subplots(figsize=(6, 4))
    epochs = np.arange(1, len(history["loss"]) + 1)
    axes.plot(epochs, history["loss"], label="training")
    axes.plot(epochs, history["val_loss"], label="validation")
    axes.set_xlabel("epoch")
    axes.set_ylabel("binary cross-entropy")
    axes.set_title("Does the sequence contain 3 1 4?")
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    print(f"loss curve saved to {path}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="train a few steps only (a smoke test, no quality target)")
    parser.add_argument("--output-dir", default=OUTPUT_DIR,
                        help="directory for the loss curve (default: %(default)s)")
    parser.add_argument("--plot", default=None,
                        help="where to save the loss curve (PNG); default "
                             "<output-dir>/sequence_classification_loss.png")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    plot = args.plot or os.path.join(args.output_dir, "sequence_classification_loss.png")
    os.makedirs(os.path.dirname(os.path.abspath(plot)), exist_ok=True)

    rng = np.random.default_rng(args.seed)
    train_count, test_count, epochs = (256, 64, 2) if args.quick else (4000, 2000, 30)
    x, y = make_data(train_count, rng)
    x_test, y_test = make_data(test_count, rng)

    model = Sequential([
        Embedding(10, 16, mask_zero=True, seed=args.seed),
        fl.LSTM(32, seed=args.seed + 1),
        Dense(1, seed=args.seed + 2),
    ], seed=args.seed)
    model.compile(optimizer=Adam(0.01), loss=BinaryCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    model.build((None, MAX_LENGTH))
    model.summary()

    with tempfile.TemporaryDirectory() as directory:
        checkpoint = os.path.join(directory, "best.npz")
        callbacks = [EarlyStopping(monitor="val_loss", patience=3, restore_best_weights=True),
                     ModelCheckpoint(checkpoint, monitor="val_loss", save_best_only=True)]
        start = time.perf_counter()
        history = model.fit(x, y, batch_size=64, epochs=epochs, validation_split=0.1,
                            callbacks=callbacks, verbose=2)
        elapsed = time.perf_counter() - start
        # The checkpoint holds the same best weights EarlyStopping restored.
        model.load_weights(checkpoint)

    loss, accuracy = model.evaluate(x_test, y_test, batch_size=256, verbose=0)
    print(f"\ntrained {len(history.epoch)} epochs in {elapsed:.1f} s; held-out loss "
          f"{loss:.4f}, accuracy {accuracy:.4f}")
    save_loss_plot(history.history, plot)
    if args.quick:
        return 0
    reached = accuracy >= TARGET_ACCURACY
    print(f"target: held-out accuracy >= {TARGET_ACCURACY}: "
          f"{'reached' if reached else 'NOT reached'}")
    return 0 if reached else 1


if __name__ == "__main__":
    sys.exit(main())
