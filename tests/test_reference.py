"""Tests for the float64 oracle ``novolstm.reference``.

The cells are checked against hand computations in pure Python (``math``
and lists, no NumPy), so the oracle is never checked against itself.
"""

import dataclasses
import doctest
import math
import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from novolstm import reference as ref
from novolstm.reference import CELLS, layer_norm, run, sigmoid, softmax, step

ALL_CELLS = ["lstm", "novolstm", "novolstm_reference", "gru", "peephole_lstm"]
# The zoo's references are held to their authors' code or to the interpreter in tests/test_zoo.py.
ZOO_CELLS = ["mingru", "minlstm", "indrnn", "cifg_lstm", "janet", "mgu", "keras2_lstm", "slstm", "ln_lstm"]


# ---------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------


def param_shape(name, I, H):
    kind = name.split("_", 1)[0]
    return {"W": (I, H), "U": (H, H)}.get(kind, (H,))


def make_params(cell, I, H, seed=0, scale=0.7):
    """Random params, distinct per gate (every name gets its own draw)."""
    rng = np.random.default_rng(seed)
    params = {}
    for name in CELLS[cell].param_names:
        params[name] = scale * rng.normal(size=param_shape(name, I, H))
    if "gamma_i" in params:  # keep the LayerNorm scale away from zero
        params["gamma_i"] = 1.0 + 0.3 * rng.normal(size=H)
    return params


def make_state(cell, B, H, seed=1):
    rng = np.random.default_rng(seed)
    return tuple(0.5 * rng.normal(size=(B, H)) for _ in CELLS[cell].state_names)


# ---------------------------------------------------------------------------
# Pure-Python oracle for the oracle (one batch row, lists of floats)
# ---------------------------------------------------------------------------


def py_sig(z):
    return 1.0 / (1.0 + math.exp(-z))


def py_vecmat(v, M):
    """Row vector v (len n) times matrix M (n x m), as nested lists."""
    return [sum(v[k] * M[k][j] for k in range(len(v))) for j in range(len(M[0]))]


def py_add(*vectors):
    return [sum(parts) for parts in zip(*vectors)]


def py_softmax(v):
    m = max(v)
    e = [math.exp(a - m) for a in v]
    total = sum(e)
    return [a / total for a in e]


def py_layer_norm(v, gamma, beta, eps):
    n = len(v)
    mu = sum(v) / n
    var = sum((a - mu) ** 2 for a in v) / n
    return [(a - mu) / math.sqrt(var + eps) * g + b for a, g, b in zip(v, gamma, beta)]


def py_pre(P, gate, x, h):
    return py_add(py_vecmat(x, P["W_" + gate]), py_vecmat(h, P["U_" + gate]), P["b_" + gate])


def py_lstm_tail(P, x, h, c, i):
    f = [py_sig(a) for a in py_pre(P, "f", x, h)]
    g = [math.tanh(a) for a in py_pre(P, "g", x, h)]
    o = [py_sig(a) for a in py_pre(P, "o", x, h)]
    c2 = [fj * cj + ij * gj for fj, cj, ij, gj in zip(f, c, i, g)]
    h2 = [oj * math.tanh(cj) for oj, cj in zip(o, c2)]
    return [h2, c2], h2


