"""The JAX runtime: what every generated JAX module holds besides its spec's own code.

Generated modules inline this file (see ``novolstm.codegen.inline_runtime``): the block
of stand-ins below is replaced by the spec's constants, ``init_params`` and the generated
``fuse``, ``prologue`` and ``cell_step``; everything else is this code, verbatim.
"""

import contextlib
import functools
import zlib

import jax
import jax.numpy as jnp
import numpy as np

# --- spec: generated modules replace this block with the spec's constants and functions
from novolstm.init import init_from_table

SPEC_NAME = "stand-in"
SPEC_HASH = ""
#: The spec's class_name: the name of the layer class (the cell's adds "Cell").
CLASS_NAME = "StandIn"
STATE_NAMES: tuple[str, ...] = ("h",)
PARAM_NAMES: tuple[str, ...] = ()
PARAM_TABLE: dict = {}
INPUT_PARAM = "W"  # a parameter shaped (input, units): gives the input size
UNITS_PARAM = "W"  # gives the number of units
BIAS_NAMES: tuple[str, ...] = ()


#: Where the spec is a linear recurrence (novolstm.scan.linear_recurrence), the index in STATE_NAMES
#: of the state its output is, so that sequence may run jax.lax.associative_scan; else None.
LINEAR_SCAN: int | None = None

#: Each step projection -> its operand: a state's name, else a value step_backward returns
#: under "operands".
STEP_PROJECTIONS: dict[str, str] = {}
#: A hoisted value -> (a step projection, start, stop): its cotangent is those units blocks of
#: the projection's output cotangent, which step_backward returns in its place.
HOISTED_IN_PRODUCTS: dict[str, tuple[str, int, int]] = {}


def init_params(input_size, units, seed=0, dtype="float64"):
    """Canonical parameters (NumPy arrays), drawn as novolstm.init_params draws them."""
    return init_from_table(PARAM_TABLE, input_size, units, seed, dtype)


def fuse(params, dtype):
    raise NotImplementedError("generated per spec")


def prologue(w, x, H, block_products=None):
    raise NotImplementedError("generated per spec")


def add_biases(w, hoisted, H):
    raise NotImplementedError("generated per spec")


def cell_step(w, state, hoisted):
    raise NotImplementedError("generated per spec")


def step_products(w, state):
    raise NotImplementedError("generated per spec")


def step_backward(w, state, hoisted, products, g_state, g_output):
    raise NotImplementedError("generated per spec")


# --- end of spec block


# jax >= 0.7 has jax.enable_x64; older releases keep it in jax.experimental.
try:
    _enable_x64 = jax.enable_x64  # jax >= 0.7
except AttributeError:  # older jax
    from jax.experimental import enable_x64 as _enable_x64  # type: ignore[attr-defined, no-redef, unused-ignore]


# ---------------------------------------------------------------- numerics


def _accumulator(a):
    # float16/bfloat16 reductions accumulate in float32, as the spec's numerics require.
    return jnp.float32 if a.dtype in (jnp.float16, jnp.bfloat16) else a.dtype


def _mean_units(a):
    return jnp.mean(a, axis=-1, keepdims=True, dtype=_accumulator(a)).astype(a.dtype)


def _normalize_units(z, eps):
    # LayerNorm without its affine part: population variance of the centred values (two
    # passes, never E[z^2] - E[z]^2), epsilon inside the square root.
    c = z - _mean_units(z)
    return c * (1.0 / jnp.sqrt(_mean_units(c * c) + eps))


def _sum_units(a):
    return jnp.sum(a, axis=-1, keepdims=True, dtype=_accumulator(a)).astype(a.dtype)


def _sum_rows(a):
    # Over every axis but the units axis: the batch (and time, after the loop).
    return jnp.sum(a, axis=tuple(range(a.ndim - 1)), dtype=_accumulator(a)).astype(a.dtype)


def _normalize_units_grad(g, y, z, eps):
    # The VJP of _normalize_units at z, whose output was y: (g - mean g - y mean(g y)) / std,
    # the standard deviation recomputed from z (one reduction) rather than kept per step.
    c = z - _mean_units(z)
    inv_std = 1.0 / jnp.sqrt(_mean_units(c * c) + eps)
    return inv_std * (g - _mean_units(g) - y * _mean_units(g * y))


def _gelu_grad(g, z):
    cdf = 0.5 * (1.0 + jax.lax.erf(z * (1.0 / np.sqrt(2.0))))
    return g * (cdf + z * jnp.exp(-0.5 * z * z) * (1.0 / np.sqrt(2.0 * np.pi)))


def _blocks(x, w, cuts):
    """``x @ w`` as one GEMM per block of ``w``'s columns (cut at ``cuts``): a contiguous array each."""
    return tuple(x @ block for block in jnp.split(w, cuts, axis=-1))


#: The prologue's GEMMs (_blocks) for forward and reverse mode.
_block_products = jax.custom_jvp(_blocks, nondiff_argnums=(2,))


