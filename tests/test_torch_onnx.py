"""torch.onnx.export of the generated Layer runs in onnxruntime and agrees with the float64
reference. The time loop unrolls at export, so the exported graph has a fixed number of
steps; lengths stay a runtime input."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import novolstm
from novolstm import reference
from novolstm.testing import assert_close, random_params, tolerance

ort = pytest.importorskip("onnxruntime", reason="the onnx extra (onnx, onnxruntime, onnxscript) is not installed")

B, T, I, H = 3, 5, 4, 6


class WithLengths(torch.nn.Module):
    """(x, lengths) -> (output, *final_state): plain tensors in and out, as ONNX wants."""

    def __init__(self, layer):
        super().__init__()
        self.layer = layer

    def forward(self, x, lengths):
        out, final = self.layer(x, lengths=lengths)
        return (out,) + (final if isinstance(final, tuple) else (final,))


@pytest.mark.slow
@pytest.mark.parametrize("cell", ["novolstm", "gru"])
def test_onnx_export_runs_in_onnxruntime(cell, tmp_path, rng):
    layer = novolstm.get_layer("torch", spec=cell)(I, H, bidirectional=True, batch_first=True)
    params = {}
    for key, c in layer.cells.items():
        params[key] = random_params(cell, I, H, rng)
        c.load_canonical(params[key])
    model = WithLengths(layer).eval()
    x = rng.normal(size=(B, T, I))
    lengths = np.array([5, 2, 4])
    path = tmp_path / f"{cell}.onnx"
    torch.onnx.export(
        model,
        (torch.tensor(x, dtype=torch.float32), torch.tensor(lengths)),
        str(path),
        dynamo=True,
        input_names=["x", "lengths"],
        external_data=False,
    )
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for lens in (lengths, np.array([1, 5, 3])):  # lengths are a runtime input
        got = session.run(None, {"x": x.astype(np.float32), "lengths": lens})
        mask = np.arange(T)[None] < lens[:, None]
        fwd, fwd_final = reference.run(cell, params["l0"], x, mask=mask)
        bwd, bwd_final = reference.run(cell, params["l0_reverse"], x[:, ::-1], mask=mask[:, ::-1])
        expected = np.concatenate([fwd, bwd[:, ::-1]], axis=-1)
        tol = tolerance("float32", T)
        assert_close(got[0], expected, tol, what=f"{cell} ONNX outputs")
        for got_state, a, b in zip(got[1:], fwd_final, bwd_final):
            assert_close(got_state, np.stack([a, b]), tol, what=f"{cell} ONNX final state")
