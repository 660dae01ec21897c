"""Keras 3 weight files <-> per-layer canonical parameters, read and written with h5py.

Keras 3 has no ``save_weights`` on a layer, only on a model; ``model.save_weights(path)``
writes an HDF5 file (``*.weights.h5``) with one group per layer, named after the
layer's class and numbered in the order of ``model.layers`` per class:
``layers/lstm``, ``layers/lstm_1``, ``layers/bidirectional``, ... An LSTM or GRU
layer keeps its variables in ``<layer>/cell/vars/0, 1, 2`` (kernel, recurrent kernel,
bias, as ``get_weights()``); a ``Bidirectional`` one in
``<layer>/forward_layer/cell/vars`` and ``<layer>/backward_layer/cell/vars``. The
layout is Keras 3's saving format (``keras.src.saving.saving_lib``), stable since 3.0,
so no model is built to read or write it.

Supported, read:

- ``*.weights.h5`` of a model whose layers with weights are all ``LSTM`` (spec
  ``lstm``) or all ``GRU`` with ``reset_after=True`` (spec ``gru``), or all
  ``Bidirectional`` wrappers of them: a stack, in layer order (``lstm``, ``lstm_1``,
  ...). Weight-free layers (``InputLayer``, ``Dropout``) are fine. The file holds no
  config, so it cannot say which activations the layers used: novolstm assumes
  Keras' defaults; read the ``.keras`` archive to have the config checked.
- ``*.keras`` archives (``model.save``): the same weights, plus ``config.json``,
  which gives the layer order (so plain and ``Bidirectional`` layers may mix) and
  each layer's config, checked by ``novolstm.convert.keras.check_layer_config``
  (a ``hard_sigmoid`` recurrent activation, ``reset_after=False``, ``go_backwards``
  outside ``Bidirectional``... are refused).

Refused with a ``ConversionError``: any other layer with weights (a ``Dense``
head: save the recurrent part as its own model), nested models, a GRU of
``reset_after=False`` (bias shape (3H,)), layers of the wrong kind for the spec.

Written: ``*.weights.h5`` that ``load_weights`` of
``keras.Sequential([keras.Input((time, input)), LSTM(H, return_sequences=True), ...])``
accepts (``Bidirectional(LSTM(...))`` per layer for a bidirectional stack).
"""

from __future__ import annotations

import io
import re
import zipfile

import numpy as np

from novolstm.convert import ConversionError

#: spec -> the Keras layer class (snake case, as in the file) that computes it
LAYER_CLASS = {"lstm": "lstm", "gru": "gru", "keras2_lstm": "lstm"}
#: specs that only Keras 2's files hold: Keras 3 has no built-in layer computing them
KERAS2_ONLY = ("keras2_lstm",)
_GROUP = re.compile(r"^(lstm|gru|bidirectional)(?:_(\d+))?$")


def _snake(class_name: str) -> str:
    # Keras' own naming (keras.src.utils.naming.to_snake_case): "LSTM" -> "lstm", "InputLayer" -> "input_layer"
    name = re.sub(r"\W+", "", class_name)
    name = re.sub("(.)([A-Z][a-z]+)", r"\1_\2", name)
    return re.sub("([a-z])([A-Z])", r"\1_\2", name).lower()


def _datasets(group) -> list[str]:
    import h5py

    found = []
    group.visititems(lambda name, obj: found.append(name) if isinstance(obj, h5py.Dataset) else None)
    return found


def _cell_weights(group, where: str) -> list[np.ndarray]:
    if "cell" not in group or "vars" not in group["cell"]:
        raise ConversionError(f"{where}: no cell/vars group; not an LSTM or GRU layer of Keras 3")
    vars_ = group["cell"]["vars"]
    keys = sorted(vars_, key=int)
    if keys != [str(k) for k in range(len(keys))] or len(keys) not in (2, 3):
        raise ConversionError(f"{where}/cell/vars: expected datasets 0, 1 (and 2: the bias), got {keys}")
    arrays = [np.array(vars_[k]) for k in keys]
    for k, a in zip(keys, arrays):
        if a.dtype.kind != "f":
            raise ConversionError(f"{where}/cell/vars/{k}: dtype {a.dtype}; expected floating-point weights")
    return arrays


