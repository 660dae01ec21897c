"""The spec language: built-ins, round trips, the JSON Schema, and hostile specs."""

from __future__ import annotations

import json
import sys
from importlib import resources

import pytest
from hypothesis import given, settings

import novolstm
from novolstm import SpecError
from novolstm.spec_loader import loads_spec, parse_spec
from novolstm.testing import spec_texts

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
    for change in (
        lambda d: d.update(description="an LSTM\x00"),
        lambda d: d["equations"].update(g=d["equations"]["g"] + "\u2028"),
        lambda d: d["params"]["b_o"].update(init={"name": "uniform", "limit": -1.0}),
        lambda d: d["params"]["b_o"].update(init={"name": "normal", "stddev": -1.0}),
        lambda d: d["state"].update({f"s{k}": "h_next" for k in range(16)}),
        lambda d: d.update(name="lstm\n"),
    ):
        data = tomllib.loads(LSTM_TEXT)
        change(data)
        assert not validator.is_valid(data)
        with pytest.raises(SpecError):
            parse_spec(data)
    data = tomllib.loads(LSTM_TEXT)
    data["description"] = "two\n\tparagraphs"
    assert validator.is_valid(data)


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


def test_class_name_names_the_classes_and_stays_out_of_the_hash():
    assert [novolstm.load_spec(n).class_name for n in ("novolstm", "lstm", "gru", "peephole_lstm")] == [
        "NovoLSTM",
        "LSTM",
        "GRU",
        "PeepholeLSTM",
    ]
    renamed = loads_spec(_mutate('class_name = "LSTM"', 'class_name = "MyLSTM"'))
    assert renamed.class_name == "MyLSTM" and renamed.hash == novolstm.load_spec("lstm").hash
    assert renamed != novolstm.load_spec("lstm") and loads_spec(renamed.dumps()) == renamed
    unnamed = loads_spec(_mutate('class_name = "LSTM"\n', "").replace('name = "lstm"', 'name = "my_peephole_lstm"'))
    assert unnamed.class_name == "MyPeepholeLstm"  # derived from the name when the spec gives none


def test_unknown_builtin_lists_the_known_ones():
    with pytest.raises(SpecError, match="no built-in spec of that name.*novolstm"):
        novolstm.load_spec("novolstm2")


def test_spec_text_given_to_load_spec_is_named_briefly():
    # A whole spec passed where a name is expected: the error shows its start, not all of it,
    # and points at the loader that reads text.
    with pytest.raises(SpecError, match="loads_spec") as info:
        novolstm.load_spec(LSTM_TEXT * 20)
    assert len(str(info.value)) < 600 and LSTM_TEXT[:40] not in str(info.value)[80:]


def _mutate(old: str, new: str) -> str:
    assert old in LSTM_TEXT, old
    return LSTM_TEXT.replace(old, new)


