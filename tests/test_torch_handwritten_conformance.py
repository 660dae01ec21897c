"""The conformance kit on NovoLSTMs written directly in torch, outside novolstm: the correct one
passes; each one with a usual porting mistake (conftest.HANDWRITTEN_MISTAKES) fails, and the
diagnosis names the mistake, in float64 and float32."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from novolstm import conformance


class HandWrittenNovoLSTM(torch.nn.Module):
    """NovoLSTM as someone would write it in torch, from the design document's formula,
    optionally with one porting mistake."""

    def __init__(self, params, mistake=None):
        super().__init__()
        self.p = {k: torch.as_tensor(v) for k, v in params.items()}
        self.mistake = mistake
        if mistake == "gate order":
            for kind in "WUb":
                self.p[f"{kind}_i"], self.p[f"{kind}_f"] = self.p[f"{kind}_f"], self.p[f"{kind}_i"]
        self.eps = {"torch epsilon": 1e-5, "flax epsilon": 1e-6}.get(mistake, 1e-3)

    def gate(self, name, x, h, recurrent=True):
        z = x @ self.p[f"W_{name}"]
        if not (self.mistake == "bias dropped" and name == "o"):
            z = z + self.p[f"b_{name}"]
        if recurrent and not (self.mistake == "recurrent term missing" and name == "f"):
            z = z + h @ self.p[f"U_{name}"]
        return z

    def sigmoid(self, z):
        if self.mistake == "keras 2 hard sigmoid":
            return torch.clamp(0.2 * z + 0.5, 0.0, 1.0)
        if self.mistake == "keras 3 hard sigmoid":
            return torch.nn.functional.hardsigmoid(z)
        return torch.sigmoid(z)

    def softmax(self, z):
        if self.mistake == "softmax over the batch":
            return torch.softmax(z, dim=0)
        if self.mistake == "softmax without max":
            return torch.exp(z) / torch.exp(z).sum(dim=-1, keepdim=True)
        return torch.softmax(z, dim=-1)

    def layer_norm(self, z):
        gamma, beta = self.p["gamma_i"], self.p["beta_i"]
        if self.mistake == "sample variance":
            with warnings.catch_warnings():  # torch warns for one unit (no degree of freedom); a port would run on
                warnings.simplefilter("ignore")
                var = torch.var(z, dim=-1, keepdim=True)  # torch.var's default: the sample variance
            return (z - z.mean(dim=-1, keepdim=True)) / torch.sqrt(var + self.eps) * gamma + beta
        return torch.nn.functional.layer_norm(z, z.shape[-1:], gamma, beta, eps=self.eps)

    def forward(self, x, state, mask):
        h, c = state
        m_all = mask
        if self.mistake == "mask read as lengths":
            m_all = torch.arange(x.shape[1])[None] < mask.sum(dim=1)[:, None]
        outputs = []
        for t in range(x.shape[1]):
            xt = x[:, t]
            if self.mistake == "the other NovoLSTM":
                i = self.layer_norm(
                    self.sigmoid(self.gate("i", xt, h)) * self.softmax(self.gate("s", xt, h, recurrent=False))
                )
            else:
                i = self.layer_norm(self.sigmoid(self.gate("i", xt, h))) * self.softmax(self.gate("s", xt, h))
            f = self.sigmoid(self.gate("f", xt, h))
            g = torch.tanh(self.gate("g", xt, h))
            o = self.sigmoid(self.gate("o", xt, h))
            c_new = i * c + f * g if self.mistake == "roles swapped in the state update" else f * c + i * g
            h_new = o * torch.tanh(c if self.mistake == "output reads the old state" else c_new)
            m = m_all[:, t, None]
            if self.mistake == "masked steps update the state":
                h, c = h_new, c_new
            else:
                h, c = torch.where(m, h_new, h), torch.where(m, c_new, c)
            outputs.append(
                torch.where(m, h_new, h if self.mistake == "masked steps output h" else torch.zeros_like(h_new))
            )
        final = (c, h) if self.mistake == "state order" else (h, c)
        return torch.stack(outputs, 1), final


def as_implementation(mistake=None):
    def fn(params, x, state, mask):
        dtype = torch.from_numpy(np.asarray(x)).dtype
        if mistake == "lower precision":  # computes one precision below what it was handed
            dtype = torch.float32 if dtype == torch.float64 else torch.float16
        cast = lambda a: torch.as_tensor(np.asarray(a)).to(dtype)  # noqa: E731
        module = HandWrittenNovoLSTM({k: cast(v) for k, v in params.items()}, mistake)
        with torch.no_grad():
            out, final = module(cast(x), tuple(cast(s) for s in state), torch.as_tensor(np.asarray(mask)))
        return out.to(torch.float64).numpy().astype(x.dtype), tuple(
            s.to(torch.float64).numpy().astype(x.dtype) for s in final
        )

    return fn


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_a_correct_hand_written_torch_novolstm_conforms(dtype):
    report = conformance.check(as_implementation(), "novolstm", dtype=dtype)
    assert report.passed, report.format()


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_each_hand_written_torch_mistake_is_caught_and_diagnosed(handwritten_mistake, expected_diagnosis, dtype):
    report = conformance.check(as_implementation(handwritten_mistake), "novolstm", dtype=dtype)
    assert not report.passed
    assert all(r.first_divergence for r in report.results if not r.passed)
    assert expected_diagnosis(dtype) in (report.likely_mistake or ""), report.format()
