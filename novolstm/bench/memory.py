"""Peak memory of one call, for every framework: the process's peak resident set over its
resident set before the call (Linux), and NumPy's own traced peak (tracemalloc).

Frameworks allocate outside Python (torch's and XLA's CPU allocators, TensorFlow's
kernels), where tracemalloc sees nothing; the kernel sees every page they touch. On
Linux, writing ``5`` to ``/proc/self/clear_refs`` resets the process's high-water mark
(``VmHWM`` in ``/proc/self/status``) to its current resident set, so

    peak = VmHWM after the call - VmRSS before it

is what the call added at its peak. Before the reset, free memory is handed back to the
kernel (``gc.collect`` and glibc's ``malloc_trim``), so that memory a previous call
freed but the allocator kept is not silently reused uncounted. What a framework's
allocator keeps in its own pool across calls is still reused unseen, so the figure is a
lower bound: on TensorFlow it reads well under the activations a forward+backward must
hold (62 MiB for the throughput shape's float32 LSTM, whose output alone is 50 MiB).

Examples:
    >>> import numpy as np
    >>> grown = peak_rss_bytes(lambda: np.ones(2**24))   # 128 MiB, touched
    >>> grown is None or grown > 100 * 2**20
    True
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import re
import sys
import tracemalloc
from collections.abc import Callable

_STATUS = "/proc/self/status"
_CLEAR_REFS = "/proc/self/clear_refs"
_RESET_PEAK = "5"  # clear_refs: "5" resets the peak resident set size (Linux >= 4.0)


def _status_bytes(field: str) -> int:
    with open(_STATUS, encoding="ascii") as fh:
        match = re.search(rf"^{field}:\s+(\d+) kB$", fh.read(), re.MULTILINE)
    if match is None:
        raise OSError(f"{_STATUS} has no {field} line")
    return int(match.group(1)) * 1024


def unavailable_reason() -> str | None:
    """Why ``peak_rss_bytes`` cannot measure here, or None when it can."""
    if not sys.platform.startswith("linux"):
        return f"peak RSS needs Linux's /proc/self/clear_refs and VmHWM; this is {sys.platform}"
    try:
        _status_bytes("VmHWM")
        with open(_CLEAR_REFS, "w", encoding="ascii") as fh:
            fh.write(_RESET_PEAK)
    except OSError as exc:
        return f"peak RSS cannot be reset here ({exc})"
    return None


def _release_free_memory() -> None:
    gc.collect()
    libc = ctypes.util.find_library("c")
    if libc:
        trim = getattr(ctypes.CDLL(libc), "malloc_trim", None)  # glibc only
        if trim is not None:
            trim(0)


def peak_rss_bytes(fn: Callable[[], object]) -> int | None:
    """Bytes the process's resident set grew by at its peak while ``fn()`` ran, or None
    where that cannot be measured (see ``unavailable_reason``)."""
    if unavailable_reason() is not None:
        return None
    _release_free_memory()
    before = _status_bytes("VmRSS")
    with open(_CLEAR_REFS, "w", encoding="ascii") as fh:
        fh.write(_RESET_PEAK)
    result = fn()
    peak = _status_bytes("VmHWM")
    del result
    return max(0, peak - before)


def peak_traced_bytes(fn: Callable[[], object]) -> int:
    """Peak memory Python and NumPy allocate during ``fn`` (tracemalloc sees NumPy's
    buffers, but nothing torch, TensorFlow or XLA allocate)."""
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
