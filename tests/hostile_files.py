"""A corpus of malformed and hostile weight files, built in a temporary folder, and the check that
each one is refused with the right error within a bounded time and memory.

Each :class:`Case` builds one file (or folder entry) and names the reader it goes to, the error
it must raise and a pattern of the message. Cases need the libraries their builders need
(``needs``): the tests for each environment run the cases it can build
(``tests/test_hostile_files.py`` and ``tests/test_<backend>_hostile_files.py``).
Every reader runs with a timer (a FIFO must not block it) and its peak resident-set growth
measured (a tiny file must not cost gigabytes).

Not collected by pytest (no ``test_`` prefix); the test files load it by path.
"""

from __future__ import annotations

import io
import json
import os
import pathlib
import signal
import struct
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

import novolstm
from novolstm.bench.memory import peak_rss_bytes

#: no hostile file may grow the resident set more than this (the largest honest file here is a few KiB)
MAX_GROWTH = 64 * 2**20
#: nor take longer than this to refuse (a FIFO would block forever)
MAX_SECONDS = 20


@dataclass(frozen=True)
class Case:
    name: str
    build: Callable  # (folder) -> path
    read: Callable  # (path) -> anything; must raise
    error: str  # the exception class name: ConversionError, CheckpointError, ReverseOnly
    match: str  # a regular expression the message must match
    needs: tuple = ()  # modules the builder imports
    library_refuses: bool = False  # a safetensors file the safetensors library refuses too
    extra: dict = field(default_factory=dict)


# ---------------------------------------------------------------- readers


def load_checkpoint(path):
    return novolstm.load(path)


def reader(fmt, cell="lstm", **options):
    def read(path):
        from novolstm.convert import files

        return files.read(path, fmt, cell, **options)

    return read


def converter(src, dst, cell="lstm", **options):
    def read(path):
        from novolstm.convert import files

        return files.convert(path, f"{path}.out", src, dst, cell, **options)

    return read


# ---------------------------------------------------------------- safetensors building blocks


def raw_safetensors(header: dict | str | bytes, data: bytes = b"", length: int | None = None) -> bytes:
    text = header if isinstance(header, bytes) else (header if isinstance(header, str) else json.dumps(header)).encode()
    return struct.pack("<Q", len(text) if length is None else length) + text + data


def checkpoint(folder, edit=None, spec="lstm", data_edit=None, layers=None) -> str:
    """A real checkpoint (2 inputs, 3 units), its header edited."""
    path = os.path.join(folder, "c.safetensors")
    params = novolstm.init_params(spec, 2, 3, seed=0)
    if layers:
        novolstm.save(layers, path, spec=spec, layers=len(layers), bidirectional=False)
    else:
        novolstm.save({k: v.astype(np.float32) for k, v in params.items()}, path, spec=spec)
    if edit or data_edit:
        raw = pathlib.Path(path).read_bytes()
        (n,) = struct.unpack("<Q", raw[:8])
        header, data = json.loads(raw[8 : 8 + n]), raw[8 + n :]
        if edit:
            edit(header)
        if data_edit:
            data = data_edit(data)
        pathlib.Path(path).write_bytes(raw_safetensors(header, data))
    return path


def write(folder, name, data: bytes) -> str:
    path = os.path.join(folder, name)
    with open(path, "wb") as fh:
        fh.write(data)
    return path


def fifo(folder, name="fifo.safetensors") -> str:
    path = os.path.join(folder, name)
    os.mkfifo(path)
    return path


def _overlap(header):
    # W_f's bytes start inside W_i's: the sizes stay right, the bytes are shared
    names = sorted(k for k in header if k != "__metadata__")
    a, b = header[names[0]], header[names[1]]
    b["data_offsets"] = [a["data_offsets"][0], a["data_offsets"][0] + b["data_offsets"][1] - b["data_offsets"][0]]


def _spec_is(value):
    return lambda h: h["__metadata__"].update(spec=value)


def _fifo_spec(folder):
    path = checkpoint(folder)
    spec_path = fifo(folder, "spec.toml")
    raw = pathlib.Path(path).read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n])
    header["__metadata__"]["spec"] = spec_path
    pathlib.Path(path).write_bytes(raw_safetensors(header, raw[8 + n :]))
    return path


def _torch_state(folder, keys: dict, name="t.safetensors") -> str:
    from novolstm.checkpoint import write_safetensors

    path = os.path.join(folder, name)
    write_safetensors(path, keys)
    return path


def _lstm_layer(rng, input_size, units, suffix):
    return {
        f"weight_ih{suffix}": rng.normal(size=(4 * units, input_size)).astype(np.float32),
        f"weight_hh{suffix}": rng.normal(size=(4 * units, units)).astype(np.float32),
    }


RNG = np.random.default_rng(0)