@_block_products.defjvp
def _block_products_jvp(cuts, primals, tangents):
    # The tangent is one wide GEMM pair, split: its transpose, the backward pass, is one GEMM
    # for the input's gradient and one for the weight's (XLA joins the blocks' cotangents,
    # slices of one array, back into it), not one per block (5x slower on CPU).
    (x, w), (dx, dw) = primals, tangents
    return _block_products(x, w, cuts), tuple(jnp.split(dx @ w + x @ dw, cuts, axis=-1))


#: The prologue's GEMMs (_blocks) for reverse mode only, as the loop's custom_vjp (_bptt) runs
#: them: the weight's gradient is one GEMM that contracts every leading axis of the input and
#: of the cotangent, the cotangent as the right operand. JAX's transpose of _block_products'
#: tangent puts the cotangent on the left with its contracted axes leading, which XLA on the
#: CPU copies transposed and multiplies twice as slowly: 1.08 s against 0.51 s of CPU time
#: for NovoLSTM's (25600 x 512) x (25600 x 2560) weight gradient at 128 x 200 x 512.
_block_products_vjp = jax.custom_vjp(_blocks, nondiff_argnums=(2,))


def _block_products_vjp_forward(x, w, cuts):
    return _blocks(x, w, cuts), (x, w)


def _block_products_vjp_backward(cuts, saved, cotangents):
    x, w = saved
    g = jnp.concatenate(cotangents, axis=-1)  # slices of one stack in _bptt: XLA joins them back, no copy
    lead = tuple(range(x.ndim - 1))
    cot_w = jax.lax.dot_general(x, g, ((lead, lead), ((), ())), preferred_element_type=_accumulator(g))
    cot_x = jax.lax.dot_general(g, w, (((g.ndim - 1,), (1,)), ((), ())), preferred_element_type=_accumulator(g))
    return cot_x.astype(x.dtype), cot_w.astype(w.dtype)


_block_products_vjp.defvjp(_block_products_vjp_forward, _block_products_vjp_backward)


def _softmax(z):
    # Max-subtracted so exp cannot overflow; the shift leaves the value unchanged, so no gradient flows through it.
    e = jnp.exp(z - jax.lax.stop_gradient(z.max(axis=-1, keepdims=True)))
    return (e / e.sum(axis=-1, keepdims=True, dtype=_accumulator(e))).astype(z.dtype)


# ---------------------------------------------------------------- initialization from jax.random


def _draw_glorot_uniform(key, shape, dtype, args):
    limit = np.sqrt(6.0 / (shape[0] + shape[-1]))
    return jax.random.uniform(key, shape, dtype, -limit, limit)


JAX_INITIALIZERS = {
    "zeros": lambda key, shape, dtype, args: jnp.zeros(shape, dtype),
    "ones": lambda key, shape, dtype, args: jnp.ones(shape, dtype),
    "constant": lambda key, shape, dtype, args: jnp.full(shape, args["value"], dtype),
    "uniform": lambda key, shape, dtype, args: jax.random.uniform(key, shape, dtype, -args["limit"], args["limit"]),
    "normal": lambda key, shape, dtype, args: args["stddev"] * jax.random.normal(key, shape, dtype),
    "glorot_uniform": _draw_glorot_uniform,
    "orthogonal": lambda key, shape, dtype, args: jax.nn.initializers.orthogonal()(key, shape, dtype),
}


def init_param_from_key(key, name, input_size, units, dtype=jnp.float32):
    """One canonical parameter drawn with jax.random from its own stream (the key folded with the name)."""
    dims, init, args = PARAM_TABLE[name]
    shape = tuple({"input": input_size, "units": units}[d] for d in dims)
    key = jax.random.fold_in(key, zlib.crc32(name.encode()) & 0x7FFFFFFF)
    draw_dtype = jnp.promote_types(dtype, jnp.float32)  # draw half precision in float32, then round once
    return JAX_INITIALIZERS[init](key, shape, draw_dtype, dict(args)).astype(dtype)


def init_from_key(key, input_size, units, dtype=jnp.float32):
    """Canonical parameters drawn with jax.random (traceable: works under jit); each name has its own stream."""
    return {name: init_param_from_key(key, name, input_size, units, dtype) for name in PARAM_TABLE}


# ---------------------------------------------------------------- checks


def _compute_dtype(x):
    return x.dtype if jnp.issubdtype(x.dtype, jnp.floating) else jnp.result_type(float)


def _sizes(params):
    """(input_size, units) read from the parameters, after checking their names and shapes."""
    if not isinstance(params, dict):
        raise TypeError(f"params: expected a dict of canonical names to arrays, got {type(params).__name__}")
    missing, extra = sorted(set(PARAM_TABLE) - set(params)), sorted(set(params) - set(PARAM_TABLE))
    if missing or extra:
        raise ValueError(f"params for {SPEC_NAME!r}: missing {missing}, unexpected {extra}")
    input_size, units = jnp.shape(params[INPUT_PARAM])[0], jnp.shape(params[UNITS_PARAM])[-1]
    for name, (dims, _, _) in PARAM_TABLE.items():
        shape = tuple({"input": input_size, "units": units}[d] for d in dims)
        if jnp.shape(params[name]) != shape:
            raise ValueError(f"params[{name!r}]: expected shape {shape}, got {jnp.shape(params[name])}")
    return input_size, units


