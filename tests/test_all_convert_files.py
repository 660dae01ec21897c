"""Keras and Flax weight files through `novolstm convert`, with the real frameworks on both
ends, and `novolstm verify-port` end to end (collected in the all-backends env)."""

from __future__ import annotations

import os

import h5py
import numpy as np
import pytest

from novolstm.cli import main
from novolstm.convert import ConversionError, files
from novolstm.testing import assert_close, tolerance

STEPS = 12


@pytest.fixture(scope="module")
def keras():
    assert os.environ.get("KERAS_BACKEND", "tensorflow") == "tensorflow"
    import keras

    return keras


def _randomise_keras(model, rng):
    # Keras initialises biases to zeros (and ones for the forget gate): make them distinct.
    for layer in model.layers:
        layer.set_weights([rng.normal(scale=0.5, size=w.shape).astype("float32") for w in layer.get_weights()])


def _x(rng, batch=3, input_size=4):
    return rng.normal(size=(batch, STEPS, input_size)).astype(np.float32)


@pytest.mark.parametrize("bidirectional", [False, True])
def test_all_keras_save_weights_to_torch(keras, rng, tmp_path, bidirectional):
    """A real stacked Keras model's save_weights file -> torch format -> nn.LSTM gives Keras' outputs."""
    import torch
    from safetensors.torch import load_file

    wrap = keras.layers.Bidirectional if bidirectional else (lambda layer: layer)
    model = keras.Sequential(
        [
            keras.Input((None, 4)),
            wrap(keras.layers.LSTM(5, return_sequences=True)),
            wrap(keras.layers.LSTM(5, return_sequences=True)),
        ]
    )
    _randomise_keras(model, rng)
    model.save_weights(tmp_path / "m.weights.h5")
    assert (
        main(
            [
                "convert",
                str(tmp_path / "m.weights.h5"),
                "-o",
                str(tmp_path / "m.safetensors"),
                "--from",
                "keras",
                "--to",
                "torch",
            ]
        )
        == 0
    )
    module = torch.nn.LSTM(4, 5, num_layers=2, batch_first=True, bidirectional=bidirectional)
    module.load_state_dict(load_file(tmp_path / "m.safetensors"))
    x = _x(rng)
    with torch.no_grad():
        got = module(torch.from_numpy(x))[0].numpy()
    assert_close(got, np.asarray(model(x)), tolerance("float32", STEPS), what="torch vs Keras outputs")


@pytest.mark.parametrize("bidirectional", [False, True])
def test_all_torch_to_keras_weights_file_loads_in_keras(keras, rng, tmp_path, bidirectional):
    """Our .weights.h5 loads with Keras' own load_weights into a fresh model and computes torch's outputs."""
    import torch
    from safetensors.torch import save_file

    module = torch.nn.GRU(
        4, 5, num_layers=2, batch_first=True, bidirectional=bidirectional
    )  # torch's biases are non-zero
    save_file(dict(module.state_dict()), tmp_path / "g.safetensors")
    files.convert(tmp_path / "g.safetensors", tmp_path / "g.weights.h5", "torch", "keras", "gru")
    wrap = keras.layers.Bidirectional if bidirectional else (lambda layer: layer)
    model = keras.Sequential(
        [
            keras.Input((None, 4)),
            wrap(keras.layers.GRU(5, return_sequences=True)),
            wrap(keras.layers.GRU(5, return_sequences=True)),
        ]
    )
    model.load_weights(tmp_path / "g.weights.h5")
    x = _x(rng)
    with torch.no_grad():
        expected = module(torch.from_numpy(x))[0].numpy()
    assert_close(np.asarray(model(x)), expected, tolerance("float32", STEPS), what="Keras vs torch outputs")


def test_all_keras_archive_configs_are_checked(keras, tmp_path):
    """The .keras archive's config is read: a hard sigmoid or a reset_after=False GRU is refused, never mapped."""
    for layer, cell, words in (
        (keras.layers.LSTM(3, recurrent_activation="hard_sigmoid"), "lstm", "hard_sigmoid"),
        (keras.layers.LSTM(3, activation="relu"), "lstm", "activation is 'relu'"),
        (keras.layers.GRU(3, reset_after=False), "gru", "reset_after"),
    ):
        model = keras.Sequential([keras.Input((None, 2)), layer])
        model.save(tmp_path / "m.keras")
        with pytest.raises(ConversionError, match=words):
            files.read(tmp_path / "m.keras", "keras", cell)
    model = keras.Sequential([keras.Input((None, 2)), keras.layers.LSTM(3), keras.layers.Dense(1)])
    model.save_weights(tmp_path / "d.weights.h5")
    with pytest.raises(ConversionError, match="'dense' holds weights"):
        files.read(tmp_path / "d.weights.h5", "keras", "lstm")
    with pytest.raises(ConversionError, match="GRU layer holds no 'lstm'"):
        model = keras.Sequential([keras.Input((None, 2)), keras.layers.GRU(3)])
        model.save_weights(tmp_path / "g.weights.h5")
        files.read(tmp_path / "g.weights.h5", "keras", "lstm")


