"""The benchmark harness in smoke mode: it runs and writes its files. It asserts no timing:
speed is measured as ratios in benchmarks, never in tests."""

from __future__ import annotations

import json

from novolstm.cli import main


def test_bench_smoke_writes_json_markdown_and_plot(tmp_path, capsys):
    assert main(["bench", "--smoke", "--backends", "numpy", "--dtype", "float32", "bfloat16", "--out", str(tmp_path)]) == 0
    data = json.loads((tmp_path / "results.json").read_text())
    names = {r["candidate"] for r in data["rows"]}
    assert {"lstm spec", "novolstm spec", "novolstm_reference spec", "native: per-example cell (seed 001)"} <= names
    assert any(q["numerator"] == "lstm spec" and q["denominator"].startswith("native") for q in data["ratios"])
    assert "import novolstm (s)" in data["extras"]
    assert (tmp_path / "ratios.png").stat().st_size > 0
    trained = [r for r in data["rows"] if r["forward_backward_s"]]
    assert all("peak_rss_bytes_forward_backward" in r and r["framework_peak_bytes_forward_backward"] > 0 for r in trained)
    # NumPy has no bfloat16: said in the results, not silently left out.
    assert [(s["backend"], s["dtype"]) for s in data["skipped"]] == [("numpy", "bfloat16")]
    assert {r["dtype"] for r in data["rows"]} == {"float32"}
    captured = capsys.readouterr()
    assert "| numpy | smoke" in captured.out and "numpy bfloat16: NumPy has no bfloat16" in captured.out
    assert "numpy bfloat16 skipped" in captured.err
    assert "get_cell code generation, numpy (s)" in data["extras"]
