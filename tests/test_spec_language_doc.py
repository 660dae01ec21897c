"""docs/spec-language.md's table of operations is executed: every operation has a row, its example
parses and uses it, and its value at z = [-4, -1, 0, 1.5] is what novolstm's interpreter computes."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from novolstm import interpret
from novolstm.expr import FUNCTIONS, Binary, Call, Neg, parse_expression

PAGE = Path(__file__).resolve().parents[1] / "docs" / "spec-language.md"
Z = np.array([[-4.0, -1.0, 0.0, 1.5]])  # one row of four units
ENV = {"z": Z, "gamma": np.ones(4), "beta": np.zeros(4)}
EPSILON = 1e-3  # the layer_norm row's epsilon
OPERATORS = {"a + b": "+", "a - b": "-", "a * b": "*", "a / b": "/", "row @ M": "@", "-a": "neg"}


def _rows() -> list[list[str]]:
    text = PAGE.read_text(encoding="utf-8")
    table = text[text.index("| operation | meaning | example |") :].split("\n\n", 1)[0]
    return [[cell.strip() for cell in line.strip("|").split(" | ")] for line in table.splitlines()[2:]]


ROWS = _rows()


def _operations(expr) -> set[str]:
    """Every operation an expression tree uses."""
    if isinstance(expr, Call):
        return {expr.fn}.union(*(_operations(a) for a in expr.args))
    if isinstance(expr, Binary):
        return {expr.op} | _operations(expr.left) | _operations(expr.right)
    if isinstance(expr, Neg):
        return {"neg"} | _operations(expr.arg)
    return set()


def _operation(row) -> str:
    name = re.match(r"`([^`(]+)", row[0]).group(1)
    return OPERATORS.get(name, name)


def test_every_operation_has_a_row():
    documented = [_operation(row) for row in ROWS]
    assert len(documented) == len(set(documented)), documented
    assert set(documented) == set(FUNCTIONS) | set(OPERATORS.values())


@pytest.mark.parametrize("row", ROWS, ids=[row[0] for row in ROWS])
def test_each_example_parses_and_uses_its_operation(row):
    examples = re.findall(r'"([^"]+)"', row[2])
    assert examples, row
    assert any(_operation(row) in _operations(parse_expression(e)) for e in examples), row


def _number(text: str) -> float:
    return {"nan": np.nan, "inf": np.inf, "-inf": -np.inf}.get(text, None) or float(text)


@pytest.mark.parametrize("row", [r for r in ROWS if "` = `" in r[3]], ids=lambda r: r[0])
def test_each_value_is_what_the_interpreter_computes(row):
    source, shown = re.match(r"`([^`]+)` = `\[([^\]]+)\]`", row[3]).groups()
    expr = parse_expression(source)
    assert _operation(row) in _operations(expr), row
    got = np.asarray(interpret._value(expr, ENV, EPSILON), np.float64).reshape(-1)
    values = shown.split(", ")
    expected = np.array([_number(v) for v in values])
    decimals = np.array([len(v.split(".")[1]) if "." in v else 0 for v in values])
    assert got.shape == expected.shape, row
    finite = np.isfinite(expected)
    np.testing.assert_array_equal(got[~finite], expected[~finite], err_msg=row[0])  # the domain rule's nan and inf
    assert np.all(np.abs(got[finite] - expected[finite]) <= 0.5 * 10.0 ** -decimals[finite] + 1e-12), (row[0], got)


def test_a_wrong_value_in_the_page_would_fail():
    """The check can fail: Keras 3's hard sigmoid values under Keras 2's name are caught."""
    got = interpret._value(parse_expression("keras2_hard_sigmoid(z)"), ENV, EPSILON).reshape(-1)
    assert np.abs(got - np.array([0, 0.3333, 0.5, 0.75])).max() > 0.01
