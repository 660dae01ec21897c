"""One IR graph rendered as C++ over rows of plain arrays: the shared part of the NumPy backend's
C kernels (``c_forward``, the step loop and its prologue; ``c_backward``, the step loop of the
backward pass).

Each value is a ``rt::View`` (a pointer and the distance between rows) of a buffer, a parameter,
or a caller's array; each operation's scalar expression is the torch kernel's (``emit.OPS`` and
``emit.ROW_OPS``, over the portable part of ``runtime.h``).

Examples:
    >>> import novolstm
    >>> from novolstm.codegen import plan
    >>> program = plan(novolstm.load_spec("mgu")).program
    >>> code = RowGraph(program.prologue, "q", "R", {"x": "qv_x"})
    >>> code.work[0]
    'ct::gemm_rows<T>(qv_x.p, qv_x.ld, p_w_z_x, p_b_z_x, qbuf_z_x.data(), R, I, 2 * H);'
"""

from __future__ import annotations

from novolstm.codegen import units_offset, var
from novolstm.ir import Node

from .emit import OPS, ROW_OPS, Unsupported, elems

LEAVES = ("input", "state", "hoisted", "param", "saved", "seed", "const")
#: Ops beyond ``OPS`` and ``ROW_OPS`` that a backward graph holds (see ``RowGraph``).
BACKWARD_OPS = ("concat", "linear_t", "sum_batch", "sum_units")


def root(graph, name: str) -> Node:
    """The value a chain of slices views."""
    while graph[name].op == "slice":
        name = graph[name].args[0]
    return graph[name]


