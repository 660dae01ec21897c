"""The Keras backend against the float64 oracle: every built-in cell, float64 and float32.

Both generated entry points are checked: ``Layer`` (the hoisted sequence layer,
also behind ``novolstm.run(backend="keras")``) and ``Cell`` inside a plain
``keras.layers.RNN``. Gradients (inputs, initial state, every parameter) are
checked against the NumPy backend's generated backward pass. Runs on whichever
Keras backend ``KERAS_BACKEND`` selects; the gradient helper is the only place
that looks at it.
"""

from __future__ import annotations

import keras
import numpy as np
import pytest

import novolstm
from novolstm.testing import assert_close, computes_in, random_params, tolerance

SPECS = novolstm.list_specs()
B, T, I, H = 3, 7, 4, 5


def tol(dtype, steps=1, kind="outputs"):
    # novolstm.testing.PRECISION_LIMITS: Keras on JAX and torch holds float64 to float32's tolerance.
    return tolerance(computes_in("keras", dtype, keras.backend.backend()), steps=steps, kind=kind)


def make_case(name, rng, masked=True, scale=0.5):
    spec = novolstm.load_spec(name)
    params = random_params(spec, I, H, rng, scale=scale)
    x = rng.normal(size=(B, T, I))
    state = tuple(rng.normal(size=(B, H)) for _ in spec.state_names)
    mask = None
    if masked:
        mask = np.ones((B, T), bool)
        mask[0, 2] = False  # a hole in the middle
        mask[1, 5:] = False  # right padding
        mask[2, :2] = False  # left padding
    return params, x, state, mask


def cast(tree, dtype):
    if isinstance(tree, dict):
        return {k: np.asarray(v, dtype) for k, v in tree.items()}
    return tuple(np.asarray(v, dtype) for v in tree)


def check(actual, expected, dtype, what, kind="outputs"):
    actual = np.asarray(actual)
    assert actual.dtype == np.dtype(dtype), f"{what}: dtype {actual.dtype}, expected {dtype}"
    return assert_close(actual, expected, tol(dtype, steps=T, kind=kind), what)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("masked", [False, True], ids=["unmasked", "masked"])
@pytest.mark.parametrize("name", SPECS)
def test_run_matches_reference(name, masked, dtype, rng):
    params, x, state, mask = make_case(name, rng, masked)
    ref_y, ref_state = novolstm.reference.run(name, params, x, state, mask=mask)
    y, final = novolstm.run(name, cast(params, dtype), x.astype(dtype), cast(state, dtype), backend="keras", mask=mask)
    check(y, ref_y, dtype, "outputs")
    for s, r, n in zip(final, ref_state, novolstm.load_spec(name).state_names):
        check(s, r, dtype, f"final {n}")
    if masked:
        assert (y[~mask] == 0).all(), "masked steps must output exactly zero"


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("name", SPECS)
def test_cell_in_keras_rnn_matches_reference(name, dtype, rng):
    params, x, state, mask = make_case(name, rng, masked=True)
    ref_y, ref_state = novolstm.reference.run(name, params, x, state, mask=mask)
    cell = novolstm.get_cell("keras", name)(H, dtype=dtype).load_params(params)
    rnn = keras.layers.RNN(cell, return_sequences=True, return_state=True, zero_output_for_mask=True, dtype=dtype)
    y, *final = rnn(x.astype(dtype), initial_state=list(cast(state, dtype)), mask=mask)
    check(keras.ops.convert_to_numpy(y), ref_y, dtype, "outputs")
    for s, r in zip(final, ref_state):
        check(keras.ops.convert_to_numpy(s), r, dtype, "final state")
    assert (keras.ops.convert_to_numpy(y)[~mask] == 0).all()


@pytest.mark.parametrize("name", SPECS)
def test_layer_and_cell_one_step_agree(name, rng):
    """Cell.call (prologue and step per timestep) equals Layer (prologue hoisted) on one step."""
    params, x, state, _ = make_case(name, rng, masked=False)
    cell = novolstm.get_cell("keras", name)(H, dtype="float64").load_params(params)
    out, new_state = cell(x[:, 0], list(state))
    ref_y, ref_state = novolstm.reference.run(name, params, x[:, :1], state)
    check(keras.ops.convert_to_numpy(out), ref_y[:, 0], "float64", "output")
    for s, r in zip(new_state, ref_state):
        check(keras.ops.convert_to_numpy(s), r, "float64", "state")


@pytest.mark.parametrize("hoist_input", [False, True])
@pytest.mark.parametrize("name", ["novolstm", "gru"])
def test_go_backwards_is_the_reference_on_the_reversed_sequence(name, hoist_input, rng):
    params, x, state, mask = make_case(name, rng, masked=True)
    ref_y, ref_state = novolstm.reference.run(name, params, x[:, ::-1], state, mask=mask[:, ::-1])
    Layer = novolstm.get_layer("keras", name)
    layer = Layer(
        H, hoist_input=hoist_input, go_backwards=True, return_sequences=True, return_state=True, dtype="float64"
    )
    layer.cell.load_params(params)
    y, *final = layer(x, initial_state=list(state), mask=mask)
    check(keras.ops.convert_to_numpy(y), ref_y, "float64", "outputs (in processing order, as Keras returns them)")
    for s, r in zip(final, ref_state):
        check(keras.ops.convert_to_numpy(s), r, "float64", "final state")


