"""The documentation: every example of every page runs, the docs build with
warnings as errors, every page is reachable from the index, and every public
name is in the API reference.

Examples are ``.. code-block:: python`` blocks, executed, and
``.. code-block:: pycon`` blocks, run as doctests (their printed output is
checked). A page's examples run in order in one namespace, as a reader pastes
them into one Python session.
"""
import doctest
import importlib
import io
import os
import pkgutil
import re
import subprocess
import sys
import textwrap
import zlib
from contextlib import redirect_stdout
from html.parser import HTMLParser
from pathlib import Path

import pytest

import fastlstm

DOCS = Path(__file__).resolve().parent.parent / "docs"
PAGES = sorted(path for path in DOCS.rglob("*.rst")
               if not path.relative_to(DOCS).parts[0].startswith("_"))
EXECUTED = {"python", "pycon"}
# Languages shown but not run: shell commands and printed output.
SHOWN = {"bash", "text"}
_DIRECTIVE = re.compile(r"^(?P<indent> *)\.\. code-block::\s*(?P<language>\S*)\s*$")


def code_blocks(path):
    """``(language, code, line)`` of each ``code-block`` of an RST page."""
    lines = path.read_text().splitlines()
    blocks = []
    k = 0
    while k < len(lines):
        match = _DIRECTIVE.match(lines[k])
        if not match:
            k += 1
            continue
        indent = len(match["indent"])
        start = k + 1
        k += 1
        # Options (":caption: ..."), then the indented body.
        while k < len(lines) and re.match(rf"^ {{{indent + 1},}}:\w", lines[k]):
            k += 1
        body = []
        while k < len(lines) and (not lines[k].strip() or
                                  len(lines[k]) - len(lines[k].lstrip()) > indent):
            body.append(lines[k])
            k += 1
        blocks.append((match["language"], textwrap.dedent("\n".join(body)).strip("\n") + "\n",
                       start))
    return blocks


def _page_id(path):
    return str(path.relative_to(DOCS))


def test_pages_are_found():
    names = {_page_id(path) for path in PAGES}
    assert {"index.rst", "installation.rst", "performance.rst", "guide/shapes.rst"} <= names


@pytest.mark.parametrize("path", PAGES, ids=_page_id)
def test_code_blocks_use_known_languages(path):
    # A block in any other language would silently escape these tests.
    for language, _, line in code_blocks(path):
        assert language in EXECUTED | SHOWN, (
            f"{_page_id(path)}:{line}: code-block language {language!r}; use one of "
            f"{sorted(EXECUTED | SHOWN)}")


@pytest.mark.slow
@pytest.mark.parametrize("path", [p for p in PAGES if any(
    language in EXECUTED for language, _, _ in code_blocks(p))], ids=_page_id)