def _as_state(state, batch_shape, units, dtype):
    if state is None:
        return tuple(jnp.zeros(batch_shape + (units,), dtype) for _ in STATE_NAMES)
    state = tuple(state) if isinstance(state, (tuple, list)) else (state,)
    if len(state) != len(STATE_NAMES):
        raise ValueError(f"state: expected {len(STATE_NAMES)} arrays {STATE_NAMES}, got {len(state)}")
    out = []
    for name, s in zip(STATE_NAMES, state):
        s = jnp.asarray(s)
        if s.shape != batch_shape + (units,):
            raise ValueError(f"state {name}: expected shape {batch_shape + (units,)}, got {s.shape}")
        out.append(s.astype(dtype))
    return tuple(out)


# ---------------------------------------------------------------- public functions


def step(params, state, x):
    """One timestep: x (..., input) and a state tuple of (..., units) arrays (None: zeros) -> (new state, output).

    Runs in the dtype of x; the input projection is computed for this step only (use
    ``sequence`` over many steps: it hoists it out of the loop).
    """
    input_size, units = _sizes(params)
    x = jnp.asarray(x)
    if x.ndim < 1 or x.shape[-1] != input_size:
        raise ValueError(f"x: expected shape (..., {input_size}), got {x.shape}")
    dtype = _compute_dtype(x)
    w = fuse(params, dtype)
    state = _as_state(state, x.shape[:-1], units, dtype)
    return cell_step(w, state, prologue(w, x.astype(dtype), units))


def sequence(
    params, x, state=None, mask=None, lengths=None, *, reverse=False, unroll=1, time_major=False, remat=True, scan=None
):
    """Run the cell over a sequence with jax.lax.scan.

    Args:
        params: canonical parameters (name -> array).
        x: inputs (batch, time, input), (time, batch, input) if ``time_major``, or
            (time, input) for one unbatched sequence.
        state: initial state tuple in STATE_NAMES order, each (batch, units); zeros if None.
        mask: bool (batch, time), True on real steps. A masked step keeps the state
            unchanged and outputs exactly zero. Or ``lengths`` (batch,) for right padding.
        reverse: run from the last timestep to the first; outputs stay aligned with
            the inputs. With right padding, padded steps come first and carry the
            initial state, so each sequence starts at its own last real step.
        unroll: timesteps per iteration of the scan loop (jax.lax.scan's unroll).
        time_major: x and the outputs are (time, batch, ...).
        remat: under differentiation, save only the states and recompute the rest in the
            generated backward pass (a jax.custom_vjp: per-step cotangents only, each weight
            gradient one GEMM over all timesteps); it has no forward-mode rule (jax.jvp,
            jax.jacfwd). False: JAX differentiates the scan itself and saves every
            intermediate; forward mode works.
        scan: None (auto): a linear recurrence (LINEAR_SCAN) runs as jax.lax.associative_scan
            (see _scan_sequence) off the CPU, and as jax.lax.scan on the CPU, where that measured
            faster (docs/scan.md); other cells as jax.lax.scan. False: jax.lax.scan; True: the
            associative scan on any device, or raise.

    Returns:
        (outputs (batch, time, units) or as x's layout, final state tuple)
    """
    input_size, units = _sizes(params)
    x = jnp.asarray(x)
    unbatched = x.ndim == 2
    if unbatched:  # one sequence (time, input): a batch of one, time-major
        x, time_major = x[:, None], True
        if state is not None:
            state = tuple(jnp.asarray(s)[None] for s in (state if isinstance(state, (tuple, list)) else (state,)))
        if mask is not None:
            mask = jnp.asarray(mask)[None]
        if lengths is not None:
            lengths = jnp.asarray(lengths).reshape(1)
    if x.ndim != 3 or x.shape[-1] != input_size:
        raise ValueError(f"x: expected shape (batch, time, {input_size}) or (time, {input_size}), got {x.shape}")
    dtype = _compute_dtype(x)
    xs = (x if time_major else jnp.swapaxes(x, 0, 1)).astype(dtype)  # time-major: scan walks the leading axis
    steps, batch = xs.shape[0], xs.shape[1]
    state = _as_state(state, (batch,), units, dtype)
    if mask is not None and lengths is not None:
        raise ValueError("give mask or lengths, not both")
    if lengths is not None:
        lengths = jnp.asarray(lengths)
        if lengths.shape != (batch,) or not jnp.issubdtype(lengths.dtype, jnp.integer):
            raise ValueError(f"lengths: expected integers of shape ({batch},), got {lengths.shape} {lengths.dtype}")
        mask = jnp.arange(steps)[None, :] < lengths[:, None]
    if mask is not None:
        mask = jnp.asarray(mask)
        if mask.shape != (batch, steps) or mask.dtype != jnp.bool_:
            raise ValueError(
                f"mask: expected a bool array of shape {(batch, steps)} (batch, time), got {mask.shape} {mask.dtype}"
            )
        mask = mask.T[..., None]  # (time, batch, 1), broadcasting over the units

    if scan not in (None, True, False):
        raise ValueError(f"scan: expected None (auto), True or False, got {scan!r}")
    if scan and LINEAR_SCAN is None:
        raise ValueError(f"scan=True: spec {SPEC_NAME!r} is not a linear recurrence (novolstm.scan.linear_recurrence)")
    w = fuse(params, dtype)
    if LINEAR_SCAN is not None and steps > 0 and (scan or (scan is None and jax.default_backend() != "cpu")):
        final, ys = _scan_sequence(w, prologue(w, xs, units), state, mask, reverse)
    elif remat:  # the generated backward pass, the prologue's GEMMs' included: reverse mode only
        params = {name: jnp.asarray(params[name]) for name in PARAM_TABLE}
        final, ys = _bptt(params, prologue(w, xs, units, _block_products_vjp), state, mask, dtype, reverse, unroll)
    else:
        final, ys = _loop_sequence(params, dtype, prologue(w, xs, units), state, mask, reverse, unroll)
    if unbatched:
        return ys[:, 0], tuple(s[0] for s in final)
    return (ys if time_major else jnp.swapaxes(ys, 0, 1)), final


