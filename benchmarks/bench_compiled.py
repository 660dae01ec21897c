"""The compiled C++ sequence kernels (novolstm and lstm specs) against torch.nn.LSTM, on one thread.

Each round calls every candidate once, in turn (A, B, C, A, B, C, ...), so that drift on a shared
machine touches them alike; a ratio is the median over rounds of that round's ratio. Forward runs
under ``torch.no_grad()``; forward+backward is the gradient of ``outputs.sum()`` with respect to
the parameters (the input, like data, needs none), as ``novolstm bench`` measures it. Float32,
time-major, the same shapes as the published benchmarks: typical (batch 32, 100 steps, 128
inputs and units), latency (1, 1000, 64) and throughput (128, 200, 512). Not a test.

With ``--clock cpu`` each call is timed by the calling thread's CPU time (one thread: all the
work), which a busy machine disturbs less than the wall clock (the default, as ``novolstm bench``).

    python benchmarks/bench_compiled.py [--shapes typical latency throughput] [--repeats 21]
        [--threads 1] [--specs novolstm lstm] [--modes fwd fwdbwd] [--clock wall|cpu]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import novolstm

SHAPES = {"typical": (32, 100, 128), "latency": (1, 1000, 64), "throughput": (128, 200, 512)}


def _calls(module, x):
    def fwd():
        with torch.no_grad():
            module(x)

    def fwdbwd():
        module.zero_grad(set_to_none=True)
        out, _ = module(x)
        out.sum().backward()

    return {"fwd": fwd, "fwdbwd": fwdbwd}


def candidates(shape, specs):
    """name -> {mode -> callable}: the specs' compiled layers and nn.LSTM at ``shape``."""
    batch, steps, units = shape
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(steps, batch, units, generator=gen)
    out = {}
    for spec in specs:
        layer = novolstm.get_layer("torch", spec=spec)(units, units, compiled=True, fused=False)
        out[f"{spec} compiled"] = _calls(layer, x)
    out["nn.LSTM"] = _calls(torch.nn.LSTM(units, units), x)
    return out


def measure(calls, repeats: int, clock=time.perf_counter) -> dict[str, list[float]]:
    """Seconds of every call, interleaved, after one warm-up call each."""
    for fn in calls.values():
        fn()
    samples: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(repeats):
        for name, fn in calls.items():
            start = clock()
            fn()
            samples[name].append(clock() - start)
    return samples


def main(argv=None):
    """Print, per shape and mode, each candidate's median time and its ratio to nn.LSTM."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shapes", nargs="+", default=["typical"], choices=sorted(SHAPES))
    p.add_argument("--specs", nargs="+", default=["novolstm", "lstm"])
    p.add_argument("--modes", nargs="+", default=["fwd", "fwdbwd"], choices=["fwd", "fwdbwd"])
    p.add_argument("--repeats", type=int, default=21)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--clock", choices=["wall", "cpu"], default="wall")
    args = p.parse_args(argv)
    clock = time.perf_counter if args.clock == "wall" else time.thread_time
    torch.set_num_threads(args.threads)
    for shape_name in args.shapes:
        shape = SHAPES[shape_name]
        cands = candidates(shape, args.specs)
        for mode in args.modes:
            samples = measure({name: c[mode] for name, c in cands.items()}, args.repeats, clock)
            base = samples["nn.LSTM"]
            print(f"{shape_name} {shape} {mode}, {args.threads} thread(s), {args.repeats} rounds, {args.clock} clock")
            for name, s in samples.items():
                ratio = statistics.median(a / b for a, b in zip(s, base))
                print(f"  {name:<20} {1e3 * statistics.median(s):9.3f} ms   / nn.LSTM {ratio:5.2f}")


if __name__ == "__main__":
    main()
