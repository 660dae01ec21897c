"""Speed of the generated PyTorch layers against torch.nn.LSTM, measured side by side.

float32, batch 32, 100 steps, 128 inputs and 128 units (override with flags). Each
round times every contestant once, in turn (interleaved A/B), after warm-up rounds;
the table gives medians and the two ratios the PyTorch backend is held to:

    lstm spec / nn.LSTM      target <= 1.0
    novolstm / lstm spec     target <= 1.3

forward runs under torch.no_grad(); forward+backward trains the parameters (the input
needs no gradient, as with data) with loss = output.sum(). Not a test: these machines
are noisy, so only ratios measured in one run mean anything.

    python benchmarks/bench_torch.py [--rounds 15] [--threads 1] [--batch 32] [--steps 100]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import novolstm


def contestants(args):
    B, T, I, H = args.batch, args.steps, args.inputs, args.units
    native = torch.nn.LSTM(I, H)
    lstm = novolstm.get_layer("torch", spec="lstm")(I, H)
    novo = novolstm.get_layer("torch", spec="novolstm")(I, H)
    return {"nn.LSTM": native, "lstm spec": lstm, "novolstm": novo}


def time_forward(module, x):
    with torch.no_grad():
        start = time.perf_counter()
        module(x)
        return time.perf_counter() - start


def time_train(module, x):
    module.zero_grad(set_to_none=True)
    start = time.perf_counter()
    out, _ = module(x)
    out.sum().backward()
    return time.perf_counter() - start


def measure(modules, x, timer, rounds, warmup):
    times = {name: [] for name in modules}
    for r in range(warmup + rounds):
        for name, module in modules.items():
            t = timer(module, x)
            if r >= warmup:
                times[name].append(t)
    return {name: statistics.median(ts) for name, ts in times.items()}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (the machines here are shared)")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--inputs", type=int, default=128)
    parser.add_argument("--units", type=int, default=128)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    modules = contestants(args)
    x = torch.randn(args.steps, args.batch, args.inputs)
    print(f"torch {torch.__version__}, {args.threads} thread(s); float32, batch {args.batch}, {args.steps} steps, "
          f"{args.inputs} inputs, {args.units} units; medians of {args.rounds} interleaved rounds")
    print(f"{'':18s}{'nn.LSTM':>10s}{'lstm spec':>11s}{'novolstm':>10s}   {'lstm/nn.LSTM':>12s}{'novo/lstm':>11s}")
    for label, timer in (("forward", time_forward), ("forward+backward", time_train)):
        m = measure(modules, x, timer, args.rounds, args.warmup)
        ms = [m[k] * 1e3 for k in ("nn.LSTM", "lstm spec", "novolstm")]
        print(f"{label:18s}{ms[0]:8.2f}ms{ms[1]:9.2f}ms{ms[2]:8.2f}ms   {ms[1] / ms[0]:12.2f}{ms[2] / ms[1]:11.2f}")


if __name__ == "__main__":
    main()
