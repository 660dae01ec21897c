"""The Keras 3 emitter: a cell for ``keras.layers.RNN`` and a sequence layer, in ``keras.ops`` only.

The generated module imports ``keras`` and ``numpy`` and nothing else at module level (only
``vjp_numpy`` imports the framework Keras runs on, for its autodiff), so the same
source runs on Keras' TensorFlow, JAX and PyTorch backends (Keras fixes its backend
per process, from ``KERAS_BACKEND``). It defines:

- ``Cell``: a ``keras.layers.Layer`` RNN cell, constructed from ``units`` like
  ``keras.layers.LSTMCell``; its variables carry the canonical names (``W_i``,
  ``U_i``, ``b_i``, ...) and the fused matrices are built inside ``call``.
- ``Layer``: a ``keras.layers.RNN`` over that cell (``novolstm.get_layer("keras")``)
  that fuses the weights once per call rather than once per step; with
  ``hoist_input=True`` it also computes every projection of the input once for all
  timesteps (one GEMM) and loops over the step graph only.
- ``run_numpy``: the backend-neutral entry of ``novolstm.run``.
- ``vjp_numpy``: the backend-neutral gradient hook (as the NumPy, torch and JAX
  modules have), through the autodiff of the backend Keras runs on.

Keras differentiates the forward graphs itself: no backward pass is generated.

Examples:
    >>> import novolstm
    >>> source = novolstm.generate_source("lstm", backend="keras")
    >>> "from keras import ops" in source and "\nimport tensorflow" not in source  # none at module level
    True
"""

from __future__ import annotations

from novolstm.codegen import (
    ARRAY_OPS,
    LoopPlan,
    docstring_text,
    init_source,
    inline_runtime,
    linear_call,
    render,
    split_cuts,
    targets,
    tuple_of,
    var,
)
from novolstm.scan import scan_output_index
from novolstm.template import fill

NAME = "keras"
FRAMEWORK = "keras"


OPS = {
    **ARRAY_OPS,
    # One split: its gradient is one concatenation, where separate slices would each scatter
    # into zeros of the full width and be summed (a third of an LSTM step's backward on TensorFlow).
    "split": lambda n, a: f"ops.split({a[0]}, {split_cuts(n)}, axis=-1)",
    "linear": linear_call,
    # The exact logistic; each backend's kernel is overflow-free (tf.sigmoid, jax.nn.sigmoid, torch.sigmoid).
    # Not ops.hard_sigmoid: Keras 3's is relu6(x + 3) / 6, Keras 2's was clip(0.2 x + 0.5, 0, 1).
    "sigmoid": lambda n, a: f"ops.sigmoid({a[0]})",
    "tanh": lambda n, a: f"ops.tanh({a[0]})",
    "relu": lambda n, a: f"ops.relu({a[0]})",
    "softmax": lambda n, a: f"_softmax({a[0]})",
    "normalize_units": lambda n, a: f"_normalize_units({a[0]}, {n.attr('eps')!r})",
    "div": lambda n, a: f"ops.divide({a[0]}, {a[1]})",
    "exp": lambda n, a: f"ops.exp({a[0]})",
    "log": lambda n, a: f"ops.log({a[0]})",
    "sqrt": lambda n, a: f"ops.sqrt({a[0]})",
    "abs": lambda n, a: f"ops.abs({a[0]})",
    "softplus": lambda n, a: f"_softplus({a[0]})",
    "gelu": lambda n, a: f"_gelu({a[0]})",
    "maximum": lambda n, a: f"ops.maximum({a[0]}, {a[1]})",
    "minimum": lambda n, a: f"ops.minimum({a[0]}, {a[1]})",
    "clip": lambda n, a: f"ops.clip({a[0]}, {n.attr('lo')!r}, {n.attr('hi')!r})",
}


#: The generated module's docstring.
DOCSTRING = """\
$header

$description

Keras 3, written in keras.ops only: runs on Keras' TensorFlow, JAX and PyTorch
backends. State: $state_doc. Variables carry the canonical names of novolstm."""

