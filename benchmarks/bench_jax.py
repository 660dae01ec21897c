"""JAX speed: the generated cells against Flax's OptimizedLSTMCell under linen nn.RNN.

Jitted, float32, batch 32, 100 steps, 128 inputs and 128 units; forward, and forward
plus backward (gradients of every parameter and the inputs). Contenders run
interleaved, round after round, after a warm-up; the medians are compared as ratios
measured side by side in one run (these machines are shared and noisy). Compile
times are the lowering plus XLA compilation of each jitted function.

    python benchmarks/bench_jax.py [--rounds 15] [--batch 32] [--steps 100] [--size 128]

Targets (issue 5): lstm spec / Flax OptimizedLSTMCell <= 1.0, novolstm / lstm spec <= 1.3.
"""

from __future__ import annotations

import argparse
import functools
import statistics
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

import novolstm


def contenders(batch, steps, size, unroll):
    """name -> (forward fn, forward+backward fn, args), every fn jitted and taking args."""
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(batch, steps, size)), jnp.float32)
    out = {}

    flax_layer = nn.RNN(nn.OptimizedLSTMCell(size), unroll=unroll)
    flax_vars = flax_layer.init(jax.random.key(0), x)
    out["flax OptimizedLSTMCell"] = (
        jax.jit(lambda v, x: flax_layer.apply(v, x)),
        jax.jit(jax.grad(lambda v, x: flax_layer.apply(v, x).sum(), argnums=(0, 1))),
        (flax_vars, x),
    )
    for spec, remat in (("lstm", True), ("novolstm", True), ("lstm", False)):
        m = novolstm.load_generated(spec, "jax")
        params = m.Cell(size).init(0, size)
        run = functools.partial(m.sequence, unroll=unroll, remat=remat)
        out[f"{spec} spec" + ("" if remat else " (remat=False)")] = (
            jax.jit(lambda p, x, run=run: run(p, x)[0]),
            jax.jit(jax.grad(lambda p, x, run=run: run(p, x)[0].sum(), argnums=(0, 1))),
            (params, x),
        )
    return out


def compile_seconds(fn, args):
    start = time.perf_counter()
    fn.lower(*args).compile()
    return time.perf_counter() - start


def run(rounds, batch, steps, size, unroll):
    cands = contenders(batch, steps, size, unroll)
    compile_times = {(name, kind): compile_seconds(f, args) for name, (fwd, bwd, args) in cands.items() for kind, f in (("fwd", fwd), ("fwd+bwd", bwd))}
    for fwd, bwd, args in cands.values():  # warm-up: compile through the jit cache, touch the memory
        for f in (fwd, bwd):
            for _ in range(2):
                jax.block_until_ready(f(*args))
    times = {(name, kind): [] for name in cands for kind in ("fwd", "fwd+bwd")}
    cpu = {key: [] for key in times}
    for _ in range(rounds):  # interleaved: every contender once per round
        for name, (fwd, bwd, args) in cands.items():
            for kind, f in (("fwd", fwd), ("fwd+bwd", bwd)):
                start, start_cpu = time.perf_counter(), time.process_time()
                jax.block_until_ready(f(*args))
                times[(name, kind)].append(time.perf_counter() - start)
                cpu[(name, kind)].append(time.process_time() - start_cpu)
    med = {k: statistics.median(v) * 1e3 for k, v in times.items()}
    med_cpu = {k: statistics.median(v) * 1e3 for k, v in cpu.items()}

    print(f"jax {jax.__version__} on {jax.devices()[0].platform}, float32, batch {batch}, {steps} steps, {size}/{size}, unroll {unroll}, {rounds} rounds")
    print("medians of wall time (and of process CPU time, less sensitive to other load on the machine)")
    print(f"{'':<26}{'fwd ms':>9}{'(cpu)':>8}{'fwd+bwd ms':>12}{'(cpu)':>8}{'compile fwd s':>15}{'compile f+b s':>15}")
    for name in cands:
        print(
            f"{name:<26}{med[(name, 'fwd')]:>9.2f}{med_cpu[(name, 'fwd')]:>8.2f}{med[(name, 'fwd+bwd')]:>12.2f}"
            f"{med_cpu[(name, 'fwd+bwd')]:>8.2f}{compile_times[(name, 'fwd')]:>15.2f}{compile_times[(name, 'fwd+bwd')]:>15.2f}"
        )
    print()
    print(f"{'ratio of medians':<44}{'fwd':>7}{'(cpu)':>7}{'fwd+bwd':>9}{'(cpu)':>7}  target")
    for a, b, target in (("lstm spec", "flax OptimizedLSTMCell", 1.0), ("novolstm spec", "lstm spec", 1.3)):
        r = [m[(a, k)] / m[(b, k)] for k in ("fwd", "fwd+bwd") for m in (med, med_cpu)]
        ok = "ok" if max(r[0], r[2]) <= target else "MISSED"
        print(f"{a + ' / ' + b:<44}{r[0]:>7.2f}{r[1]:>7.2f}{r[2]:>9.2f}{r[3]:>7.2f}  <= {target} {ok}")
    return med


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--unroll", type=int, default=1)
    args = parser.parse_args(argv)
    run(args.rounds, args.batch, args.steps, args.size, args.unroll)


if __name__ == "__main__":
    main()
