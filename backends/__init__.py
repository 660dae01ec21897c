"""The emitters: one package per framework, each with the same shape.

Each package holds ``emit.py`` and ``runtime.py``. ``emit`` defines ``NAME``, ``FRAMEWORK`` (the import it needs), ``OPS`` (op ->
code snippet), ``generate(plan) -> str`` (the standalone source) and
``run(module, params, x, state, mask)`` (the backend-neutral entry used by
``novolstm.run``). This registry is the one place that maps a backend name to
its emitter; nothing else looks at the name.
"""

from __future__ import annotations

import importlib
from types import ModuleType

#: backend name -> its emitter module under ``novolstm.backends``
EMITTERS = {name: f"{name}.emit" for name in ("numpy", "jax", "onnx", "torch", "keras")}


def emitter(backend: str) -> ModuleType:
    """The emitter module for ``backend``; importing it imports no framework."""
    if backend not in EMITTERS:
        raise ValueError(f"unknown backend {backend!r}; expected one of {sorted(EMITTERS)}")
    return importlib.import_module(f"{__name__}.{EMITTERS[backend]}")
