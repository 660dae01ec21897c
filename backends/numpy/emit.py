"""The NumPy emitter: a standalone module with forward, a generated backward pass
through time, and a trainable ``Cell`` class.

Examples:
    >>> import novolstm
    >>> source = novolstm.generate_source("lstm", backend="numpy")
    >>> "def backward(" in source and "import torch" not in source
    True
"""

from __future__ import annotations

import re

from novolstm.codegen import (
    ARRAY_OPS,
    LoopPlan,
    assign,
    concat_op,
    dict_items,
    docstring_text,
    init_source,
    inline_runtime,
    linear_call,
    literal,
    render,
    render_node,
    slice_bounds,
    targets,
    tuple_of,
    units_offset,
    used_loads,
    var,
    with_comment,
)
from novolstm.template import fill

NAME = "numpy"
FRAMEWORK = "numpy"


# No "split" entry: NumPy slices are views made in a fraction of np.split's time, and the
# generated backward pass does not differentiate them.
OPS = {
    **ARRAY_OPS,
    "linear": linear_call,
    "sigmoid": lambda n, a: f"_sigmoid({a[0]})",
    "tanh": lambda n, a: f"np.tanh({a[0]})",
    "relu": lambda n, a: f"np.maximum({a[0]}, 0.0)",
    "softmax": lambda n, a: f"_softmax({a[0]})",
    "normalize_units": lambda n, a: f"_normalize_units({a[0]}, {n.attr('eps')!r})",
    "div": lambda n, a: f"_div({a[0]}, {a[1]})",
    "exp": lambda n, a: f"_exp({a[0]})",
    "log": lambda n, a: f"_log({a[0]})",
    "sqrt": lambda n, a: f"_sqrt({a[0]})",
    "abs": lambda n, a: f"np.abs({a[0]})",
    "softplus": lambda n, a: f"_softplus({a[0]})",
    "gelu": lambda n, a: f"_gelu({a[0]})",
    "maximum": lambda n, a: f"np.maximum({a[0]}, {a[1]})",
    "minimum": lambda n, a: f"np.minimum({a[0]}, {a[1]})",
    "clip": lambda n, a: f"np.clip({a[0]}, {n.attr('lo')!r}, {n.attr('hi')!r})",
    # backward-only ops
    "gelu_grad": lambda n, a: f"_gelu_grad({a[0]}, {a[1]})",
    "sign": lambda n, a: f"np.sign({a[0]})",
    "ge_mask": lambda n, a: f"np.greater_equal({a[0]}, {a[1]})",
    "in_range": lambda n, a: f"({a[0]} >= {n.attr('lo')!r}) & ({a[0]} <= {n.attr('hi')!r})",
    "sigmoid_grad": lambda n, a: f"{a[0]} * {a[1]} * (1.0 - {a[1]})",
    "tanh_grad": lambda n, a: f"{a[0]} * (1.0 - {a[1]} * {a[1]})",
    "relu_grad": lambda n, a: f"{a[0]} * ({a[1]} > 0.0)",
    "softmax_grad": lambda n, a: f"{a[1]} * ({a[0]} - ({a[0]} * {a[1]}).sum(axis=-1, keepdims=True))",
    "normalize_units_grad": lambda n, a: f"_normalize_units_grad({', '.join(a)}, {n.attr('eps')!r})",
    "linear_t": lambda n, a: f"_linear({a[0]}, w_{n.attr('linear')}.T)",
    "sum_units": lambda n, a: f"{a[0]}.sum(axis=-1, keepdims=True)",
    "sum_batch": lambda n, a: f"{a[0]}.reshape(-1, {a[0]}.shape[-1]).sum(axis=0)",
    "concat": concat_op("np.zeros({like}.shape[:-1] + ({width},), {like}.dtype)", "np.concatenate([{parts}], axis=-1)"),
}


