"""The NumPy emitter: a standalone module with forward, a generated backward pass
through time, and a trainable ``Cell`` class.

Example:
    >>> import novolstm
    >>> source = novolstm.generate_source("lstm", backend="numpy")
    >>> "def backward(" in source and "import torch" not in source
    True
"""

from __future__ import annotations

from novolstm.codegen import ARRAY_OPS, LoopPlan, concat_op, docstring_text, init_source, linear_call, render, units_offset, var
from novolstm.template import fill

NAME = "numpy"
FRAMEWORK = "numpy"


OPS = {
    **ARRAY_OPS,
    "linear": linear_call,
    "sigmoid": lambda n, a: f"_sigmoid({a[0]})",
    "tanh": lambda n, a: f"np.tanh({a[0]})",
    "relu": lambda n, a: f"np.maximum({a[0]}, 0.0)",
    "softmax": lambda n, a: f"_softmax({a[0]})",
    "normalize_units": lambda n, a: f"_normalize_units({a[0]}, {n.attr('eps')!r})",
    # backward-only ops
    "sigmoid_grad": lambda n, a: f"{a[0]} * {a[1]} * (1.0 - {a[1]})",
    "tanh_grad": lambda n, a: f"{a[0]} * (1.0 - {a[1]} * {a[1]})",
    "relu_grad": lambda n, a: f"{a[0]} * ({a[1]} > 0.0)",
    "softmax_grad": lambda n, a: f"{a[1]} * ({a[0]} - ({a[0]} * {a[1]}).sum(axis=-1, keepdims=True))",
    "normalize_units_grad": lambda n, a: f"_normalize_units_grad({', '.join(a)}, {n.attr('eps')!r})",
    "linear_t": lambda n, a: f"_linear({a[0]}, w_{n.attr('linear')}.T)",
    "sum_units": lambda n, a: f"{a[0]}.sum(axis=-1, keepdims=True)",
    "sum_batch": lambda n, a: f"{a[0]}.reshape(-1, {a[0]}.shape[-1]).sum(axis=0)",
    "concat": concat_op('np.zeros({like}.shape[:-1] + ({width},), {like}.dtype)', 'np.concatenate([{parts}], axis=-1)'),
}


