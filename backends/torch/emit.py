"""The PyTorch emitter: a standalone module with an ``nn.Module`` cell, an ``nn.LSTM``-style
sequence layer, and a generated backward pass through time wrapped in one
``torch.autograd.Function``.

The generated module follows the NumPy one line for line where it can (the same
graphs rendered through a different op table), and adds what PyTorch users expect:
parameters registered under their canonical names, ``nn.LSTMCell`` / ``nn.LSTM``
calling conventions, ``PackedSequence``, ``torch.compile`` and ``.to()``.

Speed (see benchmarks/bench_torch.py): the input projection of every timestep is one
GEMM before the loop; each step makes one fused recurrent GEMM with the hoisted
projection added in place; the backward pass is generated code, not a per-op autograd
tape, and forms the step projections' weight gradients as one GEMM after the loop.

Examples:
    >>> import novolstm
    >>> source = novolstm.generate_source("lstm", backend="torch")
    >>> "class Layer(nn.Module)" in source and "torch.autograd.Function" in source
    True
"""

from __future__ import annotations

from collections.abc import Set as AbstractSet

from novolstm.codegen import (
    ARRAY_OPS,
    Code,
    LoopPlan,
    assign,
    concat_op,
    dict_items,
    docstring_text,
    init_source,
    inline_runtime,
    literal,
    render_node,
    slice_bounds,
    targets,
    tuple_of,
    units_offset,
    used_loads,
    var,
    with_comment,
)
from novolstm.ir import Graph, computes_standard_gru, live_names
from novolstm.passes import LEAVES, split_slices
from novolstm.scan import scan_output_index
from novolstm.template import fill

NAME = "torch"
FRAMEWORK = "torch"


def _gemm(n, a):
    # Forward projection: a @ w (+ b), through the module's GEMM helper.
    bias = f"b_{n.name}" if any(n.attr("biases")) else "None"
    return f"gemm({a[0]}, w_{n.name}, wt_{n.name}, {bias})"


def _gemm_t(n, a):
    # The transposed projection of the backward pass: g @ w.T (w.T's transpose is w itself).
    L = n.attr("linear")
    return f"gemm({a[0]}, wt_{L}, w_{L}, None)"


def _uniform(n) -> bool:
    """Whether a split cuts its value into single blocks only (one unbind makes them all)."""
    return all(stop - start == 1 for start, stop, _ in n.attr("pieces"))


def _split(n, a):
    # Single blocks: one view and one unbind for all of them. Other splits render as one slice
    # per piece (see render_fused): a slice is a cheaper view than Tensor.split's, 10% of a
    # NovoLSTM step at batch 1.
    return f"{a[0]}.unflatten(-1, ({len(n.attr('pieces'))}, H)).unbind(-2)"


