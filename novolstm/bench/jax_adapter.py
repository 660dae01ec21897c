"""JAX candidates: the generated cells (jitted sequence over lax.scan), and Flax's
OptimizedLSTMCell under linen nn.RNN as the native baseline.

Forward+backward takes gradients of loss = output.sum() with respect to every
parameter (the input, like data, needs none). Inputs are batch-major, as nn.RNN's
default. Every callable blocks until JAX's asynchronous result is ready.

Every candidate is jitted: the harness reports its compile time (first call minus steady
state), and XLA's own memory analysis of the compiled forward+backward (its temporaries
plus outputs) as the framework's peak. Float32 and bfloat16: parameters, inputs and
Flax's computation all in the requested dtype.
"""

from __future__ import annotations

from novolstm.api import load_generated
from novolstm.bench import Candidate

CELLS = ("lstm", "novolstm", "novolstm_reference")
DTYPES = ("float32", "bfloat16")


def compiled_bytes(jitted, *args) -> int:
    """XLA's memory analysis of ``jitted`` compiled for ``args``: temporaries plus outputs,
    what the call allocates beyond its inputs (compiling again: call after the timings)."""
    analysis = jitted.lower(*args).compile().memory_analysis()
    return int(analysis.temp_size_in_bytes + analysis.output_size_in_bytes)


def _modes(apply, params, x):
    import jax

    forward = jax.jit(apply)
    grad = jax.jit(jax.grad(lambda p, x: apply(p, x).sum()))
    return dict(
        forward=lambda: jax.block_until_ready(forward(params, x)),
        forward_backward=lambda: jax.block_until_ready(grad(params, x)),
        jit="jax.jit",
        framework_peak_bytes=lambda: compiled_bytes(grad, params, x),
    )


def candidates(batch: int, steps: int, units: int, dtype: str = "float32"):
    import flax.linen as nn
    import jax
    import jax.numpy as jnp

    from novolstm.convert.flax import to_canonical

    x = jax.random.normal(jax.random.key(0), (batch, steps, units), jnp.dtype(dtype))
    native = nn.RNN(nn.OptimizedLSTMCell(units, dtype=jnp.dtype(dtype), param_dtype=jnp.dtype(dtype)))
    # Initialized in float32 (LAPACK's QR behind the orthogonal init has no bfloat16), then
    # cast; param_dtype above also sets the carry's dtype, so all of it runs in ``dtype``.
    variables = nn.RNN(nn.OptimizedLSTMCell(units)).init(jax.random.key(1), x.astype("float32"))
    variables = jax.tree_util.tree_map(lambda v: v.astype(dtype), variables)
    for cell in CELLS:
        m = load_generated(cell, "jax")
        if cell == "lstm":  # the same function as the native baseline
            params = {
                k: jnp.asarray(v, jnp.dtype(dtype))
                for k, v in to_canonical(variables["params"]["cell"], "linen_lstm").items()
            }
        else:
            params = m.Cell(units, dtype=dtype).init(0, units)
        yield Candidate(f"{cell} spec", **_modes(lambda p, x, m=m: m.sequence(p, x)[0], params, x))
    yield Candidate("native: flax OptimizedLSTMCell (nn.RNN)", **_modes(native.apply, variables, x))


def matmul(batch: int, steps: int, units: int, dtype: str = "float32"):
    """A plain GEMM with the LSTM forward's matmul FLOPs, for the GFLOP/s fraction."""
    import jax
    import jax.numpy as jnp

    a = jax.random.normal(jax.random.key(0), (batch * steps, 2 * units), jnp.dtype(dtype))
    w = jax.random.normal(jax.random.key(1), (2 * units, 4 * units), jnp.dtype(dtype))
    mm = jax.jit(jnp.matmul)
    return lambda: jax.block_until_ready(mm(a, w))
