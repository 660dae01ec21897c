"""Docstring examples are tests: every module of the installed package runs its own."""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest

import novolstm

#: The public classes modules, which import their frameworks.
FRAMEWORK_MODULES = ("novolstm.torch", "novolstm.keras", "novolstm.jax", "novolstm.flax", "novolstm.flax.linen")
MODULES = sorted(
    m.name
    for m in pkgutil.walk_packages(novolstm.__path__, "novolstm.")
    # __main__ runs the CLI on import; each framework's backend package and public classes module
    # (novolstm.torch, ...) runs its examples in its own env; a runtime's examples run in the
    # generated modules that inline it.
    if m.name != "novolstm.__main__"
    and (not m.name.startswith("novolstm.backends.") or m.name.startswith("novolstm.backends.numpy"))
    and m.name not in FRAMEWORK_MODULES
    and not m.name.endswith(".runtime")
)


@pytest.mark.parametrize("name", ["novolstm"] + MODULES)
def test_docstring_examples(name):
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0


def test_generated_module_examples():
    result = doctest.testmod(novolstm.load_generated("novolstm", "numpy"), optionflags=doctest.ELLIPSIS)
    assert result.failed == 0 and result.attempted > 0
