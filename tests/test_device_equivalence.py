"""The torch (and JAX) cells on an accelerator against the float64 reference: outputs, final states
and gradients, every built-in spec, float32 and float64, TF32 off.

Opt-in: collected only when NOVOLSTM_DEVICE names a device (``cuda``, ``cuda:1``, or ``cpu`` for a
dry run of the same tests on the CPU), so CI on CPU never collects them; ``benchmarks/gpu.py``
runs them. Asked for ``cuda`` on a machine without one, every test fails with that message:
never a skip. JAX runs where NOVOLSTM_BACKENDS names it, on JAX's default backend, which must
then be the GPU (``cuda``) or the CPU (``cpu``).
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

import novolstm
from novolstm import reference
from novolstm.testing import assert_close, random_params, tolerance

DEVICE = os.environ.get("NOVOLSTM_DEVICE", "")
#: NOVOLSTM_DEVICE_SPECS (comma-separated) narrows the specs, as benchmarks/gpu.py --specs does
CELLS = [c for c in os.environ.get("NOVOLSTM_DEVICE_SPECS", "").split(",") if c] or novolstm.list_specs()
DTYPES = ["float32", "float64"]
B, T, I, H = 3, 9, 5, 6  # shapes: distinct, so a transposed axis shows
LENGTHS = np.array([T, 4, 7])  # right-padded rows: the mask's rule on the device too


def no_device_message(device: str) -> str:
    """The one line for a CUDA device asked for and absent (benchmarks/gpu.py prints it too)."""
    return (
        f"NOVOLSTM_DEVICE={device}, but no CUDA device was found "
        f"(torch {torch.__version__}: torch.cuda.is_available() is False)"
    )


@pytest.fixture(scope="module")
def device() -> torch.device:
    """The device under test, with TF32 off (float32 matmuls in full float32 precision)."""
    if not DEVICE:
        pytest.fail("NOVOLSTM_DEVICE is not set: these tests are collected only when it names a device")
    dev = torch.device(DEVICE)
    if dev.type == "cuda" and not torch.cuda.is_available():
        pytest.fail(no_device_message(DEVICE), pytrace=False)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    return dev


def _case(cell: str, seed: int):
    rng = np.random.default_rng(seed)
    spec = novolstm.load_spec(cell)
    params = random_params(spec, I, H, rng)
    x = rng.normal(size=(B, T, I))
    state = tuple(0.5 * rng.normal(size=(B, H)) for _ in spec.state_names)
    g_out = rng.normal(size=(B, T, H))
    g_state = tuple(rng.normal(size=(B, H)) for _ in spec.state_names)
    return spec, params, x, state, g_out, g_state


def _expected(cell, params, x, state, mask, g_out, g_state):
    """Outputs and final state from the reference; gradients from the NumPy backend's backward pass
    (float64, itself held to finite differences of the reference in test_generated_numpy.py)."""
    outputs, final = reference.run(cell, params, x, state, mask=mask)
    module = novolstm.load_generated(cell, "numpy")
    _, _, tape = module.forward(params, x, state, mask, keep_tape=True)
    return outputs, final, module.backward(params, tape, g_out, g_state)


@pytest.mark.parametrize("path", ["layer", "generated loop"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("cell", CELLS)
def test_torch_on_device_matches_the_reference(cell, dtype, path, device):
    """``layer``: the path Layer picks on this device, unmasked (so that the LSTM and the GRU run
    cuDNN, which takes no mask); ``generated loop``: the same layer held to the generated loop,
    with right-padded rows (the mask's rule on the device)."""
    spec, params, x, state, g_out, g_state = _case(cell, seed=novolstm.list_specs().index(cell))
    mask = None if path == "layer" else np.arange(T)[None] < LENGTHS[:, None]
    options = {} if path == "layer" else {"fused": False, "compiled": False}
    layer = novolstm.get_layer("torch", spec=cell)(
        I, H, batch_first=True, dtype=getattr(torch, dtype), device=device, **options
    )
    layer.load_canonical(params)
    as_tensor = lambda a: torch.tensor(np.asarray(a), dtype=getattr(torch, dtype), device=device)  # noqa: E731
    xt = as_tensor(x).requires_grad_(True)
    s0 = tuple(as_tensor(s[None]).requires_grad_(True) for s in state)
    lengths = None if mask is None else torch.tensor(LENGTHS)
    out, final = layer(xt, s0 if len(s0) > 1 else s0[0], lengths=lengths)
    final = final if isinstance(final, tuple) else (final,)
    loss = (out * as_tensor(g_out)).sum() + sum((f[0] * as_tensor(g)).sum() for f, g in zip(final, g_state))
    loss.backward()
    outputs, final_ref, (g_x, g_s0, g_params) = _expected(cell, params, x, state, mask, g_out, g_state)
    tol, gtol = tolerance(dtype, T), tolerance(dtype, T, kind="gradients")
    assert out.device.type == device.type
    assert_close(out.detach().cpu().double().numpy(), outputs, tol, what=f"{cell} outputs on {device}")
    for name, got, want in zip(spec.state_names, final, final_ref):
        assert_close(got[0].detach().cpu().double().numpy(), want, tol, what=f"{cell} final {name} on {device}")
    assert_close(xt.grad.cpu().double().numpy(), g_x, gtol, what=f"{cell} grad x on {device}")
    for name, got, want in zip(spec.state_names, s0, g_s0):
        assert_close(got.grad[0].cpu().double().numpy(), want, gtol, what=f"{cell} grad {name}0 on {device}")
    for name, value in layer.cells["l0"].named_parameters():
        assert_close(value.grad.cpu().double().numpy(), g_params[name], gtol, what=f"{cell} grad {name} on {device}")


@pytest.mark.skipif(
    "jax" not in os.environ.get("NOVOLSTM_BACKENDS", ""),
    reason="JAX on the device runs where NOVOLSTM_BACKENDS names jax",
)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("cell", CELLS)
def test_jax_on_device_matches_the_reference(cell, dtype, device):
    import jax

    jax.config.update("jax_default_matmul_precision", "highest")  # JAX's TF32 off
    want = "gpu" if device.type == "cuda" else "cpu"
    if jax.default_backend() != want:
        pytest.fail(f"NOVOLSTM_DEVICE={DEVICE} with jax requested, but JAX runs on {jax.default_backend()!r}")
    spec, params, x, state, g_out, g_state = _case(cell, seed=100 + novolstm.list_specs().index(cell))
    mask = np.arange(T)[None] < LENGTHS[:, None]
    cast = lambda a: np.asarray(a, dtype)  # noqa: E731
    module = novolstm.load_generated(cell, "jax")
    outputs, final, vjp = module.vjp_numpy(
        {k: cast(v) for k, v in params.items()}, cast(x), tuple(cast(s) for s in state), mask
    )
    g_x, g_s0, g_params = vjp(cast(g_out), tuple(cast(g) for g in g_state))
    outputs_ref, final_ref, (rg_x, rg_s0, rg_params) = _expected(cell, params, x, state, mask, g_out, g_state)
    tol, gtol = tolerance(dtype, T), tolerance(dtype, T, kind="gradients")
    assert_close(outputs, outputs_ref, tol, what=f"{cell} jax outputs")
    for got, ref in zip(final, final_ref):
        assert_close(got, ref, tol, what=f"{cell} jax final state")
    assert_close(g_x, rg_x, gtol, what=f"{cell} jax grad x")
    for got, ref in zip(g_s0, rg_s0):
        assert_close(got, ref, gtol, what=f"{cell} jax grad state0")
    for name in spec.param_names:
        assert_close(g_params[name], rg_params[name], gtol, what=f"{cell} jax grad {name}")
