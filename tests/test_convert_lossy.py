"""Lossy conversions refuse unless asked: then they warn, naming what they dropped. Dropping
parameters that are exactly zero loses nothing and needs no asking."""

from __future__ import annotations

import numpy as np
import pytest

import novolstm
from novolstm.cli import main
from novolstm.convert import ConversionError, LossyConversionWarning
from novolstm.convert import flax as convert_flax
from novolstm.convert import torch as convert_torch
from novolstm.convert.files import read, write
from novolstm.testing import random_params


def peephole(rng, zero_peepholes=False):
    params = random_params("peephole_lstm", 3, 4, rng)
    if zero_peepholes:
        params |= {n: np.zeros(4) for n in ("p_i", "p_f", "p_o")}
    return params


def test_peepholes_into_torch_refused_dropped_when_asked_free_when_zero(tmp_path, rng):
    params = peephole(rng)
    with pytest.raises(
        ConversionError, match=r"holds \['lstm', 'gru'\], not 'peephole_lstm'.*\['p_f', 'p_i', 'p_o'\].*lossy=True"
    ):
        write(params, tmp_path / "refused.safetensors", "torch", "peephole_lstm")
    assert not (tmp_path / "refused.safetensors").exists()
    with pytest.warns(LossyConversionWarning, match=r"dropped \['p_f', 'p_i', 'p_o'\]"):
        write(params, tmp_path / "lossy.safetensors", "torch", "peephole_lstm", lossy=True)
    back = read(tmp_path / "lossy.safetensors", "torch", "lstm")["l0"]
    for name, value in back.items():  # everything but the peepholes, exactly
        np.testing.assert_array_equal(value, params[name])
    write(
        peephole(rng, zero_peepholes=True), tmp_path / "zero.safetensors", "torch", "peephole_lstm"
    )  # no warning: lossless
    assert sorted(read(tmp_path / "zero.safetensors", "torch", "lstm")["l0"]) == sorted(back)


def test_the_lossy_lstm_computes_what_the_peephole_lstm_computes_without_peepholes(tmp_path, rng):
    params = peephole(rng)
    with pytest.warns(LossyConversionWarning):
        write(params, tmp_path / "lossy.safetensors", "torch", "peephole_lstm", lossy=True)
    x = rng.normal(size=(2, 5, 3))
    got, _ = novolstm.reference.run("lstm", read(tmp_path / "lossy.safetensors", "torch", "lstm")["l0"], x)
    without = params | {n: np.zeros(4) for n in ("p_i", "p_f", "p_o")}
    expected, _ = novolstm.reference.run("peephole_lstm", without, x)
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-15)


def test_torch_bias_false_drops_biases_only_when_asked(rng):
    params = random_params("lstm", 3, 4, rng)
    with pytest.raises(ConversionError, match="bias=False holds no biases"):
        convert_torch.to_torch(params, cell="lstm", bias=False)
    with pytest.warns(LossyConversionWarning, match=r"\['b_f', 'b_g', 'b_i', 'b_o'\]"):
        sd = convert_torch.to_torch(params, cell="lstm", bias=False, lossy=True)
    assert sorted(sd) == ["weight_hh", "weight_ih"]


def test_nnx_gru_drops_a_nonzero_b_hn_only_when_asked(rng):
    params = random_params("gru", 3, 4, rng)
    with pytest.raises(ConversionError, match="b_hn"):
        convert_flax.from_canonical(params, "nnx_gru")
    with pytest.warns(LossyConversionWarning, match="b_hn"):
        tree = convert_flax.from_canonical(params, "nnx_gru", lossy=True)
    assert "b_hn" not in str(tree)
    exact = convert_flax.from_canonical(params | {"b_hn": np.zeros(4)}, "nnx_gru")  # zero: lossless, no warning
    np.testing.assert_array_equal(exact["dense_h"]["kernel"], tree["dense_h"]["kernel"])


def test_cli_convert_lossy_flag(tmp_path, rng, capsys):
    novolstm.save(peephole(rng), tmp_path / "p.safetensors", spec="peephole_lstm")
    argv = [
        "convert",
        str(tmp_path / "p.safetensors"),
        "-o",
        str(tmp_path / "t.safetensors"),
        "--from",
        "canonical",
        "--to",
        "torch",
        "--spec",
        "peephole_lstm",
    ]
    assert main(argv) == 2
    assert "--lossy" in capsys.readouterr().err
    with pytest.warns(LossyConversionWarning):
        assert main([*argv, "--lossy"]) == 0
    assert sorted(read(tmp_path / "t.safetensors", "torch", "lstm")["l0"]) == sorted(random_params("lstm", 3, 4, rng))