def py_step(cell, P, x, state):
    """P: params as nested lists; x: list; state: list of lists (one row)."""
    if cell == "lstm":
        h, c = state
        i = [py_sig(a) for a in py_pre(P, "i", x, h)]
        return py_lstm_tail(P, x, h, c, i)
    if cell == "novolstm":
        h, c = state
        i_sig = [py_sig(a) for a in py_pre(P, "i", x, h)]
        ln = py_layer_norm(i_sig, P["gamma_i"], P["beta_i"], 1e-3)
        sel = py_softmax(py_pre(P, "s", x, h))
        i = [a * b for a, b in zip(ln, sel)]
        return py_lstm_tail(P, x, h, c, i)
    if cell == "novolstm_reference":
        h, c = state
        i_sig = [py_sig(a) for a in py_pre(P, "i", x, h)]
        sel = py_softmax(py_add(py_vecmat(x, P["W_s"]), P["b_s"]))
        i = py_layer_norm([a * b for a, b in zip(i_sig, sel)], P["gamma_i"], P["beta_i"], 1e-3)
        return py_lstm_tail(P, x, h, c, i)
    if cell == "gru":
        (h,) = state
        r = [py_sig(a) for a in py_pre(P, "r", x, h)]
        z = [py_sig(a) for a in py_pre(P, "z", x, h)]
        hn = py_add(py_vecmat(h, P["U_n"]), P["b_hn"])
        xn = py_add(py_vecmat(x, P["W_n"]), P["b_n"])
        n = [math.tanh(a + rj * b) for a, rj, b in zip(xn, r, hn)]
        h2 = [(1.0 - zj) * nj + zj * hj for zj, nj, hj in zip(z, n, h)]
        return [h2], h2
    if cell == "peephole_lstm":
        h, c = state
        i = [py_sig(a + p * cj) for a, p, cj in zip(py_pre(P, "i", x, h), P["p_i"], c)]
        f = [py_sig(a + p * cj) for a, p, cj in zip(py_pre(P, "f", x, h), P["p_f"], c)]
        g = [math.tanh(a) for a in py_pre(P, "g", x, h)]
        c2 = [fj * cj + ij * gj for fj, cj, ij, gj in zip(f, c, i, g)]
        o = [py_sig(a + p * cj) for a, p, cj in zip(py_pre(P, "o", x, h), P["p_o"], c2)]
        h2 = [oj * math.tanh(cj) for oj, cj in zip(o, c2)]
        return [h2, c2], h2
    raise AssertionError(cell)


# ---------------------------------------------------------------------------
# (a), (b): tiny cases computed by hand
# ---------------------------------------------------------------------------


def test_lstm_one_unit_by_hand():
    x, h, c = 0.5, -0.3, 0.8
    w = {"i": (0.7, -0.2, 0.1), "f": (-0.4, 0.9, 1.0), "g": (1.3, 0.3, -0.5), "o": (0.2, -1.1, 0.05)}
    params = {}
    for gate, (W, U, b) in w.items():
        params["W_" + gate] = [[W]]
        params["U_" + gate] = [[U]]
        params["b_" + gate] = [b]

    def s(z):
        return 1.0 / (1.0 + math.exp(-z))

    i = s(0.7 * x - 0.2 * h + 0.1)
    f = s(-0.4 * x + 0.9 * h + 1.0)
    g = math.tanh(1.3 * x + 0.3 * h - 0.5)
    o = s(0.2 * x - 1.1 * h + 0.05)
    c2 = f * c + i * g
    h2 = o * math.tanh(c2)

    (h_new, c_new), y = step("lstm", params, [[x]], ([[h]], [[c]]))
    assert h_new.shape == c_new.shape == y.shape == (1, 1)
    assert h_new.dtype == np.float64
    assert math.isclose(c_new[0, 0], c2, rel_tol=1e-14)
    assert math.isclose(h_new[0, 0], h2, rel_tol=1e-14)
    assert y[0, 0] == h_new[0, 0]


def test_gru_by_hand_loops():
    """GRU (reset_after) with I=2, H=2, hand-written loops; b_hn sits inside r*(...)."""
    I, H = 2, 2
    params = make_params("gru", I, H, seed=3)
    P = {k: v.tolist() for k, v in params.items()}
    x = [0.4, -1.2]
    h = [0.25, -0.6]

    def s(z):
        return 1.0 / (1.0 + math.exp(-z))

    h_expected = []
    for j in range(H):
        ar = P["b_r"][j] + sum(x[k] * P["W_r"][k][j] for k in range(I)) + sum(h[k] * P["U_r"][k][j] for k in range(H))
        az = P["b_z"][j] + sum(x[k] * P["W_z"][k][j] for k in range(I)) + sum(h[k] * P["U_z"][k][j] for k in range(H))
        xn = P["b_n"][j] + sum(x[k] * P["W_n"][k][j] for k in range(I))
        hn = P["b_hn"][j] + sum(h[k] * P["U_n"][k][j] for k in range(H))
        r, z = s(ar), s(az)
        n = math.tanh(xn + r * hn)
        h_expected.append((1.0 - z) * n + z * h[j])

    (h_new,), y = step("gru", params, [x], ([h],))
    np.testing.assert_allclose(h_new[0], h_expected, rtol=1e-13, atol=0)
    np.testing.assert_array_equal(y, h_new)


