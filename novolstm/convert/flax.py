"""Flax recurrent cells <-> canonical parameters (NumPy in and out; Flax is never imported).

A layout names one Flax cell's parameter tree and the spec it converts to:

- ``linen_lstm``: linen ``LSTMCell`` and ``OptimizedLSTMCell`` (the same tree): ``ii if ig io``
  {kernel (I, H)} and ``hi hf hg ho`` {kernel (H, H), bias (H,)}.
- ``nnx_lstm``: nnx ``LSTMCell``: as linen, with ``if_`` for ``if``.
- ``nnx_optimized_lstm``: nnx ``OptimizedLSTMCell``: ``dense_i`` {kernel (I, 4H)} and
  ``dense_h`` {kernel (H, 4H), bias (4H,)}, gates in the order i, f, g, o.
- ``linen_gru``: linen ``GRUCell``: ``ir iz in`` {kernel, bias}, ``hr hz`` {kernel},
  ``hn`` {kernel, bias}.
- ``nnx_gru``: nnx ``GRUCell``: ``dense_i`` {kernel (I, 3H), bias (3H,)} and ``dense_h``
  {kernel (H, 3H)}, gates in the order r, z, n.

Flax's LSTM has one bias per gate, on the recurrent side, so the canonical ``b_<gate>``
is that bias and every conversion is exact both ways. Flax's LSTM carry is ``(c, h)``;
the canonical state is ``(h, c)``: see ``carry_to_state`` and ``state_to_carry``.
nnx's ``GRUCell`` has no recurrent bias inside the reset product, so a canonical GRU
converts to it only when ``b_hn`` is zero; otherwise the conversion refuses.

Trees are nested mappings of arrays: a linen ``variables`` dict (with or without its
``"params"`` level) or ``nnx.state(cell, nnx.Param)`` (or ``nnx.to_pure_dict`` of it).
To load canonical weights into Flax: ``{"params": from_canonical(p, "linen_lstm")}``
for linen; for nnx, ``state = nnx.state(cell, nnx.Param)``,
``nnx.replace_by_pure_dict(state, from_canonical(p, "nnx_lstm"))``, ``nnx.update(cell, state)``.

Examples:
    >>> import numpy as np
    >>> import novolstm
    >>> canonical = novolstm.init_params("lstm", input_size=3, units=2, seed=0)
    >>> tree = from_canonical(canonical, "nnx_optimized_lstm")
    >>> tree["dense_i"]["kernel"].shape, tree["dense_h"]["bias"].shape
    ((3, 8), (8,))
    >>> back = to_canonical(tree, "nnx_optimized_lstm")
    >>> all(np.array_equal(back[k], canonical[k]) for k in canonical)
    True
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from novolstm.convert import ConversionError, drop  # one error type for every converter

__all__ = ["LAYOUTS", "carry_to_state", "from_canonical", "state_to_carry", "to_canonical"]

_LSTM_GATES = ("i", "f", "g", "o")  # Flax's gate order and suffixes: ii/hi, if/hf, ig/hg, io/ho
_GRU_GATES = ("r", "z", "n")

#: layout -> the novolstm spec it converts to
LAYOUTS = {
    "linen_lstm": "lstm",
    "nnx_lstm": "lstm",
    "nnx_optimized_lstm": "lstm",
    "linen_gru": "gru",
    "nnx_gru": "gru",
}

_CANONICAL_NAMES = {
    "lstm": tuple(f"{k}_{g}" for g in _LSTM_GATES for k in ("W", "U", "b")),
    "gru": tuple(f"{k}_{g}" for g in _GRU_GATES for k in ("W", "U", "b")) + ("b_hn",),
}


def _check_layout(layout: str) -> str:
    if layout not in LAYOUTS:
        raise ConversionError(f"unknown Flax layout {layout!r}; expected one of {sorted(LAYOUTS)}")
    return LAYOUTS[layout]


def _leaf(value) -> np.ndarray:
    # nnx.Param and jax arrays both convert; nnx.State values may wrap the array in .value.
    if not hasattr(value, "__array__") and hasattr(value, "value"):
        value = value.value
    return np.asarray(value)


def _plain(tree, path: str = "") -> dict:
    """A nested mapping (linen variables, nnx.State, pure dict) as nested dicts of NumPy arrays."""
    if not isinstance(tree, Mapping):
        raise TypeError(f"{path or 'tree'}: expected a mapping of Flax parameters, got {type(tree).__name__}")
    out = {}
    for key, value in tree.items():
        out[str(key)] = _plain(value, f"{path}/{key}") if isinstance(value, Mapping) else _leaf(value)
    return out


def _expect_keys(tree: dict, keys, where: str) -> None:
    missing, extra = sorted(set(keys) - set(tree)), sorted(set(tree) - set(keys))
    if missing or extra:
        raise ConversionError(f"{where}: missing {missing}, unexpected {extra}; expected exactly {sorted(keys)}")


def _dense(tree: dict, name: str, bias: bool) -> dict:
    if name not in tree or not isinstance(tree[name], dict):
        raise ConversionError(f"Flax tree: expected a dense layer {name!r} with a kernel")
    _expect_keys(tree[name], ("kernel", "bias") if bias else ("kernel",), f"Flax tree {name!r}")
    return tree[name]


def _shape(a: np.ndarray, shape: tuple, what: str) -> np.ndarray:
    if a.shape != shape:
        raise ConversionError(f"{what}: expected shape {shape}, got {a.shape}")
    return a


def _blocks(a: np.ndarray, count: int, what: str) -> list[np.ndarray]:
    if a.shape[-1] % count:
        raise ConversionError(f"{what}: the last axis ({a.shape[-1]}) is not {count} gates wide")
    return np.split(a, count, axis=-1)


def _cell_tree(tree: dict) -> dict:
    """The cell's own tree inside what users hold: linen ``variables`` (``{"params": ...}``),
    ``nn.RNN``'s variables (``{"params": {"cell": ...}}``), ``nnx.state(nnx.RNN(...))``
    (``{"cell": ...}``), or the cell's tree itself."""
    for _ in range(3):
        if len(tree) == 1 and next(iter(tree)) in ("params", "cell") and isinstance(next(iter(tree.values())), dict):
            tree = next(iter(tree.values()))
    return tree