CHECKPOINT_CASES = [
    Case(
        "checkpoint: truncated data",
        lambda d: checkpoint(d, data_edit=lambda b: b[:-10]),
        load_checkpoint,
        "CheckpointError",
        "lie outside the .* data bytes|bytes .* unclaimed|do not hold",
        library_refuses=True,
    ),
    Case(
        "checkpoint: tensors overlap in the data buffer",
        lambda d: checkpoint(d, _overlap),
        load_checkpoint,
        "CheckpointError",
        "overlap the tensor before it",
        library_refuses=True,
    ),
    Case(
        "checkpoint: shape '23' (a string, for (2, 3))",
        lambda d: checkpoint(d, lambda h: h["W_i"].update(shape="23")),
        load_checkpoint,
        "CheckpointError",
        "malformed entry: shape 23",
        library_refuses=True,
    ),
    Case(
        "checkpoint: negative dimension",
        lambda d: checkpoint(d, lambda h: h["W_i"].update(shape=[-2, -3])),
        load_checkpoint,
        "CheckpointError",
        "malformed entry: shape",
        library_refuses=True,
    ),
    Case(
        "checkpoint: boolean dimension",
        lambda d: checkpoint(d, lambda h: h["b_i"].update(shape=[True, 3])),
        load_checkpoint,
        "CheckpointError",
        "malformed entry: shape",
        library_refuses=True,
    ),
    Case(
        "checkpoint: float dimension",
        lambda d: checkpoint(d, lambda h: h["b_i"].update(shape=[3.0])),
        load_checkpoint,
        "CheckpointError",
        "malformed entry: shape",
        library_refuses=True,
    ),
    Case(
        "checkpoint: shape of 2**80 elements",
        lambda d: checkpoint(d, lambda h: h["W_i"].update(shape=[2**40, 2**40])),
        load_checkpoint,
        "CheckpointError",
        "do not hold shape",
        library_refuses=True,
    ),
    Case(
        "checkpoint: offsets outside the file",
        lambda d: checkpoint(d, lambda h: h["b_o"].update(data_offsets=[0, 2**62])),
        load_checkpoint,
        "CheckpointError",
        "lie outside",
        library_refuses=True,
    ),
    Case(
        "checkpoint: offsets as strings",
        lambda d: checkpoint(d, lambda h: h["b_o"].update(data_offsets=["0", "12"])),
        load_checkpoint,
        "CheckpointError",
        "malformed entry: data_offsets",
        library_refuses=True,
    ),
    Case(
        "checkpoint: bytes after the last tensor",
        lambda d: checkpoint(d, data_edit=lambda b: b + b"\0" * 16),
        load_checkpoint,
        "CheckpointError",
        "data bytes after the last tensor",
        library_refuses=True,
    ),
    Case(
        "checkpoint: header length 2**63",
        lambda d: write(d, "h.safetensors", raw_safetensors("{}", length=2**63)),
        load_checkpoint,
        "CheckpointError",
        "header claims",
        library_refuses=True,
    ),
    Case(
        "checkpoint: header 100000 levels deep",
        lambda d: write(d, "deep.safetensors", raw_safetensors(b'{"a":' + b"[" * 100_000 + b"]" * 100_000 + b"}")),
        load_checkpoint,
        "CheckpointError",
        "nested more than 4 levels",
        library_refuses=True,
    ),
    Case(
        "checkpoint: header a JSON list",
        lambda d: write(d, "list.safetensors", raw_safetensors(b"[]")),
        load_checkpoint,
        "CheckpointError",
        "expected a JSON object",
        library_refuses=True,
    ),
    Case(
        "checkpoint: header not UTF-8",
        lambda d: write(d, "bin.safetensors", raw_safetensors(b"{\xff\xfe}")),
        load_checkpoint,
        "CheckpointError",
        "not UTF-8",
        library_refuses=True,
    ),
    Case(
        "checkpoint: duplicate tensor name",
        lambda d: write(
            d,
            "dup.safetensors",
            raw_safetensors(
                '{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}',
                b"\0" * 8,
            ),
        ),
        load_checkpoint,
        "CheckpointError",
        "duplicate key 'a'",
    ),
    Case(
        "checkpoint: metadata values not strings",
        lambda d: checkpoint(d, lambda h: h["__metadata__"].update(layers=3)),
        load_checkpoint,
        "CheckpointError",
        "__metadata__ must map strings to strings",
        library_refuses=True,
    ),
    Case(
        "checkpoint: unknown dtype BOOL",
        lambda d: checkpoint(d, lambda h: h["b_i"].update(dtype="BOOL")),
        load_checkpoint,
        "CheckpointError",
        "malformed entry: dtype 'BOOL'",
    ),
    Case(
        "checkpoint: layers = '2000000'",
        lambda d: checkpoint(d, lambda h: h["__metadata__"].update(layers="2000000")),
        load_checkpoint,
        "CheckpointError",
        "positive whole number|tensors, but the file has",
    ),
    Case(
        "checkpoint: layers = '999999'",
        lambda d: checkpoint(d, lambda h: h["__metadata__"].update(layers="999999")),
        load_checkpoint,
        "CheckpointError",
        "tensors, but the file has 12",
    ),
    Case(
        "checkpoint: layers = '1e9'",
        lambda d: checkpoint(d, lambda h: h["__metadata__"].update(layers="1e9")),
        load_checkpoint,
        "CheckpointError",
        "positive whole number",
    ),
    Case(
        "checkpoint: layers = '0'",
        lambda d: checkpoint(d, lambda h: h["__metadata__"].update(layers="0")),
        load_checkpoint,
        "CheckpointError",
        "positive whole number",
    ),
    Case(
        "checkpoint: bidirectional = 'yes'",
        lambda d: checkpoint(d, lambda h: h["__metadata__"].update(bidirectional="yes")),
        load_checkpoint,
        "CheckpointError",
        "expected 'true' or 'false'",
    ),
    Case("checkpoint: metadata spec names a FIFO", _fifo_spec, load_checkpoint, "CheckpointError", "no built-in spec"),
    Case(
        "checkpoint: metadata spec a relative .toml path",
        lambda d: checkpoint(d, _spec_is("../../spec/lstm.toml")),
        load_checkpoint,
        "CheckpointError",
        "no built-in spec",
    ),
    Case(
        "checkpoint: metadata spec /dev/zero",
        lambda d: checkpoint(d, _spec_is("/dev/zero")),
        load_checkpoint,
        "CheckpointError",
        "no built-in spec",
    ),
    Case(
        "checkpoint: embedded spec text that is no spec",
        lambda d: checkpoint(d, lambda h: h["__metadata__"].update(spec_toml="name = 'x'\n[[[")),
        load_checkpoint,
        "CheckpointError",
        "embedded spec: not valid TOML",
    ),
    Case("checkpoint: the file is a FIFO", lambda d: fifo(d), load_checkpoint, "CheckpointError", "not a regular file"),
    Case("checkpoint: the file is a directory", lambda d: d, load_checkpoint, "CheckpointError", "not a regular file"),
    Case(
        "checkpoint: the file is /dev/zero",
        lambda d: "/dev/zero",
        load_checkpoint,
        "CheckpointError",
        "not a regular file",
    ),
    Case(
        "checkpoint: empty file",
        lambda d: write(d, "empty.safetensors", b""),
        load_checkpoint,
        "CheckpointError",
        "truncated: 0 bytes",
        library_refuses=True,
    ),
    Case(
        "torch safetensors: key weight_ih_l999999999",
        lambda d: _torch_state(d, _lstm_layer(RNG, 2, 3, "_l999999999")),
        reader("torch"),
        "ConversionError",
        "unexpected keys \\['weight_hh_l999999999', 'weight_ih_l999999999'",
    ),
    Case(
        "torch safetensors: layers l0 and l5 only",
        lambda d: _torch_state(d, {**_lstm_layer(RNG, 2, 3, "_l0"), **_lstm_layer(RNG, 3, 3, "_l5")}),
        reader("torch"),
        "ConversionError",
        "expected \\['l0', 'l1'\\]",
    ),
    Case(
        "torch safetensors: layer 1 not fed by layer 0",
        lambda d: _torch_state(d, {**_lstm_layer(RNG, 2, 3, "_l0"), **_lstm_layer(RNG, 5, 3, "_l1")}),
        reader("torch"),
        "ConversionError",
        "layer 1 takes inputs of size 5, but layer 0 outputs 3",
    ),
    Case(
        "torch safetensors: a reverse direction without its forward one",
        lambda d: _torch_state(d, {**_lstm_layer(RNG, 2, 3, "_l0_reverse")}),
        reader("torch"),
        "ReverseOnly",
        "only backwards",
    ),
    Case(
        "torch safetensors: a whole model's state dict without --prefix",
        lambda d: _torch_state(
            d,
            {
                "embedding.weight": RNG.normal(size=(10, 2)).astype(np.float32),
                **{f"encoder.rnn.{k}": v for k, v in _lstm_layer(RNG, 2, 3, "_l0").items()},
            },
        ),
        reader("torch"),
        "ConversionError",
        "under \\['encoder.rnn.'\\]: pass one as prefix",
    ),
    Case(
        "torch safetensors: integer weights",
        lambda d: _torch_state(d, {k: v.astype(np.int32) for k, v in _lstm_layer(RNG, 2, 3, "_l0").items()}),
        reader("torch"),
        "ConversionError",
        "expected floating-point arrays",
    ),
    Case(
        "torch safetensors: a 1-byte file",
        lambda d: write(d, "one.safetensors", b"\x01"),
        reader("torch"),
        "ConversionError",
        "not a torch weight file",
    ),
    Case(
        "canonical to ONNX operator: spec novolstm",
        lambda d: checkpoint(d, spec="novolstm"),
        converter("canonical", "onnx", "novolstm"),
        "ConversionError",
        "not 'novolstm'.*novolstm.export_onnx",
    ),
    Case(
        "canonical to ONNX operator: spec novolstm_reference",
        lambda d: checkpoint(d, spec="novolstm_reference"),
        converter("canonical", "onnx", "novolstm_reference"),
        "ConversionError",
        "not 'novolstm_reference'.*novolstm.export_onnx",
    ),
    Case(
        "canonical to torch: spec novolstm_reference",
        lambda d: checkpoint(d, spec="novolstm_reference"),
        converter("canonical", "torch", "novolstm_reference"),
        "ConversionError",
        "holds the specs \\['lstm', 'gru'\\]",
    ),
]


