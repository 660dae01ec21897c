"""novolstm.keras's named classes: one layer and one cell per built-in spec, the classes
get_layer/get_cell return, shown by name in summaries, and .keras files that load in a fresh
process importing only keras and novolstm.keras (built-in specs by registered name, other
specs from the spec text their config carries; an altered spec is refused)."""

from __future__ import annotations

import doctest
import json
import os
import re
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
CUSTOM = (
    novolstm.load_spec("gru")
    .dumps()
    .replace('name = "gru"', 'name = "my_gru"')
    .replace('class_name = "GRU"', 'class_name = "MyGRU"')
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
    # Keras numbers a default name that is already taken in the process (novo_lstm_1, ...).
    assert re.search(r"novo_lstm(_\d+)? \(NovoLSTM\)", "\n".join(lines))


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
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
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


NATIVE = {
    "dropout": 0.25,
    "recurrent_dropout": 0.125,
    "use_bias": False,
    "kernel_initializer": "zeros",
    "recurrent_initializer": "identity",
    "bias_initializer": "ones",
    "kernel_regularizer": "l2",
    "recurrent_regularizer": "l1",
    "bias_regularizer": "l1",
    "kernel_constraint": "non_neg",
    "recurrent_constraint": "unit_norm",
    "bias_constraint": "max_norm",
    "activity_regularizer": "l2",
}


@pytest.mark.parametrize("kind", ["cell", "layer"])
def test_get_config_round_trips_every_native_argument(kind, tmp_path):
    cls = nk.LSTMCell if kind == "cell" else nk.LSTM
    obj = cls(H, seed=3, **NATIVE)
    config = obj.get_config()
    for key in NATIVE:
        assert key in config, key
    assert cls.from_config(config).get_config() == config
    model = keras.Sequential([keras.Input((5, I)), keras.layers.RNN(obj) if kind == "cell" else obj])
    model.save(tmp_path / "m.keras")
    loaded = keras.models.load_model(tmp_path / "m.keras").layers[0]
    assert (loaded.cell if kind == "cell" else loaded).get_config() == config


def test_initializers_regularizers_constraints_and_use_bias_act_by_role(rng):
    cell = nk.NovoLSTMCell(
        H,
        seed=0,
        **{k: v for k, v in NATIVE.items() if k not in ("dropout", "recurrent_dropout", "activity_regularizer")},
    )
    rnn = keras.layers.RNN(cell)
    rnn(rng.normal(size=(2, 5, I)).astype("float32"))
    roles = {"kernel": [], "recurrent": [], "bias": [], None: []}
    for name, role in novolstm.load_generated("novolstm", "keras").ROLES.items():
        roles[role].append(name)
    assert roles["kernel"] and roles["recurrent"] and roles["bias"] and roles[None]  # gamma_i, beta_i: the spec's own
    value = lambda name: keras.ops.convert_to_numpy(getattr(cell, name))  # noqa: E731
    assert all(not value(n).any() for n in roles["kernel"])  # zeros
    assert all(np.array_equal(value(n), np.eye(H)) for n in roles["recurrent"])  # identity
    assert all(not value(n).any() and not getattr(cell, n).trainable for n in roles["bias"])  # use_bias=False
    assert all(getattr(cell, n).trainable for n in roles[None] + roles["kernel"] + roles["recurrent"])
    # One regularization loss per kernel and recurrent kernel (the biases are fixed).
    assert len(rnn.losses) == len(roles["kernel"]) + len(roles["recurrent"])
    layer = nk.NovoLSTM(H, seed=0, activity_regularizer="l2")
    layer(rng.normal(size=(2, 5, I)).astype("float32"))
    assert len(layer.losses) == 1 and keras.ops.convert_to_numpy(layer.losses[0]) > 0
    assert all(getattr(cell, n).constraint is not None for n in roles["kernel"] + roles["recurrent"])
    with pytest.raises(ValueError, match="use_bias=False, so the biases"):
        cell.load_params({**cell.export_params(), roles["bias"][0]: np.ones(H)})


def _keras_lstm_weights(params):
    gates = ("i", "f", "g", "o")  # Keras' gate order: i, f, c, o
    return [np.concatenate([params[f"{m}_{g}"] for g in gates], axis=-1) for m in ("W", "U", "b")]


@pytest.mark.parametrize("seed", [0, 7])
def test_dropout_draws_the_masks_keras_lstm_draws(seed, rng):
    # The standard LSTM spec with Keras' own LSTM: same weights, same dropout rate and seed, so
    # the same masks (one per call, shared by gates and timesteps): the same outputs in training.
    params = {k: v.astype("float32") for k, v in random_params_keras(rng).items()}
    x = rng.normal(size=(3, 6, I)).astype("float32")
    ours = nk.LSTM(H, seed=seed, dropout=0.4, return_sequences=True)
    ours.build(x.shape)
    ours.load_canonical(params)
    native = keras.layers.LSTM(H, seed=seed, dropout=0.4, return_sequences=True)
    native.build(x.shape)
    native.set_weights(_keras_lstm_weights(params))
    cell = keras.layers.RNN(nk.LSTMCell(H, seed=seed, dropout=0.4), return_sequences=True)
    cell.build(x.shape)
    cell.cell.load_params(params)
    for _ in range(2):  # a new mask on every call, the same sequence of masks as Keras'
        expected = keras.ops.convert_to_numpy(native(x, training=True))
        np.testing.assert_allclose(keras.ops.convert_to_numpy(ours(x, training=True)), expected, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(keras.ops.convert_to_numpy(cell(x, training=True)), expected, rtol=1e-5, atol=1e-6)
    inference = keras.ops.convert_to_numpy(ours(x))
    assert not np.allclose(inference, expected)  # dropout acts in training only
    np.testing.assert_allclose(inference, keras.ops.convert_to_numpy(native(x)), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("seed", [0, 7])
def test_recurrent_dropout_draws_the_masks_keras_lstm_draws(seed, rng):
    # With a nonzero recurrent_dropout, keras.layers.LSTMCell draws one input mask and one
    # recurrent mask per gate (implementation=1); ours draws one per weight in the spec's order.
    params = {k: v.astype("float32") for k, v in random_params_keras(rng).items()}
    x = rng.normal(size=(3, 6, I)).astype("float32")
    rates = {"dropout": 0.3, "recurrent_dropout": 0.4}
    layers = [nk.LSTM(H, seed=seed, return_sequences=True, **rates)]
    layers.append(nk.LSTM(H, seed=seed, return_sequences=True, hoist_input=True, **rates))
    layers.append(keras.layers.RNN(nk.LSTMCell(H, seed=seed, **rates), return_sequences=True))
    for layer in layers:
        layer.build(x.shape)
        layer.cell.load_params(params)
    native = keras.layers.LSTM(H, seed=seed, return_sequences=True, **rates)
    native.build(x.shape)
    native.set_weights(_keras_lstm_weights(params))
    for _ in range(2):  # new masks on every call, the same sequence of masks as Keras'
        expected = keras.ops.convert_to_numpy(native(x, training=True))
        for layer in layers:
            got = keras.ops.convert_to_numpy(layer(x, training=True))
            np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    without = keras.layers.LSTM(H, seed=seed, return_sequences=True, dropout=0.3)
    without.build(x.shape)
    without.set_weights(_keras_lstm_weights(params))
    assert not np.allclose(keras.ops.convert_to_numpy(without(x, training=True)), expected)  # the state was dropped
    inference = keras.ops.convert_to_numpy(native(x))
    for layer in layers:  # inference: no mask at all
        np.testing.assert_allclose(keras.ops.convert_to_numpy(layer(x)), inference, rtol=1e-5, atol=1e-6)


def test_recurrent_dropout_masks_a_state_only_where_it_is_projected(rng):
    # The GRU reads h in three projections (h @ U_r, h @ U_z, h @ U_n) and elementwise (z * h):
    # the cell's own masks, one per recurrent weight, must multiply h in the projections only.
    from novolstm.testing import assert_close, computes_in, random_params, tolerance

    params = random_params("gru", I, H, rng)
    x = rng.normal(size=(3, 5, I))
    h = rng.normal(size=(3, H))
    cell = nk.GRUCell(H, seed=11, dropout=0.25, recurrent_dropout=0.5, dtype="float64")
    cell.build((None, I))
    cell.load_params(params)
    dp = [keras.ops.convert_to_numpy(m) for m in cell.get_dropout_mask(keras.ops.convert_to_tensor(x[:, 0]))]
    rdp = [keras.ops.convert_to_numpy(m) for m in cell.get_recurrent_dropout_mask(keras.ops.convert_to_tensor(h))]
    assert len(dp) == len(rdp) == 3 and all(not np.array_equal(rdp[0], m) for m in rdp[1:])
    assert all(np.isin(m, (0.0, 2.0)).all() and (m == 0).any() for m in rdp)  # kept values scaled by 1 / (1 - 0.5)
    sigmoid = lambda z: 1 / (1 + np.exp(-z))  # noqa: E731
    p = params
    state, outputs = h, []
    for t in range(x.shape[1]):
        xt = x[:, t]
        r = sigmoid((xt * dp[0]) @ p["W_r"] + (state * rdp[0]) @ p["U_r"] + p["b_r"])
        z = sigmoid((xt * dp[1]) @ p["W_z"] + (state * rdp[1]) @ p["U_z"] + p["b_z"])
        n = np.tanh((xt * dp[2]) @ p["W_n"] + p["b_n"] + r * ((state * rdp[2]) @ p["U_n"] + p["b_hn"]))
        state = (1 - z) * n + z * state  # h elementwise: never masked
        outputs.append(state)
    state_t = [keras.ops.convert_to_tensor(h)]
    for t in range(x.shape[1]):  # the cached masks serve every step, as inside keras.layers.RNN
        out, state_t = cell(keras.ops.convert_to_tensor(x[:, t]), state_t, training=True)
        # novolstm.testing.PRECISION_LIMITS: Keras on JAX and torch holds float64 to float32's tolerance.
        tol = tolerance(computes_in("keras", "float64", keras.backend.backend()), steps=t + 1)
        assert_close(keras.ops.convert_to_numpy(out), outputs[t], tol, what=f"output at step {t}")
    cell.reset_dropout_mask()
    cell.reset_recurrent_dropout_mask()


def random_params_keras(rng):
    from novolstm.testing import random_params

    return random_params("lstm", I, H, rng)
