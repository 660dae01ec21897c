"""The parallel scan of linear recurrences in the generated JAX modules: sequence runs minGRU,
minLSTM and any random linear recurrence (random names) as jax.lax.associative_scan, and only
those; it equals jax.lax.scan over the steps (scan=False) in outputs, final state and jax.grad,
with masks, initial states and reverse, in float64 to 1e-12; in float32 at T = 4096 it stays
within the tolerance table of the float64 reference."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import novolstm
from novolstm import reference
from novolstm.testing import (
    assert_close,
    assert_scan_equals_loop,
    cases,
    linear_spec_texts,
    nonlinear_variant,
    spec_texts,
    tolerance,
)

LINEAR = ("mingru", "minlstm")


def run_both(module, case, reverse):
    """(scan, loop): outputs, final state and jax.grad of a loss of both, in float64."""
    mask = None if case.mask is None else jnp.asarray(case.mask)
    results = []
    with jax.enable_x64(True):
        params = {k: jnp.asarray(v) for k, v in case.params.items()}
        x = jnp.asarray(case.x)
        state = None if case.state is None else tuple(jnp.asarray(s) for s in case.state)
        for scan in (True, False):

            def loss(params, x, state, scan=scan):
                outputs, final = module.sequence(params, x, state, mask, reverse=reverse, scan=scan)
                weights = jnp.linspace(-1.0, 2.0, outputs.size).reshape(outputs.shape)
                return (outputs * weights).sum() + sum((k + 1.5) * (f * f).sum() for k, f in enumerate(final)), (
                    outputs,
                    final,
                )

            (_, (outputs, final)), grads = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True))(
                params, x, state
            )
            results.append(
                (np.asarray(outputs), [np.asarray(f) for f in final], [np.asarray(g) for g in jax.tree.leaves(grads)])
            )
    return results


# Few examples: each one compiles the scan, the loop and both gradients for its shapes.
@pytest.mark.parametrize("cell", LINEAR)
@settings(max_examples=4, deadline=None)
@given(reverse=st.booleans(), data=st.data())
def test_the_scan_equals_the_loop_with_its_gradients_in_float64(cell, reverse, data):
    case = data.draw(cases(cell, min_steps=1, max_steps=100))
    assert_scan_equals_loop(*run_both(novolstm.load_generated(cell, "jax"), case, reverse))


@settings(max_examples=3, deadline=None)
@given(text=linear_spec_texts(), reverse=st.booleans(), data=st.data())
def test_random_linear_recurrences_whatever_their_names_run_the_scan_and_equal_the_loop(text, reverse, data):
    spec = novolstm.loads_spec(text)
    module = novolstm.load_generated(spec, "jax")
    assert module.LINEAR_SCAN is not None
    case = data.draw(cases(spec, min_steps=1, max_steps=80))
    assert_scan_equals_loop(*run_both(module, case, reverse))


@settings(max_examples=3, deadline=None)
@given(text=st.one_of(spec_texts(max_states=2, max_intermediates=2), linear_spec_texts().map(nonlinear_variant)))
def test_a_spec_that_is_not_a_linear_recurrence_never_runs_the_scan(text):
    spec = novolstm.loads_spec(text)
    assert novolstm.scan.linear_recurrence(spec) is None
    module = novolstm.load_generated(spec, "jax")
    assert module.LINEAR_SCAN is None
    params = novolstm.init_params(spec, 2, 3, dtype="float32")
    with pytest.raises(ValueError, match="scan=True: spec .* is not a linear recurrence"):
        module.sequence(params, np.ones((1, 2, 2), np.float32), scan=True)


@pytest.mark.parametrize("cell", LINEAR)
def test_sequence_runs_the_associative_scan_with_scan_true_and_jax_lax_scan_on_the_cpu(cell, monkeypatch):
    module = novolstm.load_generated(cell, "jax")
    calls = []
    real = jax.lax.associative_scan
    monkeypatch.setattr(jax.lax, "associative_scan", lambda *a, **k: calls.append(1) or real(*a, **k))
    params = novolstm.init_params(cell, 3, 4, dtype="float32")
    x = np.ones((2, 5, 3), np.float32)
    module.sequence(params, x, scan=False)
    module.sequence(params, x)
    assert not calls and jax.default_backend() == "cpu"  # auto, on the CPU: jax.lax.scan
    module.sequence(params, x, scan=True)
    assert calls
    with pytest.raises(ValueError, match="scan: expected None"):
        module.sequence(params, x, scan="yes")


@pytest.mark.parametrize("cell", LINEAR)
def test_the_float32_scan_at_4096_steps_is_within_the_tolerance_table(cell):
    rng = np.random.default_rng(4096)
    module = novolstm.load_generated(cell, "jax")
    params = novolstm.init_params(cell, input_size=4, units=8, seed=3)
    x = rng.normal(size=(3, 4096, 4))
    mask = rng.random((3, 4096)) > 0.1
    expected, expected_final = reference.run(cell, params, x, mask=mask)
    p32 = {k: jnp.asarray(v, jnp.float32) for k, v in params.items()}

    def loss(p, x, scan):
        outputs, (final,) = module.sequence(p, x, mask=jnp.asarray(mask), scan=scan)
        return outputs.sum() + final.sum(), (outputs, final)

    # One compilation for outputs and gradient: eager, the associative scan over 4096 steps
    # dispatches and compiles its many slices one by one.
    gradient = jax.jit(jax.value_and_grad(loss, has_aux=True), static_argnums=2)
    (_, (outputs, final)), g32 = gradient(p32, jnp.asarray(x, jnp.float32), True)
    assert outputs.dtype == jnp.float32
    tol = tolerance("float32", 4096)
    assert_close(np.asarray(outputs), expected, tol, what=f"{cell} float32 scan outputs")
    assert_close(np.asarray(final), expected_final[0], tol, what=f"{cell} float32 scan final state")
    with jax.enable_x64(True):  # the gradient against the float64 loop's
        _, g64 = gradient({k: jnp.asarray(v) for k, v in params.items()}, jnp.asarray(x), False)
        assert_close(
            np.asarray(g32["W_h"]),
            np.asarray(g64["W_h"]),
            tolerance("float32", 4096, "gradients"),
            what=f"{cell} gradient",
        )