def _to_canonical(weights, cell: str, where: str, config=None, keras_version=None) -> dict:
    """One cell's weights -> canonical, its config (if any) checked as written by ``keras_version`` (None: Keras 3)."""
    from novolstm.convert import keras as layouts

    to_canonical = {
        "lstm": layouts.lstm_to_canonical,
        "keras2_lstm": layouts.keras2_lstm_to_canonical,
        "gru": layouts.gru_to_canonical,
    }[cell]
    try:
        return to_canonical(weights, config=config, keras_version=keras_version)
    except ConversionError as exc:
        raise ConversionError(f"{where}: {exc}") from None


def _layer(group, name: str, cell: str, config=None, class_name=None) -> dict:
    """One layer group -> {"": canonical} or {"": forward, "_reverse": backward}."""
    kind = class_name or _group(name).group(1)
    if kind == "bidirectional":
        inner: dict = {} if config is None else config.get("layer", {})
        inner_kind = _snake(inner.get("class_name", "")) if inner else None
        merge_mode = "concat" if config is None else config.get("merge_mode", "concat")
        if merge_mode != "concat":
            raise ConversionError(
                f"layers/{name}: Bidirectional(merge_mode={merge_mode!r}); canonical bidirectional layers concatenate the "
                "two directions (merge_mode='concat'), and a stack of them feeds the next layer 2*units inputs: "
                "no canonical layout computes this merge"
            )
        if inner_kind is not None and inner_kind != LAYER_CLASS[cell]:
            raise ConversionError(f"layers/{name}: Bidirectional({inner.get('class_name')}) holds no {cell!r}")
        out = {}
        for side, suffix in (("forward_layer", ""), ("backward_layer", "_reverse")):
            if side not in group:
                raise ConversionError(f"layers/{name}: missing {side}; not a Keras 3 Bidirectional layer")
            side_config = None
            if config is not None:
                side_config = (config.get("backward_layer") or inner) if suffix else inner
                side_config = dict(side_config.get("config", {}), go_backwards=False)  # the wrapper reverses
            out[suffix] = _to_canonical(
                _cell_weights(group[side], f"layers/{name}/{side}"), cell, f"layers/{name}/{side}", side_config
            )
        return out
    if kind != LAYER_CLASS[cell]:
        raise ConversionError(
            f"layers/{name}: a Keras {kind.upper()} layer holds no {cell!r} (expected {LAYER_CLASS[cell].upper()} layers)"
        )
    return {
        "": _to_canonical(
            _cell_weights(group, f"layers/{name}"),
            cell,
            f"layers/{name}",
            None if config is None else config.get("config", {}),
        )
    }


def _check_cell(cell: str) -> None:
    if cell not in LAYER_CLASS:
        raise ConversionError(
            f"Keras files hold LSTM or GRU layers; spec {cell!r} has no Keras layer (expected one of {sorted(LAYER_CLASS)})"
        )


def _keras3_refuses(cell: str, path) -> None:
    if cell in KERAS2_ONLY:
        raise ConversionError(
            f"{path}: a Keras 3 file; spec {cell!r} (Keras 2's hard_sigmoid, clip(0.2z+0.5, 0, 1)) is read from Keras 2 "
            ".h5 files (model.save('m.h5'), save_weights('w.h5')): Keras 3's hard_sigmoid is relu6(z+3)/6, and a Keras 3 "
            "layer computes Keras 2's only through a custom function its file cannot prove; convert such a layer in memory "
            "with novolstm.convert.keras.keras2_lstm_to_canonical(layer.get_weights())"
        )


def _order_from_names(names: list[str], path) -> list[str]:
    kinds = {_group(n).group(1) == "bidirectional" for n in names}
    if len(kinds) > 1:
        raise ConversionError(
            f"{path}: the model mixes plain and Bidirectional recurrent layers; a .weights.h5 file does not record their "
            "order across classes: convert the .keras archive (model.save), whose config does"
        )
    return sorted(names, key=lambda n: int(_group(n).group(2) or -1))


