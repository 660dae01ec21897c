"""Linear recurrences and parallel scans.

A cell whose every next state is affine in that state alone, with coefficients that do not
depend on any state (``h' = a * h + b``, ``a`` and ``b`` functions of the input: minGRU,
minLSTM), need not run as a loop: the pairs ``(a_t, b_t)`` compose associatively,
``(a1, b1) then (a2, b2) = (a2 * a1, a2 * b1 + b2)``, so a parallel scan gives every
``h_t`` in far fewer than ``T`` sequential steps (``associative_scan``: about
``2 sqrt(T)``). ``linear_recurrence`` decides this structurally on the lowered IR (as
``novolstm.ir.computes_standard_lstm`` decides the standard LSTM), whatever the names;
``run`` evaluates the coefficients for every timestep at once (float64 or float32 NumPy)
and scans them. The generated torch, JAX and Keras modules run the same scan (``scan=``;
see docs/scan.md), deciding with ``scan_output_index``.

Masking follows the project rule: a masked step is the identity pair ``(1, 0)`` (the state
carries through) and outputs zero. ``reverse=True`` scans from the last step to the first.

Examples:
    >>> import numpy as np
    >>> import novolstm
    >>> linear_recurrence(novolstm.load_spec("mingru")), linear_recurrence(novolstm.load_spec("gru"))
    (('h',), None)
    >>> p = novolstm.init_params("minlstm", input_size=3, units=4, seed=0)
    >>> x = np.random.default_rng(0).normal(size=(2, 50, 3))
    >>> scanned, _ = run("minlstm", p, x)
    >>> looped, _ = novolstm.run("minlstm", p, x)
    >>> bool(np.abs(scanned - looped).max() < 1e-12)
    True
"""

from __future__ import annotations

import math
import os

import numpy as np

from . import interpret
from .call import prepare_call
from .expr import Binary, Call, Const, Expr, Name, Neg, names_in
from .ir import lower
from .spec_loader import load_spec
from .spec_model import Spec

__all__ = ["linear_recurrence", "scan_output_index", "associative_scan", "run"]

#: Ops through which an affine value stays affine (with the other operand state-free).
_AFFINE_OPS = ("add", "sub", "neg", "mul", "div")


def linear_recurrence(spec: Spec) -> tuple[str, ...] | None:
    """The states of a recurrence linear in its state with state-free coefficients, else None.

    Every next state must be ``a * s + b`` in its own state ``s`` (elementwise), ``a`` and
    ``b`` reading no state; the output must be one of the next states. Decided on the
    lowered step graph: a state enters only through ``add``, ``sub``, ``neg``, a ``mul`` by a
    state-free factor and a ``div`` by a state-free divisor; anything else (a projection
    ``h @ U``, an activation, a product of two states) makes the cell a loop.

    Args:
        spec: A loaded spec.

    Returns:
        The state names in order, or None where the cell is not such a recurrence.

    Examples:
        >>> import novolstm
        >>> linear_recurrence(novolstm.load_spec("minlstm")), linear_recurrence(novolstm.load_spec("indrnn"))
        (('h',), None)
    """
    graph = lower(spec)
    # kind: None (reads no state), a state name (affine in that state), or "loop".
    kind: dict[str, str | None] = {}
    for n in graph.nodes:
        args = [kind[a] for a in n.args]
        if n.op == "state":
            kind[n.name] = n.name
        elif all(a is None for a in args):
            kind[n.name] = None
        elif "loop" in args or n.op not in _AFFINE_OPS:
            kind[n.name] = "loop"
        elif n.op in ("add", "sub", "neg"):
            states = {a for a in args if a is not None}
            kind[n.name] = states.pop() if len(states) == 1 else "loop"
        elif n.op == "mul":
            kind[n.name] = args[0] if args[1] is None else args[1] if args[0] is None else "loop"
        else:  # div: only a state-free divisor
            kind[n.name] = args[0] if args[1] is None else "loop"
    for role, node in graph.outputs.items():
        if role.startswith("state:") and kind[node] != role.split(":", 1)[1]:
            return None
    if graph.outputs["output"] not in {graph.outputs[f"state:{s}"] for s in spec.state_names}:
        return None
    return tuple(spec.state_names)


