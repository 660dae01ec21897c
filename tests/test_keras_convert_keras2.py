"""Keras 2 models with the hard-sigmoid LSTM port to the keras2_lstm spec, and nothing else does.

No Keras 2 installs beside Keras 3, so the Keras 2 files here are written with h5py in the
layout Keras 2's ``save_weights`` and ``model.save`` wrote (``keras/engine/saving.py`` of
Keras 2.2: ``layer_names``, ``keras_version``, each layer's ``weight_names`` and datasets at
those names; ``model_config`` and ``model_weights`` for a whole model), with the weight
names of Keras 2.0 to 2.3 (``lstm_1/kernel:0``) and of tf.keras (``lstm/lstm_cell/kernel:0``).
Converted weights run in the generated NumPy cell and are compared with Keras 2's LSTM
written out here in float64 from the file's own arrays (never with the code under test);
the same comparison must fail for swapped gates and for Keras 3's hard sigmoid.
Real Keras 3 layers show the other side: their ``hard_sigmoid`` is refused for keras2_lstm.
"""

from __future__ import annotations

import json
import os
import tempfile

import h5py
import keras
import numpy as np
import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st
from keras import ops

import novolstm
from novolstm.cli import main
from novolstm.convert import ConversionError, files
from novolstm.convert import keras as convert
from novolstm.testing import assert_close, computes_in, tolerance

STEPS = 5
F64 = tolerance("float64", STEPS)


# ---------------------------------------------------------------- Keras 2, written out independently


def keras2_hard_sigmoid(z):
    return np.clip(0.2 * z + 0.5, 0.0, 1.0)  # keras/backend/tensorflow_backend.py of Keras 2


def keras3_hard_sigmoid(z):
    return np.clip(z + 3.0, 0.0, 6.0) / 6.0  # what Keras 3 calls hard_sigmoid: the mutant


def keras2_lstm_layer(kernel, recurrent, bias, x, recurrent_activation=keras2_hard_sigmoid):
    """Keras 2's LSTM (implementation 1) in float64, straight from its (I, 4H) / (H, 4H) / (4H,) arrays."""
    kernel, recurrent = np.asarray(kernel, np.float64), np.asarray(recurrent, np.float64)
    bias = np.zeros(kernel.shape[1]) if bias is None else np.asarray(bias, np.float64)
    units = recurrent.shape[0]
    h = c = np.zeros((x.shape[0], units))
    outputs = []
    for t in range(x.shape[1]):
        z = x[:, t] @ kernel + h @ recurrent + bias
        zi, zf, zc, zo = (z[:, k * units : (k + 1) * units] for k in range(4))  # Keras' order: i, f, c, o
        c = recurrent_activation(zf) * c + recurrent_activation(zi) * np.tanh(zc)
        h = recurrent_activation(zo) * np.tanh(c)
        outputs.append(h)
    return np.stack(outputs, axis=1)


def keras2_model(stack, x, recurrent_activation=keras2_hard_sigmoid):
    """A Sequential of (forward weights, backward weights or None) layers; Bidirectional concatenates."""
    for forward, backward in stack:
        y = keras2_lstm_layer(*forward, x, recurrent_activation)
        if backward is not None:
            y = np.concatenate([y, keras2_lstm_layer(*backward, x[:, ::-1], recurrent_activation)[:, ::-1]], axis=-1)
        x = y
    return x


def run_converted(layers, x):
    """The converted stack in novolstm's generated NumPy keras2_lstm cell, float64."""
    count = len([k for k in layers if not k.endswith("_reverse")])
    for k in range(count):
        y, _ = novolstm.run("keras2_lstm", layers[f"l{k}"], x, backend="numpy")
        if f"l{k}_reverse" in layers:
            back, _ = novolstm.run("keras2_lstm", layers[f"l{k}_reverse"], x[:, ::-1].copy(), backend="numpy")
            y = np.concatenate([y, back[:, ::-1]], axis=-1)
        x = np.asarray(y)
    return x


# ---------------------------------------------------------------- Keras 2's HDF5 files, written with h5py


