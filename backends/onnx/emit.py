"""The ONNX emitter: a module that builds an ONNX model of the cell and runs it in onnxruntime.

The prologue (the input projection of all timesteps: one MatMul) sits in the main
graph; the step graph becomes the body of a ``Scan`` over time, one ONNX node per IR
node. Any spec exports this way; :func:`novolstm.export_onnx` also offers the
standard LSTM as the native ONNX ``LSTM`` operator.

Example:
    >>> import novolstm
    >>> source = novolstm.generate_source("novolstm", backend="onnx")
    >>> '"Scan"' in source and "import torch" not in source
    True
"""

from __future__ import annotations

from novolstm.codegen import LoopPlan, docstring_text, init_source, render, var
from novolstm.template import fill

NAME = "onnx"
FRAMEWORK = "onnxruntime"

OPS = {
    "const": lambda n, a: f"g.const({n.attr('value')!r})",
    "linear": lambda n, a: f"g.linear({a[0]}, 'w_{n.name}'" + (f", 'b_{n.name}')" if any(n.attr("biases")) else ")"),
    "slice": lambda n, a: f"g.slice({a[0]}, {n.attr('start')} * H, {n.attr('stop')} * H)",
    "add": lambda n, a: f"g.op('Sum', [{', '.join(a)}])",
    "sub": lambda n, a: f"g.op('Sub', [{a[0]}, {a[1]}])",
    "mul": lambda n, a: f"g.op('Mul', [{a[0]}, {a[1]}])",
    "neg": lambda n, a: f"g.op('Neg', [{a[0]}])",
    "sigmoid": lambda n, a: f"g.op('Sigmoid', [{a[0]}])",
    "tanh": lambda n, a: f"g.op('Tanh', [{a[0]}])",
    "relu": lambda n, a: f"g.op('Relu', [{a[0]}])",
    "softmax": lambda n, a: f"g.op('Softmax', [{a[0]}], axis=-1)",
    "normalize_units": lambda n, a: f"g.normalize_units({a[0]}, {n.attr('eps')!r})",
}

TEMPLATE = '''\
"""$header

$description

Builds an ONNX model (opset $opset): the input projection of all timesteps in the
main graph, one Scan over time for the recurrence. Inputs: x (batch, time, input),
the initial state $state_inputs (batch, units), mask (batch, time) bool. Outputs:
outputs (batch, time, units) and the final state $state_outputs.
"""

import zlib

import numpy as np
import onnx
from onnx import helper, numpy_helper

SPEC_NAME = $spec_name
SPEC_HASH = $spec_hash
STATE_NAMES = $state_names
PARAM_TABLE = $param_table
OPSET = $opset


$init_source


def fuse(params):
    """The fused matrices, concatenated from canonical parameters."""
    return {
        $fusion
    }


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
        self.inputs.append(helper.make_tensor_value_info(name, elem or helper.np_dtype_to_tensor_dtype(self.dtype), shape))
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

    def slice(self, a, start, stop):
        return self.op("Slice", [a, self.const([start], np.int64), self.const([stop], np.int64), self.last_axis()])


def build_model(params, dtype="float32"):
    """The ONNX model of this cell for ``params`` (canonical names), computing in ``dtype``."""
    H = params[$units_param].shape[-1]
    dtype = np.dtype(dtype)
    g = main = _Graph("m", dtype)
    for name, value in fuse(params).items():
        main.const(value, name=name)
    $load_params
    main.input("x", ["batch", "time", params[$input_param].shape[0]])
    $state_graph_inputs
    main.input("mask", ["batch", "time"], onnx.TensorProto.BOOL)
    v_$input = main.op("Transpose", ["x"], perm=[1, 0, 2])  # time-major for Scan
    mask_t = main.op("Unsqueeze", [main.op("Transpose", ["mask"], perm=[1, 0]), main.const([-1], np.int64)])
    $prologue
    hoisted = [$hoisted_seq]  # main-graph values the Scan slices per step
    g = body = _Graph("s", dtype)
    $body_inputs
    m = body.input("s_mask", ["batch", 1], onnx.TensorProto.BOOL)
    $step
    # The masking rule: a masked step keeps the state and outputs zeros.
    body_outputs = [$masked_states, body.op("Where", [m, $output, body.const(0.0)])]
    graph_body = helper.make_graph(
        body.nodes, "step", body.inputs,
        [helper.make_tensor_value_info(o, helper.np_dtype_to_tensor_dtype(dtype), ["batch", H]) for o in body_outputs],
        body.initializers,
    )
    scan_outputs = [$final_state_names, "outputs_tm"]
    main.nodes.append(helper.make_node(
        "Scan", [$initial_states, *hoisted, mask_t], scan_outputs, body=graph_body, num_scan_inputs=$num_scan_inputs,
    ))
    main.nodes.append(helper.make_node("Transpose", ["outputs_tm"], ["outputs"], perm=[1, 0, 2]))
    elem = helper.np_dtype_to_tensor_dtype(dtype)
    graph = helper.make_graph(
        main.nodes, f"novolstm_{SPEC_NAME}", main.inputs,
        [helper.make_tensor_value_info("outputs", elem, ["batch", "time", H])]
        + [helper.make_tensor_value_info(o, elem, ["batch", H]) for o in [$final_state_names]],
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
    B, H = x.shape[0], params[$units_param].shape[-1]
    model = build_model({k: np.asarray(v, x.dtype) for k, v in params.items()}, x.dtype)
    session = onnxruntime.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    if state is None:
        state = tuple(np.zeros((B, H), x.dtype) for _ in STATE_NAMES)
    feeds = {"x": x, "mask": np.ones(x.shape[:2], bool) if mask is None else np.asarray(mask, bool)}
    feeds.update({f"{name}0": np.asarray(s, x.dtype) for name, s in zip(STATE_NAMES, state)})
    outputs, *final = session.run(None, feeds)
    return outputs, tuple(final)
'''


