"""Gradients of the JAX cells (the generated backward pass, and JAX's own autodiff through
lax.scan with remat=False) against the NumPy backend's generated backward pass: inputs, initial
state and every parameter; and the transformations a JAX user relies on: jit, grad, vmap."""

from __future__ import annotations

import contextlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings, target
from hypothesis import strategies as st

import novolstm
from novolstm.testing import PROPERTY_CELLS, assert_close, cases, random_params, tolerance

CELLS = list(PROPERTY_CELLS)  # every cell: tests/test_backends.py, tests/test_conformance.py


def x64(dtype):
    return jax.enable_x64(True) if np.dtype(dtype) == np.float64 else contextlib.nullcontext()


def numpy_backward(cell, params, x, state, mask, g_out, g_state):
    m = novolstm.load_generated(cell, "numpy")
    _, _, tape = m.forward(params, x, state, mask, keep_tape=True)
    return m.backward(params, tape, g_out, g_state)


def jax_backward(cell, params, x, state, mask, g_out, g_state, dtype, unroll=1):
    m = novolstm.load_generated(cell, "jax")
    with x64(dtype):
        cast = lambda a: jnp.asarray(a, dtype)  # noqa: E731

        @jax.jit
        def vjp(params, x, state, g_out, g_state):
            _, pullback = jax.vjp(lambda p, x, s: m.sequence(p, x, s, mask, unroll=unroll), params, x, state)
            return pullback((g_out, g_state))

        g_params, g_x, g_state0 = vjp(
            jax.tree_util.tree_map(cast, params),
            cast(x),
            tuple(map(cast, state)),
            cast(g_out),
            tuple(map(cast, g_state)),
        )
        return np.asarray(g_x), tuple(np.asarray(g) for g in g_state0), {k: np.asarray(v) for k, v in g_params.items()}


def compare(cell, case_params, x, state, mask, dtype, rng, unroll=1):
    B, T, _ = x.shape
    H = state[0].shape[-1]
    g_out = rng.normal(size=(B, T, H))
    g_state = tuple(rng.normal(size=(B, H)) for _ in state)
    want_x, want_state, want_params = numpy_backward(cell, case_params, x, state, mask, g_out, g_state)
    got_x, got_state, got_params = jax_backward(cell, case_params, x, state, mask, g_out, g_state, dtype, unroll)
    tol = tolerance(dtype, T, kind="gradients")
    worst = assert_close(got_x, want_x, tol, what=f"{cell} d/dx")
    for name, got, want in zip(novolstm.load_spec(cell).state_names, got_state, want_state):
        worst = max(worst, assert_close(got, want, tol, what=f"{cell} d/d{name}0"))
    assert sorted(got_params) == sorted(want_params)
    for name in want_params:
        worst = max(worst, assert_close(got_params[name], want_params[name], tol, what=f"{cell} d/d{name}"))
    return worst


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("dtype", ["float64", "float32"])
@settings(max_examples=6)
@given(data=st.data())
def test_gradients_match_numpy_backward(cell, dtype, data):
    case = data.draw(cases(cell, scales=(0.05, 0.3, 1.0)))
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    state = case.state or tuple(
        np.zeros((case.x.shape[0], case.params[novolstm.load_spec(cell).params[0].name].shape[-1]))
        for _ in novolstm.load_spec(cell).state_names
    )
    target(compare(cell, case.params, case.x, state, case.mask, dtype, rng), label=f"{cell} {dtype}")


@pytest.mark.parametrize("cell", CELLS)
def test_gradients_with_mask_and_unroll(cell):
    rng = np.random.default_rng(7)
    spec = novolstm.load_spec(cell)
    params = random_params(spec, 4, 5, rng)
    x = rng.normal(size=(3, 10, 4))
    state = tuple(rng.normal(size=(3, 5)) for _ in spec.state_names)
    mask = rng.random((3, 10)) < 0.6
    mask[0, :3] = False
    compare(cell, params, x, state, mask, "float64", rng, unroll=3)


# ---------------------------------------------------------------- jit, grad, vmap


def lstm_problem(seed=0, batch=4, steps=6):
    rng = np.random.default_rng(seed)
    params = {k: jnp.asarray(v, jnp.float32) for k, v in random_params("novolstm", 3, 5, rng).items()}
    x = jnp.asarray(rng.normal(size=(batch, steps, 3)), jnp.float32)
    return params, x


