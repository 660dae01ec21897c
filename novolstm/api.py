"""The backend-neutral entry points: generate, load and run cells by spec and backend name."""

from __future__ import annotations

import functools
import linecache
import os
import sys
import threading
import types
from typing import Any, TypeAlias

import numpy as np

from .call import prepare_call
from .codegen import param_table, plan
from .spec_loader import load_spec
from .spec_model import Spec

#: What every entry point takes as a spec: a built-in name, a path to a spec file, or a loaded spec.
SpecLike: TypeAlias = str | os.PathLike | Spec

#: Held while a source is generated or a module executed, so that threads asking for the
#: same spec at once share one module (and one class) instead of each executing their own;
#: re-entrant because loading a module generates its source.
_CACHE_LOCK = threading.RLock()


def list_backends() -> list[str]:
    """Names of the backends novolstm can generate code for (installed or not).

    Examples:
        >>> "numpy" in list_backends()
        True
    """
    from novolstm.backends import EMITTERS

    return sorted(EMITTERS)


def generate_source(spec: SpecLike, backend: str = "numpy") -> str:
    """The standalone source module of ``spec`` for ``backend``: readable, importing only its framework.

    Args:
        spec: a built-in name, a path to a spec file, or a loaded spec.
        backend: one of ``list_backends()``; the framework need not be installed.

    Returns:
        The module's Python source, as ``novolstm generate`` prints it.

    Raises:
        SpecError: the spec does not load.
        ValueError: an unknown backend.

    Examples:
        >>> src = generate_source("lstm", backend="numpy")
        >>> "Generated, do not edit" in src and "import numpy as np" in src
        True
    """
    spec = load_spec(spec)
    return _generate(spec, backend)


def _generate(spec: Spec, backend: str) -> str:
    with _CACHE_LOCK:
        return _generate_once(spec, backend)


def _load(spec: Spec, backend: str) -> types.ModuleType:
    with _CACHE_LOCK:
        return _load_once(spec, backend)


def clear_caches() -> None:
    """Forget every generated source (the benchmarks time generation from scratch).

    Loaded modules stay: their classes are the named classes users hold, pickle and save.
    """
    with _CACHE_LOCK:
        _generate_once.cache_clear()


@functools.lru_cache(maxsize=64)
def _generate_once(spec: Spec, backend: str) -> str:
    from novolstm.backends import emitter

    return emitter(backend).generate(plan(spec))


def _load_once(spec: Spec, backend: str) -> types.ModuleType:
    from novolstm import generated

    # sys.modules is the cache, never evicted: a generated class must stay the same object for
    # the life of the process (pickle and the named classes in novolstm.torch and the others
    # look it up by module name). A bounded cache evicted built-in cells after many others.
    name = generated.module_name(spec, backend)
    loaded = sys.modules.get(name)
    if loaded is not None and vars(loaded).get("SPEC") == spec:
        return loaded
    source = _generate(spec, backend)
    filename = f"<novolstm generated {backend} {spec.name} {spec.hash[:12]}>"
    # Registered with linecache so tracebacks and inspect show the generated lines.
    linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
    module = types.ModuleType(name)
    module.__file__ = filename
    sys.modules[name] = module  # dataclasses, pickle-free serializers and inspect look modules up here
    exec(compile(source, filename, "exec"), module.__dict__)
    vars(module)["SPEC"] = spec  # the spec itself, for specs loaded from a path (checkpoint.save_module)
    generated.adopt(module, spec, backend)  # class names for pickle and Keras serialization
    return module


def load_generated(spec: SpecLike, backend: str = "numpy") -> types.ModuleType:
    """The generated module of ``spec`` for ``backend``, compiled once and cached.

    Args:
        spec: a built-in name, a path to a spec file, or a loaded spec.
        backend: one of ``list_backends()``.

    Returns:
        The module (``Cell``, ``Layer`` where the backend has one, ``run_numpy``, ...).

    Raises:
        ImportError: the backend's framework is not installed.

    Examples:
        >>> load_generated("gru").STATE_NAMES
        ('h',)
    """
    from novolstm.backends import emitter

    __import__(emitter(backend).FRAMEWORK)  # a requested backend that cannot load fails here, loudly
    return _load(load_spec(spec), backend)


def get_cell(backend: str = "numpy", spec: SpecLike = "novolstm"):
    """The cell class native to ``backend``, generated from ``spec``.

    numpy: a trainable class; torch: an ``nn.Module``; keras: a layer for
    ``keras.layers.RNN``; jax: pure functions with a Flax module. The API of each is on
    the docs' generated-classes pages.

    Args:
        backend: one of ``list_backends()`` except onnx.
        spec: a built-in name, a path to a spec file, or a loaded spec.

    Returns:
        The generated ``Cell`` class.

    Raises:
        ImportError: the backend's framework is not installed.

    Examples:
        >>> Cell = get_cell("numpy", spec="lstm")
        >>> cell = Cell(input_size=3, units=2)
        >>> h, c = cell(np.zeros((1, 3)))
        >>> h.shape
        (1, 2)
    """
    return load_generated(spec, backend).Cell


