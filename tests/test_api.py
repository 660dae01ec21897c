"""The public API: run, init_params, generate_source, get_cell, the masking rule, bad input, the CLI."""

from __future__ import annotations

import ast
import subprocess
import sys

import numpy as np
import pytest

import novolstm
from novolstm import reference
from novolstm.cli import main
from novolstm.testing import assert_close, concurrent_calls, random_params

RNG = np.random.default_rng(7)
SPEC = novolstm.load_spec("novolstm")
PARAMS = random_params(SPEC, 3, 4, RNG)
X = RNG.normal(size=(2, 5, 3))


def test_run_matches_reference_with_state():
    state = (RNG.normal(size=(2, 4)), RNG.normal(size=(2, 4)))
    ours, (h, c) = novolstm.run(SPEC, PARAMS, X, state)
    theirs, (rh, rc) = reference.run("novolstm", PARAMS, X, state)
    assert_close(ours, theirs)
    assert_close(h, rh)
    assert_close(c, rc)
    np.testing.assert_array_equal(ours[:, -1], h)


def test_masking_rule_state_carries_and_output_is_zero():
    mask = np.array([[True, True, False, True, False], [True, False, False, False, False]])
    outputs, (h, c) = novolstm.run(SPEC, PARAMS, X, mask=mask)
    assert (outputs[~mask] == 0).all()
    # Row 1 has one real step: its final state is the state after that step.
    one, (h1, c1) = novolstm.run(SPEC, PARAMS, X[1:, :1])
    np.testing.assert_allclose(h[1], h1[0], rtol=0, atol=1e-15)
    # A hole in the middle equals skipping that step.
    skipped, _ = novolstm.run(SPEC, PARAMS, X[:1, [0, 1, 3]])
    np.testing.assert_allclose(outputs[0, [0, 1, 3]], skipped[0], rtol=0, atol=1e-15)
    theirs, _ = reference.run("novolstm", PARAMS, X, mask=mask)
    assert_close(outputs, theirs)


def test_lengths_equal_the_right_padded_mask():
    lengths = np.array([3, 5])
    a, sa = novolstm.run(SPEC, PARAMS, X, lengths=lengths)
    b, sb = novolstm.run(SPEC, PARAMS, X, mask=np.arange(5)[None] < lengths[:, None])
    np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="mask or lengths, not both"):
        novolstm.run(SPEC, PARAMS, X, mask=np.ones((2, 5), bool), lengths=lengths)
    with pytest.raises(ValueError, match=r"lengths: expected values in \[0, 5\]"):
        novolstm.run(SPEC, PARAMS, X, lengths=np.array([3, 6]))


BAD_CALLS = {
    "rank": (dict(x=np.ones((5, 3))), ValueError, r"x: expected shape \(batch, time, input\)"),
    "input size": (dict(x=np.ones((2, 5, 4))), ValueError, r"params\['W_i'\]: expected shape \(4, 4\)"),
    "empty sequence": (dict(x=np.ones((2, 0, 3))), ValueError, "length 0"),
    "nan input": (
        dict(x=np.where(np.arange(30).reshape(2, 5, 3) == 7, np.nan, 1.0)),
        ValueError,
        r"x: non-finite value nan at index \(0, 2, 1\)",
    ),
    "inf state": (dict(state=(np.full((2, 4), np.inf), np.zeros((2, 4)))), ValueError, "state 'h': non-finite"),
    "state shape": (
        dict(state=(np.zeros((2, 3)), np.zeros((2, 4)))),
        ValueError,
        r"state 'h': expected shape \(2, 4\), got \(2, 3\)",
    ),
    "state count": (dict(state=(np.zeros((2, 4)),)), ValueError, "state: expected 2 arrays"),
    "missing param": (dict(params={k: v for k, v in PARAMS.items() if k != "U_s"}), ValueError, r"missing \['U_s'\]"),
    "mask shape": (dict(mask=np.ones((2, 4), bool)), ValueError, r"mask: expected a bool array of shape \(2, 5\)"),
    "mask dtype": (dict(mask=np.ones((2, 5))), ValueError, "mask: expected a bool array"),
    "string input": (dict(x=np.array([[["a"]]])), TypeError, "x: expected a float array"),
    "complex dtype": (dict(dtype="complex128"), TypeError, "dtype: expected float32 or float64"),
}


