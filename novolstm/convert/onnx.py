"""The ONNX ``LSTM`` operator's tensors <-> canonical parameters (NumPy only, no onnx import).

ONNX stacks the gates in the order i, o, f, c: ``W`` (directions, 4H, input),
``R`` (directions, 4H, H), ``B`` (directions, 8H) = [input biases; recurrent biases],
and optionally the peepholes ``P`` (directions, 3H) in the order i, o, f. Its
output gate sees the new cell state, as the ``peephole_lstm`` spec does.

Examples:
    >>> import novolstm
    >>> p = novolstm.init_params("lstm", 3, 2, seed=0)
    >>> onnx = to_onnx_lstm([p])
    >>> onnx["W"].shape, onnx["B"].shape
    ((1, 8, 3), (1, 16))
    >>> back = from_onnx_lstm(**onnx)[0]
    >>> all((back[k] == p[k]).all() for k in p)
    True
"""

from __future__ import annotations

import numpy as np

from novolstm.convert import ConversionError

GATES = ("i", "o", "f", "g")  # ONNX's i, o, f, c; canonical calls the candidate g
PEEPHOLES = ("i", "o", "f")


def to_onnx_lstm(directions: list[dict]) -> dict[str, np.ndarray]:
    """Canonical weights in the ONNX ``LSTM`` operator's layout (gates i, o, f, c).

    Args:
        directions: one canonical ``lstm`` or ``peephole_lstm`` dict per direction.

    Returns:
        ``W`` (directions, 4H, I), ``R`` (directions, 4H, H), ``B`` (directions, 8H), and
        ``P`` (directions, 3H) for the peephole LSTM.
    """
    out = {
        "W": np.stack([np.concatenate([p[f"W_{g}"].T for g in GATES]) for p in directions]),
        "R": np.stack([np.concatenate([p[f"U_{g}"].T for g in GATES]) for p in directions]),
        # The recurrent half of B is zero: the canonical LSTM has one bias per gate.
        "B": np.stack(
            [
                np.concatenate([p[f"b_{g}"] for g in GATES] + [np.zeros_like(p[f"b_{g}"]) for g in GATES])
                for p in directions
            ]
        ),
    }
    has_peepholes = {"p_i" in p for p in directions}
    if has_peepholes == {True}:
        out["P"] = np.stack([np.concatenate([p[f"p_{g}"] for g in PEEPHOLES]) for p in directions])
    elif len(has_peepholes) > 1:
        raise ConversionError("directions mix peephole and plain LSTM parameters")
    return out


