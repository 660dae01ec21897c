"""The conformance kit on NovoLSTMs written directly in torch, outside novolstm: the correct one
passes; the ones with the usual porting mistakes fail, and the diagnosis names the mistake."""

from __future__ import annotations

import numpy as np
import torch

from novolstm import conformance


class HandWrittenNovoLSTM(torch.nn.Module):
    """NovoLSTM as someone would write it in torch, from the design document's formula."""

    def __init__(self, params, layer_norm_eps=1e-3, swap_input_forget=False):
        super().__init__()
        self.p = {k: torch.as_tensor(v) for k, v in params.items()}
        self.eps, self.swap = layer_norm_eps, swap_input_forget

    def gate(self, name, x, h):
        return x @ self.p[f"W_{name}"] + h @ self.p[f"U_{name}"] + self.p[f"b_{name}"]

    def forward(self, x, state, mask):
        h, c = state
        outputs = []
        i_name, f_name = ("f", "i") if self.swap else ("i", "f")
        for t in range(x.shape[1]):
            xt = x[:, t]
            z = torch.sigmoid(self.gate(i_name, xt, h))
            # torch's functional layer norm with the epsilon we are given
            ln = torch.nn.functional.layer_norm(z, z.shape[-1:], self.p["gamma_i"], self.p["beta_i"], eps=self.eps)
            i = ln * torch.softmax(self.gate("s", xt, h), dim=-1)
            f = torch.sigmoid(self.gate(f_name, xt, h))
            g = torch.tanh(self.gate("g", xt, h))
            o = torch.sigmoid(self.gate("o", xt, h))
            c_new = f * c + i * g
            h_new = o * torch.tanh(c_new)
            m = mask[:, t, None]
            h, c = torch.where(m, h_new, h), torch.where(m, c_new, c)
            outputs.append(torch.where(m, h_new, torch.zeros_like(h_new)))
        return torch.stack(outputs, 1), (h, c)


def as_implementation(**options):
    def fn(params, x, state, mask):
        module = HandWrittenNovoLSTM(params, **options)
        with torch.no_grad():
            out, final = module(torch.as_tensor(x), tuple(torch.as_tensor(s) for s in state), torch.as_tensor(np.asarray(mask)))
        return out.numpy(), tuple(s.numpy() for s in final)

    return fn


def test_a_correct_hand_written_torch_novolstm_conforms():
    for dtype in ("float64", "float32"):
        report = conformance.check(as_implementation(), "novolstm", dtype=dtype)
        assert report.passed, report.format()


def test_torchs_default_layer_norm_epsilon_is_caught_and_named():
    report = conformance.check(as_implementation(layer_norm_eps=1e-5), "novolstm")
    assert not report.passed
    assert any("LayerNorm epsilon 1e-05 (torch's default)" in d for r in report.results for d in r.diagnosis), report.format()


def test_a_gate_order_mistake_is_caught_and_named():
    report = conformance.check(as_implementation(swap_input_forget=True), "novolstm")
    assert not report.passed
    assert any("gates 'f' and 'i' swapped" in d for r in report.results for d in r.diagnosis), report.format()
