"""Canonical checkpoints: safetensors files of canonical parameters, with metadata.

The file is plain safetensors (an 8-byte little-endian header length, a JSON header,
raw little-endian tensor bytes), readable by the ``safetensors`` library and by any
language; no pickle is involved anywhere. The metadata names the spec (name, hash,
version), the canonical layout version, the dtype, and the layer structure. A
single cell stores canonical names (``W_i``); a stacked or bidirectional layer
stores ``l<k>.W_i`` and ``l<k>_reverse.W_i``.

Loading checks everything and names what is wrong: a truncated or corrupt file, a
wrong spec hash, missing or extra tensors, a wrong shape or dtype. Nothing is cast
or dropped.

Examples:
    >>> import tempfile, os, novolstm
    >>> params = novolstm.init_params("lstm", 3, 4)
    >>> path = os.path.join(tempfile.mkdtemp(), "cell.safetensors")
    >>> save(params, path, spec="lstm")
    >>> loaded, info = load(path)
    >>> info["spec"], sorted(loaded) == sorted(params)
    ('lstm', True)
"""

from __future__ import annotations

import json
import math
import struct
import sys

import numpy as np

from .convert.safe_io import atomic_write, loads_json, regular_file_size
from .spec_loader import load_spec

LAYOUT_VERSION = "1"
_DTYPES = {"F64": np.float64, "F32": np.float32, "F16": np.float16, "I64": np.int64, "I32": np.int32}
_CODES = {np.dtype(v): k for k, v in _DTYPES.items()}
#: read only: bfloat16 (torch's bf16 state dicts) has no NumPy dtype; float32 holds every value exactly
_READ_ONLY = {"BF16": np.uint16}
_STORED = {**_DTYPES, **_READ_ONLY}
MAX_HEADER_BYTES = 100_000_000  # as the safetensors library
MAX_HEADER_DEPTH = 4  # object, tensor entry, shape list (and the metadata object)


class CheckpointError(ValueError):
    """A checkpoint file is corrupt, or does not match what it claims or what was asked for."""


def _layer_keys(layers: int, bidirectional: bool) -> list[str]:
    return [f"l{k}{suffix}" for k in range(layers) for suffix in (("", "_reverse") if bidirectional else ("",))]


def save(params: dict, path, spec, layers: int = 1, bidirectional: bool = False) -> None:
    """Write canonical ``params`` to ``path`` as a safetensors checkpoint.

    Args:
        params: a flat dict of canonical name -> array, or one such dict per ``l<k>`` /
            ``l<k>_reverse`` for stacked and bidirectional layers.
        path: the file to write.
        spec: the spec the weights are for (its name and hash go into the file).
        layers: the number of stacked layers ``params`` holds.
        bidirectional: whether ``params`` holds a reverse direction per layer.

    Raises:
        CheckpointError: names that do not match the spec, or mixed or unsupported dtypes.
    """
    spec = load_spec(spec)
    flat = _flatten(params, spec, layers, bidirectional)
    dtypes = {np.asarray(v).dtype for v in flat.values()}
    if len(dtypes) != 1:
        raise CheckpointError(f"parameters mix dtypes {sorted(map(str, dtypes))}; cast them to one dtype first")
    dtype = dtypes.pop()
    if dtype not in _CODES:
        raise CheckpointError(f"dtype {dtype} cannot be stored; expected one of {sorted(map(str, _CODES))}")
    metadata = {
        "format": "novolstm-canonical",
        "layout_version": LAYOUT_VERSION,
        "spec": spec.name,
        "spec_hash": spec.hash,
        "spec_version": str(spec.spec_version),
        "dtype": str(dtype),
        "layers": str(layers),
        "bidirectional": str(bool(bidirectional)).lower(),
        "state_names": ",".join(spec.state_names),
    }
    if not _is_builtin(spec):  # a user's spec travels inside the file: a reader never opens a path it names
        metadata["spec_toml"] = spec.dumps()
    write_safetensors(path, flat, metadata, dtype)


def save_module(module, path, spec=None) -> None:
    """Write the weights of a cell or layer novolstm generated, on any backend, as a checkpoint.

    Args:
        module: a torch ``Cell`` or ``Layer`` (stacked, bidirectional), a Keras ``Cell`` or
            ``Layer``, a Flax ``NNXCell``, a NumPy ``Cell``: every one has
            ``export_canonical()`` and ``load_canonical(params)``.
        path: the file to write.
        spec: the spec; defaults to the one the module was generated from.

    Examples:
        >>> import tempfile, os, novolstm
        >>> cell = novolstm.get_cell("numpy", "novolstm")(input_size=3, units=4, seed=1)
        >>> path = os.path.join(tempfile.mkdtemp(), "cell.safetensors")
        >>> save_module(cell, path)
        >>> other = load_into(novolstm.get_cell("numpy", "novolstm")(input_size=3, units=4, seed=2), path)
        >>> all((other.params[k] == cell.params[k]).all() for k in cell.params)
        True
    """
    from .convert.files import layered, structure

    spec = module_spec(module, spec)
    layers = layered(module.export_canonical())
    count, bidirectional = structure(layers)
    single = (count, bidirectional) == (1, False)
    save(layers["l0"] if single else layers, path, spec=spec, layers=count, bidirectional=bidirectional)


