"""A float64 interpreter of any cell spec: the oracle for specs without a hand-written reference.

It evaluates the parsed expressions of ``Spec.equations`` (already in dependency
order) one time step at a time with plain NumPy. It shares only the parser and the spec
model with code generation: no IR, no passes, no fusion, no hoisting, so a bug in the
compiler cannot hide in the expected values. It imports nothing from
``novolstm.reference`` either; tests hold the two oracles to each other on the
built-in cells.

Numerics are the ones the project pins (docs/numerics.md): the exact logistic
sigmoid, evaluated without overflow for any finite input; softmax over the units axis
with the maximum subtracted; LayerNorm over the units axis with the spec's epsilon and
the two-pass population variance. Masking follows the project rule: on a masked step
a batch row keeps its state and outputs exactly zero.

Examples:
    >>> import numpy as np
    >>> import novolstm
    >>> from novolstm import interpret
    >>> spec = novolstm.loads_spec('''
    ... spec_version = 1
    ... name = "damped_rnn"
    ... description = "An Elman cell whose output is damped by a parameter-only factor."
    ... input = "x"
    ... output = "h_next"
    ... state = { h = "h_next" }
    ... params = { W = { shape = ["input", "units"], init = "glorot_uniform" }, U = { shape = ["units", "units"], init = "orthogonal" }, b = { shape = ["units"], init = "zeros" } }
    ... equations = { h_next = "tanh(x @ W + h @ U) * (1 - b)" }
    ... ''')
    >>> params = novolstm.init_params(spec, input_size=3, units=2, seed=0)
    >>> x = np.random.default_rng(0).normal(size=(4, 5, 3))
    >>> outputs, (h,) = interpret.run(spec, params, x, lengths=np.array([5, 3, 0, 1]))
    >>> outputs.shape, h.shape
    ((4, 5, 2), (4, 2))
    >>> bool(np.all(outputs[1, 3:] == 0.0)) and bool(np.all(h[2] == 0.0))  # masked steps
    True
    >>> bool(np.array_equal(h[1], outputs[1, 2]))  # the state of the last real step
    True
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable

import numpy as np

from .call import prepare_call
from .expr import Binary, Const, Expr, Name, Neg
from .spec_loader import load_spec
from .spec_model import Spec

__all__ = ["evaluate", "layer_norm", "run", "sigmoid", "softmax", "step"]


# ---------------------------------------------------------------- the functions of the language


def sigmoid(z: np.ndarray) -> np.ndarray:
    """The exact logistic ``1 / (1 + exp(-z))``; only ``exp(-|z|)`` is evaluated, so it never overflows.

    Examples:
        >>> sigmoid(np.array([-1000.0, 0.0, 1000.0])).tolist()
        [0.0, 0.5, 1.0]
    """
    with np.errstate(under="ignore"):
        e = np.exp(-np.abs(z))
        return np.where(z >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


def softmax(z: np.ndarray) -> np.ndarray:
    """Softmax over the last (units) axis, with the row maximum subtracted first.

    Examples:
        >>> softmax(np.array([[1000.0, 1000.0]])).tolist()
        [[0.5, 0.5]]
    """
    with np.errstate(under="ignore"):
        e = np.exp(z - z.max(axis=-1, keepdims=True))
        return e / e.sum(axis=-1, keepdims=True)


def layer_norm(z: np.ndarray, gamma: np.ndarray, beta: np.ndarray, epsilon: float) -> np.ndarray:
    """LayerNorm over the last axis: two-pass population variance, then ``gamma`` and ``beta``.

    Examples:
        >>> layer_norm(np.array([[1.0, 3.0]]), np.ones(2), np.zeros(2), 0.0).tolist()
        [[-1.0, 1.0]]
    """
    centred = z - z.mean(axis=-1, keepdims=True)
    with np.errstate(under="ignore"):
        variance = (centred * centred).mean(axis=-1, keepdims=True)
        return centred / np.sqrt(variance + epsilon) * gamma + beta


def softplus(z: np.ndarray) -> np.ndarray:
    """``log(1 + exp(z))`` as ``max(z, 0) + log1p(exp(-|z|))``, which never overflows.

    Examples:
        >>> softplus(np.array([-1000.0, 0.0, 1000.0])).tolist() == [0.0, math.log(2.0), 1000.0]
        True
    """
    with np.errstate(under="ignore"):
        return np.maximum(z, 0.0) + np.log1p(np.exp(-np.abs(z)))


def gelu(z: np.ndarray) -> np.ndarray:
    """The exact GELU, ``z * Phi(z)`` with the standard normal's cdf through ``math.erf``.

    Examples:
        >>> gelu(np.array([0.0, 1.0])).round(6).tolist()
        [0.0, 0.841345]
    """
    return np.array([0.5 * v * (1.0 + math.erf(v / math.sqrt(2.0))) for v in np.ravel(z)]).reshape(np.shape(z))


def _ieee(function):
    # The domain rule: IEEE 754 results (log 0 = -inf, log -1 = nan, 1 / 0 = inf), no warnings.
    def quiet(*args):
        with np.errstate(divide="ignore", invalid="ignore", over="ignore", under="ignore"):
            return function(*args)

    return quiet


_UNARY: dict[str, Callable[..., np.ndarray]] = {
    "sigmoid": sigmoid,
    "tanh": np.tanh,
    "relu": lambda z: np.maximum(z, 0.0),
    "softmax": softmax,
    "exp": _ieee(np.exp),
    "log": _ieee(np.log),
    "sqrt": _ieee(np.sqrt),
    "abs": np.abs,
    "softplus": softplus,
    "log_sigmoid": lambda z: -softplus(-z),
    "gelu": gelu,
    "hard_sigmoid": lambda z: np.minimum(np.maximum(z + 3.0, 0.0), 6.0) / 6.0,  # relu6(z + 3) / 6
    "keras2_hard_sigmoid": lambda z: np.clip(0.2 * z + 0.5, 0.0, 1.0),
    "maximum": np.maximum,
    "minimum": np.minimum,
    "clip": lambda z, lo, hi: np.minimum(np.maximum(z, lo), hi),
}


# ---------------------------------------------------------------- one expression, one step


def _value(expr: Expr, env: dict, epsilon: float):
    """The value of ``expr`` given every name it reads in ``env`` (arrays or floats)."""
    if isinstance(expr, Name):
        return env[expr.id]
    if isinstance(expr, Const):
        return expr.value
    if isinstance(expr, Neg):
        return -_value(expr.arg, env, epsilon)
    if isinstance(expr, Binary):
        left, right = _value(expr.left, env, epsilon), _value(expr.right, env, epsilon)
        if expr.op == "+":
            return left + right
        if expr.op == "-":
            return left - right
        if expr.op == "*":
            return left * right
        if expr.op == "/":
            return _ieee(np.divide)(left, right)
        return left @ right  # "@": a batch of rows times a parameter matrix (the loader checked it)
    if expr.fn == "layer_norm":
        z, gamma, beta = (_value(a, env, epsilon) for a in expr.args)
        return layer_norm(z, gamma, beta, epsilon)
    return _UNARY[expr.fn](*(_value(a, env, epsilon) for a in expr.args))


def evaluate(spec: Spec, params: dict, x_t: np.ndarray, state: tuple) -> dict:
    """Every equation of one step, on inputs already validated and in float64.

    Args:
        spec: A loaded spec.
        params: Canonical parameters, name -> float64 array.
        x_t: One step of input, shape (batch, input).
        state: The state tuple in ``spec.state_names`` order, each (batch, units).

    Returns:
        A dict of every name of the step (input, states, parameters and each equation)
        to its value; an equation that reads no batched value keeps its own shape,
        (units,) or a scalar.

    Examples:
        >>> import novolstm
        >>> spec = novolstm.load_spec("gru")
        >>> p = novolstm.init_params(spec, input_size=2, units=3)
        >>> values = evaluate(spec, p, np.ones((1, 2)), (np.zeros((1, 3)),))
        >>> values["r"].shape, values["h_next"].shape
        ((1, 3), (1, 3))
    """
    env = dict(params)
    env[spec.input] = x_t
    env.update(zip(spec.state_names, state))
    # The loader requires an epsilon wherever layer_norm is called; it is unused otherwise.
    epsilon = spec.numerics.layer_norm_epsilon or 0.0
    for name, expr in spec.equations:  # the loader ordered them: every name is defined before use
        env[name] = _value(expr, env, epsilon)
    return env


def _step(spec: Spec, params: dict, x_t: np.ndarray, state: tuple):
    env = evaluate(spec, params, x_t, state)
    new_state = tuple(np.broadcast_to(env[nxt], s.shape).astype(np.float64) for (_, nxt), s in zip(spec.state, state))
    return new_state, np.broadcast_to(env[spec.output], state[0].shape).astype(np.float64)


# ---------------------------------------------------------------- public entry points


def _zeros_state(spec: Spec, batch: int, params: dict) -> tuple:
    units = np.shape(params[spec.params[0].name])[-1]
    return tuple(np.zeros((batch, units)) for _ in spec.state_names)


def step(spec: str | os.PathLike | Spec, params: dict, x_t, state=None):
    """One time step of ``spec`` in float64.

    Args:
        spec: A built-in name, a path to a spec file, or a loaded spec.
        params: Canonical parameters, name -> array (see ``Spec.parameter_shapes``).
        x_t: Input of shape (batch, input).
        state: State tuple in ``spec.state_names`` order, each (batch, units); None means zeros.

    Returns:
        ``(new_state, y)``: the next state tuple and the output (batch, units), float64.

    Raises:
        ValueError: Wrong shapes, missing or unexpected parameters, non-finite values.
        TypeError: Non-numeric arrays.
        SpecError: ``spec`` does not load.

    Examples:
        >>> import novolstm
        >>> p = novolstm.init_params("lstm", input_size=2, units=3)
        >>> (h, c), y = step("lstm", p, np.ones((4, 2)))
        >>> h.shape, bool(np.array_equal(h, y))
        ((4, 3), True)
    """
    spec = load_spec(spec)
    x_t = np.asarray(x_t)
    if x_t.ndim != 2:
        raise ValueError(f"x_t: expected shape (batch, input), got {x_t.shape}")
    call = prepare_call(spec, params, x_t[:, None, :], state, None, None, "float64")
    state = call.state if call.state is not None else _zeros_state(spec, x_t.shape[0], call.params)
    return _step(spec, call.params, call.x[:, 0, :], state)


def run(spec: str | os.PathLike | Spec, params: dict, x, state=None, mask=None, lengths=None):
    """Run ``spec`` over a batch of sequences in float64, applying the masking rule.

    On a masked (False) step a batch row keeps its state unchanged and its output is
    exactly zero; ``lengths`` (batch,) means ``mask[b, t] = t < lengths[b]``.

    Args:
        spec: A built-in name, a path to a spec file, or a loaded spec.
        params: Canonical parameters, name -> array (see ``Spec.parameter_shapes``).
        x: Inputs of shape (batch, time, input).
        state: Initial state tuple in ``spec.state_names`` order, each (batch, units);
            None means zeros.
        mask: Optional bool (batch, time), True on real steps.
        lengths: Optional non-negative ints (batch,) for right-padded batches; not
            together with ``mask``.

    Returns:
        ``(outputs, final_state)``: outputs (batch, time, units) and the final state
        tuple in ``spec.state_names`` order, all float64.

    Raises:
        ValueError: Wrong shapes, an empty sequence or batch, missing or unexpected
            parameters, non-finite values, bad lengths, or both ``mask`` and ``lengths``.
        TypeError: Non-numeric arrays.
        SpecError: ``spec`` does not load.

    Examples:
        >>> import novolstm
        >>> p = novolstm.init_params("novolstm", input_size=3, units=4, seed=1)
        >>> x = np.random.default_rng(1).normal(size=(2, 6, 3))
        >>> mine, _ = run("novolstm", p, x, mask=np.array([[True] * 6, [True, False] * 3]))
        >>> theirs, _ = novolstm.reference.run("novolstm", p, x, mask=np.array([[True] * 6, [True, False] * 3]))
        >>> bool(np.abs(mine - theirs).max() < 1e-13)
        True
    """
    spec = load_spec(spec)
    call = prepare_call(spec, params, x, state, mask, lengths, "float64")
    batch, steps, _ = call.x.shape
    state = call.state if call.state is not None else _zeros_state(spec, batch, call.params)
    state = tuple(s.copy() for s in state)  # never alias the caller's arrays
    mask = call.mask if call.mask is not None else np.ones((batch, steps), dtype=bool)
    units = state[0].shape[1]
    outputs = np.zeros((batch, steps, units))
    for t in range(steps):
        new_state, y = _step(spec, call.params, call.x[:, t, :], state)
        keep = mask[:, t, None]
        state = tuple(np.where(keep, new, old) for new, old in zip(new_state, state))
        outputs[:, t, :] = np.where(keep, y, 0.0)
    return outputs, state