#: The spec block of a generated module (see codegen.inline_runtime); runtime.py holds the rest.
SPEC_BLOCK = '''\
$constants


$init_source


def fuse(params):
    """The fused matrices, concatenated from canonical parameters (name -> tensor)."""
    return {
        $fusion
    }


def prologue(params, fused, v_$input, H, masks=None):
    """Every value of the step that does not depend on the state, for x with any leading axes.

    Called on x (batch, time, input) it computes the input projection of every
    timestep as one GEMM; called on x (batch, input) it is the first half of a step.
    ``masks``: None, or a dropout mask (broadcast against x) per input weight (parameter name).
    """
    $load_prologue
    $prologue
    return $hoisted_vars


def step(params, fused, hoisted, state, H, masks=None):
    """One timestep: the values ``prologue`` gave for this timestep, and the state -> (output, new state).

    ``masks``: None, or a recurrent dropout mask per recurrent weight (parameter name), applied to a
    state only where it is the operand of a projection.
    """
    $load_step
    $unpack_hoisted = hoisted
    $unpack_state = state
    $step
    # In the dtype of the state: Keras on JAX computes ops.tanh in float32 for float64 inputs
    # (keras-team/keras#23225), and a next state that is exactly a tanh broke the scan's carry.
    dtype = $first_state.dtype
    return ops.cast($output, dtype), $next_state

'''


def _graph_reads(graph, plan):
    """Load lines for the fused matrices and vector parameters a graph reads."""
    names = {n.name for n in graph.nodes if n.op == "linear"}
    lines = []
    for L in plan.linears:
        if L.name in names:
            lines.append(f'w_{L.name} = fused["w_{L.name}"]')
            if L.has_bias:
                lines.append(f'b_{L.name} = fused["b_{L.name}"]')
    lines += [f'{var(n.name)} = params["{n.name}"]' for n in graph.nodes if n.op == "param"]
    return lines


def _masked_ops(plan: LoopPlan, operands: tuple[str, ...]) -> dict:
    """OPS whose ``linear`` drops its operand block by block (one mask per weight) where the operand
    is one of ``operands`` (the input, or a state): keras.layers.LSTMCell's dropout with
    ``implementation=1``, one mask per gate, applied where the value enters a projection only."""
    weights = {L.name: L.weights for L in plan.linears}

    def linear(n, a):
        if n.args[0] not in operands:
            return linear_call(n, a)
        bias = f"b_{n.name}" if any(n.attr("biases")) else "None"
        names = tuple_of([f'"{w}"' for w in weights[n.name]])
        return f"_linear({a[0]}, w_{n.name}, {bias}, _masks(masks, {names}))"

    return {**OPS, "linear": linear}


def generate(plan: LoopPlan) -> str:
    spec, program = plan.spec, plan.program
    step = program.step
    states = spec.state_names
    widths = tuple(program.step[h].width for h in program.hoisted)
    if not all(isinstance(w, int) for w in widths):
        raise NotImplementedError(f"hoisted values must be whole blocks of units, got widths {widths}")
    docstring = fill(
        DOCSTRING, header=plan.header(NAME), description=docstring_text(spec.description), state_doc=", ".join(states)
    )
    block = fill(
        SPEC_BLOCK,
        constants=plan.constants(HOISTED_WIDTHS=widths, LINEAR_SCAN=scan_output_index(spec)),
        init_source=init_source(),
        fusion=plan.fusion_entries(
            lambda xs: f"ops.concatenate([{', '.join(xs)}], axis=-1)",
            lambda ref: f"ops.zeros(({ref}.shape[-1],), {ref}.dtype)",
        ),
        input=spec.input,
        load_prologue=_graph_reads(program.prologue, plan) or ["pass"],
        prologue=render(program.prologue, _masked_ops(plan, (spec.input,)), comments=plan.expressions),
        hoisted_vars=tuple_of([var(h) for h in program.hoisted]),
        load_step=_graph_reads(step, plan),
        unpack_hoisted=targets([var(h) for h in program.hoisted]) if program.hoisted else "()",
        unpack_state=targets([var(s) for s in states]),
        step=render(step, _masked_ops(plan, tuple(states)), comments=plan.expressions),
        first_state=var(states[0]),
        output=var(step.outputs["output"]),
        next_state=_returned_tuple([f"ops.cast({var(step.outputs[f'state:{s}'])}, dtype)" for s in states]),
    )
    return inline_runtime(__package__, docstring, block)


def _returned_tuple(items: list[str]) -> str:
    """The state tuple the step returns: one line, or one item a line (as ruff writes it) when long."""
    text = tuple_of(items)
    if len(text) <= 72:  # "    return ops.cast(<output>, dtype), " leaves about this much of 120
        return text
    return "(\n" + "".join(f"        {item},\n" for item in items) + "    )"
