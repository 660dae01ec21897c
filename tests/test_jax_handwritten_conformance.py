"""The conformance kit on NovoLSTMs written directly with jax.numpy, outside novolstm: the correct
one passes; each one with a usual porting mistake (conftest.HANDWRITTEN_MISTAKES) fails, and
the diagnosis names the mistake, in float64 and float32."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from novolstm import conformance


def handwritten_novolstm(mistake=None):
    """NovoLSTM as a JAX user would write it from the design document, with one mistake or none."""

    def sigmoid(z):
        if mistake == "keras 2 hard sigmoid":
            return jnp.clip(0.2 * z + 0.5, 0.0, 1.0)
        if mistake == "keras 3 hard sigmoid":
            return jax.nn.hard_sigmoid(z)  # relu6(x + 3) / 6
        return jax.nn.sigmoid(z)

    def softmax(z):
        if mistake == "softmax over the batch":
            return jax.nn.softmax(z, axis=0)
        if mistake == "softmax without max":
            return jnp.exp(z) / jnp.exp(z).sum(axis=-1, keepdims=True)
        return jax.nn.softmax(z, axis=-1)

    def fn(params, x, state, mask):
        dtype = np.dtype(x.dtype)
        if mistake == "lower precision":  # computes one precision below what it was handed
            dtype = np.dtype(np.float32 if dtype == np.float64 else np.float16)
        p = {k: jnp.asarray(v, dtype) for k, v in params.items()}
        if mistake == "gate order":
            for kind in "WUb":
                p[f"{kind}_i"], p[f"{kind}_f"] = p[f"{kind}_f"], p[f"{kind}_i"]
        eps = {"torch epsilon": 1e-5, "flax epsilon": 1e-6}.get(mistake, 1e-3)

        def layer_norm(z):
            mean = z.mean(axis=-1, keepdims=True)
            var = jnp.var(z, axis=-1, keepdims=True, ddof=1 if mistake == "sample variance" else 0)
            return (z - mean) / jnp.sqrt(var + eps) * p["gamma_i"] + p["beta_i"]

        def gate(name, x_t, h, recurrent=True):
            z = x_t @ p[f"W_{name}"]
            if not (mistake == "bias dropped" and name == "o"):
                z = z + p[f"b_{name}"]
            if recurrent and not (mistake == "recurrent term missing" and name == "f"):
                z = z + h @ p[f"U_{name}"]
            return z

        mask = jnp.asarray(mask)
        if mistake == "mask read as lengths":
            mask = jnp.arange(x.shape[1])[None] < mask.sum(axis=1)[:, None]
        xs = jnp.asarray(x, dtype)
        h, c = (jnp.asarray(s, dtype) for s in state)
        outputs = []
        for t in range(x.shape[1]):
            x_t = xs[:, t]
            if mistake == "the other NovoLSTM":
                i = layer_norm(sigmoid(gate("i", x_t, h)) * softmax(gate("s", x_t, h, recurrent=False)))
            else:
                i = layer_norm(sigmoid(gate("i", x_t, h))) * softmax(gate("s", x_t, h))
            f, g, o = sigmoid(gate("f", x_t, h)), jnp.tanh(gate("g", x_t, h)), sigmoid(gate("o", x_t, h))
            c_new = i * c + f * g if mistake == "roles swapped in the state update" else f * c + i * g
            h_new = o * jnp.tanh(c if mistake == "output reads the old state" else c_new)
            m = mask[:, t, None]
            if mistake == "masked steps update the state":
                h, c = h_new, c_new
            else:
                h, c = jnp.where(m, h_new, h), jnp.where(m, c_new, c)
            outputs.append(jnp.where(m, h_new, h if mistake == "masked steps output h" else jnp.zeros_like(h_new)))
        final = (c, h) if mistake == "state order" else (h, c)
        return np.asarray(jnp.stack(outputs, 1)).astype(x.dtype), tuple(np.asarray(s).astype(x.dtype) for s in final)

    def run(params, x, state, mask):
        with jax.enable_x64(np.dtype(x.dtype) == np.float64):  # float64 needs x64; scoped to this call
            return fn(params, x, state, mask)

    return run


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_a_correct_hand_written_jax_novolstm_conforms(dtype):
    report = conformance.check(handwritten_novolstm(), "novolstm", dtype=dtype)
    assert report.passed, report.format()


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_each_hand_written_jax_mistake_is_caught_and_diagnosed(handwritten_mistake, expected_diagnosis, dtype):
    report = conformance.check(handwritten_novolstm(handwritten_mistake), "novolstm", dtype=dtype)
    assert not report.passed
    assert all(r.first_divergence for r in report.results if not r.passed)
    assert expected_diagnosis(dtype) in (report.likely_mistake or ""), report.format()
