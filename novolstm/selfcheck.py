"""The main job: every built-in cell (or any spec) on every installed backend against a float64 oracle.

Each row runs the same canonical weights (distinct per gate) and inputs through a
backend and the oracle, and reports the largest deviation of outputs and final
state, whether it is within the tolerance table, and the time per step. The oracle is
the hand-written ``novolstm.reference`` for the built-in cells and the spec
interpreter ``novolstm.interpret`` for any other spec
(``novolstm.conformance.golden.reference_for``): never the generated code under test.
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
    """The main job: every cell on every backend and dtype against a float64 oracle.

    Args:
        cells: built-in spec names, paths to spec files or loaded specs; default: every built-in.
        backends: backend names; default: every installed one.
        dtypes: the dtypes each backend computes in.
        batch: rows per run (the first is padded after half its steps, the second has a hole,
            the last has length 0).
        steps: the sequence length.
        input_size: features per timestep.
        units: the state size.
        seed: the seed of the weights and inputs.

    Yields:
        One ``CheckRow`` per cell, backend and dtype: the largest deviation of outputs and
        final state from the oracle (infinite where a result is not finite), the tolerance,
        and the best of three times per step. The oracle is ``novolstm.reference`` for the
        built-in cells and the spec interpreter for any other spec.
    """
    from .conformance.golden import reference_for

    rng = np.random.default_rng(seed)
    for cell in cells or list_specs():
        spec = load_spec(cell)
        params = random_params(spec, input_size, units, rng)
        x = rng.normal(size=(batch, steps, input_size))
        mask = np.ones((batch, steps), bool)
        mask[0, steps // 2 :] = False  # a right-padded row,
        mask[1, steps // 3] = False  # a hole inside a sequence
        mask[-1] = False  # and a row of length 0 exercise the masking rule
        state0 = tuple(np.zeros((batch, units)) for _ in spec.state_names)
        expected, expected_state = reference_for(spec)(params, x, state0, mask)
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
                    _deviation(outputs, expected), *(_deviation(s, e) for s, e in zip(state, expected_state))
                )
                yield CheckRow(
                    spec.name, backend, dtype, deviation, tolerance(dtype, steps).atol, 1e3 * elapsed / steps
                )


def _deviation(actual, expected) -> float:
    """The largest ``|actual - expected|``; infinite where ``actual`` is not finite (NaN never passes)."""
    with np.errstate(invalid="ignore", over="ignore"):
        error = np.abs(np.asarray(actual, np.float64) - expected)
    return float(np.where(np.isfinite(error), error, np.inf).max())


def format_table(rows) -> str:
    header = f"{'cell':<20} {'backend':<8} {'dtype':<8} {'max |dev|':>10} {'tolerance':>10} {'ms/step':>8}  ok"
    lines = [header, "-" * len(header)]
    for r in rows:
        lines.append(
            f"{r.cell:<20} {r.backend:<8} {r.dtype:<8} {r.max_deviation:>10.2e} {r.tolerance:>10.1e} "
            f"{r.ms_per_step:>8.3f}  {'yes' if r.ok else 'NO'}"
        )
    return "\n".join(lines)
