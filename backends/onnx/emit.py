"""The ONNX emitter: a module that builds an ONNX model of the cell and runs it in onnxruntime.

The prologue (the input projection of all timesteps: one MatMul) sits in the main
graph; the step graph becomes the body of a ``Scan`` over time, one ONNX node per IR
node. Any spec exports this way; ``novolstm.export_onnx`` also offers the
standard LSTM as the native ONNX ``LSTM`` operator.

Examples:
    >>> import novolstm
    >>> source = novolstm.generate_source("novolstm", backend="onnx")
    >>> '"Scan"' in source and "import torch" not in source
    True
"""

from __future__ import annotations

from novolstm.codegen import (
    LoopPlan,
    docstring_text,
    init_source,
    inline_runtime,
    render,
    split_sizes,
    units_offset,
    var,
)
from novolstm.template import fill

NAME = "onnx"
FRAMEWORK = "onnxruntime"

OPS = {
    "const": lambda n, a: f"g.const({n.attr('value')!r})",
    "linear": lambda n, a: f'g.linear({a[0]}, "w_{n.name}"' + (f', "b_{n.name}")' if any(n.attr("biases")) else ")"),
    "split": lambda n, a: f"g.split({a[0]}, {split_sizes(n)})",
    "slice": lambda n, a: f"g.slice({a[0]}, {n.attr('start')} * H, {n.attr('stop')} * H)",
    "add": lambda n, a: f'g.op("Sum", [{", ".join(a)}])',
    "sub": lambda n, a: f'g.op("Sub", [{a[0]}, {a[1]}])',
    "mul": lambda n, a: f'g.op("Mul", [{a[0]}, {a[1]}])',
    "neg": lambda n, a: f'g.op("Neg", [{a[0]}])',
    "sigmoid": lambda n, a: f'g.op("Sigmoid", [{a[0]}])',
    "tanh": lambda n, a: f'g.op("Tanh", [{a[0]}])',
    "relu": lambda n, a: f'g.op("Relu", [{a[0]}])',
    "softmax": lambda n, a: f'g.op("Softmax", [{a[0]}], axis=-1)',
    "normalize_units": lambda n, a: f"g.normalize_units({a[0]}, {n.attr('eps')!r})",
    "div": lambda n, a: f'g.op("Div", [{a[0]}, {a[1]}])',
    "exp": lambda n, a: f'g.op("Exp", [{a[0]}])',
    "log": lambda n, a: f'g.op("Log", [{a[0]}])',
    "sqrt": lambda n, a: f'g.op("Sqrt", [{a[0]}])',
    "abs": lambda n, a: f'g.op("Abs", [{a[0]}])',
    "softplus": lambda n, a: f"g.softplus({a[0]})",
    "gelu": lambda n, a: f"g.gelu({a[0]})",
    "maximum": lambda n, a: f'g.op("Max", [{a[0]}, {a[1]}])',
    "minimum": lambda n, a: f'g.op("Min", [{a[0]}, {a[1]}])',
    "clip": lambda n, a: f'g.op("Clip", [{a[0]}, g.const({n.attr("lo")!r}), g.const({n.attr("hi")!r})])',
}

#: The opset of the models generated modules build.
OPSET = 18

#: The generated module's docstring.
DOCSTRING = """\
$header

$description

Builds an ONNX model (opset $opset): the input projection of all timesteps in the
main graph, one Scan over time for the recurrence. Inputs: x (batch, time, input),
the initial state $state_inputs (batch, units), mask (batch, time) bool. Outputs:
outputs (batch, time, units) and the final state $state_outputs."""

#: The spec block of a generated module (see codegen.inline_runtime); runtime.py holds the rest.
SPEC_BLOCK = '''\
$constants


$init_source


def fuse(params):
    """The fused matrices, concatenated from canonical parameters."""
    return {
        $fusion
    }


def build_graphs(main, body, params, H):
    """The prologue into the main graph, the step into the Scan's body: (hoisted values, body outputs)."""
    g = main
    $load_params
    v_$input = main.op("Transpose", ["x"], perm=[1, 0, 2])  # time-major for Scan
    $prologue
    hoisted = [$hoisted_seq]  # main-graph values the Scan slices per step
    g = body
    $body_inputs
    m = body.input("s_mask", ["batch", 1], onnx.TensorProto.BOOL)
    $step
    # The masking rule: a masked step keeps the state and outputs zeros.
    return hoisted, [
        $body_outputs
    ]
'''


def generate(plan: LoopPlan) -> str:
    spec, program = plan.spec, plan.program
    states = spec.state_names
    step = program.step
    hoisted = program.hoisted
    # Each state enters the body as s_<name>; each hoisted value per step as s_<hoisted>.
    body_inputs = [f'{var(s)} = body.input("s_{s}", ["batch", H])' for s in states]
    body_inputs += [f'{var(h)} = body.input("s_{h}", ["batch", {units_offset(step[h].width)}])' for h in hoisted]
    next_vars = [var(step.outputs[f"state:{s}"]) for s in states]
    docstring = fill(
        DOCSTRING,
        header=plan.header(NAME),
        description=docstring_text(spec.description),
        opset=OPSET,
        state_inputs=", ".join(f"{s}0" for s in states),
        state_outputs=", ".join(states),
    )
    block = fill(
        SPEC_BLOCK,
        constants=plan.constants(OPSET=OPSET),
        init_source=init_source(),
        fusion=plan.fusion_entries(
            lambda xs: f"np.concatenate([{', '.join(xs)}], axis=-1)",
            lambda ref: f"np.zeros({ref}.shape[-1], {ref}.dtype)",
        ),
        load_params=[f'{var(p)} = main.const(params["{p}"], name="p_{p}")' for p in plan.vector_params],
        input=spec.input,
        prologue=render(program.prologue, OPS, comments=plan.expressions),
        body_inputs=body_inputs,
        step=render(step, OPS, comments=plan.expressions),
        body_outputs=[f'body.op("Where", [m, {nv}, {var(s)}]),' for s, nv in zip(states, next_vars)]
        + [f'body.op("Where", [m, {var(step.outputs["output"])}, body.const(0.0)]),'],
        hoisted_seq=", ".join(var(h) for h in hoisted),
    )
    return inline_runtime(__package__, docstring, block)
