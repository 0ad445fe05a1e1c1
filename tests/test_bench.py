"""``python -m fastlstm bench``: the command runs, its JSON holds the medians,
the peers' weight mappings compute fastlstm's LSTM, and a peer that disagrees
is never timed."""
import json
import sys

import numpy as np
import pytest

from fastlstm import _config, lstm_backward, lstm_forward
from fastlstm.__main__ import main
from fastlstm.tools import bench


@pytest.mark.slow
def test_bench_tiny_writes_medians(tmp_path, capsys):
    path = tmp_path / "bench.json"
    assert main(["bench", "--sizes", "tiny", "--repeat", "2", "--json", str(path)]) == 0
    printed = capsys.readouterr().out
    assert "tiny: B=8 T=20 I=16 H=32" in printed
    assert "ERROR" not in printed
    results = json.loads(path.read_text())
    assert list(results["sizes"]) == ["tiny"]
    medians = results["sizes"]["tiny"]["median_ms"]
    for task in ("training", "inference"):
        for implementation in ("fast", "reference"):
            assert medians[task][implementation] > 0
    assert results["sizes"]["tiny"]["errors"] == []


@pytest.mark.slow
def test_bench_runs_without_peers(tmp_path, capsys, monkeypatch):
    # None in sys.modules makes ``import torch`` raise ImportError.
    for module in ("torch", "onnx", "onnxruntime"):
        monkeypatch.setitem(sys.modules, module, None)
    path = tmp_path / "bench.json"
    assert main(["bench", "--sizes", "tiny", "--repeat", "2", "--json", str(path)]) == 0
    assert "peers: numpy" in capsys.readouterr().out
    results = json.loads(path.read_text())
    assert set(results["peers"]) == {"numpy"}
    assert set(results["sizes"]["tiny"]["median_ms"]["training"]) == {"fast", "reference"}


def test_interleaved_medians_runs_each_call_its_rounds():
    counts = {"a": 0, "b": 0}

    def call(name):
        def run():
            counts[name] += 1
        return run

    medians, times = bench.interleaved_medians({"a": call("a"), "b": call("b")},
                                                {"a": 7, "b": 3})
    assert [len(times["a"]), len(times["b"])] == [7, 3]
    assert counts == {"a": 8, "b": 4}  # one warm-up call each
    assert all(value >= 0 for value in medians.values())


def test_turns_with_pauses_start_with_an_untimed_call_and_time_bursts():
    order = []

    def call(name):
        def run():
            order.append(name)
        return run

    medians, times = bench.interleaved_medians(
        {"a": call("a"), "slow": call("slow")}, {"a": 5, "slow": 2},
        burst=2, pause=0.001, settle={"slow": 0.002})
    assert [len(times["a"]), len(times["slow"])] == [5, 2]
    # Warm-up; then a has three turns (2 + 2 + 1 timed calls, each turn after
    # an untimed one) and slow one turn, in the last of the three rounds.
    assert order == (["a", "slow"] + ["a"] * 3 + ["a"] * 3
                     + ["a"] * 2 + ["slow"] * 3)
    assert all(value >= 0 for value in medians.values())


def test_a_setting_is_made_before_each_turn_and_the_warm_up():
    order = []
    medians, times = bench.interleaved_medians(
        {"a": lambda: order.append("a"), "b": lambda: order.append("b")}, {"a": 4, "b": 2},
        burst=2, pause=0.001, before={"a": lambda: order.append("set a")})
    assert [len(times["a"]), len(times["b"])] == [4, 2]
    turn_of_a = ["set a"] + ["a"] * 3
    assert order == ["set a", "a", "b"] + turn_of_a + turn_of_a + ["b"] * 3


def test_sgemm_rate_is_measured_and_blas_threads_restored():
    handles = _config._openblas()
    before = handles["get_num_threads"]() if handles else None
    rate = bench.sgemm_gflops(1, size=256, repeat=3)
    assert np.isfinite(rate) and rate > 0
    if handles:
        assert handles["get_num_threads"]() == before


def _arrays(dtype=np.float64, shape=(3, 6, 5, 4)):
    return bench._inputs(*shape, dtype, seed=1)


def test_a_peer_that_disagrees_is_not_timed():
    x, kernel, recurrent_kernel, bias = _arrays(np.float32)
    fast = bench._fastlstm("fast", "fast", x, kernel, recurrent_kernel, bias)
    wrong = fast.check_infer() + 0.1
    peer = bench.Implementation("peer", None, lambda: wrong, None, lambda: wrong)
    timed, errors = bench._verify(fast, [peer], np.dtype(np.float32))
    assert [implementation.name for implementation in timed] == ["fast"]
    assert len(errors) == 1 and errors[0].startswith("peer disagrees")


