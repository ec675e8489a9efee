"""Sphinx extension of the gradflow docs: the API pages and the command-line reference.

* ``config-inited``: writes ``api/*.rst``, one page per package named in the configuration value
  ``gradflow_api_packages``, each an autosummary of exactly that package's ``__all__`` (a module
  without ``__all__``: the names it defines itself). An object exported in several places is
  documented once, under its first exporter in that list (``gradflow.solve``, not
  ``gradflow.flow.solve``), and linked from the others, so that every reference has one target.
* ``.. gradflow-cli::``: the ``--help`` of ``gradflow`` and of every subcommand, rendered from
  ``gradflow.cli._parser()`` when the docs are built (never copied by hand).
"""
from __future__ import annotations

import argparse
import ast
import importlib
import inspect
import os
import types
from pathlib import Path

from docutils import nodes
from docutils.statemachine import StringList
from sphinx.util.docutils import SphinxDirective
from sphinx.util.nodes import nested_parse_with_titles

KINDS = [("class", "Classes"), ("function", "Functions"), ("exception", "Exceptions"), ("data", "Data"),
         ("module", "Modules")]


# ---- API pages -----------------------------------------------------------------------------------
def _module_defined_names(mod) -> list[str]:
    """Public names a module without ``__all__`` defines itself (functions, classes, top-level
    assignments), in source order."""
    tree = ast.parse(Path(inspect.getsourcefile(mod)).read_text())
    names = []
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.append(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names += [t.id for t in targets if isinstance(t, ast.Name)]
    return [n for n in dict.fromkeys(names) if not n.startswith("_") and hasattr(mod, n)]


def public_names(mod) -> list[str]:
    names = getattr(mod, "__all__", None)
    return list(names) if names is not None else _module_defined_names(mod)


def kind(obj) -> str:
    if isinstance(obj, types.ModuleType):
        return "module"
    if isinstance(obj, type):
        return "exception" if issubclass(obj, BaseException) else "class"
    if callable(obj):
        return "function"
    return "data"


def _shared(obj) -> bool:
    """Whether an object is identified by identity across exporters (not small values such as
    strings and numbers, which may coincide by chance)."""
    return not isinstance(obj, (str, bytes, int, float, bool, type(None)))


CANONICAL: dict[int, str] = {}             # id(obj) -> the full name it is documented under


def api_pages(packages: list[str]) -> dict[str, str]:
    """{page name: reST source} for the API reference."""
    modules = {name: importlib.import_module(name) for name in packages}
    module_page = {id(mod): name for name, mod in modules.items()}
    canonical = CANONICAL
    canonical.clear()
    entries = {}                            # package -> [(kind, name or link, documented here)]
    for pkg, mod in modules.items():
        rows = []
        for name in public_names(mod):
            if name.startswith("__"):       # __version__: stated in the page's text
                continue
            obj = getattr(mod, name)
            k = kind(obj)
            if k == "module":
                target = module_page.get(id(obj))
                rows.append((k, f":doc:`{target} <{target}>`" if target else f"``{pkg}.{name}``", True))
                continue
            full = f"{pkg}.{name}"
            if _shared(obj):
                full = canonical.setdefault(id(obj), full)
            rows.append((k, name, True) if full == f"{pkg}.{name}" else (k, full, False))
        entries[pkg] = rows

    pages = {}
    for pkg in packages:
        title = f"``{pkg}``"
        lines = [title, "=" * len(title), "", f".. automodule:: {pkg}", "   :no-members:", ""]
        if pkg == "gradflow":
            lines += ["Everything below is importable as ``gradflow.NAME`` (``gradflow.__all__``); "
                      f"``gradflow.__version__`` is ``{modules[pkg].__version__}``.", ""]
        for k, heading in KINDS:
            here = [e for kk, e, own in entries[pkg] if kk == k and own]
            again = [e for kk, e, own in entries[pkg] if kk == k and not own]
            if not here and not again:
                continue
            lines += [heading, "-" * len(heading), ""]
            if k == "module":
                lines += [f"* {e}" for e in here] + [""]
                continue
            if here:
                lines += [f".. currentmodule:: {pkg}", "", ".. autosummary::", "   :toctree: generated",
                          "   :nosignatures:", ""] + [f"   {e}" for e in here] + [""]
            if again:
                # documented under a package listed earlier: a table of links to that one page.
                # Entries are relative to "gradflow" (autosummary refuses names that repeat the
                # current module), which also keeps the summaries' own references resolvable.
                lines += [f"{'Also in' if here else 'In'} ``{pkg}``, documented once as ``gradflow.NAME``:", "",
                          ".. currentmodule:: gradflow", "", ".. autosummary::", "   :nosignatures:", ""]
                lines += [f"   {e.removeprefix('gradflow.')}" for e in again] + [""]
        pages[pkg] = "\n".join(lines)
    index = ["API reference", "=============", "",
             "Generated from the ``__all__`` of each package when the docs are built: ``gradflow`` itself, "
             "then its public subpackages. An object that several packages export is documented once, "
             "under the first of them in this list, and linked from the others.", "",
             ".. toctree::", "   :maxdepth: 1", ""] + [f"   {pkg}" for pkg in packages] + [""]
    pages["index"] = "\n".join(index)
    return pages


def write_api(app, config) -> None:
    out = Path(app.srcdir) / "api"
    out.mkdir(exist_ok=True)
    for name, text in api_pages(config.gradflow_api_packages).items():
        path = out / f"{name}.rst"
        if not path.exists() or path.read_text() != text:      # unchanged pages are not rebuilt
            path.write_text(text)


def _lookup(dotted: str):
    """The object a dotted name denotes (a module, then attributes), or None."""
    parts = dotted.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except Exception:
            continue
        try:
            for attr in parts[i:]:
                obj = getattr(obj, attr)
        except AttributeError:
            return None
        return obj
    return None


def _documented_name(dotted: str) -> str | None:
    """The documented name of what ``dotted`` denotes, when that is an object, or a member of an
    object, that the API pages document under another of its public names (``gradflow.flow.solve``
    -> ``gradflow.solve``; ``gradflow.training.run.TrainRun.load`` -> ``gradflow.TrainRun.load``)."""
    parts = dotted.split(".")
    for i in range(len(parts), 1, -1):
        obj = _lookup(".".join(parts[:i]))
        if obj is not None and _shared(obj) and id(obj) in CANONICAL:
            name = ".".join([CANONICAL[id(obj)]] + parts[i:])
            return None if name == dotted else name
    return None


def resolve_alias(app, env, node, contnode):
    """``missing-reference``: a Python reference to an object under one of its other public (or
    defining-module) names resolves to the page that documents it."""
    if node.get("refdomain") != "py":
        return None
    target = node["reftarget"].removeprefix("~").removeprefix(".")
    mod, cls = node.get("py:module"), node.get("py:class")
    candidates = [target]
    if mod:
        candidates += [f"{mod}.{cls}.{target}"] if cls else []
        candidates += [f"{mod}.{target}"]
    domain = env.domains["py"]
    for cand in candidates:
        name = _documented_name(cand)
        if name is None:
            continue
        new = node.deepcopy()
        new["reftarget"] = name
        found = domain.resolve_xref(env, node["refdoc"], app.builder, node["reftype"], name, new, contnode)
        if found is not None:
            return found
    return None


# ---- command-line reference ----------------------------------------------------------------------
def _subcommands(parser: argparse.ArgumentParser) -> dict:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _help(parser: argparse.ArgumentParser, width: int = 100) -> str:
    old = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = str(width)            # argparse wraps to the terminal: make it fixed
    try:
        return parser.format_help()
    finally:
        if old is None:
            del os.environ["COLUMNS"]
        else:
            os.environ["COLUMNS"] = old


def _block(text: str) -> list[str]:
    return [".. code-block:: text", ""] + [f"   {line}" if line else "" for line in text.splitlines()] + [""]


class GradflowCli(SphinxDirective):
    """``.. gradflow-cli::`` renders the help of ``gradflow`` and of each subcommand, each in its
    own section (level below the current one)."""

    has_content = False
    option_spec = {"module": str}

    def run(self):
        mod = importlib.import_module(self.options.get("module", "gradflow.cli"))
        self.env.note_dependency(mod.__file__)
        parser = mod._parser()
        lines = _block(_help(parser))
        for name, sub in _subcommands(parser).items():
            heading = f"gradflow {name}"
            lines += [heading, "-" * len(heading), ""] + _block(_help(sub))
        node = nodes.section()
        node.document = self.state.document
        nested_parse_with_titles(self.state, StringList(lines, source="gradflow.cli._parser()"), node)
        return node.children


def setup(app):
    app.add_config_value("gradflow_api_packages", ["gradflow"], "env")
    app.connect("config-inited", write_api)      # before the sources are listed and autosummary runs
    app.connect("missing-reference", resolve_alias)
    app.add_directive("gradflow-cli", GradflowCli)
    return {"parallel_read_safe": True, "parallel_write_safe": True, "version": "1"}
