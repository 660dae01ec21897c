"""Generated modules read like hand-written code: `ruff check` and `ruff format --check` pass on the
module of every built-in spec for every backend (generation needs no framework).

ruff is installed in the lint env (tox -e lint), which runs this file; elsewhere it is skipped.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import novolstm

REPO = Path(__file__).resolve().parents[1]


def _ruff() -> list[str]:
    exe = shutil.which("ruff", path=str(Path(sys.executable).parent)) or shutil.which("ruff")
    if exe is None:
        pytest.skip("ruff is installed in the lint env only (tox -e lint runs this test)")
    return [exe]


@pytest.fixture(scope="module")
def generated(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("generated")
    for backend in novolstm.list_backends():
        for spec in novolstm.list_specs():
            (folder / f"{backend}_{spec}.py").write_text(novolstm.generate_source(spec, backend), encoding="utf-8")
    return folder


@pytest.mark.parametrize("command", [["check"], ["format", "--check"]], ids=["check", "format"])
def test_ruff_passes_on_every_generated_module(generated, command):
    ruff = _ruff()
    run = subprocess.run(
        [*ruff, *command, "--config", str(REPO / "pyproject.toml"), "--no-cache", str(generated)],
        capture_output=True,
        text=True,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert len(list(generated.glob("*.py"))) == len(novolstm.list_backends()) * len(novolstm.list_specs())


def test_ruff_catches_an_unused_variable(generated, tmp_path):
    """The check above can fail: the same command rejects a generated module given an unused local."""
    ruff = _ruff()
    source = (generated / "numpy_lstm.py").read_text(encoding="utf-8")
    bad = tmp_path / "bad.py"
    bad.write_text(
        source.replace(
            "    H = params[UNITS_PARAM].shape[-1]\n", "    H = params[UNITS_PARAM].shape[-1]\n    unused = H\n", 1
        )
    )
    run = subprocess.run(
        [*ruff, "check", "--config", str(REPO / "pyproject.toml"), "--no-cache", str(bad)],
        capture_output=True,
        text=True,
    )
    assert run.returncode != 0 and "F841" in run.stdout