#: The spec block of a generated module (see codegen.inline_runtime); runtime.py holds the rest.
SPEC_BLOCK = '''\
$constants


$init_source


def fuse(params):
    """The fused matrices the loops use, concatenated from canonical parameters."""
    return {
        $fusion
    }


def forward(params, x, state=None, mask=None, keep_tape=False):
    """Run the cell over a sequence.

    Args:
        params: canonical parameters (name -> array).
        x: inputs (batch, time, input).
        state: tuple of (batch, units) arrays in STATE_NAMES order; zeros if None.
        mask: bool (batch, time), True on real steps. A masked step keeps the
            state unchanged and outputs zeros.
        keep_tape: keep what ``backward`` needs.

    Returns:
        (outputs (batch, time, units), final state tuple, tape or None)
    """
    x = check_inputs(params, x, state, mask)
    H = params[UNITS_PARAM].shape[-1]
    B, T = x.shape[0], x.shape[1]
    fused = fuse(params)
    $load_fused
    $load_params
    v_$input = np.ascontiguousarray(np.swapaxes(x, 0, 1))  # time-major: each step reads contiguous rows
    $prologue
    $keep_hoisted
    kept = {$prologue_tape}  # prologue values the backward pass reads
    if state is None:
        state = tuple(np.zeros((B, H), dtype=x.dtype) for _ in STATE_NAMES)
    $unpack_state = state
    ms = None if mask is None else np.swapaxes(np.asarray(mask), 0, 1)[..., None]
    ys = np.empty((T, B, H), dtype=x.dtype)
    $inference
    # the step values the backward pass reads
    step_tape = $step_tape
    tape = {name: [] for name in step_tape} if keep_tape else None
    for t in range(T):
        $load_hoisted
        $step
        if keep_tape:
            $tape_append
        # The output first: it may be a state's previous value, which advancing overwrites.
        if ms is None:
            ys[t] = $output
            $advance
        else:
            m = ms[t]
            ys[t] = np.where(m, $output, 0.0)
            $advance_masked
    if keep_tape:
        tape.update(kept, x=v_$input, ms=ms)
    return np.swapaxes(ys, 0, 1), $final_state, tape


def backward(params, tape, g_outputs=None, g_state=None):
    """Backpropagation through time for a ``forward`` run made with ``keep_tape=True``.

    Args:
        g_outputs: gradient of the loss with respect to the outputs (batch, time, units), or None.
        g_state: gradients with respect to the final state (tuple), or None.

    Returns:
        (g_x (batch, time, input), g_initial_state tuple, g_params dict of canonical names)
    """
    H = params[UNITS_PARAM].shape[-1]
    fused = fuse(params)
    $load_fused_backward
    $load_params_backward
    v_$input, ms = tape["x"], tape["ms"]
    T, B = v_$input.shape[0], v_$input.shape[1]
    dtype = v_$input.dtype
    zeros = np.zeros((B, H), dtype=dtype)
    g_ys = np.zeros((T, B, H), dtype) if g_outputs is None else np.swapaxes(np.asarray(g_outputs, dtype), 0, 1)
    $unpack_g_state = (zeros,) * len(STATE_NAMES) if g_state is None else g_state
    $init_grads
    for t in range(T - 1, -1, -1):
        $load_tape
        $load_seeds
        if ms is not None:
            m = ms[t]
            $mask_seeds
        $step_backward
        $store_grads
        $carry
    # Weight gradients of the step's projections: one GEMM over all timesteps, not one per step.
    $step_weight_grads
    # The prologue, backwards, over all timesteps at once.
    $load_prologue_tape
    $prologue_seeds
    $prologue_backward
    $prologue_grads
    grads = {
        $param_grads
    }
    return np.swapaxes($g_input, 0, 1), $g_initial_state, grads
'''

#: The generated module's docstring.
DOCSTRING = """\
$header

$description

State: $state_doc. Parameters use the canonical names of novolstm."""


