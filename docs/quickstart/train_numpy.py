import numpy as np
import novolstm

rng = np.random.default_rng(0)
x = rng.normal(size=(64, 20, 8))
y = x[:, :, 0].mean(axis=1)  # a toy task: the mean of the first feature

cell = novolstm.get_cell("numpy", spec="novolstm")(input_size=8, units=16, seed=0)
readout = rng.normal(size=16) * 0.1
losses = []
for step in range(200):
    out, _, vjp = cell.sequence_with_vjp(x)  # outputs, final state, and a gradient function
    err = out[:, -1] @ readout - y
    losses.append(float((err**2).mean()))
    g = np.zeros_like(out)
    g[:, -1] = np.outer(2 * err / len(y), readout)  # d(loss)/d(outputs)
    readout -= 2.0 * out[:, -1].T @ (2 * err / len(y))
    for name, grad in vjp(g)[2].items():  # gradients of every canonical parameter
        cell.params[name] -= 2.0 * grad
assert losses[-1] < 0.5 * losses[0]
