"""Frameworks' own recurrent layers, loaded from and saved to their own weight files, and run.

Each ``Native`` is one framework's native layer for a spec, driven only through
that framework's own API: torch ``nn.LSTM`` / ``nn.GRU`` (``load_state_dict`` of a
safetensors state dict), ``keras.layers.LSTM`` / ``GRU`` (``load_weights`` /
``model.save``), Flax ``nn.RNN`` over ``OptimizedLSTMCell``, ``LSTMCell`` or ``GRUCell``
(``flax.serialization``), the ONNX ``LSTM`` operator in onnxruntime, novolstm's own
NumPy backend, and the float64 reference. Weights move between them only through
files and ``novolstm.convert.files``, so a port tested here is the port a user runs.

Every layer runs batch-first, float32 (the reference: float64), from a given initial
state in the canonical order (``(h, c)`` for the LSTM, ``(h,)`` for the GRU) and
returns ``(outputs (batch, time, units), final state)`` as NumPy arrays.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from novolstm.convert import ConversionError


@dataclass(frozen=True)
class Native:
    """One framework's native layer: its file format and how it loads, saves and runs."""

    name: str
    format: str  # a novolstm.convert.files format
    suffix: str  # the file name ending the framework expects
    cells: tuple  # the specs it has a native layer for
    load: Callable[[str, str, int, int], Any]  # (path, cell, input_size, units) -> layer
    save: Callable[[Any, str], None]  # (layer, path): the framework writes its own file
    run: Callable[[Any, np.ndarray, tuple], tuple]  # (layer, x, state0) -> (outputs, state)


# ---------------------------------------------------------------- torch


def _torch_load(path, cell, input_size, units):
    import torch
    from safetensors.torch import load_file

    module = (torch.nn.LSTM if cell == "lstm" else torch.nn.GRU)(input_size, units, batch_first=True)
    module.load_state_dict(load_file(path))  # strict: every key, every shape
    return module


def _torch_save(module, path):
    from safetensors.torch import save_file

    save_file({k: v.detach().contiguous() for k, v in module.state_dict().items()}, path)


def _torch_run(module, x, state):
    import torch

    with torch.no_grad():
        s0 = tuple(torch.from_numpy(np.ascontiguousarray(s))[None] for s in state)
        outputs, final = module(torch.from_numpy(x), s0 if len(s0) == 2 else s0[0])
    final = final if isinstance(final, tuple) else (final,)
    return outputs.numpy(), tuple(s[0].numpy() for s in final)


# ---------------------------------------------------------------- keras


def _keras_layer(cell, units):
    import keras

    kind = keras.layers.LSTM if cell == "lstm" else keras.layers.GRU
    return kind(units, return_sequences=True, return_state=True)


def _keras_load(path, cell, input_size, units):
    import keras

    model = keras.Sequential([keras.Input((None, input_size)), _keras_layer(cell, units)])
    model.load_weights(path)
    return model


def _keras_save(model, path):
    # The .keras archive carries the layer config, which the reader checks (activations, reset_after).
    model.save(path)


def _keras_run(model, x, state):
    result = model.layers[-1](x, initial_state=list(state))
    return np.asarray(result[0]), tuple(np.asarray(s) for s in result[1:])


# ---------------------------------------------------------------- flax (linen nn.RNN)


@dataclass
class _FlaxLayer:
    rnn: Any
    variables: Any
    apply: Any


_FLAX_APPLY: dict = {}  # one jitted apply per cell class: weights are arguments, so ports share it


def _flax_rnn(cell_class: str, units):
    from flax import linen as nn

    return nn.RNN(getattr(nn, cell_class)(features=units))


def _flax_loader(cell_class_for: dict):
    def load(path, cell, input_size, units):
        import jax
        import jax.numpy as jnp
        from flax import serialization

        cell_class = cell_class_for[cell]
        rnn = _flax_rnn(cell_class, units)
        template = rnn.init(jax.random.key(0), jnp.zeros((1, 1, input_size), jnp.float32))
        with open(path, "rb") as fh:
            variables = serialization.from_bytes(template, fh.read())  # refuses a tree of another shape
        key = (cell_class, units)
        if key not in _FLAX_APPLY:
            _FLAX_APPLY[key] = jax.jit(lambda v, x, carry: rnn.apply(v, x, initial_carry=carry, return_carry=True))
        return _FlaxLayer(rnn, variables, _FLAX_APPLY[key])

    return load


def _flax_save(layer, path):
    from flax import serialization

    with open(path, "wb") as fh:
        fh.write(serialization.to_bytes(layer.variables))


def _flax_run(layer, x, state):
    carry = (state[1], state[0]) if len(state) == 2 else state[0]  # Flax's LSTM carry is (c, h)
    carry, outputs = layer.apply(layer.variables, x, carry)
    final = (carry[1], carry[0]) if len(state) == 2 else (carry,)
    return np.asarray(outputs), tuple(np.asarray(s) for s in final)


# ---------------------------------------------------------------- onnx


def _onnx_load(path, cell, input_size, units):
    import onnxruntime

    session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
    names = {i.name for i in session.get_inputs()}
    if names != {"x", "sequence_lens", "h0", "c0"}:
        raise ConversionError(
            f"{path}: inputs {sorted(names)}; expected the LSTM operator model novolstm writes (x, sequence_lens, h0, c0)"
        )
    return session, path


