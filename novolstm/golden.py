"""Golden vectors: framework-neutral inputs and reference outputs for every built-in cell.

Each cell has ``spec/golden/<cell>.npz`` (arrays, no pickles) and
``spec/golden/<cell>.json`` (metadata: spec name and hash, cases, array keys). They
are produced from the float64 reference by ``make_golden`` (``python -m
novolstm.golden``); a test proves they match the current spec. Another language can
implement a spec from these files alone: read the inputs, run, compare.

Array keys, per case ``<case>``: ``<case>.x`` (batch, time, input),
``<case>.mask`` (batch, time) bool, ``<case>.state0.<name>``, ``<case>.param.<name>``,
and the expected ``<case>.outputs`` and ``<case>.state.<name>``.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, cast

import numpy as np

from .spec_loader import list_specs, load_spec
from .testing import Case, random_params

#: name -> (weight scale, batch, steps, input size, units, what it stresses)
STRESS_CASES = {
    "typical": (0.5, 3, 8, 5, 6, "distinct weights of moderate scale, random initial state"),
    "low_variance": (1e-3, 3, 8, 5, 6, "tiny weights: the LayerNorm input's variance is far below its epsilon"),
    "saturated": (4.0, 3, 8, 5, 6, "large weights: gates saturate at 0 and 1"),
    "long": (0.3, 2, 64, 4, 5, "64 steps: rounding error passes through many recurrences"),
    "padding": (0.5, 4, 10, 3, 4, "right padding and holes in the mask"),
    "one_unit": (0.5, 2, 5, 3, 1, "one unit: LayerNorm gives beta, softmax gives 1"),
}


@dataclass(frozen=True)
class GoldenCase:
    name: str
    description: str
    case: Case
    outputs: np.ndarray
    state: tuple


def make_golden(cell: str, seed: int = 0) -> tuple[dict, dict[str, np.ndarray]]:
    """Metadata and arrays for ``cell``, computed by the float64 reference."""
    from . import reference

    spec = load_spec(cell)
    meta: dict[str, Any] = {
        "spec": spec.name,
        "spec_hash": spec.hash,
        "spec_version": spec.spec_version,
        "dtype": "float64",
        "state_names": list(spec.state_names),
        "cases": {},
    }
    arrays: dict[str, np.ndarray] = {}
    for k, (name, (scale, batch, steps, inputs, units, description)) in enumerate(STRESS_CASES.items()):
        rng = np.random.default_rng([seed, k])
        params = random_params(spec, inputs, units, rng, scale=scale)
        x = rng.normal(size=(batch, steps, inputs))
        state = tuple(rng.normal(scale=0.5, size=(batch, units)) for _ in spec.state_names)
        mask = np.ones((batch, steps), bool)
        if name == "padding":
            lengths = rng.integers(1, steps + 1, size=batch)
            mask = np.arange(steps)[None] < lengths[:, None]
            mask[0, steps // 3] = False  # a hole in the middle too
        outputs, final = reference.run(cell, params, x, state, mask=mask)
        meta["cases"][name] = {
            "description": description,
            "weight_scale": scale,
            "shape": {"batch": batch, "time": steps, "input": inputs, "units": units},
        }
        arrays[f"{name}.x"] = x
        arrays[f"{name}.mask"] = mask
        for s_name, s in zip(spec.state_names, state):
            arrays[f"{name}.state0.{s_name}"] = s
        for p_name, p in params.items():
            arrays[f"{name}.param.{p_name}"] = p
        arrays[f"{name}.outputs"] = outputs
        for s_name, s in zip(spec.state_names, final):
            arrays[f"{name}.state.{s_name}"] = s
    meta["arrays"] = sorted(arrays)
    return meta, arrays


def write_golden(directory: Path, cells=None) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for cell in cells or list_specs():
        meta, arrays = make_golden(cell)
        np.savez_compressed(directory / f"{cell}.npz", **cast("dict[str, Any]", arrays))
        (directory / f"{cell}.json").write_text(json.dumps(meta, indent=1, sort_keys=True) + "\n")


def load_golden(cell: str) -> tuple[dict, list[GoldenCase]]:
    """The shipped golden vectors of a built-in cell."""
    folder = resources.files("novolstm.spec").joinpath("golden")
    meta = json.loads(folder.joinpath(f"{cell}.json").read_text())
    with np.load(io.BytesIO(folder.joinpath(f"{cell}.npz").read_bytes()), allow_pickle=False) as data:
        arrays = {k: data[k] for k in data.files}
    return meta, cases_from_arrays(meta, arrays)


def cases_from_arrays(meta: dict, arrays: dict[str, np.ndarray]) -> list[GoldenCase]:
    out = []
    for name, info in meta["cases"].items():
        params = {k.split(".", 2)[2]: v for k, v in arrays.items() if k.startswith(f"{name}.param.")}
        state0 = tuple(arrays[f"{name}.state0.{s}"] for s in meta["state_names"])
        case = Case(params, arrays[f"{name}.x"], state0, arrays[f"{name}.mask"])
        final = tuple(arrays[f"{name}.state.{s}"] for s in meta["state_names"])
        out.append(GoldenCase(name, info["description"], case, arrays[f"{name}.outputs"], final))
    return out


if __name__ == "__main__":  # pragma: no cover - the script that writes spec/golden/
    import sys

    write_golden(Path(sys.argv[1]) if len(sys.argv) > 1 else Path("spec/golden"))