def test_gru_b_hn_is_gated_by_r():
    """Moving b_hn into b_n changes the result (unless r == 1): reset_after=True."""
    params = make_params("gru", 2, 3, seed=4)
    x = np.array([[0.3, -0.7]])
    h = (np.array([[0.1, 0.2, -0.3]]),)
    moved = dict(params, b_n=params["b_n"] + params["b_hn"], b_hn=np.zeros(3))
    _, y1 = step("gru", params, x, h)
    _, y2 = step("gru", moved, x, h)
    assert not np.allclose(y1, y2)


@pytest.mark.parametrize("cell", ALL_CELLS)
def test_step_matches_pure_python(cell):
    B, I, H = 3, 2, 4
    params = make_params(cell, I, H, seed=10 + ALL_CELLS.index(cell))
    state = make_state(cell, B, H, seed=2)
    x = np.random.default_rng(5).normal(size=(B, I))
    new_state, y = step(cell, params, x, state)

    P = {k: v.tolist() for k, v in params.items()}
    for b in range(B):
        exp_state, exp_y = py_step(cell, P, x[b].tolist(), [s[b].tolist() for s in state])
        np.testing.assert_allclose(y[b], exp_y, rtol=1e-12, atol=1e-15)
        assert len(new_state) == len(exp_state)
        for got, want in zip(new_state, exp_state):
            np.testing.assert_allclose(got[b], want, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("cell", ALL_CELLS)
def test_run_equals_repeated_step_and_pure_python(cell):
    B, T, I, H = 2, 4, 3, 2
    params = make_params(cell, I, H, seed=20)
    state = make_state(cell, B, H, seed=21)
    x = np.random.default_rng(22).normal(size=(B, T, I))
    out, final = run(cell, params, x, state)
    assert out.shape == (B, T, H) and out.dtype == np.float64
    assert isinstance(final, tuple) and len(final) == len(CELLS[cell].state_names)

    s = state
    for t in range(T):
        s, y = step(cell, params, x[:, t], s)
        np.testing.assert_array_equal(out[:, t], y)
    for got, want in zip(final, s):
        np.testing.assert_array_equal(got, want)

    P = {k: v.tolist() for k, v in params.items()}
    for b in range(B):
        row_state = [st_[b].tolist() for st_ in state]
        for t in range(T):
            row_state, y = py_step(cell, P, x[b, t].tolist(), row_state)
            np.testing.assert_allclose(out[b, t], y, rtol=1e-11, atol=1e-14)


@pytest.mark.parametrize("cell", ALL_CELLS)
def test_run_none_state_is_zeros(cell):
    B, T, I, H = 2, 3, 2, 3
    params = make_params(cell, I, H)
    x = np.random.default_rng(0).normal(size=(B, T, I))
    zeros = tuple(np.zeros((B, H)) for _ in CELLS[cell].state_names)
    out1, fin1 = run(cell, params, x)
    out2, fin2 = run(cell, params, x, zeros)
    np.testing.assert_array_equal(out1, out2)
    for a, b in zip(fin1, fin2):
        np.testing.assert_array_equal(a, b)


# ---------------------------------------------------------------------------
# (c) novolstm with one unit: LayerNorm -> beta, softmax -> 1, so i == beta_i
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("cell", ["novolstm", "novolstm_reference"])
def test_novolstm_one_unit_input_gate_is_beta(cell):
    B, I, H = 3, 2, 1
    params = make_params(cell, I, H, seed=7)
    params["beta_i"] = np.array([0.37])
    (h, c) = make_state(cell, B, H, seed=8)
    x = np.random.default_rng(9).normal(size=(B, I))

    f = sigmoid(x @ params["W_f"] + h @ params["U_f"] + params["b_f"])
    g = np.tanh(x @ params["W_g"] + h @ params["U_g"] + params["b_g"])
    o = sigmoid(x @ params["W_o"] + h @ params["U_o"] + params["b_o"])
    c_expected = f * c + 0.37 * g
    (h_new, c_new), y = step(cell, params, x, (h, c))
    np.testing.assert_allclose(c_new, c_expected, rtol=1e-15, atol=0)
    np.testing.assert_allclose(h_new, o * np.tanh(c_expected), rtol=1e-15, atol=0)

    # W_i, U_i, b_i, gamma_i and the selector weights then have no effect.
    changed = dict(params, W_i=params["W_i"] + 5.0, b_i=params["b_i"] - 3.0, gamma_i=params["gamma_i"] * 4.0)
    changed["W_s"] = params["W_s"] * -2.0
    (_, c_changed), _ = step(cell, changed, x, (h, c))
    np.testing.assert_array_equal(c_changed, c_new)


def test_layer_norm_one_unit_is_exactly_beta():
    z = np.array([[3.0], [-1e300], [0.5]])
    out = layer_norm(z, [2.5], [0.125], eps=1e-3)
    np.testing.assert_array_equal(out, np.full((3, 1), 0.125))


# ---------------------------------------------------------------------------
# (d) sigmoid / softmax numerics
# ---------------------------------------------------------------------------


def test_sigmoid_extremes_without_warnings():
    z = np.array([1000.0, -1000.0, -745.0, 745.0, 710.0, -710.0, 0.0, 1e308, -1e308, -800.0])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with np.errstate(over="raise", invalid="raise", divide="raise"):
            s = sigmoid(z)
    assert s.dtype == np.float64
    assert s[0] == 1.0 and s[3] == 1.0 and s[4] == 1.0 and s[7] == 1.0
    assert s[1] == 0.0 and s[8] == 0.0 and s[9] == 0.0
    assert 0.0 <= s[2] < 1e-300 and 0.0 <= s[5] < 1e-300
    assert s[6] == 0.5


def test_sigmoid_scalar_and_infinities():
    assert math.isclose(float(sigmoid(2.0)), 1.0 / (1.0 + math.exp(-2.0)), rel_tol=1e-15, abs_tol=0.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        s = sigmoid([np.inf, -np.inf])
    np.testing.assert_array_equal(s, [1.0, 0.0])


def test_sigmoid_is_not_the_tanh_trick_but_agrees_with_exact_logistic():
    # For moderately negative z, the tanh trick 0.5*tanh(z/2)+0.5 loses all
    # relative accuracy (cancellation); the exact logistic keeps it.
    for z in (-5.0, -12.5, -40.0, -300.0):
        exact = math.exp(z) / (1.0 + math.exp(z))
        assert math.isclose(float(sigmoid(z)), exact, rel_tol=1e-15, abs_tol=0.0), z


@settings(max_examples=300, deadline=None)
@given(st.floats(allow_nan=False, allow_infinity=False))
def test_sigmoid_property(z):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        s = float(sigmoid(z))
        s_neg = float(sigmoid(-z))
    assert 0.0 <= s <= 1.0
    assert abs((s + s_neg) - 1.0) <= 4.5e-16
    if -700.0 < z < 700.0:
        if z >= 0:
            want = 1.0 / (1.0 + math.exp(-z))
        else:
            want = math.exp(z) / (1.0 + math.exp(z))
        assert math.isclose(s, want, rel_tol=1e-15, abs_tol=0.0)


def test_softmax_basic():
    z = np.array([[1.0, 2.0, 3.0], [1000.0, 0.0, -1000.0]])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        p = softmax(z)
    e = [math.exp(1.0), math.exp(2.0), math.exp(3.0)]
    np.testing.assert_allclose(p[0], [a / sum(e) for a in e], rtol=1e-15)
    np.testing.assert_array_equal(p[1], [1.0, 0.0, 0.0])


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.floats(-1e6, 1e6), min_size=1, max_size=6),
    st.floats(-1e3, 1e3),
)
def test_softmax_property(values, shift):
    z = np.array([values])
    p = softmax(z)
    assert p.shape == z.shape
    assert np.all(p >= 0.0)
    assert math.isclose(float(p.sum()), 1.0, rel_tol=1e-14)
    np.testing.assert_allclose(softmax(z + shift), p, rtol=1e-9, atol=1e-12)