def _group(name: str) -> re.Match:
    """The match of a recurrent layer's group name (``lstm_1``): the class, the number."""
    m = _GROUP.match(name)
    if m is None:
        raise ConversionError(f"layers/{name}: not an LSTM, GRU or Bidirectional layer group")
    return m


#: config.json of a .keras archive may be at most this large
MAX_CONFIG_BYTES = 16 << 20
#: Keras configs nest layers inside layers; deeper JSON is refused before it is parsed
MAX_CONFIG_DEPTH = 64
#: HDF5 bytes beyond the declared tensors' own (groups, attributes, names): per file and per layer
H5_OVERHEAD, H5_OVERHEAD_PER_LAYER = 1 << 20, 64 << 10
#: the weights member's limit when the config does not give every layer's sizes
MAX_UNDECLARED_WEIGHTS = 256 << 20
#: at most this many objects (groups, datasets) in a weights file, nested at most this deep
MAX_H5_OBJECTS, MAX_H5_DEPTH = 100_000, 32


def read_keras(path, cell: str) -> dict:
    """A Keras 3 ``.weights.h5`` file or ``.keras`` archive, or a Keras 2 legacy ``.h5`` ->
    ``{"l0": ..., "l0_reverse": ...}`` canonical.

    Before any weight is read: the archive's members are checked against the sizes the
    config declares, and the HDF5 file against links (soft, external) and external or
    virtual storage, which would read bytes from outside the file.
    """
    import h5py

    from novolstm.convert.safe_io import regular_file_size

    if cell != "novolstm_reference":
        _check_cell(cell)
    regular_file_size(path, ConversionError)
    config = None
    if zipfile.is_zipfile(path):
        config, source = _read_archive(path)
    else:
        source = path
    try:
        handle = h5py.File(source, "r")
    except OSError as exc:
        raise ConversionError(f"{path}: not an HDF5 file that Keras' save_weights writes ({exc})") from None
    with handle as f:
        _check_hdf5(f, path)
        if "layers" not in f:
            if "layer_names" in f.attrs or "model_weights" in f:
                return _read_legacy(f, path, cell)
            raise ConversionError(f"{path}: no 'layers' group; expected a Keras 3 model's weights (model.save_weights)")
        _keras3_refuses(cell, path)
        if cell == "novolstm_reference":
            raise ConversionError(
                f"{path}: a Keras 3 weights file records variables by position, not by name; the original NovoLSTM "
                "code's weights are read from its Keras 2 .h5 files (model.save_weights('w.h5')), or with "
                "novolstm.convert.keras.novolstm_original_to_canonical([(v.path, v.numpy()) for v in layer.weights])"
            )
        layers = f["layers"]
        if config is None:
            recurrent = [n for n in layers if _GROUP.match(n)]
            for other in sorted(set(layers) - set(recurrent)):
                if _datasets(layers[other]):
                    raise ConversionError(
                        f"{path}: layer group {other!r} holds weights; novolstm converts models made only of LSTM, GRU and "
                        "Bidirectional layers (save the recurrent part as its own model)"
                    )
            ordered = [(n, None, None) for n in _order_from_names(recurrent, path)]
        else:
            ordered = _ordered_from_config(config, layers, path)
        if not ordered:
            raise ConversionError(f"{path}: no LSTM, GRU or Bidirectional layer in the file")
        out = {}
        for k, (name, class_name, layer_config) in enumerate(ordered):
            for suffix, params in _layer(layers[name], name, cell, layer_config, class_name).items():
                out[f"l{k}{suffix}"] = params
    if len({f"l{k}_reverse" in out for k in range(len(ordered))}) > 1:
        raise ConversionError(
            f"{path}: some layers are bidirectional and some are not; canonical stacks are one or the other"
        )
    return out


def _read_archive(path) -> tuple[dict, io.BytesIO]:
    """config.json and model.weights.h5 of a .keras archive, each read within its size limit."""
    from novolstm.convert.safe_io import loads_json

    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise ConversionError(f"{path}: a corrupt zip archive ({exc})") from None
    with archive:
        infos = {info.filename: info for info in archive.infolist()}
        if "config.json" not in infos or "model.weights.h5" not in infos:
            raise ConversionError(f"{path}: a zip without config.json and model.weights.h5 is not a .keras archive")
        config = loads_json(
            _member(archive, infos["config.json"], MAX_CONFIG_BYTES, path),
            f"{path}: config.json",
            ConversionError,
            MAX_CONFIG_DEPTH,
        )
        if not isinstance(config, dict):
            raise ConversionError(
                f"{path}: config.json holds a {type(config).__name__}, expected a model config object"
            )
        limit = _declared_weight_bytes(config)
        return config, io.BytesIO(_member(archive, infos["model.weights.h5"], limit, path))


