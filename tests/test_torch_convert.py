"""novolstm.convert.torch: torch state dicts <-> canonical parameters, checked against the
real torch modules (nn.LSTM, nn.LSTMCell, nn.GRU, nn.GRUCell) in float64."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

import novolstm
from novolstm.convert.torch import ConversionError, from_torch, to_torch
from novolstm.testing import assert_close, random_params, tolerance

NATIVE = {"lstm": (torch.nn.LSTM, torch.nn.LSTMCell), "gru": (torch.nn.GRU, torch.nn.GRUCell)}


def randomized(module, rng, scale=0.4):
    """Distinct random values in every torch parameter, biases included (both of them)."""
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.from_numpy(rng.normal(scale=scale, size=tuple(p.shape))))
    return module


def canonical_layers(cell, rng, input_size, units, num_layers, bidirectional, dtype=np.float64):
    out = {}
    for layer in range(num_layers):
        size = input_size if layer == 0 else units * (2 if bidirectional else 1)
        for suffix in ("", "_reverse")[: 2 if bidirectional else 1]:
            out[f"l{layer}{suffix}"] = {k: v.astype(dtype) for k, v in random_params(cell, size, units, rng).items()}
    return out


# ---------------------------------------------------------------- round trips


@pytest.mark.parametrize("cell", ["lstm", "gru"])
@settings(max_examples=20)
@given(
    input_size=st.integers(1, 4),
    units=st.integers(1, 4),
    num_layers=st.integers(1, 3),
    bidirectional=st.booleans(),
    dtype=st.sampled_from([np.float32, np.float64]),
    seed=st.integers(0, 2**32 - 1),
)
def test_canonical_torch_canonical_is_exact(cell, input_size, units, num_layers, bidirectional, dtype, seed):
    params = canonical_layers(cell, np.random.default_rng(seed), input_size, units, num_layers, bidirectional, dtype)
    back = from_torch(to_torch(params, cell=cell), cell=cell)
    assert list(back) == list(params)
    for key in params:
        assert back[key].keys() == params[key].keys()
        for name, value in params[key].items():
            assert back[key][name].dtype == dtype
            assert np.array_equal(back[key][name], value), (key, name)
    # the cell form too
    single = params["l0"]
    again = from_torch(to_torch(single, cell=cell), cell=cell)
    assert all(np.array_equal(again[k], v) for k, v in single.items())


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_torch_canonical_torch_keeps_weights_and_bias_sums(cell, rng):
    native = randomized(NATIVE[cell][0](3, 4, num_layers=2, bidirectional=True).double(), rng)
    sd = native.state_dict()
    back = to_torch(from_torch(sd, cell=cell), cell=cell)
    assert set(back) == set(sd)
    for key, value in sd.items():
        if key.startswith("weight"):
            assert np.array_equal(back[key], value.numpy()), key
    for suffix in ("_l0", "_l0_reverse", "_l1", "_l1_reverse"):
        total = sd["bias_ih" + suffix].numpy() + sd["bias_hh" + suffix].numpy()
        got = back["bias_ih" + suffix] + back["bias_hh" + suffix]
        if cell == "lstm":
            assert np.array_equal(got, total)
        else:  # r and z merge; n keeps its two biases apart
            assert np.array_equal(got[:8], total[:8])
            assert np.array_equal(back["bias_ih" + suffix][8:], sd["bias_ih" + suffix].numpy()[8:])
            assert np.array_equal(back["bias_hh" + suffix][8:], sd["bias_hh" + suffix].numpy()[8:])


def test_gru_keeps_b_hn_apart(rng):
    native = randomized(torch.nn.GRUCell(2, 3).double(), rng)
    params = from_torch(native.state_dict(), cell="gru")
    b_ih, b_hh = native.bias_ih.detach().numpy(), native.bias_hh.detach().numpy()
    assert np.array_equal(params["b_hn"], b_hh[6:])
    assert np.array_equal(params["b_n"], b_ih[6:])
    assert np.array_equal(params["b_r"], b_ih[:3] + b_hh[:3])


def test_float32_biases_sum_in_float64_and_round_once():
    sd = {
        "weight_ih": np.zeros((4, 1), np.float32),
        "weight_hh": np.zeros((4, 1), np.float32),
        "bias_ih": np.float32([1.0, 1e8, 0.1, 3.0]),
        "bias_hh": np.float32([2**-30, 1.0, 0.2, -3.0]),
    }
    b = [from_torch(sd, cell="lstm")[f"b_{g}"][0] for g in "ifgo"]
    expected = (sd["bias_ih"].astype(np.float64) + sd["bias_hh"].astype(np.float64)).astype(np.float32)
    assert np.array_equal(np.float32(b), expected)


def test_prefix_bias_false_and_tensors(rng):
    native = randomized(torch.nn.LSTM(3, 2, bias=False), rng)
    model = torch.nn.ModuleDict({"rnn": native})
    params = from_torch(model.state_dict(), cell="lstm", prefix="rnn.")
    assert all(not params["l0"][f"b_{g}"].any() for g in "ifgo")
    assert params["l0"]["W_i"].dtype == np.float32
    sd = to_torch(params, cell="lstm", bias=False)
    assert set(sd) == {"weight_ih_l0", "weight_hh_l0"}
    native.load_state_dict({k: torch.from_numpy(v) for k, v in sd.items()})
    params["l0"]["b_f"] = np.ones(2, np.float32)
    with pytest.raises(ConversionError, match="bias=False holds no biases: dropping"):
        to_torch(params, cell="lstm", bias=False)


def test_refusals():
    with pytest.raises(ConversionError, match="proj_size"):
        from_torch(torch.nn.LSTM(3, 4, proj_size=2).state_dict(), cell="lstm")
    with pytest.raises(ConversionError, match="no native layout for spec 'novolstm'"):
        from_torch(torch.nn.LSTM(3, 4).state_dict(), cell="novolstm")
    with pytest.raises(ConversionError, match="not \\(4\\*H, I\\)"):
        from_torch(torch.nn.GRU(3, 4).state_dict(), cell="lstm")
    with pytest.raises(ConversionError, match="unexpected keys \\['fc.weight'\\]"):
        from_torch({"fc.weight": np.zeros((2, 2))}, cell="lstm")
    with pytest.raises(ConversionError, match=r"missing \['U_o'\]"):
        to_torch(
            {k: v for k, v in random_params("lstm", 2, 3, np.random.default_rng(0)).items() if k != "U_o"}, cell="lstm"
        )
    with pytest.raises(ConversionError, match=r"unexpected \['p_f', 'p_i', 'p_o'\]"):
        to_torch(random_params("peephole_lstm", 2, 3, np.random.default_rng(0)), cell="lstm")


# ---------------------------------------------------------------- against the real modules


def mapped_grads(layer, cell):
    """Our layer's parameter gradients, in torch's layout (a merged bias's gradient is each torch bias's)."""
    grads = {key: {name: p.grad.numpy() for name, p in c.named_parameters()} for key, c in layer.cells.items()}
    out = to_torch(grads, cell=cell)
    if cell == "lstm":  # d loss / d bias_hh = d loss / d bias_ih for every merged bias
        for key in [k for k in out if k.startswith("bias_hh")]:
            out[key] = out[key.replace("bias_hh", "bias_ih")]
    else:
        for key in [k for k in out if k.startswith("bias_hh")]:
            H = out[key].shape[0] // 3
            out[key] = np.concatenate([out[key.replace("bias_hh", "bias_ih")][: 2 * H], out[key][2 * H :]])
    return out


@pytest.mark.parametrize("cell", ["lstm", "gru"])
@pytest.mark.parametrize("num_layers,bidirectional,batch_first", [(1, False, False), (2, True, True)])
def test_spec_with_native_weights_matches_native_module(cell, num_layers, bidirectional, batch_first, rng):
    B, T, I, H = 3, 6, 4, 5
    native = randomized(
        NATIVE[cell][0](I, H, num_layers=num_layers, bidirectional=bidirectional, batch_first=batch_first).double(), rng
    )
    ours = novolstm.get_layer("torch", spec=cell)(
        I, H, num_layers=num_layers, bidirectional=bidirectional, batch_first=batch_first, dtype=torch.float64
    )
    ours.load_canonical(from_torch(native.state_dict(), cell=cell))
    x = torch.tensor(rng.normal(size=(B, T, I) if batch_first else (T, B, I)))
    rows = num_layers * (2 if bidirectional else 1)
    h0 = tuple(torch.tensor(0.5 * rng.normal(size=(rows, B, H))) for _ in novolstm.load_spec(cell).state_names)
    results = []
    for module in (native, ours):
        xi = x.clone().requires_grad_()
        hi = tuple(h.clone().requires_grad_() for h in h0)
        out, final = module(xi, hi if len(hi) > 1 else hi[0])
        final = final if isinstance(final, tuple) else (final,)
        (out.sin().sum() + sum((f * f).sum() for f in final)).backward()
        results.append((out.detach(), [f.detach() for f in final], xi.grad, [h.grad for h in hi]))
    tol = tolerance("float64", T * num_layers)
    gtol = tolerance("float64", T * num_layers, kind="gradients")
    (out_n, fin_n, gx_n, gh_n), (out_o, fin_o, gx_o, gh_o) = results
    assert_close(out_o.numpy(), out_n.numpy(), tol, what="outputs")
    for a, b in zip(fin_o, fin_n):
        assert_close(a.numpy(), b.numpy(), tol, what="final state")
    assert_close(gx_o.numpy(), gx_n.numpy(), gtol, what="grad input")
    for a, b in zip(gh_o, gh_n):
        assert_close(a.numpy(), b.numpy(), gtol, what="grad initial state")
    ours_grads = mapped_grads(ours, cell)
    for name, p in native.named_parameters():
        assert_close(ours_grads[name], p.grad.numpy(), gtol, what=f"grad {name}")


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_packed_sequence_matches_native_module(cell, rng):
    native = randomized(NATIVE[cell][0](3, 4, num_layers=2, bidirectional=True).double(), rng)
    ours = novolstm.get_layer("torch", spec=cell)(3, 4, num_layers=2, bidirectional=True, dtype=torch.float64)
    ours.load_canonical(from_torch(native.state_dict(), cell=cell))
    x = torch.tensor(rng.normal(size=(6, 4, 3)))
    packed = pack_padded_sequence(x, torch.tensor([2, 6, 1, 4]), enforce_sorted=False)
    with torch.no_grad():
        (out_n, fin_n), (out_o, fin_o) = native(packed), ours(packed)
    pn, ln = pad_packed_sequence(out_n)
    po, lo = pad_packed_sequence(out_o)
    assert torch.equal(ln, lo)
    tol = tolerance("float64", 12)
    assert_close(po.numpy(), pn.numpy(), tol, what="packed outputs")
    for a, b in zip(fin_o if isinstance(fin_o, tuple) else (fin_o,), fin_n if isinstance(fin_n, tuple) else (fin_n,)):
        assert_close(a.numpy(), b.numpy(), tol, what="packed final state")


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_cell_with_native_weights_matches_native_cell(cell, rng):
    native = randomized(NATIVE[cell][1](4, 5).double(), rng)
    ours = novolstm.get_cell("torch", spec=cell)(4, 5, dtype=torch.float64)
    ours.load_canonical(from_torch(native.state_dict(), cell=cell))
    x = torch.tensor(rng.normal(size=(3, 4)))
    state = tuple(torch.tensor(rng.normal(size=(3, 5))) for _ in novolstm.load_spec(cell).state_names)
    state = state if len(state) > 1 else state[0]
    a, b = native(x, state), ours(x, state)
    for got, want in zip(b if isinstance(b, tuple) else (b,), a if isinstance(a, tuple) else (a,)):
        assert_close(got.detach().numpy(), want.detach().numpy(), what=f"{cell} cell step")
    # and back: our canonical weights into a fresh native cell
    fresh = NATIVE[cell][1](4, 5).double()
    fresh.load_state_dict({k: torch.from_numpy(v) for k, v in to_torch(ours.export_canonical(), cell=cell).items()})
    c = fresh(x, state)
    for got, want in zip(c if isinstance(c, tuple) else (c,), a if isinstance(a, tuple) else (a,)):
        assert_close(got.detach().numpy(), want.detach().numpy(), what=f"{cell} cell step, round trip")