# ---------------------------------------------------------------------------
# (f) LayerNorm
# ---------------------------------------------------------------------------


def test_layer_norm_uses_population_variance():
    z = np.array([[1.0, 2.0, 3.0, 4.0]])
    gamma = np.ones(4)
    beta = np.zeros(4)
    # population variance of 1..4 is 1.25 (the sample variance would be 5/3)
    want = (z - 2.5) / math.sqrt(1.25 + 1e-3)
    np.testing.assert_allclose(layer_norm(z, gamma, beta, eps=1e-3), want, rtol=1e-15)
    not_want = (z - 2.5) / math.sqrt(5.0 / 3.0 + 1e-3)
    assert not np.allclose(layer_norm(z, gamma, beta, eps=1e-3), not_want)


def test_layer_norm_default_eps_is_1e_3():
    z = np.array([[0.1, 0.4, 0.2]])
    g, b = np.ones(3), np.zeros(3)
    np.testing.assert_array_equal(layer_norm(z, g, b), layer_norm(z, g, b, eps=1e-3))


def test_layer_norm_gamma_beta_and_eps_matter_at_low_variance():
    z = np.array([[0.5, 0.5 + 2e-3]])  # variance 1e-6, much smaller than eps
    gamma = np.array([2.0, 3.0])
    beta = np.array([0.25, -0.5])
    d = np.array([[-1e-3, 1e-3]])
    np.testing.assert_allclose(
        layer_norm(z, gamma, beta, eps=1e-3), d / math.sqrt(1e-6 + 1e-3) * gamma + beta, rtol=1e-10
    )
    no_eps = layer_norm(z, np.ones(2), np.zeros(2), eps=0.0)
    with_eps = layer_norm(z, np.ones(2), np.zeros(2), eps=1e-3)
    np.testing.assert_allclose(no_eps, [[-1.0, 1.0]], rtol=1e-10)
    assert np.all(np.abs(with_eps) < 0.05)


