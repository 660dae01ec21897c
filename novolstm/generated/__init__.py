"""Where generated modules live: ``novolstm.generated.<backend>.<spec name>_<first 12 hex of its hash>``.

``novolstm.load_generated`` builds each module under that name and hands it to ``adopt``,
which names its classes for pickling and Keras serialization: a built-in spec's classes
belong to the public module of their framework (``novolstm.torch.NovoLSTM``), so a pickle
or a ``.keras`` file names them there; the classes of any other spec carry the spec's text
into what they save (the torch pickle's reduce arguments, the Keras config), so a fresh
process regenerates them from it.

Importing this package installs an import hook for the generated names, so that a pickle
naming ``novolstm.generated.torch.lstm_14ca543743a4`` resolves in a fresh process: the module
is rebuilt from the built-in spec of that name when its hash matches, or from a spec
loaded earlier in the process; a spec whose hash differs is refused by name, never loaded
in its place.
"""

from __future__ import annotations

import functools
import importlib.abc
import importlib.machinery
import re
import sys
import types
from typing import Any

#: A generated module's name: backend, spec name and the first 12 hex digits of its hash.
MODULE_NAME = re.compile(r"novolstm\.generated\.(\w+?)\.(\w+)_([0-9a-f]{12})")
#: The public module that holds the built-in specs' classes, per backend and generated class.
PUBLIC = {
    ("torch", "Cell"): "novolstm.torch",
    ("torch", "Layer"): "novolstm.torch",
    ("keras", "Cell"): "novolstm.keras",
    ("keras", "Layer"): "novolstm.keras",
    ("jax", "Cell"): "novolstm.jax",
    ("jax", "NNXCell"): "novolstm.flax",
    ("jax", "LinenCell"): "novolstm.flax.linen",
}
#: How a generated class is named in its public module, from the spec's class_name.
PUBLIC_NAME = {"Layer": "{}", "Cell": "{}Cell", "NNXCell": "{}Cell", "LinenCell": "{}Cell"}

#: Specs that are not built in, loaded in this process: "name_hash12" -> spec.
_seen: dict = {}


def module_name(spec, backend: str) -> str:
    """The name of ``spec``'s generated module for ``backend``.

    Examples:
        >>> import novolstm
        >>> module_name(novolstm.load_spec("lstm"), "torch")
        'novolstm.generated.torch.lstm_14ca543743a4'
    """
    return f"novolstm.generated.{backend}.{spec.name}_{spec.hash[:12]}"


def is_builtin(spec) -> bool:
    """Whether ``spec`` is exactly a built-in spec (same name, computation and class name)."""
    from novolstm.spec_loader import list_specs, load_spec

    return spec.name in list_specs() and load_spec(spec.name) == spec


def adopt(module: types.ModuleType, spec, backend: str) -> None:
    """Name the classes of a freshly built generated module for pickling and serialization (see above)."""
    builtin = is_builtin(spec)
    if not builtin:
        _seen[f"{spec.name}_{spec.hash[:12]}"] = spec
    for (framework, attr), public in PUBLIC.items():
        if framework != backend or attr not in vars(module):  # the Flax classes are built on first use
            continue
        cls = vars(module)[attr]
        cls.generated_module = module.__name__  # where its spec's constants are (novolstm.checkpoint)
        if builtin:
            cls.__module__ = public
            # doctest finds a module's classes by their __module__; __test__ keeps their examples here
            module.__dict__.setdefault("__test__", {})[attr] = cls
        elif backend == "torch":
            cls.__reduce_ex__ = _reduce_with_spec
            cls.spec_text, cls.generated_attr = spec.dumps(), attr
    if backend == "keras" and not builtin:
        from novolstm import keras as public_keras

        public_keras.adopt_spec_classes(module, spec)


def adopt_flax(cls: Any, spec, attr: str) -> Any:
    """Name a Flax class of a built-in spec after its public module (novolstm.flax, novolstm.flax.linen)."""
    cls.generated_module = module_name(spec, "jax")
    if is_builtin(spec):
        cls.__module__ = PUBLIC[("jax", attr)]
        vars(sys.modules[cls.generated_module]).setdefault("__test__", {})[attr] = cls  # as in adopt
    return cls


def _reduce_with_spec(self, protocol):
    """Pickle a generated torch module of a spec that is not built in: rebuild(spec text) + its state."""
    cls = type(self)
    if "spec_text" not in vars(cls):  # a user's subclass pickles by its own name, as usual
        return object.__reduce_ex__(self, protocol)
    reduced = object.__reduce_ex__(self, max(protocol, 2))  # (copyreg.__newobj__, (cls,), state, ...)
    return (rebuild, ("torch", cls.spec_text, cls.generated_attr)) + tuple(reduced[2:])