# ---------------------------------------------------------------- torch.save files (torch)


class _Hostile:
    def __reduce__(self):
        return (os.system, ("touch HOSTILE_PICKLE_RAN",))


def _pickled_code(folder):
    import torch

    path = os.path.join(folder, "evil.pt")
    torch.save({"weight_ih_l0": torch.zeros(8, 2), "payload": _Hostile()}, path)
    return path


def _legacy_pickle(folder):
    """The pre-zip torch.save format: a bare pickle, here one whose first object runs os.system."""
    import pickle

    return write(folder, "legacy.pt", pickle.dumps(_Hostile(), protocol=2))


def _pickled_module(folder):
    import torch

    path = os.path.join(folder, "module.pt")
    torch.save(torch.nn.LSTM(2, 3), path)
    return path


def _pt_bomb(folder):
    """A torch.save archive one of whose members declares 2 GiB uncompressed."""
    import torch

    path = os.path.join(folder, "bomb.pt")
    torch.save(torch.nn.LSTM(2, 3).state_dict(), path)
    raw = bytearray(pathlib.Path(path).read_bytes())
    with zipfile.ZipFile(path) as archive:
        info = archive.infolist()[-1]
    # the central directory entry's uncompressed size (offset 24 in the record)
    central = raw.rfind(b"PK\x01\x02")
    struct.pack_into("<I", raw, central + 24, 2**31)
    pathlib.Path(path).write_bytes(bytes(raw))
    assert info.filename
    return path


