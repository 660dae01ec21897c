"""The mistakes ports make, as float64 models the conformance kit's diagnosis runs.

Each model computes a spec the way a port with one mistake computes it: gates in
another framework's order, another LayerNorm epsilon or the sample variance, a
softmax over the batch axis or without its maximum subtracted, a hard sigmoid, a
dropped bias or recurrent term, two gates swapping roles in a state update, an
equation reading a state's old value instead of its next one, or masking done
wrong. When a model reproduces an implementation's outputs where the spec does
not, the diagnosis names it.

The models evaluate a spec's parsed equations step by step, as
``novolstm.interpret`` does, with the functions and the masking of the port;
they share nothing with code generation. They are models of mistakes, never the
reference: the kit's expected values come from ``novolstm.conformance.golden.reference_for``.

Examples:
    >>> import numpy as np, novolstm
    >>> spec = novolstm.load_spec("lstm")
    >>> labels = [m.label for m in catalogue(spec)]
    >>> "gates 'f' and 'i' swapped (a gate-order mismatch between layouts)" in labels
    True
    >>> "masked steps update the state (the mask only zeroes the outputs)" in labels
    True
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from .. import interpret
from ..errors import SpecError
from ..expr import Binary, Call, Const, Expr, Name, Neg, format_expression, functions_in, names_in
from ..spec_loader import list_specs, load_spec, parse_spec
from ..spec_model import Spec

#: A model: ``run(params, x, state, mask) -> (outputs, final_state)``, float64.
Model = Callable


class Mistake(NamedTuple):
    """One known porting mistake: its label, its float64 model, and whether only masked steps show it."""

    label: str
    run: Model
    masking: bool = False


@dataclass(frozen=True)
class Port:
    """How a port computes a spec: its functions and its masking.

    The defaults are the spec's own numerics and the project's masking rule (a masked
    step keeps the state and outputs zeros). ``masking`` names a wrong rule:
    ``"updates_state"`` (the mask only zeroes outputs), ``"outputs_state"`` (a masked
    step outputs the carried state), ``"repeats_output"`` (a masked step repeats the
    previous output, zeros before the first), ``"as_lengths"`` (the mask read as
    lengths ``mask.sum(axis=1)``, holes ignored).
    """

    sigmoid: Callable = interpret.sigmoid
    softmax: Callable = interpret.softmax
    layer_norm: Callable = interpret.layer_norm  # (z, gamma, beta, epsilon)
    masking: str = "rule"


def run(spec: Spec, params: dict, x, state, mask, port: Port = Port()):
    """Run ``spec`` in float64 as ``port`` computes it; ``(outputs, final_state)``."""
    with np.errstate(all="ignore"):  # a mistake may overflow (a softmax without its maximum subtracted)
        return _run(spec, params, x, state, mask, port)


def _run(spec: Spec, params: dict, x, state, mask, port: Port):
    x = np.asarray(x, np.float64)
    params = {k: np.asarray(v, np.float64) for k, v in params.items()}
    batch, steps, _ = x.shape
    state = tuple(np.array(s, np.float64) for s in state)
    mask = np.ones((batch, steps), bool) if mask is None else np.asarray(mask, bool)
    if port.masking == "as_lengths":
        mask = np.arange(steps)[None, :] < mask.sum(axis=1)[:, None]
    equations = [(name, _compiled(expr, port, spec.numerics.layer_norm_epsilon)) for name, expr in spec.equations]
    carried_output = _carried_output(spec)
    outputs = np.zeros((batch, steps, state[0].shape[1]))
    previous = np.zeros_like(outputs[:, 0])
    for t in range(steps):
        env = {**params, spec.input: x[:, t], **dict(zip(spec.state_names, state))}
        for name, value in equations:
            env[name] = value(env)
        new = tuple(np.broadcast_to(env[nxt], s.shape) for (_, nxt), s in zip(spec.state, state))
        y = np.broadcast_to(env[spec.output], state[0].shape)
        keep = mask[:, t, None]
        if port.masking == "outputs_state" and carried_output is not None:
            outputs[:, t] = np.where(keep, y, state[carried_output])
        elif port.masking == "repeats_output":
            outputs[:, t] = np.where(keep, y, previous)
        else:
            outputs[:, t] = np.where(keep, y, 0.0)
        previous = outputs[:, t]
        state = new if port.masking == "updates_state" else tuple(np.where(keep, n, s) for n, s in zip(new, state))
    return outputs, state


def _carried_output(spec: Spec) -> int | None:
    """The index of the state whose next value is the output (h in the LSTM family), else None."""
    return next((k for k, (_, nxt) in enumerate(spec.state) if nxt == spec.output), None)


_BINARY = {"+": np.add, "-": np.subtract, "*": np.multiply, "@": np.matmul}


def _compiled(expr: Expr, port: Port, epsilon) -> Callable:
    """``expr`` as a function of the step's values (name -> array), built once per run."""
    if isinstance(expr, Name):
        return lambda env, name=expr.id: env[name]
    if isinstance(expr, Const):
        return lambda env, value=expr.value: value
    if isinstance(expr, Neg):
        arg = _compiled(expr.arg, port, epsilon)
        return lambda env: -arg(env)
    if isinstance(expr, Binary):
        op, left, right = _BINARY[expr.op], _compiled(expr.left, port, epsilon), _compiled(expr.right, port, epsilon)
        return lambda env: op(left(env), right(env))
    args = [_compiled(a, port, epsilon) for a in expr.args]
    if expr.fn == "layer_norm":
        z, gamma, beta = args
        return lambda env: port.layer_norm(z(env), gamma(env), beta(env), epsilon)
    own: dict[str, Callable] = {"relu": lambda v: np.maximum(v, 0.0), "tanh": np.tanh}
    fn = own.get(expr.fn) or getattr(port, expr.fn)
    return lambda env: fn(args[0](env))


