"""The NumPy backend's compiled step loop: built once per spec with the system compiler, cached on disk.

``compiled_forward`` takes a spec's canonical TOML text (what a generated NumPy module
carries as ``SPEC_TOML``), renders its C++ step loop (``c_forward``), builds it with the
C++ compiler ``$CXX`` (default ``c++``) into a shared library, and loads it with ctypes.
NumPy computes the prologue (the input projections of every timestep); the library runs the
steps. Nothing here imports a framework.

The cache: under the compiled paths' root (``build.cache_root``: ``$NOVOLSTM_CACHE_DIR`` if set, else
``$XDG_CACHE_HOME/novolstm``, default ``~/.cache/novolstm``), in ``numpy-ext/``, one library
per kernel source, compiler (its path and ``--version``), flags and CPU (the build targets
the CPU it runs on). A build writes a temporary file and renames it into place, under a file
lock per library, so parallel processes build each one once. A library is loaded only from
that folder, only if it is a regular file of this user that no one else may write, and only
if it answers with the key it was built under.

Where no compiler is present, a build fails, or the spec uses an operation the emitter does
not compile, ``CompiledUnavailable`` (``CompiledUnsupported`` for the last) says why, and the
caller runs the generated loop.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import shlex
import shutil
import stat
import subprocess
import tempfile
import threading
from pathlib import Path

import numpy as np

from novolstm.codegen import plan
from novolstm.spec_loader import loads_spec

from .build import CompiledUnavailable, CompiledUnsupported, built_once, cache_root, file_lock
from .c_backward import ENTRY as BACKWARD_ENTRY
from .c_backward import Layout as BackwardLayout
from .c_forward import ENTRY, KEY_ENTRY, Layout, Unsupported, generate
from .emit import elems_of

#: Flags of every build (part of the cache key). -fno-trapping-math and -fno-math-errno let the
#: compiler vectorize selects and square roots without changing a result; -ffp-contract=fast fuses
#: a multiply and an add where the CPU can (one rounding instead of two); no -ffast-math, which
#: would reorder sums and drop NaN semantics.
# -fvisibility=hidden: the library exports its two entry points alone, so that no inline function
# of the runtime resolves to another kernel's copy in the same process.
CFLAGS = (
    *("-O3", "-std=c++17", "-fPIC", "-shared", "-fvisibility=hidden"),
    *("-fno-trapping-math", "-fno-math-errno", "-ffp-contract=fast"),
)

#: Seconds a build may take before it counts as failed.
BUILD_TIMEOUT = 300


_LOCK = threading.Lock()
_LOADED: dict[str, CompiledForward | CompiledUnavailable] = {}


def cache_dir() -> Path:
    """Where built libraries are kept (see the module docstring)."""
    return cache_root() / "numpy-ext"


def compiled_forward(spec_toml: str) -> CompiledForward:
    """The compiled step loop of the spec whose canonical TOML is ``spec_toml``.

    Built (or loaded from the cache) on the first call in a process, then kept.

    Raises:
        CompiledUnavailable: no compiler, a failed build, or a spec the emitter does not compile.
    """
    return built_once(_LOADED, _LOCK, spec_toml, _build)


def _build(spec_toml: str) -> CompiledForward:
    spec = loads_spec(spec_toml)
    loop_plan = plan(spec)
    try:
        draft = generate(loop_plan, key="draft")
    except Unsupported as e:
        raise CompiledUnsupported(f"spec {spec.name!r}: the C++ emitter does not compile {e}") from None
    compiler = _compiler()
    flags = (*CFLAGS, *_cpu_flags())
    digest = hashlib.sha256(
        "\n".join([draft.source, *compiler[0], compiler[1], *flags, _cpu_identity()]).encode()
    ).hexdigest()
    name = "".join(c if c.isascii() and c.isalnum() else "_" for c in f"{spec.name[:24]}_{digest[:24]}")
    kernel = generate(loop_plan, key=name)
    library = _compile(name, kernel.source, compiler[0], flags)
    return CompiledForward(library, name, kernel.layout, kernel.backward)


_COMPILERS: dict[tuple[str, ...], tuple[tuple[str, ...], str]] = {}


def _compiler() -> tuple[tuple[str, ...], str]:
    """(the command that runs ``$CXX`` (default ``c++``; a wrapper such as ``ccache g++`` is kept),
    its --version text)."""
    cxx = os.environ.get("CXX") or "c++"
    try:
        words = shlex.split(cxx)
    except ValueError:  # unbalanced quotes
        words = []
    path = shutil.which(words[0]) if words else None
    if path is None:
        raise CompiledUnavailable(f"no C++ compiler ({cxx!r} is not on PATH; set CXX to one)")
    command = (path, *words[1:])
    if command not in _COMPILERS:
        try:
            run = subprocess.run([*command, "--version"], capture_output=True, text=True, timeout=60, check=True)
        except (OSError, subprocess.SubprocessError) as e:
            raise CompiledUnavailable(f"the C++ compiler {cxx!r} does not run: {e}") from None
        _COMPILERS[command] = (command, run.stdout)
    return _COMPILERS[command]


def _cpu_identity() -> str:
    """The CPU's model and instruction sets (Linux), or the empty string where unknown."""
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return ""
    wanted = ("vendor_id", "model name", "flags", "Features", "CPU implementer", "CPU part")
    first = text.split("\n\n", 1)[0]
    return "\n".join(line for line in first.splitlines() if line.split(":", 1)[0].strip() in wanted)


