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
        scale = draw(st.sampled_from(scales))
        rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
        params = random_params(spec, input_size, units, rng, scale=scale)
        x = rng.normal(size=(batch, steps, input_size))
        state = tuple(rng.normal(size=(batch, units)) for _ in spec.state_names) if draw(st.booleans()) else None
        masking = draw(st.sampled_from(["none", "mask", "lengths"]))
        lengths = rng.integers(0, steps + 1, size=batch) if masking == "lengths" else None
        if lengths is not None:
            mask = np.arange(steps)[None, :] < lengths[:, None]
        else:
            mask = (rng.random((batch, steps)) < 0.75) if masking == "mask" else None
        return Case(params, x, state, mask, lengths)

    return build()


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
