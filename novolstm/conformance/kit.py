"""The conformance kit itself: ``check`` and ``check_results`` run the cases and compare,
``Report`` and ``CaseResult`` hold the verdict, and the diagnosis names the known mistakes that
reproduce a failing implementation's outputs (see ``novolstm.conformance``).

Examples:
    >>> import novolstm
    >>> spec = novolstm.load_spec("lstm")
    >>> report = check(lambda p, x, s, m: novolstm.run(spec, p, x, s, mask=m), spec)
    >>> report.passed
    True
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from ..spec_loader import list_specs, load_spec
from ..spec_model import Spec
from ..testing import tolerance
from .golden import GoldenCase, load_golden, stress_cases
from .mistakes import catalogue

#: Precisions below each dtype, for the diagnosis "computes in a lower precision than asked".
LOWER_PRECISIONS = {"float64": ("float32",), "float32": ("float16", "bfloat16")}


@dataclass
class CaseResult:
    name: str
    description: str
    passed: bool
    max_deviation: float
    tolerance: float
    step_errors: list  # max |deviation| of the outputs at each time step
    first_divergence: str = ""
    diagnosis: list = field(default_factory=list)


@dataclass
class Report:
    spec: str
    dtype: str
    results: list

    @property
    def passed(self) -> bool:
        return all(r.passed for r in self.results)

    @property
    def diagnoses(self) -> Counter:
        """How many failing cases each diagnosis reproduces."""
        return Counter(d for r in self.results if not r.passed for d in r.diagnosis)

    @property
    def likely_mistake(self) -> str | None:
        """The diagnosis that reproduces the most failing cases (None if none does)."""
        counts = self.diagnoses
        return max(counts, key=lambda d: (counts[d], -list(counts).index(d))) if counts else None

    def format(self) -> str:
        lines = [f"conformance of an implementation of {self.spec!r} ({self.dtype})", ""]
        for r in self.results:
            verdict = "pass" if r.passed else "FAIL"
            lines.append(
                f"{r.name:<14} {verdict}  max |dev| {r.max_deviation:.2e} (tolerance {r.tolerance:.1e})  {r.description}"
            )
            growth = _growth(r.step_errors)
            if growth:
                lines.append(f"{'':<14}       error by step: {growth}")
            if not r.passed:
                lines.append(f"{'':<14}       first divergence: {r.first_divergence}")
                for d in r.diagnosis or ["no known mistake reproduces these outputs"]:
                    lines.append(f"{'':<14}       diagnosis: {d}")
        passed = sum(r.passed for r in self.results)
        failed = len(self.results) - passed
        if self.likely_mistake:
            lines += [
                "",
                f"most likely: {self.likely_mistake} (reproduces {self.diagnoses[self.likely_mistake]} of {failed} failing cases)",
            ]
        lines += [
            "",
            f"{passed} of {len(self.results)} cases pass: {'CONFORMS' if self.passed else 'DOES NOT CONFORM'}",
        ]
        return "\n".join(lines)


def _growth(errors) -> str:
    if len(errors) <= 1:
        return ""
    picks = sorted({0, len(errors) // 4, len(errors) // 2, 3 * len(errors) // 4, len(errors) - 1})
    return ", ".join(f"t={t}: {errors[t]:.1e}" for t in picks)


def golden_cases(spec: Spec) -> list[GoldenCase]:
    """The shipped golden vectors for a built-in spec, else the same stress cases computed for ``spec``."""
    if spec.name in list_specs() and load_spec(spec.name).hash == spec.hash:
        return load_golden(spec.name)[1]
    return stress_cases(spec)


def check(fn, spec, cases=None, dtype="float64", diagnose: bool = True, computes_in=None) -> Report:
    """Run ``fn`` on every case (default: the golden vectors) and compare with the spec.

    Args:
        fn: the implementation, ``fn(params, x, state, mask) -> (outputs, final_state)`` with
            canonical parameters, inputs (batch, time, input), the initial state tuple and a
            bool mask (batch, time). An exception it raises fails that case, with the reason.
        spec: a built-in name, a path to a spec file, or a loaded spec.
        cases: the cases to run; default: the golden vectors (stress cases for a spec of your own).
        dtype: the dtype the inputs are cast to.
        diagnose: on a failure, name the known mistakes that reproduce the outputs.
        computes_in: the precision ``fn`` really computes in where it falls below ``dtype``
            (its tolerance applies); by default ``dtype``.

    Returns:
        A ``Report``: per case, pass or fail, the largest deviation, the error by step, the
        first divergence and a diagnosis; ``report.format()`` prints it.
    """
    spec = load_spec(spec)
    results, failures = [], []
    for golden in cases or golden_cases(spec):
        c = golden.case.cast(dtype)
        try:
            outputs, final = fn(c.params, c.x, c.state, c.mask)
        except Exception as exc:  # an implementation that crashes fails, with the reason
            results.append(
                CaseResult(
                    golden.name, golden.description, False, float("inf"), 0.0, [], f"raised {type(exc).__name__}: {exc}"
                )
            )
            continue
        outputs, final = np.asarray(outputs), tuple(np.asarray(s) for s in final)
        results.append(_compare(spec, golden, outputs, final, computes_in or dtype))
        failures.append((results[-1], golden, outputs, final))
    if diagnose:
        _diagnose(spec, failures, computes_in or dtype)
    return Report(spec.name, str(np.dtype(dtype)), results)


def check_results(spec, arrays: dict, dtype="float64", diagnose: bool = True) -> Report:
    """Compare results an outside implementation computed on the golden vectors.

    Args:
        spec: a built-in name, a path to a spec file, or a loaded spec.
        arrays: ``<case>.outputs`` and ``<case>.state.<name>`` for every case of the golden
            file (for example ``dict(np.load("theirs.npz"))``); a missing case fails.
        dtype: the dtype the implementation computed in (sets the tolerance).
        diagnose: on a failure, name the known mistakes that reproduce the outputs.

    Returns:
        A ``Report``, as ``check`` returns.
    """
    spec = load_spec(spec)
    results, failures = [], []
    for golden in golden_cases(spec):
        key = f"{golden.name}.outputs"
        if key not in arrays:
            results.append(
                CaseResult(golden.name, golden.description, False, float("inf"), 0.0, [], f"missing array {key!r}")
            )
            continue
        final = tuple(np.asarray(arrays.get(f"{golden.name}.state.{s}", np.full(1, np.nan))) for s in spec.state_names)
        outputs = np.asarray(arrays[key])
        results.append(_compare(spec, golden, outputs, final, dtype))
        failures.append((results[-1], golden, outputs, final))
    if diagnose:
        _diagnose(spec, failures, dtype)
    return Report(spec.name, str(np.dtype(dtype)), results)


def _deviation(actual: np.ndarray, expected: np.ndarray) -> np.ndarray:
    """``|actual - expected|``, infinite wherever ``actual`` is not finite but ``expected`` is."""
    with np.errstate(invalid="ignore", over="ignore"):
        error = np.abs(actual.astype(np.float64) - expected)
    return np.where(np.isfinite(expected) & ~np.isfinite(error), np.inf, error)


def _compare(spec: Spec, golden: GoldenCase, outputs, final, dtype) -> CaseResult:
    tol = tolerance(dtype, golden.case.steps)
    expected = golden.outputs
    if not _shapes_match(golden, outputs, final):
        shapes = f"outputs {outputs.shape} (expected {expected.shape}), state {[f.shape for f in final]} (expected {[e.shape for e in golden.state]})"
        return CaseResult(golden.name, golden.description, False, float("inf"), tol.atol, [], f"wrong shapes: {shapes}")
    out64 = outputs.astype(np.float64)
    error = _deviation(outputs, expected)
    step_errors = [float(e) for e in error.max(axis=(0, 2))] if error.size else []
    bad = error > tol.bound(expected)
    state_errors = [_deviation(f, e) for f, e in zip(final, golden.state)]
    state_bad = [err > tol.bound(e) for err, e in zip(state_errors, golden.state)]
    deviation = max([float(error.max(initial=0.0))] + [float(err.max(initial=0.0)) for err in state_errors])
    passed = not bad.any() and not any(b.any() for b in state_bad)
    result = CaseResult(golden.name, golden.description, bool(passed), deviation, tol.atol, step_errors)
    if passed:
        return result
    if bad.any():
        t = int(np.where(bad.any(axis=(0, 2)))[0][0])
        b, u = np.unravel_index(int(np.argmax(error[:, t])), error[:, t].shape)
        result.first_divergence = (
            f"outputs at step {t} (batch {b}, unit {u}): got {out64[b, t, u]:.6g}, expected {expected[b, t, u]:.6g}"
        )
    else:
        k = next(k for k, sb in enumerate(state_bad) if sb.any())
        got = final[k].astype(np.float64)
        where = np.unravel_index(int(np.argmax(state_errors[k])), got.shape)
        result.first_divergence = (
            f"final state {spec.state_names[k]!r} at {tuple(int(i) for i in where)}: got {got[where]:.6g},"
            f" expected {golden.state[k][where]:.6g} (outputs agree at every step)"
        )
    return result


def _shapes_match(golden: GoldenCase, outputs, final) -> bool:
    return (
        outputs.shape == golden.outputs.shape
        and len(final) == len(golden.state)
        and all(f.shape == e.shape for f, e in zip(final, golden.state))
    )


def _diagnose(spec: Spec, failures: list, dtype) -> None:
    """Fill in the diagnosis of each failing case, the cheapest case first.

    Once a mistake reproduces two failing cases, each further case is tried against the
    mistakes found so far, and against the whole catalogue only where none of them
    reproduces it: the same answers in a fraction of the time.
    """
    failures = [f for f in failures if not f[0].passed and _shapes_match(*f[1:])]
    if not failures:
        return
    models = list(catalogue(spec))
    found: Counter = Counter()
    for result, golden, outputs, final in sorted(failures, key=lambda f: f[1].case.x.shape[0] * f[1].case.steps):
        tol = tolerance(dtype, golden.case.steps)
        if found and max(found.values()) >= 2:
            suspects = [m for m in models if f"reproduced by: {m.label}" in found]
            result.diagnosis = diagnose_mistakes(
                spec, golden, outputs, final, tol, dtype, suspects, lower_precision=False
            )
        if not result.diagnosis:
            result.diagnosis = diagnose_mistakes(spec, golden, outputs, final, tol, dtype, models)
        found.update(result.diagnosis)


def known_mistakes(spec: Spec):
    """Yield ``(label, run)``: float64 runs of ``spec`` with one known porting mistake each
    (see ``novolstm.conformance.mistakes``)."""
    return ((m.label, m.run) for m in catalogue(spec))


def _reproduces(actual: np.ndarray, model: np.ndarray, tol) -> bool:
    """Whether ``actual`` matches a model's ``model`` values: the same non-finite places, the rest within ``tol``."""
    actual = np.asarray(actual, np.float64)
    if actual.shape != model.shape:
        return False
    finite = np.isfinite(model)
    if not np.array_equal(finite, np.isfinite(actual)):
        return False
    return bool(np.all(np.abs(actual[finite] - model[finite]) <= tol.bound(model[finite])))


