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

    from .safe_io import atomic_write

    atomic_write(path, serialization.to_bytes(layer.variables))


def _flax_run(layer, x, state):
    carry = (state[1], state[0]) if len(state) == 2 else state[0]  # Flax's LSTM carry is (c, h)
    carry, outputs = layer.apply(layer.variables, x, carry)
    final = (carry[1], carry[0]) if len(state) == 2 else (carry,)
    return np.asarray(outputs), tuple(np.asarray(s) for s in final)


# ---------------------------------------------------------------- onnx


@dataclass
class _OnnxLayer:
    """An ONNX model in onnxruntime: novolstm's own LSTM operator model, or one another tool wrote."""

    session: Any
    path: str
    x: str = "x"  # the input name of the sequence
    states: tuple = ("h0", "c0")  # the input names of the initial state ((): the model starts from zeros)
    batch_first: bool = True  # x (batch, time, input); else (time, batch, input)
    state_batch_first: bool = True  # h0 (batch, directions, units); else (directions, batch, units)
    fixed_shape: tuple | None = None  # (batch, time), either None where free: a model exported for one input shape
    ours: bool = True

    @property
    def takes_state(self) -> bool:
        return bool(self.states)


_OURS = ({"x", "sequence_lens", "h0", "c0"}, {"x", "sequence_lens", "h0"})  # novolstm's LSTM and GRU models
_MOVES = {"Identity", "Slice", "Squeeze", "Unsqueeze", "Reshape", "Cast", "Expand"}


def _onnx_load(path, cell, input_size, units):
    import onnxruntime

    session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
    if {i.name for i in session.get_inputs()} in _OURS:
        return _OnnxLayer(session, path)
    return _foreign_onnx(session, path)


def _net_permutation(model, name: str, node_input: str) -> tuple[str | None, list]:
    """Follow ``node_input`` back to a graph input through data-moving ops: (that input, the
    composed Transpose permutation from it to ``node_input``)."""
    producers = {out: n for n in model.graph.node for out in n.output}
    graph_inputs = {i.name for i in model.graph.input}
    perm = [0, 1, 2]
    for _ in range(64):
        if node_input in graph_inputs:
            return node_input, perm
        node = producers.get(node_input)
        if node is None or (node.op_type != "Transpose" and node.op_type not in _MOVES):
            return None, perm
        if node.op_type == "Transpose":
            p = next((list(a.ints) for a in node.attribute if a.name == "perm"), [2, 1, 0])
            if len(p) != 3:
                return None, perm
            perm = [p[i] for i in perm]
        node_input = node.input[0]
    return None, perm


def _foreign_onnx(session, path):
    """An ONNX model another tool exported (``torch.onnx.export`` of nn.LSTM, batch-first or not):
    which input is the sequence, which the initial state, in which layouts."""
    import onnx

    model = onnx.load(path, load_external_data=False)
    lstm = next(n for n in model.graph.node if n.op_type in ("LSTM", "GRU"))
    node_layout = next((a.i for a in lstm.attribute if a.name == "layout"), 0)
    x, x_perm = _net_permutation(model, "x", lstm.input[0])
    inputs = [i for i in session.get_inputs()]
    if x is None:
        raise ConversionError(
            f"{path}: the LSTM node's input X does not come from a model input through transposes and reshapes only"
        )
    batch_first = (x_perm == [1, 0, 2]) != bool(node_layout)
    states, state_batch_first = [], []
    for position in (5, 6):
        name = lstm.input[position] if len(lstm.input) > position else ""
        if not name:
            continue
        source, perm = _net_permutation(model, "state", name)
        if source is None:  # computed inside the model (zeros, as torch exports it without h0): compared from zeros
            continue
        states.append(source)
        state_batch_first.append((perm == [1, 0, 2]) != bool(node_layout))
    others = sorted({i.name for i in inputs} - {x, *states})
    if others:
        raise ConversionError(
            f"{path}: model inputs {others} are neither the sequence nor the initial state: cannot feed them"
        )
    if len(set(state_batch_first)) > 1 or len(states) not in (0, 2 if lstm.op_type == "LSTM" else 1):
        raise ConversionError(
            f"{path}: the initial h and c come in different ways (one a model input, or in different layouts)"
        )
    shapes = {i.name: list(i.shape) for i in inputs}
    batch_axis = 0 if batch_first else 1
    sizes = {"batch": {shapes[x][batch_axis]}, "time": {shapes[x][1 - batch_axis]}}
    for name in states:
        sizes["batch"].add(shapes[name][0 if state_batch_first[0] else 1])
    fixed = tuple(next((d for d in sizes[k] if isinstance(d, int)), None) for k in ("batch", "time"))
    return _OnnxLayer(
        session,
        path,
        x,
        tuple(states),
        batch_first,
        state_batch_first[0] if states else True,
        fixed if fixed != (None, None) else None,
        ours=False,
    )


def _onnx_save(layer, path):
    shutil.copyfile(layer.path, path)  # the model file is the native artefact; onnxruntime cannot write it back


def _onnx_run(layer, x, state):
    if layer.ours:
        feeds = {"x": x, "sequence_lens": np.full(x.shape[0], x.shape[1], np.int32)}
        feeds.update({name: s[:, None] for name, s in zip(("h0", "c0"), state)})
        outputs, *finals = layer.session.run(["outputs", "h", "c"][: 1 + len(state)], feeds)
        return outputs[:, :, 0], tuple(f[:, 0] for f in finals)
    batch, steps, _ = x.shape
    feeds = {layer.x: x if layer.batch_first else np.ascontiguousarray(x.transpose(1, 0, 2))}
    for name, s in zip(layer.states, state):
        feeds[name] = s[:, None] if layer.state_batch_first else s[None]
    results = layer.session.run(None, feeds)
    units = state[0].shape[-1]
    if layer.batch_first:
        y = _as(results[0], {(batch, steps, units): None, (batch, steps, 1, units): 2}, "outputs", layer.path)
    else:
        y = _as(
            results[0],
            {(steps, batch, units): None, (steps, 1, batch, units): 1, (steps, batch, 1, units): 2},
            "outputs",
            layer.path,
        )
        y = y.transpose(1, 0, 2)
    finals = tuple(
        _as(r, {(1, batch, units): 0, (batch, 1, units): 1, (batch, units): None}, "final state", layer.path)
        for r in results[1 : 1 + len(state)]
    )
    return np.ascontiguousarray(y), finals if finals else (y[:, -1],)


def _as(array, shapes: dict, what: str, path):
    """``array`` with the directions' axis (size 1) dropped: ``shapes`` maps each layout it may have to that axis."""
    for shape, axis in shapes.items():
        if array.shape == shape:
            return array if axis is None else np.squeeze(array, axis)
    raise ConversionError(f"{path}: {what} of shape {array.shape}; expected one of {list(shapes)}")


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
        Native("onnx", "onnx", ".onnx", ("lstm", "gru"), _onnx_load, _onnx_save, _onnx_run),
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
