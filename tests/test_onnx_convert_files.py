"""ONNX LSTM models through the converters, run in onnxruntime: reverse-only layers convert where
the target holds them (ONNX to ONNX, exactly) and are refused where it does not; stacked models
read every layer and write every layer; verify-port never passes a reversed model."""

from __future__ import annotations

import numpy as np
import onnxruntime
import pytest

import novolstm
from novolstm.cli import main
from novolstm.convert import files
from novolstm.convert.files import ReverseOnly
from novolstm.convert.onnx import lstm_stack_model
from novolstm.testing import assert_close, random_params, tolerance

RNG = np.random.default_rng(7)
STEPS = 9


def run(path_or_model, x, *states):
    data = path_or_model if isinstance(path_or_model, (str, bytes)) else path_or_model.SerializeToString()
    session = onnxruntime.InferenceSession(
        data if isinstance(data, bytes) else str(data), providers=["CPUExecutionProvider"]
    )
    feeds = {"x": x, "sequence_lens": np.full(x.shape[0], x.shape[1], np.int32), **dict(zip(("h0", "c0"), states))}
    return session.run(None, feeds)


def stack(directions: str, layers: int, inputs=3, units=4, cell="lstm"):
    count = 2 if directions == "bidirectional" else 1
    out, size = [], inputs
    for _ in range(layers):
        out.append(
            (
                directions,
                [
                    {k: v.astype(np.float32) for k, v in random_params(cell, size, units, RNG).items()}
                    for _ in range(count)
                ],
            )
        )
        size = units * count
    return out


def reference(layers, x, *states, cell="lstm"):
    """The float64 reference of a stack: each direction on its own, reverse ones on the reversed sequence."""
    outputs, finals, column = x, [[] for _ in states], 0
    for direction, weights in layers:
        parts = []
        for k, params in enumerate(weights):
            backwards = direction == "reverse" or k == 1
            seq = outputs[:, ::-1] if backwards else outputs
            y, final = novolstm.reference.run(cell, params, seq, tuple(s[:, column] for s in states))
            parts.append(y[:, ::-1] if backwards else y)
            for kept, value in zip(finals, final):
                kept.append(value)
            column += 1
        outputs = np.concatenate(parts, axis=-1)
    return (outputs, *(np.stack(f, 1) for f in finals))


@pytest.mark.parametrize("cell", ["lstm", "gru"])
@pytest.mark.parametrize("direction", ["forward", "reverse", "bidirectional"])
@pytest.mark.parametrize("layers", [1, 3])
def test_onnx_stacks_round_trip_exactly_and_run_as_the_reference(tmp_path, direction, layers, cell):
    model = stack(direction, layers, cell=cell)
    built = lstm_stack_model(model, op=cell.upper())
    (tmp_path / "a.onnx").write_bytes(built.SerializeToString())
    read = files.read(tmp_path / "a.onnx", "onnx", cell)
    expected_keys = {
        f"l{k}{s}"
        for k in range(layers)
        for s in ({"forward": [""], "reverse": ["_reverse"], "bidirectional": ["", "_reverse"]}[direction])
    }
    assert set(read) == expected_keys
    files.convert(tmp_path / "a.onnx", tmp_path / "b.onnx", "onnx", "onnx", cell)
    again = files.read(tmp_path / "b.onnx", "onnx", cell)
    assert all(np.array_equal(again[k][n], read[k][n]) for k in read for n in read[k])
    total = sum(len(w) for _, w in model)
    x = RNG.normal(size=(2, STEPS, 3)).astype(np.float32)
    states = [(0.5 * RNG.normal(size=(2, total, 4))).astype(np.float32) for _ in novolstm.load_spec(cell).state_names]
    y, *finals = run(str(tmp_path / "b.onnx"), x, *states)
    ref_y, *ref_finals = reference(model, x.astype(np.float64), *(s.astype(np.float64) for s in states), cell=cell)
    tol = tolerance("float32", STEPS * layers)
    assert_close(y.reshape(2, STEPS, -1), ref_y, tol, what="outputs")
    for name, got, want in zip("hc", finals, ref_finals):
        assert_close(got, want, tol, what=name)