@pytest.mark.parametrize("case", sorted(BAD_CALLS))
def test_bad_input_is_refused_with_a_clear_message(case):
    overrides, error, message = BAD_CALLS[case]
    call = {"params": PARAMS, "x": X, **overrides}
    with pytest.raises(error, match=message):
        novolstm.run(SPEC, **call)


def test_unknown_backend_names_the_known_ones():
    with pytest.raises(ValueError, match="unknown backend 'tensorflow2'.*numpy"):
        novolstm.run(SPEC, PARAMS, X, backend="tensorflow2")


def test_float32_run_stays_float32_and_within_the_table():
    cast = {k: v.astype(np.float32) for k, v in PARAMS.items()}
    ours, _ = novolstm.run(SPEC, cast, X.astype(np.float32))
    assert ours.dtype == np.float32
    theirs, _ = reference.run("novolstm", PARAMS, X)
    assert_close(ours, theirs)


def test_init_params_is_seeded_backend_neutral_and_per_parameter():
    a = novolstm.init_params("novolstm", 3, 4, seed=0)
    b = novolstm.init_params("novolstm", 3, 4, seed=0)
    c = novolstm.init_params("novolstm", 3, 4, seed=1)
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert not np.array_equal(a["W_i"], c["W_i"])
    assert not np.array_equal(a["W_i"], a["W_f"])  # distinct per gate
    # Each parameter has its own stream: the LSTM's shared names draw the same numbers.
    lstm = novolstm.init_params("lstm", 3, 4, seed=0)
    assert all(np.array_equal(lstm[k], a[k]) for k in lstm)
    u = a["U_i"]
    np.testing.assert_allclose(u @ u.T, np.eye(4), atol=1e-12)  # orthogonal
    assert (a["b_f"] == 1).all() and (a["gamma_i"] == 1).all() and (a["beta_i"] == 0).all()
    assert novolstm.init_params("lstm", 3, 4, dtype="float32")["W_i"].dtype == np.float32
    generated = novolstm.load_generated("novolstm", "numpy").init_params(3, 4, 0)
    assert all(np.array_equal(generated[k], a[k]) for k in a)