TORCH_CASES = [
    Case(
        "torch.save file pickling code (os.system)",
        _pickled_code,
        reader("torch"),
        "ConversionError",
        "weights_only=True\\) refuses it.*never unpickles code.*torch.save\\(model.state_dict\\(\\), path\\)",
        needs=("torch",),
    ),
    Case(
        "legacy (pre-zip) torch file: a bare pickle running os.system",
        _legacy_pickle,
        reader("torch"),
        "ConversionError",
        "weights_only=True\\) refuses it.*never unpickles code",
        needs=("torch",),
    ),
    Case(
        "torch.save of a whole nn.Module",
        _pickled_module,
        reader("torch"),
        "ConversionError",
        "weights_only=True\\) refuses it.*Re-save",
        needs=("torch",),
    ),
    Case(
        "torch.save archive declaring a 2 GiB member",
        _pt_bomb,
        reader("torch"),
        "ConversionError",
        "inflate to",
        needs=("torch",),
    ),
]


# ---------------------------------------------------------------- ONNX models (onnx)


def _onnx_model(folder, edit=None, name="m.onnx", stack=(("forward", 1),), units=3, inputs=2):
    from novolstm.convert.onnx import lstm_stack_model

    rng = np.random.default_rng(1)
    layers, size = [], inputs
    for direction, count in stack:
        layers.append((direction, [novolstm.testing.random_params("lstm", size, units, rng) for _ in range(count)]))
        size = units * count
    model = lstm_stack_model(layers)
    if edit:
        edit(model)
    path = os.path.join(folder, name)
    with open(path, "wb") as fh:
        fh.write(model.SerializeToString())
    return path


def _gru_model(folder, linear_before_reset):
    from onnx import helper

    from novolstm.convert.onnx import lstm_stack_model

    params = novolstm.testing.random_params("gru", 2, 3, np.random.default_rng(1))
    model = lstm_stack_model([("forward", [params])], op="GRU")
    node = next(n for n in model.graph.node if n.op_type == "GRU")
    kept = [a for a in node.attribute if a.name != "linear_before_reset"]
    node.ClearField("attribute")
    node.attribute.extend(kept + [helper.make_attribute("linear_before_reset", linear_before_reset)])
    return write(folder, "g.onnx", model.SerializeToString())


def _lstm_node(model, k=0):
    return [n for n in model.graph.node if n.op_type == "LSTM"][k]


def _set(attribute, value, k=0):
    def edit(model):
        from onnx import helper

        node = _lstm_node(model, k)
        kept = [a for a in node.attribute if a.name != attribute]
        node.ClearField("attribute")
        node.attribute.extend(kept + [helper.make_attribute(attribute, value)])

    return edit


def _external(location, length=96):
    def edit(model):
        from onnx import TensorProto

        tensor = next(t for t in model.graph.initializer if t.name == "W")
        tensor.ClearField("raw_data")
        tensor.ClearField("float_data")
        tensor.data_location = TensorProto.EXTERNAL
        for key, value in (("location", location), ("offset", "0"), ("length", str(length))):
            entry = tensor.external_data.add()
            entry.key, entry.value = key, value

    return edit


def _external_beside(kind):
    """A model whose external data file beside it is a link to a secret, or too short."""

    def build(folder):
        secret = _secret(folder)
        if kind == "link":
            os.symlink(secret, os.path.join(folder, "m.onnx.data"))
            return _onnx_model(folder, _external("m.onnx.data"))
        write(folder, "m.onnx.data", b"\0" * 40)
        return _onnx_model(folder, _external("m.onnx.data"))

    return build


def _computed_weights(model):
    from onnx import helper

    lstm = _lstm_node(model)
    model.graph.node.insert(0, helper.make_node("Identity", ["R"], ["R_computed"]))
    lstm.input[2] = "R_computed"


def _gru_node(model):
    from onnx import helper

    model.graph.node.append(helper.make_node("GRU", ["x_tm", "W", "R"], ["g"], hidden_size=3))


def _lstm_in_loop(model):
    from onnx import TensorProto, helper

    body = helper.make_graph(
        [helper.make_node("LSTM", ["x_tm", "W", "R"], ["y"], hidden_size=3)],
        "body",
        [helper.make_tensor_value_info("i", TensorProto.INT64, [])],
        [],
    )
    model.graph.node.append(helper.make_node("If", ["cond"], [], then_branch=body, else_branch=body))


def _unchained(model):
    # layer 1 reads the model input (through a transpose), not layer 0's outputs
    from onnx import helper

    second = _lstm_node(model, 1)
    model.graph.node.insert(0, helper.make_node("Transpose", ["x"], ["x_again"], perm=[1, 0, 2]))
    second.input[0] = "x_again"


