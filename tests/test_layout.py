"""Tests of the package's structure: BLAS is called from the kernels' side
only, the model asks its layers instead of testing their classes, every
instruction-set build comes from one table, and the kernels' C helpers are
headers that compile on their own."""
import ast
import pathlib
import re
import subprocess
import sysconfig

import fastlstm
from fastlstm import _builds, _kernels, layers

PACKAGE = pathlib.Path(fastlstm.__file__).parent
# The modules that may call BLAS: the wrapper, the kernels, and the one door to them.
KERNELS_SIDE = {"_blas", "_lstm", "_kernels", "functional"}


def _python_modules():
    for path in sorted(PACKAGE.rglob("*.py")):
        yield path.relative_to(PACKAGE).with_suffix("").as_posix().replace("/", "."), path


def _imported_modules(path):
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            module = node.module or ""
            names.add(module.split(".")[-1])
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.Import):
            names.update(alias.name.split(".")[-1] for alias in node.names)
    return names


def test_only_the_kernels_side_imports_blas():
    importers = {name for name, path in _python_modules() if "_blas" in _imported_modules(path)}
    assert importers <= KERNELS_SIDE
    assert importers, "the check found no importer at all: it would pass vacuously"


def test_models_never_tests_a_layer_class():
    tree = ast.parse((PACKAGE / "models.py").read_text())
    layer_classes = {name for name in layers.__all__ if name[0].isupper()}
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "isinstance":
            classes = node.args[1]
            named = {n.id for n in ast.walk(classes) if isinstance(n, ast.Name)}
            named |= {n.attr for n in ast.walk(classes) if isinstance(n, ast.Attribute)}
            assert not named & layer_classes, ast.unparse(node)


def test_every_build_has_its_stub_and_the_baseline_is_plain():
    assert list(_builds.BUILDS)[0] == "baseline"
    assert _builds.BUILDS["baseline"]["flags"] == [] and _builds.BUILDS["baseline"]["needs"] == []
    for name, build in _builds.BUILDS.items():
        stub = PACKAGE / f"{build['module']}.pyx"
        assert stub.exists(), f"build {name} has no source {stub.name}"
        if name != "baseline":
            assert 'include "_lstm.pyx"' in stub.read_text()
    assert set(_kernels.available()) <= set(_builds.BUILDS)
    assert "baseline" in _kernels.available()


def test_the_activation_codes_come_from_the_kernels():
    from fastlstm.functional import ACTIVATIONS

    for module_name in _kernels.available():
        module = _kernels.use(module_name)
        codes = {name: int(module.Activation[name.upper()]) for name in ACTIVATIONS}
        assert sorted(codes.values()) == list(range(len(ACTIVATIONS)))
    _kernels.use(None)


def _included_headers():
    """The headers _lstm.pyx reads its C helpers from."""
    return re.findall(r'^cdef extern from "(\w+\.h)":', (PACKAGE / "_lstm.pyx").read_text(), re.M)


def test_the_kernels_c_helpers_are_headers_the_package_ships():
    headers = _included_headers()
    assert sorted(headers) == sorted(path.name for path in PACKAGE.glob("_fl_*.h"))
    assert "cdef extern from *" not in (PACKAGE / "_lstm.pyx").read_text()


def test_every_header_compiles_alone_and_twice_with_every_build_s_flags(tmp_path):
    """Each header includes what it uses and has an include guard: a file
    that includes it twice compiles warning-free, for every build's flags,
    without OpenMP and (where the kernels were built with it) with it."""
    compiler = (sysconfig.get_config_var("CC") or "cc").split()
    openmp_flags = [[], ["-fopenmp"]] if _kernels.current().openmp_enabled() else [[]]
    for header in _included_headers():
        source = tmp_path / f"twice_{header}.c"
        source.write_text(f'#include "{header}"\n#include "{header}"\n')
        for build in _builds.BUILDS.values():
            for openmp in openmp_flags:
                result = subprocess.run(
                    compiler + ["-fsyntax-only", "-Wall", "-Werror", "-I", str(PACKAGE)]
                    + build["flags"] + openmp + [str(source)],
                    capture_output=True, text=True)
                assert result.returncode == 0, (header, build["flags"], openmp, result.stderr)
