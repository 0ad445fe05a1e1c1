"""Forecasting yearly sunspot numbers, 1700-2008 (statsmodels' sunspots data).

The series ships inside statsmodels (``statsmodels.datasets.sunspots``), so
nothing is downloaded. The model reads the last 24 years and predicts the
next one:

    LSTM(32) -> Dense(1)       (float64, mean squared error, Adam)

The years up to 1958 train the model (their last fifth is the validation
data that EarlyStopping watches, keeping the best weights); 1959-2008, five
solar cycles the model never saw, test it. Each test forecast is one year ahead
from the true previous 24 years.

Target: a test mean absolute error at most 60% of the persistence forecast's
(next year = this year). An AR(24) model fitted by least squares on the same
windows is printed for comparison.

Run ``python examples/sunspots_forecasting.py`` (about 2 s on an idle 2-core
machine, longer when other programs keep the cores busy; needs
statsmodels: ``pip install statsmodels`` or ``fastlstm[examples]``);
``--quick`` trains a few steps only, as the tests do.
"""
import argparse
import os
import sys
import tempfile
import time

import numpy as np

import fastlstm as fl
from fastlstm.callbacks import EarlyStopping
from fastlstm.layers import Dense
from fastlstm.models import Sequential
from fastlstm.optimizers import Adam

LOOKBACK = 24
FIRST_TEST_YEAR = 1959
TARGET_RATIO = 0.60

# Outputs go to the temporary directory unless --output-dir says otherwise, so that running an
# example leaves nothing in the directory it is run from.
OUTPUT_DIR = os.path.join(tempfile.gettempdir(), "fastlstm-examples")


def load_sunspots():
    """Years and yearly sunspot numbers, from statsmodels."""
    try:
        from statsmodels.datasets import sunspots
    except ImportError:
        print("this example needs statsmodels: pip install statsmodels "
              "(or pip install 'fastlstm[examples]')", file=sys.stderr)
        raise SystemExit(2) from None
    data = sunspots.load_pandas().data
    return data["YEAR"].to_numpy(dtype=int), data["SUNACTIVITY"].to_numpy(dtype=np.float64)


def windows(series, lookback):
    """Inputs ``(samples, lookback, 1)`` and next values ``(samples, 1)``."""
    index = np.arange(len(series) - lookback)[:, None] + np.arange(lookback)
    return series[index][..., None], series[lookback:, None]


def save_plots(history, years, actual, forecast, path):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed, so no plot "
              "(pip install matplotlib, or fastlstm[examples])")
        return
    figure, (loss_axes, series_axes) = plt.subplots(1, 2, figsize=(11, 4))
    epochs = np.arange(1, len(history["loss"]) + 1)
    loss_axes.plot(epochs, history["loss"], label="training")
    loss_axes.plot(epochs, history["val_loss"], label="validation")
    loss_axes.set_yscale("log")
    loss_axes.set_xlabel("epoch")
    loss_axes.set_ylabel("mean squared error (scaled)")
    loss_axes.set_title("Loss")
    loss_axes.legend()
    series_axes.plot(years, actual, label="observed")
    series_axes.plot(years, forecast, label="LSTM, one year ahead")
    series_axes.set_xlabel("year")
    series_axes.set_ylabel("sunspot number")
    series_axes.set_title("Test years")
    series_axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    print(f"loss curve and forecasts saved to {path}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="train a few steps only (a smoke test, no quality target)")
    parser.add_argument("--output-dir", default=OUTPUT_DIR,
                        help="directory for the loss curve and forecasts (default: %(default)s)")
    parser.add_argument("--plot", default=None,
                        help="where to save the loss curve and forecasts (PNG); default "
                             "<output-dir>/sunspots_forecasting_loss.png")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    plot = args.plot or os.path.join(args.output_dir, "sunspots_forecasting_loss.png")
    os.makedirs(os.path.dirname(os.path.abspath(plot)), exist_ok=True)

    years, activity = load_sunspots()
    # Scaled by the training years' spread, so the network sees values near 1.
    split = int(np.searchsorted(years, FIRST_TEST_YEAR))
    scale = activity[:split].std()
    series = activity / scale
    x_all, y_all = windows(series, LOOKBACK)
    target_years = years[LOOKBACK:]
    train = target_years < FIRST_TEST_YEAR
    x, y = x_all[train], y_all[train]
    x_test, y_test = x_all[~train], y_all[~train]

    model = Sequential([
        fl.LSTM(32, seed=args.seed, dtype="float64"),
        Dense(1, seed=args.seed + 1, dtype="float64"),
    ], seed=args.seed)
    model.compile(optimizer=Adam(0.01), loss="mse", metrics=["mae"])
    epochs = 2 if args.quick else 300
    start = time.perf_counter()
    history = model.fit(x, y, batch_size=16, epochs=epochs, validation_split=0.2,
                        callbacks=[EarlyStopping(patience=30, restore_best_weights=True)],
                        verbose=0)
    elapsed = time.perf_counter() - start

    forecast = model.predict(x_test, verbose=0)[:, 0] * scale
    actual = y_test[:, 0] * scale
    mae = np.mean(np.abs(forecast - actual))
    persistence = np.mean(np.abs(x_test[:, -1, 0] * scale - actual))
    design = np.c_[x[..., 0], np.ones(len(x))]
    coefficients = np.linalg.lstsq(design, y[:, 0], rcond=None)[0]
    linear = np.c_[x_test[..., 0], np.ones(len(x_test))] @ coefficients * scale
    linear_mae = np.mean(np.abs(linear - actual))
    best = int(np.argmin(history.history["val_loss"])) + 1
    print(f"trained {len(history.epoch)} epochs (best: {best}) in {elapsed:.1f} s")
    print(f"test years {FIRST_TEST_YEAR}-{years[-1]}, mean absolute error of one-year-ahead "
          f"forecasts:")
    print(f"  LSTM                  {mae:6.2f}")
    print(f"  persistence           {persistence:6.2f}")
    print(f"  AR({LOOKBACK}) least squares   {linear_mae:6.2f}")
    save_plots(history.history, years[LOOKBACK:][~train], actual, forecast, plot)
    if args.quick:
        return 0
    reached = mae <= TARGET_RATIO * persistence
    print(f"target: LSTM error <= {TARGET_RATIO:.0%} of persistence's "
          f"({TARGET_RATIO * persistence:.2f}): {'reached' if reached else 'NOT reached'}")
    return 0 if reached else 1


if __name__ == "__main__":
    sys.exit(main())
