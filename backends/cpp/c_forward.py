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

from . import c_backward
from .c_graph import RowGraph
from .emit import Unsupported, elems, runtime_source

PORTABLE_BEGIN = '// ---- portable: from here to "end portable"'
PORTABLE_END = "// ---- end portable"

#: The function the library exports, and what ``sizes`` holds (see ``generate``).
ENTRY = "novolstm_forward"
KEY_ENTRY = "novolstm_kernel_key"
SIZES = ("steps", "batch", "units", "inputs", "reverse", "prologue")
#: The build hides every other symbol (numpy_ext.CFLAGS): these two stay visible.
EXPORT = '__attribute__((visibility("default")))'


@dataclass(frozen=True)
class Argument:
    """One array the generated NumPy ``forward`` hands to the kernel, by its local name there.

    ``kind``: "hoisted" (time, batch, width), "input" (time, batch, width: the time-major
    input), "weight" (operand width, width), "bias" or "param" (width,). Widths are IR widths
    (``novolstm.ir``): blocks of units, "I" or "S".
    """

    name: str
    kind: str
    widths: tuple


@dataclass(frozen=True)
class Layout:
    """The kernel's arguments: the arrays in ``arguments``' order, the initial states (batch,
    units), the mask, the outputs, the final states, then one array per ``tape`` entry (the step
    values the generated backward pass reads: "tape" (time, batch, width), "tape_row" (time,
    width) for a value of the parameters only), all null when the call keeps no tape.

    Then what the prologue reads, ``prologue`` (the time-major input, the prologue's weights,
    biases and the parameters ``arguments`` lacks), and one array per ``prologue_tape`` entry
    (the prologue values the backward pass reads, by their graph names: "prologue" (time, batch,
    width), "prologue_row" (width,)). Those are read, and written, only by a call that runs the
    prologue in the kernel (whose hoisted arrays are then null); else they are null.
    """

    spec_name: str
    states: int
    arguments: tuple[Argument, ...]
    tape: tuple[Argument, ...] = ()
    prologue: tuple[Argument, ...] = ()
    prologue_tape: tuple[Argument, ...] = ()


@dataclass(frozen=True)
class Kernel:
    """The library's source; the forward's layout; the backward's (``c_backward``), or None where
    the backward emitter does not compile the spec's backward steps (its entry then returns 3)."""

    source: str
    layout: Layout
    backward: c_backward.Layout | None = None


