"""Load cell specs from TOML into validated ``novolstm.spec_model.Spec`` objects.

Every rule a spec must follow is checked here, once, and a violation raises
``novolstm.errors.SpecError`` naming the file, the key and what was expected.
Expressions are parsed by the whitelist in ``novolstm.expr``; nothing in a spec
is ever executed.
"""

from __future__ import annotations

import math
import os
import sys
from dataclasses import dataclass
from importlib import resources
from typing import Any, Mapping

from .errors import SpecError
from .expr import (
    FUNCTIONS,
    IDENTIFIER,
    Binary,
    Call,
    Const,
    Expr,
    ExpressionError,
    Name,
    Neg,
    format_expression,
    names_in,
    parse_expression,
)
from .spec_model import DIMENSIONS, Init, Numerics, Param, Spec

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib

SPEC_VERSION = 1
TOP_LEVEL_KEYS = ("spec_version", "name", "description", "input", "output", "state", "params", "equations", "numerics")
NUMERICS_KEYS = ("layer_norm_epsilon", "layer_norm_variance", "softmax_axis")
#: Initializer names and the arguments each accepts.
INITIALIZER_ARGS = {
    "zeros": (),
    "ones": (),
    "constant": ("value",),
    "uniform": ("limit",),
    "normal": ("stddev",),
    "glorot_uniform": (),
    "orthogonal": (),
}
MAX_SPEC_BYTES = 1 << 20


# ---------------------------------------------------------------- public entry points


def list_specs() -> list[str]:
    """Names of the built-in cells.

    Examples:
        >>> "novolstm" in list_specs()
        True
    """
    return sorted(
        entry.name[: -len(".toml")]
        for entry in resources.files("novolstm.spec").iterdir()
        if entry.name.endswith(".toml")
    )


def load_spec(spec: "str | os.PathLike | Spec") -> Spec:
    """A built-in name, a path to a spec file, or a loaded spec -> a validated ``Spec``.

    Args:
        spec: a built-in name (``list_specs()``), the path of a ``.toml`` spec, or a ``Spec``
            (returned as it is).

    Returns:
        The validated ``Spec``.

    Raises:
        SpecError: an unknown name, or a file that is not a valid spec; the message names
            the file, the key and what was expected.

    Examples:
        >>> load_spec("novolstm").name
        'novolstm'
    """
    if isinstance(spec, Spec):
        return spec
    if isinstance(spec, os.PathLike) or (isinstance(spec, str) and (spec.endswith(".toml") or os.sep in spec)):
        path = os.fspath(spec)
        try:
            with open(path, "rb") as fh:
                raw = fh.read(MAX_SPEC_BYTES + 1)
        except OSError as exc:
            raise SpecError(path, f"cannot read spec file: {exc.strerror}") from None
        return loads_spec(raw, source=path)
    if isinstance(spec, str):
        if not IDENTIFIER.match(spec) or spec not in list_specs():
            raise SpecError(
                repr(spec), f"no built-in spec of that name; expected one of {list_specs()} or a path to a .toml file"
            )
        raw = resources.files("novolstm.spec").joinpath(f"{spec}.toml").read_bytes()
        return loads_spec(raw, source=f"<builtin {spec}.toml>")
    raise TypeError(f"expected a spec name, a path or a Spec, got {type(spec).__name__}")