def get_layer(backend: str = "numpy", spec: SpecLike = "novolstm"):
    """The sequence layer native to ``backend`` (for torch, ``nn.LSTM``'s conventions), generated from ``spec``.

    Args:
        backend: torch or keras (the backends with a sequence layer of their own).
        spec: a built-in name, a path to a spec file, or a loaded spec.

    Returns:
        The generated ``Layer`` class.

    Raises:
        AttributeError: the backend has no sequence layer (use ``get_cell``).
        ImportError: the backend's framework is not installed.
    """
    module = load_generated(spec, backend)
    if not hasattr(module, "Layer"):
        raise AttributeError(f"the {backend} backend has no sequence layer; use get_cell({backend!r}, ...)")
    return module.Layer


def init_params(
    spec: SpecLike, input_size: int, units: int, seed: int = 0, dtype: Any = "float64"
) -> dict[str, np.ndarray]:
    """Canonical parameters drawn by the spec's initializers; the same numbers for every backend.

    Args:
        spec: a built-in name, a path to a spec file, or a loaded spec.
        input_size: features per timestep.
        units: the state size.
        seed: the seed every initializer draws from.
        dtype: the dtype of the arrays.

    Returns:
        Canonical name -> NumPy array, in the spec's declaration order.

    Examples:
        >>> p = init_params("lstm", input_size=3, units=2, seed=0)
        >>> p["W_i"].shape, p["b_f"].tolist()
        ((3, 2), [1.0, 1.0])
    """
    from .init import init_from_table

    spec = load_spec(spec)
    spec.parameter_shapes(input_size, units)  # validates the sizes
    return init_from_table(param_table(spec), input_size, units, seed, dtype)


def run(
    spec: SpecLike,
    params: dict,
    x: np.ndarray,
    state: tuple | None = None,
    backend: str = "numpy",
    mask: np.ndarray | None = None,
    lengths: np.ndarray | None = None,
    dtype: Any = None,
) -> tuple[np.ndarray, tuple]:
    """Run ``spec`` over a batch of sequences on ``backend``; NumPy in, NumPy out.

    Args:
        spec: a built-in name, a path to a spec file, or a loaded spec.
        params: canonical parameters (name -> array), see ``Spec.parameter_shapes``.
        x: inputs (batch, time, input); float32 or float64.
        state: initial state tuple in ``spec.state_names`` order, zeros if None.
        mask: bool (batch, time), True on real steps; or ``lengths`` (batch,) for
            right-padded batches. A masked step keeps the state and outputs zeros.
        dtype: compute dtype; defaults to the dtype of ``x``.

    Returns:
        ``(outputs, final_state)``: outputs (batch, time, units) and the final state tuple, as NumPy arrays.

    Raises:
        ValueError: on a shape mismatch, an empty sequence or non-finite inputs.
    """
    spec = load_spec(spec)
    call = prepare_call(spec, params, x, state, mask, lengths, dtype)
    module = load_generated(spec, backend)
    outputs, final = module.run_numpy(call.params, call.x, call.state, call.mask)
    return np.asarray(outputs), tuple(np.asarray(s) for s in final)


def export_onnx(spec: SpecLike, params: dict, path=None, dtype: Any = "float32", native_lstm: bool = True):
    """An ONNX model of ``spec`` with ``params`` (canonical names); written to ``path`` if given.

    The standard LSTM (and the peephole LSTM) export as the native ONNX ``LSTM``
    operator when ``native_lstm``; every cell exports as a ``Scan`` over its step graph.
    The model's inputs and outputs are documented in the generated module
    (``novolstm generate SPEC --backend onnx``) and in ``novolstm.convert.onnx.lstm_operator_model``.

    Args:
        spec: a built-in name, a path to a spec file, or a loaded spec.
        params: canonical parameters (name -> array).
        path: where to write the ``.onnx`` file; None writes nothing.
        dtype: the dtype the model computes in.
        native_lstm: export the standard and peephole LSTM as the ONNX ``LSTM`` operator.

    Returns:
        The ``onnx.ModelProto``.
    """
    from .ir import computes_standard_lstm

    spec = load_spec(spec)
    # The standard LSTM is recognised by what it computes; the peephole LSTM still by its
    # content hash (no structural matcher for it yet).
    native = computes_standard_lstm(spec) or spec.hash == load_spec("peephole_lstm").hash
    if native_lstm and native:
        from .convert.onnx import lstm_operator_model

        input_size = np.shape(params["W_i"])[0]
        model = lstm_operator_model([params], input_size, dtype)
    else:
        model = load_generated(spec, "onnx").build_model({k: np.asarray(v, dtype) for k, v in params.items()}, dtype)
    if path is not None:
        from .convert.safe_io import atomic_write

        atomic_write(path, model.SerializeToString())
    return model
