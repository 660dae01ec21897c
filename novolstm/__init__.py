"""novolstm: recurrent cells generated from one declarative spec for NumPy, PyTorch, Keras 3 and JAX.

Importing this package imports no deep-learning framework: a backend imports its
framework when it is asked for.

Example:
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

__version__ = "0.1.0"

from .api import export_onnx, generate_source, get_cell, get_layer, init_params, list_backends, load_generated, run
from .checkpoint import CheckpointError, load, save
from .errors import SpecError
from .spec_loader import list_specs, load_spec, loads_spec
from .spec_model import Spec

__all__ = [
    "CheckpointError",
    "Spec",
    "SpecError",
    "export_onnx",
    "list_backends",
    "generate_source",
    "get_cell",
    "get_layer",
    "init_params",
    "list_specs",
    "load",
    "load_generated",
    "load_spec",
    "loads_spec",
    "reference",
    "run",
    "save",
]


def __getattr__(name: str):
    # The oracle loads on first use, keeping `import novolstm` light.
    if name == "reference":
        import importlib

        return importlib.import_module("novolstm.reference")
    raise AttributeError(f"module 'novolstm' has no attribute {name!r}")
