"""The tutorial's cell (docs/examples/cifg.toml), written by a "user": it runs on every requested
backend, passes the conformance kit there, and equals a hand-written NumPy CIFG."""

from __future__ import annotations

from pathlib import Path

import numpy as np

import novolstm
from novolstm import conformance

CIFG = Path(__file__).resolve().parents[1] / "docs" / "examples" / "cifg.toml"


def hand_written_cifg(p, x):
    sig = lambda z: 1 / (1 + np.exp(-z))  # noqa: E731
    h = c = np.zeros((x.shape[0], p["U_f"].shape[0]))
    outputs = []
    for t in range(x.shape[1]):
        f = sig(x[:, t] @ p["W_f"] + h @ p["U_f"] + p["b_f"])
        g = np.tanh(x[:, t] @ p["W_g"] + h @ p["U_g"] + p["b_g"])
        o = sig(x[:, t] @ p["W_o"] + h @ p["U_o"] + p["b_o"])
        c = f * c + (1 - f) * g
        h = o * np.tanh(c)
        outputs.append(h)
    return np.stack(outputs, axis=1)


def test_the_generated_cell_is_the_cifg():
    spec = novolstm.load_spec(CIFG)
    rng = np.random.default_rng(0)
    params = {k: rng.normal(scale=0.5, size=s) for k, s in spec.parameter_shapes(3, 4).items()}
    x = rng.normal(size=(2, 6, 3))
    outputs, _ = novolstm.run(spec, params, x)
    np.testing.assert_allclose(outputs, hand_written_cifg(params, x), rtol=0, atol=1e-14)


def test_every_backend_conforms(backend, computes_in):
    spec = novolstm.load_spec(CIFG)
    for dtype in ("float64", "float32"):
        run = lambda p, x, s, m: novolstm.run(spec, p, x, s, backend=backend, mask=m)  # noqa: E731
        report = conformance.check(run, spec, dtype=dtype, computes_in=computes_in(dtype))
        assert report.passed, report.format()