def _cpu_flags() -> tuple[str, ...]:
    """-march=native where the cache key can name the CPU (its identity is in the key), else nothing."""
    return ("-march=native",) if _cpu_identity() else ()


def _compile(name: str, source: str, cxx: tuple[str, ...], flags: tuple[str, ...]) -> Path:
    """Build ``source`` into ``<cache>/<name>.so`` unless it is there; its path."""
    root = cache_dir()
    library = root / f"{name}.so"
    try:
        root.mkdir(parents=True, exist_ok=True)
        with file_lock(root / f"{name}.lock"):
            if os.path.lexists(library):
                return library
            with tempfile.TemporaryDirectory(dir=root, prefix=f".{name}.") as work:
                cpp, built = Path(work) / "kernel.cpp", Path(work) / "kernel.so"
                cpp.write_text(source)
                try:
                    subprocess.run(
                        [*cxx, *flags, str(cpp), "-o", str(built)],
                        capture_output=True,
                        text=True,
                        timeout=BUILD_TIMEOUT,
                        check=True,
                    )
                except subprocess.CalledProcessError as e:
                    lines = (e.stderr or "").strip().splitlines()
                    first = next((line for line in lines if "error" in line), lines[-1] if lines else "")
                    raise CompiledUnavailable(
                        f"building the C++ step loop failed: {first.strip() or f'exit status {e.returncode}'}"
                    ) from None
                except (OSError, subprocess.TimeoutExpired) as e:
                    raise CompiledUnavailable(f"building the C++ step loop failed: {e}") from None
                os.chmod(built, 0o755)
                os.replace(built, library)  # atomic: a reader sees no library or a whole one
    except OSError as e:
        raise CompiledUnavailable(f"the kernel cache {str(root)!r} is not usable: {e}") from None
    return library


def _check_owned(path: Path) -> None:
    """Refuse a library this process did not build: a link, another user's file, or one others may write."""
    info = os.lstat(path)
    if not stat.S_ISREG(info.st_mode):
        raise CompiledUnavailable(f"{str(path)!r} is not a regular file; delete it to rebuild")
    if hasattr(os, "getuid") and (info.st_uid != os.getuid() or info.st_mode & (stat.S_IWGRP | stat.S_IWOTH)):
        raise CompiledUnavailable(f"{str(path)!r} is another user's or writable by others; delete it to rebuild")


_ENTRY_ARGS = [ctypes.c_int64, ctypes.POINTER(ctypes.c_int64), ctypes.POINTER(ctypes.c_int64), ctypes.c_void_p]
_BACKWARD_ARGS = [ctypes.c_int64, ctypes.POINTER(ctypes.c_int64), ctypes.c_void_p]


