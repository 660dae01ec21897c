"""The C forward kernel of a spec: its step loop over plain arrays, for the NumPy backend.

The NumPy backend's generated ``forward`` computes every value that does not depend on the
state for all timesteps at once (the prologue: the input projections in one BLAS call). What
is left is the loop over time, where NumPy pays about ten calls of a few tenths of a
microsecond each per step. This module renders that loop, from the same ``LoopPlan``, into
one C++ function over raw pointers that the system compiler builds alone (``numpy_ext``):
the recurrent product as a plain loop the compiler vectorizes, the step's elementwise work
fused into one loop over the batch rows, masks, the reverse direction, the initial state,
the outputs and the final state. No ATen, no BLAS, no framework.

Each operation's scalar expression is the torch kernel's (``emit.OPS`` and ``emit.ROW_OPS``
over the portable part of ``runtime.h``), so both compiled paths compute alike.

Examples:
    >>> import novolstm
    >>> from novolstm.codegen import plan
    >>> kernel = generate(plan(novolstm.load_spec("gru")), key="demo")
    >>> "novolstm_forward" in kernel.source, [a.name for a in kernel.layout.arguments]
    (True, ['seq_z_x_rz', 'seq_z_x_n', 'w_z_h', 'b_z_h'])
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources

from novolstm.codegen import LoopPlan, var
from novolstm.ir import Node

from .emit import OPS, ROW_OPS, Unsupported, elems, runtime_source

PORTABLE_BEGIN = '// ---- portable: from here to "end portable"'
PORTABLE_END = "// ---- end portable"

#: The function the library exports, and what ``sizes`` holds (see ``generate``).
ENTRY = "novolstm_forward"
KEY_ENTRY = "novolstm_kernel_key"
SIZES = ("steps", "batch", "units", "inputs", "reverse")
#: The build hides every other symbol (numpy_ext.CFLAGS): these two stay visible.
EXPORT = '__attribute__((visibility("default")))'


@dataclass(frozen=True)
class Argument:
    """One array the generated NumPy ``forward`` hands to the kernel, by its local name there.

    ``kind``: "hoisted" (time, batch, width), "weight" (operand width, width), "bias" or
    "param" (width,). Widths are IR widths (``novolstm.ir``): blocks of units, "I" or "S".
    """

    name: str
    kind: str
    widths: tuple


@dataclass(frozen=True)
class Layout:
    """The kernel's arguments: the arrays in ``arguments``' order, the initial states (batch,
    units), the mask, the outputs, the final states, then one array per ``tape`` entry (the step
    values the generated backward pass reads: "tape" (time, batch, width), "tape_row" (time,
    width) for a value of the parameters only), all null when the call keeps no tape."""

    spec_name: str
    states: int
    arguments: tuple[Argument, ...]
    tape: tuple[Argument, ...] = ()


@dataclass(frozen=True)
class Kernel:
    source: str
    layout: Layout


def layout(plan: LoopPlan) -> Layout:
    """What the generated NumPy forward passes to the kernel of ``plan``'s cell (never raises:
    a spec the emitter does not compile still generates the call, and runs the loop)."""
    step = plan.program.step
    args = [Argument(f"seq_{h}", "hoisted", (step[h].width,)) for h in plan.program.hoisted]
    for L in plan.linears:
        if L.in_step:
            args.append(Argument(f"w_{L.name}", "weight", (step[L.operand].width, step[L.name].width)))
            if L.has_bias:
                args.append(Argument(f"b_{L.name}", "bias", (step[L.name].width,)))
    step_params = {n.name: n for n in step.nodes if n.op == "param"}
    args += [Argument(var(p), "param", (step_params[p].width,)) for p in plan.vector_params if p in step_params]
    tape = tuple(Argument(var(n), "tape" if step[n].batched else "tape_row", (step[n].width,)) for n in plan.step_tape)
    return Layout(plan.spec.name, len(plan.spec.state_names), tuple(args), tape)


def portable_runtime() -> str:
    """The part of ``runtime.h`` that uses no ATen (between its two ``portable`` markers)."""
    text = runtime_source()
    begin, end = text.find(PORTABLE_BEGIN), text.find(PORTABLE_END)
    if begin < 0 or end < begin:
        raise Unsupported("runtime.h has lost its portable markers")
    return text[text.index("\n", begin) + 1 : end]


def generate(plan: LoopPlan, key: str) -> Kernel:
    """The C++ source of ``plan``'s step loop, exporting ``novolstm_forward`` and
    ``novolstm_kernel_key`` (which returns ``key``, so a loaded library can be told apart).

    ``novolstm_forward(itemsize, sizes, strides, arrays) -> int``: itemsize 4 (float) or 8
    (double); ``sizes`` the values of ``SIZES``; ``strides`` two per hoisted array (time and
    batch, in elements); ``arrays`` the layout's arrays, the initial states, the mask (uint8,
    (time, batch), or null), the outputs (batch, time, units), the final states and the tape
    (``Layout``; null where none is kept). It returns 0, or 1 where memory ran out, 2 for another
    itemsize: an exception never crosses into Python.

    Raises:
        Unsupported: the cell uses a construct this emitter does not compile.
    """
    if not (key.isascii() and key.replace("_", "").isalnum()):
        raise ValueError(f"key: expected letters, digits and underscores, got {key!r}")
    return Kernel(_Step(plan).source(key), layout(plan))


def _root(graph, name: str) -> Node:
    """The value a chain of slices views."""
    while graph[name].op == "slice":
        name = graph[name].args[0]
    return graph[name]


class _Step:
    """The step graph rendered: declarations before the loop, and the body of one step."""

    def __init__(self, plan: LoopPlan) -> None:
        self.plan, self.g = plan, plan.program.step
        self.layout = layout(plan)
        self.before: list[str] = []  # buffers and fixed views, once per call
        self.views: list[str] = []  # views that move with the step
        self.body: list[str] = []
        self.view: dict[str, str] = {}  # value -> View expression
        self._render()

    def _render(self) -> None:
        g, states = self.g, self.plan.spec.state_names
        for k, s in enumerate(states):
            self.view[s] = f"vs_{k}"
        for n in g.nodes:
            if n.op == "hoisted":
                if not n.batched:
                    raise Unsupported("a hoisted value that is not batched")
                self.view[n.name] = f"vh_{n.name}"
            elif n.op == "param":
                self.view[n.name] = f"vp_{n.name}"
                self.before.append(f"const rt::View<T> vp_{n.name}{{const_cast<T*>(p_{var(n.name)}), 0}};")
            elif n.op in ("input", "state", "const"):
                if n.op == "input":
                    raise Unsupported("the input read inside the step")
            elif n.op == "slice":
                src = self.use(n.args[0])
                start = elems(n.attr("start"))
                self.view[n.name] = f"v_{n.name}"
                line = f"const rt::View<T> v_{n.name}{{{src}.p + {start}, {src}.ld}};"
                # a view of a buffer or a parameter is made once; of a state or hoisted row, every step
                (self.views if _root(g, n.name).op in ("state", "hoisted") else self.before).append(line)
            elif n.op == "linear" or n.op in OPS or n.op in ROW_OPS:
                rows = "B" if n.batched else "1"
                self.before.append(f"std::vector<T> buf_{n.name}({rows} * {elems(n.width)});")
                ld = elems(n.width) if n.batched else "0"
                self.before.append(f"const rt::View<T> v_{n.name}{{buf_{n.name}.data(), {ld}}};")
                self.view[n.name] = f"v_{n.name}"
            else:
                raise Unsupported(f"op {n.op!r}")
        work: list = []  # GEMM nodes and lists of row-wise nodes (one loop over the rows each)
        for n in g.nodes:
            if n.op == "linear":
                work.append(n)
            elif n.op != "const" and (n.op in OPS or n.op in ROW_OPS):
                if not n.batched:  # reads parameters and constants only: the same every step
                    self.before.extend(self._row_loop([n], "1"))
                elif work and isinstance(work[-1], list):
                    work[-1].append(n)
                else:
                    work.append([n])
        for item in work:
            self.body.extend(self._row_loop(item, "B") if isinstance(item, list) else self._gemm(item))

    def use(self, name: str) -> str:
        """The View of value ``name``, refusing a bare constant where a row is read."""
        if self.g[name].op == "const":
            raise Unsupported("a constant where a row is read")
        return self.view[name]

    def _gemm(self, n: Node) -> list[str]:
        operand = self.g[n.args[0]]
        if not operand.batched:
            raise Unsupported("a GEMM over an unbatched value")
        a = self.use(operand.name)
        bias = f"p_b_{n.name}" if any(n.attr("biases")) else "nullptr"
        return [
            f"ct::gemm_rows<T>({a}.p, {a}.ld, p_w_{n.name}, {bias}, buf_{n.name}.data(), B, "
            f"{elems(operand.width)}, {elems(n.width)});"
        ]

    def _row_loop(self, nodes: list[Node], rows: str) -> list[str]:
        inner = [line for n in nodes for line in ["{", *("  " + c for c in self._row_code(n)), "}"]]
        return [f"for (int64_t b = 0; b < {rows}; ++b) {{", *("  " + line for line in inner), "}"]

    def _row_code(self, n: Node) -> list[str]:
        lines = [f"T* o = v_{n.name}.row(b);", f"const int64_t N = {elems(n.width)};"]
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
        if n.op in ROW_OPS:
            if any(r[0] != "a" or not r.endswith("[j]") for r in refs):
                raise Unsupported(f"{n.op} of a broadcast value")
            return lines + [ROW_OPS[n.op](n)]
        return lines + [f"for (int64_t j = 0; j < N; ++j) o[j] = {OPS[n.op](n, refs)};"]

    def _tape_lines(self, first: int) -> list[str]:
        """Each step's values the backward pass reads, copied into the tape (arrays from ``first`` on)."""
        lines = []
        for k, entry in enumerate(self.layout.tape):
            view, width = self.use(entry.name[2:]), elems(entry.widths[0])
            if entry.kind == "tape":
                dst = f"static_cast<T*>(arrays[{first + k}]) + (t * B + b) * {width}"
                lines.append(
                    f"      for (int64_t b = 0; b < B; ++b) std::memcpy({dst}, {view}.row(b), sizeof(T) * {width});"
                )
            else:
                dst = f"static_cast<T*>(arrays[{first + k}]) + t * {width}"
                lines.append(f"      std::memcpy({dst}, {view}.row(0), sizeof(T) * {width});")
        if not lines:
            return []
        return [f"    if (arrays[{first}] != nullptr) {{", *lines, "    }"]

    def source(self, key: str) -> str:
        spec, g, lay = self.plan.spec, self.g, self.layout
        states = spec.state_names
        out, nexts = g.outputs["output"], [g.outputs[f"state:{s}"] for s in states]
        for name in [out, *nexts]:
            if g[name].width != 1:
                raise Unsupported("an output or next state that is not one block of units wide")
            self.use(name)
        ns, na = len(states), len(lay.arguments)
        lines = [
            "template <typename T>",
            "void forward_impl(const int64_t* sizes, const int64_t* strides, void* const* arrays) {",
            "  const int64_t Tn = sizes[0], B = sizes[1], H = sizes[2], I = sizes[3];",
            "  const bool reverse = sizes[4] != 0;",
            "  (void)I;",
        ]
        hoisted = [a for a in lay.arguments if a.kind == "hoisted"]
        for k, arg in enumerate(lay.arguments):
            lines.append(f"  const T* p_{arg.name} = static_cast<const T*>(arrays[{k}]);")
        for k, arg in enumerate(hoisted):
            lines.append(f"  const int64_t st_{arg.name} = strides[{2 * k}], sb_{arg.name} = strides[{2 * k + 1}];")
        for k in range(ns):
            lines += [
                f"  std::vector<T> sa_{k}(static_cast<const T*>(arrays[{na + k}]), static_cast<const T*>(arrays[{na + k}]) + B * H), sb_{k}(B * H);",
                f"  T* cur_{k} = sa_{k}.data();",
                f"  T* nxt_{k} = sb_{k}.data();",
            ]
        lines += [
            f"  const uint8_t* mask = static_cast<const uint8_t*>(arrays[{na + ns}]);",
            f"  T* ys = static_cast<T*>(arrays[{na + ns + 1}]);",
            *("  " + line for line in self.before),
            "  for (int64_t s = 0; s < Tn; ++s) {",
            "    const int64_t t = reverse ? Tn - 1 - s : s;",
            "    const uint8_t* m = mask == nullptr ? nullptr : mask + t * B;",
            *(f"    const rt::View<T> vs_{k}{{cur_{k}, H}};" for k in range(ns)),
            *(
                f"    const rt::View<T> vh_{a.name[4:]}{{const_cast<T*>(p_{a.name}) + t * st_{a.name}, sb_{a.name}}};"
                for a in hoisted
            ),
            *("    " + line for line in self.views),
            *("    " + line for line in self.body),
            *self._tape_lines(na + 2 * ns + 2),
            "    for (int64_t b = 0; b < B; ++b) {",
            "      const bool on = m == nullptr || m[b] != 0;",
            f"      ct::store_row<T>(ys + (b * Tn + t) * H, {self.use(out)}.row(b), nullptr, on, H);",
            *(
                f"      ct::store_row<T>(nxt_{k} + b * H, {self.use(nxt)}.row(b), cur_{k} + b * H, on, H);"
                for k, nxt in enumerate(nexts)
            ),
            "    }",
            *(f"    std::swap(cur_{k}, nxt_{k});" for k in range(ns)),
            "  }",
            *(
                f"  std::memcpy(arrays[{na + ns + 2 + k}], cur_{k}, sizeof(T) * static_cast<size_t>(B * H));"
                for k in range(ns)
            ),
            "}",
        ]
        c_runtime = resources.files(__package__).joinpath("c_runtime.h").read_text()
        return "\n".join(
            [
                f"// Generated by novolstm from spec {spec.name!r} (sha256 {spec.hash}). Do not edit.",
                "#include <algorithm>",
                "#include <cmath>",
                "#include <cstddef>",
                "#include <cstdint>",
                "#include <cstring>",
                "#include <new>",
                "#include <utility>",
                "#include <vector>",
                "",
                "namespace novolstm_rt {",
                portable_runtime(),
                "}  // namespace novolstm_rt",
                "",
                c_runtime,
                "namespace {",
                "namespace rt = novolstm_rt;",
                "namespace ct = novolstm_c;",
                "",
                *lines,
                "}  // namespace",
                "",
                f'extern "C" {EXPORT} const char* {KEY_ENTRY}() {{ return "{key}"; }}',
                "",
                f'extern "C" {EXPORT} int {ENTRY}(int64_t itemsize, const int64_t* sizes, const int64_t* strides, void* const* arrays) {{',
                "  try {",
                "    if (itemsize == 4) {",
                "      forward_impl<float>(sizes, strides, arrays);",
                "    } else if (itemsize == 8) {",
                "      forward_impl<double>(sizes, strides, arrays);",
                "    } else {",
                "      return 2;",
                "    }",
                "  } catch (const std::bad_alloc&) {",
                "    return 1;",
                "  }",
                "  return 0;",
                "}",
                "",
            ]
        )


__all__ = ["ENTRY", "KEY_ENTRY", "SIZES", "Argument", "Kernel", "Layout", "Unsupported", "generate", "layout"]