BAD_SPECS = {
    "unknown top-level key": ("extra = 1\n" + LSTM_TEXT, "unknown key 'extra'"),
    "bad version": (_mutate("spec_version = 1", "spec_version = 2"), "spec_version: expected 1"),
    "missing key": (_mutate('output = "h_next"\n', ""), "missing key 'output'"),
    "undeclared name": (_mutate('g = "tanh(x @ W_g', 'g = "tanh(x @ W_q'), "equations.g: undeclared name 'W_q'"),
    "unused parameter": (
        _mutate("[equations]", 'W_extra = { shape = ["input", "units"], init = "zeros" }\n\n[equations]'),
        "params.W_extra: declared but never used",
    ),
    "unused equation": (_mutate("[equations]", '[equations]\nspare = "tanh(h)"'), "equations.spare: unused"),
    "shape conflict": (
        _mutate("h @ U_g", "h @ W_g"),
        "W_g has shape \\(input, units\\) but its left operand has units-wide rows",
    ),
    "matrix used elementwise": (
        _mutate('c_next = "f * c + i * g"', 'c_next = "f * c + i * g + W_g"'),
        "needs units-wide operands",
    ),
    "input used elementwise": (
        _mutate('c_next = "f * c + i * g"', 'c_next = "f * c + i * x"'),
        "needs units-wide operands",
    ),
    "unknown function": (_mutate("tanh(c_next)", "erf(c_next)"), "unknown function 'erf'"),
    "cycle": (
        _mutate(
            'f = "sigmoid(x @ W_f + h @ U_f + b_f)"',
            'f = "sigmoid(x @ W_f + h @ U_f + b_f) * o"\no = "sigmoid(x @ W_o + h @ U_o + b_o) * f"',
        ).replace('o = "sigmoid(x @ W_o + h @ U_o + b_o)"\n', ""),
        "cycle",
    ),
    "layer_norm without epsilon": (
        _mutate('g = "tanh(x @ W_g + h @ U_g + b_g)"', 'g = "layer_norm(tanh(x @ W_g + h @ U_g + b_g), b_g, b_i)"'),
        "layer_norm_epsilon: required",
    ),
    "state is not a row": (_mutate('c = "c_next"', 'c = "b_f"'), "state.c: 'b_f' is not an equation"),
    "bad parameter shape": (
        _mutate('W_i = { shape = ["input", "units"]', 'W_i = { shape = ["units", "input"]'),
        "params.W_i.shape",
    ),
    "unknown initializer": (
        _mutate('init = "orthogonal" }', 'init = "he_normal" }'),
        "unknown initializer 'he_normal'",
    ),
    "not TOML": ("name = ", "not valid TOML"),
    "name is not an identifier": (
        _mutate('name = "lstm"', 'name = "lstm; rm -rf /"'),
        "name: expected a plain ASCII identifier",
    ),
    "class_name not CapWords": (
        _mutate('class_name = "LSTM"', 'class_name = "lstm_cell"'),
        "class_name: expected a CapWords",
    ),
    "class_name not a name": (
        _mutate('class_name = "LSTM"', 'class_name = "LSTM(); import os"'),
        "class_name: expected a CapWords",
    ),
    "duplicate name": (
        _mutate("[equations]", '[equations]\nh = "h_next"'),
        "equations.h: name already declared in state",
    ),
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
    # Everything after the module docstring is code (the spec's text reappears in string constants only).
    code = [node for statement in tree.body[1:] for node in ast.walk(statement)]
    assert not any(isinstance(n, ast.Call) and ast.unparse(n.func) == "os.system" for n in code)


# ---------------------------------------------------------------- names a generated cell would collide with


@pytest.mark.parametrize(
    "name",
    [
        "bias",
        "training",
        "forward",
        "dtype",
        "weights",
        "units",
        "call",
        "in_features",
        "np",
        "torch",
        "gemm",
        "outputs",
        "lambda",
        "L4_blocks",
    ],
)
def test_reserved_names_are_refused_naming_the_key(name):
    data = novolstm.load_spec("lstm").to_dict()
    data["params"][name] = data["params"].pop("b_o")
    data["equations"]["o"] = data["equations"]["o"].replace("b_o", name)
    with pytest.raises(SpecError, match=f"params: '{name}' is reserved"):
        parse_spec(data)
    data = novolstm.load_spec("lstm").to_dict()
    data["equations"] = {
        (name if k == "g" else k): v.replace("i * g", f"i * {name}") for k, v in data["equations"].items()
    }
    with pytest.raises(SpecError, match=f"equations: '{name}' is reserved"):
        parse_spec(data)
    data = novolstm.load_spec("lstm").to_dict()
    data["state"] = {name if k == "c" else k: v for k, v in data["state"].items()}
    with pytest.raises(SpecError, match=f"state: '{name}' is reserved"):
        parse_spec(data)
    data = novolstm.load_spec("lstm").to_dict()
    data["input"] = name
    with pytest.raises(SpecError, match=f"input: '{name}' is reserved"):
        parse_spec(data)


def test_builtin_cells_use_no_reserved_name():
    from novolstm.reserved import reserved_by

    for cell in BUILTINS:
        spec = novolstm.load_spec(cell)
        names = [spec.input, *spec.state_names, *spec.param_names, *(n for n, _ in spec.equations)]
        assert [n for n in names if reserved_by(n)] == []


def _renamed(cell, prefix):
    """The spec of ``cell`` with every name prefixed (to tell its names from generated ones)."""
    from novolstm.expr import Binary, Call, Name, Neg, format_expression, parse_expression

    def rename(e):
        if isinstance(e, Name):
            return Name(prefix + e.id)
        if isinstance(e, Binary):
            return Binary(e.op, rename(e.left), rename(e.right))
        if isinstance(e, Neg):
            return Neg(rename(e.arg))
        if isinstance(e, Call):
            return Call(e.fn, tuple(rename(a) for a in e.args))
        return e

    d = novolstm.load_spec(cell).to_dict()
    d["input"], d["output"] = prefix + d["input"], prefix + d["output"]
    d["state"] = {prefix + k: prefix + v for k, v in d["state"].items()}
    d["params"] = {prefix + k: v for k, v in d["params"].items()}
    d["equations"] = {prefix + k: format_expression(rename(parse_expression(v))) for k, v in d["equations"].items()}
    return parse_spec(d)


#: Prefixes the emitters put before a spec's names to make generated locals (v_h, g_c, gp_b_i, ...).
SPEC_NAME_PREFIXES = ("v_", "g_", "gp_", "gv_", "tp_", "gl_", "gseq_", "glin_", "seq_")


@pytest.mark.parametrize("emitter_name", novolstm.list_backends())
def test_generated_module_names_are_reserved(emitter_name):
    """Module-level names of every generated source, and every generated local that shares a
    prefix with a spec's names, are reserved (the compiler's temporaries aside: its name allocators
    already avoid the spec's names). Generation needs no framework: every emitter runs."""
    import ast
    import re

    from novolstm.reserved import unreserved

    top, prefixed = set(), set()
    for cell in BUILTINS:
        spec = _renamed(cell, "Q")
        tree = ast.parse(novolstm.generate_source(spec, emitter_name))
        for node in tree.body:
            if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
                top.add(node.name)
            elif isinstance(node, (ast.Import, ast.ImportFrom)):
                top.update(a.asname or a.name.split(".")[0] for a in node.names)
            else:  # a comprehension's targets are its own (they do not bind module names)
                inner = {id(t) for c in ast.walk(node) if isinstance(c, ast.comprehension) for t in ast.walk(c.target)}
                top.update(
                    n.id
                    for n in ast.walk(node)
                    if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store) and id(n) not in inner
                )
        for node in ast.walk(tree):
            name = getattr(node, "id", None) or getattr(node, "arg", None)
            if isinstance(name, str) and "Q" not in name:
                prefixed.update(name[len(p) :] for p in SPEC_NAME_PREFIXES if name.startswith(p))
    assert unreserved(top) == []
    # The compiler's temporaries: numbered ones (NameAllocator), the readable ones of
    # passes.readable_names (z_ifo, sigmoid_ifo, f_times_c, const_0_5) and the backward values of
    # autodiff (d_c_next, d_h_next_as_h, d_y_over_d_z); all avoid the spec's names.
    temporaries = re.compile(
        r"[a-zA-Z]+_?[0-9]+|z_\w+|(sigmoid|tanh|relu|softmax|neg|normalize_units)_\w+|\w+_times_\w+"
        r"|const_\w+|d_\w+"
    )
    # g_x, the input's cotangent, lives in functions that hold no state's cotangent g_<state>.
    assert unreserved(n for n in prefixed - {"x"} if not temporaries.fullmatch(n)) == []


