"""novolstm.keras's named classes: one layer and one cell per built-in spec, the classes
get_layer/get_cell return, shown by name in summaries, and .keras files that load in a fresh
process importing only keras and novolstm.keras (built-in specs by registered name, other
specs from the spec text their config carries; an altered spec is refused)."""

from __future__ import annotations

import doctest
import json
import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest

import novolstm
import novolstm.keras as nk

SPECS = novolstm.list_specs()
I, H = 3, 4

#: A spec that is not built in: the GRU under another name and class name.
CUSTOM = novolstm.load_spec("gru").dumps().replace('name = "gru"', 'name = "my_gru"').replace(
    'class_name = "GRU"', 'class_name = "MyGRU"'
)


@pytest.mark.parametrize("name", SPECS)
def test_every_builtin_spec_has_a_named_registered_layer_and_cell(name):
    class_name = novolstm.load_spec(name).class_name
    Layer, Cell = getattr(nk, class_name), getattr(nk, class_name + "Cell")
    assert Layer is novolstm.get_layer("keras", name) and Cell is novolstm.get_cell("keras", name)
    assert (Layer.__module__, Layer.__name__) == ("novolstm.keras", class_name)
    assert keras.saving.get_registered_name(Layer) == f"novolstm>{class_name}"
    assert keras.saving.get_registered_object(f"novolstm>{class_name}Cell") is Cell
    assert keras.saving.get_registered_object(f"novolstm>{name}.Cell") is Cell  # files saved before the names


def test_summary_shows_the_class_name():
    model = keras.Sequential([keras.Input((5, I)), nk.NovoLSTM(H, seed=0), keras.layers.Dense(2)])
    lines = []
    model.summary(print_fn=lambda line, **kw: lines.append(line))
    assert "novo_lstm (NovoLSTM)" in "\n".join(lines)


LOADER = """
import json, sys
import numpy as np
import keras
import novolstm.keras  # registers the classes: the only novolstm line before the loads

data = np.load("inputs.npz")
results, refused = {}, {}
for path in json.loads(sys.argv[1]):
    try:
        results[path] = keras.models.load_model(path).predict(data[path], verbose=0)
    except Exception as exc:
        refused[path] = str(exc)
np.savez("loaded.npz", **results)
print(json.dumps({"refused": refused}))
"""


def test_keras_files_load_in_a_fresh_process_importing_only_novolstm_keras(tmp_path, rng):
    custom_path = tmp_path / "my_gru.toml"
    custom_path.write_text(CUSTOM)
    MyGRU, MyGRUCell = novolstm.get_layer("keras", custom_path), novolstm.get_cell("keras", custom_path)
    models = {
        "named.keras": keras.Sequential([keras.Input((6, I)), nk.NovoLSTM(H, return_sequences=True)]),
        "rnn_cell.keras": keras.Sequential([keras.Input((6, I)), keras.layers.RNN(nk.PeepholeLSTMCell(H))]),
        "custom.keras": keras.Sequential([keras.Input((6, I)), MyGRU(H, return_sequences=True)]),
        "custom_cell.keras": keras.Sequential([keras.Input((6, I)), keras.layers.RNN(MyGRUCell(H))]),
    }
    inputs, expected = {}, {}
    for path, model in models.items():
        for v in model.weights:  # distinct random weights, not the initial ones
            v.assign(rng.normal(scale=0.5, size=v.shape).astype("float32"))
        inputs[path] = rng.normal(size=(2, 6, I)).astype("float32")
        expected[path] = model.predict(inputs[path], verbose=0)
        model.save(tmp_path / path)
    # The custom spec, altered after saving (its hash kept): refused, never loaded.
    tampered = tmp_path / "tampered.keras"
    _rewrite_config(tmp_path / "custom.keras", tampered, lambda text: text.replace("sigmoid", "tanh"))
    inputs["tampered.keras"] = inputs["custom.keras"]
    np.savez(tmp_path / "inputs.npz", **inputs)

    env = {k: v for k, v in os.environ.items() if k != "PYTHONSTARTUP"}
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(LOADER), json.dumps([*models, "tampered.keras"])],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    refused = json.loads(proc.stdout.strip().splitlines()[-1])["refused"]
    assert set(refused) == {"tampered.keras"} and "the config was altered; not loaded" in refused["tampered.keras"]
    loaded = np.load(tmp_path / "loaded.npz")
    for path in models:
        np.testing.assert_array_equal(loaded[path], expected[path], err_msg=path)


def _rewrite_config(source, target, edit):
    import zipfile

    with zipfile.ZipFile(source) as zin, zipfile.ZipFile(target, "w") as zout:
        for item in zin.infolist():
            data = zin.read(item.filename)
            if item.filename == "config.json":
                data = edit(data.decode()).encode()
            zout.writestr(item, data)


def test_a_custom_spec_config_carries_its_text_and_registers_as_spec_classes(tmp_path):
    custom_path = tmp_path / "my_gru.toml"
    custom_path.write_text(CUSTOM)
    Layer = novolstm.get_layer("keras", custom_path)
    config = keras.saving.serialize_keras_object(Layer(H))
    assert config["registered_name"] == "novolstm>SpecLayer" and config["class_name"] == "MyGRU"
    assert novolstm.loads_spec(config["config"]["spec"]) == novolstm.load_spec(custom_path)
    # The built-in GRU keeps its own registration after a spec with a clashing class name loads.
    clash = tmp_path / "clash.toml"
    clash.write_text(CUSTOM.replace('class_name = "MyGRU"', 'class_name = "GRU"'))
    novolstm.get_layer("keras", clash)
    assert keras.saving.get_registered_object("novolstm>GRU") is nk.GRU
    assert "spec" not in nk.GRU(H).get_config()  # built-in classes are found by name


def test_module_docstring_example():
    finder = doctest.DocTestFinder(recurse=False)
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    for test in finder.find(nk):
        runner.run(test)
    result = runner.summarize(verbose=False)
    assert result.failed == 0 and result.attempted > 0
