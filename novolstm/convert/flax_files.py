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

    with open(path, "rb") as fh:
        data = fh.read()
    try:
        tree = serialization.msgpack_restore(data)
    except Exception as exc:  # msgpack raises its own error types for corrupt data
        raise ConversionError(f"{path}: not a Flax msgpack file ({type(exc).__name__}: {exc})") from None
    if not isinstance(tree, dict):
        raise ConversionError(f"{path}: a Flax file of a {type(tree).__name__}, expected a parameter tree (dict)")
    tree, _ = _unwrap(tree)
    layout = layout or detect_layout(tree, cell)
    if LAYOUTS.get(layout) != cell:
        raise ConversionError(f"Flax layout {layout!r} holds spec {LAYOUTS.get(layout)!r}, not {cell!r}")
    return {"l0": to_canonical(tree, layout)}


def write_flax(layers: dict, path, cell: str, layout: str | None = None) -> None:
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
    tree = from_canonical(layers["l0"], layout)
    if layout.startswith("linen"):
        tree = {"params": {"cell": tree}}
    tree = _as_numpy(tree)
    with open(path, "wb") as fh:
        fh.write(serialization.msgpack_serialize(tree))


def _as_numpy(tree):
    return {k: _as_numpy(v) if isinstance(v, dict) else np.ascontiguousarray(v) for k, v in tree.items()}
