"""Reverse-mode differentiation of IR graphs: each forward op has a VJP rule written in IR ops.

``differentiate`` turns a forward graph into a backward graph. Its leaves are
``seed`` nodes (the adjoints arriving at the forward outputs) and ``saved`` nodes
(forward values the backward pass reads, under the forward node's own name). Its
outputs are ``grad:<name>`` for every forward leaf that receives an adjoint, and for
every ``linear`` node (the adjoint of its output, from which the emitter forms the
weight gradient as one GEMM over all timesteps rather than one per step).

Backward values are named after the forward value whose cotangent they are: ``d_c_next``
is what reaches ``c_next`` from all its readers, ``d_c_next_via_tanh_c_next`` the part
that comes through ``tanh_c_next``, ``d_h_next_as_h`` the seed arriving at ``h_next``
where it becomes the next step's ``h``, ``d_o_over_d_o_sum`` a derivative factor (where
``clip``, ``abs``, ``maximum`` or ``softplus`` pass their argument's change on). Each one's
``Note`` says which forward value it differentiates, for the comment generated code writes
beside its line.

Examples:
    >>> import novolstm
    >>> from novolstm.passes import build_program, readable_names
    >>> back = differentiate(readable_names(build_program(novolstm.load_spec("lstm"))).step)
    >>> sorted(back.outputs)
    ['grad:c', 'grad:h', 'grad:z_h', 'grad:z_x']
    >>> back.outputs["grad:c"], back.outputs["grad:h"]
    ('d_c', 'd_h')
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace
from typing import NamedTuple

from .ir import Graph, NameAllocator, Node, check_graph, constant_name

#: Backward-only ops: name -> what it computes (arguments in order).
BACKWARD_OPS = {
    "sigmoid_grad": "g * y * (1 - y)",
    "tanh_grad": "g * (1 - y * y)",
    "relu_grad": "g where y > 0, else 0",
    "softmax_grad": "y * (g - sum_units(g * y))",
    "normalize_units_grad": "(g - mean(g) - y * mean(g * y)) / sqrt(var(z) + eps), args g, y, z",
    "linear_t": "g @ concat(weights).T",
    "sum_units": "sum over the units axis, keeping it",
    "sum_batch": "sum over every axis but the units axis",
    "concat": "blocks placed side by side, zeros where none is given",
    "gelu_grad": "g * (Phi(z) + z * phi(z)), args g, z (Phi, phi: the standard normal's cdf and density)",
    "sign": "-1, 0 or 1: the derivative of abs (0 at 0)",
    "ge_mask": "1 where a >= b, else 0: which argument maximum (or, swapped, minimum) takes; ties go to the first",
    "in_range": "1 where lo <= z <= hi, else 0: where clip passes its argument through; attrs lo, hi",
}

_ACTIVATION_GRAD = {"sigmoid": "sigmoid_grad", "tanh": "tanh_grad", "relu": "relu_grad", "softmax": "softmax_grad"}

#: Backward ops that compute a derivative factor (``d_y_over_d_z``), not a cotangent.
_FACTORS = ("sign", "sigmoid", "in_range", "ge_mask")


class Note(NamedTuple):
    """What a backward value is: part or all of the cotangent of the forward value ``of``.

    ``through``: the forward value whose VJP computes it, or None where it gathers what
    reaches ``of`` from all its readers (a sum, or its slices side by side).
    """

    of: str
    through: str | None


def differentiate(forward: Graph, taken: Iterable[str] = ()) -> Graph:
    """The backward graph of ``forward`` (see the module's docstring).

    Args:
        forward: the forward graph (a prologue or a step).
        taken: names the backward values must not take besides the forward graph's own
            (the other graph's, where both are generated into one function).

    Returns:
        The backward graph, its values named after the cotangents they are.
    """
    return differentiate_with_notes(forward, taken)[0]


def differentiate_with_notes(forward: Graph, taken: Iterable[str] = ()) -> tuple[Graph, dict[str, Note]]:
    """``differentiate``, and each computed backward value's ``Note``.

    Examples:
        >>> import novolstm
        >>> from novolstm.passes import build_program, readable_names
        >>> step = readable_names(build_program(novolstm.load_spec("lstm"))).step
        >>> back, notes = differentiate_with_notes(step)
        >>> notes["d_tanh_c_next"], notes["d_c_next"]
        (Note(of='tanh_c_next', through='h_next'), Note(of='c_next', through=None))
    """
    differentiator = _Differentiator(forward)
    graph = differentiator.run()
    graph, notes = differentiator.named(graph, taken)
    return check_graph(graph, "differentiate"), notes


class _Differentiator:
    def __init__(self, forward: Graph):
        self.fwd = forward
        self.names = NameAllocator(n.name for n in forward.nodes)
        self.nodes: list[Node] = []
        self.saved: dict[str, Node] = {}
        self.contribs: dict[str, list[str]] = {}
        self.slices: dict[str, list[tuple[int, int, str]]] = {}
        # What each backward value is, for its name (see ``named``).
        self.context: Note | None = None  # the VJP being built: of which argument, through which value
        self.about: dict[str, Note] = {}  # value -> the context it was emitted in
        self.parts: dict[str, Note] = {}  # value -> the contribution it is (``d_<of>_via_<through>``)
        self.whole: dict[str, str] = {}  # value -> the forward value whose whole cotangent it is
        self.gathered: dict[str, str] = {}  # concat of slices' cotangents -> the sliced value
        self.seed_of: dict[str, str] = {}  # seed -> the forward output it arrives at
        self.unsummed: dict[str, tuple[str, str]] = {}  # value -> (its sum, over what: per_row, per_unit)

    # -- building blocks

    def emit(self, op, args, width, batched=True, attrs=()) -> str:
        name = self.names("t")
        self.nodes.append(Node(name, op, tuple(args), tuple(attrs), width, batched))
        if self.context is not None:
            self.about[name] = self.context
        return name

    def at(self, n: Node, arg: str) -> None:
        """The nodes emitted next compute the cotangent of ``arg`` through ``n``."""
        self.context = Note(arg, n.name)

    def read(self, name: str) -> str:
        """A forward value, as a leaf of the backward graph."""
        if name not in self.saved:
            n = self.fwd[name]
            self.saved[name] = n if n.op == "const" else Node(name, "saved", (), (("of", n.op),), n.width, n.batched)
        return name

    def add_contrib(self, target: str, grad: str):
        t = self.fwd[target]
        if t.op == "const":
            return
        g = self.node(grad)
        # Summed only here (not the cotangent of another value): named after its sum.
        own = self.context is not None and self.about.get(grad) == self.context and grad not in self.whole
        if not t.batched and g.batched:
            summed = self.emit("sum_batch", [grad], t.width, batched=False)
            if own:
                self.unsummed[grad] = (summed, "per_row")
            grad = summed
        elif t.width == "S" and g.width != "S":
            summed = self.emit("sum_units", [grad], "S")
            if own:
                self.unsummed[grad] = (summed, "per_unit")
            grad = summed
        if self.context is not None:
            self.parts.setdefault(grad, self.context)
        self.contribs.setdefault(target, []).append(grad)

    def node(self, name: str) -> Node:
        for n in reversed(self.nodes):
            if n.name == name:
                return n
        return self.saved.get(name) or self.fwd[name]

    def adjoint(self, name: str) -> str | None:
        """Sum of everything that flowed into ``name``; None when nothing did."""
        parts = list(self.contribs.pop(name, []))
        n = self.fwd[name]
        if name in self.slices:
            pieces = sorted(self.slices.pop(name))
            if [(a, b) for a, b, _ in pieces] == [(0, n.width)]:
                parts.append(pieces[0][2])
            else:
                blocks = tuple((a, b) for a, b, _ in pieces)
                parts.append(self.emit("concat", [p for _, _, p in pieces], n.width, attrs=(("blocks", blocks),)))
                self.gathered[parts[-1]] = name
        if not parts:
            return None
        if len(parts) == 1:
            whole = parts[0]
        else:
            whole = self.emit("add", parts, n.width, batched=n.batched or any(self.node(p).batched for p in parts))
        self.whole.setdefault(whole, name)
        return whole

    def negated(self, g: str) -> str:
        grad = self.node(g)
        return self.emit("neg", [g], grad.width, batched=grad.batched)

    # -- the pass

    def run(self) -> Graph:
        seeds: dict[str, list[str]] = {}
        for role, name in self.fwd.outputs.items():
            seed = self.names("t")
            self.nodes.append(Node(seed, "seed", (), (("role", role),), self.fwd[name].width))
            self.seed_of[seed] = name
            seeds.setdefault(name, []).append(seed)
        for name, ss in seeds.items():
            self.contribs.setdefault(name, []).extend(ss)

        outputs: dict[str, str] = {}
        for n in reversed(self.fwd.nodes):
            self.context = None  # sums and concatenations gather a value's whole cotangent
            g = self.adjoint(n.name)
            if g is None:
                continue
            if n.op in ("input", "state", "hoisted", "param"):
                outputs[f"grad:{n.name}"] = g
                continue
            if n.op == "linear":
                outputs[f"grad:{n.name}"] = g
            self.vjp(n, g)
        # Leaves go first so that every node is defined before it is read.
        graph = Graph(list(self.saved.values()) + self.nodes, outputs)
        return graph

    def named(self, graph: Graph, taken: Iterable[str]) -> tuple[Graph, dict[str, Note]]:
        """``graph`` with every backward value renamed after the cotangent it is, and their notes."""
        used = {n.name for n in self.fwd.nodes} | set(taken)
        mapping: dict[str, str] = {}
        notes: dict[str, Note] = {}
        # A value summed into a contribution is named after that sum, so the sums go first.
        for n in sorted(self.nodes, key=lambda n: n.name in self.unsummed):
            if n.name in self.unsummed:
                summed, per = self.unsummed[n.name]
                base = f"{mapping[summed]}_{per}"
            else:
                base = self.base_name(n)
            name, k = base, 2
            while name in used:
                name, k = f"{base}_{k}", k + 1
            used.add(name)
            mapping[n.name] = name
            if n.op != "seed":
                notes[name] = self.about.get(n.name) or Note(self.whole.get(n.name) or self.gathered[n.name], None)

        def new(name: str) -> str:
            return mapping.get(name, name)

        nodes = [replace(n, name=new(n.name), args=tuple(new(a) for a in n.args)) for n in graph.nodes]
        return Graph(nodes, {role: new(name) for role, name in graph.outputs.items()}), notes

    def base_name(self, n: Node) -> str:
        """What a backward value is called: ``d_<of>`` for a forward value's whole cotangent,
        ``d_<of>_via_<through>`` for one reader's part of it, ``d_<through>_over_d_<of>`` for a derivative factor."""
        if n.name in self.whole:
            return f"d_{self.whole[n.name]}"
        if n.op == "seed":  # one of several seeds arriving at the same output
            return f"d_{self.seed_of[n.name]}_as_{n.attr('role').split(':')[-1]}"
        if n.name in self.gathered:
            return f"d_{self.gathered[n.name]}_via_slices"
        if n.name in self.parts:
            of, through = self.parts[n.name]
            return f"d_{of}_via_{through}"
        of, through = self.about[n.name]
        if n.op == "const":
            return constant_name(n.attr("value"))
        if n.op in _FACTORS:
            return f"d_{through}_over_d_{of}"
        return f"d_{of}_via_{through}_part"

    def vjp(self, n: Node, g: str):
        a = n.args
        if n.op == "add":
            for arg in a:
                self.at(n, arg)
                self.add_contrib(arg, g)
        elif n.op == "sub":
            self.at(n, a[0])
            self.add_contrib(a[0], g)
            if self.fwd[a[1]].op != "const":  # (s - 1): no negated adjoint for the literal, never read
                self.at(n, a[1])
                self.add_contrib(a[1], self.negated(g))
        elif n.op == "neg":
            self.at(n, a[0])
            self.add_contrib(a[0], self.negated(g))
        elif n.op == "mul":
            for mine, other in ((a[0], a[1]), (a[1], a[0])):
                if self.fwd[mine].op != "const":
                    self.at(n, mine)
                    width = _wider(self.node(g).width, self.fwd[other].width)
                    # Batched if either factor is: the adjoint of a parameter-only value (1 - b)
                    # times a parameter is a vector, summed over no batch.
                    batched = self.node(g).batched or self.fwd[other].batched
                    self.add_contrib(mine, self.emit("mul", [g, self.read(other)], width, batched=batched))
        elif n.op in _ACTIVATION_GRAD:
            self.at(n, a[0])
            self.add_contrib(a[0], self.emit(_ACTIVATION_GRAD[n.op], [g, self.read(n.name)], n.width))
        elif n.op == "normalize_units":
            self.at(n, a[0])
            # Reads the input as well as the output: the backward recomputes the inverse
            # standard deviation (one reduction) rather than keeping it on the tape.
            args = [g, self.read(n.name), self.read(a[0])]
            self.add_contrib(a[0], self.emit("normalize_units_grad", args, n.width, attrs=n.attrs))
        elif n.op in ("div", "maximum", "minimum"):
            self.vjp_binary(n, g)
        elif n.op in ("exp", "log", "sqrt", "abs", "softplus", "gelu", "clip"):
            self.at(n, a[0])
            self.add_contrib(a[0], self.vjp_unary(n, g))
        elif n.op == "linear":
            self.at(n, a[0])
            attrs = (("weights", n.attr("weights")), ("linear", n.name))
            self.add_contrib(a[0], self.emit("linear_t", [g], self.fwd[a[0]].width, attrs=attrs))
        elif n.op == "slice":
            self.slices.setdefault(a[0], []).append((n.attr("start"), n.attr("stop"), g))
        else:  # pragma: no cover - the lowering produces no other op
            raise NotImplementedError(f"no VJP rule for {n.op!r}")

    def product(self, op: str, x: str, y: str, attrs=()) -> str:
        """``op(x, y)`` elementwise, of the wider width, batched if either is."""
        nx, ny = self.node(x), self.node(y)
        return self.emit(op, [x, y], _wider(nx.width, ny.width), batched=nx.batched or ny.batched, attrs=attrs)

    def constant(self, value: float) -> str:
        return self.emit("const", [], 0, batched=False, attrs=(("value", value),))

    def vjp_unary(self, n: Node, g: str) -> str:
        """The adjoint of an elementwise function's argument, from the adjoint of its result."""
        z = n.args[0]
        if n.op == "exp":  # d exp(z) = exp(z)
            return self.product("mul", g, self.read(n.name))
        if n.op == "log":  # d log(z) = 1 / z
            return self.product("div", g, self.read(z))
        if n.op == "sqrt":  # d sqrt(z) = 1 / (2 sqrt(z))
            return self.product("mul", self.product("div", g, self.read(n.name)), self.constant(0.5))
        if n.op == "abs":
            return self.product("mul", g, self.emit("sign", [self.read(z)], n.width))
        if n.op == "softplus":  # d softplus(z) = sigmoid(z)
            return self.product("mul", g, self.emit("sigmoid", [self.read(z)], n.width))
        if n.op == "gelu":
            return self.emit("gelu_grad", [g, self.read(z)], n.width)
        mask = self.emit("in_range", [self.read(z)], n.width, attrs=n.attrs)  # clip
        return self.product("mul", g, mask)

    def vjp_binary(self, n: Node, g: str):
        a, b = n.args
        if n.op == "div":  # d(a / b) = da / b - (a / b) db / b
            self.at(n, a if self.fwd[a].op != "const" else b)
            ga = self.product("div", g, self.read(b))
            if self.fwd[a].op != "const":
                self.add_contrib(a, ga)
            if self.fwd[b].op != "const":
                self.at(n, b)
                self.add_contrib(b, self.negated(self.product("mul", ga, self.read(n.name))))
            return
        first, second = (a, b) if n.op == "maximum" else (b, a)
        # Which argument the result is: a where a >= b for maximum, a where a <= b for minimum.
        self.at(n, a)
        takes_a = self.product("ge_mask", self.read(first), self.read(second))
        ga = self.product("mul", g, takes_a)
        if self.fwd[a].op != "const":
            self.add_contrib(a, ga)
        if self.fwd[b].op != "const":
            self.at(n, b)
            self.add_contrib(b, self.product("sub", g, ga))


def _wider(a, b):
    """Width of an elementwise product of widths a and b (a per-row statistic broadcasts)."""
    for w in (a, b):
        if isinstance(w, int) and w > 0:
            return w
    return a if a == "S" or b == "S" else a
