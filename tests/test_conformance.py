"""The conformance kit and the golden vectors: correct implementations pass, each known
mistake fails, and the diagnosis names it."""

from __future__ import annotations

import json

import numpy as np
import pytest

import novolstm
from novolstm import conformance
from novolstm.cli import main
from novolstm.conformance.golden import load_golden, make_golden


def numpy_impl(spec):
    return lambda p, x, s, m: novolstm.run(spec, p, x, s, mask=m)


@pytest.mark.parametrize("cell", novolstm.list_specs())
def test_golden_vectors_match_the_current_spec(cell):
    meta, cases = load_golden(cell)
    assert meta["spec_hash"] == novolstm.load_spec(cell).hash, (
        "regenerate with: python -m novolstm.conformance spec/golden"
    )
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


def handwritten_novolstm(mistake=None):
    """NovoLSTM as a port would write it in NumPy from the design document, outside novolstm,
    optionally with one of the mistakes of conftest.HANDWRITTEN_MISTAKES."""

    def fn(p, x, state, mask):
        dtype = x.dtype
        if mistake == "lower precision":  # computes one precision below what it was handed
            dtype = np.float32 if x.dtype == np.float64 else np.float16
        p = {k: np.asarray(v, dtype) for k, v in p.items()}
        if mistake == "gate order":
            for kind in "WUb":
                p[f"{kind}_i"], p[f"{kind}_f"] = p[f"{kind}_f"], p[f"{kind}_i"]
        eps = {"torch epsilon": 1e-5, "flax epsilon": 1e-6}.get(mistake, 1e-3)
        mask = np.asarray(mask)
        if mistake == "mask read as lengths":
            mask = np.arange(x.shape[1])[None] < mask.sum(axis=1)[:, None]
        h, c = (np.asarray(s, dtype) for s in state)

        def sigmoid(z):
            if mistake == "keras 2 hard sigmoid":
                return np.clip(0.2 * z + 0.5, 0, 1)
            if mistake == "keras 3 hard sigmoid":
                return np.clip(z + 3, 0, 6) / 6
            return 0.5 * (1 + np.tanh(0.5 * z))

        def softmax(z):
            if mistake == "softmax over the batch":
                e = np.exp(z - z.max(axis=0))
                return e / e.sum(axis=0)
            e = np.exp(z) if mistake == "softmax without max" else np.exp(z - z.max(axis=-1, keepdims=True))
            return e / e.sum(axis=-1, keepdims=True)

        def layer_norm(z):
            centred = z - z.mean(axis=-1, keepdims=True)
            n = z.shape[-1] - (mistake == "sample variance")
            var = (centred**2).sum(axis=-1, keepdims=True) / n
            return centred / np.sqrt(var + eps) * p["gamma_i"] + p["beta_i"]

        def gate(name, x_t, h, recurrent=True):
            z = x_t @ p[f"W_{name}"]
            if not (mistake == "bias dropped" and name == "o"):
                z = z + p[f"b_{name}"]
            if recurrent and not (mistake == "recurrent term missing" and name == "f"):
                z = z + h @ p[f"U_{name}"]
            return z

        outputs = []
        for t in range(x.shape[1]):
            x_t = x[:, t].astype(dtype)
            if mistake == "the other NovoLSTM":
                i = layer_norm(sigmoid(gate("i", x_t, h)) * softmax(gate("s", x_t, h, recurrent=False)))
            else:
                i = layer_norm(sigmoid(gate("i", x_t, h))) * softmax(gate("s", x_t, h))
            f, g, o = sigmoid(gate("f", x_t, h)), np.tanh(gate("g", x_t, h)), sigmoid(gate("o", x_t, h))
            c_new = i * c + f * g if mistake == "roles swapped in the state update" else f * c + i * g
            h_new = o * np.tanh(c if mistake == "output reads the old state" else c_new)
            m = mask[:, t, None]
            if mistake == "masked steps update the state":
                h, c = h_new, c_new
            else:
                h, c = np.where(m, h_new, h), np.where(m, c_new, c)
            outputs.append(np.where(m, h_new, h if mistake == "masked steps output h" else 0))
        final = (c, h) if mistake == "state order" else (h, c)
        return np.stack(outputs, 1).astype(x.dtype), tuple(s.astype(x.dtype) for s in final)

    def quiet(*args):
        with np.errstate(all="ignore"):  # a port with these mistakes overflows; a user's would run on
            return fn(*args)

    return quiet


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_a_correct_handwritten_numpy_novolstm_conforms(dtype):
    report = conformance.check(handwritten_novolstm(), "novolstm", dtype=dtype)
    assert report.passed, report.format()


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_each_handwritten_numpy_mistake_is_caught_and_diagnosed(handwritten_mistake, expected_diagnosis, dtype):
    report = conformance.check(handwritten_novolstm(handwritten_mistake), "novolstm", dtype=dtype)
    assert not report.passed
    assert all(r.first_divergence for r in report.results if not r.passed)
    assert expected_diagnosis(dtype) in (report.likely_mistake or ""), report.format()
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