def test_torch_weights_compute_the_reference():
    torch = pytest.importorskip("torch")
    x, kernel, recurrent_kernel, bias = _arrays()
    expected, _, _, cache = lstm_forward(x, kernel, recurrent_kernel, bias, backend="reference")
    grads = lstm_backward(cache, grad_outputs=np.ones_like(expected))

    lstm = bench.torch_lstm(kernel, recurrent_kernel, bias)
    x_torch = torch.from_numpy(x).requires_grad_(True)
    outputs, _ = lstm(x_torch)
    outputs.sum().backward()
    np.testing.assert_allclose(outputs.detach().numpy(), expected, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(x_torch.grad.numpy(), grads.x, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(lstm.weight_ih_l0.grad.numpy().T, grads.kernel,
                               rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(lstm.weight_hh_l0.grad.numpy().T, grads.recurrent_kernel,
                               rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(lstm.bias_ih_l0.grad.numpy(), grads.bias, rtol=1e-10, atol=1e-12)


def test_onnx_weights_compute_the_reference():
    pytest.importorskip("onnx")
    onnxruntime = pytest.importorskip("onnxruntime")
    x, kernel, recurrent_kernel, bias = _arrays(np.float32)
    expected = lstm_forward(x, kernel, recurrent_kernel, bias, return_cache=False,
                            backend="reference")[0]
    session = onnxruntime.InferenceSession(
        bench.onnx_lstm_model(kernel, recurrent_kernel, bias).SerializeToString(),
        providers=["CPUExecutionProvider"])
    outputs = session.run(["Y"], {"X": np.ascontiguousarray(x.transpose(1, 0, 2))})[0]
    np.testing.assert_allclose(outputs[:, 0].transpose(1, 0, 2), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_generation_and_targets_are_printed_with_the_machine(capsys, monkeypatch):
    monkeypatch.setattr(bench, "GENERATION_STEPS", 20)   # a smoke test: fewer steps
    results = bench.run(sizes=["tiny"], repeat=2, reference=False, generation=True)
    printed = capsys.readouterr().out
    generation = results["generation"]
    assert generation["errors"] == []
    assert generation["median_ms"]["layer"] > 0
    assert generation["shape"]["steps"] == bench.GENERATION_STEPS
    assert f"CPU: {results['cpu']}" in printed
    targets = printed[printed.index("\ntargets on "):]
    assert results["cpu"] in targets and results["kernels"] in targets
    assert "tiny       training fast / PyTorch" in targets or "torch" not in results["peers"]
    assert "reference / fast" not in targets   # printed per size, no longer a target


def test_bench_one_and_few_are_the_character_model_layer():
    assert bench.SIZES["one"] == (1, 64, 32, 256)
    assert bench.SIZES["few"] == (4, 64, 32, 256)
    assert bench.cpu_model()


@pytest.mark.slow
def test_generation_mode_alone_times_every_way_of_generating(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(bench, "GENERATION_STEPS", 20)   # a smoke test: fewer steps
    path = tmp_path / "bench.json"
    assert main(["bench", "--generation", "--repeat", "1", "--json", str(path)]) == 0
    printed = capsys.readouterr().out
    results = json.loads(path.read_text())
    assert results["sizes"] == {}   # the mode alone
    generation = results["generation"]
    assert generation["errors"] == []
    timed = {"layer", "model", "cell"}
    timed |= {peer for peer in ("torch", "onnxruntime") if peer in results["peers"]}
    assert set(generation["median_ms"]) == timed
    assert all(value > 0 for value in generation["median_ms"].values())
    if "torch" in timed:
        assert "stateful layer / PyTorch" in printed
    if {"cell", "onnxruntime"} <= timed:
        assert generation["ratios"]["cell_over_onnxruntime"] > 0
        assert "layer.cell / ORT" in printed


@pytest.mark.slow
def test_generation_never_times_a_way_that_disagrees(monkeypatch, capsys):
    calls = bench._generation_calls

    def with_a_wrong_one(*args):
        found, notes = calls(*args)
        right = found["layer"]
        found["layer"] = lambda: right() + 1
        return found, notes

    monkeypatch.setattr(bench, "_generation_calls", with_a_wrong_one)
    monkeypatch.setattr(bench, "GENERATION_STEPS", 20)
    for module in ("torch", "onnx", "onnxruntime"):   # faster, and not what is tested
        monkeypatch.setitem(sys.modules, module, None)
    results = bench.run(sizes=[], repeat=1, generation=True)
    generation = results["generation"]
    assert "layer" not in generation["median_ms"] and "model" in generation["median_ms"]
    assert generation["errors"][0].startswith("fastlstm stateful LSTM layer's generation "
                                              "disagrees")
    assert "ERROR: fastlstm stateful LSTM layer's" in capsys.readouterr().out


@pytest.mark.slow
def test_generation_runs_without_peers(monkeypatch):
    for module in ("torch", "onnx", "onnxruntime"):
        monkeypatch.setitem(sys.modules, module, None)
    monkeypatch.setattr(bench, "GENERATION_STEPS", 20)
    results = bench.run(sizes=[], repeat=1, generation=True)
    assert set(results["generation"]["median_ms"]) >= {"layer", "model"}
    assert not {"torch", "onnxruntime"} & set(results["generation"]["median_ms"])


def test_stateful_onnx_model_carries_the_state():
    onnxruntime = pytest.importorskip("onnxruntime")
    x, kernel, recurrent_kernel, bias = _arrays(np.float32)
    expected = lstm_forward(x, kernel, recurrent_kernel, bias, return_cache=False)[0]
    session = onnxruntime.InferenceSession(
        bench.onnx_lstm_model(kernel, recurrent_kernel, bias, with_state=True)
        .SerializeToString(), providers=["CPUExecutionProvider"])
    h = c = np.zeros((1, x.shape[0], recurrent_kernel.shape[0]), np.float32)
    for t in range(x.shape[1]):
        h, c = session.run(["Y_h", "Y_c"], {"X": np.ascontiguousarray(x[:, t][None]),
                                             "initial_h": h, "initial_c": c})
        np.testing.assert_allclose(h[0], expected[:, t], rtol=1e-5, atol=1e-6)