def _weight_names(layer: str, side: str | None, naming: str, kind: str = "lstm") -> list[str]:
    inner = layer if side is None else f"{side}_{layer.replace('bidirectional', kind)}"
    scope = f"{layer}/{inner}" if side is not None else layer
    cell = {"keras2": "", "tf.keras": f"/{kind}_cell"}[naming]
    return [f"{scope}{cell}/{role}:0" for role in ("kernel", "recurrent_kernel", "bias")]


def _layer_config(name, units, kind="LSTM", recurrent_activation="hard_sigmoid", use_bias=True):
    return {"class_name": kind, "config": {
        "name": name, "trainable": True, "return_sequences": True, "return_state": False, "go_backwards": False,
        "stateful": False, "unroll": False, "units": units, "activation": "tanh",
        "recurrent_activation": recurrent_activation, "use_bias": use_bias, "unit_forget_bias": True,
        "implementation": 1}}  # fmt: skip


def write_keras2(
    path,
    stack,
    *,
    version="2.2.4",
    whole_model=True,
    naming="keras2",
    list_config=False,
    recurrent_activation="hard_sigmoid",
    kind="LSTM",
    functional=False,
):
    """What Keras 2's model.save('m.h5') (whole_model) or save_weights('w.h5') wrote for a Sequential (or a
    functional Model, with its weight-free InputLayer) of LSTM (or Bidirectional(LSTM)) layers: ``stack`` is
    [(forward arrays, backward arrays or None)]."""
    counters = {}
    entries, groups = [], {}
    if functional:
        entries.append(
            {
                "name": "input_1",
                "class_name": "InputLayer",
                "inbound_nodes": [],
                "config": {"name": "input_1", "batch_input_shape": [None, None, np.shape(stack[0][0][0])[0]]},
            }
        )
        groups["input_1"] = {}
    for forward, backward in stack:
        base = "bidirectional" if backward is not None else kind.lower()
        counters[base] = counters.get(base, 0) + 1
        name = (
            f"{base}_{counters[base]}"
            if naming == "keras2"
            else base + ("" if counters[base] == 1 else f"_{counters[base] - 1}")
        )
        units = np.shape(forward[1])[0]
        use_bias = forward[2] is not None
        inner = _layer_config(name, units, kind, recurrent_activation, use_bias)
        if backward is None:
            entries.append(inner)
            groups[name] = dict(zip(_weight_names(name, None, naming, kind.lower()), forward))
        else:
            entries.append(
                {
                    "class_name": "Bidirectional",
                    "config": {"name": name, "trainable": True, "layer": inner, "merge_mode": "concat"},
                }
            )
            groups[name] = {
                **dict(zip(_weight_names(name, "forward", naming, kind.lower()), forward)),
                **dict(zip(_weight_names(name, "backward", naming, kind.lower()), backward)),
            }
    with h5py.File(path, "w") as f:
        root = f
        if whole_model:
            config = entries if list_config else {"name": "sequential_1", "layers": entries}
            if functional:
                for before, entry in zip(entries, entries[1:]):
                    entry.update(name=entry["config"]["name"], inbound_nodes=[[[before["name"], 0, 0, {}]]])
                config = {
                    "name": "model_1",
                    "layers": entries,
                    "input_layers": [["input_1", 0, 0]],
                    "output_layers": [[entries[-1]["name"], 0, 0]],
                }
            f.attrs["model_config"] = json.dumps(
                {"class_name": "Model" if functional else "Sequential", "config": config}
            ).encode()
            f.attrs["training_config"] = json.dumps({"loss": "mse", "optimizer_config": {}}).encode()
            f.attrs["keras_version"], f.attrs["backend"] = version.encode(), b"tensorflow"
            root = f.create_group("model_weights")
        root.attrs["layer_names"] = [n.encode() for n in groups]
        root.attrs["backend"] = b"tensorflow"
        if version:
            root.attrs["keras_version"] = version.encode()
        for name, weights in groups.items():
            group = root.create_group(name)
            weights = {k: v for k, v in weights.items() if v is not None}  # use_bias=False: no bias variable
            group.attrs["weight_names"] = [n.encode() for n in weights]
            for n, a in weights.items():
                group.create_dataset(n, data=a)


