"""Which compiled build of the LSTM kernels runs.

The kernels are compiled once per instruction set (the table is
:mod:`fastlstm._builds`). The widest build this CPU runs is used unless the
environment variable ``FASTLSTM_KERNELS`` names another ("baseline", "avx2"
or "avx512"); :func:`use` switches at run time (the tests run every build).
:mod:`fastlstm.functional` asks :func:`current` for the module before each
call and calls its ``forward`` / ``backward`` directly.
"""
import importlib
import os

from ._cpu import cpu_features
from ._builds import BUILDS

__all__ = ["available", "use", "current", "current_name"]

_selected = {"name": None, "module": None}


def _runs_here(name):
    features = cpu_features()
    return all(features[flag] for flag in BUILDS[name]["needs"])


def available():
    """Names of the builds that are installed and that this CPU runs, narrowest first."""
    names = []
    for name, build in BUILDS.items():
        if not _runs_here(name):
            continue
        try:
            importlib.import_module(f"fastlstm.{build['module']}")
        except ImportError:
            continue
        names.append(name)
    return names


def use(name=None):
    """Select the build called ``name``; None picks the widest available. Returns its module."""
    names = available()
    if name is None:
        name = names[-1]
    elif name not in names:
        raise ValueError(f"kernels {name!r} are not available on this machine; "
                         f"available: {names}")
    _selected["name"] = name
    _selected["module"] = importlib.import_module(f"fastlstm.{BUILDS[name]['module']}")
    return _selected["module"]


def current():
    """The kernel module in use (chosen on first use)."""
    if _selected["module"] is None:
        requested = os.environ.get("FASTLSTM_KERNELS") or None
        try:
            use(requested)
        except ValueError as error:
            raise ImportError(f"FASTLSTM_KERNELS: {error}") from None
    return _selected["module"]


def current_name():
    """The name of the build in use."""
    current()
    return _selected["name"]
