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

Example:
    >>> import novolstm
    >>> source = novolstm.generate_source("lstm", backend="torch")
    >>> "class Layer(nn.Module)" in source and "torch.autograd.Function" in source
    True
"""

from __future__ import annotations

from novolstm.codegen import ARRAY_OPS, LoopPlan, concat_op, docstring_text, init_source, render, units_offset, var
from novolstm.ir import Graph, live_names, rewrite
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


OPS = {
    **ARRAY_OPS,
    "linear": _gemm,
    "sigmoid": lambda n, a: f"torch.sigmoid({a[0]})",
    "tanh": lambda n, a: f"torch.tanh({a[0]})",
    "relu": lambda n, a: f"torch.relu({a[0]})",
    "softmax": lambda n, a: f"_softmax({a[0]})",
    "normalize_units": lambda n, a: f"_normalize_units({a[0]}, {n.attr('eps')!r})",
    # backward-only ops
    "sigmoid_grad": lambda n, a: f"_sigmoid_backward({a[0]}, {a[1]})",
    "tanh_grad": lambda n, a: f"_tanh_backward({a[0]}, {a[1]})",
    "relu_grad": lambda n, a: f"torch.where({a[1]} > 0.0, {a[0]}, 0.0)",
    "softmax_grad": lambda n, a: f"{a[1]} * ({a[0]} - _sum_units({a[0]} * {a[1]}))",
    "normalize_units_grad": lambda n, a: f"_normalize_units_grad({', '.join(a)}, {n.attr('eps')!r})",
    "linear_t": _gemm_t,
    "sum_units": lambda n, a: f"_sum_units({a[0]})",
    "sum_batch": lambda n, a: f"{a[0]}.reshape(-1, {a[0]}.shape[-1]).sum(dim=0)",
    "concat": concat_op('{like}.new_zeros({like}.shape[:-1] + ({width},))', 'torch.cat([{parts}], dim=-1)'),
}


def fused_adds(graph: Graph, keep: set[str]) -> dict[str, tuple[str, list[str]]]:
    """Sums that absorb one of their projections: add node -> (projection node, the other terms).

    ``a @ w + rest`` becomes one GEMM accumulating into ``rest`` (the hoisted input
    projection plus the recurrent one, in one call per step). A projection qualifies when
    the sum is its only reader and nothing else (an output, the tape) needs its value.
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
                and all(graph[o].op != "const" for o in others)
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
    graph: Graph, keep: set[str] = frozenset(), only: set[str] | None = None, skip: set[str] = frozenset(), outs: dict | None = None
) -> list[str]:
    """:func:`render` with projections folded into the sums that read them (see :func:`fused_adds`).

    ``only`` / ``skip`` select which nodes to render (the fusion is decided on the whole graph);
    ``outs`` maps a concat node to the buffer it writes into (``torch.cat(..., out=...)``).
    """
    outs = outs or {}
    fused = fused_adds(graph, set(keep))
    absorbed = {lin for lin, _ in fused.values()}
    products = fused_products(graph, keep=set(keep) | absorbed, skip=set(fused))
    absorbed |= {mul for mul, _ in products.values()}
    blocks = block_slices(graph)
    lines = []
    for n in graph.nodes:
        if n.op in _LEAVES or n.name in absorbed or n.name in skip or (only is not None and n.name not in only):
            continue
        if n.op == "slice" and n.args[0] in blocks:
            source, names = n.args[0], blocks[n.args[0]]
            if n.name == next(x for x in names if x is not None):  # the first: one call for all blocks
                targets = ", ".join(var(x) if x else "_" for x in names)
                lines.append(f"{targets}, = {var(source)}.unflatten(-1, ({len(names)}, H)).unbind(-2)")
            continue
        if n.name in products:
            mul, other = products[n.name]
            a, b = graph[mul].args
            lines.append(f"{var(n.name)} = torch.addcmul({var(other)}, {var(a)}, {var(b)})")
            continue
        if n.name in fused:
            lin, others = fused[n.name]
            L = graph[lin]
            call = OPS[L.op](L, [var(a) for a in L.args])
            lines.append(f"{var(n.name)} = {call[:-1]}, acc={' + '.join(var(o) for o in others)})")
        else:
            code = OPS[n.op](n, [var(a) for a in n.args])
            if n.name in outs:
                assert n.op == "concat", n
                code = f"{code[:-1]}, out={outs[n.name]})"
            lines.append(f"{var(n.name)} = {code}")
    return lines


_LEAVES = ("input", "state", "hoisted", "param", "saved", "seed")


def cse(graph: Graph) -> Graph:
    """Common subexpressions merged: a node computing what an earlier one computes reads it instead.

    (The VJP of ``z * z`` contributes ``g * z`` twice; once is enough.) Leaves never merge.
    """
    seen: dict[tuple, str] = {}
    same: dict[str, str] = {}
    for n in graph.nodes:
        if n.op in _LEAVES or n.op == "const":
            continue
        args = tuple(same.get(a, a) for a in n.args)
        if n.op in ("add", "mul") and len(args) == 2:  # exactly commutative in IEEE arithmetic
            args = tuple(sorted(args))
        key = (n.op, args, n.attrs)
        if key in seen:
            same[n.name] = seen[key]
        else:
            seen[key] = n.name
    return rewrite(graph, same) if same else graph


def block_slices(graph: Graph) -> dict[str, list]:
    """Values cut into single blocks of units by two or more slices: source -> slice per block (or None).

    One view and one unbind replace the slices (one call instead of one per gate).
    """
    slices: dict[str, list] = {}
    for n in graph.nodes:
        if n.op == "slice":
            slices.setdefault(n.args[0], []).append(n)
    out = {}
    for source, nodes in slices.items():
        width = graph[source].width
        starts = [s.attr("start") for s in nodes]
        if (
            isinstance(width, int)
            and len(nodes) > 1
            and all(s.attr("stop") - s.attr("start") == 1 for s in nodes)
            and len(set(starts)) == len(starts)
        ):
            names = [None] * width
            for s in nodes:
                names[s.attr("start")] = s.name
            out[source] = names
    return out


