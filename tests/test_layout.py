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
    from fastlstm._validation import ACTIVATIONS

    for module_name in _kernels.available():
        module = _kernels.use(module_name)
        codes = {name: int(module.Activation[name.upper()]) for name in ACTIVATIONS}
        assert sorted(codes.values()) == list(range(len(ACTIVATIONS)))
    _kernels.use(None)


def _module_name(name):
    """The dotted name of a module of ``_python_modules``; "" for the root."""
    return name.removesuffix("__init__").rstrip(".")


def _package_imports(name, path, modules):
    """The modules of the package (in ``modules``) that the module ``name``
    imports; "" (the root) for a name taken from ``fastlstm/__init__.py``."""
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    package = [part for part in package if part]
    imported = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level:
            target = ".".join(package[:len(package) - node.level + 1]
                              + ([node.module] if node.module else []))
            for alias in node.names:
                submodule = f"{target}.{alias.name}".lstrip(".")
                imported.add(submodule if submodule in modules else target)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            for module in ([node.module] if isinstance(node, ast.ImportFrom)
                           else [alias.name for alias in node.names]):
                if module == "fastlstm" or module.startswith("fastlstm."):
                    imported.add(module.removeprefix("fastlstm").lstrip("."))
    return imported - {name}


def test_no_import_circle_and_no_name_taken_from_the_package_root():
    # The benchmark and demo tooling run fastlstm as its users do, through
    # ``import fastlstm``; nothing in the package imports them.
    library = {_module_name(name): path for name, path in _python_modules()
               if not name.split(".")[-1].startswith(("_bench", "_demo"))}
    compiled = {path.name.split(".")[0] for path in PACKAGE.glob("*.so")}
    graph = {name: _package_imports(name, path, set(library) | compiled) & set(library)
             for name, path in library.items()}
    assert "training" in graph["models"], "the parse found no imports"
    assert sorted(name for name, imports in graph.items() if "" in imports and name) == []
    del graph[""]  # the root imports the modules; none imports it back (above)
    # Depth-first search: a module met again while its own imports are being
    # followed closes a circle.
    open_trail, done, circles = [], set(), []

    def visit(name):
        if name in open_trail:
            circles.append(open_trail[open_trail.index(name):] + [name])
            return
        if name in done:
            return
        open_trail.append(name)
        for imported in sorted(graph[name]):
            visit(imported)
        open_trail.pop()
        done.add(name)

    for name in sorted(graph):
        visit(name)
    assert circles == []


def _included_headers():
    """The headers the Cython sources read their C helpers from."""
    return sorted({header for path in [*PACKAGE.glob("*.pyx"), *PACKAGE.glob("*.pxi")]
                   for header in re.findall(r'^cdef extern from "(\w+\.h)":',
                                            path.read_text(), re.M)})


def test_the_kernels_c_helpers_are_headers_the_package_ships():
    headers = _included_headers()
    assert sorted(headers) == sorted(path.name for path in PACKAGE.glob("_fl_*.h"))
    assert "cdef extern from *" not in (PACKAGE / "_lstm.pyx").read_text()


def test_every_header_compiles_alone_and_twice_with_every_build_s_flags(tmp_path):
    """Each header includes what it uses and has an include guard: a file
    that includes it twice compiles warning-free, for every build's flags,
    without OpenMP and (where the kernels were built with it) with it."""
    compiler = (sysconfig.get_config_var("CC") or "cc").split()
    openmp_flags = [[], ["-fopenmp"]]
    for header in _included_headers():
        source = tmp_path / f"twice_{header}.c"
        source.write_text(f'#include "{header}"\n#include "{header}"\n')
        for build in _builds.BUILDS.values():
            for openmp in openmp_flags:
                result = subprocess.run(
                    compiler + ["-fsyntax-only", "-Wall", "-Werror", "-I", str(PACKAGE),
                                "-I", sysconfig.get_paths()["include"]]
                    + build["flags"] + openmp + [str(source)],
                    capture_output=True, text=True)
                assert result.returncode == 0, (header, build["flags"], openmp, result.stderr)