def test_layer_norm_two_pass_survives_large_offset():
    # E[z^2] - E[z]^2 cancels catastrophically here; the two-pass form is exact.
    base = np.array([[0.0, 1.0, 2.0, 3.0]])
    g, b = np.ones(4), np.zeros(4)
    np.testing.assert_allclose(layer_norm(base + 1e8, g, b), layer_norm(base, g, b), rtol=1e-12)


def test_layer_norm_normalises_each_row_over_last_axis():
    z = np.random.default_rng(3).normal(size=(2, 3, 5)) * 4.0 + 7.0
    out = layer_norm(z, np.ones(5), np.zeros(5), eps=0.0)
    np.testing.assert_allclose(out.mean(axis=-1), 0.0, atol=1e-14)
    np.testing.assert_allclose((out**2).mean(axis=-1), 1.0, rtol=1e-13)


# ---------------------------------------------------------------------------
# (g) the design formula and the original Keras code differ
# ---------------------------------------------------------------------------


def test_novolstm_and_reference_differ():
    B, T, I, H = 2, 3, 3, 4
    params = make_params("novolstm", I, H, seed=11)
    ref_params = {k: v for k, v in params.items() if k != "U_s"}
    x = np.random.default_rng(12).normal(size=(B, T, I))
    out_design, _ = run("novolstm", params, x)
    out_ref, _ = run("novolstm_reference", ref_params, x)
    assert not np.allclose(out_design, out_ref, rtol=1e-3, atol=1e-6)

    # Even with U_s = 0 (same selector), LayerNorm placement differs.
    params_zero = dict(params, U_s=np.zeros((H, H)))
    out_zero, _ = run("novolstm", params_zero, x)
    assert not np.allclose(out_zero, out_ref, rtol=1e-3, atol=1e-6)


def test_novolstm_input_gate_formula():
    """Check both input-gate placements directly against the equations."""
    I, H = 2, 3
    params = make_params("novolstm", I, H, seed=13)
    x = np.array([[0.2, -0.9]])
    h = np.array([[0.3, -0.1, 0.6]])
    c = np.zeros((1, H))
    f = sigmoid(x @ params["W_f"] + h @ params["U_f"] + params["b_f"])
    g = np.tanh(x @ params["W_g"] + h @ params["U_g"] + params["b_g"])
    pre_i = sigmoid(x @ params["W_i"] + h @ params["U_i"] + params["b_i"])
    ln = lambda v: layer_norm(v, params["gamma_i"], params["beta_i"], eps=1e-3)  # noqa: E731

    i_design = ln(pre_i) * softmax(x @ params["W_s"] + h @ params["U_s"] + params["b_s"])
    (_, c_design), _ = step("novolstm", params, x, (h, c))
    np.testing.assert_allclose(c_design, f * c + i_design * g, rtol=1e-14)

    ref_params = {k: v for k, v in params.items() if k != "U_s"}
    i_ref = ln(pre_i * softmax(x @ params["W_s"] + params["b_s"]))
    (_, c_ref), _ = step("novolstm_reference", ref_params, x, (h, c))
    np.testing.assert_allclose(c_ref, f * c + i_ref * g, rtol=1e-14)


