"""novolstm convert with torch state dicts saved as safetensors: exact round trips through the
canonical checkpoint and the ONNX LSTM operator, and clear refusals."""

from __future__ import annotations

import numpy as np
import pytest
import safetensors.torch
import torch

from novolstm.cli import main
from novolstm.convert import ConversionError
from novolstm.convert.files import read, write


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_round_trips_through_torch(tmp_path, kind):
    """canonical -> torch -> canonical is bit-exact; torch -> canonical -> torch computes the same
    function (torch's two biases are summed once, so only rounding can differ)."""
    torch.manual_seed(0)
    Module = torch.nn.LSTM if kind == "lstm" else torch.nn.GRU
    native = Module(3, 4, num_layers=2, bidirectional=True, batch_first=True).double()
    safetensors.torch.save_file(native.state_dict(), str(tmp_path / "a.safetensors"))
    assert (
        main(
            [
                "convert",
                str(tmp_path / "a.safetensors"),
                "-o",
                str(tmp_path / "c.safetensors"),
                "--from",
                "torch",
                "--to",
                "canonical",
                "--spec",
                kind,
            ]
        )
        == 0
    )
    assert (
        main(
            [
                "convert",
                str(tmp_path / "c.safetensors"),
                "-o",
                str(tmp_path / "b.safetensors"),
                "--from",
                "canonical",
                "--to",
                "torch",
                "--spec",
                kind,
            ]
        )
        == 0
    )
    again = Module(3, 4, num_layers=2, bidirectional=True, batch_first=True).double()
    again.load_state_dict(safetensors.torch.load_file(str(tmp_path / "b.safetensors")))
    x = torch.randn(2, 6, 3, dtype=torch.float64)
    assert torch.allclose(native(x)[0], again(x)[0], rtol=0, atol=1e-14)
    first = read(tmp_path / "c.safetensors", "canonical", kind)
    assert (
        main(
            [
                "convert",
                str(tmp_path / "b.safetensors"),
                "-o",
                str(tmp_path / "d.safetensors"),
                "--from",
                "torch",
                "--to",
                "canonical",
                "--spec",
                kind,
            ]
        )
        == 0
    )
    second = read(tmp_path / "d.safetensors", "canonical", kind)
    assert all((first[c][n] == second[c][n]).all() for c in first for n in first[c])


def test_torch_to_onnx_to_canonical(tmp_path):
    native = torch.nn.LSTM(3, 4, batch_first=True)
    safetensors.torch.save_file(native.state_dict(), str(tmp_path / "a.safetensors"))
    assert (
        main(
            [
                "convert",
                str(tmp_path / "a.safetensors"),
                "-o",
                str(tmp_path / "m.onnx"),
                "--from",
                "torch",
                "--to",
                "onnx",
            ]
        )
        == 0
    )
    layers = read(tmp_path / "m.onnx", "onnx", "lstm")
    direct = read(tmp_path / "a.safetensors", "torch", "lstm")
    for name, value in direct["l0"].items():
        assert torch.allclose(torch.from_numpy(layers["l0"][name]), torch.from_numpy(value), atol=1e-7)


def test_refusals_name_the_problem(tmp_path, capsys):
    layers = read_two_layers(tmp_path)
    with pytest.raises(
        ConversionError, match="holds the specs \\['lstm', 'peephole_lstm', 'gru'\\], not 'novolstm'.*export_onnx"
    ):
        write(layers, tmp_path / "x.onnx", "onnx", "novolstm")
    with pytest.raises(ConversionError, match="unknown format 'tflite'"):
        write(layers, tmp_path / "x", "tflite", "lstm")
    assert (
        main(["convert", str(tmp_path / "missing"), "-o", str(tmp_path / "y"), "--from", "torch", "--to", "canonical"])
        == 2
    )
    assert "novolstm convert: error" in capsys.readouterr().err


def read_two_layers(tmp_path):
    native = torch.nn.LSTM(3, 4, num_layers=2)
    safetensors.torch.save_file(native.state_dict(), str(tmp_path / "two.safetensors"))
    return read(tmp_path / "two.safetensors", "torch", "lstm")


# ---------------------------------------------------------------- what real users bring


class Model(torch.nn.Module):
    """A whole model: an embedding, a recurrent layer, a head."""

    def __init__(self, kind="LSTM", layers=2, bidirectional=True, bias=True):
        super().__init__()
        self.embedding = torch.nn.Embedding(10, 3)
        self.encoder = torch.nn.Module()
        self.encoder.rnn = getattr(torch.nn, kind)(
            3, 4, num_layers=layers, bidirectional=bidirectional, batch_first=True, bias=bias
        )
        self.head = torch.nn.Linear(8 if bidirectional else 4, 2)


