"""Flax parameter files (``flax.serialization.to_bytes``, msgpack) <-> canonical parameters.

Flax's own serialization stores a parameter tree as msgpack; ``msgpack_restore``
reads it back as nested dicts of NumPy arrays, without a model. Which cell the tree
belongs to is its layout (``novolstm.convert.flax.LAYOUTS``); reading detects
it from the keys (``if`` vs ``if_``, ``dense_i`` with or without a bias), or takes
``layout=`` to insist on one.

Read: a cell's tree, as written by ``to_bytes`` of

- linen: the ``variables`` of ``nn.RNN(cell)`` (``{"params": {"cell": tree}}``), of the
  cell itself (``{"params": tree}``), or ``variables["params"]``;
- nnx: ``nnx.to_pure_dict(nnx.state(cell, nnx.Param))`` of ``LSTMCell``,
  ``OptimizedLSTMCell`` or ``GRUCell``.

Written: linen layouts as the ``variables`` of ``nn.RNN(cell)``, ready for
``flax.serialization.from_bytes(rnn.init(...), data)``; nnx layouts as the cell's pure
dict, ready for ``nnx.replace_by_pure_dict``. Default layout: ``linen_lstm`` for the
``lstm`` spec (linen ``LSTMCell`` and ``OptimizedLSTMCell``), ``linen_gru`` for ``gru``.
One cell per file: Flax has no stacked-layer convention to follow.
"""

from __future__ import annotations

import numpy as np

from novolstm.convert import ConversionError

DEFAULT_LAYOUT = {"lstm": "linen_lstm", "gru": "linen_gru"}


def _unwrap(tree: dict) -> tuple[dict, bool]:
    """The cell's own tree, and whether it came wrapped as linen variables."""
    linen = False
    if set(tree) == {"params"}:
        tree, linen = tree["params"], True
    if set(tree) == {"cell"}:  # nn.RNN's submodule
        tree, linen = tree["cell"], True
    return tree, linen


def detect_layout(tree: dict, cell: str) -> str:
    """The Flax layout of a cell's tree for spec ``cell``, from its keys and shapes."""
    keys = set(tree)
    if cell == "lstm":
        if {"ii", "if", "hi"} <= keys:
            return "linen_lstm"
        if {"ii", "if_", "hi"} <= keys:
            return "nnx_lstm"
        if keys == {"dense_i", "dense_h"} and "bias" in tree["dense_h"]:
            return "nnx_optimized_lstm"
    elif cell == "gru":
        if {"ir", "iz", "in"} <= keys:
            return "linen_gru"
        if keys == {"dense_i", "dense_h"} and "bias" in tree["dense_i"]:
            return "nnx_gru"
    else:
        raise ConversionError(f"Flax has cells for the specs {sorted(DEFAULT_LAYOUT)}, not {cell!r}")
    raise ConversionError(
        f"a Flax parameter tree with keys {sorted(keys)} is no Flax {cell} cell layout that novolstm knows"
    )


def read_flax(path, cell: str, layout: str | None = None) -> dict:
    """A ``to_bytes`` file -> ``{"l0": canonical}``."""
    from flax import serialization

    from novolstm.convert.flax import LAYOUTS, to_canonical
    from novolstm.convert.safe_io import read_bytes

    data = read_bytes(path, MAX_FILE_BYTES, ConversionError, "Flax parameter file")
    try:
        tree = serialization.msgpack_restore(data)
    except Exception as exc:  # msgpack raises its own error types for corrupt data
        raise ConversionError(f"{path}: not a Flax msgpack file ({type(exc).__name__}: {exc})") from None
    if not isinstance(tree, dict):
        raise ConversionError(f"{path}: a Flax file of a {type(tree).__name__}, expected a parameter tree (dict)")
    _check_tree(tree, path)
    tree, _ = _unwrap(tree)
    layout = layout or detect_layout(tree, cell)
    if LAYOUTS.get(layout) != cell:
        raise ConversionError(f"Flax layout {layout!r} holds spec {LAYOUTS.get(layout)!r}, not {cell!r}")
    return {"l0": to_canonical(tree, layout)}


#: a Flax parameter file may be at most this large
MAX_FILE_BYTES = 4 << 30


def _check_tree(tree, path, depth: int = 0) -> None:
    """A parameter tree: nested dicts of string keys, floating-point arrays at the leaves, shallow."""
    if depth > 8:
        raise ConversionError(f"{path}: a parameter tree nested more than 8 levels deep; a Flax cell's is at most 3")
    for key, value in tree.items():
        if not isinstance(key, str):
            raise ConversionError(f"{path}: key {key!r} is no name")
        if isinstance(value, dict):
            _check_tree(value, path, depth + 1)
        elif not isinstance(value, np.ndarray) or value.dtype.kind != "f":
            raise ConversionError(
                f"{path}: {key!r} holds a {type(value).__name__} {getattr(value, 'dtype', '')}; expected floating-point arrays"
            )


def write_flax(layers: dict, path, cell: str, layout: str | None = None, lossy: bool = False) -> None:
    """``{"l0": canonical}`` -> a ``to_bytes`` file in ``layout`` (see the module docstring)."""
    from flax import serialization

    from novolstm.convert.files import structure
    from novolstm.convert.flax import LAYOUTS, from_canonical

    if structure(layers) != (1, False):
        raise ConversionError(
            "a Flax file holds one cell; these weights are stacked or bidirectional (write each cell on its own)"
        )
    if cell not in DEFAULT_LAYOUT:
        raise ConversionError(f"Flax has cells for the specs {sorted(DEFAULT_LAYOUT)}, not {cell!r}")
    layout = layout or DEFAULT_LAYOUT[cell]
    if LAYOUTS.get(layout) != cell:
        raise ConversionError(f"Flax layout {layout!r} holds spec {LAYOUTS.get(layout)!r}, not {cell!r}")
    from novolstm.convert.safe_io import atomic_write

    tree = from_canonical(layers["l0"], layout, lossy=lossy)
    if layout.startswith("linen"):
        tree = {"params": {"cell": tree}}
    atomic_write(path, serialization.msgpack_serialize(_as_numpy(tree)))


def _as_numpy(tree):
    return {k: _as_numpy(v) if isinstance(v, dict) else np.ascontiguousarray(v) for k, v in tree.items()}
