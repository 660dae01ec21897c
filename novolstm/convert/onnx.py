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

import os
from typing import Any

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
    W, R, B, dirs, H = _checked_weights(W, R, B, gates=4)
    if P is not None and np.shape(P) != (dirs, 3 * H):
        raise ConversionError(f"P: expected shape ({dirs}, {3 * H}), got {np.shape(P)}")
    out = []
    for d in range(dirs):
        p = {}
        for k, g in enumerate(GATES):
            rows = slice(k * H, (k + 1) * H)
            p[f"W_{g}"] = W[d, rows].T.copy()
            p[f"U_{g}"] = R[d, rows].T.copy()
            # summed in float64 and rounded once, as torch's two biases are (convert.torch)
            p[f"b_{g}"] = (B[d, rows].astype(np.float64) + B[d, 4 * H + k * H : 4 * H + (k + 1) * H]).astype(B.dtype)
        if P is not None:
            for k, g in enumerate(PEEPHOLES):
                p[f"p_{g}"] = np.asarray(P)[d, k * H : (k + 1) * H].copy()
        out.append(p)
    return out


GRU_GATES = ("z", "r", "n")  # ONNX's z, r, h; canonical calls the candidate n


def to_onnx_gru(directions: list[dict]) -> dict[str, np.ndarray]:
    """One canonical ``gru`` dict per direction -> the ONNX ``GRU`` operator's ``W``, ``R``, ``B``.

    With ``linear_before_reset=1`` the ONNX GRU computes the canonical ``gru`` (torch's and
    Keras' ``reset_after=True`` form): its recurrent candidate bias ``Rbh`` is ``b_hn``,
    inside the reset product; the z and r biases sit in the input half.

    Args:
        directions: one canonical ``gru`` dict per direction.

    Returns:
        ``W`` (directions, 3H, input), ``R`` (directions, 3H, H), ``B`` (directions, 6H).
    """
    return {
        "W": np.stack([np.concatenate([p[f"W_{g}"].T for g in GRU_GATES]) for p in directions]),
        "R": np.stack([np.concatenate([p[f"U_{g}"].T for g in GRU_GATES]) for p in directions]),
        "B": np.stack(
            [
                np.concatenate(
                    [p["b_z"], p["b_r"], p["b_n"], np.zeros_like(p["b_z"]), np.zeros_like(p["b_r"]), p["b_hn"]]
                )
                for p in directions
            ]
        ),
    }


def from_onnx_gru(W, R, B=None) -> list[dict]:
    """The ONNX ``GRU`` operator's tensors (``linear_before_reset=1``) -> one canonical ``gru`` dict per direction.

    Args:
        W: (directions, 3H, input), gates z, r, h.
        R: (directions, 3H, H).
        B: (directions, 6H) = [Wb; Rb], or None (zeros).

    Returns:
        One canonical ``gru`` dict per direction; the z and r biases of both halves summed
        in float64 and rounded once; ``b_n`` the input candidate bias, ``b_hn`` the recurrent one.

    Raises:
        ConversionError: shapes that are no GRU's.
    """
    W, R, B, dirs, H = _checked_weights(W, R, B, gates=3)
    out = []
    for d in range(dirs):
        p = {}
        for k, g in enumerate(GRU_GATES):
            rows = slice(k * H, (k + 1) * H)
            p[f"W_{g}"] = W[d, rows].T.copy()
            p[f"U_{g}"] = R[d, rows].T.copy()
            recurrent = B[d, 3 * H + k * H : 3 * H + (k + 1) * H]
            if g == "n":  # inside the reset product: kept apart
                p["b_n"], p["b_hn"] = B[d, rows].copy(), recurrent.copy()
            else:
                p[f"b_{g}"] = (B[d, rows].astype(np.float64) + recurrent).astype(B.dtype)
        out.append(p)
    return out


