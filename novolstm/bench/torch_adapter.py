"""PyTorch candidates: the generated layers, and torch.nn.LSTM as the native baseline.

Forward runs under torch.no_grad(); forward+backward trains the parameters with
loss = output.sum() (the input, like data, needs no gradient). Inputs are time-major,
as nn.LSTM's default. ``nn.LSTM, oneDNN off`` is context: the same module on ATen's
op-by-op path instead of oneDNN's fused LSTM kernel.

The ``lstm`` spec's layer runs torch's fused LSTM kernel (the generated module recognises
the standard LSTM in the IR, as Keras picks cuDNN); ``lstm spec, generated loop`` is the
same layer held to its generated per-step loop (``fused=False``), the like-for-like
denominator for the other specs, whose loops cannot be fused.

``torch.compile`` candidates compile the generated ``lstm`` and ``novolstm`` layers
(Inductor, which on CPU needs a C++ compiler); the harness reports their compile time
(first call minus steady state) and their compiled speed. Dynamo unrolls the Python time
loop, so compile time grows with the number of steps: measured here at batch 32, 100
steps, 128 units, 12 s forward and 99 s forward+backward (and slower than eager at that
shape). Above ``COMPILE_MAX_STEPS`` they are skipped with that reason in the table.
Every candidate, native included, is built in the requested dtype (float32, bfloat16).

The specs' layers run the compiled C++ kernel (novolstm.backends.cpp) where it applies
(float32; the first call builds it, cached on disk); ``<cell> spec, generated loop`` holds a
layer to the generated loop (``compiled=False``), ``lstm spec, compiled`` holds the standard
LSTM to the compiled kernel instead of torch's fused one. ``gru spec`` runs torch's fused
GRU kernel (the IR recognises the GRU), against ``native: torch.nn.GRU`` with the same
weights (as the ``lstm spec`` layer holds nn.LSTM's).
"""

from __future__ import annotations

from novolstm.api import get_layer
from novolstm.bench import Candidate, harness

CELLS = ("lstm", "novolstm", "novolstm_reference")
COMPILED = ("lstm", "novolstm")
DTYPES = ("float32", "bfloat16")
#: torch.compile unrolls the time loop: compile time grows with the steps (about 2 minutes
#: for both modes of one cell at 100 steps here), so the 200- and 1000-step shapes skip it
COMPILE_MAX_STEPS = 100

#: the harness's targets, plus NovoLSTM against the LSTM's generated loop (like for like)
TARGETS = {
    **harness.TARGETS,
    ("novolstm spec", "lstm spec, generated loop", "forward"): 1.3,
    ("novolstm spec", "lstm spec, generated loop", "forward+backward"): 1.3,
    ("novolstm_reference spec", "lstm spec, generated loop", "forward+backward"): 1.3,
    ("gru spec", "native: torch.nn.GRU", "forward"): 1.05,
    ("gru spec", "native: torch.nn.GRU", "forward+backward"): 1.05,
}


def _modes(module, x):
    import torch

    def forward():
        with torch.no_grad():
            return module(x)

    def forward_backward():
        module.zero_grad(set_to_none=True)
        out, _ = module(x)
        out.sum().backward()

    return forward, forward_backward


