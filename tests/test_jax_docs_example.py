"""docs/jax.md shows docs/examples/jax_flax.py; it runs here, with its own assertions."""

from __future__ import annotations

import runpy
from pathlib import Path

EXAMPLE = Path(__file__).resolve().parents[1] / "docs" / "examples" / "jax_flax.py"


def test_jax_page_example_runs():
    runpy.run_path(str(EXAMPLE), run_name="__main__")