@pytest.mark.parametrize("name", ["novolstm", "gru"])
def test_last_output_is_that_of_the_last_real_step(name, rng):
    """return_sequences=False: Keras' convention, the output of each row's last unmasked step."""
    params, x, state, mask = make_case(name, rng, masked=True)
    ref_y, _ = novolstm.reference.run(name, params, x, state, mask=mask)
    last_real = np.array([ref_y[b, np.flatnonzero(mask[b])[-1]] for b in range(B)])
    layer = novolstm.get_layer("keras", name)(H, dtype="float64")
    layer.cell.load_params(params)
    check(
        keras.ops.convert_to_numpy(layer(x, initial_state=list(state), mask=mask)), last_real, "float64", "last output"
    )
    rnn = keras.layers.RNN(novolstm.get_cell("keras", name)(H, dtype="float64").load_params(params), dtype="float64")
    check(
        keras.ops.convert_to_numpy(rnn(x, initial_state=list(state), mask=mask)),
        last_real,
        "float64",
        "RNN(Cell) last output",
    )


@pytest.mark.parametrize("hoist_input", [False, True])
def test_unroll_equals_the_loop(hoist_input, rng):
    params, x, state, mask = make_case("novolstm", rng, masked=True)
    Layer = novolstm.get_layer("keras", "novolstm")
    results = []
    for unroll in (False, True):
        layer = Layer(
            H, hoist_input=hoist_input, unroll=unroll, return_sequences=True, return_state=True, dtype="float64"
        )
        layer.cell.load_params(params)
        results.append([keras.ops.convert_to_numpy(a) for a in layer(x, initial_state=list(state), mask=mask)])
    for a, b in zip(*results):
        assert_close(a, b, tol("float64"), "unrolled vs loop")


def test_large_logits_do_not_overflow(rng):
    """Sigmoid and the max-subtracted softmax stay finite where exp(z) overflows, in float32."""
    params, x, state, _ = make_case("novolstm", rng, masked=False, scale=30.0)
    ref_y, ref_state = novolstm.reference.run("novolstm", params, 10 * x, state)
    y, final = novolstm.run(
        "novolstm", cast(params, "float32"), (10 * x).astype("float32"), cast(state, "float32"), backend="keras"
    )
    assert np.isfinite(y).all() and all(np.isfinite(s).all() for s in final)
    # The gates saturate: a float32 rounding of a logit near a softmax tie moves a gate by O(1),
    # so only finiteness and the float64 run are held to the table here.
    y64, _ = novolstm.run("novolstm", params, 10 * x, state, backend="keras")
    check(y64, ref_y, "float64", "float64 outputs with huge logits")


# ---------------------------------------------------------------- gradients


def value_and_grads(layer, inputs, state, mask, g_out, g_state):
    """d/d(x, state, variables) of sum(outputs * g_out) + sum(final * g_state), on the active Keras backend.

    ``layer`` returns (outputs, *final). Variables are fed through ``stateless_call``
    so that every backend differentiates with respect to plain tensors.
    """
    names = [v.name for v in layer.trainable_variables]
    values = [np.array(keras.ops.convert_to_numpy(keras.ops.copy(v))) for v in layer.trainable_variables]
    backend = keras.backend.backend()

    def loss(x, s, vs):
        (y, *fin), _ = layer.stateless_call(vs, [], x, initial_state=list(s), mask=keras.ops.convert_to_tensor(mask))
        total = keras.ops.sum(y * keras.ops.convert_to_tensor(g_out))
        for f, g in zip(fin, g_state):
            total = total + keras.ops.sum(f * keras.ops.convert_to_tensor(g))
        return total

    if backend == "tensorflow":
        import tensorflow as tf

        xs = [tf.constant(inputs), [tf.constant(s) for s in state], [tf.constant(v) for v in values]]
        with tf.GradientTape() as tape:
            tape.watch(xs)
            total = loss(*xs)
        gx, gs, gv = tape.gradient(total, xs)
        to_np = np.asarray
    elif backend == "jax":
        import jax

        gx, gs, gv = jax.grad(loss, argnums=(0, 1, 2))(inputs, list(state), values)
        to_np = np.asarray
    elif backend == "torch":
        import torch

        xs = [torch.tensor(inputs, requires_grad=True)]
        ss = [torch.tensor(s, requires_grad=True) for s in state]
        vs = [torch.tensor(v, requires_grad=True) for v in values]
        loss(xs[0], ss, vs).backward()
        gx, gs, gv = xs[0].grad, [s.grad for s in ss], [v.grad for v in vs]
        to_np = lambda t: t.detach().cpu().numpy()  # noqa: E731
    else:
        pytest.fail(f"no gradient helper for Keras backend {backend!r}")
    return to_np(gx), [to_np(g) for g in gs], {n: to_np(g) for n, g in zip(names, gv)}


