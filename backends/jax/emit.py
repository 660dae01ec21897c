"""The JAX emitter: a standalone module of pure functions (init, step, sequence,
bidirectional) over ``jax.lax.scan``, a ``Cell`` bundling them, and Flax modules
(nnx and linen) that Flax's RNN wrappers accept.

JAX differentiates the forward graphs itself, so only the prologue (run once over
every timestep: the input projections, one GEMM per block the step reads) and the
step graph are emitted.

Examples:
    >>> import novolstm
    >>> source = novolstm.generate_source("lstm", backend="jax")
    >>> "jax.lax.scan" in source and "import torch" not in source
    True
"""

from __future__ import annotations

from novolstm.codegen import (
    ARRAY_OPS,
    LoopPlan,
    docstring_text,
    expressions,
    init_source,
    inline_runtime,
    render,
    render_node,
    split_cuts,
    targets,
    tuple_of,
    used_loads,
    var,
    with_comment,
)
from novolstm.ir import Graph, Node
from novolstm.passes import LEAVES, split_blocks, split_slices
from novolstm.scan import scan_output_index
from novolstm.template import fill

NAME = "jax"
FRAMEWORK = "jax"


def _linear(n, a):
    bias = f" + b_{n.name}" if any(n.attr("biases")) else ""
    return f"{a[0]} @ w_{n.name}{bias}"


OPS = {
    **ARRAY_OPS,
    # One split, whose transpose is one concatenate, where separate slices transpose to a
    # zero-padded full-width sum each (8% of a CPU forward+backward).
    "split": lambda n, a: f"jnp.split({a[0]}, {split_cuts(n)}, axis=-1)",
    "linear": _linear,
    "sigmoid": lambda n, a: f"jax.nn.sigmoid({a[0]})",
    "tanh": lambda n, a: f"jnp.tanh({a[0]})",
    "relu": lambda n, a: f"jnp.maximum({a[0]}, 0.0)",
    "softmax": lambda n, a: f"_softmax({a[0]})",
    "normalize_units": lambda n, a: f"_normalize_units({a[0]}, {n.attr('eps')!r})",
    "div": lambda n, a: f"{a[0]} / {a[1]}",
    "exp": lambda n, a: f"jnp.exp({a[0]})",
    "log": lambda n, a: f"jnp.log({a[0]})",
    "sqrt": lambda n, a: f"jnp.sqrt({a[0]})",
    "abs": lambda n, a: f"jnp.abs({a[0]})",
    "softplus": lambda n, a: f"jax.nn.softplus({a[0]})",  # logaddexp(z, 0): no overflow, no threshold
    "gelu": lambda n, a: f"jax.nn.gelu({a[0]}, approximate=False)",  # JAX's default is the tanh form
    "maximum": lambda n, a: f"jnp.maximum({a[0]}, {a[1]})",
    "minimum": lambda n, a: f"jnp.minimum({a[0]}, {a[1]})",
    "clip": lambda n, a: f"jnp.clip({a[0]}, {n.attr('lo')!r}, {n.attr('hi')!r})",
}


#: The generated module's docstring.
DOCSTRING = """\
$header

$description

State: $state_doc (a tuple in that order). Parameters use the canonical names of novolstm.

Pure functions, safe under jax.jit, jax.grad and jax.vmap: init_params / init_from_key,
step, sequence (jax.lax.scan, the input projections of every timestep hoisted out of
the loop as GEMMs) and bidirectional. ``Cell`` bundles them for a number of units.
``NNXCell`` and ``LinenCell`` are Flax modules for nnx.RNN and linen nn.RNN; flax is
imported only when one of them is first used.

Computation runs in the dtype of the inputs (parameters and state are cast to it);
float16 and bfloat16 accumulate the LayerNorm statistics and softmax sums in float32.
float64 needs jax_enable_x64 (``jax.config.update("jax_enable_x64", True)`` or
``with jax.enable_x64(True):``); run_numpy enables it for float64 inputs by itself."""

#: The spec block of a generated module (see codegen.inline_runtime); runtime.py holds the rest.
SPEC_BLOCK = '''\
$constants


$init_source


# ---------------------------------------------------------------- the graphs


def fuse(params, dtype):
    """The fused matrices and the vector parameters the graphs read, cast to the compute dtype."""
    params = {name: jnp.asarray(params[name]).astype(dtype) for name in PARAM_TABLE}
    return {
        $fusion
    }


def prologue(w, v_$input, H):
    """The input projections of every timestep at once: a dict of bias-free GEMMs, one per block the step reads.

    v_$input: inputs (..., input); H: the number of units.
    """
    $prologue_load
    $prologue
    $prologue_return


def cell_step(w, state, hoisted):
    """One timestep from the previous state and this timestep's hoisted values -> (new state, output)."""
    $unpack_state = state
    $step_size
    $step_load
    $step
    return $new_state, $output

'''


def _block_splits(prologue: Graph) -> dict[str, Node]:
    """Projection -> the one ``split`` that reads it, for each prologue projection read only so.

    Such a projection is hoisted as one GEMM per named piece: the weight is split, not the
    product, so each block is a contiguous (time, batch, units) array of its own.
    """
    users = prologue.users()
    return {
        n.name: prologue[users[n.name][0]]
        for n in prologue.nodes
        if n.op == "linear" and len(users[n.name]) == 1 and prologue[users[n.name][0]].op == "split"
    }