def test_generated_numpy_class_attributes_are_reserved():
    from novolstm.reserved import unreserved

    for cell in BUILTINS:
        cls = novolstm.get_cell("numpy", cell)
        assert unreserved(dir(cls(input_size=3, units=2)), novolstm.load_spec(cell)) == []


# ---------------------------------------------------------------- identifiers, characters, numbers


@pytest.mark.parametrize("where", ["name", "param", "state", "equation", "builtin"])
def test_an_identifier_with_a_trailing_newline_is_refused(where):
    data = novolstm.load_spec("lstm").to_dict()
    if where == "builtin":
        with pytest.raises(SpecError, match="no built-in spec"):
            novolstm.load_spec("lstm\n")
        return
    if where == "name":
        data["name"] = "lstm\n"
    elif where == "param":
        data["params"]["b_o\n"] = data["params"].pop("b_o")
    elif where == "state":
        data["state"] = {"h": "h_next", "c\n": "c_next"}
    else:
        data["equations"]["g\n"] = data["equations"].pop("g")
    with pytest.raises(SpecError, match="expected a plain ASCII identifier|control character"):
        parse_spec(data)


@pytest.mark.parametrize("char", ["\x00", "\x1b", "\r", "\x7f", "\x85", "\u2028", "\u2029", "\u202e", "\u2066"])
@pytest.mark.parametrize("where", ["description", "equation", "init"])
def test_control_characters_are_refused_in_every_string(char, where):
    data = novolstm.load_spec("lstm").to_dict()
    if where == "description":
        data["description"] = f"an LSTM{char}with a control character"
        key = "description"
    elif where == "equation":
        data["equations"]["g"] = data["equations"]["g"] + char
        key = "equations.g"
    else:
        data["params"]["b_o"]["init"] = "zeros" + char
        key = "params.b_o.init"
    with pytest.raises(SpecError, match=f"{key}: contains the control character"):
        parse_spec(data)


