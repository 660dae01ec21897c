"""The generated torch Layer of a spec that computes exactly the standard LSTM runs torch's
own fused LSTM kernel (torch._VF.lstm, as nn.LSTM) where it can, and the generated loop
elsewhere. Both paths against the float64 reference, the NumPy generated backward, and
nn.LSTM loaded with the same weights."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import novolstm
from novolstm import reference
from novolstm.convert.torch import from_torch, to_torch
from novolstm.testing import assert_close, pairwise_tolerance, random_params, tolerance

LSTM_LAYER = novolstm.get_layer("torch", spec="lstm")


def randomized(rng, dtype, fused=None, **kwargs):
    layer = LSTM_LAYER(3, 4, dtype=dtype, fused=fused, compiled=False, **kwargs)  # fused, else the loop
    params = {
        key: random_params("lstm", cell.input_size, cell.units, rng, scale=0.5) for key, cell in layer.cells.items()
    }
    if not layer.bias:
        params = {k: {n: (0 * v if n.startswith("b_") else v) for n, v in p.items()} for k, p in params.items()}
    layer.load_canonical(params)
    return layer, params


def ran_fused(output):
    """Whether no node of output's autograd graph is the generated loop's Sequence function."""
    seen, stack = set(), [output.grad_fn]
    while stack:
        fn = stack.pop()
        if fn is None or fn in seen:
            continue
        seen.add(fn)
        if "Sequence" in type(fn).__name__:
            return False
        stack.extend(f for f, _ in fn.next_functions)
    return True


def run_with_grads(layer, x, state, g_out):
    dtype = next(layer.parameters()).dtype
    xt = torch.tensor(x, dtype=dtype, requires_grad=True)
    s0 = tuple(torch.tensor(s, dtype=dtype, requires_grad=True) for s in state)
    out, (h, c) = layer(xt, s0)
    ((out * torch.tensor(g_out, dtype=dtype)).sum() + h.sum() + 2 * c.sum()).backward()
    grads = {name: p.grad.double().numpy() for name, p in layer.named_parameters()}
    return out, (h, c), xt.grad.double().numpy(), tuple(s.grad.double().numpy() for s in s0), grads


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("fused", [None, False])
def test_both_paths_match_reference_and_numpy_backward(dtype, fused, rng):
    layer, params = randomized(rng, dtype, fused=fused, batch_first=True)
    T = 7
    x = rng.normal(size=(2, T, 3))
    state = (rng.normal(size=(1, 2, 4)), rng.normal(size=(1, 2, 4)))
    g_out = rng.normal(size=(2, T, 4))
    out, (h, c), gx, gs, gp = run_with_grads(layer, x, state, g_out)
    assert ran_fused(out) == (fused is None)
    name = str(dtype).split(".")[1]
    y_ref, (h_ref, c_ref) = reference.run("lstm", params["l0"], x, (state[0][0], state[1][0]))
    tol = tolerance(name, T)
    assert_close(out.detach().double().numpy(), y_ref, tol, what="outputs")
    assert_close(h.detach().double().numpy()[0], h_ref, tol, what="final h")
    assert_close(c.detach().double().numpy()[0], c_ref, tol, what="final c")
    m = novolstm.load_generated("lstm", "numpy")
    _, _, tape = m.forward(params["l0"], x, (state[0][0], state[1][0]), None, keep_tape=True)
    gx_ref, gs_ref, gp_ref = m.backward(params["l0"], tape, g_out, (np.ones((2, 4)), 2 * np.ones((2, 4))))
    gtol = tolerance(name, T, kind="gradients")
    assert_close(gx, gx_ref, gtol, what="grad x")
    assert_close(gs[0][0], gs_ref[0], gtol, what="grad h0")
    assert_close(gs[1][0], gs_ref[1], gtol, what="grad c0")
    assert set(gp) == {f"cells.l0.{p}" for p in gp_ref}
    for p, value in gp_ref.items():
        assert_close(gp[f"cells.l0.{p}"], value, gtol, what=f"grad {p}")


@pytest.mark.parametrize("num_layers, bidirectional, bias", [(1, False, True), (2, True, True), (2, False, False)])
def test_fused_path_matches_nn_lstm_and_the_generated_loop(num_layers, bidirectional, bias, rng):
    layer, params = randomized(rng, torch.float64, num_layers=num_layers, bidirectional=bidirectional, bias=bias)
    loop = LSTM_LAYER(
        3,
        4,
        num_layers=num_layers,
        bidirectional=bidirectional,
        bias=bias,
        dtype=torch.float64,
        fused=False,
        compiled=False,
    )
    loop.load_state_dict(layer.state_dict())
    native = torch.nn.LSTM(3, 4, num_layers=num_layers, bidirectional=bidirectional, bias=bias, dtype=torch.float64)
    native_sd = {}
    for key, p in params.items():
        layer_index, suffix = key[1:].split("_", 1)[0], ("_reverse" if key.endswith("_reverse") else "")
        for name, value in to_torch(p, "lstm", bias=bias).items():
            native_sd[f"{name}_l{layer_index}{suffix}"] = torch.tensor(value)
    native.load_state_dict(native_sd)
    T, rows = 6, num_layers * (2 if bidirectional else 1)
    x = rng.normal(size=(T, 2, 3))
    state = (rng.normal(size=(rows, 2, 4)), rng.normal(size=(rows, 2, 4)))
    g_out = rng.normal(size=(T, 2, 4 * (2 if bidirectional else 1)))
    tol, gtol = tolerance("float64", T), tolerance("float64", T, kind="gradients")
    results = {}
    for what, module in (("fused", layer), ("loop", loop), ("nn.LSTM", native)):
        results[what] = run_with_grads(module, x, state, g_out)
    assert ran_fused(results["fused"][0]) and not ran_fused(results["loop"][0])
    for other in ("loop", "nn.LSTM"):
        for k, part in enumerate(("outputs", "final state")):
            a, b = results["fused"][k], results[other][k]
            for u, v in zip(a if k else (a,), b if k else (b,)):
                assert_close(u.detach().numpy(), v.detach().numpy(), tol, what=f"{part} vs {other}")
        assert_close(results["fused"][2], results[other][2], gtol, what=f"grad x vs {other}")
        for u, v in zip(results["fused"][3], results[other][3]):
            assert_close(u, v, gtol, what=f"grad initial state vs {other}")
    for name, value in results["loop"][4].items():
        assert_close(results["fused"][4][name], value, gtol, what=f"grad {name} vs loop")
    # nn.LSTM's weight gradients, in canonical names (bias_hh's gradient equals bias_ih's).
    native_grads = {n: torch.tensor(g) for n, g in results["nn.LSTM"][4].items()}
    for key in params:
        suffix = f"_l{key[1:].split('_', 1)[0]}" + ("_reverse" if key.endswith("_reverse") else "")
        sd = {n[: -len(suffix)]: g for n, g in native_grads.items() if n.endswith(suffix)}
        if bias:
            sd["bias_hh"] = torch.zeros_like(sd["bias_hh"])
        for name, value in from_torch(sd, cell="lstm").items():
            if bias or not name.startswith("b_"):
                assert_close(
                    results["fused"][4][f"cells.{key}.{name}"], value, gtol, what=f"grad {key}.{name} vs nn.LSTM"
                )


def test_fused_runs_exactly_where_it_can(rng):
    layer, _ = randomized(rng, torch.float32, batch_first=True)
    x = torch.tensor(rng.normal(size=(2, 5, 3)), dtype=torch.float32)
    assert ran_fused(layer(x)[0]), "unmasked float32: the fused kernel"
    mask = torch.tensor([[True] * 5, [True] * 3 + [False] * 2])
    assert not ran_fused(layer(x, mask=mask)[0]), "a mask: the generated loop"
    strict = LSTM_LAYER(3, 4, batch_first=True, fused=True)
    with pytest.raises(RuntimeError, match="fused=True.*mask"):
        strict(x, mask=mask)
    half = LSTM_LAYER(3, 4, dtype=torch.float16)
    assert not ran_fused(half(torch.ones(5, 2, 3, dtype=torch.float16, requires_grad=True))[0]), (
        "float16: the generated loop"
    )
    assert "fused=False" in repr(LSTM_LAYER(3, 4, fused=False))
    with pytest.raises(ValueError, match="fused"):
        LSTM_LAYER(3, 4, fused="yes")


def test_bfloat16_fused_matches_reference_and_the_generated_loop(rng):
    """bfloat16 runs the fused kernel: outputs within the bfloat16 tier of the reference, and
    gradients within the pairwise bfloat16 tolerance of the generated loop's."""
    layer, params = randomized(rng, torch.bfloat16, batch_first=True)
    loop = LSTM_LAYER(3, 4, dtype=torch.bfloat16, batch_first=True, fused=False)
    loop.load_state_dict(layer.state_dict())
    T = 7
    x = rng.normal(size=(2, T, 3))
    state = (rng.normal(size=(1, 2, 4)), rng.normal(size=(1, 2, 4)))
    g_out = rng.normal(size=(2, T, 4))
    fused, looped = run_with_grads(layer, x, state, g_out), run_with_grads(loop, x, state, g_out)
    assert ran_fused(fused[0]) and not ran_fused(looped[0])
    as_f64 = {k: v.astype(np.float64) for k, v in layer.export_canonical()["l0"].items()}  # the rounded weights
    rounded = lambda a: torch.tensor(a, dtype=torch.bfloat16).double().numpy()  # noqa: E731
    y_ref, _ = reference.run("lstm", as_f64, rounded(x), (rounded(state[0][0]), rounded(state[1][0])))
    assert_close(fused[0].detach().double().numpy(), y_ref, tolerance("bfloat16", T), what="bfloat16 fused outputs")
    gtol = pairwise_tolerance("bfloat16", "bfloat16", T, kind="gradients")
    assert_close(fused[2], looped[2], gtol, what="bfloat16 grad x, fused vs loop")
    for name, value in looped[4].items():
        assert_close(fused[4][name], value, gtol, what=f"bfloat16 grad {name}, fused vs loop")


