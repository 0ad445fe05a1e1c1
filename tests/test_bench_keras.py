"""Tests of ``python -m fastlstm bench --keras``: the Keras models of the
model benchmark, the runner's table and the command line."""
import io

import numpy as np
import pytest

from fastlstm.tools import keras_adapter
from fastlstm.tools import models as model_bench
from fastlstm.__main__ import main


@pytest.mark.slow
@pytest.mark.parametrize("name", keras_adapter.MODELS)
def test_both_classes_build_the_same_model(name):
    pytest.importorskip("keras")
    x, _ = model_bench.data(name)
    models = [keras_adapter.keras_model(name, layer) for layer in keras_adapter.LAYERS]
    assert [[w.shape for w in m.weights] for m in models][0] == \
        [[w.shape for w in m.weights] for m in models][1]
    models[1].set_weights(models[0].get_weights())
    outputs = [m.predict(x[:2], verbose=0) for m in models]
    assert np.max(np.abs(outputs[0] - outputs[1])) < 1e-5


def test_runner_prints_ratios_against_both_targets(monkeypatch):
    pytest.importorskip("keras")
    seconds = {("fastlstm", "fastlstm"): 2.0, ("jax", "keras"): 3.0,
               ("jax", "fastlstm.keras"): 2.2, ("torch", "keras"): 10.0,
               ("torch", "fastlstm.keras"): 3.5, ("tensorflow", "keras"): 5.0,
               ("tensorflow", "fastlstm.keras"): 2.5}
    calls = []

    def worker(name, backend, layer, epochs, threads, timeout):
        calls.append((name, backend, layer))
        return [seconds[backend, layer]] * epochs, None

    monkeypatch.setattr(keras_adapter, "_run_worker", worker)
    stream = io.StringIO()
    results = keras_adapter.run(models=["char"], turns=2, epochs=1, threads=1, file=stream)
    timed = results["models"]["char"]["seconds"]
    installed = [b for b in ("jax", "torch", "tensorflow") if f"{b}/keras" in timed]
    assert len(calls) == 2 * (1 + 2 * len(installed))
    text = stream.getvalue()
    assert "fastlstm Sequential: 2.000" in text
    if "jax" in installed:
        assert "jax: keras.layers.LSTM 3.000; fastlstm.keras.LSTM 2.200; ratio 0.73 " \
               "(target <= 0.8: met); vs Sequential 1.10 (target <= 1.3: met)" in text
    if "torch" in installed:
        assert "ratio 0.35 (target <= 0.3: missed); vs Sequential 1.75 (target <= 1.3: " \
               "missed)" in text
    if "tensorflow" in installed:
        assert "tensorflow: keras.layers.LSTM 5.000; fastlstm.keras.LSTM 2.500; ratio 0.50 " \
               "(target <= 0.6: met); vs Sequential 1.25 (target <= 1.3: met)" in text


def test_unknown_model_is_refused():
    with pytest.raises(ValueError, match="unknown model"):
        keras_adapter.run(models=["classifier"])


def test_command_line_runs_the_keras_benchmark(monkeypatch):
    received = {}

    def run(**options):
        received.update(options)
        return {"models": {"char": {"errors": []}}}

    monkeypatch.setattr(keras_adapter, "run", run)
    assert main(["bench", "--keras", "--models", "char", "--turns", "1"]) == 0
    assert received == dict(models=["char"], turns=1, epochs=2, threads=None)
