"""The PyTorch runtime: what every generated torch module holds besides its spec's own code.

Generated modules inline this file (see ``novolstm.codegen.inline_runtime``): the block
of stand-ins below is replaced by the spec's constants, ``init_params`` and the generated
``fuse``, ``forward`` and ``backward``; everything else is this code, verbatim.

Contents of a generated module:
    init_params      canonical parameters as NumPy arrays, the same numbers on every backend
    forward          the sequence, time-major, no autograd (returns a tape for backward)
    backward         the generated backward pass through time
    Sequence         torch.autograd.Function joining the two
    sequence         functional, differentiable: canonical params dict -> (outputs, final state)
    Cell             nn.Module with nn.LSTMCell conventions
    Layer            nn.Module with nn.LSTM conventions (layers, directions, dropout, packing)
    run_numpy        NumPy in, NumPy out (novolstm.run)
"""

import math
import warnings
import zlib  # noqa: F401 - read by the initializers that generated modules inline here

import numpy as np
import torch
from torch import nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

# --- spec: generated modules replace this block with the spec's constants and functions
from novolstm.init import init_from_table

SPEC_NAME = "stand-in"
SPEC_HASH = ""
#: The spec's class_name: the name of the layer class (the cell's adds "Cell").
CLASS_NAME = "StandIn"
STATE_NAMES: tuple[str, ...] = ("h",)
PARAM_NAMES: tuple[str, ...] = ()
PARAM_TABLE: dict = {}
INPUT_PARAM = "W"
UNITS_PARAM = "W"
#: Parameters that enter only as a projection's bias: what bias=False leaves out.
BIAS_NAMES: tuple[str, ...] = ()
#: Whether the spec computes exactly the standard LSTM or the GRU, so that Layer may run torch's fused kernel.
FUSED_KERNEL = False
#: Which: "lstm" (torch._VF.lstm), "gru" (torch._VF.gru) or None.
FUSED_CELL: str | None = None
#: The spec as canonical TOML: novolstm.backends.cpp builds the compiled kernel from it.
SPEC_TOML = ""
#: Where the spec is a linear recurrence (novolstm.scan.linear_recurrence), the index in STATE_NAMES
#: of the state its output is, so that Layer may run the sequence as a parallel scan; else None.
LINEAR_SCAN: int | None = None


def init_params(input_size, units, seed=0, dtype="float64"):
    """Canonical parameters (NumPy arrays), drawn as novolstm.init_params draws them."""
    return init_from_table(PARAM_TABLE, input_size, units, seed, dtype)


def fuse(params):
    raise NotImplementedError("generated per spec")


def forward(params, x, state, mask=None, keep_tape=False, reverse=False):
    raise NotImplementedError("generated per spec")


def backward(params, tape, g_outputs=None, g_state=None, need_input=True):
    raise NotImplementedError("generated per spec")


# --- end of spec block


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


def _softplus(z):
    # max(z, 0) + log1p(exp(-|z|)): torch.nn.functional.softplus returns z beyond z = 20,
    # 2e-9 off, which float64 sees.
    return torch.clamp_min(z, 0.0) + torch.log1p(torch.exp(-torch.abs(z)))


def _as_tensor_like(a, b):
    # torch.maximum takes two tensors; a spec's literal (a Python float) becomes one.
    return a if isinstance(a, torch.Tensor) else torch.as_tensor(a, dtype=b.dtype, device=b.device)


def _maximum(a, b):
    return torch.maximum(_as_tensor_like(a, b), _as_tensor_like(b, a))


def _minimum(a, b):
    return torch.minimum(_as_tensor_like(a, b), _as_tensor_like(b, a))


def _gelu_grad(g, z):
    # d/dz z Phi(z) = Phi(z) + z phi(z), the exact GELU's derivative.
    cdf = 0.5 * (1.0 + torch.erf(z * 0.7071067811865476))
    return g * (cdf + z * torch.exp(-0.5 * z * z) * 0.3989422804014327)


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
        if torch.equal(
            _ONEDNN_LINEAR(_a, torch.ops.mkldnn._reorder_linear_weight(_w, 1), None, "none", [], ""), _a @ _w.t()
        ):
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
        and not torch.is_grad_enabled()  # oneDNN's op has no autograd formula (backward="autograd")
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
    def backward(ctx, g_ys, *g_final):
        params = dict(zip(PARAM_NAMES, ctx.saved_tensors))
        n = len(STATE_NAMES)
        need = ctx.needs_input_grad
        create_graph = torch.is_grad_enabled()
        with torch.no_grad():
            g_x, g_state, g_params = backward(params, ctx.tape, g_ys, g_final, need_input=need[0])
        g_state = tuple(g if need[4 + k] else None for k, g in enumerate(g_state))
        g_params = tuple(g_params[p] if need[4 + n + k] else None for k, p in enumerate(PARAM_NAMES))
        grads = (g_x, None, None, None) + g_state + g_params
        return _not_twice_differentiable(grads) if create_graph else grads