def rebuild(backend: str, spec_text: str, attr: str):
    """An empty instance of class ``attr`` of the module generated from ``spec_text``; unpickling fills it.

    Args:
        backend: the backend the module was generated for.
        spec_text: the spec's TOML text, as the pickle carries it.
        attr: the class's name in the generated module (Cell or Layer).

    Returns:
        ``cls.__new__(cls)``: the object pickle then hands the saved state.
    """
    cls = getattr(_module_from_text(spec_text, backend), attr)
    return cls.__new__(cls)


@functools.lru_cache(maxsize=32)
def _module_from_text(spec_text: str, backend: str) -> types.ModuleType:
    from novolstm.api import load_generated
    from novolstm.spec_loader import loads_spec

    return load_generated(loads_spec(spec_text), backend)


class _Finder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """The import hook for ``novolstm.generated.<backend>[.<spec>_<hash12>]``."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname.count(".") == 2 and fullname.startswith("novolstm.generated."):
            return importlib.machinery.ModuleSpec(fullname, self, is_package=True)  # the backend's namespace
        if MODULE_NAME.fullmatch(fullname):
            return importlib.machinery.ModuleSpec(fullname, self)
        return None

    def create_module(self, spec):
        if spec.name.count(".") == 2:
            module = types.ModuleType(spec.name)
            module.__path__ = []
            return module
        return _resolve(spec.name)

    def exec_module(self, module):
        pass  # built in create_module


def _resolve(name: str) -> types.ModuleType:
    from novolstm.api import load_generated
    from novolstm.spec_loader import list_specs, load_spec

    match = MODULE_NAME.fullmatch(name)
    assert match is not None  # find_spec matched it
    backend, spec_name, digest = match.groups()
    key = f"{spec_name}_{digest}"
    if key in _seen:
        return load_generated(_seen[key], backend)
    if spec_name in list_specs():
        spec = load_spec(spec_name)
        if spec.hash.startswith(digest):
            return load_generated(spec, backend)
        raise ImportError(
            f"{name}: generated from a spec {spec_name!r} with sha256 {digest}..., but the built-in "
            f"{spec_name!r} here has sha256 {spec.hash[:12]}...: the cells differ, so it is not loaded",
            name=name,
        )
    raise ImportError(
        f"{name}: spec {spec_name!r} is not built in; load it first with "
        f"novolstm.load_generated(<its spec file>, {backend!r}) (artifacts saved by this version carry the spec)",
        name=name,
    )


if not any(isinstance(finder, _Finder) for finder in sys.meta_path):
    sys.meta_path.append(_Finder())


def builtin_classes(backend: str, attrs: tuple[str, ...]) -> dict[str, tuple[str, str]]:
    """Public class name -> (built-in spec name, class in its generated module), for a public module.

    Args:
        backend: the backend whose generated modules hold the classes.
        attrs: the generated classes to publish (``Layer``, ``Cell``, ``NNXCell``, ``LinenCell``).

    Returns:
        ``{"NovoLSTM": ("novolstm", "Layer"), "NovoLSTMCell": ("novolstm", "Cell"), ...}``.

    Examples:
        >>> builtin_classes("torch", ("Layer",))["LSTM"]
        ('lstm', 'Layer')
    """
    from novolstm.spec_loader import list_specs, load_spec

    table = {}
    for spec_name in list_specs():
        for attr in attrs:
            table[PUBLIC_NAME[attr].format(load_spec(spec_name).class_name)] = (spec_name, attr)
    return table


def public_class(backend: str, table: dict[str, tuple[str, str]], name: str, namespace: dict) -> type:
    """The class ``name`` of a public module (a module ``__getattr__``): generated on first use, then kept.

    Raises:
        AttributeError: ``name`` is not one of the table's classes.
    """
    if name not in table:
        raise AttributeError(f"module {namespace['__name__']!r} has no attribute {name!r}; classes: {sorted(table)}")
    from novolstm.api import load_generated

    spec_name, attr = table[name]
    cls = getattr(load_generated(spec_name, backend), attr)
    if attr in ("NNXCell", "LinenCell"):
        from novolstm.spec_loader import load_spec

        adopt_flax(cls, load_spec(spec_name), attr)
    namespace[name] = cls
    return cls
