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


def _hoisting(prologue: Graph) -> tuple[set[str], dict[str, list[str]], list[Node]]:
    """Where the prologue is cut: (the values the GEMMs read, computed for all timesteps at once;
    projection -> the names of its blocks in the hoisted dict, [] for the whole product;
    the prologue nodes left to run in the step).

    Only the GEMMs run over all timesteps; a projection read only through one split becomes
    one GEMM per block (split the weight, not the product). The biases, the split and any
    other prologue work move into the step, where XLA fuses them into the step's elementwise
    kernels. Materializing the biased product and its per-block copies over all timesteps
    cost XLA two (time, batch, k*units) arrays more, and on CPU the compiled forward+backward's
    temporaries then passed glibc's mmap threshold (32 MiB at 32x100x128 for NovoLSTM): fresh
    pages on every call, 1.6x slower. Contiguous blocks also read faster in the scan than
    slices of one wide array.
    """
    linears = {n.name: n for n in prologue.nodes if n.op == "linear"}
    before: set[str] = set()
    pending = [n.args[0] for n in linears.values()]
    while pending:
        name = pending.pop()
        if name not in before:
            before.add(name)
            pending.extend(prologue[name].args)
    users = prologue.users()
    blocks = {}
    for name in linears:
        split = [prologue[u] for u in users[name]]
        whole = len(split) != 1 or split[0].op != "split"
        blocks[name] = [] if whole else [piece for _, _, piece in split[0].attr("pieces") if piece]
    by_block = {u for name, pieces in blocks.items() if pieces for u in users[name] + pieces}
    hoisted = before | set(linears) | by_block
    rest = [n for n in prologue.nodes if n.name not in hoisted and n.op not in LEAVES]
    return before, blocks, rest


def generate(plan: LoopPlan) -> str:
    # Per-block hoisted arrays: XLA on CPU reads them in the scan faster than slices of one wide array.
    spec, program = plan.spec, split_blocks(plan.program)
    step, prologue = program.step, split_slices(program.prologue)
    states = spec.state_names
    before, blocks, rest = _hoisting(prologue)

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
    # The prologue: what the GEMMs read, the weights split per block, and the bias-free products.
    prologue_lines = render(Graph([n for n in prologue.nodes if n.name in before]), OPS, comments=comments)
    products, step_lines = {}, []
    for name, pieces in blocks.items():
        L = prologue[name]
        lhs = var(L.args[0])
        if not pieces:
            products[name] = f"{lhs} @ w_{name}"
            bias = f" + b_{name}" if any(L.attr("biases")) else ""
            step_lines += with_comment(f'{var(name)} = hoisted["{name}"]{bias}', comments.get(name, ""))
            continue
        split = next(prologue[u] for u in prologue.users()[name])
        named = [piece or "_" for _, _, piece in split.attr("pieces")]
        prologue_lines.append(
            f"{targets([f'w_{p}' if p != '_' else p for p in named])} = "
            f"jnp.split(w_{name}, {split_cuts(split)}, axis=-1)"
        )
        biased = {p for start, stop, p in split.attr("pieces") if p and any(L.attr("biases")[start:stop])}
        if biased:
            step_lines.append(
                f"{targets([f'b_{p}' if p in biased else '_' for p in named])} = "
                f"jnp.split(b_{name}, {split_cuts(split)})"
            )
        for p in pieces:
            products[p] = f"{lhs} @ w_{p}"
            bias = f" + b_{p}" if p in biased else ""
            step_lines += with_comment(f'{var(p)} = hoisted["{p}"]{bias}', comments.get(p, ""))
    # Values computed before the GEMMs (the input itself, say) that the step's share reads.
    read = {a for n in rest for a in n.args} | set(prologue.outputs.values())
    for name in sorted(read & before):
        products[name] = var(name)
        step_lines.append(f'{var(name)} = hoisted["{name}"]')
    step_lines += [line for n in rest for line in render_node(n, OPS, comments)]
    step_lines += render(step, OPS, comments=comments)
    fusion = plan.fusion_entries(
        lambda xs: f"jnp.concatenate([{', '.join(xs)}], axis=-1)", lambda ref: f"jnp.zeros({ref}.shape[-1], dtype)"
    )
    fusion += [f'"{p}": params["{p}"],' for p in plan.vector_params]
    docstring = fill(
        DOCSTRING, header=plan.header(NAME), description=docstring_text(spec.description), state_doc=", ".join(states)
    )
    prologue_return = ["return {", *(f'    "{k}": {v},' for k, v in products.items()), "}"]
    prologue_load = used_loads(
        [line for line in loads(prologue) if line.startswith("w_")], prologue_lines, prologue_return
    )
    step_load = loads(step) + [line for line in loads(prologue) if line.startswith("b_")]
    block = fill(
        SPEC_BLOCK,
        constants=plan.constants(LINEAR_SCAN=scan_output_index(spec)),
        init_source=init_source(),
        fusion=fusion,
        input=spec.input,
        prologue_load=prologue_load,
        prologue=prologue_lines,
        prologue_return=prologue_return,
        unpack_state=targets([var(s) for s in states]),
        step_size=used_loads([f"H = {var(states[0])}.shape[-1]"], step_lines),
        step_load=used_loads(step_load, step_lines),
        step=step_lines,
        new_state=tuple_of([var(step.outputs[f"state:{s}"]) for s in states]),
        output=var(step.outputs["output"]),
    )
    return inline_runtime(__package__, docstring, block)
