"""The benchmark harness in smoke mode: it runs and writes its files. It asserts no timing:
speed is measured as ratios in benchmarks, never in tests."""

from __future__ import annotations

import json

import pytest

from novolstm.cli import main


def test_bench_smoke_writes_json_markdown_and_plot(tmp_path, capsys):
    assert (
        main(["bench", "--smoke", "--backends", "numpy", "--dtype", "float32", "bfloat16", "--out", str(tmp_path)]) == 0
    )
    data = json.loads((tmp_path / "results.json").read_text())
    names = {r["candidate"] for r in data["rows"]}
    assert {"lstm spec", "novolstm spec", "novolstm_reference spec", "native: per-example cell (seed 001)"} <= names
    assert any(q["numerator"] == "lstm spec" and q["denominator"].startswith("native") for q in data["ratios"])
    assert "import novolstm (s)" in data["extras"]
    assert (tmp_path / "ratios.png").stat().st_size > 0
    trained = [r for r in data["rows"] if r["forward_backward_s"]]
    assert all(
        "peak_rss_bytes_forward_backward" in r and r["framework_peak_bytes_forward_backward"] > 0 for r in trained
    )
    # NumPy has no bfloat16: said in the results, not silently left out.
    assert [(s["backend"], s["dtype"]) for s in data["skipped"]] == [("numpy", "bfloat16")]
    assert {r["dtype"] for r in data["rows"]} == {"float32"}
    captured = capsys.readouterr()
    assert "| numpy | smoke" in captured.out and "numpy bfloat16: NumPy has no bfloat16" in captured.out
    assert "numpy bfloat16 skipped" in captured.err
    assert "get_cell code generation, numpy (s)" in data["extras"]


def test_a_candidate_that_cannot_compile_here_is_shown_with_its_reason():
    from novolstm.bench import Candidate
    from novolstm.bench.harness import _first_calls, markdown

    def no_compiler():
        raise RuntimeError("InductorError: no working C++ compiler found\nlong traceback")

    cands, first = _first_calls(
        [
            Candidate("ok", lambda: 1, None),
            Candidate("x, torch.compile", no_compiler, None, jit="torch.compile", may_fail=True),
        ],
        quiet=True,
    )
    assert list(first) == ["ok"] and cands[1].skipped == "RuntimeError: InductorError: no working C++ compiler found"
    row = {
        "backend": "torch",
        "shape": "smoke",
        "dtype": "float32",
        "candidate": cands[1].name,
        "batch": 2,
        "steps": 5,
        "units": 8,
        "forward_s": None,
        "forward_backward_s": None,
        "skipped": cands[1].skipped,
    }
    table = markdown({"dtypes": ["float32"], "repeats": 1, "rows": [row], "ratios": []}, {})
    assert "| x, torch.compile | skipped: RuntimeError: InductorError: no working C++ compiler found |" in table
    # A candidate not marked may_fail that raises is a bug, and the error propagates.
    with pytest.raises(RuntimeError):
        _first_calls([Candidate("bug", no_compiler, None)], quiet=True)


def test_bench_prints_each_cells_paths_beside_its_loop_and_native(tmp_path, capsys, check_paths_table):
    assert main(["bench", "--smoke", "--backends", "numpy", "--out", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    data = json.loads((tmp_path / "results.json").read_text())
    rows = {key[1:]: row for key, row in check_paths_table(printed, data).items()}  # one dtype: float32
    native = "native: per-example cell (seed 001)"
    assert set(rows) == {(c, "generated loop") for c in ("lstm", "novolstm", "novolstm_reference")} | {
        (native, "native")
    }
    seed = next(r for r in data["rows"] if r["candidate"] == native)
    for cell in ("lstm", "novolstm", "novolstm_reference"):
        row, r = rows[(cell, "generated loop")], next(r for r in data["rows"] if r["cell"] == cell)
        assert row[6] == "1.00" and row[7] == f"{r['forward_s'] / seed['forward_s']:.2f}"
    assert "| cell | path |" in (tmp_path / "results.md").read_text()


def test_compare_times_every_candidate_once_per_repeat_in_a_fresh_order():
    from novolstm.bench.timing import compare

    calls: list[str] = []
    candidates = {name: (lambda name=name: calls.append(name)) for name in "abcdef"}
    times = compare(candidates, repeats=8, warmup=2)
    assert sorted(times) == list("abcdef") and all(t >= 0 for t in times.values())
    assert calls[:12] == [name for name in "abcdef" for _ in range(2)]  # warm-up, in order
    rounds = [calls[12 + 6 * r : 18 + 6 * r] for r in range(8)]
    assert all(sorted(r) == list("abcdef") for r in rounds)  # interleaved: each once per repeat
    assert len({tuple(r) for r in rounds}) > 1  # the order changes between repeats
    calls.clear()
    compare(candidates, repeats=8, warmup=2)
    assert [calls[12 + 6 * r : 18 + 6 * r] for r in range(8)] == rounds  # reproducible from the seed