# The inference loop: ``forward`` without a tape or a mask. Every step value gets a buffer,
# allocated once, that its op writes into (``out`` passed positionally, which NumPy parses
# faster than the keyword); slices of buffers are views made once; constants are 0-d arrays
# of the dtype (a Python float costs a conversion per call). At batch 1 a step is a dozen
# calls on rows of a few hundred numbers, so the calls' overhead is the cost, and this loop
# allocates and slices nothing per step. Each op computes what the taped loop's expression
# computes, in the same order: the two loops agree bit for bit.
def _fold(ufunc: str, out_keyword: bool = False):
    # np.maximum and np.minimum deprecate a positional out (it reads as a third input)
    def op(n, a: list[str], out: str) -> list[str]:
        into = f"out={out}" if out_keyword else out
        return [f"{ufunc}({a[0]}, {a[1]}, {into})"] + [f"{ufunc}({out}, {b}, {into})" for b in a[2:]]

    return op


def _unary(ufunc: str):
    return lambda n, a, out: [f"{ufunc}({a[0]}, {out})"]


def _linear_into(n, a: list[str], out: str) -> list[str]:
    bias = [f"add({out}, b_{n.name}, {out})"] if any(n.attr("biases")) else []
    return [f"dot({a[0]}, w_{n.name}, {out})", *bias]


def _mean_into(a: str, row: str, count: str) -> list[str]:
    # what a.mean(axis=-1, keepdims=True) does for a float array: the sum, then a division by
    # the count as an intp, computed as NumPy's _mean computes it
    return [f"add.reduce({a}, -1, None, {row}, True)", f'divide({row}, {count}, {row}, casting="unsafe")']


def _normalize_units_into(n, a: list[str], out: str) -> list[str]:
    # _normalize_units, a call at a time, in its order: c = z - mean(z); c * (1 / sqrt(mean(c * c) + eps))
    row, sq, count = f"row_{n.name}", f"sq_{n.name}", f"count_{n.name}"
    return [
        *_mean_into(a[0], row, count),
        f"subtract({a[0]}, {row}, {out})",
        f"multiply({out}, {out}, {sq})",
        *_mean_into(sq, row, count),
        f"add({row}, {n.attr('eps')!r}, {row})",
        f"np.sqrt({row}, {row})",
        f"divide(1.0, {row}, {row})",
        f"multiply({out}, {row}, {out})",
    ]


def _softmax_into(n, a: list[str], out: str) -> list[str]:
    # _softmax, a call at a time: e = exp(z - max(z)); e / sum(e)
    row = f"row_{n.name}"
    return [
        f"maximum.reduce({a[0]}, -1, None, {row}, True)",
        f"subtract({a[0]}, {row}, {out})",
        f"np.exp({out}, {out})",
        f"add.reduce({out}, -1, None, {row}, True)",
        f"divide({out}, {row}, {out})",
    ]


#: op -> the statements that compute it into ``out`` (ops not here allocate, as in the taped loop).
INTO = {
    "add": _fold("add"),
    "sub": _fold("subtract"),
    "mul": _fold("multiply"),
    "maximum": _fold("maximum", out_keyword=True),
    "minimum": _fold("minimum", out_keyword=True),
    "neg": _unary("negative"),
    "tanh": _unary("tanh"),
    "abs": _unary("absolute"),
    "relu": lambda n, a, out: [f"maximum({a[0]}, zero, out={out})"],
    # _sigmoid's 0.5 * tanh(0.5 * z) + 0.5, one call at a time
    "sigmoid": lambda n, a, out: [
        f"multiply({a[0]}, half, {out})",
        f"tanh({out}, {out})",
        f"multiply({out}, half, {out})",
        f"add({out}, half, {out})",
    ],
    "linear": _linear_into,
    "normalize_units": _normalize_units_into,
    "softmax": _softmax_into,
}

#: ops whose statements use scratch: "row_<node>" (batch, 1), "sq_<node>" (like the node), and
#: "count_<node>", the units it averages over as np.intp
SCRATCH = {"normalize_units": ("row", "sq", "count"), "softmax": ("row",)}