# ---------------------------------------------------------------- the functions ports get wrong


def softmax_over_batch(z):
    """softmax normalized over the batch axis (``dim=0``) instead of the units axis."""
    e = np.exp(z - z.max(axis=0, keepdims=True))
    return e / e.sum(axis=0, keepdims=True)


def softmax_without_max(z):
    """exp(z) / sum(exp(z)): overflows to inf / inf = NaN once a logit passes exp's range."""
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def keras2_hard_sigmoid(z):
    return np.clip(0.2 * z + 0.5, 0.0, 1.0)


def keras3_hard_sigmoid(z):
    return np.clip(z + 3.0, 0.0, 6.0) / 6.0


def layer_norm_sample_variance(z, gamma, beta, epsilon):
    """LayerNorm with the sample variance sum((z - mean)^2) / (n - 1) (torch.var's default)."""
    centred = z - z.mean(axis=-1, keepdims=True)
    variance = (centred * centred).sum(axis=-1, keepdims=True) / (z.shape[-1] - 1)
    return centred / np.sqrt(variance + epsilon) * gamma + beta


def layer_norm_with_epsilon(other: float):
    return lambda z, gamma, beta, epsilon: interpret.layer_norm(z, gamma, beta, other)


# ---------------------------------------------------------------- the catalogue


def catalogue(spec: Spec) -> Iterator[Mistake]:
    """Yield one ``Mistake`` per known porting mistake that applies to ``spec``."""
    yield from _parameter_mistakes(spec)
    yield from _numerics_mistakes(spec)
    yield from _equation_mistakes(spec)
    yield from _masking_mistakes(spec)
    yield from _other_cells(spec)


def _with(spec: Spec, port: Port) -> Model:
    return lambda p, x, s, m: run(spec, p, x, s, m, port)


def _parameter_mistakes(spec: Spec):
    names = set(spec.param_names)
    gates = sorted({n[2:] for n in names if n.startswith("W_") and f"b_{n[2:]}" in names})
    for a, b in itertools.combinations(gates, 2):

        def swapped(p, x, s, m, a=a, b=b):
            q = dict(p)
            for kind in ("W", "U", "b"):
                if (
                    f"{kind}_{a}" in q
                    and f"{kind}_{b}" in q
                    and np.shape(q[f"{kind}_{a}"]) == np.shape(q[f"{kind}_{b}"])
                ):
                    q[f"{kind}_{a}"], q[f"{kind}_{b}"] = p[f"{kind}_{b}"], p[f"{kind}_{a}"]
            return run(spec, q, x, s, m)

        yield Mistake(f"gates {a!r} and {b!r} swapped (a gate-order mismatch between layouts)", swapped)
    for name in sorted(n for n in names if n.startswith("b_")):
        yield Mistake(
            f"bias {name} dropped", lambda p, x, s, m, name=name: run(spec, {**p, name: 0 * p[name]}, x, s, m)
        )
    for name in sorted(n for n in names if n.startswith("U_")):
        yield Mistake(
            f"recurrent term {name} missing", lambda p, x, s, m, name=name: run(spec, {**p, name: 0 * p[name]}, x, s, m)
        )


def _numerics_mistakes(spec: Spec):
    called = set().union(*(functions_in(e) for _, e in spec.equations))
    eps = spec.numerics.layer_norm_epsilon
    if "layer_norm" in called:
        for other, who in ((1e-5, "torch's default"), (1e-6, "Flax's default"), (1e-3, "Keras' default")):
            if other != eps:
                yield Mistake(
                    f"LayerNorm epsilon {other:g} ({who}) instead of {eps:g}",
                    _with(spec, Port(layer_norm=layer_norm_with_epsilon(other))),
                )
        yield Mistake(
            "LayerNorm with the sample variance (divided by n - 1) instead of the population variance",
            _with(spec, Port(layer_norm=layer_norm_sample_variance)),
        )
    if "softmax" in called:
        yield Mistake(
            "softmax over the batch axis instead of the units axis", _with(spec, Port(softmax=softmax_over_batch))
        )
        yield Mistake(
            "softmax without the maximum subtracted (exp overflows for large logits)",
            _with(spec, Port(softmax=softmax_without_max)),
        )
    if "sigmoid" in called:
        yield Mistake(
            "Keras 2 hard_sigmoid (clip(0.2 x + 0.5, 0, 1)) instead of the logistic",
            _with(spec, Port(sigmoid=keras2_hard_sigmoid)),
        )
        yield Mistake(
            "Keras 3 hard_sigmoid (relu6(x + 3) / 6) instead of the logistic",
            _with(spec, Port(sigmoid=keras3_hard_sigmoid)),
        )