def _member(archive, info, limit: int, path) -> bytes:
    """A zip member's bytes, refused when its declared size (or what it inflates to) passes ``limit``."""
    if info.file_size > limit:
        raise ConversionError(
            f"{path}: {info.filename} declares {info.file_size} bytes uncompressed, more than the {limit} its config's "
            "layers need; refused before inflating it"
        )
    try:
        with archive.open(info) as fh:
            data = fh.read(limit + 1)
    except (zipfile.BadZipFile, OSError, EOFError, NotImplementedError, RuntimeError) as exc:
        raise ConversionError(f"{path}: cannot read {info.filename} ({exc})") from None
    if len(data) > limit:
        raise ConversionError(f"{path}: {info.filename} inflates past {limit} bytes")
    return data


def _declared_weight_bytes(config: dict) -> int:
    """An upper bound on model.weights.h5's size from the config: every recurrent layer's
    tensors in float64, plus HDF5's own overhead; a fixed bound where the config is silent."""
    entries = config.get("config", {}).get("layers") if isinstance(config.get("config"), dict) else None
    if not isinstance(entries, list):
        return MAX_UNDECLARED_WEIGHTS
    total = H5_OVERHEAD
    for entry in entries:
        if not isinstance(entry, dict):
            return MAX_UNDECLARED_WEIGHTS
        total += H5_OVERHEAD_PER_LAYER
        kind = _snake(str(entry.get("class_name", "")))
        layer_config: dict = entry["config"] if isinstance(entry.get("config"), dict) else {}
        directions = 1
        if kind == "bidirectional":
            directions = 2
            inner: dict = layer_config["layer"] if isinstance(layer_config.get("layer"), dict) else {}
            kind, layer_config = (
                _snake(str(inner.get("class_name", ""))),
                inner["config"] if isinstance(inner.get("config"), dict) else {},
            )
        if kind not in ("lstm", "gru"):
            continue  # a weight-free layer, or one the reader refuses (before reading its weights) anyway
        units = layer_config.get("units")
        shape = (
            (entry.get("build_config") or {}).get("input_shape")
            if isinstance(entry.get("build_config"), dict)
            else None
        )
        inputs = shape[-1] if isinstance(shape, list) and shape else None
        if not (_size(units) and _size(inputs)):
            return MAX_UNDECLARED_WEIGHTS
        assert isinstance(units, int) and isinstance(inputs, int)
        gates = 4 if kind == "lstm" else 3
        total += directions * 8 * gates * units * (inputs + units + 2)
    return total


def _size(n) -> bool:
    return isinstance(n, int) and not isinstance(n, bool) and 0 < n < 1 << 20


def _check_hdf5(f, path) -> None:
    """Refuse anything in an HDF5 file that reads outside it or more than it holds: soft and
    external links, external and virtual dataset storage, datasets larger than their stored bytes."""
    import h5py

    count = 0

    def walk(group, where, depth=0):
        nonlocal count
        if depth > MAX_H5_DEPTH:
            raise ConversionError(
                f"{path}: groups nested more than {MAX_H5_DEPTH} deep at {where}; not a Keras weights file"
            )
        for name in group:
            count += 1
            if count > MAX_H5_OBJECTS:
                raise ConversionError(f"{path}: more than {MAX_H5_OBJECTS} objects; not a Keras weights file")
            link = group.get(name, getlink=True)
            here = f"{where}/{name}"
            if isinstance(link, h5py.ExternalLink):
                raise ConversionError(
                    f"{path}: {here} is an external link (to {link.filename}); novolstm reads only what the file holds"
                )
            if isinstance(link, h5py.SoftLink):
                raise ConversionError(
                    f"{path}: {here} is a soft link (to {link.path}); Keras writes none, novolstm follows none"
                )
            if not isinstance(link, h5py.HardLink):
                raise ConversionError(f"{path}: {here} is a {type(link).__name__}; novolstm follows no links")
            obj = group[name]
            if isinstance(obj, h5py.Group):
                walk(obj, here, depth + 1)
            elif isinstance(obj, h5py.Dataset):
                _check_dataset(obj, here, path)

    walk(f, "")


