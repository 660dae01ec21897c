"""The C++ emitter: one translation unit per spec running the whole sequence, forward and backward.

The same ``LoopPlan`` the Python emitters render is rendered here
into C++ for PyTorch's CPU extension API (ATen): the prologue (the input projection of
every timestep, one GEMM) before the loop, one recurrent GEMM per step (in float32 with
AVX-512 the runtime's kernel on a weight packed once per call, else oneDNN or BLAS through
ATen), and the step's elementwise work fused into one loop over the batch rows,
each row's values computed while they sit in the cache: consecutive nodes of one width in
one loop over the row's elements, the values only that loop reads held in registers, a
row op's reductions (LayerNorm's statistics, softmax's sum) made before it (see
``GraphCode``). A GEMM whose product is added to another value starts its sums from that
value's rows; a concat's arguments are written into its blocks; the values the tape keeps,
the outputs, the next state and the gradients the weight-gradient GEMMs read are written
where they go, with no copy. The tape keeps each LayerNorm's 1 / std per row, which the
backward pass reads rather than recomputing it (``statistics``). The backward pass runs the
step's backward graph in reverse time and forms the weight gradients as one GEMM per
projection after the loop, over the whole sequence's rows in place. Large buffers live across
calls (``Workspace``).
``runtime.h`` holds the row kernels (softmax, LayerNorm statistics, their VJPs) and the
GEMMs, and is inlined at the top.

The generated source defines two operators in a namespace of its own (``namespace``
below): ``forward(x, mask, reverse, keep_tape, state, params)`` returning the outputs,
the final state and the tape, and ``backward(g_outputs, g_final, x, mask, reverse,
need_input, params, tape)`` returning the gradients with respect to the input, the
initial state and every parameter. Both are templated over float and double.

Example:
    >>> import novolstm
    >>> from novolstm.codegen import plan
    >>> kernel = generate(plan(novolstm.load_spec("gru")), namespace="demo")
    >>> "TORCH_LIBRARY(demo, m)" in kernel.source, kernel.layout.states
    (True, 1)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from importlib import resources

from novolstm.codegen import LoopPlan
from novolstm.ir import Graph, Node, live_names

from .statistics import RSTD_GRAD, STATISTIC, saved_statistics

NAME = "cpp"

#: Elementwise ops: op -> C++ expression over the arguments' element expressions.
OPS: dict[str, Callable[[Node, list[str]], str]] = {
    "const": lambda n, a: f"T({float(n.attr('value'))!r})",
    "add": lambda n, a: " + ".join(a),
    "sub": lambda n, a: f"{a[0]} - {a[1]}",
    "mul": lambda n, a: f"{a[0]} * {a[1]}",
    "neg": lambda n, a: f"-{a[0]}",
    "sigmoid": lambda n, a: f"rt::sigmoid({a[0]})",
    "tanh": lambda n, a: f"rt::tanh({a[0]})",
    "relu": lambda n, a: f"rt::maximum({a[0]}, T(0))",  # NaN stays NaN, as np.maximum and torch.relu
    "sigmoid_grad": lambda n, a: f"{a[0]} * {a[1]} * (T(1) - {a[1]})",
    "tanh_grad": lambda n, a: f"{a[0]} * (T(1) - {a[1]} * {a[1]})",
    "relu_grad": lambda n, a: f"({a[1]} > T(0) ? {a[0]} : T(0))",
    # The domain rule (docs/numerics.md): IEEE values, never a trap (the build has -fno-trapping-math).
    "div": lambda n, a: f"{a[0]} / {a[1]}",
    "exp": lambda n, a: f"rt::exp({a[0]})",
    "log": lambda n, a: f"std::log({a[0]})",
    "sqrt": lambda n, a: f"std::sqrt({a[0]})",
    "abs": lambda n, a: f"std::fabs({a[0]})",
    "softplus": lambda n, a: f"rt::softplus({a[0]})",
    "gelu": lambda n, a: f"rt::gelu({a[0]})",
    "maximum": lambda n, a: f"rt::maximum({a[0]}, {a[1]})",
    "minimum": lambda n, a: f"rt::minimum({a[0]}, {a[1]})",
    "clip": lambda n, a: f"rt::clip({a[0]}, T({float(n.attr('lo'))!r}), T({float(n.attr('hi'))!r}))",
    "gelu_grad": lambda n, a: f"rt::gelu_grad({a[0]}, {a[1]})",
    "sign": lambda n, a: f"rt::sign({a[0]})",
    "ge_mask": lambda n, a: f"({a[0]} >= {a[1]} ? T(1) : T(0))",
    "in_range": lambda n, a: (
        f"({a[0]} >= T({float(n.attr('lo'))!r}) && {a[0]} <= T({float(n.attr('hi'))!r}) ? T(1) : T(0))"
    ),
}

#: Row ops: op -> C++ statement over one row (``o`` the output row, ``a<k>`` argument rows, ``n`` elements).
ROW_OPS: dict[str, Callable[[Node], str]] = {
    "softmax": lambda n: "rt::softmax_row(a0, o, N);",
    "normalize_units": lambda n: f"rt::normalize_row(a0, o, N, {float(n.attr('eps'))!r});",
    "softmax_grad": lambda n: "rt::softmax_grad_row(a0, a1, o, N);",
    "normalize_units_grad": lambda n: f"rt::normalize_grad_row(a0, a1, a2, o, N, {float(n.attr('eps'))!r});",
}


def _normalize_parts(n: Node, rows: list[str], out: str, tag: str) -> tuple[list[str], str]:
    eps = float(n.attr("eps"))
    return (
        [f"T mean_{tag};", f"const T rstd_{tag} = rt::inverse_std({rows[0]}, N, {eps!r}, &mean_{tag});"],
        f"({rows[0]}[j] - mean_{tag}) * rstd_{tag}",
    )


def _normalize_grad_parts(n: Node, rows: list[str], out: str, tag: str) -> tuple[list[str], str]:
    g, y, z = rows
    if n.op == RSTD_GRAD:  # z is the row's saved statistic (statistics.py)
        rstd = [f"const T rstd_{tag} = {z}[0];"]
    else:
        rstd = [
            f"T mean_{tag};",
            f"const T rstd_{tag} = rt::inverse_std({z}, N, {float(n.attr('eps'))!r}, &mean_{tag});",
        ]
    return (
        [
            *rstd,
            f"T mean_gy_{tag};",
            f"const T mean_g_{tag} = rt::row_sum_and_dot({g}, {y}, N, &mean_gy_{tag}) / T(N);",
            f"mean_gy_{tag} /= T(N);",
        ],
        f"({g}[j] - mean_g_{tag} - {y}[j] * mean_gy_{tag}) * rstd_{tag}",
    )


#: Row ops split for a fused loop (see GraphCode._segment): op -> (node, argument row pointers,
#: output row pointer, a tag for local names) -> (the reductions over whole argument rows, made
#: before the loop over the row's elements; the element expression inside it). The same
#: arithmetic as ROW_OPS' runtime functions.
ROW_PARTS: dict[str, Callable[[Node, list[str], str, str], tuple[list[str], str]]] = {
    # exp(z - max z) is written into the output row first, its sum's reciprocal scales it in the loop
    "softmax": lambda n, r, o, tag: (
        [f"const T inv_{tag} = rt::softmax_exp_row({r[0]}, {o}, N);"],
        f"{o}[j] * inv_{tag}",
    ),
    "normalize_units": _normalize_parts,
    "softmax_grad": lambda n, r, o, tag: (
        [f"const T dot_{tag} = rt::row_dot({r[0]}, {r[1]}, N);"],
        f"{r[1]}[j] * ({r[0]}[j] - dot_{tag})",
    ),
    "normalize_units_grad": _normalize_grad_parts,
    RSTD_GRAD: _normalize_grad_parts,
}
OPS_AND_ROWS = frozenset(OPS) | frozenset(ROW_PARTS)

GEMM_OPS = ("linear", "linear_t")
LEAVES = ("input", "state", "hoisted", "param", "saved", "seed", "const")


class Unsupported(NotImplementedError):
    """The spec uses a construct this emitter does not compile; the generated loop runs it."""


def elems(width) -> str:
    """C++ expression for the elements per row of a value of IR width ``width``."""
    if width == "I":
        return "I"
    if width == "S":
        return "1"
    if width == 1:
        return "H"
    return f"{width} * H"


def elems_of(width, units: int, inputs: int) -> int:
    """``elems`` evaluated (for the fake tensors' shapes)."""
    return inputs if width == "I" else 1 if width == "S" else width * units


@dataclass(frozen=True)
class TapeEntry:
    """One tensor of the tape: ``(time, batch, elements of width)``, or ``(elements,)`` when not batched."""

    name: str
    width: object
    per_step: bool  # True: copied at every step; False: a prologue buffer, returned whole
    batched: bool = True  # False: a prologue value of the parameters only (one row every row reads)
    statistic: bool = False  # True: a LayerNorm's 1 / std per row, width "S" (statistics.py)


@dataclass(frozen=True)
class Layout:
    """What the Python side needs to describe the operators (argument counts, fake shapes)."""

    namespace: str
    states: int
    params: tuple[str, ...]
    tape: tuple[TapeEntry, ...]
    units_param: str
    units_axis: int


@dataclass(frozen=True)
class Kernel:
    source: str
    layout: Layout


def runtime_source() -> str:
    """The runtime header's text (inlined into every generated translation unit)."""
    return resources.files(__package__).joinpath("runtime.h").read_text()


# ---------------------------------------------------------------- graph rendering


@dataclass
class Leaf:
    """How a leaf reaches the generated code: a View expression, and a tensor expression if one exists."""

    view: str
    tensor: str | None = None


class GraphCode:
    """One graph rendered: buffer allocations (before the loop) and the body (inside it).

    Every computed value the rest of the program reads has a buffer (rows, elements): its own,
    allocated once, or a view of another (a block of the concat that is its only reader; a
    placement the caller gives, such as the step's row of the tape). Consecutive row-wise nodes
    form one loop over the rows, and within it, consecutive nodes of one width one loop over the
    row's elements (a segment; see ``_segment``), values read only inside it held in registers.
    A GEMM whose only reader adds another value to it starts its sums from that value's rows.

    Args:
        graph: the graph.
        rows: C++ expression for the rows of a batched value.
        prefix: tells this rendering's names apart from another's.
        leaves: how each leaf the graph reads reaches the code.
        skip: values another rendering computes (their views and tensors come from ``tensors``).
        tensors: value -> tensor expression, from the rendering that computed them.
        placed: value -> C++ expression of the View that holds it at the current step (made at
            the top of the body) and whether the expression reads the value's own buffer.
        keep: values read outside the graph (besides its outputs), so kept in buffers.
        tape_only: values of ``keep`` that only the tape reads: where nothing else keeps them, they
            are written only when the call records its tape (the forward's ``keep_tape``), else
            held in registers like any value read only inside its segment.
        workspace: where buffers and packed weights live across calls (default: new ones each call).
        statistics: normalize node -> the View (one element per row) its rows' 1 / std go to when
            the call records its tape (the forward's ``keep_tape``; see statistics.py).
    """

    def __init__(
        self,
        graph: Graph,
        rows: str,
        prefix: str,
        leaves: dict[str, Leaf],
        skip: AbstractSet[str] = frozenset(),
        tensors: dict[str, str] | None = None,
        placed: dict[str, tuple[str, bool]] | None = None,
        keep: AbstractSet[str] = frozenset(),
        tape_only: AbstractSet[str] = frozenset(),
        workspace: Workspace | None = None,
        statistics: dict[str, str] | None = None,
    ):
        self.g, self.rows, self.prefix, self.leaves, self.skip = graph, rows, prefix, leaves, set(skip)
        self.statistics = dict(statistics or {})
        self.workspace = workspace
        self.placed = dict(placed or {})
        self.keep = set(keep) | set(graph.outputs.values()) | set(self.placed)
        # kept for the tape alone (what else keeps a value: the outputs, and placements not the tape's)
        self.tape_only = set(tape_only) - set(graph.outputs.values())
        self.alloc: list[str] = []
        self.per_step: list[str] = []  # the body's first lines: views that move with the step
        self.items: list = []  # the rest of the body: lines, and loops over rows (RowLoop)
        self.body: list[str] = []
        # value -> tensor expression (rows, elements); ``tensors``: those another GraphCode of the same graph made
        self.tensors: dict[str, str] = dict(tensors or {})
        self._render()

    # names
    def v(self, name: str) -> str:
        return f"v{self.prefix}_{name}"

    def t(self, name: str) -> str:
        return f"t{self.prefix}_{name}"

    def view(self, name: str) -> str:
        return self.leaves[name].view if name in self.leaves else self.v(name)

    def tensor(self, name: str) -> str | None:
        """A tensor expression holding value ``name`` (rows, elements), or None."""
        if name in self.leaves:
            return self.leaves[name].tensor
        return self.tensors.get(name)

    # -- what runs where

    def _computed(self, name: str) -> bool:
        node = self.g[name]
        return name not in self.leaves and name not in self.skip and node.op not in LEAVES

    def _plan(self):
        """Fused GEMM additions, concat blocks, segments and values held only in registers."""
        g, users = self.g, self.g.users()
        self.users = users
        # add(x, a @ W) with the product read nowhere else: the GEMM starts its sums from x's rows.
        self.gemm_init: dict[str, tuple[str, str]] = {}  # add -> (GEMM node, the other term)
        for n in g.nodes:
            if n.op != "add" or len(n.args) != 2 or not self._computed(n.name) or not n.batched:
                continue
            for k in (0, 1):
                prod, other = g[n.args[k]], g[n.args[1 - k]]
                if (
                    prod.op in GEMM_OPS
                    and self._computed(prod.name)
                    and users[prod.name] == [n.name]
                    and prod.name not in self.keep
                    and not (prod.op == "linear" and any(prod.attr("biases")))
                    and other.name != prod.name
                    and other.batched
                    and other.op != "const"
                    and other.width == n.width == prod.width
                ):
                    self.gemm_init[n.name] = (prod.name, other.name)
                    break
        self.absorbed = {prod for prod, _ in self.gemm_init.values()}
        # A concat's arguments computed here for it alone are written into its blocks.
        self.home: dict[str, tuple[str, object]] = {}  # value -> (concat, start block)
        for n in g.nodes:
            if n.op != "concat" or not self._computed(n.name) or not n.batched or n.width == "S":
                continue
            for (start, _), a in zip(n.attr("blocks"), n.args):
                node = g[a]
                if (
                    self._computed(a)
                    and node.op not in ("slice", "const")
                    and node.batched
                    and node.width != "S"
                    and users[a] == [n.name]
                    and n.args.count(a) == 1
                    and a not in self.keep
                    and a not in self.absorbed
                ):
                    self.home[a] = (n.name, start)
        # The work, in graph order: row loops (lists of segments), single nodes and view lines.
        # Sums over the batch that only the caller reads wait until the end, so that the row
        # loops around them join.
        self.work: list = []
        late: list = []
        for n in g.nodes:
            if n.op in LEAVES or n.name in self.skip or n.name in self.absorbed:
                continue
            if n.op == "slice":  # a view (see _render)
                continue
            row_wise = n.batched and (n.op in OPS_AND_ROWS or n.op in ROW_OPS or n.op in ("sum_units", "concat"))
            if row_wise and n.name not in self.gemm_init:
                if not (self.work and isinstance(self.work[-1], list)):
                    self.work.append([])
                self._segment(self.work[-1], n)
            elif n.op == "sum_batch" and not users[n.name]:
                late.append(n)
            else:
                self.work.append(n)
        self.work.extend(late)
        # Values held in registers: read only inside their own segment, and by no caller; those
        # only the tape reads are written when it is recorded.
        self.virtual: set[str] = set()
        self.taped_if_kept: set[str] = set()
        for loop in self.work:
            if not isinstance(loop, list):
                continue
            for seg in loop:
                names = {n.name for n in seg}
                for n in seg:
                    if (
                        (n.op in OPS or n.op in ROW_PARTS and n.op != "softmax")
                        and n.name not in self.home
                        and users[n.name]
                        and set(users[n.name]) <= names
                    ):
                        if n.name not in self.keep:
                            self.virtual.add(n.name)
                        elif n.name in self.tape_only:
                            self.taped_if_kept.add(n.name)

    def _segment(self, loop: list[list[Node]], n: Node):
        """Add row-wise node ``n`` to the row loop ``loop``: to its last segment where it can join.

        A segment is one loop over a row's elements: elementwise nodes of one width, and row
        ops (a reduction over whole rows first, then an element expression) whose arguments
        come from before the segment.
        """
        seg: list[Node] = loop[-1] if loop else []
        inside = {m.name for m in seg}
        joins = (
            bool(seg)
            and seg[0].op in OPS_AND_ROWS
            and n.op in OPS_AND_ROWS
            and elems(seg[0].width) == elems(n.width)
            and (n.op in OPS or not set(n.args) & inside)
            # a view into a value this segment is still writing would read it before it is written
            and not any(a not in inside and _root(self.g, a)[0] in inside for a in n.args)
        )
        if joins:
            seg.append(n)
        else:
            loop.append([n])

    def static(self, name: str) -> bool:
        """Whether value ``name``'s view is the same at every step (so made once, before the loop)."""
        root, _ = _root(self.g, name)
        while root in self.home:
            root = self.home[root][0]
        return self._computed(root) and root not in self.placed

    def _render(self):
        self._plan()
        g = self.g
        # placed views move with the step: declared in its body (each of a crew's threads its own)
        per_step = [f"const rt::View<T> {self.v(name)} = {expr};" for name, (expr, _) in self.placed.items()]
        shown = [n for n in g.nodes if self._computed(n.name) and n.name not in self.virtual | self.absorbed]
        for n in shown:  # buffers of their own, and declarations of placed views
            if n.op == "slice" or n.name in self.home:
                continue
            if n.name in self.placed:
                if self.placed[n.name][1]:
                    self.alloc.append(f"at::Tensor {self.t(n.name)} = {self._buffer(self._shape(n))};")
            else:
                self.alloc.append(f"at::Tensor {self.t(n.name)} = {self._buffer(self._shape(n))};")
                self.alloc.append(f"const rt::View<T> {self.v(n.name)} = rt::view_of<T>({self.t(n.name)});")
                self.tensors[n.name] = self.t(n.name)
        for n in reversed(shown):  # blocks of concats (a concat's view before its blocks')
            if n.name not in self.home:
                continue
            concat, start = self.home[n.name]
            off = elems(start) if start else "0"
            line = f"const rt::View<T> {self.v(n.name)}{{{self.v(concat)}.p + {off}, {self.v(concat)}.ld}};"
            if self.static(n.name):
                self.alloc.append(line)
                base = self.tensors.get(concat)
                if base is not None:
                    self.tensors[n.name] = f"{base}.narrow(1, {off}, {elems(n.width)})"
            else:
                per_step.append(line)
        for n in shown:  # slices: views into their source, made once where the source's view is fixed
            if n.op != "slice":
                continue
            (self.alloc if self.static(n.name) else per_step).append(self._slice_line(n))
            base = self.tensor(n.args[0])
            if base is not None and self.static(n.name) and g[n.args[0]].batched:
                self.tensors[n.name] = f"{base}.narrow(1, {elems(n.attr('start'))}, {elems(n.width)})"
        for n in g.nodes:
            if n.op in GEMM_OPS and self._computed(n.name):
                key, weight = self._linear(n)
                slot = self.workspace.slot() if self.workspace else "nullptr"
                self.alloc.append(f"const rt::Linear<T> lin{self.prefix}_{key}({weight}, {self.rows}, {slot});")
        self.per_step = per_step
        for item in self.work:
            if isinstance(item, list):
                self.items.append(self._row_loop(item))
            elif item.op in GEMM_OPS or item.name in self.gemm_init:
                self.items.append(self._gemm(item))
            elif item.op == "sum_batch":
                a = self.g[item.args[0]]
                statistic = a.width == "S" and item.width != "S"
                self.items.append(
                    SumRows(
                        self.view(a.name),
                        self.rows if a.batched else "1",
                        elems(item.width),
                        statistic,
                        self.v(item.name),
                        _root(self.g, a.name)[0],
                        item.name,
                    )
                )
            elif item.op in OPS or item.op in ROW_OPS or item.op in ("sum_units", "concat"):
                loop = self._row_loop([[item]])
                if loop is not None:  # one row, read by every row: no loop over rows
                    self.items.append(["{", "  const int64_t b = 0;", *("  " + line for line in loop.inner), "}"])
            else:
                raise Unsupported(f"op {item.op!r}")
        self.body = self.body_with_rows()

    def _items_with_rows(self, before: Sequence[str], after: Sequence[str], width: str) -> list:
        """The work's items, with per-row statements (of row ``b``) before and after it.

        They join the first (last) loop over rows where the work starts (ends) with one, so that
        they run on the rows' threads while the rows are in cache; else a loop of their own.
        ``width``: elements a statement moves (for the loop's grain).
        """
        items = [item for item in self.items if item]  # lines (run by one thread), RowLoop, Gemm, SumRows
        if before:
            if items and isinstance(items[0], RowLoop):
                items[0] = RowLoop([*before, *items[0].inner], items[0].grain)
            else:
                items.insert(0, RowLoop(list(before), f"{width} * {len(before)}"))
        if after:
            if items and isinstance(items[-1], RowLoop):
                items[-1] = RowLoop([*items[-1].inner, *after], items[-1].grain)
            else:
                items.append(RowLoop(list(after), f"{width} * {len(after)}"))
        return items

    def body_with_rows(self, before: Sequence[str] = (), after: Sequence[str] = (), width: str = "H") -> list[str]:
        """The body, each GEMM and loop over rows forking on its own (see _items_with_rows for
        ``before``, ``after`` and ``width``)."""
        out: list[str] = list(self.per_step)
        for item in self._items_with_rows(before, after, width):
            out.extend(item.render(self.rows) if isinstance(item, (RowLoop, Gemm, SumRows)) else item)
        return out

    def team_parts(
        self, before: Sequence[str] = (), after: Sequence[str] = (), width: str = "H"
    ) -> tuple[list[list[str]], bool]:
        """The work as parts that a crew's threads run in turn (see team_loop; ``before``, ``after``
        and ``width`` as for _items_with_rows), and whether every part is row-wise alone: GEMMs and
        loops over rows, which a local crew splits by the same rows (no sum over the batch, no
        lines that one thread runs for all)."""
        parts: list[list[str]] = []
        local = True
        sums: set[str] = set()  # the sums of the run of SumRows that ends the last part
        for item in self._items_with_rows(before, after, width):
            local = local and isinstance(item, (RowLoop, Gemm))
            if isinstance(item, SumRows) and sums and item.source not in sums:
                parts[-1] += item.render_in_team(self.rows)  # reads none of the run's sums: no barrier
                sums.add(item.name)
                continue
            sums = {item.name} if isinstance(item, SumRows) else set()
            if isinstance(item, (RowLoop, Gemm, SumRows)):
                parts.append(item.render_in_team(self.rows))
            elif parts and parts[-1][0] == "team.serial([&] {":  # one serial part for consecutive lines
                parts[-1][-1:-1] = ["  " + line for line in item]
            else:
                parts.append(["team.serial([&] {", *("  " + line for line in item), "});"])
        return parts, local

    def _buffer(self, shape: str) -> str:
        return self.workspace(shape) if self.workspace else f"at::empty({shape}, opts)"

    def _shape(self, n: Node) -> str:
        return f"{{{self.rows}, {elems(n.width)}}}" if n.batched else f"{{{elems(n.width)}}}"

    def _slice_line(self, n: Node) -> str:
        src = self.view(n.args[0])
        return f"const rt::View<T> {self.v(n.name)}{{{src}.p + {elems(n.attr('start'))}, {src}.ld}};"

    def _linear(self, n: Node) -> tuple[str, str]:
        """The Linear object's name and its weight, for GEMM node ``n``."""
        if n.op == "linear":
            return n.name, f"w_{n.name}"
        return f"t_{n.attr('linear')}", f"w_{n.attr('linear')}.t()"

    def _gemm(self, n: Node) -> Gemm:
        """``n``: a GEMM, or an add whose GEMM term starts from the other term's rows."""
        if n.name in self.gemm_init:
            product, term = self.gemm_init[n.name]
            prod, init = self.g[product], self.view(term)
        elif n.op == "linear" and any(n.attr("biases")):
            prod, init = n, f"rt::View<T>{{b_{n.name}.data_ptr<T>(), 0}}"
        else:
            prod, init = n, "rt::View<T>{nullptr, 0}"
        operand = self.g[prod.args[0]]
        if not operand.batched:
            raise Unsupported("a GEMM over an unbatched value")
        key, _ = self._linear(prod)
        return Gemm(f"lin{self.prefix}_{key}.into({self.view(operand.name)}, {self.rows}, {init}, {self.v(n.name)}")

    def _row_loop(self, segments: list[list[Node]]) -> RowLoop | None:
        inner = []
        for seg in segments:
            code = self._segment_code(seg)
            if code:
                inner.extend(["{", *("  " + line for line in code), "}"])
        if not inner:
            return None
        count = sum(len(seg) for seg in segments)
        return RowLoop(inner, f"{elems(segments[0][0].width)} * {count}")

    def _segment_code(self, seg: list[Node]) -> list[str]:
        """One segment of one row (row ``b``): its reductions, then one loop over the elements."""
        first = seg[0]
        if first.op == "concat":
            return self._concat_code(first)
        if first.op == "sum_units":
            return [
                f"{self.v(first.name)}.row(b)[0] = rt::row_sum({self.view(first.args[0])}.row(b), {elems(self.g[first.args[0]].width)});"
            ]
        names = {n.name for n in seg}
        lines = [f"const int64_t N = {elems(first.width)};"]
        declared: set[str] = set()
        prefix: list[str] = []
        loop: list[str] = []
        tape_stores: list[tuple[int, str]] = []  # (place in loop, store) of values only the tape reads

        def ref(n: Node, a: Node) -> str:
            if a.name in names:
                return f"e_{a.name}"
            if a.op == "const":
                return OPS["const"](a, [])
            if a.width == "S" and n.width != "S":
                if a.name not in declared:
                    lines.append(f"const T s_{a.name} = {self.view(a.name)}.row(b)[0];")
                    declared.add(a.name)
                return f"s_{a.name}"
            return f"{row(a)}[j]"

        def row(a: Node) -> str:
            if f"r_{a.name}" not in declared:
                lines.append(f"const T* __restrict r_{a.name} = {self.view(a.name)}.row(b);")
                declared.add(f"r_{a.name}")
            return f"r_{a.name}"

        for n in seg:
            args = [self.g[a] for a in n.args]
            stored = n.name not in self.virtual
            if stored:
                lines.append(f"T* __restrict o_{n.name} = {self.v(n.name)}.row(b);")
            if n.op in ROW_PARTS:
                # a per-row statistic is what RSTD_GRAD's last argument is; elsewhere a broadcast
                statistic = [n.op == RSTD_GRAD and k == 2 for k in range(len(args))]
                if any(
                    a.width == "S" and n.width != "S" and not stat or a.op == "const" or a.name in names
                    for a, stat in zip(args, statistic)
                ):
                    raise Unsupported(f"{n.op} of a broadcast value")
                pre, expr = ROW_PARTS[n.op](n, [row(a) for a in args], f"o_{n.name}", n.name)
                prefix.extend(pre)
                if n.name in self.statistics:  # the statistic the backward pass reads (statistics.py)
                    prefix.append(f"if (keep_tape) {self.statistics[n.name]}.row(b)[0] = rstd_{n.name};")
            elif n.op in OPS:
                expr = OPS[n.op](n, [ref(n, a) for a in args])
            else:
                raise Unsupported(f"op {n.op!r}")
            loop.append(f"  const T e_{n.name} = {expr};")
            if n.name in self.taped_if_kept:
                tape_stores.append((len(loop), f"  o_{n.name}[j] = e_{n.name};"))
            elif stored:
                loop.append(f"  o_{n.name}[j] = e_{n.name};")
        # ivdep: no element depends on another's (GCC gave up on these loops' many pointers otherwise)
        head = ["#pragma GCC ivdep", "for (int64_t j = 0; j < N; ++j) {"]
        if not tape_stores:
            return [*lines, *prefix, *head, *loop, "}"]
        # Two loops, with and without the tape's stores: a store under a condition inside the
        # loop kept GCC from vectorizing it.
        taping = list(loop)
        for at, store in reversed(tape_stores):
            taping.insert(at, store)
        indent = lambda body: ["  " + line for line in body]  # noqa: E731
        return [
            *lines,
            *prefix,
            "if (keep_tape) {",
            *indent([*head, *taping, "}"]),
            "} else {",
            *indent([*head, *loop, "}"]),
            "}",
        ]

    def _concat_code(self, n: Node) -> list[str]:
        """A concat's row: the blocks its arguments did not write themselves, and zeros between."""
        lines = []
        at = 0
        for (start, stop), name in zip(n.attr("blocks"), n.args):
            a = self.g[name]
            if not a.batched or a.width == "S":
                raise Unsupported("concat of a broadcast value")
            if start > at:
                lines.append(f"std::fill(o + {elems(at) if at else '0'}, o + {elems(start)}, T(0));")
            if self.home.get(name, (None,))[0] != n.name:
                lines.append(
                    f"std::memcpy(o + {elems(start) if start else '0'}, {self.view(name)}.row(b), sizeof(T) * {elems(stop - start)});"
                )
            at = stop
        if at < n.width:
            lines.append(f"std::fill(o + {elems(at)}, o + {elems(n.width)}, T(0));")
        return [f"T* o = {self.v(n.name)}.row(b);", *lines] if lines else []


def team_loop(head: Sequence[str], parts: Sequence[Sequence[str]], local: bool) -> list[str]:
    """The loop over time (steps s < Tn) in one parallel region (rt::in_team): each of a crew's
    threads runs the ``head`` lines of every step (the step's views, its own), then the step's
    ``parts`` in turn (see GraphCode.team_parts), team.sync() between two and after the last: a
    barrier, but in a local crew (``local``: every part row-wise alone; see rt::Team)."""
    inner = [line for k, part in enumerate(parts) for line in (["team.sync();"] if k else []) + list(part)]
    if inner:
        inner.append("team.sync();  // the next step reads this one's rows")
    return [
        f"rt::in_team(rt::crew_worth<T>(B, H), {'B' if local else '0'}, [&](const rt::Team& team) {{",
        "  for (int64_t s = 0; s < Tn; ++s) {",
        *("    " + line for line in [*head, *inner]),
        "  }",
        "});",
    ]


@dataclass
class RowLoop:
    """A loop over the rows, threads splitting them: its body for row ``b``, and the elements it
    handles per row (C++; the grain of a thread's share, rt::grain_rows)."""

    inner: list[str]
    grain: str

    def render(self, rows: str) -> list[str]:
        return [
            f"at::parallel_for(0, {rows}, rt::grain_rows({self.grain}), [&](int64_t b0, int64_t b1) {{",
            "  for (int64_t b = b0; b < b1; ++b) {",
            *("    " + line for line in self.inner),
            "  }",
            "});",
        ]

    def render_in_team(self, rows: str) -> list[str]:
        return [
            f"team.rows({rows}, rt::grain_rows({self.grain}), [&](int64_t b) {{",
            *("  " + line for line in self.inner),
            "});",
        ]


@dataclass
class Gemm:
    """A Linear's product: its ``into`` call without the closing parenthesis."""

    call: str

    def render(self, rows: str) -> list[str]:
        return [f"{self.call});"]

    def render_in_team(self, rows: str) -> list[str]:
        return [f"{self.call}, team);"]


@dataclass
class SumRows:
    """out[j] = the sum over rows of a's column j (of its one column where ``statistic``)."""

    a: str
    rows: str
    n: str
    statistic: bool
    out: str
    source: str  # the IR value summed (the root of a's view)
    name: str  # the IR value of the sum

    def render(self, rows: str) -> list[str]:
        return [f"rt::sum_rows({self.a}, {self.rows}, {self.n}, {str(self.statistic).lower()}, {self.out}.p);"]

    def render_in_team(self, rows: str) -> list[str]:
        # threads split the columns: each column's sum runs over the rows in order, whatever the split
        a = self.a if self.statistic else f"rt::View<T>{{{self.a}.p + j0, {self.a}.ld}}"
        return [
            f"team.split({self.n}, [&](int64_t j0, int64_t j1) {{",
            f"  rt::sum_rows({a}, {self.rows}, j1 - j0, {str(self.statistic).lower()}, {self.out}.p + j0);",
            "});",
        ]


class Workspace:
    """The allocation sites of one generated function whose buffers live across calls.

    Each site gets a slot of a per-thread vector (``workspace``); ``rt::reuse_or_empty`` hands
    the slot's tensor back when nothing else holds it (see runtime.h: buffers freed at the end
    of a call went back to the OS and faulted in again, page by page, on the next).
    """

    def __init__(self):
        self.count = 0

    def __call__(self, shape: str) -> str:
        """A buffer of ``shape`` (a C++ braced list) at a new allocation site."""
        self.count += 1
        return f"rt::reuse_or_empty(workspace[{self.count - 1}], {shape}, opts)"

    def slot(self) -> str:
        """A pointer to a new slot (for a buffer the runtime makes itself: packed weights)."""
        self.count += 1
        return f"&workspace[{self.count - 1}]"

    def declaration(self) -> str:
        return f"  static thread_local std::vector<at::Tensor> workspace({max(1, self.count)});"


# ---------------------------------------------------------------- the program


def _root(graph: Graph, name: str) -> tuple[str, int]:
    """Follow slices to the value they view: (root name, offset in blocks)."""
    off = 0
    while graph[name].op == "slice":
        off += graph[name].attr("start")
        name = graph[name].args[0]
    return name, off


def generate(plan: LoopPlan, namespace: str) -> Kernel:
    """The C++ translation unit of ``plan``'s cell, defining operators in ``namespace``.

    Raises:
        Unsupported: the cell uses a construct this emitter does not compile.
    """
    return _Emitter(plan, namespace).run()


class _Emitter:
    def __init__(self, plan: LoopPlan, namespace: str):
        self.plan, self.ns = plan, namespace
        self.spec = plan.spec
        self.prog = plan.program
        self.lines: list[str] = []
        # the backward graphs, reading LayerNorm's statistics from the tape (statistics.py)
        self.step_back, self.step_stats = saved_statistics(plan.step_backward, plan.program.step)
        self.pro_back, self.pro_stats = saved_statistics(plan.prologue_backward, plan.program.prologue)

    # -- the tape: which forward values the backward pass reads, and where they live

    def tape_plan(self):
        pro, step = self.prog.prologue, self.prog.step
        entries: dict[str, TapeEntry] = {}
        where: dict[str, tuple[str, int]] = {}  # step value -> (tape entry, offset in blocks)
        pro_where: dict[str, tuple[str, int]] = {}  # prologue value -> (entry or "x", offset)

        def prologue_value(name):
            root, off = _root(pro, name)
            node = pro[root]
            if node.op == "input":
                return "x", off
            entries.setdefault(f"p_{root}", TapeEntry(f"p_{root}", node.width, False, node.batched))
            return f"p_{root}", off

        for stats, per_step, into in ((self.step_stats, True, where), (self.pro_stats, False, pro_where)):
            for leaf in stats:  # one number per row: (time, batch, 1)
                entry = f"{'s' if per_step else 'p'}_{leaf}"
                entries[entry] = TapeEntry(entry, "S", per_step, True, statistic=True)
                into[leaf] = (entry, 0)
        saved = [n.name for n in self.step_back.nodes if n.op == "saved" and n.attr("of") not in ("param", STATISTIC)]
        operands = [L.operand for L in self.plan.linears if L.in_step]
        for name in dict.fromkeys(saved + operands):
            root, off = _root(step, name)
            node = step[root]
            if node.op == "hoisted":
                entry, poff = prologue_value(root)
                where[name] = (entry, poff + off)
            elif node.op == "input":
                raise Unsupported("the input read inside the step")
            else:
                # an unbatched step value reads only parameters and constants: one row, the same every step
                entries.setdefault(f"s_{root}", TapeEntry(f"s_{root}", node.width, True, node.batched))
                where[name] = (f"s_{root}", off)
        pro_saved = [
            n.name for n in self.pro_back.nodes if n.op == "saved" and n.attr("of") not in ("param", STATISTIC)
        ]
        for name in dict.fromkeys(pro_saved + [L.operand for L in self.plan.linears if not L.in_step]):
            pro_where[name] = prologue_value(name)
        return list(entries.values()), where, pro_where

    def run(self) -> Kernel:
        spec, prog = self.spec, self.prog
        for g in (prog.prologue, prog.step):
            for n in g.nodes:
                if n.op == "const" and n.name in g.outputs.values():
                    raise Unsupported("a constant output")
        self.entries, self.where, self.pro_where = self.tape_plan()
        units_param = next(p for p in spec.params if "units" in p.shape)
        self.units = (units_param.name, list(units_param.shape).index("units"))
        layout = Layout(self.ns, len(spec.state_names), tuple(spec.param_names), tuple(self.entries), *self.units)
        source = "\n".join(
            [
                f"// Generated by novolstm from spec {spec.name!r} (sha256 {spec.hash}). Do not edit.",
                runtime_source(),
                "namespace {",
                "namespace rt = novolstm_rt;",
                "",
                *self.common(),
                *self.forward(),
                *self.backward(),
                "}  // namespace",
                "",
                *self.registration(),
            ]
        )
        return Kernel(source, layout)

    def common(self) -> list[str]:
        """Parameters by name and the fused matrices, inside each entry point."""
        out = ["#define NOVOLSTM_PARAMS \\"]
        for k, p in enumerate(self.spec.param_names):
            out.append(f"  const at::Tensor P_{p} = params[{k}].contiguous(); \\")
        uname, uaxis = self.units
        out.append(f"  const int64_t H = P_{uname}.size({uaxis}); \\")
        # the fused weights (one GEMM's, several parameters side by side) live across calls
        fused: list[str] = []
        for L in self.plan.linears:
            ws = [f"P_{w}" for w in L.weights]
            if len(ws) > 1:
                fused.append(f"rt::cat_reused(fused_params[{len(fused)}], {{{', '.join(ws)}}}, 1, opts)")
            out.append(f"  const at::Tensor w_{L.name} = {ws[0] if len(ws) == 1 else fused[-1]}; \\")
            if L.has_bias:
                bs = [f"P_{b}" if b else "at::zeros({H}, opts)" for b in L.biases]
                b = bs[0] if len(bs) == 1 else f"at::cat({{{', '.join(bs)}}}, 0)"
                out.append(f"  const at::Tensor b_{L.name} = {b}; \\")
        out.insert(1, f"  static thread_local std::vector<at::Tensor> fused_params({max(1, len(fused))}); \\")
        for p in self.plan.vector_params:
            out.append(f"  const rt::View<T> v_param_{p}{{P_{p}.data_ptr<T>(), 0}}; \\")
        out.append("  (void)H;")
        out.append("")
        return out

    def param_leaves(self) -> dict[str, Leaf]:
        return {p: Leaf(f"v_param_{p}") for p in self.plan.vector_params}

    # -- forward

    def forward(self) -> list[str]:
        spec, prog = self.spec, self.prog
        states = spec.state_names
        ntape = len(self.entries)
        values = [e for e in self.entries if not e.statistic]  # the tape's forward values
        stat_of = {**self.step_stats, **self.pro_stats}  # statistic's leaf -> normalize node
        workspace = Workspace()
        pro = GraphCode(
            prog.prologue,
            "R",
            "p",
            {spec.input: Leaf("vx", "x2d"), **self.param_leaves()},
            keep={e.name[2:] for e in values if not e.per_step},  # the tape's prologue values
            tape_only={e.name[2:] for e in values if not e.per_step},
            workspace=workspace,
            statistics={stat_of[e.name[2:]]: f"vstat_{e.name}" for e in self.entries if e.statistic and not e.per_step},
        )
        # step leaves: states (current buffers), hoisted values at t, vector parameters
        leaves = self.param_leaves()
        for k, s in enumerate(states):
            leaves[s] = Leaf(f"vs_{k}")
        hoisted_views = []
        for h in prog.hoisted:
            node = prog.step[h]
            root, off = _root(prog.prologue, h)
            rnode = prog.prologue[root]
            if rnode.op == "input" or not rnode.batched or not node.batched:
                raise Unsupported("a hoisted value that is not a batched computed value")
            hoisted_views.append(
                f"const rt::View<T> vh_{h}{{{pro.view(root)}.p + t * B * {pro.view(root)}.ld + {elems(off) if off else '0'}, {pro.view(root)}.ld}};"
            )
            leaves[h] = Leaf(f"vh_{h}")
        out_name = prog.step.outputs["output"]
        next_names = [prog.step.outputs[f"state:{s}"] for s in states]
        # Where step values live: the tape's row block at t (when recording), the outputs' rows
        # and the next state's buffer (where no mask selects rows), so that no copy moves them.
        placed: dict[str, tuple[str, bool]] = {}

        def computed(name: str) -> bool:
            return prog.step[name].op not in LEAVES and prog.step[name].op != "slice"

        taped = set()
        for e in values:
            if e.per_step and e.batched and computed(e.name[2:]):
                w = elems(e.width)
                rows = f"rt::View<T>{{tape_{e.name}.data_ptr<T>() + t * B * {w}, {w}}}"
                elsewhere = f"rt::view_of<T>(ts_{e.name[2:]})"
                if e.name[2:] == out_name:  # without a tape, the output's rows (where no mask selects rows)
                    elsewhere = f"m == nullptr ? rt::View<T>{{ys.data_ptr<T>() + t * B * H, H}} : {elsewhere}"
                placed[e.name[2:]] = (f"keep_tape ? {rows} : {elsewhere}", True)
                taped.add(e.name)
        if computed(out_name) and out_name not in placed:
            rows = "rt::View<T>{ys.data_ptr<T>() + t * B * H, H}"
            placed[out_name] = (f"m == nullptr ? {rows} : rt::view_of<T>(ts_{out_name})", True)
        for k, nxt in enumerate(next_names):
            if computed(nxt) and nxt not in placed:
                placed[nxt] = (f"m == nullptr ? vn_{k} : rt::view_of<T>(ts_{nxt})", True)
        keep = {e.name[2:] for e in values if e.per_step}
        step_stats = [e for e in self.entries if e.statistic and e.per_step]
        step = GraphCode(
            prog.step,
            "B",
            "s",
            leaves,
            placed=placed,
            keep=keep,
            tape_only=keep,
            workspace=workspace,
            statistics={stat_of[e.name[2:]]: f"vstat_{e.name}" for e in step_stats},
        )
        # the statistics' tapes, (time, batch, 1), the prologue's written by its own loop
        stat_lines = []
        for e in self.entries:
            if e.statistic:
                buffer = f"rt::handed_out({workspace('{Tn, B, 1}')})"
                stat_lines.append(f"  at::Tensor tape_{e.name} = keep_tape ? {buffer} : at::empty({{0}}, opts);")
                if not e.per_step:
                    stat_lines.append(
                        f"  const rt::View<T> vstat_{e.name}{{keep_tape ? tape_{e.name}.data_ptr<T>() : nullptr, 1}};"
                    )

        tuple_type = "std::tuple<" + ", ".join(["at::Tensor"] * (1 + len(states) + ntape)) + ">"
        L = [
            "template <typename T>",
            f"{tuple_type} forward_impl(const at::Tensor& x_in, const std::optional<at::Tensor>& mask_in, bool reverse, bool keep_tape, at::TensorList state, at::TensorList params) {{",
            "  const at::Tensor x = x_in.contiguous();",
            "  const auto opts = x.options();",
            "  const int64_t Tn = x.size(0), B = x.size(1), I = x.size(2), R = Tn * B;",
            "  (void)I;",
            "  NOVOLSTM_PARAMS",
            "  const at::Tensor mask = mask_in.has_value() ? mask_in->contiguous() : at::Tensor();",
            "  const bool* mask_p = mask_in.has_value() ? mask.data_ptr<bool>() : nullptr;",
            "  const at::Tensor x2d = x.view({R, I});",
            "  const rt::View<T> vx{x2d.data_ptr<T>(), I};",
            *stat_lines,
            "  // prologue: every timestep at once",
            *("  " + s for s in pro.alloc),
            *("  " + s for s in pro.body),
            "  // state: double buffers, the current one sa at even steps",
        ]
        for k in range(len(states)):
            L.append(f"  at::Tensor sa_{k} = state[{k}].contiguous().clone(), sb_{k} = at::empty({{B, H}}, opts);")
            L.append(f"  const rt::View<T> vsa_{k} = rt::view_of<T>(sa_{k}), vsb_{k} = rt::view_of<T>(sb_{k});")
        L.append(f"  at::Tensor ys = rt::handed_out({workspace('{Tn, B, H}')});")
        for e in values:
            if e.per_step:
                shape = f"{{Tn, B, {elems(e.width)}}}" if e.batched else f"{{{elems(e.width)}}}"
                L.append(
                    f"  at::Tensor tape_{e.name} = keep_tape ? rt::handed_out({workspace(shape)}) : at::empty({{0}}, opts);"
                )
        L += [f"  {s}" for s in step.alloc]
        head = [
            "const int64_t t = reverse ? Tn - 1 - s : s;",
            "const bool* m = mask_p == nullptr ? nullptr : mask_p + t * B;",
        ]
        for k in range(len(states)):
            head += [
                f"const rt::View<T> vs_{k} = s % 2 == 0 ? vsa_{k} : vsb_{k};",
                f"const rt::View<T> vn_{k} = s % 2 == 0 ? vsb_{k} : vsa_{k};",
            ]
        for e in step_stats:
            head.append(
                f"const rt::View<T> vstat_{e.name}{{keep_tape ? tape_{e.name}.data_ptr<T>() + t * B : nullptr, 1}};"
            )
        head += hoisted_views
        # The copies after the step's work (the outputs' rows, the tape's, the next state where a
        # mask selects rows or the value lives elsewhere), row by row in its last loop over rows.
        head.append("const rt::View<T> vys_t{ys.data_ptr<T>() + t * B * H, H};")
        rows_after = [f"rt::select_row(vys_t, {step.view(out_name)}, rt::View<T>{{nullptr, 0}}, m, b, H);"]
        unbatched = []  # one row, the same at every step (a value of the parameters): the last step's
        for e in values:
            if e.name in taped or not e.per_step:
                continue
            if not e.batched:
                copy = f"std::memcpy(tape_{e.name}.data_ptr<T>(), {step.view(e.name[2:])}.p, sizeof(T) * {elems(e.width)});"
                unbatched.append((e.name[2:], copy))
                continue
            w = elems(e.width)
            head.append(
                f"const rt::View<T> vtape_{e.name}{{keep_tape ? tape_{e.name}.data_ptr<T>() + t * B * {w} : nullptr, {w}}};"
            )
            rows_after.append(
                f"if (keep_tape) rt::select_row(vtape_{e.name}, {step.view(e.name[2:])}, rt::View<T>{{nullptr, 0}}, nullptr, b, {w});"
            )
        for k, nxt in enumerate(next_names):
            rows_after.append(f"rt::select_row(vn_{k}, {step.view(nxt)}, vs_{k}, m, b, H);")
        parts, local = step.team_parts(after=rows_after)
        # copied after the loop where its view outlives the loop (else by one thread at each step)
        after_loop = [copy for name, copy in unbatched if name in leaves or step.static(name)]
        in_loop = [copy for name, copy in unbatched if not (name in leaves or step.static(name))]
        if in_loop:
            parts.append(["team.serial([&] {", "  if (keep_tape) {", *("    " + c for c in in_loop), "  }", "});"])
            local = False
        L += ["  " + s for s in team_loop(head + step.per_step, parts, local)]
        for k in range(len(states)):
            L.append(f"  at::Tensor* cur_{k} = Tn % 2 == 0 ? &sa_{k} : &sb_{k};")
        if after_loop:
            L += ["  if (keep_tape && Tn > 0) {", *("    " + c for c in after_loop), "  }"]
        results = ["ys"] + [f"*cur_{k}" for k in range(len(states))]
        for e in self.entries:
            if e.per_step or e.statistic:
                results.append(f"tape_{e.name}")
            elif not e.batched:
                results.append(f"keep_tape ? rt::handed_out({pro.t(e.name[2:])}) : at::empty({{0}}, opts)")
            else:
                results.append(
                    f"keep_tape ? {pro.t(e.name[2:])}.view({{Tn, B, {elems(e.width)}}}) : at::empty({{0}}, opts)"
                )
        L.insert(3, workspace.declaration())
        L.append(f"  return {tuple_type}({', '.join(results)});")
        L.append("}")
        L.append("")
        return L

    # -- backward

    def backward(self) -> list[str]:
        spec, prog, plan = self.spec, self.prog, self.plan
        states = spec.state_names
        back, pro_back = self.step_back, self.pro_back
        tape_index = {e.name: k for k, e in enumerate(self.entries)}
        entries = {e.name: e for e in self.entries}

        def tape_view(entry: str, off: int, at_t: bool) -> str:
            if entry == "x":
                base = "vx"
                return f"rt::View<T>{{{base}.p + {elems(off) if off else '0'}, {base}.ld}}"
            base = f"vt_{entry}"
            row = f" + t * B * {base}.ld" if at_t and entries[entry].batched else ""
            return f"rt::View<T>{{{base}.p{row} + {elems(off) if off else '0'}, {base}.ld}}"

        # step backward leaves
        leaves = self.param_leaves()
        seeds = {n.name: n.attr("role") for n in back.nodes if n.op == "seed"}
        for name in seeds:
            leaves[name] = Leaf(f"vseed_{name}")
        for n in back.nodes:
            if n.op == "saved" and n.attr("of") != "param":
                entry, off = self.where[n.name]
                leaves[n.name] = Leaf(f"vsaved_{n.name}")
        saved_views = [
            f"const rt::View<T> vsaved_{n.name} = {tape_view(self.where[n.name][0], self.where[n.name][1], True)};"
            for n in back.nodes
            if n.op == "saved" and n.attr("of") != "param"
        ]

        # where each gradient of the step goes
        step_linears = {L.name for L in plan.linears if L.in_step}
        stores: dict[str, str] = {}  # backward value -> (T*B, width) tensor it is stored into per step
        gseq: dict[str, str] = {}  # hoisted -> tensor
        glin: dict[str, str] = {}  # step linear -> tensor
        accum: list[tuple[str, str]] = []  # (vector param, backward value)
        for role, value in back.outputs.items():
            target = role.split(":", 1)[1]
            if target in states:
                continue
            if target in prog.hoisted or target in step_linears:
                stores.setdefault(value, f"gstore_{value}")
                (gseq if target in prog.hoisted else glin)[target] = stores[value]
            elif target in plan.vector_params:
                if back[value].batched:
                    raise Unsupported("a batched parameter gradient")
                accum.append((target, value))
            else:
                raise Unsupported(f"a gradient for {target!r} inside the step")
        # Where step gradients live: the stored ones in their row block at t of the whole
        # sequence's buffer, the state gradients in the next step's buffer (where no mask
        # selects rows), so that no copy moves them.
        placed: dict[str, tuple[str, bool]] = {}

        def computed(name: str) -> bool:
            return back[name].op not in LEAVES and back[name].op not in ("slice", "saved", "seed")

        for value, tensor in stores.items():
            if computed(value):
                width = elems(back[value].width)
                placed[value] = (f"rt::View<T>{{{tensor}.data_ptr<T>() + t * B * {width}, {width}}}", False)
        for k, s in enumerate(states):
            grad = back.outputs.get(f"grad:{s}")
            if grad and computed(grad) and grad not in placed:
                placed[grad] = (f"m == nullptr ? vgnxt_{k} : rt::view_of<T>(tb_{grad})", True)
        # A vector parameter's gradient, a sum over the batch at each step, is summed after the
        # loop from the summed value's rows of every step (in a store of the whole sequence's rows,
        # its own or a gradient's): inside the step, a sum over the rows waits for every thread's
        # rows (see rt::Team). The same sums in the same order as at each step.
        users = back.users()
        deferred: dict[str, tuple[str, str]] = {}  # vector param -> (store of the summed rows, sum call)
        for p, value in accum:
            node = back[value]
            src = node.args[0] if node.op == "sum_batch" else None
            if src is None or users[value] or not back[src].batched or not computed(src):
                continue
            if src in stores:  # a gradient stored at every step anyway
                store = stores[src]
            elif src in placed and not placed[src][0].startswith("rt::View<T>{gsum_"):
                continue
            else:
                store = f"gsum_{src}"
                width = elems(back[src].width)
                placed[src] = (f"rt::View<T>{{{store}.data_ptr<T>() + t * B * {width}, {width}}}", False)
            statistic = str(back[src].width == "S" and node.width != "S").lower()
            call = f"rt::sum_step_rows(rt::view_of<T>({store}), Tn, B, {elems(node.width)}, {statistic}, reverse, gp_{p}.data_ptr<T>())"
            deferred[p] = (store, call)
        deferred_sums = {value for p, value in accum if p in deferred}
        accum = [(p, value) for p, value in accum if p not in deferred]
        workspace = Workspace()
        step = GraphCode(back, "B", "b", leaves, skip=deferred_sums, placed=placed, workspace=workspace)

        # prologue backward
        pro_leaves = {spec.input: Leaf("vx", "x2d"), **self.param_leaves()}
        pro_seed_lines = []
        for n in pro_back.nodes:
            if n.op == "seed":
                h = n.attr("role").split(":", 1)[1]
                if h not in gseq:
                    # nothing flows into this hoisted value (it is allocated as zeros)
                    gseq[h] = f"gzero_{h}"
                    pro_seed_lines.append(
                        f"at::Tensor gzero_{h} = at::zeros({{R, {elems(prog.step[h].width)}}}, opts);"
                    )
                pro_leaves[n.name] = Leaf(f"rt::view_of<T>({gseq[h]})", gseq[h])
            elif n.op == "saved" and n.attr("of") != "param":
                entry, off = self.pro_where[n.name]
                pro_leaves[n.name] = Leaf(tape_view(entry, off, False))
        g_input = pro_back.outputs.get(f"grad:{spec.input}")
        others = [v for r, v in pro_back.outputs.items() if r != f"grad:{spec.input}"]
        only_input = (live_names(pro_back.nodes, [g_input]) - live_names(pro_back.nodes, others)) if g_input else set()
        pro_all = GraphCode(pro_back, "R", "q", pro_leaves, skip=only_input, workspace=workspace)
        pro_in = GraphCode(
            pro_back,
            "R",
            "q",
            pro_leaves,
            skip={n.name for n in pro_back.nodes} - only_input,
            tensors=pro_all.tensors,
            workspace=workspace,
        )

        ns = len(states)
        tuple_type = "std::tuple<" + ", ".join(["at::Tensor"] * (1 + ns + len(spec.param_names))) + ">"
        L = [
            "template <typename T>",
            f"{tuple_type} backward_impl(const std::optional<at::Tensor>& g_ys_in, at::TensorList g_final, const at::Tensor& x_in, const std::optional<at::Tensor>& mask_in, bool reverse, bool need_input, at::TensorList params, at::TensorList tape) {{",
            "  const at::Tensor x = x_in.contiguous();",
            "  const auto opts = x.options();",
            "  const int64_t Tn = x.size(0), B = x.size(1), I = x.size(2), R = Tn * B;",
            "  (void)I;",
            "  NOVOLSTM_PARAMS",
            "  const at::Tensor mask = mask_in.has_value() ? mask_in->contiguous() : at::Tensor();",
            "  const bool* mask_p = mask_in.has_value() ? mask.data_ptr<bool>() : nullptr;",
            "  const at::Tensor g_ys = g_ys_in.has_value() ? *g_ys_in : at::Tensor();  // read through its strides",
            "  const int64_t gys_t = g_ys.defined() ? g_ys.stride(0) : 0, gys_b = g_ys.defined() ? g_ys.stride(1) : 0;",
            "  const int64_t gys_h = g_ys.defined() ? g_ys.stride(2) : 0;",
            "  const T* gys_base = g_ys.defined() ? g_ys.data_ptr<T>() : nullptr;",
            "  const at::Tensor x2d = x.view({R, I});",
            "  const rt::View<T> vx{x2d.data_ptr<T>(), I};",
        ]
        for e in self.entries:
            k = tape_index[e.name]
            shape = f"{{R, {elems(e.width)}}}" if e.batched else f"{{{elems(e.width)}}}"  # 1-D: a row read by every row
            L.append(f"  const at::Tensor tp_{e.name} = tape[{k}].contiguous().view({shape});")
            L.append(f"  const rt::View<T> vt_{e.name} = rt::view_of<T>(tp_{e.name});")
        for k in range(ns):  # double buffers, the current one ga at even steps
            L.append(f"  at::Tensor ga_{k} = g_final[{k}].contiguous().clone(), gb_{k} = at::empty({{B, H}}, opts);")
            L.append(f"  const rt::View<T> vga_{k} = rt::view_of<T>(ga_{k}), vgb_{k} = rt::view_of<T>(gb_{k});")
        for name in seeds:  # rows for a seed's masked copy (zeros where no output gradient is given)
            L.append(f"  at::Tensor seed_{name} = at::zeros({{B, {elems(back[name].width)}}}, opts);")
            L.append(f"  const rt::View<T> vseedrows_{name} = rt::view_of<T>(seed_{name});")
        for value, tensor in stores.items():
            L.append(f"  at::Tensor {tensor} = {workspace(f'{{R, {elems(back[value].width)}}}')};")
        for p in plan.vector_params:
            L.append(f"  at::Tensor gp_{p} = at::zeros({{H}}, opts);")
        for store in dict.fromkeys(store for store, _ in deferred.values() if store.startswith("gsum_")):
            L.append(f"  at::Tensor {store} = {workspace(f'{{R, {elems(back[store[5:]].width)}}}')};")
        L += [f"  {s}" for s in step.alloc]
        head = [
            "const int64_t t = reverse ? s : Tn - 1 - s;",
            "const bool* m = mask_p == nullptr ? nullptr : mask_p + t * B;",
        ]
        # The seeds' rows: the output gradient's and the state gradients' rows read in place, or
        # (through a mask, or strided) copied row by row in the step's first loop over rows.
        head.append("const T* gys_p = gys_base == nullptr ? nullptr : gys_base + t * gys_t;")
        head.append("const bool gys_copied = gys_p != nullptr && !rt::strided_in_place(gys_h, m);")
        rows_before = []
        for k in range(ns):
            head += [
                f"const rt::View<T> vgcur_{k} = s % 2 == 0 ? vga_{k} : vgb_{k};",
                f"const rt::View<T> vgnxt_{k} = s % 2 == 0 ? vgb_{k} : vga_{k};",
            ]
        for name, role in seeds.items():
            width = elems(back[name].width)
            if role == "output":
                head.append(
                    f"const rt::View<T> vseed_{name} = gys_p != nullptr && !gys_copied ? rt::View<T>{{const_cast<T*>(gys_p), gys_b}} : vseedrows_{name};"
                )
                rows_before.append(
                    f"if (gys_copied) rt::strided_row(vseedrows_{name}, gys_p, gys_b, gys_h, m, b, {width});"
                )
            else:
                k = states.index(role.split(":", 1)[1])
                head.append(f"const rt::View<T> vseed_{name} = m == nullptr ? vgcur_{k} : vseedrows_{name};")
                rows_before.append(
                    f"if (m != nullptr) rt::select_row(vseedrows_{name}, vgcur_{k}, rt::View<T>{{nullptr, 0}}, m, b, {width});"
                )
        head += saved_views
        rows_after = []
        for value, tensor in stores.items():
            if value in placed:
                continue
            width = elems(back[value].width)
            head.append(f"const rt::View<T> vstore_{value}{{{tensor}.data_ptr<T>() + t * B * {width}, {width}}};")
            rows_after.append(
                f"rt::select_row(vstore_{value}, {step.view(value)}, rt::View<T>{{nullptr, 0}}, nullptr, b, {width});"
            )
        # The state gradients through the step, row by row in its last loop over rows (carry_row
        # returns at once where the step wrote them in place).
        for k, s in enumerate(states):
            grad = back.outputs.get(f"grad:{s}")
            src = step.view(grad) if grad else "rt::View<T>{nullptr, 0}"
            rows_after.append(f"rt::carry_row(vgnxt_{k}, {src}, vgcur_{k}, m, b, H);")
        parts, local = step.team_parts(before=rows_before, after=rows_after)
        if accum:  # sums over the batch at each step, added by one thread
            adds = [
                f"  {{ T* acc = gp_{p}.data_ptr<T>(); const T* d = {step.view(value)}.p; for (int64_t j = 0; j < H; ++j) acc[j] += d[j]; }}"
                for p, value in accum
            ]
            parts.append(["team.serial([&] {", *adds, "});"])
            local = False
        L += ["  " + s for s in team_loop(head + step.per_step, parts, local)]
        for k in range(ns):
            L.append(f"  at::Tensor* gcur_{k} = Tn % 2 == 0 ? &ga_{k} : &gb_{k};")
        L += [f"  {call};" for _, call in deferred.values()]
        # the prologue backward over every timestep at once
        L += ["  " + s for s in pro_seed_lines]
        L += ["  " + s for s in pro_all.alloc]
        L += ["  " + s for s in pro_all.body]
        L.append("  at::Tensor g_x = at::empty({0}, opts);")
        if g_input:
            L.append("  if (need_input) {")
            L += ["    " + s for s in pro_in.alloc]
            L += ["    " + s for s in pro_in.body]
            gt = pro_in.tensor(g_input) or pro_all.tensor(g_input)
            if gt is None:
                raise Unsupported("an input gradient without a tensor")
            L.append(f"    g_x = {gt}.view({{Tn, B, I}});")
            L.append("  }")
        for p, value in [(r.split(":", 1)[1], v) for r, v in pro_back.outputs.items()]:
            if p in plan.vector_params:
                if pro_back[value].batched:
                    raise Unsupported("a batched parameter gradient in the prologue")
                L.append(f"  gp_{p}.add_({pro_all.tensor(value)});")
        # weight gradients: one GEMM per projection over every timestep
        rhs: dict[str, str] = {}  # gradient tensor -> its weight_grad_rhs
        for Lin in plan.linears:
            if Lin.in_step and Lin.name not in glin or not Lin.in_step and f"grad:{Lin.name}" not in pro_back.outputs:
                L.append(
                    f"  const at::Tensor gw_{Lin.name} = at::zeros({{w_{Lin.name}.size(0), w_{Lin.name}.size(1)}}, opts);"
                )
                if Lin.has_bias:
                    L.append(f"  const at::Tensor gbias_{Lin.name} = at::zeros({{w_{Lin.name}.size(1)}}, opts);")
                continue
            if Lin.in_step:
                g = glin[Lin.name]
                entry, off = self.where[Lin.operand]
                width = prog.step[Lin.operand].width
                operand = f"tp_{entry}.narrow(1, {elems(off) if off else '0'}, {elems(width)})"
            else:
                value = pro_back.outputs[f"grad:{Lin.name}"]
                found = pro_all.tensor(value)
                if found is None:
                    raise Unsupported("a weight gradient without a tensor")
                g = found
                entry, off = self.pro_where[Lin.operand]
                width = prog.prologue[Lin.operand].width
                base = "x2d" if entry == "x" else f"tp_{entry}"
                operand = f"{base}.narrow(1, {elems(off) if off else '0'}, {elems(width)})"
            if g not in rhs:  # one gradient feeds several weights (W and U of the same gates): prepared once
                rhs[g] = f"rhs_{len(rhs)}"
                L.append(f"  const at::Tensor {rhs[g]} = rt::weight_grad_rhs<T>({g});")
            bias = "nullptr"
            if Lin.has_bias:  # the column sums of g, in the weight gradient's pass over it
                L.append(f"  at::Tensor gbias_{Lin.name};")
                bias = f"&gbias_{Lin.name}"
            L.append(
                f"  const at::Tensor gw_{Lin.name} = rt::weight_grad<T>({operand}, {g}, {rhs[g]}, {bias}, *{workspace.slot()});"
            )
        results = ["g_x"] + [f"*gcur_{k}" for k in range(ns)]
        for p, pieces in self.param_pieces().items():
            if not pieces:
                results.append(f"at::zeros_like(P_{p})")
            else:
                results.append("(" + " + ".join(pieces) + ").clone()" if len(pieces) == 1 else " + ".join(pieces))
        L.insert(3, workspace.declaration())
        L.append(f"  return {tuple_type}({', '.join(results)});")
        L.append("}")
        L.append("")
        return L

    def param_pieces(self) -> dict[str, list[str]]:
        pieces: dict[str, list[str]] = {p: [] for p in self.spec.param_names}
        for L in self.plan.linears:
            k_all = len(L.weights)
            for k, w in enumerate(L.weights):
                pieces[w].append(
                    f"gw_{L.name}" if k_all == 1 else f"gw_{L.name}.narrow(1, {elems(k) if k else '0'}, H)"
                )
                if L.biases[k]:
                    pieces[L.biases[k]].append(
                        f"gbias_{L.name}" if k_all == 1 else f"gbias_{L.name}.narrow(0, {elems(k) if k else '0'}, H)"
                    )
        for name in self.plan.vector_params:
            pieces[name].append(f"gp_{name}")
        return pieces

    # -- the operators

    def registration(self) -> list[str]:
        ns = len(self.spec.state_names)
        nt = len(self.entries)
        np_ = len(self.spec.param_names)
        fwd_ret = ", ".join(["Tensor"] * (1 + ns + nt))
        bwd_ret = ", ".join(["Tensor"] * (1 + ns + np_))
        fwd_t = "std::tuple<" + ", ".join(["at::Tensor"] * (1 + ns + nt)) + ">"
        bwd_t = "std::tuple<" + ", ".join(["at::Tensor"] * (1 + ns + np_)) + ">"
        return [
            f"static {fwd_t} novolstm_forward(const at::Tensor& x, const std::optional<at::Tensor>& mask, bool reverse, bool keep_tape, at::TensorList state, at::TensorList params) {{",
            '  return AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "novolstm_forward", [&] { return forward_impl<scalar_t>(x, mask, reverse, keep_tape, state, params); });',
            "}",
            "",
            f"static {bwd_t} novolstm_backward(const std::optional<at::Tensor>& g_ys, at::TensorList g_final, const at::Tensor& x, const std::optional<at::Tensor>& mask, bool reverse, bool need_input, at::TensorList params, at::TensorList tape) {{",
            '  return AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "novolstm_backward", [&] { return backward_impl<scalar_t>(g_ys, g_final, x, mask, reverse, need_input, params, tape); });',
            "}",
            "",
            f"TORCH_LIBRARY({self.ns}, m) {{",
            f'  m.def("forward(Tensor x, Tensor? mask, bool reverse, bool keep_tape, Tensor[] state, Tensor[] params) -> ({fwd_ret})");',
            f'  m.def("backward(Tensor? g_outputs, Tensor[] g_final, Tensor x, Tensor? mask, bool reverse, bool need_input, Tensor[] params, Tensor[] tape) -> ({bwd_ret})");',
            "}",
            "",
            f"TORCH_LIBRARY_IMPL({self.ns}, CPU, m) {{",
            '  m.impl("forward", TORCH_FN(novolstm_forward));',
            '  m.impl("backward", TORCH_FN(novolstm_backward));',
            "}",
            "",
        ]
