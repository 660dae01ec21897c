"""The ONNX runtime: what every generated ONNX module holds besides its spec's own code.

Generated modules inline this file (see ``novolstm.codegen.inline_runtime``): the block
of stand-ins below is replaced by the spec's constants, ``init_params`` and the generated
``fuse`` and ``build_graphs``; everything else is this code, verbatim.
"""

import zlib  # noqa: F401 - read by the initializers that generated modules inline here

import numpy as np
import onnx
from onnx import helper, numpy_helper

# --- spec: generated modules replace this block with the spec's constants and functions
from novolstm.init import init_from_table

SPEC_NAME = "stand-in"
SPEC_HASH = ""
#: The spec's class_name: the name of the layer class (the cell's adds "Cell").
CLASS_NAME = "StandIn"
STATE_NAMES: tuple[str, ...] = ("h",)
PARAM_NAMES: tuple[str, ...] = ()
PARAM_TABLE: dict = {}
INPUT_PARAM = "W"
UNITS_PARAM = "W"
BIAS_NAMES: tuple[str, ...] = ()
OPSET = 18


def init_params(input_size, units, seed=0, dtype="float64"):
    """Canonical parameters (NumPy arrays), drawn as novolstm.init_params draws them."""
    return init_from_table(PARAM_TABLE, input_size, units, seed, dtype)


def fuse(params):
    raise NotImplementedError("generated per spec")


def build_graphs(main, body, params, H):
    raise NotImplementedError("generated per spec")


# --- end of spec block


class _Graph:
    """Collects the nodes, constants and inputs of one ONNX graph; names are unique per prefix."""

    def __init__(self, prefix, dtype):
        self.prefix, self.dtype = prefix, np.dtype(dtype)
        self.nodes, self.initializers, self.inputs, self.count = [], [], [], 0

    def name(self):
        self.count += 1
        return f"{self.prefix}{self.count}"

    def op(self, kind, inputs, **attrs):
        out = self.name()
        self.nodes.append(helper.make_node(kind, list(inputs), [out], **attrs))
        return out

    def const(self, value, dtype=None, name=None):
        name = name or self.name()
        self.initializers.append(numpy_helper.from_array(np.asarray(value, dtype or self.dtype), name))
        return name

    def input(self, name, shape, elem=None):
        self.inputs.append(
            helper.make_tensor_value_info(name, elem or helper.np_dtype_to_tensor_dtype(self.dtype), shape)
        )
        return name

    def last_axis(self):
        return self.const([-1], np.int64)

    def linear(self, a, w, b=None):
        out = self.op("MatMul", [a, w])
        return out if b is None else self.op("Add", [out, b])

    def normalize_units(self, a, eps):
        # LayerNorm without its affine part, as primitives: population variance of the
        # centred values, epsilon inside the square root.
        c = self.op("Sub", [a, self.op("ReduceMean", [a, self.last_axis()], keepdims=1)])
        var = self.op("ReduceMean", [self.op("Mul", [c, c]), self.last_axis()], keepdims=1)
        return self.op("Div", [c, self.op("Sqrt", [self.op("Add", [var, self.const(eps)])])])

    def softplus(self, a):
        # max(z, 0) + log(1 + exp(-|z|)): exp never overflows (ONNX has no log1p; the
        # sum differs from log1p by rounding only, 1 + exp(-|z|) being in [1, 2]).
        decay = self.op("Exp", [self.op("Neg", [self.op("Abs", [a])])])
        return self.op("Add", [self.op("Relu", [a]), self.op("Log", [self.op("Add", [self.const(1.0), decay])])])

    def gelu(self, a):
        # The exact GELU, z Phi(z) = z (1 + erf(z / sqrt 2)) / 2 (opset 18 has Erf, not Gelu).
        if self.dtype == np.float64:  # computing it in float32 would be a wrong answer at float64's tolerance
            raise NotImplementedError("gelu on the onnx backend: onnxruntime has no float64 Erf kernel; use float32")
        erf = self.op("Erf", [self.op("Mul", [a, self.const(0.7071067811865476)])])
        return self.op("Mul", [self.op("Mul", [a, self.const(0.5)]), self.op("Add", [erf, self.const(1.0)])])

    def split(self, a, sizes):
        """One Split of ``a``'s last axis into pieces of the given widths: their names."""
        outs = [self.name() for _ in sizes]
        self.nodes.append(helper.make_node("Split", [a, self.const(sizes, np.int64)], outs, axis=-1))
        return outs

    def slice(self, a, start, stop):
        return self.op("Slice", [a, self.const([start], np.int64), self.const([stop], np.int64), self.last_axis()])


def build_model(params, dtype="float32"):
    """The ONNX model of this cell for ``params`` (canonical names), computing in ``dtype``."""
    H = params[UNITS_PARAM].shape[-1]
    dtype = np.dtype(dtype)
    elem = helper.np_dtype_to_tensor_dtype(dtype)
    main, body = _Graph("m", dtype), _Graph("s", dtype)
    for name, value in fuse(params).items():
        main.const(value, name=name)
    main.input("x", ["batch", "time", params[INPUT_PARAM].shape[0]])
    for name in STATE_NAMES:
        main.input(f"{name}0", ["batch", H])
    main.input("mask", ["batch", "time"], onnx.TensorProto.BOOL)
    mask_t = main.op("Unsqueeze", [main.op("Transpose", ["mask"], perm=[1, 0]), main.const([-1], np.int64)])
    hoisted, body_outputs = build_graphs(main, body, params, H)
    graph_body = helper.make_graph(
        body.nodes,
        "step",
        body.inputs,
        [helper.make_tensor_value_info(o, elem, ["batch", H]) for o in body_outputs],
        body.initializers,
    )
    scan_outputs = [*STATE_NAMES, "outputs_tm"]
    initial_states = [f"{name}0" for name in STATE_NAMES]
    main.nodes.append(
        helper.make_node(
            "Scan", [*initial_states, *hoisted, mask_t], scan_outputs, body=graph_body, num_scan_inputs=len(hoisted) + 1
        )
    )
    main.nodes.append(helper.make_node("Transpose", ["outputs_tm"], ["outputs"], perm=[1, 0, 2]))
    graph = helper.make_graph(
        main.nodes,
        f"novolstm_{SPEC_NAME}",
        main.inputs,
        [helper.make_tensor_value_info("outputs", elem, ["batch", "time", H])]
        + [helper.make_tensor_value_info(o, elem, ["batch", H]) for o in STATE_NAMES],
        main.initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="novolstm")
    model.ir_version = min(model.ir_version, 10)  # readable by onnxruntime releases of the last two years
    onnx.checker.check_model(model)
    return model


def run_numpy(params, x, state=None, mask=None):
    """The backend-neutral entry of novolstm.run: build the model, run it in onnxruntime."""
    import onnxruntime

    x = np.asarray(x)
    B, H = x.shape[0], params[UNITS_PARAM].shape[-1]
    model = build_model({k: np.asarray(v, x.dtype) for k, v in params.items()}, x.dtype)
    session = onnxruntime.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    if state is None:
        state = tuple(np.zeros((B, H), x.dtype) for _ in STATE_NAMES)
    feeds = {"x": x, "mask": np.ones(x.shape[:2], bool) if mask is None else np.asarray(mask, bool)}
    feeds.update({f"{name}0": np.asarray(s, x.dtype) for name, s in zip(STATE_NAMES, state)})
    outputs, *final = session.run(None, feeds)
    return outputs, tuple(final)