def test_jit_equals_eager():
    m = novolstm.load_generated("novolstm", "jax")
    params, x = lstm_problem()
    eager, _ = m.sequence(params, x)
    jitted, _ = jax.jit(m.sequence)(params, x)
    np.testing.assert_allclose(np.asarray(jitted), np.asarray(eager), rtol=1e-6, atol=1e-6)


def test_vmap_over_the_batch_equals_the_batched_run():
    m = novolstm.load_generated("novolstm", "jax")
    params, x = lstm_problem()
    mask = jnp.asarray(np.random.default_rng(1).random(x.shape[:2]) < 0.7)
    batched, (h, c) = m.sequence(params, x, mask=mask)
    per_example, (hv, cv) = jax.jit(jax.vmap(m.sequence, in_axes=(None, 0, None, 0)))(params, x, None, mask)
    np.testing.assert_allclose(np.asarray(per_example), np.asarray(batched), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(cv), np.asarray(c), rtol=1e-5, atol=1e-6)


def test_vmap_over_parameters_is_an_ensemble():
    m = novolstm.load_generated("novolstm", "jax")
    params, x = lstm_problem()
    cell = m.Cell(5)
    stacked = jax.vmap(lambda k: cell.init(k, 3))(jax.random.split(jax.random.key(0), 3))
    outs, _ = jax.jit(jax.vmap(m.sequence, in_axes=(0, None)))(stacked, x)
    for k in range(3):
        one, _ = m.sequence({n: v[k] for n, v in stacked.items()}, x)
        np.testing.assert_allclose(np.asarray(outs[k]), np.asarray(one), rtol=1e-5, atol=1e-6)


def test_grad_of_a_jitted_training_step():
    m = novolstm.load_generated("novolstm", "jax")
    params, x = lstm_problem()
    target = jnp.zeros(x.shape[:2] + (5,))

    @jax.jit
    def train_step(params):
        loss, grads = jax.value_and_grad(lambda p: jnp.mean((m.sequence(p, x)[0] - target) ** 2))(params)
        return loss, jax.tree_util.tree_map(lambda p, g: p - 0.1 * g, params, grads)

    losses = []
    for _ in range(5):
        loss, params = train_step(params)
        losses.append(float(loss))
    assert losses[-1] < losses[0]


def test_per_example_gradients_with_vmap_of_grad():
    m = novolstm.load_generated("lstm", "jax")
    rng = np.random.default_rng(3)
    params = {k: jnp.asarray(v, jnp.float32) for k, v in random_params("lstm", 3, 4, rng).items()}
    x = jnp.asarray(rng.normal(size=(5, 6, 3)), jnp.float32)
    loss = lambda p, xs: m.sequence(p, xs)[0].sum()  # noqa: E731  (xs: one sequence, (time, input))
    per_example = jax.jit(jax.vmap(jax.grad(loss), in_axes=(None, 0)))(params, x)
    total = jax.grad(lambda p: m.sequence(p, x)[0].sum())(params)
    for name in params:
        np.testing.assert_allclose(np.asarray(per_example[name].sum(0)), np.asarray(total[name]), rtol=1e-4, atol=1e-5)


def test_step_gradient_matches_the_sequence_of_one_step():
    m = novolstm.load_generated("gru", "jax")
    rng = np.random.default_rng(4)
    with x64("float64"):
        params = {k: jnp.asarray(v) for k, v in random_params("gru", 3, 4, rng).items()}
        x = jnp.asarray(rng.normal(size=(2, 3)))
        h = (jnp.asarray(rng.normal(size=(2, 4))),)
        g1 = jax.grad(lambda p: m.step(p, h, x)[1].sum())(params)
        g2 = jax.grad(lambda p: m.sequence(p, x[:, None], h)[0].sum())(params)
        for name in params:
            np.testing.assert_allclose(np.asarray(g1[name]), np.asarray(g2[name]), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize(("cell", "reverse"), [("novolstm", True), ("gru", False), ("mgu", True)])
def test_the_generated_backward_pass_equals_jax_autodiff(cell, reverse):
    """remat=True runs the generated backward pass (a custom_vjp), remat=False JAX's transpose of
    the scan: the same gradients, with a mask, reversed, seeded at the outputs and the final
    state (mgu: a step projection of a computed value, f * h)."""
    m = novolstm.load_generated(cell, "jax")
    rng = np.random.default_rng(5)
    with x64("float64"):
        params = {k: jnp.asarray(v) for k, v in random_params(cell, 3, 4, rng).items()}
        x = jnp.asarray(rng.normal(size=(2, 7, 3)))
        state = tuple(jnp.asarray(rng.normal(size=(2, 4))) for _ in m.STATE_NAMES)
        mask = jnp.asarray(rng.random((2, 7)) < 0.7)

        def loss(p, x, s, remat):
            ys, final = m.sequence(p, x, s, mask=mask, reverse=reverse, remat=remat)
            return (ys * jnp.cos(ys)).sum() + sum((f * f).sum() for f in final)

        gradient = jax.jit(jax.grad(loss, argnums=(0, 1, 2)), static_argnums=3)
        grads = [gradient(params, x, state, remat) for remat in (True, False)]
        for a, b in zip(jax.tree_util.tree_leaves(grads[0]), jax.tree_util.tree_leaves(grads[1])):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-12, atol=1e-14)


