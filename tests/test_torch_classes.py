"""novolstm.torch's named classes: one per built-in spec, the classes get_layer/get_cell return,
printed by name, saved with torch.save / pickle / deepcopy and loaded in a fresh process that
imports only torch; nn.LSTM's keywords; the backward= option, torch.func and double backward.
Values are compared with the original module and with the float64 reference."""

from __future__ import annotations

import copy
import doctest
import json
import os
import pickle
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

import novolstm
import novolstm.torch as nt
from novolstm import reference
from novolstm.testing import assert_close, random_params, tolerance

SPECS = novolstm.list_specs()
I, H = 3, 4

#: A spec that is not built in: the standard LSTM with another name and class name.
CUSTOM = (
    novolstm.load_spec("lstm")
    .dumps()
    .replace('name = "lstm"', 'name = "my_lstm"')
    .replace('class_name = "LSTM"', 'class_name = "MyLSTM"')
)


def randomized(module, rng):
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.from_numpy(rng.normal(scale=0.5, size=tuple(p.shape))))
    return module


@pytest.mark.parametrize("name", SPECS)
def test_every_builtin_spec_has_a_named_layer_and_cell_that_get_layer_returns(name):
    class_name = novolstm.load_spec(name).class_name
    Layer, Cell = getattr(nt, class_name), getattr(nt, class_name + "Cell")
    assert Layer is novolstm.get_layer("torch", name) and Cell is novolstm.get_cell("torch", name)
    assert (Layer.__module__, Layer.__qualname__) == ("novolstm.torch", class_name)
    assert (Cell.__module__, Cell.__qualname__) == ("novolstm.torch", class_name + "Cell")
    assert issubclass(Layer, torch.nn.Module) and Layer.spec_hash == novolstm.load_spec(name).hash
    assert set(nt.__all__) >= {class_name, class_name + "Cell"}


def test_the_builtin_class_names():
    assert {"NovoLSTM", "LSTM", "GRU", "PeepholeLSTM", "NovoLSTMReference"} <= set(nt.__all__)
    with pytest.raises(AttributeError, match="no attribute 'Nope'"):
        nt.Nope  # noqa: B018


def test_a_named_layer_computes_its_spec(rng):
    params = random_params("novolstm", I, H, rng)
    x = rng.normal(size=(2, 5, I))
    layer = nt.NovoLSTM(I, hidden_size=H, batch_first=True, dtype=torch.float64).load_canonical(params)
    out, (h, c) = layer(torch.from_numpy(x))
    expected, (h_ref, c_ref) = reference.run("novolstm", params, x)
    assert_close(out.detach().numpy(), expected, tolerance("float64", 5), "outputs")
    assert_close(c.detach().numpy()[0], c_ref, tolerance("float64", 5), "final c")


def test_printing_shows_the_class_name_and_sizes():
    assert repr(nt.NovoLSTM(128, 128, batch_first=True)).startswith("NovoLSTM(\n  128, 128, batch_first=True\n")
    assert repr(nt.GRUCell(3, 5, bias=False)) == "GRUCell(3, 5, bias=False)"
    assert "(l1_reverse): LSTMCell(8, 4)" in repr(nt.LSTM(3, 4, num_layers=2, bidirectional=True))


def test_torch_keywords_hidden_size_and_input_size():
    layer = nt.LSTM(input_size=3, hidden_size=5, num_layers=2)
    native = torch.nn.LSTM(input_size=3, hidden_size=5, num_layers=2)
    assert (layer.input_size, layer.hidden_size, layer.num_layers, layer.proj_size) == (
        native.input_size,
        native.hidden_size,
        native.num_layers,
        native.proj_size,
    )
    assert nt.GRUCell(input_size=3, hidden_size=5).units == 5
    with pytest.raises(ValueError, match="give one of them"):
        nt.LSTM(3, 4, hidden_size=5)
    with pytest.raises(TypeError, match="hidden_size="):
        nt.LSTMCell(3)