def to_canonical(tree, layout: str) -> dict[str, np.ndarray]:
    """Canonical parameters (NumPy, the tree's dtype) from a Flax cell's parameter tree.

    ``tree``: the cell's parameters as users hold them: the ``variables`` of a linen cell
    or of ``nn.RNN(cell)``, ``nnx.state(cell, nnx.Param)`` or ``nnx.state(nnx.RNN(cell),
    nnx.Param)`` (or their pure dicts), or the cell's tree itself.

    Raises:
        ValueError: an unknown layout, a missing or unexpected entry, or a shape that
            does not fit; nothing is ever dropped silently.
    """
    spec = _check_layout(layout)
    tree = _plain(tree)
    tree = _cell_tree(tree)
    out: dict[str, np.ndarray] = {}
    if layout in ("linen_lstm", "nnx_lstm"):
        if_name = "if" if layout == "linen_lstm" else "if_"
        names = {g: ("i" + g if g != "f" else if_name) for g in _LSTM_GATES}
        _expect_keys(tree, [names[g] for g in _LSTM_GATES] + ["h" + g for g in _LSTM_GATES], f"Flax {layout} tree")
        for g in _LSTM_GATES:
            out[f"W_{g}"] = _dense(tree, names[g], bias=False)["kernel"]
            h = _dense(tree, "h" + g, bias=True)
            out[f"U_{g}"], out[f"b_{g}"] = h["kernel"], h["bias"]
    elif layout == "nnx_optimized_lstm":
        _expect_keys(tree, ("dense_i", "dense_h"), f"Flax {layout} tree")
        i, h = _dense(tree, "dense_i", bias=False), _dense(tree, "dense_h", bias=True)
        for g, w, u, b in zip(
            _LSTM_GATES,
            _blocks(i["kernel"], 4, "dense_i kernel"),
            _blocks(h["kernel"], 4, "dense_h kernel"),
            _blocks(h["bias"], 4, "dense_h bias"),
        ):
            out[f"W_{g}"], out[f"U_{g}"], out[f"b_{g}"] = w, u, b
    elif layout == "linen_gru":
        _expect_keys(tree, ("ir", "iz", "in", "hr", "hz", "hn"), f"Flax {layout} tree")
        for g in _GRU_GATES:
            i = _dense(tree, "i" + g, bias=True)
            out[f"W_{g}"], out[f"b_{g}"] = i["kernel"], i["bias"]
            h = _dense(tree, "h" + g, bias=g == "n")
            out[f"U_{g}"] = h["kernel"]
        out["b_hn"] = tree["hn"]["bias"]
    else:  # nnx_gru
        _expect_keys(tree, ("dense_i", "dense_h"), f"Flax {layout} tree")
        i, h = _dense(tree, "dense_i", bias=True), _dense(tree, "dense_h", bias=False)
        for g, w, b, u in zip(
            _GRU_GATES,
            _blocks(i["kernel"], 3, "dense_i kernel"),
            _blocks(i["bias"], 3, "dense_i bias"),
            _blocks(h["kernel"], 3, "dense_h kernel"),
        ):
            out[f"W_{g}"], out[f"b_{g}"], out[f"U_{g}"] = w, b, u
        out["b_hn"] = np.zeros_like(out["b_n"])  # nnx's GRU has no bias inside the reset product
    _check_canonical(spec, out)
    return {name: out[name] for name in _CANONICAL_NAMES[spec]}


