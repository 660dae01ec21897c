"""PyTorch candidates: the generated layers, and torch.nn.LSTM as the native baseline.

Forward runs under torch.no_grad(); forward+backward trains the parameters with
loss = output.sum() (the input, like data, needs no gradient). Inputs are time-major,
as nn.LSTM's default. ``nn.LSTM, oneDNN off`` is context: the same module on ATen's
op-by-op path instead of oneDNN's fused LSTM kernel.
"""

from __future__ import annotations

from novolstm.api import get_layer
from novolstm.bench import Candidate

CELLS = ("lstm", "novolstm", "novolstm_reference")


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
    for cell in CELLS:
        layer = get_layer("torch", spec=cell)(units, units, dtype=torch_dtype)
        if cell == "lstm":  # the same function as the native baseline
            layer.load_canonical(from_torch(native.state_dict(), cell="lstm"))
        yield Candidate(f"{cell} spec", *_modes(layer, x))
    yield Candidate("native: torch.nn.LSTM", *_modes(native, x))

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
