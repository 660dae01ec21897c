"""The generated PyTorch Cell (nn.LSTMCell conventions) and Layer (nn.LSTM conventions):
calling conventions, parameters and state_dict, masking and packing, errors,
torch.compile. Values are checked against the float64 reference."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

import novolstm
from novolstm import reference
from novolstm.testing import assert_close, random_params, tolerance

CELLS = novolstm.list_specs()


def Cell(cell):
    return novolstm.get_cell("torch", spec=cell)


def Layer(cell):
    return novolstm.get_layer("torch", spec=cell)


def state_names(cell):
    return novolstm.load_spec(cell).state_names


def as_tuple(state):
    return state if isinstance(state, tuple) else (state,)


def randomize(module, rng, scale=0.5):
    """Distinct random weights per gate in every cell of a Cell or Layer; returns the canonical dicts."""
    cells = {"": module} if not hasattr(module, "cells") else dict(module.cells.items())
    out = {}
    for key, cell in cells.items():
        params = random_params(cell.spec_name, cell.input_size, cell.units, rng, scale=scale)
        cell.load_canonical(params)
        out[key] = params
    return out if hasattr(module, "cells") else out[""]


def reference_layer(cell, params, x, states, mask, num_layers, bidirectional):
    """A stacked (bi)directional layer composed from the reference, batch-first, float64.

    The reverse direction runs the reference on the time-flipped sequence and mask.
    states: per (layer, direction) row, a tuple in state order (or None).
    """
    dirs = 2 if bidirectional else 1
    finals = []
    for layer in range(num_layers):
        outs = []
        for d in range(dirs):
            key = f"l{layer}" + ("_reverse" if d else "")
            s = None if states is None else states[layer * dirs + d]
            if d == 0:
                y, f = reference.run(cell, params[key], x, s, mask=mask)
            else:
                y, f = reference.run(cell, params[key], x[:, ::-1], s, mask=None if mask is None else mask[:, ::-1])
                y = y[:, ::-1]
            outs.append(y)
            finals.append(f)
        x = np.concatenate(outs, axis=-1)
    stacked = tuple(np.stack([f[k] for f in finals]) for k in range(len(finals[0])))
    return x, stacked


# ---------------------------------------------------------------- Cell


@pytest.mark.parametrize("cell", CELLS)
def test_cell_step_matches_reference(cell, rng):
    c = Cell(cell)(4, 5, dtype=torch.float64)
    params = randomize(c, rng)
    x = rng.normal(size=(3, 4))
    state = tuple(rng.normal(size=(3, 5)) for _ in state_names(cell))
    new = c(torch.tensor(x), tuple(map(torch.tensor, state)) if len(state) > 1 else torch.tensor(state[0]))
    expected, _ = reference.step(cell, params, x, state)
    if len(state) == 1:
        assert isinstance(new, torch.Tensor)  # single-state cells return h, as nn.GRUCell
    for got, want in zip(as_tuple(new), expected):
        assert_close(got.detach().numpy(), want, what=f"{cell} step")
    # unbatched input (input,) and state (units,), as nn.LSTMCell accepts
    new1 = c(
        torch.tensor(x[1]), tuple(torch.tensor(s[1]) for s in state) if len(state) > 1 else torch.tensor(state[0][1])
    )
    for got, want in zip(as_tuple(new1), expected):
        assert tuple(got.shape) == (5,)
        assert_close(got.detach().numpy(), want[1], what=f"{cell} unbatched step")


def test_cell_default_state_is_zeros(rng):
    c = Cell("lstm")(3, 2, dtype=torch.float64)
    params = randomize(c, rng)
    x = rng.normal(size=(2, 3))
    h, c_ = c(torch.tensor(x))
    expected, _ = reference.step("lstm", params, x, (np.zeros((2, 2)), np.zeros((2, 2))))
    assert_close(h.detach().numpy(), expected[0], what="h")


@pytest.mark.parametrize("cell", CELLS)
def test_cell_parameters_are_canonical(cell):
    c = Cell(cell)(3, 4, seed=7)
    spec = novolstm.load_spec(cell)
    assert list(c.state_dict()) == list(spec.param_names)
    assert dict(c.named_parameters()).keys() == set(spec.param_names)
    expected = novolstm.init_params(spec, 3, 4, seed=7)
    for name, value in c.state_dict().items():
        assert value.dtype == torch.float32
        assert tuple(value.shape) == expected[name].shape
        assert torch.equal(value, torch.from_numpy(expected[name].astype(np.float32))), name
    c.reset_parameters(seed=8)
    assert torch.equal(
        c.state_dict()[spec.param_names[0]],
        torch.from_numpy(novolstm.init_params(spec, 3, 4, seed=8)[spec.param_names[0]].astype(np.float32)),
    )


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
def test_canonical_round_trip_is_exact(dtype, rng):
    c = Cell("novolstm")(3, 4, dtype=dtype)
    params = {
        k: v.astype(np.float32) if dtype != torch.float64 else v
        for k, v in random_params("novolstm", 3, 4, rng).items()
    }
    if dtype == torch.bfloat16:  # values bfloat16 can hold
        params = {k: torch.tensor(v).to(torch.bfloat16).float().numpy() for k, v in params.items()}
    c.load_canonical(params)
    out = c.export_canonical()
    assert out.keys() == params.keys()
    for k in params:
        assert out[k].dtype == (np.float64 if dtype == torch.float64 else np.float32)
        assert np.array_equal(out[k], params[k]), k
    c2 = Cell("novolstm")(3, 4, dtype=dtype).load_canonical(out)
    assert all(torch.equal(a, b) for a, b in zip(c.state_dict().values(), c2.state_dict().values()))


def test_load_canonical_refuses_bad_dicts(rng):
    c = Cell("lstm")(3, 4)
    params = random_params("lstm", 3, 4, rng)
    with pytest.raises(ValueError, match=r"missing \['W_i'\]"):
        c.load_canonical({k: v for k, v in params.items() if k != "W_i"})
    with pytest.raises(ValueError, match="unexpected"):
        c.load_canonical({**params, "W_x": params["W_i"]})
    with pytest.raises(ValueError, match=r"params\['U_f'\]: expected shape \(4, 4\), got \(4, 3\)"):
        c.load_canonical({**params, "U_f": np.zeros((4, 3))})


def test_state_dict_save_load_and_to(rng):
    c = Cell("novolstm")(3, 4)
    randomize(c, rng)
    buffer = io.BytesIO()
    torch.save(c.state_dict(), buffer)
    buffer.seek(0)
    c2 = Cell("novolstm")(3, 4, seed=99)
    c2.load_state_dict(torch.load(buffer))
    x = torch.randn(2, 3)
    assert all(torch.equal(a, b) for a, b in zip(c(x), c2(x)))
    c64 = c2.to(torch.float64)
    assert c64.W_i.dtype == torch.float64 and isinstance(c64.W_i, torch.nn.Parameter)
    h, _ = c64(x.double())
    assert h.dtype == torch.float64
    assert_close(
        h.detach().numpy().astype(np.float32),
        c(x)[0].detach().numpy(),
        tolerance("float32"),
        what="float64 vs float32 cell",
    )


def test_bias_false_leaves_out_projection_biases(rng):
    c = Cell("gru")(3, 4, bias=False, dtype=torch.float64)
    assert set(c.state_dict()) == {"W_r", "U_r", "W_z", "U_z", "W_n", "U_n"}
    params = random_params("gru", 3, 4, rng)
    c.load_canonical({k: v for k, v in params.items() if not k.startswith("b_")})
    zeroed = {k: (np.zeros_like(v) if k.startswith("b_") else v) for k, v in params.items()}
    x = rng.normal(size=(2, 3))
    expected, _ = reference.step("gru", zeroed, x, (np.zeros((2, 4)),))
    assert_close(c(torch.tensor(x)).detach().numpy(), expected[0], what="h")
    with pytest.raises(ValueError, match="bias=False"):
        c.load_canonical({**params, "b_r": np.ones(4)})


# ---------------------------------------------------------------- Layer


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("num_layers,bidirectional", [(1, False), (2, True)])
@pytest.mark.parametrize("batch_first", [False, True])
def test_layer_matches_reference(cell, num_layers, bidirectional, batch_first, rng):
    B, T, I, H = 3, 6, 4, 5
    layer = Layer(cell)(
        I, H, num_layers=num_layers, bidirectional=bidirectional, batch_first=batch_first, dtype=torch.float64
    )
    params = randomize(layer, rng)
    x = rng.normal(size=(B, T, I))
    rows = num_layers * (2 if bidirectional else 1)
    states = [tuple(0.5 * rng.normal(size=(B, H)) for _ in state_names(cell)) for _ in range(rows)]
    lengths = np.array([6, 2, 4])
    expected, expected_final = reference_layer(
        cell, params, x, states, np.arange(T)[None] < lengths[:, None], num_layers, bidirectional
    )
    hx = tuple(torch.tensor(np.stack([s[k] for s in states])) for k in range(len(states[0])))
    xt = torch.tensor(x) if batch_first else torch.tensor(x).transpose(0, 1)
    out, final = layer(xt, hx if len(hx) > 1 else hx[0], lengths=torch.tensor(lengths))
    out = out if batch_first else out.transpose(0, 1)
    tol = tolerance("float64", T * num_layers)
    assert tuple(out.shape) == (B, T, H * (2 if bidirectional else 1))
    assert_close(out.detach().numpy(), expected, tol, what="outputs")
    for got, want in zip(as_tuple(final), expected_final):
        assert tuple(got.shape) == (rows, B, H)
        assert_close(got.detach().numpy(), want, tol, what="final state")


def test_layer_state_dict_keys():
    layer = Layer("lstm")(3, 4, num_layers=2, bidirectional=True)
    keys = list(layer.state_dict())
    assert keys[:2] == ["cells.l0.W_i", "cells.l0.U_i"]
    assert {k.split(".")[1] for k in keys} == {"l0", "l0_reverse", "l1", "l1_reverse"}
    assert layer.cells["l1"].input_size == 8  # both directions of layer 0 feed layer 1
    exported = layer.export_canonical()
    assert set(exported) == {"l0", "l0_reverse", "l1", "l1_reverse"}
    fresh = Layer("lstm")(3, 4, num_layers=2, bidirectional=True, seed=1).load_canonical(exported)
    assert all(torch.equal(a, b) for a, b in zip(layer.state_dict().values(), fresh.state_dict().values()))
    # distinct initial weights per cell
    assert not torch.equal(layer.cells["l0"].W_i, layer.cells["l0_reverse"].W_i)


def test_mask_and_lengths_agree(rng):
    layer = Layer("novolstm")(3, 4, bidirectional=True, batch_first=True, dtype=torch.float64)
    randomize(layer, rng)
    x = torch.tensor(rng.normal(size=(3, 5, 3)))
    lengths = torch.tensor([5, 1, 3])
    mask = torch.arange(5)[None] < lengths[:, None]
    a, (ha, ca) = layer(x, lengths=lengths)
    b, (hb, cb) = layer(x, mask=mask)
    assert torch.equal(a, b) and torch.equal(ha, hb) and torch.equal(ca, cb)
    assert (a[1, 1:] == 0).all() and (a[2, 3:] == 0).all()


def test_general_mask_follows_the_rule(rng):
    # Any mask, not only right padding: masked steps carry the state and output zero.
    layer = Layer("gru")(3, 4, batch_first=True, dtype=torch.float64)
    params = randomize(layer, rng)
    x = rng.normal(size=(2, 6, 3))
    mask = np.array([[True, False, True, True, False, True], [False, False, True, False, True, True]])
    out, h = layer(torch.tensor(x), mask=torch.tensor(mask))
    expected, (h_ref,) = reference.run("gru", params["l0"], x, mask=mask)
    assert_close(out.detach().numpy(), expected, what="outputs")
    assert_close(h[0].detach().numpy(), h_ref, what="final h")


@pytest.mark.parametrize("enforce_sorted", [False, True])
def test_packed_sequence(enforce_sorted, rng):
    layer = Layer("lstm")(3, 4, num_layers=2, bidirectional=True, dtype=torch.float64)
    randomize(layer, rng)
    lengths = torch.tensor([5, 3, 2]) if enforce_sorted else torch.tensor([2, 5, 3])
    x = torch.tensor(rng.normal(size=(5, 3, 3)), requires_grad=True)
    packed = pack_padded_sequence(x, lengths, enforce_sorted=enforce_sorted)
    out, (h, c) = layer(packed)
    assert isinstance(out, torch.nn.utils.rnn.PackedSequence)
    assert torch.equal(out.batch_sizes, packed.batch_sizes)
    padded, out_lengths = pad_packed_sequence(out)
    want, (hw, cw) = layer(x, lengths=lengths)
    assert torch.equal(out_lengths, lengths)
    assert torch.equal(padded, want) and torch.equal(h, hw) and torch.equal(c, cw)
    (padded.sum() + h.sum()).backward()
    b = int(lengths.argmin())
    assert x.grad is not None and (x.grad[int(lengths[b]) :, b] == 0).all()  # padding receives no gradient


def test_unbatched_layer_input(rng):
    layer = Layer("lstm")(3, 4, num_layers=2, dtype=torch.float64)
    randomize(layer, rng)
    x = torch.tensor(rng.normal(size=(5, 3)))
    h0 = torch.tensor(rng.normal(size=(2, 4)))
    out, (h, c) = layer(x, (h0, torch.zeros(2, 4, dtype=torch.float64)))
    batched, (hb, cb) = layer(x[:, None], (h0[:, None], torch.zeros(2, 1, 4, dtype=torch.float64)))
    assert tuple(out.shape) == (5, 4) and tuple(h.shape) == (2, 4)
    assert torch.equal(out, batched[:, 0]) and torch.equal(h, hb[:, 0])


def test_dropout_between_layers(rng):
    # the generated loop, which the hand-made run below repeats bit for bit
    layer = Layer("gru")(3, 4, num_layers=2, dropout=0.5, dtype=torch.float64, fused=False, compiled=False)
    randomize(layer, rng)
    x = torch.tensor(rng.normal(size=(5, 2, 3)))
    layer.eval()
    eval_out, _ = layer(x)
    layer.train()
    torch.manual_seed(3)
    train_out, _ = layer(x)
    assert not torch.equal(train_out, eval_out)
    # the same thing by hand: dropout on layer 0's outputs only
    m = novolstm.load_generated("gru", "torch")
    with torch.no_grad():
        y0, _ = m.sequence(layer.cells["l0"].params(), x.transpose(0, 1))
        torch.manual_seed(3)
        y0 = torch.nn.functional.dropout(y0, 0.5, training=True)
        y1, _ = m.sequence(layer.cells["l1"].params(), y0)
    assert torch.equal(train_out, y1.transpose(0, 1))


def test_layer_gradients_match_numpy(rng):
    # Through the module: one layer, mask, initial state; against the NumPy generated backward.
    layer = Layer("novolstm")(3, 4, batch_first=True, dtype=torch.float64)
    params = randomize(layer, rng)["l0"]
    x = rng.normal(size=(2, 6, 3))
    state = (rng.normal(size=(2, 4)), rng.normal(size=(2, 4)))
    mask = np.array([[True] * 6, [True] * 3 + [False] * 3])
    g_out = rng.normal(size=(2, 6, 4))
    xt = torch.tensor(x, requires_grad=True)
    s0 = tuple(torch.tensor(s[None], requires_grad=True) for s in state)
    out, (h, c) = layer(xt, s0, mask=torch.tensor(mask))
    ((out * torch.tensor(g_out)).sum() + h.sum()).backward()
    m = novolstm.load_generated("novolstm", "numpy")
    _, _, tape = m.forward(params, x, state, mask, keep_tape=True)
    gx, gs, gp = m.backward(params, tape, g_out, (np.ones((2, 4)), np.zeros((2, 4))))
    tol = tolerance("float64", 6, kind="gradients")
    assert_close(xt.grad.numpy(), gx, tol, what="grad x")
    assert_close(s0[0].grad.numpy()[0], gs[0], tol, what="grad h0")
    assert_close(s0[1].grad.numpy()[0], gs[1], tol, what="grad c0")
    for name, value in layer.cells["l0"].named_parameters():
        assert_close(value.grad.numpy(), gp[name], tol, what=f"grad {name}")


# ---------------------------------------------------------------- errors


def test_clear_errors_on_bad_input():
    layer = Layer("lstm")(3, 4, num_layers=2, batch_first=True)
    x = torch.zeros(2, 5, 3)
    with pytest.raises(
        ValueError, match=r"input: expected shape \(batch, time, input_size\).*input_size=3, got \(2, 5, 7\)"
    ):
        layer(torch.zeros(2, 5, 7))
    with pytest.raises(TypeError, match=r"input: expected dtype torch.float32 .*got torch.float64"):
        layer(x.double())
    with pytest.raises(ValueError, match=r"expected device cpu .*got meta"):
        layer(torch.zeros(2, 5, 3, device="meta"))
    with pytest.raises(ValueError, match=r"hx h: expected shape \(2, 2, 4\)"):
        layer(x, (torch.zeros(1, 2, 4), torch.zeros(2, 2, 4)))
    with pytest.raises(ValueError, match=r"hx: expected 2 tensors \('h', 'c'\)"):
        layer(x, torch.zeros(2, 2, 4))
    with pytest.raises(ValueError, match=r"mask: expected a bool tensor of shape \(batch, time\) = \(2, 5\)"):
        layer(x, mask=torch.ones(5, 2, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"lengths: expected values in \[0, 5\]"):
        layer(x, lengths=torch.tensor([6, 1]))
    with pytest.raises(ValueError, match="not both"):
        layer(x, lengths=torch.tensor([5, 1]), mask=torch.ones(2, 5, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"input: expected shape .* got \(2, 0, 3\)"):
        layer(torch.zeros(2, 0, 3))
    cell = Cell("gru")(3, 4)
    with pytest.raises(ValueError, match=r"x: expected shape \(batch, 3\) or \(3,\), got \(2, 4\)"):
        cell(torch.zeros(2, 4))
    with pytest.raises(ValueError, match=r"state h: expected shape \(2, 4\), got \(2, 5\)"):
        cell(torch.zeros(2, 3), torch.zeros(2, 5))
    with pytest.raises(TypeError, match=r"x: expected a torch.Tensor"):
        cell(np.zeros((2, 3), np.float32))


# ---------------------------------------------------------------- torch.compile


@pytest.mark.slow
def test_torch_compile_matches_eager(rng):
    torch._dynamo.reset()
    layer = Layer("novolstm")(3, 4, batch_first=True, dtype=torch.float64)
    randomize(layer, rng)
    x = torch.tensor(rng.normal(size=(2, 3, 3)), requires_grad=True)
    lengths = torch.tensor([3, 2])
    out, (h, c) = layer(x, lengths=lengths)
    (out.sum() + c.sum()).backward()
    eager = [x.grad.clone()] + [p.grad.clone() for p in layer.parameters()]
    x.grad = None
    layer.zero_grad()
    compiled = torch.compile(layer)
    out2, (h2, c2) = compiled(x, lengths=lengths)
    tol = tolerance("float64", 3)
    assert_close(out2.detach().numpy(), out.detach().numpy(), tol, what="compiled outputs")
    assert_close(c2.detach().numpy(), c.detach().numpy(), tol, what="compiled final c")
    (out2.sum() + c2.sum()).backward()
    for got, want in zip([x.grad] + [p.grad for p in layer.parameters()], eager):
        assert_close(got.numpy(), want.numpy(), tolerance("float64", 3, kind="gradients"), what="compiled gradients")


@pytest.mark.parametrize("num_layers,bidirectional", [(1, False), (2, True)])
def test_canonical_checkpoint_round_trip(num_layers, bidirectional, tmp_path, rng):
    # Layer.export_canonical -> novolstm.save -> novolstm.load -> Layer.load_canonical, exactly.
    from novolstm.checkpoint import load, save

    layer = Layer("novolstm")(3, 4, num_layers=num_layers, bidirectional=bidirectional, dtype=torch.float64)
    randomize(layer, rng)
    exported = layer.export_canonical()
    single = num_layers == 1 and not bidirectional
    save(
        exported["l0"] if single else exported,
        tmp_path / "layer.safetensors",
        spec="novolstm",
        layers=num_layers,
        bidirectional=bidirectional,
    )
    params, info = load(tmp_path / "layer.safetensors", spec="novolstm")
    fresh = Layer("novolstm")(3, 4, num_layers=num_layers, bidirectional=bidirectional, dtype=torch.float64, seed=5)
    fresh.load_canonical(params)
    assert all(torch.equal(a, b) for a, b in zip(layer.state_dict().values(), fresh.state_dict().values()))


def test_save_module_and_load_into_a_stacked_bidirectional_layer(tmp_path):
    Layer = novolstm.get_layer("torch", spec="novolstm")
    layer = Layer(3, 4, num_layers=2, bidirectional=True, seed=1)
    path = tmp_path / "layer.safetensors"
    novolstm.save_module(layer, path)
    assert novolstm.load(path)[1]["layers"] == "2"
    other = novolstm.load_into(Layer(3, 4, num_layers=2, bidirectional=True, seed=2), path)
    x = torch.randn(5, 2, 3)
    torch.testing.assert_close(other(x)[0], layer(x)[0], rtol=0, atol=0)
    with pytest.raises(ValueError, match="cell keys"):
        novolstm.load_into(Layer(3, 4, num_layers=1, seed=2), path)
    cell = novolstm.get_cell("torch", spec="novolstm")(3, 4, seed=3)
    novolstm.save_module(cell, tmp_path / "cell.safetensors")
    single = novolstm.load_into(
        Layer(3, 4, seed=4), tmp_path / "cell.safetensors"
    )  # a one-cell layer takes a cell's file
    torch.testing.assert_close(single.cells["l0"].W_i, cell.W_i, rtol=0, atol=0)