def random_layer(rng, inputs, units, scale, use_bias=True):
    """Keras' arrays, float32 as Keras 2 saved them: distinct per gate (a swap cannot hide)."""
    arrays = [
        rng.normal(scale=scale, size=(inputs, 4 * units)),
        rng.normal(scale=scale, size=(units, 4 * units)),
        rng.normal(scale=scale, size=4 * units) if use_bias else None,
    ]
    return tuple(None if a is None else a.astype(np.float32) for a in arrays)


def convert_cli(source, folder, spec="keras2_lstm"):
    target = os.path.join(folder, "c.safetensors")
    code = main(["convert", str(source), "-o", target, "--from", "keras", "--to", "canonical", "--spec", spec])
    assert code == 0
    return files.read(target, "canonical", spec)


# ---------------------------------------------------------------- Keras 2 files -> keras2_lstm, exactly


@settings(max_examples=12, deadline=None)
@given(
    inputs=st.integers(1, 4), units=st.integers(1, 4), layers=st.integers(1, 2), bidirectional=st.booleans(),
    naming=st.sampled_from(["keras2", "tf.keras"]), use_bias=st.booleans(),
    how=st.sampled_from(["weights 2.2.4", "weights 2.1.6-tf", "model 2.2.4", "model 2.2.4 (functional)", "model 2.1.6 (list config)", "model 2.15.0"]),
    scale=st.sampled_from([0.5, 1.5, 4.0]), seed=st.integers(0, 2**32 - 1),
)  # fmt: skip
def test_keras2_files_convert_to_keras2_lstm_exactly(
    inputs, units, layers, bidirectional, naming, use_bias, how, scale, seed
):
    rng = np.random.default_rng(seed)
    stack, size = [], inputs
    for _ in range(layers):
        forward = random_layer(rng, size, units, scale, use_bias)
        stack.append((forward, random_layer(rng, size, units, scale, use_bias) if bidirectional else None))
        size = units * (2 if bidirectional else 1)
    whole_model = how.startswith("model")
    version = how.split()[1]
    x = rng.normal(size=(2, STEPS, inputs))
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "keras2.h5")
        write_keras2(
            path,
            stack,
            version=version,
            whole_model=whole_model,
            naming=naming,
            list_config="list" in how,
            functional="functional" in how,
        )
        converted = convert_cli(path, folder)
    expected = keras2_model(stack, x)
    assert_close(
        run_converted(converted, x), expected, tolerance("float64", layers * STEPS), "converted keras2_lstm vs Keras 2"
    )
    # the same comparison catches a converter that swaps two gates, and Keras 3's hard sigmoid
    swapped = {
        k: {**p, "W_i": p["W_f"], "W_f": p["W_i"], "U_i": p["U_f"], "U_f": p["U_i"]} for k, p in converted.items()
    }
    assert np.abs(run_converted(swapped, x) - expected).max() > 1e-6, "a gate swap went unseen"
    keras3 = keras2_model(stack, x, keras3_hard_sigmoid)
    assert np.abs(run_converted(converted, x) - keras3).max() > 1e-6, "Keras 3's hard sigmoid went unseen"


def test_keras2_file_converts_to_lstm_when_its_recurrent_activation_is_sigmoid(tmp_path, rng):
    """Keras 2.3+ models (sigmoid) stay spec lstm; the same file is refused for keras2_lstm."""
    stack = [(random_layer(rng, 3, 4, 1.0), None)]
    write_keras2(tmp_path / "m.h5", stack, version="2.3.1", recurrent_activation="sigmoid")
    layers = convert_cli(tmp_path / "m.h5", tmp_path, spec="lstm")
    x = rng.normal(size=(2, STEPS, 3))
    sigmoid = lambda z: 1.0 / (1.0 + np.exp(-z))  # noqa: E731
    got, _ = novolstm.run("lstm", layers["l0"], x, backend="numpy")
    assert_close(got, keras2_model(stack, x, sigmoid), F64, "Keras 2.3 sigmoid LSTM vs lstm")
    with pytest.raises(
        ConversionError,
        match="recurrent_activation is 'sigmoid', but spec 'keras2_lstm' computes Keras 2's hard_sigmoid.*spec 'lstm'",
    ):
        files.read(tmp_path / "m.h5", "keras", "keras2_lstm")


