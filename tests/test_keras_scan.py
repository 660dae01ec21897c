"""The parallel scan of linear recurrences in the generated Keras modules (keras.ops.associative_scan,
on whichever backend KERAS_BACKEND names): Layer runs minGRU and minLSTM as the scan, and only
linear recurrences; the scan equals the loop (keras.layers.RNN's) in outputs, last output, final
state and the backend's gradients, with masks, initial states and go_backwards, in float64 to
1e-12 where the backend computes float64 (else within the tolerance table); in float32 at
T = 4096 it stays within the tolerance table of the float64 reference."""

from __future__ import annotations

import keras
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import novolstm
from novolstm import reference
from novolstm.testing import assert_close, cases, computes_in, tolerance

LINEAR = ("mingru", "minlstm")


def run_both(module, case, go_backwards):
    """(scan, loop): (last output, outputs, final state) and the gradients of a weighted sum of them."""
    dtype = "float64"
    tensor = lambda a: keras.ops.convert_to_tensor(np.asarray(a, dtype))  # noqa: E731
    units = case.params[module.UNITS_PARAM].shape[-1]
    state = case.state or tuple(np.zeros((case.x.shape[0], units)) for _ in module.STATE_NAMES)
    mask = None if case.mask is None else keras.ops.convert_to_tensor(case.mask)
    primals = ({k: tensor(v) for k, v in case.params.items()}, tensor(case.x), tuple(tensor(s) for s in state))
    results = []
    for run in (module._scan, module._loop):
        options = {} if run is module._scan else {"return_sequences": True}

        def sequence(params, x, state, run=run, options=options):
            last, outputs, final = run(params, x, list(state), mask, go_backwards=go_backwards, **options)
            return last, outputs, tuple(final)

        values, pullback = module._with_pullback(sequence, primals)
        draw = np.random.default_rng(0).normal  # the same cotangents for both runs
        cotangents = keras.tree.map_structure(lambda t, draw=draw: tensor(draw(size=tuple(t.shape))), values)
        grads = pullback(cotangents)
        flat = lambda tree: [np.asarray(keras.ops.convert_to_numpy(t), np.float64) for t in keras.tree.flatten(tree)]  # noqa: E731
        results.append((flat(values), flat(grads)))
    return results


# Few examples: each one traces Keras' loop and its gradient afresh (about 20 s on Keras' JAX backend).
@settings(max_examples=3, deadline=None)
@given(cell=st.sampled_from(LINEAR), go_backwards=st.booleans(), data=st.data())
def test_the_scan_equals_the_loop_with_its_gradients(cell, go_backwards, data):
    case = data.draw(cases(cell, min_steps=1, max_steps=40))
    (v1, g1), (v2, g2) = run_both(novolstm.load_generated(cell, "keras"), case, go_backwards)
    exact = computes_in("keras", "float64", keras.backend.backend()) == "float64"
    for what, got, want in [("values", v1, v2), ("gradients", g1, g2)]:
        for a, b in zip(got, want):
            if exact:
                assert np.abs(a - b).max(initial=0.0) <= 1e-12 * max(1.0, np.abs(b).max(initial=0.0))
            else:  # the backend computes in float32 (novolstm.testing.PRECISION_LIMITS)
                assert_close(a, b, tolerance("float32", case.steps, "gradients" if what == "gradients" else "outputs"))


@pytest.mark.parametrize("cell", LINEAR)
def test_layer_runs_the_scan_with_scan_true_only(cell, monkeypatch):
    module = novolstm.load_generated(cell, "keras")
    calls = []
    real = module._scan
    monkeypatch.setattr(module, "_scan", lambda *a, **k: calls.append(1) or real(*a, **k))
    x = np.ones((2, 5, 3), "float32")
    module.Layer(4, scan=False)(x)
    module.Layer(4)(x)
    assert not calls
    module.Layer(4, scan=True)(x)
    assert calls
    assert module.Layer.from_config(module.Layer(4, scan=False).get_config()).scan is False


@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_a_cell_that_is_not_a_linear_recurrence_never_runs_the_scan(cell):
    module = novolstm.load_generated(cell, "keras")
    assert module.LINEAR_SCAN is None
    with pytest.raises(ValueError, match="scan=True: spec .* is not a linear recurrence"):
        module.Layer(4, scan=True)


@pytest.mark.parametrize("cell", LINEAR)
def test_the_float32_scan_at_4096_steps_is_within_the_tolerance_table(cell):
    rng = np.random.default_rng(4096)
    module = novolstm.load_generated(cell, "keras")
    params = novolstm.init_params(cell, input_size=4, units=8, seed=3)
    x = rng.normal(size=(3, 4096, 4))
    mask = rng.random((3, 4096)) > 0.1
    expected, expected_final = reference.run(cell, params, x, mask=mask)
    layer = module.Layer(8, return_sequences=True, return_state=True, scan=True)
    layer.build((None, None, 4))
    layer.load_canonical({k: v.astype("float32") for k, v in params.items()})
    outputs, final = layer(x.astype("float32"), mask=mask)
    tol = tolerance("float32", 4096)
    assert_close(keras.ops.convert_to_numpy(outputs), expected, tol, what=f"{cell} float32 scan outputs")
    assert_close(keras.ops.convert_to_numpy(final), expected_final[0], tol, what=f"{cell} float32 scan final state")