def _onnx_save(layer, path):
    shutil.copyfile(layer[1], path)  # the model file is the native artefact; onnxruntime cannot write it back


def _onnx_run(layer, x, state):
    session, _ = layer
    feeds = {
        "x": x,
        "sequence_lens": np.full(x.shape[0], x.shape[1], np.int32),
        "h0": state[0][:, None],
        "c0": state[1][:, None],
    }
    outputs, h, c = session.run(["outputs", "h", "c"], feeds)
    return outputs[:, :, 0], (h[:, 0], c[:, 0])


# ---------------------------------------------------------------- novolstm's numpy backend and the reference


def _canonical_loader(dtype):
    def load(path, cell, input_size, units):
        from novolstm.checkpoint import load as load_checkpoint

        params, _ = load_checkpoint(path, spec=cell)
        return cell, {k: v.astype(dtype) for k, v in params.items()}

    return load


def _canonical_save(layer, path):
    from novolstm.checkpoint import save

    cell, params = layer
    save(params, path, spec=cell)


def _numpy_run(layer, x, state):
    from novolstm.api import run

    cell, params = layer
    outputs, final = run(cell, params, x, tuple(state), backend="numpy")
    return np.asarray(outputs), tuple(np.asarray(s) for s in final)


def _reference_run(layer, x, state):
    from novolstm import reference

    cell, params = layer
    outputs, final = reference.run(
        cell, params, np.asarray(x, np.float64), tuple(np.asarray(s, np.float64) for s in state)
    )
    return np.asarray(outputs), tuple(np.asarray(s) for s in final)


#: framework name -> its native layer
NATIVES = {
    n.name: n
    for n in (
        Native("torch", "torch", ".safetensors", ("lstm", "gru"), _torch_load, _torch_save, _torch_run),
        Native("keras", "keras", ".weights.h5", ("lstm", "gru"), _keras_load, _keras_save, _keras_run),
        Native(
            "flax",
            "flax",
            ".msgpack",
            ("lstm", "gru"),
            _flax_loader({"lstm": "OptimizedLSTMCell", "gru": "GRUCell"}),
            _flax_save,
            _flax_run,
        ),
        Native(
            "flax-lstmcell", "flax", ".msgpack", ("lstm",), _flax_loader({"lstm": "LSTMCell"}), _flax_save, _flax_run
        ),
        Native("onnx", "onnx", ".onnx", ("lstm",), _onnx_load, _onnx_save, _onnx_run),
        Native(
            "numpy",
            "canonical",
            ".safetensors",
            ("lstm", "gru"),
            _canonical_loader(np.float32),
            _canonical_save,
            _numpy_run,
        ),
        Native(
            "reference",
            "canonical",
            ".safetensors",
            ("lstm", "gru"),
            _canonical_loader(np.float64),
            _canonical_save,
            _reference_run,
        ),
    )
}

#: where the framework's own save writes something other than ``suffix`` (Keras: a .keras archive)
SAVED_SUFFIX = {"keras": ".keras"}


def native(name: str, cell: str) -> Native:
    """The native layer ``name`` for spec ``cell``, or a ConversionError naming what exists."""
    if name not in NATIVES:
        raise ConversionError(f"unknown framework {name!r}; expected one of {sorted(NATIVES)}")
    n = NATIVES[name]
    if cell not in n.cells:
        raise ConversionError(f"{name} has no native layer for spec {cell!r}; it has {list(n.cells)}")
    return n


def shapes(layers: dict) -> tuple[int, int]:
    """(input size, units) of a one-cell per-layer canonical dict."""
    from novolstm.convert.files import structure

    if structure(layers) != (1, False):
        raise ConversionError(
            "a port is checked on one unidirectional layer; these weights are stacked or bidirectional"
        )
    first = next(k for k in sorted(layers["l0"]) if k.startswith("W_"))
    return layers["l0"][first].shape


def load_file(framework: Native, path, cell: str, layout=None):
    """Framework ``framework``'s layer from a file in its format: ``(layer, canonical as read)``."""
    from novolstm.convert.files import read

    layers = read(path, framework.format, cell, layout)
    return framework.load(str(path), cell, *shapes(layers)), layers


def port(source: Native, layer, target: Native, cell: str, folder) -> tuple[Any, dict]:
    """``source``'s layer saved by its framework, converted through the canonical hub to
    ``target``'s format and loaded by ``target``'s framework: ``(target layer, canonical)``."""
    from novolstm.convert.files import convert

    saved = os.path.join(folder, f"{source.name}_saved{SAVED_SUFFIX.get(source.name, source.suffix)}")
    source.save(layer, saved)
    ported = os.path.join(folder, f"{source.name}_to_{target.name}{target.suffix}")
    layers = convert(saved, ported, source.format, target.format, cell)
    return target.load(ported, cell, *shapes(layers)), layers


def build(framework: Native, params: dict, cell: str, folder):
    """``framework``'s layer holding canonical ``params`` (one cell), written through the converters."""
    from novolstm.convert.files import write

    path = os.path.join(folder, f"{framework.name}_probe{framework.suffix}")
    write({"l0": params}, path, framework.format, cell)
    input_size, units = np.shape(params[next(k for k in sorted(params) if k.startswith("W_"))])
    return framework.load(path, cell, input_size, units)