# ---------------------------------------------------------------- what is not Keras 2's hard-sigmoid LSTM is refused


def _refusals(folder, rng):
    lstm, gru = (
        [(random_layer(rng, 3, 2, 1.0), None)],
        [
            (
                (
                    rng.normal(size=(3, 6)).astype(np.float32),
                    rng.normal(size=(2, 6)).astype(np.float32),
                    rng.normal(size=6).astype(np.float32),
                ),
                None,
            )
        ],
    )

    def file(name, stack=lstm, **options):
        path = os.path.join(folder, name)
        write_keras2(path, stack, **options)
        return path

    return [
        (file("k2_into_lstm.h5"), "lstm", "recurrent_activation is 'hard_sigmoid', but spec 'lstm' computes 'sigmoid': "
         r"Keras 2.2.4's hard_sigmoid is clip\(0.2z\+0.5, 0, 1\): convert with spec 'keras2_lstm'"),
        (file("k3.h5", version="3.15.1"), "keras2_lstm", r"Keras 3's hard_sigmoid is relu6\(z\+3\)/6.*no built-in spec"),
        (file("k3_lstm.h5", version="3.15.1"), "lstm", r"Keras 3's hard_sigmoid is relu6\(z\+3\)/6"),
        (file("unversioned.h5", version=""), "keras2_lstm", "records no Keras version"),
        (file("w23.h5", version="2.3.1", whole_model=False), "keras2_lstm",
         "Keras 2.3.1, whose LSTM defaults to recurrent_activation='sigmoid' \\(spec 'lstm'\\).*save the whole model"),
        (file("w_tf.h5", version="2.2.4-tf", whole_model=False, naming="tf.keras"), "keras2_lstm",
         "tf.keras 2.2.4-tf, which came with TensorFlow 1.*TensorFlow 2.0 and 2.1"),
        (file("w22.h5", version="2.2.4", whole_model=False), "lstm", "an LSTM that kept that default is spec 'keras2_lstm'"),
        (file("gru.h5", stack=gru, kind="GRU"), "gru", "no built-in spec computes a GRU with it"),
        (file("gru_k2.h5", stack=gru, kind="GRU"), "keras2_lstm", "is a Keras GRU, which holds no 'keras2_lstm'"),
        (file("gru_w.h5", stack=gru, kind="GRU", version="2.2.4", whole_model=False, naming="keras2"), "keras2_lstm",
         "is a Keras GRU, which holds no 'keras2_lstm'"),
    ]  # fmt: skip


def test_keras2_files_that_are_not_keras2_lstm_are_refused_by_name(tmp_path, rng):
    for path, spec, words in _refusals(str(tmp_path), rng):
        with pytest.raises(ConversionError, match=words):
            files.read(path, "keras", spec)


def test_the_cli_refuses_in_one_line(tmp_path, rng, capsys):
    write_keras2(tmp_path / "k3.h5", [(random_layer(rng, 3, 2, 1.0), None)], version="3.15.1")
    args = [
        "convert",
        str(tmp_path / "k3.h5"),
        "-o",
        str(tmp_path / "c.safetensors"),
        "--from",
        "keras",
        "--to",
        "canonical",
    ]
    assert main(args + ["--spec", "keras2_lstm"]) == 2
    err = capsys.readouterr().err
    assert "relu6(z+3)/6" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "c.safetensors").exists()
    # keras2_lstm has no Keras 3 file to go to, nor a torch one: refused, nothing written
    params = novolstm.init_params("keras2_lstm", 3, 2, seed=0)
    novolstm.save(params, tmp_path / "k2.safetensors", spec="keras2_lstm")
    for fmt, words in (("keras", "Keras 3's layers compute only lstm and gru"), ("torch", "holds the specs")):
        out = tmp_path / f"out.{fmt}"
        assert (
            main(
                [
                    "convert",
                    str(tmp_path / "k2.safetensors"),
                    "-o",
                    str(out),
                    "--from",
                    "canonical",
                    "--to",
                    fmt,
                    "--spec",
                    "keras2_lstm",
                ]
            )
            == 2
        )
        assert words in capsys.readouterr().err and not out.exists()