@pytest.mark.parametrize("cell", novolstm.list_specs())
def test_generated_source_is_standalone_and_labelled(cell):
    spec = novolstm.load_spec(cell)
    source = novolstm.generate_source(spec, "numpy")
    assert "Generated, do not edit" in source and spec.hash in source
    imports = {}  # module -> the function importing it (None: the module level)
    tree = ast.parse(source)
    functions = [f for f in ast.walk(tree) if isinstance(f, ast.FunctionDef)]
    for scope, nodes in [(None, tree.body)] + [(f.name, list(ast.walk(f))) for f in functions]:
        for node in nodes:
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            names += [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            for name in names:
                imports.setdefault(name.split(".")[0], scope)
    # novolstm only where the compiled step loop is asked for (it runs where novolstm is loaded already)
    assert imports == {"math": None, "numpy": None, "sys": None, "warnings": None, "zlib": None} | {
        "novolstm": "_compiled_forward"
    }


def test_exported_source_runs_without_novolstm(tmp_path):
    path = tmp_path / "my_cell.py"
    assert main(["generate", "novolstm", "--backend", "numpy", "-o", str(path)]) == 0
    script = (
        "import sys, numpy as np; sys.path.insert(0, sys.argv[1]); import my_cell; "
        "cell = my_cell.Cell(3, 4, seed=0); out, _ = cell.sequence(np.ones((1, 2, 3))); "
        "assert 'novolstm' not in sys.modules; print(out.shape)"
    )
    result = subprocess.run(
        [sys.executable, "-I", "-c", script, str(tmp_path)], capture_output=True, text=True, cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "(1, 2, 4)"


def test_a_users_spec_gets_everything_a_builtin_gets(tmp_path):
    """A coupled input-forget gate LSTM, written by a user, runs and differentiates."""
    path = tmp_path / "cifg.toml"
    path.write_text(
        """spec_version = 1
name = "cifg"
description = "LSTM whose input gate is 1 - f."
input = "x"
output = "h_next"

[state]
h = "h_next"
c = "c_next"

[params]
W_f = { shape = ["input", "units"], init = "glorot_uniform" }
U_f = { shape = ["units", "units"], init = "orthogonal" }
b_f = { shape = ["units"], init = "ones" }
W_g = { shape = ["input", "units"], init = "glorot_uniform" }
U_g = { shape = ["units", "units"], init = "orthogonal" }
b_g = { shape = ["units"], init = "zeros" }

[equations]
f = "sigmoid(x @ W_f + h @ U_f + b_f)"
g = "tanh(x @ W_g + h @ U_g + b_g)"
c_next = "f * c + (1 - f) * g"
h_next = "tanh(c_next)"
"""
    )
    spec = novolstm.load_spec(path)
    params = novolstm.init_params(path, 2, 3, seed=0)
    x = RNG.normal(size=(2, 4, 2))
    outputs, (h, c) = novolstm.run(path, params, x)
    # By hand, from the equations.
    sig = lambda z: 1 / (1 + np.exp(-z))  # noqa: E731
    hh, cc = np.zeros((2, 3)), np.zeros((2, 3))
    for t in range(4):
        f = sig(x[:, t] @ params["W_f"] + hh @ params["U_f"] + params["b_f"])
        g = np.tanh(x[:, t] @ params["W_g"] + hh @ params["U_g"] + params["b_g"])
        cc = f * cc + (1 - f) * g
        hh = np.tanh(cc)
        np.testing.assert_allclose(outputs[:, t], hh, rtol=0, atol=1e-14)
    cell = novolstm.get_cell("numpy", spec)(2, 3)
    _, _, vjp = cell.sequence_with_vjp(x)
    assert set(vjp(np.ones((2, 4, 3)))[2]) == set(spec.param_names)


def test_cli_list_show_check(capsys):
    assert main(["list"]) == 0
    assert "novolstm_reference" in capsys.readouterr().out
    assert main(["show", "novolstm"]) == 0
    shown = capsys.readouterr().out
    assert "layer_norm(sigmoid(x @ W_i + h @ U_i + b_i), gamma_i, beta_i) * softmax(" in shown
    assert "epsilon 0.001" in shown
    assert main(["check", "--backend", "numpy", "--cell", "gru"]) == 0
    table = capsys.readouterr().out
    assert "gru" in table and "2 of 2 within tolerance" in table
    assert main(["show", "nope"]) == 2
    assert "no built-in spec" in capsys.readouterr().err


def test_python_dash_m_runs_the_cli(tmp_path):
    # From outside the checkout: `-m` puts the working directory first on sys.path.
    result = subprocess.run([sys.executable, "-m", "novolstm", "list"], capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 0 and "lstm" in result.stdout


def fresh_spec(tag):
    """A spec no test has asked for yet (its description differs), so no cache holds it."""
    import uuid

    return novolstm.loads_spec(
        novolstm.load_spec("novolstm")
        .dumps()
        .replace('description = "', f'description = "{tag} {uuid.uuid4().hex}: ', 1)
    )


def test_eight_threads_get_one_numpy_class():
    spec = fresh_spec("threads")
    sources = concurrent_calls(lambda: novolstm.generate_source(spec, "numpy"))
    assert all(s is sources[0] for s in sources)
    cells = concurrent_calls(lambda: novolstm.get_cell("numpy", spec))
    assert all(c is cells[0] for c in cells)
    spec = fresh_spec("threads")  # modules, not only sources, asked for cold
    modules = concurrent_calls(lambda: novolstm.load_generated(spec, "numpy"))
    assert all(m is modules[0] for m in modules)
    assert modules[0].Cell is novolstm.get_cell("numpy", spec)


def test_a_cell_class_stays_the_same_object_however_many_specs_load_after_it():
    # Pickles and the named classes look generated classes up by module name: a bounded cache that
    # evicted a built-in cell after 64 others made get_cell return a second, different class.
    first = novolstm.get_cell("numpy", "lstm")
    text = novolstm.load_spec("lstm").dumps()
    for k in range(80):
        novolstm.get_cell("numpy", novolstm.loads_spec(text.replace('name = "lstm"', f'name = "lstm{k}"')))
    assert novolstm.get_cell("numpy", "lstm") is first
