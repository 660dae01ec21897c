"""``novolstm verify-port A B``: does a weight port from framework A to framework B compute the same thing?

Probe weights (distinct per gate, non-zero distinct biases, so a swapped gate or a
dropped bias shows) or a real weight file go into A's native layer through the
converters; A's framework saves them in its own format; the canonical hub converts
that file to B's format; B's framework loads it. Both run the same input from the
same non-zero initial state over ``steps`` steps, and so does the float64
reference. The report gives the error between A and B per step (how it grows with
the recurrence), each side's deviation from the reference, and a verdict against
``novolstm.testing.tolerance`` for the dtype they compute in and the length.

Examples:
    NumPy only:

    >>> report = verify_port("numpy", "reference", steps=8)
    >>> report.passed, report.table()[0][0]
    (True, 1)
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from novolstm.convert import ConversionError
from novolstm.spec_loader import load_spec

if TYPE_CHECKING:
    from novolstm.testing import Tolerance


@dataclass
class PortReport:
    source: str
    target: str
    cell: str
    dtype: str
    step_error: np.ndarray  # max |A - B| of the outputs at each step
    state_error: float  # max |A - B| of the final state
    source_deviation: float  # max |A - reference|, outputs and final state
    target_deviation: float
    tolerance: Tolerance
    passed: bool
    failures: list

    def table(self) -> list[tuple[int, float]]:
        """(step, max |A - B|) at steps 1, 2, 4, ... and the last."""
        steps = len(self.step_error)
        marks = sorted({min(2**k, steps) for k in range(steps.bit_length() + 1)})
        return [(s, float(self.step_error[s - 1])) for s in marks]

    def format(self) -> str:
        worst = int(np.argmax(self.step_error)) + 1
        lines = [
            f"verify-port {self.source} -> {self.target}: spec {self.cell}, {len(self.step_error)} steps, {self.dtype}",
            "",
            "  step   max |A-B| (outputs)",
        ]
        lines += [f"  {s:>4}   {e:.3e}" for s, e in self.table()]
        lines += [
            f"  worst step {worst}: {self.step_error[worst - 1]:.3e}; final state max |A-B| {self.state_error:.3e}",
            "",
            f"  {self.source} vs float64 reference: {self.source_deviation:.3e}",
            f"  {self.target} vs float64 reference: {self.target_deviation:.3e}",
            f"  tolerance ({self.dtype}, {len(self.step_error)} steps): atol {self.tolerance.atol:.2e}, rtol {self.tolerance.rtol:.2e}",
            "",
        ]
        lines += [f"  FAIL: {f}" for f in self.failures]
        lines.append("PASS" if self.passed else "FAIL")
        return "\n".join(lines)


def probe_params(cell: str, input_size: int, units: int, seed: int = 0, dtype=np.float32) -> dict:
    """Random weights for ``cell``: every tensor distinct, every bias non-zero and distinct per gate."""
    from novolstm.testing import random_params

    params = {
        k: v.astype(dtype)
        for k, v in random_params(cell, input_size, units, np.random.default_rng(seed), scale=0.5).items()
    }
    biases = [v for k, v in sorted(params.items()) if k.startswith("b_")]
    if any((b == 0).any() for b in biases) or len({b.tobytes() for b in biases}) != len(biases):
        raise AssertionError(
            "probe biases must be non-zero and distinct per gate"
        )  # a seed that draws them equal is a bug
    return params


def _violations(actual, expected, tol) -> float:
    """How far past the tolerance ``actual`` goes (<= 0: within it)."""
    a, e = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    return float(np.max(np.abs(a - e) - tol.bound(e)))


def verify_port(
    source: str,
    target: str,
    cell: str = "lstm",
    steps: int = 64,
    batch: int = 3,
    input_size: int = 5,
    units: int = 8,
    seed: int = 0,
    weights=None,
    weights_format: str | None = None,
    layout: str | None = None,
    ported=None,
    prefix: str | None = None,
) -> PortReport:
    """Port weights from framework ``source`` to ``target`` and compare both layers step by step.

    Args:
        source: the framework ported from (a name in ``novolstm.convert.native.NATIVES``).
        target: the framework ported to.
        cell: the spec, ``lstm`` or ``gru``.
        steps: the sequence length compared.
        batch: rows of the probe input.
        input_size: features of the probe weights and input.
        units: the state size of the probe weights.
        seed: the seed of the probe weights, input and initial state.
        weights: a real weight file instead of the probe weights; it is converted to
            ``source``'s format first.
        weights_format: the format of ``weights``.
        layout: flax only: the layout of ``weights``.
        ported: a file in ``target``'s format that some other tool ported from ``weights``;
            ``target`` loads it instead of novolstm's own conversion, so the report says
            whether that port is right: novolstm's own ONNX models, or ones other tools
            exported (``torch.onnx.export``; a model exported for one input shape runs at
            that shape, one without initial-state inputs from a zero state).
        prefix: torch ``weights``: the recurrent layer's keys in a whole model's state dict.

    Returns:
        A ``PortReport``: the error between the two layers per step, each side's deviation
        from the float64 reference, the tolerance and the verdict.

    Raises:
        ConversionError: a pair, spec or file the converters cannot handle, or a layer that
            runs backwards in time (never passed).
    """
    from novolstm.convert import files
    from novolstm.convert import native as natives
    from novolstm.testing import tolerance

    if steps < 1:
        raise ConversionError(f"steps must be at least 1, got {steps}")
    a, b = natives.native(source, cell), natives.native(target, cell)
    with tempfile.TemporaryDirectory() as folder:
        if weights is not None:
            if weights_format is None:
                raise ConversionError("--weights needs --format (canonical, torch, onnx, keras, flax)")
            path = f"{folder}/source{a.suffix}"
            layers = files.convert(weights, path, weights_format, a.format, cell, src_layout=layout, prefix=prefix)
            input_size, units = natives.shapes(layers)
            layer_a = a.load(path, cell, input_size, units)
            canonical = layers["l0"]
        else:
            canonical = probe_params(cell, input_size, units, seed)
            layer_a = natives.build(a, canonical, cell, folder)
        if ported is not None:
            if weights is None:
                raise ConversionError("--ported checks a port of --weights; give both")
            layer_b, _ = natives.load_file(b, ported, cell)
        else:
            layer_b, _ = natives.port(a, layer_a, b, cell, folder)
        # A model exported for one input shape runs only that one; one without state inputs starts from zeros.
        fixed_batch, fixed_steps = getattr(layer_b, "fixed_shape", None) or (None, None)
        batch, steps = fixed_batch or batch, fixed_steps or steps
        scale = 0.5 if getattr(layer_b, "takes_state", True) else 0.0
        rng = np.random.default_rng(seed + 1)
        x = rng.normal(size=(batch, steps, input_size)).astype(np.float32)
        state0 = tuple(
            (scale * rng.normal(size=(batch, units))).astype(np.float32) for _ in load_spec(cell).state_names
        )
        out_a, state_a = a.run(layer_a, x, state0)
        out_b, state_b = b.run(layer_b, x, state0)
    reference = natives.NATIVES["reference"]
    ref_out, ref_state = reference.run((cell, {k: np.asarray(v, np.float64) for k, v in canonical.items()}), x, state0)
    dtype = "float64" if {source, target} == {"reference"} else "float32"
    tol = tolerance(dtype, steps)
    step_error = np.abs(out_a.astype(np.float64) - out_b).max(axis=(0, 2))
    state_error = max(float(np.abs(np.float64(sa) - sb).max()) for sa, sb in zip(state_a, state_b))

    def deviation(out, state):
        return max(
            [float(np.abs(np.float64(out) - ref_out).max())]
            + [float(np.abs(np.float64(s) - r).max()) for s, r in zip(state, ref_state)]
        )

    failures = []
    for name, out, state in ((source, out_a, state_a), (target, out_b, state_b)):
        if (
            not np.isfinite(out).all()
            or max(_violations(out, ref_out, tol), *(_violations(s, r, tol) for s, r in zip(state, ref_state))) > 0
        ):
            failures.append(f"{name} is outside the tolerance of the float64 reference")
    if max(_violations(out_b, out_a, tol), *(_violations(sb, sa, tol) for sa, sb in zip(state_a, state_b))) > 0:
        failures.append(f"{source} and {target} disagree beyond the tolerance")
    return PortReport(
        source,
        target,
        cell,
        dtype,
        step_error,
        state_error,
        deviation(out_a, state_a),
        deviation(out_b, state_b),
        tol,
        not failures,
        failures,
    )
