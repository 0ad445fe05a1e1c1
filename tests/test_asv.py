"""The asv benchmark suite in asv_benchmarks/ stays runnable.

Both tests run asv in this environment (``--python=same``): nothing is built
and no virtualenv is made. The run writes its machine file, results and
benchmark list into a temporary directory, never into the repository.
"""
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

asv_util = pytest.importorskip(
    "asv.util", reason="asv is not installed: python -m pip install asv (or the [test] extra)")

ROOT = Path(__file__).resolve().parents[1]
ASV_DIR = ROOT / "asv_benchmarks"
SMALLEST = "functional.Functional.time_training_step"


def _asv(*args, cwd, home):
    """Run ``python -m asv *args``; the machine file lives under ``home``."""
    env = dict(os.environ, HOME=str(home))
    return subprocess.run([sys.executable, "-m", "asv", *args], cwd=cwd, env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          timeout=300)


def test_asv_check_finds_no_problems(tmp_path):
    result = _asv("check", "--python=same", cwd=ASV_DIR, home=tmp_path)
    assert result.returncode == 0, result.stdout
    assert "No problems found" in result.stdout, result.stdout


def test_quick_run_of_one_benchmark_reports_a_time(tmp_path):
    config = asv_util.load_json(str(ASV_DIR / "asv.conf.json"), js_comments=True)
    config.update(repo=str(ROOT), benchmark_dir=str(ASV_DIR / "benchmarks"),
                  env_dir=str(tmp_path / "env"), results_dir=str(tmp_path / "results"),
                  html_dir=str(tmp_path / "html"))
    config_path = tmp_path / "asv.conf.json"
    config_path.write_text(json.dumps(config))
    machine = _asv("machine", "--yes", "--machine", "test", cwd=tmp_path, home=tmp_path)
    assert machine.returncode == 0, machine.stdout

    result = _asv("run", "--config", str(config_path), "--machine", "test", "--python=same",
                  "--quick", "--dry-run", "--show-stderr",
                  "--bench", rf"^{re.escape(SMALLEST)}\('tiny', 'float32', 'fast'\)$",
                  cwd=tmp_path, home=tmp_path)

    assert result.returncode == 0, result.stdout
    assert re.search(rf"{re.escape(SMALLEST)}\s+ok", result.stdout), result.stdout
    # The table row of the one combination run: "tiny  float32  <time>  n/a".
    assert re.search(r"tiny\s+float32\s+[\d.]+(±\S+)?(ns|μs|us|ms|s)\s", result.stdout), \
        result.stdout
