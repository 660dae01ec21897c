"""Float64 reference implementations (the "oracle") of every novolstm cell.

Every backend of the product is tested against this module, so it is written
by hand, straight from the equations, and is never generated.  It uses plain
NumPy in float64 throughout and imports no other novolstm module.

Notation
--------
``x`` is one time step of shape ``(B, I)``; every state is ``(B, H)``.
``x @ W`` uses ``W`` of shape ``(I, H)``, ``h @ U`` uses ``U`` of shape
``(H, H)``, biases and per-unit vectors have shape ``(H,)``.  ``s`` is the
logistic sigmoid.  All reductions (softmax, LayerNorm) are over the last
(units) axis.

Parameters are a dict ``name -> array`` with canonical names ``W_<gate>``,
``U_<gate>``, ``b_<gate>``, ``gamma_<ln>``, ``beta_<ln>`` and ``p_<gate>``
(peephole weights).  ``CELLS`` lists the exact names each cell needs.

Cells
-----
``lstm``
    ``i = s(xW_i + hU_i + b_i)``, ``f = s(xW_f + hU_f + b_f)``,
    ``g = tanh(xW_g + hU_g + b_g)``, ``o = s(xW_o + hU_o + b_o)``,
    ``c' = f*c + i*g``, ``h' = o*tanh(c')``.  State ``(h, c)``, output ``h'``.
``novolstm`` (the design document's formula)
    As ``lstm`` but
    ``i = LN(s(xW_i + hU_i + b_i); gamma_i, beta_i) * softmax(xW_s + hU_s + b_s)``.
``novolstm_reference`` (what the original Keras code computes)
    As ``lstm`` but
    ``i = LN(s(xW_i + hU_i + b_i) * softmax(xW_s + b_s); gamma_i, beta_i)``
    (no ``U_s``; the LayerNorm is applied *after* the product).
``gru`` (torch.nn.GRU / Keras ``GRU(reset_after=True)``)
    ``r = s(xW_r + hU_r + b_r)``, ``z = s(xW_z + hU_z + b_z)``,
    ``n = tanh(xW_n + b_n + r*(hU_n + b_hn))``, ``h' = (1-z)*n + z*h``.
    State ``(h,)``, output ``h'``.
``peephole_lstm`` (Gers & Schmidhuber 2000, TF ``LSTMCell(use_peepholes=True)``)
    ``i = s(xW_i + hU_i + p_i*c + b_i)``, ``f = s(xW_f + hU_f + p_f*c + b_f)``,
    ``g = tanh(xW_g + hU_g + b_g)``, ``c' = f*c + i*g``,
    ``o = s(xW_o + hU_o + p_o*c' + b_o)``, ``h' = o*tanh(c')``.
    (TF's ``forget_bias`` is not modelled: fold it into ``b_f``.)

The zoo (one state ``(h,)`` unless said; ``g+(v) = v + 1/2`` for ``v >= 0``, ``s(v)`` below):
``mingru`` (Feng et al. 2024): ``z = s(xW_z + b_z)``, ``h' = (1-z)*h + z*g+(xW_h + b_h)``.
``minlstm`` (Feng et al. 2024): ``f = s(xW_f + b_f)``, ``i = s(xW_i + b_i)`` (as ``s(+-d)``, ``d = log f - log i``),
    ``h' = f/(f+i)*h + i/(f+i)*g+(xW_h + b_h)``.
``indrnn`` (Li et al. 2018): ``h' = relu(xW + u*h + b)``.
``cifg_lstm`` (Greff et al. 2017): ``lstm`` with ``i = 1 - f``.
``janet`` (van der Westhuizen & Lasenby 2018): ``s = xW_f + hU_f + b_f``,
    ``h' = s(s)*h + (1 - s(s - 1))*tanh(xW_c + hU_c + b_c)``.
``mgu`` (Zhou et al. 2016): ``f = s(xW_f + hU_f + b_f)``,
    ``h' = (1-f)*h + f*tanh(xW_h + (f*h)U_h + b_h)``.
``keras2_lstm``: ``lstm`` with Keras 2's ``hard_sigmoid(z) = clip(0.2z + 0.5, 0, 1)`` for i, f, o.
``slstm`` (Beck et al. 2024, one head), state ``(h, c, n, m)``:
    ``m' = max(log s(f~) + m, i~)``, ``i = exp(i~ - m')``, ``f = exp(log s(f~) + m - m')``,
    ``c' = f*c + i*tanh(z~)``, ``n' = f*n + i``, ``h' = s(o~)*c'/n'``, each ``~`` a
    pre-activation ``xW + hU + b``.
``ln_lstm`` (Ba et al. 2016, per gate): each gate ``act(LN(xW; gamma_gx, beta_gx) +
    LN(hU; gamma_gh, beta_gh) + b)``, ``c' = f*c + i*g``, ``h' = o*tanh(LN(c'; gamma_c, beta_c))``,
    ``eps = 1e-5``.

LayerNorm ``LN(z; gamma, beta, eps)`` uses ``mu = mean(z)`` and the two-pass
population variance ``var = mean((z - mu)**2)``:
``(z - mu) / sqrt(var + eps) * gamma + beta``, with ``eps = 1e-3`` in the
NovoLSTM cells.  With a single unit the result is exactly ``beta``.

Masking rule (the project rule)
-------------------------------
``mask`` is a boolean ``(B, T)`` array; ``True`` marks a real step.  On a
masked (``False``) step, that batch row's state carries through *unchanged*
and its output at that step is *exactly zero*.  Masked steps may appear
anywhere in the sequence, not only at the end.  Alternatively ``lengths``
(``(B,)`` non-negative ints, for right-padded batches) means
``mask[b, t] = t < lengths[b]``.  Giving both ``mask`` and ``lengths`` is an
error.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

__all__ = ["CELLS", "CellInfo", "layer_norm", "run", "sigmoid", "softmax", "step"]

_NOVO_LN_EPS = 1e-3


# ---------------------------------------------------------------------------
# Elementwise / reduction helpers
# ---------------------------------------------------------------------------


def sigmoid(z):
    """Exact logistic sigmoid ``1 / (1 + exp(-z))`` in float64.

    Never overflows and never warns for finite input: only ``exp(-|z|)``
    (which lies in ``(0, 1]``) is evaluated, and the branch is chosen by sign.

    Args:
        z: Array-like of any shape.

    Returns:
        float64 array of the same shape, in ``[0, 1]``.
    """
    z = np.asarray(z, dtype=np.float64)
    with np.errstate(under="ignore"):  # tiny results may be subnormal: fine
        e = np.exp(-np.abs(z))  # in [0, 1]: cannot overflow
        positive = 1.0 / (1.0 + e)  # sigmoid(|z|)
        negative = e / (1.0 + e)  # sigmoid(-|z|)
    return np.where(z >= 0.0, positive, negative)


def softmax(z):
    """Softmax over the last axis, computed with the maximum subtracted.

    Args:
        z: Array-like with at least one dimension.

    Returns:
        float64 array of the same shape; each row along the last axis sums
        to 1.
    """
    z = np.asarray(z, dtype=np.float64)
    shifted = z - np.max(z, axis=-1, keepdims=True)
    with np.errstate(under="ignore"):
        e = np.exp(shifted)
    return e / np.sum(e, axis=-1, keepdims=True)


def layer_norm(z, gamma, beta, eps=_NOVO_LN_EPS):
    """LayerNorm over the last axis with the two-pass population variance.

    ``mu = mean(z)``, ``var = mean((z - mu)**2)``,
    ``out = (z - mu) / sqrt(var + eps) * gamma + beta``.

    Args:
        z: Array-like, normalised over its last axis.
        gamma: Scale, shape ``(H,)``.
        beta: Shift, shape ``(H,)``.
        eps: Added to the variance (default ``1e-3``, the NovoLSTM value).

    Returns:
        float64 array of the same shape as ``z``.
    """
    z = np.asarray(z, dtype=np.float64)
    gamma = np.asarray(gamma, dtype=np.float64)
    beta = np.asarray(beta, dtype=np.float64)
    mu = np.mean(z, axis=-1, keepdims=True)
    d = z - mu
    with np.errstate(under="ignore"):
        var = np.mean(d * d, axis=-1, keepdims=True)
        return d / np.sqrt(var + eps) * gamma + beta


# ---------------------------------------------------------------------------
# Cells: one small function each.  Signature: (params, x, state) -> (state', y)
# ---------------------------------------------------------------------------


def _pre(p, gate, x, h):
    """``x @ W_gate + h @ U_gate + b_gate``."""
    return x @ p["W_" + gate] + h @ p["U_" + gate] + p["b_" + gate]


def _lstm_update(p, x, h, c, i):
    """The standard LSTM around a given input gate ``i``: forget, candidate, output, update."""
    f = sigmoid(_pre(p, "f", x, h))
    g = np.tanh(_pre(p, "g", x, h))
    o = sigmoid(_pre(p, "o", x, h))
    c_new = f * c + i * g
    h_new = o * np.tanh(c_new)
    return (h_new, c_new), h_new


def _lstm(p, x, state):
    h, c = state
    return _lstm_update(p, x, h, c, sigmoid(_pre(p, "i", x, h)))


def _novolstm(p, x, state):
    h, c = state
    i_sig = sigmoid(_pre(p, "i", x, h))
    selector = softmax(_pre(p, "s", x, h))
    i = layer_norm(i_sig, p["gamma_i"], p["beta_i"], _NOVO_LN_EPS) * selector
    return _lstm_update(p, x, h, c, i)


def _novolstm_reference(p, x, state):
    h, c = state
    i_sig = sigmoid(_pre(p, "i", x, h))
    selector = softmax(x @ p["W_s"] + p["b_s"])  # no recurrent term
    i = layer_norm(i_sig * selector, p["gamma_i"], p["beta_i"], _NOVO_LN_EPS)
    return _lstm_update(p, x, h, c, i)


def _gru(p, x, state):
    (h,) = state
    r = sigmoid(_pre(p, "r", x, h))
    z = sigmoid(_pre(p, "z", x, h))
    n = np.tanh(x @ p["W_n"] + p["b_n"] + r * (h @ p["U_n"] + p["b_hn"]))
    h_new = (1.0 - z) * n + z * h
    return (h_new,), h_new


def _peephole_lstm(p, x, state):
    h, c = state
    i = sigmoid(_pre(p, "i", x, h) + p["p_i"] * c)
    f = sigmoid(_pre(p, "f", x, h) + p["p_f"] * c)
    g = np.tanh(_pre(p, "g", x, h))
    c_new = f * c + i * g
    o = sigmoid(_pre(p, "o", x, h) + p["p_o"] * c_new)
    h_new = o * np.tanh(c_new)
    return (h_new, c_new), h_new


# --- the zoo: cells of current research, each from its paper's equations


def _positive(v):
    """minGRU's g: v + 1/2 for v >= 0, the logistic below (continuous, positive)."""
    return np.where(v >= 0.0, v + 0.5, sigmoid(np.minimum(v, 0.0)))


