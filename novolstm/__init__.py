"""novolstm: recurrent cells generated from one declarative spec for NumPy, PyTorch, Keras 3 and JAX.

Importing this package imports no deep-learning framework, and not even NumPy: each
public name loads its module on first use, so ``import novolstm`` stays fast and a
backend imports its framework only when it is asked for.

Examples:
    >>> import numpy as np
    >>> import novolstm
    >>> spec = novolstm.load_spec("novolstm")
    >>> params = novolstm.init_params(spec, input_size=3, units=4, seed=0)
    >>> x = np.random.default_rng(0).normal(size=(2, 5, 3))
    >>> outputs, (h, c) = novolstm.run(spec, params, x, backend="numpy")
    >>> expected, _ = novolstm.reference.run("novolstm", params, x)
    >>> bool(np.abs(outputs - expected).max() < 1e-12)
    True
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

__version__ = "0.1.0"

#: public name -> the module (under novolstm) that defines it
_EXPORTS = {
    "CheckpointError": "checkpoint",
    "Spec": "spec_model",
    "SpecError": "errors",
    "export_onnx": "api",
    "generate_source": "api",
    "get_cell": "api",
    "get_layer": "api",
    "init_params": "api",
    "list_backends": "api",
    "list_specs": "spec_loader",
    "load": "checkpoint",
    "load_generated": "api",
    "load_into": "checkpoint",
    "load_spec": "spec_loader",
    "loads_spec": "spec_loader",
    "run": "api",
    "save": "checkpoint",
    "save_module": "checkpoint",
}
_MODULES = ("reference", "interpret", "testing", "conformance", "evaluation", "convert")

__all__ = sorted(_EXPORTS) + list(_MODULES)


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f"novolstm.{_EXPORTS[name]}"), name)
    elif name in _MODULES:
        value = importlib.import_module(f"novolstm.{name}")
    else:
        raise AttributeError(f"module 'novolstm' has no attribute {name!r}")
    globals()[name] = value  # resolve once
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__))


if TYPE_CHECKING:  # for type checkers and documentation tools, which do not run __getattr__
    from . import conformance, convert, evaluation, interpret, reference, testing
    from .api import export_onnx, generate_source, get_cell, get_layer, init_params, list_backends, load_generated, run
    from .checkpoint import CheckpointError, load, load_into, save, save_module
    from .errors import SpecError
    from .spec_loader import list_specs, load_spec, loads_spec
    from .spec_model import Spec
