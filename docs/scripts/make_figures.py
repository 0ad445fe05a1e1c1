"""Make the documentation's figures and the performance table.

Run by ``docs/conf.py`` at every build, or by hand::

    python docs/scripts/make_figures.py [--bench docs/_static/bench.json] [--out docs/_generated]

It writes, into the output folder:

``unrolled_cell.png``
    One LSTM cell called once per time step, its states carried from each
    step to the next (the user guide).
``training_step_time.png``
    Median time of a training step against its size for fastlstm, PyTorch,
    Keras/TensorFlow and the NumPy reference (the performance page).
``bench_table.rst``
    The peer tables (training, inference) of the performance page.
``sizes_table.rst``
    The benchmark's sizes, from :data:`fastlstm.tools.sizes.SIZES`.

fastlstm's, PyTorch's and the NumPy reference's times come from the JSON that
``python -m fastlstm bench --json PATH`` writes. TensorFlow is not installed
with fastlstm's test or docs extras, so Keras/TensorFlow's times are
constants below, measured separately on the same kind of machine; the figure
and the table say so.
"""
import argparse
import json
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.patches import FancyBboxPatch  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
DOCS = os.path.dirname(HERE)
DEFAULT_BENCH = os.path.join(DOCS, "_static", "bench.json")
DEFAULT_OUT = os.path.join(DOCS, "_generated")

# Keras 3.15 on TensorFlow 2.21, on the machine of the benchmark run,
# float32, 2 threads, median ms of a training step, measured separately.
KERAS_LABEL = "Keras 3.15 / TF 2.21"
KERAS_TRAIN_MS = {"tiny": 2.89, "small": 8.22, "medium": 149.0, "large": 306.0, "long": 65.1}

# Colours and markers, one per implementation, the same in every figure.
STYLE = {
    "fast": dict(label="fastlstm", color="#1f77b4", marker="o"),
    "torch": dict(label="PyTorch", color="#d62728", marker="s"),
    "keras": dict(label=f"{KERAS_LABEL} (measured separately)", color="#ff7f0e",
                  marker="^", linestyle="--", markerfacecolor="white"),
    "reference": dict(label="NumPy reference", color="#2ca02c", marker="D"),
}


def load_bench(path):
    """The results ``python -m fastlstm bench --json`` wrote."""
    with open(path) as stream:
        return json.load(stream)


def sizes_by_flops(bench):
    """Size names, smallest training step first."""
    return sorted(bench["sizes"], key=lambda name: bench["sizes"][name]["training_flops"])


def training_ms(bench, name):
    """Median training-step times of one size, keyed as :data:`STYLE`."""
    times = dict(bench["sizes"][name]["median_ms"]["training"])
    if name in KERAS_TRAIN_MS:
        times["keras"] = KERAS_TRAIN_MS[name]
    return times


def plot_training_time(bench, path):
    names = sizes_by_flops(bench)
    flops = [bench["sizes"][name]["training_flops"] for name in names]
    fig, ax = plt.subplots(figsize=(7.5, 4.8), dpi=110)
    for key, style in STYLE.items():
        points = [(f, training_ms(bench, n)[key]) for f, n in zip(flops, names)
                  if key in training_ms(bench, n)]
        if points:
            ax.plot(*zip(*points), **style)
    ceiling = [(f, bench["sizes"][n]["ceiling_ms"]) for f, n in zip(flops, names)
               if bench["sizes"][n].get("ceiling_ms")]
    if ceiling:
        ax.plot(*zip(*ceiling), color="grey", linestyle=":",
                label="sgemm ceiling (375 GFLOP/s)")
    # The rate a 2048^3 sgemm reached in this run (benchmarks that record it).
    measured = [(f, bench["sizes"][n]["sgemm_ms"]) for f, n in zip(flops, names)
                if bench["sizes"][n].get("sgemm_ms")]
    if measured:
        rates = [bench["sizes"][n]["sgemm_gflops"] for n in names
                 if bench["sizes"][n].get("sgemm_ms")]
        ax.plot(*zip(*measured), color="grey", linestyle="--",
                label=f"sgemm in this run ({min(rates):.0f}-{max(rates):.0f} GFLOP/s)")
    ax.set_xscale("log")
    ax.set_yscale("log")
    bottom, top = ax.get_ylim()
    ax.set_ylim(bottom, top * 4)  # room for the size names above the data
    for f, name in zip(flops, names):
        ax.annotate(name, (f, 1), xycoords=("data", "axes fraction"), xytext=(0, -4),
                    textcoords="offset points", ha="center", va="top", fontsize=8,
                    color="dimgrey")
    ax.set_xlabel("FLOPs of one training step, 24·B·T·H·(I+H)")
    ax.set_ylabel("median time of a training step (ms)")
    ax.set_title(f"Training step (forward + BPTT), {bench['dtype']}, "
                 f"{bench['threads']} threads", fontsize=10)
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _box(ax, x, y, w, h, text, face, fontsize=10):
    ax.add_patch(FancyBboxPatch((x - w / 2, y - h / 2), w, h,
                                boxstyle="round,pad=0.02,rounding_size=0.08",
                                facecolor=face, edgecolor="black", linewidth=1.2))
    ax.text(x, y, text, ha="center", va="center", fontsize=fontsize)


