"""NumPy candidates: the generated cells, and the per-example textbook cell as the native baseline.

Each spec's forward runs its steps in the compiled step loop (novolstm.backends.cpp.numpy_ext)
where ``forward`` chooses it (float32 and float64, at least ``COMPILED_MIN_STEPS`` steps, batch *
units**2 at most ``COMPILED_MAX_WORK``; the first call builds it or loads it from the cache: its
"compile time"); its forward+backward runs the same forward, writing the tape, and ``backward``,
which runs the compiled backward steps after a compiled forward. Beside it,
``<cell> spec, generated loop`` holds the forward to the generated loop (``compiled=False``),
or, at shapes where ``forward`` runs the loop, ``<cell> spec, compiled`` to the compiled step
loop (``compiled=True``).
"""

from __future__ import annotations

import functools

import numpy as np

from novolstm.api import init_params, load_generated
from novolstm.bench import Candidate
from novolstm.bench.memory import peak_traced_bytes

CELLS = ("lstm", "novolstm", "novolstm_reference")
#: cells whose forward also runs held to the generated loop, beside the compiled step loop
LOOPS = ("lstm", "novolstm")
DTYPES = ("float32",)
DTYPE_NOTES = {
    "bfloat16": "NumPy has no bfloat16 dtype, so the NumPy backend has no bfloat16 cells (it runs float32 and float64)"
}
TARGETS = {
    ("lstm spec", "native", "forward"): 0.2,
    ("novolstm spec", "lstm spec", "forward"): 1.3,
    ("novolstm spec", "lstm spec", "forward+backward"): 1.3,
}


class PerExampleLSTMCell:
    """The textbook cell of shared/seeds/001: weights (H, I + H) per gate, one example at a time,
    np.vstack of [x; h], one np.dot per gate."""

    def __init__(self, params, dtype):
        self.W = {g: np.concatenate([params[f"W_{g}"], params[f"U_{g}"]], axis=0).T.astype(dtype) for g in "ifog"}
        self.b = {g: params[f"b_{g}"].astype(dtype)[:, None] for g in "ifog"}

    @staticmethod
    def sigmoid(z):
        return 1.0 / (1.0 + np.exp(-z))

    def forward(self, x, prev_h, prev_c):
        mixed = np.vstack((x, prev_h))
        f = self.sigmoid(np.dot(self.W["f"], mixed) + self.b["f"])
        i = self.sigmoid(np.dot(self.W["i"], mixed) + self.b["i"])
        o = self.sigmoid(np.dot(self.W["o"], mixed) + self.b["o"])
        c_tilde = np.tanh(np.dot(self.W["g"], mixed) + self.b["g"])
        c = f * prev_c + i * c_tilde
        return o * np.tanh(c), c

    def sequence(self, xs):
        units = self.W["f"].shape[0]
        outputs = np.empty((xs.shape[0], xs.shape[1], units), xs.dtype)
        for b in range(xs.shape[0]):
            h = np.zeros((units, 1), xs.dtype)
            c = np.zeros_like(h)
            for t in range(xs.shape[1]):
                h, c = self.forward(xs[b, t][:, None], h, c)
                outputs[b, t] = h[:, 0]
        return outputs


def candidates(batch: int, steps: int, units: int, dtype: str = "float32"):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(batch, steps, units)).astype(dtype)
    g = rng.normal(size=(batch, steps, units)).astype(dtype)
    for cell in CELLS:
        module = load_generated(cell, "numpy")
        params = init_params(cell, units, units, seed=0, dtype=dtype)

        def fwd(module=module, params=params, compiled=None):
            return module.forward(params, x, compiled=compiled)

        def fwd_bwd(module=module, params=params, compiled=None):
            _, _, tape = module.forward(params, x, keep_tape=True, compiled=compiled)
            return module.backward(params, tape, g)

        def peak(fwd_bwd=fwd_bwd) -> int:
            return peak_traced_bytes(fwd_bwd)

        # NumPy reports its buffers to tracemalloc: its own, exact peak next to the RSS one.
        auto = steps >= module.COMPILED_MIN_STEPS and batch * units * units <= module.COMPILED_MAX_WORK
        yield Candidate(f"{cell} spec", fwd, fwd_bwd, jit="C++ step loop" if auto else None, framework_peak_bytes=peak)
        if cell in LOOPS and auto:
            loop = (functools.partial(fwd, compiled=False), functools.partial(fwd_bwd, compiled=False))
            yield Candidate(f"{cell} spec, generated loop", *loop)
        elif cell in LOOPS and steps >= module.COMPILED_MIN_STEPS:  # a large step: the loop, and beside it
            compiled = (functools.partial(fwd, compiled=True), functools.partial(fwd_bwd, compiled=True))
            yield Candidate(f"{cell} spec, compiled", *compiled, jit="C++ step loop", may_fail=True)
    textbook = PerExampleLSTMCell(init_params("lstm", units, units, seed=0), dtype)
    yield Candidate("native: per-example cell (seed 001)", lambda: textbook.sequence(x), None)


def matmul(batch: int, steps: int, units: int, dtype: str = "float32"):
    """A plain GEMM with the LSTM forward's matmul FLOPs, for the GFLOP/s fraction."""
    rng = np.random.default_rng(0)
    a = rng.normal(size=(batch * steps, 2 * units)).astype(dtype)
    w = rng.normal(size=(2 * units, 4 * units)).astype(dtype)
    return lambda: a @ w
