"""Keras backend speed, measured side by side: generated cells against keras.layers.LSTM.

float32, batch 32, 100 steps, 128 inputs and 128 units; forward, and forward plus
backward (gradients of sum(outputs) with respect to the inputs and every weight).
Every variant is compiled the same way (tf.function, and tf.function with
jit_compile=True) and warmed up; the repeats are interleaved so that machine noise
hits all variants alike; medians are reported, and the ratios the project tracks:

    lstm spec / keras.layers.LSTM     (target <= 1.0)
    novolstm  / lstm spec             (target <= 1.3)

Usage: KERAS_BACKEND=tensorflow python benchmarks/bench_keras.py [--repeats 15] [--no-jit]
This is a benchmark, not a test: the machines are noisy, so read the ratios, not the times.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402  (the timed paths are tf.function)

tf.get_logger().setLevel("ERROR")  # the many tf.functions below are traced once each, on purpose
import numpy as np  # noqa: E402

import novolstm  # noqa: E402

BATCH, STEPS, INPUTS, UNITS = 32, 100, 128, 128


def variants():
    """name -> a function building a fresh (unbuilt) sequence layer returning all outputs."""
    out = {"keras LSTM": lambda: keras.layers.LSTM(UNITS, return_sequences=True)}
    for spec in ("lstm", "novolstm"):
        out[f"{spec} Layer"] = lambda spec=spec: novolstm.get_layer("keras", spec)(UNITS, seed=0, return_sequences=True)
        out[f"{spec} RNN(Cell)"] = lambda spec=spec: keras.layers.RNN(
            novolstm.get_cell("keras", spec)(UNITS, seed=0), return_sequences=True
        )
    return out


def compiled(layer, mode, jit):
    if mode == "forward":

        def fn(x):
            return layer(x)

    else:

        def fn(x):
            with tf.GradientTape() as tape:
                tape.watch(x)
                loss = tf.reduce_sum(layer(x))
            return tape.gradient(loss, [x] + layer.trainable_variables)

    return tf.function(fn, jit_compile=jit)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--no-jit", action="store_true", help="skip the jit_compile=True runs")
    parser.add_argument("--only", default="", help="comma-separated variant names to run (default: all)")
    parser.add_argument("--threads", type=int, default=0, help="TensorFlow intra- and inter-op threads (0: its default)")
    args = parser.parse_args(argv)
    if args.threads:  # fewer threads: less scheduling noise on a shared machine
        tf.config.threading.set_intra_op_parallelism_threads(args.threads)
        tf.config.threading.set_inter_op_parallelism_threads(args.threads)
    if keras.backend.backend() != "tensorflow":
        raise SystemExit("bench_keras.py times tf.function paths: run it with KERAS_BACKEND=tensorflow")

    x = tf.constant(np.random.default_rng(0).normal(size=(BATCH, STEPS, INPUTS)).astype("float32"))
    chosen = {k: v for k, v in variants().items() if not args.only or k in args.only.split(",")}
    jits = [False] if args.no_jit else [False, True]
    fns = {}
    for name, make in chosen.items():
        layer = make()
        layer(x)  # build
        for mode in ("forward", "forward+backward"):
            for jit in jits:
                fns[(name, mode, jit)] = compiled(layer, mode, jit)
    for key, fn in fns.items():  # warm-up: tracing, XLA compilation, caches
        for _ in range(args.warmup):
            tf.nest.map_structure(lambda t: t.numpy(), fn(x))
    times = {key: [] for key in fns}
    for _ in range(args.repeats):  # interleaved: every variant once per round
        for key, fn in fns.items():
            start = time.perf_counter()
            tf.nest.map_structure(lambda t: t.numpy(), fn(x))
            times[key].append(time.perf_counter() - start)
    med = {key: statistics.median(ts) * 1e3 for key, ts in times.items()}

    threads = f"{args.threads} thread(s)" if args.threads else "default threads"
    print(f"Keras {keras.__version__} on TensorFlow {tf.__version__} ({threads}); float32, batch {BATCH}, {STEPS} steps, "
          f"{INPUTS} -> {UNITS}; median of {args.repeats} interleaved repeats (ms)")
    header = f"{'variant':22s}" + "".join(f"{m + (' jit' if j else ''):>24s}" for m in ("forward", "forward+backward") for j in jits)
    print(header)
    for name in chosen:
        row = "".join(f"{med[(name, m, j)]:24.1f}" for m in ("forward", "forward+backward") for j in jits)
        print(f"{name:22s}{row}")

    def ratio(a, b, mode, jit):
        if (a, mode, jit) in med and (b, mode, jit) in med:
            return f"{med[(a, mode, jit)] / med[(b, mode, jit)]:.2f}"
        return "n/a"

    print("\nratios (same mode, same compilation)")
    pairs = [
        ("lstm Layer", "keras LSTM", "target <= 1.0"),
        ("lstm RNN(Cell)", "keras LSTM", "(the plain cell inside keras.layers.RNN)"),
        ("novolstm Layer", "lstm Layer", "target <= 1.3"),
        ("novolstm RNN(Cell)", "lstm RNN(Cell)", ""),
    ]
    for a, b, note in pairs:
        cells = "  ".join(f"{m}{' jit' if j else ''}: {ratio(a, b, m, j)}" for m in ("forward", "forward+backward") for j in jits)
        print(f"  {a} / {b}: {cells}  {note}")


if __name__ == "__main__":
    main()
