"""Golden vectors: framework-neutral inputs and reference outputs for every built-in cell.

Each cell has ``spec/golden/<cell>.npz`` (arrays, no pickles) and
``spec/golden/<cell>.json`` (metadata: spec name and hash, cases, array keys). They
are produced from the float64 reference by ``make_golden`` (``python -m
novolstm.conformance``); a test proves they match the current spec. The same stress cases
are made for any other spec by ``stress_cases``, with the spec interpreter as the
reference. Another language can
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

from ..expr import Binary, Call, Name, walk
from ..spec_loader import list_specs, load_spec
from ..spec_model import Spec
from ..testing import Case, random_params

#: name -> (weight scale, batch, steps, input size, units, what it stresses)
STRESS_CASES = {
    "typical": (0.5, 3, 8, 5, 6, "distinct weights of moderate scale, random initial state"),
    "low_variance": (
        1e-3,
        3,
        8,
        5,
        6,
        "tiny projections (LayerNorm gamma and beta at full scale): the LayerNorm input's variance is far below its epsilon",
    ),
    "saturated": (4.0, 3, 8, 5, 6, "large weights: gates saturate at 0 and 1"),
    "long": (0.3, 2, 64, 4, 5, "64 steps: rounding error passes through many recurrences"),
    "padding": (0.5, 4, 10, 3, 4, "right padding, holes inside sequences and a row of length 0"),
    "one_unit": (0.5, 2, 5, 3, 1, "one unit: LayerNorm gives beta, softmax gives 1"),
    "softmax_overflow": (
        0.5,
        3,
        8,
        5,
        6,
        "softmax logits of 720 and more: exp overflows (float32 past 88.7, float64 past 709.8) unless the maximum is subtracted",
    ),
}

#: The mask of the ``padding`` case (batch 4, 10 steps): a hole inside a full-length row,
#: two holes inside a right-padded row, a row of length 0 and a plainly right-padded row.
#: Read as lengths (mask.sum), rows 0 and 1 would differ: that mistake cannot pass.
PADDING_MASK = np.array(
    [
        [t != 3 for t in range(10)],
        [t < 7 and t not in (2, 5) for t in range(10)],
        [False] * 10,
        [t < 4 for t in range(10)],
    ]
)

#: The softmax_overflow case's logit offsets: 720 + 25 k per unit (a permutation of k),
#: above float64's exp overflow, and 25 apart so the softmax is one-hot to about 1e-11:
#: insensitive to the rounding of its inputs, so a correct float32 port still passes.
OVERFLOW_LOGIT, OVERFLOW_GAP = 720.0, 25.0


@dataclass(frozen=True)
class GoldenCase:
    name: str
    description: str
    case: Case
    outputs: np.ndarray
    state: tuple


def reference_for(spec: Spec):
    """The float64 oracle of ``spec``: ``run(params, x, state, mask) -> (outputs, final_state)``.

    The hand-written ``novolstm.reference`` for the built-in cells (recognised by
    content hash), the spec interpreter ``novolstm.interpret`` for every other spec;
    neither shares code with code generation.
    """
    from .. import interpret, reference

    spec = load_spec(spec)
    if spec.name in reference.CELLS and spec.name in list_specs() and load_spec(spec.name).hash == spec.hash:
        return lambda p, x, s, m: reference.run(spec.name, p, x, s, mask=m)
    return lambda p, x, s, m: interpret.run(spec, p, x, s, mask=m)


def stress_cases(spec, seed: int = 0) -> list[GoldenCase]:
    """The stress cases of ``STRESS_CASES`` for any spec, expected values from ``reference_for``.

    ``softmax_overflow`` is made only for specs whose softmax adds a bias parameter
    (it raises that bias to ``OVERFLOW_LOGIT`` and up).
    """
    spec = load_spec(spec)
    oracle = reference_for(spec)
    layer_norm_affine = _layer_norm_affine_params(spec)
    logit_biases = _softmax_biases(spec)
    out = []
    for k, (name, (scale, batch, steps, inputs, units, description)) in enumerate(STRESS_CASES.items()):
        if name == "softmax_overflow" and not logit_biases:
            continue
        rng = np.random.default_rng([seed, k])
        params = random_params(spec, inputs, units, rng, scale=scale)
        if name == "low_variance":  # only the projections are tiny; LayerNorm's gamma and beta are not
            params.update({p: rng.normal(scale=0.5, size=params[p].shape) for p in layer_norm_affine})
        if name == "softmax_overflow":
            params.update({p: OVERFLOW_LOGIT + OVERFLOW_GAP * rng.permutation(units) for p in logit_biases})
        x = rng.normal(size=(batch, steps, inputs))
        state = tuple(rng.normal(scale=0.5, size=(batch, units)) for _ in spec.state_names)
        mask = PADDING_MASK.copy() if name == "padding" else np.ones((batch, steps), bool)
        outputs, final = oracle(params, x, state, mask)
        out.append(GoldenCase(name, description, Case(params, x, state, mask), outputs, tuple(final)))
    return out


def _layer_norm_affine_params(spec: Spec) -> list[str]:
    """Parameters a layer_norm call takes as gamma or beta."""
    return sorted(
        {
            arg.id
            for _, expr in spec.equations
            for node in walk(expr)
            if isinstance(node, Call) and node.fn == "layer_norm"
            for arg in node.args[1:]
            if isinstance(arg, Name)
        }
    )


def _softmax_biases(spec: Spec) -> list[str]:
    """(units,) parameters added as a term of a softmax's argument (b_s in softmax(x @ W_s + b_s))."""
    vectors = {p.name for p in spec.params if p.shape == ("units",)}
    found = set()
    for _, expr in spec.equations:
        for node in walk(expr):
            if isinstance(node, Call) and node.fn == "softmax":
                terms = [node.args[0]]
                while terms:  # the terms of a sum, without recursion
                    term = terms.pop()
                    if isinstance(term, Binary) and term.op == "+":
                        terms += [term.left, term.right]
                    elif isinstance(term, Name) and term.id in vectors:
                        found.add(term.id)
    return sorted(found)


def make_golden(cell: str, seed: int = 0) -> tuple[dict, dict[str, np.ndarray]]:
    """Metadata and arrays for ``cell``, computed by the float64 reference."""
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
    for golden in stress_cases(spec, seed):
        name, case = golden.name, golden.case
        scale, batch, steps, inputs, units, _ = STRESS_CASES[name]
        meta["cases"][name] = {
            "description": golden.description,
            "weight_scale": scale,
            "shape": {"batch": batch, "time": steps, "input": inputs, "units": units},
        }
        assert case.mask is not None and case.state is not None  # stress cases have both
        arrays[f"{name}.x"] = case.x
        arrays[f"{name}.mask"] = case.mask
        for s_name, s in zip(spec.state_names, case.state):
            arrays[f"{name}.state0.{s_name}"] = s
        for p_name, p in case.params.items():
            arrays[f"{name}.param.{p_name}"] = p
        arrays[f"{name}.outputs"] = golden.outputs
        for s_name, s in zip(spec.state_names, golden.state):
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
