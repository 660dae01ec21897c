"""Every built-in cell on every backend at once: each against the float64 reference AND every
pair of backends against each other, for outputs, final state and gradients.

Collected only when every backend is requested (tox's ``all`` env; tests/conftest.py).
Each Hypothesis case is generated once and run through all backends; the comparisons
between them reuse those results. Tolerances come from the one table in
:mod:`novolstm.testing`: :func:`~novolstm.testing.tolerance` against the reference,
:func:`~novolstm.testing.pairwise_tolerance` between two backends, each side at the
precision it really computes in (:func:`~novolstm.testing.computes_in`).

The reference has no gradients of its own. The gradient anchor is the NumPy backend's
generated backward pass in float64, which tests/test_generated_numpy.py
(test_gradients_match_finite_differences_of_the_reference) checks against central
differences of the independent float64 reference for every cell, input, initial state and
parameter. Every backend with the gradient hook ``vjp_numpy`` is compared with that anchor
and with each other.

Examples per property: the counts below under the ``ci`` profile (30 examples), scaled with
the profile's ``max_examples`` (``thorough`` runs about 33 times as many). The JAX backend
compiles anew for every new shape, which sets these budgets.
"""

from __future__ import annotations

import itertools
import json
import os

import numpy as np
import pytest
from hypothesis import given, settings, target
from hypothesis import strategies as st

import novolstm
from novolstm import reference
from novolstm.testing import Case, assert_close, cases, computes_in, pairwise_tolerance, tolerance

CELLS = novolstm.list_specs()
DTYPES = ["float64", "float32"]
BACKENDS = novolstm.list_backends()  # all of them are requested, or this file is not collected


def examples(ci_count: int) -> int:
    """``ci_count`` examples under the ci profile, in proportion under the others."""
    return max(1, round(ci_count * settings.default.max_examples / 30))


def gradient_backends(cell) -> list[str]:
    """The backends whose generated module has the backend-neutral gradient hook."""
    return [b for b in BACKENDS if hasattr(novolstm.load_generated(cell, b), "vjp_numpy")]


def compare(results: dict, expected: list, dtype: str, steps: int, kind: str, what: str):
    """Check every backend's arrays against ``expected`` and against each other backend's.

    ``results``: backend -> list of ``(label, array)``; ``expected``: the same labels' anchor
    arrays. Returns ``(deviation per backend, deviation per pair)``, the largest absolute
    deviation over all arrays; any one beyond its tolerance fails.
    """
    precision = {b: computes_in(b, dtype) for b in results}
    versus_anchor, pairwise = {}, {}
    for backend, arrays in results.items():
        tol = tolerance(precision[backend], steps, kind)
        versus_anchor[backend] = max(
            assert_close(got, want, tol, what=f"{what} {dtype}: {backend} {label}")
            for (label, got), want in zip(arrays, expected)
        )
    for a, b in itertools.combinations(results, 2):
        tol = pairwise_tolerance(precision[a], precision[b], steps, kind)
        pairwise[a, b] = max(
            assert_close(got_a, got_b, tol, what=f"{what} {dtype}: {a} against {b}, {label}")
            for (label, got_a), (_, got_b) in zip(results[a], results[b])
        )
    return versus_anchor, pairwise


def forward_deviations(cell: str, case: Case, dtype: str):
    """Outputs and final state of every backend through ``novolstm.run``, against the reference and pairwise."""
    spec = novolstm.load_spec(cell)
    labels = ["outputs", *(f"final {name}" for name in spec.state_names)]
    c = case.cast(dtype)
    # The reference on the inputs as every backend receives them (as check_against_reference does).
    want, want_state = reference.run(cell, c.params, c.x, c.state, **case.masking)
    results = {}
    for backend in BACKENDS:
        outputs, state = novolstm.run(spec, c.params, c.x, c.state, backend=backend, **case.masking)
        for label, array in zip(labels, (outputs, *state)):
            assert array.dtype == np.dtype(dtype), f"{cell} on {backend}: {label} is {array.dtype}, asked for {dtype}"
        results[backend] = list(zip(labels, (outputs, *state)))
    return compare(results, [want, *want_state], dtype, case.steps, "outputs", cell)


