"""``python -m fastlstm``: the command line.

``demo``   train a character-level language model on the standard library's
           docstrings for a bounded time, against the NumPy reference's speed.
``info``   fastlstm's configuration: versions, BLAS library, kernel family, threads.
``bench``  fastlstm against the NumPy reference, PyTorch and ONNX Runtime, at
           the benchmark's sizes (fastlstm/tools/sizes.py): median times of a
           training step and of inference; with ``--generation``, sampling one
           step per call; with ``--busy``, 2 threads against 1 beside a busy
           core; with ``--torch-adapter``, also fastlstm.torch.LSTM in PyTorch
           training steps, padded and packed; with ``--keras``,
           fastlstm.keras.LSTM in Keras 3's fit on each backend.

What the commands run lives in fastlstm/tools/.
"""
import argparse
import sys

# The names the options offer. Neither module imports more than NumPy (which
# fastlstm has loaded), so parsing the command line starts no benchmark.
from .tools.models import MODELS
from .tools.sizes import SIZES


def _demo(args):
    from .tools.demo import run

    return run(seconds=args.seconds, units=args.units, seed=args.seed, threads=args.threads)


def _info(args):
    from ._config import show_config

    show_config()
    return 0


def _bench(args):
    if args.keras:
        from .tools.keras_adapter import run as run_keras

        results = run_keras(models=args.models or None, turns=args.turns, epochs=args.epochs,
                            threads=args.threads)
        return 1 if any(model["errors"] for model in results["models"].values()) else 0
    if args.models is not None:
        from .tools.models import run as run_models

        results = run_models(models=args.models or None, turns=args.turns, epochs=args.epochs,
                             threads=args.threads, keras_python=args.keras_python,
                             batch_size=args.batch_size)
        return 1 if any(model["errors"] for model in results["models"].values()) else 0

    if args.int8:
        from .tools.int8 import run as run_int8

        run_int8(sizes=args.sizes, repeat=args.repeat, threads=args.threads,
                 json_path=args.json)
        return 0

    if args.busy:
        from .tools.busy import run as run_busy

        results = run_busy(repeat=args.repeat, json_path=args.json)
        return 1 if results["errors"] else 0

    import json

    from .tools.bench import run

    # --generation without --sizes is the generation mode alone.
    sizes = [] if args.generation and args.sizes is None else args.sizes
    results = run(sizes=sizes, repeat=args.repeat, dtype=args.dtype,
                  threads=args.threads, reference=args.reference,
                  json_path=None if args.torch_adapter else args.json,
                  generation=args.generation or None)
    # Non-zero when an implementation disagreed with fastlstm, so scripts notice.
    checked = list(results["sizes"].values()) + [results.get("generation") or {"errors": []}]
    if args.torch_adapter:
        from .tools.torch_adapter import run as run_adapter

        results["torch_adapter"] = run_adapter(sizes=args.sizes, repeat=args.repeat,
                                               dtype=args.dtype, threads=args.threads)
        checked += list(results["torch_adapter"]["sizes"].values())
        checked += list(results["torch_adapter"].get("projection", {}).values())
        graphs = results["torch_adapter"].get("graphs")
        if graphs:
            checked += [graphs["stack"], *graphs["compile"].values()]
        if args.json is not None:
            with open(args.json, "w") as stream:
                json.dump(results, stream, indent=1)
    return 1 if any(result["errors"] for result in checked) else 0


def _positive_float(text):
    value = float(text)
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


