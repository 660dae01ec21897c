"""Generated backward passes read like the forward ones: every local is named after the cotangent it
holds (``d_c_next``, ``d_z_h``, ``d_h_next_as_output``), never after autodiff's counters (``d4``,
``seed_1``), and every backward line carries the derivative of the forward spec expression it
computes (``# d(o * tanh(c_next)) / d(o)``), as forward lines carry their expression.

The backends that generate a backward pass: NumPy, PyTorch and the compiled C++ kernel (JAX, Keras and
ONNX differentiate the generated forward themselves). Generating needs no framework.
"""

from __future__ import annotations

import re

import pytest

import novolstm
from novolstm.backends.cpp.emit import generate as generate_cpp
from novolstm.codegen import plan, var
from novolstm.passes import LEAVES

#: A name as the differentiator's counters make them (``d4``, ``t12``, ``seed_1``), alone or inside
#: a generated local (``v_d4``, ``gl_d16``).
AUTODIFF_NAME = re.compile(r"(?<![A-Za-z0-9])(?:d|t|seed_)\d+\b")
#: What a backward value may be called: a cotangent ``d_<value>...``, a derivative factor ``d_<y>_over_d_<z>``
#: or a literal ``const_<value>``.
BACKWARD_NAME = re.compile(r"d_\w+|const_\w+")
PYTHON_BACKWARDS = ("numpy", "torch")


def _graphs(spec: str):
    p = plan(novolstm.load_spec(spec))
    return p, ((p.step_backward, p.step_backward_comments), (p.prologue_backward, p.prologue_backward_comments))


def test_the_pattern_catches_autodiff_names():
    old = "v_d4 = v_seed_1 + v_seed_3\ngl_d16[t] = v_d16\nv_t4 = 0.2"
    assert AUTODIFF_NAME.findall(old) == ["d4", "seed_1", "seed_3", "d16", "d16", "t4"]
    assert not AUTODIFF_NAME.findall("v_d_h = v_d_h_next_as_h + v_d_y_over_d_z * v_const_0_5  # d(y) / d(z2)")


@pytest.mark.parametrize("spec", novolstm.list_specs())
def test_backward_values_are_named_after_their_cotangents_and_say_what_they_differentiate(spec):
    p, graphs = _graphs(spec)
    for graph, comments in graphs:
        seeds = [n.name for n in graph.nodes if n.op == "seed"]
        computed = [n.name for n in graph.nodes if n.op not in LEAVES and n.op != "const"]  # a literal says itself
        assert computed and seeds
        literals = [n.name for n in graph.nodes if n.op == "const"]
        bad = [
            name
            for name in seeds + computed + literals
            if not BACKWARD_NAME.fullmatch(name) or AUTODIFF_NAME.search(name)
        ]
        assert not bad, bad
        # Every computed value has its comment: d(<forward expression>) / d(<value>), or d(loss) / d(<value>).
        assert set(computed) <= set(comments)
        forward = set(p.expressions.values())
        for name in computed:
            match = re.fullmatch(r"d\((.*)\) / d\((\w+)\)", comments[name])
            assert match, comments[name]
            assert match.group(1) == "loss" or match.group(1) in forward, comments[name]


@pytest.mark.parametrize("emitter", PYTHON_BACKWARDS)
@pytest.mark.parametrize("spec", novolstm.list_specs())
def test_generated_backward_lines_carry_their_names_and_comments(spec, emitter):
    source = novolstm.generate_source(spec, emitter)
    assert not AUTODIFF_NAME.findall(source)
    lines = source.splitlines()
    _, graphs = _graphs(spec)
    checked = 0
    for _, comments in graphs:
        for name, comment in comments.items():
            assigns = re.compile(rf"\s*(?:\w+, )*{var(name)}(?:, \w+)* = ")
            for k, line in enumerate(lines):
                if assigns.match(line) and not line.endswith(" = None"):  # the template's "no gradient asked"
                    assert line.endswith(f"  # {comment}") or lines[k - 1].strip() == f"# {comment}", line
                    checked += 1
    # NumPy writes every backward value on its own line; PyTorch folds some into fused calls.
    every = sum(len(comments) for _, comments in graphs)
    assert checked >= every if emitter == "numpy" else checked > every // 2


@pytest.mark.parametrize("spec", novolstm.list_specs())
def test_the_compiled_kernel_has_no_autodiff_names(spec):
    kernel = generate_cpp(plan(novolstm.load_spec(spec)), namespace="probe")  # every built-in spec compiles
    assert not AUTODIFF_NAME.findall(kernel.source)