def test_proj_size_is_refused_by_name():
    with pytest.raises(ValueError, match=r"proj_size=2: not supported; LSTM has no output projection"):
        nt.LSTM(3, 4, proj_size=2)
    assert nt.LSTM(3, 4, proj_size=0).proj_size == 0


LOADER = """
import json, sys
import torch

results = {}
for path in json.loads(sys.argv[1]):
    module = torch.load(path, weights_only=False)
    x = torch.load(path + ".x")
    out = module(x)
    out = out[0] if isinstance(out, tuple) else out
    results[path] = {"repr": repr(module), "out": out.detach().tolist()}
print(json.dumps({"results": results}))
"""


def test_torch_save_loads_in_a_fresh_process_that_imports_only_torch(tmp_path, rng):
    custom_path = tmp_path / "my_lstm.toml"
    custom_path.write_text(CUSTOM)
    modules = {
        "layer.pt": nt.NovoLSTM(I, H, num_layers=2, bidirectional=True, batch_first=True),
        "cell.pt": nt.PeepholeLSTMCell(I, H),
        "custom.pt": novolstm.get_layer("torch", custom_path)(I, H, batch_first=True),
        "custom_cell.pt": novolstm.get_cell("torch", custom_path)(I, H),
        "gru.pt": nt.GRU(I, H, backward="autograd"),
    }
    expected = {}
    for path, module in modules.items():
        module = randomized(module.double(), rng)
        x = torch.from_numpy(rng.normal(size=(2, 5, I) if "cell" not in path else (2, I)))
        out = module(x)
        expected[path] = (repr(module), (out[0] if isinstance(out, tuple) else out).detach().numpy())
        torch.save(module, tmp_path / path)
        torch.save(x, tmp_path / (path + ".x"))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONSTARTUP"}
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(LOADER), json.dumps(list(modules))],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    results = json.loads(proc.stdout.strip().splitlines()[-1])["results"]
    for path, (printed, out) in expected.items():
        assert results[path]["repr"] == printed, path
        np.testing.assert_array_equal(np.array(results[path]["out"]), out, err_msg=path)
    assert results["custom.pt"]["repr"].startswith("MyLSTM(")


@pytest.mark.parametrize("clone", [copy.deepcopy, lambda m: pickle.loads(pickle.dumps(m))], ids=["deepcopy", "pickle"])
def test_deepcopy_and_pickle_keep_the_class_and_the_weights(clone, tmp_path, rng):
    custom_path = tmp_path / "my_lstm.toml"
    custom_path.write_text(CUSTOM)
    for module in (nt.LSTM(I, H, num_layers=2), novolstm.get_layer("torch", custom_path)(I, H)):
        module = randomized(module.double(), rng)
        twin = clone(module)
        assert type(twin) is type(module) and twin is not module
        x = torch.from_numpy(rng.normal(size=(5, 2, I)))
        assert torch.equal(twin(x)[0], module(x)[0])
        with torch.no_grad():
            next(twin.parameters()).add_(1.0)  # a copy, not shared storage
        assert not torch.equal(twin(x)[0], module(x)[0])


def test_a_module_saved_from_another_version_of_its_spec_is_refused():
    layer = nt.LSTM(I, H)
    layer.spec_hash = "0" * 64  # as if saved when the lstm spec computed something else
    with pytest.raises(ValueError, match="sha256 000000000000.*the cells differ, so it is not loaded"):
        pickle.loads(pickle.dumps(layer))