_TWICE = (
    f"{CLASS_NAME} is not twice differentiable with its generated backward pass (first order only); "
    "construct it with backward='autograd' to record the forward on torch's tape for higher derivatives"
)


def _not_twice_differentiable(grads):
    """The gradients, each behind a node that raises _TWICE if a second backward pass reaches it.

    What torch.autograd.function.once_differentiable does, with a message that says what to do.
    """
    present = [k for k, g in enumerate(grads) if g is not None]
    if not present:
        return grads
    raising = torch._C._functions.DelayedError(_TWICE, len(present))
    wrapped = raising(*[grads[k].detach().requires_grad_() for k in present])
    wrapped = (wrapped,) if isinstance(wrapped, torch.Tensor) else wrapped
    out = list(grads)
    for k, g in zip(present, wrapped):
        out[k] = g
    return tuple(out)


#: What Cell and Layer accept as backward=.
BACKWARDS = ("generated", "autograd")


def _check_backward(value):
    if value not in BACKWARDS:
        raise ValueError(f"backward: expected one of {BACKWARDS}, got {value!r}")
    return value


def _run(backward_mode, x, mask, reverse, state, tensors):
    """(outputs, *final_state) of the sequence op: the generated backward pass, or torch's autograd.

    Under torch.func transforms (grad, vmap, jacrev) the forward always runs on torch's tape:
    the generated backward is an autograd.Function with a tape of its own, which they cannot enter.
    """
    if backward_mode == "autograd" or torch._C._are_functorch_transforms_active():
        ys, final, _ = forward(dict(zip(PARAM_NAMES, tensors)), x, tuple(state), mask, keep_tape=False, reverse=reverse)
        return (ys,) + tuple(final)
    return Sequence.apply(x, mask, reverse, torch.is_grad_enabled(), *state, *tensors)


def sequence(params, x, state=None, mask=None, reverse=False, scan=None):
    """Differentiable run over a batch-first sequence with canonical parameters.

    Args:
        params: canonical name -> tensor (all of PARAM_NAMES, one dtype and device).
        x: (batch, time, input).
        state: tuple of (batch, units) tensors in STATE_NAMES order, zeros if None.
        mask: bool (batch, time), True on real steps, or None.
        reverse: run from the last timestep to the first.
        scan: None (auto): a linear recurrence (LINEAR_SCAN) runs as a parallel scan off the
            CPU, and on the CPU where it measured faster (SCAN_CPU_MIN_STEPS, SCAN_CPU_MAX_WIDTH);
            other cells as the generated loop. False: the loop; True: the scan, or raise.

    Returns:
        (outputs (batch, time, units), final state tuple)
    """
    tensors = [params[p] for p in PARAM_NAMES]
    ref = tensors[0]
    _check_tensor("x", x, 3, ref, expected=f"(batch, time, {_input_size(params)})", last=_input_size(params))
    B, T = x.shape[0], x.shape[1]
    state = _initial_state(state, B, ref)
    mask = _check_mask(mask, B, T, ref.device)
    if scan not in (None, True, False):
        raise ValueError(f"scan: expected None (auto), True or False, got {scan!r}")
    why = _scan_unavailable(x.transpose(0, 1), scan, state[0].shape[-1])
    if why is None:
        outs = _scan_sequence(x.transpose(0, 1), mask, reverse, state, tensors)
    elif scan:
        raise RuntimeError(f"scan=True, but the parallel scan cannot run this call: {why}")
    else:
        outs = Sequence.apply(x.transpose(0, 1), mask, reverse, torch.is_grad_enabled(), *state, *tensors)
    return outs[0].transpose(0, 1), tuple(outs[1:])


# ---------------------------------------------------------------- checks


def _input_size(params):
    return params[INPUT_PARAM].shape[0]


def _describe(t):
    return f"shape {tuple(t.shape)}, dtype {t.dtype}, device {t.device}"