def layout(plan: LoopPlan) -> Layout:
    """What the generated NumPy forward passes to the kernel of ``plan``'s cell (never raises:
    a spec the emitter does not compile still generates the call, and runs the loop)."""
    step, pro = plan.program.step, plan.program.prologue
    args = [Argument(f"seq_{h}", "hoisted", (step[h].width,)) for h in plan.program.hoisted]
    pro_args = [Argument(var(n.name), "input", (n.width,)) for n in pro.nodes if n.op == "input"]
    for L in plan.linears:
        graph, into = (step, args) if L.in_step else (pro, pro_args)
        into.append(Argument(f"w_{L.name}", "weight", (graph[L.operand].width, graph[L.name].width)))
        if L.has_bias:
            into.append(Argument(f"b_{L.name}", "bias", (graph[L.name].width,)))
    step_params = {n.name: n for n in step.nodes if n.op == "param"}
    pro_params = {n.name: n for n in pro.nodes if n.op == "param"}
    args += [Argument(var(p), "param", (step_params[p].width,)) for p in plan.vector_params if p in step_params]
    pro_args += [
        Argument(var(p), "param", (pro_params[p].width,))
        for p in plan.vector_params
        if p in pro_params and p not in step_params
    ]
    tape = tuple(Argument(var(n), "tape" if step[n].batched else "tape_row", (step[n].width,)) for n in plan.step_tape)
    pro_tape = tuple(
        Argument(n, "prologue" if pro[n].batched else "prologue_row", (pro[n].width,)) for n in plan.prologue_tape
    )
    return Layout(plan.spec.name, len(plan.spec.state_names), tuple(args), tape, tuple(pro_args), pro_tape)


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
    (double); ``sizes`` the values of ``SIZES`` ("prologue" nonzero: the kernel computes the
    prologue from the input, and the hoisted arrays are not read); ``strides`` two per hoisted
    array (time and batch, in elements); ``arrays`` the layout's arrays (see ``Layout``: the
    arguments, the initial states, the mask (uint8, (time, batch), or null), the outputs
    (batch, time, units), the final states, the tape, the prologue's arrays and its tape; null
    where none is kept or read). It returns 0, or 1 where memory ran out, 2 for another
    itemsize: an exception never crosses into Python.

    Raises:
        Unsupported: the cell uses a construct this emitter does not compile.
    """
    if not (key.isascii() and key.replace("_", "").isalnum()):
        raise ValueError(f"key: expected letters, digits and underscores, got {key!r}")
    lay = layout(plan)
    try:
        backward_lines, backward = c_backward.lines(plan, lay.tape), c_backward.layout(plan)
    except Unsupported:
        backward_lines, backward = [], None
    return Kernel(_Source(plan).source(key, backward_lines), lay, backward)


def _copy_rows(dst: str, view: str, width: str, rows: str, row0: str) -> str:
    """Copy ``rows`` rows of ``view`` (``width`` elements each) to ``dst``, from its row ``row0`` on."""
    return (
        f"for (int64_t b = 0; b < {rows}; ++b) "
        f"std::memcpy({dst} + ({row0} + b) * {width}, {view}.row(b), sizeof(T) * {width});"
    )


class _Source:
    """The kernel: the prologue (run where the call asks for it) and the step loop."""

    def __init__(self, plan: LoopPlan) -> None:
        self.plan, self.layout = plan, layout(plan)
        program, states = plan.program, plan.spec.state_names
        leaves = {s: f"vs_{k}" for k, s in enumerate(states)}
        leaves.update({h: f"vh_{h}" for h in program.hoisted})
        for h in program.hoisted:
            if not program.step[h].batched:
                raise Unsupported("a hoisted value that is not batched")
        self.step = RowGraph(program.step, "", "B", leaves)
        inputs = {n.name: f"qv_{n.name}" for n in program.prologue.nodes if n.op == "input"}
        self.prologue = RowGraph(program.prologue, "q", "R", inputs)
        self.inputs = [n for n in program.prologue.nodes if n.op == "input"]

    def _tape_lines(self, first: int) -> list[str]:
        """Each step's values the backward pass reads, copied into the tape (arrays from ``first`` on)."""
        lines = []
        for k, entry in enumerate(self.layout.tape):
            view, width = self.step.use(entry.name[2:]), elems(entry.widths[0])
            if entry.kind == "tape":
                lines.append("      " + _copy_rows(f"static_cast<T*>(arrays[{first + k}])", view, width, "B", "t * B"))
            else:
                dst = f"static_cast<T*>(arrays[{first + k}]) + t * {width}"
                lines.append(f"      std::memcpy({dst}, {view}.row(0), sizeof(T) * {width});")
        if not lines:
            return []
        return [f"    if (arrays[{first}] != nullptr) {{", *lines, "    }"]

    def _prologue_lines(self, first: int) -> list[str]:
        """The prologue over every (time, batch) row, where the call asks for it (its arrays from
        ``first`` on): then the hoisted views read its buffers, and its tape is copied out."""
        lay, pro = self.layout, self.prologue
        hoisted = [a for a in lay.arguments if a.kind == "hoisted"]
        lines = [
            "const int64_t R = inside ? Tn * B : 0;  // the prologue's rows (time-major), where it runs here",
            *(f"const T* p_{a.name} = static_cast<const T*>(arrays[{first + k}]);" for k, a in enumerate(lay.prologue)),
            *(f"const rt::View<T> qv_{n.name}{{const_cast<T*>(p_{var(n.name)}), I}};" for n in self.inputs),
            *pro.decl,
            "if (inside) {",
            *("  " + line for line in pro.views + pro.fixed + pro.work),
        ]
        for a in hoisted:
            view = pro.use(a.name[4:])
            lines.append(f"  p_{a.name} = {view}.p, st_{a.name} = B * {view}.ld, sb_{a.name} = {view}.ld;")
        tape_at = first + len(lay.prologue)
        copies = []
        for k, entry in enumerate(lay.prologue_tape):
            dst, width = f"static_cast<T*>(arrays[{tape_at + k}])", elems(entry.widths[0])
            if entry.kind == "prologue":
                copies.append("    " + _copy_rows(dst, pro.use(entry.name), width, "R", "0"))
            else:
                copies.append(f"    std::memcpy({dst}, {pro.use(entry.name)}.row(0), sizeof(T) * {width});")
        if copies:
            lines += [f"  if (arrays[{tape_at}] != nullptr) {{", *copies, "  }"]
        return [*lines, "}"]

    def source(self, key: str, backward: list[str]) -> str:
        spec, g, lay, step = self.plan.spec, self.plan.program.step, self.layout, self.step
        states = spec.state_names
        out, nexts = g.outputs["output"], [g.outputs[f"state:{s}"] for s in states]
        for name in [out, *nexts]:
            if g[name].width != 1:
                raise Unsupported("an output or next state that is not one block of units wide")
            step.use(name)
        ns, na = len(states), len(lay.arguments)
        lines = [
            "template <typename T>",
            "void forward_impl(const int64_t* sizes, const int64_t* strides, void* const* arrays) {",
            "  const int64_t Tn = sizes[0], B = sizes[1], H = sizes[2], I = sizes[3];",
            "  const bool reverse = sizes[4] != 0, inside = sizes[5] != 0;",
            "  (void)I;",
        ]
        hoisted = [a for a in lay.arguments if a.kind == "hoisted"]
        for k, arg in enumerate(lay.arguments):
            lines.append(f"  const T* p_{arg.name} = static_cast<const T*>(arrays[{k}]);")
        for k, arg in enumerate(hoisted):
            lines.append(f"  int64_t st_{arg.name} = strides[{2 * k}], sb_{arg.name} = strides[{2 * k + 1}];")
        lines += ["  " + line for line in self._prologue_lines(na + 2 * ns + 2 + len(lay.tape))]
        for k in range(ns):
            lines += [
                f"  std::vector<T> sa_{k}(static_cast<const T*>(arrays[{na + k}]), static_cast<const T*>(arrays[{na + k}]) + B * H), sb_{k}(B * H);",
                f"  T* cur_{k} = sa_{k}.data();",
                f"  T* nxt_{k} = sb_{k}.data();",
            ]
        lines += [
            f"  const uint8_t* mask = static_cast<const uint8_t*>(arrays[{na + ns}]);",
            f"  T* ys = static_cast<T*>(arrays[{na + ns + 1}]);",
            *("  " + line for line in step.decl + step.fixed),
            "  for (int64_t s = 0; s < Tn; ++s) {",
            "    const int64_t t = reverse ? Tn - 1 - s : s;",
            "    const uint8_t* m = mask == nullptr ? nullptr : mask + t * B;",
            *(f"    const rt::View<T> vs_{k}{{cur_{k}, H}};" for k in range(ns)),
            *(
                f"    const rt::View<T> vh_{a.name[4:]}{{const_cast<T*>(p_{a.name}) + t * st_{a.name}, sb_{a.name}}};"
                for a in hoisted
            ),
            *("    " + line for line in step.views),
            *("    " + line for line in step.work),
            *self._tape_lines(na + 2 * ns + 2),
            "    for (int64_t b = 0; b < B; ++b) {",
            "      const bool on = m == nullptr || m[b] != 0;",
            f"      ct::store_row<T>(ys + (b * Tn + t) * H, {step.use(out)}.row(b), nullptr, on, H);",
            *(
                f"      ct::store_row<T>(nxt_{k} + b * H, {step.use(nxt)}.row(b), cur_{k} + b * H, on, H);"
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
                "",
                *backward,
                "}  // namespace",
                "",
                f'extern "C" {EXPORT} const char* {KEY_ENTRY}() {{ return "{key}"; }}',
                "",
                f'extern "C" {EXPORT} int {ENTRY}(int64_t itemsize, const int64_t* sizes, const int64_t* strides, void* const* arrays) {{',
                *_by_itemsize("forward_impl", "sizes, strides, arrays"),
                "",
                f'extern "C" {EXPORT} int {c_backward.ENTRY}(int64_t itemsize, const int64_t* sizes, void* const* arrays) {{',
                *(
                    _by_itemsize("backward_impl", "sizes, arrays")
                    if backward
                    else ["  (void)itemsize, (void)sizes, (void)arrays;", "  return 3;", "}"]
                ),
                "",
            ]
        )


def _by_itemsize(impl: str, args: str) -> list[str]:
    """An entry point's body: ``impl<float>`` or ``impl<double>`` by the caller's itemsize.

    Returns 0 when it ran, 1 when it ran out of memory, 2 for an itemsize other than 4 or 8
    (the codes numpy_ext reads).
    """
    return [
        "  try {",
        "    if (itemsize == 4) {",
        f"      {impl}<float>({args});",
        "    } else if (itemsize == 8) {",
        f"      {impl}<double>({args});",
        "    } else {",
        "      return 2;",
        "    }",
        "  } catch (const std::bad_alloc&) {",
        "    return 1;",
        "  }",
        "  return 0;",
        "}",
    ]


__all__ = ["ENTRY", "KEY_ENTRY", "SIZES", "Argument", "Kernel", "Layout", "Unsupported", "generate", "layout"]