def candidates(batch: int, steps: int, units: int, dtype: str = "float32"):
    import torch

    from novolstm.convert.torch import from_torch

    torch_dtype = getattr(torch, dtype)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(steps, batch, units, generator=gen, dtype=torch_dtype)
    native = torch.nn.LSTM(units, units, dtype=torch_dtype)
    layers = {}
    for cell in CELLS:
        layer = layers[cell] = get_layer("torch", spec=cell)(units, units, dtype=torch_dtype)
        if cell == "lstm":  # the same function as the native baseline
            layer.load_canonical(from_torch(native.state_dict(), cell="lstm"))
        # the first call builds the compiled kernel (or loads it from the cache): its "compile time"
        kernel = "C++ kernel" if cell != "lstm" and dtype in ("float32", "float64") else None
        forward, forward_backward = _modes(layer, x)
        if cell == "lstm":
            path = "torch fused LSTM kernel"
        elif kernel is None:  # the layer falls back to its loop: say so, not a second "generated loop" row
            path = "layer default: generated loop (the C++ kernel is float32 and float64 only)"
        else:
            path = None
        yield Candidate(f"{cell} spec", forward, forward_backward, jit=kernel, path=path)
    loop = get_layer("torch", spec="lstm")(units, units, dtype=torch_dtype, fused=False, compiled=False)
    loop.load_state_dict(layers["lstm"].state_dict())
    yield Candidate("lstm spec, generated loop", *_modes(loop, x))
    for cell in ("novolstm", "novolstm_reference"):
        held = get_layer("torch", spec=cell)(units, units, dtype=torch_dtype, compiled=False)
        held.load_state_dict(layers[cell].state_dict())
        yield Candidate(f"{cell} spec, generated loop", *_modes(held, x))
    if dtype in ("float32", "float64"):
        compiled = get_layer("torch", spec="lstm")(units, units, dtype=torch_dtype, fused=False, compiled=True)
        compiled.load_state_dict(layers["lstm"].state_dict())
        forward, forward_backward = _modes(compiled, x)
        yield Candidate("lstm spec, compiled", forward, forward_backward, jit="C++ kernel")
    yield Candidate("native: torch.nn.LSTM", *_modes(native, x))  # the first native: the harness's "native"
    # the GRU spec (torch's fused GRU kernel) against nn.GRU, with the same weights (the same function)
    native_gru = torch.nn.GRU(units, units, dtype=torch_dtype)
    gru = get_layer("torch", spec="gru")(units, units, dtype=torch_dtype)
    gru.load_canonical(from_torch(native_gru.state_dict(), cell="gru"))
    forward, forward_backward = _modes(gru, x)
    yield Candidate("gru spec", forward, forward_backward, path="torch fused GRU kernel")
    yield Candidate("native: torch.nn.GRU", *_modes(native_gru, x))
    for cell in COMPILED:
        name = f"{cell} spec, torch.compile"
        if steps > COMPILE_MAX_STEPS:
            yield Candidate(
                name,
                None,
                None,
                skipped=f"{steps} steps: torch.compile unrolls the time loop, "
                f"compiling for many minutes (run only up to {COMPILE_MAX_STEPS} steps)",
            )
            continue
        # A copy, so the eager candidate above keeps running uncompiled.
        copy = get_layer("torch", spec=cell)(units, units, dtype=torch_dtype)
        copy.load_state_dict(layers[cell].state_dict())
        # Forward only: compiling the backward of the unrolled loop took 99 s (lstm) to 381 s
        # (novolstm) at 100 steps here, and ran slower than eager.
        compiled_forward, _ = _modes(torch.compile(copy), x)
        yield Candidate(name, compiled_forward, None, jit="torch.compile", may_fail=True)

    class OneDNNOff(torch.nn.Module):
        def forward(self, x):
            torch._C._set_mkldnn_enabled(False)
            try:
                return native(x)
            finally:
                torch._C._set_mkldnn_enabled(True)

    yield Candidate("context: torch.nn.LSTM, oneDNN off", *_modes(OneDNNOff(), x))


def matmul(batch: int, steps: int, units: int, dtype: str = "float32"):
    """A plain GEMM with the LSTM forward's matmul FLOPs, for the GFLOP/s fraction."""
    import torch

    gen = torch.Generator().manual_seed(0)
    a = torch.randn(batch * steps, 2 * units, generator=gen, dtype=getattr(torch, dtype))
    w = torch.randn(2 * units, 4 * units, generator=gen, dtype=getattr(torch, dtype))
    return lambda: torch.mm(a, w)
