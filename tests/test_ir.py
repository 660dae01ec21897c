"""The IR: what the passes produce, and the checks between them."""

from __future__ import annotations

import pytest

import novolstm
from novolstm.autodiff import differentiate
from novolstm.ir import Graph, IRError, Node, check_graph, lower
from novolstm.passes import build_program


def linears(graph):
    return [(n.args[0], n.attr("weights"), n.attr("biases")) for n in graph.nodes if n.op == "linear"]


def test_lstm_is_one_input_gemm_one_recurrent_matmul_and_one_add():
    program = build_program(novolstm.load_spec("lstm"))
    assert linears(program.prologue) == [("x", ("W_i", "W_f", "W_o", "W_g"), ("b_i", "b_f", "b_o", "b_g"))]
    assert linears(program.step) == [("h", ("U_i", "U_f", "U_o", "U_g"), (None,) * 4)]
    adds = [n for n in program.step.nodes if n.op == "add" and n.width == 4]
    assert len(adds) == 1  # all four gates' x and h projections summed by one addition
    sigmoids = [n for n in program.step.nodes if n.op == "sigmoid"]
    assert [n.width for n in sigmoids] == [3]  # i, f and o: one sigmoid over three adjacent blocks


def test_novolstm_fuses_its_softmax_branch_too():
    program = build_program(novolstm.load_spec("novolstm"))
    ((_, weights, _),) = linears(program.prologue)
    assert set(weights) == {"W_i", "W_s", "W_f", "W_g", "W_o"}
    ((_, recurrent, _),) = linears(program.step)
    assert [w.replace("U", "W") for w in recurrent] == list(weights)  # the same block order on both sides


def test_state_independent_branches_leave_the_loop():
    program = build_program(novolstm.load_spec("novolstm_reference"))
    assert "softmax" in program.prologue.ops()
    assert "softmax" not in program.step.ops()


def test_gru_keeps_its_recurrent_bias_apart():
    program = build_program(novolstm.load_spec("gru"))
    ((_, _, x_biases),) = linears(program.prologue)
    ((_, _, h_biases),) = linears(program.step)
    assert x_biases == ("b_r", "b_z", "b_n")
    assert h_biases == (None, None, "b_hn")  # inside r * (h @ U_n + b_hn): never merged with b_n


@pytest.mark.parametrize("cell", novolstm.list_specs())
def test_every_pass_leaves_a_valid_graph(cell):
    program = build_program(novolstm.load_spec(cell))
    for graph in (program.prologue, program.step, differentiate(program.step), differentiate(program.prologue)):
        check_graph(graph, "test")
    assert all(f"hoisted:{h}" in program.prologue.outputs for h in program.hoisted)
    assert {n.name for n in program.step.nodes if n.op == "hoisted"} == set(program.hoisted)


def test_layer_norm_lowers_to_one_normalize_op_with_the_pinned_epsilon():
    graph = lower(novolstm.load_spec("novolstm"))
    (norm,) = [n for n in graph.nodes if n.op == "normalize_units"]
    assert norm.attr("eps") == 1e-3
    (back,) = [n for n in differentiate(graph).nodes if n.op == "normalize_units_grad"]
    assert back.attr("eps") == 1e-3


def test_check_graph_names_the_broken_invariant():
    with pytest.raises(IRError, match="after demo: 'b' reads 'a' before it is defined"):
        check_graph(Graph([Node("b", "neg", ("a",)), Node("a", "state")]), "demo")
    with pytest.raises(IRError, match="defined twice"):
        check_graph(Graph([Node("a", "state"), Node("a", "state")]), "demo")
    with pytest.raises(IRError, match="width 1, expected 2"):
        check_graph(
            Graph([Node("a", "state", width=2), Node("b", "slice", ("a",), (("start", 0), ("stop", 2)))]), "demo"
        )
    with pytest.raises(IRError, match="output 'y' names unknown node"):
        check_graph(Graph([Node("a", "state")], {"y": "zz"}), "demo")


def test_backward_graph_exports_one_gradient_per_fused_matrix():
    program = build_program(novolstm.load_spec("novolstm"))
    back = differentiate(program.step)
    step_linear = next(n.name for n in program.step.nodes if n.op == "linear")
    assert f"grad:{step_linear}" in back.outputs
    assert {"grad:h", "grad:c", "grad:gamma_i", "grad:beta_i"} <= set(back.outputs)


# ---------------------------------------------------------------- structural matching


def _lstm_text(**changes):
    """spec/lstm.toml's text with substrings replaced (old -> new, applied in order)."""

    text = _builtin_path("lstm").read_text()
    for old, new in changes.items():
        assert old in text, old
        text = text.replace(old, new)
    return text


def _builtin_path(name):
    import pathlib

    return pathlib.Path(__file__).resolve().parents[1] / "spec" / f"{name}.toml"


def _lstm_rewritten():
    """The standard LSTM written differently: other intermediate names, description, equation
    order, term order in sums and products, and an extra unused equation."""
    head = _builtin_path("lstm").read_text().split("[equations]")[0]
    head = head.replace('name = "lstm"', 'name = "my_lstm"').replace(
        "The standard LSTM (Hochreiter", "Mine (Hochreiter"
    )
    head = head.replace('h = "h_next"\nc = "c_next"', 'h = "hidden"\nc = "memory"')
    return (
        head
        + """[equations]
forget = "sigmoid(h @ U_f + b_f + x @ W_f)"
cand = "tanh(x @ W_g + h @ U_g + b_g)"
inp = "sigmoid(x @ W_i + h @ U_i + b_i)"
memory = "inp * cand + c * forget"
outgate = "sigmoid(b_o + x @ W_o + h @ U_o)"
hidden = "tanh(memory) * outgate"
"""
    )


def test_a_rewritten_standard_lstm_is_recognised():
    from novolstm.ir import computes_standard_lstm, fingerprint

    spec = novolstm.loads_spec(_lstm_rewritten().replace('output = "h_next"', 'output = "hidden"'))
    assert spec.hash != novolstm.load_spec("lstm").hash
    assert computes_standard_lstm(spec)
    assert fingerprint(spec) == fingerprint(novolstm.load_spec("lstm"))


@pytest.mark.parametrize("name", ["peephole_lstm", "novolstm", "novolstm_reference", "gru"])
def test_other_builtin_cells_are_not_the_standard_lstm(name):
    from novolstm.ir import computes_standard_lstm

    assert not computes_standard_lstm(novolstm.load_spec(name))


@pytest.mark.parametrize(
    "changes",
    [
        {'g = "tanh(': 'g = "sigmoid('},  # one activation changed
        {'h_next = "o * tanh(c_next)"': 'h_next = "o * relu(c_next)"'},
        {'c_next = "f * c + i * g"': 'c_next = "i * c + f * g"'},  # gates swapped
        {"h @ U_i + b_i": "h @ U_i + b_f", "h @ U_f + b_f": "h @ U_f + b_i"},  # two biases swapped
        {'output = "h_next"': 'output = "c_next"'},
        {'h = "h_next"\nc = "c_next"': 'c = "c_next"\nh = "h_next"'},  # state order differs from nn.LSTM's (h, c)
    ],
)
def test_a_changed_lstm_is_not_the_standard_lstm(changes):
    from novolstm.ir import computes_standard_lstm

    spec = novolstm.loads_spec(_lstm_text(**changes))
    assert not computes_standard_lstm(spec)
