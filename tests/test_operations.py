"""The operations beyond the LSTM family's (division, exp, log, sqrt, abs, softplus,
log_sigmoid, gelu, the two hard sigmoids, maximum, minimum, clip) on NumPy: the
language's rules (literal clip bounds, the domain rule) and, per operation, outputs against
the float64 interpreter and gradients against its central differences.

The other backends' counterparts are tests/test_<backend>_operations.py; they share
``check_operation`` and ``check_domain_rule`` from here through novolstm.testing's specs.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import novolstm
from novolstm import interpret
from novolstm.errors import SpecError
from novolstm.testing import (
    OPERATION_SPECS,
    check_against_interpreter,
    check_gradients_against_interpreter,
    check_gradients_close,
    computes_in,
    operation_cases,
)

DOMAIN_SPEC = """
spec_version = 1
name = "domain"
description = "log, sqrt and a division on values that reach zero and below."
input = "x"
output = "y"
state = { h = "h_next", c = "c_next" }
params = { W = { shape = ["input", "units"], init = "glorot_uniform" } }
equations = { k = "x @ W", y = "log(k)", h_next = "sqrt(k)", c_next = "1 / (k * k)" }
"""


def check_operation(backend: str, spec, case, dtype: str) -> float:

    def run(params, x, state, mask):
        return novolstm.run(spec, params, x, state, backend=backend, mask=mask)

    return check_against_interpreter(spec, run, case, dtype, computes_in(backend, dtype))


def check_operation_gradients(backend: str, spec, case, seed: int) -> None:
    vjp_numpy = novolstm.load_generated(spec, backend).vjp_numpy
    if computes_in(backend, "float64") == "float64":
        anchor = check_gradients_against_interpreter(spec, vjp_numpy, case, seed)
    else:
        anchor = check_gradients_against_interpreter(spec, novolstm.load_generated(spec, "numpy").vjp_numpy, case, seed)
    check_gradients_close(spec, vjp_numpy, case, anchor, seed, "float32", computes_in(backend, "float32"))


def check_domain_rule(backend: str, dtype: str = "float64") -> None:
    """log 0 = -inf, log of a negative = nan, sqrt of a negative = nan, 1 / 0 = inf: as the interpreter."""
    spec = novolstm.loads_spec(DOMAIN_SPEC)
    params = {"W": np.array([[1.0, -1.0, 0.5]], dtype)}
    x = np.array([[[0.0]], [[2.0]], [[-3.0]]], dtype)
    expected, expected_state = interpret.run(spec, {"W": params["W"].astype(np.float64)}, x.astype(np.float64))
    assert np.isneginf(expected[0, 0]).all() and np.isnan(expected[2, 0, 0]) and np.isposinf(expected_state[1][0]).all()
    module = novolstm.load_generated(spec, backend)
    outputs, state = module.run_numpy(params, x, None, None)
    np.testing.assert_allclose(np.asarray(outputs, np.float64), expected, rtol=1e-6, atol=0)
    for got, want in zip(state, expected_state):
        np.testing.assert_allclose(np.asarray(got, np.float64), want, rtol=1e-6, atol=0)


OPERATIONS = sorted(OPERATION_SPECS)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("op", OPERATIONS)
@settings(max_examples=4)
@given(data=st.data())
def test_each_operation_matches_the_interpreter(op, dtype, data):
    check_operation("numpy", *data.draw(operation_cases(op)), dtype)


@pytest.mark.parametrize("op", OPERATIONS)
@settings(max_examples=4)
@given(data=st.data(), seed=st.integers(0, 2**32 - 1))
def test_each_operations_gradient_matches_finite_differences(op, data, seed):
    check_operation_gradients("numpy", *data.draw(operation_cases(op)), seed)


def test_every_operation_has_a_spec_and_an_interpreter_rule():
    from novolstm.expr import FUNCTIONS

    beyond = set(FUNCTIONS) - {"sigmoid", "tanh", "relu", "softmax", "layer_norm"}
    assert beyond <= set(OPERATION_SPECS), beyond - set(OPERATION_SPECS)
    assert set(FUNCTIONS) - {"layer_norm"} <= set(interpret._UNARY)


def test_the_domain_rule_on_numpy():
    check_domain_rule("numpy")


@pytest.mark.parametrize(
    "body, message",
    [
        ("clip(a, b, 1)", "numeric literals"),
        ("clip(a, 1, -1)", "lo < hi"),
        ("maximum(b, 0.5)", "batch of units-wide rows"),
        ("exp(b)", "batch of units-wide rows"),
    ],
)
def test_operations_refuse_what_they_cannot_compute(body, message):
    text = OPERATION_SPECS["clip"].replace('"tanh(clip(2 * a, -0.5, 0.75) + k)"', f'"tanh({body} + k + a)"')
    with pytest.raises(SpecError, match=message):
        novolstm.loads_spec(text)


def test_the_hard_sigmoids_are_the_keras_functions_they_are_named_after():
    z = np.linspace(-4.0, 4.0, 33)
    keras2 = interpret._UNARY["keras2_hard_sigmoid"](z)
    keras3 = interpret._UNARY["hard_sigmoid"](z)
    assert keras2[z <= -2.5].max() == 0.0 and keras2[z >= 2.5].min() == 1.0  # slope 0.2
    assert keras3[z <= -3].max() == 0.0 and keras3[z >= 3].min() == 1.0 and keras3[z == 1.5][0] == 0.75  # slope 1/6
