"""The operations beyond the LSTM family's (division, exp, log, sqrt, abs, softplus,
log_sigmoid, gelu, the two hard sigmoids, maximum, minimum, clip) on NumPy: the
language's rules (literal clip bounds, the domain rule) and, per operation, outputs against
the float64 interpreter and gradients against its central differences.

The other backends' counterparts are tests/test_<backend>_operations.py; all share
``check_operation``, ``check_operation_gradients`` and ``check_domain_rule`` (novolstm.testing).
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
    check_domain_rule,
    check_operation,
    check_operation_gradients,
    operation_cases,
)

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