def _loop_sequence(params, dtype, hoisted, state, mask, reverse, unroll):
    """(final state, outputs (time, batch, units)) by jax.lax.scan over the steps, which JAX differentiates."""

    def one_step(carry, hoisted_t):
        # The step's fused matrices are concatenated inside the loop body: XLA hoists that out
        # of the forward loop, and the backward loop then accumulates one gradient per
        # canonical matrix (units x units) instead of one for the fused matrix, which is
        # 1.15x faster on CPU.
        return cell_step(fuse(params, dtype), carry, hoisted_t)

    return jax.lax.scan(_masked(one_step, mask is not None), state, (hoisted, mask), reverse=reverse, unroll=unroll)


def _masked(one_step, masked):
    """The scan body over (hoisted_t, mask_t): a masked step carries the state and outputs zero."""

    def body(carry, inputs):
        hoisted_t, m = inputs
        new, y = one_step(carry, hoisted_t)
        if not masked:
            return new, y
        new = tuple(jnp.where(m, n, old) for n, old in zip(new, carry))  # a masked step carries the state
        return new, jnp.where(m, y, jnp.zeros_like(y))  # and outputs exactly zero

    return body


# ---------------------------------------------------------------- backpropagation through time


def _forward_scan(params, dtype, hoisted, state, mask, reverse, unroll, keep):
    """(final state, outputs, and where ``keep`` what the backward pass reads, stacked over time:
    each step's previous state and its step_products)."""

    def body(carry, inputs):
        # The parameters are fused inside the loop body, as in _loop_sequence: XLA hoists the
        # concatenations out of the loop, and each bias block the step adds is then its own
        # parameter, where a slice of the fused bias was cut again every step (one more kernel
        # per step: 10% of the forward at 32 x 100 x 128, CPU time).
        w = fuse(params, dtype)
        products = step_products(w, carry)
        step = _masked(lambda carry, hoisted_t: cell_step(w, carry, hoisted_t, products), mask is not None)
        new, y = step(carry, inputs)
        return new, (y, (carry, products) if keep else ())

    final, (ys, kept) = jax.lax.scan(body, state, (hoisted, mask), reverse=reverse, unroll=unroll)
    return final, ys, kept


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5, 6))
def _bptt(params, hoisted, state, mask, dtype, reverse, unroll):
    """The loop, differentiated by the generated backward pass (step_backward) rather than by JAX.

    Its backward pass is a reverse scan whose step computes the elementwise values again
    (from the saved states, the hoisted values and the step's products, which the forward
    pass keeps) and returns per-step cotangents only; every weight
    gradient is one GEMM over all timesteps after the loop, every bias and vector
    parameter gradient one sum over time and batch. XLA's own transpose of the scan
    accumulates them step by step instead: a small GEMM and a reduction per parameter
    per step.
    """
    final, ys, _ = _forward_scan(params, dtype, hoisted, state, mask, reverse, unroll, keep=False)
    return final, ys


def _bptt_forward(params, hoisted, state, mask, dtype, reverse, unroll):
    final, ys, (states, products) = _forward_scan(params, dtype, hoisted, state, mask, reverse, unroll, keep=True)
    return (final, ys), (params, hoisted, states, products, mask)