def test_the_fused_path_sees_every_update_of_the_parameters(rng):
    layer, _ = randomized(rng, torch.float32)
    loop = LSTM_LAYER(3, 4, fused=False, compiled=False)
    x = torch.tensor(rng.normal(size=(5, 2, 3)), dtype=torch.float32)

    def agree(what):
        loop.load_state_dict(layer.state_dict())
        with torch.no_grad():
            got = layer(x)[0]
            assert_close(got.numpy(), loop(x)[0].numpy(), tolerance("float32", 5), what=what)
        return got

    first = agree("before any update")
    with torch.no_grad():
        layer.cells["l0"].W_f.add_(0.5)  # in place, as an optimizer step: moves the version counter
    second = agree("after an in-place update")
    layer.cells["l0"].U_o.data.mul_(-1.0)  # through .data: moves no version counter
    third = agree("after an update through .data")
    layer.load_canonical(novolstm.init_params("lstm", 3, 4, seed=9))
    fourth = agree("after load_canonical")
    for a, b in [(first, second), (second, third), (third, fourth)]:
        assert not torch.equal(a, b)
    # with autograd: gradients reach the parameters, before and after a training step
    for step in range(2):
        for module in (layer, loop):
            module.zero_grad(set_to_none=True)
            (module(x)[0] ** 2).sum().backward()
        for (name, p), q in zip(layer.named_parameters(), loop.parameters()):
            assert_close(
                p.grad.numpy(), q.grad.numpy(), tolerance("float32", 5, kind="gradients"), what=f"step {step}: {name}"
            )
        with torch.no_grad():
            for module in (layer, loop):
                for p in module.parameters():
                    p.sub_(0.1 * p.grad)  # an optimizer step, in place


def test_only_the_standard_lstm_and_gru_offer_the_fused_kernel():
    assert novolstm.load_generated("gru", "torch").FUSED_KERNEL
    for cell in ("peephole_lstm", "novolstm"):
        with pytest.raises(ValueError, match="not compute the standard LSTM"):
            novolstm.get_layer("torch", spec=cell)(3, 4, fused=True)
        assert not novolstm.load_generated(cell, "torch").FUSED_KERNEL


def test_a_rewritten_standard_lstm_runs_the_fused_kernel(rng):
    text = (
        novolstm.load_spec("lstm")
        .dumps()
        .replace('name = "lstm"', 'name = "my_lstm"')
        .replace('c_next = "f * c + i * g"', 'c_next = "i * g + c * f"')
    )
    spec = novolstm.loads_spec(text)
    assert spec.hash != novolstm.load_spec("lstm").hash
    layer = novolstm.get_layer("torch", spec=spec)(3, 4, fused=True)
    assert ran_fused(layer(torch.ones(5, 2, 3, requires_grad=True))[0])
