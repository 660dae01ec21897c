"""Every requested backend (NOVOLSTM_BACKENDS) through the backend-neutral novolstm.run,
against the float64 reference, for every built-in cell."""

from __future__ import annotations

import pytest
from hypothesis import given, settings, target
from hypothesis import strategies as st

import novolstm
from novolstm.testing import cases, check_against_reference


@pytest.mark.parametrize("cell", novolstm.list_specs())
@pytest.mark.parametrize("dtype", ["float64", "float32"])
@settings(max_examples=15)
@given(data=st.data())
def test_backend_matches_reference(backend, cell, dtype, data, computes_in):
    case = data.draw(cases(cell))
    spec = novolstm.load_spec(cell)

    def run(params, x, state, mask):
        return novolstm.run(spec, params, x, state, backend=backend, mask=mask)

    target(check_against_reference(cell, run, case, dtype, computes_in(dtype)), label=f"{backend} {cell} {dtype}")
