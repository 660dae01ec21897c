"""The Keras backend's gradient hook (vjp_numpy, through the autodiff of the backend Keras
runs on) against the NumPy backend's generated backward pass, and training with it.

The NumPy backward is the anchor because it is itself checked against central differences
of the independent float64 reference (tests/test_generated_numpy.py,
test_gradients_match_finite_differences_of_the_reference).
"""

from __future__ import annotations

import json

import numpy as np
import pytest

import novolstm
from novolstm.cli import main
from novolstm.evaluation import TASKS, train
from novolstm.testing import assert_close, computes_in, random_params, tolerance


def numpy_gradients(spec, params, x, state, mask, g_out, g_state):
    outputs, final, vjp = novolstm.load_generated(spec, "numpy").vjp_numpy(params, x, state, mask)
    return outputs, final, vjp(g_out, g_state)


@pytest.mark.parametrize("cell", novolstm.list_specs())
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_vjp_numpy_matches_numpy_backward(cell, dtype):
    spec = novolstm.load_spec(cell)
    rng = np.random.default_rng(11)
    B, T, I, H = 3, 6, 3, 4
    params = random_params(spec, I, H, rng)
    x = rng.normal(size=(B, T, I))
    mask = rng.random((B, T)) < 0.7
    mask[1] = np.arange(T) < 4  # right-padded
    mask[2] = False  # a row that never steps: its gradients flow only through the state
    state = tuple(rng.normal(size=(B, H)) for _ in spec.state_names)
    g_out, g_state = rng.normal(size=(B, T, H)), tuple(rng.normal(size=(B, H)) for _ in spec.state_names)
    want_out, want_final, want = numpy_gradients(spec, params, x, state, mask, g_out, g_state)

    cast = lambda a: np.asarray(a, dtype)  # noqa: E731
    outputs, final, vjp = novolstm.load_generated(spec, "keras").vjp_numpy(
        {k: cast(v) for k, v in params.items()}, cast(x), tuple(map(cast, state)), mask
    )
    assert outputs.dtype == np.dtype(dtype) and all(s.dtype == np.dtype(dtype) for s in final)
    tol = tolerance(computes_in("keras", dtype), T)
    assert_close(outputs, want_out, tol, what=f"{cell} outputs")
    for name, got, expected in zip(spec.state_names, final, want_final):
        assert_close(got, expected, tol, what=f"{cell} final {name}")

    g_x, g_state0, g_params = vjp(cast(g_out), tuple(map(cast, g_state)))
    tol = tolerance(computes_in("keras", dtype), T, kind="gradients")
    assert_close(g_x, want[0], tol, what=f"{cell} d/dx")
    assert not g_x[2].any(), "a row that never steps has no gradient with respect to its inputs"
    for name, got, expected in zip(spec.state_names, g_state0, want[1]):
        assert_close(got, expected, tol, what=f"{cell} d/d{name}0")
    assert sorted(g_params) == sorted(spec.param_names)
    for name in spec.param_names:
        assert_close(g_params[name], want[2][name], tol, what=f"{cell} d/d{name}")


def test_vjp_numpy_defaults_zero_state_and_zero_cotangents():
    spec = novolstm.load_spec("novolstm")
    rng = np.random.default_rng(12)
    params = random_params(spec, 2, 3, rng)
    x = rng.normal(size=(2, 4, 2))
    g_out = rng.normal(size=(2, 4, 3))
    _, _, vjp = novolstm.load_generated(spec, "keras").vjp_numpy(params, x)
    _, _, want = numpy_gradients(spec, params, x, None, None, g_out, None)
    tol = tolerance(computes_in("keras", "float64"), 4, kind="gradients")
    g_x, g_state0, g_params = vjp(g_out)  # no g_state: the final state weighs nothing
    assert_close(g_x, want[0], tol, what="d/dx")
    for got, expected in zip(g_state0, want[1]):
        assert_close(got, expected, tol, what="d/dstate0")
    assert all(not g.any() for g in vjp()[2].values()), "no cotangents, no gradient"


def test_training_on_keras_follows_the_numpy_run():
    """The first loss is a forward pass of the same weights; then both runs learn."""
    task = TASKS["adding"](6, np.random.default_rng(0))
    on_keras = train("gru", task, seed=0, backend="keras", steps=5, units=4)
    on_numpy = train("gru", task, seed=0, backend="numpy", steps=5, units=4)
    assert_close(
        np.float64(on_keras.curve[0]), np.float64(on_numpy.curve[0]), tolerance(computes_in("keras", "float64"), 6)
    )
    assert np.isfinite(on_keras.curve).all() and on_keras.backend == "keras"


def test_compare_cli_trains_on_keras(tmp_path):
    code = main(
        [
            "compare",
            "--cells",
            "lstm",
            "--tasks",
            "adding",
            "--lengths",
            "4",
            "--seeds",
            "0",
            "--steps",
            "3",
            "--units",
            "3",
            "--backend",
            "keras",
            "--out",
            str(tmp_path),
        ]
    )
    assert code == 0
    rows = json.loads((tmp_path / "results.json").read_text())
    assert [r["backend"] for r in rows] == ["keras"] and len(rows[0]["curve"]) == 3