def generate(plan: LoopPlan) -> str:
    spec, program = plan.spec, plan.program
    states = spec.state_names
    step = program.step
    hoisted = program.hoisted
    table = {p.name: (p.shape, p.init.name, dict(p.init.args)) for p in spec.params}
    # Each state enters the body as s_<name>; each hoisted value per step as s_<hoisted>.
    body_inputs = [f"{var(s)} = body.input('s_{s}', ['batch', H])" for s in states]
    body_inputs += [f"{var(h)} = body.input('s_{h}', ['batch', {step[h].width} * H])" for h in hoisted]
    next_vars = [var(step.outputs[f"state:{s}"]) for s in states]
    return fill(
        TEMPLATE,
        header=plan.header(NAME),
        description=docstring_text(spec.description),
        opset=18,
        state_inputs=", ".join(f"{s}0" for s in states),
        state_outputs=", ".join(states),
        spec_name=repr(spec.name),
        spec_hash=repr(spec.hash),
        state_names=repr(states),
        param_table=repr(table),
        init_source=init_source(),
        fusion=plan.fusion_entries(lambda xs: f"np.concatenate([{', '.join(xs)}], axis=-1)", lambda ref: f"np.zeros({ref}.shape[-1], {ref}.dtype)"),
        units_param=repr(spec.params[0].name),
        input_param=repr(next(p.name for p in spec.params if p.shape[0] == "input")),
        load_params=[f'{var(p)} = main.const(params["{p}"], name="p_{p}")' for p in plan.vector_params],
        state_graph_inputs=[f"main.input('{s}0', ['batch', H])" for s in states],
        input=spec.input,
        prologue=render(program.prologue, OPS),
        body_inputs=body_inputs,
        step=render(step, OPS),
        masked_states=", ".join(f"body.op('Where', [m, {nv}, {var(s)}])" for s, nv in zip(states, next_vars)),
        output=var(step.outputs["output"]),
        final_state_names=", ".join(repr(s) for s in states),
        initial_states=", ".join(repr(f"{s}0") for s in states),
        hoisted_seq=", ".join(var(h) for h in hoisted),
        num_scan_inputs=len(hoisted) + 1,
    )