def _bptt_backward(dtype, reverse, unroll, saved, cotangents):
    params, hoisted, states, products, mask = saved
    g_final, g_ys = cotangents
    H = states[0].shape[-1]
    w, to_params = jax.vjp(lambda p: fuse(p, dtype), params)
    # Each step projection's weight transposed, once: inside the loop the GEMM with a transposed
    # operand repacks it every step (2.4x the forward's recurrent GEMM on CPU).
    transposed = {f"wt_{name}": w[f"w_{name}"].T for name in STEP_PROJECTIONS}
    layout = {}  # how the scan's unique per-step arrays make up step_backward's dict
    # A vector parameter's per-row gradient is summed in the carry as the loop runs (an add XLA
    # fuses into the step's kernels), not stacked over time, and over the batch after the loop.
    first = jax.tree_util.tree_map(lambda a: a[0], (states, hoisted, products, g_ys))
    shapes = jax.eval_shape(lambda s, h, p, g: step_backward({**w, **transposed}, s, h, p, s, g)[1]["params"], *first)
    rows = {name: jnp.zeros(shape.shape, shape.dtype) for name, shape in shapes.items()}

    def body(carry, inputs):
        g_state, rows = carry
        state_t, hoisted_t, products_t, cot_y, m = inputs
        w_t = {**fuse(params, dtype), **transposed}  # fused in the loop body, as in _forward_scan
        seeds = g_state
        if m is not None:
            cot_y = jnp.where(m, cot_y, 0.0)
            seeds = tuple(jnp.where(m, g, 0.0) for g in g_state)
        cot_prev, parts = step_backward(w_t, state_t, hoisted_t, products_t, seeds, cot_y)
        if m is not None:  # a masked step passed its state through unchanged
            cot_prev = tuple(gp + jnp.where(m, 0.0, g) for gp, g in zip(cot_prev, g_state))
        rows = {name: rows[name] + g for name, g in parts.pop("params").items()}
        # One array of the same value appears under several keys (a gate's pre-activation is the
        # cotangent of its hoisted block and of its block of the recurrent product): stack it once.
        leaves, layout["tree"] = jax.tree_util.tree_flatten(parts)
        unique = list({id(leaf): leaf for leaf in leaves}.values())
        position = {id(leaf): k for k, leaf in enumerate(unique)}
        layout["index"] = [position[id(leaf)] for leaf in leaves]
        return (cot_prev, rows), unique

    inputs = (states, hoisted, products, g_ys, mask)
    (g_state0, rows), stacks = jax.lax.scan(body, (tuple(g_final), rows), inputs, reverse=not reverse, unroll=unroll)
    parts = jax.tree_util.tree_unflatten(layout["tree"], [stacks[k] for k in layout["index"]])

    cot_hoisted, cot_sums = {}, {}  # each hoisted value's cotangent, and its sum over time and batch
    sums = {name: _sum_rows(g) for name, g in parts["linears"].items()}
    for name, value in hoisted.items():
        if name in HOISTED_IN_PRODUCTS:
            projection, start, stop = HOISTED_IN_PRODUCTS[name]
            cot_hoisted[name] = parts["linears"][projection][..., start * H : stop * H]
            cot_sums[name] = sums[projection][start * H : stop * H]
        else:
            cot_hoisted[name] = parts["hoisted"].get(name, jnp.zeros_like(value))
            cot_sums[name] = _sum_rows(cot_hoisted[name])
    # The biases' gradients: add_biases' pullback at one row, fed the sums (one wide sum per
    # projection, where the slices of its cotangent would each be copied to be summed).
    one_row = {name: value[(0,) * (value.ndim - 1)][None] for name, value in hoisted.items()}
    _, pullback = jax.vjp(lambda w: add_biases(w, one_row, H), w)
    cot_w = dict(pullback({name: g[None] for name, g in cot_sums.items()})[0])
    for name, operand in STEP_PROJECTIONS.items():
        if name not in parts["linears"]:  # no cotangent reaches it
            continue
        source = states[STATE_NAMES.index(operand)] if operand in STATE_NAMES else parts["operands"][operand]
        # One GEMM and one sum over every timestep: each weight gradient's only GEMM.
        rows_in, g = source.reshape(-1, source.shape[-1]), parts["linears"][name]
        g = g.reshape(-1, g.shape[-1])
        cot_w[f"w_{name}"] = cot_w[f"w_{name}"] + jnp.matmul(
            rows_in.T, g, preferred_element_type=_accumulator(g)
        ).astype(g.dtype)
        if f"b_{name}" in cot_w:
            cot_w[f"b_{name}"] = cot_w[f"b_{name}"] + sums[name]
    for name, g in rows.items():
        cot_w[name] = cot_w[name] + _sum_rows(g)
    return to_params(cot_w)[0], cot_hoisted, g_state0, None


_bptt.defvjp(_bptt_forward, _bptt_backward)


def _compose(earlier, later):
    """Two affine steps h -> a * h + b as one: the associative operation of the scan."""
    (a1, b1), (a2, b2) = earlier, later
    return a2 * a1, a2 * b1 + b2


