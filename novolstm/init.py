"""Seeded parameter initialization, the same numbers whichever backend uses them.

Each parameter draws from its own stream, seeded by the seed and the parameter's
name, so adding or reordering parameters in a spec leaves the others unchanged.
The numbers are drawn in float64 with NumPy and cast once at the end. This module
imports only NumPy and the standard library: emitters embed its source in
generated modules, which must stay standalone.
"""

import zlib

import numpy as np


def _glorot_uniform(rng, shape, args):
    limit = np.sqrt(6.0 / (shape[0] + shape[-1]))
    return rng.uniform(-limit, limit, size=shape)


def _orthogonal(rng, shape, args):
    # QR of a Gaussian matrix, sign-corrected so the distribution is uniform (Saxe et al. 2014).
    rows, cols = shape
    a = rng.standard_normal((max(rows, cols), min(rows, cols)))
    q, r = np.linalg.qr(a)
    q = q * np.sign(np.diag(r))
    return q if rows >= cols else q.T


INITIALIZERS = {
    "zeros": lambda rng, shape, args: np.zeros(shape),
    "ones": lambda rng, shape, args: np.ones(shape),
    "constant": lambda rng, shape, args: np.full(shape, args["value"]),
    "uniform": lambda rng, shape, args: rng.uniform(-args["limit"], args["limit"], size=shape),
    "normal": lambda rng, shape, args: rng.normal(0.0, args["stddev"], size=shape),
    "glorot_uniform": _glorot_uniform,
    "orthogonal": _orthogonal,
}


def init_from_table(table, input_size, units, seed=0, dtype="float64"):
    """Initialize from ``table``: name -> (symbolic shape, initializer name, {arg: value}).

    Examples:
        >>> p = init_from_table({"b": (("units",), "ones", {})}, input_size=2, units=3)
        >>> p["b"].tolist()
        [1.0, 1.0, 1.0]
    """
    sizes = {"input": input_size, "units": units}
    out = {}
    for name, (dims, init, args) in table.items():
        rng = np.random.default_rng([seed, zlib.crc32(name.encode())])
        shape = tuple(sizes[d] for d in dims)
        out[name] = np.asarray(INITIALIZERS[init](rng, shape, dict(args)), dtype=np.float64).astype(dtype)
    return out
