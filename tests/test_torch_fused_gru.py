"""The generated torch Layer of a spec that computes exactly the GRU runs torch's own fused GRU
kernel (torch._VF.gru, as nn.GRU) where it can, decided structurally from the IR
(novolstm.ir.computes_standard_gru). Held to nn.GRU loaded with the same weights, the float64
reference and the NumPy generated backward, and to the generated loop."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import novolstm
from novolstm import reference
from novolstm.ir import computes_standard_gru
from novolstm.testing import assert_close, random_params, tolerance

GRU_LAYER = novolstm.get_layer("torch", spec="gru")


def ran_fused(output):
    """Whether the fused kernel made output: no generated-loop or compiled-kernel node in its graph."""
    seen, stack = set(), [output.grad_fn]
    while stack:
        fn = stack.pop()
        if fn is None or fn in seen:
            continue
        seen.add(fn)
        if "Sequence" in type(fn).__name__ or "novolstm" in type(fn).__name__.lower():
            return False
        stack.extend(f for f, _ in fn.next_functions)
    return True


def native_gru(params, num_layers, bidirectional, bias):
    """nn.GRU with the canonical parameters of each cell, in torch's layout (gates r, z, n)."""
    gru = torch.nn.GRU(3, 4, num_layers=num_layers, bidirectional=bidirectional, bias=bias, dtype=torch.float64)
    sd = {}
    for key, p in params.items():
        suffix = f"_l{key[1:].split('_', 1)[0]}" + ("_reverse" if key.endswith("_reverse") else "")
        sd[f"weight_ih{suffix}"] = torch.tensor(np.concatenate([p[f"W_{k}"].T for k in "rzn"]))
        sd[f"weight_hh{suffix}"] = torch.tensor(np.concatenate([p[f"U_{k}"].T for k in "rzn"]))
        if bias:
            sd[f"bias_ih{suffix}"] = torch.tensor(np.concatenate([p[f"b_{k}"] for k in "rzn"]))
            sd[f"bias_hh{suffix}"] = torch.tensor(np.concatenate([np.zeros(4), np.zeros(4), p["b_hn"]]))
    gru.load_state_dict(sd)
    return gru


def run_with_grads(module, x, h0, g_out):
    xt = torch.tensor(x, requires_grad=True)
    ht = torch.tensor(h0, requires_grad=True)
    out, h = module(xt, ht)
    ((out * torch.tensor(g_out)).sum() + 2 * h.sum()).backward()
    return out.detach(), h.detach(), xt.grad, ht.grad, {n: p.grad for n, p in module.named_parameters()}


