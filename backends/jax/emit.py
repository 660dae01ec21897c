"""The JAX emitter: a standalone module of pure functions (init, step, sequence,
bidirectional) over ``jax.lax.scan``, a ``Cell`` bundling them, and Flax modules
(nnx and linen) that Flax's RNN wrappers accept.

Emitted: the prologue (run once over every timestep: the input projections, one
bias-free GEMM per block the step reads), the step graph, and the step's backward pass
from the IR (``novolstm.autodiff``), which the runtime's ``jax.custom_vjp`` around the
loop runs in a reverse scan; JAX differentiates the prologue and everything else itself.

Examples:
    >>> import novolstm
    >>> source = novolstm.generate_source("lstm", backend="jax")
    >>> "jax.lax.scan" in source and "import torch" not in source
    True
"""

from __future__ import annotations

from typing import NamedTuple

from novolstm.autodiff import differentiate_with_notes
from novolstm.codegen import (
    ARRAY_OPS,
    LoopPlan,
    backward_comments,
    concat_op,
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
from novolstm.ir import Graph, Node, live_names
from novolstm.passes import LEAVES, cse, split_blocks, split_slices
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
    # backward-only ops (step_backward: the IR's own backward pass, novolstm.autodiff)
    "gelu_grad": lambda n, a: f"_gelu_grad({a[0]}, {a[1]})",
    "sign": lambda n, a: f"jnp.sign({a[0]})",
    "ge_mask": lambda n, a: f"jnp.greater_equal({a[0]}, {a[1]})",
    "in_range": lambda n, a: f"({a[0]} >= {n.attr('lo')!r}) & ({a[0]} <= {n.attr('hi')!r})",
    "sigmoid_grad": lambda n, a: f"{a[0]} * {a[1]} * (1.0 - {a[1]})",
    "tanh_grad": lambda n, a: f"{a[0]} * (1.0 - {a[1]} * {a[1]})",
    "relu_grad": lambda n, a: f"{a[0]} * ({a[1]} > 0.0)",
    "softmax_grad": lambda n, a: f"{a[1]} * ({a[0]} - _sum_units({a[0]} * {a[1]}))",
    "normalize_units_grad": lambda n, a: f"_normalize_units_grad({', '.join(a)}, {n.attr('eps')!r})",
    "linear_t": lambda n, a: f"{a[0]} @ wt_{n.attr('linear')}",
    "sum_units": lambda n, a: f"_sum_units({a[0]})",
    "sum_batch": lambda n, a: f"_sum_rows({a[0]})",
    "concat": concat_op(
        "jnp.zeros({like}.shape[:-1] + ({width},), {like}.dtype)", "jnp.concatenate([{parts}], axis=-1)"
    ),
}


