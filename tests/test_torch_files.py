"""novolstm convert with torch state dicts saved as safetensors: exact round trips through the
canonical checkpoint and the ONNX LSTM operator, and clear refusals."""

from __future__ import annotations

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
    assert main(["convert", str(tmp_path / "a.safetensors"), "-o", str(tmp_path / "c.safetensors"), "--from", "torch", "--to", "canonical", "--spec", kind]) == 0
    assert main(["convert", str(tmp_path / "c.safetensors"), "-o", str(tmp_path / "b.safetensors"), "--from", "canonical", "--to", "torch", "--spec", kind]) == 0
    again = Module(3, 4, num_layers=2, bidirectional=True, batch_first=True).double()
    again.load_state_dict(safetensors.torch.load_file(str(tmp_path / "b.safetensors")))
    x = torch.randn(2, 6, 3, dtype=torch.float64)
    assert torch.allclose(native(x)[0], again(x)[0], rtol=0, atol=1e-14)
    first = read(tmp_path / "c.safetensors", "canonical", kind)
    assert main(["convert", str(tmp_path / "b.safetensors"), "-o", str(tmp_path / "d.safetensors"), "--from", "torch", "--to", "canonical", "--spec", kind]) == 0
    second = read(tmp_path / "d.safetensors", "canonical", kind)
    assert all((first[c][n] == second[c][n]).all() for c in first for n in first[c])


def test_torch_to_onnx_to_canonical(tmp_path):
    native = torch.nn.LSTM(3, 4, batch_first=True)
    safetensors.torch.save_file(native.state_dict(), str(tmp_path / "a.safetensors"))
    assert main(["convert", str(tmp_path / "a.safetensors"), "-o", str(tmp_path / "m.onnx"), "--from", "torch", "--to", "onnx"]) == 0
    layers = read(tmp_path / "m.onnx", "onnx", "lstm")
    direct = read(tmp_path / "a.safetensors", "torch", "lstm")
    for name, value in direct["l0"].items():
        assert torch.allclose(torch.from_numpy(layers["l0"][name]), torch.from_numpy(value), atol=1e-7)


def test_refusals_name_the_problem(tmp_path, capsys):
    layers = read_two_layers(tmp_path)
    with pytest.raises(ConversionError, match="holds the specs \\['lstm', 'peephole_lstm'\\], not 'gru'.*novolstm.export_onnx"):
        write(layers, tmp_path / "x.onnx", "onnx", "gru")
    with pytest.raises(ConversionError, match="unknown format 'tflite'"):
        write(layers, tmp_path / "x", "tflite", "lstm")
    assert main(["convert", str(tmp_path / "missing"), "-o", str(tmp_path / "y"), "--from", "torch", "--to", "canonical"]) == 2
    assert "novolstm convert: error" in capsys.readouterr().err


def read_two_layers(tmp_path):
    native = torch.nn.LSTM(3, 4, num_layers=2)
    safetensors.torch.save_file(native.state_dict(), str(tmp_path / "two.safetensors"))
    return read(tmp_path / "two.safetensors", "torch", "lstm")