def test_the_import_hook_resolves_generated_module_names_and_refuses_changed_specs(tmp_path):
    lstm = novolstm.load_spec("lstm")
    code = f"""
import importlib, pickle
mod = importlib.import_module("novolstm.generated.torch.lstm_{lstm.hash[:12]}")
assert mod.SPEC_HASH == {lstm.hash!r} and mod.Layer.__name__ == "LSTM"
for name in ("novolstm.generated.torch.lstm_000000000000", "novolstm.generated.torch.nope_000000000000"):
    try:
        importlib.import_module(name)
    except ImportError as exc:
        print(exc)
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-4000:]
    first, second = proc.stdout.strip().splitlines()
    assert "the cells differ, so it is not loaded" in first
    assert "spec 'nope' is not built in" in second


def test_double_backward_raises_a_clear_error_or_works_with_backward_autograd(rng):
    # compiled=False: the generated backward pass (the compiled kernel's is tested in test_torch_compiled.py).
    generated = randomized(nt.NovoLSTM(I, H, compiled=False).double(), rng)
    taped = nt.NovoLSTM(I, H, backward="autograd").double()
    taped.load_state_dict(generated.state_dict())
    x = torch.from_numpy(rng.normal(size=(5, 2, I))).requires_grad_()

    (g,) = torch.autograd.grad(generated(x)[0].square().sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match="NovoLSTM is not twice differentiable.*backward='autograd'"):
        g.square().sum().backward()

    (g_taped,) = torch.autograd.grad(taped(x)[0].square().sum(), x, create_graph=True)
    assert_close(g_taped.detach().numpy(), g.detach().numpy(), tolerance("float64", 5, "gradients"), "first order")
    # Second order against finite differences of the first-order gradient (the generated backward).
    direction = torch.from_numpy(rng.normal(size=x.shape))
    (hvp,) = torch.autograd.grad(g_taped, x, direction)
    eps = 1e-6

    def first_order(at):
        at = at.detach().requires_grad_()
        return torch.autograd.grad(generated(at)[0].square().sum(), at)[0]

    numeric = (first_order(x + eps * direction) - first_order(x - eps * direction)) / (2 * eps)
    np.testing.assert_allclose(hvp.numpy(), numeric.numpy(), rtol=1e-5, atol=1e-7)
    with pytest.raises(ValueError, match="backward: expected one of"):
        nt.LSTM(I, H, backward="twice")


def test_torch_func_grad_vmap_and_jacrev_on_cells_and_layers(rng):
    from torch.func import functional_call, grad, jacrev, vmap

    layer = randomized(nt.GRU(I, H).double(), rng)
    x = torch.from_numpy(rng.normal(size=(5, 2, I)))
    params = {k: v.detach() for k, v in layer.named_parameters()}
    grads = grad(lambda p: functional_call(layer, p, (x,))[0].sum())(params)
    expected = torch.autograd.grad(layer(x)[0].sum(), list(layer.parameters()))  # the generated backward
    for (name, got), want in zip(grads.items(), expected):
        assert_close(got.numpy(), want.numpy(), tolerance("float64", 5, "gradients"), name)

    lstm = randomized(nt.LSTM(I, H).double(), rng)  # the fused kernel outside the transforms
    rows = vmap(lambda row: lstm(row)[0], in_dims=1, out_dims=1)(x)  # one unbatched (time, input) call per row
    assert_close(rows.detach().numpy(), lstm(x)[0].detach().numpy(), tolerance("float64", 5), "vmap over a layer")

    cell = randomized(nt.LSTMCell(I, H).double(), rng)
    xs = torch.from_numpy(rng.normal(size=(6, I)))
    h, c = vmap(cell)(xs)  # one unbatched call per row
    h_all, c_all = cell(xs)
    assert_close(h.detach().numpy(), h_all.detach().numpy(), tolerance("float64"), "vmap h")
    jac = jacrev(lambda row: cell(row)[1])(xs[0])
    numeric = torch.stack(
        [(cell(xs[0] + 1e-6 * e)[1] - cell(xs[0] - 1e-6 * e)[1]) / 2e-6 for e in torch.eye(I, dtype=torch.float64)], 1
    )
    np.testing.assert_allclose(jac.detach().numpy(), numeric.detach().numpy(), rtol=1e-6, atol=1e-8)


def test_module_docstring_example():
    finder = doctest.DocTestFinder(recurse=False)
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    for test in finder.find(nt):
        runner.run(test)
    result = runner.summarize(verbose=False)
    assert result.failed == 0 and result.attempted > 0