def _hoisted_code(prologue: Graph, comments: dict[str, str]) -> tuple[list[str], dict[str, str], list[str]]:
    """(the prologue's lines, hoisted name -> its value in the prologue, the step's lines that read them).

    A projection's bias is added in the step wherever nothing else in the prologue reads the
    block, so the prologue hands the step the bias-free GEMM, unsplit copies and biased sums
    never materialize over all timesteps, and XLA fuses the bias into the step's elementwise
    kernels. On CPU the compiled forward+backward's temporaries for NovoLSTM at 32x100x128
    went from 36 to 29 MiB, under glibc's 32 MiB mmap threshold, above which every call
    page-faults them afresh (1.6x slower).
    """
    splits = _block_splits(prologue)
    users, outputs = prologue.users(), set(prologue.outputs.values())
    lines: list[str] = []
    hoisted: dict[str, str] = {}
    step: list[str] = []

    def block(name: str, product: str, bias: str) -> None:
        if users[name]:  # read in the prologue: biased there
            lines.extend(with_comment(f"{var(name)} = {product}{bias}", comments.get(name, ""), indent=4))
            if name in outputs:
                hoisted[name] = var(name)
                step.append(f'{var(name)} = hoisted["{name}"]')
        else:
            hoisted[name] = product
            step.extend(with_comment(f'{var(name)} = hoisted["{name}"]{bias}', comments.get(name, "")))

    def split_line(names: list[str], source: str, cuts: str, axis: str = "") -> str:
        return f"{targets(names)} = jnp.split({source}, {cuts}{axis})"

    for n in prologue.nodes:
        if n.op in LEAVES or n.op == "piece" or (n.op == "split" and n.args[0] in splits):
            continue
        if n.op != "linear":
            lines.extend(render_node(n, OPS, comments))
            continue
        biases, lhs = n.attr("biases"), var(n.args[0])
        if n.name not in splits:
            block(n.name, f"{lhs} @ w_{n.name}", f" + b_{n.name}" if any(biases) else "")
            continue
        split = splits[n.name]
        pieces = [(p, any(biases[start:stop])) for start, stop, p in split.attr("pieces")]
        cuts = split_cuts(split)
        lines.append(split_line([f"w_{p}" if p else "_" for p, _ in pieces], f"w_{n.name}", cuts, ", axis=-1"))
        for where, read in ((lines, True), (step, False)):  # each side splits the biases it adds
            names = [f"b_{p}" if p and biased and bool(users[p]) == read else "_" for p, biased in pieces]
            if any(name != "_" for name in names):
                where.append(split_line(names, f"b_{n.name}", cuts))
        for p, biased in pieces:
            if p:
                block(p, f"{lhs} @ w_{p}", f" + b_{p}" if biased else "")
    for name in prologue.outputs.values():
        if name not in hoisted:
            hoisted[name] = var(name)
            step.append(f'{var(name)} = hoisted["{name}"]')
    return lines, hoisted, step


def generate(plan: LoopPlan) -> str:
    # Per-block hoisted arrays: XLA on CPU reads them in the scan faster than slices of one wide array.
    spec, program = plan.spec, split_blocks(plan.program)
    step, prologue = program.step, split_slices(program.prologue)
    states = spec.state_names

    def loads(graph):
        lines = []
        for n in graph.nodes:
            if n.op == "linear":
                lines.append(f'w_{n.name} = w["w_{n.name}"]')
                if any(n.attr("biases")):
                    lines.append(f'b_{n.name} = w["b_{n.name}"]')
            elif n.op == "param":
                lines.append(f'{var(n.name)} = w["{n.name}"]')
        return lines

    comments = expressions(program)
    prologue_lines, hoisted, step_lines = _hoisted_code(prologue, comments)
    prologue_return = ["return {", *(f'    "{k}": {v},' for k, v in hoisted.items()), "}"]
    step_lines += render(step, OPS, comments=comments)
    fusion = plan.fusion_entries(
        lambda xs: f"jnp.concatenate([{', '.join(xs)}], axis=-1)", lambda ref: f"jnp.zeros({ref}.shape[-1], dtype)"
    )
    fusion += [f'"{p}": params["{p}"],' for p in plan.vector_params]
    docstring = fill(
        DOCSTRING, header=plan.header(NAME), description=docstring_text(spec.description), state_doc=", ".join(states)
    )
    block = fill(
        SPEC_BLOCK,
        constants=plan.constants(LINEAR_SCAN=scan_output_index(spec)),
        init_source=init_source(),
        fusion=fusion,
        input=spec.input,
        prologue_load=used_loads(loads(prologue), prologue_lines, prologue_return),
        prologue=prologue_lines,
        prologue_return=prologue_return,
        unpack_state=targets([var(s) for s in states]),
        step_size=used_loads([f"H = {var(states[0])}.shape[-1]"], step_lines),
        step_load=used_loads(list(dict.fromkeys(loads(step) + loads(prologue))), step_lines),
        step=step_lines,
        new_state=tuple_of([var(step.outputs[f"state:{s}"]) for s in states]),
        output=var(step.outputs["output"]),
    )
    return inline_runtime(__package__, docstring, block)
