"""Optimization passes over the step graph, and the split into prologue and step.

The passes, in order (each followed by ``novolstm.ir.check_graph``):

1. ``split_invariant_sums``: in a sum, gather the terms that do not depend on the
   state into a sub-sum of their own, so it can leave the time loop.
2. ``fold_biases``: ``x @ W + b`` becomes one linear node carrying its bias.
3. ``fuse_linears``: all projections of the same operand become one matmul against
   the concatenated weights. Where gates add a projection of the input to a
   projection of the state, both fused matrices put those gates first, in the same
   order, so one addition serves all of them.
4. ``batch_activations``: one elementwise activation over adjacent blocks of a fused
   value instead of one per block (the LSTM's i, f and o gates: one sigmoid).
5. ``hoist``: every value that does not depend on the state is computed once for
   all timesteps, before the loop (for the input projection: one GEMM).

Examples:
    >>> import novolstm
    >>> program = build_program(novolstm.load_spec("lstm"))
    >>> [n.op for n in program.prologue.nodes if n.op == "linear"]
    ['linear']
    >>> [(n.op, n.attr("weights")) for n in program.step.nodes if n.op == "linear"]
    [('linear', ('U_i', 'U_f', 'U_o', 'U_g'))]
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from .ir import ELEMENTWISE_UNARY, Graph, NameAllocator, Node, check_graph, constant_name, lower, prune, rewrite
from .spec_model import Spec


@dataclass(frozen=True)
class Program:
    """A lowered, optimized cell: what the emitters turn into source.

    ``prologue`` runs once over all timesteps (its values carry extra leading axes);
    ``step`` runs once per timestep and reads the prologue's values named in
    ``hoisted`` at that timestep.
    """

    spec: Spec
    prologue: Graph
    step: Graph
    hoisted: tuple[str, ...]

    def linear_nodes(self) -> list[Node]:
        """Every linear node of prologue and step: one fused weight matrix each."""
        return [n for g in (self.prologue, self.step) for n in g.nodes if n.op == "linear"]


def build_program(spec: Spec) -> Program:
    graph = lower(spec)
    names = NameAllocator(n.name for n in graph.nodes)
    names.taken.update(spec.param_names)
    graph = check_graph(split_invariant_sums(graph, names), "split_invariant_sums")
    graph = check_graph(fold_biases(graph), "fold_biases")
    graph = check_graph(fuse_linears(graph, names), "fuse_linears")
    graph = check_graph(batch_activations(graph, names), "batch_activations")
    prologue, step, hoisted = hoist(graph)
    check_graph(prologue, "hoist (prologue)")
    check_graph(step, "hoist (step)")
    return Program(spec, prologue, step, hoisted)


def invariant_names(graph: Graph) -> set[str]:
    """Nodes whose value does not depend on the state (the same at every timestep given x_t)."""
    out = set()
    for n in graph.nodes:
        if n.op in ("input", "param", "const") or (n.op not in ("state", "hoisted") and all(a in out for a in n.args)):
            out.add(n.name)
    return out


def split_invariant_sums(graph: Graph, names: NameAllocator) -> Graph:
    inv = invariant_names(graph)
    nodes = []
    for n in graph.nodes:
        fixed = [a for a in n.args if a in inv]
        moving = [a for a in n.args if a not in inv]
        if n.op == "add" and moving and len(fixed) > 1:
            sub = Node(names("s"), "add", tuple(fixed), width=n.width, batched=any(graph[a].batched for a in fixed))
            nodes.append(sub)
            n = replace(n, args=tuple(moving) + (sub.name,))
        nodes.append(n)
    return Graph(nodes, dict(graph.outputs))


def fold_biases(graph: Graph) -> Graph:
    users = graph.users()
    nodes = {n.name: n for n in graph.nodes}
    alias: dict[str, str] = {}
    for n in graph.nodes:
        if n.op != "add" or len(n.args) != 2:
            continue
        for lin, bias in (n.args, n.args[::-1]):
            L, b = nodes[lin], nodes[bias]
            if L.op == "linear" and users[lin] == [n.name] and b.op == "param" and L.attr("biases") == (None,):
                nodes[lin] = replace(L, attrs=(("weights", L.attr("weights")), ("biases", (bias,))))
                alias[n.name] = lin
                break
    return rewrite(Graph(list(nodes.values()), dict(graph.outputs)), alias)


def fuse_linears(graph: Graph, names: NameAllocator) -> Graph:
    inv = invariant_names(graph)
    linears = [n for n in graph.nodes if n.op == "linear"]
    groups: dict[str, list[Node]] = {}
    for L in linears:
        groups.setdefault(L.args[0], []).append(L)

    # Pairs: sums holding one projection of an invariant operand and one of a moving operand.
    pairs_by_group: dict[tuple[str, str], list[tuple[Node, Node, Node]]] = {}
    for n in graph.nodes:
        if n.op != "add":
            continue
        lins = [graph[a] for a in n.args if graph[a].op == "linear"]
        fixed = [L for L in lins if L.args[0] in inv]
        moving = [L for L in lins if L.args[0] not in inv]
        if len(fixed) == 1 and len(moving) == 1:
            key = (fixed[0].args[0], moving[0].args[0])
            pairs_by_group.setdefault(key, []).append((n, fixed[0], moving[0]))
    pairs = max(pairs_by_group.values(), key=len, default=[])
    if len(pairs) < 2:
        pairs = []  # one pair gains nothing over two slices
    # Gates that apply the same activation to their sum sit side by side, so that
    # batch_activations can apply it once to all of them.
    users = graph.users()
    consumer = {p[0].name: graph[users[p[0].name][0]].op if len(users[p[0].name]) == 1 else "" for p in pairs}
    rank = {op: k for k, op in enumerate(dict.fromkeys(consumer[p[0].name] for p in pairs))}
    pairs.sort(key=lambda p: rank[consumer[p[0].name]])

    # Block order inside each fused matrix: paired projections first, in the same order.
    order: dict[str, list[Node]] = {}
    for operand, members in groups.items():
        paired = [p[1] if p[1].args[0] == operand else p[2] for p in pairs if operand in (p[1].args[0], p[2].args[0])]
        order[operand] = paired + [L for L in members if L not in paired]

    fused: dict[str, Node] = {}
    for operand, members in order.items():
        if len(members) > 1:
            weights = tuple(w for L in members for w in L.attr("weights"))
            biases = tuple(b for L in members for b in L.attr("biases"))
            fused[operand] = Node(
                names("L"), "linear", (operand,), (("weights", weights), ("biases", biases)), len(weights)
            )

    block = {L.name: (operand, k) for operand, members in order.items() for k, L in enumerate(members)}
    pair_sum = None
    if pairs:
        pair_adds = {p[0].name: p for p in pairs}
    else:
        pair_adds = {}

    out: list[Node] = []
    emitted_fused: set[str] = set()
    alias: dict[str, str] = {}

    def fused_slice(source: Node, start: int, stop: int, name: str | None = None) -> str:
        if (start, stop) == (0, source.width):
            return source.name
        node = Node(name or names("v"), "slice", (source.name,), (("start", start), ("stop", stop)), stop - start)
        out.append(node)
        return node.name

    for n in graph.nodes:
        if n.op == "linear" and n.args[0] in fused:
            F = fused[n.args[0]]
            if F.name not in emitted_fused:
                out.append(F)
                emitted_fused.add(F.name)
            _, k = block[n.name]
            fused_slice(F, k, k + 1, name=n.name)
            continue
        if n.name in pair_adds:
            _, lx, lh = pair_adds[n.name]
            if pair_sum is None:
                P = len(pairs)
                fx, fh = fused.get(lx.args[0], lx), fused.get(lh.args[0], lh)
                pair_sum = Node(names("z"), "add", (fused_slice(fx, 0, P), fused_slice(fh, 0, P)), width=P)
                out.append(pair_sum)
            k = block[lx.name][1]
            piece = fused_slice(pair_sum, k, k + 1)
            rest = tuple(a for a in n.args if a not in (lx.name, lh.name))
            if rest:
                out.append(replace(n, args=(piece,) + rest))
            else:
                alias[n.name] = piece
            continue
        out.append(n)
    return rewrite(Graph(out, dict(graph.outputs)), alias)


def batch_activations(graph: Graph, names: NameAllocator) -> Graph:
    """Apply an elementwise activation once to a run of adjacent one-block slices."""
    users = graph.users()
    # (source, op) -> [(block, slice node, activation node)] for slices read only by that activation
    runs: dict[tuple[str, str], list[tuple[int, Node, Node]]] = {}
    for n in graph.nodes:
        if n.op == "slice" and n.width == 1 and len(users[n.name]) == 1:
            act = graph[users[n.name][0]]
            if act.op in ("sigmoid", "tanh", "relu"):
                runs.setdefault((n.args[0], act.op), []).append((n.attr("start"), n, act))
    replaced: dict[str, list[Node]] = {}  # activation name -> nodes that take its place
    for (source, op), members in runs.items():
        members.sort(key=lambda m: m[0])
        groups, current = [], [members[0]]
        for m in members[1:]:
            if m[0] == current[-1][0] + 1:
                current.append(m)
            else:
                groups.append(current)
                current = [m]
        groups.append(current)
        for group in groups:
            if len(group) < 2:
                continue
            start, stop = group[0][0], group[-1][0] + 1
            nodes = []
            if (start, stop) == (0, graph[source].width):
                block = source
            else:
                block = names("v")
                nodes.append(Node(block, "slice", (source,), (("start", start), ("stop", stop)), stop - start))
            fused = Node(names("a"), op, (block,), width=stop - start)
            nodes.append(fused)
            first = min(group, key=lambda m: graph.nodes.index(m[2]))[2].name
            replaced[first] = nodes + replaced.get(first, [])
            for k, _, act in group:
                piece = Node(act.name, "slice", (fused.name,), (("start", k - start), ("stop", k - start + 1)), 1)
                replaced.setdefault(act.name, []).append(piece)
    out: list[Node] = []
    for n in graph.nodes:
        if n.name in replaced:
            out.extend(replaced[n.name])
        else:
            out.append(n)
    return prune(Graph(out, dict(graph.outputs)))


def hoist(graph: Graph) -> tuple[Graph, Graph, tuple[str, ...]]:
    """Split into a prologue (state-independent values, all timesteps at once) and a step.

    Only batched values leave the loop: the prologue gives them a time axis, which the
    step indexes. A value computed from parameters and constants alone (``1 - b``,
    ``b1 * b2``) has no batch or time axis; it stays in the step, where it costs a few
    vector operations, and the prologue computes it again where a hoisted value needs it.
    """
    inv = invariant_names(graph)
    per_step = {n.name for n in graph.nodes if n.name in inv and not n.batched}
    step_reads = {a for n in graph.nodes if n.name not in inv or n.name in per_step for a in n.args}
    step_reads |= set(graph.outputs.values())
    hoisted = tuple(
        n.name
        for n in graph.nodes
        if n.name in inv and n.name in step_reads and n.batched and n.op not in ("param", "const", "input")
    )
    prologue = prune(
        Graph([n for n in graph.nodes if n.name in inv], {f"hoisted:{h}": h for h in hoisted}), keep_ops=("input",)
    )
    step_nodes = []
    for n in graph.nodes:
        if n.name in hoisted:
            step_nodes.append(Node(n.name, "hoisted", width=n.width))
        elif n.name not in inv or n.name in per_step:
            step_nodes.append(n)
    step = prune(Graph(step_nodes, dict(graph.outputs)))
    return prologue, step, hoisted


def split_blocks(program: Program) -> Program:
    """Optional pass: give the step each gate's block of a fused value as an array of its own.

    Where a multi-block sum (or an activation of one) is read only through slices
    (``z = x @ W + h @ U``, then one slice per gate), the slices move onto the summands,
    so each gate adds and activates its own blocks; and a slice of a hoisted value
    becomes a hoisted value itself, cut once for all timesteps in the prologue. The
    matmuls stay fused. This undoes ``batch_activations``, which suits the other
    direction: an elementwise compiler fuses the activations anyway. For compilers that handle
    contiguous per-gate arrays better than slices of a wide one read inside a loop (XLA
    on CPU reads a (time, batch, k*units) scan input slice by slice about 1.5x slower).

    Examples:
        >>> import novolstm
        >>> program = split_blocks(build_program(novolstm.load_spec("lstm")))
        >>> [program.step[h].width for h in program.hoisted]
        [1, 1, 1, 1]
        >>> [n.op for n in program.prologue.nodes if n.op == "linear"]
        ['linear']
    """
    step, prologue = program.step, program.prologue
    names = NameAllocator([n.name for n in step.nodes + prologue.nodes] + list(program.spec.param_names))
    users = step.users()
    index = {n.name: n for n in step.nodes}
    out: list[Node] = []
    made: dict[tuple[str, int, int], str] = {}
    alias: dict[str, str] = {}

    def distributable(name: str) -> bool:
        # An elementwise node read only through slices (directly, or through other such
        # nodes) can be computed block by block instead. Users are those of the input graph.
        node = index[name]
        if not isinstance(node.width, int) or node.width < 2:
            return False
        if node.op == "add":
            same = all(index[a].batched and index[a].width == node.width for a in node.args)
        else:
            same = node.op in ELEMENTWISE_UNARY
        return same and all(step[u].op == "slice" or distributable(u) for u in users.get(name, ()))

    def block(name: str, start: int, stop: int, called: str | None = None) -> str:
        node = index[name]
        if (start, stop) == (0, node.width):
            return name
        if node.op == "slice":  # a slice of a slice: one slice of the source
            return block(node.args[0], node.attr("start") + start, node.attr("start") + stop, called)
        key = (name, start, stop)
        if key not in made:
            new_name = called or names("b")  # a gate keeps its spec name (i, f, o) where it has one
            if distributable(name):
                piece = replace(
                    node, name=new_name, args=tuple(block(a, start, stop) for a in node.args), width=stop - start
                )
            else:
                piece = Node(new_name, "slice", (name,), (("start", start), ("stop", stop)), stop - start)
            out.append(piece)
            index[piece.name] = piece
            made[key] = piece.name
        return made[key]

    for n in step.nodes:
        source = n.args[0] if n.op == "slice" else None
        if source is not None and (distributable(source) or step[source].op == "slice"):
            target = block(source, n.attr("start"), n.attr("stop"), called=n.name)
            if target != n.name:
                alias[n.name] = target
            continue
        out.append(n)
    step = rewrite(Graph(out, dict(step.outputs)), alias)

    # Slices of hoisted values: cut once in the prologue, read per gate in the step.
    hoisted = list(program.hoisted)
    pro_nodes = list(prologue.nodes)
    pro_outputs = dict(prologue.outputs)
    pro_index = {n.name: n for n in pro_nodes}
    step_nodes = []
    for n in step.nodes:
        if n.op == "slice" and step[n.args[0]].op == "hoisted":
            origin, start, stop = pro_index[n.args[0]], n.attr("start"), n.attr("stop")
            while origin.op == "slice":
                origin, start, stop = (
                    pro_index[origin.args[0]],
                    origin.attr("start") + start,
                    origin.attr("start") + stop,
                )
            cut = Node(n.name, "slice", (origin.name,), (("start", start), ("stop", stop)), stop - start)
            pro_nodes.append(cut)
            pro_index[cut.name] = cut
            pro_outputs[f"hoisted:{n.name}"] = n.name
            hoisted.append(n.name)
            n = Node(n.name, "hoisted", width=n.width)
        step_nodes.append(n)
    step = prune(Graph(step_nodes, dict(step.outputs)))
    live = {n.name for n in step.nodes if n.op == "hoisted"}
    kept = tuple(h for h in hoisted if h in live)
    prologue = prune(Graph(pro_nodes, {f"hoisted:{h}": h for h in kept}), keep_ops=("input",))
    check_graph(prologue, "split_blocks (prologue)")
    check_graph(step, "split_blocks (step)")
    return Program(program.spec, prologue, step, kept)


# ---------------------------------------------------------------- rewrites for emitters
# Applied to the graphs an emitter renders (after differentiation): they change how a value
# is spelled in source, never what it is.

#: Nodes that are inputs of a graph rather than computations in it: never merged or split.
LEAVES = ("input", "state", "hoisted", "param", "saved", "seed")


def cse(graph: Graph) -> Graph:
    """Common subexpressions merged: a node computing what an earlier one computes reads it instead.

    (The VJP of ``z * z`` contributes ``g * z`` twice; once is enough.) Leaves never merge.

    Examples:
        >>> g = Graph([Node("z", "input"), Node("a", "mul", ("z", "z")), Node("b", "mul", ("z", "z")),
        ...            Node("c", "add", ("a", "b"))], {"out": "c"})
        >>> [n.args for n in cse(g).nodes if n.op == "add"]
        [('a', 'a')]
    """
    seen: dict[tuple, str] = {}
    same: dict[str, str] = {}
    for n in graph.nodes:
        if n.op in LEAVES or n.op == "const":
            continue
        args = tuple(same.get(a, a) for a in n.args)
        if n.op in ("add", "mul") and len(args) == 2:  # exactly commutative in IEEE arithmetic
            args = tuple(sorted(args))
        key = (n.op, args, n.attrs)
        if key in seen:
            same[n.name] = seen[key]
        else:
            seen[key] = n.name
    return rewrite(graph, same) if same else graph


def split_slices(graph: Graph) -> Graph:
    """Two or more slices of one value that do not overlap become one ``split`` node.

    The ``split`` node (named ``split_<value>``) takes the slices' place; its attribute
    ``pieces`` lists ``(start, stop, name)`` in units blocks, covering the whole value (a
    gap's name is None). Each slice stays as a ``piece`` node reading the split, so every
    reader keeps its argument: an emitter renders the split as one call unpacked into the
    pieces' names (``codegen.render``) and renders nothing for a piece. One call instead of
    one per slice; its gradient, in frameworks that differentiate the source, is one
    concatenation where separate slices would each scatter into zeros of the full width.

    Examples:
        >>> import novolstm
        >>> step = split_slices(build_program(novolstm.load_spec("lstm")).step)
        >>> [(n.attr("pieces")) for n in step.nodes if n.op == "split"][0]
        ((0, 3, 'v12'), (3, 4, 'v10'))
    """
    slices: dict[str, list[Node]] = {}
    for n in graph.nodes:
        if n.op == "slice":
            slices.setdefault(n.args[0], []).append(n)
    splits: dict[str, Node] = {}  # first slice of a group -> the split node
    pieces: dict[str, Node] = {}  # slice -> its piece node
    for source, members in slices.items():
        width = graph[source].width
        spans = sorted((m.attr("start"), m.attr("stop"), m.name) for m in members)
        if (
            len(members) < 2
            or not isinstance(width, int)
            or any(a[1] > b[0] for a, b in zip(spans, spans[1:]))
            or f"split_{source}" in graph
        ):
            continue
        bounds: list[tuple[int, int, str | None]] = []
        at = 0
        for start, stop, name in spans:
            if start > at:
                bounds.append((at, start, None))
            bounds.append((start, stop, name))
            at = stop
        if at < width:
            bounds.append((at, width, None))
        split = Node(f"split_{source}", "split", (source,), (("pieces", tuple(bounds)),), width, graph[source].batched)
        splits[members[0].name] = split
        for m in members:
            pieces[m.name] = Node(m.name, "piece", (split.name,), m.attrs, m.width, m.batched)
    if not splits:
        return graph
    nodes: list[Node] = []
    for n in graph.nodes:
        if n.name in splits:
            split = splits[n.name]
            nodes.append(split)
            nodes.extend(pieces[name] for _, _, name in split.attr("pieces") if name)
        elif n.name not in pieces:
            nodes.append(n)
    return Graph(nodes, dict(graph.outputs))


#: How a temporary is named after the op that computes it (``i_norm``: the normalization inside ``i``).
_OP_WORDS = {"add": "sum", "sub": "diff", "mul": "prod", "neg": "neg", "normalize_units": "norm", "const": "const"}


def readable_names(program: Program) -> Program:
    """Temporaries renamed after what they compute in the spec's terms, for generated code that
    reads like the spec: nothing is computed differently.

    Spec names (input, state, parameters, equation results) stay. A projection is ``z_<operand>``
    (``z_x``, ``z_h``), their sum ``z_<gates>``, a slice of either or of their activation names its gates
    by the projections' weights (``W_i`` -> ``i``: ``z_ifog``, ``z_ifo``, ``sigmoid_ifo``, ``z_g``); a product
    of two named values is ``<a>_times_<b>``, a literal ``const_<value>`` (``const_0_5``) and a function
    of one ``<function>_<value>`` (``tanh_c_next``); any other temporary is named after the spec value it leads to and its op
    (``i_norm``).

    Examples:
        >>> import novolstm
        >>> step = readable_names(build_program(novolstm.load_spec("lstm"))).step
        >>> [n.name for n in step.nodes if n.op != "param"]
        ['h', 'c', 'z_x', 'z_h', 'z_ifog', 'z_ifo', 'sigmoid_ifo', 'i', 'f', 'z_g', 'g', 'o', 'f_times_c', 'i_times_g', 'c_next', 'tanh_c_next', 'h_next']
    """
    spec = program.spec
    keep = {spec.input, *spec.state_names, *spec.param_names, *(name for name, _ in spec.equations)}
    graphs = (program.prologue, program.step)
    nodes = {n.name: n for g in graphs for n in g.nodes if n.op != "hoisted"}
    users: dict[str, list[str]] = {}
    for g in graphs:
        for name, readers in g.users().items():
            users.setdefault(name, []).extend(readers)
    gates: dict[str, tuple[str, ...]] = {}  # projection-space values: one gate label per block
    mapping: dict[str, str] = {}
    taken = set(keep)

    def label(weight: str) -> str:
        return weight.split("_", 1)[1] if "_" in weight else weight

    def joined(labels: tuple[str, ...]) -> str:
        return "".join(labels) if all(len(x) == 1 for x in labels) else "_".join(labels)

    def destination(name: str) -> str | None:
        # The spec value a temporary leads to through readers that read nothing else of it.
        seen = set()
        while name not in keep and name not in seen:
            seen.add(name)
            readers = list(dict.fromkeys(users.get(name, [])))
            if len(readers) != 1:
                return None
            name = readers[0]
        return name if name in keep else None

    def claim(base: str) -> str:
        name, k = base, 2
        while name in taken:
            name, k = f"{base}_{k}", k + 1
        taken.add(name)
        return name

    def new(name: str) -> str:
        return mapping.get(name, name)

    order = [n for g in graphs for n in g.nodes if n.op != "hoisted"]
    for n in order:
        if n.op == "linear":
            gates[n.name] = tuple(label(w) for w in n.attr("weights"))
        elif n.op == "add" and n.args and all(a in gates for a in n.args):
            gates[n.name] = gates[n.args[0]]
        elif n.op == "slice" and n.args[0] in gates:
            gates[n.name] = gates[n.args[0]][n.attr("start") : n.attr("stop")]
        elif n.op in ELEMENTWISE_UNARY and n.args and n.args[0] in gates:
            gates[n.name] = gates[n.args[0]]
        if n.name in keep or n.name in mapping:
            continue
        if n.op == "linear":
            base = f"z_{new(n.args[0])}"
        elif n.op == "const":
            base = constant_name(n.attr("value"))
        elif n.op == "add" and n.name in gates:
            base = f"z_{joined(gates[n.name])}"
        elif n.op == "slice" and n.name in gates:
            source = nodes[n.args[0]]
            prefix = {"add": "z", "linear": new(source.name)}.get(source.op, source.op)
            base = f"{prefix}_{joined(gates[n.name])}"
        elif n.op in ELEMENTWISE_UNARY and n.name in gates:
            base = f"{n.op}_{joined(gates[n.name])}"
        elif n.op == "mul" and len(n.args) == 2 and all(new(a) in keep or a in mapping for a in n.args):
            base = f"{new(n.args[0])}_times_{new(n.args[1])}"
        elif n.op in ELEMENTWISE_UNARY and n.args and (n.args[0] in keep):
            base = f"{n.op}_{n.args[0]}"
        else:
            dest = destination(n.name)
            base = f"{dest}_{_OP_WORDS.get(n.op, n.op)}" if dest else n.name
        mapping[n.name] = claim(base)

    def renamed(graph: Graph) -> Graph:
        out = [replace(n, name=new(n.name), args=tuple(new(a) for a in n.args)) for n in graph.nodes]
        roles = {
            role.replace(name, new(name)) if role.startswith("hoisted:") else role: new(name)
            for role, name in graph.outputs.items()
        }
        return Graph(out, roles)

    hoisted = tuple(new(h) for h in program.hoisted)
    return Program(spec, renamed(program.prologue), renamed(program.step), hoisted)
