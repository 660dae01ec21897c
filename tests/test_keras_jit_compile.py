"""The generated Keras layer's ``jit_compile``: with True, on TensorFlow, the loop runs as one
XLA computation and, under a gradient tape, its gradient as another; with None (auto, the
default) a rule (_xla_wins) chooses that or TensorFlow's loop per call. Held to the float64
oracle (outputs) and to the NumPy backend's generated backward pass (gradients of an eager
call under a tape, and of a graph traced without a tape then differentiated), on every
Keras backend (on JAX and torch the option does nothing, and the tests say so). The auto
path at these small shapes is the XLA loop, so the property tests run it as auto.
"""

from __future__ import annotations

import sys

import keras
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import novolstm
from novolstm.testing import assert_close, computes_in, random_params, tolerance

TENSORFLOW = keras.backend.backend() == "tensorflow"


def tol(steps, kind="outputs"):
    return tolerance(computes_in("keras", "float64", keras.backend.backend()), steps=steps, kind=kind)


def module_of(layer):
    cls = type(layer)
    return sys.modules[getattr(cls, "generated_module", cls.__module__)]


def make(name, units, jit_compile, **kwargs):
    return novolstm.get_layer("keras", name)(
        units, jit_compile=jit_compile, return_sequences=True, return_state=True, dtype="float64", **kwargs
    )