def lstm_operator_model(
    directions: list[dict],
    input_size: int | None = None,
    dtype="float32",
    opset: int = 18,
    direction: str | None = None,
):
    """An ONNX model holding one native ``LSTM`` node with these weights, batch-first at its boundary.

    Inputs ``x`` (batch, time, input), ``h0`` and ``c0`` (batch, directions, units),
    ``sequence_lens`` (batch,) int32; outputs ``outputs`` (batch, time, directions,
    units), ``h`` and ``c`` (batch, directions, units). Only the standard and the
    peephole LSTM exist as this operator; any other cell exports as a Scan graph.

    Args:
        directions: one canonical ``lstm`` or ``peephole_lstm`` dict per direction.
        input_size: features per timestep (read from the weights; kept for callers that pass it).
        dtype: the dtype the model computes in.
        opset: the ONNX opset.
        direction: "forward" or "reverse" for one direction (default "forward"),
            "bidirectional" for two.

    Returns:
        The checked ``onnx.ModelProto``.
    """
    direction = direction or ("bidirectional" if len(directions) == 2 else "forward")
    return lstm_stack_model([(direction, directions)], dtype, opset)


#: the ONNX LSTM direction attribute -> how many weight sets it takes
DIRECTIONS = {"forward": 1, "reverse": 1, "bidirectional": 2}


def lstm_stack_model(stack: list[tuple[str, list[dict]]], dtype="float32", opset: int = 18, op: str = "LSTM"):
    """An ONNX model of stacked ``LSTM`` (or ``GRU``) nodes, one per ``(direction, [weights per direction])``.

    Batch-first at its boundary, as ``lstm_operator_model``: ``h0``, ``c0``, ``h`` and
    ``c`` are (batch, layers * directions, units), layer by layer as torch orders them;
    ``outputs`` (batch, time, directions, units) are the last layer's. Layer ``k + 1`` reads
    layer ``k``'s outputs with both directions concatenated, as torch and Keras stack them.

    Args:
        stack: per layer, the ONNX direction ("forward", "reverse", "bidirectional") and one
            canonical ``lstm`` or ``peephole_lstm`` (``gru`` for the GRU) dict per direction.
        dtype: the dtype the model computes in.
        opset: the ONNX opset.
        op: "LSTM", or "GRU" (``linear_before_reset=1``: the canonical ``gru``; the model
            then has no ``c0`` input and no ``c`` output).

    Returns:
        The checked ``onnx.ModelProto``.

    Raises:
        ConversionError: a direction with the wrong number of weight sets.
    """
    import onnx
    from onnx import helper, numpy_helper

    lstm = op == "LSTM"
    first_gate = "i" if lstm else "z"
    elem = helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    input_size = np.shape(stack[0][1][0][f"W_{first_gate}"])[0]
    units = np.shape(stack[0][1][0][f"U_{first_gate}"])[0]
    dirs = DIRECTIONS[stack[0][0]]
    total = sum(DIRECTIONS[d] for d, _ in stack)
    nodes = [
        # onnxruntime runs only the time-major layout (layout=0): transpose around the nodes,
        # keeping the model's own inputs and outputs batch-first.
        helper.make_node("Transpose", ["x"], ["x_tm"], perm=[1, 0, 2]),
        helper.make_node("Transpose", ["h0"], ["h0_tm"], perm=[1, 0, 2]),
    ] + ([helper.make_node("Transpose", ["c0"], ["c0_tm"], perm=[1, 0, 2])] if lstm else [])
    initializers, states_h, states_c, x, first = [], [], [], "x_tm", 0
    for k, (direction, directions) in enumerate(stack):
        if DIRECTIONS.get(direction) != len(directions):
            raise ConversionError(
                f"layer {k}: direction {direction!r} takes {DIRECTIONS.get(direction)} weight set(s), got {len(directions)}"
            )
        tensors = {
            name: np.asarray(v, dtype) for name, v in (to_onnx_lstm if lstm else to_onnx_gru)(directions).items()
        }
        suffix = "" if len(stack) == 1 else f"_l{k}"
        names = {name: f"{name}{suffix}" for name in tensors}
        initializers += [
            numpy_helper.from_array(tensors[name], names[name]) for name in ("W", "R", "B", "P") if name in tensors
        ]
        d = DIRECTIONS[direction]
        if len(stack) == 1:
            h0, c0 = "h0_tm", "c0_tm"
        else:
            bounds = [f"bounds{suffix}_begin", f"bounds{suffix}_end"]
            initializers += [
                numpy_helper.from_array(np.array([first], np.int64), bounds[0]),
                numpy_helper.from_array(np.array([first + d], np.int64), bounds[1]),
            ]
            h0, c0 = f"h0{suffix}", f"c0{suffix}"
            nodes.append(helper.make_node("Slice", ["h0_tm", *bounds], [h0]))
            if lstm:
                nodes.append(helper.make_node("Slice", ["c0_tm", *bounds], [c0]))
        first += d
        inputs = [x, names["W"], names["R"], names["B"], "sequence_lens", h0] + ([c0] if lstm else [])
        inputs += [names["P"]] if "P" in names else []
        y, yh, yc = f"y_tm{suffix}", f"h_tm{suffix}", f"c_tm{suffix}"
        options: dict[str, Any] = {} if lstm else {"linear_before_reset": 1}
        nodes.append(
            helper.make_node(
                op,
                inputs,
                [y, yh] + ([yc] if lstm else []),
                hidden_size=units,
                direction=direction,
                name=f"{op.lower()}{suffix}",
                **options,
            )
        )
        states_h.append(yh)
        states_c.append(yc)
        if k + 1 < len(stack):  # (time, dirs, batch, units) -> (time, batch, dirs * units)
            nodes.append(helper.make_node("Transpose", [y], [f"{y}_t"], perm=[0, 2, 1, 3]))
            initializers.append(numpy_helper.from_array(np.array([0, 0, -1], np.int64), f"shape{suffix}"))
            nodes.append(helper.make_node("Reshape", [f"{y}_t", f"shape{suffix}"], [f"x{suffix}_next"]))
            x = f"x{suffix}_next"
        dirs = d
    if len(stack) == 1:
        h_all, c_all = states_h[0], states_c[0]
    else:
        h_all, c_all = "h_all", "c_all"
        nodes.append(helper.make_node("Concat", states_h, [h_all], axis=0))
        if lstm:
            nodes.append(helper.make_node("Concat", states_c, [c_all], axis=0))
    nodes += [
        helper.make_node("Transpose", [y], ["outputs"], perm=[2, 0, 1, 3]),
        helper.make_node("Transpose", [h_all], ["h"], perm=[1, 0, 2]),
    ] + ([helper.make_node("Transpose", [c_all], ["c"], perm=[1, 0, 2])] if lstm else [])
    states = ["h0", "c0"] if lstm else ["h0"]
    graph = helper.make_graph(
        nodes,
        op.lower(),
        [
            helper.make_tensor_value_info("x", elem, ["batch", "time", input_size]),
            helper.make_tensor_value_info("sequence_lens", onnx.TensorProto.INT32, ["batch"]),
        ]
        + [helper.make_tensor_value_info(name, elem, ["batch", total, units]) for name in states],
        [helper.make_tensor_value_info("outputs", elem, ["batch", "time", dirs, units])]
        + [helper.make_tensor_value_info(name[0], elem, ["batch", total, units]) for name in states],
        initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], producer_name="novolstm")
    model.ir_version = min(model.ir_version, 10)
    onnx.checker.check_model(model)
    return model


