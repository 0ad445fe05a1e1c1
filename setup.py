"""Build fastlstm's Cython extensions.

Environment switches:

``FASTLSTM_DEBUG=1``
    Compile without optimisation, with debug symbols, and with Cython's bounds,
    wraparound and initialisation checks turned back on.
``FASTLSTM_NO_OPENMP=1``
    Build without OpenMP even where the compiler supports it.
"""
import os
import platform
import runpy
import shutil
import subprocess
import sys
import sysconfig
import tempfile

import numpy
from Cython.Build import cythonize
from setuptools import Extension, setup

DEBUG = os.environ.get("FASTLSTM_DEBUG", "0") not in ("", "0")

COMPILER_DIRECTIVES = {
    "language_level": 3,
    "boundscheck": DEBUG,
    "wraparound": DEBUG,
    "initializedcheck": DEBUG,
    "cdivision": True,
    "embedsignature": True,
}


OPENMP_PROGRAM = (
    "#include <omp.h>\n"
    "int main(void) { int s = 0;\n"
    "#pragma omp parallel for reduction(+:s)\n"
    "for (int i = 0; i < 8; i++) s += i;\n"
    "return s == 28 && omp_get_max_threads() > 0 ? 0 : 1; }\n"
)


def _compiles(flags, source="int main(void) { return 0; }\n"):
    """Whether the C compiler Python was built with compiles and links
    ``source`` with ``flags``."""
    compiler = (sysconfig.get_config_var("CC") or "cc").split()
    if shutil.which(compiler[0]) is None:
        return False
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "check.c")
        with open(path, "w") as f:
            f.write(source)
        result = subprocess.run(
            compiler + flags + [path, "-o", os.path.join(tmp, "a.out")],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
    return result.returncode == 0


def _optional_flags(flags):
    """The flags the compiler accepts, tried one by one."""
    return [flag for flag in flags if _compiles(["-Werror", flag])]


def _openmp_flags():
    if os.environ.get("FASTLSTM_NO_OPENMP", "0") not in ("", "0"):
        return []
    if sys.platform == "win32":
        return ["/openmp"]
    if _compiles(["-fopenmp"], OPENMP_PROGRAM):
        return ["-fopenmp"]
    return []


OPENMP = _openmp_flags()
if sys.platform == "win32":
    OPTIMISE = ["/Od", "/Zi"] if DEBUG else ["/O2"]
else:
    # -fno-trapping-math lets the compiler turn the clamps of the vectorised
    # exp into branch-free selects (fastlstm never traps on FP exceptions).
    # The fused loops write through several pointers; GCC vectorises them
    # behind one run-time overlap check per row when it may test that many.
    OPTIMISE = ["-O0", "-g"] if DEBUG else ["-O3"] + _optional_flags(
        ["-fno-trapping-math", "--param=vect-max-version-for-alias-checks=100"])
MACROS = [("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")]


# The kernels are compiled once per instruction set; fastlstm loads the widest
# the CPU supports. The table of builds is shared with the package.
BUILDS = runpy.run_path(os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                     "fastlstm", "_builds.py"))["BUILDS"]
X86 = platform.machine().lower() in ("x86_64", "amd64", "i686", "x86")


def _buildable(build):
    """Whether to compile ``build``: the baseline always; the others on x86
    with a compiler that targets them (not in debug builds)."""
    if not build["flags"]:
        return True
    if not X86 or sys.platform == "win32" or DEBUG:
        return False
    return _compiles(["-Werror"] + build["flags"])


# What the kernel builds include besides _lstm.pyx: an edit rebuilds them.
KERNEL_SOURCES = sorted(os.path.join("fastlstm", name) for name in os.listdir(
    os.path.join(os.path.dirname(os.path.abspath(__file__)), "fastlstm"))
    if name.endswith((".h", ".pxi")) or name == "_lstm.pyx")


def _extension(name, openmp=False, extra=(), depends=()):
    flags = OPTIMISE + list(extra) + (OPENMP if openmp else [])
    return Extension(
        f"fastlstm.{name}",
        [f"fastlstm/{name}.pyx"],
        extra_compile_args=flags,
        extra_link_args=OPENMP if openmp else [],
        define_macros=MACROS,
        # The kernels' C headers are in fastlstm/; the one-step path takes
        # NumPy arrays through NumPy's C API.
        include_dirs=["fastlstm", numpy.get_include()],
        depends=list(depends),
    )


# The thread pool runs on POSIX threads; where there are none (Windows) it
# falls back on OpenMP.
extensions = [
    _extension("_cpu"), _extension("_blas"),
    _extension("_pool", openmp=sys.platform == "win32", depends=["fastlstm/_fl_pool.h"]),
    _extension("_optim")] + [
    _extension(build["module"], openmp=True, extra=build["flags"], depends=KERNEL_SOURCES)
    for build in BUILDS.values() if _buildable(build)]

setup(
    ext_modules=cythonize(extensions, compiler_directives=COMPILER_DIRECTIVES),
)