def test_control_characters_are_refused_in_keys():
    data = novolstm.load_spec("lstm").to_dict()
    data["params"]["b_o\x00"] = data["params"].pop("b_o")
    with pytest.raises(SpecError, match="params \\(a key\\): contains the control character"):
        parse_spec(data)


def test_a_description_may_hold_newlines_and_tabs():
    data = novolstm.load_spec("lstm").to_dict()
    data["description"] = "first paragraph\n\n\tsecond paragraph"
    assert parse_spec(data).description == data["description"]


@pytest.mark.parametrize("literal", ["1" * 400, "-" + "9" * 320, "1e400", "1e309 * 0"])
def test_literals_outside_float_range_are_refused(literal):
    text = _mutate('c_next = "f * c + i * g"', f'c_next = "f * c + i * g * {literal}"')
    with pytest.raises(SpecError, match="equations.c_next: literal .* outside the float range"):
        loads_spec(text)


@pytest.mark.parametrize("product", ["(1e308 * 10)", "(-(1e200 * 1e200))", "(1e308 + 1e308)", "(1e308 * 2 * 3)"])
def test_literals_that_fold_past_float_range_are_refused(product):
    # Literal-only subexpressions fold to one float64 constant; an overflow would reach generated code.
    text = _mutate('c_next = "f * c + i * g"', f'c_next = "f * c + i * g * {product}"')
    with pytest.raises(SpecError, match="equations.c_next: .* overflows float64"):
        loads_spec(text)
    loads_spec(_mutate('c_next = "f * c + i * g"', 'c_next = "f * c + i * g * (1e300 * 10)"'))  # in range: loads


@pytest.mark.parametrize("init", [{"name": "uniform", "limit": -0.1}, {"name": "normal", "stddev": -1.0}])
def test_negative_initializer_limits_are_refused(init):
    data = novolstm.load_spec("lstm").to_dict()
    data["params"]["b_o"]["init"] = init
    arg = "limit" if "limit" in init else "stddev"
    with pytest.raises(SpecError, match=f"params.b_o.init.{arg}: expected a number >= 0"):
        parse_spec(data)


def test_initializer_arguments_outside_float_range_are_refused():
    data = novolstm.load_spec("lstm").to_dict()
    data["params"]["b_o"]["init"] = {"name": "constant", "value": 10**400}
    with pytest.raises(SpecError, match="params.b_o.init.value: expected a finite number"):
        parse_spec(data)


# ---------------------------------------------------------------- bounded cost


def _chain_spec(equations: int, expression: str = "tanh(e{prev} + b)") -> str:
    """A spec whose equations form one chain e0 <- e1 <- ... (each uses the one before)."""
    lines = ['e0 = "layer_norm(tanh(x @ W + h @ U + b), g, b)"']
    lines += [f'e{k} = "{expression.format(prev=k - 1)}"' for k in range(1, equations)]
    last = equations - 1
    return (
        f'spec_version = 1\nname = "chain"\ndescription = "adversarial"\ninput = "x"\noutput = "e{last}"\n'
        f'[state]\nh = "e{last}"\n[params]\nW = {{ shape = ["input", "units"], init = "glorot_uniform" }}\n'
        'U = { shape = ["units", "units"], init = "orthogonal" }\nb = { shape = ["units"], init = "zeros" }\n'
        'g = { shape = ["units"], init = "ones" }\n'
        "[equations]\n" + "\n".join(lines) + "\n[numerics]\nlayer_norm_epsilon = 1e-3\n"
    )


