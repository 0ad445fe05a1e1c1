"""The benchmark's sizes, written once in fastlstm/tools/sizes.py, agree with
everything that names them: the command line, the asv suite's copy, the
documented benchmark run and the performance page's table."""
import importlib.util
import json
import sys
from pathlib import Path

import pytest

from fastlstm.__main__ import main
from fastlstm.tools.bench import training_flops
from fastlstm.tools.sizes import SIZES

ROOT = Path(__file__).resolve().parents[1]


def _module(path):
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_asv_copy_is_the_first_five_sizes():
    # asv imports its suite for old commits, so it keeps a copy of its own.
    common = _module(ROOT / "asv_benchmarks" / "benchmarks" / "common.py")
    assert common.SIZES == {name: SIZES[name] for name in list(SIZES)[:5]}
    assert common.SIZE_NAMES == list(SIZES)[:5]


def test_documented_run_has_the_sizes_shapes():
    run = json.loads((ROOT / "docs" / "_static" / "bench.json").read_text())
    assert run["sizes"], "the documented run has no sizes: the check would pass vacuously"
    for name, result in run["sizes"].items():
        shape = result["shape"]
        assert (shape["batch"], shape["timesteps"], shape["input_dim"],
                shape["units"]) == SIZES[name], name


def test_performance_page_table_lists_every_size():
    sys.path.insert(0, str(ROOT / "docs" / "scripts"))
    try:
        make_figures = pytest.importorskip("make_figures")
    finally:
        sys.path.pop(0)
    rows = make_figures.sizes_table().split("   * - ")[2:]
    assert [row.split("\n")[0] for row in rows] == list(SIZES)
    for row, shape in zip(rows, SIZES.values()):
        cells = [cell.strip() for cell in row.split("     - ")[1:]]
        assert tuple(int(cell) for cell in cells[:4]) == shape
        assert cells[4] == f"{training_flops(*shape) / 1e6:,.0f}"


@pytest.mark.parametrize("name", list(SIZES))
def test_command_line_runs_every_size(name, monkeypatch):
    received = {}
    monkeypatch.setattr("fastlstm.tools.bench.run",
                        lambda **kwargs: received.update(kwargs) or {"sizes": {}})
    assert main(["bench", "--sizes", name]) == 0
    assert received["sizes"] == [name]


def test_command_line_refuses_an_unknown_size(capsys):
    with pytest.raises(SystemExit):
        main(["bench", "--sizes", "huge"])
    assert "invalid choice: 'huge'" in capsys.readouterr().err


@pytest.mark.parametrize("table", ["DEFAULT_ROUNDS", "REFERENCE_ROUNDS", "BURST"])
def test_bench_has_a_setting_for_every_size(table):
    from fastlstm.tools import bench

    assert list(getattr(bench, table)) == list(SIZES)