def load_into(module, path, spec=None):
    """Load a checkpoint into a generated cell or layer (see ``save_module``).

    Args:
        module: a generated cell or layer, on any backend.
        path: a checkpoint written by ``save`` or ``save_module``.
        spec: the spec; defaults to the one the module was generated from.

    Returns:
        ``module``, its weights replaced.

    Raises:
        CheckpointError: the file is for another spec (hash) or structure; the module checks
            names and shapes as its ``load_canonical`` does.
    """
    params, _ = load(path, spec=module_spec(module, spec))
    return module.load_canonical(params)


def module_spec(module, spec=None):
    """The Spec a generated cell or layer computes: ``spec`` if given (checked against the
    module's spec hash), else the one it was generated from."""
    # A built-in spec's classes belong to novolstm.torch, novolstm.keras, ...: generated_module names their module.
    generated = sys.modules.get(getattr(type(module), "generated_module", type(module).__module__))
    digest = getattr(generated, "SPEC_HASH", None)
    if digest is None or not hasattr(module, "export_canonical"):
        raise TypeError(f"{type(module).__name__}: expected a cell or layer novolstm generated (with export_canonical)")
    resolved = load_spec(spec if spec is not None else getattr(generated, "SPEC", None) or generated.SPEC_NAME)
    if resolved.hash != digest:
        raise CheckpointError(
            f"{type(module).__name__} was generated from spec {generated.SPEC_NAME!r} sha256 {digest[:12]}, "
            f"but spec {resolved.name!r} has sha256 {resolved.hash[:12]}: pass the spec it was generated from"
        )
    return resolved


def load(path, spec=None) -> tuple[dict, dict]:
    """Read a checkpoint.

    Args:
        path: a checkpoint written by ``save`` or ``save_module``.
        spec: when given, the file must have been written for exactly that spec (same hash).
            Without it, the file names its spec: a built-in name, or a user's spec embedded
            as text (``spec_toml``); a path in a file is never opened.

    Returns:
        ``(params, metadata)``: canonical name -> array (nested per layer when the file has
        several), and the file's string metadata.

    Raises:
        CheckpointError: a file that is not a novolstm checkpoint, or for another spec, or a
            malformed or hostile one (each named: overlapping tensors, a shape that is not a
            list of whole numbers, more layers than tensors, a header nested too deep, ...).
    """
    header, data = _read(path)
    meta = header.pop("__metadata__", None)
    if not isinstance(meta, dict) or meta.get("format") != "novolstm-canonical":
        raise CheckpointError(f"{path}: not a novolstm checkpoint (no novolstm metadata in the safetensors header)")
    if meta.get("layout_version") != LAYOUT_VERSION:
        raise CheckpointError(
            f"{path}: canonical layout version {meta.get('layout_version')!r}; this novolstm reads {LAYOUT_VERSION!r}"
        )
    stored = _stored_spec(path, meta) if spec is None else load_spec(spec)
    if meta.get("spec_hash") != stored.hash:
        raise CheckpointError(
            f"{path}: written for spec {meta.get('spec')!r} with hash {str(meta.get('spec_hash'))[:12]}..., "
            f"but the spec here ({stored.name!r}) has hash {stored.hash[:12]}...; the cells differ"
        )
    layers, bidirectional = _structure(path, meta)
    # The layer count is bounded by the tensors present before any name list is built from it.
    per_layer = len(stored.param_names) * (2 if bidirectional else 1)
    if layers * per_layer > len(header) + per_layer:
        raise CheckpointError(
            f"{path}: metadata says {layers} layer(s){' (bidirectional)' if bidirectional else ''} of spec {stored.name!r}: "
            f"{layers * per_layer} tensors, but the file has {len(header)}"
        )
    expected = set(_flatten_names(stored, layers, bidirectional))
    missing, extra = sorted(expected - set(header)), sorted(set(header) - expected)
    if missing or extra:
        raise CheckpointError(
            f"{path}: missing tensors {missing[:20]}, unexpected tensors {extra[:20]} for spec {stored.name!r}"
        )
    tensors = _tensors(path, header, data)
    dtypes = {str(t.dtype) for t in tensors.values()}
    if dtypes != {meta.get("dtype")}:
        raise CheckpointError(f"{path}: metadata says dtype {meta.get('dtype')}, tensors have {sorted(dtypes)}")
    params = _unflatten(tensors, layers, bidirectional)
    for group in [params] if layers == 1 and not bidirectional else params.values():
        _check_shapes(path, stored, group)
    return params, meta