TEMPLATE = '''\
"""$header

$description

State: $state_doc. Parameters use the canonical names of novolstm (one tensor per
projection, no gate order): $param_doc.

Contents:
    init_params      canonical parameters as NumPy arrays, the same numbers on every backend
    forward          the sequence, time-major, no autograd (returns a tape for backward)
    backward         the generated backward pass through time
    Sequence         torch.autograd.Function joining the two
    sequence         functional, differentiable: canonical params dict -> (outputs, final state)
    Cell             nn.Module with nn.LSTMCell conventions
    Layer            nn.Module with nn.LSTM conventions (layers, directions, dropout, packing)
    run_numpy        NumPy in, NumPy out (novolstm.run)

$fused_doc
"""

import zlib

import numpy as np
import torch
from torch import nn
from torch.autograd.function import once_differentiable
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

SPEC_NAME = $spec_name
SPEC_HASH = $spec_hash
STATE_NAMES = $state_names
PARAM_NAMES = $param_names
PARAM_TABLE = $param_table
#: Parameters that enter only as a projection's bias: what bias=False leaves out.
BIAS_NAMES = $bias_names


$init_source


# ---------------------------------------------------------------- kernels

_HALF = (torch.float16, torch.bfloat16)


def _mean_units(z):
    # LayerNorm statistics accumulate in float32 when the cell computes in half precision.
    if z.dtype in _HALF:
        return z.mean(dim=-1, keepdim=True, dtype=torch.float32).to(z.dtype)
    return z.mean(dim=-1, keepdim=True)


def _sum_units(z):
    if z.dtype in _HALF:
        return z.sum(dim=-1, keepdim=True, dtype=torch.float32).to(z.dtype)
    return z.sum(dim=-1, keepdim=True)


def _softmax(z):
    # torch.softmax subtracts the row maximum before exp, so it cannot overflow; over the
    # units axis; the sum accumulates in float32 when the cell computes in half precision.
    if z.dtype in _HALF:
        return torch.softmax(z, dim=-1, dtype=torch.float32).to(z.dtype)
    return torch.softmax(z, dim=-1)


def _normalize_units(z, eps):
    """LayerNorm without its affine part: (z - mean) / sqrt(population variance + eps).

    Two passes, as the spec pins it: the variance of the centred values. Not torch's
    LayerNorm kernel: it accumulates the variance Welford-style, which in float32 moved a
    chaotic 12-step case found by the reference tests 5x further from the float64
    reference (4.8e-5 against 9.5e-6), past the float32 tolerance.
    """
    c = z - _mean_units(z)
    return c * torch.rsqrt(_mean_units(c * c) + eps)


def _normalize_units_grad(g, y, z, eps):
    """The VJP of _normalize_units at z (output y): (g - mean g - y mean(g y)) / std.

    The statistics are recomputed from z (one kernel) rather than kept on the tape; in
    float32 and float64 the gradient is torch's own LayerNorm backward kernel (2 kernels
    where the primitives' VJPs took 15).
    """
    if z.dtype in _HALF:
        c = z - _mean_units(z)
        return torch.rsqrt(_mean_units(c * c) + eps) * (g - _mean_units(g) - y * _mean_units(g * y))
    _, mean, rstd = torch.native_layer_norm(z, z.shape[-1:], None, None, eps)
    return _LAYER_NORM_BACKWARD(g, z, z.shape[-1:], mean, rstd, None, None, [True, False, False])[0]


_LAYER_NORM_BACKWARD = torch.ops.aten.native_layer_norm_backward.default


# g * y * (1 - y) and g * (1 - y * y) in one kernel each (the ops autograd itself uses).
_sigmoid_backward = torch.ops.aten.sigmoid_backward.default
_tanh_backward = torch.ops.aten.tanh_backward.default


def _gemm_blas(a, w, wt, b=None, acc=None):
    """a @ w (+ b) (+ acc) over every leading axis of a: one GEMM. w is (K, N); wt is not read."""
    lead = a.shape[:-1]
    if a.dim() != 2:
        a = a.reshape(-1, a.shape[-1])
        acc = None if acc is None else acc.reshape(-1, acc.shape[-1])
    if acc is not None:
        out = torch.addmm(acc, a, w)
        if b is not None:
            out = out + b
    elif b is not None:
        out = torch.addmm(b, a, w)
    else:
        out = torch.mm(a, w)
    return out if len(lead) == 1 else out.reshape(lead + (w.shape[-1],))


def _no_pack(w, rows):
    return w


def _pack_onednn(w, rows):
    # Reordered once per call into oneDNN's blocked layout, then read by every timestep.
    return _ONEDNN_PACK(w, rows) if _ONEDNN_PACK is not None else w


def _probe_onednn():
    # oneDNN's inner product: the GEMM nn.LSTM itself uses on CPU, measured 1.4x to 2.4x
    # faster than the BLAS torch.mm calls on some CPUs. A private op: used only when it
    # exists and answers a probe exactly, else every GEMM goes through torch.mm / addmm.
    try:
        if not torch.backends.mkldnn.is_available():
            return None
        op = torch.ops.mkldnn._linear_pointwise
        a = torch.tensor([[1.0, 2.0]])
        out = op(a, torch.tensor([[3.0, 4.0], [5.0, 6.0], [7.0, 8.0]]), torch.tensor([1.0, 0.0, 0.5]), "none", [], "")
        return op if torch.equal(out, torch.tensor([[12.0, 17.0, 23.5]])) else None
    except (AttributeError, RuntimeError):
        return None


_ONEDNN_LINEAR = _probe_onednn()
_ONEDNN_PACK = None
if _ONEDNN_LINEAR is not None:
    try:
        _w = torch.tensor([[3.0, 4.0], [5.0, 6.0], [7.0, 8.0]])
        _a = torch.tensor([[1.0, 2.0]])
        if torch.equal(_ONEDNN_LINEAR(_a, torch.ops.mkldnn._reorder_linear_weight(_w, 1), None, "none", [], ""), _a @ _w.t()):
            _ONEDNN_PACK = torch.ops.mkldnn._reorder_linear_weight
    except (AttributeError, RuntimeError):
        pass


def _gemm_onednn(a, w, wt, b=None, acc=None):
    """As _gemm_blas, through oneDNN; wt (N, K) is w's contiguous transpose."""
    lead = a.shape[:-1]
    if a.dim() != 2:
        a = a.reshape(-1, a.shape[-1])
    out = _ONEDNN_LINEAR(a, wt, b, "none", [], "")
    if acc is not None:
        out = out.add_(acc if acc.dim() == 2 else acc.reshape(out.shape))
    return out if len(lead) == 1 else out.reshape(lead + (wt.shape[0],))


def gemm_for(x):
    """(gemm, pack, wgrad) for tensors like x: oneDNN for float32 on CPU in eager mode, else BLAS.

    pack(w, rows) prepares a weight that many GEMMs of ``rows`` rows will read (the time
    loop's). Compiled, exported and traced graphs always take the plain torch.mm / addmm path.
    """
    if (
        _ONEDNN_LINEAR is not None
        and x.dtype == torch.float32
        and x.device.type == "cpu"
        and not torch.compiler.is_compiling()
        and not torch.jit.is_tracing()
    ):
        return _gemm_onednn, _pack_onednn, _weight_grads_onednn
    return _gemm_blas, _no_pack, _weight_grads_blas


def _weight_grad_operand(g, operands, bias):
    """Rows over every leading axis (time and batch); a column of ones for the bias gradient."""
    g = g.reshape(-1, g.shape[-1])
    cols = [a.reshape(-1, a.shape[-1]) for a in operands]
    if bias:
        cols.append(g.new_ones((g.shape[0], 1)))
    return g, cols, (cols[0] if len(cols) == 1 else torch.cat(cols, dim=1))


def _weight_grads_blas(g, *operands, bias=False):
    """[a^T g for each operand] (+ g's column sums if bias): ONE GEMM over all timesteps.

    Projections that receive the same gradient (an LSTM's input and recurrent ones) share it.
    """
    g, cols, a = _weight_grad_operand(g, operands, bias)
    out = torch.mm(a.t(), g)
    return _split_rows(out, cols, bias)


def _weight_grads_onednn(g, *operands, bias=False):
    g = g.reshape(-1, g.shape[-1])
    cols = [a.reshape(-1, a.shape[-1]) for a in operands] + ([g.new_ones((g.shape[0], 1))] if bias else [])
    # oneDNN reads both operands with time and batch along the contiguous axis: the operands
    # are transposed while they are joined (one copy), the gradient once.
    a_t = torch.cat([c.t() for c in cols], dim=0) if len(cols) > 1 else cols[0].t().contiguous()
    out = _ONEDNN_LINEAR(a_t, g.t().contiguous(), None, "none", [], "")
    return _split_rows(out, cols, bias)


def _split_rows(out, cols, bias):
    parts = list(out.split([c.shape[1] for c in cols], dim=0))
    if bias:
        parts[-1] = parts[-1][0]
    return parts


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
    H = params[$units_param].shape[-1]
    T, B = x.shape[0], x.shape[1]
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
    for t in (range(T - 1, -1, -1) if reverse else range(T)):
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
        tape = {$tape_dict}
        tape.update(kept, x=v_$input, ms=ms, reverse=reverse)
    return torch.stack(ys), ($final_state), tape


def backward(params, tape, g_outputs=None, g_state=None, need_input=True):
    """Backpropagation through time for a forward run made with keep_tape=True.

    Args:
        g_outputs: gradient with respect to the outputs (time, batch, units), or None.
        g_state: gradients with respect to the final state (tuple; None entries allowed), or None.
        need_input: compute the input gradient (skipped, with its GEMM, when False).

    Returns:
        (g_x (time, batch, input) or None, g_initial_state tuple, g_params dict of canonical names)
    """
    H = params[$units_param].shape[-1]
    v_$input, ms, reverse = tape["x"], tape["ms"], tape["reverse"]
    T, B = v_$input.shape[0], v_$input.shape[1]
    gemm, pack, wgrad = gemm_for(v_$input)
    fused = fuse(params)
    $load_fused_backward
    $load_params
    zeros = v_$input.new_zeros((B, H))
    g_ys = None if g_outputs is None else g_outputs.unbind(0)
    g_state = (None,) * len(STATE_NAMES) if g_state is None else g_state
    $unpack_g_state = (zeros if g is None else g for g in g_state)
    $unpack_tape
    $init_grads
    for t in (range(T) if reverse else range(T - 1, -1, -1)):
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
    return $g_input, ($g_initial_state), grads


class Sequence(torch.autograd.Function):
    """The differentiable sequence op: forward above, and the generated backward.

    apply(x, mask, reverse, grad_enabled, *state, *params): x (time, batch, input), mask
    bool (time, batch, 1) or None, grad_enabled torch.is_grad_enabled() at the call (inside
    forward it is always off), state tensors in STATE_NAMES order, parameters in
    PARAM_NAMES order. Returns (outputs, *final_state).
    """

    @staticmethod
    def forward(ctx, x, mask, reverse, grad_enabled, *tensors):
        n = len(STATE_NAMES)
        params = dict(zip(PARAM_NAMES, tensors[n:]))
        keep = grad_enabled and any(ctx.needs_input_grad)  # under no_grad, no tape
        ys, final, tape = forward(params, x, tensors[:n], mask, keep_tape=keep, reverse=reverse)
        if keep:
            ctx.save_for_backward(*tensors[n:])
            ctx.tape = tape
        ctx.set_materialize_grads(False)  # unused outputs send None, not zeros to multiply
        return (ys,) + tuple(final)

    @staticmethod
    @once_differentiable
    def backward(ctx, g_ys, *g_final):
        params = dict(zip(PARAM_NAMES, ctx.saved_tensors))
        n = len(STATE_NAMES)
        need = ctx.needs_input_grad
        g_x, g_state, g_params = backward(params, ctx.tape, g_ys, g_final, need_input=need[0])
        g_state = tuple(g if need[4 + k] else None for k, g in enumerate(g_state))
        g_params = tuple(g_params[p] if need[4 + n + k] else None for k, p in enumerate(PARAM_NAMES))
        return (g_x, None, None, None) + g_state + g_params


def sequence(params, x, state=None, mask=None, reverse=False):
    """Differentiable run over a batch-first sequence with canonical parameters.

    Args:
        params: canonical name -> tensor (all of PARAM_NAMES, one dtype and device).
        x: (batch, time, input).
        state: tuple of (batch, units) tensors in STATE_NAMES order, zeros if None.
        mask: bool (batch, time), True on real steps, or None.
        reverse: run from the last timestep to the first.

    Returns:
        (outputs (batch, time, units), final state tuple)
    """
    tensors = [params[p] for p in PARAM_NAMES]
    ref = tensors[0]
    _check_tensor("x", x, 3, ref, expected=f"(batch, time, {_input_size(params)})", last=_input_size(params))
    B, T = x.shape[0], x.shape[1]
    state = _initial_state(state, B, ref)
    mask = _check_mask(mask, B, T, ref.device)
    outs = Sequence.apply(x.transpose(0, 1), mask, reverse, torch.is_grad_enabled(), *state, *tensors)
    return outs[0].transpose(0, 1), tuple(outs[1:])


# ---------------------------------------------------------------- checks


def _input_size(params):
    return params[$input_param].shape[0]


def _describe(t):
    return f"shape {tuple(t.shape)}, dtype {t.dtype}, device {t.device}"


def _check_tensor(what, t, ndim, ref, expected, last=None):
    """Shape, dtype and device of an input against the parameters', before any arithmetic."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{what}: expected a torch.Tensor of shape {expected}, got {type(t).__name__}")
    if t.dim() != ndim or (last is not None and t.shape[-1] != last) or 0 in t.shape:
        raise ValueError(f"{what}: expected shape {expected}, got {tuple(t.shape)}")
    if t.dtype != ref.dtype:
        raise TypeError(f"{what}: expected dtype {ref.dtype} (the parameters' dtype), got {t.dtype}; convert with .to()")
    if t.device != ref.device:
        raise ValueError(f"{what}: expected device {ref.device} (the parameters' device), got {t.device}")


def _initial_state(state, B, ref):
    H = ref.shape[-1]
    if state is None:
        return tuple(ref.new_zeros((B, H)) for _ in STATE_NAMES)
    state = tuple(state) if isinstance(state, (tuple, list)) else (state,)
    if len(state) != len(STATE_NAMES):
        raise ValueError(f"state: expected {len(STATE_NAMES)} tensors {STATE_NAMES}, got {len(state)}")
    for name, s in zip(STATE_NAMES, state):
        _check_tensor(f"state {name}", s, 2, ref, expected=f"({B}, {H})")
        if tuple(s.shape) != (B, H):
            raise ValueError(f"state {name}: expected shape ({B}, {H}), got {tuple(s.shape)}")
    return state


def _check_mask(mask, B, T, device):
    """bool (batch, time) -> (time, batch, 1), or None."""
    if mask is None:
        return None
    if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool or tuple(mask.shape) != (B, T):
        got = f"{tuple(mask.shape)} {mask.dtype}" if isinstance(mask, torch.Tensor) else type(mask).__name__
        raise ValueError(f"mask: expected a bool tensor of shape (batch, time) = ({B}, {T}), got {got}")
    if mask.device != device:
        raise ValueError(f"mask: expected device {device}, got {mask.device}")
    return mask.t().unsqueeze(-1)


def _mask_from_lengths(lengths, B, T, device):
    lengths = torch.as_tensor(lengths)
    if lengths.shape != (B,) or lengths.dtype.is_floating_point or lengths.dtype == torch.bool:
        raise ValueError(f"lengths: expected integers of shape ({B},), got {tuple(lengths.shape)} {lengths.dtype}")
    # A value check reads the tensor: eager only, so that compiled graphs do not break here.
    if not torch.compiler.is_compiling() and (bool((lengths < 0).any()) or bool((lengths > T).any())):
        raise ValueError(f"lengths: expected values in [0, {T}], got {lengths.tolist()}")
    return torch.arange(T, device=device)[None, :] < lengths.to(device)[:, None]


# ---------------------------------------------------------------- torch's fused LSTM kernel

$fused_source


# ---------------------------------------------------------------- modules


def _to_numpy(t):
    t = t.detach().cpu()
    if t.dtype == torch.bfloat16:  # NumPy has no bfloat16; float32 holds every bfloat16 exactly
        t = t.float()
    return t.numpy().copy()


class Cell(nn.Module):
    """$title, with torch.nn.LSTMCell's conventions.

    forward(x, state=None) -> the new state: x is (batch, input) or (input,); state
    is $state_call (zeros if None). Parameters are registered under their canonical
    names ($param_doc), so state_dict keys are those names.

    Args:
        input_size: features of x.
        units: the state size (also available as hidden_size).
        bias: False leaves out the projection biases ($bias_doc), fixed at zero.
        device, dtype: as for any nn.Module.
        seed: the seed of the canonical initializers (see reset_parameters).

    Example:
        >>> cell = Cell(3, 4)
        >>> new_state = cell(torch.ones(2, 3))
        >>> sorted(cell.state_dict()) == sorted(n for n in PARAM_NAMES)
        True
    """

    spec_name = SPEC_NAME
    spec_hash = SPEC_HASH
    state_names = STATE_NAMES

    def __init__(self, input_size, units, bias=True, device=None, dtype=None, seed=0):
        super().__init__()
        if int(input_size) < 1 or int(units) < 1:
            raise ValueError(f"input_size and units must be positive, got {input_size} and {units}")
        self.input_size, self.units, self.bias = int(input_size), int(units), bool(bias)
        factory = {"device": device, "dtype": dtype}
        for name, (dims, _, _) in PARAM_TABLE.items():
            shape = tuple({"input": self.input_size, "units": self.units}[d] for d in dims)
            if name in BIAS_NAMES and not self.bias:
                self.register_buffer(name, torch.zeros(shape, **factory), persistent=False)
            else:
                self.register_parameter(name, nn.Parameter(torch.empty(shape, **factory)))
        self.reset_parameters(seed)

    @property
    def hidden_size(self):
        return self.units

    def extra_repr(self):
        return f"{self.input_size}, {self.units}" + ("" if self.bias else ", bias=False") + f", spec={SPEC_NAME!r}"

    def reset_parameters(self, seed=0):
        """Draw every parameter from the spec's initializer: the same numbers as novolstm.init_params."""
        values = init_params(self.input_size, self.units, seed)
        with torch.no_grad():
            for name in PARAM_NAMES:
                if name in BIAS_NAMES and not self.bias:
                    continue
                target = getattr(self, name)
                target.copy_(torch.from_numpy(values[name]).to(target.dtype))

    def params(self):
        """Canonical name -> tensor (the parameters themselves, not copies)."""
        return {name: getattr(self, name) for name in PARAM_NAMES}

    def load_canonical(self, params):
        """Copy canonical parameters (NumPy arrays or tensors) into the cell; shapes must match exactly."""
        expected = {name: tuple(getattr(self, name).shape) for name in PARAM_NAMES}
        names = set(expected) - (set() if self.bias else set(BIAS_NAMES))
        extra, missing = sorted(set(params) - set(expected)), sorted(names - set(params))
        if extra or missing:
            raise ValueError(f"params for {SPEC_NAME!r}: missing {missing}, unexpected {extra}")
        with torch.no_grad():
            for name in PARAM_NAMES:
                if name not in params:
                    continue
                value = torch.as_tensor(np.asarray(params[name]) if not isinstance(params[name], torch.Tensor) else params[name])
                if tuple(value.shape) != expected[name]:
                    raise ValueError(f"params[{name!r}]: expected shape {expected[name]}, got {tuple(value.shape)}")
                if name in BIAS_NAMES and not self.bias and bool(value.any()):
                    raise ValueError(f"params[{name!r}]: this cell has bias=False; a nonzero bias cannot be dropped")
                getattr(self, name).copy_(value)
        return self

    def export_canonical(self):
        """Canonical name -> NumPy array, copies, in the parameters' dtype (bfloat16 as float32, exactly)."""
        return {name: _to_numpy(getattr(self, name)) for name in PARAM_NAMES}

    def forward(self, x, state=None):
        params = self.params()
        ref = params[PARAM_NAMES[0]]
        unbatched = isinstance(x, torch.Tensor) and x.dim() == 1
        if unbatched:
            x = x[None]
            if state is not None:
                state = tuple(s[None] for s in ((state,) if isinstance(state, torch.Tensor) else state))
        _check_tensor("x", x, 2, ref, expected=f"(batch, {self.input_size}) or ({self.input_size},)", last=self.input_size)
        state = _initial_state(state, x.shape[0], ref)
        outs = Sequence.apply(x[None], None, False, torch.is_grad_enabled(), *state, *params.values())
        new = tuple(s[0] for s in outs[1:]) if unbatched else tuple(outs[1:])
        return new if len(new) > 1 else new[0]


class Layer(nn.Module):
    """$title over sequences, with torch.nn.LSTM's conventions.

    forward(input, hx=None, *, lengths=None, mask=None) -> (output, final_state)

    input: (time, batch, input_size), or (batch, time, input_size) with batch_first,
    or (time, input_size) unbatched, or a PackedSequence. hx and final_state: $layer_state
    with each tensor (num_layers * num_directions, batch, units), row layer *
    num_directions + direction (zeros if hx is None). output: (time, batch,
    num_directions * units) (batch first with batch_first), a PackedSequence for a
    PackedSequence input.

    Masking (one rule for every backend): mask is bool (batch, time) whatever the
    layout, True on real steps; lengths (batch,) means mask[b, t] = t < lengths[b]. On a
    masked step the state carries through unchanged and the output is exactly zero. The
    reverse direction walks the time axis backwards under the same rule, so for
    right-padded rows it starts at each row's last real step, as nn.LSTM does with a
    PackedSequence.

    Parameters: cells["l<k>"] (and cells["l<k>_reverse"] when bidirectional) are Cell
    modules, so state_dict keys read cells.l0.W_i, cells.l0_reverse.W_i, ...
    Cell k in that order draws its initial weights with seed + k.
    """

    spec_name = SPEC_NAME
    spec_hash = SPEC_HASH
    state_names = STATE_NAMES

    def __init__(
        self, input_size, units, num_layers=1, bias=True, batch_first=False, dropout=0.0,
        bidirectional=False, device=None, dtype=None, seed=0, fused=None,
    ):
        super().__init__()
        if fused not in (None, True, False):
            raise ValueError(f"fused: expected None (auto), True or False, got {fused!r}")
        if fused and not FUSED_KERNEL:
            raise ValueError(f"fused=True: {_NOT_STANDARD}")
        self.fused = fused
        self._flat_cache = None  # (parameter versions, flat weights) for inference; see _fused_forward
        if int(num_layers) < 1:
            raise ValueError(f"num_layers must be at least 1, got {num_layers}")
        if not 0.0 <= float(dropout) <= 1.0:
            raise ValueError(f"dropout must lie in [0, 1], got {dropout}")
        self.input_size, self.units, self.num_layers = int(input_size), int(units), int(num_layers)
        self.bias, self.batch_first, self.dropout = bool(bias), bool(batch_first), float(dropout)
        self.bidirectional = bool(bidirectional)
        self.num_directions = 2 if self.bidirectional else 1
        cells = {}
        for layer in range(self.num_layers):
            size = self.input_size if layer == 0 else self.units * self.num_directions
            for suffix in ("", "_reverse")[: self.num_directions]:
                cells[f"l{layer}{suffix}"] = Cell(size, self.units, bias, device, dtype, seed=seed + len(cells))
        self.cells = nn.ModuleDict(cells)

    @property
    def hidden_size(self):
        return self.units

    def extra_repr(self):
        extra = [f"{self.input_size}, {self.units}", f"spec={SPEC_NAME!r}"]
        for key, default in (("num_layers", 1), ("bias", True), ("batch_first", False), ("dropout", 0.0), ("bidirectional", False), ("fused", None)):
            if getattr(self, key) != default:
                extra.append(f"{key}={getattr(self, key)}")
        return ", ".join(extra)

    def reset_parameters(self, seed=0):
        for k, cell in enumerate(self.cells.values()):
            cell.reset_parameters(seed + k)

    def load_canonical(self, params):
        """params: cell key ("l0", "l0_reverse", ...) -> canonical dict, every cell given (the layout of
        novolstm.save / novolstm.load); a single-cell layer also takes one flat canonical dict."""
        if len(self.cells) == 1 and params and set(params) <= set(PARAM_NAMES):
            params = {"l0": params}
        if set(params) != set(self.cells):
            raise ValueError(f"params: expected cell keys {sorted(self.cells)}, got {sorted(params)}")
        for key, cell in self.cells.items():
            cell.load_canonical(params[key])
        return self

    def export_canonical(self):
        """Cell key -> canonical dict of NumPy arrays."""
        return {key: cell.export_canonical() for key, cell in self.cells.items()}

    def forward(self, input, hx=None, *, lengths=None, mask=None):
        packed = isinstance(input, PackedSequence)
        if packed:
            if lengths is not None or mask is not None:
                raise ValueError("a PackedSequence carries its own lengths; do not pass lengths or mask")
            x, lengths = pad_packed_sequence(input, batch_first=False)
            batch_first = False
        else:
            x, batch_first = input, self.batch_first
        first = self.cells["l0"]
        ref = getattr(first, PARAM_NAMES[0])
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"input: expected a torch.Tensor or PackedSequence, got {type(x).__name__}")
        layout = "(batch, time, input_size)" if batch_first else "(time, batch, input_size)"
        expected = f"{layout} or (time, input_size) with input_size={self.input_size}"
        _check_tensor("input", x, x.dim() if x.dim() in (2, 3) else 3, ref, expected=expected, last=self.input_size)
        unbatched = x.dim() == 2
        if unbatched:
            x = x.unsqueeze(1)
        elif batch_first:
            x = x.transpose(0, 1)
        T, B = x.shape[0], x.shape[1]
        if mask is not None and lengths is not None:
            raise ValueError("give mask or lengths, not both")
        if lengths is not None:
            mask = _mask_from_lengths(lengths, B, T, x.device)
        elif mask is not None and unbatched and isinstance(mask, torch.Tensor) and mask.dim() == 1:
            mask = mask[None]
        mask = _check_mask(mask, B, T, x.device)
        states = self._initial_states(hx, B, unbatched, ref)

        why = "fused=False" if self.fused is False else _fused_unavailable(x, mask)
        if why is None:
            x, final = self._fused_forward(x, states)
        elif self.fused:
            raise RuntimeError(f"fused=True, but the fused kernel cannot run this call: {why}")
        else:
            x, final = self._loop_forward(x, states, mask)

        if packed:
            output = _repack(x, lengths, input)
        elif unbatched:
            output = x[:, 0]
            final = tuple(s[:, 0] for s in final)
        else:
            output = x.transpose(0, 1) if batch_first else x
        return output, (final if len(final) > 1 else final[0])

    def _fused_forward(self, x, states):
        """torch's own fused LSTM kernel (what nn.LSTM runs), time-major, with torch autograd.

        The flat weights are concatenated from the canonical parameters inside forward,
        so gradients reach W_i, U_i, b_i, ... themselves. Without autograd (inference) they
        are kept between calls until a parameter changes: every in-place update (an
        optimizer step, load_state_dict, load_canonical) moves its version counter, and
        .to() or a new Parameter moves its storage.
        """
        cells = [self.cells[f"l{layer}{suffix}"].params() for layer in range(self.num_layers) for suffix in ("", "_reverse")[: self.num_directions]]
        tensors = [p for params in cells for p in params.values()]
        key = None
        if not torch.compiler.is_compiling() and not (torch.is_grad_enabled() and any(p.requires_grad for p in tensors)):
            key = tuple((p.data_ptr(), p._version, p.dtype, p.device) for p in tensors)
        if key is not None and self._flat_cache is not None and self._flat_cache[0] == key:
            flat = self._flat_cache[1]
        else:
            flat = [w for params in cells for w in _flat_weights(params, self.bias)]
            self._flat_cache = None if key is None else (key, flat)
        out, *final = torch._VF.lstm(
            x, states, flat, self.bias, self.num_layers, self.dropout, self.training, self.bidirectional, False
        )
        return out, tuple(final)

    def _loop_forward(self, x, states, mask):
        """The generated loop and backward pass: every cell, every call."""
        finals = []
        for layer in range(self.num_layers):
            if layer > 0 and self.dropout > 0.0 and self.training:
                x = nn.functional.dropout(x, self.dropout, training=True)
            outs = []
            for d, suffix in enumerate(("", "_reverse")[: self.num_directions]):
                cell = self.cells[f"l{layer}{suffix}"]
                row = layer * self.num_directions + d
                result = Sequence.apply(x, mask, d == 1, torch.is_grad_enabled(), *(s[row] for s in states), *cell.params().values())
                outs.append(result[0])
                finals.append(result[1:])
            x = outs[0] if len(outs) == 1 else torch.cat(outs, dim=-1)
        return x, tuple(torch.stack([f[k] for f in finals]) for k in range(len(STATE_NAMES)))

    def _initial_states(self, hx, B, unbatched, ref):
        rows = self.num_layers * self.num_directions
        if hx is None:
            return tuple(ref.new_zeros((rows, B, self.units)) for _ in STATE_NAMES)
        hx = (hx,) if isinstance(hx, torch.Tensor) else tuple(hx)
        if len(hx) != len(STATE_NAMES):
            raise ValueError(f"hx: expected {len(STATE_NAMES)} tensors {STATE_NAMES}, got {len(hx)}")
        shape = f"({rows}, {self.units})" if unbatched else f"({rows}, {B}, {self.units})"
        out = []
        for name, s in zip(STATE_NAMES, hx):
            _check_tensor(f"hx {name}", s, 2 if unbatched else 3, ref, expected=shape)
            if unbatched:
                s = s.unsqueeze(1)
            if tuple(s.shape) != (rows, B, self.units):
                raise ValueError(f"hx {name}: expected shape {shape} (num_layers * num_directions, batch, units), got {tuple(s.shape) if not unbatched else tuple(s.shape[::2])}")
            out.append(s)
        return tuple(out)


def _repack(x, lengths, like):
    """Padded (time, batch, features) in the original batch order -> a PackedSequence shaped like ``like``."""
    order = like.sorted_indices
    if order is not None:
        x, lengths = x.index_select(1, order), lengths.index_select(0, order.to(lengths.device))
    data = pack_padded_sequence(x, lengths.cpu(), enforce_sorted=True).data
    return PackedSequence(data, like.batch_sizes, like.sorted_indices, like.unsorted_indices)


def _tensors_from_numpy(params, x, state, mask):
    x = torch.from_numpy(np.ascontiguousarray(x))
    params = {name: torch.from_numpy(np.ascontiguousarray(params[name])).to(x.dtype) for name in PARAM_NAMES}
    state = tuple(torch.zeros(x.shape[0], params[$units_param].shape[-1], dtype=x.dtype) for _ in STATE_NAMES) if state is None else tuple(torch.from_numpy(np.ascontiguousarray(s)) for s in state)
    mask = None if mask is None else torch.from_numpy(np.asarray(mask)).t().unsqueeze(-1)
    return params, x.transpose(0, 1), state, mask


def run_numpy(params, x, state=None, mask=None):
    """The backend-neutral entry of novolstm.run: NumPy arrays in, NumPy arrays out."""
    with torch.no_grad():
        ys, final, _ = forward(*_tensors_from_numpy(params, x, state, mask))
    return ys.transpose(0, 1).numpy(), tuple(s.numpy() for s in final)


def vjp_numpy(params, x, state=None, mask=None):
    """Backend-neutral gradients through the generated backward pass: ``(outputs, final_state, vjp)``
    with ``vjp(g_outputs, g_state) -> (g_x, g_state0, g_params)``, NumPy arrays in and out."""
    params, x, state, mask = _tensors_from_numpy(params, x, state, mask)
    with torch.no_grad():
        ys, final, tape = forward(params, x, state, mask, keep_tape=True)

    def vjp(g_outputs=None, g_state=None):
        as_tensor = lambda a: torch.from_numpy(np.ascontiguousarray(a)).to(x.dtype)  # noqa: E731
        with torch.no_grad():
            g_ys = None if g_outputs is None else as_tensor(g_outputs).transpose(0, 1)
            g_final = None if g_state is None else tuple(None if g is None else as_tensor(g) for g in g_state)
            g_x, g_state0, g_params = backward(params, tape, g_ys, g_final)
        return g_x.transpose(0, 1).numpy(), tuple(g.numpy() for g in g_state0), {k: v.numpy() for k, v in g_params.items()}

    return ys.transpose(0, 1).numpy(), tuple(s.numpy() for s in final), vjp
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

FUSED_DOC_OTHER = """\
Layer always runs the generated loop: this spec is not the standard LSTM, so torch's
fused LSTM kernel does not compute it (Layer(..., fused=True) raises)."""

FUSED_SOURCE_STANDARD = '''\
#: This spec computes exactly the standard LSTM: Layer may run torch's fused kernel.
FUSED_KERNEL = True
_NOT_STANDARD = None
# float16: oneDNN has no float16 LSTM on CPU; the generated loop runs it everywhere.
_FUSED_DTYPES = (torch.float32, torch.float64, torch.bfloat16)


