"""PyTorch layouts <-> canonical parameters: nn.LSTM, nn.LSTMCell, nn.GRU, nn.GRUCell.

NumPy in, NumPy out; this module never imports torch. A state dict may hold torch
tensors (read through their own ``.detach().cpu().numpy()``) or NumPy arrays.

torch stacks the gates along the rows of one matrix per operand (LSTM: i, f, g, o;
GRU: r, z, n) and keeps two biases, ``bias_ih`` and ``bias_hh``:

=========================  ==========================================================
canonical                  torch
=========================  ==========================================================
``W_<gate>`` (I, H)        ``weight_ih[k*H:(k+1)*H].T``
``U_<gate>`` (H, H)        ``weight_hh[k*H:(k+1)*H].T``
``b_<gate>`` (LSTM; GRU    ``bias_ih[k*H:(k+1)*H] + bias_hh[k*H:(k+1)*H]``: the two
r, z)                      biases add before any nonlinearity, so they merge
GRU ``b_n``                ``bias_ih[2H:3H]``
GRU ``b_hn``               ``bias_hh[2H:3H]``: it sits inside ``r * (h @ U_n + b_hn)``
                           and must not merge with ``b_n``
=========================  ==========================================================

Merged biases are summed in float64 and rounded once to the output dtype. Going back,
a merged bias goes to ``bias_ih`` and ``bias_hh`` gets zeros, so canonical -> torch ->
canonical is exact.

Layers: nn.LSTM / nn.GRU keys carry ``_l<k>`` and, for the reverse direction,
``_l<k>_reverse``; they convert to a dict keyed ``"l<k>"`` / ``"l<k>_reverse"``, the
keys of the generated torch ``Layer``'s cells (``Layer.load_canonical`` takes it as is).
Cells (nn.LSTMCell / nn.GRUCell keys without a suffix) convert to one canonical dict.

Examples:
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> sd = {"weight_ih_l0": rng.normal(size=(8, 3)), "weight_hh_l0": rng.normal(size=(8, 2)),
    ...       "bias_ih_l0": rng.normal(size=8), "bias_hh_l0": rng.normal(size=8)}
    >>> params = from_torch(sd, cell="lstm")
    >>> sorted(params), params["l0"]["W_g"].shape
    (['l0'], (3, 2))
    >>> bool(np.array_equal(params["l0"]["W_g"], sd["weight_ih_l0"][4:6].T))
    True
    >>> back = to_torch(params, cell="lstm")
    >>> from_torch(back, cell="lstm")["l0"]["b_o"].tolist() == params["l0"]["b_o"].tolist()
    True
"""

from __future__ import annotations

import re

import numpy as np

from novolstm.convert import ConversionError, drop  # one error type for every converter

#: spec name -> torch's gate order, and which canonical bias each (bias_ih, bias_hh) block feeds.
LAYOUTS: dict[str, dict] = {
    "lstm": {
        "gates": ("i", "f", "g", "o"),
        # block k of (bias_ih, bias_hh) -> canonical names; one name means the two merge
        "biases": (("b_i",), ("b_f",), ("b_g",), ("b_o",)),
    },
    "gru": {
        "gates": ("r", "z", "n"),
        "biases": (("b_r",), ("b_z",), ("b_n", "b_hn")),
    },
}

_KEY = re.compile(r"^(weight_ih|weight_hh|bias_ih|bias_hh|weight_hr)(?:_l(\d{1,6})(_reverse)?)?$")
_ANY_LAYER = re.compile(r"^(.*?)(?:weight_ih|weight_hh|bias_ih|bias_hh|weight_hr)(?:_l\d+(?:_reverse)?)?$")


def _array(value) -> np.ndarray:
    if hasattr(value, "detach"):  # a torch tensor, read without importing torch
        value = value.detach().cpu()
        if str(value.dtype) == "torch.bfloat16":  # NumPy has no bfloat16; float32 holds it exactly
            value = value.float()
        value = value.numpy()
    array = np.array(value, copy=True)
    if array.dtype.kind != "f":
        raise ConversionError(f"expected floating-point arrays, got dtype {array.dtype}")
    return array


