"""The benchmark harness: every backend's generated cells against its framework's own LSTM.

One adapter module per backend (``novolstm.bench.<backend>``) yields candidates: a
name, a forward callable and a forward+backward callable, built for one shape. The
harness measures them interleaved (A, B, A, B) with warm-up and medians, so drift
on a shared machine affects all alike, and reports ratios side by side. Nothing here
is a pass/fail test.
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Callable
from dataclasses import dataclass

#: name -> (batch, steps, units); inputs equal units
SHAPES = {
    "smoke": (2, 5, 8),
    "latency": (1, 1000, 64),
    "typical": (32, 100, 128),
    "throughput": (128, 200, 512),
}

#: backend -> adapter module under novolstm.bench
ADAPTERS = {"numpy": "numpy_adapter", "torch": "torch_adapter", "keras": "keras_adapter", "jax": "jax_adapter"}


#: the dtypes the harness knows; each adapter lists those it runs in its own DTYPES
DTYPES = ("float32", "bfloat16")


@dataclass(frozen=True)
class Candidate:
    name: str  # e.g. "lstm spec", "novolstm spec", "native LSTM"
    forward: Callable[[], object] | None  # None only for a skipped candidate
    forward_backward: Callable[[], object] | None  # None where there is no backward pass to time
    #: how the callables are compiled ("jax.jit", "tf.function", "torch.compile"): the harness
    #: reports the first call minus the steady state as compile time
    jit: str | None = None
    #: the framework's own peak-memory figure for forward+backward, in bytes (XLA's compiled
    #: memory analysis, NumPy's tracemalloc), where it has one
    framework_peak_bytes: Callable[[], int] | None = None
    #: True where failing on first call is a finding about this machine, not a bug
    #: (torch.compile needs a working C++ toolchain): the table shows the reason
    may_fail: bool = False
    #: why this candidate does not run here; shown in the table in place of its times
    skipped: str | None = None
    #: how it runs, where neither ``jit`` nor the name says (a framework's fused kernel): the
    #: paths table's "path" (see harness.path_of)
    path: str | None = None


def adapter(backend: str):
    if backend not in ADAPTERS:
        raise ValueError(f"no benchmark adapter for backend {backend!r}; expected one of {sorted(ADAPTERS)}")
    return importlib.import_module(f"{__name__}.{ADAPTERS[backend]}")


def available_backends() -> list[str]:
    from novolstm.backends import emitter

    return [b for b in ADAPTERS if importlib.util.find_spec(emitter(b).FRAMEWORK) is not None]