def _mingru(p, x, state):
    (h,) = state
    z = sigmoid(x @ p["W_z"] + p["b_z"])
    h_new = (1.0 - z) * h + z * _positive(x @ p["W_h"] + p["b_h"])
    return (h_new,), h_new


def _log_sigmoid(z):
    # log(sigmoid(z)) = -log(1 + exp(-z)), without overflow for any finite z.
    return np.minimum(z, 0.0) - np.log1p(np.exp(-np.abs(z)))


def _minlstm(p, x, state):
    (h,) = state
    # f / (f + i) = 1 / (1 + i / f) = s(log f - log i): no 0 / 0 when both gates underflow.
    d = _log_sigmoid(x @ p["W_f"] + p["b_f"]) - _log_sigmoid(x @ p["W_i"] + p["b_i"])
    h_new = sigmoid(d) * h + sigmoid(-d) * _positive(x @ p["W_h"] + p["b_h"])
    return (h_new,), h_new


def _indrnn(p, x, state):
    (h,) = state
    h_new = np.maximum(x @ p["W"] + p["u"] * h + p["b"], 0.0)
    return (h_new,), h_new


def _cifg_lstm(p, x, state):
    h, c = state
    f = sigmoid(_pre(p, "f", x, h))
    c_new = f * c + (1.0 - f) * np.tanh(_pre(p, "g", x, h))
    h_new = sigmoid(_pre(p, "o", x, h)) * np.tanh(c_new)
    return (h_new, c_new), h_new