def _layout(cell: str) -> dict:
    if cell not in LAYOUTS:
        raise ConversionError(f"torch has no native layout for spec {cell!r}; convertible specs: {sorted(LAYOUTS)}")
    return LAYOUTS[cell]


def _group(state_dict, prefix: str) -> dict[str, dict[str, np.ndarray]]:
    """Keys -> {cell key ("" for a cell, "l0", "l0_reverse", ...): {"weight_ih": ..., ...}}."""
    groups: dict[str, dict[str, np.ndarray]] = {}
    unexpected = []
    for key, value in state_dict.items():
        if not isinstance(key, str) or not key.startswith(prefix):
            continue
        name = key[len(prefix) :]
        m = _KEY.match(name)
        if m is None:
            unexpected.append(key)
            continue
        kind, layer, reverse = m.groups()
        if kind == "weight_hr":
            raise ConversionError(f"{key!r}: nn.LSTM with proj_size has no canonical form (the spec has no projection)")
        cell_key = "" if layer is None else f"l{int(layer)}" + ("_reverse" if reverse else "")
        groups.setdefault(cell_key, {})[kind] = _array(value)
    if unexpected:
        raise ConversionError(_unexpected_keys(state_dict, prefix, unexpected))
    if not groups:
        raise ConversionError(f"no torch LSTM/GRU parameters found under prefix {prefix!r}" + _prefix_hint(state_dict))
    if "" in groups and len(groups) > 1:
        raise ConversionError("the state dict mixes cell keys (weight_ih) and layer keys (weight_ih_l0)")
    return groups


def _prefixes(state_dict) -> list[str]:
    """The prefixes under which a state dict holds recurrent layers (``"encoder.rnn."``)."""
    found = {m.group(1) for m in map(_ANY_LAYER.match, (k for k in state_dict if isinstance(k, str))) if m}
    return sorted(p for p in found if p == "" or p.endswith("."))


def _prefix_hint(state_dict) -> str:
    prefixes = [p for p in _prefixes(state_dict) if p]
    return (
        f"; the recurrent layers here are under {prefixes[:5]}: pass one as prefix (novolstm convert --prefix)"
        if prefixes
        else ""
    )


def _unexpected_keys(state_dict, prefix: str, unexpected: list) -> str:
    where = f"under prefix {prefix!r}" if prefix else "in the state dict"
    return (
        f"unexpected keys {unexpected[:5]}{' ...' if len(unexpected) > 5 else ''} {where}: not torch LSTM/GRU parameters"
        + _prefix_hint(state_dict)
    )


def read_state_dict(path) -> dict:
    """The tensors of a torch weight file as NumPy arrays, keyed as the state dict.

    Safetensors files are read by novolstm's own checked reader. Anything else must be a
    ``torch.save`` file, read with ``torch.load(weights_only=True)``, which unpickles
    tensors and plain containers only, never code: a pickled module or any other object
    is refused with how to re-save it. Nested dicts (``{"model": state_dict, ...}``) are
    flattened with ``.``; entries that are not tensors are left out.
    """
    import zipfile

    from novolstm.checkpoint import CheckpointError, read_safetensors
    from novolstm.convert.safe_io import regular_file_size

    size = regular_file_size(path, ConversionError)
    with open(path, "rb") as fh:
        magic = fh.read(16)
    if zipfile.is_zipfile(path) or magic[:1] == b"\x80":  # torch.save: a zip archive, or a legacy pickle
        return _torch_load(path, size)
    try:
        tensors, _ = read_safetensors(path)
    except CheckpointError as exc:
        raise ConversionError(f"not a torch weight file (safetensors or torch.save): {exc}") from None
    return tensors


#: a torch.save archive's members may inflate to at most this many times the file's size (torch stores them uncompressed)
MAX_INFLATION = 2


