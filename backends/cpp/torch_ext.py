"""The compiled sequence kernel of a spec as torch operators: built once, cached on disk.

``compiled_sequence`` takes a spec's canonical TOML text (what a generated torch
module carries as ``SPEC_TOML``), renders its C++ kernel (``novolstm.backends.cpp.emit``),
builds it with ``torch.utils.cpp_extension`` into a cache directory keyed by the
kernel source, the torch version and the compiler flags (so one build serves float32
and float64, and every process that asks again), and registers the operators'
fake (meta) functions and autograd formula, so that autograd, ``torch.compile``
(one graph node, no graph break) and ``torch.export`` see them.

Where no C++ compiler (or ninja) is present, or the spec uses a construct the
emitter does not compile, ``CompiledUnavailable`` says why; the caller falls back
to the generated loop.

The cache: ``$NOVOLSTM_CACHE_DIR`` if set, else ``$XDG_CACHE_HOME/novolstm`` (default
``~/.cache/novolstm``), under ``torch-ext/``. Builds hold a file lock per kernel, so
parallel processes (pytest-xdist, DDP workers) build each kernel once.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import subprocess
import tempfile
import threading
import warnings
from pathlib import Path

import torch

from novolstm.codegen import plan
from novolstm.spec_loader import loads_spec

from .build import CompiledUnavailable, CompiledUnsupported, built_once, cache_root, file_lock
from .emit import Layout, Unsupported, elems_of, generate

#: Compiler flags of every build (part of the cache key).
# -fno-trapping-math, -fno-math-errno: let the compiler vectorize selects and sqrt (no result changes;
# no -ffast-math, which would reorder sums and drop NaN semantics).
CFLAGS = ("-O3", "-fopenmp", "-std=c++17", "-fno-trapping-math", "-fno-math-errno")
LDFLAGS = ("-fopenmp",)


def _cpu_flags() -> tuple[str, ...]:
    """Vector instructions for the CPU torch itself dispatches to (part of the cache key)."""
    capability = torch.backends.cpu.get_cpu_capability()
    if capability == "AVX512":  # the set torch's own AVX512 kernels are built with
        return ("-mavx2", "-mfma", "-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq")
    return ("-mavx2", "-mfma") if capability == "AVX2" else ()


_LOCK = threading.Lock()
_LOADED: dict[str, CompiledSequence | CompiledUnavailable] = {}


def cache_dir() -> Path:
    """Where built kernels are kept (see the module docstring)."""
    return cache_root() / "torch-ext"


def compiled_sequence(spec_toml: str) -> CompiledSequence:
    """The compiled sequence op of the spec whose canonical TOML is ``spec_toml``.

    Built (or loaded from the cache) on the first call in a process, then kept: later
    calls are one dictionary lookup, which torch.compile traces through without a graph
    break (the first call, which builds, runs outside any compiled region).

    Raises:
        CompiledUnavailable: no compiler, a failed build, or a spec the emitter does not compile.
    """
    result = _LOADED.get(spec_toml)
    if result is None:
        return _load(spec_toml)
    if isinstance(result, CompiledUnavailable):
        raise result
    return result


@torch.compiler.disable
def _load(spec_toml: str) -> CompiledSequence:
    return built_once(_LOADED, _LOCK, spec_toml, _build)


def _build(spec_toml: str) -> CompiledSequence:
    spec = loads_spec(spec_toml)
    try:
        draft = generate(plan(spec), namespace="NAMESPACE")
    except Unsupported as e:
        raise CompiledUnsupported(f"spec {spec.name!r}: the C++ emitter does not compile {e}") from None
    digest = hashlib.sha256(
        "\n".join([draft.source, torch.__version__, *CFLAGS, *_cpu_flags(), *LDFLAGS]).encode()
    ).hexdigest()
    namespace = f"novolstm_{spec.name[:24]}_{digest[:16]}"
    namespace = "".join(c if c.isalnum() or c == "_" else "_" for c in namespace)
    kernel = generate(plan(spec), namespace=namespace)
    library = _compile(namespace, kernel.source)
    if not hasattr(torch.ops, namespace) or not hasattr(getattr(torch.ops, namespace), "forward"):
        torch.ops.load_library(str(library))
    return CompiledSequence(kernel.layout)


def _compiler_missing() -> str | None:
    cxx = os.environ.get("CXX", "c++")
    if shutil.which(cxx) is None:
        return f"no C++ compiler ({cxx!r} is not on PATH)"
    return None


@contextlib.contextmanager
def _ninja_on_path():
    """torch's builder runs ``ninja`` from PATH; the ninja wheel's binary serves when none is there."""
    old = os.environ.get("PATH", "")
    found = shutil.which("ninja")
    if found is None:
        try:
            import ninja  # noqa: PLC0415 - optional, only for building

            os.environ["PATH"] = ninja.BIN_DIR + os.pathsep + old
        except ImportError:
            pass
    try:
        yield
    finally:
        os.environ["PATH"] = old


def _compile(namespace: str, source: str) -> Path:
    """Build ``source`` as a shared library named ``namespace`` (or find it built); its path."""
    from torch.utils import cpp_extension  # noqa: PLC0415 - imports setuptools machinery

    root = cache_dir()
    build = root / namespace
    library = build / f"{namespace}.so"
    with file_lock(root / f"{namespace}.lock"):
        if library.exists():
            return library
        missing = _compiler_missing()
        if missing:
            raise CompiledUnavailable(missing)
        build.mkdir(parents=True, exist_ok=True)
        cpp = build / "kernel.cpp"
        with tempfile.NamedTemporaryFile("w", dir=build, suffix=".tmp", delete=False) as tmp:
            tmp.write(source)
        os.replace(tmp.name, cpp)
        with _ninja_on_path(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the builder's advice (compiler version, ABI) is not the caller's concern
            if not cpp_extension.is_ninja_available():
                raise CompiledUnavailable("ninja is not installed (pip install ninja)")
            try:
                path = cpp_extension.load(
                    name=namespace,
                    sources=[str(cpp)],
                    extra_cflags=[*CFLAGS, *_cpu_flags()],
                    extra_ldflags=list(LDFLAGS),
                    build_directory=str(build),
                    is_python_module=False,
                    verbose=False,
                )
            except (RuntimeError, OSError, subprocess.CalledProcessError) as e:
                raise CompiledUnavailable(
                    f"building the C++ kernel failed: {str(e).strip().splitlines()[-1] if str(e).strip() else e!r}"
                ) from e
        return Path(path) if path else library


class CompiledSequence:
    """The compiled sequence op of one spec: call it like the generated loop's Sequence.

    ``op(x, mask, reverse, state, params) -> (outputs, final_state)`` with x (time, batch,
    input), mask bool (time, batch) or None, state a tuple of (batch, units) tensors and
    params the canonical parameters in the spec's order; float32 or float64 on the CPU.
    """

    def __init__(self, layout: Layout):
        self.layout = layout
        ops = getattr(torch.ops, layout.namespace)
        self.forward_op, self.backward_op = ops.forward.default, ops.backward.default
        _register(layout)

    def __call__(self, x, mask, reverse, state, params):
        tensors = [x, *state, *params]
        keep = torch.is_grad_enabled() and any(t.requires_grad for t in tensors)
        outs = self.forward_op(x, mask, bool(reverse), keep, list(state), list(params))
        return outs[0], tuple(outs[1 : 1 + self.layout.states])


def _register(layout: Layout):
    name = layout.namespace
    n = layout.states

    def units(params):
        return params[layout.params.index(layout.units_param)].shape[layout.units_axis]

    @torch.library.register_fake(f"{name}::forward")
    def _forward_fake(x, mask, reverse, keep_tape, state, params):
        steps, batch, inputs = x.shape
        H = units(params)
        outs = [x.new_empty((steps, batch, H))] + [s.new_empty(s.shape) for s in state]
        for e in layout.tape:
            shape = (steps, batch, elems_of(e.width, H, inputs)) if e.batched else (elems_of(e.width, H, inputs),)
            outs.append(x.new_empty(shape) if keep_tape else x.new_empty((0,)))
        return tuple(outs)

    @torch.library.register_fake(f"{name}::backward")
    def _backward_fake(g_outputs, g_final, x, mask, reverse, need_input, params, tape):
        g_x = x.new_empty(x.shape) if need_input else x.new_empty((0,))
        return (g_x, *(g.new_empty(g.shape) for g in g_final), *(p.new_empty(p.shape) for p in params))

    backward_op = getattr(torch.ops, name).backward.default

    def setup_context(ctx, inputs, output):
        x, mask, reverse, keep_tape, state, params = inputs
        ctx.reverse, ctx.keep_tape, ctx.params = reverse, keep_tape, len(params)
        # No zeros made for the outputs no loss reads (the tape's, megabytes each call): the
        # backward op takes a missing output gradient as zeros, and backward below the states'.
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(x, mask, *state, *params, *output[1 + n :])

    def backward(ctx, g_outputs, *g_rest):
        if not ctx.keep_tape:
            raise RuntimeError(
                "the compiled sequence ran without a tape (keep_tape=False); it cannot be differentiated"
            )
        x, mask, *rest = ctx.saved_tensors
        state, params, tape = rest[:n], rest[n : n + ctx.params], rest[n + ctx.params :]
        g_final = [torch.zeros_like(s) if g is None else g for g, s in zip(g_rest[:n], state)]
        need_input = ctx.needs_input_grad[0]
        outs = backward_op(g_outputs, g_final, x, mask, ctx.reverse, need_input, list(params), list(tape))
        g_x = outs[0] if need_input else None
        grads = (g_x, None, None, None, list(outs[1 : 1 + n]), list(outs[1 + n :]))
        return _not_twice_differentiable(grads) if torch.is_grad_enabled() else grads

    torch.library.register_autograd(f"{name}::forward", backward, setup_context=setup_context)


_TWICE = (
    "the compiled sequence kernel is not twice differentiable (its backward is first order only); "
    "construct the layer with backward='autograd' to record the forward on torch's tape for higher derivatives"
)


def _not_twice_differentiable(grads):
    """The gradients (tensors, lists of tensors or None), each behind a node that raises _TWICE if
    a second backward pass (create_graph=True) reaches it, as torch's once_differentiable does."""
    flat = [g for item in grads for g in (item if isinstance(item, list) else [item]) if g is not None]
    if not flat:
        return grads
    raising = torch._C._functions.DelayedError(_TWICE, len(flat))
    wrapped = raising(*[g.detach().requires_grad_() for g in flat])
    replaced = iter((wrapped,) if isinstance(wrapped, torch.Tensor) else wrapped)

    def swap(g):
        return None if g is None else next(replaced)

    return tuple([swap(g) for g in item] if isinstance(item, list) else swap(item) for item in grads)


__all__ = ["CompiledSequence", "CompiledUnavailable", "CompiledUnsupported", "cache_dir", "compiled_sequence"]
