"""The benchmark harness runs the JAX candidates (smoke mode: it measures nothing)."""

from __future__ import annotations

import json

from novolstm.cli import main


def test_bench_smoke_jax(tmp_path, capsys):
    assert main(["bench", "--smoke", "--backends", "jax", "--out", str(tmp_path)]) == 0
    data = json.loads((tmp_path / "results.json").read_text())
    names = {r["candidate"] for r in data["rows"]}
    assert {"lstm spec", "novolstm spec", "novolstm_reference spec", "native: flax OptimizedLSTMCell (nn.RNN)"} <= names
    assert any(q["numerator"] == "lstm spec" and q["denominator"].startswith("native: flax") for q in data["ratios"])
    assert "| jax | smoke" in capsys.readouterr().out
