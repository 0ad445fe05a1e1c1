"""Launching the fastlstm under test in other processes, shared by the tests
that start scripts (with or without ``mpiexec``)."""
import os
import shutil
import sys
from pathlib import Path

import pytest

import fastlstm as fl


def package_environment():
    """This environment, with the fastlstm under test first on the path of
    the processes it starts, wherever that fastlstm is."""
    env = dict(os.environ)
    package_root = str(Path(fl.__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_root, env.get("PYTHONPATH")]))
    return env


def mpiexec():
    """The MPI launcher beside this Python, or on PATH; the test fails without one."""
    launcher = shutil.which("mpiexec", path=os.pathsep.join(
        [str(Path(sys.executable).parent), os.environ.get("PATH", "")]))
    if launcher is None:
        pytest.fail("mpiexec is not on PATH: install an MPI (pip install mpich) with mpi4py")
    return launcher