@pytest.mark.parametrize("num_layers, bidirectional, bias", [(1, False, True), (2, True, True), (2, False, False)])
def test_fused_gru_matches_nn_gru_and_the_generated_loop(num_layers, bidirectional, bias, rng):
    layer = GRU_LAYER(3, 4, num_layers=num_layers, bidirectional=bidirectional, bias=bias, dtype=torch.float64)
    params = {key: random_params("gru", cell.input_size, 4, rng) for key, cell in layer.cells.items()}
    if not bias:
        params = {k: {n: (0 * v if n.startswith("b_") else v) for n, v in p.items()} for k, p in params.items()}
    layer.load_canonical(params)
    loop = GRU_LAYER(
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
    native = native_gru(params, num_layers, bidirectional, bias)
    T, rows = 6, num_layers * (2 if bidirectional else 1)
    x, h0 = rng.normal(size=(T, 2, 3)), rng.normal(size=(rows, 2, 4))
    g_out = rng.normal(size=(T, 2, 4 * (2 if bidirectional else 1)))
    fused, by_loop, by_native = (run_with_grads(m, x, h0, g_out) for m in (layer, loop, native))
    tol, gtol = tolerance("float64", T), tolerance("float64", T, kind="gradients")
    for what, other in (("loop", by_loop), ("nn.GRU", by_native)):
        for k, part in enumerate(("outputs", "final h", "grad x", "grad h0")):
            assert_close(fused[k].numpy(), other[k].numpy(), gtol if k > 1 else tol, what=f"{part} vs {what}")
    for name, g in by_loop[4].items():
        assert_close(fused[4][name].numpy(), g.numpy(), gtol, what=f"grad {name} vs loop")
    # nn.GRU's weight gradients, cut into the canonical parameters
    for key in params:
        suffix = f"_l{key[1:].split('_', 1)[0]}" + ("_reverse" if key.endswith("_reverse") else "")
        for j, k in enumerate("rzn"):
            rows_k = slice(4 * j, 4 * (j + 1))
            assert_close(
                fused[4][f"cells.{key}.W_{k}"].numpy(),
                by_native[4][f"weight_ih{suffix}"][rows_k].T.numpy(),
                gtol,
                what=f"grad W_{k}",
            )
            assert_close(
                fused[4][f"cells.{key}.U_{k}"].numpy(),
                by_native[4][f"weight_hh{suffix}"][rows_k].T.numpy(),
                gtol,
                what=f"grad U_{k}",
            )
            if bias:
                assert_close(
                    fused[4][f"cells.{key}.b_{k}"].numpy(),
                    by_native[4][f"bias_ih{suffix}"][rows_k].numpy(),
                    gtol,
                    what=f"grad b_{k}",
                )
        if bias:
            assert_close(
                fused[4][f"cells.{key}.b_hn"].numpy(),
                by_native[4][f"bias_hh{suffix}"][8:].numpy(),
                gtol,
                what="grad b_hn",
            )


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_fused_gru_matches_reference_and_numpy_backward(dtype, rng):
    layer = GRU_LAYER(3, 4, batch_first=True, dtype=getattr(torch, dtype))
    params = random_params("gru", 3, 4, rng)
    layer.load_canonical(params)
    T = 7
    x, h0, g_out = rng.normal(size=(2, T, 3)), rng.normal(size=(2, 4)), rng.normal(size=(2, T, 4))
    xt = torch.tensor(x, dtype=layer.cells["l0"].W_r.dtype, requires_grad=True)
    ht = torch.tensor(h0[None], dtype=xt.dtype, requires_grad=True)
    out, h = layer(xt, ht)
    assert ran_fused(out)
    ((out * torch.tensor(g_out, dtype=xt.dtype)).sum() + h.sum()).backward()
    c = {k: v.astype(dtype) for k, v in params.items()}
    y_ref, (h_ref,) = reference.run("gru", c, x.astype(dtype), (h0.astype(dtype),))
    tol, gtol = tolerance(dtype, T), tolerance(dtype, T, kind="gradients")
    assert_close(out.detach().double().numpy(), y_ref, tol, what="outputs")
    assert_close(h.detach().double().numpy()[0], h_ref, tol, what="final h")
    m = novolstm.load_generated("gru", "numpy")
    _, _, vjp = m.vjp_numpy(params, x, (h0,), None)
    g_x, (g_h0,), g_p = vjp(g_out, (np.ones((2, 4)),))
    assert_close(xt.grad.double().numpy(), g_x, gtol, what="grad x")
    assert_close(ht.grad.double().numpy()[0], g_h0, gtol, what="grad h0")
    for name, g in g_p.items():
        assert_close(getattr(layer.cells["l0"], name).grad.double().numpy(), g, gtol, what=f"grad {name}")


def test_fused_gru_runs_exactly_where_it_can(rng):
    layer = GRU_LAYER(3, 4, batch_first=True, compiled=False)
    x = torch.tensor(rng.normal(size=(2, 5, 3)), dtype=torch.float32)
    assert ran_fused(layer(x)[0]), "unmasked float32: the fused kernel"
    mask = torch.tensor([[True] * 5, [True] * 3 + [False] * 2])
    assert not ran_fused(layer(x, mask=mask)[0]), "a mask: the generated loop"
    with pytest.raises(RuntimeError, match="fused=True.*mask"):
        GRU_LAYER(3, 4, batch_first=True, fused=True)(x, mask=mask)
    half = GRU_LAYER(3, 4, dtype=torch.bfloat16, compiled=False)
    assert not ran_fused(half(torch.ones(5, 2, 3, dtype=torch.bfloat16, requires_grad=True))[0]), (
        "bfloat16: the generated loop"
    )


def test_gru_is_recognised_by_what_it_computes():
    gru = novolstm.load_spec("gru")
    assert 'h_next = "(1.0 - z) * n + z * h"' in gru.dumps()  # the replacements below apply
    rewritten = novolstm.loads_spec(
        gru.dumps()
        .replace('name = "gru"', 'name = "my_gru"')
        .replace('h_next = "(1.0 - z) * n + z * h"', 'h_next = "z * h + (1.0 - z) * n"')
    )
    assert computes_standard_gru(gru) and computes_standard_gru(rewritten)
    assert novolstm.load_generated(rewritten, "torch").FUSED_KERNEL
    swapped = novolstm.loads_spec(
        gru.dumps().replace('h_next = "(1.0 - z) * n + z * h"', 'h_next = "z * n + (1.0 - z) * h"')
    )
    assert not computes_standard_gru(swapped)
    assert not novolstm.load_generated(swapped, "torch").FUSED_KERNEL
    for other in ("lstm", "novolstm", "peephole_lstm"):
        assert not computes_standard_gru(novolstm.load_spec(other))
