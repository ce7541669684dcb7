"""Runs the examples in the docstrings, so the documentation cannot drift."""

import doctest
import importlib
import pkgutil

import numpy as np
import pytest

import neurolite_keras

MODULES = sorted(
    name
    for _, name, _ in pkgutil.walk_packages(
        neurolite_keras.__path__, "neurolite_keras."
    )
    if not name.endswith(("cli", "__main__"))
)


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    module = importlib.import_module(name)
    globs = {"np": np, **vars(neurolite_keras), **vars(module)}
    finder = doctest.DocTestFinder(exclude_empty=True)
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    for test in finder.find(module, name, globs=globs):
        runner.run(test)
    result = runner.summarize(verbose=False)
    assert result.failed == 0, f"{result.failed} docstring example(s) failed"
