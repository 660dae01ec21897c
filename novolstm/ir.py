"""A small SSA IR for one step of a recurrent cell, and the lowering from a spec.

Values are batched rows (leading batch axes, then a trailing width) or unbatched
parameter vectors and numeric constants. A width is a number of ``units`` blocks
(an ``int``), ``"I"`` for the input, or ``"S"`` for a per-row statistic (width one).

Forward ops:
    input, state, hoisted, param, const   leaves
    linear    operand @ concat(weights) + concat(biases); attrs weights, biases
    slice     blocks [start, stop) of a multi-block value
    add (n-ary), sub, mul, div, maximum, minimum, neg, sigmoid, tanh, relu, softmax,
    exp, log, sqrt, abs, softplus, gelu (exact, erf)
    clip      z limited to [lo, hi]; attrs lo, hi (numbers)
    normalize_units   (z - mean z) / sqrt(var z + eps) over the units axis, population
                      variance; attr eps (LayerNorm without its affine part)
Backward-only ops (see ``novolstm.autodiff``):
    linear_t, sum_units, sum_batch, normalize_units_grad, concat, the activations' grads,
    sign, ge_mask, in_range (the masks of abs, maximum / minimum and clip)

Examples:
    >>> import novolstm
    >>> graph = lower(novolstm.load_spec("lstm"))
    >>> [n.name for n in graph.nodes if n.op == "sigmoid"]
    ['i', 'f', 'o']
    >>> computes_standard_lstm(novolstm.load_spec("lstm")), computes_standard_lstm(novolstm.load_spec("gru"))
    (True, False)
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from functools import cache
from typing import Any, cast

from .expr import Binary, Call, Const, Expr, Name, Neg
from .spec_model import Spec

Width = Any  # int (blocks of units), "I" or "S"

ELEMENTWISE_UNARY = ("neg", "sigmoid", "tanh", "relu")
#: The operations beyond the LSTM family's (see docs/spec-language.md): elementwise, one or two arguments.
MATH_UNARY = ("exp", "log", "sqrt", "abs", "softplus", "gelu", "clip")
MATH_BINARY = ("div", "maximum", "minimum")
LEAVES = ("input", "state", "hoisted", "param", "const")


@dataclass(frozen=True)
class Node:
    name: str
    op: str
    args: tuple[str, ...] = ()
    attrs: tuple[tuple[str, Any], ...] = ()
    width: Width = 1
    batched: bool = True

    def attr(self, key: str, default: Any = None) -> Any:
        return dict(self.attrs).get(key, default)


@dataclass
class Graph:
    """Nodes in evaluation order and the named outputs (role -> node name)."""

    nodes: list[Node]
    outputs: dict[str, str] = field(default_factory=dict)

    def __post_init__(self):
        self._index = {n.name: n for n in self.nodes}

    def __getitem__(self, name: str) -> Node:
        return self._index[name]

    def __contains__(self, name: str) -> bool:
        return name in self._index

    def users(self) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {n.name: [] for n in self.nodes}
        for n in self.nodes:
            for a in n.args:
                out[a].append(n.name)
        return out

    def ops(self) -> set[str]:
        return {n.op for n in self.nodes}


class NameAllocator:
    """Fresh SSA names that never collide with the spec's own names."""

    def __init__(self, taken: Iterable[str]):
        self.taken = set(taken)
        self.counter = 0

    def __call__(self, base: str = "t") -> str:
        while True:
            self.counter += 1
            name = f"{base}{self.counter}"
            if name not in self.taken:
                self.taken.add(name)
                return name

    def claim(self, name: str) -> str:
        if name in self.taken:
            return self(name + "_")
        self.taken.add(name)
        return name


def constant_name(value: float) -> str:
    """The name of a literal in generated code, after its value.

    Examples:
        >>> constant_name(0.5), constant_name(-1.0)
        ('const_0_5', 'const_minus_1_0')
    """
    return "const_" + repr(float(value)).replace(".", "_").replace("-", "minus_").replace("+", "")


class IRError(AssertionError):
    """An IR invariant broke between passes: a bug in novolstm, never in a spec."""


