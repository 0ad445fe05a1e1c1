"""fastlstm's configuration: show_config, ``python -m fastlstm info``, the
thread setting, and the choice of OpenBLAS core type made at import.

The core-type tests need a process in which fastlstm (or SciPy's BLAS) has
not been imported yet, so each runs a fresh interpreter: the same Python and
environment as the tests, without OPENBLAS_CORETYPE unless the test sets it.
"""
import io
import json
import os
import re
import subprocess
import sys
import textwrap

import numpy
import pytest
import scipy

import fastlstm
from fastlstm import _config, _cpu, _kernels, _pool

# OpenBLAS core types whose GEMM kernels use AVX-512.
AVX512_CORES = {"skylakex", "cooperlake", "sapphirerapids", "zen4", "zen5"}
# What OpenBLAS's SkylakeX kernels need of the CPU.
AVX512_FEATURES = ("avx512f", "avx512bw", "avx512dq", "avx512vl", "avx512cd")

requires_avx512 = pytest.mark.skipif(
    not all(_cpu.cpu_features()[name] for name in AVX512_FEATURES),
    reason="the CPU (or the OS) does not support AVX-512 (F, BW, DQ, VL, CD)")
requires_openblas = pytest.mark.skipif(
    _config.blas_info()["corename"] is None,
    reason="SciPy's BLAS is not an OpenBLAS that reports its core type")


def _environment(**variables):
    env = dict(os.environ)
    env.pop("OPENBLAS_CORETYPE", None)
    env.update(variables)
    return env


def run_python(code, **variables):
    """Run ``code`` in a fresh interpreter; its stdout parsed as JSON."""
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(code)],
                            env=_environment(**variables), capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


# -- show_config and the command line ---------------------------------------------

def _show_config():
    out = io.StringIO()
    fastlstm.show_config(file=out)
    return out.getvalue()


def _line_value(text, label):
    """The value after ``label`` on its line of show_config's output."""
    match = re.search(rf"^\s*{label}\s+(.+)$", text, re.MULTILINE)
    assert match, f"no {label!r} line in:\n{text}"
    return match.group(1)


def test_show_config_names_the_versions():
    text = _show_config()
    assert text.startswith(f"fastlstm {fastlstm.__version__}\n")
    assert _line_value(text, "numpy") == numpy.__version__
    assert _line_value(text, "scipy") == scipy.__version__
    # Cython is a build dependency only: the line names the version that
    # compiled the extensions, which need not be installed at run time.
    built_with = _line_value(text, "cython")
    assert re.fullmatch(r"3\.\d+\.\d+ \(compiled the extensions\)", built_with)


def test_show_config_describes_blas_and_threads():
    info = _config.blas_info()
    text = _show_config()
    assert _line_value(text, "library") == info["library"]
    assert _line_value(text, "core type").startswith(f"{info['corename']} (")
    assert info["coretype_source"] in _line_value(text, "core type")
    blas_threads, kernel_threads = re.findall(r"^\s*threads\s+(\d+)", text, re.MULTILINE)
    assert int(blas_threads) == info["blas_threads"]
    assert int(kernel_threads) == fastlstm.num_threads()
    assert re.search(rf"^\s*threads\s+{kernel_threads} \(fastlstm's own thread pool\)$", text,
                     re.MULTILINE)


def test_show_config_prints_to_stdout_by_default(capsys):
    fastlstm.show_config()
    assert capsys.readouterr().out == _show_config()


def test_command_line_info_prints_show_config():
    command = subprocess.run([sys.executable, "-m", "fastlstm", "info"], env=_environment(),
                             capture_output=True, text=True, timeout=120)
    direct = subprocess.run([sys.executable, "-c", "import fastlstm; fastlstm.show_config()"],
                            env=_environment(), capture_output=True, text=True, timeout=120)
    assert command.returncode == 0, command.stderr
    assert direct.returncode == 0, direct.stderr
    assert command.stdout == direct.stdout
    assert command.stdout.startswith(f"fastlstm {fastlstm.__version__}\n")
    assert _line_value(command.stdout, "numpy") == numpy.__version__


# -- threads ----------------------------------------------------------------------

@pytest.fixture
def restore_num_threads():
    yield
    fastlstm.set_num_threads(None)


@pytest.mark.parametrize("value", [0, -1, 1.5, True, False, "2"])
def test_set_num_threads_rejects_what_is_not_a_positive_int(restore_num_threads, value):
    before = fastlstm.num_threads()
    with pytest.raises(ValueError, match=r"num_threads must be a positive int"):
        fastlstm.set_num_threads(value)
    assert fastlstm.num_threads() == before


@pytest.mark.skipif(not _pool.threaded(),
                    reason="without a thread pool the kernels always run on one thread")
@pytest.mark.parametrize("value", [1, 3, 17])
def test_num_threads_reflects_set_num_threads(restore_num_threads, value):
    fastlstm.set_num_threads(value)
    assert fastlstm.num_threads() == value