def _is_builtin(spec) -> bool:
    from .spec_loader import list_specs

    return spec.name in list_specs() and load_spec(spec.name).hash == spec.hash


def _stored_spec(path, meta: dict):
    """The spec a checkpoint names: a built-in spec's name, or a spec's embedded TOML text."""
    from .errors import SpecError
    from .spec_loader import IDENTIFIER, list_specs, loads_spec

    text = meta.get("spec_toml")
    name = meta.get("spec")
    if text is None and isinstance(name, str) and "\n" in name:  # the spec field may hold the text itself
        text = name
    if text is not None:
        try:
            return loads_spec(text, source=f"{path}: embedded spec")
        except SpecError as exc:
            raise CheckpointError(str(exc)) from None
    if not isinstance(name, str) or not IDENTIFIER.match(name) or name not in list_specs():
        raise CheckpointError(
            f"{path}: metadata spec {str(name)[:80]!r} is no built-in spec ({', '.join(list_specs())}) and the file embeds "
            "no spec text; pass the spec it was written for (load(path, spec=...))"
        )
    return load_spec(name)


def _structure(path, meta: dict) -> tuple[int, bool]:
    layers, bidirectional = meta.get("layers", "1"), meta.get("bidirectional", "false")
    if not (
        isinstance(layers, str) and layers.isdigit() and layers.isascii() and len(layers) <= 6 and int(layers) >= 1
    ):
        raise CheckpointError(f"{path}: metadata layers {str(layers)[:40]!r}: expected a positive whole number")
    if bidirectional not in ("true", "false"):
        raise CheckpointError(f"{path}: metadata bidirectional {str(bidirectional)[:40]!r}: expected 'true' or 'false'")
    return int(layers), bidirectional == "true"


def _flatten_names(spec, layers, bidirectional):
    if layers == 1 and not bidirectional:
        return list(spec.param_names)
    return [f"{key}.{p}" for key in _layer_keys(layers, bidirectional) for p in spec.param_names]


def _flatten(params, spec, layers, bidirectional):
    if layers == 1 and not bidirectional:
        flat = dict(params)
    else:
        keys = _layer_keys(layers, bidirectional)
        if sorted(params) != sorted(keys):
            raise CheckpointError(f"expected one parameter dict per {keys}, got {sorted(params)}")
        flat = {f"{k}.{name}": v for k in keys for name, v in params[k].items()}
    expected = set(_flatten_names(spec, layers, bidirectional))
    if set(flat) != expected:
        raise CheckpointError(
            f"missing {sorted(expected - set(flat))}, unexpected {sorted(set(flat) - expected)} for spec {spec.name!r}"
        )
    for group in [params] if layers == 1 and not bidirectional else params.values():
        _check_shapes("params", spec, group)
    return {k: np.asarray(v) for k, v in flat.items()}


def _unflatten(tensors, layers, bidirectional):
    if layers == 1 and not bidirectional:
        return tensors
    out: dict = {k: {} for k in _layer_keys(layers, bidirectional)}
    for name, value in tensors.items():
        key, _, param = name.partition(".")
        out[key][param] = value
    return out


def _check_shapes(where, spec, group):
    first = spec.params[0]
    units = np.shape(group[first.name])[-1]
    input_size = next(np.shape(group[p.name])[0] for p in spec.params if p.shape[0] == "input")
    for name, shape in spec.parameter_shapes(input_size, units).items():
        if np.shape(group[name]) != shape:
            raise CheckpointError(
                f"{where}: tensor {name!r} has shape {tuple(np.shape(group[name]))}, expected {shape} (input {input_size}, units {units})"
            )


def _read(path):
    """The header (checked: a JSON object of tensor entries and string metadata) and the data bytes."""
    size = regular_file_size(path, CheckpointError)
    with open(path, "rb") as fh:
        raw = fh.read(8)
        if len(raw) < 8:
            raise CheckpointError(f"{path}: truncated: {size} bytes, too short for a safetensors header")
        (length,) = struct.unpack("<Q", raw)
        if length > min(MAX_HEADER_BYTES, size - 8):
            raise CheckpointError(
                f"{path}: corrupt or truncated: header claims {length} bytes, file has {size - 8} after the length"
            )
        header = loads_json(fh.read(length), f"{path}: header", CheckpointError, max_depth=MAX_HEADER_DEPTH)
        data = fh.read(size - 8 - length)
    if not isinstance(header, dict):
        raise CheckpointError(f"{path}: corrupt header: expected a JSON object")
    meta = header.get("__metadata__", {})
    if not isinstance(meta, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in meta.items()):
        raise CheckpointError(f"{path}: corrupt header: __metadata__ must map strings to strings")
    return header, data


