"""``python -m fastlstm bench --torch-adapter``: :class:`fastlstm.torch.LSTM`
inside a PyTorch training step, against ``torch.nn.LSTM``.

A training step is what a PyTorch script runs: the module's forward pass
over a batch (``batch_first=True``, the layout fastlstm computes in), then
``output.sum().backward()`` into the input and every parameter, with the
gradients reset before each step. Each size is timed on a padded batch and on
a packed one (``pack_padded_sequence`` of random lengths uniform between T/4
and T, unsorted, packed once outside the timing), for both modules, in the
interleaved turns of :func:`fastlstm.tools.bench.interleaved_medians`, beside
fastlstm's own functional training step (:func:`fastlstm.lstm_forward` and
:func:`fastlstm.lstm_backward`) on the padded batch. So the adapter's ratio to
``torch.nn.LSTM`` can be compared with fastlstm's own ratio from the same
run: their quotient is the adapter's overhead. The packed batch is the padded
one with its padding dropped, so the adapter's packed time over its padded
time is what skipping the padding saves. As in the main benchmark, both
modules' outputs and gradients are compared before anything is timed.

A projected LSTM (``proj_size = hidden_size / 2``) has a row of its own at
:data:`PROJECTION_SIZES`: the same training step of both modules on the
padded batch, since ``torch.nn.LSTM(proj_size=...)`` runs PyTorch's own
loop (oneDNN has no projection).
"""
import sys

import numpy as np

from .. import _config, _kernels, convert
from . import bench
from .sizes import SIZES

__all__ = ["run"]

# Timed calls per module and size: fewer than the main benchmark's, since
# five steps take turns. torch.nn.LSTM leaves oneDNN on packed input and
# runs many times slower there, so its packed steps get fewer turns.
ROUNDS = {"tiny": 200, "small": 60, "medium": 15, "large": 12, "long": 20, "one": 60,
          "few": 60}
PACKED_TORCH_ROUNDS = {"tiny": 40, "small": 15, "medium": 5, "large": 5, "long": 3, "one": 20,
                       "few": 15}

# Targets: the adapter's ratio to torch.nn.LSTM within 10% of fastlstm's own
# at these sizes; packed batches 3x faster than torch.nn.LSTM's, and at most
# 0.75 of the adapter's own time on the same batch padded.
OVERHEAD_SIZES = ("medium", "large")
TARGET_OVERHEAD = 0.10
TARGET_PACKED_SPEEDUP = 3.0
TARGET_PACKED_OVER_PADDED = 0.75

_STEPS = ("functional", "adapter", "torch", "adapter packed", "torch packed")

# The projected LSTM's row: its sizes, and its target, the adapter's time at
# most this fraction of torch.nn.LSTM(proj_size=hidden_size // 2)'s.
PROJECTION_SIZES = ("medium",)
TARGET_PROJECTION = 0.67


def _modules(kernel, recurrent_kernel, bias, dtype):
    """torch.nn.LSTM and fastlstm.torch.LSTM with fastlstm's weights."""
    import torch
    import fastlstm.torch

    input_dim, units = kernel.shape[0], recurrent_kernel.shape[0]
    state_dict = {name: torch.from_numpy(value) for name, value in
                  convert.to_torch_state_dict([[kernel, recurrent_kernel, bias]]).items()}
    modules = []
    for cls in (fastlstm.torch.LSTM, torch.nn.LSTM):
        module = cls(input_dim, units, batch_first=True, dtype=dtype)
        module.load_state_dict(state_dict)
        modules.append(module)
    return modules