ONNX_CASES = [
    Case(
        "ONNX: direction='reverse' into torch (which has no reverse-only layer)",
        lambda d: _onnx_model(d, stack=(("reverse", 1),)),
        converter("onnx", "torch"),
        "ReverseOnly",
        "only backwards",
        needs=("onnx",),
    ),
    Case(
        "ONNX: direction='reverse' into a canonical checkpoint",
        lambda d: _onnx_model(d, stack=(("reverse", 1),)),
        converter("onnx", "canonical"),
        "ReverseOnly",
        "only backwards",
        needs=("onnx",),
    ),
    Case(
        "ONNX: direction attribute disagrees with W",
        lambda d: _onnx_model(d, _set("direction", "bidirectional")),
        reader("onnx"),
        "ConversionError",
        "takes 2 weight set\\(s\\), W has 1",
        needs=("onnx",),
    ),
    Case(
        "ONNX: unknown direction",
        lambda d: _onnx_model(d, _set("direction", "sideways")),
        reader("onnx"),
        "ConversionError",
        "direction 'sideways'",
        needs=("onnx",),
    ),
    Case(
        "ONNX: clip",
        lambda d: _onnx_model(d, _set("clip", 3.0)),
        reader("onnx"),
        "ConversionError",
        "sets 'clip'",
        needs=("onnx",),
    ),
    Case(
        "ONNX: input_forget",
        lambda d: _onnx_model(d, _set("input_forget", 1)),
        reader("onnx"),
        "ConversionError",
        "input_forget",
        needs=("onnx",),
    ),
    Case(
        "ONNX: HardSigmoid activations",
        lambda d: _onnx_model(d, _set("activations", ["HardSigmoid", "Tanh", "Tanh"])),
        reader("onnx"),
        "ConversionError",
        "uses activations",
        needs=("onnx",),
    ),
    Case(
        "ONNX: activation_alpha",
        lambda d: _onnx_model(d, _set("activation_alpha", [0.5])),
        reader("onnx"),
        "ConversionError",
        "sets activation_alpha",
        needs=("onnx",),
    ),
    Case(
        "ONNX: an attribute novolstm does not know",
        lambda d: _onnx_model(d, _set("peephole_scale", 2.0)),
        reader("onnx"),
        "ConversionError",
        "unknown attributes \\['peephole_scale'\\]",
        needs=("onnx",),
    ),
    Case(
        "ONNX: hidden_size disagrees with R",
        lambda d: _onnx_model(d, _set("hidden_size", 4)),
        reader("onnx"),
        "ConversionError",
        "hidden_size 4, but R holds 3",
        needs=("onnx",),
    ),
    Case(
        "ONNX: external data at an absolute path (/etc/hostname)",
        lambda d: _onnx_model(d, _external("/etc/hostname")),
        reader("onnx"),
        "ConversionError",
        "never from another folder",
        needs=("onnx",),
    ),
    Case(
        "ONNX: external data in the parent folder",
        lambda d: _onnx_model(d, _external("../secret.bin")),
        reader("onnx"),
        "ConversionError",
        "never from another folder",
        needs=("onnx",),
    ),
    Case(
        "ONNX: external data file beside the model that is a symlink",
        _external_beside("link"),
        reader("onnx"),
        "ConversionError",
        "not a regular file \\(a link\\?\\)",
        needs=("onnx",),
    ),
    Case(
        "ONNX: external data shorter than the tensor",
        _external_beside("short"),
        reader("onnx"),
        "ConversionError",
        "do not hold its 96 bytes",
        needs=("onnx",),
    ),
    Case(
        "ONNX: weights computed at run time",
        lambda d: _onnx_model(d, _computed_weights),
        reader("onnx"),
        "ConversionError",
        "not an initializer",
        needs=("onnx",),
    ),
    Case(
        "ONNX: a GRU node next to the LSTM",
        lambda d: _onnx_model(d, _gru_node),
        reader("onnx"),
        "ConversionError",
        "\\['GRU'\\] nodes",
        needs=("onnx",),
    ),
    Case(
        "ONNX: a GRU node with linear_before_reset=0 (another function)",
        lambda d: _gru_model(d, 0),
        reader("onnx", "gru"),
        "ConversionError",
        "linear_before_reset=0 applies the reset gate before",
        needs=("onnx",),
    ),
    Case(
        "ONNX: a GRU model read for spec lstm",
        lambda d: _gru_model(d, 1),
        reader("onnx", "lstm"),
        "ConversionError",
        "\\['GRU'\\] nodes; novolstm reads it as a stack of LSTM operators",
        needs=("onnx",),
    ),
    Case(
        "ONNX: an LSTM node inside control flow",
        lambda d: _onnx_model(d, _lstm_in_loop),
        reader("onnx"),
        "ConversionError",
        "inside control flow",
        needs=("onnx",),
    ),
    Case(
        "ONNX: two LSTM nodes that do not feed each other",
        lambda d: _onnx_model(d, _unchained, stack=(("forward", 1), ("forward", 1)), units=2),
        reader("onnx"),
        "ConversionError",
        "does not take its input from LSTM node 0",
        needs=("onnx",),
    ),
    Case(
        "ONNX: layers of mixed directions",
        lambda d: _onnx_model(d, stack=(("forward", 1), ("reverse", 1))),
        reader("onnx"),
        "ConversionError",
        "mix directions",
        needs=("onnx",),
    ),
    Case(
        "ONNX: not a protobuf",
        lambda d: write(d, "junk.onnx", b"\xff" * 64),
        reader("onnx"),
        "ConversionError",
        "not an ONNX model",
        needs=("onnx",),
    ),
    Case(
        "ONNX: the file is a FIFO",
        lambda d: fifo(d, "m.onnx"),
        reader("onnx"),
        "ConversionError",
        "not a regular file",
        needs=("onnx",),
    ),
]


# ---------------------------------------------------------------- Keras files (h5py)


def _keras_weights(folder, name="m.weights.h5", count=1, bidirectional=False) -> str:
    from novolstm.convert.keras_files import write_keras

    rng = np.random.default_rng(2)
    layers, size = {}, 2
    for k in range(count):
        for suffix in ("", "_reverse") if bidirectional else ("",):
            layers[f"l{k}{suffix}"] = {
                n: v.astype(np.float32) for n, v in novolstm.testing.random_params("lstm", size, 3, rng).items()
            }
        size = 6 if bidirectional else 3
    path = os.path.join(folder, name)
    write_keras(layers, path, "lstm")
    return path