def damped_lstm_text():
    """A user's spec, not built in: the standard LSTM whose output is damped by a parameter-only
    factor, as in issue 13 but inside the tanh: outside it, a large b_o amplifies h, the saturated
    case turns chaotic and float32 rounding alone moves the outputs past the tolerance."""
    from importlib import resources

    text = resources.files("novolstm.spec").joinpath("lstm.toml").read_text()
    text = text.replace('name = "lstm"', 'name = "damped_lstm"')
    return text.replace('h_next = "o * tanh(c_next)"', 'h_next = "o * tanh(c_next * (1 - b_o))"')


def handwritten_damped_lstm(damped=True):
    """The damped LSTM written by hand in NumPy, outside novolstm; damped=False is a mutant."""

    def fn(p, x, state, mask):
        sigmoid = lambda z: 0.5 * (1 + np.tanh(0.5 * z))  # noqa: E731
        h, c = state
        outputs = []
        for t in range(x.shape[1]):
            gate = lambda n: x[:, t] @ p[f"W_{n}"] + h @ p[f"U_{n}"] + p[f"b_{n}"]  # noqa: E731
            i, f, g, o = sigmoid(gate("i")), sigmoid(gate("f")), np.tanh(gate("g")), sigmoid(gate("o"))
            c_new = f * c + i * g
            h_new = o * np.tanh(c_new * (1 - p["b_o"]) if damped else c_new)
            m = mask[:, t, None]
            h, c = np.where(m, h_new, h), np.where(m, c_new, c)
            outputs.append(np.where(m, h_new, 0))
        return np.stack(outputs, 1), (h, c)

    return fn


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_a_users_spec_conforms_when_right_and_fails_when_wrong(dtype):
    spec = novolstm.loads_spec(damped_lstm_text(), source="<damped_lstm>")
    assert spec.name not in novolstm.list_specs()
    report = conformance.check(handwritten_damped_lstm(), spec, dtype=dtype)
    assert report.passed, report.format()
    report = conformance.check(handwritten_damped_lstm(damped=False), spec, dtype=dtype)
    assert not report.passed
    assert all(r.first_divergence for r in report.results if not r.passed)


def test_a_users_spec_gets_the_stress_cases_with_the_interpreter_as_reference():
    from novolstm import interpret

    spec = novolstm.loads_spec(damped_lstm_text())
    cases = conformance.golden_cases(spec)
    assert {c.name for c in cases} == {c.name for c in load_golden("lstm")[1]}
    for golden in cases:  # expected values: the interpreter, which shares nothing with code generation
        c = golden.case
        outputs, final = interpret.run(spec, c.params, c.x, c.state, mask=c.mask)
        np.testing.assert_array_equal(golden.outputs, outputs)


def test_a_users_spec_is_checked_against_the_interpreter(tmp_path):
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


def every_golden_case():
    for cell in novolstm.list_specs():
        yield cell, load_golden(cell)[1]
    yield "damped_lstm", conformance.golden_cases(novolstm.loads_spec(damped_lstm_text()))


@pytest.mark.parametrize("cell, cases", list(every_golden_case()), ids=lambda v: v if isinstance(v, str) else "")
def test_every_spec_has_a_real_hole_and_a_length_0_row(cell, cases):
    mask = next(c.case.mask for c in cases if c.name == "padding")
    real_after_hole = [
        (~mask[b, :t]).any() and mask[b, t:].any() for b in range(mask.shape[0]) for t in range(mask.shape[1])
    ]
    assert any(real_after_hole), "no masked step followed by a real one in the same row"
    assert (~mask).all(axis=1).any(), "no row of length 0"
    read_as_lengths = np.arange(mask.shape[1])[None] < mask.sum(axis=1)[:, None]
    assert (read_as_lengths != mask).any()
    for c in cases:  # every other case is unmasked
        assert c.name == "padding" or c.case.mask.all()