OPS = {
    **ARRAY_OPS,
    "split": _split,
    "linear": _gemm,
    "sigmoid": lambda n, a: f"torch.sigmoid({a[0]})",
    "tanh": lambda n, a: f"torch.tanh({a[0]})",
    "relu": lambda n, a: f"torch.relu({a[0]})",
    "softmax": lambda n, a: f"_softmax({a[0]})",
    "normalize_units": lambda n, a: f"_normalize_units({a[0]}, {n.attr('eps')!r})",
    "div": lambda n, a: f"{a[0]} / {a[1]}",
    "exp": lambda n, a: f"torch.exp({a[0]})",
    "log": lambda n, a: f"torch.log({a[0]})",
    "sqrt": lambda n, a: f"torch.sqrt({a[0]})",
    "abs": lambda n, a: f"torch.abs({a[0]})",
    "softplus": lambda n, a: f"_softplus({a[0]})",
    "gelu": lambda n, a: f"torch.nn.functional.gelu({a[0]})",
    "maximum": lambda n, a: f"_maximum({a[0]}, {a[1]})",
    "minimum": lambda n, a: f"_minimum({a[0]}, {a[1]})",
    "clip": lambda n, a: f"torch.clamp({a[0]}, {n.attr('lo')!r}, {n.attr('hi')!r})",
    "gelu_grad": lambda n, a: f"_gelu_grad({a[0]}, {a[1]})",
    "sign": lambda n, a: f"torch.sign({a[0]})",
    "ge_mask": lambda n, a: f"{a[0]} >= {a[1]}",
    "in_range": lambda n, a: f"({a[0]} >= {n.attr('lo')!r}) & ({a[0]} <= {n.attr('hi')!r})",
    # backward-only ops
    "sigmoid_grad": lambda n, a: f"_sigmoid_backward({a[0]}, {a[1]})",
    "tanh_grad": lambda n, a: f"_tanh_backward({a[0]}, {a[1]})",
    "relu_grad": lambda n, a: f"torch.where({a[1]} > 0.0, {a[0]}, 0.0)",
    "softmax_grad": lambda n, a: f"{a[1]} * ({a[0]} - _sum_units({a[0]} * {a[1]}))",
    "normalize_units_grad": lambda n, a: f"_normalize_units_grad({', '.join(a)}, {n.attr('eps')!r})",
    "linear_t": _gemm_t,
    "sum_units": lambda n, a: f"_sum_units({a[0]})",
    "sum_batch": lambda n, a: f"{a[0]}.reshape(-1, {a[0]}.shape[-1]).sum(dim=0)",
    "concat": concat_op("{like}.new_zeros({like}.shape[:-1] + ({width},))", "torch.cat([{parts}], dim=-1)"),
}


def fused_adds(graph: Graph, keep: set[str]) -> dict[str, tuple[str, list[str]]]:
    """Sums that absorb one of their projections: add node -> (projection node, the other terms).

    ``a @ w + rest`` becomes one GEMM accumulating into ``rest`` (the hoisted input
    projection plus the recurrent one, in one call per step). A projection qualifies when
    the sum is its only reader and nothing else (an output, the tape) needs its value, and
    every other term is batched (a constant or a parameter-only vector is no accumulator).
    """
    users = graph.users()
    out = {}
    for n in graph.nodes:
        if n.op != "add":
            continue
        for arg in n.args:
            node = graph[arg]
            others = [a for a in n.args if a != arg]
            if (
                node.op in ("linear", "linear_t")
                and users[arg] == [n.name]
                and arg not in keep
                and arg not in graph.outputs.values()
                and all(graph[o].batched for o in others)  # acc: rows like the GEMM's (not 1 - b, a vector)
                and node.width == n.width
            ):
                out[n.name] = (arg, others)
                break
    return out


def fused_products(graph: Graph, keep: set[str], skip: set[str]) -> dict[str, tuple[str, str]]:
    """Sums of two terms, one a product read nowhere else: add node -> (mul node, other term).

    ``x + a * b`` becomes one torch.addcmul call instead of two. ``keep``: values that must
    exist under their own name (the product cannot be one); ``skip``: sums rendered otherwise.
    """
    users = graph.users()
    out = {}
    for n in graph.nodes:
        if n.op != "add" or len(n.args) != 2 or n.name in skip:
            continue
        for mul, other in (n.args, n.args[::-1]):
            m = graph[mul]
            if (
                m.op == "mul"
                and users[mul] == [n.name]
                and mul not in keep
                and mul not in graph.outputs.values()
                and graph[other].op != "const"
                and all(graph[a].op != "const" for a in m.args)
            ):
                out[n.name] = (mul, other)
                break
    return out


