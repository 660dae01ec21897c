"""JAX candidates: the generated cells (jitted sequence over lax.scan), and Flax's
OptimizedLSTMCell under linen nn.RNN as the native baseline.

Forward+backward takes gradients of loss = output.sum() with respect to every
parameter (the input, like data, needs none). Inputs are batch-major, as nn.RNN's
default. Every callable blocks until JAX's asynchronous result is ready.
"""

from __future__ import annotations

from novolstm.api import load_generated
from novolstm.bench import Candidate

CELLS = ("lstm", "novolstm", "novolstm_reference")


def _modes(apply, params, x):
    import jax

    forward = jax.jit(apply)
    grad = jax.jit(jax.grad(lambda p, x: apply(p, x).sum()))
    return (lambda: jax.block_until_ready(forward(params, x))), (lambda: jax.block_until_ready(grad(params, x)))


def candidates(batch: int, steps: int, units: int, dtype: str = "float32"):
    import flax.linen as nn
    import jax
    import jax.numpy as jnp

    from novolstm.convert.flax import to_canonical

    x = jax.random.normal(jax.random.key(0), (batch, steps, units), jnp.dtype(dtype))
    native = nn.RNN(nn.OptimizedLSTMCell(units, param_dtype=jnp.dtype(dtype)))
    variables = native.init(jax.random.key(1), x)
    for cell in CELLS:
        m = load_generated(cell, "jax")
        if cell == "lstm":  # the same function as the native baseline
            params = {k: jnp.asarray(v) for k, v in to_canonical(variables["params"]["cell"], "linen_lstm").items()}
        else:
            params = m.Cell(units, dtype=dtype).init(0, units)
        yield Candidate(f"{cell} spec", *_modes(lambda p, x, m=m: m.sequence(p, x)[0], params, x))
    yield Candidate("native: flax OptimizedLSTMCell (nn.RNN)", *_modes(native.apply, variables, x))


def matmul(batch: int, steps: int, units: int, dtype: str = "float32"):
    """A plain GEMM with the LSTM forward's matmul FLOPs, for the GFLOP/s fraction."""
    import jax
    import jax.numpy as jnp

    a = jax.random.normal(jax.random.key(0), (batch * steps, 2 * units), jnp.dtype(dtype))
    w = jax.random.normal(jax.random.key(1), (2 * units, 4 * units), jnp.dtype(dtype))
    mm = jax.jit(jnp.matmul)
    return lambda: jax.block_until_ready(mm(a, w))
