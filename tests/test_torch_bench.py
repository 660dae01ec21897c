"""The benchmark harness runs the torch candidates (smoke mode: it measures nothing)."""

from __future__ import annotations

import json

from novolstm.cli import main


def test_bench_smoke_torch(tmp_path, capsys):
    assert main(["bench", "--smoke", "--backends", "torch", "--out", str(tmp_path)]) == 0
    data = json.loads((tmp_path / "results.json").read_text())
    names = {r["candidate"] for r in data["rows"]}
    assert {"lstm spec", "novolstm spec", "novolstm_reference spec", "native: torch.nn.LSTM"} <= names
    assert any(q["numerator"] == "lstm spec" and q["denominator"] == "native: torch.nn.LSTM" for q in data["ratios"])
    assert "| torch | smoke" in capsys.readouterr().out
