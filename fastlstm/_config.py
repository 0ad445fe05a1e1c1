"""The BLAS fastlstm runs on, and the threads of its kernels.

fastlstm calls BLAS through ``scipy.linalg.cython_blas``, so its speed is the
speed of the BLAS library SciPy loads. SciPy's wheels bundle OpenBLAS built
with ``DYNAMIC_ARCH``: it picks a kernel family ("core type") for the CPU
when the library is loaded. CPUs newer than the OpenBLAS build are not
recognised and get its AVX2 ("Haswell") kernels even when they have
AVX-512, which costs up to half the speed of the matrix products.

:func:`prepare_blas` runs when fastlstm is imported, before anything of
SciPy's BLAS is loaded by fastlstm. Where the CPU and the OS support AVX-512
and nobody has chosen a core type, it sets ``OPENBLAS_CORETYPE`` for the
moment OpenBLAS loads and reads it, then restores the environment, so that
the choice affects SciPy's OpenBLAS only. It never overrides a core type
the user set, and where SciPy's BLAS was already loaded it cannot change
anything: it then says so with a :class:`PerformanceWarning`.

Set ``OPENBLAS_CORETYPE`` yourself (for example to ``Haswell``) to make the
choice; fastlstm then leaves it alone.
"""
import contextlib
import ctypes
import os
import sys
import threading
import warnings

from . import _kernels
from ._pool import resize as _resize_pool, threaded as _pool_threaded
from ._cpu import cpu_features, cython_version
from ._builds import BUILDS
from ._validation import is_int
from ._version import __version__

__all__ = ["PerformanceWarning", "show_config", "blas_info", "num_threads", "set_num_threads"]

# OpenBLAS core types whose single and double precision GEMM kernels use
# AVX-512; anything else on an AVX-512 CPU leaves speed on the table.
_AVX512_CORES = ("skylakex", "cooperlake", "sapphirerapids", "zen4", "zen5")


class PerformanceWarning(UserWarning):
    """fastlstm runs correctly but slower than this machine allows."""


_state = {"coretype_source": None}


def _scipy_blas_loaded():
    """Whether a BLAS library of SciPy's is already mapped into the process."""
    if _loaded_libraries() is not None:
        return _scipy_openblas_path() is not None
    return any(name.startswith("scipy.linalg") for name in sys.modules)


def _loaded_libraries():
    try:
        with open("/proc/self/maps") as maps:
            return {line.split(None, 5)[-1].strip() for line in maps if "/" in line}
    except OSError:
        return None


def _scipy_openblas_path():
    """Path of the OpenBLAS library SciPy's wheel bundles, if it is loaded.

    NumPy bundles its own copy (with 64-bit integers, ``openblas64_`` in its
    name); that one is not the library fastlstm's BLAS calls run on.
    """
    libraries = _loaded_libraries() or ()
    for path in sorted(libraries):
        name = os.path.basename(path).lower()
        if "openblas" in name and "openblas64" not in name and ".so" in name:
            return path
    return None


def _wanted_coretype():
    features = cpu_features()
    if not all(features[name] for name in BUILDS["avx512"]["needs"]):
        return None
    return "Cooperlake" if features["avx512bf16"] else "SkylakeX"


def prepare_blas():
    """Choose OpenBLAS's AVX-512 kernels where they run and nobody chose, then
    load SciPy's BLAS. Called once, by ``import fastlstm``."""
    if "OPENBLAS_CORETYPE" in os.environ:
        _state["coretype_source"] = "set by the user (OPENBLAS_CORETYPE)"
    elif _scipy_blas_loaded():
        _state["coretype_source"] = "chosen by OpenBLAS (SciPy's BLAS was loaded before fastlstm)"
    else:
        wanted = _wanted_coretype()
        if wanted is None:
            _state["coretype_source"] = "chosen by OpenBLAS (no AVX-512 on this CPU)"
        else:
            _state["coretype_source"] = ("chosen by fastlstm for this AVX-512 CPU; "
                                         "OPENBLAS_CORETYPE set before import overrides")
            os.environ["OPENBLAS_CORETYPE"] = wanted
            try:
                import scipy.linalg.cython_blas  # noqa: F401  (loads OpenBLAS now)
            finally:
                del os.environ["OPENBLAS_CORETYPE"]
    import scipy.linalg.cython_blas  # noqa: F401,F811

    core = _openblas().get("corename")
    if (core is not None and core.lower() not in _AVX512_CORES
            and _wanted_coretype() is not None
            and "OPENBLAS_CORETYPE" not in os.environ):
        warnings.warn(
            f"SciPy's OpenBLAS runs its {core!r} kernels on a CPU with AVX-512, "
            "because SciPy's BLAS was loaded before fastlstm could choose; matrix "
            "products may run at half speed. Import fastlstm before scipy.linalg, "
            "or set OPENBLAS_CORETYPE=SkylakeX in the environment.",
            PerformanceWarning,
            stacklevel=3,
        )


_openblas_cache = {}


