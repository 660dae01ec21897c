"""Zoo cells against their authors' own code (collected in the all-backends env, where the
authors' packages are installed from PyPI: xlstm, mingru-pytorch).

- sLSTM: the xLSTM authors' vanilla PyTorch sLSTM (``xlstm.blocks.slstm.src.vanilla``,
  ``slstm_forward`` with the ``slstm`` pointwise cell), one head, float64.
- Keras 2's hard-sigmoid LSTM: keras.layers.LSTM with Keras 2's hard_sigmoid as a callable.
- minGRU and minLSTM: ``minGRU_pytorch`` (the reference implementation of Feng et al.'s
  appendix B code), both its parallel log-space scan (from a zero state) and its
  sequential step (from a positive state), float64.

Each is held to the float64 reference (novolstm.reference) and to the generated torch
backend within the float64 tolerance table; the largest deviations are printed at the end
(``pytest -s``) for the record.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import novolstm
from novolstm import reference
from novolstm.testing import assert_close, random_params, tolerance

DEVIATIONS: dict[str, float] = {}


def record(cell: str, *deviations: float) -> None:
    DEVIATIONS[cell] = max(DEVIATIONS.get(cell, 0.0), *deviations)


def ours(cell, params, x, state):
    """(reference, torch backend) outputs and final states, float64."""
    expected = reference.run(cell, params, x, state)
    got = novolstm.run(cell, params, x, state, backend="torch")
    return expected, got


def hold(cell: str, theirs_outputs, theirs_state, params, x, state, compare_state=True) -> None:
    (ref_out, ref_state), (torch_out, torch_state) = ours(cell, params, x, state)
    tol = tolerance("float64", x.shape[1])
    worst = [
        assert_close(ref_out, theirs_outputs, tol, what=f"{cell} reference outputs vs the authors'"),
        assert_close(np.asarray(torch_out), theirs_outputs, tol, what=f"{cell} torch outputs vs the authors'"),
    ]
    if compare_state:
        for name, a, b, t in zip(reference.CELLS[cell].state_names, ref_state, torch_state, theirs_state):
            worst.append(assert_close(a, t, tol, what=f"{cell} reference state {name} vs the authors'"))
            worst.append(assert_close(np.asarray(b), t, tol, what=f"{cell} torch state {name} vs the authors'"))
    record(cell, *worst)


sizes = st.tuples(st.integers(1, 3), st.integers(1, 12), st.integers(1, 4), st.integers(1, 5), st.integers(0, 2**31))


# ---------------------------------------------------------------- sLSTM (xlstm)


def authors_slstm(params, x, state):
    """The xLSTM authors' vanilla sLSTM, one head, on our parameters: outputs (B, T, H), final (h, c, n, m)."""
    from xlstm.blocks.slstm.src.vanilla import slstm_forward, slstm_pointwise_function_registry

    t = lambda a: torch.as_tensor(np.asarray(a), dtype=torch.float64)  # noqa: E731
    gates = "ifzo"  # the authors' order of the pre-activations
    W = np.concatenate([params[f"W_{g}"] for g in gates], axis=1)
    # R: (heads, 4H, H); the step computes h @ R[0].T, so R[0] stacks each gate's U transposed.
    R = np.concatenate([params[f"U_{g}"].T for g in gates], axis=0)[None]
    b = np.concatenate([params[f"b_{g}"] for g in gates])
    wx = t(np.swapaxes(x, 0, 1) @ W)  # (T, B, 4H), the input projection they take precomputed
    states = torch.stack([t(s) for s in state])  # (4, B, H): y, c, n, m
    all_states, final, _ = slstm_forward(wx, states, t(R), t(b), slstm_pointwise_function_registry["slstm"])
    outputs = all_states[0, 1:].numpy().swapaxes(0, 1)
    return outputs, tuple(s.numpy() for s in final)


@settings(max_examples=6, deadline=None)
@given(sizes=sizes, scale=st.sampled_from([0.3, 1.0, 3.0]))
def test_slstm_matches_the_authors_vanilla_cell(sizes, scale):
    batch, steps, inputs, units, seed = sizes
    rng = np.random.default_rng(seed)
    params = random_params("slstm", inputs, units, rng, scale=scale)
    x = rng.normal(size=(batch, steps, inputs))
    # A running state: n > 0 as the recurrence keeps it, any h, c and stabilizer m.
    state = (
        rng.normal(size=(batch, units)),
        rng.normal(size=(batch, units)),
        rng.uniform(0.5, 2.0, size=(batch, units)),
        rng.normal(size=(batch, units)),
    )
    theirs_out, theirs_state = authors_slstm(params, x, state)
    hold("slstm", theirs_out, theirs_state, params, x, state)


@settings(max_examples=4, deadline=None)
@given(sizes=sizes)
def test_slstm_from_a_zero_state_matches_the_authors_outputs(sizes):
    # From n = 0 the authors' cell sets m' = i~ (a branch on the whole batch) where the spec
    # takes max(log_sigmoid(f~), i~): c, n and m then differ by one common factor per unit
    # and row, to which the output is invariant. Outputs are compared; states are not.
    batch, steps, inputs, units, seed = sizes
    rng = np.random.default_rng(seed)
    params = random_params("slstm", inputs, units, rng)
    x = rng.normal(size=(batch, steps, inputs))
    state = tuple(np.zeros((batch, units)) for _ in range(4))
    theirs_out, _ = authors_slstm(params, x, state)
    hold("slstm", theirs_out, None, params, x, state, compare_state=False)


