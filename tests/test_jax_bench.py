"""The benchmark harness runs the JAX candidates (smoke mode: it measures nothing)."""

from __future__ import annotations

import json

from novolstm.cli import main


def test_bench_smoke_jax(tmp_path, capsys, check_paths_table):
    assert (
        main(["bench", "--smoke", "--backends", "jax", "--dtype", "float32", "bfloat16", "--out", str(tmp_path)]) == 0
    )
    data = json.loads((tmp_path / "results.json").read_text())
    names = {r["candidate"] for r in data["rows"]}
    assert {"lstm spec", "novolstm spec", "novolstm_reference spec", "native: flax OptimizedLSTMCell (nn.RNN)"} <= names
    assert any(q["numerator"] == "lstm spec" and q["denominator"].startswith("native: flax") for q in data["ratios"])
    assert {r["dtype"] for r in data["rows"]} == {"float32", "bfloat16"}
    # Every candidate is jitted: compile time, and XLA's memory analysis next to the RSS peak.
    assert all(
        r["jit"] == "jax.jit" and r["compile_forward_s"] >= 0 and r["framework_peak_bytes_forward_backward"] > 0
        for r in data["rows"]
    )
    printed = capsys.readouterr().out
    assert "| jax | smoke (2x5x8) | bfloat16 |" in printed
    # each cell's jitted form beside Flax's, with its compile time
    rows = check_paths_table(printed, data)
    # NovoLSTM's loop settings measured beside its default (jax_adapter.VARIANTS)
    assert {path for _, _, path in rows} == {"jax.jit", "jax.jit, remat=False", "jax.jit, unroll=4", "native, jax.jit"}
    assert {dtype for dtype, _, _ in rows} == {"float32", "bfloat16"}
    assert all(row[11].endswith("(jax.jit)") for row in rows.values())
