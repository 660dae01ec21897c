"""Load cell specs from TOML into validated ``novolstm.spec_model.Spec`` objects.

Every rule a spec must follow is checked here, once, and a violation raises
``novolstm.errors.SpecError`` naming the file, the key and what was expected.
Expressions are parsed by the whitelist in ``novolstm.expr``; nothing in a spec
is ever executed.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from typing import Any, NoReturn, cast

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
    functions_in,
    is_finite_number,
    names_in,
    parse_expression,
    size,
)
from .reserved import reserved_by
from .spec_model import CLASS_NAME, DIMENSIONS, Init, Numerics, Param, Spec, class_name_for

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib

SPEC_VERSION = 1
TOP_LEVEL_KEYS = (
    "spec_version",
    "name",
    "class_name",
    "description",
    "input",
    "output",
    "state",
    "params",
    "equations",
    "numerics",
)
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
#: Bounds on a spec's size, so that loading and generating any spec takes bounded time
#: (well under a second) and no walk can come near Python's recursion limit. The
#: built-in cells use at most 17 parameters, 8 equations and 90 expression nodes.
MAX_STATES = 16
MAX_PARAMS = 256
MAX_EQUATIONS = 256
MAX_EXPRESSION_NODES = 4096  # summed over every equation
#: Characters no string of a spec may hold: control characters (a description may hold
#: newlines and tabs), surrogates, the Unicode line and paragraph separators (str.splitlines
#: and linecache split generated source at them) and the bidirectional overrides that can
#: make text read differently from what it is. spec.schema.json states the same classes.
_FORBIDDEN = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069\ud800-\udfff]")
_FORBIDDEN_IN_PROSE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069\ud800-\udfff]")


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


def load_spec(spec: str | os.PathLike | Spec) -> Spec:
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
        if not IDENTIFIER.fullmatch(spec) or spec not in list_specs():
            # A long or multi-line string is most likely spec text passed to the wrong loader:
            # show its start, not all of it, and name the loader that reads text.
            shown = repr(spec) if len(spec) <= 60 else repr(spec[:57]) + "..."
            hint = "; spec text is read by novolstm.loads_spec" if "\n" in spec or "=" in spec else ""
            raise SpecError(
                shown,
                f"no built-in spec of that name; expected one of {list_specs()} or a path to a .toml file{hint}",
            )
        raw = resources.files("novolstm.spec").joinpath(f"{spec}.toml").read_bytes()
        return loads_spec(raw, source=f"<builtin {spec}.toml>")
    raise TypeError(f"expected a spec name, a path or a Spec, got {type(spec).__name__}")


def loads_spec(text: str | bytes, source: str = "<string>") -> Spec:
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
    except RecursionError:  # tomllib parses nested arrays and inline tables recursively
        raise SpecError(source, "not valid TOML for a spec: arrays or tables nested too deeply") from None
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

    def fail(self, message: str) -> NoReturn:
        raise SpecError(self.source, message)

    # -- top level

    def class_name(self, value: Any) -> str:
        if not isinstance(value, str) or not CLASS_NAME.fullmatch(value):
            self.fail(
                f"class_name: expected a CapWords Python class name such as 'NovoLSTM' (at most 64 characters), got {value!r}"
            )
        return value

    def load(self, data: Mapping[str, Any]) -> Spec:
        if not isinstance(data, Mapping):
            self.fail("expected a table at the top level")
        unknown = sorted(set(data) - set(TOP_LEVEL_KEYS))
        if unknown:
            self.fail(f"unknown key {unknown[0]!r}; expected only {list(TOP_LEVEL_KEYS)}")
        self.check_strings(data)
        for key, limit in (("state", MAX_STATES), ("params", MAX_PARAMS), ("equations", MAX_EQUATIONS)):
            if isinstance(data.get(key), Mapping) and len(data[key]) > limit:
                self.fail(f"{key}: {len(data[key])} entries; expected at most {limit}")
        version = self.required(data, "spec_version", int, "the integer 1")
        if isinstance(version, bool) or version != SPEC_VERSION:
            self.fail(f"spec_version: expected {SPEC_VERSION}, got {version!r}")
        name = self.identifier(self.required(data, "name", str, 'a cell name such as "lstm"'), "name")
        class_name = self.class_name(data.get("class_name", class_name_for(name)))
        description = self.required(data, "description", str, "a one-paragraph description")
        input_name = self.spec_name(self.required(data, "input", str, 'the input name, e.g. "x"'), "input")
        output = self.spec_name(self.required(data, "output", str, "the equation giving the output"), "output")
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
        uses_ln = any("layer_norm" in functions_in(e) for _, e in ordered)
        uses_softmax = any("softmax" in functions_in(e) for _, e in ordered)
        if uses_ln and numerics.layer_norm_epsilon is None:
            self.fail("numerics.layer_norm_epsilon: required because an equation calls layer_norm (pin it, e.g. 1e-3)")
        if not uses_ln and numerics.layer_norm_epsilon is not None:
            self.fail("numerics.layer_norm_epsilon: given but no equation calls layer_norm")
        if not uses_softmax and "softmax_axis" in data.get("numerics", {}):
            self.fail("numerics.softmax_axis: given but no equation calls softmax")
        return Spec(
            name=name,
            class_name=class_name,
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
        if not isinstance(value, str) or not IDENTIFIER.fullmatch(value):
            self.fail(f"{key}: expected a plain ASCII identifier (letter first, at most 64 chars), got {value!r}")
        if value in FUNCTIONS:
            self.fail(f"{key}: {value!r} is the name of a function of the spec language")
        return value

    def spec_name(self, value: str, key: str) -> str:
        """An identifier that names a value of the cell (input, state, parameter, equation)."""
        self.identifier(value, key)
        origin = reserved_by(value)
        if origin is not None:
            self.fail(
                f"{key}: {value!r} is reserved (it is a name of {origin}, and a generated cell would"
                " collide with it); choose another name"
            )
        return value

    def check_strings(self, data: Mapping) -> None:
        """Refuse control characters in every key and string of the spec, walked without recursion."""
        stack: list = [("", data)]
        while stack:
            key, value = stack.pop()
            if isinstance(value, Mapping):
                for k, v in value.items():
                    where = f"{key}.{k}" if key else str(k)
                    stack.append((f"{key} (a key)" if key else "a top-level key", k))
                    stack.append((where, v))
            elif isinstance(value, list):
                stack.extend((f"{key}[{i}]", v) for i, v in enumerate(value))
            elif isinstance(value, str):
                bad = (_FORBIDDEN_IN_PROSE if key == "description" else _FORBIDDEN).search(value)
                if bad is not None:
                    self.fail(
                        f"{key or 'a key'}: contains the control character {bad.group()!r}; expected printable text"
                    )

    # -- sections

    def state(self, table: Mapping) -> tuple[tuple[str, str], ...]:
        if not table:
            self.fail("state: expected at least one state variable")
        return tuple((self.spec_name(k, "state"), self.spec_name(v, f"state.{k}")) for k, v in table.items())

    def params(self, table: Mapping) -> tuple[Param, ...]:
        out = []
        for name, entry in table.items():
            key = f"params.{name}"
            self.spec_name(name, "params")
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
                self.fail(f'{key}.shape: expected ["units"], ["input", "units"] or ["units", "units"], got {shape!r}')
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
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not is_finite_number(v):
                self.fail(f"{key}.{arg}: expected a finite number, got {v!r}")
            if arg in ("limit", "stddev") and v < 0:
                self.fail(f"{key}.{arg}: expected a number >= 0, got {v!r}")
        return Init(name, tuple((k, float(args[k])) for k in INITIALIZER_ARGS[name]))

    def equations(self, table: Mapping) -> dict[str, Expr]:
        out = {}
        total = 0
        for name, text in table.items():
            self.spec_name(name, "equations")
            if not isinstance(text, str):
                self.fail(f"equations.{name}: expected an expression string, got {type(text).__name__}")
            try:
                out[name] = parse_expression(text)
            except ExpressionError as exc:
                self.fail(f"equations.{name}: {exc}")
            total += size(out[name])
            if total > MAX_EXPRESSION_NODES:
                self.fail(
                    f"equations.{name}: the equations hold more than {MAX_EXPRESSION_NODES} terms in all"
                    f" (names, numbers, operators and calls); expected at most {MAX_EXPRESSION_NODES}"
                )
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
        if eps is not None and (
            isinstance(eps, bool) or not isinstance(eps, (int, float)) or not is_finite_number(eps) or not 0 < eps < 1
        ):
            self.fail(f"numerics.layer_norm_epsilon: expected a number in (0, 1), got {eps!r}")
        variance = table.get("layer_norm_variance", "population")
        if variance != "population":
            self.fail(f'numerics.layer_norm_variance: expected "population" (mean((z - mean z)^2)), got {variance!r}')
        axis = table.get("softmax_axis", "units")
        if axis != "units":
            self.fail(f'numerics.softmax_axis: expected "units", got {axis!r}')
        return Numerics(None if eps is None else float(eps), variance, axis)

    # -- cross-checks

    def check_names(self, input_name, state, params, equations):
        seen: dict[str, str] = {}
        groups = [
            ("input", [input_name]),
            ("state", [n for n, _ in state]),
            ("params", [p.name for p in params]),
            ("equations", list(equations)),
        ]
        for section, names in groups:
            for n in names:
                if n in seen:
                    self.fail(f"{section}.{n}: name already declared in {seen[n]}")
                seen[n] = section

    def order_equations(self, equations: dict[str, Expr], leaves: set[str]):
        """Topological order of the equations; unknown names and cycles are errors."""
        known = leaves | set(equations)
        for name, expr in equations.items():
            for read in sorted(names_in(expr)):
                if read not in known:
                    self.fail(f"equations.{name}: undeclared name {read!r}")
        deps = {name: sorted(n for n in names_in(expr) if n in equations) for name, expr in equations.items()}
        ordered: list = []
        done: set[str] = set()
        for root in equations:
            if root in done:
                continue
            # Depth-first with an explicit stack (a chain of equations can be as long as MAX_EQUATIONS):
            # each frame is (name, iterator over what it uses); the stack's names are the path.
            path, on_path = [root], {root}
            frames = [(root, iter(deps[root]))]
            while frames:
                name, pending = frames[-1]
                used: str | None = next((u for u in pending if u not in done), None)
                if used is None:
                    frames.pop()
                    path.pop()
                    on_path.discard(name)
                    done.add(name)
                    ordered.append((name, equations[name]))
                elif used in on_path:
                    cycle = " -> ".join(path[path.index(used) :] + [used])
                    self.fail(f"equations.{used}: cycle {cycle}; an equation may use state variables, not itself")
                else:
                    path.append(used)
                    on_path.add(used)
                    frames.append((used, iter(deps[used])))
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
                        f"{key}: {cast(Name, expr.right).id} has shape ({', '.join(right.dims)}) but its left operand has"
                        f" {left.dims[0]}-wide rows; expected ({left.dims[0]}, units)"
                    )
                return BATCH_UNITS
            kind = self.elementwise([left, right], f"'{expr.op}'", key)
            if kind == SCALAR:
                self.literal_in_range(expr, key)
            return kind
        assert isinstance(expr, Call)
        args = [self.kind_of(a, kinds, key) for a in expr.args]
        if expr.fn == "layer_norm":
            for pos, arg in ((1, "gamma"), (2, "beta")):
                if not isinstance(expr.args[pos], Name) or args[pos] != UNITS_VECTOR:
                    self.fail(
                        f"{key}: layer_norm's {arg} must be a parameter of shape (units), got {args[pos].describe()}"
                    )
            if args[0] != BATCH_UNITS:
                self.fail(f"{key}: layer_norm normalizes a batch of units-wide rows, got {args[0].describe()}")
            return BATCH_UNITS
        if expr.fn == "clip":
            self.clip_bounds(expr, key)
        elif expr.fn in ("maximum", "minimum"):
            if self.elementwise(args, f"{expr.fn}()", key) != BATCH_UNITS:
                self.fail(
                    f"{key}: {expr.fn}() needs a batch of units-wide rows as one argument, got {args[0].describe()} and {args[1].describe()}"
                )
            return BATCH_UNITS
        if args[0] != BATCH_UNITS:
            self.fail(f"{key}: {expr.fn}() takes a batch of units-wide rows, got {args[0].describe()}")
        return BATCH_UNITS

    def literal_in_range(self, expr: Expr, key: str) -> None:
        # Literals alone fold to one float64 constant (ir.constant_value); one that overflows
        # (1e308 * 10) would reach generated code as inf, so it is refused here, by name.
        from .ir import constant_value

        value = constant_value(expr)
        if value is not None and not is_finite_number(value):
            self.fail(
                f"{key}: {format_expression(expr)!r} overflows float64 (it folds to {value!r}); expected a finite number"
            )

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
                self.fail(
                    f"{key}: {what} needs units-wide operands (or numbers), got {a.describe()}; use '@' for matrices"
                )
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
