"""Differential property tests of porting: random native models in every framework (LSTM and GRU,
1 to 3 layers, bidirectional or not, with or without biases, random sizes), saved by their own
framework, converted on the command line to every other format that can hold them, loaded by that
framework and run: every port computes what the source model itself computes.

Sources and what they save: torch nn.LSTM / nn.GRU (safetensors or a torch.save .pt), Keras 3
Sequential models (a .keras archive or .weights.h5), Flax linen nn.RNN (to_bytes; one cell: Flax has
no stacked layers), ONNX models torch.onnx.export wrote (LSTM and GRU nodes), novolstm canonical
checkpoints. Targets: torch, Keras, Flax (one unidirectional cell), ONNX, canonical (run by the float64
reference). Collected in the all-backends env; Hypothesis' ci profile bounds the examples.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import novolstm
from novolstm.cli import main
from novolstm.testing import assert_close, tolerance

BATCH, STEPS = 2, 5
#: examples per source framework: a few minutes in all (each builds, saves and loads models in five frameworks)
EXAMPLES = int(os.environ.get("NOVOLSTM_PORT_EXAMPLES", "5"))


@dataclass(frozen=True)
class Model:
    cell: str  # "lstm" or "gru"
    layers: int
    bidirectional: bool
    bias: bool
    input_size: int
    units: int

    @property
    def directions(self) -> int:
        return 2 if self.bidirectional else 1


def models(cells=("lstm", "gru"), stacks=True, biases=(True, False)):
    return st.builds(
        Model,
        cell=st.sampled_from(cells),
        layers=st.integers(1, 3) if stacks else st.just(1),
        bidirectional=st.booleans() if stacks else st.just(False),
        bias=st.sampled_from(biases),
        input_size=st.integers(1, 5),
        units=st.integers(1, 5),
    )


# ---------------------------------------------------------------- sources: build, run and save a native model


def torch_source(m: Model, rng, folder):
    import safetensors.torch
    import torch

    torch.manual_seed(int(rng.integers(1 << 30)))
    module = getattr(torch.nn, m.cell.upper())(
        m.input_size, m.units, num_layers=m.layers, bidirectional=m.bidirectional, bias=m.bias, batch_first=True
    )
    x = rng.normal(size=(BATCH, STEPS, m.input_size)).astype(np.float32)
    with torch.no_grad():
        y = module(torch.from_numpy(x))[0].numpy()
    if rng.integers(2):
        path = os.path.join(folder, "source.pt")
        torch.save(module.state_dict(), path)
    else:
        path = os.path.join(folder, "source.safetensors")
        safetensors.torch.save_file(module.state_dict(), path)
    return path, "torch", x, y


def keras_model(m: Model, use_bias: bool):
    import keras

    kind = {"lstm": keras.layers.LSTM, "gru": keras.layers.GRU}[m.cell]
    wrap = keras.layers.Bidirectional if m.bidirectional else (lambda layer: layer)
    return keras.Sequential(
        [keras.Input((None, m.input_size))]
        + [wrap(kind(m.units, use_bias=use_bias, return_sequences=True)) for _ in range(m.layers)]
    )


def keras_source(m: Model, rng, folder):
    model = keras_model(m, m.bias)
    for layer in model.layers:
        layer.set_weights([rng.normal(scale=0.5, size=w.shape).astype("float32") for w in layer.get_weights()])
    x = rng.normal(size=(BATCH, STEPS, m.input_size)).astype(np.float32)
    y = np.asarray(model(x))
    if rng.integers(2):
        path = os.path.join(folder, "source.keras")
        model.save(path)
    else:
        path = os.path.join(folder, "source.weights.h5")
        model.save_weights(path)
    return path, "keras", x, y


def flax_rnn(m: Model):
    from flax import linen

    return linen.RNN({"lstm": linen.OptimizedLSTMCell, "gru": linen.GRUCell}[m.cell](features=m.units))


def flax_source(m: Model, rng, folder):
    import jax
    from flax import serialization

    rnn = flax_rnn(m)
    x = rng.normal(size=(BATCH, STEPS, m.input_size)).astype(np.float32)
    variables = rnn.init(jax.random.key(0), x)
    variables = jax.tree_util.tree_map(lambda a: rng.normal(scale=0.5, size=a.shape).astype(np.float32), variables)
    y = np.asarray(rnn.apply(variables, x))
    path = os.path.join(folder, "source.msgpack")
    with open(path, "wb") as fh:
        fh.write(serialization.to_bytes(variables))
    return path, "flax", x, y


def onnx_source(m: Model, rng, folder):
    """nn.LSTM or nn.GRU exported by torch.onnx.export, run in onnxruntime: the ONNX model's own outputs."""
    import onnxruntime
    import torch

    torch.manual_seed(int(rng.integers(1 << 30)))
    module = getattr(torch.nn, m.cell.upper())(
        m.input_size, m.units, num_layers=m.layers, bidirectional=m.bidirectional, bias=m.bias, batch_first=True
    ).eval()
    x = rng.normal(size=(BATCH, STEPS, m.input_size)).astype(np.float32)
    path = os.path.join(folder, "source.onnx")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the legacy exporter's own deprecation and tracer warnings
        torch.onnx.export(module, (torch.from_numpy(x),), path, input_names=["x"], dynamo=False)
    y = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    return path, "onnx", x, y


