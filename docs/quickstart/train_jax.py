import jax
import jax.numpy as jnp
from novolstm.jax import NovoLSTMCell  # the Flax modules: novolstm.flax.NovoLSTMCell (nnx), novolstm.flax.linen

x = jax.random.normal(jax.random.key(0), (64, 20, 8))
y = x[:, :, :1].mean(axis=1)

cell = NovoLSTMCell(units=16)  # pure init / step / sequence functions
params = {"cell": cell.init(0, input_size=8), "readout": jnp.zeros((16, 1))}


@jax.jit
def train_step(params):
    def loss(p):
        out, _ = cell.sequence(p["cell"], x)  # lax.scan over time
        return ((out[:, -1] @ p["readout"] - y) ** 2).mean()

    value, grads = jax.value_and_grad(loss)(params)
    return jax.tree.map(lambda p, g: p - 2.0 * g, params, grads), value


losses = []
for step in range(200):
    params, value = train_step(params)
    losses.append(float(value))
assert losses[-1] < 0.5 * losses[0]