def gradient_deviations(cell: str, case: Case, dtype: str, seed: int):
    """Gradients with respect to inputs, initial state and every parameter, of every backend
    with ``vjp_numpy``, against the NumPy float64 backward and pairwise."""
    spec = novolstm.load_spec(cell)
    batch, steps, _ = case.x.shape
    units = case.params[spec.params[0].name].shape[-1]
    rng = np.random.default_rng(seed)
    g_out = rng.normal(size=(batch, steps, units))
    g_state = tuple(rng.normal(size=(batch, units)) for _ in spec.state_names)

    def gradients(backend, c: Case):
        _, _, vjp = novolstm.load_generated(spec, backend).vjp_numpy(c.params, c.x, c.state, c.mask)
        g_x, g_state0, g_params = vjp(g_out.astype(c.x.dtype), tuple(g.astype(c.x.dtype) for g in g_state))
        assert sorted(g_params) == sorted(spec.param_names), f"{cell} on {backend}: gradients for {sorted(g_params)}"
        return [
            ("d/dx", g_x),
            *((f"d/d{name}0", g) for name, g in zip(spec.state_names, g_state0)),
            *((f"d/d{name}", g_params[name]) for name in spec.param_names),
        ]

    c = case.cast(dtype)
    # float64 (see the module docstring), on the inputs as every backend receives them.
    anchor = [array for _, array in gradients("numpy", c.cast("float64"))]
    results = {backend: gradients(backend, c) for backend in gradient_backends(cell)}
    return compare(results, anchor, dtype, case.steps, "gradients", f"{cell} gradients")


def record(kind: str, dtype: str, versus_anchor: dict, pairwise: dict) -> None:
    """Let Hypothesis hunt for the worst cases: the largest deviation from the anchor, and between a pair.

    With NOVOLSTM_DEVIATIONS_LOG set to a file, also append every measured deviation to it
    (one JSON line per example): how the figures in docs/numerics.md were measured.
    """
    target(max(versus_anchor.values()), label=f"{kind}: largest deviation from the anchor")
    target(max(pairwise.values()), label=f"{kind}: largest deviation between two backends")
    log = os.environ.get("NOVOLSTM_DEVIATIONS_LOG")
    if log:
        line = {
            "kind": kind,
            "dtype": dtype,
            "anchor": versus_anchor,
            "pairs": {f"{a}-{b}": d for (a, b), d in pairwise.items()},
        }
        with open(log, "a") as fh:
            fh.write(json.dumps(line) + "\n")


def test_every_backend_is_compared():
    assert set(BACKENDS) == {"numpy", "torch", "keras", "jax", "onnx"}
    # onnxruntime is an inference runtime: only it lacks gradients.
    assert gradient_backends("novolstm") == [b for b in BACKENDS if b != "onnx"]


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("dtype", DTYPES)
@settings(max_examples=examples(6))
@given(data=st.data())
def test_all_backends_agree_on_outputs_and_state(cell, dtype, data):
    record("outputs", dtype, *forward_deviations(cell, data.draw(cases(cell)), dtype))


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("dtype", DTYPES)
@settings(max_examples=examples(3))
@given(data=st.data())
def test_all_backends_agree_on_gradients(cell, dtype, data):
    case = data.draw(cases(cell, max_steps=10))
    record("gradients", dtype, *gradient_deviations(cell, case, dtype, data.draw(st.integers(0, 2**32 - 1))))


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("dtype", DTYPES)
@settings(max_examples=examples(1))
@given(data=st.data())
def test_all_backends_agree_over_long_sequences(cell, dtype, data):
    """Up to 100 steps, where rounding error accumulates: the length-keyed tolerance.

    Weights at the scales where the dynamics are not trivial (the short properties cover
    tiny ones), and at least two of everything: under ci this property runs one example,
    and Hypothesis tries the smallest case first."""
    case = data.draw(
        cases(
            cell, max_batch=3, min_steps=40, max_steps=100, max_input=3, max_units=4, scales=(1.0, 0.3, 3.0), min_size=2
        )
    )
    record("long outputs", dtype, *forward_deviations(cell, case, dtype))
    record("long gradients", dtype, *gradient_deviations(cell, case, dtype, data.draw(st.integers(0, 2**32 - 1))))
