"""The examples in candlejax's docstrings run (``>>>`` blocks), one test per module."""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest

import candlejax

SKIP_PACKAGES = ("candlejax.models",)  # model files: checked by their parity tests


def _modules() -> list[str]:
    names = ["candlejax"]
    for info in pkgutil.walk_packages(candlejax.__path__, "candlejax."):
        if info.name.startswith(SKIP_PACKAGES) or info.name.endswith("__main__"):
            continue
        names.append(info.name)
    return sorted(names)


def _with_examples() -> list[str]:
    out = []
    finder = doctest.DocTestFinder(exclude_empty=True)
    for name in _modules():
        try:
            mod = importlib.import_module(name)
        except ImportError:  # an optional extra that is not installed
            continue
        if any(t.examples for t in finder.find(mod, name)):
            out.append(name)
    return out


MODULES = _with_examples()


def test_there_are_doctests():
    assert len(MODULES) >= 5, MODULES


@pytest.mark.parametrize("name", MODULES)
def test_doctests(name: str, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # examples that write files write them here
    mod = importlib.import_module(name)
    finder = doctest.DocTestFinder(exclude_empty=True)
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    for test in finder.find(mod, name):  # globals: the module's own, as doctest does
        runner.run(test)
    result = runner.summarize(verbose=False)
    assert result.failed == 0, f"{result.failed} of {result.attempted} doctest examples failed in {name}"