def loads_spec(text: "str | bytes", source: str = "<string>") -> Spec:
    """Parse TOML text into a validated spec.

    Args:
        text: the spec as TOML.
        source: the name error messages give the text.

    Returns:
        The validated ``Spec``.

    Raises:
        SpecError: text that is not a valid spec.
    """
    if isinstance(text, str):
        text = text.encode()
    if len(text) > MAX_SPEC_BYTES:
        raise SpecError(source, f"spec larger than {MAX_SPEC_BYTES} bytes")
    try:
        data = tomllib.loads(text.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise SpecError(source, f"not valid TOML: {exc}") from None
    return parse_spec(data, source=source)


def parse_spec(data: Mapping[str, Any], source: str = "<memory>") -> Spec:
    """Validate plain data (as read from TOML) into a ``Spec``."""
    return _Loader(source).load(data)


# ---------------------------------------------------------------- shapes of values in a spec


@dataclass(frozen=True)
class Kind:
    """What a name or subexpression holds: a batched row of some width, a parameter, or a literal."""

    batched: bool
    dims: tuple[str, ...]  # ("units",) or ("input",) when batched; the parameter shape otherwise

    def describe(self) -> str:
        if self.batched:
            return f"a batch of {self.dims[0]}-wide rows"
        if not self.dims:
            return "a numeric literal"
        return f"a parameter of shape ({', '.join(self.dims)})"


BATCH_UNITS = Kind(True, ("units",))
BATCH_INPUT = Kind(True, ("input",))
SCALAR = Kind(False, ())
UNITS_VECTOR = Kind(False, ("units",))


class _Loader:
    def __init__(self, source: str):
        self.source = source

    def fail(self, message: str):
        raise SpecError(self.source, message)

    # -- top level

    def load(self, data: Mapping[str, Any]) -> Spec:
        if not isinstance(data, Mapping):
            self.fail("expected a table at the top level")
        unknown = sorted(set(data) - set(TOP_LEVEL_KEYS))
        if unknown:
            self.fail(f"unknown key {unknown[0]!r}; expected only {list(TOP_LEVEL_KEYS)}")
        version = self.required(data, "spec_version", int, "the integer 1")
        if isinstance(version, bool) or version != SPEC_VERSION:
            self.fail(f"spec_version: expected {SPEC_VERSION}, got {version!r}")
        name = self.identifier(self.required(data, "name", str, 'a cell name such as "lstm"'), "name")
        description = self.required(data, "description", str, "a one-paragraph description")
        input_name = self.identifier(self.required(data, "input", str, 'the input name, e.g. "x"'), "input")
        output = self.identifier(self.required(data, "output", str, "the equation giving the output"), "output")
        state = self.state(self.required(data, "state", Mapping, "a table: state name -> next-value equation"))
        params = self.params(self.required(data, "params", Mapping, "a table of parameters"))
        equations = self.equations(self.required(data, "equations", Mapping, "a table: name -> expression"))
        numerics = self.numerics(data.get("numerics", {}))

        self.check_names(input_name, state, params, equations)
        ordered = self.order_equations(equations, {input_name, *(n for n, _ in state), *(p.name for p in params)})
        kinds = self.infer_kinds(input_name, state, params, ordered)
        for key, target in [("output", output), *((f"state.{n}", nxt) for n, nxt in state)]:
            if target not in equations:
                self.fail(f"{key}: {target!r} is not an equation; expected one of {sorted(equations)}")
            if kinds[target] != BATCH_UNITS:
                self.fail(f"{key}: {target!r} is {kinds[target].describe()}; expected a batch of units-wide rows")
        self.check_used(input_name, params, ordered, [output, *(nxt for _, nxt in state)])
        uses_ln = any("layer_norm" in _functions(e) for _, e in ordered)
        uses_softmax = any("softmax" in _functions(e) for _, e in ordered)
        if uses_ln and numerics.layer_norm_epsilon is None:
            self.fail("numerics.layer_norm_epsilon: required because an equation calls layer_norm (pin it, e.g. 1e-3)")
        if not uses_ln and numerics.layer_norm_epsilon is not None:
            self.fail("numerics.layer_norm_epsilon: given but no equation calls layer_norm")
        if not uses_softmax and "softmax_axis" in data.get("numerics", {}):
            self.fail("numerics.softmax_axis: given but no equation calls softmax")
        return Spec(
            name=name,
            description=description,
            input=input_name,
            output=output,
            state=state,
            params=params,
            equations=ordered,
            numerics=numerics,
            spec_version=version,
            source=self.source,
        )

    def required(self, data: Mapping, key: str, kind: type, expected: str):
        if key not in data:
            self.fail(f"missing key {key!r} (expected {expected})")
        value = data[key]
        if not isinstance(value, kind):
            self.fail(f"{key}: expected {expected}, got {type(value).__name__}")
        return value

    def identifier(self, value: Any, key: str) -> str:
        if not isinstance(value, str) or not IDENTIFIER.match(value):
            self.fail(f"{key}: expected a plain ASCII identifier (letter first, at most 64 chars), got {value!r}")
        if value in FUNCTIONS:
            self.fail(f"{key}: {value!r} is the name of a function of the spec language")
        return value

    # -- sections

    def state(self, table: Mapping) -> tuple[tuple[str, str], ...]:
        if not table:
            self.fail("state: expected at least one state variable")
        return tuple(
            (self.identifier(k, "state"), self.identifier(v, f"state.{k}")) for k, v in table.items()
        )

    def params(self, table: Mapping) -> tuple[Param, ...]:
        out = []
        for name, entry in table.items():
            key = f"params.{name}"
            self.identifier(name, "params")
            if not isinstance(entry, Mapping):
                self.fail(f"{key}: expected a table with 'shape' and 'init'")
            unknown = sorted(set(entry) - {"shape", "init"})
            if unknown:
                self.fail(f"{key}: unknown key {unknown[0]!r}; expected only 'shape' and 'init'")
            shape = entry.get("shape")
            if (
                not isinstance(shape, list)
                or not 1 <= len(shape) <= 2
                or any(d not in DIMENSIONS for d in shape)
                or shape[-1] != "units"
            ):
                self.fail(
                    f"{key}.shape: expected [\"units\"], [\"input\", \"units\"] or [\"units\", \"units\"], got {shape!r}"
                )
            out.append(Param(name, tuple(shape), self.init(entry.get("init"), f"{key}.init")))
        if not out:
            self.fail("params: expected at least one parameter")
        return tuple(out)

    def init(self, value: Any, key: str) -> Init:
        if isinstance(value, str):
            name, args = value, {}
        elif isinstance(value, Mapping) and isinstance(value.get("name"), str):
            name, args = value["name"], {k: v for k, v in value.items() if k != "name"}
        else:
            self.fail(f"{key}: expected an initializer name or a table with 'name', got {value!r}")
        if name not in INITIALIZER_ARGS:
            self.fail(f"{key}: unknown initializer {name!r}; expected one of {sorted(INITIALIZER_ARGS)}")
        if set(args) != set(INITIALIZER_ARGS[name]):
            self.fail(f"{key}: initializer {name!r} takes arguments {list(INITIALIZER_ARGS[name])}, got {sorted(args)}")
        for arg, v in args.items():
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                self.fail(f"{key}.{arg}: expected a finite number, got {v!r}")
        return Init(name, tuple((k, float(args[k])) for k in INITIALIZER_ARGS[name]))

    def equations(self, table: Mapping) -> dict[str, Expr]:
        out = {}
        for name, text in table.items():
            self.identifier(name, "equations")
            if not isinstance(text, str):
                self.fail(f"equations.{name}: expected an expression string, got {type(text).__name__}")
            try:
                out[name] = parse_expression(text)
            except ExpressionError as exc:
                self.fail(f"equations.{name}: {exc}")
        if not out:
            self.fail("equations: expected at least one equation")
        return out

    def numerics(self, table: Any) -> Numerics:
        if not isinstance(table, Mapping):
            self.fail("numerics: expected a table")
        unknown = sorted(set(table) - set(NUMERICS_KEYS))
        if unknown:
            self.fail(f"numerics: unknown key {unknown[0]!r}; expected only {list(NUMERICS_KEYS)}")
        eps = table.get("layer_norm_epsilon")
        if eps is not None and (isinstance(eps, bool) or not isinstance(eps, (int, float)) or not 0 < eps < 1):
            self.fail(f"numerics.layer_norm_epsilon: expected a number in (0, 1), got {eps!r}")
        variance = table.get("layer_norm_variance", "population")
        if variance != "population":
            self.fail(f"numerics.layer_norm_variance: expected \"population\" (mean((z - mean z)^2)), got {variance!r}")
        axis = table.get("softmax_axis", "units")
        if axis != "units":
            self.fail(f"numerics.softmax_axis: expected \"units\", got {axis!r}")
        return Numerics(None if eps is None else float(eps), variance, axis)

    # -- cross-checks

    def check_names(self, input_name, state, params, equations):
        seen: dict[str, str] = {}
        groups = [("input", [input_name]), ("state", [n for n, _ in state]), ("params", [p.name for p in params]), ("equations", list(equations))]
        for section, names in groups:
            for n in names:
                if n in seen:
                    self.fail(f"{section}.{n}: name already declared in {seen[n]}")
                seen[n] = section

    def order_equations(self, equations: dict[str, Expr], leaves: set[str]):
        """Topological order of the equations; unknown names and cycles are errors."""
        known = leaves | set(equations)
        for name, expr in equations.items():
            for used in sorted(names_in(expr)):
                if used not in known:
                    self.fail(f"equations.{name}: undeclared name {used!r}")
        ordered, state = [], {}

        def visit(name, path):
            if state.get(name) == "done":
                return
            if state.get(name) == "active":
                cycle = " -> ".join(path[path.index(name):] + [name])
                self.fail(f"equations.{name}: cycle {cycle}; an equation may use state variables, not itself")
            state[name] = "active"
            for used in sorted(names_in(equations[name])):
                if used in equations:
                    visit(used, path + [name])
            state[name] = "done"
            ordered.append((name, equations[name]))

        for name in equations:
            visit(name, [])
        return tuple(ordered)

    def infer_kinds(self, input_name, state, params, ordered) -> dict[str, Kind]:
        kinds = {input_name: BATCH_INPUT, **{n: BATCH_UNITS for n, _ in state}}
        kinds.update({p.name: Kind(False, p.shape) for p in params})
        for name, expr in ordered:
            kinds[name] = self.kind_of(expr, kinds, f"equations.{name}")
        return kinds

    def kind_of(self, expr: Expr, kinds: dict[str, Kind], key: str) -> Kind:
        if isinstance(expr, Name):
            return kinds[expr.id]
        if isinstance(expr, Const):
            return SCALAR
        if isinstance(expr, Neg):
            return self.elementwise([self.kind_of(expr.arg, kinds, key)], "unary -", key)
        if isinstance(expr, Binary):
            left, right = self.kind_of(expr.left, kinds, key), self.kind_of(expr.right, kinds, key)
            if expr.op == "@":
                if not left.batched or isinstance(expr.right, Name) is False or right.batched or len(right.dims) != 2:
                    self.fail(f"{key}: '@' takes a batch of rows on the left and a parameter matrix on the right")
                if right.dims[0] != left.dims[0]:
                    self.fail(
                        f"{key}: {expr.right.id} has shape ({', '.join(right.dims)}) but its left operand has"
                        f" {left.dims[0]}-wide rows; expected ({left.dims[0]}, units)"
                    )
                return BATCH_UNITS
            return self.elementwise([left, right], f"'{expr.op}'", key)
        assert isinstance(expr, Call)
        args = [self.kind_of(a, kinds, key) for a in expr.args]
        if expr.fn == "layer_norm":
            for pos, arg in ((1, "gamma"), (2, "beta")):
                if not isinstance(expr.args[pos], Name) or args[pos] != UNITS_VECTOR:
                    self.fail(f"{key}: layer_norm's {arg} must be a parameter of shape (units), got {args[pos].describe()}")
            if args[0] != BATCH_UNITS:
                self.fail(f"{key}: layer_norm normalizes a batch of units-wide rows, got {args[0].describe()}")
            return BATCH_UNITS
        if expr.fn == "clip":
            self.clip_bounds(expr, key)
        elif expr.fn in ("maximum", "minimum"):
            if self.elementwise(args, f"{expr.fn}()", key) != BATCH_UNITS:
                self.fail(f"{key}: {expr.fn}() needs a batch of units-wide rows as one argument, got {args[0].describe()} and {args[1].describe()}")
            return BATCH_UNITS
        if args[0] != BATCH_UNITS:
            self.fail(f"{key}: {expr.fn}() takes a batch of units-wide rows, got {args[0].describe()}")
        return BATCH_UNITS

    def clip_bounds(self, expr: Call, key: str) -> None:
        # The bounds are numbers, fixed by the spec: clip's gradient mask needs them at compile time.
        from .ir import constant_value

        lo, hi = (constant_value(a) for a in expr.args[1:])
        if lo is None or hi is None:
            self.fail(f"{key}: clip(z, lo, hi) takes numeric literals as lo and hi, got {format_expression(expr)!r}")
        if not lo < hi:
            self.fail(f"{key}: clip(z, lo, hi) needs lo < hi, got lo = {lo!r}, hi = {hi!r}")

    def elementwise(self, args: list[Kind], what: str, key: str) -> Kind:
        for a in args:
            if a.dims and a.dims != ("units",):
                self.fail(f"{key}: {what} needs units-wide operands (or numbers), got {a.describe()}; use '@' for matrices")
        if any(a.batched for a in args):
            return BATCH_UNITS
        return UNITS_VECTOR if any(a.dims for a in args) else SCALAR

    def check_used(self, input_name, params, ordered, roots):
        deps = dict(ordered)
        reached: set[str] = set()
        stack = list(roots)
        while stack:
            name = stack.pop()
            if name in reached:
                continue
            reached.add(name)
            if name in deps:
                stack.extend(names_in(deps[name]))
        for name, _ in ordered:
            if name not in reached:
                self.fail(f"equations.{name}: unused (neither the output nor a state's next value depends on it)")
        for p in params:
            if p.name not in reached:
                self.fail(f"params.{p.name}: declared but never used")
        if input_name not in reached:
            self.fail(f"input: {input_name!r} is never used")


def _functions(expr: Expr) -> set[str]:
    if isinstance(expr, Call):
        return {expr.fn}.union(*(_functions(a) for a in expr.args))
    if isinstance(expr, Binary):
        return _functions(expr.left) | _functions(expr.right)
    if isinstance(expr, Neg):
        return _functions(expr.arg)
    return set()