@pytest.mark.parametrize("entry", ["Layer", "Layer(hoist_input)", "RNN(Cell)"])
@pytest.mark.parametrize("name", SPECS)
def test_gradients_match_numpy_backward(name, entry, rng):
    params, x, state, mask = make_case(name, rng, masked=True)
    g_out = rng.normal(size=(B, T, H))
    g_state = tuple(rng.normal(size=(B, H)) for _ in state)
    numpy_module = novolstm.load_generated(name, "numpy")
    _, _, tape = numpy_module.forward(params, x, state, mask, keep_tape=True)
    ref_gx, ref_gs, ref_gp = numpy_module.backward(params, tape, g_out, g_state)

    if entry.startswith("Layer"):
        layer = novolstm.get_layer("keras", name)(
            H, hoist_input=entry == "Layer(hoist_input)", return_sequences=True, return_state=True, dtype="float64"
        )
        layer.cell.load_params(params)
    else:
        cell = novolstm.get_cell("keras", name)(H, dtype="float64").load_params(params)
        layer = keras.layers.RNN(
            cell, return_sequences=True, return_state=True, zero_output_for_mask=True, dtype="float64"
        )
    layer.build((B, T, I))
    gx, gs, gp = value_and_grads(layer, x, state, mask, g_out, g_state)

    gtol = tol("float64", steps=T, kind="gradients")
    assert_close(gx, ref_gx, gtol, "d/dx")
    for a, b in zip(gs, ref_gs):
        assert_close(a, b, gtol, "d/d(initial state)")
    assert sorted(gp) == sorted(ref_gp), "every canonical parameter must receive a gradient"
    for n in ref_gp:
        assert_close(gp[n], ref_gp[n], gtol, f"d/d{n}")


# ---------------------------------------------------------------- properties and docs


from hypothesis import given  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


@given(
    name=st.sampled_from(SPECS),
    batch=st.integers(1, 3),
    steps=st.integers(1, 5),
    input_size=st.integers(1, 4),
    units=st.integers(1, 4),
    go_backwards=st.booleans(),
    hoist_input=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_layer_matches_reference_for_any_sizes_and_masks(
    name, batch, steps, input_size, units, go_backwards, hoist_input, seed
):
    rng = np.random.default_rng(seed)
    spec = novolstm.load_spec(name)
    params = random_params(spec, input_size, units, rng)
    x = rng.normal(size=(batch, steps, input_size))
    state = tuple(rng.normal(size=(batch, units)) for _ in spec.state_names)
    mask = rng.random((batch, steps)) < 0.7
    layer = novolstm.get_layer("keras", name)(
        units,
        hoist_input=hoist_input,
        go_backwards=go_backwards,
        return_sequences=True,
        return_state=True,
        dtype="float64",
    )
    layer.cell.load_params(params)
    y, *final = layer(x, initial_state=list(state), mask=mask)
    flip = (lambda a: a[:, ::-1]) if go_backwards else (lambda a: a)
    ref_y, ref_state = novolstm.reference.run(name, params, flip(x), state, mask=flip(mask))
    assert_close(keras.ops.convert_to_numpy(y), ref_y, tol("float64", steps=steps), "outputs")
    for s, r in zip(final, ref_state):
        assert_close(keras.ops.convert_to_numpy(s), r, tol("float64", steps=steps), "final state")


def test_generated_docstring_examples_run():
    import doctest

    for name in SPECS:
        module = novolstm.load_generated(name, "keras")
        finder = doctest.DocTestFinder(exclude_empty=True)
        runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
        for test in finder.find(module, module.__name__, globs=dict(module.__dict__)):
            runner.run(test)
        failed, attempted = runner.summarize(verbose=False)
        assert attempted >= 2 and failed == 0, f"{name}: {failed} of {attempted} examples failed"


@pytest.mark.parametrize("policy", ["mixed_bfloat16", "mixed_float16"])
def test_mixed_precision_policies_stay_within_their_tolerance(policy, rng):
    """float32 variables, low-precision compute. (The LayerNorm statistics are not yet
    accumulated in float32 as numerics.md asks; this measures the cell as it is.)"""
    params, x, state, mask = make_case("novolstm", rng, masked=True)
    ref_y, _ = novolstm.reference.run("novolstm", params, x, state, mask=mask)
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(policy)
    try:
        layer = novolstm.get_layer("keras", "novolstm")(H, return_sequences=True)
        layer.build((B, T, I))
        layer.cell.load_params(params)
        y = layer(x.astype("float32"), initial_state=[s.astype("float32") for s in state], mask=mask)
    finally:
        keras.config.set_dtype_policy(previous)
    compute = policy.split("_")[1]
    assert keras.backend.standardize_dtype(y.dtype) == compute
    y = keras.ops.convert_to_numpy(keras.ops.cast(y, "float32")).astype("float64")
    assert_close(y, ref_y, tolerance(compute, steps=T), f"{policy} outputs")