def _scan_sequence(w, hoisted, state, mask, reverse):
    """(final state, outputs (time, batch, units)) of a linear recurrence by jax.lax.associative_scan.

    Every next state is a * state + b with a and b free of any state: one evaluation of the
    step over all timesteps at once, as a Jacobian-vector product at the zero state, gives b
    (its value) and a (its derivative, exact for an affine step). A masked step is the
    identity pair (1, 0) and outputs zero; the initial state enters through the first pair.
    """
    steps = jax.tree_util.tree_leaves(hoisted)[0].shape[0]
    zeros = tuple(jnp.zeros((steps,) + s.shape, s.dtype) for s in state)
    ones = tuple(jnp.ones_like(z) for z in zeros)
    b, a = jax.jvp(lambda s: cell_step(w, s, hoisted)[0], (zeros,), (ones,))
    order = (lambda v: jnp.flip(v, 0)) if reverse else (lambda v: v)  # scan from the last step
    m = None if mask is None else order(mask)
    hs = []
    for ak, bk, h0 in zip(a, b, state):
        ak, bk = order(jnp.broadcast_to(ak, bk.shape)), order(bk)
        if m is not None:
            ak, bk = jnp.where(m, ak, 1.0), jnp.where(m, bk, 0.0)
        bk = bk.at[0].set(ak[0] * h0 + bk[0])
        hs.append(jax.lax.associative_scan(_compose, (ak, bk))[1])
    ys = hs[LINEAR_SCAN or 0]
    if m is not None:
        ys = jnp.where(m, ys, jnp.zeros_like(ys))
    return tuple(h[-1] for h in hs), order(ys)


def bidirectional(
    params, x, state=None, mask=None, lengths=None, *, merge="concat", unroll=1, time_major=False, remat=True
):
    """A forward and a backward pass over x with their own parameters.

    Args:
        params: (forward params, backward params).
        state: (forward initial state, backward initial state), or None for zeros.
        merge: how the two outputs combine: "concat" (on the units axis), "sum",
            "mul", "ave", or None for the pair.
        Others as ``sequence``.

    Returns:
        (merged outputs, (forward final state, backward final state))
    """
    params_fw, params_bw = params
    state_fw, state_bw = (None, None) if state is None else state
    kw = dict(mask=mask, lengths=lengths, unroll=unroll, time_major=time_major, remat=remat)
    y_fw, final_fw = sequence(params_fw, x, state_fw, **kw)
    y_bw, final_bw = sequence(params_bw, x, state_bw, reverse=True, **kw)
    merges = {
        "concat": lambda a, b: jnp.concatenate([a, b], axis=-1),
        "sum": lambda a, b: a + b,
        "mul": lambda a, b: a * b,
        "ave": lambda a, b: (a + b) / 2,
        None: lambda a, b: (a, b),
    }
    if merge not in merges:
        raise ValueError(f"merge: expected one of {list(merges)}, got {merge!r}")
    return merges[merge](y_fw, y_bw), (final_fw, final_bw)


_jit_sequence = jax.jit(sequence, static_argnames=("reverse", "unroll", "time_major", "remat", "scan"))


def _precision(x):
    # float64 inputs run with jax_enable_x64, scoped to the call.
    return _enable_x64(True) if np.asarray(x).dtype == np.float64 else contextlib.nullcontext()


def run_numpy(params, x, state=None, mask=None):
    """The backend-neutral entry of novolstm.run: NumPy arrays in and out, in the dtype of x."""
    with _precision(x):
        outputs, final = _jit_sequence(params, x, state, mask)
        return np.asarray(outputs), tuple(np.asarray(s) for s in final)


@jax.jit
def _jit_pullback(params, x, state, mask, g_outputs, g_state):
    _, pullback = jax.vjp(lambda p, x, s: sequence(p, x, s, mask), params, x, state)
    return pullback((g_outputs, g_state))


def vjp_numpy(params, x, state=None, mask=None):
    """Backend-neutral gradients: ``(outputs, final_state, vjp)`` with
    ``vjp(g_outputs, g_state) -> (g_x, g_state0, g_params)``, NumPy arrays in and out."""
    x = np.asarray(x)
    units = _sizes(params)[1]
    if state is None:
        state = tuple(np.zeros((x.shape[0], units), x.dtype) for _ in STATE_NAMES)
    outputs, final = run_numpy(params, x, state, mask)

    def vjp(g_outputs=None, g_state=None):
        g_outputs = np.zeros_like(outputs) if g_outputs is None else np.asarray(g_outputs, x.dtype)
        g_state = (
            tuple(np.zeros_like(s) for s in final)
            if g_state is None
            else tuple(np.asarray(g, x.dtype) for g in g_state)
        )
        with _precision(x):
            g_params, g_x, g_state0 = _jit_pullback(params, x, tuple(state), mask, g_outputs, g_state)
            return (
                np.asarray(g_x),
                tuple(np.asarray(g) for g in g_state0),
                {k: np.asarray(v) for k, v in g_params.items()},
            )

    return outputs, final, vjp


# ---------------------------------------------------------------- Cell


