"""What every emitter shares: the loop plan derived from a program, and graph rendering.

An emitter (one per backend, in ``novolstm.backends``) is an op table (op -> code
snippet) plus the templates that wrap the rendered graphs into the framework's
native types. Everything that can be decided without knowing the framework is
decided here, once: which fused matrices exist, which forward values the backward
pass must keep, where each gradient goes.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Callable

from . import __version__
from .autodiff import differentiate
from .ir import Graph, Node, computes_standard_lstm
from .passes import Program, build_program
from .spec_model import Spec

OpTable = dict[str, Callable[[Node, list[str]], str]]

#: The entries every Python-array emitter shares (operators on arrays); an emitter's
#: table is ``{**ARRAY_OPS, ...}`` plus the framework's own functions.
ARRAY_OPS: OpTable = {
    "const": lambda n, a: repr(n.attr("value")),
    "slice": lambda n, a: f"{a[0]}[..., {units_offset(n.attr('start'))}:{units_offset(n.attr('stop'))}]",
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
    """The body of :mod:`novolstm.init` (after its NumPy import) and ``init_params``, embedded in
    generated modules (which define ``PARAM_TABLE``) so they draw the same initial weights
    without importing novolstm."""
    from . import init

    return inspect.getsource(init).split('"""', 2)[2].split("import numpy as np", 1)[1].strip() + "\n" + _INIT_PARAMS


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

    >>> print(docstring_text('ends """ here'))
    ends \"\"\" here
    '''
    return text.replace("\\", "\\\\").replace('"', '\\"')


def var(name: str) -> str:
    """The variable holding an IR value in generated code (``v_`` keeps spec names apart from template names)."""
    return f"v_{name}"


def render(graph: Graph, ops: OpTable, leaves: tuple[str, ...] = ("input", "state", "hoisted", "param", "saved", "seed")) -> list[str]:
    """One ``v_name = <snippet>`` line per non-leaf node, in order."""
    lines = []
    for n in graph.nodes:
        if n.op in leaves:
            continue
        if n.op not in ops:
            raise NotImplementedError(f"the emitter has no code for op {n.op!r}")
        lines.append(f"{var(n.name)} = {ops[n.op](n, [var(a) for a in n.args])}")
    return lines


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
    """Everything a loop template needs, derived once from a :class:`Program`."""

    program: Program
    step_backward: Graph
    prologue_backward: Graph
    linears: tuple[LinearInfo, ...]
    step_tape: tuple[str, ...]  # forward step values the backward pass reads per timestep
    prologue_tape: tuple[str, ...]  # prologue values the prologue's backward pass reads
    vector_params: tuple[str, ...]  # unbatched parameters read by any graph

    @property
    def spec(self) -> Spec:
        return self.program.spec

    @property
    def standard_lstm(self) -> bool:
        """Whether the cell computes exactly the standard LSTM (see :func:`novolstm.ir.computes_standard_lstm`):
        an emitter may then hand it to a framework's own fused LSTM kernel."""
        return computes_standard_lstm(self.spec)

    def header(self, backend: str) -> str:
        spec = self.spec
        return (
            f"Generated by novolstm {__version__} for the {backend} backend from spec {spec.name!r}\n"
            f"(sha256 {spec.hash}). Generated, do not edit: change the spec and generate again."
        )

    def fusion_entries(self, concat: Callable[[list[str]], str], zeros: Callable[[str], str]) -> list[str]:
        """``"w_L": <expr>,`` lines of the ``fuse`` function's dict, in any framework's spelling."""
        lines = []
        for L in self.linears:
            ws = [f'params["{w}"]' for w in L.weights]
            lines.append(f'"w_{L.name}": {ws[0] if len(ws) == 1 else concat(ws)},')
            if L.has_bias:
                ref = f'params["{L.weights[0]}"]'
                bs = [f'params["{b}"]' if b else zeros(ref) for b in L.biases]
                lines.append(f'"b_{L.name}": {bs[0] if len(bs) == 1 else concat(bs)},')
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
    return array if count == 1 else f"{array}[..., {units_offset(k)}:{units_offset(k + 1)}]"


def plan(spec: Spec) -> LoopPlan:
    program = build_program(spec)
    step_back = differentiate(program.step)
    pro_back = differentiate(program.prologue)
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
    vector_params = tuple(
        n.name for n in program.prologue.nodes + program.step.nodes if n.op == "param"
    )
    return LoopPlan(program, step_back, pro_back, linears, tuple(step_tape), tuple(prologue_tape), tuple(dict.fromkeys(vector_params)))