def test_page_examples_run(path, monkeypatch, tmp_path):
    blocks = [block for block in code_blocks(path) if block[0] in EXECUTED]
    if any(re.search(r"^\s*(>>> )?(import torch|from torch)", code, re.M)
           for _, code, _ in blocks):
        pytest.importorskip("torch", reason=f"{_page_id(path)} uses PyTorch")
    if any(re.search(r"^\s*(>>> )?import keras", code, re.M) for _, code, _ in blocks):
        pytest.importorskip("keras", reason=f"{_page_id(path)} uses Keras")
    if any(re.search(r"^\s*(>>> )?import onnx", code, re.M) for _, code, _ in blocks):
        for module in ("onnx", "onnxruntime"):
            pytest.importorskip(module, reason=f"{_page_id(path)} exports to ONNX and runs it")
    # Examples that write files write them into a fresh folder.
    monkeypatch.chdir(tmp_path)
    namespace = {"__name__": f"docs_{path.stem}"}
    parser = doctest.DocTestParser()
    runner = doctest.DocTestRunner(
        optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    for language, code, line in blocks:
        where = f"{_page_id(path)}:{line}"
        if language == "python":
            with redirect_stdout(io.StringIO()):
                exec(compile(code, where, "exec"), namespace)
            continue
        test = parser.get_doctest(code, namespace, where, str(path), line)
        assert test.examples, f"{where}: a pycon block without '>>>' examples"
        report = io.StringIO()
        result = runner.run(test, out=report.write, clear_globs=False)
        namespace.update(test.globs)  # DocTest runs in a copy of the namespace
        assert result.failed == 0, f"{where}:\n{report.getvalue()}"


# What fits alabaster's text column (page_width 1100px less the sidebar): 740 px of code at
# 15.3 px, where DejaVu Sans Mono, the fallback of its fonts on Linux, is 9.2 px a character.
CODE_WIDTH = 80


@pytest.mark.parametrize("path", PAGES, ids=_page_id)
def test_example_lines_fit_the_page(path):
    # A longer line scrolls: its end (often the comment) is hidden from the reader.
    long_lines = [f"{_page_id(path)}:{line}: {len(text)} characters: {text}"
                  for language, code, line in code_blocks(path) if language in EXECUTED
                  for text in code.splitlines() if len(text) > CODE_WIDTH]
    assert long_lines == []


def _labels(config_output):
    """The line labels of ``show_config``'s output, without their machine's values."""
    return [line[:16].strip() if line.startswith(" ") else line.split()[0]
            for line in config_output.splitlines()]


def test_performance_page_shows_a_whole_show_config_output():
    blocks = code_blocks(DOCS / "performance.rst")
    call = next(k for k, (_, code, _) in enumerate(blocks) if "show_config()" in code)
    language, shown, _ = blocks[call + 1]
    printed = io.StringIO()
    fastlstm.show_config(file=printed)
    assert language == "text"
    assert "..." not in shown
    assert _labels(shown) == _labels(printed.getvalue())


# The build


class _Links(HTMLParser):
    """The pages a built page's table-of-contents trees link to."""

    def __init__(self):
        super().__init__()
        self.depth = 0
        self.links = []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "div" and "toctree-wrapper" in (attrs.get("class") or ""):
            self.depth = 1
        elif tag == "div" and self.depth:
            self.depth += 1
        elif tag == "a" and self.depth and "internal" in (attrs.get("class") or ""):
            self.links.append(attrs["href"].split("#")[0])

    def handle_endtag(self, tag):
        if tag == "div" and self.depth:
            self.depth -= 1


def _reachable(html_dir):
    """Pages reached from index.html through toctrees, as document names."""
    seen, todo = set(), ["index.html"]
    while todo:
        page = todo.pop()
        if page in seen:
            continue
        seen.add(page)
        parser = _Links()
        parser.feed((html_dir / page).read_text())
        base = os.path.dirname(page)
        for link in parser.links:
            if link:
                todo.append(os.path.normpath(os.path.join(base, link)))
    return {page[:-len(".html")] for page in seen}


def _public_names():
    """``(module, name)`` of every public name: fastlstm's ``__all__`` and the
    ``__all__`` of each public submodule."""
    names = [("fastlstm", name) for name in fastlstm.__all__]
    for info in pkgutil.iter_modules(fastlstm.__path__):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"fastlstm.{info.name}")
        names += [(module.__name__, name) for name in getattr(module, "__all__", [])]
    return names


def _documented_names(html_dir):
    """Python objects in the built inventory (objects.inv: four header lines,
    then zlib-compressed lines ``name domain:role priority uri dispname``)."""
    data = (html_dir / "objects.inv").read_bytes()
    header_end = 0
    for _ in range(4):
        header_end = data.index(b"\n", header_end) + 1
    names = set()
    for line in zlib.decompress(data[header_end:]).decode().splitlines():
        match = re.match(r"(.+?)\s+(py:\w+)\s+-?\d+\s", line)
        if match:
            names.add(match[1])
    return names