class Cell:
    """The spec's cell (``SPEC_NAME``): pure functions for a number of units, generated by novolstm.

    Args:
        units: the number of units (the state width).
        dtype: the dtype of parameters drawn by ``init``.

    Examples:
        >>> cell = Cell(4)
        >>> params = cell.init(0, input_size=3)  # an int seed draws what novolstm.init_params draws
        >>> x = jnp.ones((2, 5, 3))
        >>> outputs, state = jax.jit(cell.sequence)(params, x)
        >>> outputs.shape, len(state) == len(STATE_NAMES)
        ((2, 5, 4), True)
        >>> loss = lambda p: cell.sequence(p, x)[0].sum()
        >>> sorted(jax.grad(loss)(params)) == sorted(params)
        True
    """

    spec_name = SPEC_NAME
    spec_hash = SPEC_HASH
    state_names = STATE_NAMES

    def __init__(self, units, dtype=jnp.float32):
        self.units = int(units)
        self.dtype = jnp.dtype(dtype)

    def __repr__(self):
        return f"{type(self).__name__}(units={self.units}, dtype={self.dtype.name})"

    def __eq__(self, other):
        return type(other) is type(self) and (self.units, self.dtype) == (other.units, other.dtype)

    def __hash__(self):
        return hash((SPEC_NAME, self.units, self.dtype.name))

    def init(self, seed_or_key, input_size):
        """Canonical parameters (dict of jax arrays): an int seed draws novolstm.init_params' numbers, a key draws with jax.random."""
        if self.dtype == jnp.float64 and not jax.config.jax_enable_x64:
            raise TypeError(
                "dtype float64 needs jax_enable_x64: jax.config.update('jax_enable_x64', True) or `with jax.enable_x64(True):`"
            )
        if isinstance(seed_or_key, (int, np.integer)):
            return {
                k: jnp.asarray(v) for k, v in init_params(input_size, self.units, int(seed_or_key), self.dtype).items()
            }
        return init_from_key(seed_or_key, input_size, self.units, self.dtype)

    def initial_state(self, batch_shape=(), dtype=None):
        """The zero state tuple, each array (*batch_shape, units)."""
        batch_shape = (batch_shape,) if isinstance(batch_shape, int) else tuple(batch_shape)
        return tuple(jnp.zeros(batch_shape + (self.units,), dtype or self.dtype) for _ in STATE_NAMES)

    def _check_units(self, params):
        units = _sizes(params)[1]
        if units != self.units:
            raise ValueError(f"params have {units} units, this cell {self.units}")

    def step(self, params, state, x):
        """One timestep -> (new state tuple, output); see the module function ``step``."""
        self._check_units(params)
        return step(params, state, x)

    def sequence(
        self, params, x, state=None, mask=None, lengths=None, *, reverse=False, unroll=1, time_major=False, remat=True
    ):
        """Run over a sequence -> (outputs, final state tuple); see the module function ``sequence``."""
        self._check_units(params)
        return sequence(
            params, x, state, mask, lengths, reverse=reverse, unroll=unroll, time_major=time_major, remat=remat
        )

    def bidirectional(
        self, params, x, state=None, mask=None, lengths=None, *, merge="concat", unroll=1, time_major=False, remat=True
    ):
        """Forward and backward passes with params (forward, backward); see ``bidirectional``."""
        for p in params:
            self._check_units(p)
        return bidirectional(
            params, x, state, mask, lengths, merge=merge, unroll=unroll, time_major=time_major, remat=remat
        )


# ---------------------------------------------------------------- Flax modules (flax imported on first use)