def _openblas():
    """ctypes handles on SciPy's OpenBLAS: ``{"path", "corename", "config",
    "get_num_threads", "set_num_threads"}``; empty when it is not OpenBLAS."""
    if _openblas_cache:
        return _openblas_cache
    path = _scipy_openblas_path()
    if path is None:
        return {}
    library = ctypes.CDLL(path)

    def symbol(stem):
        for prefix in ("scipy_", ""):
            for suffix in ("", "64_"):
                function = getattr(library, f"{prefix}{stem}{suffix}", None)
                if function is not None:
                    return function
        return None

    corename, config = symbol("openblas_get_corename"), symbol("openblas_get_config")
    get_threads, set_threads = symbol("openblas_get_num_threads"), symbol("openblas_set_num_threads")
    if get_threads is None or set_threads is None:
        return {}
    for function in (corename, config):
        if function is not None:
            function.restype = ctypes.c_char_p
    get_threads.restype = ctypes.c_int
    set_threads.argtypes = [ctypes.c_int]
    set_threads.restype = None
    _openblas_cache.update(
        path=path,
        corename=corename().decode() if corename else None,
        config=config().decode().strip() if config else None,
        get_num_threads=get_threads,
        set_num_threads=set_threads,
    )
    return _openblas_cache


def blas_info():
    """What SciPy's BLAS is and how fastlstm uses it, as a dict."""
    handles = _openblas()
    info = {
        "library": os.path.basename(handles["path"]) if handles else "unknown (not OpenBLAS)",
        "config": handles.get("config"),
        "corename": handles.get("corename"),
        "coretype_source": _state["coretype_source"],
        "blas_threads": handles["get_num_threads"]() if handles else None,
    }
    return info


# Threads. fastlstm splits its work over its own OpenMP threads (the batch
# through the time loop, column blocks of the weight gradients) and runs
# every BLAS call inside single-threaded, so BLAS threads and OpenMP threads
# never compete for the same cores. Where OpenMP is missing, or BLAS threads
# cannot be controlled, the kernels run on one thread of their own and let
# BLAS use its threads.

_threads = {"num_threads": None}
_blas_lock = threading.Lock()
_blas_users = {"count": 0, "saved": None}


def num_threads():
    """The number of threads fastlstm's kernels use (see :func:`set_num_threads`)."""
    return kernel_threads()[0]


def kernel_threads():
    """``(threads, single_threaded_blas)`` of the kernels.

    With fastlstm's thread pool and an OpenBLAS whose threads can be set,
    the kernels use the pool's threads (:func:`set_num_threads`) and BLAS
    runs single-threaded inside them. Otherwise the kernels run on one
    thread and leave BLAS its own threads. How many of them a call takes is
    the planner's (``fastlstm/_plan.py``).
    """
    module = _kernels.current()
    if not _pool_threaded() or not _openblas():
        return 1, False
    if _threads["num_threads"] is not None:
        return _threads["num_threads"], True
    return max(1, module.max_threads()), True


def set_num_threads(n):
    """Set the number of threads fastlstm's kernels use; ``None`` restores
    the default (OpenMP's, that is ``OMP_NUM_THREADS`` or the number of cores).

    The threads are fastlstm's own pool: a smaller number stops the workers
    past it now, a larger one starts them on the next call that uses them.
    A kernel splits the batch across its threads, so more threads than
    sequences in a batch leave the extra ones idle.
    """
    if n is not None:
        if not is_int(n) or n < 1:
            raise ValueError(f"num_threads must be a positive int or None, got {n!r}")
        n = int(n)
    _threads["num_threads"] = n
    _resize_pool(num_threads())


@contextlib.contextmanager
def single_threaded_blas(enabled=True):
    """Run SciPy's OpenBLAS single-threaded inside the block (when ``enabled``).

    Nested and concurrent blocks (several Python threads running fastlstm at
    once) share one count, so the thread count the user set comes back only
    when the last block ends.
    """
    handles = _openblas()
    if not handles or not enabled:
        yield
        return
    with _blas_lock:
        if _blas_users["count"] == 0:
            _blas_users["saved"] = handles["get_num_threads"]()
            if _blas_users["saved"] != 1:
                handles["set_num_threads"](1)
        _blas_users["count"] += 1
    try:
        yield
    finally:
        with _blas_lock:
            _blas_users["count"] -= 1
            if _blas_users["count"] == 0 and _blas_users["saved"] != 1:
                handles["set_num_threads"](_blas_users["saved"])


def show_config(file=None):
    """Print fastlstm's version, its dependencies, the BLAS in use (library,
    kernel family, threads) and fastlstm's own threading."""
    import numpy
    import scipy


    info = blas_info()
    features = cpu_features()
    simd = ", ".join(name for name, present in features.items() if present) or "none detected"
    lines = [
        f"fastlstm {__version__}",
        f"  python        {sys.version.split()[0]}",
        f"  numpy         {numpy.__version__}",
        f"  scipy         {scipy.__version__}",
        f"  cython        {cython_version()} (compiled the extensions)",
        "BLAS (scipy.linalg.cython_blas)",
        f"  library       {info['library']}",
        f"  config        {info['config']}",
        f"  core type     {info['corename']} ({info['coretype_source']})",
        f"  threads       {info['blas_threads']} (yours; one inside fastlstm's calls, "
        f"restored after each)",
        "fastlstm kernels",
        f"  build         {_kernels.current_name()} (available: {', '.join(_kernels.available())})",
        f"  threads       {num_threads()} (fastlstm's own thread pool)",
        f"  cpu features  {simd}",
        f"  int8 products {_kernels.current().int8_path()} (model.quantize('int8'))",
    ]
    print("\n".join(lines), file=file)