@pytest.mark.parametrize("cell", ["novolstm", "novolstm_reference"])
def test_the_overflow_case_drives_softmax_logits_past_float64s_exp_range(cell):
    case = next(c.case for c in load_golden(cell)[1] if c.name == "softmax_overflow")
    p = case.params
    logits = case.x[:, 0] @ p["W_s"] + p["b_s"] + (case.state[0] @ p["U_s"] if "U_s" in p else 0)
    assert logits.max(axis=-1).min() > np.log(np.finfo(np.float64).max)  # every row overflows exp
    top_two = np.sort(logits, axis=-1)[:, -2:]
    assert (top_two[:, 1] - top_two[:, 0]).min() > 10  # one-hot: a correct float32 port is unaffected


def test_low_variance_scales_the_projections_not_gamma_and_beta():
    case = next(c.case for c in load_golden("novolstm")[1] if c.name == "low_variance")
    for name, value in case.params.items():
        if name.startswith(("gamma", "beta")):
            assert np.abs(value).max() > 0.1, name
        else:
            assert np.abs(value).max() < 0.01, name


def test_a_nan_final_state_fails():
    def nan_state(p, x, s, m):
        out, final = novolstm.run("lstm", p, x, s, mask=m)
        return out, tuple(np.full_like(f, np.nan) for f in final)

    report = conformance.check(nan_state, "lstm")
    assert not report.passed and all(not r.passed for r in report.results)
    assert all("final state 'h'" in r.first_divergence for r in report.results)
    assert "DOES NOT CONFORM" in report.format() and "max |dev| inf" in report.format()


def test_a_nan_or_infinite_output_fails_even_in_check_results():
    arrays = {}
    for golden in load_golden("gru")[1]:
        arrays[f"{golden.name}.outputs"] = golden.outputs.copy()
        arrays[f"{golden.name}.state.h"] = golden.state[0].copy()
    assert conformance.check_results("gru", arrays).passed
    arrays["typical.outputs"][0, 3, 1] = np.nan
    arrays["long.state.h"][1, 2] = np.inf
    report = conformance.check_results("gru", arrays)
    assert {r.name for r in report.results if not r.passed} == {"typical", "long"}
    typical = next(r for r in report.results if r.name == "typical")
    assert "outputs at step 3 (batch 0, unit 1): got nan" in typical.first_divergence


def test_cli_round_trip_for_implementations_outside_python(tmp_path, capsys):
    assert main(["conformance", "gru", "--export", str(tmp_path)]) == 0
    meta = json.loads((tmp_path / "gru.json").read_text())
    data = np.load(tmp_path / "gru.npz")
    results = {}
    for case in meta["cases"]:  # an "outside" implementation: here, the reference itself in float32
        params = {k.split(".", 2)[2]: data[k] for k in data.files if k.startswith(f"{case}.param.")}
        out, (h,) = novolstm.reference.run(
            "gru", params, data[f"{case}.x"], (data[f"{case}.state0.h"],), mask=data[f"{case}.mask"]
        )
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


def test_novolstm_check_holds_a_users_spec_to_the_interpreter(tmp_path):
    from novolstm.selfcheck import check

    path = tmp_path / "damped_lstm.toml"
    path.write_text(damped_lstm_text())
    rows = list(check(cells=[path], backends=["numpy"], dtypes=("float64", "float32"), steps=6))
    assert [r.cell for r in rows] == ["damped_lstm", "damped_lstm"] and all(r.ok for r in rows), rows


@pytest.mark.parametrize("cell", ["novolstm", "gru", "peephole_lstm"])
def test_the_golden_cases_show_every_mistake_the_kit_knows_even_in_float32(cell):
    """No mistake model is invisible: in some case its outputs leave the float32 tolerance."""
    from novolstm.conformance.mistakes import catalogue
    from novolstm.testing import tolerance

    cases = load_golden(cell)[1]
    for mistake in catalogue(novolstm.load_spec(cell)):

        def visible(golden):
            c = golden.case
            outputs, _ = mistake.run(c.params, c.x, c.state, c.mask)
            with np.errstate(invalid="ignore"):
                beyond = np.abs(outputs - golden.outputs) > tolerance("float32", c.steps).bound(golden.outputs)
            return bool((beyond | ~np.isfinite(outputs)).any())

        assert any(visible(g) for g in cases), mistake.label
