"""``python -m fastlstm bench --busy``: the spinning process runs on one core
while the run lasts and never outlives it, and the mode reports fastlstm's and
PyTorch's times on 2 and 1 threads."""
import io
import json
import os
import subprocess
import sys
import time

import pytest

import fastlstm as fl
from fastlstm.__main__ import main
from fastlstm.tools import busy


def _alive(pid):
    """Whether ``pid`` runs (a zombie nobody reaped does not)."""
    try:
        with open(f"/proc/{pid}/stat") as stream:
            return stream.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


needs_proc = pytest.mark.skipif(not os.path.exists("/proc/self/stat"),
                                reason="reads process states from /proc")


@needs_proc
def test_busy_core_spins_pinned_and_is_stopped_on_error():
    with pytest.raises(KeyboardInterrupt):
        with busy.busy_core() as spinning:
            assert _alive(spinning.pid)
            if hasattr(os, "sched_getaffinity"):
                assert os.sched_getaffinity(spinning.pid) == {spinning.core}
                assert spinning.core in os.sched_getaffinity(0)
            raise KeyboardInterrupt
    assert not _alive(spinning.pid)


@needs_proc
def test_busy_core_stops_by_itself_when_its_parent_is_killed():
    parent = subprocess.Popen(
        [sys.executable, "-c", "import time\nfrom fastlstm.tools.busy import busy_core\n"
         "with busy_core() as spinning:\n    print(spinning.pid, flush=True)\n"
         "    time.sleep(60)\n"], stdout=subprocess.PIPE, text=True)
    pid = int(parent.stdout.readline())
    assert _alive(pid)
    parent.kill()
    parent.wait()
    deadline = time.monotonic() + 10
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(pid)


@pytest.mark.slow
def test_command_line_busy_mode_reports_both_thread_counts(tmp_path, capsys):
    fl.set_num_threads(3)
    try:
        path = tmp_path / "busy.json"
        assert main(["bench", "--busy", "--repeat", "1", "--json", str(path)]) == 0
        printed = capsys.readouterr().out
        assert fl.num_threads() == 3   # the user's setting comes back
    finally:
        fl.set_num_threads(None)
    assert "busy core: a process spinning on one core" in printed
    results = json.loads(path.read_text())
    assert results["errors"] == []
    assert set(results["median_ms"]) == set(busy.TASKS)
    for task, by_library in results["median_ms"].items():
        assert set(by_library) == set(results["libraries"])
        for library, times in by_library.items():
            assert times["2"] > 0 and times["1"] > 0
            assert results["ratios"][task][library] == pytest.approx(times["2"] / times["1"])
        assert busy.TASKS[task] in printed


@pytest.mark.slow
def test_busy_mode_runs_without_pytorch(monkeypatch):
    # None in sys.modules makes ``import torch`` raise ImportError.
    monkeypatch.setitem(sys.modules, "torch", None)
    results = busy.run(repeat=1, file=io.StringIO())
    assert results["libraries"] == ["fastlstm"]
    assert all(set(by_library) == {"fastlstm"} for by_library in results["median_ms"].values())
