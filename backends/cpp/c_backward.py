"""The C backward kernel of a spec: the steps of its backward pass over the compiled forward's tape.

The NumPy backend's generated ``backward`` runs, per step from the last to the first, some
twenty NumPy calls on rows of a few hundred numbers. This module renders those steps, from the
plan's step backward graph (``LoopPlan.step_backward``), into one C++ function: the seeds (the
output's gradient and the carried state gradients, masked), the elementwise work fused into loops
over the batch rows, the recurrent product with the transposed weight as a plain loop, the sums
over the batch of the parameters' gradients, and the carry. What the loop writes, the kernel
writes: each step's gradients of the hoisted values and of the step's products (time, batch,
width), the summed gradients of the vector parameters, and the initial state's gradients. The
weight gradients (one BLAS product per weight) and the prologue's backward stay NumPy's.

Examples:
    >>> import novolstm
    >>> from novolstm.codegen import plan
    >>> lay = layout(plan(novolstm.load_spec("gru")))
    >>> [a.name for a in lay.arguments], [a.name for a in lay.grads]
    (['w_z_h'], ['gseq_z_x_n', 'gseq_z_x_rz', 'glin_z_h'])
"""

from __future__ import annotations

from dataclasses import dataclass

from novolstm.codegen import LoopPlan, var

from .c_graph import RowGraph
from .emit import Unsupported, elems

ENTRY = "novolstm_backward"


@dataclass(frozen=True)
class Argument:
    """One array of the backward kernel, by its local name in the generated ``backward``.

    ``kind``: "weight" (operand width, width), "param" (width,), "seq" (time, batch, width:
    written every step) or "sum" (width,: each step's value added).
    """

    name: str
    kind: str
    widths: tuple


@dataclass(frozen=True)
class Layout:
    """The backward kernel's arrays: ``arguments`` (the weights its products transpose, the
    parameters it reads), the forward's tape (``c_forward.Layout.tape``' order), the mask (uint8
    (time, batch), or null), the output's gradient (time, batch, units; time-major, or null for
    zeros), the final state's gradients (batch, units), then ``grads`` (written: the generated
    backward's ``gseq_``, ``glin_`` and ``gp_`` arrays) and the initial state's gradients."""

    arguments: tuple[Argument, ...]
    grads: tuple[Argument, ...]


def layout(plan: LoopPlan) -> Layout:
    """The arrays of ``plan``'s backward kernel (never raises)."""
    back, step = plan.step_backward, plan.program.step
    linears = {L.name: L for L in plan.linears if L.in_step}
    args: list[Argument] = []
    grads: list[Argument] = []
    for n in back.nodes:
        if n.op == "linear_t" and n.attr("linear") in linears:
            L = linears[n.attr("linear")]
            args.append(Argument(f"w_{L.name}", "weight", (step[L.operand].width, step[L.name].width)))
        elif n.op == "saved" and n.attr("of") == "param":
            args.append(Argument(var(n.name), "param", (n.width,)))
    for role, name in back.outputs.items():
        target = role.split(":", 1)[1]
        if target in plan.program.hoisted:
            grads.append(Argument(f"gseq_{target}", "seq", (step[target].width,)))
        elif target in linears:
            grads.append(Argument(f"glin_{target}", "seq", (step[target].width,)))
        elif target in plan.vector_params:
            grads.append(Argument(f"gp_{target}", "sum", (back[name].width,)))
    return Layout(tuple(dict.fromkeys(args)), tuple(grads))