def _positive_int(text):
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return value


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m fastlstm",
        description="fastlstm: fast CPU training of LSTMs.",
    )
    commands = parser.add_subparsers(dest="command", metavar="command")
    demo = commands.add_parser(
        "demo", help="train a character-level language model for a bounded time",
        description="Train a character-level LSTM language model on the docstrings of "
                    "Python's standard library: text sampled before and after, the held-out "
                    "loss and accuracy, and the speed of a training step against the NumPy "
                    "reference backend.")
    demo.add_argument("--seconds", type=_positive_float, default=60.0, metavar="N",
                      help="training time in seconds (default: 60)")
    demo.add_argument("--units", type=_positive_int, default=256, metavar="N",
                      help="units of the LSTM (default: 256)")
    demo.add_argument("--seed", type=int, default=0, metavar="N",
                      help="seed of the weights, shuffling and sampling (default: 0)")
    demo.add_argument("--threads", type=_positive_int, metavar="N",
                      help="threads for fastlstm (default: fastlstm's)")
    demo.set_defaults(run=_demo)
    info = commands.add_parser("info", help="show versions, BLAS kernels and threads")
    info.set_defaults(run=_info)
    bench = commands.add_parser(
        "bench", help="time fastlstm against its peers (training step and inference)",
        description="Median times of a training step and of inference for fastlstm, its "
                    "NumPy reference and, when importable, PyTorch and ONNX Runtime, in "
                    "interleaved turns on the same inputs and weights.")
    bench.add_argument("--sizes", nargs="+", choices=list(SIZES), metavar="SIZE",
                       help=f"sizes to run, from {', '.join(SIZES)} (default: all)")
    bench.add_argument("--repeat", type=_positive_int, metavar="N",
                       help="timed calls of each implementation per size (default: "
                            "chosen per size; the reference at most 5 at the larger sizes)")
    bench.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    bench.add_argument("--threads", type=_positive_int, metavar="N",
                       help="threads for fastlstm and every peer (default: fastlstm's)")
    bench.add_argument("--no-reference", dest="reference", action="store_false",
                       help="leave out the NumPy reference")
    bench.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    bench.add_argument("--models", nargs="*", choices=list(MODELS), metavar="MODEL",
                       help=f"instead, time one epoch of fit on whole models in fastlstm, "
                            f"PyTorch and Keras, each in its own process: "
                            f"{', '.join(MODELS)} (default with no names: all)")
    bench.add_argument("--turns", type=_positive_int, default=3, metavar="N",
                       help="with --models: processes per framework, in turns (default: 3)")
    bench.add_argument("--epochs", type=_positive_int, default=2, metavar="N",
                       help="with --models: timed epochs per process (default: 2)")
    bench.add_argument("--keras-python", metavar="PATH",
                       help="with --models: the Python that has Keras (default: this one)")
    bench.add_argument("--batch-size", type=_positive_int, metavar="N",
                       help="with --models: this batch size instead of each model's own, "
                            "as many batches per epoch (small batches run stacked LSTM "
                            "layers pipelined)")
    bench.add_argument("--keras", action="store_true",
                       help="instead, time one epoch of Keras' fit on the char and stack512 "
                            "models with keras.layers.LSTM and fastlstm.keras.LSTM on each "
                            "installed Keras backend, and fastlstm's own Sequential "
                            "(--models, --turns, --epochs and --threads apply)")
    bench.add_argument("--generation", action="store_true",
                       help="time text generation: 200 one-step calls of the 'one' layer, "
                            "state carried (a stateful layer, predict_on_batch, layer.cell, "
                            "PyTorch, ONNX Runtime); alone, or beside the sizes --sizes "
                            "names (a run of all sizes includes it)")
    bench.add_argument("--busy", action="store_true",
                       help="instead, keep one core busy with a spinning process and time "
                            "fastlstm and PyTorch on 2 threads and on 1 under that load: a "
                            "training step of a small model and at 'small', inference at "
                            "'one' (--repeat applies)")
    bench.add_argument("--int8", action="store_true",
                       help="instead, time int8 inference (model.quantize('int8')) against "
                            "float32 inference and ONNX Runtime running the exported model "
                            "quantized with quantize_dynamic, at each size (--sizes, "
                            "--repeat, --threads and --json apply)")
    bench.add_argument("--torch-adapter", action="store_true",
                       help="also time fastlstm.torch.LSTM in PyTorch training steps, padded "
                            "and packed, against torch.nn.LSTM (needs PyTorch); without "
                            "--sizes, also num_layers=2 against two chained layers and "
                            "torch.compile against eager")
    bench.set_defaults(run=_bench)
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