#: The generated module's docstring.
DOCSTRING = """\
$header

$description

State: $state_doc (a tuple in that order). Parameters use the canonical names of novolstm.

Pure functions, safe under jax.jit, jax.grad and jax.vmap: init_params / init_from_key,
step, sequence (jax.lax.scan, the input projections of every timestep hoisted out of
the loop as GEMMs; differentiated by the generated backward pass, step_backward) and
bidirectional. ``Cell`` bundles them for a number of units.
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


def prologue(w, v_$input, H, block_products=None):
    """The input projections of every timestep at once: a dict of bias-free GEMMs, one per block the step reads.

    v_$input: inputs (..., input); H: the number of units; block_products: the function that
    computes them (None: _block_products, which forward and reverse mode differentiate; the
    loop's custom_vjp passes _block_products_vjp, reverse mode only, whose weight gradient
    XLA runs without a transposed copy of the cotangent).
    """
    $prologue_load
    $prologue
    $prologue_return


def add_biases(w, hoisted, H):
    """The hoisted values of one timestep (or of all, stacked) with their projections' biases added.

    The prologue leaves the biases out, so that no biased copy of every timestep's
    projection is ever stored; inside the step XLA fuses the adds into the step's kernels.
    """
    $bias_load
    $bias_lines
    $bias_return


def cell_step(w, state, hoisted, products=None):
    """One timestep from the previous state and this timestep's hoisted values -> (new state, output).

    products: the step's projections of the state (step_products), where the caller has them.
    """
    $unpack_state = state
    H = $units
    hoisted = add_biases(w, hoisted, H)
    $products_default
    $step_load
    $step
    return $new_state, $output


def step_products(w, state):
    """The step's projections of a state: its GEMMs whose operand is a state.

    The forward pass under differentiation keeps them, so that the backward pass reads them
    instead of computing them again.
    """
    $products_load
    $products_return


def step_backward(w, state, hoisted, products, g_state, g_output):
    """One timestep backwards: the cotangents of the previous state, and this step's gradient parts.

    ``w`` holds each step projection's transposed weight as well (``wt_<name>``, made once
    before the loop: a GEMM with a transposed operand inside the loop repacks it every step).
    Generated from the IR's own backward pass (novolstm.autodiff): the step's elementwise
    values are computed again from the state, the hoisted values and the forward pass's
    ``products`` (step_products), never stored. Returns (the previous state's cotangents, a dict:
    "hoisted" the cotangent of each hoisted value not in HOISTED_IN_PRODUCTS, "linears"
    each step projection's output cotangent, "params" each vector parameter's
    gradient, per batch row where it is a sum over the batch, "operands" each step
    projection's operand that is not a state). Weight gradients are formed after the
    loop, as one GEMM over every timestep each.
    """
    $unpack_state = state
    H = $units
    hoisted = add_biases(w, hoisted, H)
    $backward_load
    $recompute
    $seeds
    $backward
    return $g_prev_state, {
        $per_step
    }
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


class Hoisting(NamedTuple):
    """How the prologue's values reach the step (see ``_hoisted_code``)."""

    prologue: list[str]  # the prologue's lines
    hoisted: dict[str, str]  # hoisted name -> its value in the prologue's returned dict
    bias_lines: list[str]  # add_biases' lines before its return: splits of the fused biases
    biased: list[str]  # add_biases' returned entries ``"name": hoisted["name"] + b_name,``
    reads: list[str]  # the step's ``v_name = hoisted["name"]`` lines


def _hoisted_code(prologue: Graph, comments: dict[str, str]) -> Hoisting:
    """The prologue's code and how the step reads what it hoists.

    A projection's bias is added in the step (``add_biases``) wherever nothing else in
    the prologue reads the block, so the prologue hands the step the bias-free GEMM,
    unsplit copies and biased sums never materialize over all timesteps, and XLA fuses
    the bias into the step's elementwise kernels. On CPU the compiled forward+backward's
    temporaries for NovoLSTM at 32x100x128 went from 36 to 29 MiB, under glibc's 32 MiB
    mmap threshold, above which every call page-faults them afresh (1.6x slower).
    """
    splits = _block_splits(prologue)
    users, outputs = prologue.users(), set(prologue.outputs.values())
    out = Hoisting([], {}, [], [], [])

    def block(name: str, product: str, bias: str) -> None:
        if users[name]:  # read in the prologue: biased there
            out.prologue.extend(with_comment(f"{var(name)} = {product}{bias}", comments.get(name, ""), indent=4))
            if name in outputs:
                out.hoisted[name] = var(name)
        else:
            out.hoisted[name] = product
            if bias:
                entry = f'"{name}": hoisted["{name}"]{bias},'
                out.biased.extend(with_comment(entry, comments.get(name, ""), indent=8))

    def split_line(names: list[str], source: str, cuts: str, axis: str = "") -> str:
        return f"{targets(names)} = jnp.split({source}, {cuts}{axis})"

    for n in prologue.nodes:
        if n.op in LEAVES or n.op == "piece" or (n.op == "split" and n.args[0] in splits):
            continue
        if n.op != "linear":
            out.prologue.extend(render_node(n, OPS, comments))
            continue
        biases, lhs = n.attr("biases"), var(n.args[0])
        if n.name not in splits:
            block(n.name, f"block_products({lhs}, w_{n.name}, ())[0]", f" + b_{n.name}" if any(biases) else "")
            continue
        split = splits[n.name]
        pieces = [(p, any(biases[start:stop])) for start, stop, p in split.attr("pieces")]
        cuts = split_cuts(split)
        whole = all(p for p, _ in pieces)  # every block read: one block_products call
        if whole:
            products = targets([f"p_{p}" for p, _ in pieces])
            out.prologue.append(f"{products} = block_products({lhs}, w_{n.name}, {tuple_of(cuts[1:-1].split(', '))})")
        else:
            out.prologue.append(
                split_line([f"w_{p}" if p else "_" for p, _ in pieces], f"w_{n.name}", cuts, ", axis=-1")
            )
        for where, read in ((out.prologue, True), (out.bias_lines, False)):  # each side splits the biases it adds
            names = [f"b_{p}" if p and biased and bool(users[p]) == read else "_" for p, biased in pieces]
            if any(name != "_" for name in names):
                where.append(split_line(names, f"b_{n.name}", cuts))
        for p, biased in pieces:
            if p:
                block(p, f"p_{p}" if whole else f"block_products({lhs}, w_{p}, ())[0]", f" + b_{p}" if biased else "")
    for name in prologue.outputs.values():
        if name not in out.hoisted:
            out.hoisted[name] = var(name)
    out.reads.extend(f'{var(name)} = hoisted["{name}"]' for name in out.hoisted)
    return out


def _step_backward(
    step: Graph, taken: list[str], forward_comments: dict[str, str]
) -> tuple[Graph, dict[str, str], dict[str, str]]:
    """(the step's backward graph, the vector parameters' gradient values, comments).

    A vector parameter's gradient that sums a batched value over the batch is deferred:
    its value is that batched one (per batch row), summed over time and batch at once
    after the loop instead of once per step; that sum is left out of the graph.
    """
    back, notes = differentiate_with_notes(step, taken)
    back = cse(back)
    users = back.users()
    params, deferred = {}, set()
    for role, value in back.outputs.items():
        target = role.split(":", 1)[1]
        if step[target].op != "param":
            continue
        node = back[value]
        if node.op == "sum_batch" and not users[value] and back[node.args[0]].batched:
            deferred.add(value)
            value = node.args[0]
        params[target] = value
    graph = Graph([n for n in back.nodes if n.name not in deferred], dict(back.outputs))
    comments = backward_comments({k: v for k, v in notes.items() if k in back}, forward_comments)
    return graph, params, comments


def _dict_lines(entries: list[tuple[str, str]], indent: str = "    ") -> list[str]:
    return [f'{indent}"{k}": {v},' for k, v in entries]


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
    hoisting = _hoisted_code(prologue, comments)
    prologue_return = ["return {", *(f'    "{k}": {v},' for k, v in hoisting.hoisted.items()), "}"]
    bias_return = ["return {", "    **hoisted,", *(f"    {e}" for e in hoisting.biased), "}"]
    if not hoisting.biased:
        bias_return = ["return hoisted"]

    # The step's projections of a state: kept by the forward pass for the backward pass.
    linears = [n for n in step.nodes if n.op == "linear"]
    of_state = [n for n in linears if step[n.args[0]].op == "state"]
    replay_ops = {**OPS, "linear": lambda n, a: f'products["{n.name}"]' if n in of_state else OPS["linear"](n, a)}
    step_lines = hoisting.reads + render(step, replay_ops, comments=comments)
    products_default = ["if products is None:", "    products = step_products(w, state)"] if of_state else []
    state_loads = [f"{var(s)} = state[{k}]" for k, s in enumerate(states)]
    products_return = ["return {", *(f'    "{n.name}": {OPS["linear"](n, [var(n.args[0])])},' for n in of_state), "}"]
    if not of_state:
        products_return = ["return {}"]

    # The backward step: the forward values it reads, computed again, then the IR's backward pass.
    back, param_grads, back_comments = _step_backward(step, [n.name for n in prologue.nodes], comments)
    operands = [n.args[0] for n in linears if n not in of_state]
    roots = [n.name for n in back.nodes if n.op == "saved"] + operands
    live = live_names(step.nodes, roots)
    recompute = render(Graph([n for n in step.nodes if n.name in live], {}), replay_ops, comments=comments)
    seeds = []
    for n in back.nodes:
        if n.op == "seed":
            role = n.attr("role")
            source = "g_output" if role == "output" else f"g_state[{states.index(role.split(':', 1)[1])}]"
            seeds.append(f"{var(n.name)} = {source}")
    backward = render(back, OPS, comments=back_comments)
    g_prev = [
        var(back.outputs[f"grad:{s}"]) if f"grad:{s}" in back.outputs else f"jnp.zeros_like({var(s)})" for s in states
    ]
    # Each step projection's output cotangent is stacked over time whole, so that its weight
    # gradient is one wide GEMM; a hoisted value whose cotangent is a block of it is that block
    # of the stack, cut after the loop, not stacked again.
    operand_of: dict[str, str] = {}
    in_products: dict[str, tuple[str, int, int]] = {}
    linear_grads = []
    for n in linears:
        operand_of[n.name] = n.args[0]
        grad = back.outputs.get(f"grad:{n.name}")
        if grad is None:
            continue
        linear_grads.append((n.name, var(grad)))
        if back[grad].op == "concat":
            for (start, stop), value in zip(back[grad].attr("blocks"), back[grad].args):
                in_products.setdefault(value, (n.name, start, stop))
    hoisted_grads = {h: back.outputs[f"grad:{h}"] for h in program.hoisted if f"grad:{h}" in back.outputs}
    sections = {
        "hoisted": [(h, var(v)) for h, v in hoisted_grads.items() if v not in in_products],
        "linears": linear_grads,
        "params": [(p, var(v)) for p, v in param_grads.items()],
        "operands": [(o, var(o)) for o in dict.fromkeys(operands)],
    }
    per_step = [
        line
        for key, entries in sections.items()
        for line in ([f'"{key}": {{', *_dict_lines(entries), "},"] if entries else [f'"{key}": {{}},'])
    ]
    body = recompute + backward + per_step + g_prev
    transposed = [f'wt_{n.name} = w["wt_{n.name}"]' for n in linears]

    fusion = plan.fusion_entries(
        lambda xs: f"jnp.concatenate([{', '.join(xs)}], axis=-1)", lambda ref: f"jnp.zeros({ref}.shape[-1], dtype)"
    )
    fusion += [f'"{p}": params["{p}"],' for p in plan.vector_params]
    docstring = fill(
        DOCSTRING, header=plan.header(NAME), description=docstring_text(spec.description), state_doc=", ".join(states)
    )
    block = fill(
        SPEC_BLOCK,
        constants=plan.constants(
            LINEAR_SCAN=scan_output_index(spec),
            STEP_PROJECTIONS=operand_of,
            HOISTED_IN_PRODUCTS={h: in_products[v] for h, v in hoisted_grads.items() if v in in_products},
        ),
        init_source=init_source(),
        fusion=fusion,
        input=spec.input,
        prologue_load=used_loads(
            ["block_products = block_products or _block_products", *loads(prologue)], hoisting.prologue, prologue_return
        ),
        prologue=hoisting.prologue,
        prologue_return=prologue_return,
        bias_load=used_loads(loads(prologue), hoisting.bias_lines, hoisting.biased),
        bias_lines=hoisting.bias_lines,
        bias_return=bias_return,
        unpack_state=targets([var(s) for s in states]),
        units=f"{var(states[0])}.shape[-1]",
        products_default=products_default,
        step_load=used_loads(loads(step), step_lines),
        step=step_lines,
        new_state=tuple_of([var(step.outputs[f"state:{s}"]) for s in states]),
        output=var(step.outputs["output"]),
        products_load=used_loads(state_loads + loads(step), products_return),
        products_return=products_return,
        backward_load=used_loads(hoisting.reads + loads(step) + transposed, body),
        recompute=recompute,
        seeds=seeds,
        backward=backward,
        g_prev_state=tuple_of(g_prev),
        per_step=per_step,
    )
    return inline_runtime(__package__, docstring, block)