@pytest.mark.parametrize(
    "kind,layout,cell",
    [
        ("LSTMCell", "nnx_lstm", "lstm"),
        ("OptimizedLSTMCell", "nnx_optimized_lstm", "lstm"),
        ("GRUCell", "nnx_gru", "gru"),
    ],
)
def test_all_flax_nnx_files_both_ways(rng, tmp_path, kind, layout, cell):
    """A real nnx cell's to_bytes file -> canonical -> novolstm computes the cell's outputs; and back into a fresh cell."""
    import jax
    from flax import nnx, serialization

    import novolstm

    def run(c, x, state):
        carry = (state[1], state[0]) if cell == "lstm" else state[0]
        outputs = []
        for t in range(x.shape[1]):
            carry, y = c(carry, x[:, t])
            outputs.append(np.asarray(y))
        return np.stack(outputs, 1)

    source = getattr(nnx, kind)(4, 5, rngs=nnx.Rngs(0))
    state = nnx.state(source, nnx.Param)
    pure = jax.tree_util.tree_map(
        lambda a: np.asarray(rng.normal(scale=0.5, size=a.shape), np.float32), nnx.to_pure_dict(state)
    )
    nnx.replace_by_pure_dict(state, pure)
    nnx.update(source, state)
    (tmp_path / "c.msgpack").write_bytes(serialization.to_bytes(pure))
    layers = files.read(tmp_path / "c.msgpack", "flax", cell)  # layout detected from the keys
    x, s0 = _x(rng), tuple(rng.normal(size=(3, 5)).astype(np.float32) for _ in range(2 if cell == "lstm" else 1))
    tol = tolerance("float32", STEPS)
    expected = run(source, x, s0)
    assert_close(
        novolstm.run(cell, layers["l0"], x, s0, backend="numpy")[0], expected, tol, what=f"novolstm vs nnx {kind}"
    )
    files.write(layers, tmp_path / "back.msgpack", "flax", cell, layout=layout)
    target = getattr(nnx, kind)(4, 5, rngs=nnx.Rngs(1))
    state = nnx.state(target, nnx.Param)
    nnx.replace_by_pure_dict(state, serialization.msgpack_restore((tmp_path / "back.msgpack").read_bytes()))
    nnx.update(target, state)
    assert_close(run(target, x, s0), expected, tol, what=f"nnx {kind} loaded from novolstm's file")


def test_all_flax_refusals(tmp_path):
    import novolstm

    gru = novolstm.init_params("gru", 3, 2, seed=0)
    gru["b_hn"] = gru["b_hn"] + 0.5
    with pytest.raises(ConversionError, match="b_hn"):
        files.write({"l0": gru}, tmp_path / "g.msgpack", "flax", "gru", layout="nnx_gru")
    with pytest.raises(ConversionError, match="holds spec 'lstm', not 'gru'"):
        files.write({"l0": gru}, tmp_path / "g.msgpack", "flax", "gru", layout="linen_lstm")
    with pytest.raises(ConversionError, match="not a Flax msgpack file"):
        (tmp_path / "junk.msgpack").write_bytes(b"\xc1junk")
        files.read(tmp_path / "junk.msgpack", "flax", "lstm")


def test_all_verify_port_cli_passes_and_fails_on_a_swapped_gate(keras, tmp_path, capsys):
    """verify-port accepts a correct port and rejects a real Keras file whose i and f gate blocks were swapped."""
    import torch
    from safetensors.torch import save_file

    assert main(["verify-port", "torch", "keras", "--steps", "16"]) == 0
    out = capsys.readouterr().out
    assert "PASS" in out and "torch vs float64 reference" in out and "    16   " in out
    torch.manual_seed(0)
    save_file(dict(torch.nn.LSTM(3, 4, batch_first=True).state_dict()), tmp_path / "w.safetensors")
    files.convert(tmp_path / "w.safetensors", tmp_path / "good.weights.h5", "torch", "keras", "lstm")
    base = [
        "verify-port",
        "torch",
        "keras",
        "--steps",
        "16",
        "--weights",
        str(tmp_path / "w.safetensors"),
        "--format",
        "torch",
    ]
    assert main(base + ["--ported", str(tmp_path / "good.weights.h5")]) == 0
    capsys.readouterr()
    with h5py.File(tmp_path / "good.weights.h5", "r+") as f:
        for index in ("0", "1", "2"):  # kernel, recurrent kernel, bias: blocks i, f, c, o -> f, i, c, o
            data = f[f"layers/lstm/cell/vars/{index}"]
            blocks = np.split(np.array(data), 4, axis=-1)
            data[...] = np.concatenate([blocks[1], blocks[0], blocks[2], blocks[3]], axis=-1)
    assert main(base + ["--ported", str(tmp_path / "good.weights.h5")]) == 1
    out = capsys.readouterr().out
    assert "FAIL: keras is outside the tolerance of the float64 reference" in out and out.rstrip().endswith("FAIL")