def _fused_unavailable(x, mask):
    """None when torch's fused LSTM kernel can run this call, else why it cannot."""
    if mask is not None:
        return "masks, lengths and PackedSequence inputs run the generated loop"
    if x.dtype not in _FUSED_DTYPES:
        return f"dtype {x.dtype}: the fused path runs float32, float64 and bfloat16"
    if torch.jit.is_tracing() or torch.onnx.is_in_onnx_export():
        return "traced and exported graphs keep the generated loop"
    return None


def _flat_weights(params, bias):
    """One cell's weights in nn.LSTM's flat layout, concatenated from the canonical parameters.

    weight_ih (4 units, input) and weight_hh (4 units, units), gates in torch's order
    i, f, g, o; with bias, bias_ih holds the canonical biases and bias_hh is zero (this
    spec has one bias per gate). Built inside forward, so autograd reaches the canonical
    parameters.
    """
    gates = ("i", "f", "g", "o")
    flat = [
        torch.cat([params[f"W_{k}"].t() for k in gates]),
        torch.cat([params[f"U_{k}"].t() for k in gates]),
    ]
    if bias:
        b = torch.cat([params[f"b_{k}"] for k in gates])
        flat += [b, torch.zeros_like(b)]
    return flat'''

FUSED_SOURCE_OTHER = '''\
#: This spec is not the standard LSTM: Layer always runs the generated loop.
FUSED_KERNEL = False
_NOT_STANDARD = f"spec {SPEC_NAME!r} does not compute the standard LSTM, so torch's fused LSTM kernel cannot run it"