def _edit_h5(edit):
    def build(folder):
        import h5py

        path = _keras_weights(folder)
        with h5py.File(path, "a") as f:
            edit(f, folder)
        return path

    return build


def _secret(folder) -> str:
    path = os.path.join(folder, "secret.bin")
    np.full(64, 7.0, np.float32).tofile(path)
    return path


def _external_link(f, folder):
    import h5py

    other = os.path.join(folder, "other.h5")
    with h5py.File(other, "w") as g:
        g["kernel"] = np.zeros((2, 12), np.float32)
    del f["layers/lstm/cell/vars/0"]
    f["layers/lstm/cell/vars/0"] = h5py.ExternalLink(other, "/kernel")


def _soft_link(f, folder):
    import h5py

    del f["layers/lstm/cell/vars/0"]
    f["layers/lstm/cell/vars/0"] = h5py.SoftLink("/layers/lstm/cell/vars/1")


def _external_storage(f, folder):
    secret = _secret(folder)
    del f["layers/lstm/cell/vars/2"]
    f.create_dataset("layers/lstm/cell/vars/2", shape=(12,), dtype="float32", external=[(secret, 0, 48)])


def _virtual(f, folder):
    import h5py

    secret = os.path.join(folder, "source.h5")
    with h5py.File(secret, "w") as g:
        g["bias"] = np.full(12, 7.0, np.float32)
    layout = h5py.VirtualLayout(shape=(12,), dtype="float32")
    layout[:] = h5py.VirtualSource(secret, "bias", shape=(12,))
    del f["layers/lstm/cell/vars/2"]
    f.create_virtual_dataset("layers/lstm/cell/vars/2", layout)


def _unwritten(f, folder):
    del f["layers/lstm/cell/vars/2"]
    f.create_dataset("layers/lstm/cell/vars/2", shape=(2**29,), dtype="float32", chunks=(2**16,))


def _compressed(f, folder):
    del f["layers/lstm/cell/vars/2"]
    f.create_dataset("layers/lstm/cell/vars/2", data=np.zeros(2**22, np.float32), chunks=(2**18,), compression="gzip")


def _deep_groups(f, folder):
    group = f
    for _ in range(200):
        group = group.create_group("g")


def _integers(f, folder):
    del f["layers/lstm/cell/vars/2"]
    f["layers/lstm/cell/vars/2"] = np.arange(12, dtype=np.int32)


def _archive(folder, config, weights: bytes | None = None, name="m.keras", declared: int | None = None) -> str:
    weights = weights if weights is not None else pathlib.Path(_keras_weights(folder)).read_bytes()
    path = os.path.join(folder, name)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("metadata.json", "{}")
        archive.writestr("config.json", config if isinstance(config, str) else json.dumps(config))
        archive.writestr("model.weights.h5", weights)
    if declared is not None:  # the central directory's uncompressed size of the last member
        raw = bytearray(pathlib.Path(path).read_bytes())
        central = raw.rfind(b"PK\x01\x02")
        struct.pack_into("<I", raw, central + 24, declared)
        pathlib.Path(path).write_bytes(bytes(raw))
    return path


def _sequential(*layers, inputs=2):
    return {
        "class_name": "Sequential",
        "config": {
            "name": "sequential",
            "layers": [{"class_name": "InputLayer", "config": {"batch_shape": [None, None, inputs]}}, *layers],
        },
    }


def _lstm_entry(units=3, inputs=2, **config):
    return {
        "class_name": "LSTM",
        "config": {"units": units, "return_sequences": True, **config},
        "build_config": {"input_shape": [None, None, inputs]},
    }


def _bidirectional_entry(merge_mode, units=3, inputs=2):
    return {
        "class_name": "Bidirectional",
        "config": {"merge_mode": merge_mode, "layer": _lstm_entry(units, inputs)},
        "build_config": {"input_shape": [None, None, inputs]},
    }


def _bidirectional_archive(merge_mode):
    def build(folder):
        weights = pathlib.Path(_keras_weights(folder, bidirectional=True)).read_bytes()
        return _archive(folder, _sequential(_bidirectional_entry(merge_mode)), weights)

    return build


def _legacy(folder, weights: dict, version="2.15.0", config=None) -> str:
    """A Keras 2 save_weights file: layer_names, each layer's weight_names, the datasets under them."""
    import h5py

    path = os.path.join(folder, "legacy.h5")
    with h5py.File(path, "w") as f:
        root = f
        if config is not None:
            f.attrs["model_config"] = json.dumps(config)
            root = f.create_group("model_weights")
        root.attrs["keras_version"] = version
        root.attrs["layer_names"] = [name.encode() for name in weights]
        for layer, arrays in weights.items():
            group = root.create_group(layer)
            group.attrs["weight_names"] = [n.encode() for n in arrays]
            for n, a in arrays.items():
                group[n] = a
    return path


def _legacy_lstm(prefix="lstm/lstm_cell"):
    rng = np.random.default_rng(3)
    return {
        f"{prefix}/kernel:0": rng.normal(size=(2, 12)).astype(np.float32),
        f"{prefix}/recurrent_kernel:0": rng.normal(size=(3, 12)).astype(np.float32),
        f"{prefix}/bias:0": rng.normal(size=12).astype(np.float32),
    }