def _count(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _tensors(path, header: dict, data: bytes) -> dict:
    """Every tensor of a header, each checked, refused where two share bytes or bytes lie unclaimed."""
    spans = []
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        if not isinstance(entry, dict) or set(entry) != {"dtype", "shape", "data_offsets"}:
            raise CheckpointError(
                f"{path}: tensor {name!r}: malformed entry {str(entry)[:200]}; expected dtype, shape and data_offsets"
            )
        dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
        if not isinstance(dtype, str) or dtype not in _STORED:
            raise CheckpointError(
                f"{path}: tensor {name!r}: malformed entry: dtype {str(dtype)[:20]!r}; expected one of {sorted(_STORED)}"
            )
        if not isinstance(shape, list) or len(shape) > 8 or not all(_count(d) for d in shape):
            raise CheckpointError(
                f"{path}: tensor {name!r}: malformed entry: shape {str(shape)[:40]}; expected a list of whole numbers"
            )
        if not isinstance(offsets, list) or len(offsets) != 2 or not all(_count(o) for o in offsets):
            raise CheckpointError(
                f"{path}: tensor {name!r}: malformed entry: data_offsets {str(offsets)[:40]}; expected [begin, end]"
            )
        begin, end = offsets
        if not begin <= end <= len(data):
            raise CheckpointError(
                f"{path}: tensor {name!r}: bytes {begin}..{end} lie outside the {len(data)} data bytes (truncated?)"
            )
        itemsize = np.dtype(_STORED[dtype]).itemsize
        if end - begin != math.prod(shape) * itemsize:
            raise CheckpointError(
                f"{path}: tensor {name!r}: {end - begin} bytes do not hold shape {tuple(shape)} of {dtype}"
            )
        spans.append((begin, end, name))
    position = 0
    for begin, end, name in sorted(spans):
        if begin != position:
            what = "overlap the tensor before it" if begin < position else f"leave bytes {position}..{begin} unclaimed"
            raise CheckpointError(
                f"{path}: tensor {name!r}: bytes {begin}..{end} {what}; a safetensors data buffer holds each tensor once, in order"
            )
        position = end
    if position != len(data):
        raise CheckpointError(f"{path}: {len(data) - position} data bytes after the last tensor; the file is corrupt")
    return {name: _tensor(header[name], data) for _, _, name in spans}


def _tensor(entry, data):
    dtype = np.dtype(_STORED[entry["dtype"]]).newbyteorder("<")
    shape = tuple(entry["shape"])
    begin = entry["data_offsets"][0]
    if entry["dtype"] == "BF16":  # the upper half of a float32's bits
        bits = np.frombuffer(data, dtype, offset=begin, count=math.prod(shape)).astype(np.uint32) << 16
        return bits.view(np.float32).reshape(shape)
    return (
        np.frombuffer(data, dtype, offset=begin, count=math.prod(shape)).reshape(shape).astype(dtype.newbyteorder("="))
    )


def write_safetensors(path, tensors: dict, metadata: dict | None = None, dtype=None) -> None:
    """Write arrays (one dtype) as a plain safetensors file, with string metadata, atomically."""
    atomic_write(path, safetensors_bytes(tensors, metadata, dtype))


def safetensors_bytes(tensors: dict, metadata: dict | None = None, dtype=None) -> bytes:
    """The bytes of a safetensors file holding ``tensors`` (sorted by name) and string ``metadata``."""
    header: dict = {"__metadata__": dict(metadata or {})}
    offset, blobs = 0, []
    for name in sorted(tensors):
        value = np.asarray(tensors[name], dtype)
        if value.dtype not in _CODES:
            raise CheckpointError(
                f"tensor {name!r}: dtype {value.dtype} cannot be stored; expected one of {sorted(map(str, _CODES))}"
            )
        data = np.ascontiguousarray(value, dtype=value.dtype.newbyteorder("<")).tobytes()
        header[name] = {
            "dtype": _CODES[value.dtype],
            "shape": list(value.shape),
            "data_offsets": [offset, offset + len(data)],
        }
        blobs.append(data)
        offset += len(data)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)  # align the data to 8 bytes, as safetensors writers do
    return b"".join([struct.pack("<Q", len(text)), text, *blobs])


def read_safetensors(path) -> tuple[dict, dict]:
    """``(tensors, metadata)`` of any safetensors file, every entry checked against the data."""
    header, data = _read(path)
    meta = header.pop("__metadata__", None) or {}
    return _tensors(path, header, data), meta