def _janet(p, x, state):
    (h,) = state
    s = _pre(p, "f", x, h)
    h_new = sigmoid(s) * h + (1.0 - sigmoid(s - 1.0)) * np.tanh(_pre(p, "c", x, h))
    return (h_new,), h_new


def _mgu(p, x, state):
    (h,) = state
    f = sigmoid(_pre(p, "f", x, h))
    candidate = np.tanh(x @ p["W_h"] + (f * h) @ p["U_h"] + p["b_h"])
    h_new = (1.0 - f) * h + f * candidate
    return (h_new,), h_new


def _keras2_hard_sigmoid(z):
    return np.clip(0.2 * z + 0.5, 0.0, 1.0)


def _keras2_lstm(p, x, state):
    h, c = state
    i, f, o = (_keras2_hard_sigmoid(_pre(p, gate, x, h)) for gate in "ifo")
    c_new = f * c + i * np.tanh(_pre(p, "g", x, h))
    h_new = o * np.tanh(c_new)
    return (h_new, c_new), h_new


def _slstm(p, x, state):
    h, c, n, m = state
    i_raw = _pre(p, "i", x, h)
    log_f = _log_sigmoid(_pre(p, "f", x, h))
    m_new = np.maximum(log_f + m, i_raw)
    i = np.exp(i_raw - m_new)
    f = np.exp(log_f + m - m_new)
    c_new = f * c + i * np.tanh(_pre(p, "z", x, h))
    n_new = f * n + i
    h_new = sigmoid(_pre(p, "o", x, h)) * c_new / n_new
    return (h_new, c_new, n_new, m_new), h_new