class RowGraph:
    """A graph rendered over ``rows`` rows (C++ names prefixed by ``tag``): its declarations
    (buffers and fixed views, once per call), its values of the parameters alone (``fixed``:
    computed once), the views that move with the step, and its work (GEMMs and fused loops over
    the rows, in the graph's order).

    ``leaves``: the View expression of each leaf the caller provides (states, hoisted values,
    seeds, the tape, the input), whose rows change from step to step: a value of one of them is
    computed every step (every row), a value of parameters and constants alone once.

    Pointers: ``p_<var(name)>`` for a parameter, ``p_w_<linear>`` and ``p_b_<linear>`` for a
    linear's fused weight and bias; ``wt_<linear>`` (a buffer the caller fills with the
    transposed weight) for a ``linear_t``.
    """

    def __init__(self, graph, tag: str, rows: str, leaves: dict[str, str]) -> None:
        self.g, self.tag, self.rows = graph, tag, rows
        self.decl: list[str] = []
        self.fixed: list[str] = []
        self.views: list[str] = []
        self.work: list[str] = []
        self.view: dict[str, str] = dict(leaves)
        self.moves = set(leaves)
        self._render()

    def _render(self) -> None:
        g, tag = self.g, self.tag
        leaves = set(self.moves)
        for n in g.nodes:  # what changes from step to step (or row to row): what a moving leaf feeds
            if any(a in self.moves for a in n.args):
                self.moves.add(n.name)
        for n in g.nodes:
            if n.name in self.view or n.op == "const":
                continue
            if n.op == "param" or (n.op == "saved" and n.attr("of") == "param"):
                self.view[n.name] = f"{tag}vp_{n.name}"
                self.decl.append(f"const rt::View<T> {tag}vp_{n.name}{{const_cast<T*>(p_{var(n.name)}), 0}};")
            elif n.op in ("input", "state", "hoisted", "seed", "saved"):
                raise Unsupported(f"the {n.op} value {n.name!r} here")
            elif n.op == "slice":
                src = self.use(n.args[0])
                start = elems(n.attr("start"))
                self.view[n.name] = f"{tag}v_{n.name}"
                line = f"const rt::View<T> {tag}v_{n.name}{{{src}.p + {start}, {src}.ld}};"
                # a view of a buffer or a parameter is made once; of a moving leaf's row, every step
                (self.views if root(g, n.name).name in leaves else self.decl).append(line)
            elif n.op in ("linear", *BACKWARD_OPS) or n.op in OPS or n.op in ROW_OPS:
                rows = self.rows if n.batched else "1"
                self.decl.append(f"std::vector<T> {tag}buf_{n.name}({rows} * {elems(n.width)});")
                ld = elems(n.width) if n.batched else "0"
                self.decl.append(f"const rt::View<T> {tag}v_{n.name}{{{tag}buf_{n.name}.data(), {ld}}};")
                self.view[n.name] = f"{tag}v_{n.name}"
            else:
                raise Unsupported(f"op {n.op!r}")
        work: list = []  # GEMMs, batch sums and lists of row-wise nodes (one loop over the rows each)
        for n in g.nodes:
            if n.op in LEAVES or n.op == "slice":
                continue
            if n.name not in self.moves:  # parameters and constants only: once
                if n.op == "sum_batch":
                    raise Unsupported("a sum over the batch of parameters alone")
                self.fixed.extend(self._row_loop([n], "1") if n.op not in ("linear", "linear_t") else self._gemm(n))
                continue
            if n.op in ("linear", "linear_t", "sum_batch"):
                work.append(n)
            elif not n.batched:
                raise Unsupported(f"an unbatched {n.op} of batched values")
            elif work and isinstance(work[-1], list):
                work[-1].append(n)
            else:
                work.append([n])
        for item in work:
            if isinstance(item, list):
                self.work.extend(self._row_loop(item, self.rows))
            elif item.op == "sum_batch":
                self.work.extend(self._sum_batch(item))
            else:
                self.work.extend(self._gemm(item))

    def use(self, name: str) -> str:
        """The View of value ``name``, refusing a bare constant where a row is read."""
        if self.g[name].op == "const":
            raise Unsupported("a constant where a row is read")
        return self.view[name]

    def _gemm(self, n: Node) -> list[str]:
        operand = self.g[n.args[0]]
        if not operand.batched:
            raise Unsupported(f"a {n.op} of an unbatched value")
        a = self.use(operand.name)
        out = f"{self.tag}buf_{n.name}.data()"
        if n.op == "linear_t":  # d(operand) = d(out) @ W^T, W^T made once per call
            return [
                f"ct::gemm_rows<T>({a}.p, {a}.ld, wt_{n.attr('linear')}.data(), nullptr, {out}, {self.rows}, "
                f"{elems(operand.width)}, {elems(n.width)});"
            ]
        bias = f"p_b_{n.name}" if any(n.attr("biases")) else "nullptr"
        return [
            f"ct::gemm_rows<T>({a}.p, {a}.ld, p_w_{n.name}, {bias}, {out}, {self.rows}, "
            f"{elems(operand.width)}, {elems(n.width)});"
        ]

    def _sum_batch(self, n: Node) -> list[str]:
        a = self.use(n.args[0])
        return [
            "{",
            f"  T* o = {self.tag}v_{n.name}.row(0);",
            f"  const int64_t N = {elems(n.width)};",
            "  std::fill(o, o + N, T(0));",
            f"  for (int64_t b = 0; b < {self.rows}; ++b) {{",
            f"    const T* a0 = {a}.row(b);",
            "    for (int64_t j = 0; j < N; ++j) o[j] += a0[j];",
            "  }",
            "}",
        ]

    def _row_loop(self, nodes: list[Node], rows: str) -> list[str]:
        inner = [line for n in nodes for line in ["{", *("  " + c for c in self._row_code(n)), "}"]]
        return [f"for (int64_t b = 0; b < {rows}; ++b) {{", *("  " + line for line in inner), "}"]

    def _row_code(self, n: Node) -> list[str]:
        lines = [f"T* __restrict o = {self.tag}v_{n.name}.row(b);", f"const int64_t N = {elems(n.width)};"]
        refs = []
        for k, a in enumerate(self.g[name] for name in n.args):
            if a.op == "const":
                refs.append(OPS["const"](a, []))
            elif a.width == "S" and n.width != "S":
                lines.append(f"const T a{k} = {self.use(a.name)}.row(b)[0];")
                refs.append(f"a{k}")
            else:
                lines.append(f"const T* a{k} = {self.use(a.name)}.row(b);")
                refs.append(f"a{k}[j]")
        if n.op == "concat":
            return lines + self._concat(n, refs)
        if n.op == "sum_units":
            return lines + ["T s = T(0);", "for (int64_t j = 0; j < N; ++j) s += a0[j];", "o[0] = s;"]
        if n.op in ROW_OPS:
            if any(r[0] != "a" or not r.endswith("[j]") for r in refs):
                raise Unsupported(f"{n.op} of a broadcast value")
            return lines + [ROW_OPS[n.op](n)]
        return lines + [f"for (int64_t j = 0; j < N; ++j) o[j] = {OPS[n.op](n, refs)};"]

    def _concat(self, n: Node, refs: list[str]) -> list[str]:
        """The blocks side by side, zeros where no block is given (as codegen.concat_op)."""
        if any(not r.endswith("[j]") for r in refs):
            raise Unsupported("a concat of a broadcast value")
        lines, at = [], 0
        for k, (start, stop) in enumerate(n.attr("blocks")):
            if start > at:
                lines.append(f"std::fill(o + {units_offset(at)}, o + {units_offset(start)}, T(0));")
            lines.append(f"std::memcpy(o + {units_offset(start)}, a{k}, sizeof(T) * {elems(stop - start)});")
            at = stop
        if at < n.width:
            lines.append(f"std::fill(o + {units_offset(at)}, o + N, T(0));")
        return lines