#: an ONNX model file may be at most this large (protobuf's own limit)
MAX_MODEL_BYTES = 2**31 - 1
#: the LSTM attributes novolstm reads; any other attribute is refused by name
_ATTRIBUTES = {
    "activation_alpha",
    "activation_beta",
    "activations",
    "clip",
    "direction",
    "hidden_size",
    "input_forget",
    "layout",
}
#: the GRU's: no input_forget; linear_before_reset, which must be 1 (the canonical gru)
_GRU_ATTRIBUTES = (_ATTRIBUTES - {"input_forget"}) | {"linear_before_reset"}
#: ops that only move or reshape data: between two LSTM nodes of a stack nothing else may stand
_SHAPE_OPS = {"Transpose", "Reshape", "Squeeze", "Unsqueeze", "Identity", "Dropout", "Flatten"}


def _load_model(model):
    """A ModelProto from a path or a ModelProto, with no external data read (a path in a model is never followed)."""
    import onnx

    if isinstance(model, onnx.ModelProto):
        return model
    from novolstm.convert.safe_io import read_bytes

    data = read_bytes(model, MAX_MODEL_BYTES, ConversionError, "ONNX model")
    try:
        return onnx.load_model_from_string(data)
    except Exception as exc:  # protobuf's DecodeError and friends
        raise ConversionError(f"{model}: not an ONNX model ({type(exc).__name__}: {str(exc)[:200]})") from None


