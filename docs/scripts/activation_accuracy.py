"""Measure the kernels' float32 sigmoid and tanh against float64 truth.

Every float32 in [-20, 20] (about 2.2 billion values, in order, by their bit
patterns): for each function the largest absolute error, relative error and
error in units in the last place (ulp) of the float32 result, and the input
where each occurs, and whether the results never decrease as the input
grows. Then the extremes (the rest of the range sampled, the largest floats,
+-inf): the largest absolute error there (sigmoid's tiny values underflow
in float32, so relative errors mean nothing there). Last, whether every
result stayed in its range ([0, 1] and [-1, 1]) and NaN gives NaN. ::

    python docs/scripts/activation_accuracy.py                 # the build in use
    python docs/scripts/activation_accuracy.py --build avx2    # another build

It takes minutes: most floats lie near 0, so a smaller --limit saves little.

The float64 functions are not measured here: the tests compare them with
NumPy's on a dense grid.
"""
import argparse

import numpy as np

from fastlstm import _kernels

CHUNK = 1 << 23


def _truth(name, x):
    x = x.astype(np.float64)
    if name == "tanh":
        return np.tanh(x)
    with np.errstate(over="ignore"):
        return 1.0 / (1.0 + np.exp(-x))


def _ulp(y):
    """The float32 ulp at the float64 values y (2^-149 below the normals)."""
    _, exponent = np.frexp(y)
    return np.ldexp(1.0, np.maximum(exponent, -125) - 24)


class Worst:
    """The largest absolute, relative and ulp errors of one function, and
    whether its results stayed in range and in order."""

    def __init__(self, name, low, high):
        self.name, self.low, self.high = name, low, high
        self.errors = {"absolute": (0.0, None), "relative": (0.0, None), "ulp": (0.0, None),
                       "extremes' absolute": (0.0, None)}
        self.last = None
        self.in_range = True
        self.monotone = True

    def _worst(self, kind, x, values):
        k = int(np.argmax(values))
        if values[k] > self.errors[kind][0]:
            self.errors[kind] = (float(values[k]), float(x[k]))

    def add(self, x, got):
        """Results on consecutive floats, ascending."""
        want = _truth(self.name, x)
        got64 = got.astype(np.float64)
        error = np.abs(got64 - want)
        nonzero = want != 0
        relative = np.where(nonzero, error / np.where(nonzero, np.abs(want), 1.0),
                            np.where(got64 == 0, 0.0, np.inf))
        self._worst("absolute", x, error)
        self._worst("relative", x, relative)
        self._worst("ulp", x, error / _ulp(want))
        self.in_range &= bool(got.min() >= self.low and got.max() <= 1)
        steps = np.diff(got if self.last is None else np.concatenate([[self.last], got]))
        self.monotone &= bool(np.all(steps >= 0))
        self.last = got[-1]

    def add_extremes(self, x, got):
        self._worst("extremes' absolute", x, np.abs(got.astype(np.float64) - _truth(self.name, x)))
        self.in_range &= bool(got.min() >= self.low and got.max() <= 1)

    def report(self):
        print(f"{self.name}:")
        for kind, (value, where) in self.errors.items():
            print(f"  max {kind} error {value:.3g} at x = {where!r}")
        print(f"  non-decreasing in the sweep: {self.monotone}; "
              f"always within [{self.low:g}, 1]: {self.in_range}")


def _sweep(limit):
    """Chunks of every float32 in [-limit, limit], ascending."""
    top = int(np.array(limit, dtype=np.float32).view(np.int32))
    for start in range(top, -1, -CHUNK):
        bits = np.arange(max(start - CHUNK + 1, 0), start + 1, dtype=np.int32)[::-1]
        yield (-bits.view(np.float32)).copy()
    for start in range(1, top + 1, CHUNK):
        yield np.arange(start, min(start + CHUNK, top + 1), dtype=np.int32).view(np.float32)


def _extremes(limit):
    big = np.geomspace(limit, np.finfo(np.float32).max, 1_000_000).astype(np.float32)
    return np.concatenate([big, -big, np.array([np.inf, -np.inf], dtype=np.float32)])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--build", help="kernel build (default: the widest this CPU runs)")
    parser.add_argument("--limit", type=float, default=20.0,
                        help="sweep every float32 in [-limit, limit] (default 20)")
    args = parser.parse_args()
    kernels = _kernels.use(args.build)
    print(f"build {_kernels.current_name()}, every float32 in [-{args.limit:g}, {args.limit:g}]"
          " and the extremes")
    functions = {"sigmoid": Worst("sigmoid", 0.0, 1.0), "tanh": Worst("tanh", -1.0, 1.0)}

    def measure(x, extremes=False):
        results = dict(zip(functions, (np.empty_like(x), np.empty_like(x))))
        kernels._activations(x, results["sigmoid"], results["tanh"])
        for name, worst in functions.items():
            (worst.add_extremes if extremes else worst.add)(x, results[name])

    for x in _sweep(args.limit):
        measure(x)
    measure(_extremes(args.limit), extremes=True)
    for worst in functions.values():
        worst.report()
    nan = np.full(64, np.nan, dtype=np.float32)
    sigmoid, tanh = np.empty_like(nan), np.empty_like(nan)
    kernels._activations(nan, sigmoid, tanh)
    print(f"NaN gives NaN: {bool(np.isnan(sigmoid).all() and np.isnan(tanh).all())}")


if __name__ == "__main__":
    main()
