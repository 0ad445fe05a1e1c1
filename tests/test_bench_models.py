"""Tests of the model benchmark: each framework's worker trains the same
model on the same data, and the runner reports medians and ratios."""
import io

import numpy as np
import pytest

import fastlstm as fl
from fastlstm import _bench_models
from fastlstm.__main__ import _MODELS


def test_command_line_names_the_benchmarks_models():
    assert _MODELS == tuple(_bench_models.MODELS)


@pytest.mark.parametrize("name", list(_bench_models.MODELS))
def test_data_fits_the_model(name):
    x, y = _bench_models.data(name)
    _, batch, batches = _bench_models.MODELS[name]
    assert len(x) == len(y) == batch * batches
    model = _bench_models.fastlstm_model(name)
    with fl.no_grad():
        y_pred, _ = model._forward(x[:2], training=False)
    loss = model.loss(y[:2], y_pred)
    assert np.isfinite(loss)


@pytest.mark.parametrize("framework", ["fastlstm", "torch"])
def test_worker_times_the_epochs_it_is_asked_for(monkeypatch, framework):
    if framework == "torch":
        pytest.importorskip("torch")
    monkeypatch.setitem(_bench_models.MODELS, "classifier",
                        ("a small classifier", 8, 2))
    times = _bench_models._WORKERS[framework]("classifier", 2, 1, 8)
    assert len(times) == 2 and all(t > 0 for t in times)


def test_runner_reports_medians_ratios_and_notes():
    stream = io.StringIO()
    results = _bench_models.run(models=["classifier"], turns=1, epochs=1, threads=1,
                                keras_python="/nonexistent/python", file=stream)
    model = results["models"]["classifier"]
    assert model["errors"] == []
    assert model["seconds"]["fastlstm"] > 0
    assert any("keras cannot be imported" in note for note in results["notes"])
    assert "classifier:" in stream.getvalue()
    if "torch" in model["seconds"]:
        ratio = model["seconds"]["fastlstm"] / model["seconds"]["torch"]
        assert model["ratios"]["fastlstm_over_torch"] == pytest.approx(ratio)


def test_another_batch_size_keeps_the_batches_and_drops_the_targets():
    batches = _bench_models.MODELS["classifier"][2]
    x, y = _bench_models.data("classifier", 3)
    assert len(x) == len(y) == 3 * batches
    stream = io.StringIO()
    results = _bench_models.run(models=["classifier"], turns=1, epochs=1, threads=1,
                                keras_python="/nonexistent/python", file=stream, batch_size=3)
    model = results["models"]["classifier"]
    assert model["errors"] == [] and model["batch_size"] == 3
    assert f"run at batch size 3, {batches} batches" in stream.getvalue()
    assert "target" not in stream.getvalue()
    with pytest.raises(ValueError, match="batch_size must be a positive int"):
        _bench_models.run(models=["classifier"], batch_size=0)


def test_unknown_model_is_refused():
    with pytest.raises(ValueError, match="unknown model"):
        _bench_models.run(models=["gru"])
