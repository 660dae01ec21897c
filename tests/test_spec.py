"""The spec language: built-ins, round trips, the JSON Schema, and hostile specs."""

from __future__ import annotations

import json
import sys
from importlib import resources

import pytest

import novolstm
from novolstm import SpecError
from novolstm.spec_loader import loads_spec, parse_spec

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

BUILTINS = novolstm.list_specs()
LSTM_TEXT = resources.files("novolstm.spec").joinpath("lstm.toml").read_text()


def schema():
    return json.loads(resources.files("novolstm.spec").joinpath("spec.schema.json").read_text())


def test_builtins_are_the_five_cells():
    assert set(BUILTINS) >= {"lstm", "novolstm", "novolstm_reference", "gru", "peephole_lstm"}


@pytest.mark.parametrize("name", BUILTINS)
def test_round_trip_parse_dump(name):
    spec = novolstm.load_spec(name)
    again = loads_spec(spec.dumps())
    assert again == spec
    assert again.hash == spec.hash
    assert again.dumps() == spec.dumps()


@pytest.mark.parametrize("name", BUILTINS)
def test_builtins_and_their_canonical_form_follow_the_json_schema(name):
    jsonschema = pytest.importorskip("jsonschema")  # a test extra; CI installs it
    validator = jsonschema.Draft202012Validator(schema())
    raw = tomllib.loads(resources.files("novolstm.spec").joinpath(f"{name}.toml").read_text())
    validator.validate(raw)
    validator.validate(novolstm.load_spec(name).to_dict())


def test_schema_rejects_what_the_loader_rejects():
    jsonschema = pytest.importorskip("jsonschema")
    validator = jsonschema.Draft202012Validator(schema())
    data = tomllib.loads(LSTM_TEXT)
    data["extra"] = 1
    assert not validator.is_valid(data)
    data = tomllib.loads(LSTM_TEXT)
    data["params"]["W_i"]["shape"] = ["units", "input"]
    assert not validator.is_valid(data)


def test_parameter_shapes_follow_the_canonical_convention():
    shapes = novolstm.load_spec("novolstm").parameter_shapes(input_size=3, units=5)
    assert shapes["W_i"] == (3, 5) and shapes["U_i"] == (5, 5) and shapes["b_i"] == (5,)
    assert shapes["W_s"] == (3, 5) and shapes["U_s"] == (5, 5) and shapes["gamma_i"] == (5,)
    assert "U_s" not in novolstm.load_spec("novolstm_reference").parameter_shapes(3, 5)
    with pytest.raises(ValueError, match="units must be a positive int"):
        novolstm.load_spec("lstm").parameter_shapes(3, 0)


def test_numerics_are_pinned():
    assert novolstm.load_spec("novolstm").numerics.layer_norm_epsilon == 1e-3
    assert novolstm.load_spec("novolstm_reference").numerics.layer_norm_epsilon == 1e-3
    assert novolstm.load_spec("novolstm").numerics.layer_norm_variance == "population"


def test_spec_from_a_path(tmp_path):
    path = tmp_path / "mine.toml"
    path.write_text(LSTM_TEXT.replace('name = "lstm"', 'name = "mine"'))
    spec = novolstm.load_spec(path)
    assert spec.name == "mine" and spec.source == str(path)
    assert novolstm.load_spec(str(path)) == spec


def test_unknown_builtin_lists_the_known_ones():
    with pytest.raises(SpecError, match="no built-in spec of that name.*novolstm"):
        novolstm.load_spec("novolstm2")


def _mutate(old: str, new: str) -> str:
    assert old in LSTM_TEXT, old
    return LSTM_TEXT.replace(old, new)