def test_limits_on_the_number_of_states_params_and_equations():
    from novolstm import spec_loader

    data = novolstm.load_spec("lstm").to_dict()
    data["state"] = {f"s{k}": "h_next" for k in range(spec_loader.MAX_STATES + 1)}
    with pytest.raises(
        SpecError, match=f"state: {spec_loader.MAX_STATES + 1} entries; expected at most {spec_loader.MAX_STATES}"
    ):
        parse_spec(data)
    data = novolstm.load_spec("lstm").to_dict()
    data["params"].update({f"p{k}": {"shape": ["units"], "init": "zeros"} for k in range(spec_loader.MAX_PARAMS)})
    with pytest.raises(SpecError, match="params: .* entries; expected at most"):
        parse_spec(data)
    with pytest.raises(SpecError, match=f"equations: {spec_loader.MAX_EQUATIONS + 1} entries; expected at most"):
        loads_spec(_chain_spec(spec_loader.MAX_EQUATIONS + 1))


def test_limit_on_the_total_size_of_the_expressions():
    from novolstm import spec_loader

    heavy = "tanh(e{prev}) + " + " + ".join(["b * e0 * e{prev}"] * 40)
    with pytest.raises(SpecError, match=f"more than {spec_loader.MAX_EXPRESSION_NODES} terms in all"):
        loads_spec(_chain_spec(60, heavy))


@pytest.mark.parametrize(
    "text",
    [
        "tanh(" * 70 + "h" + ")" * 70,
        "-" * 1900 + "h",
        "h" + " + h" * 400,
        "(" * 250 + "h" + ")" * 250,
    ],
)
def test_deep_nesting_is_refused_by_name(text):
    with pytest.raises(SpecError, match="equations.c_next: .*(nested deeper than|too many nested)"):
        loads_spec(_mutate('c_next = "f * c + i * g"', f'c_next = "{text}"'))


def test_deeply_nested_toml_is_refused_without_recursion_error():
    with pytest.raises(SpecError, match="nested too deeply|not valid TOML"):
        loads_spec("a = " + "[" * 200_000)


ADVERSARIAL = {
    "the longest chain of equations": lambda: _chain_spec(256),
    "the most terms the limits allow": lambda: _chain_spec(
        90,
        "layer_norm(sigmoid(x @ W + e{prev} @ U + b) * softmax(h @ U + e{prev} @ U - b * 2), g, b)"
        " + (1 - b) * tanh(e{prev} @ U) - relu(e{prev}) * (b * g + 3)",
    ),
    "the deepest expression": lambda: _chain_spec(2, "tanh(" * 60 + "e{prev} + b" + ")" * 60),
}


@pytest.mark.parametrize("case", sorted(ADVERSARIAL))
def test_adversarial_specs_load_and_generate_in_bounded_time(case):
    """The worst specs the limits allow load and generate for every backend quickly, with no
    RecursionError. A generous bound: the largest measured 0.1 to 0.3 s per backend on a quiet
    machine. It counts this process's CPU time, not wall time: on a machine loaded to 10 the
    wall clock read 22 s for what took 6 s of CPU."""
    import time

    text = ADVERSARIAL[case]()
    start = time.process_time()
    spec = loads_spec(text)
    for backend in novolstm.list_backends():
        compile(novolstm.generate_source(spec, backend), "<adversarial>", "exec")
    assert time.process_time() - start < 10.0


@settings(max_examples=60, deadline=None)
@given(text=spec_texts())
def test_canonical_text_parses_back_to_the_same_spec(text):
    # The canonical text is what compiled kernels and saved models rebuild a cell from: a printer
    # that dropped needed parentheses (f * (x @ W) written f * x @ W) would rebuild another cell.
    spec = loads_spec(text)
    again = loads_spec(spec.dumps())
    assert again == spec and again.dumps() == spec.dumps()


def test_a_projection_right_of_a_product_keeps_its_parentheses_and_old_hashes_stay():
    from novolstm.expr import format_expression, parse_expression

    for text in ("f * (x @ W)", "a / (x @ W)", "(f * h) @ U", "x @ W * f"):
        assert format_expression(parse_expression(text)) == text
    # The canonical form of a built-in spec is its hash: mgu's (f * h) @ U_h is written as ever.
    assert novolstm.load_spec("mgu").hash.startswith("2a80d93cb9c0")
