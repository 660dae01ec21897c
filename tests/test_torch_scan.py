"""The parallel scan of linear recurrences in the generated torch modules: Layer and sequence
route minGRU, minLSTM and any random linear recurrence (random names) to the scan, and only
those; the scan equals the generated loop and its generated backward pass (scan=False) in
outputs, final state and gradients, with masks, initial states and reverse, in float64 to
1e-12; in float32 at T = 4096 it stays within the tolerance table of the float64 reference."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import novolstm
from novolstm import reference
from novolstm.testing import (
    assert_close,
    assert_scan_equals_loop,
    cases,
    linear_spec_texts,
    nonlinear_variant,
    spec_texts,
    tolerance,
)

LINEAR = ("mingru", "minlstm")


def run_both(module, case, reverse):
    """(scan, loop) results of ``sequence``: outputs, final state and the gradients of a loss of both."""
    results = []
    for scan in (True, False):
        params = {k: torch.tensor(v, requires_grad=True) for k, v in case.params.items()}
        x = torch.tensor(case.x, requires_grad=True)
        state = None if case.state is None else tuple(torch.tensor(s, requires_grad=True) for s in case.state)
        mask = None if case.mask is None else torch.tensor(case.mask)
        outputs, final = module.sequence(params, x, state, mask, reverse=reverse, scan=scan)
        # A loss that weighs every output and final state differently, so no gradient cancels.
        weights = torch.linspace(-1.0, 2.0, outputs.numel(), dtype=outputs.dtype).reshape(outputs.shape)
        loss = (outputs * weights).sum() + sum((k + 1.5) * (f * f).sum() for k, f in enumerate(final))
        leaves = [x, *params.values(), *(state or ())]
        grads = torch.autograd.grad(loss, leaves)
        results.append((outputs.detach().numpy(), [f.detach().numpy() for f in final], [g.numpy() for g in grads]))
    return results


@pytest.mark.parametrize("cell", LINEAR)
@pytest.mark.parametrize("reverse", [False, True])
@settings(max_examples=8, deadline=None)
@given(data=st.data())
def test_the_scan_equals_the_loop_with_its_gradients_in_float64(cell, reverse, data):
    case = data.draw(cases(cell, min_steps=1, max_steps=150))
    assert_scan_equals_loop(*run_both(novolstm.load_generated(cell, "torch"), case, reverse))


@settings(max_examples=10, deadline=None)
@given(text=linear_spec_texts(), reverse=st.booleans(), data=st.data())
def test_random_linear_recurrences_whatever_their_names_run_the_scan_and_equal_the_loop(text, reverse, data):
    spec = novolstm.loads_spec(text)
    module = novolstm.load_generated(spec, "torch")
    assert module.LINEAR_SCAN is not None
    case = data.draw(cases(spec, min_steps=1, max_steps=80))
    assert_scan_equals_loop(*run_both(module, case, reverse))


@settings(max_examples=5, deadline=None)
@given(text=st.one_of(spec_texts(max_states=2, max_intermediates=2), linear_spec_texts().map(nonlinear_variant)))
def test_a_spec_that_is_not_a_linear_recurrence_never_runs_the_scan(text):
    spec = novolstm.loads_spec(text)
    assert novolstm.scan.linear_recurrence(spec) is None
    module = novolstm.load_generated(spec, "torch")
    assert module.LINEAR_SCAN is None
    with pytest.raises(ValueError, match="scan=True: spec .* is not a linear recurrence"):
        module.Layer(2, 3, scan=True)
    params = {k: torch.tensor(v) for k, v in novolstm.init_params(spec, 2, 3).items()}
    with pytest.raises(RuntimeError, match="scan=True, but the parallel scan cannot run"):
        module.sequence(params, torch.ones(1, 2, 2, dtype=torch.float64), scan=True)


@pytest.mark.parametrize("cell", LINEAR)
def test_layer_runs_the_scan_off_the_cpu_or_with_scan_true_and_the_loop_otherwise(cell, monkeypatch):
    module = novolstm.load_generated(cell, "torch")
    calls = []
    real = module._scan_sequence
    monkeypatch.setattr(module, "_scan_sequence", lambda *a: calls.append(1) or real(*a))
    options = dict(num_layers=2, bidirectional=True, dtype=torch.float64, batch_first=True)
    layers = {scan: module.Layer(3, 4, scan=scan, **options) for scan in (True, False, None)}
    for layer in layers.values():
        layer.load_state_dict(layers[True].state_dict())
    x = torch.randn(2, 30, 3, dtype=torch.float64)
    lengths = torch.tensor([30, 17])
    (y1, f1) = layers[True](x, lengths=lengths)
    assert len(calls) == 4  # two layers, two directions
    (y2, f2), _ = layers[False](x, lengths=lengths), layers[None](x, lengths=lengths)
    assert len(calls) == 4  # scan=False and, on the CPU for 30 steps, auto run the loop
    time_major = x.transpose(0, 1)
    assert "on the CPU the loop is as fast below 256 steps" in module._scan_unavailable(time_major, None, 4)
    assert module._scan_unavailable(time_major.to("meta"), None, 4) is None  # off the CPU, auto runs the scan
    long = torch.zeros(module.SCAN_CPU_MIN_STEPS, 2, 3)  # on the CPU: long sequences of a narrow batch
    assert module._scan_unavailable(long, None, module.SCAN_CPU_MAX_WIDTH // 2) is None
    assert module._scan_unavailable(long, None, module.SCAN_CPU_MAX_WIDTH) is not None
    assert torch.abs(y1 - y2).max() <= 1e-12 and torch.abs(f1 - f2).max() <= 1e-12
    assert "scan=False" in repr(layers[False])
    with pytest.raises(ValueError, match="scan: expected None"):
        module.Layer(3, 4, scan="yes")


@pytest.mark.parametrize("cell", LINEAR)
def test_the_float32_scan_at_4096_steps_is_within_the_tolerance_table(cell):
    rng = np.random.default_rng(4096)
    module = novolstm.load_generated(cell, "torch")
    params = novolstm.init_params(cell, input_size=4, units=8, seed=3)
    x = rng.normal(size=(3, 4096, 4))
    mask = rng.random((3, 4096)) > 0.1
    expected, expected_final = reference.run(cell, params, x, mask=mask)
    tensors = {k: torch.tensor(v, dtype=torch.float32, requires_grad=True) for k, v in params.items()}
    outputs, (final,) = module.sequence(
        tensors, torch.tensor(x, dtype=torch.float32), mask=torch.tensor(mask), scan=True
    )
    assert outputs.dtype == torch.float32
    tol = tolerance("float32", 4096)
    assert_close(outputs.detach().numpy(), expected, tol, what=f"{cell} float32 scan outputs")
    assert_close(final.detach().numpy(), expected_final[0], tol, what=f"{cell} float32 scan final state")
    # Gradients: against the float64 loop's generated backward pass.
    (g32,) = torch.autograd.grad(outputs.sum() + final.sum(), [tensors["W_h"]])
    p64 = {k: torch.tensor(v, requires_grad=True) for k, v in params.items()}
    o64, (f64,) = module.sequence(p64, torch.tensor(x), mask=torch.tensor(mask), scan=False)
    (g64,) = torch.autograd.grad(o64.sum() + f64.sum(), [p64["W_h"]])
    assert_close(g32.numpy(), g64.numpy(), tolerance("float32", 4096, "gradients"), what=f"{cell} float32 gradient")
