"""fastlstm.keras.LSTM against keras.layers.LSTM, on every Keras backend
fastlstm supports that is installed here.

Keras picks its backend when first imported, so each backend runs every
check of tests/keras_checks.py in a process of its own, once per session;
each test here asserts one check's result.
"""
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from keras_checks import BACKEND_CHECKS, CHECKS

ROOT = Path(__file__).resolve().parent.parent
BACKENDS = ("jax", "torch", "tensorflow")


_runs = {}


def report(backend):
    """Per check, None or its failure: the checks' run on ``backend``. The
    first call starts every installed backend's run at once."""
    if not _runs:
        for name in BACKENDS:
            if all(importlib.util.find_spec(module) for module in ("keras", name)):
                _runs[name] = subprocess.Popen(
                    [sys.executable, str(Path(__file__).with_name("keras_checks.py"))],
                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                    env={**os.environ, "PYTHONPATH": str(ROOT), "KERAS_BACKEND": name})
    if backend not in _runs:
        pytest.skip(f"the {backend} backend needs keras and {backend} (the test extra "
                    f"installs them)")
    run = _runs[backend]
    if not isinstance(run, dict):
        stdout, stderr = run.communicate(timeout=900)
        assert run.returncode == 0, stderr[-3000:]
        result = json.loads(stdout.strip().splitlines()[-1])
        assert result["backend"] == backend
        run = _runs[backend] = result["results"]
    return run


@pytest.mark.slow
@pytest.mark.parametrize("backend, check", [
    (backend, check) for backend in BACKENDS
    for check in [*CHECKS, *BACKEND_CHECKS.get(backend, {})]])
def test_keras_layer(backend, check):
    assert report(backend)[check] is None, report(backend)[check]


def test_importing_fastlstm_does_not_import_keras():
    done = subprocess.run(
        [sys.executable, "-c", "import sys, fastlstm, fastlstm.layers, fastlstm.models; "
         "print(sorted({'keras', 'jax', 'tensorflow'} & set(sys.modules)))"],
        capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