def check_graph(graph: Graph, where: str) -> Graph:
    """Check names, definition order and widths; raise ``IRError`` naming the pass."""
    seen: dict[str, Node] = {}
    for n in graph.nodes:
        if n.name in seen:
            raise IRError(f"after {where}: {n.name!r} defined twice")
        for a in n.args:
            if a not in seen:
                raise IRError(f"after {where}: {n.name!r} reads {a!r} before it is defined")
        args = [seen[a] for a in n.args]
        expected = _expected_width(n, args)
        if expected is not None and expected != n.width:
            raise IRError(f"after {where}: {n.name!r} ({n.op}) has width {n.width!r}, expected {expected!r}")
        seen[n.name] = n
    for role, name in graph.outputs.items():
        if name not in seen:
            raise IRError(f"after {where}: output {role!r} names unknown node {name!r}")
    return graph


def _expected_width(n: Node, args: list[Node]):
    if n.op == "linear":
        return len(n.attr("weights"))
    if n.op == "slice":
        return n.attr("stop") - n.attr("start")
    if n.op == "sum_units":
        return "S"
    if n.op in ("add", "sub", "mul") + MATH_BINARY:
        widths = {a.width for a in args if a.batched and a.width != "S"} | {
            a.width for a in args if not a.batched and a.op != "const"
        }
        return widths.pop() if len(widths) == 1 else ("S" if not widths else None)
    if n.op in ELEMENTWISE_UNARY + MATH_UNARY + ("softmax", "normalize_units"):
        return args[0].width
    return None


# ---------------------------------------------------------------- lowering


def lower(spec: Spec) -> Graph:
    """Lower a spec's equations to one step graph (nothing fused or hoisted yet)."""
    return _Lowering(spec).run()