# ---------------------------------------------------------------- real Keras 3 layers


def _keras3_hard_sigmoid_model():
    model = keras.Sequential(
        [keras.Input((None, 3)), keras.layers.LSTM(2, recurrent_activation="hard_sigmoid", return_sequences=True)]
    )
    return model


def test_keras3_hard_sigmoid_lstm_never_becomes_keras2_lstm(tmp_path):
    """Keras 3's hard_sigmoid is relu6(z + 3) / 6: from memory, a .keras archive, a legacy .h5 or a
    .weights.h5, a Keras 3 LSTM is refused for keras2_lstm (and for lstm where its config shows it)."""
    import warnings

    model = _keras3_hard_sigmoid_model()
    layer = model.layers[-1]
    with pytest.raises(ConversionError, match=r"relu6\(z\+3\)/6"):
        convert.keras2_lstm_to_canonical(layer.get_weights(), config=layer.get_config())
    with pytest.raises(ConversionError, match=r"relu6\(z\+3\)/6"):
        convert.lstm_to_canonical(layer.get_weights(), config=layer.get_config())
    model.save(tmp_path / "m.keras")
    model.save_weights(tmp_path / "m.weights.h5")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Keras warns that .h5 is a legacy format: that is the point here
        model.save(tmp_path / "m.h5")
    for name in ("m.keras", "m.weights.h5", "m.h5"):
        with pytest.raises(ConversionError, match=r"relu6\(z\+3\)/6"):
            files.read(tmp_path / name, "keras", "keras2_lstm")
    with pytest.raises(ConversionError, match=r"relu6\(z\+3\)/6"):
        files.read(tmp_path / "m.h5", "keras", "lstm")


def test_keras2_lstm_weights_in_and_out_of_a_keras_lstm_in_memory(rng):
    """keras2_lstm <-> keras.layers.LSTM's own layout: a Keras 3 LSTM given Keras 2's hard sigmoid as its
    recurrent activation computes the keras2_lstm reference on the converted weights, and back."""
    hard = lambda z: ops.clip(0.2 * z + 0.5, 0.0, 1.0)  # noqa: E731  Keras 2's, as a custom function
    native = keras.layers.LSTM(4, recurrent_activation=hard, return_sequences=True, dtype="float64")
    native.build((2, STEPS, 3))
    native.set_weights([rng.normal(scale=1.5, size=w.shape) for w in native.get_weights()])
    x = rng.normal(size=(2, STEPS, 3))
    params = convert.keras2_lstm_to_canonical(native.get_weights())
    expected = ops.convert_to_numpy(native(x))
    reference, _ = novolstm.reference.run("keras2_lstm", params, x)
    # novolstm.testing.PRECISION_LIMITS: Keras on JAX and torch holds float64 to float32's tolerance
    tol = tolerance(computes_in("keras", "float64", keras.backend.backend()), STEPS)
    assert_close(reference, expected, tol, "keras2_lstm reference vs Keras LSTM(Keras 2's hard sigmoid)")
    fresh = keras.layers.LSTM(4, recurrent_activation=hard, return_sequences=True, dtype="float64")
    fresh.build((2, STEPS, 3))
    fresh.set_weights(convert.keras2_lstm_from_canonical(params))
    for a, b in zip(fresh.get_weights(), native.get_weights()):
        np.testing.assert_array_equal(a, b)
    # tf.keras 2 configs say which hard sigmoid they mean by their version
    assert (
        convert.keras2_lstm_to_canonical(
            native.get_weights(), {"recurrent_activation": "hard_sigmoid"}, "2.15.0"
        ).keys()
        == params.keys()
    )
    with pytest.raises(ConversionError, match="unexpected"):
        convert.keras2_lstm_from_canonical(novolstm.init_params("peephole_lstm", 3, 4, seed=0))