def _torch_load(path, size: int) -> dict:
    import zipfile

    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            declared = sum(info.file_size for info in archive.infolist())
        if declared > MAX_INFLATION * size + (1 << 20):
            raise ConversionError(
                f"{path}: its archive members inflate to {declared} bytes from {size}: not a torch.save file"
            )
    try:
        import torch
    except ImportError:
        raise ConversionError(
            f"{path}: a torch.save file needs torch to read (pip install torch), or re-save it as safetensors"
        ) from None
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises UnpicklingError, RuntimeError, ... for what weights_only refuses
        first = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
        raise ConversionError(
            f"{path}: torch.load(weights_only=True) refuses it ({first}); novolstm never unpickles code. Re-save the weights "
            "where you trust the file: torch.save(model.state_dict(), path), or safetensors.torch.save_file(model.state_dict(), path)"
        ) from None
    if hasattr(loaded, "state_dict") or not isinstance(loaded, dict):
        raise ConversionError(
            f"{path}: holds a {type(loaded).__name__}, not a state dict; re-save it as torch.save(model.state_dict(), path)"
        )
    return _flatten(loaded)


def _flatten(tree, prefix: str = "", depth: int = 0) -> dict:
    if depth > 16:
        raise ConversionError("a torch checkpoint nested more than 16 dicts deep")
    out = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(_flatten(value, f"{name}.", depth + 1))
        elif hasattr(value, "detach"):
            out[name] = value
    return out


def _cell_from_torch(group: dict[str, np.ndarray], cell: str, where: str) -> dict[str, np.ndarray]:
    layout = _layout(cell)
    gates = layout["gates"]
    for required in ("weight_ih", "weight_hh"):
        if required not in group:
            raise ConversionError(f"{where}: missing {required}")
    w_ih, w_hh = group["weight_ih"], group["weight_hh"]
    rows = w_hh.shape[0]
    if (
        rows % len(gates)
        or w_hh.ndim != 2
        or w_ih.ndim != 2
        or w_ih.shape[0] != rows
        or w_hh.shape[1] * len(gates) != rows
    ):
        raise ConversionError(
            f"{where}: weight_ih {w_ih.shape} and weight_hh {w_hh.shape} are not ({len(gates)}*H, I) and ({len(gates)}*H, H)"
        )
    H = rows // len(gates)
    dtype = np.result_type(w_ih, w_hh)
    has_bias = "bias_ih" in group or "bias_hh" in group
    if has_bias and not ("bias_ih" in group and "bias_hh" in group):
        raise ConversionError(f"{where}: bias_ih and bias_hh come together (got only one)")
    zeros = np.zeros(rows, dtype)
    b_ih, b_hh = (group["bias_ih"], group["bias_hh"]) if has_bias else (zeros, zeros)
    for name, b in (("bias_ih", b_ih), ("bias_hh", b_hh)):
        if b.shape != (rows,):
            raise ConversionError(f"{where}: {name} has shape {b.shape}, expected ({rows},)")
    out = {}
    for k, gate in enumerate(gates):
        block = slice(k * H, (k + 1) * H)
        out[f"W_{gate}"] = np.ascontiguousarray(w_ih[block].T).astype(dtype, copy=False)
        out[f"U_{gate}"] = np.ascontiguousarray(w_hh[block].T).astype(dtype, copy=False)
        names = layout["biases"][k]
        if len(names) == 1:  # both biases add before the nonlinearity: one canonical bias
            out[names[0]] = (b_ih[block].astype(np.float64) + b_hh[block].astype(np.float64)).astype(dtype)
        else:
            out[names[0]], out[names[1]] = b_ih[block].astype(dtype), b_hh[block].astype(dtype)
    return out


