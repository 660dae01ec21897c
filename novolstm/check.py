"""The main job: every built-in cell on every installed backend against the float64 reference.

Each row runs the same canonical weights (distinct per gate) and inputs through a
backend and the reference, and reports the largest deviation of outputs and final
state, whether it is within the tolerance table, and the time per step.
"""

from __future__ import annotations

import importlib.util
import time
from dataclasses import dataclass

import numpy as np

from .api import list_backends, run
from .spec_loader import list_specs, load_spec
from .testing import random_params, tolerance


@dataclass(frozen=True)
class CheckRow:
    cell: str
    backend: str
    dtype: str
    max_deviation: float
    tolerance: float
    ms_per_step: float

    @property
    def ok(self) -> bool:
        return self.max_deviation <= self.tolerance


def installed_backends() -> list[str]:
    """Backends whose framework can be imported here (found without importing it)."""
    from novolstm.backends import emitter

    return [b for b in list_backends() if importlib.util.find_spec(emitter(b).FRAMEWORK) is not None]


def check(cells=None, backends=None, dtypes=("float64", "float32"), batch=4, steps=16, input_size=8, units=8, seed=0):
    """The main job: every cell on every backend and dtype against the float64 reference.

    Args:
        cells: built-in spec names; default: every one.
        backends: backend names; default: every installed one.
        dtypes: the dtypes each backend computes in.
        batch: rows per run (the first is padded after half its steps).
        steps: the sequence length.
        input_size: features per timestep.
        units: the state size.
        seed: the seed of the weights and inputs.

    Yields:
        One ``CheckRow`` per cell, backend and dtype: the largest deviation of outputs and
        final state from the reference, the tolerance, and the best of three times per step.
    """
    from . import reference

    rng = np.random.default_rng(seed)
    for cell in cells or list_specs():
        spec = load_spec(cell)
        params = random_params(spec, input_size, units, rng)
        x = rng.normal(size=(batch, steps, input_size))
        mask = np.ones((batch, steps), bool)
        mask[0, steps // 2 :] = False  # one padded row exercises the masking rule
        expected, expected_state = reference.run(cell, params, x, mask=mask)
        for backend in backends or installed_backends():
            for dtype in dtypes:
                cast = {k: v.astype(dtype) for k, v in params.items()}
                run(spec, cast, x.astype(dtype), backend=backend, mask=mask)  # warm-up: codegen, JIT
                elapsed = float("inf")
                for _ in range(3):  # best of three: the machine is shared and noisy
                    start = time.perf_counter()
                    outputs, state = run(spec, cast, x.astype(dtype), backend=backend, mask=mask)
                    elapsed = min(elapsed, time.perf_counter() - start)
                deviation = max(
                    float(np.abs(outputs - expected).max()),
                    *(float(np.abs(s - e).max()) for s, e in zip(state, expected_state)),
                )
                yield CheckRow(cell, backend, dtype, deviation, tolerance(dtype, steps).atol, 1e3 * elapsed / steps)


def format_table(rows) -> str:
    header = f"{'cell':<20} {'backend':<8} {'dtype':<8} {'max |dev|':>10} {'tolerance':>10} {'ms/step':>8}  ok"
    lines = [header, "-" * len(header)]
    for r in rows:
        lines.append(
            f"{r.cell:<20} {r.backend:<8} {r.dtype:<8} {r.max_deviation:>10.2e} {r.tolerance:>10.1e} "
            f"{r.ms_per_step:>8.3f}  {'yes' if r.ok else 'NO'}"
        )
    return "\n".join(lines)
