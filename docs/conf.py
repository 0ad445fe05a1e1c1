"""Sphinx configuration of fastlstm's documentation.

Build with ``python -m sphinx -W --keep-going -b html docs docs/_build/html``
(warnings are errors). Every build first runs ``scripts/make_figures.py``,
which draws the figures and writes the performance table into
``_generated/`` from ``_static/bench.json``.
"""
import importlib.util
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "scripts"))
sys.path.insert(0, os.path.join(HERE, "_ext"))

import fastlstm  # noqa: E402

# Autodoc imports fastlstm.keras, and Keras picks its backend when first
# imported (TensorFlow unless told): one fastlstm supports, when installed.
for _backend in ("jax", "torch"):
    if "KERAS_BACKEND" not in os.environ and importlib.util.find_spec(_backend):
        os.environ["KERAS_BACKEND"] = _backend
import make_figures  # noqa: E402

make_figures.make_all(out=os.path.join(HERE, "_generated"))

project = "fastlstm"
author = "the fastlstm developers"
copyright = "the fastlstm developers"
release = fastlstm.__version__
version = ".".join(release.split(".")[:2])

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.napoleon",
    "mathml",
]
# Maths as MathML written at build time (_ext/mathml.py): the pages need no
# JavaScript from the internet to show their formulas.
html_math_renderer = "mathml"

# The docstrings are numpydoc style.
napoleon_google_docstring = False
napoleon_numpy_docstring = True
napoleon_use_rtype = False
autodoc_member_order = "bysource"
autodoc_default_options = {"members": True, "show-inheritance": True}
autosummary_generate = False

exclude_patterns = ["_build", "scripts", "_generated/*.rst"]
templates_path = []
html_static_path = ["_static"]
html_css_files = ["tables.css", "maths.css"]
html_theme = "alabaster"
html_title = f"fastlstm {release}"
html_theme_options = {"description": "Fast CPU training of LSTMs", "page_width": "1100px"}