def _cell_to_torch(
    params: dict, cell: str, bias: bool, dtype, where: str, lossy: bool = False
) -> dict[str, np.ndarray]:
    layout = _layout(cell)
    gates = layout["gates"]
    expected = {f"{kind}_{g}" for g in gates for kind in ("W", "U")} | {n for names in layout["biases"] for n in names}
    extra, missing = sorted(set(params) - expected), sorted(expected - set(params))
    if extra or missing:
        raise ConversionError(f"{where}: canonical {cell!r} parameters: missing {missing}, unexpected {extra}")
    arrays = {k: _array(v) for k, v in params.items()}
    dtype = np.dtype(dtype) if dtype is not None else np.result_type(*arrays.values())
    inputs, H = arrays[f"W_{gates[0]}"].shape
    for name, a in arrays.items():
        shape = {"W": (inputs, H), "U": (H, H)}.get(name[0], (H,))
        if a.shape != shape:
            raise ConversionError(f"{where}: {name} has shape {a.shape}, expected {shape}")
    b_ih, b_hh = [], []
    for names in layout["biases"]:
        b_ih.append(arrays[names[0]])
        b_hh.append(arrays[names[1]] if len(names) == 2 else np.zeros(H, dtype))
    out = {
        "weight_ih": np.concatenate([arrays[f"W_{g}"].T for g in gates]).astype(dtype),
        "weight_hh": np.concatenate([arrays[f"U_{g}"].T for g in gates]).astype(dtype),
    }
    if bias:
        out["bias_ih"] = np.concatenate(b_ih).astype(dtype)
        out["bias_hh"] = np.concatenate(b_hh).astype(dtype)
    else:
        drop(arrays, [n for names in layout["biases"] for n in names], lossy, f"{where}: bias=False holds no biases")
    return out


def from_torch(state_dict, cell: str = "lstm", prefix: str = ""):
    """A torch state dict -> canonical parameters for spec ``cell`` ("lstm" or "gru").

    Args:
        state_dict: of nn.LSTM / nn.GRU (keys ``weight_ih_l0``, ...) or of nn.LSTMCell /
            nn.GRUCell (keys ``weight_ih``, ...); tensors or arrays.
        cell: the spec the weights are for: "lstm" (nn.LSTM, nn.LSTMCell) or "gru".
        prefix: read only keys starting with it (e.g. ``"encoder.rnn."``), stripped.

    Returns:
        For a layer: ``{"l0": canonical dict, "l0_reverse": ..., "l1": ...}``; for a
        cell: one canonical dict. A missing bias (``bias=False``) becomes zeros.

    Raises:
        ConversionError: unknown keys, a projection (``proj_size``), inconsistent shapes.
    """
    from novolstm.convert.files import structure

    groups = _group(state_dict, prefix)
    if "" in groups:
        return _cell_from_torch(groups[""], cell, "cell")
    layers = {key: _cell_from_torch(groups[key], cell, key) for key in sorted(groups, key=_order)}
    structure(layers)  # l0 .. l<n-1>, both directions or one, each layer fed by the one below
    return layers


def to_torch(params, cell: str = "lstm", bias: bool = True, dtype=None, lossy: bool = False) -> dict[str, np.ndarray]:
    """Canonical parameters -> a torch state dict of NumPy arrays (load with ``torch.from_numpy``).

    Args:
        params: a dict of cell keys (``"l0"``, ``"l0_reverse"``, ...) to canonical dicts,
            giving an nn.LSTM / nn.GRU state dict; or one canonical dict, giving an
            nn.LSTMCell / nn.GRUCell state dict.
        cell: "lstm" or "gru".
        bias: False for a torch module built with ``bias=False`` (refuses nonzero biases).
        dtype: output dtype; the parameters' own by default.
        lossy: with ``bias=False``, drop nonzero biases (warning) instead of refusing.
    """
    if params and all(isinstance(v, dict) for v in params.values()):
        for key in params:
            if not re.fullmatch(r"l\d+(_reverse)?", key):
                raise ConversionError(f"layer key {key!r}: expected 'l<k>' or 'l<k>_reverse'")
        out = {}
        for key in sorted(params, key=_order):
            layer, _, reverse = key[1:].partition("_")
            suffix = f"_l{layer}" + ("_reverse" if reverse else "")
            for name, value in _cell_to_torch(params[key], cell, bias, dtype, key, lossy).items():
                out[name + suffix] = value
        return out
    return _cell_to_torch(params, cell, bias, dtype, "cell", lossy)


def _order(key: str):
    layer, _, reverse = key[1:].partition("_")
    return int(layer), bool(reverse)
