"""The stack and compile part of ``python -m fastlstm bench --torch-adapter``.

Two questions about :class:`fastlstm.torch.LSTM` that the per-size table
does not answer:

- **Stacked layers.** A unidirectional ``num_layers=2`` module runs as one
  call of the stack kernels (pipelined where the planner says so). It is
  timed against the same two layers run one after the other, as two
  ``num_layers=1`` modules chained: what ``num_layers > 1`` cost when each
  layer was its own call.
- **torch.compile.** A model holding the adapter, compiled with
  ``torch.compile(fullgraph=True)``, against the same model run eagerly: the
  custom operators should make compiling cost nothing.

Each is a training step (forward, ``output.sum().backward()``, gradients
reset before each step), timed in the interleaved turns of
:func:`fastlstm.tools.bench.interleaved_medians` after the outputs and
gradients of the two ways were checked to agree.
"""
import numpy as np

from . import bench
from .sizes import SIZES

__all__ = ["STACK_SIZE", "COMPILE_SIZES", "TARGET_STACK", "TARGET_COMPILE", "run"]

STACK_SIZE = "few"
COMPILE_SIZES = ("small", "few")
# num_layers=2 as one module <= TARGET_STACK x the two layers chained; the
# compiled model <= TARGET_COMPILE x the eager one.
TARGET_STACK = 0.8
TARGET_COMPILE = 1.1
ROUNDS = {"tiny": 200, "small": 60, "medium": 15, "large": 12, "long": 20, "one": 60,
          "few": 60}


class _Chained:
    """Two one-layer adapter modules run one after the other: the weights of
    a two-layer one, each layer its own call."""

    def __init__(self, stacked):
        import torch
        import fastlstm.torch

        self.layers = []
        for k in range(stacked.num_layers):
            layer = fastlstm.torch.LSTM(stacked.input_size if k == 0 else stacked.hidden_size,
                                        stacked.hidden_size, batch_first=True,
                                        dtype=stacked.weight_ih_l0.dtype)
            with torch.no_grad():
                for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
                    getattr(layer, f"{name}_l0").copy_(getattr(stacked, f"{name}_l{k}"))
            self.layers.append(layer)

    def __call__(self, x):
        for layer in self.layers:
            x, _ = layer(x)
        return x, None

    def gradients(self):
        return {f"{name[:-1]}{k}": p.grad.numpy() for k, layer in enumerate(self.layers)
                for name, p in layer.named_parameters()}


def _step(call, parameters, x):
    """A training step of ``call`` on the leaf ``x``, returning the output."""

    def step():
        for p in parameters():
            p.grad = None
        x.grad = None
        output, _ = call(x)
        output.sum().backward()
        return output

    return step


def _stack(dtype, rounds, burst):
    import torch
    import fastlstm.torch

    batch, timesteps, input_dim, units = SIZES[STACK_SIZE]
    torch.manual_seed(0)
    stacked = fastlstm.torch.LSTM(input_dim, units, num_layers=2, batch_first=True,
                                  dtype=dtype)
    chained = _Chained(stacked)
    x = torch.randn(batch, timesteps, input_dim, dtype=dtype, requires_grad=True)
    steps = {
        "num_layers=2": _step(stacked, stacked.parameters, x),
        "two layers chained": _step(chained, lambda: [p for layer in chained.layers
                                                      for p in layer.parameters()], x),
    }
    found = {}
    for name, step in steps.items():
        output = step()
        grads = ({k: p.grad.numpy().copy() for k, p in stacked.named_parameters()}
                 if name == "num_layers=2" else chained.gradients())
        found[name] = {"outputs": output.detach().numpy().copy(), "x": x.grad.numpy().copy(),
                       **grads}
    bad = bench._mismatch(found["num_layers=2"], found["two layers chained"],
                          np.dtype(str(dtype).split(".")[-1]))
    if bad:
        return {"errors": [f"num_layers=2 disagrees with two chained layers: {'; '.join(bad)}"]}
    medians, times = bench.interleaved_medians(steps, dict.fromkeys(steps, rounds), burst,
                                                bench.PAUSE_SECONDS)
    return {"size": STACK_SIZE, "median_ms": medians, "times_ms": times,
            "ratio": medians["num_layers=2"] / medians["two layers chained"], "errors": []}


