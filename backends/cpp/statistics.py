"""LayerNorm's statistic on the C++ kernel's tape: a backward graph that reads each row's inverse
standard deviation where the forward pass left it, instead of recomputing it.

``normalize_units_grad(g, y, z)`` divides by sqrt(var z + eps), which it recomputes from z: two
passes over each row (the mean, then the centred squares), in every step of the backward pass,
and z (often a whole GEMM's product) kept on the tape for that alone. The C++ forward computes
that statistic anyway, to normalize; its tape can keep it, one number per row. ``saved_statistics``
rewrites such a node into ``normalize_units_grad_rstd(g, y, r)``, r a saved leaf of width "S"
(the statistic of the forward's normalize node, computed by the same code from the same row, so
the gradients are the same bits), and drops what the backward pass then no longer reads.

The rewrite is this emitter's own (the NumPy, JAX and Keras backends still recompute the
statistic, and their graphs are unchanged).

Examples:
    >>> import novolstm
    >>> from novolstm.codegen import plan
    >>> p = plan(novolstm.load_spec("ln_lstm"))
    >>> back, stats = saved_statistics(p.step_backward, p.program.step)
    >>> sorted(stats.values())
    ['f_norm_2', 'g_norm_2', 'h_next_norm', 'i_norm_2', 'o_norm_2']
    >>> "z_h" in back, any(n.op == "normalize_units_grad" for n in back.nodes)
    (False, False)
"""

from __future__ import annotations

from dataclasses import replace

from novolstm.ir import Graph, NameAllocator, Node, check_graph

#: The rewritten VJP: args g, y (the normalized row), r (the row's 1 / sqrt(var z + eps), width "S").
RSTD_GRAD = "normalize_units_grad_rstd"
#: The ``of`` attribute of a statistic's saved leaf.
STATISTIC = "statistic"


def saved_statistics(back: Graph, forward: Graph) -> tuple[Graph, dict[str, str]]:
    """``back`` reading the statistic of each batched normalize node of ``forward`` it differentiates.

    Args:
        back: the backward graph of ``forward`` (a step's or a prologue's).
        forward: the forward graph.

    Returns:
        The rewritten graph, and each new saved leaf's forward normalize node (leaf -> node).
        A saved value that only the rewritten nodes read leaves the graph.
    """
    names = NameAllocator([n.name for n in back.nodes] + [n.name for n in forward.nodes])
    leaf_of: dict[str, str] = {}  # forward normalize node -> its statistic's leaf
    nodes: list[Node] = []
    unread: set[str] = set()  # the rewritten nodes' z: maybe no longer read
    for n in back.nodes:
        if n.op == "normalize_units_grad":
            g, y, z = n.args
            source = forward[y] if y in forward else None
            if (
                source is not None
                and source.op == "normalize_units"
                and source.args == (z,)
                and source.batched
                and back[y].op == "saved"
            ):
                if y not in leaf_of:
                    leaf_of[y] = names.claim(f"rstd_{y}")
                n = replace(n, op=RSTD_GRAD, args=(g, y, leaf_of[y]))
                unread.add(z)
        nodes.append(n)
    if not leaf_of:
        return back, {}
    read = {a for n in nodes for a in n.args} | set(back.outputs.values())
    kept = [n for n in nodes if not (n.op == "saved" and n.name in unread and n.name not in read)]
    leaves = [Node(leaf, "saved", (), (("of", STATISTIC),), "S", True) for leaf in leaf_of.values()]
    graph = Graph(leaves + kept, dict(back.outputs))
    return check_graph(graph, "saved_statistics"), {leaf: y for y, leaf in leaf_of.items()}


__all__ = ["RSTD_GRAD", "STATISTIC", "saved_statistics"]