def test_peephole_output_gate_uses_new_cell():
    I, H = 2, 2
    params = make_params("peephole_lstm", I, H, seed=14)
    x = np.array([[0.5, -0.5]])
    h = np.array([[0.1, 0.2]])
    c = np.array([[0.7, -0.4]])
    (h_new, c_new), _ = step("peephole_lstm", params, x, (h, c))
    o_new = sigmoid(x @ params["W_o"] + h @ params["U_o"] + params["p_o"] * c_new + params["b_o"])
    o_old = sigmoid(x @ params["W_o"] + h @ params["U_o"] + params["p_o"] * c + params["b_o"])
    np.testing.assert_allclose(h_new, o_new * np.tanh(c_new), rtol=1e-15)
    assert not np.allclose(h_new, o_old * np.tanh(c_new))

    # zero peepholes reduce to the plain lstm
    plain = {k: v for k, v in params.items() if not k.startswith("p_")}
    zero_peep = dict(plain, p_i=np.zeros(H), p_f=np.zeros(H), p_o=np.zeros(H))
    s1, y1 = step("peephole_lstm", zero_peep, x, (h, c))
    s2, y2 = step("lstm", plain, x, (h, c))
    np.testing.assert_array_equal(y1, y2)
    np.testing.assert_array_equal(s1[1], s2[1])


# ---------------------------------------------------------------------------
# (e) masking rule
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("cell", ALL_CELLS)
def test_masked_step_keeps_state_and_outputs_zero(cell):
    B, I, H = 3, 2, 3
    params = make_params(cell, I, H, seed=30)
    state = make_state(cell, B, H, seed=31)
    x = np.random.default_rng(32).normal(size=(B, 1, I))
    mask = np.array([[False], [True], [False]])
    out, final = run(cell, params, x, state, mask=mask)
    stepped_state, y = step(cell, params, x[:, 0], state)
    for got, init, new in zip(final, state, stepped_state):
        np.testing.assert_array_equal(got[[0, 2]], init[[0, 2]])  # carried through exactly
        np.testing.assert_array_equal(got[1], new[1])
    assert np.all(out[[0, 2]] == 0.0)
    np.testing.assert_array_equal(out[1, 0], y[1])


@pytest.mark.parametrize("cell", ALL_CELLS)
def test_mask_equals_running_only_the_real_steps(cell):
    B, T, I, H = 3, 6, 2, 3
    params = make_params(cell, I, H, seed=40)
    state = make_state(cell, B, H, seed=41)
    x = np.random.default_rng(42).normal(size=(B, T, I))
    mask = np.array(
        [
            [True, False, True, True, False, True],  # holes in the middle
            [False, False, True, True, True, True],  # left padding
            [True, True, False, False, False, False],  # right padding
        ]
    )
    out, final = run(cell, params, x, state, mask=mask)
    assert np.all(out[~mask] == 0.0)
    for b in range(B):
        row_state = tuple(s[b : b + 1] for s in state)
        row_out, row_final = run(cell, params, x[b : b + 1, mask[b]], row_state)
        np.testing.assert_allclose(out[b, mask[b]], row_out[0], rtol=1e-13, atol=1e-15)
        for got, want in zip(final, row_final):
            np.testing.assert_allclose(got[b], want[0], rtol=1e-13, atol=1e-15)