def _model(input_dim, units, dtype):
    """A small PyTorch model around the adapter: the LSTM, then a linear head
    on every step."""
    import torch
    import fastlstm.torch

    class Model(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lstm = fastlstm.torch.LSTM(input_dim, units, batch_first=True, dtype=dtype)
            self.head = torch.nn.Linear(units, 8, dtype=dtype)

        def forward(self, x):
            return self.head(self.lstm(x)[0]), None

    return Model()


def _compile(name, dtype, rounds, burst):
    import torch

    batch, timesteps, input_dim, units = SIZES[name]
    torch.manual_seed(0)
    model = _model(input_dim, units, dtype)
    compiled = torch.compile(model, fullgraph=True)
    x = torch.randn(batch, timesteps, input_dim, dtype=dtype, requires_grad=True)
    steps = {"eager": _step(model, model.parameters, x),
             "compiled": _step(compiled, model.parameters, x)}
    found = {}
    for key, step in steps.items():
        output = step()
        found[key] = {"outputs": output.detach().numpy().copy(), "x": x.grad.numpy().copy(),
                      **{k: p.grad.numpy().copy() for k, p in model.named_parameters()}}
    bad = bench._mismatch(found["compiled"], found["eager"],
                          np.dtype(str(dtype).split(".")[-1]))
    if bad:
        return {"errors": [f"the compiled model disagrees with the eager one: "
                           f"{'; '.join(bad)}"]}
    medians, times = bench.interleaved_medians(steps, dict.fromkeys(steps, rounds), burst,
                                                bench.PAUSE_SECONDS)
    return {"size": name, "median_ms": medians, "times_ms": times,
            "ratio": medians["compiled"] / medians["eager"], "errors": []}


def _verdict(value, target):
    return f"<= {target:<6} {'met' if value <= target else 'MISSED'}"


def run(dtype="float32", repeat=None, file=None):
    """Time the stacked and the compiled adapter; print and return the results.

    Returns
    -------
    dict
        ``"stack"`` and ``"compile"`` (per size): median times, the ratio and
        any disagreement found before timing (``"errors"``).
    """
    import sys
    import torch

    file = sys.stdout if file is None else file
    torch_dtype = {"float32": torch.float32, "float64": torch.float64}[np.dtype(dtype).name]
    results = {"stack": None, "compile": {}}

    def rounds(size):
        return ROUNDS[size] if repeat is None else repeat

    stack = _stack(torch_dtype, rounds(STACK_SIZE), min(rounds(STACK_SIZE),
                                                         bench.BURST[STACK_SIZE]))
    results["stack"] = stack
    batch, timesteps, input_dim, units = SIZES[STACK_SIZE]
    print(f"\nfastlstm.torch.LSTM(num_layers=2) against two one-layer modules chained, "
          f"{STACK_SIZE}: B={batch} T={timesteps} I={input_dim} H={units}, training step",
          file=file)
    for error in stack["errors"]:
        print(f"  ERROR: {error}; not timed", file=file)
    if not stack["errors"]:
        for key, value in stack["median_ms"].items():
            print(f"  {key:<44}{bench._ms(value):>10} ms", file=file)
        print(f"  {'num_layers=2 / chained':<44}{stack['ratio']:>10.2f}   "
              f"{_verdict(stack['ratio'], TARGET_STACK)}", file=file)

    print("\ntorch.compile(fullgraph=True) of a model with fastlstm.torch.LSTM "
          "(LSTM, Linear head) against the same model eager, training step", file=file)
    for name in COMPILE_SIZES:
        result = _compile(name, torch_dtype, rounds(name), min(rounds(name), bench.BURST[name]))
        results["compile"][name] = result
        for error in result["errors"]:
            print(f"  {name}: ERROR: {error}; not timed", file=file)
        if not result["errors"]:
            medians = result["median_ms"]
            print(f"  {name:<8} eager {bench._ms(medians['eager']):>8} ms, compiled "
                  f"{bench._ms(medians['compiled']):>8} ms, compiled / eager "
                  f"{result['ratio']:.2f}   {_verdict(result['ratio'], TARGET_COMPILE)}",
                  file=file)
        file.flush()
    return results