def _check_tensor(what, t, ndim, ref, expected, last=None):
    """Shape, dtype and device of an input against the parameters', before any arithmetic."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{what}: expected a torch.Tensor of shape {expected}, got {type(t).__name__}")
    if t.dim() != ndim or (last is not None and t.shape[-1] != last) or 0 in t.shape:
        raise ValueError(f"{what}: expected shape {expected}, got {tuple(t.shape)}")
    if t.dtype != ref.dtype:
        raise TypeError(
            f"{what}: expected dtype {ref.dtype} (the parameters' dtype), got {t.dtype}; convert with .to()"
        )
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


# ---------------------------------------------------------------- torch's fused LSTM and GRU kernels

_NOT_STANDARD = (
    None
    if FUSED_KERNEL
    else f"spec {SPEC_NAME!r} does not compute the standard LSTM or the GRU, so torch's fused kernels cannot run it"
)
# float16: oneDNN has no float16 LSTM on CPU; the generated loop runs it everywhere (and
# bfloat16 for the GRU, whose kernel does not keep its gate arithmetic in float32).
_FUSED_DTYPES = (
    (torch.float32, torch.float64, torch.bfloat16) if FUSED_CELL == "lstm" else (torch.float32, torch.float64)
)
#: Canonical gate names in the fused kernel's order.
_FUSED_GATES = {"lstm": ("i", "f", "g", "o"), "gru": ("r", "z", "n")}.get(FUSED_CELL or "", ())


def _fused_unavailable(x, mask):
    """None when torch's fused kernel can run this call, else why it cannot."""
    if _NOT_STANDARD is not None:
        return _NOT_STANDARD
    if mask is not None:
        return "masks, lengths and PackedSequence inputs run the generated loop"
    if x.dtype not in _FUSED_DTYPES:
        return f"dtype {x.dtype}: the fused path runs {', '.join(str(d).split('.')[1] for d in _FUSED_DTYPES)}"
    if torch.jit.is_tracing() or torch.onnx.is_in_onnx_export():
        return "traced and exported graphs keep the generated loop"
    if torch._C._are_functorch_transforms_active():
        return "torch.func transforms run the generated loop (torch's LSTM kernel has no vmap rule)"
    return None


def _flat_weights(params, bias):
    """One cell's weights in nn.LSTM's (nn.GRU's) flat layout, concatenated from the canonical parameters.

    weight_ih (gates * units, input) and weight_hh (gates * units, units), gates in torch's
    order (LSTM: i, f, g, o; GRU: r, z, n). With bias, bias_ih holds the canonical biases;
    bias_hh is zero (the standard LSTM spec has one bias per gate), but for the GRU's n gate
    b_hn, the bias the reset gate multiplies. Built inside forward, so autograd reaches the
    canonical parameters.
    """
    if _NOT_STANDARD is not None:
        raise RuntimeError(_NOT_STANDARD)
    flat = [
        torch.cat([params[f"W_{k}"].t() for k in _FUSED_GATES]),
        torch.cat([params[f"U_{k}"].t() for k in _FUSED_GATES]),
    ]
    if bias:
        b = torch.cat([params[f"b_{k}"] for k in _FUSED_GATES])
        hh = torch.zeros_like(b)
        if FUSED_CELL == "gru":
            hh = torch.cat([hh[: -len(params["b_hn"])], params["b_hn"]])
        flat += [b, hh]
    return flat


#: Where each canonical parameter lies in the flat weights, in PARAM_NAMES order: (index in
#: (weight_ih, weight_hh, bias_ih, bias_hh), gate); b_hn is the GRU's n gate of bias_hh.
_FLAT_PLACES = tuple(
    (("W", "U", "b").index(name[0]), _FUSED_GATES.index(name[2:])) if name != "b_hn" else (3, len(_FUSED_GATES) - 1)
    for name in (PARAM_NAMES if FUSED_KERNEL else ())
)
_FLAT_USED = frozenset(i for i, _ in _FLAT_PLACES)


