"""The benchmark harness's Keras adapter in smoke mode: it runs on the active Keras
backend and reports its ratios. No timing is asserted (speed lives in benchmarks)."""

from __future__ import annotations

import json

from novolstm.cli import main


def test_keras_adapter_smoke(tmp_path, capsys, check_paths_table):
    assert (
        main(["bench", "--smoke", "--backends", "keras", "--dtype", "float32", "bfloat16", "--out", str(tmp_path)]) == 0
    )
    data = json.loads((tmp_path / "results.json").read_text())
    names = {r["candidate"] for r in data["rows"]}
    assert {"lstm spec", "novolstm spec", "novolstm_reference spec", "native: keras.layers.LSTM"} <= names
    assert all(r["forward_backward_s"] for r in data["rows"])
    assert any(q["denominator"] == "native: keras.layers.LSTM" for q in data["ratios"])
    assert {r["dtype"] for r in data["rows"]} == {"float32", "bfloat16"}
    assert all("peak_rss_bytes_forward_backward" in r for r in data["rows"])
    # tf.function or jax.jit report their compile time; Keras on torch runs eagerly.
    assert all(("compile_forward_s" in r) == (r.get("jit") is not None) for r in data["rows"])
    printed = capsys.readouterr().out
    assert "| keras | smoke (2x5x8) | bfloat16 |" in printed
    # each cell's compiled form (tf.function, jax.jit; eager on torch) beside keras.layers.LSTM's
    for (dtype, cell, path), row in check_paths_table(printed, data).items():
        jit = next(
            r.get("jit")
            for r in data["rows"]
            if r["dtype"] == dtype and r.get("path") == path and cell in (r["candidate"], r["cell"])
        )
        assert (
            path == ("native" if cell.startswith("native") else "generated loop") if jit is None else path.endswith(jit)
        )
        assert row[11].endswith(f"({jit})") if jit else row[11] == ""