@pytest.mark.skipif(not _pool.threaded(),
                    reason="without a thread pool the kernels always run on one thread")
def test_set_num_threads_none_restores_the_default(restore_num_threads):
    default = fastlstm.num_threads()
    fastlstm.set_num_threads(default + 1)
    fastlstm.set_num_threads(None)
    assert fastlstm.num_threads() == default == _kernels.current().max_threads()


# -- the OpenBLAS core type -------------------------------------------------------

_REPORT = """
import json, os, warnings
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    import fastlstm
from fastlstm import _config
print(json.dumps(dict(
    _config.blas_info(),
    environment=os.environ.get("OPENBLAS_CORETYPE"),
    warnings=[str(w.message) for w in caught
              if issubclass(w.category, fastlstm.PerformanceWarning)],
)))
"""


@requires_openblas
def test_user_coretype_is_left_alone():
    report = run_python(_REPORT, OPENBLAS_CORETYPE="Haswell")
    assert report["corename"] == "Haswell"
    assert "set by the user" in report["coretype_source"]
    assert report["environment"] == "Haswell"
    assert report["warnings"] == []


@requires_openblas
@requires_avx512
def test_avx512_cpu_gets_avx512_kernels_and_environment_is_restored():
    report = run_python(_REPORT)
    assert report["corename"].lower() in AVX512_CORES
    assert "chosen by fastlstm" in report["coretype_source"]
    assert report["environment"] is None
    assert report["warnings"] == []


@requires_openblas
@requires_avx512
def test_blas_loaded_before_fastlstm_warns_only_without_avx512_kernels():
    """Too late to choose: fastlstm warns exactly when the core OpenBLAS
    picked on its own does not use AVX-512."""
    report = run_python("import scipy.linalg\n" + _REPORT)
    assert "loaded before fastlstm" in report["coretype_source"]
    assert report["environment"] is None
    if report["corename"].lower() in AVX512_CORES:
        assert report["warnings"] == []
    else:
        assert len(report["warnings"]) == 1
        assert report["corename"] in report["warnings"][0]
        assert "OPENBLAS_CORETYPE" in report["warnings"][0]


@requires_openblas
@requires_avx512
def test_blas_loaded_with_avx2_kernels_before_fastlstm_warns():
    """The warning case made certain: OpenBLAS is loaded with its Haswell
    (AVX2) kernels by a caller that then removes OPENBLAS_CORETYPE."""
    report = run_python(
        "import os\n"
        "os.environ['OPENBLAS_CORETYPE'] = 'Haswell'\n"
        "import scipy.linalg\n"
        "del os.environ['OPENBLAS_CORETYPE']\n" + _REPORT)
    assert report["corename"] == "Haswell"
    assert len(report["warnings"]) == 1
    assert "'Haswell'" in report["warnings"][0]


def test_small_calls_run_on_one_thread_and_large_ones_on_the_setting(monkeypatch):
    from fastlstm import _config, _plan

    if not _pool.threaded() or not _config._openblas():
        pytest.skip("kernels without a thread pool or BLAS threads control use one thread")
    monkeypatch.setitem(_config._threads, "num_threads", 2)
    assert _plan.call_threads(_plan.PARALLEL_MIN_FLOPS - 1) == (1, True)
    assert _plan.call_threads(_plan.PARALLEL_MIN_FLOPS) == (2, True)


# -- BLAS threads: the user's, outside fastlstm's calls -----------------------------

requires_blas_threads = pytest.mark.skipif(
    not _config._openblas(), reason="SciPy's BLAS is not an OpenBLAS whose threads can be set")


@requires_blas_threads
def test_import_leaves_the_blas_threads_the_user_set():
    # One thread is not OpenBLAS's default on a machine of several cores.
    report = run_python(_REPORT, OPENBLAS_NUM_THREADS="1")
    assert report["blas_threads"] == 1
    report = run_python(_REPORT, OPENBLAS_NUM_THREADS="2")
    assert report["blas_threads"] == 2


@requires_blas_threads
def test_a_fit_gives_back_the_blas_threads_it_found():
    handles = _config._openblas()
    before = handles["get_num_threads"]()
    seen = []

    class RecordBlasThreads(fastlstm.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            seen.append(handles["get_num_threads"]())

    try:
        handles["set_num_threads"](2)
        rng = numpy.random.default_rng(0)
        model = fastlstm.Sequential([fastlstm.LSTM(8, seed=0), fastlstm.Dense(1, seed=1)])
        model.compile(optimizer="adam", loss="mse")
        model.fit(rng.standard_normal((16, 5, 3)), rng.standard_normal((16, 1)), batch_size=8,
                  epochs=1, verbose=0, callbacks=[RecordBlasThreads()])
        assert seen == [2, 2]
        assert handles["get_num_threads"]() == 2
    finally:
        handles["set_num_threads"](before)
