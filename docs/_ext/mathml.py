"""Sphinx extension: the docs' maths as MathML, written when the docs build.

Browsers draw MathML themselves, so the formulas show without the internet,
where MathJax (Sphinx's default, loaded from a CDN) leaves raw LaTeX. The
conversion is docutils' own (``docutils.utils.math.latex2mathml``, which its
HTML writer uses for ``math_output = "MathML"``): no JavaScript, no LaTeX
installation. A display block whose lines end in ``\\`` becomes a table
aligned at ``&``, as LaTeX's ``align*``; ``_static/maths.css`` aligns its
columns. LaTeX the converter cannot read is a warning (an error in a
``-W`` build) naming the page and the line.
"""
import html

from docutils import nodes
from docutils.utils.math import MathError
from docutils.utils.math.latex2mathml import tex2mathml
from sphinx.locale import _
from sphinx.util import logging
from sphinx.util.math import get_node_equation_number

logger = logging.getLogger(__name__)


def _mathml(node, latex, as_block):
    """``latex`` as MathML; the LaTeX itself, escaped, if it cannot be converted."""
    try:
        return tex2mathml(latex, as_block=as_block)
    except MathError as error:
        logger.warning("cannot write %r as MathML: %s", latex, error, location=node)
        return f"<code>{html.escape(latex)}</code>"


def visit_math(self, node):
    self.body.append(self.starttag(node, "span", "", CLASS="math"))
    self.body.append(_mathml(node, node.astext(), as_block=False))
    self.body.append("</span>")
    raise nodes.SkipNode


def visit_math_block(self, node):
    self.body.append(self.starttag(node, "div", CLASS="math"))
    if node["number"]:
        self.body.append(f'<span class="eqno">({get_node_equation_number(self, node)})')
        self.add_permalink_ref(node, _("Link to this equation"))
        self.body.append("</span>")
    # Equations separated by a blank line are displayed one under the other.
    for equation in node.astext().split("\n\n"):
        if equation.strip():
            self.body.append(_mathml(node, equation, as_block=True))
    self.body.append("</div>\n")
    raise nodes.SkipNode


def setup(app):
    app.add_html_math_renderer("mathml", (visit_math, None), (visit_math_block, None))
    return {"parallel_read_safe": True, "parallel_write_safe": True}
