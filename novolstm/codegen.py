"""What every emitter shares: the loop plan derived from a program, and graph rendering.

An emitter (one per backend, in ``novolstm.backends``) is an op table (op -> code
snippet) plus the templates that wrap the rendered graphs into the framework's
native types. Everything that can be decided without knowing the framework is
decided here, once: which fused matrices exist, which forward values the backward
pass must keep, where each gradient goes.
"""

from __future__ import annotations

import ast
import functools
import importlib.resources
import inspect
import re
from collections.abc import Callable
from dataclasses import dataclass

from . import __version__
from .autodiff import Note, differentiate_with_notes
from .ir import Graph, Node, computes_standard_lstm
from .passes import LEAVES, Program, build_program, cse, readable_names, split_slices
from .spec_model import Spec

OpTable = dict[str, Callable[[Node, list[str]], str]]

#: The entries every Python-array emitter shares (operators on arrays); an emitter's
#: table is ``{**ARRAY_OPS, ...}`` plus the framework's own functions.
ARRAY_OPS: OpTable = {
    "const": lambda n, a: repr(n.attr("value")),
    "slice": lambda n, a: f"{a[0]}[..., {slice_bounds(units_offset(n.attr('start')), units_offset(n.attr('stop')))}]",
    "add": lambda n, a: " + ".join(a),
    "sub": lambda n, a: f"{a[0]} - {a[1]}",
    "mul": lambda n, a: f"{a[0]} * {a[1]}",
    "neg": lambda n, a: f"-{a[0]}",
}


def concat_op(zeros: str, cat: str) -> Callable[[Node, list[str]], str]:
    """The ``concat`` entry of an op table: blocks side by side, zeros where no block is given.

    ``zeros`` is formatted with ``like`` (an argument, for shape and dtype) and ``width``;
    ``cat`` with ``parts``, the comma-separated pieces.
    """

    def op(n: Node, a: list[str]) -> str:
        parts, at, args = [], 0, iter(a)
        for start, stop in n.attr("blocks"):
            if start > at:
                parts.append(zeros.format(like=a[0], width=units_offset(start - at)))
            parts.append(next(args))
            at = stop
        if at < n.width:
            parts.append(zeros.format(like=a[0], width=units_offset(n.width - at)))
        return cat.format(parts=", ".join(parts))

    return op


#: every generated module's ``init_params``, over its own ``PARAM_TABLE``
_INIT_PARAMS = '''

def init_params(input_size, units, seed=0, dtype="float64"):
    """Canonical parameters (NumPy arrays), drawn as novolstm.init_params draws them."""
    return init_from_table(PARAM_TABLE, input_size, units, seed, dtype)'''


def init_source() -> str:
    """The body of ``novolstm.init`` (after its NumPy import) and ``init_params``, embedded in
    generated modules (which define ``PARAM_TABLE``) so they draw the same initial weights
    without importing novolstm."""
    from . import init

    return inspect.getsource(init).split('"""', 2)[2].split("import numpy as np", 1)[1].strip() + "\n" + _INIT_PARAMS


#: The lines that open and close a runtime module's stand-in block (see inline_runtime).
SPEC_BLOCK = ("# --- spec: generated modules replace this block", "# --- end of spec block")


def inline_runtime(package: str, docstring: str, spec_block: str) -> str:
    """The source of a generated module: ``docstring``, then the backend's runtime module inlined.

    ``package`` is a backend package (``novolstm.backends.torch``) whose ``runtime.py`` is real,
    importable code; it holds one block of stand-ins for what depends on the spec (its
    constants and the generated step functions), between the two lines of ``SPEC_BLOCK``.
    The generated module is the runtime's text after its docstring, with that block
    replaced by ``spec_block``, so it stays standalone: it imports only the framework. The
    runtime file is read as text, never imported (that would import the framework).
    """
    head, tail = _runtime_parts(package)
    lines = [f'"""{docstring}\n"""', *head, spec_block.strip("\n"), *tail]
    return "\n".join(lines).rstrip("\n") + "\n"


