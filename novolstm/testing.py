"""Public test helpers: the tolerance table and an ``assert_close`` that checks structure first.

Use them to test your own implementation of a spec the way novolstm tests its
backends.

Example:
    >>> import numpy as np
    >>> assert_close(np.float32([1.0, 2.0]), np.float64([1.0, 2.0000001]), what="outputs")
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

    def scaled(self, factor: float) -> "Tolerance":
        return Tolerance(self.atol * factor, self.rtol * factor)


#: One table for every comparison with the float64 reference, keyed by the dtype the
#: implementation under test computes in. See docs/numerics.md for the measurements.
TOLERANCES = {
    "float64": Tolerance(atol=1e-12, rtol=1e-10),
    "float32": Tolerance(atol=2e-5, rtol=2e-4),
    "bfloat16": Tolerance(atol=5e-2, rtol=5e-2),
    "float16": Tolerance(atol=1e-2, rtol=1e-2),
}

#: Rounding error grows with the number of recurrent steps it passes through; beyond
#: this many steps the tolerance grows with the square root of the length.
STEPS_BEFORE_GROWTH = 16


def tolerance(dtype, steps: int = 1, kind: str = "outputs") -> Tolerance:
    """The tolerance for a result computed in ``dtype`` over ``steps`` time steps.

    ``kind="gradients"`` widens it tenfold: a gradient sums over every step and row.

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


def assert_close(actual, expected, tol: Tolerance | None = None, what: str = "value") -> float:
    """Assert ``actual`` matches ``expected``: shape first, then values; return the max deviation.

    ``tol`` defaults to the table entry for ``actual``'s dtype. NaN anywhere fails.
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
    bound = tol.atol + tol.rtol * np.abs(e)
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

    >>> import novolstm
    >>> p = random_params(novolstm.load_spec("lstm"), 3, 2, np.random.default_rng(0))
    >>> bool((p["W_i"] != p["W_f"]).all())
    True
    """
    from .spec_loader import load_spec

    spec = load_spec(spec)
    return {name: rng.normal(scale=scale, size=shape) for name, shape in spec.parameter_shapes(input_size, units).items()}