@settings(max_examples=8)
@given(
    name=st.sampled_from(novolstm.list_specs()),
    batch=st.integers(1, 3),
    steps=st.integers(1, 5),
    input_size=st.integers(1, 4),
    units=st.integers(1, 4),
    go_backwards=st.booleans(),
    masked=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_compiled_loop_matches_reference(name, batch, steps, input_size, units, go_backwards, masked, seed):
    rng = np.random.default_rng(seed)
    spec = novolstm.load_spec(name)
    params = random_params(spec, input_size, units, rng)
    x = rng.normal(size=(batch, steps, input_size))
    state = tuple(rng.normal(size=(batch, units)) for _ in spec.state_names)
    mask = rng.random((batch, steps)) < 0.7 if masked else None
    layer = make(name, units, None, go_backwards=go_backwards)  # auto: XLA at this size
    layer.cell.load_params(params)
    module = module_of(layer)
    module._XLA_LOOPS.clear()
    kwargs = {} if mask is None else {"mask": mask}
    y, *final = layer(x, initial_state=list(state), **kwargs)
    # The XLA loop ran on TensorFlow, and only there.
    assert bool(module._XLA_LOOPS) == TENSORFLOW
    flip = (lambda a: a[:, ::-1]) if go_backwards else (lambda a: a)
    ref_y, ref_state = novolstm.reference.run(name, params, flip(x), state, mask=None if mask is None else flip(mask))
    assert_close(keras.ops.convert_to_numpy(y), ref_y, tol(steps), "outputs")
    for s, r in zip(final, ref_state):
        assert_close(keras.ops.convert_to_numpy(s), r, tol(steps), "final state")


def test_last_output_and_config(rng):
    """return_sequences=False gives each sequence's last real output through XLA too, and the
    option survives get_config / from_config."""
    B, T, I, H = 3, 6, 4, 5
    params = random_params(novolstm.load_spec("novolstm"), I, H, rng)
    x = rng.normal(size=(B, T, I))
    mask = np.ones((B, T), bool)
    mask[1, 4:] = False
    Layer = novolstm.get_layer("keras", "novolstm")
    layer = Layer(H, jit_compile=True, dtype="float64")
    layer.cell.load_params(params)
    ref_y, _ = novolstm.reference.run("novolstm", params, x, mask=mask)
    module_of(layer)._XLA_LOOPS.clear()
    last = keras.ops.convert_to_numpy(layer(x, mask=mask))
    assert bool(module_of(layer)._XLA_LOOPS) == TENSORFLOW  # forced True: XLA
    assert_close(last, ref_y[np.arange(B), [5, 3, 5]], tol(T), "last real output")
    assert layer.get_config()["jit_compile"] is True
    for value in (None, True, False):  # None: auto, the default; True/False: configs saved before auto
        assert Layer.from_config(Layer(H, jit_compile=value).get_config()).jit_compile is value
    assert Layer(H).jit_compile is None
    with pytest.raises(ValueError, match="jit_compile: expected None"):
        Layer(H, jit_compile="auto")


def test_training_with_recurrent_dropout_keeps_the_backends_loop(rng):
    """Recurrent dropout's masks enter the step: that loop stays TensorFlow's (on other backends, theirs)."""
    layer = make("lstm", 3, True, recurrent_dropout=0.5, seed=1)
    module = module_of(layer)
    x = rng.normal(size=(2, 4, 3))
    layer(x)  # build
    module._XLA_LOOPS.clear()
    layer(x, training=True)
    assert not module._XLA_LOOPS
    layer(x, training=False)
    assert bool(module._XLA_LOOPS) == TENSORFLOW


@pytest.mark.parametrize("traced", ["eager", "tape-in-function", "traced-without-tape"])
@pytest.mark.parametrize("name", ["novolstm", "gru", "slstm"])
def test_gradients_match_numpy_backward(name, traced, rng):
    """Under a tape the gradient is XLA's (the loop recomputed and differentiated inside XLA),
    for an eager call and for a tf.function traced for inference and called under a tape later."""
    if not TENSORFLOW:
        pytest.skip("tf.function is TensorFlow's; on this Keras backend jit_compile does nothing")
    import tensorflow as tf

    B, T, I, H = 3, 5, 4, 3
    spec = novolstm.load_spec(name)
    params = random_params(spec, I, H, rng, scale=0.5)
    x = rng.normal(size=(B, T, I))
    state = tuple(rng.normal(size=(B, H)) for _ in spec.state_names)
    mask = np.ones((B, T), bool)
    mask[0, 2] = False
    mask[1, 3:] = False
    g_out = rng.normal(size=(B, T, H))
    numpy_module = novolstm.load_generated(name, "numpy")
    _, _, saved = numpy_module.forward(params, x, state, mask, keep_tape=True)
    ref_gx, ref_gs, ref_gp = numpy_module.backward(params, saved, g_out, None)

    layer = make(name, H, None)  # auto: under a tape, XLA at this size
    layer.cell.load_params(params)
    inputs, initial = tf.constant(x), [tf.constant(s) for s in state]

    def call(inputs, initial):
        return layer(inputs, initial_state=initial, mask=tf.constant(mask))[0]

    variables = layer.cell.trainable_variables
    module = module_of(layer)
    module._XLA_LOOPS.clear()
    if traced == "tape-in-function":  # as a Keras train step without jit_compile

        @tf.function
        def gradients(inputs, initial):
            with tf.GradientTape() as tape:
                tape.watch([inputs, *initial])
                total = tf.reduce_sum(call(inputs, initial) * g_out)
            return tape.gradient(total, [inputs, initial, variables])

        gx, gs, gv = gradients(inputs, initial)
    else:
        outputs = tf.function(call) if traced == "traced-without-tape" else call
        if traced == "traced-without-tape":
            outputs(inputs, initial)  # traced here, without a tape
        with tf.GradientTape() as tape:
            tape.watch([inputs, *initial])
            total = tf.reduce_sum(outputs(inputs, initial) * g_out)
        if traced == "traced-without-tape":
            assert outputs.experimental_get_tracing_count() == 1, "the taped call must reuse the traced graph"
        gx, gs, gv = tape.gradient(total, [inputs, initial, variables])
    assert module._XLA_LOOPS, "the XLA loop ran"
    gtol = tol(T, kind="gradients")
    assert_close(np.asarray(gx), ref_gx, gtol, "d/dx")
    for a, b in zip(gs, ref_gs):
        assert_close(np.asarray(a), b, gtol, "d/d(initial state)")
    got = {v.name.split("/")[-1]: np.asarray(g) for v, g in zip(variables, gv)}
    assert sorted(got) == sorted(ref_gp)
    for n in ref_gp:
        assert_close(got[n], ref_gp[n], gtol, f"d/d{n}")


def test_the_auto_rule_at_the_benchmark_shapes():
    """The rule docs/keras.md states: in float32 XLA up to a step of _XLA_MAX_WORK
    multiply-adds per projection, and without a tape from a batch of 128 above it; in
    bfloat16 under a tape never."""
    module = module_of(novolstm.get_layer("keras", "novolstm")(2))
    rule, bound = module._xla_wins, module._XLA_MAX_WORK
    latency, typical, throughput = (1, 64, 64), (32, 128, 128), (128, 512, 512)
    for batch, units, inputs in (latency, typical, throughput):
        assert rule(batch, units, inputs, "float32", taped=False)
        assert not rule(batch, units, inputs, "bfloat16", taped=True)
    assert rule(*latency, "float32", taped=True) and rule(*typical, "float64", taped=True)
    assert not rule(*throughput, "float32", taped=True)
    assert rule(*typical, "bfloat16", taped=False) and not rule(*throughput, "bfloat16", taped=False)
    assert not rule(32, 512, 512, "float32", taped=False) and not rule(8, 512, 512, "float32", taped=False)
    # The bound itself (batch x 100 units x 200), and an unknown batch counted as Keras' default 32.
    edge = bound // (100 * 200)
    assert rule(edge, 100, 100, "float32", taped=True) and not rule(edge + 1, 100, 100, "float32", taped=True)
    units = max(u for u in range(1, 4096) if 32 * u * 2 * u <= bound)
    assert rule(None, units, units, "float32", taped=True) and not rule(
        None, units + 1, units + 1, "float32", taped=True
    )


@pytest.mark.parametrize("jit_compile", [None, False])
def test_auto_and_false_run_tensorflows_loop_above_the_bound(jit_compile, rng):
    """A call under a tape whose step is above the bound: auto and False run TensorFlow's loop
    (its gradient within tolerance of the NumPy backward); without a tape auto runs XLA (one
    step, so the compile stays small). (True runs XLA: see test_last_output_and_config and
    the tests above; on JAX and torch no XLA loop runs: test_compiled_loop_matches_reference.)"""
    if not TENSORFLOW:
        pytest.skip("gradient tapes are TensorFlow's; on this Keras backend jit_compile does nothing")
    import tensorflow as tf

    T, I, H = 1, 3, 4
    layer = make("gru", H, jit_compile)
    module = module_of(layer)
    B = module._XLA_MAX_WORK // (H * (I + H)) + 1  # a step just above the bound, in batch
    params = random_params(novolstm.load_spec("gru"), I, H, rng, scale=0.5)
    x = rng.normal(size=(B, T, I))
    layer.cell.load_params(params)
    module._XLA_LOOPS.clear()

    inputs = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(inputs)
        y = layer(inputs)[0]
    assert not module._XLA_LOOPS
    g = rng.normal(size=(B, T, H))
    numpy_module = novolstm.load_generated("gru", "numpy")
    _, _, saved = numpy_module.forward(params, x, None, None, keep_tape=True)
    ref_gx = numpy_module.backward(params, saved, g, None)[0]
    assert_close(
        np.asarray(tape.gradient(y, inputs, output_gradients=tf.constant(g))), ref_gx, tol(T, "gradients"), "d/dx"
    )
    layer(inputs)  # no tape: auto's forward is XLA's
    assert bool(module._XLA_LOOPS) == (jit_compile is not False)