def _check_dataset(ds, where, path) -> None:
    if ds.external:
        raise ConversionError(
            f"{path}: dataset {where} keeps its data in external files {[e[0] for e in ds.external][:3]}; "
            "novolstm reads only what the file holds"
        )
    if ds.is_virtual:
        raise ConversionError(
            f"{path}: dataset {where} is virtual (its data lives in other files); novolstm reads only what the file holds"
        )
    if ds.dtype.kind not in "fiub":
        raise ConversionError(f"{path}: dataset {where} has dtype {ds.dtype}; expected numbers")
    stored = ds.id.get_storage_size()
    if ds.nbytes > max(stored, 0) and ds.size:
        raise ConversionError(
            f"{path}: dataset {where} declares {ds.nbytes} bytes but stores {stored} (compressed or never written); "
            "Keras writes its weights plainly"
        )


_LEGACY_WEIGHT = re.compile(r"^(kernel|recurrent_kernel|bias)$")
#: the cell scope tf.keras and Keras 3 put in a weight's name (``lstm/lstm_cell/kernel:0``); Keras 2.0 to 2.3 had none
_LEGACY_CELL = re.compile(r"^(lstm|gru)_cell(?:_\d+)?$")


def _names(values) -> list[str]:
    return [v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in np.asarray(values).reshape(-1).tolist()]


def _before(version: str, wanted: tuple) -> bool:
    """Whether a Keras version string is older than ``wanted`` (unknown versions are not).

    Examples:
        >>> _before("2.2.4-tf", (2, 3)), _before("2.2.4-tf", (2, 2, 4)), _before("2.1.6-tf", (2, 2, 4)), _before("", (2, 3))
        (True, False, True, False)
    """
    m = re.match(r"^(\d+)\.(\d+)(?:\.(\d+))?", version)
    return m is not None and tuple(int(g or 0) for g in m.groups())[: len(wanted)] < wanted


def _legacy_configs(f, path) -> dict | None:
    """A Keras 2 model file's layer configs by layer name; None for a weights-only file."""
    from novolstm.convert.safe_io import loads_json

    if "model_config" not in f.attrs:
        return None
    raw = f.attrs["model_config"]
    raw = raw.decode("utf-8") if isinstance(raw, bytes) else str(raw)
    if len(raw) > MAX_CONFIG_BYTES:
        raise ConversionError(f"{path}: model_config larger than {MAX_CONFIG_BYTES} bytes")
    model_config = loads_json(raw, f"{path}: model_config", ConversionError, MAX_CONFIG_DEPTH)
    inner = model_config.get("config") if isinstance(model_config, dict) else None
    # Keras 2.2+ and tf.keras: {"layers": [...]}; Keras 2.0 and 2.1 wrote a Sequential's config as the list itself
    entries = inner if isinstance(inner, list) else inner.get("layers") if isinstance(inner, dict) else None
    if not isinstance(entries, list):
        raise ConversionError(
            f"{path}: model_config has no layer list; expected a Keras Sequential or functional model"
        )
    return {
        entry["config"].get("name"): entry
        for entry in entries
        if isinstance(entry, dict) and isinstance(entry.get("config"), dict)
    }


