"""The loaded form of a cell spec: frozen dataclasses, validated once, hashable.

Canonical parameter convention (normative, see ``docs/numerics.md``): every gate
projection has its own tensors ``W_<gate>`` (input, units), ``U_<gate>`` (units,
units), ``b_<gate>`` (units,); every LayerNorm its ``gamma_<name>`` and
``beta_<name>`` (units,); a spec may declare further names. Fused matrices exist
only inside generated code.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from typing import Mapping

from .expr import Expr, format_expression

#: Symbolic dimensions a parameter shape may use.
DIMENSIONS = ("input", "units")

#: A spec's ``class_name``: a CapWords Python identifier (the layer's class; the cell's adds "Cell").
CLASS_NAME = re.compile(r"[A-Z][A-Za-z0-9]{0,63}")


def class_name_for(name: str) -> str:
    """The class name of a spec that gives none: its name in CapWords.

    Examples:
        >>> class_name_for("peephole_lstm")
        'PeepholeLstm'
    """
    return "".join(part[:1].upper() + part[1:] for part in name.split("_") if part) or "Cell"


@dataclass(frozen=True)
class Init:
    """A parameter initializer: a name from ``novolstm.init.INITIALIZERS`` and its arguments."""

    name: str
    args: tuple[tuple[str, float], ...] = ()


@dataclass(frozen=True)
class Param:
    name: str
    shape: tuple[str, ...]
    init: Init


@dataclass(frozen=True)
class Numerics:
    """Conventions frameworks disagree on, pinned by the spec."""

    layer_norm_epsilon: float | None = None
    layer_norm_variance: str = "population"
    softmax_axis: str = "units"


@dataclass(frozen=True)
class Spec:
    """A validated cell spec.

    Examples:
        >>> import novolstm
        >>> spec = novolstm.load_spec("lstm")
        >>> spec.state_names
        ('h', 'c')
        >>> spec.parameter_shapes(input_size=3, units=2)["W_i"]
        (3, 2)
    """

    name: str
    description: str
    input: str
    output: str
    state: tuple[tuple[str, str], ...]  # (state name, equation giving its next value), in tuple order
    params: tuple[Param, ...]
    equations: tuple[tuple[str, Expr], ...]  # in a valid evaluation order
    numerics: Numerics = field(default_factory=Numerics)
    spec_version: int = 1
    source: str = field(default="<memory>", compare=False)
    #: The name of the generated classes (layer ``class_name``, cell ``class_name + "Cell"``);
    #: a display name, so it does not enter ``hash``.
    class_name: str = ""

    def __post_init__(self):
        if not self.class_name:
            object.__setattr__(self, "class_name", class_name_for(self.name))

    @property
    def state_names(self) -> tuple[str, ...]:
        return tuple(name for name, _ in self.state)

    @property
    def param_names(self) -> tuple[str, ...]:
        return tuple(p.name for p in self.params)

    def param(self, name: str) -> Param:
        for p in self.params:
            if p.name == name:
                return p
        raise KeyError(name)

    def parameter_shapes(self, input_size: int, units: int) -> dict[str, tuple[int, ...]]:
        """Concrete shape of every canonical parameter, in declaration order.

        Args:
            input_size: features per timestep.
            units: the state size.

        Returns:
            Canonical name -> shape.

        Raises:
            ValueError: a size that is not a positive int.
        """
        sizes = {"input": _positive(input_size, "input_size"), "units": _positive(units, "units")}
        return {p.name: tuple(sizes[d] for d in p.shape) for p in self.params}

    def to_dict(self) -> dict:
        """Plain data that ``novolstm.spec_loader.parse_spec`` reads back to an equal spec."""
        out: dict = {
            "spec_version": self.spec_version,
            "name": self.name,
            "class_name": self.class_name,
            "description": self.description,
            "input": self.input,
            "output": self.output,
            "state": dict(self.state),
            "params": {
                p.name: {"shape": list(p.shape), "init": _init_data(p.init)} for p in self.params
            },
            "equations": {name: format_expression(e) for name, e in self.equations},
        }
        numerics = {}
        if self.numerics.layer_norm_epsilon is not None:
            numerics["layer_norm_epsilon"] = self.numerics.layer_norm_epsilon
            numerics["layer_norm_variance"] = self.numerics.layer_norm_variance
        if any("softmax(" in format_expression(e) for _, e in self.equations):
            numerics["softmax_axis"] = self.numerics.softmax_axis
        if numerics:
            out["numerics"] = numerics
        return out

    def dumps(self) -> str:
        """The spec as TOML text (canonical form; its SHA-256 is ``hash``)."""
        return dump_toml(self.to_dict())

    @property
    def hash(self) -> str:
        """SHA-256 of the canonical TOML form without ``class_name``: specs that compute the same have equal hashes.

        The class name only names the generated classes, so renaming them keeps checkpoints valid.
        """
        data = self.to_dict()
        del data["class_name"]
        return hashlib.sha256(dump_toml(data).encode()).hexdigest()


def _positive(value: int, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{what} must be a positive int, got {value!r}")
    return value


def _init_data(init: Init):
    return {"name": init.name, **dict(init.args)} if init.args else init.name


def _toml_value(value) -> str:
    if isinstance(value, str):
        escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
        return f'"{escaped}"'
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, Mapping):
        return "{ " + ", ".join(f"{k} = {_toml_value(v)}" for k, v in value.items()) + " }"
    raise TypeError(f"cannot write {type(value).__name__} as TOML")


def dump_toml(data: Mapping) -> str:
    """Write the two-level mapping of a spec as TOML (scalars first, then one table per mapping)."""
    lines = [f"{k} = {_toml_value(v)}" for k, v in data.items() if not isinstance(v, Mapping)]
    for key, table in data.items():
        if isinstance(table, Mapping):
            lines += ["", f"[{key}]"] + [f"{k} = {_toml_value(v)}" for k, v in table.items()]
    return "\n".join(lines) + "\n"