class _FlatWeights(torch.autograd.Function):
    """One cell's flat weights as one autograd node over its canonical parameters.

    apply(flat, *params): flat, that cell's _flat_weights built without autograd; params,
    the canonical tensors in PARAM_NAMES order. Returns flat's tensors (aliases) with this
    node as their gradient function, whose backward cuts each flat gradient into the
    parameters' gradients.

    Built with autograd instead, the transposes and concatenations of _flat_weights cost
    some thirty small nodes per forward+backward call (a transpose, a slice and a strided
    gradient copy per parameter) and a copy of every weight: measured on one core, 64
    units, 0.17 ms per call against 0.09 ms here (nn.LSTM's forward+backward at batch 1
    and 1000 steps takes 5 to 7 ms).
    """

    @staticmethod
    def forward(ctx, flat, *params):
        ctx.set_materialize_grads(False)  # the LSTM's bias_hh has no parameter behind it
        return tuple(w.detach() for w in flat)

    @staticmethod
    def backward(ctx, *grads):
        n = len(_FUSED_GATES)
        cut = [None] * 4
        for i, g in enumerate(grads):
            if g is not None and i in _FLAT_USED:
                # weights (gates * units, cols) -> gates (cols, units) in one copy; biases -> gates (units,)
                g = g.reshape(n, -1, g.shape[1]).transpose(1, 2).contiguous() if i < 2 else g.reshape(n, -1)
                cut[i] = g.unbind(0)
        return (None, *(None if cut[i] is None else cut[i][gate] for i, gate in _FLAT_PLACES))


def _fused_kernel(x, states, flat, bias, num_layers, dropout, train, bidirectional):
    """torch._VF.lstm or torch._VF.gru (what nn.LSTM and nn.GRU run): (outputs, final state tuple)."""
    if FUSED_CELL == "gru":
        out, h = torch._VF.gru(x, states[0], flat, bias, num_layers, dropout, train, bidirectional, False)
        return out, (h,)
    out, *final = torch._VF.lstm(x, states, flat, bias, num_layers, dropout, train, bidirectional, False)
    return out, tuple(final)


# ---------------------------------------------------------------- the compiled path

_COMPILED_DTYPES = (torch.float32, torch.float64)
_COMPILED_WARNED: list[str] = []


def _compiled_op(x, required=False):
    """The spec's compiled sequence kernel (novolstm.backends.cpp.torch_ext) for this call, or None.

    It runs float32 and float64 on the CPU outside tracing and ONNX export, where novolstm
    is installed and a C++ compiler builds it (once per spec, cached on disk). When it
    cannot, Layer runs the generated loop (with one warning if the kernel could not be
    built); with required (compiled=True) it raises instead.
    """
    why = None
    if x.device.type != "cpu" or x.dtype not in _COMPILED_DTYPES:
        why = f"it runs float32 and float64 on the CPU, not {x.dtype} on {x.device.type}"
    elif torch.jit.is_tracing() or torch.onnx.is_in_onnx_export():
        why = "traced and exported ONNX graphs keep the generated loop"
    else:
        try:
            from novolstm.backends.cpp.torch_ext import CompiledUnavailable, CompiledUnsupported, compiled_sequence
        except ImportError:
            why = "novolstm (which builds it) is not installed"
        else:
            try:
                return compiled_sequence(SPEC_TOML)
            except CompiledUnavailable as e:
                why = str(e)
                # A spec whose operations the C++ emitter does not compile runs the loop by design.
                if not required and not _COMPILED_WARNED and not isinstance(e, CompiledUnsupported):
                    _COMPILED_WARNED.append(why)
                    warnings.warn(
                        f"novolstm: the compiled kernel is unavailable, running the generated loop: {why}",
                        RuntimeWarning,
                        stacklevel=4,
                    )
    if required:
        raise RuntimeError(f"compiled=True, but the compiled kernel cannot run this call: {why}")
    return None


# ---------------------------------------------------------------- the parallel scan

# A linear recurrence (every next state a * state + b, with a and b free of any state) needs no
# loop: the step is evaluated for every timestep at once (time folded into the batch), which
# gives b (the next state from a zero state) and a (its derivative in the state, exactly), and
# the pairs are then combined in chunks (see _chunked_scan). A masked step is the identity
# pair (1, 0) and outputs zero, the loops' rule.


#: Where scan=None runs the scan on the CPU: sequences of at least SCAN_CPU_MIN_STEPS steps whose
#: batch * units is at most SCAN_CPU_MAX_WIDTH. Measured (docs/scan.md): there the loop's steps
#: are all overhead and the scan is 2x to 20x faster; from batch * units = 512 on it is at parity
#: or slower, since the loop already computes every state-free value before its steps.
SCAN_CPU_MIN_STEPS = 256
SCAN_CPU_MAX_WIDTH = 256


