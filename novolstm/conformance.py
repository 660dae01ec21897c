"""Check any implementation of a spec: pass or fail against the tolerance table, per-step
error growth, and a diagnosis of what went wrong.

An implementation is a callable ``fn(params, x, state, mask) -> (outputs, final_state)``
taking canonical float parameters, inputs (batch, time, input), the initial state
tuple and a bool mask (batch, time), returning arrays NumPy can read. Implementations
outside Python run the golden vectors (``novolstm.golden``) and hand back their
results as an ``.npz`` (see ``check_results``).

When a case fails, the report names the first step and quantity that diverge and
tries the mistakes porting code makes most (two gates swapped, another framework's
LayerNorm epsilon, a dropped bias, a missing recurrent term, the other NovoLSTM
variant, softmax over the wrong axis, a hard sigmoid, the state tuple reordered):
each one that reproduces the implementation's outputs is listed.

Examples:
    >>> import novolstm
    >>> spec = novolstm.load_spec("lstm")
    >>> report = check(lambda p, x, s, m: novolstm.run(spec, p, x, s, mask=m), spec)
    >>> report.passed
    True
"""

from __future__ import annotations

import itertools
import types
from dataclasses import dataclass, field

import numpy as np

from .golden import STRESS_CASES, GoldenCase, load_golden
from .ir import lower
from .spec_loader import list_specs, load_spec, loads_spec
from .spec_model import Spec
from .testing import Case, random_params, tolerance


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
    """The shipped golden vectors for a built-in spec, else stress cases computed for ``spec``."""
    if spec.name in list_specs() and load_spec(spec.name).hash == spec.hash:
        return load_golden(spec.name)[1]
    out = []
    for k, (name, (scale, batch, steps, inputs, units, description)) in enumerate(STRESS_CASES.items()):
        rng = np.random.default_rng([0, k])
        case = Case(
            random_params(spec, inputs, units, rng, scale=scale),
            rng.normal(size=(batch, steps, inputs)),
            tuple(rng.normal(scale=0.5, size=(batch, units)) for _ in spec.state_names),
            np.arange(steps)[None] < rng.integers(1, steps + 1, size=batch)[:, None]
            if name == "padding"
            else np.ones((batch, steps), bool),
        )
        outputs, final = _oracle(spec)(case.params, case.x, case.state, case.mask)
        out.append(GoldenCase(name, description, case, outputs, final))
    return out


def _oracle(spec: Spec, module: types.ModuleType | None = None):
    """float64 expected values: the hand-written reference for built-ins, else the generated NumPy cell."""
    from . import reference

    if (
        module is None
        and spec.name in reference.CELLS
        and spec.name in list_specs()
        and load_spec(spec.name).hash == spec.hash
    ):
        return lambda p, x, s, m: reference.run(spec.name, p, x, s, mask=m)
    from .api import load_generated

    module = module or load_generated(spec, "numpy")

    def run(p, x, s, m):
        outputs, final, _ = module.forward({k: np.asarray(v, np.float64) for k, v in p.items()}, x, s, m)
        return outputs, final

    return run


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
    results = []
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
        results.append(
            _compare(
                spec, golden, np.asarray(outputs), tuple(np.asarray(s) for s in final), computes_in or dtype, diagnose
            )
        )
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
    results = []
    for golden in golden_cases(spec):
        key = f"{golden.name}.outputs"
        if key not in arrays:
            results.append(
                CaseResult(golden.name, golden.description, False, float("inf"), 0.0, [], f"missing array {key!r}")
            )
            continue
        final = tuple(np.asarray(arrays.get(f"{golden.name}.state.{s}", np.full(1, np.nan))) for s in spec.state_names)
        results.append(_compare(spec, golden, np.asarray(arrays[key]), final, dtype, diagnose))
    return Report(spec.name, str(np.dtype(dtype)), results)


def _compare(spec: Spec, golden: GoldenCase, outputs, final, dtype, diagnose) -> CaseResult:
    tol = tolerance(dtype, golden.case.steps)
    expected = golden.outputs
    if (
        outputs.shape != expected.shape
        or any(f.shape != e.shape for f, e in zip(final, golden.state))
        or len(final) != len(golden.state)
    ):
        shapes = f"outputs {outputs.shape} (expected {expected.shape}), state {[f.shape for f in final]} (expected {[e.shape for e in golden.state]})"
        return CaseResult(golden.name, golden.description, False, float("inf"), tol.atol, [], f"wrong shapes: {shapes}")
    out64 = outputs.astype(np.float64)
    error = np.abs(out64 - expected)
    bound = tol.bound(expected)
    step_errors = [float(e) for e in error.max(axis=(0, 2))] if error.size else []
    bad = error > bound
    state_bad = [np.abs(f.astype(np.float64) - e) > tol.bound(e) for f, e in zip(final, golden.state)]
    deviation = max(
        [float(np.nan_to_num(error, nan=np.inf).max())]
        + [
            float(np.nan_to_num(np.abs(f.astype(np.float64) - e), nan=np.inf).max())
            for f, e in zip(final, golden.state)
        ]
    )
    passed = not bad.any() and not any(b.any() for b in state_bad) and np.isfinite(out64).all()
    result = CaseResult(golden.name, golden.description, bool(passed), deviation, tol.atol, step_errors)
    if passed:
        return result
    if bad.any() or not np.isfinite(out64).all():
        steps = np.where((bad | ~np.isfinite(out64)).any(axis=(0, 2)))[0]
        t = int(steps[0])
        b, u = np.unravel_index(
            int(np.argmax(np.where(np.isfinite(error[:, t]), error[:, t], np.inf))), error[:, t].shape
        )
        result.first_divergence = (
            f"outputs at step {t} (batch {b}, unit {u}): got {out64[b, t, u]:.6g}, expected {expected[b, t, u]:.6g}"
        )
    else:
        name = spec.state_names[next(k for k, s in enumerate(state_bad) if s.any())]
        result.first_divergence = f"final state {name!r} (outputs agree at every step)"
    if diagnose:
        result.diagnosis = diagnose_mistakes(spec, golden, outputs, final, tol)
    return result