TEMPLATE = '''\
"""$header

$description

State: $state_doc. Parameters use the canonical names of novolstm.
"""

import zlib

import numpy as np

SPEC_NAME = $spec_name
SPEC_HASH = $spec_hash
STATE_NAMES = $state_names
PARAM_TABLE = $param_table


def _sigmoid(z):
    # The exact logistic, overflow-free for any finite z: tanh saturates where exp(-z) overflows.
    return 0.5 * np.tanh(0.5 * z) + 0.5


def _softmax(z):
    e = np.exp(z - z.max(axis=-1, keepdims=True))  # max-subtracted, so exp cannot overflow
    return e / e.sum(axis=-1, keepdims=True)


def _normalize_units(z, eps):
    # LayerNorm without its affine part: population variance of the centred values (two
    # passes, never E[z^2] - E[z]^2), epsilon inside the square root.
    c = z - z.mean(axis=-1, keepdims=True)
    return c * (1.0 / np.sqrt((c * c).mean(axis=-1, keepdims=True) + eps))


def _normalize_units_grad(g, y, z, eps):
    # The VJP of _normalize_units at z, whose output was y: (g - mean g - y mean(g y)) / std.
    # The standard deviation is recomputed from z (one reduction) rather than kept per step.
    c = z - z.mean(axis=-1, keepdims=True)
    inv_std = 1.0 / np.sqrt((c * c).mean(axis=-1, keepdims=True) + eps)
    return inv_std * (g - g.mean(axis=-1, keepdims=True) - y * (g * y).mean(axis=-1, keepdims=True))


def _linear(a, w, b=None):
    # One GEMM over every leading axis (batch, or time and batch).
    out = a.reshape(-1, a.shape[-1]) @ w
    if b is not None:
        out += b
    return out.reshape(a.shape[:-1] + (w.shape[-1],))


$init_source


def fuse(params):
    """The fused matrices the loops use, concatenated from canonical parameters."""
    return {
        $fusion
    }


def check_inputs(params, x, state, mask):
    """Shapes and dtypes of a call, checked before any arithmetic: never a silent broadcast."""
    input_size, units = params[$input_param].shape[0], params[$units_param].shape[-1]
    x = np.asarray(x)
    if x.ndim != 3 or x.shape[0] < 1 or x.shape[1] < 1 or x.shape[2] != input_size:
        raise ValueError(f"x: expected shape (batch, time, {input_size}) with batch, time >= 1, got {x.shape}")
    if x.dtype != params[$units_param].dtype:
        raise TypeError(f"x: expected dtype {params[$units_param].dtype} (the parameters' dtype), got {x.dtype}")
    if state is not None:
        if len(state) != len(STATE_NAMES):
            raise ValueError(f"state: expected {len(STATE_NAMES)} arrays {STATE_NAMES}, got {len(state)}")
        for name, s in zip(STATE_NAMES, state):
            if np.shape(s) != (x.shape[0], units) or np.asarray(s).dtype != x.dtype:
                raise ValueError(
                    f"state {name}: expected shape ({x.shape[0]}, {units}) and dtype {x.dtype}, "
                    f"got {np.shape(s)} {np.asarray(s).dtype}"
                )
    if mask is not None and (np.shape(mask) != x.shape[:2] or np.asarray(mask).dtype != bool):
        raise ValueError(f"mask: expected a bool array of shape {x.shape[:2]}, got {np.shape(mask)} {np.asarray(mask).dtype}")
    return x


def forward(params, x, state=None, mask=None, keep_tape=False):
    """Run the cell over a sequence.

    Args:
        params: canonical parameters (name -> array).
        x: inputs (batch, time, input).
        state: tuple of (batch, units) arrays in STATE_NAMES order; zeros if None.
        mask: bool (batch, time), True on real steps. A masked step keeps the
            state unchanged and outputs zeros.
        keep_tape: keep what :func:`backward` needs.

    Returns:
        (outputs (batch, time, units), final state tuple, tape or None)
    """
    x = check_inputs(params, x, state, mask)
    H = params[$units_param].shape[-1]
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
    tape = {name: [] for name in $step_tape} if keep_tape else None
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
    return np.swapaxes(ys, 0, 1), ($final_state), tape


def backward(params, tape, g_outputs=None, g_state=None):
    """Backpropagation through time for a :func:`forward` run made with ``keep_tape=True``.

    Args:
        g_outputs: gradient of the loss with respect to the outputs (batch, time, units), or None.
        g_state: gradients with respect to the final state (tuple), or None.

    Returns:
        (g_x (batch, time, input), g_initial_state tuple, g_params dict of canonical names)
    """
    H = params[$units_param].shape[-1]
    fused = fuse(params)
    $load_fused
    $load_params
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
    return np.swapaxes($g_input, 0, 1), ($g_initial_state), grads


class Cell:
    """$title, a trainable NumPy cell generated by novolstm.

    Example:
        >>> cell = Cell(input_size=3, units=4, seed=0)
        >>> x = np.ones((2, 5, 3))
        >>> outputs, state = cell.sequence(x)
        >>> outputs.shape
        (2, 5, 4)
        >>> outputs, state, vjp = cell.sequence_with_vjp(x)
        >>> g_x, g_state0, g_params = vjp(np.ones_like(outputs))
        >>> sorted(g_params) == sorted(cell.params)
        True
    """

    spec_name = SPEC_NAME
    spec_hash = SPEC_HASH
    state_names = STATE_NAMES

    def __init__(self, input_size, units, seed=0, dtype="float64", params=None):
        self.input_size, self.units, self.dtype = input_size, units, np.dtype(dtype)
        if self.dtype not in (np.float32, np.float64):
            raise TypeError(f"dtype: expected float32 or float64, got {self.dtype}")
        self.load_canonical(init_params(input_size, units, seed, self.dtype) if params is None else params)

    def load_canonical(self, params):
        """Set the parameters from canonical ones (names and shapes checked, copied in the cell's dtype); returns the cell."""
        expected = {name: tuple({"input": self.input_size, "units": self.units}[d] for d in dims) for name, (dims, _, _) in PARAM_TABLE.items()}
        if set(params) != set(expected):
            raise ValueError(f"params: expected names {sorted(expected)}, got {sorted(params)}")
        for name, shape in expected.items():
            if np.shape(params[name]) != shape:
                raise ValueError(f"params[{name!r}]: expected shape {shape}, got {np.shape(params[name])}")
        self.params = {name: np.array(params[name], dtype=self.dtype) for name in expected}
        return self

    def export_canonical(self):
        """The parameters under canonical names (copies)."""
        return {name: value.copy() for name, value in self.params.items()}

    def __call__(self, x, state=None):
        """One step, as torch.nn.LSTMCell: x (batch, input) or (input,) -> the new state."""
        x = np.asarray(x, dtype=self.dtype)
        unbatched = x.ndim == 1
        if unbatched:
            x = x[None]
            state = None if state is None else tuple(np.asarray(s)[None] for s in _as_tuple(state))
        if x.ndim != 2:
            raise ValueError(f"x: expected shape (batch, {self.input_size}) or ({self.input_size},), got {x.shape}")
        _, new_state, _ = forward(self.params, x[:, None], None if state is None else _as_tuple(state))
        if unbatched:
            new_state = tuple(s[0] for s in new_state)
        return new_state if len(new_state) > 1 else new_state[0]

    def sequence(self, x, state=None, mask=None):
        """Run over x (batch, time, input) -> (outputs (batch, time, units), final state tuple)."""
        outputs, final, _ = forward(self.params, x, None if state is None else _as_tuple(state), mask)
        return outputs, final

    def sequence_with_vjp(self, x, state=None, mask=None):
        """As :meth:`sequence`, plus ``vjp(g_outputs=None, g_state=None) -> (g_x, g_state0, g_params)``."""
        outputs, final, tape = forward(self.params, x, None if state is None else _as_tuple(state), mask, keep_tape=True)

        def vjp(g_outputs=None, g_state=None):
            return backward(self.params, tape, g_outputs, None if g_state is None else _as_tuple(g_state))

        return outputs, final, vjp


def _as_tuple(state):
    return tuple(state) if isinstance(state, (tuple, list)) else (state,)


def run_numpy(params, x, state=None, mask=None):
    """The backend-neutral entry of novolstm.run: NumPy arrays in and out."""
    outputs, final, _ = forward(params, x, state, mask)
    return outputs, final


def vjp_numpy(params, x, state=None, mask=None):
    """Backend-neutral gradients: ``(outputs, final_state, vjp)`` with
    ``vjp(g_outputs, g_state) -> (g_x, g_state0, g_params)``, NumPy arrays in and out."""
    outputs, final, tape = forward(params, x, state, mask, keep_tape=True)
    return outputs, final, lambda g_outputs=None, g_state=None: backward(params, tape, g_outputs, g_state)
'''


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
        operand = f"np.stack(tape[{var(L.operand)!r}])"
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

    param_grads = [
        f'"{p}": {" + ".join(pieces)},' for p, pieces in plan.param_grad_pieces().items()
    ]
    input_param = next(p.name for p in spec.params if p.shape[0] == "input")
    units_param = spec.params[0].name
    table = {p.name: (p.shape, p.init.name, dict(p.init.args)) for p in spec.params}
    state_vars = ", ".join(var(s) for s in states) + ","
    next_vars = [var(step.outputs[f"state:{s}"]) for s in states]

    return fill(
        TEMPLATE,
        header=plan.header(NAME),
        description=docstring_text(spec.description),
        title=f"The {spec.name!r} cell",
        state_doc=", ".join(states),
        spec_name=repr(spec.name),
        spec_hash=repr(spec.hash),
        state_names=repr(states),
        param_table=repr(table),
        init_source=init_source(),
        fusion=plan.fusion_entries(lambda xs: f"np.concatenate([{', '.join(xs)}], axis=-1)", lambda ref: f"np.zeros({ref}.shape[-1], {ref}.dtype)"),
        input_param=repr(input_param),
        units_param=repr(units_param),
        load_fused=[f'{k} = fused["{k}"]' for L in plan.linears for k in (f"w_{L.name}", f"b_{L.name}") if k[0] == "w" or L.has_bias],
        load_params=[f'{var(p)} = params["{p}"]' for p in plan.vector_params],
        input=spec.input,
        prologue=render(program.prologue, OPS),
        keep_hoisted=[f"seq_{h} = {var(h)}" for h in program.hoisted],
        unpack_state=state_vars,
        step_tape=repr(tuple(var(n) for n in plan.step_tape)),
        load_hoisted=[f"{var(h)} = seq_{h}[t]" for h in program.hoisted],
        step=render(step, OPS),
        tape_append=[f"tape[{var(n)!r}].append({var(n)})" for n in plan.step_tape] or ["pass"],
        advance=f"{state_vars} = {', '.join(next_vars)},",
        advance_masked=f"{state_vars} = {', '.join(f'np.where(m, {nv}, {var(s)})' for s, nv in zip(states, next_vars))},",
        output=var(step.outputs["output"]),
        prologue_tape=", ".join(f"'prologue:{n}': {var(n)}" for n in plan.prologue_tape),
        final_state=state_vars,
        unpack_g_state=", ".join(f"g_{s}" for s in states) + ",",
        init_grads=init_grads,
        load_tape=[f"{var(n)} = tape[{var(n)!r}][t]" for n in plan.step_tape],
        load_seeds=[f"{var(name)} = {seed_source(role)}" for role, name in seeds.items()],
        mask_seeds=[f"{var(name)} = np.where(m, {var(name)}, 0.0)" for name in seeds.values()],
        step_backward=render(back, OPS),
        store_grads=store or ["pass"],
        carry=carry,
        step_weight_grads=step_wgrads,
        load_prologue_tape=[f"{var(n)} = tape['prologue:{n}']" for n in plan.prologue_tape],
        prologue_seeds=[f"{var(name)} = gseq_{role.split(':', 1)[1]}" for role, name in pro_seeds.items()],
        prologue_backward=render(pro_back, OPS),
        prologue_grads=pro_grads,
        param_grads=param_grads,
        g_input=var(pro_back.outputs[f"grad:{spec.input}"]),
        g_initial_state=", ".join(f"g_{s}" for s in states) + ",",
    )
