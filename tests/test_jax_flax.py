"""The Flax side: the generated nnx and linen cells under Flax's own RNN wrappers, and the
converter novolstm.convert.flax against Flax's real LSTM and GRU cells."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from hypothesis import given, settings
from hypothesis import strategies as st

import novolstm
from novolstm import reference
from novolstm.convert import flax as convert
from novolstm.testing import PROPERTY_CELLS, assert_close, random_params, tolerance

CELLS = list(PROPERTY_CELLS)  # every cell: tests/test_backends.py, tests/test_conformance.py


def module(cell):
    return novolstm.load_generated(cell, "jax")


# ---------------------------------------------------------------- the generated Flax cells


@pytest.mark.parametrize("cell", CELLS)
def test_nnx_cell_under_nnx_rnn(cell):
    m = module(cell)
    rng = np.random.default_rng(0)
    params = random_params(cell, 3, 4, rng)
    x = rng.normal(size=(2, 6, 3)).astype(np.float32)
    layer = m.NNXCell(3, 4, params=params)
    assert set(nnx.to_pure_dict(nnx.state(layer, nnx.Param))) == set(params)  # canonical names
    outputs = nnx.RNN(layer)(jnp.asarray(x))
    carry, _ = nnx.RNN(layer, return_carry=True)(jnp.asarray(x))
    expected, expected_state = reference.run(cell, params, x)
    tol = tolerance("float32", 6)
    assert_close(np.asarray(outputs), expected, tol, what="nnx.RNN outputs")
    for got, want in zip(carry, expected_state):
        assert_close(np.asarray(got), want, tol, what="nnx.RNN carry")
    hoisted, _ = layer.sequence(jnp.asarray(x))  # the faster path gives the same numbers
    assert_close(np.asarray(hoisted), expected, tol, what="NNXCell.sequence")


def test_nnx_cell_seed_rngs_and_training():
    m = module("novolstm")
    seeded = m.NNXCell(3, 4, seed=5)
    expected = novolstm.init_params("novolstm", 3, 4, seed=5)
    for name, value in seeded.canonical_params().items():
        np.testing.assert_array_equal(np.asarray(value), expected[name].astype(np.float32))
    layer = nnx.RNN(m.NNXCell(3, 4, rngs=nnx.Rngs(0)))
    x = jnp.ones((2, 5, 3))

    @nnx.jit
    def train_step(layer):
        loss, grads = nnx.value_and_grad(lambda l: jnp.mean(l(x) ** 2))(layer)
        params = nnx.state(layer, nnx.Param)
        nnx.update(layer, jax.tree_util.tree_map(lambda p, g: p - 0.5 * g, params, grads))
        return loss

    losses = [float(train_step(layer)) for _ in range(4)]
    assert losses[-1] < losses[0]


@pytest.mark.parametrize("cell", ["lstm", "novolstm_reference", "gru"])
def test_linen_cell_under_nn_rnn(cell):
    m = module(cell)
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.normal(size=(2, 6, 3)), jnp.float32)
    layer = nn.RNN(m.LinenCell(4))
    variables = layer.init(jax.random.key(0), x)
    params = variables["params"]["cell"]
    assert set(params) == set(m.PARAM_TABLE)  # canonical names
    assert {k: v.shape for k, v in params.items()} == novolstm.load_spec(cell).parameter_shapes(3, 4)
    outputs = layer.apply(variables, x)
    expected, _ = reference.run(
        cell, {k: np.asarray(v, np.float64) for k, v in params.items()}, np.asarray(x, np.float64)
    )
    assert_close(np.asarray(outputs), expected, tolerance("float32", 6), what="nn.RNN outputs")
    grads = jax.grad(lambda v: layer.apply(v, x).sum())(variables)
    assert set(grads["params"]["cell"]) == set(m.PARAM_TABLE)


def test_nnx_cell_float64():
    m = module("novolstm")
    rng = np.random.default_rng(2)
    params = random_params("novolstm", 3, 4, rng)
    x = rng.normal(size=(2, 6, 3))
    with jax.enable_x64(True):
        layer = m.NNXCell(3, 4, params=params, param_dtype=jnp.float64)
        outputs = nnx.RNN(layer)(jnp.asarray(x))
        assert outputs.dtype == jnp.float64
        assert_close(np.asarray(outputs), reference.run("novolstm", params, x)[0], what="float64 nnx.RNN")


# ---------------------------------------------------------------- the converter: round trips


def canonical_strategy(spec):
    @st.composite
    def build(draw):
        rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
        dtype = draw(st.sampled_from([np.float64, np.float32, np.float16]))
        params = random_params(spec, draw(st.integers(1, 5)), draw(st.integers(1, 5)), rng)
        return {k: v.astype(dtype) for k, v in params.items()}

    return build()


def assert_identical(a, b):
    if isinstance(a, dict):
        assert isinstance(b, dict) and sorted(a) == sorted(b)
        for k in a:
            assert_identical(a[k], b[k])
    else:
        assert a.dtype == b.dtype and a.shape == b.shape and np.array_equal(a, b)


@pytest.mark.parametrize("layout", ["linen_lstm", "nnx_lstm", "nnx_optimized_lstm", "linen_gru"])
@settings(max_examples=40)
@given(data=st.data())
def test_round_trip_is_exact(layout, data):
    params = data.draw(canonical_strategy(convert.LAYOUTS[layout]))
    tree = convert.from_canonical(params, layout)
    back = convert.to_canonical(tree, layout)
    assert_identical(back, params)
    assert_identical(convert.from_canonical(back, layout), tree)


@settings(max_examples=40)
@given(data=st.data())
def test_round_trip_nnx_gru_is_exact_where_b_hn_is_zero(data):
    params = data.draw(canonical_strategy("gru"))
    params["b_hn"] = np.zeros_like(params["b_hn"])
    assert_identical(convert.to_canonical(convert.from_canonical(params, "nnx_gru"), "nnx_gru"), params)


def test_carry_order():
    h, c = np.ones(2), np.zeros(2)
    assert convert.state_to_carry((h, c), "nnx_lstm")[0] is c
    assert convert.carry_to_state((c, h), "linen_lstm")[0] is h
    assert convert.carry_to_state(h, "nnx_gru") == (h,)


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: convert.from_canonical(novolstm.init_params("novolstm", 3, 2), "linen_lstm"), "unexpected .*W_s"),
        (lambda: convert.from_canonical(novolstm.init_params("lstm", 3, 2), "keras"), "unknown Flax layout"),
        (lambda: convert.from_canonical({**novolstm.init_params("gru", 3, 2), "b_hn": np.ones(2)}, "nnx_gru"), "b_hn"),
        (
            lambda: convert.from_canonical({**novolstm.init_params("lstm", 3, 2), "U_f": np.ones((2, 3))}, "nnx_lstm"),
            "U_f",
        ),
        (
            lambda: convert.to_canonical(
                {
                    **convert.from_canonical(novolstm.init_params("lstm", 3, 2), "linen_lstm"),
                    "extra": {"kernel": np.ones(2)},
                },
                "linen_lstm",
            ),
            "unexpected \\['extra'\\]",
        ),
        (
            lambda: convert.to_canonical(
                convert.from_canonical(novolstm.init_params("lstm", 3, 2), "linen_lstm"), "nnx_lstm"
            ),
            "missing \\['if_'\\]",
        ),
        (
            lambda: convert.to_canonical({"ii": {"kernel": np.ones((3, 2)), "bias": np.ones(2)}}, "linen_lstm"),
            "missing",
        ),
        (
            lambda: convert.to_canonical(
                {"dense_i": {"kernel": np.ones((3, 6))}, "dense_h": {"kernel": np.ones((2, 8)), "bias": np.ones(8)}},
                "nnx_optimized_lstm",
            ),
            "4 gates",
        ),
    ],
)
def test_converter_refuses_what_it_cannot_represent(call, match):
    with pytest.raises(ValueError, match=match):
        call()


# ---------------------------------------------------------------- the converter against Flax's real cells


def _run_ours(spec, params, x, state):
    """The generated JAX cell and the float64 reference, both on the converted weights."""
    ours, ours_state = module(spec).sequence(params, x, state)
    expected, expected_state = reference.run(spec, params, x, state)
    assert_close(np.asarray(ours), expected, what=f"{spec} (jax) vs reference")
    return expected, expected_state


LINEN = {"linen_lstm": nn.LSTMCell, "linen_lstm_optimized": nn.OptimizedLSTMCell, "linen_gru": nn.GRUCell}
NNX = {"nnx_lstm": nnx.LSTMCell, "nnx_optimized_lstm": nnx.OptimizedLSTMCell, "nnx_gru": nnx.GRUCell}


@pytest.mark.parametrize("name", sorted(LINEN))
def test_flax_linen_cell_weights_run_the_same_on_the_spec(name):
    layout = name.replace("_optimized", "")
    spec = convert.LAYOUTS[layout]
    rng = np.random.default_rng(11)
    with jax.enable_x64(True):
        x = jnp.asarray(rng.normal(size=(3, 7, 4)))
        flax_cell = LINEN[name](5, param_dtype=jnp.float64)
        layer = nn.RNN(flax_cell, return_carry=True)
        carry0 = jax.tree_util.tree_map(
            lambda a: jnp.asarray(rng.normal(size=a.shape)), flax_cell.initialize_carry(jax.random.key(0), (3, 4))
        )
        variables = layer.init(jax.random.key(1), x, initial_carry=carry0)
        variables = {
            "params": {
                "cell": jax.tree_util.tree_map(
                    lambda a: a + 0.1 * rng.normal(size=a.shape), variables["params"]["cell"]
                )
            }
        }  # nonzero biases too
        carry, outputs = layer.apply(variables, x, initial_carry=carry0)
        params = convert.to_canonical(variables["params"]["cell"], layout)
        state0 = tuple(np.asarray(s) for s in convert.carry_to_state(carry0, layout))
        expected, expected_state = _run_ours(spec, params, np.asarray(x), state0)
    assert_close(np.asarray(outputs), expected, what=f"Flax {name} outputs")
    for got, want in zip(convert.carry_to_state(carry, layout), expected_state):
        assert_close(np.asarray(got), want, what=f"Flax {name} final carry")
    # and back: canonical -> Flax gives Flax the same numbers
    back = {"params": {"cell": convert.from_canonical(params, layout)}}
    assert jax.tree_util.tree_structure(back) == jax.tree_util.tree_structure(variables)


@pytest.mark.parametrize("layout", sorted(NNX))
def test_flax_nnx_cell_weights_run_the_same_on_the_spec(layout):
    spec = convert.LAYOUTS[layout]
    rng = np.random.default_rng(12)
    with jax.enable_x64(True):
        x = jnp.asarray(rng.normal(size=(3, 7, 4)))
        flax_cell = NNX[layout](4, 5, rngs=nnx.Rngs(0), param_dtype=jnp.float64)
        canonical = random_params(spec, 4, 5, rng)
        if layout == "nnx_gru":
            canonical["b_hn"] = np.zeros(5)  # nnx's GRU cannot hold it
        state = nnx.state(flax_cell, nnx.Param)
        nnx.replace_by_pure_dict(state, convert.from_canonical(canonical, layout))
        nnx.update(flax_cell, state)
        assert_identical(convert.to_canonical(nnx.state(flax_cell, nnx.Param), layout), canonical)
        state0 = tuple(rng.normal(size=(3, 5)) for _ in novolstm.load_spec(spec).state_names)
        carry, outputs = nnx.RNN(flax_cell, return_carry=True)(
            x, initial_carry=convert.state_to_carry(tuple(map(jnp.asarray, state0)), layout)
        )
        expected, expected_state = _run_ours(spec, canonical, np.asarray(x), state0)
    assert_close(np.asarray(outputs), expected, what=f"Flax {layout} outputs")
    for got, want in zip(convert.carry_to_state(carry, layout), expected_state):
        assert_close(np.asarray(got), want, what=f"Flax {layout} final carry")


def test_save_module_and_load_into_an_nnx_cell(tmp_path):
    m = module("novolstm")
    cell = m.NNXCell(3, 4, seed=1)
    path = tmp_path / "cell.safetensors"
    novolstm.save_module(cell, path)
    other = novolstm.load_into(m.NNXCell(3, 4, seed=2), path)
    x = jnp.asarray(np.random.default_rng(3).normal(size=(2, 5, 3)), jnp.float32)
    np.testing.assert_array_equal(np.asarray(nnx.RNN(other)(x)), np.asarray(nnx.RNN(cell)(x)))
    with pytest.raises(ValueError, match="expected input size"):
        novolstm.load_into(m.NNXCell(3, 5, seed=2), path)
