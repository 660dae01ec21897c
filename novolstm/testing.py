"""Public test helpers: the tolerance table and an ``assert_close`` that checks structure first.

Use them to test your own implementation of a spec the way novolstm tests its
backends.

Examples:
    >>> import numpy as np
    >>> assert_close(np.float32([1.0, 2.0]), np.float64([1.0, 2.0000001]), what="outputs") < 1e-6
    True
    >>> assert_close(np.zeros((2, 3)), np.zeros((3, 2)), what="outputs")
    Traceback (most recent call last):
    ...
    AssertionError: outputs: shape (2, 3) differs from the expected (3, 2)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Tolerance:
    """``|actual - expected| <= atol + rtol * |expected|``, elementwise."""

    atol: float
    rtol: float

    def scaled(self, factor: float) -> Tolerance:
        return Tolerance(self.atol * factor, self.rtol * factor)

    def bound(self, expected) -> np.ndarray:
        """The largest deviation allowed at each element of ``expected``."""
        return self.atol + self.rtol * np.abs(np.asarray(expected, np.float64))


#: One table for every comparison with the float64 reference, keyed by the dtype the
#: implementation under test computes in. See docs/numerics.md for the measurements.
TOLERANCES = {
    "float64": Tolerance(atol=1e-12, rtol=1e-10),
    "float32": Tolerance(atol=2e-5, rtol=2e-4),
    "bfloat16": Tolerance(atol=5e-2, rtol=5e-2),
    "float16": Tolerance(atol=1e-2, rtol=1e-2),
}

#: Where a framework computes below the precision it is asked for:
#: (backend, KERAS_BACKEND) -> (the dtype it really computes in, why).
PRECISION_LIMITS = {
    ("keras", "jax"): (
        "float32",
        "Keras 3.15 runs ops.tanh and ops.mean in float32 on JAX for float64 inputs (keras-team/keras#23225)",
    ),
    ("keras", "torch"): (
        "float32",
        "Keras 3.15 runs ops.matmul and ops.mean in float32 on torch for float64 inputs (keras-team/keras#23225)",
    ),
}


def precision_limit(backend: str, keras_backend: str | None = None):
    """Where a framework is known to compute below the precision it is asked for.

    Args:
        backend: a backend name.
        keras_backend: for keras, the backend Keras runs on (``KERAS_BACKEND``).

    Returns:
        ``(dtype, reason)``: the dtype it really computes in and why; None where it keeps
        the precision it is asked for.

    Examples:
        >>> precision_limit("keras", keras_backend="jax")[0]
        'float32'
        >>> precision_limit("torch") is None
        True
    """
    import os

    return PRECISION_LIMITS.get((backend, keras_backend or os.environ.get("KERAS_BACKEND", "tensorflow")))


def computes_in(backend: str, dtype, keras_backend: str | None = None) -> str:
    """The dtype whose tolerance applies to ``backend`` asked to compute in ``dtype``.

    Args:
        backend: a backend name.
        dtype: the dtype it is asked to compute in.
        keras_backend: for keras, the backend Keras runs on.

    Returns:
        The dtype's name: ``dtype`` itself, or the lower precision ``precision_limit`` names.
    """
    limit = precision_limit(backend, keras_backend)
    return limit[0] if limit and np.dtype(dtype) == np.float64 else np.dtype(dtype).name


#: Rounding error grows with the number of recurrent steps it passes through; beyond
#: this many steps the tolerance grows with the square root of the length.
STEPS_BEFORE_GROWTH = 16


def tolerance(dtype, steps: int = 1, kind: str = "outputs") -> Tolerance:
    """The tolerance for a result computed in ``dtype`` over ``steps`` time steps.

    Args:
        dtype: the dtype the result was computed in (float64, float32, float16, bfloat16).
        steps: the recurrent steps it passed through; beyond ``STEPS_BEFORE_GROWTH`` the
            tolerance grows with the square root of the length.
        kind: "outputs", or "gradients" (ten times wider: a gradient sums over every step and row).

    Returns:
        A ``Tolerance`` (``atol``, ``rtol``).

    Raises:
        KeyError: a dtype the table has no entry for.

    Examples:
        >>> tolerance("float64").atol
        1e-12
        >>> tolerance("float32", steps=64).atol > tolerance("float32", steps=8).atol
        True
    """
    name = np.dtype(dtype).name if str(dtype) != "bfloat16" else "bfloat16"
    if name not in TOLERANCES:
        raise KeyError(f"no tolerance for dtype {name!r}; expected one of {sorted(TOLERANCES)}")
    tol = TOLERANCES[name].scaled(max(1.0, (steps / STEPS_BEFORE_GROWTH) ** 0.5))
    return tol.scaled(10.0) if kind == "gradients" else tol


def pairwise_tolerance(dtype_a, dtype_b, steps: int = 1, kind: str = "outputs") -> Tolerance:
    """The tolerance between two implementations that each pass against the float64 reference.

    No new numbers: if ``|a - r| <= A_a + R_a |r|`` and
    ``|b - r| <= A_b + R_b |r|``, then by the triangle inequality, and with
    ``|r| <= (|b| + A_b) / (1 - R_b)``, ``|a - b| <= A + R |b|`` for ``R = (R_a + R_b) / (1 - R_b)``
    and ``A = A_a + A_b + R A_b``: the sum of the two table entries, to first order. Use it with
    ``b`` as the expected side of ``assert_close``. Pairs agree far more closely in practice
    (docs/numerics.md has the measured worst pairwise deviations).

    Args:
        dtype_a: the dtype one side really computes in (see ``computes_in``).
        dtype_b: the dtype the other side really computes in.
        steps: the recurrent steps, as for ``tolerance``.
        kind: "outputs" or "gradients", as for ``tolerance``.

    Returns:
        A ``Tolerance`` for ``|a - b|`` with ``b`` as the expected side.

    Examples:
        >>> t = pairwise_tolerance("float32", "float64")
        >>> round(t.atol, 9), round(t.rtol, 6)
        (2e-05, 0.0002)
        >>> pairwise_tolerance("float32", "float32").atol > tolerance("float32").atol
        True
    """
    a, b = tolerance(dtype_a, steps, kind), tolerance(dtype_b, steps, kind)
    rtol = (a.rtol + b.rtol) / (1.0 - b.rtol)
    return Tolerance(atol=a.atol + b.atol + rtol * b.atol, rtol=rtol)


def assert_close(actual, expected, tol: Tolerance | None = None, what: str = "value") -> float:
    """Assert ``actual`` matches ``expected``: shape first, then values.

    Args:
        actual: the array under test.
        expected: the array it must match.
        tol: the tolerance; default: the table entry for ``actual``'s dtype.
        what: the name the failure message gives the array.

    Returns:
        The largest absolute deviation.

    Raises:
        AssertionError: another shape, a value beyond the tolerance, or NaN anywhere.
    """
    actual = np.asarray(actual)
    expected = np.asarray(expected)
    if actual.shape != expected.shape:
        raise AssertionError(f"{what}: shape {actual.shape} differs from the expected {expected.shape}")
    if actual.dtype.kind != "f":
        raise AssertionError(f"{what}: dtype {actual.dtype} is not a float dtype")
    tol = tol or tolerance(actual.dtype)
    a, e = actual.astype(np.float64), expected.astype(np.float64)
    if not np.isfinite(a).all():
        raise AssertionError(f"{what}: non-finite values where the expected ones are finite")
    error = np.abs(a - e)
    bound = tol.bound(e)
    if (error > bound).any():
        index = np.unravel_index(np.argmax(error - bound), error.shape)
        raise AssertionError(
            f"{what}: max deviation {error.max():.3e}; at {tuple(int(i) for i in index)} got {a[index]!r}, "
            f"expected {e[index]!r} (atol {tol.atol:.1e}, rtol {tol.rtol:.1e})"
        )
    return float(error.max()) if error.size else 0.0


def random_params(spec, input_size: int, units: int, rng, scale: float = 0.5) -> dict[str, np.ndarray]:
    """Distinct random float64 weights for every parameter of ``spec``.

    Constant or shared weights would hide a gate-order bug; these never do.

    Args:
        spec: a built-in name, a path to a spec file, or a loaded spec.
        input_size: features per timestep.
        units: the state size.
        rng: a NumPy ``Generator``.
        scale: the standard deviation of the weights.

    Returns:
        Canonical name -> float64 array.

    Examples:
        >>> import novolstm
        >>> p = random_params(novolstm.load_spec("lstm"), 3, 2, np.random.default_rng(0))
        >>> bool((p["W_i"] != p["W_f"]).all())
        True
    """
    from .spec_loader import load_spec

    spec = load_spec(spec)
    return {
        name: rng.normal(scale=scale, size=shape) for name, shape in spec.parameter_shapes(input_size, units).items()
    }


@dataclass(frozen=True)
class Case:
    """One test input for a cell: canonical float64 parameters, inputs, initial state and mask.

    ``lengths`` (batch,), where the case was drawn as a right-padded batch: then ``mask``
    is the mask those lengths mean, so code that takes only a mask runs the same case, and
    ``masking`` gives what ``novolstm.run`` and the reference take.
    """

    params: dict
    x: np.ndarray
    state: tuple | None
    mask: np.ndarray | None
    lengths: np.ndarray | None = None

    @property
    def steps(self) -> int:
        return self.x.shape[1]

    @property
    def masking(self) -> dict:
        """``{"lengths": ...}``, ``{"mask": ...}`` or ``{}``: keyword arguments of ``novolstm.run``."""
        if self.lengths is not None:
            return {"lengths": self.lengths}
        return {} if self.mask is None else {"mask": self.mask}

    def cast(self, dtype) -> Case:
        return Case(
            {k: v.astype(dtype) for k, v in self.params.items()},
            self.x.astype(dtype),
            None if self.state is None else tuple(s.astype(dtype) for s in self.state),
            self.mask,
            self.lengths,
        )


#: Weight scales the strategies draw from: tiny scales make the LayerNorm input's
#: variance comparable to its epsilon; large ones saturate the gates.
WEIGHT_SCALES = (1e-3, 0.05, 0.3, 1.0, 3.0)


def cases(
    spec,
    max_batch: int = 3,
    max_steps: int = 12,
    max_input: int = 4,
    max_units: int = 5,
    scales=WEIGHT_SCALES,
    min_steps: int = 1,
    min_size: int = 1,
):
    """A Hypothesis strategy of ``Case`` for ``spec``.

    Shapes start at 1 (one unit is an edge case of LayerNorm and softmax with a defined
    answer); weights are distinct per gate, at scales from tiny (the LayerNorm's epsilon
    dominates its input's variance) to saturating; the initial state is zeros or random;
    the batch is unmasked, masked at random, or right-padded to lengths in [0, steps]
    (a length of 0 is a row that never steps). For long sequences, raise ``min_steps``
    and ``max_steps`` (the tolerance grows with the length: ``tolerance``).
    The arrays come from a NumPy generator seeded by Hypothesis, so examples shrink
    by shape, scale and seed.

    Args:
        spec: a built-in name, a path to a spec file, or a loaded spec.
        max_batch: the largest batch.
        max_steps: the longest sequence.
        max_input: the largest input size.
        max_units: the largest state size.
        scales: the weight scales drawn from.
        min_steps: the shortest sequence.
        min_size: the least batch, input size and units: Hypothesis tries the smallest
            case first, so a property that runs one or two examples can raise it above 1.

    Returns:
        A Hypothesis strategy of ``Case``.
    """
    from hypothesis import strategies as st

    from .spec_loader import load_spec

    spec = load_spec(spec)

    @st.composite
    def build(draw):
        batch = draw(st.integers(min_size, max_batch))
        steps = draw(st.integers(min_steps, max_steps))
        input_size = draw(st.integers(min_size, max_input))
        units = draw(st.integers(min_size, max_units))
        return _draw_case(draw, spec, batch, steps, input_size, units, scales)

    return build()


def _draw_case(draw, spec, batch: int, steps: int, input_size: int, units: int, scales) -> Case:
    """The arrays of one ``Case`` of the given shape (see ``cases``)."""
    from hypothesis import strategies as st

    scale = draw(st.sampled_from(scales))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    params = random_params(spec, input_size, units, rng, scale=scale)
    x = rng.normal(size=(batch, steps, input_size))
    state = tuple(rng.normal(size=(batch, units)) for _ in spec.state_names) if draw(st.booleans()) else None
    masking = draw(st.sampled_from(["none", "mask", "lengths"]))
    lengths = rng.integers(0, steps + 1, size=batch) if masking == "lengths" else None
    mask: np.ndarray | None = None
    if lengths is not None:
        mask = np.arange(steps)[None, :] < lengths[:, None]
    elif masking == "mask":
        mask = rng.random((batch, steps)) < 0.75
    return Case(params, x, state, mask, lengths)


def check_against_reference(cell: str, run, case: Case, dtype="float64", computes_in=None) -> float:
    """Run ``run(params, x, state, mask) -> (outputs, final_state)`` on ``case`` in ``dtype``
    and assert it matches the float64 reference for ``cell``; return the max deviation.

    Args:
        cell: a built-in spec name (the reference implements it).
        run: the implementation under test.
        case: the weights, inputs, initial state and mask.
        dtype: the dtype the case is cast to.
        computes_in: the precision the implementation really computes in, where a framework
            is known to fall below ``dtype``; its tolerance applies. Default: ``dtype``.

    Returns:
        The largest deviation from the reference.

    Raises:
        AssertionError: outputs or final state beyond the tolerance.

    Examples:
        >>> import novolstm
        >>> spec = novolstm.load_spec("gru")
        >>> case = Case(random_params(spec, 2, 3, np.random.default_rng(0)), np.ones((1, 4, 2)), None, None)
        >>> check_against_reference("gru", lambda *a: novolstm.run(spec, *a[:3], mask=a[3]), case) < 1e-12
        True
    """
    from . import reference

    c = case.cast(dtype)
    # The reference runs on the inputs as the implementation receives them (rounded to dtype):
    # how far rounding the inputs moves the exact answer is the problem's conditioning, not
    # the implementation's error (at saturating weights in float32 it alone can exceed the table).
    expected, expected_state = reference.run(cell, c.params, c.x, c.state, mask=c.mask)
    outputs, state = run(c.params, c.x, c.state, c.mask)
    tol = tolerance(computes_in or dtype, case.steps)
    worst = assert_close(np.asarray(outputs), expected, tol, what=f"{cell} outputs")
    if len(state) != len(expected_state):
        raise AssertionError(f"{cell}: {len(state)} state arrays, expected {len(expected_state)}")
    for name, got, want in zip(reference.CELLS[cell].state_names, state, expected_state):
        worst = max(worst, assert_close(np.asarray(got), want, tol, what=f"{cell} final state {name}"))
    return worst


# ---------------------------------------------------------------- random specs


#: State names the spec strategy draws from, in order (one to four states).
SPEC_STATES = ("h", "c", "m", "q")
#: Intermediate equation names, in order.
SPEC_INTERMEDIATES = ("i", "f", "g", "o", "r", "z")
#: LayerNorm epsilons the spec strategy pins: small enough to matter at low variance,
#: large enough that float32 stays within the tolerance table.
SPEC_EPSILONS = (1e-3, 1e-2, 0.1)


#: Functions the random specs apply to anything. Not gelu: the ONNX backend refuses it in
#: float64 (onnxruntime has no float64 Erf); OPERATION_SPECS tests it on every backend.
UNARY_FUNCTIONS = [
    "sigmoid",
    "tanh",
    "relu",
    "softmax",
    "abs",
    "softplus",
    "log_sigmoid",
    "hard_sigmoid",
    "keras2_hard_sigmoid",
]

#: The operations with a restricted domain or a second argument, in forms that stay finite
#: for any finite a and b (the domain rule itself has its own tests).
OPERATION_FORMS = [
    "{a} / (2 + tanh({b}))",
    "exp(tanh({a}))",
    "log(1.5 + tanh({a}))",
    "sqrt(0.1 + softplus({a}))",
    "maximum({a}, {b})",
    "minimum({a}, {b})",
    "maximum({a}, 0.25)",
    "clip({a}, -0.5, 0.75)",
]

#: Per operation of the language beyond the LSTM family's, an expression applying it to ``a``
#: (a projection of the input and the state) and ``k`` (of the input), in its safe domain.
OPERATION_BODIES = {
    "div": "a / (1.5 + tanh(k)) + k / (2 + b * b)",
    "exp": "exp(a - 1) - k",
    "log": "log(1.1 + tanh(a)) * k",
    "sqrt": "sqrt(0.05 + sigmoid(a)) - k",
    "abs": "abs(a) - k",
    "softplus": "softplus(3 * a) - k",
    "log_sigmoid": "log_sigmoid(3 * a) + k",
    "gelu": "gelu(3 * a) - k",
    "hard_sigmoid": "hard_sigmoid(5 * a) - k",
    "keras2_hard_sigmoid": "keras2_hard_sigmoid(5 * a) - k",
    "maximum": "maximum(a, k) + maximum(a, 0.2) + maximum(b, k)",
    "minimum": "minimum(a, k) - minimum(0.1, k)",
    "clip": "clip(2 * a, -0.5, 0.75) + k",
}


def operation_spec(name: str, body: str) -> str:
    """The text of a one-state spec whose next state is ``tanh(body)``; ``body`` reads ``a``, ``k`` and ``b``."""
    return f"""
spec_version = 1
name = "op_{name}"
description = "{name} of a projection of the input and the state, bounded by tanh."
input = "x"
output = "h_next"
state = {{ h = "h_next" }}
params = {{ W = {{ shape = ["input", "units"], init = "glorot_uniform" }}, U = {{ shape = ["units", "units"], init = "orthogonal" }}, V = {{ shape = ["input", "units"], init = "glorot_uniform" }}, b = {{ shape = ["units"], init = "zeros" }} }}
equations = {{ a = "x @ W + h @ U + b", k = "x @ V", h_next = "tanh({body})" }}
"""


#: One small spec per operation, for per-operation tests on every backend.
OPERATION_SPECS = {name: operation_spec(name, body) for name, body in OPERATION_BODIES.items()}

#: Every operation in one spec (each term scaled down), for backends where a spec costs a
#: compilation (JAX, Keras); not gelu, which the ONNX backend refuses in float64.
ALL_OPERATIONS_SPEC = operation_spec(
    "all",
    " + ".join(f"0.1 * ({body})" for name, body in OPERATION_BODIES.items() if name != "gelu") + " + 0.1 * gelu(a)",
)


class _SpecDrawer:
    """Draws one random valid spec as plain data (see ``spec_texts``)."""

    def __init__(self, draw, max_depth: int):
        from hypothesis import strategies as st

        self.st, self.draw, self.max_depth = st, draw, max_depth
        self.params: dict[str, list[str]] = {}  # name -> shape
        self.uses: set[str] = set()  # names read by the equation being drawn
        self.batched: list[str] = []  # names of batched, units-wide values defined so far
        self.constant: list[str] = []  # names of parameter-only equations defined so far

    def choice(self, options):
        return self.draw(self.st.sampled_from(options))

    def param(self, prefix: str) -> str:
        """A new parameter, or now and then one declared before (shared weights)."""
        shared = [p for p in self.params if p.rstrip("0123456789") == prefix]
        if shared and self.draw(self.st.integers(0, 4)) == 0:
            name = self.choice(shared)
        else:
            name = f"{prefix}{len(self.params)}"
            self.params[name] = {"W": ["input", "units"], "U": ["units", "units"]}.get(prefix, ["units"])
        self.uses.add(name)
        return name

    def name(self, options) -> str:
        name = self.choice(options)
        self.uses.add(name)
        return name

    # -- expressions, as text with every compound operand in parentheses

    def constant_term(self) -> str:
        """A term that reads no batched value: parameters, literals, parameter-only equations."""
        kinds = ["b", "1 - b", "-b", "b * b", "2 * b", "b + b + b", "b - b", "(2 * 3)", "(1 - 1)", "0.5"]
        if self.constant:
            kinds.append("equation")
        kind = self.choice(kinds)
        if kind == "equation":
            return self.name(self.constant)
        if kind in ("(2 * 3)", "(1 - 1)", "0.5"):
            return kind
        pieces = kind.split("b")
        return "".join(piece + (self.param("b") if k < len(pieces) - 1 else "") for k, piece in enumerate(pieces))

    def projection(self) -> str:
        operand = self.choice(["input"] + (["state"] if self.batched else []))
        if operand == "input":
            return f"x @ {self.param('W')}"
        return f"{self.name(self.batched)} @ {self.param('U')}"

    def batched_expr(self, depth: int) -> str:
        leaves = ["gate", "projection"] + (["name"] if self.batched else [])
        compound = [
            "unary",
            "operation",
            "layer_norm",
            "binary",
            "with_constant",
            "negate",
            "project",
            "ln_ln",
            "softmax_product",
        ]
        kind = self.choice(leaves + (compound if depth > 0 else []))
        sub = lambda: _paren(self.batched_expr(depth - 1))
        if kind == "gate":  # what the fusion passes look for: x @ W + h @ U + b
            terms = [f"x @ {self.param('W')}"]
            if self.batched and self.draw(self.st.booleans()):
                terms.append(f"{self.name(self.batched)} @ {self.param('U')}")
            if self.draw(self.st.booleans()):
                terms.append(self.constant_term())
            return " + ".join(self.draw(self.st.permutations(terms)))
        if kind == "projection":
            return self.projection()
        if kind == "name":
            return self.name(self.batched)
        if kind == "unary":
            return f"{self.choice(UNARY_FUNCTIONS)}({self.batched_expr(depth - 1)})"
        if kind == "operation":  # the other operations, each in a form whose domain is safe
            form = self.choice(OPERATION_FORMS)
            return form.format(a=sub(), b=sub() if "{b}" in form else "")
        if kind == "layer_norm":
            return self.layer_norm(self.batched_expr(depth - 1))
        if kind == "ln_ln":
            return self.layer_norm(self.layer_norm(self.batched_expr(depth - 1)))
        if kind == "softmax_product":
            return f"softmax({sub()} * {sub()})"
        if kind == "binary":
            return f"{sub()} {self.choice(['+', '-', '*'])} {sub()}"
        if kind == "with_constant":
            op = self.choice(["+", "-", "*"])
            pair = [sub(), _paren(self.constant_term())]
            return f"{pair[0]} {op} {pair[1]}" if self.draw(self.st.booleans()) else f"{pair[1]} {op} {pair[0]}"
        if kind == "negate":
            return f"-{sub()}"
        return f"{sub()} @ {self.param('U')}"  # "project": a projection of a compound value

    def layer_norm(self, z: str) -> str:
        return f"layer_norm({z}, {self.param('gamma')}, {self.param('beta')})"

    def equation(self, draw_text) -> tuple[str, set[str]]:
        self.uses = set()
        text = draw_text()
        return text, self.uses

    # -- the spec

    def spec(self, max_states: int, max_intermediates: int) -> dict:
        st, draw = self.st, self.draw
        states = SPEC_STATES[: draw(st.integers(1, max_states))]
        self.batched = list(states)
        equations: dict[str, str] = {}
        reads: dict[str, set[str]] = {}
        for name in SPEC_INTERMEDIATES[: draw(st.integers(0, max_intermediates))]:
            if draw(st.integers(0, 3)) == 0:  # a parameter-only equation such as "1 - b"
                equations[name], reads[name] = self.equation(self.constant_term)
                self.constant.append(name)
            else:
                equations[name], reads[name] = self.equation(lambda: self.batched_expr(self.max_depth))
                self.batched.append(name)
        # Every next state is bounded, so a difference between implementations means a bug,
        # not chaos: tanh of anything, times a gate or a parameter-only factor at most.
        inner: dict[str, list[str]] = {}
        factor: dict[str, str] = {}
        for s in states:
            nxt = f"{s}_next"
            first, reads[nxt] = self.equation(lambda: self.batched_expr(self.max_depth))
            inner[nxt] = [first]
            shape = self.choice(["tanh", "gated", "damped"])
            if shape != "tanh":
                gated = shape == "gated"
                extra, used = self.equation(
                    lambda gated=gated: f"sigmoid({self.batched_expr(0)})" if gated else _paren(self.constant_term())
                )
                factor[nxt] = extra
                reads[nxt] |= used
            self.batched.append(nxt)
        output = self.choice([f"{s}_next" for s in states] + ["y"])
        if output == "y":
            equations["y"], reads["y"] = self.equation(lambda: self.batched_expr(self.max_depth))
        # Whatever no root reaches joins the last state's sum: the loader refuses unused names.
        last = f"{states[-1]}_next"
        for name in list(reversed(list(equations))) + ["x"]:
            if name not in _reached(reads, [output, *inner]):
                self.uses = set()
                inner[last].append(name if name in self.batched or name in self.constant else f"x @ {self.param('W')}")
                reads[last] |= self.uses | {name}
        for nxt, terms in inner.items():
            body = f"tanh({' + '.join(_paren(t) for t in terms)})"
            equations[nxt] = f"{body} * {factor[nxt]}" if nxt in factor else body
        order = draw(st.permutations(list(equations)))
        data = {
            "spec_version": 1,
            "name": "random_cell",
            "description": "A random spec drawn by novolstm.testing.spec_texts.",
            "input": "x",
            "output": output,
            "state": {s: f"{s}_next" for s in states},
            "params": {p: {"shape": shape, "init": _init_for(shape)} for p, shape in self.params.items()},
            "equations": {name: equations[name] for name in order},
        }
        text = " ".join(data["equations"].values())
        numerics = {}
        if "layer_norm(" in text:
            numerics["layer_norm_epsilon"] = self.choice(SPEC_EPSILONS)
        if "softmax(" in text and draw(st.booleans()):
            numerics["softmax_axis"] = "units"
        if numerics:
            data["numerics"] = numerics
        return data


def _paren(text: str) -> str:
    return f"({text})" if (" " in text or text.startswith("-")) else text


def _init_for(shape: list[str]) -> str:
    return {"input": "glorot_uniform", "units": "orthogonal"}[shape[0]] if len(shape) == 2 else "zeros"


def _reached(reads: dict[str, set[str]], roots) -> set[str]:
    reached, stack = set(), list(roots)
    while stack:
        name = stack.pop()
        if name not in reached:
            reached.add(name)
            stack.extend(reads.get(name, ()))
    return reached


def spec_texts(max_states: int = 4, max_intermediates: int = 4, max_depth: int = 3):
    """A Hypothesis strategy of random valid cell specs, as TOML text.

    Every drawn spec loads with ``novolstm.loads_spec``. It has one to
    ``max_states`` states and up to ``max_intermediates`` intermediate equations, some of
    them parameter-only; it uses every function of the language, nested to ``max_depth``,
    and now and then shares a parameter between two terms:
    projections of the input, of states and of compound values, products of projections,
    parameter-only and constant-only subterms (``1 - b``, ``-b``, ``b1 * b2``, ``2 * b``,
    sums of several biases, ``(2 * 3)``, ``(1 - 1)``), unary minus, literals, states used
    elementwise, LayerNorm over LayerNorm and softmax of a product; its equations appear in
    any order. Every next state is a ``tanh`` (times a gate or a parameter-only factor at
    most), so state values stay bounded and two correct implementations agree to rounding.

    Examples:
        >>> import novolstm
        >>> from hypothesis import given, settings
        >>> @settings(max_examples=5, database=None)
        ... @given(spec_texts())
        ... def loads(text):
        ...     spec = novolstm.loads_spec(text)
        ...     assert 1 <= len(spec.state_names) <= 4
        >>> loads()
    """
    from hypothesis import strategies as st

    from .spec_model import dump_toml

    @st.composite
    def build(draw):
        return dump_toml(_SpecDrawer(draw, max_depth).spec(max_states, max_intermediates))

    return build()


def specs(max_states: int = 4, max_intermediates: int = 4, max_depth: int = 3):
    """A Hypothesis strategy of random valid, loaded specs: ``spec_texts`` through ``novolstm.loads_spec``.

    Examples:
        >>> from hypothesis import Phase, find, settings
        >>> any_match = settings(phases=[Phase.generate], database=None)  # no shrinking: it takes seconds
        >>> spec = find(specs(), lambda s: "layer_norm" in s.dumps(), settings=any_match)
        >>> spec.numerics.layer_norm_epsilon in SPEC_EPSILONS
        True
    """
    from .spec_loader import loads_spec

    return spec_texts(max_states, max_intermediates, max_depth).map(
        lambda text: loads_spec(text, source="<random spec>")
    )


def check_against_interpreter(spec, run, case: Case, dtype="float64", computes_in=None) -> float:
    """Run ``run(params, x, state, mask) -> (outputs, final_state)`` on ``case`` in ``dtype`` and
    assert it matches the float64 interpreter of ``spec`` (``novolstm.interpret``); return
    the max deviation.

    The oracle for any spec, as ``check_against_reference`` is for the built-in cells:
    the interpreter evaluates the spec's own expressions, sharing no code with code
    generation. ``computes_in`` as in ``check_against_reference``.

    Examples:
        >>> import novolstm
        >>> spec = novolstm.load_spec("gru")
        >>> case = Case(random_params(spec, 2, 3, np.random.default_rng(0)), np.ones((1, 4, 2)), None, None)
        >>> check_against_interpreter(spec, lambda *a: novolstm.run(spec, *a[:3], mask=a[3]), case) < 1e-12
        True
    """
    from . import interpret
    from .spec_loader import load_spec

    spec = load_spec(spec)
    c = case.cast(dtype)
    # As check_against_reference: the oracle sees the inputs as the implementation does.
    expected, expected_state = interpret.run(spec, c.params, c.x, c.state, mask=c.mask)
    outputs, state = run(c.params, c.x, c.state, c.mask)
    tol = tolerance(computes_in or dtype, case.steps)
    worst = assert_close(np.asarray(outputs), expected, tol, what=f"{spec.name} outputs")
    if len(state) != len(expected_state):
        raise AssertionError(f"{spec.name}: {len(state)} state arrays, expected {len(expected_state)}")
    for name, got, want in zip(spec.state_names, state, expected_state):
        worst = max(worst, assert_close(np.asarray(got), want, tol, what=f"{spec.name} final state {name}"))
    return worst


#: Central differences of the float64 interpreter: step along a unit-variance direction, and
#: how far (relative to ``1 + |analytic|``) an analytic directional derivative may be from them.
FINITE_DIFFERENCE_STEP = 1e-6
FINITE_DIFFERENCE_RTOL = 1e-6


def gradient_problem(spec, case: Case, seed: int = 0):
    """The loss a gradient check differentiates: ``(state, g_out, g_state)``, all float64.

    The loss is ``sum(outputs * g_out) + sum(final * g_state)``; the cotangents are drawn
    from ``seed``, and so is an initial state where ``case`` has none (a zero state sits on
    ``relu``'s kink). The same ``seed`` gives the same problem in every dtype.
    """
    rng = np.random.default_rng(seed)
    batch, steps, _ = case.x.shape
    units = case.params[spec.params[0].name].shape[-1]
    state = case.state if case.state is not None else tuple(rng.normal(size=(batch, units)) for _ in spec.state_names)
    g_out = rng.normal(size=(batch, steps, units))
    g_state = tuple(rng.normal(size=(batch, units)) for _ in spec.state_names)
    return tuple(np.asarray(s, np.float64) for s in state), g_out, g_state


def vjp_gradients(spec, vjp_numpy, case: Case, seed: int = 0, dtype="float64"):
    """Gradients from ``vjp_numpy`` in ``dtype`` for the loss of ``gradient_problem``.

    ``vjp_numpy(params, x, state, mask) -> (outputs, final_state, vjp)`` as the generated
    modules provide it, with ``vjp(g_outputs, g_final_state) -> (g_x, g_state0, g_params)``.

    Returns:
        ``(outputs, final_state, [(label, gradient)])``: the gradients with respect to the
        inputs (``"d/dx"``), each initial state (``"d/dh0"``, ...) and each parameter in
        ``spec.param_names`` order (``"d/dW_i"``, ...).
    """
    from .spec_loader import load_spec

    spec = load_spec(spec)
    state, g_out, g_state = gradient_problem(spec, case, seed)
    c = Case(case.params, case.x, state, case.mask).cast(dtype)
    outputs, final, vjp = vjp_numpy(c.params, c.x, c.state, c.mask)
    g_x, g_state0, g_params = vjp(g_out.astype(dtype), tuple(g.astype(dtype) for g in g_state))
    if sorted(g_params) != sorted(spec.param_names):
        raise AssertionError(f"{spec.name}: gradients for {sorted(g_params)}, expected {sorted(spec.param_names)}")
    labels = ["d/dx", *(f"d/d{s}0" for s in spec.state_names), *(f"d/d{p}" for p in spec.param_names)]
    arrays = [g_x, *g_state0, *(g_params[p] for p in spec.param_names)]
    if len(arrays) != len(labels):
        raise AssertionError(f"{spec.name}: {len(g_state0)} initial-state gradients, expected {len(spec.state_names)}")
    return outputs, final, [(label, np.asarray(a)) for label, a in zip(labels, arrays)]


def check_gradients_against_interpreter(spec, vjp_numpy, case: Case, seed: int = 0) -> list:
    """Assert that float64 gradients match central differences of the interpreter.

    For the loss of ``gradient_problem``, the gradient from ``vjp_numpy`` (see
    ``vjp_gradients``) with respect to the inputs, each initial state and every
    parameter, projected on a random direction, must match the central difference of the
    same loss computed by ``novolstm.interpret.run`` within
    ``FINITE_DIFFERENCE_RTOL`` of ``1 + |analytic|``. The outputs and final state are
    checked against the interpreter too.

    Returns:
        The gradients, ``[(label, gradient)]`` as ``vjp_gradients`` gives them, for
        comparisons in other dtypes (``check_gradients_close``).

    Examples:
        >>> import novolstm
        >>> spec = novolstm.load_spec("gru")
        >>> case = Case(random_params(spec, 2, 3, np.random.default_rng(0)), np.ones((2, 4, 2)), None, None)
        >>> grads = check_gradients_against_interpreter(spec, novolstm.load_generated(spec, "numpy").vjp_numpy, case)
        >>> [(label, g.shape) for label, g in grads[:3]]
        [('d/dx', (2, 4, 2)), ('d/dh0', (2, 3)), ('d/dW_r', (2, 3))]
    """
    from . import interpret
    from .spec_loader import load_spec

    spec = load_spec(spec)
    c = case.cast("float64")
    state, g_out, g_state = gradient_problem(spec, c, seed)
    outputs, final, grads = vjp_gradients(spec, vjp_numpy, c, seed)
    expected, expected_state = interpret.run(spec, c.params, c.x, state, mask=c.mask)
    tol = tolerance("float64", c.steps)
    assert_close(np.asarray(outputs), expected, tol, what=f"{spec.name} outputs (vjp_numpy)")
    for name, got, want in zip(spec.state_names, final, expected_state):
        assert_close(np.asarray(got), want, tol, what=f"{spec.name} final state {name} (vjp_numpy)")

    def loss(x=c.x, state=state, params=c.params) -> float:
        out, fin = interpret.run(spec, params, x, state, mask=c.mask)
        return float((out * g_out).sum() + sum((f * g).sum() for f, g in zip(fin, g_state)))

    # (value, the loss with that value in its place), in the order of vjp_gradients' labels
    wrt: list[tuple[np.ndarray, Callable[[np.ndarray], float]]] = [(c.x, lambda v: loss(x=v))]

    def with_state(k: int) -> Callable[[np.ndarray], float]:
        return lambda v: loss(state=state[:k] + (v,) + state[k + 1 :])

    def with_param(p: str) -> Callable[[np.ndarray], float]:
        return lambda v: loss(params={**c.params, p: v})

    wrt += [(state[k], with_state(k)) for k in range(len(state))]
    wrt += [(c.params[p], with_param(p)) for p in spec.param_names]
    rng = np.random.default_rng([seed, 1])
    for (value, loss_at), (label, grad) in zip(wrt, grads, strict=True):
        if grad.shape != value.shape:
            raise AssertionError(f"{spec.name} {label}: shape {grad.shape}, expected {value.shape}")
        direction = rng.normal(size=value.shape)
        h = FINITE_DIFFERENCE_STEP
        numeric = (loss_at(value + h * direction) - loss_at(value - h * direction)) / (2 * h)
        analytic = float((grad * direction).sum())
        if not abs(numeric - analytic) <= FINITE_DIFFERENCE_RTOL * (1 + abs(analytic)):
            raise AssertionError(
                f"{spec.name} {label} along a random direction: {analytic!r}, central difference of the "
                f"interpreter {numeric!r}"
            )
    return grads


def check_gradients_close(
    spec, vjp_numpy, case: Case, expected: list, seed: int = 0, dtype="float32", computes_in=None
) -> float:
    """Assert that gradients computed in ``dtype`` match ``expected`` (float64 ones, checked by
    ``check_gradients_against_interpreter`` for the same ``case`` and ``seed``) within the
    table's gradient tolerance for ``computes_in`` (default ``dtype``); return the max deviation.
    """
    _, _, grads = vjp_gradients(spec, vjp_numpy, case, seed, dtype)
    tol = tolerance(computes_in or dtype, case.steps, "gradients")
    name = getattr(spec, "name", spec)
    return max(
        assert_close(got, want, tol, what=f"{name} {label} ({dtype})")
        for (label, got), (_, want) in zip(grads, expected, strict=True)
    )


def spec_cases(
    max_batch: int = 3,
    max_units: int = 5,
    max_input: int = 3,
    max_extra_steps: int = 6,
    scales=(0.05, 0.3, 1.0),
    **spec_options,
):
    """A Hypothesis strategy of ``(spec_text, case)``: a random spec (``spec_texts``) and a
    ``Case`` for it.

    The sequence is as often shorter than ``units`` as longer (up to ``max_extra_steps``
    beyond it): a time axis confused with the units axis shows in one or the other. The
    batch is one row or more; masks, lengths (0 included) and initial states as in
    ``cases``; weight scales from ``scales`` (not the saturating ones: random specs
    multiply projections, and a case is only as well conditioned as its spec).
    ``spec_options`` go to ``spec_texts``.

    Examples:
        >>> import novolstm
        >>> from hypothesis import Phase, find, settings
        >>> any_match = settings(phases=[Phase.generate], database=None)  # no shrinking: it takes seconds
        >>> text, case = find(spec_cases(), lambda tc: tc[1].steps >= 1, settings=any_match)
        >>> spec = novolstm.loads_spec(text)
        >>> sorted(case.params) == sorted(spec.param_names), case.x.ndim
        (True, 3)
    """
    from hypothesis import strategies as st

    from .spec_loader import loads_spec

    @st.composite
    def build(draw):
        text = draw(spec_texts(**spec_options))
        spec = loads_spec(text, source="<random spec>")
        units = draw(st.integers(1, max_units))
        if units > 1 and draw(st.booleans()):
            steps = draw(st.integers(1, units - 1))
        else:
            steps = draw(st.integers(units, units + max_extra_steps))
        batch = draw(st.integers(1, max_batch))
        input_size = draw(st.integers(1, max_input))
        return text, _draw_case(draw, spec, batch, steps, input_size, units, scales)

    return build()


def operation_cases(
    op: str | None, max_batch: int = 2, max_units: int = 4, max_extra_steps: int = 3, scales=(0.3, 1.0)
):
    """A Hypothesis strategy of ``(spec, case)`` for the spec of ``op`` in ``OPERATION_SPECS``
    (None: ``ALL_OPERATIONS_SPEC``).

    Examples:
        >>> from hypothesis import Phase, find, settings
        >>> any_match = settings(phases=[Phase.generate], database=None)  # no shrinking: it takes seconds
        >>> spec, case = find(operation_cases("clip"), lambda c: c[1].steps > 2, settings=any_match)
        >>> spec.name, case.steps > 2
        ('op_clip', True)
    """
    from hypothesis import strategies as st

    from .spec_loader import loads_spec

    @st.composite
    def build(draw):
        spec = loads_spec(ALL_OPERATIONS_SPEC if op is None else OPERATION_SPECS[op], source=f"<operation {op}>")
        units = draw(st.integers(1, max_units))
        steps = draw(st.integers(1, units + max_extra_steps))
        batch, input_size = draw(st.integers(1, max_batch)), draw(st.integers(1, 3))
        return spec, _draw_case(draw, spec, batch, steps, input_size, units, scales)

    return build()


#: A spec whose log, sqrt and division reach zero and negative arguments.
DOMAIN_SPEC = """
spec_version = 1
name = "domain"
description = "log, sqrt and a division on values that reach zero and below."
input = "x"
output = "y"
state = { h = "h_next", c = "c_next" }
params = { W = { shape = ["input", "units"], init = "glorot_uniform" } }
equations = { k = "x @ W", y = "log(k)", h_next = "sqrt(k)", c_next = "1 / (k * k)" }
"""


def check_operation(backend: str, spec, case, dtype: str) -> float:
    """Assert ``backend`` runs ``spec`` on ``case`` as the interpreter does (``check_against_interpreter``)."""
    import novolstm

    def run(params, x, state, mask):
        return novolstm.run(spec, params, x, state, backend=backend, mask=mask)

    return check_against_interpreter(spec, run, case, dtype, computes_in(backend, dtype))


def check_operation_gradients(backend: str, spec, case, seed: int) -> None:
    """Assert ``backend``'s gradients match central differences of the interpreter (float64, or
    NumPy's checked ones where it computes float64 in float32) and, in float32, the float64 ones."""
    import novolstm

    vjp_numpy = novolstm.load_generated(spec, backend).vjp_numpy
    if computes_in(backend, "float64") == "float64":
        anchor = check_gradients_against_interpreter(spec, vjp_numpy, case, seed)
    else:
        anchor = check_gradients_against_interpreter(spec, novolstm.load_generated(spec, "numpy").vjp_numpy, case, seed)
    check_gradients_close(spec, vjp_numpy, case, anchor, seed, "float32", computes_in(backend, "float32"))


def check_domain_rule(backend: str, dtype: str = "float64") -> None:
    """Assert the domain rule on ``backend``: log 0 = -inf, log and sqrt of a negative = nan,
    1 / 0 = inf, as the interpreter computes them (docs/numerics.md)."""
    import novolstm

    from . import interpret

    spec = novolstm.loads_spec(DOMAIN_SPEC)
    params = {"W": np.array([[1.0, -1.0, 0.5]], dtype)}
    x = np.array([[[0.0]], [[2.0]], [[-3.0]]], dtype)
    expected, expected_state = interpret.run(spec, {"W": params["W"].astype(np.float64)}, x.astype(np.float64))
    assert np.isneginf(expected[0, 0]).all() and np.isnan(expected[2, 0, 0]) and np.isposinf(expected_state[1][0]).all()
    module = novolstm.load_generated(spec, backend)
    outputs, state = module.run_numpy(params, x, None, None)
    np.testing.assert_allclose(np.asarray(outputs, np.float64), expected, rtol=1e-6, atol=0)
    for got, want in zip(state, expected_state):
        np.testing.assert_allclose(np.asarray(got, np.float64), want, rtol=1e-6, atol=0)


#: The cells the heavier per-backend properties run on (JAX and Keras, where each cell costs
#: compilations): the five original cells and the zoo cells whose operations no other cell
#: has (sLSTM: exp, log_sigmoid, maximum, division; minLSTM: a linear recurrence; ln_lstm:
#: six LayerNorms). Every cell still runs on every backend against its reference and
#: through the conformance kit (tests/test_backends.py, tests/test_conformance.py).
PROPERTY_CELLS = ("lstm", "novolstm", "novolstm_reference", "gru", "peephole_lstm", "slstm", "minlstm", "ln_lstm")


#: Next-state forms affine in the state ``{s}`` with state-free gate ``{g}`` and candidate ``{c}``.
LINEAR_FORMS = (
    "(1 - {g}) * {s} + {g} * {c}",
    "{g} * {s} + {c}",
    "({s} - {g} * {s}) / (1 + {g}) + {c}",
    "{c} - {g} * ({c} - {s})",
    "-({g} * -{s}) + {c} * {k}",
    "{s} * {k} * {g} - {c}",
)


def linear_spec_texts(max_states: int = 2):
    """A Hypothesis strategy of random linear recurrences (``novolstm.scan.linear_recurrence``), as TOML text.

    Each state ``s`` moves by one of ``LINEAR_FORMS``: its gate is ``sigmoid`` of an input
    projection, its candidate a ``tanh`` of one or a bare projection, ``k`` a units-wide
    parameter; every name (input, states, parameters, equations) is drawn at random, so the
    analysis can only be structural. The output is one of the next states.

    Examples:
        >>> import novolstm
        >>> from hypothesis import Phase, find, settings
        >>> from novolstm.scan import linear_recurrence
        >>> any_match = settings(phases=[Phase.generate], database=None)  # no shrinking: it takes seconds
        >>> text = find(linear_spec_texts(), lambda t: True, settings=any_match)
        >>> linear_recurrence(novolstm.loads_spec(text)) is not None
        True
    """
    from hypothesis import strategies as st

    from .reserved import reserved_by
    from .spec_model import dump_toml

    name = st.from_regex(r"[a-z][a-z]{1,3}[0-9]", fullmatch=True).filter(lambda n: reserved_by(n) is None)

    @st.composite
    def build(draw):
        count = draw(st.integers(1, max_states))
        names = draw(st.lists(name, min_size=1 + 7 * count, max_size=1 + 7 * count, unique=True))
        x, names = names[0], names[1:]
        params: dict = {}
        equations: dict = {}
        state: dict = {}
        for k in range(count):
            s, nxt, g, c, w_g, w_c, scale = names[7 * k : 7 * k + 7]
            params[w_g] = {"shape": ["input", "units"], "init": "glorot_uniform"}
            params[w_c] = {"shape": ["input", "units"], "init": "glorot_uniform"}
            params[scale] = {"shape": ["units"], "init": "ones"}
            equations[g] = f"sigmoid({x} @ {w_g})"
            equations[c] = draw(st.sampled_from([f"tanh({x} @ {w_c})", f"{x} @ {w_c}"]))
            form = draw(st.sampled_from(LINEAR_FORMS))
            equations[nxt] = form.format(s=s, g=g, c=c, k=scale)
            if "{k}" not in form:  # every parameter must be used
                equations[nxt] += f" + 0 * {scale}"
            state[s] = nxt
        return dump_toml(
            {
                "spec_version": 1,
                "name": "random_linear",
                "description": "A random linear recurrence.",
                "input": x,
                "output": draw(st.sampled_from(sorted(state.values()))),
                "state": state,
                "params": params,
                "equations": equations,
            }
        )

    return build()


def nonlinear_variant(text: str) -> str:
    """A linear recurrence's spec text with its first state, where an equation first reads it,
    put through ``tanh``: the same cell but for the one change that makes it a loop.

    Examples:
        >>> import novolstm
        >>> from novolstm.scan import linear_recurrence
        >>> linear_recurrence(novolstm.loads_spec(nonlinear_variant(novolstm.load_spec("mingru").dumps())))
    """
    import re

    from .spec_loader import loads_spec

    head, equations = text.split("[equations]")
    state = loads_spec(text).state_names[0]
    return head + "[equations]" + re.sub(rf"\b{state}\b", f"tanh({state})", equations, count=1)


def assert_scan_equals_loop(scanned, looped, bound: float = 1e-12) -> None:
    """Assert two ``(outputs, final states, gradients)`` results agree to ``bound`` relative to
    the size of each: a linear recurrence whose factor exceeds one grows geometrically, and the
    scan multiplies in another order than the loop, so their difference scales with the values.

    Examples:
        >>> import numpy as np
        >>> result = (np.ones(3), [np.zeros(2)], [np.full(2, 100.0)])
        >>> assert_scan_equals_loop(result, (np.ones(3), [np.zeros(2)], [np.full(2, 100.0 + 1e-11)]))
    """
    (o1, f1, g1), (o2, f2, g2) = scanned, looped
    pairs = [("outputs", o1, o2)] + [("final state", a, b) for a, b in zip(f1, f2)]
    pairs += [("gradient", a, b) for a, b in zip(g1, g2)]
    for what, a, b in pairs:
        scale = max(1.0, float(np.abs(b).max(initial=0.0)))
        assert np.abs(a - b).max(initial=0.0) <= bound * scale, (
            f"{what}: {np.abs(a - b).max()} beyond {bound} x {scale}"
        )


def concurrent_calls(fn: Callable, threads: int = 8) -> list:
    """``fn()`` called by ``threads`` threads released together by a barrier; their results in
    thread order. Any exception a thread raised fails the call (none is swallowed).

    Examples:
        >>> concurrent_calls(lambda: 2 + 2, threads=3)
        [4, 4, 4]
    """
    import threading

    barrier = threading.Barrier(threads)
    results: list = [None] * threads
    errors: list = []

    def worker(k):
        try:
            barrier.wait()
            results[k] = fn()
        except BaseException as exc:  # reported below, never swallowed
            errors.append(exc)

    pool = [threading.Thread(target=worker, args=(k,)) for k in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    assert not errors, errors
    return results