def _scan_unavailable(x, choice, units=1):
    """None when the parallel scan runs this call (scan=None or True), else why not.

    x: (time, batch, input); units: the state's width.
    """
    if LINEAR_SCAN is None:
        return f"spec {SPEC_NAME!r} is not a linear recurrence (novolstm.scan.linear_recurrence)"
    if choice is False:
        return "scan=False"
    if x.shape[0] == 0:
        return "an empty sequence"
    if choice is None and x.device.type == "cpu":
        if x.shape[0] < SCAN_CPU_MIN_STEPS or x.shape[1] * units > SCAN_CPU_MAX_WIDTH:
            return (
                f"on the CPU the loop is as fast below {SCAN_CPU_MIN_STEPS} steps and above batch * units = "
                f"{SCAN_CPU_MAX_WIDTH} (scan=True runs the scan there)"
            )
    if torch._C._are_functorch_transforms_active():
        return "torch.func transforms run the generated forward on torch's tape"
    if torch.jit.is_tracing() or torch.onnx.is_in_onnx_export() or torch.compiler.is_compiling():
        return "traced, exported and compiled graphs keep the generated loop"
    return None


def _chunked_scan(a, b, h0):
    """Every h_t = a_t * h_{t-1} + b_t along axis 0, without autograd.

    The T steps are cut into about sqrt(T) chunks of about sqrt(T) steps: one pass walks the
    positions of every chunk at once (a chunk's running product A and its state from zero H),
    one walks the chunks (the state entering each), and one broadcast adds A * entering to H.
    2 sqrt(T) small steps instead of T, and only products and sums, as the loop computes
    them (no division or logarithm, so any a, also zero or negative, is exact to rounding).
    """
    steps = a.shape[0]
    size = math.isqrt(steps - 1) + 1  # chunk length: ceil(sqrt(T))
    chunks = -(-steps // size)
    pad = chunks * size - steps  # identity pairs (1, 0) after the last step
    if pad:
        a = torch.cat([a, a.new_ones((pad,) + a.shape[1:])])
        b = torch.cat([b, b.new_zeros((pad,) + b.shape[1:])])
    a, b = a.reshape((chunks, size) + a.shape[1:]), b.reshape((chunks, size) + b.shape[1:])
    prod, h = torch.empty_like(a), torch.empty_like(b)
    prod[:, 0], h[:, 0] = a[:, 0], b[:, 0]
    for k in range(1, size):
        torch.mul(a[:, k], prod[:, k - 1], out=prod[:, k])
        torch.addcmul(b[:, k], a[:, k], h[:, k - 1], out=h[:, k])
    entering = torch.empty((chunks,) + a.shape[2:], dtype=a.dtype, device=a.device)
    entering[0] = h0
    for c in range(1, chunks):
        torch.addcmul(h[c - 1, -1], prod[c - 1, -1], entering[c - 1], out=entering[c])
    h.addcmul_(prod, entering[:, None])
    return h.reshape((chunks * size,) + h.shape[2:])[:steps]


class LinearScan(torch.autograd.Function):
    """hs = LinearScan.apply(a, b, h0): h_t = a_t * h_{t-1} + b_t (time on axis 0), differentiable.

    The backward pass is the same recurrence run backwards in time: the cotangent of h_{t-1}
    is g_{t-1} + a_t * (that of h_t), then g_a_t = (that of h_t) * h_{t-1}, g_b_t = that of h_t.
    """

    @staticmethod
    def forward(ctx, a, b, h0):
        hs = _chunked_scan(a, b, h0)
        ctx.save_for_backward(a, hs, h0)
        return hs

    @staticmethod
    def backward(ctx, g):
        a, hs, h0 = ctx.saved_tensors
        create_graph = torch.is_grad_enabled()
        with torch.no_grad():
            a_next = torch.cat([a[1:], a.new_zeros((1,) + a.shape[1:])])  # what h_t is multiplied by next
            state_cotangent = _chunked_scan(a_next.flip(0), g.flip(0), torch.zeros_like(h0)).flip(0)
            grads = (state_cotangent * torch.cat([h0[None], hs[:-1]]), state_cotangent, a[0] * state_cotangent[0])
        return _not_twice_differentiable(grads) if create_graph else grads


def _scan_coefficients(params, x, state):
    """(a, b) of every state, each (time, batch, units), from one evaluation of the step over all timesteps.

    b is the next state from a zero state; a its derivative in that state (the recurrence is
    affine, so the derivative is exact), taken with create_graph while gradients are recorded
    so that they reach the parameters and x through a as through b.
    """
    steps, batch = x.shape[0], x.shape[1]
    recording = torch.is_grad_enabled()
    if not recording:  # the step's state-free part need not be on the tape that gives a
        params = {k: v.detach() for k, v in params.items()}
        x = x.detach()
    with torch.enable_grad():
        zeros = tuple(s.new_zeros((steps * batch, s.shape[-1])).requires_grad_() for s in state)
        _, b, _ = forward(params, x.reshape(1, steps * batch, x.shape[-1]), zeros)
        # Each next state reads only its own state, so the summed derivative is each one's own.
        a = torch.autograd.grad(b, zeros, [torch.ones_like(v) for v in b], create_graph=recording, allow_unused=True)
    a = [torch.zeros_like(bk) if ak is None else ak for ak, bk in zip(a, b)]
    if not recording:
        a, b = [v.detach() for v in a], [v.detach() for v in b]
    return [v.reshape(steps, batch, -1) for v in a], [v.reshape(steps, batch, -1) for v in b]


def _scan_sequence(x, mask, reverse, state, tensors):
    """(outputs, *final_state) of a linear recurrence by the parallel scan: x (time, batch, input),
    mask bool (time, batch, 1) or None, the arguments of Sequence.apply."""
    a, b = _scan_coefficients(dict(zip(PARAM_NAMES, tensors)), x, state)
    if reverse:  # scan from the last step; outputs flip back to time order
        a, b = [v.flip(0) for v in a], [v.flip(0) for v in b]
        mask = None if mask is None else mask.flip(0)
    if mask is not None:  # a masked step is the identity pair: the state carries through
        a = [torch.where(mask, v, 1.0) for v in a]
        b = [torch.where(mask, v, 0.0) for v in b]
    hs = [LinearScan.apply(ak, bk, h0) for ak, bk, h0 in zip(a, b, state)]
    ys = hs[LINEAR_SCAN or 0]
    if mask is not None:
        ys = torch.where(mask, ys, 0.0)
    return (ys.flip(0) if reverse else ys, *(h[-1] for h in hs))


# ---------------------------------------------------------------- modules


def _units(units, hidden_size):
    """The state size, given as units (positional, novolstm's name) or hidden_size= (torch's)."""
    if hidden_size is not None and units is not None and int(hidden_size) != int(units):
        raise ValueError(f"units={units!r} and hidden_size={hidden_size!r}: give one of them (they are the same size)")
    if units is None and hidden_size is None:
        raise TypeError("missing the state size: give units (or hidden_size=, as to torch.nn.LSTM)")
    return units if units is not None else hidden_size


def _setstate_checked(self, state):
    """nn.Module.__setstate__, after refusing a module pickled from another version of the spec."""
    saved = state.get("spec_hash", SPEC_HASH)
    if saved != SPEC_HASH:
        raise ValueError(
            f"this {CLASS_NAME} module was saved from spec {SPEC_NAME!r} with sha256 {saved[:12]}..., "
            f"but the {SPEC_NAME!r} spec here has sha256 {SPEC_HASH[:12]}...: the cells differ, so it is not loaded"
        )
    state.setdefault("backward", "generated")  # pickled before the option existed
    nn.Module.__setstate__(self, state)


def _to_numpy(t):
    t = t.detach().cpu()
    if t.dtype == torch.bfloat16:  # NumPy has no bfloat16; float32 holds every bfloat16 exactly
        t = t.float()
    return t.numpy().copy()


class Cell(nn.Module):
    """The spec's cell (``SPEC_NAME``), with torch.nn.LSTMCell's conventions.

    forward(x, state=None) -> the new state: x is (batch, input) or (input,); state
    is the tensor of the one state, or the tuple in STATE_NAMES order (zeros if None). Parameters are registered under their canonical
    names (PARAM_NAMES), so state_dict keys are those names.

    Args:
        input_size: features of x.
        units: the state size; or give it as hidden_size=, as to nn.LSTMCell.
        bias: False leaves out the projection biases (BIAS_NAMES), fixed at zero.
        device, dtype: as for any nn.Module.
        seed: the seed of the canonical initializers (see reset_parameters).

    Examples:
        >>> cell = Cell(3, 4)
        >>> new_state = cell(torch.ones(2, 3))
        >>> sorted(cell.state_dict()) == sorted(n for n in PARAM_NAMES)
        True
    """

    spec_name = SPEC_NAME
    spec_hash = SPEC_HASH
    state_names = STATE_NAMES

    def __init__(
        self,
        input_size,
        units=None,
        bias=True,
        device=None,
        dtype=None,
        seed=0,
        *,
        hidden_size=None,
        backward="generated",
    ):
        super().__init__()
        units = _units(units, hidden_size)
        self.backward = _check_backward(backward)
        if int(input_size) < 1 or int(units) < 1:
            raise ValueError(f"input_size and units must be positive, got {input_size} and {units}")
        self.input_size, self.units, self.bias = int(input_size), int(units), bool(bias)
        self.spec_hash = SPEC_HASH  # pickled with the module, checked by __setstate__
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
        extra = "" if self.bias else ", bias=False"
        return f"{self.input_size}, {self.units}{extra}" + (
            "" if self.backward == "generated" else f", backward={self.backward!r}"
        )

    __setstate__ = _setstate_checked

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
                value = torch.as_tensor(
                    np.asarray(params[name]) if not isinstance(params[name], torch.Tensor) else params[name]
                )
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
        _check_tensor(
            "x", x, 2, ref, expected=f"(batch, {self.input_size}) or ({self.input_size},)", last=self.input_size
        )
        state = _initial_state(state, x.shape[0], ref)
        outs = _run(self.backward, x[None], None, False, state, tuple(params.values()))
        new = tuple(s[0] for s in outs[1:]) if unbatched else tuple(outs[1:])
        return new if len(new) > 1 else new[0]


class Layer(nn.Module):
    """The spec's cell over sequences, with torch.nn.LSTM's conventions.

    forward(input, hx=None, *, lengths=None, mask=None) -> (output, final_state)

    input: (time, batch, input_size), or (batch, time, input_size) with batch_first,
    or (time, input_size) unbatched, or a PackedSequence. hx and final_state: the tensor of the one state, or the tuple in STATE_NAMES order,
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
        self,
        input_size,
        units=None,
        num_layers=1,
        bias=True,
        batch_first=False,
        dropout=0.0,
        bidirectional=False,
        device=None,
        dtype=None,
        seed=0,
        fused=None,
        compiled=None,
        scan=None,
        *,
        hidden_size=None,
        proj_size=0,
        backward="generated",
    ):
        super().__init__()
        units = _units(units, hidden_size)
        self.backward = _check_backward(backward)
        if proj_size:
            raise ValueError(
                f"proj_size={proj_size!r}: not supported; {CLASS_NAME} has no output projection "
                "(nn.LSTM's LSTMP, h = (o * tanh(c)) @ W_hr), so its outputs are units wide; leave proj_size=0"
            )
        self.spec_hash = SPEC_HASH  # pickled with the module, checked by __setstate__
        if fused not in (None, True, False):
            raise ValueError(f"fused: expected None (auto), True or False, got {fused!r}")
        if compiled not in (None, True, False):
            raise ValueError(f"compiled: expected None (auto), True or False, got {compiled!r}")
        if compiled and backward == "autograd":
            raise ValueError(
                "compiled=True and backward='autograd': the compiled kernel has a backward pass of its own"
            )
        self.compiled = compiled
        if scan not in (None, True, False):
            raise ValueError(f"scan: expected None (auto), True or False, got {scan!r}")
        if scan and LINEAR_SCAN is None:
            raise ValueError(f"scan=True: {_scan_unavailable(torch.empty(1), True)}")
        if scan and (compiled or backward == "autograd"):
            raise ValueError("scan=True runs the parallel scan: give it without compiled=True or backward='autograd'")
        self.scan = scan
        if fused and not FUSED_KERNEL:
            raise ValueError(f"fused=True: {_NOT_STANDARD}")
        self.fused = fused
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
                cells[f"l{layer}{suffix}"] = Cell(
                    size, self.units, bias, device, dtype, seed=seed + len(cells), backward=backward
                )
        self.cells = nn.ModuleDict(cells)

    @property
    def hidden_size(self):
        return self.units

    @property
    def proj_size(self):
        return 0  # as nn.LSTM without a projection

    __setstate__ = _setstate_checked

    def extra_repr(self):
        extra = [f"{self.input_size}, {self.units}"]
        for key, default in (
            ("num_layers", 1),
            ("bias", True),
            ("batch_first", False),
            ("dropout", 0.0),
            ("bidirectional", False),
            ("fused", None),
            ("compiled", None),
            ("scan", None),
            ("backward", "generated"),
        ):
            if getattr(self, key) != default:
                extra.append(f"{key}={getattr(self, key)!r}")
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

        The flat weights are concatenated from the canonical parameters on every call,
        without autograd; with autograd, one _FlatWeights node per cell carries their
        gradients to W_i, U_i, b_i, ... themselves. They are never kept from one call to
        the next: a cache keyed on the parameters' version counters would miss an update
        through `p.data`, which moves no counter, and run on stale weights.
        """
        cells = [
            self.cells[f"l{layer}{suffix}"].params()
            for layer in range(self.num_layers)
            for suffix in ("", "_reverse")[: self.num_directions]
        ]
        if torch.compiler.is_compiling():  # the compiler traces and fuses the concatenations itself
            flat = [w for params in cells for w in _flat_weights(params, self.bias)]
        else:
            with torch.no_grad():
                flat = [w for params in cells for w in _flat_weights(params, self.bias)]
            if torch.is_grad_enabled() and any(p.requires_grad for params in cells for p in params.values()):
                per_cell = len(flat) // len(cells)
                flat = [
                    w
                    for k, params in enumerate(cells)
                    for w in _FlatWeights.apply(flat[k * per_cell : (k + 1) * per_cell], *params.values())
                ]
        return _fused_kernel(
            x, states, flat, self.bias, self.num_layers, self.dropout, self.training, self.bidirectional
        )

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
                result = self._sequence(x, mask, d == 1, tuple(s[row] for s in states), tuple(cell.params().values()))
                outs.append(result[0])
                finals.append(result[1:])
            x = outs[0] if len(outs) == 1 else torch.cat(outs, dim=-1)
        return x, tuple(torch.stack([f[k] for f in finals]) for k in range(len(STATE_NAMES)))

    def _sequence(self, x, mask, reverse, state, params):
        """One cell over the sequence: (outputs, *final_state), through the compiled kernel where
        it runs (see _compiled_op), else the generated loop; with backward="autograd" or under
        torch.func transforms, always the generated forward on torch's tape (see _run). A linear
        recurrence runs as a parallel scan (see _scan_sequence) unless scan=False, compiled=True
        or backward="autograd" say otherwise."""
        choice = getattr(self, "scan", None)  # modules pickled before the option existed: auto
        if self.compiled or self.backward == "autograd":
            choice = False
        why = _scan_unavailable(x, choice, state[0].shape[-1])
        if why is None:
            return _scan_sequence(x, mask, reverse, state, params)
        if choice:
            raise RuntimeError(f"scan=True, but the parallel scan cannot run this call: {why}")
        if self.backward == "autograd" or torch._C._are_functorch_transforms_active():
            return _run(self.backward, x, mask, reverse, state, params)
        op = None if self.compiled is False else _compiled_op(x, required=bool(self.compiled))
        if op is not None:
            ys, final = op(x, None if mask is None else mask[..., 0], reverse, state, params)
            return (ys, *final)
        return Sequence.apply(x, mask, reverse, torch.is_grad_enabled(), *state, *params)

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
                raise ValueError(
                    f"hx {name}: expected shape {shape} (num_layers * num_directions, batch, units), got {tuple(s.shape) if not unbatched else tuple(s.shape[::2])}"
                )
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
    if state is None:
        state = tuple(torch.zeros(x.shape[0], params[UNITS_PARAM].shape[-1], dtype=x.dtype) for _ in STATE_NAMES)
    else:
        state = tuple(torch.from_numpy(np.ascontiguousarray(s)) for s in state)
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
        return (
            g_x.transpose(0, 1).numpy(),
            tuple(g.numpy() for g in g_state0),
            {k: v.numpy() for k, v in g_params.items()},
        )

    return ys.transpose(0, 1).numpy(), tuple(s.numpy() for s in final), vjp


# The spec's own names for the classes (module printing, pickle, Keras-style summaries):
# CLASS_NAME for the layer, as nn.LSTM, and CLASS_NAME + "Cell" for the cell, as nn.LSTMCell.
for _cls, _name in ((Layer, CLASS_NAME), (Cell, CLASS_NAME + "Cell")):
    _cls.__name__ = _cls.__qualname__ = _name
    globals()[_name] = _cls