def _arrow(ax, start, end, text=None, offset=(0, 0), color="black"):
    ax.annotate("", xy=end, xytext=start,
                arrowprops=dict(arrowstyle="-|>", color=color, linewidth=1.3,
                                shrinkA=0, shrinkB=0))
    if text:
        ax.text((start[0] + end[0]) / 2 + offset[0], (start[1] + end[1]) / 2 + offset[1], text,
                ha="center", va="center", fontsize=9, color=color)


def plot_unrolled_cell(path, timesteps=4):
    """The cell drawn once per time step: the same weights at every step,
    (h, c) carried to the next step, one output h_t per step."""
    fig, ax = plt.subplots(figsize=(8.5, 3.6), dpi=110)
    spacing, width, height = 2.2, 1.3, 1.0
    xs = [2.1 + spacing * t for t in range(timesteps)]
    _box(ax, 0.0, 1.5, 1.2, 0.9, "$h_0, c_0$\nzeros, or\ninitial_state", "#eeeeee", 8)
    previous = (0.6, 1.5)
    for t, x in enumerate(xs, start=1):
        _box(ax, x, 1.5, width, height, "LSTM cell\n$i, f, \\tilde c, o$", "#cfe2f3")
        _arrow(ax, previous, (x - width / 2, 1.5), f"$h_{{{t - 1}}}, c_{{{t - 1}}}$",
               offset=(0, 0.22))
        _arrow(ax, (x, 0.15), (x, 1.5 - height / 2))
        ax.text(x, 0.0, f"$x_{{{t}}}$  = x[:, {t - 1}, :]", ha="center", va="top", fontsize=9)
        _arrow(ax, (x, 1.5 + height / 2), (x, 2.75))
        ax.text(x, 2.85, f"$h_{{{t}}}$", ha="center", va="bottom", fontsize=10)
        previous = (x + width / 2, 1.5)
    _arrow(ax, previous, (previous[0] + 0.8, 1.5), f"$h_{{{timesteps}}}, c_{{{timesteps}}}$",
           offset=(0.05, 0.22))
    ax.text(previous[0] + 0.9, 1.5, "return_state", ha="left", va="center", fontsize=8,
            color="dimgrey")
    ax.text(xs[-1], 3.35, f"last output (default): $h_{{{timesteps}}}$", ha="center",
            va="center", fontsize=8, color="dimgrey")
    ax.text((xs[0] + xs[-1]) / 2, 3.35,
            f"return_sequences=True: $h_1, \\ldots, h_{{{timesteps}}}$",
            ha="center", va="center", fontsize=8, color="dimgrey")
    ax.text((xs[0] + xs[-1]) / 2, -0.55,
            "the same kernel, recurrent_kernel and bias at every step",
            ha="center", va="center", fontsize=9, style="italic")
    ax.set_xlim(-0.7, xs[-1] + 2.3)
    ax.set_ylim(-0.8, 3.6)
    ax.axis("off")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _ms(value):
    if value is None:
        return "–"
    return f"{value:.3g}" if value < 100 else f"{value:.0f}"


def _list_table(title, header, rows):
    lines = [f".. list-table:: {title}", "   :header-rows: 1", ""]
    for row in [header] + rows:
        lines.append(f"   * - {row[0]}")
        lines.extend(f"     - {cell}" for cell in row[1:])
    return lines