def render_fused(
    graph: Graph,
    keep: AbstractSet[str] = frozenset(),
    only: AbstractSet[str] | None = None,
    skip: AbstractSet[str] = frozenset(),
    outs: dict | None = None,
    comments: dict[str, str] | None = None,
) -> list[str]:
    """``render`` with projections folded into the sums that read them (see ``fused_adds``).

    ``only`` / ``skip`` select which nodes to render (the fusion is decided on the whole graph);
    ``outs`` maps a concat node to the buffer it writes into (``torch.cat(..., out=...)``);
    ``comments``: node name -> the spec expression written with its line.
    """
    outs = outs or {}
    graph = split_slices(graph)
    fused = fused_adds(graph, set(keep))
    absorbed = {lin for lin, _ in fused.values()}
    products = fused_products(graph, keep=set(keep) | absorbed, skip=set(fused))
    absorbed |= {mul for mul, _ in products.values()}

    def selected(name: str) -> bool:
        if graph[name].op == "split":  # rendered wherever one of its pieces is
            return any(selected(piece) for _, _, piece in graph[name].attr("pieces") if piece)
        return name not in skip and (only is None or name in only)

    lines = []
    for n in graph.nodes:
        if n.op in LEAVES or n.name in absorbed or not selected(n.name):
            continue
        if n.op == "split" and not _uniform(n):
            for start, stop, piece in n.attr("pieces"):
                if piece and selected(piece):
                    cut = f"{var(n.args[0])}[..., {slice_bounds(units_offset(start), units_offset(stop))}]"
                    lines.extend(with_comment(f"{var(piece)} = {cut}", (comments or {}).get(piece, "")))
            continue
        if n.op in ("split", "piece"):
            lines.extend(render_node(n, OPS, comments))
            continue
        if n.name in products:
            mul, other = products[n.name]
            a, b = graph[mul].args
            code = f"torch.addcmul({var(other)}, {var(a)}, {var(b)})"
        elif n.name in fused:
            lin, others = fused[n.name]
            L = graph[lin]
            call = OPS[L.op](L, [var(a) for a in L.args])
            code = f"{call[:-1]}, acc={' + '.join(var(o) for o in others)})"
        else:
            code = OPS[n.op](n, [var(a) for a in n.args])
            if n.name in outs:
                assert n.op == "concat", n
                code = f"{code[:-1]}, out={outs[n.name]})"
        lines.extend(render_node(n, OPS, comments, code=code))
    return lines


#: The generated module's docstring.
DOCSTRING = """\
$header

$description

State: $state_doc. Parameters use the canonical names of novolstm (one tensor per
projection, no gate order): $param_doc.

$fused_doc"""