def test_a_gru_node_of_linear_before_reset_0_is_refused(tmp_path):
    from onnx import helper

    model = lstm_stack_model(stack("forward", 1, cell="gru"), op="GRU")
    node = next(n for n in model.graph.node if n.op_type == "GRU")
    kept = [a for a in node.attribute if a.name != "linear_before_reset"]
    node.ClearField("attribute")
    node.attribute.extend(kept + [helper.make_attribute("linear_before_reset", 0)])
    (tmp_path / "g.onnx").write_bytes(model.SerializeToString())
    with pytest.raises(files.ConversionError, match="linear_before_reset=0"):
        files.read(tmp_path / "g.onnx", "onnx", "gru")
    with pytest.raises(files.ConversionError, match="\\['GRU'\\] nodes"):
        files.read(tmp_path / "g.onnx", "onnx", "lstm")


def test_a_reverse_layer_is_not_read_as_a_forward_one(tmp_path):
    """The bug this guards: direction='reverse' read as forward, off by about 1."""
    model = stack("reverse", 1)
    (tmp_path / "r.onnx").write_bytes(lstm_stack_model(model).SerializeToString())
    for target in ("canonical", "torch"):
        with pytest.raises(ReverseOnly, match="only backwards"):
            files.convert(tmp_path / "r.onnx", tmp_path / f"out.{target}", "onnx", target, "lstm")
    assert (
        main(
            [
                "convert",
                str(tmp_path / "r.onnx"),
                "-o",
                str(tmp_path / "x.safetensors"),
                "--from",
                "onnx",
                "--to",
                "torch",
            ]
        )
        == 2
    )


def test_verify_port_never_passes_a_reversed_model(tmp_path, capsys):
    reverse = stack("reverse", 1, inputs=5, units=8)
    (tmp_path / "r.onnx").write_bytes(lstm_stack_model(reverse).SerializeToString())
    forward = [("forward", reverse[0][1])]  # the same weights run forward
    (tmp_path / "f.onnx").write_bytes(lstm_stack_model(forward).SerializeToString())
    # the reversed model as the weights, and as another tool's port of forward weights
    assert main(["verify-port", "numpy", "onnx", "--weights", str(tmp_path / "r.onnx"), "--format", "onnx"]) == 2
    assert (
        main(
            [
                "verify-port",
                "numpy",
                "onnx",
                "--weights",
                str(tmp_path / "f.onnx"),
                "--format",
                "onnx",
                "--ported",
                str(tmp_path / "r.onnx"),
            ]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert err.count("only backwards") == 2 and "Traceback" not in err
    assert (
        main(
            [
                "verify-port",
                "numpy",
                "onnx",
                "--weights",
                str(tmp_path / "f.onnx"),
                "--format",
                "onnx",
                "--ported",
                str(tmp_path / "f.onnx"),
            ]
        )
        == 0
    )


def test_peepholes_read_from_the_p_input(tmp_path):
    params = {k: v.astype(np.float32) for k, v in random_params("peephole_lstm", 3, 4, RNG).items()}
    (tmp_path / "p.onnx").write_bytes(lstm_stack_model([("forward", [params])]).SerializeToString())
    back = files.read(tmp_path / "p.onnx", "onnx", "peephole_lstm")["l0"]
    assert all(np.array_equal(back[k], params[k]) for k in params)
    with pytest.raises(Exception, match="has peepholes"):
        files.read(tmp_path / "p.onnx", "onnx", "lstm")
    plain = {k: v.astype(np.float32) for k, v in random_params("lstm", 3, 4, RNG).items()}
    (tmp_path / "l.onnx").write_bytes(lstm_stack_model([("forward", [plain])]).SerializeToString())
    zeros = files.read(tmp_path / "l.onnx", "onnx", "peephole_lstm")["l0"]  # no P: the peepholes are zero, exactly
    assert all(not zeros[f"p_{g}"].any() for g in "ifo")
