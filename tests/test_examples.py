"""Each script of examples/ runs end to end in its quick mode and saves its
plot (when matplotlib is installed). Their full runs, which reach the
quality each one states, take seconds to a minute and are not part of the
suite."""
import importlib.util
import pathlib
import subprocess
import sys

import pytest

# Every example runs in a process of its own.
pytestmark = pytest.mark.slow

EXAMPLES = pathlib.Path(__file__).resolve().parent.parent / "examples"
HAS_MATPLOTLIB = importlib.util.find_spec("matplotlib") is not None
HAS_STATSMODELS = importlib.util.find_spec("statsmodels") is not None


def run_example(name, tmp_path):
    plot = tmp_path / f"{name}.png"
    result = subprocess.run([sys.executable, str(EXAMPLES / f"{name}.py"), "--quick",
                             "--plot", str(plot)],
                            capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    if HAS_MATPLOTLIB:
        assert plot.read_bytes().startswith(b"\x89PNG")
    else:
        assert "matplotlib is not installed" in result.stdout
    return result.stdout


def test_sequence_classification_quick(tmp_path):
    out = run_example("sequence_classification", tmp_path)
    assert "held-out loss" in out and "accuracy" in out


@pytest.mark.skipif(not HAS_STATSMODELS, reason="the sunspots data ships with statsmodels")
def test_sunspots_forecasting_quick(tmp_path):
    out = run_example("sunspots_forecasting", tmp_path)
    assert "persistence" in out and "LSTM" in out


def test_encoder_decoder_quick(tmp_path):
    out = run_example("encoder_decoder", tmp_path)
    assert "exactly reversed" in out


def test_every_example_is_tested():
    # distributed_training runs under mpiexec in tests/test_distributed.py.
    tested = {"sequence_classification", "sunspots_forecasting", "encoder_decoder",
              "distributed_training"}
    assert {path.stem for path in EXAMPLES.glob("*.py")} == tested


def test_an_example_leaves_its_plot_in_the_output_directory(tmp_path):
    run, output = tmp_path / "run", tmp_path / "output"
    run.mkdir()
    result = subprocess.run([sys.executable, str(EXAMPLES / "sequence_classification.py"),
                             "--quick", "--output-dir", str(output)],
                            capture_output=True, text=True, cwd=run, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert list(run.iterdir()) == []
    if HAS_MATPLOTLIB:
        assert (output / "sequence_classification_loss.png").read_bytes().startswith(b"\x89PNG")