# ---------------------------------------------------------------- minGRU, minLSTM (mingru-pytorch)


def authors_module(cell, params, units):
    """minGRU_pytorch's module (expansion 1: units = input size, no output projection) with our weights."""
    from minGRU_pytorch.minGRU import minGRU
    from minGRU_pytorch.minLSTM import minLSTM

    if cell == "mingru":
        module, blocks = minGRU(units), ("W_h", "W_z")  # chunks: hidden, gate
        linear = module.to_hidden_and_gate
    else:
        module, blocks = minLSTM(units), ("W_h", "W_f", "W_i")  # chunks: hidden, f, i
        linear = module.to_hidden_and_f_i_gate
    module = module.double()
    with torch.no_grad():
        linear.weight.copy_(torch.as_tensor(np.concatenate([params[w].T for w in blocks], axis=0)))
    return module


def zero_biases(cell, params):
    # The authors' projections have no bias (Linear(..., bias=False)).
    return {k: (np.zeros_like(v) if k.startswith("b_") else v) for k, v in params.items()}


@pytest.mark.parametrize("cell", ["mingru", "minlstm"])
@settings(max_examples=6, deadline=None)
@given(sizes=sizes, scale=st.sampled_from([0.3, 1.0, 3.0]))
def test_min_cells_match_the_authors_parallel_scan(cell, sizes, scale):
    batch, steps, _, units, seed = sizes
    steps = max(steps, 2)  # one step takes their sequential branch (the next test)
    rng = np.random.default_rng(seed)
    params = zero_biases(cell, random_params(cell, units, units, rng, scale=scale))
    x = rng.normal(size=(batch, steps, units))
    module = authors_module(cell, params, units)
    with torch.no_grad():
        out, last = module(torch.as_tensor(x), return_next_prev_hidden=True)
    state = (np.zeros((batch, units)),)
    hold(cell, out.numpy(), (last[:, 0].numpy(),), params, x, state)


@pytest.mark.parametrize("cell", ["mingru", "minlstm"])
@settings(max_examples=6, deadline=None)
@given(sizes=sizes, scale=st.sampled_from([0.3, 1.0, 3.0]))
def test_min_cells_match_the_authors_sequential_steps(cell, sizes, scale):
    batch, steps, _, units, seed = sizes
    rng = np.random.default_rng(seed)
    params = zero_biases(cell, random_params(cell, units, units, rng, scale=scale))
    x = rng.normal(size=(batch, steps, units))
    h0 = rng.uniform(0.1, 2.0, size=(batch, units))  # their log-space path needs h > 0; steps do not
    module = authors_module(cell, params, units)
    h, outs = torch.as_tensor(h0)[:, None], []
    with torch.no_grad():
        for t in range(steps):
            y, h = module(torch.as_tensor(x[:, t : t + 1]), prev_hidden=h, return_next_prev_hidden=True)
            outs.append(y.numpy())
    hold(cell, np.concatenate(outs, axis=1), (h[:, 0].numpy(),), params, x, (h0,))


# ---------------------------------------------------------------- Keras 2's hard-sigmoid LSTM (keras.layers.LSTM)


@settings(max_examples=6, deadline=None)
@given(sizes=sizes, scale=st.sampled_from([0.3, 1.0, 3.0]))
def test_keras2_lstm_matches_a_keras_lstm_with_keras2_hard_sigmoid(sizes, scale):
    # Not the authors' package (Keras 2 does not install beside Keras 3) but Keras' own LSTM
    # layer, with Keras 2's hard_sigmoid, clip(0.2 z + 0.5, 0, 1), as its recurrent activation.
    import keras
    from keras import ops

    batch, steps, inputs, units, seed = sizes
    rng = np.random.default_rng(seed)
    params = random_params("keras2_lstm", inputs, units, rng, scale=scale)
    x = rng.normal(size=(batch, steps, inputs))
    state = (rng.normal(size=(batch, units)), rng.normal(size=(batch, units)))
    layer = keras.layers.LSTM(
        units,
        recurrent_activation=lambda z: ops.clip(0.2 * z + 0.5, 0.0, 1.0),
        return_sequences=True,
        return_state=True,
        dtype="float64",
    )
    layer.build((batch, steps, inputs))
    gates = "ifgo"  # Keras' kernel order: i, f, c (our g), o
    layer.set_weights(
        [
            np.concatenate([params[f"W_{g}"] for g in gates], axis=1),
            np.concatenate([params[f"U_{g}"] for g in gates], axis=1),
            np.concatenate([params[f"b_{g}"] for g in gates]),
        ]
    )
    out, h, c = layer(x, initial_state=[state[0], state[1]])
    hold("keras2_lstm", np.asarray(out), (np.asarray(h), np.asarray(c)), params, x, state)


def test_zz_print_the_deviations():
    """The largest deviation of each cell from its authors' code (run with -s to see it)."""
    assert set(DEVIATIONS) == {"slstm", "mingru", "minlstm", "keras2_lstm"}, DEVIATIONS
    for cell, worst in sorted(DEVIATIONS.items()):
        print(f"{cell}: largest deviation from the authors' code {worst:.2e}")