def _subgraph_ops(graph, depth: int = 0) -> set:
    """Op types inside the control-flow subgraphs (Loop, Scan, If bodies) of ``graph``."""
    from onnx import AttributeProto

    if depth > 32:
        raise ConversionError("ONNX subgraphs nested more than 32 deep")
    ops = set()
    for node in graph.node:
        for attr in node.attribute:
            subgraphs = (
                [attr.g]
                if attr.type == AttributeProto.GRAPH
                else list(attr.graphs)
                if attr.type == AttributeProto.GRAPHS
                else []
            )
            for sub in subgraphs:
                ops |= {n.op_type for n in sub.node} | _subgraph_ops(sub, depth + 1)
    return ops


def _constants(model, folder=None):
    """Initializers and Constant nodes' values by name, as NumPy arrays (read on demand).

    External data (what ``torch.onnx.export(dynamo=True)`` writes next to the model,
    ``m.onnx.data``) is read only from a plain file beside the model: a bare file name, no
    directory, no link, its offset and length inside the file and equal to the tensor's size.
    """
    from onnx import TensorProto, numpy_helper

    tensors = {t.name: t for t in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Constant" and len(node.output) == 1:
            value = next((a.t for a in node.attribute if a.name == "value" and a.HasField("t")), None)
            if value is not None:
                tensors[node.output[0]] = value

    def array(name):
        tensor = tensors[name]
        if tensor.data_location == TensorProto.EXTERNAL or tensor.external_data:
            tensor = _with_external_data(tensor, folder)
        return numpy_helper.to_array(tensor)

    return tensors, array


def _with_external_data(tensor, folder):
    """A copy of ``tensor`` holding its external bytes, read as ``_constants`` allows."""
    import math
    import stat

    from onnx import TensorProto, helper

    where = f"initializer {tensor.name!r}"
    info = {entry.key: entry.value for entry in tensor.external_data}
    location = info.get("location", "")
    if folder is None:
        raise ConversionError(f"{where} keeps its data in an external file; pass the model's path, not a ModelProto")
    if not location or os.path.basename(location) != location or location in (".", "..") or "\\" in location:
        raise ConversionError(
            f"{where} keeps its data in an external file {location!r}; novolstm reads external data only from a "
            "file beside the model (a bare file name), never from another folder"
        )
    path = os.path.join(folder, location)
    try:
        st = os.lstat(path)
    except OSError as exc:
        raise ConversionError(f"{where}: its external data file {location!r} cannot be read ({exc.strerror})") from None
    if not stat.S_ISREG(st.st_mode):
        raise ConversionError(
            f"{where}: its external data file {location!r} is not a regular file (a link?); novolstm follows no links"
        )
    try:
        offset, length = int(info.get("offset", "0")), int(info["length"])
    except (KeyError, ValueError):
        raise ConversionError(f"{where}: external data without a whole-number offset and length") from None
    itemsize = helper.tensor_dtype_to_np_dtype(tensor.data_type).itemsize
    expected = math.prod(tensor.dims) * itemsize
    if length != expected or offset < 0 or offset + length > st.st_size:
        raise ConversionError(
            f"{where}: external bytes {offset}..{offset + length} of {location!r} ({st.st_size} bytes) do not hold "
            f"its {expected} bytes"
        )
    with open(path, "rb") as fh:
        fh.seek(offset)
        data = fh.read(length)
    copy = TensorProto()
    copy.CopyFrom(tensor)
    copy.ClearField("external_data")
    copy.data_location = TensorProto.DEFAULT
    copy.raw_data = data
    return copy


def _check_attributes(node, dirs: int, units: int) -> str:
    """The node's direction, after refusing every attribute no canonical spec computes."""
    from onnx import helper

    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    lstm = node.op_type == "LSTM"
    where = f"{node.op_type} node {node.name!r}"
    unknown = sorted(set(attrs) - (_ATTRIBUTES if lstm else _GRU_ATTRIBUTES))
    if unknown:
        raise ConversionError(f"{where}: unknown attributes {unknown}")
    direction = attrs.get("direction", b"forward")
    direction = direction.decode() if isinstance(direction, bytes) else str(direction)
    if direction not in DIRECTIONS:
        raise ConversionError(f"{where}: direction {direction!r}; expected one of {sorted(DIRECTIONS)}")
    if DIRECTIONS[direction] != dirs:
        raise ConversionError(
            f"{where}: direction {direction!r} takes {DIRECTIONS[direction]} weight set(s), W has {dirs}"
        )
    activations = [a.decode() if isinstance(a, bytes) else str(a) for a in attrs.get("activations", [])]
    if activations and activations != (["Sigmoid", "Tanh", "Tanh"] if lstm else ["Sigmoid", "Tanh"]) * dirs:
        raise ConversionError(f"{where} uses activations {activations}: no canonical spec computes them")
    for name in ("activation_alpha", "activation_beta"):
        if attrs.get(name):
            raise ConversionError(
                f"{where} sets {name} {list(attrs[name])}: Sigmoid and Tanh take none; no canonical spec computes it"
            )
    if "clip" in attrs:
        raise ConversionError(f"{where} sets 'clip' ({attrs['clip']}): no canonical spec clips its cell input")
    if attrs.get("input_forget"):
        raise ConversionError(
            f"{where} sets 'input_forget' (coupled input and forget gates): no canonical spec computes it"
        )
    if not lstm and attrs.get("linear_before_reset", 0) != 1:
        raise ConversionError(
            f"{where}: linear_before_reset={attrs.get('linear_before_reset', 0)} applies the reset gate before the "
            "recurrent matmul (Keras' reset_after=False); the canonical gru is the linear_before_reset=1 form"
        )
    if "hidden_size" in attrs and attrs["hidden_size"] != units:
        raise ConversionError(f"{where}: hidden_size {attrs['hidden_size']}, but R holds {units} units")
    if attrs.get("layout", 0) not in (0, 1):
        raise ConversionError(f"{where}: layout {attrs['layout']}; expected 0 or 1")
    return direction


def _fed_by(model, node, previous) -> bool:
    """Whether ``node``'s input X is ``previous``'s output Y, through ops that only move data."""
    producers = {out: n for n in model.graph.node for out in n.output}
    name, seen = node.input[0], 0
    while seen < 64:
        producer = producers.get(name)
        if producer is None:
            return False
        if producer is previous:
            return list(producer.output).index(name) == 0
        if producer.op_type not in _SHAPE_OPS:
            return False
        name, seen = producer.input[0], seen + 1
    return False


def import_lstm_layers(model) -> dict:
    """Every ``LSTM`` node of an ONNX model as per-layer canonical parameters, every node checked first.

    Nodes stack in graph order, each fed by the one before (what ``torch.onnx.export`` writes
    for ``num_layers > 1``).

    Args:
        model: a ``ModelProto`` or the path of an ``.onnx`` file (external data is read
            only from a plain file beside it).

    Returns:
        ``{"l0": ..., "l0_reverse": ..., "l1": ...}``; a ``direction="reverse"`` layer is
        ``l<k>_reverse`` alone.

    Raises:
        ConversionError: by name: activations, clipping, coupled gates, attributes novolstm
            does not know, GRU or RNN nodes, LSTM nodes inside control flow, nodes that do not
            feed each other, weights computed at run time or kept outside the model's folder.
    """
    return import_layers(model, "LSTM")


def import_gru_layers(model) -> dict:
    """Every ``GRU`` node (``linear_before_reset=1``) of an ONNX model as per-layer canonical ``gru`` parameters.

    Args:
        model: a ``ModelProto`` or the path of an ``.onnx`` file.

    Returns:
        ``{"l0": ..., "l0_reverse": ..., "l1": ...}``, as ``import_lstm_layers``.

    Raises:
        ConversionError: as ``import_lstm_layers``, and ``linear_before_reset=0`` (another function).
    """
    return import_layers(model, "GRU")


def import_layers(model, op: str) -> dict:
    """Every ``op`` node ("LSTM" or "GRU") of an ONNX model as per-layer canonical parameters (see ``import_lstm_layers``)."""
    folder = None if not isinstance(model, (str, os.PathLike)) else os.path.dirname(os.path.abspath(model))
    model = _load_model(model)
    ops = {n.op_type for n in model.graph.node}
    nested = _subgraph_ops(model.graph)
    others = ({"LSTM", "GRU", "RNN"} - {op}) & (ops | nested)
    if others:
        raise ConversionError(f"the model has {sorted(others)} nodes; novolstm reads it as a stack of {op} operators")
    if op in nested:
        raise ConversionError(
            f"the model has {op} nodes inside control flow (Loop, Scan, If): not a stack of layers novolstm can read"
        )
    nodes = [n for n in model.graph.node if n.op_type == op]
    if not nodes:
        raise ConversionError(f"the model has no {op} node")
    constants, array = _constants(model, folder)
    layers, directions = {}, set()
    for k, node in enumerate(nodes):
        inputs = list(node.input) + [""] * (8 - len(node.input))

        def tensor(position, node=node, inputs=inputs):
            name = inputs[position]
            if not name:
                return None
            if name not in constants:
                raise ConversionError(
                    f"{op} node {node.name!r}: input {name!r} is not an initializer: weights computed at run time "
                    "cannot be imported"
                )
            return array(name)

        if op == "LSTM":
            cells = from_onnx_lstm(tensor(1), tensor(2), tensor(3), tensor(7))
        else:
            cells = from_onnx_gru(tensor(1), tensor(2), tensor(3))
        direction = _check_attributes(
            node, len(cells), np.shape(cells[0][next(n for n in cells[0] if n.startswith("U_"))])[-1]
        )
        if k and not _fed_by(model, node, nodes[k - 1]):
            raise ConversionError(
                f"{op} node {k} ({node.name!r}) does not take its input from {op} node {k - 1}'s outputs through "
                "transposes and reshapes only: not a stack of layers novolstm can read"
            )
        directions.add(direction)
        if direction == "reverse":
            layers[f"l{k}_reverse"] = cells[0]
        else:
            layers.update(zip((f"l{k}", f"l{k}_reverse"), cells))
    if len(directions) > 1:
        raise ConversionError(
            f"the {op} nodes mix directions {sorted(directions)}; a stack is all forward, all reverse or all bidirectional"
        )
    return layers


def import_lstm_node(model, node_index: int = 0) -> list[dict]:
    """Canonical parameters from an ``LSTM`` node of an ONNX model.

    Args:
        model: a ``ModelProto`` or the path of an ``.onnx`` file.
        node_index: which ``LSTM`` node, counted in graph order.

    Returns:
        One canonical dict per direction.

    Raises:
        ConversionError: a file that is not an ONNX model, fewer ``LSTM`` nodes, or anything
            ``import_lstm_layers`` refuses (every node is checked).
    """
    layers = import_lstm_layers(model)
    count = len({key.split("_")[0] for key in layers})
    if node_index >= count:
        raise ConversionError(f"the model has {count} LSTM node(s); asked for number {node_index}")
    return [layers[key] for key in (f"l{node_index}", f"l{node_index}_reverse") if key in layers]


def _checked_weights(W, R, B, gates: int):
    """ONNX's W (directions, gates*H, input), R (directions, gates*H, H) and B (directions,
    2*gates*H; zeros when None) as arrays, with the direction count and H, or ConversionError."""
    W, R = np.asarray(W), np.asarray(R)
    if (
        W.ndim != 3
        or R.ndim != 3
        or W.shape[1] % gates
        or R.shape[1:] != (W.shape[1], W.shape[1] // gates)
        or R.shape[0] != W.shape[0]
    ):
        raise ConversionError(
            f"expected W (directions, {gates}H, input) and R (directions, {gates}H, H), got {W.shape} and {R.shape}"
        )
    dirs, H = W.shape[0], W.shape[1] // gates
    B = np.zeros((dirs, 2 * gates * H), W.dtype) if B is None else np.asarray(B)
    if B.shape != (dirs, 2 * gates * H):
        raise ConversionError(f"B: expected shape ({dirs}, {2 * gates * H}), got {B.shape}")
    return W, R, B, dirs, H