def rnn_outputs(module, x):
    with torch.no_grad():
        return module(x)[0].numpy()


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_a_whole_model_state_dict_with_prefix_on_the_cli(tmp_path, suffix, capsys):
    torch.manual_seed(1)
    model = Model()
    path = tmp_path / f"model{suffix}"
    if suffix == ".pt":
        torch.save({"model": model.state_dict(), "epoch": 3, "optimizer": {"lr": 0.1}}, path)
        prefix = "model.encoder.rnn."
    else:
        safetensors.torch.save_file(model.state_dict(), str(path))
        prefix = "encoder.rnn."
    assert (
        main(["convert", str(path), "-o", str(tmp_path / "c.safetensors"), "--from", "torch", "--to", "canonical"]) == 2
    )
    assert "pass one as prefix" in capsys.readouterr().err
    assert (
        main(
            [
                "convert",
                str(path),
                "-o",
                str(tmp_path / "c.safetensors"),
                "--from",
                "torch",
                "--to",
                "canonical",
                "--prefix",
                prefix,
            ]
        )
        == 0
    )
    assert (
        main(
            [
                "convert",
                str(tmp_path / "c.safetensors"),
                "-o",
                str(tmp_path / "r.safetensors"),
                "--from",
                "canonical",
                "--to",
                "torch",
            ]
        )
        == 0
    )
    again = torch.nn.LSTM(3, 4, num_layers=2, bidirectional=True, batch_first=True)
    again.load_state_dict(safetensors.torch.load_file(str(tmp_path / "r.safetensors")))
    x = torch.randn(2, 6, 3)
    np.testing.assert_allclose(rnn_outputs(again, x), rnn_outputs(model.encoder.rnn, x), rtol=0, atol=1e-6)


def test_a_pt_state_dict_reads_as_its_safetensors_twin(tmp_path):
    module = torch.nn.GRU(3, 4, num_layers=2, batch_first=True)
    torch.save(module.state_dict(), tmp_path / "m.pth")
    safetensors.torch.save_file(module.state_dict(), str(tmp_path / "m.safetensors"))
    a, b = read(tmp_path / "m.pth", "torch", "gru"), read(tmp_path / "m.safetensors", "torch", "gru")
    assert all(np.array_equal(a[k][n], b[k][n]) for k in b for n in b[k])


@pytest.mark.parametrize("kind", ["LSTM", "GRU"])
def test_a_bias_free_module_round_trips(tmp_path, kind, capsys):
    torch.manual_seed(2)
    module = getattr(torch.nn, kind)(3, 4, num_layers=2, batch_first=True, bias=False)
    safetensors.torch.save_file(module.state_dict(), str(tmp_path / "a.safetensors"))
    spec = kind.lower()
    assert (
        main(
            [
                "convert",
                str(tmp_path / "a.safetensors"),
                "-o",
                str(tmp_path / "c.safetensors"),
                "--from",
                "torch",
                "--to",
                "canonical",
                "--spec",
                spec,
            ]
        )
        == 0
    )
    assert (
        main(
            [
                "convert",
                str(tmp_path / "c.safetensors"),
                "-o",
                str(tmp_path / "b.safetensors"),
                "--from",
                "canonical",
                "--to",
                "torch",
                "--spec",
                spec,
                "--layout",
                "no_bias",
            ]
        )
        == 0
    )
    again = getattr(torch.nn, kind)(3, 4, num_layers=2, batch_first=True, bias=False)
    again.load_state_dict(safetensors.torch.load_file(str(tmp_path / "b.safetensors")))  # strict: no bias keys
    x = torch.randn(2, 5, 3)
    np.testing.assert_array_equal(rnn_outputs(again, x), rnn_outputs(module, x))
    # weights with biases refuse the bias-free layout unless asked to drop them
    biased = getattr(torch.nn, kind)(3, 4, batch_first=True)
    safetensors.torch.save_file(biased.state_dict(), str(tmp_path / "biased.safetensors"))
    args = [
        "convert",
        str(tmp_path / "biased.safetensors"),
        "-o",
        str(tmp_path / "x.safetensors"),
        "--from",
        "torch",
        "--to",
        "torch",
        "--spec",
        spec,
        "--layout",
        "no_bias",
    ]
    assert main(args) == 2
    assert "bias=False holds no biases" in capsys.readouterr().err