#: The largest prologue (rows * inputs * columns of its products, rows = batch * time) that the
#: kernel computes itself rather than NumPy: a BLAS call leaves a multi-threaded BLAS's idle
#: threads spinning beside the single-threaded step loop. Up to here the kernel's product measured
#: as fast as one BLAS thread's; beyond, BLAS on all cores is faster (docs/numpy.md, "Measured").
PROLOGUE_MAX_WORK = 2**27


class CompiledForward:
    """The compiled step loop of one spec.

    ``kernel(x, state, mask, *arrays, tape=False, reverse=False) -> (outputs, final_state, steps)``:
    ``x`` the call's inputs (batch, time, input) (their shape and dtype), ``state`` the initial
    state tuple, ``mask`` bool (batch, time) or None, and ``arrays`` the layout's arrays, then
    the prologue's (see ``c_forward.Layout``), as the generated NumPy forward holds them. Where
    the hoisted arrays are None the kernel computes the prologue itself (``runs_prologue`` says
    where the generated forward leaves it to the kernel); else it does not read the prologue's.
    Outputs (batch, time, units) and the final state come back as new arrays in ``x``'s dtype
    (float32 or float64); with ``tape``, ``steps`` holds the step values the generated backward
    pass reads (name -> (time, batch, width) array, as the loop's tape holds them per step, and,
    where the kernel ran the prologue, "prologue:<name>" -> the prologue values it reads), else
    it is None.
    """

    def __init__(self, library: Path, key: str, layout: Layout, backward: BackwardLayout | None = None):
        _check_owned(library)
        try:
            lib = ctypes.CDLL(str(library))
            key_of = getattr(lib, KEY_ENTRY)
            entry = getattr(lib, ENTRY)
        except (OSError, AttributeError) as e:
            raise CompiledUnavailable(f"loading {str(library)!r} failed: {e}; delete it to rebuild") from None
        key_of.restype, key_of.argtypes = ctypes.c_char_p, []
        if key_of() != key.encode():
            raise CompiledUnavailable(f"{str(library)!r} was not built for this kernel; delete it to rebuild")
        entry.restype, entry.argtypes = ctypes.c_int, _ENTRY_ARGS
        self.layout, self.library, self._entry = layout, library, entry
        #: the backward kernel's arrays (c_backward.Layout), or None where it does not compile the spec's
        self.backward_layout = backward
        if backward is not None:
            try:
                self._backward = getattr(lib, BACKWARD_ENTRY)
            except AttributeError as e:
                raise CompiledUnavailable(f"loading {str(library)!r} failed: {e}; delete it to rebuild") from None
            self._backward.restype, self._backward.argtypes = ctypes.c_int, _BACKWARD_ARGS
        #: columns of the prologue's products, per unit and per input (its weights' widths)
        self._columns = [w for a in layout.prologue if a.kind == "weight" for w in a.widths[1:]]

    def runs_prologue(self, batch: int, steps: int, inputs: int, units: int) -> bool:
        """Whether a call of this shape leaves the prologue to the kernel: where its products'
        work is at most ``PROLOGUE_MAX_WORK``."""
        columns = sum(elems_of(w, units, inputs) for w in self._columns)
        return batch * steps * inputs * columns <= PROLOGUE_MAX_WORK

    def __call__(self, x, state, mask, *arrays, tape=False, reverse=False):
        lay = self.layout
        x = np.asarray(x)
        if x.dtype not in (np.float32, np.float64) or x.ndim != 3:
            raise ValueError(f"x: expected a float32 or float64 array (batch, time, input), got {x.dtype} {x.shape}")
        dtype = x.dtype
        B, T, inputs = (int(n) for n in x.shape)
        na, npro = len(lay.arguments), len(lay.prologue)
        if len(state) != lay.states or len(arrays) != na + npro:
            names = [a.name for a in lay.arguments + lay.prologue]
            raise ValueError(
                f"expected {lay.states} state arrays and {na + npro} arrays ({names}), "
                f"got {len(state)} and {len(arrays)}"
            )
        state = [np.ascontiguousarray(s, dtype) for s in state]
        H = int(state[0].shape[-1]) if state[0].ndim == 2 else -1
        if min(B, T, inputs, H) < 1 or any(s.shape != (B, H) for s in state):
            raise ValueError(
                f"state: expected {lay.states} arrays of shape ({B}, units), got {[s.shape for s in state]}"
            )
        widest = max([elems_of(w, H, inputs) for a in lay.arguments + lay.prologue for w in a.widths] + [H, inputs])
        if B * T * widest >= 2**62 // dtype.itemsize:
            raise ValueError(f"x: {x.shape} is too large for the compiled loop")
        hoisted = [value is None for arg, value in zip(lay.arguments, arrays) if arg.kind == "hoisted"]
        inside = all(hoisted)
        if any(hoisted) and not inside:
            raise ValueError("the hoisted arrays: expected all of them (the prologue ran) or none (the kernel runs it)")
        kept, strides = [], []
        given = zip(lay.arguments + lay.prologue, arrays)
        for k, (arg, value) in enumerate(given):
            if (arg.kind == "hoisted" and inside) or (k >= na and not inside):
                kept.append(None)  # not read: the prologue runs in the kernel, or ran before it
                strides += [0, 0] if arg.kind == "hoisted" else []
                continue
            widths = tuple(elems_of(w, H, inputs) for w in arg.widths)
            expected = (T, B, *widths) if arg.kind in ("hoisted", "input") else widths
            a = np.asarray(value, dtype)
            if a.shape != expected:
                raise ValueError(f"{arg.name}: expected shape {expected}, got {a.shape}")
            if arg.kind == "hoisted":  # any view whose rows are contiguous: the kernel steps by strides
                if a.strides[-1] != dtype.itemsize or any(s < 0 or s % dtype.itemsize for s in a.strides):
                    a = np.ascontiguousarray(a)
                strides += [a.strides[0] // dtype.itemsize, a.strides[1] // dtype.itemsize]
            else:
                a = np.ascontiguousarray(a)
            kept.append(a)
        if mask is not None:
            mask = np.asarray(mask)
            if mask.shape != (B, T) or mask.dtype != bool:
                raise ValueError(f"mask: expected a bool array of shape {(B, T)}, got {mask.dtype} {mask.shape}")
            mask = np.ascontiguousarray(mask.T).view(np.uint8)
        outputs = np.empty((B, T, H), dtype)
        finals = [np.empty((B, H), dtype) for _ in state]
        steps, prologue = {}, {}
        for entry in lay.tape if tape else ():
            width = elems_of(entry.widths[0], H, inputs)
            steps[entry.name] = np.empty((T, B, width) if entry.kind == "tape" else (T, width), dtype)
        for entry in lay.prologue_tape if tape and inside else ():
            width = elems_of(entry.widths[0], H, inputs)
            prologue[entry.name] = np.empty((T, B, width) if entry.kind == "prologue" else (width,), dtype)
        pointers = [None if a is None else a.ctypes.data for a in kept[:na] + state]
        pointers += [None if mask is None else mask.ctypes.data, outputs.ctypes.data]
        pointers += [f.ctypes.data for f in finals]
        pointers += [steps[e.name].ctypes.data if tape else None for e in lay.tape]
        pointers += [None if a is None else a.ctypes.data for a in kept[na:]]
        pointers += [prologue[e.name].ctypes.data if prologue else None for e in lay.prologue_tape]
        sizes = (ctypes.c_int64 * 6)(T, B, H, inputs, int(bool(reverse)), int(inside))
        stride_array = (ctypes.c_int64 * max(1, len(strides)))(*strides)
        table = (ctypes.c_void_p * max(1, len(pointers)))(*pointers)
        code = self._entry(dtype.itemsize, sizes, stride_array, table)
        if code == 1:
            raise MemoryError(f"the compiled step loop ran out of memory at batch {B}, units {H}")
        if code != 0:
            raise RuntimeError(f"the compiled step loop returned {code} (a bug in novolstm)")
        if not tape:
            return outputs, tuple(finals), None
        steps.update((f"prologue:{name}", value) for name, value in prologue.items())
        return outputs, tuple(finals), steps

    def backward(self, tape, g_ys, ms, g_state, *arrays):
        """The backward pass's steps, from the last to the first, over ``tape`` (what this kernel
        wrote with ``tape=True``, plus the generated forward's "x"), or None where the kernel does
        not compile them (the generated loop then runs them).

        ``g_ys`` the outputs' gradient (time, batch, units), ``ms`` the mask (time, batch, 1) or
        None, ``g_state`` the final state's gradients, ``arrays`` the backward layout's arguments
        (read) and grads (C-contiguous arrays, written in place: each step's gradients of the
        hoisted values and products, and the parameters' gradients added to ``gp_`` arrays).

        Returns:
            The initial state's gradients (tuple of (batch, units) arrays), or None.
        """
        back, lay = self.backward_layout, self.layout
        if back is None:
            return None
        x = np.asarray(tape["x"])
        dtype = x.dtype
        T, B, inputs = (int(n) for n in x.shape)
        g_state = [np.ascontiguousarray(g, dtype) for g in g_state]
        H = int(g_state[0].shape[-1])
        if len(g_state) != lay.states or any(g.shape != (B, H) for g in g_state):
            raise ValueError(f"g_state: expected {lay.states} arrays of shape ({B}, {H})")
        if len(arrays) != len(back.arguments) + len(back.grads):
            raise ValueError(f"expected {len(back.arguments) + len(back.grads)} arrays, got {len(arrays)}")
        kept = []
        for arg, value in zip(back.arguments + back.grads, arrays):
            widths = tuple(elems_of(w, H, inputs) for w in arg.widths)
            expected = (T, B, *widths) if arg.kind == "seq" else widths
            a = np.asarray(value)
            if a.shape != expected or a.dtype != dtype:
                raise ValueError(f"{arg.name}: expected {dtype} {expected}, got {a.dtype} {a.shape}")
            if arg.kind in ("seq", "sum") and not (a.flags.c_contiguous and a.flags.writeable):
                raise ValueError(f"{arg.name}: expected a writable C-contiguous array (the kernel writes it)")
            kept.append(np.ascontiguousarray(a))
        steps = []
        for entry in lay.tape:
            width = elems_of(entry.widths[0], H, inputs)
            a = np.ascontiguousarray(tape[entry.name], dtype)
            if a.shape != ((T, B, width) if entry.kind == "tape" else (T, width)):
                raise ValueError(f"tape {entry.name!r}: expected the compiled forward's, got shape {a.shape}")
            steps.append(a)
        mask = None if ms is None else np.ascontiguousarray(np.asarray(ms, bool).reshape(T, B)).view(np.uint8)
        g_ys = np.ascontiguousarray(g_ys, dtype)
        if g_ys.shape != (T, B, H):
            raise ValueError(f"g_ys: expected shape {(T, B, H)}, got {g_ys.shape}")
        finals = [np.empty((B, H), dtype) for _ in g_state]
        na = len(back.arguments)
        pointers = [a.ctypes.data for a in kept[:na] + steps]
        pointers += [None if mask is None else mask.ctypes.data, g_ys.ctypes.data]
        pointers += [a.ctypes.data for a in g_state + kept[na:] + finals]
        sizes = (ctypes.c_int64 * 4)(T, B, H, inputs)
        code = self._backward(dtype.itemsize, sizes, (ctypes.c_void_p * len(pointers))(*pointers))
        if code == 1:
            raise MemoryError(f"the compiled backward steps ran out of memory at batch {B}, units {H}")
        if code != 0:
            raise RuntimeError(f"the compiled backward steps returned {code} (a bug in novolstm)")
        return tuple(finals)


__all__ = [
    "PROLOGUE_MAX_WORK",
    "CompiledForward",
    "CompiledUnavailable",
    "CompiledUnsupported",
    "cache_dir",
    "compiled_forward",
]