BAD_SPECS = {
    "unknown top-level key": ("extra = 1\n" + LSTM_TEXT, "unknown key 'extra'"),
    "bad version": (_mutate("spec_version = 1", "spec_version = 2"), "spec_version: expected 1"),
    "missing key": (_mutate('output = "h_next"\n', ""), "missing key 'output'"),
    "undeclared name": (_mutate('g = "tanh(x @ W_g', 'g = "tanh(x @ W_q'), "equations.g: undeclared name 'W_q'"),
    "unused parameter": (_mutate('[equations]', 'W_extra = { shape = ["input", "units"], init = "zeros" }\n\n[equations]'), "params.W_extra: declared but never used"),
    "unused equation": (_mutate('[equations]', '[equations]\nspare = "tanh(h)"'), "equations.spare: unused"),
    "shape conflict": (_mutate("h @ U_g", "h @ W_g"), "W_g has shape \\(input, units\\) but its left operand has units-wide rows"),
    "matrix used elementwise": (_mutate('c_next = "f * c + i * g"', 'c_next = "f * c + i * g + W_g"'), "needs units-wide operands"),
    "input used elementwise": (_mutate('c_next = "f * c + i * g"', 'c_next = "f * c + i * x"'), "needs units-wide operands"),
    "unknown function": (_mutate("tanh(c_next)", "erf(c_next)"), "unknown function 'erf'"),
    "cycle": (_mutate('f = "sigmoid(x @ W_f + h @ U_f + b_f)"', 'f = "sigmoid(x @ W_f + h @ U_f + b_f) * o"\no = "sigmoid(x @ W_o + h @ U_o + b_o) * f"').replace('o = "sigmoid(x @ W_o + h @ U_o + b_o)"\n', ""), "cycle"),
    "layer_norm without epsilon": (_mutate('g = "tanh(x @ W_g + h @ U_g + b_g)"', 'g = "layer_norm(tanh(x @ W_g + h @ U_g + b_g), b_g, b_i)"'), "layer_norm_epsilon: required"),
    "state is not a row": (_mutate('c = "c_next"', 'c = "b_f"'), "state.c: 'b_f' is not an equation"),
    "bad parameter shape": (_mutate('W_i = { shape = ["input", "units"]', 'W_i = { shape = ["units", "input"]'), "params.W_i.shape"),
    "unknown initializer": (_mutate('init = "orthogonal" }', 'init = "he_normal" }'), "unknown initializer 'he_normal'"),
    "not TOML": ("name = ", "not valid TOML"),
    "name is not an identifier": (_mutate('name = "lstm"', 'name = "lstm; rm -rf /"'), "name: expected a plain ASCII identifier"),
    "duplicate name": (_mutate('[equations]', '[equations]\nh = "h_next"'), "equations.h: name already declared in state"),
}


@pytest.mark.parametrize("case", sorted(BAD_SPECS))
def test_bad_specs_name_the_file_the_key_and_what_was_expected(case):
    text, message = BAD_SPECS[case]
    with pytest.raises(SpecError, match=message) as info:
        loads_spec(text, source="bad.toml")
    assert str(info.value).startswith("bad.toml: ")


HOSTILE_EXPRESSIONS = [
    "__import__('os').system('touch {canary}')",
    "open('{canary}', 'w')",
    "h.__class__",
    "h[0]",
    "(lambda: h)()",
    "[h for h in h]",
    "tanh(h) if h else h",
    "eval('1')",
    "sigmoid(x=h)",
    "'{canary}'",
    "h ** 2",
    "h // h",
    "tanh(" * 80 + "h" + ")" * 80,
    "x" * 3000,
]


@pytest.mark.parametrize("expression", HOSTILE_EXPRESSIONS)
def test_hostile_expressions_are_rejected_without_running(expression, tmp_path):
    canary = tmp_path / "pwned"
    text = _mutate('c_next = "f * c + i * g"', f"c_next = {json.dumps(expression.format(canary=canary))}")
    with pytest.raises(SpecError, match="equations.c_next"):
        loads_spec(text)
    assert not canary.exists()


def test_hostile_names_cannot_reach_generated_source():
    data = tomllib.loads(LSTM_TEXT)
    data["params"]['W_i"]; import os; x = ["'] = data["params"].pop("W_i")
    with pytest.raises(SpecError, match="params: expected a plain ASCII identifier"):
        parse_spec(data)


def test_hostile_description_stays_a_docstring(tmp_path):
    canary = tmp_path / "pwned"
    payload = f'"""\nimport pathlib; pathlib.Path({str(canary)!r}).touch()\n"""\\'
    text = LSTM_TEXT.replace('description = "', "description = " + json.dumps(payload)[:-1], 1)
    spec = loads_spec(text)
    assert spec.description.startswith('"""')
    module = novolstm.load_generated(spec, "numpy")
    assert not canary.exists()
    assert payload in module.__doc__


def test_expression_round_trip_keeps_precedence():
    from novolstm.expr import format_expression, parse_expression

    for text in ["a - (b - c)", "(a + b) * c", "-(a * b) @ W", "a * b + c * d", "(1 - z) * n + z * h"]:
        tree = parse_expression(text)
        assert parse_expression(format_expression(tree)) == tree


@pytest.mark.parametrize("emitter_name", novolstm.list_backends())
def test_no_emitter_lets_the_description_out_of_its_docstring(emitter_name):
    """Generation needs no framework, so every emitter is checked here, installed or not."""
    import ast

    payload = '"""\nimport os\nos.system("touch pwned")\n"""\\'
    spec = loads_spec(LSTM_TEXT.replace('description = "', "description = " + json.dumps(payload)[:-1], 1))
    tree = ast.parse(novolstm.generate_source(spec, emitter_name))
    assert payload in ast.get_docstring(tree, clean=False)
    assert not any(isinstance(node, ast.Expr) and isinstance(node.value, ast.Call) for node in tree.body)
