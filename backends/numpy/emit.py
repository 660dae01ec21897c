"""The NumPy emitter: a standalone module with forward, a generated backward pass
through time, and a trainable ``Cell`` class.

Examples:
    >>> import novolstm
    >>> source = novolstm.generate_source("lstm", backend="numpy")
    >>> "def backward(" in source and "import torch" not in source
    True
"""

from __future__ import annotations

from novolstm.backends.cpp import c_backward, c_forward
from novolstm.codegen import (
    ARRAY_OPS,
    WRAP_AT,
    Code,
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
    targets,
    tuple_of,
    units_offset,
    used_loads,
    var,
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


def forward(params, x, state=None, mask=None, keep_tape=False, compiled=None):
    """Run the cell over a sequence.

    Args:
        params: canonical parameters (name -> array).
        x: inputs (batch, time, input).
        state: tuple of (batch, units) arrays in STATE_NAMES order; zeros if None.
        mask: bool (batch, time), True on real steps. A masked step keeps the
            state unchanged and outputs zeros.
        keep_tape: keep what ``backward`` needs.
        compiled: the steps after the prologue as one compiled call, and the prologue too
            where it is small (novolstm builds it with the C++ compiler, once per spec;
            ``backward`` then runs its steps in the same kernel where it compiles them):
            None where it pays (float32 and float64, at least COMPILED_MIN_STEPS steps,
            batch * units**2 at most COMPILED_MAX_WORK, novolstm loaded), True always (or
            raise why not), False never.

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
    if state is None:
        state = tuple(np.zeros((B, H), dtype=x.dtype) for _ in STATE_NAMES)
    ms = None if mask is None else np.swapaxes(np.asarray(mask), 0, 1)[..., None]
    kernel = _compiled_forward(x.dtype, B, T, H, compiled)
    if kernel is not None and kernel.runs_prologue(B, T, x.shape[2], H):
        # A small call: the prologue in the compiled call too (no hoisted arrays), so that no BLAS
        # call precedes its steps (a multi-threaded BLAS's idle threads would spin beside them).
        $compiled_whole_call
        if keep_tape:
            tape.update(x=v_$input, ms=ms, kernel=kernel)
        return outputs, final, tape
    $prologue
    $keep_hoisted
    kept = {$prologue_tape}  # prologue values the backward pass reads
    if kernel is not None:  # the steps in one compiled call: outputs, final state and tape as the loop's
        $compiled_call
        if keep_tape:
            tape.update(kept, x=v_$input, ms=ms, kernel=kernel)
        return outputs, final, tape
    $unpack_state = state
    ys = np.empty((T, B, H), dtype=x.dtype)
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
    # The steps, from the last: in the compiled kernel that ran the forward where it compiles them
    # (it returns the initial state's gradients), else in this loop.
    $compiled_backward_call
    if done is not None:
        $unpack_g_state = done
    for t in range(T - 1, -1, -1) if done is None else ():
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
        operand = f'np.asarray(tape["{var(L.operand)}"])'
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
    layout = c_forward.layout(plan)  # the arrays the compiled step loop takes, in its order
    backward = c_backward.layout(plan)  # and its backward steps
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
        constants=plan.constants(SPEC_TOML=Code(repr(spec.dumps()))),
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
        compiled_call=call(
            "outputs, final, tape = kernel",
            ["x", "state", "mask", *(a.name for a in layout.arguments + layout.prologue), "tape=keep_tape"],
        ),
        compiled_backward_call=call(
            "done = _compiled_backward",
            ["tape", "g_ys", "ms", tuple_of(g_states), *(a.name for a in backward.arguments + backward.grads)],
        ),
        compiled_whole_call=call(
            "outputs, final, tape = kernel",
            [
                "x",
                "state",
                "mask",
                *("None" if a.kind == "hoisted" else a.name for a in layout.arguments + layout.prologue),
                "tape=keep_tape",
            ],
        ),
        step_tape=literal(tuple(var(n) for n in plan.step_tape), column=16, indent=4),
        load_hoisted=[f"{var(h)} = seq_{h}[t]" for h in program.hoisted],
        step=step_lines,
        tape_append=[f'tape["{var(n)}"].append({var(n)})' for n in plan.step_tape] or ["pass"],
        advance=assign(state_vars, next_vars),
        advance_masked=assign(state_vars, [f"np.where(m, {nv}, {sv})" for sv, nv in zip(state_vars, next_vars)]),
        output=var(step.outputs["output"]),
        prologue_tape=dict_items([f'"prologue:{n}": {var(n)}' for n in plan.prologue_tape], "    ", 60),
        final_state=tuple_of(state_vars),
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


def call(head: str, args: list[str]) -> list[str]:
    """``head(a, b, ...)`` on one line, or one argument a line (as ruff formats it) where long."""
    line = f"{head}({', '.join(args)})"
    if len(line) <= WRAP_AT:
        return [line]
    return [f"{head}(", *(f"    {a}," for a in args), ")"]
