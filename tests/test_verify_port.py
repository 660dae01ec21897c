"""`novolstm verify-port` with NumPy only: novolstm's numpy backend against the reference,
through real canonical files; a corrupted port (two gates swapped) must fail."""

from __future__ import annotations

import numpy as np

import novolstm
from novolstm.cli import main
from novolstm.convert.verify import probe_params, verify_port


def test_verify_port_reports_error_growth_and_passes():
    report = verify_port("numpy", "reference", "gru", steps=20)
    assert report.passed and [s for s, _ in report.table()] == [1, 2, 4, 8, 16, 20]
    assert 0 < report.source_deviation < report.tolerance.atol  # float32 against float64: small, never zero


def test_probe_biases_are_nonzero_and_distinct():
    p = probe_params("lstm", 3, 4)
    biases = [p[f"b_{g}"] for g in "ifgo"]
    assert all((b != 0).all() for b in biases) and len({b.tobytes() for b in biases}) == 4


def test_verify_port_cli_fails_on_a_swapped_gate(tmp_path, capsys):
    params = probe_params("lstm", 3, 4, seed=3)
    novolstm.save(params, tmp_path / "w.safetensors", spec="lstm")
    swapped = dict(
        params,
        W_i=params["W_f"],
        W_f=params["W_i"],
        U_i=params["U_f"],
        U_f=params["U_i"],
        b_i=params["b_f"],
        b_f=params["b_i"],
    )
    novolstm.save(swapped, tmp_path / "bad.safetensors", spec="lstm")
    base = [
        "verify-port",
        "reference",
        "numpy",
        "--steps",
        "64",
        "--weights",
        str(tmp_path / "w.safetensors"),
        "--format",
        "canonical",
    ]
    assert main(base + ["--ported", str(tmp_path / "w.safetensors")]) == 0
    assert "PASS" in capsys.readouterr().out
    assert main(base + ["--ported", str(tmp_path / "bad.safetensors")]) == 1
    out = capsys.readouterr().out
    assert "FAIL: numpy is outside the tolerance" in out and "disagree" in out
    worst = float(out.split("worst step")[1].split(":")[1].split(";")[0])
    assert worst > 1e-2 and np.isfinite(worst)


def test_verify_port_cli_names_what_exists(capsys):
    assert main(["verify-port", "numpy", "tensorflow1"]) == 2
    err = capsys.readouterr().err
    assert "invalid choice: 'tensorflow1'" in err and "'flax-lstmcell'" in err
    assert main(["verify-port", "numpy", "reference", "--spec", "novolstm"]) == 2
    assert "invalid choice: 'novolstm'" in capsys.readouterr().err