def scan_output_index(spec: Spec) -> int | None:
    """Where ``spec`` is a linear recurrence, the index of the state its output is; else None.

    What a generated module needs to run the scan (``LINEAR_SCAN``): the output of such a
    cell is one of its next states.

    Args:
        spec: A loaded spec.

    Returns:
        An index into ``spec.state_names``, or None.

    Examples:
        >>> import novolstm
        >>> scan_output_index(novolstm.load_spec("mingru")), scan_output_index(novolstm.load_spec("lstm"))
        (0, None)
    """
    if linear_recurrence(spec) is None:
        return None
    return [nxt for _, nxt in spec.state].index(spec.output)


def associative_scan(a: np.ndarray, b: np.ndarray, h0: np.ndarray) -> np.ndarray:
    """Every ``h_t = a_t * h_{t-1} + b_t`` (time on axis 0), in about ``2 sqrt(T)`` vectorized steps.

    The steps are cut into ``n`` chunks of ``C = ceil(sqrt(T))``: one pass walks the ``C``
    positions of every chunk at once (each chunk's running product and its state from zero),
    one walks the ``n`` chunks (the state entering each), and one broadcast adds
    ``product * entering``. Only products and sums, in the loop's order within a chunk: no
    division or logarithm, so ``a`` may be zero or negative and float64 agrees with the loop
    to rounding. (Measured against Hillis and Steele's log-depth scan in chunks, which does
    ``log2 C`` full passes, and the log-space form, which needs ``a, b > 0`` and loses digits in
    its global cumulative sums: this is faster than both on CPU; see docs/scan.md.) The torch
    and JAX backends run the same formulation (torch) or jax.lax.associative_scan (JAX).

    Args:
        a: Coefficients (time, ...).
        b: Offsets, the shape of ``a``.
        h0: The state before the first step, ``a.shape[1:]``.

    Returns:
        The states after each step, the shape of ``a``.

    Examples:
        >>> a, b = np.full((5, 1), 0.5), np.ones((5, 1))
        >>> associative_scan(a, b, np.zeros(1)).ravel().tolist()
        [1.0, 1.5, 1.75, 1.875, 1.9375]
    """
    steps = len(a)
    if steps == 0:
        return np.array(b, copy=True)
    size = math.isqrt(steps - 1) + 1  # chunk length: ceil(sqrt(T))
    chunks = -(-steps // size)
    pad = chunks * size - steps  # identity pairs (1, 0) after the last step
    a = np.concatenate([a, np.ones((pad,) + a.shape[1:], a.dtype)]).reshape((chunks, size) + a.shape[1:])
    b = np.concatenate([b, np.zeros((pad,) + b.shape[1:], b.dtype)]).reshape((chunks, size) + b.shape[1:])
    prod, h = np.empty_like(a), np.empty_like(b)
    prod[:, 0], h[:, 0] = a[:, 0], b[:, 0]
    for k in range(1, size):
        np.multiply(a[:, k], prod[:, k - 1], out=prod[:, k])
        np.multiply(a[:, k], h[:, k - 1], out=h[:, k])
        h[:, k] += b[:, k]
    entering = np.empty((chunks,) + a.shape[2:], a.dtype)
    entering[0] = h0
    for c in range(1, chunks):
        entering[c] = prod[c - 1, -1] * entering[c - 1] + h[c - 1, -1]
    h += prod * entering[:, None]
    return h.reshape((chunks * size,) + h.shape[2:])[:steps]


def _reads(spec: Spec, root: str) -> set[str]:
    """The equations ``root`` depends on, itself included."""
    equations = dict(spec.equations)
    found, todo = set(), [root]
    while todo:
        name = todo.pop()
        if name in equations and name not in found:
            found.add(name)
            todo.extend(names_in(equations[name]))
    return found


def _affine(expr: Expr, env: dict, state: str, epsilon) -> tuple:
    """``(a, b)`` with ``expr = a * state + b``; ``a`` None where ``expr`` reads no state."""
    if isinstance(expr, Name):
        if expr.id == state:
            return 1.0, 0.0
        return env[expr.id]
    if isinstance(expr, Const):
        return None, expr.value
    if isinstance(expr, Neg):
        a, b = _affine(expr.arg, env, state, epsilon)
        return (None if a is None else -a), -b
    if isinstance(expr, Binary) and expr.op in ("+", "-"):
        (a1, b1), (a2, b2) = (_affine(e, env, state, epsilon) for e in (expr.left, expr.right))
        sign = 1.0 if expr.op == "+" else -1.0
        a = a1 if a2 is None else sign * a2 if a1 is None else a1 + sign * a2
        return a, b1 + sign * b2
    if isinstance(expr, Binary) and expr.op in ("*", "/"):
        (a1, b1), (a2, b2) = (_affine(e, env, state, epsilon) for e in (expr.left, expr.right))
        if expr.op == "/":  # linear_recurrence admits a state-free divisor only
            return (None if a1 is None else a1 / b2), b1 / b2
        if a1 is None:
            return (None if a2 is None else b1 * a2), b1 * b2
        return a1 * b2, b1 * b2
    # Anything else reads no state (linear_recurrence checked): the interpreter's value.
    free = {k: v[1] for k, v in env.items()}
    return None, interpret._value(expr, free, epsilon) if isinstance(expr, (Binary, Call)) else None


def run(
    spec: str | os.PathLike | Spec, params: dict, x, state=None, mask=None, lengths=None, reverse=False, dtype=None
):
    """Run a linear recurrence (see ``linear_recurrence``) as a parallel scan.

    Args:
        spec: A built-in name, a path or a loaded spec whose ``linear_recurrence`` is not None.
        params: Canonical parameters.
        x: Inputs (batch, time, input).
        state: Initial state tuple; None means zeros.
        mask: Optional bool (batch, time), True on real steps.
        lengths: Optional lengths (batch,), not with ``mask``.
        reverse: Scan from the last step to the first (outputs stay in time order).
        dtype: "float64" or "float32"; None: float64.

    Returns:
        ``(outputs, final_state)`` as ``novolstm.run`` gives them.

    Raises:
        ValueError: The spec is not a linear recurrence, or as ``novolstm.run``.

    Examples:
        >>> import novolstm
        >>> p = novolstm.init_params("mingru", input_size=2, units=3)
        >>> outputs, (h,) = run("mingru", p, np.ones((1, 4, 2)), reverse=True)
        >>> bool(np.array_equal(outputs[0, 0], h[0]))  # reversed: the first step is the last one run
        True
    """
    spec = load_spec(spec)
    states = linear_recurrence(spec)
    if states is None:
        raise ValueError(
            f"{spec.name}: not a recurrence linear in its state with state-free coefficients; run it as a loop"
        )
    call = prepare_call(spec, params, x, state, mask, lengths, dtype or "float64")
    batch, steps, _ = call.x.shape
    units = np.shape(call.params[spec.params[0].name])[-1]
    xs = np.swapaxes(call.x, 0, 1)  # time-major
    if reverse:
        xs = xs[::-1]
    env = {spec.input: (None, xs), **{p: (None, v) for p, v in call.params.items()}}
    epsilon = spec.numerics.layer_norm_epsilon
    finals, outputs = [], None
    masks = None if call.mask is None else np.swapaxes(call.mask, 0, 1)[:: -1 if reverse else 1][..., None]
    for k, (name, nxt) in enumerate(spec.state):
        env_k = dict(env)
        needed = _reads(spec, nxt)  # not another state's equations: they read that state
        for eq, expr in spec.equations:
            if eq in needed:
                env_k[eq] = _affine(expr, env_k, name, epsilon)
        a, b = env_k[nxt]
        shape = (steps, batch, units)
        a = np.broadcast_to(0.0 if a is None else a, shape).astype(xs.dtype)
        b = np.broadcast_to(b, shape).astype(xs.dtype)
        if masks is not None:  # a masked step is the identity: the state carries through
            a, b = np.where(masks, a, 1.0).astype(xs.dtype), np.where(masks, b, 0.0).astype(xs.dtype)
        h0 = np.zeros((batch, units), xs.dtype) if call.state is None else call.state[k]
        hs = associative_scan(a, b, h0)
        finals.append(hs[-1] if steps else h0)
        if nxt == spec.output:
            outputs = hs if masks is None else np.where(masks, hs, 0.0)
    assert outputs is not None  # linear_recurrence admits only specs whose output is a next state
    if reverse:
        outputs = outputs[::-1]
    return np.ascontiguousarray(np.swapaxes(outputs, 0, 1)), tuple(finals)
