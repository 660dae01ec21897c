"""Evaluation and the benchmarks import plotting and scikit-learn (optional extras) only inside
the functions that need them: importing the modules imports neither, nor any framework."""

from __future__ import annotations

import subprocess
import sys

MODULES = [
    "novolstm.evaluation",
    "novolstm.bench",
    "novolstm.bench.harness",
    "novolstm.bench.numpy_adapter",
    "novolstm.bench.torch_adapter",
    "novolstm.bench.jax_adapter",
    "novolstm.bench.keras_adapter",
]
HEAVY = ["matplotlib", "sklearn", "torch", "jax", "keras", "tensorflow", "onnx"]


def test_importing_evaluation_and_bench_imports_no_plotting_sklearn_or_framework(tmp_path):
    code = (
        "import importlib, sys\n"
        f"for name in {MODULES!r}:\n"
        "    importlib.import_module(name)\n"
        f"print(sorted(m for m in {HEAVY!r} if m in sys.modules))\n"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=tmp_path)
    assert run.stdout.strip() == "[]", run.stdout