#: The spec block of a generated module (see codegen.inline_runtime); runtime.py holds the rest.
SPEC_BLOCK = '''\
$constants


$init_source


def fuse(params):
    """The fused matrices the loops use, concatenated from canonical parameters.

    w_<L> (in, k * units); wt_<L> its contiguous transpose (the layout oneDNN reads);
    b_<L> (k * units,) where the projection has biases.
    """
    fused = {
        $fusion
    }
    for name in [k for k in fused if k.startswith("w_")]:
        fused["wt_" + name[2:]] = fused[name].t().contiguous()
    return fused


# ---------------------------------------------------------------- the loops


def forward(params, x, state, mask=None, keep_tape=False, reverse=False):
    """Run the cell over a time-major sequence, without autograd.

    Args:
        params: canonical parameters (name -> tensor).
        x: inputs (time, batch, input).
        state: tuple of (batch, units) tensors in STATE_NAMES order.
        mask: bool (time, batch, 1), True on real steps, or None. A masked step keeps
            the state unchanged and outputs zeros.
        keep_tape: keep what backward needs.
        reverse: run from the last timestep to the first (outputs stay in time order).

    Returns:
        (outputs (time, batch, units), final state tuple, tape or None)
    """
    H = params[UNITS_PARAM].shape[-1]  # noqa: F841 - H and B: read where the spec slices or pads
    T, B = x.shape[0], x.shape[1]  # noqa: F841
    gemm, pack, wgrad = gemm_for(x)
    fused = fuse(params)
    $load_fused
    $load_params
    v_$input = x
    $prologue
    $keep_hoisted
    kept = {$prologue_tape}  # prologue values the backward pass reads
    $unpack_state = state
    ms = None if mask is None else mask.unbind(0)
    ys = [None] * T
    $init_tape
    for t in range(T - 1, -1, -1) if reverse else range(T):
        $load_hoisted
        $step
        if keep_tape:
            $tape_store
        # The output first: it may be a state's previous value, which advancing overwrites.
        if ms is None:
            ys[t] = $output
            $advance
        else:
            m = ms[t]
            ys[t] = torch.where(m, $output, 0.0)
            $advance_masked
    tape = None
    if keep_tape:
        tape = $tape_dict
        tape.update(kept, x=v_$input, ms=ms, reverse=reverse)
    return torch.stack(ys), $final_state, tape


def backward(params, tape, g_outputs=None, g_state=None, need_input=True):
    """Backpropagation through time for a forward run made with keep_tape=True.

    Args:
        g_outputs: gradient with respect to the outputs (time, batch, units), or None.
        g_state: gradients with respect to the final state (tuple; None entries allowed), or None.
        need_input: compute the input gradient (skipped, with its GEMM, when False).

    Returns:
        (g_x (time, batch, input) or None, g_initial_state tuple, g_params dict of canonical names)
    """
    H = params[UNITS_PARAM].shape[-1]
    v_$input, ms, reverse = tape["x"], tape["ms"], tape["reverse"]
    T, B = v_$input.shape[0], v_$input.shape[1]
    gemm, pack, wgrad = gemm_for(v_$input)
    fused = fuse(params)
    $load_fused_backward
    $load_params_backward
    zeros = v_$input.new_zeros((B, H))
    g_ys = None if g_outputs is None else g_outputs.unbind(0)
    g_state = (None,) * len(STATE_NAMES) if g_state is None else g_state
    $unpack_g_state = (zeros if g is None else g for g in g_state)
    $unpack_tape
    $init_grads
    for t in range(T) if reverse else range(T - 1, -1, -1):
        $load_tape
        $load_seeds
        if ms is not None:
            m = ms[t]
            $mask_seeds
        $step_backward
        $store_grads
        $carry
    $stack_grads
    # The prologue, backwards, over all timesteps at once.
    $load_prologue_tape
    $prologue_seeds
    $prologue_backward
    if need_input:
        $prologue_input
    else:
        $no_input = None
    $prologue_grads
    # Weight gradients: one GEMM over all timesteps per gradient, after the loop, not one per step.
    $weight_grads
    grads = {
        $param_grads
    }
    return $g_input, $g_initial_state, grads
'''


FUSED_DOC_STANDARD = """\
Layer runs torch's own fused LSTM kernel (torch._VF.lstm, what nn.LSTM runs: oneDNN on
CPU, cuDNN on GPU) with torch autograd for its backward, because this spec computes
exactly the standard LSTM (novolstm.ir.computes_standard_lstm): whenever no mask,
lengths or PackedSequence is given, the dtype is float32, float64 or bfloat16 (the
kernel keeps its gate arithmetic in float32), and the call is not
being traced or exported (torch.jit.trace, torch.onnx.export). Every other call runs the
generated loop and backward pass. Layer(..., fused=False) always runs the generated
loop; fused=True raises rather than fall back."""

FUSED_DOC_GRU = """\
Layer runs torch's own fused GRU kernel (torch._VF.gru, what nn.GRU runs) with torch
autograd for its backward, because this spec computes exactly the GRU as nn.GRU does
(novolstm.ir.computes_standard_gru): whenever no mask, lengths or PackedSequence is
given, the dtype is float32 or float64, and the call is not being traced or exported
(torch.jit.trace, torch.onnx.export). Every other call runs the compiled kernel or the
generated loop. Layer(..., fused=False) never runs the fused kernel; fused=True raises
rather than fall back."""

FUSED_DOC_OTHER = """\
Layer never runs a torch fused kernel: this spec is neither the standard LSTM nor the GRU,
which torch's fused kernels compute (Layer(..., fused=True) raises)."""