def _check_weights_only(version: str, cell: str, path) -> None:
    """A weights-only file records no activation: it holds what the writing Keras' layers compute by default.

    Keras 2.0 to 2.2 and TensorFlow 1's tf.keras defaulted to ``hard_sigmoid`` (Keras 2's);
    Keras 2.3 on, and TensorFlow 2's tf.keras, to ``sigmoid``. tf.keras ``2.2.4-tf`` came
    with both TensorFlow 1.13 to 1.15 and TensorFlow 2.0 and 2.1, so its default is unknown.
    """
    unknown = "-tf" in version and not _before(version, (2, 2, 4)) and _before(version, (2, 3))
    hard_sigmoid = _before(version, (2, 3)) and not unknown
    written = f"Keras {version}" if version else "a Keras that did not record its version"
    if unknown:
        raise ConversionError(
            f"{path}: written by tf.keras {version}, which came with TensorFlow 1 (LSTM and GRU "
            "recurrent_activation='hard_sigmoid' by default) and TensorFlow 2.0 and 2.1 (sigmoid by default); a "
            "weights-only file does not record which the model used: save the whole model (model.save('m.h5')), "
            "whose config records it"
        )
    if cell == "keras2_lstm" and not hard_sigmoid:
        raise ConversionError(
            f"{path}: written by {written}, whose LSTM defaults to recurrent_activation='sigmoid' (spec 'lstm'), and a "
            "weights-only file does not record a hard_sigmoid: save the whole model (model.save('m.h5')), whose "
            "config records it"
        )
    if cell != "keras2_lstm" and hard_sigmoid:
        kept = "an LSTM that kept that default is spec 'keras2_lstm' (--spec keras2_lstm); " if cell == "lstm" else ""
        raise ConversionError(
            f"{path}: written by Keras {version}, whose LSTM and GRU used recurrent_activation='hard_sigmoid' by default "
            f"(and GRU reset_after=False), which a weights-only file does not record; {kept}otherwise save the whole "
            "model (model.save('m.h5')), whose config records it"
        )


def _legacy_sides(name: str, pairs, path, migration: str) -> tuple[dict, set]:
    """One layer's weights by direction (``""``, ``"_reverse"``) and role, and the cell kinds their names show.

    Names are ``lstm_1/kernel:0`` (Keras 2.0 to 2.3), ``lstm/lstm_cell/kernel:0`` (tf.keras),
    ``sequential/lstm/lstm_cell/kernel`` (Keras 3); a Bidirectional puts ``forward_<layer>`` or
    ``backward_<layer>`` after its own name.
    """
    sides: dict[str, dict] = {}
    kinds = set()
    for weight, array in pairs:
        parts = re.sub(r":\d+$", "", weight).split("/")
        role = parts[-1]
        scopes = parts[:-1]
        scopes = scopes[scopes.index(name) + 1 :] if name in scopes else scopes[1:]  # what lies below the layer
        cells = [m.group(1) for m in map(_LEGACY_CELL.match, scopes) if m]
        if not _LEGACY_WEIGHT.match(role) or len(cells) > 1:
            raise ConversionError(f"{path}: layer {name!r} holds {weight!r}, not an LSTM or GRU weight; {migration}")
        kinds.update(cells)
        directions = [p for p in scopes if p.startswith(("forward_", "backward_"))]
        side = "_reverse" if directions and directions[0].startswith("backward_") else ""
        if role in sides.get(side, {}):
            raise ConversionError(
                f"{path}: layer {name!r} holds two {role!r} weights for one direction (at {weight!r})"
            )
        sides.setdefault(side, {})[role] = array
    for weights in sides.values():
        if "recurrent_kernel" not in weights:  # a Dense's kernel and bias look alike by name
            raise ConversionError(
                f"{path}: layer {name!r} holds {pairs[0][0]!r}, not an LSTM or GRU weight (no recurrent_kernel); {migration}"
            )
    for weights in sides.values():  # Keras 2.0 to 2.3 name no cell: the recurrent kernel's shape does
        recurrent = np.shape(weights.get("recurrent_kernel", ()))
        if len(recurrent) == 2 and recurrent[0] and recurrent[1] in (3 * recurrent[0], 4 * recurrent[0]):
            kinds.add("lstm" if recurrent[1] == 4 * recurrent[0] else "gru")
    return sides, kinds


