"""Sphinx configuration of the pyro-vae documentation (``sphinx-build -W docs docs/_build``).

Math is typeset by a MathJax copy installed on the machine (Debian's ``libjs-mathjax``),
copied into the site, so pages render without a network.
"""

import os
import shutil
from pathlib import Path

from sphinx.application import Sphinx

import pyro_vae

project = "pyro-vae"
author = "the pyro-vae developers"
copyright = author
release = version = pyro_vae.__version__
extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.mathjax",
    "sphinx.ext.viewcode",
    "sphinxarg.ext",
]
source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
exclude_patterns = ["_build", "runs", "README.md", "results/tables"]
myst_enable_extensions = ["dollarmath", "colon_fence"]
myst_heading_anchors = 3
# MathJax 2 knows no processHtmlClass: MyST's page-wide ignore class would hide every formula
myst_update_mathjax = False

autodoc_member_order = "bysource"
autodoc_default_options = {"members": True, "show-inheritance": True}
autodoc_typehints = "description"
autosummary_generate = True
templates_path = ["_templates"]  # class pages: own members only, not nn.Module's

#: Where the offline MathJax comes from; ``PYRO_VAE_MATHJAX`` overrides it.
MATHJAX = Path(os.environ.get("PYRO_VAE_MATHJAX", "/usr/share/javascript/mathjax"))
if not (MATHJAX / "MathJax.js").is_file():
    raise RuntimeError(
        f"no MathJax at {MATHJAX}: install it (apt-get install libjs-mathjax) or point "
        "PYRO_VAE_MATHJAX at a MathJax 2 directory"
    )
mathjax_path = "mathjax/MathJax.js?config=TeX-AMS_CHTML"
html_theme = "furo"
html_title = f"pyro-vae {version}"


def copy_mathjax(app: Sphinx, exception: Exception | None) -> None:
    """Copy MathJax into the built site once the pages are written."""
    if exception is None and app.builder.format == "html":
        target = Path(app.outdir) / "_static" / "mathjax"
        if not target.exists():
            ignore = shutil.ignore_patterns("unpacked", "test", "*.md")
            shutil.copytree(MATHJAX, target, symlinks=False, ignore=ignore)


def setup(app: Sphinx) -> None:
    app.connect("build-finished", copy_mathjax)