def bench_table(bench):
    """The peer tables as RST list-tables: training, then inference, each
    narrow enough for the page."""
    training_header = ["size (B, T, I, H)", "fastlstm", "PyTorch",
                       f"{KERAS_LABEL} [#keras]_", "NumPy", "ceiling",
                       "sgemm rate [#sgemm]_", "fastlstm / PyTorch"]
    inference_header = ["size (B, T, I, H)", "fastlstm", "PyTorch", "ONNX Runtime"]
    training_rows, inference_rows = [], []
    for name in bench["sizes"]:
        result = bench["sizes"][name]
        shape, train = result["shape"], training_ms(bench, name)
        size = (f"{name} ({shape['batch']}, {shape['timesteps']}, {shape['input_dim']}, "
                f"{shape['units']})")
        infer = result["median_ms"]["inference"]
        ratio = result["ratios"].get("training_fast_over_torch")
        training_rows.append([size, _ms(train.get("fast")), _ms(train.get("torch")),
                              _ms(train.get("keras")), _ms(train.get("reference")),
                              _ms(result.get("ceiling_ms")), _ms(result.get("sgemm_ms")),
                              "–" if ratio is None else f"{ratio:.2f}"])
        inference_rows.append([size, _ms(infer.get("fast")), _ms(infer.get("torch")),
                               _ms(infer.get("onnxruntime"))])
    threads = f"float32, {bench['threads']} threads"
    lines = (_list_table(f"Training step: median milliseconds, {threads}", training_header,
                         training_rows)
             + [""]
             + _list_table(f"Inference: median milliseconds, {threads}", inference_header,
                           inference_rows))
    summary = _summary(bench)
    if summary:
        lines += ["", summary]
    peers = ", ".join(f"{name} {version}" for name, version in bench["peers"].items())
    lines += ["", f".. [#keras] {KERAS_LABEL}, measured separately on the same kind "
              "of machine (TensorFlow is not installed with fastlstm), not in this run.", "",
              ".. [#sgemm] The training step's operations at the rate a 2048 × 2048 "
              "single-precision product reached in this run, on the same threads.", "",
              f"This run: fastlstm {bench['fastlstm']} ({bench['kernels']} kernels, BLAS core "
              f"type {bench['blas']['corename']}), {peers}.", ""]
    return "\n".join(lines)


def sizes_table():
    """The benchmark's sizes as an RST list-table, read from fastlstm itself."""
    from fastlstm.tools.bench import training_flops
    from fastlstm.tools.sizes import SIZES

    header = ["size", "B", "T", "I", "H", "training step, MFLOP"]
    rows = [[name, *shape, f"{training_flops(*shape) / 1e6:,.0f}"]
            for name, shape in SIZES.items()]
    return "\n".join(_list_table("The benchmark's sizes", header, rows) + [""])


def _range(values, digits=2):
    values = [v for v in values if v is not None]
    if not values:
        return None
    low, high = min(values), max(values)
    return f"{low:.{digits}f}" if f"{low:.{digits}f}" == f"{high:.{digits}f}" \
        else f"{low:.{digits}f} to {high:.{digits}f}"


def _summary(bench):
    """One sentence of the run's ratios, over all sizes."""
    ratios = [result["ratios"] for result in bench["sizes"].values()]
    parts = []
    torch = _range([r.get("training_fast_over_torch") for r in ratios])
    if torch:
        parts.append(f"fastlstm's training step took {torch} times as long as PyTorch's")
    reference = _range([r.get("training_reference_over_fast") for r in ratios], 1)
    if reference:
        parts.append(f"the NumPy reference's took {reference} times as long as fastlstm's")
    infer = _range([r.get("inference_fast_over_fastest_peer") for r in ratios])
    if infer:
        parts.append(f"fastlstm's inference took {infer} times as long as the faster of "
                     f"PyTorch and ONNX Runtime")
    if not parts:
        return ""
    return "Over the sizes of this run, " + "; ".join(parts) + "."


def make_all(bench_path=DEFAULT_BENCH, out=DEFAULT_OUT):
    """Write every figure and the table into ``out``; return their paths."""
    os.makedirs(out, exist_ok=True)
    bench = load_bench(bench_path)
    paths = [os.path.join(out, name) for name in
             ("unrolled_cell.png", "training_step_time.png", "bench_table.rst",
              "sizes_table.rst")]
    plot_unrolled_cell(paths[0])
    plot_training_time(bench, paths[1])
    with open(paths[2], "w") as stream:
        stream.write(bench_table(bench))
    with open(paths[3], "w") as stream:
        stream.write(sizes_table())
    return paths


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--bench", default=DEFAULT_BENCH,
                        help="JSON of `python -m fastlstm bench --json` (default: %(default)s)")
    parser.add_argument("--out", default=DEFAULT_OUT, help="output folder (default: %(default)s)")
    args = parser.parse_args(argv)
    for path in make_all(args.bench, args.out):
        print(path)


if __name__ == "__main__":
    main()