# ---------------------------------------------------------------- any Keras-2-like file: an answer or a ConversionError

_PARTS = ["lstm_1", "gru_1", "bidirectional_1", "forward_lstm_1", "backward_lstm_1", "lstm_cell", "gru_cell", "model"]
_ROLES = ["kernel", "recurrent_kernel", "bias", "w_i", "gamma"]
_SHAPES = [(3, 8), (2, 8), (8,), (3, 6), (2, 6), (6,), (2, 2, 6), (0,), ()]


@st.composite
def keras2_like_files(draw):
    layers = {}
    for name in draw(
        st.lists(
            st.sampled_from(["lstm_1", "gru_1", "bidirectional_1", "dense_1"]), min_size=1, max_size=3, unique=True
        )
    ):
        weights = {}
        if draw(st.booleans()):  # start from a well-formed Keras 2.0-2.3 layer of 2 inputs and 2 units, then add to it
            gates = draw(st.sampled_from([4, 3]))
            weights = {
                f"{name}/kernel:0": (2, 2 * gates),
                f"{name}/recurrent_kernel:0": (2, 2 * gates),
                f"{name}/bias:0": (2 * gates,),
            }
        for _ in range(draw(st.integers(0, 3))):
            parts = draw(st.lists(st.sampled_from(_PARTS), max_size=3))
            weights["/".join([name, *parts, draw(st.sampled_from(_ROLES))]) + draw(st.sampled_from(["", ":0"]))] = draw(
                st.sampled_from(_SHAPES)
            )
        layers[name] = weights
    classes = ["LSTM", "GRU", "Dense", "CuDNNLSTM"]
    config = draw(st.none() | st.just([
        {"class_name": "Bidirectional", "config": {"name": name, "merge_mode": draw(st.sampled_from(["concat", "sum"])),
                                                   "layer": _layer_config(name, 2, draw(st.sampled_from(classes)),
                                                                          draw(st.sampled_from(["hard_sigmoid", "sigmoid", "relu"])))}}
        if name.startswith("bi") else _layer_config(name, 2, draw(st.sampled_from(classes)), draw(st.sampled_from(["hard_sigmoid", "sigmoid"])))
        for name in layers]))  # fmt: skip
    return layers, config, draw(st.sampled_from(["2.2.4", "2.3.1", "2.2.4-tf", "3.1.0", ""])), draw(st.integers(0, 99))


@settings(max_examples=40, deadline=None)
@given(file=keras2_like_files(), cell=st.sampled_from(["lstm", "keras2_lstm", "gru", "novolstm_reference"]))
def test_any_keras2_like_file_converts_or_is_refused_by_name(file, cell):
    layers, config, version, seed = file
    rng = np.random.default_rng(seed)
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "fuzz.h5")
        with h5py.File(path, "w") as f:
            root = f
            if config is not None:
                f.attrs["model_config"] = json.dumps({"class_name": "Sequential", "config": {"layers": config}})
                root = f.create_group("model_weights")
            root.attrs["keras_version"], root.attrs["layer_names"] = version, [n.encode() for n in layers]
            for name, weights in layers.items():
                group = root.create_group(name)
                group.attrs["weight_names"] = [n.encode() for n in weights]
                for n, shape in weights.items():
                    if n not in group:  # a name that is a prefix of another is left out: weight_names still lists it
                        try:
                            group.create_dataset(n, data=rng.normal(size=shape).astype(np.float32))
                        except ValueError:  # h5py: a group already sits at that name
                            pass
        try:
            layers_read = files.read(path, "keras", cell)
        except ConversionError:
            event("refused")
            return
    event("converted")
    spec = novolstm.load_spec(cell)
    for params in layers_read.values():
        assert sorted(params) == sorted(spec.param_names)
