"""Parallel scans of linear recurrences (novolstm.scan): the structural analysis, and the scan
against the sequential loop (the NumPy backend) with masks, initial states and reverse, in
float64 to 1e-12 and in float32 at T = 4096 within the tolerance table."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import novolstm
from novolstm import reference, scan
from novolstm.testing import assert_close, assert_scan_equals_loop, cases, linear_spec_texts, spec_texts, tolerance

LINEAR = ["mingru", "minlstm"]

RENAMED_MINGRU = """
spec_version = 1
name = "renamed"
description = "minGRU under other names, with a parameter-only factor and a division by a state-free value."
input = "u"
output = "s_new"
state = { s = "s_new" }
params = { A = { shape = ["input", "units"], init = "glorot_uniform" }, B = { shape = ["input", "units"], init = "glorot_uniform" }, k = { shape = ["units"], init = "ones" } }
equations = { gate = "sigmoid(u @ A)", s_new = "(s - gate * s) / (1 + gate) + gate * tanh(u @ B) * k" }
"""


def test_the_analysis_finds_the_linear_recurrences_among_the_built_in_cells():
    found = {name for name in novolstm.list_specs() if scan.linear_recurrence(novolstm.load_spec(name))}
    assert found == set(LINEAR)


@pytest.mark.parametrize(
    "change, linear",
    [
        ((), True),
        (('"(s - gate * s) / (1 + gate)', '"(s - gate * s) / (1 + s)'), False),  # a state in a divisor
        (('"(s - gate * s)', '"(s - gate * s * s)'), False),  # a product of states
        (('"(s - gate * s)', '"(s - gate * tanh(s))'), False),  # an activation of the state
        (('gate = "sigmoid(u @ A)"', 'gate = "sigmoid(u @ A + s @ C)"'), False),  # a gate that reads the state
    ],
)
def test_the_analysis_is_structural_whatever_the_names(change, linear):
    text = RENAMED_MINGRU
    if change:
        text = text.replace(*change)
        if "s @ C" in text:
            text = text.replace("k = {", 'C = { shape = ["units", "units"], init = "orthogonal" }, k = {')
    spec = novolstm.loads_spec(text)
    assert (scan.linear_recurrence(spec) is not None) == linear
    if linear:
        p = novolstm.init_params(spec, input_size=2, units=3, seed=1)
        x = np.random.default_rng(1).normal(size=(2, 9, 2))
        assert np.abs(scan.run(spec, p, x)[0] - novolstm.run(spec, p, x)[0]).max() < 1e-12


def test_scan_refuses_a_loop_by_name():
    with pytest.raises(ValueError, match="gru: not a recurrence linear in its state"):
        scan.run("gru", novolstm.init_params("gru", input_size=2, units=3), np.ones((1, 2, 2)))


@pytest.mark.parametrize("cell", LINEAR)
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("lengths", [(1, 40), (65, 300)], ids=["one-chunk", "chunked"])
@settings(max_examples=6, deadline=None)
@given(data=st.data())
def test_the_scan_equals_the_loop_in_float64(cell, reverse, lengths, data):
    case = data.draw(cases(cell, min_steps=lengths[0], max_steps=lengths[1]))
    outputs, final = scan.run(cell, case.params, case.x, case.state, mask=case.mask, reverse=reverse)
    flip = (lambda a: a[:, ::-1]) if reverse else (lambda a: a)
    mask = None if case.mask is None else flip(case.mask)
    looped, looped_final = novolstm.run(cell, case.params, flip(case.x), case.state, mask=mask)
    assert np.abs(outputs - flip(looped)).max(initial=0.0) <= 1e-12
    for a, b in zip(final, looped_final):
        assert np.abs(a - b).max(initial=0.0) <= 1e-12


@pytest.mark.parametrize("cell", LINEAR)
def test_the_float32_scan_at_4096_steps_is_within_the_tolerance_table(cell):
    rng = np.random.default_rng(4096)
    spec = novolstm.load_spec(cell)
    params = {k: v.astype(np.float32) for k, v in novolstm.init_params(spec, input_size=4, units=8, seed=3).items()}
    x = rng.normal(size=(3, 4096, 4)).astype(np.float32)
    mask = rng.random((3, 4096)) > 0.1
    expected, expected_final = reference.run(
        cell, {k: v.astype(np.float64) for k, v in params.items()}, x.astype(np.float64), mask=mask
    )
    outputs, final = scan.run(cell, params, x, mask=mask, dtype="float32")
    assert outputs.dtype == np.float32
    tol = tolerance("float32", 4096)
    assert_close(outputs, expected, tol, what=f"{cell} float32 scan outputs")
    assert_close(final[0], expected_final[0], tol, what=f"{cell} float32 scan final state")


@settings(max_examples=10, deadline=None)
@given(text=linear_spec_texts(), reverse=st.booleans(), data=st.data())
def test_random_linear_recurrences_whatever_their_names_scan_as_they_loop(text, reverse, data):
    spec = novolstm.loads_spec(text)
    assert scan.linear_recurrence(spec) is not None
    case = data.draw(cases(spec, min_steps=1, max_steps=120))
    outputs, final = scan.run(spec, case.params, case.x, case.state, mask=case.mask, reverse=reverse)
    flip = (lambda a: a[:, ::-1]) if reverse else (lambda a: a)
    mask = None if case.mask is None else flip(case.mask)
    looped, looped_final = novolstm.run(spec, case.params, flip(case.x), case.state, mask=mask)
    assert_scan_equals_loop((outputs, final, []), (flip(looped), looped_final, []))


@settings(max_examples=10, deadline=None)
@given(text=spec_texts(max_states=2, max_intermediates=2))
def test_random_non_linear_specs_are_refused(text):
    spec = novolstm.loads_spec(text)  # every next state is a tanh: never a linear recurrence
    assert scan.linear_recurrence(spec) is None
    with pytest.raises(ValueError, match="not a recurrence linear in its state"):
        scan.run(spec, novolstm.init_params(spec, input_size=2, units=2), np.ones((1, 2, 2)))


@settings(max_examples=20, deadline=None)
@given(steps=st.integers(0, 300), seed=st.integers(0, 2**32 - 1))
def test_the_chunked_scan_equals_the_recurrence_with_any_coefficients(steps, seed):
    rng = np.random.default_rng(seed)
    a, b, h0 = rng.normal(size=(steps, 2, 3)), rng.normal(size=(steps, 2, 3)), rng.normal(size=(2, 3))
    a[rng.random(a.shape) < 0.1] = 0.0  # zero and negative coefficients: no logarithm, no division
    expected, h = [], h0
    for t in range(steps):
        h = a[t] * h + b[t]
        expected.append(h)
    got = scan.associative_scan(a, b, h0)
    assert got.shape == a.shape
    assert np.abs(got - np.array(expected).reshape(a.shape)).max(initial=0.0) <= 1e-12 * max(
        1.0, np.abs(got).max(initial=0.0)
    )