@pytest.fixture(scope="module")
def built_docs(tmp_path_factory):
    pytest.importorskip("sphinx", reason="building the docs needs Sphinx (the test extra)")
    pytest.importorskip("matplotlib", reason="the docs' figures need Matplotlib (the test extra)")
    html_dir = tmp_path_factory.mktemp("html")
    result = subprocess.run(
        [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-b", "html",
         str(DOCS), str(html_dir)],
        capture_output=True, text=True)
    assert result.returncode == 0, f"sphinx-build failed:\n{result.stdout}\n{result.stderr}"
    assert result.stderr == "", result.stderr
    return html_dir


@pytest.mark.slow
def test_docs_build_without_warnings(built_docs):
    assert (built_docs / "index.html").exists()


@pytest.mark.slow
def test_every_page_is_reachable_from_the_index(built_docs):
    sources = {str(path.relative_to(DOCS).with_suffix("")) for path in PAGES}
    assert sources - _reachable(built_docs) == set()


@pytest.mark.slow
def test_figures_are_generated(built_docs):
    for name in ("unrolled_cell.png", "training_step_time.png"):
        assert (DOCS / "_generated" / name).stat().st_size > 10_000
        assert (built_docs / "_images" / name).exists()


@pytest.mark.slow
def test_every_public_name_is_in_the_api_reference(built_docs):
    documented = _documented_names(built_docs)
    missing = []
    for module_name, name in _public_names():
        module = importlib.import_module(module_name)
        value = getattr(module, name)
        candidates = {f"{module_name}.{name}"}
        # A submodule's name re-exported by fastlstm may be documented under
        # either name, and a re-exported class or function at its home module.
        if getattr(fastlstm, name, None) is value:
            candidates.add(f"fastlstm.{name}")
        home = getattr(value, "__module__", None)
        if home and getattr(value, "__name__", None) == name:
            candidates.add(f"{home}.{name}")
        if not candidates & documented:
            missing.append(f"{module_name}.{name}")
    assert missing == []


def test_the_slow_marker_is_registered_documented_and_run_by_default():
    tomllib = pytest.importorskip("tomllib")
    options = tomllib.loads((DOCS.parent / "pyproject.toml").read_text())["tool"]["pytest"]
    options = options["ini_options"]
    assert any(marker.startswith("slow:") for marker in options["markers"])
    assert "-m" not in options["addopts"].split()   # the README's command runs everything
    bash = [code for language, code, _ in code_blocks(DOCS / "development.rst")
            if language == "bash"]
    assert any('python -m pytest -m "not slow"' in code for code in bash)


def test_installation_gives_the_readme_s_test_command():
    readme = (DOCS.parent / "README.md").read_text()
    command = next(line for line in readme.splitlines()
                   if "pip install" in line and "python -m pytest" in line)
    bash = [code.strip() for language, code, _ in code_blocks(DOCS / "installation.rst")
            if language == "bash"]
    assert command in bash


@pytest.mark.slow
def test_maths_is_mathml_and_no_page_loads_a_script_from_the_internet(built_docs):
    pages_with_maths = {str(path.relative_to(DOCS).with_suffix(".html")) for path in PAGES
                        if re.search(r"\.\. math::|:math:`", path.read_text())}
    assert pages_with_maths
    for page in built_docs.rglob("*.html"):
        html = page.read_text()
        assert not re.search(r"<script[^>]*\bsrc=[\"'](https?:)?//", html), page
        if str(page.relative_to(built_docs)) in pages_with_maths:
            assert "<math" in html, page
            # No LaTeX left for a script to typeset.
            assert not re.search(r"\\begin|\\\[|\\\(|\\sigma", html), page


def test_a_table_s_frame_fits_its_cells():
    # tables.css displays tables as blocks (to scroll wide ones); a block is as wide as
    # the text column unless its width follows its content.
    rules = (DOCS / "_static" / "tables.css").read_text()
    table_rule = re.search(r"table\.docutils\s*\{([^}]*)\}", rules)[1]
    assert "display: block" in table_rule
    assert re.search(r"(^|;)\s*width:\s*fit-content", table_rule, re.M)
