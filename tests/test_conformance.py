"""The conformance kit and the golden vectors: correct implementations pass, each known
mistake fails, and the diagnosis names it."""

from __future__ import annotations

import json
import types

import numpy as np
import pytest

import novolstm
from novolstm import conformance
from novolstm.cli import main
from novolstm.golden import load_golden, make_golden

SPEC = novolstm.load_spec("novolstm")


def numpy_impl(spec):
    return lambda p, x, s, m: novolstm.run(spec, p, x, s, mask=m)


@pytest.mark.parametrize("cell", novolstm.list_specs())
def test_golden_vectors_match_the_current_spec(cell):
    meta, cases = load_golden(cell)
    assert meta["spec_hash"] == novolstm.load_spec(cell).hash, "regenerate with: python -m novolstm.golden spec/golden"
    fresh_meta, fresh = make_golden(cell)
    assert fresh_meta == meta
    shipped = {f"{c.name}.outputs": c.outputs for c in cases}
    for key, value in shipped.items():
        np.testing.assert_array_equal(fresh[key], value)


@pytest.mark.parametrize("cell", novolstm.list_specs())
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_the_numpy_backend_conforms(cell, dtype):
    report = conformance.check(numpy_impl(novolstm.load_spec(cell)), cell, dtype=dtype)
    assert report.passed, report.format()
    assert {r.name for r in report.results} >= {"typical", "low_variance", "saturated", "long", "padding"}


def swap_gates(p, a="i", b="f"):
    q = dict(p)
    for kind in "WUb":
        q[f"{kind}_{a}"], q[f"{kind}_{b}"] = p[f"{kind}_{b}"], p[f"{kind}_{a}"]
    return q


def mutant_module(old, new, spec="novolstm"):
    source = novolstm.generate_source(spec, "numpy")
    assert old in source
    module = types.ModuleType("mutant")
    exec(compile(source.replace(old, new), "<mutant>", "exec"), module.__dict__)
    return lambda p, x, s, m: module.forward(p, x, s, m)[:2]


MUTANTS = {
    "two gates swapped": (lambda p, x, s, m: novolstm.run(SPEC, swap_gates(p), x, s, mask=m), "gates 'f' and 'i' swapped"),
    "LayerNorm epsilon 1e-5": (
        numpy_impl(novolstm.loads_spec(SPEC.dumps().replace("layer_norm_epsilon = 0.001", "layer_norm_epsilon = 1e-05"))),
        "LayerNorm epsilon 1e-05 (torch's default) instead of 0.001",
    ),
    "softmax over the wrong axis": (
        mutant_module("return e / e.sum(axis=-1, keepdims=True)", "return e / e.sum(axis=0, keepdims=True)"),
        "softmax over the batch axis",
    ),
    "design-document cell confused with the reference-code cell": (
        lambda p, x, s, m: novolstm.run("novolstm_reference", {k: v for k, v in p.items() if k != "U_s"}, x, s, mask=m),
        "computes the 'novolstm_reference' cell instead",
    ),
    "a dropped bias": (lambda p, x, s, m: novolstm.run(SPEC, {**p, "b_o": 0 * p["b_o"]}, x, s, mask=m), "bias b_o dropped"),
}


@pytest.mark.parametrize("mutant", sorted(MUTANTS))
def test_each_mutant_fails_and_is_diagnosed(mutant):
    fn, expected_diagnosis = MUTANTS[mutant]
    report = conformance.check(fn, SPEC)
    assert not report.passed
    failing = [r for r in report.results if not r.passed]
    assert all(r.first_divergence for r in failing)
    diagnoses = {d for r in failing for d in r.diagnosis}
    assert any(expected_diagnosis in d for d in diagnoses), report.format()
    assert "DOES NOT CONFORM" in report.format()


def test_a_crashing_implementation_fails_with_its_reason():
    def broken(p, x, s, m):
        raise RuntimeError("no GPU")

    report = conformance.check(broken, "lstm")
    assert not report.passed and "raised RuntimeError: no GPU" in report.results[0].first_divergence


def test_state_order_swapped_is_diagnosed():
    def flipped(p, x, s, m):
        out, (h, c) = novolstm.run("lstm", p, x, s, mask=m)
        return out, (c, h)

    report = conformance.check(flipped, "lstm")
    assert not report.passed
    assert any("order ('c', 'h')" in d for r in report.results for d in r.diagnosis)


def test_a_users_spec_is_checked_against_its_generated_cell(tmp_path):
    path = tmp_path / "tanh_rnn.toml"
    path.write_text(
        'spec_version = 1\nname = "tanh_rnn"\ndescription = "Elman RNN"\ninput = "x"\noutput = "h_next"\n'
        '[state]\nh = "h_next"\n[params]\nW_h = { shape = ["input", "units"], init = "glorot_uniform" }\n'
        'U_h = { shape = ["units", "units"], init = "orthogonal" }\nb_h = { shape = ["units"], init = "zeros" }\n'
        '[equations]\nh_next = "tanh(x @ W_h + h @ U_h + b_h)"\n'
    )

    def by_hand(p, x, s, m):
        h, outs = s[0], []
        for t in range(x.shape[1]):
            new = np.tanh(x[:, t] @ p["W_h"] + h @ p["U_h"] + p["b_h"])
            h = np.where(m[:, t, None], new, h)
            outs.append(np.where(m[:, t, None], new, 0.0))
        return np.stack(outs, 1), (h,)

    assert conformance.check(by_hand, path).passed
    assert not conformance.check(lambda p, x, s, m: by_hand({**p, "b_h": 0 * p["b_h"]}, x, s, m), path).passed


def test_cli_round_trip_for_implementations_outside_python(tmp_path, capsys):
    assert main(["conformance", "gru", "--export", str(tmp_path)]) == 0
    meta = json.loads((tmp_path / "gru.json").read_text())
    data = np.load(tmp_path / "gru.npz")
    results = {}
    for case in meta["cases"]:  # an "outside" implementation: here, the reference itself in float32
        params = {k.split(".", 2)[2]: data[k] for k in data.files if k.startswith(f"{case}.param.")}
        out, (h,) = novolstm.reference.run("gru", params, data[f"{case}.x"], (data[f"{case}.state0.h"],), mask=data[f"{case}.mask"])
        results[f"{case}.outputs"] = out.astype(np.float32)
        results[f"{case}.state.h"] = h.astype(np.float32)
    np.savez(tmp_path / "theirs.npz", **results)
    capsys.readouterr()
    assert main(["conformance", "gru", "--results", str(tmp_path / "theirs.npz"), "--dtype", "float32"]) == 0
    assert "CONFORMS" in capsys.readouterr().out
    results["typical.outputs"] = results["typical.outputs"] + 1e-3
    np.savez(tmp_path / "theirs.npz", **results)
    assert main(["conformance", "gru", "--results", str(tmp_path / "theirs.npz"), "--dtype", "float32"]) == 1
    assert "first divergence: outputs at step 0" in capsys.readouterr().out
