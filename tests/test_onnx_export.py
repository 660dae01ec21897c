"""ONNX: every cell exports as a Scan graph and the LSTMs as the native LSTM operator; both run
in onnxruntime and agree with the float64 reference."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime
import pytest

import novolstm
from novolstm.convert import ConversionError
from novolstm.convert.onnx import import_lstm_node, lstm_operator_model
from novolstm.testing import assert_close, random_params, tolerance

RNG = np.random.default_rng(5)


def session(model):
    return onnxruntime.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("cell", novolstm.list_specs())
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_scan_export_from_a_file_matches_the_reference(cell, dtype, tmp_path):
    spec = novolstm.load_spec(cell)
    params = random_params(spec, 3, 4, RNG)
    x = RNG.normal(size=(2, 7, 3))
    mask = np.ones((2, 7), bool)
    mask[1, 4:] = False
    mask[0, 2] = False
    state = tuple(RNG.normal(size=(2, 4)) for _ in spec.state_names)
    path = tmp_path / f"{cell}.onnx"
    novolstm.export_onnx(cell, params, path, dtype=dtype, native_lstm=False)
    model = onnx.load(path)
    assert "Scan" in {n.op_type for n in model.graph.node}
    feeds = {"x": x.astype(dtype), "mask": mask, **{f"{s}0": v.astype(dtype) for s, v in zip(spec.state_names, state)}}
    outputs, *final = session(model).run(None, feeds)
    expected, expected_state = novolstm.reference.run(cell, params, x, state, mask=mask)
    tol = tolerance(dtype, 7)
    assert_close(outputs, expected, tol, what=f"{cell} outputs")
    for got, want in zip(final, expected_state):
        assert_close(got, want, tol, what=f"{cell} state")


@pytest.mark.parametrize("cell", ["lstm", "peephole_lstm"])
def test_native_lstm_operator_matches_the_reference(cell):
    spec = novolstm.load_spec(cell)
    params = random_params(spec, 3, 4, RNG)
    model = novolstm.export_onnx(cell, params)
    assert [n.op_type for n in model.graph.node if n.op_type != "Transpose"] == ["LSTM"]
    x = RNG.normal(size=(3, 6, 3))
    h0, c0 = RNG.normal(size=(3, 1, 4)), RNG.normal(size=(3, 1, 4))
    lengths = np.array([6, 2, 5], np.int32)
    f32 = np.float32
    y, h, c = session(model).run(
        None, {"x": x.astype(f32), "h0": h0.astype(f32), "c0": c0.astype(f32), "sequence_lens": lengths}
    )
    expected, (eh, ec) = novolstm.reference.run(cell, params, x, (h0[:, 0], c0[:, 0]), lengths=lengths)
    assert_close(y[:, :, 0], expected, what="outputs")  # padded steps are zero, as the masking rule says
    assert_close(h[:, 0], eh, what="h")
    assert_close(c[:, 0], ec, what="c")


def test_bidirectional_native_lstm():
    spec = novolstm.load_spec("lstm")
    forward, backward = (random_params(spec, 2, 3, RNG) for _ in range(2))
    model = lstm_operator_model([forward, backward], input_size=2)
    x = RNG.normal(size=(2, 5, 2))
    zeros = np.zeros((2, 2, 3), np.float32)
    y, h, _ = session(model).run(
        None, {"x": x.astype(np.float32), "h0": zeros, "c0": zeros, "sequence_lens": np.array([5, 5], np.int32)}
    )
    ahead, _ = novolstm.reference.run("lstm", forward, x)
    behind, _ = novolstm.reference.run("lstm", backward, x[:, ::-1])
    assert_close(y[:, :, 0], ahead, what="forward direction")
    assert_close(y[:, :, 1], behind[:, ::-1], what="reverse direction")


def test_importing_an_lstm_node_recovers_the_weights():
    params = {k: v.astype(np.float32) for k, v in random_params(novolstm.load_spec("peephole_lstm"), 3, 4, RNG).items()}
    (back,) = import_lstm_node(novolstm.export_onnx("peephole_lstm", params))
    assert sorted(back) == sorted(params)
    assert all(np.array_equal(back[k], params[k]) for k in params)


def test_importing_refuses_what_no_spec_computes():
    model = novolstm.export_onnx("lstm", random_params(novolstm.load_spec("lstm"), 2, 3, RNG))
    lstm = next(n for n in model.graph.node if n.op_type == "LSTM")
    lstm.attribute.append(onnx.helper.make_attribute("activations", ["HardSigmoid", "Tanh", "Tanh"]))
    with pytest.raises(ConversionError, match="uses activations \\['HardSigmoid', 'Tanh', 'Tanh'\\]"):
        import_lstm_node(model)
    lstm.ClearField("attribute")
    with pytest.raises(ConversionError, match="asked for number 1"):
        import_lstm_node(model, node_index=1)
    model.graph.ClearField("initializer")
    with pytest.raises(ConversionError, match="is not an initializer"):
        import_lstm_node(model)