def from_canonical(params: Mapping, layout: str, lossy: bool = False) -> dict:
    """The Flax parameter tree (nested dicts of NumPy arrays, the parameters' dtype) of ``layout``.

    For linen, wrap it as ``{"params": tree}``. Raises ``ValueError`` on names other than
    the spec's, on inconsistent shapes, and where Flax cannot hold the parameters (a nonzero
    ``b_hn`` in the nnx GRUCell layout, which ``lossy=True`` drops with a warning).
    """
    spec = _check_layout(layout)
    p = {name: np.asarray(value) for name, value in params.items()}
    names = _CANONICAL_NAMES[spec]
    missing, extra = sorted(set(names) - set(p)), sorted(set(p) - set(names))
    if missing or extra:
        raise ConversionError(
            f"canonical parameters for Flax {layout!r} (spec {spec!r}): missing {missing}, unexpected {extra}; "
            f"Flax has no cell for other specs"
        )
    _check_canonical(spec, p)
    if layout in ("linen_lstm", "nnx_lstm"):
        if_name = "if" if layout == "linen_lstm" else "if_"
        tree = {}
        for g in _LSTM_GATES:
            tree["i" + g if g != "f" else if_name] = {"kernel": p[f"W_{g}"]}
            tree["h" + g] = {"kernel": p[f"U_{g}"], "bias": p[f"b_{g}"]}
        return tree
    if layout == "nnx_optimized_lstm":
        cat = lambda prefix: np.concatenate([p[f"{prefix}_{g}"] for g in _LSTM_GATES], axis=-1)  # noqa: E731
        return {"dense_i": {"kernel": cat("W")}, "dense_h": {"kernel": cat("U"), "bias": cat("b")}}
    if layout == "linen_gru":
        tree = {}
        for g in _GRU_GATES:
            tree["i" + g] = {"kernel": p[f"W_{g}"], "bias": p[f"b_{g}"]}
            tree["h" + g] = {"kernel": p[f"U_{g}"]}
        tree["hn"]["bias"] = p["b_hn"]
        return tree
    # nnx_gru
    p = drop(
        p,
        ["b_hn"],
        lossy,
        "nnx GRUCell has no bias inside the reset product (b_hn), which cannot merge with b_n "
        "(the linen GRUCell layout holds it)",
    )
    cat = lambda prefix: np.concatenate([p[f"{prefix}_{g}"] for g in _GRU_GATES], axis=-1)  # noqa: E731
    return {"dense_i": {"kernel": cat("W"), "bias": cat("b")}, "dense_h": {"kernel": cat("U")}}


def _check_canonical(spec: str, p: dict) -> None:
    gates = _LSTM_GATES if spec == "lstm" else _GRU_GATES
    first = p[f"W_{gates[0]}"]
    if first.ndim != 2:
        raise ConversionError(f"W_{gates[0]}: expected a matrix (input, units), got shape {first.shape}")
    input_size, units = first.shape
    for g in gates:
        _shape(p[f"W_{g}"], (input_size, units), f"W_{g} (kernel of the input side)")
        _shape(p[f"U_{g}"], (units, units), f"U_{g} (kernel of the recurrent side)")
        _shape(p[f"b_{g}"], (units,), f"b_{g}")
    if spec == "gru":
        _shape(p["b_hn"], (units,), "b_hn")


def carry_to_state(carry, layout: str) -> tuple:
    """A Flax carry as the canonical state tuple: LSTM (c, h) -> (h, c); GRU h -> (h,)."""
    spec = _check_layout(layout)
    if spec == "lstm":
        c, h = carry
        return (h, c)
    return (carry,)


def state_to_carry(state, layout: str):
    """The canonical state tuple as a Flax carry: LSTM (h, c) -> (c, h); GRU (h,) -> h."""
    spec = _check_layout(layout)
    if spec == "lstm":
        h, c = state
        return (c, h)
    (h,) = state
    return h
