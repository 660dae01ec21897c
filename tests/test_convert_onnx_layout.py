"""The ONNX LSTM layout converter (NumPy only): exact round trips and gate order i, o, f, c."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import novolstm
from novolstm.convert import ConversionError
from novolstm.convert.onnx import from_onnx_lstm, to_onnx_lstm
from novolstm.testing import random_params


@given(
    st.sampled_from(["lstm", "peephole_lstm"]),
    st.integers(1, 2),
    st.integers(1, 4),
    st.integers(1, 5),
    st.integers(0, 2**32 - 1),
)
def test_round_trip_is_exact(cell, directions, inputs, units, seed):
    rng = np.random.default_rng(seed)
    params = [random_params(novolstm.load_spec(cell), inputs, units, rng) for _ in range(directions)]
    tensors = to_onnx_lstm(params)
    assert tensors["W"].shape == (directions, 4 * units, inputs)
    back = from_onnx_lstm(**tensors)
    for original, restored in zip(params, back):
        assert sorted(original) == sorted(restored)
        for k in original:
            np.testing.assert_array_equal(original[k], restored[k])


def test_gate_order_is_i_o_f_c():
    params = random_params(novolstm.load_spec("lstm"), 2, 3, np.random.default_rng(0))
    W = to_onnx_lstm([params])["W"][0]
    for k, gate in enumerate("iofg"):
        np.testing.assert_array_equal(W[3 * k : 3 * (k + 1)], params[f"W_{gate}"].T)


def test_two_onnx_biases_add():
    params = random_params(novolstm.load_spec("lstm"), 2, 3, np.random.default_rng(0))
    t = to_onnx_lstm([params])
    B = t["B"].copy()
    B[0, 12:] = 0.25  # a recurrent bias on every gate
    np.testing.assert_allclose(from_onnx_lstm(t["W"], t["R"], B)[0]["b_f"], params["b_f"] + 0.25, rtol=0, atol=1e-15)


def test_bad_shapes_are_refused():
    with pytest.raises(ConversionError, match=r"expected W \(directions, 4H, input\)"):
        from_onnx_lstm(np.zeros((1, 7, 3)), np.zeros((1, 7, 1)))
    with pytest.raises(ConversionError, match=r"B: expected shape \(1, 16\)"):
        from_onnx_lstm(np.zeros((1, 8, 3)), np.zeros((1, 8, 2)), np.zeros((1, 8)))
