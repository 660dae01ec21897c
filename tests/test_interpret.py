"""The spec interpreter (oracle #2) against the hand-written reference (oracle #1).

The two share nothing but NumPy: the reference is written by hand per cell, the
interpreter walks any spec's parsed expressions. On the built-in cells they must agree
to rounding (float64, 1e-13), masks and lengths included.
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import novolstm
from novolstm import interpret, reference
from novolstm.testing import Tolerance, assert_close, cases

BUILTIN = sorted(reference.CELLS)
ORACLES_AGREE = Tolerance(atol=1e-13, rtol=1e-13)


def test_every_builtin_spec_has_a_reference():
    assert BUILTIN == novolstm.list_specs()


@pytest.mark.parametrize("cell", BUILTIN)
@given(data=st.data())
def test_interpreter_matches_reference(cell, data):
    case = data.draw(cases(cell, max_steps=20, scales=(0.05, 0.3, 1.0, 3.0)))
    outputs, state = interpret.run(cell, case.params, case.x, case.state, **case.masking)
    expected, expected_state = reference.run(cell, case.params, case.x, case.state, mask=case.mask)
    assert outputs.dtype == np.float64
    assert_close(outputs, expected, ORACLES_AGREE, what=f"{cell} outputs")
    assert len(state) == len(expected_state)
    for name, got, want in zip(reference.CELLS[cell].state_names, state, expected_state):
        assert_close(got, want, ORACLES_AGREE, what=f"{cell} state {name}")


@pytest.mark.parametrize("cell", BUILTIN)
def test_step_matches_reference(cell, rng):
    spec = novolstm.load_spec(cell)
    params = {k: rng.normal(size=v) for k, v in spec.parameter_shapes(3, 4).items()}
    x = rng.normal(size=(2, 3))
    state = tuple(rng.normal(size=(2, 4)) for _ in spec.state_names)
    (new_state, y), (want_state, want_y) = (
        interpret.step(cell, params, x, state),
        reference.step(cell, params, x, state),
    )
    assert_close(y, want_y, ORACLES_AGREE, what="y")
    for got, want in zip(new_state, want_state):
        assert_close(got, want, ORACLES_AGREE, what="state")


def test_masked_steps_keep_the_state_and_output_zeros(rng):
    params = novolstm.init_params("gru", input_size=2, units=3, seed=4)
    x = rng.normal(size=(2, 5, 2))
    state = (rng.normal(size=(2, 3)),)
    mask = np.array([[True, False, False, True, False], [False] * 5])
    outputs, (h,) = interpret.run("gru", params, x, state, mask=mask)
    assert np.all(outputs[0, [1, 2, 4]] == 0.0) and np.all(outputs[1] == 0.0)
    assert np.array_equal(h[1], state[0][1])  # a row that never steps keeps its initial state
    assert np.array_equal(h[0], outputs[0, 3])  # the last real step's state


def test_does_not_alias_or_modify_the_callers_arrays(rng):
    params = novolstm.init_params("lstm", input_size=2, units=3, seed=0)
    state = (rng.normal(size=(1, 3)), rng.normal(size=(1, 3)))
    before = tuple(s.copy() for s in state)
    _, final = interpret.run("lstm", params, rng.normal(size=(1, 1, 2)), state, mask=np.zeros((1, 1), bool))
    assert all(f is not s for f, s in zip(final, state))
    assert all(np.array_equal(s, b) for s, b in zip(state, before))


def test_pinned_numerics_hold_at_extreme_inputs():
    with np.errstate(all="raise"):  # no overflow, no invalid value
        assert interpret.sigmoid(np.array([-800.0, 800.0])).tolist() == [0.0, 1.0]
        assert np.allclose(interpret.softmax(np.array([[900.0, 900.0 + np.log(3.0)]])), [[0.25, 0.75]])
    # Population variance (divide by n), epsilon inside the square root.
    z = np.array([[0.0, 2.0]])
    assert np.allclose(interpret.layer_norm(z, np.ones(2), np.zeros(2), 1.0), [[-1 / np.sqrt(2), 1 / np.sqrt(2)]])


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda p, x: interpret.run("lstm", p, x[0]), "x: expected shape"),
        (lambda p, x: interpret.run("lstm", {k: v for k, v in p.items() if k != "W_i"}, x), "missing \\['W_i'\\]"),
        (lambda p, x: interpret.run("lstm", p, x, state=(np.zeros((2, 3)),)), "state: expected 2 arrays"),
        (lambda p, x: interpret.run("lstm", p, x, lengths=np.array([1, 9])), "lengths: expected values in"),
        (lambda p, x: interpret.run("lstm", p, x, mask=np.ones((2, 4)), lengths=np.array([1, 2])), "not both"),
        (lambda p, x: interpret.run("lstm", p, np.where(x > 0, np.nan, x)), "non-finite"),
        (lambda p, x: interpret.step("lstm", p, x), "x_t: expected shape"),
    ],
)
def test_bad_input_is_refused_by_name(call, message, rng):
    params = novolstm.init_params("lstm", input_size=2, units=3)
    with pytest.raises(ValueError, match=message):
        call(params, rng.normal(size=(2, 4, 2)))


def test_shares_nothing_with_the_compiler(tmp_path):
    code = (
        "import sys, novolstm.interpret; "
        "bad = sorted(m for m in sys.modules if m.startswith(('novolstm.ir', 'novolstm.passes', 'novolstm.autodiff',"
        " 'novolstm.codegen', 'novolstm.backends', 'novolstm.reference', 'novolstm.api'))); print(bad)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=tmp_path).stdout
    assert out.strip() == "[]"
