"""The generated NumPy backend against the hand-written float64 reference: outputs and gradients."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings, target
from hypothesis import strategies as st

import novolstm
from novolstm import reference
from novolstm.testing import Case, assert_close, cases, check_against_reference, random_params

CELLS = novolstm.list_specs()


def numpy_run(spec):
    module = novolstm.load_generated(spec, "numpy")

    def run(params, x, state, mask):
        outputs, final, _ = module.forward(params, x, state, mask)
        return outputs, final

    return run


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("dtype", ["float64", "float32"])
@given(data=st.data())
def test_forward_matches_reference(cell, dtype, data):
    case = data.draw(cases(cell))
    deviation = check_against_reference(cell, numpy_run(cell), case, dtype)
    target(deviation, label=f"max deviation {cell} {dtype}")


def loss_and_grads(cell, case: Case, g_out, g_state):
    """The generated backward pass: gradients of sum(outputs * g_out) + sum(final * g_state)."""
    module = novolstm.load_generated(cell, "numpy")
    _, _, tape = module.forward(case.params, case.x, case.state, case.mask, keep_tape=True)
    return module.backward(case.params, tape, g_out, g_state)


def reference_loss(cell, params, x, state, mask, g_out, g_state):
    outputs, final = reference.run(cell, params, x, state, mask=mask)
    return float((outputs * g_out).sum() + sum((f * g).sum() for f, g in zip(final, g_state)))


@pytest.mark.parametrize("cell", CELLS)
@settings(max_examples=10)
@given(data=st.data())
def test_gradients_match_finite_differences_of_the_reference(cell, data):
    """Every gradient (inputs, initial state, each parameter) along a random direction,
    against a central difference of the independent float64 reference."""
    case = data.draw(cases(cell, max_steps=8, scales=(0.05, 0.3, 1.0)))
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    spec = novolstm.load_spec(cell)
    batch, steps, _ = case.x.shape
    units = case.params[spec.params[0].name].shape[-1]
    state = case.state or tuple(np.zeros((batch, units)) for _ in spec.state_names)
    case = Case(case.params, case.x, state, case.mask)
    g_out = rng.normal(size=(batch, steps, units))
    g_state = tuple(rng.normal(size=s.shape) for s in state)
    g_x, g_state0, g_params = loss_and_grads(cell, case, g_out, g_state)
    assert sorted(g_params) == sorted(case.params)

    def along(name, value, grad, loss_at):
        direction = rng.normal(size=value.shape)
        eps = 1e-6
        numeric = (loss_at(value + eps * direction) - loss_at(value - eps * direction)) / (2 * eps)
        analytic = float((grad * direction).sum())
        assert abs(numeric - analytic) <= 1e-6 * (1 + abs(analytic)), f"{cell} d/d{name}: {analytic} vs {numeric}"

    L = lambda p=case.params, x=case.x, s=state: reference_loss(cell, p, x, s, case.mask, g_out, g_state)  # noqa: E731
    along("x", case.x, g_x, lambda v: L(x=v))
    for k, name in enumerate(spec.state_names):
        along(f"{name}0", state[k], g_state0[k], lambda v: L(s=state[:k] + (v,) + state[k + 1 :]))
    for name, value in case.params.items():
        along(name, value, g_params[name], lambda v: L(p={**case.params, name: v}))


def test_single_step_cell_and_training():
    """The NumPy cell steps like nn.LSTMCell and trains: loss falls under plain SGD."""
    Cell = novolstm.get_cell("numpy", spec="novolstm")
    cell = Cell(input_size=2, units=4, seed=0)
    h, c = cell(np.ones((3, 2)))
    assert h.shape == (3, 4) and c.shape == (3, 4)
    h1, c1 = cell(np.ones(2))
    assert h1.shape == (4,)
    np.testing.assert_allclose(h1, h[0], rtol=0, atol=0)

    cell = Cell(input_size=2, units=8, seed=0)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(32, 6, 2))
    target = x[:, :, 0].mean(axis=1)  # predict the mean of the first input feature
    readout = rng.normal(size=8) * 0.1
    losses = []
    for _ in range(150):
        outputs, _, vjp = cell.sequence_with_vjp(x)
        err = outputs[:, -1] @ readout - target
        losses.append(float((err**2).mean()))
        g_outputs = np.zeros_like(outputs)
        g_outputs[:, -1] = 2 * err[:, None] * readout[None] / len(err)
        readout -= outputs[:, -1].T @ (2 * err / len(err))
        _, _, grads = vjp(g_outputs)
        for name, g in grads.items():
            cell.params[name] -= g
    assert losses[-1] < 0.1 * losses[0]


def test_float32_cell_stays_float32():
    cell = novolstm.get_cell("numpy", "lstm")(3, 2, dtype="float32")
    outputs, (h, c) = cell.sequence(np.ones((1, 4, 3), np.float32))
    assert outputs.dtype == h.dtype == c.dtype == np.float32
    with pytest.raises(TypeError, match="expected dtype float32"):
        cell.sequence(np.ones((1, 4, 3)))


def test_cell_checks_inputs():
    cell = novolstm.get_cell("numpy", "lstm")(3, 2)
    with pytest.raises(ValueError, match=r"expected shape \(batch, time, 3\)"):
        cell.sequence(np.ones((1, 4, 5)))
    with pytest.raises(ValueError, match=r"state h: expected shape \(1, 2\)"):
        cell.sequence(np.ones((1, 4, 3)), state=(np.zeros((1, 3)), np.zeros((1, 2))))
    with pytest.raises(ValueError, match=r"params\['U_i'\]: expected shape \(2, 2\)"):
        novolstm.get_cell("numpy", "lstm")(3, 2, params={**cell.params, "U_i": np.zeros((3, 3))})


def test_one_unit_layer_norm_gives_beta():
    """With one unit, LayerNorm outputs beta and softmax outputs 1: the gate is beta_i."""
    spec = novolstm.load_spec("novolstm")
    params = random_params(spec, 2, 1, np.random.default_rng(3))
    x = np.random.default_rng(4).normal(size=(2, 3, 2))
    ours, _ = novolstm.run(spec, params, x)
    theirs, _ = reference.run("novolstm", params, x)
    assert_close(ours, theirs)
