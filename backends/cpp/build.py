"""What both compiled paths' builders share: their errors, the cache folder, the build lock.

``torch_ext`` (torch operators) and ``numpy_ext`` (ctypes) build kernels into folders of one
cache root and hold one lock file per kernel while they build, so that parallel processes
(pytest-xdist, DDP workers) build each kernel once. Importing this module imports no framework.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path


class CompiledUnavailable(RuntimeError):
    """The compiled path cannot run this spec here (the message says why)."""


class CompiledUnsupported(CompiledUnavailable):
    """The C++ emitter does not compile this spec's operations: the generated loop is its path.

    Unlike a missing compiler, this is by design, so the caller falls back without a warning
    (``compiled=True`` still raises).
    """


def cache_root() -> Path:
    """``$NOVOLSTM_CACHE_DIR`` if set, else ``$XDG_CACHE_HOME/novolstm`` (default ``~/.cache/novolstm``).

    Examples:
        >>> root = cache_root()
        >>> root.is_absolute() or root == Path(os.environ["NOVOLSTM_CACHE_DIR"])
        True
    """
    root = os.environ.get("NOVOLSTM_CACHE_DIR")
    if not root:
        base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        root = os.path.join(base, "novolstm")
    return Path(root)


@contextlib.contextmanager
def file_lock(path: Path):
    """Hold an exclusive lock on the file ``path`` (made, with its folder, where missing) for the block.

    POSIX only; elsewhere the block runs unlocked, and what keeps a build whole is each builder's
    own: the atomic rename of ``numpy_ext``, the build baton of ``torch.utils.cpp_extension``.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as handle:
        try:
            import fcntl  # noqa: PLC0415 - POSIX only
        except ImportError:  # pragma: no cover - see the docstring
            yield
            return
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def built_once(outcomes: dict, lock, spec_toml: str, build):
    """``build(spec_toml)``'s kernel, built once per process: the outcome, kernel or
    ``CompiledUnavailable``, is kept in ``outcomes`` (under ``lock``), so a spec that cannot
    compile says why again without trying again.

    Raises:
        CompiledUnavailable: what ``build`` raised, now or on an earlier call.

    Examples:
        >>> import threading
        >>> outcomes = {}
        >>> built_once(outcomes, threading.Lock(), "spec", str.upper), list(outcomes)
        ('SPEC', ['spec'])
    """
    result = outcomes.get(spec_toml)
    if result is None:
        with lock:
            if spec_toml not in outcomes:
                try:
                    outcomes[spec_toml] = build(spec_toml)
                except CompiledUnavailable as e:
                    outcomes[spec_toml] = e
            result = outcomes[spec_toml]
    if isinstance(result, CompiledUnavailable):
        raise result
    return result