_LN_LSTM_EPS = 1e-5


def _ln_lstm(p, x, state):
    h, c = state

    def gate(g):
        xs = layer_norm(x @ p["W_" + g], p[f"gamma_{g}x"], p[f"beta_{g}x"], _LN_LSTM_EPS)
        hs = layer_norm(h @ p["U_" + g], p[f"gamma_{g}h"], p[f"beta_{g}h"], _LN_LSTM_EPS)
        return xs + hs + p["b_" + g]

    i, f, o = sigmoid(gate("i")), sigmoid(gate("f")), sigmoid(gate("o"))
    c_new = f * c + i * np.tanh(gate("g"))
    h_new = o * np.tanh(layer_norm(c_new, p["gamma_c"], p["beta_c"], _LN_LSTM_EPS))
    return (h_new, c_new), h_new


# ---------------------------------------------------------------------------
# Registry
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class CellInfo:
    """Description of one reference cell.

    Attributes:
        name: Cell name, the key in ``CELLS``.
        param_names: Exact parameter names the cell requires.
        state_names: Names of the state arrays, in state-tuple order.
        step: ``step(params, x, state) -> (new_state, y)`` on validated
            float64 inputs.
    """

    name: str
    param_names: tuple[str, ...]
    state_names: tuple[str, ...]
    step: Callable


def _gate_params(*gates):
    return tuple(f"{kind}_{g}" for g in gates for kind in ("W", "U", "b"))


_LSTM_PARAMS = _gate_params("i", "f", "g", "o")