#: what the INTO statements read, made once per call: NumPy's functions as locals (one lookup
#: rather than two per call), the constants as 0-d arrays in the input's dtype
INTO_LOCALS = [f"{name} = np.{name}" for name in ("dot", "add", "subtract", "multiply", "divide", "maximum", "minimum")]
INTO_LOCALS += [f"{name} = np.{name}" for name in ("negative", "tanh", "absolute")]
INTO_LOCALS += ["half = np.asarray(0.5, x.dtype)", "zero = np.asarray(0.0, x.dtype)"]


def _buffered(n, step) -> bool:
    """Whether a node can compute into a buffer: an INTO op on whole blocks of units, every
    argument an array (a linear's a (batch, in) one)."""
    if n.op not in INTO or not isinstance(n.width, int) or all(step[a].op == "const" for a in n.args):
        return False
    return (n.op != "linear" and n.op not in SCRATCH) or (n.batched and step[n.args[0]].batched)


def _target(line: str) -> str:
    """The name a setup line assigns (or assigns into: ``a[...] = 0.5``)."""
    return re.split(r"[\[ ]", line.strip(), maxsplit=1)[0]


def _names_read(lines: list[str]) -> set[str]:
    # codegen.names_read takes "f(a, out=b)" for an assignment; these lines assign one name
    # with " = " or call a function with keyword arguments, never both.
    # (np.name is NumPy's, not a local: the lookbehind skips it; comments read nothing)
    return {
        name for line in lines for name in re.findall(r"(?<![.\w])[A-Za-z_]\w*", line.split("#")[0].split(" = ", 1)[-1])
    }


def _activated_sums(step, kind: dict[str, str]) -> dict[str, dict]:
    """Sums whose blocks only sigmoids and tanhs read (the LSTM's gates), for one tanh call over
    the whole sum: node name -> {"sigmoids": [(node, start, stop)], "tanhs": [...], "args": [...]}.

    sigmoid(z) = 0.5 * tanh(0.5 * z) + 0.5, and the 0.5 moves into the sum's terms, once per call:
    the projection's columns and the hoisted values' (exact: halving a float is exact, and so is
    every product and sum of halved terms, barring subnormals, which the sigmoid maps to 0.5 either
    way). Then one tanh over the sum serves every sigmoid and tanh block, and a sigmoid costs two
    calls more instead of four. A sum qualifies where every term (a hoisted value or a projection
    of the step) feeds only it, and its blocks are read by slices that feed only sigmoids, only
    tanhs, or neither (a block both halved and read otherwise does not qualify).
    """
    users: dict[str, list[str]] = {n.name: [] for n in step.nodes}
    for n in step.nodes:
        for a in n.args:
            users[a].append(n.name)
    found = {}
    for z in step.nodes:
        if z.op != "add" or kind.get(z.name) != "buffer" or not isinstance(z.width, int):
            continue
        if not all(
            users[a] == [z.name] and (step[a].op == "hoisted" or (step[a].op == "linear" and kind.get(a) == "buffer"))
            for a in z.args
        ):
            continue
        sigmoids, tanhs, others = [], [], []
        for u in users[z.name]:
            start, stop = (step[u].attr("start"), step[u].attr("stop")) if step[u].op == "slice" else (0, z.width)
            readers = [u] if step[u].op != "slice" else users[u]
            ops = {step[r].op for r in readers}
            if readers and ops == {"sigmoid"} and all(kind.get(r) == "buffer" for r in readers):
                sigmoids += [(r, start, stop) for r in readers]
            elif readers and ops == {"tanh"} and all(kind.get(r) == "buffer" for r in readers):
                tanhs += [(r, start, stop) for r in readers]
            else:
                others.append((start, stop))
        halved = [(a, b) for _, a, b in sigmoids]
        if sigmoids and not any(a < d and c < b for a, b in halved for c, d in others + [(a, b) for _, a, b in tanhs]):
            found[z.name] = {"sigmoids": sigmoids, "tanhs": tanhs, "args": list(z.args)}
    return found


