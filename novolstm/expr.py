"""The expression language of cell specs: parsed with a whitelist, never evaluated.

An expression is built from declared names, numeric literals, ``+ - * / @``, unary
minus and calls of the functions in ``FUNCTIONS``. Python's ``ast`` module
parses the text in ``eval`` mode; every node type outside the whitelist is
rejected, so a spec cannot reach attributes, subscripts, keywords, lambdas or
any other Python construct, and nothing is ever executed.

Examples:
    >>> parse_expression("sigmoid(x @ W_i + h @ U_i + b_i)")
    Call(fn='sigmoid', args=(Binary(op='+', left=Binary(op='+', left=Binary(op='@', left=Name(id='x'), right=Name(id='W_i')), right=Binary(op='@', left=Name(id='h'), right=Name(id='U_i'))), right=Name(id='b_i')),))
"""

from __future__ import annotations

import ast
import math
import re
import sys
from dataclasses import dataclass

#: Functions a spec may call, with their number of arguments.
FUNCTIONS = {
    "sigmoid": 1,
    "tanh": 1,
    "softmax": 1,
    "layer_norm": 3,
    "relu": 1,
    "exp": 1,
    "log": 1,
    "sqrt": 1,
    "abs": 1,
    "softplus": 1,
    "log_sigmoid": 1,
    "gelu": 1,
    "hard_sigmoid": 1,
    "keras2_hard_sigmoid": 1,
    "maximum": 2,
    "minimum": 2,
    "clip": 3,
}

#: A name in a spec: an ASCII identifier, so it can never inject text into generated source.
#: Always matched with ``fullmatch`` (``match`` with ``$`` would accept a trailing newline).
IDENTIFIER = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,63}")

MAX_EXPRESSION_LENGTH = 2000
#: Deepest nesting of one expression (calls, operators, parentheses): every walk over an
#: expression tree, here and in the compiler, stays far inside Python's recursion limit.
MAX_DEPTH = 64

_BINARY = {ast.Add: "+", ast.Sub: "-", ast.Mult: "*", ast.Div: "/", ast.MatMult: "@"}


@dataclass(frozen=True)
class Name:
    id: str


@dataclass(frozen=True)
class Const:
    value: float


@dataclass(frozen=True)
class Binary:
    op: str
    left: Expr
    right: Expr


@dataclass(frozen=True)
class Neg:
    arg: Expr


@dataclass(frozen=True)
class Call:
    fn: str
    args: tuple


Expr = Name | Const | Binary | Neg | Call


class ExpressionError(ValueError):
    """The text is not an expression of the spec language."""


def parse_expression(text: str) -> Expr:
    """Parse ``text`` into an ``Expr`` tree, rejecting everything off the whitelist."""
    if not isinstance(text, str):
        raise ExpressionError(f"expected an expression string, got {type(text).__name__}")
    if len(text) > MAX_EXPRESSION_LENGTH:
        raise ExpressionError(f"expression longer than {MAX_EXPRESSION_LENGTH} characters")
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except SyntaxError as exc:
        raise ExpressionError(f"not a valid expression: {exc.msg}") from None
    except (RecursionError, MemoryError):  # CPython's parser refuses some deep nesting this way
        raise ExpressionError(f"expression nested deeper than {MAX_DEPTH}") from None
    return _convert(tree.body, 0)


