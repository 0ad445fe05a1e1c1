"""Tests of the model benchmark: each framework's worker trains the same
model on the same data, and the runner reports medians and ratios."""
import io

import numpy as np
import pytest

import fastlstm as fl
from fastlstm.tools import models as model_bench


@pytest.mark.slow
@pytest.mark.parametrize("name", list(model_bench.MODELS))
def test_data_fits_the_model(name):
    x, y = model_bench.data(name)
    _, batch, batches = model_bench.MODELS[name]
    assert len(x) == len(y) == batch * batches
    model = model_bench.fastlstm_model(name)
    with fl.no_grad():
        y_pred, _ = model._forward(x[:2], training=False)
    loss = model.loss(y[:2], y_pred)
    assert np.isfinite(loss)


@pytest.mark.parametrize("framework", ["fastlstm", "torch"])
def test_worker_times_the_epochs_it_is_asked_for(monkeypatch, framework):
    if framework == "torch":
        pytest.importorskip("torch")
    monkeypatch.setitem(model_bench.MODELS, "classifier",
                        ("a small classifier", 8, 2))
    times = model_bench._WORKERS[framework]("classifier", 2, 1, 8)
    assert len(times) == 2 and all(t > 0 for t in times)


@pytest.mark.slow
def test_runner_reports_medians_ratios_and_notes():
    stream = io.StringIO()
    results = model_bench.run(models=["classifier"], turns=1, epochs=1, threads=1,
                                keras_python="/nonexistent/python", file=stream)
    model = results["models"]["classifier"]
    assert model["errors"] == []
    assert model["seconds"]["fastlstm"] > 0
    assert any("keras cannot be imported" in note for note in results["notes"])
    assert "classifier:" in stream.getvalue()
    if "torch" in model["seconds"]:
        ratio = model["seconds"]["fastlstm"] / model["seconds"]["torch"]
        assert model["ratios"]["fastlstm_over_torch"] == pytest.approx(ratio)


@pytest.mark.slow
def test_another_batch_size_keeps_the_batches_and_drops_the_targets():
    batches = model_bench.MODELS["classifier"][2]
    x, y = model_bench.data("classifier", 3)
    assert len(x) == len(y) == 3 * batches
    stream = io.StringIO()
    results = model_bench.run(models=["classifier"], turns=1, epochs=1, threads=1,
                                keras_python="/nonexistent/python", file=stream, batch_size=3)
    model = results["models"]["classifier"]
    assert model["errors"] == [] and model["batch_size"] == 3
    assert f"run at batch size 3, {batches} batches" in stream.getvalue()
    assert "target" not in stream.getvalue()
    with pytest.raises(ValueError, match="batch_size must be a positive int"):
        model_bench.run(models=["classifier"], batch_size=0)


def test_unknown_model_is_refused():
    with pytest.raises(ValueError, match="unknown model"):
        model_bench.run(models=["gru"])