COMPILED_DOC = """\
Elsewhere (float32 and float64 on the CPU) Layer runs the spec's compiled C++ kernel
(novolstm.backends.cpp, built once per spec and cached on disk) where novolstm and a C++
compiler are present, else the generated loop and backward pass, after one warning.
Layer(..., compiled=False) always runs the generated loop; compiled=True raises rather
than fall back."""

SCAN_DOC = """\
This spec is a linear recurrence (every next state a * state + b, with a and b free of any
state; novolstm.scan.linear_recurrence): Layer and sequence run it as a parallel scan, the
step evaluated for every timestep at once and the pairs (a, b) combined in chunks, with its
own backward pass: off the CPU, and on the CPU where it measured faster (at least
SCAN_CPU_MIN_STEPS steps, batch * units at most SCAN_CPU_MAX_WIDTH); elsewhere the loop.
scan=True runs the scan everywhere (and raises rather than fall back), scan=False (or
compiled=True, or backward="autograd") the loop."""


def generate(plan: LoopPlan) -> str:
    spec, program = plan.spec, plan.program
    standard_gru = computes_standard_gru(spec)
    scan_output = scan_output_index(spec)
    step, back = program.step, plan.step_backward
    pro_back = plan.prologue_backward
    states = spec.state_names
    seeds = {n.attr("role"): n.name for n in back.nodes if n.op == "seed"}
    pro_seeds = {n.attr("role"): n.name for n in pro_back.nodes if n.op == "seed"}
    step_linears = [L for L in plan.linears if L.in_step]
    pro_linears = [L for L in plan.linears if not L.in_step]

    def seed_source(role):
        if role == "output":
            return "zeros if g_ys is None else g_ys[t]"
        return f"g_{role.split(':', 1)[1]}"

    # Gradients flowing out of each step: per-timestep lists, stacked once after the loop.
    # One list per distinct value (an LSTM's hoisted and recurrent projections share theirs).
    lists: dict[str, str] = {}  # step backward value -> list name
    buffers: dict[str, str] = {}  # ... or, for a concatenation, the slot of a preallocated buffer
    stacked: dict[str, str] = {}  # gseq_/glin_ name -> list holding it
    store = []
    for role, name in back.outputs.items():
        target = role.split(":", 1)[1]
        if target in program.hoisted:
            key = f"gseq_{target}"
        elif any(L.name == target for L in step_linears):
            key = f"glin_{target}"
        else:
            continue
        if name not in lists:
            lists[name] = f"gl_{name}"
            if back[name].op == "concat":  # written in place into its slot of a (T, B, width) buffer
                buffers[name] = f"gl_{name}[t]"
            else:
                store.append(f"gl_{name}[t] = {var(name)}")
        stacked[key] = lists[name]
    # A vector parameter's gradient sums a batched value over the batch at every step: keep
    # the batched values instead and sum over time and batch at once after the loop.
    users = back.users()
    deferred: dict[str, str] = {}  # vector parameter -> the batched value its gradient sums
    for target, value in [(r.split(":", 1)[1], n) for r, n in back.outputs.items()]:
        if target not in plan.vector_params:
            continue
        node = back[value]
        if node.op == "sum_batch" and users[value] == [] and back[node.args[0]].batched:
            deferred[target] = node.args[0]
            store.append(f"gv_{target}[t] = {var(node.args[0])}")
        else:
            store.append(f"gp_{target} = gp_{target} + {var(value)}")
    skip_step = {back.outputs[f"grad:{p}"] for p in deferred}

    init_grads = [
        f"{lists[name]} = zeros.new_empty((T, B, {units_offset(back[name].width)}))"
        if name in buffers
        else f"{lists[name]} = [None] * T"
        for name in lists
    ]
    init_grads += [f"gv_{p} = [None] * T" for p in deferred]
    init_grads += [f"gp_{p} = zeros.new_zeros(H)" for p in plan.vector_params if p not in deferred]
    stack_grads = [f"{lists[name]} = torch.stack({lists[name]})" for name in lists if name not in buffers]
    stack_grads += [f"gp_{p} = torch.stack(gv_{p}).sum(dim=(0, 1))" for p in deferred]
    for h in program.hoisted:
        key = f"gseq_{h}"
        if key in stacked:
            stack_grads.append(f"{key} = {stacked[key]}")
        else:  # nothing flows back into this hoisted value
            stack_grads.append(f"{key} = zeros.new_zeros((T, B, {units_offset(program.step[h].width)}))")

    carry = []
    for s in states:
        grad = back.outputs.get(f"grad:{s}")
        through = var(grad) if grad else "zeros"
        carry.append(f"g_{s} = {through} if ms is None else {through} + torch.where(m, 0.0, g_{s})")

    # Weight gradients, grouped by the gradient they read: one GEMM per group.
    groups: dict[str, list] = {}  # gradient expression -> [(linear, operand expression)]
    for L in step_linears:
        groups.setdefault(stacked[f"glin_{L.name}"], []).append((L, f"torch.stack(tp_{L.operand})"))
    for L in pro_linears:
        g = pro_back[pro_back.outputs[f"grad:{L.name}"]]
        role = g.attr("role", "") if g.op == "seed" else ""
        key = stacked.get(f"gseq_{role.split(':', 1)[1]}", var(g.name)) if role.startswith("hoisted:") else var(g.name)
        groups.setdefault(key, []).append((L, var(L.operand)))
    weight_grads = []
    for grad, members in groups.items():
        biased = [L for L, _ in members if L.has_bias]
        grads = [f"gw_{L.name}" for L, _ in members] + ([f"gb_{biased[0].name}"] if biased else [])
        operands = ", ".join(op for _, op in members)
        weight_grads.append(f"{targets(grads)} = wgrad({grad}, {operands}{', bias=True' if biased else ''})")
        weight_grads += [f"gb_{L.name} = gb_{biased[0].name}" for L in biased[1:]]

    # The prologue backward, split: what only the input gradient needs runs under need_input.
    g_input_name = pro_back.outputs[f"grad:{spec.input}"]
    other_roots = [n for r, n in pro_back.outputs.items() if r != f"grad:{spec.input}"]
    only_input = live_names(pro_back.nodes, [g_input_name]) - live_names(pro_back.nodes, other_roots)
    body = render_fused(pro_back, skip=only_input, comments=plan.prologue_backward_comments)
    input_part = render_fused(pro_back, only=only_input, comments=plan.prologue_backward_comments)

    pro_grads = []
    for p in plan.vector_params:
        if f"grad:{p}" in pro_back.outputs:
            pro_grads.append(f"gp_{p} = gp_{p} + {var(pro_back.outputs[f'grad:{p}'])}")

    param_grads = [f'"{p}": {" + ".join(pieces)},' for p, pieces in plan.param_grad_pieces().items()]
    state_vars = [var(s) for s in states]
    next_vars = [var(step.outputs[f"state:{s}"]) for s in states]
    g_states = [f"g_{s}" for s in states]
    tape = list(plan.step_tape)
    prologue_lines = render_fused(
        program.prologue, keep=set(plan.prologue_tape) | set(program.hoisted), comments=plan.expressions
    )
    step_lines = render_fused(step, keep=set(tape), comments=plan.expressions)
    step_backward = render_fused(back, skip=skip_step, outs=buffers, comments=plan.step_backward_comments)
    load_tape = used_loads([f"{var(n)} = tp_{n}[t]" for n in tape], step_backward)
    backward_lines = step_backward + body + input_part + weight_grads + pro_grads + stack_grads + store
    unpack_tape = used_loads([f'tp_{n} = tape["{n}"]' for n in tape], load_tape, backward_lines)
    load_params = [f'{var(p)} = params["{p}"]' for p in plan.vector_params]

    def load_fused(packed):
        # The step's weights are read by every timestep: packed once per call (forward reads
        # wt_, the backward pass w_; pack is the identity unless a GEMM library wants it).
        lines = []
        for L in plan.linears:
            for k in (f"w_{L.name}", f"wt_{L.name}") + ((f"b_{L.name}",) if L.has_bias else ()):
                pack = L.in_step and k.startswith(packed)
                lines.append(f'{k} = pack(fused["{k}"], B)' if pack else f'{k} = fused["{k}"]')
        return lines

    docstring = fill(
        DOCSTRING,
        header=plan.header(NAME),
        fused_doc=(FUSED_DOC_STANDARD if plan.standard_lstm else FUSED_DOC_GRU if standard_gru else FUSED_DOC_OTHER)
        + "\n\n"
        + COMPILED_DOC
        + ("\n\n" + SCAN_DOC if scan_output is not None else ""),
        description=docstring_text(spec.description),
        state_doc=", ".join(states),
        param_doc=", ".join(spec.param_names),
    )
    block = fill(
        SPEC_BLOCK,
        constants=plan.constants(
            FUSED_KERNEL=plan.standard_lstm or standard_gru,
            FUSED_CELL="lstm" if plan.standard_lstm else "gru" if standard_gru else None,
            SPEC_TOML=Code(repr(spec.dumps())),  # repr: the quotes ruff format prefers for TOML text
            LINEAR_SCAN=scan_output,
        ),
        init_source=init_source(),
        fusion=plan.fusion_entries(
            lambda xs: f"torch.cat([{', '.join(xs)}], dim=-1)", lambda ref: f"{ref}.new_zeros({ref}.shape[-1])"
        ),
        load_fused=used_loads(load_fused("wt_"), prologue_lines, step_lines),
        load_fused_backward=used_loads(load_fused("w_"), backward_lines),
        load_params=used_loads(load_params, prologue_lines, step_lines),
        load_params_backward=used_loads(load_params, backward_lines),
        input=spec.input,
        prologue=prologue_lines,
        keep_hoisted=[f"seq_{h} = {var(h)}.unbind(0)" for h in program.hoisted],
        unpack_state=targets(state_vars),
        init_tape=[f"tp_{n} = [None] * T" for n in tape],
        load_hoisted=[f"{var(h)} = seq_{h}[t]" for h in program.hoisted],
        step=step_lines,
        tape_store=[f"tp_{n}[t] = {var(n)}" for n in tape] or ["pass"],
        advance=assign(state_vars, next_vars),
        advance_masked=assign(state_vars, [f"torch.where(m, {nv}, {sv})" for sv, nv in zip(state_vars, next_vars)]),
        output=var(step.outputs["output"]),
        tape_dict=literal({n: Code(f"tp_{n}") for n in tape}, column=15, indent=8),
        prologue_tape=dict_items([f'"prologue:{n}": {var(n)}' for n in plan.prologue_tape], "    ", 60),
        final_state=tuple_of(state_vars),
        unpack_g_state=targets(g_states),
        unpack_tape=unpack_tape,
        init_grads=init_grads,
        load_tape=load_tape,
        load_seeds=[f"{var(name)} = {seed_source(role)}" for role, name in seeds.items()],
        mask_seeds=[f"{var(name)} = torch.where(m, {var(name)}, 0.0)" for name in seeds.values()],
        step_backward=step_backward,
        store_grads=store,
        carry=carry,
        stack_grads=stack_grads,
        weight_grads=weight_grads,
        load_prologue_tape=[f'{var(n)} = tape["prologue:{n}"]' for n in plan.prologue_tape],
        prologue_seeds=[f"{var(name)} = gseq_{role.split(':', 1)[1]}" for role, name in pro_seeds.items()],
        prologue_backward=body,
        prologue_input=input_part or ["pass"],
        no_input=var(g_input_name),
        prologue_grads=pro_grads,
        param_grads=param_grads,
        g_input=var(g_input_name),
        g_initial_state=tuple_of(g_states),
    )
    return inline_runtime(__package__, docstring, block)
