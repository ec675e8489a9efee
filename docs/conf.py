"""Sphinx configuration of the gradflow documentation.

Build:  pip install -e '.[docs]' && python -m sphinx -W -b html docs docs/_build/html
Quick:  GRADFLOW_DOCS_QUICK=1 python -m sphinx -W -b html docs docs/_build/html   (small tutorials, as in CI)

Generated at build time, never committed: ``api/`` (the API reference, written from the
packages' ``__all__`` by ``_ext/gradflow_docs.py``), ``tutorials/`` (sphinx-gallery runs
``../examples``), ``sg_execution_times.rst``.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parent
ROOT = DOCS.parent
# document the checkout the docs sit in, whatever gradflow the environment has installed
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(DOCS / "_ext"))
os.environ.setdefault("MPLBACKEND", "Agg")

import gradflow  # noqa: E402

QUICK = os.environ.get("GRADFLOW_DOCS_QUICK", "0") not in ("", "0")

# ---- project -------------------------------------------------------------------------------------
project = "gradflow"
author = "the gradflow developers"
copyright = "2024-2026, the gradflow developers"
release = gradflow.__version__
version = ".".join(release.split(".")[:2])

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "numpydoc",
    "sphinx.ext.mathjax",
    "sphinx.ext.viewcode",
    "myst_parser",
    "sphinx_gallery.gen_gallery",
    "gradflow_docs",            # _ext/: the API pages from __all__, the command-line reference
]

source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build", "Thumbs.db", ".DS_Store", "tutorials/*.ipynb", "tutorials/*.py",
                    "tutorials/*.zip", "tutorials/*.md5", "tutorials/*.json"]
templates_path = ["_templates"]
nitpicky = True
# third-party types named in signatures and docstrings: no intersphinx inventories are fetched
# (the build works offline), so their references cannot resolve
nitpick_ignore_regex = [
    (r"py:.*", r"(np|numpy|xr|xarray|scipy|pd|pandas|torch|dask|distributed|matplotlib|mpl|plt|"
               r"pathlib|os|collections\.abc|typing|argparse|concurrent)\..*"),
    (r"py:class", r"(Path|PathLike|ndarray|ArrayLike|NDArray|Figure|Axes|Client|Dataset|DataArray|"
                  r"OdeSolver|Callable|Iterable|Iterator|Sequence|Mapping)"),
    (r"py:class", r"(array_like|array-like|optional|callable|mapping|sequence|iterable|default .*)"),
]

# ---- autodoc, autosummary, numpydoc ---------------------------------------------------------------
autosummary_generate = True
autosummary_imported_members = False
autosummary_ignore_module_all = False
autodoc_default_options = {"members": True, "member-order": "bysource"}
autodoc_typehints = "signature"
autodoc_preserve_defaults = True
autodoc_class_signature = "mixed"
numpydoc_show_class_members = False
numpydoc_class_members_toctree = False
numpydoc_xref_param_type = False
numpydoc_validation_checks = set()

# ---- MyST -----------------------------------------------------------------------------------------
myst_enable_extensions = ["dollarmath", "amsmath", "colon_fence", "deflist"]
myst_dmath_double_inline = True
myst_heading_anchors = 3

# ---- HTML -----------------------------------------------------------------------------------------
html_theme = "furo"
html_title = f"gradflow {release}"
html_static_path = []
html_theme_options = {"navigation_with_keys": True}
pygments_style = "friendly"

# ---- sphinx-gallery: the tutorials, executed at build time ----------------------------------------
# sphinx-gallery reruns a tutorial only when its source changed: rerun them all when the size
# (quick or full) differs from that of the outputs already in tutorials/
_mode = "quick" if QUICK else "full"
_mode_file = DOCS / "tutorials" / ".gradflow-docs-mode"
_stale = _mode_file.is_file() and _mode_file.read_text().strip() != _mode


def _record_mode(app, exception):
    if exception is None and _mode_file.parent.is_dir():
        _mode_file.write_text(_mode + "\n")


def setup(app):
    app.connect("build-finished", _record_mode)


sphinx_gallery_conf = {
    "run_stale_examples": _stale,
    "examples_dirs": str(ROOT / "examples"),
    "gallery_dirs": "tutorials",
    "filename_pattern": r"/plot_",          # every tutorial is executed
    "within_subsection_order": "FileNameSortKey",
    "download_all_examples": False,
    "remove_config_comments": True,
    "image_scrapers": ("matplotlib",),
    "capture_repr": (),                     # the tutorials print what they show
    "only_warn_on_example_error": False,    # a failing tutorial fails the build
    "show_memory": False,
    "min_reported_time": 1,
    "reset_modules_order": "before",
}

# gradflow_docs: which subpackages get an API page, in this order (top level first)
gradflow_api_packages = ["gradflow", "gradflow.presets", "gradflow.images", "gradflow.model", "gradflow.theory",
                         "gradflow.flow", "gradflow.training", "gradflow.analysis", "gradflow.io",
                         "gradflow.figures"]
