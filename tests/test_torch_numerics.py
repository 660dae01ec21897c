"""The generated PyTorch modules against the float64 reference (forward) and the NumPy
backend's generated backward pass (gradients), for every built-in cell.

Weights are distinct per gate (novolstm.testing.random_params); the reference is the
hand-written oracle, never torch itself.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import novolstm
from novolstm import reference
from novolstm.testing import assert_close, cases, random_params, tolerance

CELLS = novolstm.list_specs()
TORCH_DTYPES = {
    "float64": torch.float64,
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
}


def module(cell):
    return novolstm.load_generated(cell, "torch")


def tensors(params, dtype, requires_grad=False):
    return {k: torch.tensor(np.asarray(v), dtype=dtype, requires_grad=requires_grad) for k, v in params.items()}


def problem(cell, rng, batch=3, steps=7, input_size=4, units=5, scale=0.5, masked=True):
    spec = novolstm.load_spec(cell)
    params = random_params(spec, input_size, units, rng, scale=scale)
    x = rng.normal(size=(batch, steps, input_size))
    state = tuple(0.5 * rng.normal(size=(batch, units)) for _ in spec.state_names)
    mask = None
    if masked:
        mask = rng.random((batch, steps)) < 0.7
        mask[0] = True  # one row with every step real, one with a masked tail
        mask[-1, steps // 2 :] = False
    return params, x, state, mask


def run_torch(cell, params, x, state, mask, dtype):
    m = module(cell)
    p = tensors(params, dtype)
    s = None if state is None else tuple(torch.tensor(a, dtype=dtype) for a in state)
    with torch.no_grad():
        ys, final = m.sequence(p, torch.tensor(x, dtype=dtype), s, None if mask is None else torch.tensor(mask))
    return ys.double().numpy(), tuple(f.double().numpy() for f in final)


# ---------------------------------------------------------------- forward


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("masked", [False, True])
def test_forward_matches_reference(cell, dtype, masked, rng):
    params, x, state, mask = problem(cell, rng, masked=masked)
    expected, expected_state = reference.run(cell, params, x, state, mask=mask)
    ys, final = run_torch(cell, params, x, state, mask, TORCH_DTYPES[dtype])
    tol = tolerance(dtype, x.shape[1])
    assert_close(ys.astype(dtype), expected, tol, what=f"{cell} {dtype} outputs")
    for got, want in zip(final, expected_state):
        assert_close(got.astype(dtype), want, tol, what=f"{cell} {dtype} final state")
    if mask is not None:
        assert (ys[~mask] == 0.0).all(), "masked steps must output exactly zero"


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_half_precision_forward(cell, dtype, rng):
    # Half precision computes in its own dtype, with the LayerNorm statistics and the
    # softmax sum accumulated in float32; short sequences keep within the table.
    params, x, state, mask = problem(cell, rng, steps=4, scale=0.3)
    expected, expected_state = reference.run(cell, params, x, state, mask=mask)
    ys, final = run_torch(cell, params, x, state, mask, TORCH_DTYPES[dtype])
    tol = tolerance(dtype, x.shape[1])
    assert_close(ys, expected, tol, what=f"{cell} {dtype} outputs")
    for got, want in zip(final, expected_state):
        assert_close(got, want, tol, what=f"{cell} {dtype} final state")


@pytest.mark.parametrize("cell", CELLS)
@settings(max_examples=10)
@given(data=st.data())
def test_forward_property(cell, data):
    case = data.draw(cases(cell))
    expected, expected_state = reference.run(cell, case.params, case.x, case.state, mask=case.mask)
    ys, final = run_torch(cell, case.params, case.x, case.state, case.mask, torch.float64)
    tol = tolerance("float64", case.steps)
    assert_close(ys, expected, tol, what=f"{cell} outputs")
    for got, want in zip(final, expected_state):
        assert_close(got, want, tol, what=f"{cell} final state")


@pytest.mark.parametrize("cell", CELLS)
def test_reverse_is_the_reference_on_flipped_time(cell, rng):
    # reverse=True walks the time axis backwards under the masking rule.
    params, x, state, mask = problem(cell, rng)
    expected, expected_state = reference.run(cell, params, x[:, ::-1], state, mask=mask[:, ::-1])
    m = module(cell)
    with torch.no_grad():
        ys, final = m.sequence(
            tensors(params, torch.float64),
            torch.tensor(x),
            tuple(map(torch.tensor, state)),
            torch.tensor(mask),
            reverse=True,
        )
    tol = tolerance("float64", x.shape[1])
    assert_close(ys.numpy(), expected[:, ::-1], tol, what="reverse outputs")
    for got, want in zip(final, expected_state):
        assert_close(got.numpy(), want, tol, what="reverse final state")


def test_run_backend_torch(rng):
    params, x, state, mask = problem("novolstm", rng)
    out, final = novolstm.run("novolstm", params, x, state, backend="torch", mask=mask)
    expected, expected_state = reference.run("novolstm", params, x, state, mask=mask)
    assert_close(out, expected, what="outputs")
    assert out.dtype == np.float64 and all(isinstance(s, np.ndarray) for s in final)
    out32, _ = novolstm.run("novolstm", params, x.astype(np.float32), backend="torch", lengths=[7, 3, 0])
    assert out32.dtype == np.float32
    assert (out32[1, 3:] == 0).all() and (out32[2] == 0).all()


# ---------------------------------------------------------------- gradients


def numpy_gradients(cell, params, x, state, mask, g_out, g_state):
    m = novolstm.load_generated(cell, "numpy")
    _, _, tape = m.forward(params, x, state, mask, keep_tape=True)
    return m.backward(params, tape, g_out, g_state)


def torch_gradients(cell, params, x, state, mask, g_out, g_state, dtype, reverse=False):
    m = module(cell)
    p = tensors(params, dtype, requires_grad=True)
    xt = torch.tensor(x, dtype=dtype, requires_grad=True)
    st0 = tuple(torch.tensor(s, dtype=dtype, requires_grad=True) for s in state)
    ys, final = m.sequence(p, xt, st0, None if mask is None else torch.tensor(mask), reverse=reverse)
    loss = (ys * torch.tensor(g_out, dtype=dtype)).sum()
    loss = loss + sum((f * torch.tensor(g, dtype=dtype)).sum() for f, g in zip(final, g_state))
    loss.backward()
    return (
        xt.grad.double().numpy(),
        tuple(s.grad.double().numpy() for s in st0),
        {k: v.grad.double().numpy() for k, v in p.items()},
    )


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("masked", [False, True])
def test_gradients_match_numpy_backward(cell, dtype, masked, rng):
    params, x, state, mask = problem(cell, rng, masked=masked)
    g_out = rng.normal(size=x.shape[:2] + (5,))
    g_state = tuple(rng.normal(size=s.shape) for s in state)
    want_x, want_state, want_params = numpy_gradients(cell, params, x, state, mask, g_out, g_state)
    got_x, got_state, got_params = torch_gradients(cell, params, x, state, mask, g_out, g_state, TORCH_DTYPES[dtype])
    tol = tolerance(dtype, x.shape[1], kind="gradients")
    assert_close(got_x.astype(dtype), want_x, tol, what="grad x")
    for name, got, want in zip(reference.CELLS[cell].state_names, got_state, want_state):
        assert_close(got.astype(dtype), want, tol, what=f"grad initial {name}")
    assert set(got_params) == set(want_params)
    for name in want_params:
        assert_close(got_params[name].astype(dtype), want_params[name], tol, what=f"grad {name}")


@pytest.mark.parametrize("cell", CELLS)
def test_gradients_reverse_match_numpy_on_flipped_time(cell, rng):
    params, x, state, mask = problem(cell, rng)
    g_out = rng.normal(size=x.shape[:2] + (5,))
    g_state = tuple(rng.normal(size=s.shape) for s in state)
    want_x, want_state, want_params = numpy_gradients(
        cell, params, x[:, ::-1], state, mask[:, ::-1], g_out[:, ::-1], g_state
    )
    got_x, got_state, got_params = torch_gradients(
        cell, params, x, state, mask, g_out, g_state, torch.float64, reverse=True
    )
    tol = tolerance("float64", x.shape[1], kind="gradients")
    assert_close(got_x, want_x[:, ::-1], tol, what="grad x")
    for got, want in zip(got_state, want_state):
        assert_close(got, want, tol, what="grad initial state")
    for name in want_params:
        assert_close(got_params[name], want_params[name], tol, what=f"grad {name}")


@pytest.mark.parametrize("cell", CELLS)
def test_gradcheck(cell, rng):
    params, x, state, mask = problem(cell, rng, batch=2, steps=3, input_size=2, units=3)
    m = module(cell)
    names = list(m.PARAM_NAMES)
    inputs = [torch.tensor(x, requires_grad=True)] + [torch.tensor(s, requires_grad=True) for s in state]
    inputs += [torch.tensor(params[n], requires_grad=True) for n in names]
    n_state = len(state)
    mask_t = torch.tensor(mask)

    def f(xt, *rest):
        p = dict(zip(names, rest[n_state:]))
        ys, final = m.sequence(p, xt, rest[:n_state], mask_t)
        return (ys,) + tuple(final)

    assert torch.autograd.gradcheck(f, inputs, eps=1e-6, atol=1e-7, rtol=1e-5)


def test_only_requested_gradients_are_computed(rng):
    # Data inputs usually need no gradient: the input GEMM of the backward pass is skipped.
    params, x, state, mask = problem("lstm", rng, masked=False)
    p = tensors(params, torch.float64, requires_grad=True)
    xt = torch.tensor(x)
    ys, final = module("lstm").sequence(p, xt)
    ys.sum().backward()
    assert xt.grad is None and all(v.grad is not None for v in p.values())


def test_unused_outputs_send_no_gradient(rng):
    # Only the final h is used: the outputs' gradient and c's are None inside backward.
    params, x, state, mask = problem("lstm", rng, masked=False)
    g_state = (rng.normal(size=state[0].shape), np.zeros_like(state[1]))
    want_x, want_state, want_params = numpy_gradients(
        "lstm", params, x, state, None, np.zeros(x.shape[:2] + (5,)), g_state
    )
    p = tensors(params, torch.float64, requires_grad=True)
    xt = torch.tensor(x, requires_grad=True)
    ys, (h, c) = module("lstm").sequence(p, xt, tuple(map(torch.tensor, state)))
    (h * torch.tensor(g_state[0])).sum().backward()
    assert_close(xt.grad.numpy(), want_x, what="grad x")
    for name in want_params:
        assert_close(p[name].grad.numpy(), want_params[name], what=f"grad {name}")


@pytest.mark.parametrize("cell", CELLS)
def test_weight_gradients_are_formed_after_the_loop(cell):
    # Weight gradients: GEMMs after the time loop, none inside it; an LSTM-family cell's
    # input and recurrent projections read the same gradient and share ONE GEMM.
    source = novolstm.generate_source(cell, "torch")
    backward = source.split("def backward(", 1)[1].split("\nclass Sequence", 1)[0]
    lines = backward.splitlines()
    loop = next(k for k, line in enumerate(lines) if line.startswith("    for t in"))
    end = next(k for k in range(loop + 1, len(lines)) if not lines[k].startswith("        "))
    calls = [k for k, line in enumerate(lines) if "wgrad(" in line and "=" in line]
    assert calls and all(k > end for k in calls)
    # the softmax branch of novolstm_reference and the GRU's split biases read their own gradients,
    # as do ln_lstm's separately normalized projections and MGU's projection of f * h
    assert len(calls) == {"gru": 2, "novolstm_reference": 2, "ln_lstm": 2, "mgu": 3}.get(cell, 1)


def test_init_params_match_novolstm():
    m = module("novolstm")
    a = m.init_params(3, 4, seed=5)
    b = novolstm.init_params("novolstm", 3, 4, seed=5)
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def test_generated_source_is_standalone():
    source = novolstm.generate_source("gru", "torch")
    imports = {line.split()[1] for line in source.splitlines() if line.startswith(("import ", "from "))}
    assert imports <= {"math", "warnings", "zlib", "numpy", "torch", "torch.autograd.function", "torch.nn.utils.rnn"}, (
        imports
    )
    assert "Generated" in source and "do not edit" in source and novolstm.load_spec("gru").hash in source


def test_doctests_of_emitter_and_generated_module():
    import doctest

    from novolstm.backends.torch import emit

    for mod in (emit, novolstm.load_generated("novolstm", "torch")):
        result = doctest.testmod(mod, optionflags=doctest.ELLIPSIS)
        assert result.failed == 0 and result.attempted > 0, mod.__name__


@pytest.mark.parametrize("cell", CELLS)
def test_extreme_preactivations_stay_finite(cell, rng):
    # Large weights saturate every gate: sigmoid, tanh and softmax must neither overflow nor warn.
    params, x, state, mask = problem(cell, rng, scale=30.0)
    x = 100.0 * x
    expected, expected_state = reference.run(cell, params, x, state, mask=mask)
    for dtype in ("float64", "float32"):
        ys, final = run_torch(cell, params, x, state, mask, TORCH_DTYPES[dtype])
        assert np.isfinite(ys).all() and all(np.isfinite(f).all() for f in final)
        if dtype == "float64":
            assert_close(ys, expected, tolerance("float64", x.shape[1]), what=f"{cell} saturated outputs")