@pytest.mark.parametrize("cell", ALL_CELLS)
def test_lengths_equivalent_to_mask(cell):
    B, T, I, H = 4, 5, 3, 2
    params = make_params(cell, I, H, seed=50)
    state = make_state(cell, B, H, seed=51)
    x = np.random.default_rng(52).normal(size=(B, T, I))
    lengths = np.array([5, 2, 0, 3])
    mask = np.array([[t < n for t in range(T)] for n in lengths])
    out_l, fin_l = run(cell, params, x, state, lengths=lengths)
    out_m, fin_m = run(cell, params, x, state, mask=mask)
    np.testing.assert_array_equal(out_l, out_m)
    for a, b in zip(fin_l, fin_m):
        np.testing.assert_array_equal(a, b)
    # length 0: state untouched, all outputs zero
    for a, s in zip(fin_l, state):
        np.testing.assert_array_equal(a[2], s[2])
    assert np.all(out_l[2] == 0.0)
    # the final state of a right-padded row is the state at its last real step
    np.testing.assert_array_equal(fin_l[0][1], out_l[1, 1])


def test_all_true_mask_equals_no_mask():
    params = make_params("lstm", 2, 3)
    x = np.random.default_rng(0).normal(size=(2, 4, 2))
    out1, fin1 = run("lstm", params, x)
    out2, fin2 = run("lstm", params, x, mask=np.ones((2, 4), dtype=bool))
    out3, fin3 = run("lstm", params, x, lengths=[4, 4])
    np.testing.assert_array_equal(out1, out2)
    np.testing.assert_array_equal(out1, out3)
    for a, b, c in zip(fin1, fin2, fin3):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(a, c)


def test_mask_and_lengths_together_is_error():
    params = make_params("gru", 2, 3)
    x = np.zeros((2, 3, 2))
    with pytest.raises(ValueError, match="mask"):
        run("gru", params, x, mask=np.ones((2, 3), dtype=bool), lengths=[3, 3])


def test_bad_mask_and_lengths():
    params = make_params("gru", 2, 3)
    x = np.zeros((2, 3, 2))
    with pytest.raises(ValueError, match="mask"):
        run("gru", params, x, mask=np.ones((3, 2), dtype=bool))
    with pytest.raises(ValueError, match="mask"):
        run("gru", params, x, mask=np.ones((2, 3), dtype=int))
    with pytest.raises(ValueError, match="lengths"):
        run("gru", params, x, lengths=[1, 4])
    with pytest.raises(ValueError, match="lengths"):
        run("gru", params, x, lengths=[1, -1])
    with pytest.raises(ValueError, match="lengths"):
        run("gru", params, x, lengths=[1, 2, 3])


def test_empty_sequence():
    params = make_params("lstm", 2, 3)
    state = make_state("lstm", 2, 3)
    out, final = run("lstm", params, np.zeros((2, 0, 2)), state)
    assert out.shape == (2, 0, 3)
    for a, s in zip(final, state):
        np.testing.assert_array_equal(a, s)
        assert not np.shares_memory(a, s)  # a copy, never the caller's array


# ---------------------------------------------------------------------------
# dtype handling and inputs left alone
# ---------------------------------------------------------------------------


def test_float32_inputs_are_computed_in_float64_and_not_mutated():
    params32 = {k: v.astype(np.float32) for k, v in make_params("lstm", 2, 3).items()}
    params64 = {k: v.astype(np.float64) for k, v in params32.items()}
    x32 = np.random.default_rng(0).normal(size=(2, 3, 2)).astype(np.float32)
    state = tuple(s.copy() for s in make_state("lstm", 2, 3))
    state_before = tuple(s.copy() for s in state)
    x_before = x32.copy()
    out, final = run("lstm", params32, x32, state, mask=np.array([[True, False, True], [False, False, False]]))
    assert out.dtype == np.float64 and all(s.dtype == np.float64 for s in final)
    out64, _ = run(
        "lstm", params64, x32.astype(np.float64), state, mask=np.array([[True, False, True], [False, False, False]])
    )
    np.testing.assert_array_equal(out, out64)
    np.testing.assert_array_equal(x32, x_before)
    for s, b in zip(state, state_before):
        np.testing.assert_array_equal(s, b)
    # the returned final state does not alias the caller's state arrays
    for f, s in zip(final, state):
        assert not np.shares_memory(f, s)


# ---------------------------------------------------------------------------
# (h) validation
# ---------------------------------------------------------------------------