def diagnose_mistakes(
    spec: Spec, golden: GoldenCase, outputs, final, tol, dtype="float64", models=None, lower_precision: bool = True
) -> list[str]:
    """Labels of the known mistakes whose outputs (and final state) match the implementation's.

    ``models``: the ``novolstm.conformance.mistakes.Mistake`` to try, by default ``catalogue(spec)``.
    ``lower_precision``: where no model reproduces the outputs, try whether they are right
    to a lower precision's tolerance.
    """
    c = golden.case
    found = []
    if len(final) > 1 and all(f.shape == e.shape for f, e in zip(final[::-1], golden.state)):
        if all(_reproduces(f, e, tol) for f, e in zip(final[::-1], golden.state)):
            found.append(f"final state returned in the order {spec.state_names[::-1]} instead of {spec.state_names}")
    unmasked = c.mask is None or bool(np.all(c.mask))
    for label, run, masking in models if models is not None else catalogue(spec):
        if masking and unmasked:
            continue  # no masked step in this case: a masking mistake changes nothing
        try:
            alt, alt_final = run(c.params, c.x, c.state, c.mask)
        except (ValueError, KeyError):  # a model that does not apply to this case's parameters
            continue
        if _reproduces(alt, golden.outputs, tol) and all(
            _reproduces(a, e, tol) for a, e in zip(alt_final, golden.state)
        ):
            continue  # this mistake changes nothing in this case
        if _reproduces(outputs, alt, tol) and all(_reproduces(f, a, tol) for f, a in zip(final, alt_final)):
            found.append(f"reproduced by: {label}")
    if not found and lower_precision:
        # Right to a lower precision's tolerance but not to the one asked for: the arithmetic
        # runs in a lower precision (a float64 port casting to float32 somewhere).
        for lower in LOWER_PRECISIONS.get(str(np.dtype(dtype)), ()):
            low = tolerance(lower, c.steps)
            if _reproduces(outputs, golden.outputs, low) and all(
                _reproduces(f, e, low) for f, e in zip(final, golden.state)
            ):
                found.append(
                    f"computes in {lower} (or lower) although {np.dtype(dtype)} was asked: right to {lower}'s tolerance only"
                )
                break
    return found
