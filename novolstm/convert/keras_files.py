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
import json
import re
import zipfile

import numpy as np

from novolstm.convert import ConversionError

#: spec -> the Keras layer class (snake case, as in the file) that computes it
LAYER_CLASS = {"lstm": "lstm", "gru": "gru"}
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
    return [np.array(vars_[k]) for k in keys]


def _to_canonical(weights, cell: str, where: str, config=None) -> dict:
    from novolstm.convert import keras as layouts

    try:
        if cell == "lstm":
            return layouts.lstm_to_canonical(weights, config=config)
        return layouts.gru_to_canonical(weights, config=config)
    except ConversionError as exc:
        raise ConversionError(f"{where}: {exc}") from None


def _group(name: str) -> re.Match:
    """The match of a recurrent layer group's name (callers pass names that _GROUP selected)."""
    match = _GROUP.match(name)
    if match is None:
        raise ConversionError(f"layers/{name}: not a recurrent layer group")
    return match


def _layer(group, name: str, cell: str, config=None, class_name=None) -> dict:
    """One layer group -> {"": canonical} or {"": forward, "_reverse": backward}."""
    kind = class_name or _group(name).group(1)
    if kind == "bidirectional":
        inner = None if config is None else config.get("layer", {})
        inner_kind = _snake(inner.get("class_name", "")) if inner else None
        if inner_kind is not None and inner_kind != LAYER_CLASS[cell]:
            raise ConversionError(f"layers/{name}: Bidirectional({(inner or {}).get('class_name')}) holds no {cell!r}")
        out = {}
        for side, suffix in (("forward_layer", ""), ("backward_layer", "_reverse")):
            if side not in group:
                raise ConversionError(f"layers/{name}: missing {side}; not a Keras 3 Bidirectional layer")
            side_config = None
            if config is not None:
                side_config = (config.get("backward_layer") or inner) if suffix else inner
                side_config = dict((side_config or {}).get("config", {}), go_backwards=False)  # the wrapper reverses
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


def _order_from_names(names: list[str], path) -> list[str]:
    kinds = {_group(n).group(1) == "bidirectional" for n in names}
    if len(kinds) > 1:
        raise ConversionError(
            f"{path}: the model mixes plain and Bidirectional recurrent layers; a .weights.h5 file does not record their "
            "order across classes: convert the .keras archive (model.save), whose config does"
        )
    return sorted(names, key=lambda n: int(_group(n).group(2) or -1))


def read_keras(path, cell: str) -> dict:
    """A Keras 3 ``.weights.h5`` file or ``.keras`` archive -> ``{"l0": ..., "l0_reverse": ...}`` canonical."""
    import h5py

    _check_cell(cell)
    config = None
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
            if "config.json" not in names or "model.weights.h5" not in names:
                raise ConversionError(f"{path}: a zip without config.json and model.weights.h5 is not a .keras archive")
            config = json.loads(archive.read("config.json"))
            source = io.BytesIO(archive.read("model.weights.h5"))
    else:
        source = path
    try:
        handle = h5py.File(source, "r")
    except OSError as exc:
        raise ConversionError(f"{path}: not an HDF5 file that Keras' save_weights writes ({exc})") from None
    with handle as f:
        if "layers" not in f:
            raise ConversionError(f"{path}: no 'layers' group; expected a Keras 3 model's weights (model.save_weights)")
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

    _check_cell(cell)
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

    with h5py.File(path, "w") as f:
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