@functools.cache
def _runtime_parts(package: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """A runtime module's lines after its docstring: (before the spec block, after it); read once."""
    text = importlib.resources.files(package).joinpath("runtime.py").read_text(encoding="utf-8")
    first = ast.parse(text).body[0]
    if not (isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant)):
        raise ValueError(f"{package}.runtime: expected a module docstring")
    body = text.split("\n")[first.end_lineno :]
    start = next(k for k, line in enumerate(body) if line.startswith(SPEC_BLOCK[0]))
    stop = next(k for k, line in enumerate(body) if line.startswith(SPEC_BLOCK[1]))
    return tuple(body[:start]), tuple(body[stop + 1 :])


#: The line length of generated code (the package's ruff setting).
LINE_LENGTH = 120


class Code(str):
    """Source text that ``literal`` writes as it is (an expression, not a string)."""


def literal(value: object, column: int = 0, indent: int = 0) -> str:
    """``value`` (str, number, bool, None, tuple, list, dict) as formatted source: double quotes, and
    a collection that does not fit on the line from ``column`` one item per line, as ruff formats it.

    Examples:
        >>> literal({"W": (("input", "units"), "zeros", {})})
        '{"W": (("input", "units"), "zeros", {})}'
        >>> print(literal(("a",) * 3, column=115))
        (
            "a",
            "a",
            "a",
        )
    """
    if isinstance(value, Code):
        return str(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'
    if isinstance(value, dict):
        items = [(literal(k), v) for k, v in value.items()]
        inline = "{" + ", ".join(f"{k}: {literal(v)}" for k, v in items) + "}"
        if column + len(inline) <= LINE_LENGTH:
            return inline
        pad = " " * (indent + 4)
        rows = [f"{pad}{k}: {literal(v, indent + 4 + len(k) + 2, indent + 4)}," for k, v in items]
        return "{\n" + "\n".join(rows) + "\n" + " " * indent + "}"
    if isinstance(value, (tuple, list)):
        open_, close = ("(", ")") if isinstance(value, tuple) else ("[", "]")
        parts = [literal(v) for v in value]
        inline = open_ + ", ".join(parts) + ("," if len(parts) == 1 and open_ == "(" else "") + close
        if column + len(inline) <= LINE_LENGTH:
            return inline
        pad = " " * (indent + 4)
        rows = [f"{pad}{literal(v, indent + 4, indent + 4)}," for v in value]
        return open_ + "\n" + "\n".join(rows) + "\n" + " " * indent + close
    return repr(value)


def targets(names: list[str]) -> str:
    """Assignment targets unpacking a sequence of ``len(names)`` values: ``a, b`` or ``(a,)``."""
    return f"({names[0]},)" if len(names) == 1 else ", ".join(names)


def tuple_of(names: list[str]) -> str:
    """A tuple expression of ``names``: ``(a, b)``, ``(a,)`` or ``()``."""
    return f"({names[0]},)" if len(names) == 1 else "(" + ", ".join(names) + ")"


def assign(names: list[str], values: list[str]) -> str:
    """``a, b = x, y`` (or ``a = x`` for one name); one value a line, as ruff formats it, when long."""
    line = f"{', '.join(names)} = {', '.join(values)}"
    if len(values) < 2 or len(line) <= WRAP_AT:
        return line
    # The magic trailing comma keeps ruff from joining the lines again at any indentation.
    return "\n".join([f"{', '.join(names)} = (", *(f"    {v}," for v in values), ")"])


#: Generated lines longer than this are written one item a line (ruff's limit is 120, less indentation).
WRAP_AT = 96


def dict_items(items: list[str], indent: str, room: int) -> str:
    """The inside of ``{...}`` for ``items`` (``"key": value``): one line, or one item a line when
    longer than ``room`` characters. ``indent`` is the indentation of the line holding the braces.

    Examples:
        >>> dict_items(['"a": 1', '"b": 2'], "    ", 20)
        '"a": 1, "b": 2'
        >>> print("{" + dict_items(['"a": 1', '"b": 2'], "", 5) + "}")
        {
            "a": 1,
            "b": 2,
        }
    """
    text = ", ".join(items)
    if len(text) <= room:
        return text
    return "\n" + "".join(f"{indent}    {item},\n" for item in items) + indent


def slice_bounds(start: str, stop: str) -> str:
    """``start:stop`` spaced as ruff formats it (``H : 2 * H`` where a bound is an expression)."""
    return f"{start} : {stop}" if " " in start + stop else f"{start}:{stop}"


def linear_call(n, a) -> str:
    """An OPS entry for ``linear``: ``_linear(x, w_<L>[, b_<L>])``, for generated modules that define ``_linear``."""
    bias = f", b_{n.name}" if any(n.attr("biases")) else ""
    return f"_linear({a[0]}, w_{n.name}{bias})"


def units_offset(blocks: int) -> str:
    """Source text for ``blocks * H`` (``H`` is the units variable of generated code)."""
    return "0" if blocks == 0 else "H" if blocks == 1 else f"{blocks} * H"


def docstring_text(text: str) -> str:
    r'''Free text from a spec, made safe inside a triple-quoted docstring of generated code.

    A spec is data: its description must never end the docstring and inject code.

    Examples:
        >>> print(docstring_text('ends """ here'))
        ends \"\"\" here
    '''
    return text.replace("\\", "\\\\").replace('"', '\\"')


_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_ASSIGNMENT = re.compile(r"^\s*[A-Za-z_][A-Za-z0-9_, ()]*=(?!=)(.*)$")


def names_read(lines: list[str]) -> set[str]:
    """The identifiers that source ``lines`` read (an assignment's targets are not read).

    Examples:
        >>> sorted(names_read(["a = b + c", "f(d)"]))
        ['b', 'c', 'd', 'f']
    """
    out: set[str] = set()
    for line in lines:
        match = _ASSIGNMENT.match(line)
        out.update(_IDENTIFIER.findall(match.group(1) if match else line))
    return out


def used_loads(loads: list[str], *bodies: list[str]) -> list[str]:
    """The lines ``name = ...`` of ``loads`` whose name some line of ``bodies`` reads: no unused locals.

    Examples:
        >>> used_loads(["w = p['w']", "b = p['b']"], ["y = x @ w"])
        ["w = p['w']"]
    """
    read = names_read([line for body in bodies for line in body])
    return [line for line in loads if line.split("=", 1)[0].strip() in read]


def var(name: str) -> str:
    """The variable holding an IR value in generated code (``v_`` keeps spec names apart from template names)."""
    return f"v_{name}"


def render(
    graph: Graph, ops: OpTable, leaves: tuple[str, ...] = LEAVES, comments: dict[str, str] | None = None
) -> list[str]:
    """One ``v_name = <snippet>`` line per non-leaf node, in order.

    Slices of one value become one ``split`` (see ``passes.split_slices``) where the table
    has a ``split`` entry: one line that unpacks the call into the pieces' names.
    ``comments``: node name -> what it computes (see ``expressions``), written with its line.
    """
    if "split" in ops:
        graph = split_slices(graph)
    return [line for n in graph.nodes if n.op not in leaves for line in render_node(n, ops, comments)]


def render_node(n: Node, ops: OpTable, comments: dict[str, str] | None = None, code: str | None = None) -> list[str]:
    """The source line of one node (none for a ``piece``: its ``split`` assigns it), with its comment.

    ``code``: the right-hand side, where the caller renders it otherwise than ``ops`` does.
    """
    if n.op == "piece":
        return []
    if code is None:
        if n.op not in ops:
            raise NotImplementedError(f"the emitter has no code for op {n.op!r}")
        code = ops[n.op](n, [var(a) for a in n.args])
    if n.op == "split":
        pieces = [name for _, _, name in n.attr("pieces")]
        line = f"{targets([var(name) if name else '_' for name in pieces])} = {code}"
        what = "; ".join(f"{p} = {comments[p]}" for p in pieces if p and comments and p in comments)
    else:
        line = f"{var(n.name)} = {code}"
        what = comments.get(n.name, "") if comments else ""
    return with_comment(line, what)


def with_comment(line: str, comment: str, indent: int = 8) -> list[str]:
    """``line`` with ``comment`` after it, or on the line before where that would pass the line length
    (``indent``: the column the line will sit at)."""
    if not comment:
        return [line]
    if indent + len(line) + 4 + len(comment) <= LINE_LENGTH:
        return [f"{line}  # {comment}"]
    return [f"# {comment}", line]


_UNARY_WORDS = {"normalize_units": "normalize"}


def expressions(program: Program) -> dict[str, str]:
    """Node name -> the spec expression it computes (``x @ W_i + b_i + h @ U_i``), in the spec's names:
    what generated code writes beside each line of the prologue and the step.

    A value the spec names (an input, a state, a parameter, an equation's result) appears by
    its name inside others; a fused value of several blocks is the list of its blocks.

    Examples:
        >>> import novolstm
        >>> e = expressions(readable_names(build_program(novolstm.load_spec("lstm"))))
        >>> e["c_next"], e["g"]
        ('f * c + i * g', 'tanh(x @ W_g + b_g + h @ U_g)')
    """
    spec = program.spec
    named = {spec.input, *spec.state_names, *spec.param_names, *(name for name, _ in spec.equations)}
    nodes = {n.name: n for g in (program.prologue, program.step) for n in g.nodes if n.op != "hoisted"}

    def block(name: str, k: int, inner: bool) -> tuple[str, int]:
        # (text, precedence): 3 a name or a call, 2 a product, 1 a sum or difference.
        n = nodes[name]
        if (inner and name in named) or n.op in ("input", "state", "param"):
            return name, 3
        if n.op == "const":
            return repr(n.attr("value")), 3
        if n.op == "linear":
            operand, prec = block(n.args[0], 0, True)
            bias = n.attr("biases")[k]
            text = f"{operand if prec == 3 else f'({operand})'} @ {n.attr('weights')[k]}"
            return (text + f" + {bias}", 1) if bias else (text, 2)
        if n.op == "slice":
            return block(n.args[0], n.attr("start") + k, inner)
        parts = [block(a, k if nodes[a].width == n.width else 0, True) for a in n.args]
        if n.op == "add":
            return " + ".join(text for text, _ in parts), 1
        if n.op == "mul":
            return " * ".join(text if prec >= 2 else f"({text})" for text, prec in parts), 2
        if n.op == "sub":
            (left, _), (right, prec) = parts
            return f"{left} - {right if prec >= 2 else f'({right})'}", 1
        if n.op == "neg":
            text, prec = parts[0]
            return f"-{text if prec == 3 else f'({text})'}", 2
        return f"{_UNARY_WORDS.get(n.op, n.op)}({', '.join(text for text, _ in parts)})", 3

    out = {}
    for name, n in nodes.items():
        if n.op in ("input", "state", "param", "const"):
            continue
        blocks = n.width if isinstance(n.width, int) else 1
        texts = [block(name, k, False)[0] for k in range(blocks)]
        out[name] = texts[0] if blocks == 1 else "[" + ", ".join(texts) + "]"
    return out


def split_sizes(n: Node) -> str:
    """A ``split`` node's piece widths as source: ``[3 * H, H]``."""
    return "[" + ", ".join(units_offset(stop - start) for start, stop, _ in n.attr("pieces")) + "]"


def split_cuts(n: Node) -> str:
    """A ``split`` node's cut positions (where each piece after the first starts) as source: ``[3 * H]``."""
    return "[" + ", ".join(units_offset(start) for start, _, _ in n.attr("pieces")[1:]) + "]"


def param_table(spec: Spec) -> dict[str, tuple[tuple[str, ...], str, dict]]:
    """Parameter name -> (symbolic shape, initializer name, initializer args): what
    ``novolstm.init.init_from_table`` draws from, and generated modules' ``PARAM_TABLE``.

    Examples:
        >>> import novolstm
        >>> param_table(novolstm.load_spec("lstm"))["b_f"]
        (('units',), 'ones', {})
    """
    return {p.name: (tuple(p.shape), p.init.name, dict(p.init.args)) for p in spec.params}


@dataclass(frozen=True)
class LinearInfo:
    """One fused matrix: ``w_<name>`` (in_width, k*H) and optionally ``b_<name>`` (k*H,)."""

    name: str
    operand: str
    weights: tuple[str, ...]
    biases: tuple  # a parameter name or None per block
    in_step: bool

    @property
    def has_bias(self) -> bool:
        return any(b is not None for b in self.biases)


@dataclass(frozen=True)
class LoopPlan:
    """Everything a loop template needs, derived once from a ``Program``."""

    program: Program
    step_backward: Graph
    prologue_backward: Graph
    linears: tuple[LinearInfo, ...]
    step_tape: tuple[str, ...]  # forward step values the backward pass reads per timestep
    prologue_tape: tuple[str, ...]  # prologue values the prologue's backward pass reads
    vector_params: tuple[str, ...]  # unbatched parameters read by any graph
    step_backward_comments: dict[str, str]  # backward value -> what it differentiates (see backward_comments)
    prologue_backward_comments: dict[str, str]

    @property
    def spec(self) -> Spec:
        return self.program.spec

    @property
    def standard_lstm(self) -> bool:
        """Whether the cell computes exactly the standard LSTM (see ``novolstm.ir.computes_standard_lstm``):
        an emitter may then hand it to a framework's own fused LSTM kernel."""
        return computes_standard_lstm(self.spec)

    @property
    def expressions(self) -> dict[str, str]:
        """Node name -> the spec expression it computes, for the comments of generated lines."""
        return expressions(self.program)

    @property
    def param_table(self) -> dict[str, tuple[tuple[str, ...], str, dict]]:
        """The spec's parameter table (see ``param_table``), as generated modules carry it."""
        return param_table(self.spec)

    @property
    def input_param(self) -> str:
        """A parameter shaped (input, ...): its first axis gives the input size."""
        return next(p.name for p in self.spec.params if p.shape[0] == "input")

    @property
    def units_param(self) -> str:
        """A parameter whose last axis gives the number of units."""
        return self.spec.params[0].name

    @property
    def bias_names(self) -> tuple[str, ...]:
        """Parameters that enter only as a projection's bias (what ``bias=False`` leaves out)."""
        return tuple(dict.fromkeys(b for L in self.linears for b in L.biases if b))

    def constants(self, **extra: object) -> str:
        """The spec constants every generated module defines, as source lines (``NAME = repr``)."""
        values = {
            "SPEC_NAME": self.spec.name,
            "SPEC_HASH": self.spec.hash,
            "CLASS_NAME": self.spec.class_name,
            "STATE_NAMES": tuple(self.spec.state_names),
            "PARAM_NAMES": tuple(self.spec.param_names),
            "PARAM_TABLE": self.param_table,
            "INPUT_PARAM": self.input_param,
            "UNITS_PARAM": self.units_param,
            "BIAS_NAMES": self.bias_names,
            **extra,
        }
        return "\n".join(f"{name} = {literal(value, len(name) + 3)}" for name, value in values.items())

    def header(self, backend: str) -> str:
        spec = self.spec
        return (
            f"Generated by novolstm {__version__} for the {backend} backend from spec {spec.name!r}\n"
            f"(sha256 {spec.hash}). Generated, do not edit: change the spec and generate again."
        )

    def fusion_entries(
        self, concat: Callable[[list[str]], str], zeros: Callable[[str], str], indent: int = 8
    ) -> list[str]:
        """``"w_L": <expr>,`` lines of the ``fuse`` function's dict, in any framework's spelling.

        ``concat(parts)`` is ``<function>([<parts>], <axis keyword>)``; ``indent``: the column of the entries.
        """
        lines: list[str] = []

        def entry(key: str, parts: list[str]) -> None:
            line = f'"{key}": {parts[0] if len(parts) == 1 else concat(parts)},'
            if indent + len(line) <= LINE_LENGTH:
                lines.append(line)
                return
            # One part per line, as ruff formats a call whose list does not fit.
            head, tail = concat(["\0"]).split("[\0]")
            lines.extend([f'"{key}": {head}', "    [", *(f"        {p}," for p in parts), "    ],"])
            lines.extend([f"    {tail.lstrip(', ').rstrip(')')},", "),"])

        for L in self.linears:
            entry(f"w_{L.name}", [f'params["{w}"]' for w in L.weights])
            if L.has_bias:
                ref = f'params["{L.weights[0]}"]'
                entry(f"b_{L.name}", [f'params["{b}"]' if b else zeros(ref) for b in L.biases])
        return lines

    def param_grad_pieces(self) -> dict[str, list[str]]:
        """Canonical parameter -> source expressions whose sum is its gradient.

        Fused weight gradients are ``gw_<L>`` / ``gb_<L>`` and are cut into blocks here;
        vector parameters collect ``gp_<name>`` from the step and the prologue.
        """
        pieces: dict[str, list[str]] = {p: [] for p in self.spec.param_names}
        for L in self.linears:
            for k, w in enumerate(L.weights):
                pieces[w].append(_block(f"gw_{L.name}", k, len(L.weights)))
                if L.biases[k]:
                    pieces[L.biases[k]].append(_block(f"gb_{L.name}", k, len(L.weights)))
        for name in self.vector_params:
            pieces[name].append(f"gp_{name}")
        return pieces


def _block(array: str, k: int, count: int) -> str:
    return array if count == 1 else f"{array}[..., {slice_bounds(units_offset(k), units_offset(k + 1))}]"


def backward_comments(notes: dict[str, Note], forward: dict[str, str]) -> dict[str, str]:
    """Backward value -> the comment generated code writes beside its line: ``d(<expression>) / d(<value>)``,
    the derivative of a forward spec expression it applies (``forward``: see ``expressions``), or
    ``d(loss) / d(<value>)`` where it gathers all of a value's cotangent.

    Examples:
        >>> import novolstm
        >>> from novolstm.autodiff import differentiate_with_notes
        >>> program = readable_names(build_program(novolstm.load_spec("lstm")))
        >>> _, notes = differentiate_with_notes(program.step)
        >>> comments = backward_comments(notes, expressions(program))
        >>> comments["d_tanh_c_next"], comments["d_c_next"]
        ('d(o * tanh(c_next)) / d(tanh_c_next)', 'd(loss) / d(c_next)')
    """
    return {
        name: f"d({forward.get(through, through)}) / d({of})" if through else f"d(loss) / d({of})"
        for name, (of, through) in notes.items()
    }


def plan(spec: Spec) -> LoopPlan:
    program = readable_names(build_program(spec))
    # Both backward passes run in one generated function: neither takes a name of the other's graphs.
    every_name = [n.name for graph in (program.prologue, program.step) for n in graph.nodes]
    step_back, step_notes = differentiate_with_notes(program.step, every_name)
    pro_back, pro_notes = differentiate_with_notes(program.prologue, every_name + [n.name for n in step_back.nodes])
    step_back, pro_back = cse(step_back), cse(pro_back)
    forward = expressions(program)
    linears = tuple(
        LinearInfo(n.name, n.args[0], n.attr("weights"), n.attr("biases"), in_step)
        for graph, in_step in ((program.prologue, False), (program.step, True))
        for n in graph.nodes
        if n.op == "linear"
    )
    step_tape = [n.name for n in step_back.nodes if n.op == "saved" and n.attr("of") not in ("param",)]
    for L in linears:  # the operands of step projections feed the weight-gradient GEMM
        if L.in_step and L.operand not in step_tape:
            step_tape.append(L.operand)
    prologue_tape = [n.name for n in pro_back.nodes if n.op == "saved" and n.attr("of") not in ("param", "input")]
    for L in linears:  # likewise in the prologue, where a projection reads more than the input (f @ U, f hoisted)
        if not L.in_step and program.prologue[L.operand].op != "input" and L.operand not in prologue_tape:
            prologue_tape.append(L.operand)
    vector_params = tuple(n.name for n in program.prologue.nodes + program.step.nodes if n.op == "param")
    return LoopPlan(
        program,
        step_back,
        pro_back,
        linears,
        tuple(step_tape),
        tuple(prologue_tape),
        tuple(dict.fromkeys(vector_params)),
        backward_comments({k: v for k, v in step_notes.items() if k in step_back}, forward),
        backward_comments({k: v for k, v in pro_notes.items() if k in pro_back}, forward),
    )
