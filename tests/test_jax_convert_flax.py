"""Flax weights as users hold them: the variables of linen nn.RNN and the state of nnx.RNN convert
with convert.flax.to_canonical and compute what the Flax layer computes (against the float64
reference); --lossy reaches the Flax writer."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen, nnx

import novolstm
from novolstm.cli import main
from novolstm.convert import LossyConversionWarning, files
from novolstm.convert.flax import to_canonical
from novolstm.testing import assert_close, random_params, tolerance

B, T, I, H = 2, 7, 3, 4


def reference(cell, params, x):
    return novolstm.reference.run(cell, params, np.asarray(x, np.float64))[0]


@pytest.mark.parametrize(
    "cell_class, layout, cell",
    [("LSTMCell", "linen_lstm", "lstm"), ("OptimizedLSTMCell", "linen_lstm", "lstm"), ("GRUCell", "linen_gru", "gru")],
)
def test_linen_rnn_variables(cell_class, layout, cell):
    rnn = linen.RNN(getattr(linen, cell_class)(features=H))
    x = jax.random.normal(jax.random.key(1), (B, T, I))
    variables = rnn.init(jax.random.key(0), x)
    variables = jax.tree_util.tree_map(
        lambda a: a + 0.1 * jax.random.normal(jax.random.key(2), a.shape), variables
    )  # non-zero biases
    params = to_canonical(variables, layout)  # {"params": {"cell": ...}}: nn.RNN's own nesting
    assert_close(
        np.asarray(rnn.apply(variables, x)),
        reference(cell, params, x),
        tolerance("float32", T),
        what=f"nn.RNN({cell_class})",
    )


@pytest.mark.parametrize(
    "cell_class, layout, cell", [("LSTMCell", "nnx_lstm", "lstm"), ("OptimizedLSTMCell", "nnx_optimized_lstm", "lstm")]
)
def test_nnx_rnn_state(cell_class, layout, cell):
    rnn = nnx.RNN(getattr(nnx, cell_class)(I, H, rngs=nnx.Rngs(0)))
    state = nnx.state(rnn, nnx.Param)
    state = jax.tree_util.tree_map(lambda a: a + 0.1 * jax.random.normal(jax.random.key(2), a.shape), state)
    nnx.update(rnn, state)
    x = jax.random.normal(jax.random.key(1), (B, T, I))
    expected = np.asarray(rnn(x))
    for tree in (
        nnx.state(rnn, nnx.Param),
        nnx.to_pure_dict(nnx.state(rnn, nnx.Param)),
    ):  # {"cell": ...}: nnx.RNN's nesting
        params = to_canonical(tree, layout)
        assert_close(expected, reference(cell, params, x), tolerance("float32", T), what=f"nnx.RNN({cell_class})")


def test_nnx_gru_rnn_state():
    rnn = nnx.RNN(nnx.GRUCell(I, H, rngs=nnx.Rngs(0)))
    x = jax.random.normal(jax.random.key(1), (B, T, I))
    params = to_canonical(nnx.state(rnn, nnx.Param), "nnx_gru")
    assert not params["b_hn"].any()
    assert_close(np.asarray(rnn(x)), reference("gru", params, x), tolerance("float32", T), what="nnx.RNN(GRUCell)")


def test_lossy_reaches_the_flax_writer(tmp_path, capsys):
    params = {k: v.astype(np.float32) for k, v in random_params("gru", I, H, np.random.default_rng(0)).items()}
    assert params["b_hn"].any()
    files.write({"l0": params}, tmp_path / "g.safetensors", "canonical", "gru")
    args = [
        "convert",
        str(tmp_path / "g.safetensors"),
        "-o",
        str(tmp_path / "g.msgpack"),
        "--from",
        "canonical",
        "--to",
        "flax",
        "--spec",
        "gru",
        "--layout",
        "nnx_gru",
    ]
    assert main(args) == 2
    assert "pass lossy=True (novolstm convert --lossy)" in capsys.readouterr().err
    assert not (tmp_path / "g.msgpack").exists()
    with pytest.warns(LossyConversionWarning, match="dropped \\['b_hn'\\]"):
        assert main(args + ["--lossy"]) == 0
    back = files.read(tmp_path / "g.msgpack", "flax", "gru", layout="nnx_gru")["l0"]
    assert not back["b_hn"].any()
    assert all(np.array_equal(back[k], params[k]) for k in params if k != "b_hn")
    rnn = nnx.RNN(nnx.GRUCell(I, H, rngs=nnx.Rngs(0)))
    from flax import serialization

    state = nnx.state(rnn, nnx.Param)
    pure = nnx.to_pure_dict(state)
    pure["cell"] = serialization.msgpack_restore((tmp_path / "g.msgpack").read_bytes())
    nnx.replace_by_pure_dict(state, pure)
    nnx.update(rnn, state)
    x = jnp.asarray(np.random.default_rng(1).normal(size=(B, T, I)), jnp.float32)
    assert_close(np.asarray(rnn(x)), reference("gru", back, x), tolerance("float32", T), what="the lossy nnx GRU")