def lines(plan: LoopPlan, tape: tuple) -> list[str]:
    """``backward_impl<T>(sizes, arrays)``: the backward kernel's C++ (see ``Layout``; ``tape``
    the forward layout's tape entries).

    Raises:
        Unsupported: the backward graph uses a construct this emitter does not compile.
    """
    back, spec = plan.step_backward, plan.spec
    lay, states = layout(plan), spec.state_names
    saved = {e.name[2:]: (k, e) for k, e in enumerate(tape)}
    seeds = {n.name: n.attr("role") for n in back.nodes if n.op == "seed"}
    taped = [n for n in back.nodes if n.op == "saved" and n.attr("of") != "param"]
    if any(n.name not in saved for n in taped):
        raise Unsupported("a saved value the forward's tape lacks")
    leaves = {name: f"vs_{name}" for name in seeds} | {n.name: f"vt_{n.name}" for n in taped}
    graph = RowGraph(back, "", "B", leaves)
    na, nt, ns = len(lay.arguments), len(tape), len(states)
    mask_at, gys_at, gin_at = na + nt, na + nt + 1, na + nt + 2
    grads_at = gin_at + ns
    out_at = grads_at + len(lay.grads)
    body = [
        "template <typename T>",
        "void backward_impl(const int64_t* sizes, void* const* arrays) {",
        "  const int64_t Tn = sizes[0], B = sizes[1], H = sizes[2], I = sizes[3];",
        "  (void)I;",
        *(f"  const T* p_{a.name} = static_cast<const T*>(arrays[{k}]);" for k, a in enumerate(lay.arguments)),
    ]
    for a in lay.arguments:
        if a.kind == "weight":  # d(operand) = d(product) @ W^T: W^T made once, read row by row
            rows, cols = (elems(w) for w in a.widths)
            body += [
                f"  std::vector<T> wt_{a.name[2:]}(static_cast<size_t>({rows} * {cols}));",
                f"  for (int64_t i = 0; i < {rows}; ++i)",
                f"    for (int64_t j = 0; j < {cols}; ++j) wt_{a.name[2:]}[j * {rows} + i] = p_{a.name}[i * {cols} + j];",
            ]
    body += [
        f"  const uint8_t* mask = static_cast<const uint8_t*>(arrays[{mask_at}]);",
        f"  const T* gys = static_cast<const T*>(arrays[{gys_at}]);",
    ]
    for k in range(ns):
        src = f"static_cast<const T*>(arrays[{gin_at + k}])"
        body.append(f"  std::vector<T> gs_{k}({src}, {src} + B * H);")
    for name in seeds:
        body += [f"  std::vector<T> sbuf_{name}(B * H);", f"  const rt::View<T> vs_{name}{{sbuf_{name}.data(), H}};"]
    body += ["  " + line for line in graph.decl + graph.fixed]
    body += [
        "  for (int64_t s = 0; s < Tn; ++s) {",
        "    const int64_t t = Tn - 1 - s;",
        "    const uint8_t* m = mask == nullptr ? nullptr : mask + t * B;",
    ]
    for n in taped:
        at, entry = saved[n.name]
        width = elems(entry.widths[0])
        ptr = f"static_cast<T*>(arrays[{na + at}])"
        if entry.kind == "tape":
            body.append(f"    const rt::View<T> vt_{n.name}{{{ptr} + t * B * {width}, {width}}};")
        else:
            body.append(f"    const rt::View<T> vt_{n.name}{{{ptr} + t * {width}, 0}};")
    body.append("    for (int64_t b = 0; b < B; ++b) {  // the seeds, zero on masked rows")
    body.append("      const bool on = m == nullptr || m[b] != 0;")
    for name, role in seeds.items():
        if role == "output":
            src = "gys == nullptr ? nullptr : gys + (t * B + b) * H"
        elif role.startswith("state:") and role[6:] in states:
            src = f"gs_{states.index(role[6:])}.data() + b * H"
        else:
            raise Unsupported(f"a seed of role {role!r}")
        body += [
            "      {",
            f"        const T* src = {src};",
            f"        T* dst = sbuf_{name}.data() + b * H;",
            "        if (on && src != nullptr) std::memcpy(dst, src, sizeof(T) * H);",
            "        else std::fill(dst, dst + H, T(0));",
            "      }",
        ]
    body.append("    }")
    body += ["    " + line for line in graph.views + graph.work]
    for k, a in enumerate(lay.grads):
        target = a.name.split("_", 1)[1]
        name = back.outputs[f"grad:{target}"]
        view, width = graph.use(name), elems(a.widths[0])
        dst = f"static_cast<T*>(arrays[{grads_at + k}])"
        if a.kind == "seq":
            if not back[name].batched:
                raise Unsupported(f"an unbatched gradient of {target!r}")
            body.append(
                f"    for (int64_t b = 0; b < B; ++b) "
                f"std::memcpy({dst} + (t * B + b) * {width}, {view}.row(b), sizeof(T) * {width});"
            )
        else:
            if back[name].batched:
                raise Unsupported(f"a batched gradient of the parameter {target!r}")
            body.append(f"    for (int64_t j = 0; j < {width}; ++j) {dst}[j] += {view}.row(0)[j];")
    body.append("    for (int64_t b = 0; b < B; ++b) {  // the carry: a masked row passes its gradient on")
    body.append("      const bool on = m == nullptr || m[b] != 0;")
    for k, s in enumerate(states):
        grad = back.outputs.get(f"grad:{s}")
        if grad is not None and (not back[grad].batched or back[grad].width != 1):
            raise Unsupported(f"the gradient of state {s!r} is not one block of units per row")
        value = "T(0)" if grad is None else f"{graph.use(grad)}.row(b)[j]"
        body += [
            "      {",
            f"        T* g = gs_{k}.data() + b * H;",
            f"        for (int64_t j = 0; j < H; ++j) g[j] = {value} + (on ? T(0) : g[j]);",
            "      }",
        ]
    body += ["    }", "  }"]
    body += [
        f"  std::memcpy(arrays[{out_at + k}], gs_{k}.data(), sizeof(T) * static_cast<size_t>(B * H));"
        for k in range(ns)
    ]
    return [*body, "}"]


__all__ = ["ENTRY", "Argument", "Layout", "layout", "lines"]