def test_cells_registry():
    assert set(CELLS) == set(ALL_CELLS + ZOO_CELLS)
    for name, info in CELLS.items():
        assert info.name == name
        assert isinstance(info.param_names, tuple) and isinstance(info.state_names, tuple)
        assert len(set(info.param_names)) == len(info.param_names)
        assert callable(info.step)
    assert CELLS["gru"].state_names == ("h",)
    assert CELLS["lstm"].state_names == ("h", "c")
    assert "U_s" in CELLS["novolstm"].param_names
    assert "U_s" not in CELLS["novolstm_reference"].param_names
    assert {"p_i", "p_f", "p_o"} <= set(CELLS["peephole_lstm"].param_names)
    with pytest.raises(dataclasses.FrozenInstanceError):
        CELLS["lstm"].name = "other"  # frozen dataclass


def test_unknown_cell():
    with pytest.raises(ValueError, match="lstm"):
        step("nope", {}, np.zeros((1, 1)), (np.zeros((1, 1)),))
    with pytest.raises(ValueError, match="nope"):
        run("nope", {}, np.zeros((1, 1, 1)))


def test_missing_and_extra_params():
    params = make_params("lstm", 2, 3)
    x = np.zeros((1, 2))
    state = (np.zeros((1, 3)), np.zeros((1, 3)))
    missing = {k: v for k, v in params.items() if k != "b_f"}
    with pytest.raises(ValueError, match="b_f"):
        step("lstm", missing, x, state)
    with pytest.raises(ValueError, match="W_s"):
        step("lstm", dict(params, W_s=np.zeros((2, 3))), x, state)
    # novolstm_reference must not accept U_s
    ref_params = make_params("novolstm_reference", 2, 3)
    with pytest.raises(ValueError, match="U_s"):
        step("novolstm_reference", dict(ref_params, U_s=np.zeros((3, 3))), x, state)


@pytest.mark.parametrize(
    "name, bad_shape",
    [("b_f", (4,)), ("U_i", (3, 4)), ("W_g", (3, 2)), ("b_o", (1,)), ("W_o", (2, 1)), ("b_i", (1, 3))],
)
def test_wrong_param_shapes(name, bad_shape):
    params = make_params("lstm", 2, 3)
    params[name] = np.zeros(bad_shape)
    x = np.zeros((1, 2))
    state = (np.zeros((1, 3)), np.zeros((1, 3)))
    with pytest.raises(ValueError, match=name):
        step("lstm", params, x, state)
    with pytest.raises(ValueError, match=name):
        run("lstm", params, x[:, None, :])


def test_wrong_input_width_and_state_shapes():
    params = make_params("gru", 2, 3)
    with pytest.raises(ValueError, match="W_r"):
        step("gru", params, np.zeros((1, 5)), (np.zeros((1, 3)),))  # I mismatch
    with pytest.raises(ValueError, match="x"):
        step("gru", params, np.zeros((1, 1, 2)), (np.zeros((1, 3)),))
    with pytest.raises(ValueError, match="x"):
        run("gru", params, np.zeros((1, 2)))
    with pytest.raises(ValueError, match="h"):
        step("gru", params, np.zeros((2, 2)), (np.zeros((1, 3)),))  # no broadcasting over batch
    with pytest.raises(ValueError, match="h"):
        step("gru", params, np.zeros((1, 2)), (np.zeros((3,)),))
    with pytest.raises(ValueError, match="state"):
        step("gru", params, np.zeros((1, 2)), (np.zeros((1, 3)), np.zeros((1, 3))))
    lstm_params = make_params("lstm", 2, 3)
    with pytest.raises(ValueError, match="c"):
        run("lstm", lstm_params, np.zeros((1, 2, 2)), (np.zeros((1, 3)), np.zeros((1, 4))))


# ---------------------------------------------------------------------------
# module hygiene
# ---------------------------------------------------------------------------


def test_docstring_examples_run():
    result = doctest.testmod(ref, verbose=False)
    assert result.attempted > 0
    assert result.failed == 0


def test_imports_only_numpy_and_stdlib():
    import ast
    import sys

    with open(ref.__file__, encoding="utf-8") as fh:
        tree = ast.parse(fh.read())
    top_level = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            top_level.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, "no relative imports"
            top_level.add(node.module.split(".")[0])
    allowed = {"numpy"} | set(sys.stdlib_module_names)
    assert top_level <= allowed, top_level - allowed