def canonical_source(m: Model, rng, folder):
    layers, size = {}, m.input_size
    for k in range(m.layers):
        for suffix in ("", "_reverse")[: m.directions]:
            params = novolstm.testing.random_params(m.cell, size, m.units, rng, scale=0.5)
            if not m.bias:
                params = {n: (0 * v if n.startswith("b_") else v) for n, v in params.items()}
            layers[f"l{k}{suffix}"] = {n: v.astype(np.float32) for n, v in params.items()}
        size = m.units * m.directions
    path = os.path.join(folder, "source.safetensors")
    novolstm.convert.files.write(layers, path, "canonical", m.cell)
    x = rng.normal(size=(BATCH, STEPS, m.input_size)).astype(np.float32)
    return path, "canonical", x, reference_stack(m.cell, layers, x)


def reference_stack(cell, layers, x):
    outputs = np.asarray(x, np.float64)
    for k in range(len({key.split("_")[0] for key in layers})):
        y, _ = novolstm.reference.run(cell, layers[f"l{k}"], outputs)
        if f"l{k}_reverse" in layers:
            back, _ = novolstm.reference.run(cell, layers[f"l{k}_reverse"], outputs[:, ::-1])
            y = np.concatenate([y, back[:, ::-1]], axis=-1)
        outputs = y
    return outputs


# ---------------------------------------------------------------- targets: load the converted file natively and run


def torch_target(m: Model, path, x):
    import safetensors.torch
    import torch

    module = getattr(torch.nn, m.cell.upper())(
        m.input_size, m.units, num_layers=m.layers, bidirectional=m.bidirectional, bias=m.bias, batch_first=True
    )
    module.load_state_dict(safetensors.torch.load_file(path))  # strict: every key, every shape
    with torch.no_grad():
        return module(torch.from_numpy(x))[0].numpy()


def keras_target(m: Model, path, x):
    model = keras_model(m, use_bias=True)  # novolstm writes the biases (zeros where the source had none)
    model.load_weights(path)
    return np.asarray(model(x))


def flax_target(m: Model, path, x):
    import jax
    from flax import serialization

    rnn = flax_rnn(m)
    with open(path, "rb") as fh:
        variables = serialization.from_bytes(rnn.init(jax.random.key(0), x), fh.read())
    return np.asarray(rnn.apply(variables, x))


def onnx_target(m: Model, path, x):
    import onnxruntime

    session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
    zeros = np.zeros((BATCH, m.layers * m.directions, m.units), np.float32)
    states = {"h0": zeros, "c0": zeros} if m.cell == "lstm" else {"h0": zeros}
    y = session.run(["outputs"], {"x": x, "sequence_lens": np.full(BATCH, STEPS, np.int32), **states})[0]
    return y.reshape(BATCH, STEPS, -1)


def canonical_target(m: Model, path, x):
    return reference_stack(m.cell, novolstm.convert.files.read(path, "canonical", m.cell), x)


#: target format -> (file suffix, can it hold the model, run it, extra convert options)
TARGETS = {
    "torch": (".safetensors", lambda m: True, torch_target, lambda m: [] if m.bias else ["--layout", "no_bias"]),
    "keras": (".weights.h5", lambda m: True, keras_target, lambda m: []),
    "flax": (".msgpack", lambda m: m.layers == 1 and not m.bidirectional, flax_target, lambda m: []),
    "onnx": (".onnx", lambda m: True, onnx_target, lambda m: []),
    "canonical": (".safetensors", lambda m: True, canonical_target, lambda m: []),
}


def check_ports(m: Model, source, tmp_path_factory, seed):
    folder = str(tmp_path_factory.mktemp("port"))
    rng = np.random.default_rng(seed)
    path, fmt, x, expected = source(m, rng, folder)
    tol = tolerance("float32", STEPS * m.layers)
    for target, (suffix, holds, run, options) in TARGETS.items():
        out = os.path.join(folder, f"to_{target}{suffix}")
        args = ["convert", path, "-o", out, "--from", fmt, "--to", target, "--spec", m.cell] + options(m)
        if not holds(m):
            assert main(args) == 2, f"{fmt} -> {target} should refuse {m}"  # refused by name, nothing written
            assert not os.path.exists(out)
            continue
        assert main(args) == 0, f"{fmt} -> {target}: {m}"
        assert_close(run(m, out, x), expected, tol, what=f"{fmt} -> {target} ({m})")


SETTINGS = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)


@SETTINGS
@given(m=models(), seed=st.integers(0, 2**16))
def test_all_ports_from_torch(m, seed, tmp_path_factory):
    check_ports(m, torch_source, tmp_path_factory, seed)


@SETTINGS
@given(m=models(), seed=st.integers(0, 2**16))
def test_all_ports_from_keras(m, seed, tmp_path_factory):
    check_ports(m, keras_source, tmp_path_factory, seed)


@SETTINGS
@given(m=models(stacks=False, biases=(True,)), seed=st.integers(0, 2**16))
def test_all_ports_from_flax(m, seed, tmp_path_factory):
    check_ports(m, flax_source, tmp_path_factory, seed)


@SETTINGS
@given(m=models(), seed=st.integers(0, 2**16))
def test_all_ports_from_onnx_torch_exported(m, seed, tmp_path_factory):
    check_ports(m, onnx_source, tmp_path_factory, seed)


@SETTINGS
@given(m=models(), seed=st.integers(0, 2**16))
def test_all_ports_from_canonical(m, seed, tmp_path_factory):
    check_ports(m, canonical_source, tmp_path_factory, seed)


@pytest.mark.parametrize("target", sorted(TARGETS))
def test_all_ports_every_target_is_exercised(target):
    """Each target holds some model of the strategies, and refuses others by name where it must."""
    big = Model("gru", 3, True, False, 2, 3)
    assert TARGETS[target][1](Model("lstm", 1, False, True, 2, 3))
    assert TARGETS[target][1](big) == (target in ("torch", "keras", "onnx", "canonical"))