def _fused_unavailable(x, mask):
    return _NOT_STANDARD


def _flat_weights(params, bias):
    raise RuntimeError(_NOT_STANDARD)'''


def generate(plan: LoopPlan) -> str:
    spec, program = plan.spec, plan.program
    step, back = program.step, cse(plan.step_backward)
    pro_back = cse(plan.prologue_backward)
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
        f"{lists[name]} = zeros.new_empty((T, B, {units_offset(back[name].width)}))" if name in buffers else f"{lists[name]} = [None] * T"
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
    for g, members in groups.items():
        biased = [L for L, _ in members if L.has_bias]
        targets = [f"gw_{L.name}" for L, _ in members] + ([f"gb_{biased[0].name}"] if biased else [])
        operands = ", ".join(op for _, op in members)
        weight_grads.append(f"{', '.join(targets)}, = wgrad({g}, {operands}{', bias=True' if biased else ''})")
        weight_grads += [f"gb_{L.name} = gb_{biased[0].name}" for L in biased[1:]]

    # The prologue backward, split: what only the input gradient needs runs under need_input.
    g_input_name = pro_back.outputs[f"grad:{spec.input}"]
    other_roots = [n for r, n in pro_back.outputs.items() if r != f"grad:{spec.input}"]
    only_input = live_names(pro_back.nodes, [g_input_name]) - live_names(pro_back.nodes, other_roots)
    body = render_fused(pro_back, skip=only_input)
    input_part = render_fused(pro_back, only=only_input)

    pro_grads = []
    for p in plan.vector_params:
        if f"grad:{p}" in pro_back.outputs:
            pro_grads.append(f"gp_{p} = gp_{p} + {var(pro_back.outputs[f'grad:{p}'])}")

    param_grads = [f'"{p}": {" + ".join(pieces)},' for p, pieces in plan.param_grad_pieces().items()]
    input_param = next(p.name for p in spec.params if p.shape[0] == "input")
    units_param = spec.params[0].name
    table = {p.name: (p.shape, p.init.name, dict(p.init.args)) for p in spec.params}
    bias_names = tuple(dict.fromkeys(b for L in plan.linears for b in L.biases if b))
    state_vars = ", ".join(var(s) for s in states) + ","
    next_vars = [var(step.outputs[f"state:{s}"]) for s in states]
    tape = [n for n in plan.step_tape]
    keep_step = set(tape)

    def load_fused(packed):
        # The step's weights are read by every timestep: packed once per call (forward reads
        # wt_, the backward pass w_; pack is the identity unless a GEMM library wants it).
        lines = []
        for L in plan.linears:
            for k in (f"w_{L.name}", f"wt_{L.name}") + ((f"b_{L.name}",) if L.has_bias else ()):
                pack = L.in_step and k.startswith(packed)
                lines.append(f'{k} = pack(fused["{k}"], B)' if pack else f'{k} = fused["{k}"]')
        return lines

    if len(states) > 1:
        state_call, layer_state = f"the tuple ({', '.join(states)})", f"the tuple ({', '.join(states)})"
    else:
        state_call, layer_state = f"the tensor {states[0]}", f"the tensor {states[0]}"

    return fill(
        TEMPLATE,
        header=plan.header(NAME),
        fused_doc=FUSED_DOC_STANDARD if plan.standard_lstm else FUSED_DOC_OTHER,
        fused_source=FUSED_SOURCE_STANDARD if plan.standard_lstm else FUSED_SOURCE_OTHER,
        description=docstring_text(spec.description),
        title=f"The {spec.name!r} cell",
        state_doc=", ".join(states),
        param_doc=", ".join(spec.param_names),
        bias_doc=", ".join(bias_names) or "none",
        state_call=state_call,
        layer_state=layer_state,
        spec_name=repr(spec.name),
        spec_hash=repr(spec.hash),
        state_names=repr(states),
        param_names=repr(tuple(spec.param_names)),
        param_table=repr(table),
        bias_names=repr(bias_names),
        init_source=init_source(),
        fusion=plan.fusion_entries(lambda xs: f"torch.cat([{', '.join(xs)}], dim=-1)", lambda ref: f"{ref}.new_zeros({ref}.shape[-1])"),
        input_param=repr(input_param),
        units_param=repr(units_param),
        load_fused=load_fused("wt_"),
        load_fused_backward=load_fused("w_"),
        load_params=[f'{var(p)} = params["{p}"]' for p in plan.vector_params],
        input=spec.input,
        prologue=render_fused(program.prologue, keep=set(plan.prologue_tape) | set(program.hoisted)),
        keep_hoisted=[f"seq_{h} = {var(h)}.unbind(0)" for h in program.hoisted],
        unpack_state=state_vars,
        init_tape=[f"tp_{n} = [None] * T" for n in tape],
        load_hoisted=[f"{var(h)} = seq_{h}[t]" for h in program.hoisted],
        step=render_fused(step, keep=keep_step),
        tape_store=[f"tp_{n}[t] = {var(n)}" for n in tape] or ["pass"],
        advance=f"{state_vars} = {', '.join(next_vars)},",
        advance_masked=f"{state_vars} = {', '.join(f'torch.where(m, {nv}, {var(s)})' for s, nv in zip(states, next_vars))},",
        output=var(step.outputs["output"]),
        tape_dict=", ".join(f"{n!r}: tp_{n}" for n in tape),
        prologue_tape=", ".join(f"'prologue:{n}': {var(n)}" for n in plan.prologue_tape),
        final_state=state_vars,
        unpack_g_state=", ".join(f"g_{s}" for s in states) + ",",
        unpack_tape=[f"tp_{n} = tape[{n!r}]" for n in tape],
        init_grads=init_grads,
        load_tape=[f"{var(n)} = tp_{n}[t]" for n in tape],
        load_seeds=[f"{var(name)} = {seed_source(role)}" for role, name in seeds.items()],
        mask_seeds=[f"{var(name)} = torch.where(m, {var(name)}, 0.0)" for name in seeds.values()],
        step_backward=render_fused(back, skip=skip_step, outs=buffers),
        store_grads=store,
        carry=carry,
        stack_grads=stack_grads,
        weight_grads=weight_grads,
        load_prologue_tape=[f"{var(n)} = tape['prologue:{n}']" for n in plan.prologue_tape],
        prologue_seeds=[f"{var(name)} = gseq_{role.split(':', 1)[1]}" for role, name in pro_seeds.items()],
        prologue_backward=body,
        prologue_input=input_part or ["pass"],
        no_input=var(g_input_name),
        prologue_grads=pro_grads,
        param_grads=param_grads,
        g_input=var(g_input_name),
        g_initial_state=", ".join(f"g_{s}" for s in states) + ",",
    )
