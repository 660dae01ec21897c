"""benchmarks/gpu.py, without a GPU: asked for CUDA it says in one line that there is none and
what it would have run, with its documented exit code; ``--device cpu`` runs the whole script
(the equivalence tests on the device, then the benchmarks) as a dry run; and the device tests,
asked for CUDA without one, fail loudly rather than skip.

Each runs in a subprocess with CUDA hidden (CUDA_VISIBLE_DEVICES=""), so these hold on a GPU
machine too, and with cwd=tmp_path (the source tree's novolstm/ would shadow the installed one).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "gpu.py"


def _run(command: list[str], cwd: Path, **env: str) -> subprocess.CompletedProcess:
    environment = {k: v for k, v in os.environ.items() if k != "NOVOLSTM_DEVICE"}
    environment |= {"CUDA_VISIBLE_DEVICES": "", **env}
    return subprocess.run(command, capture_output=True, text=True, cwd=cwd, env=environment, timeout=600)


def test_without_cuda_it_says_so_in_one_line_and_exits_3(tmp_path):
    run = _run([sys.executable, str(SCRIPT), "--out", str(tmp_path / "out")], tmp_path)
    assert run.returncode == 3, run.stdout + run.stderr
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1, run.stderr
    assert "no CUDA device was found" in lines[0] and "nothing ran" in lines[0]
    assert "test_device_equivalence.py" in lines[0] and "torch.nn.LSTM on cuDNN" in lines[0]
    assert run.stdout == "" and not (tmp_path / "out").exists()


def test_bad_device_is_a_usage_error(tmp_path):
    run = _run([sys.executable, str(SCRIPT), "--device", "tpu", "--out", str(tmp_path / "out")], tmp_path)
    assert run.returncode == 2 and "--device 'tpu'" in run.stderr, run.stderr


def test_dry_run_on_the_cpu_runs_the_tests_and_the_benchmarks(tmp_path):
    out = tmp_path / "out"
    command = [sys.executable, str(SCRIPT), "--device", "cpu", "--specs", "lstm", "--jax", "off"]
    run = _run([*command, "--shapes", "smoke", "--repeats", "1", "--out", str(out)], tmp_path)
    assert run.returncode == 0, run.stdout + run.stderr
    report = (out / "equivalence.txt").read_text()
    assert "4 passed" in report, report  # lstm: float32 and float64, the layer and its generated loop
    assert (out / "equivalence.xml").exists()
    assert json.loads((out / "environment.json").read_text())["device"] == "cpu"
    rows = json.loads((out / "bench.json").read_text())["rows"]
    assert [r["candidate"] for r in rows] == ["native: torch.nn.LSTM", "lstm spec", "lstm spec, generated loop"]
    for r in rows:
        assert r["forward_s"] > 0 and r["forward_backward_s"] > 0 and r["baseline"] == "native: torch.nn.LSTM"
        assert r["forward_ratio"] == r["forward_s"] / rows[0]["forward_s"]
    table = (out / "bench.md").read_text()
    assert all(f"| {r['candidate']} |" in table for r in rows)


def test_device_tests_asked_for_cuda_without_one_fail_loudly(tmp_path):
    test = REPO / "tests" / "test_device_equivalence.py"
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(test), "-k", "float32 and layer"]
    run = _run(command, tmp_path, NOVOLSTM_DEVICE="cuda", NOVOLSTM_DEVICE_SPECS="lstm", NOVOLSTM_BACKENDS="numpy,torch")
    assert run.returncode == 1, run.stdout + run.stderr
    assert "NOVOLSTM_DEVICE=cuda, but no CUDA device was found" in run.stdout
    assert "1 error" in run.stdout and "skipped" not in run.stdout  # the fixture fails: an error, never a skip
