"""The docstring examples of every gradflow module run as doctests (part of the default suite).

``python -m pytest -q tests/test_doctests.py`` runs them alone; a module whose imports are
optional (``gradflow.training.pytorch`` needs torch) is skipped when they are missing. The same
examples render in the API reference of the docs (docs/, ``python -m sphinx -W -b html docs
docs/_build/html``).
"""
from __future__ import annotations

import doctest
import importlib
import importlib.util
import pkgutil

import pytest

import gradflow

OPTIONFLAGS = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE


def _module_names() -> list[str]:
    names = [gradflow.__name__]
    for info in pkgutil.walk_packages(gradflow.__path__, prefix=f"{gradflow.__name__}."):
        names.append(info.name)
    return sorted(names)


def _with_examples() -> list[str]:
    """Modules whose source holds a docstring example (read without importing them)."""
    out = []
    for name in _module_names():
        spec = importlib.util.find_spec(name)
        origin = getattr(spec, "origin", None)
        if origin and origin.endswith(".py"):
            with open(origin, encoding="utf-8") as fh:
                if ">>>" in fh.read():
                    out.append(name)
    return out


MODULES = _with_examples()


def test_some_modules_have_examples():
    assert MODULES, "no docstring examples found: the doctest collection is broken"


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    try:
        module = importlib.import_module(name)
    except ModuleNotFoundError as exc:          # an optional dependency (torch) is missing
        pytest.skip(f"{name} needs {exc.name}")
    finder = doctest.DocTestFinder(exclude_empty=True)
    runner = doctest.DocTestRunner(optionflags=OPTIONFLAGS)
    tests = [t for t in finder.find(module, name, globs=dict(vars(module))) if t.examples]
    # objects re-exported from another module are tested where they are defined
    tests = [t for t in tests if t.filename is None or t.filename == module.__file__]
    failures = []
    for test in tests:
        out = []
        result = runner.run(test, out=out.append, clear_globs=True)
        if result.failed:
            failures.append("".join(out))
    assert not failures, "\n".join(failures)