def inference_loop(plan: LoopPlan) -> list[str]:
    """The lines of ``forward``'s inference branch, or none where a state's next value (or the
    output) is a state's previous one: advancing would then need copies, and the taped loop serves."""
    step = plan.program.step
    states = plan.spec.state_names
    index = {n.name: k for k, n in enumerate(step.nodes)}
    output = step.outputs["output"]
    nexts = {s: step.outputs[f"state:{s}"] for s in states}

    def root(name: str) -> str:  # the node whose memory a slice reads
        while step[name].op == "slice":
            name = step[name].args[0]
        return name

    if any(step[root(v)].op == "state" for v in [output, *nexts.values()]):
        return []
    # "buffer": written into a buffer made before the loop; "row": written into ys[t], a new row
    # each step; anything else allocates as in the taped loop.
    kind = {n.name: "buffer" for n in step.nodes if _buffered(n, step)}
    if output in kind:
        kind[output] = "row"
    # A state's next value stays in its node's buffer, which the next step writes again: only
    # after every read of the state, or the state's value is lost. Otherwise the node allocates.
    while True:
        clash = [
            root(nxt)
            for s, nxt in nexts.items()
            if kind.get(root(nxt)) == "buffer"
            and max(
                (index[n.name] for n in step.nodes if n.op != "slice" and any(root(a) == s for a in n.args)), default=-1
            )
            >= index[root(nxt)]
        ]
        if not clash:
            break
        for name in clash:
            kind.pop(name)

    def fixed_view(name: str) -> bool:  # a slice of a buffer: one view, made before the loop
        return step[name].op == "slice" and kind.get(root(name)) == "buffer"

    setup, body, comments = [], [], plan.expressions
    sums = _activated_sums(step, kind)
    activated: dict[str, tuple[str, int, int]] = {}  # sigmoid or tanh node -> (its sum, start, stop)
    for z, found in sums.items():
        scale = f"halves_{z}"  # 0.5 on the sigmoids' blocks, 1 elsewhere
        setup.append(f"{scale} = np.ones({units_offset(step[z].width)}, x.dtype)")
        setup += [
            f"{scale}[..., {slice_bounds(units_offset(a), units_offset(b))}] = 0.5" for _, a, b in found["sigmoids"]
        ]
        for a in found["args"]:
            L = step[a]
            if L.op == "hoisted":
                setup.append(f"seq_{a} = seq_{a} * {scale}")
            else:
                setup.append(f"w_{a} = w_{a} * {scale}")
                if any(L.attr("biases")):
                    setup.append(f"b_{a} = b_{a} * {scale}")
        setup.append(f"tanh_{z} = np.empty((B, {units_offset(step[z].width)}), x.dtype)")
        activated |= {r: (z, a, b) for r, a, b in found["sigmoids"] + found["tanhs"]}
    done = set()
    for n in step.nodes:
        if n.op in ("state", "param", "hoisted", "input"):
            continue
        args = [var(a) for a in n.args]
        if n.name in activated:  # a block of its sum's one tanh (see _activated_sums)
            z, a, b = activated[n.name]
            setup.append(f"{var(n.name)} = tanh_{z}[..., {slice_bounds(units_offset(a), units_offset(b))}]")
            if z not in done:
                done.add(z)
                body.append(f"tanh({var(z)}, tanh_{z})  # halved where a sigmoid reads it")
            if n.op == "sigmoid":
                out = var(n.name)
                body += with_comment(f"multiply({out}, half, {out})", comments.get(n.name, ""), indent=12)
                body.append(f"add({out}, half, {out})")
        elif n.op == "const":
            setup.append(f"{var(n.name)} = np.asarray({n.attr('value')!r}, x.dtype)")
        elif fixed_view(n.name):
            setup.extend(render_node(n, OPS, comments))
        elif n.name in kind:
            width, out = units_offset(n.width), var(n.name)
            if kind[n.name] == "row":
                body.append(f"{out} = ys[t]")
            else:
                setup.append(f"{out} = np.empty({f'(B, {width})' if n.batched else width}, x.dtype)")
            scratch = SCRATCH.get(n.op, ())
            setup += [f"row_{n.name} = np.empty((B, 1), x.dtype)"] if "row" in scratch else []
            setup += [f"sq_{n.name} = np.empty((B, {width}), x.dtype)"] if "sq" in scratch else []
            setup += [f"count_{n.name} = np.intp({width})"] if "count" in scratch else []
            lines = INTO[n.op](n, args, out)
            body.extend(with_comment(lines[0], comments.get(n.name, ""), indent=12) + lines[1:])
        else:  # allocates, as in the taped loop
            body.extend(with_comment(render_node(n, OPS)[0], comments.get(n.name, ""), indent=12))
    read = _names_read(setup + body)
    setup = [line for line in INTO_LOCALS + setup if _target(line) in read]
    state_vars = [var(s) for s in states]
    advance = [] if kind.get(output) == "row" else [f"ys[t] = {var(output)}"]
    advance.append(assign(state_vars, [var(nxt) for nxt in nexts.values()]))
    return [
        "if ms is None and not keep_tape:",
        *(f"    {line}" for line in setup),
        "    for t in range(T):",
        *(f"        {line}" for h in plan.program.hoisted for line in [f"{var(h)} = seq_{h}[t]"]),
        *(f"        {line}" for line in body + advance),
        "    # copies: a state may be a view of a buffer or of the outputs",
        f"    return np.swapaxes(ys, 0, 1), {tuple_of([f'{v}.copy()' for v in state_vars])}, None",
    ]


