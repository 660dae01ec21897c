"""JAX candidates: the generated cells (jitted sequence over lax.scan), and Flax's
OptimizedLSTMCell under linen nn.RNN as the native baseline.

Forward+backward takes gradients of loss = output.sum() with respect to every
parameter (the input, like data, needs none). Inputs are batch-major, as nn.RNN's
default. Every callable blocks until JAX's asynchronous result is ready.

Every candidate is jitted: the harness reports its compile time (first call minus steady
state), and XLA's own memory analysis of the compiled forward+backward (its temporaries
plus outputs) as the framework's peak. Float32 and bfloat16: parameters, inputs and
Flax's computation all in the requested dtype.

Beside the default loop (``sequence``: ``unroll=1``, ``remat=True``), NovoLSTM runs with the
settings measured against it (``remat=False``, ``unroll=4``), and as a profile: the same scan
with its LayerNorm and softmax replaced by the identity (the GEMMs and the LSTM-like
elementwise work only), which shows what those reductions cost per step on XLA.
"""

from __future__ import annotations

from novolstm.api import load_generated
from novolstm.bench import Candidate, harness

CELLS = ("lstm", "novolstm", "novolstm_reference")
DTYPES = ("float32", "bfloat16")

#: the harness's targets, plus issue 17's: NovoLSTM against Flax's OptimizedLSTMCell
TARGETS = {
    **harness.TARGETS,
    ("novolstm spec", "native", "forward"): 1.3,
    ("novolstm spec", "native", "forward+backward"): 1.3,
}
#: (name suffix, sequence keywords) of the NovoLSTM loop settings measured beside the default
VARIANTS = ((", remat=False", {"remat": False}), (", unroll=4", {"unroll": 4}))


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
        if cell == "novolstm":
            for suffix, options in VARIANTS:
                apply = lambda p, x, m=m, options=options: m.sequence(p, x, **options)[0]  # noqa: E731
                yield Candidate(f"{cell} spec{suffix}", path=f"jax.jit{suffix}", **_modes(apply, params, x))
            yield Candidate(f"{cell} skeleton (profile)", **_modes(_skeleton(m), params, x))
    yield Candidate("native: flax OptimizedLSTMCell (nn.RNN)", **_modes(native.apply, variables, x))


def _skeleton(m):
    """NovoLSTM's ``sequence`` with its LayerNorm and softmax as the identity: the cost of the
    rest of the step, measured, not a cell anyone should run."""

    def apply(params, x):
        normalize, softmax = m._normalize_units, m._softmax
        m._normalize_units, m._softmax = (lambda z, eps: z), (lambda z: z)
        try:  # the step reads these module globals while jax traces it, here
            return m.sequence(params, x)[0]
        finally:
            m._normalize_units, m._softmax = normalize, softmax

    return apply


def matmul(batch: int, steps: int, units: int, dtype: str = "float32"):
    """A plain GEMM with the LSTM forward's matmul FLOPs, for the GFLOP/s fraction."""
    import jax
    import jax.numpy as jnp

    a = jax.random.normal(jax.random.key(0), (batch * steps, 2 * units), jnp.dtype(dtype))
    w = jax.random.normal(jax.random.key(1), (2 * units, 4 * units), jnp.dtype(dtype))
    mm = jax.jit(jnp.matmul)
    return lambda: jax.block_until_ready(mm(a, w))
