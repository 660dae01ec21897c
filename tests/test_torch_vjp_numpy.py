"""The backend-neutral gradient hook of the torch backend equals the NumPy backend's generated backward."""

from __future__ import annotations

import numpy as np
import pytest

import novolstm
from novolstm.testing import assert_close, random_params, tolerance


@pytest.mark.parametrize("cell", novolstm.list_specs())
def test_vjp_numpy_matches_numpy_backward(cell):
    spec = novolstm.load_spec(cell)
    rng = np.random.default_rng(3)
    params = random_params(spec, 3, 4, rng)
    x = rng.normal(size=(2, 5, 3))
    mask = np.ones((2, 5), bool)
    mask[1, 3:] = False
    state = tuple(rng.normal(size=(2, 4)) for _ in spec.state_names)
    g_out, g_state = rng.normal(size=(2, 5, 4)), tuple(rng.normal(size=(2, 4)) for _ in spec.state_names)
    ours = novolstm.load_generated(spec, "torch").vjp_numpy(params, x, state, mask)
    theirs = novolstm.load_generated(spec, "numpy").vjp_numpy(params, x, state, mask)
    tol = tolerance("float64", kind="gradients")
    assert_close(ours[0], theirs[0], tol, what="outputs")
    g_ours, g_theirs = ours[2](g_out, g_state), theirs[2](g_out, g_state)
    assert_close(g_ours[0], g_theirs[0], tol, what="g_x")
    for a, b in zip(g_ours[1], g_theirs[1]):
        assert_close(a, b, tol, what="g_state0")
    for name in spec.param_names:
        assert_close(g_ours[2][name], g_theirs[2][name], tol, what=f"g_{name}")
