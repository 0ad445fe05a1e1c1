"""The asv benchmark suite in asv_benchmarks/ stays runnable, and the README's
commands make a dashboard.

The tests run asv in this environment (``--python=same``): nothing is built
and no virtualenv is made. The runs write their machine file, results,
benchmark list and dashboard into a temporary directory, never into the
repository.
"""
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

asv_util = pytest.importorskip(
    "asv.util", reason="asv is not installed: python -m pip install asv (or the [test] extra)")

# Every test here runs asv in a process of its own.
pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
ASV_DIR = ROOT / "asv_benchmarks"
SMALLEST = "functional.Functional.time_training_step"
# The one combination of SMALLEST the runs time.
ONE_COMBINATION = rf"^{re.escape(SMALLEST)}\('tiny', 'float32', 'fast'\)$"


def _asv(*args, cwd, home):
    """Run ``python -m asv *args``; the machine file lives under ``home``."""
    env = dict(os.environ, HOME=str(home))
    return subprocess.run([sys.executable, "-m", "asv", *args], cwd=cwd, env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          timeout=300)


def _config(tmp_path, **changes):
    """A copy of asv.conf.json in ``tmp_path`` whose results, dashboard and
    environments go there too, and a machine "test" recorded there."""
    config = asv_util.load_json(str(ASV_DIR / "asv.conf.json"), js_comments=True)
    config.update(repo=str(ROOT), benchmark_dir=str(ASV_DIR / "benchmarks"),
                  env_dir=str(tmp_path / "env"), results_dir=str(tmp_path / "results"),
                  html_dir=str(tmp_path / "html"), **changes)
    config_path = tmp_path / "asv.conf.json"
    config_path.write_text(json.dumps(config))
    machine = _asv("machine", "--yes", "--machine", "test", cwd=tmp_path, home=tmp_path)
    assert machine.returncode == 0, machine.stdout
    return config_path


def _readme_command(start):
    """The command of the README that starts with ``start``, without its comment."""
    readme = (ROOT / "README.md").read_text()
    for line in readme.splitlines():
        if line.startswith(start):
            return line.split("  #")[0].strip()
    raise AssertionError(f"README.md has no command that starts with {start!r}")


def _run_readme_command(command, *args, home):
    """Run an ``asv ...`` command line of the README in asv_benchmarks/, as the README
    says, through the shell (it may hold ``$(...)``), with ``args`` added."""
    assert command.startswith("asv "), command
    line = " ".join([shlex.quote(sys.executable), "-m", command, *map(shlex.quote, args)])
    env = dict(os.environ, HOME=str(home))
    return subprocess.run(["bash", "-c", line], cwd=ASV_DIR, env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          timeout=300)


def test_asv_check_finds_no_problems(tmp_path):
    result = _asv("check", "--python=same", cwd=ASV_DIR, home=tmp_path)
    assert result.returncode == 0, result.stdout
    assert "No problems found" in result.stdout, result.stdout


def test_quick_run_of_one_benchmark_reports_a_time(tmp_path):
    config_path = _config(tmp_path)

    result = _asv("run", "--config", str(config_path), "--machine", "test", "--python=same",
                  "--quick", "--dry-run", "--show-stderr", "--bench", ONE_COMBINATION,
                  cwd=tmp_path, home=tmp_path)

    assert result.returncode == 0, result.stdout
    assert re.search(rf"{re.escape(SMALLEST)}\s+ok", result.stdout), result.stdout
    # The table row of the one combination run: "tiny  float32  <time>  n/a".
    assert re.search(r"tiny\s+float32\s+[\d.]+(±\S+)?(ns|μs|us|ms|s)\s", result.stdout), \
        result.stdout


def test_readme_commands_save_results_and_publish_them_as_a_dashboard(tmp_path):
    # The dashboard draws the commits of the configured branches; this checkout may be
    # on any branch.
    config_path = _config(tmp_path, branches=["HEAD"])
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, stdout=subprocess.PIPE,
                          text=True, check=True).stdout.strip()

    run = _run_readme_command(
        _readme_command("asv run --python=same --set-commit-hash"),
        "--config", str(config_path), "--machine", "test", "--bench", ONE_COMBINATION,
        # One sample of one call: the cheapest run that saves its result (--quick does not).
        "-a", "rounds=1", "-a", "repeat=1", "-a", "number=1", "-a", "warmup_time=0",
        home=tmp_path)
    assert run.returncode == 0, run.stdout
    saved = list((tmp_path / "results" / "test").glob(f"{head[:8]}-*.json"))
    assert len(saved) == 1, run.stdout
    results = json.loads(saved[0].read_text())
    assert results["commit_hash"] == head
    assert results["results"][SMALLEST][0][0] > 0   # seconds, at ('tiny', 'float32', 'fast')

    publish = _run_readme_command(_readme_command("asv publish"), "--config", str(config_path),
                                  home=tmp_path)
    assert publish.returncode == 0, publish.stdout
    index = json.loads((tmp_path / "html" / "index.json").read_text())
    graphs = [path for path in (tmp_path / "html" / "graphs").rglob(f"{SMALLEST}.json")
              if "branch-HEAD" in path.parts]
    assert len(graphs) == 1, publish.stdout
    # One point per commit: (revision, the time of each combination of parameters).
    [(revision, times)] = json.loads(graphs[0].read_text())
    assert index["revision_to_hash"][str(revision)] == head
    assert times[0] == results["results"][SMALLEST][0][0]