def _convert(node: ast.AST, depth: int) -> Expr:
    if depth > MAX_DEPTH:
        raise ExpressionError(
            f"expression nested deeper than {MAX_DEPTH} (calls, operators and each term of a long sum count);"
            " split it into several equations"
        )
    if isinstance(node, ast.Name):
        if not IDENTIFIER.fullmatch(node.id):
            raise ExpressionError(f"name {node.id!r} is not a plain ASCII identifier")
        return Name(node.id)
    if isinstance(node, ast.Constant):
        value = node.value
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ExpressionError(f"only numeric literals are allowed, got {value!r}")
        if not is_finite_number(value):
            raise ExpressionError(f"literal {_shown(value)} is outside the float range")
        return Const(float(value))
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        return Binary(_BINARY[type(node.op)], _convert(node.left, depth + 1), _convert(node.right, depth + 1))
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        return Neg(_convert(node.operand, depth + 1))
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.UAdd):
        return _convert(node.operand, depth + 1)
    if isinstance(node, ast.Call):
        if not isinstance(node.func, ast.Name) or node.func.id not in FUNCTIONS:
            shown = node.func.id if isinstance(node.func, ast.Name) else type(node.func).__name__
            raise ExpressionError(f"unknown function {shown!r}; expected one of {sorted(FUNCTIONS)}")
        if node.keywords:
            raise ExpressionError(f"{node.func.id}() takes no keyword arguments")
        arity = FUNCTIONS[node.func.id]
        if len(node.args) != arity:
            raise ExpressionError(f"{node.func.id}() takes {arity} argument(s), got {len(node.args)}")
        return Call(node.func.id, tuple(_convert(a, depth + 1) for a in node.args))
    raise ExpressionError(f"{type(node).__name__} is not allowed in a spec expression")


def is_finite_number(value) -> bool:
    """Whether an int or float converts to a finite float (a 400-digit int overflows ``float()``)."""
    if isinstance(value, int):
        return abs(value) <= _LARGEST_INT
    return math.isfinite(value)


_LARGEST_INT = int(sys.float_info.max)


def _shown(value) -> str:
    text = repr(value)
    return text if len(text) <= 24 else f"{text[:12]}...({len(text)} characters)"


def walk(expr: Expr):
    """Every node of an expression tree, walked without recursion (parents before children)."""
    stack = [expr]
    while stack:
        node = stack.pop()
        yield node
        stack.extend(reversed(children(node)))


def size(expr: Expr) -> int:
    """The number of nodes of an expression tree."""
    return sum(1 for _ in walk(expr))


def children(expr: Expr) -> tuple:
    """The operands of a node: both sides of a binary operator, the negated term, a call's arguments."""
    if isinstance(expr, Binary):
        return (expr.left, expr.right)
    if isinstance(expr, Neg):
        return (expr.arg,)
    if isinstance(expr, Call):
        return expr.args
    return ()


def names_in(expr: Expr) -> set[str]:
    """All names an expression reads."""
    return {node.id for node in walk(expr) if isinstance(node, Name)}


def functions_in(expr: Expr) -> set[str]:
    """All functions an expression calls."""
    return {node.fn for node in walk(expr) if isinstance(node, Call)}


# Printing ranks "@" above "*" and "/", so that (f * h) @ U keeps the parentheses the canonical
# text (and so every spec's hash) has always had; the parser, as Python, binds all three alike,
# so a projection on the right of "*" or "/" needs parentheses of its own: f * (x @ W).
_PRECEDENCE = {"+": 1, "-": 1, "*": 2, "/": 2, "@": 3}


def format_expression(expr: Expr, parent: int = 0) -> str:
    """Write an expression back as text that parses to the same tree.

    Examples:
        >>> format_expression(parse_expression("f * c + (i * g)"))
        'f * c + i * g'
        >>> format_expression(parse_expression("f * (x @ W) + (f * x) @ W"))
        'f * (x @ W) + (f * x) @ W'
    """
    if isinstance(expr, Name):
        return expr.id
    if isinstance(expr, Const):
        return repr(expr.value)
    if isinstance(expr, Neg):
        return "-" + format_expression(expr.arg, 4)
    if isinstance(expr, Call):
        return f"{expr.fn}({', '.join(format_expression(a) for a in expr.args)})"
    prec = _PRECEDENCE[expr.op]
    # Left-associative: the right operand needs parentheses at equal precedence, and a projection
    # right of "*" or "/" is at equal precedence for the parser.
    right = prec + 2 if expr.op in ("*", "/") else prec + 1
    text = f"{format_expression(expr.left, prec)} {expr.op} {format_expression(expr.right, right)}"
    return f"({text})" if prec < parent else text