class _Lowering:
    def __init__(self, spec: Spec):
        self.spec = spec
        self.nodes: list[Node] = []
        self.by_name: dict[str, Node] = {}  # kind() runs once per subexpression: a scan would be quadratic
        self.new_name = NameAllocator(
            [spec.input, *spec.state_names, *spec.param_names, *(n for n, _ in spec.equations)]
        )
        self.env: dict[str, str] = {}  # spec name -> node name
        self.consts: dict[float, str] = {}

    def emit(self, op: str, args=(), attrs=(), width: Width = 1, batched: bool = True, name: str | None = None) -> str:
        name = name or self.new_name()
        node = Node(name, op, tuple(args), tuple(attrs), width, batched)
        self.nodes.append(node)
        self.by_name[name] = node
        return name

    def run(self) -> Graph:
        spec = self.spec
        self.env[spec.input] = self.emit("input", width="I", name=spec.input)
        for s in spec.state_names:
            self.env[s] = self.emit("state", name=s)
        for p in spec.params:
            if len(p.shape) == 1:  # matrices appear only inside linear nodes
                self.env[p.name] = self.emit("param", attrs=(("shape", p.shape),), batched=False, name=p.name)
        for name, expr in spec.equations:
            self.env[name] = self.expr(expr, name)
        outputs = {f"state:{s}": self.env[nxt] for s, nxt in spec.state}
        outputs["output"] = self.env[spec.output]
        used = live_names(self.nodes, outputs.values())
        nodes = [n for n in self.nodes if n.name in used or n.op in ("input", "state")]
        return check_graph(Graph(nodes, outputs), "lowering")

    def constant(self, value: float) -> str:
        if value not in self.consts:
            self.consts[value] = self.emit("const", attrs=(("value", value),), width=0, batched=False)
        return self.consts[value]

    def kind(self, name: str) -> Node:
        return self.by_name[name]

    def expr(self, e: Expr, target: str | None = None) -> str:
        if isinstance(e, Name):
            return self.env[e.id]
        value = constant_value(e)
        if value is not None:  # literals only, such as (2 * 3) or (1 - 1): one number
            return self.constant(value)
        if isinstance(e, Binary) and e.op == "+":
            # The literal terms of a sum are one number too: (2 * 3) + ((2 * 3) + h) is 12 + h.
            terms = _flatten_sum(e)
            values = [constant_value(t) for t in terms]
            args = [self.term(t) for t, v in zip(terms, values) if v is None]
            if any(v is not None for v in values):
                args.append(self.constant(sum(v for v in values if v is not None)))
            return self.emit("add", args, width=1, batched=self.any_batched(args), name=target)
        if isinstance(e, Binary) and e.op == "@":
            return self.term(e, target)
        if isinstance(e, Binary):
            op = {"-": "sub", "*": "mul", "/": "div"}[e.op]
            args = [self.expr(e.left), self.expr(e.right)]
            return self.emit(op, args, width=self.elementwise_width(args), batched=self.any_batched(args), name=target)
        if isinstance(e, Neg):
            arg = self.expr(e.arg)
            return self.emit("neg", [arg], width=self.kind(arg).width, batched=self.kind(arg).batched, name=target)
        assert isinstance(e, Call)
        if e.fn == "layer_norm":
            z, gamma, beta = e.args  # the spec loader checked the arity
            return self.layer_norm(z, cast(Name, gamma), cast(Name, beta), target=target)
        if e.fn in ("maximum", "minimum"):
            args = [self.expr(a) for a in e.args]
            return self.emit(
                e.fn, args, width=self.elementwise_width(args), batched=self.any_batched(args), name=target
            )
        z = self.expr(e.args[0])
        if e.fn == "clip":
            # The loader refused bounds that are not numeric literals (SpecLoader.clip_bounds).
            lo, hi = (cast(float, constant_value(a)) for a in e.args[1:])
            return self.clip(z, lo, hi, target)
        if e.fn == "log_sigmoid":  # -softplus(-z): softplus is the overflow-free primitive
            return self.emit("neg", [self.emit("softplus", [self.emit("neg", [z])])], name=target)
        if e.fn == "hard_sigmoid":  # Keras 3 and torch.nn.Hardsigmoid, as Keras 3 writes it: relu6(z + 3) / 6
            return self.emit(
                "div", [self.clip(self.emit("add", [z, self.constant(3.0)]), 0.0, 6.0), self.constant(6.0)], name=target
            )
        if e.fn == "keras2_hard_sigmoid":  # Keras 2: clip(0.2 z + 0.5, 0, 1)
            scaled = self.emit("add", [self.emit("mul", [z, self.constant(0.2)]), self.constant(0.5)])
            return self.clip(scaled, 0.0, 1.0, target)
        return self.emit(e.fn, [z], name=target)

    def clip(self, z: str, lo: float, hi: float, target: str | None = None) -> str:
        return self.emit("clip", [z], (("lo", lo), ("hi", hi)), name=target)

    def term(self, e: Expr, target: str | None = None) -> str:
        if isinstance(e, Binary) and e.op == "@":
            operand = self.expr(e.left)
            return self.emit(
                "linear", [operand], (("weights", (cast(Name, e.right).id,)), ("biases", (None,))), width=1, name=target
            )
        return self.expr(e)

    def layer_norm(self, z: Expr, gamma: Name, beta: Name, target: str | None) -> str:
        # One normalize op with the spec's epsilon (population variance, epsilon inside the
        # square root), then the affine part as ordinary ops. One op rather than its five
        # primitives so that emitters can map it, and its VJP, onto one fused kernel where
        # the framework's kernel computes exactly these statistics, and so the backward
        # pass saves two values per step instead of five.
        eps = self.spec.numerics.layer_norm_epsilon
        normed = self.emit("normalize_units", [self.expr(z)], (("eps", eps),))
        scaled = self.emit("mul", [normed, self.env[gamma.id]])
        return self.emit("add", [scaled, self.env[beta.id]], name=target)

    def any_batched(self, args) -> bool:
        return any(self.kind(a).batched for a in args)

    def elementwise_width(self, args) -> Width:
        return 1 if any(self.kind(a).op != "const" for a in args) else 0


def constant_value(e: Expr) -> float | None:
    """The number an expression of literals alone stands for (folded in float64), else None.

    Examples:
        >>> from novolstm.expr import parse_expression
        >>> constant_value(parse_expression("-(2 * 3) + (1 - 1)")), constant_value(parse_expression("1 - b"))
        (-6.0, None)
    """
    if isinstance(e, Const):
        return e.value
    if isinstance(e, Neg):
        arg = constant_value(e.arg)
        return None if arg is None else -arg
    if isinstance(e, Binary) and e.op in ("+", "-", "*", "/"):
        left, right = constant_value(e.left), constant_value(e.right)
        if left is None or right is None or (e.op == "/" and right == 0.0):
            return None  # a literal division by zero stays a division, under the domain rule
        if e.op == "/":
            return left / right
        return {"+": left + right, "-": left - right, "*": left * right}[e.op]
    return None


def _flatten_sum(e: Expr) -> list[Expr]:
    if isinstance(e, Binary) and e.op == "+":
        return _flatten_sum(e.left) + _flatten_sum(e.right)
    return [e]