def _packed_batch(x, seed=1):
    """``x`` as a packed batch of random lengths uniform between T/4 and T,
    unsorted, whose data is a leaf tensor that requires grad."""
    import torch
    from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence

    timesteps = x.shape[1]
    lengths = np.random.default_rng(seed).integers(-(-timesteps // 4), timesteps + 1,
                                                   x.shape[0])
    packed = pack_padded_sequence(torch.from_numpy(x), torch.from_numpy(lengths),
                                  batch_first=True, enforce_sorted=False)
    data = packed.data.clone().requires_grad_(True)
    return PackedSequence(data, packed.batch_sizes, packed.sorted_indices,
                          packed.unsorted_indices)


def _training_step(module, inputs):
    """A training step of ``module`` on ``inputs`` (a tensor or a packed
    batch, requiring grad); returns the output and the gradients."""
    from torch.nn.utils.rnn import PackedSequence

    leaf = inputs.data if isinstance(inputs, PackedSequence) else inputs

    def step():
        module.zero_grad(set_to_none=True)
        leaf.grad = None
        output, _ = module(inputs)
        output = output.data if isinstance(output, PackedSequence) else output
        output.sum().backward()
        return output

    def check():
        output = step()
        found = {"outputs": output.detach().numpy(), "x": leaf.grad.numpy()}
        found.update({name: p.grad.numpy() for name, p in module.named_parameters()})
        return found

    return step, check


def _bench_size(shape, dtype, rounds, packed_torch_rounds, burst):
    import torch

    x, kernel, recurrent_kernel, bias = bench._inputs(*shape, dtype)
    adapter, reference = _modules(kernel, recurrent_kernel, bias,
                                  {np.float32: torch.float32, np.float64: torch.float64}[dtype])
    x_tensor = torch.from_numpy(x).requires_grad_(True)
    packed = _packed_batch(x)
    steps, checks = {}, {}
    steps["functional"] = bench._fastlstm("functional", "fast", x, kernel, recurrent_kernel,
                                           bias).train
    for name, module, inputs in (("adapter", adapter, x_tensor), ("torch", reference, x_tensor),
                                 ("adapter packed", adapter, packed),
                                 ("torch packed", reference, packed)):
        steps[name], checks[name] = _training_step(module, inputs)

    errors = []
    for name in ("adapter", "adapter packed"):
        bad = bench._mismatch(checks[name](), checks[name.replace("adapter", "torch")](),
                               np.dtype(dtype))
        if bad:
            errors.append(f"fastlstm.torch.LSTM disagrees with torch.nn.LSTM "
                          f"({'packed' if 'packed' in name else 'padded'}): {'; '.join(bad)}")
    if errors:
        return {"median_ms": {}, "ratios": {}, "errors": errors}
    step_rounds = {name: packed_torch_rounds if name == "torch packed" else rounds
                   for name in _STEPS}
    medians, times = bench.interleaved_medians(steps, step_rounds, burst,
                                                bench.PAUSE_SECONDS)
    return {
        "rounds": step_rounds,
        "burst": burst,
        "median_ms": medians,
        "times_ms": times,
        "mean_length": float(packed.data.shape[0] / shape[0]),
        "ratios": {
            "adapter_over_torch": medians["adapter"] / medians["torch"],
            "functional_over_torch": medians["functional"] / medians["torch"],
            "adapter_over_functional": medians["adapter"] / medians["functional"],
            "packed_torch_over_adapter": medians["torch packed"] / medians["adapter packed"],
            "packed_over_padded_torch": medians["torch packed"] / medians["torch"],
            "packed_over_padded_adapter": medians["adapter packed"] / medians["adapter"],
        },
        "errors": [],
    }


def _bench_projection(shape, dtype, rounds, burst):
    """A training step of fastlstm.torch.LSTM and torch.nn.LSTM, both with
    ``proj_size = units // 2``, on the padded batch of ``shape``."""
    import torch
    import fastlstm.torch

    batch, timesteps, input_dim, units = shape
    x = bench._inputs(*shape, dtype)[0]
    torch_dtype = {np.float32: torch.float32, np.float64: torch.float64}[dtype]
    reference = torch.nn.LSTM(input_dim, units, proj_size=units // 2, batch_first=True,
                              dtype=torch_dtype)
    adapter = fastlstm.torch.LSTM(input_dim, units, proj_size=units // 2, batch_first=True,
                                  dtype=torch_dtype)
    adapter.load_state_dict(reference.state_dict())
    x_tensor = torch.from_numpy(x).requires_grad_(True)
    steps, checks = {}, {}
    for name, module in (("adapter", adapter), ("torch", reference)):
        steps[name], checks[name] = _training_step(module, x_tensor)
    bad = bench._mismatch(checks["adapter"](), checks["torch"](), np.dtype(dtype))
    if bad:
        return {"median_ms": {}, "ratios": {},
                "errors": [f"fastlstm.torch.LSTM(proj_size) disagrees with "
                           f"torch.nn.LSTM(proj_size): {'; '.join(bad)}"]}
    medians, times = bench.interleaved_medians(steps, {name: rounds for name in steps}, burst,
                                                bench.PAUSE_SECONDS)
    return {"proj_size": units // 2, "rounds": rounds, "burst": burst, "median_ms": medians,
            "times_ms": times,
            "ratios": {"adapter_over_torch": medians["adapter"] / medians["torch"]},
            "errors": []}


def _print_projection(name, shape, result, file):
    batch, timesteps, input_dim, units = shape
    print(f"\n{name}, projected: B={batch} T={timesteps} I={input_dim} H={units} "
          f"proj_size={units // 2}, training step (forward, output.sum().backward())",
          file=file)
    for error in result["errors"]:
        print(f"  ERROR: {error}; not timed", file=file)
    if result["errors"]:
        return
    medians, ratio = result["median_ms"], result["ratios"]["adapter_over_torch"]
    print(f"  {'median ms':<44}{'padded':>10}", file=file)
    print(f"  {'fastlstm.torch.LSTM(proj_size)':<44}{bench._ms(medians['adapter']):>10}",
          file=file)
    print(f"  {'torch.nn.LSTM(proj_size)':<44}{bench._ms(medians['torch']):>10}", file=file)
    print(f"  {'ratio':<44}{'value':>10}   target", file=file)
    verdict = "met" if ratio <= TARGET_PROJECTION else "MISSED"
    print(f"  {'projected  adapter / torch.nn.LSTM':<44}{ratio:>10.2f}   "
          f"<= {TARGET_PROJECTION:<6} {verdict}", file=file)


def _print_size(name, shape, result, file):
    batch, timesteps, input_dim, units = shape
    print(f"\n{name}: B={batch} T={timesteps} I={input_dim} H={units}, training step "
          f"(forward, output.sum().backward())", file=file)
    for error in result["errors"]:
        print(f"  ERROR: {error}; not timed", file=file)
    if result["errors"]:
        return
    medians, ratios = result["median_ms"], result["ratios"]
    print(f"  {'median ms':<44}{'padded':>10}{'packed':>10}", file=file)
    print(f"  {'fastlstm.torch.LSTM':<44}{bench._ms(medians['adapter']):>10}"
          f"{bench._ms(medians['adapter packed']):>10}", file=file)
    print(f"  {'torch.nn.LSTM':<44}{bench._ms(medians['torch']):>10}"
          f"{bench._ms(medians['torch packed']):>10}", file=file)
    print(f"  {'fastlstm functional (lstm_forward/backward)':<44}"
          f"{bench._ms(medians['functional']):>10}{'-':>10}", file=file)
    overhead = ratios["adapter_over_functional"] - 1
    rows = [
        ("padded  adapter / torch.nn.LSTM", ratios["adapter_over_torch"], None),
        ("padded  functional / torch.nn.LSTM", ratios["functional_over_torch"], None),
        ("padded  adapter / functional - 1", overhead,
         (abs(overhead) <= TARGET_OVERHEAD, f"|x| <= {TARGET_OVERHEAD}")
         if name in OVERHEAD_SIZES else None),
        ("packed  torch.nn.LSTM / adapter", ratios["packed_torch_over_adapter"],
         (ratios["packed_torch_over_adapter"] >= TARGET_PACKED_SPEEDUP,
          f">= {TARGET_PACKED_SPEEDUP}")),
        ("packed / padded  fastlstm.torch.LSTM", ratios["packed_over_padded_adapter"],
         (ratios["packed_over_padded_adapter"] <= TARGET_PACKED_OVER_PADDED,
          f"<= {TARGET_PACKED_OVER_PADDED}")),
        ("packed / padded  torch.nn.LSTM", ratios["packed_over_padded_torch"], None),
    ]
    print(f"  {'ratio':<44}{'value':>10}   target", file=file)
    for label, value, target in rows:
        verdict = "" if target is None else f"{target[1]:<9} {'met' if target[0] else 'MISSED'}"
        print(f"  {label:<44}{value:>10.2f}   {verdict}".rstrip(), file=file)


def run(sizes=None, repeat=None, dtype="float32", threads=None, file=None, graphs=None):
    """Time fastlstm.torch.LSTM in PyTorch training steps; print and return the results.

    Parameters
    ----------
    sizes : list of str or None
        Names of :data:`fastlstm.tools.sizes.SIZES`; None runs all.
    repeat : int or None
        Timed steps of each module per size (torch.nn.LSTM on packed batches
        at most :data:`PACKED_TORCH_ROUNDS`); None uses :data:`ROUNDS`.
    dtype : {"float32", "float64"}
    threads : int or None
        Threads for fastlstm and PyTorch; None keeps fastlstm's default.
    file : file-like or None
        Where to print; ``sys.stdout`` when None.
    graphs : bool or None
        Also time ``num_layers=2`` against two chained layers, and a model
        compiled with ``torch.compile`` against the eager one
        (:mod:`fastlstm.tools.torch_graphs`); None does when ``sizes`` is
        None.

    Returns
    -------
    dict
        Per size: median times of the five steps, ratios, errors; under
        ``"projection"``, the projected LSTM's row at :data:`PROJECTION_SIZES`;
        with ``graphs``, its results under ``"graphs"``.
    """
    import torch

    file = sys.stdout if file is None else file
    graphs = sizes is None if graphs is None else graphs
    sizes = list(SIZES) if sizes is None else list(sizes)
    unknown = [name for name in sizes if name not in SIZES]
    if unknown:
        raise ValueError(f"unknown size(s) {unknown}; the sizes are {list(SIZES)}")
    dtype = np.dtype(dtype).type
    if threads is not None:
        _config.set_num_threads(threads)
    threads = _config.num_threads()
    torch.set_num_threads(threads)
    print(f"\nfastlstm.torch.LSTM in a PyTorch training step: {_kernels.current_name()} "
          f"kernels, torch {torch.__version__}, {np.dtype(dtype).name}, {threads} thread(s) "
          f"each; packed: random lengths uniform between T/4 and T", file=file)
    results = {"kernels": _kernels.current_name(), "torch": torch.__version__,
               "threads": threads, "dtype": np.dtype(dtype).name, "sizes": {}}
    for name in sizes:
        rounds = ROUNDS[name] if repeat is None else repeat
        result = _bench_size(SIZES[name], dtype, rounds,
                             min(rounds, PACKED_TORCH_ROUNDS[name]),
                             min(rounds, bench.BURST[name]))
        results["sizes"][name] = result
        _print_size(name, SIZES[name], result, file)
        file.flush()
        if name in PROJECTION_SIZES:
            projected = _bench_projection(SIZES[name], dtype, rounds,
                                          min(rounds, bench.BURST[name]))
            results.setdefault("projection", {})[name] = projected
            _print_projection(name, SIZES[name], projected, file)
            file.flush()
    if graphs:
        from . import torch_graphs

        results["graphs"] = torch_graphs.run(dtype=np.dtype(dtype).name, repeat=repeat,
                                             file=file)
    return results
