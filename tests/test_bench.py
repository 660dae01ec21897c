"""The benchmark harness in smoke mode: it runs and writes its files. It asserts no timing:
speed is measured as ratios in benchmarks, never in tests."""

from __future__ import annotations

import json

from novolstm.cli import main


def test_bench_smoke_writes_json_markdown_and_plot(tmp_path, capsys):
    assert main(["bench", "--smoke", "--backends", "numpy", "--out", str(tmp_path)]) == 0
    data = json.loads((tmp_path / "results.json").read_text())
    names = {r["candidate"] for r in data["rows"]}
    assert {"lstm spec", "novolstm spec", "novolstm_reference spec", "native: per-example cell (seed 001)"} <= names
    assert any(q["numerator"] == "lstm spec" and q["denominator"].startswith("native") for q in data["ratios"])
    assert "import novolstm (s)" in data["extras"]
    assert (tmp_path / "ratios.png").stat().st_size > 0
    assert "| numpy | smoke" in capsys.readouterr().out