def from_onnx_lstm(W, R, B=None, P=None) -> list[dict]:
    """The ONNX ``LSTM`` operator's tensors as canonical weights.

    The two ONNX biases of each gate add: exact for the LSTM, where both enter the
    same sum. Round trips through ``to_onnx_lstm`` are exact.

    Args:
        W: input weights (directions, 4H, I).
        R: recurrent weights (directions, 4H, H).
        B: biases (directions, 8H), or None for zeros.
        P: peephole weights (directions, 3H), or None.

    Returns:
        One canonical dict per direction (``peephole_lstm`` when ``P`` is given).
    """
    W, R = np.asarray(W), np.asarray(R)
    if (
        W.ndim != 3
        or R.ndim != 3
        or W.shape[1] % 4
        or R.shape[1:] != (W.shape[1], W.shape[1] // 4)
        or R.shape[0] != W.shape[0]
    ):
        raise ConversionError(
            f"expected W (directions, 4H, input) and R (directions, 4H, H), got {W.shape} and {R.shape}"
        )
    dirs, four_h, _ = W.shape
    H = four_h // 4
    B = np.zeros((dirs, 8 * H), W.dtype) if B is None else np.asarray(B)
    if B.shape != (dirs, 8 * H):
        raise ConversionError(f"B: expected shape ({dirs}, {8 * H}), got {B.shape}")
    if P is not None and np.shape(P) != (dirs, 3 * H):
        raise ConversionError(f"P: expected shape ({dirs}, {3 * H}), got {np.shape(P)}")
    out = []
    for d in range(dirs):
        p = {}
        for k, g in enumerate(GATES):
            rows = slice(k * H, (k + 1) * H)
            p[f"W_{g}"] = W[d, rows].T.copy()
            p[f"U_{g}"] = R[d, rows].T.copy()
            p[f"b_{g}"] = B[d, rows] + B[d, 4 * H + k * H : 4 * H + (k + 1) * H]
        if P is not None:
            for k, g in enumerate(PEEPHOLES):
                p[f"p_{g}"] = np.asarray(P)[d, k * H : (k + 1) * H].copy()
        out.append(p)
    return out


def lstm_operator_model(directions: list[dict], input_size: int, dtype="float32", opset: int = 18):
    """An ONNX model holding one native ``LSTM`` node with these weights, batch-first at its boundary.

    Inputs ``x`` (batch, time, input), ``h0`` and ``c0`` (batch, directions, units),
    ``sequence_lens`` (batch,) int32; outputs ``outputs`` (batch, time, directions,
    units), ``h`` and ``c`` (batch, directions, units). Only the standard and the
    peephole LSTM exist as this operator; any other cell exports as a Scan graph.

    Args:
        directions: one canonical ``lstm`` or ``peephole_lstm`` dict per direction.
        input_size: features per timestep.
        dtype: the dtype the model computes in.
        opset: the ONNX opset.

    Returns:
        The checked ``onnx.ModelProto``.
    """
    import onnx
    from onnx import helper, numpy_helper

    tensors = {k: np.asarray(v, dtype) for k, v in to_onnx_lstm(directions).items()}
    dirs, units = len(directions), tensors["R"].shape[-1]
    elem = helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    names = ["x_tm", "W", "R", "B", "sequence_lens", "h0_tm", "c0_tm"] + (["P"] if "P" in tensors else [])
    # onnxruntime runs only the time-major layout (layout=0): transpose around the node,
    # keeping the model's own inputs and outputs batch-first.
    nodes = [
        helper.make_node("Transpose", ["x"], ["x_tm"], perm=[1, 0, 2]),
        helper.make_node("Transpose", ["h0"], ["h0_tm"], perm=[1, 0, 2]),
        helper.make_node("Transpose", ["c0"], ["c0_tm"], perm=[1, 0, 2]),
        helper.make_node(
            "LSTM",
            names,
            ["y_tm", "h_tm", "c_tm"],
            hidden_size=units,
            direction="bidirectional" if dirs == 2 else "forward",
        ),
        helper.make_node("Transpose", ["y_tm"], ["outputs"], perm=[2, 0, 1, 3]),
        helper.make_node("Transpose", ["h_tm"], ["h"], perm=[1, 0, 2]),
        helper.make_node("Transpose", ["c_tm"], ["c"], perm=[1, 0, 2]),
    ]
    graph = helper.make_graph(
        nodes,
        "lstm",
        [
            helper.make_tensor_value_info("x", elem, ["batch", "time", input_size]),
            helper.make_tensor_value_info("sequence_lens", onnx.TensorProto.INT32, ["batch"]),
            helper.make_tensor_value_info("h0", elem, ["batch", dirs, units]),
            helper.make_tensor_value_info("c0", elem, ["batch", dirs, units]),
        ],
        [
            helper.make_tensor_value_info("outputs", elem, ["batch", "time", dirs, units]),
            helper.make_tensor_value_info("h", elem, ["batch", dirs, units]),
            helper.make_tensor_value_info("c", elem, ["batch", dirs, units]),
        ],
        [numpy_helper.from_array(tensors[k], k) for k in ("W", "R", "B", "P") if k in tensors],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], producer_name="novolstm")
    model.ir_version = min(model.ir_version, 10)
    onnx.checker.check_model(model)
    return model


def import_lstm_node(model, node_index: int = 0) -> list[dict]:
    """Canonical parameters from an ``LSTM`` node of an ONNX model.

    Args:
        model: a ``ModelProto`` or the path of an ``.onnx`` file.
        node_index: which ``LSTM`` node, counted in graph order.

    Returns:
        One canonical dict per direction.

    Raises:
        ConversionError: a file that is not an ONNX model, fewer ``LSTM`` nodes, weights that
            are not initializers, or activations, clipping or coupled gates no spec computes.
    """
    import onnx
    from onnx import numpy_helper

    if not isinstance(model, onnx.ModelProto):
        from google.protobuf.message import DecodeError

        try:
            model = onnx.load(model)
        except DecodeError as exc:
            raise ConversionError(f"{model}: not an ONNX model ({exc})") from None
    nodes = [n for n in model.graph.node if n.op_type == "LSTM"]
    if len(nodes) <= node_index:
        raise ConversionError(f"the model has {len(nodes)} LSTM node(s); asked for number {node_index}")
    node = nodes[node_index]
    for attr in node.attribute:
        if attr.name == "activations" and [a.decode() for a in attr.strings] not in (
            [],
            ["Sigmoid", "Tanh", "Tanh"] * (len(attr.strings) // 3),
        ):
            raise ConversionError(
                f"LSTM node {node.name!r} uses activations {[a.decode() for a in attr.strings]}: no canonical spec computes them"
            )
        if attr.name in ("clip", "input_forget") and (attr.f or attr.i):
            raise ConversionError(f"LSTM node {node.name!r} sets {attr.name!r}: no canonical spec computes it")
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    inputs = list(node.input) + [""] * (8 - len(node.input))

    def tensor(position):
        name = inputs[position]
        if not name:
            return None
        if name not in inits:
            raise ConversionError(
                f"LSTM input {name!r} is not an initializer: weights computed at run time cannot be imported"
            )
        return inits[name]

    return from_onnx_lstm(tensor(1), tensor(2), tensor(3), tensor(7))