def _read_legacy(f, path, cell: str) -> dict:
    """Keras 2's HDF5 weights (``save_weights('w.h5')``, or ``model.save('m.h5')``'s ``model_weights``).

    Each layer group lists its variables by name (``weight_names``); the names give each
    variable's role and direction (``lstm_1/kernel:0``, ``lstm/lstm_cell/kernel:0``,
    ``forward_lstm/...``, the original NovoLSTM's ``w_i``), the shapes or names whether it is
    an LSTM or a GRU, and a full model's ``model_config`` each layer's config, which is checked
    as the Keras version that wrote the file defines it (its ``hard_sigmoid`` included). A
    weights-only file records no config: it converts to the spec its Keras' defaults compute.
    """
    from novolstm.convert import keras as layouts

    root = f["model_weights"] if "model_weights" in f else f
    # the original NovoLSTM code's weights are found by name; its custom layer's config says nothing more
    configs = _legacy_configs(f, path) if cell != "novolstm_reference" else None
    if "layer_names" not in root.attrs:
        raise ConversionError(f"{path}: a Keras 2 weights file without its layer_names attribute")
    version = f.attrs.get("keras_version", root.attrs.get("keras_version", b""))
    version = version.decode("utf-8", "replace") if isinstance(version, bytes) else str(version)
    if configs is None and cell != "novolstm_reference":
        _check_weights_only(version, cell, path)
    pairs_by_layer = []
    for name in _names(root.attrs["layer_names"]):
        if name not in root:
            raise ConversionError(f"{path}: layer_names lists {name!r}, but the file has no such group")
        group = root[name]
        weight_names = _names(group.attrs.get("weight_names", []))
        pairs = []
        for weight in weight_names:
            if weight not in group or not hasattr(group[weight], "shape"):
                raise ConversionError(f"{path}: layer {name!r} lists weight {weight!r}, which the file does not hold")
            pairs.append((weight, np.array(group[weight])))
        if pairs:
            pairs_by_layer.append((name, pairs))
    if not pairs_by_layer:
        raise ConversionError(f"{path}: no layer with weights in the file")
    migration = (
        "Keras 2 .h5 files of LSTM, GRU and Bidirectional layers (and the original NovoLSTM code's) are read; "
        "for anything else, load the model in Keras and save the recurrent part with model.save('m.keras')"
    )
    if cell == "novolstm_reference":
        pairs = [pair for _, layer_pairs in pairs_by_layer for pair in layer_pairs]
        try:
            return {"l0": layouts.novolstm_original_to_canonical(pairs)}
        except ConversionError as exc:
            raise ConversionError(f"{path}: {exc}; {migration}") from None
    out = {}
    for k, (name, pairs) in enumerate(pairs_by_layer):
        sides, kinds = _legacy_sides(name, pairs, path, migration)
        entry = None
        if configs is not None:
            entry = configs.get(name)
            if entry is None:
                raise ConversionError(
                    f"{path}: layer {name!r} holds weights but model_config has no layer of that name"
                )
        class_name = str(entry.get("class_name", "")) if entry is not None else ""
        kind = _snake(class_name) if entry is not None else None
        config: dict = entry.get("config", {}) if entry is not None else {}
        side_configs: dict = {"": config if entry is not None else None}
        if kind == "bidirectional":
            merge_mode = config.get("merge_mode", "concat")
            if merge_mode != "concat":
                raise ConversionError(
                    f"{path}: layer {name!r}: Bidirectional(merge_mode={merge_mode!r}); canonical bidirectional layers concatenate"
                )
            if set(sides) != {"", "_reverse"}:
                raise ConversionError(
                    f"{path}: layer {name!r} is a Bidirectional without a forward and a backward layer"
                )
            inner, backward = config.get("layer"), config.get("backward_layer")
            inner = inner if isinstance(inner, dict) else {}
            backward = backward if isinstance(backward, dict) else inner
            kind = _snake(str(inner.get("class_name", "")))
            for side, layer in (("", inner), ("_reverse", backward)):
                inner_config = layer.get("config")  # the wrapper reverses: go_backwards is its business
                side_configs[side] = dict(inner_config, go_backwards=False) if isinstance(inner_config, dict) else None
        elif kind is not None and "_reverse" in sides:
            raise ConversionError(f"{path}: layer {name!r} is a {class_name} with backward_ weights")
        if kind not in (None, "lstm", "gru"):
            raise ConversionError(f"{path}: layer {name!r} is a {class_name}; {migration}")
        if kind is not None:
            kinds.add(kind)
        if len(kinds) > 1:
            raise ConversionError(
                f"{path}: layer {name!r}: its names, shapes and config disagree on LSTM or GRU {sorted(kinds)}"
            )
        if kinds and kinds != {LAYER_CLASS[cell]}:
            raise ConversionError(f"{path}: layer {name!r} is a Keras {kinds.pop().upper()}, which holds no {cell!r}")
        if set(sides) == {"_reverse"}:
            raise ConversionError(f"{path}: layer {name!r} holds only backward_ weights; not one recurrent layer")
        for side, weights in sorted(sides.items()):
            params = _to_canonical(weights, cell, f"{path}: layer {name!r}", side_configs.get(side), version)
            out[f"l{k}{side}"] = params
    return out