CELLS: dict[str, CellInfo] = {
    info.name: info
    for info in (
        CellInfo("lstm", _LSTM_PARAMS, ("h", "c"), _lstm),
        CellInfo(
            "novolstm",
            _LSTM_PARAMS + _gate_params("s") + ("gamma_i", "beta_i"),
            ("h", "c"),
            _novolstm,
        ),
        CellInfo(
            "novolstm_reference",
            _LSTM_PARAMS + ("W_s", "b_s", "gamma_i", "beta_i"),
            ("h", "c"),
            _novolstm_reference,
        ),
        CellInfo("gru", _gate_params("r", "z", "n") + ("b_hn",), ("h",), _gru),
        CellInfo(
            "peephole_lstm",
            _LSTM_PARAMS + ("p_i", "p_f", "p_o"),
            ("h", "c"),
            _peephole_lstm,
        ),
        CellInfo("mingru", ("W_z", "b_z", "W_h", "b_h"), ("h",), _mingru),
        CellInfo("minlstm", ("W_f", "b_f", "W_i", "b_i", "W_h", "b_h"), ("h",), _minlstm),
        CellInfo("indrnn", ("W", "u", "b"), ("h",), _indrnn),
        CellInfo("cifg_lstm", _gate_params("f", "g", "o"), ("h", "c"), _cifg_lstm),
        CellInfo("janet", _gate_params("f", "c"), ("h",), _janet),
        CellInfo("mgu", _gate_params("f", "h"), ("h",), _mgu),
        CellInfo("keras2_lstm", _LSTM_PARAMS, ("h", "c"), _keras2_lstm),
        CellInfo("slstm", _gate_params("i", "f", "z", "o"), ("h", "c", "n", "m"), _slstm),
        CellInfo(
            "ln_lstm",
            _LSTM_PARAMS
            + tuple(f"{k}_{g}{side}" for g in "ifgo" for side in "xh" for k in ("gamma", "beta"))
            + ("gamma_c", "beta_c"),
            ("h", "c"),
            _ln_lstm,
        ),
    )
}


# ---------------------------------------------------------------------------
# Validation (small: the product validates elsewhere; this only refuses to
# silently broadcast)
# ---------------------------------------------------------------------------


def _cell_info(cell):
    if cell not in CELLS:
        raise ValueError(f"unknown cell {cell!r}; expected one of {sorted(CELLS)}")
    return CELLS[cell]


def _expected_shape(name, I, H):
    kind = name.split("_", 1)[0]
    if kind == "W":
        return (I, H)
    if kind == "U":
        return (H, H)
    return (H,)  # b_, gamma_, beta_, p_


def _check_params(info, params, I):
    """Return float64 copies of ``params`` after checking names and shapes."""
    expected = set(info.param_names)
    given = set(params)
    missing = sorted(expected - given)
    extra = sorted(given - expected)
    if missing or extra:
        raise ValueError(
            f"cell {info.name!r} expects params {list(info.param_names)}; missing {missing}, unexpected {extra}"
        )
    p = {name: np.asarray(params[name], dtype=np.float64) for name in info.param_names}
    first_w = info.param_names[0]  # W_i or W_r
    if p[first_w].ndim != 2:
        raise ValueError(f"{first_w} must be 2-D (I, H); got shape {p[first_w].shape}")
    H = p[first_w].shape[1]
    for name in info.param_names:
        want = _expected_shape(name, I, H)
        if p[name].shape != want:
            raise ValueError(
                f"param {name!r} of cell {info.name!r} must have shape {want} (I={I}, H={H}); got {p[name].shape}"
            )
    return p, H


def _check_state(info, state, B, H):
    if not isinstance(state, (tuple, list)) or len(state) != len(info.state_names):
        raise ValueError(f"cell {info.name!r} expects a state tuple {info.state_names}; got {state!r}")
    out = []
    for name, s in zip(info.state_names, state):
        s = np.array(s, dtype=np.float64)  # copy: never alias the caller's array
        if s.shape != (B, H):
            raise ValueError(f"state {name!r} must have shape {(B, H)}; got {s.shape}")
        out.append(s)
    return tuple(out)


# ---------------------------------------------------------------------------
# Public entry points
# ---------------------------------------------------------------------------


