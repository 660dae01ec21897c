"""The operations beyond the LSTM family's on PyTorch (its generated backward): per operation, outputs against the
float64 interpreter, gradients against its central differences
and the domain rule (see tests/test_operations.py for NumPy and the language's rules).
"""

from __future__ import annotations

import pytest
import torch  # noqa: F401  (a requested backend that cannot load fails here)
from hypothesis import given, settings
from hypothesis import strategies as st

from novolstm.testing import (
    OPERATION_SPECS,
    check_domain_rule,
    check_operation,
    check_operation_gradients,
    operation_cases,
)

BACKEND = "torch"
OPERATIONS = sorted(OPERATION_SPECS)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("op", OPERATIONS)
@settings(max_examples=2)
@given(data=st.data())
def test_each_operation_matches_the_interpreter(op, dtype, data):
    check_operation(BACKEND, *data.draw(operation_cases(op)), dtype)


@pytest.mark.parametrize("op", OPERATIONS)
@settings(max_examples=2)
@given(data=st.data(), seed=st.integers(0, 2**32 - 1))
def test_each_operations_gradient_matches_finite_differences(op, data, seed):
    check_operation_gradients(BACKEND, *data.draw(operation_cases(op)), seed)


def test_the_domain_rule():
    check_domain_rule(BACKEND)
