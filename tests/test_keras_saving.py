"""Keras serialization: get_config/from_config, and ``model.save("x.keras")`` then
``keras.models.load_model`` in a fresh process (which imports novolstm and asks for
the cell, so that the generated classes are registered) giving identical outputs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest

import novolstm

I, H = 4, 5


def test_cell_and_layer_configs_round_trip(rng):
    Cell = novolstm.get_cell("keras", "novolstm")
    Layer = novolstm.get_layer("keras", "novolstm")
    cell = Cell(H, seed=4, dtype="float64", name="my_cell")
    config = cell.get_config()
    assert {"units": H, "seed": 4, "spec_hash": Cell.spec_hash}.items() <= config.items()
    assert Cell.from_config(config).get_config() == config

    layer = Layer(H, seed=2, hoist_input=True, return_sequences=True, go_backwards=True, dtype="float64")
    config = layer.get_config()
    assert config["units"] == H and config["go_backwards"] and config["hoist_input"] and "cell" not in config
    clone = Layer.from_config(config)
    assert clone.get_config() == config
    x = rng.normal(size=(2, 3, I))
    layer.build(x.shape)
    clone.build(x.shape)
    clone.cell.load_params(layer.cell.export_params())
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(clone(x)), keras.ops.convert_to_numpy(layer(x)))

    registered = keras.saving.get_registered_name(Cell)
    assert registered == "novolstm>NovoLSTMCell"
    assert keras.saving.get_registered_object(registered) is Cell


def test_a_config_from_another_spec_version_is_refused():
    Cell = novolstm.get_cell("keras", "lstm")
    config = {**Cell(H).get_config(), "spec_hash": "0" * 64}
    with pytest.raises(ValueError, match="saved from a spec with sha256 0000"):
        Cell(**config)
    # Keras' Layer.from_config re-raises it as a TypeError that keeps the message.
    with pytest.raises((TypeError, ValueError), match="saved from a spec with sha256 0000"):
        Cell.from_config(config)


LOADER = """
import json, sys
import numpy as np
import keras

paths, specs = json.loads(sys.argv[1]), json.loads(sys.argv[2])
try:
    keras.models.load_model(paths[0])
    unregistered = "loaded"
except Exception as exc:  # the generated classes are not registered yet
    unregistered = type(exc).__name__

import novolstm
for spec in specs:
    novolstm.get_cell("keras", spec)  # registers the spec's Cell and Layer

data = np.load("inputs.npz")
results = {}
for path in paths:
    model = keras.models.load_model(path)
    results[path] = model.predict(data[path], verbose=0)
np.savez("loaded.npz", **results)
print(json.dumps({"unregistered": unregistered}))
"""


def build_models(rng):
    Cell = lambda spec, units, **kw: novolstm.get_cell("keras", spec)(units, **kw)  # noqa: E731
    Layer = lambda spec, units, **kw: novolstm.get_layer("keras", spec)(units, **kw)  # noqa: E731
    return {
        "rnn_cell.keras": keras.Sequential(
            [keras.Input((6, I)), keras.layers.RNN(Cell("novolstm", H)), keras.layers.Dense(2)]
        ),
        "layer.keras": keras.Sequential([keras.Input((6, I)), Layer("gru", H, return_sequences=True)]),
        "hoisted.keras": keras.Sequential([keras.Input((6, I)), Layer("novolstm_reference", H, hoist_input=True)]),
        "bidirectional.keras": keras.Sequential(
            [keras.Input((6, I)), keras.layers.Bidirectional(Layer("lstm", H, return_sequences=True))]
        ),
        "stacked.keras": keras.Sequential(
            [
                keras.Input((6, I)),
                keras.layers.RNN([Cell("novolstm_reference", H), Cell("peephole_lstm", 3)], return_sequences=True),
            ]
        ),
        "float64.keras": keras.Sequential(
            [keras.Input((6, I), dtype="float64"), Layer("novolstm", H, dtype="float64", return_sequences=True)]
        ),
    }, ["novolstm", "gru", "lstm", "novolstm_reference", "peephole_lstm"]


def test_save_then_load_model_in_a_fresh_process_gives_identical_outputs(tmp_path, rng):
    models, specs = build_models(rng)
    inputs, expected = {}, {}
    for path, model in models.items():
        for layer in model.layers:  # distinct random weights, not the initial ones
            for v in layer.weights:
                v.assign(rng.normal(scale=0.5, size=v.shape).astype(keras.backend.standardize_dtype(v.dtype)))
        x = rng.normal(size=(3, 6, I)).astype(model.inputs[0].dtype)
        x[1, 4:] = 0.0
        inputs[path] = x
        expected[path] = model.predict(x, verbose=0)
        model.save(tmp_path / path)
    np.savez(tmp_path / "inputs.npz", **inputs)

    env = {k: v for k, v in os.environ.items() if k != "PYTHONSTARTUP"}
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(LOADER), json.dumps(list(models)), json.dumps(specs)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["unregistered"] != "loaded", "loading must need the generated classes"
    loaded = np.load(tmp_path / "loaded.npz")
    for path in models:
        assert loaded[path].dtype == expected[path].dtype, path
        np.testing.assert_array_equal(loaded[path], expected[path], err_msg=path)