def _make_nnx_cell():
    from flax import nnx

    class NNXCell(nnx.Module):
        """The spec's cell as a Flax nnx module with the carry API of nnx.RNN; parameters under canonical names.

        The carry is the state tuple in STATE_NAMES order (Flax's own LSTMCell uses (c, h)).
        Give ``rngs`` (draws with jax.random), an int ``seed`` (novolstm.init_params'
        numbers) or ``params`` (canonical arrays). ``dtype``: the compute dtype (None:
        the inputs' dtype).

        Examples:
            >>> from flax import nnx
            >>> cell = NNXCell(3, 4, rngs=nnx.Rngs(0))
            >>> nnx.RNN(cell)(jnp.ones((2, 5, 3))).shape
            (2, 5, 4)
        """

        def __init__(
            self,
            in_features,
            hidden_features,
            *,
            rngs=None,
            seed=None,
            params=None,
            dtype=None,
            param_dtype=jnp.float32,
        ):
            self.in_features, self.hidden_features = in_features, hidden_features
            self.dtype, self.param_dtype = dtype, param_dtype
            if params is None:
                if seed is not None:
                    params = init_params(in_features, hidden_features, seed)
                elif rngs is not None:
                    params = init_from_key(rngs.params(), in_features, hidden_features, param_dtype)
                else:
                    raise ValueError("give rngs, seed or params")
            if _sizes(params) != (in_features, hidden_features):
                raise ValueError(
                    f"params: expected input size {in_features} and {hidden_features} units, got {_sizes(params)}"
                )
            for name in PARAM_TABLE:
                setattr(self, name, nnx.Param(jnp.asarray(params[name]).astype(param_dtype)))

        def canonical_params(self):
            """The parameters as a dict of canonical names to arrays (what the pure functions take)."""
            return {name: getattr(self, name)[...] for name in PARAM_TABLE}

        def export_canonical(self):
            """The parameters as NumPy arrays under canonical names (novolstm.save_module)."""
            return {name: np.asarray(value) for name, value in self.canonical_params().items()}

        def load_canonical(self, params):
            """Set the parameters from canonical ones, cast to param_dtype; returns the cell."""
            if set(params) != set(PARAM_TABLE):
                raise ValueError(f"params: expected names {sorted(PARAM_TABLE)}, got {sorted(params)}")
            if _sizes(params) != (self.in_features, self.hidden_features):
                raise ValueError(
                    f"params: expected input size {self.in_features} and {self.hidden_features} units, got {_sizes(params)}"
                )
            for name in PARAM_TABLE:
                setattr(self, name, nnx.Param(jnp.asarray(params[name]).astype(self.param_dtype)))
            return self

        def _cast(self, x, carry):
            if self.dtype is None:
                return x, carry
            return jnp.asarray(x).astype(self.dtype), jax.tree_util.tree_map(
                lambda s: jnp.asarray(s).astype(self.dtype), carry
            )

        def __call__(self, carry, inputs):
            inputs, carry = self._cast(inputs, carry)
            return step(self.canonical_params(), carry, inputs)

        def sequence(
            self, x, state=None, mask=None, lengths=None, *, reverse=False, unroll=1, time_major=False, remat=True
        ):
            """The whole sequence with the input projection hoisted out of the loop (faster than nnx.RNN)."""
            x, state = self._cast(x, state)
            return sequence(
                self.canonical_params(),
                x,
                state,
                mask,
                lengths,
                reverse=reverse,
                unroll=unroll,
                time_major=time_major,
                remat=remat,
            )

        def initialize_carry(self, input_shape, rngs=None, carry_init=None):
            batch_shape = tuple(input_shape[:-1])
            dtype = self.dtype or self.param_dtype
            if carry_init is None:
                return tuple(jnp.zeros(batch_shape + (self.hidden_features,), dtype) for _ in STATE_NAMES)
            if isinstance(rngs, nnx.Rngs):
                rngs = rngs.carry
            return tuple(carry_init(rngs(), batch_shape + (self.hidden_features,), dtype) for _ in STATE_NAMES)

        @property
        def num_feature_axes(self):
            return 1

    return NNXCell


def _make_linen_cell():
    import functools

    import flax.linen as nn

    class LinenCell(nn.RNNCellBase):
        """The spec's cell as a Flax linen cell for nn.RNN; parameters under canonical names.

        The carry is the state tuple in STATE_NAMES order (Flax's own LSTMCell uses (c, h)).
        Parameters are drawn with jax.random (see init_from_key); ``dtype``: the compute
        dtype (None: the inputs' dtype).

        Examples:
            >>> import flax.linen as nn
            >>> layer = nn.RNN(LinenCell(4))
            >>> variables = layer.init(jax.random.key(0), jnp.ones((2, 5, 3)))
            >>> layer.apply(variables, jnp.ones((2, 5, 3))).shape
            (2, 5, 4)
        """

        features: int
        dtype: object = None
        param_dtype: object = jnp.float32

        @nn.compact
        def __call__(self, carry, inputs):
            input_size = jnp.shape(inputs)[-1]
            params = {
                name: self.param(
                    name,
                    functools.partial(
                        init_param_from_key,
                        name=name,
                        input_size=input_size,
                        units=self.features,
                        dtype=self.param_dtype,
                    ),
                )
                for name in PARAM_TABLE
            }
            if self.dtype is not None:
                inputs = jnp.asarray(inputs).astype(self.dtype)
                carry = jax.tree_util.tree_map(lambda s: jnp.asarray(s).astype(self.dtype), carry)
            return step(params, carry, inputs)

        @nn.nowrap
        def initialize_carry(self, rng, input_shape):
            batch_shape = tuple(input_shape[:-1])
            return tuple(jnp.zeros(batch_shape + (self.features,), self.dtype or self.param_dtype) for _ in STATE_NAMES)

        @property
        def num_feature_axes(self):
            return 1

    return LinenCell


# The spec's own name for the cell (repr, pickle): CLASS_NAME + "Cell".
Cell.__name__ = Cell.__qualname__ = CLASS_NAME + "Cell"
globals()[CLASS_NAME + "Cell"] = Cell

_FLAX_FACTORIES = {"NNXCell": _make_nnx_cell, "LinenCell": _make_linen_cell}


def __getattr__(name):
    # The Flax classes are built on first access, so the pure functions never import flax.
    if name in _FLAX_FACTORIES:
        cls = _FLAX_FACTORIES[name]()
        cls.__module__ = __name__
        cls.__name__ = cls.__qualname__ = CLASS_NAME + "Cell"  # as Flax's LSTMCell, in nnx and in linen
        globals()[name] = cls
        return cls
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