def step(cell, params, x, state):
    """One time step of ``cell``.

    Args:
        cell: A key of ``CELLS``.
        params: Dict of exactly ``CELLS[cell].param_names`` -> arrays.
        x: Input of shape ``(B, I)``.
        state: Tuple of ``(B, H)`` arrays in ``CELLS[cell].state_names`` order.

    Returns:
        ``(new_state, y)``: the new state tuple and the output ``y`` (B, H),
        all float64.

    Raises:
        ValueError: Unknown cell, missing/extra params, or wrong shapes.
    """
    info = _cell_info(cell)
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"x must have shape (B, I); got {x.shape}")
    B, I = x.shape
    p, H = _check_params(info, params, I)
    state = _check_state(info, state, B, H)
    return info.step(p, x, state)


def _resolve_mask(mask, lengths, B, T):
    if mask is not None and lengths is not None:
        raise ValueError("give either mask or lengths, not both")
    if lengths is not None:
        lengths = np.asarray(lengths)
        if lengths.shape != (B,) or not np.issubdtype(lengths.dtype, np.integer):
            raise ValueError(f"lengths must be integers of shape {(B,)}; got {lengths.dtype} {lengths.shape}")
        if np.any(lengths < 0) or np.any(lengths > T):
            raise ValueError(f"lengths must lie in [0, {T}]; got {lengths.tolist()}")
        return np.arange(T)[None, :] < lengths[:, None]
    if mask is None:
        return np.ones((B, T), dtype=bool)
    mask = np.asarray(mask)
    if mask.shape != (B, T) or mask.dtype != np.bool_:
        raise ValueError(f"mask must be boolean of shape {(B, T)}; got {mask.dtype} {mask.shape}")
    return mask


def run(cell, params, x, state=None, mask=None, lengths=None):
    """Run ``cell`` over a whole sequence, applying the masking rule.

    On a masked (``False``) step the row's state carries through unchanged and
    its output is exactly zero.

    Args:
        cell: A key of ``CELLS``.
        params: Dict of exactly ``CELLS[cell].param_names`` -> arrays.
        x: Inputs of shape ``(B, T, I)``.
        state: Initial state tuple in ``CELLS[cell].state_names`` order, each
            ``(B, H)``; ``None`` means zeros.
        mask: Optional boolean ``(B, T)``; ``True`` marks a real step.
        lengths: Optional ``(B,)`` ints (right padding):
            ``mask[b, t] = t < lengths[b]``.  Not together with ``mask``.

    Returns:
        ``(outputs, final_state)``: outputs ``(B, T, H)`` float64 and the
        final state tuple in state order.

    Raises:
        ValueError: Unknown cell, bad params or shapes, or both ``mask`` and
            ``lengths`` given.

    Examples:
        >>> import numpy as np
        >>> from novolstm.reference import CELLS, run
        >>> rng = np.random.default_rng(0)
        >>> B, T, I, H = 2, 3, 4, 5
        >>> shapes = {"W": (I, H), "U": (H, H), "b": (H,)}
        >>> params = {n: rng.normal(size=shapes[n[0]])
        ...           for n in CELLS["lstm"].param_names}
        >>> x = rng.normal(size=(B, T, I))
        >>> y, (h, c) = run("lstm", params, x, lengths=[3, 1])
        >>> y.shape, h.shape, c.shape
        ((2, 3, 5), (2, 5), (2, 5))
        >>> bool(np.all(y[1, 1:] == 0.0))  # padded steps output zeros
        True
        >>> bool(np.array_equal(h, np.stack([y[0, 2], y[1, 0]])))  # last real step
        True
    """
    info = _cell_info(cell)
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 3:
        raise ValueError(f"x must have shape (B, T, I); got {x.shape}")
    B, T, I = x.shape
    p, H = _check_params(info, params, I)
    if state is None:
        state = tuple(np.zeros((B, H)) for _ in info.state_names)
    state = _check_state(info, state, B, H)
    mask = _resolve_mask(mask, lengths, B, T)

    outputs = np.zeros((B, T, H), dtype=np.float64)
    for t in range(T):
        new_state, y = info.step(p, x[:, t, :], state)
        keep = mask[:, t][:, None]  # (B, 1)
        state = tuple(np.where(keep, new, old) for new, old in zip(new_state, state))
        outputs[:, t, :] = np.where(keep, y, 0.0)
    return outputs, state
