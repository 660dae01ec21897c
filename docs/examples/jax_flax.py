"""The JAX page's example: pure functions, then the same cell as Flax nnx and linen modules."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

import novolstm

x = jax.random.normal(jax.random.key(0), (4, 30, 8))  # (batch, time, input)

# Pure functions: parameters are a dict of canonical names, the state a tuple (h, c).
cell = novolstm.get_cell("jax", spec="novolstm")(units=16)
params = cell.init(0, input_size=8)
outputs, (h, c) = jax.jit(cell.sequence)(params, x)  # lax.scan, input GEMM hoisted
lengths = jnp.array([30, 30, 12, 5])
masked, _ = cell.sequence(params, x, lengths=lengths)  # padded steps keep the state, output 0
backward_params = cell.init(1, input_size=8)
both, _ = cell.bidirectional((params, backward_params), x)  # (4, 30, 32): the two directions concatenated
assert both.shape == (4, 30, 32)

# The same numbers as the float64 reference, within the float32 tolerance.
expected, _ = novolstm.reference.run("novolstm", {k: np.asarray(v, np.float64) for k, v in params.items()}, np.asarray(x, np.float64))
assert np.abs(np.asarray(outputs) - expected).max() < 1e-4
assert float(jnp.abs(masked[2, 12:]).max()) == 0.0

# Flax nnx: the cell is an nnx.Module that nnx.RNN scans; its Params carry the canonical names.
module = novolstm.load_generated("novolstm", "jax")
layer = nnx.RNN(module.NNXCell(8, 16, params=params))
np.testing.assert_allclose(np.asarray(layer(x)), np.asarray(outputs), rtol=1e-5, atol=1e-6)

# Flax linen: LinenCell under nn.RNN, initialized and applied the linen way.
rnn = nn.RNN(module.LinenCell(16))
variables = rnn.init(jax.random.key(1), x)
assert set(variables["params"]["cell"]) == set(params)  # W_i, U_i, b_i, W_s, ...
y = rnn.apply(variables, x)
assert y.shape == (4, 30, 16)