def _masking_mistakes(spec: Spec):
    yield Mistake(
        "masked steps update the state (the mask only zeroes the outputs)",
        _with(spec, Port(masking="updates_state")),
        masking=True,
    )
    carried = _carried_output(spec)
    if carried is not None:
        yield Mistake(
            f"masked steps output the carried state {spec.state_names[carried]!r} instead of zeros",
            _with(spec, Port(masking="outputs_state")),
            masking=True,
        )
    yield Mistake(
        "masked steps repeat the previous output instead of zeros",
        _with(spec, Port(masking="repeats_output")),
        masking=True,
    )
    yield Mistake(
        "mask read as lengths (mask.sum(axis=1)): a hole inside a sequence is taken as a real step",
        _with(spec, Port(masking="as_lengths")),
        masking=True,
    )


def _equation_mistakes(spec: Spec):
    """Mistakes in the equations themselves: swapped roles in a state update, old states read."""
    equations = dict(spec.equations)
    for state, nxt in spec.state:
        expr = equations[nxt]
        if state not in names_in(expr):
            continue  # not an update of the state: no roles to swap
        gates = sorted(n for n in names_in(expr) if n in equations)
        for a, b in itertools.combinations(gates, 2):
            swapped = _renamed(expr, {a: b, b: a})
            if _canonical(swapped) == _canonical(expr):
                continue  # i and g in one product (i * g): swapping them changes nothing
            variant = _rewritten(spec, nxt, swapped)
            if variant is not None:
                yield Mistake(
                    f"{a!r} and {b!r} swap roles in the update of state {state!r} ({nxt} = {format_expression(expr)})",
                    _with(variant, Port()),
                )
    for name, expr in spec.equations:
        for state, nxt in spec.state:
            if nxt != name and nxt in names_in(expr):
                variant = _rewritten(spec, name, _renamed(expr, {nxt: state}))
                if variant is not None:
                    yield Mistake(f"{name!r} reads the old state {state!r} instead of {nxt!r}", _with(variant, Port()))


def _other_cells(spec: Spec):
    from .golden import reference_for

    names = set(spec.param_names)
    for other in list_specs():
        o = load_spec(other)
        if (
            other != spec.name
            and o.state_names == spec.state_names
            and set(o.param_names) <= names | {"U_s"}
            and len(set(o.param_names) & names) > len(names) // 2
        ):

            def as_other(p, x, s, m, o=o):
                shapes = o.parameter_shapes(x.shape[-1], s[0].shape[-1])
                q = {k: p[k] if k in p else np.zeros(shapes[k]) for k in o.param_names}  # absent: a zero term
                return reference_for(o)(q, x, s, m)

            yield Mistake(f"computes the {other!r} cell instead", as_other)


def _renamed(expr: Expr, mapping: dict) -> Expr:
    if isinstance(expr, Name):
        return Name(mapping.get(expr.id, expr.id))
    if isinstance(expr, Binary):
        return Binary(expr.op, _renamed(expr.left, mapping), _renamed(expr.right, mapping))
    if isinstance(expr, Neg):
        return Neg(_renamed(expr.arg, mapping))
    if isinstance(expr, Call):
        return Call(expr.fn, tuple(_renamed(a, mapping) for a in expr.args))
    return expr


def _canonical(expr: Expr) -> str:
    """A text equal for expressions equal up to the order of the terms of sums and the factors of products."""
    if isinstance(expr, Binary) and expr.op in "+*":
        operands: list[str] = []
        stack: list[Expr] = [expr]
        while stack:  # flatten a chain of the same commutative operator
            node = stack.pop()
            if isinstance(node, Binary) and node.op == expr.op:
                stack += [node.left, node.right]
            else:
                operands.append(_canonical(node))
        return f"{expr.op}({', '.join(sorted(operands))})"
    if isinstance(expr, Binary):
        return f"{expr.op}({_canonical(expr.left)}, {_canonical(expr.right)})"
    if isinstance(expr, Neg):
        return f"-({_canonical(expr.arg)})"
    if isinstance(expr, Call):
        return f"{expr.fn}({', '.join(_canonical(a) for a in expr.args)})"
    return format_expression(expr)


def _rewritten(spec: Spec, name: str, expr: Expr) -> Spec | None:
    """``spec`` with equation ``name`` replaced by ``expr``; None where that spec is not valid."""
    data = spec.to_dict()
    data["equations"] = {**data["equations"], name: format_expression(expr)}
    try:
        return parse_spec(data, source=f"<{spec.name}, mistake in {name}>")
    except SpecError:
        return None