def test_a_pickled_module_is_refused_with_how_to_resave(tmp_path, capsys):
    torch.save(torch.nn.LSTM(3, 4), tmp_path / "module.pt")
    assert (
        main(
            [
                "convert",
                str(tmp_path / "module.pt"),
                "-o",
                str(tmp_path / "c.safetensors"),
                "--from",
                "torch",
                "--to",
                "canonical",
            ]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert "weights_only=True" in err and "torch.save(model.state_dict(), path)" in err and "Traceback" not in err


def onnx_export(module, args, path, dynamo, **options):
    """torch.onnx.export; its legacy (TorchScript) exporter, which models in the wild come from,
    warns about its own deprecation (and tracing) from inside torch."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # its deprecation, and TracerWarnings about nn.LSTM's shape checks
        torch.onnx.export(module, args, path, dynamo=dynamo, **options)


@pytest.mark.parametrize("kind", ["LSTM", "GRU"])
@pytest.mark.parametrize("dynamo", [False, True])
@pytest.mark.parametrize("bidirectional", [False, True])
def test_torch_onnx_export_of_two_layers_reads_every_layer(tmp_path, dynamo, bidirectional, kind):
    """torch.onnx.export writes one LSTM (GRU) node per layer; every one converts, exactly as the state dict does."""
    torch.manual_seed(3)
    cell = kind.lower()
    module = getattr(torch.nn, kind)(3, 4, num_layers=2, bidirectional=bidirectional, batch_first=True).eval()
    x = torch.randn(2, 5, 3)
    onnx_export(
        module,
        (x,),
        str(tmp_path / "m.onnx"),
        dynamo,
        input_names=["x"],
        **({} if dynamo else {"dynamic_axes": {"x": {0: "batch", 1: "time"}}}),
    )
    safetensors.torch.save_file(module.state_dict(), str(tmp_path / "m.safetensors"))
    from_onnx, from_state = read(tmp_path / "m.onnx", "onnx", cell), read(tmp_path / "m.safetensors", "torch", cell)
    assert (
        sorted(from_onnx)
        == sorted(from_state)
        == sorted(f"l{k}{s}" for k in range(2) for s in (["", "_reverse"] if bidirectional else [""]))
    )
    for key in from_state:
        for name in from_state[key]:
            np.testing.assert_array_equal(from_onnx[key][name], from_state[key][name], err_msg=f"{key} {name}")
    # and novolstm's own stacked ONNX model of them computes what the module computes
    write(from_state, tmp_path / "ours.onnx", "onnx", cell)
    import onnxruntime

    session = onnxruntime.InferenceSession(str(tmp_path / "ours.onnx"), providers=["CPUExecutionProvider"])
    states = 4 if bidirectional else 2
    zeros = np.zeros((2, states, 4), np.float32)
    feeds = {
        "x": x.numpy(),
        "sequence_lens": np.full(2, 5, np.int32),
        "h0": zeros,
        **({"c0": zeros} if kind == "LSTM" else {}),
    }
    y = session.run(["outputs"], feeds)[0]
    np.testing.assert_allclose(y.reshape(2, 5, -1), rnn_outputs(module, x), rtol=0, atol=1e-5)


@pytest.mark.parametrize("kind", ["LSTM", "GRU"])
@pytest.mark.parametrize("batch_first", [True, False])
def test_verify_port_checks_a_model_torch_onnx_export_wrote(tmp_path, batch_first, kind, capsys):
    torch.manual_seed(4)
    module = getattr(torch.nn, kind)(5, 8, batch_first=batch_first).eval()
    safetensors.torch.save_file(module.state_dict(), str(tmp_path / "w.safetensors"))
    x = torch.randn(2, 7, 5) if batch_first else torch.randn(7, 2, 5)
    h0 = torch.zeros(1, 2, 8)
    states, names = ((h0, h0), ["x", "h0", "c0"]) if kind == "LSTM" else (h0, ["x", "h0"])
    onnx_export(
        module,
        (x, states),
        str(tmp_path / "p.onnx"),
        False,
        input_names=names,
        dynamic_axes={"x": {0: "a", 1: "b"}, **{n: {1: "batch"} for n in names[1:]}},
    )
    args = [
        "verify-port",
        "torch",
        "onnx",
        "--spec",
        kind.lower(),
        "--weights",
        str(tmp_path / "w.safetensors"),
        "--format",
        "torch",
        "--ported",
        str(tmp_path / "p.onnx"),
    ]
    assert main(args) == 0, capsys.readouterr()
    assert capsys.readouterr().out.rstrip().endswith("PASS")
    # the same export with two gates swapped in its weights: verify-port must fail it
    import onnx

    model = onnx.load(str(tmp_path / "p.onnx"))
    node = next(n for n in model.graph.node if n.op_type == kind)
    weights = next(t for t in model.graph.initializer if t.name == node.input[1])
    array = onnx.numpy_helper.to_array(weights).copy()
    array[:, :8], array[:, 8:16] = array[:, 8:16].copy(), array[:, :8].copy()  # the first two gates
    weights.CopyFrom(onnx.numpy_helper.from_array(array, weights.name))
    onnx.save(model, str(tmp_path / "swapped.onnx"))
    assert main(args[:-1] + [str(tmp_path / "swapped.onnx")]) == 1
    assert capsys.readouterr().out.rstrip().endswith("FAIL")


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_a_bfloat16_state_dict_reads_exactly_as_float32(tmp_path, suffix):
    module = torch.nn.LSTM(3, 4, batch_first=True).to(torch.bfloat16)
    path = tmp_path / f"bf16{suffix}"
    if suffix == ".pt":
        torch.save(module.state_dict(), path)
    else:
        safetensors.torch.save_file(module.state_dict(), str(path))
    layers = read(path, "torch", "lstm")
    expected = read_state(module.float().state_dict())
    for name, value in expected["l0"].items():
        assert layers["l0"][name].dtype == np.float32
        np.testing.assert_array_equal(layers["l0"][name], value, err_msg=name)


def read_state(state_dict):
    from novolstm.convert.torch import from_torch

    return from_torch(state_dict, cell="lstm")