def known_mistakes(spec: Spec):
    """Yield ``(label, run)``: float64 runs of ``spec`` with one known porting mistake each."""
    from .api import generate_source, load_generated

    oracle = _oracle(spec, load_generated(spec, "numpy"))
    names = set(spec.param_names)
    gates = sorted({n[2:] for n in names if n.startswith("W_") and f"b_{n[2:]}" in names})
    for a, b in itertools.combinations(gates, 2):

        def swapped(p, x, s, m, a=a, b=b):
            q = dict(p)
            for kind in ("W", "U", "b"):
                if f"{kind}_{a}" in q and f"{kind}_{b}" in q and q[f"{kind}_{a}"].shape == q[f"{kind}_{b}"].shape:
                    q[f"{kind}_{a}"], q[f"{kind}_{b}"] = p[f"{kind}_{b}"], p[f"{kind}_{a}"]
            return oracle(q, x, s, m)

        yield f"gates {a!r} and {b!r} swapped (a gate-order mismatch between layouts)", swapped
    for name in sorted(n for n in names if n.startswith("b_")):
        yield f"bias {name} dropped", lambda p, x, s, m, name=name: oracle({**p, name: np.zeros_like(p[name])}, x, s, m)
    for name in sorted(n for n in names if n.startswith("U_")):
        yield (
            f"recurrent term {name} missing",
            lambda p, x, s, m, name=name: oracle({**p, name: np.zeros_like(p[name])}, x, s, m),
        )
    eps = spec.numerics.layer_norm_epsilon
    if eps is not None:
        for other, who in ((1e-5, "torch's default"), (1e-6, "Flax's default")):
            text = spec.dumps().replace(f"layer_norm_epsilon = {eps!r}", f"layer_norm_epsilon = {other!r}")
            yield (
                f"LayerNorm epsilon {other:g} ({who}) instead of {eps:g}",
                _oracle(spec, load_generated(loads_spec(text, source=f"<{spec.name}, epsilon {other}>"), "numpy")),
            )
    for other_name in list_specs():
        o = load_spec(other_name)
        if (
            other_name != spec.name
            and o.state_names == spec.state_names
            and set(o.param_names) <= names | {"U_s"}
            and len(set(o.param_names) & names) > len(names) // 2
        ):

            def as_other(p, x, s, m, o=o):
                shapes = o.parameter_shapes(x.shape[-1], s[0].shape[-1])
                q = {k: p[k] if k in p else np.zeros(shapes[k]) for k in o.param_names}  # absent: a zero term
                return _oracle(o)(q, x, s, m)

            yield f"computes the {other_name!r} cell instead", as_other
    source = generate_source(spec, "numpy")
    uses_softmax = any(n.op == "softmax" for n in lower(spec).nodes)
    code_mutants = {
        "softmax over the batch axis instead of the units axis": (
            "return e / e.sum(axis=-1, keepdims=True)",
            "return e / e.sum(axis=0, keepdims=True)",
        ),
        "Keras 2 hard_sigmoid (clip(0.2 x + 0.5, 0, 1)) instead of the logistic": (
            "return 0.5 * np.tanh(0.5 * z) + 0.5",
            "return np.clip(0.2 * z + 0.5, 0.0, 1.0)",
        ),
        "Keras 3 hard_sigmoid (relu6(x + 3) / 6) instead of the logistic": (
            "return 0.5 * np.tanh(0.5 * z) + 0.5",
            "return np.clip(z + 3.0, 0.0, 6.0) / 6.0",
        ),
    }
    for label, (old, new) in code_mutants.items():
        if old in source and ("softmax" in label) == uses_softmax:
            module = types.ModuleType("novolstm_mistake")
            exec(compile(source.replace(old, new), f"<{label}>", "exec"), module.__dict__)
            yield label, _oracle(spec, module)


def diagnose_mistakes(spec: Spec, golden: GoldenCase, outputs, final, tol) -> list[str]:
    """Labels of the known mistakes whose outputs match the implementation's."""
    c = golden.case
    found = []
    if len(final) > 1 and all(f.shape == e.shape for f, e in zip(final[::-1], golden.state)):
        if all(np.allclose(f, e, atol=tol.atol, rtol=tol.rtol) for f, e in zip(final[::-1], golden.state)):
            found.append(f"final state returned in the order {spec.state_names[::-1]} instead of {spec.state_names}")
    for label, run in known_mistakes(spec):
        try:
            alt, alt_final = run(c.params, c.x, c.state, c.mask)
        except (ValueError, KeyError):
            continue
        if np.allclose(outputs, alt, atol=tol.atol, rtol=tol.rtol) and not np.allclose(
            alt, golden.outputs, atol=tol.atol, rtol=tol.rtol
        ):
            found.append(f"reproduced by: {label}")
    return found
