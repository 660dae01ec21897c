"""The quickstart pages' examples are files in docs/quickstart/; each runs for its backend and
asserts that its loss falls."""

from __future__ import annotations

import runpy
from pathlib import Path

import pytest

QUICKSTARTS = Path(__file__).resolve().parents[1] / "docs" / "quickstart"


def test_quickstart_trains(backend):
    script = QUICKSTARTS / f"train_{backend}.py"
    if not script.exists():
        pytest.skip(f"{backend} is an export target, not a framework to train in: no quickstart")
    runpy.run_path(str(script), run_name="__main__")