def generate(plan: LoopPlan) -> str:
    spec, program = plan.spec, plan.program
    step, back = program.step, plan.step_backward
    states = spec.state_names
    seeds = {n.attr("role"): n.name for n in back.nodes if n.op == "seed"}
    pro_seeds = {n.attr("role"): n.name for n in plan.prologue_backward.nodes if n.op == "seed"}
    step_linears = [L for L in plan.linears if L.in_step]
    pro_linears = [L for L in plan.linears if not L.in_step]

    def seed_source(role):
        if role == "output":
            return "g_ys[t]"
        return f"g_{role.split(':', 1)[1]}"

    init_grads = [f"gseq_{h} = np.zeros((T, B, {units_offset(program.step[h].width)}), dtype)" for h in program.hoisted]
    init_grads += [f"glin_{L.name} = np.empty((T, B, {units_offset(len(L.weights))}), dtype)" for L in step_linears]
    init_grads += [f"gp_{p} = np.zeros(H, dtype)" for p in plan.vector_params]

    store, carry = [], []
    for role, name in back.outputs.items():
        target = role.split(":", 1)[1]
        if target in program.hoisted:
            store.append(f"gseq_{target}[t] = {var(name)}")
        elif target in plan.vector_params:
            store.append(f"gp_{target} = gp_{target} + {var(name)}")
        elif any(L.name == target for L in step_linears):
            store.append(f"glin_{target}[t] = {var(name)}")
    for s in states:
        grad = back.outputs.get(f"grad:{s}")
        through = var(grad) if grad else "zeros"
        carry.append(f"g_{s} = {through} if ms is None else {through} + np.where(m, 0.0, g_{s})")

    step_wgrads = []
    for L in step_linears:
        width = units_offset(len(L.weights))
        operand = f'np.stack(tape["{var(L.operand)}"])'
        step_wgrads.append(f"gw_{L.name} = {operand}.reshape(T * B, -1).T @ glin_{L.name}.reshape(T * B, {width})")
        if L.has_bias:
            step_wgrads.append(f"gb_{L.name} = glin_{L.name}.reshape(T * B, {width}).sum(axis=0)")

    pro_back = plan.prologue_backward
    pro_grads = []
    for L in pro_linears:
        g = var(pro_back.outputs[f"grad:{L.name}"])
        width = units_offset(len(L.weights))
        pro_grads.append(f"gw_{L.name} = {var(L.operand)}.reshape(T * B, -1).T @ {g}.reshape(T * B, {width})")
        if L.has_bias:
            pro_grads.append(f"gb_{L.name} = {g}.reshape(T * B, {width}).sum(axis=0)")
    for p in plan.vector_params:
        if f"grad:{p}" in pro_back.outputs:
            pro_grads.append(f"gp_{p} = gp_{p} + {var(pro_back.outputs[f'grad:{p}'])}")

    param_grads = [f'"{p}": {" + ".join(pieces)},' for p, pieces in plan.param_grad_pieces().items()]
    state_vars = [var(s) for s in states]
    next_vars = [var(step.outputs[f"state:{s}"]) for s in states]
    g_states = [f"g_{s}" for s in states]
    prologue_lines = render(program.prologue, OPS, comments=plan.expressions)
    step_lines = render(step, OPS, comments=plan.expressions)
    forward_lines = prologue_lines + step_lines
    step_backward = render(back, OPS, comments=plan.step_backward_comments)
    pro_backward = render(pro_back, OPS, comments=plan.prologue_backward_comments)
    backward_lines = step_backward + pro_backward + step_wgrads + pro_grads
    load_fused = [
        f'{k} = fused["{k}"]' for L in plan.linears for k in (f"w_{L.name}", f"b_{L.name}") if k[0] == "w" or L.has_bias
    ]
    load_params = [f'{var(p)} = params["{p}"]' for p in plan.vector_params]
    load_tape = [f'{var(n)} = tape["{var(n)}"][t]' for n in plan.step_tape]

    docstring = fill(
        DOCSTRING, header=plan.header(NAME), description=docstring_text(spec.description), state_doc=", ".join(states)
    )
    block = fill(
        SPEC_BLOCK,
        constants=plan.constants(),
        init_source=init_source(),
        fusion=plan.fusion_entries(
            lambda xs: f"np.concatenate([{', '.join(xs)}], axis=-1)",
            lambda ref: f"np.zeros({ref}.shape[-1], {ref}.dtype)",
        ),
        load_fused=used_loads(load_fused, forward_lines),
        load_params=used_loads(load_params, forward_lines),
        load_fused_backward=used_loads(load_fused, backward_lines),
        load_params_backward=used_loads(load_params, backward_lines),
        input=spec.input,
        prologue=prologue_lines,
        keep_hoisted=[f"seq_{h} = {var(h)}" for h in program.hoisted],
        unpack_state=targets(state_vars),
        step_tape=literal(tuple(var(n) for n in plan.step_tape), column=16, indent=4),
        load_hoisted=[f"{var(h)} = seq_{h}[t]" for h in program.hoisted],
        step=step_lines,
        tape_append=[f'tape["{var(n)}"].append({var(n)})' for n in plan.step_tape] or ["pass"],
        advance=assign(state_vars, next_vars),
        advance_masked=assign(state_vars, [f"np.where(m, {nv}, {sv})" for sv, nv in zip(state_vars, next_vars)]),
        output=var(step.outputs["output"]),
        prologue_tape=dict_items([f'"prologue:{n}": {var(n)}' for n in plan.prologue_tape], "    ", 60),
        final_state=tuple_of(state_vars),
        inference=inference_loop(plan),
        unpack_g_state=targets(g_states),
        init_grads=init_grads,
        load_tape=used_loads(load_tape, step_backward),
        load_seeds=[f"{var(name)} = {seed_source(role)}" for role, name in seeds.items()],
        mask_seeds=[f"{var(name)} = np.where(m, {var(name)}, 0.0)" for name in seeds.values()],
        step_backward=step_backward,
        store_grads=store or ["pass"],
        carry=carry,
        step_weight_grads=step_wgrads,
        load_prologue_tape=[f'{var(n)} = tape["prologue:{n}"]' for n in plan.prologue_tape],
        prologue_seeds=[f"{var(name)} = gseq_{role.split(':', 1)[1]}" for role, name in pro_seeds.items()],
        prologue_backward=pro_backward,
        prologue_grads=pro_grads,
        param_grads=param_grads,
        g_input=var(pro_back.outputs[f"grad:{spec.input}"]),
        g_initial_state=tuple_of(g_states),
    )
    return inline_runtime(__package__, docstring, block)
