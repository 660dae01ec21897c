"""The benchmark harness runs the torch candidates (smoke mode: it measures nothing)."""

from __future__ import annotations

import json

from novolstm.cli import main
from novolstm.testing import assert_close, tolerance


def test_bench_smoke_torch(tmp_path, capsys, check_paths_table):
    assert main(["bench", "--smoke", "--backends", "torch", "--out", str(tmp_path)]) == 0
    data = json.loads((tmp_path / "results.json").read_text())
    names = {r["candidate"] for r in data["rows"]}
    assert {"lstm spec", "novolstm spec", "novolstm_reference spec", "native: torch.nn.LSTM"} <= names
    assert any(q["numerator"] == "lstm spec" and q["denominator"] == "native: torch.nn.LSTM" for q in data["ratios"])
    # the lstm layer runs the fused kernel; its generated loop is the like-for-like denominator
    assert any(
        q["numerator"] == "novolstm spec" and q["denominator"] == "lstm spec, generated loop" for q in data["ratios"]
    )
    # torch.compile of the generated layers (forward): compile time and compiled speed, or the
    # reason it could not run here in place of them, never silently absent.
    for cell in ("lstm", "novolstm"):
        row = next(r for r in data["rows"] if r["candidate"] == f"{cell} spec, torch.compile")
        assert row.get("skipped") or (row["jit"] == "torch.compile" and row["compile_forward_s"] >= 0)
    assert all("peak_rss_bytes_forward_backward" in r for r in data["rows"] if r.get("forward_backward_s"))
    printed = capsys.readouterr().out
    assert "| torch | smoke" in printed
    # Each cell's paths side by side: the fused kernels, the C++ kernel with its build (or
    # cache load) time, torch.compile, the generated loop, and the native kernels.
    rows = {key[1:]: row for key, row in check_paths_table(printed, data).items()}  # one dtype: float32
    paths = {cell: {path for c, path in rows if c == cell} for cell, _ in rows}
    assert paths["lstm"] >= {"torch fused LSTM kernel", "generated loop", "C++ kernel"}
    assert paths["novolstm"] >= {"C++ kernel", "generated loop"}
    assert paths["gru"] == {"torch fused GRU kernel"}
    assert {"native: torch.nn.LSTM", "native: torch.nn.GRU"} <= set(paths)
    assert rows[("novolstm", "C++ kernel")][11].endswith("(C++ kernel)")


def test_torch_builds_every_candidate_in_bfloat16():
    import torch

    from novolstm.bench.torch_adapter import candidates

    outputs = {}
    for c in candidates(batch=2, steps=3, units=4, dtype="bfloat16"):
        if "torch.compile" in c.name:
            continue  # the same layers, compiled; compiling again here would cost a minute
        out = c.forward()
        out = outputs[c.name] = out[0] if isinstance(out, tuple) else out
        assert out.dtype == torch.bfloat16, c.name
    # each spec layer and the native module it is timed against compute the same function
    for spec, native in (("lstm spec", "native: torch.nn.LSTM"), ("gru spec", "native: torch.nn.GRU")):
        got, want = (outputs[k].double().numpy() for k in (spec, native))
        assert_close(got, want, tolerance("bfloat16", 3), what=f"{spec} vs {native}")