KERAS_CASES = [
    Case(
        "Keras .weights.h5: an external link to another HDF5 file",
        _edit_h5(_external_link),
        reader("keras"),
        "ConversionError",
        "is an external link",
        needs=("h5py",),
    ),
    Case(
        "Keras .weights.h5: a soft link",
        _edit_h5(_soft_link),
        reader("keras"),
        "ConversionError",
        "is a soft link",
        needs=("h5py",),
    ),
    Case(
        "Keras .weights.h5: a dataset stored in an external file",
        _edit_h5(_external_storage),
        reader("keras"),
        "ConversionError",
        "keeps its data in external files",
        needs=("h5py",),
    ),
    Case(
        "Keras .weights.h5: a virtual dataset",
        _edit_h5(_virtual),
        reader("keras"),
        "ConversionError",
        "is virtual",
        needs=("h5py",),
    ),
    Case(
        "Keras .weights.h5: a 2 GiB dataset never written",
        _edit_h5(_unwritten),
        reader("keras"),
        "ConversionError",
        "declares 2147483648 bytes but stores 0",
        needs=("h5py",),
    ),
    Case(
        "Keras .weights.h5: a 16 MiB gzip-compressed dataset",
        _edit_h5(_compressed),
        reader("keras"),
        "ConversionError",
        "declares 16777216 bytes but stores",
        needs=("h5py",),
    ),
    Case(
        "Keras .weights.h5: groups nested 200 deep",
        _edit_h5(_deep_groups),
        reader("keras"),
        "ConversionError",
        "nested more than 32 deep",
        needs=("h5py",),
    ),
    Case(
        "Keras .weights.h5: integer weights",
        _edit_h5(_integers),
        reader("keras"),
        "ConversionError",
        "expected floating-point weights",
        needs=("h5py",),
    ),
    Case(
        "Keras .weights.h5: not HDF5",
        lambda d: write(d, "x.weights.h5", b"\0" * 100),
        reader("keras"),
        "ConversionError",
        "not an HDF5 file",
        needs=("h5py",),
    ),
    Case(
        "Keras .weights.h5: a FIFO",
        lambda d: fifo(d, "x.weights.h5"),
        reader("keras"),
        "ConversionError",
        "not a regular file",
        needs=("h5py",),
    ),
    Case(
        "Keras .keras: weights member declaring 2 GiB",
        lambda d: _archive(d, _sequential(_lstm_entry()), declared=2**31),
        reader("keras"),
        "ConversionError",
        "declares 2147483648 bytes uncompressed, more than the",
        needs=("h5py",),
    ),
    Case(
        "Keras .keras: weights member inflating past what it declares",
        lambda d: _archive(d, _sequential(_lstm_entry()), weights=bytes(64 << 20), declared=4096),
        reader("keras"),
        "ConversionError",
        "cannot read model.weights.h5|inflates past",
        needs=("h5py",),
    ),
    Case(
        "Keras .keras: config.json nested 100000 deep",
        lambda d: _archive(d, '{"config": ' + "[" * 100_000 + "]" * 100_000 + "}"),
        reader("keras"),
        "ConversionError",
        "nested more than 64 levels",
        needs=("h5py",),
    ),
    Case(
        "Keras .keras: a zip without config.json",
        lambda d: write(d, "z.keras", _zip({"model.weights.h5": b""})),
        reader("keras"),
        "ConversionError",
        "not a .keras archive",
        needs=("h5py",),
    ),
    Case(
        "Keras .keras: Bidirectional(merge_mode='sum')",
        _bidirectional_archive("sum"),
        reader("keras"),
        "ConversionError",
        "merge_mode='sum'",
        needs=("h5py",),
    ),
    Case(
        "Keras .keras: Bidirectional(merge_mode='ave')",
        _bidirectional_archive("ave"),
        reader("keras"),
        "ConversionError",
        "merge_mode='ave'",
        needs=("h5py",),
    ),
    Case(
        "Keras .keras: Bidirectional(merge_mode='mul')",
        _bidirectional_archive("mul"),
        reader("keras"),
        "ConversionError",
        "merge_mode='mul'",
        needs=("h5py",),
    ),
    Case(
        "Keras .keras: Bidirectional(merge_mode=None)",
        _bidirectional_archive(None),
        reader("keras"),
        "ConversionError",
        "merge_mode=None",
        needs=("h5py",),
    ),
    Case(
        "Keras .keras: recurrent_activation='hard_sigmoid'",
        lambda d: _archive(d, _sequential(_lstm_entry(recurrent_activation="hard_sigmoid"))),
        reader("keras"),
        "ConversionError",
        "hard_sigmoid",
        needs=("h5py",),
    ),
    Case(
        "Keras 2 .h5 weights of Keras 2.2 (hard_sigmoid by default, not recorded)",
        lambda d: _legacy(d, {"lstm": _legacy_lstm()}, version="2.2.4"),
        reader("keras"),
        "ConversionError",
        "Keras 2.2.4, whose LSTM and GRU used recurrent_activation='hard_sigmoid'.*model.save",
        needs=("h5py",),
    ),
    Case(
        "Keras 2 .h5 weights with a Dense head",
        lambda d: _legacy(d, {"lstm": _legacy_lstm(), "dense": {"dense/kernel:0": np.zeros((3, 1), np.float32)}}),
        reader("keras"),
        "ConversionError",
        "holds 'dense/kernel:0', not an LSTM or GRU weight.*model.save\\('m.keras'\\)",
        needs=("h5py",),
    ),
    Case(
        "Keras 2 .h5 full model with merge_mode='ave'",
        lambda d: _legacy(
            d,
            {
                "bidirectional": {
                    **_legacy_lstm("bidirectional/forward_lstm/lstm_cell"),
                    **_legacy_lstm("bidirectional/backward_lstm/lstm_cell"),
                }
            },
            config=_sequential(
                {
                    "class_name": "Bidirectional",
                    "config": {"name": "bidirectional", "merge_mode": "ave", "layer": _lstm_entry()},
                }
            ),
        ),
        reader("keras"),
        "ConversionError",
        "merge_mode='ave'",
        needs=("h5py",),
    ),
    Case(
        "Keras 2 .h5 weight_names naming a missing dataset",
        lambda d: _legacy(d, {"lstm": _legacy_lstm()}) and _drop_legacy(d),
        reader("keras"),
        "ConversionError",
        "which the file does not hold",
        needs=("h5py",),
    ),
]