def live_names(nodes: list[Node], roots: Iterable[str]) -> set[str]:
    """Names of the nodes ``roots`` depend on, themselves included."""
    index = {n.name: n for n in nodes}
    live, stack = set(), list(roots)
    while stack:
        name = stack.pop()
        if name not in live:
            live.add(name)
            stack.extend(index[name].args)
    return live


def prune(graph: Graph, keep_ops: tuple[str, ...] = ("input", "state")) -> Graph:
    """Drop nodes no output depends on."""
    live = live_names(graph.nodes, graph.outputs.values())
    return Graph([n for n in graph.nodes if n.name in live or n.op in keep_ops], dict(graph.outputs))


def rewrite(graph: Graph, replacements: dict[str, str]) -> Graph:
    """Redirect every use of a node to another node (transitively), then prune."""

    def resolve(name: str) -> str:
        while name in replacements:
            name = replacements[name]
        return name

    nodes = [replace(n, args=tuple(resolve(a) for a in n.args)) for n in graph.nodes]
    outputs = {role: resolve(name) for role, name in graph.outputs.items()}
    return prune(Graph(nodes, outputs))


# ---------------------------------------------------------------- structural matching

#: Ops whose result does not depend on the order of their arguments.
COMMUTATIVE = ("add", "mul")


def fingerprint(spec: Spec) -> str:
    """A digest of what ``spec`` computes, independent of how it is written.

    Two specs share a fingerprint when their lowered step graphs are the same
    computation: intermediate names, description, equation order and the order of terms
    in sums and products do not enter it; parameter names and shapes, the input, the
    states (by position in ``spec.state_names``), constants, op attributes (such as a
    LayerNorm epsilon) and which value is the output do. Initializers do not (they
    change the starting point, not the function).
    """
    graph = lower(spec)
    states = {s: k for k, s in enumerate(spec.state_names)}
    shapes = {p.name: tuple(p.shape) for p in spec.params}
    ids: dict[str, str] = {}
    for n in graph.nodes:  # evaluation order: every argument already has its id
        if n.op == "input":
            key = "input"
        elif n.op == "state":
            key = f"state{states[n.name]}"
        elif n.op == "param":
            key = f"param {n.name} {shapes[n.name]}"
        else:
            args = [ids[a] for a in n.args]
            if n.op in COMMUTATIVE:
                args.sort()
            attrs = dict(n.attrs)
            if n.op == "linear":  # a matrix enters by name and declared shape
                attrs["weights"] = tuple((w, shapes[w]) for w in attrs["weights"])
            key = f"{n.op} {sorted(attrs.items())!r} ({', '.join(args)})"
        ids[n.name] = hashlib.sha256(key.encode()).hexdigest()
    outputs = []
    for role, name in graph.outputs.items():
        if role.startswith("state:"):  # the next value of a state, named by the state's position
            role = f"state:{states[role.split(':', 1)[1]]}"
        outputs.append((role, ids[name]))
    return hashlib.sha256(repr(sorted(outputs)).encode()).hexdigest()


@cache
def _standard_lstm_fingerprint() -> str:
    from .spec_loader import load_spec

    return fingerprint(load_spec("lstm"))


@cache
def _standard_gru_fingerprint() -> str:
    from .spec_loader import load_spec

    return fingerprint(load_spec("gru"))


def computes_standard_gru(spec: Spec) -> bool:
    """Whether ``spec`` computes exactly the GRU of ``torch.nn.GRU``, with its canonical parameter names.

    True when the spec's ``fingerprint`` equals the built-in ``gru`` spec's:
    r, z = sigmoid of ``x @ W_k + h @ U_k + b_k``, ``n = tanh(x @ W_n + b_n + r * (h @ U_n + b_hn))``,
    ``h' = (1 - z) * n + z * h``, state ``h``, output ``h'``. Emitters use it to hand such a
    spec to a framework's own fused GRU kernel.
    """
    return fingerprint(spec) == _standard_gru_fingerprint()


def computes_standard_lstm(spec: Spec) -> bool:
    """Whether ``spec`` computes exactly the standard LSTM, with its canonical parameter names.

    True when the spec's ``fingerprint`` equals the built-in ``lstm`` spec's:
    i, f, o = sigmoid, g = tanh of ``x @ W_k + h @ U_k + b_k``, ``c' = f * c + i * g``,
    ``h' = o * tanh(c')``, states ``(h, c)`` in that order, output ``h'``. Emitters use
    it to hand such a spec to a framework's own fused LSTM kernel.
    """
    return fingerprint(spec) == _standard_lstm_fingerprint()
