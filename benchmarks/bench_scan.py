"""Parallel scan against the loop: minGRU and minLSTM run by novolstm.scan (a log-depth scan of
the coefficients, computed for every timestep at once) and by the generated NumPy module (a loop
over time), for T from 64 to 16,384, in one run, as ratios side by side.

Not a test: the machines here are shared and noisy, so only ratios measured in one run mean
anything. Interleaved repeats, medians.

    python benchmarks/bench_scan.py [--cells mingru minlstm] [--batch 8] [--units 64] [--repeats 5] [--dtype float32]
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
    times = [[] for _ in functions]
    for _ in range(repeats):
        for k, f in enumerate(functions):  # interleaved: drift hits both alike
            start = time.perf_counter()
            f()
            times[k].append(time.perf_counter() - start)
    return [statistics.median(t) for t in times]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cells", nargs="+", default=["mingru", "minlstm"])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--units", type=int, default=64)
    parser.add_argument("--inputs", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--dtype", default="float32")
    args = parser.parse_args(argv)
    print(f"batch {args.batch}, input {args.inputs}, units {args.units}, {args.dtype}; median of {args.repeats}")
    print(f"{'cell':8} {'T':>6} {'loop (ms)':>10} {'scan (ms)':>10} {'speed-up':>9}")
    for cell in args.cells:
        module = novolstm.load_generated(cell, "numpy")
        params = {k: v.astype(args.dtype) for k, v in novolstm.init_params(cell, args.inputs, args.units).items()}
        for steps in LENGTHS:
            x = np.random.default_rng(steps).normal(size=(args.batch, steps, args.inputs)).astype(args.dtype)
            loop, parallel = median_seconds(
                [
                    lambda m=module, p=params, x=x: m.forward(p, x),
                    lambda c=cell, p=params, x=x: scan.run(c, p, x, dtype=args.dtype),
                ],
                args.repeats,
            )
            print(f"{cell:8} {steps:6d} {loop * 1e3:10.2f} {parallel * 1e3:10.2f} {loop / parallel:8.2f}x")


if __name__ == "__main__":
    main()