def _drop_legacy(folder):
    import h5py

    path = os.path.join(folder, "legacy.h5")
    with h5py.File(path, "a") as f:
        del f["lstm/lstm/lstm_cell/bias:0"]
    return path


def _zip(members: dict) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return buffer.getvalue()


# ---------------------------------------------------------------- Flax files (flax)


def _msgpack(folder, tree, name="f.msgpack"):
    from flax import serialization

    path = os.path.join(folder, name)
    with open(path, "wb") as fh:
        fh.write(serialization.msgpack_serialize(tree))
    return path


def _flax_array(folder, shape, dtype):
    """Flax's own array encoding (msgpack ext type 1: shape, dtype, bytes), its header lying."""
    import msgpack

    inner = msgpack.packb([shape, dtype, b"\0" * 12])
    return write(folder, "array.msgpack", msgpack.packb({"params": {"kernel": msgpack.ExtType(1, inner)}}))


def _nested(depth):
    tree = {"kernel": np.zeros(2, np.float32)}
    for _ in range(depth):
        tree = {"x": tree}
    return tree


FLAX_CASES = [
    Case(
        "Flax msgpack: a tree 200 levels deep",
        lambda d: _msgpack(d, _nested(200)),
        reader("flax"),
        "ConversionError",
        "nested more than 8 levels",
        needs=("flax",),
    ),
    Case(
        "Flax msgpack: integer leaves",
        lambda d: _msgpack(d, {"params": {"ii": {"kernel": np.zeros((2, 3), np.int32)}}}),
        reader("flax"),
        "ConversionError",
        "expected floating-point arrays",
        needs=("flax",),
    ),
    Case(
        "Flax msgpack: maps nested 100000 deep",
        lambda d: write(d, "deep.msgpack", b"\x81\xa1x" * 100_000 + b"\xc0"),
        reader("flax"),
        "ConversionError",
        "not a Flax msgpack file \\(StackError",
        needs=("flax",),
    ),
    Case(
        "Flax msgpack: an array declaring 2**80 elements over 12 bytes",
        lambda d: _flax_array(d, [2**40, 2**40], "float32"),
        reader("flax"),
        "ConversionError",
        "cannot reshape",
        needs=("flax",),
    ),
    Case(
        "Flax msgpack: an object array",
        lambda d: _flax_array(d, [3], "object"),
        reader("flax"),
        "ConversionError",
        "cannot create an OBJECT array",
        needs=("flax",),
    ),
    Case(
        "Flax msgpack: garbage",
        lambda d: write(d, "g.msgpack", b"\xc1" * 32),
        reader("flax"),
        "ConversionError",
        "not a Flax msgpack file",
        needs=("flax",),
    ),
    Case(
        "Flax msgpack: a FIFO",
        lambda d: fifo(d, "f.msgpack"),
        reader("flax"),
        "ConversionError",
        "not a regular file",
        needs=("flax",),
    ),
]

ALL_CASES = CHECKPOINT_CASES + TORCH_CASES + ONNX_CASES + KERAS_CASES + FLAX_CASES


# ---------------------------------------------------------------- the check


class _TimedOut(Exception):
    pass


def _alarm(signum, frame):
    raise _TimedOut()


def check_refused(case: Case, folder: str) -> dict:
    """Build ``case`` in ``folder``, read it, and return what happened: the error raised (its class
    name and message), the seconds taken and the resident-set growth."""
    import time

    path = case.build(folder)
    outcome: dict = {}

    def attempt():
        try:
            case.read(path)
        except Exception as exc:  # the test checks the class by name
            outcome["error"], outcome["message"] = type(exc).__name__, str(exc)
            outcome["bases"] = [c.__name__ for c in type(exc).__mro__]
        else:
            outcome["error"], outcome["message"], outcome["bases"] = None, "read without error", []

    previous = signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(MAX_SECONDS)
    start = time.perf_counter()
    try:
        outcome["growth"] = peak_rss_bytes(attempt)
    except _TimedOut:
        outcome.update(error="timeout", message=f"still reading after {MAX_SECONDS} s", growth=None, bases=[])
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    outcome["seconds"] = time.perf_counter() - start
    outcome["path"] = path
    return outcome


def assert_refused(case: Case, folder: str) -> dict:
    import re

    outcome = check_refused(case, folder)
    assert case.error in outcome["bases"], (
        f"{case.name}: expected {case.error}, got {outcome['error']}: {outcome['message']}"
    )
    assert re.search(case.match, outcome["message"], re.S), (
        f"{case.name}: message {outcome['message']!r} lacks {case.match!r}"
    )
    assert outcome["growth"] is None or outcome["growth"] < MAX_GROWTH, (
        f"{case.name}: grew the resident set {outcome['growth'] / 2**20:.0f} MiB"
    )
    assert outcome["seconds"] < MAX_SECONDS
    assert not os.path.exists("HOSTILE_PICKLE_RAN"), "a pickle ran code"
    return outcome


def cases_for(available: set) -> list:
    return [c for c in ALL_CASES if set(c.needs) <= available]
