"""The operations beyond the LSTM family's, all in one spec (a spec costs a compilation), on JAX (jax.vjp of the generated step): outputs against the
float64 interpreter, gradients against its central differences
and the domain rule (see tests/test_operations.py for NumPy and the language's rules).
"""

from __future__ import annotations

import jax  # noqa: F401  (a requested backend that cannot load fails here)
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from novolstm.testing import check_domain_rule, check_operation, check_operation_gradients, operation_cases

BACKEND = "jax"


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@settings(max_examples=4)
@given(data=st.data())
def test_every_operation_matches_the_interpreter(dtype, data):
    check_operation(BACKEND, *data.draw(operation_cases(None)), dtype)


@settings(max_examples=2)
@given(data=st.data(), seed=st.integers(0, 2**32 - 1))
def test_every_operations_gradient_matches_finite_differences(data, seed):
    check_operation_gradients(BACKEND, *data.draw(operation_cases(None)), seed)


def test_the_domain_rule():
    check_domain_rule(BACKEND)