def test_gradients_of_gradients_through_the_generated_backward_pass():
    """The custom_vjp's backward pass is JAX code, so it differentiates again (a gradient penalty)."""
    m = novolstm.load_generated("novolstm", "jax")
    rng = np.random.default_rng(8)
    with x64("float64"):
        params = {k: jnp.asarray(v) for k, v in random_params("novolstm", 2, 3, rng).items()}
        x = jnp.asarray(rng.normal(size=(2, 4, 2)))

        def penalty(p, remat):
            g = jax.grad(lambda x: m.sequence(p, x, remat=remat)[0].sum())(x)
            return (g * g).sum()

        got, want = (jax.jit(jax.grad(penalty), static_argnums=1)(params, r) for r in (True, False))
        for name in params:
            np.testing.assert_allclose(np.asarray(got[name]), np.asarray(want[name]), rtol=1e-10, atol=1e-13)


def test_forward_mode_with_remat_false_agrees_with_the_generated_backward_pass():
    """docs/jax.md: remat=False takes forward mode (its prologue GEMMs are a custom_jvp), and its
    Jacobian-vector product agrees with the generated backward pass's vector-Jacobian product
    (<g, J t> = <J^T g, t>, parameters and inputs); remat=True, a custom_vjp, refuses it."""
    m = novolstm.load_generated("novolstm", "jax")
    rng = np.random.default_rng(9)
    with x64("float64"):
        params = {k: jnp.asarray(v) for k, v in random_params("novolstm", 3, 4, rng).items()}
        x = jnp.asarray(rng.normal(size=(2, 5, 3)))
        t_params = {k: jnp.asarray(rng.normal(size=v.shape)) for k, v in params.items()}
        t_x, g = jnp.asarray(rng.normal(size=x.shape)), jnp.asarray(rng.normal(size=(2, 5, 4)))

        def outputs(remat):
            return lambda p, x: m.sequence(p, x, remat=remat)[0]

        _, jt = jax.jvp(outputs(False), (params, x), (t_params, t_x))
        _, pullback = jax.vjp(outputs(True), params, x)
        jg_params, jg_x = pullback(g)
        want = (jg_x * t_x).sum() + sum((jg_params[k] * t_params[k]).sum() for k in params)
        np.testing.assert_allclose(float((g * jt).sum()), float(want), rtol=1e-12)
        with pytest.raises(TypeError, match="custom_vjp"):
            jax.jvp(outputs(True), (params, x), (t_params, t_x))


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_vjp_numpy_hook_matches_the_numpy_backend(dtype):
    rng = np.random.default_rng(6)
    params = random_params("novolstm", 3, 4, rng)
    x = rng.normal(size=(2, 5, 3))
    mask = rng.random((2, 5)) < 0.8
    g_out = rng.normal(size=(2, 5, 4))
    want = novolstm.load_generated("novolstm", "numpy").vjp_numpy(params, x, None, mask)[2](g_out, None)
    cast = {k: v.astype(dtype) for k, v in params.items()}
    outputs, _, vjp = novolstm.load_generated("novolstm", "jax").vjp_numpy(cast, x.astype(dtype), None, mask)
    assert outputs.dtype == np.dtype(dtype)
    got = vjp(g_out.astype(dtype), None)
    tol = tolerance(dtype, 5, kind="gradients")
    assert_close(got[0], want[0], tol, what="d/dx")
    for a, b in zip(got[1], want[1]):
        assert_close(a, b, tol, what="d/dstate0")
    for k in want[2]:
        assert_close(got[2][k], want[2][k], tol, what=f"d/d{k}")