def _ordered_from_config(config: dict, layers, path) -> list:
    model = config.get("config", {})
    entries = model.get("layers")
    if not isinstance(entries, list):
        raise ConversionError(f"{path}: config.json has no layer list; expected a Sequential or functional model")
    counters: dict[str, int] = {}
    ordered = []
    for entry in entries:
        class_name = _snake(entry.get("class_name", ""))
        count = counters.get(class_name, -1) + 1
        counters[class_name] = count
        group = class_name if count == 0 else f"{class_name}_{count}"
        if class_name in ("lstm", "gru", "bidirectional"):
            if group not in layers:
                raise ConversionError(
                    f"{path}: config names a {entry.get('class_name')} layer, but model.weights.h5 has no group {group!r}"
                )
            ordered.append((group, class_name, entry.get("config", {}) if class_name == "bidirectional" else entry))
        elif group in layers and _datasets(layers[group]):
            raise ConversionError(
                f"{path}: layer {entry.get('config', {}).get('name', group)!r} ({entry.get('class_name')}) holds weights; "
                "novolstm converts models made only of LSTM, GRU and Bidirectional layers"
            )
    return ordered


def write_keras(layers: dict, path, cell: str) -> None:
    """Per-layer canonical -> a ``.weights.h5`` for a Sequential of LSTM / GRU (or Bidirectional) layers."""
    import h5py

    from novolstm.convert import keras as layouts
    from novolstm.convert.files import structure
    from novolstm.convert.safe_io import atomic_write

    _check_cell(cell)
    if cell in KERAS2_ONLY:
        raise ConversionError(
            f"{path}: no Keras 3 layer computes spec {cell!r} (Keras 3's hard_sigmoid is relu6(z+3)/6, not Keras 2's "
            "clip(0.2z+0.5, 0, 1)), and a .weights.h5 records no activation: write the canonical format and load it into "
            f"novolstm.get_layer('keras', {cell!r}), or set keras2_lstm_from_canonical(params) on a Keras LSTM whose "
            "recurrent_activation is Keras 2's formula"
        )
    if str(path).endswith(".keras"):
        raise ConversionError(
            f"{path}: novolstm writes .weights.h5 files (weights only), not .keras archives (which need a model config)"
        )
    count, bidirectional = structure(layers)
    to_keras = layouts.lstm_from_canonical if cell == "lstm" else layouts.gru_from_canonical
    kind = LAYER_CLASS[cell]

    def cell_group(parent, params, name):
        parent.create_group("vars").attrs["name"] = name
        vars_ = parent.create_group("cell/vars")
        vars_.attrs["name"] = f"{kind}_cell"
        for i, array in enumerate(to_keras(params)):
            vars_.create_dataset(str(i), data=array)

    buffer = io.BytesIO()
    with h5py.File(buffer, "w") as f:
        f.create_group("vars").attrs["name"] = "sequential"
        for k in range(count):
            if bidirectional:
                group = f.create_group("layers/bidirectional" + (f"_{k}" if k else ""))
                group.create_group("vars").attrs["name"] = group.name.rsplit("/", 1)[-1]
                cell_group(group.create_group("forward_layer"), layers[f"l{k}"], f"forward_{kind}")
                cell_group(group.create_group("backward_layer"), layers[f"l{k}_reverse"], f"backward_{kind}")
            else:
                name = kind + (f"_{k}" if k else "")
                cell_group(f.create_group(f"layers/{name}"), layers[f"l{k}"], name)
    atomic_write(path, buffer.getvalue())
