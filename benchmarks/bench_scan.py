"""Parallel scan against the loop: minGRU and minLSTM run as a parallel scan and as the loop over
time, per backend, for T from 64 to 16,384, forward and forward + backward, in one run, as ratios
side by side.

- numpy: novolstm.scan.run (the chunked scan of the coefficients, computed for every timestep at
  once) against the generated NumPy module's loop; forward only (the scan has no backward pass).
- torch: the generated module's ``sequence(..., scan=True)`` (coefficients from one evaluation of
  the step over all timesteps, the chunked scan, its own backward pass) against ``scan=False``
  (the generated loop and its generated backward pass).
- jax: ``sequence(..., scan=True)`` (jax.lax.associative_scan) against ``scan=False``
  (jax.lax.scan), both under jax.jit, compiled before timing.

Not a test: the machines here are shared and noisy, so only ratios measured in one run mean
anything. Interleaved repeats (scan and loop alternate), medians.

    python benchmarks/bench_scan.py [--backends numpy torch jax] [--cells mingru minlstm] [--batch 8]
        [--inputs 64] [--units 128] [--repeats 3] [--lengths 64 256 1024 4096 16384] [--threads 1]
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

import novolstm
from novolstm import scan

LENGTHS = (64, 256, 1024, 4096, 16384)


def median_seconds(functions, repeats):
    """Median wall time of each function, their runs interleaved so that drift hits all alike."""
    times = [[] for _ in functions]
    for f in functions:  # warm up: first calls allocate, load and compile
        f()
    for _ in range(repeats):
        for k, f in enumerate(functions):
            start = time.perf_counter()
            f()
            times[k].append(time.perf_counter() - start)
    return [statistics.median(t) for t in times]


def numpy_pairs(cell, params, x, dtype):
    """{mode: (loop, scan)} callables for NumPy."""
    module = novolstm.load_generated(cell, "numpy")
    return {"forward": (lambda: module.forward(params, x), lambda: scan.run(cell, params, x, dtype=dtype))}


def torch_pairs(cell, params, x, dtype):
    import torch

    module = novolstm.load_generated(cell, "torch")
    tensors = {k: torch.tensor(v, requires_grad=True) for k, v in params.items()}
    xt = torch.tensor(x)

    def forward(use_scan):
        with torch.no_grad():
            module.sequence(tensors, xt, scan=use_scan)

    def backward(use_scan):
        outputs, final = module.sequence(tensors, xt, scan=use_scan)
        (outputs.sum() + sum(f.sum() for f in final)).backward()

    return {
        "forward": (lambda: forward(False), lambda: forward(True)),
        "forward+backward": (lambda: backward(False), lambda: backward(True)),
    }


def jax_pairs(cell, params, x, dtype):
    import jax

    module = novolstm.load_generated(cell, "jax")
    params, x = jax.device_put(params), jax.device_put(x)

    def loss(p, x, use_scan):
        outputs, final = module.sequence(p, x, scan=use_scan)
        return outputs.sum() + sum(f.sum() for f in final)

    forward = jax.jit(lambda p, x, use_scan: module.sequence(p, x, scan=use_scan), static_argnums=2)
    gradient = jax.jit(jax.grad(loss), static_argnums=2)
    pairs = {}
    for mode, f in (("forward", forward), ("forward+backward", gradient)):
        for use_scan in (False, True):
            jax.block_until_ready(f(params, x, use_scan))  # compile outside the timing
        pairs[mode] = tuple(
            (lambda f=f, s=use_scan: jax.block_until_ready(f(params, x, s))) for use_scan in (False, True)
        )
    return pairs


PAIRS = {"numpy": numpy_pairs, "torch": torch_pairs, "jax": jax_pairs}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backends", nargs="+", default=list(PAIRS), choices=list(PAIRS))
    parser.add_argument("--cells", nargs="+", default=["mingru", "minlstm"])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--units", type=int, default=128)
    parser.add_argument("--inputs", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--lengths", type=int, nargs="+", default=list(LENGTHS))
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (the machine is shared)")
    parser.add_argument("--dtype", default="float32")
    args = parser.parse_args(argv)
    if "torch" in args.backends:
        import torch

        torch.set_num_threads(args.threads)
    print(
        f"batch {args.batch}, input {args.inputs}, units {args.units}, {args.dtype}; "
        f"median of {args.repeats} interleaved repeats; torch threads {args.threads}"
    )
    print("| backend | cell | T | mode | loop (ms) | scan (ms) | speed-up |")
    print("|---|---|---:|---|---:|---:|---:|")
    for backend in args.backends:
        for cell in args.cells:
            params = {k: v.astype(args.dtype) for k, v in novolstm.init_params(cell, args.inputs, args.units).items()}
            for steps in args.lengths:
                x = np.random.default_rng(steps).normal(size=(args.batch, steps, args.inputs)).astype(args.dtype)
                for mode, (loop, parallel) in PAIRS[backend](cell, params, x, args.dtype).items():
                    looped, scanned = median_seconds([loop, parallel], args.repeats)
                    print(
                        f"| {backend} | {cell} | {steps} | {mode} | {looped * 1e3:.1f} | {scanned * 1e3:.1f} "
                        f"| {looped / scanned:.2f}x |",
                        flush=True,
                    )


if __name__ == "__main__":
    main()
